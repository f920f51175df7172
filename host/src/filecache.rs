//! Small files the host consults on every use (the root key file, tool manifests), parsed once and kept for as long
//! as a cheap check says the file has not changed since: one `stat` instead of a read and a parse per tool call.
//!
//! The check must never vouch for a file that changed, whoever changed it (another `toka-host` process rotating a
//! key or removing a tool while a `serve` or `mcp` runs), however it changed (rewritten in place, or replaced by a
//! rename, keeping the size and even the modification time). So a cached entry is used only if
//! - the file's device, inode, size, mtime and ctime (both to the nanosecond) are what they were when it was read,
//!   and
//! - its last change (ctime) was already [`RACY`] old when it was read. File timestamps come from a coarse clock (a
//!   kernel tick; whole seconds on some filesystems), so a write right after a read can leave every stamp field as it
//!   was; git calls such entries "racily clean". An entry read too soon after a change is re-read at every use until
//!   the file has settled. Unlike the mtime, the ctime cannot be set by a program (`touch -d`, `cp -p`, `rsync -t`
//!   restore an old mtime, never an old ctime): any later write, rename or replacement stamps the then current time,
//!   which is past the ctime recorded.
//!
//! A file used a second time unchanged is then watched ([`watch`]: inotify on the file and every directory above
//! it), and while no change to its path is reported its uses need no `stat`: one non-blocking read of the process's
//! notification queue tells that nothing happened. Where notification cannot be relied on, the `stat` stays.
//!
//! What this must never do: return a value it did not read from the file whose stamp it checked, or keep more than
//! its capacity. The one assumption: the system clock does not step back by more than [`RACY`] between a read and a
//! later change (a change then could carry an old ctime).

pub mod watch;

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long before a read the file's last change must be for the entry to be trusted afterwards.
pub const RACY: Duration = Duration::from_secs(2);

/// What a file's metadata says about its identity and its last change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    pub fn of(meta: &std::fs::Metadata) -> Stamp {
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Whether a read that started at `read_at` can be trusted while the stamp stays the same: the file's last
    /// change was at least `racy` before it. A ctime in the future (clock skew) never settles.
    pub fn settled(&self, read_at: SystemTime, racy: Duration) -> bool {
        let Ok(at) = read_at.duration_since(UNIX_EPOCH) else { return false };
        let at_ns = i128::try_from(at.as_nanos()).unwrap_or(i128::MAX);
        let racy_ns = i128::try_from(racy.as_nanos()).unwrap_or(i128::MAX);
        self.ctime_ns <= at_ns.saturating_sub(racy_ns)
    }
}

struct Entry<T> {
    stamp: Stamp,
    settled: bool,
    value: Arc<T>,
    /// Set once the file is watched; while valid, the entry is used without a `stat`.
    ticket: Option<watch::Ticket>,
    /// Whether watching was tried (it is tried once per entry).
    watch_tried: bool,
}

/// Parsed files by path, each checked against its [`Stamp`] at every use. Bounded: past `capacity` an arbitrary
/// entry is dropped (and read again on its next use).
pub struct FileCache<T> {
    /// By the path's bytes, not by [`std::path::PathBuf`]: hashing a `Path` walks its components, and two spellings of one path
    /// only cost an entry each.
    entries: Mutex<HashMap<OsString, Entry<T>>>,
    capacity: usize,
    racy: Duration,
    reads: AtomicU64,
    stats: AtomicU64,
}

impl<T> std::fmt::Debug for FileCache<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileCache").field("capacity", &self.capacity).field("reads", &self.reads()).finish()
    }
}

/// Why a cached file could not be had.
#[derive(Debug)]
pub enum Error<E> {
    Io(std::io::Error),
    Parse(E),
}

impl<T> FileCache<T> {
    pub fn new(capacity: usize) -> Self {
        FileCache::with_racy_window(capacity, RACY)
    }

    /// A cache whose entries are trusted once the file's last change was `racy` old when it was read (tests use
    /// this to reach the stamp check without waiting).
    pub fn with_racy_window(capacity: usize, racy: Duration) -> Self {
        FileCache {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            racy,
            reads: AtomicU64::new(0),
            stats: AtomicU64::new(0),
        }
    }

    /// How many times a file was read (and parsed) rather than served from the cache.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// How many times a use checked the file by `stat` (a watched file's uses do not).
    pub fn stats(&self) -> u64 {
        self.stats.load(Ordering::Relaxed)
    }

    /// The parsed contents of `path` (`None` if there is no such file): the cached value if the file is unchanged
    /// (see the module documentation), else read, parsed with `parse` and remembered.
    pub fn get<E>(&self, path: &Path, parse: impl FnOnce(&[u8]) -> Result<T, E>) -> Result<Option<Arc<T>>, Error<E>> {
        watch::drain_unless_scoped();
        if let Some(entry) = self.lock().get(path.as_os_str())
            && entry.ticket.as_ref().is_some_and(watch::Ticket::valid)
        {
            return Ok(Some(entry.value.clone()));
        }
        self.stats.fetch_add(1, Ordering::Relaxed);
        let current = match std::fs::metadata(path) {
            Ok(meta) => Stamp::of(&meta),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.lock().remove(path.as_os_str());
                return Ok(None);
            }
            Err(e) => return Err(Error::Io(e)),
        };
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(path.as_os_str())
            && entry.settled
            && entry.stamp == current
        {
            let value = entry.value.clone();
            let watch = !entry.watch_tried;
            entry.watch_tried = true;
            drop(entries);
            if watch {
                self.start_watching(path, current);
            }
            return Ok(Some(value));
        }
        drop(entries);
        // Taken before the file is opened: whatever changes the file after this instant stamps a later ctime.
        let read_at = SystemTime::now();
        let mut file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.lock().remove(path.as_os_str());
                return Ok(None);
            }
            Err(e) => return Err(Error::Io(e)),
        };
        // The stamp of the very file read (not of the path, which may name another file by now).
        let stamp = Stamp::of(&file.metadata().map_err(Error::Io)?);
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(Error::Io)?;
        self.reads.fetch_add(1, Ordering::Relaxed);
        let value = Arc::new(parse(&bytes).map_err(Error::Parse)?);
        let settled = stamp.settled(read_at, self.racy);
        let entry = Entry { stamp, settled, value: value.clone(), ticket: None, watch_tried: false };
        let mut entries = self.lock();
        if entries.len() >= self.capacity
            && !entries.contains_key(path.as_os_str())
            && let Some(evicted) = entries.keys().next().cloned()
        {
            entries.remove(&evicted);
        }
        entries.insert(path.as_os_str().to_owned(), entry);
        Ok(Some(value))
    }

    /// Watches `path`, whose entry was just found unchanged at `stamp`, so that its next uses need no `stat`.
    fn start_watching(&self, path: &Path, stamp: Stamp) {
        let Some(ticket) = watch::WATCHER.watch(path) else { return };
        // The watch reports changes from now on; one made between the check and the watch's start must not be
        // missed, so the file is checked once more, now that the watch is in place.
        self.stats.fetch_add(1, Ordering::Relaxed);
        let Ok(meta) = std::fs::metadata(path) else { return };
        if Stamp::of(&meta) != stamp {
            return;
        }
        if let Some(entry) = self.lock().get_mut(path.as_os_str())
            && entry.stamp == stamp
        {
            entry.ticket = Some(ticket);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<OsString, Entry<T>>> {
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    fn parse(bytes: &[u8]) -> Result<String, std::string::FromUtf8Error> {
        String::from_utf8(bytes.to_vec())
    }

    fn get(cache: &FileCache<String>, path: &Path) -> Option<String> {
        cache.get(path, parse).unwrap().map(|v| (*v).clone())
    }

    /// Waits until the coarse clock file timestamps come from has moved on (a kernel tick is at most 10 ms), so a
    /// change made now carries a ctime different from one made before the wait.
    fn next_tick() {
        std::thread::sleep(Duration::from_millis(30));
    }

    /// Writes `text` to a temporary file beside `path` and renames it over `path`, then gives the new file the
    /// modification time `mtime`: what a careful writer (or an attacker) leaves.
    fn replace_by_rename(path: &Path, text: &str, mtime: SystemTime) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::File::options().write(true).open(&tmp).unwrap().set_modified(mtime).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    /// Rewrites `path` in place (same inode) with `text`, then restores its modification time to `mtime`.
    fn rewrite_in_place(path: &Path, text: &str, mtime: SystemTime) {
        std::fs::write(path, text).unwrap();
        std::fs::File::options().write(true).open(path).unwrap().set_modified(mtime).unwrap();
    }

    /// The positive control of the tests below: an unchanged, settled file is served from the cache (no read),
    /// a changed one is read again, a removed one is gone.
    #[test]
    fn an_unchanged_file_is_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        std::fs::write(&path, "one").unwrap();
        let cache = FileCache::with_racy_window(8, Duration::ZERO);
        next_tick();
        assert_eq!(get(&cache, &path).as_deref(), Some("one"));
        for _ in 0..10 {
            assert_eq!(get(&cache, &path).as_deref(), Some("one"));
        }
        assert_eq!(cache.reads(), 1, "ten uses of an unchanged file read it once");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(get(&cache, &path), None);
        assert!(cache.is_empty());
    }

    /// A file replaced by a rename with the same size and the same modification time (to the nanosecond) is seen
    /// at the very next use: the inode and the ctime differ.
    #[test]
    fn a_file_replaced_by_rename_with_the_same_size_and_mtime_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        std::fs::write(&path, r#"{"status":"previous"}"#).unwrap();
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        let cache = FileCache::with_racy_window(8, Duration::ZERO);
        next_tick();
        assert_eq!(get(&cache, &path).as_deref(), Some(r#"{"status":"previous"}"#));
        assert_eq!(get(&cache, &path).as_deref(), Some(r#"{"status":"previous"}"#));
        assert_eq!(cache.reads(), 1, "control: unchanged, read once");
        replace_by_rename(&path, r#"{"status":"retired" }"#, mtime);
        let after = std::fs::metadata(&path).unwrap();
        assert_eq!((after.len(), after.modified().unwrap()), (21, mtime), "same size and mtime as before");
        assert_eq!(get(&cache, &path).as_deref(), Some(r#"{"status":"retired" }"#));
        assert_eq!(cache.reads(), 2);
    }

    /// The same file (same inode) rewritten in place, with its size kept and its modification time put back: only
    /// the ctime tells, and it does.
    #[test]
    fn a_file_rewritten_in_place_with_its_mtime_restored_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("echo.json");
        std::fs::write(&path, "sha256:aaaa").unwrap();
        let before = std::fs::metadata(&path).unwrap();
        let cache = FileCache::with_racy_window(8, Duration::ZERO);
        next_tick();
        assert_eq!(get(&cache, &path).as_deref(), Some("sha256:aaaa"));
        assert_eq!(get(&cache, &path).as_deref(), Some("sha256:aaaa"));
        assert_eq!(cache.reads(), 1, "control: unchanged, read once");
        next_tick();
        rewrite_in_place(&path, "sha256:bbbb", before.modified().unwrap());
        let after = std::fs::metadata(&path).unwrap();
        assert_eq!(
            (after.ino(), after.len(), after.modified().unwrap()),
            (before.ino(), 11, before.modified().unwrap())
        );
        assert_eq!(get(&cache, &path).as_deref(), Some("sha256:bbbb"));
    }

    /// Racily clean: with the real window, a file read right after it changed is not trusted, so a second change
    /// within the same clock tick (which may leave every stamp field equal) is still seen: the entry is re-read at
    /// every use while the file is younger than the window. (Once older, the positive control shows it is kept.)
    #[test]
    fn a_file_read_within_the_racy_window_is_read_again_at_every_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        std::fs::write(&path, "fresh").unwrap();
        let cache = FileCache::new(8);
        let written = std::time::Instant::now();
        for _ in 0..3 {
            assert_eq!(get(&cache, &path).as_deref(), Some("fresh"));
        }
        // A rewrite at once, same size, mtime put back: possibly in the same tick, so possibly the same stamp.
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        rewrite_in_place(&path, "later", mtime);
        assert_eq!(get(&cache, &path).as_deref(), Some("later"));
        assert!(written.elapsed() < RACY, "the test ran inside the window ({:?})", written.elapsed());
        assert_eq!(cache.reads(), 4, "a file changed within the window is read at every use");
        // Control: the same file, settled in a short window, is kept.
        let settled = FileCache::with_racy_window(8, Duration::from_millis(50));
        std::thread::sleep(Duration::from_millis(100));
        for _ in 0..3 {
            assert_eq!(get(&settled, &path).as_deref(), Some("later"));
        }
        assert_eq!(settled.reads(), 1);
    }

    /// The decision itself, on synthetic stamps: a change exactly at the window's edge is settled, a nanosecond
    /// later is not, and a ctime ahead of the clock never is.
    #[test]
    fn settled_means_changed_at_least_the_window_before_the_read() {
        let read_at = UNIX_EPOCH + Duration::from_secs(1_000);
        let stamp = |ctime_ns: i128| Stamp { dev: 1, ino: 2, size: 3, mtime_ns: 0, ctime_ns };
        assert!(stamp(998_000_000_000).settled(read_at, RACY));
        assert!(!stamp(998_000_000_001).settled(read_at, RACY));
        assert!(!stamp(1_001_000_000_000).settled(read_at, RACY));
        assert!(stamp(999_999_999_999).settled(read_at, Duration::ZERO));
    }

    /// Uses `path` twice through `cache` (the second use starts the watch) and checks that ten more uses need
    /// neither a read nor a `stat`: the positive control of every watched-file test.
    fn watched(cache: &FileCache<String>, path: &Path, expected: &str) {
        assert_eq!(get(cache, path).as_deref(), Some(expected));
        assert_eq!(get(cache, path).as_deref(), Some(expected));
        let (reads, stats) = (cache.reads(), cache.stats());
        for _ in 0..10 {
            assert_eq!(get(cache, path).as_deref(), Some(expected));
        }
        assert_eq!((cache.reads(), cache.stats()), (reads, stats), "a watched, unchanged file is used without a stat");
    }

    /// The directory of a test: canonical, since a path through a symbolic link is never watched.
    fn tempdir() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = std::fs::canonicalize(dir.path()).unwrap();
        (dir, path)
    }

    /// Every way of changing what a watched path names is seen at the very next use: the file rewritten in place
    /// (size and mtime kept), replaced by a rename, written through a hard link in another directory, truncated,
    /// its mode changed, removed; and after each, once the file is used twice again, it is watched again.
    #[test]
    fn a_watched_file_is_used_without_a_stat_and_any_change_to_it_is_seen_at_the_next_use() {
        let (_guard, dir) = tempdir();
        let path = dir.join("keys.json");
        std::fs::write(&path, "aaaa").unwrap();
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        let cache = FileCache::with_racy_window(8, Duration::ZERO);
        next_tick();
        watched(&cache, &path, "aaaa");

        rewrite_in_place(&path, "bbbb", mtime);
        assert_eq!(get(&cache, &path).as_deref(), Some("bbbb"), "rewritten in place, mtime restored");
        next_tick();
        watched(&cache, &path, "bbbb");

        replace_by_rename(&path, "cccc", mtime);
        assert_eq!(get(&cache, &path).as_deref(), Some("cccc"), "replaced by a rename");
        next_tick();
        watched(&cache, &path, "cccc");

        let elsewhere = dir.join("other");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::hard_link(&path, elsewhere.join("link")).unwrap();
        next_tick();
        assert_eq!(get(&cache, &path).as_deref(), Some("cccc"));
        next_tick();
        watched(&cache, &path, "cccc");
        rewrite_in_place(&elsewhere.join("link"), "dddd", mtime);
        assert_eq!(get(&cache, &path).as_deref(), Some("dddd"), "written through a link in another directory");
        next_tick();
        watched(&cache, &path, "dddd");

        std::fs::File::options().write(true).open(&path).unwrap().set_len(2).unwrap();
        assert_eq!(get(&cache, &path).as_deref(), Some("dd"), "truncated");
        next_tick();
        watched(&cache, &path, "dd");

        let stats = cache.stats();
        let mut mode = std::fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut mode, 0o600);
        std::fs::set_permissions(&path, mode).unwrap();
        assert_eq!(get(&cache, &path).as_deref(), Some("dd"));
        assert!(cache.stats() > stats, "a mode change makes the next use check the file");

        next_tick();
        watched(&cache, &path, "dd");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(get(&cache, &path), None, "removed");
    }

    /// A [`watch::Drained`] scope: a change made before it was opened is seen by every use within it, and once it
    /// is closed each use reads the queue again (a scope left open would hide every later change on this thread).
    #[test]
    fn a_change_before_a_drained_scope_is_seen_within_it_and_changes_after_it_closed_are_seen_again() {
        let (_guard, dir) = tempdir();
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::write(&a, "a1").unwrap();
        std::fs::write(&b, "b1").unwrap();
        let cache = FileCache::with_racy_window(8, Duration::ZERO);
        next_tick();
        watched(&cache, &a, "a1");
        watched(&cache, &b, "b1");
        std::fs::write(&a, "a2").unwrap();
        std::fs::write(&b, "b2").unwrap();
        {
            let _drained = watch::drained();
            assert_eq!(get(&cache, &a).as_deref(), Some("a2"));
            assert_eq!(get(&cache, &b).as_deref(), Some("b2"));
        }
        next_tick();
        watched(&cache, &a, "a2");
        std::fs::write(&a, "a3").unwrap();
        assert_eq!(get(&cache, &a).as_deref(), Some("a3"), "after the scope, the next use reads the queue");
    }

    /// A directory on the path renamed away and another put in its place, holding a file of the same name, size
    /// and mtime: seen at the next use, for the parent and for a directory further up.
    #[test]
    fn a_directory_above_a_watched_file_replaced_by_another_is_seen_at_the_next_use() {
        let (_guard, dir) = tempdir();
        for depth in ["home/keys", "home"] {
            let home = dir.join("home");
            let file_dir = dir.join("home/keys");
            std::fs::create_dir_all(&file_dir).unwrap();
            let path = file_dir.join("root.json");
            std::fs::write(&path, "first").unwrap();
            let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
            let cache = FileCache::with_racy_window(8, Duration::ZERO);
            next_tick();
            watched(&cache, &path, "first");
            // Build the replacement beside it, then swap it in by two renames.
            let moved = dir.join(format!("{}.old", depth.replace('/', "-")));
            let staged = dir.join("staged");
            let staged_file = staged.join(file_dir.strip_prefix(dir.join(depth)).unwrap()).join("root.json");
            std::fs::create_dir_all(staged_file.parent().unwrap()).unwrap();
            std::fs::write(&staged_file, "other").unwrap();
            std::fs::File::options().write(true).open(&staged_file).unwrap().set_modified(mtime).unwrap();
            let target = dir.join(depth);
            std::fs::rename(&target, &moved).unwrap();
            std::fs::rename(&staged, &target).unwrap();
            assert_eq!(get(&cache, &path).as_deref(), Some("other"), "{depth} replaced");
            std::fs::remove_dir_all(&home).unwrap();
            std::fs::remove_dir_all(&moved).unwrap();
        }
    }

    /// A path through a symbolic link is not watched (a link retargeted is not an event on the path's
    /// directories): every use checks it by `stat`. The control is the same file by its real path.
    #[test]
    fn a_path_through_a_symbolic_link_is_checked_by_stat_at_every_use() {
        let (_guard, dir) = tempdir();
        std::fs::create_dir(dir.join("real")).unwrap();
        std::fs::write(dir.join("real/f"), "x").unwrap();
        std::os::unix::fs::symlink(dir.join("real"), dir.join("link")).unwrap();
        next_tick();
        let cache = FileCache::with_racy_window(8, Duration::ZERO);
        for _ in 0..5 {
            assert_eq!(get(&cache, &dir.join("link/f")).as_deref(), Some("x"));
        }
        assert_eq!(cache.stats(), 5, "every use of a path through a link checks it");
        watched(&cache, &dir.join("real/f"), "x");
    }

    /// Never more entries than its capacity.
    #[test]
    fn holds_at_most_its_capacity() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::with_racy_window(3, Duration::ZERO);
        for i in 0..10 {
            let path = dir.path().join(format!("{i}"));
            std::fs::write(&path, format!("{i}")).unwrap();
            assert_eq!(get(&cache, &path), Some(format!("{i}")));
            assert!(cache.len() <= 3);
        }
    }
}
