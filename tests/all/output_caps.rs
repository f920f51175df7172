//! `--max-output SIZE` caps each of stdout, stderr and the agent's log (README: Limits). Each cap is probed at the
//! exact byte: the limit itself is accepted, one byte less is not. (stdout: `hostile::stdout_flood_*`.)

use toka_tests::{Ran, agent, toka};

/// `echo-cmd cat PATH` on a missing file writes one line to stderr naming PATH, then exits with status 1.
fn cat_missing(extra: &[&str]) -> Ran {
    let path = format!("/missing/{}", "x".repeat(100));
    let echo = agent("echo-cmd");
    let mut args = vec!["run"];
    args.extend_from_slice(extra);
    args.extend([echo.to_str().unwrap(), "cat", &path]);
    toka(&args)
}

/// Regression: a guest writing exactly the cap to stderr and flushing was stopped as if it had written more (the
/// flush asked for room and got a trap).
#[test]
fn stderr_cap_accepts_exactly_the_limit_and_stops_one_byte_over() {
    let line = format!("echo-cmd: cat /missing/{}: Capabilities insufficient (os error 76)\n", "x".repeat(100));
    let n = line.len();
    let r = cat_missing(&["--json"]);
    r.expect_code(1);
    let rep = r.report();
    assert_eq!((rep["outcome"].as_str(), rep["stderr"].as_str()), (Some("exited"), Some(line.as_str())));

    let exact = n.to_string();
    let r = cat_missing(&["--json", "--max-output", &exact]);
    r.expect_code(1);
    let rep = r.report();
    assert_eq!(rep["outcome"], "exited", "{rep}");
    assert_eq!(rep["stderr_bytes"], n);
    assert_eq!(rep["stderr"], line);

    let under = (n - 1).to_string();
    let r = cat_missing(&["--json", "--max-output", &under]);
    r.expect_code(71);
    let rep = r.report();
    assert_eq!(rep["outcome"], "output-limit");
    assert_eq!(rep["error"], format!("output limit: stderr passed {under} bytes"));
    assert_eq!(rep["stderr_bytes"], n - 1);
    assert_eq!(rep["stderr"], line[..n - 1]);

    // Streaming: what fitted, then the host's one line.
    let r = cat_missing(&["--max-output", &under]);
    r.expect_code(71);
    assert_eq!(r.stderr, format!("{}toka-host: output limit: stderr passed {under} bytes\n", &line[..n - 1]));
    let r = cat_missing(&["--max-output", &exact]);
    r.expect_code(1);
    assert_eq!(r.stderr, line);
}

/// The log shares the cap: each record costs its message plus 16 bytes, and a record that does not fit is dropped
/// and counted (logging never fails the run). A 984-byte message exactly fills a 1000-byte cap; one byte more and
/// it is dropped.
#[test]
fn log_cap_keeps_records_up_to_exactly_the_limit_then_drops_and_counts() {
    let hostile = agent("hostile");
    let log = |messages: &[String], extra: &[&str]| {
        let calls: Vec<serde_json::Value> =
            messages.iter().map(|m| serde_json::json!({ "log": { "message": m } })).collect();
        let input = serde_json::json!({ "attack": "calls", "calls": calls }).to_string();
        let mut args = vec!["run", "--max-output", "1000", "--input", &input];
        args.extend_from_slice(extra);
        args.push(hostile.to_str().unwrap());
        toka(&args)
    };
    let fits = "f".repeat(984);
    let r = log(&[fits.clone(), "x".into()], &["--json"]);
    r.expect_code(0);
    let rep = r.report();
    assert_eq!(rep["logs"], serde_json::json!([{ "level": "warn", "message": fits }]));
    assert_eq!(rep["logs_dropped"], 1);
    assert_eq!(rep["result"], r#"{"answers":["ok","ok"]}"#);

    let r = log(&["g".repeat(985), "y".into()], &["--json"]);
    r.expect_code(0);
    let rep = r.report();
    assert_eq!(rep["logs"], serde_json::json!([{ "level": "warn", "message": "y" }]), "the small one still fits");
    assert_eq!(rep["logs_dropped"], 1);

    // Echoed to stderr: the kept record only.
    let r = log(&[fits.clone(), "x".into()], &[]);
    r.expect_code(0);
    assert_eq!(r.stderr, format!("[hostile] warn: {fits}\n"));
}
