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
            Outcome::Applied { op_seq, events, rejected } => {
                let mut acks = Vec::with_capacity(events.len());
                for (seq, hash) in events {
                    let mut h = [0u8; 32];
                    hex::decode_to_slice(&hash, &mut h).map_err(|_| {
                        AppendError::Storage(format!("cluster: event {seq}'s hash is not 32 hex bytes"))
                    })?;
                    acks.push(crate::events::Ack { seq, hash: h });
                }
                Ok(Applied { op_seq, events: acks, rejected })
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
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions { heartbeat_ms: 100, snapshot_every: 20_000, write_timeout: Duration::from_secs(30) }
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
    runtime: tokio::runtime::Handle,
    write_timeout: Duration,
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
        Ok(Cluster {
            raft,
            node_id,
            bundle,
            db,
            client,
            runtime: tokio::runtime::Handle::current(),
            write_timeout: options.write_timeout,
        })
    }

    /// Stops this node's Raft (its log and state machine are durable as they stand).
    pub async fn shutdown(&self) {
        drop(self.raft.shutdown().await);
    }

    /// Proposes `op` (an operation's JSON) and waits until it is applied: through this node's Raft if it leads,
    /// else forwarded to the leader. Retried (within the write timeout) only while it provably was not appended.
    pub async fn write(&self, op: String) -> Result<Applied, AppendError> {
        let deadline = tokio::time::Instant::now() + self.write_timeout;
        let mut pause = Duration::from_millis(20);
        loop {
            let leader = match self.raft.client_write(Proposal { op: op.clone() }).await {
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
            };
            if let Some((_, node)) = leader {
                match network::forward(&self.client, &node.addr, &self.bundle.secret, &op, self.write_timeout).await {
                    network::Forwarded::Done(outcome) => return outcome,
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
