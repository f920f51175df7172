//! `hello-rust`: the reference agent. Input `{"name": "Ada"}` (`name` optional, default `"world"`); logs
//! `greeting Ada` at info level through the host and returns `{"greeting":"Hello, Ada!"}`.
//!
//! The Python, JavaScript and C hello agents mirror this behaviour exactly, including the error cases: input
//! that is not a JSON object, or a `name` that is not a string (`null` included), is `invalid-input`.

use serde::Serialize;
use serde_json::Value;
use toka_sdk::{AgentError, Task};

#[derive(Serialize)]
struct Greeting {
    greeting: String,
}

/// Names the JSON type of `value` for error messages.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn hello(_task: &Task, input: Value) -> Result<Greeting, AgentError> {
    let Value::Object(fields) = &input else {
        return Err(AgentError::InvalidInput(format!(
            "input must be a JSON object, got {}",
            json_type(&input)
        )));
    };
    let name = match fields.get("name") {
        None => "world",
        Some(Value::String(name)) => name.as_str(),
        Some(other) => {
            return Err(AgentError::InvalidInput(format!(
                "\"name\" must be a string, got {}",
                json_type(other)
            )));
        }
    };
    toka_sdk::log::info(format!("greeting {name}"));
    Ok(Greeting {
        greeting: format!("Hello, {name}!"),
    })
}

toka_sdk::agent!(hello);
