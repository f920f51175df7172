//! `notes`: keeps notes in its persistent state and records observations, exercising the host's `state` and
//! `events` interfaces.
//!
//! | input                                   | does                                                              |
//! |-----------------------------------------|-------------------------------------------------------------------|
//! | `{"op":"count"}`                        | increments the `runs` counter; returns `{"runs":N}`              |
//! | `{"op":"set","key":K,"value":V}`        | stores the string V under K; returns `{"set":K}`                 |
//! | `{"op":"get","key":K}`                  | returns `{"value":V}` (null when absent)                         |
//! | `{"op":"delete","key":K}`               | returns `{"existed":bool}`                                       |
//! | `{"op":"list","prefix":P}`              | returns `{"keys":[...]}`                                         |
//! | `{"op":"big","bytes":N}`                | stores N zero bytes under `big`                                  |
//! | `{"op":"emit","count":N}`               | emits N `note.tick` observations, printing `ack SEQ` after each  |
//!
//! A state or event error from the host becomes an agent error: `denied` for a missing grant, `failed` otherwise.

use serde::Deserialize;
use serde_json::{Value, json};
use toka_sdk::state::{self, StateError};
use toka_sdk::{AgentError, Task};

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
enum Op {
    Count,
    Set { key: String, value: String },
    Get { key: String },
    Delete { key: String },
    List { #[serde(default)] prefix: String },
    Big { bytes: usize },
    Emit { count: u64 },
}

fn state_error(e: StateError) -> AgentError {
    match e {
        StateError::Denied(m) => AgentError::Denied(format!("state: {m}")),
        StateError::TooLarge(m) => AgentError::Failed(format!("state too large: {m}")),
        StateError::InvalidKey(m) => AgentError::InvalidInput(format!("state key: {m}")),
        StateError::Storage(m) => AgentError::Failed(format!("state storage: {m}")),
    }
}

fn notes(task: &Task, op: Op) -> Result<Value, AgentError> {
    match op {
        Op::Count => {
            let runs = match state::get("runs").map_err(state_error)? {
                Some(bytes) => u64::from_le_bytes(bytes.try_into().map_err(|_| AgentError::Failed("corrupt counter".into()))?),
                None => 0,
            } + 1;
            state::set("runs", &runs.to_le_bytes()).map_err(state_error)?;
            Ok(json!({ "runs": runs }))
        }
        Op::Set { key, value } => {
            state::set(&key, value.as_bytes()).map_err(state_error)?;
            Ok(json!({ "set": key }))
        }
        Op::Get { key } => {
            let value = state::get(&key).map_err(state_error)?.map(|v| String::from_utf8_lossy(&v).into_owned());
            Ok(json!({ "value": value }))
        }
        Op::Delete { key } => Ok(json!({ "existed": state::delete(&key).map_err(state_error)? })),
        Op::List { prefix } => Ok(json!({ "keys": state::list_keys(&prefix).map_err(state_error)? })),
        Op::Big { bytes } => {
            state::set("big", &vec![0u8; bytes]).map_err(state_error)?;
            Ok(json!({ "stored": bytes }))
        }
        Op::Emit { count } => {
            let mut last = 0;
            for i in 0..count {
                last = toka_sdk::events::emit("note.tick", &json!({ "task": task.id, "i": i }))
                    .map_err(|e| AgentError::Failed(format!("emit: {e}")))?;
                println!("ack {last}");
            }
            Ok(json!({ "emitted": count, "last_seq": last }))
        }
    }
}

toka_sdk::agent!(notes);
