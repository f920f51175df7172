//! Runs through the API: submit (authorized with the bearer token attenuated to the run, queued with a cap, run
//! in-process), get, list, cancel; and the agents seen in the log.
//!
//! A run's life: the request is checked and the run prepared (component loaded, grants and token authorized) before
//! the answer, so a refusal is an immediate 4xx with the refusal recorded; an accepted run gets its id and 202, waits
//! for a slot, runs, and ends with its report kept in a bounded table (older runs are read back from the log).

use super::Service;
use super::api::{AgentView, ComponentRef, GrantsRequest, RunPage, RunStatus, RunSummary, RunView, SubmitRun};
use super::auth;
use super::error::ApiError;
use crate::error::{Outcome, RunError};
use crate::events::{self, Filter, kind};
use crate::grants::{DirGrant, EnvGrant, GrantRequest, NetGrant, StateGrant};
use crate::report::RunReport;
use crate::runtime::{LimitRequest, Ready, RunSpec, Source};
use crate::sandbox::cancel::Cancel;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use utoipa::IntoParams;

/// Runs kept in memory after they end (older ones are read from the log, without their output).
const KEEP_ENDED: usize = 256;
/// Captured output kept per stream in the table.
const KEEP_OUTPUT: usize = 64 << 10;
/// The longest a request may wait for its run.
pub const MAX_WAIT: Duration = Duration::from_secs(600);

/// One run the service knows.
#[derive(Debug)]
struct Entry {
    agent: String,
    submitted_ms: u64,
    status: RunStatus,
    report: Option<serde_json::Value>,
    cancel: Arc<Cancel>,
    done: tokio::sync::watch::Sender<bool>,
    /// The cluster node it executes on, if not this one.
    node: Option<u64>,
}

/// The runs of this service: queued, running, and the last [`KEEP_ENDED`] that ended.
#[derive(Debug, Default)]
pub struct RunTable {
    entries: Mutex<BTreeMap<String, Entry>>,
    ended: Mutex<VecDeque<String>>,
    /// This server's node id, on a cluster (the node of the runs it executes itself).
    here: std::sync::OnceLock<u64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl RunTable {
    fn insert(&self, run_id: &str, agent: &str) -> (Arc<Cancel>, tokio::sync::watch::Receiver<bool>) {
        let cancel = Arc::new(Cancel::default());
        let (done, watch) = tokio::sync::watch::channel(false);
        let entry = Entry {
            agent: agent.into(),
            submitted_ms: events::now_ms(),
            status: RunStatus::Queued,
            report: None,
            cancel: cancel.clone(),
            done,
            node: None,
        };
        lock(&self.entries).insert(run_id.into(), entry);
        (cancel, watch)
    }

    /// A run executing on another node of the cluster (followed by [`super::placed`]): running from here on.
    pub(super) fn insert_remote(
        &self,
        run_id: &str,
        agent: &str,
        node: u64,
    ) -> (Arc<Cancel>, tokio::sync::watch::Receiver<bool>) {
        let taken = self.insert(run_id, agent);
        if let Some(e) = lock(&self.entries).get_mut(run_id) {
            e.status = RunStatus::Running;
            e.node = Some(node);
        }
        taken
    }

    /// The node a placed run's latest attempt executes on.
    pub(super) fn set_node(&self, run_id: &str, node: u64) {
        if let Some(e) = lock(&self.entries).get_mut(run_id) {
            e.node = Some(node);
        }
    }

    fn set_running(&self, run_id: &str) {
        if let Some(e) = lock(&self.entries).get_mut(run_id) {
            e.status = RunStatus::Running;
        }
    }

    fn finish(&self, run_id: &str, mut report: RunReport) {
        for text in [&mut report.stdout, &mut report.stderr] {
            crate::bounds::truncate(text, KEEP_OUTPUT);
        }
        self.finish_json(run_id, serde_json::json!(report));
    }

    /// Ends a run with its report as JSON (a placed run's, as the node that ran it gave it).
    pub(super) fn finish_json(&self, run_id: &str, mut report: serde_json::Value) {
        for stream in ["stdout", "stderr"] {
            if let Some(serde_json::Value::String(text)) = report.get_mut(stream) {
                crate::bounds::truncate(text, KEEP_OUTPUT);
            }
        }
        let mut entries = lock(&self.entries);
        if let Some(e) = entries.get_mut(run_id) {
            e.status = RunStatus::Ended;
            e.report = Some(report);
            e.done.send_replace(true);
        }
        let mut ended = lock(&self.ended);
        ended.push_back(run_id.to_string());
        while ended.len() > KEEP_ENDED {
            if let Some(old) = ended.pop_front() {
                entries.remove(&old);
            }
        }
    }

    pub(super) fn view(&self, run_id: &str) -> Option<RunView> {
        lock(&self.entries).get(run_id).map(|e| RunView {
            run_id: run_id.into(),
            agent: e.agent.clone(),
            status: e.status,
            submitted_ms: e.submitted_ms,
            report: e.report.clone(),
            node: e.node.or_else(|| self.here.get().copied()),
        })
    }

    fn watch(&self, run_id: &str) -> Option<tokio::sync::watch::Receiver<bool>> {
        lock(&self.entries).get(run_id).map(|e| e.done.subscribe())
    }

    fn cancel_of(&self, run_id: &str) -> Option<(String, RunStatus, Arc<Cancel>)> {
        lock(&self.entries).get(run_id).map(|e| (e.agent.clone(), e.status, e.cancel.clone()))
    }

    /// Cancels every run that has not ended (the service is shutting down).
    pub fn cancel_all(&self) -> usize {
        let entries = lock(&self.entries);
        let live: Vec<_> = entries.values().filter(|e| e.status != RunStatus::Ended).collect();
        for e in &live {
            e.cancel.cancel();
        }
        live.len()
    }

    /// Names this server's cluster node as where its own runs execute.
    pub fn set_here(&self, node: u64) {
        self.here.get_or_init(|| node);
    }

    /// Runs executing on this node (queued or running; not those placed on another node).
    pub fn running_here(&self) -> usize {
        lock(&self.entries).values().filter(|e| e.status != RunStatus::Ended && e.node.is_none()).count()
    }

    /// Runs that have not ended.
    pub fn live(&self) -> usize {
        lock(&self.entries).values().filter(|e| e.status != RunStatus::Ended).count()
    }
}

/// The grants of a request, parsed as the CLI parses its flags.
pub fn grant_request(g: &GrantsRequest) -> Result<(GrantRequest, Vec<String>), ApiError> {
    let dirs =
        g.dirs.iter().map(|d| DirGrant::parse(d)).collect::<Result<Vec<_>, _>>().map_err(ApiError::bad_request)?;
    let env = g.env.iter().map(|e| EnvGrant::parse(e)).collect::<Result<Vec<_>, _>>().map_err(ApiError::bad_request)?;
    if let Some(e) = env.iter().find(|e| e.value.is_none()) {
        // A server's own environment is not a client's to read: values must be given.
        return Err(ApiError::bad_request(format!("env `{}`: give NAME=VALUE", e.name)));
    }
    let net = g.net.iter().map(|n| NetGrant::parse(n)).collect::<Result<Vec<_>, _>>().map_err(ApiError::bad_request)?;
    let state = match g.state.as_deref() {
        None => StateGrant::None,
        Some(s) => crate::grants::parse_state(s).map_err(ApiError::bad_request)?,
    };
    Ok((GrantRequest { dirs, env, net, inherit_stdin: false, state }, g.tools.clone()))
}

/// The component of a request.
fn source(service: &Service, component: &ComponentRef) -> Result<Source, ApiError> {
    match component {
        ComponentRef::Path(path) => {
            let path = PathBuf::from(path);
            for dir in &service.config.component_dirs {
                let candidate = if path.is_absolute() { path.clone() } else { dir.join(&path) };
                // Resolved first (symlinks and `..`), so the component is inside the directory, not just named so.
                if let (Ok(real), Ok(root)) = (candidate.canonicalize(), dir.canonicalize())
                    && real.starts_with(&root)
                {
                    return Ok(Source::Path(real));
                }
            }
            if service.config.component_dirs.is_empty() {
                return Err(ApiError::forbidden("this server runs no component by path (serve --component-dir DIR)"));
            }
            Err(ApiError::not_found(format!("no component {} in the server's component directories", path.display())))
        }
        ComponentRef::Plugin(name) => {
            crate::tools::check_name(name)
                .map_err(|e| ApiError::bad_request(format!("plugin: {}", e.replace("tool name", "package name"))))?;
            match crate::plugin::installed_agent(&service.host.home().dir, name) {
                Ok(Some(source)) => Ok(source),
                Ok(None) => Err(ApiError::not_found(format!("no installed agent package named {name}"))),
                Err(e @ (crate::plugin::PluginError::Invalid(_) | crate::plugin::PluginError::NotFound(_))) => {
                    Err(ApiError::bad_request(e))
                }
                Err(crate::plugin::PluginError::Host(e)) => Err(ApiError::internal(e)),
                // Tampered, unsigned, no longer trusted: the package is refused, not the request's shape.
                Err(e) => Err(ApiError::new(axum::http::StatusCode::FORBIDDEN, "plugin-refused", e)),
            }
        }
        ComponentRef::Upload { name, wasm_base64 } => {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(wasm_base64)
                .map_err(|e| ApiError::bad_request(format!("wasm_base64: {e}")))?;
            Ok(Source::Bytes { name: name.clone(), bytes: Arc::new(bytes) })
        }
    }
}

/// What a run asks for, to narrow its token to.
pub struct Asked<'a> {
    pub grants: &'a GrantRequest,
    pub tools: &'a [String],
    pub models: &'a [String],
    pub spawn: &'a [String],
    pub limits: &'a LimitRequest,
}

impl<'a> Asked<'a> {
    fn of(spec: &'a RunSpec) -> Self {
        Asked {
            grants: &spec.grants,
            tools: &spec.tools,
            models: &spec.models,
            spawn: &spec.spawn,
            limits: &spec.limits,
        }
    }
}

/// The bearer token narrowed to exactly this run: its grants, fuel and a lifetime covering the run.
fn run_token(bearer: &auth::Bearer, spec: Asked<'_>) -> Result<String, ApiError> {
    use crate::token::{Attenuation, Grant};
    let grants = spec.grants;
    let mut only = Vec::new();
    for d in &spec.grants.dirs {
        // The attenuation names the directory as given; the run's own request names it by its canonical path.
        let path = crate::home::resolve_lenient(&d.host);
        let value = crate::token::normalize_dir(&path.to_string_lossy()).map_err(ApiError::bad_request)?;
        only.push(Grant { kind: "fs".into(), value, mode: if d.read_only { "ro" } else { "rw" }.into() });
    }
    only.extend(grants.env.iter().map(|e| Grant { kind: "env".into(), value: e.name.clone(), mode: String::new() }));
    only.extend(grants.net.iter().map(|n| Grant {
        kind: "net".into(),
        value: format!("{}:{}", n.host, n.port),
        mode: String::new(),
    }));
    only.extend(spec.tools.iter().map(|t| Grant { kind: "tool".into(), value: t.clone(), mode: String::new() }));
    for model in spec.models {
        only.push(Grant::parse(&format!("llm:{model}")).map_err(ApiError::bad_request)?);
    }
    only.extend(spec.spawn.iter().map(|a| Grant { kind: "spawn".into(), value: a.clone(), mode: String::new() }));
    match grants.state {
        StateGrant::None => {}
        StateGrant::ReadOnly => only.push(Grant { kind: "state".into(), value: String::new(), mode: "ro".into() }),
        StateGrant::ReadWrite => only.push(Grant { kind: "state".into(), value: String::new(), mode: "rw".into() }),
    }
    let ttl = spec.limits.timeout.unwrap_or(Duration::from_secs(30)).saturating_add(Duration::from_secs(60));
    // `exact`: `only` is the whole list even when it is empty. A run that asks for no grant and no tool keeps none
    // of the bearer's (an empty list alone would narrow nothing, and its tool calls would reach every tool the
    // bearer allows).
    let narrowing = Attenuation {
        only,
        exact: true,
        fuel: spec.limits.fuel,
        memory: spec.limits.max_memory,
        timeout_ms: spec.limits.timeout.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        ttl: Some(ttl),
        llm_tokens: spec.limits.llm_tokens,
        ..Attenuation::default()
    };
    let parsed = crate::token::parse_unverified(&bearer.text).map_err(|e| ApiError::unauthorized(e.to_string()))?;
    let narrowed = crate::token::attenuate(&parsed, &narrowing, std::time::SystemTime::now())
        .and_then(|t| t.to_base64().map_err(|e| crate::token::TokenError::Invalid(e.to_string())))
        .map_err(|e| ApiError::forbidden(format!("cannot narrow the token to this run: {e}")))?;
    Ok(narrowed)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Wait until the run has ended, at most this long (milliseconds).
    pub wait_ms: Option<u64>,
}

/// Submit a run.
#[utoipa::path(post, path = "/v1/runs", request_body = SubmitRun,
    responses((status = 202, description = "Accepted; poll GET /v1/runs/{id}", body = RunView),
              (status = 200, description = "Ended (with `wait`)", body = RunView),
              (status = 400, body = super::api::ErrorBody), (status = 401, body = super::api::ErrorBody),
              (status = 403, body = super::api::ErrorBody), (status = 429, body = super::api::ErrorBody),
              (status = 503, body = super::api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn submit(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    super::error::ApiJson(request): super::error::ApiJson<SubmitRun>,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    // The id comes first, so that every span of the run (and the request's own) carries it.
    let run_id = crate::run::fresh_run_id();
    tracing::Span::current().record("run_id", run_id.as_str());
    let bearer = {
        let _span = tracing::info_span!("authenticate", run_id = %run_id).entered();
        auth::bearer(&service.host, &headers).inspect_err(|_| service.metrics.token_refused())?
    };
    if service.shutting_down() {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting-down", "the server is shutting down"));
    }
    if let Some(cluster) = service.config.cluster.clone() {
        let placement = request.placement.clone().unwrap_or_default();
        crate::cluster::placement::check_labels(&placement.labels)
            .map_err(|e| ApiError::bad_request(format!("placement: {e}")))?;
        if placement.retries > super::placed::MAX_RETRIES {
            let most = super::placed::MAX_RETRIES;
            return Err(ApiError::bad_request(format!("placement: retries is {}, at most {most}", placement.retries)));
        }
        let destination = super::placed::destination(&service, &cluster, &placement.labels).await;
        if let Some(placed) = destination.map_err(super::placed::place_error)? {
            // Narrowed here to exactly this run, so the node that runs it never sees the client's whole token.
            let (grants, tools) = grant_request(&request.grants)?;
            let limits = limit_request(&request.limits);
            let (models, spawn) = (&request.grants.models, &request.grants.spawn);
            let asked = Asked { grants: &grants, tools: &tools, models, spawn, limits: &limits };
            let token = run_token(&bearer, asked)?;
            let forwarded =
                super::placed::submit(service.clone(), cluster.clone(), run_id.clone(), token, &request, placed);
            if let Some(answer) = forwarded.await? {
                return Ok(answer);
            }
            // The chosen node cannot be reached from here (nothing was sent): this node, a member too, runs it.
            if !super::placed::has_labels(&service, &placement.labels) {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no-node",
                    format!("the node chosen for run {run_id} cannot be reached, and this node lacks its labels"),
                ));
            }
        }
    }
    accept(&service, run_id, &bearer, request).await
}

/// A run's limits, as a request gives them.
fn limit_request(l: &super::api::LimitsRequest) -> LimitRequest {
    LimitRequest {
        fuel: l.fuel,
        timeout: l.timeout_ms.map(Duration::from_millis),
        max_memory: l.max_memory,
        max_output: Some(l.max_output.unwrap_or(1 << 20)),
        max_records: l.max_records,
        llm_tokens: l.llm_tokens,
        max_spawn_depth: l.max_spawn_depth,
        max_spawns: l.max_spawns,
    }
}

/// Takes a run on this server: checked and prepared (component loaded, grants and token authorized) before the
/// answer, then queued for a slot. `bearer` authorizes it, narrowed to exactly the run.
async fn accept(
    service: &Arc<Service>,
    run_id: String,
    bearer: &auth::Bearer,
    request: SubmitRun,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    let (grants, tools) = grant_request(&request.grants)?;
    let input = request.input.as_ref().map(|v| v.to_string());
    let mut spec = RunSpec {
        source: source(service, &request.component)?,
        task_id: request.task_id.clone(),
        input,
        args: request.args.clone(),
        grants: grants.clone(),
        tools,
        models: request.grants.models.clone(),
        spawn: request.grants.spawn.clone(),
        limits: limit_request(&request.limits),
        token: None,
        run_id: Some(run_id.clone()),
    };
    spec.token = Some(run_token(bearer, Asked::of(&spec))?);
    let agent = match &spec.source {
        Source::Path(p) => crate::run::agent_name(p),
        Source::Bytes { name, .. } | Source::Plugin { name, .. } => name.clone(),
    };
    // Admission: a run holds a slot or a place in the queue from here on; a full queue is 429.
    let Some(admission) = service.admit() else {
        return Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "queue-full", "too many runs queued; retry later"));
    };
    // Preparing loads (maybe compiles) the component: off the async workers, a few at a time.
    let prepared = {
        let (service, spec) = (service.clone(), spec.clone());
        let _compile = service.compiles.clone().acquire_owned().await;
        // The blocking thread does not inherit the request's span: handed over, so `load` and `authorize` nest in it.
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| service.host.prepare(&service.runner, &spec)))
            .await
            .map_err(|e| ApiError::internal(format!("preparing the run: {e}")))?
    };
    let ready = match prepared {
        Ok(ready) => ready,
        Err(e) => {
            let name = PathBuf::from(&agent);
            if let Err(record) = service.runner.record_refusal(&name, &e).await {
                tracing::warn!(error = %record, "could not record a refused run");
            }
            service.metrics.run_ended(&outcome_name(e.outcome()), 0.0, 0);
            return Err(e.into());
        }
    };
    let (cancel, _) = service.runs.insert(&run_id, ready.program.name());
    tracing::info!(run_id = %run_id, agent = %agent, "run accepted");
    // A submission that waits gets the whole report (the table keeps its output cut).
    let (reply, whole) = if request.wait {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    // The run's task stays in the request's span: the trace reads request -> run, however long the run takes.
    let task = execute(service.clone(), run_id.clone(), ready, cancel, admission, reply);
    tokio::spawn(tracing::Instrument::instrument(task, tracing::Span::current()));
    if let Some(whole) = whole {
        let wait = Duration::from_millis(request.wait_ms.unwrap_or(60_000)).min(MAX_WAIT);
        let ended = tokio::select! {
            ended = tokio::time::timeout(wait, whole) => ended.ok().and_then(Result::ok),
            () = service.shutdown.cancelled() => None,
        };
        let mut view = service.runs.view(&run_id).ok_or_else(|| ApiError::internal("the run vanished"))?;
        if let Some(report) = ended {
            view.status = RunStatus::Ended;
            view.report = Some(serde_json::json!(report));
        }
        let status = if view.status == RunStatus::Ended { StatusCode::OK } else { StatusCode::ACCEPTED };
        return Ok((status, Json(view)));
    }
    let view = service.runs.view(&run_id).ok_or_else(|| ApiError::internal("the run vanished"))?;
    Ok((StatusCode::ACCEPTED, Json(view)))
}

fn outcome_name(o: Outcome) -> String {
    serde_json::to_value(o).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

/// Waits for a slot, runs (the runner traces the `run` span), and records the ending in the table and the metrics;
/// the whole report also goes to `reply`, if the submission waits for it.
async fn execute(
    service: Arc<Service>,
    run_id: String,
    ready: Ready,
    cancel: Arc<Cancel>,
    admission: super::Admission,
    reply: Option<tokio::sync::oneshot::Sender<RunReport>>,
) {
    let slot = tokio::select! {
        slot = admission.slot() => slot,
        () = cancel.cancelled() => None,
    };
    let Some(slot) = slot else {
        // Cancelled (or shutting down) before it started: recorded as a refusal with the outcome `cancelled`.
        let report = RunReport::cancelled_before_start();
        drop(service.runner.record_refusal(std::path::Path::new(ready.program.name()), &RunError::Cancelled).await);
        service.metrics.run_ended("cancelled", 0.0, 0);
        if let Some(reply) = reply {
            drop(reply.send(report.clone()));
        }
        service.runs.finish(&run_id, report);
        return;
    };
    service.runs.set_running(&run_id);
    let started = Instant::now();
    let output = crate::sandbox::OutputMode { echo: false, capture: true };
    let control = crate::run::RunControl { run_id: Some(run_id.clone()), cancel: Some(cancel), ..Default::default() };
    let report =
        service.runner.run_with(&ready.program, &ready.grants, &ready.limits, &ready.invocation, output, control).await;
    drop(slot);
    service.metrics.run_ended(&outcome_name(report.outcome), started.elapsed().as_secs_f64(), report.fuel_consumed);
    tracing::info!(run_id = %run_id, outcome = report.outcome.name(), "run ended");
    if let Some(reply) = reply {
        drop(reply.send(report.clone()));
    }
    service.runs.finish(&run_id, report);
}

/// Get a run: its status, and its report once ended (`?wait_ms=N` waits for the end).
#[utoipa::path(get, path = "/v1/runs/{run_id}", params(("run_id" = String, Path), WaitQuery),
    responses((status = 200, body = RunView), (status = 404, body = super::api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_run(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    Path(run_id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> Result<Json<RunView>, ApiError> {
    let bearer = auth::reader(&service.host, &headers)?;
    if let Some(wait) = q.wait_ms
        && let Some(mut done) = service.runs.watch(&run_id)
    {
        let wait = Duration::from_millis(wait).min(MAX_WAIT);
        tokio::select! {
            _ = tokio::time::timeout(wait, done.wait_for(|d| *d)) => {}
            () = service.shutdown.cancelled() => {}
        }
    }
    let view = match service.runs.view(&run_id) {
        Some(v) => v,
        None => from_log(&service, &run_id)?,
    };
    if !bearer.sees(&view.agent) {
        return Err(ApiError::not_found(format!("no run {run_id}")));
    }
    Ok(Json(view))
}

/// A run the table no longer holds, from its events.
fn from_log(service: &Service, run_id: &str) -> Result<RunView, ApiError> {
    if run_id.len() > crate::bounds::MAX_ID {
        return Err(ApiError::not_found(format!("no run {run_id}")));
    }
    let filter = Filter { run_id: Some(run_id.into()), kind: Some("run".into()), ..Filter::default() };
    let records = events::read(service.host.db(), &filter).map_err(ApiError::internal)?;
    let started = records
        .iter()
        .find(|r| r.kind == kind::RUN_STARTED)
        .ok_or_else(|| ApiError::not_found(format!("no run {run_id}")))?;
    let ended = records.iter().find(|r| r.kind == kind::RUN_COMPLETED || r.kind == kind::RUN_FAILED);
    Ok(RunView {
        run_id: run_id.into(),
        agent: started.agent.clone(),
        status: if ended.is_some() { RunStatus::Ended } else { RunStatus::Running },
        submitted_ms: started.time_ms,
        report: ended.map(|e| e.payload.clone()),
        node: started.payload["node"].as_u64(),
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only runs of this agent.
    pub agent: Option<String>,
    /// Only runs that ended so (`success`, `trap`, ..., or `running`).
    pub outcome: Option<String>,
    /// At most this many (default 50, at most 1000).
    pub limit: Option<usize>,
    /// Only runs that started before this sequence number (the `next` of a previous page).
    pub before: Option<u64>,
}

/// List runs, newest first, with filters and pagination.
#[utoipa::path(get, path = "/v1/runs", params(ListQuery), responses((status = 200, body = RunPage)),
    security(("bearer" = [])))]
pub async fn list_runs(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Json<RunPage>, ApiError> {
    let bearer = auth::reader(&service.host, &headers)?;
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let agent = match (bearer.scope(), q.agent) {
        (Some(mine), Some(asked)) if mine != asked => return Ok(Json(RunPage { runs: Vec::new(), next: None })),
        (Some(mine), _) => Some(mine),
        (None, asked) => asked,
    };
    let service2 = service.clone();
    let page = tokio::task::spawn_blocking(move || summaries(&service2, agent, q.outcome, limit, q.before))
        .await
        .map_err(ApiError::internal)??;
    Ok(Json(page))
}

/// Runs from the log, newest first: each `run.started` with its ending, if any.
fn summaries(
    service: &Service,
    agent: Option<String>,
    outcome: Option<String>,
    limit: usize,
    before: Option<u64>,
) -> Result<RunPage, ApiError> {
    let filter = Filter { agent, kind: Some("run".into()), ..Filter::default() };
    let records = events::read(service.host.db(), &filter).map_err(ApiError::internal)?;
    let mut endings: BTreeMap<&str, &events::EventRecord> = BTreeMap::new();
    for r in &records {
        if r.kind == kind::RUN_COMPLETED || r.kind == kind::RUN_FAILED {
            endings.insert(&r.run_id, r);
        }
    }
    let mut runs = Vec::new();
    let mut next = None;
    for r in records.iter().rev().filter(|r| r.kind == kind::RUN_STARTED && before.is_none_or(|b| r.seq < b)) {
        let end = endings.get(r.run_id.as_str());
        let p = end.map(|e| &e.payload);
        let summary = RunSummary {
            run_id: r.run_id.clone(),
            agent: r.agent.clone(),
            started_ms: r.time_ms,
            outcome: p.and_then(|p| p["outcome"].as_str()).unwrap_or("running").to_string(),
            exit_code: p.and_then(|p| p["exit_code"].as_i64()),
            fuel: p.and_then(|p| p["fuel"].as_u64()),
            wall_time_ms: p.and_then(|p| p["wall_time_ms"].as_f64()),
            peak_memory_bytes: p.and_then(|p| p["peak_memory_bytes"].as_u64()),
        };
        if outcome.as_ref().is_some_and(|o| *o != summary.outcome) {
            continue;
        }
        if runs.len() == limit {
            next = Some(r.seq + 1);
            break;
        }
        runs.push(summary);
    }
    Ok(RunPage { runs, next })
}

/// Cancel a run: a running run stops at its next epoch tick (or host call) and is recorded as `cancelled`; a
/// queued one never starts.
#[utoipa::path(post, path = "/v1/runs/{run_id}/cancel", params(("run_id" = String, Path)),
    responses((status = 202, body = RunView), (status = 404, body = super::api::ErrorBody),
              (status = 409, body = super::api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn cancel(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    Path(run_id): Path<String>,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    let bearer = auth::bearer(&service.host, &headers)?;
    let Some((agent, status, switch)) = service.runs.cancel_of(&run_id) else {
        return Err(ApiError::not_found(format!("no live run {run_id} on this server")));
    };
    // Who may run an agent may cancel its runs.
    let request = crate::token::RunRequest {
        agent: agent.clone(),
        grants: Vec::new(),
        limits: crate::token::TokenLimits::default(),
        component: None,
        plugin: None,
    };
    if crate::token::authorize(&bearer.verified, &request, std::time::SystemTime::now()).is_err()
        || !bearer.sees(&agent)
    {
        return Err(ApiError::not_found(format!("no live run {run_id} on this server")));
    }
    if status == RunStatus::Ended {
        return Err(ApiError::new(StatusCode::CONFLICT, "already-ended", format!("run {run_id} has already ended")));
    }
    switch.cancel();
    let view = service.runs.view(&run_id).ok_or_else(|| ApiError::internal("the run vanished"))?;
    Ok((StatusCode::ACCEPTED, Json(view)))
}

/// The agents seen in the log, with their number of runs and last outcome.
#[utoipa::path(get, path = "/v1/agents", responses((status = 200, body = Vec<AgentView>)),
    security(("bearer" = [])))]
pub async fn agents(State(service): State<Arc<Service>>, headers: HeaderMap) -> Result<Json<Vec<AgentView>>, ApiError> {
    let bearer = auth::reader(&service.host, &headers)?;
    let service2 = service.clone();
    let scope = bearer.scope();
    let list = tokio::task::spawn_blocking(move || -> Result<Vec<AgentView>, ApiError> {
        let filter = Filter { agent: scope, kind: Some("run".into()), ..Filter::default() };
        let records = events::read(service2.host.db(), &filter).map_err(ApiError::internal)?;
        let mut agents: BTreeMap<String, AgentView> = BTreeMap::new();
        for r in records.iter().filter(|r| !r.agent.is_empty()) {
            let a = agents.entry(r.agent.clone()).or_insert_with(|| AgentView {
                agent: r.agent.clone(),
                runs: 0,
                last_run_ms: 0,
                last_outcome: String::new(),
            });
            match r.kind.as_str() {
                kind::RUN_STARTED => {
                    a.runs += 1;
                    a.last_run_ms = r.time_ms;
                    a.last_outcome = "running".into();
                }
                kind::RUN_COMPLETED | kind::RUN_FAILED => {
                    a.last_outcome = r.payload["outcome"].as_str().unwrap_or_default().to_string();
                }
                _ => {}
            }
        }
        Ok(agents.into_values().collect())
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(Json(list))
}

/// A node-to-node request's cluster, once its secret is checked (404 on a server that is no cluster's node).
fn cluster_peer(service: &Service, headers: &HeaderMap) -> Result<(), Box<axum::response::Response>> {
    use axum::response::IntoResponse;
    let Some(cluster) = &service.config.cluster else {
        return Err(Box::new(ApiError::not_found("no such route").into_response()));
    };
    crate::cluster::network::authenticate(cluster, headers)
}

/// A run another node placed here (`POST /v1/cluster/runs`, with the cluster's secret): taken as any submission is,
/// under the token it carries (the client's, narrowed to this run), with the id the other node gave it.
pub async fn forwarded(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if let Err(r) = cluster_peer(&service, &headers) {
        return *r;
    }
    let taken = async {
        let f: super::placed::Forwarded =
            serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("forwarded run: {e}")))?;
        crate::bounds::check_id("run id", &f.run_id).map_err(ApiError::bad_request)?;
        if service.runs.view(&f.run_id).is_some() {
            return Err(ApiError::new(StatusCode::CONFLICT, "duplicate", format!("run {} is known here", f.run_id)));
        }
        if service.shutting_down() {
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting-down", "the server is shutting down"));
        }
        let bearer = auth::verify(&service.host, &f.token).inspect_err(|_| service.metrics.token_refused())?;
        let mut request = f.request;
        request.wait = false;
        request.placement = None;
        tracing::Span::current().record("run_id", f.run_id.as_str());
        accept(&service, f.run_id, &bearer, request).await
    };
    match taken.await {
        Ok(answer) => answer.into_response(),
        Err(e) => e.into_response(),
    }
}

/// A run of this node, for the node that placed it here (`GET /v1/cluster/runs/{id}`, with the cluster's secret).
pub async fn forwarded_view(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    Path(run_id): Path<String>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if let Err(r) = cluster_peer(&service, &headers) {
        return *r;
    }
    match service.runs.view(&run_id).map_or_else(|| from_log(&service, &run_id), Ok) {
        Ok(view) => Json(view).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Cancels a run of this node for the node that placed it here (`POST /v1/cluster/runs/{id}/cancel`, with the
/// cluster's secret; that node checked the canceller's token).
pub async fn forwarded_cancel(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    Path(run_id): Path<String>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if let Err(r) = cluster_peer(&service, &headers) {
        return *r;
    }
    match service.runs.cancel_of(&run_id) {
        Some((_, RunStatus::Ended, _)) => {
            ApiError::new(StatusCode::CONFLICT, "already-ended", format!("run {run_id} has already ended"))
                .into_response()
        }
        Some((_, _, switch)) => {
            switch.cancel();
            StatusCode::ACCEPTED.into_response()
        }
        None => ApiError::not_found(format!("no live run {run_id} on this node")).into_response(),
    }
}
