//! Calling a provider: the engine trait the gateway calls ([`LlmEngine`]), and its HTTP implementation over a wire
//! format ([`Wire`]: OpenAI's or Anthropic's).
//!
//! [`HttpEngine`] owns the provider's key and puts it in one request header, marked sensitive; every message it
//! returns has been cut to one bounded line and has the key replaced by `[redacted]` (a provider may echo what it
//! was sent). Each attempt is bounded by the provider's timeout and the caller's deadline; an answer is bounded in
//! size. HTTP 429 and 5xx (and a connection that failed before any answer) are retried with exponential backoff and
//! jitter, waiting what `Retry-After` (or `retry-after-ms`) asks when the provider says; a retry that would end past
//! the deadline is not made. A stream is retried only until its answer has begun: once an event has been read,
//! a failure is the caller's error, never a second request. Redirects are never followed and no proxy is used.
//! This module must never log, record or return a key.

use super::config::Provider;
use super::types::{ChatRequest, ChatResponse, Message, StreamEvent};
use futures_util::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use std::pin::Pin;
use std::time::{Duration, Instant};

/// Largest answer read from a provider (a whole response, or all of a stream), in bytes.
pub const MAX_ANSWER: usize = 8 << 20;
/// Largest error body read, in bytes.
const MAX_ERROR_BODY: usize = 64 << 10;
/// Longest provider message passed on.
const MAX_MESSAGE: usize = 300;

/// Why a call to a provider failed. Every message is one bounded line without the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// HTTP 429, still, after the retries.
    RateLimited { message: String, retry_after: Option<Duration> },
    /// Another error status (5xx after the retries, 4xx at once); 200 for an error event inside a stream.
    Status { status: u16, message: String },
    /// No answer in time (the provider's timeout, or the caller's deadline).
    Timeout(String),
    /// No answer at all: the connection could not be made or broke before the answer began.
    Connect(String),
    /// An answer that is not the wire format: not JSON, missing fields, too large.
    Malformed(String),
    /// A stream that ended or broke before the completion did.
    Cut(String),
    /// The provider cannot be called: its key is not set, or the caller was cancelled.
    Unavailable(String),
}

impl CallError {
    fn retryable(&self) -> bool {
        match self {
            CallError::RateLimited { .. } | CallError::Connect(_) => true,
            CallError::Status { status, .. } => (500..=599).contains(status),
            _ => false,
        }
    }

    /// The one-line message.
    pub fn message(&self) -> String {
        match self {
            CallError::RateLimited { message, .. } => message.clone(),
            CallError::Status { status: 200, message } => message.clone(),
            CallError::Status { status, message } => format!("HTTP {status}: {message}"),
            CallError::Timeout(m)
            | CallError::Connect(m)
            | CallError::Malformed(m)
            | CallError::Cut(m)
            | CallError::Unavailable(m) => m.clone(),
        }
    }
}

/// A wire format: how a request is written and an answer read.
pub trait Wire: Send + Sync {
    /// Appended to the provider's base URL.
    fn path(&self) -> &'static str;
    /// The header that carries the key, and what precedes the key in it.
    fn auth_header(&self) -> (&'static str, &'static str);
    /// Headers every request carries.
    fn extra_headers(&self) -> &'static [(&'static str, &'static str)];
    /// The request body.
    fn body(&self, req: &ChatRequest, stream: bool) -> serde_json::Value;
    /// A whole (non-streamed) answer; `prompt` is for estimating usage the provider does not report.
    fn parse(&self, body: &[u8], prompt: &[Message]) -> Result<ChatResponse, CallError>;
    /// The provider's own message in an error body, if it has one.
    fn error_message(&self, body: &[u8]) -> Option<String>;
    /// A fresh decoder for one stream.
    fn decoder(&self) -> Box<dyn Decoder>;
}

/// Assembles a stream's events into deltas and, at the end, the whole response.
pub trait Decoder: Send {
    /// One server-sent event (its `event:` name and `data:`); returns a text delta to pass on, if any.
    fn event(&mut self, event: Option<&str>, data: &str) -> Result<Option<String>, CallError>;
    /// The whole response once the stream has ended; [`CallError::Cut`] if it ended early.
    fn finish(&mut self, prompt: &[Message]) -> Result<ChatResponse, CallError>;
}

/// A completion being streamed.
#[async_trait::async_trait]
pub trait CompletionStream: Send {
    /// The next event; `Ok(None)` after `Done` or an error.
    async fn next(&mut self) -> Result<Option<StreamEvent>, CallError>;
    /// Bytes of text passed on so far (to charge a budget for a stream left before its end).
    fn delivered(&self) -> usize;
}

/// What serves completions: a provider over HTTP, or anything else a host embeds.
#[async_trait::async_trait]
pub trait LlmEngine: Send + Sync {
    /// One completion, whole; with how many retries it took.
    async fn chat(&self, req: &ChatRequest, deadline: Instant) -> (Result<ChatResponse, CallError>, u32);
    /// One completion, streamed; retried only before the stream began.
    async fn chat_stream(
        &self,
        req: &ChatRequest,
        deadline: Instant,
    ) -> (Result<Box<dyn CompletionStream>, CallError>, u32);
}

/// A provider over HTTP.
pub struct HttpEngine {
    wire: Box<dyn Wire>,
    url: String,
    key: Result<Option<SecretString>, String>,
    client: reqwest::Client,
    timeout: Duration,
    max_retries: u32,
    backoff: Duration,
    max_backoff: Duration,
}

impl std::fmt::Debug for HttpEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpEngine").field("url", &self.url).finish_non_exhaustive()
    }
}

/// Cuts a provider's text to one line of at most [`MAX_MESSAGE`] bytes.
fn bounded(text: &str) -> String {
    let mut line = crate::error::one_line(text);
    if line.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push_str(" [...]");
    }
    line
}

/// The innermost cause of an HTTP client error, without the URL wrapping.
fn root_cause(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// How long a 429 or 503 asks to wait: `retry-after-ms`, else `Retry-After` in seconds or as an HTTP date.
pub fn retry_after(headers: &reqwest::header::HeaderMap, now: std::time::SystemTime) -> Option<Duration> {
    const MAX: Duration = Duration::from_secs(86_400);
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) =
        text("retry-after-ms").and_then(|t| t.parse::<f64>().ok()).filter(|ms| ms.is_finite() && *ms >= 0.0)
    {
        return Some(Duration::from_secs_f64(ms / 1e3).min(MAX));
    }
    let value = text("retry-after")?;
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(MAX.as_secs_f64())));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO).min(MAX))
}

/// A number in [0, 1) that differs from call to call (for jitter; not for anything secret).
fn unit_random() -> f64 {
    use std::hash::BuildHasher;
    let h = std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now());
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// The delay before retry number `retry` (0-based): exponential from `base`, capped at `cap`, with "equal jitter"
/// (between half and all of it), or what the provider asked for.
pub fn delay(base: Duration, cap: Duration, retry: u32, asked: Option<Duration>, unit: f64) -> Duration {
    if let Some(asked) = asked {
        return asked;
    }
    let exp = base.saturating_mul(1u32.checked_shl(retry.min(20)).unwrap_or(u32::MAX)).min(cap);
    exp.mul_f64(0.5 + unit.clamp(0.0, 1.0) * 0.5)
}

impl HttpEngine {
    pub fn new(provider: &Provider, wire: Box<dyn Wire>, client: reqwest::Client) -> Self {
        HttpEngine {
            url: format!("{}{}", provider.base_url, wire.path()),
            wire,
            key: provider.key.clone().map_err(|e| format!("provider {} has no key: {e}", provider.name)),
            client,
            timeout: provider.timeout,
            max_retries: provider.max_retries,
            backoff: provider.backoff,
            max_backoff: provider.max_backoff,
        }
    }

    /// Replaces the key wherever it appears in `text`, and bounds it.
    fn redact(&self, text: &str) -> String {
        // Scrubbed before it is cut, so that a cut never leaves a piece of the key behind.
        match &self.key {
            Ok(Some(key)) if !key.expose_secret().is_empty() => {
                bounded(&text.replace(key.expose_secret(), "[redacted]"))
            }
            _ => bounded(text),
        }
    }

    fn clean(&self, e: CallError) -> CallError {
        match e {
            CallError::RateLimited { message, retry_after } => {
                CallError::RateLimited { message: self.redact(&message), retry_after }
            }
            CallError::Status { status, message } => CallError::Status { status, message: self.redact(&message) },
            CallError::Timeout(m) => CallError::Timeout(self.redact(&m)),
            CallError::Connect(m) => CallError::Connect(self.redact(&m)),
            CallError::Malformed(m) => CallError::Malformed(self.redact(&m)),
            CallError::Cut(m) => CallError::Cut(self.redact(&m)),
            CallError::Unavailable(m) => CallError::Unavailable(self.redact(&m)),
        }
    }

    /// Sends one request and returns the response once its status is a success.
    async fn send(&self, body: &[u8]) -> Result<reqwest::Response, CallError> {
        let key = self.key.as_ref().map_err(|e| CallError::Unavailable(e.clone()))?;
        let mut request = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "application/json, text/event-stream")
            .body(body.to_vec());
        for (name, value) in self.wire.extra_headers() {
            request = request.header(*name, *value);
        }
        if let Some(key) = key {
            let (name, prefix) = self.wire.auth_header();
            let mut value = reqwest::header::HeaderValue::from_str(&format!("{prefix}{}", key.expose_secret()))
                .map_err(|_| CallError::Unavailable("the provider's key cannot be sent in a header".into()))?;
            value.set_sensitive(true);
            request = request.header(name, value);
        }
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                CallError::Timeout("the provider did not answer in time".into())
            } else {
                CallError::Connect(format!("cannot reach the provider: {}", root_cause(&e)))
            }
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let wait = retry_after(response.headers(), std::time::SystemTime::now());
        let body = read_limited(response, MAX_ERROR_BODY).await.unwrap_or_default();
        let message = self.wire.error_message(&body).unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        let message =
            if message.trim().is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { message };
        Err(if status.as_u16() == 429 {
            CallError::RateLimited { message: format!("the provider refused: HTTP 429: {message}"), retry_after: wait }
        } else {
            CallError::Status { status: status.as_u16(), message }
        })
    }

    /// Runs `attempt` (bounded by the provider's timeout and the deadline) until it succeeds, fails for good, runs
    /// out of retries or of time.
    async fn with_retries<T, F, Fut>(&self, deadline: Instant, mut attempt: F) -> (Result<T, CallError>, u32)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, CallError>>,
    {
        let mut retries = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (Err(CallError::Timeout("no time left before the run's deadline".into())), retries);
            }
            let limit = self.timeout.min(left);
            let result = match tokio::time::timeout(limit, attempt()).await {
                Ok(r) => r,
                Err(_) => Err(CallError::Timeout(format!(
                    "the provider did not answer within {}",
                    humantime::format_duration(Duration::from_millis(limit.as_millis() as u64))
                ))),
            };
            let error = match result {
                Ok(v) => return (Ok(v), retries),
                Err(e) => self.clean(e),
            };
            if !error.retryable() || retries >= self.max_retries {
                return (Err(error), retries);
            }
            let asked = match &error {
                CallError::RateLimited { retry_after, .. } => *retry_after,
                _ => None,
            };
            let wait = delay(self.backoff, self.max_backoff, retries, asked, unit_random());
            if Instant::now() + wait >= deadline {
                let note = format!(
                    "{}; not retried: waiting {} would pass the run's deadline",
                    error.message(),
                    humantime::format_duration(Duration::from_millis(wait.as_millis() as u64))
                );
                let error = match error {
                    CallError::RateLimited { retry_after, .. } => CallError::RateLimited { message: note, retry_after },
                    CallError::Status { status, .. } => CallError::Status { status, message: note },
                    _ => CallError::Connect(note),
                };
                return (Err(error), retries);
            }
            tokio::time::sleep(wait).await;
            retries += 1;
        }
    }
}

/// Reads a whole body, refusing one over `max` bytes.
async fn read_limited(mut response: reqwest::Response, max: usize) -> Result<Vec<u8>, CallError> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > max {
                    return Err(CallError::Malformed(format!("the answer is over {max} bytes")));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(CallError::Cut(format!("the answer broke off: {}", root_cause(&e)))),
        }
    }
}

type SseItems = Pin<Box<dyn futures_util::Stream<Item = Result<sse_stream::Sse, sse_stream::Error>> + Send>>;

/// A stream over HTTP: server-sent events through a wire decoder.
struct HttpStream {
    events: SseItems,
    decoder: Box<dyn Decoder>,
    prompt: Vec<Message>,
    idle: Duration,
    deadline: Instant,
    delivered: usize,
    ended: bool,
    key: Option<SecretString>,
}

impl HttpStream {
    fn redact(&self, e: CallError) -> CallError {
        let Some(key) = &self.key else { return e };
        let scrub = |m: String| m.replace(key.expose_secret(), "[redacted]");
        match e {
            CallError::Status { status, message } => CallError::Status { status, message: bounded(&scrub(message)) },
            CallError::Malformed(m) => CallError::Malformed(bounded(&scrub(m))),
            CallError::Cut(m) => CallError::Cut(bounded(&scrub(m))),
            other => other,
        }
    }

    async fn step(&mut self) -> Result<Option<StreamEvent>, CallError> {
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            let limit = self.idle.min(left);
            let item = match tokio::time::timeout(limit, self.events.next()).await {
                Ok(item) => item,
                Err(_) if left <= self.idle => {
                    return Err(CallError::Timeout("the stream was still going at the run's deadline".into()));
                }
                Err(_) => {
                    return Err(CallError::Timeout(format!(
                        "the stream stalled: nothing from the provider for {}",
                        humantime::format_duration(Duration::from_millis(limit.as_millis() as u64))
                    )));
                }
            };
            match item {
                None => return self.decoder.finish(&self.prompt).map(|r| Some(StreamEvent::Done(r))),
                Some(Err(sse_stream::Error::Body(e))) => {
                    return Err(CallError::Cut(format!(
                        "the stream broke off: {}",
                        crate::error::one_line(&e.to_string())
                    )));
                }
                Some(Err(e)) => return Err(CallError::Malformed(format!("the stream is not valid SSE: {e}"))),
                Some(Ok(sse)) => {
                    let Some(data) = sse.data else { continue };
                    if let Some(delta) = self.decoder.event(sse.event.as_deref(), &data)? {
                        self.delivered += delta.len();
                        return Ok(Some(StreamEvent::Delta(delta)));
                    }
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl CompletionStream for HttpStream {
    async fn next(&mut self) -> Result<Option<StreamEvent>, CallError> {
        if self.ended {
            return Ok(None);
        }
        let result = self.step().await.map_err(|e| self.redact(e));
        if !matches!(result, Ok(Some(StreamEvent::Delta(_)))) {
            self.ended = true;
        }
        result
    }

    fn delivered(&self) -> usize {
        self.delivered
    }
}

#[async_trait::async_trait]
impl LlmEngine for HttpEngine {
    async fn chat(&self, req: &ChatRequest, deadline: Instant) -> (Result<ChatResponse, CallError>, u32) {
        let body = self.wire.body(req, false).to_string().into_bytes();
        let (answer, retries) = self
            .with_retries(deadline, || async {
                let response = self.send(&body).await?;
                read_limited(response, MAX_ANSWER).await
            })
            .await;
        let parsed = answer.and_then(|bytes| self.wire.parse(&bytes, &req.messages)).map_err(|e| self.clean(e));
        (parsed, retries)
    }

    async fn chat_stream(
        &self,
        req: &ChatRequest,
        deadline: Instant,
    ) -> (Result<Box<dyn CompletionStream>, CallError>, u32) {
        let body = self.wire.body(req, true).to_string().into_bytes();
        let (response, retries) = self.with_retries(deadline, || self.send(&body)).await;
        let response = match response {
            Ok(r) => r,
            Err(e) => return (Err(e), retries),
        };
        let mut read = 0usize;
        let bytes = response.bytes_stream().map(move |chunk| {
            let chunk = chunk.map_err(|e| std::io::Error::other(crate::error::one_line(&root_cause(&e))))?;
            read += chunk.len();
            if read > MAX_ANSWER {
                return Err(std::io::Error::other(format!("the answer is over {MAX_ANSWER} bytes")));
            }
            Ok(chunk)
        });
        let stream = HttpStream {
            events: Box::pin(sse_stream::SseStream::from_bytes_stream(bytes)),
            decoder: self.wire.decoder(),
            prompt: req.messages.clone(),
            idle: self.timeout,
            deadline,
            delivered: 0,
            ended: false,
            key: self.key.clone().ok().flatten(),
        };
        (Ok(Box::new(stream)), retries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_jittered_and_yields_to_retry_after() {
        let (base, cap) = (Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(delay(base, cap, 0, None, 1.0), Duration::from_millis(100));
        assert_eq!(delay(base, cap, 0, None, 0.0), Duration::from_millis(50));
        assert_eq!(delay(base, cap, 2, None, 1.0), Duration::from_millis(400));
        assert_eq!(delay(base, cap, 10, None, 1.0), cap);
        assert_eq!(delay(base, cap, 40, None, 1.0), cap, "no overflow");
        assert_eq!(delay(base, cap, 3, Some(Duration::from_secs(7)), 0.3), Duration::from_secs(7));
        let u = unit_random();
        assert!((0.0..1.0).contains(&u));
    }

    #[test]
    fn retry_after_in_every_form() {
        use reqwest::header::{HeaderMap, HeaderValue};
        let now = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let h = |pairs: &[(&'static str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_str(v).unwrap());
            }
            m
        };
        assert_eq!(retry_after(&h(&[("retry-after", "3")]), now), Some(Duration::from_secs(3)));
        assert_eq!(
            retry_after(&h(&[("retry-after", "3"), ("retry-after-ms", "250")]), now),
            Some(Duration::from_millis(250))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(20));
        assert_eq!(retry_after(&h(&[("retry-after", &later)]), now), Some(Duration::from_secs(20)));
        assert_eq!(retry_after(&h(&[("retry-after", "soon")]), now), None);
        assert_eq!(retry_after(&h(&[("retry-after", "-1")]), now), None);
        assert_eq!(retry_after(&h(&[("retry-after", "99999999")]), now), Some(Duration::from_secs(86_400)));
    }

    #[test]
    fn messages_are_bounded_and_redacted() {
        let provider = crate::llm::config::Config::parse(
            "[providers.p]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"\nkey_env = \"K\"",
            &|_| Some("sk-secret-value".into()),
        )
        .unwrap();
        // The gateway's own client (rustls with the ring provider installed; reqwest has no provider of its own here).
        let client = crate::llm::http_client().unwrap();
        let engine = HttpEngine::new(&provider.providers["p"], Box::new(super::super::openai::OpenAi), client);
        let echoed = engine.clean(CallError::Status { status: 401, message: "bad key sk-secret-value\nagain".into() });
        assert_eq!(echoed.message(), "HTTP 401: bad key [redacted] again");
        let long = engine.redact(&"x".repeat(10_000));
        assert!(long.len() < MAX_MESSAGE + 10);
    }
}
