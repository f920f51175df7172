//! Installing a package, whatever it comes from (a file, a URL, a registry by name and semver requirement, an OCI
//! reference): fetch, verify against the home's trust, check the install policy, check that the component is the
//! kind the manifest says (and, for a tool, that it declares no grant the manifest hides), refuse a downgrade or a
//! change of publisher, show the grants and ask, then commit by digest.
//!
//! The order is the security argument: nothing is written under the home (beyond a content-addressed blob that is
//! taken back on failure) before every check passed, and nothing is run but a tool's `describe()` in a sandbox
//! with no rights, after the signature and the digest were checked.

use super::index::{Envelope, Index, Registries};
use super::manifest::Kind;
use super::package::Package;
use super::store::{Record, Store};
use super::trust::TrustStore;
use super::{PluginError, client::Http};
use std::path::PathBuf;
use std::time::Duration;

/// Where a package comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Url(String),
    Oci(super::oci::Reference),
    /// A name in a registry, with an optional semver requirement (`echo`, `echo@^1.2`, `echo@=1.0.0`).
    Registry {
        name: String,
        req: Option<String>,
    },
}

impl Source {
    /// `oci://...`, `http(s)://...`, a path (has a `/` or ends in `.tokapkg`, or is an existing file), else
    /// `NAME[@REQ]`.
    pub fn parse(text: &str) -> Result<Source, PluginError> {
        if text.starts_with("oci://") {
            return Ok(Source::Oci(super::oci::Reference::parse(text)?));
        }
        if text.starts_with("http://") || text.starts_with("https://") {
            return Ok(Source::Url(text.to_string()));
        }
        if text.contains('/') || text.ends_with(".tokapkg") || std::path::Path::new(text).is_file() {
            return Ok(Source::File(PathBuf::from(text)));
        }
        let (name, req) = match text.split_once('@') {
            Some((n, r)) => (n, Some(r.to_string())),
            None => (text, None),
        };
        super::manifest::check_name("package name", name).map_err(|e| PluginError::Invalid(e.to_string()))?;
        if let Some(r) = &req {
            semver::VersionReq::parse(r)
                .map_err(|e| PluginError::Invalid(format!("`{r}` is not a semver requirement: {e}")))?;
        }
        Ok(Source::Registry { name: name.to_string(), req })
    }
}

/// How to reach registries.
#[derive(Debug, Clone)]
pub struct Fetch {
    /// The registry to use (`--registry`), when several are configured.
    pub registry: Option<String>,
    /// The oldest signed index accepted.
    pub max_index_age: Duration,
}

/// Fetches and verifies a registry's index (signature with the key this home trusts for it, then freshness against
/// what this home saw before), and remembers it.
pub fn fetch_index(home: &std::path::Path, http: &Http, fetch: &Fetch) -> Result<(String, Index), PluginError> {
    let registries = Registries::load(home)?;
    let trusted = registries.pick(fetch.registry.as_deref())?.clone();
    let url = format!("{}/v1/index", trusted.url.trim_end_matches('/'));
    let bytes = http.get(&url, super::index::MAX_INDEX)?;
    let index = Envelope::open(&bytes, &trusted.key()?)?;
    let max_age = u64::try_from(fetch.max_index_age.as_millis()).unwrap_or(u64::MAX);
    let now = crate::events::now_ms();
    Registries::update(home, |r| {
        let entry = r
            .registries
            .iter_mut()
            .find(|t| t.name == trusted.name)
            .ok_or_else(|| PluginError::NotFound(format!("registry {} was removed meanwhile", trusted.name)))?;
        entry.accept(&index, now, max_age)
    })?;
    Ok((trusted.url, index))
}

/// Gets the package `source` names, with a label for messages and records.
pub fn fetch(
    home: &std::path::Path,
    http: &Http,
    source: &Source,
    fetch: &Fetch,
) -> Result<(Package, String), PluginError> {
    match source {
        Source::File(path) => Ok((Package::read(path)?, path.display().to_string())),
        Source::Url(url) => {
            let bytes = http.get(url, super::package::MAX_PACKAGE as usize)?;
            Ok((Package::parse(&bytes)?, url.clone()))
        }
        Source::Oci(reference) => Ok((super::oci::pull(http, reference)?, reference.to_string())),
        Source::Registry { name, req } => {
            let (url, index) = fetch_index(home, http, fetch)?;
            let req = req.as_deref().map(semver::VersionReq::parse).transpose().map_err(PluginError::host)?;
            let entry = index.resolve(name, req.as_ref())?.clone();
            let download = format!("{}/v1/packages/{}/{}", url.trim_end_matches('/'), entry.name, entry.version);
            let label = format!("{}@{}", entry.name, entry.version);
            let bytes = http.download(&download, entry.package_size, &entry.package_sha256, &label)?;
            let package = Package::parse(&bytes)?;
            let m = &package.manifest;
            if m.name != entry.name
                || m.version != entry.version
                || m.component.sha256 != entry.sha256
                || m.publisher.key_id != entry.key_id
            {
                return Err(PluginError::PackageDigest(format!(
                    "{label}: the package's manifest does not match the signed index's entry"
                )));
            }
            Ok((package, format!("registry:{}/{label}", index.registry)))
        }
    }
}

/// What the installer is asked to confirm.
#[derive(Debug, Clone)]
pub struct Summary {
    pub package: String,
    pub kind: Kind,
    pub publisher: String,
    pub key_id: String,
    pub source: String,
    pub grants: Vec<String>,
    pub limits: super::manifest::Limits,
    pub previous: Option<String>,
}

/// The outcome of an install.
#[derive(Debug, Clone)]
pub enum Installed {
    New(Record),
    Unchanged(Record),
}

/// Verifies and installs `package`; `confirm` sees the summary and says whether to go on.
pub fn install(
    host: &crate::runtime::Host,
    package: &Package,
    source: &str,
    allow_downgrade: bool,
    confirm: &mut dyn FnMut(&Summary) -> Result<bool, PluginError>,
) -> Result<Installed, PluginError> {
    let home = &host.home().dir;
    let trust = TrustStore::load(home)?;
    let key = trust.verify(package)?;
    trust.policy.check(package)?;
    let store = Store::open(home);
    let plan = store.plan(package, allow_downgrade)?;
    let m = &package.manifest;
    // A tool of that name installed another way (`tool add`, or a package of another publisher) is never replaced
    // silently: every token that grants `tool:NAME` would run the newcomer's code.
    let identity = super::store::identity(&m.publisher.key_id, &m.name);
    let registry = crate::tools::registry::Registry::open(home);
    if let Ok(tool) = registry.get(&m.name)
        && tool.plugin.as_deref() != Some(identity.as_str())
    {
        let from = tool.plugin.map_or_else(|| "by `toka-host tool add`".to_string(), |p| format!("from package {p}"));
        return Err(PluginError::WrongPublisher(format!(
            "a tool named {} is already installed here ({from}); remove it first (toka-host tool remove {})",
            m.name, m.name
        )));
    }
    if plan.unchanged {
        return Ok(Installed::Unchanged(plan.previous.expect("an unchanged plan has a previous record")));
    }
    // The component must be what the manifest says it is; a tool must not declare more than the manifest shows.
    let staged = store.stage_blob(package)?;
    let checked = check_kind(host, package, &staged);
    let spec = match checked {
        Ok(spec) => spec,
        Err(e) => {
            store.drop_unused_blob(&m.component.sha256)?;
            return Err(e);
        }
    };
    let summary = Summary {
        package: package.id(),
        kind: m.kind,
        publisher: key.name.clone(),
        key_id: key.key_id.clone(),
        source: source.to_string(),
        grants: m.grants.clone(),
        limits: m.limits.clone(),
        previous: plan.previous.as_ref().map(|p| p.version.clone()),
    };
    if !confirm(&summary)? {
        store.drop_unused_blob(&m.component.sha256)?;
        return Err(PluginError::NotConfirmed(format!("{} was not installed", package.id())));
    }
    let record = store.commit(package, source)?;
    if let Some(spec) = spec {
        registry.add_from(&m.name, &package.component, spec, Some(record.identity())).map_err(PluginError::host)?;
    } else if let Some(previous) = &plan.previous
        && previous.kind == Kind::Tool
    {
        // Only the tool this package installed (checked above: a registry entry of that name is this package's).
        drop(registry.remove(&m.name));
    }
    let detail = serde_json::json!({
        "kind": record.kind,
        "publisher": record.publisher,
        "key_id": record.key_id,
        "sha256": record.sha256,
        "source": record.source,
        "previous": plan.previous.as_ref().map(|p| p.version.clone()),
    });
    let subject = format!("{}@{}", record.name, record.version);
    super::record_change(host.log(), crate::kernel::kind::PLUGIN_INSTALLED, &subject, detail)?;
    if let Some(previous) = plan.previous.filter(|p| p.sha256 != record.sha256) {
        store.drop_unused_blob(&previous.sha256)?;
    }
    Ok(Installed::New(record))
}

/// For a tool, its `describe()` (in a sandbox with no rights), checked against the manifest; for an agent, that it
/// is an agent or a command.
fn check_kind(
    host: &crate::runtime::Host,
    package: &Package,
    staged: &std::path::Path,
) -> Result<Option<crate::tools::Spec>, PluginError> {
    let m = &package.manifest;
    match m.kind {
        Kind::Tool => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(PluginError::host)?;
            let (_, spec) = rt.block_on(host.tools().describe_file(staged)).map_err(|e| {
                PluginError::Malformed(format!("{} is not the tool its manifest says: {e}", package.id()))
            })?;
            let hidden: Vec<&String> = spec.grants.iter().filter(|g| !m.grants.contains(g)).collect();
            if !hidden.is_empty() {
                return Err(PluginError::Malformed(format!(
                    "{}: the tool declares grants its manifest does not show: {}",
                    package.id(),
                    hidden.iter().map(|g| g.as_str()).collect::<Vec<_>>().join(", ")
                )));
            }
            Ok(Some(spec))
        }
        Kind::Agent => {
            let program = host.runner().load_bytes(&m.name, &package.component).map_err(|e| {
                PluginError::Malformed(format!("{} is not the agent its manifest says: {e}", package.id()))
            })?;
            match program.world() {
                crate::component::World::Agent | crate::component::World::Command => Ok(None),
                w => Err(PluginError::Malformed(format!("{}: an agent package holds a {w:?} component", package.id()))),
            }
        }
    }
}

/// Removes an installed package (and the tool it registered).
pub fn remove(home: &std::path::Path, name: &str) -> Result<Record, PluginError> {
    let record = Store::open(home).remove(name)?;
    if record.kind == Kind::Tool {
        let registry = crate::tools::registry::Registry::open(home);
        if registry.get(name).is_ok_and(|t| t.plugin.as_deref() == Some(record.identity().as_str())) {
            registry.remove(name).map_err(PluginError::host)?;
        }
    }
    Ok(record)
}
