//! A run's budget of recorded host calls: how many observations (and how many bytes of them), tool calls, state
//! writes and model calls one run may add to the log, whatever its token's rate allows.
//!
//! Every such call is a durable record, so without a cap a guest spinning on `events.emit` grows the log for as
//! long as its deadline lasts. Attempts are counted, refused ones too (a refused call may still be recorded as
//! `op.rejected`). The first time a cap is hit, the run records one `limit.reached` event naming it; every later
//! attempt gets an error value without touching the log. Nested tool calls share their run's budget.

use std::collections::BTreeSet;
use std::sync::Mutex;

/// Records of each kind (observations, tool calls, state writes) one run may add, unless `--max-records` says.
pub const DEFAULT_MAX_RECORDS: u64 = 10_000;
/// Bytes of observation payloads one run may emit.
pub const MAX_OBSERVATION_BYTES: u64 = 16 << 20;
/// Bytes of tool input one run may send, nested calls included.
pub const MAX_TOOL_INPUT_BYTES: u64 = 256 << 20;

/// What a budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Counted {
    Observations,
    ObservationBytes,
    ToolCalls,
    ToolInputBytes,
    StateWrites,
    LlmCalls,
}

impl Counted {
    pub fn name(self) -> &'static str {
        match self {
            Counted::Observations => "observations",
            Counted::ObservationBytes => "observation-bytes",
            Counted::ToolCalls => "tool-calls",
            Counted::ToolInputBytes => "tool-input-bytes",
            Counted::StateWrites => "state-writes",
            Counted::LlmCalls => "llm-calls",
        }
    }

    fn cap(self, max_records: u64) -> u64 {
        match self {
            Counted::Observations | Counted::ToolCalls | Counted::StateWrites | Counted::LlmCalls => max_records,
            Counted::ObservationBytes => MAX_OBSERVATION_BYTES,
            Counted::ToolInputBytes => MAX_TOOL_INPUT_BYTES,
        }
    }
}

/// A run's use of its caps.
#[derive(Debug)]
pub struct RunBudget {
    max_records: u64,
    used: Mutex<Used>,
}

impl Default for RunBudget {
    fn default() -> Self {
        RunBudget::new(DEFAULT_MAX_RECORDS)
    }
}

#[derive(Debug, Default)]
struct Used {
    counts: [u64; 6],
    /// Caps already reported in the log.
    reported: BTreeSet<Counted>,
}

/// A cap that a call would pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverBudget {
    pub counted: Counted,
    pub cap: u64,
    /// Whether this is the first time, so the caller records `limit.reached`.
    pub first: bool,
}

impl std::fmt::Display for OverBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "run limit reached: at most {} {} per run", self.cap, self.counted.name().replace('-', " "))
    }
}

impl RunBudget {
    /// A budget of `max_records` records of each kind.
    pub fn new(max_records: u64) -> Self {
        RunBudget { max_records, used: Mutex::default() }
    }

    /// Takes `amounts` (what, how much) from the budget, all or nothing.
    pub fn take(&self, amounts: &[(Counted, u64)]) -> Result<(), OverBudget> {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        for &(counted, n) in amounts {
            let slot = used.counts[counted as usize];
            let cap = counted.cap(self.max_records);
            if slot.saturating_add(n) > cap {
                let first = used.reported.insert(counted);
                return Err(OverBudget { counted, cap, first });
            }
        }
        for &(counted, n) in amounts {
            used.counts[counted as usize] += n;
        }
        Ok(())
    }
}

/// Records that `over`'s cap was hit, the first time only. Failing to record it does not change the answer the guest
/// gets (the call is refused either way).
pub async fn report(log: Option<&crate::events::EventLog>, token: &str, run_id: &str, over: &OverBudget) {
    if let (Some(log), true) = (log, over.first) {
        let op = crate::kernel::Op::ReachLimit {
            run_id: run_id.to_string(),
            limit: over.counted.name().to_string(),
            cap: over.cap,
        };
        drop(log.submit_async(crate::journal::operation_by(token, op)).await);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_are_all_or_nothing_and_reported_once() {
        let b = RunBudget::default();
        for _ in 0..DEFAULT_MAX_RECORDS {
            b.take(&[(Counted::Observations, 1), (Counted::ObservationBytes, 1)]).unwrap();
        }
        let over = b.take(&[(Counted::Observations, 1), (Counted::ObservationBytes, 1)]).unwrap_err();
        assert_eq!((over.counted, over.first), (Counted::Observations, true));
        assert_eq!(over.to_string(), "run limit reached: at most 10000 observations per run");
        assert!(!b.take(&[(Counted::Observations, 1)]).unwrap_err().first, "reported once");
        // The refused attempt took nothing from the byte budget.
        b.take(&[(Counted::ObservationBytes, MAX_OBSERVATION_BYTES - DEFAULT_MAX_RECORDS)]).unwrap();
        assert!(b.take(&[(Counted::ObservationBytes, 1)]).is_err());
        b.take(&[(Counted::StateWrites, DEFAULT_MAX_RECORDS)]).unwrap();
        let small = RunBudget::new(2);
        small.take(&[(Counted::ToolCalls, 2)]).unwrap();
        assert_eq!(
            small.take(&[(Counted::ToolCalls, 1)]).unwrap_err().to_string(),
            "run limit reached: at most 2 tool calls per run"
        );
    }
}
