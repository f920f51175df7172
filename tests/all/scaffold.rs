//! Projects of one's own, as a newcomer makes them: `toka-host new KIND NAME --lang L` in a temporary directory
//! outside the repository, `toka-host build --test` in it (the toolchains of `scripts/setup-toolchains`), then
//! `toka-host run` of the result. One test per language and kind. A language is skipped only when its toolchain is
//! absent, and never when `TOKA_REQUIRE_TOOLCHAINS` is set (`scripts/test` sets it, so CI never skips).
//!
//! Each test prints how long scaffolding, the first build and the first run took (a figure for the README, not an
//! assertion: timings are not tested).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;
use toka_tests::{Ran, root, shared_cache, toka_host};

/// Runs toka-host in `cwd` with the home `home`.
fn t_in(cwd: &Path, home: &Path, args: &[&str]) -> Ran {
    let mut cmd = Command::new(toka_host());
    cmd.args(args)
        .current_dir(cwd)
        .env("TOKA_HOME", home)
        .env("TOKA_CACHE_DIR", shared_cache())
        // Rust projects share one std build (it takes minutes the first time) in the repository's target/.
        .env("CARGO_TARGET_DIR", root().join("target").join("scaffold-cargo"))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    let out = cmd.output().expect("spawn toka-host");
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Why `lang`'s toolchain is absent, if it is.
fn missing_toolchain(lang: &str) -> Option<String> {
    let tools = std::env::var_os("TOKA_TOOLS").map_or_else(|| root().join(".tools"), PathBuf::from);
    let need: Vec<PathBuf> = match lang {
        "rust" => vec!["/usr/bin/cargo".into(), "/usr/lib/wasm32-wasi".into()],
        "c" => vec!["/usr/bin/clang".into(), "/usr/lib/wasm32-wasi/libc.a".into()],
        "python" => vec![tools.join("venv/bin/componentize-py")],
        "js" => vec![tools.join("js/node_modules/.bin/componentize-js")],
        "go" => vec![tools.join("venv/bin/go")],
        "zig" => vec![tools.join("venv/bin/python")],
        other => panic!("unknown language {other}"),
    };
    let absent: Vec<String> = need.iter().filter(|p| !p.exists()).map(|p| p.display().to_string()).collect();
    if absent.is_empty() {
        return None;
    }
    let why = format!("{lang} toolchain absent ({}): run scripts/setup-toolchains", absent.join(", "));
    assert!(std::env::var_os("TOKA_REQUIRE_TOOLCHAINS").is_none(), "{why}");
    Some(why)
}

/// What a finished project is, for the checks after its build.
struct Project {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    home: PathBuf,
    name: String,
}

impl Project {
    fn run(&self, args: &[&str]) -> Ran {
        t_in(&self.dir, &self.home, args)
    }
}

/// Scaffolds `kind NAME --lang lang` outside the repository and builds it with `--test`; `None` if the toolchain
/// is absent.
fn scaffold_and_build(kind: &str, lang: &str) -> Option<Project> {
    if let Some(why) = missing_toolchain(lang) {
        eprintln!("skipped: {why}");
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().canonicalize().unwrap();
    assert!(!base.starts_with(root()), "the project must be outside the repository");
    let home = base.join("home");
    let name = format!("my-{lang}-{kind}");
    let started = Instant::now();
    let made = t_in(&base, &home, &["new", kind, &name, "--lang", lang]);
    made.expect_code(0);
    let scaffolded = started.elapsed();
    assert!(made.stdout.contains(&format!("next: cd {name} && toka-host build --test")), "{}", made.stdout);
    let dir = base.join(&name);
    let built = t_in(&dir, &home, &["build", "--test"]);
    let total = started.elapsed();
    built.expect_code(0);
    let expect = if kind == "command" { "Hello, Ada!" } else { r#"{"greeting":"Hello, Ada!"}"# };
    assert!(built.stdout.contains(&format!("test passed: {expect}")), "{}\n{}", built.stdout, built.stderr);
    assert!(dir.join(format!("{name}.wasm")).is_file());
    eprintln!(
        "{kind} in {lang}: scaffolded in {:.2} s, built and run once in {:.1} s (scaffold to first run {:.1} s)",
        scaffolded.as_secs_f64(),
        (total - scaffolded).as_secs_f64(),
        total.as_secs_f64()
    );
    Some(Project { _tmp: tmp, dir, home, name })
}

/// An agent runs as the README's hello agent does: its result on stdout, its log on stderr through the host.
fn agent_in(lang: &str) {
    let Some(p) = scaffold_and_build("agent", lang) else { return };
    let wasm = format!("{}.wasm", p.name);
    let r = p.run(&["run", "--input", r#"{"name":"Grace"}"#, &wasm]);
    r.expect_code(0);
    assert_eq!(r.stdout, "{\"greeting\":\"Hello, Grace!\"}\n");
    assert!(r.stderr.contains(&format!("[{}] info: greeting Grace", p.name)), "{}", r.stderr);
    // Its refusal of bad input is the agent's own error (exit 65), and the run is recorded under its name.
    let bad = p.run(&["run", "--input", r#"{"name":""}"#, &wasm]);
    bad.expect_code(65);
    let runs = p.run(&["runs", "--json", "--agent", &p.name]);
    assert_eq!(runs.stdout.lines().count(), 3, "the test run, and these two: {}", runs.stdout);
}

/// A tool installs, describes itself and answers a call.
fn tool_in(lang: &str) {
    let Some(p) = scaffold_and_build("tool", lang) else { return };
    let wasm = format!("{}.wasm", p.name);
    p.run(&["tool", "add", &wasm]).expect_code(0);
    let r = p.run(&["tool", "call", &p.name, "--input", r#"{"name":"Grace"}"#]);
    r.expect_code(0);
    assert_eq!(r.stdout.trim(), r#"{"greeting":"Hello, Grace!"}"#);
    // The host checks the input against the tool's schema before the tool runs: exit 77.
    p.run(&["tool", "call", &p.name, "--input", r#"{"nom":"Grace"}"#]).expect_code(77);
}

/// A command gets its arguments, as under `wasmtime run`.
fn command_in(lang: &str) {
    let Some(p) = scaffold_and_build("command", lang) else { return };
    let r = p.run(&["run", &format!("{}.wasm", p.name), "Grace", "Hopper"]);
    r.expect_code(0);
    assert_eq!(r.stdout, "Hello, Grace Hopper!\n");
}

#[test]
fn a_rust_agent_from_outside_the_repository() {
    agent_in("rust");
}

#[test]
fn a_python_agent_from_outside_the_repository() {
    agent_in("python");
}

#[test]
fn a_js_agent_from_outside_the_repository() {
    agent_in("js");
}

#[test]
fn a_c_agent_from_outside_the_repository() {
    agent_in("c");
}

#[test]
fn a_rust_tool_from_outside_the_repository() {
    tool_in("rust");
}

#[test]
fn a_python_tool_from_outside_the_repository() {
    tool_in("python");
}

#[test]
fn a_js_tool_from_outside_the_repository() {
    tool_in("js");
}

/// The C tool (the fastest toolchain) also goes the rest of the way: packed from its project directory, signed,
/// installed on another home that trusts the publisher, and called there by name.
#[test]
fn a_c_tool_from_outside_the_repository() {
    tool_in("c");
    let Some(p) = scaffold_and_build("tool", "c") else { return };
    p.run(&["publisher", "init", "--name", "me"]).expect_code(0);
    let show = p.run(&["publisher", "show", "--json"]);
    let public =
        serde_json::from_str::<serde_json::Value>(&show.stdout).unwrap()["public_key"].as_str().unwrap().to_string();
    let packed = p.run(&["plugin", "pack", ".", "--sign", "--license", "MIT"]);
    packed.expect_code(0);
    let package = p.dir.join(format!("{}-0.1.0.tokapkg", p.name));
    assert!(package.is_file(), "{}", packed.stdout);
    let other = p.dir.parent().unwrap().join("other-home");
    let t = |args: &[&str]| t_in(&p.dir, &other, args);
    t(&["trust", "add", "me", &public]).expect_code(0);
    t(&["plugin", "install", "--yes", package.to_str().unwrap()]).expect_code(0);
    let r = t(&["tool", "call", &p.name, "--input", r#"{"name":"Grace"}"#]);
    r.expect_code(0);
    assert_eq!(r.stdout.trim(), r#"{"greeting":"Hello, Grace!"}"#);
    // A project not built yet is refused with what to do.
    std::fs::remove_file(p.dir.join(format!("{}.wasm", p.name))).unwrap();
    let r = p.run(&["plugin", "pack", ".", "--sign"]);
    r.expect_code(76);
    assert!(r.stderr.contains("not built yet (run toka-host build in"), "{}", r.stderr);
}

#[test]
fn a_go_command_from_outside_the_repository() {
    command_in("go");
}

#[test]
fn a_zig_command_from_outside_the_repository() {
    command_in("zig");
}

/// The friction of issue 11: a plain `cargo build` of a Rust agent gives a core module that `run` refuses (exit 74);
/// the message now says how to fix it, and following it (`toka-host componentize`) gives a component that runs.
#[test]
fn a_core_module_of_a_rust_agent_is_refused_with_the_fix_and_componentize_makes_it_run() {
    let Some(p) = scaffold_and_build("agent", "rust") else { return };
    let core =
        root().join("target/scaffold-cargo/wasm32-wasip1/release").join(format!("{}.wasm", p.name.replace('-', "_")));
    let core = core.to_str().unwrap();
    let r = p.run(&["run", core]);
    r.expect_code(74);
    assert!(
        r.stderr.contains("core module imports `toka:agent/")
            && r.stderr.contains(&format!("run `toka-host componentize {core} -o OUT.wasm`")),
        "{}",
        r.stderr
    );
    let made = p.run(&["componentize", core, "-o", "fixed.wasm"]);
    made.expect_code(0);
    assert!(made.stdout.starts_with("wrote fixed.wasm ("), "{}", made.stdout);
    let r = p.run(&["run", "--input", r#"{"name":"Ada"}"#, "fixed.wasm"]);
    r.expect_code(0);
    assert_eq!(r.stdout, "{\"greeting\":\"Hello, Ada!\"}\n");
    // A component is not componentized again, and garbage is invalid WebAssembly.
    p.run(&["componentize", "fixed.wasm", "-o", "again.wasm"]).expect_code(77);
    std::fs::write(p.dir.join("junk.wasm"), b"not wasm").unwrap();
    p.run(&["componentize", "junk.wasm", "-o", "x.wasm"]).expect_code(73);
}

/// `new` refuses what it cannot make, saying why, and never writes over an existing directory's files; `build`
/// outside a project says how to make one. Control: the same `new` with a good name and an empty directory works.
#[test]
fn new_and_build_refuse_what_they_cannot_do() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let home = base.join("home");
    let t = |args: &[&str]| t_in(base, &home, args);
    let r = t(&["new", "agent", "My_Agent", "--lang", "python"]);
    r.expect_code(2);
    assert!(r.stderr.contains("invalid name `My_Agent`: use lowercase letters, digits and `-`"), "{}", r.stderr);
    let r = t(&["new", "command", "x", "--lang", "rust"]);
    r.expect_code(2);
    assert!(r.stderr.contains("a command cannot be written in rust here"), "{}", r.stderr);
    let r = t(&["new", "agent", "x", "--lang", "go"]);
    r.expect_code(2);
    assert!(r.stderr.contains("agents and tools: rust, python, js, c; commands: go, zig"), "{}", r.stderr);
    std::fs::create_dir(base.join("taken")).unwrap();
    std::fs::write(base.join("taken/agent.py"), "mine").unwrap();
    let r = t(&["new", "agent", "taken", "--lang", "python"]);
    r.expect_code(2);
    assert!(r.stderr.contains("already exists and is not empty"), "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(base.join("taken/agent.py")).unwrap(), "mine");
    std::fs::create_dir(base.join("empty")).unwrap();
    t(&["new", "agent", "fresh", "--lang", "python", "--path", "empty"]).expect_code(0);
    assert!(base.join("empty/agent.py").is_file() && base.join("empty/toka-project.toml").is_file());

    let r = t(&["build"]);
    r.expect_code(1);
    assert!(r.stderr.contains("toka-project.toml: file not found: not a toka-host project"), "{}", r.stderr);

    // A project's files are hostile too: a manifest without end is read bounded, and a `build` directory that is a
    // symlink is refused before anything is written through it.
    let project = base.join("empty");
    let manifest = std::fs::read(project.join("toka-project.toml")).unwrap();
    std::fs::remove_file(project.join("toka-project.toml")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", project.join("toka-project.toml")).unwrap();
    let r = t_in(&project, &home, &["build"]);
    r.expect_code(1);
    assert!(r.stderr.contains("toka-project.toml: over 64 KiB"), "{}", r.stderr);
    std::fs::remove_file(project.join("toka-project.toml")).unwrap();
    std::fs::write(project.join("toka-project.toml"), manifest).unwrap();
    let outside = base.join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, project.join("build")).unwrap();
    let r = t_in(&project, &home, &["build"]);
    r.expect_code(1);
    assert!(r.stderr.contains("build: a symlink; the build writes only inside the project"), "{}", r.stderr);
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "nothing was written through the symlink");
}
