//! Signed checkpoints: they anchor the event chain, the operation log and the revocations, so that truncating the
//! log, or rewriting records and recomputing their hashes, is detected.
//!
//! The event chain alone proves only that its records follow one another: whoever can write the file can cut its
//! tail, or rewrite a record and recompute every later hash, and the chain still verifies. So in each commit, in the
//! same redb transaction as the records, the writer stores a checkpoint of the heads it has just written: the event
//! chain's length and head, the operation log's length and running hash (`sha256(previous ++ seq ++ operation
//! bytes)`, kept in the `kernel` table), and a digest of the revocations table (`sha256` over its rows in key order),
//! signed with the home's active root key (Ed25519, [`Signer`]). Since a checkpoint commits with the records it
//! covers, the latest checkpoint equals the current heads whenever the file is at rest: records after it are an
//! unsigned tail, a checkpoint beyond the end of the log is a truncation, and a head that differs is a rewrite. The
//! table keeps the latest checkpoint plus the last one of every 1024 events, so it stays small.
//!
//! A writer opened without a signer (tests, benches), or whose home has no root key yet, writes no checkpoint, only
//! the running heads: records it appends after a checkpoint are reported by `events verify` as an unsigned tail, and
//! a signing writer refuses to extend them; records it appends before any checkpoint exists are covered by the first.
//!
//! What a checkpoint inside the file cannot do: an attacker who can write the file can also delete checkpoints
//! (those after the point they cut back to, or all of them, which looks like a database written before
//! checkpoints existed); the file then proves only its own consistency. Checkpoints exported with
//! `toka-host events checkpoint` and kept elsewhere detect that (`events verify --checkpoint FILE`). Agents' state
//! (the `state` table) is not anchored.
//!
//! This module must never sign heads that differ from the latest stored checkpoint (that would launder a truncation
//! or a rewrite into a valid signature), and `verify` must never accept a checkpoint that the home's own keys do not
//! verify.

use super::{GENESIS, Verification, walk};
use crate::db::{CHECKPOINTS, Db, EVENTS, OPS, REVOKED};
use crate::token::keys::{KeyError, KeyStore};
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// The checkpoint format, stored in every checkpoint as `v`.
pub const FORMAT: u32 = 1;

/// Besides the latest, the table keeps the last checkpoint of every this many events.
pub const KEEP_EVERY: u64 = 1024;

/// Largest stored or exported checkpoint read, in bytes (a real one is about 500).
pub const MAX_CHECKPOINT_BYTES: usize = 4096;

/// What every signed message starts with, so that a checkpoint signature can never pass for a token's, or the
/// reverse.
const DOMAIN: &[u8] = b"toka-host checkpoint v1\0";

/// Keys of the running heads in the `kernel` table.
const OPS_HEAD: &str = "ops_head";
const REVOKED_DIGEST: &str = "revoked_digest";

/// A log's length and head: the number of records (`seq`, the last sequence number) and the hash after the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chain {
    pub seq: u64,
    pub head: [u8; 32],
}

impl Chain {
    pub const EMPTY: Chain = Chain { seq: 0, head: GENESIS };

    /// Extends the operation log's chain by operation `seq` with the stored bytes `op`.
    pub fn push_op(&mut self, seq: u64, op: &[u8]) {
        let mut h = Sha256::new();
        h.update(self.head);
        h.update(seq.to_be_bytes());
        h.update(op);
        self.head = h.finalize().into();
        self.seq = seq;
    }

    fn to_bytes(self) -> [u8; 40] {
        let mut out = [0; 40];
        out[..8].copy_from_slice(&self.seq.to_be_bytes());
        out[8..].copy_from_slice(&self.head);
        out
    }

    fn from_bytes(bytes: &[u8]) -> Option<Chain> {
        let (seq, head) = bytes.split_first_chunk::<8>()?;
        Some(Chain { seq: u64::from_be_bytes(*seq), head: head.try_into().ok()? })
    }
}

/// The heads that a checkpoint signs: events and operations as chains, revocations as (rows, digest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heads {
    pub events: Chain,
    pub ops: Chain,
    pub revoked: Chain,
}

/// A signed checkpoint, as stored (JSON) and exported by `toka-host events checkpoint`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub v: u32,
    /// The number of events covered, and the hex hash of the last.
    pub events_seq: u64,
    pub events_head: String,
    /// The number of operations covered, and the hex running hash after the last.
    pub ops_seq: u64,
    pub ops_head: String,
    /// The rows of the revocations table, and the hex digest of them.
    pub revoked: u64,
    pub revoked_digest: String,
    /// The time of the newest operation covered (the writer never reads a clock of its own).
    pub time_ms: u64,
    /// The root key that signed, by id and public key (hex). Trust comes from the home's key file, never from this.
    pub key_id: u32,
    pub public_key: String,
    /// Hex Ed25519 signature over the fields above (see [`message`]).
    pub signature: String,
}

fn hex32(field: &str, text: &str) -> Result<[u8; 32], String> {
    let mut out = [0; 32];
    hex::decode_to_slice(text, &mut out).map_err(|e| format!("{field} is not 32 bytes of hex: {e}"))?;
    Ok(out)
}

impl Checkpoint {
    /// The heads this checkpoint states.
    pub fn heads(&self) -> Result<Heads, String> {
        Ok(Heads {
            events: Chain { seq: self.events_seq, head: hex32("events_head", &self.events_head)? },
            ops: Chain { seq: self.ops_seq, head: hex32("ops_head", &self.ops_head)? },
            revoked: Chain { seq: self.revoked, head: hex32("revoked_digest", &self.revoked_digest)? },
        })
    }

    /// Reads a checkpoint (stored or exported), bounded in size and strict in its fields.
    pub fn parse(bytes: &[u8]) -> Result<Checkpoint, String> {
        if bytes.len() > MAX_CHECKPOINT_BYTES {
            return Err(format!("{} bytes, over the {MAX_CHECKPOINT_BYTES} byte limit", bytes.len()));
        }
        let cp: Checkpoint = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if cp.v != FORMAT {
            return Err(format!("format {} is not {FORMAT}", cp.v));
        }
        cp.heads()?;
        Ok(cp)
    }
}

/// The bytes a checkpoint's signature covers: a fixed binary layout, so that no JSON spelling can change them.
fn message(heads: &Heads, time_ms: u64, key_id: u32, public_key: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + 3 * 40 + 8 + 4 + 32);
    m.extend_from_slice(DOMAIN);
    for chain in [heads.events, heads.ops, heads.revoked] {
        m.extend_from_slice(&chain.to_bytes());
    }
    m.extend_from_slice(&time_ms.to_be_bytes());
    m.extend_from_slice(&key_id.to_be_bytes());
    m.extend_from_slice(public_key);
    m
}

/// The key the event log writer signs checkpoints with: the home's active root key.
pub struct Signer {
    /// The home whose key file to read, while no key is loaded.
    home: Option<std::path::PathBuf>,
    key: Option<(u32, SigningKey)>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("key_id", &self.key_id()).finish_non_exhaustive()
    }
}

impl Signer {
    /// The home's signer. It never creates a key: it loads the home's active root key at the first commit that
    /// finds one, and keeps it. Commits before the home has a key (before `key init` or the first local token) store
    /// no checkpoint; the first signed checkpoint covers them.
    pub fn for_home(home: &crate::home::Home) -> Signer {
        Signer { home: Some(home.dir.clone()), key: None }
    }

    /// Signs with the active key of `keys`.
    pub fn from_keys(keys: &KeyStore) -> Result<Signer, KeyError> {
        Ok(Signer { home: None, key: Some(active(keys)?) })
    }

    /// Loads the home's key if it is not loaded yet and the home has one; whether a key is loaded.
    pub(crate) fn ready(&mut self) -> Result<bool, KeyError> {
        if self.key.is_none()
            && let Some(home) = &self.home
        {
            let keys = KeyStore::load(home)?;
            if !keys.keys.is_empty() {
                self.key = Some(active(&keys)?);
            }
        }
        Ok(self.key.is_some())
    }

    /// The id of the loaded key.
    pub fn key_id(&self) -> Option<u32> {
        self.key.as_ref().map(|(id, _)| *id)
    }

    /// A checkpoint of `heads`, signed; `None` while no key is loaded.
    pub fn sign(&self, heads: &Heads, time_ms: u64) -> Option<Checkpoint> {
        let (key_id, key) = self.key.as_ref()?;
        let public = key.verifying_key().to_bytes();
        let signature = key.sign(&message(heads, time_ms, *key_id, &public));
        Some(Checkpoint {
            v: FORMAT,
            events_seq: heads.events.seq,
            events_head: hex::encode(heads.events.head),
            ops_seq: heads.ops.seq,
            ops_head: hex::encode(heads.ops.head),
            revoked: heads.revoked.seq,
            revoked_digest: hex::encode(heads.revoked.head),
            time_ms,
            key_id: *key_id,
            public_key: hex::encode(public),
            signature: hex::encode(signature.to_bytes()),
        })
    }
}

/// The active key of `keys`, as an Ed25519 signing key.
fn active(keys: &KeyStore) -> Result<(u32, SigningKey), KeyError> {
    let (key_id, pair) = keys.signing()?;
    let private = pair.private().to_bytes();
    let bytes: [u8; 32] = private.as_slice().try_into().map_err(|_| KeyError::File {
        path: "keys.json".into(),
        reason: format!("root key {key_id} is not an Ed25519 key"),
    })?;
    Ok((key_id, SigningKey::from_bytes(&bytes)))
}

/// The revocations table's (rows, digest): every row in key order, each as its id's length, id and time.
pub(crate) fn revocations_digest(table: &impl ReadableTable<&'static str, u64>) -> Result<Chain, redb::Error> {
    let mut h = Sha256::new();
    h.update(b"toka-host revocations v1\0");
    let mut rows = 0u64;
    for entry in table.iter()? {
        let (id, time) = entry?;
        let id = id.value();
        h.update((id.len() as u64).to_be_bytes());
        h.update(id.as_bytes());
        h.update(time.value().to_be_bytes());
        rows += 1;
    }
    Ok(Chain { seq: rows, head: h.finalize().into() })
}

/// The operation log's chain up to `ops`'s last operation: as recorded in the `kernel` table, extended over
/// operations appended without it (by a toka-host from before checkpoints), or computed from the whole log the first
/// time. `Err` with a reason when the recorded head lies beyond the log (operations were deleted).
pub(crate) fn ops_chain(
    kernel: &impl ReadableTable<&'static str, &'static [u8]>,
    ops: &impl ReadableTable<u64, &'static [u8]>,
) -> Result<Result<Chain, String>, redb::Error> {
    let recorded = match kernel.get(OPS_HEAD)? {
        Some(v) => match Chain::from_bytes(v.value()) {
            Some(c) => c,
            None => return Ok(Err("the recorded head of the operation log is malformed".into())),
        },
        None => Chain::EMPTY,
    };
    let last = ops.last()?.map_or(0, |(k, _)| k.value());
    if recorded.seq > last {
        return Ok(Err(format!("the operation log ends at {last}, before its recorded head at {}", recorded.seq)));
    }
    // The operations before the database's first are in the archive: the head must be recorded past them.
    if let Some((first, _)) = ops.first()?
        && first.value() > recorded.seq + 1
    {
        return Ok(Err(format!(
            "the operation log's head is recorded at {}, before its first operation here ({}); the earlier ones are \
             archived",
            recorded.seq,
            first.value()
        )));
    }
    let mut chain = recorded;
    for entry in ops.range(recorded.seq + 1..)? {
        let (k, v) = entry?;
        chain.push_op(k.value(), v.value());
    }
    Ok(Ok(chain))
}

/// The recorded revocations digest, or the one computed from the table when none is recorded yet.
pub(crate) fn recorded_revocations(
    kernel: &impl ReadableTable<&'static str, &'static [u8]>,
    revoked: &impl ReadableTable<&'static str, u64>,
) -> Result<Result<Chain, String>, redb::Error> {
    match kernel.get(REVOKED_DIGEST)? {
        Some(v) => {
            Ok(Chain::from_bytes(v.value()).ok_or_else(|| "the recorded revocations digest is malformed".into()))
        }
        None => Ok(Ok(revocations_digest(revoked)?)),
    }
}

/// Records the running heads in the `kernel` table.
pub(crate) fn record_heads(
    kernel: &mut redb::Table<&'static str, &'static [u8]>,
    ops: Chain,
    revoked: Chain,
) -> Result<(), redb::Error> {
    kernel.insert(OPS_HEAD, ops.to_bytes().as_slice())?;
    kernel.insert(REVOKED_DIGEST, revoked.to_bytes().as_slice())?;
    Ok(())
}

/// The latest stored checkpoint, if any; `Err` with a reason when it cannot be read.
pub(crate) fn latest(
    table: &impl ReadableTable<u64, &'static [u8]>,
) -> Result<Option<Result<Checkpoint, String>>, redb::Error> {
    Ok(table.last()?.map(|(_, v)| Checkpoint::parse(v.value())))
}

/// Why the heads a writer is about to extend differ from the latest checkpoint, if they do.
pub(crate) fn mismatch(signed: &Heads, current: &Heads) -> Option<String> {
    let what = if signed.events.seq != current.events.seq {
        format!("it covers {} events, the log has {}", signed.events.seq, current.events.seq)
    } else if signed.events.head != current.events.head {
        format!("event {} differs", signed.events.seq)
    } else if signed.ops != current.ops {
        format!("it covers {} operations, the operation log has {} (or differs)", signed.ops.seq, current.ops.seq)
    } else if signed.revoked != current.revoked {
        "the revocations differ".to_string()
    } else {
        return None;
    };
    Some(what)
}

/// Stores `cp` as the latest checkpoint; the previous latest stays only if it is the last of its 1024 events.
pub(crate) fn store(table: &mut redb::Table<u64, &'static [u8]>, cp: &Checkpoint) -> Result<(), redb::Error> {
    let seq = cp.events_seq;
    let previous = table.last()?.map(|(k, _)| k.value());
    if let Some(p) = previous
        && p != seq
        && p / KEEP_EVERY == seq / KEEP_EVERY
    {
        table.remove(p)?;
    }
    let bytes = serde_json::to_vec(cp).expect("a checkpoint always serializes");
    table.insert(seq, bytes.as_slice())?;
    Ok(())
}

/// Which of the anchored logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Log {
    Events,
    Operations,
}

impl Log {
    fn plural(self) -> &'static str {
        match self {
            Log::Events => "events",
            Log::Operations => "operations",
        }
    }
}

/// What anchoring found wrong. Each is a one-line message; `events verify` exits with 80 for all of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "problem", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Tamper {
    #[error("checkpoint {at} is malformed: {why}")]
    Malformed { at: String, why: String },
    #[error("checkpoint {at} does not verify: bad signature (root key {key_id})")]
    BadSignature { at: String, key_id: u32 },
    #[error(
        "checkpoint {at} is signed by root key {key_id}, which this home does not hold (verify with the home that \
         wrote the database)"
    )]
    ForeignKey { at: String, key_id: u32 },
    #[error("log truncated: checkpoint {at} covers {} 1..{signed}, the log ends at {found}", log.plural())]
    Truncated { at: String, log: Log, signed: u64, found: u64 },
    #[error("{} rewritten: the log up to {seq} does not match checkpoint {at}", log.plural())]
    Rewritten { at: String, log: Log, seq: u64 },
    #[error("unsigned tail: {} {}..{found} come after the latest signed checkpoint {at}", log.plural(), signed + 1)]
    UnsignedTail { at: String, log: Log, signed: u64, found: u64 },
    #[error("revocations changed: the table ({found} rows) does not match checkpoint {at} ({signed} rows)")]
    RevocationsChanged { at: String, signed: u64, found: u64 },
}

/// What `events verify` found, beyond the event chain itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Anchoring {
    /// Checkpoints stored.
    pub checkpoints: u64,
    /// The latest stored checkpoint (`None`: the database is not anchored).
    pub latest: Option<Checkpoint>,
    pub ops: u64,
    pub ops_head: String,
    pub revoked: u64,
    pub revoked_digest: String,
    /// The first problem found, if any.
    pub problem: Option<Tamper>,
}

/// Checks `cp`'s signature against the home's keys (a retired key still verifies what it signed).
fn check_signature(cp: &Checkpoint, heads: &Heads, keys: &KeyStore, at: &str) -> Result<(), Tamper> {
    let foreign = || Tamper::ForeignKey { at: at.to_string(), key_id: cp.key_id };
    let key = keys.keys.iter().find(|k| k.id == cp.key_id).ok_or_else(foreign)?;
    if !key.public_hex.eq_ignore_ascii_case(&cp.public_key) {
        return Err(foreign());
    }
    let malformed = |why: String| Tamper::Malformed { at: at.to_string(), why };
    let public = hex32("the key's public key", &key.public_hex).map_err(malformed)?;
    let verifying = VerifyingKey::from_bytes(&public).map_err(|e| malformed(format!("public key: {e}")))?;
    let mut signature = [0u8; 64];
    hex::decode_to_slice(&cp.signature, &mut signature)
        .map_err(|_| Tamper::BadSignature { at: at.to_string(), key_id: cp.key_id })?;
    verifying
        .verify_strict(
            &message(heads, cp.time_ms, cp.key_id, &public),
            &ed25519_dalek::Signature::from_bytes(&signature),
        )
        .map_err(|_| Tamper::BadSignature { at: at.to_string(), key_id: cp.key_id })
}

/// The operation log walked from the first operation: its chain, and its head at each of `wanted`. `gap` is the
/// first sequence number out of place.
struct OpsWalk {
    chain: Chain,
    at: BTreeMap<u64, [u8; 32]>,
    gap: Option<u64>,
}

fn walk_ops(rows: impl Iterator<Item = super::archive::Row>, wanted: &BTreeSet<u64>) -> Result<OpsWalk, redb::Error> {
    let mut chain = Chain::EMPTY;
    let mut at = BTreeMap::new();
    if wanted.contains(&0) {
        at.insert(0, GENESIS);
    }
    for entry in rows {
        let (k, v) = entry?;
        if k.value() != chain.seq + 1 {
            return Ok(OpsWalk { chain, at, gap: Some(k.value()) });
        }
        chain.push_op(k.value(), v.value());
        if wanted.contains(&chain.seq) {
            at.insert(chain.seq, chain.head);
        }
    }
    Ok(OpsWalk { chain, at, gap: None })
}

/// Checks one checkpoint's heads against the recomputed chains (its signature is checked apart).
fn check_prefix(
    at: &str,
    heads: &Heads,
    events: (&Verification, &BTreeMap<u64, [u8; 32]>),
    ops: &OpsWalk,
) -> Result<(), Tamper> {
    let (chain, event_heads) = events;
    if heads.events.seq > chain.records {
        return Err(Tamper::Truncated {
            at: at.into(),
            log: Log::Events,
            signed: heads.events.seq,
            found: chain.records,
        });
    }
    if event_heads.get(&heads.events.seq) != Some(&heads.events.head) {
        return Err(Tamper::Rewritten { at: at.into(), log: Log::Events, seq: heads.events.seq });
    }
    if heads.ops.seq > ops.chain.seq {
        return Err(Tamper::Truncated {
            at: at.into(),
            log: Log::Operations,
            signed: heads.ops.seq,
            found: ops.chain.seq,
        });
    }
    if ops.at.get(&heads.ops.seq) != Some(&heads.ops.head) {
        return Err(Tamper::Rewritten { at: at.into(), log: Log::Operations, seq: heads.ops.seq });
    }
    Ok(())
}

/// Walks the event chain, the operation log and the revocations in one read transaction (so a concurrent writer
/// cannot make them disagree), and checks every stored checkpoint, and `external` (a checkpoint kept elsewhere), with
/// the home's `keys`: each signature; that each checkpoint's heads match the recomputed chains at its sequence
/// numbers (beyond the log: truncated; different: rewritten); that the latest equals the current heads (records
/// after it: an unsigned tail) and the current revocations. The event chain's own breaks are in the
/// [`Verification`]; anchoring is checked only when the chain itself verifies.
pub fn verify(
    db: &Db,
    keys: &KeyStore,
    external: Option<&Checkpoint>,
) -> Result<(Verification, Anchoring), redb::Error> {
    let view = super::archive::LogView::begin(db)?;
    let txn = view.hot();
    let mut problem = None;
    let mut stored = Vec::new();
    for entry in txn.open_table(CHECKPOINTS)?.iter()? {
        let (k, v) = entry?;
        let at = format!("at event {}", k.value());
        match Checkpoint::parse(v.value()) {
            Ok(cp) if cp.events_seq == k.value() => stored.push((at, cp)),
            Ok(cp) => {
                problem.get_or_insert(Tamper::Malformed { at, why: format!("it states event {}", cp.events_seq) });
            }
            Err(why) => {
                problem.get_or_insert(Tamper::Malformed { at, why });
            }
        }
    }
    let checkpoints = stored.len() as u64;
    let all: Vec<(String, &Checkpoint)> = stored
        .iter()
        .map(|(at, cp)| (at.clone(), cp))
        .chain(external.map(|cp| (format!("given (event {})", cp.events_seq), cp)))
        .collect();
    let wanted_events: BTreeSet<u64> = all.iter().map(|(_, cp)| cp.events_seq).collect();
    let wanted_ops: BTreeSet<u64> = all.iter().map(|(_, cp)| cp.ops_seq).collect();
    let (chain, event_heads) = walk(view.rows(EVENTS, 0)?, &wanted_events)?;
    let ops = walk_ops(view.rows(OPS, 0)?, &wanted_ops)?;
    let revoked = revocations_digest(&txn.open_table(REVOKED)?)?;
    if let (None, Some(seq)) = (&problem, ops.gap) {
        problem = Some(Tamper::Rewritten { at: "of the operation log".into(), log: Log::Operations, seq });
    }
    if problem.is_none() && chain.first_bad.is_none() {
        problem = check_all(keys, &all, &chain, &event_heads, &ops, revoked, external.is_some()).err();
    }
    let anchoring = Anchoring {
        checkpoints,
        latest: stored.last().map(|(_, cp)| cp.clone()),
        ops: ops.chain.seq,
        ops_head: hex::encode(ops.chain.head),
        revoked: revoked.seq,
        revoked_digest: hex::encode(revoked.head),
        problem,
    };
    Ok((chain, anchoring))
}

fn check_all(
    keys: &KeyStore,
    all: &[(String, &Checkpoint)],
    chain: &Verification,
    event_heads: &BTreeMap<u64, [u8; 32]>,
    ops: &OpsWalk,
    revoked: Chain,
    has_external: bool,
) -> Result<(), Tamper> {
    let mut parsed = Vec::with_capacity(all.len());
    for (at, cp) in all {
        let heads = cp.heads().map_err(|why| Tamper::Malformed { at: at.clone(), why })?;
        check_signature(cp, &heads, keys, at)?;
        parsed.push((at.as_str(), heads));
    }
    for (at, heads) in &parsed {
        check_prefix(at, heads, (chain, event_heads), ops)?;
    }
    let stored = if has_external { &parsed[..parsed.len() - 1] } else { &parsed[..] };
    if let Some((at, latest)) = stored.last() {
        if latest.events.seq < chain.records {
            return Err(Tamper::UnsignedTail {
                at: at.to_string(),
                log: Log::Events,
                signed: latest.events.seq,
                found: chain.records,
            });
        }
        if latest.ops.seq < ops.chain.seq {
            return Err(Tamper::UnsignedTail {
                at: at.to_string(),
                log: Log::Operations,
                signed: latest.ops.seq,
                found: ops.chain.seq,
            });
        }
        if latest.revoked != revoked {
            return Err(Tamper::RevocationsChanged {
                at: at.to_string(),
                signed: latest.revoked.seq,
                found: revoked.seq,
            });
        }
    }
    // Revocations are only ever added: a table with fewer rows than a checkpoint kept elsewhere lost some.
    if has_external
        && let Some((at, given)) = parsed.last()
        && given.revoked.seq > revoked.seq
    {
        return Err(Tamper::RevocationsChanged { at: at.to_string(), signed: given.revoked.seq, found: revoked.seq });
    }
    Ok(())
}

/// The latest stored checkpoint, its signature checked with the home's keys (for `events checkpoint`).
pub fn export(db: &Db, keys: &KeyStore) -> Result<Result<Option<Checkpoint>, Tamper>, redb::Error> {
    let txn = db.redb().begin_read()?;
    let table = txn.open_table(CHECKPOINTS)?;
    let Some((k, v)) = table.last()? else { return Ok(Ok(None)) };
    let at = format!("at event {}", k.value());
    let cp = match Checkpoint::parse(v.value()) {
        Ok(cp) => cp,
        Err(why) => return Ok(Err(Tamper::Malformed { at, why })),
    };
    let heads = match cp.heads() {
        Ok(h) => h,
        Err(why) => return Ok(Err(Tamper::Malformed { at, why })),
    };
    Ok(check_signature(&cp, &heads, keys, &at).map(|()| Some(cp)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heads() -> Heads {
        Heads {
            events: Chain { seq: 7, head: [1; 32] },
            ops: Chain { seq: 5, head: [2; 32] },
            revoked: Chain { seq: 1, head: [3; 32] },
        }
    }

    #[test]
    fn a_signature_covers_every_field_and_only_the_homes_keys_verify_it() {
        let tmp = tempfile::tempdir().unwrap();
        let keys = KeyStore::load_or_init(tmp.path(), 1).unwrap();
        let signer = Signer::from_keys(&keys).unwrap();
        let cp = signer.sign(&heads(), 99).unwrap();
        let at = "test";
        check_signature(&cp, &cp.heads().unwrap(), &keys, at).unwrap();
        // Round trip through the stored JSON.
        let back = Checkpoint::parse(&serde_json::to_vec(&cp).unwrap()).unwrap();
        assert_eq!(back, cp);
        // Each signed field changed alone breaks the signature.
        let mut changed = Vec::new();
        let mut h = heads();
        h.events.seq += 1;
        changed.push(h);
        let mut h = heads();
        h.events.head[0] ^= 1;
        changed.push(h);
        let mut h = heads();
        h.ops.seq -= 1;
        changed.push(h);
        let mut h = heads();
        h.ops.head[31] ^= 1;
        changed.push(h);
        let mut h = heads();
        h.revoked.seq = 0;
        changed.push(h);
        let mut h = heads();
        h.revoked.head[3] ^= 1;
        changed.push(h);
        for h in changed {
            assert!(matches!(check_signature(&cp, &h, &keys, at), Err(Tamper::BadSignature { .. })), "{h:?}");
        }
        let mut later = cp.clone();
        later.time_ms += 1;
        assert!(matches!(check_signature(&later, &heads(), &keys, at), Err(Tamper::BadSignature { .. })));
        let mut flipped = cp.clone();
        flipped.signature.replace_range(0..2, if &cp.signature[..2] == "00" { "01" } else { "00" });
        assert!(matches!(check_signature(&flipped, &heads(), &keys, at), Err(Tamper::BadSignature { .. })));
        // Another home's key, even under the same id, is not this home's.
        let other = tempfile::tempdir().unwrap();
        let other_keys = KeyStore::load_or_init(other.path(), 1).unwrap();
        let foreign = Signer::from_keys(&other_keys).unwrap().sign(&heads(), 99).unwrap();
        assert_eq!(foreign.key_id, cp.key_id);
        assert!(matches!(check_signature(&foreign, &heads(), &keys, at), Err(Tamper::ForeignKey { .. })));
        // A foreign signature relabelled with this home's public key does not verify either.
        let mut relabelled = foreign.clone();
        relabelled.public_key = cp.public_key.clone();
        assert!(matches!(check_signature(&relabelled, &heads(), &keys, at), Err(Tamper::BadSignature { .. })));
    }

    #[test]
    fn a_retired_key_still_verifies_what_it_signed() {
        let tmp = tempfile::tempdir().unwrap();
        let keys = KeyStore::load_or_init(tmp.path(), 1).unwrap();
        let cp = Signer::from_keys(&keys).unwrap().sign(&heads(), 5).unwrap();
        let (keys, ()) = KeyStore::update(tmp.path(), |s| {
            let old = s.signing()?.0;
            s.rotate(2, 0)?;
            s.retire(old)
        })
        .unwrap();
        check_signature(&cp, &heads(), &keys, "test").unwrap();
        assert_ne!(Signer::from_keys(&keys).unwrap().key_id(), Some(cp.key_id), "new checkpoints use the new key");
    }

    #[test]
    fn checkpoints_parse_strictly_and_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let keys = KeyStore::load_or_init(tmp.path(), 1).unwrap();
        let cp = Signer::from_keys(&keys).unwrap().sign(&heads(), 5).unwrap();
        let mut value = serde_json::to_value(&cp).unwrap();
        value["extra"] = 1.into();
        assert!(Checkpoint::parse(value.to_string().as_bytes()).unwrap_err().contains("unknown field"));
        let mut value = serde_json::to_value(&cp).unwrap();
        value["events_head"] = "zz".into();
        assert!(Checkpoint::parse(value.to_string().as_bytes()).unwrap_err().contains("events_head"));
        let huge = vec![b' '; MAX_CHECKPOINT_BYTES + 1];
        assert!(Checkpoint::parse(&huge).unwrap_err().contains("limit"));
        Checkpoint::parse(&serde_json::to_vec(&cp).unwrap()).unwrap();
    }

    #[test]
    fn the_table_keeps_the_latest_and_the_last_checkpoint_of_every_1024_events() {
        let tmp = tempfile::tempdir().unwrap();
        let signer = Signer::from_keys(&KeyStore::load_or_init(tmp.path(), 1).unwrap()).unwrap();
        let db = Db::open(&tmp.path().join("t.redb")).unwrap();
        let txn = db.redb().begin_write().unwrap();
        let mut table = txn.open_table(CHECKPOINTS).unwrap();
        for seq in (1..=3000).step_by(10) {
            let mut h = heads();
            h.events.seq = seq;
            store(&mut table, &signer.sign(&h, 0).unwrap()).unwrap();
        }
        let kept: Vec<u64> = table.iter().unwrap().map(|e| e.unwrap().0.value()).collect();
        assert_eq!(kept, [1021, 2041, 2991]);
    }

    #[test]
    fn operations_cut_or_rewritten_are_detected() {
        use crate::events::{EventLog, GroupCommit};
        use crate::kernel::{Op, Operation};
        let tmp = tempfile::tempdir().unwrap();
        let keys = KeyStore::load_or_init(tmp.path(), 1).unwrap();
        let db = Db::open(&tmp.path().join("t.redb")).unwrap();
        let op = |op| Operation { time_ms: 1, token: "t".into(), chain: Vec::new(), op };
        {
            let log = EventLog::open(db.clone(), GroupCommit::default(), Some(Signer::from_keys(&keys).unwrap()));
            let log = log.unwrap();
            let start = Op::StartRun {
                run_id: "r".into(),
                agent: "a".into(),
                task_id: None,
                detail: serde_json::json!({}),
                rate: None,
                node: None,
            };
            log.submit(op(start)).unwrap();
            for i in 0..3 {
                let emit = Op::EmitObservation { run_id: "r".into(), kind: "k".into(), payload: i.into() };
                log.submit(op(emit)).unwrap();
            }
        }
        let problem = || verify(&db, &keys, None).unwrap().1.problem;
        assert_eq!(problem(), None);
        type Ops<'t> = redb::Table<'t, u64, &'static [u8]>;
        let edit = |change: &dyn Fn(&mut Ops)| {
            let txn = db.redb().begin_write().unwrap();
            change(&mut txn.open_table(OPS).unwrap());
            txn.commit().unwrap();
        };
        // The events still verify: only the operation log's head shows the edit.
        edit(&|t| {
            let text = String::from_utf8(t.get(2).unwrap().unwrap().value().to_vec()).unwrap();
            let forged = text.replace("\"payload\":0", "\"payload\":7");
            assert_ne!(text, forged);
            t.insert(2, forged.as_bytes()).unwrap();
        });
        let rewritten = Tamper::Rewritten { at: "at event 4".into(), log: Log::Operations, seq: 4 };
        assert_eq!(problem(), Some(rewritten));
        edit(&|t| {
            t.remove(4).unwrap();
        });
        let truncated = Tamper::Truncated { at: "at event 4".into(), log: Log::Operations, signed: 4, found: 3 };
        assert_eq!(problem(), Some(truncated));
        edit(&|t| {
            t.remove(2).unwrap();
        });
        let gap = Tamper::Rewritten { at: "of the operation log".into(), log: Log::Operations, seq: 3 };
        assert_eq!(problem(), Some(gap));
    }
}
