//! `toka-host new`: scaffold a project of one's own (an agent, a tool or a command) from the templates in this
//! binary. It writes only inside the new directory, and never over an existing file.

use crate::project::{self, Kind, Lang};
use clap::Args;
use std::path::PathBuf;

// (Not a doc comment: the subcommand's `--help` text is its variant's in `commands::Command`.)
// Make a new agent, tool or command project: `toka-host new agent NAME --lang rust|python|js|c`, `toka-host new
// tool NAME --lang ...`, `toka-host new command NAME --lang go|zig`. Then `cd NAME && toka-host build`.
#[derive(Debug, Args)]
pub struct NewCommand {
    /// What to make: `agent` (run(task), JSON in and out), `tool` (describe and invoke, callable by agents and over
    /// MCP) or `command` (a plain WASI program with arguments).
    #[arg(value_enum)]
    pub kind: Kind,

    /// The project's name: lowercase letters, digits and `-`, starting with a letter. It is the component's name
    /// (NAME.wasm) and the agent name that tokens and events use.
    pub name: String,

    /// The language: rust, python, js or c for agents and tools; go or zig for commands.
    #[arg(long, value_enum)]
    pub lang: Lang,

    /// Where to make it [default: ./NAME].
    #[arg(long, value_name = "DIR")]
    pub path: Option<PathBuf>,
}

impl NewCommand {
    pub fn execute(self, _home: &crate::home::Home) -> i32 {
        let dir = self.path.clone().unwrap_or_else(|| PathBuf::from(&self.name));
        match project::templates::scaffold(&dir, &self.name, self.kind, self.lang) {
            Ok(files) => {
                for f in &files {
                    println!("created {}", f.display());
                }
                println!(
                    "next: cd {} && toka-host build --test   (builds {}.wasm and runs it once)",
                    dir.display(),
                    self.name
                );
                0
            }
            Err(e) => {
                eprintln!("toka-host: {e}");
                2
            }
        }
    }
}
