//! The dashboard (`/`), served by a real `toka-host serve`: its files and headers over HTTP, and the page itself in a
//! real headless browser (Debian's Chromium driven by `tests/browser/dashboard.mjs` through npm `playwright-core`,
//! both installed by `scripts/setup-toolchains`). The browser test refuses without a token, then shows runs submitted
//! through the API live, picks up after its event stream drops (the server restarted) from the last event it saw, a
//! run's detail with its events, and the submit form's answer; each refusal has its positive control in the same
//! page.

use crate::service::{Server, client};
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use toka_tests::{root, toka_with};

/// The longest the browser script may take (it bounds each of its own waits: a few seconds, or 90 s where a plan's
/// components may compile on a cold cache).
const BROWSER_DEADLINE: Duration = Duration::from_secs(240);

/// The name the live run greets: markup, which the page must show as text.
const MARKUP_NAME: &str = "<img src=x class=injected>Ada";

#[test]
fn dashboard_files_are_served_without_a_token_under_a_strict_policy() {
    let s = Server::start(&[]);
    let http = client();
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/assets/dashboard.js", "text/javascript; charset=utf-8"),
        ("/assets/dashboard.css", "text/css; charset=utf-8"),
        ("/assets/favicon.svg", "image/svg+xml"),
    ] {
        let resp = http.get(format!("{}{path}", s.url)).send().unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        let h = resp.headers();
        assert_eq!(h["content-type"], content_type, "{path}");
        let csp = h["content-security-policy"].to_str().unwrap();
        for directive in ["default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'"] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
    }
    let page = http.get(format!("{}/", s.url)).send().unwrap().text().unwrap();
    assert!(page.contains(r#"<script src="/assets/dashboard.js" defer></script>"#), "{page}");
    // Only the listed files: anything else under /assets is the API's JSON 404, never a file from disk.
    for path in ["/assets/nope.js", "/assets/..%2F..%2FCargo.toml", "/assets/", "/assets/dashboard.js/x"] {
        let resp = http.get(format!("{}{path}", s.url)).send().unwrap();
        assert_eq!(resp.status().as_u16(), 404, "{path}");
        assert!(resp.text().unwrap().contains("not-found"), "{path}");
    }
    // The page is public; the data behind it is not (and the operator's token reads it: the positive control).
    assert_eq!(s.get("/v1/runs", None).0, 401);
    let operator = s.mint(&["--agent", "*", "--grant", "api:read"]);
    assert_eq!(s.get("/v1/runs", Some(&operator)).0, 200);
}

/// What the browser test needs from the machine; a clear failure (not a skip) when one is missing.
fn browser_tools() -> (PathBuf, PathBuf) {
    let chromium = PathBuf::from(std::env::var_os("TOKA_CHROMIUM").unwrap_or_else(|| "/usr/bin/chromium".into()));
    assert!(
        chromium.exists(),
        "{} is missing: scripts/setup-toolchains installs Debian's chromium",
        chromium.display()
    );
    let js = root().join(".tools").join("js");
    assert!(
        js.join("node_modules").join("playwright-core").join("package.json").exists(),
        "playwright-core is missing from {}: scripts/setup-toolchains installs it (npm)",
        js.display()
    );
    (chromium, js)
}

#[test]
fn dashboard_in_a_real_browser_refuses_without_a_token_then_shows_runs_live() {
    let (chromium, js) = browser_tools();
    let mut s = Server::start(&[]);
    let operator = s.mint(&["--agent", "*", "--grant", "api:read"]);
    // Valid, and may run hello-rust, but may not read the API: the page must be refused with it.
    let hello = s.mint(&["--agent", "hello-rust"]);
    // One run before the page opens, so that "no data without a token" is about data that exists.
    let seed = json!({ "component": { "path": "hello-rust.wasm" }, "input": { "name": "Seed" }, "wait": true });
    let (status, body) = s.post("/v1/runs", Some(&hello), &seed);
    assert_eq!(status, 200, "{body}");

    let started = Instant::now();
    let greeting = format!("Hello, {MARKUP_NAME}!");
    let mut child = Command::new("node")
        .arg(root().join("tests").join("browser").join("dashboard.mjs"))
        .env("TOKA_URL", &s.url)
        .env("TOKA_OPERATOR", &operator)
        .env("TOKA_NO_READ", &hello)
        .env("TOKA_JS_TOOLS", &js)
        .env("TOKA_CHROMIUM", &chromium)
        .env("TOKA_GREETING", &greeting)
        // Its own process group, so that a hung script is killed together with its browser.
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node (Debian's nodejs) runs the browser script");
    let group = child.id();
    let kill_group = || kill_process_group(group);
    let mut stdin = child.stdin.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        drop(stderr.read_to_string(&mut text));
        text
    });

    // Follow the script: when it waits for a run, submit one through the API (as any client would) and tell it the id.
    let mut said = Vec::new();
    let mut live_run = None;
    let mut dropped = false;
    let agent = toka_tests::agent("hello-rust");
    loop {
        let left = BROWSER_DEADLINE.saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if line == "need-run" {
                    let input = json!({ "component": { "path": "hello-rust.wasm" }, "input": { "name": MARKUP_NAME },
                                        "wait": true });
                    let (status, body) = s.post("/v1/runs", Some(&hello), &input);
                    assert_eq!(status, 200, "{body}");
                    assert_eq!(body["report"]["result"], json!({ "greeting": greeting }).to_string());
                    let id = body["run_id"].as_str().unwrap().to_string();
                    writeln!(stdin, "run {id}").unwrap();
                    stdin.flush().unwrap();
                    live_run = Some(id);
                } else if line == "need-drop" {
                    // The page's stream drops with the server; meanwhile a run is made with the CLI on the same home.
                    let offline = s.restart(|home| {
                        let env = [("TOKA_HOME", home.to_str().unwrap())];
                        let input = r#"{"name":"Offline"}"#;
                        let args = ["run", "--json", "--input", input, agent.to_str().unwrap()];
                        let ran = toka_with(&args, None, &env);
                        ran.expect_code(0);
                        ran.report()["run_id"].as_str().unwrap().to_string()
                    });
                    writeln!(stdin, "dropped {offline}").unwrap();
                    stdin.flush().unwrap();
                    dropped = true;
                }
                said.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                kill_group();
                panic!("the browser script ran past {BROWSER_DEADLINE:?}; it said:\n{}", said.join("\n"));
            }
        }
    }
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > BROWSER_DEADLINE {
            kill_group();
            panic!("the browser script did not exit; it said:\n{}", said.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // The browser is gone with the script (playwright closes it); nothing of the group may outlive the test.
    kill_group();
    let errors = stderr_reader.join().unwrap_or_default();
    let all = said.join("\n");
    assert!(status.success(), "the browser script failed ({status}):\n{all}\nstderr:\n{errors}");
    for step in [
        "launch",
        "refused-without-token",
        "refused-bad-token",
        "refused-without-api-read",
        "token-accepted",
        "token-kept-in-the-tab",
        "run-appears-live",
        "stream-resumes-after-a-drop",
        "run-detail",
        "submit-form",
        "plan-graph",
        "no-policy-violation",
        "all",
    ] {
        assert!(said.iter().any(|l| *l == format!("ok {step}")), "step {step} did not pass:\n{all}\nstderr:\n{errors}");
    }
    assert!(live_run.is_some() && dropped, "the script never asked for the live run or the drop:\n{all}");
    // Every run is in the log: the seed and live runs (API), the offline run (CLI) and the form's run.
    let operator_view = s.get("/v1/runs?agent=hello-rust", Some(&operator)).1;
    let runs = operator_view["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4, "{operator_view}");
    assert!(runs.iter().all(|r| r["outcome"] == "success"), "{operator_view}");
    eprintln!("the browser test took {:?}", started.elapsed());
}

/// Kills every process of process group `group` one by one, by its own (positive) pid, found in /proc. Never a
/// negative argument to kill(1): procps-ng 4.0.2's `kill -KILL -PGID` was seen to kill every process of the user,
/// the test runner and the shell that started it included.
fn kill_process_group(group: u32) {
    if group <= 1 {
        return;
    }
    let Ok(dir) = std::fs::read_dir("/proc") else { return };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // After the command name (in parentheses, possibly with spaces): state, ppid, pgrp, ...
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        if rest.split_whitespace().nth(2).and_then(|p| p.parse::<u32>().ok()) == Some(group) {
            drop(Command::new("kill").args(["-s", "KILL", &pid.to_string()]).status());
        }
    }
}
