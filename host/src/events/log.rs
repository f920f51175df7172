//! Submitting operations with group commit: one writer thread per process batches the operations of every run into
//! one durable redb transaction, applies each through the kernel, appends the operation and the events it produced,
//! and acknowledges each submission only after its batch has committed.
//!
//! Callers block (or await) until their events are on disk; while one batch is being made durable, the next one
//! gathers in the queue, so the cost of a durable commit is shared by every submission waiting for it. Several
//! processes may share the database: each batch first applies, to this process's kernel state, the operations other
//! processes committed since (the operation log is the source of truth), then extends both logs from their current
//! heads, all inside one write transaction. A snapshot of the kernel state (only live runs and tasks, so it stays
//! small) is stored once the operations appended since the last one take as many bytes as it does (at least
//! [`MIN_SNAPSHOT_GAP`]), so a new process reads at most about twice a snapshot's bytes to start instead of replaying
//! the whole log; the snapshot equals what replay from empty would give (the kernel is deterministic).
//!
//! What the writer guarantees for every batch: the exact bytes of each operation and of each event are decoded the
//! way `read` and `verify` decode them before anything is inserted, so no value can make the log unreadable; an
//! operation that fails is rejected on its own (an `op.rejected` event, an error for its submitter), never stored,
//! and never fails the rest of the batch. With a [`Signer`], each batch also stores a signed checkpoint of the heads
//! it leaves (see [`super::checkpoint`]), and a batch whose starting heads differ from the latest checkpoint is
//! refused rather than signed over.

use super::checkpoint::{self, Chain, Heads, Signer};
use super::{EVENTS, EventDraft, GENESIS, MAX_PAYLOAD, decodes, encode, split};
use crate::db::{CHECKPOINTS, Db, KERNEL, OPS, REVOKED};
use crate::kernel::{self, Op, Operation, State};
use redb::ReadableTable;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// The fewest bytes of operations between two snapshots of the kernel state. Past it, a snapshot is stored once the
/// operations appended since the last one are as large as that snapshot was, so that what a new process parses to
/// start (the snapshot, then the operations after it) stays within about twice a snapshot: its start costs what the
/// kernel's state costs to read, not what the log's length does. (A fixed count of 1024 operations made a process
/// starting late in the count replay up to a thousand: 4-8 ms.)
const MIN_SNAPSHOT_GAP: u64 = 4 << 10;

/// How long the writer waits for one more submission before committing what it has.
const GATHER_GAP: std::time::Duration = std::time::Duration::from_micros(50);

/// The longest the writer gathers a batch.
const GATHER_MAX: std::time::Duration = std::time::Duration::from_micros(500);

/// The key of the kernel snapshot in [`KERNEL`].
const SNAPSHOT: &str = "snapshot";

/// The key in [`KERNEL`] of the snapshot's pace: bytes of operations appended since the snapshot, then the bytes at
/// which the next one is due (two little-endian u64). Kept in the database, not in a writer, so that every process
/// (and every node of a cluster, applying the same operations) snapshots at the same operation.
const SNAPSHOT_PACE: &str = "snapshot_pace";

/// The value stored under [`SNAPSHOT_PACE`].
fn encode_pace((since, due): (u64, u64)) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&since.to_le_bytes());
    bytes[8..].copy_from_slice(&due.to_le_bytes());
    bytes
}

/// What [`encode_pace`] stored, if `bytes` is that.
fn decode_pace(bytes: &[u8]) -> Option<(u64, u64)> {
    let (since, due) = bytes.split_first_chunk::<8>()?;
    Some((u64::from_le_bytes(*since), u64::from_le_bytes(due.try_into().ok()?)))
}

/// Longest reason stored in the `op.rejected` event of an operation that does not read back.
const MAX_REASON: usize = 512;

/// Batching policy.
#[derive(Debug, Clone, Copy)]
pub struct GroupCommit {
    /// Most operations in one transaction; 1 means one durable transaction per operation.
    pub max_batch: usize,
}

impl Default for GroupCommit {
    fn default() -> Self {
        GroupCommit { max_batch: 4096 }
    }
}

/// One event's place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub seq: u64,
    pub hash: [u8; 32],
}

/// What a durable operation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The operation's sequence number in the operation log.
    pub op_seq: u64,
    /// The events it produced, in order.
    pub events: Vec<Ack>,
    /// Why the kernel rejected it (then its only event is `op.rejected`).
    pub rejected: Option<String>,
    /// For a state write applied: whether its key held a value before.
    pub state_existed: Option<bool>,
}

#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    #[error("event payload is {0} bytes, over the {MAX_PAYLOAD} byte limit")]
    PayloadTooLarge(usize),
    #[error("event log is closed")]
    Closed,
    #[error("event log storage failed: {0}")]
    Storage(String),
    #[error("operation rejected: {0}")]
    Rejected(String),
    #[error("operation refused: {0}")]
    Invalid(String),
    /// The operation, or an event it produced, would not read back; it was not stored (an `op.rejected` event says
    /// so).
    #[error("operation not recorded: {0}")]
    Unreadable(String),
    /// The log's heads differ from its latest signed checkpoint: it was truncated or rewritten since, so the writer
    /// refuses to extend (and sign) it.
    #[error(
        "event log does not match its latest signed checkpoint ({0}); it may have been tampered with: run `toka-host \
         events verify`"
    )]
    Unanchored(String),
}

/// Why a batch failed as a whole.
#[derive(Debug)]
enum CommitError {
    Storage(redb::Error),
    Unanchored(String),
    Keys(String),
    /// A local writer on a cluster node's database.
    Clustered(String),
}

macro_rules! storage_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for CommitError {
            fn from(e: $t) -> Self {
                CommitError::Storage(e.into())
            }
        }
    )*};
}
storage_errors!(redb::Error, redb::TableError, redb::StorageError, redb::CommitError, redb::TransactionError);

enum Reply {
    Blocking(mpsc::SyncSender<Result<Applied, AppendError>>),
    Async(tokio::sync::oneshot::Sender<Result<Applied, AppendError>>),
    /// A replicated operation: its outcome is returned by [`apply_replicated`] (and sent back through the
    /// replication to whoever proposed it).
    Returned,
}

impl Reply {
    fn send(self, result: Result<Applied, AppendError>) {
        // A caller that stopped waiting (its run was cancelled) still has its operation durably applied.
        match self {
            Reply::Blocking(s) => drop(s.send(result)),
            Reply::Async(s) => drop(s.send(result)),
            Reply::Returned => {}
        }
    }
}

struct Request {
    op: Operation,
    /// The operation's JSON, made by the submitter (which checks its size) so the writer does not redo it.
    encoded: Vec<u8>,
    reply: Reply,
}

/// What this process's writer has done, for metrics and for waking readers of new events.
#[derive(Debug)]
pub struct LogStats {
    /// Events appended.
    pub events: std::sync::atomic::AtomicU64,
    /// Durable commits, and the operations they carried in all.
    pub batches: std::sync::atomic::AtomicU64,
    pub operations: std::sync::atomic::AtomicU64,
    /// Commits by batch size: the count of batches of at most each of [`BATCH_BOUNDS`] operations (not cumulative).
    pub by_size: [std::sync::atomic::AtomicU64; BATCH_BOUNDS.len()],
    /// The sequence number of the last event this process committed (readers wait on it).
    pub head: tokio::sync::watch::Sender<u64>,
    /// Whether the writer is moving the log's old rows to the archive (see [`super::archive`]), and its signal when
    /// it is done.
    moving: std::sync::Mutex<bool>,
    moved: std::sync::Condvar,
}

/// Upper bounds of the batch-size classes in [`LogStats::by_size`].
pub const BATCH_BOUNDS: [u64; 9] = [1, 2, 4, 8, 16, 32, 64, 256, 1024];

impl Default for LogStats {
    fn default() -> Self {
        LogStats {
            events: Default::default(),
            batches: Default::default(),
            operations: Default::default(),
            by_size: Default::default(),
            head: tokio::sync::watch::Sender::new(0),
            moving: std::sync::Mutex::new(false),
            moved: std::sync::Condvar::new(),
        }
    }
}

impl LogStats {
    /// Counts a durable commit of `operations` that appended `events`, the last of them `head` (0: none).
    pub fn committed(&self, operations: usize, events: u64, head: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.events.fetch_add(events, Relaxed);
        self.batches.fetch_add(1, Relaxed);
        self.operations.fetch_add(operations as u64, Relaxed);
        if let Some(i) = BATCH_BOUNDS.iter().position(|b| operations as u64 <= *b) {
            self.by_size[i].fetch_add(1, Relaxed);
        }
        if head > 0 {
            self.head.send_replace(head);
        }
    }

    fn set_moving(&self, moving: bool) {
        *self.moving.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = moving;
        if !moving {
            self.moved.notify_all();
        }
    }

    /// Waits until the writer is not moving old rows to the archive: for a process about to exit without stopping
    /// its writer (one `run`), so that a move it began is finished rather than cut off (a cut-off move loses
    /// nothing, but the next process would start it again). Set before the commit that made the move due is
    /// acknowledged, so a submitter that waits after its acknowledgement sees it.
    pub fn wait_for_upkeep(&self) {
        let mut moving = self.moving.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while *moving {
            moving = self.moved.wait(moving).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

/// A move of the log's old rows under way: [`LogStats::wait_for_upkeep`] waits until it is dropped.
struct Moving<'a>(&'a LogStats);

impl<'a> Moving<'a> {
    fn begin(stats: &'a LogStats) -> Self {
        stats.set_moving(true);
        Moving(stats)
    }
}

impl Drop for Moving<'_> {
    fn drop(&mut self) {
        self.0.set_moving(false);
    }
}

/// The process's submitter. Dropping it drains the queue and stops the writer.
pub struct EventLog {
    queue: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    db: Db,
    stats: std::sync::Arc<LogStats>,
    /// On a cluster node: where operations go instead of this process's writer (the replicated log, which applies
    /// them to this database through [`apply_replicated`]).
    replicator: Option<std::sync::Arc<dyn Replicate>>,
}

/// An event log whose writer is opening its database ([`EventLog::begin_open`]).
pub struct Opening {
    queue: mpsc::Sender<Request>,
    on_open: mpsc::Receiver<Result<Db, String>>,
    writer: Result<JoinHandle<()>, String>,
    stats: std::sync::Arc<LogStats>,
}

impl Opening {
    /// The log, once its database is open; or why it could not be opened.
    pub fn finish(self) -> Result<EventLog, String> {
        let Opening { queue, on_open, writer, stats } = self;
        let writer = writer?;
        match on_open.recv() {
            Ok(Ok(db)) => Ok(EventLog { queue: Some(queue), writer: Some(writer), db, stats, replicator: None }),
            Ok(Err(e)) => {
                drop(writer.join());
                Err(e)
            }
            Err(_) => {
                drop(writer.join());
                Err("opening the event log panicked".into())
            }
        }
    }
}

/// A replicated operation log (the cluster): takes an operation, makes it durable on a quorum, applies it on every
/// node with [`apply_replicated`], and answers with what it did on the node that proposed it. Defined here, and
/// implemented by the layer above, so that the record layer never imports the cluster.
pub trait Replicate: Send + Sync {
    /// Proposes `op` (`encoded`: its exact JSON bytes, which read back) and calls `reply` exactly once with its
    /// outcome, from any thread. Must not block.
    fn propose(&self, op: Operation, encoded: Vec<u8>, reply: Box<dyn FnOnce(Result<Applied, AppendError>) + Send>);
}

/// The key in [`KERNEL`] that marks a database as a cluster node's: its logs are written only by the replicated
/// log ([`apply_replicated`]); a local writer refuses to extend them (that would fork the node's chain from the
/// cluster's).
pub const CLUSTER_MARK: &str = "cluster";

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog").field("db", &self.db).finish()
    }
}

impl EventLog {
    /// Starts the writer on `db`. With `signer` (the home's active root key), every commit stores a signed
    /// checkpoint; without one (tests, benches), none is written, and `events verify` reports whatever this log
    /// appends after an existing checkpoint as an unsigned tail.
    pub fn open(db: Db, policy: GroupCommit, signer: Option<Signer>) -> std::io::Result<Self> {
        EventLog::begin_open(policy, move || Ok((db, signer))).finish().map_err(std::io::Error::other)
    }

    /// [`EventLog::open`] of the database `open` returns, opened on the writer's own thread while the caller goes on
    /// ([`Opening::finish`] waits for it): a process that starts by opening its home starts one thread for its log,
    /// not one to open the database and another to write to it. `open` also says with which [`Signer`].
    pub fn begin_open(
        policy: GroupCommit,
        open: impl FnOnce() -> Result<(Db, Option<Signer>), String> + Send + 'static,
    ) -> Opening {
        let (queue, inbox) = mpsc::channel::<Request>();
        let (opened, on_open) = mpsc::sync_channel(1);
        let max_batch = policy.max_batch.max(1);
        let stats = std::sync::Arc::new(LogStats::default());
        let writer_stats = stats.clone();
        let writer = std::thread::Builder::new().name("toka-events".into()).spawn(move || match open() {
            Ok((db, signer)) => {
                drop(opened.send(Ok(db.clone())));
                write_loop(&db, &inbox, max_batch, signer, &writer_stats);
            }
            Err(e) => drop(opened.send(Err(e))),
        });
        Opening { queue, on_open, writer: writer.map_err(|e| format!("cannot start the event log writer: {e}")), stats }
    }

    /// A submitter that writes nothing itself: every operation goes to `replicator`, which applies it to `db` (on
    /// every node) through [`apply_replicated`] and reports its commits in `stats`.
    pub fn replicated(db: Db, replicator: std::sync::Arc<dyn Replicate>, stats: std::sync::Arc<LogStats>) -> Self {
        EventLog { queue: None, writer: None, db, stats, replicator: Some(replicator) }
    }

    /// Whether operations go to a replicated log rather than this process's writer.
    pub fn is_replicated(&self) -> bool {
        self.replicator.is_some()
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// What this process's writer has done (and a watch on the last event it committed).
    pub fn stats(&self) -> &std::sync::Arc<LogStats> {
        &self.stats
    }

    fn enqueue(&self, mut op: Operation, reply: Reply) -> Result<(), AppendError> {
        // Whoever built the operation, it is bounded before it is encoded (see `crate::bounds`).
        crate::bounds::bound_operation(&mut op).map_err(AppendError::Invalid)?;
        let encoded = serde_json::to_vec(&op).map_err(|e| AppendError::Storage(e.to_string()))?;
        // A state value travels in its operation (bounded on its own above) and is not stored with it.
        let carried = op.op.state_change().and_then(|c| c.value.as_ref()).map_or(0, String::len);
        if encoded.len() - carried > MAX_PAYLOAD + 4096 {
            return Err(AppendError::PayloadTooLarge(encoded.len() - carried));
        }
        if let Some(replicator) = &self.replicator {
            // Every node decodes what it applies: bytes that do not read back are refused before they are proposed
            // (a local writer records an `op.rejected` event instead; here nothing is replicated).
            if let Err(e) = serde_json::from_slice::<Operation>(&encoded) {
                return Err(AppendError::Unreadable(format!("the operation does not read back: {e}")));
            }
            let reply = match reply {
                Reply::Blocking(s) => Box::new(move |r| drop(s.send(r))) as Box<dyn FnOnce(_) + Send>,
                Reply::Async(s) => Box::new(move |r| drop(s.send(r))),
                Reply::Returned => Box::new(drop),
            };
            replicator.propose(op, encoded, reply);
            return Ok(());
        }
        // Whether these exact bytes read back is checked by the writer, which records a rejection as an event.
        let queue = self.queue.as_ref().ok_or(AppendError::Closed)?;
        queue.send(Request { op, encoded, reply }).map_err(|_| AppendError::Closed)
    }

    /// Submits and blocks until the operation and its events are durable. Not for an async runtime's thread.
    pub fn submit(&self, op: Operation) -> Result<Applied, AppendError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.enqueue(op, Reply::Blocking(tx))?;
        rx.recv().map_err(|_| AppendError::Closed)?
    }

    /// Submits and resolves once the operation and its events are durable.
    pub async fn submit_async(&self, op: Operation) -> Result<Applied, AppendError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.enqueue(op, Reply::Async(tx))?;
        rx.await.map_err(|_| AppendError::Closed)?
    }

    /// Like [`Self::submit_async`], but a rejection is an error.
    pub async fn submit_accepted(&self, op: Operation) -> Result<Applied, AppendError> {
        accepted(self.submit_async(op).await)
    }

    /// Submits now, without waiting: the writer commits the operation while the caller does other work, and
    /// [`Pending::accepted`] resolves once it is durable (a rejection is an error, as for
    /// [`Self::submit_accepted`]). Dropping the `Pending` does not withdraw the operation.
    pub fn submit_pending(&self, op: Operation) -> Pending {
        let (tx, rx) = tokio::sync::oneshot::channel();
        Pending(self.enqueue(op, Reply::Async(tx)).map(|()| rx))
    }
}

/// An operation submitted by [`EventLog::submit_pending`].
#[derive(Debug)]
pub struct Pending(Result<tokio::sync::oneshot::Receiver<Result<Applied, AppendError>>, AppendError>);

impl Pending {
    /// Resolves once the operation and its events are durable; a rejection is an error.
    pub async fn accepted(self) -> Result<Applied, AppendError> {
        let applied = match self.0 {
            Ok(rx) => rx.await.map_err(|_| AppendError::Closed)?,
            Err(e) => Err(e),
        };
        accepted(applied)
    }
}

fn accepted(applied: Result<Applied, AppendError>) -> Result<Applied, AppendError> {
    let applied = applied?;
    match applied.rejected {
        Some(reason) => Err(AppendError::Rejected(reason)),
        None => Ok(applied),
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(writer) = self.writer.take() {
            drop(writer.join());
        }
    }
}

fn write_loop(
    db: &Db,
    inbox: &mpsc::Receiver<Request>,
    max_batch: usize,
    mut signer: Option<Signer>,
    stats: &LogStats,
) {
    // Ready before the first submission, while the process is still loading what it will run: the kernel state
    // (the latest snapshot and the operations after it) and the signing key. The first commit then only catches up
    // with what other processes appended meanwhile; a failure here leaves it to that commit, which reports it.
    let mut state = kernel_state(db).unwrap_or_default();
    if let Some(signer) = signer.as_mut() {
        drop(signer.ready());
    }
    // The sizes of the last few batches: once a batch is as large as the largest of them and nothing more is
    // queued, it commits at once instead of waiting out a gap for a submitter that is probably not coming. They
    // start as batches of one: a process's first submission (a run's start, which its guest waits for) commits at
    // once. Batches grow from what queues up during a commit, and the gathering follows them.
    let mut recent = [1usize; 8];
    let mut batches = 0usize;
    // Where the database's event table starts (as far as this process knows), and the head from which moving its old
    // rows to the archive is tried again after a refusal.
    let mut hot_first = super::archive::hot_first(db).unwrap_or(0);
    let mut retry_from = 0u64;
    while let Ok(first) = inbox.recv() {
        let target = recent.iter().copied().max().unwrap_or(1);
        let deadline = std::time::Instant::now() + GATHER_MAX;
        // Gather: callers acknowledged by the previous batch resubmit within microseconds of each other, so wait
        // while they keep arriving (a gap of GATHER_GAP ends the wait, GATHER_MAX caps it). Each arrival is applied
        // and appended inside the open transaction as it comes, so that the batch's work overlaps the wait and only
        // the durable commit remains once the last one is in.
        let next = |len: usize| -> Option<Request> {
            if len >= max_batch {
                return None;
            }
            match inbox.try_recv() {
                Ok(r) => Some(r),
                Err(mpsc::TryRecvError::Disconnected) => None,
                Err(mpsc::TryRecvError::Empty) => {
                    let now = std::time::Instant::now();
                    if len >= target || now >= deadline {
                        return None;
                    }
                    inbox.recv_timeout(GATHER_GAP.min(deadline - now)).ok()
                }
            }
        };
        let mut batch = Vec::new();
        let result = commit(db, &mut state, signer.as_mut(), first, &mut batch, next, None);
        recent[batches % recent.len()] = batch.len();
        batches += 1;
        match result {
            Ok(outcomes) => {
                let applied = outcomes.iter().flatten();
                let events = applied.clone().map(|a| a.events.len() as u64).sum();
                let head = applied.flat_map(|a| a.events.last()).map(|e| e.seq).max().unwrap_or(0);
                stats.committed(batch.len(), events, head);
                let move_due = head >= retry_from && super::archive::due(hot_first.max(1), head);
                // Set before the answers (see `wait_for_upkeep`), cleared however the move ends, a panic included.
                let _moving = move_due.then(|| Moving::begin(stats));
                for (request, outcome) in batch.into_iter().zip(outcomes) {
                    request.reply.send(outcome);
                }
                if move_due {
                    // After the answers: nobody waits on the move, which takes tens of milliseconds.
                    match super::archive::move_old_rows(db) {
                        Ok(Some(moved)) => tracing::debug!(?moved, "moved the log's old rows to the archive"),
                        // Refused, or not due after all (another process moved them; or a cluster node's database,
                        // whose rows never move): not tried again on every commit.
                        other => {
                            if let Err(why) = other {
                                tracing::warn!("the log's old rows stay in the database: {why}");
                            }
                            retry_from = head + (super::archive::HOT_MAX - super::archive::HOT_KEEP);
                        }
                    }
                    hot_first = super::archive::hot_first(db).unwrap_or(hot_first);
                }
            }
            Err(e) => {
                // The in-memory state may hold operations that never committed: rebuild it from the log next time.
                state = State::default();
                let error = match e {
                    CommitError::Storage(e) => AppendError::Storage(crate::error::one_line(&e.to_string())),
                    CommitError::Unanchored(why) => AppendError::Unanchored(why),
                    CommitError::Keys(why) => AppendError::Storage(format!("cannot sign the log's checkpoint: {why}")),
                    CommitError::Clustered(why) => AppendError::Invalid(why),
                };
                for request in batch {
                    request.reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// Brings `state` up to the operation log as it stands in the open transaction: from the latest snapshot if `state`
/// is empty, then every operation after it.
fn catch_up(
    state: &mut State,
    kernel_table: &impl ReadableTable<&'static str, &'static [u8]>,
    op_table: &impl ReadableTable<u64, &'static [u8]>,
) -> Result<(), redb::Error> {
    // Operations the kernel's snapshot covers may have moved to the archive (see `super::archive`) since this
    // state was last caught up: then start again from the snapshot, which covers every moved operation.
    if state.applied > 0 && op_table.first()?.is_some_and(|(k, _)| k.value() > state.applied + 1) {
        *state = State::default();
    }
    if state.applied == 0 {
        // Start from the latest snapshot rather than from the first operation ever.
        if let Some(snapshot) = kernel_table.get(SNAPSHOT)? {
            *state = serde_json::from_slice(snapshot.value())
                .map_err(|e| redb::Error::Corrupted(format!("kernel snapshot is unreadable: {e}")))?;
        }
    }
    for entry in op_table.range(state.applied + 1..)? {
        let (k, v) = entry?;
        // Operations follow one another: a gap (a snapshot deleted or rolled back while the operations before the
        // database's first are archived) would number every later one wrongly, and the next commit would overwrite
        // a stored operation. Fail closed instead.
        if k.value() != state.applied + 1 {
            return Err(redb::Error::Corrupted(format!(
                "the operation log continues at {} where {} was expected: its kernel snapshot does not cover the \
                 operations before it",
                k.value(),
                state.applied + 1
            )));
        }
        let op: Operation = serde_json::from_slice(v.value())
            .map_err(|e| redb::Error::Corrupted(format!("operation {} is unreadable: {e}", k.value())))?;
        kernel::apply(state, &op);
    }
    Ok(())
}

/// The kernel state as the operation log stands now (from the latest snapshot, then every operation after it), for a
/// process that must act on what is live (resuming a plan). Reads only.
pub fn kernel_state(db: &Db) -> Result<State, redb::Error> {
    use redb::ReadableDatabase;
    let txn = db.redb().begin_read()?;
    let mut state = State::default();
    catch_up(&mut state, &txn.open_table(KERNEL)?, &txn.open_table(OPS)?)?;
    Ok(state)
}

/// The sequence number of the last operation the kernel's stored snapshot covers (0: no snapshot).
pub(crate) fn snapshot_applied(
    kernel_table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<u64, redb::Error> {
    #[derive(serde::Deserialize)]
    struct Covered {
        applied: u64,
    }
    let Some(snapshot) = kernel_table.get(SNAPSHOT)? else { return Ok(0) };
    serde_json::from_slice::<Covered>(snapshot.value())
        .map(|c| c.applied)
        .map_err(|e| redb::Error::Corrupted(format!("kernel snapshot is unreadable: {e}")))
}

/// The stored operation `seq`, if there is one (in the database or its archive).
pub fn operation_at(db: &Db, seq: u64) -> Result<Option<Operation>, redb::Error> {
    let Some(value) = super::archive::LogView::begin(db)?.get(OPS, seq)? else { return Ok(None) };
    serde_json::from_slice(&value)
        .map(Some)
        .map_err(|e| redb::Error::Corrupted(format!("operation {seq} is unreadable: {e}")))
}

/// The name an operation is stored under (its `op` field).
fn op_name(op: &Op) -> &'static str {
    match op {
        Op::ScheduleTask { .. } => "schedule-task",
        Op::DropTask { .. } => "drop-task",
        Op::StartRun { .. } => "start-run",
        Op::SpawnAgent { .. } => "spawn-agent",
        Op::EmitObservation { .. } => "emit-observation",
        Op::WriteState { .. } => "write-state",
        Op::OperatorWriteState { .. } => "operator-write-state",
        Op::CompleteRun { .. } => "complete-run",
        Op::FailRun { .. } => "fail-run",
        Op::LoseRun { .. } => "lose-run",
        Op::RefuseRun { .. } => "refuse-run",
        Op::RevokeToken { .. } => "revoke-token",
        Op::StartToolCall { .. } => "start-tool-call",
        Op::ReachLimit { .. } => "reach-limit",
        Op::EndToolCall { .. } => "end-tool-call",
        Op::StartPlan { .. } => "start-plan",
        Op::StartStep { .. } => "start-step",
        Op::EndStep { .. } => "end-step",
        Op::SkipStep { .. } => "skip-step",
        Op::EndPlan { .. } => "end-plan",
        Op::ChangeHome { .. } => "change-home",
        Op::StartLlmCall { .. } => "start-llm-call",
        Op::EndLlmCall { .. } => "end-llm-call",
    }
}

/// The `op.rejected` event of an operation that does not read back: flat and bounded, so that it always does.
fn unreadable_event(op: &Operation, reason: &str) -> EventDraft {
    let run_id = match &op.op {
        Op::StartRun { run_id, .. }
        | Op::SpawnAgent { run_id, .. }
        | Op::EmitObservation { run_id, .. }
        | Op::WriteState { run_id, .. }
        | Op::CompleteRun { run_id, .. }
        | Op::FailRun { run_id, .. }
        | Op::LoseRun { run_id, .. }
        | Op::ReachLimit { run_id, .. }
        | Op::StartToolCall { run_id: Some(run_id), .. }
        | Op::EndToolCall { run_id: Some(run_id), .. }
        | Op::StartLlmCall { run_id: Some(run_id), .. }
        | Op::EndLlmCall { run_id: Some(run_id), .. } => run_id.as_str(),
        _ => "",
    };
    let run_id = if run_id.len() <= crate::bounds::MAX_ID { run_id } else { "" };
    let mut reason = reason.to_string();
    crate::bounds::truncate(&mut reason, MAX_REASON);
    EventDraft {
        time_ms: op.time_ms,
        kind: kernel::kind::OP_REJECTED.into(),
        agent: String::new(),
        run_id: run_id.into(),
        payload: serde_json::json!({ "reason": reason, "op": op_name(&op.op), "stored": false }),
    }
}

/// What a replicated batch records in its own transaction (see [`apply_replicated`]).
type ReplicatedHook<'a> = dyn FnMut(&redb::WriteTransaction) -> Result<(), redb::Error> + 'a;

/// In one durable transaction: catches `state` up with the operation log, checks that the logs still match their
/// latest checkpoint (with a signer), then applies and appends `first` and each further submission `next` yields
/// (called with the batch's size so far, `None` ends the batch), and stores the new heads and checkpoint. Every
/// submission taken is pushed onto `batch` before anything can fail, so the caller can answer each one; the outcome
/// of each is in the same order.
///
/// `replicated`: the batch comes from the cluster's replicated log, and this hook records, in the same transaction,
/// how far the replicated log has been applied. Without it (a local writer), a cluster node's database is refused.
fn commit(
    db: &Db,
    state: &mut State,
    signer: Option<&mut Signer>,
    first: Request,
    batch: &mut Vec<Request>,
    mut next: impl FnMut(usize) -> Option<Request>,
    replicated: Option<&mut ReplicatedHook<'_>>,
) -> Result<Vec<Result<Applied, AppendError>>, CommitError> {
    batch.push(first);
    // Without a key (no signer, or a home without a root key yet) this commit stores no checkpoint.
    let signer = match signer {
        Some(s) => {
            let ready = s.ready().map_err(|e| CommitError::Keys(e.to_string()))?;
            ready.then_some(&*s)
        }
        None => None,
    };
    let txn = db.redb().begin_write()?;
    let mut outcomes = Vec::new();
    {
        let mut op_table = txn.open_table(OPS)?;
        let mut events = txn.open_table(EVENTS)?;
        let mut kernel_table = txn.open_table(KERNEL)?;
        let mut revoked = txn.open_table(REVOKED)?;
        let mut checkpoints = txn.open_table(CHECKPOINTS)?;
        let mut agent_state = crate::agent_state::Tables::open(&txn)?;
        if replicated.is_none()
            && let Some(cluster) = kernel_table.get(CLUSTER_MARK)?
        {
            let cluster = String::from_utf8_lossy(cluster.value()).into_owned();
            return Err(CommitError::Clustered(format!(
                "this database belongs to a node of cluster {cluster}: its log is written only through the cluster \
                 (`toka-host serve --cluster ...`, or `--server` to a node)"
            )));
        }
        catch_up(state, &kernel_table, &op_table)?;
        // Bytes of the operations this batch appends, toward the next snapshot.
        let mut appended_bytes = 0u64;
        let (mut seq, mut prev) = match events.last()? {
            None => (0, GENESIS),
            Some((k, v)) => {
                // Never extend a chain whose head cannot be read: fail closed instead of forking the chain.
                let (hash, _) = split(v.value())
                    .ok_or_else(|| redb::Error::Corrupted(format!("event {} is shorter than its hash", k.value())))?;
                (k.value(), hash)
            }
        };
        // The running heads of the operations and revocations. A writer without a signer signs nothing, so it
        // recomputes what it cannot take from the record; a signing writer refuses instead.
        let mut ops_chain = match checkpoint::ops_chain(&kernel_table, &op_table)? {
            Ok(chain) => chain,
            Err(why) if signer.is_some() => return Err(CommitError::Unanchored(why)),
            Err(_) => {
                let mut chain = Chain::EMPTY;
                for entry in super::archive::LogView::begin(db)?.rows(OPS, 1)? {
                    let (k, v) = entry?;
                    chain.push_op(k.value(), v.value());
                }
                chain
            }
        };
        let mut revocations = match checkpoint::recorded_revocations(&kernel_table, &revoked)? {
            Ok(digest) => digest,
            Err(why) if signer.is_some() => return Err(CommitError::Unanchored(why)),
            Err(_) => checkpoint::revocations_digest(&revoked)?,
        };
        if signer.is_some()
            && let Some(latest) = checkpoint::latest(&checkpoints)?
        {
            let signed = latest
                .and_then(|cp| cp.heads())
                .map_err(|why| CommitError::Unanchored(format!("the latest checkpoint is unreadable: {why}")))?;
            let current = Heads { events: Chain { seq, head: prev }, ops: ops_chain, revoked: revocations };
            if let Some(why) = checkpoint::mismatch(&signed, &current) {
                return Err(CommitError::Unanchored(why));
            }
        }
        let mut revocations_checked = false;
        let mut revocations_changed = false;
        let mut time_ms = 0;
        loop {
            let request = batch.last().expect("the batch holds at least the first submission");
            time_ms = time_ms.max(request.op.time_ms);
            // A state write: what is stored and applied is decided here, on the tables of this transaction.
            let prepared = match request.op.op.state_change() {
                Some(change) => Some(prepare_state_write(state, &agent_state, &request.op, change)?),
                None => None,
            };
            let (op, encoded) = match &prepared {
                Some(p) => (&p.stored, p.encoded.as_slice()),
                None => (&request.op, request.encoded.as_slice()),
            };
            let outcome: Result<Applied, AppendError> = 'one: {
                // The exact bytes to be stored must read back, and so must every event the operation produces: a
                // value that cannot be decoded would make the log unreadable for every later process.
                let unreadable = if let Err(e) = serde_json::from_slice::<Operation>(encoded) {
                    format!("the operation does not read back: {e}")
                } else {
                    let drafts = kernel::apply(state, op);
                    let mut values = Vec::with_capacity(drafts.len());
                    let (mut s, mut p) = (seq, prev);
                    let mut bad = None;
                    for draft in &drafts {
                        s += 1;
                        let (value, hash) = encode(s, &p, draft);
                        if let Err(e) = decodes(&value) {
                            bad = Some(format!("its {} event: {e}", draft.kind));
                            break;
                        }
                        values.push((s, value, hash));
                        p = hash;
                    }
                    match bad {
                        Some(why) => {
                            // Undo what applying it did to the state: rebuild it from the logs of this transaction,
                            // which do not hold it.
                            *state = State::default();
                            catch_up(state, &kernel_table, &op_table)?;
                            why
                        }
                        None => {
                            op_table.insert(state.applied, encoded)?;
                            appended_bytes += encoded.len() as u64;
                            ops_chain.push_op(state.applied, encoded);
                            let rejected = drafts
                                .first()
                                .filter(|d| d.kind == kernel::kind::OP_REJECTED)
                                .map(|d| d.payload["reason"].as_str().unwrap_or("rejected").to_string());
                            if let (None, Op::RevokeToken { token_id }) = (&rejected, &op.op) {
                                if signer.is_some() && !revocations_checked {
                                    // Re-deriving the digest from a table edited since the last checkpoint would
                                    // sign the edit: the table must still be what was recorded.
                                    if checkpoint::revocations_digest(&revoked)? != revocations {
                                        return Err(CommitError::Unanchored(
                                            "the revocations table differs from its recorded digest".into(),
                                        ));
                                    }
                                    revocations_checked = true;
                                }
                                revoked.insert(token_id.as_str(), op.time_ms)?;
                                revocations_changed = true;
                            }
                            let mut state_existed = None;
                            if let (None, Some(PreparedState { write: Some(w), .. })) = (&rejected, prepared) {
                                let existed = agent_state.apply(&w.agent, &w.key, w.value.as_deref(), w.planned)?;
                                state_existed = Some(existed);
                            }
                            let mut acks = Vec::with_capacity(values.len());
                            for (s, value, hash) in values {
                                events.insert(s, value.as_slice())?;
                                acks.push(Ack { seq: s, hash });
                            }
                            (seq, prev) = (s, p);
                            break 'one Ok(Applied { op_seq: state.applied, events: acks, rejected, state_existed });
                        }
                    }
                };
                // Rejected on its own: recorded as an event (flat and bounded, so it reads back), never stored as an
                // operation.
                let (value, hash) = encode(seq + 1, &prev, &unreadable_event(op, &unreadable));
                if decodes(&value).is_ok() {
                    seq += 1;
                    events.insert(seq, value.as_slice())?;
                    prev = hash;
                }
                Err(AppendError::Unreadable(unreadable))
            };
            outcomes.push(outcome);
            match next(batch.len()) {
                Some(request) => batch.push(request),
                None => break,
            }
        }
        if revocations_changed {
            revocations = checkpoint::revocations_digest(&revoked)?;
        }
        checkpoint::record_heads(&mut kernel_table, ops_chain, revocations)?;
        if let Some(signer) = signer {
            let heads = Heads { events: Chain { seq, head: prev }, ops: ops_chain, revoked: revocations };
            if let Some(cp) = signer.sign(&heads, time_ms) {
                checkpoint::store(&mut checkpoints, &cp)?;
            }
        }
        if appended_bytes > 0 {
            // Unreadable (never written by this version): due now, since a snapshot is always correct to store.
            let (since, due) = kernel_table
                .get(SNAPSHOT_PACE)?
                .map_or(Some((0, MIN_SNAPSHOT_GAP)), |v| decode_pace(v.value()))
                .unwrap_or((u64::MAX, 0));
            let since = since.saturating_add(appended_bytes);
            let pace = if since >= due {
                let snapshot = serde_json::to_vec(&*state).expect("the kernel state always serializes");
                kernel_table.insert(SNAPSHOT, snapshot.as_slice())?;
                (0, (snapshot.len() as u64).max(MIN_SNAPSHOT_GAP))
            } else {
                (since, due)
            };
            kernel_table.insert(SNAPSHOT_PACE, encode_pace(pace).as_slice())?;
        }
    }
    if let Some(hook) = replicated {
        hook(&txn)?;
    }
    txn.commit()?;
    Ok(outcomes)
}

/// A state write as the writer stores and applies it.
struct PreparedState {
    /// The operation stored: the value replaced by its digest, and the writer's refusal if any.
    stored: Operation,
    encoded: Vec<u8>,
    /// What to apply if the kernel accepts it (none if refused here, or if the kernel will reject it anyway).
    write: Option<StateWrite>,
}

struct StateWrite {
    agent: String,
    key: String,
    value: Option<Vec<u8>>,
    planned: crate::agent_state::Planned,
}

/// Decides what a state write stores and applies: its value must match its digest and fit the agent's quota on the
/// tables as this transaction has them (so two writes that each fit alone cannot together pass it). A refusal is
/// written into the stored operation, where the kernel rejects it now and on every replay, on every node alike.
fn prepare_state_write(
    state: &State,
    tables: &crate::agent_state::Tables<'_>,
    op: &Operation,
    change: &kernel::StateChange,
) -> Result<PreparedState, redb::Error> {
    let agent = match &op.op {
        Op::WriteState { run_id, .. } => state.runs.get(run_id).map(|r| r.agent.clone()),
        Op::OperatorWriteState { agent, .. } => Some(agent.clone()),
        _ => None,
    };
    let mut write = None;
    let refused = match (&change.refused, agent) {
        (Some(why), _) => Some(why.clone()),
        // Not a live run's: the kernel rejects it.
        (None, None) => None,
        (None, Some(agent)) => match change.decoded() {
            Err(why) => Some(why),
            Ok(value) => match tables.plan(&agent, &change.key, value.as_ref().map(Vec::len))? {
                Err(why) => Some(why),
                Ok(planned) => {
                    write = Some(StateWrite { agent, key: change.key.clone(), value, planned });
                    None
                }
            },
        },
    };
    let mut stored = op.clone();
    stored.op.set_state_change(change.stored(refused));
    let encoded = serde_json::to_vec(&stored).expect("an operation always serializes");
    Ok(PreparedState { stored, encoded, write })
}

/// Applies operations of the cluster's replicated log to this node's database, exactly as a local writer's batch
/// does (the same kernel, the same checks, the same chain), in one durable transaction that also runs `hook` (the
/// replicated log's own bookkeeping: how far it has been applied). Every node applies the same operations in the
/// same order from the same state, so its events and their hash chain are byte-identical to every other node's.
///
/// `ops` are the exact bytes proposed; bytes that do not decode (never proposed by a toka-host node) are answered
/// as unreadable and change nothing, on every node alike. On an error the transaction is abandoned and `state` is
/// reset (to be rebuilt from the database by the next call).
pub fn apply_replicated(
    db: &Db,
    state: &mut State,
    signer: Option<&mut Signer>,
    ops: Vec<Vec<u8>>,
    mut hook: impl FnMut(&redb::WriteTransaction) -> Result<(), redb::Error>,
) -> Result<Vec<Result<Applied, AppendError>>, AppendError> {
    let mut outcomes: Vec<Option<Result<Applied, AppendError>>> = Vec::with_capacity(ops.len());
    let mut requests = Vec::with_capacity(ops.len());
    for encoded in ops {
        match serde_json::from_slice::<Operation>(&encoded) {
            Ok(op) => {
                outcomes.push(None);
                requests.push(Request { op, encoded, reply: Reply::Returned });
            }
            Err(e) => {
                outcomes.push(Some(Err(AppendError::Unreadable(format!("the operation does not read back: {e}")))))
            }
        }
    }
    let mut rest = requests.into_iter();
    let result = match rest.next() {
        Some(first) => {
            let mut batch = Vec::new();
            commit(db, state, signer, first, &mut batch, |_| rest.next(), Some(&mut hook))
        }
        None => (|| {
            // Nothing to apply (membership changes, a new leader's blank entry): the bookkeeping alone.
            let txn = db.redb().begin_write()?;
            hook(&txn)?;
            txn.commit()?;
            Ok(Vec::new())
        })(),
    };
    match result {
        Ok(applied) => {
            let mut applied = applied.into_iter();
            Ok(outcomes
                .into_iter()
                .map(|o| o.unwrap_or_else(|| applied.next().unwrap_or(Err(AppendError::Closed))))
                .collect())
        }
        Err(e) => {
            *state = State::default();
            Err(match e {
                CommitError::Storage(e) => AppendError::Storage(crate::error::one_line(&e.to_string())),
                CommitError::Unanchored(why) => AppendError::Unanchored(why),
                CommitError::Keys(why) => AppendError::Storage(format!("cannot sign the log's checkpoint: {why}")),
                CommitError::Clustered(why) => AppendError::Invalid(why),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::checkpoint::{Log, Tamper};
    use crate::events::{Filter, read, verify};
    use crate::token::keys::KeyStore;
    use serde_json::json;

    fn op(o: Op) -> Operation {
        Operation { time_ms: 1, token: "t".into(), chain: Vec::new(), op: o }
    }

    fn start(run: &str) -> Operation {
        op(Op::StartRun {
            run_id: run.into(),
            agent: "a".into(),
            task_id: None,
            detail: json!({}),
            rate: None,
            node: None,
        })
    }

    fn emit(run: &str, i: u64) -> Operation {
        op(Op::EmitObservation { run_id: run.into(), kind: "k".into(), payload: json!(i) })
    }

    fn write_state(run: &str, change: kernel::StateChange) -> Operation {
        op(Op::WriteState { run_id: run.into(), detail: json!({ "key": change.key }), change: Some(change) })
    }

    #[test]
    fn a_state_write_is_applied_with_its_record_within_the_quota_and_the_log_keeps_only_its_digest() {
        use crate::agent_state::{MAX_VALUE, OVER_QUOTA, get};
        use kernel::StateChange;
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("s.redb")).unwrap();
        let big = vec![7u8; MAX_VALUE];
        // One batch: the quota is checked on the tables as the batch has them, so of 17 writes of 1 MiB that each
        // fit alone, the 16th and 17th do not fit after the 15 before them.
        let mut ops = vec![start("r")];
        for i in 0..17 {
            let key = format!("k{i:02}");
            ops.push(write_state("r", StateChange::set(&key, &big)));
        }
        ops.push(write_state("r", StateChange::delete("k00")));
        ops.push(write_state("r", StateChange::delete("never")));
        // Once k00 is gone, k16 fits again: the usage went down with the delete.
        ops.push(write_state("r", StateChange::set("k16", &big)));
        // A value that is not what its digest says; a write of a run that is not running.
        let mut forged = StateChange::set("f", b"one");
        forged.value = StateChange::set("f", b"two").value;
        ops.push(write_state("r", forged));
        ops.push(write_state("gone", StateChange::set("n", b"x")));
        let out = one_batch(&db, None, ops);
        let applied: Vec<Applied> = out.into_iter().map(Result::unwrap).collect();
        for a in &applied[1..16] {
            assert_eq!((&a.rejected, a.state_existed), (&None, Some(false)));
        }
        for a in &applied[16..18] {
            assert!(a.rejected.as_deref().unwrap().starts_with(OVER_QUOTA), "{a:?}");
            assert_eq!(a.state_existed, None);
        }
        assert_eq!((&applied[18].rejected, applied[18].state_existed), (&None, Some(true)), "k00 existed");
        assert_eq!((&applied[19].rejected, applied[19].state_existed), (&None, Some(false)), "never did not");
        assert_eq!((&applied[20].rejected, applied[20].state_existed), (&None, Some(false)), "k16 fits now");
        assert!(applied[21].rejected.as_deref().unwrap().contains("does not match its digest"));
        assert!(applied[22].rejected.as_deref().unwrap().contains("not running"));
        assert_eq!(get(&db, "a", "k01").unwrap().as_deref(), Some(big.as_slice()));
        assert_eq!(get(&db, "a", "k16").unwrap().as_deref(), Some(big.as_slice()));
        for absent in ["k00", "k15", "f"] {
            assert_eq!(get(&db, "a", absent).unwrap(), None, "{absent}");
        }
        assert_eq!(get(&db, "", "n").unwrap(), None);
        // The stored operations hold no value, only digests (and the refusals, replayed the same way by
        // `one_batch`'s check): 16 MiB written, a few KiB stored.
        let txn = redb::ReadableDatabase::begin_read(db.redb()).unwrap();
        let mut stored = 0;
        for row in txn.open_table(OPS).unwrap().iter().unwrap() {
            let (_, bytes) = row.unwrap();
            stored += bytes.value().len();
            let op: Operation = serde_json::from_slice(bytes.value()).unwrap();
            assert!(op.op.state_change().is_none_or(|c| c.value.is_none()), "{op:?}");
        }
        assert!(stored < 16 << 10, "the operations take {stored} bytes");
        let usage = txn.open_table(crate::db::STATE_USAGE).unwrap().get("a").unwrap().unwrap().value();
        assert_eq!(usage, 15 * (MAX_VALUE as u64 + 3));
    }

    #[test]
    fn an_oversized_state_write_is_refused_before_it_is_proposed_and_one_at_the_bound_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(Db::open(&dir.path().join("s.redb")).unwrap(), GroupCommit::default(), None).unwrap();
        log.submit(start("r")).unwrap();
        let max = crate::agent_state::MAX_VALUE;
        let at_bound = log.submit(write_state("r", kernel::StateChange::set("k", &vec![1; max]))).unwrap();
        assert_eq!((at_bound.rejected, at_bound.state_existed), (None, Some(false)));
        let over = log.submit(write_state("r", kernel::StateChange::set("k", &vec![1; max + 1]))).unwrap_err();
        assert!(matches!(&over, AppendError::Invalid(why) if why.contains("state value is over")), "{over:?}");
        let long_key = "k".repeat(crate::agent_state::MAX_KEY + 1);
        let bad_key = log.submit(write_state("r", kernel::StateChange::set(&long_key, b"v"))).unwrap_err();
        assert!(matches!(&bad_key, AppendError::Invalid(why) if why.contains("state keys")), "{bad_key:?}");
    }

    #[test]
    fn submissions_are_sequenced_chained_and_durable_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        {
            let log = EventLog::open(Db::open(&path).unwrap(), GroupCommit::default(), None).unwrap();
            log.submit(start("r")).unwrap();
            let mut seqs = Vec::new();
            std::thread::scope(|s| {
                let log = &log;
                let threads: Vec<_> = (0..8)
                    .map(|t| {
                        s.spawn(move || {
                            (0..25)
                                .map(|i| log.submit(emit("r", t * 100 + i)).unwrap().events[0].seq)
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                for t in threads {
                    seqs.extend(t.join().unwrap());
                }
            });
            seqs.sort_unstable();
            assert_eq!(seqs, (2..=201).collect::<Vec<_>>());
        }
        let db = Db::open(&path).unwrap();
        let v = verify(&db).unwrap();
        assert_eq!((v.records, v.first_bad.clone()), (201, None));
        // A new process: its kernel state is rebuilt from the operation log, so it knows run `r` is running.
        let log = EventLog::open(db.clone(), GroupCommit { max_batch: 1 }, None).unwrap();
        let applied = log.submit(emit("r", 7)).unwrap();
        assert_eq!((applied.op_seq, applied.events[0].seq, applied.rejected), (202, 202, None));
        let rejected = log.submit(emit("never-started", 1)).unwrap();
        assert_eq!(rejected.rejected.as_deref(), Some("run never-started is not running"));
        assert_eq!(verify(&db).unwrap().records, 203);
        let only = read(&db, &Filter { after: Some(201), ..Filter::default() }).unwrap();
        assert_eq!(only.iter().map(|r| r.kind.as_str()).collect::<Vec<_>>(), vec!["observation", "op.rejected"]);
    }

    /// Snapshots come once the operations since the last one outweigh it, so a new process never replays more than
    /// about a snapshot's bytes (a fixed count of 1024 operations replayed up to a thousand), and each snapshot is
    /// exactly what replaying the operations before it gives.
    #[test]
    fn a_new_process_starts_from_the_snapshot_and_agrees_with_replay() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.redb")).unwrap();
        let log = EventLog::open(db.clone(), GroupCommit::default(), None).unwrap();
        log.submit(start("r")).unwrap();
        let mut snapshots = std::collections::BTreeSet::new();
        for i in 0..400 {
            log.submit(emit("r", i)).unwrap();
            let txn = redb::ReadableDatabase::begin_read(db.redb()).unwrap();
            let kernel_table = txn.open_table(KERNEL).unwrap();
            let Some(snapshot) = kernel_table.get(SNAPSHOT).unwrap() else { continue };
            let snapshot_len = snapshot.value().len() as u64;
            let snapshot: State = serde_json::from_slice(snapshot.value()).unwrap();
            let ops = txn.open_table(OPS).unwrap();
            let after: u64 =
                ops.range(snapshot.applied + 1..).unwrap().map(|e| e.unwrap().1.value().len() as u64).sum();
            assert!(after < snapshot_len.max(MIN_SNAPSHOT_GAP), "{after} bytes of operations after the snapshot");
            let pace = decode_pace(kernel_table.get(SNAPSHOT_PACE).unwrap().unwrap().value()).unwrap();
            assert_eq!(pace, (after, snapshot_len.max(MIN_SNAPSHOT_GAP)));
            if snapshots.insert(snapshot.applied) {
                let before: Vec<Operation> = ops
                    .range(..=snapshot.applied)
                    .unwrap()
                    .map(|e| serde_json::from_slice(e.unwrap().1.value()).unwrap())
                    .collect();
                assert_eq!(kernel::replay(&before), snapshot);
            }
        }
        assert!(snapshots.len() >= 2, "snapshots at {snapshots:?}");
        drop(log);
        let log = EventLog::open(db.clone(), GroupCommit::default(), None).unwrap();
        assert_eq!(log.submit(emit("r", 0)).unwrap().rejected, None, "run r is known from snapshot + catch-up");
    }

    #[test]
    fn two_processes_share_one_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let db = Db::open(&path).unwrap();
        let one = EventLog::open(db.clone(), GroupCommit::default(), None).unwrap();
        let two = EventLog::open(db.clone(), GroupCommit::default(), None).unwrap();
        one.submit(start("r")).unwrap();
        // `two` has never seen `r` start; it catches up from the operation log inside its transaction.
        assert_eq!(two.submit(emit("r", 1)).unwrap().rejected, None);
        assert_eq!(verify(&db).unwrap().first_bad, None);
    }

    #[test]
    fn oversized_operations_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(Db::open(&dir.path().join("t.redb")).unwrap(), GroupCommit::default(), None).unwrap();
        let big = op(Op::EmitObservation {
            run_id: "r".into(),
            kind: "k".into(),
            payload: json!("x".repeat(MAX_PAYLOAD + 5000)),
        });
        assert!(matches!(log.submit(big), Err(AppendError::PayloadTooLarge(_))));
    }

    /// `[[...[0]...]]`, `depth` levels deep.
    fn nested(depth: usize) -> serde_json::Value {
        let mut v = json!(0);
        for _ in 0..depth {
            v = json!([v]);
        }
        v
    }

    /// A submission as `enqueue` makes it, minus the bounds `enqueue` applies first: what reaches the writer if
    /// those bounds ever miss a case.
    fn unbounded(op: Operation) -> Request {
        let (tx, _) = mpsc::sync_channel(1);
        let encoded = serde_json::to_vec(&op).unwrap();
        Request { op, encoded, reply: Reply::Blocking(tx) }
    }

    /// Runs one batch of `ops` through the writer, as one group commit.
    fn one_batch(db: &Db, signer: Option<&mut Signer>, ops: Vec<Operation>) -> Vec<Result<Applied, AppendError>> {
        let mut rest = ops.into_iter().map(unbounded);
        let first = rest.next().unwrap();
        let mut state = State::default();
        let mut batch = Vec::new();
        let outcomes = commit(db, &mut state, signer, first, &mut batch, |_| rest.next(), None).unwrap();
        // What the writer keeps in memory is what replaying the stored operations gives.
        let txn = redb::ReadableDatabase::begin_read(db.redb()).unwrap();
        let stored: Vec<Operation> = txn
            .open_table(OPS)
            .unwrap()
            .iter()
            .unwrap()
            .map(|e| serde_json::from_slice(e.unwrap().1.value()).unwrap())
            .collect();
        assert_eq!(state, kernel::replay(&stored), "the state holds no trace of an operation that was not stored");
        outcomes
    }

    /// serde_json reads at most 127 levels of nesting. An observation's operation wraps its payload in 1 level, its
    /// event in 2, and the `op.rejected` event of a refused one (which quotes the operation) in 3: a payload that
    /// passes at one layer can break the next. Whichever layer breaks, that operation alone is rejected with an
    /// event, nothing of it is stored, and the rest of the batch commits.
    #[test]
    fn an_operation_whose_bytes_do_not_read_back_is_rejected_alone() {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyStore::load_or_init(dir.path(), 1).unwrap();
        let mut signer = Signer::from_keys(&keys).unwrap();
        let db = Db::open(&dir.path().join("t.redb")).unwrap();
        let deep = |run: &str, d| op(Op::EmitObservation { run_id: run.into(), kind: "k".into(), payload: nested(d) });
        assert!(serde_json::from_slice::<Operation>(&serde_json::to_vec(&deep("r", 126)).unwrap()).is_ok());
        let outcomes = one_batch(
            &db,
            Some(&mut signer),
            vec![
                start("r"),
                emit("r", 1),
                deep("r", 125),    // 127 levels in its event: stored
                deep("r", 126),    // the operation reads back (127 levels), its event (128) does not
                deep("r", 127),    // the operation itself does not read back
                deep("gone", 125), // refused by the kernel (no such run); its op.rejected event has 128 levels
                emit("r", 2),
            ],
        );
        let errors: Vec<String> = outcomes
            .iter()
            .map(|o| match o {
                Ok(a) => format!("ok {}", a.op_seq),
                Err(AppendError::Unreadable(why)) => why.split(':').next().unwrap().to_string(),
                Err(e) => panic!("{e}"),
            })
            .collect();
        assert_eq!(
            errors,
            [
                "ok 1",
                "ok 2",
                "ok 3",
                "its observation event",
                "the operation does not read back",
                "its op.rejected event",
                "ok 4"
            ]
        );
        let all = read(&db, &Filter::default()).unwrap();
        let kinds: Vec<&str> = all.iter().map(|r| r.kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["run.started", "observation", "observation", "op.rejected", "op.rejected", "op.rejected", "observation"]
        );
        for r in &all[3..6] {
            assert_eq!(
                (r.payload["op"].as_str(), r.payload["stored"].as_bool()),
                (Some("emit-observation"), Some(false))
            );
            assert!(r.payload["reason"].as_str().unwrap().contains("recursion limit exceeded"), "{}", r.payload);
        }
        assert_eq!((all[3].run_id.as_str(), all[5].run_id.as_str()), ("r", "gone"));
        let v = verify(&db).unwrap();
        assert_eq!((v.records, v.first_bad), (7, None));
        let (_, anchoring) = checkpoint::verify(&db, &keys, None).unwrap();
        assert_eq!((anchoring.problem, anchoring.ops), (None, 4));
        // A new process reads everything and goes on from there.
        let log = EventLog::open(db.clone(), GroupCommit::default(), Some(signer)).unwrap();
        let applied = log.submit(emit("r", 3)).unwrap();
        assert_eq!((applied.op_seq, applied.events[0].seq, applied.rejected), (5, 8, None));
        assert_eq!(checkpoint::verify(&db, &keys, None).unwrap().1.problem, None);
    }

    /// Runs `change` on the raw database, as an attacker with write access to the file would.
    fn tamper(db: &Db, change: impl FnOnce(&redb::WriteTransaction)) {
        let txn = db.redb().begin_write().unwrap();
        change(&txn);
        txn.commit().unwrap();
    }

    #[test]
    fn every_commit_is_anchored_and_a_signing_writer_never_extends_a_truncated_log() {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyStore::load_or_init(dir.path(), 1).unwrap();
        let db = Db::open(&dir.path().join("t.redb")).unwrap();
        let log = EventLog::open(db.clone(), GroupCommit::default(), Some(Signer::from_keys(&keys).unwrap())).unwrap();
        log.submit(start("r")).unwrap();
        for i in 0..5 {
            log.submit(emit("r", i)).unwrap();
            // Positive control: after every commit the latest checkpoint is the log's current heads.
            let (chain, anchoring) = checkpoint::verify(&db, &keys, None).unwrap();
            assert_eq!((anchoring.problem, anchoring.latest.unwrap().events_seq), (None, chain.records));
        }
        tamper(&db, |txn| {
            txn.open_table(EVENTS).unwrap().remove(6).unwrap();
        });
        let problem = checkpoint::verify(&db, &keys, None).unwrap().1.problem;
        assert_eq!(problem, Some(Tamper::Truncated { at: "at event 6".into(), log: Log::Events, signed: 6, found: 5 }));
        let refused = log.submit(emit("r", 9)).unwrap_err();
        assert!(
            matches!(&refused, AppendError::Unanchored(why) if why == "it covers 6 events, the log has 5"),
            "{refused}"
        );
        assert_eq!(verify(&db).unwrap().records, 5, "nothing was appended to the truncated log");
    }

    #[test]
    fn what_a_writer_without_a_signer_appends_is_an_unsigned_tail_that_no_signer_extends() {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyStore::load_or_init(dir.path(), 1).unwrap();
        let db = Db::open(&dir.path().join("t.redb")).unwrap();
        let signed = EventLog::open(db.clone(), GroupCommit::default(), Some(Signer::from_keys(&keys).unwrap()));
        let signed = signed.unwrap();
        signed.submit(start("r")).unwrap();
        signed.submit(emit("r", 0)).unwrap();
        assert_eq!(checkpoint::verify(&db, &keys, None).unwrap().1.problem, None);
        let unsigned = EventLog::open(db.clone(), GroupCommit::default(), None).unwrap();
        unsigned.submit(emit("r", 1)).unwrap();
        unsigned.submit(emit("r", 2)).unwrap();
        let problem = checkpoint::verify(&db, &keys, None).unwrap().1.problem;
        assert_eq!(
            problem,
            Some(Tamper::UnsignedTail { at: "at event 2".into(), log: Log::Events, signed: 2, found: 4 })
        );
        assert!(matches!(signed.submit(emit("r", 3)), Err(AppendError::Unanchored(_))));
    }

    #[test]
    fn revocations_are_anchored_and_an_edited_table_is_never_signed() {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyStore::load_or_init(dir.path(), 1).unwrap();
        let db = Db::open(&dir.path().join("t.redb")).unwrap();
        let log = EventLog::open(db.clone(), GroupCommit::default(), Some(Signer::from_keys(&keys).unwrap())).unwrap();
        log.submit(op(Op::RevokeToken { token_id: "aa".into() })).unwrap();
        log.submit(start("r")).unwrap();
        let (_, anchoring) = checkpoint::verify(&db, &keys, None).unwrap();
        assert_eq!((anchoring.problem, anchoring.revoked), (None, 1));
        // Un-revoke, as an attacker would.
        tamper(&db, |txn| {
            txn.open_table(REVOKED).unwrap().remove("aa").unwrap();
        });
        let changed = Some(Tamper::RevocationsChanged { at: "at event 2".into(), signed: 1, found: 0 });
        assert_eq!(checkpoint::verify(&db, &keys, None).unwrap().1.problem, changed);
        // Other writes go on, and still sign the recorded digest, not the edited table: verify keeps saying so.
        log.submit(emit("r", 1)).unwrap();
        let changed = Some(Tamper::RevocationsChanged { at: "at event 3".into(), signed: 1, found: 0 });
        assert_eq!(checkpoint::verify(&db, &keys, None).unwrap().1.problem, changed);
        // A revocation would re-derive the digest from the table: refused instead.
        let refused = log.submit(op(Op::RevokeToken { token_id: "bb".into() })).unwrap_err();
        assert!(matches!(refused, AppendError::Unanchored(_)), "{refused}");
    }

    /// The home's signer never creates a key: commits before the home has one store no checkpoint, and the first
    /// commit after it has one signs a checkpoint that covers them.
    #[test]
    fn a_homes_signer_creates_no_key_and_anchors_once_there_is_one() {
        let dir = tempfile::tempdir().unwrap();
        let home = crate::home::Home::resolve(Some(dir.path()), None, None, true);
        let db = Db::open(&home.db).unwrap();
        let log = EventLog::open(db.clone(), GroupCommit::default(), Some(Signer::for_home(&home))).unwrap();
        log.submit(start("r")).unwrap();
        assert!(!home.keys().exists(), "writing created no key");
        let keys = KeyStore::load(&home.dir).unwrap();
        let (_, anchoring) = checkpoint::verify(&db, &keys, None).unwrap();
        assert_eq!((anchoring.checkpoints, anchoring.problem), (0, None));
        let keys = KeyStore::load_or_init(&home.dir, 1).unwrap();
        log.submit(emit("r", 1)).unwrap();
        let (chain, anchoring) = checkpoint::verify(&db, &keys, None).unwrap();
        assert_eq!((chain.records, anchoring.latest.map(|c| c.events_seq), anchoring.problem), (2, Some(2), None));
    }

    /// Submits `ops` without waiting, then one more with: the queue is first in, first out, so once that one is
    /// answered every one before it is committed; then waits for a move to the archive the last batch began.
    fn submit_all(log: &EventLog, ops: impl Iterator<Item = Operation>, last: Operation) -> Applied {
        for op in ops {
            drop(log.submit_pending(op));
        }
        let applied = log.submit(last).unwrap();
        log.stats().wait_for_upkeep();
        applied
    }

    /// Past `HOT_MAX` events the writer moves the old rows to the archive. Every reader still sees the whole log
    /// across both files (read, scan, verify, the checkpoints, an archived operation), a process whose kernel state
    /// is older than the database's first operation starts again from the snapshot, and an archive that goes missing
    /// is seen by `verify` while the database, refused a move that would leave a gap, keeps every row.
    #[test]
    fn old_rows_move_to_the_archive_and_every_reader_still_sees_the_whole_log() {
        use crate::events::archive::{HOT_KEEP, HOT_MAX, hot_first};
        use crate::events::scan;
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyStore::load_or_init(dir.path(), 1).unwrap();
        let path = dir.path().join("t.redb");
        let db = Db::open(&path).unwrap();
        let signer = || Some(Signer::from_keys(&keys).unwrap());
        let log = EventLog::open(db.clone(), GroupCommit::default(), signer()).unwrap();
        log.submit(start("r")).unwrap();
        // A second process's writer, whose kernel state is caught up now, before the move.
        let late = EventLog::open(Db::open(&path).unwrap(), GroupCommit::default(), signer()).unwrap();
        late.submit(emit("r", 0)).unwrap();
        // Positive control: below the bound nothing moves.
        let n = HOT_MAX + 2000;
        submit_all(&log, (1..HOT_MAX - 100).map(|i| emit("r", i)), emit("r", HOT_MAX - 100));
        assert_eq!(hot_first(&db).unwrap(), 1);
        assert!(!db.archive_path().exists());
        let last = submit_all(&log, (HOT_MAX - 99..n).map(|i| emit("r", i)), emit("r", n));
        let head = last.events.last().unwrap().seq;
        let first = hot_first(&db).unwrap();
        assert!(first > 1 && head - first < HOT_KEEP + 4096, "the database holds {first}..={head}");
        assert!(db.archive_path().exists());

        let chain = verify(&db).unwrap();
        assert_eq!((chain.records, chain.first_bad), (head, None));
        let (_, anchoring) = checkpoint::verify(&db, &keys, None).unwrap();
        assert_eq!((anchoring.problem, anchoring.ops), (None, last.op_seq));
        let seqs = |records: Vec<crate::events::EventRecord>| records.iter().map(|r| r.seq).collect::<Vec<_>>();
        assert_eq!(seqs(read(&db, &Filter { limit: Some(3), ..Filter::default() }).unwrap()), [1, 2, 3]);
        let (across, _, more) = scan(&db, &Filter::default(), first - 3, 6).unwrap();
        assert_eq!((seqs(across), more), ((first - 2..first + 4).collect::<Vec<_>>(), true));
        assert!(matches!(operation_at(&db, 1).unwrap().unwrap().op, Op::StartRun { .. }));
        assert_eq!(kernel_state(&db).unwrap().applied, last.op_seq);

        // The second writer's state stopped at operation 2, before the database's first: it starts again from the
        // snapshot instead of applying only what the database holds.
        let next = late.submit(emit("r", n + 1)).unwrap();
        assert_eq!((next.op_seq, next.rejected), (last.op_seq + 1, None));
        assert_eq!(next.events[0].seq, head + 1);
        drop(late);

        // A move cut off between its two commits leaves rows in both files: each is read once, from the database.
        let archived = db.archive(false).unwrap().unwrap();
        let overlap = |edit: bool| {
            let view = crate::events::archive::LogView::begin(&db).unwrap();
            let rows: Vec<(u64, Vec<u8>)> = view
                .rows(EVENTS, first)
                .unwrap()
                .take(10)
                .map(|r| r.unwrap())
                .map(|(k, v)| (k.value(), v.value().to_vec()))
                .collect();
            let txn = archived.begin_write().unwrap();
            let mut table = txn.open_table(EVENTS).unwrap();
            for (seq, mut value) in rows {
                if edit && seq == first + 9 {
                    value[40] ^= 1;
                }
                table.insert(seq, value.as_slice()).unwrap();
            }
            drop(table);
            txn.commit().unwrap();
        };
        overlap(false);
        let chain = verify(&db).unwrap();
        assert_eq!((chain.records, chain.first_bad), (head + 1, None));
        assert_eq!(read(&db, &Filter::default()).unwrap().len() as u64, head + 1);
        // One of those rows differs from the database's: the next move is refused and the database keeps its rows.
        overlap(true);
        let again = submit_all(&log, (0..HOT_MAX).map(|i| emit("r", n + 2 + i)), emit("r", 0));
        assert_eq!(hot_first(&db).unwrap(), first, "nothing left the database");
        assert_eq!(verify(&db).unwrap().records, again.events[0].seq, "and the log reads whole");
        drop(log);
        let head = again.events[0].seq;

        // The archive goes missing: verify says where the chain breaks, and the writer, due again, refuses to move
        // rows that would leave a gap, so the database keeps them all.
        drop(db);
        std::fs::remove_file(dir.path().join("t.redb.archive")).unwrap();
        let db = Db::open(&path).unwrap();
        assert_eq!(verify(&db).unwrap().first_bad.map(|(seq, _)| seq), Some(first));
        let log = EventLog::open(db.clone(), GroupCommit::default(), None).unwrap();
        let last = submit_all(&log, (0..HOT_MAX).map(|i| emit("r", i)), emit("r", 0));
        assert_eq!(last.events[0].seq, head + HOT_MAX + 1);
        assert_eq!(hot_first(&db).unwrap(), first, "nothing left the database");
        assert!(db.archive_path().exists(), "an empty archive was opened to append to");
        drop(log);

        // The kernel snapshot deleted, with the operations before the database's first archived: a writer refuses
        // to number operations from the wrong place (it would overwrite stored ones).
        tamper(&db, |txn| {
            txn.open_table(KERNEL).unwrap().remove(SNAPSHOT).unwrap();
        });
        let log = EventLog::open(db.clone(), GroupCommit::default(), None).unwrap();
        let refused = log.submit(emit("r", 1)).unwrap_err();
        assert!(refused.to_string().contains("its kernel snapshot does not cover"), "{refused}");
        assert_eq!(crate::events::last_seq(&db).unwrap(), last.events[0].seq, "nothing was appended");
    }
}
