//! Capability tokens: every right a run has comes from a Biscuit token, checked with Datalog before the guest starts.
//!
//! A minted token's authority block states the agent, its grants and its limits as facts (`grant("fs",
//! "/srv/data/", "ro")`, `fuel(1000000)`), and checks for expiry and for the limits a run may ask for. Attenuation
//! appends blocks that hold only checks, so a token can only narrow: a fact written in a later block is not trusted by
//! the host's policies (Biscuit's default scope is the authority block and the authorizer), so trying to add a right
//! adds nothing. The host authorizes each requested grant in its own authorizer, so a refusal names the grant and the
//! check that failed. This module never grants anything by itself: no token, no run.

pub mod cache;
pub mod keys;
pub mod window;

pub use crate::kernel::{Rate, TokenBudget};
pub use cache::{TokenCache, Verified};
pub use window::Window;

use biscuit_auth::builder::BlockBuilder;
use biscuit_auth::{AuthorizerBuilder, AuthorizerLimits, Biscuit, UnverifiedBiscuit};
use keys::{KeyError, KeyStore};
use serde::Serialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Kinds of grant a token can carry.
pub const KINDS: [&str; 10] = ["fs", "env", "net", "tool", "llm", "spawn", "state", "stdin", "api", "publish"];

/// One grant, as a token states it and as a run requests it: `(kind, value, mode)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Grant {
    pub kind: String,
    pub value: String,
    /// `ro` or `rw` for `fs` and `state`; empty otherwise.
    pub mode: String,
}

impl std::fmt::Display for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.value.is_empty(), self.mode.is_empty()) {
            (true, true) => write!(f, "{}", self.kind),
            (true, false) => write!(f, "{}:{}", self.kind, self.mode),
            (false, true) => write!(f, "{}:{}", self.kind, self.value),
            (false, false) => write!(f, "{}:{}:{}", self.kind, self.value, self.mode),
        }
    }
}

/// Makes a directory path comparable by prefix: absolute, single slashes, no `.`/`..`, one trailing `/`.
pub fn normalize_dir(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!("fs path `{path}` must be absolute"));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(format!("fs path `{path}` must not contain `..`")),
            p => parts.push(p),
        }
    }
    Ok(format!("/{}{}", parts.join("/"), if parts.is_empty() { "" } else { "/" }))
}

impl Grant {
    /// Parses `KIND:VALUE`: `fs:PATH:ro|rw`, `env:NAME`, `net:HOST:PORT`, `tool:NAME`, `llm:MODEL`, `spawn:AGENT`,
    /// `state:ro|rw`, `stdin`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (kind, rest) = text.split_once(':').unwrap_or((text, ""));
        let g = |value: &str, mode: &str| Grant { kind: kind.into(), value: value.into(), mode: mode.into() };
        let bad = |why: &str| format!("invalid grant `{text}`: {why}");
        match kind {
            "fs" => {
                let (path, mode) = rest.rsplit_once(':').ok_or_else(|| bad("expected fs:PATH:ro or fs:PATH:rw"))?;
                if mode != "ro" && mode != "rw" {
                    return Err(bad("mode must be ro or rw"));
                }
                Ok(g(&normalize_dir(path).map_err(|e| bad(&e))?, mode))
            }
            "state" if rest == "ro" || rest == "rw" => Ok(g("", rest)),
            "state" => Err(bad("expected state:ro or state:rw")),
            "stdin" if rest.is_empty() => Ok(g("", "")),
            // One canonical form for tokens and requests alike (`[::1]:8080`, lowercase names), so that what was
            // minted matches what a run asks for.
            "net" => Ok(g(&crate::grants::NetGrant::parse_peer(rest).map_err(|e| bad(&e))?.canonical(), "")),
            // A model, or a pattern that ends in `*` (`llm:gpt-*`, `llm:*`) and covers every model it prefixes.
            "llm" => {
                let name = rest.strip_suffix('*').unwrap_or(rest);
                if name != rest && name.is_empty() {
                    return Ok(g(rest, ""));
                }
                crate::llm::config::check_model_name(name).map_err(|e| bad(&e))?;
                Ok(g(rest, ""))
            }
            "env" | "tool" | "spawn" if !rest.is_empty() && !rest.contains('"') => Ok(g(rest, "")),
            // The service's read side: runs, events, agents, tools and metrics (of the token's own agent, or of
            // every agent for a token whose agent is `*`).
            "api" if rest == "read" => Ok(g(rest, "")),
            "api" => Err(bad("expected api:read")),
            // A package registry's write side: publish (and yank) the package NAME, or any package with `*`.
            "publish" if rest == "*" || crate::tools::check_name(rest).is_ok() => Ok(g(rest, "")),
            "publish" => Err(bad("expected publish:NAME or publish:*")),
            k if KINDS.contains(&k) => Err(bad("missing or invalid value")),
            _ => Err(bad(&format!("unknown kind `{kind}` (kinds: {})", KINDS.join(", ")))),
        }
    }

    fn datalog_fact(&self) -> String {
        let fact = format!("grant({:?}, {:?}, {:?})", self.kind, self.value, self.mode);
        // A pattern's prefix is stated beside it, for the policy that matches a model against it (Datalog has no
        // way to cut the `*` off a string).
        match self.llm_prefix() {
            Some(prefix) => format!("{fact};\ngrant_prefix({:?}, {prefix:?})", self.kind),
            None => fact,
        }
    }

    /// For a model pattern (`llm:PREFIX*`), its prefix.
    pub fn llm_prefix(&self) -> Option<&str> {
        if self.kind == "llm" { self.value.strip_suffix('*') } else { None }
    }
}

/// Limits stated in a token: ceilings for what a run may ask.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
pub struct TokenLimits {
    pub fuel: u64,
    pub memory: u64,
    pub timeout_ms: u64,
}

/// How far the host's clock may be from the clock of the machine that minted or attenuated a token. Expiry and
/// not-before checks pass if they hold at any instant within this much of the host's time: a token minted on a
/// machine 20 s ahead is usable at once, and one that expired 20 s ago still is. Time windows are evaluated at the
/// host's own time, without tolerance.
pub const CLOCK_SKEW: Duration = Duration::from_secs(30);

/// What to mint.
#[derive(Debug, Clone, Default)]
pub struct MintRequest {
    pub agent: String,
    pub grants: Vec<Grant>,
    pub limits: TokenLimits,
    pub ttl: Option<Duration>,
    /// An absolute expiry (the earlier of this and `ttl` applies).
    pub expires: Option<SystemTime>,
    /// Not valid before this time.
    pub not_before: Option<SystemTime>,
    /// At most this many attenuation blocks may be appended.
    pub max_depth: Option<u32>,
    /// The token is usable only inside every one of these windows.
    pub windows: Vec<Window>,
    /// Runs and boundary host calls of the agent, per time.
    pub rate: Option<Rate>,
    /// The sha256 (hex) of the only component the token may run (see [`pin_code`]).
    pub component: Option<String>,
    /// Model tokens (prompt and completion) one run may use.
    pub llm_tokens: Option<u64>,
    /// Model tokens the agent may use per period (see [`TokenBudget`]); every one applies.
    pub llm_budgets: Vec<TokenBudget>,
    /// The installed package (`PUBLISHER_KEY_ID/NAME`) the token is bound to: it runs only that package, in any
    /// version its publisher signs (see [`plugin_code`]).
    pub plugin: Option<String>,
}

/// States the model token limits: a block (the authority or an attenuation) can only add ceilings, and the host
/// applies the lowest of every block's (see [`cache::Verified`]).
fn llm_code(code: &mut String, tokens: Option<u64>, budgets: &[TokenBudget]) {
    if let Some(n) = tokens {
        code.push_str(&format!("llm_tokens({});\n", dl(n)));
    }
    for &TokenBudget { tokens, period_ms } in budgets {
        code.push_str(&format!("llm_budget({}, {});\n", dl(tokens), dl(period_ms)));
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("{0}")]
    Key(#[from] KeyError),
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token signature does not verify: {0}")]
    Signature(String),
    #[error("token is revoked (revocation id {0})")]
    Revoked(String),
    #[error("{0}")]
    Invalid(String),
}

/// Datalog integers are i64: larger limits (`--fuel unlimited` is u64::MAX) are stated as i64::MAX, which reads
/// back as unlimited.
fn dl(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn from_dl(n: i64) -> Option<u64> {
    if n == i64::MAX { Some(u64::MAX) } else { u64::try_from(n).ok() }
}

/// The latest instant a token can state (RFC 3339 has four-digit years): 9999-12-31T23:59:59Z.
const LATEST: Duration = Duration::from_secs(253_402_300_799);

/// `now + d`, saturating at [`LATEST`] (a lifetime of a thousand years must not overflow the clock and panic).
fn later(now: SystemTime, d: Duration) -> SystemTime {
    now.checked_add(d).map_or(UNIX_EPOCH + LATEST, |t| t.min(UNIX_EPOCH + LATEST))
}

fn rfc3339(t: SystemTime) -> String {
    let t = t.min(UNIX_EPOCH + LATEST);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Mints a token signed by the active root key.
pub fn mint(keys: &KeyStore, request: &MintRequest, now: SystemTime) -> Result<Biscuit, TokenError> {
    let (id, pair) = keys.signing()?;
    let invalid = |e: biscuit_auth::error::Token| TokenError::Invalid(e.to_string());
    let mut code = format!("agent({:?});\n", request.agent);
    for g in &request.grants {
        code.push_str(&g.datalog_fact());
        code.push_str(";\n");
    }
    let TokenLimits { fuel, memory, timeout_ms } = request.limits;
    let (fuel, memory, timeout_ms) = (dl(fuel), dl(memory), dl(timeout_ms));
    code.push_str(&format!("fuel({fuel});\nmemory({memory});\ntimeout_ms({timeout_ms});\n"));
    // A run may ask for less, never more.
    code.push_str("check if fuel_request($f), fuel($max), $f <= $max;\n");
    code.push_str("check if memory_request($m), memory($max), $m <= $max;\n");
    code.push_str("check if timeout_request($t), timeout_ms($max), $t <= $max;\n");
    if let Some(ttl) = request.ttl {
        code.push_str(&format!("check if time($t), $t <= {};\n", rfc3339(later(now, ttl))));
    }
    if let Some(expires) = request.expires {
        code.push_str(&format!("check if time($t), $t <= {};\n", rfc3339(expires)));
    }
    if let Some(not_before) = request.not_before {
        code.push_str(&format!("check if time($t), $t >= {};\n", rfc3339(not_before)));
    }
    if let Some(depth) = request.max_depth {
        // The host states each token's depth as `depth(N)`; this check is the token's own, so it holds whatever
        // the blocks after it say.
        code.push_str(&format!("max_depth({depth});\ncheck if depth($d), $d <= {depth};\n"));
    }
    window_code(&mut code, &request.windows);
    if let Some(Rate { n, period_ms }) = request.rate {
        code.push_str(&format!("rate({}, {});\n", dl(n), dl(period_ms)));
    }
    if let Some(digest) = &request.component {
        pin_code(&mut code, digest)?;
    }
    llm_code(&mut code, request.llm_tokens, &request.llm_budgets);
    if let Some(identity) = &request.plugin {
        plugin_code(&mut code, identity)?;
    }
    Biscuit::builder().code(&code).map_err(invalid)?.root_key_id(id).build(&pair).map_err(invalid)
}

/// A window's check: the host states `window_open(TEXT)` for each window text it finds in the token (`window(TEXT)`
/// facts, read from every block) whose window contains the current time. A block can state `window_open` itself, but
/// only its own checks trust it; the authority block's checks trust only the authority block and the host.
fn window_code(code: &mut String, windows: &[Window]) {
    for w in windows {
        let text = w.to_string();
        code.push_str(&format!("window({text:?});\ncheck if window_open({text:?});\n"));
    }
}

/// A pin: the token (or block) names the one component it may run, by digest. The host states
/// `component("sha256:HEX")` for the component a run loads (and for the calls that run makes), so the check holds only
/// for that component; a request that runs no component (`tool call`, MCP) states none and is refused.
fn pin_code(code: &mut String, digest: &str) -> Result<(), TokenError> {
    if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(TokenError::Invalid(format!("`{digest}` is not a sha256 digest (64 hex digits)")));
    }
    let pin = format!("sha256:{}", digest.to_ascii_lowercase());
    code.push_str(&format!("pinned({pin:?});\ncheck if component({pin:?});\n"));
    Ok(())
}

/// A binding to an installed package: the host states `plugin("KEY_ID/NAME")` for a run of the installed package
/// NAME whose publisher key is KEY_ID (and for the tool calls that run makes), so the check holds only for that
/// publisher's package of that name, whatever its version; a bare file with the same name states none.
fn plugin_code(code: &mut String, identity: &str) -> Result<(), TokenError> {
    let ok = identity
        .split_once('/')
        .is_some_and(|(key, name)| crate::plugin::publisher::is_key_id(key) && crate::tools::check_name(name).is_ok());
    if !ok {
        return Err(TokenError::Invalid(format!("`{identity}` is not a package identity (KEY_ID/NAME)")));
    }
    code.push_str(&format!("plugin_bound({identity:?});\ncheck if plugin({identity:?});\n"));
    Ok(())
}

/// What an attenuation block narrows.
#[derive(Debug, Clone, Default)]
pub struct Attenuation {
    /// Only these grants (or narrower ones) remain usable.
    pub only: Vec<Grant>,
    pub fuel: Option<u64>,
    pub ttl: Option<Duration>,
    /// Usable only inside these windows as well.
    pub windows: Vec<Window>,
    /// A stricter rate (the strictest rate stated in any block applies).
    pub rate: Option<Rate>,
    /// Usable only to run the component with this sha256 (hex).
    pub component: Option<String>,
    /// Ceilings on memory (bytes) and on a run's timeout (milliseconds), as `fuel` is on fuel.
    pub memory: Option<u64>,
    pub timeout_ms: Option<u64>,
    /// `only` is the exact list of what remains usable, even when it is empty (then no grant at all remains): how
    /// the orchestrator gives an agent exactly its own grants. Without it, an empty `only` narrows nothing.
    pub exact: bool,
    /// A lower ceiling of model tokens per run.
    pub llm_tokens: Option<u64>,
    /// Budgets of model tokens per period, added to the token's (all apply; the lowest per period).
    pub llm_budgets: Vec<TokenBudget>,
}

impl Attenuation {
    /// Narrows a token to exactly what `request` asks for: its grants (none beyond them, even when there are none)
    /// and its limits as ceilings. How a run gets exactly its own rights from a wider token (a plan step, a spawned
    /// child).
    pub fn exactly(request: &RunRequest) -> Attenuation {
        Attenuation {
            only: request.grants.clone(),
            exact: true,
            fuel: Some(request.limits.fuel),
            memory: Some(request.limits.memory),
            timeout_ms: Some(request.limits.timeout_ms),
            ..Attenuation::default()
        }
    }
}

/// Appends a block of checks; needs no key.
pub fn attenuate(token: &UnverifiedBiscuit, a: &Attenuation, now: SystemTime) -> Result<UnverifiedBiscuit, TokenError> {
    let mut code = String::new();
    if !a.only.is_empty() || a.exact {
        // Each requested grant must fall inside one of the listed grants; "none" is the request of a run that asks
        // for no grant at all (its limits are still checked).
        let mut alternatives = vec![r#"request("none", "", "")"#.to_string()];
        for g in &a.only {
            alternatives.push(match g.kind.as_str() {
                "fs" if g.mode == "rw" => format!(r#"request("fs", $p, $m), $p.starts_with({:?})"#, g.value),
                "fs" => format!(r#"request("fs", $p, "ro"), $p.starts_with({:?})"#, g.value),
                "state" if g.mode == "rw" => r#"request("state", "", $m)"#.to_string(),
                // A pattern keeps every model it prefixes (and nothing the token itself does not grant).
                "llm" if g.llm_prefix().is_some() => {
                    format!(r#"request("llm", $m, ""), $m.starts_with({:?})"#, g.llm_prefix().unwrap_or_default())
                }
                _ => format!("request({:?}, {:?}, {:?})", g.kind, g.value, g.mode),
            });
        }
        code.push_str(&format!("check if {};\n", alternatives.join(" or ")));
        // What the check above allows, as facts `token inspect` reads back to show the grants in force. Facts of
        // an attenuation block are trusted by no check of the authority block or the host, so they grant nothing.
        for g in &a.only {
            code.push_str(&format!("only({:?}, {:?}, {:?});\n", g.kind, g.value, g.mode));
        }
    }
    if let Some(fuel) = a.fuel {
        code.push_str(&format!("check if fuel_request($f), $f <= {};\n", dl(fuel)));
    }
    if let Some(memory) = a.memory {
        code.push_str(&format!("check if memory_request($m), $m <= {};\n", dl(memory)));
    }
    if let Some(timeout_ms) = a.timeout_ms {
        code.push_str(&format!("check if timeout_request($t), $t <= {};\n", dl(timeout_ms)));
    }
    if let Some(ttl) = a.ttl {
        code.push_str(&format!("check if time($t), $t <= {};\n", rfc3339(later(now, ttl))));
    }
    window_code(&mut code, &a.windows);
    if let Some(Rate { n, period_ms }) = a.rate {
        code.push_str(&format!("rate({}, {});\n", dl(n), dl(period_ms)));
    }
    if let Some(digest) = &a.component {
        pin_code(&mut code, digest)?;
    }
    llm_code(&mut code, a.llm_tokens, &a.llm_budgets);
    if code.is_empty() {
        return Err(TokenError::Invalid(
            "nothing to attenuate: give --only, --fuel, --ttl, --window, --rate, --component, --llm-tokens or \
             --llm-budget"
                .into(),
        ));
    }
    let block = BlockBuilder::new().code(&code).map_err(|e| TokenError::Invalid(e.to_string()))?;
    token.append(block).map_err(|e| TokenError::Invalid(e.to_string()))
}

/// Parses a token's base64 (whitespace around it is ignored) without verifying it.
pub fn parse_unverified(text: &str) -> Result<UnverifiedBiscuit, TokenError> {
    UnverifiedBiscuit::from_base64(text.trim()).map_err(|e| TokenError::Malformed(e.to_string()))
}

/// Verifies the signature chain against the root key the token names, and reads what the token states.
pub fn verify(keys: &KeyStore, text: &str, now: SystemTime) -> Result<Verified, TokenError> {
    Verified::new(keys, text, now)
}

/// Whether the root key that verified `verified` still verifies it at `now`: not retired, its overlap after a
/// rotation not over, and still the same key. Whoever holds a verified token for long (the MCP server, a run calling
/// tools) asks this at each use, as the token cache does on each hit: keys change in other processes.
pub fn root_key_still_verifies(home: &std::path::Path, verified: &Verified, now: SystemTime) -> Result<(), TokenError> {
    let public = KeyStore::current(home)?.verifying(verified.root_key_id, ms(now))?;
    if public.to_bytes() != verified.public_key {
        return Err(TokenError::Signature(format!("root key {} is no longer the key it was", verified.root_key_id)));
    }
    Ok(())
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The first of `ids` that has been revoked, if any.
pub fn revoked_among(db: &crate::db::Db, ids: &[String]) -> Result<Option<String>, redb::Error> {
    use redb::ReadableDatabase;
    let txn = db.redb().begin_read()?;
    let table = txn.open_table(crate::db::REVOKED)?;
    for id in ids {
        if table.get(id.as_str())?.is_some() {
            return Ok(Some(id.clone()));
        }
    }
    Ok(None)
}

/// What a run asks for, checked against a token.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub agent: String,
    pub grants: Vec<Grant>,
    pub limits: TokenLimits,
    /// The sha256 (hex) of the component that runs (for a pinned token); `None` when no component runs.
    pub component: Option<String>,
    /// The installed package that runs (`PUBLISHER_KEY_ID/NAME`); `None` for a file, an upload, or no component.
    pub plugin: Option<String>,
}

/// The host's policies: how a grant in the token covers a requested grant.
const POLICIES: &str = r#"
allow if request("none", "", "");
allow if request("fs", $p, $m), grant("fs", $g, "rw"), $p.starts_with($g);
allow if request("fs", $p, "ro"), grant("fs", $g, "ro"), $p.starts_with($g);
allow if request("state", "", "ro"), grant("state", "", "rw");
allow if request("llm", $m, ""), grant_prefix("llm", $p), $m.starts_with($p);
allow if request($k, $v, $m), grant($k, $v, $m), $k != "fs";
allow if request("publish", $v, ""), grant("publish", "*", "");
"#;

/// The facts the host states about the moment of a check: `time` at both ends of the clock-skew tolerance, and
/// `window_open` for each of the token's windows that contains `now`.
fn time_facts(verified: &Verified, now: SystemTime) -> String {
    let mut code = format!(
        "time({});\ntime({});\n",
        rfc3339(now.checked_sub(CLOCK_SKEW).unwrap_or(UNIX_EPOCH)),
        rfc3339(now + CLOCK_SKEW)
    );
    let at = i64::try_from(ms(now)).unwrap_or(i64::MAX);
    for (text, window) in &verified.windows {
        if window.as_ref().is_some_and(|w| w.contains(at)) {
            code.push_str(&format!("window_open({text:?});\n"));
        }
    }
    code
}

/// Authorizes every requested grant (and the limits) against a verified token; the first refusal names the grant
/// and the checks that failed.
pub fn authorize(verified: &Verified, request: &RunRequest, now: SystemTime) -> Result<(), (String, String)> {
    // For a token that states no time window, every program below is a function of the request and of the second
    // `now` falls in (the time facts are whole seconds, the skew whole seconds too): a request that passed in this
    // second passes again without writing the programs out (a tool call per agent call, say).
    let second = now.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs()).filter(|_| verified.windows.is_empty());
    let asked = second.map(|s| (s, cache::Asked::of(request)));
    if let Some((second, asked)) = &asked
        && verified.asked_before(*second, asked)
    {
        return Ok(());
    }
    authorize_each(verified, request, now)?;
    if let Some((second, asked)) = asked {
        verified.remember_asked(second, asked);
    }
    Ok(())
}

/// [`authorize`], grant by grant.
fn authorize_each(verified: &Verified, request: &RunRequest, now: SystemTime) -> Result<(), (String, String)> {
    let token = &verified.token;
    // A token for the agent `*` (an operator's) is for every agent.
    let agent_ok = format!("check if agent({:?}) or agent(\"*\");", request.agent);
    let none = Grant { kind: "none".into(), value: String::new(), mode: String::new() };
    let grants: Vec<&Grant> = if request.grants.is_empty() { vec![&none] } else { request.grants.iter().collect() };
    let mut time = time_facts(verified, now);
    if let Some(digest) = &request.component {
        time.push_str(&format!("component({:?});\n", format!("sha256:{digest}")));
    }
    if let Some(identity) = &request.plugin {
        time.push_str(&format!("plugin({identity:?});\n"));
    }
    for grant in grants {
        let TokenLimits { fuel, memory, timeout_ms } = request.limits;
        let (fuel, memory, timeout_ms) = (dl(fuel), dl(memory), dl(timeout_ms));
        let code = format!(
            "depth({});\n{time}request({:?}, {:?}, {:?});\nfuel_request({fuel});\nmemory_request({memory});\ntimeout_request({timeout_ms});\n{agent_ok}\n{POLICIES}",
            token.block_count().saturating_sub(1),
            grant.kind,
            grant.value,
            grant.mode
        );
        if verified.passed(&time, &code) {
            continue;
        }
        let name = if grant.kind == "none" { "limits".to_string() } else { grant.to_string() };
        let fail = |e: biscuit_auth::error::Token| (name.clone(), e.to_string());
        let mut authorizer = AuthorizerBuilder::new()
            .code(&code)
            .map_err(fail)?
            .set_limits(AUTHORIZER_LIMITS)
            .build(token)
            .map_err(fail)?;
        authorizer.authorize().map_err(fail)?;
        verified.remember(&time, code);
    }
    Ok(())
}

/// Datalog limits for every authorizer the host runs. Biscuit's default time limit (1 ms) trips on a loaded
/// machine; the fact and iteration limits stay at their defaults, which bound what a hostile block can make the host
/// compute.
const AUTHORIZER_LIMITS: AuthorizerLimits =
    AuthorizerLimits { max_facts: 1000, max_iterations: 100, max_time: Duration::from_millis(50) };

/// Reads the limits a token allows, for a run that did not ask for its own (the token's ceilings become the run's
/// limits). Fails as the run would if the token does not verify.
pub fn limits_of(home: &std::path::Path, text: &str) -> Result<TokenLimits, crate::error::RunError> {
    let refused =
        |e: &dyn std::fmt::Display| crate::error::RunError::TokenRefused(crate::error::one_line(&e.to_string()));
    let keys = KeyStore::current(home).map_err(|e| refused(&e))?;
    let verified = cache::global().verify(&keys, text, SystemTime::now()).map_err(|e| refused(&e))?;
    verified.limits.clone().map_err(|e| refused(&e))
}

/// Lifetime of the token minted on the spot from the operator's own CLI flags (no `--token`).
pub const LOCAL_TTL: Duration = Duration::from_secs(60);

/// What authorizing a run yields: the token's revocation id (recorded with every operation of the run) and its
/// rate limit for the agent.
#[derive(Debug, Clone)]
pub struct RunAuthorization {
    pub token_id: String,
    pub rate: Option<Rate>,
    pub token: std::sync::Arc<Verified>,
}

/// Authorizes a run: verifies `token` (or, without one, mints one on the spot from the operator's flags with the
/// local root key, creating it if this home has none, so that every run's rights flow through the same check),
/// refuses revoked tokens, then authorizes each requested grant and the limits. Verification goes through the
/// process's [`TokenCache`]; revocation, key status and time are checked on every call.
pub fn authorize_run(
    home: &std::path::Path,
    db: &crate::db::Db,
    token_text: Option<&str>,
    request: &RunRequest,
) -> Result<RunAuthorization, crate::error::RunError> {
    authorize_caller(home, db, token_text, request, LOCAL_TTL)
}

/// [`authorize_run`], with the lifetime of a token minted from local flags chosen by the caller (a long-running
/// server needs more than a run's minute).
pub fn authorize_caller(
    home: &std::path::Path,
    db: &crate::db::Db,
    token_text: Option<&str>,
    request: &RunRequest,
    local_ttl: Duration,
) -> Result<RunAuthorization, crate::error::RunError> {
    check_caller(home, token_text, request, local_ttl)?.settle(db)
}

/// A caller's token checked in every way but against the revocations, which are in the database: the first of
/// [`authorize_caller`]'s two steps, which needs no database, so that it can be taken while the database opens.
#[must_use = "a token is authorized only once it is checked against the revocations (`Unrevoked::settle`)"]
pub struct Unrevoked {
    verified: std::sync::Arc<Verified>,
    /// The token's own check, then the grants': refused, if so, only if none of its ids is revoked.
    checked: Result<(), crate::error::RunError>,
}

impl Unrevoked {
    /// Refuses the token if any of its revocation ids is in `db`'s revocations, else whatever the other checks
    /// refused, else authorizes the run.
    pub fn settle(self, db: &crate::db::Db) -> Result<RunAuthorization, crate::error::RunError> {
        use crate::error::RunError;
        let Unrevoked { verified, checked } = self;
        if let Some(id) = revoked_among(db, &verified.revocation_ids)
            .map_err(|e| RunError::host(format!("reading revocations: {e}")))?
        {
            return Err(RunError::TokenRefused(crate::error::one_line(&TokenError::Revoked(id).to_string())));
        }
        checked?;
        Ok(RunAuthorization {
            // The token's own block: what `token revoke` of this token revokes, and what its records name.
            token_id: verified.revocation_ids.last().cloned().unwrap_or_default(),
            rate: verified.rate,
            token: verified,
        })
    }
}

/// Every check of [`authorize_caller`] but the revocations': the token verified (or minted), then the token as a
/// whole and each grant and limit authorized. A token that cannot be verified is refused at once; a refusal of
/// the rest waits for [`Unrevoked::settle`], since a revoked token is refused as revoked first.
pub fn check_caller(
    home: &std::path::Path,
    token_text: Option<&str>,
    request: &RunRequest,
    local_ttl: Duration,
) -> Result<Unrevoked, crate::error::RunError> {
    use crate::error::RunError;
    let now = SystemTime::now();
    let refused = |e: &dyn std::fmt::Display| RunError::TokenRefused(crate::error::one_line(&e.to_string()));
    let keys = match token_text {
        Some(_) => KeyStore::current(home),
        None => KeyStore::load_or_init(home, ms(now)).map(std::sync::Arc::new),
    }
    .map_err(|e| refused(&e))?;
    let verified = match token_text {
        Some(text) => cache::global().verify(&keys, text, now).map_err(|e| refused(&e))?,
        None => {
            let mint_request = MintRequest {
                agent: request.agent.clone(),
                grants: request.grants.clone(),
                limits: request.limits,
                ttl: Some(local_ttl),
                component: request.component.clone(),
                plugin: request.plugin.clone(),
                ..MintRequest::default()
            };
            // Minted here, for this run: read as it is in memory (see `Verified::minted`), not cached (no other run
            // presents it).
            mint(&keys, &mint_request, now)
                .and_then(|token| Verified::minted(&keys, token, now))
                .map(std::sync::Arc::new)
                .map_err(|e| refused(&e))?
        }
    };
    // The token as a whole first (its time checks, its agent, the limits), so that an expired token or one for
    // another agent is refused as a token, and a refused grant is named as such afterwards.
    let base = RunRequest { grants: Vec::new(), ..request.clone() };
    let checked = authorize(&verified, &base, now)
        .map_err(|(grant, reason)| token_refusal(&verified, &base, grant, reason))
        .and_then(|()| {
            authorize(&verified, request, now).map_err(|(grant, reason)| RunError::GrantRefused {
                reason: explain_refusal(&verified, request, &grant, &reason),
                grant,
            })
        });
    Ok(Unrevoked { verified, checked })
}

/// Names what a failed whole-token check was about, in words; the Datalog only with `--verbose`.
fn token_refusal(verified: &Verified, request: &RunRequest, grant: String, reason: String) -> crate::error::RunError {
    use crate::error::RunError;
    let blocks = block_sources(&verified.token);
    let datalog = datalog_note(&reason);
    let agent = &request.agent;
    if reason.contains("depth(") {
        let max = verified.max_depth.map_or_else(|| "fewer".to_string(), |d| d.to_string());
        RunError::TokenRefused(format!(
            "token carries more attenuation blocks than it allows: {} blocks after the first, at most {max}{datalog}",
            blocks.len().saturating_sub(1)
        ))
    } else if reason.contains("window_open(") {
        let windows: Vec<&str> = verified.windows.iter().map(|(w, _)| w.as_str()).collect();
        RunError::TokenRefused(format!(
            "token is used outside its time window: usable only during {}{datalog}",
            windows.join(" and ")
        ))
    } else if reason.contains("time(") {
        let expires = time_bound(&blocks, "$t <= ", |a, b| a.min(b)).unwrap_or_else(|| "never".into());
        let not_before = time_bound(&blocks, "$t >= ", |a, b| a.max(b));
        RunError::TokenRefused(format!(
            "token has expired or is not valid yet: valid until {expires}{}, with {} s of clock skew allowed{datalog}",
            not_before.map(|t| format!(" and from {t}")).unwrap_or_default(),
            CLOCK_SKEW.as_secs()
        ))
    } else if reason.contains("component(") {
        RunError::TokenRefused(format!(
            "token is pinned to another component: it runs only {}{datalog}",
            if verified.pinned.is_empty() { "a pinned component".into() } else { verified.pinned.join(" and ") }
        ))
    } else if reason.contains("plugin(") {
        RunError::TokenRefused(format!("token is bound to another installed package{datalog}"))
    } else if reason.contains("agent(") {
        RunError::TokenRefused(format!(
            "token is not for agent {agent}: it is for agent {} (the agent is the component's file name without \
             .wasm){datalog}",
            verified.agent.as_deref().unwrap_or("(none stated)")
        ))
    } else {
        RunError::GrantRefused { reason: explain_refusal(verified, request, &grant, &reason), grant }
    }
}

/// The Datalog of a refusal, shown only with `--verbose`; otherwise a pointer to it.
fn datalog_note(reason: &str) -> String {
    if !crate::error::verbose() {
        return " (--verbose shows the failing Datalog checks)".to_string();
    }
    let reason = crate::error::one_line(reason);
    // Biscuit words a request that no policy allows, with no failing check, as an empty list of checks.
    match reason.strip_suffix(", and the following checks failed:") {
        Some(_) => " [Datalog: no policy of the host allows it, and no check failed]".to_string(),
        None => format!(" [Datalog: {reason}]"),
    }
}

/// Every block's Datalog source, authority first.
fn block_sources(token: &Biscuit) -> Vec<String> {
    (0..token.block_count()).map(|i| token.print_block_source(i).unwrap_or_default()).collect()
}

fn limit_text(n: u64) -> String {
    if n == u64::MAX || n == i64::MAX as u64 { "unlimited".into() } else { n.to_string() }
}

/// Why `request` was refused `grant` (a grant's text, or `limits`), in the terms of the request and of what the
/// token allows: what was asked, and the grants or ceilings in force. Never an empty list: a token that grants
/// nothing says so.
pub fn explain_refusal(verified: &Verified, request: &RunRequest, grant: &str, reason: &str) -> String {
    let datalog = datalog_note(reason);
    if grant == "limits" {
        let Ok(allowed) = &verified.limits else {
            return format!("the token states no usable limits{datalog}");
        };
        let asked = request.limits;
        let mut over = Vec::new();
        for (what, asked, allowed, unit) in [
            ("fuel", asked.fuel, allowed.fuel, ""),
            ("memory", asked.memory, allowed.memory, " bytes"),
            ("timeout", asked.timeout_ms, allowed.timeout_ms, " ms"),
        ] {
            if asked > allowed {
                over.push(format!(
                    "{what} {}{unit}, the token allows at most {}{unit}",
                    limit_text(asked),
                    limit_text(allowed)
                ));
            }
        }
        return if over.is_empty() {
            format!("the token's own checks refuse this run{datalog}")
        } else {
            format!("asked for {} (give less, or a token with more){datalog}", over.join("; "))
        };
    }
    let (in_force, _) = grants_in_force(&verified.grants, &block_sources(&verified.token));
    let mut allowed: Vec<String> = in_force.iter().map(Grant::to_string).collect();
    allowed.sort();
    let allows =
        if allowed.is_empty() { "grants nothing".to_string() } else { format!("allows {}", allowed.join(" ")) };
    if allowed.iter().any(|g| g == grant) {
        return format!("the token {allows}, but its checks refuse {grant}{datalog}");
    }
    format!("asked for {grant}, and the token {allows}{datalog}")
}

/// A token described for `token inspect`.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub root_key_id: Option<u32>,
    /// What the authority block states (present when the signature verifies).
    pub agent: Option<String>,
    /// The grants in force: the authority block's, narrowed by every attenuation block (`--only`).
    pub grants: Vec<String>,
    /// The grants the authority block states, before any attenuation.
    pub authority_grants: Vec<String>,
    /// The attenuation blocks whose grant checks could not be read back (not written by `token attenuate`): the
    /// grants shown in force may be wider than what those blocks allow.
    pub unread_blocks: Vec<usize>,
    /// The limits in force: the smallest ceiling of every block.
    pub limits: Option<TokenLimits>,
    pub max_depth: Option<u32>,
    /// The earliest expiry and the latest not-before that any block's checks state (RFC 3339).
    pub expires: Option<String>,
    pub not_before: Option<String>,
    /// Every window stated in any block, in canonical text.
    pub windows: Vec<String>,
    /// The strictest rate stated in any block, as `N/PERIOD`.
    pub rate: Option<String>,
    /// The components (`sha256:HEX`) the token is pinned to, by any block.
    pub pinned: Vec<String>,
    /// The lowest ceiling of model tokens per run stated in any block.
    pub llm_tokens: Option<u64>,
    /// The budgets of model tokens per period stated in any block (the lowest per period), as `N/PERIOD`.
    pub llm_budgets: Vec<String>,
    /// The installed packages (`KEY_ID/NAME`) the token is bound to, by any block.
    pub bound_to: Vec<String>,
    /// The Datalog of each block: facts, and the checks that expiry, not-before, windows and attenuation became.
    pub blocks: Vec<String>,
    pub revocation_ids: Vec<String>,
    /// The instant the token was evaluated at (now, or `--at`).
    pub evaluated_at: String,
    /// `ok`, or why the token is not usable at `evaluated_at` (signature, key, expiry, window, depth).
    pub verifies: String,
}

/// The tightest date in checks of the form `check if time($t), $t <= DATE` (or `>=`), as minting and attenuation
/// write them.
fn time_bound(blocks: &[String], op: &str, pick: fn(SystemTime, SystemTime) -> SystemTime) -> Option<String> {
    let mut found: Option<SystemTime> = None;
    for line in blocks.iter().flat_map(|b| b.lines()) {
        let Some(rest) = line.trim().strip_prefix("check if time($t), ").and_then(|r| r.strip_prefix(op)) else {
            continue;
        };
        if let Ok(t) = humantime::parse_rfc3339_weak(rest.trim_end_matches(';').trim()) {
            found = Some(found.map_or(t, |f| pick(f, t)));
        }
    }
    found.map(rfc3339)
}

/// Whether `outer` (a grant a token states) covers `inner` (a grant asked for), as the host's policies decide.
fn covers(outer: &Grant, inner: &Grant) -> bool {
    match outer.kind.as_str() {
        "fs" => {
            outer.kind == inner.kind
                && inner.value.starts_with(&outer.value)
                && (outer.mode == "rw" || inner.mode == "ro")
        }
        "state" => inner.kind == "state" && (outer.mode == "rw" || inner.mode == "ro"),
        _ => outer == inner,
    }
}

/// The `only(KIND, VALUE, MODE)` facts of one block's source (as [`attenuate`] writes them), or `None` if the block
/// checks requests in a way that has no such facts.
fn only_facts(source: &str) -> Option<Vec<Grant>> {
    let mut found = Vec::new();
    for line in source.lines() {
        let Some(args) = line.trim().strip_prefix("only(").and_then(|r| r.strip_suffix(");")) else {
            continue;
        };
        // The three arguments are Datalog strings, which print as JSON strings do for the values grants hold.
        let parts: Vec<String> = serde_json::from_str(&format!("[{args}]")).ok()?;
        let [kind, value, mode] = <[String; 3]>::try_from(parts).ok()?;
        found.push(Grant { kind, value, mode });
    }
    // `request(` as a predicate of its own (not the end of `fuel_request(`).
    let narrows = source
        .match_indices("request(")
        .any(|(at, _)| !source[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_'));
    match (narrows, found.is_empty()) {
        (false, _) => Some(Vec::new()),
        (true, false) => Some(found),
        (true, true) => None,
    }
}

/// The grants in force: the authority block's, narrowed by each later block's `only` list (a grant survives a block
/// if one of its `only` grants covers it, and becomes the narrower `only` grant if it covers that one). Also the
/// blocks that narrow requests without `only` facts (not written by `token attenuate`), which could not be read.
fn grants_in_force(authority: &[Grant], blocks: &[String]) -> (Vec<Grant>, Vec<usize>) {
    let mut in_force: Vec<Grant> = authority.to_vec();
    let mut unread = Vec::new();
    for (n, source) in blocks.iter().enumerate().skip(1) {
        match only_facts(source) {
            None => unread.push(n),
            Some(only) if only.is_empty() => {}
            Some(only) => {
                let mut narrowed: Vec<Grant> = Vec::new();
                for g in &in_force {
                    for o in &only {
                        let kept = if covers(o, g) {
                            g.clone()
                        } else if covers(g, o) {
                            o.clone()
                        } else {
                            continue;
                        };
                        if !narrowed.contains(&kept) {
                            narrowed.push(kept);
                        }
                    }
                }
                in_force = narrowed;
            }
        }
    }
    (in_force, unread)
}

/// Describes a token and whether it is usable at `at`: signature, root key, then its own checks (time, windows,
/// depth) for a run of its own agent that asks for nothing. Revocation is the caller's to add (it needs the
/// database).
pub fn inspect(keys: &KeyStore, text: &str, at: SystemTime) -> Result<Inspection, TokenError> {
    let unverified = parse_unverified(text)?;
    let blocks: Vec<String> = (0..unverified.block_count())
        .map(|i| unverified.print_block_source(i).unwrap_or_else(|e| format!("<unreadable block: {e}>")))
        .collect();
    let revocation_ids = unverified.revocation_identifiers().iter().map(hex::encode).collect();
    let mut inspection = Inspection {
        root_key_id: unverified.root_key_id(),
        agent: None,
        grants: Vec::new(),
        authority_grants: Vec::new(),
        unread_blocks: Vec::new(),
        limits: None,
        max_depth: None,
        expires: time_bound(&blocks, "$t <= ", |a, b| a.min(b)),
        not_before: time_bound(&blocks, "$t >= ", |a, b| a.max(b)),
        windows: Vec::new(),
        rate: None,
        pinned: Vec::new(),
        llm_tokens: None,
        llm_budgets: Vec::new(),
        bound_to: Vec::new(),
        blocks,
        revocation_ids,
        evaluated_at: rfc3339(at),
        verifies: String::new(),
    };
    let verified = match cache::Verified::new(keys, text, at) {
        Ok(v) => v,
        Err(e) => {
            inspection.verifies = e.to_string();
            return Ok(inspection);
        }
    };
    inspection.agent = verified.agent.clone();
    // Sorted: what the token states is a set, and the same token must print the same way every time.
    inspection.authority_grants = verified.grants.iter().map(Grant::to_string).collect();
    inspection.authority_grants.sort();
    let (in_force, unread) = grants_in_force(&verified.grants, &inspection.blocks);
    inspection.grants = in_force.iter().map(Grant::to_string).collect();
    inspection.grants.sort();
    inspection.unread_blocks = unread;
    inspection.limits = verified.limits.as_ref().ok().copied();
    inspection.max_depth = verified.max_depth;
    inspection.windows = verified.windows.iter().map(|(text, _)| text.clone()).collect();
    inspection.rate = verified.rate.map(|r| r.to_string());
    inspection.pinned = verified.pinned.clone();
    inspection.llm_tokens = verified.llm_tokens;
    inspection.llm_budgets = verified.llm_budgets.iter().map(ToString::to_string).collect();
    inspection.bound_to = bound_plugins(&inspection.blocks);
    // Evaluated as a run of the pinned component would be (a token pinned to two components is usable for none).
    let component = verified.pinned.first().and_then(|p| p.strip_prefix("sha256:")).map(str::to_string);
    let request = RunRequest {
        agent: verified.agent.clone().unwrap_or_default(),
        grants: Vec::new(),
        limits: TokenLimits { fuel: 0, memory: 0, timeout_ms: 0 },
        component,
        plugin: inspection.bound_to.first().cloned(),
    };
    inspection.verifies = match authorize(&verified, &request, at) {
        Ok(()) => "ok".into(),
        Err((grant, reason)) => token_refusal(&verified, &request, grant, reason).to_string(),
    };
    Ok(inspection)
}

/// The `plugin_bound("KEY_ID/NAME")` facts in the blocks' source (for display: the check itself is Datalog's).
fn bound_plugins(blocks: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for block in blocks {
        for part in block.split("plugin_bound(\"").skip(1) {
            if let Some((identity, _)) = part.split_once('"')
                && !out.iter().any(|o| o == identity)
            {
                out.push(identity.to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> KeyStore {
        let mut k = KeyStore::default();
        k.init(0).unwrap();
        k
    }

    fn limits() -> TokenLimits {
        TokenLimits { fuel: 1_000_000, memory: 64 << 20, timeout_ms: 10_000 }
    }

    fn g(s: &str) -> Grant {
        Grant::parse(s).unwrap()
    }

    fn minted(keys: &KeyStore, grants: &[&str]) -> String {
        let req = MintRequest {
            agent: "a".into(),
            grants: grants.iter().map(|s| g(s)).collect(),
            limits: limits(),
            ttl: Some(Duration::from_secs(60)),
            max_depth: Some(2),
            ..MintRequest::default()
        };
        mint(keys, &req, SystemTime::now()).unwrap().to_base64().unwrap()
    }

    /// A passed authorization is remembered for its exact program only: another grant, another agent or another
    /// second is evaluated afresh.
    #[test]
    fn remembered_authorizations_answer_only_the_same_question() {
        let keys = store();
        let text = minted(&keys, &["tool:echo"]);
        let now = SystemTime::now();
        let t = verify(&keys, &text, now).unwrap();
        let ask = |agent: &str, grant: &str, at: SystemTime| {
            let req = RunRequest {
                agent: agent.into(),
                grants: vec![g(grant)],
                limits: limits(),
                component: None,
                plugin: None,
            };
            authorize(&t, &req, at)
        };
        for _ in 0..2 {
            assert!(ask("a", "tool:echo", now).is_ok());
            assert!(ask("a", "tool:other", now).is_err());
            assert!(ask("b", "tool:echo", now).is_err());
        }
        // Expired a minute and a half later (60 s ttl, 30 s skew), though the same question passed before.
        assert!(ask("a", "tool:echo", now + Duration::from_secs(91)).is_err());
        assert!(ask("a", "tool:echo", now).is_ok());
    }

    /// The per-second memo of whole requests answers only the very same request: a token pinned to one component,
    /// asked for it and then, in the same second, for another component, another plugin or more fuel, refuses
    /// those; the same request again passes.
    #[test]
    fn a_remembered_request_answers_only_the_same_component_plugin_and_limits() {
        let keys = store();
        let pinned = "ab".repeat(32);
        let req = MintRequest {
            agent: "a".into(),
            grants: vec![g("tool:echo")],
            limits: limits(),
            ttl: Some(Duration::from_secs(60)),
            component: Some(pinned.clone()),
            ..MintRequest::default()
        };
        let text = mint(&keys, &req, SystemTime::now()).unwrap().to_base64().unwrap();
        let now = SystemTime::now();
        let t = verify(&keys, &text, now).unwrap();
        let ask = |component: &str, plugin: Option<&str>, fuel: u64| {
            let req = RunRequest {
                agent: "a".into(),
                grants: vec![g("tool:echo")],
                limits: TokenLimits { fuel, ..limits() },
                component: Some(component.into()),
                plugin: plugin.map(String::from),
            };
            authorize(&t, &req, now)
        };
        let fuel = limits().fuel;
        for _ in 0..2 {
            assert!(ask(&pinned, None, fuel).is_ok());
            assert!(ask(&"cd".repeat(32), None, fuel).is_err());
            assert!(ask(&pinned, None, fuel + 1).is_err());
            assert!(ask(&pinned, Some("k/other"), fuel).is_ok(), "a plugin fact the token does not check");
        }
    }

    fn check(keys: &KeyStore, token: &str, grants: &[&str], fuel: u64) -> Result<(), (String, String)> {
        let now = SystemTime::now();
        let t = verify(keys, token, now).unwrap();
        let req = RunRequest {
            agent: "a".into(),
            grants: grants.iter().map(|s| g(s)).collect(),
            limits: TokenLimits { fuel, ..limits() },
            component: None,
            plugin: None,
        };
        authorize(&t, &req, now)
    }

    #[test]
    fn a_token_bound_to_a_package_runs_only_that_publishers_package() {
        let keys = store();
        let mine = "0123456789abcdef/hello".to_string();
        let request = MintRequest { agent: "hello".into(), plugin: Some(mine.clone()), ..MintRequest::default() };
        let token = mint(&keys, &request, SystemTime::now()).unwrap().to_base64().unwrap();
        let t = verify(&keys, &token, SystemTime::now()).unwrap();
        let ask = |plugin: Option<&str>| {
            let req = RunRequest {
                agent: "hello".into(),
                grants: vec![],
                limits: TokenLimits::default(),
                component: Some("ab".repeat(32)),
                plugin: plugin.map(str::to_string),
            };
            authorize(&t, &req, SystemTime::now())
        };
        assert!(ask(Some(&mine)).is_ok(), "its own package");
        assert!(ask(Some("fedcba9876543210/hello")).unwrap_err().1.contains("plugin("), "another publisher's");
        assert!(ask(None).is_err(), "a file of the same name");
        let bad = MintRequest { plugin: Some("nope".into()), ..request };
        assert!(mint(&keys, &bad, SystemTime::now()).is_err());
    }

    #[test]
    fn the_limits_in_force_are_the_smallest_of_every_block() {
        let keys = store();
        let text = minted(&keys, &[]);
        let narrowed = |fuel: u64, text: &str| {
            let a = Attenuation { fuel: Some(fuel), ..Attenuation::default() };
            attenuate(&parse_unverified(text).unwrap(), &a, SystemTime::now()).unwrap().to_base64().unwrap()
        };
        let once = narrowed(400_000, &text);
        let twice = narrowed(700_000, &once);
        let fuel = |t: &str| verify(&keys, t, SystemTime::now()).unwrap().limits.clone().unwrap().fuel;
        assert_eq!(fuel(&text), limits().fuel);
        assert_eq!(fuel(&once), 400_000);
        assert_eq!(fuel(&twice), 400_000, "a later block cannot raise it again");
    }

    /// `token inspect` shows the grants in force (the authority's narrowed by `--only`) and the smallest fuel
    /// ceiling, not the authority block's: each grant it shows is one a run can use.
    #[test]
    fn inspect_shows_the_grants_and_limits_in_force_after_attenuation() {
        let keys = store();
        let t = minted(&keys, &["fs:/srv/data:rw", "env:LANG", "tool:echo"]);
        let narrow = |text: &str, only: &[&str], fuel: Option<u64>| {
            let a = Attenuation { only: only.iter().map(|s| g(s)).collect(), fuel, ..Attenuation::default() };
            attenuate(&parse_unverified(text).unwrap(), &a, SystemTime::now()).unwrap().to_base64().unwrap()
        };
        let once = narrow(&t, &["fs:/srv/data/reports:ro", "env:LANG"], Some(10));
        let twice = narrow(&once, &["env:LANG", "tool:echo"], None);
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        let i = inspect(&keys, &once, SystemTime::now()).unwrap();
        assert_eq!(sorted(i.grants), ["env:LANG", "fs:/srv/data/reports/:ro"]);
        assert_eq!(sorted(i.authority_grants), ["env:LANG", "fs:/srv/data/:rw", "tool:echo"]);
        assert_eq!(i.limits.unwrap().fuel, 10);
        assert!(i.unread_blocks.is_empty());
        let i = inspect(&keys, &twice, SystemTime::now()).unwrap();
        assert_eq!(i.grants, ["env:LANG"], "tool:echo was dropped by the first block, and stays dropped");
        assert_eq!(i.limits.unwrap().fuel, 10);
        // What inspect shows is what authorizes.
        assert!(check(&keys, &once, &["fs:/srv/data/reports/x:ro"], 5).is_ok());
        assert!(check(&keys, &once, &["fs:/srv/data:ro"], 5).is_err());
        assert!(check(&keys, &twice, &["env:LANG"], 5).is_ok());
        assert!(check(&keys, &twice, &["tool:echo"], 5).is_err());
        // A hand-written block that narrows without `only` facts is named as unread.
        let custom = parse_unverified(&t)
            .unwrap()
            .append(BlockBuilder::new().code(r#"check if request("env", "LANG", "");"#).unwrap())
            .unwrap()
            .to_base64()
            .unwrap();
        assert_eq!(inspect(&keys, &custom, SystemTime::now()).unwrap().unread_blocks, [1]);
        // A fuel-only block narrows no grant.
        let fuel_only = narrow(&t, &[], Some(7));
        let i = inspect(&keys, &fuel_only, SystemTime::now()).unwrap();
        assert_eq!(sorted(i.grants.clone()), sorted(i.authority_grants.clone()));
        assert!(i.unread_blocks.is_empty());
    }

    #[test]
    fn a_pinned_token_runs_only_its_component() {
        let keys = store();
        let (mine, other) = ("a".repeat(64), "b".repeat(64));
        let req = MintRequest {
            agent: "a".into(),
            limits: limits(),
            ttl: Some(Duration::from_secs(60)),
            component: Some(mine.clone()),
            ..MintRequest::default()
        };
        let text = mint(&keys, &req, SystemTime::now()).unwrap().to_base64().unwrap();
        let t = verify(&keys, &text, SystemTime::now()).unwrap();
        assert_eq!(t.pinned, vec![format!("sha256:{mine}")]);
        let ask = |component: Option<&String>| {
            let req = RunRequest {
                agent: "a".into(),
                grants: vec![],
                limits: limits(),
                component: component.cloned(),
                plugin: None,
            };
            authorize(&t, &req, SystemTime::now())
        };
        assert!(ask(Some(&mine)).is_ok(), "its own component");
        assert!(ask(Some(&other)).unwrap_err().1.contains("component("), "another component");
        assert!(ask(None).is_err(), "no component at all");
        // Unpinned tokens run any component; attenuation can pin them.
        let free = minted(&keys, &[]);
        let free_t = verify(&keys, &free, SystemTime::now()).unwrap();
        let any = RunRequest {
            agent: "a".into(),
            grants: vec![],
            limits: limits(),
            component: Some(other.clone()),
            plugin: None,
        };
        assert!(authorize(&free_t, &any, SystemTime::now()).is_ok());
        let narrowed = attenuate(
            &parse_unverified(&free).unwrap(),
            &Attenuation { component: Some(mine.clone()), ..Attenuation::default() },
            SystemTime::now(),
        )
        .unwrap()
        .to_base64()
        .unwrap();
        let n = verify(&keys, &narrowed, SystemTime::now()).unwrap();
        assert!(authorize(&n, &any, SystemTime::now()).is_err(), "the attenuated token is pinned");
        assert!(mint(&keys, &MintRequest { component: Some("xyz".into()), ..req }, SystemTime::now()).is_err());
    }

    #[test]
    fn grants_cover_what_they_should_and_nothing_else() {
        let keys = store();
        let t = minted(
            &keys,
            &[
                "fs:/srv/data:ro",
                "fs:/work:rw",
                "env:LANG",
                "net:example.com:443",
                "state:rw",
                "tool:file-reader",
                "llm:model-x",
                "spawn:helper",
                "stdin",
            ],
        );
        for ok in [
            "fs:/srv/data:ro",
            "fs:/srv/data/sub:ro",
            "fs:/work/x:rw",
            "fs:/work:ro",
            "env:LANG",
            "net:example.com:443",
            "state:ro",
            "state:rw",
            "tool:file-reader",
            "llm:model-x",
            "spawn:helper",
            "stdin",
        ] {
            assert!(check(&keys, &t, &[ok], 1).is_ok(), "{ok}");
        }
        for refused in [
            "fs:/srv/data:rw",
            "fs:/srv/database:ro",
            "fs:/srv:ro",
            "env:HOME",
            "net:example.com:80",
            "tool:x",
            "llm:model-y",
            "spawn:other",
        ] {
            let (name, _) = check(&keys, &t, &[refused], 1).unwrap_err();
            assert_eq!(name, g(refused).to_string());
        }
        let (name, why) = check(&keys, &t, &[], 2_000_000).unwrap_err();
        assert_eq!(name, "limits");
        assert!(why.contains("fuel"), "{why}");
    }

    /// A model pattern (`llm:gpt-*`) covers the models it prefixes, and never more than an attenuation allows:
    /// narrowing a token to one model, or to a narrower pattern, holds against the wider pattern in its authority.
    #[test]
    fn model_patterns_cover_their_prefix_and_never_widen_an_attenuated_token() {
        let keys = store();
        let t = minted(&keys, &["llm:gpt-*", "llm:claude-3-haiku"]);
        for ok in ["llm:gpt-4o", "llm:gpt-4o-mini", "llm:gpt-", "llm:claude-3-haiku"] {
            assert!(check(&keys, &t, &[ok], 1).is_ok(), "{ok}");
        }
        for refused in ["llm:gpt", "llm:claude-3-opus", "llm:xgpt-4o", "llm:GPT-4o", "llm:claude-3-haiku-2"] {
            assert!(check(&keys, &t, &[refused], 1).is_err(), "{refused}");
        }
        let narrow = |text: &str, only: &[&str]| {
            let a = Attenuation { only: only.iter().map(|s| g(s)).collect(), ..Default::default() };
            attenuate(&parse_unverified(text).unwrap(), &a, SystemTime::now()).unwrap().to_base64().unwrap()
        };
        // Narrowed to one model: the authority's pattern no longer covers its siblings.
        let one = narrow(&t, &["llm:gpt-4o"]);
        assert!(check(&keys, &one, &["llm:gpt-4o"], 1).is_ok());
        for refused in ["llm:gpt-4o-mini", "llm:gpt-3.5-turbo", "llm:claude-3-haiku"] {
            assert!(check(&keys, &one, &[refused], 1).is_err(), "{refused}");
        }
        // Narrowed to a narrower pattern: only what both cover.
        let four = narrow(&t, &["llm:gpt-4*"]);
        assert!(check(&keys, &four, &["llm:gpt-4o-mini"], 1).is_ok());
        assert!(check(&keys, &four, &["llm:gpt-3.5-turbo"], 1).is_err());
        assert!(check(&keys, &four, &["llm:claude-3-haiku"], 1).is_err());
        // A pattern in an attenuation wider than the token's own grant adds nothing.
        let exact = minted(&keys, &["llm:gpt-4o"]);
        let wide = narrow(&exact, &["llm:*"]);
        assert!(check(&keys, &wide, &["llm:gpt-4o"], 1).is_ok());
        assert!(check(&keys, &wide, &["llm:gpt-4o-mini"], 1).is_err());
        // A block stating its own pattern (or prefix) adds nothing: only the authority block is trusted.
        let forged = parse_unverified(&exact)
            .unwrap()
            .append(BlockBuilder::new().code(r#"grant("llm", "*", ""); grant_prefix("llm", "");"#).unwrap())
            .unwrap()
            .to_base64()
            .unwrap();
        assert!(check(&keys, &forged, &["llm:claude-3-opus"], 1).is_err());
        // `llm:*` covers every model; patterns are checked like names.
        let all = minted(&keys, &["llm:*"]);
        assert!(check(&keys, &all, &["llm:llama3.1:8b"], 1).is_ok());
        for bad in ["llm:", "llm:gpt*4", "llm:a b", "llm:**"] {
            assert!(Grant::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn model_token_ceilings_only_go_down() {
        let keys = store();
        let budget = |text: &str| TokenBudget::parse(text).unwrap();
        let req = MintRequest {
            agent: "a".into(),
            limits: limits(),
            ttl: Some(Duration::from_secs(60)),
            llm_tokens: Some(1_000),
            llm_budgets: vec![budget("10000/h")],
            ..MintRequest::default()
        };
        let text = mint(&keys, &req, SystemTime::now()).unwrap().to_base64().unwrap();
        let narrowed = |text: &str, tokens: Option<u64>, budgets: &[&str]| {
            let a = Attenuation {
                llm_tokens: tokens,
                llm_budgets: budgets.iter().map(|b| budget(b)).collect(),
                ..Default::default()
            };
            attenuate(&parse_unverified(text).unwrap(), &a, SystemTime::now()).unwrap().to_base64().unwrap()
        };
        let read = |t: &str| {
            let v = verify(&keys, t, SystemTime::now()).unwrap();
            (v.llm_tokens, v.llm_budgets.iter().map(ToString::to_string).collect::<Vec<_>>())
        };
        assert_eq!(read(&text), (Some(1_000), vec!["10000/h".to_string()]));
        // A budget of another period adds to the token's: both apply (50000/day does not lift 10000/h).
        let lower = narrowed(&text, Some(400), &["50000/day"]);
        assert_eq!(read(&lower), (Some(400), vec!["10000/h".to_string(), "50000/day".to_string()]));
        let raised = narrowed(&lower, Some(5_000), &["1000000/h", "9000000/day"]);
        assert_eq!(read(&raised), read(&lower), "a later block cannot raise them");
        let hour = narrowed(&lower, None, &["2000/h"]);
        assert_eq!(read(&hour).1, ["2000/h", "50000/day"], "one period narrowed, the other kept");
        let unlimited = minted(&keys, &[]);
        assert_eq!(read(&unlimited), (None, vec![]));
        assert_eq!(read(&narrowed(&unlimited, Some(7), &[])), (Some(7), vec![]), "attenuation can add a ceiling");
        // A token stating more periods than the host checks is refused, not partly applied.
        let many: Vec<String> = (1..=TokenBudget::MAX_PERIODS + 1).map(|i| format!("100/{i}s")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(verify(&keys, &narrowed(&unlimited, None, &many), SystemTime::now()).is_err());
    }

    #[test]
    fn attenuation_only_narrows() {
        let keys = store();
        let t = minted(&keys, &["fs:/srv:rw", "env:LANG"]);
        let narrowed = attenuate(
            &parse_unverified(&t).unwrap(),
            &Attenuation { only: vec![g("fs:/srv/data:ro")], fuel: Some(10), ..Default::default() },
            SystemTime::now(),
        )
        .unwrap()
        .to_base64()
        .unwrap();
        assert!(check(&keys, &narrowed, &["fs:/srv/data/x:ro"], 5).is_ok());
        assert!(check(&keys, &narrowed, &["fs:/srv/data:rw"], 5).is_err());
        assert!(check(&keys, &narrowed, &["env:LANG"], 5).is_err());
        assert!(check(&keys, &narrowed, &[], 11).is_err());

        // A block that states a new grant adds nothing: the host only trusts the authority block.
        let widened = parse_unverified(&t)
            .unwrap()
            .append(BlockBuilder::new().code(r#"grant("env", "HOME", ""); grant("fs", "/", "rw");"#).unwrap())
            .unwrap()
            .to_base64()
            .unwrap();
        assert!(check(&keys, &widened, &["env:HOME"], 1).is_err());
        assert!(check(&keys, &widened, &["fs:/etc:ro"], 1).is_err());
    }

    #[test]
    fn forged_and_mangled_tokens_are_refused() {
        let keys = store();
        let t = minted(&keys, &["env:LANG"]);
        let mut bytes = t.clone().into_bytes();
        let i = bytes.len() / 2;
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        assert!(verify(&keys, std::str::from_utf8(&bytes).unwrap(), SystemTime::now()).is_err());
        assert!(verify(&keys, &t[..t.len() / 2], SystemTime::now()).is_err());
        let other = store();
        assert!(matches!(verify(&other, &t, SystemTime::now()), Err(TokenError::Signature(_))));
    }

    #[test]
    fn expiry_and_key_rotation() {
        let mut keys = store();
        let t = minted(&keys, &["env:LANG"]);
        let later = SystemTime::now() + Duration::from_secs(60) + CLOCK_SKEW + Duration::from_secs(5);
        let token = verify(&keys, &t, later).unwrap();
        let req = RunRequest {
            agent: "a".into(),
            grants: vec![g("env:LANG")],
            limits: limits(),
            component: None,
            plugin: None,
        };
        assert!(authorize(&token, &req, later).is_err(), "expired after its ttl");
        let now = ms(SystemTime::now());
        keys.rotate(now, 60_000).unwrap();
        assert!(verify(&keys, &t, SystemTime::now()).is_ok(), "the previous key verifies within the overlap");
        assert!(matches!(verify(&keys, &t, later), Err(TokenError::Key(KeyError::OverlapEnded(1)))));
        keys.retire(1).unwrap();
        assert!(matches!(verify(&keys, &t, SystemTime::now()), Err(TokenError::Key(KeyError::Retired(1)))));
        assert!(keys.retire(2).is_err(), "the active key cannot be retired");
    }

    #[test]
    fn depth_limit() {
        let keys = store();
        let mut t = minted(&keys, &["env:LANG"]);
        for depth in 1..=3 {
            t = attenuate(
                &parse_unverified(&t).unwrap(),
                &Attenuation { only: vec![g("env:LANG")], ..Default::default() },
                SystemTime::now(),
            )
            .unwrap()
            .to_base64()
            .unwrap();
            assert_eq!(check(&keys, &t, &["env:LANG"], 1).is_ok(), depth <= 2, "depth {depth}");
        }
    }

    #[test]
    fn grant_syntax() {
        assert_eq!(g("fs:/srv//data/./x:ro").value, "/srv/data/x/");
        assert_eq!(g("net:api.example.com:443").value, "api.example.com:443");
        // One canonical form, whatever way the grant was written: brackets for IPv6, lowercase names.
        assert_eq!(g("net:[::1]:8080").value, "[::1]:8080");
        assert_eq!(g("net:[0:0:0:0:0:0:0:1]:8080").value, "[::1]:8080");
        assert_eq!(g("net:API.Example.COM.:443").value, "api.example.com:443");
        for bad in [
            "fs:relative:ro",
            "fs:/a/../b:ro",
            "fs:/a:rx",
            "net:host",
            "net:::1:8080",
            "net:[nope]:80",
            "net:a b:80",
            "env:",
            "bogus:x",
            "state:maybe",
        ] {
            assert!(Grant::parse(bad).is_err(), "{bad}");
        }
    }
}
