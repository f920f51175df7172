//! The host side of `toka:agent/events`: an agent's observations, appended to the event log as `observation`
//! events of its run, durable before `emit` returns.
//!
//! Without an event log (a library caller that runs without one), `emit` fails with a message rather than
//! pretending: an agent must never believe an observation was recorded when it was not.

use crate::bindings::agent::toka::agent::events::Host;
use crate::events::{EventLog, MAX_PAYLOAD};
use crate::kernel::Op;
use std::sync::Arc;

/// Longest observation kind accepted.
pub const MAX_KIND: usize = 128;

/// One run's observation channel.
#[derive(Debug)]
pub struct Observer {
    pub agent: String,
    pub run_id: String,
    /// The authorizing token's revocation id.
    pub token: String,
    pub log: Option<Arc<EventLog>>,
    /// Observations recorded so far in this run.
    pub emitted: u64,
    /// The run's caps on recorded calls.
    pub budget: Arc<super::budget::RunBudget>,
}

impl Observer {
    fn check(kind: &str, payload: &str) -> Result<serde_json::Value, String> {
        if kind.is_empty() || kind.len() > MAX_KIND || kind.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(format!("invalid observation kind: must be 1 to {MAX_KIND} characters, no spaces or controls"));
        }
        if payload.len() > MAX_PAYLOAD {
            return Err(format!("payload is {} bytes, over the {MAX_PAYLOAD} byte limit", payload.len()));
        }
        let value: serde_json::Value = serde_json::from_str(payload)
            .map_err(|e| format!("payload is not JSON: {}", crate::error::one_line(&e.to_string())))?;
        // Stored re-encoded: a payload can grow (`1e2` becomes `100.0`), so the stored size is what counts.
        let stored = serde_json::to_vec(&value).map_or(usize::MAX, |v| v.len());
        if stored > MAX_PAYLOAD {
            return Err(format!("payload is {stored} bytes once encoded, over the {MAX_PAYLOAD} byte limit"));
        }
        let depth = crate::bounds::depth(&value);
        if depth > crate::bounds::MAX_DEPTH {
            return Err(format!(
                "payload is nested {depth} levels deep, over the {} level limit",
                crate::bounds::MAX_DEPTH
            ));
        }
        Ok(value)
    }
}

impl Host for Observer {
    async fn emit(&mut self, observed: String, payload: String) -> Result<u64, String> {
        use super::budget::Counted;
        let size = payload.len() as u64;
        if let Err(over) = self.budget.take(&[(Counted::Observations, 1), (Counted::ObservationBytes, size)]) {
            super::budget::report(self.log.as_deref(), &self.token, &self.run_id, &over).await;
            return Err(over.to_string());
        }
        let payload = Self::check(&observed, &payload)?;
        let Some(log) = self.log.clone() else {
            return Err("this run has no event log".into());
        };
        let op = Op::EmitObservation { run_id: self.run_id.clone(), kind: observed, payload };
        let applied =
            log.submit_accepted(crate::journal::operation_by(&self.token, op)).await.map_err(|e| e.to_string())?;
        self.emitted += 1;
        applied.events.first().map(|a| a.seq).ok_or_else(|| "the observation produced no event".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_payloads_are_checked() {
        assert!(Observer::check("file.summarized", r#"{"n":1}"#).is_ok());
        assert!(Observer::check("", "{}").unwrap_err().contains("invalid observation kind"));
        assert!(Observer::check("two words", "{}").is_err());
        assert!(Observer::check("k", "{nope").unwrap_err().contains("not JSON"));
        let big = format!("\"{}\"", "x".repeat(MAX_PAYLOAD));
        assert!(Observer::check("k", &big).unwrap_err().contains("over the"));
        let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        assert!(Observer::check("k", &deep(crate::bounds::MAX_DEPTH)).is_ok());
        let err = Observer::check("k", &deep(crate::bounds::MAX_DEPTH + 1)).unwrap_err();
        assert_eq!(err, "payload is nested 33 levels deep, over the 32 level limit");
        assert!(Observer::check("k", &deep(126)).is_err(), "deep enough to break the log once wrapped");
    }
}
