//! Helpers for the end-to-end tests: find the real `toka-host` binary and the agent components built from source,
//! run them, and read what they printed.
//!
//! Nothing here fakes the host: every test spawns the binary that `cargo build --release --workspace` produced, on
//! components that `cargo run --release -p xtask -- build-agents` compiled from `agents/`.

pub mod llm_mock;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The `toka-host` binary built in the same profile as this test binary.
pub fn toka_host() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("TOKA_HOST_BIN") {
            return PathBuf::from(p);
        }
        // target/<profile>/deps/all-<hash> -> target/<profile>/toka-host
        let exe = std::env::current_exe().expect("current_exe");
        let bin = exe.parent().and_then(Path::parent).expect("target layout").join("toka-host");
        assert!(
            bin.exists(),
            "{} is missing: build it first with `cargo build --release --workspace` (the README's test command does)",
            bin.display()
        );
        bin
    })
    .clone()
}

/// A component built from `agents/<name>`.
pub fn agent(name: &str) -> PathBuf {
    let path = root().join("target").join("agents").join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: build the agents with `cargo run --release -p xtask -- build-agents`",
        path.display()
    );
    path
}

/// The compile cache shared by tests that do not test the cache itself (so big components compile once).
pub fn shared_cache() -> PathBuf {
    root().join("target").join("test-cache")
}

/// The toka home (and so the event database) shared by tests that do not inspect events: many test processes
/// append to it at once, which exercises the multi-process writer on every run of the suite.
pub fn shared_home() -> PathBuf {
    root().join("target").join("test-home")
}

/// A finished `toka-host` process.
#[derive(Debug)]
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// The `--json` report.
    pub fn report(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not a JSON report ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr))
    }

    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "exit code\nstdout:\n{}\nstderr:\n{}", trim(&self.stdout), trim(&self.stderr));
        self
    }
}

fn trim(s: &str) -> &str {
    if s.len() > 4000 { &s[..s.floor_char_boundary(4000)] } else { s }
}

/// Runs `toka-host` with `args` and the shared compile cache.
pub fn toka(args: &[&str]) -> Ran {
    toka_with(args, None, &[])
}

/// Runs `toka-host` with `args`, optional stdin and extra environment.
pub fn toka_with(args: &[&str], stdin: Option<&[u8]>, env: &[(&str, &str)]) -> Ran {
    let mut cmd = Command::new(toka_host());
    cmd.args(args).env("TOKA_CACHE_DIR", shared_cache()).env("TOKA_HOME", shared_home()).env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn toka-host");
    if let Some(data) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().expect("stdin pipe");
        pipe.write_all(data).expect("write stdin");
    }
    let Output { status, stdout, stderr } = child.wait_with_output().expect("wait for toka-host");
    Ran {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}
