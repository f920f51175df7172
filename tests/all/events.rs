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
    // The run refused before it started is a row too (issue 11), without a run id.
    assert_eq!(rows.len(), 3, "{}", r.stdout);
    assert_eq!((rows[0]["agent"].as_str(), rows[0]["outcome"].as_str()), (Some("hello-rust"), Some("success")));
    assert_eq!((rows[1]["agent"].as_str(), rows[1]["outcome"].as_str()), (Some("hostile"), Some("out-of-fuel")));
    assert_eq!((rows[2]["outcome"].as_str(), rows[2]["run_id"].as_str()), (Some("grant-refused"), Some("-")));

    let v = toka_in(h, &["events", "verify"]);
    v.expect_code(0);
    assert!(v.stdout.starts_with("ok: 7 records, chain head "), "{}", v.stdout);
}

/// A host that cannot stand up refuses a run before its start is recorded (exit 79, no `run.started`); the same run
/// starts and ends once the cause is gone.
#[test]
fn a_broken_model_config_refuses_a_run_before_its_start_is_recorded() {
    // A run's start is submitted as soon as the database is open and the token's revocations are read, while the
    // component still loads; a host that cannot stand up (here, its model gateway's configuration does not parse)
    // must refuse the run first, or the log would hold a start that nothing ends. In a home whose log exists, so
    // that the start could be submitted as early as it ever is.
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let hello = agent("hello-rust");
    let run = ["run", "--input", r#"{"name":"Ada"}"#, hello.to_str().unwrap()];
    toka_in(h, &run).expect_code(0);
    std::fs::write(h.join("llm.toml"), "[providers.p]\nkind = \"openai\"\nkeyenv = \"X\"\n").unwrap();
    let r = toka_in(h, &run);
    r.expect_code(79);
    assert!(r.stderr.contains("model gateway") && r.stderr.contains("keyenv"), "{}", r.stderr);
    let all = events_json(h, &[]);
    let kinds: Vec<&str> = all.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["run.started", "fuel.consumed", "run.completed"]);
    // The control: the same run, once the file is gone, starts and ends.
    std::fs::remove_file(h.join("llm.toml")).unwrap();
    toka_in(h, &run).expect_code(0);
    let all = events_json(h, &[]);
    assert_eq!(all.iter().filter(|e| e["kind"] == "run.started").count(), 2);
    assert_eq!(all.iter().filter(|e| e["kind"] == "run.completed").count(), 2);
}

/// A run's start is made durable while its component still loads (issue 12). So a component that reads as an agent
/// from its exports but cannot be linked (it imports an interface the host does not have) is a run that started and
/// then failed `wrong-world` (exit 75, the same one line as before), its ending carrying the load's reason. Bytes
/// that read as no runnable world are refused with no start, as before. Positive control: a real agent runs and
/// completes, and the log verifies.
#[test]
fn a_component_that_fails_to_load_after_its_start_is_recorded_ends_that_run() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let dir = tempfile::tempdir().unwrap();
    let foreign = dir.path().join("foreign.wasm");
    let component = wat::parse_str(
        r#"(component
            (import "toka:agent/nowhere@1.0.0" (instance (export "f" (func))))
            (core module $m (func (export "run")))
            (core instance $i (instantiate $m))
            (func $run (canon lift (core func $i "run")))
            (export "run" (func $run)))"#,
    )
    .unwrap();
    std::fs::write(&foreign, component).unwrap();
    let empty = dir.path().join("empty.wasm");
    std::fs::write(&empty, wat::parse_str("(component)").unwrap()).unwrap();

    let r = toka_in(h, &["run", foreign.to_str().unwrap()]);
    r.expect_code(75);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("wrong world") && r.stderr.contains("toka:agent/nowhere@1.0.0"), "{}", r.stderr);
    let r = toka_in(h, &["run", empty.to_str().unwrap()]);
    r.expect_code(75);
    assert!(r.stderr.contains("wrong world"), "{}", r.stderr);
    toka_in(h, &["run", "--input", r#"{"name":"Ada"}"#, agent("hello-rust").to_str().unwrap()]).expect_code(0);

    let all = events_json(h, &[]);
    let kinds: Vec<&str> = all.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["run.started", "fuel.consumed", "run.failed", "run.failed", "run.started", "fuel.consumed", "run.completed"]
    );
    // The foreign component's run: started as an agent, ended with the load's refusal.
    assert_eq!((all[0]["agent"].as_str(), all[0]["payload"]["world"].as_str()), (Some("foreign"), Some("agent")));
    assert_eq!(all[0]["run_id"], all[2]["run_id"]);
    assert_eq!(
        (all[2]["payload"]["outcome"].as_str(), all[2]["payload"]["exit_code"].as_u64()),
        (Some("wrong-world"), Some(75))
    );
    assert!(all[2]["payload"]["error"].as_str().unwrap().contains("toka:agent/nowhere@1.0.0"), "{}", all[2]);
    // The empty component: a refusal, no run.
    assert_eq!((all[3]["run_id"].as_str(), all[3]["payload"]["outcome"].as_str()), (Some(""), Some("wrong-world")));
    assert_eq!(all[6]["payload"]["outcome"], "success");
    let v = toka_in(h, &["events", "verify"]);
    v.expect_code(0);
    assert!(v.stdout.starts_with("ok: 7 records, chain head "), "{}", v.stdout);
}

/// An observation is in the log while its run is still going: the agent emits, then blocks in a tool call that
/// never returns (a spinning tool under a 60 s deadline), and another process reads the observation from the
/// database before the run ends (no `run.completed` or `run.failed` yet). A log that held events in memory until the
/// run's end would show nothing here. (A commit that lags `emit` but still lands during the run passes here; the
/// crash test below is the one that sees an event acknowledged before it is durable.)
#[test]
fn an_observation_is_durable_while_its_run_is_still_going() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let fail_tool = toka_tests::root().join("target/tools/fail-tool.wasm");
    toka_in(h, &["tool", "add", fail_tool.to_str().unwrap()]).expect_code(0);
    let input = serde_json::json!({ "attack": "calls", "calls": [
        { "emit": { "kind": "probe.before-block", "payload": r#"{"n":1}"# } },
        { "tool": { "name": "fail-tool", "input": r#"{"mode":"spin"}"# } },
    ] });
    let mut child = Command::new(toka_host())
        .args(["run", "--fuel", "unlimited", "--timeout", "60s", "--allow-tool", "fail-tool", "--input"])
        .arg(input.to_string())
        .arg(agent("hostile"))
        .env("TOKA_HOME", h)
        .env("TOKA_CACHE_DIR", shared_cache())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let seen = toka_tests::wait_for(Duration::from_secs(30), || {
        let obs = events_json(h, &["--kind", "observation"]);
        (!obs.is_empty()).then_some(obs)
    });
    let still_running = child.try_wait().unwrap().is_none();
    let ended = events_json(h, &["--kind", "run.completed"]).len() + events_json(h, &["--kind", "run.failed"]).len();
    child.kill().unwrap();
    child.wait().unwrap();
    let obs = seen.expect("the observation reached the log within 30 s");
    assert!(still_running, "the run had already ended: this proves nothing");
    assert_eq!(ended, 0, "the run's end was not recorded yet");
    assert_eq!(obs.len(), 1);
    assert_eq!(obs[0]["payload"]["kind"], "probe.before-block");
    assert_eq!(obs[0]["payload"]["payload"]["n"], 1);
    let started = events_json(h, &["--kind", "run.started"]);
    assert_eq!(obs[0]["run_id"], started[0]["run_id"]);
    // The tool call was under way: recorded as called, not yet ended.
    assert_eq!(events_json(h, &["--kind", "tool.called"]).len(), 1);
}

/// An observation's payload may be up to 64 KiB (README: Observations; `MAX_PAYLOAD` in `host/src/events/mod.rs`)
/// as the guest hands it over: a JSON string of exactly 65 536 bytes is recorded whole, one byte more is refused
/// with an error the guest sees, and the run goes on.
#[test]
fn an_observation_of_exactly_64_kib_is_recorded_and_one_byte_more_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    // `"xxx…x"`: two quotes around the rest.
    let payload = |bytes: usize| format!("\"{}\"", "x".repeat(bytes - 2));
    let input = serde_json::json!({ "attack": "calls", "calls": [
        { "emit": { "kind": "at.limit", "payload": payload(65_536) } },
        { "emit": { "kind": "over.limit", "payload": payload(65_537) } },
        { "emit": { "kind": "after", "payload": "{}" } },
    ] });
    let file = h.join("input.json");
    std::fs::write(&file, input.to_string()).unwrap();
    let r = toka_in(h, &["run", "--json", "--input-file", file.to_str().unwrap(), agent("hostile").to_str().unwrap()]);
    r.expect_code(0);
    let answers: serde_json::Value = serde_json::from_str(r.report()["result"].as_str().unwrap()).unwrap();
    assert_eq!(
        answers["answers"],
        serde_json::json!(["ok: 1", "err after 0: payload is 65537 bytes, over the 65536 byte limit", "ok: 1"])
    );
    let obs = events_json(h, &["--kind", "observation"]);
    let kinds: Vec<&str> = obs.iter().map(|e| e["payload"]["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["at.limit", "after"]);
    assert_eq!(obs[0]["payload"]["payload"].as_str().unwrap().len(), 65_534);
    toka_in(h, &["events", "verify"]).expect_code(0);
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
    let mut rng = toka_tests::Rng::new(toka_tests::test_seed("crash_safety_every_acknowledged_event_survives_sigkill"));
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
        let delay = rng.below(400);
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        acked.extend(rx.try_iter());
        assert!(acked.len() >= 10, "round {round} (killed after {delay} ms): the run never acknowledged 10 events");

        let v = toka_in(home.path(), &["events", "verify"]);
        v.expect_code(0);
        let stored: BTreeSet<u64> =
            events_json(home.path(), &["--kind", "observation"]).iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        let lost: Vec<&u64> = acked.difference(&stored).collect();
        assert!(
            lost.is_empty(),
            "round {round} (killed after {delay} ms): {} acknowledged events lost, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
    }
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

/// Three `toka-host` processes append to one database at the same moment (each 20 runs of an agent that emits 5
/// observations, printing each acknowledged sequence number). Afterwards the chain verifies, every kind has its
/// exact count, every acknowledged observation is in the log exactly where it was acknowledged, and the processes'
/// acknowledgements interleave: they really wrote at once, each catching up with the others' operations inside its
/// own transactions.
#[test]
fn processes_writing_at_once_share_one_verified_log() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let (processes, runs, emits) = (3u64, 20u64, 5u64);
    let input = format!(r#"{{"op":"emit","count":{emits}}}"#);
    let children: Vec<_> = (0..processes)
        .map(|_| {
            Command::new(toka_host())
                .args(["run", "--repeat", &runs.to_string(), "--input", &input])
                .arg(agent("notes"))
                .env("TOKA_HOME", h)
                .env("TOKA_CACHE_DIR", shared_cache())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let waiting: Vec<_> = children
        .into_iter()
        .map(|mut child| {
            let (mut stdout, mut stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
            let out = std::thread::spawn(move || std::io::read_to_string(&mut stdout).unwrap());
            let err = std::thread::spawn(move || std::io::read_to_string(&mut stderr).unwrap());
            (toka_tests::watchdog(child, Duration::from_secs(120)), out, err)
        })
        .collect();
    let acks: Vec<Vec<u64>> = waiting
        .into_iter()
        .map(|(status, out, err)| {
            let ((status, killed), stdout, stderr) = (status.join().unwrap(), out.join().unwrap(), err.join().unwrap());
            assert!(status.success() && !killed, "{status} (killed after 120 s: {killed}): {stderr}");
            stdout.lines().filter_map(|l| l.strip_prefix("ack ")).map(|n| n.parse().unwrap()).collect()
        })
        .collect();
    for (i, a) in acks.iter().enumerate() {
        assert_eq!(a.len() as u64, runs * emits, "process {i}");
        assert!(a.windows(2).all(|w| w[0] < w[1]), "process {i}: its own acknowledgements in order");
    }
    for (i, a) in acks.iter().enumerate() {
        for (j, b) in acks.iter().enumerate().filter(|(j, _)| *j != i) {
            let inside = b.iter().filter(|s| (a[0]..*a.last().unwrap()).contains(s)).count();
            assert!(inside > 0, "process {j} wrote nothing while process {i} was writing: {a:?} / {b:?}");
        }
    }

    // Per run: run.started, 5 observations, fuel.consumed, run.completed.
    let total = processes * runs * (emits + 3);
    let v = toka_in(h, &["events", "verify"]);
    v.expect_code(0);
    assert!(v.stdout.starts_with(&format!("ok: {total} records, chain head ")), "{}", v.stdout);
    let all = events_json(h, &[]);
    assert_eq!(all.len() as u64, total);
    let count = |kind: &str| all.iter().filter(|e| e["kind"] == kind).count() as u64;
    assert_eq!(count("run.started"), processes * runs);
    assert_eq!(count("observation"), processes * runs * emits);
    assert_eq!(count("fuel.consumed"), processes * runs);
    assert_eq!(count("run.completed"), processes * runs);
    let mut acked: Vec<u64> = acks.concat();
    acked.sort_unstable();
    let observed: Vec<u64> =
        all.iter().filter(|e| e["kind"] == "observation").map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        acked, observed,
        "each acknowledged sequence number is an observation, and each observation was acknowledged"
    );
    // Each run's events stay together in its own order, whoever wrote in between.
    let mut runs_seen = std::collections::BTreeMap::<&str, Vec<&str>>::new();
    for e in &all {
        runs_seen.entry(e["run_id"].as_str().unwrap()).or_default().push(e["kind"].as_str().unwrap());
    }
    assert_eq!(runs_seen.len() as u64, processes * runs);
    for (run, kinds) in &runs_seen {
        let expected: Vec<&str> = std::iter::once("run.started")
            .chain(std::iter::repeat_n("observation", emits as usize))
            .chain(["fuel.consumed", "run.completed"])
            .collect();
        assert_eq!(kinds, &expected, "run {run}");
    }
}

/// Issue 12, item 3: what a run's commits cost must not grow with the log. In redb's multi-writer mode each commit
/// rewrites the allocator state of the whole file, so past 32 768 events the writer moves the log's old rows to an
/// archive beside the database (`toka.redb.archive`). Filled twice through the real binary past that bound: the
/// database's file stays about the size the first fill left it while the archive grows, and `events` and `events
/// verify` read the whole log across both files. The archive is owner-only. Attacks on copies of both files: a
/// record rewritten in the archive with its chain recomputed, and the archive deleted, are each refused by `events
/// verify` (positive control: the untouched copy verifies).
#[test]
fn old_events_move_to_an_archive_and_the_whole_log_still_reads_and_verifies() {
    use crate::anchoring::{attack, rewrite_and_rechain, verify};
    use std::os::unix::fs::PermissionsExt;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let fill = || {
        let task = r#"{"attack":"calls","calls":[{"emit":{"kind":"fill","payload":"{\"n\":1}","times":1000}}]}"#;
        let hostile = agent("hostile");
        let args = ["run", "--parallel", "4", "--repeat", "10", "--json", "--input", task, hostile.to_str().unwrap()];
        toka_in(h, &args).expect_code(0);
    };
    let records = |r: &Ran| -> u64 {
        let count = r.stdout.strip_prefix("ok: ").and_then(|s| s.split(' ').next()).map(str::parse);
        count.unwrap_or_else(|| panic!("{}", r.stdout)).unwrap()
    };
    let (db, archive) = (h.join("toka.redb"), h.join("toka.redb.archive"));
    let size = |path: &Path| std::fs::metadata(path).unwrap().len();
    fill();
    let first = records(&toka_in(h, &["events", "verify"]));
    assert!(first > 40_000, "{first} records");
    assert!(archive.exists(), "past the bound, old rows moved");
    assert_eq!(std::fs::metadata(&archive).unwrap().permissions().mode() & 0o777, 0o600);
    let (db_size, archive_size) = (size(&db), size(&archive));
    fill();
    let v = toka_in(h, &["events", "verify"]);
    v.expect_code(0);
    assert_eq!(records(&v), 2 * first, "{}", v.stdout);
    assert!(size(&db) <= db_size + db_size / 4, "the database grew from {db_size} to {} bytes", size(&db));
    assert!(
        size(&archive) > archive_size + archive_size / 2,
        "the archive held {archive_size} bytes, now {}",
        size(&archive)
    );
    // Read across both files: every run's start, the first one's from the archive.
    let starts = events_json(h, &["--kind", "run.started"]);
    assert_eq!(starts.len(), 80);
    assert_eq!(starts[0]["seq"], 1);

    let copy = || {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("copy.redb");
        std::fs::copy(&db, &copy).unwrap();
        std::fs::copy(&archive, dir.path().join("copy.redb.archive")).unwrap();
        (dir, copy)
    };
    let (_untouched_dir, untouched) = copy();
    verify(h, &untouched, &[]).expect_code(0);
    let (rechained_dir, rechained) = copy();
    attack(&rechained_dir.path().join("copy.redb.archive"), |txn| {
        rewrite_and_rechain(txn, 5, "\"n\":1", "\"n\":2");
    });
    let r = verify(h, &rechained, &[]);
    r.expect_code(80);
    assert!(r.stderr.contains("does not verify"), "{}", r.stderr);
    let (_deleted_dir, deleted) = copy();
    std::fs::remove_file(deleted.with_file_name("copy.redb.archive")).unwrap();
    let r = verify(h, &deleted, &[]);
    r.expect_code(80);
    assert!(r.stderr.contains("expected sequence number 1"), "{}", r.stderr);
}
