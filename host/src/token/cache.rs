//! Verified tokens, and the process's cache of them.
//!
//! Verifying a token costs one Ed25519 signature check per block plus a Datalog pass to read what it states. A
//! process that sees the same token again (`--repeat`, a tool call per agent call, the MCP server) keeps the result,
//! keyed by the SHA-256 of the token's text. What can change between two uses is never cached: each hit re-checks
//! that the root key still verifies (rotation overlap, retirement, or a different key file under the same id), and
//! callers check revocation and the token's time checks on every use, because [`super::authorize`] states the
//! current time each time. The one result kept per token is which authorizer programs accepted it in the current
//! second: the program states that second (and the open windows), so the same program has the same answer.

use super::keys::KeyStore;
use super::{
    AUTHORIZER_LIMITS, Grant, Rate, TokenBudget, TokenError, TokenLimits, Window, from_dl, ms, parse_unverified,
};
use biscuit_auth::{AuthorizerBuilder, Biscuit};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::SystemTime;

/// A token whose signature chain verified, with what it states read out once.
#[derive(Debug)]
pub struct Verified {
    pub token: Biscuit,
    pub root_key_id: u32,
    /// The public key the signature verified against, as bytes (compared at every use: no hex encoding per call).
    pub public_key: Vec<u8>,
    /// Hex revocation ids of every block, authority first.
    pub revocation_ids: Vec<String>,
    /// What the authority block states.
    pub agent: Option<String>,
    pub grants: Vec<Grant>,
    pub limits: Result<TokenLimits, String>,
    pub max_depth: Option<u32>,
    /// Every `window(TEXT)` fact of any block, with its parse (a text that does not parse never opens).
    pub windows: Vec<(String, Option<Window>)>,
    /// The strictest `rate(N, PERIOD_MS)` of any block.
    pub rate: Option<Rate>,
    /// Every `pinned("sha256:HEX")` of any block: the components the token is limited to.
    pub pinned: Vec<String>,
    /// The lowest `llm_tokens(N)` of any block: model tokens one run may use.
    pub llm_tokens: Option<u64>,
    /// Every `llm_budget(N, PERIOD_MS)` of any block, the lowest per period: model tokens the agent may use per
    /// period. All of them apply.
    pub llm_budgets: Vec<TokenBudget>,
    /// Authorizations this token passed in the current second (see [`Verified::passed`]).
    passed: Mutex<Passed>,
    /// Whole requests this token passed in one second (see [`Verified::asked_before`]).
    asked: Mutex<(u64, HashSet<Asked>)>,
}

/// Everything of a request that the authorizer programs state, for a token without time windows (see
/// [`super::authorize`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Asked {
    agent: String,
    grants: Vec<Grant>,
    limits: TokenLimits,
    component: Option<String>,
    plugin: Option<String>,
}

impl Asked {
    pub(super) fn of(request: &super::RunRequest) -> Asked {
        Asked {
            agent: request.agent.clone(),
            grants: request.grants.clone(),
            limits: request.limits,
            component: request.component.clone(),
            plugin: request.plugin.clone(),
        }
    }
}

/// Authorizer programs that accepted the token, all stating the same time facts.
#[derive(Debug, Default)]
struct Passed {
    time: String,
    programs: std::collections::HashSet<String>,
}

/// Most programs remembered for one second of one token.
const MAX_PASSED: usize = 256;

impl Verified {
    /// Verifies `text` against the root key it names and reads what it states.
    pub fn new(keys: &KeyStore, text: &str, now: SystemTime) -> Result<Verified, TokenError> {
        let unverified = parse_unverified(text)?;
        let id = unverified.root_key_id().ok_or_else(|| TokenError::Malformed("token names no root key id".into()))?;
        let public = keys.verifying(id, ms(now))?;
        let token = Biscuit::from_base64(text.trim(), public).map_err(|e| TokenError::Signature(e.to_string()))?;
        Verified::read(token, id, public)
    }

    /// A token this process has just minted ([`crate::token::mint`]) with one of `keys`, read without the round trip
    /// through its base64 form: its signatures are the ones this process made, so checking them again would only
    /// re-derive what is in memory. The root key it names must still verify at `now`, as for any token.
    pub fn minted(keys: &KeyStore, token: Biscuit, now: SystemTime) -> Result<Verified, TokenError> {
        let id = token.root_key_id().ok_or_else(|| TokenError::Malformed("token names no root key id".into()))?;
        let public = keys.verifying(id, ms(now))?;
        Verified::read(token, id, public)
    }

    /// Reads what `token`, verified against the root key `id` (`public`), states.
    fn read(token: Biscuit, id: u32, public: biscuit_auth::PublicKey) -> Result<Verified, TokenError> {
        let invalid = |e: biscuit_auth::error::Token| TokenError::Invalid(e.to_string());
        let mut authorizer = AuthorizerBuilder::new().set_limits(AUTHORIZER_LIMITS).build(&token).map_err(invalid)?;

        // The authority block (the default scope of a query).
        let agents: Vec<(String,)> = authorizer.query("a($a) <- agent($a)").map_err(invalid)?;
        let grants: Vec<(String, String, String)> =
            authorizer.query("g($k, $v, $m) <- grant($k, $v, $m)").map_err(invalid)?;
        let depths: Vec<(i64,)> = authorizer.query("d($n) <- max_depth($n)").map_err(invalid)?;
        let mut one = |rule: &str| -> Result<u64, String> {
            let found: Vec<(i64,)> = authorizer.query(rule).map_err(|e| e.to_string())?;
            found.first().and_then(|(n,)| from_dl(*n)).ok_or_else(|| format!("token states no limit for `{rule}`"))
        };
        let limits = (|| {
            Ok(TokenLimits {
                fuel: one("limit($n) <- fuel($n)")?,
                memory: one("limit($n) <- memory($n)")?,
                timeout_ms: one("limit($n) <- timeout_ms($n)")?,
            })
        })();
        // The ceilings in force are the smallest of every block: an attenuation block's `check if
        // fuel_request($f), $f <= N` lowers the fuel a run without `--fuel` gets (a block can only lower it).
        let limits = limits.map(|mut l| {
            for block in 1..token.block_count() {
                let source = token.print_block_source(block).unwrap_or_default();
                for ceiling in checked_ceilings(&source, "fuel_request($f), $f <= ") {
                    l.fuel = l.fuel.min(ceiling);
                }
                for ceiling in checked_ceilings(&source, "memory_request($m), $m <= ") {
                    l.memory = l.memory.min(ceiling);
                }
                for ceiling in checked_ceilings(&source, "timeout_request($t), $t <= ") {
                    l.timeout_ms = l.timeout_ms.min(ceiling);
                }
            }
            l
        });

        // Windows and rates narrow, so they are read from every block: a later block can only add restrictions.
        let windows: Vec<(String,)> = authorizer.query_all("w($s) <- window($s)").map_err(invalid)?;
        let rates: Vec<(i64, i64)> = authorizer.query_all("r($n, $p) <- rate($n, $p)").map_err(invalid)?;
        let pinned: Vec<(String,)> = authorizer.query_all("p($d) <- pinned($d)").map_err(invalid)?;
        // Model token ceilings narrow too: the lowest of any block applies. Fail closed on a value the host cannot
        // apply.
        let ceilings: Vec<(i64,)> = authorizer.query_all("t($n) <- llm_tokens($n)").map_err(invalid)?;
        let mut llm_tokens: Option<u64> = None;
        for (n,) in ceilings {
            let n =
                from_dl(n).ok_or_else(|| TokenError::Invalid(format!("token states an invalid llm_tokens({n})")))?;
            llm_tokens = Some(llm_tokens.map_or(n, |t| t.min(n)));
        }
        let budgets: Vec<(i64, i64)> = authorizer.query_all("b($n, $p) <- llm_budget($n, $p)").map_err(invalid)?;
        let mut llm_budgets: Vec<TokenBudget> = Vec::new();
        for (n, p) in budgets {
            let parsed = match (u64::try_from(n), u64::try_from(p)) {
                (Ok(tokens), Ok(period_ms))
                    if (1..=TokenBudget::MAX_TOKENS).contains(&tokens)
                        && (1..=Rate::MAX_PERIOD_MS).contains(&period_ms) =>
                {
                    TokenBudget { tokens, period_ms }
                }
                _ => return Err(TokenError::Invalid(format!("token states an invalid llm_budget({n}, {p})"))),
            };
            TokenBudget::narrow(&mut llm_budgets, parsed);
        }
        if llm_budgets.len() > TokenBudget::MAX_PERIODS {
            return Err(TokenError::Invalid(format!(
                "token states model token budgets for {} periods, over the {} the host checks",
                llm_budgets.len(),
                TokenBudget::MAX_PERIODS
            )));
        }
        let mut rate: Option<Rate> = None;
        for (n, p) in rates {
            let parsed = match (u64::try_from(n), u64::try_from(p)) {
                (Ok(n), Ok(period_ms))
                    if (1..=Rate::MAX_N).contains(&n) && (1..=Rate::MAX_PERIOD_MS).contains(&period_ms) =>
                {
                    Rate { n, period_ms }
                }
                // Fail closed: a rate the host cannot apply makes the token unusable, not unlimited.
                _ => return Err(TokenError::Invalid(format!("token states an invalid rate({n}, {p})"))),
            };
            rate = Some(rate.map_or(parsed, |r| r.stricter(parsed)));
        }
        Ok(Verified {
            root_key_id: id,
            public_key: public.to_bytes(),
            revocation_ids: token.revocation_identifiers().iter().map(hex::encode).collect(),
            agent: agents.into_iter().next().map(|(a,)| a),
            grants: grants.into_iter().map(|(kind, value, mode)| Grant { kind, value, mode }).collect(),
            limits,
            max_depth: depths.first().and_then(|(n,)| u32::try_from(*n).ok()),
            windows: windows.into_iter().map(|(text,)| (text.clone(), Window::parse(&text).ok())).collect(),
            rate,
            pinned: pinned.into_iter().map(|(p,)| p).collect(),
            llm_tokens,
            llm_budgets,
            token,
            passed: Mutex::new(Passed::default()),
            asked: Mutex::new((0, HashSet::new())),
        })
    }

    /// Whether `program`, stated with the time facts `time`, already accepted this token. Authorization is a pure
    /// function of the token and the authorizer's program, and the program states the time to the second (and which
    /// windows are open), so a repeat in the same second (a tool call per agent call, say) has the same answer.
    pub(super) fn passed(&self, time: &str, program: &str) -> bool {
        let passed = self.passed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        passed.time == time && passed.programs.contains(program)
    }

    /// Whether the very same request passed in the unix second `second` (only asked for a token without windows,
    /// whose programs are a function of the request and the second).
    pub(super) fn asked_before(&self, second: u64, asked: &Asked) -> bool {
        let memo = self.asked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        memo.0 == second && memo.1.contains(asked)
    }

    /// Remembers that `asked` passed in `second`; forgets every request of another second.
    pub(super) fn remember_asked(&self, second: u64, asked: Asked) {
        let mut memo = self.asked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if memo.0 != second {
            memo.0 = second;
            memo.1.clear();
        }
        if memo.1.len() < MAX_PASSED {
            memo.1.insert(asked);
        }
    }

    /// Remembers that `program`, stated with the time facts `time`, accepted this token; forgets every program of
    /// another time.
    pub(super) fn remember(&self, time: &str, program: String) {
        let mut passed = self.passed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if passed.time != time {
            passed.time = time.to_string();
            passed.programs.clear();
        }
        if passed.programs.len() < MAX_PASSED {
            passed.programs.insert(program);
        }
    }
}

/// The numbers N of every `PREFIX N` in a block's checks (as attenuation writes them).
fn checked_ceilings<'a>(source: &'a str, prefix: &'a str) -> impl Iterator<Item = u64> + 'a {
    source.match_indices(prefix).filter_map(move |(at, _)| {
        let digits: String = source[at + prefix.len()..].chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<i64>().ok().and_then(from_dl)
    })
}

/// Verified tokens by the SHA-256 of their text.
#[derive(Debug)]
pub struct TokenCache {
    entries: Mutex<HashMap<[u8; 32], Arc<Verified>>>,
    capacity: usize,
}

/// The process-wide cache that `run`, tool calls and the MCP server share.
pub fn global() -> &'static TokenCache {
    static CACHE: LazyLock<TokenCache> = LazyLock::new(|| TokenCache::new(1024));
    &CACHE
}

impl TokenCache {
    pub fn new(capacity: usize) -> Self {
        TokenCache { entries: Mutex::new(HashMap::new()), capacity: capacity.max(1) }
    }

    /// The verified token for `text`: from the cache if its root key still verifies it, else verified now.
    pub fn verify(&self, keys: &KeyStore, text: &str, now: SystemTime) -> Result<Arc<Verified>, TokenError> {
        let digest: [u8; 32] = Sha256::digest(text.trim().as_bytes()).into();
        let hit = self.entries.lock().unwrap_or_else(|p| p.into_inner()).get(&digest).cloned();
        if let Some(v) = hit {
            // The key may have been retired, its overlap may have ended, or the key file may have changed.
            let public = keys.verifying(v.root_key_id, ms(now))?;
            if public.to_bytes() == v.public_key {
                return Ok(v);
            }
        }
        let verified = Arc::new(Verified::new(keys, text, now)?);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.capacity
            && let Some(evicted) = entries.keys().next().copied()
        {
            entries.remove(&evicted);
        }
        entries.insert(digest, verified.clone());
        Ok(verified)
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::{Grant, MintRequest, TokenLimits, mint};

    fn token(keys: &KeyStore, agent: &str) -> String {
        let request =
            MintRequest { agent: agent.into(), ttl: Some(std::time::Duration::from_secs(60)), ..Default::default() };
        mint(keys, &request, SystemTime::now()).unwrap().to_base64().unwrap()
    }

    /// Past its capacity the cache evicts: it never holds more than its capacity, and an evicted token verifies
    /// again from scratch (a new entry), while a kept one is the same entry.
    #[test]
    fn never_holds_more_than_its_capacity() {
        let mut keys = KeyStore::default();
        keys.init(0).unwrap();
        let cache = TokenCache::new(2);
        let now = SystemTime::now();
        let texts: Vec<String> = (0..3).map(|i| token(&keys, &format!("agent-{i}"))).collect();
        let first: Vec<Arc<Verified>> = texts.iter().map(|t| cache.verify(&keys, t, now).unwrap()).collect();
        assert_eq!(cache.len(), 2);
        let again: Vec<bool> =
            texts.iter().zip(&first).map(|(t, v)| Arc::ptr_eq(v, &cache.verify(&keys, t, now).unwrap())).collect();
        assert_eq!(cache.len(), 2);
        assert!(again.iter().any(|kept| !kept), "one of the three was evicted and verified anew: {again:?}");
        // The last one verified is always kept: a hit right after a miss.
        assert!(Arc::ptr_eq(
            &cache.verify(&keys, &texts[2], now).unwrap(),
            &cache.verify(&keys, &texts[2], now).unwrap()
        ));
    }

    /// A token read as minted, in memory, states exactly what its base64 form states once verified, and its root key
    /// is checked as any token's: once the key is retired, the same read refuses it.
    #[test]
    fn a_minted_token_reads_as_its_verified_text_does() {
        let mut keys = KeyStore::default();
        keys.init(0).unwrap();
        let now = SystemTime::now();
        let g =
            |kind: &str, value: &str, mode: &str| Grant { kind: kind.into(), value: value.into(), mode: mode.into() };
        let request = MintRequest {
            agent: "notes".into(),
            grants: vec![g("dir", "/srv/data", "ro"), g("env", "HOME", "")],
            limits: TokenLimits { fuel: 1_000, memory: 1 << 20, timeout_ms: 5_000 },
            ttl: Some(std::time::Duration::from_secs(60)),
            max_depth: Some(2),
            windows: vec![crate::token::Window::parse("Mon-Fri 09:00-17:00 UTC").unwrap()],
            rate: Some(crate::token::Rate { n: 5, period_ms: 60_000 }),
            component: Some("ab".repeat(32)),
            llm_tokens: Some(900),
            ..MintRequest::default()
        };
        let minted = mint(&keys, &request, now).unwrap();
        let (text, kept) = (minted.to_base64().unwrap(), minted.clone());
        let (read, verified) =
            (Verified::minted(&keys, minted, now).unwrap(), Verified::new(&keys, &text, now).unwrap());
        // What a token states, in a fixed order: a Datalog query answers in no set order (two readings of one token
        // may list its grants differently), so the lists it answers are sorted.
        let states = |v: &Verified| {
            let mut grants: Vec<_> = v.grants.iter().map(|g| (&g.kind, &g.value, &g.mode)).collect();
            grants.sort();
            let mut windows: Vec<_> = v.windows.iter().map(|window| format!("{window:?}")).collect();
            windows.sort();
            let mut budgets: Vec<_> = v.llm_budgets.iter().map(|budget| format!("{budget:?}")).collect();
            budgets.sort();
            let mut pinned = v.pinned.clone();
            pinned.sort();
            format!(
                "{} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
                v.root_key_id,
                v.public_key,
                v.revocation_ids,
                v.agent,
                grants,
                v.limits,
                v.max_depth,
                windows,
                v.rate,
                pinned,
                v.llm_tokens,
                budgets
            )
        };
        assert_eq!(states(&read), states(&verified));
        // What was minted is there (the comparison is not of two empty readings).
        assert_eq!(read.agent.as_deref(), Some("notes"));
        assert_eq!(read.grants.len(), 2);
        assert_eq!(
            (read.max_depth, read.llm_tokens, read.pinned.len(), read.windows.len()),
            (Some(2), Some(900), 1, 1)
        );
        // The root key is checked: retired, it refuses the token read in memory too.
        keys.rotate(ms(now), 60_000).unwrap();
        keys.retire(1).unwrap();
        let retired = Verified::minted(&keys, kept, now).err().map(|e| e.to_string());
        assert_eq!(retired.as_deref(), Some("token is signed by root key 1, which is retired"));
    }

    /// A hit re-checks the root key: once key 1 is retired, its token is refused though it is in the cache.
    #[test]
    fn a_hit_rechecks_the_root_key() {
        let mut keys = KeyStore::default();
        keys.init(0).unwrap();
        let cache = TokenCache::new(4);
        let text = token(&keys, "a");
        let now = SystemTime::now();
        cache.verify(&keys, &text, now).unwrap();
        keys.rotate(ms(now), 60_000).unwrap();
        cache.verify(&keys, &text, now).unwrap();
        keys.retire(1).unwrap();
        let refused = cache.verify(&keys, &text, now).unwrap_err();
        assert_eq!(refused.to_string(), "token is signed by root key 1, which is retired");
    }
}
