//! Loading: read the file, tell what it is, compile it (through the on-disk cache) and check that it is a world the
//! host can run.
//!
//! Accepted: components of the world `toka:agent/agent` (export `run`), `wasi:cli/command` components (export
//! `wasi:cli/run`), and WASI preview 1 core modules with a `_start` export that import only
//! `wasi_snapshot_preview1`, which run as they are on wasmtime-wasi's preview 1 implementation (as under
//! `wasmtime run`). Everything else is refused with the reason.
//! This module never runs guest code.

use crate::engine::HostEngine;
use crate::error::{RunError, one_line};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use wasmparser::Parser;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, InstancePre};

/// Largest file the host will read as a component.
pub const MAX_WASM_SIZE: u64 = 256 << 20;

/// Which world a component implements, judged by its exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum World {
    /// `toka:agent/agent`: exports `run(task)`.
    Agent,
    /// `wasi:cli/command`: exports `wasi:cli/run`.
    Command,
    /// `toka:agent/tool`: exports `describe` and `invoke`.
    Tool,
}

/// What was compiled, ready to be instantiated many times.
pub enum Compiled {
    /// A component, linked against the host's component linker.
    Component { pre: InstancePre<crate::sandbox::SandboxState> },
    /// A WASI preview 1 core module (a command: `_start`), linked against wasmtime-wasi's own preview 1
    /// implementation, as `wasmtime run` runs it.
    Module { pre: wasmtime::InstancePre<crate::sandbox::SandboxState> },
}

/// A compiled program ready to be instantiated many times.
pub struct Loaded {
    pub path: PathBuf,
    /// sha256 of the file's bytes, hex.
    pub sha256: String,
    pub world: World,
    /// Time spent compiling, or loading from the cache.
    pub compile_time: Duration,
    pub cache_hit: bool,
    pub compiled: Compiled,
}

impl Loaded {
    /// Whether the file was a preview 1 core module (run as it is, not as a component).
    pub fn is_core_module(&self) -> bool {
        matches!(self.compiled, Compiled::Module { .. })
    }

    /// The linked component, if the program is one (tools and agents always are).
    pub fn component_pre(&self) -> Option<&InstancePre<crate::sandbox::SandboxState>> {
        match &self.compiled {
            Compiled::Component { pre } => Some(pre),
            Compiled::Module { .. } => None,
        }
    }
}

/// Reads, classifies, compiles and links `path`.
pub fn load(host: &HostEngine, path: &Path) -> Result<Loaded, RunError> {
    load_bytes(host, path, read(path)?)
}

/// Classifies, compiles and links `bytes` (read from, or known as, `path`: a file or an upload's name).
pub fn load_bytes(host: &HostEngine, path: &Path, bytes: Vec<u8>) -> Result<Loaded, RunError> {
    let shown = path.display().to_string();
    if bytes.len() as u64 > MAX_WASM_SIZE {
        return Err(RunError::InvalidWasm {
            path: shown,
            reason: format!("{} bytes, over the {MAX_WASM_SIZE} byte limit", bytes.len()),
        });
    }
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let core_module = if Parser::is_component(&bytes) {
        false
    } else if Parser::is_core_wasm(&bytes) {
        crate::adapt::check_preview1_command(&shown, &bytes)?;
        true
    } else {
        return Err(RunError::InvalidWasm {
            path: shown,
            reason: "not a WebAssembly binary (bad magic number)".into(),
        });
    };

    let hits_before = host.cache_hits();
    let started = Instant::now();
    // A first compile of a large component takes seconds: said once it lasts (a cached load never is).
    let task = host.progress.begin(format!("compiling {shown} ({})", crate::progress::size(bytes.len() as u64)));
    if let Some(auth) = &host.cache_auth {
        // Whatever the cache holds that the host cannot vouch for is removed before wasmtime may load it.
        auth.before_load().map_err(|e| RunError::host(e.to_string()))?;
    }
    let invalid = |e: wasmtime::Error| RunError::InvalidWasm { path: shown.clone(), reason: root_cause(&e) };
    let compiled = if core_module {
        CompiledCode::Module(wasmtime::Module::new(&host.engine, &bytes).map_err(invalid)?)
    } else {
        CompiledCode::Component(Component::new(&host.engine, &bytes).map_err(invalid)?)
    };
    let compile_time = started.elapsed();
    let cache_hit = host.cache_hits() > hits_before;
    let took = crate::progress::seconds(compile_time);
    task.finish(Some(match (cache_hit, &host.cache_dir) {
        (true, _) => format!("loaded {shown} from the compile cache in {took}"),
        (false, Some(_)) => format!("compiled {shown} in {took}; later runs load it from the compile cache"),
        (false, None) => format!("compiled {shown} in {took}; without the compile cache, every run compiles it again"),
    }));
    if let Some(auth) = host.cache_auth.as_ref().filter(|_| !cache_hit) {
        auth.after_compile().map_err(|e| RunError::host(e.to_string()))?;
    }

    let wrong = |e: wasmtime::Error| RunError::WrongWorld { path: shown.clone(), reason: root_cause(&e) };
    let (world, compiled) = match compiled {
        CompiledCode::Component(component) => {
            let world =
                classify(host, &component).map_err(|reason| RunError::WrongWorld { path: shown.clone(), reason })?;
            let pre = host.linker.instantiate_pre(&component).map_err(wrong)?;
            (world, Compiled::Component { pre })
        }
        CompiledCode::Module(module) => {
            (World::Command, Compiled::Module { pre: host.module_linker.instantiate_pre(&module).map_err(wrong)? })
        }
    };
    Ok(Loaded { path: path.to_path_buf(), sha256, world, compile_time, cache_hit, compiled })
}

/// Compiled code before it is linked.
enum CompiledCode {
    Component(Component),
    Module(wasmtime::Module),
}

/// Reads a wasm file with a size cap, mapping "not there" to its own error.
pub fn read(path: &Path) -> Result<Vec<u8>, RunError> {
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => RunError::FileNotFound { path: shown.clone() },
        _ => RunError::Unreadable { path: shown.clone(), reason: one_line(&e.to_string()) },
    })?;
    if meta.is_dir() {
        return Err(RunError::Unreadable { path: shown, reason: "is a directory".into() });
    }
    if meta.len() > MAX_WASM_SIZE {
        return Err(RunError::InvalidWasm {
            path: shown,
            reason: format!("file is {} bytes, over the {} byte limit", meta.len(), MAX_WASM_SIZE),
        });
    }
    std::fs::read(path).map_err(|e| RunError::Unreadable { path: shown, reason: one_line(&e.to_string()) })
}

fn classify(host: &HostEngine, component: &Component) -> Result<World, String> {
    let ty = component.component_type();
    let mut names = Vec::new();
    let (mut run, mut cli_run, mut describe, mut invoke) = (false, false, false, false);
    for (name, item) in ty.exports(&host.engine) {
        match (name, &item.ty) {
            ("run", ComponentItem::ComponentFunc(_)) => run = true,
            ("describe", ComponentItem::ComponentFunc(_)) => describe = true,
            ("invoke", ComponentItem::ComponentFunc(_)) => invoke = true,
            (n, ComponentItem::ComponentInstance(_)) if n.starts_with("wasi:cli/run@0.2.") => cli_run = true,
            _ => {}
        }
        names.push(name.to_string());
    }
    match (run, cli_run, describe && invoke) {
        (true, false, false) => Ok(World::Agent),
        (false, true, false) => Ok(World::Command),
        (false, false, true) => Ok(World::Tool),
        _ => Err(format!(
            "expected a toka:agent/agent (export `run`), toka:agent/tool or wasi:cli/command component; it exports [{}]",
            names.join(", ")
        )),
    }
}

/// The innermost message of a wasmtime error chain, on one line.
pub fn root_cause(err: &wasmtime::Error) -> String {
    one_line(&err.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": "))
}
