//! Events through the API: a filtered listing (as `toka-host events`), and a live stream as server-sent events,
//! resumable from a sequence number (`?since=SEQ`, or the `Last-Event-ID` a reconnecting client sends). The stream
//! wakes when this process commits an event, and also looks for events other processes wrote every half second.

use super::Service;
use super::api::EventView;
use super::auth;
use super::error::ApiError;
use crate::events::{self, EventRecord, Filter};
use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use utoipa::IntoParams;

/// Most events in one listing or one read of the stream.
const MAX_PAGE: usize = 1000;

#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// Only events of this agent.
    pub agent: Option<String>,
    /// Only events of this run.
    pub run: Option<String>,
    /// Only events of this kind (`run` matches `run.started`, `run.completed` ...).
    pub kind: Option<String>,
    /// Only events of this plan: its `plan.*` and `step.*` events, its steps' runs and the runs they spawned.
    pub plan: Option<String>,
    /// Only events with this sequence number or later.
    pub since: Option<u64>,
    /// At most this many (default 100, at most 1000): the last N, or with `since` the first N from there.
    pub limit: Option<usize>,
}

pub fn view(r: EventRecord) -> EventView {
    EventView {
        seq: r.seq,
        time_ms: r.time_ms,
        kind: r.kind,
        agent: r.agent,
        run_id: r.run_id,
        payload: r.payload,
        prev_hash: r.prev_hash,
        hash: r.hash,
    }
}

/// The filter of a query, narrowed to what the bearer may see.
fn filter(bearer: &auth::Bearer, q: &EventQuery) -> Result<Option<Filter>, ApiError> {
    let agent = match (bearer.scope(), &q.agent) {
        (Some(mine), Some(asked)) if mine != *asked => return Ok(None),
        (Some(mine), _) => Some(mine),
        (None, asked) => asked.clone(),
    };
    for v in [&q.agent, &q.run, &q.kind].into_iter().flatten() {
        if v.len() > crate::bounds::MAX_ID {
            return Err(ApiError::bad_request("filters are at most 256 bytes"));
        }
    }
    if let Some(plan) = &q.plan {
        super::plans::check_plan_filter(plan)?;
    }
    Ok(Some(Filter { agent, run_id: q.run.clone(), kind: q.kind.clone(), after: None, limit: None }))
}

/// The log's last sequence number when a listing was read (a client catching up knows how far it has to go).
pub const HEAD_HEADER: &str = "x-toka-log-head";

type Listing = ([(&'static str, String); 1], Json<Vec<EventView>>);

/// List events, oldest first.
#[utoipa::path(get, path = "/v1/events", params(EventQuery),
    responses((status = 200, body = Vec<EventView>,
        headers(("x-toka-log-head" = u64, description = "The log's last sequence number when it was read")))),
    security(("bearer" = [])))]
pub async fn list(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    Query(q): Query<EventQuery>,
) -> Result<Listing, ApiError> {
    let bearer = auth::reader(&service.host, &headers)?;
    let filter = filter(&bearer, &q)?;
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let db = service.host.db().clone();
    let since = q.since;
    let plan = q.plan.clone();
    let (head, mut records) = tokio::task::spawn_blocking(move || -> Result<_, redb::Error> {
        let head = events::last_seq(&db)?;
        let Some(mut f) = filter else { return Ok((head, Vec::new())) };
        let Some(plan) = plan else {
            f.after = since.map(|s| s.saturating_sub(1));
            f.limit = since.map(|_| limit);
            return Ok((head, events::read(&db, &f)?));
        };
        // A plan's events are known by reading in order from the start (its runs are learnt from its steps, so
        // the kind filter applies after the scope).
        let mut scope = super::plans::PlanScope::new(&plan);
        let kind = f.kind.take();
        let mut records: Vec<EventRecord> = events::read(&db, &f)?
            .into_iter()
            .filter(|r| scope.takes(r) && kind.as_deref().is_none_or(|k| kind_matches(k, &r.kind)))
            .collect();
        if let Some(since) = since {
            records.retain(|r| r.seq >= since);
            records.truncate(limit);
        }
        Ok((head, records))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    if since.is_none() {
        let skip = records.len().saturating_sub(limit);
        records.drain(..skip);
    }
    Ok(([(HEAD_HEADER, head.to_string())], Json(records.into_iter().map(view).collect())))
}

/// Stream events as server-sent events (`id` is the sequence number, `event` the kind, `data` the event as JSON).
/// Starts after `Last-Event-ID` if the client sends one, else at `since`, else at the end of the log.
#[utoipa::path(get, path = "/v1/events/stream", params(EventQuery),
    responses((status = 200, description = "text/event-stream of EventView"), (status = 401, body = super::api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn stream(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    Query(q): Query<EventQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>>, ApiError> {
    let bearer = auth::reader(&service.host, &headers)?;
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    let filter = filter(&bearer, &q)?;
    let db = service.host.db().clone();
    // Where to start: after the last event the client saw, else from `since`, else after the current end.
    let after = match (resume, q.since) {
        (Some(seen), _) => seen,
        (None, Some(since)) => since.saturating_sub(1),
        (None, None) => {
            let db = db.clone();
            tokio::task::spawn_blocking(move || events::last_seq(&db))
                .await
                .map_err(ApiError::internal)?
                .map_err(ApiError::internal)?
        }
    };
    let scope = match &q.plan {
        None => None,
        Some(plan) => {
            // A stream that starts mid-plan first learns the runs the plan already has.
            let (db, plan) = (db.clone(), plan.clone());
            let scope = tokio::task::spawn_blocking(move || {
                let mut scope = super::plans::PlanScope::new(&plan);
                scope.learn(&db, after).map(|()| scope)
            })
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?;
            Some(scope)
        }
    };
    // With a plan, the kind filter applies after the plan's scope (which learns its runs from its steps' events).
    let (filter, kind) = match (filter, &scope) {
        (Some(mut f), Some(_)) => {
            let kind = f.kind.take();
            (Some(f), kind)
        }
        (filter, _) => (filter, None),
    };
    let tail = Tail {
        db,
        filter,
        scope,
        kind,
        after,
        pending: std::collections::VecDeque::new(),
        head: service.host.log().stats().head.subscribe(),
        shutdown: service.shutdown.clone(),
    };
    let stream = futures_util::stream::unfold(tail, |mut tail| async move {
        let record = tail.next().await?;
        let event = Event::default()
            .id(record.seq.to_string())
            .event(record.kind.clone())
            .data(serde_json::to_string(&view(record)).unwrap_or_default());
        Some((Ok(event), tail))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// A stream's position in the log.
struct Tail {
    db: crate::db::Db,
    /// `None`: the bearer may see nothing this query asks for (the stream stays open and empty).
    filter: Option<Filter>,
    /// Only the events of one plan.
    scope: Option<super::plans::PlanScope>,
    /// With a plan: only events of this kind (applied after the scope).
    kind: Option<String>,
    after: u64,
    pending: std::collections::VecDeque<EventRecord>,
    head: tokio::sync::watch::Receiver<u64>,
    shutdown: tokio_util::sync::CancellationToken,
}

impl Tail {
    /// The next matching event, waiting for it; `None` when the server shuts down or the log cannot be read.
    async fn next(&mut self) -> Option<EventRecord> {
        loop {
            if let Some(r) = self.pending.pop_front() {
                return Some(r);
            }
            if let Some(filter) = &self.filter {
                let (db, filter, after) = (self.db.clone(), filter.clone(), self.after);
                let scanned = tokio::task::spawn_blocking(move || events::scan(&db, &filter, after, SCAN)).await;
                let (records, last, more) = scanned.ok()?.ok()?;
                self.after = self.after.max(last);
                match &mut self.scope {
                    None => self.pending.extend(records),
                    Some(scope) => {
                        let kind = self.kind.as_deref();
                        let mine = records.into_iter().filter(|r| scope.takes(r));
                        self.pending.extend(mine.filter(|r| kind.is_none_or(|k| kind_matches(k, &r.kind))));
                    }
                }
                if more || !self.pending.is_empty() {
                    continue;
                }
            }
            tokio::select! {
                changed = self.head.changed() => if changed.is_err() { return None },
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
                () = self.shutdown.cancelled() => return None,
            }
        }
    }
}

/// Whether an event of kind `kind` matches the filter `k` (`run` matches `run.started` ...), as the log's filter does.
fn kind_matches(k: &str, kind: &str) -> bool {
    kind == k || kind.strip_prefix(k).is_some_and(|rest| rest.starts_with('.'))
}

/// Records read at most per look at the log.
const SCAN: usize = 4096;
