//! Every CLI example of the README is a test. The README's ```console blocks (`$ COMMAND`, `> ` continuation lines,
//! `? CODE` for an exit code other than 0, then the expected stdout and stderr, with `[..]` for what varies within a
//! line and `...` for lines that vary) are run by trycmd, in order, against the real binary, in a fixture directory
//! that holds what the examples name (`target/agents`, `target/tools`, `wit`, `data/`, `dirstat.wasm`), with a fresh
//! home. Blocks marked `sh` are setup commands and long-running servers (`serve`, `mcp`, `events --follow`), whose
//! behaviour `service`, `tools` and `newcomer` test; `console,ignore` blocks are the builds of "Your first agent",
//! which `scaffold` runs for every language.
//!
//! To write what the examples print now into README.md: `TRYCMD=overwrite cargo test --release --workspace --test all
//! -- readme`, then put back the `[..]` and `...` elisions where the output varies (`git diff` shows them).

use std::path::Path;
use toka_tests::{root, shared_cache, toka_host};

fn link(target: &Path, link: &Path) {
    std::os::unix::fs::symlink(target, link)
        .unwrap_or_else(|e| panic!("symlink {} -> {}: {e}", link.display(), target.display()));
}

#[test]
fn the_readme_console_examples_print_what_the_readme_shows() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().canonicalize().unwrap();
    std::fs::copy(root().join("README.md"), base.join("README.md")).unwrap();
    // trycmd runs README.md's commands in README.in/ (its `.in` directory, used in place: no sandbox copy).
    let work = base.join("README.in");
    std::fs::create_dir_all(work.join("target")).unwrap();
    for built in ["agents", "tools"] {
        let dir = root().join("target").join(built);
        assert!(dir.is_dir(), "{} is missing: run `cargo run --release -p xtask -- build-agents`", dir.display());
        link(&dir, &work.join("target").join(built));
    }
    link(&root().join("wit"), &work.join("wit"));
    link(&root().join("target/agents/dirstat.wasm"), &work.join("dirstat.wasm"));
    std::fs::create_dir_all(work.join("data/reports")).unwrap();
    std::fs::create_dir_all(work.join("out")).unwrap();
    std::fs::write(work.join("data/a.txt"), "alpha\nbeta\n").unwrap();
    std::fs::write(work.join("data/reports/q3.txt"), "revenue up\n").unwrap();
    std::fs::write(work.join("data/reports/q4.txt"), "revenue flat\n").unwrap();

    trycmd::TestCases::new()
        .register_bin("toka-host", toka_host())
        .env("TOKA_HOME", base.join("home").to_str().unwrap())
        .env("TOKA_CACHE_DIR", shared_cache().to_str().unwrap())
        .env("LANG", "C.UTF-8")
        .env("RUST_LOG", "off")
        .timeout(std::time::Duration::from_secs(120))
        .case(base.join("README.md"))
        .run();
    // `TRYCMD=overwrite` rewrites the copy with what the commands printed: bring it back to the repository (then put
    // the `[..]` elisions back where the output varies).
    if std::env::var_os("TRYCMD").is_some_and(|m| m == "overwrite") {
        std::fs::copy(base.join("README.md"), root().join("README.md")).unwrap();
    }
}
