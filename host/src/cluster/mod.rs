//! The cluster: nodes that agree on one log of the kernel's operations (openraft), each applying it with the same
//! deterministic kernel to its own database, so that events and their hash chains are byte-identical everywhere and a
//! revocation written through any node is enforced by every node.
//!
//! - [`store`]: the Raft log and vote on redb, in the node's database.
//! - [`machine`]: the state machine: applies committed operations through the record layer's own batch commit
//!   ([`crate::events::log::apply_replicated`]), snapshots (the replicated tables, whole) and their installation.
//! - [`network`]: node to node over HTTP on the service's server (`/v1/raft/*`), and the membership and status routes
//!   (`/v1/cluster/*`), every one behind the cluster's secret.
//! - [`bundle`]: what `toka-host cluster init` makes and every node's home holds: the cluster's id, secret, founder
//!   and root keys.
//!
//! A write (an operation) goes to the leader: a follower forwards it over HTTP. A write is retried elsewhere only
//! when it provably was not appended (this node or the one it reached was not the leader, or it could not be
//! reached at all); otherwise its outcome is reported as unknown, never guessed, so it can be neither lost silently
//! nor recorded twice by a retry.
//!
//! This layer sits below the faces and above the record layer: it must never import a face (commands, service),
//! the host object or the sandbox, and the record layer never imports it (see `layers.rs`).

pub mod bundle;
pub mod machine;
pub mod network;
pub mod placement;
pub mod store;

use crate::db::Db;
use crate::events::{AppendError, Applied, log::LogStats};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Raft};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

pub use bundle::Bundle;

/// A node's id in its cluster.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The cluster's Raft types: an entry carries one operation's exact JSON; a snapshot is held in memory.
    pub TypeConfig:
        D = Proposal,
        R = Outcome,
        NodeId = NodeId,
        Node = BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// The Raft handle of a node.
pub type ClusterRaft = Raft<TypeConfig>;

/// One operation proposed to the cluster: the exact JSON bytes its submitter encoded (and checked to read back),
/// which every node stores and applies as they are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    pub op: String,
}

/// What applying an entry did, as it travels back to whoever proposed it (possibly through a forwarding node).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    /// Not an operation (a membership change, a new leader's blank entry).
    None,
    Applied {
        op_seq: u64,
        /// Each event's sequence number and hash (hex).
        events: Vec<(u64, String)>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rejected: Option<String>,
        /// For a state write: whether its key held a value before.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state_existed: Option<bool>,
    },
    Failed {
        /// `unreadable`, `invalid`, `too-large`, `unanchored` or `storage`.
        kind: String,
        message: String,
    },
}

impl Outcome {
    pub fn of(result: Result<Applied, AppendError>) -> Outcome {
        match result {
            Ok(a) => Outcome::Applied {
                op_seq: a.op_seq,
                events: a.events.iter().map(|e| (e.seq, hex::encode(e.hash))).collect(),
                rejected: a.rejected,
                state_existed: a.state_existed,
            },
            Err(e) => {
                let kind = match &e {
                    AppendError::Unreadable(_) => "unreadable",
                    AppendError::Invalid(_) => "invalid",
                    AppendError::PayloadTooLarge(_) => "too-large",
                    AppendError::Unanchored(_) => "unanchored",
                    _ => "storage",
                };
                let message = match e {
                    AppendError::Unreadable(m) | AppendError::Invalid(m) | AppendError::Unanchored(m) => m,
                    other => other.to_string(),
                };
                Outcome::Failed { kind: kind.into(), message }
            }
        }
    }

    /// Back into what a submitter of the event log expects.
    pub fn into_result(self) -> Result<Applied, AppendError> {
        match self {
            Outcome::Applied { op_seq, events, rejected, state_existed } => {
                let mut acks = Vec::with_capacity(events.len());
                for (seq, hash) in events {
                    let mut h = [0u8; 32];
                    hex::decode_to_slice(&hash, &mut h).map_err(|_| {
                        AppendError::Storage(format!("cluster: event {seq}'s hash is not 32 hex bytes"))
                    })?;
                    acks.push(crate::events::Ack { seq, hash: h });
                }
                Ok(Applied { op_seq, events: acks, rejected, state_existed })
            }
            Outcome::Failed { kind, message } => Err(match kind.as_str() {
                "unreadable" => AppendError::Unreadable(message),
                "invalid" => AppendError::Invalid(message),
                "unanchored" => AppendError::Unanchored(message),
                _ => AppendError::Storage(message),
            }),
            Outcome::None => Err(AppendError::Storage("cluster: the entry was not an operation".into())),
        }
    }
}

/// Largest snapshot chunk sent in one request (a snapshot is sent in chunks of this, each a JSON body).
pub const SNAPSHOT_CHUNK: u64 = 4 << 20;

/// How a node's Raft runs.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Heartbeats every this many milliseconds; elections after 3-6 of them without one.
    pub heartbeat_ms: u64,
    /// A snapshot (and the purge of the log before it) after this many entries.
    pub snapshot_every: u64,
    /// How long a write may wait for a leader (elections, forwarding) before it is reported as not recorded.
    pub write_timeout: Duration,
    /// A node that has known no leader for this long (a follower or candidate that hears from none, or a leader
    /// that has had no acknowledgement from a majority for this long) refuses a write at once instead of waiting out
    /// the write timeout: it is cut off from a majority, and an election would have been over long before.
    pub leaderless_after: Duration,
    /// A node the leader has not heard from for this long is lost, and its runs with it (see [`placement`]).
    pub node_timeout: Duration,
}

impl ClusterOptions {
    /// The default leaderless bound for heartbeats every `heartbeat_ms`: 20 heartbeats (about 3 election timeouts),
    /// at least one second, so that an ordinary election on a busy machine never trips it.
    pub fn leaderless_for(heartbeat_ms: u64) -> Duration {
        Duration::from_millis((heartbeat_ms * 20).max(1_000))
    }
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            heartbeat_ms: 100,
            snapshot_every: 20_000,
            write_timeout: Duration::from_secs(30),
            leaderless_after: ClusterOptions::leaderless_for(100),
            node_timeout: Duration::from_secs(5),
        }
    }
}

/// A running node: its Raft, its identity, and the client it forwards writes with. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    pub raft: ClusterRaft,
    pub node_id: NodeId,
    pub bundle: Arc<Bundle>,
    pub db: Db,
    client: reqwest::Client,
    /// For runs placed on other nodes: a connection per request (see [`network::fresh_client`]).
    fresh: reqwest::Client,
    runtime: tokio::runtime::Handle,
    write_timeout: Duration,
    leaderless_after: Duration,
    /// The leader's view of the nodes' load (see [`placement`]).
    loads: Arc<placement::Loads>,
    node_timeout: Duration,
    /// When this process started this node (Unix ms): runs recorded on this node before it are not running.
    boot_ms: u64,
}

/// Whom a node takes for its leader, now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leadership {
    /// This node leads, and a majority acknowledged it within the leaderless bound.
    Leads,
    /// This node follows a leader it knows.
    Follows(NodeId),
    /// No leader: an election is under way, this node is cut off from a majority, or it leads without a majority's
    /// acknowledgement for longer than the bound (`stale_ms`: since the last one, if it leads).
    None { stale_ms: Option<u64> },
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("node_id", &self.node_id).field("cluster", &self.bundle.cluster).finish()
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("cluster: invalid Raft configuration: {0}")]
    Config(String),
    #[error("cluster: cannot open the Raft log: {0}")]
    Storage(String),
    #[error("cluster: {0}")]
    Raft(String),
}

impl Cluster {
    /// Starts node `node_id` of `bundle`'s cluster on `db` (must be called inside a tokio runtime). The founder
    /// (the bundle's first node) initializes a cluster of itself when its log is empty; every other node waits to be
    /// added (`toka-host cluster join`).
    pub async fn start(
        node_id: NodeId,
        bundle: Bundle,
        db: Db,
        signer: Option<crate::events::Signer>,
        stats: Arc<LogStats>,
        options: &ClusterOptions,
    ) -> Result<Cluster, StartError> {
        let config = openraft::Config {
            cluster_name: bundle.cluster.clone(),
            heartbeat_interval: options.heartbeat_ms,
            election_timeout_min: options.heartbeat_ms * 3,
            election_timeout_max: options.heartbeat_ms * 6,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(options.snapshot_every.max(1)),
            max_in_snapshot_log_to_keep: (options.snapshot_every / 4).max(1),
            snapshot_max_chunk_size: SNAPSHOT_CHUNK,
            // A chunk is parsed and a snapshot installed within this (a node on a busy machine is not fast).
            install_snapshot_timeout: 10_000,
            ..Default::default()
        };
        let config = Arc::new(config.validate().map_err(|e| StartError::Config(e.to_string()))?);
        let bundle = Arc::new(bundle);
        let log_store = store::LogStore::open(db.clone()).map_err(|e| StartError::Storage(e.to_string()))?;
        let machine = machine::Machine::open(db.clone(), bundle.cluster.clone(), signer, stats)
            .map_err(|e| StartError::Storage(e.to_string()))?;
        let client = network::client();
        let factory = network::Peers::new(client.clone(), bundle.secret.clone());
        let raft = Raft::new(node_id, config, factory, log_store, machine)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let founder = &bundle.founder;
        if node_id == founder.id && !raft.is_initialized().await.map_err(|e| StartError::Raft(e.to_string()))? {
            let members = std::collections::BTreeMap::from([(node_id, BasicNode { addr: founder.addr.clone() })]);
            raft.initialize(members).await.map_err(|e| StartError::Raft(e.to_string()))?;
        }
        // A storage failure stops this node's Raft (fail closed: it never skips an entry it could not store or
        // apply). Said once in the node's log, with the cause; `/health` says it too.
        let mut metrics = raft.metrics();
        tokio::spawn(async move {
            while metrics.changed().await.is_ok() {
                let state = metrics.borrow().running_state.clone();
                match state {
                    Ok(()) | Err(openraft::error::Fatal::Stopped) => {}
                    Err(fatal) => {
                        let why = crate::error::one_line(&fatal.to_string());
                        tracing::error!(
                            node_id,
                            "cluster: this node's Raft stopped: {why}; restart it once the cause is fixed"
                        );
                        return;
                    }
                }
            }
        });
        Ok(Cluster {
            raft,
            node_id,
            bundle,
            db,
            client,
            fresh: network::fresh_client(),
            runtime: tokio::runtime::Handle::current(),
            write_timeout: options.write_timeout,
            leaderless_after: options.leaderless_after,
            loads: Arc::default(),
            node_timeout: options.node_timeout,
            boot_ms: crate::events::now_ms(),
        })
    }

    /// Stops this node's Raft (its log and state machine are durable as they stand).
    pub async fn shutdown(&self) {
        drop(self.raft.shutdown().await);
    }

    /// Whom this node takes for its leader (from its Raft metrics: no network round trip).
    pub fn leadership(&self) -> Leadership {
        let m = self.raft.metrics().borrow().clone();
        match (m.state, m.current_leader) {
            (openraft::ServerState::Leader, _) => match m.millis_since_quorum_ack {
                // A leader whose majority has not answered within the bound is cut off: the others elect another.
                Some(ms) if ms <= self.leaderless_after.as_millis() as u64 => Leadership::Leads,
                // A single-node cluster is its own majority.
                _ if m.membership_config.membership().voter_ids().count() <= 1 => Leadership::Leads,
                stale => Leadership::None { stale_ms: stale },
            },
            (_, Some(leader)) if leader != self.node_id => Leadership::Follows(leader),
            _ => Leadership::None { stale_ms: None },
        }
    }

    /// Proposes `op` through this node's Raft and waits for the answer; `None` if the write timeout passes or this
    /// node leads without a majority's acknowledgement for longer than the leaderless bound meanwhile (a leader cut
    /// off by a partition would otherwise hold the write until the partition heals).
    async fn propose(&self, op: &str, deadline: tokio::time::Instant) -> Option<network::WriteAnswer> {
        let proposed = self.raft.client_write(Proposal { op: op.to_string() });
        tokio::pin!(proposed);
        loop {
            let check = (tokio::time::Instant::now() + Duration::from_millis(100)).min(deadline);
            tokio::select! {
                answer = &mut proposed => return Some(answer),
                () = tokio::time::sleep_until(check) => {
                    if tokio::time::Instant::now() >= deadline {
                        return None;
                    }
                    if let Leadership::None { stale_ms: Some(ms) } = self.leadership()
                        && ms >= self.leaderless_after.as_millis() as u64
                    {
                        return None;
                    }
                }
            }
        }
    }

    /// Makes a read of this node's database linearizable: every write acknowledged before this call is applied here
    /// when it returns. The leader confirms with a majority that it still leads (its read index); a follower asks
    /// the leader for it (once: `forwarded` stops a second hop) and waits until it has applied as far. Fails without
    /// a leader; the caller bounds how long it may take.
    pub async fn linearizable_read(&self, forwarded: bool) -> Result<Option<u64>, String> {
        use openraft::error::CheckIsLeaderError;
        let leader = match self.raft.ensure_linearizable().await {
            Ok(read) => return Ok(read.map(|l| l.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) if !forwarded => {
                f.leader_id.filter(|l| *l != self.node_id).zip(f.leader_node)
            }
            Err(e) => return Err(crate::error::one_line(&e.to_string())),
        };
        let Some((id, node)) = leader else { return Err(format!("node {} knows no leader", self.node_id)) };
        let index = network::read_index(&self.client, &node.addr, &self.bundle.secret)
            .await
            .map_err(|e| format!("the leader (node {id}) did not confirm a read index: {e}"))?;
        self.raft
            .wait(None)
            .applied_index_at_least(index, "a linearizable read")
            .await
            .map_err(|e| format!("waiting to apply the leader's read index: {e}"))?;
        Ok(index)
    }

    /// The HTTP client this node hands runs to the others with: a new connection per request.
    pub fn http(&self) -> &reqwest::Client {
        &self.fresh
    }

    /// How long a node may know no leader before it refuses writes at once.
    pub fn leaderless_after(&self) -> Duration {
        self.leaderless_after
    }

    /// Proposes `op` (an operation's JSON) and waits until it is applied: through this node's Raft if it leads,
    /// else forwarded to the leader. Retried (within the write timeout) only while it provably was not appended.
    /// A node that has known no leader for [`ClusterOptions::leaderless_after`] refuses it (not recorded) rather than
    /// waiting out the write timeout; a write appended by a leader that then loses its majority is answered
    /// "outcome unknown" after the write timeout instead of hanging until the partition heals.
    pub async fn write(&self, op: String) -> Result<Applied, AppendError> {
        let started = tokio::time::Instant::now();
        let deadline = started + self.write_timeout;
        let mut pause = Duration::from_millis(20);
        // Since when this write has seen no leader (reset whenever one is known).
        let mut leaderless_since: Option<tokio::time::Instant> = None;
        loop {
            let leadership = self.leadership();
            if let Leadership::None { stale_ms } = leadership {
                let now = tokio::time::Instant::now();
                // A leader cut off for a while already, or a node that has seen none since this write began.
                let since = *leaderless_since.get_or_insert_with(|| match stale_ms {
                    Some(ms) => now.checked_sub(Duration::from_millis(ms)).unwrap_or(now),
                    None => now,
                });
                if now.duration_since(since) >= self.leaderless_after {
                    return Err(AppendError::Storage(format!(
                        "cluster: node {} has had no leader for {} (it cannot reach a majority); the operation was \
                         not recorded",
                        self.node_id,
                        humantime::format_duration(Duration::from_millis(now.duration_since(since).as_millis() as u64))
                    )));
                }
            } else {
                leaderless_since = None;
            }
            // Nothing is proposed without a leader (a cut-off leader's entries could not commit).
            let leader = if matches!(leadership, Leadership::None { .. }) {
                None
            } else {
                let answer = match self.propose(&op, deadline).await {
                    Some(answer) => answer,
                    // Appended here as leader, not committed while this node lost its majority (or within the
                    // write timeout): it may still commit if this node keeps its leadership, so it is unknown.
                    None => {
                        return Err(AppendError::Storage(format!(
                            "cluster: node {} appended the operation but lost its majority before it was \
                             committed; its outcome is unknown",
                            self.node_id
                        )));
                    }
                };
                match answer {
                    Ok(response) => return response.data.into_result(),
                    // Not appended here (this node does not lead, or the entry was truncated by a new leader).
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                        f.leader_id.filter(|l| *l != self.node_id).zip(f.leader_node)
                    }
                    Err(e) => {
                        return Err(AppendError::Storage(format!(
                            "cluster: {}; the operation's outcome is unknown",
                            crate::error::one_line(&e.to_string())
                        )));
                    }
                }
            };
            if let Some((_, node)) = leader {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match network::forward(&self.client, &node.addr, &self.bundle.secret, &op, left).await {
                    network::Forwarded::Done(outcome) => return outcome,
                    // Read your writes: answered once this node has applied it too (as a write through this
                    // node's own Raft is), so that whoever submitted it here finds it here.
                    network::Forwarded::Committed(outcome, index) => {
                        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                        let wait = self.raft.wait(Some(left));
                        if let Err(e) = wait.applied_index_at_least(Some(index), "a forwarded write").await {
                            tracing::warn!(
                                index,
                                "cluster: a forwarded write is committed but not yet applied here: {e}"
                            );
                        }
                        return outcome;
                    }
                    network::Forwarded::NotSent | network::Forwarded::NotLeader => {}
                }
            }
            if tokio::time::Instant::now() + pause > deadline {
                return Err(AppendError::Storage(format!(
                    "cluster: no leader took the operation within {}; it was not recorded",
                    humantime::format_duration(self.write_timeout)
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }
}

impl crate::events::log::Replicate for Cluster {
    fn propose(
        &self,
        _op: crate::kernel::Operation,
        encoded: Vec<u8>,
        reply: Box<dyn FnOnce(Result<Applied, AppendError>) + Send>,
    ) {
        let this = self.clone();
        self.runtime.spawn(async move {
            // serde_json writes UTF-8; anything else is refused, not proposed.
            let result = match String::from_utf8(encoded) {
                Ok(op) => this.write(op).await,
                Err(_) => Err(AppendError::Unreadable("the operation is not UTF-8".into())),
            };
            reply(result);
        });
    }
}

#[cfg(test)]
mod tests;
