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
    let r = t(h, &["run", "--json", "--token", &token, &echo(), "args"]);
    r.expect_code(0);
    assert!(r.report()["fuel_consumed"].as_u64().unwrap() < 50_000_000);
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
    t(h, &["token", "revoke", &parent]).expect_code(0);
    for token in [&parent, &child] {
        let r = t(h, &["run", "--token", token, "--env", "A=1", &echo(), "args"]);
        r.expect_code(78);
        assert!(r.stderr.starts_with("toka-host: token refused: token is revoked"), "{}", r.stderr);
    }
    let ev = t(h, &["events", "--json", "--kind", "run.failed"]);
    assert_eq!(ev.stdout.lines().count(), 2, "each refused attempt is an event");
    assert!(ev.stdout.contains("token-refused"));
    assert_eq!(t(h, &["events", "--json", "--kind", "token.revoked"]).stdout.lines().count(), 1);
    let inspect = t(h, &["token", "inspect", &child]);
    assert!(inspect.stdout.contains("verifies now: token is revoked"), "{}", inspect.stdout);
}

#[test]
fn forged_truncated_and_foreign_tokens_are_refused() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    t(h, &["key", "init"]).expect_code(0);
    let token = mint(h, &[]);
    let mut flipped = token.clone().into_bytes();
    let i = flipped.len() / 2;
    flipped[i] = if flipped[i] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    for bad in [flipped.as_str(), &token[..token.len() / 2], "not a token"] {
        let r = t(h, &["run", "--token", bad, &echo(), "args"]);
        r.expect_code(78);
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    }
    let other = tempfile::tempdir().unwrap();
    t(other.path(), &["key", "init"]).expect_code(0);
    let foreign = mint(other.path(), &[]);
    let r = t(h, &["run", "--token", &foreign, &echo(), "args"]);
    r.expect_code(78);
    assert!(r.stderr.contains("signature"), "{}", r.stderr);
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
    let token = mint(h, &["--ttl", "1s"]);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let r = t(h, &["run", "--token", &token, &echo(), "args"]);
    r.expect_code(78);
    assert!(r.stderr.starts_with("toka-host: token refused: token has expired"), "{}", r.stderr);
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
