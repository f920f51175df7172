//! A local model provider for the tests and benches: an axum server on loopback that speaks OpenAI's
//! `POST /v1/chat/completions` and Anthropic's `POST /v1/messages` as the real APIs do (the same JSON bodies and
//! fields, the same server-sent event framing and event names, the same error bodies and headers), with a scripted
//! model instead of a real one, and every failure a provider can have, chosen by the model name.
//!
//! The scripted model reads the last user message: each line `call NAME {JSON}` is a tool call it will make, one per
//! assistant turn, in order; once every call has its result (`tool` messages after that user message), it answers
//! `Done.` followed by `NAME returned RESULT` for each result. Without such lines it answers `You said: TEXT`.
//! Usage is counted as one token per 4 bytes (prompt: every message; completion: the answer), at least 1.
//!
//! Model names that fail (the `model` field of the request):
//! - `fail-429-once`: HTTP 429 with `retry-after: 1` the first time (per format), then as the scripted model;
//! - `fail-429`: always 429 with `retry-after: 0`;
//! - `fail-500-once` / `fail-500`: HTTP 500 with the format's error body, once / always;
//! - `slow`: answers after 5 seconds;
//! - `malformed`: 200 with a body that is not JSON (streamed: a `data:` line that is not JSON);
//! - `cut`: the answer breaks off midway (the connection is closed without ending the body);
//! - `leak`: HTTP 401 whose error message quotes the credential the request carried (as a careless proxy might).
//!
//! Requests without the expected key (`Authorization: Bearer KEY` for OpenAI; `x-api-key: KEY` and
//! `anthropic-version` for Anthropic) get 401. Every request is recorded ([`Mock::requests`]).

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A request the mock received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: Value,
}

#[derive(Default)]
struct Shared {
    key: String,
    seen: Mutex<Vec<Seen>>,
    failed_once: Mutex<std::collections::BTreeSet<String>>,
}

/// A running mock provider; stops when dropped.
pub struct Mock {
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Mock {
    /// Starts a mock on 127.0.0.1 (a free port) that expects `key`.
    pub fn start(key: &str) -> Mock {
        let shared = Arc::new(Shared { key: key.to_string(), ..Shared::default() });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = shared.clone();
        let thread = std::thread::Builder::new()
            .name("llm-mock".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("mock runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    let app = axum::Router::new()
                        .route("/v1/chat/completions", axum::routing::post(openai))
                        .route("/v1/messages", axum::routing::post(anthropic))
                        .with_state(state);
                    tokio::select! {
                        r = axum::serve(listener, app) => r.expect("mock server"),
                        _ = stopped => {}
                    }
                });
                rt.shutdown_background();
            })
            .expect("spawn the mock's thread");
        Mock { addr, shared, stop: Some(stop), thread: Some(thread) }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// Requests so far for `model`.
    pub fn requests_for(&self, model: &str) -> Vec<Seen> {
        self.requests().into_iter().filter(|s| s.body["model"] == model).collect()
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One conversation, whatever the format: the last user message's text, the tool results after it (name and
/// content), the offered tool names, and the prompt's size in bytes.
struct Conversation {
    user: String,
    results: Vec<(String, String)>,
    tools: Vec<String>,
    prompt_bytes: usize,
}

/// What the scripted model says next.
enum Reply {
    Text(String),
    Call { name: String, arguments: Value },
}

fn script(c: &Conversation) -> Reply {
    let calls: Vec<(String, Value)> = c
        .user
        .lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("call ")?;
            let (name, args) = rest.split_once(' ').unwrap_or((rest, "{}"));
            Some((name.to_string(), serde_json::from_str(args).unwrap_or_else(|_| json!({}))))
        })
        .collect();
    if calls.is_empty() {
        return Reply::Text(format!("You said: {}", c.user));
    }
    match calls.get(c.results.len()) {
        Some((name, arguments)) if c.tools.iter().any(|t| t == name) => {
            Reply::Call { name: name.clone(), arguments: arguments.clone() }
        }
        Some((name, _)) => Reply::Text(format!("I cannot call {name}: it was not offered.")),
        None => {
            let said: Vec<String> = c.results.iter().map(|(n, r)| format!("{n} returned {r}")).collect();
            Reply::Text(format!("Done. {}", said.join("; ")))
        }
    }
}

fn tokens(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4).max(1)
}

fn record(shared: &Shared, path: &str, headers: &HeaderMap, body: &Value) {
    let headers = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    shared.seen.lock().unwrap().push(Seen { path: path.into(), headers, body: body.clone() });
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// A body that sends `chunks` and then, with `cut`, breaks off instead of ending.
fn streamed(chunks: Vec<String>, cut: bool) -> Response {
    use futures_util::StreamExt;
    let items: Vec<Result<Bytes, std::io::Error>> = chunks.into_iter().map(|c| Ok(Bytes::from(c))).collect();
    // A cut comes a moment after the last piece, so that the status, the headers and that piece reach the client
    // first (an error right away makes the server drop the connection before it has answered at all).
    let end = futures_util::stream::once(async move {
        tokio::time::sleep(Duration::from_millis(if cut { 200 } else { 0 })).await;
        if cut { Some(Err(std::io::Error::other("connection lost"))) } else { None }
    })
    .filter_map(|item| async move { item });
    let stream = futures_util::stream::iter(items).chain(end);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .expect("a response")
}

/// The failures every format shares, by model; `None` lets the scripted model answer.
async fn failure(shared: &Shared, format: &str, model: &str, stream: bool, credential: &str) -> Option<Response> {
    let error = |status: StatusCode, kind: &str, message: &str| -> Response {
        let body = if format == "openai" {
            json!({ "error": { "message": message, "type": kind, "param": null, "code": null } })
        } else {
            json!({ "type": "error", "error": { "type": kind, "message": message } })
        };
        json_response(status, body)
    };
    let once = |name: &str| shared.failed_once.lock().unwrap().insert(format!("{format}/{name}"));
    match model {
        "fail-429-once" if once(model) => {
            let mut r = error(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", "Rate limit reached; slow down.");
            r.headers_mut().insert("retry-after", "1".parse().unwrap());
            Some(r)
        }
        "fail-429" => {
            let mut r = error(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", "Rate limit reached; slow down.");
            r.headers_mut().insert("retry-after", "0".parse().unwrap());
            Some(r)
        }
        "fail-500-once" if once(model) => {
            Some(error(StatusCode::INTERNAL_SERVER_ERROR, "api_error", "Internal server error"))
        }
        "fail-500" => Some(error(StatusCode::INTERNAL_SERVER_ERROR, "api_error", "Internal server error")),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            None
        }
        "malformed" if stream => Some(streamed(vec!["data: {\"choices\": [oops\n\n".into()], false)),
        "malformed" => {
            Some(([(header::CONTENT_TYPE, "application/json")], "{\"id\": \"x\", \"choices\": [").into_response())
        }
        "cut" if !stream => {
            let mut r = streamed(vec!["{\"id\": \"x\", \"choices\": [{\"index\": 0, ".into()], true);
            r.headers_mut().insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
            Some(r)
        }
        "leak" => Some(error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            &format!("Incorrect API key provided: {credential}. You can find your API key in your account."),
        )),
        _ => None,
    }
}

async fn openai(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                json!({ "error": { "message": format!("We could not parse the JSON body of your request: {e}"), "type": "invalid_request_error", "param": null, "code": null } }),
            );
        }
    };
    record(&shared, "/v1/chat/completions", &headers, &body);
    let credential = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let model = body["model"].as_str().unwrap_or_default().to_string();
    let stream = body["stream"] == true;
    if let Some(r) = failure(&shared, "openai", &model, stream, &credential).await {
        return r;
    }
    if credential != format!("Bearer {}", shared.key) {
        return json_response(
            StatusCode::UNAUTHORIZED,
            json!({ "error": { "message": "Incorrect API key provided.", "type": "invalid_request_error", "param": null, "code": "invalid_api_key" } }),
        );
    }
    let Some(messages) = body["messages"].as_array().filter(|m| !m.is_empty()) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({ "error": { "message": "'messages' must contain at least one message.", "type": "invalid_request_error", "param": "messages", "code": null } }),
        );
    };
    // The conversation: the last user message and the tool results after it, named by their calls.
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut conversation =
        Conversation { user: String::new(), results: Vec::new(), tools: Vec::new(), prompt_bytes: 0 };
    for m in messages {
        let content = m["content"].as_str().unwrap_or_default();
        conversation.prompt_bytes += content.len();
        match m["role"].as_str() {
            Some("user") => {
                conversation.user = content.to_string();
                conversation.results.clear();
            }
            Some("assistant") => {
                for c in m["tool_calls"].as_array().into_iter().flatten() {
                    let id = c["id"].as_str().unwrap_or_default().to_string();
                    names.insert(id, c["function"]["name"].as_str().unwrap_or_default().to_string());
                }
            }
            Some("tool") => {
                let id = m["tool_call_id"].as_str().unwrap_or_default();
                conversation.results.push((names.get(id).cloned().unwrap_or_default(), content.to_string()));
            }
            _ => {}
        }
    }
    conversation.tools = body["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["function"]["name"].as_str().map(String::from))
        .collect();
    let reply = script(&conversation);
    let id = format!("chatcmpl-mock{}", shared.seen.lock().unwrap().len());
    let call_id = format!("call_mock{}", conversation.results.len());
    let prompt_tokens = tokens(conversation.prompt_bytes);
    let (message, finish, completion_bytes) = match &reply {
        Reply::Text(t) => (json!({ "role": "assistant", "content": t, "refusal": null }), "stop", t.len()),
        Reply::Call { name, arguments } => {
            let args = arguments.to_string();
            let len = name.len() + args.len();
            (
                json!({ "role": "assistant", "content": null, "refusal": null,
                        "tool_calls": [{ "id": call_id, "type": "function", "function": { "name": name, "arguments": args } }] }),
                "tool_calls",
                len,
            )
        }
    };
    let completion_tokens = tokens(completion_bytes);
    let usage = json!({ "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens });
    if !stream {
        return json_response(
            StatusCode::OK,
            json!({
                "id": id, "object": "chat.completion", "created": 1_764_000_000, "model": model,
                "choices": [{ "index": 0, "message": message, "logprobs": null, "finish_reason": finish }],
                "usage": usage, "system_fingerprint": "fp_mock"
            }),
        );
    }
    let chunk = |delta: Value, finish: Option<&str>| {
        let c = json!({ "id": id, "object": "chat.completion.chunk", "created": 1_764_000_000, "model": model,
                        "system_fingerprint": "fp_mock",
                        "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }] });
        format!("data: {c}\n\n")
    };
    let mut chunks = vec![chunk(json!({ "role": "assistant", "content": "", "refusal": null }), None)];
    match &reply {
        Reply::Text(t) => {
            for piece in t.as_bytes().chunks(8) {
                chunks.push(chunk(json!({ "content": String::from_utf8_lossy(piece) }), None));
            }
        }
        Reply::Call { name, arguments } => {
            let args = arguments.to_string();
            let (a, b) = args.split_at(args.len() / 2);
            chunks.push(chunk(
                json!({ "tool_calls": [{ "index": 0, "id": call_id, "type": "function",
                                                       "function": { "name": name, "arguments": "" } }] }),
                None,
            ));
            chunks.push(chunk(json!({ "tool_calls": [{ "index": 0, "function": { "arguments": a } }] }), None));
            chunks.push(chunk(json!({ "tool_calls": [{ "index": 0, "function": { "arguments": b } }] }), None));
        }
    }
    let cut = model == "cut";
    if cut {
        chunks.truncate(3);
        return streamed(chunks, true);
    }
    chunks.push(chunk(json!({}), Some(finish)));
    if body["stream_options"]["include_usage"] == true {
        let c = json!({ "id": id, "object": "chat.completion.chunk", "created": 1_764_000_000, "model": model,
                        "system_fingerprint": "fp_mock", "choices": [], "usage": usage });
        chunks.push(format!("data: {c}\n\n"));
    }
    chunks.push("data: [DONE]\n\n".into());
    streamed(chunks, false)
}

async fn anthropic(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let invalid = |message: &str| {
        json_response(
            StatusCode::BAD_REQUEST,
            json!({ "type": "error", "error": { "type": "invalid_request_error", "message": message } }),
        )
    };
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return invalid("There was an issue with your request body: it is not valid JSON."),
    };
    record(&shared, "/v1/messages", &headers, &body);
    let credential = headers.get("x-api-key").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let model = body["model"].as_str().unwrap_or_default().to_string();
    let stream = body["stream"] == true;
    if let Some(r) = failure(&shared, "anthropic", &model, stream, &credential).await {
        return r;
    }
    if credential != shared.key {
        return json_response(
            StatusCode::UNAUTHORIZED,
            json!({ "type": "error", "error": { "type": "authentication_error", "message": "invalid x-api-key" } }),
        );
    }
    if headers.get("anthropic-version").is_none() {
        return invalid("anthropic-version: header is required");
    }
    if !body["max_tokens"].is_u64() {
        return invalid("max_tokens: Field required");
    }
    let Some(messages) = body["messages"].as_array().filter(|m| !m.is_empty()) else {
        return invalid("messages: at least one message is required");
    };
    if messages[0]["role"] != "user" {
        return invalid("messages: first message must use the \"user\" role");
    }
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut conversation =
        Conversation { user: String::new(), results: Vec::new(), tools: Vec::new(), prompt_bytes: 0 };
    conversation.prompt_bytes += body["system"].as_str().map_or(0, str::len);
    for m in messages {
        let blocks: Vec<Value> = match &m["content"] {
            Value::String(s) => vec![json!({ "type": "text", "text": s })],
            Value::Array(a) => a.clone(),
            _ => return invalid("messages: content must be a string or a list of blocks"),
        };
        let mut user_text = None;
        for b in &blocks {
            match (m["role"].as_str(), b["type"].as_str()) {
                (Some("user"), Some("text")) => {
                    let t = b["text"].as_str().unwrap_or_default();
                    conversation.prompt_bytes += t.len();
                    user_text = Some(t.to_string());
                }
                (Some("user"), Some("tool_result")) => {
                    let id = b["tool_use_id"].as_str().unwrap_or_default();
                    let content = b["content"].as_str().unwrap_or_default();
                    conversation.prompt_bytes += content.len();
                    conversation.results.push((names.get(id).cloned().unwrap_or_default(), content.to_string()));
                }
                (Some("assistant"), Some("text")) => {
                    conversation.prompt_bytes += b["text"].as_str().map_or(0, str::len)
                }
                (Some("assistant"), Some("tool_use")) => {
                    if !b["input"].is_object() {
                        return invalid("tool_use.input: Input should be a valid dictionary");
                    }
                    let id = b["id"].as_str().unwrap_or_default().to_string();
                    names.insert(id, b["name"].as_str().unwrap_or_default().to_string());
                }
                _ => return invalid("messages: unexpected content block"),
            }
        }
        if let Some(t) = user_text {
            conversation.user = t;
            conversation.results.clear();
        }
    }
    conversation.tools =
        body["tools"].as_array().into_iter().flatten().filter_map(|t| t["name"].as_str().map(String::from)).collect();
    let reply = script(&conversation);
    let id = format!("msg_mock{}", shared.seen.lock().unwrap().len());
    let tool_id = format!("toolu_mock{}", conversation.results.len());
    let input_tokens = tokens(conversation.prompt_bytes);
    let (content, stop, completion_bytes) = match &reply {
        Reply::Text(t) => (json!([{ "type": "text", "text": t }]), "end_turn", t.len()),
        Reply::Call { name, arguments } => (
            json!([{ "type": "tool_use", "id": tool_id, "name": name, "input": arguments }]),
            "tool_use",
            name.len() + arguments.to_string().len(),
        ),
    };
    let output_tokens = tokens(completion_bytes);
    if !stream {
        return json_response(
            StatusCode::OK,
            json!({
                "id": id, "type": "message", "role": "assistant", "model": model, "content": content,
                "stop_reason": stop, "stop_sequence": null,
                "usage": { "input_tokens": input_tokens, "output_tokens": output_tokens,
                           "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0 }
            }),
        );
    }
    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut chunks = vec![
        event(
            "message_start",
            json!({ "type": "message_start", "message": {
            "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": null, "stop_sequence": null,
            "usage": { "input_tokens": input_tokens, "output_tokens": 1 } } }),
        ),
        event("ping", json!({ "type": "ping" })),
    ];
    match &reply {
        Reply::Text(t) => {
            chunks.push(event(
                "content_block_start",
                json!({ "type": "content_block_start", "index": 0, "content_block": { "type": "text", "text": "" } }),
            ));
            for piece in t.as_bytes().chunks(8) {
                chunks.push(event(
                    "content_block_delta",
                    json!({ "type": "content_block_delta", "index": 0,
                    "delta": { "type": "text_delta", "text": String::from_utf8_lossy(piece) } }),
                ));
            }
        }
        Reply::Call { name, arguments } => {
            let args = arguments.to_string();
            let (a, b) = args.split_at(args.len() / 2);
            chunks.push(event(
                "content_block_start",
                json!({ "type": "content_block_start", "index": 0,
                "content_block": { "type": "tool_use", "id": tool_id, "name": name, "input": {} } }),
            ));
            for part in ["", a, b] {
                chunks.push(event(
                    "content_block_delta",
                    json!({ "type": "content_block_delta", "index": 0,
                    "delta": { "type": "input_json_delta", "partial_json": part } }),
                ));
            }
        }
    }
    if model == "cut" {
        chunks.truncate(4);
        return streamed(chunks, true);
    }
    chunks.push(event("content_block_stop", json!({ "type": "content_block_stop", "index": 0 })));
    chunks.push(event(
        "message_delta",
        json!({ "type": "message_delta", "delta": { "stop_reason": stop, "stop_sequence": null },
                                               "usage": { "output_tokens": output_tokens } }),
    ));
    chunks.push(event("message_stop", json!({ "type": "message_stop" })));
    streamed(chunks, false)
}
