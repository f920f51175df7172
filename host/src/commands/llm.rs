//! `toka-host llm`: the model gateway from the command line. `models` lists the models `$TOKA_HOME/llm.toml`
//! configures (with where each provider's key comes from, never the key) and which of them a token may use; `test`
//! sends one request to a model through the gateway (the same checks, retries and records as an agent's call) and
//! prints the answer.

use crate::home::Home;
use crate::llm::types::{Message, Role, StreamEvent};
use crate::llm::{Caller, Failure, Request, RunTokens};
use crate::runtime::{Host, HostOptions};
use crate::token::{Grant, RunRequest, TokenLimits};
use clap::{Args, Subcommand};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct LlmCommand {
    #[command(subcommand)]
    pub action: LlmAction,
}

#[derive(Debug, Subcommand)]
pub enum LlmAction {
    /// List the configured models, their providers and key sources, and (with --token) which the token may use.
    Models {
        /// A token: each model is marked allowed or not for it (a file, `-` for stdin, or the base64 itself).
        #[arg(long)]
        token: Option<String>,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Send one request to a model through the gateway and print the answer (exit 0 when the provider answered).
    Test {
        /// The model, as configured.
        #[arg(long)]
        model: String,
        /// The user message.
        #[arg(long, default_value = "Reply with the single word OK.")]
        prompt: String,
        /// Stream the answer, printing it as it comes.
        #[arg(long)]
        stream: bool,
        /// The most completion tokens to ask for [default: the model's configured max_tokens].
        #[arg(long, value_name = "N")]
        max_tokens: Option<u32>,
        /// How long the call may take in all, retries included.
        #[arg(long, default_value = "60s", value_parser = crate::units::parse_duration)]
        timeout: Duration,
        /// The token to call with (default: one minted on the spot for `llm:MODEL` with the local root key).
        #[arg(long)]
        token: Option<String>,
        /// Record the prompt and the completion in the event log.
        #[arg(long)]
        record_prompts: bool,
        /// Print the answer as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// The exit code of a failed call.
fn exit_code(f: &Failure) -> i32 {
    use crate::error::Outcome;
    match f {
        Failure::Denied(_) => Outcome::GrantRefused.exit_code(),
        Failure::InvalidRequest(_) => Outcome::InvalidInput.exit_code(),
        Failure::RateLimited(_) | Failure::OverBudget(_) => Outcome::RateLimited.exit_code(),
        Failure::Timeout(_) => Outcome::Timeout.exit_code(),
        Failure::Provider(_) => Outcome::HostError.exit_code(),
    }
}

impl LlmCommand {
    pub fn execute(self, home: &Home) -> i32 {
        let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("toka-host: cannot start the async runtime: {e}");
                return crate::error::Outcome::HostError.exit_code();
            }
        };
        rt.block_on(self.run(home))
    }

    async fn run(self, home: &Home) -> i32 {
        let host = match &self.action {
            LlmAction::Test { record_prompts, .. } => {
                Host::open(home.clone(), HostOptions { record_prompts: *record_prompts, ..HostOptions::default() })
            }
            LlmAction::Models { .. } => Host::open(home.clone(), HostOptions::default()),
        };
        let host = match host {
            Ok(h) => h,
            Err(e) => {
                eprintln!("toka-host: {e}");
                return e.outcome().exit_code();
            }
        };
        match self.action {
            LlmAction::Models { token, json } => models(&host, token.as_deref(), json),
            LlmAction::Test { model, prompt, stream, max_tokens, timeout, token, json, .. } => {
                test(&host, &model, prompt, stream, max_tokens, timeout, token.as_deref(), json).await
            }
        }
    }
}

/// Verifies a token against the home's root keys.
fn verify(host: &Host, text: &str) -> Result<Arc<crate::token::Verified>, String> {
    let keys = crate::token::keys::KeyStore::load(&host.home().dir).map_err(|e| e.to_string())?;
    crate::token::cache::global().verify(&keys, text, std::time::SystemTime::now()).map_err(|e| e.to_string())
}

fn models(host: &Host, token: Option<&str>, json: bool) -> i32 {
    let config = host.llm().config();
    let verified = match token.map(crate::commands::token::read_token).transpose() {
        Err(e) => {
            eprintln!("toka-host: token refused: {e}");
            return crate::error::Outcome::TokenRefused.exit_code();
        }
        Ok(None) => None,
        Ok(Some(text)) => match verify(host, &text) {
            Ok(v) => Some(v),
            Err(e) => {
                eprintln!("toka-host: token refused: {e}");
                return crate::error::Outcome::TokenRefused.exit_code();
            }
        },
    };
    let revoked =
        verified.as_ref().and_then(|v| crate::token::revoked_among(host.db(), &v.revocation_ids).ok().flatten());
    let mut rows = Vec::new();
    for m in config.models.values() {
        let p = &config.providers[&m.provider];
        let key = match &p.key {
            Ok(Some(_)) => "set".to_string(),
            Ok(None) => "none".to_string(),
            Err(why) => format!("missing: {why}"),
        };
        let allowed = verified.as_ref().map(|v| match &revoked {
            Some(id) => Err(format!("token is revoked (revocation id {id})")),
            None => crate::llm::token_allows(v, v.agent.as_deref().unwrap_or_default(), None, &m.name),
        });
        rows.push(serde_json::json!({
            "model": m.name,
            "provider": m.provider,
            "kind": p.kind,
            "upstream": m.upstream,
            "base_url": p.base_url,
            "key_source": p.key_source,
            "key": key,
            "max_tokens": m.max_tokens,
            "allowed": allowed.as_ref().map(|a| a.is_ok()),
            "refused_because": allowed.and_then(|a| a.err()),
        }));
    }
    if json {
        println!("{}", serde_json::Value::Array(rows));
        return 0;
    }
    if rows.is_empty() {
        let path = host.home().dir.join(crate::llm::config::FILE_NAME);
        println!("no models configured (write {})", path.display());
        return 0;
    }
    let mut out = std::io::stdout().lock();
    for r in &rows {
        let allowed = match r["allowed"].as_bool() {
            None => String::new(),
            Some(true) => "  allowed".into(),
            Some(false) => format!("  refused: {}", r["refused_because"].as_str().unwrap_or_default()),
        };
        let key = r["key"].as_str().unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<24} {:<10} {:<9} {} ({})  key {key}{allowed}",
            r["model"].as_str().unwrap_or_default(),
            r["provider"].as_str().unwrap_or_default(),
            r["kind"].as_str().unwrap_or_default(),
            r["upstream"].as_str().unwrap_or_default(),
            r["base_url"].as_str().unwrap_or_default(),
        );
    }
    0
}

#[allow(clippy::too_many_arguments, reason = "one function per subcommand, its flags as they come")]
async fn test(
    host: &Host,
    model: &str,
    prompt: String,
    stream: bool,
    max_tokens: Option<u32>,
    timeout: Duration,
    token: Option<&str>,
    json: bool,
) -> i32 {
    let token = match token.map(crate::commands::token::read_token).transpose() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("toka-host: token refused: {e}");
            return crate::error::Outcome::TokenRefused.exit_code();
        }
    };
    // Without a token, the operator's own: one minted on the spot for exactly this model.
    let agent = match &token {
        Some(text) => match verify(host, text) {
            Ok(v) => v.agent.clone().unwrap_or_default(),
            Err(e) => {
                eprintln!("toka-host: token refused: {e}");
                return crate::error::Outcome::TokenRefused.exit_code();
            }
        },
        None => "llm-test".to_string(),
    };
    let request = RunRequest {
        agent: agent.clone(),
        grants: vec![Grant { kind: "llm".into(), value: model.to_string(), mode: String::new() }],
        limits: TokenLimits::default(),
        component: None,
        plugin: None,
    };
    let authorization = match host.authorize_token(token.as_deref(), &request, crate::token::LOCAL_TTL) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("toka-host: {e}");
            return e.outcome().exit_code();
        }
    };
    let tokens = authorization.token.llm_tokens.unwrap_or(crate::llm::DEFAULT_RUN_TOKENS);
    let caller = Caller {
        agent,
        run_id: None,
        token_id: authorization.token_id,
        token: authorization.token,
        rate: authorization.rate,
        component: None,
        deadline: crate::units::deadline_after(timeout),
        budget: None,
        tokens: Arc::new(RunTokens::new(tokens)),
        cancel: None,
        confined: Vec::new(),
    };
    let request = Request {
        model: model.to_string(),
        messages: vec![Message::new(Role::User, prompt)],
        max_tokens,
        ..Request::default()
    };
    let started = Instant::now();
    let gateway = host.llm();
    let result = if stream {
        match gateway.chat_stream(&caller, request).await {
            Err(f) => Err(f),
            Ok(mut s) => loop {
                match s.next().await {
                    Ok(Some(StreamEvent::Delta(d))) if !json => {
                        let mut out = std::io::stdout().lock();
                        let _ = write!(out, "{d}").and_then(|()| out.flush());
                    }
                    Ok(Some(StreamEvent::Delta(_))) => {}
                    Ok(Some(StreamEvent::Done(r))) => break Ok(r),
                    Ok(None) => break Err(Failure::Provider("the stream ended without a completion".into())),
                    Err(f) => break Err(f),
                }
            },
        }
    } else {
        gateway.chat(&caller, request).await
    };
    let seconds = started.elapsed().as_secs_f64();
    match result {
        Ok(r) => {
            if json {
                println!("{}", serde_json::json!({ "model": model, "response": r, "seconds": seconds }));
            } else {
                if stream {
                    println!();
                } else {
                    println!("{}", r.message.content);
                }
                for c in &r.message.tool_calls {
                    println!("tool call {} {}({})", c.id, c.name, c.arguments);
                }
                eprintln!(
                    "toka-host: {model}: {} prompt + {} completion tokens{}, {:.0} ms",
                    r.usage.prompt_tokens,
                    r.usage.completion_tokens,
                    if r.usage.estimated { " (estimated)" } else { "" },
                    seconds * 1e3
                );
            }
            0
        }
        Err(f) => {
            if json {
                println!("{}", serde_json::json!({ "model": model, "error": f.message(), "outcome": f.outcome() }));
            }
            eprintln!("toka-host: {model}: {}: {}", f.outcome(), f.message());
            exit_code(&f)
        }
    }
}
