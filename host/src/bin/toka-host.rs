#![forbid(unsafe_code)]

use clap::Parser;

fn main() {
    let cli = toka_host::commands::Cli::parse();
    std::process::exit(cli.execute());
}
