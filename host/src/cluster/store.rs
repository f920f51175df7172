//! The Raft log and vote of a node, in its own database (tables `raft_log` and `raft_meta`), durable before Raft is
//! told so: an append is acknowledged (and counts toward a quorum) only after its redb transaction has committed.
//!
//! Entries are stored as their JSON; the log is only ever appended, truncated from an index (a new leader's
//! conflicting suffix) or purged up to an index (once a snapshot covers it). This module must never touch the
//! event log's tables: only the state machine applies entries to them.

use super::{NodeId, TypeConfig};
use crate::db::Db;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

/// Index -> entry (JSON).
pub const RAFT_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// `vote`, `committed`, `purged` (the log's own), and the state machine's `applied` and `membership` (JSON).
pub const RAFT_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "purged";

/// The log store; clones share the database.
#[derive(Debug, Clone)]
pub struct LogStore {
    db: Db,
}

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

fn read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_logs(&e).into()
}

/// A value of [`RAFT_META`], decoded.
pub(crate) fn meta<T: serde::de::DeserializeOwned>(db: &Db, key: &str) -> std::result::Result<Option<T>, String> {
    let txn = db.redb().begin_read().map_err(|e| e.to_string())?;
    let table = txn.open_table(RAFT_META).map_err(|e| e.to_string())?;
    let Some(value) = table.get(key).map_err(|e| e.to_string())? else { return Ok(None) };
    serde_json::from_slice(value.value()).map(Some).map_err(|e| format!("raft {key} is unreadable: {e}"))
}

/// Stores `value` under `key` in [`RAFT_META`] within `txn`.
pub(crate) fn put_meta<T: serde::Serialize>(
    txn: &redb::WriteTransaction,
    key: &str,
    value: &T,
) -> std::result::Result<(), redb::Error> {
    let bytes = serde_json::to_vec(value).expect("raft metadata serializes");
    txn.open_table(RAFT_META)?.insert(key, bytes.as_slice())?;
    Ok(())
}

/// Runs `f` in one durable write transaction, off the async runtime's threads.
async fn write(
    db: &Db,
    f: impl FnOnce(&redb::WriteTransaction) -> std::result::Result<(), redb::Error> + Send + 'static,
) -> std::result::Result<(), redb::Error> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || {
        let txn = db.redb().begin_write()?;
        f(&txn)?;
        txn.commit()?;
        Ok(())
    })
    .await
    .unwrap_or_else(|e| Err(redb::Error::Corrupted(format!("raft log writer panicked: {e}"))))
}

impl LogStore {
    /// The log store of `db` (creating its tables).
    pub fn open(db: Db) -> std::result::Result<LogStore, redb::Error> {
        let txn = db.redb().begin_write()?;
        txn.open_table(RAFT_LOG)?;
        txn.open_table(RAFT_META)?;
        txn.commit()?;
        Ok(LogStore { db })
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>> {
        let bounds: (Bound<u64>, Bound<u64>) = (range.start_bound().cloned(), range.end_bound().cloned());
        let txn = self.db.redb().begin_read().map_err(read_err)?;
        let table = txn.open_table(RAFT_LOG).map_err(read_err)?;
        let mut entries = Vec::new();
        for row in table.range::<u64>(bounds).map_err(read_err)? {
            let (k, v) = row.map_err(read_err)?;
            let entry: Entry<TypeConfig> = serde_json::from_slice(v.value())
                .map_err(|e| StorageError::from(StorageIOError::read_log_at_index(k.value(), &e)))?;
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let purged: Option<LogId<NodeId>> = meta(&self.db, PURGED).map_err(|e| read_err(std::io::Error::other(e)))?;
        let txn = self.db.redb().begin_read().map_err(read_err)?;
        let table = txn.open_table(RAFT_LOG).map_err(read_err)?;
        let last = match table.last().map_err(read_err)? {
            Some((_, v)) => {
                let entry: Entry<TypeConfig> = serde_json::from_slice(v.value()).map_err(read_err)?;
                Some(entry.log_id)
            }
            None => purged,
        };
        Ok(LogState { last_purged_log_id: purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<()> {
        let vote = *vote;
        write(&self.db, move |txn| put_meta(txn, VOTE, &vote))
            .await
            .map_err(|e| StorageError::from(StorageIOError::write_vote(&e)))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        meta(&self.db, VOTE).map_err(|e| StorageIOError::read_vote(&std::io::Error::other(e)).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<()> {
        write(&self.db, move |txn| put_meta(txn, COMMITTED, &committed)).await.map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>> {
        Ok(meta::<Option<LogId<NodeId>>>(&self.db, COMMITTED)
            .map_err(|e| read_err(std::io::Error::other(e)))?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows = Vec::new();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry).map_err(write_err)?;
            rows.push((entry.log_id.index, bytes));
        }
        // Durable before the callback: Raft counts this copy toward a quorum as soon as it is told.
        let result = write(&self.db, move |txn| {
            let mut table = txn.open_table(RAFT_LOG)?;
            for (index, bytes) in &rows {
                table.insert(index, bytes.as_slice())?;
            }
            Ok(())
        })
        .await;
        callback.log_io_completed(result.map_err(std::io::Error::other));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        let from = log_id.index;
        write(&self.db, move |txn| {
            let mut table = txn.open_table(RAFT_LOG)?;
            table.retain_in(from.., |_, _| false)?;
            Ok(())
        })
        .await
        .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        write(&self.db, move |txn| {
            let mut table = txn.open_table(RAFT_LOG)?;
            table.retain_in(..=log_id.index, |_, _| false)?;
            drop(table);
            put_meta(txn, PURGED, &log_id)
        })
        .await
        .map_err(write_err)
    }
}
