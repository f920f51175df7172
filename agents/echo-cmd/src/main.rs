//! `echo-cmd`: a plain preview 1 program (`fn main`, std only) that `xtask` turns into a `wasi:cli/command`
//! component with the command adapter. It exercises what the host gives a command: arguments, environment, exit
//! status, preopened files and stdio.
//!
//! * `echo-cmd exit CODE`: prints nothing and exits with `CODE`.
//! * `echo-cmd cat FILE`: copies `FILE` to stdout (error on stderr and exit status 1 if that fails).
//! * `echo-cmd ls DIR`: prints the names of `DIR`'s entries, sorted, one per line (errors as for `cat`).
//! * `echo-cmd stdin`: copies stdin to stdout.
//! * anything else: prints `args: ARGS` (the arguments after the program name, joined by spaces), then one
//!   `env: K=V` line per environment variable, sorted by name, and exits with status 0.

use std::io::{self, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let command = args.get(1).map(String::as_str);
    let operand = args.get(2).map(String::as_str);
    let result = match (command, operand) {
        (Some("exit"), code) => {
            let code = code.unwrap_or("0");
            match code.parse::<i32>() {
                Ok(code) => std::process::exit(code),
                Err(err) => Err(format!("exit: bad status {code:?}: {err}")),
            }
        }
        (Some("cat"), Some(path)) => cat(path),
        (Some("ls"), Some(dir)) => ls(dir),
        (Some("stdin"), _) => copy_stdin(),
        _ => echo(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("echo-cmd: {message}");
            ExitCode::FAILURE
        }
    }
}

fn cat(path: &str) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|err| format!("cat {path}: {err}"))?;
    io::stdout()
        .lock()
        .write_all(&bytes)
        .map_err(|err| format!("cat {path}: stdout: {err}"))
}

fn ls(dir: &str) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|err| format!("ls {dir}: {err}"))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|err| format!("ls {dir}: {err}"))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    let mut out = io::stdout().lock();
    for name in names {
        writeln!(out, "{name}").map_err(|err| format!("ls {dir}: stdout: {err}"))?;
    }
    Ok(())
}

fn copy_stdin() -> Result<(), String> {
    io::copy(&mut io::stdin().lock(), &mut io::stdout().lock())
        .map_err(|err| format!("stdin: {err}"))?;
    Ok(())
}

fn echo(args: &[String]) -> Result<(), String> {
    let mut env: Vec<(String, String)> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    env.sort();
    let mut out = io::stdout().lock();
    let write = |out: &mut io::StdoutLock<'_>| -> io::Result<()> {
        writeln!(out, "args: {}", args.get(1..).unwrap_or_default().join(" "))?;
        for (key, value) in &env {
            writeln!(out, "env: {key}={value}")?;
        }
        out.flush()
    };
    write(&mut out).map_err(|err| format!("stdout: {err}"))
}
