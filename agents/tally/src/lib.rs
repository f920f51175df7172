//! `tally`: a tool that remembers, in its own memory, how many calls this instance has served and the note of the
//! previous one. For the reuse mode's tests (`tool add --reuse`): in a fresh sandbox every call is the first
//! (`count` 1, no `previous`); in an instance kept for one caller the count goes on; a caller that ever sees another
//! caller's note or count has been given another caller's memory.
//!
//! Input `{"note": TEXT, "mode": MODE}`; `mode` is `count` (the default), `trap` (panics after counting: a wasm
//! `unreachable` trap) or `spin` (counts, then loops until its fuel or time runs out). Output `{"count": N,
//! "previous": TEXT or null}`. Declares `side-effect: none`: what it changes is its own memory only.

use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Mutex;
use toka_sdk::ToolError;
use toka_sdk::tool::{SideEffect, Spec};

fn spec() -> Spec {
    Spec {
        name: "tally",
        version: env!("CARGO_PKG_VERSION"),
        description: "Counts its calls in its own memory and returns the count and the previous call's note.",
        input_schema: json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "note": { "type": "string", "maxLength": 1024 },
                "mode": { "enum": ["count", "trap", "spin"] },
            },
            "additionalProperties": false,
        }),
        output_schema: json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "count": { "type": "integer", "minimum": 1 },
                "previous": { "type": ["string", "null"] },
            },
            "required": ["count", "previous"],
            "additionalProperties": false,
        }),
        side_effect: SideEffect::None,
        grants: &[],
    }
}

#[derive(Deserialize, Default, PartialEq)]
#[serde(rename_all = "kebab-case")]
enum Mode {
    #[default]
    Count,
    Trap,
    Spin,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct In {
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    mode: Mode,
}

/// This instance's memory: the calls served and the last note.
static SEEN: Mutex<(u64, Option<String>)> = Mutex::new((0, None));

fn tally(input: In) -> Result<Value, ToolError> {
    let (count, previous) = {
        let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
        seen.0 += 1;
        let previous = std::mem::replace(&mut seen.1, input.note);
        (seen.0, previous)
    };
    match input.mode {
        Mode::Count => Ok(json!({ "count": count, "previous": previous })),
        Mode::Trap => panic!("tally was asked to trap"),
        Mode::Spin => {
            let mut x: u64 = 1;
            loop {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
    }
}

toka_sdk::tool!(spec, tally);
