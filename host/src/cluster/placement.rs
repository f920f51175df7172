//! Placement: which node of the cluster a run executes on, and the end of the runs of a node that was lost.
//!
//! Every node reports its load (runs in flight, run slots) and its labels to the leader every [`REPORT_EVERY`]; the
//! leader keeps the reports in memory (load is not history, so it is not in the log) and places a run on the least
//! loaded live member whose labels include every label the run requires. A node the leader has not heard from for
//! the node timeout is lost: the leader ends each of its live runs with a `lose-run` operation (`run.failed`, outcome
//! `lost`), which the kernel accepts only for a live run on exactly that node, and which fences the run: anything the
//! node records for it afterwards (if it was only slow) is rejected. Whoever submitted the run may then run it again
//! elsewhere. A node that restarts ends, once it has caught up with the log, the runs its previous process left.
//!
//! It must never place a run on a node that is not a member or has not reported within the timeout, and never lose a
//! run of a node it has heard from within the timeout: a new leader has heard from nobody yet, so it waits a whole
//! timeout before it loses anything.

use super::{Cluster, Leadership, NodeId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often a node reports its load to the leader (and the leader looks for lost nodes).
pub const REPORT_EVERY: Duration = Duration::from_millis(500);
/// Most labels a node has or a run requires.
pub const MAX_LABELS: usize = 16;
/// Longest label, in bytes.
pub const MAX_LABEL: usize = 64;

/// Checks labels: at most [`MAX_LABELS`], each 1 to [`MAX_LABEL`] bytes of `A-Z a-z 0-9 . _ - = :` (`gpu`,
/// `zone=eu-1`).
pub fn check_labels(labels: &[String]) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!("{} labels; at most {MAX_LABELS}", labels.len()));
    }
    for l in labels {
        let ok = !l.is_empty()
            && l.len() <= MAX_LABEL
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-=:".contains(&b));
        if !ok {
            let shown: String = l.chars().take(MAX_LABEL).collect();
            return Err(format!("label {shown:?}: give 1 to {MAX_LABEL} characters of letters, digits and . _ - = :"));
        }
    }
    Ok(())
}

/// What a node tells the leader about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadReport {
    pub node: NodeId,
    pub labels: Vec<String>,
    /// Runs in flight on the node (queued or running).
    pub running: u64,
    /// Runs it executes at once.
    pub slots: u64,
}

/// A request for a node to run on.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceRequest {
    /// Labels the node must have (all of them).
    #[serde(default)]
    pub labels: Vec<String>,
    /// Nodes not to place on (those a previous attempt was lost with, or could not be reached on).
    #[serde(default)]
    pub exclude: Vec<NodeId>,
}

/// Where a run goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    pub node: NodeId,
    /// The node's address (as in the cluster's membership).
    pub addr: String,
}

/// Why a run could not be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    /// No leader is known (an election, or this node is cut off): nothing can be placed.
    #[error("cluster: {0}")]
    NoLeader(String),
    /// No live member has the labels (or every one is excluded).
    #[error("cluster: {0}")]
    NoNode(String),
}

/// A node as the leader last heard of it.
#[derive(Debug, Clone)]
struct Seen {
    report: LoadReport,
    at: Instant,
    /// Runs placed on it since its last report (counted as load until the next report says so itself).
    placed: u64,
}

/// The leader's view of the nodes' load; empty on a node that does not lead.
#[derive(Debug, Default)]
pub struct Loads {
    seen: Mutex<BTreeMap<NodeId, Seen>>,
    /// Rotates among equally loaded nodes.
    turn: AtomicU64,
    /// Since when this node has led without a break (`None`: it does not lead).
    leading_since: Mutex<Option<Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Loads {
    /// Takes a node's report.
    pub fn record(&self, report: LoadReport) {
        lock(&self.seen).insert(report.node, Seen { report, at: Instant::now(), placed: 0 });
    }

    /// Chooses a node among `members` for a run that needs `request`'s labels: live (reported within `timeout`),
    /// not excluded, least loaded for its slots; ties rotate.
    pub fn choose(
        &self,
        members: &BTreeMap<NodeId, String>,
        request: &PlaceRequest,
        timeout: Duration,
    ) -> Result<Placed, PlaceError> {
        let mut seen = lock(&self.seen);
        let live: Vec<NodeId> = seen
            .iter()
            .filter(|(id, s)| members.contains_key(id) && s.at.elapsed() <= timeout)
            .map(|(id, _)| *id)
            .collect();
        let fits: Vec<NodeId> = live
            .iter()
            .copied()
            .filter(|id| !request.exclude.contains(id))
            .filter(|id| request.labels.iter().all(|l| seen[id].report.labels.contains(l)))
            .collect();
        // Load in thousandths of the node's slots; equal loads take turns.
        let load = |s: &Seen| (s.report.running + s.placed).saturating_mul(1000) / s.report.slots.max(1);
        let Some(best) = fits.iter().map(|id| load(&seen[id])).min() else {
            let labels = if request.labels.is_empty() {
                String::new()
            } else {
                format!(" with labels {}", request.labels.join(", "))
            };
            let excluded = if request.exclude.is_empty() {
                String::new()
            } else {
                format!(" (not counting nodes {:?})", request.exclude)
            };
            return Err(PlaceError::NoNode(format!("no live node{labels} to run on{excluded}; live nodes: {live:?}")));
        };
        let tied: Vec<NodeId> = fits.into_iter().filter(|id| load(&seen[id]) == best).collect();
        let node = tied[(self.turn.fetch_add(1, Ordering::Relaxed) as usize) % tied.len()];
        if let Some(s) = seen.get_mut(&node) {
            s.placed += 1;
        }
        Ok(Placed { node, addr: members[&node].clone() })
    }

    /// The nodes not heard from within `timeout` among `nodes`, with how long it has been (`None`: never).
    fn silent(&self, nodes: &BTreeSet<NodeId>, timeout: Duration) -> Vec<(NodeId, Option<Duration>)> {
        let seen = lock(&self.seen);
        nodes
            .iter()
            .filter_map(|id| match seen.get(id) {
                Some(s) if s.at.elapsed() <= timeout => None,
                Some(s) => Some((*id, Some(s.at.elapsed()))),
                None => Some((*id, None)),
            })
            .collect()
    }

    /// Notes whether this node leads now; returns for how long it has led without a break.
    fn leading(&self, leads: bool) -> Option<Duration> {
        let mut since = lock(&self.leading_since);
        match (leads, *since) {
            (false, _) => {
                *since = None;
                // A later leadership starts from nothing: reports from an earlier term say nothing of now.
                lock(&self.seen).clear();
                None
            }
            (true, None) => {
                *since = Some(Instant::now());
                Some(Duration::ZERO)
            }
            (true, Some(t)) => Some(t.elapsed()),
        }
    }
}

impl Cluster {
    /// The members' addresses, by node id.
    pub fn members(&self) -> BTreeMap<NodeId, String> {
        let m = self.raft.metrics().borrow().clone();
        m.membership_config.membership().nodes().map(|(id, n)| (*id, n.addr.clone())).collect()
    }

    /// A node for a run that needs `request`'s labels, chosen by the leader (asked over HTTP if this node does not
    /// lead).
    pub async fn place(&self, request: &PlaceRequest) -> Result<Placed, PlaceError> {
        match self.leadership() {
            Leadership::Leads => loop {
                let chosen = self.loads.choose(&self.members(), request, self.node_timeout);
                // A new leader has heard from nobody yet: the reports come within one round.
                let led = self.loads.leading(true).unwrap_or_default();
                match chosen {
                    Err(PlaceError::NoNode(_)) if led < REPORT_EVERY * 3 => {
                        tokio::time::sleep(REPORT_EVERY / 2).await;
                    }
                    other => return other,
                }
            },
            Leadership::Follows(leader) => {
                let Some(addr) = self.members().get(&leader).cloned() else {
                    return Err(PlaceError::NoLeader(format!("the leader (node {leader}) is not a member")));
                };
                // A fresh connection: a leader cut off since the last request is found by the connect timeout,
                // never waited for on a pooled connection that leads nowhere.
                super::network::place(&self.fresh, &addr, &self.bundle.secret, request).await
            }
            Leadership::None { .. } => {
                Err(PlaceError::NoLeader(format!("node {} knows no leader; nothing can be placed", self.node_id)))
            }
        }
    }

    /// Reports this node's load to the leader (to itself, if it leads). Best effort: a report lost is the same as a
    /// late one, and the next follows within [`REPORT_EVERY`].
    async fn report(&self, report: LoadReport) {
        match self.leadership() {
            Leadership::Leads => self.loads.record(report),
            Leadership::Follows(leader) => {
                if let Some(addr) = self.members().get(&leader) {
                    super::network::report(&self.client, addr, &self.bundle.secret, &report).await;
                }
            }
            Leadership::None { .. } => {}
        }
    }

    /// Starts placement on this node: its load reports (labels, `slots`, and `running()` runs in flight), the
    /// leader's search for lost nodes, and the end of the runs this node's previous process left running. Stops when
    /// `stop` is cancelled.
    pub fn start_placement(
        &self,
        labels: Vec<String>,
        slots: u64,
        running: std::sync::Arc<dyn Fn() -> u64 + Send + Sync>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let this = self.clone();
        let reporting = stop.clone();
        tokio::spawn(async move {
            let mut restarted = false;
            loop {
                let report = LoadReport { node: this.node_id, labels: labels.clone(), running: running(), slots };
                this.report(report).await;
                if !restarted {
                    restarted = this.lose_previous_runs().await;
                }
                tokio::select! {
                    () = tokio::time::sleep(REPORT_EVERY) => {}
                    () = reporting.cancelled() => return,
                }
            }
        });
        let this = self.clone();
        tokio::spawn(async move {
            let mut losing = BTreeSet::new();
            loop {
                tokio::select! {
                    () = tokio::time::sleep(REPORT_EVERY) => {}
                    () = stop.cancelled() => return,
                }
                this.lose_silent_nodes(&mut losing).await;
            }
        });
    }

    /// The leader's look for lost nodes: ends every live run of a node not heard from within the node timeout (or
    /// no longer a member). `losing`: runs whose loss this node has already recorded (or tried to).
    async fn lose_silent_nodes(&self, losing: &mut BTreeSet<String>) {
        let leads = matches!(self.leadership(), Leadership::Leads);
        match self.loads.leading(leads) {
            Some(led) if led >= self.node_timeout => {}
            _ => return,
        }
        let db = self.db.clone();
        let state = match tokio::task::spawn_blocking(move || crate::events::log::kernel_state(&db)).await {
            Ok(Ok(state)) => state,
            Ok(Err(e)) => return tracing::warn!("placement: cannot read the kernel's state: {e}"),
            Err(e) => return tracing::warn!("placement: cannot read the kernel's state: {e}"),
        };
        losing.retain(|run| state.runs.contains_key(run));
        let members = self.members();
        let on_nodes: BTreeSet<NodeId> =
            state.runs.values().filter_map(|r| r.node).filter(|n| *n != self.node_id).collect();
        for (node, silent_for) in self.loads.silent(&on_nodes, self.node_timeout) {
            let reason = if !members.contains_key(&node) {
                "it is no longer a member of the cluster".to_string()
            } else {
                match silent_for {
                    Some(d) => format!("no word from it for {} ms", d.as_millis()),
                    None => format!("no word from it since node {} began to lead", self.node_id),
                }
            };
            let runs: Vec<&String> = state
                .runs
                .iter()
                .filter(|(id, r)| r.node == Some(node) && !losing.contains(*id))
                .map(|(id, _)| id)
                .collect();
            for run_id in runs {
                losing.insert(run_id.clone());
                tracing::warn!(run_id = %run_id, node, "placement: the run is lost with its node: {reason}");
                self.lose(run_id, node, &reason).await;
            }
        }
    }

    /// Once this node has caught up with the log: ends the runs recorded as running on it that an earlier process
    /// of this node started (it restarted, so they cannot be running). `true` once done.
    async fn lose_previous_runs(&self) -> bool {
        if matches!(self.leadership(), Leadership::None { .. }) {
            return false;
        }
        match tokio::time::timeout(Duration::from_secs(5), self.linearizable_read(false)).await {
            Ok(Ok(_)) => {}
            _ => return false,
        }
        let db = self.db.clone();
        let state = match tokio::task::spawn_blocking(move || crate::events::log::kernel_state(&db)).await {
            Ok(Ok(state)) => state,
            _ => return false,
        };
        let reason = "the node restarted while the run was running";
        for (run_id, _) in
            state.runs.iter().filter(|(_, r)| r.node == Some(self.node_id) && r.started_ms < self.boot_ms)
        {
            tracing::warn!(run_id = %run_id, "placement: the run is lost: {reason}");
            self.lose(run_id, self.node_id, reason).await;
        }
        true
    }

    /// Records run `run_id` as lost with `node`.
    async fn lose(&self, run_id: &str, node: NodeId, reason: &str) {
        let op = crate::kernel::Op::LoseRun { run_id: run_id.into(), node, reason: reason.into() };
        let mut op = crate::journal::operation(op);
        if let Err(why) = crate::bounds::bound_operation(&mut op) {
            return tracing::warn!(run_id, "placement: cannot record the loss: {why}");
        }
        let text = serde_json::to_string(&op).expect("an operation serializes");
        match self.write(text).await {
            Ok(applied) => {
                if let Some(why) = applied.rejected {
                    // It ended meanwhile (or another node recorded the loss first).
                    tracing::info!(run_id, "placement: the loss was not recorded: {why}");
                }
            }
            Err(e) => tracing::warn!(run_id, "placement: cannot record the loss: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(node: NodeId, labels: &[&str], running: u64, slots: u64) -> LoadReport {
        LoadReport { node, labels: labels.iter().map(|l| l.to_string()).collect(), running, slots }
    }

    fn members(ids: &[NodeId]) -> BTreeMap<NodeId, String> {
        ids.iter().map(|id| (*id, format!("http://127.0.0.1:{}", 7100 + id))).collect()
    }

    #[test]
    fn the_least_loaded_member_with_the_labels_is_chosen() {
        let loads = Loads::default();
        loads.record(report(1, &[], 3, 4));
        loads.record(report(2, &["gpu"], 3, 4));
        loads.record(report(3, &["gpu"], 1, 4));
        let any = PlaceRequest::default();
        let timeout = Duration::from_secs(5);
        assert_eq!(loads.choose(&members(&[1, 2, 3]), &any, timeout).unwrap().node, 3);
        let gpu = PlaceRequest { labels: vec!["gpu".into()], exclude: vec![3] };
        assert_eq!(loads.choose(&members(&[1, 2, 3]), &gpu, timeout).unwrap().node, 2);
        let gpu_eu = PlaceRequest { labels: vec!["gpu".into(), "zone=eu".into()], exclude: vec![] };
        let err = loads.choose(&members(&[1, 2, 3]), &gpu_eu, timeout).unwrap_err();
        assert!(matches!(&err, PlaceError::NoNode(m) if m.contains("gpu, zone=eu")), "{err}");
        // A node that reported but is no longer a member is never chosen.
        assert_eq!(loads.choose(&members(&[1, 2]), &PlaceRequest::default(), timeout).unwrap().node, 1);
    }

    #[test]
    fn placements_count_as_load_until_the_next_report() {
        let loads = Loads::default();
        loads.record(report(1, &[], 0, 2));
        loads.record(report(2, &[], 0, 2));
        let m = members(&[1, 2]);
        let mut chosen: Vec<NodeId> =
            (0..4).map(|_| loads.choose(&m, &PlaceRequest::default(), Duration::from_secs(5)).unwrap().node).collect();
        chosen.sort_unstable();
        assert_eq!(chosen, [1, 1, 2, 2], "four runs on two idle nodes of two slots: two each");
    }

    #[test]
    fn a_node_not_heard_from_within_the_timeout_is_neither_chosen_nor_live() {
        let loads = Loads::default();
        loads.record(report(1, &[], 0, 1));
        std::thread::sleep(Duration::from_millis(30));
        loads.record(report(2, &[], 9, 1));
        let short = Duration::from_millis(20);
        assert_eq!(loads.choose(&members(&[1, 2]), &PlaceRequest::default(), short).unwrap().node, 2);
        let silent = loads.silent(&BTreeSet::from([1, 2, 3]), short);
        assert_eq!(silent.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 3]);
        assert!(silent[1].1.is_none(), "node 3 was never heard from");
    }

    #[test]
    fn labels_are_bounded_and_plain() {
        assert!(check_labels(&["gpu".into(), "zone=eu-1".into(), "a:b_c.d".into()]).is_ok());
        assert!(check_labels(&[String::new()]).is_err());
        assert!(check_labels(&["a b".into()]).is_err());
        assert!(check_labels(&["x".repeat(MAX_LABEL + 1)]).is_err());
        assert!(check_labels(&vec!["a".to_string(); MAX_LABELS + 1]).is_err());
    }
}
