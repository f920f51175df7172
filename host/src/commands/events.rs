//! `toka-host events`: read, follow and verify the event log.

use crate::db::Db;
use crate::events::{self, EventRecord, Filter};
use clap::{Args, Subcommand};
use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

/// Show the event log (oldest first), or verify its hash chain.
#[derive(Debug, Args)]
pub struct EventsCommand {
    #[command(subcommand)]
    pub action: Option<EventsAction>,

    /// Only events of this agent.
    #[arg(long)]
    pub agent: Option<String>,

    /// Only events of this run.
    #[arg(long = "run", value_name = "RUN_ID")]
    pub run_id: Option<String>,

    /// Only events of this kind (`run` matches `run.started`, `run.completed` ...).
    #[arg(long)]
    pub kind: Option<String>,

    /// Only events with this sequence number or later.
    #[arg(long, value_name = "SEQ")]
    pub since: Option<u64>,

    /// At most N events: the last N, or with --since the first N from there.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,

    /// Keep printing new events as they are committed (Ctrl-C to stop).
    #[arg(long)]
    pub follow: bool,

    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum EventsAction {
    /// Walk the hash chain from the first record; report the first record that does not verify.
    Verify {
        #[arg(long)]
        json: bool,
    },
}

/// Exit code of `events verify` when the chain does not verify.
pub const CHAIN_BROKEN: i32 = 80;

impl EventsCommand {
    pub fn execute(self, home: &crate::home::Home) -> i32 {
        let db = match super::existing_db(home) {
            Ok(db) => db,
            Err(code) => return code,
        };
        match &self.action {
            Some(EventsAction::Verify { json }) => verify(&db, *json),
            None => match self.show(&db) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("toka-host: reading events: {e}");
                    79
                }
            },
        }
    }

    fn show(&self, db: &Db) -> Result<(), redb::Error> {
        let mut filter = Filter {
            agent: self.agent.clone(),
            run_id: self.run_id.clone(),
            kind: self.kind.clone(),
            after: self.since.map(|s| s.saturating_sub(1)),
            limit: if self.since.is_some() { self.limit } else { None },
        };
        let mut records = events::read(db, &filter)?;
        if self.since.is_none()
            && let Some(n) = self.limit
        {
            let skip = records.len().saturating_sub(n);
            records.drain(..skip);
        }
        let mut last = self.since.map_or(0, |s| s.saturating_sub(1));
        for r in &records {
            self.print(r);
            last = r.seq;
        }
        if !self.follow {
            return Ok(());
        }
        filter.limit = None;
        loop {
            std::thread::sleep(Duration::from_millis(200));
            filter.after = Some(last);
            for r in events::read(db, &filter)? {
                self.print(&r);
                last = r.seq;
            }
        }
    }

    fn print(&self, r: &EventRecord) {
        let mut out = std::io::stdout().lock();
        let line = if self.json {
            serde_json::json!(r).to_string()
        } else {
            let time = humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(r.time_ms));
            let mut payload = r.payload.to_string();
            if payload.len() > 160 {
                let cut = (0..=157).rev().find(|&i| payload.is_char_boundary(i)).unwrap_or(0);
                payload.truncate(cut);
                payload.push_str("...");
            }
            format!("{:>6}  {time}  {:<14} {:<14} {:<21} {payload}", r.seq, r.kind, r.agent, r.run_id)
        };
        // A closed pipe (`| head`) ends the listing quietly.
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            std::process::exit(0);
        }
    }
}

fn verify(db: &Db, json: bool) -> i32 {
    match events::verify(db) {
        Ok(v) => {
            if json {
                println!("{}", serde_json::json!(v));
            }
            match &v.first_bad {
                None => {
                    if !json {
                        println!("ok: {} records, chain head {}", v.records, v.head);
                    }
                    0
                }
                Some((seq, why)) => {
                    eprintln!("toka-host: event {seq} does not verify: {why}");
                    CHAIN_BROKEN
                }
            }
        }
        Err(e) => {
            eprintln!("toka-host: reading events: {e}");
            79
        }
    }
}
