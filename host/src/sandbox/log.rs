//! The host side of the `toka:agent/log` interface.
//!
//! Records go to the host's stderr (prefixed with the agent's name) and/or into the run report. A guest cannot use
//! logging to exhaust the host: each message is truncated to [`MAX_MESSAGE`] bytes and the run's log is capped in
//! total bytes, past which records are counted and dropped. Logging never traps and never fails.

use crate::bindings::LogLevel;
use crate::bindings::agent::toka::agent::log::Host;
use serde::Serialize;

/// Longest message kept, in bytes; longer ones are cut at a character boundary and marked.
pub const MAX_MESSAGE: usize = 4096;

/// One log record as the run report shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LogRecord {
    pub level: &'static str,
    pub message: String,
}

/// Collects one run's log records.
#[derive(Debug)]
pub struct LogSink {
    name: String,
    echo: bool,
    /// Echo to stderr goes through the same queue as the guest's stderr, waiting for room no later than this.
    deadline: std::time::Instant,
    capture: bool,
    budget: u64,
    records: Vec<LogRecord>,
    dropped: u64,
}

impl LogSink {
    pub fn new(name: impl Into<String>, echo: bool, capture: bool, budget: u64, deadline: std::time::Instant) -> Self {
        LogSink { name: name.into(), echo, deadline, capture, budget, records: Vec::new(), dropped: 0 }
    }

    pub fn records(&self) -> &[LogRecord] {
        &self.records
    }

    /// Records dropped because the run's log budget was spent.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn push(&mut self, level: LogLevel, mut message: String) {
        if message.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(" [truncated]");
        }
        let cost = message.len() as u64 + 16;
        if cost > self.budget {
            self.dropped += 1;
            return;
        }
        self.budget -= cost;
        let level = level_name(level);
        if self.echo {
            let safe: String = message.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
            let line = format!("[{}] {level}: {safe}\n", self.name);
            super::output::echo(super::output::Echo::Stderr, line.as_bytes(), self.deadline);
        }
        if self.capture {
            self.records.push(LogRecord { level, message });
        }
    }
}

fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Trace => "trace",
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    }
}

impl Host for LogSink {
    fn log(&mut self, level: LogLevel, message: String) {
        self.push(level, message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_and_caps() {
        let mut sink = LogSink::new("t", false, true, 100, std::time::Instant::now());
        sink.log(LogLevel::Info, "é".repeat(MAX_MESSAGE));
        assert_eq!(sink.records().len(), 0, "a 4 KiB record does not fit a 100-byte budget");
        assert_eq!(sink.dropped(), 1);
        let mut sink = LogSink::new("t", false, true, 1 << 20, std::time::Instant::now());
        sink.log(LogLevel::Warn, "é".repeat(MAX_MESSAGE));
        let m = &sink.records()[0].message;
        assert!(m.len() <= MAX_MESSAGE + 12 && m.ends_with("[truncated]"));
        assert_eq!(sink.records()[0].level, "warn");
    }
}
