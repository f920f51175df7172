//! The chain is anchored (issue 10, item 8): signed checkpoints of the event chain, the operation log and the
//! revocations, checked by `events verify`.
//!
//! Every attack runs on a COPY of a database written by real runs of the real binary, with the `redb` crate, as an
//! attacker holding the file (but not the home's root key) would; `events verify` is given the home's keys with
//! `--home` and the copy with `--db`. Before checkpoints, each of these attacks but the deleted record verified `ok`:
//! the hash chain alone shows only that records follow one another.

use redb::{ReadableDatabase, ReadableTable};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tempfile::TempDir;
use toka_tests::{Ran, agent, toka_with};

pub(crate) const EVENTS: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("events");
pub(crate) const OPS: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("ops");
const REVOKED: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("revoked");
const CHECKPOINTS: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("checkpoints");

/// Runs `toka-host` with `home` as its toka home.
pub(crate) fn t(home: &Path, args: &[&str]) -> Ran {
    toka_with(args, None, &[("TOKA_HOME", home.to_str().unwrap())])
}

/// `events verify` of the database `db` with the keys of `home`, plus `extra` flags.
pub(crate) fn verify(home: &Path, db: &Path, extra: &[&str]) -> Ran {
    let mut args = vec!["--db", db.to_str().unwrap(), "events", "verify"];
    args.extend_from_slice(extra);
    t(home, &args)
}

/// Asserts that `events verify` refuses with exit 80 and exactly this one-line message.
#[track_caller]
pub(crate) fn refused(r: &Ran, message: &str) {
    r.expect_code(80);
    assert_eq!(r.stderr.trim_end(), format!("toka-host: {message}"), "stdout: {}", r.stdout);
}

/// A copy of `home`'s database in a directory of its own.
pub(crate) fn copy_db(home: &Path) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("copy.redb");
    std::fs::copy(home.join("toka.redb"), &db).unwrap();
    (dir, db)
}

/// Changes the database file in one write transaction, as an attacker with the file would.
pub(crate) fn attack(db: &Path, change: impl FnOnce(&redb::WriteTransaction)) {
    let db = redb::Database::builder().set_concurrency_mode(redb::ConcurrencyMode::MultiWriter).open(db).unwrap();
    let txn = db.begin_write().unwrap();
    change(&txn);
    txn.commit().unwrap();
}

/// Reads every row of a `u64`-keyed table.
pub(crate) fn rows(db: &Path, table: redb::TableDefinition<u64, &[u8]>) -> Vec<(u64, Vec<u8>)> {
    let db = redb::Database::builder().set_concurrency_mode(redb::ConcurrencyMode::MultiWriter).open(db).unwrap();
    let txn = db.begin_read().unwrap();
    let t = txn.open_table(table).unwrap();
    t.iter().unwrap().map(|e| e.unwrap()).map(|(k, v)| (k.value(), v.value().to_vec())).collect()
}

/// Replaces `from` with `to` in the body of event `seq`, then recomputes that record's hash and every later one
/// (each body's `prev` field and each stored hash): the chain is correct again, as a careful attacker would leave it.
pub(crate) fn rewrite_and_rechain(txn: &redb::WriteTransaction, seq: u64, from: &str, to: &str) {
    let mut events = txn.open_table(EVENTS).unwrap();
    let later: Vec<(u64, Vec<u8>)> =
        events.range(seq..).unwrap().map(|e| e.unwrap()).map(|(k, v)| (k.value(), v.value().to_vec())).collect();
    let mut rewritten_prev: Option<[u8; 32]> = None;
    for (k, value) in later {
        let (old_hash, body) = value.split_at(32);
        let mut body = String::from_utf8(body.to_vec()).unwrap();
        if k == seq {
            let forged = body.replace(from, to);
            assert_ne!(forged, body, "event {seq} holds {from}");
            body = forged;
        }
        // A body ends with the previous record's hash: `"prev":"<64 hex digits>"}`.
        let (front, rest) = body.rsplit_once("\"prev\":\"").unwrap();
        let stated: [u8; 32] = hex::decode(&rest[..64]).unwrap().try_into().unwrap();
        let prev = rewritten_prev.unwrap_or(stated);
        body = format!("{front}\"prev\":\"{}{}", hex::encode(prev), &rest[64..]);
        let mut h = Sha256::new();
        h.update(prev);
        h.update(body.as_bytes());
        let hash: [u8; 32] = h.finalize().into();
        assert_ne!(hash.as_slice(), old_hash, "record {k} changed");
        let mut stored = hash.to_vec();
        stored.extend_from_slice(body.as_bytes());
        events.insert(k, stored.as_slice()).unwrap();
        rewritten_prev = Some(hash);
    }
}

/// A home whose database was written by real runs: `hello-rust` twice, `notes` emitting three observations and
/// writing state, and a token minted and revoked. Returns the home and its number of events.
fn real_home() -> (TempDir, u64) {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let hello = agent("hello-rust");
    for _ in 0..2 {
        t(h, &["run", hello.to_str().unwrap()]).expect_code(0);
    }
    let notes = agent("notes");
    t(h, &["run", "--state", "rw", "--input", r#"{"op":"emit","count":3}"#, notes.to_str().unwrap()]).expect_code(0);
    let minted = t(h, &["token", "mint", "--agent", "echo-cmd"]);
    minted.expect_code(0);
    t(h, &["token", "revoke", minted.stdout.trim()]).expect_code(0);
    let records = rows(&h.join("toka.redb"), EVENTS).len() as u64;
    assert_eq!(records, 13, "3 + 3 events of hello-rust, 6 of notes, 1 revocation (from 2 + 2 + 5 + 1 operations)");
    (home, records)
}

/// (e) Positive control for every attack below: an untouched copy verifies, anchored by the latest checkpoint.
#[test]
fn an_untouched_copy_verifies_anchored() {
    let (home, n) = real_home();
    let (_dir, db) = copy_db(home.path());
    let r = verify(home.path(), &db, &[]);
    r.expect_code(0);
    assert_eq!(
        r.stdout.trim_end(),
        format!(
            "ok: {n} records, chain head {}; 10 operations, 1 revocations, signed at event {n} by root key 1",
            hex::encode(&rows(&db, EVENTS).last().unwrap().1[..32])
        )
    );
    assert_eq!(r.stderr, "", "no warning: the database is anchored");
    let json = verify(home.path(), &db, &["--json"]);
    json.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(
        (v["anchored"].as_bool(), v["problem"].is_null(), v["checkpoints"].as_u64()),
        (Some(true), true, Some(1))
    );
}

/// (a) Deleting the last records leaves a correct chain, shorter than the latest checkpoint says.
#[test]
fn deleting_the_last_records_is_detected() {
    let (home, n) = real_home();
    let (_dir, db) = copy_db(home.path());
    attack(&db, |txn| {
        let mut events = txn.open_table(EVENTS).unwrap();
        for seq in n - 2..=n {
            events.remove(seq).unwrap();
        }
    });
    refused(
        &verify(home.path(), &db, &[]),
        &format!("log truncated: checkpoint at event {n} covers events 1..{n}, the log ends at {}", n - 3),
    );
}

/// (b) Rewriting a record and recomputing every later hash (and the operation that produced it) leaves a correct
/// chain, which no longer ends in the head the checkpoint signed.
#[test]
fn a_rewrite_with_recomputed_hashes_is_detected() {
    let (home, n) = real_home();
    let (_dir, db) = copy_db(home.path());
    let before = verify(home.path(), &db, &[]);
    before.expect_code(0);
    // Event 3 is the first run's completion; operation 2 is what recorded it.
    attack(&db, |txn| {
        rewrite_and_rechain(txn, 3, r#""outcome":"success""#, r#""outcome":"trap""#);
        let mut ops = txn.open_table(OPS).unwrap();
        let op = String::from_utf8(ops.get(2).unwrap().unwrap().value().to_vec()).unwrap();
        let forged = op.replace(r#""outcome":"success""#, r#""outcome":"trap""#);
        assert_ne!(op, forged, "operation 2 is the first run's completion");
        ops.insert(2, forged.as_bytes()).unwrap();
    });
    let r = t(home.path(), &["--db", db.to_str().unwrap(), "events", "--json", "--kind", "run.completed"]);
    r.expect_code(0);
    assert!(r.stdout.lines().next().unwrap().contains(r#""outcome":"trap""#), "the forged record reads back");
    refused(
        &verify(home.path(), &db, &[]),
        &format!("events rewritten: the log up to {n} does not match checkpoint at event {n}"),
    );
}

/// (c) An attacker who cuts the log back to an older checkpoint and deletes the later checkpoints leaves a file that
/// verifies on its own (the README says so); a checkpoint exported before, and kept elsewhere, detects it.
#[test]
fn a_truncation_that_deletes_checkpoints_is_caught_only_by_an_exported_checkpoint() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    // Over 1024 events, so that the table keeps an older checkpoint (the last one of the first 1024 events).
    let notes = agent("notes");
    t(h, &["run", "--input", r#"{"op":"emit","count":1100}"#, notes.to_str().unwrap()]).expect_code(0);
    let exported = h.join("kept-elsewhere.json");
    let e = t(h, &["events", "checkpoint", "--out", exported.to_str().unwrap()]);
    e.expect_code(0);
    assert_eq!(e.stdout, format!("checkpoint at event 1103 written to {}\n", exported.display()));
    t(h, &["run", agent("hello-rust").to_str().unwrap()]).expect_code(0);
    let (_dir, db) = copy_db(h);
    // Positive control: the copy contains what the exported checkpoint covers.
    let ok = verify(h, &db, &["--checkpoint", exported.to_str().unwrap()]);
    ok.expect_code(0);
    assert!(ok.stdout.contains("; contains the given checkpoint (event 1103)"), "{}", ok.stdout);

    let checkpoints = rows(&db, CHECKPOINTS);
    assert_eq!(checkpoints.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [1023, 1106]);
    let older: serde_json::Value = serde_json::from_slice(&checkpoints[0].1).unwrap();
    let (events_to, ops_to) = (older["events_seq"].as_u64().unwrap(), older["ops_seq"].as_u64().unwrap());
    attack(&db, |txn| {
        let mut events = txn.open_table(EVENTS).unwrap();
        let cut: Vec<u64> = events.range(events_to + 1..).unwrap().map(|e| e.unwrap().0.value()).collect();
        for seq in cut {
            events.remove(seq).unwrap();
        }
        let mut ops = txn.open_table(OPS).unwrap();
        let cut: Vec<u64> = ops.range(ops_to + 1..).unwrap().map(|e| e.unwrap().0.value()).collect();
        for seq in cut {
            ops.remove(seq).unwrap();
        }
        txn.open_table(CHECKPOINTS).unwrap().remove(1106).unwrap();
    });
    let alone = verify(h, &db, &[]);
    alone.expect_code(0);
    assert!(alone.stdout.starts_with("ok: 1023 records"), "{}", alone.stdout);
    assert_eq!(alone.stderr, "", "nothing in the file shows the cut");
    refused(
        &verify(h, &db, &["--checkpoint", exported.to_str().unwrap()]),
        &format!("log truncated: checkpoint given (event 1103) covers events 1..1103, the log ends at {events_to}"),
    );

    // Deleting every checkpoint looks like a database from before checkpoints: it verifies, with a warning.
    attack(&db, |txn| {
        txn.open_table(CHECKPOINTS).unwrap().remove(1023).unwrap();
    });
    let bare = verify(h, &db, &[]);
    bare.expect_code(0);
    assert!(bare.stderr.starts_with("toka-host: warning: not anchored:"), "{}", bare.stderr);
    refused(
        &verify(h, &db, &["--checkpoint", exported.to_str().unwrap()]),
        &format!("log truncated: checkpoint given (event 1103) covers events 1..1103, the log ends at {events_to}"),
    );
}

/// (d) Un-revoking a token (deleting its row), or changing when it was revoked, is detected.
#[test]
fn editing_a_revocation_is_detected() {
    let (home, n) = real_home();
    let (_dir, deleted) = copy_db(home.path());
    let (_dir2, edited) = copy_db(home.path());
    let id = {
        let db =
            redb::Database::builder().set_concurrency_mode(redb::ConcurrencyMode::MultiWriter).open(&deleted).unwrap();
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(REVOKED).unwrap();
        let ids: Vec<String> = t.iter().unwrap().map(|e| e.unwrap().0.value().to_string()).collect();
        assert_eq!(ids.len(), 1);
        ids[0].clone()
    };
    attack(&deleted, |txn| {
        txn.open_table(REVOKED).unwrap().remove(id.as_str()).unwrap();
    });
    refused(
        &verify(home.path(), &deleted, &[]),
        &format!("revocations changed: the table (0 rows) does not match checkpoint at event {n} (1 rows)"),
    );
    attack(&edited, |txn| {
        let mut t = txn.open_table(REVOKED).unwrap();
        let time = t.get(id.as_str()).unwrap().unwrap().value();
        t.insert(id.as_str(), time + 1).unwrap();
    });
    refused(
        &verify(home.path(), &edited, &[]),
        &format!("revocations changed: the table (1 rows) does not match checkpoint at event {n} (1 rows)"),
    );
}

/// Appending a record with a correct hash after the latest checkpoint (an attacker cannot sign) is an unsigned tail.
#[test]
fn a_record_appended_after_the_latest_checkpoint_is_an_unsigned_tail() {
    let (home, n) = real_home();
    let (_dir, db) = copy_db(home.path());
    attack(&db, |txn| {
        let mut events = txn.open_table(EVENTS).unwrap();
        let last = events.get(n).unwrap().unwrap().value().to_vec();
        let head = hex::encode(&last[..32]);
        let body = format!(
            r#"{{"v":1,"seq":{},"time_ms":1,"kind":"run.completed","agent":"x","run_id":"y","payload":{{}},"prev":"{head}"}}"#,
            n + 1
        );
        let mut h = Sha256::new();
        h.update(&last[..32]);
        h.update(body.as_bytes());
        let mut value = h.finalize().to_vec();
        value.extend_from_slice(body.as_bytes());
        events.insert(n + 1, value.as_slice()).unwrap();
    });
    refused(
        &verify(home.path(), &db, &[]),
        &format!("unsigned tail: events {}..{} come after the latest signed checkpoint at event {n}", n + 1, n + 1),
    );
}

/// A checkpoint signed by another home's key (even one with the same key id), or with one byte of its signature
/// changed, is refused; the home that wrote the database verifies it.
#[test]
fn a_checkpoint_only_the_homes_own_key_signed_is_trusted() {
    let (home, n) = real_home();
    let (_dir, db) = copy_db(home.path());
    let other = tempfile::tempdir().unwrap();
    t(other.path(), &["key", "init"]).expect_code(0);
    refused(
        &verify(other.path(), &db, &[]),
        &format!(
            "checkpoint at event {n} is signed by root key 1, which this home does not hold (verify with the home \
             that wrote the database)"
        ),
    );
    attack(&db, |txn| {
        let mut t = txn.open_table(CHECKPOINTS).unwrap();
        let mut cp: serde_json::Value = serde_json::from_slice(t.get(n).unwrap().unwrap().value()).unwrap();
        let sig = cp["signature"].as_str().unwrap().to_string();
        let flipped = format!("{}{}", if sig.starts_with('0') { "1" } else { "0" }, &sig[1..]);
        cp["signature"] = flipped.into();
        t.insert(n, serde_json::to_vec(&cp).unwrap().as_slice()).unwrap();
    });
    refused(
        &verify(home.path(), &db, &[]),
        &format!("checkpoint at event {n} does not verify: bad signature (root key 1)"),
    );
}

/// A signing writer refuses to extend a log that no longer matches its latest checkpoint, rather than sign over the
/// cut; the untouched database goes on.
#[test]
fn a_run_on_a_truncated_log_is_refused_and_not_signed_over() {
    let (home, n) = real_home();
    let h = home.path();
    let (_dir, db) = copy_db(h);
    let hello = agent("hello-rust");
    let run = |db: &Path| t(h, &["--db", db.to_str().unwrap(), "run", hello.to_str().unwrap()]);
    attack(&db, |txn| {
        txn.open_table(EVENTS).unwrap().remove(n).unwrap();
    });
    let r = run(&db);
    r.expect_code(79);
    assert!(
        r.stderr.contains(&format!(
            "event log does not match its latest signed checkpoint (it covers {n} events, the log has {})",
            n - 1
        )),
        "{}",
        r.stderr
    );
    assert_eq!(rows(&db, EVENTS).len() as u64, n - 1, "nothing appended");
    refused(
        &verify(h, &db, &[]),
        &format!("log truncated: checkpoint at event {n} covers events 1..{n}, the log ends at {}", n - 1),
    );
    // Positive control: the same run on the untouched database.
    run(&h.join("toka.redb")).expect_code(0);
    verify(h, &h.join("toka.redb"), &[]).expect_code(0);
}
