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
//! What this must never do: return a value it did not read from the file whose stamp it checked, or keep more than
//! its capacity. The one assumption: the system clock does not step back by more than [`RACY`] between a read and a
//! later change (a change then could carry an old ctime).

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
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
}

/// Parsed files by path, each checked against its [`Stamp`] at every use. Bounded: past `capacity` an arbitrary
/// entry is dropped (and read again on its next use).
pub struct FileCache<T> {
    entries: Mutex<HashMap<PathBuf, Entry<T>>>,
    capacity: usize,
    racy: Duration,
    reads: AtomicU64,
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
        FileCache { entries: Mutex::new(HashMap::new()), capacity: capacity.max(1), racy, reads: AtomicU64::new(0) }
    }

    /// How many times a file was read (and parsed) rather than served from the cache.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// The parsed contents of `path` (`None` if there is no such file): the cached value if the file is unchanged
    /// (see the module documentation), else read, parsed with `parse` and remembered.
    pub fn get<E>(&self, path: &Path, parse: impl FnOnce(&[u8]) -> Result<T, E>) -> Result<Option<Arc<T>>, Error<E>> {
        let current = match std::fs::metadata(path) {
            Ok(meta) => Stamp::of(&meta),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.lock().remove(path);
                return Ok(None);
            }
            Err(e) => return Err(Error::Io(e)),
        };
        if let Some(entry) = self.lock().get(path)
            && entry.settled
            && entry.stamp == current
        {
            return Ok(Some(entry.value.clone()));
        }
        // Taken before the file is opened: whatever changes the file after this instant stamps a later ctime.
        let read_at = SystemTime::now();
        let mut file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.lock().remove(path);
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
        let entry = Entry { stamp, settled: stamp.settled(read_at, self.racy), value: value.clone() };
        let mut entries = self.lock();
        if entries.len() >= self.capacity
            && !entries.contains_key(path)
            && let Some(evicted) = entries.keys().next().cloned()
        {
            entries.remove(&evicted);
        }
        entries.insert(path.to_path_buf(), entry);
        Ok(Some(value))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Entry<T>>> {
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
