//! The `toka-host` command line: one file per subcommand, each a `clap` type with an `execute` method.

pub mod events;
pub mod key;
pub mod mcp;
pub mod run;
pub mod runs;
pub mod state;
pub mod token;
pub mod tool;

use clap::{Parser, Subcommand};

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
