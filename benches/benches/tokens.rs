//! Token benches: verifying and authorizing a run's token cold (signature chain checked, facts read) vs through the
//! verified-token cache (key status re-checked, Datalog authorization run again with the current time), and the
//! cost of each attenuation block on a cold verify+authorize. Ratios are printed after each group.
//! Run with `cargo bench --locked --workspace --bench tokens`.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};
use toka_host::token::keys::KeyStore;
use toka_host::token::{self, Attenuation, Grant, MintRequest, RunRequest, TokenCache, TokenLimits, Verified};

const LIMITS: TokenLimits = TokenLimits { fuel: 1_000_000_000, memory: 256 << 20, timeout_ms: 10_000 };

fn grants(list: &[&str]) -> Vec<Grant> {
    list.iter().map(|g| Grant::parse(g).unwrap()).collect()
}

fn setup() -> (KeyStore, String, RunRequest) {
    let mut keys = KeyStore::default();
    keys.init(0).unwrap();
    let request = MintRequest {
        agent: "bench".into(),
        grants: grants(&["fs:/srv/data:ro", "env:LANG", "net:api.example.com:443", "tool:file-reader", "state:rw"]),
        limits: LIMITS,
        ttl: Some(Duration::from_secs(3600)),
        ..MintRequest::default()
    };
    let text = token::mint(&keys, &request, SystemTime::now()).unwrap().to_base64().unwrap();
    let run = RunRequest {
        agent: "bench".into(),
        grants: grants(&["fs:/srv/data/in:ro", "env:LANG"]),
        limits: LIMITS,
        component: None,
        plugin: None,
    };
    (keys, text, run)
}

/// `text` with `blocks` attenuation blocks appended, each narrowing to the same grants.
fn attenuated(text: &str, blocks: usize) -> String {
    let mut t = text.to_string();
    for _ in 0..blocks {
        let a = Attenuation { only: grants(&["fs:/srv/data:ro", "env:LANG"]), ..Default::default() };
        t = token::attenuate(&token::parse_unverified(&t).unwrap(), &a, SystemTime::now())
            .unwrap()
            .to_base64()
            .unwrap();
    }
    t
}

fn mean(iters: u32, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed() / iters
}

fn cold_vs_cached(c: &mut Criterion) {
    let (keys, text, run) = setup();
    let cold = || {
        let now = SystemTime::now();
        let v = Verified::new(&keys, &text, now).unwrap();
        token::authorize(&v, &run, now).unwrap();
    };
    let cache = TokenCache::new(16);
    let cached = || {
        let now = SystemTime::now();
        let v = cache.verify(&keys, &text, now).unwrap();
        token::authorize(&v, &run, now).unwrap();
    };
    cached();
    let mut group = c.benchmark_group("token verify+authorize");
    group.bench_function("cold", |b| b.iter(cold));
    group.bench_function("cached", |b| b.iter(cached));
    group.finish();
    let (tc, th) = (mean(300, cold), mean(300, cached));
    println!(
        "verify+authorize (2 grants): cold {:.1} us, cached {:.1} us: the cache is {:.1}x faster",
        tc.as_secs_f64() * 1e6,
        th.as_secs_f64() * 1e6,
        tc.as_secs_f64() / th.as_secs_f64()
    );
}

fn per_block(c: &mut Criterion) {
    let (keys, text, run) = setup();
    let depths = [0usize, 1, 2, 4, 8];
    let tokens: Vec<String> = depths.iter().map(|&d| attenuated(&text, d)).collect();
    let mut group = c.benchmark_group("token cold verify+authorize by attenuation blocks");
    for (depth, t) in depths.iter().zip(&tokens) {
        group.bench_function(format!("{depth} blocks"), |b| {
            b.iter(|| {
                let now = SystemTime::now();
                let v = Verified::new(&keys, black_box(t), now).unwrap();
                token::authorize(&v, &run, now).unwrap();
            })
        });
    }
    group.finish();
    let times: Vec<f64> = tokens
        .iter()
        .map(|t| {
            mean(200, || {
                let now = SystemTime::now();
                let v = Verified::new(&keys, t, now).unwrap();
                token::authorize(&v, &run, now).unwrap();
            })
            .as_secs_f64()
                * 1e6
        })
        .collect();
    let line: Vec<String> = depths.iter().zip(&times).map(|(d, t)| format!("{d}: {t:.1} us")).collect();
    println!("cold verify+authorize by blocks: {}", line.join(", "));
    println!(
        "cost per attenuation block: {:.1} us ((8 blocks - 0 blocks) / 8); 8 blocks cost {:.2}x a bare token",
        (times[4] - times[0]) / 8.0,
        times[4] / times[0]
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = cold_vs_cached, per_block
}
criterion_main!(benches);
