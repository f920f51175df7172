//! `toka-host plugin`: make, sign, check, install, list, remove and upgrade plugin packages; search, publish and
//! yank in a registry; push and pull through an OCI registry. See [`crate::plugin`].

use crate::home::Home;
use crate::plugin::client::Http;
use crate::plugin::install::{self, Fetch, Installed, Source, Summary};
use crate::plugin::manifest::{self, ComponentRef, Kind, Limits, Manifest, PublisherRef};
use crate::plugin::package::Package;
use crate::plugin::publisher::PublisherKey;
use crate::plugin::store::Store;
use crate::plugin::trust::TrustStore;
use crate::plugin::{PluginError, oci};
use crate::runtime::{Host, HostOptions};
use clap::{Args, Subcommand};
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `println!` that ignores a closed stdout.
macro_rules! out {
    ($($arg:tt)*) => {{
        let mut stdout = std::io::stdout().lock();
        drop(writeln!(stdout, $($arg)*));
    }};
}

#[derive(Debug, Args)]
pub struct PluginCommand {
    #[command(subcommand)]
    pub action: PluginAction,
}

// (Not a doc comment: flattened into subcommands, whose `--help` text is their variant's.)
// How to reach a registry.
#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    /// The registry to use (`toka-host registry list`); needed when several are configured.
    #[arg(long, value_name = "NAME")]
    pub registry: Option<String>,
    /// Refuse a registry index signed longer ago than this (a stale mirror).
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = crate::units::parse_duration)]
    pub max_index_age: Duration,
}

impl RegistryArgs {
    fn fetch(&self) -> Fetch {
        Fetch { registry: self.registry.clone(), max_index_age: self.max_index_age }
    }
}

#[derive(Debug, Subcommand)]
pub enum PluginAction {
    /// Make a package of a component (what `toka-host build` or any toolchain produced). A tool's name, version,
    /// description and grants default to what its describe() says.
    Pack {
        /// The component file, or a project directory made by `toka-host new` (after `toka-host build`): its
        /// NAME.wasm, packed under the project's name and kind.
        component: PathBuf,
        /// The package's name [default: a tool's describe() name, or the project's name].
        #[arg(long)]
        name: Option<String>,
        /// Its semver version [default: a tool's describe() version; required for an agent].
        #[arg(long)]
        version: Option<String>,
        /// agent or tool [default: from the component's world].
        #[arg(long)]
        kind: Option<Kind>,
        /// One line on what it does [default: a tool's describe() description].
        #[arg(long)]
        description: Option<String>,
        /// An SPDX license expression.
        #[arg(long, default_value = "UNLICENSED")]
        license: String,
        /// A keyword for `plugin search` (repeatable).
        #[arg(long = "keyword")]
        keywords: Vec<String>,
        /// A grant the package asks for (repeatable); a tool's declared grants are always included.
        #[arg(long = "grant")]
        grants: Vec<String>,
        /// The fuel a run of it needs.
        #[arg(long)]
        fuel: Option<u64>,
        /// The memory it needs (e.g. 64MiB).
        #[arg(long, value_parser = crate::units::parse_size)]
        memory: Option<u64>,
        /// The time a run of it needs (e.g. 30s).
        #[arg(long, value_parser = crate::units::parse_duration)]
        timeout: Option<Duration>,
        /// Sign it with this home's publisher key at once.
        #[arg(long)]
        sign: bool,
        /// Output file [default: NAME-VERSION.tokapkg].
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Sign a package with this home's publisher key (in place unless --out).
    Sign {
        /// The package file (.tokapkg).
        package: PathBuf,
        /// Write the signed package here instead of replacing PACKAGE.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Check a package as install would: structure, signature by a trusted publisher, digest, install policy.
    Verify {
        /// The package file (.tokapkg).
        package: PathBuf,
    },
    /// Show a package's manifest and signature (without trusting it).
    Inspect {
        /// The package file (.tokapkg).
        package: PathBuf,
        /// Print it as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Install a package: FILE, URL, NAME[@SEMVER-REQ] from a registry, or oci://HOST/REPO[:TAG].
    Install {
        /// FILE, http(s)://URL, NAME[@SEMVER-REQ] (from a registry), or oci://HOST[:PORT]/REPO[:TAG].
        source: String,
        /// Install without asking (the grants asked for are still printed).
        #[arg(long)]
        yes: bool,
        /// Allow installing an older version than the installed one (or other bytes under the same version).
        #[arg(long)]
        allow_downgrade: bool,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// The installed packages.
    List {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// An installed package's manifest, publisher, digest and source.
    Info {
        /// The installed package's name.
        name: String,
        /// Print it as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Uninstall a package.
    Remove {
        /// The installed package's name.
        name: String,
    },
    /// Install the newest version from the registry of every installed package that came from one (or of NAME).
    Upgrade {
        /// Only this installed package [default: every one installed from a registry].
        name: Option<String>,
        /// Install without asking (the grants asked for are still printed).
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Search a registry's signed index by name, description and keywords.
    Search {
        /// Words to look for in names, descriptions and keywords [default: everything].
        #[arg(default_value = "")]
        query: String,
        /// Only agents, or only tools.
        #[arg(long)]
        kind: Option<Kind>,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Publish a signed package to a registry (with a token granting publish:NAME).
    Publish {
        /// The signed package file (.tokapkg).
        package: PathBuf,
        /// The registry's publish token (a file, `-` for stdin, or the base64 itself).
        #[arg(long, value_name = "TOKEN")]
        token: String,
        /// The registry to publish to (`toka-host registry list`) [default: the only one named].
        #[arg(long, value_name = "NAME")]
        registry: Option<String>,
    },
    /// Yank a published version: installers refuse it from then on.
    Yank {
        /// NAME@VERSION
        package: String,
        /// The registry's publish token (a file, `-` for stdin, or the base64 itself).
        #[arg(long, value_name = "TOKEN")]
        token: String,
        /// The registry to yank from (`toka-host registry list`) [default: the only one named].
        #[arg(long, value_name = "NAME")]
        registry: Option<String>,
    },
    /// Push a signed package to an OCI registry (oci://HOST[:PORT]/REPOSITORY[:TAG]).
    Push {
        /// The signed package file (.tokapkg).
        package: PathBuf,
        /// oci://HOST[:PORT]/REPOSITORY[:TAG].
        target: String,
    },
    /// Pull a package from an OCI registry into a package file (checked like any package at install).
    Pull {
        /// oci://HOST[:PORT]/REPOSITORY[:TAG].
        source: String,
        /// The package file to write [default: NAME-VERSION.tokapkg].
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
}

impl PluginCommand {
    pub fn execute(self, home: &Home) -> i32 {
        crate::plugin::exit_code_of(self.run(home))
    }

    fn run(self, home: &Home) -> Result<(), PluginError> {
        let dir = &home.dir;
        match self.action {
            PluginAction::Pack {
                component,
                name,
                version,
                kind,
                description,
                license,
                keywords,
                grants,
                fuel,
                memory,
                timeout,
                sign,
                out,
            } => {
                let key = PublisherKey::load(dir)?;
                let (component, name) = pack_source(&component, name)?;
                let host = Host::open(home.clone(), HostOptions::default())?;
                let bytes = crate::component::read(&component)?;
                let program = host.runner().load(&component).map(|p| p.world());
                let world = match program {
                    Ok(w) => w,
                    // A tool is not runnable as a program: the runner refuses its world, which says what it is.
                    Err(crate::error::RunError::WrongWorld { .. }) => crate::component::World::Tool,
                    Err(e) => return Err(e.into()),
                };
                let detected = if world == crate::component::World::Tool { Kind::Tool } else { Kind::Agent };
                if let Some(k) = kind
                    && k != detected
                {
                    return Err(PluginError::Invalid(format!(
                        "{} is a{} {detected} component, not a{} {k}",
                        component.display(),
                        if detected == Kind::Agent { "n" } else { "" },
                        if k == Kind::Agent { "n" } else { "" }
                    )));
                }
                let spec = if detected == Kind::Tool {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(PluginError::host)?;
                    Some(rt.block_on(host.tools().describe_file(&component))?.1)
                } else {
                    None
                };
                let name = name
                    .or_else(|| spec.as_ref().map(|s| s.name.clone()))
                    .ok_or_else(|| PluginError::Invalid("give --name for an agent package".into()))?;
                let version = version
                    .or_else(|| spec.as_ref().map(|s| s.version.clone()))
                    .ok_or_else(|| PluginError::Invalid("give --version for an agent package".into()))?;
                let mut all_grants = spec.as_ref().map(|s| s.grants.clone()).unwrap_or_default();
                for g in grants {
                    if !all_grants.contains(&g) {
                        all_grants.push(g);
                    }
                }
                let manifest = Manifest {
                    format: manifest::FORMAT,
                    name,
                    version,
                    kind: detected,
                    description: description
                        .or_else(|| spec.as_ref().map(|s| s.description.clone()))
                        .unwrap_or_default(),
                    license,
                    keywords,
                    grants: all_grants,
                    limits: Limits {
                        fuel,
                        memory,
                        timeout_ms: timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
                    },
                    component: ComponentRef { sha256: crate::plugin::sha256_hex(&bytes), size: bytes.len() as u64 },
                    publisher: PublisherRef { name: key.name.clone(), key_id: key.key_id() },
                };
                let mut package = Package::new(manifest, bytes)?;
                if sign {
                    package.sign(&key)?;
                }
                let out = out.unwrap_or_else(|| {
                    PathBuf::from(format!("{}-{}.tokapkg", package.manifest.name, package.manifest.version))
                });
                write_file(&out, &package.to_bytes())?;
                out!(
                    "packed {} ({}, {}) into {}",
                    package.id(),
                    package.manifest.kind,
                    if sign { "signed" } else { "unsigned: toka-host plugin sign" },
                    out.display()
                );
                Ok(())
            }
            PluginAction::Sign { package, out } => {
                let key = PublisherKey::load(dir)?;
                let mut p = Package::read(&package)?;
                p.check_component()?;
                p.sign(&key)?;
                let out = out.unwrap_or(package);
                write_file(&out, &p.to_bytes())?;
                out!("signed {} with key {} ({}) into {}", p.id(), key.key_id(), key.name, out.display());
                Ok(())
            }
            PluginAction::Verify { package } => {
                let p = Package::read(&package)?;
                let trust = TrustStore::load(dir)?;
                let key = trust.verify(&p)?;
                trust.policy.check(&p)?;
                out!(
                    "ok: {} ({}) signed by {} (key {}), component sha256 {}",
                    p.id(),
                    p.manifest.kind,
                    key.name,
                    key.key_id,
                    p.manifest.component.sha256
                );
                Ok(())
            }
            PluginAction::Inspect { package, json } => {
                let p = Package::read(&package)?;
                let trust = TrustStore::load(dir)?;
                let verdict = match trust.verify(&p) {
                    Ok(k) => format!("ok: signed by trusted publisher {} (key {})", k.name, k.key_id),
                    Err(e) => e.to_string(),
                };
                let manifest: serde_json::Value =
                    serde_json::from_slice(&p.manifest_bytes).map_err(PluginError::host)?;
                if json {
                    out!(
                        "{:#}",
                        serde_json::json!({"manifest": manifest, "signature": p.signature, "verifies_here": verdict})
                    );
                } else {
                    let m = &p.manifest;
                    out!("package:     {} ({})", p.id(), m.kind);
                    out!("description: {}", m.description);
                    out!("license:     {}", m.license);
                    out!("publisher:   {} (key {})", m.publisher.name, m.publisher.key_id);
                    out!("component:   sha256 {} ({} bytes)", m.component.sha256, m.component.size);
                    out!("asks for:    {}", grants_text(&m.grants));
                    out!("limits:      {}", limits_text(&m.limits));
                    out!(
                        "signature:   {}",
                        p.signature.as_ref().map_or("none".to_string(), |s| format!("ed25519 key {}", s.key_id))
                    );
                    out!("here:        {verdict}");
                }
                Ok(())
            }
            PluginAction::Install { source, yes, allow_downgrade, registry } => {
                let source = Source::parse(&source)?;
                let http = Http::new()?;
                let (package, label) = install::fetch(dir, &http, &source, &registry.fetch())?;
                let host = Host::open(home.clone(), HostOptions::default())?;
                report(install::install(&host, &package, &label, allow_downgrade, &mut |s| confirm(s, yes))?);
                Ok(())
            }
            PluginAction::List { json } => {
                let records = Store::open(dir).list()?;
                if json {
                    let rows: Vec<serde_json::Value> = records.iter().map(record_json).collect();
                    out!("{}", serde_json::json!(rows));
                } else if records.is_empty() {
                    out!("no plugins installed (toka-host plugin install SOURCE)");
                } else {
                    out!("{:<20} {:<10} {:<6} {:<16} {:<18} SOURCE", "NAME", "VERSION", "KIND", "PUBLISHER", "KEY");
                    for r in records {
                        out!(
                            "{:<20} {:<10} {:<6} {:<16} {:<18} {}",
                            r.name,
                            r.version,
                            r.kind,
                            r.publisher,
                            r.key_id,
                            r.source
                        );
                    }
                }
                Ok(())
            }
            PluginAction::Info { name, json } => {
                let r = Store::open(dir).get(&name)?;
                let m = r.manifest()?;
                if json {
                    out!("{:#}", record_json(&r));
                } else {
                    out!("package:     {}@{} ({})", r.name, r.version, r.kind);
                    out!("description: {}", m.description);
                    out!("license:     {}", m.license);
                    out!("publisher:   {} (key {})", r.publisher, r.key_id);
                    out!("identity:    {} (toka-host token mint --plugin {})", r.identity(), r.name);
                    out!("component:   sha256 {} ({} bytes)", r.sha256, r.size);
                    out!("asks for:    {}", grants_text(&m.grants));
                    out!("limits:      {}", limits_text(&m.limits));
                    out!("source:      {}", r.source);
                }
                Ok(())
            }
            PluginAction::Remove { name } => {
                let r = install::remove(dir, &name)?;
                out!("removed {}@{}", r.name, r.version);
                let detail = serde_json::json!({ "key_id": r.key_id, "sha256": r.sha256 });
                let subject = format!("{}@{}", r.name, r.version);
                crate::plugin::record_change_in(home, crate::kernel::kind::PLUGIN_REMOVED, &subject, detail)
            }
            PluginAction::Upgrade { name, yes, registry } => {
                let store = Store::open(dir);
                let records = match &name {
                    Some(n) => vec![store.get(n)?],
                    None => store.list()?,
                };
                let http = Http::new()?;
                let host = Host::open(home.clone(), HostOptions::default())?;
                let mut upgraded = 0;
                for r in records {
                    if !r.source.starts_with("registry:") {
                        out!("{}: installed from {}, not from a registry: skipped", r.name, r.source);
                        continue;
                    }
                    let source = Source::Registry { name: r.name.clone(), req: None };
                    let (package, label) = install::fetch(dir, &http, &source, &registry.fetch())?;
                    if package.manifest.semver() <= semver::Version::parse(&r.version).map_err(PluginError::host)? {
                        out!("{} {} is the newest", r.name, r.version);
                        continue;
                    }
                    report(install::install(&host, &package, &label, false, &mut |s| confirm(s, yes))?);
                    upgraded += 1;
                }
                out!("{upgraded} upgraded");
                Ok(())
            }
            PluginAction::Search { query, kind, json, registry } => {
                let http = Http::new()?;
                let (_, index) = install::fetch_index(dir, &http, &registry.fetch())?;
                let hits = index.search(&query, kind);
                if json {
                    out!("{}", serde_json::json!(hits));
                } else if hits.is_empty() {
                    out!("no package in {} matches `{query}`", index.registry);
                } else {
                    out!("{:<20} {:<10} {:<6} {:<16} DESCRIPTION", "NAME", "VERSION", "KIND", "PUBLISHER");
                    for e in hits {
                        out!("{:<20} {:<10} {:<6} {:<16} {}", e.name, e.version, e.kind, e.publisher, e.description);
                    }
                }
                Ok(())
            }
            PluginAction::Publish { package, token, registry } => {
                let bytes = crate::plugin::package::read_bounded(&package)?;
                let p = Package::parse(&bytes)?;
                if p.signature.is_none() {
                    return Err(PluginError::Signature(format!("{} is not signed (toka-host plugin sign)", p.id())));
                }
                let url = registry_url(dir, registry.as_deref())?;
                let token = crate::commands::token::read_token(&token).map_err(PluginError::Invalid)?;
                let http = Http::new()?;
                refuse_in_clear(&url)?;
                let endpoint = format!("{url}/v1/packages");
                let response = http
                    .inner()
                    .post(&endpoint)
                    .bearer_auth(token)
                    .header(reqwest::header::CONTENT_TYPE, "application/vnd.toka.package.v1")
                    .body(bytes)
                    .send()
                    .map_err(|e| PluginError::Remote(crate::error::one_line(&format!("{endpoint}: {e}"))))?;
                let status = response.status();
                if !status.is_success() {
                    return Err(PluginError::Remote(crate::plugin::client::error_text(status, response)));
                }
                out!("published {} to {url}", p.id());
                Ok(())
            }
            PluginAction::Yank { package, token, registry } => {
                let (name, version) =
                    package.split_once('@').ok_or_else(|| PluginError::Invalid("give NAME@VERSION".into()))?;
                manifest::check_name("package name", name)?;
                semver::Version::parse(version).map_err(|e| PluginError::Invalid(format!("{version}: {e}")))?;
                let url = registry_url(dir, registry.as_deref())?;
                let token = crate::commands::token::read_token(&token).map_err(PluginError::Invalid)?;
                refuse_in_clear(&url)?;
                let endpoint = format!("{url}/v1/packages/{name}/{version}/yank");
                let response = Http::new()?
                    .inner()
                    .post(&endpoint)
                    .bearer_auth(token)
                    .send()
                    .map_err(|e| PluginError::Remote(crate::error::one_line(&format!("{endpoint}: {e}"))))?;
                let status = response.status();
                if !status.is_success() {
                    return Err(PluginError::Remote(crate::plugin::client::error_text(status, response)));
                }
                out!("yanked {name}@{version}");
                Ok(())
            }
            PluginAction::Push { package, target } => {
                let p = Package::read(&package)?;
                p.check_component()?;
                let target = oci::Reference::parse(&target)?;
                let digest = oci::push(&Http::new()?, &p, &target)?;
                out!("pushed {} to {target} (manifest {digest})", p.id());
                Ok(())
            }
            PluginAction::Pull { source, out } => {
                let reference = oci::Reference::parse(&source)?;
                let p = oci::pull(&Http::new()?, &reference)?;
                let out =
                    out.unwrap_or_else(|| PathBuf::from(format!("{}-{}.tokapkg", p.manifest.name, p.manifest.version)));
                write_file(&out, &p.to_bytes())?;
                out!(
                    "pulled {} from {reference} into {} (not installed: toka-host plugin install)",
                    p.id(),
                    out.display()
                );
                Ok(())
            }
        }
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), PluginError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| PluginError::host(format!("{}: {e}", path.display())))
}

fn registry_url(home: &Path, name: Option<&str>) -> Result<String, PluginError> {
    let registries = crate::plugin::index::Registries::load(home)?;
    Ok(registries.pick(name)?.url.trim_end_matches('/').to_string())
}

fn grants_text(grants: &[String]) -> String {
    if grants.is_empty() { "no grants".into() } else { grants.join(", ") }
}

fn limits_text(l: &Limits) -> String {
    let mut parts = Vec::new();
    if let Some(f) = l.fuel {
        parts.push(format!("fuel {f}"));
    }
    if let Some(m) = l.memory {
        parts.push(format!("memory {m} bytes"));
    }
    if let Some(t) = l.timeout_ms {
        parts.push(format!("timeout {t} ms"));
    }
    if parts.is_empty() { "none stated".into() } else { parts.join(", ") }
}

fn record_json(r: &crate::plugin::store::Record) -> serde_json::Value {
    serde_json::json!({
        "name": r.name,
        "version": r.version,
        "kind": r.kind,
        "publisher": r.publisher,
        "key_id": r.key_id,
        "identity": r.identity(),
        "sha256": r.sha256,
        "size": r.size,
        "source": r.source,
        "installed_ms": r.installed_ms,
        "manifest": serde_json::from_str::<serde_json::Value>(&r.manifest).unwrap_or_default(),
    })
}

fn report(installed: Installed) {
    match installed {
        Installed::New(r) => out!(
            "installed {}@{} ({}) from {}, signed by {} (key {}), sha256 {}",
            r.name,
            r.version,
            r.kind,
            r.source,
            r.publisher,
            r.key_id,
            r.sha256.get(..16).unwrap_or(&r.sha256)
        ),
        Installed::Unchanged(r) => out!("{}@{} is already installed", r.name, r.version),
    }
}

/// Shows what the package asks for, on stderr, then asks on the terminal (or takes `--yes`). Without a terminal and
/// without `--yes`, nothing is installed: consent cannot be assumed.
fn confirm(s: &Summary, yes: bool) -> Result<bool, PluginError> {
    let mut e = std::io::stderr().lock();
    let upgrade = s.previous.as_ref().map(|p| format!(", replacing {p}")).unwrap_or_default();
    drop(writeln!(
        e,
        "toka-host: {} ({}) by {} (key {}) from {}{upgrade}",
        s.package, s.kind, s.publisher, s.key_id, s.source
    ));
    drop(writeln!(e, "toka-host:   asks for: {}", grants_text(&s.grants)));
    drop(writeln!(e, "toka-host:   limits:   {}", limits_text(&s.limits)));
    if yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        return Err(PluginError::NotConfirmed(format!(
            "{} asks for the grants above: confirm on a terminal, or pass --yes",
            s.package
        )));
    }
    drop(write!(e, "Install {}? [y/N] ", s.package));
    drop(e.flush());
    let mut line = String::new();
    std::io::stdin().lock().take_line(&mut line);
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

trait TakeLine {
    fn take_line(&mut self, line: &mut String);
}

impl<R: BufRead> TakeLine for R {
    fn take_line(&mut self, line: &mut String) {
        use std::io::Read;
        drop(self.take(256).read_line(line));
    }
}

/// A publish token is never sent where the network can read it: plain `http://` only to loopback.
fn refuse_in_clear(url: &str) -> Result<(), PluginError> {
    if crate::client::in_clear(url) {
        return Err(PluginError::Invalid(format!(
            "{url}: the token would cross the network in the clear; use https:// (plain http only to loopback)"
        )));
    }
    Ok(())
}

/// What `plugin pack PATH` packs: a component file as given, or for a project directory (`toka-host new`) the
/// component its `toka-host build` made, `DIR/NAME.wasm`, named after the project unless --name says otherwise.
fn pack_source(path: &Path, name: Option<String>) -> Result<(PathBuf, Option<String>), PluginError> {
    if !path.is_dir() {
        return Ok((path.to_path_buf(), name));
    }
    let project = crate::project::Manifest::read(path).map_err(|e| PluginError::Invalid(e.to_string()))?;
    if project.kind == crate::project::Kind::Command {
        return Err(PluginError::Invalid(format!(
            "{}: a command project; packages hold agents and tools",
            path.display()
        )));
    }
    let component = path.join(format!("{}.wasm", project.name));
    if !component.is_file() {
        return Err(PluginError::NotFound(format!(
            "{}: not built yet (run toka-host build in {})",
            component.display(),
            path.display()
        )));
    }
    Ok((component, name.or(Some(project.name))))
}
