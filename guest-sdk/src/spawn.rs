//! Sub-agents (`toka:agent/spawn`): start an agent installed in the host, by name, and wait for its result.
//!
//! The run's token must grant `spawn:NAME`. The child runs in a sandbox of its own, with this run's token narrowed
//! to what the child's package declares and this run has (never wider), within what is left of this run's fuel,
//! memory and time; its fuel is charged to this run. Depth and the number of children per run are capped by the
//! host. Every refusal is an error value here, never a trap.
//!
//! ```no_run
//! let summary = toka_sdk::spawn::spawn("summarize", &serde_json::json!({ "text": "..." }))?;
//! # Ok::<(), toka_sdk::spawn::SpawnError>(())
//! ```

use crate::bindings::toka::agent::spawn as host;
pub use host::SpawnError;

/// Runs the installed agent `agent` with a JSON input; returns its JSON output.
pub fn spawn(agent: &str, input: &serde_json::Value) -> Result<serde_json::Value, SpawnError> {
    let output = host::spawn(agent, &input.to_string())?;
    serde_json::from_str(&output)
        .map_err(|e| SpawnError::Failed(format!("{agent} returned output that is not JSON: {e}")))
}

/// The error's kind and message, e.g. `("denied", "grant refused: ...")`.
pub fn describe(error: &SpawnError) -> (&'static str, &str) {
    match error {
        SpawnError::Denied(m) => ("denied", m),
        SpawnError::NotFound(m) => ("not-found", m),
        SpawnError::InvalidInput(m) => ("invalid-input", m),
        SpawnError::Limit(m) => ("limit", m),
        SpawnError::Failed(m) => ("failed", m),
    }
}

/// Schedules a run of the installed agent `agent` with a JSON input, due `delay_ms` from now; returns the task's id
/// at once. The host's service starts it when due (see `wit/agent.wit`, `spawn.schedule`).
pub fn schedule(agent: &str, input: &serde_json::Value, delay_ms: u64) -> Result<String, SpawnError> {
    host::schedule(agent, &input.to_string(), delay_ms)
}
