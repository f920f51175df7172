//! `file-lister`: lists a directory the call was granted: each entry's name, kind and size, sorted by name.
//!
//! Entries are described without following symbolic links: a link is `other`, whatever it points to.

use serde::{Deserialize, Serialize};
use serde_json::json;
use toka_sdk::ToolError;
use toka_sdk::tool::{SideEffect, Spec, fs_error};

fn spec() -> Spec {
    Spec {
        name: "file-lister",
        version: env!("CARGO_PKG_VERSION"),
        description: "Lists a directory given by its absolute path (in a directory the caller may read): each \
                      entry's name, kind (file, dir or other; symbolic links are other) and size in bytes, sorted \
                      by name.",
        input_schema: json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "path": { "type": "string", "pattern": "^/", "description": "absolute path of the directory" },
            },
            "required": ["path"],
            "additionalProperties": false,
        }),
        output_schema: json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "path": { "type": "string" },
                "entries": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": { "type": "string" },
                            "kind": { "enum": ["file", "dir", "other"] },
                            "size": { "type": "integer", "minimum": 0 },
                        },
                        "required": ["name", "kind", "size"],
                        "additionalProperties": false,
                    },
                },
            },
            "required": ["path", "entries"],
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
}

#[derive(Serialize)]
struct Entry {
    name: String,
    kind: &'static str,
    size: u64,
}

#[derive(Serialize)]
struct Out {
    path: String,
    entries: Vec<Entry>,
}

fn list(input: In) -> Result<Out, ToolError> {
    let dir = std::fs::read_dir(&input.path).map_err(|e| fs_error(&input.path, &e))?;
    let mut entries = Vec::new();
    for entry in dir {
        let entry = entry.map_err(|e| fs_error(&input.path, &e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // `DirEntry::metadata` does not follow symbolic links.
        let meta = entry.metadata().map_err(|e| fs_error(&format!("{}/{name}", input.path), &e))?;
        let kind = if meta.is_file() {
            "file"
        } else if meta.is_dir() {
            "dir"
        } else {
            "other"
        };
        entries.push(Entry { name, kind, size: meta.len() });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Out { path: input.path, entries })
}

toka_sdk::tool!(spec, list);
