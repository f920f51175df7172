//! Node to node over HTTP, on the service's own server: Raft's RPCs (`/v1/raft/append`, `vote`, `snapshot`), writes
//! forwarded to the leader (`/v1/raft/write`), and the cluster's operator routes (`/v1/cluster/status`, `nodes`,
//! `revoke`). Every one of them needs `Authorization: Bearer <the cluster's secret>`; anything else is refused with
//! 401 before a byte of the body is looked at by Raft.
//!
//! Bodies are JSON (openraft's own message types) and size-capped. This module must never apply or store anything
//! itself: it hands requests to the node's Raft and answers with what Raft says.

use super::placement::{LoadReport, PlaceError, PlaceRequest, Placed, check_labels};
use super::{Cluster, NodeId, Outcome, Proposal, TypeConfig};
use crate::events::{AppendError, Applied};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use openraft::error::{
    ClientWriteError, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, ClientWriteResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, ChangeMembers, RaftNetwork, RaftNetworkFactory};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Largest body a cluster route reads (a snapshot chunk is at most [`super::SNAPSHOT_CHUNK`] bytes, as JSON).
pub const MAX_BODY: usize = 64 << 20;

/// Most bytes of entries one append carries when it holds more than one (a few state values of 1 MiB at most).
const MAX_APPEND_BYTES: usize = 4 << 20;

/// The HTTP client nodes talk to each other with (plain HTTP or https with the platform's roots).
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_default()
}

/// A client that keeps no idle connection: each request connects anew, so a node cut off since the last request is
/// found out by the connect timeout (nothing sent, safe to go elsewhere), never by a request written into a pooled
/// connection that silently leads nowhere (whose fate would be unknown).
pub fn fresh_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap_or_default()
}

/// Makes a [`Peer`] per node Raft talks to.
pub struct Peers {
    client: reqwest::Client,
    secret: String,
}

impl Peers {
    pub fn new(client: reqwest::Client, secret: String) -> Peers {
        Peers { client, secret }
    }
}

impl RaftNetworkFactory<TypeConfig> for Peers {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer { client: self.client.clone(), secret: self.secret.clone(), target, addr: node.addr.clone() }
    }
}

/// One node as Raft reaches it.
pub struct Peer {
    client: reqwest::Client,
    secret: String,
    target: NodeId,
    addr: String,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl Peer {
    async fn call<Req, Resp, E>(&self, route: &str, request: &Req, timeout: Duration) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        let body = serde_json::to_vec(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.send(route, body, timeout).await
    }

    /// Sends an encoded request.
    async fn send<Resp, E>(&self, route: &str, body: Vec<u8>, timeout: Duration) -> RpcResult<Resp, E>
    where
        Resp: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        let url = format!("{}/v1/raft/{route}", self.addr);
        let request = self.client.post(&url).bearer_auth(&self.secret).timeout(timeout);
        let sent = request.header(reqwest::header::CONTENT_TYPE, "application/json").body(body).send().await;
        let response = sent.map_err(|e| {
            // Not reached at all: Raft backs off before trying this node again.
            if e.is_connect() {
                RPCError::Unreachable(Unreachable::new(&e))
            } else {
                RPCError::Network(NetworkError::new(&e))
            }
        })?;
        if !response.status().is_success() {
            let why = std::io::Error::other(format!("node {} answered {} to {route}", self.target, response.status()));
            return Err(RPCError::Network(NetworkError::new(&why)));
        }
        let body: Result<Resp, RaftError<NodeId, E>> =
            response.json().await.map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        body.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        // Raft gives an append one heartbeat interval to be sent, stored durably and answered, and the receiver
        // refuses a body over its limit: a batch of big entries (state values) would fail every time and replication
        // to a node catching up would stall. Raft is asked for fewer entries instead; one entry always goes (an
        // operation is bounded far below the limit).
        let body = serde_json::to_vec(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if rpc.entries.len() > 1 && body.len() > MAX_APPEND_BYTES {
            let (mut fit, mut total) = (0u64, 4096usize);
            for entry in &rpc.entries {
                total = total.saturating_add(serde_json::to_vec(entry).map_or(usize::MAX, |b| b.len() + 1));
                if total > MAX_APPEND_BYTES {
                    break;
                }
                fit += 1;
            }
            return Err(RPCError::PayloadTooLarge(openraft::error::PayloadTooLarge::new_entries_hint(fit.max(1))));
        }
        self.send("append", body, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call("snapshot", &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.call("vote", &rpc, option.hard_ttl()).await
    }
}

/// What became of a write forwarded to the leader.
pub enum Forwarded {
    /// The leader answered (applied, or failed in a way that must not be retried).
    Done(Result<Applied, AppendError>),
    /// The leader committed and applied it as entry `.1` of the log (this node may not have applied it yet).
    Committed(Result<Applied, AppendError>, u64),
    /// The leader could not be reached: nothing was sent, the write may go elsewhere.
    NotSent,
    /// The node reached no longer leads: it appended nothing.
    NotLeader,
}

/// What a write through Raft answers.
pub type WriteAnswer = Result<ClientWriteResponse<TypeConfig>, RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>>;

/// Forwards `op` to the leader at `addr`.
pub async fn forward(client: &reqwest::Client, addr: &str, secret: &str, op: &str, timeout: Duration) -> Forwarded {
    let unknown = |why: String| {
        Forwarded::Done(Err(AppendError::Storage(format!(
            "cluster: forwarding to the leader at {addr} failed ({}); the operation's outcome is unknown",
            crate::error::one_line(&why)
        ))))
    };
    let url = format!("{addr}/v1/raft/write");
    let proposal = Proposal { op: op.to_string() };
    let response = match client.post(&url).bearer_auth(secret).timeout(timeout).json(&proposal).send().await {
        Ok(r) => r,
        Err(e) if e.is_connect() => return Forwarded::NotSent,
        Err(e) => return unknown(e.to_string()),
    };
    if response.status() == StatusCode::UNAUTHORIZED {
        // Refused at the door: nothing was appended, and a retry would be refused the same way.
        return Forwarded::Done(Err(AppendError::Storage(format!(
            "cluster: the leader at {addr} refused this node's credentials; the operation was not recorded"
        ))));
    }
    match response.json::<WriteAnswer>().await {
        Ok(Ok(written)) => Forwarded::Committed(written.data.into_result(), written.log_id.index),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => Forwarded::NotLeader,
        Ok(Err(e)) => unknown(e.to_string()),
        Err(e) => unknown(e.to_string()),
    }
}

/// A refusal or failure, as the service's errors are shaped.
fn error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response {
    let body =
        serde_json::json!({ "error": { "code": code, "message": crate::error::one_line(&message.to_string()) } });
    (status, Json(body)).into_response()
}

/// Refuses a request that does not carry the cluster's secret.
pub fn authenticate(cluster: &Cluster, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match bearer {
        Some(b) if cluster.bundle.authenticates(b) => Ok(()),
        Some(_) => Err(Box::new(error(StatusCode::UNAUTHORIZED, "unauthorized", "not this cluster's secret"))),
        None => Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing Authorization: Bearer <cluster secret>",
        ))),
    }
}

/// The cluster's routes, to merge into the service's router.
pub fn routes(cluster: Cluster) -> Router {
    use axum::routing::{delete, get, post};
    Router::new()
        .route("/v1/raft/append", post(append))
        .route("/v1/raft/vote", post(vote))
        .route("/v1/raft/snapshot", post(snapshot))
        .route("/v1/raft/write", post(write))
        .route("/v1/cluster/status", get(status))
        .route("/v1/cluster/nodes", post(add_node))
        .route("/v1/cluster/nodes/{id}", delete(remove_node))
        .route("/v1/cluster/revoke", post(revoke))
        .route("/v1/cluster/load", post(load))
        .route("/v1/cluster/place", post(place_run))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(cluster)
}

/// Parses a body only once the caller is authenticated (an unauthenticated body is never parsed).
fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Box<Response>> {
    serde_json::from_slice(bytes).map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, "invalid-request", e)))
}

async fn append(State(c): State<Cluster>, headers: HeaderMap, bytes: axum::body::Bytes) -> Response {
    if let Err(r) = authenticate(&c, &headers) {
        return *r;
    }
    match body::<AppendEntriesRequest<TypeConfig>>(&bytes) {
        Ok(rpc) => Json(c.raft.append_entries(rpc).await).into_response(),
        Err(r) => *r,
    }
}

async fn vote(State(c): State<Cluster>, headers: HeaderMap, bytes: axum::body::Bytes) -> Response {
    if let Err(r) = authenticate(&c, &headers) {
        return *r;
    }
    match body::<VoteRequest<NodeId>>(&bytes) {
        Ok(rpc) => Json(c.raft.vote(rpc).await).into_response(),
        Err(r) => *r,
    }
}

async fn snapshot(State(c): State<Cluster>, headers: HeaderMap, bytes: axum::body::Bytes) -> Response {
    if let Err(r) = authenticate(&c, &headers) {
        return *r;
    }
    match body::<InstallSnapshotRequest<TypeConfig>>(&bytes) {
        Ok(rpc) => Json(c.raft.install_snapshot(rpc).await).into_response(),
        Err(r) => *r,
    }
}

async fn write(State(c): State<Cluster>, headers: HeaderMap, bytes: axum::body::Bytes) -> Response {
    if let Err(r) = authenticate(&c, &headers) {
        return *r;
    }
    let proposal = match body::<Proposal>(&bytes) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    // The leader checks what it is handed as a local submitter's bytes are checked: it must read back.
    if let Err(e) = serde_json::from_str::<crate::kernel::Operation>(&proposal.op) {
        let answer: WriteAnswer = Ok(ClientWriteResponse {
            log_id: Default::default(),
            data: Outcome::Failed {
                kind: "unreadable".into(),
                message: format!("the operation does not read back: {e}"),
            },
            membership: None,
        });
        return Json(answer).into_response();
    }
    let answer: WriteAnswer = c.raft.client_write(proposal).await;
    Json(answer).into_response()
}

/// A node's view of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub cluster: String,
    pub node_id: NodeId,
    /// `Leader`, `Follower`, `Candidate`, `Learner` or `Shutdown`.
    pub state: String,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// The last snapshot this node built or installed, and the last log index it purged.
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub voters: BTreeSet<NodeId>,
    /// Every node of the membership and its address.
    pub nodes: BTreeMap<NodeId, String>,
    /// Operations and events in this node's database, and the hash (hex) of its last event.
    pub ops: u64,
    pub events: u64,
    pub head: String,
    /// `local` (this node's database as it stands) or `leader` (checked with the leader first: every write
    /// acknowledged before the request is included).
    pub read: String,
    /// With `leader`: the log index the leader confirmed, which this node had applied before answering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_index: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct StatusQuery {
    #[serde(default)]
    linearizable: bool,
    /// Set by a follower asking the leader for a read index: answered only by a node that leads (no second hop).
    #[serde(default)]
    forwarded: bool,
}

/// The read index of the leader at `addr` (it confirms its leadership with a majority first).
pub async fn read_index(client: &reqwest::Client, addr: &str, secret: &str) -> Result<Option<u64>, String> {
    let url = format!("{addr}/v1/cluster/status?linearizable=true&forwarded=true");
    let response = client.get(&url).bearer_auth(secret).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("it answered {}", response.status()));
    }
    let status: Status = response.json().await.map_err(|e| e.to_string())?;
    Ok(status.read_index)
}

/// The last operation's sequence number, the last event's, and its hash.
fn heads(db: &crate::db::Db) -> Result<(u64, u64, String), redb::Error> {
    use redb::{ReadableDatabase, ReadableTable};
    let txn = db.redb().begin_read()?;
    let ops = txn.open_table(crate::db::OPS)?.last()?.map_or(0, |(k, _)| k.value());
    let (events, head) = match txn.open_table(crate::db::EVENTS)?.last()? {
        Some((k, v)) => (k.value(), hex::encode(v.value().get(..32).unwrap_or_default())),
        None => (0, hex::encode(crate::events::GENESIS)),
    };
    Ok((ops, events, head))
}

async fn status(State(c): State<Cluster>, headers: HeaderMap, Query(q): Query<StatusQuery>) -> Response {
    if let Err(r) = authenticate(&c, &headers) {
        return *r;
    }
    let mut read_index = None;
    if q.linearizable {
        // A leader cut off from its majority would wait for acknowledgements that never come: bounded.
        let bound = c.leaderless_after();
        let checked = match tokio::time::timeout(bound, c.linearizable_read(q.forwarded)).await {
            Ok(Ok(index)) => {
                read_index = index;
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("no majority confirmed the leader within {}", humantime::format_duration(bound))),
        };
        if let Err(e) = checked {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no-leader",
                format!("a leader-checked read is not possible: {e}"),
            );
        }
    }
    let m = c.raft.metrics().borrow().clone();
    let db = c.db.clone();
    let (ops, events, head) = match tokio::task::spawn_blocking(move || heads(&db)).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, "host-error", e),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "host-error", e),
    };
    let membership = m.membership_config.membership();
    Json(Status {
        cluster: c.bundle.cluster.clone(),
        node_id: c.node_id,
        state: format!("{:?}", m.state),
        leader: m.current_leader,
        term: m.current_term,
        last_log_index: m.last_log_index,
        applied_index: m.last_applied.map(|l| l.index),
        snapshot_index: m.snapshot.map(|l| l.index),
        purged_index: m.purged.map(|l| l.index),
        voters: membership.voter_ids().collect(),
        nodes: membership.nodes().map(|(id, n)| (*id, n.addr.clone())).collect(),
        ops,
        events,
        head,
        read: if q.linearizable { "leader" } else { "local" }.into(),
        read_index,
    })
    .into_response()
}

/// Not the leader: where it is (421, so the caller asks it instead).
fn not_leader(c: &Cluster) -> Response {
    let m = c.raft.metrics().borrow().clone();
    let leader = m.current_leader.and_then(|l| m.membership_config.membership().get_node(&l).map(|n| n.addr.clone()));
    let body = serde_json::json!({
        "error": { "code": "not-leader", "message": "this node does not lead the cluster" },
        "leader": leader,
    });
    (StatusCode::MISDIRECTED_REQUEST, Json(body)).into_response()
}

/// A membership change's failure.
fn membership_error(c: &Cluster, e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> Response {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => not_leader(c),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => error(StatusCode::CONFLICT, "membership", e),
        other => error(StatusCode::SERVICE_UNAVAILABLE, "cluster", other),
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddNode {
    pub node_id: NodeId,
    pub addr: String,
}

/// Adds a node: as a learner (until it has caught up), then as a voter.
async fn add_node(State(c): State<Cluster>, headers: HeaderMap, bytes: axum::body::Bytes) -> Response {
    if let Err(r) = authenticate(&c, &headers) {
        return *r;
    }
    let add: AddNode = match body(&bytes) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    if let Err(why) = super::bundle::check_addr(&add.addr) {
        return error(StatusCode::BAD_REQUEST, "invalid-request", why);
    }
    let node = BasicNode { addr: add.addr.trim_end_matches('/').to_string() };
    if let Err(e) = c.raft.add_learner(add.node_id, node, true).await {
        return membership_error(&c, e);
    }
    match c.raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([add.node_id])), false).await {
        Ok(done) => Json(serde_json::json!({ "added": add.node_id, "log_index": done.log_id.index })).into_response(),
        Err(e) => membership_error(&c, e),
    }
}

/// Removes a node from the voters and from the cluster.
async fn remove_node(State(c): State<Cluster>, headers: HeaderMap, Path(id): Path<NodeId>) -> Response {
    if let Err(r) = authenticate(&c, &headers) {
        return *r;
    }
    match c.raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false).await {
        Ok(done) => Json(serde_json::json!({ "removed": id, "log_index": done.log_id.index })).into_response(),
        Err(e) => membership_error(&c, e),
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revoke {
    pub token_id: String,
}

/// Revokes a token on every node: one replicated operation, acknowledged once applied here.
async fn revoke(State(c): State<Cluster>, headers: HeaderMap, bytes: axum::body::Bytes) -> Response {
    if let Err(r) = authenticate(&c, &headers) {
        return *r;
    }
    let revoke: Revoke = match body(&bytes) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let mut op = crate::journal::operation(crate::kernel::Op::RevokeToken { token_id: revoke.token_id });
    if let Err(why) = crate::bounds::bound_operation(&mut op) {
        return error(StatusCode::BAD_REQUEST, "invalid-request", why);
    }
    let text = serde_json::to_string(&op).expect("an operation serializes");
    match c.write(text).await {
        Ok(applied) => match applied.rejected {
            None => Json(serde_json::json!({ "op_seq": applied.op_seq })).into_response(),
            Some(why) => error(StatusCode::CONFLICT, "rejected", why),
        },
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "cluster", e),
    }
}

/// A placement request's body, for the leader: authenticated, parsed, its labels checked (400), and refused with 421
/// by a node that does not lead.
fn for_leader<T: serde::de::DeserializeOwned>(
    c: &Cluster,
    headers: &HeaderMap,
    bytes: &[u8],
    labels: impl Fn(&T) -> &[String],
) -> Result<T, Box<Response>> {
    authenticate(c, headers)?;
    let taken: T = body(bytes)?;
    if let Err(why) = check_labels(labels(&taken)) {
        return Err(Box::new(error(StatusCode::BAD_REQUEST, "invalid-request", why)));
    }
    if !matches!(c.leadership(), super::Leadership::Leads) {
        return Err(Box::new(not_leader(c)));
    }
    Ok(taken)
}

/// A node's load report, taken by the leader (421 from a node that does not lead).
async fn load(State(c): State<Cluster>, headers: HeaderMap, bytes: axum::body::Bytes) -> Response {
    let report = match for_leader(&c, &headers, &bytes, |r: &LoadReport| &r.labels) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    // Only members are kept (the table stays as small as the cluster).
    if !c.members().contains_key(&report.node) {
        return error(StatusCode::BAD_REQUEST, "invalid-request", format!("node {} is not a member", report.node));
    }
    c.loads.record(report);
    StatusCode::NO_CONTENT.into_response()
}

/// A node for a run, chosen by the leader (421 from a node that does not lead; 409 `no-node` if none fits).
async fn place_run(State(c): State<Cluster>, headers: HeaderMap, bytes: axum::body::Bytes) -> Response {
    let request = match for_leader(&c, &headers, &bytes, |r: &PlaceRequest| &r.labels) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    match c.place(&request).await {
        Ok(placed) => Json(placed).into_response(),
        Err(PlaceError::NoNode(why)) => error(StatusCode::CONFLICT, "no-node", why),
        Err(PlaceError::NoLeader(why)) => error(StatusCode::SERVICE_UNAVAILABLE, "no-leader", why),
    }
}

/// Sends this node's load report to the leader at `addr` (best effort: errors are dropped, the next report follows).
pub async fn report(client: &reqwest::Client, addr: &str, secret: &str, report: &LoadReport) {
    let sent = client
        .post(format!("{addr}/v1/cluster/load"))
        .bearer_auth(secret)
        .json(report)
        .timeout(super::placement::REPORT_EVERY * 2)
        .send()
        .await;
    if let Ok(r) = sent
        && !r.status().is_success()
        && r.status() != StatusCode::MISDIRECTED_REQUEST
    {
        tracing::debug!(status = %r.status(), "placement: the leader refused this node's load report");
    }
}

/// Asks the leader at `addr` for a node to run on.
pub async fn place(
    client: &reqwest::Client,
    addr: &str,
    secret: &str,
    request: &PlaceRequest,
) -> Result<Placed, PlaceError> {
    let sent = client
        .post(format!("{addr}/v1/cluster/place"))
        .bearer_auth(secret)
        .json(request)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| PlaceError::NoLeader(format!("the leader at {addr} did not answer: {e}")))?;
    let status = sent.status();
    let text = sent.text().await.unwrap_or_default();
    if status.is_success() {
        return serde_json::from_str(&text)
            .map_err(|e| PlaceError::NoLeader(format!("the leader at {addr} answered an unreadable placement: {e}")));
    }
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(String::from))
        .unwrap_or_else(|| status.to_string());
    if status == StatusCode::CONFLICT {
        Err(PlaceError::NoNode(message))
    } else {
        Err(PlaceError::NoLeader(format!("the leader at {addr} answered {status}: {message}")))
    }
}
