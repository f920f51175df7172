//! `llm-ask`: a tool that asks a model one question through the host's gateway (`toka:agent/llm` in the `tool`
//! world). It declares the models it may call (`llm:oa-*`, a pattern, and `llm:an-chat`, one model): the host lets it
//! call a model only when that model is both declared here and granted to the calling run's token, and counts the
//! call against the caller's rate and budgets. The tool never sees a key.

use serde::Deserialize;
use serde_json::{Value, json};
use toka_sdk::ToolError;
use toka_sdk::llm::{self, LlmError, Message};
use toka_sdk::tool::{SideEffect, Spec};

fn spec() -> Spec {
    Spec {
        name: "llm-ask",
        version: env!("CARGO_PKG_VERSION"),
        description: "Asks a model one question through the host and returns its answer.",
        input_schema: json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "model": { "type": "string" },
                "question": { "type": "string" },
            },
            "required": ["model", "question"],
            "additionalProperties": false,
        }),
        output_schema: json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": { "answer": { "type": "string" }, "tokens": { "type": "integer" } },
            "required": ["answer", "tokens"],
        }),
        side_effect: SideEffect::None,
        grants: &["llm:oa-*", "llm:an-chat"],
    }
}

#[derive(Deserialize)]
struct Input {
    model: String,
    question: String,
}

fn ask(input: Input) -> Result<Value, ToolError> {
    let reply = llm::chat(&input.model, vec![Message::user(input.question)]).map_err(|e| match e {
        LlmError::Denied(m) => ToolError::Denied(m),
        e => ToolError::Failed(e.describe()),
    })?;
    let tokens = u64::from(reply.usage.prompt_tokens) + u64::from(reply.usage.completion_tokens);
    Ok(json!({ "answer": reply.message.content, "tokens": tokens }))
}

toka_sdk::tool!(spec, ask);
