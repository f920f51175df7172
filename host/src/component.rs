//! Loading: read the file, tell what it is, compile it (through the on-disk cache) and check that it is a world the
//! host can run.
//!
//! Accepted: components of the world `toka:agent/agent` (export `run`), `wasi:cli/command` components (export
//! `wasi:cli/run@0.2.x`, or WASI 0.3's async `wasi:cli/run@0.3.x`), and WASI preview 1 core modules with a `_start` export that import only
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
    let bytes = read(path)?;
    let sha256 = digest(&bytes);
    load_digested(host, path, &bytes, sha256)
}

/// The digest components are known by: sha256 of the bytes, hex.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Classifies, compiles and links `bytes` (read from, or known as, `path`: a file or an upload's name), whose
/// [`digest`] is `sha256`.
pub fn load_digested(host: &HostEngine, path: &Path, bytes: &[u8], sha256: String) -> Result<Loaded, RunError> {
    load_vouched(host, path, bytes, sha256, || vouch_cache(host))
}

/// Removes from the compile cache every artifact the host cannot vouch for ([`crate::cache_auth`]); a load must
/// not read the cache before this has passed.
pub fn vouch_cache(host: &HostEngine) -> Result<(), RunError> {
    match &host.cache_auth {
        Some(auth) => auth.before_load().map(drop).map_err(|e| RunError::host(e.to_string())),
        None => Ok(()),
    }
}

/// [`load_digested`], where `vouched` is [`vouch_cache`] or waits for it to have passed on another thread; it is
/// called once, before the cache may be read.
pub fn load_vouched(
    host: &HostEngine,
    path: &Path,
    bytes: &[u8],
    sha256: String,
    vouched: impl FnOnce() -> Result<(), RunError>,
) -> Result<Loaded, RunError> {
    let shown = path.display().to_string();
    if bytes.len() as u64 > MAX_WASM_SIZE {
        return Err(RunError::InvalidWasm {
            path: shown,
            reason: format!("{} bytes, over the {MAX_WASM_SIZE} byte limit", bytes.len()),
        });
    }
    let core_module = if Parser::is_component(bytes) {
        false
    } else if Parser::is_core_wasm(bytes) {
        crate::adapt::check_preview1_command(&shown, bytes)?;
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
    // Whatever the cache holds that the host cannot vouch for is removed before wasmtime may load it.
    vouched()?;
    let invalid = |e: wasmtime::Error| RunError::InvalidWasm { path: shown.clone(), reason: root_cause(&e) };
    // A WASI 0.3 program (a command, an agent whose `run` is async, a tool whose `invoke` is) is compiled, linked
    // and run on the engine with the component model's async ABI; anything else on the main engine, which refuses
    // async features when it validates.
    let p3 = if !core_module && needs_p3_engine(bytes) {
        Some(host.p3().map_err(|e| RunError::host(format!("cannot start the WASI 0.3 engine: {e:#}")))?)
    } else {
        None
    };
    let engine = p3.map_or(&host.engine, |p3| &p3.engine);
    let compiled = if core_module {
        CompiledCode::Module(wasmtime::Module::new(engine, bytes).map_err(invalid)?)
    } else {
        CompiledCode::Component(Component::new(engine, bytes).map_err(invalid)?)
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
            let world = classify(&component).map_err(|reason| RunError::WrongWorld { path: shown.clone(), reason })?;
            let linker = match p3 {
                Some(p3) => &p3.linker,
                None => host.linker().map_err(|e| RunError::host(format!("cannot link components: {e:#}")))?,
            };
            let pre = linker.instantiate_pre(&component).map_err(wrong)?;
            (world, Compiled::Component { pre })
        }
        CompiledCode::Module(module) => {
            let linker =
                host.module_linker().map_err(|e| RunError::host(format!("cannot link preview 1 programs: {e:#}")))?;
            (World::Command, Compiled::Module { pre: linker.instantiate_pre(&module).map_err(wrong)? })
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

fn classify(component: &Component) -> Result<World, String> {
    let ty = component.component_type();
    let mut names = Vec::new();
    let (mut run, mut cli_run, mut describe, mut invoke) = (false, false, false, false);
    for (name, item) in ty.exports(component.engine()) {
        match (name, &item.ty) {
            ("run", ComponentItem::ComponentFunc(_)) => run = true,
            ("describe", ComponentItem::ComponentFunc(_)) => describe = true,
            ("invoke", ComponentItem::ComponentFunc(_)) => invoke = true,
            (n, ComponentItem::ComponentInstance(_)) if cli_run_version(n).is_some() => cli_run = true,
            _ => {}
        }
        names.push(name.to_string());
    }
    // WASI 0.3 interfaces are linked for WASI 0.3 commands and agents whose `run` is async, which run inside the
    // store's concurrent event loop; a plain `run` cannot wait on them (wasmtime traps: "cannot block a synchronous
    // task before returning"). Refused here rather than left to fail mid-run.
    if command_version(component) != Some(CliRun::P3)
        && !export_is_async(component, "run")
        && !export_is_async(component, "invoke")
        && let Some((name, _)) = ty.imports(component.engine()).find(|(name, _)| name.contains("@0.3."))
    {
        return Err(format!(
            "imports the WASI 0.3 interface {name}, which only a WASI 0.3 command (export wasi:cli/run@0.3.x), an \
             agent whose `run` is async or a tool whose `invoke` is async (worlds toka:agent-async/agent and \
             toka:agent-async/tool) may use"
        ));
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

/// Which WASI a `wasi:cli/command` is written for, told by the version of its `wasi:cli/run` export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CliRun {
    /// `wasi:cli/run@0.2.x`: WASI 0.2 (preview 2), a plain `run` call.
    P2,
    /// `wasi:cli/run@0.3.x`: WASI 0.3, an async `run` called inside the store's concurrent event loop.
    P3,
}

/// Whether a component's own imports, exports and types (read from its binary, before it is compiled) call for the
/// WASI 0.3 engine: an export of `wasi:cli/run@0.3.x`, an import of a `@0.3.x` interface, or a function type of the
/// component model's async ABI (an async `run`). Anything else is compiled on the main engine, which refuses async
/// features when it validates.
fn needs_p3_engine(bytes: &[u8]) -> bool {
    outline(bytes).is_some_and(|o| o.cli_runs.contains(&CliRun::P3) || o.imports_p3 || o.async_types)
}

/// Whether a component exports a function `name` that is async: `run` of an agent of `toka:agent-async/agent`,
/// `invoke` of a tool of `toka:agent-async/tool`.
pub fn export_is_async(component: &Component, name: &str) -> bool {
    component.component_type().exports(component.engine()).any(|(export, item)| match item.ty {
        ComponentItem::ComponentFunc(f) => export == name && f.async_(),
        _ => false,
    })
}

/// The world `bytes` will load as, read from its own imports and exports without compiling it: `None` for bytes the
/// load will refuse (not a WebAssembly binary, a tool, no export the host can call, WASI 0.3 imports in a 0.2
/// command), and for any it cannot tell. The same rules as the load's own (see `classify`), which decides; this
/// lets a run be recorded as started while its program still loads.
pub fn world_of(bytes: &[u8]) -> Option<World> {
    if Parser::is_core_wasm(bytes) {
        return Some(World::Command);
    }
    let o = outline(bytes)?;
    let command = match o.cli_runs.as_slice() {
        [] => None,
        [first, rest @ ..] if rest.iter().all(|v| v == first) => Some(*first),
        _ => return None,
    };
    // An agent's `run` may be async (its type is not read here): the load refuses a plain one that imports 0.3.
    if o.imports_p3 && command != Some(CliRun::P3) && !o.run {
        return None;
    }
    match (o.run, command.is_some(), o.describe && o.invoke) {
        (true, false, false) => Some(World::Agent),
        (false, true, false) => Some(World::Command),
        _ => None,
    }
}

/// What a component's top level imports and exports, read from its binary (nested modules and components are
/// skipped, not parsed).
#[derive(Debug, Default)]
struct Outline {
    run: bool,
    describe: bool,
    invoke: bool,
    cli_runs: Vec<CliRun>,
    imports_p3: bool,
    /// A function type of the component model's async ABI is defined at the top level.
    async_types: bool,
}

fn outline(bytes: &[u8]) -> Option<Outline> {
    use wasmparser::{Chunk, ComponentExternalKind, ComponentType, Payload};
    if !Parser::is_component(bytes) {
        return None;
    }
    let mut outline = Outline::default();
    let mut parser = Parser::new(0);
    let mut at = 0usize;
    loop {
        let Chunk::Parsed { consumed, payload } = parser.parse(bytes.get(at..)?, true).ok()? else {
            return None;
        };
        at += consumed;
        match payload {
            // The parser has stepped over the nested binary; so does the reading here.
            Payload::ModuleSection { unchecked_range, .. } | Payload::ComponentSection { unchecked_range, .. } => {
                at = unchecked_range.end;
            }
            Payload::ComponentTypeSection(types) => {
                for ty in types {
                    outline.async_types |= matches!(ty.ok()?, ComponentType::Func(f) if f.async_);
                }
            }
            Payload::ComponentImportSection(imports) => {
                for import in imports {
                    outline.imports_p3 |= import.ok()?.name.name.contains("@0.3.");
                }
            }
            Payload::ComponentExportSection(exports) => {
                for export in exports {
                    let export = export.ok()?;
                    match (export.name.name, export.kind) {
                        ("run", ComponentExternalKind::Func) => outline.run = true,
                        ("describe", ComponentExternalKind::Func) => outline.describe = true,
                        ("invoke", ComponentExternalKind::Func) => outline.invoke = true,
                        (name, ComponentExternalKind::Instance) => outline.cli_runs.extend(cli_run_version(name)),
                        _ => {}
                    }
                }
            }
            Payload::End(_) => return Some(outline),
            _ => {}
        }
    }
}

/// The WASI version of an export named `name`, if it is a `wasi:cli/run` interface the host can call.
pub fn cli_run_version(name: &str) -> Option<CliRun> {
    if name.starts_with("wasi:cli/run@0.2.") {
        Some(CliRun::P2)
    } else if name.starts_with("wasi:cli/run@0.3.") {
        Some(CliRun::P3)
    } else {
        None
    }
}

/// The `wasi:cli/run` version a command component exports (`None`: not a command).
pub fn command_version(component: &Component) -> Option<CliRun> {
    let ty = component.component_type();
    let mut versions = ty.exports(component.engine()).filter_map(|(name, item)| match item.ty {
        ComponentItem::ComponentInstance(_) => cli_run_version(name),
        _ => None,
    });
    let first = versions.next()?;
    // Both versions at once: which one to run would be a guess, so neither is.
    versions.all(|v| v == first).then_some(first)
}

/// The innermost message of a wasmtime error chain, on one line.
pub fn root_cause(err: &wasmtime::Error) -> String {
    one_line(&err.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineOptions;

    /// A WASI 0.2 command (`wasi:cli/run@0.2.0` whose `run` returns `ok`), importing WASI 0.3's random interface
    /// if `p3_import`.
    fn p2_command(p3_import: bool) -> Vec<u8> {
        let import = if p3_import {
            r#"(import "wasi:random/random@0.3.0" (instance (export "get-random-u64" (func (result u64)))))"#
        } else {
            ""
        };
        wat::parse_str(format!(
            r#"(component
                {import}
                (core module $m (func (export "run") (result i32) i32.const 0))
                (core instance $i (instantiate $m))
                (func $run (result (result)) (canon lift (core func $i "run")))
                (instance $cli (export "run" (func $run)))
                (export "wasi:cli/run@0.2.0" (instance $cli)))"#
        ))
        .unwrap()
    }

    #[test]
    fn only_a_wasi_0_3_command_may_import_wasi_0_3() {
        let host = HostEngine::new(&EngineOptions { fuel: true, cache_dir: None, pooling: false }).unwrap();
        // Positive control: the same command without the 0.3 import loads as a command.
        let load = |name: &str, bytes: Vec<u8>| {
            let sha256 = digest(&bytes);
            load_digested(&host, Path::new(name), &bytes, sha256)
        };
        let loaded = load("plain.wasm", p2_command(false)).unwrap();
        assert_eq!(loaded.world, World::Command);
        assert!(!needs_p3_engine(&p2_command(false)) && needs_p3_engine(&p2_command(true)));
        let refused = load("mixed.wasm", p2_command(true)).err().expect("refused");
        match refused {
            RunError::WrongWorld { reason, .. } => {
                assert!(reason.contains("imports the WASI 0.3 interface wasi:random/random@0.3.0"), "{reason}")
            }
            other => panic!("expected wrong-world, got {other:?}"),
        }
    }

    /// The world read from a binary's own imports and exports agrees with the load's, and anything the load would
    /// refuse, or that cannot be read, has none.
    #[test]
    fn the_world_is_read_from_the_binary_as_the_load_tells_it() {
        let host = HostEngine::new(&EngineOptions { fuel: true, cache_dir: None, pooling: false }).unwrap();
        let component = |body: &str| wat::parse_str(format!("(component {body})")).unwrap();
        let lifted = |name: &str| {
            format!(
                r#"(core module $m_{name} (func (export "{name}")))
                (core instance $i_{name} (instantiate $m_{name}))
                (func ${name} (canon lift (core func $i_{name} "{name}")))
                (export "{name}" (func ${name}))"#
            )
        };
        let agent = component(&lifted("run"));
        let tool = component(&format!("{}{}", lifted("describe"), lifted("invoke")));
        let command = p2_command(false);
        assert_eq!(world_of(&agent), Some(World::Agent));
        assert_eq!(world_of(&command), Some(World::Command));
        assert_eq!(world_of(&wat::parse_str("(module)").unwrap()), Some(World::Command));
        // Not runnable, or not readable: no world.
        assert_eq!(world_of(&tool), None);
        assert_eq!(world_of(&component("")), None);
        assert_eq!(world_of(b"not wasm"), None);
        assert_eq!(world_of(&command[..command.len() - 3]), None);
        // A plain command that imports WASI 0.3 is refused by the load: no world.
        assert_eq!(world_of(&p2_command(true)), None);
        // The load agrees wherever a world is read.
        for bytes in [agent, command] {
            let loaded = load_digested(&host, Path::new("x.wasm"), &bytes, digest(&bytes));
            // The agent's `run` has no task parameter, so it is refused later (when prepared), not here.
            assert_eq!(loaded.map(|l| l.world).ok(), world_of(&bytes));
        }
    }

    #[test]
    fn the_cli_run_version_is_told_by_its_export_name() {
        assert_eq!(cli_run_version("wasi:cli/run@0.2.0"), Some(CliRun::P2));
        assert_eq!(cli_run_version("wasi:cli/run@0.2.12"), Some(CliRun::P2));
        assert_eq!(cli_run_version("wasi:cli/run@0.3.0"), Some(CliRun::P3));
        assert_eq!(cli_run_version("wasi:cli/run@0.3.0-rc-2025-09-16"), Some(CliRun::P3));
        assert_eq!(cli_run_version("wasi:cli/run@0.1.0"), None);
        assert_eq!(cli_run_version("wasi:cli/runner@0.2.0"), None);
    }
}
