//! The `toka-host` command line: one file per subcommand, each a `clap` type with an `execute` method.

pub mod build;
pub mod cluster;
pub mod componentize;
pub mod events;
pub mod key;
pub mod llm;
pub mod mcp;
pub mod new;
pub mod plugin;
pub mod publisher;
pub mod registry;
pub mod remote;
pub mod run;
pub mod runs;
pub mod serve;
pub mod state;
pub mod token;
pub mod tool;
pub mod trust;
pub mod up;

use crate::grants::{DirGrant, EnvGrant, GrantRequest, NetGrant, StateGrant};
use crate::home::Home;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

// (Not a doc comment: flattened into subcommands, whose `--help` text is their variant's.)
// The grant flags of everything that runs a guest (`run`, `tool call`, `mcp`). A tool called with them gets only
// those it declares a need for.
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

// (Not a doc comment: flattened into subcommands, whose `--help` text is their variant's.)
// Where toka-host keeps its state, shared by every subcommand with the same meaning (and usable before or after
// the subcommand's name).
#[derive(Debug, Clone, Default, Args)]
pub struct HomeArgs {
    /// toka-host's home: root keys, revocations, installed tools, agent state and the event database [default:
    /// $TOKA_HOME, else $XDG_DATA_HOME/toka, else ~/.local/share/toka].
    #[arg(long, value_name = "DIR", global = true)]
    pub home: Option<PathBuf>,

    /// The event database (events, operations, revocations, agent state) [default: HOME/toka.redb].
    #[arg(long, value_name = "PATH", global = true)]
    pub db: Option<PathBuf>,

    /// Directory for compiled components [default: $TOKA_CACHE_DIR, else $XDG_CACHE_HOME/toka-host, else
    /// ~/.cache/toka-host].
    #[arg(long, value_name = "DIR", global = true)]
    pub cache_dir: Option<PathBuf>,

    /// Do not read or write the compile cache.
    #[arg(long, global = true)]
    pub no_cache: bool,
}

impl HomeArgs {
    /// The locations these flags name.
    pub fn home(&self) -> Home {
        Home::resolve(self.home.as_deref(), self.db.as_deref(), self.cache_dir.as_deref(), self.no_cache)
    }
}

/// toka-host: run AI agents and tools as WebAssembly components in a deny-by-default sandbox.
#[derive(Debug, Parser)]
#[command(name = "toka-host", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub home: HomeArgs,

    /// Show more: refusals also print the token's Datalog checks that failed.
    #[arg(long, short, global = true)]
    pub verbose: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// Each subcommand's flags are built only when it is the one parsed (`defer`): building every subcommand's
/// arguments took about half a millisecond of every process's start, before anything else could begin.
#[derive(Debug, Subcommand)]
#[command(defer = true)]
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
    /// The model gateway: list the configured models, test one.
    Llm(llm::LlmCommand),
    /// Serve the installed tools to LLM clients over MCP (stdio or streamable HTTP).
    Mcp(mcp::McpCommand),
    /// Serve the host over HTTP: runs, live events, tools, metrics, a dashboard.
    Serve(serve::ServeCommand),
    /// Run a cluster of toka-host nodes that replicate one log of operations (see the README's "Cluster").
    Cluster(cluster::ClusterCommand),
    /// Run the agents of a plan manifest (toka.toml) in dependency order, or resume a stopped plan.
    Up(up::UpCommand),
    /// Make a new agent, tool or command project of your own (Rust, Python, JavaScript, C, Go, Zig).
    New(new::NewCommand),
    /// Build the project in this directory (made by `toka-host new`) into NAME.wasm.
    Build(build::BuildCommand),
    /// Make a component of a core module (wit-bindgen output, or a WASI preview 1 program).
    Componentize(componentize::ComponentizeCommand),
    /// Plugin packages: pack, sign, verify, inspect, install, list, info, remove, upgrade, search, publish, yank,
    /// push, pull.
    Plugin(plugin::PluginCommand),
    /// This home's publisher key, which signs the packages it packs: init, show.
    Publisher(publisher::PublisherCommand),
    /// The publisher keys whose packages this home accepts, and its install policy: add, list, remove, policy.
    Trust(trust::TrustCommand),
    /// Serve a package registry, or name the registries to install from: serve, key, add, list, remove.
    Registry(registry::RegistryCommand),
}

impl Cli {
    /// Runs the chosen subcommand and returns the process exit code.
    pub fn execute(self) -> i32 {
        let home = self.home.home();
        crate::error::set_verbose(self.verbose);
        // Raises the soft file descriptor limit to the hard one before anything opens a file or a socket.
        crate::sandbox::fds::budget();
        match self.command {
            Command::Run(cmd) => cmd.execute(&home),
            Command::Events(cmd) => cmd.execute(&home),
            Command::Runs(cmd) => cmd.execute(&home),
            Command::State(cmd) => cmd.execute(&home),
            Command::Key(cmd) => cmd.execute(&home),
            Command::Token(cmd) => cmd.execute(&home),
            Command::Tool(cmd) => cmd.execute(&home),
            Command::Mcp(cmd) => cmd.execute(&home),
            Command::Llm(cmd) => cmd.execute(&home),
            Command::Serve(cmd) => cmd.execute(&home),
            Command::Cluster(cmd) => cmd.execute(&home),
            Command::Up(cmd) => cmd.execute(&home),
            Command::New(cmd) => cmd.execute(&home),
            Command::Build(cmd) => cmd.execute(&home),
            Command::Componentize(cmd) => cmd.execute(&home),
            Command::Plugin(cmd) => cmd.execute(&home),
            Command::Publisher(cmd) => cmd.execute(&home),
            Command::Trust(cmd) => cmd.execute(&home),
            Command::Registry(cmd) => cmd.execute(&home),
        }
    }
}

/// Opens an existing database for a reading command; on failure prints the one-line error and gives the exit code
/// (76 when it does not exist: reading never creates one). The database is left open at exit, as `run` leaves it
/// (see [`crate::db::Db::keep_open_until_exit`]): redb's clean close would cost a reader four `fdatasync`s for
/// nothing it wrote.
pub(crate) fn existing_db(home: &Home) -> Result<crate::db::Db, i32> {
    home.existing_db().inspect(crate::db::Db::keep_open_until_exit).map_err(|e| {
        eprintln!("toka-host: {e}");
        match e {
            crate::home::HomeError::NoDatabase { .. } => crate::error::Outcome::FileNotFound.exit_code(),
            _ => crate::error::Outcome::HostError.exit_code(),
        }
    })
}

/// Logs (`tracing`) to stderr, as text or JSON lines (see [`crate::telemetry`]); `RUST_LOG` chooses what.
pub(crate) fn init_logging(format: &str) -> crate::telemetry::Telemetry {
    crate::telemetry::Telemetry::init(format == "json", None).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Every subcommand, flag and argument has a `--help` description: a newcomer reads `--help`, not the source.
    #[test]
    fn every_command_flag_and_argument_has_a_description() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>, seen: &mut usize) {
            if cmd.get_about().is_none() && cmd.get_long_about().is_none() {
                missing.push(format!("{path} (the command itself)"));
            }
            for arg in cmd.get_arguments() {
                *seen += 1;
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!(
                        "{path} {}",
                        arg.get_long().map_or_else(|| id.to_string(), |l| format!("--{l}"))
                    ));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing, seen);
            }
        }
        let mut cmd = Cli::command();
        // `toka-host --help` lists the subcommands before their deferred parts are built: each needs its own about.
        for sub in cmd.get_subcommands() {
            assert!(sub.get_about().is_some(), "`toka-host --help` shows no description for {}", sub.get_name());
        }
        // Builds every subcommand, deferred ones too: without it their arguments would not be seen.
        cmd.build();
        let (mut missing, mut seen) = (Vec::new(), 0);
        walk(&cmd, "toka-host", &mut missing, &mut seen);
        assert!(seen > 300, "only {seen} arguments seen: were the deferred subcommands built?");
        assert!(missing.is_empty(), "no --help description for:\n{}", missing.join("\n"));
    }
}
