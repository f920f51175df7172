//! `toka-host events`: read, follow and verify the event log, and export its latest signed checkpoint.
//!
//! `verify` never passes a log it could not check: a broken chain, a checkpoint that the home's keys do not verify,
//! a truncation, a rewrite, an unsigned tail or changed revocations all exit 80; a database without any checkpoint
//! passes with a warning that it is not anchored.

use crate::db::Db;
use crate::events::checkpoint::{self, Anchoring, Checkpoint, MAX_CHECKPOINT_BYTES};
use crate::events::{self, EventRecord, Filter, Verification};
use crate::home::Home;
use crate::token::keys::KeyStore;
use clap::{Args, Subcommand};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

// (Not a doc comment: the subcommand's `--help` text is its variant's in `commands::Command`.)
// Show the event log (oldest first), or verify its hash chain.
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

    /// Only events with this sequence number or later; `now`: none of those already in the log (with --follow,
    /// only what is committed from now on).
    #[arg(long, value_name = "SEQ|now", value_parser = parse_since)]
    pub since: Option<Since>,

    /// At most N events: the last N, or with --since the first N from there.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,

    /// Keep printing new events as they are committed (Ctrl-C to stop).
    #[arg(long)]
    pub follow: bool,

    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,

    /// Read the events from the toka-host server at URL (`toka-host serve`) instead of this home's log (`--follow`
    /// streams them as server-sent events); needs --token, a token that grants `api:read`.
    #[arg(long, value_name = "URL", requires = "token")]
    pub server: Option<String>,

    /// The bearer token for --server (a file, `-` for stdin, or the base64 itself).
    #[arg(long, value_name = "TOKEN", requires = "server")]
    pub token: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum EventsAction {
    /// Walk the hash chain and the operation log from the first record, and check them and the revocations against
    /// the signed checkpoints (with the home's root keys); report the first thing that does not verify.
    Verify {
        /// Print the result as one JSON object.
        #[arg(long)]
        json: bool,
        /// A checkpoint exported earlier (`events checkpoint --out FILE`) and kept elsewhere: the log must still
        /// contain everything it covers. Detects a truncation whose checkpoints were deleted too.
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<PathBuf>,
    },
    /// Print the latest signed checkpoint (JSON); keep copies away from this machine, and give one to `events verify
    /// --checkpoint` later.
    Checkpoint {
        /// Write it to FILE instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

/// Where `events` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// At this sequence number.
    Seq(u64),
    /// After the last event committed when the command starts.
    Now,
}

fn parse_since(text: &str) -> Result<Since, String> {
    if text == "now" {
        return Ok(Since::Now);
    }
    text.parse().map(Since::Seq).map_err(|_| format!("invalid --since `{text}`: expected a sequence number or `now`"))
}

/// Exit code of `events verify` when the chain does not verify.
pub const CHAIN_BROKEN: i32 = 80;

impl EventsCommand {
    pub fn execute(self, home: &crate::home::Home) -> i32 {
        if let Some(server) = &self.server {
            if self.action.is_some() {
                eprintln!("toka-host: events verify and checkpoint read the database itself: not with --server");
                return crate::error::Outcome::InvalidInput.exit_code();
            }
            return crate::commands::remote::events(&self, server);
        }
        let db = match super::existing_db(home) {
            Ok(db) => db,
            Err(code) => return code,
        };
        match &self.action {
            Some(EventsAction::Verify { json, checkpoint }) => verify(home, &db, *json, checkpoint.as_deref()),
            Some(EventsAction::Checkpoint { out }) => export(home, &db, out.as_deref()),
            None => match self.show(&db) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("toka-host: reading events: {e}");
                    79
                }
            },
        }
    }

    /// Prints the matching events (a long log is read in chunks, with progress on stderr), then follows.
    fn show(&self, db: &Db) -> Result<(), redb::Error> {
        let since = match self.since {
            Some(Since::Now) => Some(events::last_seq(db)?.saturating_add(1)),
            Some(Since::Seq(n)) => Some(n),
            None => None,
        };
        let mut filter = Filter {
            agent: self.agent.clone(),
            run_id: self.run_id.clone(),
            kind: self.kind.clone(),
            after: None,
            limit: None,
        };
        let head = events::last_seq(db)?;
        let task = crate::progress::Delayed::console().begin(format!("reading the event log ({head} events)"));
        // Without --since, --limit keeps the last N: held back until the end of the log is reached.
        let mut last_n = match (since, self.limit) {
            (None, Some(n)) => Some(std::collections::VecDeque::with_capacity(n.min(SCAN))),
            _ => None,
        };
        let mut after = since.map_or(0, |s| s.saturating_sub(1));
        let mut printed = 0usize;
        loop {
            let (records, scanned, more) = events::scan(db, &filter, after, SCAN)?;
            after = scanned;
            task.position(scanned, head);
            match (&mut last_n, self.limit) {
                (Some(held), Some(n)) => {
                    held.extend(records);
                    let excess = held.len().saturating_sub(n);
                    held.drain(..excess);
                }
                (_, limit) => {
                    let room = limit.map_or(usize::MAX, |n| n - printed);
                    let batch: Vec<EventRecord> = records.into_iter().take(room).collect();
                    printed += batch.len();
                    if let Some(r) = batch.last()
                        && limit.is_some_and(|n| printed == n)
                    {
                        // The limit is reached: what follows is what comes after the last event shown.
                        after = r.seq;
                    }
                    task.suspend(&mut || print_events(&batch, self.json));
                    if limit.is_some_and(|n| printed == n) {
                        break;
                    }
                }
            }
            if !more {
                break;
            }
        }
        if let Some(held) = last_n {
            let held: Vec<EventRecord> = held.into();
            task.suspend(&mut || print_events(&held, self.json));
        }
        task.finish(None);
        if !self.follow {
            return Ok(());
        }
        loop {
            std::thread::sleep(Duration::from_millis(200));
            filter.after = Some(after);
            let records = events::read(db, &filter)?;
            after = records.last().map_or(after, |r| r.seq);
            print_events(&records, self.json);
        }
    }
}

/// Records read at a time while catching up on a long log.
const SCAN: usize = 4096;

/// Prints events, one line each: aligned text or JSON. The same for this home's log and a server's. A closed
/// stdout (`| head`) ends the listing quietly.
pub(crate) fn print_events(records: &[EventRecord], json: bool) {
    let mut out = std::io::stdout().lock();
    for r in records {
        let line = if json {
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
        if writeln!(out, "{line}").is_err() {
            std::process::exit(0);
        }
    }
    if out.flush().is_err() {
        std::process::exit(0);
    }
}

/// The home's root keys, which alone decide whether a checkpoint's signature is trusted.
fn home_keys(home: &Home) -> Result<KeyStore, i32> {
    KeyStore::load(&home.dir).map_err(|e| {
        eprintln!("toka-host: {e}");
        crate::error::Outcome::HostError.exit_code()
    })
}

/// Reads a checkpoint file (bounded; strict fields).
fn read_checkpoint(path: &Path) -> Result<Checkpoint, i32> {
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| {
        eprintln!("toka-host: checkpoint {shown}: {e}");
        crate::error::Outcome::FileNotFound.exit_code()
    })?;
    let mut bytes = Vec::new();
    let limit = u64::try_from(MAX_CHECKPOINT_BYTES).unwrap_or(u64::MAX) + 1;
    let read = file.take(limit).read_to_end(&mut bytes);
    read.map_err(|e| e.to_string()).and_then(|_| Checkpoint::parse(&bytes)).map_err(|e| {
        eprintln!("toka-host: checkpoint {shown} is not a toka-host checkpoint: {}", crate::error::one_line(&e));
        crate::error::Outcome::InvalidInput.exit_code()
    })
}

fn verify(home: &Home, db: &Db, json: bool, checkpoint: Option<&Path>) -> i32 {
    let keys = match home_keys(home) {
        Ok(k) => k,
        Err(code) => return code,
    };
    let external = match checkpoint.map(read_checkpoint).transpose() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (chain, anchoring) = match checkpoint::verify(db, &keys, external.as_ref()) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("toka-host: reading events: {e}");
            return crate::error::Outcome::HostError.exit_code();
        }
    };
    let anchored = anchoring.latest.is_some() || external.is_some();
    if json {
        println!("{}", verify_json(&chain, &anchoring, anchored));
    }
    if let Some((seq, why)) = &chain.first_bad {
        eprintln!("toka-host: event {seq} does not verify: {why}");
        return CHAIN_BROKEN;
    }
    if let Some(problem) = &anchoring.problem {
        eprintln!("toka-host: {problem}");
        return CHAIN_BROKEN;
    }
    if !json {
        let mut line = format!("ok: {} records, chain head {}", chain.records, chain.head);
        if let Some(cp) = &anchoring.latest {
            line.push_str(&format!(
                "; {} operations, {} revocations, signed at event {} by root key {}",
                anchoring.ops, anchoring.revoked, cp.events_seq, cp.key_id
            ));
        }
        if let Some(cp) = &external {
            line.push_str(&format!("; contains the given checkpoint (event {})", cp.events_seq));
        }
        println!("{line}");
    }
    if !anchored {
        eprintln!(
            "toka-host: warning: not anchored: this database holds no signed checkpoint (written before checkpoints, \
             or they were deleted); a truncation or a rewrite with recomputed hashes cannot be detected without \
             one kept elsewhere (--checkpoint)"
        );
    }
    0
}

fn verify_json(chain: &Verification, anchoring: &Anchoring, anchored: bool) -> serde_json::Value {
    serde_json::json!({
        "records": chain.records,
        "first_bad": chain.first_bad,
        "head": chain.head,
        "ops": anchoring.ops,
        "ops_head": anchoring.ops_head,
        "revoked": anchoring.revoked,
        "revoked_digest": anchoring.revoked_digest,
        "checkpoints": anchoring.checkpoints,
        "latest_checkpoint": anchoring.latest,
        "anchored": anchored,
        "problem": anchoring.problem.as_ref().map(ToString::to_string),
        "problem_kind": anchoring.problem,
    })
}

fn export(home: &Home, db: &Db, out: Option<&Path>) -> i32 {
    let keys = match home_keys(home) {
        Ok(k) => k,
        Err(code) => return code,
    };
    let cp = match checkpoint::export(db, &keys) {
        Ok(Ok(Some(cp))) => cp,
        Ok(Ok(None)) => {
            eprintln!("toka-host: this database holds no signed checkpoint (it is not anchored)");
            return CHAIN_BROKEN;
        }
        Ok(Err(problem)) => {
            eprintln!("toka-host: {problem}");
            return CHAIN_BROKEN;
        }
        Err(e) => {
            eprintln!("toka-host: reading events: {e}");
            return crate::error::Outcome::HostError.exit_code();
        }
    };
    let text = serde_json::to_string(&cp).expect("a checkpoint always serializes");
    match out {
        None => {
            println!("{text}");
            0
        }
        Some(path) => match crate::home::write_private(path, format!("{text}\n").as_bytes()) {
            Ok(()) => {
                println!("checkpoint at event {} written to {}", cp.events_seq, path.display());
                0
            }
            Err(e) => {
                eprintln!("toka-host: cannot write {}: {e}", path.display());
                crate::error::Outcome::HostError.exit_code()
            }
        },
    }
}
