//! Core module -> component, in-process: what `toka-host componentize` and `toka-host build` do with the core
//! module a compiler emits.
//!
//! A module built against a WIT world (wit-bindgen for Rust or C) carries that world in a `component-type` custom
//! section; it is wrapped with the preview 1 adapter of this wasmtime: the reactor adapter (a library: the component
//! exports what the module exports), or the command adapter when it exports `_start`. A module without such a
//! section is a plain preview 1 program and is adapted as `toka-host run` adapts one ([`crate::adapt`]). It never
//! accepts a module with imports that neither the world nor WASI preview 1 provides: the encoder refuses those, and
//! the refusal names them.

use crate::error::{RunError, one_line};
use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};
use wasmparser::{Parser, Payload};

/// What a core module looks like from outside.
#[derive(Debug, Default)]
struct Shape {
    /// It carries a WIT world (`component-type*` custom section).
    has_world: bool,
    exports_start: bool,
}

fn shape(shown: &str, bytes: &[u8]) -> Result<Shape, RunError> {
    let invalid = |reason: String| RunError::InvalidWasm { path: shown.to_string(), reason };
    let mut shape = Shape::default();
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| invalid(e.to_string()))? {
            Payload::CustomSection(section) if section.name().starts_with("component-type") => shape.has_world = true,
            Payload::ExportSection(reader) => {
                for export in reader {
                    shape.exports_start |= export.map_err(|e| invalid(e.to_string()))?.name == "_start";
                }
            }
            _ => {}
        }
    }
    Ok(shape)
}

/// Turns the core module `bytes` (named `shown` in errors) into a component.
pub fn componentize(shown: &str, bytes: &[u8]) -> Result<Vec<u8>, RunError> {
    if wasmparser::Parser::is_component(bytes) {
        return Err(RunError::InvalidInput(format!("{shown} is already a component: run it as it is")));
    }
    if !wasmparser::Parser::is_core_wasm(bytes) {
        return Err(RunError::InvalidWasm {
            path: shown.to_string(),
            reason: "not a WebAssembly binary (bad magic number)".into(),
        });
    }
    wasmparser::Validator::new()
        .validate_all(bytes)
        .map_err(|e| RunError::InvalidWasm { path: shown.to_string(), reason: one_line(&e.to_string()) })?;
    let shape = shape(shown, bytes)?;
    if !shape.has_world {
        // A plain preview 1 program: the same adaptation `run` applies (exact `proc_exit` statuses included).
        return crate::adapt::preview1_command(shown, bytes);
    }
    let adapter = if shape.exports_start {
        WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER
    } else {
        WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER
    };
    let failed = |e: anyhow::Error| RunError::NotAComponent {
        path: shown.to_string(),
        reason: format!("cannot make a component of it: {}", one_line(&format!("{e:#}"))),
    };
    let component = wit_component::ComponentEncoder::default()
        .validate(true)
        .module(bytes)
        .map_err(failed)?
        .adapter(WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, adapter)
        .map_err(failed)?
        .encode()
        .map_err(failed)?;
    Ok(component)
}
