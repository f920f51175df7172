//! The host interfaces whose work is done above the sandbox: `toka:agent/tools` (a tool runs in a sandbox of its
//! own, built by the tool host), `toka:agent/llm` (the model gateway) and `toka:agent/spawn` (a child agent runs as
//! a run of its own, started by the host). Each one links itself into the engine's linker and reaches upward only
//! through a trait it defines here ([`tools::ToolBroker`], [`llm::ModelGateway`], [`spawn::Spawner`]), which the
//! higher layer implements and hands to the sandbox in its [`super::RunContext`].
//!
//! This module must never import what implements those traits (a run, the tool host, the gateway): the sandbox
//! sits below them.

pub mod llm;
pub mod spawn;
pub mod tools;

use std::future::Future;
use std::pin::Pin;

/// A boxed future that can cross threads, as a trait object's async method returns it.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
