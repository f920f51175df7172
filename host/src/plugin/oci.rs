//! `plugin push | pull`: packages in any OCI distribution registry, in the WebAssembly OCI artifact layout
//! (config `application/vnd.wasm.config.v0+json`, the component as an `application/wasm` layer), with the signed
//! manifest and its signature as a second layer, so that standard tools read the component and toka-host can check
//! the publisher's signature after a pull exactly as for a package file.
//!
//! The distribution API calls are few and written here on the workspace's reqwest (no OCI client crate): blob
//! upload (POST then PUT with the digest), manifest PUT, manifest and blob GET. Plain HTTP is used only for
//! loopback registries; anything else is HTTPS. Every blob pulled is bounded by its descriptor's size and checked
//! against its digest before it is used; anonymous access only (a registry that asks for credentials is refused).

use super::PluginError;
use super::client::{Http, error_text};
use super::package::{Package, Signature};
use serde::{Deserialize, Serialize};
use std::io::Read;

pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG_TYPE: &str = "application/vnd.wasm.config.v0+json";
pub const WASM_TYPE: &str = "application/wasm";
/// The second layer: the package's signed manifest and signature.
pub const SIGNED_MANIFEST_TYPE: &str = "application/vnd.toka.package.manifest.v1+json";
/// Largest OCI manifest and config read.
pub const MAX_OCI_MANIFEST: usize = 4 << 20;

/// `oci://HOST[:PORT]/REPOSITORY[:TAG|@sha256:HEX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    /// A tag or a `sha256:` digest.
    pub reference: String,
}

impl Reference {
    pub fn parse(text: &str) -> Result<Reference, PluginError> {
        let bad = |why: &str| PluginError::Invalid(format!("invalid OCI reference `{text}`: {why}"));
        let rest = text.strip_prefix("oci://").ok_or_else(|| bad("expected oci://HOST/REPOSITORY[:TAG]"))?;
        let (registry, path) = rest.split_once('/').ok_or_else(|| bad("no repository"))?;
        if registry.is_empty() || !registry.chars().all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c)) {
            return Err(bad("bad registry host"));
        }
        let (repository, reference) = if let Some((repo, digest)) = path.split_once('@') {
            if !digest.strip_prefix("sha256:").is_some_and(super::is_sha256_hex) {
                return Err(bad("a digest is sha256: and 64 lowercase hex digits"));
            }
            (repo, digest.to_string())
        } else {
            match path.rsplit_once(':') {
                Some((repo, tag)) if !tag.contains('/') => (repo, tag.to_string()),
                _ => (path, "latest".to_string()),
            }
        };
        // The distribution spec's path component: lowercase alphanumerics joined by `.`, `_` or `-`.
        let alnum = |ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit();
        let component_ok =
            |c: &str| c.starts_with(alnum) && c.ends_with(alnum) && c.chars().all(|ch| alnum(ch) || "._-".contains(ch));
        if repository.len() > 255 || !repository.split('/').all(component_ok) {
            return Err(bad("repository components are lowercase letters, digits, `.`, `_`, `-`"));
        }
        let tag_ok = reference.starts_with("sha256:")
            || (reference.len() <= 128
                && reference.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                && !reference.starts_with(['.', '-']));
        if !tag_ok {
            return Err(bad("bad tag"));
        }
        Ok(Reference { registry: registry.to_string(), repository: repository.to_string(), reference })
    }

    /// The registry's base URL: plain HTTP only on loopback.
    pub fn base(&self) -> String {
        let host = self.registry.rsplit_once(':').map_or(self.registry.as_str(), |(h, p)| {
            if p.chars().all(|c| c.is_ascii_digit()) { h } else { self.registry.as_str() }
        });
        let loopback = matches!(host, "localhost" | "127.0.0.1" | "[::1]") || host.starts_with("127.");
        format!("{}://{}", if loopback { "http" } else { "https" }, self.registry)
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sep = if self.reference.starts_with("sha256:") { '@' } else { ':' };
        write!(f, "oci://{}/{}{sep}{}", self.registry, self.repository, self.reference)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciManifest {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<std::collections::BTreeMap<String, String>>,
}

/// The second layer's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignedManifest {
    /// The manifest's exact bytes, base64.
    manifest: String,
    signature: Signature,
}

fn descriptor(media_type: &str, bytes: &[u8]) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest: format!("sha256:{}", super::sha256_hex(bytes)),
        size: bytes.len() as u64,
        annotations: None,
    }
}

fn refused_auth(url: &str) -> PluginError {
    PluginError::Remote(format!("{url}: the registry asks for credentials (only anonymous access is supported)"))
}

/// Pushes a signed package; returns the manifest's digest.
pub fn push(http: &Http, package: &Package, target: &Reference) -> Result<String, PluginError> {
    use base64::Engine;
    let signature =
        package.signature.clone().ok_or_else(|| PluginError::Signature("not signed: sign it before pushing".into()))?;
    let m = &package.manifest;
    let signed = serde_json::to_vec(&SignedManifest {
        manifest: base64::engine::general_purpose::STANDARD.encode(&package.manifest_bytes),
        signature,
    })
    .expect("serializes");
    let component_digest = format!("sha256:{}", m.component.sha256);
    let config = serde_json::to_vec(&serde_json::json!({
        "created": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "author": m.publisher.name,
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [component_digest],
        "component": { "exports": [], "imports": [] },
    }))
    .expect("serializes");
    let base = target.base();
    let repo = &target.repository;
    let blobs: [(&str, &[u8]); 3] =
        [(CONFIG_TYPE, &config), (WASM_TYPE, &package.component), (SIGNED_MANIFEST_TYPE, &signed)];
    for (media_type, bytes) in blobs {
        upload_blob(http, &base, repo, bytes).map_err(|e| match e {
            PluginError::Remote(m) => PluginError::Remote(format!("uploading the {media_type} blob: {m}")),
            e => e,
        })?;
    }
    let mut annotations = std::collections::BTreeMap::new();
    annotations.insert("org.opencontainers.image.title".to_string(), m.name.clone());
    annotations.insert("org.opencontainers.image.version".to_string(), m.version.clone());
    annotations.insert("org.opencontainers.image.description".to_string(), m.description.clone());
    annotations.insert("org.opencontainers.image.licenses".to_string(), m.license.clone());
    annotations.insert("dev.toka.package.publisher".to_string(), m.publisher.name.clone());
    annotations.insert("dev.toka.package.key-id".to_string(), m.publisher.key_id.clone());
    annotations.insert("dev.toka.package.kind".to_string(), m.kind.to_string());
    let manifest = OciManifest {
        schema_version: 2,
        media_type: Some(MANIFEST_TYPE.into()),
        config: descriptor(CONFIG_TYPE, &config),
        layers: vec![descriptor(WASM_TYPE, &package.component), descriptor(SIGNED_MANIFEST_TYPE, &signed)],
        annotations: Some(annotations),
    };
    let body = serde_json::to_vec(&manifest).expect("serializes");
    let url = format!("{base}/v2/{repo}/manifests/{}", target.reference);
    let response = http
        .inner()
        .put(&url)
        .header(reqwest::header::CONTENT_TYPE, MANIFEST_TYPE)
        .body(body.clone())
        .send()
        .map_err(|e| PluginError::Remote(crate::error::one_line(&format!("{url}: {e}"))))?;
    match response.status() {
        s if s.is_success() => Ok(format!("sha256:{}", super::sha256_hex(&body))),
        reqwest::StatusCode::UNAUTHORIZED => Err(refused_auth(&url)),
        s => Err(PluginError::Remote(format!("{url}: {}", error_text(s, response)))),
    }
}

fn upload_blob(http: &Http, base: &str, repo: &str, bytes: &[u8]) -> Result<(), PluginError> {
    let digest = format!("sha256:{}", super::sha256_hex(bytes));
    let net = |url: &str, e: reqwest::Error| PluginError::Remote(crate::error::one_line(&format!("{url}: {e}")));
    let head = format!("{base}/v2/{repo}/blobs/{digest}");
    if let Ok(r) = http.inner().head(&head).send()
        && r.status().is_success()
    {
        return Ok(());
    }
    let start = format!("{base}/v2/{repo}/blobs/uploads/");
    let response = http.inner().post(&start).send().map_err(|e| net(&start, e))?;
    match response.status() {
        reqwest::StatusCode::ACCEPTED => {}
        reqwest::StatusCode::UNAUTHORIZED => return Err(refused_auth(&start)),
        s => return Err(PluginError::Remote(format!("{start}: {}", error_text(s, response)))),
    }
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| PluginError::Remote(format!("{start}: no Location for the upload")))?
        .to_string();
    let location = if location.starts_with("http://") || location.starts_with("https://") {
        location
    } else {
        format!("{base}{location}")
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    let put = format!("{location}{sep}digest={digest}");
    let response = http
        .inner()
        .put(&put)
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .body(bytes.to_vec())
        .send()
        .map_err(|e| net(&put, e))?;
    if !response.status().is_success() {
        let s = response.status();
        return Err(PluginError::Remote(format!("{start}: {}", error_text(s, response))));
    }
    Ok(())
}

/// GETs at most `max` bytes.
fn get(http: &Http, url: &str, accept: Option<&str>, max: u64) -> Result<Vec<u8>, PluginError> {
    let mut request = http.inner().get(url);
    if let Some(a) = accept {
        request = request.header(reqwest::header::ACCEPT, a);
    }
    let response = request.send().map_err(|e| PluginError::Remote(crate::error::one_line(&format!("{url}: {e}"))))?;
    match response.status() {
        s if s.is_success() => {}
        reqwest::StatusCode::NOT_FOUND => return Err(PluginError::NotFound(format!("{url}: not found"))),
        reqwest::StatusCode::UNAUTHORIZED => return Err(refused_auth(url)),
        s => return Err(PluginError::Remote(format!("{url}: {}", error_text(s, response)))),
    }
    let mut bytes = Vec::new();
    response
        .take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| PluginError::Truncated(crate::error::one_line(&format!("{url}: {e}"))))?;
    if bytes.len() as u64 > max {
        return Err(PluginError::PackageDigest(format!("{url}: more than the {max} bytes its descriptor gives")));
    }
    Ok(bytes)
}

/// Fetches a blob and checks it against its descriptor (size, then digest).
fn blob(http: &Http, source: &Reference, d: &Descriptor) -> Result<Vec<u8>, PluginError> {
    let hex = d
        .digest
        .strip_prefix("sha256:")
        .filter(|h| super::is_sha256_hex(h))
        .ok_or_else(|| PluginError::Malformed(format!("OCI descriptor digest `{}` is not sha256", d.digest)))?;
    if d.size > super::package::MAX_PACKAGE {
        return Err(PluginError::Malformed(format!("OCI blob {} is {} bytes, over the limit", d.digest, d.size)));
    }
    let url = format!("{}/v2/{}/blobs/{}", source.base(), source.repository, d.digest);
    let bytes = get(http, &url, None, d.size)?;
    if (bytes.len() as u64) < d.size {
        return Err(PluginError::Truncated(format!("{url}: {} of {} bytes", bytes.len(), d.size)));
    }
    let actual = super::sha256_hex(&bytes);
    if actual != hex {
        return Err(PluginError::PackageDigest(format!(
            "{source}: blob {} has sha256 {actual}, not the digest its OCI manifest gives",
            d.digest
        )));
    }
    Ok(bytes)
}

/// Pulls a package: the OCI manifest, the component layer and the signed-manifest layer, each checked against its
/// digest. The package's own signature and digest are checked by the caller, against its trust.
pub fn pull(http: &Http, source: &Reference) -> Result<Package, PluginError> {
    use base64::Engine;
    let url = format!("{}/v2/{}/manifests/{}", source.base(), source.repository, source.reference);
    let bytes = get(http, &url, Some(MANIFEST_TYPE), MAX_OCI_MANIFEST as u64)?;
    if let Some(hex) = source.reference.strip_prefix("sha256:")
        && super::sha256_hex(&bytes) != hex
    {
        return Err(PluginError::PackageDigest(format!("{source}: the OCI manifest does not match its digest")));
    }
    let manifest: OciManifest = serde_json::from_slice(&bytes)
        .map_err(|e| PluginError::Malformed(format!("{source}: not an OCI image manifest: {e}")))?;
    if manifest.config.media_type != CONFIG_TYPE {
        return Err(PluginError::Malformed(format!(
            "{source}: config media type {} is not a WebAssembly artifact's ({CONFIG_TYPE})",
            manifest.config.media_type
        )));
    }
    let layer = |media_type: &str| {
        let mut found = manifest.layers.iter().filter(|l| l.media_type == media_type);
        match (found.next(), found.next()) {
            (Some(l), None) => Ok(l),
            (None, _) => Err(PluginError::Malformed(format!("{source}: no {media_type} layer"))),
            (Some(_), Some(_)) => Err(PluginError::Malformed(format!("{source}: several {media_type} layers"))),
        }
    };
    let wasm = layer(WASM_TYPE)?;
    let signed_layer = layer(SIGNED_MANIFEST_TYPE)?;
    if signed_layer.size > 256 << 10 {
        return Err(PluginError::Malformed(format!("{source}: the signed manifest layer is too large")));
    }
    let signed: SignedManifest = serde_json::from_slice(&blob(http, source, signed_layer)?)
        .map_err(|e| PluginError::Malformed(format!("{source}: signed manifest layer: {e}")))?;
    let manifest_bytes = base64::engine::general_purpose::STANDARD
        .decode(signed.manifest.as_bytes())
        .map_err(|_| PluginError::Malformed(format!("{source}: signed manifest layer: manifest is not base64")))?;
    let parsed = super::Manifest::parse(&manifest_bytes)?;
    let component = blob(http, source, wasm)?;
    Ok(Package { manifest_bytes, manifest: parsed, signature: Some(signed.signature), component })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r = Reference::parse("oci://127.0.0.1:5000/toka/echo:1.0.0").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.reference.as_str()),
            ("127.0.0.1:5000", "toka/echo", "1.0.0")
        );
        assert_eq!(r.base(), "http://127.0.0.1:5000");
        assert_eq!(Reference::parse("oci://ghcr.io/a/b").unwrap().reference, "latest");
        assert_eq!(Reference::parse("oci://ghcr.io/a/b").unwrap().base(), "https://ghcr.io");
        let d = format!("oci://h/a@sha256:{}", "a".repeat(64));
        assert_eq!(Reference::parse(&d).unwrap().to_string(), d);
        for bad in ["http://h/a", "oci://h", "oci://h/A", "oci://h/a:..", "oci://h/a@sha256:xyz", "oci://h/../a"] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }
}
