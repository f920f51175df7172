//! `file-writer`: writes a UTF-8 text file, or appends to one, in a directory the call was granted read-write.
//!
//! Writing replaces the file's content (creating the file if needed, never its directory), so repeating a call
//! leaves the same file: idempotent. Appending is not, and callers that retry should know it.

use std::io::Write;

use serde::{Deserialize, Serialize};
use serde_json::json;
use toka_sdk::ToolError;
use toka_sdk::tool::{SideEffect, Spec, fs_error};

fn spec() -> Spec {
    Spec {
        name: "file-writer",
        version: env!("CARGO_PKG_VERSION"),
        description: "Writes UTF-8 text to a file given by its absolute path (in a directory the caller may write), \
                      replacing its content, or appending with append: true. Creates the file, not its directory.",
        input_schema: json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "path": { "type": "string", "pattern": "^/", "description": "absolute path of the file" },
                "content": { "type": "string" },
                "append": { "type": "boolean", "default": false },
            },
            "required": ["path", "content"],
            "additionalProperties": false,
        }),
        output_schema: json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "path": { "type": "string" },
                "bytes_written": { "type": "integer", "minimum": 0 },
            },
            "required": ["path", "bytes_written"],
            "additionalProperties": false,
        }),
        side_effect: SideEffect::Idempotent,
        grants: &["fs:/:rw"],
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
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
    if input.append {
        options.append(true);
    } else {
        options.write(true).truncate(true);
    }
    let mut file = options.open(&input.path).map_err(|e| fs_error(&input.path, &e))?;
    file.write_all(input.content.as_bytes()).map_err(|e| fs_error(&input.path, &e))?;
    file.flush().map_err(|e| fs_error(&input.path, &e))?;
    Ok(Out { path: input.path, bytes_written: input.content.len() })
}

toka_sdk::tool!(spec, write);
