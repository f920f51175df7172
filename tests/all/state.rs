//! Agent state: deny by default, read-only and read-write grants, persistence across runs, limits, operator access.

use std::path::Path;
use toka_tests::{Ran, agent, toka_with};

fn notes(home: &Path, state: Option<&str>, input: &str) -> Ran {
    let a = agent("notes");
    let mut args = vec!["run", "--json", "--input", input];
    if let Some(s) = state {
        args.extend(["--state", s]);
    }
    args.push(a.to_str().unwrap());
    toka_with(&args, None, &[("TOKA_HOME", home.to_str().unwrap())])
}

#[test]
fn denied_without_a_grant_read_only_with_ro() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let r = notes(h, None, r#"{"op":"get","key":"k"}"#);
    r.expect_code(65);
    assert_eq!(r.report()["agent_error"]["message"], "state: no state grant (state:ro or state:rw)");
    let r = notes(h, Some("ro"), r#"{"op":"set","key":"k","value":"v"}"#);
    r.expect_code(65);
    assert_eq!(r.report()["agent_error"]["message"], "state: state is granted read-only (state:ro)");
    notes(h, Some("ro"), r#"{"op":"get","key":"k"}"#).expect_code(0);
}

#[test]
fn state_persists_across_runs_and_processes() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    for expected in 1..=3 {
        let r = notes(h, Some("rw"), r#"{"op":"count"}"#);
        r.expect_code(0);
        assert_eq!(r.report()["result"], format!(r#"{{"runs":{expected}}}"#));
    }
    notes(h, Some("rw"), r#"{"op":"set","key":"note/a","value":"alpha"}"#).expect_code(0);
    notes(h, Some("rw"), r#"{"op":"set","key":"note/b","value":"beta"}"#).expect_code(0);
    let r = notes(h, Some("ro"), r#"{"op":"list","prefix":"note/"}"#);
    assert_eq!(r.report()["result"], r#"{"keys":["note/a","note/b"]}"#);
    let r = notes(h, Some("rw"), r#"{"op":"delete","key":"note/a"}"#);
    assert_eq!(r.report()["result"], r#"{"existed":true}"#);
    let r = notes(h, Some("ro"), r#"{"op":"get","key":"note/a"}"#);
    assert_eq!(r.report()["result"], r#"{"value":null}"#);

    // Every write is an event; the operator sees and edits the same state.
    let env = [("TOKA_HOME", h.to_str().unwrap())];
    let ev = toka_with(&["events", "--json", "--kind", "state.write"], None, &env);
    assert_eq!(ev.stdout.lines().count(), 6);
    let r = toka_with(&["state", "get", "--agent", "notes", "note/b"], None, &env);
    r.expect_code(0);
    assert_eq!(r.stdout, "beta\n");
    toka_with(&["state", "set", "--agent", "notes", "note/c", "from the operator"], None, &env).expect_code(0);
    let r = notes(h, Some("ro"), r#"{"op":"get","key":"note/c"}"#);
    assert_eq!(r.report()["result"], r#"{"value":"from the operator"}"#);
    let r = toka_with(&["state", "list", "--agent", "notes", "note/"], None, &env);
    assert_eq!(r.stdout, "note/b\nnote/c\n");
}

#[test]
fn limits_are_enforced_with_clear_errors() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let r = notes(h, Some("rw"), r#"{"op":"big","bytes":1048577}"#);
    r.expect_code(65);
    assert_eq!(
        r.report()["agent_error"]["message"],
        "state too large: value is 1048577 bytes, over the 1048576 byte limit"
    );
    let long_key = "k".repeat(300);
    let r = notes(h, Some("rw"), &format!(r#"{{"op":"set","key":"{long_key}","value":"v"}}"#));
    r.expect_code(65);
    assert_eq!(r.report()["agent_error"]["kind"], "invalid-input");
    notes(h, Some("rw"), r#"{"op":"big","bytes":1048576}"#).expect_code(0);
}
