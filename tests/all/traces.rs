//! Traces and logs: `serve --otlp-endpoint` exports a run's spans (request -> authenticate, load, authorize, run ->
//! record, each with the run's id) to a collector stand-in on loopback that decodes the OTLP/HTTP JSON it gets;
//! without the flag nothing is sent. A local run logs the same spans when `RUST_LOG` asks; `mcp --log-format json`
//! logs JSON lines.

use super::service::Server;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use toka_tests::{Ran, agent, root, toka_host, toka_with};

/// An OTLP/HTTP collector stand-in: accepts `POST /v1/traces` (JSON) on loopback and keeps what it decoded.
struct Collector {
    url: String,
    received: Arc<Mutex<Vec<Value>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Collector {
    fn start() -> Collector {
        let received = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let kept = received.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let app = axum::Router::new().route(
                    "/v1/traces",
                    axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                        let kept = kept.clone();
                        async move {
                            let kind = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
                            assert_eq!(kind, "application/json", "OTLP/HTTP as JSON");
                            let decoded: Value = serde_json::from_slice(&body).expect("the export is JSON");
                            kept.lock().unwrap().push(decoded);
                            ([(axum::http::header::CONTENT_TYPE, "application/json")], "{}")
                        }
                    }),
                );
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        drop(stopped.await);
                    })
                    .await
                    .unwrap();
            });
        });
        let addr = addr_rx.recv().unwrap();
        Collector { url: format!("http://{addr}"), received, stop: Some(stop), thread: Some(thread) }
    }

    /// Every span received: (name, span id, parent span id, trace id, attributes as strings).
    fn spans(&self) -> Vec<Span> {
        let mut out = Vec::new();
        for export in self.received.lock().unwrap().iter() {
            for rs in export["resourceSpans"].as_array().into_iter().flatten() {
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    for s in ss["spans"].as_array().into_iter().flatten() {
                        let mut attributes = HashMap::new();
                        for a in s["attributes"].as_array().into_iter().flatten() {
                            let v = &a["value"];
                            let text = v["stringValue"].as_str().map(String::from).unwrap_or_else(|| {
                                v.as_object().and_then(|o| o.values().next()).map(|x| x.to_string()).unwrap_or_default()
                            });
                            attributes.insert(a["key"].as_str().unwrap_or_default().to_string(), text);
                        }
                        out.push(Span {
                            name: s["name"].as_str().unwrap_or_default().into(),
                            id: s["spanId"].as_str().unwrap_or_default().into(),
                            parent: s["parentSpanId"].as_str().unwrap_or_default().into(),
                            trace: s["traceId"].as_str().unwrap_or_default().into(),
                            attributes,
                        });
                    }
                }
            }
        }
        out
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            drop(thread.join());
        }
    }
}

#[derive(Debug, Clone)]
struct Span {
    name: String,
    id: String,
    parent: String,
    trace: String,
    attributes: HashMap<String, String>,
}

fn hello() -> Value {
    json!({ "component": { "path": "hello-rust.wasm" }, "input": { "name": "Ada" }, "wait": true })
}

#[test]
fn a_runs_spans_reach_the_collector_as_request_then_run() {
    let collector = Collector::start();
    // Off by default: a server without --otlp-endpoint sends nothing.
    let mut quiet = Server::start(&[]);
    let token = quiet.mint(&["--agent", "hello-rust"]);
    let (status, _) = quiet.post("/v1/runs", Some(&token), &hello());
    assert_eq!(status, 200);
    assert_eq!(quiet.terminate(), Some(0));
    assert!(collector.received.lock().unwrap().is_empty(), "nothing is exported unless asked");

    let mut s = Server::start(&["--otlp-endpoint", &collector.url]);
    let token = s.mint(&["--agent", "hello-rust"]);
    let (status, run) = s.post("/v1/runs", Some(&token), &hello());
    assert_eq!(status, 200, "{run}");
    let id = run["run_id"].as_str().unwrap().to_string();
    // Shutting down exports what the batch still holds.
    assert_eq!(s.terminate(), Some(0));
    let spans = collector.spans();
    let of_run: Vec<&Span> = spans.iter().filter(|s| s.attributes.get("run_id") == Some(&id)).collect();
    let one = |name: &str| -> &Span {
        let found: Vec<&&Span> = of_run.iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "one `{name}` span of run {id}: {of_run:#?}");
        found[0]
    };
    let request = one("request");
    assert_eq!(request.attributes.get("route").map(String::as_str), Some("/v1/runs"));
    assert_eq!(request.attributes.get("status").map(String::as_str), Some("200"));
    assert!(request.parent.is_empty(), "the request is the root: {request:?}");
    let run_span = one("run");
    assert_eq!(run_span.attributes.get("outcome").map(String::as_str), Some("success"));
    for child in [one("authenticate"), one("load"), one("authorize"), run_span] {
        assert_eq!(child.parent, request.id, "{} is a child of the request", child.name);
        assert_eq!(child.trace, request.trace, "{} is in the request's trace", child.name);
    }
    let records: Vec<&&Span> = of_run.iter().filter(|s| s.name == "record").collect();
    let mut what: Vec<&str> = records.iter().map(|r| r.attributes["event"].as_str()).collect();
    what.sort();
    assert_eq!(what, ["run.ended", "run.started"]);
    assert!(records.iter().all(|r| r.parent == run_span.id), "records are the run's children: {records:#?}");
}

fn t(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Ran {
    let mut all = vec![("TOKA_HOME", home.to_str().unwrap())];
    all.extend_from_slice(env);
    toka_with(args, None, &all)
}

#[test]
fn a_local_run_logs_its_spans_when_asked() {
    let home = tempfile::tempdir().unwrap();
    let hello = agent("hello-rust");
    let args = ["run", "--json", hello.to_str().unwrap()];
    let traced = t(home.path(), &args, &[("RUST_LOG", "toka_host=info")]);
    traced.expect_code(0);
    let id = traced.report()["run_id"].as_str().unwrap().to_string();
    for span in ["load", "authorize", "run", "record"] {
        let opened = format!("{span}{{run_id={id}");
        assert!(traced.stderr.contains(&opened), "`{opened}` in:\n{}", traced.stderr);
    }
    assert!(!traced.stderr.contains('\u{1b}'), "no colours when stderr is not a terminal");
    // Positive control for the quiet default: without RUST_LOG, no span is logged.
    let quiet = t(home.path(), &args, &[]);
    quiet.expect_code(0);
    assert!(!quiet.stderr.contains("run_id="), "{}", quiet.stderr);
}

#[test]
fn mcp_logs_json_lines_with_log_format_json() {
    use rmcp::ServiceExt;
    use rmcp::model::CallToolRequestParams;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    t(h, &["key", "init"], &[]).expect_code(0);
    let echo = root().join("target").join("tools").join("echo.wasm");
    t(h, &["tool", "add", echo.to_str().unwrap()], &[]).expect_code(0);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let logged = |format: &str| -> String {
        rt.block_on(async {
            let mut cmd = tokio::process::Command::new(toka_host());
            cmd.args(["mcp", "--allow-tool", "echo", "--log-format", format])
                .env("TOKA_HOME", h)
                .env("TOKA_CACHE_DIR", toka_tests::shared_cache())
                // Each call is logged at debug level.
                .env("RUST_LOG", "toka_host=debug");
            let (transport, stderr) =
                rmcp::transport::TokioChildProcess::builder(cmd).stderr(Stdio::piped()).spawn().unwrap();
            let client = ().serve(transport).await.unwrap();
            let args = json!({ "said": "hi" }).as_object().unwrap().clone();
            let result = client.call_tool(CallToolRequestParams::new("echo").with_arguments(args)).await.unwrap();
            assert_eq!(result.is_error, Some(false));
            client.cancel().await.unwrap();
            let mut text = String::new();
            tokio::io::AsyncReadExt::read_to_string(&mut stderr.unwrap(), &mut text).await.unwrap();
            text
        })
    };
    let json_lines = logged("json");
    let lines: Vec<Value> = json_lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}\n{json_lines}")))
        .collect();
    let call = lines.iter().find(|l| l["fields"]["message"] == "tool call ended").expect(&json_lines);
    assert_eq!(call["fields"]["tool"], "echo");
    assert_eq!(call["fields"]["outcome"], "success");
    assert_eq!(call["level"], "DEBUG");
    // Positive control: the text format says the same, not as JSON.
    let text = logged("text");
    assert!(text.contains("tool call ended"), "{text}");
    assert!(text.lines().all(|l| serde_json::from_str::<Value>(l).is_err()), "{text}");
}
