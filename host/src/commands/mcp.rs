//! `toka-host mcp`: serve the installed tools to LLM clients over MCP, on stdio (default) or streamable HTTP.

use crate::commands::tool::CallerArgs;
use crate::error::RunError;
use crate::runtime::{Host, HostOptions};
use crate::tools::mcp::McpServer;
use clap::Args;
use std::net::SocketAddr;

/// Serve the installed tools over the Model Context Protocol.
///
/// The server's rights are those of its token (`--token`) and grant flags: clients can list and call only the
/// tools the token grants (`tool:NAME`), and each call's sandbox gets at most the server's grants. Without a token,
/// the flags are minted into a token for the agent `operator` that grants every installed tool. Logs go to stderr;
/// stdout carries only the protocol.
#[derive(Debug, Args)]
pub struct McpCommand {
    /// Serve streamable HTTP at ADDR (e.g. 127.0.0.1:8080; path /mcp) instead of stdio.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    #[command(flatten)]
    pub caller: CallerArgs,
}

impl McpCommand {
    pub fn execute(self, home: &crate::home::Home) -> i32 {
        let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("toka-host: cannot start the async runtime: {e}");
                return 79;
            }
        };
        match rt.block_on(self.serve(home)) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("toka-host: {e}");
                e.outcome().exit_code()
            }
        }
    }

    async fn serve(self, home: &crate::home::Home) -> Result<(), RunError> {
        use rmcp::ServiceExt;
        let host = Host::open(home.clone(), HostOptions::default())?;
        let installed: Vec<String> = host
            .tools()
            .registry
            .list()
            .map_err(|e| RunError::host(e.to_string()))?
            .into_iter()
            .map(|t| t.name)
            .collect();
        // The server lives for long: its own calls get their deadline per call, not from startup.
        // Without --token, the operator's flags are minted into a token that lives as long as a server may.
        let mut caller = self.caller.caller(&host, &installed, std::time::Duration::from_secs(365 * 86_400))?;
        caller.deadline = std::time::Instant::now();
        let server =
            McpServer { host: host.tools().clone(), caller, fuel: self.caller.fuel, timeout: self.caller.timeout };
        match self.http {
            None => {
                let running =
                    server.serve(rmcp::transport::stdio()).await.map_err(|e| RunError::host(format!("mcp: {e}")))?;
                running.waiting().await.map_err(|e| RunError::host(format!("mcp: {e}")))?;
                Ok(())
            }
            Some(addr) => {
                use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
                use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| RunError::host(format!("mcp: cannot listen on {addr}: {e}")))?;
                let local = listener.local_addr().map_err(|e| RunError::host(e.to_string()))?;
                let service: StreamableHttpService<McpServer, LocalSessionManager> = StreamableHttpService::new(
                    move || Ok(server.clone()),
                    Default::default(),
                    StreamableHttpServerConfig::default(),
                );
                let router = axum::Router::new().nest_service("/mcp", service);
                eprintln!("toka-host: serving MCP on http://{local}/mcp");
                axum::serve(listener, router).await.map_err(|e| RunError::host(format!("mcp: {e}")))
            }
        }
    }
}
