//! The host side of `toka:agent/llm`: the per-sandbox state ([`LlmAccess`]) that the engine links, turning WIT
//! values into gateway requests and gateway answers (and failures) into WIT values. Every failure is an error value;
//! nothing here traps the guest. Open streams are held here (at most [`super::MAX_OPEN_STREAMS`] at once), keyed by
//! the handle's representation; dropping one abandons its call, which the gateway records.

use super::types::{self, Role};
use super::{Failure, Request, Session, Streaming};
use crate::bindings::agent::toka::agent::llm as wit;
use std::collections::HashMap;
use std::sync::Arc;
use wasmtime::component::Resource;

/// The resource type of `completion-stream` handles (the host keeps the streams themselves).
pub struct CompletionStream;

/// One sandbox's access to models.
#[derive(Default)]
pub struct LlmAccess {
    /// `None`: the sandbox's guest may call no model.
    session: Option<Arc<Session>>,
    streams: HashMap<u32, Streaming>,
    next_rep: u32,
}

impl std::fmt::Debug for LlmAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmAccess").field("open_streams", &self.streams.len()).finish_non_exhaustive()
    }
}

impl LlmAccess {
    pub fn new(session: Option<Arc<Session>>) -> Self {
        LlmAccess { session, streams: HashMap::new(), next_rep: 0 }
    }

    fn session(&self) -> Result<Arc<Session>, wit::LlmError> {
        self.session.clone().ok_or_else(|| wit::LlmError::Denied("this sandbox has no access to models".into()))
    }
}

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

impl wit::Host for LlmAccess {
    async fn chat(&mut self, request: wit::Request) -> Result<wit::Response, wit::LlmError> {
        let session = self.session()?;
        let model = request.model.clone();
        let response = session.gateway.chat(&session.caller, request_in(request)).await.map_err(error_out)?;
        Ok(response_out(&model, response))
    }

    async fn chat_stream(&mut self, request: wit::Request) -> Result<Resource<CompletionStream>, wit::LlmError> {
        let session = self.session()?;
        if self.streams.len() >= super::MAX_OPEN_STREAMS {
            return Err(wit::LlmError::InvalidRequest(format!(
                "{} streams are open already: drop one first",
                super::MAX_OPEN_STREAMS
            )));
        }
        let stream = session.gateway.chat_stream(&session.caller, request_in(request)).await.map_err(error_out)?;
        let rep = self.next_rep;
        self.next_rep = self.next_rep.wrapping_add(1);
        self.streams.insert(rep, stream);
        Ok(Resource::new_own(rep))
    }
}

impl wit::HostCompletionStream for LlmAccess {
    async fn next(&mut self, handle: Resource<CompletionStream>) -> Result<Option<wit::StreamEvent>, wit::LlmError> {
        let Some(stream) = self.streams.get_mut(&handle.rep()) else {
            return Ok(None);
        };
        match stream.next().await.map_err(error_out)? {
            None => Ok(None),
            Some(types::StreamEvent::Delta(d)) => Ok(Some(wit::StreamEvent::Delta(d))),
            Some(types::StreamEvent::Done(r)) => Ok(Some(wit::StreamEvent::Done(response_out(&stream.model, r)))),
        }
    }

    async fn drop(&mut self, handle: Resource<CompletionStream>) -> wasmtime::Result<()> {
        // Dropping a stream before its end abandons its call; `Streaming`'s own drop records that.
        self.streams.remove(&handle.rep());
        Ok(())
    }
}

/// Links `toka:agent/llm` into the engine's linker: each store's calls go to its own [`LlmAccess`].
pub fn add_to_linker(linker: &mut wasmtime::component::Linker<crate::sandbox::SandboxState>) -> wasmtime::Result<()> {
    wit::add_to_linker::<_, wasmtime::component::HasSelf<_>>(linker, |s: &mut crate::sandbox::SandboxState| &mut s.llm)
}
