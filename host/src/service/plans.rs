//! Plans through the API: submit a manifest (`POST /v1/plans`), read a plan's state and each step's
//! (`GET /v1/plans`, `GET /v1/plans/{plan_id}`), cancel one (`DELETE /v1/plans/{plan_id}`).
//!
//! A submitted plan goes the way `toka-host up` takes it, on the service's own [`crate::runtime::Host`]: the same
//! strict parser, the bearer token as the operator's token attenuated to each agent, and every agent authorized
//! before anything starts, so a refusal (a bad manifest naming its line, a grant wider than the token naming agent
//! and grant) is the answer to the request and nothing is recorded as started. Components come only from the
//! server's component directories, as for runs by path.
//!
//! A plan's state is read from the kernel's record (its `plan.*` and `step.*` events, and the manifest its start
//! operation holds), never from this process's memory, so a plan started by `toka-host up` on the same home reads
//! the same. This module never runs a step itself and never mints a token: the executor runs the steps with the
//! bearer's authority only.

use super::Service;
use super::api::{PlanStepView, PlanSummaryView, PlanView, SubmitPlan};
use super::auth;
use super::error::ApiError;
use crate::error::Outcome;
use crate::events::{self, EventRecord, Filter};
use crate::kernel::kind;
use crate::kernel::{Op, Operation};
use crate::orchestrate::executor::{self, Observer, Options, PlanSource, UpError, Update};
use crate::orchestrate::manifest::{self, MAX_MANIFEST, Pipes};
use axum::Json;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;
use utoipa::IntoParams;

/// Plans running at once on one server, beyond which submissions get 429.
pub const MAX_LIVE_PLANS: usize = 64;
/// Largest `POST /v1/plans` body: the manifest's limit with room for JSON escapes (at most 6 bytes a byte).
pub const MAX_PLAN_BODY: usize = 6 * MAX_MANIFEST + 4096;

/// A plan this server is running.
#[derive(Debug)]
struct Live {
    stop: CancellationToken,
    /// Its steps' agents, once every one was authorized.
    agents: Arc<Mutex<Vec<String>>>,
}

/// The plans this server is running.
#[derive(Debug, Default)]
pub struct PlanTable {
    live: Mutex<BTreeMap<String, Live>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl PlanTable {
    /// Plans still running.
    pub fn live(&self) -> usize {
        lock(&self.live).len()
    }

    fn is_live(&self, plan_id: &str) -> bool {
        lock(&self.live).contains_key(plan_id)
    }

    /// Cancels every running plan (the service is shutting down): running steps are cancelled, the rest skipped, and
    /// each plan records its end as `cancelled`.
    pub fn cancel_all(&self) -> usize {
        let live = lock(&self.live);
        live.values().for_each(|p| p.stop.cancel());
        live.len()
    }
}

/// Tells the handler when the plan has been recorded as started (every agent authorized), and keeps its agents.
struct Started {
    tell: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    agents: Arc<Mutex<Vec<String>>>,
}

impl Observer for Started {
    fn update(&self, update: &Update) {
        match update {
            Update::PlanStarted { steps, .. } => {
                *lock(&self.agents) = steps.iter().map(|(_, agent)| agent.clone()).collect();
                if let Some(tell) = lock(&self.tell).take() {
                    // The handler may have gone (the client left): nothing to tell then.
                    let _ = tell.send(());
                }
            }
            Update::StepEnded(s) => tracing::debug!(step = %s.name, status = %s.status, "plan step ended"),
            _ => {}
        }
    }
}

/// A refusal of the executor, as an answer.
fn refused(e: &UpError) -> ApiError {
    let (status, code) = match e.outcome {
        Outcome::InvalidInput if e.message.starts_with("invalid manifest") => {
            (StatusCode::BAD_REQUEST, "invalid-manifest")
        }
        Outcome::InvalidInput => (StatusCode::BAD_REQUEST, "invalid-input"),
        Outcome::GrantRefused => (StatusCode::FORBIDDEN, "grant-refused"),
        Outcome::TokenRefused => (StatusCode::FORBIDDEN, "token-refused"),
        Outcome::FileNotFound => (StatusCode::NOT_FOUND, "file-not-found"),
        Outcome::InvalidWasm | Outcome::NotAComponent | Outcome::WrongWorld => {
            (StatusCode::BAD_REQUEST, "invalid-wasm")
        }
        Outcome::Cancelled => (StatusCode::SERVICE_UNAVAILABLE, "shutting-down"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "host-error"),
    };
    ApiError::new(status, code, &e.message)
}

/// The server's component directories, resolved; the first is the base of a manifest's relative paths.
fn component_roots(service: &Service) -> Result<Vec<PathBuf>, ApiError> {
    if service.config.component_dirs.is_empty() {
        return Err(ApiError::forbidden("this server runs no component by path (serve --component-dir DIR)"));
    }
    let roots: Vec<PathBuf> = service.config.component_dirs.iter().filter_map(|d| d.canonicalize().ok()).collect();
    if roots.is_empty() {
        return Err(ApiError::internal("none of the server's component directories exists"));
    }
    Ok(roots)
}

/// Submit a plan: 202 once every agent has been authorized and the plan recorded as started; it runs on.
#[utoipa::path(post, path = "/v1/plans", request_body = SubmitPlan,
    responses((status = 202, description = "Started; poll GET /v1/plans/{plan_id} or stream its events", body = PlanView),
              (status = 400, description = "An invalid manifest (naming the line) or request", body = super::api::ErrorBody),
              (status = 401, body = super::api::ErrorBody),
              (status = 403, description = "A grant or limit wider than the bearer token (naming agent and grant)",
                  body = super::api::ErrorBody),
              (status = 404, description = "A component not in the server's component directories",
                  body = super::api::ErrorBody),
              (status = 413, body = super::api::ErrorBody), (status = 429, body = super::api::ErrorBody),
              (status = 503, body = super::api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn submit(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    request: Request,
) -> Result<(StatusCode, Json<PlanView>), ApiError> {
    let bearer = auth::bearer(&service.host, &headers).inspect_err(|_| service.metrics.token_refused())?;
    if service.shutting_down() {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting-down", "the server is shutting down"));
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            format!("a plan's manifest is at most {MAX_MANIFEST} bytes"),
        )
    };
    // Read with our own bound (not the server's general body limit, which is sized for uploads).
    let body = axum::body::to_bytes(request.into_body(), MAX_PLAN_BODY).await.map_err(|_| too_large())?;
    let submitted: SubmitPlan =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))?;
    if submitted.manifest.len() > MAX_MANIFEST {
        return Err(too_large());
    }
    let roots = component_roots(&service)?;
    let base = roots[0].clone();
    // Parsed here too (the executor parses it again, the same way) to hold every component to the server's
    // component directories before the executor loads any.
    let plan = manifest::parse(&submitted.manifest, &base, "plan")
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid-manifest", format!("invalid manifest: {e}")))?;
    for step in &plan.steps {
        let path = plan.component_path(step);
        let Ok(real) = path.canonicalize() else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "file-not-found",
                format!("agent `{}`: no component {} in the server's component directories", step.name, step.component),
            ));
        };
        if !roots.iter().any(|root| real.starts_with(root)) {
            return Err(ApiError::forbidden(format!(
                "agent `{}`: component {} is outside the server's component directories",
                step.name, step.component
            )));
        }
    }
    let cap = service.config.max_concurrent.max(1);
    let jobs = submitted.jobs.map_or_else(
        || std::thread::available_parallelism().map_or(2, |n| n.get()).min(cap),
        |j| (j as usize).clamp(1, cap),
    );
    let plan_id = crate::run::fresh_plan_id();
    let stop = CancellationToken::new();
    let agents = Arc::new(Mutex::new(Vec::new()));
    {
        let mut live = lock(&service.plans.live);
        if live.len() >= MAX_LIVE_PLANS {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "queue-full",
                format!("{MAX_LIVE_PLANS} plans are running; retry later"),
            ));
        }
        live.insert(plan_id.clone(), Live { stop: stop.clone(), agents: agents.clone() });
    }
    let (tell, started) = tokio::sync::oneshot::channel();
    let observer = Arc::new(Started { tell: Mutex::new(Some(tell)), agents });
    let source = PlanSource::Manifest { text: submitted.manifest, base, fallback_name: "plan".into() };
    // The service's runner: a plan's steps reuse the programs it has loaded (and leave theirs for the next plan).
    let options = Options {
        jobs,
        token: Some(bearer.text.clone()),
        plan_id: Some(plan_id.clone()),
        runner: Some(service.runner.clone()),
        // On a cluster, each step's attempt runs where the leader places it.
        placer: service.config.cluster.clone().map(|cluster| {
            Arc::new(super::placed::Steps { service: service.clone(), cluster }) as Arc<dyn executor::StepPlacer>
        }),
    };
    let task = tokio::spawn({
        let (service, plan_id) = (service.clone(), plan_id.clone());
        async move {
            let result = executor::up(service.host.clone(), source, options, observer, stop).await;
            lock(&service.plans.live).remove(&plan_id);
            match &result {
                Ok(summary) => tracing::info!(plan_id = %plan_id, outcome = %summary.outcome, "plan ended"),
                Err(e) => tracing::info!(plan_id = %plan_id, error = %e, "plan refused"),
            }
            result
        }
    });
    if started.await.is_err() {
        // The executor ended without starting the plan: a refusal (or a fault) before anything ran.
        lock(&service.plans.live).remove(&plan_id);
        return match task.await {
            Ok(Err(e)) => Err(refused(&e)),
            Ok(Ok(_)) => Err(ApiError::internal("the plan ended without starting")),
            Err(e) => Err(ApiError::internal(format!("the plan's task failed: {e}"))),
        };
    }
    let db = service.host.db().clone();
    let id = plan_id.clone();
    let view = tokio::task::spawn_blocking(move || read_plan(&db, &id, true))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::internal("the plan's start is not in the log"))?;
    Ok((StatusCode::ACCEPTED, Json(view)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PlanListQuery {
    /// At most this many (default 50, at most 1000), newest first.
    pub limit: Option<usize>,
}

/// List plans, newest first. Plans span agents: only a token for every agent (`*`) with `api:read` sees them.
#[utoipa::path(get, path = "/v1/plans", params(PlanListQuery), responses((status = 200, body = Vec<PlanSummaryView>)),
    security(("bearer" = [])))]
pub async fn list(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    Query(q): Query<PlanListQuery>,
) -> Result<Json<Vec<PlanSummaryView>>, ApiError> {
    let bearer = auth::reader(&service.host, &headers)?;
    if bearer.scope().is_some() {
        return Ok(Json(Vec::new()));
    }
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let db = service.host.db().clone();
    let plans = tokio::task::spawn_blocking(move || -> Result<Vec<PlanSummaryView>, redb::Error> {
        let filter = Filter { kind: Some("plan".into()), ..Filter::default() };
        let mut by_id: BTreeMap<String, (u64, PlanSummaryView)> = BTreeMap::new();
        for r in events::read(&db, &filter)? {
            if r.kind == kind::PLAN_STARTED {
                let view = PlanSummaryView {
                    plan_id: r.run_id.clone(),
                    name: r.payload["name"].as_str().unwrap_or_default().to_string(),
                    status: "running".into(),
                    started_ms: r.time_ms,
                    ended_ms: None,
                    steps: r.payload["steps"].as_array().map_or(0, Vec::len),
                };
                by_id.insert(r.run_id.clone(), (r.seq, view));
            } else if let Some((_, view)) = by_id.get_mut(&r.run_id) {
                view.status = ended_status(&r.kind).to_string();
                view.ended_ms = Some(r.time_ms);
            }
        }
        let mut plans: Vec<(u64, PlanSummaryView)> = by_id.into_values().collect();
        plans.sort_by_key(|p| std::cmp::Reverse(p.0));
        Ok(plans.into_iter().take(limit).map(|(_, v)| v).collect())
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    Ok(Json(plans))
}

/// A plan's state and each step's (with the graph of its dependencies).
#[utoipa::path(get, path = "/v1/plans/{plan_id}", params(("plan_id" = String, Path)),
    responses((status = 200, body = PlanView), (status = 404, body = super::api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_plan(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    Path(plan_id): Path<String>,
) -> Result<Json<PlanView>, ApiError> {
    let bearer = auth::reader(&service.host, &headers)?;
    let view = view_of(&service, &bearer, &plan_id).await?;
    Ok(Json(view))
}

/// A plan the bearer may see, or 404.
async fn view_of(service: &Arc<Service>, bearer: &auth::Bearer, plan_id: &str) -> Result<PlanView, ApiError> {
    let missing = || ApiError::not_found(format!("no plan {plan_id}"));
    if bearer.scope().is_some() || plan_id.is_empty() || plan_id.len() > crate::bounds::MAX_ID {
        return Err(missing());
    }
    let db = service.host.db().clone();
    let (id, here) = (plan_id.to_string(), service.plans.is_live(plan_id));
    tokio::task::spawn_blocking(move || read_plan(&db, &id, here))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?
        .ok_or_else(missing)
}

/// Cancel a plan this server runs: its running steps are cancelled, the rest skipped, and the plan ends
/// `cancelled`, all recorded. Who may run every agent of the plan may cancel it.
#[utoipa::path(delete, path = "/v1/plans/{plan_id}", params(("plan_id" = String, Path)),
    responses((status = 202, body = PlanView), (status = 404, body = super::api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn cancel(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    Path(plan_id): Path<String>,
) -> Result<(StatusCode, Json<PlanView>), ApiError> {
    let bearer = auth::bearer(&service.host, &headers)?;
    let missing = || ApiError::not_found(format!("no live plan {plan_id} on this server"));
    let (stop, agents) = {
        let live = lock(&service.plans.live);
        let plan = live.get(&plan_id).ok_or_else(missing)?;
        (plan.stop.clone(), lock(&plan.agents).clone())
    };
    let now = std::time::SystemTime::now();
    for agent in &agents {
        let request = crate::token::RunRequest {
            agent: agent.clone(),
            grants: Vec::new(),
            limits: crate::token::TokenLimits::default(),
            component: None,
            plugin: None,
        };
        if crate::token::authorize(&bearer.verified, &request, now).is_err() || !bearer.sees(agent) {
            return Err(missing());
        }
    }
    if agents.is_empty() {
        // Not yet authorized (the submission is still being checked): nothing of it runs yet.
        return Err(missing());
    }
    stop.cancel();
    let db = service.host.db().clone();
    let id = plan_id.clone();
    let view = tokio::task::spawn_blocking(move || read_plan(&db, &id, true))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?
        .ok_or_else(missing)?;
    Ok((StatusCode::ACCEPTED, Json(view)))
}

/// `plan.completed` -> `completed` ...
fn ended_status(kind: &str) -> &str {
    kind.strip_prefix(kind::PLAN_ENDED_PREFIX).unwrap_or(kind)
}

/// The graph of a recorded plan: for each step, what it waits for (`depends_on`, `input_from`, `after`).
type Graph = BTreeMap<String, (Vec<String>, Vec<String>, Vec<String>)>;

/// Reads the manifest a plan's start operation holds and resolves its graph (nothing of the filesystem is touched).
fn graph(db: &crate::db::Db, started: &EventRecord) -> Graph {
    let Some(op_seq) = started.payload["op_seq"].as_u64() else { return Graph::new() };
    let Ok(Some(Operation { op: Op::StartPlan { manifest: text, base, plan_id, .. }, .. })) =
        events::log::operation_at(db, op_seq)
    else {
        return Graph::new();
    };
    if plan_id != started.run_id {
        return Graph::new();
    }
    let Ok(plan) = manifest::parse(&text, std::path::Path::new(&base), "plan") else { return Graph::new() };
    plan.steps
        .iter()
        .map(|s| {
            let mut piped: Vec<String> = match &s.pipes {
                Pipes::None => Vec::new(),
                Pipes::Whole(p) => vec![p.agent.clone()],
                Pipes::Fields(fields) => fields.values().map(|p| p.agent.clone()).collect(),
            };
            piped.sort();
            piped.dedup();
            let depends: Vec<String> = s.requires.iter().filter(|d| !piped.contains(d)).cloned().collect();
            (s.name.clone(), (depends, piped, s.after.clone()))
        })
        .collect()
}

/// The output a step's end operation recorded, if it is that plan's and parses.
fn recorded_output(db: &crate::db::Db, plan_id: &str, op_seq: Option<u64>) -> Option<serde_json::Value> {
    match events::log::operation_at(db, op_seq?) {
        Ok(Some(Operation { op: Op::EndStep { plan_id: of, output: Some(text), .. }, .. })) if of == plan_id => {
            serde_json::from_str(&text).ok()
        }
        _ => None,
    }
}

/// A plan's view from the log: its start, its steps' events after it, its end. `None`: no such plan.
pub fn read_plan(db: &crate::db::Db, plan_id: &str, live_here: bool) -> Result<Option<PlanView>, redb::Error> {
    let filter = Filter { run_id: Some(plan_id.into()), kind: Some("plan".into()), ..Filter::default() };
    let records = events::read(db, &filter)?;
    let Some(started) = records.iter().find(|r| r.kind == kind::PLAN_STARTED) else { return Ok(None) };
    let ended = records.iter().find(|r| r.kind != kind::PLAN_STARTED && r.seq > started.seq);
    let graph = graph(db, started);
    let names: Vec<String> = started.payload["steps"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
        .unwrap_or_default();
    let mut steps: BTreeMap<String, (PlanStepView, u64)> = BTreeMap::new();
    let mut levels: BTreeMap<String, u32> = BTreeMap::new();
    // Steps are recorded in a dependency order, so each one's level follows from those before it.
    for name in &names {
        let (depends_on, input_from, after) = graph.get(name).cloned().unwrap_or_default();
        let level =
            depends_on.iter().chain(&input_from).chain(&after).filter_map(|d| levels.get(d)).max().map_or(0, |l| l + 1);
        levels.insert(name.clone(), level);
        let view = PlanStepView {
            name: name.clone(),
            agent: None,
            status: "pending".into(),
            reason: None,
            run_id: None,
            attempt: 0,
            outcome: None,
            fuel: None,
            time_ms: None,
            depends_on,
            input_from,
            after,
            output: None,
            level,
        };
        steps.insert(name.clone(), (view, 0));
    }
    let step_filter = Filter { kind: Some("step".into()), after: Some(started.seq), ..Filter::default() };
    for r in events::read(db, &step_filter)? {
        if ended.is_some_and(|e| r.seq > e.seq) {
            break;
        }
        if r.payload["plan_id"].as_str() != Some(plan_id) {
            continue;
        }
        let Some((step, started_ms)) = r.payload["step"].as_str().and_then(|s| steps.get_mut(s)) else { continue };
        let p = &r.payload;
        match r.kind.as_str() {
            kind::STEP_STARTED => {
                step.status = "running".into();
                step.agent = Some(r.agent.clone());
                step.run_id = Some(r.run_id.clone());
                step.attempt = p["attempt"].as_u64().map_or(0, |a| a as u32);
                (step.reason, step.outcome, step.fuel, step.time_ms) = (None, None, None, None);
                *started_ms = r.time_ms;
            }
            kind::STEP_COMPLETED | kind::STEP_FAILED => {
                let ok = r.kind == kind::STEP_COMPLETED;
                step.status = if ok { "succeeded" } else { "failed" }.into();
                step.outcome = p["outcome"].as_str().map(String::from);
                step.fuel = p["fuel"].as_u64();
                step.reason = if ok { None } else { p["error"].as_str().map(String::from).or(step.outcome.clone()) };
                step.time_ms = Some(r.time_ms.saturating_sub(*started_ms));
                step.output = if ok { recorded_output(db, plan_id, p["op_seq"].as_u64()) } else { None };
            }
            kind::STEP_SKIPPED => {
                step.status = "skipped".into();
                step.reason = p["reason"].as_str().map(String::from);
            }
            _ => {}
        }
    }
    let now = events::now_ms();
    let steps = names
        .iter()
        .filter_map(|n| steps.remove(n))
        .map(|(mut s, started_ms)| {
            if s.status == "running" {
                s.time_ms = Some(now.saturating_sub(started_ms));
            }
            s
        })
        .collect();
    Ok(Some(PlanView {
        plan_id: plan_id.to_string(),
        name: started.payload["name"].as_str().unwrap_or_default().to_string(),
        status: ended.map_or("running", |e| ended_status(&e.kind)).to_string(),
        started_ms: started.time_ms,
        ended_ms: ended.map(|e| e.time_ms),
        live_here,
        steps,
    }))
}

/// Which events belong to a plan: its own (`plan.*`, `step.*`), its steps' runs, and the runs those spawned. It
/// learns the runs as it reads, so it must see the events in order from before the plan started.
#[derive(Debug, Clone)]
pub struct PlanScope {
    plan_id: String,
    runs: std::collections::BTreeSet<String>,
}

/// Most runs one scope follows (a plan has at most 128 steps, each with retries and spawned children).
const MAX_SCOPE_RUNS: usize = 64 << 10;

impl PlanScope {
    pub fn new(plan_id: &str) -> PlanScope {
        PlanScope { plan_id: plan_id.to_string(), runs: Default::default() }
    }

    /// Whether `r` belongs to the plan (and learns the runs it names).
    pub fn takes(&mut self, r: &EventRecord) -> bool {
        if r.run_id == self.plan_id || r.payload.get("plan_id").and_then(|v| v.as_str()) == Some(&self.plan_id) {
            if r.kind == kind::STEP_STARTED && self.runs.len() < MAX_SCOPE_RUNS {
                self.runs.insert(r.run_id.clone());
            }
            return true;
        }
        if self.runs.contains(&r.run_id) {
            return true;
        }
        let parent = r.payload.get("parent").and_then(|v| v.as_str());
        if r.kind == kind::RUN_STARTED && parent.is_some_and(|p| self.runs.contains(p)) {
            if self.runs.len() < MAX_SCOPE_RUNS {
                self.runs.insert(r.run_id.clone());
            }
            return true;
        }
        false
    }

    /// Learns the runs of the plan from the log up to `until` (a stream that starts mid-plan).
    pub fn learn(&mut self, db: &crate::db::Db, until: u64) -> Result<(), redb::Error> {
        let mut after = 0;
        while after < until {
            let (records, last, more) = events::scan(db, &Filter::default(), after, 4096)?;
            for r in records.iter().take_while(|r| r.seq <= until) {
                self.takes(r);
            }
            if !more || last <= after {
                break;
            }
            after = last;
        }
        Ok(())
    }
}

/// `plan` query values are plan ids: bounded and plain.
pub fn check_plan_filter(plan: &str) -> Result<(), ApiError> {
    if plan.is_empty() || plan.len() > 128 || !plan.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ApiError::bad_request("plan: a plan id is 1 to 128 letters, digits, `-` and `_`"));
    }
    Ok(())
}
