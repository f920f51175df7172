//! A newcomer's first hour (issue 11): each friction met by someone following the README, as a test that failed
//! before its fix. The README's attenuation example, relative `--dir` paths, a mistyped token file, refusals in
//! words, refused runs in `runs`, `events --follow --since now`, the same flags with the same defaults in `run` and
//! `tool call`, and what `--repeat` prints.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use toka_tests::{Ran, agent, shared_cache, toka_host, wait_for};

/// Runs toka-host in `cwd` with the home `home` (and the shared compile cache).
fn t_in(cwd: &Path, home: &Path, args: &[&str]) -> Ran {
    let out = Command::new(toka_host())
        .args(args)
        .current_dir(cwd)
        .env("TOKA_HOME", home)
        .env("TOKA_CACHE_DIR", shared_cache())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("spawn toka-host");
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A home with a root key, a data directory `data/reports/a.txt` beside it, both in one temporary directory.
fn setup() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let home = root.join("home");
    std::fs::create_dir_all(root.join("data/reports")).unwrap();
    std::fs::write(root.join("data/reports/a.txt"), "hello\n").unwrap();
    std::fs::write(root.join("data/top.txt"), "top\n").unwrap();
    t_in(&root, &home, &["key", "init"]).expect_code(0);
    (tmp, root, home)
}

/// The README's attenuation example, run as written: a run without `--fuel` under the narrowed token gets the
/// narrowed fuel (the smallest ceiling of every block), not the first block's, and passes; `token inspect` shows
/// the grants and fuel in force. Before the fix the run asked for the first block's fuel and exited 72, and inspect
/// showed the authority block's grants. Refusal controls in the same setup: the wider directory and more fuel.
#[test]
fn the_readme_attenuation_example_runs_under_the_narrowed_token() {
    let (_tmp, root, home) = setup();
    let dirstat = agent("dirstat");
    let t = |args: &[&str]| t_in(&root, &home, args);
    t(&["token", "mint", "--agent", "dirstat", "--grant", "fs:data:ro", "--fuel", "100000000", "--ttl", "1h"])
        .expect_code(0);
    let minted = t(&[
        "token",
        "mint",
        "--agent",
        "dirstat",
        "--grant",
        "fs:data:ro",
        "--grant",
        "env:LANG",
        "--fuel",
        "100000000",
        "--timeout",
        "10s",
        "--ttl",
        "1h",
        "--out",
        "dirstat.token",
    ]);
    minted.expect_code(0);
    t(&[
        "token",
        "attenuate",
        "dirstat.token",
        "--only",
        "fs:data/reports:ro",
        "--fuel",
        "1000000",
        "--ttl",
        "10m",
        "--out",
        "narrow.token",
    ])
    .expect_code(0);

    let inspect = t(&["token", "inspect", "narrow.token"]);
    inspect.expect_code(0);
    let data = root.join("data");
    let line = |prefix: &str| inspect.stdout.lines().find(|l| l.starts_with(prefix)).unwrap_or("").to_string();
    assert_eq!(line("grants:"), format!("grants:       fs:{}/reports/:ro", data.display()), "{}", inspect.stdout);
    assert_eq!(line("  authority:"), format!("  authority:  env:LANG fs:{}/:ro", data.display()), "{}", inspect.stdout);
    assert_eq!(line("limits:"), "limits:       fuel 1000000 memory 536870912 timeout 10000 ms", "{}", inspect.stdout);

    let run = |dir: &str, extra: &[&str]| {
        let mut args = vec!["run", "--json", "--token", "narrow.token", "--dir", dir, "--input", r#"{"path":"/data"}"#];
        args.extend_from_slice(extra);
        args.push(arg(&dirstat));
        t(&args)
    };
    let ok = run("data/reports::/data:ro", &[]);
    ok.expect_code(0);
    let report = ok.report();
    assert_eq!(report["outcome"], "success");
    assert!(report["fuel_consumed"].as_u64().unwrap() <= 1_000_000);

    let wider = run("data::/data:ro", &[]);
    wider.expect_code(72);
    assert_eq!(
        wider.stderr.trim(),
        format!(
            "toka-host: grant refused: fs:{d}/:ro: asked for fs:{d}/:ro, and the token allows fs:{d}/reports/:ro \
             (--verbose shows the failing Datalog checks)",
            d = data.display()
        )
    );
    let more_fuel = run("data/reports::/data:ro", &["--fuel", "2000000"]);
    more_fuel.expect_code(72);
    assert_eq!(
        more_fuel.stderr.trim(),
        "toka-host: grant refused: limits: asked for fuel 2000000, the token allows at most 1000000 (give less, or a \
         token with more) (--verbose shows the failing Datalog checks)"
    );
}

/// Refusals say what was asked and what the token allows, in the host's grant syntax; the Datalog only with
/// `--verbose`; a token with no grants says so instead of printing an empty list.
#[test]
fn refusals_say_what_was_asked_and_what_the_token_allows() {
    let (_tmp, root, home) = setup();
    let t = |args: &[&str]| t_in(&root, &home, args);
    let echo = agent("echo-cmd");
    let mint = |grants: &[&str]| {
        let mut args = vec!["token", "mint", "--agent", "echo-cmd"];
        for g in grants {
            args.extend(["--grant", g]);
        }
        let r = t(&args);
        r.expect_code(0);
        r.stdout.trim().to_string()
    };
    let some = mint(&["env:A", "fs:data:ro"]);
    let none = mint(&[]);
    // Positive control: what the token allows runs.
    t(&["run", "--token", &some, "--env", "A=1", arg(&echo), "args"]).expect_code(0);

    let r = t(&["run", "--token", &some, "--env", "B=1", arg(&echo), "args"]);
    r.expect_code(72);
    let data = root.join("data");
    assert_eq!(
        r.stderr.trim(),
        format!(
            "toka-host: grant refused: env:B: asked for env:B, and the token allows env:A fs:{}/:ro (--verbose shows \
             the failing Datalog checks)",
            data.display()
        )
    );
    assert!(!r.stderr.contains("check if"), "no Datalog without --verbose: {}", r.stderr);

    let r = t(&["run", "--token", &none, "--env", "B=1", arg(&echo), "args"]);
    r.expect_code(72);
    assert!(r.stderr.contains("asked for env:B, and the token grants nothing"), "{}", r.stderr);
    assert!(!r.stderr.contains("checks failed: \n") && !r.stderr.trim_end().ends_with(':'), "{}", r.stderr);

    // With --verbose, the Datalog too: the failing check, or that no policy allows the request (never an empty
    // list of checks).
    let r = t(&["--verbose", "run", "--token", &some, "--fuel", "20000000000", arg(&echo), "args"]);
    r.expect_code(72);
    assert!(r.stderr.contains("asked for fuel 20000000000, the token allows at most 10000000000"), "{}", r.stderr);
    assert!(r.stderr.contains("[Datalog: ") && r.stderr.contains("check if fuel_request($f)"), "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    let r = t(&["--verbose", "run", "--token", &none, "--env", "B=1", arg(&echo), "args"]);
    r.expect_code(72);
    assert!(r.stderr.contains("[Datalog: no policy of the host allows it, and no check failed]"), "{}", r.stderr);
    assert!(!r.stderr.contains("checks failed:]"), "{}", r.stderr);
}

/// `--dir` paths a user types as in a shell: a relative host path is mounted at its absolute path (where a guest
/// can open it, as the README says), a relative guest path and an unknown `:MODE` are refused with a message saying
/// what to write instead. The guest lists the directory at the absolute path: the positive control.
#[test]
fn relative_dir_paths_are_resolved_or_refused() {
    let (_tmp, root, home) = setup();
    let t = |args: &[&str]| t_in(&root, &home, args);
    let echo = agent("echo-cmd");
    let data = root.join("data");
    let r = t(&["run", "--dir", "./data", arg(&echo), "ls", arg(&data)]);
    r.expect_code(0);
    assert_eq!(r.stdout, "reports\ntop.txt\n");
    let r = t(&["run", "--dir", "data:ro", arg(&echo), "ls", arg(&data)]);
    r.expect_code(0);
    assert_eq!(r.stdout, "reports\ntop.txt\n");

    let r = t(&["run", "--dir", "data::d", arg(&echo), "ls", "d"]);
    r.expect_code(2);
    assert!(
        r.stderr.contains("invalid --dir `data::d`: guest path `d` must be absolute (for example data::/d)"),
        "{}",
        r.stderr
    );
    let r = t(&["run", "--dir", "data::/d:RO", arg(&echo), "ls", "/d"]);
    r.expect_code(2);
    assert!(r.stderr.contains("unknown mode `:RO` (use :ro or :rw)"), "{}", r.stderr);
}

/// A mistyped token file is "file not found" (exit 76) in `run`, `token attenuate`, `token inspect` and `token
/// revoke`, not a base64 error; the same commands with the real file work.
#[test]
fn a_missing_token_file_is_file_not_found() {
    let (_tmp, root, home) = setup();
    let t = |args: &[&str]| t_in(&root, &home, args);
    let echo = agent("echo-cmd");
    t(&["token", "mint", "--agent", "echo-cmd", "--out", "wc.token"]).expect_code(0);
    t(&["run", "--token", "wc.token", arg(&echo), "args"]).expect_code(0);
    t(&["token", "inspect", "wc.token"]).expect_code(0);
    t(&["token", "attenuate", "wc.token", "--fuel", "5"]).expect_code(0);

    for typo in ["wc.tokn", "wctoken"] {
        let r = t(&["run", "--token", typo, arg(&echo), "args"]);
        r.expect_code(76);
        assert_eq!(r.stderr.trim(), format!("toka-host: token file {typo}: file not found"));
        for cmd in
            [&["token", "revoke", typo][..], &["token", "inspect", typo], &["token", "attenuate", typo, "--fuel", "5"]]
        {
            let r = t(cmd);
            r.expect_code(76);
            assert!(
                r.stderr.starts_with(&format!("toka-host: token file {typo}: file not found")),
                "{cmd:?}: {}",
                r.stderr
            );
        }
    }
    t(&["token", "revoke", "wc.token"]).expect_code(0);
}

/// `runs` shows runs refused before they started (their outcome and exit code), beside the runs that ran.
#[test]
fn runs_lists_runs_refused_before_starting() {
    let (_tmp, root, home) = setup();
    let t = |args: &[&str]| t_in(&root, &home, args);
    let echo = agent("echo-cmd");
    t(&["run", arg(&echo), "args"]).expect_code(0);
    t(&["run", "--dir", "/no/such/dir", arg(&echo), "args"]).expect_code(72);
    t(&["run", "--token", "wc.tokn", arg(&echo), "args"]).expect_code(76);
    let r = t(&["runs", "--json"]);
    r.expect_code(0);
    let rows: Vec<serde_json::Value> = r.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let outcomes: Vec<(&str, i64)> =
        rows.iter().map(|r| (r["outcome"].as_str().unwrap(), r["exit_code"].as_i64().unwrap())).collect();
    assert_eq!(outcomes, [("success", 0), ("grant-refused", 72), ("file-not-found", 76)], "{}", r.stdout);
    assert!(rows.iter().all(|r| r["agent"] == "echo-cmd"));
    let table = t(&["runs"]);
    assert!(table.stdout.lines().any(|l| l.contains("grant-refused") && l.contains("72")), "{}", table.stdout);
}

/// `events --since now` prints nothing of the history, and with `--follow` only what is committed afterwards;
/// plain `events` (the control) prints the history.
#[test]
fn events_since_now_starts_at_the_end() {
    let (_tmp, root, home) = setup();
    let t = |args: &[&str]| t_in(&root, &home, args);
    let echo = agent("echo-cmd");
    t(&["run", arg(&echo), "args"]).expect_code(0);
    let history = t(&["events", "--json"]);
    history.expect_code(0);
    let last: u64 = history
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["seq"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(last >= 2, "{}", history.stdout);
    let r = t(&["events", "--since", "now"]);
    r.expect_code(0);
    assert_eq!(r.stdout, "");
    let r = t(&["events", "--since", "soon"]);
    r.expect_code(2);
    assert!(r.stderr.contains("expected a sequence number or `now`"), "{}", r.stderr);

    let mut follow = Command::new(toka_host())
        .args(["events", "--follow", "--since", "now", "--json"])
        .current_dir(&root)
        .env("TOKA_HOME", &home)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Give the follower time to read the end before the new run (it polls every 200 ms).
    std::thread::sleep(Duration::from_millis(600));
    t(&["run", arg(&echo), "args"]).expect_code(0);
    let mut seen = Vec::new();
    let found = wait_for(Duration::from_secs(10), || {
        while let Ok(line) = rx.try_recv() {
            seen.push(serde_json::from_str::<serde_json::Value>(&line).unwrap());
        }
        seen.iter().any(|e| e["kind"] == "run.completed").then_some(())
    });
    let _ = follow.kill();
    let _ = follow.wait();
    let _ = reader.join();
    assert!(found.is_some(), "no run.completed followed: {seen:?}");
    assert!(seen.iter().all(|e| e["seq"].as_u64().unwrap() > last), "history printed: {seen:?}");
}

/// `tool call` takes `--fuel unlimited` like `run`, and `--max-memory` has the same default in both.
#[test]
fn tool_call_and_run_share_flags_and_defaults() {
    let (_tmp, root, home) = setup();
    let t = |args: &[&str]| t_in(&root, &home, args);
    let tool = toka_tests::root().join("target/tools/echo.wasm");
    t(&["tool", "add", arg(&tool)]).expect_code(0);
    let r = t(&["tool", "call", "echo", "--fuel", "unlimited", "--input", r#"{"a":1}"#]);
    r.expect_code(0);
    assert_eq!(r.stdout.trim(), r#"{"a":1}"#);
    t(&["run", "--fuel", "unlimited", arg(&agent("echo-cmd")), "args"]).expect_code(0);
    for cmd in [&["tool", "call", "echo", "--fuel", "lots"][..], &["run", "--fuel", "lots", "x.wasm"]] {
        let r = t(cmd);
        r.expect_code(2);
        assert!(r.stderr.contains("invalid fuel `lots`: expected a number or `unlimited`"), "{cmd:?}: {}", r.stderr);
    }
    let default_of = |help: &str, flag: &str| {
        let line = help.lines().skip_while(|l| !l.trim_start().starts_with(flag)).take(4).collect::<Vec<_>>().join(" ");
        line.split("[default: ").nth(1).map(|d| d.split(']').next().unwrap().to_string())
    };
    let run_help = t(&["run", "--help"]).stdout;
    let call_help = t(&["tool", "call", "--help"]).stdout;
    assert_eq!(default_of(&call_help, "--max-memory").as_deref(), Some("512MiB"), "{call_help}");
    assert!(run_help.contains("else 512MiB"), "{run_help}");
}

/// `run --repeat N` without `--json` prints the run count and the memory figures the README describes.
#[test]
fn repeat_prints_runs_and_memory() {
    let (_tmp, root, home) = setup();
    let r = t_in(&root, &home, &["run", "--repeat", "3", arg(&agent("hello-rust"))]);
    r.expect_code(0);
    let line = r.stderr.lines().find(|l| l.starts_with("toka-host: 3 runs, 0 failed; resident memory ")).unwrap_or("");
    assert!(
        line.contains(" MiB before, ")
            && line.contains(" MiB after the first run, ")
            && line.ends_with(" MiB after the last"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stdout, "{\"greeting\":\"Hello, world!\"}\n", "the (worst) run's result, once");
}

/// Reading commands never create a database (the hardening pass; checked again here): `events verify --db typo`
/// is exit 76 and leaves nothing behind, `events --db /nonexistent/dir/x.redb` creates no directory.
#[test]
fn reading_commands_create_no_database() {
    let (_tmp, root, home) = setup();
    let t = |args: &[&str]| t_in(&root, &home, args);
    let r = t(&["events", "verify", "--db", "typo.redb"]);
    r.expect_code(76);
    assert!(r.stderr.contains("typo.redb does not exist"), "{}", r.stderr);
    assert!(!root.join("typo.redb").exists());
    let missing = root.join("nonexistent/dir/x.redb");
    t(&["events", "--db", arg(&missing)]).expect_code(76);
    assert!(!root.join("nonexistent").exists());
    // Control: the home's own database, once a run made it, verifies.
    t(&["run", arg(&agent("echo-cmd")), "args"]).expect_code(0);
    t(&["events", "verify"]).expect_code(0);
}
