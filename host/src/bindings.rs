//! The one place that turns `wit/` into Rust: host-side bindings for the worlds `toka:agent/agent` and
//! `toka:agent/tool`. WASI interfaces come from wasmtime-wasi, so they are mapped rather than generated again.

/// The resource type of `toka:agent/llm` `completion-stream` handles (the sandbox keeps the streams themselves).
pub struct CompletionStream;

/// Bindings for the `agent` world: the `run` export and the host interfaces it imports.
pub mod agent {
    wasmtime::component::bindgen!({
        world: "toka:agent/agent",
        path: "../wit",
        imports: {
            "toka:agent/events.emit": async,
            "toka:agent/state.set": async,
            "toka:agent/state.delete": async,
            // Model calls wait on the network.
            "toka:agent/llm": async,
        },
        exports: { default: async },
        with: {
            "wasi": wasmtime_wasi::p2::bindings,
            "toka:agent/llm.completion-stream": crate::bindings::CompletionStream,
        },
    });
}

/// Bindings for the `tool` world: `describe` and `invoke`.
pub mod tool {
    wasmtime::component::bindgen!({
        world: "toka:agent/tool",
        path: "../wit",
        exports: { default: async },
        with: {
            "wasi": wasmtime_wasi::p2::bindings,
            "toka:agent/log": crate::bindings::agent::toka::agent::log,
            "toka:agent/types": crate::bindings::agent::toka::agent::types,
            "toka:agent/tools": crate::bindings::agent::toka::agent::tools,
            "toka:agent/llm": crate::bindings::agent::toka::agent::llm,
        },
    });
}

pub use agent::toka::agent::log::Level as LogLevel;
pub use agent::toka::agent::spawn::SpawnError;
pub use agent::toka::agent::types::{AgentError, SideEffect, Task, ToolError, ToolSpec};
