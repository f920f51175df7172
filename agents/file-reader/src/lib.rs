//! `file-reader`: reads a UTF-8 text file, up to a byte limit, from the directories the call was granted.
//!
//! The host mounts each granted directory at the same absolute path as in the caller's sandbox, so the path is the
//! caller's. A file longer than `max_bytes` is cut at the last whole character before the limit and reported as
//! `truncated`; a file that is not UTF-8 text is an error, not a lossy conversion.

use std::io::Read;

use serde::{Deserialize, Serialize};
use serde_json::json;
use toka_sdk::ToolError;
use toka_sdk::tool::{SideEffect, Spec, fs_error};

/// Bytes read when the input gives no `max_bytes`.
const DEFAULT_MAX_BYTES: u64 = 1 << 20;
/// The largest `max_bytes`: the host's limit on a tool's output.
const MAX_BYTES: u64 = 4 << 20;

fn spec() -> Spec {
    Spec {
        name: "file-reader",
        version: env!("CARGO_PKG_VERSION"),
        description: "Reads a UTF-8 text file given by its absolute path (in a directory the caller may read), up to \
                      max_bytes bytes (default 1 MiB); a longer file is cut at a character boundary and marked \
                      truncated.",
        input_schema: json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "path": { "type": "string", "pattern": "^/", "description": "absolute path of the file" },
                "max_bytes": { "type": "integer", "minimum": 1, "maximum": MAX_BYTES },
            },
            "required": ["path"],
            "additionalProperties": false,
        }),
        output_schema: json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "path": { "type": "string" },
                "content": { "type": "string" },
                "bytes": { "type": "integer", "minimum": 0, "description": "UTF-8 bytes in content" },
                "truncated": { "type": "boolean", "description": "the file is longer than content" },
            },
            "required": ["path", "content", "bytes", "truncated"],
            "additionalProperties": false,
        }),
        side_effect: SideEffect::ReadOnly,
        grants: &["fs:/:ro"],
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
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
    let limit = input.max_bytes.unwrap_or(DEFAULT_MAX_BYTES).clamp(1, MAX_BYTES);
    let file = std::fs::File::open(&input.path).map_err(|e| fs_error(&input.path, &e))?;
    if file.metadata().map_err(|e| fs_error(&input.path, &e))?.is_dir() {
        return Err(ToolError::InvalidInput(format!("{}: is a directory (file-lister lists directories)", input.path)));
    }
    let mut bytes = Vec::new();
    // One byte past the limit tells a file of exactly `limit` bytes from a longer one.
    file.take(limit + 1).read_to_end(&mut bytes).map_err(|e| fs_error(&input.path, &e))?;
    let truncated = bytes.len() as u64 > limit;
    bytes.truncate(limit as usize);
    let content = match String::from_utf8(bytes) {
        Ok(text) => text,
        // Cut inside a character by the limit: keep the whole characters before it.
        Err(e) if truncated && e.utf8_error().error_len().is_none() => {
            let valid = e.utf8_error().valid_up_to();
            let mut bytes = e.into_bytes();
            bytes.truncate(valid);
            String::from_utf8(bytes).map_err(|e| ToolError::Failed(e.to_string()))?
        }
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            return Err(ToolError::Failed(format!("{}: not UTF-8 text (invalid byte at offset {at})", input.path)));
        }
    };
    Ok(Out { path: input.path, bytes: content.len(), content, truncated })
}

toka_sdk::tool!(spec, read);
