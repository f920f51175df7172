//! The installed tools over the Model Context Protocol (the official Rust SDK, `rmcp`), on stdio or streamable
//! HTTP.
//!
//! `tools/list` offers the tools the server's token allows (`tool:NAME`), with the schemas their `describe()` gave
//! and hints from their side-effect class; `tools/call` goes through [`ToolHost::call`] exactly as an agent's call
//! does: the server's token bounds every caller (grants, tools, rate), each call runs in a fresh sandbox, and each is
//! recorded as `tool.called` and `tool.completed`/`tool.failed` events. A failed call is a tool result with
//! `isError: true` and a one-line message, never a crash of the server.

use super::call::{Caller, ToolHost};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use std::sync::Arc;

/// One MCP server: every client session shares the tool host and the caller (the server's token and grants).
#[derive(Debug, Clone)]
pub struct McpServer {
    pub host: Arc<ToolHost>,
    pub caller: Caller,
    /// Fuel for each call.
    pub fuel: u64,
    /// Time for each call.
    pub timeout: std::time::Duration,
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
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let tools = self
            .host
            .list_for(&self.caller)
            .into_iter()
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
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let input = serde_json::Value::Object(request.arguments.unwrap_or_default()).to_string();
        let caller = Caller { deadline: crate::units::deadline_after(self.timeout), ..self.caller.clone() };
        let report = self.host.call(&caller, &request.name, &input, self.fuel).await;
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
