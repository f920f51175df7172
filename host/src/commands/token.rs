//! `toka-host token`: mint, attenuate, inspect and revoke capability tokens.

use crate::events::{EventLog, GroupCommit, Signer};
use crate::kernel::Op;
use crate::token::keys::KeyStore;
use crate::token::{self, Attenuation, Grant, MintRequest, Rate, TokenBudget, TokenLimits, Window};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

#[derive(Debug, Args)]
pub struct TokenCommand {
    #[command(subcommand)]
    pub action: TokenAction,
}

#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// Mint a token for an agent, signed by the active root key; prints it as base64.
    Mint {
        /// The agent the token is for: the name a run of it goes by, its component's file name without `.wasm`
        /// (default: the name of the --component file or --plugin package; `*`: every agent, an operator's token).
        #[arg(long, required_unless_present_any = ["component", "plugin"])]
        agent: Option<String>,
        /// Bind the token to the installed package NAME: it runs only that package of that publisher (any version
        /// the publisher signs), never a file or another publisher's package of the same name.
        #[arg(long, value_name = "NAME", conflicts_with_all = ["component", "pin"])]
        plugin: Option<String>,
        /// Pin the token to this component file: it can run only a component with the same sha256. The agent
        /// defaults to the file's name.
        #[arg(long, value_name = "FILE")]
        component: Option<PathBuf>,
        /// Pin the token to the component with this sha256 (hex), without the file.
        #[arg(long, value_name = "SHA256", conflicts_with = "component")]
        pin: Option<String>,
        /// A right, KIND:VALUE: fs:PATH:ro|rw (a relative PATH is taken from the current directory), env:NAME,
        /// net:HOST:PORT, tool:NAME, llm:MODEL, spawn:AGENT, state:ro|rw, stdin. Repeatable.
        #[arg(long = "grant", value_name = "KIND:VALUE", value_parser = parse_grant_arg)]
        grants: Vec<Grant>,
        /// The most fuel a run may ask for (the default of a run without --fuel), or `unlimited`.
        #[arg(long, value_name = "N", default_value = "10000000000", value_parser = crate::units::parse_fuel)]
        fuel: u64,
        /// The most linear memory a run may ask for, e.g. 64MiB (`run --max-memory`).
        #[arg(long, visible_alias = "max-memory", value_name = "SIZE", default_value = "512MiB", value_parser = crate::units::parse_size)]
        memory: u64,
        /// The longest wall-clock limit a run may ask for, e.g. 10s (`run --timeout`).
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = crate::units::parse_duration)]
        timeout: Duration,
        /// Lifetime, e.g. 1h (default: 24h).
        #[arg(long, default_value = "24h", value_parser = crate::units::parse_duration)]
        ttl: Duration,
        /// An absolute expiry, RFC 3339 (e.g. 2026-12-01T00:00:00Z); the earlier of this and --ttl applies.
        #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
        expires: Option<SystemTime>,
        /// Not valid before this time, RFC 3339.
        #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
        not_before: Option<SystemTime>,
        /// At most N attenuation blocks may be appended to this token.
        #[arg(long, value_name = "N")]
        max_depth: Option<u32>,
        /// Usable only inside this window of an IANA time zone, e.g. "Mon-Fri 09:00-17:00 Europe/Paris"
        /// (repeatable: every window must be open).
        #[arg(long = "window", value_parser = Window::parse)]
        windows: Vec<Window>,
        /// At most N runs and boundary host calls of the agent per PERIOD (a token bucket): 10/min, 5/s, 100/h.
        #[arg(long, value_parser = Rate::parse)]
        rate: Option<Rate>,
        /// Model tokens (prompt and completion) one run may use.
        #[arg(long, value_name = "N")]
        llm_tokens: Option<u64>,
        /// Model tokens the agent may use per PERIOD, in fixed windows from the Unix epoch: 100000/day, 5000/h.
        /// Repeatable: every budget applies.
        #[arg(long = "llm-budget", value_name = "N/PERIOD", value_parser = TokenBudget::parse)]
        llm_budgets: Vec<TokenBudget>,
        /// Write the token to FILE (owner-only) instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Narrow a token offline (no key needed): only these grants, less fuel, a shorter life.
    Attenuate {
        /// The token: a file, `-` for stdin, or the base64 itself.
        token: String,
        /// Only this grant (or narrower ones) stays usable, KIND:VALUE as in `mint --grant`. Repeatable.
        #[arg(long = "only", value_name = "KIND:VALUE", value_parser = parse_grant_arg)]
        only: Vec<Grant>,
        /// A lower fuel ceiling: runs without --fuel get it.
        #[arg(long, value_name = "N", value_parser = crate::units::parse_fuel)]
        fuel: Option<u64>,
        /// A shorter lifetime from now, e.g. 10m (the earliest expiry of any block applies).
        #[arg(long, value_name = "DURATION", value_parser = crate::units::parse_duration)]
        ttl: Option<Duration>,
        /// Usable only inside this window too (see `mint --window`).
        #[arg(long = "window", value_parser = Window::parse)]
        windows: Vec<Window>,
        /// A stricter rate (the strictest rate in any block applies).
        #[arg(long, value_parser = Rate::parse)]
        rate: Option<Rate>,
        /// Pin the narrowed token to this component file (see `mint --component`).
        #[arg(long, value_name = "FILE")]
        component: Option<PathBuf>,
        /// Pin the narrowed token to the component with this sha256 (hex).
        #[arg(long, value_name = "SHA256", conflicts_with = "component")]
        pin: Option<String>,
        /// A lower ceiling of model tokens per run (the lowest in any block applies).
        #[arg(long, value_name = "N")]
        llm_tokens: Option<u64>,
        /// A budget of model tokens per period, added to the token's (every budget of every block applies; for one
        /// period, the lowest). Repeatable.
        #[arg(long = "llm-budget", value_name = "N/PERIOD", value_parser = TokenBudget::parse)]
        llm_budgets: Vec<TokenBudget>,
        /// Write the token to FILE (owner-only) instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Show a token's agent, grants, limits, windows, rate, blocks and checks, root key id, revocation ids, and
    /// whether it is usable now (or at --at).
    Inspect {
        /// The token: a file, `-` for stdin, or the base64 itself.
        token: String,
        /// Print it as one JSON object.
        #[arg(long)]
        json: bool,
        /// Evaluate expiry, not-before and windows at this instant (RFC 3339) instead of now.
        #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
        at: Option<SystemTime>,
    },
    /// Revoke a token (and every token attenuated from it) by the token or one of its revocation ids.
    Revoke {
        /// The token (a file, `-` for stdin, or the base64 itself), or one of its revocation ids (128 hex digits).
        token: String,
    },
}

/// Parses `--grant`/`--only`: [`Grant::parse`], with a relative `fs:PATH` taken from the current directory (the
/// directory's canonical path if it exists, as a run's `--dir` asks for it).
fn parse_grant_arg(text: &str) -> Result<Grant, String> {
    if let Some(rest) = text.strip_prefix("fs:")
        && let Some((path, mode)) = rest.rsplit_once(':')
        && !path.is_empty()
        && !path.starts_with('/')
    {
        let absolute = std::fs::canonicalize(path)
            .or_else(|_| std::path::absolute(path))
            .map_err(|e| format!("invalid grant `{text}`: cannot resolve `{path}`: {e}"))?;
        let absolute = absolute.to_str().ok_or_else(|| format!("invalid grant `{text}`: the path is not UTF-8"))?;
        return Grant::parse(&format!("fs:{absolute}:{mode}"));
    }
    Grant::parse(text)
}

/// How a token argument that names no file is shown: `token file NAME`.
pub fn token_file(arg: &str) -> String {
    format!("token file {arg}")
}

/// Whether a [`read_token`] error is a missing file (exit 76 where a command has exit codes).
pub fn is_not_found(error: &str) -> bool {
    error.contains(": file not found (give a token file")
}

/// The shortest text that can be a token: the smallest token `mint` makes is several hundred characters, and a
/// revocation id is 128 hex digits.
const MIN_TOKEN_TEXT: usize = 100;

/// Reads a token argument: a file, `-` for stdin, or the base64 text itself.
pub fn read_token(arg: &str) -> Result<String, String> {
    use std::io::Read;
    if arg == "-" {
        let mut s = String::new();
        std::io::stdin()
            .take(1 << 20)
            .read_to_string(&mut s)
            .map_err(|e| format!("reading the token from stdin: {e}"))?;
        return Ok(s.trim().to_string());
    }
    let path = std::path::Path::new(arg);
    if path.is_file() {
        let meta = std::fs::metadata(path).map_err(|e| format!("{arg}: {e}"))?;
        if meta.len() > 1 << 20 {
            return Err(format!("{arg}: token file over 1 MiB"));
        }
        return std::fs::read_to_string(path).map(|s| s.trim().to_string()).map_err(|e| format!("{arg}: {e}"));
    }
    // Tokens are URL-safe base64 of a few hundred bytes at least: anything shorter, or with other characters, was
    // meant as a file name.
    let text = arg.trim();
    if text.len() < MIN_TOKEN_TEXT
        || !text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'='))
    {
        return Err(format!(
            "{}: file not found (give a token file, `-` for stdin, or the token's base64 itself)",
            token_file(arg)
        ));
    }
    Ok(text.to_string())
}

/// The sha256 (hex) of a component file, as `run` computes it.
fn component_digest(path: &std::path::Path) -> Result<String, String> {
    use sha2::{Digest, Sha256};
    let bytes = crate::component::read(path).map_err(|e| e.to_string())?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

fn emit(text: &str, out: Option<&PathBuf>) -> Result<(), String> {
    match out {
        // A token is a bearer credential: its file is the owner's only.
        Some(p) => {
            crate::home::write_private(p, format!("{text}\n").as_bytes()).map_err(|e| format!("{}: {e}", p.display()))
        }
        None => {
            println!("{text}");
            Ok(())
        }
    }
}

impl TokenCommand {
    pub fn execute(self, home: &crate::home::Home) -> i32 {
        match self.run(home) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("toka-host: {e}");
                if is_not_found(&e) { crate::error::Outcome::FileNotFound.exit_code() } else { 1 }
            }
        }
    }

    fn run(self, home: &crate::home::Home) -> Result<(), String> {
        let keys = || KeyStore::load(&home.dir).map_err(|e| e.to_string());
        let now = SystemTime::now();
        match self.action {
            TokenAction::Mint {
                agent,
                plugin,
                component,
                pin,
                grants,
                fuel,
                memory,
                timeout,
                ttl,
                expires,
                not_before,
                max_depth,
                windows,
                rate,
                llm_tokens,
                llm_budgets,
                out,
            } => {
                let limits =
                    TokenLimits { fuel, memory, timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX) };
                let digest = match (&component, pin) {
                    (Some(file), _) => Some(component_digest(file)?),
                    (None, pin) => pin,
                };
                let bound = match &plugin {
                    Some(name) => {
                        let record =
                            crate::plugin::store::Store::open(&home.dir).get(name).map_err(|e| e.to_string())?;
                        if record.kind != crate::plugin::Kind::Agent {
                            return Err(format!("{name} is a tool package: bind tokens to agent packages"));
                        }
                        Some(record)
                    }
                    None => None,
                };
                let agent = match (agent, &component, &bound) {
                    (Some(agent), ..) => agent,
                    (None, Some(file), _) => crate::run::agent_name(file),
                    (None, None, Some(record)) => record.name.clone(),
                    (None, None, None) => return Err("give --agent NAME, --component FILE or --plugin NAME".into()),
                };
                if let Some(record) = &bound
                    && agent != record.name
                {
                    return Err(format!(
                        "a token bound to package {} is for agent {}, not {agent}",
                        record.name, record.name
                    ));
                }
                let request = MintRequest {
                    agent,
                    plugin: bound.map(|r| r.identity()),
                    component: digest,
                    grants,
                    limits,
                    ttl: Some(ttl),
                    expires,
                    not_before,
                    max_depth,
                    windows,
                    rate,
                    llm_tokens,
                    llm_budgets,
                };
                let t = token::mint(&keys()?, &request, now).map_err(|e| e.to_string())?;
                emit(&t.to_base64().map_err(|e| e.to_string())?, out.as_ref())
            }
            TokenAction::Attenuate {
                token,
                only,
                fuel,
                ttl,
                windows,
                rate,
                component,
                pin,
                llm_tokens,
                llm_budgets,
                out,
            } => {
                let parsed = token::parse_unverified(&read_token(&token)?).map_err(|e| e.to_string())?;
                let component = match (&component, pin) {
                    (Some(file), _) => Some(component_digest(file)?),
                    (None, pin) => pin,
                };
                let a = Attenuation {
                    only,
                    fuel,
                    ttl,
                    windows,
                    rate,
                    component,
                    llm_tokens,
                    llm_budgets,
                    ..Attenuation::default()
                };
                let narrowed = token::attenuate(&parsed, &a, now).map_err(|e| e.to_string())?;
                emit(&narrowed.to_base64().map_err(|e| e.to_string())?, out.as_ref())
            }
            TokenAction::Inspect { token, json, at } => {
                let text = read_token(&token)?;
                let mut i = token::inspect(&keys()?, &text, at.unwrap_or(now)).map_err(|e| e.to_string())?;
                // Revocations live in the home's database; without one, nothing has been revoked here.
                if i.verifies == "ok"
                    && let Ok(db) = home.existing_db()
                    && let Some(id) = crate::token::revoked_among(&db, &i.revocation_ids).map_err(|e| e.to_string())?
                {
                    i.verifies = format!("token is revoked (revocation id {id})");
                }
                if json {
                    println!("{}", serde_json::json!(i));
                } else {
                    let or_none = |v: Option<String>| v.unwrap_or_else(|| "none".into());
                    println!("agent:        {}", or_none(i.agent.clone()));
                    let list = |g: &[String]| if g.is_empty() { "none".to_string() } else { g.join(" ") };
                    // What a run can use: the authority block's grants narrowed by every later block.
                    println!("grants:       {}", list(&i.grants));
                    if i.grants != i.authority_grants || !i.unread_blocks.is_empty() {
                        println!("  authority:  {}", list(&i.authority_grants));
                    }
                    for n in &i.unread_blocks {
                        println!("  block {n} narrows requests with checks of its own: see below");
                    }
                    if let Some(l) = i.limits {
                        // The smallest ceiling of every block: what a run gets without --fuel/--max-memory/--timeout.
                        println!("limits:       fuel {} memory {} timeout {} ms", l.fuel, l.memory, l.timeout_ms);
                    }
                    println!("expires:      {}", or_none(i.expires.clone()));
                    println!("not before:   {}", or_none(i.not_before.clone()));
                    println!("max depth:    {}", or_none(i.max_depth.map(|d| d.to_string())));
                    println!(
                        "windows:      {}",
                        if i.windows.is_empty() { "none".into() } else { i.windows.join("; ") }
                    );
                    println!("rate:         {}", or_none(i.rate.clone()));
                    println!("llm tokens:   {} per run", or_none(i.llm_tokens.map(|n| n.to_string())));
                    println!(
                        "llm budgets:  {}",
                        if i.llm_budgets.is_empty() { "none".into() } else { i.llm_budgets.join(", ") }
                    );
                    println!(
                        "pinned to:    {}",
                        if i.pinned.is_empty() { "any component".into() } else { i.pinned.join(" ") }
                    );
                    if !i.bound_to.is_empty() {
                        println!("bound to:     {} (installed package KEY_ID/NAME)", i.bound_to.join(" "));
                    }
                    println!("root key id:  {}", or_none(i.root_key_id.map(|id| id.to_string())));
                    println!("revocation:   {}", i.revocation_ids.join(" "));
                    for (n, block) in i.blocks.iter().enumerate() {
                        println!("block {n}{}:\n{}", if n == 0 { " (authority)" } else { "" }, block.trim_end());
                    }
                    println!("usable at {}: {}", i.evaluated_at, i.verifies);
                }
                Ok(())
            }
            TokenAction::Revoke { token } => {
                let text = read_token(&token)?;
                let id = if text.len() == 128 && text.chars().all(|c| c.is_ascii_hexdigit()) {
                    text.to_ascii_lowercase()
                } else {
                    // The token's own block (its last): revoking it revokes this token and every token attenuated
                    // from it (they carry this block's id too), never its parent or its siblings.
                    let t = token::parse_unverified(&text).map_err(|e| e.to_string())?;
                    hex::encode(t.revocation_identifiers().last().ok_or("token has no blocks")?)
                };
                let db = home.open_db().map_err(|e| e.to_string())?;
                let signer = Signer::for_home(home);
                let log = EventLog::open(db, GroupCommit::default(), Some(signer)).map_err(|e| e.to_string())?;
                log.submit(crate::run::operation(Op::RevokeToken { token_id: id.clone() }))
                    .map_err(|e| e.to_string())?;
                println!("revoked {id}");
                Ok(())
            }
        }
    }
}
