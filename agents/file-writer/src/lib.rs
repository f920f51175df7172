//! `file-writer`: writes (or appends) a UTF-8 text file in a directory the caller was granted read-write.

use serde::{Deserialize, Serialize};
use std::io::Write;
use toka_tool::{SideEffect, Spec, ToolError};

fn spec() -> Spec {
    Spec {
        name: "file-writer",
        version: "1.0.0",
        description: "Writes a UTF-8 text file (absolute path in a directory the caller may write), or appends to it.",
        input_schema: r#"{"type":"object","properties":{"path":{"type":"string","pattern":"^/"},
            "content":{"type":"string"},"append":{"type":"boolean"}},"required":["path","content"],
            "additionalProperties":false}"#,
        output_schema: r#"{"type":"object","properties":{"path":{"type":"string"},"bytes_written":{"type":"integer"}},
            "required":["path","bytes_written"],"additionalProperties":false}"#,
        side_effect: SideEffect::Idempotent,
        grants: &["fs:/:rw"],
    }
}

#[derive(Deserialize)]
struct In {
    path: String,
    content: String,
    #[serde(default)]
    append: bool,
}

#[derive(Serialize)]
struct Out {
    path: String,
    bytes_written: usize,
}

fn write(input: In) -> Result<Out, ToolError> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true);
    if input.append { options.append(true) } else { options.write(true).truncate(true) };
    let mut file = options.open(&input.path).map_err(|e| ToolError::Failed(format!("{}: {e}", input.path)))?;
    file.write_all(input.content.as_bytes()).map_err(|e| ToolError::Failed(format!("{}: {e}", input.path)))?;
    Ok(Out { path: input.path, bytes_written: input.content.len() })
}

toka_tool::tool!(spec, write);
