//! The service bench: the same short run (`hello-rust`, recorded in a durable log) submitted through the HTTP API
//! (`POST /v1/runs` with `wait`) vs run in-process through the host's own run API (`Host::prepare` +
//! `Runner::run_with`, what the API does minus HTTP), on the same host and log, in the same run; and how long an
//! event takes from its commit to a client of the server-sent event stream.
//!
//! Prints runs/s, p50 and p99 for 8 concurrent submitters on each path, and their ratios. Run with
//! `cargo bench --locked --workspace --bench service` (`TOKA_BENCH_RUNS=N` sets the runs per path, default 2000).

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use toka_benches::agent;
use toka_host::home::Home;
use toka_host::runtime::{Host, HostOptions, LimitRequest, RunSpec, Source};
use toka_host::service::{Service, ServiceConfig};
use toka_host::token::keys::KeyStore;
use toka_host::token::{MintRequest, TokenLimits};

struct Setup {
    _home: tempfile::TempDir,
    service: Arc<Service>,
    url: String,
    token: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

fn setup(rt: &tokio::runtime::Runtime) -> Setup {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let home = tempfile::tempdir().unwrap();
    let h = Home::resolve(Some(home.path()), None, Some(&home.path().join("cache")), false);
    KeyStore::update(&h.dir, |k| k.init(0).map(drop)).unwrap();
    let keys = KeyStore::load(&h.dir).unwrap();
    let request = MintRequest {
        agent: "hello-rust".into(),
        limits: TokenLimits { fuel: 10_000_000_000, memory: 512 << 20, timeout_ms: 30_000 },
        ttl: Some(Duration::from_secs(3600)),
        ..MintRequest::default()
    };
    let token = toka_host::token::mint(&keys, &request, std::time::SystemTime::now()).unwrap().to_base64().unwrap();
    let host = Host::open(h, HostOptions { pooling: true, ..HostOptions::default() }).unwrap();
    let agents = agent("hello-rust").parent().unwrap().to_path_buf();
    let config =
        ServiceConfig { max_concurrent: 8, max_queue: 64, component_dirs: vec![agents], ..ServiceConfig::default() };
    let service = Service::new(host, config);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    rt.spawn(toka_host::service::serve(service.clone(), listener, async move {
        drop(stopped.await);
    }));
    Setup { _home: home, service, url, token, _stop: stop }
}

fn spec(token: &str, i: usize) -> RunSpec {
    RunSpec {
        source: Source::Path(agent("hello-rust")),
        task_id: None,
        input: Some(format!(r#"{{"name":"{i}"}}"#)),
        args: Vec::new(),
        grants: Default::default(),
        tools: Vec::new(),
        models: Vec::new(),
        spawn: Vec::new(),
        limits: LimitRequest::default(),
        token: Some(token.to_string()),
        run_id: None,
    }
}

/// Latency percentiles (p50, p99) of `samples`.
fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    (at(0.50), at(0.99))
}

/// Runs `total` jobs with `width` concurrent submitters; returns the wall time and each job's latency.
fn drive<F, Fut>(rt: &tokio::runtime::Runtime, total: usize, width: usize, job: F) -> (Duration, Vec<Duration>)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let job = Arc::new(job);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let latencies = rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..width {
            let (job, next) = (job.clone(), next.clone());
            tasks.spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if i >= total {
                        break mine;
                    }
                    let t = Instant::now();
                    job(i).await;
                    mine.push(t.elapsed());
                }
            });
        }
        let mut all = Vec::new();
        while let Some(done) = tasks.join_next().await {
            all.extend(done.unwrap());
        }
        all
    });
    (started.elapsed(), latencies)
}

fn api_vs_in_process(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let s = setup(&rt);
    let client = reqwest::Client::new();
    let api = {
        let (client, url, token) = (client.clone(), s.url.clone(), s.token.clone());
        move |i: usize| {
            let (client, url, token) = (client.clone(), url.clone(), token.clone());
            async move {
                let body = json!({ "component": { "path": "hello-rust.wasm" }, "input": { "name": i.to_string() }, "wait": true });
                let resp = client.post(format!("{url}/v1/runs")).bearer_auth(&token).json(&body).send().await.unwrap();
                assert_eq!(resp.status().as_u16(), 200);
                let v: serde_json::Value = resp.json().await.unwrap();
                assert_eq!(v["report"]["outcome"], "success", "{v}");
            }
        }
    };
    let local = {
        let (service, token) = (s.service.clone(), s.token.clone());
        move |i: usize| {
            let (service, spec) = (service.clone(), spec(&token, i));
            async move {
                let ready = service.host.prepare(&service.runner, &spec).unwrap();
                let output = toka_host::sandbox::OutputMode { echo: false, capture: true };
                let r = service
                    .runner
                    .run_with(
                        &ready.program,
                        &ready.grants,
                        &ready.limits,
                        &ready.invocation,
                        output,
                        Default::default(),
                    )
                    .await;
                assert_eq!(r.exit_code, 0, "{:?}", r.error);
            }
        }
    };
    let mut group = c.benchmark_group("service");
    group.sample_size(20).measurement_time(Duration::from_secs(10));
    group.bench_function("run through the API (8 concurrent submitters, 16 runs)", |b| {
        let api = api.clone();
        b.iter(|| drive(&rt, 16, 8, api.clone()))
    });
    group.bench_function("run in-process (8 concurrent submitters, 16 runs)", |b| {
        let local = local.clone();
        b.iter(|| drive(&rt, 16, 8, local.clone()))
    });
    group.finish();

    let total = std::env::var("TOKA_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    // Interleaved halves, so that a change in the machine's load hits both paths alike.
    let (mut api_wall, mut api_lat, mut local_wall, mut local_lat) =
        (Duration::ZERO, Vec::new(), Duration::ZERO, Vec::new());
    for _ in 0..2 {
        let (w, l) = drive(&rt, total / 2, 8, api.clone());
        api_wall += w;
        api_lat.extend(l);
        let (w, l) = drive(&rt, total / 2, 8, local.clone());
        local_wall += w;
        local_lat.extend(l);
    }
    let (api50, api99) = percentiles(api_lat);
    let (local50, local99) = percentiles(local_lat);
    let rate = |n: usize, w: Duration| n as f64 / w.as_secs_f64();
    println!(
        "service: {total} runs each, 8 concurrent: API {:.0} runs/s, p50 {:.2} ms, p99 {:.2} ms; in-process {:.0} runs/s, p50 {:.2} ms, p99 {:.2} ms",
        rate(total, api_wall),
        api50.as_secs_f64() * 1e3,
        api99.as_secs_f64() * 1e3,
        rate(total, local_wall),
        local50.as_secs_f64() * 1e3,
        local99.as_secs_f64() * 1e3,
    );
    println!(
        "RATIO service API/in-process: throughput {:.2}, p50 {:.2}, p99 {:.2}",
        rate(total, api_wall) / rate(total, local_wall),
        api50.as_secs_f64() / local50.as_secs_f64(),
        api99.as_secs_f64() / local99.as_secs_f64()
    );
    sse_latency(&rt, &s, &client);
}

/// From an event's commit (the writer's notice that it is durable) to its arrival on a stream client.
fn sse_latency(rt: &tokio::runtime::Runtime, s: &Setup, client: &reqwest::Client) {
    use futures_util::StreamExt;
    let operator = {
        let keys = KeyStore::load(&s.service.host.home().dir).unwrap();
        let req = MintRequest {
            agent: "*".into(),
            grants: vec![toka_host::token::Grant::parse("api:read").unwrap()],
            limits: TokenLimits { fuel: 1, memory: 1, timeout_ms: 1 },
            ttl: Some(Duration::from_secs(3600)),
            ..MintRequest::default()
        };
        toka_host::token::mint(&keys, &req, std::time::SystemTime::now()).unwrap().to_base64().unwrap()
    };
    const EVENTS: usize = 200;
    let samples = rt.block_on(async {
        // Commit instants, as the writer announces each new head (a notice may cover several events).
        let commits = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<u64, Instant>::new()));
        let mut head = s.service.host.log().stats().head.subscribe();
        let watcher = {
            let commits = commits.clone();
            tokio::spawn(async move {
                while head.changed().await.is_ok() {
                    let seq = *head.borrow_and_update();
                    commits.lock().unwrap().insert(seq, Instant::now());
                }
            })
        };
        let resp = client
            .get(format!("{}/v1/events/stream?kind=run.completed", s.url))
            .bearer_auth(&operator)
            .send()
            .await
            .unwrap();
        let mut body = resp.bytes_stream();
        let runs = {
            let (service, token) = (s.service.clone(), s.token.clone());
            tokio::spawn(async move {
                for i in 0..EVENTS {
                    let ready = service.host.prepare(&service.runner, &spec(&token, i)).unwrap();
                    let out = toka_host::sandbox::OutputMode { echo: false, capture: false };
                    service
                        .runner
                        .run_with(
                            &ready.program,
                            &ready.grants,
                            &ready.limits,
                            &ready.invocation,
                            out,
                            Default::default(),
                        )
                        .await;
                }
            })
        };
        // Every event of the runs is awaited (not every sample: an event may reach the client before the watcher
        // has noted its commit), within a deadline, so that a stream that stops short fails instead of hanging.
        let mut arrivals = Vec::new();
        let mut buf = String::new();
        let receive = async {
            while arrivals.len() < EVENTS {
                let Some(end) = buf.find("\n\n") else {
                    let chunk = body.next().await.expect("the stream ended early").expect("the stream broke");
                    buf.push_str(&String::from_utf8_lossy(&chunk));
                    continue;
                };
                let arrived = Instant::now();
                let event: String = buf.drain(..end + 2).collect();
                // `id:` with or without the optional space (axum writes none).
                if let Some(seq) =
                    event.lines().find_map(|l| l.strip_prefix("id:")).and_then(|v| v.trim().parse::<u64>().ok())
                {
                    arrivals.push((seq, arrived));
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(120), receive)
            .await
            .expect("200 run.completed events did not all arrive on the stream within 120 s");
        runs.await.unwrap();
        // A commit noted after its event arrived counts as no delay (the watcher's lag, not the stream's).
        let commits = commits.lock().unwrap();
        let samples: Vec<Duration> = arrivals
            .iter()
            .filter_map(|(seq, arrived)| {
                commits.range(seq..).next().map(|(_, t)| arrived.saturating_duration_since(*t))
            })
            .collect();
        watcher.abort();
        samples
    });
    if samples.is_empty() {
        println!("service: SSE delivery: no event's commit was noted, nothing to report");
        return;
    }
    let (p50, p99) = percentiles(samples);
    println!(
        "service: SSE delivery from commit to client, {EVENTS} events: p50 {:.2} ms, p99 {:.2} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
}

criterion_group!(benches, api_vs_in_process);
criterion_main!(benches);
