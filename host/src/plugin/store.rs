//! Installed packages: `HOME/plugins/NAME.json` (the signed manifest's exact bytes, the signature, where it came
//! from, when) and `HOME/plugins/blobs/SHA256.wasm` (the component, by content, 0600). An installed tool is also
//! registered with the tool registry under its package name, so agents, `tool call` and MCP call it by name.
//!
//! Installing never replaces a newer version with an older one (unless asked), nor a package of one publisher with
//! another's. Loading an installed package checks it again (digest of the bytes on disk, signature against the
//! home's trust as it is now), so that removing a publisher from trust stops its installed packages too.

use super::PluginError;
use super::manifest::{Kind, Manifest};
use super::package::{Package, Signature};
use super::trust::TrustStore;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// An installed package.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub name: String,
    pub version: String,
    pub kind: Kind,
    pub publisher: String,
    pub key_id: String,
    /// The component's sha256 (its blob's name).
    pub sha256: String,
    pub size: u64,
    /// Where it was installed from: a file, a URL, `registry:NAME@VERSION`, `oci://...`.
    pub source: String,
    pub installed_ms: u64,
    /// The manifest's exact signed bytes (UTF-8 JSON), and the signature over them.
    pub manifest: String,
    pub signature: Signature,
}

impl Record {
    /// The identity a token can be bound to: `KEY_ID/NAME` (see `token mint --plugin`).
    pub fn identity(&self) -> String {
        identity(&self.key_id, &self.name)
    }

    pub fn manifest(&self) -> Result<Manifest, PluginError> {
        Manifest::parse(self.manifest.as_bytes())
    }
}

/// A package's identity, `KEY_ID/NAME`: the publisher's key and the package's name, across versions.
pub fn identity(key_id: &str, name: &str) -> String {
    format!("{key_id}/{name}")
}

/// What installing would change, for the confirmation.
#[derive(Debug, Clone)]
pub struct Plan {
    pub previous: Option<Record>,
    /// The same version with the same bytes is already installed: nothing to do.
    pub unchanged: bool,
}

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> PluginError + '_ {
    move |e| PluginError::host(format!("{}: {e}", path.display()))
}

impl Store {
    pub fn open(home: &Path) -> Store {
        Store { dir: home.join("plugins") }
    }

    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        self.dir.join("blobs").join(format!("{sha256}.wasm"))
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// The installed package `name`, if any.
    pub fn find(&self, name: &str) -> Result<Option<Record>, PluginError> {
        if super::manifest::check_name("package name", name).is_err() {
            return Ok(None);
        }
        let p = self.record_path(name);
        let bytes = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&p)(e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| PluginError::host(format!("{}: corrupt record: {e}", p.display())))
    }

    pub fn get(&self, name: &str) -> Result<Record, PluginError> {
        self.find(name)?.ok_or_else(|| {
            PluginError::NotFound(format!("no plugin named `{name}` is installed (see toka-host plugin list)"))
        })
    }

    pub fn list(&self) -> Result<Vec<Record>, PluginError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&self.dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io(&self.dir))?;
            let file = entry.file_name().to_string_lossy().into_owned();
            if let Some(name) = file.strip_suffix(".json")
                && let Some(r) = self.find(name)?
            {
                out.push(r);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// What installing `package` would do, or why it must not: a downgrade (or the same version with other bytes),
    /// or a package of that name from another publisher.
    pub fn plan(&self, package: &Package, allow_downgrade: bool) -> Result<Plan, PluginError> {
        let m = &package.manifest;
        let Some(previous) = self.find(&m.name)? else { return Ok(Plan { previous: None, unchanged: false }) };
        if previous.key_id != m.publisher.key_id {
            return Err(PluginError::WrongPublisher(format!(
                "{} is installed from publisher {} (key {}); this package is from {} (key {}): remove it first",
                m.name, previous.publisher, previous.key_id, m.publisher.name, m.publisher.key_id
            )));
        }
        let installed = semver::Version::parse(&previous.version)
            .map_err(|e| PluginError::host(format!("installed record of {}: {e}", m.name)))?;
        let new = m.semver();
        if new == installed && previous.sha256 == m.component.sha256 {
            return Ok(Plan { previous: Some(previous), unchanged: true });
        }
        if !allow_downgrade {
            if new < installed {
                return Err(PluginError::Downgrade(format!(
                    "{} {} is installed; {} is older (--allow-downgrade to install it anyway)",
                    m.name, installed, new
                )));
            }
            if new == installed {
                return Err(PluginError::Downgrade(format!(
                    "{} {} is installed with other bytes (sha256 {}); a version is immutable (--allow-downgrade to \
                     replace it)",
                    m.name,
                    installed,
                    previous.sha256.get(..16).unwrap_or(&previous.sha256)
                )));
            }
        }
        Ok(Plan { previous: Some(previous), unchanged: false })
    }

    /// Writes the component blob (by digest) and the record. The package was verified by the caller.
    pub fn commit(&self, package: &Package, source: &str) -> Result<Record, PluginError> {
        let m = &package.manifest;
        let blobs = self.dir.join("blobs");
        crate::home::private_dir(&blobs).map_err(PluginError::host)?;
        let blob = self.blob_path(&m.component.sha256);
        if !blob.exists() {
            crate::home::write_private(&blob, &package.component).map_err(io(&blob))?;
        }
        let signature = package.signature.clone().ok_or_else(|| PluginError::Signature("not signed".into()))?;
        let record = Record {
            name: m.name.clone(),
            version: m.version.clone(),
            kind: m.kind,
            publisher: m.publisher.name.clone(),
            key_id: m.publisher.key_id.clone(),
            sha256: m.component.sha256.clone(),
            size: m.component.size,
            source: source.to_string(),
            installed_ms: crate::events::now_ms(),
            manifest: String::from_utf8(package.manifest_bytes.clone())
                .map_err(|_| PluginError::Malformed("manifest is not UTF-8".into()))?,
            signature,
        };
        let p = self.record_path(&m.name);
        crate::home::write_private(&p, &serde_json::to_vec_pretty(&record).expect("records serialize"))
            .map_err(io(&p))?;
        Ok(record)
    }

    /// Writes a component blob ahead of the record (a tool must describe itself from a file before it is
    /// registered); [`Store::drop_unused_blob`] takes it back if the install does not go through.
    pub fn stage_blob(&self, package: &Package) -> Result<PathBuf, PluginError> {
        let blobs = self.dir.join("blobs");
        crate::home::private_dir(&blobs).map_err(PluginError::host)?;
        let blob = self.blob_path(&package.manifest.component.sha256);
        if !blob.exists() {
            crate::home::write_private(&blob, &package.component).map_err(io(&blob))?;
        }
        Ok(blob)
    }

    /// Removes the blob `sha256` unless an installed package still uses it.
    pub fn drop_unused_blob(&self, sha256: &str) -> Result<(), PluginError> {
        if self.list()?.iter().any(|r| r.sha256 == sha256) {
            return Ok(());
        }
        let blob = self.blob_path(sha256);
        match std::fs::remove_file(&blob) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&blob)(e)),
        }
    }

    /// Uninstalls `name` (and its blob, unless another package uses it).
    pub fn remove(&self, name: &str) -> Result<Record, PluginError> {
        let record = self.get(name)?;
        let p = self.record_path(name);
        std::fs::remove_file(&p).map_err(io(&p))?;
        self.drop_unused_blob(&record.sha256)?;
        Ok(record)
    }

    /// Loads an installed package for a run: the bytes on disk must match the digest, and the signature must still
    /// verify against the home's trust now (a publisher removed from trust stops its installed packages).
    pub fn load(&self, name: &str, trust: &TrustStore) -> Result<(Record, Vec<u8>), PluginError> {
        let record = self.get(name)?;
        let blob = self.blob_path(&record.sha256);
        let component = super::package::read_bounded(&blob)?;
        let manifest = record.manifest()?;
        if manifest.name != record.name || manifest.component.sha256 != record.sha256 {
            return Err(PluginError::Signature(format!(
                "the installed record of {name} does not agree with its signed manifest"
            )));
        }
        let package = Package {
            manifest_bytes: record.manifest.as_bytes().to_vec(),
            manifest,
            signature: Some(record.signature.clone()),
            component,
        };
        trust.verify(&package)?;
        Ok((record, package.component))
    }
}
