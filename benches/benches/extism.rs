//! Tool call vs Extism plugin call, same echo work, same machine, same run: one round trip through toka-host's tool
//! host (token check, input and output schema validation, a fresh sandbox from the warm `InstancePre`, the `echo`
//! tool component parsing its JSON input and returning it) vs an Extism plugin (`agents/extism-echo`, built with
//! extism-pdk: parses its JSON input and returns it) called
//! - live: one `extism::Plugin` kept and called again and again (Extism's usual way; the instance and its memory
//!   carry over from call to call), and
//! - fresh: a new `Plugin` from a precompiled `extism::CompiledPlugin` for every call, which is what toka-host gives
//!   every tool call (a sandbox of its own).
//!
//! and the same toka-host tool host in the reuse mode (`tool add --reuse`, for a tool that declares `side-effect:
//! none`): the caller's instance is kept and called again, as Extism's live plugin is, with every per-call check
//! (token, schemas, depth) and a fresh fuel budget, deadline and memory cap per call.
//!
//! Both sides meter fuel and run with WASI. Neither records the call durably: the tool host here has no event log
//! (as the `tools` bench), and Extism has none; a recorded call adds the `events` bench's figures. Extism 1.30 brings its own wasmtime (43); toka-host runs on 48.
//! Run with `cargo bench -p toka-benches --features extism --bench extism` (after `cargo run --release -p xtask --
//! build-agents`, which builds both the tool and the plugin).

use criterion::{Criterion, criterion_group, criterion_main};
use std::path::Path;
use std::time::Duration;
use toka_benches::tool_call::{INPUT, rt, setup};
use toka_benches::{mean, paired};

/// Fuel for one call, on both sides: far more than an echo needs.
const FUEL: u64 = 1_000_000_000;

fn plugin_path() -> std::path::PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/extism/extism-echo.wasm");
    assert!(p.exists(), "{} is missing: run `cargo run --release -p xtask -- build-agents` first", p.display());
    p
}

fn builder() -> extism::PluginBuilder<'static> {
    let wasm = std::fs::read(plugin_path()).unwrap();
    extism::PluginBuilder::new(wasm).with_wasi(true).with_fuel_limit(FUEL)
}

fn round_trip(c: &mut Criterion) {
    let rt = rt();
    let s = setup(&rt);
    let toka_once = || {
        let r = rt.block_on(s.host.call(&s.caller, "echo", INPUT, FUEL));
        assert_eq!(r.result.as_deref().unwrap(), INPUT);
    };

    let reuse_once = || {
        let r = rt.block_on(s.host.call_kept(&s.caller, "echo-reuse", INPUT, FUEL, Some(&s.kept)));
        assert_eq!(r.result.as_deref().unwrap(), INPUT);
    };

    let mut live = builder().build().unwrap();
    let mut live_once = || {
        let out: String = live.call("echo", INPUT).unwrap();
        assert_eq!(out, INPUT);
    };
    let compiled = extism::CompiledPlugin::new(builder()).unwrap();
    let fresh_once = || {
        let mut plugin = extism::Plugin::new_from_compiled(&compiled).unwrap();
        let out: String = plugin.call("echo", INPUT).unwrap();
        assert_eq!(out, INPUT);
    };

    let mut group = c.benchmark_group("tool call vs Extism (echo)");
    group.bench_function("toka-host tool call", |b| b.iter(toka_once));
    group.bench_function("toka-host tool call, reuse mode", |b| b.iter(reuse_once));
    // As a run's tool calls are made: from a task already inside the runtime (an agent's host call is async), so
    // without `block_on`'s waking and parking of the runtime's threads around each call, which the two figures above
    // pay and a synchronous Extism call does not.
    group.bench_function("toka-host tool call, reuse mode, inside the runtime", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let started = std::time::Instant::now();
                for _ in 0..iters {
                    let r = s.host.call_kept(&s.caller, "echo-reuse", INPUT, FUEL, Some(&s.kept)).await;
                    assert_eq!(r.result.as_deref().unwrap(), INPUT);
                }
                started.elapsed()
            })
        })
    });
    group.bench_function("extism call, live plugin", |b| b.iter(&mut live_once));
    group.bench_function("extism call, fresh plugin per call", |b| b.iter(fresh_once));
    group.finish();

    let (toka, live, fresh) = (mean(1000, toka_once), mean(1000, &mut live_once), mean(1000, fresh_once));
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "tool call vs Extism (echo): toka-host {:.1} us, Extism live plugin {:.1} us, Extism fresh plugin {:.1} us",
        us(toka),
        us(live),
        us(fresh)
    );
    // The reuse mode against the live plugin, in interleaved rounds (see `toka_benches::paired`): the figure the
    // README quotes for the target (<= 1.0x).
    let (kept, kept_live, ratio) = paired(41, 200, reuse_once, &mut live_once);
    println!(
        "tool call, reuse mode vs Extism live plugin (echo): toka-host {:.1} us vs Extism {:.1} us: {ratio:.2}x \
         (medians of 41 interleaved rounds of 200 calls)",
        us(kept),
        us(kept_live)
    );
    println!(
        "RATIO tool_call_vs_extism: toka/extism_live = {:.2}x, toka/extism_fresh = {:.2}x, \
         toka_reuse/extism_live = {ratio:.2}x",
        toka.as_secs_f64() / live.as_secs_f64(),
        toka.as_secs_f64() / fresh.as_secs_f64()
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = round_trip
}
criterion_main!(benches);
