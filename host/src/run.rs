//! Running a loaded program (a component, or a preview 1 core module) in a fresh sandbox and classifying how it ended.
//!
//! A [`Runner`] keeps every component it has loaded (compiled code and a type-checked `InstancePre`), so running the
//! same file again in the process only instantiates. Each run gets its own store: nothing a guest does survives into
//! the next run. A guest can end a run in many ways (trap, fuel, deadline, memory, output flood, `proc_exit`); each is
//! told apart by host-side facts (trap codes, limiter and output flags), never by parsing guest text (the
//! classification itself is the sandbox's, [`crate::sandbox::outcome`], shared with tool calls).

use crate::bindings::agent::{Agent, AgentPre};
use crate::bindings::{AgentError, Task};
use crate::component::{self, Loaded, World};
use crate::engine::{EngineOptions, HostEngine};
use crate::error::{Outcome, RunError, one_line};
use crate::events::{AppendError, EventLog};
use crate::grants::Authorized;
use crate::kernel::{LOCAL_TOKEN, Op};
use crate::report::{AgentErrorReport, ComponentReport, RunReport};
use crate::sandbox::outcome::classify;
use crate::sandbox::{self, OutputMode, RunContext, Sandbox};
use crate::tools::call::{Caller, ToolHost, ToolSession};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime_wasi::I32Exit;
use wasmtime_wasi::p2::bindings::CommandPre;

// Limits and the recording helpers live in the layers below a run (the sandbox and the journal); they are named
// here too, where callers have always found them.
pub use crate::journal::{fresh_call_id, fresh_plan_id, fresh_run_id, fresh_task_id, operation, operation_by};
pub use crate::sandbox::Limits;

/// What a caller may set about one run besides its program, grants and limits.
#[derive(Debug, Clone, Default)]
pub struct RunControl {
    /// The run's id (default: a fresh one); a caller that must name the run before it starts chooses it.
    pub run_id: Option<String>,
    /// A switch to cancel the run from outside.
    pub cancel: Option<Arc<crate::sandbox::cancel::Cancel>>,
    /// The run is a child started by another run (`toka:agent/spawn`), not a run of its own.
    pub spawned: Option<crate::spawn::SpawnedBy>,
    /// Whose authority the run's boundary calls state to its token, if not its own (a scheduled task acts under
    /// the run that scheduled it).
    pub acting_as: Option<crate::spawn::Identity>,
    /// Revocation ids the run's start names besides its token's (a scheduled task: the scheduling token's chain),
    /// so that revoking any of them stops the run.
    pub chain: Vec<String>,
    /// The run's start, already submitted to the event log by [`Runner::start_early`] (while its program loaded):
    /// the run waits for it to be durable instead of submitting its own.
    pub started: Option<Started>,
}

/// A run's start submitted to the event log before the run is called; see [`Runner::start_early`].
#[derive(Clone)]
pub struct Started {
    run_id: String,
    token: String,
    pending: Arc<std::sync::Mutex<Option<crate::events::Pending>>>,
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started").field("run_id", &self.run_id).finish_non_exhaustive()
    }
}

impl Started {
    /// Resolves once the start is durable (a rejection is an error). Only the first caller waits for it.
    async fn accepted(&self) -> Result<(), AppendError> {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner()).take();
        match pending {
            Some(pending) => pending.accepted().await.map(drop),
            None => Err(AppendError::Invalid(format!("the start of run {} was awaited twice", self.run_id))),
        }
    }
}

/// What a run's start records about it.
pub struct StartOf<'a> {
    pub run_id: &'a str,
    pub agent: &'a str,
    /// The component's file (or upload name), and the sha256 of its bytes.
    pub component: &'a Path,
    pub sha256: &'a str,
    pub world: World,
    pub grants: &'a Authorized,
    pub limits: &'a Limits,
    pub invocation: &'a Invocation,
}

/// Most programs a runner keeps loaded.
const MAX_PROGRAMS: usize = 256;

/// Largest task input accepted, in bytes.
pub const MAX_INPUT: usize = 16 << 20;

/// What to call in the component.
#[derive(Debug, Clone)]
pub enum Invocation {
    /// Call an agent's `run` with this task.
    Task { id: String, input: String },
    /// Call a command's `wasi:cli/run` with these arguments (not counting the program name).
    Command { args: Vec<String> },
}

enum Prepared {
    Agent(AgentPre<sandbox::SandboxState>),
    /// An agent whose `run` is async (`toka:agent-async/agent`, WASI 0.3): called inside the store's concurrent
    /// event loop.
    P3Agent(crate::bindings::agent_async::AgentPre<sandbox::SandboxState>),
    Command(CommandPre<sandbox::SandboxState>),
    /// A WASI 0.3 command: its async `wasi:cli/run@0.3.x` is called inside the store's concurrent event loop.
    P3Command(wasmtime_wasi::p3::bindings::CommandPre<sandbox::SandboxState>),
    /// A preview 1 command module: `_start` is called.
    Module(wasmtime::InstancePre<sandbox::SandboxState>),
}

/// A component loaded once, runnable many times.
pub struct Program {
    pub loaded: Loaded,
    prepared: Prepared,
    name: String,
}

impl Program {
    /// Checks that `loaded` is a world a run can call, and readies the call: agent `name`'s program.
    pub fn prepare(loaded: Loaded, name: String) -> Result<Program, RunError> {
        let shown = loaded.path.display().to_string();
        let wrong =
            |e: wasmtime::Error| RunError::WrongWorld { path: shown.clone(), reason: component::root_cause(&e) };
        let prepared = match (&loaded.compiled, loaded.world) {
            (component::Compiled::Module { pre }, _) => Prepared::Module(pre.clone()),
            (component::Compiled::Component { pre }, World::Agent)
                if component::export_is_async(pre.component(), "run") =>
            {
                Prepared::P3Agent(crate::bindings::agent_async::AgentPre::new(pre.clone()).map_err(wrong)?)
            }
            (component::Compiled::Component { pre }, World::Agent) => {
                Prepared::Agent(AgentPre::new(pre.clone()).map_err(wrong)?)
            }
            (component::Compiled::Component { pre }, World::Command) => {
                match component::command_version(pre.component()) {
                    Some(component::CliRun::P2) => Prepared::Command(CommandPre::new(pre.clone()).map_err(wrong)?),
                    Some(component::CliRun::P3) => {
                        Prepared::P3Command(wasmtime_wasi::p3::bindings::CommandPre::new(pre.clone()).map_err(wrong)?)
                    }
                    None => {
                        return Err(RunError::WrongWorld {
                            path: shown,
                            reason: "a command must export one version of wasi:cli/run (0.2 or 0.3)".into(),
                        });
                    }
                }
            }
            (component::Compiled::Component { .. }, World::Tool) => {
                return Err(RunError::WrongWorld {
                    path: shown,
                    reason: "this is a toka:agent/tool component; tools are called by agents, not run".into(),
                });
            }
        };
        Ok(Program { loaded, prepared, name })
    }

    pub fn world(&self) -> World {
        self.loaded.world
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Loads components and runs them. A clone shares everything (the engine, the programs loaded, the log, the tool
/// host, the gateway): it is how a run's spawned children run on the same runner.
#[derive(Clone)]
pub struct Runner {
    host: Arc<HostEngine>,
    programs: Arc<std::sync::Mutex<HashMap<std::path::PathBuf, Arc<Program>>>>,
    events: Option<Arc<EventLog>>,
    tools: Option<Arc<ToolHost>>,
    llm: Option<Arc<crate::llm::Gateway>>,
    /// The home whose installed agents runs may spawn (`None`: runs cannot spawn).
    spawn_home: Option<Arc<std::path::PathBuf>>,
    /// The cluster node this runner's runs execute on (named in their `start-run`), if this host is a node.
    node: Option<u64>,
}

impl Runner {
    /// A runner with its own engine, no event log and no tools (library use and benches; commands use
    /// [`crate::runtime::Host::runner`]).
    pub fn new(options: &EngineOptions) -> Result<Self, RunError> {
        let host = HostEngine::new(options).map_err(|e| RunError::host(format!("cannot start the engine: {e:#}")))?;
        Ok(Runner::from_parts(Arc::new(host), None, None))
    }

    /// A runner on a shared engine, recording in `events` (which also gives agents their `events` and `state`
    /// interfaces), letting agents call tools through `tools`.
    pub fn from_parts(host: Arc<HostEngine>, events: Option<Arc<EventLog>>, tools: Option<Arc<ToolHost>>) -> Self {
        Runner { host, programs: Arc::default(), events, tools, llm: None, spawn_home: None, node: None }
    }

    /// Names cluster node `node` as where this runner's runs execute (so that the cluster can end them if the node
    /// is lost).
    pub fn on_node(mut self, node: Option<u64>) -> Self {
        self.node = node;
        self
    }

    /// Lets agents spawn the agents installed in `home` (`toka:agent/spawn`), as their tokens allow.
    pub fn with_spawn(mut self, home: std::path::PathBuf) -> Self {
        self.spawn_home = Some(Arc::new(home));
        self
    }

    /// The event log runs are recorded in, if any.
    pub fn events(&self) -> Option<&Arc<EventLog>> {
        self.events.as_ref()
    }

    /// Lets agents call the tools installed in `registry` (recorded in this runner's event log, if it has one).
    pub fn with_tools(mut self, registry: crate::tools::registry::Registry) -> Self {
        self.tools = Some(Arc::new(ToolHost::new(self.host.clone(), registry, self.events.clone())));
        self
    }

    /// Lets agents call the models of `gateway` (`toka:agent/llm`), as their tokens allow.
    pub fn with_llm(mut self, gateway: Arc<crate::llm::Gateway>) -> Self {
        self.llm = Some(gateway);
        self
    }

    /// The tool host agents of this runner call tools through, if any.
    pub fn tools(&self) -> Option<&Arc<ToolHost>> {
        self.tools.as_ref()
    }

    /// Records every run in `log` from now on (and gives agents their `events` and `state` interfaces).
    pub fn with_events(mut self, log: Arc<EventLog>) -> Self {
        self.events = Some(log);
        self
    }

    /// Submits the start of a run (`of`) before its program is loaded: the start is made durable while the load goes
    /// on, and the run (given the returned [`Started`] in its [`RunControl`]) waits for it before the guest starts.
    /// Without an event log, `None`. Once this is called, the run must be recorded as ended: by
    /// [`Runner::run_with`], or by [`Runner::record_refusal_after`] if the load fails.
    pub fn start_early(&self, of: &StartOf<'_>) -> Option<Started> {
        Some(submit_start(self.events.as_ref()?, self.node, of))
    }

    /// The cluster node this runner's runs execute on, if this host is a node.
    pub fn node(&self) -> Option<u64> {
        self.node
    }

    /// Records a run refused while its start, submitted early, was being made durable: as the run's ending (with
    /// the refusal's outcome and exit code) once the start is in the log, else as a refusal.
    pub async fn record_refusal_after(
        &self,
        component: &Path,
        err: &RunError,
        started: Option<&Started>,
    ) -> Result<(), AppendError> {
        if let (Some(log), Some(started)) = (&self.events, started)
            && started.accepted().await.is_ok()
        {
            let mut report = RunReport::refused(err);
            report.run_id = Some(started.run_id.clone());
            return record_ending(log, &started.token, &started.run_id, &report, None).await;
        }
        self.record_refusal(component, err).await
    }

    /// Records a run that was refused before it started (bad file, refused grant, bad input).
    pub async fn record_refusal(&self, component: &Path, err: &RunError) -> Result<(), AppendError> {
        let Some(log) = &self.events else {
            return Ok(());
        };
        let detail = serde_json::json!({
            "component": component.display().to_string(),
            "outcome": err.outcome(),
            "exit_code": err.outcome().exit_code(),
            "error": err.to_string(),
        });
        let op = Op::RefuseRun {
            agent: agent_name(component),
            grant_refused: matches!(err, RunError::GrantRefused { .. }),
            detail,
        };
        log.submit_accepted(operation(op)).await.map(drop)
    }

    pub fn engine(&self) -> &Arc<HostEngine> {
        &self.host
    }

    /// Loads `path` (or returns the copy loaded before in this process).
    pub fn load(&self, path: &Path) -> Result<Arc<Program>, RunError> {
        if let Some(p) = self.loaded(path) {
            return Ok(p);
        }
        let loaded = component::load(&self.host, path)?;
        self.prepare(path.to_path_buf(), loaded, agent_name(path))
    }

    /// The program loaded from `path` before in this process, if any.
    pub fn loaded(&self, path: &Path) -> Option<Arc<Program>> {
        self.programs.lock().unwrap_or_else(|p| p.into_inner()).get(path).cloned()
    }

    /// Loads a component handed over as bytes, known as agent `name` (or the copy loaded before, by name and digest).
    pub fn load_bytes(&self, name: &str, bytes: &[u8]) -> Result<Arc<Program>, RunError> {
        crate::tools::check_name(name).map_err(|e| RunError::InvalidInput(e.replace("tool name", "agent name")))?;
        let sha256 = component::digest(bytes);
        let key = std::path::PathBuf::from(format!("upload:{name}@{sha256}"));
        if let Some(p) = self.loaded(&key) {
            return Ok(p);
        }
        let loaded = component::load_digested(&self.host, Path::new(name), bytes, sha256)?;
        self.prepare(key, loaded, name.to_string())
    }

    /// Checks that a loaded component is a world a run can call, and keeps it under `key`.
    fn prepare(&self, key: std::path::PathBuf, loaded: Loaded, name: String) -> Result<Arc<Program>, RunError> {
        Ok(self.keep(key, Program::prepare(loaded, name)?))
    }

    /// Keeps `program` under `key`, for [`Runner::loaded`] to find.
    pub fn keep(&self, key: std::path::PathBuf, program: Program) -> Arc<Program> {
        let program = Arc::new(program);
        let mut programs = self.programs.lock().unwrap_or_else(|p| p.into_inner());
        // A long-running host keeps a bounded number of programs (uploads could otherwise grow it without end).
        if programs.len() >= MAX_PROGRAMS
            && let Some(old) = programs.keys().next().cloned()
        {
            programs.remove(&old);
        }
        programs.insert(key, program.clone());
        program
    }

    /// Runs `program` once in a fresh sandbox. Never panics on guest behaviour; every ending is a report.
    ///
    /// With an event log, `run.started` is durable before the guest starts (a run that cannot be recorded does not
    /// run), and `fuel.consumed` plus `run.completed` or `run.failed` are durable before the report is returned.
    pub async fn run(
        &self,
        program: &Program,
        grants: &Authorized,
        limits: &Limits,
        invocation: &Invocation,
        output: OutputMode,
    ) -> RunReport {
        self.run_with(program, grants, limits, invocation, output, RunControl::default()).await
    }

    /// [`Runner::run`], with the run's id chosen by the caller and a switch to cancel it from outside.
    ///
    /// Traced as the span `run` (its id, agent, and how it ended), with a `record` span for each of its start and
    /// its ending being made durable.
    pub async fn run_with(
        &self,
        program: &Program,
        grants: &Authorized,
        limits: &Limits,
        invocation: &Invocation,
        output: OutputMode,
        control: RunControl,
    ) -> RunReport {
        use tracing::Instrument;
        let run_id = control.run_id.clone().unwrap_or_else(fresh_run_id);
        let span = tracing::info_span!("run", run_id = %run_id, agent = %program.name, outcome = tracing::field::Empty,
            exit_code = tracing::field::Empty, fuel = tracing::field::Empty);
        let control = RunControl { run_id: Some(run_id), ..control };
        let report =
            self.run_traced(program, grants, limits, invocation, output, control).instrument(span.clone()).await;
        span.record("outcome", report.outcome.name());
        span.record("exit_code", report.exit_code);
        span.record("fuel", report.fuel_consumed);
        report
    }

    async fn run_traced(
        &self,
        program: &Program,
        grants: &Authorized,
        limits: &Limits,
        invocation: &Invocation,
        output: OutputMode,
        control: RunControl,
    ) -> RunReport {
        use tracing::Instrument;
        let context = RunContext {
            agent: program.name.clone(),
            run_id: control.run_id.clone().unwrap_or_else(fresh_run_id),
            events: self.events.clone(),
            state: grants.state,
            token: token_of(grants),
            tools: None,
            budget: Arc::new(crate::sandbox::budget::RunBudget::new(limits.max_records)),
            cancel: control.cancel.clone(),
            llm: None,
            spawner: None,
        };
        let mut context = context;
        // Whose authority the run's boundary calls state to its token: its own, or for a spawned child, its parent's
        // (the child acts under the parent's token, narrowed, and that token may be bound to the parent alone).
        let identity = match (&control.spawned, &control.acting_as) {
            (Some(by), _) => by.identity.clone(),
            (None, Some(identity)) => identity.clone(),
            (None, None) => crate::spawn::Identity {
                agent: program.name.clone(),
                component: program.loaded.sha256.clone(),
                plugin: grants.plugin.clone(),
            },
        };
        let mut llm = None;
        if let (Some(gateway), Some(token)) = (&self.llm, &grants.token) {
            let cap = [limits.llm_tokens, token.llm_tokens]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(crate::llm::DEFAULT_RUN_TOKENS);
            let caller = crate::llm::Caller {
                agent: identity.agent.clone(),
                run_id: Some(context.run_id.clone()),
                token_id: context.token.clone(),
                token: token.clone(),
                rate: grants.rate,
                component: Some(identity.component.clone()),
                deadline: crate::units::deadline_after(limits.timeout),
                budget: Some(context.budget.clone()),
                tokens: Arc::new(crate::llm::RunTokens::new(cap)),
                cancel: context.cancel.clone(),
                confined: Vec::new(),
            };
            let session = Arc::new(crate::llm::Session { gateway: gateway.clone(), caller });
            context.llm = Some(session.clone() as Arc<dyn crate::sandbox::caps::llm::ModelGateway>);
            llm = Some(session);
        }
        if let (Some(home), Some(token)) = (&self.spawn_home, &grants.token) {
            let parent = crate::spawn::Parent {
                identity: identity.clone(),
                run_id: context.run_id.clone(),
                token_id: context.token.clone(),
                token: token.clone(),
                grants: grants.clone(),
                depth: control.spawned.as_ref().map_or(0, |by| by.depth),
                deadline: crate::units::deadline_after(limits.timeout),
                limits: limits.clone(),
                cancel: context.cancel.clone(),
            };
            let session = crate::spawn::SpawnSession::new(self.clone(), home.clone(), parent);
            context.spawner = Some(Arc::new(session) as Arc<dyn crate::sandbox::caps::spawn::Spawner>);
        }
        if let (Some(host), Some(token)) = (&self.tools, &grants.token) {
            let caller = Caller {
                agent: identity.agent.clone(),
                run_id: Some(context.run_id.clone()),
                token_id: context.token.clone(),
                token: token.clone(),
                grants: grants.clone(),
                rate: grants.rate,
                depth: 0,
                deadline: crate::units::deadline_after(limits.timeout),
                max_memory: limits.max_memory,
                component: Some(identity.component.clone()),
                plugin: identity.plugin.clone(),
                budget: Some(context.budget.clone()),
                cancel: context.cancel.clone(),
                llm,
            };
            context.tools = Some(Arc::new(ToolSession::new(host.clone(), caller)));
        }
        if let Some(log) = &self.events {
            let record = tracing::info_span!("record", run_id = %context.run_id, event = "run.started");
            let started = match &control.started {
                Some(started) => started.accepted().instrument(record).await,
                None => {
                    let of = StartOf {
                        run_id: &context.run_id,
                        agent: &context.agent,
                        component: &program.loaded.path,
                        sha256: &program.loaded.sha256,
                        world: program.loaded.world,
                        grants,
                        limits,
                        invocation,
                    };
                    let start = start_operation(self.node, &of, &control);
                    log.submit_accepted(start).instrument(record).await.map(drop)
                }
            };
            match started {
                Ok(()) => {}
                // The kernel refused the start (the `op.rejected` event records why): a used-up rate limit, or a
                // token revoked since it was checked.
                Err(AppendError::Rejected(reason)) if reason.starts_with("rate limit") => {
                    return RunReport::refused(&RunError::RateLimited(reason));
                }
                Err(AppendError::Rejected(reason)) => return RunReport::refused(&RunError::TokenRefused(reason)),
                Err(e) => return RunReport::refused(&RunError::host(format!("cannot record the run's start: {e}"))),
            }
        }
        // The guest's store is taken down inside: whatever it still held that records its own ending when dropped (a
        // model stream the guest left open) is recorded before the run's ending.
        let mut report = self.run_in_sandbox(program, grants, limits, invocation, output, &context).await;
        report.run_id = Some(context.run_id.clone());
        let record = tracing::info_span!("record", run_id = %context.run_id, event = "run.ended");
        let parent = control.spawned.as_ref().map(|by| by.parent_run.as_str());
        if let Some(log) = &self.events
            && let Err(e) =
                record_ending(log, &context.token, &context.run_id, &report, parent).instrument(record).await
        {
            report.outcome = Outcome::HostError;
            report.exit_code = Outcome::HostError.exit_code();
            report.error = Some(format!("the run ended but its ending could not be recorded: {e}"));
        }
        report
    }

    async fn run_in_sandbox(
        &self,
        program: &Program,
        grants: &Authorized,
        limits: &Limits,
        invocation: &Invocation,
        output: OutputMode,
        context: &RunContext,
    ) -> RunReport {
        let argv: Vec<String> = match invocation {
            Invocation::Command { args } => std::iter::once(program.name.clone()).chain(args.iter().cloned()).collect(),
            Invocation::Task { .. } => vec![program.name.clone()],
        };
        // The store must be on the engine the program was compiled on.
        let engine = match &program.loaded.compiled {
            component::Compiled::Component { pre } => pre.component().engine(),
            component::Compiled::Module { .. } => &self.host.engine,
        };
        let mut sandbox = match sandbox::build_on(&self.host, engine, grants, limits, output, context, &argv) {
            Ok(s) => s,
            Err(e) => return RunReport::refused(&e),
        };
        let started = Instant::now();
        // The epoch deadline stops guest code; this outer deadline also stops a guest parked in a host call.
        let grace = limits.timeout.saturating_add(Duration::from_millis(250));
        let cancel = context.cancel.clone();
        let ending = match (&program.prepared, invocation) {
            (Prepared::Agent(pre), Invocation::Task { id, input }) => {
                let task = Task { id: id.clone(), input: input.clone() };
                let call = call_agent(pre, &mut sandbox, &task);
                bounded(call, grace, cancel.as_deref()).await
            }
            (Prepared::P3Agent(pre), Invocation::Task { id, input }) => {
                let task = Task { id: id.clone(), input: input.clone() };
                let call = call_p3_agent(pre, &mut sandbox, task);
                bounded(call, grace, cancel.as_deref()).await
            }
            (Prepared::Command(pre), Invocation::Command { .. }) => {
                let call = call_command(pre, &mut sandbox);
                bounded(call, grace, cancel.as_deref()).await
            }
            (Prepared::Module(pre), Invocation::Command { .. }) => {
                let call = call_module(pre, &mut sandbox);
                bounded(call, grace, cancel.as_deref()).await
            }
            (Prepared::P3Command(pre), Invocation::Command { .. }) => {
                let call = call_p3_command(pre, &mut sandbox);
                bounded(call, grace, cancel.as_deref()).await
            }
            (Prepared::Agent(_) | Prepared::P3Agent(_), Invocation::Command { .. }) => {
                Ok(Returned::Invalid("this is an agent: it takes a task (--input), not command-line arguments".into()))
            }
            (Prepared::Command(_) | Prepared::P3Command(_) | Prepared::Module(_), Invocation::Task { .. }) => {
                Ok(Returned::Invalid("this is a command: it takes arguments, not a task".into()))
            }
        };
        let wall = started.elapsed();
        self.report(program, invocation, limits, sandbox, ending, wall)
    }

    fn report(
        &self,
        program: &Program,
        invocation: &Invocation,
        limits: &Limits,
        sandbox: Sandbox,
        ending: Result<Returned, Ending>,
        wall: Duration,
    ) -> RunReport {
        let Sandbox { store, stdout, stderr } = sandbox;
        // A WASI 0.3 write past the cap fails its stream rather than trapping: a guest that passed the cap and then
        // returned before the next epoch tick stopped it still ended by passing the cap.
        let ending = match (ending, stdout.over_limit().or_else(|| stderr.over_limit())) {
            (Ok(Returned::Exit(_) | Returned::Value(_) | Returned::AgentError(_)), Some(over)) => {
                Err(Ending::Error(wasmtime::Error::new(over)))
            }
            (ending, _) => ending,
        };
        let fuel_consumed = if self.host.fuel { limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0)) } else { 0 };
        let (mut outcome, mut exit_code, mut error, mut result, mut agent_error) =
            (Outcome::Success, 0, None, None, None);
        match ending {
            Ok(Returned::Value(v)) => result = Some(v),
            Ok(Returned::AgentError(e)) => {
                let (kind, message) = match e {
                    AgentError::InvalidInput(m) => ("invalid-input", m),
                    AgentError::Failed(m) => ("failed", m),
                    AgentError::Denied(m) => ("denied", m),
                };
                outcome = Outcome::AgentError;
                error = Some(format!("agent error ({kind}): {}", one_line(&message)));
                agent_error = Some(AgentErrorReport { kind, message });
            }
            Ok(Returned::Exit(0)) => {}
            Ok(Returned::Exit(code)) => {
                outcome = Outcome::Exited;
                exit_code = code;
                error = Some(format!("exited with status {code}"));
            }
            Ok(Returned::Invalid(m)) => {
                outcome = Outcome::InvalidInput;
                error = Some(format!("invalid input: {m}"));
            }
            Err(Ending::Deadline) => {
                outcome = Outcome::Timeout;
                error = Some(format!("timeout: still running after {}", humantime::format_duration(limits.timeout)));
            }
            Err(Ending::Cancelled) => {
                outcome = Outcome::Cancelled;
                error = Some("cancelled".into());
            }
            Err(Ending::Error(e)) => {
                let (o, m) = classify(&e, &store, &stdout, &stderr, limits);
                outcome = o;
                error = Some(m);
            }
            Err(Ending::NotStarted(e)) => {
                let (o, m) = classify(&e, &store, &stdout, &stderr, limits);
                // A trap in a start function or the memory limiter's refusal is the guest's doing; any other failure
                // to instantiate is the host's (no instance slot or memory mapping left), never a guest trap.
                (outcome, error) = if o == Outcome::Trap && e.downcast_ref::<wasmtime::Trap>().is_none() {
                    let cause = one_line(&e.root_cause().to_string());
                    (Outcome::HostError, Some(format!("host error: cannot start the guest: {cause}")))
                } else {
                    (o, Some(m))
                };
            }
        }
        if outcome != Outcome::Exited {
            exit_code = outcome.exit_code();
        }
        let state = store.data();
        RunReport {
            outcome,
            exit_code,
            error,
            result,
            agent_error,
            component: Some(ComponentReport {
                path: program.loaded.path.display().to_string(),
                sha256: program.loaded.sha256.clone(),
                world: program.loaded.world,
                core_module: program.loaded.is_core_module(),
                compile_ms: program.loaded.compile_time.as_secs_f64() * 1e3,
                cache_hit: program.loaded.cache_hit,
            }),
            task_id: match invocation {
                Invocation::Task { id, .. } => Some(id.clone()),
                Invocation::Command { .. } => None,
            },
            run_id: None,
            fuel_consumed,
            wall_time_ms: wall.as_secs_f64() * 1e3,
            peak_memory_bytes: state.limiter.peak(),
            stdout: stdout.captured(),
            stderr: stderr.captured(),
            stdout_bytes: stdout.bytes_written(),
            stderr_bytes: stderr.bytes_written(),
            logs: state.log.records().to_vec(),
            logs_dropped: state.log.dropped(),
            unechoed_bytes: stdout.unechoed() + stderr.unechoed(),
            denied: state.denied.list(),
        }
    }
}

/// How a call returned normally.
enum Returned {
    Value(String),
    AgentError(AgentError),
    Exit(i32),
    Invalid(String),
}

/// How a call failed.
enum Ending {
    Error(wasmtime::Error),
    /// Instantiation failed: the guest never started.
    NotStarted(wasmtime::Error),
    Deadline,
    Cancelled,
}

/// Runs `call` until it ends, its outer deadline passes (a guest parked in a host call), or the run is cancelled.
async fn bounded(
    call: impl std::future::Future<Output = Result<Returned, Ending>>,
    grace: Duration,
    cancel: Option<&crate::sandbox::cancel::Cancel>,
) -> Result<Returned, Ending> {
    let timed = async {
        match tokio::time::timeout(grace, call).await {
            Ok(r) => r,
            Err(_) => Err(Ending::Deadline),
        }
    };
    match cancel {
        None => timed.await,
        Some(cancel) => tokio::select! {
            r = timed => r,
            () = cancel.cancelled() => Err(Ending::Cancelled),
        },
    }
}

async fn call_agent(pre: &AgentPre<sandbox::SandboxState>, sb: &mut Sandbox, task: &Task) -> Result<Returned, Ending> {
    let agent: Agent = pre.instantiate_async(&mut sb.store).await.map_err(Ending::NotStarted)?;
    match agent.call_run(&mut sb.store, task).await {
        Ok(Ok(v)) => Ok(Returned::Value(v)),
        Ok(Err(e)) => Ok(Returned::AgentError(e)),
        Err(e) => exit_or(e),
    }
}

async fn call_command(pre: &CommandPre<sandbox::SandboxState>, sb: &mut Sandbox) -> Result<Returned, Ending> {
    let command = pre.instantiate_async(&mut sb.store).await.map_err(Ending::NotStarted)?;
    match command.wasi_cli_run().call_run(&mut sb.store).await {
        Ok(Ok(())) => Ok(Returned::Exit(0)),
        Ok(Err(())) => Ok(Returned::Exit(1)),
        Err(e) => exit_or(e),
    }
}

/// Calls a WASI 0.3 command's async `run` inside the store's concurrent event loop (which also drives the host's
/// side of its streams and futures: stdout and stderr, files, sockets, timers), as `wasmtime run -S p3` does. The
/// run ends when `run` returns, whatever other tasks the guest still has.
async fn call_p3_command(
    pre: &wasmtime_wasi::p3::bindings::CommandPre<sandbox::SandboxState>,
    sb: &mut Sandbox,
) -> Result<Returned, Ending> {
    let command = pre.instantiate_async(&mut sb.store).await.map_err(Ending::NotStarted)?;
    let ran = sb.store.run_concurrent(async move |store| command.wasi_cli_run().call_run(store).await).await;
    match ran {
        Ok(Ok(Ok(()))) => Ok(Returned::Exit(0)),
        Ok(Ok(Err(()))) => Ok(Returned::Exit(1)),
        Ok(Err(e)) | Err(e) => exit_or(e),
    }
}

async fn call_module(pre: &wasmtime::InstancePre<sandbox::SandboxState>, sb: &mut Sandbox) -> Result<Returned, Ending> {
    let instance = pre.instantiate_async(&mut sb.store).await.map_err(Ending::NotStarted)?;
    let start = instance.get_typed_func::<(), ()>(&mut sb.store, "_start").map_err(Ending::Error)?;
    match start.call_async(&mut sb.store, ()).await {
        Ok(()) => Ok(Returned::Exit(0)),
        Err(e) => exit_or(e),
    }
}

/// Calls an async `run` (`toka:agent-async/agent`) inside the store's concurrent event loop, as WASI 0.3 commands are
/// called: the agent's own tasks and its WASI 0.3 calls make progress while it waits.
async fn call_p3_agent(
    pre: &crate::bindings::agent_async::AgentPre<sandbox::SandboxState>,
    sb: &mut Sandbox,
    task: Task,
) -> Result<Returned, Ending> {
    let agent = pre.instantiate_async(&mut sb.store).await.map_err(Ending::NotStarted)?;
    let ran = sb.store.run_concurrent(async move |store| agent.call_run(store, task).await).await;
    match ran {
        Ok(Ok(Ok(v))) => Ok(Returned::Value(v)),
        Ok(Ok(Err(e))) => Ok(Returned::AgentError(e)),
        Ok(Err(e)) | Err(e) => exit_or(e),
    }
}

/// `proc_exit` reaches the host as an error carrying the status; it is a normal ending, not a failure. A preview 1
/// status outside `0..126` is refused, and the program ends with status 1 (as under `wasmtime run`).
fn exit_or(e: wasmtime::Error) -> Result<Returned, Ending> {
    if let Some(I32Exit(code)) = e.downcast_ref::<I32Exit>() {
        return Ok(Returned::Exit(*code));
    }
    if e.downcast_ref::<crate::engine::InvalidExitStatus>().is_some() {
        return Ok(Returned::Exit(1));
    }
    Err(Ending::Error(e))
}

/// The process's resident set size in bytes, from `/proc/self/status` (0 where unavailable).
pub fn resident_set_bytes() -> u64 {
    proc_kib("/proc/self/status", "VmRSS:") * 1024
}

/// The process's proportional set size in bytes, from `/proc/self/smaps_rollup` (0 where unavailable): resident
/// memory with a page shared by several mappings (a component's copy-on-write memory image) counted once.
pub fn proportional_set_bytes() -> u64 {
    proc_kib("/proc/self/smaps_rollup", "Pss:") * 1024
}

/// The `field` line of a `/proc` file in KiB (0 where unavailable).
fn proc_kib(path: &str, field: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
}

/// The name an agent is known by: its file name without the extension.
pub fn agent_name(path: &Path) -> String {
    path.file_stem().map_or_else(|| "guest".into(), |s| s.to_string_lossy().into_owned())
}

/// The token a run's events are recorded under: its token's id, or the operator's own for a run without one.
fn token_of(grants: &Authorized) -> String {
    if grants.token_id.is_empty() { LOCAL_TOKEN.to_string() } else { grants.token_id.clone() }
}

/// Submits the start of a run (`of`) to `log` without waiting for it, as a runner on cluster node `node` does
/// ([`Runner::start_early`], whose contract holds: the run must then be recorded as ended).
pub fn submit_start(log: &EventLog, node: Option<u64>, of: &StartOf<'_>) -> Started {
    let start = start_operation(node, of, &RunControl::default());
    Started {
        run_id: of.run_id.to_string(),
        token: token_of(of.grants),
        pending: Arc::new(std::sync::Mutex::new(Some(log.submit_pending(start)))),
    }
}

/// The operation recording the start of a run (`of`) on cluster node `node`: `start-run`, or `spawn-agent` for a
/// spawned child.
fn start_operation(node: Option<u64>, of: &StartOf<'_>, control: &RunControl) -> crate::kernel::Operation {
    let grants = of.grants;
    let limits = of.limits;
    let detail = serde_json::json!({
        "component": of.component.display().to_string(),
        "sha256": of.sha256,
        "world": of.world,
        "grants": grants.summary(),
        "limits": { "fuel": limits.fuel, "timeout_ms": limits.timeout.as_millis() as u64,
                    "max_memory": limits.max_memory, "max_output": limits.max_output },
    });
    let task_id = match of.invocation {
        Invocation::Task { id, .. } => Some(id.clone()),
        Invocation::Command { .. } => None,
    };
    let op = match &control.spawned {
        None => Op::StartRun {
            run_id: of.run_id.to_string(),
            agent: of.agent.to_string(),
            task_id,
            detail,
            rate: grants.rate,
            node,
        },
        Some(by) => {
            let mut detail = detail;
            detail["depth"] = serde_json::json!(by.depth);
            Op::SpawnAgent {
                parent_run: by.parent_run.clone(),
                run_id: of.run_id.to_string(),
                agent: of.agent.to_string(),
                detail,
            }
        }
    };
    let mut start = operation_by(&token_of(grants), op);
    start.chain = grants.token.as_ref().map(|t| t.revocation_ids.clone()).unwrap_or_default();
    start.chain.extend(control.chain.iter().filter(|id| !start.chain.contains(id)).cloned().collect::<Vec<_>>());
    start
}

async fn record_ending(
    log: &EventLog,
    token: &str,
    run_id: &str,
    report: &RunReport,
    parent: Option<&str>,
) -> Result<(), AppendError> {
    let mut detail = serde_json::json!({
        "outcome": report.outcome,
        "exit_code": report.exit_code,
        "error": report.error,
        "fuel": report.fuel_consumed,
        "wall_time_ms": report.wall_time_ms,
        "peak_memory_bytes": report.peak_memory_bytes,
        "stdout_bytes": report.stdout_bytes,
        "stderr_bytes": report.stderr_bytes,
    });
    if !report.denied.is_empty() {
        detail["denied"] = serde_json::json!(report.denied);
    }
    if let Some(parent) = parent {
        detail["parent"] = serde_json::json!(parent);
    }
    // The result is part of what the run did, and the only copy once a server that ran it restarts; like every
    // recorded text it is bounded (a long one is cut with a marker by `bounds`), so the live report keeps the whole.
    if let Some(result) = &report.result {
        detail["result"] = serde_json::json!(result);
    }
    let (run_id, fuel) = (run_id.to_string(), report.fuel_consumed);
    let op = if report.outcome == Outcome::Success {
        Op::CompleteRun { run_id, fuel, detail }
    } else {
        let reason = serde_json::to_value(report.outcome).ok().and_then(|v| v.as_str().map(String::from));
        Op::FailRun { run_id, reason: reason.unwrap_or_default(), fuel, detail }
    };
    log.submit_accepted(operation_by(token, op)).await.map(drop)
}
