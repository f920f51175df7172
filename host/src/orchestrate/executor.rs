//! Running a plan: authorize every agent before anything starts, then schedule the steps, record each in the
//! kernel's log, and resume a plan that a crash or a kill stopped.
//!
//! Authority flows one way: the operator's token (given, or minted from the manifest by the local root key, as `run`
//! mints from its flags) is attenuated for each agent to exactly the agent's grants, limits and component, and each
//! run is authorized with that narrowed token alone. A manifest that asks for more than the operator's token allows
//! is refused before the plan is recorded, naming the agent and the grant.
//!
//! Durability: the plan (with its manifest's exact text) and each step's start and end are kernel operations. The
//! kernel refuses to start a step that already completed, so a resume can never run one twice; a step that was
//! running when the host stopped is recorded as `interrupted` (not counted against its retries) and runs again.
//! The plan's timeout counts from the start of each process that runs it (a resume gets a fresh one).
//!
//! This module never prints: what happens is told to an [`Observer`], and the summary is returned.

use super::manifest::{self, Pipes, Plan, Priority, Step};
use crate::error::{Outcome, RunError};
use crate::events::AppendError;
use crate::kernel::{INTERRUPTED, Op, Operation, StepStatus};
use crate::report::RunReport;
use crate::run::{RunControl, Runner};
use crate::runtime::{Host, LimitRequest, RunSpec, Source};
use crate::sandbox::OutputMode;
use crate::sandbox::cancel::Cancel;
use crate::token::{Attenuation, Grant, MintRequest, TokenLimits};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Exit code of a plan that ended with a failed or skipped step (85; 82 is a cancelled plan, 69 a timed-out one).
pub const PLAN_FAILED: i32 = 85;

/// Where a plan comes from.
#[derive(Debug, Clone)]
pub enum PlanSource {
    /// A manifest's text; relative paths in it are relative to `base`; `fallback_name` names an unnamed plan.
    Manifest { text: String, base: PathBuf, fallback_name: String },
    /// A live plan of the kernel, continued from its recorded state.
    Resume { plan_id: String },
}

/// How to run a plan.
#[derive(Clone)]
pub struct Options {
    /// Non-critical steps running at once.
    pub jobs: usize,
    /// The operator's token (its text); `None` mints one from the manifest with the local root key.
    pub token: Option<String>,
    /// The new plan's id (default: a fresh one).
    pub plan_id: Option<String>,
    /// The runner the steps go through (a server's, with the programs it has loaded); `None`: a new one on `host`.
    pub runner: Option<Arc<crate::run::Runner>>,
    /// Where a step's attempt runs, on a cluster (`None`: every step runs here).
    pub placer: Option<Arc<dyn StepPlacer>>,
}

/// One attempt of a step, for a [`StepPlacer`]: its run (the operator's token narrowed to the step, the run id its
/// start was recorded under), the labels its node needs, and the plan's cancel.
pub struct PlacedStep {
    pub spec: RunSpec,
    pub labels: Vec<String>,
    pub cancel: Arc<Cancel>,
}

/// What a [`StepPlacer`] answers: the attempt's report once it has ended elsewhere, or `None` to run it here.
pub type Placed<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Option<Result<RunReport, RunError>>> + Send + 'a>>;

/// Runs a step's attempt on another node of a cluster (a server's placement).
pub trait StepPlacer: Send + Sync {
    fn run(&self, step: PlacedStep) -> Placed<'_>;
}

/// A refusal before the plan starts (or a host fault), with the exit code it maps to.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct UpError {
    pub message: String,
    pub exit_code: i32,
    /// What kind of refusal or fault it is (the service maps it to a status).
    pub outcome: Outcome,
}

impl UpError {
    fn new(outcome: Outcome, message: impl Into<String>) -> UpError {
        UpError { message: message.into(), exit_code: outcome.exit_code(), outcome }
    }

    fn host(message: impl Into<String>) -> UpError {
        UpError::new(Outcome::HostError, message)
    }
}

/// What became of one step.
#[derive(Debug, Clone, Serialize)]
pub struct StepSummary {
    pub name: String,
    /// The agent the step runs (its component's name).
    pub agent: String,
    /// `completed`, `failed`, `skipped`, `cancelled`.
    pub status: String,
    pub priority: Priority,
    /// Attempts made (in every process that ran the plan).
    pub attempts: u32,
    /// The last attempt's run.
    pub run_id: Option<String>,
    /// The last attempt's outcome (`success`, `trap`, `interrupted` ...).
    pub outcome: Option<String>,
    pub fuel: u64,
    pub wall_time_ms: f64,
    pub error: Option<String>,
    /// Why a skipped step did not run.
    pub reason: Option<String>,
    /// The agent's JSON output.
    pub output: Option<Value>,
    /// Completed by an earlier process (before a resume).
    pub resumed: bool,
}

/// What became of a plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlanSummary {
    pub plan_id: String,
    pub name: String,
    /// `completed`, `failed`, `cancelled`, `timeout`.
    pub outcome: String,
    pub exit_code: i32,
    pub resumed: bool,
    pub wall_time_ms: f64,
    pub steps: Vec<StepSummary>,
}

/// What happens while a plan runs, as it happens.
#[derive(Debug, Clone)]
pub enum Update {
    PlanStarted { plan_id: String, name: String, steps: Vec<(String, String)>, resumed: bool },
    StepStarted { step: String, attempt: u32, run_id: String },
    StepRetrying { step: String, attempt: u32, after: Duration, error: String },
    StepEnded(StepSummary),
    PlanEnded(PlanSummary),
}

/// Told of each [`Update`] (the CLI's plain lines or live view, the service's status).
pub trait Observer: Send + Sync {
    fn update(&self, update: &Update);
}

/// One step, prepared: its program loaded, its narrowed token made, its limits fixed.
struct Prepared {
    step: Step,
    agent: String,
    /// The operator's token attenuated to exactly this step.
    token: String,
    limits: LimitRequest,
    component: PathBuf,
}

/// The operator's authority over the plan.
struct Operator {
    text: String,
    /// Its own revocation id (named by the plan's operations) and every one of its chain.
    token_id: String,
    chain: Vec<String>,
}

/// Where a step stands in this process.
#[derive(Debug, Clone)]
enum Local {
    Waiting,
    Running,
    Completed {
        output: Option<String>,
    },
    /// Failed for good (retries used up, or a refusal).
    Failed,
    Skipped,
}

/// Progress of a step across attempts (and processes).
#[derive(Debug, Clone, Default)]
struct Progress {
    next_attempt: u32,
    failures: u32,
    summary: Option<StepSummary>,
}

/// Runs (or resumes) a plan on `host` until every step has ended or been skipped, the plan times out, or `stop` is
/// cancelled (then running steps are cancelled and the rest skipped, all recorded).
pub async fn up(
    host: Arc<Host>,
    source: PlanSource,
    options: Options,
    observer: Arc<dyn Observer>,
    stop: CancellationToken,
) -> Result<PlanSummary, UpError> {
    let started = Instant::now();
    let runner = options.runner.clone().unwrap_or_else(|| Arc::new(host.runner()));
    let (plan, plan_id, resume) = match source {
        PlanSource::Manifest { text, base, fallback_name } => {
            let plan = manifest::parse(&text, &base, &fallback_name)
                .map_err(|e| UpError::new(Outcome::InvalidInput, format!("invalid manifest: {e}")))?;
            let plan_id = options.plan_id.clone().unwrap_or_else(crate::run::fresh_plan_id);
            check_plan_id(&plan_id)?;
            (plan, plan_id, Some(text))
        }
        PlanSource::Resume { plan_id } => {
            check_plan_id(&plan_id)?;
            (load_plan(&host, &plan_id)?, plan_id, None)
        }
    };
    let resumed = resume.is_none();
    let (operator, prepared) = authorize(&host, &runner, &plan, options.token.as_deref()).await?;
    let log = host.log().clone();
    let steps_named: Vec<(String, String)> = prepared.iter().map(|p| (p.step.name.clone(), p.agent.clone())).collect();

    let mut progress: BTreeMap<String, Progress> =
        plan.steps.iter().map(|s| (s.name.clone(), Progress { next_attempt: 1, ..Progress::default() })).collect();
    let mut local: BTreeMap<String, Local> = plan.steps.iter().map(|s| (s.name.clone(), Local::Waiting)).collect();

    if stop.is_cancelled() {
        return Err(UpError::new(Outcome::Cancelled, "cancelled before the plan started"));
    }
    match &resume {
        Some(text) => {
            let op = Op::StartPlan {
                plan_id: plan_id.clone(),
                name: plan.name.clone(),
                digest: plan.digest.clone(),
                manifest: text.clone(),
                base: plan.base.display().to_string(),
                steps: plan.steps.iter().map(|s| s.name.clone()).collect(),
            };
            let mut operation = operation_by(&operator.token_id, op);
            operation.chain = operator.chain.clone();
            log.submit_accepted(operation).await.map_err(|e| match e {
                AppendError::Rejected(why) => UpError::new(Outcome::TokenRefused, format!("plan refused: {why}")),
                e @ (AppendError::Invalid(_) | AppendError::PayloadTooLarge(_)) => {
                    UpError::new(Outcome::InvalidInput, format!("cannot record the plan: {e}"))
                }
                e => UpError::host(format!("cannot record the plan's start: {e}")),
            })?;
        }
        None => restore(&host, &plan, &plan_id, &operator, &prepared, &mut local, &mut progress).await?,
    }
    observer.update(&Update::PlanStarted {
        plan_id: plan_id.clone(),
        name: plan.name.clone(),
        steps: steps_named,
        resumed,
    });

    let agents = prepared.iter().map(|p| (p.step.name.clone(), p.agent.clone())).collect();
    let context = Arc::new(Context {
        host: host.clone(),
        runner,
        plan_id: plan_id.clone(),
        operator,
        observer,
        agents,
        placer: options.placer.clone(),
    });
    let prepared: BTreeMap<String, Arc<Prepared>> =
        prepared.into_iter().map(|p| (p.step.name.clone(), Arc::new(p))).collect();
    let order: BTreeMap<&str, usize> = plan.steps.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
    let deadline = tokio::time::Instant::now() + plan.timeout;
    let jobs = options.jobs.max(1);
    let mut running: tokio::task::JoinSet<(String, Attempted)> = tokio::task::JoinSet::new();
    let mut cancels: BTreeMap<String, Arc<Cancel>> = BTreeMap::new();
    let mut ending: Option<&'static str> = None;

    loop {
        if ending.is_none() {
            skip_dependents(&context, &plan, &mut local, &mut progress).await;
            let critical_left = plan
                .steps
                .iter()
                .any(|s| s.priority == Priority::Critical && matches!(local[&s.name], Local::Waiting | Local::Running));
            let mut ready: Vec<&Step> = plan
                .steps
                .iter()
                .filter(|s| matches!(local[&s.name], Local::Waiting))
                .filter(|s| s.requires.iter().all(|d| matches!(local[d], Local::Completed { .. })))
                .filter(|s| s.after.iter().all(|d| !matches!(local[d], Local::Waiting | Local::Running)))
                .filter(|s| !critical_left || s.priority == Priority::Critical)
                .collect();
            ready.sort_by_key(|s| (s.priority, order[s.name.as_str()]));
            // Critical steps run one at a time, before every other step; the rest up to `jobs` at once.
            let room = if critical_left { usize::from(running.is_empty()) } else { jobs.saturating_sub(running.len()) };
            for step in ready.into_iter().take(room) {
                let input = build_input(step, &local);
                let cancel = Arc::new(Cancel::default());
                cancels.insert(step.name.clone(), cancel.clone());
                local.insert(step.name.clone(), Local::Running);
                let p = progress[&step.name].clone();
                let (context, prepared) = (context.clone(), prepared[&step.name].clone());
                let name = step.name.clone();
                running.spawn(async move {
                    let attempted = attempt_all(&context, &prepared, input, p, &cancel).await;
                    (name, attempted)
                });
            }
        }
        if running.is_empty() {
            break;
        }
        tokio::select! {
            joined = running.join_next() => {
                let Some(joined) = joined else { continue };
                let (name, attempted) = joined.map_err(|e| UpError::host(format!("a step's task failed: {e}")))?;
                cancels.remove(&name);
                let entry = progress.get_mut(&name).expect("every step has its progress");
                entry.next_attempt = attempted.next_attempt;
                entry.failures = attempted.failures;
                local.insert(name.clone(), attempted.local);
                context.observer.update(&Update::StepEnded(attempted.summary.clone()));
                entry.summary = Some(attempted.summary);
            }
            () = stop.cancelled(), if ending.is_none() => {
                ending = Some("cancelled");
                cancels.values().for_each(|c| c.cancel());
            }
            () = tokio::time::sleep_until(deadline), if ending.is_none() => {
                ending = Some("timeout");
                cancels.values().for_each(|c| c.cancel());
            }
        }
    }

    // Whatever did not run: skipped, with the reason.
    let reason = match ending {
        Some("cancelled") => "the plan was cancelled".to_string(),
        Some(_) => format!("the plan timed out after {}", humantime::format_duration(plan.timeout)),
        None => "its dependencies never completed".to_string(),
    };
    for step in &plan.steps {
        if matches!(local[&step.name], Local::Waiting) {
            skip(&context, step, &reason, &mut local, &mut progress).await;
        }
    }
    let all_completed = local.values().all(|l| matches!(l, Local::Completed { .. }));
    let outcome = match ending {
        Some(e) => e,
        None if all_completed => "completed",
        None => "failed",
    };
    let exit_code = match outcome {
        "completed" => 0,
        "cancelled" => Outcome::Cancelled.exit_code(),
        "timeout" => Outcome::Timeout.exit_code(),
        _ => PLAN_FAILED,
    };
    let detail = json!({ "resumed": resumed, "exit_code": exit_code });
    let op = Op::EndPlan { plan_id: plan_id.clone(), outcome: outcome.into(), detail };
    log.submit_accepted(operation_by(&context.operator.token_id, op))
        .await
        .map_err(|e| UpError::host(format!("cannot record the plan's end: {e}")))?;
    let steps = plan
        .steps
        .iter()
        .map(|s| {
            progress[&s.name].summary.clone().unwrap_or_else(|| blank_summary(s, &prepared[&s.name].agent, "skipped"))
        })
        .collect();
    let summary = PlanSummary {
        plan_id,
        name: plan.name.clone(),
        outcome: outcome.into(),
        exit_code,
        resumed,
        wall_time_ms: started.elapsed().as_secs_f64() * 1e3,
        steps,
    };
    context.observer.update(&Update::PlanEnded(summary.clone()));
    Ok(summary)
}

fn check_plan_id(id: &str) -> Result<(), UpError> {
    if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(UpError::new(Outcome::InvalidInput, "a plan id is 1 to 128 letters, digits, `-` and `_`"));
    }
    Ok(())
}

/// What a step's task shares with the plan.
struct Context {
    host: Arc<Host>,
    runner: Arc<Runner>,
    plan_id: String,
    operator: Operator,
    observer: Arc<dyn Observer>,
    /// Each step's agent name.
    agents: BTreeMap<String, String>,
    placer: Option<Arc<dyn StepPlacer>>,
}

fn operation_by(token: &str, op: Op) -> Operation {
    crate::run::operation_by(token, op)
}

/// Reads a live plan's manifest back from the kernel's log and resolves it again.
fn load_plan(host: &Host, plan_id: &str) -> Result<Plan, UpError> {
    let state = crate::events::log::kernel_state(host.db())
        .map_err(|e| UpError::host(format!("cannot read the kernel's state: {e}")))?;
    let Some(live) = state.plans.get(plan_id) else {
        return Err(UpError::new(
            Outcome::InvalidInput,
            format!(
                "plan {plan_id} is not running: it ended, or it never started (see `toka-host events --kind plan`)"
            ),
        ));
    };
    let op = crate::events::log::operation_at(host.db(), live.op_seq)
        .map_err(|e| UpError::host(format!("cannot read the plan's start: {e}")))?;
    let Some(Operation { op: Op::StartPlan { manifest, base, digest, .. }, .. }) = op else {
        return Err(UpError::host(format!("operation {} is not the start of plan {plan_id}", live.op_seq)));
    };
    let plan = manifest::parse(&manifest, std::path::Path::new(&base), &live.name)
        .map_err(|e| UpError::host(format!("the recorded manifest of plan {plan_id} no longer resolves: {e}")))?;
    if plan.digest != digest {
        return Err(UpError::host(format!("the recorded manifest of plan {plan_id} does not match its digest")));
    }
    Ok(plan)
}

/// Brings a resumed plan's steps to where the kernel has them: completed steps keep their output, steps that were
/// running when the host stopped are recorded as interrupted (their runs too), failed steps keep their count.
async fn restore(
    host: &Host,
    plan: &Plan,
    plan_id: &str,
    operator: &Operator,
    prepared: &[Prepared],
    local: &mut BTreeMap<String, Local>,
    progress: &mut BTreeMap<String, Progress>,
) -> Result<(), UpError> {
    let state = crate::events::log::kernel_state(host.db())
        .map_err(|e| UpError::host(format!("cannot read the kernel's state: {e}")))?;
    let live = state.plans.get(plan_id).ok_or_else(|| UpError::host(format!("plan {plan_id} ended meanwhile")))?;
    let log = host.log();
    for step in &plan.steps {
        let agent = prepared.iter().find(|p| p.step.name == step.name).map_or("", |p| p.agent.as_str());
        let p = progress.get_mut(&step.name).expect("every step has its progress");
        let mut status = live.steps.get(&step.name).cloned().unwrap_or(StepStatus::Pending);
        if let StepStatus::Running { attempt, run_id, failures } = &status {
            if state.runs.contains_key(run_id) {
                let op = Op::FailRun {
                    run_id: run_id.clone(),
                    reason: INTERRUPTED.into(),
                    fuel: 0,
                    detail: json!({ "outcome": INTERRUPTED, "error": "the host stopped before the run ended" }),
                };
                log.submit_accepted(operation_by(&operator.token_id, op))
                    .await
                    .map_err(|e| UpError::host(format!("cannot record an interrupted run: {e}")))?;
            }
            let op = Op::EndStep {
                plan_id: plan_id.into(),
                step: step.name.clone(),
                attempt: *attempt,
                ok: false,
                outcome: INTERRUPTED.into(),
                output: None,
                detail: json!({ "error": "the host stopped before the step ended", "run_id": run_id }),
            };
            log.submit_accepted(operation_by(&operator.token_id, op))
                .await
                .map_err(|e| UpError::host(format!("cannot record an interrupted step: {e}")))?;
            status = StepStatus::Failed { attempt: *attempt, outcome: INTERRUPTED.into(), failures: *failures };
        }
        match status {
            StepStatus::Pending => {}
            StepStatus::Running { .. } => {}
            StepStatus::Completed { attempt, op_seq } => {
                let output = match crate::events::log::operation_at(host.db(), op_seq) {
                    Ok(Some(Operation { op: Op::EndStep { output, .. }, .. })) => output,
                    _ => None,
                };
                let mut summary = blank_summary(step, agent, "completed");
                summary.attempts = attempt;
                summary.outcome = Some("success".into());
                summary.output = output.as_deref().and_then(|o| serde_json::from_str(o).ok());
                summary.resumed = true;
                p.summary = Some(summary);
                p.next_attempt = attempt + 1;
                local.insert(step.name.clone(), Local::Completed { output });
            }
            StepStatus::Failed { attempt, outcome, failures } => {
                p.next_attempt = attempt + 1;
                p.failures = failures;
                if failures > step.retries || !retryable(&outcome) {
                    let mut summary = blank_summary(step, agent, "failed");
                    summary.attempts = attempt;
                    summary.outcome = Some(outcome);
                    summary.resumed = true;
                    p.summary = Some(summary);
                    local.insert(step.name.clone(), Local::Failed);
                }
            }
            StepStatus::Skipped { reason } => {
                let mut summary = blank_summary(step, agent, "skipped");
                summary.reason = Some(reason);
                summary.resumed = true;
                p.summary = Some(summary);
                local.insert(step.name.clone(), Local::Skipped);
            }
        }
    }
    Ok(())
}

fn blank_summary(step: &Step, agent: &str, status: &str) -> StepSummary {
    StepSummary {
        name: step.name.clone(),
        agent: agent.into(),
        status: status.into(),
        priority: step.priority,
        attempts: 0,
        run_id: None,
        outcome: None,
        fuel: 0,
        wall_time_ms: 0.0,
        error: None,
        reason: None,
        output: None,
        resumed: false,
    }
}

/// Skips every waiting step that waits for a failed or skipped required dependency, until none is left.
async fn skip_dependents(
    context: &Context,
    plan: &Plan,
    local: &mut BTreeMap<String, Local>,
    progress: &mut BTreeMap<String, Progress>,
) {
    // A failed critical step fails the plan: nothing else runs.
    let failed_critical = plan
        .steps
        .iter()
        .find(|s| s.priority == Priority::Critical && matches!(local[&s.name], Local::Failed | Local::Skipped));
    loop {
        let mut next = None;
        for step in &plan.steps {
            if !matches!(local[&step.name], Local::Waiting) {
                continue;
            }
            let failed = step.requires.iter().find(|d| matches!(local[*d], Local::Failed | Local::Skipped));
            if let Some(dep) = failed {
                let how = if matches!(local[dep], Local::Failed) { "failed" } else { "was skipped" };
                next = Some((step, format!("required dependency `{dep}` {how}")));
                break;
            }
            if let Some(critical) = failed_critical {
                next = Some((step, format!("critical agent `{}` did not complete", critical.name)));
                break;
            }
        }
        let Some((step, reason)) = next else { return };
        skip(context, step, &reason, local, progress).await;
    }
}

async fn skip(
    context: &Context,
    step: &Step,
    reason: &str,
    local: &mut BTreeMap<String, Local>,
    progress: &mut BTreeMap<String, Progress>,
) {
    local.insert(step.name.clone(), Local::Skipped);
    let op = Op::SkipStep { plan_id: context.plan_id.clone(), step: step.name.clone(), reason: reason.into() };
    if let Err(e) = context.host.log().submit_accepted(operation_by(&context.operator.token_id, op)).await {
        tracing::warn!("cannot record that step {} was skipped: {e}", step.name);
    }
    let p = progress.get_mut(&step.name).expect("every step has its progress");
    let agent = context.agents.get(&step.name).map_or("", String::as_str);
    let mut summary = p.summary.clone().unwrap_or_else(|| blank_summary(step, agent, "skipped"));
    summary.status = "skipped".into();
    summary.reason = Some(reason.into());
    context.observer.update(&Update::StepEnded(summary.clone()));
    p.summary = Some(summary);
}

/// The input of `step`, with its pipes filled in from the outputs of the steps it names.
fn build_input(step: &Step, local: &BTreeMap<String, Local>) -> Result<Option<String>, String> {
    let value = |pipe: &manifest::Pipe| -> Result<Value, String> {
        let Some(Local::Completed { output }) = local.get(&pipe.agent) else {
            return Err(format!("input_from: `{}` has not completed", pipe.agent));
        };
        let Some(text) = output else {
            return Err(format!(
                "input_from: the output of `{}` was too large to record ({} bytes at most), so it cannot be piped \
                 after a resume",
                pipe.agent,
                crate::bounds::MAX_STEP_OUTPUT
            ));
        };
        let parsed: Value = serde_json::from_str(text)
            .map_err(|e| format!("input_from: the output of `{}` is not JSON: {e}", pipe.agent))?;
        parsed.pointer(&pipe.pointer).cloned().ok_or_else(|| {
            format!(
                "input_from: the output of `{}` has no field `{}`",
                pipe.agent,
                pipe.pointer.trim_start_matches('/')
            )
        })
    };
    let input = match &step.pipes {
        Pipes::None => step.input.clone(),
        Pipes::Whole(pipe) => Some(value(pipe)?),
        Pipes::Fields(fields) => {
            let mut base = match &step.input {
                Some(Value::Object(map)) => map.clone(),
                _ => serde_json::Map::new(),
            };
            for (key, pipe) in fields {
                base.insert(key.clone(), value(pipe)?);
            }
            Some(Value::Object(base))
        }
    };
    if let Some(v) = &input {
        manifest::check_value(v).map_err(|e| format!("input: {e}"))?;
    }
    Ok(input.map(|v| v.to_string()))
}

/// Whether an attempt that ended with `outcome` may be retried: failures of the run, not refusals (the same grant,
/// input or component would be refused again) and not a cancellation.
fn retryable(outcome: &str) -> bool {
    !matches!(
        outcome,
        "grant-refused"
            | "invalid-wasm"
            | "not-a-component"
            | "wrong-world"
            | "file-not-found"
            | "invalid-input"
            | "token-refused"
            | "cancelled"
    )
}

/// What a step's task came to.
struct Attempted {
    local: Local,
    summary: StepSummary,
    next_attempt: u32,
    failures: u32,
}

fn outcome_name(outcome: Outcome) -> String {
    serde_json::to_value(outcome).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

/// Runs a step's attempts until one completes, a refusal or the retries end it, or it is cancelled.
async fn attempt_all(
    context: &Context,
    prepared: &Prepared,
    input: Result<Option<String>, String>,
    progress: Progress,
    cancel: &Arc<Cancel>,
) -> Attempted {
    let step = &prepared.step;
    let log = context.host.log();
    let token_id = &context.operator.token_id;
    let mut attempt = progress.next_attempt;
    let mut failures = progress.failures;
    let mut summary = blank_summary(step, &prepared.agent, "failed");
    loop {
        let run_id = crate::run::fresh_run_id();
        summary.attempts = attempt;
        summary.run_id = Some(run_id.clone());
        let start = Op::StartStep {
            plan_id: context.plan_id.clone(),
            step: step.name.clone(),
            attempt,
            run_id: run_id.clone(),
            agent: prepared.agent.clone(),
        };
        if let Err(e) = log.submit_accepted(operation_by(token_id, start)).await {
            // Not started (a revoked operator token, a storage fault): the step cannot run in this plan.
            let why = format!("could not start: {e}");
            let op = Op::SkipStep { plan_id: context.plan_id.clone(), step: step.name.clone(), reason: why.clone() };
            drop(log.submit_accepted(operation_by(token_id, op)).await);
            summary.status = "skipped".into();
            summary.reason = Some(why);
            return Attempted { local: Local::Skipped, summary, next_attempt: attempt, failures };
        }
        context.observer.update(&Update::StepStarted { step: step.name.clone(), attempt, run_id: run_id.clone() });
        let (outcome, ok, output, error) = match run_once(context, prepared, &input, &run_id, cancel).await {
            Ok(report) => {
                summary.fuel += report.fuel_consumed;
                summary.wall_time_ms += report.wall_time_ms;
                let ok = report.outcome == Outcome::Success;
                (outcome_name(report.outcome), ok, report.result.filter(|_| ok), report.error)
            }
            Err(e) => {
                // Refused before the guest started; recorded as a refusal too.
                if let Err(record) = context.runner.record_refusal(&prepared.component, &e).await {
                    tracing::warn!("cannot record the refusal of step {}: {record}", step.name);
                }
                (outcome_name(e.outcome()), false, None, Some(e.to_string()))
            }
        };
        let recorded = output.as_ref().filter(|o| o.len() <= crate::bounds::MAX_STEP_OUTPUT).cloned();
        let mut detail = json!({ "run_id": run_id, "fuel": summary.fuel, "error": error });
        if output.is_some() && recorded.is_none() {
            detail["output_not_recorded"] = json!(true);
        }
        let end = Op::EndStep {
            plan_id: context.plan_id.clone(),
            step: step.name.clone(),
            attempt,
            ok,
            outcome: outcome.clone(),
            output: recorded,
            detail,
        };
        if let Err(e) = log.submit_accepted(operation_by(token_id, end)).await {
            tracing::warn!("cannot record the end of step {}: {e}", step.name);
        }
        summary.outcome = Some(outcome.clone());
        summary.error = error.clone();
        attempt += 1;
        if ok {
            summary.status = "completed".into();
            summary.output = output.as_deref().and_then(|o| serde_json::from_str(o).ok());
            return Attempted { local: Local::Completed { output }, summary, next_attempt: attempt, failures };
        }
        failures += 1;
        if cancel.is_cancelled() {
            summary.status = "cancelled".into();
            return Attempted { local: Local::Failed, summary, next_attempt: attempt, failures };
        }
        if failures > step.retries || !retryable(&outcome) {
            summary.status = "failed".into();
            return Attempted { local: Local::Failed, summary, next_attempt: attempt, failures };
        }
        // Doubling backoff from the first, capped; a cancel cuts the wait short.
        let shift = (failures - 1).min(16);
        let wait = step.backoff.saturating_mul(1 << shift).min(manifest::MAX_BACKOFF);
        context.observer.update(&Update::StepRetrying {
            step: step.name.clone(),
            attempt,
            after: wait,
            error: error.unwrap_or_default(),
        });
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = cancel.cancelled() => {
                summary.status = "cancelled".into();
                return Attempted { local: Local::Failed, summary, next_attempt: attempt, failures };
            }
        }
    }
}

/// One attempt: prepared through the host with the step's narrowed token and its input, then run.
async fn run_once(
    context: &Context,
    prepared: &Prepared,
    input: &Result<Option<String>, String>,
    run_id: &str,
    cancel: &Arc<Cancel>,
) -> Result<crate::report::RunReport, RunError> {
    let input = input.clone().map_err(RunError::InvalidInput)?;
    let spec = spec(prepared, input, Some(run_id.to_string()));
    if let Some(placer) = &context.placer {
        let step = PlacedStep { spec: spec.clone(), labels: prepared.step.labels.clone(), cancel: cancel.clone() };
        if let Some(ended) = placer.run(step).await {
            return ended;
        }
    }
    let ready = context.host.prepare(&context.runner, &spec)?;
    let control =
        RunControl { run_id: Some(run_id.to_string()), cancel: Some(cancel.clone()), ..RunControl::default() };
    let output = OutputMode { echo: false, capture: true };
    Ok(context.runner.run_with(&ready.program, &ready.grants, &ready.limits, &ready.invocation, output, control).await)
}

/// The run of a step; `run_id`: the id its start was recorded under (none for the check before the plan starts).
fn spec(prepared: &Prepared, input: Option<String>, run_id: Option<String>) -> RunSpec {
    let step = &prepared.step;
    RunSpec {
        source: Source::Path(prepared.component.clone()),
        task_id: None,
        input,
        args: Vec::new(),
        grants: step.grants.clone(),
        tools: step.tools.clone(),
        models: step.models.clone(),
        spawn: step.spawn.clone(),
        limits: prepared.limits.clone(),
        token: Some(prepared.token.clone()),
        run_id,
    }
}

/// Prepares every step and authorizes it with the operator's token narrowed to it; nothing is recorded as started
/// until all of them pass. The first refusal names the agent and the grant.
async fn authorize(
    host: &Arc<Host>,
    runner: &Arc<Runner>,
    plan: &Plan,
    token: Option<&str>,
) -> Result<(Operator, Vec<Prepared>), UpError> {
    let ceilings = match token {
        Some(text) => {
            Some(host.token_limits(text).map_err(|e| UpError::new(e.outcome(), format!("operator token: {e}")))?)
        }
        None => None,
    };
    let defaults = crate::run::Limits::default();
    // First pass: what each step needs, in the token's terms.
    let mut needs = Vec::new();
    for step in &plan.steps {
        let component = plan.component_path(step);
        let named = |e: RunError| UpError::new(e.outcome(), format!("agent `{}`: {e}", step.name));
        let program = match runner.load(&component) {
            Ok(p) => p,
            Err(e) => {
                drop(runner.record_refusal(&component, &e).await);
                return Err(named(e));
            }
        };
        let authorized = host.authorize_grants(&step.grants).map_err(named)?;
        let asked = &step.limits;
        let limits = LimitRequest {
            fuel: Some(asked.fuel.or(ceilings.map(|c| c.fuel)).unwrap_or(defaults.fuel)),
            timeout: Some(
                asked.timeout.or(ceilings.map(|c| Duration::from_millis(c.timeout_ms))).unwrap_or(defaults.timeout),
            ),
            max_memory: Some(asked.max_memory.or(ceilings.map(|c| c.memory)).unwrap_or(defaults.max_memory)),
            max_output: asked.max_output,
            max_records: asked.max_records,
            llm_tokens: asked.llm_tokens,
            max_spawn_depth: asked.max_spawn_depth,
            max_spawns: asked.max_spawns,
        };
        let run_limits = crate::run::Limits {
            fuel: limits.fuel.unwrap_or(defaults.fuel),
            timeout: limits.timeout.unwrap_or(defaults.timeout),
            max_memory: limits.max_memory.unwrap_or(defaults.max_memory),
            ..defaults.clone()
        };
        let mut request = crate::commands::run::token_request(
            program.name(),
            &step.grants.net,
            &authorized,
            &run_limits,
            Some(program.loaded.sha256.clone()),
        );
        for tool in &step.tools {
            request.grants.push(Grant { kind: "tool".into(), value: tool.clone(), mode: String::new() });
        }
        for model in &step.models {
            let grant = Grant::parse(&format!("llm:{model}"))
                .map_err(|e| UpError::new(Outcome::InvalidInput, format!("agent `{}`: {e}", step.name)))?;
            request.grants.push(grant);
        }
        for child in &step.spawn {
            request.grants.push(Grant { kind: "spawn".into(), value: child.clone(), mode: String::new() });
        }
        needs.push((step, component, program, limits, request));
    }
    let now = std::time::SystemTime::now();
    let text = match token {
        Some(t) => t.to_string(),
        None => {
            // The local operator's authority for this plan: exactly the union of what its agents ask for.
            let mut grants: Vec<Grant> = Vec::new();
            let mut max = TokenLimits::default();
            for (_, _, _, _, request) in &needs {
                for g in &request.grants {
                    if !grants.contains(g) {
                        grants.push(g.clone());
                    }
                }
                max.fuel = max.fuel.max(request.limits.fuel);
                max.memory = max.memory.max(request.limits.memory);
                max.timeout_ms = max.timeout_ms.max(request.limits.timeout_ms);
            }
            let mint = MintRequest {
                agent: "*".into(),
                grants,
                limits: max,
                ttl: Some(plan.timeout.saturating_add(Duration::from_secs(600))),
                ..MintRequest::default()
            };
            host.mint_local(&mint)
                .map_err(|e| UpError::new(e.outcome(), format!("cannot mint the plan's token: {e}")))?
        }
    };
    let verified_ids = crate::token::parse_unverified(&text)
        .map_err(|e| UpError::new(Outcome::TokenRefused, format!("operator token: {e}")))?
        .revocation_identifiers()
        .iter()
        .map(hex::encode)
        .collect::<Vec<_>>();
    let operator = Operator {
        text: text.clone(),
        token_id: verified_ids.last().cloned().unwrap_or_default(),
        chain: verified_ids,
    };
    let parsed = crate::token::parse_unverified(&operator.text)
        .map_err(|e| UpError::new(Outcome::TokenRefused, format!("operator token: {e}")))?;
    let mut prepared = Vec::new();
    for (step, component, program, limits, request) in needs {
        let narrowing =
            Attenuation { component: Some(program.loaded.sha256.clone()), ..Attenuation::exactly(&request) };
        let narrowed = crate::token::attenuate(&parsed, &narrowing, now)
            .and_then(|t| t.to_base64().map_err(|e| crate::token::TokenError::Invalid(e.to_string())))
            .map_err(|e| {
                UpError::new(Outcome::TokenRefused, format!("agent `{}`: cannot narrow the token: {e}", step.name))
            })?;
        let p = Prepared { step: step.clone(), agent: program.name().to_string(), token: narrowed, limits, component };
        // The whole check a run makes, with a stand-in input for a piped one (its real input is checked when it runs).
        let stand_in = match &step.pipes {
            Pipes::None => step.input.as_ref().map(Value::to_string),
            _ => Some("{}".to_string()),
        };
        if let Err(e) = host.prepare(runner, &spec(&p, stand_in, None)) {
            drop(runner.record_refusal(&p.component, &e).await);
            return Err(refusal(step, &e));
        }
        prepared.push(p);
    }
    Ok((operator, prepared))
}

/// A step's refusal before the plan starts, naming the agent (and the grant).
fn refusal(step: &Step, e: &RunError) -> UpError {
    match e {
        RunError::GrantRefused { grant, reason } if grant == "limits" => UpError::new(
            Outcome::GrantRefused,
            format!("agent `{}` asks for limits the operator's token does not allow: {reason}", step.name),
        ),
        RunError::GrantRefused { grant, reason } => UpError::new(
            Outcome::GrantRefused,
            format!("agent `{}` asks for {grant}, which the operator's token does not allow: {reason}", step.name),
        ),
        e => UpError::new(e.outcome(), format!("agent `{}`: {e}", step.name)),
    }
}
