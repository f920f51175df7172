//! The `--server` forms of `run`, `runs` and `events`: the same commands, done by a `toka-host serve` through its
//! API (see [`crate::client`]), printing what the local forms print and exiting with the same codes.
//!
//! A refusal by the server maps back to its local exit code (72 grant refused, 78 token refused ...); a server that
//! cannot be reached, or does not answer as one, is 83, a busy or stopping one 84. This module never opens the
//! home: with `--server`, everything comes from the server.

use super::events::{EventsCommand, Since, print_events};
use super::run::{RunCommand, print_ending, print_json};
use super::runs::{RunRow, RunsCommand};
use crate::client::{Client, ClientError, EventQuery};
use crate::error::{Outcome, RunError};
use crate::events::EventRecord;
use crate::report::RunReport;
use crate::service::api::{ComponentRef, EventView, RunStatus, RunView, SubmitRun};
use std::io::Write;
use std::time::{Duration, Instant};

/// The longest the server holds a request waiting for a run (its cap); longer runs are waited for again.
const WAIT: Duration = Duration::from_secs(600);
/// Most events asked for in one page.
const PAGE: usize = 1000;
/// How long `events --follow` keeps trying to reconnect to a server that went away.
const RECONNECT_FOR: Duration = Duration::from_secs(30);

/// Why a client command stopped: its outcome (the exit code) and its one line.
struct Stop {
    outcome: Outcome,
    line: String,
}

impl From<ClientError> for Stop {
    fn from(e: ClientError) -> Self {
        Stop { outcome: e.outcome(), line: e.line() }
    }
}

impl From<RunError> for Stop {
    fn from(e: RunError) -> Self {
        Stop { outcome: e.outcome(), line: e.to_string() }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Stop> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Stop { outcome: Outcome::HostError, line: format!("cannot start the async runtime: {e}") })
}

/// The client for `server` with the token of `--token` (read as the local form reads it).
fn client(server: &str, token: &str) -> Result<Client, Stop> {
    let token = crate::commands::token::read_token(token).map_err(crate::commands::run::token_arg_error)?;
    let client = Client::new(server, &token)?;
    if client.in_clear() {
        eprintln!(
            "toka-host: warning: the token goes in clear over http to {}: use https, or a loopback address",
            client.url()
        );
    }
    Ok(client)
}

/// `toka-host run --server URL --token T COMPONENT`.
pub fn run(cmd: &RunCommand, server: &str) -> i32 {
    let ended = runtime().and_then(|rt| rt.block_on(submit_and_wait(cmd, server)));
    match ended {
        Ok(view) => show_run(cmd, &view),
        Err(Stop { outcome, line }) => {
            eprintln!("toka-host: {line}");
            if cmd.json {
                print_json(&serde_json::json!(RunReport::failed_before_start(outcome, line)));
            }
            outcome.exit_code()
        }
    }
}

/// The request the flags make: the component uploaded, grants and limits as the local run takes them.
fn request(cmd: &RunCommand) -> Result<SubmitRun, Stop> {
    let spec = cmd.spec(crate::runtime::Source::Path(cmd.component.clone()))?;
    // Checked here as a local run checks it, so a bad input is refused with the same line before any upload.
    let input = crate::runtime::check_input(spec.input.as_deref())?
        .map(|text| serde_json::from_str::<serde_json::Value>(&text))
        .transpose()
        .map_err(|e| RunError::InvalidInput(format!("task input is not valid JSON: {e}")))?;
    let bytes = crate::component::read(&cmd.component)?;
    use base64::Engine;
    let component = ComponentRef::Upload {
        name: crate::run::agent_name(&cmd.component),
        wasm_base64: base64::engine::general_purpose::STANDARD.encode(&bytes),
    };
    let mut request = SubmitRun::from_spec(&spec, component, input)?;
    request.wait = true;
    request.wait_ms = Some(u64::try_from(WAIT.as_millis()).unwrap_or(u64::MAX));
    Ok(request)
}

async fn submit_and_wait(cmd: &RunCommand, server: &str) -> Result<RunView, Stop> {
    let token = cmd.token.as_deref().unwrap_or_default();
    let client = client(server, token)?;
    let request = request(cmd)?;
    let agent = crate::run::agent_name(&cmd.component);
    let task = crate::progress::Delayed::console().begin(format!("running {agent} on {}", client.url()));
    let mut view = client.submit(&request, WAIT).await?;
    // A run longer than the server holds a request is waited for again, as long as it runs.
    while view.status != RunStatus::Ended {
        let asked = Instant::now();
        view = client.run(&view.run_id, WAIT).await?;
        if view.status != RunStatus::Ended && asked.elapsed() < Duration::from_secs(1) {
            // A server that answers at once without the end is not hammered.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    task.finish(None);
    Ok(view)
}

/// What the client reads of a report (the rest is printed as it came with `--json`).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct Ending {
    outcome: String,
    exit_code: i32,
    error: Option<String>,
    result: Option<String>,
    stdout: String,
    stderr: String,
    logs: Vec<LogLine>,
    denied: Vec<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct LogLine {
    level: String,
    message: String,
}

/// Prints an ended run as a local run does, and gives its exit code.
fn show_run(cmd: &RunCommand, view: &RunView) -> i32 {
    let Some(report) = &view.report else {
        eprintln!("toka-host: the server said run {} ended, without its report", view.run_id);
        return Outcome::Unreachable.exit_code();
    };
    let ending: Ending = match serde_json::from_value(report.clone()) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("toka-host: the server's report of run {} is not a run report: {e}", view.run_id);
            return Outcome::Unreachable.exit_code();
        }
    };
    if cmd.json {
        print_json(report);
        return ending.exit_code;
    }
    // The guest's output as a local run echoes it: stdout, then stderr and its log lines on stderr.
    let mut out = std::io::stdout().lock();
    drop(out.write_all(ending.stdout.as_bytes()).and_then(|()| out.flush()));
    drop(out);
    let mut err = std::io::stderr().lock();
    drop(err.write_all(ending.stderr.as_bytes()));
    for log in &ending.logs {
        let safe: String = log.message.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        drop(writeln!(err, "[{}] {}: {safe}", view.agent, log.level));
    }
    drop(err);
    let outcome = Outcome::from_name(&ending.outcome).unwrap_or(Outcome::HostError);
    print_ending(ending.result.as_deref(), &ending.denied, ending.error.as_deref(), outcome);
    ending.exit_code
}

/// `toka-host runs --server URL --token T`.
pub fn runs(cmd: &RunsCommand, server: &str) -> i32 {
    let listed = runtime().and_then(|rt| rt.block_on(list_runs(cmd, server)));
    match listed {
        Ok(rows) => {
            cmd.print(&rows);
            0
        }
        Err(Stop { outcome, line }) => {
            eprintln!("toka-host: {line}");
            outcome.exit_code()
        }
    }
}

/// The last `--limit` runs, oldest first, page by page (the server gives them newest first).
async fn list_runs(cmd: &RunsCommand, server: &str) -> Result<Vec<RunRow>, Stop> {
    let client = client(server, cmd.token.as_deref().unwrap_or_default())?;
    let mut rows = Vec::new();
    let mut before = None;
    while rows.len() < cmd.limit {
        let page = client.runs(cmd.agent.as_deref(), (cmd.limit - rows.len()).min(PAGE), before).await?;
        rows.extend(page.runs.into_iter().map(|r| RunRow {
            run_id: r.run_id,
            agent: r.agent,
            started_ms: r.started_ms,
            outcome: r.outcome,
            exit_code: r.exit_code,
            fuel: r.fuel,
            wall_time_ms: r.wall_time_ms,
        }));
        match page.next {
            Some(next) if before != Some(next) => before = Some(next),
            _ => break,
        }
    }
    rows.truncate(cmd.limit);
    rows.reverse();
    Ok(rows)
}

/// `toka-host events --server URL --token T [--follow]`.
pub fn events(cmd: &EventsCommand, server: &str) -> i32 {
    match runtime().and_then(|rt| rt.block_on(show_events(cmd, server))) {
        Ok(()) => 0,
        Err(Stop { outcome, line }) => {
            eprintln!("toka-host: {line}");
            outcome.exit_code()
        }
    }
}

fn record(v: EventView) -> EventRecord {
    EventRecord {
        seq: v.seq,
        time_ms: v.time_ms,
        kind: v.kind,
        agent: v.agent,
        run_id: v.run_id,
        payload: v.payload,
        prev_hash: v.prev_hash,
        hash: v.hash,
    }
}

/// Lists the matching events (page by page, with progress on stderr), then follows the stream.
async fn show_events(cmd: &EventsCommand, server: &str) -> Result<(), Stop> {
    let client = client(server, cmd.token.as_deref().unwrap_or_default())?;
    let filters = EventQuery {
        agent: cmd.agent.clone(),
        run: cmd.run_id.clone(),
        kind: cmd.kind.clone(),
        since: None,
        limit: None,
    };
    let since = match cmd.since {
        Some(Since::Seq(n)) => Some(n),
        // After the server's last event as this command starts (the head comes with every page of events).
        Some(Since::Now) => {
            let (_, head) = client.events(&EventQuery { limit: Some(1), ..filters.clone() }).await?;
            Some(head.unwrap_or(0).saturating_add(1))
        }
        None => None,
    };
    // `after`: every matching event up to it has been shown (or skipped by --limit); following goes on from there.
    let mut after = since.map_or(0, |s| s.saturating_sub(1));
    match (since, cmd.limit) {
        (None, Some(n)) if n <= PAGE => {
            // The last N: one page.
            let query = EventQuery { limit: Some(n.max(1)), ..filters.clone() };
            let (page, head) = client.events(&query).await?;
            let records: Vec<EventRecord> = page.into_iter().map(record).rev().take(n).rev().collect();
            after = records.last().map_or(0, |r| r.seq).max(head.unwrap_or(0));
            print_events(&records, cmd.json);
        }
        (since, limit) => {
            let task = crate::progress::Delayed::console().begin(format!("reading the event log of {}", client.url()));
            // Without --since, --limit keeps the last N: held back until the end of the log is reached.
            let mut held = std::collections::VecDeque::new();
            let keep_last = since.is_none() && limit.is_some();
            let mut printed = 0usize;
            loop {
                let room = if keep_last { PAGE } else { limit.map_or(PAGE, |n| (n - printed).min(PAGE)) };
                if room == 0 {
                    break;
                }
                let query = EventQuery { since: Some(after.saturating_add(1)), limit: Some(room), ..filters.clone() };
                let (page, head) = client.events(&query).await?;
                let full = page.len() == room;
                let records: Vec<EventRecord> = page.into_iter().map(record).collect();
                let scanned = records.last().map_or(0, |r| r.seq);
                // A short page reached the end of the log as it was read.
                after = if full { scanned } else { scanned.max(head.unwrap_or(0)).max(after) };
                if let Some(head) = head {
                    task.position(after, head);
                }
                if keep_last {
                    held.extend(records);
                    let excess = held.len().saturating_sub(limit.unwrap_or(usize::MAX));
                    held.drain(..excess);
                } else {
                    printed += records.len();
                    task.suspend(&mut || print_events(&records, cmd.json));
                    if limit.is_some_and(|n| printed >= n) {
                        after = scanned;
                        break;
                    }
                }
                if !full {
                    break;
                }
            }
            let held: Vec<EventRecord> = held.into();
            task.suspend(&mut || print_events(&held, cmd.json));
            task.finish(None);
        }
    }
    if !cmd.follow {
        return Ok(());
    }
    follow(&client, &filters, after, cmd.json).await
}

/// Prints the events after `after` as the server streams them, reconnecting (from the last one seen) when the
/// stream breaks, for up to [`RECONNECT_FOR`].
async fn follow(client: &Client, filters: &EventQuery, mut after: u64, json: bool) -> Result<(), Stop> {
    let mut failing_since: Option<Instant> = None;
    loop {
        let broke = match client.stream(filters, after).await {
            Ok(mut stream) => loop {
                match stream.next().await {
                    Ok(Some(view)) => {
                        failing_since = None;
                        after = view.seq;
                        print_events(&[record(view)], json);
                    }
                    Ok(None) => {
                        break ClientError::Unreachable {
                            url: client.url().to_string(),
                            reason: "the server ended the stream".into(),
                        };
                    }
                    Err(e) => break e,
                }
            },
            // A refusal (a revoked token, no api:read) is final; only a lost connection is retried.
            Err(e @ ClientError::Api { .. }) => return Err(e.into()),
            Err(e) => e,
        };
        let since = *failing_since.get_or_insert_with(Instant::now);
        if since.elapsed() > RECONNECT_FOR {
            return Err(broke.into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
