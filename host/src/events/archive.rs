//! The logs' old rows, moved out of the hot database into an archive beside it, so that a commit's cost does not grow
//! with the log.
//!
//! Why: in redb's multi-writer mode every commit records the allocator state of the whole file (each region's buddy
//! allocator, rewritten in full), whose size follows the file's pages. With every event ever recorded in one file, a
//! run's two commits cost more the longer the log: measured, 0.3-0.7 ms more per run at a million events than at a few
//! hundred. So the writer keeps the hot file small: once its event table holds more than [`HOT_MAX`] events, the
//! oldest (all but the last [`HOT_KEEP`]) are copied to the archive (`<database>.archive`, see
//! [`Db::archive_path`]), made durable there, and only then deleted from the hot database. Operations move too, those
//! the kernel's stored snapshot already covers (a process catching up starts from that snapshot, so it never needs
//! them). The hot file's freed pages are reused by later commits, so its size stays about what [`HOT_MAX`] events
//! take, whatever the log's length; the archive is written once per [`HOT_MAX`] - [`HOT_KEEP`] events.
//!
//! The order readers rely on: a row reaches the archive durably before it leaves the hot database, and the archive is
//! only ever appended to. So a reader that takes its snapshot of the hot database first and of the archive after finds
//! every row below the hot table's first in the archive ([`LogView`]); both snapshots are consistent in themselves.
//!
//! Tampering stays visible: `events verify` walks the chain across both files, so an archive that is edited, cut or
//! deleted breaks the chain (a deleted one: the chain no longer starts at 1). The archiver appends only what continues
//! the archive and agrees with what it already holds; anything else stops it (the hot database then keeps every row,
//! as before there was an archive) with a warning.

use super::EVENTS;
use crate::db::{Db, KERNEL, OPS};
use redb::{AccessGuard, ReadableDatabase, ReadableTable, StorageError, TableDefinition, TableHandle};
use std::sync::Arc;

/// Events the hot database holds before its oldest move to the archive.
pub const HOT_MAX: u64 = 1 << 15;

/// Events (and, at least, operations) the hot database keeps after a move.
pub const HOT_KEEP: u64 = 1 << 14;

/// One of the two log tables: sequence number -> stored bytes.
pub(crate) type LogTable = TableDefinition<'static, u64, &'static [u8]>;

/// A log table as one read transaction of the hot database sees it.
type HotTable = redb::ReadOnlyTable<u64, &'static [u8]>;

/// One row of a log table, as a range yields it.
pub(crate) type Row = Result<(AccessGuard<'static, u64>, AccessGuard<'static, &'static [u8]>), StorageError>;

/// A consistent read of the logs across the hot database and the archive: the hot snapshot is taken first, the
/// archive's (only if a read reaches below the hot table's first row) after it.
pub(crate) struct LogView {
    db: Db,
    hot: redb::ReadTransaction,
    archive: std::cell::OnceCell<Option<redb::ReadTransaction>>,
}

impl LogView {
    /// A view whose hot snapshot is taken now.
    pub(crate) fn begin(db: &Db) -> Result<Self, redb::Error> {
        Ok(Self::on(db, db.redb().begin_read()?))
    }

    /// A view on a read transaction of the hot database the caller has already begun.
    pub(crate) fn on(db: &Db, hot: redb::ReadTransaction) -> Self {
        LogView { db: db.clone(), hot, archive: std::cell::OnceCell::new() }
    }

    /// The hot database's read transaction (for the tables that never move).
    pub(crate) fn hot(&self) -> &redb::ReadTransaction {
        &self.hot
    }

    fn archive(&self) -> Result<Option<&redb::ReadTransaction>, redb::Error> {
        if let Some(txn) = self.archive.get() {
            return Ok(txn.as_ref());
        }
        let txn = match self.db.archive(false)? {
            Some(archive) => Some(archive.begin_read()?),
            None => None,
        };
        Ok(self.archive.get_or_init(|| txn).as_ref())
    }

    /// The rows of `table` from sequence number `from` on, in order: for the two tables that move (events and
    /// operations), the archive's below the hot table's first row, then the hot table's. A hot table that is empty
    /// consults no archive (one left from another database's history must not show through).
    pub(crate) fn rows(&self, table: LogTable, from: u64) -> Result<Box<dyn Iterator<Item = Row>>, redb::Error> {
        let hot = self.hot.open_table(table)?;
        let first = hot.first()?.map(|(k, _)| k.value());
        let hot_rows = hot.range(from..)?;
        let moves = table.name() == EVENTS.name() || table.name() == OPS.name();
        let archived = match first {
            Some(first) if moves && first > from.max(1) => match self.archive()? {
                Some(archive) => Some(archive.open_table(table)?.range(from..first)?),
                None => None,
            },
            _ => None,
        };
        Ok(Box::new(archived.into_iter().flatten().chain(hot_rows)))
    }

    /// The row `seq` of `table`, from wherever it is.
    pub(crate) fn get(&self, table: LogTable, seq: u64) -> Result<Option<Vec<u8>>, redb::Error> {
        Ok(match self.rows(table, seq)?.next().transpose()? {
            Some((k, v)) if k.value() == seq => Some(v.value().to_vec()),
            _ => None,
        })
    }
}

/// What one move took out of the hot database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// Events moved, the last of them `events_to`.
    pub events: u64,
    pub events_to: u64,
    /// Operations moved, the last of them `ops_to`.
    pub ops: u64,
    pub ops_to: u64,
}

/// The first event the hot database holds (0: none).
pub(crate) fn hot_first(db: &Db) -> Result<u64, redb::Error> {
    let txn = db.redb().begin_read()?;
    Ok(txn.open_table(EVENTS)?.first()?.map_or(0, |(k, _)| k.value()))
}

/// Whether the hot database of `db`, whose first event is `first` and last `last`, is due for a move.
pub(crate) fn due(first: u64, last: u64) -> bool {
    first > 0 && last >= first && last - first + 1 > HOT_MAX
}

/// Moves the old rows of the hot database to the archive, if it holds more than [`HOT_MAX`] events: copies them
/// (events up to all but the last [`HOT_KEEP`]; operations up to the kernel snapshot's, keeping at least [`HOT_KEEP`]),
/// commits the archive durably, then deletes them from the hot database. `Ok(None)`: nothing was due (another process
/// may just have moved them), or the database is a cluster node's (its tables are replicated whole). Safe to repeat
/// and to run in several processes at once: each copy is checked against what the archive already holds. `Err`: why
/// nothing was deleted.
pub fn move_old_rows(db: &Db) -> Result<Option<Moved>, String> {
    match try_move(db) {
        Ok(Ok(moved)) => Ok(moved),
        Ok(Err(refused)) => Err(format!("{}: {refused}", db.archive_path().display())),
        Err(e) => Err(crate::error::one_line(&e.to_string())),
    }
}

fn try_move(db: &Db) -> Result<Result<Option<Moved>, String>, redb::Error> {
    let hot = db.redb().begin_read()?;
    let events = hot.open_table(EVENTS)?;
    let bounds = |t: &HotTable| -> Result<(u64, u64), redb::Error> {
        let first = t.first()?.map_or(0, |(k, _)| k.value());
        let last = t.last()?.map_or(0, |(k, _)| k.value());
        Ok((first, last))
    };
    let (events_first, events_last) = bounds(&events)?;
    if !due(events_first, events_last) {
        return Ok(Ok(None));
    }
    let kernel = hot.open_table(KERNEL)?;
    if kernel.get(super::log::CLUSTER_MARK)?.is_some() {
        return Ok(Ok(None));
    }
    let events_to = events_last - HOT_KEEP;
    let ops = hot.open_table(OPS)?;
    let (ops_first, ops_last) = bounds(&ops)?;
    let ops_to = super::log::snapshot_applied(&kernel)?.min(ops_last.saturating_sub(HOT_KEEP));
    let Some(archive) = db.archive(true)? else { return Ok(Err("the archive did not open".into())) };
    let copied = match copy(&archive, &[(EVENTS, &events, events_first, events_to), (OPS, &ops, ops_first, ops_to)])? {
        Ok(copied) => copied,
        Err(refused) => return Ok(Err(refused)),
    };
    // The last row of each table moved, as copied: the deletion goes ahead only if the database still holds those.
    let last_copied =
        |table: &HotTable, to: u64| -> Result<_, redb::Error> { Ok(table.get(to)?.map(|v| v.value().to_vec())) };
    let boundary = [(EVENTS, events_to, last_copied(&events, events_to)?), (OPS, ops_to, last_copied(&ops, ops_to)?)];
    drop((events, ops, kernel, hot));
    let txn = db.redb().begin_write()?;
    // Checked again in the transaction that deletes: between the copy and now, the database may have become a
    // cluster node's, or had its history replaced (a cluster snapshot installed).
    if txn.open_table(KERNEL)?.get(super::log::CLUSTER_MARK)?.is_some() {
        return Ok(Ok(None));
    }
    for (n, (def, to, copied_row)) in boundary.into_iter().enumerate() {
        if copied[n] == 0 {
            continue;
        }
        let mut table = txn.open_table(def)?;
        let now = table.get(to)?.map(|v| v.value().to_vec());
        if now.is_none() && table.first()?.is_some_and(|(first, _)| first.value() > to) {
            // Another process moved the same rows first.
            continue;
        }
        if now != copied_row {
            return Ok(Err(format!("the database's {} row {to} changed while it was archived", def.name())));
        }
        table.retain_in(..=to, |_, _| false)?;
    }
    txn.commit()?;
    Ok(Ok(Some(Moved { events: copied[0], events_to, ops: copied[1], ops_to })))
}

/// Appends to `archive`, in one durable transaction, each table's hot rows `first..=to` that it lacks, after checking
/// that they continue the archive (no gap) and that the rows the archive already holds are the same bytes. Returns
/// how many rows of each table the archive now holds from `first` to `to`; `Err`: why nothing was appended.
fn copy(
    archive: &Arc<redb::Database>,
    tables: &[(LogTable, &HotTable, u64, u64)],
) -> Result<Result<Vec<u64>, String>, redb::Error> {
    let txn = archive.begin_write()?;
    let mut counts = Vec::with_capacity(tables.len());
    for &(def, hot, first, to) in tables {
        let mut table = txn.open_table(def)?;
        if first == 0 || to < first {
            counts.push(0);
            continue;
        }
        let archived = table.last()?.map_or(0, |(k, _)| k.value());
        if archived + 1 < first {
            return Ok(Err(format!(
                "its {} table ends at {archived}, but the database's starts at {first}: the rows between are missing",
                def.name()
            )));
        }
        for row in hot.range(first..=to)? {
            let (k, v) = row?;
            let seq = k.value();
            if seq > archived {
                table.insert(seq, v.value())?;
            } else if table.get(seq)?.as_ref().map(|held| held.value()) != Some(v.value()) {
                return Ok(Err(format!("its {} row {seq} differs from the database's", def.name())));
            }
        }
        counts.push(to - first + 1);
    }
    txn.commit()?;
    Ok(Ok(counts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{EventDraft, GENESIS, encode, verify};

    /// Two processes moving the same rows at once (each with its own handle on the file, as two `toka-host`
    /// processes): neither reports a problem, the rows move once, and the log reads whole. Without the recheck in
    /// the deleting transaction, the one that deletes second finds its boundary row gone and warns of a change.
    #[test]
    fn two_movers_at_once_move_the_rows_once_and_agree() {
        let total = HOT_MAX + 1000;
        // The race is in timing: three fresh databases.
        for round in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("t.redb");
            {
                let db = Db::open(&path).unwrap();
                let txn = db.redb().begin_write().unwrap();
                let mut events = txn.open_table(EVENTS).unwrap();
                let mut prev = GENESIS;
                for seq in 1..=total {
                    let draft = EventDraft {
                        time_ms: seq,
                        kind: "k".into(),
                        agent: "a".into(),
                        run_id: "r".into(),
                        payload: seq.into(),
                    };
                    let (value, hash) = encode(seq, &prev, &draft);
                    events.insert(seq, value.as_slice()).unwrap();
                    prev = hash;
                }
                drop(events);
                txn.commit().unwrap();
            }
            let movers: Vec<_> = (0..2)
                .map(|_| {
                    let db = Db::open(&path).unwrap();
                    std::thread::spawn(move || move_old_rows(&db))
                })
                .collect();
            let moved: Vec<_> = movers.into_iter().map(|m| m.join().unwrap()).collect();
            assert!(moved.iter().all(Result::is_ok), "round {round}: {moved:?}");
            assert!(moved.iter().any(|m| matches!(m, Ok(Some(_)))), "round {round}: {moved:?}");
            let db = Db::open(&path).unwrap();
            assert_eq!(hot_first(&db).unwrap(), total - HOT_KEEP + 1);
            let chain = verify(&db).unwrap();
            assert_eq!((chain.records, chain.first_bad), (total, None));
        }
    }
}
