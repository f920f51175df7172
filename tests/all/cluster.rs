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
    /// The address it listens on and the others reach it at (127.0.0.1, or its network namespace's address).
    ip: String,
    port: u16,
    /// The network namespace it runs in, if any.
    netns: Option<String>,
    child: Option<Child>,
}

impl Node {
    fn url(&self) -> String {
        format!("http://{}:{}", self.ip, self.port)
    }
}

/// The nodes, their homes in one temporary directory, and the bundle. Every node still running is killed on drop,
/// then the filesystems mounted for it are unmounted (and the network namespaces removed, with `net`).
struct Cluster {
    dir: tempfile::TempDir,
    bundle: PathBuf,
    secret: String,
    nodes: Vec<Node>,
    extra: Vec<String>,
    /// Arguments of one node's `serve` only (its labels), by index.
    node_args: Vec<Vec<String>>,
    mounts: Vec<PathBuf>,
    net: Option<Net>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // A failed test shows the end of each node's own log (its temporary directory goes with it).
        if std::thread::panicking() {
            for node in &self.nodes {
                let log =
                    std::fs::read_to_string(self.dir.path().join(format!("n{}.log", node.id))).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                eprintln!("--- node {}'s log, last {} lines:", node.id, lines.len().min(40));
                lines[lines.len().saturating_sub(40)..].iter().for_each(|l| eprintln!("{l}"));
            }
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                // A paused node is killed as well (SIGKILL needs no SIGCONT).
                drop(child.kill());
                drop(child.wait());
            }
        }
        for mount in self.mounts.drain(..) {
            drop(Command::new("umount").arg("-l").arg(&mount).status());
        }
    }
}

impl Cluster {
    /// `n` nodes: node 1 founds the cluster, the others join it through node 1.
    fn start(n: u64, extra: &[&str]) -> Cluster {
        let mut cluster = Cluster::new(n, extra);
        cluster.boot();
        cluster
    }

    /// `n` nodes on loopback, not started yet (a test may move a node's home or network first).
    fn new(n: u64, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let nodes: Vec<Node> = (1..=n)
            .map(|id| Node {
                id,
                home: dir.path().join(format!("n{id}")),
                ip: "127.0.0.1".into(),
                port: free_port(),
                netns: None,
                child: None,
            })
            .collect();
        let bundle = dir.path().join("bundle.json");
        Cluster {
            dir,
            bundle,
            secret: String::new(),
            nodes,
            extra: extra.iter().map(ToString::to_string).collect(),
            node_args: vec![Vec::new(); n as usize],
            mounts: Vec::new(),
            net: None,
        }
    }

    /// Puts node `i` in its own network namespace of `net`.
    fn place_in(&mut self, net: Net) {
        for (i, node) in self.nodes.iter_mut().enumerate() {
            node.ip = net.ip(i);
            node.netns = Some(net.ns(i));
        }
        self.net = Some(net);
    }

    /// Founds the cluster on node 1, starts every node, and adds the others through node 1.
    fn boot(&mut self) {
        let founder = self.nodes[0].url();
        t(
            &self.nodes[0].home,
            &["cluster", "init", "--node-id", "1", "--addr", &founder, "--bundle", self.bundle.to_str().unwrap()],
        )
        .expect_code(0);
        let secret: Value = serde_json::from_slice(&std::fs::read(&self.bundle).unwrap()).unwrap();
        self.secret = secret["secret"].as_str().unwrap().to_string();
        for i in 0..self.nodes.len() {
            self.spawn(i);
        }
        wait_for(Duration::from_secs(20), || (self.status(0)?["state"] == "Leader").then_some(()))
            .expect("node 1 leads its cluster of one");
        for i in 1..self.nodes.len() {
            let (id, url) = (self.nodes[i].id.to_string(), self.nodes[i].url());
            t(&self.nodes[0].home, &["cluster", "join", "--server", &founder, "--node-id", &id, "--addr", &url])
                .expect_code(0);
        }
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
        let mut command = match &node.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                // `ip netns exec` enters the namespace and execs the host: the child's pid is the host's.
                c.args(["netns", "exec", ns]).arg(toka_host());
                c
            }
            None => Command::new(toka_host()),
        };
        let mut child = command
            .args(["serve", "--addr", &format!("{}:{}", node.ip, node.port), "--node-id", &node.id.to_string()])
            .args(["--cluster", self.bundle.to_str().unwrap(), "--component-dir", agents.to_str().unwrap()])
            .args(&self.extra)
            .args(&self.node_args[i])
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

    /// Sends `signal` (`STOP`, `CONT`) to node `i`'s process.
    fn signal(&self, i: usize, signal: &str) {
        let pid = self.nodes[i].child.as_ref().expect("the node runs").id().to_string();
        let sent = Command::new("kill").args([&format!("-{signal}"), &pid]).status().unwrap();
        assert!(sent.success(), "kill -{signal} {pid}");
    }

    /// Node `i`'s `/health`: its HTTP status and body.
    fn health(&self, i: usize) -> Option<(u16, Value)> {
        let resp =
            client().get(format!("{}/health", self.nodes[i].url())).timeout(Duration::from_secs(5)).send().ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.json().ok()?))
    }

    /// Node `i`'s log on stderr so far.
    fn log_of(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("n{}.log", self.nodes[i].id))).unwrap_or_default()
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

    /// Every node's `events --json`, once the nodes have converged and the logs read are identical. A node can still
    /// append after [`Cluster::converge`] has seen equal heads (a restarted node records the runs it lost once it has
    /// caught up, the leader those of a silent node), and the logs are read one after another; so they are read
    /// again until equal, within `within`. One that is not a prefix of another has diverged: that fails at once.
    fn identical_logs(&self, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            self.converge(deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1)));
            let logs = self.events_of_every_node();
            if logs.iter().all(|l| l == &logs[0]) {
                return logs;
            }
            let longest = logs.iter().max_by_key(|l| l.len()).unwrap();
            for (i, log) in logs.iter().enumerate() {
                assert!(longest.starts_with(log.as_str()), "node {} holds another event log", self.nodes[i].id);
            }
            assert!(Instant::now() < deadline, "the nodes' logs were still not identical after {within:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
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
    let logs = cluster.identical_logs(Duration::from_secs(60));
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
    // Placement's routes too: load reports, placement, runs placed on a node, their views and cancels. With the
    // secret, each reaches its handler: an empty body is a bad request, an unknown run is not found.
    for (method, route, body, with_secret) in [
        ("POST", "/v1/cluster/load", json!({}), 400),
        ("POST", "/v1/cluster/place", json!({ "labels": ["no such label"] }), 400),
        ("POST", "/v1/cluster/runs", json!({}), 400),
        ("GET", "/v1/cluster/runs/run-0", json!(null), 404),
        ("POST", "/v1/cluster/runs/run-0/cancel", json!(null), 404),
    ] {
        let call = |secret: Option<&str>| {
            let mut req =
                if method == "GET" { http.get(format!("{url}{route}")) } else { http.post(format!("{url}{route}")) };
            if !body.is_null() {
                req = req.json(&body);
            }
            if let Some(s) = secret {
                req = req.bearer_auth(s);
            }
            req.send().unwrap().status().as_u16()
        };
        assert_eq!(call(None), 401, "{route} without a bearer");
        assert_eq!(call(Some(&"0".repeat(64))), 401, "{route} with another secret");
        assert_eq!(call(Some(&cluster.secret)), with_secret, "{route} with the secret");
    }
    // A forwarded run's token is checked as any bearer's: a forged one is refused, with the secret.
    let forged =
        json!({ "run_id": "run-x", "token": "not-a-token", "request": { "component": { "path": "hello-rust.wasm" } } });
    let resp = http.post(format!("{url}/v1/cluster/runs")).bearer_auth(&cluster.secret).json(&forged).send().unwrap();
    assert_eq!(resp.status().as_u16(), 401, "a forwarded run with a forged token");
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

/// Network namespaces for a real partition: one per node, each with a veth into a bridge in the test's own
/// namespace (the test reaches every node; the nodes reach each other through the bridge). A partition is a
/// firewall (nftables) in a node's namespace that silently drops its packets to and from the others, as a cut
/// cable does (no refusal a node could take as a hint). Removed on drop.
struct Net {
    tag: String,
    /// The nodes' subnet: 10.A.B.0/24.
    subnet: (u8, u8),
    n: usize,
}

impl Net {
    /// Needs root, `ip` and `nft`; `Err(why)` when the machine does not allow it.
    fn create(n: usize, rng: &mut Rng) -> Result<Net, String> {
        for tool in ["ip", "nft"] {
            let found = Command::new(tool).arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status();
            if !found.is_ok_and(|s| s.success()) {
                return Err(format!("`{tool}` is not available"));
            }
        }
        // Names and a subnet of their own, so that concurrent test runs on one machine do not collide.
        let tag = format!("tk{:05}", (std::process::id() as u64 * 7 + rng.below(100_000)) % 100_000);
        let subnet = (160 + rng.below(90) as u8, 1 + rng.below(250) as u8);
        let net = Net { tag, subnet, n };
        let br = net.bridge();
        net.ip_cmd(&["link", "add", &br, "type", "bridge"])?;
        net.ip_cmd(&["addr", "add", &format!("{}/24", net.addr(254)), "dev", &br])?;
        net.ip_cmd(&["link", "set", &br, "up"])?;
        for i in 0..n {
            let (ns, host, inner) = (net.ns(i), format!("{}h{i}", net.tag), format!("{}c{i}", net.tag));
            net.ip_cmd(&["netns", "add", &ns])?;
            net.ip_cmd(&["link", "add", &host, "type", "veth", "peer", "name", &inner, "netns", &ns])?;
            net.ip_cmd(&["link", "set", &host, "master", &br, "up"])?;
            net.ip_cmd(&["-n", &ns, "addr", "add", &format!("{}/24", net.ip(i)), "dev", &inner])?;
            net.ip_cmd(&["-n", &ns, "link", "set", &inner, "up"])?;
            net.ip_cmd(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        // The firewall works in a namespace (probed, then removed).
        net.nft(0, &["add", "table", "inet", "probe"])?;
        net.nft(0, &["delete", "table", "inet", "probe"])?;
        Ok(net)
    }

    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }

    fn addr(&self, last: u8) -> String {
        format!("10.{}.{}.{last}", self.subnet.0, self.subnet.1)
    }

    fn ip(&self, i: usize) -> String {
        self.addr(i as u8 + 1)
    }

    fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }

    fn ip_cmd(&self, args: &[&str]) -> Result<(), String> {
        let out = Command::new("ip").args(args).output().map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
        match out.status.success() {
            true => Ok(()),
            false => Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())),
        }
    }

    fn nft(&self, i: usize, args: &[&str]) -> Result<(), String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(i), "nft"])
            .args(args)
            .output()
            .map_err(|e| format!("nft {}: {e}", args.join(" ")))?;
        match out.status.success() {
            true => Ok(()),
            false => Err(format!("nft {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())),
        }
    }

    /// Cuts node `i` off from every other node (both directions dropped in its namespace); the test still reaches it.
    fn isolate(&self, i: usize) {
        self.nft(i, &["add", "table", "inet", "partition"]).unwrap();
        for hook in ["input", "output"] {
            let chain = format!("{{ type filter hook {hook} priority 0; }}");
            self.nft(i, &["add", "chain", "inet", "partition", hook, &chain]).unwrap();
            for j in (0..self.n).filter(|j| *j != i) {
                let dir = if hook == "input" { "saddr" } else { "daddr" };
                self.nft(i, &["add", "rule", "inet", "partition", hook, "ip", dir, &self.ip(j), "drop"]).unwrap();
            }
        }
    }

    fn heal(&self, i: usize) {
        self.nft(i, &["delete", "table", "inet", "partition"]).unwrap();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 0..self.n {
            drop(self.ip_cmd(&["netns", "del", &self.ns(i)]));
        }
        drop(self.ip_cmd(&["link", "del", &self.bridge()]));
    }
}

/// The run id in a refused submission's answer (`run_on`'s error).
fn run_id_in(refused: &str) -> String {
    let at = refused.find(r#""run_id":"run-"#).unwrap_or_else(|| panic!("no run id in {refused}")) + 10;
    refused[at..].split('"').next().unwrap().to_string()
}

/// Joins a stream's clients: the runs acknowledged (run, node sent to, when) and how many were not.
fn join(clients: Vec<std::thread::JoinHandle<Stream>>) -> (Vec<(String, u64, Instant)>, usize) {
    let (mut acked, mut failed) = (Vec::new(), 0);
    for c in clients {
        let s = c.join().unwrap();
        acked.extend(s.acked);
        failed += s.failed;
    }
    (acked, failed)
}

fn without_times(acked: Vec<(String, u64, Instant)>) -> Vec<(String, u64)> {
    acked.into_iter().map(|(run, node, _)| (run, node)).collect()
}

/// A leader other than `old` that the nodes in `among` agree on (none of them may be paused or cut off from the
/// test).
fn agreed_leader(cluster: &Cluster, among: &[usize], old: u64, within: Duration) -> Option<u64> {
    wait_for(within, || {
        let leaders: Vec<Option<u64>> =
            among.iter().map(|i| cluster.status(*i).and_then(|s| s["leader"].as_u64())).collect();
        let first = leaders[0].filter(|l| *l != old)?;
        leaders.iter().all(|l| *l == Some(first)).then_some(first)
    })
}

#[test]
fn five_nodes_keep_writing_with_two_killed_including_the_leader_and_both_catch_up() {
    let mut rng = Rng::new(test_seed("five_nodes_keep_writing_with_two_killed_including_the_leader_and_both_catch_up"));
    let mut cluster = Cluster::start(5, &[]);
    let token = cluster.mint(&["--agent", "hello-rust"]);
    let urls = Arc::new(Mutex::new(cluster.nodes.iter().map(|n| (n.id, n.url())).collect::<Vec<_>>()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients = stream(urls.clone(), &token, 3, rng.next_u64(), stop.clone());
    std::thread::sleep(Duration::from_millis(500 + rng.below(1_000)));
    // The leader first, then (after a random while, possibly during the election) a random other node.
    let leader = cluster.leader(Duration::from_secs(10));
    cluster.kill(leader);
    urls.lock().unwrap().retain(|(id, _)| *id != cluster.nodes[leader].id);
    std::thread::sleep(Duration::from_millis(rng.below(1_000)));
    let live = cluster.live();
    let other = live[rng.below(live.len() as u64) as usize];
    cluster.kill(other);
    let both_down = Instant::now();
    urls.lock().unwrap().retain(|(id, _)| *id != cluster.nodes[other].id);
    let new_leader = cluster.leader(Duration::from_secs(20));
    assert!(new_leader != leader && new_leader != other);
    std::thread::sleep(Duration::from_millis(1_500 + rng.below(1_000)));
    stop.store(true, Ordering::SeqCst);
    let (acked, failed) = join(clients);
    let after = acked.iter().filter(|(_, _, at)| *at > both_down).count();
    eprintln!(
        "{} runs acknowledged, {failed} not; nodes {} (leader) and {} killed; {after} acknowledged by the three left",
        acked.len(),
        cluster.nodes[leader].id,
        cluster.nodes[other].id
    );
    assert!(after > 0, "the three nodes left acknowledged no run");
    cluster.spawn(leader);
    cluster.spawn(other);
    check_after_fault(&cluster, &without_times(acked), &mut rng);
}

#[test]
fn a_leader_paused_with_sigstop_is_replaced_and_steps_down_when_resumed() {
    let mut rng = Rng::new(test_seed("a_leader_paused_with_sigstop_is_replaced_and_steps_down_when_resumed"));
    let cluster = Cluster::start(3, &[]);
    let token = cluster.mint(&["--agent", "hello-rust"]);
    let urls = Arc::new(Mutex::new(cluster.nodes.iter().map(|n| (n.id, n.url())).collect::<Vec<_>>()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients = stream(urls.clone(), &token, 2, rng.next_u64(), stop.clone());
    let mut extra_acked = Vec::new();
    let mut after_pause = Vec::new();
    for round in 0..2 {
        std::thread::sleep(Duration::from_millis(300 + rng.below(1_000)));
        let old = cluster.leader(Duration::from_secs(15));
        let old_id = cluster.nodes[old].id;
        let term = cluster.status(old).unwrap()["term"].as_u64().unwrap();
        urls.lock().unwrap().retain(|(id, _)| *id != old_id);
        cluster.signal(old, "STOP");
        let paused_at = Instant::now();
        // A run sent to the paused leader: it hangs until the node resumes, then it is recorded or refused.
        let (url, tok) = (cluster.nodes[old].url(), token.clone());
        let stuck = std::thread::spawn(move || run_on(&url, &tok, &format!("paused-{round}")));
        let others: Vec<usize> = (0..3).filter(|i| *i != old).collect();
        let new_id = agreed_leader(&cluster, &others, old_id, Duration::from_secs(15))
            .unwrap_or_else(|| panic!("round {round}: no new leader while node {old_id} was paused"));
        let new_term = cluster.status(others[0]).unwrap()["term"].as_u64().unwrap();
        assert!(new_term > term, "a new leader is elected in a later term ({term} -> {new_term})");
        eprintln!("round {round}: node {old_id} paused; node {new_id} leads after {:?}", paused_at.elapsed());
        std::thread::sleep(Duration::from_millis(500 + rng.below(1_500)));
        let resumed_at = Instant::now();
        cluster.signal(old, "CONT");
        // On resume the old leader hears of the later term and follows the new leader.
        let stepped_down = wait_for(Duration::from_secs(15), || {
            let s = cluster.status(old)?;
            (s["state"] == "Follower" && s["leader"].as_u64() == Some(new_id)).then_some(())
        });
        assert!(stepped_down.is_some(), "round {round}: node {old_id} did not step down: {:?}", cluster.status(old));
        eprintln!("round {round}: node {old_id} follows node {new_id} {:?} after resuming", resumed_at.elapsed());
        match stuck.join().unwrap() {
            Ok(run) => extra_acked.push((run, old_id)),
            Err(e) => eprintln!("round {round}: the run sent to the paused leader was not acknowledged: {e}"),
        }
        after_pause.push(paused_at);
        urls.lock().unwrap().push((old_id, cluster.nodes[old].url()));
    }
    stop.store(true, Ordering::SeqCst);
    let (acked, failed) = join(clients);
    for (round, at) in after_pause.iter().enumerate() {
        let n = acked.iter().filter(|(_, _, t)| t > at).count();
        assert!(n > 0, "no run acknowledged after the pause of round {round}");
    }
    eprintln!("{} runs acknowledged, {failed} not", acked.len() + extra_acked.len());
    let mut acked = without_times(acked);
    acked.extend(extra_acked);
    check_after_fault(&cluster, &acked, &mut rng);
}

#[test]
fn a_node_without_a_leader_says_so_and_refuses_writes_within_the_leaderless_bound() {
    let mut rng = Rng::new(test_seed("a_node_without_a_leader_says_so_and_refuses_writes_within_the_leaderless_bound"));
    let mut cluster = Cluster::start(3, &[]);
    let token = cluster.mint(&["--agent", "hello-rust"]);
    let leader = cluster.leader(Duration::from_secs(10));
    let leader_id = cluster.nodes[leader].id;
    let bundle = cluster.bundle.to_str().unwrap().to_string();
    let status_of = |cluster: &Cluster, i: usize, linearizable: bool| {
        let url = cluster.nodes[i].url();
        let mut args = vec!["cluster", "status", "--server", &url, "--json", "--cluster", &bundle];
        if linearizable {
            args.push("--linearizable");
        }
        t(&cluster.nodes[0].home, &args)
    };
    // Positive controls: with a leader, every node is healthy and names it; a leader-checked read on any node
    // (follower or leader) includes every write acknowledged before it, through any node.
    let kept = rng.below(3) as usize;
    let through = rng.below(3) as usize;
    run_on(&cluster.nodes[through].url(), &token, "with-a-majority").expect("a run with a majority up");
    let acked_events = cluster.status(through).unwrap()["events"].as_u64().unwrap();
    for i in 0..3 {
        let (code, body) = cluster.health(i).unwrap();
        assert_eq!((code, body["status"].as_str()), (200, Some("ok")), "node {i}: {body}");
        assert_eq!(body["cluster"]["leader"].as_u64(), Some(leader_id), "{body}");
        let read = status_of(&cluster, i, true);
        assert_eq!(read.code, 0, "node {i}: {}", read.stderr);
        let read: Value = serde_json::from_str(&read.stdout).unwrap();
        assert_eq!(read["read"], "leader");
        assert!(read["read_index"].as_u64().is_some(), "{read}");
        assert!(read["events"].as_u64().unwrap() >= acked_events, "node {i} read stale: {read} < {acked_events}");
    }
    // Kill the other two (the leader among them, unless the kept node leads): the kept node is a minority of one.
    for i in (0..3).filter(|i| *i != kept) {
        cluster.kill(i);
    }
    let lost = Instant::now();
    let reported = wait_for(Duration::from_secs(10), || {
        let (code, body) = cluster.health(kept)?;
        (code == 503 && body["status"] == "no-leader" && body["cluster"]["leader"].is_null()).then_some(body)
    });
    assert!(reported.is_some(), "node {kept} still reports a leader: {:?}", cluster.health(kept));
    eprintln!("health says no-leader {:?} after the majority went", lost.elapsed());
    let read = status_of(&cluster, kept, true);
    assert_eq!(read.code, 109, "a leader-checked read without a leader: {}{}", read.stdout, read.stderr);
    assert!(read.stderr.contains("leader"), "{}", read.stderr);
    let local = status_of(&cluster, kept, false);
    assert_eq!(local.code, 0, "{}", local.stderr);
    assert_eq!(serde_json::from_str::<Value>(&local.stdout).unwrap()["read"], "local");
    // A write is refused after the leaderless bound (2 s at the default heartbeat), not after the 30 s write timeout.
    let asked = Instant::now();
    let refused = run_on(&cluster.nodes[kept].url(), &token, "minority").expect_err("a minority of one wrote");
    let took = asked.elapsed();
    eprintln!("a run on the leaderless node was refused after {took:?}: {refused}");
    assert!(took < Duration::from_secs(8), "refused only after {took:?}");
    assert!(refused.contains("no leader"), "{refused}");
    // The others come back: a leader again, health ok again, and the refused run left nothing behind.
    for i in (0..3).filter(|i| *i != kept) {
        cluster.spawn(i);
    }
    let healthy = wait_for(Duration::from_secs(20), || {
        let (code, body) = cluster.health(kept)?;
        (code == 200 && body["status"] == "ok").then_some(())
    });
    assert!(healthy.is_some(), "{:?}", cluster.health(kept));
    let again = run_on(&cluster.nodes[kept].url(), &token, "again").expect("a run once healed");
    cluster.converge(Duration::from_secs(30));
    let events = cluster.events_of_every_node();
    let refused_run = run_id_in(&refused);
    assert!(!events[0].contains(&refused_run), "the refused run {refused_run} was recorded");
    assert!(events[0].contains(again.as_str()), "the run acknowledged once healed is missing");
}

#[test]
fn a_partitioned_leader_refuses_writes_while_the_majority_goes_on_and_healing_converges() {
    let mut rng =
        Rng::new(test_seed("a_partitioned_leader_refuses_writes_while_the_majority_goes_on_and_healing_converges"));
    let net = match Net::create(3, &mut rng) {
        Ok(net) => net,
        Err(why) => {
            // Visible in the test's output (and an error where a partition must run).
            eprintln!("SKIPPED a_partitioned_leader...: network namespaces are not available here: {why}");
            assert!(std::env::var_os("TOKA_REQUIRE_NETNS").is_none(), "TOKA_REQUIRE_NETNS is set: {why}");
            return;
        }
    };
    let mut cluster = Cluster::new(3, &[]);
    cluster.place_in(net);
    cluster.boot();
    let token = cluster.mint(&["--agent", "hello-rust"]);
    let urls = Arc::new(Mutex::new(cluster.nodes.iter().map(|n| (n.id, n.url())).collect::<Vec<_>>()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients = stream(urls.clone(), &token, 2, rng.next_u64(), stop.clone());
    let mut cut_at = Vec::new();
    let mut refused_runs = Vec::new();
    for round in 0..2 {
        std::thread::sleep(Duration::from_millis(300 + rng.below(1_000)));
        let old = cluster.leader(Duration::from_secs(15));
        let old_id = cluster.nodes[old].id;
        urls.lock().unwrap().retain(|(id, _)| *id != old_id);
        cluster.net.as_ref().unwrap().isolate(old);
        let cut = Instant::now();
        // The minority (the old leader alone) refuses a write once its majority has been silent for the bound.
        let refused = run_on(&cluster.nodes[old].url(), &token, &format!("minority-{round}"));
        let took = cut.elapsed();
        let refused = refused.expect_err("the partitioned leader acknowledged a write");
        refused_runs.push(run_id_in(&refused));
        eprintln!("round {round}: node {old_id} cut off; a run there was refused after {took:?}: {refused}");
        assert!(took < Duration::from_secs(8), "refused only after {took:?}");
        let (code, body) = cluster.health(old).unwrap();
        assert_eq!((code, body["status"].as_str()), (503, Some("no-leader")), "{body}");
        // The majority elects another leader and goes on.
        let others: Vec<usize> = (0..3).filter(|i| *i != old).collect();
        let new_id = agreed_leader(&cluster, &others, old_id, Duration::from_secs(15))
            .unwrap_or_else(|| panic!("round {round}: the majority elected no leader"));
        eprintln!("round {round}: node {new_id} leads the majority {:?} after the cut", cut.elapsed());
        std::thread::sleep(Duration::from_millis(800 + rng.below(1_200)));
        cluster.net.as_ref().unwrap().heal(old);
        let healed = wait_for(Duration::from_secs(15), || {
            let s = cluster.status(old)?;
            (s["state"] == "Follower" && s["leader"].as_u64().is_some_and(|l| l != old_id)).then_some(())
        });
        assert!(healed.is_some(), "round {round}: node {old_id} did not rejoin: {:?}", cluster.status(old));
        cut_at.push(cut);
        urls.lock().unwrap().push((old_id, cluster.nodes[old].url()));
    }
    stop.store(true, Ordering::SeqCst);
    let (acked, failed) = join(clients);
    for (round, at) in cut_at.iter().enumerate() {
        assert!(acked.iter().any(|(_, _, t)| t > at), "no run acknowledged after the cut of round {round}");
    }
    eprintln!("{} runs acknowledged, {failed} not", acked.len());
    check_after_fault(&cluster, &without_times(acked), &mut rng);
    let logs = cluster.events_of_every_node();
    for run in &refused_runs {
        assert!(!logs[0].contains(run.as_str()), "the run {run} refused by the minority was recorded");
    }
}

#[test]
fn a_node_whose_disk_fills_fails_cleanly_and_catches_up_once_space_is_freed() {
    let mut rng = Rng::new(test_seed("a_node_whose_disk_fills_fails_cleanly_and_catches_up_once_space_is_freed"));
    let mut cluster = Cluster::new(3, &[]);
    // Node 3's home on a filesystem of its own, 32 MiB (tmpfs, mounted as root).
    let home = cluster.nodes[2].home.clone();
    std::fs::create_dir_all(&home).unwrap();
    let mounted =
        Command::new("mount").args(["-t", "tmpfs", "-o", "size=32m,mode=0700", "tmpfs"]).arg(&home).output().unwrap();
    if !mounted.status.success() {
        let why = String::from_utf8_lossy(&mounted.stderr).trim().to_string();
        eprintln!("SKIPPED a_node_whose_disk_fills...: cannot mount a small filesystem here: {why}");
        assert!(std::env::var_os("TOKA_REQUIRE_NETNS").is_none(), "TOKA_REQUIRE_NETNS is set: {why}");
        return;
    }
    cluster.mounts.push(home.clone());
    cluster.boot();
    let token = cluster.mint(&["--agent", "hello-rust"]);
    cluster.converge(Duration::from_secs(20));
    // Fill what is left of node 3's filesystem.
    let filler = home.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..64 {
            if f.write_all(&chunk).and_then(|()| f.flush()).is_err() {
                break;
            }
        }
    }
    let urls = Arc::new(Mutex::new(cluster.nodes[..2].iter().map(|n| (n.id, n.url())).collect::<Vec<_>>()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients = stream(urls.clone(), &token, 2, rng.next_u64(), stop.clone());
    // Node 3 cannot make its copy durable: its Raft stops (a storage error is fatal, never skipped).
    let failed_at = wait_for(Duration::from_secs(60), || {
        let (_, body) = cluster.health(2)?;
        (body["cluster"]["raft_running"] == false).then(Instant::now)
    });
    assert!(failed_at.is_some(), "node 3 never failed on its full disk: {:?} {}", cluster.health(2), cluster.log_of(2));
    let failed_at = failed_at.unwrap();
    // Its database refuses writes (the disk is full) and its Raft has stopped: both said.
    let (code, body) = cluster.health(2).unwrap();
    assert_eq!((code, body["status"].as_str(), body["log_writable"].as_bool()), (503, Some("degraded"), Some(false)));
    // The storage error: the disk's own, or redb's refusal after it (the first write to fail may be another of the
    // node's transactions, and redb then answers every later one with "Previous I/O error").
    let storage = |s: &str| s.contains("No space left on device") || s.contains("Previous I/O error");
    let why = body["cluster"]["raft_error"].as_str().unwrap_or_default();
    assert!(storage(why), "its health does not say why: {body}");
    let log = cluster.log_of(2);
    assert!(log.contains("Raft stopped") && storage(&log), "its log does not say why: {log}");
    std::thread::sleep(Duration::from_millis(1_000 + rng.below(1_000)));
    // The node is still up (no crash, no panic); the two others went on.
    let child = cluster.nodes[2].child.as_mut().unwrap();
    assert!(child.try_wait().unwrap().is_none(), "node 3 exited on a full disk: {log}");
    assert!(!cluster.log_of(2).contains("panicked"), "node 3 panicked: {}", cluster.log_of(2));
    stop.store(true, Ordering::SeqCst);
    let (acked, failed) = join(clients);
    let after = acked.iter().filter(|(_, _, t)| *t > failed_at).count();
    eprintln!("{} runs acknowledged, {failed} not; {after} after node 3's disk failed it", acked.len());
    assert!(after > 0, "the two other nodes acknowledged nothing after node 3 failed");
    // Space freed, the node restarted (its Raft stopped on the error): it reopens its log, verifies and catches up.
    std::fs::remove_file(&filler).unwrap();
    cluster.kill(2);
    cluster.spawn(2);
    check_after_fault(&cluster, &without_times(acked), &mut rng);
}

// Placement: runs go to the node the leader chooses (labels, then the least loaded); a node lost mid-run has its
// runs recorded lost in the log, and a run with retries left is started again on another node.

/// A run of `hostile` parked on a timer for `ms`, placed on a node with `labels`, started again up to `retries`
/// times if its node is lost.
fn sleeper(ms: u64, labels: &[&str], retries: u32) -> Value {
    json!({
        "component": { "path": "hostile.wasm" },
        "input": { "attack": "calls", "calls": [{ "sleep": { "ms": ms } }] },
        "limits": { "timeout_ms": 25_000 },
        "placement": { "labels": labels, "retries": retries },
    })
}

/// Submits `body` to `url`: the answer's status and body.
fn submit(url: &str, token: &str, body: &Value) -> (u16, Value) {
    let resp = client().post(format!("{url}/v1/runs")).bearer_auth(token).json(body).send().unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap())
}

/// Run `run_id` as the node at `url` sees it, once ended (or after `wait`).
fn ended_run(url: &str, token: &str, run_id: &str, wait: Duration) -> Value {
    let url = format!("{url}/v1/runs/{run_id}?wait_ms={}", wait.as_millis());
    let view: Value = client().get(url).bearer_auth(token).timeout(wait * 2).send().unwrap().json().unwrap();
    assert_eq!(view["status"], "ended", "run {run_id} has not ended within {wait:?}: {view}");
    view
}

/// The events of the node at index `i`, read from its database while it runs.
fn events_at(cluster: &Cluster, i: usize) -> Vec<Value> {
    let r = t(&cluster.nodes[i].home, &["events", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    r.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Waits until node `i`'s log holds `run_id`'s `run.started`; the node it names.
fn started_on(cluster: &Cluster, i: usize, run_id: &str) -> u64 {
    wait_for(Duration::from_secs(30), || {
        events_at(cluster, i)
            .into_iter()
            .find(|e| e["kind"] == "run.started" && e["run_id"] == run_id)
            .and_then(|e| e["payload"]["node"].as_u64())
    })
    .unwrap_or_else(|| panic!("run {run_id} never started with a node named"))
}

/// The index of the node with id `id`.
fn index_of(cluster: &Cluster, id: u64) -> usize {
    cluster.nodes.iter().position(|n| n.id == id).unwrap()
}

#[test]
fn runs_are_placed_on_nodes_with_their_labels_and_on_the_least_loaded_one() {
    let mut cluster = Cluster::new(3, &[]);
    cluster.node_args[1] = vec!["--label".into(), "zone=a".into()];
    // Node 3 runs one run at a time: a second one placed there waits for its slot.
    cluster.node_args[2] = ["--label", "zone=a", "--label", "gpu", "--max-concurrent", "1"].map(String::from).to_vec();
    cluster.boot();
    let token = cluster.mint(&["--agent", "*", "--grant", "api:read"]);
    let url = cluster.nodes[0].url();
    // A run that needs a GPU goes to node 3, the only one with the label, wherever it was submitted.
    for i in 0..3 {
        let mut body = sleeper(10, &["gpu"], 0);
        body["wait"] = json!(true);
        let (status, view) = submit(&cluster.nodes[i].url(), &token, &body);
        assert_eq!((status, view["report"]["outcome"].as_str()), (200, Some("success")), "{view}");
        assert_eq!(view["node"], 3, "{view}");
        let run_id = view["run_id"].as_str().unwrap();
        assert_eq!(started_on(&cluster, 0, run_id), 3, "the log names node 3 as where run {run_id} ran");
    }
    // The least loaded: node 3 busy with one long run, every run for zone a goes to node 2. (Placing by turns alone
    // would send some to node 3.) Each after the nodes' next load reports: until then the leader counts a run it
    // placed as running.
    let (status, busy) = submit(&url, &token, &sleeper(20_000, &["gpu"], 0));
    assert_eq!((status, &busy["node"]), (202, &json!(3)), "{busy}");
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(1_200));
        let mut body = sleeper(10, &["zone=a"], 0);
        body["wait"] = json!(true);
        let (status, view) = submit(&url, &token, &body);
        assert_eq!((status, view["report"]["outcome"].as_str()), (200, Some("success")), "{view}");
        assert_eq!(view["node"], 2, "node 3 is busy, node 2 idle: {view}");
    }
    // Positive control: without labels, runs are spread over the nodes, node 1 among them (the two idle ones come
    // first; once the leader counts as many runs placed on them as node 3 runs, node 3 takes its turn too).
    let mut nodes = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let mut body = sleeper(10, &[], 0);
        body["wait"] = json!(true);
        let (_, view) = submit(&url, &token, &body);
        assert_eq!(view["report"]["outcome"], "success", "{view}");
        nodes.insert(view["node"].as_u64().unwrap_or(1));
    }
    assert!(nodes.contains(&1) && nodes.contains(&2), "runs without labels went to {nodes:?}");
    // Refusals: no node has the label (503, named); a label that is no label (400); too many retries (400). Nothing
    // is recorded for them.
    let before_refusals = events_at(&cluster, 0).len();
    let (status, body) = submit(&url, &token, &sleeper(10, &["tpu"], 0));
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("no-node")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("tpu"), "{body}");
    let (status, body) = submit(&url, &token, &sleeper(10, &["a b"], 0));
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid-request")), "{body}");
    let (status, body) = submit(&url, &token, &sleeper(10, &[], 11));
    assert_eq!(status, 400, "{body}");
    let refused = events_at(&cluster, 0)[before_refusals..].iter().filter(|e| e["kind"] == "run.started").count();
    assert_eq!(refused, 0, "a refused placement recorded a run");
    // A run placed on node 3 while its one slot is taken waits there; cancelled through node 1 before it started,
    // it ends with no run ending of its own in the log (it never started): node 1 learns it from node 3.
    let (status, queued) = submit(&url, &token, &sleeper(10, &["gpu"], 0));
    assert_eq!((status, &queued["node"]), (202, &json!(3)), "{queued}");
    let queued_id = queued["run_id"].as_str().unwrap();
    let cancel = client().post(format!("{url}/v1/runs/{queued_id}/cancel")).bearer_auth(&token).send().unwrap();
    assert_eq!(cancel.status().as_u16(), 202);
    let view = ended_run(&url, &token, queued_id, Duration::from_secs(30));
    assert_eq!(view["report"]["outcome"], "cancelled", "{view}");
    let busy_id = busy["run_id"].as_str().unwrap();
    let client = client();
    let cancel = client.post(format!("{url}/v1/runs/{busy_id}/cancel")).bearer_auth(&token).send().unwrap();
    assert_eq!(cancel.status().as_u16(), 202, "a run placed elsewhere is cancelled through the node it was sent to");
    let view = ended_run(&url, &token, busy_id, Duration::from_secs(30));
    assert_eq!(view["report"]["outcome"], "cancelled", "{view}");
    cluster.identical_logs(Duration::from_secs(30));
}

/// A run of `notes` doing `op`, granted its agent's state, placed on a node with `labels`, waited for.
fn notes(op: Value, labels: &[&str]) -> Value {
    json!({
        "component": { "path": "notes.wasm" },
        "input": op,
        "grants": { "state": "rw" },
        "placement": { "labels": labels },
        "wait": true,
    })
}

/// Runs `notes` with `op` on a node with `labels`, submitted to node `via`: the node it ran on and its output.
fn notes_on(cluster: &Cluster, token: &str, via: usize, op: Value, labels: &[&str]) -> (u64, Value) {
    let (status, view) = submit(&cluster.nodes[via].url(), token, &notes(op, labels));
    assert_eq!((status, view["report"]["outcome"].as_str()), (200, Some("success")), "{view}");
    let output = view["report"]["result"].as_str().unwrap_or_else(|| panic!("no result: {view}"));
    (view["node"].as_u64().unwrap_or_else(|| panic!("no node: {view}")), serde_json::from_str(output).unwrap())
}

#[test]
fn an_agents_state_is_kept_by_every_node_and_its_next_run_reads_it_wherever_it_is_placed() {
    let mut rng = Rng::new(test_seed("an_agents_state_is_kept_by_every_node_and_its_next_run_reads_it_wherever"));
    let mut cluster = Cluster::new(3, &["--raft-snapshot-every", "30"]);
    cluster.node_args[1] = vec!["--label".into(), "zone=a".into()];
    cluster.node_args[2] = vec!["--label".into(), "gpu".into()];
    cluster.boot();
    let token = cluster.mint(&["--agent", "notes", "--grant", "api:read", "--grant", "state:rw"]);
    let mut via = || rng.below(3) as usize;
    // Written on node 2, read on node 3 (each submitted to any node): the value travelled with its record.
    let (node, out) =
        notes_on(&cluster, &token, via(), json!({ "op": "set", "key": "a", "value": "one" }), &["zone=a"]);
    assert_eq!((node, &out), (2, &json!({ "set": "a" })));
    let (node, out) = notes_on(&cluster, &token, via(), json!({ "op": "get", "key": "a" }), &["gpu"]);
    assert_eq!((node, &out), (3, &json!({ "value": "one" })), "node 3 reads what the run on node 2 wrote");
    // A counter moved from node to node: each run sees every increment before it, wherever it ran.
    for (i, labels) in [["gpu"], ["zone=a"], ["gpu"], ["zone=a"]].iter().enumerate() {
        let (_, out) = notes_on(&cluster, &token, via(), json!({ "op": "count" }), labels);
        assert_eq!(out, json!({ "runs": i + 1 }), "run {} of the counter on {labels:?}", i + 1);
    }
    let (_, out) = notes_on(&cluster, &token, via(), json!({ "op": "delete", "key": "a" }), &["gpu"]);
    assert_eq!(out, json!({ "existed": true }));
    let (_, out) = notes_on(&cluster, &token, via(), json!({ "op": "get", "key": "a" }), &["zone=a"]);
    assert_eq!(out, json!({ "value": null }), "deleted on node 3, gone on node 2");
    // Node 3 down while the agent writes and the log moves past a snapshot: it receives the state in the snapshot.
    cluster.kill(2);
    let (node, _) = notes_on(&cluster, &token, 0, json!({ "op": "set", "key": "b", "value": "two" }), &["zone=a"]);
    assert_eq!(node, 2);
    let leader = cluster.leader(Duration::from_secs(10));
    let before = cluster.status(leader).unwrap()["applied_index"].as_u64().unwrap();
    let mut counted = 4;
    let purged = loop {
        let (_, out) = notes_on(&cluster, &token, leader, json!({ "op": "count" }), &[]);
        counted += 1;
        assert_eq!(out, json!({ "runs": counted }));
        let purged = cluster.status(leader).unwrap()["purged_index"].as_u64().unwrap_or(0);
        if purged > before {
            break purged;
        }
        assert!(counted < 100, "the leader purged no log past index {before} in {counted} runs");
    };
    eprintln!("the leader purged its log to index {purged} (node 3 stopped at {before}) after {counted} counts");
    cluster.spawn(2);
    wait_for(Duration::from_secs(30), || cluster.status(2)?["snapshot_index"].as_u64().filter(|i| *i >= purged))
        .expect("node 3 installed a snapshot");
    let (node, out) = notes_on(&cluster, &token, via(), json!({ "op": "list", "prefix": "" }), &["gpu"]);
    assert_eq!((node, &out), (3, &json!({ "keys": ["b", "runs"] })));
    let (_, out) = notes_on(&cluster, &token, via(), json!({ "op": "count" }), &["gpu"]);
    assert_eq!(out, json!({ "runs": counted + 1 }), "every increment, those made while node 3 was down too");
    // Every node's own copy, read by the operator's command from its home: the same values.
    cluster.converge(Duration::from_secs(30));
    for node in &cluster.nodes {
        let r = t(&node.home, &["state", "get", "--agent", "notes", "b"]);
        assert_eq!((r.code, r.stdout.trim()), (0, "two"), "node {}: {}", node.id, r.stderr);
    }
    cluster.identical_logs(Duration::from_secs(30));
}

#[test]
fn a_follower_behind_by_more_than_one_request_can_carry_catches_up_in_smaller_batches() {
    let mut cluster = Cluster::start(3, &[]);
    let token = cluster.mint(&["--agent", "notes", "--grant", "api:read", "--grant", "state:rw"]);
    let leader = cluster.leader(Duration::from_secs(10));
    let behind = (leader + 1) % 3;
    cluster.kill(behind);
    // 60 values of 1 MiB (1.4 MiB each in base64 in its entry): about 84 MiB of log that node misses, more than one
    // request between nodes may carry (64 MiB). Sent at once, the batch would be refused every time.
    let big = 1 << 20;
    for _ in 0..60 {
        let (_, out) = notes_on(&cluster, &token, leader, json!({ "op": "big", "bytes": big }), &[]);
        assert_eq!(out, json!({ "stored": big }));
    }
    cluster.spawn(behind);
    let (ops, _, _) = cluster.converge(Duration::from_secs(120));
    eprintln!("node {} caught up to {ops} operations", cluster.nodes[behind].id);
    // Its own copy of the value: 1 MiB of zero bytes, printed as they are (valid UTF-8) and a newline.
    let r = t(&cluster.nodes[behind].home, &["state", "get", "--agent", "notes", "big"]);
    let id = cluster.nodes[behind].id;
    assert_eq!((r.code, r.stdout.len()), (0, big + 1), "node {id}'s copy: {}", r.stderr);
    assert!(r.stdout.bytes().take(big).all(|b| b == 0), "node {id}'s copy holds other bytes");
    assert!(!cluster.log_of(behind).contains("panicked"), "{}", cluster.log_of(behind));
}

#[test]
fn a_run_whose_node_is_lost_is_recorded_lost_and_with_retries_runs_again_elsewhere() {
    let mut rng =
        Rng::new(test_seed("a_run_whose_node_is_lost_is_recorded_lost_and_with_retries_runs_again_elsewhere"));
    // A node is lost after 2 s without a word to the leader.
    let mut cluster = Cluster::new(3, &["--node-timeout", "2s"]);
    cluster.node_args[1] = vec!["--label".into(), "worker".into()];
    cluster.node_args[2] = vec!["--label".into(), "worker".into()];
    cluster.boot();
    let token = cluster.mint(&["--agent", "*", "--grant", "api:read"]);
    let url = cluster.nodes[0].url();
    let leader = cluster.leader(Duration::from_secs(10));
    // 1. Killed (SIGKILL) mid-run, no retries: the run ends `lost`, naming the node, and is not run again.
    let (status, view) = submit(&url, &token, &sleeper(6_000, &["worker"], 0));
    assert_eq!(status, 202, "{view}");
    let first = view["run_id"].as_str().unwrap().to_string();
    let node = started_on(&cluster, 0, &first);
    std::thread::sleep(Duration::from_millis(rng.below(1_000)));
    let killed = index_of(&cluster, node);
    cluster.kill(killed);
    let killed_at = Instant::now();
    let view = ended_run(&url, &token, &first, Duration::from_secs(60));
    eprintln!(
        "run {first} on node {node} (leader: node {}) ended {:?} after the kill",
        leader + 1,
        killed_at.elapsed()
    );
    let report = &view["report"];
    assert_eq!((report["outcome"].as_str(), report["exit_code"].as_i64()), (Some("lost"), Some(103)), "{view}");
    assert_eq!(report["node"], node, "{view}");
    assert!(report["error"].as_str().unwrap().contains(&format!("node {node}")), "{view}");
    assert_eq!(report["lost_attempts"].as_array().map(Vec::len), Some(1), "{view}");
    cluster.spawn(killed);
    // 2. Paused (SIGSTOP) past the timeout, one retry: lost, then run again on the other worker to the end. When the
    //    paused node resumes, its run's ending is refused (the run is lost): the run is not completed twice.
    cluster.converge(Duration::from_secs(30));
    let (status, view) = submit(&url, &token, &sleeper(3_000, &["worker"], 1));
    assert_eq!(status, 202, "{view}");
    let second = view["run_id"].as_str().unwrap().to_string();
    let node = started_on(&cluster, 0, &second);
    let paused = index_of(&cluster, node);
    cluster.signal(paused, "STOP");
    let view = ended_run(&url, &token, &second, Duration::from_secs(60));
    let report = &view["report"];
    assert_eq!(report["outcome"], "success", "the retry completes: {view}");
    assert_ne!(report["node"], node, "{view}");
    let lost = &report["lost_attempts"][0];
    assert_eq!((lost["run_id"].as_str(), &lost["node"]), (Some(second.as_str()), &json!(node)), "{view}");
    let retry = report["run_id"].as_str().unwrap().to_string();
    assert_ne!(retry, second, "a retry is a run of its own");
    cluster.signal(paused, "CONT");
    // The resumed node's run wakes (its timer is long past) and tries to record its ending.
    std::thread::sleep(Duration::from_secs(4));
    let logs = cluster.identical_logs(Duration::from_secs(60));
    let events: Vec<Value> = logs[0].lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let of = |run: &str| -> Vec<String> {
        events.iter().filter(|e| e["run_id"] == run).map(|e| e["kind"].as_str().unwrap().to_string()).collect()
    };
    let kinds = of(&second);
    assert!(kinds.contains(&"run.failed".to_string()), "{kinds:?}");
    assert!(!kinds.contains(&"run.completed".to_string()), "the lost run was also completed: {kinds:?}");
    let lost_event = events.iter().find(|e| e["run_id"] == second && e["kind"] == "run.failed").unwrap();
    assert_eq!(
        (lost_event["payload"]["outcome"].as_str(), &lost_event["payload"]["node"]),
        (Some("lost"), &json!(node))
    );
    assert!(of(&retry).contains(&"run.completed".to_string()), "{:?}", of(&retry));
    let retry_started = events.iter().find(|e| e["run_id"] == retry && e["kind"] == "run.started").unwrap();
    assert_ne!(retry_started["payload"]["node"], node);
    assert!(of(&first).iter().filter(|k| *k == "run.failed").count() == 1, "{:?}", of(&first));
    // The resumed node's late ending was refused by the kernel, said in the log.
    let rejected =
        events.iter().any(|e| e["kind"] == "op.rejected" && e["payload"]["operation"].to_string().contains(&second));
    assert!(rejected, "the resumed node's ending of the lost run left no op.rejected");
}

#[test]
fn a_node_restarted_mid_run_records_its_old_runs_lost_before_the_leader_would() {
    // The leader would wait a minute; the restarted node says it at once.
    let mut cluster = Cluster::new(3, &["--node-timeout", "60s"]);
    cluster.node_args[1] = vec!["--label".into(), "worker".into()];
    cluster.node_args[2] = vec!["--label".into(), "worker".into()];
    cluster.boot();
    let token = cluster.mint(&["--agent", "*", "--grant", "api:read"]);
    let url = cluster.nodes[0].url();
    let (status, view) = submit(&url, &token, &sleeper(8_000, &["worker"], 1));
    assert_eq!(status, 202, "{view}");
    let run = view["run_id"].as_str().unwrap().to_string();
    let node = started_on(&cluster, 0, &run);
    let i = index_of(&cluster, node);
    cluster.kill(i);
    let restarted_at = Instant::now();
    cluster.spawn(i);
    let view = ended_run(&url, &token, &run, Duration::from_secs(60));
    let took = restarted_at.elapsed();
    let report = &view["report"];
    assert_eq!(report["outcome"], "success", "{view}");
    let lost = &report["lost_attempts"][0];
    assert_eq!(lost["node"], node, "{view}");
    assert!(lost["error"].as_str().unwrap().contains("restarted"), "{view}");
    // Lost by the restart (not the leader's minute), then run again for 8 s.
    assert!(took < Duration::from_secs(45), "the run ended {took:?} after the restart");
    cluster.identical_logs(Duration::from_secs(30));
}

/// A plan whose first step sleeps on a worker node (retried if its node is lost), then a step that needs a GPU.
const PLACED_PLAN: &str = r#"
[plan]
name = "placed"

[agents.long]
component = "hostile.wasm"
input = { attack = "calls", calls = [{ sleep = { ms = 4000 } }] }
labels = ["worker"]
retries = 2
backoff = "100ms"
limits = { timeout = "20s" }

[agents.gpu]
component = "hostile.wasm"
input = { attack = "calls", calls = [{ sleep = { ms = 10 } }] }
labels = ["gpu"]
depends_on = ["long"]
"#;

#[test]
fn a_plan_sent_to_a_follower_places_its_steps_by_label_and_survives_its_leader_being_killed() {
    let mut rng =
        Rng::new(test_seed("a_plan_sent_to_a_follower_places_its_steps_by_label_and_survives_its_leader_being_killed"));
    let mut cluster = Cluster::new(3, &[]);
    // Every node is a worker; node 3 alone has a GPU.
    for i in 0..3 {
        cluster.node_args[i] = vec!["--label".into(), "worker".into()];
    }
    cluster.node_args[2].extend(["--label".to_string(), "gpu".to_string()]);
    cluster.boot();
    let token = cluster.mint(&["--agent", "*", "--grant", "api:read"]);
    let leader = cluster.leader(Duration::from_secs(10));
    let follower = (0..3).find(|i| *i != leader).unwrap();
    let url = cluster.nodes[follower].url();
    let resp =
        client().post(format!("{url}/v1/plans")).bearer_auth(&token).json(&json!({ "manifest": PLACED_PLAN })).send();
    let resp = resp.unwrap();
    let status = resp.status().as_u16();
    let started: Value = resp.json().unwrap();
    assert_eq!(status, 202, "{started}");
    let plan_id = started["plan_id"].as_str().unwrap().to_string();
    // While the first step runs (wherever it was placed), the leader is killed.
    let view = |url: &str| -> Value {
        client().get(format!("{url}/v1/plans/{plan_id}")).bearer_auth(&token).send().unwrap().json().unwrap()
    };
    wait_for(Duration::from_secs(30), || {
        let v = view(&url);
        v["steps"].as_array()?.iter().any(|s| s["name"] == "long" && s["status"] == "running").then_some(())
    })
    .expect("the first step started");
    std::thread::sleep(Duration::from_millis(300 + rng.below(1_500)));
    let killed = cluster.nodes[leader].id;
    cluster.kill(leader);
    eprintln!("node {killed} (the leader) killed while the plan ran on node {}", cluster.nodes[follower].id);
    let ended = wait_for(Duration::from_secs(120), || {
        let v = view(&url);
        (v["status"] != "running").then_some(v)
    })
    .expect("the plan ended");
    assert_eq!(ended["status"], "completed", "{ended}");
    cluster.spawn(leader);
    let logs = cluster.identical_logs(Duration::from_secs(60));
    let events: Vec<Value> = logs[0].lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let steps: Vec<&Value> = ended["steps"].as_array().unwrap().iter().collect();
    let run_of = |name: &str| steps.iter().find(|s| s["name"] == name).unwrap()["run_id"].as_str().unwrap().to_string();
    let node_of = |run: &str| {
        events.iter().find(|e| e["kind"] == "run.started" && e["run_id"] == run).unwrap()["payload"]["node"].as_u64()
    };
    assert_eq!(node_of(&run_of("gpu")), Some(3), "the GPU step ran on node 3, the only one with the label");
    let long = node_of(&run_of("long")).expect("the first step names its node");
    // If the first step was placed on the killed leader, its first attempt was lost and the plan retried it.
    let lost: Vec<&Value> =
        events.iter().filter(|e| e["kind"] == "run.failed" && e["payload"]["outcome"] == "lost").collect();
    eprintln!("the first step's last attempt ran on node {long}; {} attempt(s) lost", lost.len());
    assert!(lost.iter().all(|e| e["payload"]["node"] == killed), "only the killed node's runs are lost: {lost:?}");
    assert_ne!(long, killed, "the step's completed attempt cannot be on the killed node");
}
