//! WASI preview 1 core modules: the check that one is a command `toka-host run` can run as it is (on wasmtime-wasi's
//! own preview 1 implementation, see [`crate::engine`]), and its adaptation into a `wasi:cli/command` component, which
//! only `toka-host componentize` needs (a package or a tool must be a component).
//!
//! The preview 1 adapter that matches this wasmtime (crate `wasi-preview1-component-adapter-provider`) provides every
//! `wasi_snapshot_preview1` function on top of WASI p2. One behaviour of it would differ from `wasmtime run`: its
//! `proc_exit` maps every non-zero status to 1. So a module's `proc_exit` import is routed to a second, tiny adapter
//! that calls `wasi:cli/exit.exit-with-code` instead, and `proc_exit(3)` ends the run with status 3, as under
//! `wasmtime run`. A module that imports anything other than WASI preview 1 is refused with the import's name.

use crate::error::{RunError, one_line};
use wasm_encoder::reencode::{Error as ReencodeError, Reencode};
use wasmparser::{Parser, Payload};
use wit_parser::Resolve;

/// Revision of the exit shim below; bump it when the shim changes.
const SHIM_REVISION: &str = "exit-shim-2";

/// Names this adaptation (a digest of the preview 1 adapter's bytes and the shim's revision), so that cached
/// adaptations are never reused across adapters. Part of the key under which adapted modules are cached.
pub fn adapter_id() -> &'static str {
    use sha2::{Digest, Sha256};
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let mut h = Sha256::new();
        h.update(wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER);
        h.update(SHIM_REVISION);
        hex::encode(&h.finalize()[..8])
    })
}

/// The core module name `proc_exit` is routed to.
const EXIT_SHIM_MODULE: &str = "toka_proc_exit";

/// The vendored WASI WIT, dependencies before dependents.
const WASI_WIT: [(&str, &str); 6] = [
    ("io.wit", include_str!("../../wit/deps/io.wit")),
    ("clocks.wit", include_str!("../../wit/deps/clocks.wit")),
    ("random.wit", include_str!("../../wit/deps/random.wit")),
    ("filesystem.wit", include_str!("../../wit/deps/filesystem.wit")),
    ("sockets.wit", include_str!("../../wit/deps/sockets.wit")),
    ("cli.wit", include_str!("../../wit/deps/cli.wit")),
];

/// What the scan of a core module found.
struct Scan {
    has_start: bool,
    imports_proc_exit: bool,
}

/// Checks that a core module is a WASI preview 1 command: it imports nothing but `wasi_snapshot_preview1` and
/// exports `_start`. `toka-host run` runs such a module as it is; [`preview1_command`] makes a component of it.
pub fn check_preview1_command(shown: &str, bytes: &[u8]) -> Result<(), RunError> {
    scan_command(shown, bytes).map(drop)
}

fn scan_command(shown: &str, bytes: &[u8]) -> Result<Scan, RunError> {
    let scan = scan(shown, bytes)?;
    if !scan.has_start {
        return Err(RunError::NotAComponent {
            path: shown.to_string(),
            reason: "core module has no `_start` export; only WASI preview 1 commands can be run".into(),
        });
    }
    Ok(scan)
}

/// Adapts a preview 1 command module (one with `_start`) into a command component.
pub fn preview1_command(shown: &str, bytes: &[u8]) -> Result<Vec<u8>, RunError> {
    let scan = scan_command(shown, bytes)?;
    let failed = |what: &str, e: &dyn std::fmt::Display| RunError::NotAComponent {
        path: shown.to_string(),
        reason: format!("cannot adapt preview 1 module: {what}: {}", one_line(&e.to_string())),
    };
    let module = if scan.imports_proc_exit {
        reroute_proc_exit(bytes).map_err(|e| failed("rewriting imports", &e))?
    } else {
        bytes.to_vec()
    };
    let adapter = wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER;
    let mut encoder = wit_component::ComponentEncoder::default()
        .validate(true)
        .module(&module)
        .and_then(|e| e.adapter("wasi_snapshot_preview1", adapter))
        .map_err(|e| failed("encoding", &format!("{e:#}")))?;
    if scan.imports_proc_exit {
        let shim = exit_shim().map_err(|e| failed("building the exit adapter", &format!("{e:#}")))?;
        encoder = encoder.adapter(EXIT_SHIM_MODULE, &shim).map_err(|e| failed("encoding", &format!("{e:#}")))?;
    }
    encoder.encode().map_err(|e| failed("encoding", &format!("{e:#}")))
}

fn scan(shown: &str, bytes: &[u8]) -> Result<Scan, RunError> {
    let invalid = |reason: String| RunError::InvalidWasm { path: shown.to_string(), reason };
    let mut scan = Scan { has_start: false, imports_proc_exit: false };
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| invalid(e.to_string()))? {
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.map_err(|e| invalid(e.to_string()))?;
                    if import.module != "wasi_snapshot_preview1" {
                        // A module built against the toka worlds (cargo or clang with wit-bindgen) is one step short
                        // of a component: say which step.
                        let hint = if import.module.contains("toka:agent/") {
                            format!(
                                "; it was built for the toka:agent worlds but not made a component: run `toka-host \
                                 componentize {shown} -o OUT.wasm` (or build it with `toka-host build`, in a project \
                                 made by `toka-host new`)"
                            )
                        } else {
                            "; only WASI preview 1 (`wasi_snapshot_preview1`) imports can be provided".to_string()
                        };
                        return Err(RunError::NotAComponent {
                            path: shown.to_string(),
                            reason: format!("core module imports `{}::{}`{hint}", import.module, import.name),
                        });
                    }
                    scan.imports_proc_exit |= import.name == "proc_exit";
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    scan.has_start |= export.map_err(|e| invalid(e.to_string()))?.name == "_start";
                }
            }
            _ => {}
        }
    }
    Ok(scan)
}

/// Re-encodes the module with `wasi_snapshot_preview1::proc_exit` imported from [`EXIT_SHIM_MODULE`] instead.
struct RerouteProcExit;

impl Reencode for RerouteProcExit {
    type Error = std::convert::Infallible;

    fn parse_import_section(
        &mut self,
        imports: &mut wasm_encoder::ImportSection,
        section: wasmparser::ImportSectionReader<'_>,
    ) -> Result<(), ReencodeError<Self::Error>> {
        for import in section.into_imports() {
            let import = import?;
            let module = if import.module == "wasi_snapshot_preview1" && import.name == "proc_exit" {
                EXIT_SHIM_MODULE
            } else {
                import.module
            };
            imports.import(module, import.name, self.entity_type(import.ty)?);
        }
        Ok(())
    }
}

fn reroute_proc_exit(bytes: &[u8]) -> Result<Vec<u8>, ReencodeError<std::convert::Infallible>> {
    let mut module = wasm_encoder::Module::new();
    RerouteProcExit.parse_core_module(&mut module, Parser::new(0), bytes)?;
    Ok(module.finish())
}

/// A core module exporting `proc_exit(i32)` that calls `wasi:cli/exit@0.2.12#exit-with-code`, with the
/// component-type metadata that makes it usable as an adapter.
fn exit_shim() -> anyhow::Result<Vec<u8>> {
    let mut resolve = Resolve::default();
    for (name, text) in WASI_WIT {
        resolve.push_str(name, text)?;
    }
    let pkg = resolve
        .push_str("toka-exit-shim.wit", "package toka:exit-shim; world exit-shim { import wasi:cli/exit@0.2.12; }")?;
    let world = resolve.select_world(&[pkg], Some("exit-shim"))?;
    // As `wasmtime run` does for preview 1 programs: a status in 0..126 is the process's exit status; anything else
    // (126 and up are the shell's, and negative or wide values have no meaning) is refused, ending with status 1.
    // `exit(err)` lowers `result<_, _>` to one i32: 1 is `err`.
    let mut wasm = wat::parse_str(
        r#"(module
            (import "wasi:cli/exit@0.2.12" "exit" (func $exit (param i32)))
            (import "wasi:cli/exit@0.2.12" "exit-with-code" (func $exit_with_code (param i32)))
            (func (export "proc_exit") (param $status i32)
                (if (i32.lt_u (local.get $status) (i32.const 126))
                    (then (call $exit_with_code (local.get $status)))
                    (else (call $exit (i32.const 1))))
                unreachable))"#,
    )?;
    wit_component::embed_component_metadata(&mut wasm, &resolve, world, wit_component::StringEncoding::UTF8)?;
    Ok(wasm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_shim_builds() {
        let shim = exit_shim().unwrap();
        assert!(Parser::is_core_wasm(&shim));
    }

    #[test]
    fn foreign_imports_are_named() {
        let module = wat::parse_str(r#"(module (import "env" "spam" (func)) (func (export "_start")))"#).unwrap();
        let err = preview1_command("m.wasm", &module).unwrap_err().to_string();
        assert!(err.contains("imports `env::spam`"), "{err}");
    }

    #[test]
    fn modules_without_start_are_refused() {
        let module =
            wat::parse_str(r#"(module (import "wasi_snapshot_preview1" "proc_exit" (func (param i32))))"#).unwrap();
        let err = preview1_command("m.wasm", &module).unwrap_err().to_string();
        assert!(err.contains("no `_start` export"), "{err}");
    }

    #[test]
    fn proc_exit_is_rerouted_and_the_module_still_validates() {
        let module = wat::parse_str(
            r#"(module
                (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
                (memory (export "memory") 1)
                (func (export "_start") (call $exit (i32.const 7))))"#,
        )
        .unwrap();
        let component = preview1_command("m.wasm", &module).unwrap();
        assert!(Parser::is_component(&component));
    }
}
