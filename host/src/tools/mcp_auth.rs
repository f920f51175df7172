//! Who may use the MCP server over HTTP, and from where: the gate in front of every streamable HTTP request.
//!
//! In order, for every request (any method, any path):
//! 1. **Host** must name this server: the bound address, `localhost:PORT` when bound to loopback, or an
//!    `--allow-host`. A web page on another name that resolves to this machine (DNS rebinding) is refused, 403.
//! 2. **Origin**, if present, must be one of `--allow-origin`; without the flag, a request carrying any Origin (which
//!    browsers add to cross-site requests) is refused, 403. Clients that are not browsers send none.
//! 3. **Authorization: Bearer TOKEN**: a Biscuit verified against the home's root keys, not revoked in the home's
//!    database (checked on every request), valid now, for the per-call limits the server asks. Missing or bad: 401.
//!    The request then runs as the token's agent, with the server's grants narrowed to what the token covers (see
//!    [`BearerAuth::caller`]); the tools it may list and call are those both tokens grant.
//! 4. A request naming an MCP session must carry a token with the same revocation id as the one that opened it: a
//!    session id alone gives nothing, and another client's session (its pending responses) is not readable with
//!    another valid token. 403 otherwise; a session this gate does not know is 404.
//!
//! Refusals are one-line JSON, `{"error": "..."}`. This module must never let a request through to the MCP service
//! without an authenticated client, except with `--no-auth`, which the command allows on loopback only.

use super::call::Caller;
use crate::db::Db;
use crate::error::one_line;
use crate::grants::{Authorized, NetPeer};
use crate::token::{self, Grant, RunRequest, TokenLimits};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Longest `Authorization` header read (a token with many attenuation blocks stays far below).
const MAX_AUTHORIZATION: usize = 64 << 10;
/// Sessions whose owner the gate remembers; the oldest is forgotten (and refused from then on) past this.
const MAX_SESSIONS: usize = 4096;
/// The header that names an MCP session (streamable HTTP).
const SESSION: &str = "mcp-session-id";

/// The authenticated client of one request, handed to the MCP service in the request's extensions.
#[derive(Debug, Clone)]
pub struct Client(pub Arc<Caller>);

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 401: no token, or one that does not verify, is revoked or expired.
    Unauthorized(String),
    /// 403: wrong Host or Origin, or another token's session.
    Forbidden(String),
    /// 404: a session this server does not know (any more).
    UnknownSession,
    /// 500: the host could not check (its key file or database failed).
    Host(String),
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Refusal::Forbidden(_) => StatusCode::FORBIDDEN,
            Refusal::UnknownSession => StatusCode::NOT_FOUND,
            Refusal::Host(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn message(&self) -> String {
        match self {
            Refusal::Unauthorized(m) | Refusal::Forbidden(m) | Refusal::Host(m) => one_line(m),
            Refusal::UnknownSession => "unknown MCP session: initialize a new one".into(),
        }
    }

    /// The HTTP response: the status and a one-line JSON error.
    pub fn response(&self) -> Response {
        let body = serde_json::json!({ "error": self.message() }).to_string();
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = self.status();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Refusal::Unauthorized(_) = self {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(r#"Bearer realm="toka-host mcp""#));
        }
        response
    }
}

/// How bearer tokens are checked: the home's keys and database, and the server's own caller, whose grants bound
/// every client.
#[derive(Debug)]
pub struct BearerAuth {
    /// The home whose root keys verify tokens.
    pub home: PathBuf,
    /// The database whose revocations refuse tokens.
    pub db: Db,
    /// The server's own caller: its token decides what is served, its grants bound each client's.
    pub server: Caller,
    /// What each call asks of a token (fuel, memory, time): a token whose ceilings are lower is refused.
    pub limits: TokenLimits,
}

impl BearerAuth {
    /// The caller a bearer token makes: verified, not revoked, valid now for the server's per-call limits; its
    /// agent and rate; the server's grants narrowed to those the token covers (a read-write directory the token
    /// covers only read-only is passed on read-only).
    pub fn caller(&self, text: &str) -> Result<Caller, Refusal> {
        let now = SystemTime::now();
        let keys = token::keys::KeyStore::current(&self.home)
            .map_err(|e| Refusal::Host(format!("cannot read the root keys: {e}")))?;
        let verified = token::cache::global()
            .verify(&keys, text, now)
            .map_err(|e| Refusal::Unauthorized(format!("token refused: {e}")))?;
        match token::revoked_among(&self.db, &verified.revocation_ids) {
            Ok(None) => {}
            Ok(Some(id)) => return Err(Refusal::Unauthorized(format!("token refused: revoked (revocation id {id})"))),
            Err(e) => return Err(Refusal::Host(format!("reading revocations: {e}"))),
        }
        let agent = verified.agent.clone().unwrap_or_default();
        let base =
            RunRequest { agent: agent.clone(), grants: Vec::new(), limits: self.limits, component: None, plugin: None };
        token::authorize(&verified, &base, now)
            .map_err(|(grant, reason)| Refusal::Unauthorized(format!("token refused: {grant}: {reason}")))?;
        let covers = |grant: Grant| {
            let request = RunRequest { grants: vec![grant], ..base.clone() };
            token::authorize(&verified, &request, now).is_ok()
        };
        let mut grants = narrow(&self.server.grants, covers);
        let token_id = verified.revocation_ids.last().cloned().unwrap_or_default();
        grants.token_id = token_id.clone();
        grants.rate = verified.rate;
        grants.token = Some(verified.clone());
        Ok(Caller {
            agent,
            run_id: None,
            token_id,
            rate: verified.rate,
            token: verified,
            grants,
            depth: 0,
            deadline: self.server.deadline,
            max_memory: self.server.max_memory,
            component: None,
            plugin: None,
            budget: None,
            cancel: None,
            llm: None,
        })
    }
}

/// The part of `server`'s grants that `covers` (a token's check of one grant) allows.
fn narrow(server: &Authorized, covers: impl Fn(Grant) -> bool) -> Authorized {
    let g = |kind: &str, value: String, mode: &str| Grant { kind: kind.into(), value, mode: mode.into() };
    let mut out = Authorized::default();
    for dir in &server.dirs {
        let path = token::normalize_dir(&dir.host.to_string_lossy()).unwrap_or_default();
        if !dir.read_only && covers(g("fs", path.clone(), "rw")) {
            out.dirs.push(dir.clone());
        } else if covers(g("fs", path, "ro")) {
            out.dirs.push(dir.with_mode(true));
        }
    }
    out.env = server.env.iter().filter(|(name, _)| covers(g("env", name.clone(), ""))).cloned().collect();
    let peers: Vec<NetPeer> =
        server.peers.iter().filter(|p| covers(g("net", p.grant.canonical(), ""))).cloned().collect();
    out.net = peers.iter().flat_map(|p| p.addrs.iter().copied()).filter(|a| server.net.contains(a)).collect();
    out.peers = peers;
    out
}

/// The gate's settings and the sessions it has seen.
#[derive(Debug)]
pub struct HttpGate {
    /// Accepted `Host` values, lowercase `host:port`.
    hosts: BTreeSet<String>,
    /// Accepted `Origin` values, normalized (see [`normalize_origin`]).
    origins: BTreeSet<String>,
    /// `None`: `--no-auth` (loopback only): every request runs as the server's own caller.
    auth: Option<BearerAuth>,
    sessions: Mutex<Sessions>,
}

/// Which token (revocation id) opened each session, oldest first.
#[derive(Debug, Default)]
struct Sessions {
    owner: HashMap<String, String>,
    order: VecDeque<String>,
}

impl HttpGate {
    /// A gate for a server bound at `bound`. `allow_hosts` adds accepted `Host` values (`name` or `name:port`; the
    /// bound port when none is given); `allow_origins` the accepted `Origin`s. Fails if a value does not parse, or
    /// if the server is bound to a wildcard address and no `--allow-host` says which name clients use.
    pub fn new(
        bound: SocketAddr,
        allow_hosts: &[String],
        allow_origins: &[String],
        auth: Option<BearerAuth>,
    ) -> Result<HttpGate, String> {
        let mut hosts = BTreeSet::new();
        if bound.ip().is_unspecified() {
            if allow_hosts.is_empty() {
                return Err(format!(
                    "bound to {bound}, every address of this machine: name the host clients use with --allow-host \
                     NAME[:PORT]"
                ));
            }
        } else {
            hosts.insert(bound.to_string());
        }
        if bound.ip().is_loopback() {
            hosts.insert(format!("localhost:{}", bound.port()));
        }
        for host in allow_hosts {
            hosts.insert(normalize_host(host, bound.port()).ok_or_else(|| {
                format!("invalid --allow-host `{host}`: expected NAME[:PORT], IPV4[:PORT] or [IPV6][:PORT]")
            })?);
        }
        let mut origins = BTreeSet::new();
        for origin in allow_origins {
            origins.insert(normalize_origin(origin).ok_or_else(|| {
                format!("invalid --allow-origin `{origin}`: expected SCHEME://HOST[:PORT] (for example http://localhost:3000)")
            })?);
        }
        Ok(HttpGate { hosts, origins, auth, sessions: Mutex::default() })
    }

    /// The `Host` values this gate accepts.
    pub fn hosts(&self) -> impl Iterator<Item = &String> {
        self.hosts.iter()
    }

    /// Steps 1 to 3 of the module documentation: the client of a request, or why it is refused. `None` with
    /// `--no-auth`.
    pub fn check(&self, headers: &HeaderMap, uri: &axum::http::Uri) -> Result<Option<Client>, Refusal> {
        let host = match headers.get(header::HOST) {
            Some(value) => value.to_str().ok().map(str::to_ascii_lowercase),
            None => uri.authority().map(|a| a.as_str().to_ascii_lowercase()),
        };
        match host {
            Some(h) if self.hosts.contains(&h) => {}
            Some(h) => {
                return Err(Refusal::Forbidden(format!(
                    "Host `{}` is not this server's (possible DNS rebinding); use {}",
                    h.chars().take(100).collect::<String>(),
                    self.hosts.iter().cloned().collect::<Vec<_>>().join(" or ")
                )));
            }
            None => return Err(Refusal::Forbidden("missing or unreadable Host header".into())),
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let normalized = origin.to_str().ok().and_then(normalize_origin);
            if !normalized.is_some_and(|o| self.origins.contains(&o)) {
                let shown: String = String::from_utf8_lossy(origin.as_bytes()).chars().take(100).collect();
                return Err(Refusal::Forbidden(format!("Origin `{shown}` is not allowed (--allow-origin)")));
            }
        }
        let Some(auth) = &self.auth else { return Ok(None) };
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Err(Refusal::Unauthorized(
                "missing bearer token: send `Authorization: Bearer TOKEN` (toka-host token mint ...)".into(),
            ));
        };
        if value.len() > MAX_AUTHORIZATION {
            return Err(Refusal::Unauthorized(format!("Authorization header over {MAX_AUTHORIZATION} bytes")));
        }
        let text = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| !token.is_empty())
            .ok_or_else(|| Refusal::Unauthorized("the Authorization header is not `Bearer TOKEN`".into()))?;
        auth.caller(text).map(|c| Some(Client(Arc::new(c))))
    }

    /// Step 4: a request that names a session must come from the token that opened it.
    fn check_session(&self, session: &str, owner: &str) -> Result<(), Refusal> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        match sessions.owner.get(session) {
            Some(o) if o == owner => Ok(()),
            Some(_) => Err(Refusal::Forbidden("this MCP session was opened with another token".into())),
            None => Err(Refusal::UnknownSession),
        }
    }

    fn remember_session(&self, session: String, owner: String) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if sessions.owner.insert(session.clone(), owner).is_none() {
            sessions.order.push_back(session);
        }
        while sessions.order.len() > MAX_SESSIONS {
            if let Some(oldest) = sessions.order.pop_front() {
                sessions.owner.remove(&oldest);
            }
        }
    }

    fn forget_session(&self, session: &str) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if sessions.owner.remove(session).is_some() {
            sessions.order.retain(|s| s != session);
        }
    }
}

/// The axum middleware: see the module documentation.
pub async fn gate(State(gate): State<Arc<HttpGate>>, mut request: Request, next: Next) -> Response {
    let client = match gate.check(request.headers(), request.uri()) {
        Ok(client) => client,
        Err(refusal) => return refusal.response(),
    };
    let owner = client.as_ref().map(|c| c.0.token_id.clone()).unwrap_or_default();
    let session = request.headers().get(SESSION).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    if let Some(s) = &session
        && let Err(refusal) = gate.check_session(s, &owner)
    {
        return refusal.response();
    }
    let closing = request.method() == axum::http::Method::DELETE;
    if let Some(client) = client {
        request.extensions_mut().insert(client);
    }
    let response = next.run(request).await;
    match &session {
        None => {
            if let Some(opened) = response.headers().get(SESSION) {
                gate.remember_session(String::from_utf8_lossy(opened.as_bytes()).into_owned(), owner);
            }
        }
        Some(s) if closing && response.status().is_success() => gate.forget_session(s),
        Some(_) => {}
    }
    response
}

/// `name[:port]`, `ipv4[:port]` or `[ipv6][:port]` as a `Host` header shows it: lowercase, with the port (`port` if
/// none is given).
fn normalize_host(text: &str, port: u16) -> Option<String> {
    let text = text.to_ascii_lowercase();
    let (host, given) = if let Some(rest) = text.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let ip: std::net::Ipv6Addr = ip.parse().ok()?;
        let given = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?.parse::<u16>().ok()?),
        };
        (format!("[{ip}]"), given)
    } else {
        let (host, given) = match text.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p.parse::<u16>().ok()?)),
            None => (text.clone(), None),
        };
        if host.parse::<std::net::Ipv4Addr>().is_err() {
            crate::grants::canonical_name(&host).filter(|n| *n == host)?;
        }
        (host, given)
    };
    Some(format!("{host}:{}", given.unwrap_or(port)))
}

/// An Origin as compared: `null`, or `scheme://host[:port]` lowercased, without the scheme's default port (80 for
/// http, 443 for https) and without a path. `None` if it is neither.
pub fn normalize_origin(text: &str) -> Option<String> {
    let text = text.trim().to_ascii_lowercase();
    if text == "null" {
        return Some(text);
    }
    let (scheme, rest) = text.split_once("://")?;
    if scheme.is_empty() || !scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) {
        return None;
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    let default = match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    };
    let authority = normalize_host(rest, default.unwrap_or(0))?;
    let authority = match default {
        Some(p) => authority.strip_suffix(&format!(":{p}")).map(str::to_string).unwrap_or(authority),
        None => authority.strip_suffix(":0").map(str::to_string).unwrap_or(authority),
    };
    Some(format!("{scheme}://{authority}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn uri() -> axum::http::Uri {
        "/mcp".parse().unwrap()
    }

    #[test]
    fn hosts_name_this_server_only() {
        let bound: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let gate = HttpGate::new(bound, &["MCP.Example:9000".into()], &[], None).unwrap();
        for ok in ["127.0.0.1:8080", "localhost:8080", "LOCALHOST:8080", "mcp.example:9000"] {
            assert!(matches!(gate.check(&headers(&[("host", ok)]), &uri()), Ok(None)), "{ok}");
        }
        for bad in ["evil.example:8080", "localhost:8081", "127.0.0.1", "localhost", "127.0.0.1:8080.evil", ""] {
            let refused = gate.check(&headers(&[("host", bad)]), &uri()).unwrap_err();
            assert!(matches!(refused, Refusal::Forbidden(_)), "{bad}: {refused:?}");
        }
        assert!(matches!(gate.check(&headers(&[]), &uri()), Err(Refusal::Forbidden(_))));
        let v6 = HttpGate::new("[::1]:8080".parse().unwrap(), &[], &[], None).unwrap();
        assert_eq!(v6.hosts().cloned().collect::<Vec<_>>(), ["[::1]:8080", "localhost:8080"]);
        let public = HttpGate::new("192.0.2.1:80".parse().unwrap(), &[], &[], None).unwrap();
        assert_eq!(public.hosts().cloned().collect::<Vec<_>>(), ["192.0.2.1:80"], "no localhost off loopback");
        let wildcard = HttpGate::new("0.0.0.0:80".parse().unwrap(), &[], &[], None).unwrap_err();
        assert!(wildcard.contains("--allow-host"), "{wildcard}");
        assert!(HttpGate::new(bound, &["a b".into()], &[], None).is_err());
    }

    #[test]
    fn origins_must_be_listed() {
        let bound: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let host = ("host", "127.0.0.1:8080");
        let none = HttpGate::new(bound, &[], &[], None).unwrap();
        assert!(matches!(none.check(&headers(&[host]), &uri()), Ok(None)), "no Origin: not a browser");
        assert!(matches!(
            none.check(&headers(&[host, ("origin", "http://127.0.0.1:8080")]), &uri()),
            Err(Refusal::Forbidden(_))
        ));
        let listed =
            HttpGate::new(bound, &[], &["http://localhost:3000".into(), "HTTPS://App.Example".into()], None).unwrap();
        for ok in ["http://localhost:3000", "https://app.example", "https://app.example:443", "http://LOCALHOST:3000/"]
        {
            assert!(matches!(listed.check(&headers(&[host, ("origin", ok)]), &uri()), Ok(None)), "{ok}");
        }
        for bad in ["http://localhost:3001", "https://localhost:3000", "null", "http://app.example", "garbage"] {
            assert!(listed.check(&headers(&[host, ("origin", bad)]), &uri()).is_err(), "{bad}");
        }
        assert!(HttpGate::new(bound, &[], &["localhost:3000".into()], None).is_err(), "an origin has a scheme");
    }

    #[test]
    fn sessions_belong_to_the_token_that_opened_them() {
        let gate = HttpGate::new("127.0.0.1:1".parse().unwrap(), &[], &[], None).unwrap();
        gate.remember_session("s1".into(), "token-a".into());
        assert_eq!(gate.check_session("s1", "token-a"), Ok(()));
        assert!(matches!(gate.check_session("s1", "token-b"), Err(Refusal::Forbidden(_))));
        assert_eq!(gate.check_session("s2", "token-a"), Err(Refusal::UnknownSession));
        for i in 0..MAX_SESSIONS + 10 {
            gate.remember_session(format!("x{i}"), "t".into());
        }
        assert_eq!(gate.check_session("s1", "token-a"), Err(Refusal::UnknownSession), "the oldest is forgotten");
        assert_eq!(gate.sessions.lock().unwrap().owner.len(), MAX_SESSIONS);
        gate.forget_session(&format!("x{}", MAX_SESSIONS + 9));
        assert_eq!(gate.sessions.lock().unwrap().order.len(), MAX_SESSIONS - 1);
    }
}
