//! Bad input of every kind is refused before any guest code runs, each with its own exit code and one line.

use std::io::Write;
use toka_tests::{agent, toka};

fn temp_file(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".wasm").tempfile().unwrap();
    f.write_all(bytes).unwrap();
    f
}

fn one_line_error(stderr: &str, prefix: &str) {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected exactly one line on stderr, got:\n{stderr}");
    assert!(lines[0].starts_with(prefix), "expected `{prefix}...`, got `{}`", lines[0]);
}

#[test]
fn file_not_found() {
    let r = toka(&["run", "/no/such/agent.wasm"]);
    r.expect_code(76);
    one_line_error(&r.stderr, "toka-host: /no/such/agent.wasm: file not found");
}

#[test]
fn not_wasm_at_all() {
    let f = temp_file(b"#!/bin/sh\necho definitely not wasm\n");
    let r = toka(&["run", f.path().to_str().unwrap()]);
    r.expect_code(73);
    assert!(r.stderr.contains("invalid WebAssembly: not a WebAssembly binary"), "{}", r.stderr);
}

#[test]
fn truncated_component() {
    let bytes = std::fs::read(agent("hello-rust")).unwrap();
    let f = temp_file(&bytes[..bytes.len() / 2]);
    let r = toka(&["run", f.path().to_str().unwrap()]);
    r.expect_code(73);
    one_line_error(&r.stderr, "toka-host: ");
    assert!(r.stderr.contains("invalid WebAssembly"), "{}", r.stderr);
}

/// A core module whose import is not WASI: named in the error.
#[test]
fn core_module_with_foreign_import() {
    let module: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version 1
        0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type section: one func type () -> ()
        0x02, 0x0c, 0x01, 0x03, b'e', b'n', b'v', 0x04, b's', b'p', b'a', b'm', 0x00, 0x00, // import env::spam
    ];
    let f = temp_file(module);
    let r = toka(&["run", f.path().to_str().unwrap()]);
    r.expect_code(74);
    one_line_error(&r.stderr, "toka-host: ");
    assert!(r.stderr.contains("imports `env::spam`"), "{}", r.stderr);
}

/// A valid component that is neither an agent nor a command.
#[test]
fn wrong_world() {
    let empty_component: &[u8] = &[0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
    let f = temp_file(empty_component);
    let r = toka(&["run", f.path().to_str().unwrap()]);
    r.expect_code(75);
    one_line_error(&r.stderr, "toka-host: ");
    assert!(r.stderr.contains("wrong world"), "{}", r.stderr);
}

/// The token is checked on one thread while the component loads on another, but the refusals keep their order: a
/// broken component, then a wrong world, then the grants on the host, then the token; each check is shown to refuse
/// on its own at the end (the positive control of the ones before it).
#[test]
fn refusals_keep_their_order_while_the_token_is_checked_beside_the_load() {
    let good = agent("hello-rust");
    let truncated = temp_file(&std::fs::read(&good).unwrap()[..1000]);
    let empty_component = temp_file(&[0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00]);
    // A well-formed token (its limits are read before anything loads) for another agent.
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("other.token");
    toka(&["token", "mint", "--agent", "someone-else", "--out", token.to_str().unwrap()]).expect_code(0);
    let refused_everywhere = ["--token", token.to_str().unwrap(), "--dir", "/no/such/dir::/data"];
    let run = |component: &std::path::Path, extra: &[&str]| {
        let mut args = vec!["run"];
        args.extend_from_slice(extra);
        args.push(component.to_str().unwrap());
        toka(&args)
    };
    let r = run(truncated.path(), &refused_everywhere);
    r.expect_code(73);
    one_line_error(&r.stderr, "toka-host: ");
    assert!(r.stderr.contains("invalid WebAssembly"), "{}", r.stderr);
    let r = run(empty_component.path(), &refused_everywhere);
    r.expect_code(75);
    assert!(r.stderr.contains("wrong world"), "{}", r.stderr);
    let r = run(&good, &refused_everywhere);
    r.expect_code(72);
    one_line_error(&r.stderr, "toka-host: grant refused: dir /no/such/dir::/data:rw: cannot open host directory");
    let r = run(&good, &refused_everywhere[..2]);
    r.expect_code(78);
    one_line_error(&r.stderr, "toka-host: token refused: token is not for agent hello-rust");
    run(&good, &[]).expect_code(0);
}

#[test]
fn input_must_be_json() {
    let r = toka(&["run", "--input", "{not json", agent("hello-rust").to_str().unwrap()]);
    r.expect_code(77);
    one_line_error(&r.stderr, "toka-host: invalid input: task input is not valid JSON");
}

#[test]
fn dir_grant_of_missing_directory_is_refused() {
    let r = toka(&["run", "--dir", "/no/such/dir::/data", agent("hello-rust").to_str().unwrap()]);
    r.expect_code(72);
    one_line_error(&r.stderr, "toka-host: grant refused: dir /no/such/dir::/data:rw: cannot open host directory");
}

#[test]
fn env_grant_of_unset_variable_is_refused() {
    let r = toka(&["run", "--env", "TOKA_TEST_SURELY_UNSET", agent("hello-rust").to_str().unwrap()]);
    r.expect_code(72);
    one_line_error(&r.stderr, "toka-host: grant refused: env TOKA_TEST_SURELY_UNSET: not set");
}

#[test]
fn refusals_are_reported_in_json_too() {
    let r = toka(&["run", "--json", "/no/such/agent.wasm"]);
    r.expect_code(76);
    let report = r.report();
    assert_eq!(report["outcome"], "file-not-found");
    assert_eq!(report["exit_code"], 76);
}

#[test]
fn agents_do_not_take_arguments() {
    let r = toka(&["run", agent("hello-rust").to_str().unwrap(), "extra", "args"]);
    r.expect_code(77);
    assert!(r.stderr.contains("this is an agent"), "{}", r.stderr);
}

#[test]
fn input_from_a_file_and_from_stdin() {
    let f = temp_file(br#"{"name":"File"}"#);
    let a = agent("hello-rust");
    let r = toka(&["run", "--input-file", f.path().to_str().unwrap(), a.to_str().unwrap()]);
    r.expect_code(0);
    assert_eq!(r.stdout, "{\"greeting\":\"Hello, File!\"}\n");
    let r = toka_tests::toka_with(&["run", "--input-file", "-", a.to_str().unwrap()], Some(br#"{"name":"Pipe"}"#), &[]);
    r.expect_code(0);
    assert_eq!(r.stdout, "{\"greeting\":\"Hello, Pipe!\"}\n");
    let r = toka(&["run", "--input-file", "/no/such/input.json", a.to_str().unwrap()]);
    r.expect_code(77);
    one_line_error(&r.stderr, "toka-host: invalid input: input file /no/such/input.json not found");
}

#[test]
fn bad_flag_values_are_usage_errors() {
    let a = agent("hello-rust");
    for (flag, value) in [("--fuel", "lots"), ("--timeout", "soon"), ("--max-memory", "12 parsecs"), ("--dir", "::/x")]
    {
        let r = toka(&["run", flag, value, a.to_str().unwrap()]);
        r.expect_code(2);
        assert!(r.stderr.contains(&format!("invalid value '{value}' for '{flag}")), "{}", r.stderr);
    }
}
