//! `toka-host up`: run the agents of a plan manifest (`toka.toml`) in dependency order and by priority, each with
//! the operator's token narrowed to its own grants; or resume a plan a crash or a kill stopped.
//!
//! A thin face over [`crate::orchestrate`]: parse flags, read the manifest, show progress (plain lines on a
//! non-terminal, a live view with one line per agent on a terminal), print the summary. Ctrl-C cancels the running
//! agents, skips the rest and records it (exit 82).

use crate::error::Outcome;
use crate::home::Home;
use crate::orchestrate::{self, Observer, Options, PlanSource, PlanSummary, StepSummary, Update};
use crate::runtime::{Host, HostOptions};
use clap::Args;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

// (Not a doc comment: the subcommand's `--help` text is its variant's in `commands::Command`.)
// Run the agents of a plan manifest: critical agents first, one at a time, then the rest by dependency order and
// priority, `--jobs` at once.
//
// Every agent runs with the operator's token (`--token`, else one minted from the manifest by the local root key)
// attenuated to exactly its grants, limits and component. Exit codes: 0 every agent completed, 85 an agent failed
// or was skipped, 82 cancelled (Ctrl-C), 69 the plan timed out; before anything starts, 77 an invalid manifest
// (a cycle, an unknown key ...), 72 a grant the operator's token does not allow, 76 a missing component, 78 a
// refused token.
#[derive(Debug, Args)]
pub struct UpCommand {
    /// The plan manifest.
    #[arg(value_name = "TOKA_TOML", default_value = "toka.toml", conflicts_with = "resume")]
    pub manifest: PathBuf,

    /// Continue the live plan PLAN_ID from its recorded state: completed agents are not run again.
    #[arg(long, value_name = "PLAN_ID")]
    pub resume: Option<String>,

    /// The id of the new plan (default: a fresh one).
    #[arg(long, value_name = "PLAN_ID", conflicts_with = "resume")]
    pub plan_id: Option<String>,

    /// Agents running at once (critical agents always run alone) [default: the number of CPUs].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub jobs: Option<u32>,

    /// The operator's capability token (a file, `-` for stdin, or the base64 itself).
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,

    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,

    /// Only plain progress lines, even on a terminal.
    #[arg(long)]
    pub plain: bool,
}

impl UpCommand {
    pub fn execute(self, home: &Home) -> i32 {
        let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                return self.fail(Outcome::HostError.exit_code(), &format!("cannot start the async runtime: {e}"));
            }
        };
        runtime.block_on(self.run(home))
    }

    fn fail(&self, code: i32, message: &str) -> i32 {
        eprintln!("toka-host: {message}");
        if self.json {
            print_json(&serde_json::json!({ "error": message, "exit_code": code }));
        }
        code
    }

    async fn run(self, home: &Home) -> i32 {
        let source = match &self.resume {
            Some(plan_id) => PlanSource::Resume { plan_id: plan_id.clone() },
            None => match read_manifest(&self.manifest) {
                Ok(source) => source,
                Err((code, message)) => return self.fail(code, &message),
            },
        };
        let token = match self.token.as_deref().map(crate::commands::token::read_token).transpose() {
            Ok(t) => t,
            Err(e) => return self.fail(Outcome::TokenRefused.exit_code(), &format!("token refused: {e}")),
        };
        let host = match Host::open(
            home.clone(),
            HostOptions {
                // On-demand instances: a plan's steps, their tools and their children are not bounded by a pool.
                pooling: false,
                progress: Some(crate::progress::Delayed::console()),
                ..HostOptions::default()
            },
        ) {
            Ok(h) => Arc::new(h),
            Err(e) => return self.fail(e.outcome().exit_code(), &e.to_string()),
        };
        let jobs =
            self.jobs.map_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()), |j| j as usize);
        let options = Options { jobs, token, plan_id: self.plan_id.clone(), runner: None, placer: None };
        let live = !self.plain && std::io::stderr().is_terminal();
        let observer: Arc<dyn Observer> = if live { Arc::new(LiveView::new()) } else { Arc::new(PlainLines) };
        let stop = CancellationToken::new();
        let ctrl_c = tokio::spawn({
            let stop = stop.clone();
            async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    eprintln!("toka-host: cancelling the plan (Ctrl-C)");
                    stop.cancel();
                }
            }
        });
        let result = orchestrate::executor::up(host, source, options, observer, stop).await;
        ctrl_c.abort();
        match result {
            Ok(summary) => {
                if self.json {
                    print_json(&serde_json::json!(summary));
                } else {
                    print_table(&summary);
                }
                summary.exit_code
            }
            Err(e) => self.fail(e.exit_code, &e.message),
        }
    }
}

/// Reads a manifest (bounded: a larger file is refused before it is read whole).
fn read_manifest(path: &std::path::Path) -> Result<PlanSource, (i32, String)> {
    use std::io::Read;
    let shown = path.display();
    let missing = || (Outcome::FileNotFound.exit_code(), format!("{shown}: manifest not found"));
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => missing(),
        _ => (Outcome::FileNotFound.exit_code(), format!("{shown}: cannot read: {e}")),
    })?;
    let mut text = String::new();
    let limit = orchestrate::manifest::MAX_MANIFEST as u64 + 1;
    file.take(limit)
        .read_to_string(&mut text)
        .map_err(|e| (Outcome::InvalidInput.exit_code(), format!("{shown}: cannot read as UTF-8 text: {e}")))?;
    if text.len() > orchestrate::manifest::MAX_MANIFEST {
        return Err((
            Outcome::InvalidInput.exit_code(),
            format!("{shown}: manifest is over the {} byte limit", orchestrate::manifest::MAX_MANIFEST),
        ));
    }
    // Relative paths in the manifest are relative to its directory, as an absolute path, so that a resume from
    // another directory finds the same files.
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let base = std::fs::canonicalize(dir).map_err(|_| missing())?;
    let fallback_name = base.file_name().map_or_else(|| "plan".into(), |n| n.to_string_lossy().into_owned());
    Ok(PlanSource::Manifest { text, base, fallback_name })
}

fn print_json(value: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    drop(writeln!(out, "{value:#}").and_then(|()| out.flush()));
}

fn ms(ms: f64) -> String {
    if ms < 1000.0 { format!("{ms:.0} ms") } else { format!("{:.1} s", ms / 1000.0) }
}

fn ended_line(s: &StepSummary) -> String {
    match s.status.as_str() {
        "completed" if s.resumed => format!("[{}] completed before the resume", s.name),
        "completed" => format!("[{}] completed in {}, fuel {}", s.name, ms(s.wall_time_ms), s.fuel),
        "skipped" => format!("[{}] skipped: {}", s.name, s.reason.as_deref().unwrap_or("")),
        status => format!(
            "[{}] {status} after {} attempt{}: {}",
            s.name,
            s.attempts,
            if s.attempts == 1 { "" } else { "s" },
            s.error.as_deref().or(s.outcome.as_deref()).unwrap_or("")
        ),
    }
}

fn plan_line(summary: &PlanSummary) -> String {
    let count = |status: &str| summary.steps.iter().filter(|s| s.status == status).count();
    format!(
        "plan {} {}: {} completed, {} failed, {} skipped, {} cancelled in {}",
        summary.plan_id,
        summary.outcome,
        count("completed"),
        count("failed"),
        count("skipped"),
        count("cancelled"),
        ms(summary.wall_time_ms)
    )
}

/// One line per step on stdout, after the run.
fn print_table(summary: &PlanSummary) {
    let mut out = std::io::stdout().lock();
    let width = summary.steps.iter().map(|s| s.name.len()).max().unwrap_or(4).max(4);
    let _ = writeln!(out, "{:width$}  {:9}  {:>8}  {:>14}  {:>9}", "STEP", "STATUS", "ATTEMPTS", "FUEL", "TIME");
    for s in &summary.steps {
        let _ = writeln!(
            out,
            "{:width$}  {:9}  {:>8}  {:>14}  {:>9}",
            s.name,
            s.status,
            s.attempts,
            s.fuel,
            ms(s.wall_time_ms)
        );
    }
    let _ = writeln!(out, "{}", plan_line(summary));
    let _ = out.flush();
}

/// Plain lines on stderr, one per change: for logs and pipes.
struct PlainLines;

impl Observer for PlainLines {
    fn update(&self, update: &Update) {
        let line = match update {
            Update::PlanStarted { plan_id, name, steps, resumed } => format!(
                "plan {plan_id} ({name}) {}: {} steps",
                if *resumed { "resumed" } else { "started" },
                steps.len()
            ),
            Update::StepStarted { step, attempt, run_id } => format!("[{step}] started (attempt {attempt}, {run_id})"),
            Update::StepRetrying { step, attempt, after, error } => {
                format!("[{step}] failed: {error}; attempt {attempt} in {}", humantime::format_duration(*after))
            }
            Update::StepEnded(s) => ended_line(s),
            Update::PlanEnded(summary) => plan_line(summary),
        };
        eprintln!("toka-host: {line}");
    }
}

/// A live view on a terminal: one line per agent with its state, fuel and time, redrawn as they change.
struct LiveView {
    bars: indicatif::MultiProgress,
    lines: std::sync::Mutex<std::collections::BTreeMap<String, indicatif::ProgressBar>>,
}

impl LiveView {
    fn new() -> LiveView {
        LiveView { bars: indicatif::MultiProgress::new(), lines: std::sync::Mutex::new(Default::default()) }
    }

    fn set(&self, step: &str, message: String, done: bool) {
        let lines = self.lines.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(bar) = lines.get(step) {
            if done {
                bar.finish_with_message(message);
            } else {
                bar.set_message(message);
            }
        }
    }
}

impl Observer for LiveView {
    fn update(&self, update: &Update) {
        match update {
            Update::PlanStarted { plan_id, name, steps, resumed } => {
                let _ = self
                    .bars
                    .println(format!("plan {plan_id} ({name}) {}", if *resumed { "resumed" } else { "started" }));
                let width = steps.iter().map(|(s, _)| s.len()).max().unwrap_or(4);
                let style = indicatif::ProgressStyle::with_template(&format!(
                    "{{spinner}} {{prefix:{width}}}  {{msg}}  {{elapsed}}"
                ))
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
                let mut lines = self.lines.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                for (step, agent) in steps {
                    let bar = self.bars.add(indicatif::ProgressBar::new_spinner());
                    bar.set_style(style.clone());
                    bar.set_prefix(step.clone());
                    bar.set_message(format!("waiting ({agent})"));
                    bar.enable_steady_tick(std::time::Duration::from_millis(120));
                    lines.insert(step.clone(), bar);
                }
            }
            Update::StepStarted { step, attempt, .. } => {
                self.set(step, format!("running (attempt {attempt})"), false);
            }
            Update::StepRetrying { step, attempt, after, error } => {
                self.set(
                    step,
                    format!("retrying (attempt {attempt} in {}): {error}", humantime::format_duration(*after)),
                    false,
                );
            }
            Update::StepEnded(s) => {
                let message = match s.status.as_str() {
                    "completed" => format!("completed  fuel {}  {}", s.fuel, ms(s.wall_time_ms)),
                    "skipped" => format!("skipped: {}", s.reason.as_deref().unwrap_or("")),
                    status => format!("{status}: {}", s.error.as_deref().or(s.outcome.as_deref()).unwrap_or("")),
                };
                self.set(&s.name, message, true);
            }
            Update::PlanEnded(summary) => {
                let lines = self.lines.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                for bar in lines.values() {
                    if !bar.is_finished() {
                        bar.finish();
                    }
                }
                let _ = self.bars.println(plan_line(summary));
            }
        }
    }
}
