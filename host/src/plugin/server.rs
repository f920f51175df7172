//! `toka-host registry serve`: a package registry over HTTP (axum). It keeps its packages and index in one
//! directory (`DIR/packages/NAME/VERSION.tokapkg`, `DIR/index.json`, its signing key `DIR/registry-key.json`).
//!
//! Routes: `GET /v1/index` (the index, signed by the registry key at the time of the request), `GET /v1/search`,
//! `GET /v1/packages/NAME/VERSION` (the package file; `Range: bytes=N-` resumes), `POST /v1/packages` (publish;
//! bearer token granting `publish:NAME` or `publish:*` from the `--home` key store), `POST
//! /v1/packages/NAME/VERSION/yank` (same token). A name belongs to the publisher key that first published it; a
//! version, once published, never changes. The registry checks what it accepts (structure, the package's own
//! signature, digest) but installers never rely on that: they check everything again against their own trust.

use super::PluginError;
use super::index::{Entry, FORMAT, Index};
use super::package::Package;
use super::publisher::PublisherKey;
use crate::home::Home;
use crate::token::{Grant, RunRequest, TokenLimits};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Most versions of one package name in the index.
pub const MAX_VERSIONS: usize = 256;
/// Room kept below the clients' largest index, for yanks and the signing time.
const INDEX_MARGIN: usize = 64 << 10;

/// A registry being served.
pub struct Registry {
    dir: PathBuf,
    key: PublisherKey,
    home: Home,
    db: crate::db::Db,
    index: Mutex<Index>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// An error answer: status, code, one-line message (the service's JSON error shape).
struct Refusal(StatusCode, &'static str, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.1, "message": crate::error::one_line(&self.2)}});
        (self.0, Json(body)).into_response()
    }
}

impl From<PluginError> for Refusal {
    fn from(e: PluginError) -> Self {
        let status = match e {
            PluginError::Host(_) => StatusCode::INTERNAL_SERVER_ERROR,
            PluginError::NotFound(_) => StatusCode::NOT_FOUND,
            PluginError::WrongPublisher(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_REQUEST,
        };
        Refusal(status, "refused", e.to_string())
    }
}

impl Registry {
    /// Opens (or creates) the registry in `dir`, with `name` and tokens checked against `home`.
    pub fn open(dir: PathBuf, name: &str, home: Home) -> Result<Registry, PluginError> {
        super::manifest::check_name("registry name", name)?;
        crate::home::private_dir(&dir.join("packages")).map_err(PluginError::host)?;
        let key_path = dir.join("registry-key.json");
        let key = if key_path.exists() {
            PublisherKey::load_at(&key_path)?
        } else {
            let key = PublisherKey::generate(name)?;
            key.save_at(&key_path)?;
            key
        };
        let index_path = dir.join("index.json");
        let index = match std::fs::read(&index_path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| PluginError::host(format!("{}: corrupt index: {e}", index_path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Index { format: FORMAT, registry: name.to_string(), version: 0, time_ms: 0, entries: Vec::new() }
            }
            Err(e) => return Err(PluginError::host(format!("{}: {e}", index_path.display()))),
        };
        home.ensure_dir().map_err(PluginError::host)?;
        let db = home.open_db().map_err(PluginError::host)?;
        Ok(Registry { dir, key, home, db, index: Mutex::new(index) })
    }

    pub fn public_hex(&self) -> String {
        self.key.public_hex()
    }

    fn package_path(&self, name: &str, version: &str) -> PathBuf {
        self.dir.join("packages").join(name).join(format!("{version}.tokapkg"))
    }

    fn save_index(&self, index: &Index) -> Result<(), PluginError> {
        let p = self.dir.join("index.json");
        crate::home::write_private(&p, &serde_json::to_vec_pretty(index).expect("indexes serialize"))
            .map_err(|e| PluginError::host(format!("{}: {e}", p.display())))
    }

    /// Checks the bearer token: well formed, signed by a root key of the registry's home, not revoked. What it allows
    /// is [`Registry::authorize`]'s to check.
    fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<crate::token::Verified>, Refusal> {
        let unauthorized = |m: String| Refusal(StatusCode::UNAUTHORIZED, "unauthorized", m);
        let value = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| unauthorized("publishing needs Authorization: Bearer <token>".into()))?;
        if value.is_empty() || value.len() > 64 << 10 {
            return Err(unauthorized("the bearer token must be 1 to 65536 bytes".into()));
        }
        let now = SystemTime::now();
        let keys = crate::token::keys::KeyStore::current(&self.home.dir).map_err(|e| unauthorized(e.to_string()))?;
        let verified =
            crate::token::cache::global().verify(&keys, value, now).map_err(|e| unauthorized(e.to_string()))?;
        match crate::token::revoked_among(&self.db, &verified.revocation_ids) {
            Ok(None) => {}
            Ok(Some(id)) => return Err(unauthorized(format!("token is revoked (revocation id {id})"))),
            Err(e) => return Err(Refusal(StatusCode::INTERNAL_SERVER_ERROR, "host-error", e.to_string())),
        }
        Ok(verified)
    }

    /// Checks the bearer token grants `publish:NAME` (or `publish:*`).
    fn authorize(&self, headers: &HeaderMap, name: &str) -> Result<String, Refusal> {
        let now = SystemTime::now();
        let verified = self.authenticate(headers)?;
        let agent = verified.agent.clone().unwrap_or_default();
        let request = RunRequest {
            agent: agent.clone(),
            grants: vec![Grant { kind: "publish".into(), value: name.into(), mode: String::new() }],
            limits: TokenLimits::default(),
            component: None,
            plugin: None,
        };
        crate::token::authorize(&verified, &request, now).map_err(|(grant, reason)| {
            Refusal(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("the token does not allow {grant}: {}", crate::error::one_line(&reason)),
            )
        })?;
        Ok(agent)
    }

    /// Publishes a package: well formed, signed by the key it names, its component matching its digest, its name
    /// free or owned by that key, its version new.
    fn publish(&self, headers: &HeaderMap, body: &[u8]) -> Result<Entry, Refusal> {
        let package = Package::parse(body)?;
        let m = &package.manifest;
        self.authorize(headers, &m.name)?;
        let signature = package
            .signature
            .as_ref()
            .ok_or_else(|| Refusal(StatusCode::BAD_REQUEST, "refused", "the package is not signed".into()))?;
        let public = super::publisher::parse_public(&signature.public_key)
            .map_err(|e| Refusal(StatusCode::BAD_REQUEST, "refused", e))?;
        if super::publisher::key_id(&public.to_bytes()) != signature.key_id || signature.key_id != m.publisher.key_id {
            return Err(Refusal(
                StatusCode::BAD_REQUEST,
                "refused",
                "the signature's key is not the key the manifest names".into(),
            ));
        }
        super::publisher::verify(&public, &package.manifest_bytes, &signature.signature)?;
        package.check_component()?;
        let mut index = self.index.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(owner) = index.entries.iter().find(|e| e.name == m.name && e.key_id != m.publisher.key_id) {
            return Err(Refusal(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("{} belongs to publisher {} (key {})", m.name, owner.publisher, owner.key_id),
            ));
        }
        if index.entries.iter().any(|e| e.name == m.name && e.version == m.version) {
            return Err(Refusal(StatusCode::CONFLICT, "conflict", format!("{} is already published", package.id())));
        }
        let path = self.package_path(&m.name, &m.version);
        if let Some(parent) = path.parent() {
            crate::home::private_dir(parent).map_err(|e| Refusal::from(PluginError::host(e)))?;
        }
        crate::home::write_private(&path, body).map_err(|e| Refusal::from(PluginError::host(e)))?;
        let entry = Entry {
            name: m.name.clone(),
            version: m.version.clone(),
            kind: m.kind,
            description: m.description.clone(),
            keywords: m.keywords.clone(),
            grants: m.grants.clone(),
            publisher: m.publisher.name.clone(),
            key_id: m.publisher.key_id.clone(),
            sha256: m.component.sha256.clone(),
            package_sha256: super::sha256_hex(body),
            package_size: body.len() as u64,
            published_ms: crate::events::now_ms(),
            yanked: false,
        };
        // The index stays one that every client accepts: a publisher (even one allowed a single name) must not be
        // able to grow it past the clients' limits and so break it for every package.
        let versions = index.entries.iter().filter(|e| e.name == m.name).count();
        if versions >= MAX_VERSIONS {
            return Err(Refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                format!("{} has {versions} versions published, the most a name may have", m.name),
            ));
        }
        let mut next = index.clone();
        next.entries.push(entry.clone());
        next.version += 1;
        next.time_ms = crate::events::now_ms();
        let size = serde_json::to_vec(&next.sign(&self.key)).map_or(usize::MAX, |v| v.len());
        if next.entries.len() > super::index::MAX_ENTRIES || size > super::index::MAX_INDEX - INDEX_MARGIN {
            return Err(Refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                format!("the index would be {size} bytes and {} entries, over what clients accept", next.entries.len()),
            ));
        }
        self.save_index(&next)?;
        *index = next;
        tracing::info!(package = %package.id(), "published");
        Ok(entry)
    }

    fn yank(&self, headers: &HeaderMap, name: &str, version: &str) -> Result<Entry, Refusal> {
        self.authorize(headers, name)?;
        let mut index = self.index.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut next = index.clone();
        let entry =
            next.entries.iter_mut().find(|e| e.name == name && e.version == version).ok_or_else(|| {
                Refusal(StatusCode::NOT_FOUND, "not-found", format!("{name}@{version} is not published"))
            })?;
        entry.yanked = true;
        let entry = entry.clone();
        next.version += 1;
        next.time_ms = crate::events::now_ms();
        self.save_index(&next)?;
        *index = next;
        Ok(entry)
    }

    /// The index signed now.
    fn signed_index(&self) -> super::index::Envelope {
        let mut index = self.index.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        index.time_ms = crate::events::now_ms();
        index.sign(&self.key)
    }
}

/// The registry's routes.
pub fn router(registry: Arc<Registry>, max_body: usize) -> axum::Router {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/v1/index", get(index))
        .route("/v1/search", get(search))
        .route("/v1/packages/{name}/{version}", get(download))
        .merge(
            axum::Router::new()
                .route("/v1/packages", post(publish))
                .route("/v1/packages/{name}/{version}/yank", post(yank))
                .route_layer(axum::middleware::from_fn_with_state(registry.clone(), authenticated_first)),
        )
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .with_state(registry)
}

/// Refuses a write whose bearer token does not authenticate before anything reads its body: an unauthenticated
/// client never has a package of up to `--max-body` read, buffered and parsed.
async fn authenticated_first(
    State(r): State<Arc<Registry>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let checked = {
        let r = r.clone();
        let headers = request.headers().clone();
        tokio::task::spawn_blocking(move || r.authenticate(&headers).map(drop)).await
    };
    match checked {
        Ok(Ok(())) => next.run(request).await,
        Ok(Err(refusal)) => refusal.into_response(),
        Err(e) => Refusal(StatusCode::INTERNAL_SERVER_ERROR, "host-error", e.to_string()).into_response(),
    }
}

async fn index(State(r): State<Arc<Registry>>) -> Response {
    Json(r.signed_index()).into_response()
}

#[derive(serde::Deserialize)]
struct SearchQuery {
    #[serde(default)]
    q: String,
    kind: Option<String>,
}

async fn search(State(r): State<Arc<Registry>>, Query(q): Query<SearchQuery>) -> Result<Response, Refusal> {
    let kind = q
        .kind
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e| Refusal(StatusCode::BAD_REQUEST, "invalid-request", e))?;
    let index = r.index.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let hits: Vec<Entry> = index.search(&q.q, kind).into_iter().cloned().collect();
    Ok(Json(serde_json::json!({ "results": hits })).into_response())
}

async fn publish(State(r): State<Arc<Registry>>, headers: HeaderMap, body: Bytes) -> Result<Response, Refusal> {
    let entry = tokio::task::spawn_blocking(move || r.publish(&headers, &body))
        .await
        .map_err(|e| Refusal(StatusCode::INTERNAL_SERVER_ERROR, "host-error", e.to_string()))??;
    Ok((StatusCode::CREATED, Json(entry)).into_response())
}

async fn yank(
    State(r): State<Arc<Registry>>,
    UrlPath((name, version)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    Ok(Json(r.yank(&headers, &name, &version)?).into_response())
}

async fn download(
    State(r): State<Arc<Registry>>,
    UrlPath((name, version)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let not_found = || Refusal(StatusCode::NOT_FOUND, "not-found", format!("{name}@{version} is not published"));
    // Only what the index lists is served (never a path built from unchecked input).
    let listed = r
        .index
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .entries
        .iter()
        .any(|e| e.name == name && e.version == version);
    if !listed {
        return Err(not_found());
    }
    let bytes = tokio::fs::read(r.package_path(&name, &version)).await.map_err(|_| not_found())?;
    let total = bytes.len();
    let start = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.strip_suffix('-'))
        .and_then(|v| v.parse::<usize>().ok());
    let mut response = match start {
        Some(start) if start < total => {
            let mut r = (StatusCode::PARTIAL_CONTENT, bytes[start..].to_vec()).into_response();
            let range = format!("bytes {start}-{}/{total}", total - 1);
            r.headers_mut().insert(header::CONTENT_RANGE, HeaderValue::from_str(&range).expect("ascii"));
            r
        }
        Some(_) => {
            let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            let range = format!("bytes */{total}");
            r.headers_mut().insert(header::CONTENT_RANGE, HeaderValue::from_str(&range).expect("ascii"));
            r
        }
        None => bytes.into_response(),
    };
    response.headers_mut().insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/vnd.toka.package.v1"));
    Ok(response)
}
