//! A publisher's signing key: an Ed25519 key pair in `HOME/publisher.json` (mode 0600), with a name and a key id
//! (the first 16 hex digits of the sha256 of the public key). `publisher init` makes one; `plugin sign` signs a
//! manifest's exact bytes with it.
//!
//! This module never reads a key it did not write with owner-only permissions, and never prints the secret half.

use super::PluginError;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What a package signature signs: this domain string, then the manifest's exact bytes.
pub const DOMAIN: &[u8] = b"toka-host package manifest v1\0";

/// The publisher key file of a home.
pub fn path(home: &Path) -> PathBuf {
    home.join("publisher.json")
}

/// A publisher's key id: the first 16 hex digits of the sha256 of its public key.
pub fn key_id(public: &[u8; 32]) -> String {
    super::sha256_hex(public)[..16].to_string()
}

pub fn is_key_id(text: &str) -> bool {
    text.len() == 16 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parses a public key given as 64 hex digits.
pub fn parse_public(text: &str) -> Result<VerifyingKey, String> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut bytes)
        .map_err(|_| format!("`{}` is not an Ed25519 public key (64 hex digits)", text.trim()))?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("not an Ed25519 public key: {e}"))
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    name: String,
    key_id: String,
    public_key: String,
    secret_key: String,
}

/// A publisher's signing key.
pub struct PublisherKey {
    pub name: String,
    key: SigningKey,
}

impl std::fmt::Debug for PublisherKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublisherKey").field("name", &self.name).field("key_id", &self.key_id()).finish()
    }
}

impl PublisherKey {
    /// A new key for publisher `name`.
    pub fn generate(name: &str) -> Result<PublisherKey, PluginError> {
        super::manifest::check_name("publisher name", name)?;
        // biscuit-auth's key generation (its OS random source), to keep one Ed25519 stack in the build.
        let pair = biscuit_auth::KeyPair::new();
        let secret: [u8; 32] = pair.private().to_bytes().as_slice().try_into().map_err(PluginError::host)?;
        Ok(PublisherKey { name: name.to_string(), key: SigningKey::from_bytes(&secret) })
    }

    pub fn public(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    pub fn public_hex(&self) -> String {
        hex::encode(self.public().to_bytes())
    }

    pub fn key_id(&self) -> String {
        key_id(&self.public().to_bytes())
    }

    /// Signs `message` as it is (the caller adds its own domain string); hex.
    pub fn sign_raw(&self, message: &[u8]) -> String {
        hex::encode(self.key.sign(message).to_bytes())
    }

    /// Signs manifest bytes.
    pub fn sign(&self, manifest: &[u8]) -> super::package::Signature {
        let mut message = DOMAIN.to_vec();
        message.extend_from_slice(manifest);
        super::package::Signature {
            algorithm: "ed25519".into(),
            key_id: self.key_id(),
            public_key: self.public_hex(),
            signature: hex::encode(self.key.sign(&message).to_bytes()),
        }
    }

    /// Writes the home's publisher key file (0600); refuses to replace one.
    pub fn save(&self, home: &Path) -> Result<PathBuf, PluginError> {
        crate::home::private_dir(home).map_err(PluginError::host)?;
        let p = path(home);
        self.save_at(&p)?;
        Ok(p)
    }

    /// Writes a key file at `p` (0600; a registry keeps its own); refuses to replace one.
    pub fn save_at(&self, p: &Path) -> Result<(), PluginError> {
        if p.exists() {
            return Err(PluginError::Invalid(format!("{} already exists: a home has one publisher key", p.display())));
        }
        let file = KeyFile {
            name: self.name.clone(),
            key_id: self.key_id(),
            public_key: self.public_hex(),
            secret_key: hex::encode(self.key.to_bytes()),
        };
        crate::home::write_private(p, &serde_json::to_vec_pretty(&file).expect("key files serialize"))
            .map_err(|e| PluginError::host(format!("{}: {e}", p.display())))
    }

    /// Loads the home's publisher key.
    pub fn load(home: &Path) -> Result<PublisherKey, PluginError> {
        let p = path(home);
        if !p.exists() {
            return Err(PluginError::NotFound(format!(
                "no publisher key in {} (toka-host publisher init --name NAME)",
                home.display()
            )));
        }
        PublisherKey::load_at(&p)
    }

    /// Loads a key file, which must be owner-only.
    pub fn load_at(p: &Path) -> Result<PublisherKey, PluginError> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(p).map_err(|e| PluginError::NotFound(format!("{}: {e}", p.display())))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(PluginError::Invalid(format!(
                "{}: the publisher key must be readable by its owner only (chmod 600)",
                p.display()
            )));
        }
        if meta.len() > 4096 {
            return Err(PluginError::Invalid(format!("{}: not a publisher key file", p.display())));
        }
        let bytes = std::fs::read(p).map_err(|e| PluginError::host(format!("{}: {e}", p.display())))?;
        let file: KeyFile = serde_json::from_slice(&bytes)
            .map_err(|e| PluginError::Invalid(format!("{}: not a publisher key file: {e}", p.display())))?;
        let mut secret = [0u8; 32];
        hex::decode_to_slice(&file.secret_key, &mut secret)
            .map_err(|_| PluginError::Invalid(format!("{}: bad secret key", p.display())))?;
        let key = PublisherKey { name: file.name, key: SigningKey::from_bytes(&secret) };
        if key.public_hex() != file.public_key || key.key_id() != file.key_id {
            return Err(PluginError::Invalid(format!("{}: the public key does not match the secret key", p.display())));
        }
        Ok(key)
    }
}

/// Verifies a signature over `manifest` with `public` (strict Ed25519: no malleable signatures, no weak keys).
pub fn verify(public: &VerifyingKey, manifest: &[u8], signature_hex: &str) -> Result<(), PluginError> {
    let mut signature = [0u8; 64];
    hex::decode_to_slice(signature_hex, &mut signature)
        .map_err(|_| PluginError::Signature("the signature is not 128 hex digits".into()))?;
    let mut message = DOMAIN.to_vec();
    message.extend_from_slice(manifest);
    public.verify_strict(&message, &ed25519_dalek::Signature::from_bytes(&signature)).map_err(|_| {
        PluginError::Signature("the manifest does not match its signature (changed after signing?)".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_the_bytes_it_signed() {
        let key = PublisherKey::generate("alice").unwrap();
        let sig = key.sign(b"{\"a\":1}");
        verify(&key.public(), b"{\"a\":1}", &sig.signature).unwrap();
        assert!(verify(&key.public(), b"{\"a\":2}", &sig.signature).is_err());
        let other = PublisherKey::generate("bob").unwrap();
        assert!(verify(&other.public(), b"{\"a\":1}", &sig.signature).is_err());
        assert!(is_key_id(&key.key_id()));
    }

    #[test]
    fn key_file_is_owner_only_and_round_trips() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let key = PublisherKey::generate("alice").unwrap();
        let p = key.save(tmp.path()).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(PublisherKey::load(tmp.path()).unwrap().public_hex(), key.public_hex());
        assert!(key.save(tmp.path()).is_err(), "never replaced");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(PublisherKey::load(tmp.path()).is_err(), "group-readable key refused");
    }
}
