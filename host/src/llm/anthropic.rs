//! Anthropic's Messages API wire format (`POST {base_url}/v1/messages`, `anthropic-version: 2023-06-01`): system
//! messages become the top-level `system`, tool calls `tool_use` blocks, tool results `tool_result` blocks in a user
//! turn; a stream's events (`message_start`, `content_block_start/delta/stop`, `message_delta`, `message_stop`,
//! `ping`, `error`) are assembled into the same response a whole answer gives. Pure translation: no I/O here.

use super::provider::{CallError, Decoder, Wire};
use super::types::{ChatRequest, ChatResponse, FinishReason, Message, Role, ToolCall, Usage, with_usage};
use serde_json::{Value, json};

/// The API version this module speaks.
pub const VERSION: &str = "2023-06-01";

#[derive(Debug, Default)]
pub struct Anthropic;

fn finish(reason: Option<&str>) -> FinishReason {
    match reason {
        Some("end_turn" | "stop_sequence") => FinishReason::Stop,
        Some("max_tokens") => FinishReason::Length,
        Some("tool_use") => FinishReason::ToolCalls,
        Some("refusal") => FinishReason::ContentFilter,
        _ => FinishReason::Other,
    }
}

fn error_message_of(v: &Value) -> Option<String> {
    if v["type"] != "error" {
        return None;
    }
    let e = &v["error"];
    Some(e["message"].as_str().map_or_else(|| e.to_string(), str::to_string))
}

/// The messages in Anthropic's shape: one user turn gathers the tool results (and any user text) that follow an
/// assistant's tool calls.
fn messages(req: &ChatRequest) -> (Vec<String>, Vec<Value>) {
    let mut system = Vec::new();
    let mut out: Vec<Value> = Vec::new();
    for m in &req.messages {
        let (role, block) = match m.role {
            Role::System => {
                system.push(m.content.clone());
                continue;
            }
            Role::User => ("user", vec![json!({ "type": "text", "text": m.content })]),
            Role::Tool => (
                "user",
                vec![json!({ "type": "tool_result", "tool_use_id": m.tool_call_id.clone().unwrap_or_default(),
                             "content": m.content })],
            ),
            Role::Assistant => {
                let mut blocks = Vec::new();
                if !m.content.is_empty() {
                    blocks.push(json!({ "type": "text", "text": m.content }));
                }
                for c in &m.tool_calls {
                    // Checked to be a JSON object before the request got here.
                    let input: Value = serde_json::from_str(&c.arguments).unwrap_or_else(|_| json!({}));
                    blocks.push(json!({ "type": "tool_use", "id": c.id, "name": c.name, "input": input }));
                }
                ("assistant", blocks)
            }
        };
        match out.last_mut() {
            Some(last) if last["role"] == role => {
                if let Some(content) = last["content"].as_array_mut() {
                    content.extend(block);
                }
            }
            _ => out.push(json!({ "role": role, "content": block })),
        }
    }
    (system, out)
}

fn content(blocks: &[Value]) -> Result<(String, Vec<ToolCall>), CallError> {
    let mut text = String::new();
    let mut calls = Vec::new();
    for b in blocks {
        match b["type"].as_str() {
            Some("text") => text.push_str(b["text"].as_str().unwrap_or_default()),
            Some("tool_use") => match (b["id"].as_str(), b["name"].as_str()) {
                (Some(id), Some(name)) if b["input"].is_object() => {
                    calls.push(ToolCall { id: id.into(), name: name.into(), arguments: b["input"].to_string() });
                }
                _ => return Err(CallError::Malformed("a tool_use block lacks its id, name or input object".into())),
            },
            // Thinking and other blocks carry nothing the guest asked for.
            _ => {}
        }
    }
    Ok((text, calls))
}

fn usage(v: &Value, input: Option<u64>) -> Option<Usage> {
    let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    Some(Usage {
        prompt_tokens: clamp(input.or_else(|| v["input_tokens"].as_u64())?),
        completion_tokens: clamp(v["output_tokens"].as_u64()?),
        estimated: false,
    })
}

impl Wire for Anthropic {
    fn path(&self) -> &'static str {
        "/v1/messages"
    }

    fn auth_header(&self) -> (&'static str, &'static str) {
        ("x-api-key", "")
    }

    fn extra_headers(&self) -> &'static [(&'static str, &'static str)] {
        &[("anthropic-version", VERSION)]
    }

    fn body(&self, req: &ChatRequest, stream: bool) -> Value {
        let (system, messages) = messages(req);
        let mut body = json!({ "model": req.model, "max_tokens": req.max_tokens, "messages": messages });
        if !system.is_empty() {
            body["system"] = json!(system.join("\n\n"));
        }
        if !req.tools.is_empty() {
            body["tools"] = req
                .tools
                .iter()
                .map(|f| json!({ "name": f.name, "description": f.description, "input_schema": f.parameters }))
                .collect();
        }
        if let Some(t) = req.temperature {
            body["temperature"] = json!(t);
        }
        if !req.stop.is_empty() {
            body["stop_sequences"] = json!(req.stop);
        }
        if stream {
            body["stream"] = json!(true);
        }
        body
    }

    fn parse(&self, body: &[u8], prompt: &[Message]) -> Result<ChatResponse, CallError> {
        let v: Value =
            serde_json::from_slice(body).map_err(|e| CallError::Malformed(format!("the response is not JSON: {e}")))?;
        if let Some(message) = error_message_of(&v) {
            return Err(CallError::Malformed(format!("the provider answered with an error: {message}")));
        }
        let Some(blocks) = v["content"].as_array() else {
            return Err(CallError::Malformed("the response has no content blocks".into()));
        };
        let (text, calls) = content(blocks)?;
        let message = Message { role: Role::Assistant, content: text, tool_calls: calls, tool_call_id: None };
        let response = ChatResponse { message, finish: finish(v["stop_reason"].as_str()), usage: Usage::default() };
        Ok(with_usage(response, prompt, usage(&v["usage"], None)))
    }

    fn error_message(&self, body: &[u8]) -> Option<String> {
        error_message_of(&serde_json::from_slice(body).ok()?)
    }

    fn decoder(&self) -> Box<dyn Decoder> {
        Box::<AnthropicStream>::default()
    }
}

/// A content block being assembled.
#[derive(Debug)]
enum Block {
    Text,
    ToolUse { id: String, name: String, json: String },
    Other,
}

#[derive(Debug, Default)]
struct AnthropicStream {
    started: bool,
    text: String,
    blocks: Vec<Block>,
    calls: Vec<ToolCall>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    stop_reason: Option<String>,
    stopped: bool,
}

impl Decoder for AnthropicStream {
    fn event(&mut self, event: Option<&str>, data: &str) -> Result<Option<String>, CallError> {
        let v: Value =
            serde_json::from_str(data).map_err(|e| CallError::Malformed(format!("a stream event is not JSON: {e}")))?;
        let kind = v["type"].as_str().or(event).unwrap_or_default();
        if self.stopped && kind != "ping" {
            return Err(CallError::Malformed(format!("event {kind} after message_stop")));
        }
        match kind {
            "message_start" => {
                self.started = true;
                let u = &v["message"]["usage"];
                self.input_tokens = u["input_tokens"].as_u64();
                self.output_tokens = u["output_tokens"].as_u64();
            }
            "ping" => {}
            "content_block_start" => {
                let index = v["index"].as_u64().unwrap_or(u64::MAX);
                if usize::try_from(index).ok() != Some(self.blocks.len())
                    || self.blocks.len() >= 4 * super::types::MAX_TOOL_CALLS
                {
                    return Err(CallError::Malformed(format!("content block {index} out of order")));
                }
                let b = &v["content_block"];
                self.blocks.push(match b["type"].as_str() {
                    Some("text") => {
                        let t = b["text"].as_str().unwrap_or_default();
                        self.text.push_str(t);
                        if !t.is_empty() {
                            return Ok(Some(t.to_string()));
                        }
                        Block::Text
                    }
                    Some("tool_use") => Block::ToolUse {
                        id: b["id"].as_str().unwrap_or_default().into(),
                        name: b["name"].as_str().unwrap_or_default().into(),
                        json: String::new(),
                    },
                    _ => Block::Other,
                });
            }
            "content_block_delta" => {
                let index = v["index"].as_u64().and_then(|i| usize::try_from(i).ok());
                let block = index.and_then(|i| self.blocks.get_mut(i));
                let d = &v["delta"];
                match (block, d["type"].as_str()) {
                    (Some(Block::Text), Some("text_delta")) => {
                        let t = d["text"].as_str().unwrap_or_default();
                        self.text.push_str(t);
                        return Ok((!t.is_empty()).then(|| t.to_string()));
                    }
                    (Some(Block::ToolUse { json, .. }), Some("input_json_delta")) => {
                        json.push_str(d["partial_json"].as_str().unwrap_or_default());
                    }
                    (Some(Block::Other), _) => {}
                    _ => return Err(CallError::Malformed("a content block delta does not fit its block".into())),
                }
            }
            "content_block_stop" => {
                let index = v["index"].as_u64().and_then(|i| usize::try_from(i).ok());
                if let Some(Block::ToolUse { id, name, json }) = index.and_then(|i| self.blocks.get_mut(i)) {
                    let input = if json.trim().is_empty() { "{}" } else { json.as_str() };
                    let parsed: Value = serde_json::from_str(input)
                        .map_err(|e| CallError::Malformed(format!("a tool_use input is not JSON: {e}")))?;
                    if !parsed.is_object() || id.is_empty() || name.is_empty() {
                        return Err(CallError::Malformed("a tool_use block lacks its id, name or input object".into()));
                    }
                    self.calls.push(ToolCall { id: id.clone(), name: name.clone(), arguments: parsed.to_string() });
                }
            }
            "message_delta" => {
                if let Some(r) = v["delta"]["stop_reason"].as_str() {
                    self.stop_reason = Some(r.to_string());
                }
                if let Some(n) = v["usage"]["output_tokens"].as_u64() {
                    self.output_tokens = Some(n);
                }
                if let Some(n) = v["usage"]["input_tokens"].as_u64() {
                    self.input_tokens = Some(n);
                }
            }
            "message_stop" => self.stopped = true,
            "error" => {
                let message = error_message_of(&v).unwrap_or_else(|| "unknown error".into());
                return Err(CallError::Status { status: 200, message: format!("error in the stream: {message}") });
            }
            other => return Err(CallError::Malformed(format!("unknown stream event `{}`", super::shown(other)))),
        }
        Ok(None)
    }

    fn finish(&mut self, prompt: &[Message]) -> Result<ChatResponse, CallError> {
        if !self.started || !self.stopped {
            return Err(CallError::Cut("the stream ended before message_stop".into()));
        }
        let message = Message {
            role: Role::Assistant,
            content: std::mem::take(&mut self.text),
            tool_calls: std::mem::take(&mut self.calls),
            tool_call_id: None,
        };
        let reported = match (self.input_tokens, self.output_tokens) {
            (Some(i), Some(o)) => usage(&json!({ "output_tokens": o }), Some(i)),
            _ => None,
        };
        let response = ChatResponse { message, finish: finish(self.stop_reason.as_deref()), usage: Usage::default() };
        Ok(with_usage(response, prompt, reported))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::types::Function;

    #[test]
    fn request_body_is_the_messages_format() {
        let asked = Message {
            tool_calls: vec![ToolCall { id: "toolu_1".into(), name: "echo".into(), arguments: r#"{"x":1}"#.into() }],
            ..Message::new(Role::Assistant, "Let me check.")
        };
        let req = ChatRequest {
            model: "claude-x".into(),
            messages: vec![
                Message::new(Role::System, "be brief"),
                Message::new(Role::User, "hi"),
                asked,
                Message { tool_call_id: Some("toolu_1".into()), ..Message::new(Role::Tool, "42") },
                Message::new(Role::User, "thanks"),
            ],
            tools: vec![Function {
                name: "echo".into(),
                description: "d".into(),
                parameters: json!({"type": "object"}),
            }],
            temperature: None,
            max_tokens: 100,
            stop: vec!["STOP".into()],
        };
        assert_eq!(
            Anthropic.body(&req, false),
            json!({
                "model": "claude-x",
                "max_tokens": 100,
                "system": "be brief",
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                    {"role": "assistant", "content": [
                        {"type": "text", "text": "Let me check."},
                        {"type": "tool_use", "id": "toolu_1", "name": "echo", "input": {"x": 1}}]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "42"},
                        {"type": "text", "text": "thanks"}]}
                ],
                "tools": [{"name": "echo", "description": "d", "input_schema": {"type": "object"}}],
                "stop_sequences": ["STOP"]
            })
        );
    }

    #[test]
    fn responses_parse() {
        let body = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-x",
            "content":[{"type":"text","text":"Checking."},{"type":"tool_use","id":"toolu_2","name":"echo","input":{"a":[1]}}],
            "stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":20,"output_tokens":9}}"#;
        let r = Anthropic.parse(body, &[]).unwrap();
        assert_eq!(r.message.content, "Checking.");
        assert_eq!(r.message.tool_calls[0].arguments, r#"{"a":[1]}"#);
        assert_eq!((r.finish, r.usage.prompt_tokens, r.usage.completion_tokens), (FinishReason::ToolCalls, 20, 9));
        let err = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert_eq!(Anthropic.error_message(err).unwrap(), "Overloaded");
    }

    #[test]
    fn streams_assemble() {
        let events = [
            (
                "message_start",
                r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude-x","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"output_tokens":1}}}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            ),
            ("ping", r#"{"type": "ping"}"#),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
            ),
            ("content_block_stop", r#"{"type":"content_block_stop","index":0}"#),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"echo","input":{}}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\": 1"}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"}"}}"#,
            ),
            ("content_block_stop", r#"{"type":"content_block_stop","index":1}"#),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":15}}"#,
            ),
            ("message_stop", r#"{"type":"message_stop"}"#),
        ];
        let mut d = Anthropic.decoder();
        let deltas: Vec<String> = events.iter().filter_map(|(e, data)| d.event(Some(e), data).unwrap()).collect();
        assert_eq!(deltas, ["Hi"]);
        let r = d.finish(&[]).unwrap();
        assert_eq!(r.message.tool_calls[0].arguments, r#"{"a":1}"#);
        assert_eq!((r.finish, r.usage.prompt_tokens, r.usage.completion_tokens), (FinishReason::ToolCalls, 25, 15));

        let mut cut = Anthropic.decoder();
        for (e, data) in &events[..4] {
            cut.event(Some(e), data).unwrap();
        }
        assert!(matches!(cut.finish(&[]), Err(CallError::Cut(_))));
        let mut err = Anthropic.decoder();
        let overloaded = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert!(matches!(err.event(Some("error"), overloaded), Err(CallError::Status { .. })));
    }
}
