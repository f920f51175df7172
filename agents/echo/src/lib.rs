//! `echo`: returns its input unchanged. The lightest possible tool, for round-trip benches.

use toka_tool::{SideEffect, Spec, ToolError};

fn spec() -> Spec {
    Spec {
        name: "echo",
        version: "1.0.0",
        description: "Returns its input unchanged.",
        input_schema: r#"{"type":"object"}"#,
        output_schema: r#"{"type":"object"}"#,
        side_effect: SideEffect::None,
        grants: &[],
    }
}

fn echo(input: serde_json::Value) -> Result<serde_json::Value, ToolError> {
    Ok(input)
}

toka_tool::tool!(spec, echo);
