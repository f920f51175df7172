//! A registry's index, signed by the registry's key, and what a client remembers of each registry it uses.
//!
//! The index lists every published version with its digests and whether it is yanked. It carries a content
//! `version` (one more at each publish and yank) and the `time_ms` it was signed at, so that a client refuses an
//! index older than the last one it saw (a rollback that would bring back a yanked version or hide a new one), one
//! signed too long ago (a stale mirror), and one that is not signed by the key it trusts for that registry. The
//! signature covers the index's exact bytes (carried base64 in the envelope), never a re-serialization.

use super::PluginError;
use super::manifest::Kind;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const FORMAT: u32 = 1;
/// What the registry signs: this domain string, then the index's bytes.
pub const DOMAIN: &[u8] = b"toka-host registry index v1\0";
/// Largest index a client accepts.
pub const MAX_INDEX: usize = 16 << 20;
/// Most entries (package versions) in an index.
pub const MAX_ENTRIES: usize = 100_000;
/// How far in the future a registry's signing time may be (clock skew).
pub const SKEW_MS: u64 = 5 * 60 * 1000;

/// One published version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub name: String,
    pub version: String,
    pub kind: Kind,
    pub description: String,
    #[serde(default)]
    pub keywords: Vec<String>,
    #[serde(default)]
    pub grants: Vec<String>,
    pub publisher: String,
    pub key_id: String,
    /// The component's sha256 (as the signed manifest states it).
    pub sha256: String,
    /// The package file's sha256 and size: what a download must match.
    pub package_sha256: String,
    pub package_size: u64,
    pub published_ms: u64,
    #[serde(default)]
    pub yanked: bool,
}

/// The index's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    pub format: u32,
    /// The registry's name (as it was started with).
    pub registry: String,
    /// The content version: one more at each publish and yank.
    pub version: u64,
    /// When this copy was signed.
    pub time_ms: u64,
    pub entries: Vec<Entry>,
}

/// The signed form served at `/v1/index`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub format: u32,
    /// The index's JSON bytes, base64 (standard alphabet).
    pub index: String,
    pub key_id: String,
    /// Ed25519 over [`DOMAIN`] + the index's bytes, hex.
    pub signature: String,
}

impl Index {
    /// Signs this index (its `time_ms` should be now) with the registry's key.
    pub fn sign(&self, key: &super::publisher::PublisherKey) -> Envelope {
        use base64::Engine;
        let bytes = serde_json::to_vec(self).expect("indexes serialize");
        let mut message = DOMAIN.to_vec();
        message.extend_from_slice(&bytes);
        let sig = key.sign_raw(&message);
        Envelope {
            format: FORMAT,
            index: base64::engine::general_purpose::STANDARD.encode(&bytes),
            key_id: key.key_id(),
            signature: sig,
        }
    }

    /// The newest version of `name` that is not yanked, and whether `req` (a semver requirement) matches it.
    pub fn resolve(&self, name: &str, req: Option<&semver::VersionReq>) -> Result<&Entry, PluginError> {
        let mut candidates: Vec<(&Entry, semver::Version)> = self
            .entries
            .iter()
            .filter(|e| e.name == name)
            .filter_map(|e| semver::Version::parse(&e.version).ok().map(|v| (e, v)))
            .collect();
        if candidates.is_empty() {
            return Err(PluginError::NotFound(format!("registry {} has no package `{name}`", self.registry)));
        }
        candidates.sort_by(|a, b| b.1.cmp(&a.1));
        let matching: Vec<&(&Entry, semver::Version)> =
            candidates.iter().filter(|(_, v)| req.is_none_or(|r| r.matches(v))).collect();
        if let Some((e, _)) = matching.iter().find(|(e, _)| !e.yanked) {
            return Ok(e);
        }
        match (matching.first(), req) {
            (Some((e, _)), _) => Err(PluginError::Yanked(format!(
                "{}@{} is yanked by registry {} (and no other version matches{})",
                e.name,
                e.version,
                self.registry,
                req.map(|r| format!(" {r}")).unwrap_or_default()
            ))),
            (None, Some(r)) => Err(PluginError::NotFound(format!("no version of `{name}` matches {r}"))),
            (None, None) => Err(PluginError::NotFound(format!("registry {} has no package `{name}`", self.registry))),
        }
    }

    /// The latest entries (not yanked) whose name, description or keywords contain `query`, of `kind` if given.
    pub fn search(&self, query: &str, kind: Option<Kind>) -> Vec<&Entry> {
        let q = query.to_lowercase();
        let mut latest: std::collections::BTreeMap<&str, (&Entry, semver::Version)> = Default::default();
        for e in self.entries.iter().filter(|e| !e.yanked && kind.is_none_or(|k| e.kind == k)) {
            let hit = e.name.contains(&q)
                || e.description.to_lowercase().contains(&q)
                || e.keywords.iter().any(|k| k.contains(&q));
            let Ok(v) = semver::Version::parse(&e.version) else { continue };
            if hit && latest.get(e.name.as_str()).is_none_or(|(_, seen)| v > *seen) {
                latest.insert(&e.name, (e, v));
            }
        }
        latest.into_values().map(|(e, _)| e).collect()
    }
}

impl Envelope {
    /// Verifies the envelope against the registry's trusted key and returns the index (not yet checked for
    /// freshness: see [`Trusted::accept`]).
    pub fn open(bytes: &[u8], public: &ed25519_dalek::VerifyingKey) -> Result<Index, PluginError> {
        use base64::Engine;
        if bytes.len() > MAX_INDEX {
            return Err(PluginError::UnsignedIndex(format!("index is over {MAX_INDEX} bytes")));
        }
        let envelope: Envelope = serde_json::from_slice(bytes).map_err(|e| {
            PluginError::UnsignedIndex(format!(
                "the registry's answer is not a signed index: {}",
                crate::error::one_line(&e.to_string())
            ))
        })?;
        let index = base64::engine::general_purpose::STANDARD
            .decode(envelope.index.as_bytes())
            .map_err(|_| PluginError::UnsignedIndex("the index is not base64".into()))?;
        let mut message = DOMAIN.to_vec();
        message.extend_from_slice(&index);
        let mut signature = [0u8; 64];
        hex::decode_to_slice(&envelope.signature, &mut signature)
            .map_err(|_| PluginError::UnsignedIndex("the index carries no valid signature".into()))?;
        public.verify_strict(&message, &ed25519_dalek::Signature::from_bytes(&signature)).map_err(|_| {
            PluginError::UnsignedIndex(format!(
                "the index's signature does not verify with the registry key {} this home trusts",
                super::publisher::key_id(&public.to_bytes())
            ))
        })?;
        let index: Index = serde_json::from_slice(&index)
            .map_err(|e| PluginError::UnsignedIndex(format!("signed index is malformed: {e}")))?;
        if index.format != FORMAT || index.entries.len() > MAX_ENTRIES {
            return Err(PluginError::UnsignedIndex(format!("index format {} or size unsupported", index.format)));
        }
        Ok(index)
    }
}

/// A registry this home uses: where, its key, and the newest index seen from it (for rollback detection).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trusted {
    pub name: String,
    pub url: String,
    pub public_key: String,
    #[serde(default)]
    pub seen_version: u64,
    #[serde(default)]
    pub seen_time_ms: u64,
}

impl Trusted {
    pub fn key(&self) -> Result<ed25519_dalek::VerifyingKey, PluginError> {
        super::publisher::parse_public(&self.public_key).map_err(PluginError::host)
    }

    /// Checks an index's freshness against what this home saw before, and remembers it: refuses an older content
    /// version (rollback), a signing time older than `max_age_ms` (stale) or too far in the future.
    pub fn accept(&mut self, index: &Index, now_ms: u64, max_age_ms: u64) -> Result<(), PluginError> {
        if index.version < self.seen_version {
            return Err(PluginError::IndexRollback(format!(
                "registry {} served index version {}, older than version {} already seen",
                self.name, index.version, self.seen_version
            )));
        }
        if index.time_ms > now_ms.saturating_add(SKEW_MS) {
            return Err(PluginError::StaleIndex(format!(
                "registry {} signed its index {} s in the future",
                self.name,
                (index.time_ms - now_ms) / 1000
            )));
        }
        let age = now_ms.saturating_sub(index.time_ms);
        if age > max_age_ms {
            return Err(PluginError::StaleIndex(format!(
                "registry {}'s index was signed {} ms ago, over the {} ms allowed (--max-index-age)",
                self.name, age, max_age_ms
            )));
        }
        self.seen_version = index.version;
        self.seen_time_ms = self.seen_time_ms.max(index.time_ms);
        Ok(())
    }
}

/// The registries file of a home (`HOME/registries.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registries {
    #[serde(default)]
    pub registries: Vec<Trusted>,
}

pub fn path(home: &Path) -> PathBuf {
    home.join("registries.json")
}

impl Registries {
    pub fn load(home: &Path) -> Result<Registries, PluginError> {
        let p = path(home);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| PluginError::host(format!("{}: {e}", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Registries::default()),
            Err(e) => Err(PluginError::host(format!("{}: {e}", p.display()))),
        }
    }

    /// Loads, changes and saves the file under an exclusive lock.
    pub fn update<T>(
        home: &Path,
        change: impl FnOnce(&mut Registries) -> Result<T, PluginError>,
    ) -> Result<T, PluginError> {
        crate::home::private_dir(home).map_err(PluginError::host)?;
        let lock_path = home.join("registries.lock");
        let err = |e: std::io::Error| PluginError::host(format!("{}: {e}", lock_path.display()));
        let lock =
            std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(&lock_path).map_err(err)?;
        lock.lock().map_err(err)?;
        let mut store = Registries::load(home)?;
        let value = change(&mut store)?;
        let p = path(home);
        crate::home::write_private(&p, &serde_json::to_vec_pretty(&store).expect("registries serialize"))
            .map_err(|e| PluginError::host(format!("{}: {e}", p.display())))?;
        Ok(value)
    }

    /// The registry named `name`, or the only one when `name` is `None`.
    pub fn pick(&self, name: Option<&str>) -> Result<&Trusted, PluginError> {
        match name {
            Some(n) => self
                .registries
                .iter()
                .find(|r| r.name == n)
                .ok_or_else(|| PluginError::NotFound(format!("no registry `{n}` (toka-host registry add)"))),
            None => match self.registries.as_slice() {
                [one] => Ok(one),
                [] => Err(PluginError::NotFound(
                    "no registry configured (toka-host registry add NAME URL --key KEY)".into(),
                )),
                _ => Err(PluginError::Invalid("several registries are configured: choose one with --registry".into())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::publisher::PublisherKey;

    fn index(version: u64, time_ms: u64) -> Index {
        Index { format: FORMAT, registry: "r".into(), version, time_ms, entries: vec![] }
    }

    #[test]
    fn only_the_trusted_key_opens_an_index() {
        let key = PublisherKey::generate("r").unwrap();
        let env = serde_json::to_vec(&index(3, 1000).sign(&key)).unwrap();
        assert_eq!(Envelope::open(&env, &key.public()).unwrap().version, 3);
        let other = PublisherKey::generate("o").unwrap();
        assert!(matches!(Envelope::open(&env, &other.public()), Err(PluginError::UnsignedIndex(_))));
        let mut tampered: Envelope = serde_json::from_slice(&env).unwrap();
        tampered.index = {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&index(4, 1000)).unwrap())
        };
        let tampered = serde_json::to_vec(&tampered).unwrap();
        assert!(matches!(Envelope::open(&tampered, &key.public()), Err(PluginError::UnsignedIndex(_))));
        assert!(matches!(Envelope::open(b"{\"format\":1}", &key.public()), Err(PluginError::UnsignedIndex(_))));
    }

    #[test]
    fn freshness_refuses_rollback_stale_and_future() {
        let mut t = Trusted {
            name: "r".into(),
            url: String::new(),
            public_key: String::new(),
            seen_version: 0,
            seen_time_ms: 0,
        };
        t.accept(&index(5, 10_000), 10_000, 1_000).unwrap();
        assert!(matches!(t.accept(&index(4, 10_500), 10_500, 1_000), Err(PluginError::IndexRollback(_))));
        assert!(matches!(t.accept(&index(5, 10_000), 20_000, 1_000), Err(PluginError::StaleIndex(_))));
        assert!(matches!(t.accept(&index(6, 10_000 + SKEW_MS + 1), 10_000, 1_000), Err(PluginError::StaleIndex(_))));
        t.accept(&index(6, 20_000), 20_000, 1_000).unwrap();
        assert_eq!(t.seen_version, 6);
    }
}
