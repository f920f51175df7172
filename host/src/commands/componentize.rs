//! `toka-host componentize IN.wasm -o OUT.wasm`: a core module (built with wit-bindgen for the toka worlds, or a
//! plain WASI preview 1 program) made a component in-process, with the preview 1 adapter of this wasmtime.

use clap::Args;
use std::path::PathBuf;

// (Not a doc comment: the subcommand's `--help` text is its variant's in `commands::Command`.)
// Make a component of a core module: one built against the toka:agent worlds (cargo or clang for wasm32-wasip1
// with wit-bindgen) gets the reactor adapter; a plain WASI preview 1 program becomes a wasi:cli/command.
#[derive(Debug, Args)]
pub struct ComponentizeCommand {
    /// The core module.
    pub input: PathBuf,

    /// Where to write the component.
    #[arg(short, long, value_name = "FILE")]
    pub out: PathBuf,
}

impl ComponentizeCommand {
    pub fn execute(self, _home: &crate::home::Home) -> i32 {
        let shown = self.input.display().to_string();
        let result = crate::component::read(&self.input).and_then(|bytes| crate::project::componentize(&shown, &bytes));
        match result {
            Ok(component) => match std::fs::write(&self.out, &component) {
                Ok(()) => {
                    println!("wrote {} ({} KiB)", self.out.display(), component.len().div_ceil(1024));
                    0
                }
                Err(e) => {
                    eprintln!("toka-host: {}: {e}", self.out.display());
                    crate::error::Outcome::HostError.exit_code()
                }
            },
            Err(e) => {
                eprintln!("toka-host: {e}");
                e.outcome().exit_code()
            }
        }
    }
}
