//! `p3-agent`: an agent whose WASI is 0.3, written for toka-host's tests of such agents (issue 12, item 2).
//!
//! It targets the world `toka:agent-async/agent` (`wit-p3/`): `run` is an async function, so it can wait on WASI
//! 0.3's async functions and streams, and it imports the toka interfaces as any agent does. Built for
//! `wasm32-unknown-unknown` (std brings in no WASI preview 1 or 0.2 import) with `wit-bindgen`'s async bindings, and
//! encoded into a component by `xtask` without an adapter: every WASI import is a `@0.3.0` one.
//!
//! The task's input is a JSON object; `"do"` says what to do, and the result is a JSON object:
//!
//! * `{"do":"cat","path":P}`: reads the file `P` through the preopened directories (a WASI 0.3 stream):
//!   `{"text":...}`.
//! * `{"do":"write","path":P,"text":T}`: writes `T` to the file `P`: `{"written":N}`.
//! * `{"do":"sleep","ms":N}`: waits on WASI 0.3's monotonic clock: `{"slept_ms":N}` (measured).
//! * `{"do":"print","text":T}`: writes `T` to stdout through a WASI 0.3 stream (to stderr with `"stderr":true`):
//!   `{"printed":N}`.
//! * `{"do":"emit","text":T}`: records the observation `p3.note` with `{"text":T}` (`toka:agent/events`): `{"seq":S}`.
//! * `{"do":"env"}`: the environment it was given: `{"env":[[NAME,VALUE],...]}`.
//! * `{"do":"tool","name":N,"input":I}`: calls the tool `N` with the JSON text `I` (`toka:agent/tools`):
//!   `{"output":...}` (the tool's output text), or the agent error `denied`/`failed` with the tool's error.
//! * `{"do":"spin"}`: loops forever; `{"do":"alloc","mib":N}`: allocates and touches `N` MiB.
//! * `{"do":"fail","message":M}`: returns the agent error `failed` with `M`.
//!
//! Each step also logs a line through `toka:agent/log`. A WASI error is the agent error `failed`, naming the step.

// Not `forbid`: the canonical-ABI glue that `wit_bindgen::generate!` emits is `unsafe`; it is confined to the
// `bindings` module, and the hand-written code below is safe (the lint denies anything else).
#![deny(unsafe_code)]

#[allow(unsafe_code, reason = "generated canonical-ABI glue")]
#[allow(clippy::all, reason = "generated code")]
mod bindings {
    wit_bindgen::generate!({
        // toka:agent (with its WASI 0.2 deps) and toka:agent-async (with WASI 0.3's), read as one.
        path: ["../../wit", "../../wit-p3"],
        world: "toka:agent-async/agent",
        generate_all,
    });

    use super::P3Agent;
    export!(P3Agent);
}

#[path = "../../p3-common/files.rs"]
mod files;
#[path = "../../p3-common/output.rs"]
mod output;

use output::{Target, emit};

use bindings::toka::agent::log::{self, Level};
use bindings::toka::agent::types::{AgentError, Task};
use bindings::toka::agent::{events, tools};
// Two versions of each WASI package are in the WIT read (0.2.12 beside `toka:agent`, 0.3.0 here), so the generated
// modules carry the version.
use bindings::wasi::cli0_3_0::{environment, stderr, stdout};
use bindings::wasi::clocks0_3_0::monotonic_clock;
use bindings::wasi::filesystem0_3_0::preopens;
use bindings::wasi::filesystem0_3_0::types::{Descriptor, DescriptorFlags, OpenFlags, PathFlags};
use bindings::wit_stream;
use serde_json::{Value, json};

pub struct P3Agent;

impl bindings::Guest for P3Agent {
    async fn run(task: Task) -> Result<String, AgentError> {
        let input: Value = serde_json::from_str(&task.input)
            .map_err(|e| AgentError::InvalidInput(format!("input is not JSON: {e}")))?;
        let step = input["do"].as_str().unwrap_or_default().to_owned();
        log::log(Level::Info, &format!("task {}: {step}", task.id));
        let text = |name: &str| {
            input[name]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| AgentError::InvalidInput(format!("{step}: no `{name}`")))
        };
        let failed = |e: String| AgentError::Failed(format!("{step}: {e}"));
        let result = match step.as_str() {
            "cat" => {
                let bytes = files::read(&text("path")?).await.map_err(failed)?;
                json!({ "text": String::from_utf8(bytes).map_err(|e| failed(e.to_string()))? })
            }
            "write" => json!({ "written": files::write(&text("path")?, &text("text")?).await.map_err(failed)? }),
            "sleep" => {
                let ms = input["ms"].as_u64().unwrap_or(0);
                let start = monotonic_clock::now();
                monotonic_clock::wait_for(ms * 1_000_000).await;
                json!({ "slept_ms": (monotonic_clock::now() - start) / 1_000_000 })
            }
            "print" => {
                let text = text("text")?;
                let target = if input["stderr"] == true { Target::Stderr } else { Target::Stdout };
                emit(text.clone().into_bytes(), target).await.map_err(failed)?;
                json!({ "printed": text.len() })
            }
            "emit" => {
                let payload = json!({ "text": text("text")? }).to_string();
                json!({ "seq": events::emit("p3.note", &payload).map_err(failed)? })
            }
            "env" => json!({ "env": environment::get_environment() }),
            "tool" => {
                let output = tools::call(&text("name")?, &text("input")?).map_err(|e| failed(format!("{e:?}")))?;
                json!({ "output": output })
            }
            "spin" => spin(),
            "alloc" => {
                let mib = input["mib"].as_u64().unwrap_or(0) as usize;
                let block = vec![1u8; mib << 20];
                json!({ "allocated": block.iter().map(|&b| usize::from(b)).sum::<usize>() >> 20 })
            }
            "fail" => return Err(AgentError::Failed(text("message")?)),
            other => return Err(AgentError::InvalidInput(format!("unknown step {other:?}"))),
        };
        Ok(result.to_string())
    }
}

/// Loops until the host stops it (fuel or deadline).
fn spin() -> Value {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
        if n == u64::MAX {
            return json!({ "spun": n });
        }
    }
}
