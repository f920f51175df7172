//! The reuse mode: one caller's calls of a tool share one kept instance, instead of a fresh sandbox per call.
//!
//! Opt-in, per tool, by the operator (`toka-host tool add --reuse`), and only for a tool whose `describe()` says
//! `side-effect: none` (see [`super::registry::check_reusable`]): such a tool changes nothing outside its own
//! memory, so keeping that memory from one call to the next changes nothing anyone else can see. The caller is the
//! one that holds the [`KeptTools`]: a run's top-level tool calls (its [`super::call::ToolSession`]), or one MCP
//! session on stdio. A kept instance goes when its caller goes (the run ends, the process ends), after
//! [`KEPT_IDLE`] without a call, or when the tool is replaced; a trap, a limit hit or a timeout in it discards it
//! (the next call gets a fresh one). Another caller never gets it: it is found only through its own caller's
//! [`KeptTools`], never by a name or id a caller could give.
//!
//! What each call still gets, as a fresh sandbox would (see [`crate::sandbox::Sandbox::rearm`]): the token, depth,
//! input and output checks and both records (`tool.called`, `tool.completed`/`tool.failed`), its own fuel, deadline,
//! memory cap, output caps, and its own access to tools and models. What it skips: building a store and
//! instantiating (WASI context, pool slot, the guest's start-up). This module must never hand a kept instance to a
//! caller other than the one it was made for, nor keep one that ended a call in a trap or a limit.
//!
//! Bounded: at most [`MAX_KEPT_PER_CALLER`] tools per caller, and host-wide at most [`KeptBudget`]'s instances and
//! bytes of linear memory (an instance that would pass either is dropped after its call, not kept).

use crate::sandbox::Sandbox;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most tools one caller keeps an instance of.
pub const MAX_KEPT_PER_CALLER: usize = 8;
/// Host-wide default cap on kept instances (each holds a store, and with the pooling allocator a pool slot: the
/// pool has 64 component instances, so kept ones never take more than a quarter of it).
pub const DEFAULT_MAX_KEPT: u64 = 16;
/// Host-wide default cap on the linear memory all kept instances hold together.
pub const DEFAULT_MAX_KEPT_BYTES: u64 = 256 << 20;
/// A kept instance not called for this long is dropped at its caller's next call.
pub const KEPT_IDLE: Duration = Duration::from_secs(60);

/// The host-wide cap on kept instances, shared by every caller of one tool host.
#[derive(Debug)]
pub struct KeptBudget {
    max_instances: u64,
    max_bytes: u64,
    instances: AtomicU64,
    bytes: AtomicU64,
}

impl Default for KeptBudget {
    fn default() -> Self {
        KeptBudget::new(DEFAULT_MAX_KEPT, DEFAULT_MAX_KEPT_BYTES)
    }
}

impl KeptBudget {
    pub fn new(max_instances: u64, max_bytes: u64) -> Self {
        KeptBudget { max_instances, max_bytes, instances: AtomicU64::new(0), bytes: AtomicU64::new(0) }
    }

    /// Kept instances now, host-wide.
    pub fn instances(&self) -> u64 {
        self.instances.load(Ordering::SeqCst)
    }

    /// Linear memory the kept instances hold now, host-wide.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }

    /// Room for one more instance holding `bytes`, or `None` if either cap would be passed.
    fn reserve(self: &Arc<Self>, bytes: u64) -> Option<Reservation> {
        let take = |counter: &AtomicU64, n: u64, max: u64| {
            counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_add(n).filter(|t| *t <= max)).is_ok()
        };
        if !take(&self.instances, 1, self.max_instances) {
            return None;
        }
        if !take(&self.bytes, bytes, self.max_bytes) {
            self.instances.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Reservation { budget: self.clone(), bytes })
    }
}

/// One kept instance's share of the [`KeptBudget`], given back when it is dropped.
#[derive(Debug)]
struct Reservation {
    budget: Arc<KeptBudget>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.instances.fetch_sub(1, Ordering::SeqCst);
        self.budget.bytes.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

/// A tool instance kept between calls, with the store it lives in.
pub(crate) struct Kept {
    /// The component it was made from: a tool replaced under the same name is never served by the old instance.
    pub sha256: String,
    /// The revocation id of the token of the call that made it: a kept instance serves calls under that token only
    /// (a second line of defence: a [`KeptTools`] already belongs to one caller).
    owner: String,
    pub sandbox: Sandbox,
    pub instance: crate::bindings::tool::Tool,
    last_used: Instant,
    _reserved: Reservation,
}

/// The instances one caller keeps, by tool name. Dropped with its caller, which drops them all.
pub struct KeptTools {
    budget: Arc<KeptBudget>,
    slots: Mutex<HashMap<String, Kept>>,
}

impl std::fmt::Debug for KeptTools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeptTools").field("kept", &self.lock().len()).finish()
    }
}

impl KeptTools {
    /// A new caller's (empty) set of kept instances, counted against `budget`.
    pub fn new(budget: Arc<KeptBudget>) -> Self {
        KeptTools { budget, slots: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Kept>> {
        // A poisoned lock means a panic while the map was held; its entries are whole stores either way.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many instances this caller keeps now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the kept instance of `tool` out, if there is one made from `sha256` for a call under the token
    /// `owner` and not idle past [`KEPT_IDLE`] (while it is out, a concurrent call of the same caller gets a fresh
    /// instance). Drops idle ones on the way, and a mismatched one.
    pub(crate) fn take(&self, tool: &str, sha256: &str, owner: &str) -> Option<Kept> {
        let mut slots = self.lock();
        let now = Instant::now();
        slots.retain(|_, k| now.duration_since(k.last_used) < KEPT_IDLE);
        let kept = slots.remove(tool)?;
        (kept.sha256 == sha256 && kept.owner == owner).then_some(kept)
    }

    /// Keeps `sandbox` and `instance` (which just ended a call cleanly) for this caller's next call of `tool`, if
    /// the caps allow; otherwise they are dropped here.
    pub(crate) fn keep(
        &self,
        tool: &str,
        sha256: &str,
        owner: &str,
        sandbox: Sandbox,
        instance: crate::bindings::tool::Tool,
    ) {
        let mut slots = self.lock();
        if slots.contains_key(tool) || slots.len() >= MAX_KEPT_PER_CALLER {
            return;
        }
        let bytes = sandbox.store.data().limiter.current();
        let Some(reserved) = self.budget.reserve(bytes) else { return };
        let kept = Kept {
            sha256: sha256.to_string(),
            owner: owner.to_string(),
            sandbox,
            instance,
            last_used: Instant::now(),
            _reserved: reserved,
        };
        slots.insert(tool.to_string(), kept);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host-wide caps hold under many reservations, and every dropped reservation gives its share back.
    #[test]
    fn the_budget_caps_instances_and_bytes_and_gives_back_on_drop() {
        let budget = Arc::new(KeptBudget::new(3, 100));
        let a = budget.reserve(40).expect("room for the first");
        let b = budget.reserve(40).expect("room for the second");
        assert!(budget.reserve(40).is_none(), "120 bytes would pass the 100 byte cap");
        let c = budget.reserve(20).expect("exactly at the byte cap");
        assert!(budget.reserve(0).is_none(), "a fourth instance passes the instance cap");
        assert_eq!((budget.instances(), budget.bytes()), (3, 100));
        drop(b);
        assert_eq!((budget.instances(), budget.bytes()), (2, 60));
        let d = budget.reserve(40).expect("room again after a drop");
        drop((a, c, d));
        assert_eq!((budget.instances(), budget.bytes()), (0, 0));
    }
}
