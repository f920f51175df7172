//! What a run did, as `--json` prints it and as the CLI summarizes it.

use crate::component::World;
use crate::error::Outcome;
use crate::sandbox::log::LogRecord;
use serde::Serialize;

/// The run report. Fields that do not apply are omitted from the JSON.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub outcome: Outcome,
    /// The process exit code `toka-host run` ends with.
    pub exit_code: i32,
    /// One-line description of a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What an agent's `run` returned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_error: Option<AgentErrorReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub component: Option<ComponentReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// The run's id in the event log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    pub fuel_consumed: u64,
    pub wall_time_ms: f64,
    pub peak_memory_bytes: u64,
    pub stdout: String,
    pub stderr: String,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub logs: Vec<LogRecord>,
    #[serde(skip_serializing_if = "is_zero")]
    pub logs_dropped: u64,
    /// Bytes of the guest's stdout and stderr that were not echoed: the host's stream was not being read before
    /// the run's deadline.
    #[serde(skip_serializing_if = "is_zero")]
    pub unechoed_bytes: u64,
    /// What the guest tried without the grant for it, each naming the missing grant (see `sandbox::denied`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub denied: Vec<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Serialize)]
pub struct AgentErrorReport {
    /// `invalid-input`, `failed` or `denied`.
    pub kind: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ComponentReport {
    pub path: String,
    pub sha256: String,
    pub world: World,
    /// A WASI preview 1 core module, run as it is (not a component).
    pub core_module: bool,
    pub compile_ms: f64,
    pub cache_hit: bool,
}

impl RunReport {
    /// A report for a run cancelled while it waited to start.
    pub fn cancelled_before_start() -> Self {
        RunReport::refused(&crate::error::RunError::Cancelled)
    }

    /// A report for a run that ended before the guest started.
    pub fn refused(err: &crate::error::RunError) -> Self {
        RunReport::failed_before_start(err.outcome(), crate::error::one_line(&err.to_string()))
    }

    /// A report for a run that ended before the guest started, for `outcome`, saying `error` (a server's refusal,
    /// read back by a client).
    /// A report as another node gave it (JSON, as this type serializes), with what a plan reads of it: outcome,
    /// exit code, error, result, fuel, time, memory and output. An unknown outcome reads as a host error.
    pub fn from_json(value: &serde_json::Value) -> Self {
        let text = |key: &str| value[key].as_str().map(String::from);
        let outcome = value["outcome"].as_str().and_then(Outcome::from_name).unwrap_or(Outcome::HostError);
        let mut report = RunReport::failed_before_start(outcome, String::new());
        report.error = text("error");
        report.exit_code = value["exit_code"].as_i64().and_then(|c| i32::try_from(c).ok()).unwrap_or(report.exit_code);
        report.result = text("result");
        report.task_id = text("task_id");
        report.run_id = text("run_id");
        report.fuel_consumed = value["fuel_consumed"].as_u64().unwrap_or(0);
        report.wall_time_ms = value["wall_time_ms"].as_f64().unwrap_or(0.0);
        report.peak_memory_bytes = value["peak_memory_bytes"].as_u64().unwrap_or(0);
        report.stdout = text("stdout").unwrap_or_default();
        report.stderr = text("stderr").unwrap_or_default();
        report.stdout_bytes = value["stdout_bytes"].as_u64().unwrap_or(0);
        report.stderr_bytes = value["stderr_bytes"].as_u64().unwrap_or(0);
        report
    }

    pub fn failed_before_start(outcome: Outcome, error: String) -> Self {
        RunReport {
            outcome,
            exit_code: outcome.exit_code(),
            error: Some(error),
            result: None,
            agent_error: None,
            component: None,
            task_id: None,
            run_id: None,
            fuel_consumed: 0,
            wall_time_ms: 0.0,
            peak_memory_bytes: 0,
            stdout: String::new(),
            stderr: String::new(),
            stdout_bytes: 0,
            stderr_bytes: 0,
            logs: Vec::new(),
            logs_dropped: 0,
            unechoed_bytes: 0,
            denied: Vec::new(),
        }
    }
}
