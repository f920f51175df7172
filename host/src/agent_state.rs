//! Agents' key-value state, in the record layer: the `state` and `state_usage` tables of a home's database.
//!
//! They change one way only: a [`StateChange`](crate::kernel::StateChange) carried by the operation that records the
//! write (`write-state`, `operator-write-state`), applied by the log's writer in the same transaction as that
//! operation's events ([`crate::events::log`]), on every node of a cluster alike. So a value is never kept without
//! its record nor recorded without being kept, and every node holds the same values. Reads are local: a node answers
//! from what it has applied.
//!
//! An agent holds at most [`MAX_TOTAL`] bytes (keys plus values), tracked in the same transaction as each write.
//! Nothing else may write these tables: a value written beside the log would exist on one node only.

pub use crate::bounds::{MAX_STATE_KEY as MAX_KEY, MAX_STATE_VALUE as MAX_VALUE};
use crate::db::{Db, STATE, STATE_USAGE};
use redb::{ReadableDatabase, ReadableTable};

/// Most bytes of state (keys plus values) one agent holds.
pub const MAX_TOTAL: u64 = 16 << 20;

/// How a refusal for the quota begins (the kernel's rejection carries it back to the writing run).
pub const OVER_QUOTA: &str = "state quota: ";

/// What stopped a state operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The write would take the agent over its quota.
    #[error("{0}")]
    OverQuota(String),
    #[error("{0}")]
    Storage(String),
}

fn storage(e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(crate::error::one_line(&e.to_string()))
}

/// The agent's state usage after replacing a value of `old` bytes (if any) under `key` with one of `new` bytes (or
/// deleting it), refused if it would pass the quota while growing.
fn usage_after(agent: &str, key: &str, used: u64, old: Option<u64>, new: Option<usize>) -> Result<u64, String> {
    let freed = old.map_or(0, |len| len + key.len() as u64);
    let added = new.map_or(0, |n| n as u64 + key.len() as u64);
    let total = used.saturating_sub(freed) + added;
    if total > MAX_TOTAL && added > freed {
        return Err(format!(
            "{OVER_QUOTA}agent {agent} would hold {total} bytes of state, over its {MAX_TOTAL} byte quota"
        ));
    }
    Ok(total)
}

/// Whether writing `new` bytes under `key` (or deleting it, `None`) fits the agent's quota on these tables (read or
/// written ones): `Err` says why not.
fn plan(
    values: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    usage: &impl ReadableTable<&'static str, u64>,
    agent: &str,
    key: &str,
    new: Option<usize>,
) -> Result<Result<Planned, String>, redb::StorageError> {
    let old = values.get((agent, key))?.map(|v| v.value().len() as u64);
    let used = usage.get(agent)?.map_or(0, |v| v.value());
    Ok(usage_after(agent, key, used, old, new).map(|total| Planned { existed: old.is_some(), total }))
}

/// The state tables, open in the log writer's transaction.
pub struct Tables<'t> {
    pub values: redb::Table<'t, (&'static str, &'static str), &'static [u8]>,
    pub usage: redb::Table<'t, &'static str, u64>,
}

/// A write that fits the agent's quota, ready to apply.
#[derive(Debug)]
pub struct Planned {
    existed: bool,
    total: u64,
}

impl<'t> Tables<'t> {
    pub fn open(txn: &'t redb::WriteTransaction) -> Result<Tables<'t>, redb::Error> {
        Ok(Tables { values: txn.open_table(STATE)?, usage: txn.open_table(STATE_USAGE)? })
    }

    /// Whether writing `new` bytes under `key` (or deleting it, `None`) fits the agent's quota: `Err` says why not.
    pub fn plan(&self, agent: &str, key: &str, new: Option<usize>) -> Result<Result<Planned, String>, redb::Error> {
        Ok(plan(&self.values, &self.usage, agent, key, new)?)
    }

    /// Applies a planned write; returns whether the key held a value before.
    pub fn apply(
        &mut self,
        agent: &str,
        key: &str,
        value: Option<&[u8]>,
        planned: Planned,
    ) -> Result<bool, redb::Error> {
        match value {
            Some(v) => drop(self.values.insert((agent, key), v)?),
            None => drop(self.values.remove((agent, key))?),
        }
        self.usage.insert(agent, planned.total)?;
        Ok(planned.existed)
    }
}

/// Whether writing `new` bytes under `key` (or deleting it, `None`) would fit the agent's quota now: checked before
/// a write is recorded, so that one that cannot fit is refused without taking from the run's budgets. The writer
/// checks again when it applies the write.
pub fn quota_check(db: &Db, agent: &str, key: &str, new: Option<usize>) -> Result<(), StoreError> {
    let txn = db.redb().begin_read().map_err(storage)?;
    let (values, usage) = (txn.open_table(STATE).map_err(storage)?, txn.open_table(STATE_USAGE).map_err(storage)?);
    plan(&values, &usage, agent, key, new).map_err(storage)?.map(drop).map_err(StoreError::OverQuota)
}

/// The value under `key`, if any.
pub fn get(db: &Db, agent: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let txn = db.redb().begin_read().map_err(storage)?;
    let table = txn.open_table(STATE).map_err(storage)?;
    Ok(table.get((agent, key)).map_err(storage)?.map(|v| v.value().to_vec()))
}

/// The agent's keys that start with `prefix`, in order.
pub fn list(db: &Db, agent: &str, prefix: &str) -> Result<Vec<String>, StoreError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_keys_and_values_and_refuses_only_growth_past_the_quota() {
        assert_eq!(usage_after("a", "k", 0, None, Some(3)), Ok(4));
        assert_eq!(usage_after("a", "k", 4, Some(3), Some(5)), Ok(6));
        assert_eq!(usage_after("a", "k", 6, Some(5), None), Ok(0));
        let full = MAX_TOTAL - 10;
        assert!(usage_after("a", "k", full, None, Some(9)).is_ok());
        assert!(usage_after("a", "k", full, None, Some(10)).unwrap_err().contains("over its"));
        // Already over (a quota lowered since): shrinking is still allowed, growing is not.
        assert!(usage_after("a", "k", MAX_TOTAL + 100, Some(50), Some(10)).is_ok());
        assert!(usage_after("a", "k", MAX_TOTAL + 100, Some(50), Some(60)).is_err());
    }
}
