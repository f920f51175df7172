//! Model calls through the host (`toka:agent/llm`).
//!
//! The host holds the providers' keys (an agent never sees one), checks the run's token for `llm:MODEL` at every
//! call, counts each call against the agent's rate limit and the run's (and the agent's) budget of model tokens,
//! and records it in the event log. Every refusal or failure is an [`LlmError`] value, never a trap.
//!
//! ```no_run
//! use toka_sdk::llm::{self, Chat, Message};
//!
//! // One call.
//! let reply = llm::chat("gpt-4o-mini", vec![Message::user("Say hello.")])?;
//! toka_sdk::info!("the model said {}", reply.message.content);
//!
//! // With a builder: a system prompt, the host's tools as functions, streamed.
//! let chat = Chat::new("gpt-4o-mini").system("Be brief.").user("What is in /data?").tools_from_host();
//! for event in chat.stream()? {
//!     match event? {
//!         llm::StreamEvent::Delta(text) => toka_sdk::info!("{text}"),
//!         llm::StreamEvent::Done(response) => toka_sdk::info!("{} tokens", response.usage.completion_tokens),
//!     }
//! }
//! # Ok::<(), toka_sdk::llm::LlmError>(())
//! ```

use crate::bindings::toka::agent::llm as host;
use crate::tools::ToolSpec;
pub use host::{
    CompletionStream, FinishReason, Function, LlmError, Message, Request, Response, Role, StreamEvent, ToolCall, Usage,
};

impl Message {
    fn of(role: Role, content: impl Into<String>) -> Message {
        Message { role, content: content.into(), tool_calls: Vec::new(), tool_call_id: None }
    }

    pub fn system(content: impl Into<String>) -> Message {
        Message::of(Role::System, content)
    }

    pub fn user(content: impl Into<String>) -> Message {
        Message::of(Role::User, content)
    }

    pub fn assistant(content: impl Into<String>) -> Message {
        Message::of(Role::Assistant, content)
    }

    /// The result of the tool call `call_id` (a [`ToolCall::id`]).
    pub fn tool(call_id: impl Into<String>, content: impl Into<String>) -> Message {
        Message { tool_call_id: Some(call_id.into()), ..Message::of(Role::Tool, content) }
    }
}

// wit-bindgen implements `Display` (as `Debug`) and `Error` for the generated `LlmError`; these read better.
impl LlmError {
    /// The host's message, without the kind.
    pub fn message(&self) -> &str {
        match self {
            LlmError::Denied(m)
            | LlmError::InvalidRequest(m)
            | LlmError::RateLimited(m)
            | LlmError::OverBudget(m)
            | LlmError::Timeout(m)
            | LlmError::Provider(m) => m,
        }
    }

    /// The kind, in words: `denied`, `invalid request`, `rate limited`, `over budget`, `timeout`, `provider`.
    pub fn kind(&self) -> &'static str {
        match self {
            LlmError::Denied(_) => "denied",
            LlmError::InvalidRequest(_) => "invalid request",
            LlmError::RateLimited(_) => "rate limited",
            LlmError::OverBudget(_) => "over budget",
            LlmError::Timeout(_) => "timeout",
            LlmError::Provider(_) => "provider",
        }
    }

    /// `KIND: MESSAGE`, one line (`rate limited: the provider refused: HTTP 429: ...`).
    pub fn describe(&self) -> String {
        format!("{}: {}", self.kind(), self.message())
    }
}

/// One completion of `messages` by `model`.
pub fn chat(model: &str, messages: Vec<Message>) -> Result<Response, LlmError> {
    Chat::new(model).messages(messages).send()
}

/// A tool of the host (from [`crate::tools::list`]) as a function a model may call: the tool's name, description
/// and input schema. A tool whose name is not a valid function name (`.` is not allowed) is better left out.
pub fn function_for(spec: &ToolSpec) -> Function {
    Function { name: spec.name.clone(), description: spec.description.clone(), parameters: spec.input_schema.clone() }
}

/// A request being built.
#[derive(Debug, Clone)]
pub struct Chat {
    request: Request,
}

impl Chat {
    pub fn new(model: &str) -> Chat {
        Chat {
            request: Request {
                model: model.to_string(),
                messages: Vec::new(),
                tools: Vec::new(),
                temperature: None,
                max_tokens: None,
                stop: Vec::new(),
            },
        }
    }

    pub fn system(self, text: impl Into<String>) -> Chat {
        self.message(Message::system(text))
    }

    pub fn user(self, text: impl Into<String>) -> Chat {
        self.message(Message::user(text))
    }

    pub fn message(mut self, message: Message) -> Chat {
        self.request.messages.push(message);
        self
    }

    pub fn messages(mut self, messages: impl IntoIterator<Item = Message>) -> Chat {
        self.request.messages.extend(messages);
        self
    }

    /// Offers a function; `parameters` is its arguments' JSON Schema.
    pub fn tool(mut self, name: &str, description: &str, parameters: &serde_json::Value) -> Chat {
        self.request.tools.push(Function {
            name: name.into(),
            description: description.into(),
            parameters: parameters.to_string(),
        });
        self
    }

    /// Offers every tool this run may call through the host ([`crate::tools::list`]) whose name is a valid
    /// function name.
    pub fn tools_from_host(mut self) -> Chat {
        let valid = |n: &str| {
            !n.is_empty() && n.len() <= 64 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        self.request.tools.extend(crate::tools::list().iter().filter(|t| valid(&t.name)).map(function_for));
        self
    }

    pub fn temperature(mut self, t: f32) -> Chat {
        self.request.temperature = Some(t);
        self
    }

    pub fn max_tokens(mut self, n: u32) -> Chat {
        self.request.max_tokens = Some(n);
        self
    }

    pub fn stop(mut self, sequence: impl Into<String>) -> Chat {
        self.request.stop.push(sequence.into());
        self
    }

    /// The conversation so far.
    pub fn history(&self) -> &[Message] {
        &self.request.messages
    }

    pub fn request(&self) -> &Request {
        &self.request
    }

    /// One whole completion.
    pub fn send(&self) -> Result<Response, LlmError> {
        host::chat(&self.request)
    }

    /// One completion, as it is generated.
    pub fn stream(&self) -> Result<Stream, LlmError> {
        host::chat_stream(&self.request).map(|inner| Stream { inner, ended: false })
    }
}

/// A completion being streamed: an iterator of [`StreamEvent`]s, the last one [`StreamEvent::Done`]. Dropping it
/// early abandons the call (the host records that).
#[derive(Debug)]
pub struct Stream {
    inner: CompletionStream,
    ended: bool,
}

impl Iterator for Stream {
    type Item = Result<StreamEvent, LlmError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.ended {
            return None;
        }
        let item = self.inner.next().transpose();
        if !matches!(item, Some(Ok(StreamEvent::Delta(_)))) {
            self.ended = true;
        }
        item
    }
}
