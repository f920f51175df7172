//! The on-disk compile cache: the second run of a component loads the compiled artifact instead of compiling.

use toka_tests::{agent, toka_with};

#[test]
fn second_run_hits_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().to_str().unwrap();
    let a = agent("hello-rust");
    let args = ["run", "--json", "--cache-dir", dir, a.to_str().unwrap()];
    let first = toka_with(&args, None, &[]);
    first.expect_code(0);
    assert_eq!(first.report()["component"]["cache_hit"], false);
    let second = toka_with(&args, None, &[]);
    second.expect_code(0);
    let rep = second.report();
    assert_eq!(rep["component"]["cache_hit"], true);
    assert_eq!(rep["result"], first.report()["result"]);
}

#[test]
fn no_cache_never_hits() {
    let a = agent("hello-rust");
    for _ in 0..2 {
        let r = toka_with(&["run", "--json", "--no-cache", a.to_str().unwrap()], None, &[]);
        r.expect_code(0);
        assert_eq!(r.report()["component"]["cache_hit"], false);
    }
}
