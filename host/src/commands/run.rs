//! `toka-host run`: load a component, authorize the grants it is given, run it in a fresh sandbox, report.

use crate::component::World;
use crate::db::Db;
use crate::engine::EngineOptions;
use crate::error::RunError;
use crate::events::{EventLog, GroupCommit};
use crate::grants::{self, NetGrant};
use crate::report::RunReport;
use crate::run::{Invocation, Limits, MAX_INPUT, Program, Runner};
use crate::sandbox::OutputMode;
use crate::units::{parse_duration, parse_size};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Run an agent component, a wasi:cli/command component, or a WASI preview 1 module.
///
/// Nothing is granted unless asked for: no files, no environment, no network, stdin closed. Exit codes: 0 success,
/// the guest's own status for commands, 65 agent error, 66 trap, 67 stack overflow, 68 out of fuel, 69 timeout,
/// 70 memory limit, 71 output limit, 72 grant refused, 73 invalid wasm, 74 not a component, 75 wrong world,
/// 76 file not found, 77 invalid input, 79 host error.
#[derive(Debug, Args)]
pub struct RunCommand {
    #[command(flatten)]
    pub grants: crate::commands::GrantFlags,

    /// Give the guest the host's stdin (closed otherwise).
    #[arg(long)]
    pub inherit_stdin: bool,

    /// Let an agent call the installed tool NAME (`toka-host tool list`) through the host. Repeatable.
    #[arg(long = "allow-tool", value_name = "NAME")]
    pub tools: Vec<String>,

    /// Let the agent read (`ro`) or read and write (`rw`) its persistent state.
    #[arg(long, value_name = "ro|rw", value_parser = grants::parse_state)]
    pub state: Option<grants::StateGrant>,

    /// The capability token that authorizes the run (a file, `-` for stdin, or the base64 itself). Without it, the
    /// operator's own flags are minted into a short-lived token with the local root key.
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,

    /// The database the run is recorded in (default $TOKA_HOME/toka.redb, ~/.local/share/toka/toka.redb).
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,

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

    /// Run P copies concurrently (each `--repeat` times), on the host's worker threads (for load tests).
    #[arg(long, value_name = "P", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub parallel: u32,

    /// Directory for compiled components (default $TOKA_CACHE_DIR, else ~/.cache/toka-host).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Do not read or write the compile cache.
    #[arg(long)]
    pub no_cache: bool,

    /// The component (or preview 1 module) to run.
    pub component: PathBuf,

    /// Arguments for a command component (after the component path; use `--` before ones that start with `-`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

fn parse_fuel(text: &str) -> Result<u64, String> {
    if text.eq_ignore_ascii_case("unlimited") {
        return Ok(u64::MAX);
    }
    text.replace('_', "").parse().map_err(|_| format!("invalid fuel `{text}`: expected a number or `unlimited`"))
}

impl RunCommand {
    pub fn execute(self) -> i32 {
        let json = self.json;
        let report = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
            Ok(rt) => rt.block_on(self.run()),
            Err(e) => Err(RunError::host(format!("cannot start the async runtime: {e}"))),
        };
        let report = match report {
            Ok(r) => r,
            Err(e) => {
                eprintln!("toka-host: {e}");
                let r = RunReport::refused(&e);
                if json {
                    print_json(&serde_json::json!(r));
                }
                return r.exit_code;
            }
        };
        report.exit_code
    }

    async fn run(self) -> Result<RunReport, RunError> {
        let options = EngineOptions {
            fuel: true,
            cache_dir: if self.no_cache {
                None
            } else {
                self.cache_dir.clone().or_else(crate::engine::default_cache_dir)
            },
            pooling: self.repeat > 1 || self.parallel > 1,
        };
        let db_path = self.db.clone().unwrap_or_else(crate::db::default_path);
        let db = Db::open(&db_path).map_err(|e| RunError::host(format!("event log: {e}")))?;
        let log = EventLog::open(db, GroupCommit::default())
            .map_err(|e| RunError::host(format!("cannot start the event log writer: {e}")))?;
        let db = log.db().clone();
        let mut runner = Runner::new(&options)?
            .with_events(Arc::new(log))
            .with_tools(crate::tools::registry::Registry::open(&crate::db::default_home()));
        // The token is read once: `--token -` reads stdin, which cannot be read twice.
        let prepared = self.token_text().and_then(|token| {
            let limits = self.limits(token.as_deref())?;
            let (program, invocation, authorized) = self.prepare(&mut runner, &db, &limits, token.as_deref())?;
            Ok((program, invocation, authorized, limits))
        });
        let (program, invocation, authorized, limits) = match prepared {
            Ok(p) => p,
            Err(e) => {
                // The refusal is recorded too; failing to record it must not hide the refusal itself.
                if let Err(record) = runner.record_refusal(&self.component, &e).await {
                    eprintln!("toka-host: warning: could not record the refusal: {record}");
                }
                return Err(e);
            }
        };
        let output = OutputMode { echo: !self.json, capture: self.json };

        let rss_before = crate::run::resident_set_bytes();
        let mut report = runner.run(&program, &authorized, &limits, &invocation, output).await;
        let mut failures = u32::from(report.exit_code != 0);
        let rss_first = crate::run::resident_set_bytes();
        let runner = Arc::new(runner);
        let mut copies = tokio::task::JoinSet::new();
        for copy in 0..self.parallel {
            let (runner, program, authorized, limits, invocation) =
                (runner.clone(), program.clone(), authorized.clone(), limits.clone(), invocation.clone());
            // The first copy's first run already ran above.
            let runs = if copy == 0 { self.repeat - 1 } else { self.repeat };
            copies.spawn(async move {
                let (mut last, mut failed) = (None, 0u32);
                for _ in 0..runs {
                    let r = runner.run(&program, &authorized, &limits, &invocation, output).await;
                    failed += u32::from(r.exit_code != 0);
                    last = Some(r);
                }
                (last, failed)
            });
        }
        while let Some(joined) = copies.join_next().await {
            let (last, failed) = joined.map_err(|e| RunError::host(format!("a parallel run panicked: {e}")))?;
            failures += failed;
            if let Some(last) = last {
                report = last;
            }
        }
        let rss_after = crate::run::resident_set_bytes();
        let total_runs = self.repeat * self.parallel;

        if self.json {
            let mut value = serde_json::json!(report);
            if total_runs > 1 {
                value["repeat"] = serde_json::json!({
                    "runs": total_runs,
                    "failures": failures,
                    "rss_before_bytes": rss_before,
                    "rss_after_first_bytes": rss_first,
                    "rss_after_last_bytes": rss_after,
                });
            }
            print_json(&value);
        } else {
            if let Some(result) = &report.result {
                let mut out = std::io::stdout().lock();
                // A closed stdout (e.g. `| head`) is not the guest's failure; nothing useful to do about it.
                drop(writeln!(out, "{result}").and_then(|()| out.flush()));
            }
            // A command's non-zero status is its own business, as with `wasmtime run`: no extra line.
            // What the guest could not do for want of a grant: after its own output, naming the grant.
            for denied in &report.denied {
                eprintln!("toka-host: denied: {denied}");
            }
            if let Some(error) = report.error.as_ref().filter(|_| report.outcome != crate::error::Outcome::Exited) {
                eprintln!("toka-host: {error}");
            }
        }
        Ok(report)
    }

    /// The `--token` argument's text (a file, stdin or the base64 itself), if given.
    fn token_text(&self) -> Result<Option<String>, RunError> {
        self.token.as_deref().map(crate::commands::token::read_token).transpose().map_err(RunError::TokenRefused)
    }

    /// The run's limits: each flag given, else the token's ceiling (with `--token`), else the default.
    fn limits(&self, token: Option<&str>) -> Result<Limits, RunError> {
        let defaults = Limits::default();
        let ceiling = match token {
            Some(text) if self.fuel.is_none() || self.timeout.is_none() || self.max_memory.is_none() => {
                Some(crate::token::limits_of(&crate::db::default_home(), text)?)
            }
            _ => None,
        };
        Ok(Limits {
            fuel: self.fuel.or(ceiling.map(|c| c.fuel)).unwrap_or(defaults.fuel),
            timeout: self.timeout.or(ceiling.map(|c| Duration::from_millis(c.timeout_ms))).unwrap_or(defaults.timeout),
            max_memory: self.max_memory.or(ceiling.map(|c| c.memory)).unwrap_or(defaults.max_memory),
            max_output: self.max_output,
            ..defaults
        })
    }

    /// Everything that can refuse the run before the guest starts, in order.
    fn prepare(
        &self,
        runner: &mut Runner,
        db: &Db,
        limits: &Limits,
        token_text: Option<&str>,
    ) -> Result<(Arc<Program>, Invocation, grants::Authorized), RunError> {
        let input = self.read_task_input()?;
        let program = runner.load(&self.component)?;
        let invocation = self.invocation(program.world(), input)?;
        let request = self.grants.request(self.inherit_stdin, self.state.unwrap_or_default());
        let mut authorized = grants::authorize(&request)?;
        let mut run_request = token_request(program.name(), &self.grants.net, &authorized, limits);
        for tool in &self.tools {
            crate::tools::check_name(tool).map_err(RunError::InvalidInput)?;
            run_request.grants.push(crate::token::Grant { kind: "tool".into(), value: tool.clone(), mode: "".into() });
        }
        let authorization = crate::token::authorize_run(&crate::db::default_home(), db, token_text, &run_request)?;
        authorized.token_id = authorization.token_id;
        authorized.rate = authorization.rate;
        authorized.token = Some(authorization.token);
        Ok((program, invocation, authorized))
    }

    /// The task input from `--input` or `--input-file`, checked to be JSON of a bounded size.
    fn read_task_input(&self) -> Result<Option<String>, RunError> {
        let input = match (&self.input, &self.input_file) {
            (Some(text), _) => text.clone(),
            (None, Some(path)) => read_input(path)?,
            (None, None) => return Ok(None),
        };
        if input.len() > MAX_INPUT {
            return Err(RunError::InvalidInput(format!(
                "task input is {} bytes, over the {MAX_INPUT} byte limit",
                input.len()
            )));
        }
        if let Err(e) = serde_json::from_str::<serde_json::Value>(&input) {
            return Err(RunError::InvalidInput(format!("task input is not valid JSON: {e}")));
        }
        Ok(Some(input))
    }

    /// What to call, decided by the component's world: an agent takes a task, a command takes arguments.
    fn invocation(&self, world: World, input: Option<String>) -> Result<Invocation, RunError> {
        match world {
            World::Command => {
                if input.is_some() || self.task_id.is_some() {
                    return Err(RunError::InvalidInput(
                        "this is a command: it takes arguments, not a task (--input, --task-id)".into(),
                    ));
                }
                Ok(Invocation::Command { args: self.args.clone() })
            }
            World::Agent | World::Tool => {
                if !self.args.is_empty() {
                    return Err(RunError::InvalidInput(
                        "this is an agent: it takes a task (--input), not command-line arguments".into(),
                    ));
                }
                let id = self.task_id.clone().unwrap_or_else(crate::run::fresh_task_id);
                Ok(Invocation::Task { id, input: input.unwrap_or_else(|| "{}".into()) })
            }
        }
    }
}

/// The run's requested rights in the token's terms: each granted directory by its canonical host path.
pub fn token_request(
    agent: &str,
    net: &[NetGrant],
    a: &grants::Authorized,
    limits: &Limits,
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
    requested.extend(net.iter().map(|n| grant("net", format!("{}:{}", n.host, n.port), "")));
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
    }
}

fn read_input(path: &std::path::Path) -> Result<String, RunError> {
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

fn print_json(value: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    drop(writeln!(out, "{value:#}").and_then(|()| out.flush()));
}
