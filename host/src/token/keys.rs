//! Root keys: Ed25519 key pairs under `$TOKA_HOME/keys.json` (mode 0600), each with a numeric id that every token
//! names (`root_key_id`).
//!
//! One key is `active` (new tokens are signed with it). `rotate` makes a new active key and leaves the previous one
//! verifying until its overlap window ends or it is `retire`d; a retired key's tokens are refused, saying so.
//!
//! Every held token is re-checked against this file at each use (a tool call, a model call), so reading it is on
//! the hot path: [`KeyStore::load`] serves it from a process-wide [`FileCache`] that re-reads the file whenever its
//! stamp says it may have changed (see [`crate::filecache`]), and each key's public point is decompressed once per
//! read of the file. Writers ([`KeyStore::update`]) always read the file itself, under the lock.

use crate::filecache::{self, FileCache};
use biscuit_auth::{Algorithm, KeyPair, PrivateKey, PublicKey};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, OnceLock};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyStatus {
    Active,
    /// Replaced by a newer key; still verifies until `verify_until_ms`.
    Previous,
    Retired,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RootKey {
    pub id: u32,
    pub status: KeyStatus,
    pub created_ms: u64,
    /// For a previous key: the end of its overlap window.
    #[serde(default)]
    pub verify_until_ms: Option<u64>,
    pub public_hex: String,
    private_hex: String,
    /// `public_hex` parsed (an Ed25519 point, decompressed), with the text it was parsed from.
    #[serde(skip)]
    public: OnceLock<(String, PublicKey)>,
}

/// Why a key cannot verify or sign.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("no root key: run `toka-host key init`")]
    NoKeys,
    #[error("root keys already exist in {0}")]
    AlreadyInitialized(String),
    #[error("token is signed by root key {0}, which is unknown here")]
    Unknown(u32),
    #[error("token is signed by root key {0}, which is retired")]
    Retired(u32),
    #[error("token is signed by root key {0}, whose overlap window after rotation has ended")]
    OverlapEnded(u32),
    #[error("root key {0} is the active key; rotate before retiring it")]
    RetireActive(u32),
    #[error("key file {path}: {reason}")]
    File { path: String, reason: String },
}

/// The key file of a toka home.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KeyStore {
    pub keys: Vec<RootKey>,
}

pub fn path(home: &Path) -> PathBuf {
    home.join("keys.json")
}

/// The key files this process has read, by path. A process serves a handful of homes; the bound is for tests.
static CACHE: LazyLock<FileCache<KeyStore>> = LazyLock::new(|| FileCache::new(64));

/// How many times this process read a key file rather than serving it from the cache (for tests and benches).
pub fn file_reads() -> u64 {
    CACHE.reads()
}

fn parse(p: &Path, bytes: &[u8]) -> Result<KeyStore, KeyError> {
    serde_json::from_slice(bytes).map_err(|e| KeyError::File { path: p.display().to_string(), reason: e.to_string() })
}

impl KeyStore {
    /// The key file of `home` as it is now (an empty store if there is none), from the cache when the file has not
    /// changed since this process last read it.
    pub fn current(home: &Path) -> Result<Arc<KeyStore>, KeyError> {
        let p = path(home);
        match CACHE.get(&p, |bytes| parse(&p, bytes)) {
            Ok(Some(store)) => Ok(store),
            Ok(None) => Ok(Arc::new(KeyStore::default())),
            Err(filecache::Error::Parse(e)) => Err(e),
            Err(filecache::Error::Io(e)) => {
                Err(KeyError::File { path: p.display().to_string(), reason: e.to_string() })
            }
        }
    }

    /// [`KeyStore::current`], as a store of its own.
    pub fn load(home: &Path) -> Result<Self, KeyError> {
        Ok((*KeyStore::current(home)?).clone())
    }

    /// The file itself, never the cache: what a writer changes.
    fn read(home: &Path) -> Result<Self, KeyError> {
        let p = path(home);
        match std::fs::read(&p) {
            Ok(bytes) => parse(&p, &bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(KeyStore::default()),
            Err(e) => Err(KeyError::File { path: p.display().to_string(), reason: e.to_string() }),
        }
    }

    /// Loads, changes and saves the key file under an exclusive lock on `keys.lock`, so that concurrent processes
    /// (two first runs creating the local root key, a rotation during a run) never lose or interleave an update.
    pub fn update<T>(
        home: &Path,
        change: impl FnOnce(&mut KeyStore) -> Result<T, KeyError>,
    ) -> Result<(KeyStore, T), KeyError> {
        let lock_path = home.join("keys.lock");
        let err = |e: std::io::Error| KeyError::File { path: lock_path.display().to_string(), reason: e.to_string() };
        std::fs::create_dir_all(home).map_err(err)?;
        let lock =
            std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(&lock_path).map_err(err)?;
        lock.lock().map_err(err)?;
        let mut store = KeyStore::read(home)?;
        let value = change(&mut store)?;
        store.save(home)?;
        // The lock is released when `lock` is dropped.
        Ok((store, value))
    }

    /// The key store, creating the first root key if this home has none.
    pub fn load_or_init(home: &Path, now_ms: u64) -> Result<KeyStore, KeyError> {
        let store = KeyStore::load(home)?;
        if !store.keys.is_empty() {
            return Ok(store);
        }
        let (store, ()) = KeyStore::update(home, |s| {
            if s.keys.is_empty() {
                s.init(now_ms)?;
            }
            Ok(())
        })?;
        Ok(store)
    }

    /// Writes the file with mode 0600, through a temporary file so a crash never leaves half a key file. Callers
    /// that change the store hold the lock of [`KeyStore::update`].
    fn save(&self, home: &Path) -> Result<(), KeyError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let p = path(home);
        let err = |e: std::io::Error| KeyError::File { path: p.display().to_string(), reason: e.to_string() };
        std::fs::create_dir_all(home).map_err(err)?;
        let tmp = p.with_extension(format!("json.{}.tmp", std::process::id()));
        let mut f =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(err)?;
        f.write_all(&serde_json::to_vec_pretty(self).expect("keys serialize")).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &p).map_err(err)
    }

    fn new_key(&self, now_ms: u64) -> RootKey {
        let pair = KeyPair::new();
        RootKey {
            id: self.keys.iter().map(|k| k.id + 1).max().unwrap_or(1),
            status: KeyStatus::Active,
            created_ms: now_ms,
            verify_until_ms: None,
            public_hex: pair.public().to_bytes_hex(),
            private_hex: pair.private().to_bytes_hex(),
            public: OnceLock::new(),
        }
    }

    pub fn init(&mut self, now_ms: u64) -> Result<&RootKey, KeyError> {
        if !self.keys.is_empty() {
            return Err(KeyError::AlreadyInitialized("this toka home".into()));
        }
        let key = self.new_key(now_ms);
        self.keys.push(key);
        Ok(&self.keys[0])
    }

    /// Makes a new active key; the old active key keeps verifying for `overlap_ms`.
    pub fn rotate(&mut self, now_ms: u64, overlap_ms: u64) -> Result<&RootKey, KeyError> {
        let key = self.new_key(now_ms);
        let mut found = false;
        for k in self.keys.iter_mut().filter(|k| k.status == KeyStatus::Active) {
            k.status = KeyStatus::Previous;
            k.verify_until_ms = Some(now_ms.saturating_add(overlap_ms));
            found = true;
        }
        if !found {
            return Err(KeyError::NoKeys);
        }
        self.keys.push(key);
        Ok(self.keys.last().expect("just pushed"))
    }

    pub fn retire(&mut self, id: u32) -> Result<(), KeyError> {
        let key = self.keys.iter_mut().find(|k| k.id == id).ok_or(KeyError::Unknown(id))?;
        if key.status == KeyStatus::Active {
            return Err(KeyError::RetireActive(id));
        }
        key.status = KeyStatus::Retired;
        Ok(())
    }

    /// The active signing key and its id.
    pub fn signing(&self) -> Result<(u32, KeyPair), KeyError> {
        let key = self.keys.iter().find(|k| k.status == KeyStatus::Active).ok_or(KeyError::NoKeys)?;
        let private = PrivateKey::from_bytes_hex(&key.private_hex, Algorithm::Ed25519)
            .map_err(|e| KeyError::File { path: "keys.json".into(), reason: e.to_string() })?;
        Ok((key.id, KeyPair::from(&private)))
    }

    /// The public key that verifies tokens signed by root key `id` at time `now_ms`.
    pub fn verifying(&self, id: u32, now_ms: u64) -> Result<PublicKey, KeyError> {
        let key = self.keys.iter().find(|k| k.id == id).ok_or(KeyError::Unknown(id))?;
        match key.status {
            KeyStatus::Retired => return Err(KeyError::Retired(id)),
            KeyStatus::Previous if key.verify_until_ms.is_some_and(|until| now_ms > until) => {
                return Err(KeyError::OverlapEnded(id));
            }
            _ => {}
        }
        key.public_key()
    }
}

impl RootKey {
    /// The public key, parsed on first use (decompressing an Ed25519 point costs about as much as a signature
    /// check) and kept as long as `public_hex` is what it was parsed from.
    pub fn public_key(&self) -> Result<PublicKey, KeyError> {
        if let Some((hex, public)) = self.public.get()
            && *hex == self.public_hex
        {
            return Ok(*public);
        }
        let public = PublicKey::from_bytes_hex(&self.public_hex, Algorithm::Ed25519)
            .map_err(|e| KeyError::File { path: "keys.json".into(), reason: e.to_string() })?;
        // A key whose text changed since (only tests do that) is parsed at each use.
        drop(self.public.set((self.public_hex.clone(), public)));
        Ok(public)
    }
}
