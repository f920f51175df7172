//! {{name}}: a toka-host tool. `describe` (from `spec`) tells callers its name, schemas and side effects; the host
//! checks every input against the input schema before `invoke` runs and every output against the output schema
//! after. Input `{"name": "Ada"}` gives `{"greeting":"Hello, Ada!"}`.
//!
//! Install it with `toka-host tool add {{name}}.wasm`, call it with `toka-host tool call {{name}} --input JSON`,
//! let an agent call it with `toka-host run --allow-tool {{name}} ...`, or serve it over MCP with `toka-host mcp
//! --allow-tool {{name}}`.

use serde_json::{Value, json};
use toka_sdk::ToolError;
use toka_sdk::tool::{SideEffect, Spec};

fn spec() -> Spec {
    Spec {
        name: "{{name}}",
        version: env!("CARGO_PKG_VERSION"),
        description: "Greets someone by name.",
        input_schema: json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": { "name": { "type": "string", "minLength": 1 } },
            "required": ["name"],
            "additionalProperties": false,
        }),
        output_schema: json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": { "greeting": { "type": "string" } },
            "required": ["greeting"],
        }),
        side_effect: SideEffect::None,
        // The rights it needs, as `KIND:VALUE` (`fs:/:ro`, `net:api.example.com:443`): a call gets these
        // intersected with its caller's own grants.
        grants: &[],
    }
}

fn greet(input: Value) -> Result<Value, ToolError> {
    let name = input["name"].as_str().ok_or_else(|| ToolError::InvalidInput("\"name\" must be a string".into()))?;
    Ok(json!({ "greeting": format!("Hello, {name}!") }))
}

toka_sdk::tool!(spec, greet);
