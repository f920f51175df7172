//! Submitting operations with group commit: one writer thread per process batches the operations of every run into
//! one durable redb transaction, applies each through the kernel, appends the operation and the events it produced,
//! and acknowledges each submission only after its batch has committed.
//!
//! Callers block (or await) until their events are on disk; while one batch is being made durable, the next one
//! gathers in the queue, so the cost of a durable commit is shared by every submission waiting for it. Several
//! processes may share the database: each batch first applies, to this process's kernel state, the operations other
//! processes committed since (the operation log is the source of truth), then extends both logs from their current
//! heads, all inside one write transaction. A snapshot of the kernel state (only live runs and tasks, so it stays
//! small) is stored every [`SNAPSHOT_EVERY`] operations, so a new process starts from it instead of replaying the
//! whole log; the snapshot equals what replay from empty would give (the kernel is deterministic).

use super::{EVENTS, GENESIS, MAX_PAYLOAD, encode, split};
use crate::db::{Db, KERNEL, OPS, REVOKED};
use crate::kernel::{self, Operation, State};
use redb::ReadableTable;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// A snapshot of the kernel state is stored each time the operation log passes a multiple of this.
const SNAPSHOT_EVERY: u64 = 1024;

/// How long the writer waits for one more submission before committing what it has.
const GATHER_GAP: std::time::Duration = std::time::Duration::from_micros(50);

/// The longest the writer gathers a batch.
const GATHER_MAX: std::time::Duration = std::time::Duration::from_micros(500);

/// The key of the kernel snapshot in [`KERNEL`].
const SNAPSHOT: &str = "snapshot";

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
}

enum Reply {
    Blocking(mpsc::SyncSender<Result<Applied, AppendError>>),
    Async(tokio::sync::oneshot::Sender<Result<Applied, AppendError>>),
}

impl Reply {
    fn send(self, result: Result<Applied, AppendError>) {
        // A caller that stopped waiting (its run was cancelled) still has its operation durably applied.
        match self {
            Reply::Blocking(s) => drop(s.send(result)),
            Reply::Async(s) => drop(s.send(result)),
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
        }
    }
}

impl LogStats {
    fn committed(&self, operations: usize, events: u64, head: u64) {
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
}

/// The process's submitter. Dropping it drains the queue and stops the writer.
pub struct EventLog {
    queue: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    db: Db,
    stats: std::sync::Arc<LogStats>,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog").field("db", &self.db).finish()
    }
}

impl EventLog {
    pub fn open(db: Db, policy: GroupCommit) -> std::io::Result<Self> {
        let (queue, inbox) = mpsc::channel::<Request>();
        let writer_db = db.clone();
        let max_batch = policy.max_batch.max(1);
        let stats = std::sync::Arc::new(LogStats::default());
        let writer_stats = stats.clone();
        let writer = std::thread::Builder::new()
            .name("toka-events".into())
            .spawn(move || write_loop(&writer_db, &inbox, max_batch, &writer_stats))?;
        Ok(EventLog { queue: Some(queue), writer: Some(writer), db, stats })
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
        if encoded.len() > MAX_PAYLOAD + 4096 {
            return Err(AppendError::PayloadTooLarge(encoded.len()));
        }
        // The exact bytes that will be stored must read back: a value that cannot be decoded would make the log
        // unreadable for every later process.
        if let Err(e) = serde_json::from_slice::<Operation>(&encoded) {
            return Err(AppendError::Invalid(format!("operation does not read back: {e}")));
        }
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
        let applied = self.submit_async(op).await?;
        match applied.rejected {
            Some(reason) => Err(AppendError::Rejected(reason)),
            None => Ok(applied),
        }
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

fn write_loop(db: &Db, inbox: &mpsc::Receiver<Request>, max_batch: usize, stats: &LogStats) {
    let mut state = State::default();
    // The sizes of the last few batches: once a batch is as large as the largest of them and nothing more is
    // queued, it commits at once instead of waiting out a gap for a submitter that is probably not coming.
    let mut recent = [0usize; 8];
    let mut batches = 0usize;
    while let Ok(first) = inbox.recv() {
        let target = recent.iter().copied().max().filter(|&m| m > 0).unwrap_or(usize::MAX);
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
        let result = commit(db, &mut state, first, &mut batch, next);
        recent[batches % recent.len()] = batch.len();
        batches += 1;
        match result {
            Ok(applied) => {
                let events = applied.iter().map(|a| a.events.len() as u64).sum();
                let head = applied.iter().flat_map(|a| a.events.last()).map(|e| e.seq).max().unwrap_or(0);
                stats.committed(batch.len(), events, head);
                for (request, applied) in batch.into_iter().zip(applied) {
                    request.reply.send(Ok(applied));
                }
            }
            Err(e) => {
                // The in-memory state may hold operations that never committed: rebuild it from the log next time.
                state = State::default();
                let message = crate::error::one_line(&e.to_string());
                for request in batch {
                    request.reply.send(Err(AppendError::Storage(message.clone())));
                }
            }
        }
    }
}

/// In one durable transaction: catches `state` up with the operation log, then applies and appends `first` and each
/// further submission `next` yields (called with the batch's size so far, `None` ends the batch). Every submission
/// taken is pushed onto `batch` before anything can fail, so the caller can answer each one.
fn commit(
    db: &Db,
    state: &mut State,
    first: Request,
    batch: &mut Vec<Request>,
    mut next: impl FnMut(usize) -> Option<Request>,
) -> Result<Vec<Applied>, redb::Error> {
    batch.push(first);
    let txn = db.redb().begin_write()?;
    let mut applied = Vec::new();
    {
        let mut op_table = txn.open_table(OPS)?;
        let mut events = txn.open_table(EVENTS)?;
        let mut kernel_table = txn.open_table(KERNEL)?;
        let mut revoked = txn.open_table(REVOKED)?;
        if state.applied == 0 {
            // Start from the latest snapshot rather than from the first operation ever.
            if let Some(snapshot) = kernel_table.get(SNAPSHOT)? {
                *state = serde_json::from_slice(snapshot.value())
                    .map_err(|e| redb::Error::Corrupted(format!("kernel snapshot is unreadable: {e}")))?;
            }
        }
        let before = state.applied;
        for entry in op_table.range(state.applied + 1..)? {
            let (k, v) = entry?;
            let op: Operation = serde_json::from_slice(v.value())
                .map_err(|e| redb::Error::Corrupted(format!("operation {} is unreadable: {e}", k.value())))?;
            kernel::apply(state, &op);
        }
        let (mut seq, mut prev) = match events.last()? {
            None => (0, GENESIS),
            Some((k, v)) => {
                // Never extend a chain whose head cannot be read: fail closed instead of forking the chain.
                let (hash, _) = split(v.value())
                    .ok_or_else(|| redb::Error::Corrupted(format!("event {} is shorter than its hash", k.value())))?;
                (k.value(), hash)
            }
        };
        loop {
            let request = batch.last().expect("the batch holds at least the first submission");
            let op = &request.op;
            let drafts = kernel::apply(state, op);
            op_table.insert(state.applied, request.encoded.as_slice())?;
            let rejected = drafts
                .first()
                .filter(|d| d.kind == kernel::kind::OP_REJECTED)
                .map(|d| d.payload["reason"].as_str().unwrap_or("rejected").to_string());
            if let (None, kernel::Op::RevokeToken { token_id }) = (&rejected, &op.op) {
                revoked.insert(token_id.as_str(), op.time_ms)?;
            }
            let mut acks = Vec::with_capacity(drafts.len());
            for draft in &drafts {
                seq += 1;
                let (value, hash) = encode(seq, &prev, draft);
                events.insert(seq, value.as_slice())?;
                acks.push(Ack { seq, hash });
                prev = hash;
            }
            applied.push(Applied { op_seq: state.applied, events: acks, rejected });
            match next(batch.len()) {
                Some(request) => batch.push(request),
                None => break,
            }
        }
        if before / SNAPSHOT_EVERY != state.applied / SNAPSHOT_EVERY {
            let snapshot = serde_json::to_vec(&*state).expect("the kernel state always serializes");
            kernel_table.insert(SNAPSHOT, snapshot.as_slice())?;
        }
    }
    txn.commit()?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Filter, read, verify};
    use crate::kernel::Op;
    use serde_json::json;

    fn op(o: Op) -> Operation {
        Operation { time_ms: 1, token: "t".into(), chain: Vec::new(), op: o }
    }

    fn start(run: &str) -> Operation {
        op(Op::StartRun { run_id: run.into(), agent: "a".into(), task_id: None, detail: json!({}), rate: None })
    }

    fn emit(run: &str, i: u64) -> Operation {
        op(Op::EmitObservation { run_id: run.into(), kind: "k".into(), payload: json!(i) })
    }

    #[test]
    fn submissions_are_sequenced_chained_and_durable_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        {
            let log = EventLog::open(Db::open(&path).unwrap(), GroupCommit::default()).unwrap();
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
        let log = EventLog::open(db.clone(), GroupCommit { max_batch: 1 }).unwrap();
        let applied = log.submit(emit("r", 7)).unwrap();
        assert_eq!((applied.op_seq, applied.events[0].seq, applied.rejected), (202, 202, None));
        let rejected = log.submit(emit("never-started", 1)).unwrap();
        assert_eq!(rejected.rejected.as_deref(), Some("run never-started is not running"));
        assert_eq!(verify(&db).unwrap().records, 203);
        let only = read(&db, &Filter { after: Some(201), ..Filter::default() }).unwrap();
        assert_eq!(only.iter().map(|r| r.kind.as_str()).collect::<Vec<_>>(), vec!["observation", "op.rejected"]);
    }

    #[test]
    fn a_new_process_starts_from_the_snapshot_and_agrees_with_replay() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.redb")).unwrap();
        {
            let log = EventLog::open(db.clone(), GroupCommit::default()).unwrap();
            log.submit(start("r")).unwrap();
            for i in 0..(SNAPSHOT_EVERY + 10) {
                log.submit(emit("r", i)).unwrap();
            }
        }
        let txn = redb::ReadableDatabase::begin_read(db.redb()).unwrap();
        let snapshot: State =
            serde_json::from_slice(txn.open_table(KERNEL).unwrap().get(SNAPSHOT).unwrap().unwrap().value()).unwrap();
        assert_eq!(snapshot.applied, SNAPSHOT_EVERY);
        let ops: Vec<Operation> = txn
            .open_table(OPS)
            .unwrap()
            .iter()
            .unwrap()
            .take(SNAPSHOT_EVERY as usize)
            .map(|e| serde_json::from_slice(e.unwrap().1.value()).unwrap())
            .collect();
        assert_eq!(kernel::replay(&ops), snapshot);
        let log = EventLog::open(db.clone(), GroupCommit::default()).unwrap();
        assert_eq!(log.submit(emit("r", 0)).unwrap().rejected, None, "run r is known from snapshot + catch-up");
    }

    #[test]
    fn two_processes_share_one_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let db = Db::open(&path).unwrap();
        let one = EventLog::open(db.clone(), GroupCommit::default()).unwrap();
        let two = EventLog::open(db.clone(), GroupCommit::default()).unwrap();
        one.submit(start("r")).unwrap();
        // `two` has never seen `r` start; it catches up from the operation log inside its transaction.
        assert_eq!(two.submit(emit("r", 1)).unwrap().rejected, None);
        assert_eq!(verify(&db).unwrap().first_bad, None);
    }

    #[test]
    fn oversized_operations_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(Db::open(&dir.path().join("t.redb")).unwrap(), GroupCommit::default()).unwrap();
        let big = op(Op::EmitObservation {
            run_id: "r".into(),
            kind: "k".into(),
            payload: json!("x".repeat(MAX_PAYLOAD + 5000)),
        });
        assert!(matches!(log.submit(big), Err(AppendError::PayloadTooLarge(_))));
    }
}
