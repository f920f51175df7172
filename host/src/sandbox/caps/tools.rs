//! `toka:agent/tools`: a guest lists and calls tools through the [`ToolBroker`] its sandbox was given (none: it sees
//! no tool and every call is denied).
//!
//! The interface is linked by hand rather than through the generated trait: a call needs the caller's store itself,
//! to hand the tool what is left of the caller's fuel and memory, and to charge the fuel the tool used to the caller.

use super::BoxFuture;
use crate::bindings::{ToolError, ToolSpec};
use crate::sandbox::SandboxState;
use wasmtime::StoreContextMut;
use wasmtime::component::Linker;

/// What a sandbox's tool calls go through; implemented above the sandbox (by the tool host, for one caller).
pub trait ToolBroker: Send + Sync + std::fmt::Debug {
    /// The tools the guest may call.
    fn list(&self) -> Vec<ToolSpec>;

    /// Calls tool `name` with `input`, giving it at most `fuel` units of fuel (`u64::MAX` when the engine does not
    /// meter fuel) and `memory` bytes of linear memory (what is left of the caller's). The broker takes the call
    /// from the run's caps first. Never traps: whatever the tool does, the guest gets a value.
    fn call(&self, name: String, input: String, fuel: u64, memory: u64) -> BoxFuture<'_, ToolAnswer>;
}

/// How a tool call went, for the guest and for the caller's fuel.
#[derive(Debug, Clone)]
pub struct ToolAnswer {
    pub result: Result<String, ToolError>,
    /// Fuel the tool used, charged to the caller's store.
    pub fuel_consumed: u64,
}

/// Links `toka:agent/tools`; `metered` says whether the engine's stores meter fuel.
pub fn add_to_linker(linker: &mut Linker<SandboxState>, metered: bool) -> wasmtime::Result<()> {
    let mut tools = linker.instance("toka:agent/tools@0.1.0")?;
    tools.func_wrap("list", |store: StoreContextMut<'_, SandboxState>, (): ()| Ok((list(store),)))?;
    tools.func_wrap_async(
        "call",
        move |store: StoreContextMut<'_, SandboxState>, (name, input): (String, String)| {
            Box::new(call(store, name, input, metered))
        },
    )?;
    Ok(())
}

/// `toka:agent/tools.list`.
fn list(store: StoreContextMut<'_, SandboxState>) -> Vec<ToolSpec> {
    match store.data().tools.clone() {
        Some(broker) => broker.list(),
        None => Vec::new(),
    }
}

/// `toka:agent/tools.call`: the tool's fuel comes out of the caller's store.
async fn call(
    mut store: StoreContextMut<'_, SandboxState>,
    name: String,
    input: String,
    metered: bool,
) -> wasmtime::Result<(Result<String, ToolError>,)> {
    let Some(broker) = store.data().tools.clone() else {
        return Ok((Err(ToolError::Denied("this sandbox has no access to tools".into())),));
    };
    // The tool gets what is left of the caller's memory, not a cap of its own on top of it.
    let limiter = &store.data().limiter;
    let left = limiter.max().saturating_sub(limiter.current());
    let fuel = if metered { store.get_fuel()? } else { u64::MAX };
    let answer = broker.call(name, input, fuel, left).await;
    if metered {
        store.set_fuel(fuel.saturating_sub(answer.fuel_consumed))?;
    }
    Ok((answer.result,))
}
