//! {{name}}: a toka-host agent. The host calls `run` once per task with the task's JSON input; what the handler
//! returns is serialized to JSON and printed by `toka-host run`. Input `{"name": "Ada"}` gives
//! `{"greeting":"Hello, Ada!"}`; input that does not fit `Input` is `invalid-input` before the handler runs.
//!
//! What an agent can use (each call checked by the host against the run's grants):
//! `toka_sdk::info!` and friends (logs), `toka_sdk::events::emit` (observations in the event log),
//! `toka_sdk::state` (persistent state, with `--state ro|rw`), `toka_sdk::tools::call` (installed tools, with
//! `--allow-tool NAME`), and plain `std::fs`/`std::env` for granted directories (`--dir`) and variables (`--env`).

use serde::{Deserialize, Serialize};
use toka_sdk::{AgentError, Task};

#[derive(Deserialize)]
struct Input {
    #[serde(default = "world")]
    name: String,
}

fn world() -> String {
    "world".into()
}

#[derive(Serialize, Debug, PartialEq)]
struct Output {
    greeting: String,
}

fn greet(_task: &Task, input: Input) -> Result<Output, AgentError> {
    if input.name.is_empty() {
        return Err(AgentError::InvalidInput("\"name\" must not be empty".into()));
    }
    toka_sdk::info!("greeting {}", input.name);
    Ok(Output { greeting: format!("Hello, {}!", input.name) })
}

toka_sdk::agent!(greet);
