//! Tools as components: the registry, `tool call`, agents calling tools through the host, containment of
//! misbehaving tools, the depth and rate limits, and the MCP server driven by the official Rust MCP client (rmcp).

use std::path::{Path, PathBuf};
use toka_tests::{Ran, agent, root, toka_host, toka_with};

const TOOLS: [&str; 8] =
    ["echo", "file-reader", "file-writer", "file-lister", "json-query", "http-fetch", "fail-tool", "date-validator"];

fn tool_path(name: &str) -> PathBuf {
    let p = root().join("target").join("tools").join(format!("{name}.wasm"));
    assert!(p.exists(), "{} is missing: build it with `cargo run --release -p xtask -- build-agents`", p.display());
    p
}

fn t(home: &Path, args: &[&str]) -> Ran {
    toka_with(args, None, &[("TOKA_HOME", home.to_str().unwrap())])
}

/// A home with every built-in tool installed.
fn home_with_tools() -> tempfile::TempDir {
    home_with(&TOOLS)
}

/// A home with the named built-in tools installed.
fn home_with(tools: &[&str]) -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    for &name in tools {
        let r = t(home.path(), &["tool", "add", tool_path(name).to_str().unwrap()]);
        r.expect_code(0);
        assert!(r.stdout.starts_with(&format!("installed tool {name} 1.0.0")), "{}", r.stdout);
    }
    home
}

fn call(home: &Path, tool: &str, input: &str, extra: &[&str]) -> Ran {
    let mut args = vec!["tool", "call", tool, "--input", input];
    args.extend_from_slice(extra);
    t(home, &args)
}

#[test]
fn registry_add_list_describe_remove() {
    let home = home_with_tools();
    let h = home.path();
    let list = t(h, &["tool", "list", "--json"]);
    let tools: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    let names: Vec<&str> = tools.as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    let mut sorted = TOOLS.to_vec();
    sorted.sort();
    assert_eq!(names, sorted);
    let d: serde_json::Value = serde_json::from_str(&t(h, &["tool", "describe", "file-reader"]).stdout).unwrap();
    assert_eq!(d["spec"]["side_effect"], "read-only");
    assert_eq!(d["spec"]["grants"][0], "fs:/:ro");
    assert_eq!(d["spec"]["input_schema"]["required"][0], "path");
    assert_eq!(d["sha256"].as_str().unwrap().len(), 64);
    // Under another name, and removed again.
    t(h, &["tool", "add", tool_path("echo").to_str().unwrap(), "--name", "echo2"]).expect_code(0);
    call(h, "echo2", r#"{"x":1}"#, &[]).expect_code(0);
    t(h, &["tool", "remove", "echo2"]).expect_code(0);
    t(h, &["tool", "describe", "echo2"]).expect_code(76);
    assert!(h.join("tools").join(format!("{}.wasm", d["sha256"].as_str().unwrap())).exists());
    // Not tools: an agent, a command, garbage, a bad name.
    let r = t(h, &["tool", "add", agent("hello-rust").to_str().unwrap()]);
    r.expect_code(75);
    assert!(r.stderr.contains("expected a toka:agent/tool component"), "{}", r.stderr);
    let junk = h.join("junk.wasm");
    std::fs::write(&junk, b"\0asm\x0d\0\x01\0garbage").unwrap();
    t(h, &["tool", "add", junk.to_str().unwrap()]).expect_code(73);
    t(h, &["tool", "add", tool_path("echo").to_str().unwrap(), "--name", "../evil"]).expect_code(77);
}

/// Every built-in tool works when its caller has what it needs, and is refused when the caller's token does not
/// grant it or the caller lacks the rights it needs.
#[test]
fn every_builtin_tool_allowed_and_refused() {
    let home = home_with_tools();
    let h = home.path();
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().canonicalize().unwrap();
    let d = dir.to_str().unwrap();
    std::fs::write(dir.join("a.txt"), "alpha beta\n").unwrap();
    let ro = format!("{d}:ro");
    let file = format!("{d}/a.txt");

    let r = call(h, "file-reader", &format!(r#"{{"path":"{file}"}}"#), &["--dir", &ro]);
    r.expect_code(0);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap()["content"], "alpha beta\n");
    let r = call(h, "file-lister", &format!(r#"{{"path":"{d}"}}"#), &["--dir", &ro]);
    r.expect_code(0);
    assert!(r.stdout.contains(r#""name":"a.txt""#), "{}", r.stdout);
    let out = format!("{d}/out.txt");
    call(h, "file-writer", &format!(r#"{{"path":"{out}","content":"x"}}"#), &["--dir", d]).expect_code(0);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "x");
    let r = call(h, "json-query", r#"{"document":{"a":[{"b":1},{"b":2}]},"path":"$.a[*].b"}"#, &[]);
    assert_eq!(r.stdout.trim(), r#"{"matches":[1,2]}"#);
    let r = call(h, "date-validator", r#"{"date":"2026-11-24T10:00:00+01:00"}"#, &[]);
    r.expect_code(0);
    assert!(r.stdout.contains(r#""normalized": "2026-11-24T09:00:00Z""#), "{}", r.stdout);
    let r = call(h, "date-validator", r#"{"date":"2026-02-30"}"#, &[]);
    assert!(r.stdout.contains(r#""valid": false"#), "{}", r.stdout);
    call(h, "echo", r#"{"k":[1,2]}"#, &[]).expect_code(0);

    // Without the directory grant the file tools see nothing; read-only is not enough to write.
    call(h, "file-reader", &format!(r#"{{"path":"{file}"}}"#), &[]).expect_code(65);
    let r = call(h, "file-writer", &format!(r#"{{"path":"{out}","content":"y"}}"#), &["--dir", &ro]);
    r.expect_code(65);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "x", "nothing was written");

    // A token that does not grant the tool: refused before the tool runs, for every tool. (The calls above, without
    // a token, created the local root key.)
    let token = t(h, &["token", "mint", "--agent", "ops", "--grant", &format!("fs:{d}:rw")]).stdout.trim().to_string();
    for name in TOOLS {
        let r = call(h, name, "{}", &["--token", &token]);
        r.expect_code(72);
        assert!(r.stderr.contains(&format!("grant refused: tool:{name}")), "{}", r.stderr);
    }
    let with_reader =
        t(h, &["token", "mint", "--agent", "ops", "--grant", &format!("fs:{d}:ro"), "--grant", "tool:file-reader"]);
    let with_reader = with_reader.stdout.trim();
    call(h, "file-reader", &format!(r#"{{"path":"{file}"}}"#), &["--token", with_reader, "--dir", &ro]).expect_code(0);
    // The token covers the grant flags too: read-write is more than it allows.
    call(h, "file-reader", &format!(r#"{{"path":"{file}"}}"#), &["--token", with_reader, "--dir", d]).expect_code(72);
    let failed = t(h, &["events", "--json", "--kind", "tool.failed"]);
    assert!(failed.stdout.lines().count() >= TOOLS.len(), "refused calls are events");
}

/// A loopback HTTP server that stays up and accepting until dropped, answering every request with `hi!`, and
/// counting the connections it accepted.
struct Server {
    addr: std::net::SocketAddr,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start() -> Server {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (count, stopping) = (accepted.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        count.fetch_add(1, Ordering::SeqCst);
                        conn.set_nonblocking(false).unwrap();
                        conn.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
                        let mut request = [0u8; 4096];
                        let n = conn.read(&mut request).unwrap_or(0);
                        if request[..n].starts_with(b"GET /hello HTTP/1.1\r\n") {
                            let _ = conn.write_all(
                                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhi!\n\n",
                            );
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
        });
        Server { addr, accepted, stop, thread: Some(thread) }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `http-fetch` reaches a server only when the caller may (`--allow-net`), over plain HTTP. The server stays up and
/// accepting through the refused calls, so a tool that ignored the grant would reach it (and be counted).
#[test]
fn http_fetch_only_where_the_caller_may_connect() {
    let home = home_with(&["http-fetch"]);
    let h = home.path();
    let server = Server::start();
    let other = Server::start();
    let addr = server.addr.to_string();
    let url = format!(r#"{{"url":"http://{addr}/hello"}}"#);
    let r = call(h, "http-fetch", &url, &["--allow-net", &addr]);
    r.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["status"], 200);
    assert_eq!(v["body"], "hi!\n\n");
    assert_eq!(server.accepted(), 1, "the allowed call connected once");

    // No grant at all, then a grant for another peer only: both refused by the host, and neither connects.
    let r = call(h, "http-fetch", &url, &[]);
    r.expect_code(65);
    let refused = format!(
        "toka-host: tool http-fetch: connecting to {addr}: not allowed (a call may reach only the addresses its \
         caller was granted: access-denied)\n"
    );
    assert_eq!(r.stderr, refused);
    let r = call(h, "http-fetch", &url, &["--allow-net", &other.addr.to_string()]);
    r.expect_code(65);
    assert_eq!(r.stderr, refused);
    assert_eq!((server.accepted(), other.accepted()), (1, 0), "refused calls never connected");

    let r = call(h, "http-fetch", r#"{"url":"https://example.com/"}"#, &["--allow-net", "127.0.0.1:443"]);
    r.expect_code(65);
    assert_eq!(
        r.stderr,
        "toka-host: tool http-fetch: https:// is not supported: there is no TLS in the sandbox; use http://\n"
    );
}

#[test]
fn schemas_are_checked_in_and_out() {
    let home = home_with_tools();
    let h = home.path();
    let r = call(h, "file-reader", r#"{"path":"relative"}"#, &[]);
    r.expect_code(77);
    assert!(r.stderr.contains("does not match the input schema of tool file-reader"), "{}", r.stderr);
    let r = call(h, "file-reader", r#"{"path":"/x","extra":1}"#, &[]);
    r.expect_code(77);
    call(h, "echo", "not json", &[]).expect_code(77);
    // `echo`'s schema only asks for an object, so its valid inputs take the shallow check (no JSON tree): it must
    // refuse what the full check refuses, at any depth, and pass on what it accepts.
    let r = call(h, "echo", "[1]", &[]);
    r.expect_code(77);
    assert!(
        r.stderr.contains("input does not match the input schema of tool echo: [1] is not of type"),
        "{}",
        r.stderr
    );
    for (bad, why) in [(r#"{"a":[1e400]}"#, "number out of range"), (r#"{"a":"\x"}"#, "invalid escape")] {
        let r = call(h, "echo", bad, &[]);
        r.expect_code(77);
        assert!(r.stderr.contains(&format!("input is not JSON: {why}")), "{bad}: {}", r.stderr);
    }
    let r = call(h, "echo", r#"{"a":[1.5e300,{"b":null}],"c":"\u00e9"}"#, &[]);
    r.expect_code(0);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap()["a"][1], serde_json::json!({"b": null}));
    let r = call(h, "fail-tool", r#"{"mode":"bad-output"}"#, &["--json"]);
    r.expect_code(65);
    let report = r.report();
    assert!(report["error"].as_str().unwrap().contains("against its output schema"), "{report}");
    assert!(report["output"].is_null(), "an output that violates the schema is not passed on");
}

/// A tool that traps, spins or errs fails alone: the caller gets an error, the host goes on.
#[test]
fn misbehaving_tools_are_contained() {
    let home = home_with_tools();
    let h = home.path();
    let r = call(h, "fail-tool", r#"{"mode":"trap"}"#, &["--json"]);
    r.expect_code(66);
    assert_eq!(r.report()["outcome"], "trap");
    let r = call(h, "fail-tool", r#"{"mode":"spin"}"#, &["--json", "--fuel", "50000000"]);
    r.expect_code(68);
    assert_eq!(r.report()["fuel_consumed"], 50_000_000);
    let r = call(h, "fail-tool", r#"{"mode":"spin"}"#, &["--json", "--fuel", "100000000000", "--timeout", "300ms"]);
    r.expect_code(69);
    let wall = r.report()["wall_time_ms"].as_f64().unwrap();
    assert!((300.0..2000.0).contains(&wall), "a 300 ms deadline ended after {wall} ms");
    call(h, "fail-tool", r#"{"mode":"error"}"#, &[]).expect_code(65);
    call(h, "fail-tool", r#"{"mode":"ok"}"#, &[]).expect_code(0);
    let r = call(h, "nope", "{}", &[]);
    r.expect_code(76);
    assert!(r.stderr.contains("no tool named `nope`"), "{}", r.stderr);
}

/// Tool calls made by the `hostile` agent: each answer as the agent saw it (`ok: OUTPUT` or `err: ERROR`).
fn agent_calls(home: &Path, calls: serde_json::Value, extra: &[&str]) -> Ran {
    let input = serde_json::json!({ "attack": "calls", "calls": calls }).to_string();
    let hostile = agent("hostile");
    let mut args = vec!["run", "--json", "--allow-tool", "fail-tool", "--allow-tool", "echo", "--input", &input];
    args.extend_from_slice(extra);
    args.push(hostile.to_str().unwrap());
    t(home, &args)
}

fn tool_events(home: &Path, run: &str, kind: &str) -> Vec<serde_json::Value> {
    let r = t(home, &["events", "--json", "--run", run, "--kind", kind]);
    r.expect_code(0);
    r.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Under an agent, a tool that traps, returns output against its own schema, or fails is an error value the agent
/// sees, and the agent goes on to its next call and finishes; each call is recorded with its own outcome.
#[test]
fn an_agent_goes_on_after_its_tools_trap_or_return_bad_output() {
    let home = home_with(&["fail-tool", "echo"]);
    let h = home.path();
    let tool = |name: &str, input: &str| serde_json::json!({ "tool": { "name": name, "input": input } });
    let calls = serde_json::json!([
        tool("fail-tool", r#"{"mode":"trap"}"#),
        tool("fail-tool", r#"{"mode":"bad-output"}"#),
        tool("fail-tool", r#"{"mode":"error"}"#),
        tool("echo", r#"{"after":"all"}"#),
    ]);
    let r = agent_calls(h, calls, &[]);
    r.expect_code(0);
    let report = r.report();
    let answers: serde_json::Value = serde_json::from_str(report["result"].as_str().unwrap()).unwrap();
    assert_eq!(
        answers["answers"],
        serde_json::json!([
            "err: ToolError::Failed(\"tool fail-tool: trap: wasm trap: wasm `unreachable` instruction executed\")",
            "err: ToolError::Failed(\"tool fail-tool returned output against its output schema: at /ok: \\\"not a \
             boolean\\\" is not of type \\\"boolean\\\"; Additional properties are not allowed ('extra' was \
             unexpected)\")",
            "err: ToolError::Failed(\"tool fail-tool: fail-tool was asked to fail\")",
            "ok: {\"after\":\"all\"}",
        ]),
        "{report}"
    );
    let run = report["run_id"].as_str().unwrap();
    let outcomes: Vec<String> = tool_events(h, run, "tool.failed")
        .iter()
        .map(|e| e["payload"]["outcome"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(outcomes, ["trap", "agent-error", "agent-error"]);
    let completed = tool_events(h, run, "tool.completed");
    assert_eq!(completed.len(), 1);
    assert_eq!(completed[0]["payload"]["tool"], "echo");
}

/// A tool's fuel is its caller's (README: Tools): a tool that spins under an agent burns the agent's whole budget,
/// so the run ends out of fuel at exactly its budget and the agent's next call never happens; the host records both
/// endings and survives.
#[test]
fn a_spinning_tool_spends_its_callers_fuel() {
    let home = home_with(&["fail-tool", "echo"]);
    let h = home.path();
    let calls = serde_json::json!([
        { "tool": { "name": "fail-tool", "input": r#"{"mode":"spin"}"# } },
        { "tool": { "name": "echo", "input": r#"{"never":"reached"}"# } },
    ]);
    let r = agent_calls(h, calls, &["--fuel", "50000000"]);
    r.expect_code(68);
    let report = r.report();
    assert_eq!(report["outcome"], "out-of-fuel");
    assert_eq!(report["fuel_consumed"], 50_000_000);
    let run = report["run_id"].as_str().unwrap();
    let failed = tool_events(h, run, "tool.failed");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["payload"]["tool"], "fail-tool");
    assert_eq!(failed[0]["payload"]["outcome"], "out-of-fuel");
    assert_eq!(tool_events(h, run, "tool.called").len(), 1, "the echo call never happened");
}

/// A tool calling itself is stopped by the depth limit (4), and the error travels back up as a value.
#[test]
fn call_depth_is_limited() {
    let home = home_with_tools();
    let r = call(home.path(), "fail-tool", r#"{"mode":"recurse"}"#, &[]);
    r.expect_code(0);
    let mut v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let mut depth = 0;
    while v["ok"] == true {
        v = v["inner"].clone();
        depth += 1;
    }
    assert_eq!(depth, 3, "levels 0 to 2 called on; level 3 was refused");
    assert!(v["inner"].as_str().unwrap().contains("depth limit reached: 4"), "{v}");
}

/// The example agent works through three tools, each call checked and recorded; without `tool:file-writer` its
/// last step is refused, as a value it reports.
#[test]
fn an_agent_summarizes_through_three_tools() {
    let home = home_with_tools();
    let h = home.path();
    let data = tempfile::tempdir().unwrap();
    let d = data.path().canonicalize().unwrap();
    std::fs::write(d.join("one.txt"), "first line\nsecond\n").unwrap();
    std::fs::write(d.join("two.txt"), "just one line\n").unwrap();
    let out = tempfile::tempdir().unwrap();
    let o = out.path().canonicalize().unwrap();
    let input = format!(r#"{{"dir":"{}","out":"{}/summary.md"}}"#, d.display(), o.display());
    let summarize = agent("summarize");
    let mut args = vec![
        "run",
        "--dir",
        d.to_str().unwrap(),
        "--dir",
        o.to_str().unwrap(),
        "--allow-tool",
        "file-lister",
        "--allow-tool",
        "file-reader",
    ];
    let with_writer =
        [args.clone(), vec!["--allow-tool", "file-writer", summarize.to_str().unwrap(), "--input", &input]].concat();
    let r = t(h, &with_writer);
    r.expect_code(0);
    assert_eq!(r.stdout.trim(), format!(r#"{{"files":2,"summary":"{}/summary.md"}}"#, o.display()));
    let summary = std::fs::read_to_string(o.join("summary.md")).unwrap();
    assert!(summary.contains("- one.txt: 2 lines, 3 words; starts \"first line\""), "{summary}");
    assert!(summary.contains("- two.txt: 1 lines, 3 words"), "{summary}");
    let done = t(h, &["events", "--json", "--kind", "tool.completed"]);
    let tools: Vec<String> = done
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["payload"]["tool"].as_str().unwrap().into())
        .collect();
    assert_eq!(tools, ["file-lister", "file-reader", "file-reader", "file-writer"]);

    std::fs::remove_file(o.join("summary.md")).unwrap();
    args.extend([summarize.to_str().unwrap(), "--input", &input]);
    let r = t(h, &args);
    r.expect_code(65);
    assert!(r.stderr.contains("agent error (denied): file-writer: grant refused: tool:file-writer"), "{}", r.stderr);
    assert!(!o.join("summary.md").exists());
}

/// What a tool burns comes out of its caller's fuel: the agent's run reports its own fuel plus its tools', and a
/// budget that would cover the agent alone but not its tools as well is not enough.
#[test]
fn tool_fuel_is_charged_to_the_caller() {
    let home = home_with_tools();
    let h = home.path();
    let data = tempfile::tempdir().unwrap();
    let d = data.path().canonicalize().unwrap();
    std::fs::write(d.join("one.txt"), "first line\nsecond\n".repeat(200)).unwrap();
    let input = format!(r#"{{"dir":"{}","out":"{}/summary.md"}}"#, d.display(), d.display());
    let summarize = agent("summarize");
    let run = |fuel: &str| {
        let args = [
            "run",
            "--json",
            "--fuel",
            fuel,
            "--dir",
            d.to_str().unwrap(),
            "--allow-tool",
            "file-lister",
            "--allow-tool",
            "file-reader",
            "--allow-tool",
            "file-writer",
            summarize.to_str().unwrap(),
            "--input",
            &input,
        ];
        t(h, &args)
    };
    let r = run("10000000000");
    r.expect_code(0);
    let report = r.report();
    let total = report["fuel_consumed"].as_u64().unwrap();
    let run_id = report["run_id"].as_str().unwrap();
    let events = t(h, &["events", "--json", "--run", run_id, "--kind", "tool.completed"]);
    let tools: u64 = events
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["payload"]["fuel"].as_u64().unwrap())
        .sum();
    assert_eq!(events.stdout.lines().count(), 3, "{}", events.stdout);
    assert!(tools > 0 && total > tools, "run {total}, its tools {tools}");
    // Enough for the agent's own work with half its tools' fuel to spare, were the tools free.
    let own = total - tools;
    let r = run(&(own + tools / 2).to_string());
    r.expect_code(68);
    let report = r.report();
    assert_eq!(report["outcome"], "out-of-fuel", "{report}");
    assert_eq!(report["fuel_consumed"].as_u64().unwrap(), own + tools / 2, "{report}");
}

/// `--rate` counts tool calls too: the third call in the hour is refused with its own exit code.
#[test]
fn tool_calls_are_rate_limited() {
    let home = home_with_tools();
    let h = home.path();
    t(h, &["key", "init"]).expect_code(0);
    let token = t(h, &["token", "mint", "--agent", "ops", "--grant", "tool:echo", "--rate", "2/h"]);
    let token = token.stdout.trim();
    call(h, "echo", "{}", &["--token", token]).expect_code(0);
    call(h, "echo", "{}", &["--token", token]).expect_code(0);
    let r = call(h, "echo", "{}", &["--token", token]);
    r.expect_code(81);
    assert!(r.stderr.contains("rate limit: agent ops is allowed 2/h"), "{}", r.stderr);
}

mod mcp {
    use super::*;
    use rmcp::ServiceExt;
    use rmcp::model::CallToolRequestParams;
    use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap()
    }

    fn command(home: &Path, extra: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(toka_host());
        cmd.arg("mcp").args(extra).env("TOKA_HOME", home).env("TOKA_CACHE_DIR", toka_tests::shared_cache());
        cmd
    }

    fn args(value: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        value.as_object().unwrap().clone()
    }

    /// The official Rust MCP client over stdio: lists the tools the server's token grants and calls them.
    #[test]
    fn stdio_list_and_call() {
        let home = home_with_tools();
        let h = home.path();
        let data = tempfile::tempdir().unwrap();
        let d = data.path().canonicalize().unwrap();
        std::fs::write(d.join("n.txt"), "over mcp\n").unwrap();
        t(h, &["key", "init"]).expect_code(0);
        let token = t(
            h,
            &[
                "token",
                "mint",
                "--agent",
                "llm",
                "--grant",
                "tool:file-reader",
                "--grant",
                "tool:echo",
                "--grant",
                &format!("fs:{}:ro", d.display()),
            ],
        );
        let token = token.stdout.trim().to_string();
        let ro = format!("{}:ro", d.display());
        rt().block_on(async {
            let transport = TokioChildProcess::new(command(h, &["--token", &token, "--dir", &ro])).unwrap();
            let client = ().serve(transport).await.unwrap();
            let tools = client.list_all_tools().await.unwrap();
            let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
            names.sort();
            assert_eq!(names, ["echo", "file-reader"], "only the tools the token grants");
            let reader = tools.iter().find(|t| t.name == "file-reader").unwrap();
            assert_eq!(reader.input_schema["required"][0], "path");
            assert!(reader.output_schema.is_some());
            assert_eq!(reader.annotations.as_ref().unwrap().read_only_hint, Some(true));

            let path = format!("{}/n.txt", d.display());
            let result = client
                .call_tool(
                    CallToolRequestParams::new("file-reader").with_arguments(args(serde_json::json!({ "path": path }))),
                )
                .await
                .unwrap();
            assert_eq!(result.is_error, Some(false));
            assert_eq!(result.structured_content.as_ref().unwrap()["content"], "over mcp\n");

            // Refusals are tool errors, and the server keeps serving.
            let bad = client
                .call_tool(
                    CallToolRequestParams::new("file-reader").with_arguments(args(serde_json::json!({ "path": 1 }))),
                )
                .await
                .unwrap();
            assert_eq!(bad.is_error, Some(true));
            let denied = client
                .call_tool(CallToolRequestParams::new("file-writer").with_arguments(args(serde_json::json!({}))))
                .await
                .unwrap();
            assert_eq!(denied.is_error, Some(true));
            let text = serde_json::to_string(&denied.content).unwrap();
            assert!(text.contains("grant refused: tool:file-writer"), "{text}");
            let echo = client
                .call_tool(CallToolRequestParams::new("echo").with_arguments(args(serde_json::json!({ "n": 7 }))))
                .await
                .unwrap();
            assert_eq!(echo.structured_content.unwrap()["n"], 7);
            client.cancel().await.unwrap();
        });
        // Each call was sandboxed and recorded like an agent's, under the server's token's agent.
        let called = t(h, &["events", "--json", "--kind", "tool.called"]);
        assert_eq!(called.stdout.lines().count(), 4);
        assert!(called.stdout.lines().all(|l| l.contains(r#""agent":"llm""#)), "{}", called.stdout);
    }

    /// The same over streamable HTTP, with a bearer token (see `attacks_net` for the refusals).
    #[test]
    fn streamable_http_list_and_call() {
        use std::io::BufRead;
        let home = home_with_tools();
        let h = home.path();
        t(h, &["key", "init"]).expect_code(0);
        let mut mint = vec!["token", "mint", "--agent", "llm"];
        let mut serve = vec!["mcp", "--http", "127.0.0.1:0"];
        let grants: Vec<String> = TOOLS.iter().map(|name| format!("tool:{name}")).collect();
        for (name, grant) in TOOLS.iter().zip(&grants) {
            mint.extend_from_slice(&["--grant", grant]);
            serve.extend_from_slice(&["--allow-tool", name]);
        }
        let token = t(h, &mint);
        token.expect_code(0);
        let token = token.stdout.trim().to_string();
        let mut server = std::process::Command::new(toka_host())
            .args(&serve)
            .env("TOKA_HOME", h)
            .env("TOKA_CACHE_DIR", toka_tests::shared_cache())
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut stderr = std::io::BufReader::new(server.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        // Drained, so that the server never writes into a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        let url =
            line.trim().strip_prefix("toka-host: serving MCP on ").unwrap_or_else(|| panic!("{line}")).to_string();
        // reqwest's rustls needs a crypto provider; the client's transport is plain http here.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let outcome = std::panic::catch_unwind(|| {
            rt().block_on(async {
                use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
                let config = StreamableHttpClientTransportConfig::with_uri(url.as_str()).auth_header(token.as_str());
                let client = ().serve(StreamableHttpClientTransport::from_config(config)).await.unwrap();
                let tools = client.list_all_tools().await.unwrap();
                assert_eq!(tools.len(), TOOLS.len(), "every tool the server serves and the bearer token grants");
                let r = client
                    .call_tool(
                        CallToolRequestParams::new("json-query")
                            .with_arguments(args(serde_json::json!({ "document": {"a": [5, 6]}, "path": "$.a[-1]" }))),
                    )
                    .await
                    .unwrap();
                assert_eq!(r.structured_content.unwrap()["matches"], serde_json::json!([6]));
                let trap = client
                    .call_tool(
                        CallToolRequestParams::new("fail-tool")
                            .with_arguments(args(serde_json::json!({ "mode": "trap" }))),
                    )
                    .await
                    .unwrap();
                assert_eq!(trap.is_error, Some(true), "a trapping tool is an error result; the server lives on");
                let again = client
                    .call_tool(
                        CallToolRequestParams::new("echo").with_arguments(args(serde_json::json!({ "ok": true }))),
                    )
                    .await
                    .unwrap();
                assert_eq!(again.is_error, Some(false));
                client.cancel().await.unwrap();
            })
        });
        server.kill().unwrap();
        server.wait().unwrap();
        if let Err(e) = outcome {
            std::panic::resume_unwind(e);
        }
    }
}

/// `serve` keeps tool manifests parsed between calls and only looks at each file's stamp. With the manifest
/// settled (the cache trusted), another process removing the tool, then installing another component under its
/// name, then the first one again, is seen at the very next call each time. The same input tells the two apart:
/// `echo` returns it, `fail-tool` answers `{"ok": true}`.
#[test]
fn a_tool_removed_or_replaced_by_another_process_is_seen_by_serve_at_the_next_call() {
    use crate::held_tokens::until_settled;
    use serde_json::json;
    let s = crate::service::Server::start(&[]);
    let h = s.home().to_path_buf();
    let echo = tool_path("echo");
    t(&h, &["tool", "add", echo.to_str().unwrap()]).expect_code(0);
    let token = s.mint(&["--agent", "*", "--grant", "tool:echo", "--ttl", "10m"]);
    let call = || {
        let (status, body) = s.post("/v1/tools/echo/call", Some(&token), &json!({ "input": { "mode": "ok" } }));
        assert_eq!(status, 200, "{body}");
        body
    };
    let manifest = h.join("tools/echo.json");
    let echoed = json!({ "mode": "ok" });
    until_settled(&manifest);
    // The control: the same answer at every call while nothing changes.
    for _ in 0..3 {
        let body = call();
        assert_eq!((body["outcome"].as_str(), &body["output"]), (Some("success"), &echoed), "{body}");
    }
    t(&h, &["tool", "remove", "echo"]).expect_code(0);
    let body = call();
    assert_eq!(body["outcome"], "file-not-found", "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("no tool named `echo`")), "{body}");
    t(&h, &["tool", "add", "--name", "echo", tool_path("fail-tool").to_str().unwrap()]).expect_code(0);
    let body = call();
    assert_eq!((body["outcome"].as_str(), &body["output"]), (Some("success"), &json!({ "ok": true })), "{body}");
    until_settled(&manifest);
    let body = call();
    assert_eq!(body["output"], json!({ "ok": true }), "{body}");
    t(&h, &["tool", "add", echo.to_str().unwrap()]).expect_code(0);
    let body = call();
    assert_eq!((body["outcome"].as_str(), &body["output"]), (Some("success"), &echoed), "{body}");
}
