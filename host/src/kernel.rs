//! The kernel: a deterministic state machine over operations.
//!
//! `apply(state, operation) -> events` depends on nothing but its arguments: time, ids and the authorizing token
//! come in with the operation, never from a clock, a random source or the environment inside. So the operation log
//! alone rebuilds the state (`replay`), on this node today and on every node of a cluster once the log is
//! replicated. An operation that is not valid in the current state (completing a run that never started, using a
//! revoked token) is rejected deterministically and recorded as an `op.rejected` event; it changes nothing else.
//! This module must never perform I/O.

use crate::events::EventDraft;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};

/// The token named by operations the local operator submits from the CLI.
pub const LOCAL_TOKEN: &str = "local-cli";

/// One operation, as stored in the operation log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    /// Unix time in milliseconds, taken when the operation was submitted.
    pub time_ms: u64,
    /// The token that authorized the operation: the revocation id of its own (last) block; `local-cli` for the
    /// local operator.
    pub token: String,
    /// Every revocation id of that token, authority block first, on the operations that start something under it
    /// (a run, a tool call outside a run): revoking any of them revokes the token. Operations inside a run are
    /// checked against the chain its start recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
    #[serde(flatten)]
    pub op: Op,
}

/// A token-bucket rate: at most `n` actions in a burst, refilled at `n` per `period_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    pub n: u64,
    pub period_ms: u64,
}

impl Rate {
    pub const MAX_N: u64 = 1_000_000;
    pub const MAX_PERIOD_MS: u64 = 7 * 24 * 3_600_000;

    /// Parses `N/PERIOD`: `10/min`, `100/h`, `5/s`, `1000/day`, or a duration such as `30/10s`.
    pub fn parse(text: &str) -> Result<Rate, String> {
        let bad = |why: &str| format!("invalid rate `{text}`: {why} (expected N/PERIOD, e.g. 10/min)");
        let (n, period) = text.split_once('/').ok_or_else(|| bad("no `/`"))?;
        let n: u64 = n.trim().parse().map_err(|_| bad("N is not a whole number"))?;
        let period_ms = match period.trim() {
            "s" | "sec" | "second" => 1_000,
            "m" | "min" | "minute" => 60_000,
            "h" | "hour" => 3_600_000,
            "d" | "day" => 86_400_000,
            other => humantime::parse_duration(other)
                .map_err(|_| bad("PERIOD is not s, min, h, day or a duration"))?
                .as_millis()
                .try_into()
                .unwrap_or(u64::MAX),
        };
        if n == 0 || n > Self::MAX_N {
            return Err(bad(&format!("N must be 1 to {}", Self::MAX_N)));
        }
        if period_ms == 0 || period_ms > Self::MAX_PERIOD_MS {
            return Err(bad("PERIOD must be from 1 ms to 7 days"));
        }
        Ok(Rate { n, period_ms })
    }

    /// Which of two rates allows less: the lower sustained rate, then the smaller burst.
    pub fn stricter(self, other: Rate) -> Rate {
        let (a, b) =
            (u128::from(self.n) * u128::from(other.period_ms), u128::from(other.n) * u128::from(self.period_ms));
        match a.cmp(&b) {
            std::cmp::Ordering::Less => self,
            std::cmp::Ordering::Greater => other,
            std::cmp::Ordering::Equal if self.n <= other.n => self,
            std::cmp::Ordering::Equal => other,
        }
    }

    /// One action's cost in bucket units (a full bucket holds `n * period_ms` units; each ms refills `n`).
    fn cost(self) -> u64 {
        self.period_ms
    }

    fn capacity(self) -> u64 {
        self.n * self.period_ms
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.period_ms {
            1_000 => write!(f, "{}/s", self.n),
            60_000 => write!(f, "{}/min", self.n),
            3_600_000 => write!(f, "{}/h", self.n),
            86_400_000 => write!(f, "{}/day", self.n),
            ms => write!(f, "{}/{}", self.n, humantime::format_duration(std::time::Duration::from_millis(ms))),
        }
    }
}

/// A budget of model tokens (prompt and completion) per period: `N/PERIOD`, e.g. `100000/day`. Counted in fixed
/// windows of PERIOD from the Unix epoch (a day budget renews at 00:00 UTC), per agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBudget {
    pub tokens: u64,
    pub period_ms: u64,
}

impl TokenBudget {
    pub const MAX_TOKENS: u64 = 1_000_000_000_000;

    /// Parses `N/PERIOD` as [`Rate::parse`] does, with N up to [`TokenBudget::MAX_TOKENS`].
    pub fn parse(text: &str) -> Result<TokenBudget, String> {
        let bad = |why: &str| format!("invalid token budget `{text}`: {why} (expected N/PERIOD, e.g. 100000/day)");
        let (n, period) = text.split_once('/').ok_or_else(|| bad("no `/`"))?;
        let tokens: u64 = n.trim().replace('_', "").parse().map_err(|_| bad("N is not a whole number"))?;
        if tokens == 0 || tokens > Self::MAX_TOKENS {
            return Err(bad(&format!("N must be 1 to {}", Self::MAX_TOKENS)));
        }
        // The period parses as a rate's does.
        let rate = Rate::parse(&format!("1/{}", period.trim()))
            .map_err(|_| bad("PERIOD is not s, min, h, day or a duration up to 7 days"))?;
        Ok(TokenBudget { tokens, period_ms: rate.period_ms })
    }

    /// Most distinct periods a token may state budgets for (each is checked at every model call).
    pub const MAX_PERIODS: usize = 8;

    /// Adds `budget` to `budgets`, every one of which applies: for a period already there, the fewer tokens stay.
    /// Budgets of different periods are all kept, never one for another (5000/h and 100000/day together are not
    /// the same as either), so that a block can only narrow. Kept sorted by period.
    pub fn narrow(budgets: &mut Vec<TokenBudget>, budget: TokenBudget) {
        match budgets.iter_mut().find(|b| b.period_ms == budget.period_ms) {
            Some(b) => b.tokens = b.tokens.min(budget.tokens),
            None => {
                budgets.push(budget);
                budgets.sort_by_key(|b| b.period_ms);
            }
        }
    }
}

impl std::fmt::Display for TokenBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rate = Rate { n: 1, period_ms: self.period_ms }.to_string();
        write!(f, "{}/{}", self.tokens, rate.trim_start_matches("1/"))
    }
}

/// An agent's use of model tokens in one window of a [`TokenBudget`]'s period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenWindow {
    /// `time_ms / period_ms` of the window.
    pub window: u64,
    pub used: u64,
}

/// An agent's token bucket: its level in [`Rate`] units at `at_ms`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub level: u64,
    pub at_ms: u64,
}

/// A write to one key of an agent's key-value state, carried by the operation that records it, so that the value
/// reaches every node of a cluster with the record and is applied in the same transaction as its events (see
/// `events::log`). The value travels in the operation as proposed (`value`, base64); the operation stored in the log
/// keeps only its digest, so the log does not grow by the values an agent keeps overwriting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateChange {
    pub key: String,
    /// SHA-256 (hex) of the new value; absent for a delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The new value in base64, in the proposed operation only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Why the log's writer refused the write (the agent's quota, a value that is not what its digest says): written
    /// into the stored operation, so that the kernel rejects it, and every replay rejects it the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

impl StateChange {
    /// Sets `key` to `value`.
    pub fn set(key: &str, value: &[u8]) -> StateChange {
        use base64::Engine;
        use sha2::Digest;
        StateChange {
            key: key.into(),
            sha256: Some(hex::encode(sha2::Sha256::digest(value))),
            value: Some(base64::engine::general_purpose::STANDARD.encode(value)),
            refused: None,
        }
    }

    /// Deletes `key`.
    pub fn delete(key: &str) -> StateChange {
        StateChange { key: key.into(), sha256: None, value: None, refused: None }
    }

    /// The new value (`None`: a delete), checked against its digest and its bound.
    pub fn decoded(&self) -> Result<Option<Vec<u8>>, String> {
        use base64::Engine;
        use sha2::Digest;
        match (&self.sha256, &self.value) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err("a state value without its digest".into()),
            (Some(_), None) => Err("the state value is missing".into()),
            (Some(digest), Some(text)) => {
                if crate::bounds::state_value_over(text) {
                    return Err(format!("the state value is over {} bytes", crate::bounds::MAX_STATE_VALUE));
                }
                let value = base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|e| format!("the state value is not base64: {e}"))?;
                if hex::encode(sha2::Sha256::digest(&value)) != *digest {
                    return Err("the state value does not match its digest".into());
                }
                Ok(Some(value))
            }
        }
    }

    /// The change as the log stores it: the digest without the value, and the writer's refusal if any.
    pub fn stored(&self, refused: Option<String>) -> StateChange {
        StateChange { key: self.key.clone(), sha256: self.sha256.clone(), value: None, refused }
    }
}

impl Op {
    /// The state write an operation carries.
    pub fn state_change(&self) -> Option<&StateChange> {
        match self {
            Op::WriteState { change, .. } | Op::OperatorWriteState { change, .. } => change.as_ref(),
            _ => None,
        }
    }

    /// Replaces the state write an operation carries (no effect on other operations).
    pub fn set_state_change(&mut self, new: StateChange) {
        if let Op::WriteState { change, .. } | Op::OperatorWriteState { change, .. } = self {
            *change = Some(new);
        }
    }
}

/// What an operation does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Op {
    /// Queue a task for an agent: at once, or (`due_ms`) for later, by a running run (`parent_run`,
    /// `toka:agent/spawn.schedule`) or by the operator. The due time comes in with the operation (the scheduler reads
    /// its clock, never the kernel); the service starts the task's run (`start-run` naming it) once it is due.
    /// Pending tasks are capped per scheduling run ([`MAX_PENDING_PER_RUN`]) and per home ([`MAX_PENDING_TASKS`]).
    ScheduleTask {
        task_id: String,
        agent: String,
        input: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        due_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent_run: Option<String>,
        /// What the task runs with (the package's digest, its grants and limits, whose authority it acts under),
        /// for the service that starts it.
        #[serde(default)]
        detail: serde_json::Value,
    },
    /// A scheduled task that will not run (its agent is gone, its authority was revoked ...): it leaves the queue.
    DropTask { task_id: String, reason: String },
    /// Start a run of an agent, for a scheduled task or a direct invocation.
    StartRun {
        run_id: String,
        agent: String,
        task_id: Option<String>,
        #[serde(default)]
        detail: serde_json::Value,
        /// The token's rate limit for this agent, shared by the run's start and its boundary host calls.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rate: Option<Rate>,
        /// The cluster node the run executes on (none outside a cluster): if that node is lost, the cluster's leader
        /// ends the run with [`Op::LoseRun`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<u64>,
    },
    /// A run whose cluster node was lost (it stopped answering, or restarted without it): recorded by the leader (or
    /// by the node itself when it restarts) so that the run ends in the log and may be run again elsewhere. Only a
    /// live run on exactly that node can be lost; any later operation of the lost run (a node that was only slow) is
    /// rejected as the operation of a run that is not running, so a run lost is never also completed.
    LoseRun { run_id: String, node: u64, reason: String },
    /// Start a sub-agent's run on behalf of a running parent (`toka:agent/spawn`): a boundary host call of the
    /// parent (it takes from the parent's rate bucket) that starts a run of its own. The child's run then ends as
    /// any run does (`complete-run`, `fail-run`).
    SpawnAgent {
        parent_run: String,
        run_id: String,
        agent: String,
        /// What the child's `run.started` event carries (component, grants, limits, depth).
        #[serde(default)]
        detail: serde_json::Value,
    },
    /// A run's observation.
    EmitObservation { run_id: String, kind: String, payload: serde_json::Value },
    /// A run's write to its agent's state. `change` (absent in records written before state was replicated) is the
    /// write itself, applied with the record on every node (see [`StateChange`]).
    WriteState {
        run_id: String,
        detail: serde_json::Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        change: Option<StateChange>,
    },
    /// An operator's write to an agent's state (`toka-host state set`).
    OperatorWriteState {
        agent: String,
        detail: serde_json::Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        change: Option<StateChange>,
    },
    /// A run ended well.
    CompleteRun { run_id: String, fuel: u64, detail: serde_json::Value },
    /// A run ended badly (trap, out of fuel, timeout, memory, denied ...).
    FailRun { run_id: String, reason: String, fuel: u64, detail: serde_json::Value },
    /// A run refused before it started (bad component, refused grant, bad input).
    RefuseRun { agent: String, grant_refused: bool, detail: serde_json::Value },
    /// Revoke a token: every later operation naming it is rejected.
    RevokeToken { token_id: String },
    /// A tool call begins, once the caller's token allowed it: it takes from the caller's rate bucket (the run's
    /// rate when `run_id` is a run, else `rate`).
    StartToolCall {
        call_id: String,
        /// The calling agent's run, if the caller is a run (not `tool call` or the MCP server).
        run_id: Option<String>,
        agent: String,
        tool: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rate: Option<Rate>,
        detail: serde_json::Value,
    },
    /// A run hit one of its per-run caps (observations, tool calls, state writes); recorded once per cap.
    ReachLimit { run_id: String, limit: String, cap: u64 },
    /// A model call begins: takes from the caller's rate bucket (the run's rate when `run_id` is a run, else
    /// `rate`); refused while the agent has spent its `budget` of model tokens for the current window.
    StartLlmCall {
        call_id: String,
        run_id: Option<String>,
        agent: String,
        model: String,
        provider: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rate: Option<Rate>,
        /// The caller's token's budgets per period; every one must have tokens left.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        budgets: Vec<TokenBudget>,
        detail: serde_json::Value,
    },
    /// A model call ended; its `tokens` (prompt and completion) count in the agent's current window of every period
    /// in `budgets` and of every period the agent's use is already counted in.
    EndLlmCall {
        call_id: String,
        run_id: Option<String>,
        agent: String,
        model: String,
        ok: bool,
        tokens: u64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        budgets: Vec<TokenBudget>,
        detail: serde_json::Value,
    },
    /// A tool call ended (`ok` false: refused, invalid input or output, trapped, out of fuel ...).
    EndToolCall {
        call_id: String,
        run_id: Option<String>,
        agent: String,
        tool: String,
        ok: bool,
        detail: serde_json::Value,
    },
    /// A plan starts: its manifest (the exact text, so that a resume needs nothing else), where its relative paths
    /// lead, and its steps.
    StartPlan {
        plan_id: String,
        name: String,
        /// sha256 (hex) of `manifest`.
        digest: String,
        manifest: String,
        /// The directory the manifest's relative paths are relative to.
        base: String,
        steps: Vec<String>,
    },
    /// One attempt of a plan's step starts, as run `run_id` of agent `agent`.
    StartStep { plan_id: String, step: String, attempt: u32, run_id: String, agent: String },
    /// A step's attempt ended: `ok` with the agent's JSON output (absent when too large to record), or not, with the
    /// run's outcome.
    EndStep {
        plan_id: String,
        step: String,
        attempt: u32,
        ok: bool,
        outcome: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<String>,
        #[serde(default)]
        detail: serde_json::Value,
    },
    /// A step that will not run (a required dependency failed, the plan was cancelled or timed out).
    SkipStep { plan_id: String, step: String, reason: String },
    /// A plan ended (`completed`, `failed`, `cancelled`, `timeout`); every step has ended or been skipped.
    EndPlan {
        plan_id: String,
        outcome: String,
        #[serde(default)]
        detail: serde_json::Value,
    },
    /// A change to what code this home will run: a plugin installed or removed, a publisher key trusted or removed
    /// from trust, the install policy changed. Recorded after the change, with names and digests only.
    ChangeHome {
        /// One of [`kind::HOME_CHANGES`]; it is the event's kind.
        change: String,
        /// What changed: a package (`NAME@VERSION`), a publisher, or `policy`.
        subject: String,
        #[serde(default)]
        detail: serde_json::Value,
    },
}

/// The exit code of a run lost with its cluster node (`crate::error::Outcome::Lost`'s).
pub const LOST_EXIT_CODE: i32 = 103;

/// The outcome of a step's attempt that the host's own stop cut short (recorded by the resume that finds it).
pub const INTERRUPTED: &str = "interrupted";

/// Where a plan's step stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum StepStatus {
    /// Not started yet.
    Pending,
    /// Attempt `attempt` is running as `run_id`, after `failures` failed attempts.
    Running {
        attempt: u32,
        run_id: String,
        failures: u32,
    },
    /// Attempt `attempt` failed; `failures` attempts have failed in all, not counting those the host's own stop
    /// interrupted (outcome `interrupted`), which a resume runs again without using up a retry.
    Failed {
        attempt: u32,
        outcome: String,
        failures: u32,
    },
    /// Attempt `attempt` completed; its output is in operation `op_seq`.
    Completed {
        attempt: u32,
        op_seq: u64,
    },
    Skipped {
        reason: String,
    },
}

/// A live plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanState {
    pub name: String,
    pub started_ms: u64,
    /// The sequence number of its `start-plan` operation (which holds the manifest).
    pub op_seq: u64,
    /// The revocation ids of the token it started under: revoking one stops every later step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
    pub steps: BTreeMap<String, StepStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    pub agent: String,
    pub task_id: Option<String>,
    pub parent: Option<String>,
    pub started_ms: u64,
    pub observations: u64,
    /// The run's rate limit, if its token has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    /// The revocation ids of the token the run started under (see [`Operation::chain`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
    /// The cluster node it executes on (a spawned child: its parent's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskStatus {
    Scheduled,
    Running,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskState {
    pub agent: String,
    pub status: TaskStatus,
    /// When it is due (Unix ms); `None`: at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_ms: Option<u64>,
    /// The run that scheduled it, if a run did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The sequence number of its `schedule-task` operation (which holds its input and what it runs with).
    #[serde(default)]
    pub op_seq: u64,
}

/// Most tasks one run may leave pending (scheduled, not yet started).
pub const MAX_PENDING_PER_RUN: usize = 16;
/// Most tasks pending in one home.
pub const MAX_PENDING_TASKS: usize = 1024;

/// Everything the kernel knows. Ordered maps only, so that equal histories give byte-equal states.
///
/// Only live things are kept: a run leaves `runs` when it ends and its task leaves `tasks`, so the state stays as
/// small as the work in flight, and a snapshot of it is cheap (the history itself is in the logs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Operations applied so far (the next operation's sequence number minus one).
    pub applied: u64,
    /// Running runs.
    pub runs: BTreeMap<String, RunState>,
    /// Scheduled and running tasks.
    pub tasks: BTreeMap<String, TaskState>,
    /// Runs that have ended, completed or failed.
    pub ended_runs: (u64, u64),
    pub revoked: BTreeSet<String>,
    /// Runs per agent, ever started.
    pub agent_runs: BTreeMap<String, u64>,
    /// Token buckets of rate-limited agents: runs and boundary host calls take from them.
    #[serde(default)]
    pub buckets: BTreeMap<String, Bucket>,
    /// Live plans (a plan leaves when it ends).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub plans: BTreeMap<String, PlanState>,
    /// Model tokens used per agent, per budget period (in ms), in the current window of that period.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub llm_usage: BTreeMap<String, BTreeMap<u64, TokenWindow>>,
}

/// The tokens `agent` has used in the window of `budget`'s period that contains `time_ms`.
fn window_used(state: &State, agent: &str, budget: TokenBudget, time_ms: u64) -> u64 {
    let window = time_ms / budget.period_ms.max(1);
    state
        .llm_usage
        .get(agent)
        .and_then(|w| w.get(&budget.period_ms))
        .filter(|w| w.window == window)
        .map_or(0, |w| w.used)
}

/// Refuses a model call while any of the agent's budgets for its current window is spent.
fn check_llm_budget(
    state: &State,
    agent: &str,
    budgets: &[TokenBudget],
    time_ms: u64,
    model: &str,
) -> Result<(), String> {
    for &budget in budgets {
        let used = window_used(state, agent, budget, time_ms);
        if used < budget.tokens {
            continue;
        }
        let period = budget.period_ms.max(1);
        let renews_ms = period - time_ms % period;
        return Err(format!(
            "llm budget: agent {agent} has used {used} of its {budget} model tokens; call of model {model} refused, \
             the budget renews in {renews_ms} ms"
        ));
    }
    Ok(())
}

/// The level of `agent`'s bucket at `time_ms` under `rate` (a bucket never used is full).
fn bucket_level(state: &State, agent: &str, rate: Rate, time_ms: u64) -> u64 {
    match state.buckets.get(agent) {
        None => rate.capacity(),
        Some(b) => {
            let refill = time_ms.saturating_sub(b.at_ms).saturating_mul(rate.n);
            b.level.saturating_add(refill).min(rate.capacity())
        }
    }
}

/// Refuses the action if `agent`'s bucket is empty.
fn check_rate(state: &State, agent: &str, rate: Option<Rate>, time_ms: u64, what: &str) -> Result<(), String> {
    let Some(rate) = rate else { return Ok(()) };
    let level = bucket_level(state, agent, rate, time_ms);
    if level >= rate.cost() {
        return Ok(());
    }
    let wait_ms = (rate.cost() - level).div_ceil(rate.n);
    Err(format!(
        "rate limit: agent {agent} is allowed {rate} runs and host calls; {what} refused, retry in {wait_ms} ms"
    ))
}

fn take(state: &mut State, agent: &str, rate: Option<Rate>, time_ms: u64) {
    let Some(rate) = rate else { return };
    let level = bucket_level(state, agent, rate, time_ms);
    let at_ms = state.buckets.get(agent).map_or(time_ms, |b| b.at_ms.max(time_ms));
    state.buckets.insert(agent.to_string(), Bucket { level: level.saturating_sub(rate.cost()), at_ms });
}

/// The rate limit of a running run (checked beforehand: the run exists).
fn run_rate(state: &State, run_id: &str) -> (String, Option<Rate>) {
    state.runs.get(run_id).map_or((String::new(), None), |r| (r.agent.clone(), r.rate))
}

/// Event kinds the kernel emits.
pub mod kind {
    pub use crate::events::kind::*;
    pub const TASK_SCHEDULED: &str = "task.scheduled";
    pub const TASK_DROPPED: &str = "task.dropped";
    pub const AGENT_SPAWNED: &str = "agent.spawned";
    pub const TOKEN_REVOKED: &str = "token.revoked";
    pub const OP_REJECTED: &str = "op.rejected";
    pub const TOOL_CALLED: &str = "tool.called";
    pub const TOOL_COMPLETED: &str = "tool.completed";
    pub const TOOL_FAILED: &str = "tool.failed";
    pub const LIMIT_REACHED: &str = "limit.reached";
    pub const PLAN_STARTED: &str = "plan.started";
    pub const STEP_STARTED: &str = "step.started";
    pub const STEP_COMPLETED: &str = "step.completed";
    pub const STEP_FAILED: &str = "step.failed";
    pub const STEP_SKIPPED: &str = "step.skipped";
    /// `plan.completed`, `plan.failed`, `plan.cancelled` or `plan.timeout`.
    pub const PLAN_ENDED_PREFIX: &str = "plan.";
    pub const LLM_CALLED: &str = "llm.called";
    pub const LLM_COMPLETED: &str = "llm.completed";
    pub const LLM_FAILED: &str = "llm.failed";
    pub const PLUGIN_INSTALLED: &str = "plugin.installed";
    pub const PLUGIN_REMOVED: &str = "plugin.removed";
    pub const TRUST_ADDED: &str = "trust.added";
    pub const TRUST_REMOVED: &str = "trust.removed";
    pub const TRUST_POLICY: &str = "trust.policy";
    /// The changes a `change-home` operation may record.
    pub const HOME_CHANGES: [&str; 5] = [PLUGIN_INSTALLED, PLUGIN_REMOVED, TRUST_ADDED, TRUST_REMOVED, TRUST_POLICY];
}

/// Adds `detail`'s fields to an event's `payload`, never over a field the kernel set itself.
fn add_detail(payload: &mut serde_json::Value, detail: &serde_json::Value) {
    if let (Some(map), Some(extra)) = (payload.as_object_mut(), detail.as_object()) {
        for (k, v) in extra {
            map.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
}

fn event(op: &Operation, kind: &str, agent: &str, run_id: &str, payload: serde_json::Value) -> EventDraft {
    EventDraft { time_ms: op.time_ms, kind: kind.into(), agent: agent.into(), run_id: run_id.into(), payload }
}

/// Applies one operation. Returns the events it produces; a rejected operation produces one `op.rejected` event
/// and leaves the state unchanged except for the count of applied operations.
pub fn apply(state: &mut State, op: &Operation) -> Vec<EventDraft> {
    state.applied += 1;
    match check(state, op) {
        Ok(()) => effect(state, op),
        Err(reason) => vec![event(
            op,
            kind::OP_REJECTED,
            "",
            "",
            json!({ "reason": reason, "operation": serde_json::to_value(op).unwrap_or_default() }),
        )],
    }
}

/// Rebuilds the state from an operation log, from empty.
pub fn replay<'a>(ops: impl IntoIterator<Item = &'a Operation>) -> State {
    let mut state = State::default();
    for op in ops {
        apply(&mut state, op);
    }
    state
}

fn running<'a>(state: &'a State, run_id: &str) -> Result<&'a RunState, String> {
    match state.runs.get(run_id) {
        None => Err(format!("run {run_id} is not running")),
        Some(r) => Ok(r),
    }
}

/// The first revoked id among the operation's token, its chain, and the chain of the run it acts in.
fn revoked_id<'a>(state: &'a State, op: &'a Operation) -> Option<&'a str> {
    let run_chain = match &op.op {
        Op::EmitObservation { run_id, .. }
        | Op::WriteState { run_id, .. }
        | Op::SpawnAgent { parent_run: run_id, .. }
        | Op::ScheduleTask { parent_run: Some(run_id), .. }
        | Op::StartToolCall { run_id: Some(run_id), .. }
        | Op::EndToolCall { run_id: Some(run_id), .. }
        | Op::StartLlmCall { run_id: Some(run_id), .. }
        | Op::EndLlmCall { run_id: Some(run_id), .. } => state.runs.get(run_id).map(|r| r.chain.as_slice()),
        Op::StartStep { plan_id, .. } => state.plans.get(plan_id).map(|p| p.chain.as_slice()),
        _ => None,
    };
    std::iter::once(&op.token)
        .chain(&op.chain)
        .chain(run_chain.unwrap_or_default())
        .find(|id| state.revoked.contains(*id))
        .map(String::as_str)
}

fn check(state: &State, op: &Operation) -> Result<(), String> {
    // A run's ending is recorded whatever happened to its token meanwhile: the log must never lose how a run ended.
    let ending = matches!(
        op.op,
        Op::CompleteRun { .. }
            | Op::FailRun { .. }
            | Op::LoseRun { .. }
            | Op::EndToolCall { .. }
            | Op::EndLlmCall { .. }
            | Op::EndStep { .. }
            | Op::SkipStep { .. }
            | Op::EndPlan { .. }
            | Op::DropTask { .. }
    );
    if !ending && let Some(id) = revoked_id(state, op) {
        return Err(format!("token {id} is revoked"));
    }
    if let Some(why) = op.op.state_change().and_then(|c| c.refused.as_ref()) {
        return Err(why.clone());
    }
    match &op.op {
        Op::ScheduleTask { task_id, .. } if state.tasks.contains_key(task_id) => {
            Err(format!("task {task_id} is already scheduled"))
        }
        Op::ScheduleTask { parent_run, agent, .. } => {
            let pending = state.tasks.values().filter(|t| t.status == TaskStatus::Scheduled);
            let home = pending.clone().count();
            if home >= MAX_PENDING_TASKS {
                return Err(format!("task cap: {home} tasks are pending in this home, at most {MAX_PENDING_TASKS}"));
            }
            let Some(parent_run) = parent_run else { return Ok(()) };
            let parent = running(state, parent_run)?;
            let mine = pending.filter(|t| t.parent.as_deref() == Some(parent_run.as_str())).count();
            if mine >= MAX_PENDING_PER_RUN {
                return Err(format!(
                    "task cap: run {parent_run} has {mine} tasks pending, at most {MAX_PENDING_PER_RUN}"
                ));
            }
            check_rate(state, &parent.agent, parent.rate, op.time_ms, &format!("schedule of agent {agent}"))
        }
        Op::DropTask { task_id, .. } => match state.tasks.get(task_id) {
            Some(t) if t.status == TaskStatus::Scheduled => Ok(()),
            Some(_) => Err(format!("task {task_id} is running")),
            None => Err(format!("task {task_id} is not scheduled")),
        },
        Op::StartRun { run_id, .. } | Op::SpawnAgent { run_id, .. } if state.runs.contains_key(run_id) => {
            Err(format!("run {run_id} already exists"))
        }
        Op::StartRun { task_id, agent, rate, .. } => {
            match task_id.as_ref().and_then(|task| state.tasks.get(task).map(|t| (task, t))) {
                Some((task, t)) if t.status != TaskStatus::Scheduled => {
                    return Err(format!("task {task} is not waiting to run"));
                }
                Some((task, t)) if t.agent != *agent => return Err(format!("task {task} is for agent {}", t.agent)),
                _ => {}
            }
            check_rate(state, agent, *rate, op.time_ms, "run")
        }
        Op::SpawnAgent { parent_run, agent, .. } => {
            let parent = running(state, parent_run)?;
            check_rate(state, &parent.agent, parent.rate, op.time_ms, &format!("spawn of agent {agent}"))
        }
        Op::EmitObservation { run_id, .. } | Op::WriteState { run_id, .. } => {
            let run = running(state, run_id)?;
            let what = if matches!(op.op, Op::EmitObservation { .. }) { "events.emit" } else { "state write" };
            check_rate(state, &run.agent, run.rate, op.time_ms, what)
        }
        Op::CompleteRun { run_id, .. } | Op::FailRun { run_id, .. } | Op::ReachLimit { run_id, .. } => {
            running(state, run_id).map(drop)
        }
        Op::LoseRun { run_id, node, .. } => match running(state, run_id)?.node {
            Some(n) if n == *node => Ok(()),
            Some(n) => Err(format!("run {run_id} runs on node {n}, not on node {node}")),
            None => Err(format!("run {run_id} runs on no cluster node")),
        },
        Op::StartToolCall { run_id: Some(run_id), tool, .. } => {
            let run = running(state, run_id)?;
            check_rate(state, &run.agent, run.rate, op.time_ms, &format!("call of tool {tool}"))
        }
        Op::StartToolCall { run_id: None, agent, rate, tool, .. } => {
            check_rate(state, agent, *rate, op.time_ms, &format!("call of tool {tool}"))
        }
        Op::StartPlan { plan_id, steps, .. } => {
            if state.plans.contains_key(plan_id) {
                return Err(format!("plan {plan_id} is already running"));
            }
            let unique: BTreeSet<&String> = steps.iter().collect();
            if steps.is_empty() || unique.len() != steps.len() {
                return Err(format!("plan {plan_id} must name each of its steps once"));
            }
            Ok(())
        }
        Op::StartStep { plan_id, step, attempt, .. } => match step_status(state, plan_id, step)? {
            StepStatus::Pending => Ok(()),
            StepStatus::Failed { attempt: last, .. } if attempt > last => Ok(()),
            other => Err(format!(
                "step {step} of plan {plan_id} cannot start attempt {attempt}: it is {}",
                status_name(other)
            )),
        },
        Op::EndStep { plan_id, step, attempt, .. } => match step_status(state, plan_id, step)? {
            StepStatus::Running { attempt: running, .. } if running == attempt => Ok(()),
            other => Err(format!(
                "step {step} of plan {plan_id} is not running attempt {attempt}: it is {}",
                status_name(other)
            )),
        },
        Op::SkipStep { plan_id, step, .. } => match step_status(state, plan_id, step)? {
            StepStatus::Pending | StepStatus::Failed { .. } => Ok(()),
            other => Err(format!("step {step} of plan {plan_id} cannot be skipped: it is {}", status_name(other))),
        },
        Op::EndPlan { plan_id, .. } => {
            let plan = state.plans.get(plan_id).ok_or_else(|| format!("plan {plan_id} is not running"))?;
            match plan.steps.iter().find(|(_, s)| matches!(s, StepStatus::Running { .. })) {
                Some((step, _)) => Err(format!("plan {plan_id} cannot end while step {step} is running")),
                None => Ok(()),
            }
        }
        Op::StartLlmCall { run_id, agent, rate, budgets, model, .. } => {
            let (agent, rate) = match run_id {
                Some(run_id) => {
                    let run = running(state, run_id)?;
                    (run.agent.as_str(), run.rate)
                }
                None => (agent.as_str(), *rate),
            };
            check_rate(state, agent, rate, op.time_ms, &format!("call of model {model}"))?;
            check_llm_budget(state, agent, budgets, op.time_ms, model)
        }
        Op::ChangeHome { change, .. } if !kind::HOME_CHANGES.contains(&change.as_str()) => {
            Err(format!("unknown change {change}"))
        }
        _ => Ok(()),
    }
}

fn step_status<'a>(state: &'a State, plan_id: &str, step: &str) -> Result<&'a StepStatus, String> {
    let plan = state.plans.get(plan_id).ok_or_else(|| format!("plan {plan_id} is not running"))?;
    plan.steps.get(step).ok_or_else(|| format!("plan {plan_id} has no step {step}"))
}

fn status_name(status: &StepStatus) -> &'static str {
    match status {
        StepStatus::Pending => "pending",
        StepStatus::Running { .. } => "running",
        StepStatus::Failed { .. } => "failed",
        StepStatus::Completed { .. } => "completed",
        StepStatus::Skipped { .. } => "skipped",
    }
}

/// Sets a step's status (checked beforehand: the plan and the step exist).
fn set_step(state: &mut State, plan_id: &str, step: &str, status: StepStatus) {
    let plan = state.plans.get_mut(plan_id).expect("checked: the plan exists");
    plan.steps.insert(step.to_string(), status);
}

/// Ends a running run: it leaves the live state, and so does its task.
fn end_run(state: &mut State, run_id: &str, completed: bool) -> String {
    let run = state.runs.remove(run_id).expect("checked: the run exists");
    if let Some(task) = &run.task_id {
        state.tasks.remove(task);
    }
    if completed {
        state.ended_runs.0 += 1;
    } else {
        state.ended_runs.1 += 1;
    }
    run.agent
}

fn effect(state: &mut State, op: &Operation) -> Vec<EventDraft> {
    match &op.op {
        Op::ScheduleTask { task_id, agent, input, due_ms, parent_run, detail } => {
            if let Some(parent) = parent_run {
                let (parent_agent, rate) = run_rate(state, parent);
                take(state, &parent_agent, rate, op.time_ms);
            }
            let task = TaskState {
                agent: agent.clone(),
                status: TaskStatus::Scheduled,
                due_ms: *due_ms,
                parent: parent_run.clone(),
                op_seq: state.applied,
            };
            state.tasks.insert(task_id.clone(), task);
            let mut payload = json!({ "task_id": task_id, "input_bytes": input.len(), "due_ms": due_ms,
                                      "parent": parent_run });
            add_detail(&mut payload, detail);
            vec![event(op, kind::TASK_SCHEDULED, agent, parent_run.as_deref().unwrap_or(""), payload)]
        }
        Op::DropTask { task_id, reason } => {
            let task = state.tasks.remove(task_id).expect("checked: the task exists");
            vec![event(op, kind::TASK_DROPPED, &task.agent, "", json!({ "task_id": task_id, "reason": reason }))]
        }
        Op::StartRun { run_id, agent, task_id, detail, rate, node } => {
            if let Some(task) = task_id.as_ref().and_then(|t| state.tasks.get_mut(t)) {
                task.status = TaskStatus::Running;
            }
            take(state, agent, *rate, op.time_ms);
            state.runs.insert(
                run_id.clone(),
                RunState {
                    agent: agent.clone(),
                    task_id: task_id.clone(),
                    parent: None,
                    started_ms: op.time_ms,
                    observations: 0,
                    rate: *rate,
                    chain: op.chain.clone(),
                    node: *node,
                },
            );
            *state.agent_runs.entry(agent.clone()).or_default() += 1;
            let mut payload = detail.clone();
            if let Some(map) = payload.as_object_mut() {
                map.insert("task_id".into(), json!(task_id));
                map.insert("token".into(), json!(op.token));
                if let Some(node) = node {
                    map.insert("node".into(), json!(node));
                }
            }
            vec![event(op, kind::RUN_STARTED, agent, run_id, payload)]
        }
        Op::SpawnAgent { parent_run, run_id, agent, detail } => {
            let (parent_agent, rate) = run_rate(state, parent_run);
            take(state, &parent_agent, rate, op.time_ms);
            // The child acts under its own token (the parent's, narrowed): its chain names every block, the parent's
            // among them. An operation without one acts under the parent's chain.
            let chain = if op.chain.is_empty() { state.runs[parent_run].chain.clone() } else { op.chain.clone() };
            let node = state.runs[parent_run].node;
            state.runs.insert(
                run_id.clone(),
                RunState {
                    agent: agent.clone(),
                    task_id: None,
                    parent: Some(parent_run.clone()),
                    started_ms: op.time_ms,
                    observations: 0,
                    rate,
                    chain,
                    node,
                },
            );
            *state.agent_runs.entry(agent.clone()).or_default() += 1;
            // The child is a run like any other (`run.started` ... `run.completed`), with its parent named; the
            // parent's side of the link is `agent.spawned` on the parent's run.
            let mut payload = detail.clone();
            if !payload.is_object() {
                payload = json!({});
            }
            if let Some(map) = payload.as_object_mut() {
                map.insert("parent".into(), json!(parent_run));
                map.insert("task_id".into(), json!(null));
                map.insert("token".into(), json!(op.token));
            }
            vec![
                event(
                    op,
                    kind::AGENT_SPAWNED,
                    &parent_agent,
                    parent_run,
                    json!({ "child_run": run_id, "agent": agent }),
                ),
                event(op, kind::RUN_STARTED, agent, run_id, payload),
            ]
        }
        Op::EmitObservation { run_id, kind: observed, payload } => {
            let (agent, rate) = run_rate(state, run_id);
            take(state, &agent, rate, op.time_ms);
            let run = state.runs.get_mut(run_id).expect("checked: the run exists");
            run.observations += 1;
            let agent = run.agent.clone();
            vec![event(op, kind::OBSERVATION, &agent, run_id, json!({ "kind": observed, "payload": payload }))]
        }
        Op::WriteState { run_id, detail, .. } => {
            let (agent, rate) = run_rate(state, run_id);
            take(state, &agent, rate, op.time_ms);
            vec![event(op, kind::STATE_WRITE, &agent, run_id, detail.clone())]
        }
        Op::OperatorWriteState { agent, detail, .. } => vec![event(op, kind::STATE_WRITE, agent, "", detail.clone())],
        Op::CompleteRun { run_id, fuel, detail } => {
            let agent = end_run(state, run_id, true);
            vec![
                event(op, kind::FUEL_CONSUMED, &agent, run_id, json!({ "fuel": fuel })),
                event(op, kind::RUN_COMPLETED, &agent, run_id, detail.clone()),
            ]
        }
        Op::FailRun { run_id, reason, fuel, detail } => {
            let agent = end_run(state, run_id, false);
            let mut payload = detail.clone();
            if let Some(map) = payload.as_object_mut() {
                map.insert("reason".into(), json!(reason));
            }
            vec![
                event(op, kind::FUEL_CONSUMED, &agent, run_id, json!({ "fuel": fuel })),
                event(op, kind::RUN_FAILED, &agent, run_id, payload),
            ]
        }
        Op::LoseRun { run_id, node, reason } => {
            let agent = end_run(state, run_id, false);
            // Shaped as a run's report, so that whatever reads a run's ending reads this one too.
            let payload = json!({
                "outcome": "lost",
                "exit_code": LOST_EXIT_CODE,
                "error": format!("run {run_id} was lost with node {node}: {reason}"),
                "node": node,
                "reason": reason,
            });
            vec![event(op, kind::RUN_FAILED, &agent, run_id, payload)]
        }
        Op::RefuseRun { agent, grant_refused, detail } => {
            let k = if *grant_refused { kind::GRANT_REFUSED } else { kind::RUN_FAILED };
            vec![event(op, k, agent, "", detail.clone())]
        }
        Op::ReachLimit { run_id, limit, cap } => {
            let agent = state.runs[run_id].agent.clone();
            vec![event(op, kind::LIMIT_REACHED, &agent, run_id, json!({ "limit": limit, "cap": cap }))]
        }
        Op::RevokeToken { token_id } => {
            state.revoked.insert(token_id.clone());
            vec![event(op, kind::TOKEN_REVOKED, "", "", json!({ "token_id": token_id }))]
        }
        Op::StartToolCall { call_id, run_id, agent, tool, rate, detail } => {
            let (agent, rate) = match run_id {
                Some(run) => run_rate(state, run),
                None => (agent.clone(), *rate),
            };
            take(state, &agent, rate, op.time_ms);
            let mut payload = detail.clone();
            if let Some(map) = payload.as_object_mut() {
                map.insert("call_id".into(), json!(call_id));
                map.insert("tool".into(), json!(tool));
            }
            vec![event(op, kind::TOOL_CALLED, &agent, run_id.as_deref().unwrap_or(""), payload)]
        }
        Op::StartLlmCall { call_id, run_id, agent, model, provider, rate, detail, .. } => {
            let (agent, rate) = match run_id {
                Some(run) => run_rate(state, run),
                None => (agent.clone(), *rate),
            };
            take(state, &agent, rate, op.time_ms);
            let mut payload = detail.clone();
            if let Some(map) = payload.as_object_mut() {
                map.insert("call_id".into(), json!(call_id));
                map.insert("model".into(), json!(model));
                map.insert("provider".into(), json!(provider));
            }
            vec![event(op, kind::LLM_CALLED, &agent, run_id.as_deref().unwrap_or(""), payload)]
        }
        Op::EndLlmCall { call_id, run_id, agent, model, ok, tokens, budgets, detail } => {
            // Counted in every period some token of the agent has a budget for, whichever token made this call, so
            // that a second token of the same agent does not spend outside the first one's budget.
            let mut periods: Vec<u64> = budgets.iter().map(|b| b.period_ms).collect();
            periods.extend(state.llm_usage.get(agent).into_iter().flat_map(|w| w.keys().copied()));
            periods.sort_unstable();
            periods.dedup();
            if *tokens > 0 || !budgets.is_empty() {
                for period_ms in periods {
                    let budget = TokenBudget { tokens: 0, period_ms };
                    let window = op.time_ms / period_ms.max(1);
                    let used = window_used(state, agent, budget, op.time_ms).saturating_add(*tokens);
                    state.llm_usage.entry(agent.clone()).or_default().insert(period_ms, TokenWindow { window, used });
                }
            }
            let mut payload = detail.clone();
            if let Some(map) = payload.as_object_mut() {
                map.insert("call_id".into(), json!(call_id));
                map.insert("model".into(), json!(model));
            }
            let k = if *ok { kind::LLM_COMPLETED } else { kind::LLM_FAILED };
            vec![event(op, k, agent, run_id.as_deref().unwrap_or(""), payload)]
        }
        Op::EndToolCall { call_id, run_id, agent, tool, ok, detail } => {
            let mut payload = detail.clone();
            if let Some(map) = payload.as_object_mut() {
                map.insert("call_id".into(), json!(call_id));
                map.insert("tool".into(), json!(tool));
            }
            let k = if *ok { kind::TOOL_COMPLETED } else { kind::TOOL_FAILED };
            vec![event(op, k, agent, run_id.as_deref().unwrap_or(""), payload)]
        }
        Op::StartPlan { plan_id, name, digest, steps, .. } => {
            let plan = PlanState {
                name: name.clone(),
                started_ms: op.time_ms,
                op_seq: state.applied,
                chain: op.chain.clone(),
                steps: steps.iter().map(|s| (s.clone(), StepStatus::Pending)).collect(),
            };
            state.plans.insert(plan_id.clone(), plan);
            // `op_seq` names the operation that holds the manifest, so a reader finds the plan's graph after it ended.
            let payload = json!({ "plan_id": plan_id, "name": name, "digest": digest, "steps": steps, "token": op.token,
                                  "op_seq": state.applied });
            vec![event(op, kind::PLAN_STARTED, "", plan_id, payload)]
        }
        Op::StartStep { plan_id, step, attempt, run_id, agent } => {
            let failures = match state.plans.get(plan_id).and_then(|p| p.steps.get(step)) {
                Some(StepStatus::Failed { failures, .. }) => *failures,
                _ => 0,
            };
            set_step(state, plan_id, step, StepStatus::Running { attempt: *attempt, run_id: run_id.clone(), failures });
            let payload = json!({ "plan_id": plan_id, "step": step, "attempt": attempt });
            vec![event(op, kind::STEP_STARTED, agent, run_id, payload)]
        }
        Op::EndStep { plan_id, step, attempt, ok, outcome, output, detail } => {
            let (run_id, failures) = match state.plans.get(plan_id).and_then(|p| p.steps.get(step)) {
                Some(StepStatus::Running { run_id, failures, .. }) => (run_id.clone(), *failures),
                _ => (String::new(), 0),
            };
            let status = if *ok {
                StepStatus::Completed { attempt: *attempt, op_seq: state.applied }
            } else {
                let failed = u32::from(outcome != INTERRUPTED);
                StepStatus::Failed { attempt: *attempt, outcome: outcome.clone(), failures: failures + failed }
            };
            set_step(state, plan_id, step, status);
            // `op_seq` names the operation that holds the output, for readers of a plan's steps.
            let mut payload = json!({ "plan_id": plan_id, "step": step, "attempt": attempt, "outcome": outcome,
                                      "output_bytes": output.as_ref().map(String::len), "op_seq": state.applied });
            add_detail(&mut payload, detail);
            let k = if *ok { kind::STEP_COMPLETED } else { kind::STEP_FAILED };
            vec![event(op, k, "", &run_id, payload)]
        }
        Op::SkipStep { plan_id, step, reason } => {
            set_step(state, plan_id, step, StepStatus::Skipped { reason: reason.clone() });
            vec![event(
                op,
                kind::STEP_SKIPPED,
                "",
                plan_id,
                json!({ "plan_id": plan_id, "step": step, "reason": reason }),
            )]
        }
        Op::EndPlan { plan_id, outcome, detail } => {
            let plan = state.plans.remove(plan_id).expect("checked: the plan exists");
            let count = |f: fn(&StepStatus) -> bool| plan.steps.values().filter(|s| f(s)).count();
            let mut payload = json!({
                "plan_id": plan_id,
                "name": plan.name,
                "outcome": outcome,
                "completed": count(|s| matches!(s, StepStatus::Completed { .. })),
                "failed": count(|s| matches!(s, StepStatus::Failed { .. })),
                "skipped": count(|s| matches!(s, StepStatus::Skipped { .. })),
                "wall_time_ms": op.time_ms.saturating_sub(plan.started_ms),
            });
            add_detail(&mut payload, detail);
            let k = match outcome.as_str() {
                "completed" => "plan.completed",
                "cancelled" => "plan.cancelled",
                "timeout" => "plan.timeout",
                _ => "plan.failed",
            };
            vec![event(op, k, "", plan_id, payload)]
        }
        Op::ChangeHome { change, subject, detail } => {
            let mut payload = json!({ "subject": subject });
            add_detail(&mut payload, detail);
            vec![event(op, change, "", "", payload)]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn op(time_ms: u64, op: Op) -> Operation {
        Operation { time_ms, token: "tok".into(), chain: Vec::new(), op }
    }

    #[test]
    fn a_run_is_lost_only_with_its_own_node_and_then_nothing_more_of_it_is_recorded() {
        let mut s = State::default();
        let start = |run: &str, node: Option<u64>| Op::StartRun {
            run_id: run.into(),
            agent: "a".into(),
            task_id: None,
            detail: json!({}),
            rate: None,
            node,
        };
        let lose = |run: &str, node: u64| Op::LoseRun { run_id: run.into(), node, reason: "gone".into() };
        assert_eq!(apply(&mut s, &op(1, start("r1", Some(2))))[0].payload["node"], 2);
        assert_eq!(apply(&mut s, &op(1, start("r0", None)))[0].kind, kind::RUN_STARTED);
        // Refused: another node's run, a run on no node, a run that does not exist.
        for (run, node, why) in [("r1", 3, "runs on node 2"), ("r0", 2, "no cluster node"), ("r9", 2, "not running")] {
            let ev = apply(&mut s, &op(2, lose(run, node)));
            assert_eq!(ev[0].kind, kind::OP_REJECTED);
            assert!(ev[0].payload["reason"].as_str().unwrap().contains(why), "{}", ev[0].payload);
        }
        assert!(s.runs.contains_key("r1"), "a refused loss leaves the run live");
        // Positive control: the run's own node.
        let ev = apply(&mut s, &op(3, lose("r1", 2)));
        assert_eq!((ev.len(), ev[0].kind.as_str()), (1, kind::RUN_FAILED));
        assert_eq!((ev[0].payload["outcome"].as_str(), ev[0].payload["exit_code"].as_i64()), (Some("lost"), Some(103)));
        assert!(!s.runs.contains_key("r1"));
        // Fenced: the node's late ending (it was only slow) and its records are rejected.
        let late = Op::CompleteRun { run_id: "r1".into(), fuel: 1, detail: json!({}) };
        assert_eq!(apply(&mut s, &op(4, late))[0].kind, kind::OP_REJECTED);
        let emit = Op::EmitObservation { run_id: "r1".into(), kind: "k".into(), payload: json!({}) };
        assert_eq!(apply(&mut s, &op(4, emit))[0].kind, kind::OP_REJECTED);
        // A loss is recorded whatever happened to the run's token meanwhile.
        apply(&mut s, &op(5, start("r2", Some(2))));
        apply(&mut s, &op(6, Op::RevokeToken { token_id: "tok".into() }));
        assert_eq!(apply(&mut s, &op(7, lose("r2", 2)))[0].kind, kind::RUN_FAILED);
    }

    #[test]
    fn a_spawned_child_runs_on_its_parents_node() {
        let mut s = State::default();
        let start = Op::StartRun {
            run_id: "p".into(),
            agent: "a".into(),
            task_id: None,
            detail: json!({}),
            rate: None,
            node: Some(4),
        };
        apply(&mut s, &op(1, start));
        let spawn = Op::SpawnAgent { parent_run: "p".into(), run_id: "c".into(), agent: "b".into(), detail: json!({}) };
        apply(&mut s, &op(2, spawn));
        assert_eq!(s.runs["c"].node, Some(4));
    }

    #[test]
    fn a_run_lifecycle() {
        let mut s = State::default();
        let ev = apply(
            &mut s,
            &op(
                1,
                Op::ScheduleTask {
                    task_id: "t".into(),
                    agent: "a".into(),
                    input: "{}".into(),
                    due_ms: None,
                    parent_run: None,
                    detail: json!({}),
                },
            ),
        );
        assert_eq!(ev[0].kind, "task.scheduled");
        let start = Op::StartRun {
            run_id: "r".into(),
            agent: "a".into(),
            task_id: Some("t".into()),
            detail: json!({}),
            rate: None,
            node: None,
        };
        assert_eq!(apply(&mut s, &op(2, start.clone()))[0].kind, "run.started");
        assert_eq!(s.tasks["t"].status, TaskStatus::Running);
        assert_eq!(apply(&mut s, &op(3, start))[0].kind, "op.rejected", "a run starts once");
        let ev = apply(&mut s, &op(4, Op::CompleteRun { run_id: "r".into(), fuel: 9, detail: json!({}) }));
        assert_eq!(ev.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(), ["fuel.consumed", "run.completed"]);
        assert!(s.runs.is_empty() && s.tasks.is_empty(), "ended work leaves the live state");
        assert_eq!(s.ended_runs, (1, 0));
        let late = Op::EmitObservation { run_id: "r".into(), kind: "k".into(), payload: json!(1) };
        assert_eq!(apply(&mut s, &op(5, late))[0].kind, "op.rejected", "an ended run emits nothing");
        assert_eq!(s.applied, 5);
    }

    #[test]
    fn rate_limits_runs_and_host_calls_per_agent() {
        let mut s = State::default();
        let rate = Some(Rate { n: 2, period_ms: 1_000 });
        let start = |run: &str| Op::StartRun {
            run_id: run.into(),
            agent: "a".into(),
            task_id: None,
            detail: json!({}),
            rate,
            node: None,
        };
        assert_eq!(apply(&mut s, &op(0, start("r1")))[0].kind, "run.started");
        let emit = Op::EmitObservation { run_id: "r1".into(), kind: "k".into(), payload: json!(1) };
        assert_eq!(apply(&mut s, &op(0, emit.clone()))[0].kind, "observation", "the second action of the burst");
        let refused = apply(&mut s, &op(1, emit.clone()));
        assert_eq!(refused[0].kind, "op.rejected");
        let reason = refused[0].payload["reason"].as_str().unwrap();
        assert!(reason.contains("rate limit") && reason.contains("2/s") && reason.contains("events.emit"), "{reason}");
        assert_eq!(apply(&mut s, &op(1, start("r2")))[0].kind, "op.rejected", "runs share the agent's bucket");
        assert_eq!(apply(&mut s, &op(500, emit.clone()))[0].kind, "observation", "half a period refills one");
        assert_eq!(apply(&mut s, &op(500, emit))[0].kind, "op.rejected");
        let other =
            Op::StartRun { run_id: "b1".into(), agent: "b".into(), task_id: None, detail: json!({}), rate, node: None };
        assert_eq!(apply(&mut s, &op(500, other))[0].kind, "run.started", "another agent has its own bucket");
        assert_eq!(apply(&mut s, &op(10_000, start("r3")))[0].kind, "run.started", "a full bucket after a pause");
        let free = Op::StartRun {
            run_id: "u".into(),
            agent: "a".into(),
            task_id: None,
            detail: json!({}),
            rate: None,
            node: None,
        };
        assert_eq!(apply(&mut s, &op(10_000, free))[0].kind, "run.started", "a token without a rate is not limited");
    }

    #[test]
    fn model_token_budgets_refuse_once_spent_and_renew_with_the_window() {
        let mut s = State::default();
        let second = vec![TokenBudget { tokens: 100, period_ms: 1_000 }];
        let start_by = |call: &str, agent: &str, budgets: &[TokenBudget]| Op::StartLlmCall {
            call_id: call.into(),
            run_id: None,
            agent: agent.into(),
            model: "m".into(),
            provider: "p".into(),
            rate: None,
            budgets: budgets.to_vec(),
            detail: json!({}),
        };
        let end_by = |call: &str, tokens: u64, budgets: &[TokenBudget]| Op::EndLlmCall {
            call_id: call.into(),
            run_id: None,
            agent: "a".into(),
            model: "m".into(),
            ok: true,
            tokens,
            budgets: budgets.to_vec(),
            detail: json!({}),
        };
        let start = |call: &str| start_by(call, "a", &second);
        let end = |call: &str, tokens: u64| end_by(call, tokens, &second);
        assert_eq!(apply(&mut s, &op(10, start("c1")))[0].kind, "llm.called");
        assert_eq!(apply(&mut s, &op(20, end("c1", 60)))[0].kind, "llm.completed");
        assert_eq!(apply(&mut s, &op(30, start("c2")))[0].kind, "llm.called", "60 of 100 used");
        apply(&mut s, &op(40, end("c2", 60)));
        let refused = apply(&mut s, &op(50, start("c3")));
        assert_eq!(refused[0].kind, "op.rejected");
        let reason = refused[0].payload["reason"].as_str().unwrap();
        assert!(reason.starts_with("llm budget: agent a has used 120 of its 100/s"), "{reason}");
        assert!(reason.contains("renews in 950 ms"), "{reason}");
        let other = start_by("c4", "b", &second);
        assert_eq!(apply(&mut s, &op(50, other))[0].kind, "llm.called", "another agent has its own budget");
        let unbudgeted = start_by("c5", "a", &[]);
        assert_eq!(apply(&mut s, &op(50, unbudgeted))[0].kind, "llm.called", "a token without a budget");
        assert_eq!(apply(&mut s, &op(1_000, start("c6")))[0].kind, "llm.called", "the next window starts afresh");
        // What a token without a budget spends counts in the agent's windows all the same.
        apply(&mut s, &op(1_001, end_by("c5", 30, &[])));
        assert_eq!(s.llm_usage["a"][&1_000].used, 30);
        // Endings are recorded whatever happened meanwhile, and count.
        apply(&mut s, &op(1_001, Op::RevokeToken { token_id: "tok".into() }));
        assert_eq!(apply(&mut s, &op(1_002, end("c6", 5)))[0].kind, "llm.completed");
        assert_eq!(s.llm_usage["a"][&1_000].used, 35);
        assert_eq!(apply(&mut s, &op(1_003, start("c7")))[0].kind, "op.rejected", "revoked");
    }

    /// Budgets of different periods all apply: the agent is refused as soon as any one of them is spent.
    #[test]
    fn every_period_budget_of_a_token_applies() {
        let mut s = State::default();
        let both = [TokenBudget { tokens: 50, period_ms: 1_000 }, TokenBudget { tokens: 120, period_ms: 10_000 }];
        let start = |call: &str| Op::StartLlmCall {
            call_id: call.into(),
            run_id: None,
            agent: "a".into(),
            model: "m".into(),
            provider: "p".into(),
            rate: None,
            budgets: both.to_vec(),
            detail: json!({}),
        };
        let end = |call: &str, tokens: u64| Op::EndLlmCall {
            call_id: call.into(),
            run_id: None,
            agent: "a".into(),
            model: "m".into(),
            ok: true,
            tokens,
            budgets: both.to_vec(),
            detail: json!({}),
        };
        let mut t = 0;
        let mut step = |s: &mut State, call: &str, tokens: u64| {
            t += 1_000;
            let kind = apply(s, &op(t, start(call)))[0].kind.clone();
            apply(s, &op(t + 1, end(call, tokens)));
            kind
        };
        assert_eq!(step(&mut s, "c1", 50), "llm.called");
        assert_eq!(step(&mut s, "c2", 50), "llm.called", "a new second: the 50/s budget renewed");
        assert_eq!(step(&mut s, "c3", 50), "llm.called");
        let refused = apply(&mut s, &op(4_000, start("c4")));
        let reason = refused[0].payload["reason"].as_str().unwrap_or_default().to_string();
        assert!(reason.contains("has used 150 of its 120/10s"), "the ten-second budget is spent: {refused:?}");
    }

    #[test]
    fn token_budgets_parse_and_narrow() {
        assert_eq!(TokenBudget::parse("100000/day").unwrap(), TokenBudget { tokens: 100_000, period_ms: 86_400_000 });
        assert_eq!(TokenBudget::parse("2_000/h").unwrap().to_string(), "2000/h");
        for bad in ["", "100", "0/day", "x/day", "10/fortnight", "2000000000000/day"] {
            assert!(TokenBudget::parse(bad).is_err(), "{bad}");
        }
        let b = |text: &str| TokenBudget::parse(text).unwrap();
        let mut budgets = Vec::new();
        TokenBudget::narrow(&mut budgets, b("240000/day"));
        TokenBudget::narrow(&mut budgets, b("5000/h"));
        TokenBudget::narrow(&mut budgets, b("9000/h"));
        TokenBudget::narrow(&mut budgets, b("100000/day"));
        assert_eq!(budgets, [b("5000/h"), b("100000/day")], "both periods apply, each at its lowest");
    }

    #[test]
    fn rates_parse_and_compare() {
        assert_eq!(Rate::parse("10/min").unwrap(), Rate { n: 10, period_ms: 60_000 });
        assert_eq!(Rate::parse("5/s").unwrap().to_string(), "5/s");
        assert_eq!(Rate::parse("30/10s").unwrap(), Rate { n: 30, period_ms: 10_000 });
        for bad in ["", "10", "0/s", "x/s", "10/fortnight", "10/0s", "2000000/s", "1/30days"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
        let (a, b) = (Rate::parse("10/min").unwrap(), Rate::parse("2/s").unwrap());
        assert_eq!(a.stricter(b), a);
        assert_eq!(b.stricter(a), a);
        assert_eq!(
            Rate::parse("60/min").unwrap().stricter(Rate::parse("1/s").unwrap()).n,
            1,
            "same rate, smaller burst"
        );
    }

    #[test]
    fn revoking_a_block_revokes_it_and_its_descendants_only() {
        let mut s = State::default();
        // A parent token (ids [p]) and two children attenuated from it (ids [p, c1] and [p, c2]).
        let under = |token: &str, chain: &[&str], run: &str| Operation {
            time_ms: 1,
            token: token.into(),
            chain: chain.iter().map(|c| c.to_string()).collect(),
            op: Op::StartRun {
                run_id: run.into(),
                agent: "a".into(),
                task_id: None,
                detail: json!({}),
                rate: None,
                node: None,
            },
        };
        let emit = |run: &str| op(2, Op::EmitObservation { run_id: run.into(), kind: "k".into(), payload: json!(1) });
        assert_eq!(apply(&mut s, &under("c1", &["p", "c1"], "r1"))[0].kind, "run.started");
        assert_eq!(apply(&mut s, &under("c2", &["p", "c2"], "r2"))[0].kind, "run.started");
        apply(&mut s, &op(1, Op::RevokeToken { token_id: "c1".into() }));
        assert_eq!(apply(&mut s, &emit("r1"))[0].kind, "op.rejected", "a run of the revoked child");
        assert_eq!(apply(&mut s, &emit("r2"))[0].kind, "observation", "its sibling");
        assert_eq!(apply(&mut s, &under("p", &["p"], "r3"))[0].kind, "run.started", "its parent");
        assert_eq!(apply(&mut s, &under("c1", &["p", "c1"], "r4"))[0].kind, "op.rejected");
        let grandchild = under("g", &["p", "c1", "g"], "r5");
        assert_eq!(apply(&mut s, &grandchild)[0].kind, "op.rejected", "a descendant of the revoked child");
        let end = op(3, Op::CompleteRun { run_id: "r1".into(), fuel: 1, detail: json!({}) });
        assert_eq!(apply(&mut s, &end)[1].kind, "run.completed", "the ending of a revoked run is still recorded");
        apply(&mut s, &op(4, Op::RevokeToken { token_id: "p".into() }));
        assert_eq!(apply(&mut s, &emit("r2"))[0].kind, "op.rejected", "revoking the parent revokes every child");
    }

    #[test]
    fn a_completed_step_never_starts_again_and_a_plan_ends_only_when_no_step_runs() {
        let mut s = State::default();
        let kinds = |ev: Vec<EventDraft>| ev.into_iter().map(|e| e.kind).collect::<Vec<_>>();
        let start_plan = Op::StartPlan {
            plan_id: "p".into(),
            name: "n".into(),
            digest: "d".into(),
            manifest: "m".into(),
            base: "/".into(),
            steps: vec!["a".into(), "b".into()],
        };
        assert_eq!(kinds(apply(&mut s, &op(1, start_plan.clone()))), ["plan.started"]);
        assert_eq!(kinds(apply(&mut s, &op(1, start_plan))), ["op.rejected"], "a live plan starts once");
        let start = |attempt: u32| Op::StartStep {
            plan_id: "p".into(),
            step: "a".into(),
            attempt,
            run_id: format!("r{attempt}"),
            agent: "x".into(),
        };
        let end = |attempt: u32, ok: bool, outcome: &str| Op::EndStep {
            plan_id: "p".into(),
            step: "a".into(),
            attempt,
            ok,
            outcome: outcome.into(),
            output: ok.then(|| "{}".to_string()),
            detail: json!({}),
        };
        assert_eq!(kinds(apply(&mut s, &op(2, start(1)))), ["step.started"]);
        let end_plan = Op::EndPlan { plan_id: "p".into(), outcome: "failed".into(), detail: json!({}) };
        assert_eq!(kinds(apply(&mut s, &op(2, end_plan.clone()))), ["op.rejected"], "not while a step runs");
        assert_eq!(kinds(apply(&mut s, &op(3, end(1, false, INTERRUPTED)))), ["step.failed"]);
        assert_eq!(
            s.plans["p"].steps["a"],
            StepStatus::Failed { attempt: 1, outcome: INTERRUPTED.into(), failures: 0 }
        );
        assert_eq!(kinds(apply(&mut s, &op(4, start(1)))), ["op.rejected"], "attempts only go up");
        apply(&mut s, &op(4, start(2)));
        assert_eq!(kinds(apply(&mut s, &op(5, end(2, false, "trap")))), ["step.failed"]);
        assert!(matches!(s.plans["p"].steps["a"], StepStatus::Failed { failures: 1, .. }), "a trap counts");
        apply(&mut s, &op(6, start(3)));
        assert_eq!(kinds(apply(&mut s, &op(7, end(3, true, "success")))), ["step.completed"]);
        let seq = s.applied;
        assert_eq!(s.plans["p"].steps["a"], StepStatus::Completed { attempt: 3, op_seq: seq });
        assert_eq!(kinds(apply(&mut s, &op(8, start(4)))), ["op.rejected"], "a completed step never starts again");
        let skip = |step: &str| Op::SkipStep { plan_id: "p".into(), step: step.into(), reason: "r".into() };
        assert_eq!(kinds(apply(&mut s, &op(8, skip("a")))), ["op.rejected"], "nor is it skipped");
        assert_eq!(kinds(apply(&mut s, &op(8, skip("b")))), ["step.skipped"]);
        let ended = apply(&mut s, &op(9, end_plan));
        assert_eq!(ended[0].kind, "plan.failed");
        assert_eq!((ended[0].payload["completed"].clone(), ended[0].payload["skipped"].clone()), (json!(1), json!(1)));
        assert!(s.plans.is_empty(), "an ended plan leaves the live state");
    }

    #[test]
    fn revoking_the_operators_token_stops_the_plans_next_steps_but_not_their_endings() {
        let mut s = State::default();
        let plan = Operation {
            time_ms: 1,
            token: "op".into(),
            chain: vec!["root".into(), "op".into()],
            op: Op::StartPlan {
                plan_id: "p".into(),
                name: "n".into(),
                digest: "d".into(),
                manifest: "m".into(),
                base: "/".into(),
                steps: vec!["a".into(), "b".into()],
            },
        };
        apply(&mut s, &plan);
        let start = |step: &str| Operation {
            time_ms: 2,
            token: "other".into(),
            chain: vec![],
            op: Op::StartStep {
                plan_id: "p".into(),
                step: step.into(),
                attempt: 1,
                run_id: step.into(),
                agent: "x".into(),
            },
        };
        assert_eq!(apply(&mut s, &start("a"))[0].kind, "step.started");
        apply(&mut s, &op(3, Op::RevokeToken { token_id: "root".into() }));
        assert_eq!(apply(&mut s, &start("b"))[0].kind, "op.rejected", "the plan's chain is revoked");
        let end = Op::EndStep {
            plan_id: "p".into(),
            step: "a".into(),
            attempt: 1,
            ok: true,
            outcome: "success".into(),
            output: None,
            detail: json!({}),
        };
        assert_eq!(apply(&mut s, &op(4, end))[0].kind, "step.completed", "an ending is always recorded");
    }

    fn schedule(task: &str, parent: Option<&str>, due_ms: u64) -> Op {
        Op::ScheduleTask {
            task_id: task.into(),
            agent: "child".into(),
            input: "{}".into(),
            due_ms: Some(due_ms),
            parent_run: parent.map(String::from),
            detail: json!({}),
        }
    }

    #[test]
    fn pending_tasks_are_capped_per_run_and_per_home_and_a_dropped_one_leaves_the_queue() {
        let mut s = State::default();
        let start = |run: &str| Op::StartRun {
            run_id: run.into(),
            agent: "parent".into(),
            task_id: None,
            detail: json!({}),
            rate: None,
            node: None,
        };
        apply(&mut s, &op(1, start("r1")));
        for i in 0..MAX_PENDING_PER_RUN {
            let ev = apply(&mut s, &op(2, schedule(&format!("t{i}"), Some("r1"), 100)));
            assert_eq!(ev[0].kind, "task.scheduled", "{i}");
            assert_eq!(ev[0].payload["due_ms"], 100);
        }
        let over = apply(&mut s, &op(3, schedule("over", Some("r1"), 100)));
        assert_eq!(over[0].kind, "op.rejected");
        assert!(over[0].payload["reason"].as_str().unwrap().starts_with("task cap: run r1"));
        // Another run has its own allowance; a run that is not running schedules nothing.
        apply(&mut s, &op(4, start("r2")));
        assert_eq!(apply(&mut s, &op(5, schedule("other", Some("r2"), 100)))[0].kind, "task.scheduled");
        assert_eq!(apply(&mut s, &op(5, schedule("ghost", Some("nope"), 100)))[0].kind, "op.rejected");
        // A dropped task frees its place; dropping it twice is refused.
        assert_eq!(
            apply(&mut s, &op(6, Op::DropTask { task_id: "t0".into(), reason: "x".into() }))[0].kind,
            "task.dropped"
        );
        assert_eq!(
            apply(&mut s, &op(6, Op::DropTask { task_id: "t0".into(), reason: "x".into() }))[0].kind,
            "op.rejected"
        );
        assert_eq!(apply(&mut s, &op(7, schedule("again", Some("r1"), 100)))[0].kind, "task.scheduled");
        // The home's cap counts every pending task, whoever scheduled it.
        let mut i = 0;
        while s.tasks.len() < MAX_PENDING_TASKS {
            apply(&mut s, &op(8, schedule(&format!("op{i}"), None, 100)));
            i += 1;
        }
        let full = apply(&mut s, &op(9, schedule("full", None, 100)));
        assert!(full[0].payload["reason"].as_str().unwrap().starts_with("task cap: "), "{:?}", full[0].payload);
        // A task's start marks it running: it cannot start twice, nor be dropped while it runs.
        let run = Op::StartRun {
            run_id: "t".into(),
            agent: "child".into(),
            task_id: Some("again".into()),
            detail: json!({}),
            rate: None,
            node: None,
        };
        assert_eq!(apply(&mut s, &op(10, run.clone()))[0].kind, "run.started");
        let twice = Op::StartRun {
            run_id: "t2".into(),
            agent: "child".into(),
            task_id: Some("again".into()),
            detail: json!({}),
            rate: None,
            node: None,
        };
        assert_eq!(apply(&mut s, &op(11, twice))[0].kind, "op.rejected");
        assert_eq!(
            apply(&mut s, &op(11, Op::DropTask { task_id: "again".into(), reason: "x".into() }))[0].kind,
            "op.rejected"
        );
    }

    #[test]
    fn revoked_tokens_authorize_nothing() {
        let mut s = State::default();
        apply(&mut s, &op(1, Op::RevokeToken { token_id: "tok".into() }));
        let ev = apply(
            &mut s,
            &op(
                2,
                Op::ScheduleTask {
                    task_id: "t".into(),
                    agent: "a".into(),
                    input: String::new(),
                    due_ms: None,
                    parent_run: None,
                    detail: json!({}),
                },
            ),
        );
        assert_eq!(ev[0].kind, "op.rejected");
        assert!(s.tasks.is_empty());
    }

    /// Operations over a small universe of ids, so that sequences hit both valid and rejected cases often.
    fn arb_op() -> impl Strategy<Value = Operation> {
        let id = || prop::sample::select(vec!["a", "b", "c"]).prop_map(String::from);
        let op = prop_oneof![
            (id(), id(), prop::option::of(id()), prop::option::of(0u64..4)).prop_map(
                |(task_id, agent, parent_run, due_ms)| Op::ScheduleTask {
                    task_id,
                    agent,
                    input: "{}".into(),
                    due_ms,
                    parent_run,
                    detail: json!({}),
                }
            ),
            (id(), id()).prop_map(|(task_id, reason)| Op::DropTask { task_id, reason }),
            (id(), id(), prop::option::of(id()), prop::option::of(1u64..4)).prop_map(|(run_id, agent, task_id, n)| {
                Op::StartRun {
                    run_id,
                    agent,
                    task_id,
                    detail: json!({}),
                    rate: n.map(|n| Rate { n, period_ms: 10 }),
                    node: None,
                }
            }),
            (id(), id(), id()).prop_map(|(parent_run, run_id, agent)| Op::SpawnAgent {
                parent_run,
                run_id,
                agent,
                detail: json!({})
            }),
            (id(), any::<u8>()).prop_map(|(run_id, n)| Op::EmitObservation {
                run_id,
                kind: "k".into(),
                payload: json!(n)
            }),
            (id(), any::<u16>()).prop_map(|(run_id, fuel)| Op::CompleteRun {
                run_id,
                fuel: fuel.into(),
                detail: json!({})
            }),
            (id(), any::<u16>()).prop_map(|(run_id, fuel)| Op::FailRun {
                run_id,
                reason: "trap".into(),
                fuel: fuel.into(),
                detail: json!({})
            }),
            id().prop_map(|token_id| Op::RevokeToken { token_id }),
        ];
        let chain = prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]).prop_map(String::from), 0..3);
        (any::<u32>(), prop::sample::select(vec!["a", "b", "tok"]), chain, op).prop_map(
            |(time_ms, token, chain, op)| Operation { time_ms: time_ms.into(), token: token.into(), chain, op },
        )
    }

    proptest! {
        /// Replaying the stored log from empty rebuilds the same state and the same events, whatever the sequence.
        #[test]
        fn replay_rebuilds_the_same_state(ops in prop::collection::vec(arb_op(), 0..200)) {
            let mut live = State::default();
            let live_events: Vec<EventDraft> = ops.iter().flat_map(|o| apply(&mut live, o)).collect();
            // Through the log's encoding, as a restart would read it.
            let stored: Vec<String> = ops.iter().map(|o| serde_json::to_string(o).unwrap()).collect();
            let read: Vec<Operation> = stored.iter().map(|s| serde_json::from_str(s).unwrap()).collect();
            prop_assert_eq!(&read, &ops);
            let mut again = State::default();
            let replayed_events: Vec<EventDraft> = read.iter().flat_map(|o| apply(&mut again, o)).collect();
            prop_assert_eq!(&again, &live);
            prop_assert_eq!(replayed_events, live_events);
            prop_assert_eq!(replay(&read), live.clone());
            prop_assert_eq!(live.applied, ops.len() as u64);
            // Byte-equal, not just equal: the state itself is deterministic to serialize.
            prop_assert_eq!(serde_json::to_string(&again).unwrap(), serde_json::to_string(&live).unwrap());
        }
    }
}
