//! The model gateway as a sandbox's `toka:agent/llm` sees it: a [`Session`] is the sandbox's
//! [`ModelGateway`], a [`Streaming`] its [`ModelStream`]. This turns WIT values into gateway requests and gateway
//! answers (and failures) into WIT values; the sandbox's own state ([`LlmAccess`], linked by the engine) holds the
//! open streams. Every failure is an error value; nothing here traps the guest.

use super::types::{self, Role};
use super::{Failure, Request, Session, Streaming};
use crate::bindings::agent::toka::agent::llm as wit;
use crate::sandbox::caps::BoxFuture;
use crate::sandbox::caps::llm::{ModelGateway, ModelStream};

// The handle type lives with the bindings and the per-sandbox state with the sandbox; both are named here too.
pub use crate::bindings::CompletionStream;
pub use crate::sandbox::caps::llm::LlmAccess;

fn role(r: wit::Role) -> Role {
    match r {
        wit::Role::System => Role::System,
        wit::Role::User => Role::User,
        wit::Role::Assistant => Role::Assistant,
        wit::Role::Tool => Role::Tool,
    }
}

fn message_in(m: wit::Message) -> types::Message {
    types::Message {
        role: role(m.role),
        content: m.content,
        tool_calls: m
            .tool_calls
            .into_iter()
            .map(|c| types::ToolCall { id: c.id, name: c.name, arguments: c.arguments })
            .collect(),
        tool_call_id: m.tool_call_id,
    }
}

fn message_out(m: types::Message) -> wit::Message {
    wit::Message {
        role: match m.role {
            Role::System => wit::Role::System,
            Role::User => wit::Role::User,
            Role::Assistant => wit::Role::Assistant,
            Role::Tool => wit::Role::Tool,
        },
        content: m.content,
        tool_calls: m
            .tool_calls
            .into_iter()
            .map(|c| wit::ToolCall { id: c.id, name: c.name, arguments: c.arguments })
            .collect(),
        tool_call_id: m.tool_call_id,
    }
}

fn request_in(r: wit::Request) -> Request {
    Request {
        model: r.model,
        messages: r.messages.into_iter().map(message_in).collect(),
        tools: r.tools.into_iter().map(|f| (f.name, f.description, f.parameters)).collect(),
        temperature: r.temperature,
        max_tokens: r.max_tokens,
        stop: r.stop,
    }
}

/// The response as the guest sees it: named by the model it asked for.
pub fn response_out(model: &str, r: types::ChatResponse) -> wit::Response {
    wit::Response {
        model: model.to_string(),
        message: message_out(r.message),
        finish_reason: match r.finish {
            types::FinishReason::Stop => wit::FinishReason::Stop,
            types::FinishReason::Length => wit::FinishReason::Length,
            types::FinishReason::ToolCalls => wit::FinishReason::ToolCalls,
            types::FinishReason::ContentFilter => wit::FinishReason::ContentFilter,
            types::FinishReason::Other => wit::FinishReason::Other,
        },
        usage: wit::Usage { prompt_tokens: r.usage.prompt_tokens, completion_tokens: r.usage.completion_tokens },
    }
}

fn error_out(f: Failure) -> wit::LlmError {
    match f {
        Failure::Denied(m) => wit::LlmError::Denied(m),
        Failure::InvalidRequest(m) => wit::LlmError::InvalidRequest(m),
        Failure::RateLimited(m) => wit::LlmError::RateLimited(m),
        Failure::OverBudget(m) => wit::LlmError::OverBudget(m),
        Failure::Timeout(m) => wit::LlmError::Timeout(m),
        Failure::Provider(m) => wit::LlmError::Provider(m),
    }
}

impl ModelGateway for Session {
    fn chat(&self, request: wit::Request) -> BoxFuture<'_, Result<wit::Response, wit::LlmError>> {
        Box::pin(async move {
            let model = request.model.clone();
            let response = self.gateway.chat(&self.caller, request_in(request)).await.map_err(error_out)?;
            Ok(response_out(&model, response))
        })
    }

    fn chat_stream(&self, request: wit::Request) -> BoxFuture<'_, Result<Box<dyn ModelStream>, wit::LlmError>> {
        Box::pin(async move {
            let stream = self.gateway.chat_stream(&self.caller, request_in(request)).await.map_err(error_out)?;
            Ok(Box::new(stream) as Box<dyn ModelStream>)
        })
    }
}

impl ModelStream for Streaming {
    fn next(&mut self) -> BoxFuture<'_, Result<Option<wit::StreamEvent>, wit::LlmError>> {
        Box::pin(async move {
            match Streaming::next(self).await.map_err(error_out)? {
                None => Ok(None),
                Some(types::StreamEvent::Delta(d)) => Ok(Some(wit::StreamEvent::Delta(d))),
                Some(types::StreamEvent::Done(r)) => Ok(Some(wit::StreamEvent::Done(response_out(&self.model, r)))),
            }
        })
    }
}
