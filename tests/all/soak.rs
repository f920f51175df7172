//! 200 agent runs in a row in one process: memory must not grow with the number of runs.

use toka_tests::{agent, toka};

/// Resident memory may grow by at most this much between the end of the first run and the end of the 200th.
/// Each run's sandbox (store, instances, WASI tables, captured output) is dropped before the next; a leak of even
/// 64 KiB per run would show as 12.5 MiB here.
const GROWTH_BOUND: u64 = 8 << 20;

#[test]
fn two_hundred_runs_without_memory_growth() {
    let r = toka(&[
        "run",
        "--json",
        "--repeat",
        "200",
        "--input",
        r#"{"name":"soak"}"#,
        agent("hello-rust").to_str().unwrap(),
    ]);
    r.expect_code(0);
    let rep = r.report();
    assert_eq!(rep["repeat"]["runs"], 200);
    assert_eq!(rep["repeat"]["failures"], 0);
    let first = rep["repeat"]["rss_after_first_bytes"].as_u64().unwrap();
    let last = rep["repeat"]["rss_after_last_bytes"].as_u64().unwrap();
    assert!(first > 0);
    assert!(last <= first + GROWTH_BOUND, "RSS grew from {first} to {last} bytes over 200 runs");
}
