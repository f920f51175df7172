//! `fail-tool`: misbehaves on request, for the host's containment tests. Input `{"mode": MODE}`:
//!
//! | mode         | behaviour                                                                                    |
//! |--------------|----------------------------------------------------------------------------------------------|
//! | `trap`       | panics: with `panic = "abort"` a wasm `unreachable` trap                                     |
//! | `spin`       | loops forever, until the call's fuel or time runs out                                        |
//! | `bad-output` | returns output that violates its own output schema (the host must not pass it on)            |
//! | `error`      | returns `failed`, an ordinary tool error                                                     |
//! | `recurse`    | calls itself through the host until the depth limit refuses a call; reports the chain       |
//! | `alloc`      | allocates and touches `mib` MiB of memory, then returns `{"ok": true}` (memory caps)        |
//! | `ok`         | returns `{"ok": true}`                                                                       |

use serde::Deserialize;
use serde_json::{Value, json};
use toka_sdk::ToolError;
use toka_sdk::tool::{SideEffect, Spec};

fn spec() -> Spec {
    Spec {
        name: "fail-tool",
        version: env!("CARGO_PKG_VERSION"),
        description: "Misbehaves on purpose, for testing hosts: mode trap (panics), spin (loops forever), \
                      bad-output (returns output against its own schema), error (fails), recurse (calls itself \
                      until the call depth limit), ok.",
        input_schema: json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "mode": { "enum": ["trap", "spin", "bad-output", "error", "recurse", "alloc", "ok"] },
                "depth": { "type": "integer", "minimum": 0, "description": "recurse: this call's level" },
                "mib": { "type": "integer", "minimum": 0, "maximum": 4096, "description": "alloc: how much" },
            },
            "required": ["mode"],
            "additionalProperties": false,
        }),
        output_schema: json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "ok": { "type": "boolean" },
                "depth": { "type": "integer" },
                "inner": { "description": "recurse: the next level's output, or the error that ended the chain" },
            },
            "required": ["ok"],
            "additionalProperties": false,
        }),
        side_effect: SideEffect::None,
        grants: &[],
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Mode {
    Trap,
    Spin,
    BadOutput,
    Error,
    Recurse,
    Alloc,
    Ok,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct In {
    mode: Mode,
    #[serde(default)]
    depth: u64,
    #[serde(default)]
    mib: u64,
}

fn fail(input: In) -> Result<Value, ToolError> {
    match input.mode {
        Mode::Trap => panic!("fail-tool was asked to trap"),
        Mode::Spin => {
            let mut x: u64 = 1;
            loop {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        // `ok` must be a boolean and `extra` is not allowed.
        Mode::BadOutput => Ok(json!({ "ok": "not a boolean", "extra": true })),
        Mode::Error => Err(ToolError::Failed("fail-tool was asked to fail".into())),
        Mode::Recurse => {
            // Each level calls the next; the host's depth limit ends the chain with an error that travels back up.
            match toka_sdk::tools::call("fail-tool", &json!({ "mode": "recurse", "depth": input.depth + 1 })) {
                Ok(inner) => Ok(json!({ "ok": true, "depth": input.depth, "inner": inner })),
                Err(ToolError::Denied(m) | ToolError::Failed(m) | ToolError::InvalidInput(m)) => {
                    Ok(json!({ "ok": false, "depth": input.depth, "inner": m }))
                }
            }
        }
        Mode::Alloc => {
            // Touch every page, so the memory is really committed; fail cleanly if the host refuses to grow.
            let mut held: Vec<Vec<u8>> = Vec::new();
            for _ in 0..input.mib {
                let mut chunk: Vec<u8> = Vec::new();
                chunk
                    .try_reserve_exact(1 << 20)
                    .map_err(|_| ToolError::Failed(format!("out of memory after {} MiB", held.len())))?;
                chunk.resize(1 << 20, 1);
                held.push(std::hint::black_box(chunk));
            }
            Ok(json!({ "ok": true, "depth": held.len() }))
        }
        Mode::Ok => Ok(json!({ "ok": true })),
    }
}

toka_sdk::tool!(spec, fail);
