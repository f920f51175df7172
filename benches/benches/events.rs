//! Event log append throughput and latency: group commit (one durable redb transaction per batch of waiting appends)
//! vs one durable transaction per event, with 64 concurrent appenders on the same disk in the same run.
//! Run with `cargo bench -p toka-benches --bench events`. Prints events/s, p50/p99 latency and the ratio.

use criterion::{Criterion, criterion_group, criterion_main};
use std::time::{Duration, Instant};
use toka_host::db::Db;
use toka_host::events::{EventLog, GroupCommit};
use toka_host::kernel::{Op, Operation};
use toka_host::run::operation;

const APPENDERS: usize = 64;

/// An agent's observation: one operation, one event.
fn observation(i: usize) -> Operation {
    operation(Op::EmitObservation {
        run_id: "run-bench".into(),
        kind: "bench.tick".into(),
        payload: serde_json::json!({ "i": i, "note": "a typical small payload" }),
    })
}

fn open(path: &std::path::Path, policy: GroupCommit) -> EventLog {
    let log = EventLog::open(Db::open(path).unwrap(), policy).unwrap();
    let start = Op::StartRun {
        run_id: "run-bench".into(),
        agent: "bench".into(),
        task_id: None,
        detail: serde_json::json!({}),
    };
    log.submit(operation(start)).unwrap();
    log
}

/// `APPENDERS` threads each append `per_thread` events; returns the wall time and every append's latency.
fn burst(log: &EventLog, per_thread: usize) -> (Duration, Vec<Duration>) {
    let start = Instant::now();
    let latencies = std::thread::scope(|s| {
        let threads: Vec<_> = (0..APPENDERS)
            .map(|t| {
                s.spawn(move || {
                    (0..per_thread)
                        .map(|i| {
                            let t0 = Instant::now();
                            assert!(log.submit(observation(t * per_thread + i)).expect("submit").rejected.is_none());
                            t0.elapsed()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads.into_iter().flat_map(|h| h.join().unwrap()).collect::<Vec<_>>()
    });
    (start.elapsed(), latencies)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summary(name: &str, log: &EventLog, per_thread: usize) -> f64 {
    let (wall, mut lat) = burst(log, per_thread);
    lat.sort_unstable();
    let rate = lat.len() as f64 / wall.as_secs_f64();
    println!(
        "{name}: {} events by {APPENDERS} appenders in {:.2} s = {rate:.0} events/s; latency p50 {:.2} ms, p99 {:.2} ms",
        lat.len(),
        wall.as_secs_f64(),
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
    );
    rate
}

fn appends(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let grouped = open(&dir.path().join("group.redb"), GroupCommit::default());
    let single = open(&dir.path().join("single.redb"), GroupCommit { max_batch: 1 });

    let mut g = c.benchmark_group("event_append_64_appenders");
    g.sample_size(10);
    g.bench_function("group_commit_x16", |b| b.iter_custom(|iters| (0..iters).map(|_| burst(&grouped, 16).0).sum()));
    g.bench_function("one_txn_per_event_x1", |b| b.iter_custom(|iters| (0..iters).map(|_| burst(&single, 1).0).sum()));
    g.finish();

    let group_rate = summary("group commit", &grouped, 200);
    let single_rate = summary("one transaction per event", &single, 8);
    println!("RATIO event_append: group commit / one-per-transaction = {:.1}x", group_rate / single_rate);
}

criterion_group!(benches, appends);
criterion_main!(benches);
