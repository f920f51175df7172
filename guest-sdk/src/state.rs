//! Persistent per-agent key-value state through the host's `toka:agent/state` interface.
//!
//! Deny by default: the run needs `--state ro` to read and `--state rw` to write; otherwise every call returns
//! [`StateError::Denied`]. Values survive across runs and host restarts.
//!
//! ```no_run
//! use toka_sdk::state;
//! let runs = state::get("runs").unwrap().map_or(0, |v| u64::from_le_bytes(v.try_into().unwrap()));
//! state::set("runs", &(runs + 1).to_le_bytes()).unwrap();
//! ```

pub use crate::bindings::toka::agent::state::StateError;

#[cfg(target_family = "wasm")]
use crate::bindings::toka::agent::state as host;

#[cfg(not(target_family = "wasm"))]
fn outside() -> StateError {
    StateError::Storage("no host state outside a component".into())
}

/// The value stored under `key`, if any.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, StateError> {
    #[cfg(target_family = "wasm")]
    return host::get(key);
    #[cfg(not(target_family = "wasm"))]
    {
        let _ = key;
        Err(outside())
    }
}

/// Stores `value` under `key`.
pub fn set(key: &str, value: &[u8]) -> Result<(), StateError> {
    #[cfg(target_family = "wasm")]
    return host::set(key, value);
    #[cfg(not(target_family = "wasm"))]
    {
        let _ = (key, value);
        Err(outside())
    }
}

/// Removes `key`; returns whether it existed.
pub fn delete(key: &str) -> Result<bool, StateError> {
    #[cfg(target_family = "wasm")]
    return host::delete(key);
    #[cfg(not(target_family = "wasm"))]
    {
        let _ = key;
        Err(outside())
    }
}

/// Keys starting with `prefix`, in order.
pub fn list_keys(prefix: &str) -> Result<Vec<String>, StateError> {
    #[cfg(target_family = "wasm")]
    return host::list_keys(prefix);
    #[cfg(not(target_family = "wasm"))]
    {
        let _ = prefix;
        Err(outside())
    }
}
