//! The one redb database of a toka home (`$TOKA_HOME/toka.redb`, or `--db PATH`): events, kernel operations, agent
//! state and token revocations. The logs' old rows move to an archive beside it (`toka.redb.archive`, see
//! `crate::events::archive`), so that the file every commit writes to stays small.
//!
//! Opened in redb's multi-writer mode, so that several `toka-host` processes (two runs in two shells, `events
//! --follow` beside them) share the file: write transactions are serialized across processes by redb's byte-range
//! locks, and every write transaction reads the current tail before appending. This module must never hold a write
//! transaction open longer than one batch.

use redb::{ConcurrencyMode, Database, ReadableDatabase, TableDefinition};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Events by sequence number; the value is a 32-byte hash followed by the record's JSON body.
pub const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");

/// The kernel's operation log: operation sequence number -> the operation's JSON. The source of truth that the
/// kernel's state is rebuilt from; events are what applying each operation produced.
pub const OPS: TableDefinition<u64, &[u8]> = TableDefinition::new("ops");

/// Kernel bookkeeping: the latest state snapshot (`snapshot` -> JSON), and the running heads of the operation log
/// and the revocations (`ops_head`, `revoked_digest`) that checkpoints sign.
pub const KERNEL: TableDefinition<&str, &[u8]> = TableDefinition::new("kernel");

/// Signed checkpoints of the logs' heads, by the event sequence number they cover -> the checkpoint's JSON (see
/// `crate::events::checkpoint`): the latest, plus one per 1024 events.
pub const CHECKPOINTS: TableDefinition<u64, &[u8]> = TableDefinition::new("checkpoints");

/// Revoked token revocation ids (hex) -> time of revocation, kept in step with the kernel's `RevokeToken` operations.
pub const REVOKED: TableDefinition<&str, u64> = TableDefinition::new("revoked");

/// Agent state: (agent, key) -> value.
pub const STATE: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("state");

/// Bytes of state held per agent (keys plus values), kept in step with [`STATE`] in the same transactions.
pub const STATE_USAGE: TableDefinition<&str, u64> = TableDefinition::new("state_usage");

/// redb's page cache for this process (its default is 1 GiB). redb keeps every page a transaction writes in the
/// cache after the commit, so under the default a long-lived process (`run --repeat`, `mcp`, a server) grew by about
/// the size of what it had appended, ~2-3 KB per run or tool call, until it reached a gigabyte. The writer only
/// touches the tail of each table and readers scan the log once, so a small cache is enough for them (the
/// operating system's page cache still holds the file); what it bounds is the process's memory. Pages beyond half of it that a transaction dirties go to disk before the commit
/// (redb's own rule), so a large batch is still correct, only written out earlier.
pub const CACHE_BYTES: usize = 2 << 20;

/// Errors opening the database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error("cannot create directory {path}: {source}")]
    CreateDir { path: String, source: std::io::Error },
    #[error("cannot open database {path}: {source}")]
    Open { path: String, source: redb::Error },
}

/// `$TOKA_HOME`, else `$XDG_DATA_HOME/toka`, else `~/.local/share/toka`.
pub fn default_home() -> PathBuf {
    if let Some(home) = std::env::var_os("TOKA_HOME") {
        return PathBuf::from(home);
    }
    if let Some(data) = std::env::var_os("XDG_DATA_HOME") {
        return Path::new(&data).join("toka");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local").join("share").join("toka")
}

/// The database path: `--db PATH` if given, else `<home>/toka.redb`.
pub fn default_path() -> PathBuf {
    default_home().join("toka.redb")
}

/// Where the archive of the database at `db` keeps the logs' old rows (see `crate::events::archive`): beside it,
/// `<file>.archive`.
pub fn archive_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().map(std::ffi::OsStr::to_os_string).unwrap_or_default();
    name.push(".archive");
    db.with_file_name(name)
}

/// A shared handle on the open database.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Database>,
    path: PathBuf,
    repaired: bool,
    /// The archive of the logs' old rows (see `crate::events::archive`), once this process has opened it.
    archive: Arc<std::sync::Mutex<Option<Arc<Database>>>>,
    /// Set by [`Db::keep_open_until_exit`]: the archive too is left open when the process exits.
    kept_open: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish()
    }
}

/// Whether `db` already holds every table of the schema.
fn has_every_table(db: &Database) -> Result<bool, redb::Error> {
    fn has<K: redb::Key + 'static, V: redb::Value + 'static>(
        txn: &redb::ReadTransaction,
        table: TableDefinition<K, V>,
    ) -> Result<bool, redb::Error> {
        match txn.open_table(table) {
            Ok(_) => Ok(true),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
    let txn = db.begin_read()?;
    Ok(has(&txn, EVENTS)?
        && has(&txn, OPS)?
        && has(&txn, KERNEL)?
        && has(&txn, REVOKED)?
        && has(&txn, CHECKPOINTS)?
        && has(&txn, STATE)?
        && has(&txn, STATE_USAGE)?)
}

impl Db {
    /// Opens (creating if needed) the database at `path`, and makes sure every table exists.
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        let shown = path.display().to_string();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|source| OpenError::CreateDir { path: parent.display().to_string(), source })?;
        }
        // Set by redb when the file needs a full repair (its allocator state rebuilt by walking every tree).
        let repaired = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open = || -> Result<Database, redb::Error> {
            let mut builder = Database::builder();
            let seen = repaired.clone();
            builder
                .set_concurrency_mode(ConcurrencyMode::MultiWriter)
                .set_cache_size(CACHE_BYTES)
                .set_repair_callback(move |_| seen.store(true, std::sync::atomic::Ordering::Relaxed));
            let db = builder.create(path)?;
            // A durable commit costs two fsyncs, and every process would pay them at start: write only when a
            // table is missing (a new database, or one made by an older toka-host).
            if has_every_table(&db)? {
                return Ok(db);
            }
            let txn = db.begin_write()?;
            txn.open_table(EVENTS)?;
            txn.open_table(OPS)?;
            txn.open_table(KERNEL)?;
            txn.open_table(REVOKED)?;
            txn.open_table(CHECKPOINTS)?;
            txn.open_table(STATE)?;
            txn.open_table(STATE_USAGE)?;
            txn.commit()?;
            Ok(db)
        };
        let db = open().map_err(|source| OpenError::Open { path: shown, source })?;
        let repaired = repaired.load(std::sync::atomic::Ordering::Relaxed);
        if repaired {
            tracing::warn!(path = %path.display(), "database repaired: a writer that recorded no allocator state stopped without closing it");
        }
        Ok(Db {
            inner: Arc::new(db),
            path: path.to_path_buf(),
            repaired,
            archive: Arc::default(),
            kept_open: Arc::default(),
        })
    }

    /// Where the archive of this database's old log rows lives (see [`archive_path`]).
    pub fn archive_path(&self) -> PathBuf {
        archive_path(&self.path)
    }

    /// The archive of the logs' old rows, opened once per process: `None` if there is none and `create` is false
    /// (a reader never creates it). Created owner-only, in the same multi-writer mode as the database, with the
    /// two log tables.
    pub(crate) fn archive(&self, create: bool) -> Result<Option<Arc<Database>>, redb::Error> {
        let mut slot = self.archive.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(db) = slot.as_ref() {
            return Ok(Some(db.clone()));
        }
        let path = self.archive_path();
        if !create && !path.exists() {
            return Ok(None);
        }
        crate::home::private_file(&path).map_err(|e| redb::Error::Io(std::io::Error::other(e.to_string())))?;
        let db = Database::builder()
            .set_concurrency_mode(ConcurrencyMode::MultiWriter)
            .set_cache_size(CACHE_BYTES)
            .create(&path)?;
        let txn = db.begin_read()?;
        let ready = matches!((txn.open_table(EVENTS), txn.open_table(OPS)), (Ok(_), Ok(_)));
        drop(txn);
        if !ready {
            let txn = db.begin_write()?;
            txn.open_table(EVENTS)?;
            txn.open_table(OPS)?;
            txn.commit()?;
        }
        let db = Arc::new(db);
        if self.kept_open.load(std::sync::atomic::Ordering::Relaxed) {
            std::mem::forget(db.clone());
        }
        *slot = Some(db.clone());
        Ok(Some(db))
    }

    /// Whether this open had to repair the file: rebuild its allocator state by walking every tree, a cost that
    /// grows with the log. Not after [`Db::keep_open_until_exit`], only after a writer that recorded no allocator
    /// state stopped without closing.
    pub fn repaired(&self) -> bool {
        self.repaired
    }

    /// Leaves the database open until the process exits, so that redb's clean close never runs: for a
    /// one-shot command (`run`) whose every write was acknowledged durable before it ends.
    ///
    /// redb's clean close costs a commit of its allocator state and a shutdown header, four `fdatasync`s on
    /// every run. Without it the file is left as a crash would leave it, but in multi-writer mode every
    /// commit already records the allocator state, so the next open loads that record instead of rebuilding it
    /// (a cost that would grow with the log): it only rewrites the header, one `fdatasync` more than after a
    /// clean close. Nothing acknowledged is lost: a commit is durable before it returns.
    pub fn keep_open_until_exit(&self) {
        std::mem::forget(self.inner.clone());
        // So is the archive, opened now or later (a reader such as `events verify` opens it after this call).
        self.kept_open.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(archive) = self.archive.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref() {
            std::mem::forget(archive.clone());
        }
    }

    pub fn redb(&self) -> &Database {
        &self.inner
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::ReadableTableMetadata;

    /// A database with only some of the tables (as an older toka-host left it) gets the others on open, and a
    /// database with all of them opens as it is.
    #[test]
    fn open_adds_missing_tables_and_only_those() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        {
            let db = Database::builder().set_concurrency_mode(ConcurrencyMode::MultiWriter).create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(EVENTS).unwrap().insert(1, b"x".as_slice()).unwrap();
            txn.commit().unwrap();
            assert!(!has_every_table(&db).unwrap());
        }
        let db = Db::open(&path).unwrap();
        assert!(has_every_table(db.redb()).unwrap());
        let txn = db.redb().begin_read().unwrap();
        assert_eq!(txn.open_table(EVENTS).unwrap().get(1).unwrap().unwrap().value(), b"x");
        drop(txn);
        drop(db);
        let again = Db::open(&path).unwrap();
        assert!(has_every_table(again.redb()).unwrap());
    }

    /// The file as a process leaves it when it exits with the database still open (`keep_open_until_exit`, or a
    /// crash): a copy taken while the writer still holds it.
    fn left_open(db: &Database, path: &Path, events: u64) -> PathBuf {
        for batch in 0..2 {
            let txn = db.begin_write().unwrap();
            {
                let mut table = txn.open_table(EVENTS).unwrap();
                for seq in 0..events {
                    table.insert(batch * events + seq, [7u8; 300].as_slice()).unwrap();
                }
            }
            txn.commit().unwrap();
        }
        let copy = path.with_extension("left-open");
        std::fs::copy(path, &copy).unwrap();
        copy
    }

    /// A database left open by a process that has exited opens without a repair: every multi-writer commit records
    /// the allocator state, which the next open loads. The control: a file whose last writer recorded none (redb's
    /// single-writer default) is repaired, so `repaired()` does see a repair.
    #[test]
    fn a_database_left_open_is_not_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let db = Db::open(&path).unwrap();
        assert!(!db.repaired());
        let copy = left_open(db.redb(), &path, 2000);
        let reopened = Db::open(&copy).unwrap();
        assert!(!reopened.repaired());
        let txn = reopened.redb().begin_read().unwrap();
        assert_eq!(txn.open_table(EVENTS).unwrap().len().unwrap(), 4000);
        drop(txn);
        // Written to again and left open again: still no repair.
        let again = left_open(reopened.redb(), &copy, 10);
        assert!(!Db::open(&again).unwrap().repaired());

        let single = dir.path().join("single.redb");
        let plain = Database::builder().create(&single).unwrap();
        let copy = left_open(&plain, &single, 2000);
        let repaired = Db::open(&copy).unwrap();
        assert!(repaired.repaired());
        assert_eq!(repaired.redb().begin_read().unwrap().open_table(EVENTS).unwrap().len().unwrap(), 4000);
    }
}
