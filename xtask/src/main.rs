//! Developer tasks for toka-host, run from the repository root:
//!
//! ```text
//! cargo run --release -p xtask -- build-agents [NAME...]   # agents/* -> target/agents/ and target/tools/NAME.wasm
//! cargo run --release -p xtask -- inspect FILE.wasm         # print a component's imports and exports
//! ```
//!
//! `build-agents` builds every agent and tool (or the named ones) from source with the guest toolchains that
//! `scripts/setup-toolchains` installs, turns each into a component (the Go and Zig agents stay WASI preview 1 core
//! modules, which toka-host adapts at run time) and checks that it validates and has the expected exports. See
//! [`agents`] for the catalogue and the per-language pipelines.

#![forbid(unsafe_code)]

mod agents;
mod c;
mod component;
mod preview1;
mod rust;
mod scripted;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};

const USAGE: &str = "\
usage: cargo run --release -p xtask -- <command>

commands:
  build-agents [NAME...]   build all agents and tools (or the named ones) into target/agents/NAME.wasm
                           (agents) and target/tools/NAME.wasm (tools)
  inspect FILE [--wit]     print a component's imports and exports (--wit: the full decoded WIT)
  help                     print this message";

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> Result<()> {
    let Some((command, rest)) = args.split_first() else {
        bail!("no command given\n\n{USAGE}");
    };
    match command.as_str() {
        "build-agents" => agents::build(&Layout::from_manifest_dir(), rest),
        "inspect" => {
            let (flags, files): (Vec<&String>, Vec<&String>) = rest.iter().partition(|a| a.starts_with("--"));
            let full_wit = match flags.as_slice() {
                [] => false,
                [flag] if flag.as_str() == "--wit" => true,
                _ => bail!("unknown option in {flags:?}\n\n{USAGE}"),
            };
            let [file] = files.as_slice() else {
                bail!("inspect takes exactly one FILE\n\n{USAGE}");
            };
            component::inspect(Path::new(file), full_wit)
        }
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command {other:?}\n\n{USAGE}"),
    }
}

/// Where things live in the repository.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The repository root.
    pub root: PathBuf,
    /// `wit/`: the toka:agent package and the vendored WASI packages in `wit/deps/`.
    pub wit: PathBuf,
    /// `agents/`: one directory per agent or tool, and the cargo workspace of the Rust ones.
    pub agents: PathBuf,
    /// `target/agents/`: the built agents (components or, for Go and Zig, preview 1 core modules), `NAME.wasm`.
    pub out: PathBuf,
    /// `target/tools/`: the built tools (`toka:agent/tool` components), `NAME.wasm`.
    pub tools_out: PathBuf,
    /// `target/extism/`: the Extism plugins of the comparison bench (core modules), `NAME.wasm`.
    pub extism_out: PathBuf,
    /// `target/agents/.build/`: intermediate files (generated C bindings, core modules) and the Go and Zig caches.
    pub build: PathBuf,
    /// `.tools/`: the Python, JavaScript, Go and Zig toolchains installed by `scripts/setup-toolchains`.
    pub tools: PathBuf,
}

impl Layout {
    fn from_manifest_dir() -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new(".")).to_path_buf();
        let out = root.join("target").join("agents");
        Layout {
            wit: root.join("wit"),
            agents: root.join("agents"),
            build: out.join(".build"),
            tools: root.join(".tools"),
            tools_out: root.join("target").join("tools"),
            extism_out: root.join("target").join("extism"),
            out,
            root,
        }
    }
}
