//! A model call in the host's own terms, between the guest's WIT values and a provider's wire format: what the
//! providers ([`super::openai`], [`super::anthropic`]) translate to and from. Checked and bounded ([`check`]) before
//! any provider sees it. This module never talks to the network.

use serde::Serialize;

/// Most messages in one request.
pub const MAX_MESSAGES: usize = 1024;
/// Most bytes of text (contents, arguments, schemas, stops) in one request.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;
/// Most functions offered in one request.
pub const MAX_TOOLS: usize = 128;
/// Most tool calls in one message.
pub const MAX_TOOL_CALLS: usize = 128;
/// Most stop sequences (OpenAI's own limit).
pub const MAX_STOPS: usize = 4;
/// Longest id or function name a request may carry.
pub const MAX_ID: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// A JSON object, as text.
    pub arguments: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message { role, content: content.into(), tool_calls: Vec::new(), tool_call_id: None }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Function {
    pub name: String,
    pub description: String,
    /// A JSON Schema (checked to be a JSON object).
    pub parameters: serde_json::Value,
}

/// A checked request, as a provider receives it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatRequest {
    /// The provider's name for the model.
    pub model: String,
    pub messages: Vec<Message>,
    pub tools: Vec<Function>,
    pub temperature: Option<f32>,
    /// Always set: the request's own, lowered to the budget, or the model's default.
    pub max_tokens: u32,
    pub stop: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
    Other,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// The provider did not say; the host estimated (see [`estimate_tokens`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub estimated: bool,
}

impl Usage {
    pub fn total(&self) -> u64 {
        u64::from(self.prompt_tokens) + u64::from(self.completion_tokens)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatResponse {
    pub message: Message,
    pub finish: FinishReason,
    pub usage: Usage,
}

/// What a stream yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    Delta(String),
    Done(ChatResponse),
}

/// A rough count of the tokens in `bytes` bytes of text (about four bytes a token, rounded up): what a budget is
/// charged when a provider does not report usage, so a silent provider never runs a budget for free.
pub fn estimate_tokens(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(4)).unwrap_or(u32::MAX)
}

/// The text bytes of a request's messages (for estimates).
pub fn prompt_bytes(messages: &[Message]) -> usize {
    messages
        .iter()
        .map(|m| m.content.len() + m.tool_calls.iter().map(|c| c.name.len() + c.arguments.len()).sum::<usize>())
        .sum()
}

/// Fills in a usage the provider left out (or left at zero for a non-empty exchange).
pub fn with_usage(mut response: ChatResponse, prompt: &[Message], reported: Option<Usage>) -> ChatResponse {
    response.usage = match reported {
        Some(u) => u,
        None => {
            let completion = response.message.content.len()
                + response.message.tool_calls.iter().map(|c| c.name.len() + c.arguments.len()).sum::<usize>();
            Usage {
                prompt_tokens: estimate_tokens(prompt_bytes(prompt)),
                completion_tokens: estimate_tokens(completion),
                estimated: true,
            }
        }
    };
    response
}

fn function_name_ok(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A checked request's messages, functions and stop sequences.
pub type Checked = (Vec<Message>, Vec<Function>, Vec<String>);

/// Checks what a guest asks for before anything is sent or counted: sizes, roles in an order a provider accepts,
/// tool calls answered by id, JSON where JSON is due, bounded depth. Returns the messages, functions and stops.
pub fn check(
    messages: Vec<Message>,
    tools: Vec<Function>,
    temperature: Option<f32>,
    stop: Vec<String>,
) -> Result<Checked, String> {
    if messages.is_empty() {
        return Err("a request needs at least one message".into());
    }
    if messages.len() > MAX_MESSAGES {
        return Err(format!("{} messages, over the {MAX_MESSAGES} message limit", messages.len()));
    }
    if tools.len() > MAX_TOOLS {
        return Err(format!("{} tools, over the {MAX_TOOLS} tool limit", tools.len()));
    }
    if stop.len() > MAX_STOPS {
        return Err(format!("{} stop sequences, over the {MAX_STOPS} limit", stop.len()));
    }
    if stop.iter().any(String::is_empty) {
        return Err("a stop sequence is empty".into());
    }
    if let Some(t) = temperature
        && !(t.is_finite() && (0.0..=2.0).contains(&t))
    {
        return Err(format!("temperature {t} is not between 0 and 2"));
    }
    let mut bytes: usize = stop.iter().map(String::len).sum();
    let mut seen = std::collections::BTreeSet::new();
    for f in &tools {
        if !function_name_ok(&f.name) {
            return Err(format!(
                "function name `{}` must be 1 to 64 ASCII letters, digits, `_` or `-`",
                super::shown(&f.name)
            ));
        }
        if !seen.insert(f.name.as_str()) {
            return Err(format!("function `{}` is offered twice", f.name));
        }
        if !f.parameters.is_object() {
            return Err(format!("the parameters of function `{}` are not a JSON Schema object", f.name));
        }
        bytes += f.name.len() + f.description.len() + f.parameters.to_string().len();
    }
    let mut open_calls: Vec<&str> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        bytes += m.content.len();
        if m.role != Role::Assistant && !m.tool_calls.is_empty() {
            return Err(format!("message {i}: only assistant messages carry tool calls"));
        }
        if m.tool_calls.len() > MAX_TOOL_CALLS {
            return Err(format!("message {i}: over {MAX_TOOL_CALLS} tool calls"));
        }
        for call in &m.tool_calls {
            bytes += call.id.len() + call.name.len() + call.arguments.len();
            if call.id.is_empty() || call.id.len() > MAX_ID || call.id.chars().any(char::is_control) {
                return Err(format!("message {i}: a tool call id must be 1 to {MAX_ID} bytes without controls"));
            }
            if !function_name_ok(&call.name) {
                return Err(format!(
                    "message {i}: tool call name `{}` is not a function name",
                    super::shown(&call.name)
                ));
            }
            match serde_json::from_str::<serde_json::Value>(&call.arguments) {
                Ok(v) if v.is_object() && crate::bounds::depth(&v) <= crate::bounds::MAX_DEPTH => {}
                _ => return Err(format!("message {i}: the arguments of tool call {} are not a JSON object", call.id)),
            }
        }
        match m.role {
            Role::Tool => {
                let Some(id) = &m.tool_call_id else {
                    return Err(format!("message {i}: a tool message needs the tool-call-id it answers"));
                };
                let Some(at) = open_calls.iter().position(|c| c == id) else {
                    return Err(format!(
                        "message {i}: no earlier assistant tool call has the id `{}`",
                        super::shown(id)
                    ));
                };
                open_calls.remove(at);
            }
            _ if m.tool_call_id.is_some() => {
                return Err(format!("message {i}: only tool messages carry a tool-call-id"));
            }
            Role::Assistant => open_calls = m.tool_calls.iter().map(|c| c.id.as_str()).collect(),
            Role::System | Role::User => open_calls.clear(),
        }
        if bytes > MAX_REQUEST_BYTES {
            return Err(format!("the request is over {MAX_REQUEST_BYTES} bytes of text"));
        }
    }
    if depth_over(&tools) {
        return Err(format!("a function's parameters are nested over {} levels deep", crate::bounds::MAX_DEPTH));
    }
    Ok((messages, tools, stop))
}

fn depth_over(tools: &[Function]) -> bool {
    tools.iter().any(|f| crate::bounds::depth(&f.parameters) > crate::bounds::MAX_DEPTH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: &str) -> ToolCall {
        ToolCall { id: id.into(), name: "echo".into(), arguments: "{}".into() }
    }

    #[test]
    fn requests_are_checked() {
        let user = Message::new(Role::User, "hi");
        let ok = |m: Vec<Message>| check(m, vec![], None, vec![]);
        assert!(ok(vec![user.clone()]).is_ok());
        assert!(ok(vec![]).unwrap_err().contains("at least one"));
        let asked = Message { tool_calls: vec![call("c1")], ..Message::new(Role::Assistant, "") };
        let answer = Message { tool_call_id: Some("c1".into()), ..Message::new(Role::Tool, "{}") };
        assert!(ok(vec![user.clone(), asked.clone(), answer.clone()]).is_ok());
        assert!(ok(vec![user.clone(), answer.clone()]).unwrap_err().contains("no earlier assistant tool call"));
        assert!(ok(vec![user.clone(), asked.clone(), answer.clone(), answer.clone()]).is_err(), "answered twice");
        let bad_args = Message { tool_calls: vec![ToolCall { arguments: "[1]".into(), ..call("c") }], ..asked.clone() };
        assert!(ok(vec![user.clone(), bad_args]).unwrap_err().contains("not a JSON object"));
        let user_call = Message { tool_calls: vec![call("c")], ..user.clone() };
        assert!(ok(vec![user_call]).is_err());
        assert!(check(vec![user.clone()], vec![], Some(f32::NAN), vec![]).is_err());
        assert!(check(vec![user.clone()], vec![], Some(2.5), vec![]).is_err());
        assert!(check(vec![user.clone()], vec![], None, vec!["a".into(); 5]).is_err());
        let f = |name: &str, p: serde_json::Value| Function {
            name: name.into(),
            description: String::new(),
            parameters: p,
        };
        assert!(check(vec![user.clone()], vec![f("file-reader", serde_json::json!({}))], None, vec![]).is_ok());
        assert!(check(vec![user.clone()], vec![f("a.b", serde_json::json!({}))], None, vec![]).is_err());
        assert!(check(vec![user.clone()], vec![f("a", serde_json::json!([]))], None, vec![]).is_err());
        let dup = vec![f("a", serde_json::json!({})), f("a", serde_json::json!({}))];
        assert!(check(vec![user.clone()], dup, None, vec![]).unwrap_err().contains("twice"));
        let mut deep = serde_json::json!(1);
        for _ in 0..40 {
            deep = serde_json::json!({ "x": deep });
        }
        assert!(check(vec![user.clone()], vec![f("a", deep)], None, vec![]).unwrap_err().contains("nested"));
        let big = Message::new(Role::User, "x".repeat(MAX_REQUEST_BYTES + 1));
        assert!(ok(vec![big]).unwrap_err().contains("over"));
    }

    #[test]
    fn missing_usage_is_estimated_never_zero() {
        let prompt = vec![Message::new(Role::User, "x".repeat(400))];
        let r = ChatResponse {
            message: Message::new(Role::Assistant, "y".repeat(41)),
            finish: FinishReason::Stop,
            usage: Usage::default(),
        };
        let u = with_usage(r, &prompt, None).usage;
        assert_eq!((u.prompt_tokens, u.completion_tokens, u.estimated), (100, 11, true));
    }
}
