//! `summarize`: an agent that works only through tools. It lists a directory with `file-lister`, reads each text
//! file with `file-reader`, and writes a summary (lines, words and first line of each file) with `file-writer`;
//! every call goes through the host, which checks the run's token (`tool:NAME`) and records it.
//!
//! Input: `{"dir": "/data", "out": "/out/summary.md"}`. Output: `{"files": N, "summary": "/out/summary.md"}`.

use serde::{Deserialize, Serialize};
use serde_json::json;
use toka_sdk::{AgentError, Task, ToolError, tools};

#[derive(Deserialize)]
struct Input {
    dir: String,
    out: String,
}

#[derive(Serialize)]
struct Output {
    files: usize,
    summary: String,
}

fn tool_error(tool: &str, e: ToolError) -> AgentError {
    match e {
        ToolError::Denied(m) => AgentError::Denied(format!("{tool}: {m}")),
        ToolError::InvalidInput(m) | ToolError::Failed(m) => AgentError::Failed(format!("{tool}: {m}")),
    }
}

fn summarize(_task: &Task, input: Input) -> Result<Output, AgentError> {
    let listing = tools::call("file-lister", &json!({ "path": input.dir })).map_err(|e| tool_error("file-lister", e))?;
    let mut report = format!("# Summary of {}\n\n", input.dir);
    let mut files = 0;
    for entry in listing["entries"].as_array().into_iter().flatten() {
        if entry["kind"] != "file" {
            continue;
        }
        let name = entry["name"].as_str().unwrap_or_default();
        let path = format!("{}/{name}", input.dir.trim_end_matches('/'));
        let read = tools::call("file-reader", &json!({ "path": path, "max_bytes": 65536 }))
            .map_err(|e| tool_error("file-reader", e))?;
        let content = read["content"].as_str().unwrap_or_default();
        let first = content.lines().next().unwrap_or("").trim();
        report.push_str(&format!(
            "- {name}: {} lines, {} words; starts \"{first}\"\n",
            content.lines().count(),
            content.split_whitespace().count()
        ));
        files += 1;
    }
    tools::call("file-writer", &json!({ "path": input.out, "content": report }))
        .map_err(|e| tool_error("file-writer", e))?;
    toka_sdk::info!("summarized {files} files of {} into {}", input.dir, input.out);
    Ok(Output { files, summary: input.out })
}

toka_sdk::agent!(summarize);
