//! The service's wire types: what clients send and get back under `/v1`, as JSON. Every request type refuses
//! unknown fields (a typo is an error, not a silently ignored field), and each carries its OpenAPI schema.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where the component of a run comes from.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ComponentRef {
    /// A file under one of the server's component directories (`serve --component-dir`), relative to it or absolute.
    Path(String),
    /// The component's bytes, base64 (standard alphabet), run as agent `name`.
    Upload { name: String, wasm_base64: String },
    /// An installed agent package (`toka-host plugin install`), by name: checked as `toka-host run NAME` checks it
    /// (its digest on disk, its signature against the home's trust at this moment); a token bound to the package
    /// (`token mint --plugin`) runs it.
    Plugin(String),
}

/// Grants a run asks for, in the CLI's syntax; each must be covered by the bearer token.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantsRequest {
    /// `HOST[::GUEST][:ro]`, as `--dir` (paths on the server).
    #[serde(default)]
    pub dirs: Vec<String>,
    /// `NAME=VALUE`, as `--env`.
    #[serde(default)]
    pub env: Vec<String>,
    /// `HOST:PORT`, as `--allow-net`.
    #[serde(default)]
    pub net: Vec<String>,
    /// Installed tools the agent may call, as `--allow-tool`.
    #[serde(default)]
    pub tools: Vec<String>,
    /// Models (or patterns such as `gpt-*`) the agent may call through the host's gateway, as `--allow-llm`.
    #[serde(default)]
    pub models: Vec<String>,
    /// Installed agent packages the agent may spawn (`toka:agent/spawn`), as `--allow-spawn`.
    #[serde(default)]
    pub spawn: Vec<String>,
    /// `ro` or `rw`: the agent's persistent state.
    #[serde(default)]
    pub state: Option<String>,
}

/// Limits a run asks for; each not given is the token's ceiling.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsRequest {
    pub fuel: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub max_memory: Option<u64>,
    pub max_output: Option<u64>,
    pub max_records: Option<u64>,
    /// Model tokens the run may use (the lower of this and the token's).
    pub llm_tokens: Option<u64>,
    /// How deep agents spawned from the run may nest (default 3, at most 8).
    pub max_spawn_depth: Option<u32>,
    /// How many agents the run may spawn (default 16).
    pub max_spawns: Option<u32>,
}

/// `POST /v1/runs`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRun {
    pub component: ComponentRef,
    /// An agent's task input (any JSON value; default `{}`).
    #[schema(value_type = Option<Object>)]
    pub input: Option<serde_json::Value>,
    /// An agent's task id (default: a fresh one).
    pub task_id: Option<String>,
    /// A command's arguments.
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub grants: GrantsRequest,
    #[serde(default)]
    pub limits: LimitsRequest,
    /// Answer when the run has ended (up to `wait_ms`, default 60 s), instead of at once with 202.
    #[serde(default)]
    pub wait: bool,
    pub wait_ms: Option<u64>,
    /// On a cluster's node: where the run may execute, and whether it runs again if its node is lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<PlacementRequest>,
}

impl SubmitRun {
    /// The request that runs `spec` on a server, with `component` and the task `input`: its grants and limits as a
    /// local run takes them (a relative directory is made absolute here; an `env` grant without a value passes this
    /// side's value, never the server's). It answers at once (no `wait`) and asks for no placement.
    pub fn from_spec(
        spec: &crate::runtime::RunSpec,
        component: ComponentRef,
        input: Option<serde_json::Value>,
    ) -> Result<SubmitRun, crate::error::RunError> {
        use crate::error::RunError;
        use crate::grants::StateGrant;
        let g = &spec.grants;
        let mut dirs = Vec::new();
        for d in &g.dirs {
            // A relative directory means one relative to where the command runs, as locally.
            let host = std::path::absolute(&d.host).unwrap_or_else(|_| d.host.clone());
            let guest = d.guest.as_ref().map(|g| format!("::{g}")).unwrap_or_default();
            dirs.push(format!("{}{guest}:{}", host.display(), if d.read_only { "ro" } else { "rw" }));
        }
        let mut env = Vec::new();
        for e in &g.env {
            // `--env NAME` passes this side's value: the server is never asked for its own environment.
            let value = match &e.value {
                Some(v) => v.clone(),
                None => std::env::var(&e.name).map_err(|_| RunError::GrantRefused {
                    grant: e.to_string(),
                    reason: "not set in the host environment (use NAME=VALUE to set it)".into(),
                })?,
            };
            env.push(format!("{}={value}", e.name));
        }
        let l = &spec.limits;
        Ok(SubmitRun {
            component,
            input,
            task_id: spec.task_id.clone(),
            args: spec.args.clone(),
            grants: GrantsRequest {
                dirs,
                env,
                net: g.net.iter().map(crate::grants::NetGrant::canonical).collect(),
                tools: spec.tools.clone(),
                models: spec.models.clone(),
                spawn: spec.spawn.clone(),
                state: match g.state {
                    StateGrant::None => None,
                    StateGrant::ReadOnly => Some("ro".into()),
                    StateGrant::ReadWrite => Some("rw".into()),
                },
            },
            limits: LimitsRequest {
                fuel: l.fuel,
                timeout_ms: l.timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
                max_memory: l.max_memory,
                max_output: l.max_output,
                max_records: l.max_records,
                llm_tokens: l.llm_tokens,
                max_spawn_depth: l.max_spawn_depth,
                max_spawns: l.max_spawns,
            },
            wait: false,
            wait_ms: None,
            placement: None,
        })
    }
}

/// Where a run may execute in a cluster (ignored by a server that is not a cluster's node).
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlacementRequest {
    /// Labels the node must have, all of them (`serve --label`), e.g. `gpu` or `zone=eu-1`.
    #[serde(default)]
    pub labels: Vec<String>,
    /// How many times the run is started again on another node if its node is lost before the run ends (default
    /// 0, at most 10). A retry is a new run (its own id); the run this submission answered with reports the last.
    #[serde(default)]
    pub retries: u32,
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RunStatus {
    Queued,
    Running,
    Ended,
}

/// A run as the service knows it: its status, and its report once it has ended.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunView {
    pub run_id: String,
    pub agent: String,
    pub status: RunStatus,
    pub submitted_ms: u64,
    /// The run report (`toka-host run --json`'s), once ended; output is cut at 64 KiB per stream, except in the
    /// answer to a submission that waited for the end (whole, up to the run's `max_output`).
    #[schema(value_type = Option<Object>)]
    pub report: Option<serde_json::Value>,
    /// On a cluster: the node the run executes on (its last attempt's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u64>,
}

/// One run in a listing, assembled from its events.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunSummary {
    pub run_id: String,
    pub agent: String,
    pub started_ms: u64,
    /// `running`, or how it ended (`success`, `trap`, `timeout`, `cancelled` ...).
    pub outcome: String,
    pub exit_code: Option<i64>,
    pub fuel: Option<u64>,
    pub wall_time_ms: Option<f64>,
    pub peak_memory_bytes: Option<u64>,
}

/// A page of runs, newest first; `next` is the cursor of the next page.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunPage {
    pub runs: Vec<RunSummary>,
    pub next: Option<u64>,
}

/// An agent seen in the log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentView {
    pub agent: String,
    pub runs: u64,
    pub last_run_ms: u64,
    pub last_outcome: String,
}

/// One event, as `toka-host events --json` prints it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    pub seq: u64,
    pub time_ms: u64,
    pub kind: String,
    pub agent: String,
    pub run_id: String,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

/// An installed tool.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ToolView {
    pub name: String,
    pub version: String,
    pub description: String,
    pub side_effect: String,
    pub grants: Vec<String>,
    pub sha256: String,
    #[schema(value_type = Object)]
    pub input_schema: serde_json::Value,
    #[schema(value_type = Object)]
    pub output_schema: serde_json::Value,
}

/// `POST /v1/tools/{name}/call`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CallTool {
    #[schema(value_type = Object)]
    pub input: serde_json::Value,
    #[serde(default)]
    pub grants: GrantsRequest,
    pub fuel: Option<u64>,
    pub timeout_ms: Option<u64>,
}

/// What a tool call came to.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ToolCallView {
    pub call_id: String,
    pub tool: String,
    pub outcome: String,
    #[schema(value_type = Option<Object>)]
    pub output: Option<serde_json::Value>,
    pub error: Option<String>,
    pub fuel_consumed: u64,
    pub wall_time_ms: f64,
}

/// `POST /v1/plans`: a plan manifest (`toka.toml`'s text), run with the bearer token as the operator's token.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitPlan {
    /// The manifest's TOML text (at most 48 KiB). Relative component paths are relative to the server's first
    /// component directory (`serve --component-dir`), and every component must be inside one of them.
    pub manifest: String,
    /// Agents running at once (critical agents always run alone); default and most: the server's run slots.
    pub jobs: Option<u32>,
}

/// One step of a plan, as the kernel's record has it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PlanStepView {
    pub name: String,
    /// The agent it runs (known once it has started).
    pub agent: Option<String>,
    /// `pending`, `running`, `succeeded`, `failed` or `skipped`.
    pub status: String,
    /// Why a skipped step did not run, or the error of a failed one.
    pub reason: Option<String>,
    /// The run of its latest attempt.
    pub run_id: Option<String>,
    pub attempt: u32,
    /// The latest attempt's outcome (`success`, `trap` ...).
    pub outcome: Option<String>,
    pub fuel: Option<u64>,
    /// From the latest attempt's start to its end (or to now while it runs), in ms.
    pub time_ms: Option<u64>,
    /// Steps that must complete first (`depends_on`), without those piped in.
    pub depends_on: Vec<String>,
    /// Steps whose output (or a field of it) is piped into this one's input (`input_from`).
    pub input_from: Vec<String>,
    /// Steps that must end first, whatever their outcome (`after`).
    pub after: Vec<String>,
    /// A succeeded step's JSON output (absent when it was too large to record).
    #[schema(value_type = Option<Object>)]
    pub output: Option<serde_json::Value>,
    /// Dependency level: 0 for a step that waits for none, else one more than the deepest it waits for.
    pub level: u32,
}

/// A plan: its state and each step's, from the kernel's record (plans started by `toka-host up` on the same home
/// included).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PlanView {
    pub plan_id: String,
    pub name: String,
    /// `running`, `completed`, `failed`, `cancelled` or `timeout`.
    pub status: String,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    /// Whether this server is running it (and so can cancel it).
    pub live_here: bool,
    pub steps: Vec<PlanStepView>,
}

/// A plan in a listing.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PlanSummaryView {
    pub plan_id: String,
    pub name: String,
    pub status: String,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    pub steps: usize,
}

/// `GET /health`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok` when the log accepts writes; `degraded` when this node's database does not; `no-leader` when this
    /// cluster node knows no leader (or its Raft has stopped), so no write can be recorded through it.
    pub status: String,
    pub log_writable: bool,
    pub version: String,
    pub runs_in_flight: u64,
    pub runs_queued: u64,
    /// On a cluster's node only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterHealth>,
}

/// A cluster node's view of its leader, in `GET /health`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClusterHealth {
    pub node_id: u64,
    /// The leader this node knows (itself if it leads with a majority behind it); `null` when it knows none.
    pub leader: Option<u64>,
    /// False once this node's Raft has stopped on a fatal error (its storage failed): restart the node.
    pub raft_running: bool,
    /// Why its Raft stopped, when it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft_error: Option<String>,
    /// If this node leads but no majority acknowledged it lately: milliseconds since one last did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_stale_ms: Option<u64>,
}

/// Every error: a stable code (for programs) and a one-line message (for people).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// `unauthorized`, `forbidden`, `token-refused`, `grant-refused`, `invalid-request`, `not-found`,
    /// `queue-full`, `shutting-down`, `too-large`, `invalid-wasm`, `host-error` ...
    pub code: String,
    pub message: String,
}
