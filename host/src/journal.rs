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

/// An id unique enough to correlate a run's records: a per-process counter, offset by a key drawn once per process
/// from the operating system's randomness and mixed by a bijection of 64-bit integers, so that two ids of one
/// process never collide and ids of different processes (or nodes) collide no more often than random 64-bit values.
/// Cheap (no hash of a formatted string per id): a tool call makes one.
fn fresh_id(prefix: &str) -> String {
    use std::hash::BuildHasher;
    use std::sync::LazyLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static KEY: LazyLock<u64> = LazyLock::new(|| {
        std::collections::hash_map::RandomState::new().hash_one((std::process::id(), std::time::SystemTime::now()))
    });
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{:016x}", mix(KEY.wrapping_add(n)))
}

/// SplitMix64's finalizer: a bijection on `u64` (each step is invertible) that spreads consecutive inputs apart.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids keep their form (a prefix and 16 hex digits) and never repeat within a process, from several threads.
    #[test]
    fn fresh_ids_are_distinct_and_well_formed() {
        let ids: Vec<String> = std::thread::scope(|s| {
            let workers: Vec<_> =
                (0..4).map(|_| s.spawn(|| (0..25_000).map(|_| fresh_call_id()).collect::<Vec<_>>())).collect();
            workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
        });
        for id in &ids {
            let hex = id.strip_prefix("call-").unwrap();
            assert!(hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        }
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), 100_000);
        // The mix is a bijection: distinct inputs, distinct outputs, also across the wrap of the counter.
        let around: std::collections::HashSet<u64> = (u64::MAX - 500..=u64::MAX).chain(0..500).map(mix).collect();
        assert_eq!(around.len(), 1001);
    }
}
