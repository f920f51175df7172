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
        rate: None,
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

/// The same burst from `APPENDERS` async tasks on a two-worker runtime, the way runs submit (no OS thread each).
fn burst_async(
    rt: &tokio::runtime::Runtime,
    log: &std::sync::Arc<EventLog>,
    per_task: usize,
) -> (Duration, Vec<Duration>) {
    let start = Instant::now();
    let latencies = rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..APPENDERS {
            let log = log.clone();
            tasks.spawn(async move {
                let mut lat = Vec::with_capacity(per_task);
                for i in 0..per_task {
                    let t0 = Instant::now();
                    let applied = log.submit_async(observation(t * per_task + i)).await.expect("submit");
                    assert!(applied.rejected.is_none());
                    lat.push(t0.elapsed());
                }
                lat
            });
        }
        let mut all = Vec::new();
        while let Some(lat) = tasks.join_next().await {
            all.extend(lat.unwrap());
        }
        all
    });
    (start.elapsed(), latencies)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summary(name: &str, (wall, mut lat): (Duration, Vec<Duration>)) -> f64 {
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

    let group_rate = summary("threads, group commit", burst(&grouped, 200));
    let single_rate = summary("threads, one transaction per event", burst(&single, 8));
    println!(
        "RATIO event_append (64 OS threads): group commit / one-per-transaction = {:.1}x",
        group_rate / single_rate
    );

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (grouped, single) = (std::sync::Arc::new(grouped), std::sync::Arc::new(single));
    let group_rate = summary("async tasks, group commit", burst_async(&rt, &grouped, 200));
    let single_rate = summary("async tasks, one transaction per event", burst_async(&rt, &single, 8));
    println!(
        "RATIO event_append (64 async tasks): group commit / one-per-transaction = {:.1}x",
        group_rate / single_rate
    );
}

criterion_group!(benches, appends);
criterion_main!(benches);
