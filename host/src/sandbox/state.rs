//! The host side of `toka:agent/state`: per-agent key-value state in redb, surviving restarts.
//!
//! Deny by default: without a `state:ro` or `state:rw` grant every call is `denied`. Keys are at most
//! [`MAX_KEY`] bytes, values at most [`MAX_VALUE`], and an agent holds at most [`MAX_TOTAL`] bytes (keys plus
//! values), tracked in the same transaction as each write. Every write is also recorded as a `state.write` event.

use crate::bindings::agent::toka::agent::state::{Host, StateError};
use crate::db::{Db, STATE, STATE_USAGE};
use crate::events::{AppendError, EventLog};
use crate::kernel::Op;
use redb::{ReadableDatabase, ReadableTable};
use std::sync::Arc;

pub const MAX_KEY: usize = 256;
pub const MAX_VALUE: usize = 1 << 20;
pub const MAX_TOTAL: u64 = 16 << 20;

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
    pub db: Option<Db>,
    pub log: Option<Arc<EventLog>>,
    /// The run's caps on recorded calls.
    pub budget: Arc<super::budget::RunBudget>,
}

fn storage(e: impl std::fmt::Display) -> StateError {
    StateError::Storage(crate::error::one_line(&e.to_string()))
}

fn check_key(key: &str) -> Result<(), StateError> {
    if key.is_empty() || key.len() > MAX_KEY || key.chars().any(char::is_control) {
        return Err(StateError::InvalidKey(format!("keys are 1 to {MAX_KEY} bytes without control characters")));
    }
    Ok(())
}

impl StateAccess {
    fn readable(&self) -> Result<&Db, StateError> {
        match (self.grant, &self.db) {
            (StateGrant::None, _) => Err(StateError::Denied("no state grant (state:ro or state:rw)".into())),
            (_, None) => Err(StateError::Storage("this run has no database".into())),
            (_, Some(db)) => Ok(db),
        }
    }

    fn writable(&self) -> Result<&Db, StateError> {
        let db = self.readable()?;
        if self.grant != StateGrant::ReadWrite {
            return Err(StateError::Denied("state is granted read-only (state:ro)".into()));
        }
        Ok(db)
    }

    /// Everything that can refuse a write without recording it: the run's cap on state writes, and the agent's
    /// quota (so a write that cannot fit is refused before it is logged or takes from the rate budget).
    async fn admit(&self, db: &Db, key: &str, new_len: Option<usize>) -> Result<(), StateError> {
        let (db2, agent, k) = (db.clone(), self.agent.clone(), key.to_string());
        let fits = tokio::task::spawn_blocking(move || quota_check(&db2, &agent, &k, new_len));
        fits.await.map_err(storage)??;
        if let Err(over) = self.budget.take(&[(super::budget::Counted::StateWrites, 1)]) {
            super::budget::report(self.log.as_deref(), &self.token, &self.run_id, &over).await;
            return Err(StateError::TooLarge(over.to_string()));
        }
        Ok(())
    }

    async fn record(&self, payload: serde_json::Value) -> Result<(), StateError> {
        if let Some(log) = &self.log {
            let op = Op::WriteState { run_id: self.run_id.clone(), detail: payload };
            log.submit_accepted(crate::journal::operation_by(&self.token, op)).await.map_err(|e| match e {
                AppendError::Rejected(reason) => StateError::Denied(reason),
                e => storage(e),
            })?;
        }
        Ok(())
    }
}

/// The agent's state usage after replacing a value of `old` bytes (if any) under `key` with one of `new` bytes (or
/// deleting it), refused if it would pass the quota while growing.
fn new_usage(agent: &str, key: &str, used: u64, old: Option<u64>, new: Option<usize>) -> Result<u64, StateError> {
    let freed = old.map_or(0, |len| len + key.len() as u64);
    let added = new.map_or(0, |n| n as u64 + key.len() as u64);
    let total = used.saturating_sub(freed) + added;
    if total > MAX_TOTAL && added > freed {
        return Err(StateError::TooLarge(format!(
            "agent {agent} would hold {total} bytes of state, over its {MAX_TOTAL} byte quota"
        )));
    }
    Ok(total)
}

/// Whether writing `new` bytes under `key` (or deleting it, `None`) would fit the agent's quota now.
pub fn quota_check(db: &Db, agent: &str, key: &str, new: Option<usize>) -> Result<(), StateError> {
    let txn = db.redb().begin_read().map_err(storage)?;
    let old =
        txn.open_table(STATE).map_err(storage)?.get((agent, key)).map_err(storage)?.map(|v| v.value().len() as u64);
    let used = txn.open_table(STATE_USAGE).map_err(storage)?.get(agent).map_err(storage)?.map_or(0, |v| v.value());
    new_usage(agent, key, used, old, new).map(drop)
}

/// Sets (`Some`) or deletes (`None`) a key, keeping the agent's usage in step. Returns whether the key existed.
pub fn write(db: &Db, agent: &str, key: &str, value: Option<&[u8]>) -> Result<bool, StateError> {
    let txn = db.redb().begin_write().map_err(storage)?;
    let existed = {
        let mut table = txn.open_table(STATE).map_err(storage)?;
        let mut usage = txn.open_table(STATE_USAGE).map_err(storage)?;
        let old = table.get((agent, key)).map_err(storage)?.map(|v| v.value().len() as u64);
        let used = usage.get(agent).map_err(storage)?.map_or(0, |v| v.value());
        let total = new_usage(agent, key, used, old, value.map(<[u8]>::len))?;
        match value {
            Some(v) => drop(table.insert((agent, key), v).map_err(storage)?),
            None => drop(table.remove((agent, key)).map_err(storage)?),
        }
        usage.insert(agent, total).map_err(storage)?;
        old.is_some()
    };
    txn.commit().map_err(storage)?;
    Ok(existed)
}

pub fn get(db: &Db, agent: &str, key: &str) -> Result<Option<Vec<u8>>, StateError> {
    let txn = db.redb().begin_read().map_err(storage)?;
    let table = txn.open_table(STATE).map_err(storage)?;
    Ok(table.get((agent, key)).map_err(storage)?.map(|v| v.value().to_vec()))
}

pub fn list(db: &Db, agent: &str, prefix: &str) -> Result<Vec<String>, StateError> {
    let txn = db.redb().begin_read().map_err(storage)?;
    let table = txn.open_table(STATE).map_err(storage)?;
    let mut keys = Vec::new();
    for entry in table.range((agent, prefix)..).map_err(storage)? {
        let (k, _) = entry.map_err(storage)?;
        let (a, key) = k.value();
        if a != agent || !key.starts_with(prefix) {
            break;
        }
        keys.push(key.to_string());
    }
    Ok(keys)
}

impl Host for StateAccess {
    fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, StateError> {
        check_key(&key)?;
        get(self.readable()?, &self.agent, &key)
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), StateError> {
        check_key(&key)?;
        if value.len() > MAX_VALUE {
            return Err(StateError::TooLarge(format!(
                "value is {} bytes, over the {MAX_VALUE} byte limit",
                value.len()
            )));
        }
        let db = self.writable()?.clone();
        self.admit(&db, &key, Some(value.len())).await?;
        let agent = self.agent.clone();
        let (k, len) = (key.clone(), value.len());
        // Recorded first: the kernel may refuse the write (rate limit, revoked token), and then nothing is written.
        self.record(serde_json::json!({ "op": "set", "key": key, "bytes": len })).await?;
        tokio::task::spawn_blocking(move || write(&db, &agent, &k, Some(&value))).await.map_err(storage)??;
        Ok(())
    }

    async fn delete(&mut self, key: String) -> Result<bool, StateError> {
        check_key(&key)?;
        let db = self.writable()?.clone();
        self.admit(&db, &key, None).await?;
        let agent = self.agent.clone();
        let k = key.clone();
        self.record(serde_json::json!({ "op": "delete", "key": key })).await?;
        tokio::task::spawn_blocking(move || write(&db, &agent, &k, None)).await.map_err(storage)?
    }

    fn list_keys(&mut self, prefix: String) -> Result<Vec<String>, StateError> {
        list(self.readable()?, &self.agent, &prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_persist_per_agent_with_usage_and_quota() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let db = Db::open(&path).unwrap();
            assert!(!write(&db, "a", "k1", Some(b"one")).unwrap());
            assert!(write(&db, "a", "k1", Some(b"uno")).unwrap());
            write(&db, "a", "k2", Some(b"two")).unwrap();
            write(&db, "b", "k1", Some(b"other agent")).unwrap();
        }
        let db = Db::open(&path).unwrap();
        assert_eq!(get(&db, "a", "k1").unwrap().as_deref(), Some(&b"uno"[..]));
        assert_eq!(list(&db, "a", "k").unwrap(), vec!["k1", "k2"]);
        assert_eq!(list(&db, "a", "k2").unwrap(), vec!["k2"]);
        assert!(write(&db, "a", "k1", None).unwrap());
        assert_eq!(get(&db, "a", "k1").unwrap(), None);
        let big = vec![0u8; MAX_VALUE];
        for i in 0..15 {
            write(&db, "q", &format!("{i:02}"), Some(&big)).unwrap();
        }
        assert!(matches!(write(&db, "q", "15", Some(&big)), Err(StateError::TooLarge(_))));
        write(&db, "q", "00", None).unwrap();
        write(&db, "q", "15", Some(&big)).unwrap();
    }
}
