//! Calling a tool: checks, a fresh sandbox, the call, the record.
//!
//! Every call, from an agent (`tools.call`), an operator (`tool call`) or an MCP client, goes through
//! [`ToolHost::call`]:
//! 1. `tool.called` is recorded; the kernel refuses it if the caller's rate limit is used up;
//! 2. the call depth, the caller's token (`tool:NAME`, re-checked with the current time and revocations) and the
//!    input (JSON, against the tool's input schema) are checked;
//! 3. the tool runs in a fresh sandbox whose grants are its declared needs intersected with the caller's, with the
//!    caller's remaining fuel and time as its budget;
//! 4. the output is checked against the output schema, and `tool.completed` or `tool.failed` is recorded with the
//!    input and output sizes, fuel, wall time and outcome.
//!
//! Whatever the tool does (trap, loop, flood, bad output), the caller gets an error value, never a trap.

use super::grants::{Declared, intersect};
use super::registry::{Installed, Registry, RegistryError};
use super::reuse::{KeptBudget, KeptTools};
use super::schema::Refusal;
use crate::bindings::ToolError as WitToolError;
use crate::bindings::tool::ToolPre;
use crate::engine::HostEngine;
use crate::error::{Outcome, RunError, one_line};
use crate::events::{AppendError, EventLog};
use crate::grants::Authorized;
use crate::kernel::{Op, Rate};
use crate::sandbox::caps::BoxFuture;
use crate::sandbox::caps::llm::ModelGateway;
use crate::sandbox::caps::tools::{ToolAnswer, ToolBroker};
use crate::sandbox::outcome::classify;
use crate::sandbox::{self, Limits, OutputMode, RunContext, SandboxState};
use crate::token::{self, Grant, RunRequest, TokenLimits, Verified};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Deepest chain of tool calls (an agent calling a tool is depth 1; a tool calling another, 2 ...).
pub const DEFAULT_MAX_DEPTH: u32 = 4;
/// The longest one tool call may run, whatever time its caller has left.
pub const MAX_CALL_TIME: Duration = Duration::from_secs(60);
/// Largest tool input and output, in bytes.
pub const MAX_IO: usize = 4 << 20;

/// Who makes a call, with what rights.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The agent the caller's token is for (for `tool call` and MCP: the token's own agent).
    pub agent: String,
    /// The calling run, if the caller is a run.
    pub run_id: Option<String>,
    /// The token's revocation id, named by every operation of the call.
    pub token_id: String,
    pub token: Arc<Verified>,
    /// The caller's own grants: a tool gets at most these.
    pub grants: Authorized,
    pub rate: Option<Rate>,
    /// How many tool calls deep the caller already is (0 for an agent or an operator).
    pub depth: u32,
    /// When the caller's own time runs out.
    pub deadline: Instant,
    pub max_memory: u64,
    /// The sha256 (hex) of the calling run's component, checked against a token pinned to one (`None` outside a
    /// run: a pinned token cannot call tools from `tool call` or MCP).
    pub component: Option<String>,
    /// The installed package the calling run is (`KEY_ID/NAME`), checked against a token bound to one.
    pub plugin: Option<String>,
    /// The calling run's caps on recorded calls (`None` outside a run).
    pub budget: Option<Arc<crate::sandbox::budget::RunBudget>>,
    /// The calling run's cancellation switch: cancelling the run stops its tools too.
    pub cancel: Option<Arc<crate::sandbox::cancel::Cancel>>,
    /// The calling run's access to models: a tool that declares `llm:` needs calls those models through it.
    pub llm: Option<Arc<crate::llm::Session>>,
}

/// A sandbox's access to tools: the host and the caller the sandbox's guest calls as.
#[derive(Debug, Clone)]
pub struct ToolSession {
    pub host: Arc<ToolHost>,
    pub caller: Caller,
    /// The caller's kept instances of reusable tools (see [`super::reuse`]), dropped with the session; `None`: every
    /// call gets a fresh sandbox (a tool's own calls).
    pub kept: Option<Arc<KeptTools>>,
}

impl ToolSession {
    /// The session of a new top-level caller (a run), with its own, empty, set of kept instances.
    pub fn new(host: Arc<ToolHost>, caller: Caller) -> ToolSession {
        let kept = Some(Arc::new(host.kept_tools()));
        ToolSession { host, caller, kept }
    }
}

/// Why a call did not return an output.
#[derive(Debug, Clone)]
pub enum Failure {
    /// Not allowed: no `tool:NAME` grant, revoked or expired token, depth or rate limit.
    Denied(String),
    /// Bad input: unknown tool, not JSON, against the input schema, too large.
    InvalidInput(String),
    /// The tool failed: its own error, a trap, fuel, time or memory, or an output against its schema.
    Failed(String),
}

impl Failure {
    pub fn message(&self) -> &str {
        match self {
            Failure::Denied(m) | Failure::InvalidInput(m) | Failure::Failed(m) => m,
        }
    }

    pub fn into_wit(self) -> WitToolError {
        match self {
            Failure::Denied(m) => WitToolError::Denied(m),
            Failure::InvalidInput(m) => WitToolError::InvalidInput(m),
            Failure::Failed(m) => WitToolError::Failed(m),
        }
    }
}

/// How a call went.
#[derive(Debug, Clone)]
pub struct CallReport {
    pub call_id: String,
    pub tool: String,
    pub outcome: Outcome,
    pub result: Result<String, Failure>,
    pub fuel_consumed: u64,
    pub wall: Duration,
}

/// A tool component, linked and type-checked for the world it implements.
enum Pre {
    /// `toka:agent/tool`.
    Plain(ToolPre<SandboxState>),
    /// `toka:agent-async/tool` (WASI 0.3): `invoke` is async, called inside its store's concurrent event loop on the
    /// WASI 0.3 engine. Its instances are never kept for reuse.
    Async(crate::bindings::tool_async::ToolPre<SandboxState>),
}

impl Pre {
    fn new(pre: &wasmtime::component::InstancePre<SandboxState>) -> wasmtime::Result<Pre> {
        Ok(if crate::component::export_is_async(pre.component(), "invoke") {
            Pre::Async(crate::bindings::tool_async::ToolPre::new(pre.clone())?)
        } else {
            Pre::Plain(ToolPre::new(pre.clone())?)
        })
    }

    /// The engine the tool was compiled on, which its stores must be on.
    fn engine(&self) -> &wasmtime::Engine {
        match self {
            Pre::Plain(pre) => pre.engine(),
            Pre::Async(pre) => pre.engine(),
        }
    }

    /// Instantiates the tool in `store` and calls `describe`.
    async fn describe(&self, store: &mut wasmtime::Store<SandboxState>) -> wasmtime::Result<crate::bindings::ToolSpec> {
        match self {
            Pre::Plain(pre) => pre.instantiate_async(&mut *store).await?.call_describe(store).await,
            Pre::Async(pre) => pre.instantiate_async(&mut *store).await?.call_describe(store).await,
        }
    }
}

/// An installed tool, compiled and linked, with its schemas compiled.
pub struct LoadedTool {
    pub installed: Installed,
    pre: Pre,
    input: super::schema::Schema,
    output: super::schema::Schema,
    declared: Vec<Declared>,
}

/// Runs tools for any number of callers; keeps the tool it last loaded under each name (with its digest), so a
/// second call only instantiates.
pub struct ToolHost {
    pub engine: Arc<HostEngine>,
    pub registry: Registry,
    events: Option<Arc<EventLog>>,
    loaded: Mutex<HashMap<String, Arc<LoadedTool>>>,
    pub max_depth: u32,
    /// The host-wide cap on kept instances of reusable tools.
    kept_budget: Arc<KeptBudget>,
}

impl std::fmt::Debug for ToolHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolHost").field("registry", &self.registry).field("max_depth", &self.max_depth).finish()
    }
}

fn run_failure(e: &RunError) -> Failure {
    Failure::Failed(one_line(&e.to_string()))
}

/// The budget for a `describe()` call.
const DESCRIBE_LIMITS: Limits = Limits {
    fuel: 1_000_000_000,
    timeout: Duration::from_secs(10),
    max_memory: 256 << 20,
    max_output: 64 << 10,
    max_table_elements: 1_000_000,
    max_records: 0,
    llm_tokens: None,
    max_spawn_depth: 0,
    max_spawns: 0,
};

impl ToolHost {
    pub fn new(engine: Arc<HostEngine>, registry: Registry, events: Option<Arc<EventLog>>) -> Self {
        ToolHost {
            engine,
            registry,
            events,
            loaded: Mutex::new(HashMap::new()),
            max_depth: DEFAULT_MAX_DEPTH,
            kept_budget: Arc::default(),
        }
    }

    /// A new caller's set of kept instances (see [`super::reuse`]), counted against this host's caps.
    pub fn kept_tools(&self) -> KeptTools {
        KeptTools::new(self.kept_budget.clone())
    }

    /// The host-wide caps on kept instances, and what they hold now.
    pub fn kept_budget(&self) -> &KeptBudget {
        &self.kept_budget
    }

    /// Loads a tool component from `path` and asks it to describe itself, in a sandbox with no grants.
    pub async fn describe_file(&self, path: &std::path::Path) -> Result<(Vec<u8>, super::Spec), RunError> {
        let loaded = crate::component::load(&self.engine, path)?;
        if loaded.world != crate::component::World::Tool {
            return Err(RunError::WrongWorld {
                path: path.display().to_string(),
                reason: format!("expected a toka:agent/tool component, found {:?}", loaded.world).to_lowercase(),
            });
        }
        let wrong = |reason: String| RunError::WrongWorld { path: path.display().to_string(), reason };
        let pre =
            loaded.component_pre().ok_or_else(|| wrong("a preview 1 core module, not a tool component".into()))?;
        let pre = Pre::new(pre).map_err(|e| wrong(crate::component::root_cause(&e)))?;
        let context = RunContext {
            agent: "tool-describe".into(),
            run_id: "describe".into(),
            events: None,
            state: Default::default(),
            token: String::new(),
            tools: None,
            budget: Arc::default(),
            cancel: None,
            llm: None,
            spawner: None,
        };
        let output = OutputMode { echo: false, capture: false };
        let mut sb = sandbox::build_on(
            &self.engine,
            pre.engine(),
            &Authorized::default(),
            &DESCRIBE_LIMITS,
            output,
            &context,
            &[],
        )?;
        let call = pre.describe(&mut sb.store);
        let spec = match tokio::time::timeout(DESCRIBE_LIMITS.timeout + Duration::from_millis(250), call).await {
            Ok(Ok(spec)) => spec,
            Ok(Err(e)) => {
                let (_, message) = classify(&e, &sb.store, &sb.stdout, &sb.stderr, &DESCRIBE_LIMITS);
                return Err(RunError::InvalidInput(format!("{}: describe() failed: {message}", path.display())));
            }
            Err(_) => return Err(RunError::InvalidInput(format!("{}: describe() did not return", path.display()))),
        };
        let spec = super::Spec::from_wit(spec)
            .map_err(|e| RunError::InvalidInput(format!("{}: describe(): {e}", path.display())))?;
        let bytes = std::fs::read(path)
            .map_err(|e| RunError::Unreadable { path: path.display().to_string(), reason: e.to_string() })?;
        Ok((bytes, spec))
    }

    /// The installed tool `name`, loaded (and its digest checked) on first use.
    pub fn load(&self, name: &str) -> Result<Arc<LoadedTool>, Failure> {
        let installed = self.registry.installed(name).map_err(|e| match e {
            RegistryError::Unknown(_) => Failure::InvalidInput(e.to_string()),
            e => Failure::Failed(e.to_string()),
        })?;
        // A tool from a package: its publisher must still be trusted at every call, before the cache is looked at,
        // so a publisher removed from trust stops its tools in long-running processes (serve, mcp) too.
        let trust = match &installed.plugin {
            Some(identity) => {
                let home = self.registry.home();
                let trust = crate::plugin::trust::TrustStore::load(home).map_err(|e| Failure::Failed(e.to_string()))?;
                let key_id = identity.split_once('/').map_or(identity.as_str(), |(k, _)| k);
                trust.still_trusted(key_id, &format!("tool {name}")).map_err(|e| Failure::Denied(e.to_string()))?;
                Some(trust)
            }
            None => None,
        };
        // By name, checked against the digest: a tool re-installed under the same name with new bytes is loaded
        // again, and replaces the old one here.
        if let Some(t) = self.loaded.lock().unwrap_or_else(|p| p.into_inner()).get(name)
            && t.installed.sha256 == installed.sha256
        {
            return Ok(t.clone());
        }
        if let (Some(identity), Some(trust)) = (&installed.plugin, &trust) {
            // First use: the signed manifest still intact, and the package installed is the one this entry names.
            let (record, _) = crate::plugin::store::Store::open(self.registry.home())
                .load(name, trust)
                .map_err(|e| Failure::Denied(format!("tool {name}: {e}")))?;
            if record.sha256 != installed.sha256 || &record.identity() != identity {
                return Err(Failure::Denied(format!(
                    "tool {name}: the installed package ({}, {}) is not the one this tool was installed from ({identity})",
                    record.identity(),
                    record.sha256
                )));
            }
        }
        let path = self.registry.component_path(&installed.sha256);
        let loaded = crate::component::load(&self.engine, &path).map_err(|e| run_failure(&e))?;
        if loaded.sha256 != installed.sha256 {
            return Err(Failure::Failed(format!(
                "tool {name}: its component {} does not match the digest it was installed with",
                path.display()
            )));
        }
        let pre = loaded
            .component_pre()
            .ok_or_else(|| Failure::Failed(format!("tool {name}: a preview 1 core module, not a tool component")))?;
        let pre =
            Pre::new(pre).map_err(|e| Failure::Failed(format!("tool {name}: {}", crate::component::root_cause(&e))))?;
        let schema = |v: &serde_json::Value| {
            super::schema::Schema::compile(v).map_err(|e| Failure::Failed(format!("tool {name}: bad schema: {e}")))
        };
        let declared = installed
            .spec
            .grants
            .iter()
            .map(|g| Declared::parse(g))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Failure::Failed(format!("tool {name}: {e}")))?;
        let tool = Arc::new(LoadedTool {
            input: schema(&installed.spec.input_schema)?,
            output: schema(&installed.spec.output_schema)?,
            installed: (*installed).clone(),
            pre,
            declared,
        });
        self.loaded.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), tool.clone());
        Ok(tool)
    }

    /// Whether the caller's token allows `tool:NAME` now (and is not revoked, nor signed by a key retired or out of
    /// its overlap since the caller verified it).
    pub fn allowed(&self, caller: &Caller, name: &str) -> Result<(), Failure> {
        let now = SystemTime::now();
        token::root_key_still_verifies(self.registry.home(), &caller.token, now)
            .map_err(|e| Failure::Denied(format!("token refused: {}", one_line(&e.to_string()))))?;
        if let Some(log) = &self.events {
            match token::revoked_among(log.db(), &caller.token.revocation_ids) {
                Ok(None) => {}
                Ok(Some(id)) => return Err(Failure::Denied(format!("token is revoked (revocation id {id})"))),
                Err(e) => return Err(Failure::Failed(format!("reading revocations: {e}"))),
            }
        }
        let request = RunRequest {
            agent: caller.agent.clone(),
            grants: vec![Grant { kind: "tool".into(), value: name.into(), mode: String::new() }],
            limits: TokenLimits::default(),
            component: caller.component.clone(),
            plugin: caller.plugin.clone(),
        };
        token::authorize(&caller.token, &request, now).map_err(|(grant, reason)| {
            Failure::Denied(format!(
                "grant refused: {grant}: {}",
                token::explain_refusal(&caller.token, &request, &grant, &reason)
            ))
        })
    }

    /// The installed tools the caller may call.
    pub fn list_for(&self, caller: &Caller) -> Vec<Installed> {
        self.registry.list().unwrap_or_default().into_iter().filter(|t| self.allowed(caller, &t.name).is_ok()).collect()
    }

    /// Records the operation `op` makes, if this host records at all (it is built only then).
    async fn record(&self, caller: &Caller, op: impl FnOnce() -> Op) -> Result<(), AppendError> {
        let Some(log) = &self.events else { return Ok(()) };
        let mut operation = crate::journal::operation_by(&caller.token_id, op());
        // A call outside a run names its token's whole chain; a run's calls are checked against the run's.
        if caller.run_id.is_none() {
            operation.chain = caller.token.revocation_ids.clone();
        }
        log.submit_accepted(operation).await.map(drop)
    }

    /// Calls tool `name` for `caller` with at most `fuel` units of fuel. See the module documentation.
    pub async fn call(self: &Arc<Self>, caller: &Caller, name: &str, input: &str, fuel: u64) -> CallReport {
        self.call_unless(caller, name, input, fuel, None, None).await
    }

    /// [`ToolHost::call`] for a caller that keeps instances of reusable tools in `kept` (see [`super::reuse`]): a
    /// tool installed with `--reuse` runs in the instance `kept` holds for it, if any, and is kept there after a
    /// clean call. Every other tool, and every call without `kept`, gets a fresh sandbox.
    pub async fn call_kept(
        self: &Arc<Self>,
        caller: &Caller,
        name: &str,
        input: &str,
        fuel: u64,
        kept: Option<&KeptTools>,
    ) -> CallReport {
        self.call_unless(caller, name, input, fuel, None, kept).await
    }

    /// [`ToolHost::call`], refused with `refusal` if given (a check the caller's token cannot express, such as what
    /// an MCP server serves): recorded like any refused call, and the tool never runs.
    pub async fn call_unless(
        self: &Arc<Self>,
        caller: &Caller,
        name: &str,
        input: &str,
        fuel: u64,
        refusal: Option<Failure>,
        kept: Option<&KeptTools>,
    ) -> CallReport {
        let started = Instant::now();
        let call_id = crate::journal::fresh_call_id();
        let mut report = CallReport {
            call_id: call_id.clone(),
            tool: name.to_string(),
            outcome: Outcome::Success,
            result: Err(Failure::Failed(String::new())),
            fuel_consumed: 0,
            wall: Duration::ZERO,
        };
        let start = || Op::StartToolCall {
            call_id: call_id.clone(),
            run_id: caller.run_id.clone(),
            agent: caller.agent.clone(),
            tool: name.to_string(),
            rate: caller.rate,
            detail: serde_json::json!({ "input_bytes": input.len(), "depth": caller.depth + 1 }),
        };
        match self.record(caller, start).await {
            Ok(()) => {}
            Err(AppendError::Rejected(reason)) => {
                report.outcome =
                    if reason.starts_with("rate limit") { Outcome::RateLimited } else { Outcome::TokenRefused };
                report.result = Err(Failure::Denied(reason));
                report.wall = started.elapsed();
                return report;
            }
            Err(e) => {
                report.outcome = Outcome::HostError;
                report.result = Err(Failure::Failed(format!("cannot record the call: {e}")));
                report.wall = started.elapsed();
                return report;
            }
        }
        let (outcome, result, fuel_consumed) = match refusal {
            Some(refused) => (Outcome::GrantRefused, Err(refused), 0),
            None => self.checked_call(caller, name, input, fuel, kept).await,
        };
        report.outcome = outcome;
        report.fuel_consumed = fuel_consumed;
        report.wall = started.elapsed();
        let wall = report.wall;
        let end = || Op::EndToolCall {
            call_id,
            run_id: caller.run_id.clone(),
            agent: caller.agent.clone(),
            tool: name.to_string(),
            ok: result.is_ok(),
            detail: serde_json::json!({
                "outcome": outcome,
                "input_bytes": input.len(),
                "output_bytes": result.as_ref().map_or(0, |o| o.len()),
                "fuel": fuel_consumed,
                "wall_time_ms": wall.as_secs_f64() * 1e3,
                "error": result.as_ref().err().map(|f| f.message().to_string()),
            }),
        };
        report.result = match self.record(caller, end).await {
            Ok(()) => result,
            Err(e) => {
                report.outcome = Outcome::HostError;
                Err(Failure::Failed(format!("the call ended but could not be recorded: {e}")))
            }
        };
        report
    }

    async fn checked_call(
        self: &Arc<Self>,
        caller: &Caller,
        name: &str,
        input: &str,
        fuel: u64,
        kept: Option<&KeptTools>,
    ) -> (Outcome, Result<String, Failure>, u64) {
        if caller.depth >= self.max_depth {
            let m = format!("tool call depth limit reached: {} nested calls allowed", self.max_depth);
            return (Outcome::GrantRefused, Err(Failure::Denied(m)), 0);
        }
        let tool = {
            // One look at the change queue for both files the checks consult (the caller's root key file, the
            // tool's manifest): a change made before this call began is seen by both.
            let _drained = crate::filecache::watch::drained();
            if let Err(f) = self.allowed(caller, name) {
                return (Outcome::GrantRefused, Err(f), 0);
            }
            match self.load(name) {
                Ok(t) => t,
                Err(f @ Failure::InvalidInput(_)) => return (Outcome::FileNotFound, Err(f), 0),
                // A tool whose package is no longer trusted is refused, as a grant the caller does not hold is.
                Err(f @ Failure::Denied(_)) => return (Outcome::GrantRefused, Err(f), 0),
                Err(f) => return (Outcome::HostError, Err(f), 0),
            }
        };
        if input.len() > MAX_IO {
            let m = format!("input is {} bytes, over the {MAX_IO} byte limit", input.len());
            return (Outcome::InvalidInput, Err(Failure::InvalidInput(m)), 0);
        }
        match tool.input.check(input) {
            Ok(()) => {}
            Err(Refusal::NotJson(e)) => {
                return (Outcome::InvalidInput, Err(Failure::InvalidInput(format!("input is not JSON: {e}"))), 0);
            }
            Err(Refusal::Invalid(why)) => {
                let m = format!("input does not match the input schema of tool {name}: {why}");
                return (Outcome::InvalidInput, Err(Failure::InvalidInput(m)), 0);
            }
        }
        // Only a tool the operator opted in, and only for the caller that holds `kept`.
        let kept = kept.filter(|_| tool.installed.reusable());
        let (outcome, result, fuel_consumed) = self.invoke(&tool, caller, input, fuel, kept).await;
        let result = result.and_then(|output| match tool.output.check(&output) {
            Ok(()) => Ok(output),
            Err(Refusal::NotJson(e)) => {
                Err(Failure::Failed(format!("tool {name} returned output that is not JSON: {e}")))
            }
            Err(Refusal::Invalid(why)) => {
                Err(Failure::Failed(format!("tool {name} returned output against its output schema: {why}")))
            }
        });
        let outcome = if outcome == Outcome::Success && result.is_err() { Outcome::AgentError } else { outcome };
        (outcome, result, fuel_consumed)
    }

    /// Runs the tool in a fresh sandbox, or in the instance `kept` holds for it (rearmed for this call).
    async fn invoke(
        self: &Arc<Self>,
        tool: &LoadedTool,
        caller: &Caller,
        input: &str,
        fuel: u64,
        kept: Option<&KeptTools>,
    ) -> (Outcome, Result<String, Failure>, u64) {
        let name = tool.installed.name.as_str();
        let now = Instant::now();
        let timeout = caller.deadline.saturating_duration_since(now).min(MAX_CALL_TIME);
        if timeout.is_zero() || fuel == 0 {
            let m = format!("tool {name} not started: the caller has no time or fuel left");
            return (Outcome::Timeout, Err(Failure::Failed(m)), 0);
        }
        let limits = Limits { fuel, timeout, max_memory: caller.max_memory, max_output: 1 << 20, ..Limits::default() };
        let grants = intersect(&tool.declared, &caller.grants);
        // A tool calls models only if it declares which, and then within its caller's token, rate and budgets.
        let models: Vec<String> = tool
            .declared
            .iter()
            .filter_map(|d| match d {
                Declared::Llm(pattern) => Some(pattern.clone()),
                _ => None,
            })
            .collect();
        let llm = match (&caller.llm, models.is_empty()) {
            (Some(session), false) => Some(Arc::new(crate::llm::Session {
                gateway: session.gateway.clone(),
                caller: session.caller.confined_to(models, now + timeout),
            })),
            _ => None,
        };
        let nested = Caller {
            grants: grants.clone(),
            depth: caller.depth + 1,
            deadline: now + timeout,
            llm: llm.clone(),
            ..caller.clone()
        };
        let context = RunContext {
            agent: format!("tool:{name}"),
            run_id: caller.run_id.clone().unwrap_or_default(),
            events: None,
            state: Default::default(),
            token: caller.token_id.clone(),
            // A tool's own calls never reuse: its grants are narrower than its caller's, so an instance kept for
            // the caller must not serve them (and the reverse).
            tools: Some(Arc::new(ToolSession { host: self.clone(), caller: nested, kept: None })),
            budget: caller.budget.clone().unwrap_or_default(),
            cancel: caller.cancel.clone(),
            llm: llm.map(|s| s as Arc<dyn ModelGateway>),
            // A tool never starts agents: the `tool` world does not import `toka:agent/spawn`.
            spawner: None,
        };
        let output = OutputMode { echo: false, capture: false };
        let pre = match &tool.pre {
            Pre::Plain(pre) => pre,
            Pre::Async(pre) => return self.invoke_async(tool, pre, input, &grants, &limits, &context).await,
        };
        let sha256 = tool.installed.sha256.as_str();
        // A kept instance, rearmed with this call's limits and access; or none (none kept, or it holds more memory
        // than this call may have: then it is dropped).
        let mut reused = None;
        if let Some(k) = kept.and_then(|kept| kept.take(name, sha256, &caller.token_id)) {
            let super::reuse::Kept { mut sandbox, instance, .. } = k;
            match sandbox.rearm(&self.engine, &limits, output, &context) {
                Ok(true) => reused = Some((sandbox, instance)),
                Ok(false) => {}
                Err(e) => return (e.outcome(), Err(run_failure(&e)), 0),
            }
        }
        let (mut sb, instance) = match reused {
            Some((sb, instance)) => (sb, Some(instance)),
            None => match sandbox::build(&self.engine, &grants, &limits, output, &context, &[name.to_string()]) {
                Ok(sb) => (sb, None),
                Err(e) => return (e.outcome(), Err(run_failure(&e)), 0),
            },
        };
        let call = async {
            let instance = match instance {
                Some(instance) => instance,
                None => pre.instantiate_async(&mut sb.store).await?,
            };
            let answer = instance.call_invoke(&mut sb.store, input).await;
            Ok::<_, wasmtime::Error>((instance, answer))
        };
        let ended = tokio::time::timeout(timeout + Duration::from_millis(250), call).await;
        let used = if self.engine.fuel { fuel.saturating_sub(sb.store.get_fuel().unwrap_or(0)) } else { 0 };
        // Kept for the caller's next call only after a call that returned: a trap, a limit or a timeout may have
        // left the guest's memory half-changed, so that instance is dropped here.
        let ended = match ended {
            Ok(Ok((instance, Ok(answer)))) => {
                if let Some(kept) = kept
                    && !sb.stdout.exceeded()
                    && !sb.stderr.exceeded()
                {
                    kept.keep(name, sha256, &caller.token_id, sb, instance);
                }
                Ok(Ok(answer))
            }
            Ok(Ok((instance, Err(e)))) => {
                let (outcome, message) = classify(&e, &sb.store, &sb.stdout, &sb.stderr, &limits);
                // The guest's memory may be half-changed: the instance goes with this store.
                drop((instance, sb));
                Ok(Err((outcome, message)))
            }
            Ok(Err(e)) => Ok(Err(classify(&e, &sb.store, &sb.stdout, &sb.stderr, &limits))),
            Err(elapsed) => Err(elapsed),
        };
        answered(name, ended, timeout, used)
    }

    /// Runs a tool whose `invoke` is async (`toka:agent-async/tool`) in a fresh sandbox on the WASI 0.3 engine,
    /// inside the store's concurrent event loop.
    async fn invoke_async(
        &self,
        tool: &LoadedTool,
        pre: &crate::bindings::tool_async::ToolPre<SandboxState>,
        input: &str,
        grants: &Authorized,
        limits: &Limits,
        context: &RunContext,
    ) -> (Outcome, Result<String, Failure>, u64) {
        let name = tool.installed.name.as_str();
        let output = OutputMode { echo: false, capture: false };
        let mut sb =
            match sandbox::build_on(&self.engine, pre.engine(), grants, limits, output, context, &[name.to_string()]) {
                Ok(sb) => sb,
                Err(e) => return (e.outcome(), Err(run_failure(&e)), 0),
            };
        let input = input.to_string();
        let call = async {
            let instance = pre.instantiate_async(&mut sb.store).await?;
            sb.store.run_concurrent(async move |store| instance.call_invoke(store, input).await).await?
        };
        let ended = tokio::time::timeout(limits.timeout + Duration::from_millis(250), call).await;
        let used = if self.engine.fuel { limits.fuel.saturating_sub(sb.store.get_fuel().unwrap_or(0)) } else { 0 };
        // A 0.3 write past the output cap fails the guest's stream rather than trapping: an answer after it is
        // still the cap's.
        let over = sb.stdout.over_limit().or_else(|| sb.stderr.over_limit());
        let ended = match (ended, over) {
            (Ok(Ok(Ok(_))), Some(over)) => {
                Ok(Err(classify(&wasmtime::Error::new(over), &sb.store, &sb.stdout, &sb.stderr, limits)))
            }
            (Ok(Ok(answer)), _) => Ok(Ok(answer)),
            (Ok(Err(e)), _) => Ok(Err(classify(&e, &sb.store, &sb.stdout, &sb.stderr, limits))),
            (Err(elapsed), _) => Err(elapsed),
        };
        answered(name, ended, limits.timeout, used)
    }
}

/// A guest's tool calls: the caller is the sandbox's session.
impl ToolBroker for ToolSession {
    fn list(&self) -> Vec<crate::bindings::ToolSpec> {
        self.host
            .list_for(&self.caller)
            .iter()
            .map(|t| crate::bindings::ToolSpec { name: t.name.clone(), ..t.spec.to_wit() })
            .collect()
    }

    fn call(&self, name: String, input: String, fuel: u64, memory: u64) -> BoxFuture<'_, ToolAnswer> {
        Box::pin(async move {
            if let Some(budget) = &self.caller.budget {
                use crate::sandbox::budget::Counted;
                if let Err(over) =
                    budget.take(&[(Counted::ToolCalls, 1), (Counted::ToolInputBytes, input.len() as u64)])
                {
                    let log = self.host.events.as_deref();
                    let run = self.caller.run_id.as_deref().unwrap_or_default();
                    crate::sandbox::budget::report(log, &self.caller.token_id, run, &over).await;
                    return ToolAnswer { result: Err(WitToolError::Denied(over.to_string())), fuel_consumed: 0 };
                }
            }
            // The tool gets what is left of the caller's memory, not a cap of its own on top of it.
            let caller = Caller { max_memory: memory.min(self.caller.max_memory), ..self.caller.clone() };
            let report = Box::pin(self.host.call_kept(&caller, &name, &input, fuel, self.kept.as_deref())).await;
            ToolAnswer { result: report.result.map_err(Failure::into_wit), fuel_consumed: report.fuel_consumed }
        })
    }
}

/// How a tool's call ended: it answered (its output or its own error), it was stopped (how, and the message), or its
/// deadline passed.
type Ended = Result<Result<Result<String, WitToolError>, (Outcome, String)>, tokio::time::error::Elapsed>;

/// What a tool's call came to.
fn answered(name: &str, ended: Ended, timeout: Duration, used: u64) -> (Outcome, Result<String, Failure>, u64) {
    match ended {
        Ok(Ok(Ok(output))) if output.len() > MAX_IO => {
            let m = format!("tool {name} returned {} bytes, over the {MAX_IO} byte limit", output.len());
            (Outcome::OutputLimit, Err(Failure::Failed(m)), used)
        }
        Ok(Ok(Ok(output))) => (Outcome::Success, Ok(output), used),
        Ok(Ok(Err(e))) => {
            let f = match e {
                WitToolError::InvalidInput(m) => Failure::InvalidInput(format!("tool {name}: {}", one_line(&m))),
                WitToolError::Failed(m) => Failure::Failed(format!("tool {name}: {}", one_line(&m))),
                WitToolError::Denied(m) => Failure::Denied(format!("tool {name}: {}", one_line(&m))),
            };
            (Outcome::AgentError, Err(f), used)
        }
        Ok(Err((outcome, message))) => (outcome, Err(Failure::Failed(format!("tool {name}: {message}"))), used),
        Err(_) => {
            let m = format!("tool {name}: timeout: still running after {}", humantime::format_duration(timeout));
            (Outcome::Timeout, Err(Failure::Failed(m)), used)
        }
    }
}
