//! Agents and tools whose WASI is 0.3: `p3-agent` and `p3-tool` (`agents/p3-agent`, `agents/p3-tool`: Rust built
//! from source against the worlds `toka:agent-async/agent` and `toka:agent-async/tool` of `wit-p3/`, whose `run` and
//! `invoke` are async, with WASI 0.3.0 imports and the toka interfaces, no adapter) run under toka-host as any agent
//! and tool do, with the same grants, limits and events. Each refusal is beside its allowed case. (`wasmtime run` has
//! no agent or tool world, so there is nothing to compare with here; the command tests in `p3.rs` compare WASI 0.3
//! itself.)

use std::path::Path;

use toka_tests::{Ran, agent, toka_with};

/// Runs `p3-agent` with `options` and the task `input`, in toka home `home` (a fresh one if `None`).
fn run(home: Option<&Path>, options: &[&str], input: serde_json::Value) -> Ran {
    let input = input.to_string();
    let component = agent("p3-agent");
    let mut args = vec!["run"];
    args.extend_from_slice(options);
    args.extend(["--input", &input, component.to_str().unwrap()]);
    let fresh = tempfile::tempdir().unwrap();
    let home = home.unwrap_or(fresh.path()).to_str().unwrap().to_owned();
    toka_with(&args, None, &[("TOKA_HOME", &home), ("P3_GRANTED", "yes"), ("P3_NOT_GRANTED", "leak")])
}

/// The JSON report of a run (`--json`), checked against its exit status.
fn report(options: &[&str], input: serde_json::Value) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(options);
    let r = run(None, &all, input);
    let report = r.report();
    assert_eq!(report["exit_code"], r.code, "{report}");
    report
}

/// The agent's result, parsed, of a run that must succeed.
fn result(report: &serde_json::Value) -> serde_json::Value {
    assert_eq!(report["outcome"], "success", "{report}");
    serde_json::from_str(report["result"].as_str().unwrap()).unwrap()
}

/// The component is what these tests claim: an agent whose `run` is async and whose WASI is 0.3, run as an agent.
#[test]
fn the_agent_is_a_wasi_0_3_agent() {
    let report = report(&[], serde_json::json!({"do": "sleep", "ms": 1}));
    assert_eq!(report["component"]["world"], "agent", "{report}");
    assert!(result(&report)["slept_ms"].as_u64().is_some_and(|ms| ms >= 1), "{report}");
    // Its toka log line is in the report, as any agent's.
    let logs = report["logs"].to_string();
    assert!(logs.contains("sleep"), "{report}");
    // A command's arguments are refused, as for any agent.
    let r = toka_with(&["run", agent("p3-agent").to_str().unwrap(), "x"], None, &[]);
    r.expect_code(77);
}

/// Files through WASI 0.3 streams: a granted directory is read; without the grant the path is not there; a `:ro`
/// grant refuses the write that a read-write grant allows (and the file is then on the host).
#[test]
fn files_follow_the_directory_grants() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "hello from WASI 0.3\n").unwrap();
    let rw = format!("{}::/data", dir.path().display());
    let ro = format!("{rw}:ro");
    let cat = serde_json::json!({"do": "cat", "path": "/data/notes.txt"});
    assert_eq!(result(&report(&["--dir", &ro], cat.clone()))["text"], "hello from WASI 0.3\n");
    let refused = report(&[], cat);
    assert_eq!(refused["outcome"], "agent-error", "{refused}");
    assert_eq!(refused["exit_code"], 65);
    assert!(refused["error"].as_str().unwrap().contains("not under a preopened directory"), "{refused}");

    let write = serde_json::json!({"do": "write", "path": "/data/out.txt", "text": "written by 0.3"});
    let refused = report(&["--dir", &ro], write.clone());
    assert_eq!(refused["outcome"], "agent-error", "{refused}");
    assert!(!dir.path().join("out.txt").exists());
    assert_eq!(result(&report(&["--dir", &rw], write))["written"], 14);
    assert_eq!(std::fs::read_to_string(dir.path().join("out.txt")).unwrap(), "written by 0.3");
}

/// Only granted environment variables reach the agent.
#[test]
fn only_granted_environment() {
    let env =
        result(&report(&["--env", "P3_GRANTED", "--env", "SPACED=a b \"c\"\nd"], serde_json::json!({"do": "env"})));
    assert_eq!(env["env"], serde_json::json!([["P3_GRANTED", "yes"], ["SPACED", "a b \"c\"\nd"]]));
    let env = result(&report(&[], serde_json::json!({"do": "env"})));
    assert_eq!(env["env"], serde_json::json!([]));
}

/// Its observation and its run are in the event log, in order, and the log verifies; its toka call (`events.emit`,
/// a plain function) works from inside the async `run`.
#[test]
fn its_events_are_recorded() {
    let home = tempfile::tempdir().unwrap();
    let r = run(Some(home.path()), &["--json"], serde_json::json!({"do": "emit", "text": "from 0.3"}));
    r.expect_code(0);
    let seq = result(&r.report())["seq"].as_u64().unwrap();
    let home_env = [("TOKA_HOME", home.path().to_str().unwrap())];
    let events = toka_with(&["events", "--json"], None, &home_env);
    events.expect_code(0);
    let all: Vec<serde_json::Value> = events.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let kinds: Vec<&str> = all.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["run.started", "observation", "fuel.consumed", "run.completed"]);
    assert_eq!(all[0]["payload"]["world"], "agent");
    assert_eq!(all[1]["seq"].as_u64(), Some(seq));
    assert_eq!(all[1]["payload"]["kind"], "p3.note", "{}", all[1]);
    assert!(all[1]["payload"].to_string().contains("from 0.3"), "{}", all[1]);
    toka_with(&["events", "verify"], None, &home_env).expect_code(0);
}

/// It calls an installed tool (in its nested sandbox, on the main engine, from inside the agent's concurrent event
/// loop) when its token allows that tool, and is refused the same call without the grant.
#[test]
fn it_calls_tools_it_is_granted() {
    let home = tempfile::tempdir().unwrap();
    let home_env = [("TOKA_HOME", home.path().to_str().unwrap())];
    let echo = toka_tests::root().join("target/tools/echo.wasm");
    toka_with(&["tool", "add", echo.to_str().unwrap()], None, &home_env).expect_code(0);
    let call = serde_json::json!({"do": "tool", "name": "echo", "input": "{\"said\":\"hi\"}"});
    let r = run(Some(home.path()), &["--json", "--allow-tool", "echo"], call.clone());
    r.expect_code(0);
    let output: serde_json::Value = serde_json::from_str(result(&r.report())["output"].as_str().unwrap()).unwrap();
    assert_eq!(output, serde_json::json!({"said": "hi"}));
    let r = run(Some(home.path()), &["--json"], call);
    let refused = r.report();
    assert_eq!(refused["outcome"], "agent-error", "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("grant refused: tool:echo"), "{refused}");
    let events = toka_with(&["events", "--json", "--kind", "tool"], None, &home_env);
    events.expect_code(0);
    let kinds: Vec<String> = events
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["tool.called", "tool.completed", "tool.called", "tool.failed"]);
}

/// Fuel, deadlines (a spinning agent, and one parked on a WASI 0.3 timer), memory and output caps hold, each beside
/// a run under the same limit that passes.
#[test]
fn limits_hold() {
    let spin = serde_json::json!({"do": "spin"});
    let report_of = |options: &[&str], input: &serde_json::Value| report(options, input.clone());
    let r = report_of(&["--fuel", "50000000"], &spin);
    assert_eq!((r["outcome"].as_str(), r["exit_code"].as_u64()), (Some("out-of-fuel"), Some(68)), "{r}");
    assert_eq!(r["fuel_consumed"], 50_000_000);
    result(&report_of(&["--fuel", "50000000"], &serde_json::json!({"do": "sleep", "ms": 1})));

    let r = report_of(&["--fuel", "unlimited", "--timeout", "300ms"], &spin);
    assert_eq!((r["outcome"].as_str(), r["exit_code"].as_u64()), (Some("timeout"), Some(69)), "{r}");
    let wall = r["wall_time_ms"].as_f64().unwrap();
    assert!((300.0..2000.0).contains(&wall), "a 300 ms deadline ended after {wall} ms");
    let r = report_of(&["--timeout", "500ms"], &serde_json::json!({"do": "sleep", "ms": 600_000}));
    assert_eq!(r["outcome"], "timeout", "{r}");
    let wall = r["wall_time_ms"].as_f64().unwrap();
    assert!((500.0..3000.0).contains(&wall), "a 500 ms deadline ended after {wall} ms");
    assert!(
        result(&report_of(&["--timeout", "500ms"], &serde_json::json!({"do": "sleep", "ms": 20})))["slept_ms"].as_u64()
            >= Some(20)
    );

    let r = report_of(&["--max-memory", "16MiB"], &serde_json::json!({"do": "alloc", "mib": 64}));
    assert_eq!((r["outcome"].as_str(), r["exit_code"].as_u64()), (Some("memory-limit"), Some(70)), "{r}");
    assert!(r["peak_memory_bytes"].as_u64().unwrap() <= 16 << 20, "{r}");
    assert_eq!(
        result(&report_of(&["--max-memory", "16MiB"], &serde_json::json!({"do": "alloc", "mib": 4})))["allocated"],
        4
    );

    let long = "x".repeat(100_000);
    let r = report_of(&["--max-output", "10000"], &serde_json::json!({"do": "print", "text": long}));
    assert_eq!((r["outcome"].as_str(), r["exit_code"].as_u64()), (Some("output-limit"), Some(71)), "{r}");
    assert_eq!(r["stdout_bytes"], 10000);
    let r = report_of(&["--max-output", "10000"], &serde_json::json!({"do": "print", "text": "fits"}));
    assert_eq!(result(&r)["printed"], 4);
    assert_eq!(r["stdout"], "fits");
    let r = report_of(&[], &serde_json::json!({"do": "print", "text": "to stderr", "stderr": true}));
    assert_eq!((r["stdout"].as_str(), r["stderr"].as_str()), (Some(""), Some("to stderr")), "{r}");
}

/// An agent error is the agent's own (exit 65, its message kept); a task that is not JSON is refused before it runs.
#[test]
fn agent_errors_and_bad_input() {
    let r = report(&[], serde_json::json!({"do": "fail", "message": "no luck"}));
    assert_eq!((r["outcome"].as_str(), r["exit_code"].as_u64()), (Some("agent-error"), Some(65)), "{r}");
    assert_eq!(r["agent_error"]["message"], "no luck", "{r}");
    let r = toka_with(&["run", "--input", "{not json", agent("p3-agent").to_str().unwrap()], None, &[]);
    r.expect_code(77);
}

/// An agent whose `run` is a plain function may not import WASI 0.3: it could not wait on any of it. Refused when
/// loaded (`wrong-world`, 75), naming the import and what may use it; the agent above, whose `run` is async, is the
/// allowed case.
#[test]
fn a_plain_run_may_not_import_wasi_0_3() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain-run.wasm");
    let component = wat::parse_str(
        r#"(component
            (import "wasi:random/random@0.3.0" (instance (export "get-random-u64" (func (result u64)))))
            (core module $m (func (export "run")))
            (core instance $i (instantiate $m))
            (func $run (canon lift (core func $i "run")))
            (export "run" (func $run)))"#,
    )
    .unwrap();
    std::fs::write(&path, component).unwrap();
    let r = toka_with(&["run", path.to_str().unwrap()], None, &[]);
    r.expect_code(75);
    assert!(r.stderr.contains("imports the WASI 0.3 interface wasi:random/random@0.3.0"), "{}", r.stderr);
    assert!(r.stderr.contains("an agent whose `run` is async"), "{}", r.stderr);
}

/// A home with `p3-tool` installed (its `describe` called on the WASI 0.3 engine), and the home's environment.
fn home_with_p3_tool() -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let tool = toka_tests::root().join("target/tools/p3-tool.wasm");
    let r = toka_with(&["tool", "add", tool.to_str().unwrap()], None, &[("TOKA_HOME", home.path().to_str().unwrap())]);
    r.expect_code(0);
    assert!(r.stdout.starts_with("installed tool p3-tool "), "{}", r.stdout);
    home
}

fn tool_call(home: &Path, input: serde_json::Value, extra: &[&str]) -> Ran {
    let input = input.to_string();
    let mut args = vec!["tool", "call", "p3-tool", "--input", &input];
    args.extend_from_slice(extra);
    toka_with(&args, None, &[("TOKA_HOME", home.to_str().unwrap())])
}

/// A tool whose `invoke` is async is installed and called: it reads a file the call may read through a WASI 0.3
/// stream (and not without the grant), waits on a 0.3 timer, and is stopped by the call's fuel and deadline, each
/// beside a call that passes.
#[test]
fn a_tool_whose_wasi_is_0_3_is_installed_and_called() {
    let home = home_with_p3_tool();
    let h = home.path();
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().canonicalize().unwrap();
    std::fs::write(dir.join("a.txt"), "read by a 0.3 tool\n").unwrap();
    let ro = format!("{}:ro", dir.display());
    let cat = serde_json::json!({"do": "cat", "path": format!("{}/a.txt", dir.display())});
    let r = tool_call(h, cat.clone(), &["--dir", &ro]);
    r.expect_code(0);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap()["text"], "read by a 0.3 tool\n");
    let r = tool_call(h, cat, &[]);
    r.expect_code(65);
    assert!(r.stderr.contains("not under a preopened directory"), "{}", r.stderr);

    // The tool declares `fs:/:ro`: a caller that may write there does not lend it that right.
    let rw = dir.display().to_string();
    let out = dir.join("out.txt");
    let write = serde_json::json!({"do": "write", "path": out.display().to_string(), "text": "x"});
    let r = tool_call(h, write, &["--dir", &rw]);
    r.expect_code(65);
    assert!(r.stderr.contains("write: ErrorCode::NotPermitted"), "{}", r.stderr);
    assert!(!out.exists(), "the tool wrote through a read-only grant");

    let r = tool_call(h, serde_json::json!({"do": "echo", "value": [1, "two"]}), &[]);
    r.expect_code(0);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap()["value"], serde_json::json!([1, "two"]));

    let spin = serde_json::json!({"do": "spin"});
    let r = tool_call(h, spin.clone(), &["--fuel", "50000000", "--json"]);
    assert_eq!(r.report()["outcome"], "out-of-fuel", "{}", r.stdout);
    let r = tool_call(h, spin, &["--fuel", "unlimited", "--timeout", "300ms", "--json"]);
    assert_eq!(r.report()["outcome"], "timeout", "{}", r.stdout);
    let r = tool_call(h, serde_json::json!({"do": "sleep", "ms": 600_000}), &["--timeout", "500ms", "--json"]);
    assert_eq!(r.report()["outcome"], "timeout", "{}", r.stdout);
    let r = tool_call(h, serde_json::json!({"do": "sleep", "ms": 20}), &["--timeout", "5s", "--json"]);
    assert_eq!(r.report()["outcome"], "success", "{}", r.stdout);
}

/// An agent whose WASI is 0.3 calls a tool whose WASI is 0.3: the tool's concurrent event loop runs inside a call the
/// agent's own loop is waiting on (two stores, one thread). The tool reads what the agent may read; the agent is
/// refused the call without the grant.
#[test]
fn a_wasi_0_3_agent_calls_a_wasi_0_3_tool() {
    let home = home_with_p3_tool();
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().canonicalize().unwrap();
    std::fs::write(dir.join("b.txt"), "nested 0.3\n").unwrap();
    let grant = format!("{}:ro", dir.display());
    let inner = serde_json::json!({"do": "cat", "path": format!("{}/b.txt", dir.display())}).to_string();
    let call = serde_json::json!({"do": "tool", "name": "p3-tool", "input": inner});
    let r = run(Some(home.path()), &["--json", "--allow-tool", "p3-tool", "--dir", &grant], call.clone());
    r.expect_code(0);
    let output: serde_json::Value = serde_json::from_str(result(&r.report())["output"].as_str().unwrap()).unwrap();
    assert_eq!(output["text"], "nested 0.3\n");
    let r = run(Some(home.path()), &["--json", "--dir", &grant], call);
    let refused = r.report();
    assert_eq!(refused["outcome"], "agent-error", "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("grant refused: tool:p3-tool"), "{refused}");
}
