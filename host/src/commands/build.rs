//! `toka-host build`: build the project in the current directory (or `--path`) into `NAME.wasm`, and with `--test`
//! run it once through this same binary with the input its `toka-project.toml` names and compare what it prints.

use crate::home::Home;
use crate::project::{self, Kind};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

// (Not a doc comment: the subcommand's `--help` text is its variant's in `commands::Command`.)
// Build a project made by `toka-host new` (its `toka-project.toml`) into NAME.wasm, a component, with the toolchains
// that `scripts/setup-toolchains` installs.
#[derive(Debug, Args)]
pub struct BuildCommand {
    /// The project directory [default: the current directory].
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub path: PathBuf,

    /// Then run the component once with the `[test]` input of toka-project.toml and check its output (exit 1 if it
    /// differs).
    #[arg(long)]
    pub test: bool,
}

impl BuildCommand {
    pub fn execute(self, home: &Home) -> i32 {
        let started = Instant::now();
        let built = match project::build::build(&self.path) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("toka-host: {e}");
                return 1;
            }
        };
        println!(
            "built {} ({} {} in {}, {} KiB) in {:.1} s",
            built.component.display(),
            built.manifest.kind.as_str(),
            built.manifest.name,
            built.manifest.lang.as_str(),
            built.bytes.div_ceil(1024),
            started.elapsed().as_secs_f64()
        );
        if !self.test {
            return 0;
        }
        match test(home, &built) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("toka-host: test failed: {e}");
                1
            }
        }
    }
}

/// Runs the built component once through this binary, as a user would, and compares its stdout.
fn test(home: &Home, built: &project::build::Built) -> Result<(), String> {
    let Some(case) = &built.manifest.test else {
        return Err("toka-project.toml has no [test] section".into());
    };
    let exe = std::env::current_exe().map_err(|e| format!("cannot find toka-host itself: {e}"))?;
    let component = built.component.display().to_string();
    let input = case.input.clone().unwrap_or_else(|| "{}".into());
    let mut cmd = Command::new(&exe);
    home_flags(&mut cmd, home, None);
    let scratch = built.component.parent().unwrap_or(Path::new(".")).join("build").join("test-home");
    match built.manifest.kind {
        Kind::Agent => {
            cmd.args(["run", "--input", &input, &component]);
        }
        Kind::Command => {
            cmd.args(["run", &component]).args(&case.args);
        }
        Kind::Tool => {
            // A tool is called by name from a home it is installed in: a scratch home of the project's own.
            let _ = std::fs::remove_dir_all(&scratch);
            let mut add = Command::new(&exe);
            home_flags(&mut add, home, Some(&scratch));
            let out = add.args(["tool", "add", &component]).output().map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!("tool add: {}", String::from_utf8_lossy(&out.stderr).trim()));
            }
            cmd = Command::new(&exe);
            home_flags(&mut cmd, home, Some(&scratch));
            cmd.args(["tool", "call", &built.manifest.name, "--input", &input]);
        }
    }
    let out = cmd.output().map_err(|e| format!("cannot run toka-host: {e}"))?;
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let got = stdout.strip_suffix('\n').unwrap_or(&stdout);
    if !out.status.success() {
        return Err(format!("the run exited with {} (stdout: {got})", out.status.code().unwrap_or(-1)));
    }
    if got != case.expect {
        return Err(format!("expected {:?}, got {got:?}", case.expect));
    }
    println!("test passed: {got}");
    Ok(())
}

/// Passes this invocation's home on to a child `toka-host` (or a scratch home instead).
fn home_flags(cmd: &mut Command, home: &Home, scratch: Option<&Path>) {
    match scratch {
        Some(dir) => cmd.arg("--home").arg(dir),
        None => cmd.arg("--home").arg(&home.dir).arg("--db").arg(&home.db),
    };
    match &home.cache {
        Some(cache) => cmd.arg("--cache-dir").arg(cache),
        None => cmd.arg("--no-cache"),
    };
}
