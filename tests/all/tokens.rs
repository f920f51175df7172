//! Capability tokens: every right of a run comes from a verified token, checked with Datalog before the guest starts.

use std::path::Path;
use toka_tests::{Ran, agent, toka_with};

fn t(home: &Path, args: &[&str]) -> Ran {
    toka_with(args, None, &[("TOKA_HOME", home.to_str().unwrap())])
}

fn mint(home: &Path, extra: &[&str]) -> String {
    let mut args = vec!["token", "mint", "--agent", "echo-cmd"];
    args.extend_from_slice(extra);
    let r = t(home, &args);
    r.expect_code(0);
    r.stdout.trim().to_string()
}

fn echo() -> String {
    agent("echo-cmd").to_str().unwrap().to_string()
}

#[test]
fn a_token_grants_exactly_its_rights() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("f.txt"), "granted\n").unwrap();
    let dir = data.path().canonicalize().unwrap();
    t(h, &["key", "init"]).expect_code(0);
    let token =
        mint(h, &["--grant", &format!("fs:{}:ro", dir.display()), "--grant", "env:GREETING", "--fuel", "50000000"]);

    let grant = format!("{}::/d:ro", dir.display());
    let r = t(h, &["run", "--token", &token, "--dir", &grant, "--env", "GREETING=hi", &echo(), "cat", "/d/f.txt"]);
    r.expect_code(0);
    assert_eq!(r.stdout, "granted\n");

    // Read-write is more than the token grants.
    let rw = format!("{}::/d", dir.display());
    let r = t(h, &["run", "--token", &token, "--dir", &rw, &echo(), "cat", "/d/f.txt"]);
    r.expect_code(72);
    assert!(r.stderr.starts_with(&format!("toka-host: grant refused: fs:{}/:rw:", dir.display())), "{}", r.stderr);

    for (flag, value) in [("--env", "HOME=/root"), ("--allow-net", "127.0.0.1:9"), ("--state", "ro")] {
        let r = t(h, &["run", "--token", &token, flag, value, &echo(), "args"]);
        r.expect_code(72);
    }
    let r = t(h, &["run", "--token", &token, "--inherit-stdin", &echo(), "args"]);
    r.expect_code(72);

    // Limits are ceilings: less is fine, more is refused, and the token's value is the default.
    t(h, &["run", "--token", &token, "--fuel", "1000000", &echo(), "args"]).expect_code(0);
    let r = t(h, &["run", "--token", &token, "--fuel", "60000000", &echo(), "args"]);
    r.expect_code(72);
    assert!(r.stderr.contains("grant refused: limits:") && r.stderr.contains("fuel"), "{}", r.stderr);
}

/// A token's fuel is a ceiling and, without `--fuel`, the run's budget: a spinning agent under a 50 000 000-fuel
/// token stops after exactly that much (not the 10 000 000 000 default), and a smaller `--fuel` is what it gets.
#[test]
fn without_fuel_a_run_gets_exactly_the_tokens_fuel() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    t(h, &["key", "init"]).expect_code(0);
    let r = t(h, &["token", "mint", "--agent", "hostile", "--fuel", "50000000"]);
    r.expect_code(0);
    let token = r.stdout.trim();
    let hostile = agent("hostile");
    let spin = |extra: &[&str]| {
        let mut args = vec!["run", "--json", "--token", token, "--input", r#"{"attack":"spin"}"#];
        args.extend_from_slice(extra);
        args.push(hostile.to_str().unwrap());
        let r = t(h, &args);
        r.expect_code(68);
        r.report()
    };
    let rep = spin(&[]);
    assert_eq!(rep["fuel_consumed"], 50_000_000, "{rep}");
    assert_eq!(rep["error"], "out of fuel: used all 50000000 units");
    let rep = spin(&["--fuel", "1000000"]);
    assert_eq!(rep["fuel_consumed"], 1_000_000, "{rep}");
}

#[test]
fn tokens_are_for_one_agent() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    t(h, &["key", "init"]).expect_code(0);
    let token = mint(h, &[]);
    let r = t(h, &["run", "--token", &token, agent("hello-rust").to_str().unwrap()]);
    r.expect_code(78);
    assert!(r.stderr.starts_with("toka-host: token refused: token is not for agent hello-rust"), "{}", r.stderr);
}

#[test]
fn attenuation_narrows_and_cannot_widen() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir(data.path().join("sub")).unwrap();
    let dir = data.path().canonicalize().unwrap();
    t(h, &["key", "init"]).expect_code(0);
    let parent = mint(h, &["--grant", &format!("fs:{}:rw", dir.display()), "--grant", "env:A"]);
    let r =
        t(h, &["token", "attenuate", &parent, "--only", &format!("fs:{}/sub:ro", dir.display()), "--fuel", "1000000"]);
    r.expect_code(0);
    let child = r.stdout.trim().to_string();

    let sub_ro = format!("{}/sub::/s:ro", dir.display());
    t(h, &["run", "--token", &child, "--fuel", "1000000", "--dir", &sub_ro, &echo(), "ls", "/s"]).expect_code(0);
    for (flag, value) in [
        ("--dir", format!("{}::/d:ro", dir.display())),
        ("--dir", format!("{}/sub::/s", dir.display())),
        ("--env", "A=1".into()),
    ] {
        let r = t(h, &["run", "--token", &child, "--fuel", "1000000", flag, &value, &echo(), "args"]);
        r.expect_code(72);
    }
    let r = t(h, &["run", "--token", &child, "--fuel", "2000000", &echo(), "args"]);
    r.expect_code(72);
    // The parent still has its rights.
    t(h, &["run", "--token", &parent, "--env", "A=1", &echo(), "args"]).expect_code(0);
}

#[test]
fn revoking_a_parent_revokes_its_children_and_is_recorded() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    t(h, &["key", "init"]).expect_code(0);
    let parent = mint(h, &["--grant", "env:A"]);
    let child = t(h, &["token", "attenuate", &parent, "--only", "env:A"]).stdout.trim().to_string();
    t(h, &["run", "--token", &child, "--env", "A=1", &echo(), "args"]).expect_code(0);
    // A grant the token lacks is refused as such while the token stands (the control for the order below).
    let beyond = ["--env", "A=1", "--env", "B=2"];
    let r = t(h, &[&["run", "--token", &child][..], &beyond, &[&echo(), "args"]].concat());
    r.expect_code(72);
    t(h, &["token", "revoke", &parent]).expect_code(0);
    for token in [&parent, &child] {
        let r = t(h, &["run", "--token", token, "--env", "A=1", &echo(), "args"]);
        r.expect_code(78);
        assert!(r.stderr.starts_with("toka-host: token refused: token is revoked"), "{}", r.stderr);
    }
    // Once revoked, the token is refused as revoked, whatever else it would be refused for: the revocations are
    // read last (they need the database) but decide first.
    let r = t(h, &[&["run", "--token", &child][..], &beyond, &[&echo(), "args"]].concat());
    r.expect_code(78);
    assert!(r.stderr.starts_with("toka-host: token refused: token is revoked"), "{}", r.stderr);
    let ev = t(h, &["events", "--json", "--kind", "run.failed"]);
    assert_eq!(ev.stdout.lines().count(), 3, "each refused attempt is an event");
    assert_eq!(t(h, &["events", "--json", "--kind", "grant.refused"]).stdout.lines().count(), 1, "the control");
    assert!(ev.stdout.contains("token-refused"));
    assert_eq!(t(h, &["events", "--json", "--kind", "token.revoked"]).stdout.lines().count(), 1);
    let inspect = t(h, &["token", "inspect", &child]);
    assert!(inspect.stdout.contains(": token is revoked (revocation id"), "{}", inspect.stdout);
}

/// Base64url with padding, as biscuit writes tokens.
const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn b64_decode(text: &str) -> Vec<u8> {
    let (mut bits, mut n, mut out) = (0u32, 0, Vec::new());
    for c in text.bytes().filter(|&c| c != b'=') {
        bits = (bits << 6) | B64.iter().position(|&x| x == c).expect("base64url") as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    out
}

fn b64_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            out.push(if i <= chunk.len() { B64[(n >> (18 - 6 * i)) as usize & 63] as char } else { '=' });
        }
    }
    out
}

/// The byte range of length-delimited field `want` in the protobuf message `bytes`.
fn proto_field(bytes: &[u8], want: u64) -> std::ops::Range<usize> {
    let varint = |at: &mut usize| {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let b = bytes[*at];
            *at += 1;
            v |= u64::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                return v;
            }
        }
    };
    let mut at = 0;
    while at < bytes.len() {
        let key = varint(&mut at);
        match key & 7 {
            0 => drop(varint(&mut at)),
            2 => {
                let len = varint(&mut at) as usize;
                if key >> 3 == want {
                    return at..at + len;
                }
                at += len;
            }
            wire => panic!("unexpected protobuf wire type {wire}"),
        }
    }
    panic!("no field {want}")
}

/// A token with one byte of its authority block's Ed25519 signature flipped: still well-formed (it parses, and
/// `inspect` shows its blocks), but badly signed, and refused as such; a truncated token and garbage are refused as
/// malformed; a token from another home's key is refused by signature. The untouched token runs (positive control).
#[test]
fn forged_truncated_and_foreign_tokens_are_refused() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    t(h, &["key", "init"]).expect_code(0);
    let token = mint(h, &[]);
    t(h, &["run", "--token", &token, &echo(), "args"]).expect_code(0);
    let mut raw = b64_decode(&token);
    assert_eq!(b64_encode(&raw), token, "the codec round-trips a real token");
    // Biscuit { 2: authority SignedBlock { 3: signature } }
    let authority = proto_field(&raw, 2);
    let signature = proto_field(&raw[authority.clone()], 3);
    assert_eq!(signature.len(), 64, "an Ed25519 signature");
    raw[authority.start + signature.start + 10] ^= 0x01;
    let forged = b64_encode(&raw);

    let inspect = t(h, &["token", "inspect", "--json", &forged]);
    inspect.expect_code(0);
    let i: serde_json::Value = serde_json::from_str(&inspect.stdout).unwrap();
    assert!(i["blocks"].as_array().is_some_and(|b| b.len() == 1), "well-formed: {}", inspect.stdout);
    assert!(i["verifies"].as_str().unwrap().starts_with("token signature does not verify"), "{}", inspect.stdout);
    let r = t(h, &["run", "--token", &forged, &echo(), "args"]);
    r.expect_code(78);
    assert!(r.stderr.starts_with("toka-host: token refused: token signature does not verify: "), "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);

    // Text that is not base64 at all is taken for a token file's name, which does not exist (exit 76).
    for (bad, code, message) in [
        (&token[..token.len() / 2], 78, "toka-host: token refused: malformed token: "),
        ("not a token", 76, "toka-host: token file not a token: file not found"),
    ] {
        let r = t(h, &["run", "--token", bad, &echo(), "args"]);
        r.expect_code(code);
        assert!(r.stderr.starts_with(message), "{}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    }
    let other = tempfile::tempdir().unwrap();
    t(other.path(), &["key", "init"]).expect_code(0);
    let foreign = mint(other.path(), &[]);
    let r = t(h, &["run", "--token", &foreign, &echo(), "args"]);
    r.expect_code(78);
    assert!(r.stderr.starts_with("toka-host: token refused: token signature does not verify: "), "{}", r.stderr);
}

#[test]
fn rotation_overlap_and_retirement() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    t(h, &["key", "init"]).expect_code(0);
    let old = mint(h, &[]);
    t(h, &["key", "rotate", "--overlap", "1h"]).expect_code(0);
    let new = mint(h, &[]);
    t(h, &["run", "--token", &old, &echo(), "args"]).expect_code(0);
    t(h, &["run", "--token", &new, &echo(), "args"]).expect_code(0);
    let list = t(h, &["key", "list"]);
    assert!(list.stdout.contains("previous (verifies until") && list.stdout.contains("active"), "{}", list.stdout);
    t(h, &["key", "retire", "2"]).expect_code(1);
    t(h, &["key", "retire", "1"]).expect_code(0);
    let r = t(h, &["run", "--token", &old, &echo(), "args"]);
    r.expect_code(78);
    assert_eq!(r.stderr.trim(), "toka-host: token refused: token is signed by root key 1, which is retired");
    t(h, &["run", "--token", &new, &echo(), "args"]).expect_code(0);
}

#[test]
fn expired_tokens_are_refused() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    t(h, &["key", "init"]).expect_code(0);
    // Expired a minute ago: past the 30 s clock-skew tolerance.
    let ago = humantime::format_rfc3339_seconds(std::time::SystemTime::now() - std::time::Duration::from_secs(60));
    let token = mint(h, &["--expires", &ago.to_string()]);
    let r = t(h, &["run", "--token", &token, &echo(), "args"]);
    r.expect_code(78);
    assert!(r.stderr.starts_with("toka-host: token refused: token has expired"), "{}", r.stderr);
    // A one-second ttl: fine now, expired once the tolerance has passed too.
    let short = mint(h, &["--ttl", "1s"]);
    t(h, &["run", "--token", &short, &echo(), "args"]).expect_code(0);
    let later = humantime::format_rfc3339_seconds(std::time::SystemTime::now() + std::time::Duration::from_secs(40));
    let r = t(h, &["token", "inspect", "--at", &later.to_string(), &short]);
    assert!(r.stdout.contains(": token refused: token has expired"), "{}", r.stdout);
}

#[test]
fn without_a_token_the_flags_are_minted_locally() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    t(h, &["run", &echo(), "args"]).expect_code(0);
    assert!(h.join("keys.json").exists(), "the first run creates the local root key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(h.join("keys.json")).unwrap().permissions().mode() & 0o777, 0o600);
}

/// Every operation of a run names the token that authorized it (its first revocation id).
#[test]
fn runs_are_recorded_under_their_token() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    t(h, &["key", "init"]).expect_code(0);
    let token = mint(h, &[]);
    let inspect = t(h, &["token", "inspect", "--json", &token]);
    let id = serde_json::from_str::<serde_json::Value>(&inspect.stdout).unwrap()["revocation_ids"][0].clone();
    t(h, &["run", "--token", &token, &echo(), "args"]).expect_code(0);
    let ev = t(h, &["events", "--json", "--kind", "run.started"]);
    let started: serde_json::Value = serde_json::from_str(ev.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(started["payload"]["token"], id);
}

#[test]
fn not_before_expires_and_depth() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    t(h, &["key", "init"]).expect_code(0);
    let future = mint(h, &["--not-before", "2999-01-01T00:00:00Z"]);
    let r = t(h, &["run", "--token", &future, &echo(), "args"]);
    r.expect_code(78);
    assert!(r.stderr.contains("not valid yet"), "{}", r.stderr);
    let past = mint(h, &["--expires", "2001-01-01T00:00:00Z"]);
    t(h, &["run", "--token", &past, &echo(), "args"]).expect_code(78);

    let shallow = mint(h, &["--max-depth", "1", "--grant", "env:A"]);
    let once = t(h, &["token", "attenuate", &shallow, "--fuel", "100000000"]).stdout.trim().to_string();
    t(h, &["run", "--token", &once, "--fuel", "1000000", &echo(), "args"]).expect_code(0);
    let twice = t(h, &["token", "attenuate", &once, "--fuel", "100000000"]).stdout.trim().to_string();
    let r = t(h, &["run", "--token", &twice, "--fuel", "1000000", &echo(), "args"]);
    r.expect_code(78);
    assert!(r.stderr.contains("more attenuation blocks than it allows"), "{}", r.stderr);
}

/// `--token -` reads the token from stdin once, even when the run takes its limits from the token.
#[test]
fn token_from_stdin() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    t(h, &["key", "init"]).expect_code(0);
    let token = mint(h, &["--grant", "env:A"]);
    let env = [("TOKA_HOME", h.to_str().unwrap())];
    let r = toka_with(&["run", "--token", "-", "--env", "A=1", &echo(), "args"], Some(token.as_bytes()), &env);
    r.expect_code(0);
    assert_eq!(r.stdout, "args: args\nenv: A=1\n");
}

/// Minutes since midnight and the weekday (Mon = 0) of the current UTC time, for windows built around now.
fn utc_now() -> (u64, u64) {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    // 1970-01-01 was a Thursday (Mon = 0, so Thursday = 3).
    ((secs % 86_400) / 60, (secs / 86_400 + 3) % 7)
}

fn hhmm(minutes: u64) -> String {
    format!("{:02}:{:02}", (minutes / 60) % 24, minutes % 60)
}

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// A window from `start` to `end` minutes after today's UTC midnight (`end` may pass midnight; `start` too, and then
/// the window is tomorrow's).
fn utc_window(day: u64, start: u64, end: u64) -> String {
    format!("{} {}-{} UTC", DAYS[((day + start / 1440) % 7) as usize], hhmm(start % 1440), hhmm(end % 1440))
}

/// A window is evaluated by `run` at the host's time: open now runs, closed now is refused with its own message,
/// and a window on another day is closed whatever the hour.
#[test]
fn windows_open_and_closed_now() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    t(h, &["key", "init"]).expect_code(0);
    let (minute, day) = utc_now();
    // From 5 minutes ago to 15 minutes from now (shifted by a day so that it never starts before today).
    let open = utc_window((day + 6) % 7, minute + 1440 - 5, minute + 1440 + 15);
    let token = mint(h, &["--window", &open]);
    let r = t(h, &["run", "--token", &token, &echo(), "args"]);
    r.expect_code(0);

    let later = utc_window(day, minute + 120, minute + 180);
    let other_day = format!("{} 00:00-24:00 UTC", DAYS[((day + 3) % 7) as usize]);
    for closed in [later, other_day.clone()] {
        let token = mint(h, &["--window", &closed]);
        let r = t(h, &["run", "--token", &token, &echo(), "args"]);
        r.expect_code(78);
        assert!(
            r.stderr.starts_with("toka-host: token refused: token is used outside its time window"),
            "{}",
            r.stderr
        );
        // The window in words; the failing Datalog check only with --verbose.
        assert!(r.stderr.contains(&format!("usable only during {closed}")), "the window is named: {}", r.stderr);
        assert!(!r.stderr.contains("window_open("), "{}", r.stderr);
        let r = t(h, &["--verbose", "run", "--token", &token, &echo(), "args"]);
        r.expect_code(78);
        assert!(r.stderr.contains("window_open("), "the failing check is named: {}", r.stderr);
    }
    // An attenuation block narrows with a window of its own; the parent stays usable.
    let parent = mint(h, &[]);
    let narrowed = t(h, &["token", "attenuate", &parent, "--window", &other_day]);
    narrowed.expect_code(0);
    t(h, &["run", "--token", narrowed.stdout.trim(), &echo(), "args"]).expect_code(78);
    t(h, &["run", "--token", &parent, &echo(), "args"]).expect_code(0);
    let r = t(h, &["token", "mint", "--agent", "x", "--window", "Mon-Fri 09:00-17:00 Mars/Olympus"]);
    r.expect_code(2);
    assert!(r.stderr.contains("unknown time zone"), "{}", r.stderr);
}

/// Windows follow the zone's wall clock across a daylight-saving change: the same UTC time is outside
/// `09:00-17:00 America/New_York` on the Friday before the change (08:30 EST) and inside on the Monday after it
/// (09:30 EDT). Checked with `token inspect --at`, which evaluates the token's own checks at a given instant.
#[test]
fn windows_across_a_daylight_saving_change() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    t(h, &["key", "init"]).expect_code(0);
    let token = mint(
        h,
        &[
            "--window",
            "Mon-Fri 09:00-17:00 America/New_York",
            "--not-before",
            "2026-01-01T00:00:00Z",
            "--ttl",
            "3650days",
        ],
    );
    let usable = |at: &str| {
        let r = t(h, &["token", "inspect", "--json", "--at", at, &token]);
        r.expect_code(0);
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        v["verifies"].as_str().unwrap().to_string()
    };
    assert!(usable("2026-03-06T13:30:00Z").contains("outside its time window"), "08:30 EST, before the window");
    assert_eq!(usable("2026-03-09T13:30:00Z"), "ok", "09:30 EDT, inside, after the spring change");
    assert_eq!(usable("2026-03-06T21:59:00Z"), "ok", "16:59 EST");
    assert!(usable("2026-03-09T21:00:00Z").contains("outside"), "17:00 EDT, the end is excluded");
    assert!(usable("2026-03-07T15:00:00Z").contains("outside"), "a Saturday");
    // The autumn change: inside at 13:30 UTC on the Friday (09:30 EDT), outside on the Monday (08:30 EST).
    assert_eq!(usable("2026-10-30T13:30:00Z"), "ok");
    assert!(usable("2026-11-02T13:30:00Z").contains("outside"));
    let inspect = t(h, &["token", "inspect", "--json", &token]);
    let v: serde_json::Value = serde_json::from_str(&inspect.stdout).unwrap();
    assert_eq!(v["windows"][0], "Mon-Fri 09:00-17:00 America/New_York");
    assert_eq!(v["agent"], "echo-cmd");
    assert_eq!(v["not_before"], "2026-01-01T00:00:00Z");
}

/// The host tolerates 30 s of clock skew on expiry and not-before (README: Tokens), and no more.
#[test]
fn clock_skew_tolerance() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    t(h, &["key", "init"]).expect_code(0);
    let at = |offset: i64| {
        let now = std::time::SystemTime::now();
        let t = if offset >= 0 {
            now + std::time::Duration::from_secs(offset as u64)
        } else {
            now - std::time::Duration::from_secs(offset.unsigned_abs())
        };
        humantime::format_rfc3339_seconds(t).to_string()
    };
    // Probes 5 s inside and 5 s outside the 30 s tolerance, so any other tolerance (20 s, 60 s, none) fails one of
    // them; each token is used within a second or two of its minting, well inside the 5 s margin.
    // Minted by a clock 25 s ahead of ours: usable at once. 35 s ahead: not yet.
    t(h, &["run", "--token", &mint(h, &["--not-before", &at(25)]), &echo(), "args"]).expect_code(0);
    let r = t(h, &["run", "--token", &mint(h, &["--not-before", &at(35)]), &echo(), "args"]);
    r.expect_code(78);
    assert!(r.stderr.starts_with("toka-host: token refused: token has expired or is not valid yet"), "{}", r.stderr);
    // Expired 25 s ago by our clock: still within the tolerance. 35 s ago: refused.
    t(h, &["run", "--token", &mint(h, &["--expires", &at(-25)]), &echo(), "args"]).expect_code(0);
    let r = t(h, &["run", "--token", &mint(h, &["--expires", &at(-35)]), &echo(), "args"]);
    r.expect_code(78);
    assert!(r.stderr.starts_with("toka-host: token refused: token has expired or is not valid yet"), "{}", r.stderr);
}

/// `--rate` is a token bucket per agent shared by runs and boundary host calls, across processes: a limited run is
/// refused with its own exit code, a limited host call is an error the guest sees (here the agent turns it into an
/// agent error), and both are events.
#[test]
fn rate_limits_runs_and_host_calls() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    t(h, &["key", "init"]).expect_code(0);
    let r = t(h, &["token", "mint", "--agent", "notes", "--rate", "4/h"]);
    r.expect_code(0);
    let token = r.stdout.trim().to_string();
    let notes = agent("notes");
    let notes = notes.to_str().unwrap();
    // The run takes one, two emits take two more, the fourth action is the third emit... the fifth is refused.
    let r = t(h, &["run", "--json", "--token", &token, notes, "--input", r#"{"op":"emit","count":4}"#]);
    r.expect_code(65);
    let report = r.report();
    assert!(report["error"].as_str().unwrap().contains("rate limit"), "{report}");
    assert_eq!(report["stdout"], "ack 2\nack 3\nack 4\n", "three emits were acknowledged before the limit");
    // The bucket is empty: the next run (a new process) is refused before the guest starts.
    let r = t(h, &["run", "--token", &token, notes, "--input", r#"{"op":"emit","count":1}"#]);
    r.expect_code(81);
    assert!(r.stderr.starts_with("toka-host: rate limit: agent notes is allowed 4/h"), "{}", r.stderr);
    let rejected = t(h, &["events", "--json", "--kind", "op.rejected"]);
    let reasons: Vec<String> = rejected
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["payload"]["reason"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].contains("events.emit refused") && reasons[1].contains("run refused"), "{reasons:?}");
    // Another agent, or the same agent under a token without a rate, is not limited.
    t(h, &["run", notes, "--input", r#"{"op":"emit","count":1}"#]).expect_code(0);
    let inspect = t(h, &["token", "inspect", "--json", &token]);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&inspect.stdout).unwrap()["rate"], "4/h");
    // Attenuation can only make the rate stricter.
    let looser = t(h, &["token", "attenuate", &token, "--rate", "100/s"]).stdout.trim().to_string();
    let inspect = t(h, &["token", "inspect", "--json", &looser]);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&inspect.stdout).unwrap()["rate"], "4/h");
    let r = t(h, &["token", "mint", "--agent", "notes", "--rate", "0/s"]);
    r.expect_code(2);
}

/// `token inspect` shows what the token states, in text and JSON.
#[test]
fn inspect_shows_everything_the_token_states() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    t(h, &["key", "init"]).expect_code(0);
    let token = mint(
        h,
        &[
            "--grant",
            "env:A",
            "--grant",
            "tool:file-reader",
            "--fuel",
            "1000",
            "--max-depth",
            "3",
            "--rate",
            "10/min",
            "--window",
            "Sat,Sun 10:00-12:00 Europe/Paris",
        ],
    );
    let narrowed = t(h, &["token", "attenuate", &token, "--only", "env:A", "--ttl", "1h"]).stdout.trim().to_string();
    let r = t(h, &["token", "inspect", &narrowed]);
    r.expect_code(0);
    for expected in [
        "agent:        echo-cmd",
        "grants:       ",
        "env:A",
        "tool:file-reader",
        "limits:       fuel 1000 memory 536870912 timeout 30000 ms",
        "max depth:    3",
        "windows:      Sat-Sun 10:00-12:00 Europe/Paris",
        "rate:         10/min",
        "root key id:  1",
        "block 1:",
        "check if request(\"none\", \"\", \"\") or request(\"env\", \"A\", \"\")",
    ] {
        assert!(r.stdout.contains(expected), "missing {expected:?} in\n{}", r.stdout);
    }
    let v: serde_json::Value = serde_json::from_str(&t(h, &["token", "inspect", "--json", &narrowed]).stdout).unwrap();
    assert_eq!(v["revocation_ids"].as_array().unwrap().len(), 2);
    let expires = humantime::parse_rfc3339(v["expires"].as_str().unwrap()).unwrap();
    let in_an_hour = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    assert!(expires <= in_an_hour + std::time::Duration::from_secs(5), "the attenuation's 1 h beats the 24 h ttl");
    assert!(v["not_before"].is_null());
}
