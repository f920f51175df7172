//! The model gateway: agents (and tools that declare it) call models through the host, never seeing a key, within
//! their token's rights and budgets, every call recorded. The `toka:agent/llm` capability, as one unit:
//! [`config`] (which models exist, from `$TOKA_HOME/llm.toml`, with the providers' keys), [`provider`] (the engine
//! trait and its HTTP implementation, over the wire formats of [`openai`] and [`anthropic`]), [`types`] (a call in
//! the host's terms, checked and bounded), and [`host`] (the WIT host implementation a sandbox links).
//!
//! A model call is a boundary host call, like a tool call ([`Gateway::chat`], [`Gateway::chat_stream`]):
//! 1. it takes one from the run's cap of recorded calls;
//! 2. `llm.called` is recorded; the kernel refuses it when the agent's rate bucket is empty or its budget of model
//!    tokens for a period is spent (a token's `llm_budget`s);
//! 3. the caller's token is checked again for `llm:MODEL` (with the current time and revocations); the model must be
//!    configured, the request valid, and the run's budget of model tokens (a token's `llm_tokens`, else
//!    [`DEFAULT_RUN_TOKENS`]) not spent; `max_tokens` is lowered to what that budget has left;
//! 4. the provider is called, with retries, within the provider's timeout and the run's deadline;
//! 5. `llm.completed` or `llm.failed` is recorded with the model, provider, tokens in and out, latency, retries and
//!    outcome, and the tokens are charged to the run's and the agent's budgets. A call that is dropped midway (the
//!    run cancelled, a stream abandoned) is still ended by an event.
//!
//! Prompts and completions are recorded only when the operator opts in (`--record-prompts`), and then bounded like
//! every payload. This module never puts a key in a value it returns, an event, an error or a log line, and nothing
//! outside it reaches into a provider.

pub mod anthropic;
pub mod config;
pub mod host;
pub mod openai;
pub mod provider;
pub mod types;

use crate::events::{AppendError, EventLog};
use crate::kernel::{Op, Rate, TokenBudget};
use crate::sandbox::budget::{Counted, RunBudget};
use crate::token::{self, Grant, RunRequest, TokenLimits, Verified};
use config::{Config, Kind};
use provider::{CallError, CompletionStream, HttpEngine, LlmEngine};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use types::{ChatRequest, ChatResponse, Function, Message, StreamEvent, Usage};

/// Model tokens one run may use when its token states no `llm_tokens`.
pub const DEFAULT_RUN_TOKENS: u64 = 200_000;
/// How long before the run's deadline a model call gives up, so that its ending is recorded before the run's own.
const DEADLINE_MARGIN: Duration = Duration::from_millis(150);
/// Most streams one sandbox may hold open at once (the sandbox holds them).
pub use crate::sandbox::caps::llm::MAX_OPEN_STREAMS;
/// Bytes of prompt (or completion) kept in an event with `--record-prompts`.
const MAX_RECORDED: usize = 24 << 10;

/// A name the guest gave, made safe to show in one line: at most 64 characters, controls escaped.
pub fn shown(text: &str) -> String {
    let mut out: String = text.chars().take(64).flat_map(char::escape_default).collect();
    if text.chars().count() > 64 {
        out.push_str("...");
    }
    out
}

/// Why a model call returned no completion: what the guest gets, as an error value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No `llm:MODEL` grant, a revoked or expired token, no model access in this sandbox.
    Denied(String),
    /// An unknown model, a request that is not valid.
    InvalidRequest(String),
    /// The agent's rate limit, or the provider's 429 after the retries.
    RateLimited(String),
    /// The run's or the agent's budget of model tokens, or the run's cap of recorded calls.
    OverBudget(String),
    Timeout(String),
    /// The provider failed (status, malformed answer, cut stream, no key), or the call could not be recorded.
    Provider(String),
}

impl Failure {
    pub fn message(&self) -> &str {
        match self {
            Failure::Denied(m)
            | Failure::InvalidRequest(m)
            | Failure::RateLimited(m)
            | Failure::OverBudget(m)
            | Failure::Timeout(m)
            | Failure::Provider(m) => m,
        }
    }

    /// The outcome recorded in `llm.failed`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Failure::Denied(_) => "denied",
            Failure::InvalidRequest(_) => "invalid-request",
            Failure::RateLimited(_) => "rate-limited",
            Failure::OverBudget(_) => "over-budget",
            Failure::Timeout(_) => "timeout",
            Failure::Provider(_) => "provider-error",
        }
    }

    fn from_call(e: CallError) -> Failure {
        match e {
            CallError::RateLimited { message, .. } => Failure::RateLimited(message),
            CallError::Timeout(m) => Failure::Timeout(m),
            e => Failure::Provider(e.message()),
        }
    }
}

/// A run's budget of model tokens, shared by the run and its nested tool calls.
#[derive(Debug)]
pub struct RunTokens {
    cap: u64,
    used: Mutex<(u64, bool)>,
}

impl RunTokens {
    pub fn new(cap: u64) -> Self {
        RunTokens { cap, used: Mutex::new((0, false)) }
    }

    pub fn cap(&self) -> u64 {
        self.cap
    }

    pub fn used(&self) -> u64 {
        self.used.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    /// Reserves what a call may use, the prompt and at most `asked` tokens of completion, before the call is made:
    /// returns the completion tokens granted (at most what is left after the prompt). Calls open at once (streams,
    /// a tool's calls) each reserve their share, so together they never pass the cap; [`RunTokens::settle`] gives
    /// back what a call did not use. `Err` (with whether this is the first refusal) when nothing is left.
    fn reserve(&self, prompt_estimate: u64, asked: u64) -> Result<u64, (String, bool)> {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let left = self.cap.saturating_sub(used.0);
        if left == 0 || prompt_estimate >= left {
            let first = !used.1;
            used.1 = true;
            let why = if left == 0 {
                format!("run limit reached: the run has used its {} model tokens", self.cap)
            } else {
                format!(
                    "run limit reached: the prompt alone (about {prompt_estimate} tokens) is more than the {left} model \
                     tokens the run has left"
                )
            };
            return Err((why, first));
        }
        let granted = asked.clamp(1, left - prompt_estimate);
        used.0 = used.0.saturating_add(prompt_estimate + granted);
        Ok(granted)
    }

    /// Ends a reservation of `reserved` tokens: the call used `charged` (more than reserved if the provider says so).
    fn settle(&self, reserved: u64, charged: u64) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        used.0 = used.0.saturating_sub(reserved).saturating_add(charged);
    }
}

/// Who makes a model call, with what rights.
#[derive(Debug, Clone)]
pub struct Caller {
    pub agent: String,
    /// The calling run (`None` for `llm test`).
    pub run_id: Option<String>,
    /// The token's revocation id, named by the call's operations.
    pub token_id: String,
    pub token: Arc<Verified>,
    pub rate: Option<Rate>,
    /// The sha256 of the calling run's component (for a pinned token).
    pub component: Option<String>,
    /// When the caller's time runs out.
    pub deadline: Instant,
    /// The run's caps on recorded calls.
    pub budget: Option<Arc<RunBudget>>,
    /// The run's budget of model tokens.
    pub tokens: Arc<RunTokens>,
    pub cancel: Option<Arc<crate::sandbox::cancel::Cancel>>,
    /// Model patterns the caller is confined to beyond its token, one list per tool it is nested in (the `llm:`
    /// needs each declared): a model must match a pattern of every list. Empty: only the token decides.
    pub confined: Vec<Vec<String>>,
}

/// Whether `model` is `pattern` or, for a pattern ending in `*`, starts with what precedes the `*`.
pub fn pattern_matches(pattern: &str, model: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => model.starts_with(prefix),
        None => pattern == model,
    }
}

/// The prefix a model pattern (`gpt-*`) covers; `None` for a plain model name.
pub fn pattern_prefix(pattern: &str) -> Option<&str> {
    pattern.strip_suffix('*')
}

impl Caller {
    /// The same caller inside a tool that declares `models` (and must be done by `deadline`).
    pub fn confined_to(&self, models: Vec<String>, deadline: Instant) -> Caller {
        let mut confined = self.confined.clone();
        confined.push(models);
        Caller { confined, deadline: deadline.min(self.deadline), ..self.clone() }
    }

    /// The per-period budgets the caller's token states (all apply).
    fn period_budgets(&self) -> Vec<TokenBudget> {
        self.token.llm_budgets.clone()
    }
}

/// A sandbox's access to models: the gateway and who calls.
#[derive(Debug, Clone)]
pub struct Session {
    pub gateway: Arc<Gateway>,
    pub caller: Caller,
}

/// A request as a guest (or `llm test`) makes it, before it is checked.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub model: String,
    pub messages: Vec<Message>,
    /// Functions with their parameters' schema as JSON text.
    pub tools: Vec<(String, String, String)>,
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
}

/// Counters for `/metrics`, by configured model (label values are configured names only).
#[derive(Debug, Default)]
struct Stats {
    calls: BTreeMap<(String, &'static str), u64>,
    tokens: BTreeMap<(String, &'static str), u64>,
    seconds: BTreeMap<String, f64>,
}

/// One line of model usage, for `/metrics`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelUsage {
    pub model: String,
    pub calls: BTreeMap<String, u64>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub seconds: f64,
}

/// The gateway: configured models, one engine per provider, the event log, and whether prompts are recorded.
pub struct Gateway {
    config: Config,
    engines: BTreeMap<String, Arc<dyn LlmEngine>>,
    log: Option<Arc<EventLog>>,
    /// The home whose root keys must still verify a caller's token at each call (`None`: not checked, for a
    /// gateway without a home, such as a bench's).
    home: Option<std::path::PathBuf>,
    record_prompts: bool,
    stats: Mutex<Stats>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("models", &self.config.models.keys()).finish_non_exhaustive()
    }
}

/// The HTTP client every provider shares: no redirects (a key is never sent anywhere else), no proxy from the
/// environment, TLS through rustls with the ring provider and the platform's roots.
fn http_client() -> Result<reqwest::Client, String> {
    // The process's TLS provider is ring (the tree's only one); installing it twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("toka-host/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {}", crate::error::one_line(&e.to_string())))
}

impl Gateway {
    /// Opens the gateway of `home` (its `llm.toml`, keys from this process's environment), recording in `log`.
    pub fn open(home: &std::path::Path, log: Option<Arc<EventLog>>, record_prompts: bool) -> Result<Gateway, String> {
        let config = Config::load(home, &|name| std::env::var(name).ok()).map_err(|e| e.to_string())?;
        let mut gateway = Gateway::new(config, log, record_prompts)?;
        gateway.home = Some(home.to_path_buf());
        Ok(gateway)
    }

    /// A gateway over `config`, each provider behind an [`HttpEngine`].
    pub fn new(config: Config, log: Option<Arc<EventLog>>, record_prompts: bool) -> Result<Gateway, String> {
        let mut engines: BTreeMap<String, Arc<dyn LlmEngine>> = BTreeMap::new();
        if !config.providers.is_empty() {
            let client = http_client()?;
            for (name, p) in &config.providers {
                let wire: Box<dyn provider::Wire> = match p.kind {
                    Kind::Openai => Box::new(openai::OpenAi),
                    Kind::Anthropic => Box::new(anthropic::Anthropic),
                };
                engines.insert(name.clone(), Arc::new(HttpEngine::new(p, wire, client.clone())));
            }
        }
        Ok(Gateway { config, engines, log, home: None, record_prompts, stats: Mutex::default() })
    }

    /// Replaces a provider's engine (an embedder's own engine, or a test's).
    pub fn with_engine(mut self, provider: &str, engine: Arc<dyn LlmEngine>) -> Self {
        self.engines.insert(provider.to_string(), engine);
        self
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether a caller's token allows `llm:MODEL` now (and is not revoked, nor signed by a root key retired or out
    /// of its overlap since the caller verified it: a run holds its token for as long as it runs).
    pub fn allowed(&self, caller: &Caller, model: &str) -> Result<(), Failure> {
        config::check_model_name(model).map_err(Failure::InvalidRequest)?;
        if let Some(home) = &self.home {
            token::root_key_still_verifies(home, &caller.token, SystemTime::now())
                .map_err(|e| Failure::Denied(format!("token refused: {}", crate::error::one_line(&e.to_string()))))?;
        }
        if let Some(log) = &self.log {
            match token::revoked_among(log.db(), &caller.token.revocation_ids) {
                Ok(None) => {}
                Ok(Some(id)) => return Err(Failure::Denied(format!("token is revoked (revocation id {id})"))),
                Err(e) => return Err(Failure::Provider(format!("reading revocations: {e}"))),
            }
        }
        token_allows(&caller.token, &caller.agent, caller.component.clone(), model).map_err(Failure::Denied)?;
        if let Some(list) = caller.confined.iter().find(|list| !list.iter().any(|p| pattern_matches(p, model))) {
            return Err(Failure::Denied(format!(
                "the tool calling declares only the models {} (llm: grants), not {}",
                list.join(", "),
                shown(model)
            )));
        }
        Ok(())
    }

    /// Model usage since this gateway opened, per configured model.
    pub fn usage(&self) -> Vec<ModelUsage> {
        let stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: BTreeMap<String, ModelUsage> = BTreeMap::new();
        let entry = |out: &mut BTreeMap<String, ModelUsage>, model: &str| {
            out.entry(model.to_string())
                .or_insert_with(|| ModelUsage {
                    model: model.to_string(),
                    calls: BTreeMap::new(),
                    prompt_tokens: 0,
                    completion_tokens: 0,
                    seconds: 0.0,
                })
                .model
                .clone()
        };
        for ((model, outcome), n) in &stats.calls {
            entry(&mut out, model);
            out.get_mut(model).map(|u| u.calls.insert((*outcome).to_string(), *n));
        }
        for ((model, kind), n) in &stats.tokens {
            entry(&mut out, model);
            if let Some(u) = out.get_mut(model) {
                if *kind == "prompt" {
                    u.prompt_tokens = *n;
                } else {
                    u.completion_tokens = *n;
                }
            }
        }
        for (model, s) in &stats.seconds {
            entry(&mut out, model);
            if let Some(u) = out.get_mut(model) {
                u.seconds = *s;
            }
        }
        out.into_values().collect()
    }

    fn count(&self, model: &str, outcome: &'static str, usage: Option<Usage>, seconds: f64) {
        // Only configured names become label values: a guest cannot grow the set of series.
        let label = if self.config.models.contains_key(model) { model.to_string() } else { "(unknown)".to_string() };
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        *stats.calls.entry((label.clone(), outcome)).or_default() += 1;
        if let Some(u) = usage {
            *stats.tokens.entry((label.clone(), "prompt")).or_default() += u64::from(u.prompt_tokens);
            *stats.tokens.entry((label.clone(), "completion")).or_default() += u64::from(u.completion_tokens);
        }
        *stats.seconds.entry(label).or_default() += seconds;
    }

    fn operation(caller: &Caller, op: Op) -> crate::kernel::Operation {
        let mut operation = crate::journal::operation_by(&caller.token_id, op);
        // A call outside a run names its token's whole chain; a run's calls are checked against the run's.
        if caller.run_id.is_none() {
            operation.chain = caller.token.revocation_ids.clone();
        }
        operation
    }

    async fn record(&self, caller: &Caller, op: Op) -> Result<(), AppendError> {
        let Some(log) = &self.log else { return Ok(()) };
        log.submit_accepted(Self::operation(caller, op)).await.map(drop)
    }

    /// Hands `op` to the log writer now, without waiting for it to be durable (from a `Drop`, which cannot wait):
    /// the writer applies it in order whether or not anyone waits for the answer.
    fn record_now(&self, caller: &Caller, op: Op) {
        use futures_util::FutureExt;
        if let Some(log) = &self.log {
            drop(log.submit_async(Self::operation(caller, op)).now_or_never());
        }
    }

    /// One whole completion for `caller`. See the module documentation.
    pub async fn chat(self: &Arc<Self>, caller: &Caller, request: Request) -> Result<ChatResponse, Failure> {
        let (mut call, checked) = self.begin(caller, request, false).await?;
        let engine = call.engine.clone();
        let deadline = call.deadline;
        let answer = cancellable(caller, engine.chat(&checked, deadline)).await;
        let (result, retries) = match answer {
            Some((result, retries)) => (result.map_err(Failure::from_call), retries),
            None => (Err(Failure::Provider("cancelled".into())), 0),
        };
        call.retries = retries;
        match result {
            Ok(response) => {
                call.end(Ok(&response), response.usage.total()).await?;
                Ok(response)
            }
            Err(failure) => {
                call.end(Err(&failure), 0).await?;
                Err(failure)
            }
        }
    }

    /// One streamed completion for `caller`: the stream's first event is awaited by the caller ([`Streaming::next`]).
    pub async fn chat_stream(self: &Arc<Self>, caller: &Caller, request: Request) -> Result<Streaming, Failure> {
        let (mut call, checked) = self.begin(caller, request, true).await?;
        let engine = call.engine.clone();
        let deadline = call.deadline;
        let opened = cancellable(caller, engine.chat_stream(&checked, deadline)).await;
        let (result, retries) = match opened {
            Some((result, retries)) => (result.map_err(Failure::from_call), retries),
            None => (Err(Failure::Provider("cancelled".into())), 0),
        };
        call.retries = retries;
        match result {
            Ok(stream) => {
                let model = call.model.clone();
                Ok(Streaming { call: Some(call), stream, caller: caller.clone(), model })
            }
            Err(failure) => {
                call.end(Err(&failure), 0).await?;
                Err(failure)
            }
        }
    }

    /// Steps 1 to 3 of a call: the run's cap, the recorded start, the checks. From the recorded start on, the
    /// returned call (or its drop) records the ending.
    async fn begin(
        self: &Arc<Self>,
        caller: &Caller,
        request: Request,
        stream: bool,
    ) -> Result<(Call, ChatRequest), Failure> {
        if let Some(budget) = &caller.budget
            && let Err(over) = budget.take(&[(Counted::LlmCalls, 1)])
        {
            let run = caller.run_id.as_deref().unwrap_or_default();
            crate::sandbox::budget::report(self.log.as_deref(), &caller.token_id, run, &over).await;
            return Err(Failure::OverBudget(over.to_string()));
        }
        let model = request.model.clone();
        let configured = self.config.models.get(&model).cloned();
        let provider = configured.as_ref().map(|m| m.provider.clone()).unwrap_or_default();
        let mut detail = serde_json::json!({
            "stream": stream,
            "messages": request.messages.len(),
            "tools": request.tools.len(),
            "input_bytes": types::prompt_bytes(&request.messages),
        });
        if self.record_prompts {
            detail["prompt"] = recorded_messages(&request.messages);
        }
        let call_id = crate::journal::fresh_call_id();
        let start = Op::StartLlmCall {
            call_id: call_id.clone(),
            run_id: caller.run_id.clone(),
            agent: caller.agent.clone(),
            model: model.clone(),
            provider: provider.clone(),
            rate: caller.rate,
            budgets: caller.period_budgets(),
            detail,
        };
        let started = Instant::now();
        match self.record(caller, start).await {
            Ok(()) => {}
            Err(AppendError::Rejected(reason)) => {
                let failure = if reason.starts_with("rate limit") {
                    Failure::RateLimited(reason)
                } else if reason.starts_with("llm budget") {
                    Failure::OverBudget(reason)
                } else {
                    Failure::Denied(reason)
                };
                self.count(&model, failure.outcome(), None, 0.0);
                return Err(failure);
            }
            Err(e) => return Err(Failure::Provider(format!("cannot record the call: {e}"))),
        }
        let mut call = Call {
            gateway: self.clone(),
            caller: caller.clone(),
            call_id,
            model: model.clone(),
            provider,
            stream,
            started,
            retries: 0,
            max_tokens: 0,
            reserved: 0,
            prompt_bytes: types::prompt_bytes(&request.messages),
            engine: Arc::new(NoEngine),
            deadline: caller.deadline.checked_sub(DEADLINE_MARGIN).unwrap_or(caller.deadline),
            ended: false,
        };
        match self.check(caller, request, configured.as_ref()) {
            Ok((checked, engine, reserved)) => {
                call.max_tokens = checked.max_tokens;
                call.reserved = reserved;
                call.engine = engine;
                Ok((call, checked))
            }
            Err(failure) => {
                call.end(Err(&failure), 0).await?;
                Err(failure)
            }
        }
    }

    /// Step 3: the token, the model, the request, the run's token budget.
    fn check(
        &self,
        caller: &Caller,
        request: Request,
        model: Option<&config::Model>,
    ) -> Result<(ChatRequest, Arc<dyn LlmEngine>, u64), Failure> {
        self.allowed(caller, &request.model)?;
        let Some(model) = model else {
            return Err(Failure::InvalidRequest(format!(
                "model {} is not configured in this host (toka-host llm models)",
                shown(&request.model)
            )));
        };
        let engine = self
            .engines
            .get(&model.provider)
            .cloned()
            .ok_or_else(|| Failure::Provider(format!("provider {} has no engine", model.provider)))?;
        let mut functions = Vec::with_capacity(request.tools.len());
        for (name, description, parameters) in request.tools {
            let parameters: serde_json::Value = serde_json::from_str(&parameters).map_err(|e| {
                Failure::InvalidRequest(format!("the parameters of function `{}` are not JSON: {e}", shown(&name)))
            })?;
            functions.push(Function { name, description, parameters });
        }
        let (messages, tools, stop) = types::check(request.messages, functions, request.temperature, request.stop)
            .map_err(Failure::InvalidRequest)?;
        if request.max_tokens == Some(0) {
            return Err(Failure::InvalidRequest("max-tokens must be at least 1".into()));
        }
        let prompt = u64::from(types::estimate_tokens(types::prompt_bytes(&messages)));
        let asked = request.max_tokens.unwrap_or(model.max_tokens);
        let granted = caller.tokens.reserve(prompt, u64::from(asked)).map_err(|(why, first)| {
            if first && let Some(run) = caller.run_id.clone() {
                // Recorded before the call's own ending; the refusal stands whether or not this lands.
                let op = Op::ReachLimit { run_id: run, limit: "llm-tokens".into(), cap: caller.tokens.cap() };
                self.record_now(caller, op);
            }
            Failure::OverBudget(why)
        })?;
        // From here on the reservation is the call's: its ending (or its drop) settles it.
        let max_tokens = u32::try_from(granted).unwrap_or(u32::MAX);
        let checked = ChatRequest {
            model: model.upstream.clone(),
            messages,
            tools,
            temperature: request.temperature,
            max_tokens,
            stop,
        };
        Ok((checked, engine, prompt + granted))
    }
}

/// Whether `token` allows `agent` (running `component`, if pinned) to call `model` now: its grants (a name, or a
/// pattern such as `gpt-*`), every attenuation block's checks, time and windows. Revocation is the caller's to check.
pub fn token_allows(token: &Verified, agent: &str, component: Option<String>, model: &str) -> Result<(), String> {
    config::check_model_name(model)?;
    let request = RunRequest {
        agent: agent.to_string(),
        grants: vec![Grant { kind: "llm".into(), value: model.into(), mode: String::new() }],
        limits: TokenLimits::default(),
        component,
        plugin: None,
    };
    token::authorize(token, &request, SystemTime::now())
        .map_err(|(grant, reason)| format!("grant refused: {grant}: {}", crate::error::one_line(&reason)))
}

/// Races `work` against the caller's cancellation (`None`: cancelled).
async fn cancellable<T>(caller: &Caller, work: impl std::future::Future<Output = T>) -> Option<T> {
    match &caller.cancel {
        None => Some(work.await),
        Some(cancel) => tokio::select! {
            out = work => Some(out),
            () = cancel.cancelled() => None,
        },
    }
}

/// What a call's `engine` is before the checks pass (never called).
struct NoEngine;

#[async_trait::async_trait]
impl LlmEngine for NoEngine {
    async fn chat(&self, _: &ChatRequest, _: Instant) -> (Result<ChatResponse, CallError>, u32) {
        (Err(CallError::Unavailable("no engine".into())), 0)
    }

    async fn chat_stream(&self, _: &ChatRequest, _: Instant) -> (Result<Box<dyn CompletionStream>, CallError>, u32) {
        (Err(CallError::Unavailable("no engine".into())), 0)
    }
}

/// A call whose start is recorded: it records its ending once, explicitly or when dropped.
struct Call {
    gateway: Arc<Gateway>,
    caller: Caller,
    call_id: String,
    model: String,
    provider: String,
    stream: bool,
    started: Instant,
    retries: u32,
    max_tokens: u32,
    /// The run's tokens reserved for this call by its check, settled when it ends.
    reserved: u64,
    prompt_bytes: usize,
    engine: Arc<dyn LlmEngine>,
    deadline: Instant,
    ended: bool,
}

impl Call {
    fn end_op(&self, result: Result<&ChatResponse, &Failure>, charged: u64, outcome: &str) -> Op {
        let usage = result.ok().map(|r| r.usage);
        let mut detail = serde_json::json!({
            "outcome": outcome,
            "provider": self.provider,
            "stream": self.stream,
            "tokens_in": usage.map_or(0, |u| u.prompt_tokens),
            "tokens_out": usage.map_or(0, |u| u.completion_tokens),
            "tokens_charged": charged,
            "latency_ms": (self.started.elapsed().as_secs_f64() * 1e6).round() / 1e3,
            "retries": self.retries,
            "max_tokens": self.max_tokens,
        });
        match result {
            Ok(r) => {
                detail["finish_reason"] = serde_json::json!(r.finish);
                detail["tool_calls"] = serde_json::json!(r.message.tool_calls.len());
                detail["output_bytes"] = serde_json::json!(
                    r.message.content.len() + r.message.tool_calls.iter().map(|c| c.arguments.len()).sum::<usize>()
                );
                if r.usage.estimated {
                    detail["usage_estimated"] = serde_json::json!(true);
                }
                if self.gateway.record_prompts {
                    detail["completion"] = recorded_messages(std::slice::from_ref(&r.message));
                }
            }
            Err(f) => detail["error"] = serde_json::json!(f.message()),
        }
        Op::EndLlmCall {
            call_id: self.call_id.clone(),
            run_id: self.caller.run_id.clone(),
            agent: self.caller.agent.clone(),
            model: self.model.clone(),
            ok: result.is_ok(),
            tokens: charged,
            budgets: self.caller.period_budgets(),
            detail,
        }
    }

    /// Records the ending, charges `charged` tokens to the run's budget and counts the call.
    async fn end(&mut self, result: Result<&ChatResponse, &Failure>, charged: u64) -> Result<(), Failure> {
        self.ended = true;
        let outcome = match result {
            Ok(_) => "success",
            Err(f) => f.outcome(),
        };
        self.finish(result, charged, outcome);
        let op = self.end_op(result, charged, outcome);
        self.gateway
            .record(&self.caller, op)
            .await
            .map_err(|e| Failure::Provider(format!("the call ended but could not be recorded: {e}")))
    }

    fn finish(&self, result: Result<&ChatResponse, &Failure>, charged: u64, outcome: &'static str) {
        self.caller.tokens.settle(self.reserved, charged);
        let usage = result.ok().map(|r| r.usage).or_else(|| {
            (charged > 0).then(|| Usage {
                prompt_tokens: types::estimate_tokens(self.prompt_bytes),
                completion_tokens: u32::try_from(charged)
                    .unwrap_or(u32::MAX)
                    .saturating_sub(types::estimate_tokens(self.prompt_bytes)),
                estimated: true,
            })
        });
        self.gateway.count(&self.model, outcome, usage, self.started.elapsed().as_secs_f64());
    }

    /// Ends a call that was left midway (`outcome`: `cancelled`, `abandoned`), charging `charged` tokens.
    fn abandon(&mut self, outcome: &'static str, why: &str, charged: u64) {
        if self.ended {
            return;
        }
        self.ended = true;
        let failure = Failure::Provider(why.to_string());
        self.finish(Err(&failure), charged, outcome);
        let op = self.end_op(Err(&failure), charged, outcome);
        self.gateway.record_now(&self.caller, op);
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        let charged = u64::from(types::estimate_tokens(self.prompt_bytes));
        self.abandon("cancelled", "the call was stopped before it ended (the run was cancelled or timed out)", charged);
    }
}

/// A streamed completion in progress.
pub struct Streaming {
    call: Option<Call>,
    stream: Box<dyn CompletionStream>,
    caller: Caller,
    /// The model as the request named it.
    pub model: String,
}

impl Streaming {
    /// The next event; `Ok(None)` once the stream has ended (after `Done` or an error).
    pub async fn next(&mut self) -> Result<Option<StreamEvent>, Failure> {
        let Some(call) = self.call.as_mut() else { return Ok(None) };
        let step = cancellable(&self.caller, self.stream.next()).await;
        let step = match step {
            Some(step) => step.map_err(Failure::from_call),
            None => Err(Failure::Provider("cancelled".into())),
        };
        match step {
            Ok(Some(StreamEvent::Delta(d))) => Ok(Some(StreamEvent::Delta(d))),
            Ok(Some(StreamEvent::Done(response))) => {
                let mut call = self.call.take().expect("present above");
                call.end(Ok(&response), response.usage.total()).await?;
                Ok(Some(StreamEvent::Done(response)))
            }
            Ok(None) => {
                let failure = Failure::Provider("the stream ended without a completion".into());
                let mut call = self.call.take().expect("present above");
                call.end(Err(&failure), 0).await?;
                Err(failure)
            }
            Err(failure) => {
                // Text already passed on was generated: it counts, with the prompt, against the budgets.
                let charged = if self.stream.delivered() > 0 {
                    u64::from(types::estimate_tokens(call.prompt_bytes))
                        + u64::from(types::estimate_tokens(self.stream.delivered()))
                } else {
                    0
                };
                let mut call = self.call.take().expect("present above");
                call.end(Err(&failure), charged).await?;
                Err(failure)
            }
        }
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        if let Some(mut call) = self.call.take() {
            let charged = u64::from(types::estimate_tokens(call.prompt_bytes))
                + u64::from(types::estimate_tokens(self.stream.delivered()));
            call.abandon("abandoned", "the stream was dropped before its end", charged);
        }
    }
}

/// Messages as `--record-prompts` stores them: each text cut to the log's text bound, and only the latest messages
/// that fit [`MAX_RECORDED`] bytes (with how many earlier ones were left out).
fn recorded_messages(messages: &[Message]) -> serde_json::Value {
    let mut kept = Vec::new();
    let mut size = 0;
    for m in messages.iter().rev() {
        let mut v = serde_json::to_value(m).unwrap_or_default();
        crate::bounds::bound_value(&mut v, crate::bounds::MAX_DEPTH, Some(crate::bounds::MAX_TEXT));
        let len = v.to_string().len();
        if size + len > MAX_RECORDED {
            break;
        }
        size += len;
        kept.push(v);
    }
    let omitted = messages.len() - kept.len();
    kept.reverse();
    if omitted > 0 {
        kept.insert(0, serde_json::json!({ "omitted_messages": omitted }));
    }
    serde_json::Value::Array(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_prompts_are_bounded() {
        let many: Vec<Message> =
            (0..200).map(|i| Message::new(types::Role::User, format!("{i} {}", "x".repeat(5000)))).collect();
        let v = recorded_messages(&many);
        assert!(v.to_string().len() <= MAX_RECORDED + 100, "{}", v.to_string().len());
        assert!(v[0]["omitted_messages"].as_u64().unwrap() > 190);
        let last = v.as_array().unwrap().last().unwrap()["content"].as_str().unwrap();
        assert!(last.starts_with("199 ") && last.ends_with("bytes in all]"), "the latest message, cut: {last:.20}");
    }

    #[test]
    fn run_tokens_refuse_once_spent_and_report_once() {
        let t = RunTokens::new(100);
        // A call of prompt 10 asking for up to 1000 is granted the 90 left, all of it reserved.
        assert_eq!(t.reserve(10, 1000).unwrap(), 90);
        // It used 95 in all: settled to that.
        t.settle(100, 95);
        assert_eq!(t.used(), 95);
        let (why, first) = t.reserve(10, 50).unwrap_err();
        assert!(first && why.contains("more than the 5 model tokens the run has left"), "{why}");
        t.settle(0, 5);
        let (why, first) = t.reserve(0, 50).unwrap_err();
        assert!(!first && why.contains("used its 100 model tokens"), "{why}");
    }

    /// Calls open at once (four streams) cannot together pass the cap: each reserves its share when it is checked,
    /// not when it ends; what a call does not use comes back when it is settled.
    #[test]
    fn calls_open_at_once_share_the_cap_instead_of_each_seeing_all_of_it() {
        let t = RunTokens::new(1000);
        let first = t.reserve(10, 1000).unwrap();
        assert_eq!(first, 990);
        assert!(t.reserve(10, 1000).is_err(), "a second call open at the same time finds nothing left");
        // Positive control: the first call used 200 in all; the rest comes back for the next call.
        t.settle(10 + first, 200);
        assert_eq!(t.reserve(10, 1000).unwrap(), 790);
        // A small ask reserves only what it asks.
        let t = RunTokens::new(1000);
        let grants: Vec<u64> = (0..4).map(|_| t.reserve(10, 200).unwrap()).collect();
        assert_eq!(grants, [200, 200, 200, 200]);
        assert_eq!(t.used(), 840);
        assert_eq!(t.reserve(10, 200).unwrap(), 150, "the fifth gets what is left, no more");
    }

    #[test]
    fn patterns_match_their_prefix_only() {
        assert!(pattern_matches("gpt-*", "gpt-4o") && pattern_matches("*", "x") && pattern_matches("m", "m"));
        assert!(!pattern_matches("gpt-*", "gpt") && !pattern_matches("m", "m2") && !pattern_matches("gpt-4o", "gpt-*"));
        assert_eq!(pattern_prefix("gpt-*"), Some("gpt-"));
    }

    /// A held token is checked again at each call: once its root key is retired, the same caller is refused.
    #[test]
    fn a_retired_root_key_refuses_a_held_token_at_the_next_call() {
        let home = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let ms = |t: SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        let (keys, ()) = crate::token::keys::KeyStore::update(home.path(), |k| k.init(ms(now)).map(drop)).unwrap();
        let request = crate::token::MintRequest {
            agent: "a".into(),
            grants: vec![Grant::parse("llm:m").unwrap()],
            ttl: Some(Duration::from_secs(600)),
            ..Default::default()
        };
        let text = crate::token::mint(&keys, &request, now).unwrap().to_base64().unwrap();
        let token = Arc::new(Verified::new(&keys, &text, now).unwrap());
        std::fs::write(
            home.path().join(config::FILE_NAME),
            "[providers.p]\nkind = \"openai\"\n[models.m]\nprovider = \"p\"\n",
        )
        .unwrap();
        let gateway = Gateway::open(home.path(), None, false).unwrap();
        let caller = Caller {
            agent: "a".into(),
            run_id: None,
            token_id: token.revocation_ids[0].clone(),
            token,
            rate: None,
            component: None,
            deadline: Instant::now() + Duration::from_secs(60),
            budget: None,
            tokens: Arc::new(RunTokens::new(100)),
            cancel: None,
            confined: Vec::new(),
        };
        assert_eq!(gateway.allowed(&caller, "m"), Ok(()));
        assert!(matches!(gateway.allowed(&caller, "n"), Err(Failure::Denied(_))), "a model it does not grant");
        crate::token::keys::KeyStore::update(home.path(), |k| {
            k.rotate(ms(now), 0)?;
            k.retire(1)
        })
        .unwrap();
        let refused = gateway.allowed(&caller, "m").unwrap_err();
        assert!(
            matches!(&refused, Failure::Denied(m) if m.starts_with("token refused: ") && m.contains("retired")),
            "{refused:?}"
        );
    }

    #[test]
    fn shown_names_are_short_and_escaped() {
        assert_eq!(shown("a\nb"), "a\\nb");
        assert_eq!(shown(&"x".repeat(100)).len(), 67);
    }
}
