//! `toka-host runs`: recent runs, from the event log.

use crate::events::{self, Filter, kind};
use clap::Args;
use serde::Serialize;
use std::time::{Duration, UNIX_EPOCH};

// (Not a doc comment: the subcommand's `--help` text is its variant's in `commands::Command`.)
// A table of recent runs: outcome, fuel, wall time.
#[derive(Debug, Args)]
pub struct RunsCommand {
    /// Read the runs from the toka-host server at URL (`toka-host serve`) instead of this home's log; needs
    /// --token, a token that grants `api:read` (it sees its own agent's runs, or every agent's for the agent `*`).
    #[arg(long, value_name = "URL", requires = "token")]
    pub server: Option<String>,

    /// The bearer token for --server (a file, `-` for stdin, or the base64 itself).
    #[arg(long, value_name = "TOKEN", requires = "server")]
    pub token: Option<String>,

    /// Only runs of this agent.
    #[arg(long)]
    pub agent: Option<String>,

    /// The last N runs.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,

    /// JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One run, as assembled from its `run.*` events.
#[derive(Debug, Clone, Serialize)]
pub struct RunRow {
    pub run_id: String,
    pub agent: String,
    pub started_ms: u64,
    pub outcome: String,
    pub exit_code: Option<i64>,
    pub fuel: Option<u64>,
    pub wall_time_ms: Option<f64>,
}

impl RunsCommand {
    pub fn execute(self, home: &crate::home::Home) -> i32 {
        if let Some(server) = &self.server {
            return crate::commands::remote::runs(&self, server);
        }
        let db = match super::existing_db(home) {
            Ok(db) => db,
            Err(code) => return code,
        };
        // `run.*`, and `grant.refused` too: a run refused before it started has no `run.started`, only its refusal.
        let filter = Filter { agent: self.agent.clone(), ..Filter::default() };
        let records = match events::read(&db, &filter) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("toka-host: reading events: {e}");
                return 79;
            }
        };
        let mut rows: Vec<RunRow> = Vec::new();
        for r in records {
            if r.run_id.is_empty() && (r.kind == kind::RUN_FAILED || r.kind == kind::GRANT_REFUSED) {
                // Refused before it started: no run id was ever given out.
                rows.push(RunRow {
                    run_id: "-".into(),
                    agent: r.agent,
                    started_ms: r.time_ms,
                    outcome: r.payload["outcome"].as_str().unwrap_or("refused").to_string(),
                    exit_code: r.payload["exit_code"].as_i64(),
                    fuel: None,
                    wall_time_ms: None,
                });
            } else if !r.kind.starts_with("run.") {
                continue;
            } else if r.kind == kind::RUN_STARTED {
                rows.push(RunRow {
                    run_id: r.run_id,
                    agent: r.agent,
                    started_ms: r.time_ms,
                    outcome: "running".into(),
                    exit_code: None,
                    fuel: None,
                    wall_time_ms: None,
                });
            } else if let Some(row) = rows.iter_mut().rev().find(|row| !r.run_id.is_empty() && row.run_id == r.run_id) {
                row.outcome = r.payload["outcome"].as_str().unwrap_or("unknown").to_string();
                row.exit_code = r.payload["exit_code"].as_i64();
                row.fuel = r.payload["fuel"].as_u64();
                row.wall_time_ms = r.payload["wall_time_ms"].as_f64();
            }
        }
        let skip = rows.len().saturating_sub(self.limit);
        self.print(&rows[skip..]);
        0
    }

    /// The rows, oldest first: a table, or JSON lines. The same for this home's log and a server's.
    pub(crate) fn print(&self, rows: &[RunRow]) {
        if !self.json {
            println!(
                "{:<21} {:<16} {:<24} {:<15} {:>4} {:>14} {:>10}",
                "RUN", "AGENT", "STARTED", "OUTCOME", "EXIT", "FUEL", "WALL ms"
            );
        }
        for row in rows {
            if self.json {
                println!("{}", serde_json::json!(row));
            } else {
                let started = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(row.started_ms));
                let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
                println!(
                    "{:<21} {:<16} {:<24} {:<15} {:>4} {:>14} {:>10}",
                    row.run_id,
                    row.agent,
                    started.to_string(),
                    row.outcome,
                    opt(row.exit_code.map(|c| c.to_string())),
                    opt(row.fuel.map(|f| f.to_string())),
                    opt(row.wall_time_ms.map(|w| format!("{w:.1}"))),
                );
            }
        }
    }
}
