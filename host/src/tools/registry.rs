//! The tool registry: `$TOKA_HOME/tools/NAME.json` (what `describe()` said, the digest, when it was added) and
//! `$TOKA_HOME/tools/SHA256.wasm` (the component, stored by content). Files are written through a temporary file and
//! renamed, so a crash never leaves half a tool behind; a component is checked against its digest when loaded.
//!
//! Every tool call looks its tool up here, so manifests are kept parsed in a [`FileCache`] shared by the clones of
//! a registry: one `stat` per lookup, and a manifest changed by another process (`tool rm`, `tool add` under the same
//! name) is read again at its next lookup (see [`crate::filecache`]).

use super::{Spec, check_name};
use crate::filecache::{self, FileCache};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An installed tool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Installed {
    /// The name it is installed and called under (the spec's name unless `tool add --name` chose another).
    pub name: String,
    pub sha256: String,
    pub size: u64,
    pub added_ms: u64,
    pub spec: Spec,
    /// For a tool installed from a signed package (`plugin install`): the package's identity, `KEY_ID/NAME`. Such a
    /// tool is checked against the home's trust again when it is loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// The operator opted this tool into the reuse mode (`tool add --reuse`; see [`super::reuse`]): one caller's
    /// calls may share one kept instance. Only ever true for a tool whose `describe()` said `side-effect: none`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reuse: bool,
}

impl Installed {
    /// Whether one caller's calls may share a kept instance: opted in, and (checked again here, so that a
    /// manifest edited by hand cannot turn it on for another class) a tool without side effects.
    pub fn reusable(&self) -> bool {
        self.reuse && self.spec.side_effect == "none"
    }
}

/// Refuses the reuse mode for a tool that declares side effects: only a tool whose calls change nothing outside
/// its own memory can keep that memory from one call to the next.
pub fn check_reusable(name: &str, spec: &Spec) -> Result<(), RegistryError> {
    if spec.side_effect == "none" {
        return Ok(());
    }
    Err(RegistryError::NotReusable(format!(
        "tool {name} cannot be kept for reuse (--reuse): its describe() declares side-effect `{}`, and only a tool \
         that declares `none` may keep its memory between calls",
        spec.side_effect
    )))
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("no tool named `{0}` is installed (see `toka-host tool list`)")]
    Unknown(String),
    #[error("{0}")]
    Invalid(String),
    /// The reuse mode asked for a tool that declares side effects.
    #[error("{0}")]
    NotReusable(String),
    #[error("tool registry {path}: {reason}")]
    Io { path: String, reason: String },
}

#[derive(Debug, Clone)]
pub struct Registry {
    dir: PathBuf,
    manifests: Arc<FileCache<Installed>>,
}

/// Most manifests one registry keeps parsed.
const CACHED_MANIFESTS: usize = 4096;

fn io(path: &Path) -> impl Fn(std::io::Error) -> RegistryError + '_ {
    move |e| RegistryError::Io { path: path.display().to_string(), reason: e.to_string() }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
    use std::io::Write;
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

impl Registry {
    /// The registry of a toka home.
    pub fn open(home: &Path) -> Registry {
        Registry { dir: home.join("tools"), manifests: Arc::new(FileCache::new(CACHED_MANIFESTS)) }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The toka home this registry belongs to (its key file is beside the registry).
    pub fn home(&self) -> &Path {
        self.dir.parent().unwrap_or(&self.dir)
    }

    pub fn component_path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.wasm"))
    }

    fn manifest_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Installs `bytes` (already checked to be a tool whose `describe()` gave `spec`) under `name`, replacing a tool
    /// of that name.
    pub fn add(&self, name: &str, bytes: &[u8], spec: Spec) -> Result<Installed, RegistryError> {
        self.write(name, bytes, spec, None, false)
    }

    /// [`Registry::add`] in the reuse mode (see [`super::reuse`]); refused unless `spec` declares `side-effect:
    /// none`.
    pub fn add_reusable(&self, name: &str, bytes: &[u8], spec: Spec) -> Result<Installed, RegistryError> {
        check_reusable(name, &spec)?;
        self.write(name, bytes, spec, None, true)
    }

    /// [`Registry::add`] for a tool that comes from the installed package `plugin` (`KEY_ID/NAME`).
    pub fn add_from(
        &self,
        name: &str,
        bytes: &[u8],
        spec: Spec,
        plugin: Option<String>,
    ) -> Result<Installed, RegistryError> {
        self.write(name, bytes, spec, plugin, false)
    }

    fn write(
        &self,
        name: &str,
        bytes: &[u8],
        spec: Spec,
        plugin: Option<String>,
        reuse: bool,
    ) -> Result<Installed, RegistryError> {
        use sha2::{Digest, Sha256};
        check_name(name).map_err(RegistryError::Invalid)?;
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let sha256 = hex::encode(Sha256::digest(bytes));
        let component = self.component_path(&sha256);
        if !component.exists() {
            write_atomically(&component, bytes)?;
        }
        let installed = Installed {
            name: name.to_string(),
            sha256,
            size: bytes.len() as u64,
            added_ms: crate::events::now_ms(),
            spec,
            plugin,
            reuse,
        };
        let manifest = serde_json::to_vec_pretty(&installed).expect("manifests serialize");
        write_atomically(&self.manifest_path(name), &manifest)?;
        Ok(installed)
    }

    pub fn get(&self, name: &str) -> Result<Installed, RegistryError> {
        self.installed(name).map(|i| (*i).clone())
    }

    /// [`Registry::get`] without a copy: the manifest as this registry last parsed it, if the file is unchanged.
    pub fn installed(&self, name: &str) -> Result<Arc<Installed>, RegistryError> {
        check_name(name).map_err(|_| RegistryError::Unknown(name.to_string()))?;
        let path = self.manifest_path(name);
        let parse = |bytes: &[u8]| {
            serde_json::from_slice(bytes).map_err(|e| RegistryError::Io {
                path: path.display().to_string(),
                reason: format!("corrupt manifest: {e}"),
            })
        };
        match self.manifests.get(&path, parse) {
            Ok(Some(installed)) => Ok(installed),
            Ok(None) => Err(RegistryError::Unknown(name.into())),
            Err(filecache::Error::Parse(e)) => Err(e),
            Err(filecache::Error::Io(e)) => Err(io(&path)(e)),
        }
    }

    /// How many times a manifest was read from disk rather than served from the cache (for tests and benches).
    pub fn manifest_reads(&self) -> u64 {
        self.manifests.reads()
    }

    /// Every installed tool, by name.
    pub fn list(&self) -> Result<Vec<Installed>, RegistryError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&self.dir)(e)),
        };
        let mut tools = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io(&self.dir))?;
            let file = entry.file_name().to_string_lossy().into_owned();
            if let Some(name) = file.strip_suffix(".json")
                && check_name(name).is_ok()
            {
                tools.push(self.get(name)?);
            }
        }
        tools.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(tools)
    }

    /// Removes a tool; its component goes too unless another name still uses it.
    pub fn remove(&self, name: &str) -> Result<Installed, RegistryError> {
        let installed = self.get(name)?;
        let manifest = self.manifest_path(name);
        std::fs::remove_file(&manifest).map_err(io(&manifest))?;
        if !self.list()?.iter().any(|t| t.sha256 == installed.sha256) {
            let component = self.component_path(&installed.sha256);
            std::fs::remove_file(&component).map_err(io(&component))?;
        }
        Ok(installed)
    }
}
