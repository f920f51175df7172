//! Progress of long work, as plain lines when stderr is not a terminal: a first compile of a large component (the
//! Python agent, 5-20 s) says it is compiling and then that later runs are fast; a later run from the compile cache
//! says nothing.

use toka_tests::{agent, toka_raw};

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
