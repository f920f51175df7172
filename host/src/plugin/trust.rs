//! Whose packages this home accepts: trusted publisher keys (by key id, with the publisher's name), keys removed
//! from trust (kept as revoked, so that their packages are refused as revoked rather than merely unknown), and the
//! install policy (grants no package may ask for). Stored in `HOME/trust.json` (0600), changed under a lock.
//!
//! [`TrustStore::verify`] is the one check every package passes before it is installed or run: signature present,
//! made by a trusted, unrevoked key of the publisher the manifest names, over the manifest's exact bytes, and a
//! component that matches the manifest's digest. It never accepts a public key because a package carries it.

use super::PluginError;
use super::package::Package;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Most trusted keys and policy rules (the file is read on every install and run by name).
pub const MAX_ENTRIES: usize = 1024;

/// A publisher key this home has trusted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedKey {
    pub name: String,
    pub key_id: String,
    pub public_key: String,
    pub added_ms: u64,
    /// When it was removed from trust: its packages are refused from then on (installed ones too, at run time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<u64>,
}

/// What no package installed here may ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// `KIND` (every grant of that kind: `net`, `fs`, `env`) or a grant prefix (`fs:/home`, `net:*`).
    #[serde(default)]
    pub deny: Vec<String>,
}

impl Policy {
    /// The rule that forbids `grant`, if any. A rule covers what it names and anything that overlaps it: `fs:/home`
    /// forbids `fs:/home/a:ro` and also `fs:/:ro` (which would reach /home); `net:api.example.com` forbids
    /// `net:*:443` (which would reach it).
    pub fn forbids(&self, grant: &str) -> Option<&str> {
        let (kind, value) = grant.split_once(':').unwrap_or((grant, ""));
        self.deny.iter().map(String::as_str).find(|rule| {
            let (rule_kind, rule_value) = rule.split_once(':').unwrap_or((rule, ""));
            if rule_kind != kind {
                return false;
            }
            if rule_value.is_empty() {
                return true;
            }
            match kind {
                "fs" => {
                    let path = value.rsplit_once(':').map_or(value, |(p, _)| p);
                    let rule_path = rule_value
                        .rsplit_once(':')
                        .map_or(rule_value, |(p, m)| if m == "ro" || m == "rw" { p } else { rule_value });
                    match (crate::token::normalize_dir(path), crate::token::normalize_dir(rule_path)) {
                        (Ok(g), Ok(r)) => g.starts_with(&r) || r.starts_with(&g),
                        // Fail closed: a path that does not normalize is forbidden by any fs rule.
                        _ => true,
                    }
                }
                "net" => {
                    let (host, port) = value.rsplit_once(':').unwrap_or((value, "*"));
                    let (rule_host, rule_port) = rule_value.rsplit_once(':').unwrap_or((rule_value, "*"));
                    let host_overlaps = host == "*" || rule_host == "*" || host.eq_ignore_ascii_case(rule_host);
                    let port_overlaps = port == "*" || rule_port == "*" || port == rule_port;
                    host_overlaps && port_overlaps
                }
                // Names with patterns (`llm:gpt-*`, `publish:*`, `tool:*`): a trailing `*` on either side covers every
                // name it starts, so `llm:*` asked for overlaps a rule `llm:gpt-4`, and a rule `llm:gpt-*` forbids
                // `llm:gpt-4o`.
                _ => {
                    let covers = |pattern: &str, name: &str| match pattern.strip_suffix('*') {
                        Some(prefix) => {
                            name.starts_with(prefix)
                                || (name.ends_with('*') && prefix.starts_with(name.trim_end_matches('*')))
                        }
                        None => pattern == name,
                    };
                    covers(value, rule_value) || covers(rule_value, value)
                }
            }
        })
    }

    /// Refuses a package that asks for a forbidden grant.
    pub fn check(&self, package: &Package) -> Result<(), PluginError> {
        for g in &package.manifest.grants {
            if let Some(rule) = self.forbids(g) {
                return Err(PluginError::PolicyForbids(format!(
                    "{} asks for `{g}`, which this home's policy denies (rule `{rule}`; see toka-host trust policy)",
                    package.id()
                )));
            }
        }
        Ok(())
    }
}

/// The trust file of a home.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustStore {
    #[serde(default)]
    pub publishers: Vec<TrustedKey>,
    #[serde(default)]
    pub policy: Policy,
}

pub fn path(home: &Path) -> PathBuf {
    home.join("trust.json")
}

impl TrustStore {
    pub fn load(home: &Path) -> Result<TrustStore, PluginError> {
        let p = path(home);
        let bytes = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(TrustStore::default()),
            Err(e) => return Err(PluginError::host(format!("{}: {e}", p.display()))),
        };
        let store: TrustStore = serde_json::from_slice(&bytes)
            .map_err(|e| PluginError::host(format!("{}: corrupt trust file: {e}", p.display())))?;
        if store.publishers.len() > MAX_ENTRIES || store.policy.deny.len() > MAX_ENTRIES {
            return Err(PluginError::host(format!("{}: over {MAX_ENTRIES} entries", p.display())));
        }
        Ok(store)
    }

    /// Loads, changes and saves the trust file under an exclusive lock.
    pub fn update<T>(
        home: &Path,
        change: impl FnOnce(&mut TrustStore) -> Result<T, PluginError>,
    ) -> Result<T, PluginError> {
        crate::home::private_dir(home).map_err(PluginError::host)?;
        let lock_path = home.join("trust.lock");
        let err = |e: std::io::Error| PluginError::host(format!("{}: {e}", lock_path.display()));
        let lock =
            std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(&lock_path).map_err(err)?;
        lock.lock().map_err(err)?;
        let mut store = TrustStore::load(home)?;
        let value = change(&mut store)?;
        if store.publishers.len() > MAX_ENTRIES || store.policy.deny.len() > MAX_ENTRIES {
            return Err(PluginError::Invalid(format!("at most {MAX_ENTRIES} trusted keys and policy rules")));
        }
        let p = path(home);
        crate::home::write_private(&p, &serde_json::to_vec_pretty(&store).expect("trust serializes"))
            .map_err(|e| PluginError::host(format!("{}: {e}", p.display())))?;
        Ok(value)
    }

    /// Trusts `public_hex` as publisher `name`. A key that was revoked stays revoked: trusting it again is refused.
    pub fn add(&mut self, name: &str, public_hex: &str, now_ms: u64) -> Result<TrustedKey, PluginError> {
        super::manifest::check_name("publisher name", name)?;
        let public = super::publisher::parse_public(public_hex).map_err(PluginError::Invalid)?;
        let key_id = super::publisher::key_id(&public.to_bytes());
        if let Some(k) = self.publishers.iter().find(|k| k.key_id == key_id) {
            if k.revoked_ms.is_some() {
                return Err(PluginError::RevokedPublisher(format!(
                    "key {key_id} ({}) was removed from trust and cannot be trusted again",
                    k.name
                )));
            }
            if k.name != name {
                return Err(PluginError::WrongPublisher(format!("key {key_id} is already trusted as {}", k.name)));
            }
            return Ok(k.clone());
        }
        let key = TrustedKey {
            name: name.to_string(),
            key_id,
            public_key: hex::encode(public.to_bytes()),
            added_ms: now_ms,
            revoked_ms: None,
        };
        self.publishers.push(key.clone());
        Ok(key)
    }

    /// Removes trust in a key (by key id) or in every key of a publisher (by name); they stay listed as revoked.
    pub fn revoke(&mut self, key_or_name: &str, now_ms: u64) -> Result<Vec<TrustedKey>, PluginError> {
        let mut revoked = Vec::new();
        for k in self.publishers.iter_mut().filter(|k| k.key_id == key_or_name || k.name == key_or_name) {
            if k.revoked_ms.is_none() {
                k.revoked_ms = Some(now_ms);
                revoked.push(k.clone());
            }
        }
        if revoked.is_empty() {
            return Err(PluginError::NotFound(format!("no trusted publisher or key `{key_or_name}`")));
        }
        Ok(revoked)
    }

    /// The trusted key `key_id`, unless it was removed from trust: what every use of an installed package checks
    /// again (cheap, no signature), so a publisher removed from trust stops in long-running processes too.
    pub fn still_trusted(&self, key_id: &str, what: &str) -> Result<&TrustedKey, PluginError> {
        let key = self.publishers.iter().find(|k| k.key_id == key_id).ok_or_else(|| {
            PluginError::UnknownPublisher(format!("{what} is signed by key {key_id}, which this home does not trust"))
        })?;
        match key.revoked_ms {
            Some(at) => Err(revoked(what, key, at)),
            None => Ok(key),
        }
    }

    /// Checks a package's signature against this home's trust, then its component against its digest; returns the
    /// trusted key that signed it. The order makes each tamper case its own refusal: a changed manifest fails the
    /// signature, a changed component (under an intact signed manifest) fails the digest.
    pub fn verify(&self, package: &Package) -> Result<&TrustedKey, PluginError> {
        let id = package.id();
        let signature = package
            .signature
            .as_ref()
            .ok_or_else(|| PluginError::Signature(format!("{id} is not signed (toka-host plugin sign)")))?;
        let claimed = &package.manifest.publisher;
        if signature.key_id != claimed.key_id {
            return Err(PluginError::WrongPublisher(format!(
                "{id} names publisher key {} but is signed by key {}",
                claimed.key_id, signature.key_id
            )));
        }
        let key = self.publishers.iter().find(|k| k.key_id == signature.key_id).ok_or_else(|| {
            PluginError::UnknownPublisher(format!(
                "{id} is signed by key {} ({}), which this home does not trust (toka-host trust add)",
                signature.key_id, claimed.name
            ))
        })?;
        if let Some(at) = key.revoked_ms {
            return Err(revoked(&id, key, at));
        }
        if !key.public_key.eq_ignore_ascii_case(&signature.public_key) {
            // Same 64-bit id, another key: not the key this home trusts.
            return Err(PluginError::UnknownPublisher(format!(
                "{id} is signed by a key whose id {} collides with a trusted key's",
                signature.key_id
            )));
        }
        if key.name != claimed.name {
            return Err(PluginError::WrongPublisher(format!(
                "{id} claims publisher {} but is signed by the key of {}",
                claimed.name, key.name
            )));
        }
        let public = super::publisher::parse_public(&key.public_key).map_err(PluginError::host)?;
        super::publisher::verify(&public, &package.manifest_bytes, &signature.signature).map_err(|e| {
            PluginError::Signature(format!("{id}: {}", e.to_string().trim_start_matches("bad signature: ")))
        })?;
        package.check_component()?;
        Ok(key)
    }
}

fn revoked(what: &str, key: &TrustedKey, at: u64) -> PluginError {
    PluginError::RevokedPublisher(format!(
        "{what} is signed by key {} of {}, removed from trust at {}",
        key.key_id,
        key.name,
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(at))
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::publisher::PublisherKey;

    fn store_with(key: &PublisherKey) -> TrustStore {
        let mut t = TrustStore::default();
        t.add(&key.name, &key.public_hex(), 1).unwrap();
        t
    }

    #[test]
    fn each_tamper_case_is_its_own_refusal_with_a_positive_control() {
        let alice = PublisherKey::generate("alice").unwrap();
        let good = crate::plugin::package::tests_support::sample(&alice, b"\0asm abc");
        let trust = store_with(&alice);
        trust.verify(&good).expect("positive control");

        let mut component = good.clone();
        component.component[1] ^= 1;
        assert!(matches!(trust.verify(&component), Err(PluginError::ComponentDigest { .. })));

        let mut manifest = good.clone();
        let text = String::from_utf8(manifest.manifest_bytes.clone()).unwrap().replace("\"d\"", "\"e\"");
        manifest.manifest_bytes = text.into_bytes();
        assert!(matches!(trust.verify(&manifest), Err(PluginError::Signature(_))));

        assert!(matches!(TrustStore::default().verify(&good), Err(PluginError::UnknownPublisher(_))));

        let mut revoked = store_with(&alice);
        revoked.revoke("alice", 2).unwrap();
        assert!(matches!(revoked.verify(&good), Err(PluginError::RevokedPublisher(_))));
        assert!(matches!(revoked.add("alice", &alice.public_hex(), 3), Err(PluginError::RevokedPublisher(_))));

        // Mallory, trusted as mallory, signs a manifest that says "alice".
        let mallory = PublisherKey::generate("mallory").unwrap();
        let mut trust2 = store_with(&alice);
        trust2.add("mallory", &mallory.public_hex(), 1).unwrap();
        let mut lie = good.clone();
        lie.manifest.publisher.key_id = mallory.key_id();
        lie.manifest_bytes = lie.manifest.to_bytes();
        lie.signature = Some(mallory.sign(&lie.manifest_bytes));
        assert!(matches!(trust2.verify(&lie), Err(PluginError::WrongPublisher(_))));

        let mut unsigned = good.clone();
        unsigned.signature = None;
        assert!(matches!(trust.verify(&unsigned), Err(PluginError::Signature(_))));
    }

    #[test]
    fn policy_rules_match_kinds_and_prefixes() {
        let p = Policy { deny: vec!["net".into(), "fs:/home".into(), "env:AWS_SECRET".into()] };
        assert!(p.forbids("net:*:443").is_some());
        assert!(p.forbids("fs:/home/alice:ro").is_some());
        assert!(p.forbids("fs:/:ro").is_some(), "an ancestor reaches /home");
        assert!(p.forbids("fs:/srv:ro").is_none());
        assert!(p.forbids("fs:/homework:ro").is_none());
        assert!(p.forbids("env:LANG").is_none());
        assert!(p.forbids("env:AWS_SECRET").is_some());
        assert!(p.forbids("network").is_none());
        let n = Policy { deny: vec!["net:api.example.com".into()] };
        assert!(n.forbids("net:*:443").is_some());
        assert!(n.forbids("net:api.example.com:443").is_some());
        assert!(n.forbids("net:other.example.com:443").is_none());
        // Patterns overlap the names they cover, in either direction.
        let m = Policy { deny: vec!["llm:gpt-4".into(), "publish:*".into()] };
        assert!(m.forbids("llm:gpt-4").is_some());
        assert!(m.forbids("llm:*").is_some(), "llm:* reaches gpt-4");
        assert!(m.forbids("llm:gpt-*").is_some(), "llm:gpt-* reaches gpt-4");
        assert!(m.forbids("llm:claude-3").is_none());
        assert!(m.forbids("llm:claude-*").is_none());
        assert!(m.forbids("publish:echo").is_some());
        let w = Policy { deny: vec!["llm:gpt-*".into()] };
        assert!(w.forbids("llm:gpt-4o").is_some());
        assert!(w.forbids("llm:g*").is_some(), "g* covers gpt-*");
        assert!(w.forbids("llm:claude-3").is_none());
        assert!(w.forbids("llm:g").is_none(), "the name g is not covered by gpt-*");
    }
}
