//! How a guest's run ended, told apart by host-side facts (trap codes, the limiter's and the outputs' flags), never by
//! parsing guest text. Used for runs and tool calls alike.

use super::SandboxState;
use super::limits::Limits;
use super::output::CappedOutput;
use crate::error::{Outcome, one_line};
use wasmtime::Trap;

/// The outcome of a call that failed with `e` in `store`, and a one-line message for it.
pub(crate) fn classify(
    e: &wasmtime::Error,
    store: &wasmtime::Store<SandboxState>,
    stdout: &CappedOutput,
    stderr: &CappedOutput,
    limits: &Limits,
) -> (Outcome, String) {
    if stdout.exceeded() || stderr.exceeded() {
        let which = if stdout.exceeded() { "stdout" } else { "stderr" };
        return (Outcome::OutputLimit, format!("output limit: {which} passed {} bytes", limits.max_output));
    }
    if e.downcast_ref::<super::cancel::Cancelled>().is_some() {
        return (Outcome::Cancelled, "cancelled".into());
    }
    let trap = e.downcast_ref::<Trap>().copied();
    // The trap itself, or the innermost error; the wasm backtrace that wasmtime attaches as context is left out so
    // the message stays one short line.
    let cause = match trap {
        Some(t) => t.to_string(),
        None => one_line(&e.root_cause().to_string()),
    };
    match trap {
        Some(Trap::OutOfFuel) => (Outcome::OutOfFuel, format!("out of fuel: used all {} units", limits.fuel)),
        Some(Trap::Interrupt) => {
            (Outcome::Timeout, format!("timeout: stopped after {}", humantime::format_duration(limits.timeout)))
        }
        Some(Trap::StackOverflow) => (Outcome::StackOverflow, "stack overflow: call stack exhausted".into()),
        _ if store.data().limiter.refused() => (
            Outcome::MemoryLimit,
            format!("memory limit: guest tried to grow past {} bytes, then failed: {cause}", limits.max_memory),
        ),
        _ if e.chain().any(|c| {
            matches!(
                c.downcast_ref::<wasmtime::component::ResourceTableError>(),
                Some(wasmtime::component::ResourceTableError::Full)
            )
        }) =>
        {
            (
                Outcome::Trap,
                format!(
                    "trap: the guest held more than {} WASI handles at once (open files, streams, sockets, \
                     pollables): {cause}",
                    store.data().handle_cap
                ),
            )
        }
        _ => (Outcome::Trap, format!("trap: {cause}")),
    }
}
