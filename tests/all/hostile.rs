//! Hostile agents: each is stopped with its own outcome and exit code, and the host process survives to report it.

use std::net::TcpListener;
use toka_tests::{agent, toka, toka_with};

fn hostile() -> String {
    agent("hostile").to_str().unwrap().to_string()
}

fn attack(input: &str, extra: &[&str]) -> toka_tests::Ran {
    let h = hostile();
    let mut args = vec!["run", "--json", "--input", input];
    args.extend_from_slice(extra);
    args.push(&h);
    toka(&args)
}

#[test]
fn infinite_loop_runs_out_of_fuel() {
    let r = attack(r#"{"attack":"spin"}"#, &["--fuel", "50000000"]);
    r.expect_code(68);
    let rep = r.report();
    assert_eq!(rep["outcome"], "out-of-fuel");
    assert_eq!(rep["fuel_consumed"], 50_000_000);
}

#[test]
fn infinite_loop_hits_the_deadline_without_fuel() {
    let r = attack(r#"{"attack":"spin"}"#, &["--fuel", "unlimited", "--timeout", "300ms"]);
    r.expect_code(69);
    let rep = r.report();
    assert_eq!(rep["outcome"], "timeout");
    assert_eq!(rep["error"], "timeout: stopped after 300ms");
    // Epoch interruption stops the loop itself, within a tick or two of 10 ms; 2 s leaves room for a busy machine
    // and still fails a deadline checked only between host calls or enforced late.
    let wall = rep["wall_time_ms"].as_f64().unwrap();
    assert!((300.0..2000.0).contains(&wall), "a 300 ms deadline ended after {wall} ms");
}

#[test]
fn memory_bomb_hits_the_memory_limit() {
    let r = attack(r#"{"attack":"membomb"}"#, &["--max-memory", "64MiB"]);
    r.expect_code(70);
    let rep = r.report();
    assert_eq!(rep["outcome"], "memory-limit");
    assert!(rep["error"].as_str().unwrap().starts_with("memory limit: guest tried to grow past 67108864 bytes"));
    let peak = rep["peak_memory_bytes"].as_u64().unwrap();
    assert!(peak <= 64 << 20 && peak > 32 << 20, "peak {peak}");
}

#[test]
fn unbounded_recursion_overflows_the_stack() {
    let r = attack(r#"{"attack":"recurse"}"#, &[]);
    r.expect_code(67);
    assert_eq!(r.report()["outcome"], "stack-overflow");
}

#[test]
fn a_panic_is_a_trap() {
    let r = attack(r#"{"attack":"panic"}"#, &[]);
    r.expect_code(66);
    let rep = r.report();
    assert_eq!(rep["outcome"], "trap");
    assert_eq!(rep["error"], "trap: wasm trap: wasm `unreachable` instruction executed");
    assert!(rep["stderr"].as_str().unwrap().contains("hostile agent panics on purpose"));
}

#[test]
fn stdout_flood_hits_the_output_cap() {
    let r = attack(r#"{"attack":"flood"}"#, &["--max-output", "64KiB"]);
    r.expect_code(71);
    let rep = r.report();
    assert_eq!(rep["outcome"], "output-limit");
    assert_eq!(rep["stdout_bytes"], 64 * 1024);
    assert_eq!(rep["stdout"].as_str().unwrap().len(), 64 * 1024);
}

#[test]
fn stdout_flood_is_capped_when_streaming_too() {
    let h = hostile();
    let r = toka(&["run", "--max-output", "10KiB", "--input", r#"{"attack":"flood"}"#, &h]);
    r.expect_code(71);
    assert_eq!(r.stdout.len(), 10 * 1024);
    assert!(r.stderr.contains("output limit: stdout passed 10240 bytes"), "{}", r.stderr);
}

/// A tree with a granted `data/`, a secret beside it, and a symlink inside `data/` pointing at the secret.
fn escape_tree() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("data")).unwrap();
    std::fs::write(tmp.path().join("secret.txt"), "TOP-SECRET-CONTENT").unwrap();
    std::fs::write(tmp.path().join("data/existing.txt"), "original").unwrap();
    std::os::unix::fs::symlink(tmp.path().join("secret.txt"), tmp.path().join("data/link-out")).unwrap();
    tmp
}

#[test]
fn path_escapes_are_blocked() {
    let tmp = escape_tree();
    let grant = format!("{}::/data", tmp.path().join("data").display());
    let r = attack(r#"{"attack":"escape","dir":"/data"}"#, &["--dir", &grant]);
    r.expect_code(65);
    let rep = r.report();
    assert_eq!(rep["agent_error"]["kind"], "denied", "{rep}");
    let msg = rep["agent_error"]["message"].as_str().unwrap();
    for path in ["/data/../secret.txt", "../secret.txt", "/etc/passwd", "/data/link-out", "/secret.txt"] {
        assert!(msg.contains(&format!("{path}:")), "attempt {path} missing from: {msg}");
    }
    assert!(!r.stdout.contains("TOP-SECRET") && !r.stderr.contains("TOP-SECRET"));
}

/// The same writes (create `new.txt`, append to `existing.txt`) into the same directory: refused with the guest's own
/// `EPERM` under `:ro`, with the files unchanged; done under a read-write grant. (Without a grant at all the guest
/// sees `ENOTCAPABLE` instead: a different error, so a grant that vanished could not pass for a read-only one.)
#[test]
fn read_only_grant_refuses_writes_that_read_write_allows() {
    let tmp = escape_tree();
    let data = tmp.path().join("data");
    let input = r#"{"attack":"write-ro","dir":"/data"}"#;
    let r = attack(input, &["--dir", &format!("{}::/data:ro", data.display())]);
    r.expect_code(65);
    let rep = r.report();
    assert_eq!(rep["agent_error"]["kind"], "denied", "{rep}");
    assert_eq!(
        rep["agent_error"]["message"],
        "blocked: /data/new.txt: Operation not permitted (os error 63); \
         /data/existing.txt: Operation not permitted (os error 63)"
    );
    assert_eq!(std::fs::read_to_string(data.join("existing.txt")).unwrap(), "original");
    assert!(!data.join("new.txt").exists());

    let r = attack(input, &[]);
    r.expect_code(65);
    assert_eq!(
        r.report()["agent_error"]["message"],
        "blocked: /data/new.txt: Capabilities insufficient (os error 76); \
         /data/existing.txt: Capabilities insufficient (os error 76)"
    );

    let r = attack(input, &["--dir", &format!("{}::/data", data.display())]);
    r.expect_code(0);
    assert_eq!(r.report()["result"], r#"{"written":["/data/new.txt","/data/existing.txt"]}"#);
    assert_eq!(std::fs::read_to_string(data.join("new.txt")).unwrap(), "written by hostile\n");
    assert_eq!(std::fs::read_to_string(data.join("existing.txt")).unwrap(), "originalappended by hostile\n");
}

#[test]
fn env_vars_are_not_visible_unless_granted() {
    let h = hostile();
    let input = r#"{"attack":"env","name":"TOKA_TEST_SECRET"}"#;
    let env = [("TOKA_TEST_SECRET", "hunter2")];
    let r = toka_with(&["run", "--json", "--env", "OTHER=1", "--input", input, &h], None, &env);
    r.expect_code(65);
    assert_eq!(r.report()["agent_error"]["message"], "env var TOKA_TEST_SECRET not granted");
    let r = toka_with(&["run", "--json", "--env", "TOKA_TEST_SECRET", "--input", input, &h], None, &env);
    r.expect_code(0);
    assert_eq!(r.report()["result"], r#"{"value":"hunter2"}"#);
}

#[test]
fn sockets_reach_only_granted_peers() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let other_addr = other.local_addr().unwrap().to_string();
    let input = format!(r#"{{"attack":"net","addr":"{addr}"}}"#);

    let r = attack(&input, &[]);
    r.expect_code(65);
    let msg = r.report()["agent_error"]["message"].as_str().unwrap().to_string();
    assert!(msg.starts_with(&format!("connect {addr}:")), "{msg}");

    let r = attack(&input, &["--allow-net", &other_addr]);
    r.expect_code(65);
    // The host saw the refused address: the report names the grant that was missing, and so does the run's record.
    let denied = format!("connect to {addr}: not granted (--allow-net {addr})");
    let report = r.report();
    assert_eq!(report["denied"], serde_json::json!([denied]));
    let run = report["run_id"].as_str().expect("the report names the run");
    let events = toka(&["events", "--json", "--run", run, "--kind", "run.failed"]);
    events.expect_code(0);
    let last: serde_json::Value = serde_json::from_str(events.stdout.lines().last().expect("run.failed")).unwrap();
    assert_eq!(last["payload"]["denied"], serde_json::json!([denied]), "{last}");
    let r = toka(&["run", "--allow-net", &other_addr, "--input", &input, &hostile()]);
    r.expect_code(65);
    assert!(r.stderr.contains(&format!("toka-host: denied: {denied}\n")), "stderr:\n{}", r.stderr);

    let r = attack(&input, &["--allow-net", &addr]);
    r.expect_code(0);
    assert_eq!(r.report()["result"], format!(r#"{{"connected":"{addr}"}}"#));
}

#[test]
fn host_survives_repeated_attacks_in_one_process() {
    let r = attack(r#"{"attack":"membomb"}"#, &["--max-memory", "32MiB", "--repeat", "5"]);
    r.expect_code(70);
    let rep = r.report();
    assert_eq!(rep["repeat"]["runs"], 5);
    assert_eq!(rep["repeat"]["failures"], 5);
}

/// `--parallel` copies past the pooling allocator's 64 instance slots all run (a host on the pool failed the 65th
/// concurrent copy as a guest `trap`), each parked on a timer long enough for all to be alive at once.
#[test]
fn parallel_copies_beyond_an_instance_pool_all_run() {
    let sleep = r#"{"attack":"calls","calls":[{"sleep":{"ms":1500}}]}"#;
    let r = attack(sleep, &["--parallel", "100", "--timeout", "60s"]);
    r.expect_code(0);
    let rep = r.report();
    assert_eq!(rep["repeat"]["runs"], 100, "{rep}");
    assert_eq!(rep["repeat"]["outcomes"], serde_json::json!({ "success": 100 }), "{rep}");
}

/// A guest parked on a WASI timer (no guest code running for epochs to stop) still ends at its deadline.
#[test]
fn a_guest_parked_on_a_timer_is_stopped_at_its_deadline() {
    let sleep = r#"{"attack":"calls","calls":[{"sleep":{"ms":600000}}]}"#;
    let r = attack(sleep, &["--timeout", "500ms"]);
    r.expect_code(69);
    let rep = r.report();
    assert_eq!(rep["outcome"], "timeout", "{rep}");
    let wall = rep["wall_time_ms"].as_f64().unwrap();
    assert!((500.0..3000.0).contains(&wall), "a 500 ms deadline ended after {wall} ms");
    // Positive control: the same guest with a short sleep completes within the same deadline.
    let r = attack(r#"{"attack":"calls","calls":[{"sleep":{"ms":50}}]}"#, &["--timeout", "500ms"]);
    r.expect_code(0);
    assert_eq!(r.report()["result"], r#"{"answers":["ok: slept 50 ms"]}"#);
}
