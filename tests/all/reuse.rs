//! The reuse mode (`tool add --reuse`, README: Tools): a tool without side effects keeps one instance per caller,
//! and no caller ever sees another's. The `tally` tool counts its calls in its own memory and returns the previous
//! call's note: in a fresh sandbox every call answers `count` 1 and no `previous`; in an instance kept for one caller
//! the count goes on; a caller that sees another caller's count or note was given another caller's memory.
//!
//! Callers here: runs of the `hostile` agent making a list of tool calls (one run is one caller), two runs live at
//! once in one `serve` process, `tool call`, and MCP sessions on stdio driven by the official Rust MCP client.

use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::{RoleClient, RunningService};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use toka_tests::{Ran, agent, root, shared_cache, toka_host, toka_with};

fn t(home: &Path, args: &[&str]) -> Ran {
    toka_with(args, None, &[("TOKA_HOME", home.to_str().unwrap())])
}

fn tool(name: &str) -> String {
    let p = root().join("target").join("tools").join(format!("{name}.wasm"));
    assert!(p.exists(), "{} is missing: build it with `cargo run --release -p xtask -- build-agents`", p.display());
    p.to_str().unwrap().to_string()
}

/// A home with a root key and `tally`, installed with `--reuse` or without.
fn home_with_tally(reuse: bool) -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    t(home.path(), &["key", "init"]).expect_code(0);
    let path = tool("tally");
    let mut args = vec!["tool", "add", path.as_str()];
    if reuse {
        args.push("--reuse");
    }
    let r = t(home.path(), &args);
    r.expect_code(0);
    let said = if reuse {
        "installed tool tally 1.0.0 (none, reused per caller,"
    } else {
        "installed tool tally 1.0.0 (none,"
    };
    assert!(r.stdout.starts_with(said), "{}", r.stdout);
    home
}

/// A `tally` call in a `hostile` call list.
fn tally(note: &str, mode: &str) -> Value {
    json!({ "tool": { "name": "tally", "input": json!({ "note": note, "mode": mode }).to_string() } })
}

/// What `tally` answers: `(count, previous)`.
fn seen(count: u64, previous: Option<&str>) -> String {
    format!("ok: {}", json!({ "count": count, "previous": previous }))
}

/// One run of `hostile` making `calls`: the answers as the agent saw them, and the run id.
fn run_calls(home: &Path, calls: Value) -> (Vec<String>, String) {
    let input = json!({ "attack": "calls", "calls": calls }).to_string();
    let hostile = agent("hostile");
    let r = t(home, &["run", "--json", "--allow-tool", "tally", "--input", &input, hostile.to_str().unwrap()]);
    r.expect_code(0);
    let report = r.report();
    let result: Value = serde_json::from_str(report["result"].as_str().unwrap()).unwrap();
    let answers = result["answers"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
    (answers, report["run_id"].as_str().unwrap().to_string())
}

fn events(home: &Path, run: &str, kind: &str) -> usize {
    let r = t(home, &["events", "--json", "--run", run, "--kind", kind]);
    r.expect_code(0);
    r.stdout.lines().count()
}

/// The opt-in is refused, with a one-line reason and the invalid-input exit code, for a tool that declares a
/// side-effect class other than `none`, and nothing is installed; the same tool installs without it, and a tool
/// that declares `none` installs with it (the positive control), its manifest saying so.
#[test]
fn reuse_is_refused_for_a_tool_with_side_effects_and_accepted_for_one_without() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    for (name, class) in [("file-reader", "read-only"), ("file-writer", "idempotent"), ("http-fetch", "external")] {
        let r = t(h, &["tool", "add", &tool(name), "--reuse"]);
        r.expect_code(77);
        assert_eq!(
            r.stderr.trim(),
            format!(
                "toka-host: invalid input: tool {name} cannot be kept for reuse (--reuse): its describe() declares side-effect \
                 `{class}`, and only a tool that declares `none` may keep its memory between calls"
            )
        );
        assert!(r.stdout.is_empty(), "{}", r.stdout);
    }
    assert_eq!(t(h, &["tool", "list", "--json"]).stdout.trim(), "[]", "a refused tool is not installed");
    t(h, &["tool", "add", &tool("file-reader")]).expect_code(0);
    let r = t(h, &["tool", "add", &tool("tally"), "--reuse"]);
    r.expect_code(0);
    assert!(r.stdout.starts_with("installed tool tally 1.0.0 (none, reused per caller, sha256 "), "{}", r.stdout);
    let described: Value = serde_json::from_str(&t(h, &["tool", "describe", "tally"]).stdout).unwrap();
    assert_eq!(described["reuse"], true);
    let described: Value = serde_json::from_str(&t(h, &["tool", "describe", "file-reader"]).stdout).unwrap();
    assert_eq!(described.get("reuse"), None, "not opted in: the manifest has no reuse field");
}

/// One run is one caller: its calls of a reused tool share one instance (the count goes on, each call sees the
/// previous note), and every call is still recorded. The next run, and an operator's `tool call`, start from a
/// fresh instance.
#[test]
fn a_run_keeps_a_reused_tools_memory_and_the_next_caller_starts_fresh() {
    let home = home_with_tally(true);
    let h = home.path();
    let (answers, run) = run_calls(h, json!([tally("a1", "count"), tally("a2", "count"), tally("a3", "count")]));
    assert_eq!(answers, [seen(1, None), seen(2, Some("a1")), seen(3, Some("a2"))]);
    assert_eq!(events(h, &run, "tool.called"), 3, "every call of a kept instance is recorded");
    assert_eq!(events(h, &run, "tool.completed"), 3);
    let (answers, _) = run_calls(h, json!([tally("b1", "count")]));
    assert_eq!(answers, [seen(1, None)], "another run: a fresh instance");
    let r = t(h, &["tool", "call", "tally", "--input", r#"{"note":"c1"}"#]);
    r.expect_code(0);
    assert_eq!(r.stdout.trim(), json!({ "count": 1, "previous": null }).to_string());
}

/// The same calls without the opt-in: every call in a fresh sandbox, so the flag is what keeps the memory.
#[test]
fn without_the_opt_in_every_call_gets_a_fresh_instance() {
    let home = home_with_tally(false);
    let (answers, _) = run_calls(home.path(), json!([tally("a1", "count"), tally("a2", "count")]));
    assert_eq!(answers, [seen(1, None), seen(1, None)]);
}

/// A trap in a kept instance discards it: the next call of the same run gets a fresh instance (count 1, no
/// previous note), which is kept again from there. Before the trap, the same run shows the instance kept.
#[test]
fn a_trap_in_a_kept_instance_discards_it() {
    let home = home_with_tally(true);
    let calls = json!([
        tally("a1", "count"),
        tally("a2", "count"),
        tally("a3", "trap"),
        tally("a4", "count"),
        tally("a5", "count"),
    ]);
    let (answers, _) = run_calls(home.path(), calls);
    assert_eq!(answers[..2], [seen(1, None), seen(2, Some("a1"))]);
    assert!(
        answers[2].starts_with("err: ToolError::Failed(\"tool tally: trap: wasm trap: wasm `unreachable`"),
        "{}",
        answers[2]
    );
    assert_eq!(answers[3..], [seen(1, None), seen(2, Some("a4"))]);
}

/// Two runs live at once in one `serve` process never share an instance: run A calls `tally`, sleeps, and calls it
/// again; run B, started while A sleeps, makes its own two calls and ends before A's second call. Each sees only its
/// own count and notes.
#[test]
fn two_live_runs_never_see_each_others_memory() {
    let home = home_with_tally(true);
    let s = crate::service::Server::start_in(home, &[]);
    let bearer = s.mint(&["--agent", "hostile", "--grant", "tool:tally"]);
    let submit = |calls: Value| {
        let body = json!({
            "component": { "path": "hostile.wasm" },
            "input": { "attack": "calls", "calls": calls },
            "grants": { "tools": ["tally"] },
            "wait": true,
        });
        let (status, body) = s.post("/v1/runs", Some(&bearer), &body);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["report"]["outcome"], "success", "{body}");
        let result: Value = serde_json::from_str(body["report"]["result"].as_str().unwrap()).unwrap();
        let answers: Vec<String> =
            result["answers"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
        answers
    };
    let (a, b) = std::thread::scope(|scope| {
        let a =
            scope.spawn(|| submit(json!([tally("a1", "count"), { "sleep": { "ms": 2500 } }, tally("a2", "count")])));
        std::thread::sleep(Duration::from_millis(800));
        let started = std::time::Instant::now();
        let b = submit(json!([tally("b1", "count"), tally("b2", "count")]));
        assert!(started.elapsed() < Duration::from_millis(1500), "B must end while A sleeps: {:?}", started.elapsed());
        (a.join().unwrap(), b)
    });
    assert_eq!(b, [seen(1, None), seen(2, Some("b1"))], "B keeps its own instance, never A's");
    assert_eq!(a, [seen(1, None), "ok: slept 2500 ms".to_string(), seen(2, Some("a1"))], "A's survived B's calls");
}

type Client = RunningService<RoleClient, ()>;

/// An MCP session on stdio: `toka-host mcp` with `args`, driven by the official client.
async fn session(home: &Path, args: &[&str]) -> Client {
    let mut cmd = tokio::process::Command::new(toka_host());
    cmd.arg("mcp").args(args).env("TOKA_HOME", home).env("TOKA_CACHE_DIR", shared_cache());
    ().serve(rmcp::transport::TokioChildProcess::new(cmd).unwrap()).await.unwrap()
}

async fn call_tally(client: &Client, note: &str, mode: &str) -> CallToolResult {
    let args = json!({ "note": note, "mode": mode }).as_object().unwrap().clone();
    client.call_tool(CallToolRequestParams::new("tally").with_arguments(args)).await.unwrap()
}

#[track_caller]
fn answered(result: &CallToolResult, count: u64, previous: Option<&str>) {
    assert_eq!(result.is_error, Some(false), "{result:?}");
    assert_eq!(result.structured_content.as_ref().unwrap(), &json!({ "count": count, "previous": previous }));
}

#[track_caller]
fn refused(result: &CallToolResult, message: &str) {
    assert_eq!(result.is_error, Some(true), "{result:?}");
    let text = serde_json::to_string(&result.content).unwrap();
    assert!(text.contains(message), "expected {message:?} in {text}");
}

/// Runs a test's client side, bounded: on a timeout the clients are dropped, which kills their servers.
fn within(test: impl std::future::Future<Output = ()>) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(120), test).await })
        .expect("the test's calls ended within 120 s");
}

/// An MCP session is one caller: its calls share one kept instance, and a second session, live at the same time,
/// gets its own. A call that runs out of fuel discards the session's instance: the next call starts fresh.
#[test]
fn an_mcp_session_keeps_its_own_instance_and_loses_it_when_fuel_runs_out() {
    let home = home_with_tally(true);
    let h = home.path();
    within(async {
        let first = session(h, &["--allow-tool", "tally", "--fuel", "50000000"]).await;
        answered(&call_tally(&first, "a1", "count").await, 1, None);
        answered(&call_tally(&first, "a2", "count").await, 2, Some("a1"));
        let second = session(h, &["--allow-tool", "tally", "--fuel", "50000000"]).await;
        answered(&call_tally(&second, "b1", "count").await, 1, None);
        answered(&call_tally(&first, "a3", "count").await, 3, Some("a2"));
        refused(&call_tally(&first, "a4", "spin").await, "out of fuel: used all 50000000 units");
        answered(&call_tally(&first, "a5", "count").await, 1, None);
        answered(&call_tally(&second, "b2", "count").await, 2, Some("b1"));
        first.cancel().await.unwrap();
        second.cancel().await.unwrap();
    });
}

/// A token revoked between two calls of one caller: the second call is refused, kept instance or not (the token is
/// checked at every call); a session under another token goes on (the positive control).
#[test]
fn a_token_revoked_between_two_calls_of_one_caller_refuses_the_second() {
    let home = home_with_tally(true);
    let h = home.path();
    let mint = || {
        let r = t(h, &["token", "mint", "--agent", "llm", "--grant", "tool:tally"]);
        r.expect_code(0);
        r.stdout.trim().to_string()
    };
    let (revoked, other) = (mint(), mint());
    within(async {
        let server = session(h, &["--token", &revoked]).await;
        let control = session(h, &["--token", &other]).await;
        answered(&call_tally(&server, "a1", "count").await, 1, None);
        answered(&call_tally(&server, "a2", "count").await, 2, Some("a1"));
        t(h, &["token", "revoke", &revoked]).expect_code(0);
        refused(&call_tally(&server, "a3", "count").await, "is revoked");
        answered(&call_tally(&control, "b1", "count").await, 1, None);
        answered(&call_tally(&control, "b2", "count").await, 2, Some("b1"));
        server.cancel().await.unwrap();
        control.cancel().await.unwrap();
    });
}

/// Over streamable HTTP each MCP session is its own caller: two sessions under the same bearer token, live at once,
/// each keep their own instance (the second never sees the first's count or notes).
#[test]
fn each_streamable_http_session_keeps_its_own_instance() {
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    use std::io::BufRead;
    let home = home_with_tally(true);
    let h = home.path();
    let token = t(h, &["token", "mint", "--agent", "llm", "--grant", "tool:tally"]);
    token.expect_code(0);
    let token = token.stdout.trim().to_string();
    let mut server = std::process::Command::new(toka_host())
        .args(["mcp", "--http", "127.0.0.1:0", "--allow-tool", "tally"])
        .env("TOKA_HOME", h)
        .env("TOKA_CACHE_DIR", shared_cache())
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(server.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    // Drained, so that the server never writes into a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let url = line.trim().strip_prefix("toka-host: serving MCP on ").unwrap_or_else(|| panic!("{line}")).to_string();
    // reqwest's rustls needs a crypto provider; the client's transport is plain http here.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let outcome = std::panic::catch_unwind(|| {
        within(async {
            let connect = || async {
                let config = StreamableHttpClientTransportConfig::with_uri(url.as_str()).auth_header(token.as_str());
                ().serve(StreamableHttpClientTransport::from_config(config)).await.unwrap()
            };
            let first = connect().await;
            answered(&call_tally(&first, "a1", "count").await, 1, None);
            answered(&call_tally(&first, "a2", "count").await, 2, Some("a1"));
            let second = connect().await;
            answered(&call_tally(&second, "b1", "count").await, 1, None);
            answered(&call_tally(&first, "a3", "count").await, 3, Some("a2"));
            answered(&call_tally(&second, "b2", "count").await, 2, Some("b1"));
            first.cancel().await.unwrap();
            second.cancel().await.unwrap();
        })
    });
    server.kill().unwrap();
    server.wait().unwrap();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e);
    }
}
