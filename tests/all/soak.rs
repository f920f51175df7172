//! Long-lived processes keep a flat memory: after warm-up, thousands more runs (or MCP tool calls) in one process
//! must not grow its resident memory. Regression: redb's default 1 GiB page cache kept every page the event log
//! wrote, so `run --repeat` grew ~2.9 KB per run and `mcp` ~1.7 KB per call, without end.
//!
//! Memory is read from outside, from `/proc/PID/status` of the real process while it works, at two points 2000
//! operations apart, after warm-up. A leak of 1 KB per operation adds 2 MB between them (seen: +2.1 MiB for runs,
//! +2.2 MiB for calls with such a leak put in on purpose). Growth measured without one, 2026-11-27, on this 2-core
//! machine under load: runs -24 to +80 KiB over 13 runs of the test; MCP calls (8 in flight) +44 to +304 KiB over
//! 11 runs, shrinking as calls go on (a sequential client: +64, +144, +28, +16, +16 KiB per 4000 calls up to 20 000).
//! Hence the bounds: 512 KiB for runs, 1 MiB for calls; both well under the 2 MB of a 1 KB leak.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;
use toka_tests::{agent, root, shared_cache, toka_host, toka_with};

/// The operation counts at which resident memory is read: after warm-up (the event log's page cache, 2 MiB, is
/// full by then: each run adds ~2 KB of pages, each MCP call ~1.3 KB), and 2000 operations later.
const RUNS: (u64, u64) = (1000, 3000);
const CALLS: (u64, u64) = (2000, 4000);

/// Most resident memory may grow between the two readings, in KiB.
const RUN_GROWTH_KB: u64 = 512;
const CALL_GROWTH_KB: u64 = 1024;

/// The resident set of a running process, in KiB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process is running");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

#[track_caller]
fn assert_flat(what: &str, (at_warm, at_late): (u64, u64), warm: u64, late: u64, bound_kb: u64) {
    eprintln!("{what}: resident memory {warm} KiB after {at_warm}, {late} KiB after {at_late}");
    assert!(
        late <= warm + bound_kb,
        "{what}: resident memory grew from {warm} KiB after {at_warm} to {late} KiB after {at_late} (bound: \
         {bound_kb} KiB, i.e. {} bytes per operation)",
        bound_kb * 1024 / (at_late - at_warm)
    );
}

/// `run --repeat` in one process, four copies at once: every run is recorded (start, fuel, end: the event log's
/// pages are what used to accumulate), and memory after 3000 runs is what it was after 1000.
#[test]
fn run_repeat_memory_is_flat_after_a_thousand_runs() {
    let home = tempfile::tempdir().unwrap();
    let copies = 4;
    let total = RUNS.1 + 200;
    let mut child = Command::new(toka_host())
        .args(["run", "--parallel", &copies.to_string(), "--repeat", &(total / copies).to_string()])
        .args(["--input", r#"{"name":"soak"}"#])
        .arg(agent("hello-rust"))
        .env("TOKA_HOME", home.path())
        .env("TOKA_CACHE_DIR", shared_cache())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let stderr = child.stderr.take().unwrap();
    let waiting = toka_tests::watchdog(child, Duration::from_secs(240));
    // Each run logs one line through the host (`[hello-rust] info: greeting soak`) as it goes.
    let (mut runs, mut warm, mut late, mut summary) = (0, 0, 0, String::new());
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        if line == "[hello-rust] info: greeting soak" {
            runs += 1;
            if runs == RUNS.0 {
                warm = rss_kb(pid);
            } else if runs == RUNS.1 {
                late = rss_kb(pid);
            }
        } else if line.starts_with("toka-host: ") {
            summary = line;
        }
    }
    let (status, killed) = waiting.join().unwrap();
    assert!(!killed, "killed after 240 s, {runs} runs done");
    assert_eq!(runs, total, "every run logged once");
    assert!(status.success(), "{status}: {summary}");
    assert!(summary.starts_with(&format!("toka-host: {total} runs, 0 failed; resident memory ")), "{summary}");
    assert_flat("run --repeat", RUNS, warm, late, RUN_GROWTH_KB);
    // Every run is in the log with its ending.
    let env = [("TOKA_HOME", home.path().to_str().unwrap())];
    let completed = toka_with(&["events", "--json", "--kind", "run.completed"], None, &env);
    completed.expect_code(0);
    assert_eq!(completed.stdout.lines().count() as u64, total);
}

/// `toka-host mcp` over stdio, driven by the official MCP client with 8 calls in flight: 4000 `file-reader` calls
/// (each recorded twice and run in a fresh sandbox), memory after 4000 what it was after 2000.
#[test]
fn mcp_memory_is_flat_after_a_thousand_calls() {
    use rmcp::ServiceExt;
    use rmcp::model::CallToolRequestParams;
    use rmcp::transport::TokioChildProcess;

    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let env = [("TOKA_HOME", h.to_str().unwrap())];
    let reader = root().join("target/tools/file-reader.wasm");
    toka_with(&["tool", "add", reader.to_str().unwrap()], None, &env).expect_code(0);
    let data = tempfile::tempdir().unwrap();
    let d = data.path().canonicalize().unwrap();
    std::fs::write(d.join("a.txt"), "soak\n").unwrap();
    let file = format!("{}/a.txt", d.display());
    let mut cmd = tokio::process::Command::new(toka_host());
    cmd.args(["mcp", "--dir", &format!("{}:ro", d.display())])
        .env("TOKA_HOME", h)
        .env("TOKA_CACHE_DIR", shared_cache());

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // Bounded: dropping the client on a timeout kills the server.
    let (warm, late) = rt
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(240), async {
                let transport = TokioChildProcess::new(cmd).unwrap();
                let pid = transport.id().expect("the server is running");
                let client = std::sync::Arc::new(().serve(transport).await.unwrap());
                let mut readings = Vec::new();
                let mut done = 0u64;
                for checkpoint in [CALLS.0, CALLS.1] {
                    // Up to 8 calls in flight until the checkpoint, then read the server's memory.
                    let mut calls = tokio::task::JoinSet::new();
                    while done < checkpoint {
                        while calls.len() < 8 && done + (calls.len() as u64) < checkpoint {
                            let (client, file) = (client.clone(), file.clone());
                            calls.spawn(async move {
                                let args = serde_json::json!({ "path": file }).as_object().unwrap().clone();
                                client.call_tool(CallToolRequestParams::new("file-reader").with_arguments(args)).await
                            });
                        }
                        let result = calls.join_next().await.unwrap().unwrap().unwrap();
                        assert_eq!(result.is_error, Some(false), "{result:?}");
                        assert_eq!(result.structured_content.as_ref().unwrap()["content"], "soak\n");
                        done += 1;
                    }
                    readings.push(rss_kb(pid));
                }
                std::sync::Arc::into_inner(client).unwrap().cancel().await.unwrap();
                (readings[0], readings[1])
            })
            .await
        })
        .expect("4000 calls within 240 s");
    assert_flat("mcp", CALLS, warm, late, CALL_GROWTH_KB);
    let called = toka_with(&["events", "--json", "--kind", "tool.completed"], None, &env);
    assert_eq!(called.stdout.lines().count() as u64, CALLS.1, "every call recorded");
}
