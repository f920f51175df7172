//! A package's manifest: what its publisher states about it (name, version, kind, description, license, keywords,
//! the grants it asks for, the limits it needs, the component's sha256 and size, the publisher's name and key id).
//!
//! Parsing is strict: unknown fields are refused, every string and list is bounded, names are checked (they become
//! file names), the version is semver, every grant parses. This module never trusts a manifest: it only says whether
//! one is well formed; the signature over its exact bytes is checked in [`super::package`].

use super::PluginError;
use serde::{Deserialize, Serialize};

/// The manifest format this build writes; it reads this one and refuses others.
pub const FORMAT: u32 = 1;
/// Largest manifest, in bytes.
pub const MAX_MANIFEST: usize = 64 << 10;
/// Longest description.
pub const MAX_DESCRIPTION: usize = 1024;
/// Most keywords, grants.
pub const MAX_KEYWORDS: usize = 16;
pub const MAX_GRANTS: usize = 64;
/// Longest keyword, license, grant, publisher name.
pub const MAX_SHORT: usize = 128;

/// What a package holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A `toka:agent/agent` or `wasi:cli/command` component, run with `toka-host run NAME`.
    Agent,
    /// A `toka:agent/tool` component, called by name (`tool call`, agents' `--allow-tool`, MCP).
    Tool,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Agent => "agent",
            Kind::Tool => "tool",
        })
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Kind, String> {
        match s {
            "agent" => Ok(Kind::Agent),
            "tool" => Ok(Kind::Tool),
            _ => Err(format!("invalid kind `{s}`: agent or tool")),
        }
    }
}

/// Limits the package needs to do its work (shown before install; a run still gets only what its token allows).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// The component a manifest is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentRef {
    /// Lowercase hex.
    pub sha256: String,
    pub size: u64,
}

/// Who publishes the package: a name, and the id of the Ed25519 key that signs it ([`super::publisher::key_id`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublisherRef {
    pub name: String,
    pub key_id: String,
}

/// A package's manifest (format 1). See `docs/package-format.md`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    pub version: String,
    pub kind: Kind,
    pub description: String,
    pub license: String,
    #[serde(default)]
    pub keywords: Vec<String>,
    /// What the package asks to be granted, in the host's grant syntax (`fs:/data:ro`, `env:LANG`, `net:*:443`).
    #[serde(default)]
    pub grants: Vec<String>,
    #[serde(default)]
    pub limits: Limits,
    pub component: ComponentRef,
    pub publisher: PublisherRef,
}

/// Checks a package, keyword or publisher name: the rules of tool names (they become file names).
pub fn check_name(what: &str, name: &str) -> Result<(), PluginError> {
    crate::tools::check_name(name).map_err(|e| PluginError::Malformed(e.replace("tool name", what)))
}

fn bounded(what: &str, text: &str, max: usize) -> Result<(), PluginError> {
    if text.len() > max {
        return Err(PluginError::Malformed(format!("{what} is {} bytes, over {max}", text.len())));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(PluginError::Malformed(format!("{what} contains control characters")));
    }
    Ok(())
}

impl Manifest {
    /// Parses and checks manifest bytes.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, PluginError> {
        if bytes.len() > MAX_MANIFEST {
            return Err(PluginError::Malformed(format!("manifest is {} bytes, over {MAX_MANIFEST}", bytes.len())));
        }
        let manifest: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| PluginError::Malformed(format!("manifest: {}", crate::error::one_line(&e.to_string()))))?;
        manifest.check()?;
        Ok(manifest)
    }

    /// The manifest's canonical bytes (what `plugin pack` writes and the publisher signs).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("manifests serialize")
    }

    /// The version, parsed.
    pub fn semver(&self) -> semver::Version {
        semver::Version::parse(&self.version).expect("checked when parsed")
    }

    /// Every rule a manifest must follow.
    pub fn check(&self) -> Result<(), PluginError> {
        let bad = |why: String| Err(PluginError::Malformed(why));
        if self.format != FORMAT {
            return bad(format!("manifest format {} is not supported (this build reads {FORMAT})", self.format));
        }
        check_name("package name", &self.name)?;
        if self.version.len() > MAX_SHORT {
            return bad("version is too long".into());
        }
        if let Err(e) = semver::Version::parse(&self.version) {
            return bad(format!("version `{}` is not semver: {e}", self.version));
        }
        bounded("description", &self.description, MAX_DESCRIPTION)?;
        bounded("license", &self.license, MAX_SHORT)?;
        if self.license.is_empty() || self.license.contains('\n') {
            return bad("license must be one non-empty line (an SPDX expression)".into());
        }
        if self.keywords.len() > MAX_KEYWORDS {
            return bad(format!("{} keywords, over {MAX_KEYWORDS}", self.keywords.len()));
        }
        for k in &self.keywords {
            check_name("keyword", k)?;
        }
        if self.grants.len() > MAX_GRANTS {
            return bad(format!("{} grants, over {MAX_GRANTS}", self.grants.len()));
        }
        for g in &self.grants {
            bounded("grant", g, MAX_SHORT)?;
            check_grant(self.kind, g)?;
        }
        if !super::is_sha256_hex(&self.component.sha256) {
            return bad("component.sha256 must be 64 lowercase hex digits".into());
        }
        if self.component.size == 0 || self.component.size > crate::component::MAX_WASM_SIZE {
            return bad(format!(
                "component.size must be 1 to {} bytes, not {}",
                crate::component::MAX_WASM_SIZE,
                self.component.size
            ));
        }
        check_name("publisher name", &self.publisher.name)?;
        if !super::publisher::is_key_id(&self.publisher.key_id) {
            return bad("publisher.key_id must be 16 lowercase hex digits".into());
        }
        Ok(())
    }
}

/// A grant a package may ask for: a tool declares fs, env and net needs (with `*` wildcards for net); an agent asks
/// for what a token can grant.
pub fn check_grant(kind: Kind, grant: &str) -> Result<(), PluginError> {
    let parsed = match kind {
        Kind::Tool => crate::tools::grants::Declared::parse(grant).map(drop),
        Kind::Agent => crate::tools::grants::Declared::parse(grant)
            .map(drop)
            .or_else(|_| crate::token::Grant::parse(grant).map(drop)),
    };
    parsed.map_err(PluginError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            format: FORMAT,
            name: "echo".into(),
            version: "1.2.3".into(),
            kind: Kind::Tool,
            description: "Echoes".into(),
            license: "Apache-2.0".into(),
            keywords: vec!["text".into()],
            grants: vec!["net:*:443".into()],
            limits: Limits::default(),
            component: ComponentRef { sha256: "ab".repeat(32), size: 10 },
            publisher: PublisherRef { name: "alice".into(), key_id: "0123456789abcdef".into() },
        }
    }

    #[test]
    fn a_good_manifest_round_trips() {
        let m = manifest();
        assert_eq!(Manifest::parse(&m.to_bytes()).unwrap(), m);
    }

    #[test]
    fn strict_parsing_refuses_what_a_package_must_not_say() {
        let mut unknown: serde_json::Value = serde_json::from_slice(&manifest().to_bytes()).unwrap();
        unknown["install_script"] = "rm -rf /".into();
        let err = Manifest::parse(&serde_json::to_vec(&unknown).unwrap()).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        type Change = Box<dyn Fn(&mut Manifest)>;
        let cases: Vec<(&str, Change)> = vec![
            ("path name", Box::new(|m| m.name = "../evil".into())),
            ("not semver", Box::new(|m| m.version = "1.2".into())),
            ("bad digest", Box::new(|m| m.component.sha256 = "AB".repeat(32))),
            ("empty component", Box::new(|m| m.component.size = 0)),
            ("bad grant", Box::new(|m| m.grants = vec!["root:everything".into()])),
            ("long description", Box::new(|m| m.description = "x".repeat(MAX_DESCRIPTION + 1))),
            ("control chars", Box::new(|m| m.license = "MIT\u{1b}[2J".into())),
            ("bad key id", Box::new(|m| m.publisher.key_id = "xyz".into())),
            ("future format", Box::new(|m| m.format = 2)),
        ];
        for (why, change) in cases {
            let mut m = manifest();
            change(&mut m);
            assert!(matches!(Manifest::parse(&m.to_bytes()), Err(PluginError::Malformed(_))), "{why}");
        }
        assert!(Manifest::parse(&vec![b' '; MAX_MANIFEST + 1]).is_err());
    }
}
