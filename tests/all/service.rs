//! `toka-host serve`: the real server process on loopback, driven over HTTP by a real client. Each test starts its
//! own server on a fresh home and stops it.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use toka_tests::{Ran, agent, root, shared_cache, toka_host, toka_with};

fn t(home: &Path, args: &[&str]) -> Ran {
    toka_with(args, None, &[("TOKA_HOME", home.to_str().unwrap())])
}

/// A running `toka-host serve`, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Server {
    child: Child,
    pub url: String,
    pub home: tempfile::TempDir,
    extra: Vec<String>,
    /// `prlimit`'s `--nofile` value the server runs under, if not the test's own limit.
    nofile: Option<String>,
}

/// Starts `toka-host serve` on `addr` with `home` (under `prlimit --nofile=NOFILE` if given); the child and the URL
/// it printed.
fn spawn(home: &Path, addr: &str, extra: &[&str], nofile: Option<&str>) -> (Child, String) {
    let agents = root().join("target").join("agents");
    let mut command = match nofile {
        Some(limit) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--nofile={limit}")).arg("--").arg(toka_host());
            c
        }
        None => Command::new(toka_host()),
    };
    let mut child = command
        .args(["serve", "--addr", addr, "--component-dir", agents.to_str().unwrap()])
        .args(extra)
        .env("TOKA_HOME", home)
        .env("TOKA_CACHE_DIR", shared_cache())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    // Keep draining stderr so the server never blocks on a full pipe.
    let mut stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        drop(stderr.read_to_end(&mut sink));
    });
    (child, url)
}

impl Server {
    /// Starts a server on a fresh home, with `target/agents` as its component directory.
    pub fn start(extra: &[&str]) -> Server {
        let home = tempfile::tempdir().unwrap();
        t(home.path(), &["key", "init"]).expect_code(0);
        Server::start_in(home, extra)
    }

    pub fn start_in(home: tempfile::TempDir, extra: &[&str]) -> Server {
        Server::start_limited(home, extra, None)
    }

    /// [`Server::start_in`], the server running under `prlimit --nofile=NOFILE` (`SOFT:HARD`) if given.
    pub fn start_limited(home: tempfile::TempDir, extra: &[&str], nofile: Option<&str>) -> Server {
        let (child, url) = spawn(home.path(), "127.0.0.1:0", extra, nofile);
        let extra = extra.iter().map(ToString::to_string).collect();
        Server { child, url, home, extra, nofile: nofile.map(str::to_owned) }
    }

    /// Stops the server (SIGTERM, a clean exit), calls `while_down` with its home, and starts it again on the same
    /// address, home and flags: clients see their connections drop and the same server come back.
    pub fn restart<T>(&mut self, while_down: impl FnOnce(&Path) -> T) -> T {
        assert_eq!(self.terminate(), Some(0), "the server exits cleanly on SIGTERM");
        let done = while_down(self.home.path());
        let addr = self.url.trim_start_matches("http://").to_string();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let (child, url) = spawn(self.home.path(), &addr, &extra, self.nofile.as_deref());
        assert_eq!(url, self.url, "the server came back on another address");
        self.child = child;
        done
    }

    /// Kills the server (SIGKILL: no shutdown at all) and starts it again on the same address, home and flags.
    pub fn kill_and_restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let addr = self.url.trim_start_matches("http://").to_string();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let (child, url) = spawn(self.home.path(), &addr, &extra, self.nofile.as_deref());
        assert_eq!(url, self.url, "the server came back on another address");
        self.child = child;
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    pub fn mint(&self, args: &[&str]) -> String {
        let mut all = vec!["token", "mint"];
        all.extend_from_slice(args);
        let r = t(self.home(), &all);
        r.expect_code(0);
        r.stdout.trim().to_string()
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = client().get(format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub fn post(&self, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
        let mut req = client().post(format!("{}{path}", self.url)).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit; its exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            drop(self.child.kill());
            drop(self.child.wait());
        }
    }
}

pub fn client() -> reqwest::blocking::Client {
    // reqwest shares its rustls (without a bundled provider) with the MCP client: ring is the provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().unwrap()
}

fn hello(wait: bool) -> Value {
    json!({ "component": { "path": "hello-rust.wasm" }, "input": { "name": "Ada" }, "wait": wait })
}

/// The operator's token (every agent, reading the API) and one for the hello agent only.
fn tokens(s: &Server) -> (String, String) {
    let operator = s.mint(&["--agent", "*", "--grant", "api:read"]);
    let hello = s.mint(&["--agent", "hello-rust"]);
    (operator, hello)
}

#[test]
fn health_needs_no_token_everything_else_does() {
    let s = Server::start(&[]);
    let (status, body) = s.get("/health", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok");
    assert_eq!(body["log_writable"], true);
    let (operator, _) = tokens(&s);
    for path in ["/v1/runs", "/v1/events", "/v1/agents", "/v1/tools", "/metrics", "/openapi.json"] {
        let (status, body) = s.get(path, None);
        assert_eq!(status, 401, "{path}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{path}: {body}");
        let (status, body) = s.get(path, Some("not-a-token"));
        assert_eq!(status, 401, "{path}: {body}");
        assert_eq!(body["error"]["code"], "token-refused", "{path}: {body}");
        // Positive control: the operator's token reads them all.
        let (status, body) = s.get(path, Some(&operator));
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (status, body) = s.post("/v1/runs", None, &hello(true));
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")));
}

#[test]
fn a_run_submitted_over_http_runs_and_is_recorded() {
    let s = Server::start(&[]);
    let (operator, hello_token) = tokens(&s);
    // Waiting for the end: 200 with the report.
    let (status, body) = s.post("/v1/runs", Some(&hello_token), &hello(true));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ended");
    assert_eq!(body["report"]["outcome"], "success");
    assert_eq!(body["report"]["result"], r#"{"greeting":"Hello, Ada!"}"#);
    // At once: 202 with the id, then the run by id.
    let (status, body) = s.post("/v1/runs", Some(&hello_token), &hello(false));
    assert_eq!(status, 202, "{body}");
    let id = body["run_id"].as_str().unwrap().to_string();
    let (status, run) = s.get(&format!("/v1/runs/{id}?wait_ms=30000"), Some(&operator));
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["status"], "ended");
    assert_eq!(run["report"]["run_id"], id);
    // In the log, under the run's own token (the bearer narrowed to the run), and in the listing.
    let r = t(s.home(), &["events", "--json", "--run", &id]);
    let kinds: Vec<String> =
        r.stdout.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["kind"].as_str().unwrap().into()).collect();
    assert_eq!(kinds, ["run.started", "fuel.consumed", "run.completed"]);
    let (_, page) = s.get("/v1/runs?agent=hello-rust", Some(&operator));
    assert_eq!(page["runs"].as_array().unwrap().len(), 2, "{page}");
    assert_eq!(page["runs"][0]["run_id"], id, "newest first");
    let (_, agents) = s.get("/v1/agents", Some(&operator));
    assert_eq!(agents[0]["agent"], "hello-rust");
    assert_eq!(agents[0]["runs"], 2);
}

#[test]
fn a_run_is_refused_beyond_the_bearer_tokens_rights() {
    let s = Server::start(&[]);
    let (operator, hello_token) = tokens(&s);
    let data = tempfile::tempdir().unwrap();
    // Another agent than the token's: refused, and recorded.
    let other = json!({ "component": { "path": "dirstat.wasm" }, "input": { "path": "/" }, "wait": true });
    let (status, body) = s.post("/v1/runs", Some(&hello_token), &other);
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "token-refused", "{body}");
    // A grant the token does not hold.
    let mut with_dir = hello(true);
    with_dir["grants"] = json!({ "dirs": [format!("{}::/d:ro", data.path().display())] });
    let (status, body) = s.post("/v1/runs", Some(&hello_token), &with_dir);
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "grant-refused", "{body}");
    // Positive control: a token that holds the grant runs it.
    let fs = format!("fs:{}:ro", data.path().canonicalize().unwrap().display());
    let with_fs = s.mint(&["--agent", "hello-rust", "--grant", &fs]);
    let (status, body) = s.post("/v1/runs", Some(&with_fs), &with_dir);
    assert_eq!(status, 200, "{body}");
    // A path outside the component directories, and bad requests, are refused with their codes.
    let escape = json!({ "component": { "path": "../../Cargo.toml" } });
    let (status, body) = s.post("/v1/runs", Some(&operator), &escape);
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not-found")), "{body}");
    let (status, body) = s.post("/v1/runs", Some(&hello_token), &json!({ "component": { "path": "x" }, "typo": 1 }));
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid-request")), "{body}");
    let r = t(s.home(), &["events", "--json", "--kind", "grant.refused"]);
    assert!(r.stdout.lines().count() >= 1, "refusals are recorded: {}", r.stdout);
}

/// A run is narrowed to exactly what it asks for: a run that names no tool calls none, even with a bearer that
/// allows the tool (an empty list of grants must not mean "the bearer's grants").
#[test]
fn a_run_that_names_no_tool_calls_none_even_when_the_bearer_allows_it() {
    let home = tempfile::tempdir().unwrap();
    t(home.path(), &["key", "init"]).expect_code(0);
    let echo = root().join("target").join("tools").join("echo.wasm");
    t(home.path(), &["tool", "add", echo.to_str().unwrap()]).expect_code(0);
    let s = Server::start_in(home, &[]);
    let bearer = s.mint(&["--agent", "hostile", "--grant", "tool:echo"]);
    let calls = json!({ "attack": "calls", "calls": [{ "tool": { "name": "echo", "input": r#"{"hi":1}"# } }] });
    let answers = |tools: Value| {
        let body = json!({ "component": { "path": "hostile.wasm" }, "input": calls, "grants": { "tools": tools },
            "wait": true });
        let (status, body) = s.post("/v1/runs", Some(&bearer), &body);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["report"]["outcome"], "success", "{body}");
        let result: Value = serde_json::from_str(body["report"]["result"].as_str().unwrap()).unwrap();
        result["answers"][0].as_str().unwrap().to_string()
    };
    let refused = answers(json!([]));
    assert!(
        refused.starts_with("err: ") && refused.contains("echo"),
        "a call of a tool the run did not name: {refused}"
    );
    // Positive control: the same bearer, the run naming the tool.
    let allowed = answers(json!(["echo"]));
    assert!(allowed.starts_with("ok: "), "{allowed}");
}

#[test]
fn an_uploaded_component_runs_as_its_named_agent() {
    use base64::Engine;
    let s = Server::start(&[]);
    let token = s.mint(&["--agent", "mine"]);
    let wasm = std::fs::read(agent("hello-rust")).unwrap();
    let body = json!({
        "component": { "upload": { "name": "mine", "wasm_base64": base64::engine::general_purpose::STANDARD.encode(&wasm) } },
        "input": { "name": "up" }, "wait": true,
    });
    let (status, run) = s.post("/v1/runs", Some(&token), &body);
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["agent"], "mine");
    assert_eq!(run["report"]["result"], r#"{"greeting":"Hello, up!"}"#);
    // Over the body cap: 413, as JSON.
    let small = Server::start(&["--max-body", "64KiB"]);
    let token = small.mint(&["--agent", "mine"]);
    let (status, err) = small.post("/v1/runs", Some(&token), &body);
    assert_eq!((status, err["error"]["code"].as_str()), (413, Some("too-large")), "{err}");
}

/// An installed agent named by a client (`{"component":{"plugin":NAME}}`) is name-checked before any lookup: a
/// 100 KB name or a path is refused 400 with the bound, quoted short, and the server goes on. Control: a well-formed
/// name that is not installed gets past the check to the lookup (404); the market tests run an installed one.
#[test]
fn a_plugin_name_from_a_client_is_checked_before_any_lookup() {
    let s = Server::start(&[]);
    let token = s.mint(&["--agent", "*"]);
    let run = |name: &str| s.post("/v1/runs", Some(&token), &json!({ "component": { "plugin": name }, "wait": true }));
    for bad in ["a".repeat(100_000), "../keys".to_string(), "x\u{1b}[2J".to_string()] {
        let (status, err) = run(&bad);
        assert_eq!((status, err["error"]["code"].as_str()), (400, Some("invalid-request")), "{err}");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.starts_with("plugin: invalid package name `"), "{message}");
        assert!(message.len() < 400, "the refusal quotes the name bounded: {} bytes", message.len());
    }
    let (status, err) = run("not-installed");
    assert_eq!((status, err["error"]["code"].as_str()), (404, Some("not-found")), "{err}");
    assert_eq!(err["error"]["message"], "no installed agent package named not-installed");
    let (status, health) = s.get("/health", None);
    assert_eq!((status, &health["status"]), (200, &json!("ok")));
}

fn spin(timeout_ms: u64) -> Value {
    json!({ "component": { "path": "hostile.wasm" }, "input": { "attack": "spin" },
            "limits": { "fuel": u64::MAX, "timeout_ms": timeout_ms } })
}

#[test]
fn a_running_run_is_cancelled_and_recorded_as_cancelled() {
    let s = Server::start(&[]);
    let token = s.mint(&["--agent", "hostile", "--fuel", "18446744073709551615", "--timeout", "10m"]);
    let (status, body) = s.post("/v1/runs", Some(&token), &spin(600_000));
    assert_eq!(status, 202, "{body}");
    let id = body["run_id"].as_str().unwrap().to_string();
    // Let it get going, then cancel it.
    let operator = s.mint(&["--agent", "*", "--grant", "api:read"]);
    let started = Instant::now();
    while s.get(&format!("/v1/runs/{id}"), Some(&operator)).1["status"] != "running" {
        assert!(started.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, body) = s.post(&format!("/v1/runs/{id}/cancel"), Some(&token), &json!({}));
    assert_eq!(status, 202, "{body}");
    let (_, run) = s.get(&format!("/v1/runs/{id}?wait_ms=20000"), Some(&operator));
    assert_eq!(run["report"]["outcome"], "cancelled", "{run}");
    assert_eq!(run["report"]["exit_code"], 82);
    assert!(started.elapsed() < Duration::from_secs(20));
    let r = t(s.home(), &["events", "--json", "--run", &id, "--kind", "run.failed"]);
    assert!(r.stdout.contains(r#""outcome":"cancelled""#), "{}", r.stdout);
    // A token for another agent cannot cancel it (it does not even see it).
    let (status, _) = s.post(&format!("/v1/runs/{id}/cancel"), Some(&s.mint(&["--agent", "other"])), &json!({}));
    assert_eq!(status, 404);
}

/// More runs at once than a pool of instance slots holds (the pooling allocator's 64): every one starts and ends.
/// A server on the pooling allocator failed the 65th concurrent run as a guest `trap`.
#[test]
fn more_concurrent_runs_than_an_instance_pool_holds_all_run() {
    let runs = 80;
    let s = Server::start(&["--max-concurrent", "80"]);
    let (operator, _) = tokens(&s);
    let token = s.mint(&["--agent", "hostile", "--timeout", "5m"]);
    // Each run sleeps long enough for all of them to be alive at once on a busy machine.
    let sleeper = json!({ "component": { "path": "hostile.wasm" },
        "input": { "attack": "calls", "calls": [{ "sleep": { "ms": 4000 } }] }, "limits": { "timeout_ms": 120_000 } });
    let ids: Vec<String> = (0..runs)
        .map(|_| {
            let (status, body) = s.post("/v1/runs", Some(&token), &sleeper);
            assert_eq!(status, 202, "{body}");
            body["run_id"].as_str().unwrap().to_string()
        })
        .collect();
    let mut outcomes = std::collections::BTreeMap::new();
    for id in &ids {
        let (status, run) = s.get(&format!("/v1/runs/{id}?wait_ms=120000"), Some(&operator));
        assert_eq!((status, &run["status"]), (200, &json!("ended")), "{run}");
        let outcome = run["report"]["outcome"].as_str().unwrap().to_string();
        if outcome != "success" {
            eprintln!("{id}: {}", run["report"]["error"]);
        }
        *outcomes.entry(outcome).or_insert(0) += 1;
    }
    assert_eq!(outcomes, std::collections::BTreeMap::from([("success".to_string(), runs)]));
}

#[test]
fn a_full_queue_answers_429_and_shutdown_cancels_what_is_left() {
    let mut s = Server::start(&["--max-concurrent", "1", "--max-queue", "1", "--shutdown-grace", "500ms"]);
    let token = s.mint(&["--agent", "hostile", "--fuel", "18446744073709551615", "--timeout", "10m"]);
    let (a, first) = s.post("/v1/runs", Some(&token), &spin(600_000));
    let (b, second) = s.post("/v1/runs", Some(&token), &spin(600_000));
    assert_eq!((a, b), (202, 202), "{first} {second}");
    let (c, third) = s.post("/v1/runs", Some(&token), &spin(600_000));
    assert_eq!((c, third["error"]["code"].as_str()), (429, Some("queue-full")), "{third}");
    assert_eq!(s.terminate(), Some(0), "the server exits cleanly on SIGTERM");
    // Both runs are recorded as cancelled: the running one after the grace period, the queued one before starting.
    let r = t(s.home(), &["events", "--json", "--kind", "run"]);
    let cancelled = r.stdout.lines().filter(|l| l.contains(r#""outcome":"cancelled""#)).count();
    assert_eq!(cancelled, 2, "{}", r.stdout);
}

#[test]
fn events_stream_live_and_resume_from_last_event_id() {
    let s = Server::start(&[]);
    let (operator, hello_token) = tokens(&s);
    let url = format!("{}/v1/events/stream?kind=run", s.url);
    let resp = client().get(&url).bearer_auth(&operator).send().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let reader = std::thread::spawn(move || {
        let mut lines = BufReader::new(resp).lines();
        let mut ids = Vec::new();
        let mut kinds = Vec::new();
        while kinds.len() < 2 {
            let Some(Ok(line)) = lines.next() else { break };
            if let Some(id) = line.strip_prefix("id: ") {
                ids.push(id.parse::<u64>().unwrap());
            }
            if let Some(k) = line.strip_prefix("event: ") {
                kinds.push(k.to_string());
            }
        }
        (ids, kinds)
    });
    std::thread::sleep(Duration::from_millis(300));
    let (status, _) = s.post("/v1/runs", Some(&hello_token), &hello(true));
    assert_eq!(status, 200);
    let (ids, kinds) = reader.join().unwrap();
    assert_eq!(kinds, ["run.started", "run.completed"]);
    // Resuming after the first event gives the second again, and nothing before it.
    let resp = client()
        .get(format!("{}/v1/events/stream?kind=run", s.url))
        .bearer_auth(&operator)
        .header("Last-Event-ID", ids[0].to_string())
        .send()
        .unwrap();
    let mut lines = BufReader::new(resp).lines();
    let first_id = loop {
        let line = lines.next().unwrap().unwrap();
        if let Some(id) = line.strip_prefix("id: ") {
            break id.parse::<u64>().unwrap();
        }
    };
    assert_eq!(first_id, ids[1]);
    // A token without api:read cannot stream.
    let resp = client().get(&url).bearer_auth(&hello_token).send().unwrap();
    assert_eq!(resp.status().as_u16(), 403);
}

#[test]
fn metrics_pass_a_real_prometheus_parser() {
    let s = Server::start(&[]);
    let (operator, hello_token) = tokens(&s);
    s.post("/v1/runs", Some(&hello_token), &hello(true));
    let text = client().get(format!("{}/metrics", s.url)).bearer_auth(&operator).send().unwrap().text().unwrap();
    assert!(text.contains("toka_runs_total{outcome=\"success\"} 1\n"), "{text}");
    assert!(text.contains("toka_events_appended_total 3\n"), "{text}");
    let promtool = PathBuf::from("/usr/bin/promtool");
    assert!(promtool.exists(), "promtool is missing: scripts/setup-toolchains installs Debian's prometheus package");
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool: {said}\n{text}");
    assert!(!said.contains("error"), "promtool: {said}");
}

/// The served OpenAPI document is the one committed in `docs/openapi.json` (regenerate with TOKA_UPDATE_OPENAPI=1).
#[test]
fn openapi_document_is_in_sync() {
    let s = Server::start(&[]);
    let (operator, _) = tokens(&s);
    let served = client().get(format!("{}/openapi.json", s.url)).bearer_auth(&operator).send().unwrap().text().unwrap();
    let doc: Value = serde_json::from_str(&served).unwrap();
    for path in [
        "/v1/runs",
        "/v1/runs/{run_id}",
        "/v1/runs/{run_id}/cancel",
        "/v1/events",
        "/v1/events/stream",
        "/v1/plans",
        "/v1/plans/{plan_id}",
        "/v1/tools",
        "/health",
        "/metrics",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing from the document");
    }
    let committed = root().join("docs").join("openapi.json");
    if std::env::var_os("TOKA_UPDATE_OPENAPI").is_some() {
        std::fs::create_dir_all(committed.parent().unwrap()).unwrap();
        std::fs::write(&committed, &served).unwrap();
    }
    let on_disk = std::fs::read_to_string(&committed).unwrap_or_default();
    assert_eq!(on_disk.trim(), served.trim(), "docs/openapi.json is stale: re-run with TOKA_UPDATE_OPENAPI=1");
}

/// Resident memory of a process, from `/proc/PID/status`.
fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmRSS:")).map(|v| v.trim().trim_end_matches("kB").trim().to_string())
        })
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Runs to submit in the load test (`TOKA_LOAD_RUNS` overrides, for a longer local soak).
fn load_runs() -> usize {
    std::env::var("TOKA_LOAD_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000)
}

/// 10,000 short runs through the API, 16 at a time: none lost, every one recorded with its ending, and the server's
/// resident memory flat after warm-up. Warm-up is the first 6,000 runs: by then the log (about 3 KB a run) is many
/// times the database's 2 MiB page cache (`db::CACHE_BYTES`), and the host's other bounded caches (verified tokens,
/// loaded programs) are full. Between run 6,000 and run 10,000 the server may grow by at most 3 MiB, where a leak of
/// 1 KiB per run would add 4 MiB.
#[test]
fn load_ten_thousand_runs_none_lost_memory_flat() {
    let s = Server::start(&["--max-concurrent", "8", "--max-queue", "64"]);
    let token = s.mint(&["--agent", "hello-rust", "--ttl", "1h"]);
    let total = load_runs();
    let warm = total * 3 / 5;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let ids = std::sync::Arc::new(std::sync::Mutex::new(Vec::with_capacity(total)));
    let rss_warm = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let pid = s.child.id();
    let started = Instant::now();
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let (next, ids, rss_warm, url, token) = (next.clone(), ids.clone(), rss_warm.clone(), s.url.clone(), token.clone());
            std::thread::spawn(move || {
                let client = client();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if i >= total {
                        break;
                    }
                    if i == warm {
                        rss_warm.store(rss_of(pid), std::sync::atomic::Ordering::SeqCst);
                    }
                    let body = json!({ "component": { "path": "hello-rust.wasm" }, "input": { "name": i.to_string() }, "wait": true });
                    // A full queue is an answer too (429): the client waits and tries again, bounded.
                    let mut tries = 0;
                    let run = loop {
                        let resp = client.post(format!("{url}/v1/runs")).bearer_auth(&token).json(&body).send().unwrap();
                        let status = resp.status().as_u16();
                        let value: Value = resp.json().unwrap();
                        if status == 429 && tries < 100 {
                            tries += 1;
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        }
                        assert_eq!(status, 200, "run {i}: {value}");
                        break value;
                    };
                    assert_eq!(run["report"]["outcome"], "success", "run {i}: {run}");
                    let expected = format!(r#"{{"greeting":"Hello, {i}!"}}"#);
                    assert_eq!(run["report"]["result"], expected.as_str());
                    ids.lock().unwrap().push(run["run_id"].as_str().unwrap().to_string());
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let elapsed = started.elapsed();
    let rss_end = rss_of(pid);
    let rss_warm = rss_warm.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!(
        "load: {total} runs in {:.1} s ({:.0} runs/s); server RSS {:.1} MiB after {warm} runs, {:.1} MiB at the end",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        rss_warm as f64 / 1048576.0,
        rss_end as f64 / 1048576.0
    );
    // Every run is in the log with its start and its ending, exactly once.
    let ids = ids.lock().unwrap().clone();
    assert_eq!(ids.len(), total);
    let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), total, "run ids are unique");
    let r = t(s.home(), &["events", "--json", "--kind", "run"]);
    r.expect_code(0);
    let mut started_ids = std::collections::BTreeSet::new();
    let mut ended_ids = std::collections::BTreeSet::new();
    for line in r.stdout.lines() {
        let e: Value = serde_json::from_str(line).unwrap();
        let id = e["run_id"].as_str().unwrap().to_string();
        match e["kind"].as_str().unwrap() {
            "run.started" => assert!(started_ids.insert(id), "started twice"),
            "run.completed" => assert!(ended_ids.insert(id), "ended twice"),
            other => panic!("unexpected {other}: {line}"),
        }
    }
    assert_eq!(started_ids.len(), total);
    assert_eq!(started_ids, ended_ids);
    assert!(ids.iter().all(|id| ended_ids.contains(id)));
    t(s.home(), &["events", "verify"]).expect_code(0);
    assert!(rss_warm > 0 && rss_end > 0);
    assert!(rss_end <= rss_warm + (3 << 20), "server memory grew from {rss_warm} to {rss_end} bytes");
}
