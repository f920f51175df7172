//! `toka-host serve`: the long-running host behind an HTTP API (axum), on one [`Host`] that owns the engine, the
//! compile cache, the event log writer, the key store and the tools.
//!
//! Routes (JSON under `/v1`; every route but `/health` and the dashboard's files needs a bearer token, see
//! [`auth`]): runs (submit, get, list, cancel), plans (submit a manifest, get, list, cancel; see [`plans`]),
//! agents, events (list, server-sent stream), tools (list, describe, call), `/metrics` (Prometheus text),
//! `/openapi.json` (generated from the handlers' types by utoipa), `/health`; and the dashboard (`/`,
//! `/assets/...`: static files compiled in, holding no data, see [`dashboard`]). Bodies are size-capped, runs are
//! capped in number (a bounded queue, then 429), every error is JSON with a stable code. Tasks that runs scheduled
//! for later ([`crate::tasks`]) are started here when due. Shutting down (SIGTERM, Ctrl-C) stops taking requests,
//! gives running runs and plans a grace period, then cancels what is left and records it.
//!
//! This module never opens the database, the keys or the cache itself: it goes through the [`Host`].

pub mod api;
pub mod auth;
pub mod dashboard;
pub mod error;
pub mod events;
pub mod metrics;
pub mod placed;
pub mod plans;
pub mod runs;
pub mod tools;

use crate::run::Runner;
use crate::runtime::Host;
use axum::Json;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use error::ApiError;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// How the service runs.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Runs at once.
    pub max_concurrent: usize,
    /// Runs waiting for a slot, beyond which submissions get 429.
    pub max_queue: usize,
    /// Largest request body, in bytes (uploads included).
    pub max_body: usize,
    /// Directories whose components may be run by path.
    pub component_dirs: Vec<PathBuf>,
    /// How long running runs get to finish on shutdown before they are cancelled.
    pub shutdown_grace: Duration,
    /// Components compiled at once (a compile is CPU-heavy and not counted as a run).
    pub max_compiles: usize,
    /// The cluster this service is a node of (`/health` says whether it knows a leader).
    pub cluster: Option<crate::cluster::Cluster>,
    /// This node's labels (`serve --label`), on a cluster.
    pub labels: Vec<String>,
    /// Bounds on clients' connections (see [`crate::http`]).
    pub connections: crate::http::Limits,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            max_concurrent: 16,
            max_queue: 1024,
            max_body: 64 << 20,
            component_dirs: Vec::new(),
            shutdown_grace: Duration::from_secs(10),
            max_compiles: 2,
            cluster: None,
            labels: Vec::new(),
            connections: crate::http::Limits::for_process(),
        }
    }
}

/// The running service: the host, the runner every run goes through, the runs, the metrics.
pub struct Service {
    pub host: Arc<Host>,
    pub runner: Arc<Runner>,
    pub runs: runs::RunTable,
    /// The plans this server is running.
    pub plans: plans::PlanTable,
    pub metrics: metrics::Metrics,
    pub config: ServiceConfig,
    slots: Arc<Semaphore>,
    compiles: Arc<Semaphore>,
    admitted: Arc<AtomicUsize>,
    stopping: AtomicBool,
    /// Cancelled when the service shuts down (event streams end).
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("config", &self.config).finish_non_exhaustive()
    }
}

/// A run's place in the service, from admission until it ends: queued until [`Admission::slot`] gives it a slot.
#[derive(Debug)]
pub struct Admission {
    service: Arc<Service>,
    released: bool,
}

/// A running run's slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    service: Arc<Service>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Admission {
    /// Waits for a slot; `None` if the service is shutting down.
    pub async fn slot(mut self) -> Option<Slot> {
        let service = self.service.clone();
        let permit = service.slots.clone().acquire_owned().await.ok()?;
        if service.shutting_down() {
            return None;
        }
        self.released = true;
        service.metrics.queued.fetch_sub(1, Ordering::Relaxed);
        service.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Slot { service, _permit: permit })
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if !self.released {
            self.service.metrics.queued.fetch_sub(1, Ordering::Relaxed);
            self.service.admitted.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.service.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.service.admitted.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Service {
    pub fn new(host: Host, config: ServiceConfig) -> Arc<Service> {
        let node = config.cluster.as_ref().map(|c| c.node_id);
        let runner = Arc::new(host.runner().on_node(node));
        let runs = runs::RunTable::default();
        crate::sandbox::fds::plan(config.max_concurrent);
        if let Some(node) = node {
            runs.set_here(node);
        }
        Arc::new(Service {
            slots: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
            compiles: Arc::new(Semaphore::new(config.max_compiles.max(1))),
            host: Arc::new(host),
            runner,
            runs,
            plans: plans::PlanTable::default(),
            metrics: metrics::Metrics::default(),
            config,
            admitted: Arc::new(AtomicUsize::new(0)),
            stopping: AtomicBool::new(false),
            shutdown: tokio_util::sync::CancellationToken::new(),
        })
    }

    /// A place for one more run, unless the queue is full.
    fn admit(self: &Arc<Self>) -> Option<Admission> {
        let cap = self.config.max_concurrent + self.config.max_queue;
        let taken = self.admitted.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < cap).then_some(n + 1));
        taken.ok()?;
        self.metrics.queued.fetch_add(1, Ordering::Relaxed);
        Some(Admission { service: self.clone(), released: false })
    }

    pub fn shutting_down(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn host_counters(&self) -> metrics::HostCounters {
        let stats = self.host.log().stats();
        let by_size: Vec<(f64, u64)> = crate::events::log::BATCH_BOUNDS
            .iter()
            .zip(&stats.by_size)
            .map(|(b, n)| (*b as f64, n.load(Ordering::Relaxed)))
            .collect();
        metrics::HostCounters {
            events_appended: stats.events.load(Ordering::Relaxed),
            batches: by_size,
            batch_sum: stats.operations.load(Ordering::Relaxed) as f64,
            batch_count: stats.batches.load(Ordering::Relaxed),
            cache_hits: self.host.engine().cache_hits() as u64,
            llm: self.host.llm().usage(),
            connections: crate::http::stats(),
            descriptors: {
                let fds = crate::sandbox::fds::budget();
                (fds.limit(), fds.guests(), fds.held())
            },
        }
    }
}

/// Liveness, and whether the log accepts writes: on a cluster's node, also whether it knows a leader (without one,
/// no write can be recorded: `no-leader`, 503).
#[utoipa::path(get, path = "/health", responses((status = 200, body = api::Health), (status = 503, body = api::Health)))]
async fn health(State(service): State<Arc<Service>>) -> (StatusCode, Json<api::Health>) {
    let db = service.host.db().clone();
    // The write lock can be taken (across processes); the transaction is aborted, so a health check costs no fsync.
    let writable = tokio::task::spawn_blocking(move || {
        redb::Database::begin_write(db.redb()).is_ok_and(|txn| txn.abort().is_ok())
    })
    .await
    .unwrap_or(false);
    let cluster = service.config.cluster.as_ref().map(|c| {
        use crate::cluster::Leadership;
        let (leader, stale_ms) = match c.leadership() {
            Leadership::Leads => (Some(c.node_id), None),
            Leadership::Follows(id) => (Some(id), None),
            Leadership::None { stale_ms } => (None, stale_ms),
        };
        let stopped = c.raft.metrics().borrow().running_state.clone().err();
        api::ClusterHealth {
            node_id: c.node_id,
            leader,
            raft_running: stopped.is_none(),
            raft_error: stopped.map(|e| crate::error::one_line(&e.to_string())),
            leader_stale_ms: stale_ms,
        }
    });
    let leaderless = cluster.as_ref().is_some_and(|c| c.leader.is_none() || !c.raft_running);
    let status = match (writable, leaderless) {
        (false, _) => "degraded",
        (true, true) => "no-leader",
        (true, false) => "ok",
    };
    let body = api::Health {
        status: status.into(),
        log_writable: writable,
        version: env!("CARGO_PKG_VERSION").into(),
        runs_in_flight: service.metrics.in_flight.load(Ordering::Relaxed),
        runs_queued: service.metrics.queued.load(Ordering::Relaxed),
        cluster,
    };
    (if status == "ok" { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(body))
}

/// Prometheus metrics (text format 0.0.4).
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format")),
    security(("bearer" = [])))]
async fn metrics_text(State(service): State<Arc<Service>>, headers: HeaderMap) -> Result<Response, ApiError> {
    auth::reader(&service.host, &headers)?;
    let text = service.metrics.render(&service.host_counters());
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response())
}

#[derive(OpenApi)]
#[openapi(
    info(title = "toka-host", description = "A WebAssembly sandbox host for AI agents and their tools."),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("Biscuit").build();
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The API's routes and its OpenAPI document, from the same handlers.
pub fn api() -> (axum::Router<Arc<Service>>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(runs::submit, runs::list_runs))
        .routes(routes!(runs::get_run))
        .routes(routes!(runs::cancel))
        .routes(routes!(runs::agents))
        .routes(routes!(plans::submit, plans::list))
        .routes(routes!(plans::get_plan, plans::cancel))
        .routes(routes!(events::list))
        .routes(routes!(events::stream))
        .routes(routes!(tools::list))
        .routes(routes!(tools::describe))
        .routes(routes!(tools::call))
        .routes(routes!(health))
        .routes(routes!(metrics_text))
        .split_for_parts()
}

/// The OpenAPI document, as `/openapi.json` serves it.
pub fn openapi_json() -> String {
    api().1.to_pretty_json().unwrap_or_default()
}

/// Refuses a request that carries a body before anything reads it, unless it authenticates: a bearer token of this
/// home for the API, the cluster's secret for node-to-node routes (`/v1/raft/*`, `/v1/cluster/*`, only on a cluster's
/// node). Handlers read a body whole (up to `--max-body`) before they run, so without this an unauthenticated client
/// could have the server buffer that much on each of its connections. What the token allows is still the handler's to
/// check; a request without a body is authenticated by its handler alone.
async fn authenticated_first(State(service): State<Arc<Service>>, request: Request, next: Next) -> Response {
    use axum::http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
    let path = request.uri().path();
    if path.starts_with("/v1/raft/") || path.starts_with("/v1/cluster/") {
        let Some(cluster) = &service.config.cluster else {
            return ApiError::not_found("no such route").into_response();
        };
        if let Err(refused) = crate::cluster::network::authenticate(cluster, request.headers()) {
            return *refused;
        }
        return next.run(request).await;
    }
    let headers = request.headers();
    let body = headers.contains_key(TRANSFER_ENCODING) || headers.get(CONTENT_LENGTH).is_some_and(|n| n != "0");
    if body && let Err(refused) = auth::bearer(&service.host, headers) {
        service.metrics.token_refused();
        return refused.into_response();
    }
    next.run(request).await
}

/// Counts each request by route template and status, and traces it.
async fn observe(State(service): State<Arc<Service>>, request: Request, next: Next) -> Response {
    let method = request.method().to_string();
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_string();
    // `run_id` is filled in by a handler that starts a run.
    let span = tracing::info_span!("request", %method, %route, status = tracing::field::Empty,
        run_id = tracing::field::Empty);
    let response = tracing::Instrument::instrument(next.run(request), span.clone()).await;
    span.record("status", response.status().as_u16());
    service.metrics.request(&method, &route, response.status().as_u16());
    response
}

/// The whole router: the API, `/openapi.json` and the dashboard, with the body limit and request metrics.
pub fn router(service: Arc<Service>) -> axum::Router {
    let (api, doc) = api();
    let doc = Arc::new(doc.to_pretty_json().unwrap_or_default());
    let openapi = {
        let doc = doc.clone();
        move |State(service): State<Arc<Service>>, headers: HeaderMap| {
            let doc = doc.clone();
            async move {
                auth::bearer(&service.host, &headers)?;
                Ok::<_, ApiError>(([(axum::http::header::CONTENT_TYPE, "application/json")], (*doc).clone()))
            }
        }
    };
    // Node to node (a cluster's), behind the cluster's secret: not part of the documented API.
    let peers = axum::Router::new()
        .route("/v1/cluster/runs", axum::routing::post(runs::forwarded))
        .route("/v1/cluster/runs/{run_id}", axum::routing::get(runs::forwarded_view))
        .route("/v1/cluster/runs/{run_id}/cancel", axum::routing::post(runs::forwarded_cancel));
    api.route("/openapi.json", axum::routing::get(openapi))
        .merge(peers)
        .merge(dashboard::routes())
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(axum::middleware::from_fn_with_state(service.clone(), observe))
        .layer(axum::extract::DefaultBodyLimit::max(service.config.max_body))
        .with_state(service)
}

/// Serves on `listener` until `stop` resolves; then stops taking requests, lets running runs finish within the
/// grace period, and cancels (and records) what is left.
pub async fn serve(
    service: Arc<Service>,
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(service, listener, stop, axum::Router::new()).await
}

/// [`serve`], with `extra` routes beside the API's (a cluster node's `/v1/raft/*` and `/v1/cluster/*`, which carry
/// their own authentication and body limit).
pub async fn serve_with(
    service: Arc<Service>,
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
    extra: axum::Router,
) -> std::io::Result<()> {
    let app = extra
        .merge(router(service.clone()))
        .layer(axum::middleware::from_fn_with_state(service.clone(), authenticated_first));
    // Scheduled tasks: started when due, from the log (so also those scheduled before this process started).
    let scheduler = tokio::spawn(crate::tasks::scheduler(
        service.host.clone(),
        service.runner.clone(),
        service.config.max_concurrent,
        Duration::from_millis(250),
        service.config.shutdown_grace,
        service.shutdown.clone(),
    ));
    let stopping = service.clone();
    let shutdown = async move {
        stop.await;
        tracing::info!("shutting down");
        stopping.stopping.store(true, Ordering::SeqCst);
        stopping.shutdown.cancel();
    };
    // Requests in flight get the runs' grace period to be answered (a waiting request ends with its run).
    crate::http::serve(listener, app, service.config.connections, shutdown, service.config.shutdown_grace).await?;
    // Queued runs do not start; running runs get the grace period, then are cancelled.
    service.slots.close();
    let running = service.runs.live();
    if running > 0 {
        let grace = humantime::format_duration(service.config.shutdown_grace);
        tracing::info!(running, "waiting up to {grace} for running runs to finish");
    }
    let deadline = tokio::time::Instant::now() + service.config.shutdown_grace;
    while (service.runs.live() > 0 || service.plans.live() > 0) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cancelled = service.runs.cancel_all();
    if cancelled > 0 {
        tracing::info!(cancelled, "cancelled runs still going after the grace period");
    }
    // Plans still going are cancelled too: each cancels its running steps, skips the rest and records its end.
    let plans = service.plans.cancel_all();
    if plans > 0 {
        tracing::info!(plans, "cancelled plans still going after the grace period");
    }
    let wait = tokio::time::Instant::now() + Duration::from_secs(5);
    while (service.runs.live() > 0 || service.plans.live() > 0) && tokio::time::Instant::now() < wait {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The scheduler has been stopping meanwhile (same grace, then its running tasks cancelled and recorded).
    drop(scheduler.await);
    Ok(())
}
