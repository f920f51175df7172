//! `tool-chat`: an agent that holds a multi-turn conversation with a model through the host's gateway
//! (`toka:agent/llm`), offering the model the host's tools it may call (`toka:agent/tools`) and running each tool
//! call the model makes through the host, until the model answers in words.
//!
//! The agent never sees a key: it names a model, and the host checks the run's token (`llm:MODEL`, `tool:NAME`),
//! the budgets, and records every model call and tool call.
//!
//! Input: `{"model": "gpt-4o-mini", "question": "...", "stream": false, "max_turns": 6, "max_deltas": null}`.
//! Output: `{"answer": "...", "turns": 3, "tool_calls": [{"name": "echo", "ok": true}], "prompt_tokens": N,
//! "completion_tokens": M, "deltas": D}` (`deltas`: streamed pieces received, with `"stream": true`). With
//! `max_deltas`, a streamed answer is cut off after that many pieces (a user's stop button): the stream is dropped,
//! which the host records as an abandoned call, and the partial text is the answer. With `"leave_open": true` as
//! well, the stream is not dropped but left to the host: still open when the run ends, as a careless agent leaves it.

use serde::{Deserialize, Serialize};
use serde_json::json;
use toka_sdk::llm::{Chat, LlmError, Message, Response, StreamEvent};
use toka_sdk::{AgentError, Task, tools};

fn default_turns() -> u32 {
    6
}

#[derive(Deserialize)]
struct Input {
    model: String,
    question: String,
    #[serde(default)]
    stream: bool,
    #[serde(default = "default_turns")]
    max_turns: u32,
    #[serde(default)]
    max_deltas: Option<u32>,
    #[serde(default)]
    leave_open: bool,
}

#[derive(Serialize)]
struct Called {
    name: String,
    ok: bool,
}

#[derive(Serialize)]
struct Output {
    answer: String,
    turns: u32,
    tool_calls: Vec<Called>,
    prompt_tokens: u64,
    completion_tokens: u64,
    deltas: u32,
}

fn model_error(e: LlmError) -> AgentError {
    match e {
        LlmError::Denied(m) => AgentError::Denied(format!("model call denied: {m}")),
        e => AgentError::Failed(format!("model call failed: {}", e.describe())),
    }
}

/// What one turn of the model gave.
enum Turn {
    Whole(Response),
    /// The text received before the stream was cut off (at `max_deltas`).
    Stopped(String),
}

/// One turn of the model: whole, or streamed and counted (and cut off after `max_deltas` pieces; the stream left
/// open with `leave_open`).
fn ask(chat: &Chat, input: &Input, deltas: &mut u32) -> Result<Turn, LlmError> {
    if !input.stream {
        return chat.send().map(Turn::Whole);
    }
    let mut text = String::new();
    let mut events = chat.stream()?;
    let mut cut = false;
    for event in events.by_ref() {
        match event? {
            StreamEvent::Delta(piece) => {
                *deltas += 1;
                text.push_str(&piece);
                if input.max_deltas.is_some_and(|max| *deltas >= max) {
                    cut = true;
                    break;
                }
            }
            StreamEvent::Done(response) => return Ok(Turn::Whole(response)),
        }
    }
    if !cut {
        return Err(LlmError::Provider("the stream ended without a response".into()));
    }
    // Returning drops the stream: the host ends the call as abandoned. Left open, the host ends it when it takes the
    // guest down.
    if input.leave_open {
        std::mem::forget(events);
    }
    Ok(Turn::Stopped(text))
}

fn converse(_task: &Task, input: Input) -> Result<Output, AgentError> {
    let mut chat = Chat::new(&input.model)
        .system("You are an agent with tools. Call them when they help; answer in words when you are done.")
        .user(&input.question)
        .tools_from_host();
    let mut out = Output {
        answer: String::new(),
        turns: 0,
        tool_calls: Vec::new(),
        prompt_tokens: 0,
        completion_tokens: 0,
        deltas: 0,
    };
    while out.turns < input.max_turns {
        out.turns += 1;
        let response = match ask(&chat, &input, &mut out.deltas).map_err(model_error)? {
            Turn::Whole(response) => response,
            Turn::Stopped(text) => {
                out.answer = text;
                return Ok(out);
            }
        };
        out.prompt_tokens += u64::from(response.usage.prompt_tokens);
        out.completion_tokens += u64::from(response.usage.completion_tokens);
        let message = response.message;
        chat = chat.message(message.clone());
        if message.tool_calls.is_empty() {
            out.answer = message.content;
            toka_sdk::info!("answered after {} turns and {} tool calls", out.turns, out.tool_calls.len());
            return Ok(out);
        }
        for call in &message.tool_calls {
            let args = serde_json::from_str(&call.arguments).unwrap_or_else(|_| json!({}));
            // A tool's failure goes back to the model as its result: the model decides what to do about it.
            let (ok, result) = match tools::call(&call.name, &args) {
                Ok(v) => (true, v.to_string()),
                Err(e) => (false, json!({ "error": format!("{e:?}") }).to_string()),
            };
            toka_sdk::info!("tool {} ({})", call.name, if ok { "ok" } else { "failed" });
            out.tool_calls.push(Called { name: call.name.clone(), ok });
            chat = chat.message(Message::tool(&call.id, result));
        }
    }
    Err(AgentError::Failed(format!("no answer after {} turns", input.max_turns)))
}

toka_sdk::agent!(converse);
