//! Who is asking: every route but `/health` needs `Authorization: Bearer <token>`, a Biscuit token verified against
//! the home's root keys (through the process's verified-token cache) and checked against the home's revocations on
//! every request. What a request may do is what its token allows: a run is authorized with the bearer token
//! attenuated to exactly that run; reading runs, events, agents, tools and metrics needs `api:read`, and sees only the
//! token's own agent unless the token is for the agent `*`.

use super::error::ApiError;
use crate::runtime::Host;
use crate::token::{Grant, RunRequest, TokenLimits, Verified};
use axum::http::HeaderMap;
use std::sync::Arc;
use std::time::SystemTime;

/// Largest bearer token accepted, in bytes.
pub const MAX_TOKEN: usize = 64 << 10;

/// A verified bearer.
#[derive(Debug, Clone)]
pub struct Bearer {
    /// The token's text (runs are authorized with it, attenuated).
    pub text: String,
    pub verified: Arc<Verified>,
}

impl Bearer {
    /// The agent the token is for (`*`: every agent).
    pub fn agent(&self) -> &str {
        self.verified.agent.as_deref().unwrap_or_default()
    }

    /// Whether the token may see `agent`'s records.
    pub fn sees(&self, agent: &str) -> bool {
        self.agent() == "*" || self.agent() == agent
    }

    /// `None` for a token that sees every agent, else its one agent.
    pub fn scope(&self) -> Option<String> {
        (self.agent() != "*").then(|| self.agent().to_string())
    }
}

/// Verifies the request's bearer token.
pub fn bearer(host: &Host, headers: &HeaderMap) -> Result<Bearer, ApiError> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token>"))?;
    let value = value.to_str().map_err(|_| ApiError::unauthorized("the Authorization header is not text"))?;
    let text = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <token>`"))?
        .trim();
    verify(host, text)
}

/// Verifies a bearer token's text: against the home's root keys, then its revocations.
pub fn verify(host: &Host, text: &str) -> Result<Bearer, ApiError> {
    if text.is_empty() || text.len() > MAX_TOKEN {
        return Err(ApiError::unauthorized(format!("the bearer token must be 1 to {MAX_TOKEN} bytes")));
    }
    let keys = crate::token::keys::KeyStore::current(&host.home().dir).map_err(ApiError::internal)?;
    let verified = crate::token::cache::global().verify(&keys, text, SystemTime::now()).map_err(|e| {
        ApiError::new(axum::http::StatusCode::UNAUTHORIZED, "token-refused", format!("token refused: {e}"))
    })?;
    match crate::token::revoked_among(host.db(), &verified.revocation_ids) {
        Ok(None) => {}
        Ok(Some(id)) => {
            let why = format!("token refused: token is revoked (revocation id {id})");
            return Err(ApiError::new(axum::http::StatusCode::UNAUTHORIZED, "token-refused", why));
        }
        Err(e) => return Err(ApiError::internal(format!("reading revocations: {e}"))),
    }
    Ok(Bearer { text: text.to_string(), verified })
}

/// Verifies the bearer and checks that it grants `api:read` now (expiry, windows and all).
pub fn reader(host: &Host, headers: &HeaderMap) -> Result<Bearer, ApiError> {
    let bearer = bearer(host, headers)?;
    let request = RunRequest {
        agent: bearer.agent().to_string(),
        grants: vec![Grant { kind: "api".into(), value: "read".into(), mode: String::new() }],
        limits: TokenLimits::default(),
        component: None,
        plugin: None,
    };
    crate::token::authorize(&bearer.verified, &request, SystemTime::now()).map_err(|(grant, reason)| {
        ApiError::forbidden(format!("the token does not allow {grant}: {}", crate::error::one_line(&reason)))
    })?;
    Ok(bearer)
}
