//! The state machine of a node: applies committed entries to the node's own database through the record layer's
//! batch commit ([`apply_replicated`]), so the kernel, its checks and the hash chain are exactly a local writer's,
//! and records in the same transaction how far the Raft log has been applied (a crash never applies an entry twice
//! nor skips one).
//!
//! A snapshot is the replicated tables whole (operations, events, kernel heads and snapshot, revocations,
//! checkpoints, agents' key-value state): the event log is permanent history, so a node that joins or falls behind
//! the purged log must receive all of it, and installing one replaces those tables with the leader's bytes. The snapshot is built in
//! memory (a first step: it bounds the history a cluster can ship by the node's memory; see the README).
//!
//! This module must never apply an entry any other way than [`apply_replicated`], nor write an event itself.

use super::store::{meta, put_meta};
use super::{NodeId, Outcome, TypeConfig};
use crate::db::{CHECKPOINTS, Db, EVENTS, KERNEL, OPS, REVOKED, STATE, STATE_USAGE};
use crate::events::Signer;
use crate::events::archive::LogView;
use crate::events::log::{CLUSTER_MARK, LogStats, apply_replicated};
use crate::kernel::State;
use base64::Engine;
use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::sync::{Arc, Mutex};

const APPLIED: &str = "applied";
const MEMBERSHIP: &str = "membership";

type Membership = StoredMembership<NodeId, BasicNode>;

/// The applied position, its membership and the replicated tables' bytes, as one snapshot carries them.
type Dumped = (Option<LogId<NodeId>>, Membership, Vec<u8>);

struct Inner {
    /// The kernel state as of the last applied operation (rebuilt from the database when empty).
    state: State,
    signer: Option<Signer>,
}

/// The state machine; its snapshot builder reads the same database.
#[derive(Clone)]
pub struct Machine {
    db: Db,
    cluster: Arc<str>,
    inner: Arc<Mutex<Inner>>,
    stats: Arc<LogStats>,
}

/// The replicated tables, as a snapshot carries them (values in base64).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Dump {
    ops: Vec<(u64, String)>,
    events: Vec<(u64, String)>,
    checkpoints: Vec<(u64, String)>,
    kernel: Vec<(String, String)>,
    revoked: Vec<(String, u64)>,
    /// Agents' key-value state: `((agent, key), value)` and each agent's usage.
    #[serde(default)]
    state: Vec<((String, String), String)>,
    #[serde(default)]
    state_usage: Vec<(String, u64)>,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(text: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD.decode(text).map_err(|e| format!("snapshot value is not base64: {e}"))
}

fn sm_read(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(&std::io::Error::other(e.to_string())).into()
}

impl Machine {
    /// The state machine of `db` for `cluster`, signing checkpoints with `signer`.
    pub fn open(db: Db, cluster: String, signer: Option<Signer>, stats: Arc<LogStats>) -> Result<Machine, redb::Error> {
        // The tables exist (the log store opens them too; opening twice is harmless).
        let txn = db.redb().begin_write()?;
        txn.open_table(super::store::RAFT_META)?;
        txn.commit()?;
        Ok(Machine {
            db,
            cluster: cluster.into(),
            inner: Arc::new(Mutex::new(Inner { state: State::default(), signer })),
            stats,
        })
    }

    /// The last applied log id and the membership it holds.
    fn applied(&self) -> Result<(Option<LogId<NodeId>>, Membership), String> {
        let applied: Option<Option<LogId<NodeId>>> = meta(&self.db, APPLIED)?;
        let membership: Option<Membership> = meta(&self.db, MEMBERSHIP)?;
        Ok((applied.flatten(), membership.unwrap_or_default()))
    }

    /// The replicated tables and the Raft position they are at, read in one transaction.
    fn dump(&self) -> Result<Dumped, String> {
        // The logs' rows from the first, across the archive if a node's database had moved some there.
        let view = LogView::on(&self.db, self.db.redb().begin_read().map_err(|e| e.to_string())?);
        let txn = view.hot();
        let read_meta = |key: &str| -> Result<Option<Vec<u8>>, String> {
            let table = txn.open_table(super::store::RAFT_META).map_err(|e| e.to_string())?;
            Ok(table.get(key).map_err(|e| e.to_string())?.map(|v| v.value().to_vec()))
        };
        fn decode<T: serde::de::DeserializeOwned>(bytes: Option<Vec<u8>>) -> Result<Option<T>, String> {
            bytes.map(|b| serde_json::from_slice(&b).map_err(|e| e.to_string())).transpose()
        }
        let applied: Option<Option<LogId<NodeId>>> = decode(read_meta(APPLIED)?)?;
        let membership: Option<Membership> = decode(read_meta(MEMBERSHIP)?)?;
        let e = |e: redb::Error| e.to_string();
        let mut dump = Dump::default();
        let u64_rows = |def, out: &mut Vec<(u64, String)>| -> Result<(), redb::Error> {
            for row in view.rows(def, 0)? {
                let (k, v) = row?;
                out.push((k.value(), b64(v.value())));
            }
            Ok(())
        };
        u64_rows(OPS, &mut dump.ops).map_err(e)?;
        u64_rows(EVENTS, &mut dump.events).map_err(e)?;
        u64_rows(CHECKPOINTS, &mut dump.checkpoints).map_err(e)?;
        (|| -> Result<(), redb::Error> {
            for row in txn.open_table(KERNEL)?.iter()? {
                let (k, v) = row?;
                dump.kernel.push((k.value().to_string(), b64(v.value())));
            }
            for row in txn.open_table(REVOKED)?.iter()? {
                let (k, v) = row?;
                dump.revoked.push((k.value().to_string(), v.value()));
            }
            for row in txn.open_table(STATE)?.iter()? {
                let (k, v) = row?;
                let (agent, key) = k.value();
                dump.state.push(((agent.to_string(), key.to_string()), b64(v.value())));
            }
            for row in txn.open_table(STATE_USAGE)?.iter()? {
                let (k, v) = row?;
                dump.state_usage.push((k.value().to_string(), v.value()));
            }
            Ok(())
        })()
        .map_err(e)?;
        let bytes = serde_json::to_vec(&dump).map_err(|e| e.to_string())?;
        Ok((applied.flatten(), membership.unwrap_or_default(), bytes))
    }
}

/// Replaces the replicated tables with `dump`'s rows and records the snapshot's position, in one transaction.
fn install(db: &Db, dump: &Dump, meta: &SnapshotMeta<NodeId, BasicNode>) -> Result<u64, String> {
    let e = |e: redb::Error| e.to_string();
    let txn = db.redb().begin_write().map_err(|x| e(x.into()))?;
    (|| -> Result<(), redb::Error> {
        let mut ops = txn.open_table(OPS)?;
        ops.retain(|_, _| false)?;
        let mut events = txn.open_table(EVENTS)?;
        events.retain(|_, _| false)?;
        let mut checkpoints = txn.open_table(CHECKPOINTS)?;
        checkpoints.retain(|_, _| false)?;
        let mut kernel = txn.open_table(KERNEL)?;
        kernel.retain(|_, _| false)?;
        let mut revoked = txn.open_table(REVOKED)?;
        revoked.retain(|_, _| false)?;
        let mut state = txn.open_table(STATE)?;
        state.retain(|_, _| false)?;
        let mut state_usage = txn.open_table(STATE_USAGE)?;
        state_usage.retain(|_, _| false)?;
        let corrupt = |why: String| redb::Error::Corrupted(why);
        for (k, v) in &dump.ops {
            ops.insert(k, unb64(v).map_err(corrupt)?.as_slice())?;
        }
        for (k, v) in &dump.events {
            events.insert(k, unb64(v).map_err(corrupt)?.as_slice())?;
        }
        for (k, v) in &dump.checkpoints {
            checkpoints.insert(k, unb64(v).map_err(corrupt)?.as_slice())?;
        }
        for (k, v) in &dump.kernel {
            kernel.insert(k.as_str(), unb64(v).map_err(corrupt)?.as_slice())?;
        }
        for (k, v) in &dump.revoked {
            revoked.insert(k.as_str(), v)?;
        }
        for ((agent, key), v) in &dump.state {
            state.insert((agent.as_str(), key.as_str()), unb64(v).map_err(corrupt)?.as_slice())?;
        }
        for (agent, used) in &dump.state_usage {
            state_usage.insert(agent.as_str(), used)?;
        }
        Ok(())
    })()
    .map_err(e)?;
    (|| -> Result<(), redb::Error> {
        put_meta(&txn, APPLIED, &meta.last_log_id)?;
        put_meta(&txn, MEMBERSHIP, &meta.last_membership)
    })()
    .map_err(e)?;
    txn.commit().map_err(|x| e(x.into()))?;
    Ok(dump.events.last().map_or(0, |(seq, _)| *seq))
}

/// Builds snapshots of the node's database.
pub struct Builder(Machine);

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let machine = self.0.clone();
        let (applied, membership, bytes) =
            tokio::task::spawn_blocking(move || machine.dump()).await.map_err(sm_read)?.map_err(sm_read)?;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let snapshot_id = format!("{}-{nanos}", applied.map_or(0, |l| l.index));
        let meta = SnapshotMeta { last_log_id: applied, last_membership: membership, snapshot_id };
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) })
    }
}

impl RaftStateMachine<TypeConfig> for Machine {
    type SnapshotBuilder = Builder;

    async fn applied_state(&mut self) -> Result<(Option<LogId<NodeId>>, Membership), StorageError<NodeId>> {
        self.applied().map_err(sm_read)
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|e| e.log_id) else { return Ok(Vec::new()) };
        let mut membership = None;
        let mut ops = Vec::new();
        let mut is_op = Vec::with_capacity(entries.len());
        for entry in entries {
            match entry.payload {
                EntryPayload::Normal(p) => {
                    ops.push(p.op.into_bytes());
                    is_op.push(true);
                }
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), m));
                    is_op.push(false);
                }
                EntryPayload::Blank => is_op.push(false),
            }
        }
        let (db, inner, cluster) = (self.db.clone(), self.inner.clone(), self.cluster.clone());
        let count = ops.len();
        let applied = tokio::task::spawn_blocking(move || {
            let mut inner = inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let Inner { state, signer } = &mut *inner;
            apply_replicated(&db, state, signer.as_mut(), ops, |txn| {
                put_meta(txn, APPLIED, &Some(last))?;
                if let Some(m) = &membership {
                    put_meta(txn, MEMBERSHIP, m)?;
                }
                txn.open_table(KERNEL)?.insert(CLUSTER_MARK, cluster.as_bytes())?;
                Ok(())
            })
        })
        .await
        .map_err(|e| StorageError::from(StorageIOError::apply(last, &std::io::Error::other(e.to_string()))))?
        // A batch that cannot be applied (storage, a log that no longer matches its checkpoint) stops this node:
        // fail closed rather than diverge from the cluster.
        .map_err(|e| StorageError::from(StorageIOError::apply(last, &e)))?;
        let acks = applied.iter().flatten().flat_map(|a| &a.events);
        let (events, head) = acks.fold((0u64, 0u64), |(n, h), a| (n + 1, h.max(a.seq)));
        if count > 0 {
            self.stats.committed(count, events, head);
        }
        let mut applied = applied.into_iter();
        Ok(is_op
            .into_iter()
            .map(|op| match op {
                true => Outcome::of(applied.next().unwrap_or(Err(crate::events::AppendError::Closed))),
                false => Outcome::None,
            })
            .collect())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        Builder(self.clone())
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let signature = Some(meta.signature());
        let bad = |e: String| {
            StorageError::from(StorageIOError::write_snapshot(signature.clone(), &std::io::Error::other(e)))
        };
        let dump: Dump = serde_json::from_slice(snapshot.get_ref()).map_err(|e| bad(format!("unreadable: {e}")))?;
        let (db, inner, meta) = (self.db.clone(), self.inner.clone(), meta.clone());
        let head = tokio::task::spawn_blocking(move || {
            let mut inner = inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let head = install(&db, &dump, &meta);
            // Rebuilt from the installed tables at the next apply.
            inner.state = State::default();
            head
        })
        .await
        .map_err(|e| bad(e.to_string()))?
        .map_err(bad)?;
        self.stats.committed(0, 0, head);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        // A fresh one: it covers at least everything the log has purged, and it is never stale.
        let mut builder = Builder(self.clone());
        builder.build_snapshot().await.map(Some)
    }
}
