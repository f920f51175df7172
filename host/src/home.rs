//! A toka home: the one directory that holds everything toka-host keeps (root keys, revocations, installed tools,
//! agent state, the event log), plus the compile cache beside it, resolved once from `--home`, `--db` and
//! `--cache-dir` (or their environment defaults) and handed to every command.
//!
//! What this module guarantees: the home, the database, the key file and the cache are created owner-only
//! (directories 0700, files 0600), and [`Home::protected`] names them so that no grant can ever cover them. It never
//! creates anything on a read path: [`Home::existing_db`] refuses a database that is not there.

use std::path::{Path, PathBuf};

/// The resolved locations of one toka home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    /// The home directory: keys, tools, and by default the database.
    pub dir: PathBuf,
    /// The event database (`--db`, default `<home>/toka.redb`).
    pub db: PathBuf,
    /// The compile cache (`--cache-dir`, default `$TOKA_CACHE_DIR`, else `~/.cache/toka-host`); `None`: no cache.
    pub cache: Option<PathBuf>,
}

/// Why a home location cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HomeError {
    #[error("cannot create {path}: {source}")]
    Create { path: String, source: std::io::Error },
    #[error("database {path} does not exist (check --db / --home; reading commands never create one)")]
    NoDatabase { path: String },
    #[error("cannot open database {path}: {reason}")]
    Open { path: String, reason: String },
}

impl Home {
    /// Resolves the locations from the command's flags; each `None` takes its default.
    pub fn resolve(home: Option<&Path>, db: Option<&Path>, cache: Option<&Path>, no_cache: bool) -> Home {
        let dir = home.map_or_else(crate::db::default_home, Path::to_path_buf);
        let db = db.map_or_else(|| dir.join("toka.redb"), Path::to_path_buf);
        let cache =
            if no_cache { None } else { cache.map(Path::to_path_buf).or_else(crate::engine::default_cache_dir) };
        Home { dir, db, cache }
    }

    /// The home of the environment's defaults (`$TOKA_HOME`, `$TOKA_CACHE_DIR` ...).
    pub fn from_env() -> Home {
        Home::resolve(None, None, None, false)
    }

    /// The root key file.
    pub fn keys(&self) -> PathBuf {
        crate::token::keys::path(&self.dir)
    }

    /// Creates the home directory (0700) if it is missing.
    pub fn ensure_dir(&self) -> Result<(), HomeError> {
        private_dir(&self.dir)
    }

    /// Opens the database for writing, creating it (0600, in a 0700 directory) if it is missing.
    pub fn open_db(&self) -> Result<crate::db::Db, HomeError> {
        if let Some(parent) = self.db.parent().filter(|p| !p.as_os_str().is_empty()) {
            private_dir(parent)?;
        }
        private_file(&self.db)?;
        crate::db::Db::open(&self.db)
            .map_err(|e| HomeError::Open { path: self.db.display().to_string(), reason: e.to_string() })
    }

    /// Opens the database only if it exists: reading commands (`events`, `events verify`, `runs`, `state get`)
    /// must never create an empty database and report on it.
    pub fn existing_db(&self) -> Result<crate::db::Db, HomeError> {
        if !self.db.is_file() {
            return Err(HomeError::NoDatabase { path: self.db.display().to_string() });
        }
        crate::db::Db::open(&self.db)
            .map_err(|e| HomeError::Open { path: self.db.display().to_string(), reason: e.to_string() })
    }

    /// Everything toka-host keeps for itself, as absolute paths with symlinks resolved: a directory grant may
    /// neither contain one of these nor lie inside one. Paths that do not exist yet are resolved through their
    /// nearest existing ancestor, so a grant cannot cover a home that the first run is about to create.
    pub fn protected(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.dir.clone(), self.db.clone(), crate::db::archive_path(&self.db), self.keys()];
        paths.extend(self.cache.iter().cloned());
        paths.iter().map(|p| resolve_lenient(p)).collect()
    }
}

/// `path` made absolute with every existing part's symlinks resolved; the parts that do not exist yet are appended
/// as they are (without `.` or `..`).
pub fn resolve_lenient(path: &Path) -> PathBuf {
    let absolute =
        if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir().unwrap_or_default().join(path) };
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            let mut out = real;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return out;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return absolute,
        }
    }
}

/// Creates `dir` and its missing parents; the directories created here are 0700. An existing directory is left
/// as it is (it may be shared, such as `/tmp`).
pub fn private_dir(dir: &Path) -> Result<(), HomeError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| HomeError::Create { path: dir.display().to_string(), source })
}

/// Creates `file` empty with mode 0600 if it does not exist (a later open keeps the mode).
pub fn private_file(file: &Path) -> Result<(), HomeError> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(file) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(HomeError::Create { path: file.display().to_string(), source }),
    }
}

/// Writes `bytes` to `path` with mode 0600, through a temporary file and a rename (tokens, keys, manifests).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        drop(std::fs::remove_file(&tmp));
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_owner_only() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::resolve(Some(&tmp.path().join("a/home")), None, Some(&tmp.path().join("cache")), false);
        home.open_db().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&home.dir), 0o700);
        assert_eq!(mode(&tmp.path().join("a")), 0o700);
        assert_eq!(mode(&home.db), 0o600);
        write_private(&tmp.path().join("t"), b"x").unwrap();
        assert_eq!(mode(&tmp.path().join("t")), 0o600);
    }

    #[test]
    fn reading_never_creates() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::resolve(Some(&tmp.path().join("nohome")), None, None, true);
        assert!(matches!(home.existing_db(), Err(HomeError::NoDatabase { .. })));
        assert!(!tmp.path().join("nohome").exists());
        home.open_db().unwrap();
        home.existing_db().unwrap();
    }

    #[test]
    fn protected_paths_resolve_through_symlinks_and_missing_parts() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, tmp.path().join("link")).unwrap();
        let home = Home::resolve(Some(&tmp.path().join("link/not/yet")), None, None, true);
        let canonical = tmp.path().canonicalize().unwrap();
        assert_eq!(home.protected()[0], canonical.join("real/not/yet"));
        assert_eq!(home.protected()[1], canonical.join("real/not/yet/toka.redb"));
        assert_eq!(home.protected()[2], canonical.join("real/not/yet/toka.redb.archive"));
    }
}
