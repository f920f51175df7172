//! `file-reader`: reads a UTF-8 text file from a directory the caller was granted.

use serde::{Deserialize, Serialize};
use std::io::Read;
use toka_tool::{SideEffect, Spec, ToolError};

fn spec() -> Spec {
    Spec {
        name: "file-reader",
        version: "1.0.0",
        description: "Reads a UTF-8 text file (absolute path in the caller's granted directories), up to max_bytes.",
        input_schema: r#"{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object",
            "properties":{"path":{"type":"string","pattern":"^/"},"max_bytes":{"type":"integer","minimum":1,"maximum":4194304}},
            "required":["path"],"additionalProperties":false}"#,
        output_schema: r#"{"type":"object","properties":{"path":{"type":"string"},"content":{"type":"string"},
            "bytes":{"type":"integer"},"truncated":{"type":"boolean"}},"required":["path","content","bytes","truncated"],
            "additionalProperties":false}"#,
        side_effect: SideEffect::ReadOnly,
        grants: &["fs:/:ro"],
    }
}

#[derive(Deserialize)]
struct In {
    path: String,
    max_bytes: Option<u64>,
}

#[derive(Serialize)]
struct Out {
    path: String,
    content: String,
    bytes: usize,
    truncated: bool,
}

fn read(input: In) -> Result<Out, ToolError> {
    let limit = input.max_bytes.unwrap_or(1 << 20);
    let file = std::fs::File::open(&input.path).map_err(|e| ToolError::Failed(format!("{}: {e}", input.path)))?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).map_err(|e| ToolError::Failed(format!("{}: {e}", input.path)))?;
    let truncated = bytes.len() as u64 > limit;
    bytes.truncate(limit as usize);
    let content = String::from_utf8(bytes).map_err(|_| ToolError::Failed(format!("{} is not UTF-8 text", input.path)))?;
    Ok(Out { path: input.path, bytes: content.len(), content, truncated })
}

toka_tool::tool!(spec, read);
