//! `extism-echo`: the `echo` tool's work as an Extism plugin, for the comparison bench. `echo(input)` parses its input
//! as JSON and returns it serialized again, as the `echo` tool does through toka-sdk.

use extism_pdk::{FnResult, Json, plugin_fn};

#[plugin_fn]
pub fn echo(Json(input): Json<serde_json::Value>) -> FnResult<Json<serde_json::Value>> {
    Ok(Json(input))
}
