//! Plugin packages end to end: a publisher packs and signs real components, another home trusts the publisher and
//! installs from a file, from `toka-host registry serve`, from a mirror that lies, and from Debian's
//! `docker-registry` (OCI), then runs and calls what it installed by name. Every tamper case is refused with its own
//! exit code, next to a positive control in the same setup.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use toka_tests::{Ran, agent, root, shared_cache, toka_host, toka_with};

// The plugin commands' exit codes (README: exit codes).
const MALFORMED: i32 = 86;
const COMPONENT_DIGEST: i32 = 87;
const SIGNATURE: i32 = 88;
const UNKNOWN_PUBLISHER: i32 = 89;
const WRONG_PUBLISHER: i32 = 90;
const REVOKED_PUBLISHER: i32 = 91;
const DOWNGRADE: i32 = 92;
const YANKED: i32 = 93;
const STALE_INDEX: i32 = 94;
const UNSIGNED_INDEX: i32 = 95;
const INDEX_ROLLBACK: i32 = 96;
const POLICY: i32 = 97;
const PACKAGE_DIGEST: i32 = 98;
const TRUNCATED: i32 = 99;
const NOT_CONFIRMED: i32 = 100;
const REMOTE: i32 = 102;
const TOKEN_REFUSED: i32 = 78;

fn t(home: &Path, args: &[&str]) -> Ran {
    toka_with(args, None, &[("TOKA_HOME", home.to_str().unwrap())])
}

fn tool(name: &str) -> PathBuf {
    let p = root().join("target").join("tools").join(format!("{name}.wasm"));
    assert!(p.exists(), "{} is missing: cargo run --release -p xtask -- build-agents", p.display());
    p
}

/// Makes `home` a publisher named `name`; its public key.
fn publisher(home: &Path, name: &str) -> String {
    t(home, &["publisher", "init", "--name", name]).expect_code(0);
    let show = t(home, &["publisher", "show", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&show.stdout).unwrap();
    v["public_key"].as_str().unwrap().to_string()
}

/// Packs and signs `component` in `home`, into `out`, with extra `pack` flags.
fn pack(home: &Path, component: &Path, out: &Path, extra: &[&str]) -> PathBuf {
    let mut args = vec!["plugin", "pack", component.to_str().unwrap(), "--sign", "--license", "Apache-2.0"];
    args.extend_from_slice(&["--out", out.to_str().unwrap()]);
    args.extend_from_slice(extra);
    t(home, &args).expect_code(0);
    out.to_path_buf()
}

/// The byte ranges of a package file's manifest and component (see docs/package-format.md).
fn sections(bytes: &[u8]) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
    let u32_at = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let m = u32_at(12);
    let manifest = 16..16 + m;
    let s = u32_at(manifest.end);
    let c_at = manifest.end + 4 + s;
    let c = u64::from_be_bytes(bytes[c_at..c_at + 8].try_into().unwrap()) as usize;
    (manifest, c_at + 8..c_at + 8 + c)
}

/// One temp dir with a home per role.
struct World {
    tmp: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        World { tmp: tempfile::tempdir().unwrap() }
    }
    fn home(&self, name: &str) -> PathBuf {
        let p = self.tmp.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
    fn file(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

#[test]
fn the_first_versions_golden_package_still_reads_and_verifies() {
    let fixtures = root().join("tests").join("fixtures");
    let golden = fixtures.join("golden-1.0.0.tokapkg");
    let public = std::fs::read_to_string(fixtures.join("golden-publisher.pub")).unwrap();
    let w = World::new();
    let home = w.home("reader");
    let inspect = t(&home, &["plugin", "inspect", "--json", golden.to_str().unwrap()]);
    inspect.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&inspect.stdout).unwrap();
    assert_eq!(v["manifest"]["name"], "golden");
    assert_eq!(v["manifest"]["version"], "1.0.0");
    assert_eq!(v["manifest"]["kind"], "agent");
    assert_eq!(v["manifest"]["publisher"]["name"], "golden-publisher");
    assert_eq!(v["manifest"]["grants"], serde_json::json!(["env:LANG", "net:*:443"]));
    assert!(v["verifies_here"].as_str().unwrap().starts_with("unknown publisher"), "{}", v["verifies_here"]);
    // Trusted, it verifies (signature over the manifest's exact bytes, component digest).
    t(&home, &["trust", "add", "golden-publisher", public.trim()]).expect_code(0);
    let ok = t(&home, &["plugin", "verify", golden.to_str().unwrap()]);
    ok.expect_code(0);
    assert!(ok.stdout.starts_with("ok: golden@1.0.0 (agent) signed by golden-publisher"), "{}", ok.stdout);
    // The same file with one manifest byte changed no longer does: the check is not vacuous.
    let mut bytes = std::fs::read(&golden).unwrap();
    let (manifest, _) = sections(&bytes);
    let at = manifest.start + bytes[manifest.clone()].windows(6).position(|w| w == b"golden").unwrap();
    bytes[at] = b'G';
    let changed = w.file("changed.tokapkg");
    std::fs::write(&changed, &bytes).unwrap();
    let refused = t(&home, &["plugin", "verify", changed.to_str().unwrap()]);
    refused.expect_code(MALFORMED);
    assert!(refused.stderr.contains("invalid package name"), "{}", refused.stderr);
}

#[test]
fn a_signed_tool_installs_on_another_home_and_is_called_by_name() {
    let w = World::new();
    let (alice, user) = (w.home("alice"), w.home("user"));
    let public = publisher(&alice, "alice");
    let pkg = pack(&alice, &tool("echo"), &w.file("echo.tokapkg"), &["--keyword", "text"]);
    let inspect = t(&alice, &["plugin", "inspect", pkg.to_str().unwrap()]);
    assert!(inspect.stdout.contains("package:     echo@1.0.0 (tool)"), "{}", inspect.stdout);

    // Not trusted yet: refused, and nothing is installed.
    t(&user, &["plugin", "install", "--yes", pkg.to_str().unwrap()]).expect_code(UNKNOWN_PUBLISHER);
    t(&user, &["tool", "call", "echo", "--input", "{}"]).expect_code(76);

    t(&user, &["trust", "add", "alice", &public]).expect_code(0);
    let installed = t(&user, &["plugin", "install", "--yes", pkg.to_str().unwrap()]);
    installed.expect_code(0);
    assert!(installed.stdout.starts_with("installed echo@1.0.0 (tool)"), "{}", installed.stdout);
    assert!(installed.stderr.contains("asks for: no grants"), "{}", installed.stderr);
    let call = t(&user, &["tool", "call", "echo", "--input", r#"{"hello":"market"}"#]);
    call.expect_code(0);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&call.stdout).unwrap()["hello"], "market");
    let list: serde_json::Value = serde_json::from_str(&t(&user, &["plugin", "list", "--json"]).stdout).unwrap();
    assert_eq!(list[0]["name"], "echo");
    assert_eq!(list[0]["publisher"], "alice");
    let sha = list[0]["sha256"].as_str().unwrap();
    assert!(user.join("plugins/blobs").join(format!("{sha}.wasm")).is_file(), "installed by digest");
    // Installing it again changes nothing.
    let again = t(&user, &["plugin", "install", "--yes", pkg.to_str().unwrap()]);
    assert!(again.stdout.contains("already installed"), "{}", again.stdout);

    // Removing the publisher from trust stops the installed tool too.
    t(&user, &["trust", "remove", "alice"]).expect_code(0);
    let stopped = t(&user, &["tool", "call", "echo", "--input", "{}"]);
    assert_ne!(stopped.code, 0);
    assert!(stopped.stderr.contains("revoked publisher key"), "{}", stopped.stderr);
    t(&user, &["plugin", "remove", "echo"]).expect_code(0);
    t(&user, &["tool", "call", "echo", "--input", "{}"]).expect_code(76);

    // Every change to what this home runs is in its log, in order (the refused and the repeated install are not),
    // and the log still verifies.
    let events = t(&user, &["events", "--json"]);
    let changes: Vec<(String, String)> = events
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["kind"].as_str().is_some_and(|k| k.starts_with("plugin.") || k.starts_with("trust.")))
        .map(|e| (e["kind"].as_str().unwrap().to_string(), e["payload"]["subject"].as_str().unwrap().to_string()))
        .collect();
    let expected = [
        ("trust.added", "alice"),
        ("plugin.installed", "echo@1.0.0"),
        ("trust.removed", "alice"),
        ("plugin.removed", "echo@1.0.0"),
    ];
    assert_eq!(changes, expected.map(|(k, s)| (k.to_string(), s.to_string())), "{}", events.stdout);
    t(&user, &["events", "verify"]).expect_code(0);
}

#[test]
fn every_package_tamper_case_is_refused_with_its_own_code() {
    let w = World::new();
    let alice = w.home("alice");
    let public = publisher(&alice, "alice");
    let good = pack(&alice, &tool("echo"), &w.file("good.tokapkg"), &[]);
    let bytes = std::fs::read(&good).unwrap();
    let (manifest, component) = sections(&bytes);
    let fresh = |name: &str| {
        let h = w.home(name);
        t(&h, &["trust", "add", "alice", &public]).expect_code(0);
        h
    };
    let install = |home: &Path, pkg: &Path| t(home, &["plugin", "install", "--yes", pkg.to_str().unwrap()]);
    let write = |name: &str, b: &[u8]| {
        let p = w.file(name);
        std::fs::write(&p, b).unwrap();
        p
    };

    // Positive control: the untouched package installs.
    install(&fresh("control"), &good).expect_code(0);

    // A component changed under its intact signed manifest.
    let mut b = bytes.clone();
    b[component.start + component.len() / 2] ^= 0x01;
    let r = install(&fresh("c1"), &write("component.tokapkg", &b));
    r.expect_code(COMPONENT_DIGEST);
    assert!(r.stderr.starts_with("toka-host: tampered component:"), "{}", r.stderr);

    // A manifest changed after signing (a version bumped in place, still valid JSON).
    let mut b = bytes.clone();
    let at = manifest.start + b[manifest.clone()].windows(5).position(|w| w == b"1.0.0").unwrap();
    b[at] = b'9';
    let r = install(&fresh("c2"), &write("manifest.tokapkg", &b));
    r.expect_code(SIGNATURE);
    assert!(r.stderr.starts_with("toka-host: bad signature:"), "{}", r.stderr);

    // Truncated anywhere: malformed, never half-read.
    let r = install(&fresh("c3"), &write("short.tokapkg", &bytes[..bytes.len() - 1]));
    r.expect_code(MALFORMED);

    // An unsigned package.
    let unsigned = w.file("unsigned.tokapkg");
    t(&alice, &["plugin", "pack", tool("echo").to_str().unwrap(), "--out", unsigned.to_str().unwrap()]).expect_code(0);
    install(&fresh("c4"), &unsigned).expect_code(SIGNATURE);

    // Mallory's key, trusted here as mallory, signs a package that claims to be alice's.
    let mallory = w.home("mallory");
    let mallory_public = publisher(&mallory, "alice");
    let forged = pack(&mallory, &tool("echo"), &w.file("forged.tokapkg"), &[]);
    let h = fresh("c5");
    install(&h, &forged).expect_code(UNKNOWN_PUBLISHER);
    t(&h, &["trust", "add", "mallory", &mallory_public]).expect_code(0);
    let r = install(&h, &forged);
    r.expect_code(WRONG_PUBLISHER);
    assert!(r.stderr.contains("claims publisher alice but is signed by the key of mallory"), "{}", r.stderr);

    // A revoked publisher key: refused, and cannot be trusted again.
    let h = fresh("c6");
    t(&h, &["trust", "remove", "alice"]).expect_code(0);
    install(&h, &good).expect_code(REVOKED_PUBLISHER);
    t(&h, &["trust", "add", "alice", &public]).expect_code(REVOKED_PUBLISHER);

    // A downgrade, refused unless asked for; a version is immutable.
    let newer = pack(&alice, &tool("echo"), &w.file("newer.tokapkg"), &["--version", "1.1.0"]);
    let h = fresh("c7");
    install(&h, &newer).expect_code(0);
    let r = install(&h, &good);
    r.expect_code(DOWNGRADE);
    assert!(r.stderr.contains("echo 1.1.0 is installed; 1.0.0 is older"), "{}", r.stderr);
    let other_bytes =
        pack(&alice, &tool("json-query"), &w.file("same-version.tokapkg"), &["--name", "echo", "--version", "1.1.0"]);
    install(&h, &other_bytes).expect_code(DOWNGRADE);
    t(&h, &["plugin", "install", "--yes", "--allow-downgrade", good.to_str().unwrap()]).expect_code(0);
    let info: serde_json::Value = serde_json::from_str(&t(&h, &["plugin", "info", "--json", "echo"]).stdout).unwrap();
    assert_eq!(info["version"], "1.0.0");

    // A package asking for what the home's policy forbids; the same home installs one that does not ask.
    let asks_net = pack(&alice, &tool("echo"), &w.file("net.tokapkg"), &["--grant", "net:*:443"]);
    let h = fresh("c8");
    t(&h, &["trust", "policy", "--deny", "net"]).expect_code(0);
    let r = install(&h, &asks_net);
    r.expect_code(POLICY);
    assert!(r.stderr.contains("asks for `net:*:443`"), "{}", r.stderr);
    install(&h, &good).expect_code(0);

    // Without --yes and without a terminal, nothing is installed: consent is not assumed.
    let h = fresh("c9");
    let r = t(&h, &["plugin", "install", good.to_str().unwrap()]);
    r.expect_code(NOT_CONFIRMED);
    assert!(r.stderr.contains("asks for: no grants"), "{}", r.stderr);
    assert!(t(&h, &["plugin", "list", "--json"]).stdout.trim() == "[]");
}

#[test]
fn an_installed_agent_runs_by_name_and_a_bound_token_runs_only_that_publishers_package() {
    let w = World::new();
    let (alice, bob, user) = (w.home("alice"), w.home("bob"), w.home("user"));
    let alice_key = publisher(&alice, "alice");
    let bob_key = publisher(&bob, "bob");
    let flags = ["--name", "hello", "--version", "1.0.0", "--description", "greets"];
    let from_alice = pack(&alice, &agent("hello-rust"), &w.file("alice-hello.tokapkg"), &flags);
    let from_bob = pack(&bob, &agent("hello-rust"), &w.file("bob-hello.tokapkg"), &flags);
    for (name, key) in [("alice", &alice_key), ("bob", &bob_key)] {
        t(&user, &["trust", "add", name, key]).expect_code(0);
    }
    t(&user, &["plugin", "install", "--yes", from_alice.to_str().unwrap()]).expect_code(0);
    let run = t(&user, &["run", "hello", "--input", r#"{"name":"market"}"#]);
    run.expect_code(0);
    let file_run = t(&user, &["run", agent("hello-rust").to_str().unwrap(), "--input", r#"{"name":"market"}"#]);
    assert_eq!(run.stdout, file_run.stdout, "the installed agent is the same component");

    // A token bound to alice's `hello` runs it ...
    let token = t(&user, &["token", "mint", "--plugin", "hello", "--ttl", "10m"]);
    token.expect_code(0);
    let token = token.stdout.trim().to_string();
    let inspect = t(&user, &["token", "inspect", &token]);
    assert!(inspect.stdout.contains("bound to:     "), "{}", inspect.stdout);
    t(&user, &["run", "hello", "--token", &token]).expect_code(0);
    // ... not a file of the same agent name ...
    let copy = w.file("hello.wasm");
    std::fs::copy(agent("hello-rust"), &copy).unwrap();
    let r = t(&user, &["run", copy.to_str().unwrap(), "--token", &token]);
    r.expect_code(TOKEN_REFUSED);
    assert!(r.stderr.contains("bound to another installed package"), "{}", r.stderr);
    // ... nor bob's package of the same name.
    t(&user, &["plugin", "remove", "hello"]).expect_code(0);
    t(&user, &["plugin", "install", "--yes", from_bob.to_str().unwrap()]).expect_code(0);
    t(&user, &["run", "hello", "--token", &token]).expect_code(TOKEN_REFUSED);
    // An unbound token for the agent `hello` runs bob's package: the binding is what refused it.
    let unbound = t(&user, &["token", "mint", "--agent", "hello", "--ttl", "10m"]).stdout.trim().to_string();
    t(&user, &["run", "hello", "--token", &unbound]).expect_code(0);

    // Removing bob from trust stops his installed agent.
    t(&user, &["trust", "remove", "bob"]).expect_code(0);
    let r = t(&user, &["run", "hello"]);
    r.expect_code(REVOKED_PUBLISHER);
}

/// A `toka-host registry serve` process.
struct RegistryServer {
    child: Child,
    url: String,
    key: String,
    home: PathBuf,
}

impl RegistryServer {
    fn start(home: &Path, dir: &Path) -> RegistryServer {
        let mut child = Command::new(toka_host())
            .args(["registry", "serve", "--addr", "127.0.0.1:0", "--name", "test-registry", "--dir"])
            .arg(dir)
            .env("TOKA_HOME", home)
            .env("TOKA_CACHE_DIR", shared_cache())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = line.split_whitespace().find(|w| w.starts_with("http://")).expect("address").to_string();
        let key = line.split("(key ").nth(1).expect("key").trim_end().trim_end_matches(')').to_string();
        let mut stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            drop(stderr.read_to_end(&mut sink));
        });
        RegistryServer { child, url, key, home: home.to_path_buf() }
    }

    fn token(&self, grant: &str) -> String {
        let r = t(&self.home, &["token", "mint", "--agent", "publisher", "--grant", grant, "--ttl", "10m"]);
        r.expect_code(0);
        r.stdout.trim().to_string()
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        drop(self.child.kill());
        drop(self.child.wait());
    }
}

fn get(url: &str) -> Vec<u8> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let r = client.get(url).send().unwrap();
    assert!(r.status().is_success(), "{url}: {}", r.status());
    r.bytes().unwrap().to_vec()
}

/// What a mirror answers for one request: a status, a body, and how many of its bytes to send before closing the
/// connection (the `Content-Length` always announces the whole body).
struct Reply {
    status: u16,
    body: Vec<u8>,
    send: usize,
}

impl Reply {
    fn ok(body: Vec<u8>) -> Reply {
        let send = body.len();
        Reply { status: 200, body, send }
    }
}

/// A mirror: a plain HTTP server (the test's own) that answers each GET with what `answer(path, range_start)` says.
struct Mirror {
    url: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Mirror {
    fn start(answer: impl Fn(&str, Option<usize>) -> Reply + Send + Sync + 'static) -> Mirror {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let answer = Arc::new(answer);
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::SeqCst) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let answer = answer.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut request = String::new();
                    if reader.read_line(&mut request).is_err() {
                        return;
                    }
                    let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let mut range = None;
                    for _ in 0..100 {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                            range = v.trim().trim_end_matches('-').parse().ok();
                        }
                    }
                    let reply = answer(&path, range);
                    let reason = if reply.status == 200 { "OK" } else { "Other" };
                    let head = format!(
                        "HTTP/1.1 {} {reason}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                        reply.status,
                        reply.body.len()
                    );
                    drop(conn.write_all(head.as_bytes()));
                    drop(conn.write_all(&reply.body[..reply.send.min(reply.body.len())]));
                    drop(conn.flush());
                    drop(conn.shutdown(std::net::Shutdown::Both));
                });
            }
        });
        Mirror { url, stop, thread: Some(thread) }
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            drop(t.join());
        }
    }
}

#[test]
fn publish_search_install_yank_through_the_registry_and_a_lying_mirror_is_refused() {
    let w = World::new();
    let (operator, alice, user) = (w.home("operator"), w.home("alice"), w.home("user"));
    t(&operator, &["key", "init"]).expect_code(0);
    let registry = RegistryServer::start(&operator, &w.home("registry-data"));
    let alice_key = publisher(&alice, "alice");
    t(&alice, &["registry", "add", "main", &registry.url, "--key", &registry.key]).expect_code(0);
    let v1 =
        pack(&alice, &tool("echo"), &w.file("echo-1.0.0.tokapkg"), &["--keyword", "text", "--description", "echoes"]);
    let v2 =
        pack(&alice, &tool("echo"), &w.file("echo-1.1.0.tokapkg"), &["--version", "1.1.0", "--description", "echoes"]);

    // Publishing needs a token for that name (positive control: the right token publishes).
    let publish = |pkg: &Path, token: &str| t(&alice, &["plugin", "publish", pkg.to_str().unwrap(), "--token", token]);
    let r = publish(&v1, &registry.token("publish:other"));
    r.expect_code(REMOTE);
    assert!(r.stderr.contains("does not allow publish:echo"), "{}", r.stderr);
    let token = registry.token("publish:echo");
    publish(&v1, &token).expect_code(0);
    publish(&v1, &token).expect_code(REMOTE); // a version never changes
    // Another publisher cannot take the name, even with a publish:* token.
    let mallory = w.home("mallory");
    publisher(&mallory, "mallory");
    t(&mallory, &["registry", "add", "main", &registry.url, "--key", &registry.key]).expect_code(0);
    let squat = pack(&mallory, &tool("echo"), &w.file("squat.tokapkg"), &["--version", "9.0.0"]);
    let r = t(&mallory, &["plugin", "publish", squat.to_str().unwrap(), "--token", &registry.token("publish:*")]);
    r.expect_code(REMOTE);
    assert!(r.stderr.contains("belongs to publisher alice"), "{}", r.stderr);

    // Another home: search, install by name, call by name.
    t(&user, &["registry", "add", "main", &registry.url, "--key", &registry.key]).expect_code(0);
    t(&user, &["trust", "add", "alice", &alice_key]).expect_code(0);
    let search = t(&user, &["plugin", "search", "echo"]);
    search.expect_code(0);
    assert!(
        search.stdout.contains("echo") && search.stdout.contains("1.0.0") && search.stdout.contains("alice"),
        "{}",
        search.stdout
    );
    assert!(t(&user, &["plugin", "search", "nothing-like-it"]).stdout.contains("no package"));
    assert!(t(&user, &["plugin", "search", "text", "--kind", "tool", "--json"]).stdout.contains("\"echo\""));
    t(&user, &["plugin", "install", "--yes", "echo"]).expect_code(0);
    t(&user, &["tool", "call", "echo", "--input", r#"{"via":"registry"}"#]).expect_code(0);
    let index_v1 = get(&format!("{}/v1/index", registry.url));

    // 1.1.0 is published, then yanked: an exact request is refused as yanked, the default picks 1.0.0.
    publish(&v2, &token).expect_code(0);
    let index_v2 = get(&format!("{}/v1/index", registry.url));
    t(&user, &["plugin", "upgrade", "--yes"]).expect_code(0);
    let info: serde_json::Value =
        serde_json::from_str(&t(&user, &["plugin", "info", "--json", "echo"]).stdout).unwrap();
    assert_eq!(info["version"], "1.1.0", "upgraded from the registry");
    t(&alice, &["plugin", "yank", "echo@1.1.0", "--token", &token]).expect_code(0);
    let fresh = w.home("fresh");
    t(&fresh, &["registry", "add", "main", &registry.url, "--key", &registry.key]).expect_code(0);
    t(&fresh, &["trust", "add", "alice", &alice_key]).expect_code(0);
    let r = t(&fresh, &["plugin", "install", "--yes", "echo@=1.1.0"]);
    r.expect_code(YANKED);
    assert!(r.stderr.contains("echo@1.1.0 is yanked"), "{}", r.stderr);
    t(&fresh, &["plugin", "install", "--yes", "echo"]).expect_code(0);
    let info: serde_json::Value =
        serde_json::from_str(&t(&fresh, &["plugin", "info", "--json", "echo"]).stdout).unwrap();
    assert_eq!(info["version"], "1.0.0");

    // Mirrors, each serving the registry's real bytes except where it lies; the live registry is the control.
    let package_v1 = get(&format!("{}/v1/packages/echo/1.0.0", registry.url));
    let current = get(&format!("{}/v1/index", registry.url));
    let via = |name: &str, mirror: &Mirror| {
        let h = w.home(name);
        t(&h, &["registry", "add", "mirror", &mirror.url, "--key", &registry.key]).expect_code(0);
        t(&h, &["trust", "add", "alice", &alice_key]).expect_code(0);
        h
    };
    // A mirror serving `index` and `package`, sending `send(attempt)` bytes of each download; it resumes from a
    // `Range` only when `resumes`, else it starts again from the first byte (a clean retry).
    type Cut = Box<dyn Fn(usize) -> usize + Send + Sync>;
    let serving = |index: Vec<u8>, package: Vec<u8>, send: Cut, resumes: bool| {
        let attempts = AtomicUsize::new(0);
        Mirror::start(move |path, range| {
            if path == "/v1/index" {
                return Reply::ok(index.clone());
            }
            let n = attempts.fetch_add(1, Ordering::SeqCst);
            let start = range.filter(|_| resumes);
            let mut reply = Reply::ok(package[start.unwrap_or(0).min(package.len())..].to_vec());
            reply.send = send(n).min(reply.body.len());
            if start.is_some() {
                reply.status = 206;
            }
            reply
        })
    };
    let whole = || -> Cut { Box::new(|_| usize::MAX) };

    // A rollback: a home that saw index version 2 is then served version 1 (from before 1.1.0), as by a mirror that
    // went bad. The control: a home that never saw a newer index accepts version 1.
    let newer = serving(index_v2.clone(), package_v1.clone(), whole(), true);
    let old = serving(index_v1.clone(), package_v1.clone(), whole(), true);
    let h = via("rollback", &newer);
    t(&h, &["plugin", "search", "echo"]).expect_code(0);
    let path = h.join("registries.json");
    let text = std::fs::read_to_string(&path).unwrap().replace(&newer.url, &old.url);
    std::fs::write(&path, text).unwrap();
    let r = t(&h, &["plugin", "install", "--yes", "echo"]);
    r.expect_code(INDEX_ROLLBACK);
    assert!(r.stderr.contains("older than version 2 already seen"), "{}", r.stderr);
    t(&via("rollback-control", &old), &["plugin", "install", "--yes", "echo"]).expect_code(0);

    // A stale index: signed more than --max-index-age ago.
    let stale_mirror = serving(current.clone(), package_v1.clone(), whole(), true);
    let h = via("stale", &stale_mirror);
    std::thread::sleep(Duration::from_millis(1500));
    let r = t(&h, &["plugin", "install", "--yes", "--max-index-age", "1s", "echo"]);
    r.expect_code(STALE_INDEX);
    t(&h, &["plugin", "install", "--yes", "--max-index-age", "1h", "echo"]).expect_code(0);

    // An unsigned (or re-signed by another key) index: one that hides the yank.
    let mut env: serde_json::Value = serde_json::from_slice(&current).unwrap();
    let index_text = {
        use base64::Engine;
        let b = base64::engine::general_purpose::STANDARD.decode(env["index"].as_str().unwrap()).unwrap();
        String::from_utf8(b).unwrap().replace("\"yanked\":true", "\"yanked\":false")
    };
    env["index"] = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(index_text.as_bytes()).into()
    };
    let lying = serving(env.to_string().into_bytes(), package_v1.clone(), whole(), true);
    let h = via("unsigned", &lying);
    let r = t(&h, &["plugin", "install", "--yes", "echo"]);
    r.expect_code(UNSIGNED_INDEX);
    assert!(r.stderr.contains("does not verify with the registry key"), "{}", r.stderr);
    env["signature"] = "".into();
    let unsigned = serving(env.to_string().into_bytes(), package_v1.clone(), whole(), true);
    let h = via("unsigned2", &unsigned);
    t(&h, &["plugin", "install", "--yes", "echo"]).expect_code(UNSIGNED_INDEX);

    // A download cut short every time (by a server that cannot resume): truncated after the retries. Cut short
    // once by a server that resumes: resumed with a Range request, installed.
    let cut = package_v1.len() / 3;
    let cutting = serving(current.clone(), package_v1.clone(), Box::new(move |_| cut), false);
    let h = via("truncated", &cutting);
    let r = t(&h, &["plugin", "install", "--yes", "echo"]);
    r.expect_code(TRUNCATED);
    assert!(r.stderr.contains("after 3 attempts"), "{}", r.stderr);
    let once: Cut = Box::new(move |n| if n == 0 { cut } else { usize::MAX });
    let resuming = serving(current.clone(), package_v1.clone(), once, true);
    let h = via("resumed", &resuming);
    let r = t(&h, &["plugin", "install", "--yes", "echo"]);
    r.expect_code(0);
    assert!(r.stderr.contains("retrying"), "{}", r.stderr);

    // A package whose bytes are not the ones the signed index names.
    let mut other = package_v1.clone();
    let last = other.len() - 1;
    other[last] ^= 1;
    let swapped = serving(current.clone(), other, whole(), true);
    let h = via("digest", &swapped);
    let r = t(&h, &["plugin", "install", "--yes", "echo"]);
    r.expect_code(PACKAGE_DIGEST);
    assert!(r.stderr.contains("the signed index gives"), "{}", r.stderr);
}

/// Debian's `docker-registry` (CNCF distribution), as this test's own process on loopback with its own storage.
struct OciRegistry {
    child: Child,
    addr: String,
    storage: PathBuf,
    _dir: tempfile::TempDir,
}

impl OciRegistry {
    fn start() -> OciRegistry {
        let bin = Path::new("/usr/bin/docker-registry");
        assert!(
            bin.exists(),
            "docker-registry is missing: run scripts/setup-toolchains (Debian package docker-registry)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let storage = dir.path().join("storage");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                storage.display()
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = format!("127.0.0.1:{port}");
        let mut registry = OciRegistry { child, addr, storage, _dir: dir };
        let ready = toka_tests::wait_for(Duration::from_secs(20), || {
            std::net::TcpStream::connect(&registry.addr).ok().map(drop)
        });
        if ready.is_none() {
            drop(registry.child.kill());
            panic!("docker-registry did not start on {}", registry.addr);
        }
        registry
    }
}

impl Drop for OciRegistry {
    fn drop(&mut self) {
        drop(self.child.kill());
        drop(self.child.wait());
    }
}

#[test]
fn push_and_pull_through_an_oci_registry_and_a_tampered_blob_is_refused() {
    let oci = OciRegistry::start();
    let w = World::new();
    let (alice, user) = (w.home("alice"), w.home("user"));
    let public = publisher(&alice, "alice");
    let pkg = pack(&alice, &tool("echo"), &w.file("echo.tokapkg"), &["--description", "echoes"]);
    let target = format!("oci://{}/toka/echo:1.0.0", oci.addr);
    let pushed = t(&alice, &["plugin", "push", pkg.to_str().unwrap(), &target]);
    pushed.expect_code(0);
    assert!(pushed.stdout.contains("(manifest sha256:"), "{}", pushed.stdout);

    // Standard tools read it (when skopeo is installed: scripts/setup-toolchains installs it).
    if Path::new("/usr/bin/skopeo").exists() {
        let out = Command::new("/usr/bin/skopeo")
            .args(["inspect", "--raw", "--tls-verify=false", &format!("docker://{}/toka/echo:1.0.0", oci.addr)])
            .output()
            .unwrap();
        assert!(out.status.success(), "skopeo: {}", String::from_utf8_lossy(&out.stderr));
        let manifest: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(manifest["config"]["mediaType"], "application/vnd.wasm.config.v0+json");
        assert_eq!(manifest["layers"][0]["mediaType"], "application/wasm");
        assert_eq!(manifest["layers"][1]["mediaType"], "application/vnd.toka.package.manifest.v1+json");
        assert_eq!(manifest["annotations"]["org.opencontainers.image.version"], "1.0.0");
    }

    // Another home pulls and installs it by reference, and calls it by name.
    t(&user, &["plugin", "install", "--yes", &target]).expect_code(UNKNOWN_PUBLISHER);
    t(&user, &["trust", "add", "alice", &public]).expect_code(0);
    t(&user, &["plugin", "install", "--yes", &target]).expect_code(0);
    let call = t(&user, &["tool", "call", "echo", "--input", r#"{"via":"oci"}"#]);
    call.expect_code(0);
    assert!(call.stdout.contains("oci"), "{}", call.stdout);
    let pulled = w.file("pulled.tokapkg");
    t(&user, &["plugin", "pull", &target, "--out", pulled.to_str().unwrap()]).expect_code(0);
    t(&user, &["plugin", "verify", pulled.to_str().unwrap()]).expect_code(0);

    // The registry's stored component blob changed on disk: the pull refuses the blob that does not match its digest.
    let component_sha = {
        let v: serde_json::Value =
            serde_json::from_str(&t(&user, &["plugin", "inspect", "--json", pulled.to_str().unwrap()]).stdout).unwrap();
        v["manifest"]["component"]["sha256"].as_str().unwrap().to_string()
    };
    let blob =
        oci.storage.join(format!("docker/registry/v2/blobs/sha256/{}/{component_sha}/data", &component_sha[..2]));
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&blob, &bytes).unwrap();
    let h = w.home("after-tamper");
    t(&h, &["trust", "add", "alice", &public]).expect_code(0);
    let r = t(&h, &["plugin", "install", "--yes", &target]);
    r.expect_code(PACKAGE_DIGEST);
    assert!(r.stderr.contains("not the digest its OCI manifest gives"), "{}", r.stderr);
}

/// Through the service's API an installed agent package runs by name (`{"component":{"plugin":"hello"}}`), checked
/// as a local run of it is: a token bound to the package runs it but not an upload of the same agent name. Once its
/// publisher leaves trust, the same server (no restart) refuses the agent package (403 `plugin-refused`) and the
/// publisher's tool package, even though that tool was already loaded and cached by an earlier call.
#[test]
fn the_service_runs_installed_packages_until_their_publisher_leaves_trust() {
    use serde_json::json;
    let w = World::new();
    let alice = w.home("alice");
    let key = publisher(&alice, "alice");
    let flags = ["--name", "hello", "--version", "1.0.0", "--description", "greets"];
    let package = pack(&alice, &agent("hello-rust"), &w.file("alice-hello.tokapkg"), &flags);
    let user = tempfile::tempdir().unwrap();
    t(user.path(), &["key", "init"]).expect_code(0);
    t(user.path(), &["trust", "add", "alice", &key]).expect_code(0);
    t(user.path(), &["plugin", "install", "--yes", package.to_str().unwrap()]).expect_code(0);
    let echo = pack(&alice, &tool("echo"), &w.file("echo.tokapkg"), &[]);
    t(user.path(), &["plugin", "install", "--yes", echo.to_str().unwrap()]).expect_code(0);
    let s = crate::service::Server::start_in(user, &[]);
    let caller = s.mint(&["--agent", "*", "--grant", "tool:echo", "--ttl", "10m"]);
    let call = || s.post("/v1/tools/echo/call", Some(&caller), &json!({ "input": { "hi": 1 } })).1;
    let first = call();
    assert_eq!((first["outcome"].as_str(), &first["output"]["hi"]), (Some("success"), &json!(1)), "{first}");
    let bound = s.mint(&["--plugin", "hello", "--ttl", "10m"]);
    let by_name = json!({ "component": { "plugin": "hello" }, "input": { "name": "market" }, "wait": true });
    let (status, body) = s.post("/v1/runs", Some(&bound), &by_name);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["report"]["result"], r#"{"greeting":"Hello, market!"}"#, "{body}");
    // The bound token runs only the package: the same bytes uploaded as agent `hello` are refused.
    use base64::Engine;
    let bytes = std::fs::read(agent("hello-rust")).unwrap();
    let upload = json!({ "component": { "upload": { "name": "hello",
        "wasm_base64": base64::engine::general_purpose::STANDARD.encode(bytes) } }, "wait": true });
    let (status, body) = s.post("/v1/runs", Some(&bound), &upload);
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("token-refused")), "{body}");
    // A name that is not installed.
    let missing = json!({ "component": { "plugin": "nope" }, "wait": true });
    let (status, body) = s.post("/v1/runs", Some(&bound), &missing);
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not-found")), "{body}");
    // The publisher leaves trust: the running server refuses the package from the next request on.
    t(s.home(), &["trust", "remove", "alice"]).expect_code(0);
    let (status, body) = s.post("/v1/runs", Some(&bound), &by_name);
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("plugin-refused")), "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("revoked publisher key")), "{body}");
    let stopped = call();
    assert_eq!(stopped["outcome"], "grant-refused", "{stopped}");
    assert!(stopped["error"].as_str().is_some_and(|m| m.contains("revoked publisher key")), "{stopped}");
}

/// Installing a package never replaces a tool of the same name installed another way: every token that grants
/// `tool:NAME` would silently run the publisher's code instead.
#[test]
fn a_package_does_not_replace_a_tool_installed_another_way() {
    let w = World::new();
    let (alice, user) = (w.home("alice"), w.home("user"));
    let public = publisher(&alice, "alice");
    let pkg = pack(&alice, &tool("echo"), &w.file("echo.tokapkg"), &[]);
    t(&user, &["trust", "add", "alice", &public]).expect_code(0);
    t(&user, &["tool", "add", tool("fail-tool").to_str().unwrap(), "--name", "echo"]).expect_code(0);
    let r = t(&user, &["plugin", "install", "--yes", pkg.to_str().unwrap()]);
    r.expect_code(WRONG_PUBLISHER);
    assert!(r.stderr.contains("a tool named echo is already installed here (by `toka-host tool add`)"), "{}", r.stderr);
    let list: serde_json::Value = serde_json::from_str(&t(&user, &["tool", "list", "--json"]).stdout).unwrap();
    assert_eq!((&list[0]["name"], list[0]["plugin"].is_null()), (&serde_json::json!("echo"), true), "{list}");
    // Positive control: once the local tool is removed, the package installs (and installs again unchanged).
    t(&user, &["tool", "remove", "echo"]).expect_code(0);
    t(&user, &["plugin", "install", "--yes", pkg.to_str().unwrap()]).expect_code(0);
    let again = t(&user, &["plugin", "install", "--yes", pkg.to_str().unwrap()]);
    assert!(again.stdout.contains("already installed"), "{}", again.stdout);
}

/// The registry reads no package from a client whose token does not authenticate: a publish that declares 100 000
/// bytes and sends 1 is answered 401 at once (before, the package was read and parsed first). With a token of the
/// registry's home, the body is awaited, then refused for what it is (not a package).
#[test]
fn the_registry_reads_no_package_from_an_unauthenticated_client() {
    use toka_tests::{first_answer, partial_request};
    let w = World::new();
    let operator = w.home("operator");
    t(&operator, &["key", "init"]).expect_code(0);
    let registry = RegistryServer::start(&operator, &w.home("registry-data"));
    let server: std::net::SocketAddr = registry.url.trim_start_matches("http://").parse().unwrap();
    let publish = |auth: &str| partial_request(server, &format!("POST /v1/packages HTTP/1.1\r\n{auth}"), 100_000, b"x");
    for auth in ["", "Authorization: Bearer not-a-token\r\n"] {
        let mut c = publish(auth);
        let answer = toka_tests::read_until_closed(&mut c, Duration::from_secs(5)).expect("answered without the body");
        assert!(answer.starts_with("HTTP/1.1 401 "), "{auth:?}: {answer}");
    }
    let token = registry.token("publish:echo");
    let mut c = publish(&format!("Authorization: Bearer {token}\r\n"));
    assert_eq!(first_answer(&mut c, Duration::from_millis(500)), "", "the body is awaited");
    std::io::Write::write_all(&mut c, &[b'x'; 99_999]).unwrap();
    let answer = first_answer(&mut c, Duration::from_secs(30));
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
}
