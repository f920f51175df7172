//! Change notification for the files a [`FileCache`](super::FileCache) serves: one inotify instance per process,
//! so that a cached file used again and again costs one non-blocking `read` of the notification queue per use instead
//! of a `stat` that walks every component of its path.
//!
//! A watched file hands out a [`Ticket`] that stays valid until anything that could change what its path names is
//! reported: the file's content, size or attributes (through any of its links: the file itself is watched, not only
//! its name), its name being removed, renamed or replaced, or any directory on its path being renamed, removed,
//! replaced or having its permissions changed (every ancestor up to `/` is watched for its entries). inotify queues
//! an event inside the system call that makes the change, so a change whose call returned before [`Watcher::drain`]
//! began is seen by that drain.
//!
//! What this must never do: leave a ticket valid after an event that touches its path, or after the queue
//! overflowed or could not be read (every ticket is then invalidated and the caller falls back to its `stat`).
//! Where notification is not reliable it is not used: paths that are relative or go through a symbolic link (a link
//! retargeted elsewhere is not an event on the path's directories), and filesystems other than the local ones listed
//! in [`LOCAL_FILESYSTEMS`] (a change made by another machine on a network filesystem raises no event here). Not
//! seen: a filesystem mounted over a directory of the path, and writes through a shared memory map (the kernel
//! raises no event for either); both need the privileges of the home's owner.

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};

use rustix::fd::OwnedFd;
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};

/// Filesystems on which every change to a file is made by this machine's kernel, so it raises an event here
/// (`statfs` magic numbers: ext2/3/4, XFS, Btrfs, tmpfs, overlayfs, F2FS).
pub const LOCAL_FILESYSTEMS: [i64; 6] = [0xEF53, 0x5846_5342, 0x9123_683E, 0x0102_1994, 0x794C_7630, 0xF2F5_2010];

/// At most this many inotify watches per process (each directory and file watched once, however many paths share
/// it); past it, new paths are not watched and their callers keep checking by `stat`.
const MAX_WATCHES: usize = 1024;

/// At most this many live tickets (the caches that hold them are bounded too; this bounds a misuse).
const MAX_TICKETS: usize = 4096;

/// What a directory on a watched path is watched for: its entries appearing, going or changing attributes, and it
/// itself being moved, removed or changing attributes.
fn directory_mask() -> WatchFlags {
    WatchFlags::CREATE
        | WatchFlags::DELETE
        | WatchFlags::MOVED_FROM
        | WatchFlags::MOVED_TO
        | WatchFlags::ATTRIB
        | WatchFlags::DELETE_SELF
        | WatchFlags::MOVE_SELF
        | WatchFlags::ONLYDIR
}

/// What the watched file itself is watched for: any write, truncation or attribute change, through any link.
fn file_mask() -> WatchFlags {
    WatchFlags::MODIFY
        | WatchFlags::ATTRIB
        | WatchFlags::CLOSE_WRITE
        | WatchFlags::DELETE_SELF
        | WatchFlags::MOVE_SELF
        | WatchFlags::DONT_FOLLOW
}

/// Valid until a change to its path is reported (see the module documentation). Check it only right after
/// [`Watcher::drain`].
#[derive(Debug)]
pub struct Ticket(Arc<AtomicBool>);

impl Ticket {
    pub fn valid(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Default)]
struct State {
    /// `None` before the first watch, and for good once reading the queue failed.
    fd: Option<OwnedFd>,
    broken: bool,
    /// Each watch descriptor and the paths it was added for (a directory shared by several watched files is one
    /// watch; hard links to one file are one watch with several paths).
    watches: HashMap<i32, Vec<PathBuf>>,
    tickets: Vec<(PathBuf, Weak<AtomicBool>)>,
}

impl State {
    /// Invalidates every ticket whose path is `target` or lies under it.
    fn invalidate_under(&mut self, target: &Path) {
        self.tickets.retain(|(path, ticket)| {
            if !path.starts_with(target) {
                return ticket.strong_count() > 0;
            }
            if let Some(ticket) = ticket.upgrade() {
                ticket.store(false, Ordering::Release);
            }
            false
        });
    }

    fn invalidate_all(&mut self) {
        for (_, ticket) in self.tickets.drain(..) {
            if let Some(ticket) = ticket.upgrade() {
                ticket.store(false, Ordering::Release);
            }
        }
    }

    /// Reads the queue until it is empty and invalidates what each event touches; false if it cannot be read.
    fn read_queue(&mut self, fd: &OwnedFd) -> bool {
        let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
        let mut reader = inotify::Reader::new(fd, &mut buf);
        loop {
            let (wd, flags, name) = match reader.next() {
                Ok(event) => (event.wd(), event.events(), event.file_name().map(|n| n.to_bytes().to_vec())),
                Err(rustix::io::Errno::AGAIN) => return true,
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return false,
            };
            if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
                self.invalidate_all();
                continue;
            }
            let targets: Vec<PathBuf> = match self.watches.get(&wd) {
                Some(paths) => paths
                    .iter()
                    .map(|p| match &name {
                        Some(name) => p.join(OsStr::from_bytes(name)),
                        None => p.clone(),
                    })
                    .collect(),
                None => continue,
            };
            for target in &targets {
                self.invalidate_under(target);
            }
            if flags.contains(ReadFlags::IGNORED) {
                // The watch is gone (its file or directory was removed, or its filesystem unmounted); what lay
                // under it was invalidated just above. A later watch of the same path adds a new one.
                self.watches.remove(&wd);
            }
        }
    }

    /// Gives up on notification in this process: every ticket is invalidated and none is handed out again.
    fn break_down(&mut self) {
        self.invalidate_all();
        self.watches.clear();
        self.fd = None;
        self.broken = true;
    }
}

/// This process's change notification.
pub struct Watcher {
    state: Mutex<State>,
    /// Set by [`Watcher::disable`]: nothing new is watched.
    disabled: AtomicBool,
}

/// The one watcher of this process (a user may hold only 128 inotify instances by default).
pub static WATCHER: LazyLock<Watcher> =
    LazyLock::new(|| Watcher { state: Mutex::new(State::default()), disabled: AtomicBool::new(false) });

impl Watcher {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Watches nothing more in this process: for one that ends soon (a single `run`), whose files are used a few
    /// times each. There a watch costs more than the `stat`s it saves: adding one on a directory, and removing it
    /// when the process exits, makes the kernel walk that directory's cached entries, and `/` is on every path.
    pub fn disable(&self) {
        self.disabled.store(true, Ordering::Relaxed);
    }

    /// Reads every notification queued so far and invalidates the tickets they touch. A ticket checked after this
    /// returns reflects every change whose system call returned before this was called.
    pub fn drain(&self) {
        let mut state = self.lock();
        // Taken out while the queue is read (so the tickets can be changed meanwhile) and put back after.
        let Some(fd) = state.fd.take() else { return };
        if state.read_queue(&fd) {
            state.fd = Some(fd);
        } else {
            state.break_down();
        }
    }

    /// Starts watching `path` and every directory above it, and returns a ticket valid until a change to any of
    /// them is reported; `None` where notification is not used (see the module documentation). The caller must
    /// check after this returns that the file is still what it read (a change before the watch began raises no
    /// event).
    pub fn watch(&self, path: &Path) -> Option<Ticket> {
        if self.disabled.load(Ordering::Relaxed)
            || !path.is_absolute()
            || std::fs::canonicalize(path).ok().as_deref() != Some(path)
        {
            return None;
        }
        let local = rustix::fs::statfs(path).ok().is_some_and(|fs| LOCAL_FILESYSTEMS.contains(&fs.f_type));
        if !local {
            return None;
        }
        let mut state = self.lock();
        if state.broken {
            return None;
        }
        state.tickets.retain(|(_, ticket)| ticket.strong_count() > 0);
        if state.tickets.len() >= MAX_TICKETS {
            return None;
        }
        if state.fd.is_none() {
            match inotify::init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC) {
                Ok(fd) => state.fd = Some(fd),
                Err(_) => {
                    state.broken = true;
                    return None;
                }
            }
        }
        let targets = path.ancestors().skip(1).map(|dir| (dir, directory_mask())).chain([(path, file_mask())]);
        for (target, mask) in targets {
            let known = state.watches.values().any(|paths| paths.iter().any(|p| p == target));
            if known {
                continue;
            }
            if state.watches.len() >= MAX_WATCHES {
                return None;
            }
            let fd = state.fd.as_ref()?;
            let wd = inotify::add_watch(fd, target, mask).ok()?;
            state.watches.entry(wd).or_default().push(target.to_path_buf());
        }
        let ticket = Arc::new(AtomicBool::new(true));
        state.tickets.push((path.to_path_buf(), Arc::downgrade(&ticket)));
        Some(Ticket(ticket))
    }
}

thread_local! {
    /// How many [`Drained`] scopes are open on this thread.
    static DRAINED: Cell<u32> = const { Cell::new(0) };
}

/// One look at the queue for several uses: while this is held, uses of cached files on this thread do not read the
/// queue again, so they see every change whose system call returned before it was taken (and maybe later ones). For
/// a stretch of checks that must agree on one instant, such as a tool call's key file and manifest. It cannot be
/// sent to another thread, so it cannot be held across an `.await` of a future that must be `Send`.
pub struct Drained {
    _on_this_thread: PhantomData<*const ()>,
}

/// Reads the queue now and opens a [`Drained`] scope.
pub fn drained() -> Drained {
    WATCHER.drain();
    DRAINED.with(|d| d.set(d.get().saturating_add(1)));
    Drained { _on_this_thread: PhantomData }
}

impl Drop for Drained {
    fn drop(&mut self) {
        DRAINED.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// Reads the queue unless a [`Drained`] scope is open on this thread.
pub fn drain_unless_scoped() {
    if DRAINED.with(Cell::get) == 0 {
        WATCHER.drain();
    }
}
