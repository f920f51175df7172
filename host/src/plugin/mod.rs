//! Plugins: agents and tools distributed as signed packages (a component plus a manifest signed by its publisher's
//! Ed25519 key), installed by digest under the home after their signature, digest, version and grants are checked,
//! then run by name.
//!
//! The path of a package: [`manifest`] (what a publisher states) -> [`package`] (the file: manifest, signature,
//! component) -> [`publisher`] (signing) -> [`trust`] (whose signatures this home accepts, and which grants its policy
//! forbids) -> [`store`] (installed packages) ; [`index`] (a registry's signed index), [`client`] (downloads),
//! [`server`] (`registry serve`), [`oci`] (OCI distribution registries).
//!
//! What this module must never do: install or run anything whose signature, digest or publisher it has not checked,
//! trust a name, a size or a field a package or a registry states without bounding it, or let a refusal pass as a
//! different one (each refusal has its own exit code, [`PluginError::exit_code`]).

pub mod client;
pub mod index;
pub mod install;
pub mod manifest;
pub mod oci;
pub mod package;
pub mod publisher;
pub mod server;
pub mod store;
pub mod trust;

pub use manifest::{Kind, Manifest};
pub use package::Package;

/// Why a plugin operation was refused. Each tamper case has its own variant and exit code, so that a script (and a
/// test) can tell a tampered component from a tampered manifest, a stale index from an unsigned one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    #[error("malformed package: {0}")]
    Malformed(String),
    #[error("tampered component: its sha256 is {actual}, the signed manifest names {expected}")]
    ComponentDigest { expected: String, actual: String },
    #[error("bad signature: {0}")]
    Signature(String),
    #[error("unknown publisher: {0}")]
    UnknownPublisher(String),
    #[error("wrong publisher: {0}")]
    WrongPublisher(String),
    #[error("revoked publisher key: {0}")]
    RevokedPublisher(String),
    #[error("downgrade refused: {0}")]
    Downgrade(String),
    #[error("yanked: {0}")]
    Yanked(String),
    #[error("stale index: {0}")]
    StaleIndex(String),
    #[error("unsigned index: {0}")]
    UnsignedIndex(String),
    #[error("index rollback: {0}")]
    IndexRollback(String),
    #[error("grant forbidden by policy: {0}")]
    PolicyForbids(String),
    #[error("package digest mismatch: {0}")]
    PackageDigest(String),
    #[error("truncated download: {0}")]
    Truncated(String),
    #[error("not confirmed: {0}")]
    NotConfirmed(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("registry: {0}")]
    Remote(String),
    #[error("{0}")]
    Host(String),
}

impl PluginError {
    /// The process exit code (see the README's table). 86..=100 and 102 are the plugin commands' own (101 is
    /// what a Rust panic exits with, so no refusal may use it).
    pub fn exit_code(&self) -> i32 {
        match self {
            PluginError::Malformed(_) => 86,
            PluginError::ComponentDigest { .. } => 87,
            PluginError::Signature(_) => 88,
            PluginError::UnknownPublisher(_) => 89,
            PluginError::WrongPublisher(_) => 90,
            PluginError::RevokedPublisher(_) => 91,
            PluginError::Downgrade(_) => 92,
            PluginError::Yanked(_) => 93,
            PluginError::StaleIndex(_) => 94,
            PluginError::UnsignedIndex(_) => 95,
            PluginError::IndexRollback(_) => 96,
            PluginError::PolicyForbids(_) => 97,
            PluginError::PackageDigest(_) => 98,
            PluginError::Truncated(_) => 99,
            PluginError::NotConfirmed(_) => 100,
            PluginError::Remote(_) => 102,
            PluginError::NotFound(_) => crate::error::Outcome::FileNotFound.exit_code(),
            PluginError::Invalid(_) => crate::error::Outcome::InvalidInput.exit_code(),
            PluginError::Host(_) => crate::error::Outcome::HostError.exit_code(),
        }
    }

    pub(crate) fn host(e: impl std::fmt::Display) -> PluginError {
        PluginError::Host(crate::error::one_line(&e.to_string()))
    }
}

impl From<crate::error::RunError> for PluginError {
    fn from(e: crate::error::RunError) -> Self {
        use crate::error::Outcome;
        let message = crate::error::one_line(&e.to_string());
        match e.outcome() {
            Outcome::FileNotFound => PluginError::NotFound(message),
            Outcome::HostError => PluginError::Host(message),
            _ => PluginError::Invalid(message),
        }
    }
}

/// The sha256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// Whether `text` is a sha256 in lowercase hex.
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The installed agent package `name`, checked as a run of it is (its digest on disk, its signature against the
/// home's trust now); `None` when no package of that name is installed. An installed tool is refused: tools are
/// called, not run.
pub fn installed_agent(home: &std::path::Path, name: &str) -> Result<Option<crate::runtime::Source>, PluginError> {
    let store = store::Store::open(home);
    let Some(record) = store.find(name)? else {
        return Ok(None);
    };
    if record.kind != Kind::Agent {
        return Err(PluginError::Invalid(format!(
            "{} is an installed tool: call it with `toka-host tool call {}` or let an agent --allow-tool it",
            record.name, record.name
        )));
    }
    let trust = trust::TrustStore::load(home)?;
    let (record, bytes) = store.load(&record.name, &trust)?;
    Ok(Some(crate::runtime::Source::Plugin {
        identity: record.identity(),
        name: record.name,
        bytes: std::sync::Arc::new(bytes),
    }))
}

/// Records a change to what this home will run (see [`crate::kernel::Op::ChangeHome`]) in `log`, after the change:
/// an error says the change was made but is not in the log.
pub fn record_change(
    log: &crate::events::EventLog,
    change: &str,
    subject: &str,
    detail: serde_json::Value,
) -> Result<(), PluginError> {
    let op = crate::kernel::Op::ChangeHome { change: change.into(), subject: subject.into(), detail };
    log.submit(crate::run::operation(op))
        .map(drop)
        .map_err(|e| PluginError::Host(format!("{change} {subject} was done but could not be recorded: {e}")))
}

/// [`record_change`] in `home`'s log, opened for it (commands that need nothing else of the host).
pub fn record_change_in(
    home: &crate::home::Home,
    change: &str,
    subject: &str,
    detail: serde_json::Value,
) -> Result<(), PluginError> {
    let db = home.open_db().map_err(PluginError::host)?;
    let signer = crate::events::Signer::for_home(home);
    let log = crate::events::EventLog::open(db, crate::events::GroupCommit::default(), Some(signer))
        .map_err(PluginError::host)?;
    record_change(&log, change, subject, detail)
}

/// A plugin command's end: 0, or its refusal said on one line and its own exit code.
pub fn exit_code_of(result: Result<(), PluginError>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("toka-host: {}", crate::error::one_line(&e.to_string()));
            e.exit_code()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_and_do_not_collide_with_run_outcomes() {
        let all = [
            PluginError::Malformed(String::new()),
            PluginError::ComponentDigest { expected: String::new(), actual: String::new() },
            PluginError::Signature(String::new()),
            PluginError::UnknownPublisher(String::new()),
            PluginError::WrongPublisher(String::new()),
            PluginError::RevokedPublisher(String::new()),
            PluginError::Downgrade(String::new()),
            PluginError::Yanked(String::new()),
            PluginError::StaleIndex(String::new()),
            PluginError::UnsignedIndex(String::new()),
            PluginError::IndexRollback(String::new()),
            PluginError::PolicyForbids(String::new()),
            PluginError::PackageDigest(String::new()),
            PluginError::Truncated(String::new()),
            PluginError::NotConfirmed(String::new()),
            PluginError::Remote(String::new()),
        ];
        let codes: std::collections::HashSet<i32> = all.iter().map(PluginError::exit_code).collect();
        assert_eq!(codes.len(), all.len());
        let run_codes: std::collections::HashSet<i32> =
            crate::error::Outcome::ALL.iter().map(|o| o.exit_code()).chain([80]).collect();
        assert!(codes.is_disjoint(&run_codes));
        // A panicking Rust process exits with 101: a refusal must never be mistaken for a crash, nor one for it.
        assert!(!codes.contains(&101), "101 is a panic's exit code");
    }
}
