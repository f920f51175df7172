//! Runs placed on another node of the cluster: the submission is forwarded to the node the leader chose, and this
//! node follows the run in its own copy of the log until it ends; if it ends lost with its node, it is started again
//! elsewhere as many times as its placement allows.
//!
//! The forwarded run carries the bearer token narrowed to that run (never the client's own), and the node that runs
//! it checks it again, as it checks any submission: forwarding gives a run no right it did not have. Node to node
//! requests carry the cluster's secret (`/v1/cluster/runs...`). This module never runs anything itself, and never
//! decides that a run is lost: the cluster's leader records that, in the log, and this node reads it there.

use super::Service;
use super::api::{ComponentRef, RunStatus, RunView, SubmitRun};
use super::error::ApiError;
use crate::cluster::Cluster;
use crate::cluster::placement::{PlaceError, PlaceRequest, Placed};
use crate::error::{Outcome, RunError};
use crate::events::{self, Filter, kind};
use crate::report::RunReport;
use crate::sandbox::cancel::Cancel;
use axum::Json;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Most times a run lost with its node is started again.
pub const MAX_RETRIES: u32 = 10;
/// How long a run is followed beyond its own time limit (without one: an hour) before this node gives up on it.
const FOLLOW_SLACK: Duration = Duration::from_secs(600);
/// How long a node may take to accept a forwarded run (it may compile the component first).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(300);
/// Nodes tried for one attempt when the chosen one cannot be reached.
const MAX_UNREACHABLE: usize = 3;
/// How often a node following a placed run asks the node running it whether it ended (see `ending`).
const ASK_EVERY: Duration = Duration::from_secs(2);

/// A run forwarded to the node that executes it (`POST /v1/cluster/runs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forwarded {
    /// The run's id, chosen by the node that took the submission.
    pub run_id: String,
    /// The bearer token narrowed to this run.
    pub token: String,
    pub request: SubmitRun,
}

/// One attempt of a placed run.
#[derive(Debug, Clone)]
struct Attempt {
    run_id: String,
    node: u64,
    addr: String,
}

/// What the follower needs to start a run again.
struct Again {
    token: String,
    request: SubmitRun,
    labels: Vec<String>,
    retries: u32,
}

/// A placement's failure, as the client sees it.
pub fn place_error(e: PlaceError) -> ApiError {
    match e {
        PlaceError::NoLeader(why) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no-leader", why),
        PlaceError::NoNode(why) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no-node", why),
    }
}

/// Whether this node has every label in `labels`.
pub fn has_labels(service: &Service, labels: &[String]) -> bool {
    labels.iter().all(|l| service.config.labels.contains(l))
}

/// Where a run that needs `labels` executes: on another node (`Some`), or here (`None`: the leader chose this node,
/// or there is no leader and this node has the labels, where the run's start is then refused as any write is, within
/// the leaderless bound). No node fits, or no leader and this node lacks the labels: the error.
pub async fn destination(
    service: &Service,
    cluster: &Cluster,
    labels: &[String],
) -> Result<Option<Placed>, PlaceError> {
    match cluster.place(&PlaceRequest { labels: labels.to_vec(), exclude: Vec::new() }).await {
        Ok(p) if p.node != cluster.node_id => Ok(Some(p)),
        Ok(_) => Ok(None),
        Err(PlaceError::NoLeader(why)) if has_labels(service, labels) => {
            tracing::warn!("run not placed ({why}); taken on this node");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Forwards the submission to `placed`, then follows the run there; answers as a submission on this node would (202,
/// or the ended run with `wait`). `None` if `placed` cannot be reached (nothing was sent).
pub async fn submit(
    service: Arc<Service>,
    cluster: Cluster,
    run_id: String,
    token: String,
    request: &SubmitRun,
    placed: Placed,
) -> Result<Option<(StatusCode, Json<RunView>)>, ApiError> {
    let mut request = request.clone();
    let placement = request.placement.take().unwrap_or_default();
    let (wait, wait_ms) = (request.wait, request.wait_ms);
    request.wait = false;
    request.wait_ms = None;
    let after = *service.host.log().stats().head.borrow();
    let labels = placement.labels.clone();
    let Some((attempt, view)) = start(&cluster, &run_id, &token, &request, &labels, Vec::new(), Some(placed)).await?
    else {
        return Ok(None);
    };
    let (cancel, mut done) = service.runs.insert_remote(&run_id, &view.agent, attempt.node);
    tracing::info!(run_id = %run_id, node = attempt.node, "run placed on another node");
    let again = Again { token, request, labels, retries: placement.retries };
    let task = follow(service.clone(), cluster, run_id.clone(), attempt, after, again, cancel);
    tokio::spawn(tracing::Instrument::instrument(task, tracing::Span::current()));
    if wait {
        let wait = Duration::from_millis(wait_ms.unwrap_or(60_000)).min(super::runs::MAX_WAIT);
        tokio::select! {
            _ = tokio::time::timeout(wait, done.wait_for(|d| *d)) => {}
            () = service.shutdown.cancelled() => {}
        }
    }
    let view = service.runs.view(&run_id).ok_or_else(|| ApiError::internal("the run vanished"))?;
    let status = if view.status == RunStatus::Ended { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok(Some((status, Json(view))))
}

/// Starts attempt `run_id` on `placed` (only there: `None` if it cannot be reached), or, without one, on a node the
/// leader chooses, not among `exclude` (another if one cannot be reached, up to [`MAX_UNREACHABLE`]; then `None`).
async fn start(
    cluster: &Cluster,
    run_id: &str,
    token: &str,
    request: &SubmitRun,
    labels: &[String],
    mut exclude: Vec<u64>,
    mut placed: Option<Placed>,
) -> Result<Option<(Attempt, RunView)>, ApiError> {
    let tries = if placed.is_some() { 1 } else { MAX_UNREACHABLE };
    for _ in 0..tries {
        let target = match placed.take() {
            Some(p) => p,
            None => cluster
                .place(&PlaceRequest { labels: labels.to_vec(), exclude: exclude.clone() })
                .await
                .map_err(place_error)?,
        };
        let body = Forwarded { run_id: run_id.into(), token: token.into(), request: request.clone() };
        let sending = std::time::Instant::now();
        let sent = cluster
            .http()
            .post(format!("{}/v1/cluster/runs", target.addr))
            .bearer_auth(&cluster.bundle.secret)
            .json(&body)
            .timeout(FORWARD_TIMEOUT)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            // Not sent at all (no connection, or none within the client's connect timeout: a timeout well before
            // the request's own can only be that one): the run cannot have started there.
            Err(e) if e.is_connect() || (e.is_timeout() && sending.elapsed() < FORWARD_TIMEOUT / 2) => {
                tracing::warn!(node = target.node, "placement: node {} cannot be reached: {e}", target.node);
                exclude.push(target.node);
                continue;
            }
            Err(e) => {
                return Err(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "node-unanswered",
                    format!(
                        "run {run_id} was sent to node {} which did not answer ({e}); whether it started is unknown \
                         (GET /v1/runs/{run_id} shows it once it has)",
                        target.node
                    ),
                ));
            }
        };
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if status.is_success() {
            let view: RunView = serde_json::from_str(&text)
                .map_err(|e| ApiError::internal(format!("node {} answered an unreadable run: {e}", target.node)))?;
            let attempt = Attempt { run_id: run_id.into(), node: target.node, addr: target.addr };
            return Ok(Some((attempt, view)));
        }
        // The node refused the run (as this node would have): its answer, as it gave it.
        let error: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let code = error["error"]["code"].as_str().unwrap_or("host-error").to_string();
        let message = error["error"]["message"].as_str().map_or_else(|| status.to_string(), String::from);
        return Err(ApiError::new(status, &code, format!("node {}: {message}", target.node)));
    }
    Ok(None)
}

/// Follows run `key` until its last attempt ends, starting it again (a new run) when an attempt is lost with its node
/// and retries are left; records the ending in this node's run table.
async fn follow(
    service: Arc<Service>,
    cluster: Cluster,
    key: String,
    mut current: Attempt,
    mut after: u64,
    mut again: Again,
    cancel: Arc<Cancel>,
) {
    let limit =
        Duration::from_millis(again.request.limits.timeout_ms.unwrap_or(3_600_000)).saturating_add(FOLLOW_SLACK);
    let mut lost = Vec::new();
    let mut exclude = Vec::new();
    loop {
        let mut report = match ended_report(&service, &cluster, &current, &mut after, &cancel, limit).await {
            Err(why) => json!({ "outcome": "host-error", "exit_code": 79, "error": why }),
            Ok(payload) if payload["outcome"] == "lost" => {
                lost.push(json!({ "run_id": current.run_id, "node": current.node, "error": payload["error"] }));
                exclude.push(current.node);
                let mut payload = payload;
                if again.retries > 0 && !cancel.is_cancelled() && !service.shutting_down() {
                    again.retries -= 1;
                    let run_id = crate::run::fresh_run_id();
                    let (token, request, labels) = (&again.token, &again.request, &again.labels);
                    match start(&cluster, &run_id, token, request, labels, exclude.clone(), None).await {
                        Ok(Some((next, _))) => {
                            tracing::info!(run_id = %key, attempt = %run_id, node = next.node, "lost run started again");
                            service.runs.set_node(&key, next.node);
                            current = next;
                            continue;
                        }
                        Ok(None) => {
                            let why = format!("no node could be reached (tried {MAX_UNREACHABLE})");
                            payload["retry_error"] = json!(why);
                        }
                        Err(e) => payload["retry_error"] = json!(e.message),
                    }
                }
                payload
            }
            Ok(report) => report,
        };
        report["run_id"] = json!(current.run_id);
        report["node"] = json!(current.node);
        if !lost.is_empty() {
            report["lost_attempts"] = json!(lost);
        }
        service.runs.finish_json(&key, report);
        return;
    }
}

/// The payload of the run's ending event, read from this node's log; a cancel of the run is passed on to the node
/// running it. Gives up after `limit`, or when this server shuts down.
async fn ending(
    service: &Service,
    cluster: &Cluster,
    attempt: &Attempt,
    after: &mut u64,
    cancel: &Cancel,
    limit: Duration,
) -> Result<Ended, String> {
    let filter = Filter { run_id: Some(attempt.run_id.clone()), kind: Some("run".into()), ..Filter::default() };
    let mut head = service.host.log().stats().head.subscribe();
    let give_up = tokio::time::Instant::now() + limit;
    let mut cancel_sent = false;
    let mut last_asked = tokio::time::Instant::now();
    loop {
        loop {
            let (db, f, from) = (service.host.db().clone(), filter.clone(), *after);
            let scanned = tokio::task::spawn_blocking(move || events::scan(&db, &f, from, 4096))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("reading the log: {e}"))?;
            let (records, last, more) = scanned;
            *after = last;
            let end = records.into_iter().find(|r| r.kind == kind::RUN_COMPLETED || r.kind == kind::RUN_FAILED);
            if let Some(end) = end {
                return Ok(Ended { payload: end.payload, whole: false });
            }
            if !more {
                break;
            }
        }
        if cancel.is_cancelled() && !cancel_sent {
            cancel_sent = true;
            let url = format!("{}/v1/cluster/runs/{}/cancel", attempt.addr, attempt.run_id);
            let sent = cluster.http().post(url).bearer_auth(&cluster.bundle.secret).timeout(Duration::from_secs(10));
            if let Err(e) = sent.send().await {
                tracing::warn!(run_id = %attempt.run_id, "cannot pass the cancel on to node {}: {e}", attempt.node);
            }
        }
        tokio::select! {
            _ = head.changed() => {}
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            () = cancel.cancelled(), if !cancel_sent => {}
            () = service.shutdown.cancelled() => {
                return Err(format!("this server shut down while run {} was running on node {}", attempt.run_id,
                    attempt.node));
            }
        }
        // A run that ends without a run ending of its own in the log (its start rejected by the kernel, a token
        // revoked meanwhile; cancelled while it waited for a slot) is known ended only to the node that took it.
        if last_asked.elapsed() >= ASK_EVERY {
            last_asked = tokio::time::Instant::now();
            if let Some(report) = fetch(cluster, attempt).await {
                return Ok(Ended { payload: report, whole: true });
            }
        }
        if tokio::time::Instant::now() >= give_up {
            return Err(format!(
                "no ending of run {} (on node {}) was seen in the log within {}",
                attempt.run_id,
                attempt.node,
                humantime::format_duration(limit)
            ));
        }
    }
}

/// How a followed attempt was seen to end: its ending's payload in the log, or (`whole`) the whole report from the
/// node that ran it.
struct Ended {
    payload: serde_json::Value,
    whole: bool,
}

/// The attempt's report once it has ended: the lost payload as the log has it, else the whole report (with its output)
/// from the node that ran it, or the log's if that node cannot answer.
async fn ended_report(
    service: &Service,
    cluster: &Cluster,
    attempt: &Attempt,
    after: &mut u64,
    cancel: &Cancel,
    limit: Duration,
) -> Result<serde_json::Value, String> {
    let ended = ending(service, cluster, attempt, after, cancel, limit).await?;
    if ended.whole || ended.payload["outcome"] == "lost" {
        return Ok(ended.payload);
    }
    Ok(fetch(cluster, attempt).await.unwrap_or(ended.payload))
}

/// The ended run's whole report, from the node that ran it.
async fn fetch(cluster: &Cluster, attempt: &Attempt) -> Option<serde_json::Value> {
    let url = format!("{}/v1/cluster/runs/{}", attempt.addr, attempt.run_id);
    let sent = cluster.http().get(url).bearer_auth(&cluster.bundle.secret).timeout(Duration::from_secs(10));
    let view: RunView = sent.send().await.ok()?.error_for_status().ok()?.json().await.ok()?;
    view.report
}

/// Places a plan's steps on the cluster's nodes (a plan sent to a node of a cluster): each attempt is forwarded to the
/// node the leader chooses for its labels and followed there; the plan's own retries cover an attempt lost with its
/// node (this places no retry of its own).
pub struct Steps {
    pub service: Arc<Service>,
    pub cluster: Cluster,
}

impl crate::orchestrate::executor::StepPlacer for Steps {
    fn run(&self, step: crate::orchestrate::executor::PlacedStep) -> crate::orchestrate::executor::Placed<'_> {
        Box::pin(self.place_step(step))
    }
}

impl Steps {
    async fn place_step(&self, step: crate::orchestrate::executor::PlacedStep) -> Option<Result<RunReport, RunError>> {
        let (service, cluster) = (&self.service, &self.cluster);
        let placed = match destination(service, cluster, &step.labels).await {
            Ok(Some(p)) => p,
            Ok(None) => return None,
            Err(e) => return Some(Err(RunError::host(e))),
        };
        let spec = &step.spec;
        let (Some(run_id), Some(token)) = (spec.run_id.clone(), spec.token.clone()) else {
            return Some(Err(RunError::host("a plan step's run has no id or token")));
        };
        let crate::runtime::Source::Path(path) = &spec.source else {
            return Some(Err(RunError::host("a plan step's component is not a file")));
        };
        let input = match spec.input.as_deref().map(serde_json::from_str::<serde_json::Value>).transpose() {
            Ok(input) => input,
            Err(e) => return Some(Err(RunError::InvalidInput(format!("task input is not valid JSON: {e}")))),
        };
        let component = ComponentRef::Path(path.display().to_string());
        let request = match SubmitRun::from_spec(spec, component, input) {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        let mut after = *service.host.log().stats().head.borrow();
        let attempt = match start(cluster, &run_id, &token, &request, &step.labels, Vec::new(), Some(placed)).await {
            Ok(Some((attempt, _))) => attempt,
            // The chosen node cannot be reached (nothing was sent): this node, a member too, runs it.
            Ok(None) if has_labels(service, &step.labels) => return None,
            Ok(None) => return Some(Err(RunError::host("the node chosen for the step cannot be reached"))),
            // Refused there, and recorded there as a refusal: the plan reads it as the attempt's outcome.
            Err(e) => {
                let outcome = Outcome::from_name(&e.code).unwrap_or(Outcome::HostError);
                return Some(Ok(RunReport::failed_before_start(outcome, e.message)));
            }
        };
        tracing::info!(run_id = %run_id, node = attempt.node, "plan step placed on another node");
        let limit = spec.limits.timeout.unwrap_or(Duration::from_secs(3600)).saturating_add(FOLLOW_SLACK);
        let report = ended_report(service, cluster, &attempt, &mut after, &step.cancel, limit).await;
        Some(report.map(|r| RunReport::from_json(&r)).map_err(RunError::host))
    }
}
