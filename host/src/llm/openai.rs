//! OpenAI's Chat Completions wire format (`POST {base_url}/chat/completions`), as OpenAI, vLLM, llama.cpp's server
//! and Ollama speak it: the request body, the response, the SSE chunks of a stream (text deltas, tool call deltas
//! by index, the final usage chunk of `stream_options.include_usage`, `[DONE]`), and error bodies. Pure translation:
//! no I/O here.

use super::provider::{CallError, Decoder, Wire};
use super::types::{ChatRequest, ChatResponse, FinishReason, Message, Role, ToolCall, Usage, with_usage};
use serde_json::{Value, json};

#[derive(Debug, Default)]
pub struct OpenAi;

fn role(r: Role) -> &'static str {
    match r {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

fn finish(reason: Option<&str>) -> FinishReason {
    match reason {
        Some("stop") => FinishReason::Stop,
        Some("length") => FinishReason::Length,
        Some("tool_calls" | "function_call") => FinishReason::ToolCalls,
        Some("content_filter") => FinishReason::ContentFilter,
        _ => FinishReason::Other,
    }
}

fn usage(v: &Value) -> Option<Usage> {
    let n = |k: &str| v.get(k).and_then(Value::as_u64).map(|n| u32::try_from(n).unwrap_or(u32::MAX));
    Some(Usage { prompt_tokens: n("prompt_tokens")?, completion_tokens: n("completion_tokens")?, estimated: false })
}

fn text(v: &Value, what: &str) -> Result<String, CallError> {
    match v {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        _ => Err(CallError::Malformed(format!("{what} is not a string"))),
    }
}

fn tool_calls(v: Option<&Value>) -> Result<Vec<ToolCall>, CallError> {
    let Some(Value::Array(calls)) = v else { return Ok(Vec::new()) };
    calls
        .iter()
        .map(|c| {
            let f = &c["function"];
            match (c["id"].as_str(), f["name"].as_str(), f["arguments"].as_str()) {
                (Some(id), Some(name), Some(arguments)) => {
                    Ok(ToolCall { id: id.into(), name: name.into(), arguments: arguments.into() })
                }
                _ => Err(CallError::Malformed("a tool call lacks its id, name or arguments".into())),
            }
        })
        .collect()
}

impl Wire for OpenAi {
    fn path(&self) -> &'static str {
        "/chat/completions"
    }

    fn auth_header(&self) -> (&'static str, &'static str) {
        ("authorization", "Bearer ")
    }

    fn extra_headers(&self) -> &'static [(&'static str, &'static str)] {
        &[]
    }

    fn body(&self, req: &ChatRequest, stream: bool) -> Value {
        let messages: Vec<Value> = req
            .messages
            .iter()
            .map(|m| {
                let mut v = json!({ "role": role(m.role), "content": m.content });
                if !m.tool_calls.is_empty() {
                    if m.content.is_empty() {
                        v["content"] = Value::Null;
                    }
                    v["tool_calls"] = m
                        .tool_calls
                        .iter()
                        .map(|c| {
                            json!({ "id": c.id, "type": "function",
                                         "function": { "name": c.name, "arguments": c.arguments } })
                        })
                        .collect();
                }
                if let Some(id) = &m.tool_call_id {
                    v["tool_call_id"] = json!(id);
                }
                v
            })
            .collect();
        let mut body = json!({ "model": req.model, "messages": messages, "max_tokens": req.max_tokens });
        if !req.tools.is_empty() {
            body["tools"] = req
                .tools
                .iter()
                .map(|f| json!({ "type": "function",
                                 "function": { "name": f.name, "description": f.description, "parameters": f.parameters } }))
                .collect();
        }
        if let Some(t) = req.temperature {
            body["temperature"] = json!(t);
        }
        if !req.stop.is_empty() {
            body["stop"] = json!(req.stop);
        }
        if stream {
            body["stream"] = json!(true);
            body["stream_options"] = json!({ "include_usage": true });
        }
        body
    }

    fn parse(&self, body: &[u8], prompt: &[Message]) -> Result<ChatResponse, CallError> {
        let v: Value =
            serde_json::from_slice(body).map_err(|e| CallError::Malformed(format!("the response is not JSON: {e}")))?;
        if let Some(message) = error_message_of(&v) {
            return Err(CallError::Malformed(format!("the provider answered with an error: {message}")));
        }
        let choice = v["choices"].get(0).ok_or_else(|| CallError::Malformed("the response has no choice".into()))?;
        let m = &choice["message"];
        if !m.is_object() {
            return Err(CallError::Malformed("the response's choice has no message".into()));
        }
        let message = Message {
            role: Role::Assistant,
            content: text(&m["content"], "the message's content")?,
            tool_calls: tool_calls(m.get("tool_calls"))?,
            tool_call_id: None,
        };
        let response =
            ChatResponse { message, finish: finish(choice["finish_reason"].as_str()), usage: Usage::default() };
        Ok(with_usage(response, prompt, usage(&v["usage"])))
    }

    fn error_message(&self, body: &[u8]) -> Option<String> {
        error_message_of(&serde_json::from_slice(body).ok()?)
    }

    fn decoder(&self) -> Box<dyn Decoder> {
        Box::<OpenAiStream>::default()
    }
}

fn error_message_of(v: &Value) -> Option<String> {
    let e = v.get("error")?;
    Some(e.get("message").and_then(Value::as_str).map_or_else(|| e.to_string(), str::to_string))
}

/// A tool call being assembled from deltas.
#[derive(Debug, Default)]
struct Partial {
    id: String,
    name: String,
    arguments: String,
}

/// The state of one stream: text so far, tool calls by index, finish reason, usage, `[DONE]`.
#[derive(Debug, Default)]
struct OpenAiStream {
    content: String,
    calls: Vec<Partial>,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    done: bool,
}

impl Decoder for OpenAiStream {
    fn event(&mut self, _event: Option<&str>, data: &str) -> Result<Option<String>, CallError> {
        if self.done {
            return Err(CallError::Malformed("data after [DONE]".into()));
        }
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(None);
        }
        let chunk: Value =
            serde_json::from_str(data).map_err(|e| CallError::Malformed(format!("a stream chunk is not JSON: {e}")))?;
        if let Some(message) = error_message_of(&chunk) {
            return Err(CallError::Status { status: 200, message: format!("error in the stream: {message}") });
        }
        if let Some(u) = chunk.get("usage").and_then(usage) {
            self.usage = Some(u);
        }
        let Some(choice) = chunk["choices"].get(0) else { return Ok(None) };
        if let Some(reason) = choice["finish_reason"].as_str() {
            self.finish = Some(finish(Some(reason)));
        }
        let delta = &choice["delta"];
        if let Some(Value::Array(calls)) = delta.get("tool_calls") {
            for c in calls {
                let index =
                    c["index"].as_u64().ok_or_else(|| CallError::Malformed("a tool call delta has no index".into()))?;
                let index = usize::try_from(index).unwrap_or(usize::MAX);
                if index > self.calls.len() || index >= super::types::MAX_TOOL_CALLS {
                    return Err(CallError::Malformed(format!("tool call delta index {index} out of order")));
                }
                if index == self.calls.len() {
                    self.calls.push(Partial::default());
                }
                let p = &mut self.calls[index];
                if let Some(id) = c["id"].as_str() {
                    p.id = id.to_string();
                }
                if let Some(name) = c["function"]["name"].as_str() {
                    p.name.push_str(name);
                }
                if let Some(args) = c["function"]["arguments"].as_str() {
                    p.arguments.push_str(args);
                }
            }
        }
        match delta.get("content") {
            Some(Value::String(s)) if !s.is_empty() => {
                self.content.push_str(s);
                Ok(Some(s.clone()))
            }
            Some(Value::String(_) | Value::Null) | None => Ok(None),
            Some(_) => Err(CallError::Malformed("a delta's content is not a string".into())),
        }
    }

    fn finish(&mut self, prompt: &[Message]) -> Result<ChatResponse, CallError> {
        // Some servers end without `[DONE]` once they sent a finish reason; without either, the stream was cut.
        let Some(finish) = self.finish.or(self.done.then_some(FinishReason::Other)) else {
            return Err(CallError::Cut(
                "the stream ended before the completion did (no finish reason, no [DONE])".into(),
            ));
        };
        let calls = std::mem::take(&mut self.calls)
            .into_iter()
            .map(|p| {
                if p.id.is_empty() || p.name.is_empty() {
                    return Err(CallError::Malformed("a streamed tool call lacks its id or name".into()));
                }
                let arguments = if p.arguments.is_empty() { "{}".to_string() } else { p.arguments };
                Ok(ToolCall { id: p.id, name: p.name, arguments })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let message = Message {
            role: Role::Assistant,
            content: std::mem::take(&mut self.content),
            tool_calls: calls,
            tool_call_id: None,
        };
        Ok(with_usage(ChatResponse { message, finish, usage: Usage::default() }, prompt, self.usage))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::types::Function;

    fn request() -> ChatRequest {
        let asked = Message {
            tool_calls: vec![ToolCall { id: "call_1".into(), name: "echo".into(), arguments: r#"{"x":1}"#.into() }],
            ..Message::new(Role::Assistant, "")
        };
        ChatRequest {
            model: "gpt-4o-mini".into(),
            messages: vec![
                Message::new(Role::System, "be brief"),
                Message::new(Role::User, "hi"),
                asked,
                Message { tool_call_id: Some("call_1".into()), ..Message::new(Role::Tool, r#"{"x":1}"#) },
            ],
            tools: vec![Function {
                name: "echo".into(),
                description: "echoes".into(),
                parameters: json!({"type": "object"}),
            }],
            temperature: Some(0.5),
            max_tokens: 64,
            stop: vec!["END".into()],
        }
    }

    #[test]
    fn request_body_is_the_chat_completions_format() {
        let body = OpenAi.body(&request(), true);
        assert_eq!(
            body,
            json!({
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "echo", "arguments": "{\"x\":1}"}}]},
                    {"role": "tool", "content": "{\"x\":1}", "tool_call_id": "call_1"}
                ],
                "max_tokens": 64,
                "tools": [{"type": "function", "function": {"name": "echo", "description": "echoes",
                           "parameters": {"type": "object"}}}],
                "temperature": 0.5,
                "stop": ["END"],
                "stream": true,
                "stream_options": {"include_usage": true}
            })
        );
    }

    #[test]
    fn responses_parse_with_tool_calls_and_usage() {
        let body = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini",
            "choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_9",
            "type":"function","function":{"name":"echo","arguments":"{\"a\":2}"}}],"refusal":null},
            "logprobs":null,"finish_reason":"tool_calls"}],
            "usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19}}"#;
        let r = OpenAi.parse(body, &[]).unwrap();
        assert_eq!(r.finish, FinishReason::ToolCalls);
        assert_eq!(r.message.tool_calls[0].arguments, r#"{"a":2}"#);
        assert_eq!((r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.estimated), (12, 7, false));
        assert!(matches!(OpenAi.parse(b"{not json", &[]), Err(CallError::Malformed(_))));
        assert!(matches!(OpenAi.parse(br#"{"choices":[]}"#, &[]), Err(CallError::Malformed(_))));
        assert_eq!(
            OpenAi.error_message(br#"{"error":{"message":"bad key","type":"invalid_request_error"}}"#).unwrap(),
            "bad key"
        );
    }

    #[test]
    fn streams_assemble_text_and_tool_calls() {
        let mut d = OpenAi.decoder();
        let chunks = [
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"echo","arguments":""}}]},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\""}}]},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":":1}"}}]},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}}"#,
            "[DONE]",
        ];
        let deltas: Vec<String> = chunks.iter().filter_map(|c| d.event(None, c).unwrap()).collect();
        assert_eq!(deltas, ["Hel", "lo"]);
        let r = d.finish(&[]).unwrap();
        assert_eq!(r.message.content, "Hello");
        assert_eq!(
            r.message.tool_calls,
            vec![ToolCall { id: "call_1".into(), name: "echo".into(), arguments: r#"{"a":1}"#.into() }]
        );
        assert_eq!((r.finish, r.usage.total()), (FinishReason::ToolCalls, 8));

        let mut cut = OpenAi.decoder();
        cut.event(None, chunks[1]).unwrap();
        assert!(matches!(cut.finish(&[]), Err(CallError::Cut(_))));
        let mut bad = OpenAi.decoder();
        assert!(matches!(bad.event(None, "{oops"), Err(CallError::Malformed(_))));
        let mut skip = OpenAi.decoder();
        let gap = r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":3,"id":"x"}]}}]}"#;
        assert!(skip.event(None, gap).is_err(), "an index that skips ahead is refused");
    }
}
