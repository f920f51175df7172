//! The host side of `toka:agent/state`: per-agent key-value state in redb, surviving restarts.
//!
//! Deny by default: without a `state:ro` or `state:rw` grant every call is `denied`. Keys are at most
//! [`MAX_KEY`] bytes, values at most [`MAX_VALUE`], and an agent holds at most [`MAX_TOTAL`] bytes (keys plus
//! values). A write is an operation of the log carrying the value (`write-state`), applied with its `state.write`
//! event in one transaction by the log's writer (see [`crate::agent_state`]), so on a cluster every node holds it.
//! This module never writes the state tables itself.

use crate::agent_state::{self as store, OVER_QUOTA, StoreError};
pub use crate::agent_state::{MAX_KEY, MAX_TOTAL, MAX_VALUE};
use crate::bindings::agent::toka::agent::state::{Host, StateError};
use crate::db::Db;
use crate::events::{AppendError, EventLog};
use crate::kernel::{Op, StateChange};
use std::sync::Arc;

/// What a run may do with its agent's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StateGrant {
    #[default]
    None,
    ReadOnly,
    ReadWrite,
}

/// One run's access to its agent's state.
#[derive(Debug)]
pub struct StateAccess {
    pub agent: String,
    pub run_id: String,
    pub grant: StateGrant,
    /// The authorizing token's revocation id.
    pub token: String,
    /// The run's event log (none: the run has no database, and no state).
    pub log: Option<Arc<EventLog>>,
    /// The run's caps on recorded calls.
    pub budget: Arc<super::budget::RunBudget>,
}

fn storage(e: impl std::fmt::Display) -> StateError {
    StateError::Storage(crate::error::one_line(&e.to_string()))
}

fn from_store(e: StoreError) -> StateError {
    match e {
        StoreError::OverQuota(why) => StateError::TooLarge(why),
        other => storage(other),
    }
}

fn check_key(key: &str) -> Result<(), StateError> {
    crate::bounds::check_state_key(key).map_err(StateError::InvalidKey)
}

impl StateAccess {
    fn readable(&self) -> Result<&Db, StateError> {
        match (self.grant, &self.log) {
            (StateGrant::None, _) => Err(StateError::Denied("no state grant (state:ro or state:rw)".into())),
            (_, None) => Err(StateError::Storage("this run has no database".into())),
            (_, Some(log)) => Ok(log.db()),
        }
    }

    fn writable(&self) -> Result<Arc<EventLog>, StateError> {
        self.readable()?;
        if self.grant != StateGrant::ReadWrite {
            return Err(StateError::Denied("state is granted read-only (state:ro)".into()));
        }
        self.log.clone().ok_or_else(|| StateError::Storage("this run has no database".into()))
    }

    /// Everything that can refuse a write without recording it: the run's cap on state writes, and the agent's
    /// quota (so a write that cannot fit is refused before it is logged or takes from the rate budget).
    async fn admit(&self, log: &EventLog, key: &str, new_len: Option<usize>) -> Result<(), StateError> {
        let (db, agent, k) = (log.db().clone(), self.agent.clone(), key.to_string());
        let fits = tokio::task::spawn_blocking(move || store::quota_check(&db, &agent, &k, new_len));
        fits.await.map_err(storage)?.map_err(from_store)?;
        if let Err(over) = self.budget.take(&[(super::budget::Counted::StateWrites, 1)]) {
            super::budget::report(self.log.as_deref(), &self.token, &self.run_id, &over).await;
            return Err(StateError::TooLarge(over.to_string()));
        }
        Ok(())
    }

    /// Records the write and, in the same transaction, makes it (or neither: the kernel may refuse it for the
    /// rate limit, a revoked token, or the quota when another write got there first). Returns whether the key held
    /// a value before.
    async fn write(&self, log: &EventLog, detail: serde_json::Value, change: StateChange) -> Result<bool, StateError> {
        let op = Op::WriteState { run_id: self.run_id.clone(), detail, change: Some(change) };
        let applied =
            log.submit_accepted(crate::journal::operation_by(&self.token, op)).await.map_err(|e| match e {
                AppendError::Rejected(reason) if reason.starts_with(OVER_QUOTA) => StateError::TooLarge(reason),
                AppendError::Rejected(reason) => StateError::Denied(reason),
                e => storage(e),
            })?;
        Ok(applied.state_existed.unwrap_or(false))
    }
}

impl Host for StateAccess {
    fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, StateError> {
        check_key(&key)?;
        store::get(self.readable()?, &self.agent, &key).map_err(from_store)
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), StateError> {
        check_key(&key)?;
        if value.len() > MAX_VALUE {
            return Err(StateError::TooLarge(format!(
                "value is {} bytes, over the {MAX_VALUE} byte limit",
                value.len()
            )));
        }
        let log = self.writable()?;
        self.admit(&log, &key, Some(value.len())).await?;
        let detail = serde_json::json!({ "op": "set", "key": key, "bytes": value.len() });
        self.write(&log, detail, StateChange::set(&key, &value)).await.map(drop)
    }

    async fn delete(&mut self, key: String) -> Result<bool, StateError> {
        check_key(&key)?;
        let log = self.writable()?;
        self.admit(&log, &key, None).await?;
        let detail = serde_json::json!({ "op": "delete", "key": key });
        self.write(&log, detail, StateChange::delete(&key)).await
    }

    fn list_keys(&mut self, prefix: String) -> Result<Vec<String>, StateError> {
        store::list(self.readable()?, &self.agent, &prefix).map_err(from_store)
    }
}
