//! Progress of long work, as plain lines when stderr is not a terminal: a first compile of a large component (the
//! Python agent, 5-20 s) says it is compiling and then that later runs are fast; a later run from the compile cache
//! says nothing. A run starts no thread of its own to wait out those delays.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use toka_tests::{agent, shared_cache, toka_host, toka_raw};

#[test]
fn a_first_compile_says_so_and_a_cached_run_is_quiet() {
    let cache = tempfile::tempdir().unwrap();
    let python = agent("hello-python");
    let shown = python.display().to_string();
    let args = [
        "run",
        "--cache-dir",
        cache.path().to_str().unwrap(),
        "--input",
        r#"{"name":"Ada"}"#,
        python.to_str().unwrap(),
    ];
    let first = toka_raw(&args, None, &[]);
    first.expect_code(0);
    assert_eq!(first.stdout, "{\"greeting\":\"Hello, Ada!\"}\n");
    let lines: Vec<&str> = first.stderr.lines().collect();
    let compiling = lines.iter().position(|l| l.starts_with(&format!("toka-host: compiling {shown} (")));
    let compiled = lines.iter().position(|l| {
        l.starts_with(&format!("toka-host: compiled {shown} in "))
            && l.ends_with(" s; later runs load it from the compile cache")
    });
    let greeted = lines.iter().position(|l| l.contains("info: greeting Ada"));
    let (Some(compiling), Some(compiled), Some(greeted)) = (compiling, compiled, greeted) else {
        panic!("expected the compile to be said, then the guest's log:\n{}", first.stderr);
    };
    assert!(compiling < compiled && compiled < greeted, "{}", first.stderr);
    assert!(lines[compiling].ends_with(" MiB) ..."), "the size and a plain line: {}", lines[compiling]);
    assert_eq!(lines.len(), 3, "no other line, no terminal escape codes:\n{}", first.stderr);

    // Loaded from the cache: in milliseconds, so nothing is said.
    let second = toka_raw(&args, None, &[]);
    second.expect_code(0);
    assert_eq!(second.stdout, first.stdout);
    assert!(!second.stderr.contains("toka-host: "), "{}", second.stderr);
}

/// A run starts no thread of its own to wait out progress delays: its engine's epoch ticker looks after them (the
/// test above shows that a long compile is still said). Seen in `/proc` while a guest sleeps; the control is that
/// the run's other threads (the ticker, the log's writer) are seen there, so the look is not blind.
#[test]
fn a_run_waits_out_progress_delays_on_its_engines_ticker() {
    let home = tempfile::tempdir().unwrap();
    let input = r#"{"attack":"calls","calls":[{"sleep":{"ms":3000}}]}"#;
    let mut child = Command::new(toka_host())
        .args(["run", "--timeout", "20s", "--input", input, agent("hostile").to_str().unwrap()])
        .env("TOKA_HOME", home.path())
        .env("TOKA_CACHE_DIR", shared_cache())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let tasks = format!("/proc/{}/task", child.id());
    let names = || -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(&tasks) else { return Vec::new() };
        dir.flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
            .map(|n| n.trim().into())
            .collect()
    };
    // Looked at once the ticker and the log's writer are up (the load may still be under way), and again 300 ms later,
    // while the guest sleeps (3 s).
    let started = Instant::now();
    let seen = loop {
        let seen = names();
        if seen.iter().any(|n| n == "toka-epoch") && seen.iter().any(|n| n == "toka-events") {
            break seen;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "the run's threads never showed: {seen:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(300));
    let later = names();
    assert!(!seen.iter().chain(&later).any(|n| n == "toka-progress"), "{seen:?} then {later:?}");
    assert!(child.wait().unwrap().success());
}
