//! A client of `toka-host serve`'s API (`/v1`), for the CLI's `--server` forms (`run`, `runs`, `events`).
//!
//! Each call sends the bearer token and reads the answer as the service's wire types; an error answer keeps the
//! server's stable code and one-line message, and maps back to the outcome (and so the exit code) the same refusal
//! has locally. What the server sends is bounded here like anything that comes from outside: bodies and event
//! lines are size-capped, and an answer that is not the service's JSON is an error, never a panic. This module never
//! opens the home, the database or the keys: everything it knows comes over HTTP.

use crate::error::Outcome;
use crate::service::api::{EventView, RunPage, RunView, SubmitRun};
use std::time::Duration;

/// Largest answer body read, in bytes (a run's report carries its captured output).
pub const MAX_BODY: usize = 128 << 20;
/// Largest server-sent event read, in bytes.
pub const MAX_EVENT: usize = 8 << 20;
/// Largest error body read from a server (the rest is not read).
const MAX_ERROR_BODY: usize = 64 << 10;
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request that does not wait for a run may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection, a broken one, a timeout, or a bad URL.
    #[error("cannot reach the server at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The server answered with one of its errors.
    #[error("{message}")]
    Api { status: u16, code: String, message: String },
    /// Something answered, but not as a toka-host server does.
    #[error("{url} did not answer as a toka-host server: {reason}")]
    Protocol { url: String, reason: String },
}

impl ClientError {
    /// The outcome the same refusal has in a local run (its exit code is the CLI's).
    pub fn outcome(&self) -> Outcome {
        match self {
            ClientError::Unreachable { .. } | ClientError::Protocol { .. } => Outcome::Unreachable,
            ClientError::Api { code, .. } => Outcome::from_name(code).unwrap_or(match code.as_str() {
                "unauthorized" | "forbidden" => Outcome::TokenRefused,
                "invalid-request" | "too-large" => Outcome::InvalidInput,
                "not-found" => Outcome::FileNotFound,
                "queue-full" | "shutting-down" => Outcome::ServerBusy,
                _ => Outcome::HostError,
            }),
        }
    }

    /// The one line the CLI prints after `toka-host: `.
    pub fn line(&self) -> String {
        match self {
            ClientError::Api { code, message, .. } if code == "too-large" => {
                format!("{message} (the server's --max-body)")
            }
            other => crate::error::one_line(&other.to_string()),
        }
    }
}

/// Makes ring the process's TLS crypto provider: reqwest's rustls comes without one (aws-lc-rs is not in the
/// tree), and building any reqwest client (this one, the OTLP exporter's) without a provider panics. Installing
/// twice is not an error.
pub fn install_ring() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A server's API, called with one bearer token.
#[derive(Debug, Clone)]
pub struct Client {
    /// `scheme://host:port`, without a trailing slash.
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    /// A client of the server at `url` (`http://` or `https://`), sending `token`.
    pub fn new(url: &str, token: &str) -> Result<Client, ClientError> {
        let bad = |reason: &str| ClientError::Unreachable { url: url.to_string(), reason: reason.to_string() };
        let base = url.trim_end_matches('/');
        let parsed = reqwest::Url::parse(base).map_err(|e| bad(&e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(bad("expected http://HOST:PORT or https://HOST:PORT"));
        }
        if parsed.path() != "/" || parsed.query().is_some() {
            return Err(bad("give the server's address only (no path or query)"));
        }
        install_ring();
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            // A token is never sent anywhere but the server named.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| bad(&e.to_string()))?;
        Ok(Client { base: base.to_string(), token: token.to_string(), http })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// Whether the token travels in clear over a network (plain http to a host that is not loopback).
    pub fn in_clear(&self) -> bool {
        in_clear(&self.base)
    }

    fn unreachable(&self, e: &reqwest::Error) -> ClientError {
        // reqwest's message names the URL; its source says why.
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            reason = format!("{reason}: {s}");
            source = s.source();
        }
        ClientError::Unreachable { url: self.base.clone(), reason: crate::error::one_line(&reason) }
    }

    fn protocol(&self, reason: impl std::fmt::Display) -> ClientError {
        ClientError::Protocol { url: self.base.clone(), reason: crate::error::one_line(&reason.to_string()) }
    }

    /// Sends a request and reads its whole answer (bounded); an error status becomes [`ClientError::Api`].
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<(reqwest::header::HeaderMap, Vec<u8>), ClientError> {
        let mut response =
            request.bearer_auth(&self.token).timeout(timeout).send().await.map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.unreachable(&e))? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(self.protocol(format!("an answer over {MAX_BODY} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        if status.is_success() {
            return Ok((headers, body));
        }
        match serde_json::from_slice::<crate::service::api::ErrorBody>(&body) {
            Ok(e) => Err(ClientError::Api {
                status: status.as_u16(),
                code: e.error.code,
                message: crate::error::one_line(&e.error.message),
            }),
            Err(_) => Err(self.protocol(format!("status {status} without a toka-host error body"))),
        }
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, body: &[u8]) -> Result<T, ClientError> {
        serde_json::from_slice(body).map_err(|e| self.protocol(format!("unexpected answer: {e}")))
    }

    /// Submits a run and waits for it up to `wait` (the server answers 202 if it has not ended by then).
    pub async fn submit(&self, run: &SubmitRun, wait: Duration) -> Result<RunView, ClientError> {
        let body = serde_json::to_vec(run).map_err(|e| self.protocol(e))?;
        let request = self
            .http
            .post(format!("{}/v1/runs", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        let (_, body) = self.send(request, wait.saturating_add(REQUEST_TIMEOUT)).await?;
        self.parse(&body)
    }

    /// A run, waiting up to `wait` for it to end.
    pub async fn run(&self, run_id: &str, wait: Duration) -> Result<RunView, ClientError> {
        let url = format!("{}/v1/runs/{}?wait_ms={}", self.base, escape(run_id), wait.as_millis());
        let (_, body) = self.send(self.http.get(url), wait.saturating_add(REQUEST_TIMEOUT)).await?;
        self.parse(&body)
    }

    /// Asks the server to cancel a run.
    pub async fn cancel(&self, run_id: &str) -> Result<(), ClientError> {
        let url = format!("{}/v1/runs/{}/cancel", self.base, escape(run_id));
        self.send(self.http.post(url), REQUEST_TIMEOUT).await.map(drop)
    }

    /// A page of runs, newest first.
    pub async fn runs(&self, agent: Option<&str>, limit: usize, before: Option<u64>) -> Result<RunPage, ClientError> {
        let mut query = vec![("limit", limit.to_string())];
        query.extend(agent.map(|a| ("agent", a.to_string())));
        query.extend(before.map(|b| ("before", b.to_string())));
        let request = self.http.get(format!("{}/v1/runs", self.base)).query(&query);
        let (_, body) = self.send(request, REQUEST_TIMEOUT).await?;
        self.parse(&body)
    }

    /// Events matching `query` (see [`EventQuery`]), and the log's last sequence number when they were read (if
    /// the server says it).
    pub async fn events(&self, query: &EventQuery) -> Result<(Vec<EventView>, Option<u64>), ClientError> {
        let request = self.http.get(format!("{}/v1/events", self.base)).query(&query.pairs());
        let (headers, body) = self.send(request, REQUEST_TIMEOUT).await?;
        let head = headers.get(HEAD_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        Ok((self.parse(&body)?, head))
    }

    /// Opens the live stream of events matching `query`, after event `after` (`Last-Event-ID`).
    pub async fn stream(&self, query: &EventQuery, after: u64) -> Result<EventStream, ClientError> {
        let request = self
            .http
            .get(format!("{}/v1/events/stream", self.base))
            .query(&query.pairs())
            .header("Last-Event-ID", after.to_string())
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .bearer_auth(&self.token);
        let response = request.send().await.map_err(|e| self.unreachable(&e))?;
        if !response.status().is_success() {
            let status = response.status();
            // An error body is small: read at most 64 KiB of it (a hostile server may send one without end).
            let mut response = response;
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| self.unreachable(&e))? {
                if body.len() + chunk.len() > MAX_ERROR_BODY {
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            return Err(match serde_json::from_slice::<crate::service::api::ErrorBody>(&body) {
                Ok(e) => ClientError::Api {
                    status: status.as_u16(),
                    code: e.error.code,
                    message: crate::error::one_line(&e.error.message),
                },
                Err(_) => self.protocol(format!("status {status} without a toka-host error body")),
            });
        }
        Ok(EventStream { client: self.clone(), response, buffer: Vec::new(), data: Vec::new() })
    }
}

use crate::service::events::HEAD_HEADER;

/// Filters of an events listing or stream, as `toka-host events` takes them.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub agent: Option<String>,
    pub run: Option<String>,
    pub kind: Option<String>,
    pub since: Option<u64>,
    pub limit: Option<usize>,
}

impl EventQuery {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        q.extend(self.agent.clone().map(|v| ("agent", v)));
        q.extend(self.run.clone().map(|v| ("run", v)));
        q.extend(self.kind.clone().map(|v| ("kind", v)));
        q.extend(self.since.map(|v| ("since", v.to_string())));
        q.extend(self.limit.map(|v| ("limit", v.to_string())));
        q
    }
}

/// Whether a token sent to `url` could be read on the network: plain `http://` to a host that is not loopback (an
/// address that does not parse counts as in the clear).
pub fn in_clear(url: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(url) else { return true };
    let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    url.scheme() == "http" && !loopback
}

/// Percent-encodes a path segment (a run id is the server's, but it is still text from outside).
fn escape(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A live stream of server-sent events, read one event at a time.
#[derive(Debug)]
pub struct EventStream {
    client: Client,
    response: reqwest::Response,
    buffer: Vec<u8>,
    data: Vec<u8>,
}

impl EventStream {
    /// The next event; `Ok(None)` when the server ends the stream.
    pub async fn next(&mut self) -> Result<Option<EventView>, ClientError> {
        loop {
            // Lines are read in place and the buffer is drained once (per line it would be quadratic in a chunk of
            // many short lines).
            let mut start = 0;
            while let Some(at) = self.buffer[start..].iter().position(|b| *b == b'\n') {
                let mut line = &self.buffer[start..start + at];
                start += at + 1;
                if let Some(stripped) = line.strip_suffix(b"\r") {
                    line = stripped;
                }
                if line.is_empty() {
                    // A blank line ends an event: its data is one EventView.
                    if self.data.is_empty() {
                        continue;
                    }
                    self.buffer.drain(..start);
                    let data = std::mem::take(&mut self.data);
                    return self.client.parse(&data).map(Some);
                }
                if let Some(value) = line.strip_prefix(b"data:") {
                    if !self.data.is_empty() {
                        self.data.push(b'\n');
                    }
                    self.data.extend_from_slice(value.strip_prefix(b" ").unwrap_or(value));
                }
                // `id:`, `event:` and comments (keep-alives) add nothing the data does not carry.
            }
            self.buffer.drain(..start);
            if self.buffer.len() + self.data.len() > MAX_EVENT {
                return Err(self.client.protocol(format!("an event over {MAX_EVENT} bytes")));
            }
            match self.response.chunk().await.map_err(|e| self.client.unreachable(&e))? {
                Some(chunk) => self.buffer.extend_from_slice(&chunk),
                None => return Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_beyond_loopback_is_in_the_clear() {
        assert!(in_clear("http://registry.example.com:7879"));
        assert!(in_clear("http://10.0.0.5/"));
        assert!(in_clear("not a url"));
        assert!(!in_clear("http://127.0.0.1:7879"));
        assert!(!in_clear("http://[::1]:7879"));
        assert!(!in_clear("http://localhost:7879"));
        assert!(!in_clear("https://registry.example.com"));
    }

    #[test]
    fn refusals_map_to_the_local_exit_codes() {
        let api = |code: &str| ClientError::Api { status: 403, code: code.into(), message: String::new() };
        assert_eq!(api("grant-refused").outcome().exit_code(), 72);
        assert_eq!(api("token-refused").outcome().exit_code(), 78);
        assert_eq!(api("unauthorized").outcome().exit_code(), 78);
        assert_eq!(api("invalid-wasm").outcome().exit_code(), 73);
        assert_eq!(api("rate-limited").outcome().exit_code(), 81);
        assert_eq!(api("queue-full").outcome().exit_code(), 84);
        assert_eq!(api("something-new").outcome().exit_code(), 79);
        let gone = ClientError::Unreachable { url: "http://x".into(), reason: "refused".into() };
        assert_eq!(gone.outcome().exit_code(), 83);
    }

    #[test]
    fn a_server_url_is_an_address_only() {
        assert!(Client::new("http://127.0.0.1:7878", "t").is_ok());
        assert!(Client::new("http://127.0.0.1:7878/", "t").is_ok());
        for bad in ["127.0.0.1:7878", "ftp://h", "http://h/v1", "http://h?x=1", "not a url"] {
            assert!(Client::new(bad, "t").is_err(), "{bad}");
        }
        assert!(!Client::new("http://127.0.0.1:1", "t").unwrap().in_clear());
        assert!(!Client::new("https://example.com", "t").unwrap().in_clear());
        assert!(Client::new("http://example.com", "t").unwrap().in_clear());
    }

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(escape("r-1_a.b"), "r-1_a.b");
        assert_eq!(escape("../x y"), "..%2Fx%20y");
    }
}
