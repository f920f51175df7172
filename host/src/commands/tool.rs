//! `toka-host tool`: install, list, describe, remove and call tools.

use crate::error::{Outcome, RunError};
use crate::grants;
use crate::home::Home;
use crate::runtime::{Host, HostOptions};
use crate::tools::call::Caller;
use crate::tools::registry::Registry;
use crate::units::{parse_duration, parse_size};
use clap::{Args, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// `println!` that ignores a closed stdout (`tool list | head`): nothing useful is left to do about it.
macro_rules! out {
    ($($arg:tt)*) => {{
        let mut stdout = std::io::stdout().lock();
        drop(writeln!(stdout, $($arg)*));
    }};
}

#[derive(Debug, Args)]
pub struct ToolCommand {
    #[command(subcommand)]
    pub action: ToolAction,
}

// (Not a doc comment: flattened into subcommands, whose `--help` text is their variant's.)
// The rights and limits a caller brings to a tool call (`tool call`, `mcp`).
#[derive(Debug, Clone, Args)]
pub struct CallerArgs {
    #[command(flatten)]
    pub grants: crate::commands::GrantFlags,
    /// The capability token of the caller (a file, `-` for stdin, or the base64 itself); it must grant `tool:NAME`
    /// for each tool called and cover every grant above. Without it, the flags are minted into a short-lived token
    /// for the agent `operator` that also grants the tools called.
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Fuel for each call (about one unit per instruction), or `unlimited`.
    #[arg(long, value_name = "N", default_value = "10000000000", value_parser = crate::units::parse_fuel)]
    pub fuel: u64,
    /// Wall-clock limit of each call, e.g. 500ms, 30s, 2m.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Cap on each call's total linear memory, e.g. 64MiB (the same default as `run`).
    #[arg(long, value_name = "SIZE", default_value = "512MiB", value_parser = parse_size)]
    pub max_memory: u64,
}

#[derive(Debug, Subcommand)]
pub enum ToolAction {
    /// Install a tool component (it is asked to describe itself, in a sandbox with no rights).
    Add {
        /// The tool component (world toka:agent/tool).
        path: PathBuf,
        /// Install under this name instead of the one its describe() gives.
        #[arg(long)]
        name: Option<String>,
        /// Reuse mode: each caller (a run, an MCP session) keeps one instance of the tool for all its calls, so a
        /// call skips building a sandbox; another caller never gets it. Only for a tool whose describe() declares
        /// side-effect `none`; refused otherwise.
        #[arg(long)]
        reuse: bool,
    },
    /// The installed tools.
    List {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A tool's description: version, schemas, side-effect class, declared grants, digest.
    Describe {
        /// The installed tool's name (`toka-host tool list`).
        name: String,
    },
    /// Uninstall a tool.
    Remove {
        /// The installed tool's name.
        name: String,
    },
    /// Call a tool once, in its own sandbox, with the caller's grants and token; prints its JSON output.
    Call {
        /// The installed tool's name.
        name: String,
        /// The tool's input, as JSON.
        #[arg(long, value_name = "JSON", default_value = "{}")]
        input: String,
        #[command(flatten)]
        caller: CallerArgs,
        /// Print a JSON report (outcome, output or error, fuel, wall time) instead of the output.
        #[arg(long)]
        json: bool,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime, RunError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::host(format!("cannot start the async runtime: {e}")))
}

impl CallerArgs {
    /// The caller of `tools`: its grants checked on the host, authorized by its token (or, without one, a token
    /// minted from these flags for the agent `operator` with `tool:NAME` for each of `tools`).
    pub fn caller(&self, host: &Host, tools: &[String], local_ttl: Duration) -> Result<Caller, RunError> {
        let mut authorized = host.authorize_grants(&self.grants.request(false, grants::StateGrant::None))?;
        let token_text = self.token.as_deref().map(crate::commands::token::read_token).transpose();
        let token_text = token_text.map_err(crate::commands::run::token_arg_error)?;
        // With a token, the caller is the token's own agent; without one, the local operator.
        let agent = match &token_text {
            Some(text) => {
                let keys = crate::token::keys::KeyStore::load(&host.home().dir)
                    .map_err(|e| RunError::TokenRefused(crate::error::one_line(&e.to_string())))?;
                let verified = crate::token::cache::global()
                    .verify(&keys, text, std::time::SystemTime::now())
                    .map_err(|e| RunError::TokenRefused(crate::error::one_line(&e.to_string())))?;
                verified.agent.clone().unwrap_or_default()
            }
            None => "operator".to_string(),
        };
        let limits = crate::run::Limits {
            fuel: self.fuel,
            timeout: self.timeout,
            max_memory: self.max_memory,
            ..crate::run::Limits::default()
        };
        let mut run_request = crate::commands::run::token_request(&agent, &self.grants.net, &authorized, &limits, None);
        if token_text.is_none() {
            for t in tools {
                run_request.grants.push(crate::token::Grant { kind: "tool".into(), value: t.clone(), mode: "".into() });
            }
        }
        let authorization = host.authorize_token(token_text.as_deref(), &run_request, local_ttl)?;
        authorized.token_id = authorization.token_id.clone();
        Ok(Caller {
            agent,
            run_id: None,
            token_id: authorization.token_id,
            token: authorization.token,
            grants: authorized,
            rate: authorization.rate,
            depth: 0,
            deadline: crate::units::deadline_after(self.timeout),
            max_memory: self.max_memory,
            component: None,
            plugin: None,
            budget: None,
            cancel: None,
            llm: None,
        })
    }
}

impl ToolCommand {
    pub fn execute(self, home: &Home) -> i32 {
        match self.run(home) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("toka-host: {e}");
                e.outcome().exit_code()
            }
        }
    }

    fn run(self, home: &Home) -> Result<i32, RunError> {
        let registry = Registry::open(&home.dir);
        let io = |e: crate::tools::registry::RegistryError| match e {
            crate::tools::registry::RegistryError::Unknown(_) => RunError::FileNotFound { path: e.to_string() },
            e => RunError::host(e.to_string()),
        };
        match self.action {
            ToolAction::Add { path, name, reuse } => {
                let host = Host::open(home.clone(), HostOptions::default())?;
                let (bytes, spec) = runtime()?.block_on(host.tools().describe_file(&path))?;
                let name = name.unwrap_or_else(|| spec.name.clone());
                crate::tools::check_name(&name).map_err(RunError::InvalidInput)?;
                let installed = if reuse {
                    registry.add_reusable(&name, &bytes, spec).map_err(|e| match e {
                        crate::tools::registry::RegistryError::NotReusable(m) => RunError::InvalidInput(m),
                        e => io(e),
                    })?
                } else {
                    registry.add(&name, &bytes, spec).map_err(io)?
                };
                out!(
                    "installed tool {} {} ({}{}, sha256 {})",
                    installed.name,
                    installed.spec.version,
                    installed.spec.side_effect,
                    if installed.reuse { ", reused per caller" } else { "" },
                    &installed.sha256[..16]
                );
                Ok(0)
            }
            ToolAction::List { json } => {
                let tools = registry.list().map_err(io)?;
                if json {
                    out!("{}", serde_json::json!(tools));
                } else if tools.is_empty() {
                    out!("no tools installed (toka-host tool add PATH)");
                } else {
                    out!("{:<16} {:<8} {:<11} {:<24} DESCRIPTION", "NAME", "VERSION", "SIDE-EFFECT", "GRANTS");
                    for t in tools {
                        let grants = if t.spec.grants.is_empty() { "-".into() } else { t.spec.grants.join(",") };
                        out!(
                            "{:<16} {:<8} {:<11} {:<24} {}",
                            t.name,
                            t.spec.version,
                            t.spec.side_effect,
                            grants,
                            t.spec.description
                        );
                    }
                }
                Ok(0)
            }
            ToolAction::Describe { name } => {
                let t = registry.get(&name).map_err(io)?;
                out!("{:#}", serde_json::json!(t));
                Ok(0)
            }
            ToolAction::Remove { name } => {
                let t = registry.remove(&name).map_err(io)?;
                out!("removed tool {}", t.name);
                Ok(0)
            }
            ToolAction::Call { name, input, caller, json } => {
                // A tool's first compile says so on stderr, as a run's does.
                let options =
                    HostOptions { progress: Some(crate::progress::Delayed::console()), ..HostOptions::default() };
                let host = Host::open(home.clone(), options)?;
                let fuel = caller.fuel;
                let caller = caller.caller(&host, std::slice::from_ref(&name), crate::token::LOCAL_TTL)?;
                let report = runtime()?.block_on(host.tools().call(&caller, &name, &input, fuel));
                let code = if report.result.is_ok() { 0 } else { report.outcome.exit_code() };
                if json {
                    let value = serde_json::json!({
                        "call_id": report.call_id,
                        "tool": report.tool,
                        "outcome": report.outcome,
                        "exit_code": code,
                        "output": report.result.as_ref().ok().and_then(|o| serde_json::from_str::<serde_json::Value>(o).ok()),
                        "error": report.result.as_ref().err().map(|f| f.message().to_string()),
                        "fuel_consumed": report.fuel_consumed,
                        "wall_time_ms": report.wall.as_secs_f64() * 1e3,
                    });
                    let mut out = std::io::stdout().lock();
                    drop(writeln!(out, "{value:#}"));
                } else {
                    match &report.result {
                        Ok(output) => out!("{output}"),
                        Err(f) => eprintln!("toka-host: {}", f.message()),
                    }
                }
                Ok(if report.outcome == Outcome::Success { 0 } else { code })
            }
        }
    }
}
