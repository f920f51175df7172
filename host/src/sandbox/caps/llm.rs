//! `toka:agent/llm`: the per-sandbox state ([`LlmAccess`]) that the engine links. A guest's model calls go through
//! the [`ModelGateway`] its sandbox was given (none: every call is denied). Every failure is an error value; nothing
//! here traps the guest. Open streams are held here (at most [`MAX_OPEN_STREAMS`] at once), keyed by the handle's
//! representation; dropping one drops the gateway's stream, which abandons its call.

use super::BoxFuture;
use crate::bindings::CompletionStream;
use crate::bindings::agent::toka::agent::llm as wit;
use crate::sandbox::SandboxState;
use std::collections::HashMap;
use std::sync::Arc;
use wasmtime::component::{HasSelf, Linker, Resource};

/// Most streams one sandbox may hold open at once.
pub const MAX_OPEN_STREAMS: usize = 4;

/// What a sandbox's model calls go through; implemented above the sandbox (by the model gateway, for one caller).
pub trait ModelGateway: Send + Sync + std::fmt::Debug {
    /// One completion.
    fn chat(&self, request: wit::Request) -> BoxFuture<'_, Result<wit::Response, wit::LlmError>>;

    /// A completion as a stream of events.
    fn chat_stream(&self, request: wit::Request) -> BoxFuture<'_, Result<Box<dyn ModelStream>, wit::LlmError>>;
}

/// An open completion stream; dropping it before its end abandons the call.
pub trait ModelStream: Send {
    /// The next event; `Ok(None)` once the stream has ended.
    fn next(&mut self) -> BoxFuture<'_, Result<Option<wit::StreamEvent>, wit::LlmError>>;
}

/// One sandbox's access to models.
#[derive(Default)]
pub struct LlmAccess {
    /// `None`: the sandbox's guest may call no model.
    gateway: Option<Arc<dyn ModelGateway>>,
    streams: HashMap<u32, Box<dyn ModelStream>>,
    next_rep: u32,
}

impl std::fmt::Debug for LlmAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmAccess").field("open_streams", &self.streams.len()).finish_non_exhaustive()
    }
}

impl LlmAccess {
    pub fn new(gateway: Option<Arc<dyn ModelGateway>>) -> Self {
        LlmAccess { gateway, streams: HashMap::new(), next_rep: 0 }
    }

    fn gateway(&self) -> Result<Arc<dyn ModelGateway>, wit::LlmError> {
        self.gateway.clone().ok_or_else(|| wit::LlmError::Denied("this sandbox has no access to models".into()))
    }
}

impl wit::Host for LlmAccess {
    async fn chat(&mut self, request: wit::Request) -> Result<wit::Response, wit::LlmError> {
        let gateway = self.gateway()?;
        gateway.chat(request).await
    }

    async fn chat_stream(&mut self, request: wit::Request) -> Result<Resource<CompletionStream>, wit::LlmError> {
        let gateway = self.gateway()?;
        if self.streams.len() >= MAX_OPEN_STREAMS {
            return Err(wit::LlmError::InvalidRequest(format!(
                "{MAX_OPEN_STREAMS} streams are open already: drop one first"
            )));
        }
        let stream = gateway.chat_stream(request).await?;
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
        stream.next().await
    }

    async fn drop(&mut self, handle: Resource<CompletionStream>) -> wasmtime::Result<()> {
        // Dropping a stream before its end abandons its call; the gateway's stream records that when dropped.
        self.streams.remove(&handle.rep());
        Ok(())
    }
}

/// Links `toka:agent/llm`: each store's calls go to its own [`LlmAccess`].
pub fn add_to_linker(linker: &mut Linker<SandboxState>) -> wasmtime::Result<()> {
    wit::add_to_linker::<_, HasSelf<_>>(linker, |s: &mut SandboxState| &mut s.llm)
}
