//! `spawner`: an agent that starts other agents (`toka:agent/spawn`) and reports what each gave back. A test agent
//! for spawns: depth, fan-out, grants and fuel.
//!
//! Input `{"spawn": [{"agent": "NAME", "input": {...}}, ...], "schedule": [{"agent": "NAME", "input": {...},
//! "delay_ms": N}, ...], "env": ["NAME", ...], "burn": N}`, every field optional: spawns each listed agent in order
//! (an input defaults to `{}`), schedules each listed task, reads each listed environment variable (to show what
//! this run was granted), then spins `burn` rounds. Returns `{"results": [{"ok": OUTPUT} | {"error": {"kind": KIND,
//! "message": TEXT}}, ...], "scheduled": [{"ok": TASK_ID} | {"error": ...}, ...], "env": {"NAME": VALUE|null}}`.
//! A refused or failed spawn (or schedule) is a result, never this agent's failure.

use serde::Deserialize;
use serde_json::{Value, json};
use toka_sdk::{AgentError, Task};

#[derive(Deserialize)]
struct Child {
    agent: String,
    #[serde(default)]
    input: Option<Value>,
}

#[derive(Deserialize)]
struct Later {
    agent: String,
    #[serde(default)]
    input: Option<Value>,
    #[serde(default)]
    delay_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(default)]
    spawn: Vec<Child>,
    #[serde(default)]
    schedule: Vec<Later>,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    burn: u64,
}

fn error(e: &toka_sdk::spawn::SpawnError) -> Value {
    let (kind, message) = toka_sdk::spawn::describe(e);
    json!({ "error": { "kind": kind, "message": message } })
}

fn spawner(_task: &Task, input: Input) -> Result<Value, AgentError> {
    let mut scheduled = Vec::new();
    for later in &input.schedule {
        let task_input = later.input.clone().unwrap_or_else(|| json!({}));
        scheduled.push(match toka_sdk::spawn::schedule(&later.agent, &task_input, later.delay_ms) {
            Ok(task_id) => json!({ "ok": task_id }),
            Err(e) => error(&e),
        });
    }
    let mut results = Vec::new();
    for child in &input.spawn {
        let child_input = child.input.clone().unwrap_or_else(|| json!({}));
        results.push(match toka_sdk::spawn::spawn(&child.agent, &child_input) {
            Ok(output) => json!({ "ok": output }),
            Err(e) => error(&e),
        });
    }
    let env: serde_json::Map<String, Value> =
        input.env.iter().map(|name| (name.clone(), std::env::var(name).map_or(Value::Null, Value::String))).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..input.burn {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    Ok(json!({ "results": results, "scheduled": scheduled, "env": env, "burned": x % 2 }))
}

toka_sdk::agent!(spawner);
