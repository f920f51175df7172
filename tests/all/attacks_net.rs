//! Network attack classes (issue 10, items 5 and 6): each test is named by the class it covers and holds a positive
//! control beside every refusal, in the same setup, so that a refusal cannot pass by accident. Listeners stay open
//! while the refused cases run, so a refusal cannot pass because nothing listens.
//!
//! - Name lookups through a network grant: a guest resolves only the names its grants cover, to the addresses the
//!   host authorized; anything else is an unknown name and a noted denial.
//! - IPv6 grants, from token to run.
//! - MCP over HTTP: bearer tokens (missing, wrong key, revoked, narrower), Host and Origin (DNS rebinding), what a
//!   server without `--token` serves, and the cap on concurrent calls.

use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use serde_json::{Value, json};
use std::io::{BufRead, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use toka_tests::{Ran, agent, root, shared_cache, toka_host, toka_with};

fn t(home: &Path, args: &[&str]) -> Ran {
    toka_with(args, None, &[("TOKA_HOME", home.to_str().unwrap())])
}

fn hostile() -> String {
    agent("hostile").to_str().unwrap().to_string()
}

/// Runs the hostile agent's `resolve` attack in `home` with `extra` flags (`--json`).
fn resolve(home: &Path, name: &str, port: u16, connect: bool, extra: &[&str]) -> Ran {
    let input = json!({ "attack": "resolve", "name": name, "port": port, "connect": connect }).to_string();
    let h = hostile();
    let mut args = vec!["run", "--json", "--input", &input];
    args.extend_from_slice(extra);
    args.push(&h);
    t(home, &args)
}

fn agent_error(r: &Ran) -> String {
    r.report()["agent_error"]["message"].as_str().unwrap_or_else(|| panic!("no agent error: {}", r.stdout)).to_string()
}

/// The `run.failed` event of the run a report names.
fn failed_event(home: &Path, report: &Value) -> Value {
    let run = report["run_id"].as_str().expect("the report names the run");
    let r = t(home, &["events", "--json", "--run", run, "--kind", "run.failed"]);
    r.expect_code(0);
    serde_json::from_str(r.stdout.lines().last().expect("a run.failed event")).unwrap()
}

/// Name lookups through a network grant: only granted names resolve, to exactly the authorized addresses.
#[test]
fn dns_lookups_answer_only_granted_names() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    // `localhost` as this machine's resolver answers it: the test binds where the guest will connect first.
    let mut local: Vec<IpAddr> = Vec::new();
    for a in ("localhost", 0).to_socket_addrs().unwrap() {
        if !local.contains(&a.ip()) {
            local.push(a.ip());
        }
    }
    let listener = TcpListener::bind((local[0], 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let grant = format!("localhost:{port}");
    let listed: Vec<String> = local.iter().map(IpAddr::to_string).collect();

    // Positive control: the granted name resolves to the addresses the host authorized, and the guest connects.
    let r = resolve(h, "localhost", port, true, &["--allow-net", &grant]);
    r.expect_code(0);
    let result: Value = serde_json::from_str(r.report()["result"].as_str().unwrap()).unwrap();
    assert_eq!(result["addresses"], json!(listed), "{result}");
    assert_eq!(result["connected"], SocketAddr::new(local[0], port).to_string());
    assert!(r.report()["denied"].as_array().is_none_or(Vec::is_empty), "{}", r.stdout);
    // Case and a trailing dot do not change a name.
    let r = resolve(h, "LocalHost.", port, false, &["--allow-net", &grant]);
    r.expect_code(0);

    // Same grant: a sibling name and an unrelated one are unknown, and each is a noted denial naming the grant.
    for name in ["localhost.localdomain", "example.com", "a.localhost"] {
        let r = resolve(h, name, port, true, &["--allow-net", &grant]);
        r.expect_code(65);
        assert_eq!(agent_error(&r), format!("resolve {name}: name-unresolvable"));
        let denied = format!("resolve {name}: not granted (--allow-net {name}:PORT)");
        let report = r.report();
        assert_eq!(report["denied"], json!([denied]));
        assert_eq!(failed_event(h, &report)["payload"]["denied"], json!([denied]));
    }
    // A name the host's resolver certainly answers is still unknown to a guest granted only an address.
    let literal = format!("{}:{port}", SocketAddr::new(local[0], port).ip());
    let literal = if local[0].is_ipv6() { format!("[{}]:{port}", local[0]) } else { literal };
    let r = resolve(h, "localhost", port, false, &["--allow-net", &literal]);
    r.expect_code(65);
    assert_eq!(agent_error(&r), "resolve localhost: name-unresolvable");
    // ... while the granted address, as a literal, answers itself (positive control in that setup).
    let r = resolve(h, &local[0].to_string(), port, true, &["--allow-net", &literal]);
    r.expect_code(0);

    // On stderr too, without --json.
    let input = json!({ "attack": "resolve", "name": "example.com", "port": port }).to_string();
    let r = t(h, &["run", "--allow-net", &grant, "--input", &input, &hostile()]);
    r.expect_code(65);
    assert!(
        r.stderr.contains("toka-host: denied: resolve example.com: not granted (--allow-net example.com:PORT)\n"),
        "{}",
        r.stderr
    );

    // No network grant at all: every lookup is refused, as before, and noted.
    let r = resolve(h, "localhost", port, false, &[]);
    r.expect_code(65);
    assert_eq!(agent_error(&r), "resolve localhost: permanent-resolver-failure");
    assert!(r.report()["denied"][0].as_str().unwrap().contains("no --allow-net"), "{}", r.stdout);
    drop(listener);
}

/// `http-fetch` resolves the caller's granted name inside its own sandbox (the tool's grants carry the names of
/// the peers they keep), and nothing else.
#[test]
fn dns_lookups_in_a_tool_sandbox_follow_the_callers_grants() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    t(h, &["tool", "add", root().join("target/tools/http-fetch.wasm").to_str().unwrap()]).expect_code(0);
    let first = ("localhost", 0).to_socket_addrs().unwrap().next().unwrap().ip();
    let listener = TcpListener::bind((first, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut request = [0u8; 4096];
        let n = conn.read(&mut request).unwrap();
        assert!(request[..n].starts_with(b"GET /named HTTP/1.1\r\n"));
        conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes").unwrap();
        // Kept open (returned) while the refused call runs.
        listener
    });
    let grant = format!("localhost:{port}");
    let input = format!(r#"{{"url":"http://localhost:{port}/named"}}"#);
    let r = t(h, &["tool", "call", "http-fetch", "--input", &input, "--allow-net", &grant]);
    r.expect_code(0);
    assert_eq!(serde_json::from_str::<Value>(&r.stdout).unwrap()["body"], "yes");
    let listener = server.join().unwrap();
    // Another name for a loopback address: the machine's own name where the system resolves it to loopback (the
    // host's resolver would answer it, so only the grant check refuses it), else one that is usually not resolvable.
    let own = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
    let loopback = (own.as_str(), port).to_socket_addrs().is_ok_and(|mut a| a.all(|a| a.ip().is_loopback()));
    let other = if loopback && !own.is_empty() && own != "localhost" { own } else { "localhost.localdomain".into() };
    let input = format!(r#"{{"url":"http://{other}:{port}/named"}}"#);
    let r = t(h, &["tool", "call", "http-fetch", "--input", &input, "--allow-net", &grant]);
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert!(r.stderr.contains(&format!("looking up {other}: name-unresolvable")), "{}", r.stderr);
    drop(listener);
}

/// IPv6 grants: `[::1]:PORT` works from a minted token to a run, and with the token minted on the spot.
#[test]
fn ipv6_grants_work_from_token_to_run() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    t(h, &["key", "init"]).expect_code(0);
    let listener = TcpListener::bind("[::1]:0").expect("this test needs IPv6 loopback (::1)");
    let port = listener.local_addr().unwrap().port();
    let other = TcpListener::bind("[::1]:0").unwrap();
    let other_port = other.local_addr().unwrap().port();
    let grant = format!("[::1]:{port}");
    let input = json!({ "attack": "net", "addr": grant }).to_string();
    let run = |extra: &[&str]| {
        let h2 = hostile();
        let mut args = vec!["run", "--json", "--input", &input];
        args.extend_from_slice(extra);
        args.push(&h2);
        t(h, &args)
    };

    // The token minted on the spot from the flags.
    let r = run(&["--allow-net", &grant]);
    r.expect_code(0);
    assert_eq!(r.report()["result"], json!({ "connected": grant }).to_string());

    // A token minted for the peer, in either spelling of the address.
    for spelled in [format!("net:[::1]:{port}"), format!("net:[0:0:0:0:0:0:0:1]:{port}")] {
        let token = t(h, &["token", "mint", "--agent", "hostile", "--grant", &spelled]);
        token.expect_code(0);
        let token = token.stdout.trim().to_string();
        let r = run(&["--token", &token, "--allow-net", &grant]);
        r.expect_code(0);
        // Refusal in the same setup: another port of the same address is not in the token.
        let r = run(&["--token", &token, "--allow-net", &format!("[::1]:{other_port}")]);
        r.expect_code(72);
        assert!(r.stderr.contains(&format!("grant refused: net:[::1]:{other_port}")), "{}", r.stderr);
    }
    // A bare IPv6 address is ambiguous and refused, naming the bracketed form.
    let r = t(h, &["run", "--allow-net", &format!("::1:{port}"), &hostile()]);
    r.expect_code(2);
    assert!(r.stderr.contains(&format!("needs brackets: [::1]:{port}")), "{}", r.stderr);
    let r = t(h, &["token", "mint", "--agent", "hostile", "--grant", &format!("net:::1:{port}")]);
    assert_ne!(r.code, 0);
    drop((listener, other));
}

// ---------------------------------------------------------------------------------------------------------------
// MCP over streamable HTTP.

fn tool_path(name: &str) -> PathBuf {
    root().join("target").join("tools").join(format!("{name}.wasm"))
}

/// A home with a root key and the named tools installed.
fn home_with(tools: &[&str]) -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    t(home.path(), &["key", "init"]).expect_code(0);
    for name in tools {
        t(home.path(), &["tool", "add", tool_path(name).to_str().unwrap()]).expect_code(0);
    }
    home
}

fn mint(home: &Path, agent: &str, grants: &[&str]) -> String {
    let mut args = vec!["token", "mint", "--agent", agent];
    for g in grants {
        args.extend_from_slice(&["--grant", g]);
    }
    let r = t(home, &args);
    r.expect_code(0);
    r.stdout.trim().to_string()
}

/// A running `toka-host mcp --http`; killed (and reaped) when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(home: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(toka_host())
            .args(["mcp", "--http", "127.0.0.1:0"])
            .args(extra)
            .env("TOKA_HOME", home)
            .env("TOKA_CACHE_DIR", shared_cache())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        // The rest of stderr is drained, so that the server never writes into a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        let url = line.trim().strip_prefix("toka-host: serving MCP on http://");
        let addr = url.and_then(|u| u.strip_suffix("/mcp")).and_then(|a| a.parse().ok());
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server did not start: {line}");
        };
        Server { child, addr }
    }

    fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status line and body of one raw HTTP/1.1 `initialize` POST with the given extra headers.
fn raw_post(addr: SocketAddr, headers: &[(&str, &str)]) -> (u16, String) {
    let body = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": { "protocolVersion": "2025-06-18", "capabilities": {},
                    "clientInfo": { "name": "raw", "version": "0" } }
    });
    raw_post_body(addr, headers, &body)
}

/// The status line and body of one raw HTTP/1.1 POST of `body` to /mcp.
fn raw_post_body(addr: SocketAddr, headers: &[(&str, &str)], body: &Value) -> (u16, String) {
    let body = body.to_string();
    let mut request = format!(
        "POST /mcp HTTP/1.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    conn.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    // The server answers an initialize with an SSE stream it may keep open; the head and first event suffice.
    let mut buf = [0u8; 8192];
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&response);
        if let Some((_, body)) = text.split_once("\r\n\r\n")
            && (body.contains("\"error\"") || body.contains("\"result\""))
        {
            break;
        }
        if response.len() > 1 << 20 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status: {text}"));
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, format!("{head}\n\n{body}"))
}

/// The `{"error": ...}` body of a refusal: one line of JSON.
fn error_of(response: &str) -> String {
    let body = response.split_once("\n\n").unwrap().1;
    let body = body.trim();
    // A chunked body: the JSON is the line that is one.
    let line = body.lines().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no JSON body: {response}"));
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    v["error"].as_str().unwrap_or_else(|| panic!("no error: {line}")).to_string()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap()
}

fn client_config(url: &str, token: &str) -> StreamableHttpClientTransportConfig {
    StreamableHttpClientTransportConfig::with_uri(url).auth_header(token)
}

fn args(value: Value) -> serde_json::Map<String, Value> {
    value.as_object().unwrap().clone()
}

/// MCP over HTTP without a good bearer token: missing, signed by another key, or revoked, is refused with 401 and
/// a one-line JSON error; a good token in the same server lists and calls exactly what it and the server grant.
#[test]
fn mcp_http_requires_a_valid_bearer_token() {
    let home = home_with(&["echo", "json-query"]);
    let h = home.path();
    let server = Server::start(h, &["--allow-tool", "echo", "--allow-tool", "json-query"]);
    let good = mint(h, "llm", &["tool:echo"]);
    let revoked = mint(h, "llm", &["tool:echo", "tool:json-query"]);
    t(h, &["token", "revoke", &revoked]).expect_code(0);
    let elsewhere = home_with(&[]);
    let foreign = mint(elsewhere.path(), "llm", &["tool:echo"]);

    // Positive control first, with the raw request the refusals below reuse.
    let bearer = format!("Bearer {good}");
    let (status, response) = raw_post(server.addr, &[("Authorization", &bearer)]);
    assert_eq!(status, 200, "{response}");

    // The session that request opened belongs to its token: another valid token of this home cannot use it.
    let session = response
        .lines()
        .find_map(|l| {
            let l = l.to_ascii_lowercase();
            l.strip_prefix("mcp-session-id: ").map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no session: {response}"));
    let other = format!("Bearer {}", mint(h, "llm", &["tool:echo"]));
    let initialized = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
    let in_session = |bearer: &str| {
        let headers = [("Authorization", bearer), ("Mcp-Session-Id", session.as_str())];
        raw_post_body(server.addr, &[headers[0], headers[1], ("MCP-Protocol-Version", "2025-06-18")], &initialized)
    };
    let (status, response) = in_session(&other);
    assert_eq!(status, 403, "{response}");
    assert!(error_of(&response).contains("opened with another token"), "{response}");
    let (status, response) = in_session(&bearer);
    assert!((200..300).contains(&status), "{response}");

    let (status, response) = raw_post(server.addr, &[]);
    assert_eq!(status, 401, "{response}");
    assert!(response.to_ascii_lowercase().contains("www-authenticate: bearer"), "{response}");
    assert!(error_of(&response).starts_with("missing bearer token"), "{response}");
    for (what, header, expect) in [
        ("another key", format!("Bearer {foreign}"), "token refused"),
        ("revoked", format!("Bearer {revoked}"), "token refused: revoked"),
        ("garbage", "Bearer not-a-token".to_string(), "token refused"),
        ("not bearer", format!("Basic {good}"), "not `Bearer TOKEN`"),
    ] {
        let (status, response) = raw_post(server.addr, &[("Authorization", &header)]);
        assert_eq!(status, 401, "{what}: {response}");
        let error = error_of(&response);
        assert!(error.contains(expect) && !error.contains('\n'), "{what}: {error}");
    }

    let _ = rustls::crypto::ring::default_provider().install_default();
    rt().block_on(async {
        // The official client without a token cannot even initialize.
        let bare = ().serve(StreamableHttpClientTransport::from_uri(server.url())).await;
        assert!(bare.is_err(), "initialized without a token");
        let revoked_client =
            ().serve(StreamableHttpClientTransport::from_config(client_config(&server.url(), &revoked))).await;
        assert!(revoked_client.is_err(), "initialized with a revoked token");

        let client =
            ().serve(StreamableHttpClientTransport::from_config(client_config(&server.url(), &good))).await.unwrap();
        let tools = client.list_all_tools().await.unwrap();
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        assert_eq!(names, ["echo"], "the server serves json-query too, but this token does not grant it");
        let echo =
            client.call_tool(CallToolRequestParams::new("echo").with_arguments(args(json!({ "n": 7 })))).await.unwrap();
        assert_eq!(echo.structured_content.unwrap()["n"], 7);
        let refused = client
            .call_tool(
                CallToolRequestParams::new("json-query")
                    .with_arguments(args(json!({ "document": {"a": 1}, "path": "$.a" }))),
            )
            .await
            .unwrap();
        assert_eq!(refused.is_error, Some(true));
        let text = serde_json::to_string(&refused.content).unwrap();
        assert!(text.contains("grant refused: tool:json-query"), "{text}");
        client.cancel().await.unwrap();
    });
    // The calls ran as the bearer token's agent.
    let called = t(h, &["events", "--json", "--kind", "tool.called"]);
    assert_eq!(called.stdout.lines().count(), 2, "{}", called.stdout);
    assert!(called.stdout.lines().all(|l| l.contains(r#""agent":"llm""#)), "{}", called.stdout);

    // Revoking the good token refuses its next request, on the same running server.
    t(h, &["token", "revoke", &good]).expect_code(0);
    let (status, response) = raw_post(server.addr, &[("Authorization", &bearer)]);
    assert_eq!(status, 401, "{response}");
}

/// DNS rebinding and cross-site requests: a good token with a Host that is not this server's, or an Origin not
/// listed, is refused with 403; the same token with this server's Host (and a listed Origin) passes.
#[test]
fn mcp_http_checks_host_and_origin() {
    let home = home_with(&["echo"]);
    let h = home.path();
    let server = Server::start(h, &["--allow-tool", "echo", "--allow-origin", "http://localhost:3000"]);
    let bearer = format!("Bearer {}", mint(h, "llm", &["tool:echo"]));
    let auth = ("Authorization", bearer.as_str());
    let port = server.addr.port();

    let this = server.addr.to_string();
    let localhost = format!("localhost:{port}");
    for host in [this.as_str(), localhost.as_str()] {
        let (status, response) = raw_post(server.addr, &[auth, ("Host", host)]);
        assert_eq!(status, 200, "{host}: {response}");
    }
    let evil = format!("evil.example:{port}");
    let other_port = format!("127.0.0.1:{}", port.wrapping_add(1).max(1));
    for host in [evil.as_str(), other_port.as_str(), "127.0.0.1"] {
        let (status, response) = raw_post(server.addr, &[auth, ("Host", host)]);
        assert_eq!(status, 403, "{host}: {response}");
        assert!(error_of(&response).contains("is not this server's"), "{response}");
    }
    // Host is checked before the token: a rebinding page learns nothing about tokens.
    let (status, _) = raw_post(server.addr, &[("Host", evil.as_str())]);
    assert_eq!(status, 403);

    let (status, response) = raw_post(server.addr, &[auth, ("Origin", "http://localhost:3000")]);
    assert_eq!(status, 200, "{response}");
    for origin in ["http://evil.example", "http://localhost:3001", "null"] {
        let (status, response) = raw_post(server.addr, &[auth, ("Origin", origin)]);
        assert_eq!(status, 403, "{origin}: {response}");
        assert!(error_of(&response).contains("is not allowed (--allow-origin)"), "{response}");
    }
}

/// A server's own rights: without `--token`, it serves exactly the tools it is told to (and refuses to start with
/// neither a token nor a tool named); HTTP without authentication only on loopback; a wildcard bind must name its
/// host.
#[test]
fn mcp_serves_only_what_the_operator_names() {
    let home = home_with(&["echo", "json-query", "file-reader"]);
    let h = home.path();
    rt().block_on(async {
        let mut cmd = tokio::process::Command::new(toka_host());
        cmd.args(["mcp", "--allow-tool", "echo", "--allow-tool", "json-query"])
            .env("TOKA_HOME", h)
            .env("TOKA_CACHE_DIR", shared_cache());
        let client = ().serve(TokioChildProcess::new(cmd).unwrap()).await.unwrap();
        let tools = client.list_all_tools().await.unwrap();
        let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        names.sort();
        assert_eq!(names, ["echo", "json-query"], "file-reader is installed but not named");
        let refused = client
            .call_tool(CallToolRequestParams::new("file-reader").with_arguments(args(json!({ "path": "/x" }))))
            .await
            .unwrap();
        assert_eq!(refused.is_error, Some(true));
        let ok = client
            .call_tool(CallToolRequestParams::new("echo").with_arguments(args(json!({ "ok": 1 }))))
            .await
            .unwrap();
        assert_eq!(ok.is_error, Some(false));
        client.cancel().await.unwrap();
    });

    let r = t(h, &["mcp"]);
    r.expect_code(77);
    assert!(r.stderr.contains("--allow-tool NAME") && r.stderr.contains("--token"), "{}", r.stderr);
    let r = t(h, &["mcp", "--allow-tool", "nope"]);
    r.expect_code(77);
    assert!(r.stderr.contains("tool nope is not installed"), "{}", r.stderr);
    let r = t(h, &["mcp", "--allow-tool", "echo", "--http", "0.0.0.0:0", "--no-auth"]);
    r.expect_code(77);
    assert!(r.stderr.contains("--no-auth") && r.stderr.contains("loopback"), "{}", r.stderr);
    let r = t(h, &["mcp", "--allow-tool", "echo", "--http", "0.0.0.0:0"]);
    r.expect_code(77);
    assert!(r.stderr.contains("--allow-host"), "{}", r.stderr);

    // --no-auth on loopback: served without a token (the server's own), Host still checked.
    let server = Server::start(h, &["--allow-tool", "echo", "--no-auth"]);
    let (status, response) = raw_post(server.addr, &[]);
    assert_eq!(status, 200, "{response}");
    let (status, _) = raw_post(server.addr, &[("Host", "evil.example")]);
    assert_eq!(status, 403);
}

/// The interval each recorded tool call ran, by call id: from `tool.called` to its end event, in ms.
fn call_intervals(home: &Path) -> Vec<(u64, u64)> {
    let r = t(home, &["events", "--json"]);
    r.expect_code(0);
    let mut start = std::collections::BTreeMap::new();
    let mut intervals = Vec::new();
    for line in r.stdout.lines() {
        let e: Value = serde_json::from_str(line).unwrap();
        let id = e["payload"]["call_id"].as_str().map(str::to_string);
        let time = e["time_ms"].as_u64();
        match (e["kind"].as_str(), id, time) {
            (Some("tool.called"), Some(id), Some(at)) => {
                start.insert(id, at);
            }
            (Some("tool.completed" | "tool.failed"), Some(id), Some(at)) => {
                intervals.push((start.remove(&id).expect("a start for each end"), at));
            }
            _ => {}
        }
    }
    assert!(start.is_empty(), "calls without an end: {start:?}");
    intervals
}

/// The most intervals (half-open) that overlap at one instant.
fn max_overlap(intervals: &[(u64, u64)]) -> usize {
    let mut edges: Vec<(u64, i32)> = intervals.iter().flat_map(|&(a, b)| [(a, 1), (b, -1)]).collect();
    // At equal times an end comes before a start: one call ending as another starts do not overlap.
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    most as usize
}

/// Concurrent MCP calls are capped: of N+3 slow calls at most N run at once (from the recorded intervals), all
/// finish; with a short --max-wait, a call that finds no slot fails as busy instead of piling up.
#[test]
fn mcp_concurrent_calls_are_capped() {
    let home = home_with(&["fail-tool"]);
    let h = home.path();
    const N: usize = 2;
    let texts = rt().block_on(async {
        let mut cmd = tokio::process::Command::new(toka_host());
        // Each call spins until its 1 s deadline: slow, whatever the machine's speed.
        cmd.args(["mcp", "--allow-tool", "fail-tool", "--max-concurrent", "2", "--timeout", "1s"])
            .env("TOKA_HOME", h)
            .env("TOKA_CACHE_DIR", shared_cache());
        let client = ().serve(TokioChildProcess::new(cmd).unwrap()).await.unwrap();
        warm_up(&client).await;
        let calls = (0..N + 3).map(|_| spin(client.peer().clone()));
        let texts: Vec<String> = futures_join_all(calls)
            .await
            .into_iter()
            .map(|r| serde_json::to_string(&r.unwrap().content).unwrap())
            .collect();
        client.cancel().await.unwrap();
        texts
    });
    let intervals = call_intervals(h);
    assert_eq!(intervals.len(), 1 + N + 3);
    let most = max_overlap(&intervals);
    assert!(most <= N, "{most} calls ran at once: {intervals:?} {texts:?}");
    // Positive control: the calls did run concurrently (so the cap, not a serial server, kept them at N).
    assert_eq!(most, N, "{intervals:?}");
    for text in texts {
        // Each ran until its deadline (or, on a fast machine, its fuel): none was refused as busy.
        assert!(text.contains("tool fail-tool: ") && !text.contains("busy"), "{text}");
    }

    let busy_home = home_with(&["fail-tool"]);
    let b = busy_home.path();
    rt().block_on(async {
        let mut cmd = tokio::process::Command::new(toka_host());
        cmd.args(["mcp", "--allow-tool", "fail-tool", "--max-concurrent", "1", "--max-wait", "200ms"])
            .args(["--timeout", "5s"])
            .env("TOKA_HOME", b)
            .env("TOKA_CACHE_DIR", shared_cache());
        let client = ().serve(TokioChildProcess::new(cmd).unwrap()).await.unwrap();
        warm_up(&client).await;
        let calls = (0..2).map(|_| spin(client.peer().clone()));
        let texts: Vec<String> = futures_join_all(calls)
            .await
            .into_iter()
            .map(|r| serde_json::to_string(&r.unwrap().content).unwrap())
            .collect();
        let busy = texts.iter().filter(|t| t.contains("server busy") && t.contains("--max-wait")).count();
        let ran = texts.iter().filter(|t| t.contains("tool fail-tool: ")).count();
        assert_eq!((busy, ran), (1, 1), "{texts:?}");
        client.cancel().await.unwrap();
    });
    assert_eq!(call_intervals(b).len(), 2, "the warm-up and one spin: the busy call never started");
}

/// One quick `fail-tool` call, alone: the server loads (and, on a cold cache, compiles) the tool before the timed
/// calls, so that none of them spends its one second on that.
async fn warm_up(client: &rmcp::service::RunningService<rmcp::RoleClient, ()>) {
    let ok = client
        .call_tool(CallToolRequestParams::new("fail-tool").with_arguments(args(json!({ "mode": "ok" }))))
        .await
        .unwrap();
    assert_eq!(ok.is_error, Some(false), "{ok:?}");
}

/// One `fail-tool` call that spins until its deadline.
async fn spin(
    peer: rmcp::service::Peer<rmcp::RoleClient>,
) -> Result<rmcp::model::CallToolResult, rmcp::service::ServiceError> {
    peer.call_tool(CallToolRequestParams::new("fail-tool").with_arguments(args(json!({ "mode": "spin" })))).await
}

/// Awaits every future (the tests' dependencies have no `futures` crate).
async fn futures_join_all<F: std::future::Future + Send + 'static>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// `mcp --http` and `registry serve` take `serve`'s bounds on connections (`--max-connections`,
/// `--max-connections-per-ip`, `--header-timeout`): one past the bound from one address gets a 503 and is closed at
/// once while another address is served, and a silent client is closed once its time is up (positive control: it is
/// kept until then). Before, both used the process's defaults, with no flag to change them. The flags bound
/// `--http`'s clients, so `mcp` on stdio refuses them.
#[test]
fn mcp_and_the_registry_bound_their_connections_as_serve_does() {
    let home = home_with(&["echo"]);
    let h = home.path();
    let r = t(h, &["mcp", "--allow-tool", "echo", "--max-connections", "4"]);
    r.expect_code(77);
    assert!(r.stderr.contains("bound --http's clients"), "{}", r.stderr);

    let bounds = ["--max-connections-per-ip", "2", "--header-timeout", "2s"];
    let mcp = Server::start(h, &[&["--allow-tool", "echo"][..], &bounds].concat());
    bounded(mcp.addr);
    drop(mcp);

    let dir = tempfile::tempdir().unwrap();
    let mut registry = Command::new(toka_host())
        .args(["registry", "serve", "--addr", "127.0.0.1:0", "--dir", dir.path().to_str().unwrap()])
        .args(bounds)
        .env("TOKA_HOME", h)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(registry.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.split_whitespace().find_map(|w| w.strip_prefix("http://")).and_then(|a| a.parse().ok());
    let result = std::panic::catch_unwind(|| bounded(addr.unwrap_or_else(|| panic!("no address in {line:?}"))));
    let _ = registry.kill();
    let _ = registry.wait();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// Checks the bounds `--max-connections-per-ip 2 --header-timeout 2s` on the server at `server`.
fn bounded(server: SocketAddr) {
    use toka_tests::{connect_from, read_until_closed};
    let held: Vec<TcpStream> = (0..2).map(|_| connect_from("127.0.0.2", server)).collect();
    let mut third = connect_from("127.0.0.2", server);
    write!(third, "GET / HTTP/1.1\r\n").unwrap();
    let refused = read_until_closed(&mut third, Duration::from_secs(5)).expect("the third is answered and closed");
    assert!(refused.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{refused}");
    assert!(refused.contains(r#""code":"too-many-connections""#), "{refused}");
    let mut other = connect_from("127.0.0.3", server);
    write!(other, "GET / HTTP/1.1\r\nHost: {server}\r\nConnection: close\r\n\r\n").unwrap();
    let answer = read_until_closed(&mut other, Duration::from_secs(5)).expect("another address is answered");
    assert!(answer.starts_with("HTTP/1.1 ") && !answer.starts_with("HTTP/1.1 503"), "{answer}");
    let mut first = held[0].try_clone().unwrap();
    assert_eq!(read_until_closed(&mut first, Duration::from_millis(300)), None, "the two are kept");
    for mut idle in held {
        assert!(read_until_closed(&mut idle, Duration::from_secs(6)).is_some(), "closed once its 2 s are up");
    }
}
