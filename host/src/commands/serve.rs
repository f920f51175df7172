//! `toka-host serve`: the long-running host behind an HTTP API (see [`crate::service`]).

use crate::error::RunError;
use crate::home::Home;
use crate::runtime::{Host, HostOptions};
use crate::service::{Service, ServiceConfig};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

// (Not a doc comment: the subcommand's `--help` text is its variant's in `commands::Command`.)
// Serve the host over HTTP: submit runs, watch events live, call tools, read metrics (see `/openapi.json`).
//
// Every route but /health needs `Authorization: Bearer <token>` (a token from this home's key store): a run is
// authorized with the bearer token narrowed to exactly that run; reading runs, events and metrics needs `api:read`.
#[derive(Debug, Args)]
pub struct ServeCommand {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7878")]
    pub addr: SocketAddr,

    /// Runs at once.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub max_concurrent: usize,

    /// Runs waiting for a slot; past this, submissions are refused with 429.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_queue: usize,

    /// Largest request body (uploaded components included), e.g. 64MiB.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = crate::units::parse_size)]
    pub max_body: u64,

    /// A directory whose components may be run by path (repeatable); without one, only uploads run.
    #[arg(long = "component-dir", value_name = "DIR")]
    pub component_dirs: Vec<PathBuf>,

    #[command(flatten)]
    pub connections: ConnectionArgs,

    /// On shutdown, how long running runs get to finish before they are cancelled.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = crate::units::parse_duration)]
    pub shutdown_grace: Duration,

    /// Store the prompts and completions of runs' model calls in the event log (bounded like every payload).
    #[arg(long)]
    pub record_prompts: bool,

    /// Log format on stderr: `text` or `json` (one JSON object per line).
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// Also export traces (a span per request, with the run's load, authorization, run and records under it) over
    /// OTLP/HTTP as JSON to this collector, e.g. http://127.0.0.1:4318 (its /v1/traces). Off by default.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// Run as node N of a cluster (with --cluster): its operations go through the cluster's replicated log.
    #[arg(long, value_name = "N", requires = "cluster")]
    pub node_id: Option<u64>,

    /// The cluster's bundle (from `toka-host cluster init`); installed into this home on first use.
    #[arg(long, value_name = "FILE", requires = "node_id")]
    pub cluster: Option<PathBuf>,

    /// A label of this node (repeatable), e.g. `gpu` or `zone=eu-1`: a run that requires labels
    /// (`placement.labels`) is placed only on a node that has them all.
    #[arg(long = "label", value_name = "LABEL", requires = "cluster")]
    pub labels: Vec<String>,

    /// A node the leader has not heard from for this long is lost, with its runs (which may then run elsewhere).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = crate::units::parse_duration,
          hide = true)]
    pub node_timeout: Duration,

    /// Raft heartbeat interval in milliseconds (elections after 3 to 6 missed heartbeats).
    #[arg(long, value_name = "MS", default_value_t = 100, hide = true)]
    pub raft_heartbeat_ms: u64,

    /// Raft log entries between snapshots (the log before a snapshot is purged).
    #[arg(long, value_name = "N", default_value_t = 20_000, hide = true)]
    pub raft_snapshot_every: u64,
}

// (Not a doc comment: flattened into subcommands, whose `--help` text is their variant's.)
// The bounds on client connections, the same flags on every listening command (`serve`, `mcp --http`, `registry
// serve`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ConnectionArgs {
    /// Most client connections open at once; one more is answered 503 and closed. Default: half the file
    /// descriptors the process keeps for itself (an eighth of its limit, at least 256).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,

    /// Most connections open at once from one IP address. Default: a quarter of --max-connections.
    #[arg(long = "max-connections-per-ip", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_ip: Option<u32>,

    /// How long a client has to send a request's headers, from connecting or from the previous response: a
    /// client that sends nothing (an idle kept-alive connection too) or too slowly is closed after it. A body must
    /// then keep coming: all of it within this time plus a second per KiB received. Default: 30s.
    #[arg(long, value_name = "DURATION", value_parser = crate::units::parse_duration)]
    pub header_timeout: Option<Duration>,
}

impl ConnectionArgs {
    /// The flags, with the process's defaults for those not given.
    pub fn limits(&self) -> crate::http::Limits {
        let defaults = crate::http::Limits::for_process();
        let max_connections = self.max_connections.map_or(defaults.max_connections, |n| n as usize);
        let per_peer = match self.max_connections_per_ip {
            Some(n) => n as usize,
            None if self.max_connections.is_some() => (max_connections / 4).max(1),
            None => defaults.per_peer,
        };
        let header_timeout = self.header_timeout.unwrap_or(defaults.header_timeout);
        crate::http::Limits { max_connections, per_peer, header_timeout }
    }

    /// Whether any of the flags was given.
    pub fn given(&self) -> bool {
        self.max_connections.is_some() || self.max_connections_per_ip.is_some() || self.header_timeout.is_some()
    }
}

impl ServeCommand {
    pub fn execute(self, home: &Home) -> i32 {
        let telemetry =
            match crate::telemetry::Telemetry::init(self.log_format == "json", self.otlp_endpoint.as_deref()) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("toka-host: {e}");
                    return crate::error::Outcome::InvalidInput.exit_code();
                }
            };
        let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("toka-host: cannot start the async runtime: {e}");
                return 79;
            }
        };
        let served = rt.block_on(self.serve(home));
        // The runtime goes first (its tasks hold spans), then the last spans are exported.
        drop(rt);
        telemetry.shutdown();
        match served {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("toka-host: {e}");
                e.outcome().exit_code()
            }
        }
    }

    async fn serve(self, home: &Home) -> Result<(), RunError> {
        // A first compile of a large component is said in the log, as the rest of the server's doings are.
        // On-demand instances, not the pooling allocator: a pool has a fixed number of slots (the 65th concurrent run
        // would fail), while a server runs as many agents as clients start (10,000 parked agents measured by the
        // `density` bench); a run's durable records cost far more than the pool saves per instantiation.
        let options = HostOptions {
            pooling: false,
            progress: Some(crate::progress::Delayed::log()),
            record_prompts: self.record_prompts,
        };
        crate::cluster::placement::check_labels(&self.labels)
            .map_err(|e| RunError::InvalidInput(format!("--label: {e}")))?;
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .map_err(|e| RunError::host(format!("serve: cannot listen on {}: {e}", self.addr)))?;
        let local = listener.local_addr().map_err(RunError::host)?;
        let (host, cluster) = match (&self.cluster, self.node_id) {
            (Some(bundle), Some(node_id)) => {
                let (host, cluster) = self.join_cluster(home, options, bundle, node_id).await?;
                (host, Some(cluster))
            }
            _ => (Host::open(home.clone(), options)?, None),
        };
        let config = ServiceConfig {
            max_concurrent: self.max_concurrent.max(1),
            max_queue: self.max_queue,
            max_body: usize::try_from(self.max_body).unwrap_or(usize::MAX),
            component_dirs: self.component_dirs.clone(),
            shutdown_grace: self.shutdown_grace,
            cluster: cluster.clone(),
            labels: self.labels.clone(),
            connections: self.connections.limits(),
            ..ServiceConfig::default()
        };
        let service = Service::new(host, config);
        // The address on stdout (for scripts and tests); everything else goes to stderr.
        println!("toka-host: serving on http://{local} (dashboard at /, API under /v1, /openapi.json)");
        let Some(cluster) = cluster else {
            return crate::service::serve(service, listener, shutdown_signal()).await.map_err(RunError::host);
        };
        let running = {
            let service = service.clone();
            std::sync::Arc::new(move || service.runs.running_here() as u64)
        };
        let slots = self.max_concurrent.max(1) as u64;
        cluster.start_placement(self.labels.clone(), slots, running, service.shutdown.clone());
        let routes = crate::cluster::network::routes(cluster.clone());
        let served = crate::service::serve_with(service, listener, shutdown_signal(), routes).await;
        cluster.shutdown().await;
        served.map_err(RunError::host)
    }

    /// Makes this home a node of the bundle's cluster and starts its Raft: the host's event log is the cluster's
    /// (every operation goes through the leader and is applied to this node's database by the state machine).
    async fn join_cluster(
        &self,
        home: &Home,
        options: HostOptions,
        bundle: &std::path::Path,
        node_id: u64,
    ) -> Result<(Host, crate::cluster::Cluster), RunError> {
        use crate::cluster::{Bundle, Cluster, ClusterOptions};
        use crate::events::{EventLog, LogStats, Signer};
        use std::sync::Arc;
        let bundle = Bundle::read(bundle).map_err(RunError::host)?;
        home.ensure_dir().map_err(RunError::host)?;
        bundle.install(&home.dir).map_err(RunError::host)?;
        let db = home.open_db().map_err(|e| RunError::host(format!("event log: {e}")))?;
        let stats = Arc::new(LogStats::default());
        let heartbeat_ms = self.raft_heartbeat_ms.clamp(10, 10_000);
        let cluster_options = ClusterOptions {
            heartbeat_ms,
            snapshot_every: self.raft_snapshot_every.max(1),
            leaderless_after: ClusterOptions::leaderless_for(heartbeat_ms),
            node_timeout: self.node_timeout.max(Duration::from_secs(1)),
            ..ClusterOptions::default()
        };
        let cluster =
            Cluster::start(node_id, bundle, db.clone(), Some(Signer::for_home(home)), stats.clone(), &cluster_options)
                .await
                .map_err(RunError::host)?;
        let log = Arc::new(EventLog::replicated(db, Arc::new(cluster.clone()), stats));
        let host = Host::open_with_log(home.clone(), options, log)?;
        tracing::info!(node_id, cluster = %cluster.bundle.cluster, "cluster node started");
        Ok((host, cluster))
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => drop(s.recv().await),
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
