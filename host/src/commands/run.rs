//! `toka-host run`: load a component, authorize the grants it is given, run it in a fresh sandbox, report.

use crate::error::{Outcome, RunError};
use crate::grants::{self, NetGrant};
use crate::home::Home;
use crate::report::RunReport;
use crate::run::{Limits, MAX_INPUT};
use crate::runtime::{Host, HostOptions, LimitRequest, Ready, Refused, RunSpec, Source};
use crate::sandbox::OutputMode;
use crate::units::{parse_duration, parse_fuel, parse_size};
use clap::Args;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

// (Not a doc comment: the subcommand's `--help` text is its variant's in `commands::Command`.)
// Run an agent component, a wasi:cli/command component, or a WASI preview 1 module.
//
// Nothing is granted unless asked for: no files, no environment, no network, stdin closed. Exit codes: 0 success,
// the guest's own status for commands, 65 agent error, 66 trap, 67 stack overflow, 68 out of fuel, 69 timeout,
// 70 memory limit, 71 output limit, 72 grant refused, 73 invalid wasm, 74 not a component, 75 wrong world,
// 76 file not found, 77 invalid input, 78 token refused, 79 host error, 81 rate limited, 82 cancelled; with
// --server, 83 server unreachable, 84 server busy.
#[derive(Debug, Args)]
pub struct RunCommand {
    /// Run on the toka-host server at URL (`toka-host serve`) instead of in this process: the component is uploaded
    /// and run as the agent named by its file, authorized by --token (required); grants name the server's
    /// directories and network. Prints what a local run prints, and exits with the same code.
    #[arg(long, value_name = "URL", requires = "token", conflicts_with_all = ["inherit_stdin", "repeat", "parallel"])]
    pub server: Option<String>,

    #[command(flatten)]
    pub grants: crate::commands::GrantFlags,

    /// Give the guest the host's stdin (closed otherwise).
    #[arg(long)]
    pub inherit_stdin: bool,

    /// Let an agent call the installed tool NAME (`toka-host tool list`) through the host. Repeatable.
    #[arg(long = "allow-tool", value_name = "NAME")]
    pub tools: Vec<String>,

    /// Let an agent call the model MODEL through the host's gateway (`toka-host llm models`); a pattern ending in
    /// `*` (`gpt-*`) allows every model it prefixes. Repeatable.
    #[arg(long = "allow-llm", value_name = "MODEL")]
    pub models: Vec<String>,

    /// Let an agent start the installed agent package NAME (`toka-host plugin list`) and wait for its result
    /// (`toka:agent/spawn`); the child runs with this run's token narrowed to what it declares. Repeatable.
    #[arg(long = "allow-spawn", value_name = "NAME")]
    pub spawn: Vec<String>,

    /// How deep spawned agents may nest (a child of this run is at depth 1) [default: 3, at most 8].
    #[arg(long, value_name = "N")]
    pub max_spawn_depth: Option<u32>,

    /// How many agents the run (and each of its children) may spawn, refused attempts included [default: 16].
    #[arg(long, value_name = "N")]
    pub max_spawns: Option<u32>,

    /// Model tokens (prompt and completion) the run may use, at most (the lower of this and the token's
    /// `llm_tokens` applies) [default: the token's, else 200000].
    #[arg(long, value_name = "N")]
    pub llm_tokens: Option<u64>,

    /// Store the prompts and completions of the run's model calls in the event log (bounded like every payload).
    /// Off by default: only sizes, tokens, latency and outcomes are recorded.
    #[arg(long)]
    pub record_prompts: bool,

    /// Let the agent read (`ro`) or read and write (`rw`) its persistent state.
    #[arg(long, value_name = "ro|rw", value_parser = grants::parse_state)]
    pub state: Option<grants::StateGrant>,

    /// The capability token that authorizes the run (a file, `-` for stdin, or the base64 itself). Without it, the
    /// operator's own flags are minted into a short-lived token with the local root key.
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,

    /// Fuel budget (about one unit per instruction), or `unlimited` [default: the token's, else 10000000000].
    #[arg(long, value_name = "N", value_parser = parse_fuel)]
    pub fuel: Option<u64>,

    /// Wall-clock limit, e.g. 500ms, 30s, 2m [default: the token's, else 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,

    /// Cap on the guest's total linear memory, e.g. 64MiB [default: the token's, else 512MiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_memory: Option<u64>,

    /// Cap on each of the guest's stdout and stderr, e.g. 1MiB.
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = parse_size)]
    pub max_output: u64,

    /// Cap on the records of each kind (observations, tool calls, state writes) the run may add to the event log;
    /// the first call past it records one `limit.reached` event, later ones get an error value.
    #[arg(long, value_name = "N", default_value_t = crate::sandbox::budget::DEFAULT_MAX_RECORDS)]
    pub max_records: u64,

    /// Task id handed to an agent (default: a fresh id).
    #[arg(long, value_name = "ID")]
    pub task_id: Option<String>,

    /// Task input for an agent, as JSON (default `{}`).
    #[arg(long, value_name = "JSON", conflicts_with = "input_file")]
    pub input: Option<String>,

    /// Read the task input from a file (`-` for stdin).
    #[arg(long, value_name = "FILE")]
    pub input_file: Option<PathBuf>,

    /// Print a JSON run report on stdout instead of the guest's output.
    #[arg(long)]
    pub json: bool,

    /// Run the task N times in this process, each in a fresh sandbox (for load tests); reports the last run and
    /// the process's memory before and after.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,

    /// Run P copies concurrently (each `--repeat` times), on the host's worker threads (for load tests). Past about
    /// 9,000 copies Linux's default `vm.max_map_count` (65530) is too low: each live instance maps about 7 regions.
    #[arg(long, value_name = "P", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=MAX_PARALLEL))]
    pub parallel: u32,

    /// The component (or preview 1 module) to run, or the name of an installed agent package.
    pub component: PathBuf,

    /// Arguments for a command component (after the component path; use `--` before ones that start with `-`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

impl RunCommand {
    pub fn execute(self, home: &Home) -> i32 {
        if let Some(server) = self.server.clone() {
            return crate::commands::remote::run(&self, &server);
        }
        // Spans of the run (load, authorize, run, record) are logged only when RUST_LOG asks for them.
        let _telemetry = std::env::var_os("RUST_LOG").map(|_| crate::commands::init_logging("text"));
        let json = self.json;
        // One run reads each cached file (the keys, above all) once or twice: watching it and every directory above
        // it would cost more than the `stat` calls it saves (an inotify watch on a directory with many entries,
        // such as `/tmp`, takes about a millisecond), from the first read on.
        if self.single() {
            crate::filecache::watch::WATCHER.disable();
        }
        // An installed package is checked (digest on disk, signature against the home's trust now) before anything
        // else; its refusals keep the plugin commands' exit codes.
        let source = match self.source(home) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("toka-host: {}", crate::error::one_line(&e.to_string()));
                return e.exit_code();
            }
        };
        // One run in this process needs no worker threads: it runs on this thread (blocking file calls still go to
        // tokio's blocking pool), which saves starting two workers and handing each wake-up between threads.
        // Repeated and parallel runs use a worker per core.
        crate::sandbox::fds::plan(self.parallel as usize);
        let runtime = if self.single() {
            tokio::runtime::Builder::new_current_thread().enable_all().build()
        } else {
            tokio::runtime::Builder::new_multi_thread().enable_all().build()
        };
        let single = self.single();
        let report = match runtime {
            Ok(rt) => {
                let report = rt.block_on(self.run(home, source));
                // One run, ended: its events are durable and its output written. The process exits now, without
                // taking down the runtime (joining its blocking threads) first; see also `run`.
                if single {
                    std::mem::forget(rt);
                }
                report
            }
            Err(e) => Err(RunError::host(format!("cannot start the async runtime: {e}"))),
        };
        let report = match report {
            Ok(r) => r,
            Err(e) => {
                // One line, as the service says it (a reason may carry a line break or trailing blanks).
                let r = RunReport::refused(&e);
                eprintln!("toka-host: {}", r.error.as_deref().unwrap_or_default());
                if json {
                    print_json(&serde_json::json!(r));
                }
                return r.exit_code;
            }
        };
        report.exit_code
    }

    async fn run(self, home: &Home, source: Source) -> Result<RunReport, RunError> {
        // A first compile of a large component says so on stderr (a spinner on a terminal).
        let options = HostOptions {
            // The pool's fixed slots make repeated instantiation cheap, but more copies than slots would fail.
            pooling: (self.repeat > 1 || self.parallel > 1) && self.parallel <= POOLED_PARALLEL,
            progress: Some(crate::progress::Delayed::console()),
            record_prompts: self.record_prompts,
        };
        // The run begins while the host opens: its component file loads from the start, and its start is submitted
        // as soon as the host stands. The token is read once, here: `--token -` reads stdin, which cannot be read
        // twice. A run whose flags cannot be read is refused once the host (and its log) is open.
        let (run, unread) = match self.spec(source) {
            Ok(spec) => (Some(spec), None),
            Err(e) => (None, Some(e)),
        };
        let host = tracing::info_span!("open", home = %home.dir.display())
            .in_scope(|| Host::open_loading(home.clone(), options, run))?;
        // This process ends with the run: every event it records is durable once acknowledged, so redb's clean
        // close (four fdatasyncs) is skipped and the next open loads the allocator state the last commit recorded.
        host.db().keep_open_until_exit();
        let runner = host.runner();
        let output = OutputMode { echo: !self.json, capture: self.json };
        if output.echo {
            // Started while the component loads, not at the guest's first write.
            crate::sandbox::output::start_echo(crate::sandbox::output::Echo::Stdout);
        }
        let prepared = match unread {
            Some(error) => Err(Refused::from(error)),
            None => host.prepare_preloaded(&runner),
        };
        let Ready { run_id, program, invocation, grants: authorized, limits, started } = match prepared {
            Ok(p) => p,
            Err(Refused { error, started }) => {
                // The refusal is recorded too (as the run's ending if its start already was); failing to record it
                // must not hide the refusal itself.
                if let Err(record) = runner.record_refusal_after(&self.component, &error, started.as_ref()).await {
                    eprintln!("toka-host: warning: could not record the refusal: {record}");
                }
                return Err(error);
            }
        };

        // The process's memory is reported for repeated runs only (reading it costs a pass over /proc).
        let many = !self.single();
        let rss = || if many { crate::run::resident_set_bytes() } else { 0 };
        let rss_before = rss();
        let control = crate::run::RunControl { run_id: Some(run_id), started, ..Default::default() };
        let first = runner.run_with(&program, &authorized, &limits, &invocation, output, control).await;
        let rss_first = rss();
        let mut tally = Tally::default();
        tally.add(first);
        let runner = Arc::new(runner);
        let mut copies = tokio::task::JoinSet::new();
        for copy in 0..self.parallel {
            let (runner, program, authorized, limits, invocation) =
                (runner.clone(), program.clone(), authorized.clone(), limits.clone(), invocation.clone());
            // The first copy's first run already ran above.
            let runs = if copy == 0 { self.repeat - 1 } else { self.repeat };
            copies.spawn(async move {
                let mut tally = Tally::default();
                for _ in 0..runs {
                    tally.add(runner.run(&program, &authorized, &limits, &invocation, output).await);
                }
                tally
            });
        }
        while let Some(joined) = copies.join_next().await {
            tally.merge(joined.map_err(|e| RunError::host(format!("a parallel run panicked: {e}")))?);
        }
        let rss_after = rss();
        let total_runs = u64::from(self.repeat) * u64::from(self.parallel);
        let Tally { worst, failures, outcomes, .. } = tally;
        let report = worst.expect("at least one run");

        if self.json {
            let mut value = serde_json::json!(report);
            if total_runs > 1 {
                value["repeat"] = serde_json::json!({
                    "runs": total_runs,
                    "failures": failures,
                    "outcomes": outcomes,
                    "rss_before_bytes": rss_before,
                    "rss_after_first_bytes": rss_first,
                    "rss_after_last_bytes": rss_after,
                });
            }
            print_json(&value);
        } else {
            // The guest's echoed output first, then the host's own lines.
            crate::sandbox::output::drain_echo();
            print_ending(report.result.as_deref(), &report.denied, report.error.as_deref(), report.outcome);
            if report.unechoed_bytes > 0 {
                eprintln!(
                    "toka-host: warning: {} bytes of the guest's output were not echoed: the host's output was not \
                     read before the run's deadline",
                    report.unechoed_bytes
                );
            }
            if total_runs > 1 {
                let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
                eprintln!(
                    "toka-host: {total_runs} runs, {failures} failed; resident memory {:.1} MiB before, {:.1} MiB \
                     after the first run, {:.1} MiB after the last",
                    mib(rss_before),
                    mib(rss_first),
                    mib(rss_after)
                );
            }
        }
        // One run, ended: the process exits next, so the host is not taken down piece by piece (the engine's code
        // unmapped, the log's writer thread joined). Every event the run recorded was acknowledged durable before
        // its report was made, and the database is not closed anyway (above), so nothing is lost.
        if self.single() {
            // Unless its writer is moving the log's old rows to the archive (once per thousands of runs).
            host.log().stats().wait_for_upkeep();
            std::mem::forget(host);
            // Nor is its component's code unmapped.
            std::mem::forget(runner);
        }
        Ok(report)
    }

    /// One run, neither repeated nor parallel: the process ends with it.
    fn single(&self) -> bool {
        self.repeat == 1 && self.parallel == 1
    }

    /// What to run: the installed agent package of that name (a bare name, no `/`, not ending in `.wasm`), else
    /// the file.
    fn source(&self, home: &Home) -> Result<Source, crate::plugin::PluginError> {
        let text = self.component.to_string_lossy();
        let bare = !text.contains('/') && !text.ends_with(".wasm") && crate::tools::check_name(&text).is_ok();
        let installed = if bare { crate::plugin::installed_agent(&home.dir, &text)? } else { None };
        Ok(installed.unwrap_or_else(|| Source::Path(self.component.clone())))
    }

    /// The run these flags ask for.
    pub(crate) fn spec(&self, source: Source) -> Result<RunSpec, RunError> {
        let token = self.token.as_deref().map(crate::commands::token::read_token).transpose();
        let input = match (&self.input, &self.input_file) {
            (Some(text), _) => Some(text.clone()),
            (None, Some(path)) => Some(read_input(path)?),
            (None, None) => None,
        };
        Ok(RunSpec {
            source,
            task_id: self.task_id.clone(),
            input,
            args: self.args.clone(),
            grants: self.grants.request(self.inherit_stdin, self.state.unwrap_or_default()),
            tools: self.tools.clone(),
            models: self.models.clone(),
            spawn: self.spawn.clone(),
            limits: LimitRequest {
                fuel: self.fuel,
                timeout: self.timeout,
                max_memory: self.max_memory,
                max_output: Some(self.max_output),
                max_records: Some(self.max_records),
                llm_tokens: self.llm_tokens,
                max_spawn_depth: self.max_spawn_depth,
                max_spawns: self.max_spawns,
            },
            token: token.map_err(token_arg_error)?,
            run_id: None,
        })
    }
}

/// The host's own lines once a run has ended (text mode, after the guest's output): the agent's result on stdout,
/// then each denial and the error on stderr. The same for a run here and one on a server.
pub(crate) fn print_ending(result: Option<&str>, denied: &[String], error: Option<&str>, outcome: Outcome) {
    if let Some(result) = result {
        let mut out = std::io::stdout().lock();
        // A closed stdout (e.g. `| head`) is not the guest's failure; nothing useful to do about it.
        drop(writeln!(out, "{result}").and_then(|()| out.flush()));
    }
    // What the guest could not do for want of a grant: after its own output, naming the grant.
    for denied in denied {
        eprintln!("toka-host: denied: {denied}");
    }
    // A command's non-zero status is its own business, as with `wasmtime run`: no extra line.
    if let Some(error) = error.filter(|_| outcome != Outcome::Exited) {
        eprintln!("toka-host: {error}");
    }
}

/// The run's requested rights in the token's terms: each granted directory by its canonical host path.
pub fn token_request(
    agent: &str,
    net: &[NetGrant],
    a: &grants::Authorized,
    limits: &Limits,
    component: Option<String>,
) -> crate::token::RunRequest {
    use crate::token::Grant;
    let grant = |kind: &str, value: String, mode: &str| Grant { kind: kind.into(), value, mode: mode.into() };
    let mut requested = Vec::new();
    for d in &a.dirs {
        let path =
            crate::token::normalize_dir(&d.host.to_string_lossy()).unwrap_or_else(|_| d.host.display().to_string());
        requested.push(grant("fs", path, if d.read_only { "ro" } else { "rw" }));
    }
    requested.extend(a.env.iter().map(|(name, _)| grant("env", name.clone(), "")));
    requested.extend(net.iter().map(|n| grant("net", n.canonical(), "")));
    match a.state {
        grants::StateGrant::None => {}
        grants::StateGrant::ReadOnly => requested.push(grant("state", String::new(), "ro")),
        grants::StateGrant::ReadWrite => requested.push(grant("state", String::new(), "rw")),
    }
    if a.inherit_stdin {
        requested.push(grant("stdin", String::new(), ""));
    }
    crate::token::RunRequest {
        agent: agent.to_string(),
        grants: requested,
        limits: crate::token::TokenLimits {
            fuel: limits.fuel,
            memory: limits.max_memory,
            timeout_ms: u64::try_from(limits.timeout.as_millis()).unwrap_or(u64::MAX),
        },
        component,
        plugin: None,
    }
}

/// A `--token` that could not be read: a missing file is `file-not-found` (exit 76), anything else a refused token.
pub fn token_arg_error(e: String) -> RunError {
    if crate::commands::token::is_not_found(&e)
        && let Some((path, _)) = e.split_once(": file not found")
    {
        RunError::FileNotFound { path: path.to_string() }
    } else {
        RunError::TokenRefused(e)
    }
}

pub(crate) fn read_input(path: &std::path::Path) -> Result<String, RunError> {
    use std::io::Read;
    let mut text = String::new();
    let limit = MAX_INPUT as u64 + 1;
    let result = if path.as_os_str() == "-" {
        std::io::stdin().take(limit).read_to_string(&mut text)
    } else {
        match std::fs::File::open(path) {
            Ok(f) => f.take(limit).read_to_string(&mut text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RunError::InvalidInput(format!("input file {} not found", path.display())));
            }
            Err(e) => Err(e),
        }
    };
    result.map_err(|e| RunError::InvalidInput(format!("cannot read input file {}: {e}", path.display())))?;
    Ok(text)
}

pub(crate) fn print_json(value: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    drop(writeln!(out, "{value:#}").and_then(|()| out.flush()));
}

/// Most `--parallel` copies.
const MAX_PARALLEL: i64 = 10_000;

/// Most `--parallel` copies that run on the pooling allocator (its slots: 64 component instances, each run's nested
/// tool calls included); more run on instances allocated on demand.
const POOLED_PARALLEL: u32 = 8;

/// What `--repeat`/`--parallel` runs came to: the worst report (the process exits with its code), the number of
/// failures and a count per outcome.
#[derive(Default)]
struct Tally {
    worst: Option<RunReport>,
    failures: u64,
    outcomes: BTreeMap<String, u64>,
}

impl Tally {
    /// How bad an ending is: success is best; a host fault is worst; then refusals and limits, in exit-code order.
    fn severity(r: &RunReport) -> (u8, i32) {
        match r.outcome {
            Outcome::Success => (0, 0),
            Outcome::HostError => (3, 0),
            Outcome::Exited => (1, r.exit_code),
            _ => (2, r.exit_code),
        }
    }

    fn add(&mut self, report: RunReport) {
        self.failures += u64::from(report.exit_code != 0);
        let name = serde_json::to_value(report.outcome).ok().and_then(|v| v.as_str().map(String::from));
        *self.outcomes.entry(name.unwrap_or_default()).or_default() += 1;
        // The first report of the worst severity is kept, so equal failures report the earliest.
        if self.worst.as_ref().is_none_or(|w| Self::severity(&report) > Self::severity(w)) {
            self.worst = Some(report);
        }
    }

    fn merge(&mut self, other: Tally) {
        self.failures += other.failures;
        for (k, n) in other.outcomes {
            *self.outcomes.entry(k).or_default() += n;
        }
        if let Some(w) = other.worst
            && self.worst.as_ref().is_none_or(|mine| Self::severity(&w) > Self::severity(mine))
        {
            self.worst = Some(w);
        }
    }
}
