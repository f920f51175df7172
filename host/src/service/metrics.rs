//! The service's counters, served at `/metrics` in the Prometheus text exposition format (0.0.4): runs by outcome,
//! run latency, fuel used, events appended and group-commit batch sizes, token refusals, tool calls, compile cache
//! hits, runs in flight and queued, HTTP requests by route and status, clients' connections (open, and refused by
//! bound), the process's file descriptors (its limit, the guests' part, what sandboxes hold), and model calls through
//! the gateway (by model and outcome, with tokens and time).
//!
//! Label values come only from closed sets the host defines (outcomes, route templates, status codes, the models the
//! operator configured), never from what a client sent, so a client cannot grow the set of series.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the run latency histogram, in seconds.
const LATENCY_BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];
/// Upper bounds of the group-commit batch size histogram, in operations.
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 256.0, 1024.0];

/// A histogram: cumulative bucket counts, sum and count.
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram { bounds, counts: vec![0; bounds.len()], sum: 0.0, count: 0 }
    }

    fn observe(&mut self, v: f64) {
        for (i, b) in self.bounds.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str) {
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// Every metric of one service.
#[derive(Debug)]
pub struct Metrics {
    runs: Mutex<BTreeMap<String, u64>>,
    latency: Mutex<Histogram>,
    fuel: AtomicU64,
    token_refusals: AtomicU64,
    tool_calls: Mutex<BTreeMap<String, u64>>,
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    pub in_flight: AtomicU64,
    pub queued: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            runs: Mutex::default(),
            latency: Mutex::new(Histogram::new(&LATENCY_BUCKETS)),
            fuel: AtomicU64::new(0),
            token_refusals: AtomicU64::new(0),
            tool_calls: Mutex::default(),
            requests: Mutex::default(),
            in_flight: AtomicU64::new(0),
            queued: AtomicU64::new(0),
        }
    }
}

/// What the metrics read from the rest of the host when they are rendered.
#[derive(Debug, Default, Clone)]
pub struct HostCounters {
    pub events_appended: u64,
    pub batches: Vec<(f64, u64)>,
    pub batch_sum: f64,
    pub batch_count: u64,
    pub cache_hits: u64,
    /// Model usage through the gateway, per configured model.
    pub llm: Vec<crate::llm::ModelUsage>,
    /// Clients' connections (see [`crate::http`]).
    pub connections: crate::http::ConnectionStats,
    /// The process's file descriptor limit, the guests' part of it, and what live sandboxes hold of that part (see
    /// [`crate::sandbox::fds`]).
    pub descriptors: (usize, usize, usize),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Metrics {
    /// A run ended with `outcome` after `seconds`, using `fuel`.
    pub fn run_ended(&self, outcome: &str, seconds: f64, fuel: u64) {
        *lock(&self.runs).entry(outcome.to_string()).or_default() += 1;
        lock(&self.latency).observe(seconds);
        self.fuel.fetch_add(fuel, Ordering::Relaxed);
        if outcome == "token-refused" {
            self.token_refusals.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A request's bearer token was refused.
    pub fn token_refused(&self) {
        self.token_refusals.fetch_add(1, Ordering::Relaxed);
    }

    /// A tool call through the API ended with `outcome`.
    pub fn tool_called(&self, outcome: &str) {
        *lock(&self.tool_calls).entry(outcome.to_string()).or_default() += 1;
    }

    /// An HTTP request to the route template `route` ended with `status`.
    pub fn request(&self, method: &str, route: &str, status: u16) {
        *lock(&self.requests).entry((method.to_string(), route.to_string(), status)).or_default() += 1;
    }

    /// The exposition text.
    pub fn render(&self, host: &HostCounters) -> String {
        let mut out = String::with_capacity(4096);
        let mut family = |name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            name.to_string()
        };
        let name = family("toka_runs_total", "counter", "Runs ended, by outcome.");
        let mut body = String::new();
        for (outcome, n) in lock(&self.runs).iter() {
            let _ = writeln!(body, "{name}{{outcome=\"{outcome}\"}} {n}");
        }
        out.push_str(&body);
        let name = {
            let _ = writeln!(out, "# HELP toka_run_duration_seconds Wall time of runs, from start to end.");
            let _ = writeln!(out, "# TYPE toka_run_duration_seconds histogram");
            "toka_run_duration_seconds"
        };
        lock(&self.latency).write(&mut out, name);
        let simple = |out: &mut String, name: &str, kind: &str, help: &str, v: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        simple(
            &mut out,
            "toka_fuel_consumed_total",
            "counter",
            "Fuel used by runs.",
            self.fuel.load(Ordering::Relaxed).to_string(),
        );
        simple(
            &mut out,
            "toka_token_refusals_total",
            "counter",
            "Requests and runs refused for their token.",
            self.token_refusals.load(Ordering::Relaxed).to_string(),
        );
        let _ = writeln!(out, "# HELP toka_tool_calls_total Tool calls through the API, by outcome.");
        let _ = writeln!(out, "# TYPE toka_tool_calls_total counter");
        for (outcome, n) in lock(&self.tool_calls).iter() {
            let _ = writeln!(out, "toka_tool_calls_total{{outcome=\"{outcome}\"}} {n}");
        }
        simple(
            &mut out,
            "toka_events_appended_total",
            "counter",
            "Events this process appended to the log.",
            host.events_appended.to_string(),
        );
        let _ = writeln!(out, "# HELP toka_commit_batch_operations Operations per durable group commit.");
        let _ = writeln!(out, "# TYPE toka_commit_batch_operations histogram");
        let mut cumulative = 0;
        for (bound, n) in &host.batches {
            cumulative += n;
            let _ = writeln!(out, "toka_commit_batch_operations_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "toka_commit_batch_operations_bucket{{le=\"+Inf\"}} {}", host.batch_count);
        let _ = writeln!(out, "toka_commit_batch_operations_sum {}", host.batch_sum);
        let _ = writeln!(out, "toka_commit_batch_operations_count {}", host.batch_count);
        simple(
            &mut out,
            "toka_compile_cache_hits_total",
            "counter",
            "Components loaded from the compile cache.",
            host.cache_hits.to_string(),
        );
        simple(
            &mut out,
            "toka_runs_in_flight",
            "gauge",
            "Runs running now.",
            self.in_flight.load(Ordering::Relaxed).to_string(),
        );
        simple(
            &mut out,
            "toka_runs_queued",
            "gauge",
            "Runs waiting for a slot.",
            self.queued.load(Ordering::Relaxed).to_string(),
        );
        let _ = writeln!(out, "# HELP toka_llm_calls_total Model calls through the gateway, by model and outcome.");
        let _ = writeln!(out, "# TYPE toka_llm_calls_total counter");
        for u in &host.llm {
            for (outcome, n) in &u.calls {
                let _ = writeln!(out, "toka_llm_calls_total{{model=\"{}\",outcome=\"{outcome}\"}} {n}", u.model);
            }
        }
        let _ = writeln!(out, "# HELP toka_llm_tokens_total Model tokens used through the gateway, by model and kind.");
        let _ = writeln!(out, "# TYPE toka_llm_tokens_total counter");
        for u in &host.llm {
            let _ = writeln!(out, "toka_llm_tokens_total{{model=\"{}\",kind=\"prompt\"}} {}", u.model, u.prompt_tokens);
            let _ = writeln!(
                out,
                "toka_llm_tokens_total{{model=\"{}\",kind=\"completion\"}} {}",
                u.model, u.completion_tokens
            );
        }
        let _ = writeln!(out, "# HELP toka_llm_call_seconds_total Time spent in model calls, by model.");
        let _ = writeln!(out, "# TYPE toka_llm_call_seconds_total counter");
        for u in &host.llm {
            let _ = writeln!(out, "toka_llm_call_seconds_total{{model=\"{}\"}} {}", u.model, u.seconds);
        }
        let c = host.connections;
        simple(&mut out, "toka_http_connections_open", "gauge", "Clients' connections open now.", c.open.to_string());
        let _ = writeln!(
            out,
            "# HELP toka_http_connections_refused_total Connections refused, by the bound they were past."
        );
        let _ = writeln!(out, "# TYPE toka_http_connections_refused_total counter");
        let _ = writeln!(out, "toka_http_connections_refused_total{{bound=\"all\"}} {}", c.refused_all);
        let _ = writeln!(out, "toka_http_connections_refused_total{{bound=\"per-address\"}} {}", c.refused_per_address);
        let (limit, guests, held) = host.descriptors;
        simple(
            &mut out,
            "toka_fd_limit",
            "gauge",
            "The process's file descriptor limit (soft, after raising).",
            limit.to_string(),
        );
        simple(
            &mut out,
            "toka_fd_guest_budget",
            "gauge",
            "File descriptors guests may hold together.",
            guests.to_string(),
        );
        simple(&mut out, "toka_fd_guest_held", "gauge", "Of those, the shares live sandboxes hold.", held.to_string());
        let _ = writeln!(out, "# HELP toka_http_requests_total HTTP requests, by method, route and status.");
        let _ = writeln!(out, "# TYPE toka_http_requests_total counter");
        for ((method, route, status), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                out,
                "toka_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        out
    }
}

/// Bounds of the group-commit batch histogram (for the event log's own counters).
pub fn batch_bounds() -> &'static [f64] {
    &BATCH_BUCKETS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_labels() {
        let m = Metrics::default();
        m.run_ended("success", 0.003, 100);
        m.run_ended("success", 2.0, 50);
        m.run_ended("trap", 0.0005, 1);
        m.request("GET", "/v1/runs", 200);
        let text = m.render(&HostCounters::default());
        assert!(text.contains("toka_runs_total{outcome=\"success\"} 2\n"), "{text}");
        assert!(text.contains("toka_run_duration_seconds_bucket{le=\"0.005\"} 2\n"), "{text}");
        assert!(text.contains("toka_run_duration_seconds_bucket{le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("toka_run_duration_seconds_count 3\n"));
        assert!(text.contains("toka_fuel_consumed_total 151\n"));
        assert!(text.contains("toka_http_requests_total{method=\"GET\",route=\"/v1/runs\",status=\"200\"} 1\n"));
        let host = HostCounters {
            connections: crate::http::ConnectionStats { open: 3, refused_all: 1, refused_per_address: 2 },
            descriptors: (1_200, 944, 60),
            ..HostCounters::default()
        };
        let text = m.render(&host);
        assert!(text.contains("toka_http_connections_open 3\n"), "{text}");
        assert!(text.contains("toka_http_connections_refused_total{bound=\"per-address\"} 2\n"), "{text}");
        assert!(text.contains("toka_fd_guest_budget 944\n") && text.contains("toka_fd_guest_held 60\n"), "{text}");
    }
}
