//! The cluster bench: replicated durable appends per second and their p99 latency on three `toka-host serve` nodes
//! on loopback (openraft: each append durable on a majority, then applied by the leader) against one node of the
//! same kind (a cluster of one: the same HTTP, Raft log and state machine, no replication), on the same disk, in the
//! same run; and the group commit underneath (operations per Raft apply batch, from the leader's
//! `toka_commit_batch_operations` metric).
//!
//! An append is one kernel operation (a token revocation with a fresh id: the smallest operation that records an
//! event), posted by `TOKA_BENCH_CLIENTS` concurrent clients (default 32) to the leader's `/v1/raft/write` for
//! `TOKA_BENCH_SECS` seconds (default 5) after one second of warm-up. It starts its own processes (the release
//! `toka-host`, which must be built) and stops them. Run with
//! `cargo bench --locked --workspace --bench cluster`.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Nodes {
    _dir: tempfile::TempDir,
    children: Vec<Child>,
    urls: Vec<String>,
    secret: String,
    operator: String,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in &mut self.children {
            drop(child.kill());
            drop(child.wait());
        }
    }
}

fn toka_host() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(Path::parent).unwrap().join("toka-host");
    assert!(bin.exists(), "{} is missing: `cargo build --release --workspace` first", bin.display());
    bin
}

fn cli(home: &Path, args: &[&str]) -> String {
    let out = Command::new(toka_host()).args(args).env("TOKA_HOME", home).output().unwrap();
    assert!(out.status.success(), "toka-host {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `n` nodes on loopback, every home in one temporary directory on the same disk.
fn start(n: usize) -> Nodes {
    let dir = tempfile::tempdir_in(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target")).unwrap();
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let urls: Vec<String> = ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
    let homes: Vec<PathBuf> = (1..=n).map(|i| dir.path().join(format!("n{i}"))).collect();
    let bundle = dir.path().join("bundle.json");
    cli(&homes[0], &["cluster", "init", "--node-id", "1", "--addr", &urls[0], "--bundle", bundle.to_str().unwrap()]);
    let secret: Value = serde_json::from_slice(&std::fs::read(&bundle).unwrap()).unwrap();
    let secret = secret["secret"].as_str().unwrap().to_string();
    let mut children = Vec::new();
    for (i, home) in homes.iter().enumerate() {
        let log = std::fs::File::create(dir.path().join(format!("n{}.log", i + 1))).unwrap();
        let mut child = Command::new(toka_host())
            .args(["serve", "--addr", &format!("127.0.0.1:{}", ports[i]), "--node-id", &(i + 1).to_string()])
            .args(["--cluster", bundle.to_str().unwrap()])
            .env("TOKA_HOME", home)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.contains("serving on"), "node {} did not start: {line}", i + 1);
        children.push(child);
    }
    let operator = cli(&homes[0], &["token", "mint", "--agent", "*", "--grant", "api:read"]);
    let nodes = Nodes { _dir: dir, children, urls, secret, operator };
    let http = reqwest::blocking::Client::new();
    let leads = |i: usize| -> bool {
        http.get(format!("{}/v1/cluster/status", nodes.urls[i]))
            .bearer_auth(&nodes.secret)
            .send()
            .ok()
            .and_then(|r| r.json::<Value>().ok())
            .is_some_and(|s| s["state"] == "Leader")
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !leads(0) {
        assert!(Instant::now() < deadline, "node 1 did not lead");
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in 1..n {
        cli(
            &homes[0],
            &[
                "cluster",
                "join",
                "--server",
                &nodes.urls[0],
                "--node-id",
                &(i + 1).to_string(),
                "--addr",
                &nodes.urls[i],
            ],
        );
    }
    nodes
}

/// The leader's (node 1's) commit batches so far: (batches, operations).
fn batches(nodes: &Nodes) -> (f64, f64) {
    let text = reqwest::blocking::Client::new()
        .get(format!("{}/metrics", nodes.urls[0]))
        .bearer_auth(&nodes.operator)
        .send()
        .unwrap()
        .text()
        .unwrap();
    let value = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<f64>().ok()).unwrap_or(0.0)
    };
    (value("toka_commit_batch_operations_count "), value("toka_commit_batch_operations_sum "))
}

struct Measured {
    appends: usize,
    per_sec: f64,
    p50: Duration,
    p99: Duration,
    ops_per_batch: f64,
}

/// `clients` concurrent appenders to the leader for `secs` seconds (after a second of warm-up).
fn measure(nodes: &Nodes, clients: usize, secs: u64) -> Measured {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let http = reqwest::Client::new();
    let url = format!("{}/v1/raft/write", nodes.urls[0]);
    let run = |span: Duration| {
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                let (http, url, secret) = (http.clone(), url.clone(), nodes.secret.clone());
                rt.spawn(async move {
                    let mut latencies = Vec::new();
                    let end = Instant::now() + span;
                    let mut n = 0u64;
                    while Instant::now() < end {
                        n += 1;
                        let op = toka_host::journal::operation(toka_host::kernel::Op::RevokeToken {
                            token_id: format!("bench-{c}-{n}-{}", std::process::id()),
                        });
                        let body = serde_json::json!({ "op": serde_json::to_string(&op).unwrap() });
                        let t0 = Instant::now();
                        let resp = http.post(&url).bearer_auth(&secret).json(&body).send().await.unwrap();
                        let answer: Value = resp.json().await.unwrap();
                        assert!(answer["Ok"]["data"]["outcome"] == "applied", "append failed: {answer}");
                        latencies.push(t0.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(rt.block_on(t).unwrap());
        }
        all
    };
    run(Duration::from_secs(1));
    let before = batches(nodes);
    let started = Instant::now();
    let mut latencies = run(Duration::from_secs(secs));
    let elapsed = started.elapsed();
    let after = batches(nodes);
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Measured {
        appends: latencies.len(),
        per_sec: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
        ops_per_batch: (after.1 - before.1) / (after.0 - before.0).max(1.0),
    }
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let env = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    // `cargo test --benches` (the test suite's smoke run) passes no `--bench`: one short round is enough there.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let (clients, secs) = (env("TOKA_BENCH_CLIENTS", 32) as usize, env("TOKA_BENCH_SECS", if smoke { 1 } else { 5 }));
    let mut results = Vec::new();
    for n in [1usize, 3] {
        let nodes = start(n);
        let m = measure(&nodes, clients, secs);
        println!(
            "{n} node(s): {} appends in {secs} s: {:.0} appends/s, p50 {:.2} ms, p99 {:.2} ms, {:.1} operations per \
             apply batch",
            m.appends,
            m.per_sec,
            m.p50.as_secs_f64() * 1e3,
            m.p99.as_secs_f64() * 1e3,
            m.ops_per_batch
        );
        results.push(m);
        drop(nodes);
    }
    let (one, three) = (&results[0], &results[1]);
    println!(
        "three nodes / one: {:.2}x the appends/s, {:.2}x the p99 ({clients} clients)",
        three.per_sec / one.per_sec,
        three.p99.as_secs_f64() / one.p99.as_secs_f64()
    );
}
