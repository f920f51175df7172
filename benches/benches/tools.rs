//! Tool-call benches: one round trip through toka-host's tool host (token check, input and output schema
//! validation, a fresh sandbox from the warm `InstancePre`, the call) vs the same `echo` tool component
//! instantiated and called with wasmtime at its best: an `InstancePre` linked once, on the same engine (pooling
//! allocator, copy-on-write memory images, dirty pages found with PAGEMAP_SCAN and kept resident), a store with a
//! default WASI context per call, no checks; and tool calls per second with a warm instance pool, sequential and
//! from 4 concurrent callers. The printed ratio comes from interleaved rounds of both sides (see
//! [`toka_benches::paired`]), so load from other processes falls on both alike. Calls are not recorded here (no
//! event log): the durable events of a recorded call are measured by the `events` bench.
//! Run with `cargo bench --locked --workspace --bench tools`.

use criterion::{Criterion, criterion_group, criterion_main};
use std::time::{Duration, Instant};
use toka_benches::tool_call::{INPUT, rt, setup};
use toka_benches::{Plain, paired, tool_component};
use wasmtime::Store;
use wasmtime::component::{Component, HasSelf, Linker};

fn round_trip(c: &mut Criterion) {
    let rt = rt();
    let s = setup(&rt);
    let toka_once = || {
        let r = rt.block_on(s.host.call(&s.caller, "echo", INPUT, 1_000_000_000));
        assert_eq!(r.result.as_deref().unwrap(), INPUT);
    };

    // The reuse mode (`tool add --reuse`): the caller's kept instance, rearmed per call, every check still made.
    let reuse_once = || {
        let r = rt.block_on(s.host.call_kept(&s.caller, "echo-reuse", INPUT, 1_000_000_000, Some(&s.kept)));
        assert_eq!(r.result.as_deref().unwrap(), INPUT);
    };

    // Plain wasmtime: the same component, engine and WASI linker, instantiated from an `InstancePre` and called.
    let engine = s.host.engine.engine.clone();
    let component = Component::from_file(&engine, tool_component("echo")).unwrap();
    let mut linker: Linker<Plain> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    toka_host::bindings::agent::toka::agent::log::add_to_linker::<_, HasSelf<_>>(&mut linker, |s: &mut Plain| s)
        .unwrap();
    let pre = toka_host::bindings::tool::ToolPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
    let plain_once = || {
        rt.block_on(async {
            let mut store = Store::new(&engine, Plain::new());
            store.set_fuel(1_000_000_000).unwrap();
            store.set_epoch_deadline(u64::MAX / 2);
            let tool = pre.instantiate_async(&mut store).await.unwrap();
            let out = tool.call_invoke(&mut store, INPUT).await.unwrap().unwrap();
            assert_eq!(out, INPUT);
        })
    };

    let mut group = c.benchmark_group("tool call round trip (echo)");
    group.bench_function("toka-host tool host", |b| b.iter(toka_once));
    group.bench_function("toka-host tool host, reuse mode", |b| b.iter(reuse_once));
    group.bench_function("plain wasmtime instantiate+invoke", |b| b.iter(plain_once));
    group.finish();
    // 41 rounds of 200 calls a side, interleaved: the figure the README quotes.
    let (t, p, ratio) = paired(41, 200, toka_once, plain_once);
    println!(
        "tool call round trip: toka-host {:.1} us vs plain wasmtime {:.1} us: {ratio:.2}x (medians of 41 interleaved \
         rounds of 200 calls; checks, schemas, sandbox)",
        t.as_secs_f64() * 1e6,
        p.as_secs_f64() * 1e6,
    );
    let (r, p, ratio) = paired(41, 200, reuse_once, plain_once);
    println!(
        "tool call round trip, reuse mode: toka-host {:.1} us vs plain wasmtime (fresh instance) {:.1} us: {ratio:.2}x \
         (medians of 41 interleaved rounds of 200 calls)",
        r.as_secs_f64() * 1e6,
        p.as_secs_f64() * 1e6,
    );
}

fn calls_per_second(c: &mut Criterion) {
    let rt = rt();
    let s = setup(&rt);
    let mut group = c.benchmark_group("tool calls per second (echo, warm pool)");
    group.bench_function("sequential", |b| {
        b.iter(|| rt.block_on(s.host.call(&s.caller, "echo", INPUT, 1_000_000_000)).result.unwrap())
    });
    group.finish();
    let n = 2000u32;
    let start = Instant::now();
    for _ in 0..n {
        rt.block_on(s.host.call(&s.caller, "echo", INPUT, 1_000_000_000)).result.unwrap();
    }
    let sequential = f64::from(n) / start.elapsed().as_secs_f64();
    let start = Instant::now();
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let (host, caller) = (s.host.clone(), s.caller.clone());
            tasks.spawn(async move {
                for _ in 0..n / 4 {
                    host.call(&caller, "echo", INPUT, 1_000_000_000).await.result.unwrap();
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
    });
    let concurrent = f64::from(n) / start.elapsed().as_secs_f64();
    println!("tool calls per second (echo, warm pool): {sequential:.0} sequential, {concurrent:.0} from 4 callers");
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = round_trip, calls_per_second
}
criterion_main!(benches);
