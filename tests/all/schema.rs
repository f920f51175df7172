//! A database written by an earlier schema version stays readable, verifiable and extendable.

use toka_tests::{agent, root, toka_with};

#[test]
fn schema_v1_database_reads_verifies_and_extends() {
    let home = tempfile::tempdir().unwrap();
    std::fs::copy(root().join("tests/data/toka-schema-v1.redb"), home.path().join("toka.redb")).unwrap();
    let env = [("TOKA_HOME", home.path().to_str().unwrap())];

    let v = toka_with(&["events", "verify"], None, &env);
    v.expect_code(0);
    assert!(v.stdout.starts_with("ok: 16 records"), "{}", v.stdout);
    let r = toka_with(&["events", "--json"], None, &env);
    let kinds: Vec<String> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds.len(), 16);
    assert_eq!(kinds.iter().filter(|k| *k == "observation").count(), 2);
    assert_eq!(kinds.last().map(String::as_str), Some("grant.refused"));
    let r = toka_with(&["state", "get", "--agent", "notes", "k"], None, &env);
    r.expect_code(0);
    assert_eq!(r.stdout, "from schema v1\n");

    // The kernel rebuilds its state from the old operation log and extends both logs.
    toka_with(&["run", "--state", "rw", "--input", r#"{"op":"count"}"#, agent("notes").to_str().unwrap()], None, &env)
        .expect_code(0);
    let v = toka_with(&["events", "verify"], None, &env);
    v.expect_code(0);
    assert!(v.stdout.starts_with("ok: 20 records"), "{}", v.stdout);
}
