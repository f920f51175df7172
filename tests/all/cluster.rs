//! A cluster of real `toka-host serve` processes on loopback (openraft replicating the kernel's operation log), with
//! real faults: the leader killed with SIGKILL during a stream of runs submitted through the API to every node, a
//! follower killed and restarted (after the log it missed was purged, so it catches up from a snapshot). After each:
//! every acknowledged run is recorded on every node, the nodes' event logs are byte-identical, `events verify` passes
//! on every node, and a token revoked through one node is refused by every node (with a positive control before).
//!
//! Timings (when the kill comes, which node each run goes to) are drawn from a printed seed: replay a failure with
//! `TOKA_TEST_SEED=N`.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use toka_tests::{Ran, Rng, root, shared_cache, test_seed, toka_host, toka_with, wait_for};

fn t(home: &Path, args: &[&str]) -> Ran {
    toka_with(args, None, &[("TOKA_HOME", home.to_str().unwrap())])
}

fn client() -> reqwest::blocking::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

/// A port free now (the node binds it a moment later; a restarted node binds it again).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Node {
    id: u64,
    home: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Node {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// The nodes, their homes in one temporary directory, and the bundle. Every node still running is killed on drop.
struct Cluster {
    dir: tempfile::TempDir,
    bundle: PathBuf,
    secret: String,
    nodes: Vec<Node>,
    extra: Vec<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                drop(child.kill());
                drop(child.wait());
            }
        }
    }
}

impl Cluster {
    /// `n` nodes: node 1 founds the cluster, the others join it through node 1.
    fn start(n: u64, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let nodes: Vec<Node> = (1..=n)
            .map(|id| Node { id, home: dir.path().join(format!("n{id}")), port: free_port(), child: None })
            .collect();
        let bundle = dir.path().join("bundle.json");
        let founder = nodes[0].url();
        t(
            &nodes[0].home,
            &["cluster", "init", "--node-id", "1", "--addr", &founder, "--bundle", bundle.to_str().unwrap()],
        )
        .expect_code(0);
        let secret: Value = serde_json::from_slice(&std::fs::read(&bundle).unwrap()).unwrap();
        let secret = secret["secret"].as_str().unwrap().to_string();
        let mut cluster =
            Cluster { dir, bundle, secret, nodes, extra: extra.iter().map(ToString::to_string).collect() };
        for i in 0..cluster.nodes.len() {
            cluster.spawn(i);
        }
        wait_for(Duration::from_secs(20), || (cluster.status(0)?["state"] == "Leader").then_some(()))
            .expect("node 1 leads its cluster of one");
        for i in 1..cluster.nodes.len() {
            let (id, url) = (cluster.nodes[i].id.to_string(), cluster.nodes[i].url());
            t(&cluster.nodes[0].home, &["cluster", "join", "--server", &founder, "--node-id", &id, "--addr", &url])
                .expect_code(0);
        }
        cluster
    }

    /// Starts node `i` (again) on its home and port.
    fn spawn(&mut self, i: usize) {
        let node = &self.nodes[i];
        let agents = root().join("target").join("agents");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("n{}.log", node.id)))
            .unwrap();
        let mut child = Command::new(toka_host())
            .args(["serve", "--addr", &format!("127.0.0.1:{}", node.port), "--node-id", &node.id.to_string()])
            .args(["--cluster", self.bundle.to_str().unwrap(), "--component-dir", agents.to_str().unwrap()])
            .args(&self.extra)
            .env("TOKA_HOME", &node.home)
            .env("TOKA_CACHE_DIR", shared_cache())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.contains("serving on"), "node {} did not start: {line:?}", node.id);
        self.nodes[i].child = Some(child);
    }

    fn kill(&mut self, i: usize) {
        let mut child = self.nodes[i].child.take().expect("the node runs");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn live(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|i| self.nodes[*i].child.is_some()).collect()
    }

    /// Node `i`'s view of the cluster, if it answers.
    fn status(&self, i: usize) -> Option<Value> {
        let url = format!("{}/v1/cluster/status", self.nodes[i].url());
        let resp = client().get(url).bearer_auth(&self.secret).timeout(Duration::from_secs(5)).send().ok()?;
        resp.status().is_success().then(|| resp.json().ok()).flatten()
    }

    /// The node every live node agrees leads.
    fn leader(&self, within: Duration) -> usize {
        wait_for(within, || {
            let statuses: Vec<Value> = self.live().into_iter().map(|i| self.status(i)).collect::<Option<_>>()?;
            let leader = statuses[0]["leader"].as_u64()?;
            let agreed = statuses.iter().all(|s| s["leader"].as_u64() == Some(leader));
            let i = self.nodes.iter().position(|n| n.id == leader)?;
            (agreed && self.nodes[i].child.is_some()).then_some(i)
        })
        .unwrap_or_else(|| {
            panic!(
                "no leader agreed within {within:?}: {:?}",
                self.live().iter().map(|i| self.status(*i)).collect::<Vec<_>>()
            )
        })
    }

    /// Waits until every live node has applied the same log: same operations, events and head.
    fn converge(&self, within: Duration) -> (u64, u64, String) {
        wait_for(within, || {
            let heads: Vec<(u64, u64, String)> = self
                .live()
                .into_iter()
                .map(|i| {
                    let s = self.status(i)?;
                    Some((s["ops"].as_u64()?, s["events"].as_u64()?, s["head"].as_str()?.to_string()))
                })
                .collect::<Option<_>>()?;
            heads.windows(2).all(|w| w[0] == w[1]).then(|| heads[0].clone())
        })
        .unwrap_or_else(|| {
            panic!(
                "the nodes did not converge within {within:?}: {:?}",
                self.live().iter().map(|i| self.status(*i)).collect::<Vec<_>>()
            )
        })
    }

    /// Every node's `events --json` (read from its database while it runs), verified.
    fn events_of_every_node(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| {
                let verify = t(&n.home, &["events", "verify"]);
                assert_eq!(verify.code, 0, "node {}: events verify: {}{}", n.id, verify.stdout, verify.stderr);
                let events = t(&n.home, &["events", "--json"]);
                assert_eq!(events.code, 0, "node {}: {}", n.id, events.stderr);
                events.stdout
            })
            .collect()
    }

    fn mint(&self, args: &[&str]) -> String {
        let mut all = vec!["token", "mint"];
        all.extend_from_slice(args);
        let r = t(&self.nodes[0].home, &all);
        r.expect_code(0);
        r.stdout.trim().to_string()
    }
}

fn hello(name: &str) -> Value {
    json!({ "component": { "path": "hello-rust.wasm" }, "input": { "name": name }, "wait": true })
}

/// Submits a run to `url` and waits for it; its run id if it was acknowledged as a success.
fn run_on(url: &str, token: &str, name: &str) -> Result<String, String> {
    let resp = client().post(format!("{url}/v1/runs")).bearer_auth(token).json(&hello(name)).send();
    let resp = resp.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body: Value = resp.json().map_err(|e| e.to_string())?;
    match (status, body["report"]["outcome"].as_str()) {
        (200, Some("success")) => Ok(body["run_id"].as_str().unwrap().to_string()),
        _ => Err(format!("{status} {body}")),
    }
}

/// What a stream of runs left: the runs acknowledged (with where they went), and how many were not.
#[derive(Default)]
struct Stream {
    /// Run id, the node it was sent to, when it was acknowledged.
    acked: Vec<(String, u64, Instant)>,
    failed: usize,
}

/// Submits runs from `clients` threads to live nodes chosen at random, until `stop`.
fn stream(
    urls: Arc<Mutex<Vec<(u64, String)>>>,
    token: &str,
    clients: usize,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Stream>> {
    (0..clients)
        .map(|c| {
            let (urls, token, stop) = (urls.clone(), token.to_string(), stop.clone());
            std::thread::spawn(move || {
                let mut rng = Rng::new(seed.wrapping_add(c as u64));
                let mut out = Stream::default();
                let deadline = Instant::now() + Duration::from_secs(120);
                for n in 0..5_000 {
                    if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                        break;
                    }
                    let (id, url) = {
                        let urls = urls.lock().unwrap();
                        urls[rng.below(urls.len() as u64) as usize].clone()
                    };
                    match run_on(&url, &token, &format!("c{c}-{n}")) {
                        Ok(run) => out.acked.push((run, id, Instant::now())),
                        Err(_) => {
                            out.failed += 1;
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                }
                out
            })
        })
        .collect()
}

/// After a fault: every acknowledged run started and completed on every node; the logs are byte-identical and
/// verify; a token revoked through one node is refused by every node (and accepted by every node before).
fn check_after_fault(cluster: &Cluster, acked: &[(String, u64)], rng: &mut Rng) {
    assert!(acked.len() >= 10, "too few runs were acknowledged to prove anything: {}", acked.len());
    cluster.converge(Duration::from_secs(60));
    let logs = cluster.events_of_every_node();
    for (i, log) in logs.iter().enumerate().skip(1) {
        assert!(log == &logs[0], "node {} holds another event log than node 1", cluster.nodes[i].id);
    }
    let mut completed = std::collections::BTreeSet::new();
    for line in logs[0].lines() {
        let event: Value = serde_json::from_str(line).unwrap();
        if event["kind"] == "run.completed" {
            completed.insert(event["run_id"].as_str().unwrap().to_string());
        }
    }
    let lost: Vec<&(String, u64)> = acked.iter().filter(|(run, _)| !completed.contains(run)).collect();
    assert!(lost.is_empty(), "acknowledged runs missing from the log (run, node it was sent to): {lost:?}");
    // A revocation through one node holds on every node.
    let token = cluster.mint(&["--agent", "hello-rust"]);
    for n in &cluster.nodes {
        run_on(&n.url(), &token, "before").unwrap_or_else(|e| panic!("node {} refuses a valid token: {e}", n.id));
    }
    let inspect = t(&cluster.nodes[0].home, &["token", "inspect", &token]);
    let id = inspect.stdout.lines().find_map(|l| l.strip_prefix("revocation:")).unwrap().trim().to_string();
    let through = &cluster.nodes[rng.below(cluster.nodes.len() as u64) as usize];
    t(
        &cluster.nodes[0].home,
        &["cluster", "revoke", &id, "--server", &through.url(), "--cluster", cluster.bundle.to_str().unwrap()],
    )
    .expect_code(0);
    // At once, without waiting for the nodes to catch up: a node that has applied the revocation refuses the
    // bearer (401); one that has not yet gets its run's start rejected by the kernel, which orders every operation
    // after the revocation (a refused run). Either way no run of the token starts anywhere.
    for n in &cluster.nodes {
        let resp =
            client().post(format!("{}/v1/runs", n.url())).bearer_auth(&token).json(&hello("after")).send().unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().unwrap();
        assert_ne!(body["report"]["outcome"], "success", "node {} ran a revoked token's run: {body}", n.id);
        assert!(status == 401 || body["report"]["outcome"] == "token-refused", "node {}: {status} {body}", n.id);
        assert!(body.to_string().contains("revoked"), "node {} (revoked through node {}): {body}", n.id, through.id);
    }
}

#[test]
fn killing_the_leader_during_a_stream_of_runs_loses_no_acknowledged_run() {
    let mut rng = Rng::new(test_seed("killing_the_leader_during_a_stream_of_runs_loses_no_acknowledged_run"));
    let mut cluster = Cluster::start(3, &[]);
    let token = cluster.mint(&["--agent", "hello-rust"]);
    let urls = Arc::new(Mutex::new(cluster.nodes.iter().map(|n| (n.id, n.url())).collect::<Vec<_>>()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients = stream(urls.clone(), &token, 3, rng.next_u64(), stop.clone());
    std::thread::sleep(Duration::from_millis(1_000 + rng.below(2_000)));
    let leader = cluster.leader(Duration::from_secs(10));
    cluster.kill(leader);
    let killed_at = Instant::now();
    let killed = cluster.nodes[leader].id;
    urls.lock().unwrap().retain(|(id, _)| *id != killed);
    let new_leader = cluster.leader(Duration::from_secs(20));
    assert_ne!(new_leader, leader);
    // Writes go on through the new leader.
    std::thread::sleep(Duration::from_millis(1_500 + rng.below(1_500)));
    stop.store(true, Ordering::SeqCst);
    let mut acked = Vec::new();
    let mut failed = 0;
    for c in clients {
        let s = c.join().unwrap();
        acked.extend(s.acked);
        failed += s.failed;
    }
    eprintln!("{} runs acknowledged, {failed} not; node {killed} (the leader) killed", acked.len());
    let after = acked.iter().filter(|(_, _, at)| *at > killed_at).count();
    assert!(after > 0, "no run was acknowledged after the leader was killed");
    eprintln!("{after} of them after the kill");
    cluster.spawn(leader);
    let acked: Vec<(String, u64)> = acked.into_iter().map(|(run, node, _)| (run, node)).collect();
    check_after_fault(&cluster, &acked, &mut rng);
}

#[test]
fn a_follower_killed_and_restarted_catches_up_from_a_snapshot() {
    let mut rng = Rng::new(test_seed("a_follower_killed_and_restarted_catches_up_from_a_snapshot"));
    // Snapshots every 30 entries: the log the follower misses is purged before it comes back.
    let mut cluster = Cluster::start(3, &["--raft-snapshot-every", "30"]);
    let token = cluster.mint(&["--agent", "hello-rust"]);
    let leader = cluster.leader(Duration::from_secs(10));
    let follower = (leader + 1 + rng.below(2) as usize) % 3;
    let urls = Arc::new(Mutex::new(cluster.nodes.iter().map(|n| (n.id, n.url())).collect::<Vec<_>>()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients = stream(urls.clone(), &token, 2, rng.next_u64(), stop.clone());
    std::thread::sleep(Duration::from_millis(500 + rng.below(1_000)));
    cluster.kill(follower);
    let killed = cluster.nodes[follower].id;
    urls.lock().unwrap().retain(|(id, _)| *id != killed);
    let before = cluster.status(leader).unwrap();
    // Enough runs while it is down that the leader snapshots and purges past where the follower stopped.
    let down_from = before["applied_index"].as_u64().unwrap();
    wait_for(Duration::from_secs(60), || {
        let s = cluster.status(leader)?;
        (s["applied_index"].as_u64()? > down_from + 120).then_some(())
    })
    .expect("the cluster went on writing with a follower down");
    // The leader has purged log entries the follower never received: only a snapshot can bring it back.
    let purged = wait_for(Duration::from_secs(30), || {
        let purged = cluster.status(leader)?["purged_index"].as_u64()?;
        (purged > down_from).then_some(purged)
    })
    .expect("the leader purged its log past the follower");
    cluster.spawn(follower);
    let installed = wait_for(Duration::from_secs(30), || {
        let s = cluster.status(follower)?;
        s["snapshot_index"].as_u64().filter(|i| *i >= purged)
    });
    assert!(
        installed.is_some(),
        "the follower installed no snapshot covering index {purged}: {:?}",
        cluster.status(follower)
    );
    std::thread::sleep(Duration::from_millis(500 + rng.below(1_000)));
    stop.store(true, Ordering::SeqCst);
    let mut acked = Vec::new();
    for c in clients {
        acked.extend(c.join().unwrap().acked.into_iter().map(|(run, node, _)| (run, node)));
    }
    eprintln!("{} runs acknowledged; node {killed} (a follower) killed and restarted", acked.len());
    check_after_fault(&cluster, &acked, &mut rng);
}

#[test]
fn raft_routes_refuse_a_request_without_the_clusters_secret() {
    let cluster = Cluster::start(1, &[]);
    let url = cluster.nodes[0].url();
    let http = client();
    for (route, body) in
        [("append", json!({})), ("vote", json!({})), ("snapshot", json!({})), ("write", json!({ "op": "{}" }))]
    {
        let path = format!("{url}/v1/raft/{route}");
        let none = http.post(&path).json(&body).send().unwrap();
        assert_eq!(none.status().as_u16(), 401, "{route} without a bearer");
        let wrong = http.post(&path).bearer_auth("0".repeat(64)).json(&body).send().unwrap();
        assert_eq!(wrong.status().as_u16(), 401, "{route} with another secret");
        // Positive control: with the secret the request reaches Raft (and this empty body is refused as a bad
        // request, not as unauthenticated).
        let right = http.post(&path).bearer_auth(&cluster.secret).json(&body).send().unwrap();
        assert_eq!(right.status().as_u16(), if route == "write" { 200 } else { 400 }, "{route} with the secret");
    }
    let status = http.get(format!("{url}/v1/cluster/status")).send().unwrap();
    assert_eq!(status.status().as_u16(), 401);
    // A user's token (even the operator's) is not the cluster's secret.
    let operator = cluster.mint(&["--agent", "*", "--grant", "api:read"]);
    let status = http.get(format!("{url}/v1/cluster/status")).bearer_auth(&operator).send().unwrap();
    assert_eq!(status.status().as_u16(), 401);
    assert_eq!(cluster.status(0).unwrap()["state"], "Leader", "with the secret");
    // The node's database refuses a local writer: its log is the cluster's.
    let local = t(
        &cluster.nodes[0].home,
        &["run", toka_tests::agent("hello-rust").to_str().unwrap(), "--input", r#"{"name":"x"}"#],
    );
    assert_ne!(local.code, 0);
    assert!(local.stderr.contains("belongs to a node of cluster"), "{}", local.stderr);
}
