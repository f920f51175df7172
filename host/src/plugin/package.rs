//! The package file (`.tokapkg`): one manifest, its signature, one component, in a container with explicit lengths.
//!
//! ```text
//! magic      8 bytes   "TOKAPKG\n"
//! container  u32 BE    1
//! manifest   u32 BE length (1..=64 KiB), then the manifest's JSON bytes (what the signature signs, byte for byte)
//! signature  u32 BE length (0 = unsigned, else up to 4 KiB), then the signature's JSON
//! component  u64 BE length (1..=256 MiB), then the component's bytes
//! (end of file: trailing bytes are refused)
//! ```
//!
//! Parsing checks the structure and the manifest's rules only; whether the signature verifies against a trusted
//! publisher and whether the component matches its digest are [`super::trust`]'s checks. This module never
//! re-serializes a manifest it read: the signed bytes are kept as they came.

use super::PluginError;
use super::manifest::{MAX_MANIFEST, Manifest};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const MAGIC: &[u8; 8] = b"TOKAPKG\n";
/// The container version this build writes and reads.
pub const CONTAINER: u32 = 1;
/// Largest signature record.
pub const MAX_SIGNATURE: usize = 4096;
/// Largest package file: a component at its cap plus the manifest and signature at theirs.
pub const MAX_PACKAGE: u64 = crate::component::MAX_WASM_SIZE + (MAX_MANIFEST + MAX_SIGNATURE + 64) as u64;
/// The usual file extension.
pub const EXTENSION: &str = "tokapkg";

/// A publisher's signature over a manifest's bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// Always `ed25519`.
    pub algorithm: String,
    pub key_id: String,
    /// The signing key's public half, hex (checked against the trusted key of that id, never trusted by itself).
    pub public_key: String,
    /// 64 bytes, hex.
    pub signature: String,
}

impl Signature {
    fn parse(bytes: &[u8]) -> Result<Signature, PluginError> {
        let s: Signature = serde_json::from_slice(bytes)
            .map_err(|e| PluginError::Malformed(format!("signature: {}", crate::error::one_line(&e.to_string()))))?;
        if s.algorithm != "ed25519" {
            return Err(PluginError::Malformed(format!("signature algorithm `{}` (only ed25519)", s.algorithm)));
        }
        if !super::publisher::is_key_id(&s.key_id) || s.public_key.len() != 64 || s.signature.len() != 128 {
            return Err(PluginError::Malformed("signature: key id, public key or signature has the wrong size".into()));
        }
        Ok(s)
    }
}

/// A package, parsed.
#[derive(Debug, Clone)]
pub struct Package {
    /// The manifest's bytes exactly as signed.
    pub manifest_bytes: Vec<u8>,
    pub manifest: Manifest,
    pub signature: Option<Signature>,
    pub component: Vec<u8>,
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], PluginError> {
        let end = self.at.checked_add(n).filter(|end| *end <= self.bytes.len()).ok_or_else(|| {
            PluginError::Malformed(format!(
                "the file ends inside the {what} ({} bytes in, {n} more needed, {} left)",
                self.at,
                self.bytes.len() - self.at
            ))
        })?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, PluginError> {
        Ok(u32::from_be_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self, what: &str) -> Result<u64, PluginError> {
        Ok(u64::from_be_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
    }
}

impl Package {
    /// A new, unsigned package of `component` under `manifest` (whose digest and size must be the component's).
    pub fn new(manifest: Manifest, component: Vec<u8>) -> Result<Package, PluginError> {
        manifest.check()?;
        let package = Package { manifest_bytes: manifest.to_bytes(), manifest, signature: None, component };
        package.check_component()?;
        Ok(package)
    }

    /// Parses a package file's bytes: the structure, the manifest's rules, the signature record's shape.
    pub fn parse(bytes: &[u8]) -> Result<Package, PluginError> {
        if bytes.len() as u64 > MAX_PACKAGE {
            return Err(PluginError::Malformed(format!("{} bytes, over the {MAX_PACKAGE} byte limit", bytes.len())));
        }
        let mut r = Reader { bytes, at: 0 };
        if r.take(MAGIC.len(), "magic").ok() != Some(MAGIC.as_slice()) {
            return Err(PluginError::Malformed("not a toka-host package (bad magic)".into()));
        }
        let container = r.u32("container version")?;
        if container != CONTAINER {
            return Err(PluginError::Malformed(format!(
                "container version {container} is not supported (this build reads {CONTAINER})"
            )));
        }
        let n = r.u32("manifest length")? as usize;
        if n == 0 || n > MAX_MANIFEST {
            return Err(PluginError::Malformed(format!("manifest length {n}: 1 to {MAX_MANIFEST} bytes")));
        }
        let manifest_bytes = r.take(n, "manifest")?.to_vec();
        let manifest = Manifest::parse(&manifest_bytes)?;
        let n = r.u32("signature length")? as usize;
        if n > MAX_SIGNATURE {
            return Err(PluginError::Malformed(format!("signature length {n}: at most {MAX_SIGNATURE} bytes")));
        }
        let signature = if n == 0 { None } else { Some(Signature::parse(r.take(n, "signature")?)?) };
        let n = r.u64("component length")?;
        if n == 0 || n > crate::component::MAX_WASM_SIZE {
            return Err(PluginError::Malformed(format!(
                "component length {n}: 1 to {} bytes",
                crate::component::MAX_WASM_SIZE
            )));
        }
        let component = r.take(n as usize, "component")?.to_vec();
        if r.at != bytes.len() {
            return Err(PluginError::Malformed(format!("{} trailing bytes after the component", bytes.len() - r.at)));
        }
        Ok(Package { manifest_bytes, manifest, signature, component })
    }

    /// Reads and parses a package file (at most [`MAX_PACKAGE`] bytes are read).
    pub fn read(path: &Path) -> Result<Package, PluginError> {
        Package::parse(&read_bounded(path)?)
    }

    /// The package file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let signature = self.signature.as_ref().map(|s| serde_json::to_vec(s).expect("signatures serialize"));
        let signature = signature.unwrap_or_default();
        let mut out = Vec::with_capacity(32 + self.manifest_bytes.len() + signature.len() + self.component.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&CONTAINER.to_be_bytes());
        out.extend_from_slice(&(self.manifest_bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.manifest_bytes);
        out.extend_from_slice(&(signature.len() as u32).to_be_bytes());
        out.extend_from_slice(&signature);
        out.extend_from_slice(&(self.component.len() as u64).to_be_bytes());
        out.extend_from_slice(&self.component);
        out
    }

    /// Whether the component is the one the manifest names (size, then sha256).
    pub fn check_component(&self) -> Result<(), PluginError> {
        let actual = super::sha256_hex(&self.component);
        if self.component.len() as u64 != self.manifest.component.size || actual != self.manifest.component.sha256 {
            return Err(PluginError::ComponentDigest { expected: self.manifest.component.sha256.clone(), actual });
        }
        Ok(())
    }

    /// Signs the manifest's bytes with `key`, which must be the key the manifest names.
    pub fn sign(&mut self, key: &super::publisher::PublisherKey) -> Result<(), PluginError> {
        let m = &self.manifest.publisher;
        if m.key_id != key.key_id() || m.name != key.name {
            return Err(PluginError::WrongPublisher(format!(
                "the manifest names publisher {} (key {}), this key is {} ({})",
                m.name,
                m.key_id,
                key.name,
                key.key_id()
            )));
        }
        self.signature = Some(key.sign(&self.manifest_bytes));
        Ok(())
    }

    /// `NAME@VERSION`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.manifest.name, self.manifest.version)
    }
}

/// Reads a file of at most [`MAX_PACKAGE`] bytes.
pub fn read_bounded(path: &Path) -> Result<Vec<u8>, PluginError> {
    use std::io::Read;
    let shown = path.display();
    let f = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => PluginError::NotFound(format!("{shown}: file not found")),
        _ => PluginError::host(format!("{shown}: {e}")),
    })?;
    let mut bytes = Vec::new();
    f.take(MAX_PACKAGE + 1).read_to_end(&mut bytes).map_err(|e| PluginError::host(format!("{shown}: {e}")))?;
    if bytes.len() as u64 > MAX_PACKAGE {
        return Err(PluginError::Malformed(format!("{shown}: over the {MAX_PACKAGE} byte limit")));
    }
    Ok(bytes)
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    use crate::plugin::manifest::{ComponentRef, FORMAT, Kind, Limits, PublisherRef};

    /// A signed tool package of `component` by `key`.
    pub(crate) fn sample(key: &crate::plugin::publisher::PublisherKey, component: &[u8]) -> Package {
        let manifest = Manifest {
            format: FORMAT,
            name: "echo".into(),
            version: "1.0.0".into(),
            kind: Kind::Tool,
            description: "d".into(),
            license: "MIT".into(),
            keywords: vec![],
            grants: vec![],
            limits: Limits::default(),
            component: ComponentRef { sha256: crate::plugin::sha256_hex(component), size: component.len() as u64 },
            publisher: PublisherRef { name: key.name.clone(), key_id: key.key_id() },
        };
        let mut p = Package::new(manifest, component.to_vec()).unwrap();
        p.sign(key).unwrap();
        p
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::sample;
    use super::*;

    #[test]
    fn round_trip_and_every_truncation_is_refused() {
        let key = crate::plugin::publisher::PublisherKey::generate("alice").unwrap();
        let p = sample(&key, b"\0asm component bytes");
        let bytes = p.to_bytes();
        let back = Package::parse(&bytes).unwrap();
        assert_eq!(back.manifest_bytes, p.manifest_bytes);
        assert_eq!(back.signature, p.signature);
        back.check_component().unwrap();
        for n in 0..bytes.len() {
            assert!(matches!(Package::parse(&bytes[..n]), Err(PluginError::Malformed(_))), "truncated at {n}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Package::parse(&longer).is_err(), "trailing byte");
    }

    /// The golden package (`tests/fixtures/golden-1.0.0.tokapkg`), made by the first version of the format: every
    /// build must read it and verify it. `TOKA_WRITE_GOLDEN=1` made it once (with the publisher's public key beside
    /// it, and the secret key thrown away); it is never regenerated, or the test would prove nothing.
    #[test]
    fn the_first_versions_golden_package_reads_and_verifies() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        let (file, public) = (dir.join("golden-1.0.0.tokapkg"), dir.join("golden-publisher.pub"));
        if std::env::var_os("TOKA_WRITE_GOLDEN").is_some() && !file.exists() {
            use crate::plugin::manifest::{ComponentRef, FORMAT, Kind, Limits, PublisherRef};
            let key = crate::plugin::publisher::PublisherKey::generate("golden-publisher").unwrap();
            let component = wat::parse_str("(component)").unwrap();
            let manifest = Manifest {
                format: FORMAT,
                name: "golden".into(),
                version: "1.0.0".into(),
                kind: Kind::Agent,
                description: "The golden package of package format 1: every build must read it.".into(),
                license: "Apache-2.0".into(),
                keywords: vec!["golden".into()],
                grants: vec!["env:LANG".into(), "net:*:443".into()],
                limits: Limits { fuel: Some(1_000_000), memory: None, timeout_ms: Some(5000) },
                component: ComponentRef { sha256: crate::plugin::sha256_hex(&component), size: component.len() as u64 },
                publisher: PublisherRef { name: key.name.clone(), key_id: key.key_id() },
            };
            let mut p = Package::new(manifest, component).unwrap();
            p.sign(&key).unwrap();
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&file, p.to_bytes()).unwrap();
            std::fs::write(&public, format!("{}\n", key.public_hex())).unwrap();
        }
        let p = Package::read(&file).unwrap();
        assert_eq!((p.manifest.name.as_str(), p.manifest.version.as_str()), ("golden", "1.0.0"));
        assert_eq!(p.manifest.limits.fuel, Some(1_000_000));
        p.check_component().unwrap();
        let public = crate::plugin::publisher::parse_public(&std::fs::read_to_string(&public).unwrap()).unwrap();
        let signature = p.signature.as_ref().unwrap();
        assert_eq!(signature.key_id, crate::plugin::publisher::key_id(&public.to_bytes()));
        crate::plugin::publisher::verify(&public, &p.manifest_bytes, &signature.signature).unwrap();
        // Written again, it is the same bytes: the writer has not drifted from the format either.
        assert_eq!(p.to_bytes(), std::fs::read(&file).unwrap());
    }

    #[test]
    fn a_changed_component_no_longer_matches_its_digest() {
        let key = crate::plugin::publisher::PublisherKey::generate("alice").unwrap();
        let mut p = sample(&key, b"\0asm component bytes");
        p.component[5] ^= 1;
        assert!(matches!(p.check_component(), Err(PluginError::ComponentDigest { .. })));
    }
}
