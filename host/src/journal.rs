//! Recording operations: how an operation to submit to the event log is made (its time, the token whose authority
//! it is submitted under) and the fresh ids that correlate a run's records.
//!
//! A low layer: the sandbox records through it, so it must never import a run, a tool, the model gateway or a face.

use crate::kernel::{LOCAL_TOKEN, Op, Operation};

/// An operation submitted now under the local operator's authority (`toka-host state set`, `token revoke` ...).
pub fn operation(op: Op) -> Operation {
    operation_by(LOCAL_TOKEN, op)
}

/// An operation submitted now under the authority of the token with revocation id `token`.
pub fn operation_by(token: &str, op: Op) -> Operation {
    Operation { time_ms: crate::events::now_ms(), token: token.into(), chain: Vec::new(), op }
}

/// A fresh task id.
pub fn fresh_task_id() -> String {
    fresh_id("task")
}

/// A fresh run id.
pub fn fresh_run_id() -> String {
    fresh_id("run")
}

/// A fresh tool call id.
pub fn fresh_call_id() -> String {
    fresh_id("call")
}

/// A fresh plan id.
pub fn fresh_plan_id() -> String {
    fresh_id("plan")
}

/// An id unique enough to correlate a run's records: time, process and a per-process counter.
fn fresh_id(prefix: &str) -> String {
    use sha2::{Digest, Sha256};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let seed = format!("{}-{}-{}", now.as_nanos(), std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
    let digest = Sha256::digest(seed.as_bytes());
    format!("{prefix}-{}", hex::encode(&digest[..8]))
}
