//! A run's limits ([`Limits`]), and its memory, table and instance caps for one store, through wasmtime's
//! `ResourceLimiter`.
//!
//! The cap is on the sum of all linear memories of the store (a component built with the preview1 adapter has at
//! least two), counted from their initial size on. Growth past the cap is refused the way the spec allows
//! (`memory.grow` returns -1), so a guest that handles allocation failure can recover; the limiter remembers the
//! refusal, so a guest that traps afterwards is reported as having hit the memory limit rather than a plain trap.

use std::time::Duration;
use wasmtime::ResourceLimiter;

/// Per-run limits. Every one has a default that a caller can lower or raise.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Fuel budget (roughly one unit per wasm instruction). Default 10 billion.
    pub fuel: u64,
    /// Wall-clock deadline, from the start of instantiation. Default 30 s.
    pub timeout: Duration,
    /// Cap on the total linear memory of the run's instances, in bytes. Default 512 MiB.
    pub max_memory: u64,
    /// Cap on each of stdout and stderr (and on the log), in bytes. Default 1 MiB.
    pub max_output: u64,
    /// Cap on any one table's elements. Default 1 million.
    pub max_table_elements: usize,
    /// Cap on the records of each kind (observations, tool calls, state writes, model calls) one run may add to
    /// the log. Default 10,000.
    pub max_records: u64,
    /// Model tokens the run may use (the lower of this and its token's `llm_tokens`); the model gateway's default
    /// (`llm::DEFAULT_RUN_TOKENS`) when neither says.
    pub llm_tokens: Option<u64>,
    /// How deep spawned agents may nest: a run's children are at depth 1, theirs at 2 ... Default
    /// [`DEFAULT_SPAWN_DEPTH`]; a child inherits its parent's cap, so a child cannot raise it.
    pub max_spawn_depth: u32,
    /// How many agents one run may spawn (refused attempts count). Default [`DEFAULT_SPAWNS`]; inherited as the
    /// depth cap is.
    pub max_spawns: u32,
}

/// Default depth cap of spawned agents.
pub const DEFAULT_SPAWN_DEPTH: u32 = 3;
/// Default number of agents one run may spawn.
pub const DEFAULT_SPAWNS: u32 = 16;
/// Highest depth cap a run may ask for.
pub const MAX_SPAWN_DEPTH: u32 = 8;
/// Highest fan-out cap a run may ask for.
pub const MAX_SPAWNS: u32 = 1024;

/// Most WASI handles one run may hold at once (open files and directories, streams, sockets, timers' pollables,
/// 0.3 futures): the size of its store's resource table, which wasmtime otherwise lets grow to a million entries.
/// Every open file or socket among them is a host file descriptor, taken from the process's `RLIMIT_NOFILE` that all
/// runs share, so without this one guest could exhaust it (measured: 19 985 descriptors held by one WASI 0.3 guest
/// under a limit of 20 000). A run past it is stopped as a trap. A sandbox that can open descriptors gets its share of
/// the process's instead, at most this (see [`super::fds`]).
pub const MAX_HANDLES: usize = 4096;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: 10_000_000_000,
            timeout: Duration::from_secs(30),
            max_memory: 512 << 20,
            max_output: 1 << 20,
            max_table_elements: 1_000_000,
            max_records: super::budget::DEFAULT_MAX_RECORDS,
            llm_tokens: None,
            max_spawn_depth: DEFAULT_SPAWN_DEPTH,
            max_spawns: DEFAULT_SPAWNS,
        }
    }
}

/// Caps for one store. Defaults are documented on [`Limits`].
#[derive(Debug, Clone)]
pub struct MemoryLimiter {
    max_memory: u64,
    max_table_elements: usize,
    max_instances: usize,
    total: u64,
    peak: u64,
    refused: bool,
    /// Size of the last permitted growth, taken back if the growth then fails.
    pending: u64,
}

impl MemoryLimiter {
    pub fn new(max_memory: u64, max_table_elements: usize) -> Self {
        MemoryLimiter {
            max_memory,
            max_table_elements,
            max_instances: 64,
            total: 0,
            peak: 0,
            refused: false,
            pending: 0,
        }
    }

    /// The largest total of linear memory the store ever held, in bytes.
    pub fn peak(&self) -> u64 {
        self.peak
    }

    /// The total of linear memory the store holds now, in bytes.
    pub fn current(&self) -> u64 {
        self.total
    }

    /// The cap on the store's total linear memory.
    pub fn max(&self) -> u64 {
        self.max_memory
    }

    /// Whether a growth of memory or of a table was refused at any point.
    pub fn refused(&self) -> bool {
        self.refused
    }

    /// Arms the limiter for the next call into the same store (a kept tool instance) with that call's cap: the
    /// memory already held still counts, the peak and the refusal start over. False (and nothing changed) if the
    /// store already holds more than `max_memory`: such a store must not be used for the call.
    pub fn rearm(&mut self, max_memory: u64) -> bool {
        if self.total > max_memory {
            return false;
        }
        self.max_memory = max_memory;
        self.peak = self.total;
        self.refused = false;
        self.pending = 0;
        true
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let grow = (desired as u64).saturating_sub(current as u64);
        let new_total = self.total.saturating_add(grow);
        if new_total > self.max_memory || maximum.is_some_and(|m| desired > m) {
            self.refused = true;
            return Ok(false);
        }
        self.total = new_total;
        self.pending = grow;
        self.peak = self.peak.max(self.total);
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.total = self.total.saturating_sub(self.pending);
        self.pending = 0;
        self.refused = true;
        Ok(())
    }

    fn table_growing(&mut self, _current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max_table_elements || maximum.is_some_and(|m| desired > m) {
            self.refused = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        self.max_instances
    }

    fn tables(&self) -> usize {
        self.max_instances
    }

    fn memories(&self) -> usize {
        self.max_instances
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_the_sum_of_memories_and_tracks_peak() {
        let mut l = MemoryLimiter::new(10 << 16, 1000);
        assert!(l.memory_growing(0, 4 << 16, None).unwrap());
        assert!(l.memory_growing(0, 4 << 16, None).unwrap());
        assert!(!l.memory_growing(4 << 16, 7 << 16, None).unwrap());
        assert!(l.refused());
        assert!(l.memory_growing(4 << 16, 6 << 16, None).unwrap());
        assert_eq!(l.peak(), 10 << 16);
    }

    #[test]
    fn failed_growth_is_taken_back() {
        let mut l = MemoryLimiter::new(10 << 16, 1000);
        assert!(l.memory_growing(0, 8 << 16, None).unwrap());
        l.memory_grow_failed(wasmtime::format_err!("os said no")).unwrap();
        assert!(l.memory_growing(0, 9 << 16, None).unwrap());
    }

    /// A kept store's next call gets its own cap, counted with what the store already holds, and a fresh refusal
    /// flag; a store holding more than the new cap is refused for it.
    #[test]
    fn rearm_applies_the_next_calls_cap() {
        let mut l = MemoryLimiter::new(10 << 16, 1000);
        assert!(l.memory_growing(0, 6 << 16, None).unwrap());
        assert!(!l.memory_growing(6 << 16, 11 << 16, None).unwrap());
        assert!(l.refused());
        assert!(l.rearm(8 << 16));
        assert!(!l.refused());
        assert_eq!(l.max(), 8 << 16);
        assert!(!l.memory_growing(6 << 16, 9 << 16, None).unwrap(), "the held 6 pages count against the new cap");
        assert!(l.memory_growing(6 << 16, 8 << 16, None).unwrap());
        assert!(!l.rearm(7 << 16), "holds 8 pages: more than a cap of 7");
        assert_eq!(l.max(), 8 << 16, "a refused rearm changes nothing");
    }

    #[test]
    fn tables_are_capped() {
        let mut l = MemoryLimiter::new(1 << 30, 100);
        assert!(l.table_growing(0, 100, None).unwrap());
        assert!(!l.table_growing(100, 101, None).unwrap());
    }
}
