//! The dirstat agent walks a granted directory and reports counts, sizes and the largest files.

use toka_tests::{agent, toka};

#[test]
fn summarizes_a_granted_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::create_dir_all(d.join("a/b")).unwrap();
    std::fs::write(d.join("small.txt"), vec![b'x'; 10]).unwrap();
    std::fs::write(d.join("a/mid.bin"), vec![0u8; 300]).unwrap();
    std::fs::write(d.join("a/b/big.bin"), vec![1u8; 5000]).unwrap();
    std::fs::write(d.join("a/b/also-300.bin"), vec![2u8; 300]).unwrap();
    let grant = format!("{}::/data:ro", d.display());
    let r =
        toka(&["run", "--dir", &grant, "--input", r#"{"path":"/data","top":3}"#, agent("dirstat").to_str().unwrap()]);
    r.expect_code(0);
    let out: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(out["files"], 4);
    assert_eq!(out["dirs"], 2);
    assert_eq!(out["bytes"], 5610);
    let largest: Vec<(String, u64)> = out["largest"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["path"].as_str().unwrap().to_string(), e["bytes"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        largest,
        vec![
            ("/data/a/b/big.bin".to_string(), 5000),
            ("/data/a/b/also-300.bin".to_string(), 300),
            ("/data/a/mid.bin".to_string(), 300)
        ]
    );
}

#[test]
fn without_the_grant_it_fails_cleanly() {
    let r = toka(&["run", "--json", "--input", r#"{"path":"/data"}"#, agent("dirstat").to_str().unwrap()]);
    r.expect_code(65);
    let rep = r.report();
    assert_eq!(rep["agent_error"]["kind"], "failed");
    assert!(rep["agent_error"]["message"].as_str().unwrap().contains("/data"));
}
