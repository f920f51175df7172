//! Authentication of the compile cache: an artifact the host did not write itself is never loaded.
//!
//! The compile cache holds native code that the host maps and executes, so a planted or edited artifact would run
//! outside every sandbox. wasmtime's cache trusts its directory; this module makes that trust explicit. Every
//! artifact file the host's own compilations leave in `<cache>/compiled/modules/` is recorded in an index with an
//! HMAC-SHA256 of its bytes under a key that lives in the cache directory (`key`, mode 0600; the directory is 0700).
//! Before a component is compiled or loaded, every artifact file is checked (by a stat fingerprint when the file has
//! not changed since it was authenticated, else by its HMAC), and every file that is unknown or does not match is
//! deleted, so wasmtime compiles afresh instead of loading it.
//! After a compilation, the files it left are authenticated and recorded (components' and preview 1 modules' alike).
//! Changes to the index go through an exclusive
//! lock, so concurrent host processes share one consistent index. This module never decides what runs: it only
//! removes what it cannot vouch for.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

type HmacSha256 = Hmac<Sha256>;

/// What is known of one authenticated artifact file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Known {
    /// Hex HMAC-SHA256 of the file's bytes.
    mac: String,
    /// (inode, size, mtime ns, ctime ns) when it was authenticated, recorded only once the file is older than
    /// [`SETTLED`]: an unchanged fingerprint then skips re-hashing. (A file's owner cannot set its ctime back, and an
    /// edit made later than `SETTLED` after the last change cannot keep the same coarse timestamps.)
    stat: Option<(u64, u64, i64, i64)>,
}

/// How old a file's last change must be before its fingerprint stands in for its HMAC.
const SETTLED: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Index {
    /// Every authenticated artifact file, relative to the cache directory.
    files: BTreeMap<String, Known>,
}

/// The authenticated compile cache of one cache directory.
#[derive(Debug, Clone)]
pub struct CacheAuth {
    dir: PathBuf,
    key: [u8; 32],
}

/// Why the cache could not be authenticated (the caller then runs without it).
#[derive(Debug, thiserror::Error)]
#[error("compile cache {path}: {reason}")]
pub struct CacheAuthError {
    path: String,
    reason: String,
}

fn err(path: &Path, reason: impl std::fmt::Display) -> CacheAuthError {
    CacheAuthError { path: path.display().to_string(), reason: reason.to_string() }
}

/// The file's fingerprint, if its last change is older than [`SETTLED`].
fn fingerprint(meta: &std::fs::Metadata) -> Option<(u64, u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
    let (mtime, ctime) = (ns(meta.mtime(), meta.mtime_nsec()), ns(meta.ctime(), meta.ctime_nsec()));
    let now = i64::try_from(crate::events::now_ms()).unwrap_or(i64::MAX).saturating_mul(1_000_000);
    let settled = i64::try_from(SETTLED.as_nanos()).unwrap_or(i64::MAX);
    (now.saturating_sub(mtime.max(ctime)) > settled).then_some((meta.ino(), meta.size(), mtime, ctime))
}

impl CacheAuth {
    /// Opens (creating owner-only if needed) the cache directory `dir` and its key.
    pub fn open(dir: &Path) -> Result<CacheAuth, CacheAuthError> {
        crate::home::private_dir(dir).map_err(|e| err(dir, e))?;
        let key_path = dir.join("key");
        let key = match std::fs::read(&key_path) {
            Ok(bytes) if bytes.len() == 32 => bytes,
            Ok(_) => return Err(err(&key_path, "the key file is not 32 bytes; delete the cache directory")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use std::io::Read;
                let mut fresh = [0u8; 32];
                std::fs::File::open("/dev/urandom")
                    .and_then(|mut f| f.read_exact(&mut fresh))
                    .map_err(|e| err(&key_path, format!("cannot make a key: {e}")))?;
                // Two processes may race to create it: the first rename wins and both read the winner's.
                crate::home::write_private(&key_path, &fresh).map_err(|e| err(&key_path, e))?;
                std::fs::read(&key_path).map_err(|e| err(&key_path, e))?
            }
            Err(e) => return Err(err(&key_path, e)),
        };
        let key: [u8; 32] = key.try_into().map_err(|_| err(&key_path, "bad key"))?;
        Ok(CacheAuth { dir: dir.to_path_buf(), key })
    }

    fn mac(&self, bytes: &[u8]) -> [u8; 32] {
        let mut m = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        m.update(bytes);
        m.finalize().into_bytes().into()
    }

    fn modules(&self) -> PathBuf {
        self.dir.join("compiled").join("modules")
    }

    /// Runs `change` on the index under the cache's exclusive lock, then saves it.
    fn with_index<T>(&self, change: impl FnOnce(&mut Index) -> T) -> Result<T, CacheAuthError> {
        let lock_path = self.dir.join("index.lock");
        let lock = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| err(&lock_path, e))?;
        lock.lock().map_err(|e| err(&lock_path, e))?;
        let path = self.dir.join("index.json");
        let (mut index, read): (Index, bool) = match std::fs::read(&path) {
            // An index that does not parse vouches for nothing: start over (unknown files are then removed).
            Ok(bytes) => (serde_json::from_slice(&bytes).unwrap_or_default(), true),
            Err(_) => (Index::default(), false),
        };
        let before = serde_json::to_vec(&index).map_err(|e| err(&path, e))?;
        let value = change(&mut index);
        let bytes = serde_json::to_vec(&index).map_err(|e| err(&path, e))?;
        if bytes != before || !read {
            crate::home::write_private(&path, &bytes).map_err(|e| err(&path, e))?;
        }
        Ok(value)
    }

    /// Artifact files now in the cache, relative to the cache directory (wasmtime's work files and usage
    /// statistics are not artifacts).
    fn artifacts(&self) -> Vec<String> {
        let mut out = Vec::new();
        let Ok(compilers) = std::fs::read_dir(self.modules()) else { return out };
        for compiler in compilers.flatten() {
            let Ok(files) = std::fs::read_dir(compiler.path()) else { continue };
            for file in files.flatten() {
                let name = file.file_name().to_string_lossy().into_owned();
                if name.ends_with(".stats") || name.contains(".wip-") {
                    continue;
                }
                if let Ok(rel) = file.path().strip_prefix(&self.dir) {
                    out.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        out
    }

    /// Whether `rel` is the file `known` describes: by its settled fingerprint if unchanged, else by HMAC (and then
    /// its fingerprint is recorded once settled).
    fn vouch(&self, rel: &str, known: &mut Known) -> bool {
        let path = self.dir.join(rel);
        let Ok(meta) = std::fs::symlink_metadata(&path) else { return false };
        if !meta.is_file() {
            return false;
        }
        let now = fingerprint(&meta);
        if now.is_some() && now == known.stat {
            return true;
        }
        let good = std::fs::read(&path).is_ok_and(|bytes| hex::encode(self.mac(&bytes)) == known.mac);
        if good {
            known.stat = now;
        }
        good
    }

    /// Before compiling or loading a component: removes every artifact file the host cannot vouch for (unknown,
    /// or changed since it was authenticated). Returns how many files were removed.
    pub fn before_load(&self) -> Result<usize, CacheAuthError> {
        self.with_index(|index| {
            let mut removed = 0;
            for rel in self.artifacts() {
                let good = index.files.get_mut(&rel).is_some_and(|k| self.vouch(&rel, k));
                if !good {
                    if std::fs::remove_file(self.dir.join(&rel)).is_ok() {
                        removed += 1;
                    }
                    index.files.remove(&rel);
                }
            }
            removed
        })
    }

    /// After a compilation: authenticates the artifact files the index does not know yet (what the compilation
    /// wrote) and forgets files that are gone (wasmtime's own cleanup removes old ones).
    pub fn after_compile(&self) -> Result<(), CacheAuthError> {
        self.with_index(|index| {
            let present = self.artifacts();
            index.files.retain(|rel, _| present.contains(rel));
            for rel in present {
                if index.files.contains_key(&rel) {
                    continue;
                }
                let path = self.dir.join(&rel);
                let (Ok(meta), Ok(bytes)) = (std::fs::symlink_metadata(&path), std::fs::read(&path)) else { continue };
                index.files.insert(rel, Known { mac: hex::encode(self.mac(&bytes)), stat: fingerprint(&meta) });
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plant(auth: &CacheAuth, name: &str, bytes: &[u8]) -> PathBuf {
        let dir = auth.modules().join("cranelift-x");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn unknown_and_edited_artifacts_are_removed_known_ones_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let auth = CacheAuth::open(&tmp.path().join("cache")).unwrap();
        // A compilation left its artifact: authenticated and recorded.
        let a = plant(&auth, "aaaa", b"artifact of a");
        auth.after_compile().unwrap();
        assert_eq!(auth.before_load().unwrap(), 0);
        assert!(a.exists(), "a file the host wrote and nobody changed is kept");
        // Someone plants an artifact: the next load removes it (the authentic one stays).
        let planted = plant(&auth, "bbbb", b"planted code");
        assert_eq!(auth.before_load().unwrap(), 1);
        assert!(!planted.exists() && a.exists());
        // Someone edits the artifact in place (same size): it is removed before the next load.
        std::fs::write(&a, b"artifact of A").unwrap();
        assert_eq!(auth.before_load().unwrap(), 1);
        assert!(!a.exists());
        // Usage statistics and work files are not artifacts.
        plant(&auth, "cccc.stats", b"1");
        assert_eq!(auth.before_load().unwrap(), 0);
    }

    #[test]
    fn the_key_file_is_owner_only() {
        let tmp = tempfile::tempdir().unwrap();
        CacheAuth::open(tmp.path()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(tmp.path().join("key")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
