//! Rust agents: one `cargo build` of the `agents/` workspace for wasm32-wasip1, then in-process componentization.
//!
//! The build uses Debian's toolchain (`/usr/bin/cargo`, Rust with its std source) rather than rustup's, because
//! wasm32-wasip1's std is built from source (`-Zbuild-std`, hence `RUSTC_BOOTSTRAP=1`) against Debian's wasi-libc
//! and linked with `wasm-ld`. Cargo's own variables inherited from `cargo run -p xtask` are removed so that they
//! cannot point the inner build at rustup's toolchain or at the host's target directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::Layout;
use crate::agents::{Agent, Kind};
use crate::component::{self, Adapter};

const CARGO: &str = "/usr/bin/cargo";
const WASI_LIBC: &str = "/usr/lib/wasm32-wasi";
const TARGET: &str = "wasm32-wasip1";
/// The target of WASI 0.3 programs: std brings in no WASI import there, so the component's WASI imports are only the
/// 0.3 ones its bindings declare.
const P3_TARGET: &str = "wasm32-unknown-unknown";

/// The cargo target an agent is built for.
pub fn target_of(kind: Kind) -> &'static str {
    if matches!(kind, Kind::RustP3Command | Kind::RustP3Agent | Kind::RustP3Tool) { P3_TARGET } else { TARGET }
}

/// The Rust agents grouped by cargo target (one cargo invocation each), in a fixed order.
pub fn targets_of<'a>(agents: &[&'a Agent]) -> Vec<(&'static str, Vec<&'a str>)> {
    let mut groups: Vec<(&'static str, Vec<&'a str>)> = Vec::new();
    for agent in agents {
        let target = target_of(agent.kind);
        match groups.iter_mut().find(|(t, _)| *t == target) {
            Some((_, crates)) => crates.push(agent.name),
            None => groups.push((target, vec![agent.name])),
        }
    }
    groups
}

/// Variables set by rustup or by the outer `cargo run` that would redirect or reconfigure the inner build.
const INHERITED_BUILD_VARS: &[&str] = &[
    "CARGO",
    "CARGO_BUILD_RUSTC",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_MAKEFLAGS",
    "CARGO_TARGET_DIR",
    "RUSTC",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTC_WRAPPER",
    "RUSTDOC",
    "RUSTDOCFLAGS",
    "RUSTUP_TOOLCHAIN",
];

/// The cargo target directory of the agents workspace.
fn target_dir(layout: &Layout) -> PathBuf {
    layout.agents.join("target")
}

/// Builds the given crates of the agents workspace for `target` in release mode; returns how long cargo took.
pub fn cargo_build(layout: &Layout, target: &str, crates: &[&str]) -> Result<Duration> {
    for (path, what) in [(CARGO, "Debian's cargo (cargo-web)"), (WASI_LIBC, "wasi-libc")] {
        if !Path::new(path).exists() {
            bail!("{what} is missing ({path} not found): run scripts/setup-toolchains");
        }
    }
    let mut cargo = Command::new(CARGO);
    cargo
        .current_dir(&layout.agents)
        .args(["build", "--release", "--target", target, "-Zbuild-std=std,panic_abort"])
        .args(crates.iter().flat_map(|name| ["-p", name]));
    for var in INHERITED_BUILD_VARS {
        cargo.env_remove(var);
    }
    cargo
        .env("PATH", "/usr/bin:/bin")
        .env("CARGO_TARGET_DIR", target_dir(layout))
        .env("CARGO_TARGET_WASM32_WASIP1_LINKER", "wasm-ld")
        .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER", "wasm-ld")
        .env("RUSTFLAGS", format!("-L native={WASI_LIBC}"))
        .env("RUSTC_BOOTSTRAP", "1");
    let started = Instant::now();
    let status = cargo.status().with_context(|| format!("running {CARGO}"))?;
    if !status.success() {
        bail!("`cargo build` of {} exited with {status}", crates.join(", "));
    }
    Ok(started.elapsed())
}

/// Turns the agent's freshly built core module into a component.
pub fn componentize(layout: &Layout, agent: &Agent) -> Result<Vec<u8>> {
    // A cdylib's artifact is named after its lib target (dashes become underscores), a binary after the package.
    let (file, adapter) = match agent.kind {
        Kind::RustReactor | Kind::RustTool => {
            (format!("{}.wasm", agent.name.replace('-', "_")), Some(Adapter::Reactor))
        }
        Kind::RustCommand => (format!("{}.wasm", agent.name), Some(Adapter::Command)),
        Kind::RustP3Command | Kind::RustP3Agent | Kind::RustP3Tool => {
            let file = format!("{}.wasm", agent.name.replace('-', "_"));
            let core_path = target_dir(layout).join(P3_TARGET).join("release").join(file);
            let core = std::fs::read(&core_path).with_context(|| format!("reading {}", core_path.display()))?;
            return component::encode_plain(&core).with_context(|| format!("componentizing {}", core_path.display()));
        }
        // An Extism plugin stays a core module.
        Kind::ExtismPlugin => (format!("{}.wasm", agent.name.replace('-', "_")), None),
        other => bail!("{} is not a Rust agent ({other:?})", agent.name),
    };
    let core_path = target_dir(layout).join(TARGET).join("release").join(file);
    let core = std::fs::read(&core_path).with_context(|| format!("reading {}", core_path.display()))?;
    match adapter {
        Some(adapter) => {
            component::encode(&core, adapter).with_context(|| format!("componentizing {}", core_path.display()))
        }
        None => Ok(core),
    }
}
