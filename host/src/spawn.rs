//! Spawned agents: a run starts an installed agent (`toka:agent/spawn`) and waits for its result. This is the host
//! side of [`crate::sandbox::caps::spawn::Spawner`], one [`SpawnSession`] per parent run.
//!
//! A spawn, in order (the first refusal ends it, as an error value for the parent and a record in the log):
//! 1. the caps: the run's count of spawn attempts (`max_spawns`, refused ones too) and the child's depth
//!    (`max_spawn_depth`); the first time each is hit, `limit.reached` on the parent's run;
//! 2. the name and the input (JSON, bounded), and the parent's token, checked again now (revocation, root key,
//!    time) for `spawn:AGENT`;
//! 3. the installed package, verified as a run of it is (digest, signature, trust now);
//! 4. the child's rights: what its package declares intersected with what the parent has (directories, variables
//!    and peers of the parent's sandbox; `tool:`, `llm:` and `spawn:` grants the parent's token allows); state and
//!    stdin are never passed on;
//! 5. the child's token: the parent's, attenuated to exactly those rights and to what is left of the parent's fuel,
//!    memory and time (so never wider), and the child's run authorized with it as every run is;
//! 6. the child runs on the parent's runner as a run of its own, recorded with `spawn-agent` (events `agent.spawned`
//!    on the parent's run and `run.started` with `parent` on the child's), and ends as any run does. Its fuel is
//!    charged to the parent by the sandbox's side of the call.
//!
//! The child runs in a task of its own, so a parent stopped while it waits (its deadline, a cancel) never leaves the
//! child's run without an ending in the log: the child shares the parent's cancellation switch and deadline, and
//! records its own ending.
//!
//! What this module must never do: give a child a right its parent's token does not hold, let a child raise a cap
//! it inherited, or trap the parent.

use crate::bindings::SpawnError;
use crate::error::{Outcome, RunError, one_line};
use crate::grants::Authorized;
use crate::kernel::Op;
use crate::run::{Invocation, Limits, RunControl, Runner};
use crate::sandbox::OutputMode;
use crate::sandbox::cancel::Cancel;
use crate::sandbox::caps::BoxFuture;
use crate::sandbox::caps::spawn::{SpawnAnswer, Spawner};
use crate::token::{Attenuation, Grant, RunRequest, TokenLimits, Verified};
use crate::tools::grants::Declared;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Largest output a child may hand back, in bytes (its parent gets it as one string).
pub const MAX_CHILD_OUTPUT: usize = 4 << 20;
/// The longest a task may be scheduled ahead.
pub const MAX_DELAY: Duration = Duration::from_secs(7 * 86_400);
/// Largest input of a scheduled task, in bytes (it is kept in the log until the task runs).
pub const MAX_TASK_INPUT: usize = crate::bounds::MAX_TEXT;

/// Who a run's boundary calls name to its token: the agent, component and package the token authorizes.
#[derive(Debug, Clone)]
pub struct Identity {
    pub agent: String,
    /// sha256 (hex) of the component.
    pub component: String,
    /// The installed package (`KEY_ID/NAME`), if the run is one.
    pub plugin: Option<String>,
}

/// How a child run was started.
#[derive(Debug, Clone)]
pub struct SpawnedBy {
    pub parent_run: String,
    /// 1 for a child of a run that was not spawned itself.
    pub depth: u32,
    /// The identity the child's token checks state: the root run's (see [`Identity`]).
    pub identity: Identity,
}

/// The parent run, as its spawns need it.
#[derive(Debug, Clone)]
pub struct Parent {
    pub identity: Identity,
    pub run_id: String,
    /// The revocation id of the parent's token, named by the records of its spawns.
    pub token_id: String,
    pub token: Arc<Verified>,
    pub grants: Authorized,
    /// The parent's own depth (0 for a run that was not spawned).
    pub depth: u32,
    pub deadline: Instant,
    pub limits: Limits,
    pub cancel: Option<Arc<Cancel>>,
}

/// One run's spawns.
pub struct SpawnSession {
    runner: Runner,
    home: Arc<PathBuf>,
    parent: Parent,
    attempts: AtomicU32,
    reported_spawns: AtomicBool,
    reported_depth: AtomicBool,
}

impl std::fmt::Debug for SpawnSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpawnSession").field("parent_run", &self.parent.run_id).finish_non_exhaustive()
    }
}

/// A refusal before the child started: the guest's error, and what the log records.
struct Refusal {
    error: SpawnError,
    outcome: Outcome,
}

impl Refusal {
    fn new(outcome: Outcome, error: SpawnError) -> Refusal {
        Refusal { error, outcome }
    }

    fn message(&self) -> &str {
        match &self.error {
            SpawnError::Denied(m)
            | SpawnError::NotFound(m)
            | SpawnError::InvalidInput(m)
            | SpawnError::Limit(m)
            | SpawnError::Failed(m) => m,
        }
    }
}

impl SpawnSession {
    pub fn new(runner: Runner, home: Arc<PathBuf>, parent: Parent) -> SpawnSession {
        SpawnSession {
            runner,
            home,
            parent,
            attempts: AtomicU32::new(0),
            reported_spawns: AtomicBool::new(false),
            reported_depth: AtomicBool::new(false),
        }
    }

    async fn record(&self, op: Op) {
        let Some(log) = self.runner.events() else { return };
        if let Err(e) = log.submit_accepted(crate::journal::operation_by(&self.parent.token_id, op)).await {
            tracing::warn!("cannot record a spawn of run {}: {e}", self.parent.run_id);
        }
    }

    /// Records the first time a cap is hit (`limit.reached`); later attempts only get the error.
    async fn cap_reached(&self, flag: &AtomicBool, limit: &str, cap: u32) {
        if !flag.swap(true, Ordering::SeqCst) {
            let op = Op::ReachLimit { run_id: self.parent.run_id.clone(), limit: limit.into(), cap: cap.into() };
            self.record(op).await;
        }
    }

    async fn refused(&self, agent: &str, refusal: Refusal) -> SpawnAnswer {
        // A cap is recorded once (`limit.reached`), not at every attempt past it: that is what bounds the records a
        // guest can cause by spawning.
        if matches!(refusal.error, SpawnError::Limit(_)) {
            return SpawnAnswer { result: Err(refusal.error), fuel_consumed: 0 };
        }
        let detail = serde_json::json!({
            "component": format!("plugin:{agent}"),
            "parent": self.parent.run_id,
            "outcome": refusal.outcome,
            "exit_code": refusal.outcome.exit_code(),
            "error": format!("spawn refused: {}", refusal.message()),
        });
        let agent = if crate::tools::check_name(agent).is_ok() { agent.to_string() } else { "invalid-name".into() };
        let grant_refused = refusal.outcome == Outcome::GrantRefused;
        self.record(Op::RefuseRun { agent, grant_refused, detail }).await;
        SpawnAnswer { result: Err(refusal.error), fuel_consumed: 0 }
    }

    /// Whether the parent's token allows `grant` now, stated as the parent (its agent, component and package).
    fn allows(&self, grant: Grant) -> Result<(), String> {
        self.allows_at(grant, SystemTime::now())
    }

    /// Whether the parent's token allows `grant` at `at` (its expiry, not-before and windows evaluated then).
    fn allows_at(&self, grant: Grant, at: SystemTime) -> Result<(), String> {
        let request = RunRequest {
            agent: self.parent.identity.agent.clone(),
            grants: vec![grant],
            limits: TokenLimits::default(),
            component: Some(self.parent.identity.component.clone()),
            plugin: self.parent.identity.plugin.clone(),
        };
        crate::token::authorize(&self.parent.token, &request, at).map_err(|(grant, reason)| {
            format!("{grant}: {}", crate::token::explain_refusal(&self.parent.token, &request, &grant, &reason))
        })
    }

    /// The parent's token still good: not revoked, its root key still trusted.
    fn token_still_good(&self) -> Result<(), String> {
        crate::token::root_key_still_verifies(&self.home, &self.parent.token, SystemTime::now())
            .map_err(|e| format!("token refused: {}", one_line(&e.to_string())))?;
        if let Some(log) = self.runner.events() {
            match crate::token::revoked_among(log.db(), &self.parent.token.revocation_ids) {
                Ok(None) => {}
                Ok(Some(id)) => return Err(format!("token is revoked (revocation id {id})")),
                Err(e) => return Err(format!("reading revocations: {e}")),
            }
        }
        Ok(())
    }

    /// Steps 1 to 5 of the module documentation: a child ready to run, or the refusal.
    async fn prepare(
        &self,
        agent: &str,
        input: &str,
        fuel: u64,
        memory: u64,
    ) -> Result<(Arc<crate::run::Program>, Authorized, Limits), Refusal> {
        let limits = &self.parent.limits;
        let attempt = self.attempts.fetch_add(1, Ordering::SeqCst);
        if attempt >= limits.max_spawns {
            self.cap_reached(&self.reported_spawns, "spawns", limits.max_spawns).await;
            return Err(Refusal::new(
                Outcome::GrantRefused,
                SpawnError::Limit(format!("spawn limit reached: a run may spawn at most {} agents", limits.max_spawns)),
            ));
        }
        let depth = self.parent.depth + 1;
        if depth > limits.max_spawn_depth {
            self.cap_reached(&self.reported_depth, "spawn-depth", limits.max_spawn_depth).await;
            return Err(Refusal::new(
                Outcome::GrantRefused,
                SpawnError::Limit(format!(
                    "spawn depth limit reached: agents may nest at most {} deep",
                    limits.max_spawn_depth
                )),
            ));
        }
        let invalid = |m: String| Refusal::new(Outcome::InvalidInput, SpawnError::InvalidInput(m));
        crate::tools::check_name(agent).map_err(|e| invalid(e.replace("tool name", "agent name")))?;
        crate::runtime::check_input(Some(input)).map_err(|e| invalid(e.to_string()))?;
        let denied = |m: String| Refusal::new(Outcome::GrantRefused, SpawnError::Denied(m));
        self.token_still_good().map_err(denied)?;
        self.allows(Grant { kind: "spawn".into(), value: agent.into(), mode: String::new() })
            .map_err(|e| denied(format!("grant refused: {e}")))?;

        let not_found = |m: String| Refusal::new(Outcome::FileNotFound, SpawnError::NotFound(m));
        let source = match crate::plugin::installed_agent(&self.home, agent) {
            Ok(Some(source)) => source,
            Ok(None) => return Err(not_found(format!("no installed agent package named {agent}"))),
            Err(e) => return Err(not_found(format!("{agent}: {}", one_line(&e.to_string())))),
        };
        let crate::runtime::Source::Plugin { name, identity, bytes } = source else {
            return Err(not_found(format!("{agent} is not an installed package")));
        };
        let (sandboxed, granted) = self.declared(&name);
        let mut grants = crate::tools::grants::intersect(&sandboxed, &self.parent.grants);

        // At most what is left of the parent's fuel, memory and time; the parent's caps, never raised.
        let timeout = self.parent.deadline.saturating_duration_since(Instant::now());
        if timeout < Duration::from_millis(1) || fuel == 0 {
            return Err(Refusal::new(
                Outcome::Timeout,
                SpawnError::Failed(format!("{agent} not started: the parent has no time or fuel left")),
            ));
        }
        let child_limits = Limits {
            fuel,
            timeout,
            max_memory: memory.min(limits.max_memory),
            max_output: limits.max_output.min(1 << 20),
            ..limits.clone()
        };
        let nets: Vec<_> = grants.peers.iter().map(|p| p.grant.clone()).collect();
        let identity_component = Some(self.parent.identity.component.clone());
        let mut request = crate::commands::run::token_request(
            &self.parent.identity.agent,
            &nets,
            &grants,
            &child_limits,
            identity_component,
        );
        request.plugin = self.parent.identity.plugin.clone();
        request.grants.extend(granted);
        let narrowing = Attenuation::exactly(&request);
        let text = self
            .parent
            .token
            .token
            .to_base64()
            .map_err(|e| e.to_string())
            .and_then(|t| crate::token::parse_unverified(&t).map_err(|e| e.to_string()))
            .and_then(|t| crate::token::attenuate(&t, &narrowing, SystemTime::now()).map_err(|e| e.to_string()))
            .and_then(|t| t.to_base64().map_err(|e| e.to_string()))
            .map_err(|e| denied(format!("cannot narrow the token to {agent}: {}", one_line(&e))))?;
        let Some(log) = self.runner.events() else {
            return Err(denied("this host keeps no log, so it spawns no agent".into()));
        };
        let authorization =
            crate::token::authorize_caller(&self.home, log.db(), Some(&text), &request, crate::token::LOCAL_TTL)
                .map_err(|e| match e {
                    RunError::GrantRefused { .. } | RunError::TokenRefused(_) => denied(one_line(&e.to_string())),
                    e => Refusal::new(e.outcome(), SpawnError::Failed(one_line(&e.to_string()))),
                })?;
        grants.token_id = authorization.token_id;
        grants.rate = authorization.rate;
        grants.token = Some(authorization.token);
        grants.plugin = Some(identity);

        let program = self.runner.load_bytes(&name, &bytes).map_err(|e| {
            Refusal::new(e.outcome(), SpawnError::Failed(format!("{agent}: {}", one_line(&e.to_string()))))
        })?;
        if program.world() != crate::component::World::Agent {
            return Err(invalid(format!("{agent} is not an agent (toka:agent/agent): it cannot be spawned")));
        }
        Ok((program, grants, child_limits))
    }
}

impl SpawnSession {
    /// `toka:agent/spawn.schedule`: checks what a spawn checks (but the caps, which the kernel counts for pending
    /// tasks), then records the task with what it will run with (see [`crate::tasks`]).
    async fn schedule_checked(&self, agent: &str, input: &str, delay_ms: u64) -> Result<String, Refusal> {
        let invalid = |m: String| Refusal::new(Outcome::InvalidInput, SpawnError::InvalidInput(m));
        crate::tools::check_name(agent).map_err(|e| invalid(e.replace("tool name", "agent name")))?;
        crate::runtime::check_input(Some(input)).map_err(|e| invalid(e.to_string()))?;
        if input.len() > MAX_TASK_INPUT {
            return Err(invalid(format!("a task's input is at most {MAX_TASK_INPUT} bytes, this one {}", input.len())));
        }
        if u128::from(delay_ms) > MAX_DELAY.as_millis() {
            return Err(invalid("a task may be scheduled at most 7 days ahead".into()));
        }
        let denied = |m: String| Refusal::new(Outcome::GrantRefused, SpawnError::Denied(m));
        self.token_still_good().map_err(denied)?;
        let spawn = Grant { kind: "spawn".into(), value: agent.into(), mode: String::new() };
        self.allows(spawn.clone()).map_err(|e| denied(format!("grant refused: {e}")))?;
        // A task acts on the scheduling token's authority when it starts, so that authority must still hold then:
        // a token that expires (or whose window closes) before the task is due cannot schedule it. An operator's
        // run without a token is the operator's authority; its token's minute-long life is not a limit they set.
        if !self.parent.grants.local_token {
            let due = SystemTime::now() + Duration::from_millis(delay_ms);
            self.allows_at(spawn, due)
                .map_err(|e| denied(format!("grant refused at the task's due time, {delay_ms} ms from now: {e}")))?;
        }
        let not_found = |m: String| Refusal::new(Outcome::FileNotFound, SpawnError::NotFound(m));
        let source = match crate::plugin::installed_agent(&self.home, agent) {
            Ok(Some(source)) => source,
            Ok(None) => return Err(not_found(format!("no installed agent package named {agent}"))),
            Err(e) => return Err(not_found(format!("{agent}: {}", one_line(&e.to_string())))),
        };
        let crate::runtime::Source::Plugin { bytes, .. } = source else {
            return Err(not_found(format!("{agent} is not an installed package")));
        };
        let (sandboxed, granted) = self.declared(agent);
        // Directories and variables are the parent's own (opened and read for its run), not the home's: a task
        // later gets neither. Peers it may reach are named again when it starts.
        let reachable = crate::tools::grants::intersect(&sandboxed, &self.parent.grants);
        let mut grants: Vec<String> = reachable.peers.iter().map(|p| format!("net:{}", p.grant.canonical())).collect();
        grants.extend(granted.iter().map(ToString::to_string));
        let limits = &self.parent.limits;
        let token = &self.parent.token;
        let spec = crate::tasks::TaskSpec {
            sha256: crate::plugin::sha256_hex(&bytes),
            grants,
            fuel: limits.fuel,
            timeout_ms: u64::try_from(limits.timeout.as_millis()).unwrap_or(u64::MAX),
            memory: limits.max_memory,
            max_records: limits.max_records,
            max_spawn_depth: limits.max_spawn_depth,
            max_spawns: limits.max_spawns,
            acting_agent: self.parent.identity.agent.clone(),
            acting_component: self.parent.identity.component.clone(),
            acting_plugin: self.parent.identity.plugin.clone(),
            chain: token.revocation_ids.clone(),
            root_key_id: Some(token.root_key_id),
        };
        let task_id = crate::run::fresh_task_id();
        let op = Op::ScheduleTask {
            task_id: task_id.clone(),
            agent: agent.into(),
            input: input.into(),
            due_ms: Some(crate::events::now_ms().saturating_add(delay_ms)),
            parent_run: Some(self.parent.run_id.clone()),
            detail: serde_json::json!({ "task": spec }),
        };
        let Some(log) = self.runner.events() else {
            return Err(denied("this host keeps no log, so it schedules nothing".into()));
        };
        match log.submit_accepted(crate::journal::operation_by(&self.parent.token_id, op)).await {
            Ok(_) => Ok(task_id),
            Err(crate::events::AppendError::Rejected(why)) if why.starts_with("task cap") => {
                Err(Refusal::new(Outcome::GrantRefused, SpawnError::Limit(why)))
            }
            Err(crate::events::AppendError::Rejected(why)) => Err(denied(why)),
            Err(e) => Err(Refusal::new(Outcome::HostError, SpawnError::Failed(format!("cannot record the task: {e}")))),
        }
    }

    /// What `agent`'s package declares: the needs a sandbox serves (directories, variables, peers) and the grants
    /// of `tool:`, `llm:` and `spawn:` kind that the parent's token allows.
    fn declared(&self, agent: &str) -> (Vec<Declared>, Vec<Grant>) {
        let declared = crate::plugin::store::Store::open(&self.home)
            .find(agent)
            .ok()
            .flatten()
            .and_then(|r| r.manifest().ok())
            .map(|m| m.grants)
            .unwrap_or_default();
        let mut sandboxed = Vec::new();
        let mut granted = Vec::new();
        for text in &declared {
            if let Ok(d) = Declared::parse(text) {
                if let Declared::Llm(model) = &d {
                    granted.push(Grant { kind: "llm".into(), value: model.clone(), mode: String::new() });
                } else {
                    sandboxed.push(d);
                }
            } else if let Ok(g) = Grant::parse(text)
                && matches!(g.kind.as_str(), "tool" | "spawn")
            {
                granted.push(g);
            }
        }
        let granted = granted.into_iter().filter(|g| self.allows(g.clone()).is_ok()).collect();
        (sandboxed, granted)
    }
}

impl Spawner for SpawnSession {
    fn schedule(&self, agent: String, input: String, delay_ms: u64) -> BoxFuture<'_, Result<String, SpawnError>> {
        Box::pin(async move {
            match self.schedule_checked(&agent, &input, delay_ms).await {
                Ok(task_id) => Ok(task_id),
                Err(refusal) => self.refused(&agent, refusal).await.result,
            }
        })
    }

    fn spawn(&self, agent: String, input: String, fuel: u64, memory: u64) -> BoxFuture<'_, SpawnAnswer> {
        Box::pin(async move {
            let (program, grants, limits) = match self.prepare(&agent, &input, fuel, memory).await {
                Ok(ready) => ready,
                Err(refusal) => return self.refused(&agent, refusal).await,
            };
            let run_id = crate::run::fresh_run_id();
            let control = RunControl {
                run_id: Some(run_id.clone()),
                cancel: self.parent.cancel.clone(),
                spawned: Some(SpawnedBy {
                    parent_run: self.parent.run_id.clone(),
                    depth: self.parent.depth + 1,
                    identity: self.parent.identity.clone(),
                }),
                ..RunControl::default()
            };
            let invocation = Invocation::Task { id: crate::run::fresh_task_id(), input };
            let runner = self.runner.clone();
            // A task of its own: the child's ending is recorded even if the parent stops waiting for it.
            let child = tokio::spawn(async move {
                let output = OutputMode { echo: false, capture: false };
                runner.run_with(&program, &grants, &limits, &invocation, output, control).await
            });
            let report = match child.await {
                Ok(report) => report,
                Err(e) => {
                    return SpawnAnswer {
                        result: Err(SpawnError::Failed(format!("{agent} ({run_id}): the host lost the child: {e}"))),
                        fuel_consumed: fuel,
                    };
                }
            };
            let result = match (report.outcome, report.result) {
                (Outcome::Success, Some(output)) if output.len() > MAX_CHILD_OUTPUT => {
                    Err(SpawnError::Failed(format!(
                        "{agent} ({run_id}) returned {} bytes, over the {MAX_CHILD_OUTPUT} byte limit",
                        output.len()
                    )))
                }
                (Outcome::Success, Some(output)) => Ok(output),
                (Outcome::Success, None) => Ok("null".into()),
                (_, _) => Err(SpawnError::Failed(format!(
                    "{agent} ({run_id}): {}",
                    one_line(report.error.as_deref().unwrap_or("failed"))
                ))),
            };
            SpawnAnswer { result, fuel_consumed: report.fuel_consumed }
        })
    }
}
