//! `p3-tool`: a tool whose WASI is 0.3, written for toka-host's tests of such tools (issue 12, item 2).
//!
//! It targets the world `toka:agent-async/tool` (`wit-p3/`): `invoke` is an async function, so it can wait on WASI
//! 0.3's async functions and streams; `describe` is a plain one. Built and encoded as `p3-agent` is (no adapter:
//! every WASI import is a `@0.3.0` one). It declares `fs:/:ro`, so it reads what its caller may read.
//!
//! Input (a JSON object; `"do"` says what to do), output (a JSON object):
//! * `{"do":"cat","path":P}`: reads the file `P` (absolute, as the caller sees it) through a WASI 0.3 stream:
//!   `{"text":...}`; a path it may not read is the tool error `failed`.
//! * `{"do":"sleep","ms":N}`: waits on WASI 0.3's monotonic clock: `{"slept_ms":N}` (measured).
//! * `{"do":"spin"}`: loops until the host stops it.
//! * `{"do":"write","path":P,"text":T}`: writes `T` to the file `P`: `{"written":N}`. The tool declares `fs:/:ro`,
//!   so this is refused whatever its caller may write.
//! * `{"do":"echo","value":V}`: `{"value":V}`.

// Not `forbid`: the canonical-ABI glue that `wit_bindgen::generate!` emits is `unsafe`; it is confined to the
// `bindings` module, and the hand-written code below is safe (the lint denies anything else).
#![deny(unsafe_code)]

#[allow(unsafe_code, reason = "generated canonical-ABI glue")]
#[allow(clippy::all, reason = "generated code")]
mod bindings {
    wit_bindgen::generate!({
        // toka:agent (with its WASI 0.2 deps) and toka:agent-async (with WASI 0.3's), read as one.
        path: ["../../wit", "../../wit-p3"],
        world: "toka:agent-async/tool",
        generate_all,
    });

    use super::P3Tool;
    export!(P3Tool);
}

#[path = "../../p3-common/files.rs"]
mod files;

use bindings::toka::agent::types::{SideEffect, ToolError, ToolSpec};
// Two versions of each WASI package are in the WIT read, so the generated modules carry the version.
use bindings::wasi::clocks0_3_0::monotonic_clock;
use bindings::wasi::filesystem0_3_0::preopens;
use bindings::wasi::filesystem0_3_0::types::{Descriptor, DescriptorFlags, OpenFlags, PathFlags};
use bindings::wit_stream;
use serde_json::{Value, json};

pub struct P3Tool;

impl bindings::Guest for P3Tool {
    fn describe() -> ToolSpec {
        let object = json!({ "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object" });
        ToolSpec {
            name: "p3-tool".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Reads a file, sleeps, spins or echoes, through WASI 0.3 (the test tool of WASI 0.3 tools)"
                .into(),
            input_schema: object.to_string(),
            output_schema: object.to_string(),
            side_effect: SideEffect::ReadOnly,
            grants: vec!["fs:/:ro".into()],
        }
    }

    async fn invoke(input: String) -> Result<String, ToolError> {
        let input: Value =
            serde_json::from_str(&input).map_err(|e| ToolError::InvalidInput(format!("input is not JSON: {e}")))?;
        let step = input["do"].as_str().unwrap_or_default().to_owned();
        let failed = |e: String| ToolError::Failed(format!("{step}: {e}"));
        let output = match step.as_str() {
            "cat" => {
                let path = input["path"].as_str().ok_or_else(|| ToolError::InvalidInput("cat: no `path`".into()))?;
                let bytes = files::read(path).await.map_err(failed)?;
                json!({ "text": String::from_utf8(bytes).map_err(|e| failed(e.to_string()))? })
            }
            "sleep" => {
                let ms = input["ms"].as_u64().unwrap_or(0);
                let start = monotonic_clock::now();
                monotonic_clock::wait_for(ms * 1_000_000).await;
                json!({ "slept_ms": (monotonic_clock::now() - start) / 1_000_000 })
            }
            "spin" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                    if n == u64::MAX {
                        break json!({ "spun": n });
                    }
                }
            }
            "write" => {
                let (path, text) = (input["path"].as_str(), input["text"].as_str());
                let (Some(path), Some(text)) = (path, text) else {
                    return Err(ToolError::InvalidInput("write: `path` and `text` are required".into()));
                };
                json!({ "written": files::write(path, text).await.map_err(failed)? })
            }
            "echo" => json!({ "value": input["value"] }),
            other => return Err(ToolError::InvalidInput(format!("unknown step {other:?}"))),
        };
        Ok(output.to_string())
    }
}
