//! The tamper-evident event log: every step of every run, in order, hash-chained, durable before acknowledged.
//!
//! A record is stored as `hash(32 bytes) ++ body`, where `body` is the record's JSON (sequence number, time, kind,
//! agent, run id, payload, previous hash) and `hash = sha256(previous hash ++ body)`. Verification recomputes the
//! chain from the stored bytes, so a record written by an older schema (fewer fields) verifies as it was written;
//! new fields are only ever added, with defaults, so old records stay readable.
//!
//! The chain alone shows only that records follow one another: [`checkpoint`] anchors it (and the operation log and
//! the revocations) with signed checkpoints, so that a cut tail or a rewrite with recomputed hashes is detected too.
//! This module never writes (the writer is [`log`]) and never repairs: it reports the first record that does not
//! verify.

pub mod archive;
pub mod checkpoint;
pub mod log;

use crate::db::Db;
pub(crate) use crate::db::EVENTS;
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

pub use checkpoint::{Checkpoint, Signer};
pub use log::{Ack, AppendError, Applied, EventLog, GroupCommit, LogStats, Pending, Replicate};

/// The current body schema version, stored in every record as `v`.
pub const SCHEMA_VERSION: u32 = 1;

/// Largest payload accepted, in bytes of JSON.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// The hash that precedes the first record.
pub const GENESIS: [u8; 32] = [0; 32];

/// Event kinds the host writes. Stored as strings, so kinds can be added without a schema change.
pub mod kind {
    pub const RUN_STARTED: &str = "run.started";
    pub const RUN_COMPLETED: &str = "run.completed";
    pub const RUN_FAILED: &str = "run.failed";
    pub const GRANT_REFUSED: &str = "grant.refused";
    pub const FUEL_CONSUMED: &str = "fuel.consumed";
    pub const OBSERVATION: &str = "observation";
    pub const STATE_WRITE: &str = "state.write";
}

/// An event before it is appended: everything but its place in the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventDraft {
    /// Unix time in milliseconds, taken by the caller (the log never reads the clock itself).
    pub time_ms: u64,
    pub kind: String,
    #[serde(default)]
    pub agent: String,
    #[serde(default)]
    pub run_id: String,
    #[serde(default)]
    pub payload: serde_json::Value,
}

impl EventDraft {
    pub fn new(kind: &str, agent: &str, run_id: &str, payload: serde_json::Value) -> Self {
        EventDraft { time_ms: now_ms(), kind: kind.into(), agent: agent.into(), run_id: run_id.into(), payload }
    }
}

/// The JSON body of a stored record. Fields may be added (with `#[serde(default)]`), never removed or renamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Body {
    v: u32,
    seq: u64,
    time_ms: u64,
    kind: String,
    #[serde(default)]
    agent: String,
    #[serde(default)]
    run_id: String,
    #[serde(default)]
    payload: serde_json::Value,
    /// Hex of the previous record's hash.
    prev: String,
}

/// [`Body`] borrowed from a draft, for writing: the same fields in the same order, so the same JSON.
#[derive(Serialize)]
struct BodyRef<'a> {
    v: u32,
    seq: u64,
    time_ms: u64,
    kind: &'a str,
    agent: &'a str,
    run_id: &'a str,
    payload: &'a serde_json::Value,
    prev: &'a str,
}

/// A stored event, as read back.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRecord {
    pub seq: u64,
    pub time_ms: u64,
    pub kind: String,
    pub agent: String,
    pub run_id: String,
    pub payload: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

/// Encodes the stored value of record `seq` after `prev`; returns the value and the record's hash.
fn encode(seq: u64, prev: &[u8; 32], draft: &EventDraft) -> (Vec<u8>, [u8; 32]) {
    let body = BodyRef {
        v: SCHEMA_VERSION,
        seq,
        time_ms: draft.time_ms,
        kind: &draft.kind,
        agent: &draft.agent,
        run_id: &draft.run_id,
        payload: &draft.payload,
        prev: &hex::encode(prev),
    };
    // A stored value is hash ++ body: reserve the 32 hash bytes, serialize the body after them, then hash the body
    // and write the hash into the reserved bytes.
    let mut value = Vec::with_capacity(512);
    value.extend_from_slice(&[0; 32]);
    serde_json::to_writer(&mut value, &body).expect("a JSON value always serializes");
    let hash = chain_hash(prev, &value[32..]);
    value[..32].copy_from_slice(&hash);
    (value, hash)
}

fn chain_hash(prev: &[u8; 32], body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(body);
    h.finalize().into()
}

/// Splits a stored value into its hash and body.
fn split(value: &[u8]) -> Option<([u8; 32], &[u8])> {
    let (hash, body) = value.split_at_checked(32)?;
    Some((hash.try_into().ok()?, body))
}

fn decode(seq: u64, value: &[u8]) -> Result<EventRecord, String> {
    let (hash, body) = split(value).ok_or("record shorter than its hash")?;
    let body: Body = serde_json::from_slice(body).map_err(|e| format!("body is not a record: {e}"))?;
    Ok(EventRecord {
        seq,
        time_ms: body.time_ms,
        kind: body.kind,
        agent: body.agent,
        run_id: body.run_id,
        payload: body.payload,
        prev_hash: body.prev,
        hash: hex::encode(hash),
    })
}

/// Which events to read.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub agent: Option<String>,
    pub run_id: Option<String>,
    pub kind: Option<String>,
    /// Only events with a sequence number greater than this.
    pub after: Option<u64>,
    pub limit: Option<usize>,
}

impl Filter {
    fn matches(&self, r: &EventRecord) -> bool {
        self.agent.as_ref().is_none_or(|a| *a == r.agent)
            && self.run_id.as_ref().is_none_or(|x| *x == r.run_id)
            && self.kind.as_ref().is_none_or(|k| *k == r.kind || r.kind.starts_with(&format!("{k}.")))
    }
}

/// Reads events in sequence order (from the database and, below its first, its archive).
pub fn read(db: &Db, filter: &Filter) -> Result<Vec<EventRecord>, redb::Error> {
    let start = filter.after.map_or(0, |a| a.saturating_add(1));
    let mut out = Vec::new();
    for entry in archive::LogView::begin(db)?.rows(EVENTS, start)? {
        let (k, v) = entry?;
        let record = decode(k.value(), v.value()).unwrap_or_else(|e| invalid(k.value(), e));
        if filter.matches(&record) {
            out.push(record);
            if filter.limit.is_some_and(|l| out.len() >= l) {
                break;
            }
        }
    }
    Ok(out)
}

/// Reads at most `max_scan` records after `after`; returns those matching `filter`, the last sequence number read
/// (or `after`) and whether more records follow.
pub fn scan(
    db: &Db,
    filter: &Filter,
    after: u64,
    max_scan: usize,
) -> Result<(Vec<EventRecord>, u64, bool), redb::Error> {
    let mut out = Vec::new();
    let mut last = after;
    for (read, entry) in archive::LogView::begin(db)?.rows(EVENTS, after.saturating_add(1))?.enumerate() {
        if read == max_scan {
            return Ok((out, last, true));
        }
        let (k, v) = entry?;
        last = k.value();
        let record = decode(last, v.value()).unwrap_or_else(|e| invalid(last, e));
        if filter.matches(&record) {
            out.push(record);
        }
    }
    Ok((out, last, false))
}

/// The sequence number of the last event (0 for an empty log).
pub fn last_seq(db: &Db) -> Result<u64, redb::Error> {
    let txn = db.redb().begin_read()?;
    let table = txn.open_table(EVENTS)?;
    Ok(table.last()?.map_or(0, |(k, _)| k.value()))
}

/// What an unreadable record is shown as, rather than hiding the rest of the log; `verify` explains it.
fn invalid(seq: u64, error: String) -> EventRecord {
    EventRecord {
        seq,
        time_ms: 0,
        kind: "invalid".into(),
        agent: String::new(),
        run_id: String::new(),
        payload: serde_json::json!({ "error": error }),
        prev_hash: String::new(),
        hash: String::new(),
    }
}

/// The result of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    pub records: u64,
    /// The first record that does not verify, and why.
    pub first_bad: Option<(u64, String)>,
    /// Hex of the last good record's hash (the head of the chain).
    pub head: String,
}

/// Walks the whole chain from the first record (across the archive and the database).
pub fn verify(db: &Db) -> Result<Verification, redb::Error> {
    Ok(walk(archive::LogView::begin(db)?.rows(EVENTS, 0)?, &BTreeSet::new())?.0)
}

/// Walks the chain of `rows` (a log's rows from its first); also returns the head after each record of `wanted` that
/// the chain reaches intact (0: before the first record).
pub(crate) fn walk(
    rows: impl Iterator<Item = archive::Row>,
    wanted: &BTreeSet<u64>,
) -> Result<(Verification, BTreeMap<u64, [u8; 32]>), redb::Error> {
    let mut heads = BTreeMap::new();
    if wanted.contains(&0) {
        heads.insert(0, GENESIS);
    }
    let mut prev = GENESIS;
    let mut records = 0u64;
    for (expected_seq, entry) in (1u64..).zip(rows) {
        let (k, v) = entry?;
        let seq = k.value();
        records = expected_seq;
        let bad = |why: String| Verification { records, first_bad: Some((seq, why)), head: hex::encode(prev) };
        if seq != expected_seq {
            return Ok((bad(format!("expected sequence number {expected_seq}")), heads));
        }
        let Some((hash, body)) = split(v.value()) else {
            return Ok((bad("record shorter than its hash".into()), heads));
        };
        let parsed: Body = match serde_json::from_slice(body) {
            Ok(b) => b,
            Err(e) => return Ok((bad(format!("body is not a record: {e}")), heads)),
        };
        if parsed.seq != seq {
            return Ok((bad(format!("body says sequence number {}", parsed.seq)), heads));
        }
        if parsed.prev != hex::encode(prev) {
            return Ok((bad("previous-hash field does not match the previous record".into()), heads));
        }
        if chain_hash(&prev, body) != hash {
            return Ok((bad("hash does not match the record's bytes".into()), heads));
        }
        prev = hash;
        if wanted.contains(&seq) {
            heads.insert(seq, prev);
        }
    }
    Ok((Verification { records, first_bad: None, head: hex::encode(prev) }, heads))
}

/// Whether a stored value reads back as a record, the way [`read`] and [`verify`] read it (the writer checks each
/// value with it before committing).
pub fn decodes(value: &[u8]) -> Result<(), String> {
    let (_, body) = split(value).ok_or("record shorter than its hash")?;
    serde_json::from_slice::<Body>(body).map(drop).map_err(|e| format!("the record does not read back: {e}"))
}

/// Unix time now, in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_covers_prev_and_body() {
        let d = EventDraft { time_ms: 5, kind: "k".into(), agent: "a".into(), run_id: "r".into(), payload: 1.into() };
        let (v1, h1) = encode(1, &GENESIS, &d);
        let (_, h2) = encode(1, &[1; 32], &d);
        assert_ne!(h1, h2);
        let (hash, body) = split(&v1).unwrap();
        assert_eq!(hash, h1);
        assert_eq!(chain_hash(&GENESIS, body), h1);
        let r = decode(1, &v1).unwrap();
        assert_eq!((r.kind.as_str(), r.agent.as_str(), r.payload.clone()), ("k", "a", serde_json::json!(1)));
        // The borrowed body written is byte for byte the owned body read back.
        let owned: Body = serde_json::from_slice(body).unwrap();
        assert_eq!(serde_json::to_vec(&owned).unwrap(), body);
    }

    #[test]
    fn old_bodies_without_new_fields_decode() {
        let body = br#"{"v":0,"seq":1,"time_ms":1,"kind":"run.started","prev":"00"}"#;
        let mut value = chain_hash(&GENESIS, body).to_vec();
        value.extend_from_slice(body);
        let r = decode(1, &value).unwrap();
        assert_eq!(r.agent, "");
        assert_eq!(r.payload, serde_json::Value::Null);
    }
}
