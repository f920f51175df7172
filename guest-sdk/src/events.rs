//! Observations through the host's `toka:agent/events` interface: structured events recorded in the host's
//! tamper-evident log, durable before [`emit`] returns.
//!
//! ```no_run
//! let seq = toka_sdk::events::emit("file.summarized", &serde_json::json!({ "files": 3 })).unwrap();
//! ```

use serde::Serialize;

/// Records an observation of `kind` with `payload` serialized as JSON; returns its sequence number in the log.
pub fn emit(kind: &str, payload: &impl Serialize) -> Result<u64, String> {
    let payload = serde_json::to_string(payload).map_err(|e| format!("cannot serialize the payload: {e}"))?;
    emit_raw(kind, &payload)
}

/// Records an observation whose payload is already JSON text.
pub fn emit_raw(kind: &str, payload: &str) -> Result<u64, String> {
    #[cfg(target_family = "wasm")]
    return crate::bindings::toka::agent::events::emit(kind, payload);
    #[cfg(not(target_family = "wasm"))]
    {
        let _ = (kind, payload);
        Err("no host to record observations outside a component".into())
    }
}
