//! Components: encoding core modules with the WASI preview 1 adapter, checking the results, and describing them.
//! Also the check of the agents that stay WASI preview 1 core modules (toka-host adapts those when it runs them).

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result, bail};
use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};
use wit_component::{ComponentEncoder, DecodedWasm};
use wit_parser::{Function, Resolve, Type, TypeDefKind, WorldId, WorldItem, WorldKey};

use crate::Layout;

/// Which preview 1 adapter (from the crate pinned to the host's wasmtime version) a core module is wrapped with.
#[derive(Debug, Clone, Copy)]
pub enum Adapter {
    /// For libraries (`cdylib`, `-mexec-model=reactor`): the component exports what the module exports.
    Reactor,
    /// For programs with a `_start`: the component exports `wasi:cli/run`.
    Command,
}

/// What the host calls, hence what a built component must export.
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    /// A `toka:agent/agent` world: a top-level `run` function.
    Agent,
    /// A `wasi:cli/command`: the `wasi:cli/run` interface.
    Command,
    /// A WASI 0.3 command: the `wasi:cli/run@0.3` interface, and every WASI import a 0.3 one.
    P3Command,
    /// An agent of `toka:agent-async/agent`: a top-level `run` function, and every import a WASI 0.3 or a toka one.
    P3Agent,
    /// A tool of `toka:agent-async/tool`: top-level `describe` and `invoke` functions, and every import a WASI 0.3
    /// one or one of the tool world's toka interfaces.
    P3Tool,
    /// Not a component but a WASI preview 1 command module: exports `_start`, imports `wasi_snapshot_preview1` only.
    Preview1Command,
    /// A core module that validates (an Extism plugin).
    CoreModule,
    /// A `toka:agent/tool` world: top-level `describe` and `invoke` functions, and no import the tool world lacks
    /// (such as the agents' `events` and `state`, which a tool reaches by calling toka-sdk's functions for them).
    Tool,
}

/// Encodes `core` (a module carrying its WIT world in a `component-type` custom section, importing nothing but that
/// world) into a component with no adapter: for WASI 0.3 programs, whose WASI imports are the world's own.
pub fn encode_plain(core: &[u8]) -> Result<Vec<u8>> {
    ComponentEncoder::default()
        .validate(true)
        .module(core)
        .context("reading the core module and its component-type section")?
        .encode()
        .context("encoding the component")
}

/// Wraps `core` (a module carrying its WIT world in a `component-type` custom section) into a component.
pub fn encode(core: &[u8], adapter: Adapter) -> Result<Vec<u8>> {
    let adapter_bytes = match adapter {
        Adapter::Reactor => WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        Adapter::Command => WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
    };
    ComponentEncoder::default()
        .validate(true)
        .module(core)
        .context("reading the core module and its component-type section")?
        .adapter(WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, adapter_bytes)
        .context("adding the WASI preview 1 adapter")?
        .encode()
        .context("encoding the component")
}

/// A component's world, decoded.
struct Decoded {
    resolve: Resolve,
    world: WorldId,
}

impl Decoded {
    fn new(bytes: &[u8]) -> Result<Self> {
        match wit_component::decode(bytes).context("decoding the component's WIT")? {
            DecodedWasm::Component(resolve, world) => Ok(Decoded { resolve, world }),
            DecodedWasm::WitPackage(..) => bail!("this is a WIT package, not a component"),
        }
    }

    fn imports(&self) -> Vec<String> {
        let world = &self.resolve.worlds[self.world];
        world.imports.iter().map(|(key, item)| self.describe(key, item)).collect()
    }

    fn exports(&self) -> Vec<String> {
        let world = &self.resolve.worlds[self.world];
        world.exports.iter().map(|(key, item)| self.describe(key, item)).collect()
    }

    fn describe(&self, key: &WorldKey, item: &WorldItem) -> String {
        let name = self.resolve.name_world_key(key);
        match item {
            WorldItem::Interface { .. } => name,
            WorldItem::Function(func) => format!("{name}: {}", signature(&self.resolve, func)),
            WorldItem::Type { .. } => format!("type {name}"),
        }
    }

    /// The names of the imported interfaces and functions (`wasi:io/streams@0.2` ...), versions cut to their
    /// semver-compatible family.
    fn import_names(&self) -> BTreeSet<String> {
        world_import_names(&self.resolve, self.world)
    }

    fn exports_run_function(&self) -> bool {
        self.exports_function("run")
    }

    fn exports_function(&self, wanted: &str) -> bool {
        let world = &self.resolve.worlds[self.world];
        world.exports.iter().any(|(key, item)| {
            matches!(item, WorldItem::Function(_)) && matches!(key, WorldKey::Name(name) if name == wanted)
        })
    }

    fn exports_cli_run(&self) -> bool {
        self.exports_interface("wasi:cli/run@0.2.")
    }

    fn exports_interface(&self, prefix: &str) -> bool {
        let world = &self.resolve.worlds[self.world];
        world.exports.iter().any(|(key, item)| {
            matches!(item, WorldItem::Interface { .. }) && self.resolve.name_world_key(key).starts_with(prefix)
        })
    }
}

/// The names of `world`'s imported interfaces and functions (what the host must provide; imported types are
/// only names for types of those interfaces), with versions cut to their semver-compatible family
/// (`@0.2.12` → `@0.2`): the preview 1 adapter and the bindings may import different patch versions of one
/// interface, which the host links to the same implementation.
fn world_import_names(resolve: &Resolve, world: WorldId) -> BTreeSet<String> {
    resolve.worlds[world]
        .imports
        .iter()
        .filter(|(_, item)| !matches!(item, WorldItem::Type { .. }))
        .map(|(key, _)| {
            let name = resolve.name_world_key(key);
            match name.split_once('@') {
                Some((interface, version)) => {
                    let parts: Vec<&str> = version.split('.').collect();
                    let family = if parts[0] == "0" {
                        parts.iter().take(2).copied().collect::<Vec<_>>()
                    } else {
                        vec![parts[0]]
                    };
                    format!("{interface}@{}", family.join("."))
                }
                None => name,
            }
        })
        .collect()
}

/// The imports of world `name` (`toka:agent/tool`) as `wit/` defines it, in the form of [`world_import_names`].
fn reference_imports(layout: &Layout, name: &str) -> Result<BTreeSet<String>> {
    let mut resolve = Resolve::default();
    let (package, _) = resolve.push_dir(&layout.wit).with_context(|| format!("parsing {}", layout.wit.display()))?;
    let world = resolve.select_world(&[package], Some(name))?;
    Ok(world_import_names(&resolve, world))
}

/// Validates `bytes` as a component (or, for [`Expect::Preview1Command`], a core module) and checks that it exports
/// what the host calls (and, for a tool, imports nothing the tool world does not offer).
pub fn check(layout: &Layout, bytes: &[u8], expect: Expect) -> Result<()> {
    if let Expect::Preview1Command = expect {
        return check_preview1_command(bytes);
    }
    if let Expect::CoreModule = expect {
        if !wasmparser::Parser::is_core_wasm(bytes) {
            bail!("not a core WebAssembly module");
        }
        wasmparser::Validator::new().validate_all(bytes).context("the module does not validate")?;
        return Ok(());
    }
    wasmparser::Validator::new().validate_all(bytes).context("the component does not validate")?;
    let decoded = Decoded::new(bytes)?;
    match expect {
        Expect::Agent if !decoded.exports_run_function() => {
            bail!("no top-level `run` export; exports: {:?}", decoded.exports())
        }
        Expect::Command if !decoded.exports_cli_run() => {
            bail!("no `wasi:cli/run@0.2.x` export; exports: {:?}", decoded.exports())
        }
        Expect::P3Command if !decoded.exports_interface("wasi:cli/run@0.3.") => {
            bail!("no `wasi:cli/run@0.3.x` export; exports: {:?}", decoded.exports())
        }
        Expect::P3Command => {
            // A WASI 0.3 program must not reach WASI through 0.2 (std's preview 1 imports, an adapter): the test
            // would then not be testing 0.3.
            let older: Vec<String> =
                decoded.import_names().into_iter().filter(|name| !name.ends_with("@0.3")).collect();
            if !older.is_empty() {
                bail!("imports {older:?}, which are not WASI 0.3 interfaces");
            }
            Ok(())
        }
        Expect::P3Tool if !(decoded.exports_function("describe") && decoded.exports_function("invoke")) => {
            bail!("no top-level `describe` and `invoke` exports; exports: {:?}", decoded.exports())
        }
        Expect::P3Tool => {
            let toka = ["toka:agent/log@0.1", "toka:agent/tools@0.1", "toka:agent/llm@0.1", "toka:agent/types@0.1"];
            let other: Vec<String> = decoded
                .import_names()
                .into_iter()
                .filter(|name| !name.ends_with("@0.3") && !toka.contains(&name.as_str()))
                .collect();
            if !other.is_empty() {
                bail!("imports {other:?}, which are neither WASI 0.3 nor interfaces of the tool world");
            }
            Ok(())
        }
        Expect::P3Agent if !decoded.exports_run_function() => {
            bail!("no top-level `run` export; exports: {:?}", decoded.exports())
        }
        Expect::P3Agent => {
            // As for a WASI 0.3 command: no WASI through 0.2, or the tests would not be testing 0.3.
            let older: Vec<String> = decoded
                .import_names()
                .into_iter()
                .filter(|name| !name.ends_with("@0.3") && !name.starts_with("toka:agent/"))
                .collect();
            if !older.is_empty() {
                bail!("imports {older:?}, which are neither WASI 0.3 nor toka:agent interfaces");
            }
            Ok(())
        }
        Expect::Tool if !(decoded.exports_function("describe") && decoded.exports_function("invoke")) => {
            bail!("no top-level `describe` and `invoke` exports; exports: {:?}", decoded.exports())
        }
        Expect::Tool => {
            let offered = reference_imports(layout, "toka:agent/tool")?;
            let extra: Vec<String> = decoded.import_names().difference(&offered).cloned().collect();
            if !extra.is_empty() {
                bail!(
                    "imports {extra:?}, which the toka:agent/tool world does not offer (`events` and `state` are for \
                     agents only)"
                );
            }
            Ok(())
        }
        Expect::Agent | Expect::Command | Expect::Preview1Command | Expect::CoreModule => Ok(()),
    }
}

/// Checks that `bytes` are a valid core module that exports a `_start` function and imports nothing but WASI
/// preview 1, i.e. a module that toka-host (like `wasmtime run`) can run as a command.
fn check_preview1_command(bytes: &[u8]) -> Result<()> {
    if !wasmparser::Parser::is_core_wasm(bytes) {
        bail!("not a core wasm module");
    }
    wasmparser::Validator::new().validate_all(bytes).context("the core module does not validate")?;
    let mut start = false;
    let mut exports = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload? {
            wasmparser::Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import?;
                    if import.module != "wasi_snapshot_preview1" {
                        bail!(
                            "imports `{}::{}`; only `wasi_snapshot_preview1` imports are allowed",
                            import.module,
                            import.name
                        );
                    }
                }
            }
            wasmparser::Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export?;
                    start |= export.name == "_start" && matches!(export.kind, wasmparser::ExternalKind::Func);
                    exports.push(export.name.to_owned());
                }
            }
            _ => {}
        }
    }
    if !start {
        bail!("no `_start` function export; exports: {exports:?}");
    }
    Ok(())
}

/// `inspect FILE [--wit]`: prints the component's imports and exports, or with `full_wit` its whole decoded WIT.
pub fn inspect(path: &Path, full_wit: bool) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if wasmparser::Parser::is_core_wasm(&bytes) {
        bail!("{} is a core module, not a component", path.display());
    }
    let decoded = Decoded::new(&bytes).with_context(|| format!("inspecting {}", path.display()))?;
    if full_wit {
        let package = decoded.resolve.worlds[decoded.world].package.context("the decoded world has no package")?;
        let mut printer = wit_component::WitPrinter::default();
        printer.print(&decoded.resolve, package, &[])?;
        println!("{}", printer.output);
        return Ok(());
    }
    let valid = match wasmparser::Validator::new().validate_all(&bytes) {
        Ok(_) => "valid".to_owned(),
        Err(err) => format!("INVALID: {err}"),
    };
    println!("{}: component, {} bytes, {valid}", path.display(), bytes.len());
    println!("imports:");
    for import in decoded.imports() {
        println!("  {import}");
    }
    println!("exports:");
    for export in decoded.exports() {
        println!("  {export}");
    }
    Ok(())
}

/// `func(name: type, ...) -> type` for a WIT function.
fn signature(resolve: &Resolve, func: &Function) -> String {
    let params: Vec<String> =
        func.params.iter().map(|param| format!("{}: {}", param.name, type_name(resolve, &param.ty))).collect();
    match &func.result {
        Some(result) => format!("func({}) -> {}", params.join(", "), type_name(resolve, result)),
        None => format!("func({})", params.join(", ")),
    }
}

/// A WIT type as it would be written in WIT: named types by name, anonymous ones structurally.
fn type_name(resolve: &Resolve, ty: &Type) -> String {
    let id = match ty {
        Type::Bool => return "bool".into(),
        Type::U8 => return "u8".into(),
        Type::U16 => return "u16".into(),
        Type::U32 => return "u32".into(),
        Type::U64 => return "u64".into(),
        Type::S8 => return "s8".into(),
        Type::S16 => return "s16".into(),
        Type::S32 => return "s32".into(),
        Type::S64 => return "s64".into(),
        Type::F32 => return "f32".into(),
        Type::F64 => return "f64".into(),
        Type::Char => return "char".into(),
        Type::String => return "string".into(),
        Type::ErrorContext => return "error-context".into(),
        Type::Id(id) => *id,
    };
    let def = &resolve.types[id];
    if let Some(name) = &def.name {
        return name.clone();
    }
    let opt = |ty: &Option<Type>| ty.as_ref().map_or_else(|| "_".to_owned(), |t| type_name(resolve, t));
    match &def.kind {
        TypeDefKind::Type(inner) => type_name(resolve, inner),
        TypeDefKind::List(inner) => format!("list<{}>", type_name(resolve, inner)),
        TypeDefKind::FixedLengthList(inner, len) => {
            format!("list<{}, {len}>", type_name(resolve, inner))
        }
        TypeDefKind::Map(k, v) => {
            format!("map<{}, {}>", type_name(resolve, k), type_name(resolve, v))
        }
        TypeDefKind::Option(inner) => format!("option<{}>", type_name(resolve, inner)),
        TypeDefKind::Result(r) => match (&r.ok, &r.err) {
            (None, None) => "result".to_owned(),
            (ok, None) => format!("result<{}>", opt(ok)),
            (ok, err) => format!("result<{}, {}>", opt(ok), opt(err)),
        },
        TypeDefKind::Tuple(t) => {
            let items: Vec<String> = t.types.iter().map(|t| type_name(resolve, t)).collect();
            format!("tuple<{}>", items.join(", "))
        }
        TypeDefKind::Future(inner) => format!("future<{}>", opt(inner)),
        TypeDefKind::Stream(inner) => format!("stream<{}>", opt(inner)),
        TypeDefKind::Handle(wit_parser::Handle::Own(res)) => type_name(resolve, &Type::Id(*res)),
        TypeDefKind::Handle(wit_parser::Handle::Borrow(res)) => {
            format!("borrow<{}>", type_name(resolve, &Type::Id(*res)))
        }
        other => format!("<anonymous {}>", other.as_str()),
    }
}
