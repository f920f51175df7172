//! `echo`: returns its input unchanged. The lightest possible tool, for round-trip tests and benches: what a call
//! costs beyond the tool's own work.

use serde_json::{Value, json};
use toka_sdk::ToolError;
use toka_sdk::tool::{SideEffect, Spec};

fn spec() -> Spec {
    Spec {
        name: "echo",
        version: env!("CARGO_PKG_VERSION"),
        description: "Returns its input (any JSON object) unchanged.",
        input_schema: json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
        }),
        output_schema: json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
        }),
        side_effect: SideEffect::None,
        grants: &[],
    }
}

fn echo(input: Value) -> Result<Value, ToolError> {
    Ok(input)
}

toka_sdk::tool!(spec, echo);
