//! The one place that turns `wit/` and `wit-p3/` into Rust: host-side bindings for the worlds `toka:agent/agent`,
//! `toka:agent/tool`, `toka:agent-async/agent` and `toka:agent-async/tool`. WASI interfaces come from wasmtime-wasi, so they are mapped rather than generated again.

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

/// Bindings for the `toka:agent-async/agent` world (`wit-p3/`): an agent whose WASI is 0.3 exports `run` as an async
/// function, called inside the store's concurrent event loop on the WASI 0.3 engine. Its toka interfaces are the
/// `agent` world's, so the same host implementations serve both.
pub mod agent_async {
    wasmtime::component::bindgen!({
        world: "toka:agent-async/agent",
        path: ["../wit", "../wit-p3"],
        exports: { default: async },
        with: {
            "wasi": wasmtime_wasi::p3::bindings,
            "toka:agent/types": crate::bindings::agent::toka::agent::types,
            "toka:agent/log": crate::bindings::agent::toka::agent::log,
            "toka:agent/events": crate::bindings::agent::toka::agent::events,
            "toka:agent/state": crate::bindings::agent::toka::agent::state,
            "toka:agent/tools": crate::bindings::agent::toka::agent::tools,
            "toka:agent/llm": crate::bindings::agent::toka::agent::llm,
            "toka:agent/spawn": crate::bindings::agent::toka::agent::spawn,
        },
    });
}

/// Bindings for the `toka:agent-async/tool` world (`wit-p3/`): a tool whose WASI is 0.3 exports `invoke` as an async
/// function, called inside its store's concurrent event loop on the WASI 0.3 engine.
pub mod tool_async {
    wasmtime::component::bindgen!({
        world: "toka:agent-async/tool",
        path: ["../wit", "../wit-p3"],
        exports: { default: async },
        with: {
            "wasi": wasmtime_wasi::p3::bindings,
            "toka:agent/types": crate::bindings::agent::toka::agent::types,
            "toka:agent/log": crate::bindings::agent::toka::agent::log,
            "toka:agent/tools": crate::bindings::agent::toka::agent::tools,
            "toka:agent/llm": crate::bindings::agent::toka::agent::llm,
        },
    });
}

pub use agent::toka::agent::log::Level as LogLevel;
pub use agent::toka::agent::spawn::SpawnError;
pub use agent::toka::agent::types::{AgentError, SideEffect, Task, ToolError, ToolSpec};
