//! The CLI as a client of `toka-host serve` (`run`, `runs`, `events` with `--server URL --token T`): each command is
//! run twice on the same home, once in-process and once through a real server on loopback, and must print the same
//! and exit with the same code (success, agent error, refused grant, bad token); a server that cannot be reached or
//! is busy has its own exit code.

use super::service::Server;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use toka_tests::{Ran, agent, shared_cache, toka_host, toka_with};

fn t(home: &Path, args: &[&str]) -> Ran {
    toka_with(args, None, &[("TOKA_HOME", home.to_str().unwrap())])
}

/// `args` with `--server URL --token TOKEN` after the subcommand (a `--token` already there is the bearer too).
fn remote(s: &Server, token: Option<&str>, args: &[&str]) -> Ran {
    let mut all = vec![args[0], "--server", &s.url];
    if let Some(token) = token {
        all.extend(["--token", token]);
    }
    all.extend_from_slice(&args[1..]);
    // A home that does not exist: the client must not need one.
    toka_with(&all, None, &[("TOKA_HOME", "/nonexistent/toka-client-home")])
}

/// Lines that say long work is under way: they appear only when it lasts over a second, so a busy machine may add
/// one to either side.
const PROGRESS: [&str; 4] =
    ["toka-host: running ", "toka-host: compiling ", "toka-host: compiled ", "toka-host: loaded "];

fn settled(stderr: &str) -> String {
    stderr.lines().filter(|l| !PROGRESS.iter().any(|p| l.starts_with(p))).map(|l| format!("{l}\n")).collect()
}

/// Same stdout, same stderr (but for progress lines), same exit code.
#[track_caller]
fn same(local: &Ran, remote: &Ran) {
    assert_eq!(
        (remote.code, &remote.stdout, settled(&remote.stderr)),
        (local.code, &local.stdout, settled(&local.stderr)),
        "remote (left) vs local (right)"
    );
}

#[test]
fn run_over_http_prints_and_exits_as_a_local_run() {
    let s = Server::start(&[]);
    let token = s.mint(&["--agent", "hello-rust"]);
    let hello = agent("hello-rust");
    let hello = hello.to_str().unwrap();
    // Success (result on stdout, the guest's log on stderr), then the agent's own error (65).
    for (input, code) in [(r#"{"name":"Ada"}"#, 0), ("[1,2]", 65)] {
        let args = ["run", "--token", &token, "--input", input, hello];
        let local = t(s.home(), &args);
        local.expect_code(code);
        same(&local, &remote(&s, None, &args));
    }
    let ada = t(s.home(), &["run", "--token", &token, "--input", r#"{"name":"Ada"}"#, hello]);
    assert_eq!(ada.stdout, "{\"greeting\":\"Hello, Ada!\"}\n");
    assert!(ada.stderr.contains("[hello-rust] info: greeting Ada"), "{}", ada.stderr);

    // --json: the same report but for what differs between two runs (ids, times, where the bytes came from).
    let args = ["run", "--json", "--token", &token, "--task-id", "t-1", "--input", r#"{"name":"Grace"}"#, hello];
    let (local, far) = (t(s.home(), &args), remote(&s, None, &args));
    local.expect_code(0);
    far.expect_code(0);
    let (mut l, mut r) = (local.report(), far.report());
    assert_ne!(l["run_id"], r["run_id"]);
    for report in [&mut l, &mut r] {
        let o = report.as_object_mut().unwrap();
        for varies in ["run_id", "wall_time_ms", "component"] {
            o.remove(varies);
        }
    }
    assert_eq!(r, l, "remote (left) vs local (right)");
    assert_eq!(r["result"], r#"{"greeting":"Hello, Grace!"}"#);

    // A command: its arguments, an environment variable passed from the caller's environment, its stdout.
    let cmd = agent("echo-cmd");
    let cmd = cmd.to_str().unwrap();
    let echo = s.mint(&["--agent", "echo-cmd", "--grant", "env:GREETING", "--grant", "env:FROM_CALLER"]);
    let args = ["run", "--token", &echo, "--env", "GREETING=hi", "--env", "FROM_CALLER", cmd, "a", "b"];
    let env = [("TOKA_HOME", s.home().to_str().unwrap()), ("FROM_CALLER", "caller's")];
    let local = toka_with(&args, None, &env);
    local.expect_code(0);
    assert_eq!(local.stdout, "args: a b\nenv: FROM_CALLER=caller's\nenv: GREETING=hi\n");
    let mut far = vec!["run", "--server", &s.url];
    far.extend_from_slice(&args[1..]);
    same(&local, &toka_with(&far, None, &[("FROM_CALLER", "caller's")]));
    // Its own non-zero status passes through, with no line of the host's.
    let args = ["run", "--token", &echo, cmd, "exit", "3"];
    let local = t(s.home(), &args);
    local.expect_code(1);
    same(&local, &remote(&s, None, &args));
}

#[test]
fn refusals_over_http_exit_as_local_ones() {
    let s = Server::start(&[]);
    let hello = agent("hello-rust");
    let hello = hello.to_str().unwrap();
    let data = tempfile::tempdir().unwrap();
    let dir = format!("{}::/d:ro", data.path().canonicalize().unwrap().display());

    // A directory the token does not grant: 72, the same line and the same --json report.
    let plain = s.mint(&["--agent", "hello-rust"]);
    for json in [false, true] {
        let mut args = vec!["run", "--token", &plain, "--dir", &dir, hello];
        if json {
            args.insert(1, "--json");
        }
        let local = t(s.home(), &args);
        local.expect_code(72);
        assert!(local.stderr.starts_with("toka-host: grant refused: fs:"), "{}", local.stderr);
        same(&local, &remote(&s, None, &args));
    }
    // Positive control: a token that holds it runs, here and there.
    let fs = format!("fs:{}:ro", data.path().canonicalize().unwrap().display());
    let with_fs = s.mint(&["--agent", "hello-rust", "--grant", &fs]);
    let args = ["run", "--token", &with_fs, "--dir", &dir, hello];
    let local = t(s.home(), &args);
    local.expect_code(0);
    same(&local, &remote(&s, None, &args));

    // A token of another home's keys: 78 on both sides.
    let other = tempfile::tempdir().unwrap();
    t(other.path(), &["key", "init"]).expect_code(0);
    let foreign = t(other.path(), &["token", "mint", "--agent", "hello-rust"]).stdout.trim().to_string();
    let args = ["run", "--token", &foreign, hello];
    let local = t(s.home(), &args);
    local.expect_code(78);
    let far = remote(&s, None, &args);
    far.expect_code(78);
    for r in [&local, &far] {
        assert!(r.stderr.starts_with("toka-host: token refused: "), "{}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    }
    // Not a token at all: refused before anything is sent, with the local line.
    let args = ["run", "--token", "no such token!", hello];
    same(&t(s.home(), &args), &remote(&s, None, &args));
}

#[test]
fn an_unreachable_or_busy_server_has_its_own_exit_code() {
    let hello = agent("hello-rust");
    let hello = hello.to_str().unwrap();
    // Nothing listens on a port just freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    // Text that reads as a token (base64 of a few hundred bytes): the client needs no valid one to find the server
    // gone.
    let abc = "abc".repeat(50);
    let abc = abc.as_str();
    let gone = toka_with(&["run", "--server", &url, "--token", abc, hello], None, &[]);
    gone.expect_code(83);
    assert_eq!(gone.stderr.lines().count(), 1, "{}", gone.stderr);
    assert!(gone.stderr.starts_with(&format!("toka-host: cannot reach the server at {url}: ")), "{}", gone.stderr);
    let json = toka_with(&["run", "--json", "--server", &url, "--token", abc, hello], None, &[]);
    json.expect_code(83);
    assert_eq!(json.report()["outcome"], "unreachable");
    for bad in ["127.0.0.1:7878", "http://127.0.0.1:7878/v1/runs"] {
        let r = toka_with(&["run", "--server", bad, "--token", abc, hello], None, &[]);
        r.expect_code(83);
        assert!(r.stderr.contains("cannot reach the server"), "{}", r.stderr);
    }

    // One slot, no queue: while a spinning run holds it, the next is refused as busy (84).
    let s = Server::start(&["--max-concurrent", "1", "--max-queue", "0"]);
    let spinner = s.mint(&["--agent", "hostile", "--fuel", "18446744073709551615", "--timeout", "10m"]);
    let spin = json!({ "component": { "path": "hostile.wasm" }, "input": { "attack": "spin" },
                       "limits": { "fuel": u64::MAX, "timeout_ms": 600_000 } });
    let (status, body) = s.post("/v1/runs", Some(&spinner), &spin);
    assert_eq!(status, 202, "{body}");
    let id = body["run_id"].as_str().unwrap().to_string();
    let token = s.mint(&["--agent", "hello-rust"]);
    let busy = remote(&s, Some(&token), &["run", hello]);
    busy.expect_code(84);
    assert!(busy.stderr.starts_with("toka-host: too many runs queued"), "{}", busy.stderr);
    // Positive control: once the slot is free, the same command runs.
    let (status, _) = s.post(&format!("/v1/runs/{id}/cancel"), Some(&spinner), &json!({}));
    assert_eq!(status, 202);
    let operator = s.mint(&["--agent", "*", "--grant", "api:read"]);
    let (_, run) = s.get(&format!("/v1/runs/{id}?wait_ms=20000"), Some(&operator));
    assert_eq!(run["report"]["outcome"], "cancelled", "{run}");
    remote(&s, Some(&token), &["run", hello]).expect_code(0);
}

#[test]
fn runs_over_http_list_what_the_local_runs_lists() {
    let s = Server::start(&[]);
    let hello = agent("hello-rust");
    let hello = hello.to_str().unwrap();
    let token = s.mint(&["--agent", "hello-rust"]);
    // Runs made both ways, one of them failing.
    remote(&s, Some(&token), &["run", hello]).expect_code(0);
    remote(&s, Some(&token), &["run", "--input", "[1]", hello]).expect_code(65);
    t(s.home(), &["run", "--token", &token, hello]).expect_code(0);
    let operator = s.mint(&["--agent", "*", "--grant", "api:read"]);
    for args in [
        &["runs"][..],
        &["runs", "--json"],
        &["runs", "--agent", "hello-rust", "--limit", "2"],
        &["runs", "--limit", "0"],
        &["runs", "--agent", "nobody"],
    ] {
        let local = t(s.home(), args);
        local.expect_code(0);
        same(&local, &remote(&s, Some(&operator), args));
    }
    assert_eq!(t(s.home(), &["runs", "--json"]).stdout.lines().count(), 3);
    // A reader of one agent sees that agent's runs, as the local listing filtered to it.
    let reader = s.mint(&["--agent", "hello-rust", "--grant", "api:read"]);
    same(&t(s.home(), &["runs", "--agent", "hello-rust"]), &remote(&s, Some(&reader), &["runs"]));
    // Refusals: a token without api:read, and one of another home's keys (78 both).
    let far = remote(&s, Some(&token), &["runs"]);
    far.expect_code(78);
    assert!(far.stderr.starts_with("toka-host: the token does not allow api:read"), "{}", far.stderr);
    let other = tempfile::tempdir().unwrap();
    t(other.path(), &["key", "init"]).expect_code(0);
    let foreign = t(other.path(), &["token", "mint", "--agent", "*", "--grant", "api:read"]).stdout.trim().to_string();
    let far = remote(&s, Some(&foreign), &["runs"]);
    far.expect_code(78);
    assert!(far.stderr.starts_with("toka-host: token refused: "), "{}", far.stderr);
}

#[test]
fn events_over_http_list_and_follow_as_the_local_events() {
    let s = Server::start(&[]);
    let hello = agent("hello-rust");
    let hello = hello.to_str().unwrap();
    let token = s.mint(&["--agent", "hello-rust"]);
    for _ in 0..3 {
        remote(&s, Some(&token), &["run", hello]).expect_code(0);
    }
    let run =
        t(s.home(), &["run", "--json", "--token", &token, hello]).report()["run_id"].as_str().unwrap().to_string();
    let operator = s.mint(&["--agent", "*", "--grant", "api:read"]);
    for args in [
        &["events"][..],
        &["events", "--json"],
        &["events", "--kind", "run"],
        &["events", "--limit", "2"],
        &["events", "--since", "2", "--limit", "3", "--json"],
        &["events", "--run", &run],
        &["events", "--agent", "nobody"],
    ] {
        let local = t(s.home(), args);
        local.expect_code(0);
        same(&local, &remote(&s, Some(&operator), args));
    }
    assert_eq!(t(s.home(), &["events", "--kind", "run"]).stdout.lines().count(), 8);
    let far = remote(&s, Some(&token), &["events"]);
    far.expect_code(78);

    // --follow: what is there, then what comes, over server-sent events.
    let mut child = Command::new(toka_host())
        .args(["events", "--json", "--kind", "run", "--follow", "--server", &s.url, "--token", &operator])
        .env("TOKA_CACHE_DIR", shared_cache())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut submitted = false;
    while seen.len() < 10 && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            seen.push(line);
        }
        if seen.len() == 8 && !submitted {
            // Caught up with the 4 runs so far: one more, made while the client follows.
            remote(&s, Some(&token), &["run", hello]).expect_code(0);
            submitted = true;
        }
    }
    drop(child.kill());
    drop(child.wait());
    let local = t(s.home(), &["events", "--json", "--kind", "run"]);
    let kinds: Vec<String> =
        seen.iter().map(|l| serde_json::from_str::<Value>(l).unwrap()["kind"].as_str().unwrap().into()).collect();
    assert_eq!(seen.join("\n") + "\n", local.stdout, "followed (left) vs listed (right); kinds {kinds:?}");
    assert_eq!(seen.len(), 10);
}
