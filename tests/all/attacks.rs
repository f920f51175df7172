//! Attack classes (issue 10): each test is named by the class it covers and holds a positive control beside every
//! refusal, so that a refusal cannot pass by accident. The network classes (name lookups, MCP over HTTP) are in
//! `attacks_net.rs`; the anchoring of the log (truncation, rewritten chains) in `anchoring.rs`.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use toka_tests::{Ran, agent, root, shared_cache, toka_host, toka_with};

/// Runs `toka-host` with its own home (and the shared compile cache).
fn t(home: &Path, args: &[&str]) -> Ran {
    toka_with(args, None, &[("TOKA_HOME", home.to_str().unwrap())])
}

fn hostile() -> String {
    agent("hostile").to_str().unwrap().to_string()
}

fn tool_path(name: &str) -> PathBuf {
    root().join("target").join("tools").join(format!("{name}.wasm"))
}

/// A home with the named tools installed.
fn home_with(tools: &[&str]) -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    for name in tools {
        t(home.path(), &["tool", "add", tool_path(name).to_str().unwrap()]).expect_code(0);
    }
    home
}

fn events(home: &Path, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["events", "--json"];
    args.extend_from_slice(extra);
    let r = t(home, &args);
    r.expect_code(0);
    r.stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

fn kinds(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| e["kind"].as_str().unwrap().to_string()).collect()
}

fn verify_ok(home: &Path) {
    let r = t(home, &["events", "verify"]);
    r.expect_code(0);
    assert!(r.stdout.starts_with("ok: "), "{}", r.stdout);
}

/// Runs the hostile agent's `calls` attack (see agents/hostile) with `extra` flags; the input goes through a file,
/// since it may be large.
fn calls(home: &Path, calls: Value, fail: Option<&str>, extra: &[&str]) -> Ran {
    let input = json!({ "attack": "calls", "calls": calls, "fail": fail });
    let file = home.join("input.json");
    std::fs::write(&file, input.to_string()).unwrap();
    let h = hostile();
    let mut args = vec!["run", "--json", "--input-file", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.push(&h);
    t(home, &args)
}

/// A small random generator for the property test; its seed is printed and can be set with `TOKA_TEST_SEED`.
struct Rng(u64);

impl Rng {
    fn from_env(test: &str) -> Rng {
        let seed = std::env::var("TOKA_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        });
        eprintln!("{test}: seed {seed} (re-run with TOKA_TEST_SEED={seed})");
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// A string of odd characters: controls, quotes, escapes, surrogate-range neighbours, emoji, RTL marks.
    fn text(&mut self, max: usize) -> String {
        const ODD: [char; 14] = [
            '\0', '\u{1}', '\n', '"', '\\', '/', '\u{7f}', '\u{2028}', '\u{feff}', '\u{d7ff}', '\u{e000}', '😀',
            '\u{202e}', 'é',
        ];
        let len = self.below(max as u64 + 1) as usize;
        (0..len)
            .map(|_| match self.below(3) {
                0 => ODD[self.below(ODD.len() as u64) as usize],
                _ => char::from(b'a' + self.below(26) as u8),
            })
            .collect()
    }

    /// Any JSON value: deep, wide, long strings, odd numbers.
    fn value(&mut self, depth: u32) -> Value {
        match self.below(if depth == 0 { 4 } else { 7 }) {
            0 => Value::Null,
            1 => json!(self.below(2) == 0),
            2 => match self.below(4) {
                0 => json!(self.next()),
                1 => json!(-(self.below(1 << 53) as i64)),
                2 => json!(f64::from_bits(self.next() & 0x7fef_ffff_ffff_ffff)),
                _ => json!(1e308),
            },
            3 => json!(self.text(64)),
            4 => Value::Array((0..self.below(6)).map(|_| self.value(depth - 1)).collect()),
            5 => Value::Object((0..self.below(6)).map(|_| (self.text(12), self.value(depth - 1))).collect()),
            _ => {
                // A chain straight down, the shape that broke the log.
                let mut v = json!(1);
                for _ in 0..self.below(140) {
                    v = json!([v]);
                }
                v
            }
        }
    }
}

/// JSON text nested `n` levels deep.
fn nested(n: usize) -> String {
    format!("{}1{}", "[".repeat(n), "]".repeat(n))
}

/// Whatever a guest hands the host through any guest-facing call, a fresh process can read the whole log, and the
/// chain verifies. Every emit the guest was told succeeded is in the log (the positive control), and the run's
/// ending is recorded, however large its error message.
#[test]
fn stored_values_any_guest_json_keeps_the_log_readable() {
    let mut rng = Rng::from_env("stored_values_any_guest_json_keeps_the_log_readable");
    let home = home_with(&["echo"]);
    let h = home.path();
    for case in 0..12 {
        let mut list = vec![
            // The cases that broke the log before bounds: a payload just under serde_json's parse limit.
            json!({ "emit": { "kind": "deep", "payload": nested(126) } }),
            json!({ "emit": { "kind": "edge", "payload": nested(32) } }),
            json!({ "emit": { "kind": "ok", "payload": "{\"fine\":true}" } }),
        ];
        for _ in 0..6 {
            list.push(match rng.below(6) {
                0 | 1 => json!({ "emit": { "kind": rng.text(20), "payload": rng.value(6).to_string() } }),
                2 => json!({ "set": { "key": rng.text(300), "value": rng.text(100) } }),
                3 => json!({ "delete": { "key": rng.text(20) } }),
                4 => json!({ "tool": { "name": rng.text(300), "input": rng.value(5).to_string() } }),
                _ => json!({ "tool": { "name": "echo", "input": json!({ "v": rng.value(5) }).to_string() } }),
            });
        }
        let xs = rng.below(3 << 20) as usize;
        let fail = (case % 3 == 0).then(|| "x".repeat(xs) + &rng.text(100));
        let r = calls(h, Value::Array(list), fail.as_deref(), &["--state", "rw", "--allow-tool", "echo"]);
        assert!(r.code == 0 || r.code == 65, "case {case}: exit {}\n{}", r.code, r.stderr);
        let report = r.report();
        let all = events(h, &["--run", report["run_id"].as_str().unwrap()]);
        let ended = kinds(&all);
        assert!(ended.last().is_some_and(|k| k == "run.completed" || k == "run.failed"), "case {case}: {ended:?}");
        if let Some(answers) = report["result"].as_str().and_then(|r| serde_json::from_str::<Value>(r).ok()) {
            let answers = answers["answers"].as_array().unwrap().clone();
            // The deep payload is refused with a clear error; the 32-level one and the plain one are recorded.
            assert!(answers[0].as_str().unwrap().contains("nested 126 levels deep"), "{}", answers[0]);
            assert_eq!(answers[1], "ok: 1");
            assert_eq!(answers[2], "ok: 1");
            let accepted = answers.iter().filter(|a| a.as_str() == Some("ok: 1")).count();
            let recorded = ended.iter().filter(|k| *k == "observation").count();
            assert_eq!(accepted, recorded, "case {case}: every acknowledged emit is in the log");
        } else {
            let error = all.last().unwrap()["payload"]["error"].as_str().unwrap();
            assert!(error.len() <= 4096, "case {case}: an error of {} bytes was stored", error.len());
            // A long message is cut with a marker; a short one is kept (its run of x's at least, since control
            // characters in the random tail are made printable on one line).
            if xs > 4096 {
                assert!(error.contains("[truncated: "), "case {case}: {} bytes, no marker", error.len());
            } else if !error.contains("[truncated: ") {
                assert!(error.contains(&"x".repeat(xs)), "case {case}: {xs} x's not kept in {error:?}");
            }
        }
    }
    verify_ok(h);
    // A fresh process reads every record.
    let all = events(h, &[]);
    assert!(all.iter().all(|e| e["kind"] != "invalid"), "an unreadable record");
}

/// A run may add at most `--max-records` records of each kind; the first refused call records one
/// `limit.reached` event, and the guest sees an error value (it is not stopped).
#[test]
fn stored_values_per_run_caps_on_recorded_calls() {
    let home = home_with(&["echo"]);
    let h = home.path();
    let list = json!([
        { "emit": { "kind": "k", "payload": "1", "times": 8 } },
        { "tool": { "name": "echo", "input": "{}" } },
        { "tool": { "name": "echo", "input": "{}" } },
        { "tool": { "name": "echo", "input": "{}" } },
        { "set": { "key": "a", "value": "1" } },
        { "set": { "key": "b", "value": "1" } },
        { "set": { "key": "c", "value": "1" } },
    ]);
    let r = calls(h, list, None, &["--max-records", "5", "--state", "rw", "--allow-tool", "echo"]);
    r.expect_code(0);
    let answers: Value = serde_json::from_str(r.report()["result"].as_str().unwrap()).unwrap();
    let answers: Vec<&str> = answers["answers"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(answers[0], "err after 5: run limit reached: at most 5 observations per run");
    // Positive control: under the cap, tool calls and writes go through.
    assert!(answers[1].starts_with("ok: ") && answers[3].starts_with("ok: "), "{answers:?}");
    assert_eq!(answers[4..], ["ok", "ok", "ok"]);
    let run = r.report()["run_id"].as_str().unwrap().to_string();
    let all = events(h, &["--run", &run]);
    let k = kinds(&all);
    assert_eq!(k.iter().filter(|k| *k == "observation").count(), 5);
    let limits: Vec<&Value> = all.iter().filter(|e| e["kind"] == "limit.reached").collect();
    assert_eq!(limits.len(), 1, "{k:?}");
    assert_eq!(limits[0]["payload"], json!({ "limit": "observations", "cap": 5 }));
    // The same run with a cap of 2: the third tool call and the third write are refused too.
    let list = json!([
        { "tool": { "name": "echo", "input": "{}" } },
        { "tool": { "name": "echo", "input": "{}" } },
        { "tool": { "name": "echo", "input": "{}" } },
        { "set": { "key": "a", "value": "1" } },
        { "set": { "key": "b", "value": "1" } },
        { "set": { "key": "c", "value": "1" } },
    ]);
    let r = calls(h, list, None, &["--max-records", "2", "--state", "rw", "--allow-tool", "echo"]);
    let answers: Value = serde_json::from_str(r.report()["result"].as_str().unwrap()).unwrap();
    let answers: Vec<&str> = answers["answers"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert!(answers[2].contains("run limit reached: at most 2 tool calls per run"), "{answers:?}");
    assert!(answers[5].contains("run limit reached: at most 2 state writes per run"), "{answers:?}");
    let run = r.report()["run_id"].as_str().unwrap().to_string();
    let k = kinds(&events(h, &["--run", &run]));
    assert_eq!(k.iter().filter(|k| *k == "tool.called").count(), 2);
    assert_eq!(k.iter().filter(|k| *k == "state.write").count(), 2);
    assert_eq!(k.iter().filter(|k| *k == "limit.reached").count(), 2);
    verify_ok(h);
}

/// A directory that contains, or lies inside, toka-host's home, database, key file or compile cache is refused,
/// symlinks and all; a sibling directory is granted (the positive control).
#[test]
fn own_state_is_never_grantable() {
    let base = tempfile::tempdir().unwrap();
    let home = base.path().join("home");
    let cache = base.path().join("cache");
    let db_dir = base.path().join("dbs");
    let data = base.path().join("data");
    for d in [&db_dir, &data] {
        std::fs::create_dir(d).unwrap();
    }
    std::os::unix::fs::symlink(base.path(), base.path().join("link-to-base")).unwrap();
    let db = db_dir.join("x.redb");
    let hello = agent("hello-rust");
    let run = |dir: &Path| {
        let grant = format!("{}::/d", dir.display());
        let args = ["--home", home.to_str().unwrap(), "--db", db.to_str().unwrap(), "--cache-dir"];
        let mut all = args.to_vec();
        all.extend([cache.to_str().unwrap(), "run", "--dir", &grant, hello.to_str().unwrap()]);
        toka_with(&all, None, &[])
    };
    run(&data).expect_code(0);
    for (dir, what) in [
        (base.path().to_path_buf(), "home"),
        (home.clone(), "home"),
        (home.join("tools"), "home"),
        (cache.clone(), "compile cache"),
        (db_dir.clone(), "database"),
        (base.path().join("link-to-base"), "home"),
    ] {
        std::fs::create_dir_all(&dir).unwrap();
        let r = run(&dir);
        r.expect_code(72);
        assert!(r.stderr.contains(&format!("toka-host's {what}")), "{}: {}", dir.display(), r.stderr);
        assert!(r.stderr.contains("toka-host's own state is never grantable"), "{}", r.stderr);
    }
}

/// A `--db` that is a symbolic link to a file not created yet: the run that creates the database already refuses a
/// grant of the directory the link points into. (The run is authorized while the database opens; the protected
/// paths are read again once it exists, since a path resolves through a link only then.) A sibling directory is
/// granted in a run that also creates its database behind a link (the positive control). Before that second read,
/// the outcome was a race between the log's thread creating the file and the main thread reading the paths, which
/// the file's creation usually won here: this test fails on that code only when the race goes the other way.
#[test]
fn a_database_behind_a_link_is_protected_in_the_run_that_creates_it() {
    let base = tempfile::tempdir().unwrap();
    let home = base.path().join("home");
    let data = base.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let hello = agent("hello-rust");
    let linked = |name: &str| {
        let target = base.path().join(name);
        std::fs::create_dir(&target).unwrap();
        let link = base.path().join(format!("{name}.redb"));
        std::os::unix::fs::symlink(target.join("x.redb"), &link).unwrap();
        (target, link)
    };
    let run = |db: &Path, dir: &Path| {
        let grant = format!("{}::/d", dir.display());
        let args = ["--home", home.to_str().unwrap(), "--db", db.to_str().unwrap()];
        let mut all = args.to_vec();
        all.extend(["run", "--dir", &grant, hello.to_str().unwrap()]);
        toka_with(&all, None, &[])
    };
    let (control, control_link) = linked("control");
    run(&control_link, &data).expect_code(0);
    assert!(control.join("x.redb").exists(), "the control's run created its database behind the link");
    let (target, link) = linked("target");
    let r = run(&link, &target);
    r.expect_code(72);
    assert!(r.stderr.contains("toka-host's database"), "{}", r.stderr);
    assert!(target.join("x.redb").exists(), "the refused run created the database it was refused for");
}

/// The home, database, key file, compile cache and token files are created owner-only.
#[test]
fn own_state_is_created_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let base = tempfile::tempdir().unwrap();
    let home = base.path().join("new-home");
    let cache = base.path().join("new-cache");
    let env = [("TOKA_HOME", home.to_str().unwrap()), ("TOKA_CACHE_DIR", cache.to_str().unwrap())];
    toka_with(&["run", agent("hello-rust").to_str().unwrap()], None, &env).expect_code(0);
    let token = base.path().join("t.token");
    let mint = ["token", "mint", "--agent", "x", "--out", token.to_str().unwrap()];
    toka_with(&mint, None, &env).expect_code(0);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&home), 0o700);
    assert_eq!(mode(&home.join("toka.redb")), 0o600);
    assert_eq!(mode(&home.join("keys.json")), 0o600);
    assert_eq!(mode(&cache), 0o700);
    assert_eq!(mode(&cache.join("key")), 0o600);
    assert_eq!(mode(&token), 0o600);
}

/// The files of the one artifact a compilation adds to an empty cache.
fn artifacts(cache: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(cache.join("compiled").join("modules")).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(dir.path()).unwrap().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".stats") && !name.contains(".wip-") {
                out.push(f.path());
            }
        }
    }
    out.sort();
    out
}

/// An artifact planted in the compile cache (another component's compiled code under this component's name) is
/// never loaded: it is removed and the component compiled afresh. Before, the host would have run the planted code.
#[test]
fn compile_cache_planted_artifacts_are_rebuilt_not_loaded() {
    let base = tempfile::tempdir().unwrap();
    let cache = base.path().join("cache");
    let home = base.path().join("home");
    let env = [("TOKA_HOME", home.to_str().unwrap()), ("TOKA_CACHE_DIR", cache.to_str().unwrap())];
    let echo = |cache_hit: bool| {
        let r = toka_with(&["run", "--json", &agent("echo-cmd").to_string_lossy(), "planted?"], None, &env);
        r.expect_code(0);
        assert_eq!(r.report()["stdout"], "args: planted?\n");
        assert_eq!(r.report()["component"]["cache_hit"], cache_hit, "{}", r.report());
    };
    // An agent compiled first, then the command: each leaves one artifact.
    toka_with(&["run", &agent("hello-rust").to_string_lossy()], None, &env).expect_code(0);
    let agent_artifact = artifacts(&cache);
    assert_eq!(agent_artifact.len(), 1, "{agent_artifact:?}");
    echo(false);
    echo(true);
    let command_artifact: Vec<PathBuf> =
        artifacts(&cache).into_iter().filter(|p| !agent_artifact.contains(p)).collect();
    assert_eq!(command_artifact.len(), 1);
    // Plant the agent's compiled code as the command's artifact: a valid artifact of this engine, the wrong code.
    std::fs::copy(&agent_artifact[0], &command_artifact[0]).unwrap();
    echo(false);
    // The rebuilt artifact is the host's own again: a hit.
    echo(true);
    // An edit in place of the agent's artifact is caught as well.
    let mut bytes = std::fs::read(&agent_artifact[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&agent_artifact[0], &bytes).unwrap();
    let r = toka_with(&["run", "--json", &agent("hello-rust").to_string_lossy()], None, &env);
    r.expect_code(0);
    assert_eq!(r.report()["component"]["cache_hit"], false);
}

/// Preview 1 modules' compiled code is authenticated like components': another module's compiled code planted under
/// a module's cache entry is not run (without the check, `go-echo args hello` would run wasi-probe's code, which
/// prints `argc 1`).
#[test]
fn compile_cache_planted_module_artifacts_are_rebuilt_not_loaded() {
    let base = tempfile::tempdir().unwrap();
    let cache = base.path().join("cache");
    let env = [
        ("TOKA_HOME", base.path().join("home").to_str().unwrap().to_string()),
        ("TOKA_CACHE_DIR", cache.to_str().unwrap().to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let run = |name: &str| {
        let r = toka_with(&["run", "--json", &agent(name).to_string_lossy(), "args", "hello"], None, &env);
        r.expect_code(0);
        r.report()
    };
    let probe = run("wasi-probe");
    assert_eq!(probe["stdout"], "argc 1\n\"hello\"\n", "{probe}");
    assert_eq!(probe["component"]["core_module"], true);
    let probe_artifact = artifacts(&cache);
    assert_eq!(probe_artifact.len(), 1, "{probe_artifact:?}");
    assert_eq!(run("go-echo")["component"]["cache_hit"], false);
    let report = run("go-echo");
    assert_eq!((&report["stdout"], &report["component"]["cache_hit"]), (&"args: hello\n".into(), &true.into()));
    let echo_artifact: Vec<PathBuf> = artifacts(&cache).into_iter().filter(|p| !probe_artifact.contains(p)).collect();
    assert_eq!(echo_artifact.len(), 1);
    // wasi-probe's compiled code where go-echo's was: a valid artifact of this engine, the wrong program.
    std::fs::copy(&probe_artifact[0], &echo_artifact[0]).unwrap();
    let report = run("go-echo");
    assert_eq!(report["stdout"], "args: hello\n", "{report}");
    assert_eq!(report["component"]["cache_hit"], false, "{report}");
}

fn mint(home: &Path, args: &[&str]) -> String {
    if !home.join("keys.json").exists() {
        t(home, &["key", "init"]).expect_code(0);
    }
    let mut all = vec!["token", "mint"];
    all.extend_from_slice(args);
    let r = t(home, &all);
    r.expect_code(0);
    r.stdout.trim().to_string()
}

fn attenuate(home: &Path, token: &str, args: &[&str]) -> String {
    let mut all = vec!["token", "attenuate", token];
    all.extend_from_slice(args);
    let r = t(home, &all);
    r.expect_code(0);
    r.stdout.trim().to_string()
}

/// Every command takes the same `--home`/`--db`: a token revoked in database X is refused by `run`, `tool call` and
/// `mcp` given X, and still accepted with another database (whose revocations are its own).
#[test]
fn one_home_a_revocation_in_a_database_binds_every_command_on_it() {
    let home = home_with(&["echo"]);
    let h = home.path();
    let dbs = tempfile::tempdir().unwrap();
    let (x, y) = (dbs.path().join("x.redb"), dbs.path().join("y.redb"));
    let (x, y) = (x.to_str().unwrap(), y.to_str().unwrap());
    let token = mint(h, &["--agent", "echo-cmd", "--grant", "tool:echo"]);
    let echo = agent("echo-cmd");
    let run = |db: &str| t(h, &["--db", db, "run", "--token", &token, &echo.to_string_lossy(), "hi"]);
    let call = |db: &str| t(h, &["tool", "call", "echo", "--db", db, "--token", &token, "--input", "{}"]);
    let serve = |db: &str| {
        let mut cmd = Command::new(toka_host());
        cmd.args(["mcp", "--db", db, "--token", &token]).env("TOKA_HOME", h).env("TOKA_CACHE_DIR", shared_cache());
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let out = cmd.output().unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    run(x).expect_code(0);
    call(x).expect_code(0);
    t(h, &["token", "revoke", "--db", x, &token]).expect_code(0);
    for r in [run(x), call(x)] {
        r.expect_code(78);
        assert!(r.stderr.contains("token is revoked"), "{}", r.stderr);
    }
    let (code, stderr) = serve(x);
    assert_eq!(code, 78, "{stderr}");
    assert!(stderr.contains("token is revoked"), "{stderr}");
    // Another database has its own revocations: the same token is accepted there.
    run(y).expect_code(0);
    call(y).expect_code(0);
    let (code, stderr) = serve(y);
    assert_ne!(code, 78, "{stderr}");
    // Reading commands take the same flags: the runs are in X, not in the home's default database (X also lists
    // the run its revocation refused).
    for (db, n) in [(x, 2), (y, 1), (h.join("toka.redb").to_str().unwrap(), 0)] {
        let runs = t(h, &["runs", "--db", db, "--json"]);
        runs.expect_code(0);
        assert_eq!(runs.stdout.lines().count(), n, "{db}: {}", runs.stdout);
    }
}

/// Revoking an attenuated token revokes it and what descends from it, never its parent or its siblings; every
/// check looks at all of a token's revocation ids.
#[test]
fn revocation_is_exact_parent_child_sibling() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let parent = mint(h, &["--agent", "echo-cmd"]);
    let child = attenuate(h, &parent, &["--fuel", "5000000000"]);
    let sibling = attenuate(h, &parent, &["--fuel", "4000000000"]);
    let grandchild = attenuate(h, &child, &["--ttl", "1h"]);
    let run = |token: &str| t(h, &["run", "--token", token, &agent("echo-cmd").to_string_lossy(), "x"]);
    for token in [&parent, &child, &sibling, &grandchild] {
        run(token).expect_code(0);
    }
    t(h, &["token", "revoke", &child]).expect_code(0);
    for token in [&child, &grandchild] {
        let r = run(token);
        r.expect_code(78);
        assert!(r.stderr.contains("token is revoked"), "{}", r.stderr);
    }
    run(&parent).expect_code(0);
    run(&sibling).expect_code(0);
    t(h, &["token", "revoke", &parent]).expect_code(0);
    run(&sibling).expect_code(78);
    run(&parent).expect_code(78);
}

/// A token pinned to a component (by digest) runs that component only, whatever the file is called; `token mint
/// --component` pins.
#[test]
fn identity_a_pinned_token_runs_only_its_component() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let token = mint(h, &["--component", &agent("echo-cmd").to_string_lossy()]);
    let inspect = t(h, &["token", "inspect", "--json", &token]);
    let i: Value = serde_json::from_str(&inspect.stdout).unwrap();
    assert_eq!(i["agent"], "echo-cmd");
    assert_eq!(i["pinned"].as_array().unwrap().len(), 1);
    assert_eq!(i["verifies"], "ok");
    // The pinned component runs (positive control) ...
    t(h, &["run", "--token", &token, &agent("echo-cmd").to_string_lossy(), "x"]).expect_code(0);
    // ... another component under the same file name does not.
    let dir = tempfile::tempdir().unwrap();
    let impostor = dir.path().join("echo-cmd.wasm");
    std::fs::copy(agent("hostile"), &impostor).unwrap();
    let r = t(h, &["run", "--token", &token, impostor.to_str().unwrap()]);
    r.expect_code(78);
    assert!(r.stderr.contains("token is pinned to another component"), "{}", r.stderr);
    // An unpinned token for the same agent runs it; attenuation can pin it.
    let free = mint(h, &["--agent", "echo-cmd"]);
    t(h, &["run", "--token", &free, impostor.to_str().unwrap()]).expect_code(65);
    let pinned = attenuate(h, &free, &["--component", &agent("echo-cmd").to_string_lossy()]);
    t(h, &["run", "--token", &pinned, impostor.to_str().unwrap()]).expect_code(78);
}

/// No value of a numeric flag panics the host: extremes give a clear usage error or work.
#[test]
fn no_panic_extreme_flag_values() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let echo = agent("echo-cmd").to_string_lossy().into_owned();
    let max = u64::MAX.to_string();
    let huge = "1000000000000000000000000".to_string();
    let mut cases: Vec<Vec<String>> = Vec::new();
    for (flag, values) in [
        ("--fuel", vec!["0", &max, &huge, "-1", "unlimited"]),
        ("--timeout", vec!["0s", "0", &max, "584942417355y", "99999999999999999999y", "1ns"]),
        ("--max-memory", vec!["0", &max, "16777215TiB", "16777216TiB", "1.7976931348623157e308GiB"]),
        ("--max-output", vec!["0", &max, "16777216TiB"]),
        ("--max-records", vec!["0", &max, &huge]),
    ] {
        for v in values {
            cases.push(["run", flag, v, &echo, "x"].iter().map(|s| s.to_string()).collect());
        }
    }
    for (flag, values) in [
        ("--ttl", vec!["0s", &max, "584942417355y", "99999999999999999999y"]),
        ("--fuel", vec!["0", &max, &huge]),
        ("--memory", vec![&max, "16777216TiB"]),
        ("--timeout", vec![&max, "584942417355y"]),
        ("--max-depth", vec!["0", &max]),
        ("--rate", vec!["18446744073709551615/s", "1/18446744073709551615s", "1/584942417355y"]),
    ] {
        for v in values {
            cases.push(["token", "mint", "--agent", "a", flag, v].iter().map(|s| s.to_string()).collect());
        }
    }
    for v in ["0s", max.as_str(), "584942417355y"] {
        cases.push(["key", "rotate", "--overlap", v].iter().map(|s| s.to_string()).collect());
        cases.push(["token", "attenuate", "x", "--ttl", v].iter().map(|s| s.to_string()).collect());
    }
    for (flag, v) in [("--since", &max), ("--limit", &max), ("--since", &huge)] {
        cases.push(["events", flag, v.as_str()].iter().map(|s| s.to_string()).collect());
    }
    cases.push(["runs", "--limit", &max].iter().map(|s| s.to_string()).collect());
    for (flag, v) in [("--fuel", &max), ("--timeout", &max), ("--max-memory", &max), ("--timeout", &"0s".to_string())] {
        cases.push(["tool", "call", "echo", flag, v.as_str()].iter().map(|s| s.to_string()).collect());
    }
    t(h, &["run", &echo, "x"]).expect_code(0);
    for case in cases {
        let args: Vec<&str> = case.iter().map(String::as_str).collect();
        let r = t(h, &args);
        assert!(
            r.code != 101 && !r.stderr.contains("panicked") && r.code >= 0,
            "{args:?} crashed the host: exit {}\n{}",
            r.code,
            r.stderr
        );
    }
}

/// `--repeat`/`--parallel` end with the worst outcome of all runs, not the last one's.
#[test]
fn no_silent_mix_up_repeat_exits_with_the_worst_outcome() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    // The first run fails (its state key is new), the later ones succeed.
    let list = json!([{ "fail-if-new": { "key": "seen" } }]);
    let r = calls(h, list.clone(), None, &["--state", "rw", "--repeat", "3"]);
    r.expect_code(65);
    let report = r.report();
    assert_eq!(report["outcome"], "agent-error");
    assert_eq!(report["repeat"]["failures"], 1);
    assert_eq!(report["repeat"]["outcomes"], json!({ "agent-error": 1, "success": 2 }));
    // Positive control: once the key exists, every run succeeds.
    calls(h, list, None, &["--state", "rw", "--repeat", "3"]).expect_code(0);
    // The failure in the middle: run 1 finds the key and deletes it, run 2 finds it new (fails, sets it), run 3
    // finds it again. Neither the first nor the last report is the answer.
    let middle = json!([{ "fail-if-new": { "key": "seen" } }, { "delete": { "key": "seen" } }]);
    let r = calls(h, middle, None, &["--state", "rw", "--repeat", "3"]);
    r.expect_code(65);
    assert_eq!(r.report()["repeat"]["outcomes"], json!({ "agent-error": 1, "success": 2 }));
}

/// A stalled stdout pipe does not hold a run past its deadline: the run ends (and is recorded) on time, though
/// the host process then waits like any program whose output nobody reads.
#[test]
fn no_silent_mix_up_a_stalled_stdout_does_not_hold_the_run() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let mut child = Command::new(toka_host())
        .args(["run", "--timeout", "1s", "--max-output", "64GiB", "--input", r#"{"attack":"flood"}"#, &hostile()])
        .env("TOKA_HOME", h)
        .env("TOKA_CACHE_DIR", shared_cache())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Nobody reads the child's stdout. The run must be recorded as ended by its deadline soon after it.
    let started = Instant::now();
    let ended = loop {
        // The database appears once the host has opened it.
        let r = t(h, &["events", "--json", "--kind", "run"]);
        let all: Vec<Value> = r.stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        if let Some(e) = all.iter().find(|e| e["kind"] == "run.failed") {
            break e.clone();
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the run did not end: {all:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    // Past its deadline the guest's writes are counted, not echoed, so it may reach its output cap just before the
    // epoch stops it: either way it ended on time.
    let outcome = ended["payload"]["outcome"].as_str().unwrap();
    assert!(outcome == "timeout" || outcome == "output-limit", "{ended}");
    assert!(ended["payload"]["wall_time_ms"].as_f64().unwrap() < 3_000.0, "{ended}");
    // Reading stdout now lets the host finish.
    let mut out = child.stdout.take().unwrap();
    std::io::copy(&mut out, &mut std::io::sink()).unwrap();
    assert!([Some(69), Some(71)].contains(&child.wait().unwrap().code()));
}

/// A tool gets what is left of its caller's memory, not a full cap of its own on top of the caller's.
#[test]
fn no_silent_mix_up_nested_tools_share_the_callers_memory() {
    let home = home_with(&["fail-tool"]);
    let h = home.path();
    let alloc = |agent_mib: u64| {
        let list = json!([
            { "alloc": { "mib": agent_mib } },
            { "tool": { "name": "fail-tool", "input": json!({ "mode": "alloc", "mib": 40 }).to_string() } },
        ]);
        let r = calls(h, list, None, &["--max-memory", "96MiB", "--allow-tool", "fail-tool"]);
        r.expect_code(0);
        let answers: Value = serde_json::from_str(r.report()["result"].as_str().unwrap()).unwrap();
        answers["answers"][1].as_str().unwrap().to_string()
    };
    // 40 MiB fit beside an agent holding little (positive control) ...
    assert!(alloc(1).starts_with("ok: "), "{}", alloc(1));
    // ... but not beside an agent already holding 70 of its 96 MiB.
    let answer = alloc(70);
    assert!(answer.starts_with("err: ") && answer.contains("out of memory"), "{answer}");
}

/// A state write refused for want of quota is not logged as a write and takes nothing from the rate budget.
#[test]
fn no_silent_mix_up_a_refused_state_write_is_not_logged_and_not_charged() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let big = "x".repeat(1 << 20);
    // Fill the agent's 16 MiB quota (16 values of 1 MiB minus their keys' share).
    let fill: Vec<Value> = (0..15).map(|i| json!({ "set": { "key": format!("k{i:02}"), "value": big } })).collect();
    calls(h, Value::Array(fill), None, &["--state", "rw"]).expect_code(0);
    let token = mint(h, &["--agent", "hostile", "--grant", "state:rw", "--rate", "3/h"]);
    let list = json!([
        { "set": { "key": "one-more", "value": big } },
        { "set": { "key": "k00", "value": "small" } },
        { "set": { "key": "k01", "value": "small" } },
        { "set": { "key": "k02", "value": "small" } },
    ]);
    let r = calls(h, list, None, &["--state", "rw", "--token", &token]);
    r.expect_code(0);
    let answers: Value = serde_json::from_str(r.report()["result"].as_str().unwrap()).unwrap();
    let answers: Vec<&str> = answers["answers"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert!(answers[0].contains("TooLarge") && answers[0].contains("quota"), "{answers:?}");
    // The rate allows 3: the run's start and two writes; the refused write took none of them.
    assert_eq!(answers[1..3], ["ok", "ok"], "{answers:?}");
    assert!(answers[3].contains("rate limit"), "{answers:?}");
    let run = r.report()["run_id"].as_str().unwrap().to_string();
    let writes: Vec<Value> = events(h, &["--run", &run]).into_iter().filter(|e| e["kind"] == "state.write").collect();
    assert_eq!(writes.len(), 2, "{writes:?}");
    assert!(writes.iter().all(|w| w["payload"]["key"] != "one-more"));
}

/// Verification never fails open: reading commands refuse a database that does not exist (and create nothing);
/// `--dir` refuses an unknown mode rather than granting read-write.
#[test]
fn verification_never_fails_open() {
    let base = tempfile::tempdir().unwrap();
    let missing = base.path().join("nowhere").join("typo.redb");
    for args in [vec!["events", "verify"], vec!["events"], vec!["runs"], vec!["state", "get", "--agent", "a", "k"]] {
        let mut all = vec!["--db", missing.to_str().unwrap()];
        all.extend(args.iter());
        let r = toka_with(&all, None, &[]);
        r.expect_code(76);
        assert!(r.stderr.contains("does not exist"), "{args:?}: {}", r.stderr);
        assert!(!base.path().join("nowhere").exists(), "{args:?} created the directory");
    }
    // Positive control: the same commands on a database that exists.
    let home = base.path().join("home");
    toka_with(&["--home", home.to_str().unwrap(), "run", &agent("echo-cmd").to_string_lossy(), "x"], None, &[])
        .expect_code(0);
    let db = home.join("toka.redb");
    // Checkpoints are verified with the keys of the home that signed them.
    toka_with(&["--home", home.to_str().unwrap(), "--db", db.to_str().unwrap(), "events", "verify"], None, &[])
        .expect_code(0);
    toka_with(&["--db", db.to_str().unwrap(), "runs"], None, &[]).expect_code(0);
    // `:RO` is not a mode: refused, where it used to grant read-write at the guest path `/d:RO`.
    let data = tempfile::tempdir().unwrap();
    let grant = format!("{}::/d:RO", data.path().display());
    let r = toka_with(&["run", "--dir", &grant, &agent("echo-cmd").to_string_lossy(), "x"], None, &[]);
    r.expect_code(2);
    assert!(r.stderr.contains("unknown mode `:RO`"), "{}", r.stderr);
    let grant = format!("{}::/d:ro", data.path().display());
    toka_with(&["run", "--dir", &grant, &agent("echo-cmd").to_string_lossy(), "x"], None, &[]).expect_code(0);
}

/// The directory layout of the swap tests: `a/data/` granted read-write at `/data`, `a/data/sub/` granted
/// read-only at `/sub`, each with a file of its own; `../..` from `a/data/` is the base directory, which holds a file
/// the guest must never see.
fn nested_grants() -> (tempfile::TempDir, String, String) {
    let base = tempfile::tempdir().unwrap();
    let data = base.path().join("a").join("data");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    std::fs::write(data.join("outer.txt"), "outer").unwrap();
    std::fs::write(data.join("sub").join("inner.txt"), "inner").unwrap();
    std::fs::write(base.path().join("secret-outside.txt"), "secret").unwrap();
    let outer = format!("{}::/data", data.display());
    let inner = format!("{}::/sub:ro", data.join("sub").display());
    (base, outer, inner)
}

fn list_sub() -> Value {
    json!({ "tool": { "name": "file-lister", "input": "{\"path\":\"/sub\"}" } })
}

/// A guest that swaps a granted subdirectory for a relative symlink (`../..`) and then calls a tool on it gets the
/// tool's sandbox on the directory that was granted, not on wherever the symlink now leads.
#[test]
fn grants_are_handles_a_swapped_subdirectory_stays_the_granted_one() {
    let home = home_with(&["file-lister"]);
    let h = home.path();
    let (base, outer, inner) = nested_grants();
    let hostile = hostile();
    let run = |input: Value| {
        let input = input.to_string();
        let args = [
            "run",
            "--json",
            "--dir",
            &outer,
            "--dir",
            &inner,
            "--allow-tool",
            "file-lister",
            "--input",
            &input,
            &hostile,
        ];
        let r = t(h, &args);
        r.expect_code(0);
        r.report()["result"].as_str().unwrap().to_string()
    };
    // Positive control: the tool lists the granted directory.
    let listed = run(json!({ "attack": "calls", "calls": [list_sub()] }));
    assert!(listed.contains("inner.txt") && !listed.contains("outer.txt"), "{listed}");
    let swapped = run(json!({ "attack": "swap", "sub": "/data/sub", "tool": "file-lister", "path": "/sub" }));
    assert!(swapped.contains("inner.txt"), "{swapped}");
    assert!(!swapped.contains("secret-outside"), "{swapped}");
    // The symlink is there on the host: the path now leads out of the grant, the handle does not.
    let link = base.path().join("a").join("data").join("sub");
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("../.."));
    assert!(link.join("secret-outside.txt").exists());
}

/// Renames racing a run's tool calls (the granted path swapped back and forth between the directory and a symlink
/// out of it) never give a tool's sandbox anything but the directory granted.
#[test]
fn grants_are_handles_renames_racing_tool_calls() {
    let home = home_with(&["file-lister"]);
    let h = home.path();
    let (base, outer, inner) = nested_grants();
    // An observation first, so the test knows the grants were authorized (opened) before it starts racing.
    let mut list = vec![json!({ "emit": { "kind": "ready", "payload": "1" } })];
    list.extend(std::iter::repeat_n(list_sub(), 300));
    let input = json!({ "attack": "calls", "calls": list }).to_string();
    let child = Command::new(toka_host())
        .args(["run", "--json", "--dir", &outer, "--dir", &inner, "--allow-tool", "file-lister"])
        .args(["--input", &input, &hostile()])
        .env("TOKA_HOME", h)
        .env("TOKA_CACHE_DIR", shared_cache())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !t(h, &["events", "--kind", "observation"]).stdout.contains("observation") {
        assert!(started.elapsed() < Duration::from_secs(30), "the run never got going");
        std::thread::sleep(Duration::from_millis(20));
    }
    let sub = base.path().join("a").join("data").join("sub");
    let parked = base.path().join("a").join("data").join("parked");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let racer = {
        let (stop, sub, parked) = (stop.clone(), sub.clone(), parked.clone());
        std::thread::spawn(move || {
            let mut swaps = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && swaps < 1_000_000 {
                // The directory out and a symlink out of the grant in its place; then back.
                if std::fs::rename(&sub, &parked).is_ok() {
                    drop(std::os::unix::fs::symlink("../..", &sub));
                    std::thread::yield_now();
                    drop(std::fs::remove_file(&sub));
                    drop(std::fs::rename(&parked, &sub));
                    swaps += 1;
                }
            }
            swaps
        })
    };
    let out = child.wait_with_output().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(racer.join().unwrap() > 0);
    let ran = Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    ran.expect_code(0);
    let answers: Value = serde_json::from_str(ran.report()["result"].as_str().unwrap()).unwrap();
    let answers = answers["answers"].as_array().unwrap();
    assert_eq!(answers.len(), 301);
    for (i, a) in answers.iter().enumerate().skip(1) {
        let a = a.as_str().unwrap();
        assert!(a.starts_with("ok: ") && a.contains("inner.txt") && !a.contains("secret-outside"), "call {i}: {a}");
    }
}
