//! The process's file descriptors, shared by all its sandboxes and the host itself.
//!
//! Every file, directory and socket a guest holds open is a host file descriptor, and they all come out of the one
//! `RLIMIT_NOFILE` of the process, which the host needs as well: for its database, the component files it loads,
//! the compile cache, and every connection a client opens to `serve`. A sandbox's table cap
//! ([`super::limits::MAX_HANDLES`]) bounds what one guest holds. This module bounds all guests together, so that
//! concurrent runs (under `serve`, `--parallel`, a tree of spawned agents, tool calls) cannot take the descriptors
//! the host and the other runs rely on:
//! - The soft limit is raised to the hard one when the budget is first used, as servers do. Stock Debian gives
//!   1 024 soft and 524 288 hard.
//! - A part of the limit is kept for the host: an eighth of it, and at least [`HOST_RESERVE`]. Guests share the
//!   rest.
//! - A sandbox that can open descriptors at all takes its share of the guests' part when it is built, and gives it
//!   back when it is dropped. Only a sandbox with a granted directory or network peer can open one: without them,
//!   WASI has no directory to open a file from and refuses to create sockets.
//! - Its share is its table's cap, plus one descriptor for each preopened directory. A guest holds at most one
//!   descriptor per table entry: an open file or directory, a directory listing, a socket; a file's streams share
//!   the file's descriptor.
//! - The share is the guests' part divided by the sandboxes the process plans to run at once ([`plan`]), and at
//!   most `MAX_HANDLES`. Past the plan, a sandbox takes what is left. When less than [`MIN_SHARE`] is left, it is
//!   refused with `host-busy`. So the shares given out never add up to more than the guests' part.

use super::limits::MAX_HANDLES;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The least number of descriptors kept for the host itself.
pub const HOST_RESERVE: usize = 256;
/// The smallest share a sandbox that can open descriptors is built with. A sandbox that cannot get this much is
/// refused.
pub const MIN_SHARE: usize = 32;
/// Sandboxes planned for each run the process runs at once: the run's own, a tool call's, a spawned child's and
/// the child's tool call.
pub const SANDBOXES_PER_RUN: usize = 4;

/// The guests' part of the process's descriptors, and how much of it live sandboxes hold.
#[derive(Debug)]
pub struct Budget {
    /// The soft `RLIMIT_NOFILE` after raising it.
    limit: usize,
    /// What guests may hold together: `limit` less the host's reserve.
    guests: usize,
    /// Held by live sandboxes.
    held: AtomicUsize,
    /// Sandboxes the process plans to run at once.
    planned: AtomicUsize,
}

static BUDGET: LazyLock<Budget> = LazyLock::new(|| Budget::with_limit(raise_limit()));

/// The process's budget, raising the soft descriptor limit the first time.
pub fn budget() -> &'static Budget {
    &BUDGET
}

/// Tells the budget that the process runs up to `runs` runs at once (`serve --max-concurrent`, `run --parallel`,
/// `mcp --max-concurrent`), so each sandbox's share is sized for that many. Without it, one run is planned.
pub fn plan(runs: usize) {
    budget().planned.store(runs.max(1).saturating_mul(SANDBOXES_PER_RUN), Ordering::Relaxed);
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (kept as is if that fails) and returns the soft limit in force.
fn raise_limit() -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limits = getrlimit(Resource::Nofile);
    if limits.current != limits.maximum {
        let raised = rustix::process::Rlimit { current: limits.maximum, maximum: limits.maximum };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => limits = raised,
            Err(e) => tracing::warn!("cannot raise the file descriptor limit to the hard limit: {e}"),
        }
    }
    // No limit at all: count it as the kernel's own ceiling for one process (fs.nr_open's default).
    limits.current.map_or(1 << 20, |n| usize::try_from(n).unwrap_or(usize::MAX))
}

impl Budget {
    fn with_limit(limit: usize) -> Budget {
        let reserve = (limit / 8).max(HOST_RESERVE);
        Budget {
            limit,
            guests: limit.saturating_sub(reserve),
            held: AtomicUsize::new(0),
            planned: AtomicUsize::new(SANDBOXES_PER_RUN),
        }
    }

    /// The soft descriptor limit of the process.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// What all guests together may hold.
    pub fn guests(&self) -> usize {
        self.guests
    }

    /// What live sandboxes hold now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// The share a sandbox is built with while the budget lasts.
    pub fn share(&self) -> usize {
        (self.guests / self.planned.load(Ordering::Relaxed).max(1)).clamp(MIN_SHARE, MAX_HANDLES)
    }

    /// Takes the share of a sandbox with `preopens` preopened directories: its table's cap plus those. What is left
    /// when less than a full share is; `None` when less than [`MIN_SHARE`] of a table is left.
    pub fn take(&'static self, preopens: usize) -> Option<Share> {
        let want = self.share().saturating_add(preopens);
        let mut taken = 0;
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                taken = want.min(self.guests.saturating_sub(held));
                (taken >= MIN_SHARE.saturating_add(preopens)).then_some(held + taken)
            })
            .ok()?;
        Some(Share { budget: self, fds: taken, handles: taken - preopens })
    }
}

/// A sandbox's part of the budget, given back when dropped (with its store).
#[derive(Debug)]
pub struct Share {
    budget: &'static Budget,
    fds: usize,
    handles: usize,
}

impl Share {
    /// The cap of the sandbox's table.
    pub fn handles(&self) -> usize {
        self.handles
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.fds, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaked(limit: usize) -> &'static Budget {
        Box::leak(Box::new(Budget::with_limit(limit)))
    }

    #[test]
    fn the_host_keeps_its_reserve_and_shares_never_add_up_past_the_guests_part() {
        let budget = leaked(2_000);
        assert_eq!(budget.guests(), 2_000 - 256, "an eighth is under the least reserve");
        budget.planned.store(4, Ordering::Relaxed);
        assert_eq!(budget.share(), 436);
        let mut shares = Vec::new();
        while let Some(share) = budget.take(1) {
            shares.push(share);
        }
        let sizes: Vec<usize> = shares.iter().map(|s| s.fds).collect();
        assert_eq!(sizes, [437, 437, 437, 433], "four full shares would be 1 748, over the 1 744 guests may hold");
        assert_eq!(shares[3].handles(), 432, "one descriptor of the last share is its preopen");
        assert_eq!(budget.held(), 1_744);
        drop(shares.pop());
        assert_eq!(budget.held(), 1_311, "a dropped share is given back");
        assert!(budget.take(0).is_some(), "and can be taken again");
    }

    #[test]
    fn a_sandbox_is_refused_when_less_than_the_least_share_is_left() {
        let budget = leaked(HOST_RESERVE + 100);
        budget.planned.store(1, Ordering::Relaxed);
        let first = budget.take(0).expect("a first share");
        assert_eq!(first.handles(), 100);
        assert!(budget.take(0).is_none(), "nothing is left");
        drop(first);
        let small = leaked(HOST_RESERVE + MIN_SHARE + 2);
        assert!(small.take(3).is_none(), "32 handles and 3 preopens do not fit in 34");
        assert_eq!(small.take(2).map(|s| s.handles()), Some(MIN_SHARE), "32 and 2 do");
    }

    #[test]
    fn a_large_limit_gives_full_tables_and_keeps_an_eighth() {
        let budget = leaked(524_288);
        budget.planned.store(16 * SANDBOXES_PER_RUN, Ordering::Relaxed);
        assert_eq!(budget.guests(), 524_288 - 65_536);
        assert_eq!(budget.share(), MAX_HANDLES, "7 168 each is over the table cap");
    }
}
