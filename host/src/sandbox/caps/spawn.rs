//! `toka:agent/spawn`: a guest starts an installed agent and waits for its result, or schedules one for later,
//! through the [`Spawner`] its sandbox was given (none: every call is denied).
//!
//! Linked by hand, as `toka:agent/tools` is: a spawn needs the caller's store itself, to hand the child what is left
//! of the caller's fuel and memory and to charge the fuel the child used to the caller. What a child may do, and
//! whether it may run at all, is decided above the sandbox; this module never authorizes anything.

use super::BoxFuture;
use crate::bindings::SpawnError;
use crate::sandbox::SandboxState;
use wasmtime::StoreContextMut;
use wasmtime::component::Linker;

/// What a sandbox's spawns go through; implemented above the sandbox (by the host, for one parent run).
pub trait Spawner: Send + Sync + std::fmt::Debug {
    /// Runs the installed agent `agent` with `input`, giving it at most `fuel` units of fuel (`u64::MAX` when the
    /// engine does not meter fuel) and `memory` bytes of linear memory (what is left of the caller's). Never traps:
    /// whatever the child does, the guest gets a value.
    fn spawn(&self, agent: String, input: String, fuel: u64, memory: u64) -> BoxFuture<'_, SpawnAnswer>;

    /// Schedules a run of the installed agent `agent` with `input`, due `delay_ms` from now; the task's id.
    fn schedule(&self, agent: String, input: String, delay_ms: u64) -> BoxFuture<'_, Result<String, SpawnError>>;
}

/// How a spawn went, for the guest and for the caller's fuel.
#[derive(Debug, Clone)]
pub struct SpawnAnswer {
    pub result: Result<String, SpawnError>,
    /// Fuel the child used, charged to the caller's store.
    pub fuel_consumed: u64,
}

/// Links `toka:agent/spawn`; `metered` says whether the engine's stores meter fuel.
pub fn add_to_linker(linker: &mut Linker<SandboxState>, metered: bool) -> wasmtime::Result<()> {
    let mut spawn = linker.instance("toka:agent/spawn@0.1.0")?;
    spawn.func_wrap_async(
        "spawn",
        move |store: StoreContextMut<'_, SandboxState>, (agent, input): (String, String)| {
            Box::new(call(store, agent, input, metered))
        },
    )?;
    spawn.func_wrap_async(
        "schedule",
        |store: StoreContextMut<'_, SandboxState>, (agent, input, delay_ms): (String, String, u64)| {
            Box::new(async move {
                let Some(spawner) = store.data().spawner.clone() else {
                    return Ok((Err(SpawnError::Denied("this sandbox may not schedule agents".into())),));
                };
                Ok((spawner.schedule(agent, input, delay_ms).await,))
            })
        },
    )?;
    Ok(())
}

/// `toka:agent/spawn.spawn`: the child's fuel comes out of the caller's store.
async fn call(
    mut store: StoreContextMut<'_, SandboxState>,
    agent: String,
    input: String,
    metered: bool,
) -> wasmtime::Result<(Result<String, SpawnError>,)> {
    let Some(spawner) = store.data().spawner.clone() else {
        return Ok((Err(SpawnError::Denied("this sandbox may not spawn agents".into())),));
    };
    // The child gets what is left of the caller's memory, not a cap of its own on top of it.
    let limiter = &store.data().limiter;
    let left = limiter.max().saturating_sub(limiter.current());
    let fuel = if metered { store.get_fuel()? } else { u64::MAX };
    let answer = spawner.spawn(agent, input, fuel, left).await;
    if metered {
        store.set_fuel(fuel.saturating_sub(answer.fuel_consumed))?;
    }
    Ok((answer.result,))
}
