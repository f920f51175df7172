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

/// A component loaded often is never rewritten in the cache. wasmtime's cache worker recompresses an artifact used
/// 256 times (zstd level 20) from a thread of the process that loaded it; the host's cache authentication then no
/// longer vouched for the rewritten file, so the next run deleted it and compiled the component again. Here the
/// artifact's use count is set past the threshold, then a run lasts long enough for the worker (4 s): the artifact
/// must be byte for byte the one the host wrote, and the next run must load it. Positive control: the first run
/// compiles, the second loads. Before, the long run's worker rewrote the file and the next run compiled.
#[test]
fn an_artifact_used_often_is_not_rewritten_and_keeps_being_loaded() {
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().to_str().unwrap();
    let hostile = agent("hostile");
    let run = |input: &str, timeout: &str| {
        let args = ["run", "--json", "--cache-dir", dir, "--timeout", timeout, "--fuel", "1000000000000"];
        let args = [&args[..], &["--input", input, hostile.to_str().unwrap()]].concat();
        toka_with(&args, None, &[]).report()["component"]["cache_hit"].clone()
    };
    let quick = r#"{"attack":"spin"}"#;
    assert_eq!(run(quick, "10ms"), false, "the first run compiles");
    assert_eq!(run(quick, "10ms"), true, "the second loads");
    let modules = cache.path().join("compiled").join("modules");
    let files = || -> Vec<(std::path::PathBuf, Vec<u8>)> {
        let mut out: Vec<_> = std::fs::read_dir(&modules)
            .unwrap()
            .flatten()
            .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
            .map(|f| f.path())
            .filter(|p| p.extension().is_none_or(|e| e != "stats"))
            .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
            .collect();
        out.sort();
        out
    };
    let before = files();
    assert_eq!(before.len(), 1, "one artifact: {:?}", before.iter().map(|f| &f.0).collect::<Vec<_>>());
    let stats = before[0].0.with_file_name(format!("{}.stats", before[0].0.file_name().unwrap().to_str().unwrap()));
    let counted = std::fs::read_to_string(&stats).unwrap();
    assert!(counted.contains("usages = "), "{counted}");
    std::fs::write(&stats, "usages = 1000\noptimized-compression = 3\n").unwrap();
    assert_eq!(run(quick, "4s"), true, "the long run loads it");
    let after = files();
    assert!(
        after == before,
        "the artifact was rewritten or another file appeared: {:?}",
        after.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    assert_eq!(run(quick, "10ms"), true, "and the next run still loads it");
}
