//! The cluster bundle: what `toka-host cluster init` makes and every node's home holds (`HOME/cluster.json`,
//! owner-only): the cluster's id, the secret nodes authenticate each other (and the cluster's operator) with, the
//! founding node, and the home's root keys, so that a token minted on any node verifies on every node.
//!
//! The bundle is a secret: whoever holds it can join the cluster and mint tokens. It must never be logged, served
//! or written anywhere but owner-only files.

use crate::token::keys::{KeyStore, RootKey};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The bundle's file name in a node's home.
pub const FILE: &str = "cluster.json";

/// Bytes of the node-to-node secret.
const SECRET_BYTES: usize = 32;

/// Longest bundle file read.
const MAX_BYTES: u64 = 1 << 20;

/// The node that starts the cluster as a cluster of one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Founder {
    pub id: u64,
    /// Its base URL as the other nodes reach it, e.g. `http://10.0.0.1:7878`.
    pub addr: String,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// The cluster's id (Raft's cluster name).
    pub cluster: String,
    /// Hex of the node-to-node secret: the bearer of every `/v1/raft/*` and `/v1/cluster/*` request.
    pub secret: String,
    pub founder: Founder,
    /// The root keys every node verifies tokens with (and signs its log's checkpoints with).
    pub keys: Vec<RootKey>,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle").field("cluster", &self.cluster).field("founder", &self.founder).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    #[error("cluster bundle {path}: {reason}")]
    File { path: String, reason: String },
    #[error("cluster bundle {path} is not valid: {reason}")]
    Invalid { path: String, reason: String },
    #[error(
        "this home ({home}) has root keys other than cluster {cluster}'s: a node verifies tokens with the cluster's \
         keys only; use a fresh home"
    )]
    OtherKeys { home: String, cluster: String },
    #[error("this home ({home}) already belongs to cluster {other}, not {cluster}")]
    OtherCluster { home: String, other: String, cluster: String },
    #[error("{0}")]
    Keys(String),
}

/// Where `home`'s bundle is.
pub fn path(home: &Path) -> PathBuf {
    home.join(FILE)
}

impl Bundle {
    /// A new cluster founded by node `id` at `addr`, with `home`'s root keys (created if it has none).
    pub fn create(home: &Path, id: u64, addr: &str, now_ms: u64) -> Result<Bundle, BundleError> {
        check_addr(addr).map_err(|reason| BundleError::Invalid { path: "(new)".into(), reason })?;
        crate::home::private_dir(home)
            .map_err(|e| BundleError::File { path: home.display().to_string(), reason: e.to_string() })?;
        let keys = KeyStore::load_or_init(home, now_ms).map_err(|e| BundleError::Keys(e.to_string()))?;
        let secret =
            random_bytes().map_err(|e| BundleError::File { path: "/dev/urandom".into(), reason: e.to_string() })?;
        // The cluster's id names it in logs and errors: derived from the secret, it reveals nothing of it.
        let cluster = {
            use sha2::{Digest, Sha256};
            let digest = Sha256::digest([b"toka-cluster-id:".as_slice(), &secret].concat());
            format!("toka-{}", hex::encode(&digest[..6]))
        };
        Ok(Bundle {
            cluster,
            secret: hex::encode(secret),
            founder: Founder { id, addr: addr.trim_end_matches('/').to_string() },
            keys: keys.keys,
        })
    }

    /// Reads a bundle file (bounded, strictly parsed, checked).
    pub fn read(file: &Path) -> Result<Bundle, BundleError> {
        use std::io::Read;
        let shown = file.display().to_string();
        let err = |e: std::io::Error| BundleError::File { path: shown.clone(), reason: e.to_string() };
        let mut bytes = Vec::new();
        std::fs::File::open(file).map_err(err)?.take(MAX_BYTES + 1).read_to_end(&mut bytes).map_err(err)?;
        if bytes.len() as u64 > MAX_BYTES {
            return Err(BundleError::Invalid { path: shown, reason: format!("larger than {MAX_BYTES} bytes") });
        }
        let bundle: Bundle = serde_json::from_slice(&bytes)
            .map_err(|e| BundleError::Invalid { path: shown.clone(), reason: e.to_string() })?;
        bundle.check().map_err(|reason| BundleError::Invalid { path: shown, reason })?;
        Ok(bundle)
    }

    fn check(&self) -> Result<(), String> {
        let secret = hex::decode(&self.secret).map_err(|_| "the secret is not hex".to_string())?;
        if secret.len() != SECRET_BYTES {
            return Err(format!("the secret must be {SECRET_BYTES} bytes"));
        }
        if self.cluster.is_empty()
            || self.cluster.len() > 64
            || !self.cluster.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err("the cluster id must be 1-64 letters, digits or -".into());
        }
        if self.keys.is_empty() {
            return Err("it holds no root key".into());
        }
        check_addr(&self.founder.addr)
    }

    /// Writes the bundle to `file`, owner-only.
    pub fn write(&self, file: &Path) -> Result<(), BundleError> {
        let bytes = serde_json::to_vec_pretty(self).expect("a bundle serializes");
        crate::home::write_private(file, &bytes)
            .map_err(|e| BundleError::File { path: file.display().to_string(), reason: e.to_string() })
    }

    /// Makes `home` a node of this bundle's cluster: its root keys become the cluster's (a home with other keys is
    /// refused: tokens it minted would verify nowhere else) and the bundle is stored as `HOME/cluster.json`. Doing it
    /// again with the same bundle changes nothing.
    pub fn install(&self, home: &Path) -> Result<(), BundleError> {
        let shown = home.display().to_string();
        crate::home::private_dir(home).map_err(|e| BundleError::File { path: shown.clone(), reason: e.to_string() })?;
        let own = path(home);
        if own.is_file() {
            let existing = Bundle::read(&own)?;
            if existing.cluster != self.cluster || existing.secret != self.secret {
                return Err(BundleError::OtherCluster {
                    home: shown,
                    other: existing.cluster,
                    cluster: self.cluster.clone(),
                });
            }
        }
        let publics = |keys: &[RootKey]| keys.iter().map(|k| k.public_hex.clone()).collect::<Vec<_>>();
        KeyStore::update(home, |store| {
            if store.keys.is_empty() {
                store.keys = self.keys.clone();
            }
            Ok(())
        })
        .map_err(|e| BundleError::Keys(e.to_string()))
        .and_then(|(store, ())| {
            if publics(&store.keys) == publics(&self.keys) {
                Ok(())
            } else {
                Err(BundleError::OtherKeys { home: shown.clone(), cluster: self.cluster.clone() })
            }
        })?;
        self.write(&own)
    }

    /// Whether `bearer` is this cluster's secret (compared in constant time).
    pub fn authenticates(&self, bearer: &str) -> bool {
        let (a, b) = (self.secret.as_bytes(), bearer.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// A node's address must be an http(s) base URL without a path.
pub fn check_addr(addr: &str) -> Result<(), String> {
    let url = url::Url::parse(addr).map_err(|e| format!("address {addr:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(format!("address {addr:?} must be an http:// or https:// URL with a host"));
    }
    if !url.path().trim_end_matches('/').is_empty() || url.query().is_some() {
        return Err(format!("address {addr:?} must have no path or query"));
    }
    Ok(())
}

fn random_bytes() -> std::io::Result<[u8; SECRET_BYTES]> {
    use std::io::Read;
    let mut bytes = [0u8; SECRET_BYTES];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_installs_once_per_cluster_and_refuses_other_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (one, two, three) = (dir.path().join("1"), dir.path().join("2"), dir.path().join("3"));
        let bundle = Bundle::create(&one, 1, "http://127.0.0.1:7001", 1).unwrap();
        bundle.install(&one).unwrap();
        let file = dir.path().join("b.json");
        bundle.write(&file).unwrap();
        let read = Bundle::read(&file).unwrap();
        read.install(&two).unwrap();
        read.install(&two).unwrap();
        assert_eq!(KeyStore::load(&two).unwrap().keys[0].public_hex, bundle.keys[0].public_hex);
        // A home with its own keys is refused; so is a second cluster on a node.
        KeyStore::load_or_init(&three, 1).unwrap();
        assert!(matches!(read.install(&three), Err(BundleError::OtherKeys { .. })));
        let other = Bundle::create(&dir.path().join("4"), 1, "http://127.0.0.1:7001", 1).unwrap();
        assert!(matches!(other.install(&two), Err(BundleError::OtherCluster { .. })));
        assert!(bundle.authenticates(&bundle.secret));
        assert!(!bundle.authenticates(&other.secret));
        assert!(!bundle.authenticates(""));
    }

    #[test]
    fn addresses_and_bundles_are_checked() {
        for bad in ["127.0.0.1:7001", "ftp://h", "http://h/x", "http://h?q=1", ""] {
            assert!(check_addr(bad).is_err(), "{bad}");
        }
        assert!(check_addr("http://127.0.0.1:7001").is_ok());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b.json");
        std::fs::write(&file, r#"{"cluster":"c","secret":"00","founder":{"id":1,"addr":"http://h"},"keys":[]}"#)
            .unwrap();
        let e = Bundle::read(&file).unwrap_err().to_string();
        assert!(e.contains("the secret must be 32 bytes"), "{e}");
    }
}
