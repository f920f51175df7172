//! `toka-host mcp`: serve installed tools to LLM clients over MCP, on stdio (default) or streamable HTTP.

use crate::commands::tool::CallerArgs;
use crate::error::RunError;
use crate::runtime::{Host, HostOptions};
use crate::tools::mcp::{CallSlots, McpServer};
use crate::tools::mcp_auth::{BearerAuth, HttpGate};
use crate::units::parse_duration;
use clap::Args;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

// (Not a doc comment: the subcommand's `--help` text is its variant's in `commands::Command`.)
// Serve installed tools over the Model Context Protocol.
//
// The server's rights are those of its token (`--token`) and grant flags: it serves only the tools that token
// grants (`tool:NAME`), narrowed to `--allow-tool` if given, and each call's sandbox gets at most the server's
// grants. Without `--token`, the tools to serve must be named (`--allow-tool`, repeatable): they and the grant flags
// are minted into a token for the agent `operator` living `--ttl`. Over HTTP, every request needs
// `Authorization: Bearer TOKEN` (a token of this home's root keys) and calls as that token's agent, with what both
// tokens allow; `Host` must name this server and a browser `Origin` must be listed. Logs go to stderr; stdout
// carries only the protocol.
#[derive(Debug, Args)]
pub struct McpCommand {
    /// Serve streamable HTTP at ADDR (e.g. 127.0.0.1:8080; path /mcp) instead of stdio.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,

    /// Serve the installed tool NAME. Repeatable. Required without --token; with it, narrows what the token grants.
    #[arg(long = "allow-tool", value_name = "NAME")]
    pub tools: Vec<String>,

    /// Lifetime of the token minted for the server without --token; when it ends, every call is refused.
    #[arg(long, value_name = "DURATION", default_value = "8h", value_parser = parse_duration, conflicts_with = "token")]
    pub ttl: Duration,

    /// At most N tool calls run at once; more wait (see --max-wait) [default: the number of CPUs].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_concurrent: Option<u32>,

    /// How long a call waits for one of the --max-concurrent slots before it fails as busy.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub max_wait: Duration,

    /// HTTP: accept browser requests from ORIGIN (scheme://host[:port]). Repeatable. Without it, any request that
    /// carries an Origin header is refused (403).
    #[arg(long = "allow-origin", value_name = "ORIGIN", requires = "http")]
    pub origins: Vec<String>,

    /// HTTP: also accept requests whose Host header is HOST[:PORT] (the bound address, and localhost on loopback,
    /// always are). Required when bound to a wildcard address such as 0.0.0.0. Repeatable.
    #[arg(long = "allow-host", value_name = "HOST[:PORT]", requires = "http")]
    pub hosts: Vec<String>,

    /// HTTP on a loopback address only: no bearer token; every request calls as the server's own token. Refused
    /// for any other address.
    #[arg(long, requires = "http")]
    pub no_auth: bool,

    /// Log format on stderr: `text` or `json` (one JSON object per line); stdout carries only the protocol.
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// With --http: the bounds on client connections.
    #[command(flatten)]
    pub connections: crate::commands::serve::ConnectionArgs,

    #[command(flatten)]
    pub caller: CallerArgs,
}

impl McpCommand {
    pub fn execute(self, home: &crate::home::Home) -> i32 {
        let _telemetry = crate::commands::init_logging(&self.log_format);
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

    /// Everything that can refuse to start, before the home is opened.
    fn check_flags(&self) -> Result<(), RunError> {
        if self.caller.token.is_none() && self.tools.is_empty() {
            return Err(RunError::InvalidInput(
                "mcp serves only what it is told to: name each tool with --allow-tool NAME (repeatable), or pass \
                 the server's --token"
                    .into(),
            ));
        }
        if let Some(addr) = self.http
            && self.no_auth
            && !addr.ip().is_loopback()
        {
            return Err(RunError::InvalidInput(format!(
                "--no-auth serves anyone who can connect: it is allowed on a loopback address only, not {addr}"
            )));
        }
        if self.http.is_none() && self.connections.given() {
            return Err(RunError::InvalidInput(
                "--max-connections, --max-connections-per-ip and --header-timeout bound --http's clients; stdio has                  one"
                .into(),
            ));
        }
        for tool in &self.tools {
            crate::tools::check_name(tool).map_err(RunError::InvalidInput)?;
        }
        Ok(())
    }

    async fn serve(self, home: &crate::home::Home) -> Result<(), RunError> {
        use rmcp::ServiceExt;
        self.check_flags()?;
        // A tool's first compile is said in the log (stdout is the protocol's).
        let options = HostOptions { progress: Some(crate::progress::Delayed::log()), ..HostOptions::default() };
        let host = Host::open(home.clone(), options)?;
        let installed: Vec<String> = host
            .tools()
            .registry
            .list()
            .map_err(|e| RunError::host(e.to_string()))?
            .into_iter()
            .map(|t| t.name)
            .collect();
        if let Some(missing) = self.tools.iter().find(|t| !installed.contains(t)) {
            return Err(RunError::InvalidInput(format!(
                "tool {missing} is not installed (installed: {})",
                if installed.is_empty() { "none".to_string() } else { installed.join(", ") }
            )));
        }
        // Without --token, the named tools and the grant flags are minted into the server's token, living --ttl.
        let mut caller = self.caller.caller(&host, &self.tools, self.ttl)?;
        // The server's own calls get their deadline per call, not from startup.
        caller.deadline = std::time::Instant::now();
        let served =
            (self.caller.token.is_some() && !self.tools.is_empty()).then(|| self.tools.iter().cloned().collect());
        let mut server = McpServer {
            host: host.tools().clone(),
            caller: caller.clone(),
            fuel: self.caller.fuel,
            timeout: self.caller.timeout,
            served,
            authenticated: false,
            kept: None,
            slots: Arc::new(CallSlots::new(
                self.max_concurrent.map_or_else(default_max_concurrent, |n| n as usize),
                self.max_wait,
            )),
        };
        let Some(addr) = self.http else {
            // On stdio the server has one client, its parent process, for its whole life: one caller.
            server.kept = Some(Arc::new(host.tools().kept_tools()));
            let running =
                server.serve(rmcp::transport::stdio()).await.map_err(|e| RunError::host(format!("mcp: {e}")))?;
            running.waiting().await.map_err(|e| RunError::host(format!("mcp: {e}")))?;
            return Ok(());
        };

        use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
        use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| RunError::host(format!("mcp: cannot listen on {addr}: {e}")))?;
        let local = listener.local_addr().map_err(|e| RunError::host(e.to_string()))?;
        let auth = (!self.no_auth).then(|| BearerAuth {
            home: host.home().dir.clone(),
            db: host.db().clone(),
            server: caller,
            limits: crate::token::TokenLimits {
                fuel: self.caller.fuel,
                memory: self.caller.max_memory,
                timeout_ms: u64::try_from(self.caller.timeout.as_millis()).unwrap_or(u64::MAX),
            },
        });
        server.authenticated = auth.is_some();
        let gate = HttpGate::new(local, &self.hosts, &self.origins, auth).map_err(RunError::InvalidInput)?;
        let hosts: Vec<String> = gate.hosts().cloned().collect();
        // The gate checks Host and Origin itself (one rule, tested, with one-line JSON refusals), so rmcp's own
        // checks, whose defaults differ, are turned off behind it.
        let config = StreamableHttpServerConfig::default().disable_allowed_hosts().disable_allowed_origins();
        let service: StreamableHttpService<McpServer, LocalSessionManager> = StreamableHttpService::new(
            // Each MCP session is its own caller, with its own kept instances (each also checked against the
            // token that made it: see `reuse::KeptTools::take`).
            move || Ok(McpServer { kept: Some(Arc::new(server.host.kept_tools())), ..server.clone() }),
            Default::default(),
            config,
        );
        let router = axum::Router::new()
            .nest_service("/mcp", service)
            .layer(axum::middleware::from_fn_with_state(Arc::new(gate), crate::tools::mcp_auth::gate));
        eprintln!("toka-host: serving MCP on http://{local}/mcp");
        if self.no_auth {
            eprintln!("toka-host: --no-auth: no bearer token asked; Host must be {}", hosts.join(" or "));
        } else {
            eprintln!(
                "toka-host: every request needs `Authorization: Bearer TOKEN`; Host must be {}",
                hosts.join(" or ")
            );
        }
        let limits = self.connections.limits();
        crate::http::serve(listener, router, limits, std::future::pending(), Duration::ZERO)
            .await
            .map_err(|e| RunError::host(format!("mcp: {e}")))
    }
}

/// One call per CPU: a guest runs on one of the runtime's worker threads (one per CPU) until it returns or is
/// stopped, so calls beyond that would only wait for a thread while their own deadlines run, and stall the server's
/// protocol handling meanwhile; queued on the slots instead, they wait with a bound and fail with a clear error.
fn default_max_concurrent() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}
