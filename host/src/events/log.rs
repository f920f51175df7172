//! Appending with group commit: one writer thread per process batches the appends of every run into one durable
//! redb transaction and acknowledges each append only after its batch has committed.
//!
//! Callers block (or await) until their event is on disk; while one batch is being made durable, the next one
//! gathers in the queue, so the cost of a durable commit is shared by every append waiting for it. Each batch reads
//! the chain's head inside its write transaction, so appends from other processes interleave correctly.

use super::{EVENTS, EventDraft, GENESIS, MAX_PAYLOAD, encode, split};
use crate::db::Db;
use redb::ReadableTable;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// Batching policy.
#[derive(Debug, Clone, Copy)]
pub struct GroupCommit {
    /// Most appends in one transaction; 1 means one durable transaction per event.
    pub max_batch: usize,
}

impl Default for GroupCommit {
    fn default() -> Self {
        GroupCommit { max_batch: 4096 }
    }
}

/// Where an append stands once acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub seq: u64,
    pub hash: [u8; 32],
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
}

enum Reply {
    Blocking(mpsc::SyncSender<Result<Ack, AppendError>>),
    Async(tokio::sync::oneshot::Sender<Result<Ack, AppendError>>),
}

impl Reply {
    fn send(self, result: Result<Ack, AppendError>) {
        // A caller that stopped waiting (its run was cancelled) still has its event durably written.
        match self {
            Reply::Blocking(s) => drop(s.send(result)),
            Reply::Async(s) => drop(s.send(result)),
        }
    }
}

struct Request {
    draft: EventDraft,
    reply: Reply,
}

/// The process's appender. Dropping it drains the queue and stops the writer.
pub struct EventLog {
    queue: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    db: Db,
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
        let writer = std::thread::Builder::new()
            .name("toka-events".into())
            .spawn(move || write_loop(&writer_db, &inbox, max_batch))?;
        Ok(EventLog { queue: Some(queue), writer: Some(writer), db })
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    fn enqueue(&self, draft: EventDraft, reply: Reply) -> Result<(), AppendError> {
        let size = serde_json::to_vec(&draft.payload).map_or(usize::MAX, |v| v.len());
        if size > MAX_PAYLOAD {
            return Err(AppendError::PayloadTooLarge(size));
        }
        let queue = self.queue.as_ref().ok_or(AppendError::Closed)?;
        queue.send(Request { draft, reply }).map_err(|_| AppendError::Closed)
    }

    /// Appends and blocks until the event is durable. Not for use on an async runtime's thread.
    pub fn append(&self, draft: EventDraft) -> Result<Ack, AppendError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.enqueue(draft, Reply::Blocking(tx))?;
        rx.recv().map_err(|_| AppendError::Closed)?
    }

    /// Appends and resolves once the event is durable.
    pub async fn append_async(&self, draft: EventDraft) -> Result<Ack, AppendError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.enqueue(draft, Reply::Async(tx))?;
        rx.await.map_err(|_| AppendError::Closed)?
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

fn write_loop(db: &Db, inbox: &mpsc::Receiver<Request>, max_batch: usize) {
    while let Ok(first) = inbox.recv() {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match inbox.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let drafts: Vec<&EventDraft> = batch.iter().map(|r| &r.draft).collect();
        match commit(db, &drafts) {
            Ok(acks) => {
                for (request, ack) in batch.into_iter().zip(acks) {
                    request.reply.send(Ok(ack));
                }
            }
            Err(e) => {
                let message = crate::error::one_line(&e.to_string());
                for request in batch {
                    request.reply.send(Err(AppendError::Storage(message.clone())));
                }
            }
        }
    }
}

/// Appends `drafts` after the current head in one durable transaction.
pub(crate) fn commit(db: &Db, drafts: &[&EventDraft]) -> Result<Vec<Ack>, redb::Error> {
    let txn = db.redb().begin_write()?;
    let mut acks = Vec::with_capacity(drafts.len());
    {
        let mut table = txn.open_table(EVENTS)?;
        let (mut seq, mut prev) = match table.last()? {
            None => (0, GENESIS),
            Some((k, v)) => {
                // Never extend a chain whose head cannot be read: fail closed instead of forking the chain.
                let (hash, _) = split(v.value())
                    .ok_or_else(|| redb::Error::Corrupted(format!("event {} is shorter than its hash", k.value())))?;
                (k.value(), hash)
            }
        };
        for draft in drafts {
            seq += 1;
            let (value, hash) = encode(seq, &prev, draft);
            table.insert(seq, value.as_slice())?;
            acks.push(Ack { seq, hash });
            prev = hash;
        }
    }
    txn.commit()?;
    Ok(acks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Filter, read, verify};

    fn draft(i: u64) -> EventDraft {
        EventDraft { time_ms: i, kind: "test".into(), agent: "a".into(), run_id: "r".into(), payload: i.into() }
    }

    #[test]
    fn appends_are_sequenced_chained_and_durable_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        {
            let log = EventLog::open(Db::open(&path).unwrap(), GroupCommit::default()).unwrap();
            let mut seqs = Vec::new();
            std::thread::scope(|s| {
                let log = &log;
                let threads: Vec<_> = (0..8)
                    .map(|t| {
                        s.spawn(move || {
                            (0..25).map(|i| log.append(draft(t * 100 + i)).unwrap().seq).collect::<Vec<_>>()
                        })
                    })
                    .collect();
                for t in threads {
                    seqs.extend(t.join().unwrap());
                }
            });
            seqs.sort_unstable();
            assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
        }
        let db = Db::open(&path).unwrap();
        let v = verify(&db).unwrap();
        assert_eq!((v.records, v.first_bad.clone()), (200, None));
        let log = EventLog::open(db.clone(), GroupCommit { max_batch: 1 }).unwrap();
        assert_eq!(log.append(draft(7)).unwrap().seq, 201);
        assert_eq!(verify(&db).unwrap().records, 201);
        let only = read(&db, &Filter { after: Some(199), ..Filter::default() }).unwrap();
        assert_eq!(only.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![200, 201]);
    }

    #[test]
    fn oversized_payloads_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(Db::open(&dir.path().join("t.redb")).unwrap(), GroupCommit::default()).unwrap();
        let mut d = draft(1);
        d.payload = "x".repeat(MAX_PAYLOAD + 1).into();
        assert!(matches!(log.append(d), Err(AppendError::PayloadTooLarge(_))));
    }
}
