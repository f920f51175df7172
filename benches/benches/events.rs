//! Event log append throughput and latency: group commit (one durable redb transaction per batch of waiting appends)
//! vs one durable transaction per event, with 64 concurrent appenders on the same disk in the same run.
//! Run with `cargo bench --locked --workspace --bench events`. Prints events/s, p50/p99 latency and the ratio.
//!
//! It also measures the storage floor under those figures, with none of toka-host's code in the way: the same bytes
//! (one event record and one operation of the sizes the log really stores) written 1 and 64 at a time, first as
//! pre-encoded inserts into redb (same concurrency mode, one durable transaction per batch), then as plain
//! `pwrite` + `fdatasync` to a file. 64 x (time of 1) / (time of 64) is the highest group-commit ratio that storage
//! allows on this disk.
//!
//! And the cost of anchoring: the same submissions to a writer that signs a checkpoint in every commit and to one
//! without a signer, interleaved in the same run (one operation per commit, where the checkpoint weighs most, and
//! 64 appenders in group commit), plus the CPU time of signing one checkpoint alone.

use criterion::{Criterion, criterion_group, criterion_main};
use redb::ReadableDatabase;
use std::time::{Duration, Instant};
use toka_host::db::{Db, EVENTS, OPS};
use toka_host::events::checkpoint::{Chain, Heads};
use toka_host::events::{EventLog, GroupCommit, Signer};
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
    open_signed(path, policy, None)
}

fn open_signed(path: &std::path::Path, policy: GroupCommit, signer: Option<Signer>) -> EventLog {
    let log = EventLog::open(Db::open(path).unwrap(), policy, signer).unwrap();
    let start = Op::StartRun {
        run_id: "run-bench".into(),
        agent: "bench".into(),
        task_id: None,
        detail: serde_json::json!({}),
        rate: None,
        node: None,
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

/// The sizes of the newest event record and operation stored in `db`.
fn record_sizes(db: &Db) -> (usize, usize) {
    let txn = db.redb().begin_read().unwrap();
    let last = |table: redb::TableDefinition<u64, &[u8]>| {
        let t = txn.open_table(table).unwrap();
        redb::ReadableTable::last(&t).unwrap().map(|(_, v)| v.value().len()).unwrap()
    };
    (last(EVENTS), last(OPS))
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort_unstable();
    times[times.len() / 2]
}

/// Median time of one durable redb transaction inserting `n` pre-encoded (event, operation) pairs.
fn redb_floor(db: &redb::Database, n: usize, sizes: (usize, usize), seq: &mut u64) -> Duration {
    let (event, op) = (vec![b'e'; sizes.0], vec![b'o'; sizes.1]);
    let times = (0..200)
        .map(|_| {
            let t0 = Instant::now();
            let txn = db.begin_write().unwrap();
            {
                let (mut events, mut ops) = (txn.open_table(EVENTS).unwrap(), txn.open_table(OPS).unwrap());
                for _ in 0..n {
                    *seq += 1;
                    events.insert(*seq, event.as_slice()).unwrap();
                    ops.insert(*seq, op.as_slice()).unwrap();
                }
            }
            txn.commit().unwrap();
            t0.elapsed()
        })
        .collect();
    median(times)
}

/// Median time of one `pwrite` of `n` records' bytes after the previous ones, then `fdatasync`. The file is written
/// out in full beforehand, so no write allocates blocks or changes the file's size (a preallocated write-ahead log,
/// the cheapest durable append there is).
fn file_floor(file: &std::fs::File, n: usize, sizes: (usize, usize), offset: &mut u64) -> Duration {
    use std::os::unix::fs::FileExt;
    let bytes = vec![b'x'; n * (sizes.0 + sizes.1)];
    let times = (0..200)
        .map(|_| {
            let t0 = Instant::now();
            file.write_all_at(&bytes, *offset).unwrap();
            file.sync_data().unwrap();
            *offset += bytes.len() as u64;
            t0.elapsed()
        })
        .collect();
    median(times)
}

/// The storage floor: what redb alone, and a plain file alone, allow for 64 vs 1 records per durable write.
fn floor(_: &mut Criterion) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let log = open(&dir.path().join("sizes.redb"), GroupCommit::default());
    log.submit(observation(0)).unwrap();
    let sizes = record_sizes(log.db());
    // The same database setup toka-host uses (multi-writer mode, all tables).
    let db = Db::open(&dir.path().join("floor.redb")).unwrap();
    let mut seq = 0;
    let (one, many) = (redb_floor(db.redb(), 1, sizes, &mut seq), redb_floor(db.redb(), APPENDERS, sizes, &mut seq));
    println!(
        "floor, redb: {APPENDERS} records of {} + {} bytes per transaction {:.0} us, 1 record {:.0} us",
        sizes.0,
        sizes.1,
        many.as_secs_f64() * 1e6,
        one.as_secs_f64() * 1e6
    );
    println!(
        "RATIO storage floor (redb, pre-encoded inserts): {APPENDERS} x t(1) / t({APPENDERS}) = {:.1}x",
        APPENDERS as f64 * one.as_secs_f64() / many.as_secs_f64()
    );
    let file = std::fs::File::create(dir.path().join("floor.bin")).unwrap();
    std::io::Write::write_all(&mut &file, &vec![0; 200 * (1 + APPENDERS) * (sizes.0 + sizes.1)]).unwrap();
    file.sync_all().unwrap();
    let mut offset = 0;
    let (one, many) = (file_floor(&file, 1, sizes, &mut offset), file_floor(&file, APPENDERS, sizes, &mut offset));
    println!(
        "floor, file: pwrite+fdatasync of {APPENDERS} records {:.0} us, 1 record {:.0} us",
        many.as_secs_f64() * 1e6,
        one.as_secs_f64() * 1e6
    );
    println!(
        "RATIO storage floor (preallocated file, pwrite + fdatasync): {APPENDERS} x t(1) / t({APPENDERS}) = {:.1}x",
        APPENDERS as f64 * one.as_secs_f64() / many.as_secs_f64()
    );
}

/// The extra cost of a signed checkpoint in every commit: with vs without a signer, same run, interleaved.
fn anchoring(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let keys = toka_host::token::keys::KeyStore::load_or_init(dir.path(), 1).unwrap();
    let signer = || Some(Signer::from_keys(&keys).unwrap());
    let signed = open_signed(&dir.path().join("signed.redb"), GroupCommit::default(), signer());
    let unsigned = open_signed(&dir.path().join("unsigned.redb"), GroupCommit::default(), None);

    let mut g = c.benchmark_group("checkpoint_one_commit_per_operation");
    g.sample_size(30);
    g.bench_function("signed", |b| b.iter(|| signed.submit(observation(0)).unwrap()));
    g.bench_function("unsigned", |b| b.iter(|| unsigned.submit(observation(0)).unwrap()));
    g.finish();

    // Interleaved, so that both sides see the same disk and the same load.
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for i in 0..500 {
        for (log, times) in [(&signed, &mut with), (&unsigned, &mut without)] {
            let t0 = Instant::now();
            log.submit(observation(i)).unwrap();
            times.push(t0.elapsed());
        }
    }
    let (with, without) = (median(with), median(without));
    println!(
        "checkpoint, one commit per operation: median {:.0} us signed, {:.0} us unsigned",
        with.as_secs_f64() * 1e6,
        without.as_secs_f64() * 1e6
    );
    println!(
        "RATIO checkpoint (one commit per operation): signed / unsigned = {:.3}",
        with.as_secs_f64() / without.as_secs_f64()
    );

    let (mut with, mut without) = (0.0, 0.0);
    for _ in 0..6 {
        with += summary("threads, group commit, signed", burst(&signed, 100));
        without += summary("threads, group commit, unsigned", burst(&unsigned, 100));
    }
    println!("RATIO checkpoint (64 appenders, group commit): unsigned / signed events/s = {:.3}", without / with);

    // The checkpoint's own CPU time: sign the heads (serializing it is part of `store`, measured above).
    let s = Signer::from_keys(&keys).unwrap();
    let heads = Heads {
        events: Chain { seq: 1, head: [1; 32] },
        ops: Chain { seq: 1, head: [2; 32] },
        revoked: Chain { seq: 0, head: [3; 32] },
    };
    c.bench_function("checkpoint_sign", |b| b.iter(|| s.sign(std::hint::black_box(&heads), 1).unwrap()));

    // What the writer now does for every operation and event before committing: decode the exact stored bytes.
    let txn = signed.db().redb().begin_read().unwrap();
    let last = |table: redb::TableDefinition<u64, &[u8]>| {
        let t = txn.open_table(table).unwrap();
        redb::ReadableTable::last(&t).unwrap().map(|(_, v)| v.value().to_vec()).unwrap()
    };
    let (event, op) = (last(EVENTS), last(OPS));
    c.bench_function("decode_check_operation_and_event", |b| {
        b.iter(|| {
            serde_json::from_slice::<Operation>(std::hint::black_box(&op)).unwrap();
            toka_host::events::decodes(std::hint::black_box(&event)).unwrap();
        })
    });
}

criterion_group!(benches, appends, floor, anchoring);
criterion_main!(benches);
