//! The `toka-host` command line: one file per subcommand, each a `clap` type with an `execute` method.

pub mod events;
pub mod key;
pub mod mcp;
pub mod run;
pub mod runs;
pub mod state;
pub mod token;
pub mod tool;

use crate::grants::{DirGrant, EnvGrant, GrantRequest, NetGrant, StateGrant};
use clap::{Args, Parser, Subcommand};

/// The grant flags of everything that runs a guest (`run`, `tool call`, `mcp`). A tool called with them gets only
/// those it declares a need for.
#[derive(Debug, Clone, Default, Args)]
pub struct GrantFlags {
    /// Grant a host directory: HOST[::GUEST][:ro]. Read-write unless `:ro`. Repeatable.
    #[arg(long = "dir", value_name = "HOST[::GUEST][:ro]", value_parser = DirGrant::parse)]
    pub dirs: Vec<DirGrant>,

    /// Grant an environment variable: NAME=VALUE, or NAME to pass the host's value. Repeatable.
    #[arg(long = "env", value_name = "NAME[=VALUE]", value_parser = EnvGrant::parse)]
    pub env: Vec<EnvGrant>,

    /// Allow TCP connections and UDP traffic to HOST:PORT (and nothing else). Repeatable.
    #[arg(long = "allow-net", value_name = "HOST:PORT", value_parser = NetGrant::parse)]
    pub net: Vec<NetGrant>,
}

impl GrantFlags {
    /// The grant request these flags make, with the rights only some commands offer.
    pub fn request(&self, inherit_stdin: bool, state: StateGrant) -> GrantRequest {
        GrantRequest { dirs: self.dirs.clone(), env: self.env.clone(), net: self.net.clone(), inherit_stdin, state }
    }
}

/// toka-host: run AI agents and tools as WebAssembly components in a deny-by-default sandbox.
#[derive(Debug, Parser)]
#[command(name = "toka-host", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an agent component, a wasi:cli/command component, or a WASI preview 1 module.
    Run(run::RunCommand),
    /// Show, follow or verify the event log.
    Events(events::EventsCommand),
    /// Recent runs with outcome, fuel and wall time.
    Runs(runs::RunsCommand),
    /// Read or write agents' persistent state (operators).
    State(state::StateCommand),
    /// Root keys that sign capability tokens: init, rotate, list, retire.
    Key(key::KeyCommand),
    /// Capability tokens: mint, attenuate, inspect, revoke.
    Token(token::TokenCommand),
    /// Tools: add, list, describe, remove, call.
    Tool(tool::ToolCommand),
    /// Serve the installed tools to LLM clients over MCP (stdio or streamable HTTP).
    Mcp(mcp::McpCommand),
}

impl Cli {
    /// Runs the chosen subcommand and returns the process exit code.
    pub fn execute(self) -> i32 {
        match self.command {
            Command::Run(cmd) => cmd.execute(),
            Command::Events(cmd) => cmd.execute(),
            Command::Runs(cmd) => cmd.execute(),
            Command::State(cmd) => cmd.execute(),
            Command::Key(cmd) => cmd.execute(),
            Command::Token(cmd) => cmd.execute(),
            Command::Tool(cmd) => cmd.execute(),
            Command::Mcp(cmd) => cmd.execute(),
        }
    }
}
