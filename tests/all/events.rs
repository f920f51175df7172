//! The event log: every run recorded, hash-chained, durable before acknowledged, and tamper-evident.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use toka_tests::{Ran, agent, shared_cache, toka_host, toka_with};

/// Runs `toka-host` with its own toka home.
fn toka_in(home: &Path, args: &[&str]) -> Ran {
    toka_with(args, None, &[("TOKA_HOME", home.to_str().unwrap())])
}

fn events_json(home: &Path, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["events", "--json"];
    args.extend_from_slice(extra);
    let r = toka_in(home, &args);
    r.expect_code(0);
    r.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn every_run_is_recorded_with_its_outcome() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    toka_in(h, &["run", "--input", r#"{"name":"Ada"}"#, agent("hello-rust").to_str().unwrap()]).expect_code(0);
    toka_in(h, &["run", "--fuel", "1000000", "--input", r#"{"attack":"spin"}"#, agent("hostile").to_str().unwrap()])
        .expect_code(68);
    toka_in(h, &["run", "--dir", "/no/such/dir", agent("hello-rust").to_str().unwrap()]).expect_code(72);

    let all = events_json(h, &[]);
    let kinds: Vec<&str> = all.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "run.started",
            "fuel.consumed",
            "run.completed",
            "run.started",
            "fuel.consumed",
            "run.failed",
            "grant.refused"
        ]
    );
    let seqs: Vec<u64> = all.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    assert_eq!(all[2]["payload"]["outcome"], "success");
    assert_eq!(all[5]["payload"]["outcome"], "out-of-fuel");
    assert_eq!(all[5]["payload"]["exit_code"], 68);
    assert_eq!(all[4]["payload"]["fuel"], 1_000_000);
    assert!(all[6]["payload"]["error"].as_str().unwrap().starts_with("grant refused: dir /no/such/dir"));
    assert_eq!(all[0]["agent"], "hello-rust");
    assert_eq!(all[0]["run_id"], all[2]["run_id"]);
    assert_ne!(all[0]["run_id"], all[3]["run_id"]);

    // Filters.
    assert_eq!(events_json(h, &["--agent", "hostile"]).len(), 3);
    assert_eq!(events_json(h, &["--kind", "run"]).len(), 4);
    assert_eq!(events_json(h, &["--since", "6"]).len(), 2);
    assert_eq!(events_json(h, &["--limit", "2"])[0]["seq"], 6);
    let run = all[3]["run_id"].as_str().unwrap();
    assert_eq!(events_json(h, &["--run", run]).len(), 3);

    // `runs` assembles runs from their events.
    let r = toka_in(h, &["runs", "--json"]);
    r.expect_code(0);
    let rows: Vec<serde_json::Value> = r.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0]["agent"].as_str(), rows[0]["outcome"].as_str()), (Some("hello-rust"), Some("success")));
    assert_eq!((rows[1]["agent"].as_str(), rows[1]["outcome"].as_str()), (Some("hostile"), Some("out-of-fuel")));

    let v = toka_in(h, &["events", "verify"]);
    v.expect_code(0);
    assert!(v.stdout.starts_with("ok: 7 records, chain head "), "{}", v.stdout);
}

#[test]
fn observations_are_durable_before_emit_returns() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let r = toka_in(h, &["run", "--json", "--input", r#"{"op":"emit","count":3}"#, agent("notes").to_str().unwrap()]);
    r.expect_code(0);
    let rep = r.report();
    assert_eq!(rep["stdout"], "ack 2\nack 3\nack 4\n");
    let obs = events_json(h, &["--kind", "observation"]);
    assert_eq!(obs.iter().map(|e| e["seq"].as_u64().unwrap()).collect::<Vec<_>>(), vec![2, 3, 4]);
    assert_eq!(obs[0]["payload"]["kind"], "note.tick");
    assert_eq!(obs[2]["payload"]["payload"]["i"], 2);
    assert_eq!(obs[0]["run_id"], rep["run_id"]);
}

/// Three ways to forge records in the file with redb, as an attacker with the file would, each on its own copy of
/// one database written by real runs: `events verify` refuses each with exit 80 and a message of its own, and an
/// untouched copy verifies (positive control). Only the first was detected before checkpoints: a rewrite with
/// recomputed hashes leaves a correct chain. (Cut tails, deleted checkpoints, forged signatures and revocations:
/// `anchoring.rs`.)
#[test]
fn tampering_with_a_record_is_detected() {
    use crate::anchoring::{EVENTS, attack, copy_db, refused, rewrite_and_rechain, verify};
    use redb::ReadableTable;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    for _ in 0..3 {
        toka_in(h, &["run", agent("hello-rust").to_str().unwrap()]).expect_code(0);
    }
    let (_untouched_dir, untouched) = copy_db(h);
    let ok = verify(h, &untouched, &[]);
    ok.expect_code(0);
    assert!(ok.stdout.starts_with("ok: 9 records, chain head "), "{}", ok.stdout);

    // An edit that keeps the stored hash: the record's bytes no longer match it.
    let (_edited_dir, edited) = copy_db(h);
    attack(&edited, |txn| {
        let mut t = txn.open_table(EVENTS).unwrap();
        let original = t.get(6).unwrap().unwrap().value().to_vec();
        let text = String::from_utf8(original[32..].to_vec()).unwrap();
        let forged = text.replace("\"outcome\":\"success\"", "\"outcome\":\"trap\"");
        assert_ne!(text, forged, "record 6 is the second run's completion");
        let mut value = original[..32].to_vec();
        value.extend_from_slice(forged.as_bytes());
        t.insert(6, value.as_slice()).unwrap();
    });
    refused(&verify(h, &edited, &[]), "event 6 does not verify: hash does not match the record's bytes");

    // The same edit with every hash from there on recomputed: a correct chain, but not the one that was signed.
    let (_rechained_dir, rechained) = copy_db(h);
    attack(&rechained, |txn| rewrite_and_rechain(txn, 6, "\"outcome\":\"success\"", "\"outcome\":\"trap\""));
    refused(&verify(h, &rechained, &[]), "events rewritten: the log up to 9 does not match checkpoint at event 9");

    // A record deleted from the middle: the chain skips a sequence number.
    let (_deleted_dir, deleted) = copy_db(h);
    attack(&deleted, |txn| {
        txn.open_table(EVENTS).unwrap().remove(5).unwrap();
    });
    refused(&verify(h, &deleted, &[]), "event 6 does not verify: expected sequence number 5");
}

/// Many runs at once appending observations; the process is killed with SIGKILL at a random moment, 20 times.
/// Every observation whose `ack` line reached us (printed by the agent after `emit` returned) must be in the log,
/// and the whole chain must verify, after each kill.
#[test]
fn crash_safety_every_acknowledged_event_survives_sigkill() {
    let notes = agent("notes");
    let mut rng = seed();
    for round in 0..20 {
        let home = tempfile::tempdir().unwrap();
        let mut child = Command::new(toka_host())
            .args(["run", "--parallel", "6", "--repeat", "100000", "--input", r#"{"op":"emit","count":1000}"#])
            .arg(&notes)
            .env("TOKA_HOME", home.path())
            .env("TOKA_CACHE_DIR", shared_cache())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(seq) = line.strip_prefix("ack ").and_then(|s| s.parse::<u64>().ok())
                    && tx.send(seq).is_err()
                {
                    break;
                }
            }
        });
        // Wait for the first acknowledgements, then kill after a random 0-400 ms.
        let mut acked = BTreeSet::new();
        let start = Instant::now();
        while acked.len() < 10 && start.elapsed() < Duration::from_secs(60) {
            if let Ok(seq) = rx.recv_timeout(Duration::from_millis(100)) {
                acked.insert(seq);
            }
        }
        std::thread::sleep(Duration::from_millis(next(&mut rng) % 400));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        acked.extend(rx.try_iter());
        assert!(acked.len() >= 10, "round {round}: the run never acknowledged anything");

        let v = toka_in(home.path(), &["events", "verify"]);
        v.expect_code(0);
        let stored: BTreeSet<u64> =
            events_json(home.path(), &["--kind", "observation"]).iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        let lost: Vec<&u64> = acked.difference(&stored).collect();
        assert!(
            lost.is_empty(),
            "round {round}: {} acknowledged events lost, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
    }
}

fn seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
}

/// xorshift64: enough randomness for kill timing, no dependency.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn follow_streams_new_events_as_they_commit() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    toka_in(h, &["run", agent("hello-rust").to_str().unwrap()]).expect_code(0);
    let mut follower = Command::new(toka_host())
        .args(["events", "--json", "--follow"])
        .env("TOKA_HOME", h)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let wait_for = |seen: &mut Vec<u64>, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while seen.len() < n && Instant::now() < deadline {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
                seen.push(serde_json::from_str::<serde_json::Value>(&line).unwrap()["seq"].as_u64().unwrap());
            }
        }
    };
    wait_for(&mut seen, 3);
    assert_eq!(seen, vec![1, 2, 3], "the existing events first");
    toka_in(h, &["run", agent("hello-rust").to_str().unwrap()]).expect_code(0);
    wait_for(&mut seen, 6);
    follower.kill().unwrap();
    follower.wait().unwrap();
    reader.join().unwrap();
    assert_eq!(seen, vec![1, 2, 3, 4, 5, 6], "then the new ones as they commit");
}
