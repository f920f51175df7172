//! Plain `wasi:cli/command` components run like under `wasmtime run`: arguments, environment, preopens, stdin and
//! the guest's own exit status.

use toka_tests::{agent, toka, toka_with};

fn echo() -> String {
    agent("echo-cmd").to_str().unwrap().to_string()
}

#[test]
fn arguments_and_granted_env_only() {
    let e = echo();
    let r = toka_with(&["run", "--env", "GREETING=hi", &e, "a", "b c", "--flag"], None, &[("LEAK", "no")]);
    r.expect_code(0);
    assert_eq!(r.stdout, "args: a b c --flag\nenv: GREETING=hi\n");
}

/// `std::process::exit(n)` goes through the preview 1 adapter, whose `proc_exit` (wasmtime 48) maps any non-zero
/// status to `wasi:cli/exit.exit(err)`, i.e. status 1, exactly as `wasmtime run` reports it for the same component.
#[test]
fn exit_status_passes_through() {
    let e = echo();
    toka(&["run", &e, "exit", "0"]).expect_code(0);
    toka(&["run", &e, "exit", "3"]).expect_code(1);
    let r = toka(&["run", "--json", &e, "exit", "42"]);
    r.expect_code(1);
    let rep = r.report();
    assert_eq!(rep["outcome"], "exited");
    assert_eq!(rep["error"], "exited with status 1");
}

#[test]
fn files_only_through_a_dir_grant() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("note.txt"), "from the host\n").unwrap();
    let e = echo();
    let grant = format!("{}::/work:ro", tmp.path().display());
    let r = toka(&["run", "--dir", &grant, &e, "cat", "/work/note.txt"]);
    r.expect_code(0);
    assert_eq!(r.stdout, "from the host\n");
    let r = toka(&["run", &e, "cat", "/work/note.txt"]);
    r.expect_code(1);
    assert!(r.stdout.is_empty());
}

#[test]
fn stdin_is_closed_unless_inherited() {
    let e = echo();
    let r = toka_with(&["run", &e, "stdin"], Some(b"piped"), &[]);
    r.expect_code(0);
    assert_eq!(r.stdout, "");
    let r = toka_with(&["run", "--inherit-stdin", &e, "stdin"], Some(b"piped"), &[]);
    r.expect_code(0);
    assert_eq!(r.stdout, "piped");
}
