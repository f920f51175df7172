//! `toka-host cluster init | join | status | remove | revoke`: found a cluster, add and remove nodes, look at a node's
//! view of it, and revoke a token on every node. All but `init` talk to a running node (`--server`) with the
//! cluster's secret from the bundle (`HOME/cluster.json`, or `--cluster`).

use crate::cluster::bundle::{self, Bundle};
use crate::cluster::network::Status;
use crate::home::Home;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

/// A node could not be reached, or refused this bundle's secret.
pub const EXIT_UNREACHABLE: i32 = 108;
/// The cluster refused the request (no leader, a membership change it cannot make, a rejected operation).
pub const EXIT_REFUSED: i32 = 109;
/// The bundle is missing or invalid, or this home belongs to another cluster or has other root keys.
pub const EXIT_BUNDLE: i32 = 110;

// (Not a doc comment: the subcommand's `--help` text is its variant's in `commands::Command`.)
// Run a cluster of toka-host nodes that replicate one log of operations (see the README's "Cluster").
#[derive(Debug, Args)]
pub struct ClusterCommand {
    #[command(subcommand)]
    pub command: ClusterSub,
}

#[derive(Debug, Subcommand)]
pub enum ClusterSub {
    /// Found a cluster: makes this home's root keys (if it has none) and the cluster's secret, and writes the
    /// bundle every node's `serve --cluster` needs (a secret: copy it to the other nodes privately).
    Init {
        /// This (founding) node's id.
        #[arg(long, value_name = "N", default_value_t = 1)]
        node_id: u64,
        /// This node's base URL as the other nodes reach it, e.g. http://10.0.0.1:7878.
        #[arg(long, value_name = "URL")]
        addr: String,
        /// Where to write the bundle (default: HOME/cluster.json; it is always installed there too).
        #[arg(long, value_name = "FILE")]
        bundle: Option<PathBuf>,
    },
    /// Add a running node (`serve --node-id N --cluster BUNDLE`) to the cluster: as a learner until it has caught
    /// up, then as a voter.
    Join {
        /// Any node of the cluster (the request goes on to the leader).
        #[arg(long, value_name = "URL")]
        server: String,
        /// The new node's id.
        #[arg(long, value_name = "N")]
        node_id: u64,
        /// The new node's base URL as the other nodes reach it.
        #[arg(long, value_name = "URL")]
        addr: String,
        #[command(flatten)]
        bundle: BundleArg,
    },
    /// A node's view of the cluster: its role, the leader, the members, and its log's heads.
    Status {
        /// The node to ask.
        #[arg(long, value_name = "URL")]
        server: String,
        /// Check with the leader first, so that every write acknowledged before is included (else: this node's
        /// database as it stands).
        #[arg(long)]
        linearizable: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        bundle: BundleArg,
    },
    /// Remove a node from the cluster (it stops voting and receiving the log).
    Remove {
        /// Any node of the cluster (the request goes on to the leader).
        #[arg(long, value_name = "URL")]
        server: String,
        /// The node to remove.
        #[arg(long, value_name = "N")]
        node_id: u64,
        #[command(flatten)]
        bundle: BundleArg,
    },
    /// Revoke a token (a revocation id, as `token inspect` shows) on every node of the cluster.
    Revoke {
        /// Any node of the cluster.
        #[arg(long, value_name = "URL")]
        server: String,
        /// The revocation id.
        id: String,
        #[command(flatten)]
        bundle: BundleArg,
    },
}

#[derive(Debug, Clone, Args)]
pub struct BundleArg {
    /// The cluster's bundle (default: HOME/cluster.json).
    #[arg(long = "cluster", value_name = "FILE")]
    pub file: Option<PathBuf>,
}

impl BundleArg {
    fn load(&self, home: &Home) -> Result<Bundle, i32> {
        let file = self.file.clone().unwrap_or_else(|| bundle::path(&home.dir));
        Bundle::read(&file).map_err(|e| fail(EXIT_BUNDLE, e))
    }
}

fn fail(code: i32, e: impl std::fmt::Display) -> i32 {
    eprintln!("toka-host: {}", crate::error::one_line(&e.to_string()));
    code
}

fn now_ms() -> u64 {
    crate::events::now_ms()
}

impl ClusterCommand {
    pub fn execute(self, home: &Home) -> i32 {
        match self.run(home) {
            Ok(()) => 0,
            Err(code) => code,
        }
    }

    fn run(self, home: &Home) -> Result<(), i32> {
        match self.command {
            ClusterSub::Init { node_id, addr, bundle } => {
                let made = Bundle::create(&home.dir, node_id, &addr, now_ms()).map_err(|e| fail(EXIT_BUNDLE, e))?;
                made.install(&home.dir).map_err(|e| fail(EXIT_BUNDLE, e))?;
                let file = bundle.unwrap_or_else(|| bundle::path(&home.dir));
                made.write(&file).map_err(|e| fail(EXIT_BUNDLE, e))?;
                println!("cluster {} founded by node {node_id} at {}", made.cluster, made.founder.addr);
                println!("bundle: {} (a secret: copy it privately to each node)", file.display());
                println!(
                    "start this node: toka-host serve --addr ADDR --node-id {node_id} --cluster {}",
                    file.display()
                );
                Ok(())
            }
            ClusterSub::Join { server, node_id, addr, bundle } => {
                let b = bundle.load(home)?;
                bundle::check_addr(&addr).map_err(|e| fail(crate::error::Outcome::InvalidInput.exit_code(), e))?;
                let body = serde_json::json!({ "node_id": node_id, "addr": addr });
                let answer = to_leader(&b, &server, reqwest::Method::POST, "/v1/cluster/nodes", Some(&body))?;
                println!("node {node_id} ({addr}) joined cluster {} (log index {})", b.cluster, answer["log_index"]);
                Ok(())
            }
            ClusterSub::Remove { server, node_id, bundle } => {
                let b = bundle.load(home)?;
                let path = format!("/v1/cluster/nodes/{node_id}");
                let answer = to_leader(&b, &server, reqwest::Method::DELETE, &path, None)?;
                println!("node {node_id} removed from cluster {} (log index {})", b.cluster, answer["log_index"]);
                Ok(())
            }
            ClusterSub::Revoke { server, id, bundle } => {
                let b = bundle.load(home)?;
                let body = serde_json::json!({ "token_id": id });
                let answer = request(&b, &server, reqwest::Method::POST, "/v1/cluster/revoke", Some(&body))?;
                println!("revoked {id} on every node of cluster {} (operation {})", b.cluster, answer["op_seq"]);
                Ok(())
            }
            ClusterSub::Status { server, linearizable, json, bundle } => {
                let b = bundle.load(home)?;
                let path = format!("/v1/cluster/status?linearizable={linearizable}");
                let answer = request(&b, &server, reqwest::Method::GET, &path, None)?;
                if json {
                    println!("{answer}");
                    return Ok(());
                }
                let s: Status = serde_json::from_value(answer).map_err(|e| fail(EXIT_UNREACHABLE, e))?;
                let leader = s.leader.map_or("none".to_string(), |l| l.to_string());
                println!("cluster {}: node {} is {} (term {}, leader {leader})", s.cluster, s.node_id, s.state, s.term);
                for (id, addr) in &s.nodes {
                    let role = if s.voters.contains(id) { "voter" } else { "learner" };
                    println!("  node {id}  {addr}  {role}");
                }
                let applied = s.applied_index.map_or("none".to_string(), |i| i.to_string());
                println!(
                    "log: {} operations, {} events, head {} (raft applied {applied}; read: {})",
                    s.ops, s.events, s.head, s.read
                );
                Ok(())
            }
        }
    }
}

/// One request to a node, with the cluster's secret; the answer's JSON, or an exit code.
fn request(
    b: &Bundle,
    server: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value, i32> {
    send(b, server, method, path, body).map_err(|(code, e)| fail(code, e))
}

fn send(
    b: &Bundle,
    server: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value, (i32, String)> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| (EXIT_UNREACHABLE, e.to_string()))?;
    let url = format!("{}{path}", server.trim_end_matches('/'));
    let mut req = client.request(method, &url).bearer_auth(&b.secret);
    if let Some(body) = body {
        req = req.json(body);
    }
    let response = req.send().map_err(|e| (EXIT_UNREACHABLE, format!("cluster: {url}: {e}")))?;
    let status = response.status();
    let answer: serde_json::Value = response.json().unwrap_or_default();
    if status.is_success() {
        return Ok(answer);
    }
    let message = answer["error"]["message"].as_str().unwrap_or("no message").to_string();
    let code = if status == reqwest::StatusCode::UNAUTHORIZED { EXIT_UNREACHABLE } else { EXIT_REFUSED };
    if status == reqwest::StatusCode::MISDIRECTED_REQUEST {
        let leader = answer["leader"].as_str().unwrap_or("unknown");
        return Err((code, format!("cluster: {server} is not the leader (leader: {leader})|{leader}")));
    }
    Err((code, format!("cluster: {server} answered {status}: {message}")))
}

/// A request only the leader can serve: sent to `server`, then (once) to the leader it names.
fn to_leader(
    b: &Bundle,
    server: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value, i32> {
    match send(b, server, method.clone(), path, body) {
        Err((code, e)) if e.contains("is not the leader") => {
            let (message, leader) = e.rsplit_once('|').unwrap_or((&e, ""));
            if leader.is_empty() || leader == "unknown" || leader == server {
                return Err(fail(code, message));
            }
            request(b, leader, method, path, body)
        }
        Err((code, e)) => Err(fail(code, e)),
        Ok(answer) => Ok(answer),
    }
}
