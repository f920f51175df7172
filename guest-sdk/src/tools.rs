//! Calls to the tools installed in the host (`toka:agent/tools`).
//!
//! Each call runs the tool in a sandbox of its own whose rights are the tool's declared needs intersected with this
//! run's grants; the run's token must grant `tool:NAME`; the tool's fuel comes out of this run's budget; the input
//! and output are validated against the tool's schemas; and the call is recorded in the event log. Every refusal
//! is an error value here, never a trap.
//!
//! ```no_run
//! let listing = toka_sdk::tools::call("file-lister", &serde_json::json!({ "path": "/data" }))?;
//! # Ok::<(), toka_sdk::ToolError>(())
//! ```

use crate::bindings::toka::agent::tools as host;
pub use crate::bindings::toka::agent::types::{ToolError, ToolSpec};

/// The tools this run may call (those its token grants).
pub fn list() -> Vec<ToolSpec> {
    host::list()
}

/// Calls tool `name` with a JSON input; returns its JSON output.
pub fn call(name: &str, input: &serde_json::Value) -> Result<serde_json::Value, ToolError> {
    let output = host::call(name, &input.to_string())?;
    serde_json::from_str(&output)
        .map_err(|e| ToolError::Failed(format!("{name} returned output that is not JSON: {e}")))
}
