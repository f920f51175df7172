//! Shared pieces of the benches: where the components are, and a plain-wasmtime baseline host.

use std::path::{Path, PathBuf};
use toka_host::bindings::LogLevel;
use toka_host::bindings::agent::toka::agent::log;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// A component built from `agents/<name>` by `cargo run --release -p xtask -- build-agents`.
pub fn agent(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/agents").join(format!("{name}.wasm"));
    assert!(p.exists(), "{} is missing: run `cargo run --release -p xtask -- build-agents` first", p.display());
    p
}

/// A tool component built from `agents/<name>` into `target/tools/`.
pub fn tool_component(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools").join(format!("{name}.wasm"));
    assert!(p.exists(), "{} is missing: run `cargo run --release -p xtask -- build-agents` first", p.display());
    p
}

/// The state of the baseline: what plain wasmtime needs to run the same agent, and nothing more.
pub struct Plain {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
}

impl WasiView for Plain {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl Plain {
    pub fn new() -> Self {
        Plain { wasi: WasiCtx::builder().build(), table: ResourceTable::new() }
    }
}

impl Default for Plain {
    fn default() -> Self {
        Self::new()
    }
}

impl log::Host for Plain {
    fn log(&mut self, _level: LogLevel, _message: String) {}
}
