//! Every way a run can end, each with its own exit code, and the errors that stop a run before the guest starts.
//!
//! Exit codes are part of the CLI's contract: scripts branch on them. A `wasi:cli/command` guest's own exit status
//! (from `proc_exit` or `std::process::exit`) is passed through unchanged, as `wasmtime run` does; the host's own
//! outcomes use 65..=79 so that they are easy to tell apart in practice. `--json` reports name the outcome exactly.

use serde::Serialize;

/// How a run ended (or why it never started). The serialized name is what `--json` reports as `outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The agent returned `ok`, or the command exited with status 0.
    Success,
    /// A command exited with a non-zero status of its own.
    Exited,
    /// The agent returned `err(agent-error)`.
    AgentError,
    /// The guest trapped (a panic, `unreachable`, an out-of-bounds access ...).
    Trap,
    /// The guest exhausted its call stack (unbounded recursion).
    StackOverflow,
    /// The guest used up its fuel budget.
    OutOfFuel,
    /// The guest ran past its wall-clock deadline.
    Timeout,
    /// The guest tried to grow its memory (or tables) past the limit and then failed.
    MemoryLimit,
    /// The guest wrote more to stdout or stderr than `--max-output` allows.
    OutputLimit,
    /// A grant the run asked for was refused.
    GrantRefused,
    /// The file is not valid WebAssembly.
    InvalidWasm,
    /// The file is a core module that cannot be run as a component.
    NotAComponent,
    /// The component is valid but is neither a `toka:agent/agent` nor a `wasi:cli/command` (or imports what the
    /// host does not provide).
    WrongWorld,
    /// The component file does not exist or cannot be read.
    FileNotFound,
    /// The task input (`--input`, `--input-file`) is not valid JSON or is too large.
    InvalidInput,
    /// The capability token is malformed, forged, expired, revoked or signed by an unknown or retired key.
    TokenRefused,
    /// A fault of the host itself. Never expected; reported rather than crashing.
    HostError,
    /// The token's rate limit for this agent (`--rate`) is used up for now.
    RateLimited,
    /// The run was cancelled (through the service's API, or its shutdown) before it ended.
    Cancelled,
    /// `--server`: the server could not be reached, or did not answer as a toka-host server (the run's fate is
    /// unknown only if the connection broke after it was submitted; the message says which).
    Unreachable,
    /// `--server`: the server is too busy (its queue is full) or shutting down; retry later.
    ServerBusy,
    /// The cluster node the run executed on was lost (killed, cut off, restarted) before the run ended: what the run
    /// did before is in the log; it was not completed.
    Lost,
    /// A sandbox that could open files or sockets found less than its least share of the process's file descriptors
    /// left: live runs hold them (see [`crate::sandbox::fds`]); retry later.
    HostBusy,
}

impl Outcome {
    /// The process exit code for this outcome. `Exited` carries the guest's own status instead.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Success => 0,
            Outcome::Exited => 1,
            Outcome::AgentError => 65,
            Outcome::Trap => 66,
            Outcome::StackOverflow => 67,
            Outcome::OutOfFuel => 68,
            Outcome::Timeout => 69,
            Outcome::MemoryLimit => 70,
            Outcome::OutputLimit => 71,
            Outcome::GrantRefused => 72,
            Outcome::InvalidWasm => 73,
            Outcome::NotAComponent => 74,
            Outcome::WrongWorld => 75,
            Outcome::FileNotFound => 76,
            Outcome::InvalidInput => 77,
            Outcome::TokenRefused => 78,
            Outcome::HostError => 79,
            // 80 is `toka-host events verify` finding a broken log.
            Outcome::RateLimited => 81,
            Outcome::Cancelled => 82,
            Outcome::Unreachable => 83,
            Outcome::ServerBusy => 84,
            Outcome::Lost => crate::kernel::LOST_EXIT_CODE,
            Outcome::HostBusy => 104,
        }
    }

    /// The outcome's name, as `--json` reports it (`success`, `out-of-fuel` ...).
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Exited => "exited",
            Outcome::AgentError => "agent-error",
            Outcome::Trap => "trap",
            Outcome::StackOverflow => "stack-overflow",
            Outcome::OutOfFuel => "out-of-fuel",
            Outcome::Timeout => "timeout",
            Outcome::MemoryLimit => "memory-limit",
            Outcome::OutputLimit => "output-limit",
            Outcome::GrantRefused => "grant-refused",
            Outcome::InvalidWasm => "invalid-wasm",
            Outcome::NotAComponent => "not-a-component",
            Outcome::WrongWorld => "wrong-world",
            Outcome::FileNotFound => "file-not-found",
            Outcome::InvalidInput => "invalid-input",
            Outcome::TokenRefused => "token-refused",
            Outcome::HostError => "host-error",
            Outcome::RateLimited => "rate-limited",
            Outcome::Cancelled => "cancelled",
            Outcome::Unreachable => "unreachable",
            Outcome::ServerBusy => "server-busy",
            Outcome::Lost => "lost",
            Outcome::HostBusy => "host-busy",
        }
    }

    /// The outcome named `name` (as [`Outcome::name`] gives it).
    pub fn from_name(name: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.name() == name)
    }

    /// Every outcome, for documentation and for tests that check the codes are distinct.
    pub const ALL: [Outcome; 23] = [
        Outcome::Success,
        Outcome::Exited,
        Outcome::AgentError,
        Outcome::Trap,
        Outcome::StackOverflow,
        Outcome::OutOfFuel,
        Outcome::Timeout,
        Outcome::MemoryLimit,
        Outcome::OutputLimit,
        Outcome::GrantRefused,
        Outcome::InvalidWasm,
        Outcome::NotAComponent,
        Outcome::WrongWorld,
        Outcome::FileNotFound,
        Outcome::InvalidInput,
        Outcome::TokenRefused,
        Outcome::HostError,
        Outcome::RateLimited,
        Outcome::Cancelled,
        Outcome::Unreachable,
        Outcome::ServerBusy,
        Outcome::Lost,
        Outcome::HostBusy,
    ];
}

/// An error that stops a run before or instead of running the guest. Its `Display` is the one-line message the CLI
/// prints after `toka-host: `.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    #[error("{path}: file not found")]
    FileNotFound { path: String },
    #[error("{path}: cannot read: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("{path}: invalid WebAssembly: {reason}")]
    InvalidWasm { path: String, reason: String },
    #[error("{path}: not a component: {reason}")]
    NotAComponent { path: String, reason: String },
    #[error("{path}: wrong world: {reason}")]
    WrongWorld { path: String, reason: String },
    #[error("grant refused: {grant}: {reason}")]
    GrantRefused { grant: String, reason: String },
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("token refused: {0}")]
    TokenRefused(String),
    #[error("host error: {0}")]
    Host(String),
    #[error("{0}")]
    RateLimited(String),
    #[error("cancelled before it started")]
    Cancelled,
    /// The host has no room for the run now (see [`crate::sandbox::fds`]).
    #[error("{0}")]
    HostBusy(String),
}

impl RunError {
    pub fn outcome(&self) -> Outcome {
        match self {
            RunError::FileNotFound { .. } | RunError::Unreadable { .. } => Outcome::FileNotFound,
            RunError::InvalidWasm { .. } => Outcome::InvalidWasm,
            RunError::NotAComponent { .. } => Outcome::NotAComponent,
            RunError::WrongWorld { .. } => Outcome::WrongWorld,
            RunError::GrantRefused { .. } => Outcome::GrantRefused,
            RunError::InvalidInput(_) => Outcome::InvalidInput,
            RunError::TokenRefused(_) => Outcome::TokenRefused,
            RunError::RateLimited(_) => Outcome::RateLimited,
            RunError::Host(_) => Outcome::HostError,
            RunError::Cancelled => Outcome::Cancelled,
            RunError::HostBusy(_) => Outcome::HostBusy,
        }
    }

    pub(crate) fn host(err: impl std::fmt::Display) -> Self {
        RunError::Host(one_line(&err.to_string()))
    }
}

static VERBOSE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes refusals carry the Datalog checks that failed (`--verbose`).
pub fn set_verbose(on: bool) {
    VERBOSE.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether refusals carry their Datalog (`--verbose`).
pub fn verbose() -> bool {
    VERBOSE.load(std::sync::atomic::Ordering::Relaxed)
}

/// Folds a multi-line message (wasmtime's errors often span lines) into one line, with control characters shown
/// escaped (`\u{1b}`): a message may carry text from a guest, a package or a server, and must not drive the
/// terminal it is printed on.
pub fn one_line(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for word in message.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        for c in word.chars() {
            if c.is_control() {
                out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
            } else {
                out.push(c);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn one_line_folds_whitespace_and_escapes_control_characters() {
        assert_eq!(one_line("a\n  b\tc\r\n"), "a b c");
        assert_eq!(one_line("clear \u{1b}[2J now\u{7}"), "clear \\u{1b}[2J now\\u{7}");
        assert_eq!(one_line("plain ünïcode"), "plain ünïcode");
    }

    #[test]
    fn names_are_the_serialized_names() {
        for o in Outcome::ALL {
            assert_eq!(serde_json::to_value(o).unwrap(), o.name());
            assert_eq!(Outcome::from_name(o.name()), Some(o));
        }
    }

    #[test]
    fn exit_codes_are_distinct() {
        let codes: HashSet<i32> = Outcome::ALL.iter().map(|o| o.exit_code()).collect();
        assert_eq!(codes.len(), Outcome::ALL.len());
    }
}
