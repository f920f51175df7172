//! The installed tools over the Model Context Protocol (the official Rust SDK, `rmcp`), on stdio or streamable
//! HTTP.
//!
//! The server has its own caller (its `--token`, or one minted for the `--allow-tool`s it was told to serve): what it
//! serves is what that token grants. On stdio, the client is the process that spawned the server and calls as the
//! server's caller. Over HTTP, every request carries a bearer token checked by [`super::mcp_auth`], and calls as that
//! token's agent, with the server's grants narrowed to the token's: a tool is listed and callable only if both
//! tokens grant it. `tools/list` offers those tools with the schemas their `describe()` gave and hints from their
//! side-effect class; `tools/call` goes through [`ToolHost::call`] exactly as an agent's call does (each call in a
//! fresh sandbox, or for a tool installed with `--reuse` in the instance kept for this session, recorded as `tool.called` and `tool.completed`/`tool.failed` events). At most `--max-concurrent`
//! calls run at once; a call beyond waits at most `--max-wait` for a slot, then fails. A failed call is a tool
//! result with `isError: true` and a one-line message, never a crash of the server.

use super::call::{Caller, Failure, ToolHost};
use super::mcp_auth::Client;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};

/// One MCP server: every client session shares the tool host, the server's caller and the call slots.
#[derive(Debug, Clone)]
pub struct McpServer {
    pub host: Arc<ToolHost>,
    /// The server's own caller (its token and grants): what it serves, and the client on stdio.
    pub caller: Caller,
    /// Fuel for each call.
    pub fuel: u64,
    /// Time for each call.
    pub timeout: Duration,
    /// With `--token` and `--allow-tool`: only these of the token's tools are served.
    pub served: Option<BTreeSet<String>>,
    /// Every request must carry an authenticated [`Client`] (HTTP, unless `--no-auth`): without one, nothing is
    /// listed or called.
    pub authenticated: bool,
    /// The session's kept instances of reusable tools (see [`super::reuse`]): one per stdio server, one per HTTP
    /// session; `None`: every call gets a fresh sandbox.
    pub kept: Option<Arc<super::reuse::KeptTools>>,
    pub slots: Arc<CallSlots>,
}

/// The cap on concurrent calls: `max` run at once; up to `max * QUEUE_PER_SLOT` more wait, each at most `max_wait`.
#[derive(Debug)]
pub struct CallSlots {
    semaphore: Semaphore,
    max: usize,
    max_wait: Duration,
    waiting: AtomicUsize,
}

/// How many calls may wait per slot; beyond, a call fails at once.
const QUEUE_PER_SLOT: usize = 8;

impl CallSlots {
    pub fn new(max: usize, max_wait: Duration) -> CallSlots {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        crate::sandbox::fds::plan(max);
        CallSlots { semaphore: Semaphore::new(max), max, max_wait, waiting: AtomicUsize::new(0) }
    }

    /// A slot, held for the call; or why none came.
    pub async fn acquire(&self) -> Result<SemaphorePermit<'_>, String> {
        if let Ok(permit) = self.semaphore.try_acquire() {
            return Ok(permit);
        }
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let ahead = self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        let busy = format!("server busy: {} tool calls at most run at once (--max-concurrent)", self.max);
        if ahead >= self.max.saturating_mul(QUEUE_PER_SLOT) {
            return Err(format!("{busy} and {ahead} are waiting; try again later"));
        }
        match tokio::time::timeout(self.max_wait, self.semaphore.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err("server shutting down".into()),
            Err(_) => Err(format!(
                "{busy}; none was free after waiting {} (--max-wait)",
                humantime::format_duration(self.max_wait)
            )),
        }
    }
}

impl McpServer {
    /// The client of a request: the authenticated one the HTTP gate attached, else (stdio, `--no-auth`) the
    /// server's own caller. Fails closed when authentication is on and the request carries none.
    fn client(&self, context: &RequestContext<RoleServer>) -> Result<Caller, ErrorData> {
        let attached = context
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Client>())
            .map(|c| c.0.as_ref().clone());
        match attached {
            Some(client) => Ok(client),
            None if !self.authenticated => Ok(self.caller.clone()),
            None => Err(ErrorData::invalid_request("no authenticated client (Authorization: Bearer TOKEN)", None)),
        }
    }

    /// Whether the server serves tool `name` (its own token grants it, and `--allow-tool` names it if given).
    fn serves(&self, name: &str) -> Result<(), Failure> {
        if self.served.as_ref().is_some_and(|s| !s.contains(name)) {
            return Err(Failure::Denied(format!("tool {name} is not served here (--allow-tool)")));
        }
        self.host.allowed(&self.caller, name)
    }
}

fn annotations(side_effect: &str) -> ToolAnnotations {
    let a = ToolAnnotations::new();
    match side_effect {
        "none" | "read-only" => a.read_only(true).destructive(false).idempotent(true).open_world(false),
        "idempotent" => a.read_only(false).destructive(false).idempotent(true).open_world(false),
        "external" => a.read_only(false).open_world(true),
        _ => a.read_only(false).destructive(true).open_world(true),
    }
}

impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("toka-host", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Tools run as WebAssembly components, each call in its own sandbox with the rights the server's \
                 capability token allows.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let client = self.client(&context)?;
        let tools = self
            .host
            .list_for(&client)
            .into_iter()
            .filter(|t| self.serves(&t.name).is_ok())
            .map(|t| {
                let input = t.spec.input_schema.as_object().cloned().unwrap_or_default();
                let mut tool = Tool::new(t.name.clone(), t.spec.description.clone(), Arc::new(input))
                    .with_annotations(annotations(&t.spec.side_effect));
                if let Some(output) = t.spec.output_schema.as_object() {
                    tool = tool.with_raw_output_schema(Arc::new(output.clone()));
                }
                tool
            })
            .collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let client = self.client(&context)?;
        let _slot = match self.slots.acquire().await {
            Ok(slot) => slot,
            Err(busy) => return Ok(CallToolResult::error(vec![ContentBlock::text(busy)]).into()),
        };
        let input = serde_json::Value::Object(request.arguments.unwrap_or_default()).to_string();
        // The call's time starts once it has a slot.
        let caller = Caller { deadline: crate::units::deadline_after(self.timeout), ..client };
        // What the server does not serve is refused (and recorded) as the client's call.
        let refusal = self.serves(&request.name).err();
        let span = tracing::info_span!("tool_call", tool = %request.name, agent = %caller.agent);
        let call = self.host.call_unless(&caller, &request.name, &input, self.fuel, refusal, self.kept.as_deref());
        let report = tracing::Instrument::instrument(call, span).await;
        // Per call: debug, so that a busy server's log (and its stderr pipe) stays quiet unless RUST_LOG asks.
        tracing::debug!(call_id = %report.call_id, tool = %report.tool, outcome = report.outcome.name(),
            fuel = report.fuel_consumed, wall_ms = report.wall.as_secs_f64() * 1000.0, "tool call ended");
        let result = match report.result {
            Ok(output) => match serde_json::from_str::<serde_json::Value>(&output) {
                Ok(value @ serde_json::Value::Object(_)) => CallToolResult::structured(value),
                Ok(_) | Err(_) => CallToolResult::success(vec![ContentBlock::text(output)]),
            },
            Err(failure) => CallToolResult::error(vec![ContentBlock::text(failure.message().to_string())]),
        };
        Ok(result.into())
    }
}
