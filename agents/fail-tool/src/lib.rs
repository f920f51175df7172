//! `fail-tool`: a tool that misbehaves on request, for the host's containment tests: it traps, spins until its
//! fuel or time runs out, returns output against its own output schema, or calls itself until the host's depth
//! limit stops it.

use serde::Deserialize;
use serde_json::{Value, json};
use toka_tool::{SideEffect, Spec, ToolError};

fn spec() -> Spec {
    Spec {
        name: "fail-tool",
        version: "1.0.0",
        description: "Misbehaves on purpose: mode trap, spin, bad-output, recurse, error or ok.",
        input_schema: r#"{"type":"object","properties":{"mode":{"enum":["trap","spin","bad-output","recurse","error","ok"]},
            "depth":{"type":"integer"}},"required":["mode"],"additionalProperties":false}"#,
        output_schema: r#"{"type":"object","properties":{"ok":{"type":"boolean"},"depth":{"type":"integer"},
            "inner":{}},"required":["ok"],"additionalProperties":false}"#,
        side_effect: SideEffect::None,
        grants: &[],
    }
}

#[derive(Deserialize)]
struct In {
    mode: String,
    #[serde(default)]
    depth: u64,
}

fn fail(input: In) -> Result<Value, ToolError> {
    match input.mode.as_str() {
        "trap" => panic!("fail-tool was asked to trap"),
        "spin" => {
            let mut x: u64 = 1;
            loop {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        "bad-output" => Ok(json!({ "ok": "not a boolean", "extra": true })),
        "error" => Err(ToolError::Failed("fail-tool was asked to fail".into())),
        "recurse" => {
            // Each level calls the next; the host's depth limit ends the chain with an error that travels back up.
            match toka_tool::tools::call("fail-tool", &json!({ "mode": "recurse", "depth": input.depth + 1 })) {
                Ok(inner) => Ok(json!({ "ok": true, "depth": input.depth, "inner": inner })),
                Err(ToolError::Denied(m)) | Err(ToolError::Failed(m)) | Err(ToolError::InvalidInput(m)) => {
                    Ok(json!({ "ok": false, "depth": input.depth, "inner": m }))
                }
            }
        }
        _ => Ok(json!({ "ok": true })),
    }
}

toka_tool::tool!(spec, fail);
