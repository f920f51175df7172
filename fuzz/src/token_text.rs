//! The property the token fuzz target claims, as a plain function: the libFuzzer target
//! (`fuzz/fuzz_targets/token_parse.rs`) calls it on whatever libFuzzer makes, and the normal test suite
//! (`fuzz/tests/token_text.rs`) calls it on the seed corpus and on random mutations of it, so the property is
//! checked on every test run without a libFuzzer build.
//!
//! The property, for any bytes a hostile caller hands over as a token (its base64 text or its raw serialization) or
//! as a flag value (a grant, a window, a rate):
//! 1. nothing panics, and every bad input is an error value;
//! 2. nothing verifies unless the fixed test key signed it, and a token that verifies states exactly what the key
//!    signed: agent `fuzz`, grants within [`GRANTS`], limits within [`LIMITS`] (no forgery by editing bytes);
//! 3. a token that verifies never authorizes more than its authority block: none of [`NEVER`], no more fuel, no
//!    other agent (attenuation, which needs no key, can only narrow);
//! 4. grants, windows and rates that parse print back to text that parses to the same value.
//!
//! Inputs are evaluated at a fixed instant ([`at`]), so a failing input replays exactly.
//! This module must never touch the disk, the clock or the network.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use toka_host::token::keys::KeyStore;
use toka_host::token::{self, Grant, MintRequest, Rate, RunRequest, TokenLimits, Window};

/// A fixed root key, made for these tests and published here (it protects nothing). The seed tokens are signed with
/// it, so that mutated seeds reach signature checking, Datalog and authorization instead of stopping at an unknown
/// key.
const KEYS_JSON: &str = r#"{"keys":[{"id":1,"status":"active","created_ms":0,"verify_until_ms":null,
  "public_hex":"0757923c0b2ffd35ed8262682ec2b39de6064bb4249f59b6bd4e7742713fbc05",
  "private_hex":"326ba1e160abb2b97da4d9f2db00348c04e1f9239d333fa49f9aec1df3749acd"}]}"#;

pub static KEYS: LazyLock<KeyStore> = LazyLock::new(|| serde_json::from_str(KEYS_JSON).expect("the fixed key parses"));

/// The agent every seed token is for.
pub const AGENT: &str = "fuzz";

/// Everything the seeds' authority blocks grant (as `Grant` prints it).
pub const GRANTS: [&str; 3] = ["fs:/srv/:ro", "env:A", "tool:t"];

/// The seeds' limits: a verified token states these, and authorizes no request above them.
pub const LIMITS: TokenLimits = TokenLimits { fuel: 1_000_000, memory: 64 << 20, timeout_ms: 10_000 };

/// Requests no token the fixed key signed may ever authorize: more than `fs:/srv:ro` (read-write, a parent, a
/// sibling whose name starts the same), and every kind the seeds do not grant.
pub const NEVER: [&str; 10] = [
    "fs:/srv:rw",
    "fs:/:ro",
    "fs:/srvx:ro",
    "fs:/etc:ro",
    "env:B",
    "tool:u",
    "net:127.0.0.1:80",
    "state:ro",
    "stdin",
    "spawn:fuzz",
];

/// Requests the seeds authorize (the test's positive control: property 3 is not vacuous).
pub const ALLOWED: [&str; 3] = ["fs:/srv/x:ro", "env:A", "tool:t"];

/// The instant inputs are evaluated at: 2027-01-15, inside every seed's lifetime.
pub fn at() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// A request of the seeds' agent for `grants` within [`LIMITS`].
pub fn request(grants: &[&str]) -> RunRequest {
    RunRequest {
        agent: AGENT.into(),
        grants: grants.iter().map(|g| Grant::parse(g).expect("a valid grant")).collect(),
        limits: TokenLimits { fuel: 1000, memory: 1 << 20, timeout_ms: 100 },
        component: None,
        plugin: None,
    }
}

/// Whether `grant` is covered by a grant the key signed, as the host covers grants: a directory by itself or a
/// directory above it in normal form (`token inspect` shows what attenuation narrowed, e.g. `fs:/srv/x/:ro` under
/// the signed `fs:/srv/:ro`), read-only by read-write or read-only; anything else exactly.
fn signed(grant: &str) -> bool {
    let Ok(g) = Grant::parse(grant) else { return false };
    GRANTS.iter().filter_map(|s| Grant::parse(s).ok()).any(|s| {
        if g.kind != "fs" || s.kind != "fs" {
            return g.to_string() == s.to_string();
        }
        match (token::normalize_dir(&g.value), token::normalize_dir(&s.value)) {
            (Ok(inner), Ok(outer)) => inner.starts_with(&outer) && (g.mode == s.mode || s.mode == "rw"),
            _ => false,
        }
    })
}

/// The property (see the module documentation) on one input.
pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let now = at();

    // `token inspect`: describes anything; says "ok" only for a token the key signed, stating the seeds' facts.
    if let Ok(inspection) = token::inspect(&KEYS, &text, now)
        && inspection.verifies == "ok"
    {
        assert_eq!(inspection.root_key_id, Some(1));
        assert_eq!(inspection.agent.as_deref(), Some(AGENT), "a verified token is for another agent");
        for g in &inspection.grants {
            assert!(signed(g), "a verified token grants {g}, which the key never signed");
        }
    }

    // `run --token`: verify, then authorize.
    if let Ok(verified) = token::verify(&KEYS, &text, now) {
        assert_eq!(verified.root_key_id, 1);
        assert_eq!(verified.agent.as_deref(), Some(AGENT), "a verified token is for another agent");
        for g in &verified.grants {
            assert!(signed(&g.to_string()), "a verified token grants {g}, which the key never signed");
        }
        // The limits in force are the smallest ceiling across blocks: an attenuation may lower them, never raise them.
        let limits = verified.limits.as_ref().expect("a verified token states its limits");
        assert!(
            limits.fuel <= LIMITS.fuel && limits.memory <= LIMITS.memory && limits.timeout_ms <= LIMITS.timeout_ms,
            "a verified token states limits above the signed ones: {limits:?}"
        );
        for never in NEVER {
            assert!(
                token::authorize(&verified, &request(&[never]), now).is_err(),
                "a verified token authorized {never}"
            );
        }
        let mut more_fuel = request(&[]);
        more_fuel.limits.fuel = LIMITS.fuel + 1;
        assert!(token::authorize(&verified, &more_fuel, now).is_err(), "a verified token allowed more fuel");
        let mut other_agent = request(&[]);
        other_agent.agent = "root".into();
        assert!(token::authorize(&verified, &other_agent, now).is_err(), "a verified token ran another agent");
    }

    // The token's blocks, unverified, from the text and from the raw bytes.
    if let Ok(unverified) = token::parse_unverified(&text) {
        for i in 0..unverified.block_count() {
            let _ = unverified.print_block_source(i);
        }
    }
    if let Ok(unverified) = biscuit_auth::UnverifiedBiscuit::from(data) {
        for i in 0..unverified.block_count() {
            let _ = unverified.print_block_source(i);
        }
    }

    // Flag values: what parses prints back to itself.
    if let Ok(g) = Grant::parse(&text) {
        assert_eq!(Grant::parse(&g.to_string()).as_ref(), Ok(&g), "a grant's text parses back to it");
    }
    if let Ok(w) = Window::parse(&text) {
        assert_eq!(Window::parse(&w.to_string()).as_ref(), Ok(&w), "a window's canonical text parses back to it");
        // Any instant, including ones far outside the calendar the zone database covers.
        let instant = data.iter().fold(0i64, |acc, &b| acc.wrapping_mul(257).wrapping_add(i64::from(b)));
        let _ = w.contains(instant);
    }
    if let Ok(r) = Rate::parse(&text) {
        assert_eq!(Rate::parse(&r.to_string()), Ok(r), "a rate's text parses back to it");
    }
}

/// The seed corpus, as text: tokens the fixed key signs (plain, windowed, rate-limited, attenuated) and the flag
/// values a caller writes. Tokens carry fresh random block keys, so each call gives new bytes with the same meaning:
/// the corpus is written once into `fuzz/seeds/token_parse/` (by the test, on request) and read from there, so that
/// a random test replays exactly from its seed.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let keys = &*KEYS;
    let expires = UNIX_EPOCH + Duration::from_secs(32_503_680_000); // 3000-01-01
    let base = MintRequest {
        agent: AGENT.into(),
        grants: GRANTS.iter().map(|g| Grant::parse(g).expect("a seed grant")).collect(),
        limits: LIMITS,
        expires: Some(expires),
        max_depth: Some(2),
        ..MintRequest::default()
    };
    let mint = |request: &MintRequest| {
        token::mint(keys, request, at()).expect("the fixed key mints").to_base64().expect("a token encodes")
    };
    let minted = mint(&base);
    let window = Window::parse("Mon-Fri 09:00-17:00 Europe/Paris").expect("a seed window");
    let windowed = mint(&MintRequest { windows: vec![window], ..base.clone() });
    let rated = mint(&MintRequest { rate: Some(Rate::parse("10/min").expect("a seed rate")), ..base.clone() });
    let narrowed = token::attenuate(
        &token::parse_unverified(&minted).expect("a minted token parses"),
        &token::Attenuation {
            only: vec![Grant::parse("fs:/srv/x:ro").expect("a seed grant")],
            fuel: Some(1000),
            ..token::Attenuation::default()
        },
        at(),
    )
    .expect("attenuation needs no key")
    .to_base64()
    .expect("a token encodes");
    vec![
        ("minted", minted.into_bytes()),
        ("windowed", windowed.into_bytes()),
        ("rated", rated.into_bytes()),
        ("attenuated", narrowed.into_bytes()),
        ("grant", b"fs:/srv/data:ro".to_vec()),
        ("window", b"Mon-Fri 09:00-17:00 Europe/Paris".to_vec()),
        ("window-midnight", b"daily 22:00-06:00 UTC".to_vec()),
        ("rate", b"10/min".to_vec()),
    ]
}

/// The raw serialization of a token given as base64 text (the other form a caller can hand over).
pub fn raw(text: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(text).ok()?;
    biscuit_auth::UnverifiedBiscuit::from_base64(text.trim()).ok()?.to_vec().ok()
}
