//! `file-lister`: lists a directory the caller was granted, sorted by name.

use serde::{Deserialize, Serialize};
use toka_tool::{SideEffect, Spec, ToolError};

fn spec() -> Spec {
    Spec {
        name: "file-lister",
        version: "1.0.0",
        description: "Lists a directory (absolute path in the caller's granted directories): names, kinds and sizes.",
        input_schema: r#"{"type":"object","properties":{"path":{"type":"string","pattern":"^/"}},"required":["path"],
            "additionalProperties":false}"#,
        output_schema: r#"{"type":"object","properties":{"path":{"type":"string"},"entries":{"type":"array",
            "items":{"type":"object","properties":{"name":{"type":"string"},"kind":{"enum":["file","dir","other"]},
            "size":{"type":"integer"}},"required":["name","kind","size"]}}},"required":["path","entries"]}"#,
        side_effect: SideEffect::ReadOnly,
        grants: &["fs:/:ro"],
    }
}

#[derive(Deserialize)]
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
    let dir = std::fs::read_dir(&input.path).map_err(|e| ToolError::Failed(format!("{}: {e}", input.path)))?;
    let mut entries = Vec::new();
    for entry in dir {
        let entry = entry.map_err(|e| ToolError::Failed(format!("{}: {e}", input.path)))?;
        let meta = entry.metadata().map_err(|e| ToolError::Failed(e.to_string()))?;
        let kind = if meta.is_file() { "file" } else if meta.is_dir() { "dir" } else { "other" };
        entries.push(Entry { name: entry.file_name().to_string_lossy().into_owned(), kind, size: meta.len() });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Out { path: input.path, entries })
}

toka_tool::tool!(spec, list);
