//! Scheduled tasks: a run schedules a task for later (`toka:agent/spawn.schedule`, kernel operation
//! `schedule-task` with its due time), and the service (`toka-host serve`) starts each task once it is due. The
//! schedule lives in the kernel's log, so it survives any restart: a service started later finds what is due in the
//! kernel's state.
//!
//! A task runs as the installed package it names, at the digest it had when scheduled (a package changed since is
//! not run), with the grants recorded at scheduling (what a spawn of it was then allowed, directories and
//! environment variables excepted), at most the scheduling run's limits, under a token minted for it by this home's
//! root key and naming the scheduling run's token chain, so revoking that token drops the task. A task that cannot
//! start is dropped (`task.dropped`, with the reason), never retried in a loop.
//!
//! A task never outlives the service that runs it unrecorded: on shutdown the scheduler gives running tasks the
//! shutdown grace period, then cancels them (their runs end `cancelled`, and the tasks leave the queue). A task that
//! a server left `running` without an end (killed, crashed) is found by the next scheduler to start on the home and
//! recorded as interrupted (its run fails with outcome `interrupted`), never run again: it may have done part of its
//! work already, and a task is run at most once.
//!
//! What this module must never do: start a task before it is due, start one twice (the kernel refuses a second
//! start of a task), or give a task a right that was not recorded with it.

use crate::error::one_line;
use crate::grants::{GrantRequest, NetGrant};
use crate::kernel::{Op, Operation, TaskState, TaskStatus};
use crate::report::RunReport;
use crate::run::{Invocation, Limits, RunControl, Runner};
use crate::runtime::Host;
use crate::sandbox::OutputMode;
use crate::spawn::Identity;
use crate::token::{Grant, MintRequest, TokenLimits};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// What a task runs with, recorded in its `schedule-task` operation's detail.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The package's component digest when the task was scheduled.
    pub sha256: String,
    /// The grants the task runs with, in the token's `KIND:VALUE` form (`net`, `tool`, `llm`, `spawn` only).
    pub grants: Vec<String>,
    pub fuel: u64,
    pub timeout_ms: u64,
    pub memory: u64,
    pub max_records: u64,
    pub max_spawn_depth: u32,
    pub max_spawns: u32,
    /// Whose authority the task acts under (the scheduling run's), stated to its token as the run's was.
    pub acting_agent: String,
    pub acting_component: String,
    pub acting_plugin: Option<String>,
    /// The revocation ids of the scheduling run's token (and its chain): revoking one drops the task.
    pub chain: Vec<String>,
    /// The root key that signed the scheduling token: retired (past its overlap) or removed by the time the task is
    /// due, the task is dropped, as a run under that token would be refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_key_id: Option<u32>,
}

/// The tasks due at `now_ms` that no run has started, oldest due first.
pub fn due(host: &Host, now_ms: u64) -> Result<Vec<(String, TaskState)>, String> {
    let state = crate::events::log::kernel_state(host.db()).map_err(|e| format!("reading the kernel's state: {e}"))?;
    let mut due: Vec<(String, TaskState)> = state
        .tasks
        .into_iter()
        .filter(|(_, t)| t.status == TaskStatus::Scheduled && t.due_ms.is_some_and(|d| d <= now_ms))
        .collect();
    due.sort_by_key(|(id, t)| (t.due_ms, id.clone()));
    Ok(due)
}

/// Drops `task_id` from the queue, recording why.
async fn drop_task(host: &Host, task_id: &str, reason: &str) {
    let op = Op::DropTask { task_id: task_id.into(), reason: one_line(reason) };
    if let Err(e) = host.log().submit_accepted(crate::run::operation(op)).await {
        tracing::warn!("cannot drop task {task_id}: {e}");
    }
}

/// Starts task `task_id` and waits for its run; drops it (recorded) if it cannot start. `cancel` stops the run from
/// outside (the service shutting down).
pub async fn start(
    host: &Arc<Host>,
    runner: &Runner,
    task_id: &str,
    task: &TaskState,
    cancel: Option<Arc<crate::sandbox::cancel::Cancel>>,
) -> Option<RunReport> {
    match prepare(host, runner, task_id, task) {
        Ok((program, grants, limits, input, chain)) => {
            let identity = Identity {
                agent: chain.acting_agent.clone(),
                component: chain.acting_component.clone(),
                plugin: chain.acting_plugin.clone(),
            };
            let control =
                RunControl { acting_as: Some(identity), chain: chain.chain.clone(), cancel, ..RunControl::default() };
            let invocation = Invocation::Task { id: task_id.to_string(), input };
            let output = OutputMode { echo: false, capture: false };
            let report = runner.run_with(&program, &grants, &limits, &invocation, output, control).await;
            // A start the kernel refused (the scheduling token revoked since) leaves the task queued: drop it.
            let still = crate::events::log::kernel_state(host.db())
                .ok()
                .and_then(|s| s.tasks.get(task_id).cloned())
                .is_some_and(|t| t.status == TaskStatus::Scheduled);
            if still {
                drop_task(host, task_id, report.error.as_deref().unwrap_or("its run did not start")).await;
            }
            Some(report)
        }
        Err(reason) => {
            drop_task(host, task_id, &reason).await;
            None
        }
    }
}

type Prepared = (Arc<crate::run::Program>, crate::grants::Authorized, Limits, String, TaskSpec);

fn prepare(host: &Arc<Host>, runner: &Runner, task_id: &str, task: &TaskState) -> Result<Prepared, String> {
    let op = crate::events::log::operation_at(host.db(), task.op_seq)
        .map_err(|e| format!("cannot read the task's operation: {e}"))?;
    let Some(Operation { op: Op::ScheduleTask { input, detail, agent, .. }, .. }) = op else {
        return Err(format!("operation {} is not the schedule of task {task_id}", task.op_seq));
    };
    let spec: TaskSpec = serde_json::from_value(detail.get("task").cloned().unwrap_or_default())
        .map_err(|e| format!("the task's record is not one this host can run: {e}"))?;
    crate::runtime::check_input(Some(&input)).map_err(|e| e.to_string())?;
    if let Some(id) = spec.root_key_id {
        let now_ms = crate::events::now_ms();
        crate::token::keys::KeyStore::load(&host.home().dir)
            .and_then(|keys| keys.verifying(id, now_ms).map(drop))
            .map_err(|e| format!("the scheduling token's root key {id} no longer verifies: {e}"))?;
    }
    let source = crate::plugin::installed_agent(&host.home().dir, &agent)
        .map_err(|e| format!("{agent}: {e}"))?
        .ok_or_else(|| format!("no installed agent package named {agent} any more"))?;
    let crate::runtime::Source::Plugin { name, identity, bytes } = source else {
        return Err(format!("{agent} is not an installed package"));
    };
    let digest = crate::plugin::sha256_hex(&bytes);
    if digest != spec.sha256 {
        return Err(format!(
            "the installed package {agent} is not the one scheduled (sha256 {digest}, scheduled {})",
            spec.sha256
        ));
    }
    let grants: Vec<Grant> = spec.grants.iter().map(|g| Grant::parse(g)).collect::<Result<_, _>>()?;
    let mut nets = Vec::new();
    for g in grants.iter().filter(|g| g.kind == "net") {
        nets.push(NetGrant::parse(&g.value)?);
    }
    let request = GrantRequest { net: nets.clone(), ..GrantRequest::default() };
    let mut authorized = host.authorize_grants(&request).map_err(|e| e.to_string())?;
    let limits = Limits {
        fuel: spec.fuel,
        timeout: Duration::from_millis(spec.timeout_ms),
        max_memory: spec.memory,
        max_records: spec.max_records,
        max_spawn_depth: spec.max_spawn_depth,
        max_spawns: spec.max_spawns,
        ..Limits::default()
    };
    let mut run_request = crate::commands::run::token_request(
        &spec.acting_agent,
        &nets,
        &authorized,
        &limits,
        Some(spec.acting_component.clone()),
    );
    run_request.plugin = spec.acting_plugin.clone();
    run_request.grants.extend(grants.iter().filter(|g| g.kind != "net").cloned());
    let mint = MintRequest {
        agent: spec.acting_agent.clone(),
        grants: run_request.grants.clone(),
        limits: TokenLimits { fuel: spec.fuel, memory: spec.memory, timeout_ms: spec.timeout_ms },
        ttl: Some(Duration::from_millis(spec.timeout_ms).saturating_add(Duration::from_secs(60))),
        component: Some(spec.acting_component.clone()),
        plugin: spec.acting_plugin.clone(),
        ..MintRequest::default()
    };
    let token = host.mint_local(&mint).map_err(|e| e.to_string())?;
    let authorization =
        host.authorize_token(Some(&token), &run_request, crate::token::LOCAL_TTL).map_err(|e| e.to_string())?;
    authorized.token_id = authorization.token_id;
    authorized.rate = authorization.rate;
    authorized.token = Some(authorization.token);
    authorized.plugin = Some(identity);
    let program = runner.load_bytes(&name, &bytes).map_err(|e| e.to_string())?;
    if program.world() != crate::component::World::Agent {
        return Err(format!("{agent} is not an agent"));
    }
    Ok((program, authorized, limits, input, spec))
}

/// The outcome of a task's run that a server left running when it stopped without ending it.
pub const INTERRUPTED: &str = crate::kernel::INTERRUPTED;

/// Records every task left `running` by a server that stopped without ending it (there is no such server any more
/// when a scheduler starts on the home): its run fails with outcome `interrupted`, which ends the task. The task is
/// not run again. Returns how many were found.
pub async fn recover_interrupted(host: &Host) -> usize {
    let state = match crate::events::log::kernel_state(host.db()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("scheduler: reading the kernel's state: {e}");
            return 0;
        }
    };
    let mut found = 0;
    for (task_id, task) in state.tasks.iter().filter(|(_, t)| t.status == TaskStatus::Running) {
        let Some((run_id, _)) = state.runs.iter().find(|(_, r)| r.task_id.as_deref() == Some(task_id.as_str())) else {
            continue;
        };
        let detail = serde_json::json!({
            "outcome": INTERRUPTED,
            "task_id": task_id,
            "error": "the server running this scheduled task stopped before it ended; the task is not run again",
        });
        let op = Op::FailRun { run_id: run_id.clone(), reason: INTERRUPTED.into(), fuel: 0, detail };
        match host.log().submit_accepted(crate::run::operation(op)).await {
            Ok(_) => {
                found += 1;
                tracing::info!(task_id = %task_id, run_id = %run_id, agent = %task.agent, "task interrupted by a stopped server");
            }
            Err(e) => tracing::warn!("scheduler: cannot record task {task_id} as interrupted: {e}"),
        }
    }
    found
}

/// The service's scheduler: first records the tasks a stopped server left running ([`recover_interrupted`]); then,
/// until `stop`, starts every due task (at most `max_at_once` at a time), waking at least every `tick`. When stopped,
/// gives running tasks `grace` to end, then cancels them and waits (bounded) for their ends to be recorded.
pub async fn scheduler(
    host: Arc<Host>,
    runner: Arc<Runner>,
    max_at_once: usize,
    tick: Duration,
    grace: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    recover_interrupted(&host).await;
    let in_flight: Arc<std::sync::Mutex<std::collections::BTreeMap<String, Arc<crate::sandbox::cancel::Cancel>>>> =
        Arc::default();
    let slots = Arc::new(tokio::sync::Semaphore::new(max_at_once.max(1)));
    let running = |in_flight: &std::sync::Mutex<std::collections::BTreeMap<_, _>>| {
        in_flight.lock().unwrap_or_else(|p| p.into_inner()).len()
    };
    loop {
        let now = crate::events::now_ms();
        let due = match due(&host, now) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("scheduler: {e}");
                Vec::new()
            }
        };
        for (task_id, task) in due {
            let cancel = Arc::new(crate::sandbox::cancel::Cancel::default());
            {
                let mut live = in_flight.lock().unwrap_or_else(|p| p.into_inner());
                if live.contains_key(&task_id) {
                    continue;
                }
                live.insert(task_id.clone(), cancel.clone());
            }
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&task_id);
                break;
            };
            let (host, runner, in_flight) = (host.clone(), runner.clone(), in_flight.clone());
            tokio::spawn(async move {
                let report = start(&host, &runner, &task_id, &task, Some(cancel)).await;
                if let Some(r) = report {
                    tracing::info!(task_id = %task_id, outcome = r.outcome.name(), "scheduled task ended");
                }
                in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&task_id);
                drop(permit);
            });
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(tick) => {}
        }
    }
    // Stopped: running tasks get the grace period, then are cancelled, and their ends recorded before this returns.
    let deadline = tokio::time::Instant::now() + grace;
    while running(&in_flight) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left: Vec<_> = in_flight.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
    if !left.is_empty() {
        tracing::info!(tasks = left.len(), "cancelling scheduled tasks still running after the grace period");
    }
    left.iter().for_each(|c| c.cancel());
    let wait = tokio::time::Instant::now() + Duration::from_secs(5);
    while running(&in_flight) > 0 && tokio::time::Instant::now() < wait {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
