//! Density: many concurrent agents in one process, each parked on a WASI timer, through the runner that `serve` uses
//! (one engine, one loaded program, a fresh sandbox and store per run).
//!
//! Every agent (`hostile`, `{"attack":"calls","calls":[{"sleep":{"ms":...}}]}`) sleeps far longer than its
//! deadline, so every run must end by its deadline, as a timeout. The bench prints:
//! - the resident memory of the idle host (after one warm run) and at the moment every agent was alive at once
//!   (sampled every 50 ms; the window where all were alive is known afterwards from each run's start and end), and
//!   the difference per agent, as RSS and as PSS (shared pages counted once);
//! - how late each deadline was honoured (the run's wall time over its timeout), worst and median;
//! - how many runs did not end as a timeout (each one a failure, printed with its reason).
//!
//! Run with `cargo bench --locked --workspace --bench density` (`TOKA_DENSITY_AGENTS`, default 10000;
//! `TOKA_DENSITY_TIMEOUT_S`, default 10). 10,000 agents need a `vm.max_map_count` above Linux's default 65530 (the
//! bench says so and stops if it is lower). No event log: the durable records of a run are measured by the `events`
//! bench.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use toka_benches::agent;
use toka_host::engine::EngineOptions;
use toka_host::error::Outcome;
use toka_host::grants::Authorized;
use toka_host::run::{Invocation, Limits, Runner, proportional_set_bytes, resident_set_bytes};
use toka_host::sandbox::OutputMode;

const QUIET: OutputMode = OutputMode { echo: false, capture: false };

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn mapped_regions() -> usize {
    std::fs::read_to_string("/proc/self/maps").map_or(0, |m| m.lines().count())
}

/// Mapped regions each live agent needs (its linear memory in three pieces around the copy-on-write image plus its
/// reservation, and its fiber stack with a guard page), measured: 6.85 at 10,000 agents.
const REGIONS_PER_AGENT: usize = 7;

/// When, RSS, mapped regions, and (every tenth sample) PSS.
type Sample = (Instant, u64, usize, Option<u64>);

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` (the test suite's smoke run) does not, and gets a
    // small run that still checks every figure is produced.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let agents: usize = env_or("TOKA_DENSITY_AGENTS", if smoke { 200 } else { 10_000 });
    let timeout = Duration::from_secs(env_or("TOKA_DENSITY_TIMEOUT_S", if smoke { 3 } else { 10 }));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let runner = Arc::new(Runner::new(&EngineOptions { fuel: true, cache_dir: None, pooling: false }).unwrap());
    let program = runner.load(&agent("hostile")).unwrap();
    let grants = Authorized::default();
    let invocation = |ms: u64| Invocation::Task {
        id: "density".into(),
        input: format!(r#"{{"attack":"calls","calls":[{{"sleep":{{"ms":{ms}}}}}]}}"#),
    };
    let limits = Limits { timeout, ..Limits::default() };
    // Each live instance maps a few regions; past the kernel's limit, instantiations fail with out-of-memory.
    let max_map_count: usize = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(usize::MAX);
    let needed = agents * REGIONS_PER_AGENT + 1_000;
    if max_map_count < needed {
        eprintln!(
            "density: {agents} agents need about {needed} mapped regions, over this machine's vm.max_map_count \
             ({max_map_count}); raise it (as root: sysctl -w vm.max_map_count={}) or run fewer agents \
             (TOKA_DENSITY_AGENTS)",
            needed.next_power_of_two()
        );
        std::process::exit(2);
    }

    // One warm run, so the idle figure includes everything a first run sets up.
    let warm = rt.block_on(runner.run(&program, &grants, &limits, &invocation(1), QUIET));
    assert_eq!(warm.outcome, Outcome::Success, "{:?}", warm.error);
    let idle = resident_set_bytes();
    let idle_regions = mapped_regions();

    let idle_pss = proportional_set_bytes();

    // RSS samples every 50 ms, with their time, the mapped regions, and every tenth with the PSS too (reading it walks
    // every mapping).
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (samples, stop) = (samples.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut tick = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let pss = tick.is_multiple_of(10).then(proportional_set_bytes);
                tick += 1;
                let sample = (Instant::now(), resident_set_bytes(), mapped_regions(), pss);
                samples.lock().unwrap().push(sample);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    let began = Instant::now();
    let reports = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        let long = invocation(3_600_000);
        for _ in 0..agents {
            let (runner, program, grants, limits, long) =
                (runner.clone(), program.clone(), grants.clone(), limits.clone(), long.clone());
            set.spawn(async move {
                let report = runner.run(&program, &grants, &limits, &long, QUIET).await;
                (Instant::now(), report)
            });
        }
        let mut reports = Vec::with_capacity(agents);
        while let Some(joined) = set.join_next().await {
            reports.push(joined.unwrap());
        }
        reports
    });
    let all_done = began.elapsed();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();

    // Each run's guest time span: its end minus its wall time.
    let spans: Vec<(Instant, Instant)> =
        reports.iter().map(|(end, r)| (*end - Duration::from_secs_f64(r.wall_time_ms / 1e3), *end)).collect();
    let last_start = spans.iter().map(|s| s.0).max().unwrap();
    let first_end = spans.iter().map(|s| s.1).min().unwrap();
    let samples = samples.lock().unwrap();
    let in_window: Vec<&Sample> = samples.iter().filter(|(t, ..)| *t >= last_start && *t <= first_end).collect();
    let failures: Vec<String> = reports
        .iter()
        .filter(|(_, r)| r.outcome != Outcome::Timeout)
        .map(|(_, r)| format!("{:?}: {}", r.outcome, r.error.as_deref().unwrap_or("")))
        .collect();
    let mut late: Vec<f64> = reports
        .iter()
        .filter(|(_, r)| r.outcome == Outcome::Timeout)
        .map(|(_, r)| r.wall_time_ms / timeout.as_secs_f64() / 1e3 - 1.0)
        .collect();
    late.sort_by(f64::total_cmp);

    println!(
        "DENSITY agents {agents}, timeout {:.1} s, all ended after {:.1} s; the last guest started {:.2} s in",
        timeout.as_secs_f64(),
        all_done.as_secs_f64(),
        (last_start - began).as_secs_f64()
    );
    match in_window.iter().max_by_key(|s| s.1) {
        Some((_, peak, regions, _)) => {
            let per_agent = peak.saturating_sub(idle) as f64 / agents as f64;
            println!(
                "DENSITY RSS: idle host {:.1} MiB, all {agents} alive {:.1} MiB: {:.1} KiB per agent; mapped regions \
                 {idle_regions} idle, {regions} with all alive",
                idle as f64 / (1 << 20) as f64,
                *peak as f64 / (1 << 20) as f64,
                per_agent / 1024.0
            );
            match in_window.iter().filter_map(|s| s.3).max() {
                Some(pss) => println!(
                    "DENSITY PSS: idle host {:.1} MiB, all {agents} alive {:.1} MiB: {:.1} KiB per agent (target: at \
                     most 100 KB = 97.7 KiB)",
                    idle_pss as f64 / (1 << 20) as f64,
                    pss as f64 / (1 << 20) as f64,
                    pss.saturating_sub(idle_pss) as f64 / agents as f64 / 1024.0
                ),
                None => println!("DENSITY PSS: no sample while all were alive (the window was under 0.5 s)"),
            }
        }
        None => println!(
            "DENSITY memory: never were all {agents} agents alive at once (the last started after the first ended): \
             raise TOKA_DENSITY_TIMEOUT_S"
        ),
    }
    if let (Some(worst), Some(median)) = (late.last(), late.get(late.len() / 2)) {
        println!(
            "DENSITY deadlines: {} timeouts; median {:+.1}% over the timeout, worst {:+.1}% (target: within 10%)",
            late.len(),
            median * 100.0,
            worst * 100.0
        );
    }
    println!("DENSITY failures: {} runs did not end by their deadline as a timeout", failures.len());
    for f in failures.iter().take(5) {
        println!("  {f}");
    }
    if !failures.is_empty() {
        std::process::exit(1);
    }
}
