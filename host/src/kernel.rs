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
    /// The token that authorized the operation (its revocation id; `local-cli` for the local operator).
    pub token: String,
    #[serde(flatten)]
    pub op: Op,
}

/// What an operation does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Op {
    /// Queue a task for an agent.
    ScheduleTask { task_id: String, agent: String, input: String },
    /// Start a run of an agent, for a scheduled task or a direct invocation.
    StartRun {
        run_id: String,
        agent: String,
        task_id: Option<String>,
        #[serde(default)]
        detail: serde_json::Value,
    },
    /// Start a sub-agent's run on behalf of a running parent.
    SpawnAgent { parent_run: String, run_id: String, agent: String },
    /// A run's observation.
    EmitObservation { run_id: String, kind: String, payload: serde_json::Value },
    /// A run's write to its agent's state.
    WriteState { run_id: String, detail: serde_json::Value },
    /// An operator's write to an agent's state (`toka-host state set`).
    OperatorWriteState { agent: String, detail: serde_json::Value },
    /// A run ended well.
    CompleteRun { run_id: String, fuel: u64, detail: serde_json::Value },
    /// A run ended badly (trap, out of fuel, timeout, memory, denied ...).
    FailRun { run_id: String, reason: String, fuel: u64, detail: serde_json::Value },
    /// A run refused before it started (bad component, refused grant, bad input).
    RefuseRun { agent: String, grant_refused: bool, detail: serde_json::Value },
    /// Revoke a token: every later operation naming it is rejected.
    RevokeToken { token_id: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    pub agent: String,
    pub task_id: Option<String>,
    pub parent: Option<String>,
    pub started_ms: u64,
    pub observations: u64,
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
}

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
}

/// Event kinds the kernel emits.
pub mod kind {
    pub use crate::events::kind::*;
    pub const TASK_SCHEDULED: &str = "task.scheduled";
    pub const AGENT_SPAWNED: &str = "agent.spawned";
    pub const TOKEN_REVOKED: &str = "token.revoked";
    pub const OP_REJECTED: &str = "op.rejected";
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

fn check(state: &State, op: &Operation) -> Result<(), String> {
    if state.revoked.contains(&op.token) {
        return Err(format!("token {} is revoked", op.token));
    }
    match &op.op {
        Op::ScheduleTask { task_id, .. } if state.tasks.contains_key(task_id) => {
            Err(format!("task {task_id} is already scheduled"))
        }
        Op::StartRun { run_id, .. } | Op::SpawnAgent { run_id, .. } if state.runs.contains_key(run_id) => {
            Err(format!("run {run_id} already exists"))
        }
        Op::StartRun { task_id: Some(task), agent, .. } => match state.tasks.get(task) {
            Some(t) if t.status != TaskStatus::Scheduled => Err(format!("task {task} is not waiting to run")),
            Some(t) if t.agent != *agent => Err(format!("task {task} is for agent {}", t.agent)),
            _ => Ok(()),
        },
        Op::SpawnAgent { parent_run, .. } => running(state, parent_run).map(drop),
        Op::EmitObservation { run_id, .. }
        | Op::WriteState { run_id, .. }
        | Op::CompleteRun { run_id, .. }
        | Op::FailRun { run_id, .. } => running(state, run_id).map(drop),
        _ => Ok(()),
    }
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
        Op::ScheduleTask { task_id, agent, input } => {
            state.tasks.insert(task_id.clone(), TaskState { agent: agent.clone(), status: TaskStatus::Scheduled });
            vec![event(op, kind::TASK_SCHEDULED, agent, "", json!({ "task_id": task_id, "input_bytes": input.len() }))]
        }
        Op::StartRun { run_id, agent, task_id, detail } => {
            if let Some(task) = task_id.as_ref().and_then(|t| state.tasks.get_mut(t)) {
                task.status = TaskStatus::Running;
            }
            state.runs.insert(
                run_id.clone(),
                RunState {
                    agent: agent.clone(),
                    task_id: task_id.clone(),
                    parent: None,
                    started_ms: op.time_ms,
                    observations: 0,
                },
            );
            *state.agent_runs.entry(agent.clone()).or_default() += 1;
            let mut payload = detail.clone();
            if let Some(map) = payload.as_object_mut() {
                map.insert("task_id".into(), json!(task_id));
                map.insert("token".into(), json!(op.token));
            }
            vec![event(op, kind::RUN_STARTED, agent, run_id, payload)]
        }
        Op::SpawnAgent { parent_run, run_id, agent } => {
            state.runs.insert(
                run_id.clone(),
                RunState {
                    agent: agent.clone(),
                    task_id: None,
                    parent: Some(parent_run.clone()),
                    started_ms: op.time_ms,
                    observations: 0,
                },
            );
            *state.agent_runs.entry(agent.clone()).or_default() += 1;
            let parent_agent = state.runs[parent_run].agent.clone();
            vec![event(
                op,
                kind::AGENT_SPAWNED,
                &parent_agent,
                parent_run,
                json!({ "child_run": run_id, "agent": agent }),
            )]
        }
        Op::EmitObservation { run_id, kind: observed, payload } => {
            let run = state.runs.get_mut(run_id).expect("checked: the run exists");
            run.observations += 1;
            let agent = run.agent.clone();
            vec![event(op, kind::OBSERVATION, &agent, run_id, json!({ "kind": observed, "payload": payload }))]
        }
        Op::WriteState { run_id, detail } => {
            let agent = state.runs[run_id].agent.clone();
            vec![event(op, kind::STATE_WRITE, &agent, run_id, detail.clone())]
        }
        Op::OperatorWriteState { agent, detail } => vec![event(op, kind::STATE_WRITE, agent, "", detail.clone())],
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
        Op::RefuseRun { agent, grant_refused, detail } => {
            let k = if *grant_refused { kind::GRANT_REFUSED } else { kind::RUN_FAILED };
            vec![event(op, k, agent, "", detail.clone())]
        }
        Op::RevokeToken { token_id } => {
            state.revoked.insert(token_id.clone());
            vec![event(op, kind::TOKEN_REVOKED, "", "", json!({ "token_id": token_id }))]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn op(time_ms: u64, op: Op) -> Operation {
        Operation { time_ms, token: "tok".into(), op }
    }

    #[test]
    fn a_run_lifecycle() {
        let mut s = State::default();
        let ev = apply(&mut s, &op(1, Op::ScheduleTask { task_id: "t".into(), agent: "a".into(), input: "{}".into() }));
        assert_eq!(ev[0].kind, "task.scheduled");
        let start =
            Op::StartRun { run_id: "r".into(), agent: "a".into(), task_id: Some("t".into()), detail: json!({}) };
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
    fn revoked_tokens_authorize_nothing() {
        let mut s = State::default();
        apply(&mut s, &op(1, Op::RevokeToken { token_id: "tok".into() }));
        let ev =
            apply(&mut s, &op(2, Op::ScheduleTask { task_id: "t".into(), agent: "a".into(), input: String::new() }));
        assert_eq!(ev[0].kind, "op.rejected");
        assert!(s.tasks.is_empty());
    }

    /// Operations over a small universe of ids, so that sequences hit both valid and rejected cases often.
    fn arb_op() -> impl Strategy<Value = Operation> {
        let id = || prop::sample::select(vec!["a", "b", "c"]).prop_map(String::from);
        let op = prop_oneof![
            (id(), id()).prop_map(|(task_id, agent)| Op::ScheduleTask { task_id, agent, input: "{}".into() }),
            (id(), id(), prop::option::of(id())).prop_map(|(run_id, agent, task_id)| Op::StartRun {
                run_id,
                agent,
                task_id,
                detail: json!({})
            }),
            (id(), id(), id()).prop_map(|(parent_run, run_id, agent)| Op::SpawnAgent { parent_run, run_id, agent }),
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
        (any::<u32>(), prop::sample::select(vec!["a", "b", "tok"]), op).prop_map(|(time_ms, token, op)| Operation {
            time_ms: time_ms.into(),
            token: token.into(),
            op,
        })
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
