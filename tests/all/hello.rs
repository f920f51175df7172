//! The hello agent behaves the same in Rust, Python, JavaScript and C: it greets the name in its input and logs
//! through the host's `log` interface.

use toka_tests::{agent, toka};

const LANGS: [&str; 4] = ["hello-rust", "hello-python", "hello-js", "hello-c"];

#[test]
fn greets_in_every_language() {
    for name in LANGS {
        let r = toka(&["run", "--input", r#"{"name":"Ada"}"#, agent(name).to_str().unwrap()]);
        r.expect_code(0);
        assert_eq!(r.stdout, "{\"greeting\":\"Hello, Ada!\"}\n", "{name}");
        assert!(r.stderr.contains("[") && r.stderr.contains("info: greeting Ada"), "{name} log: {}", r.stderr);
    }
}

#[test]
fn report_shows_result_log_and_meters() {
    for name in LANGS {
        let r = toka(&[
            "run",
            "--json",
            "--task-id",
            "t-1",
            "--input",
            r#"{"name":"Grace"}"#,
            agent(name).to_str().unwrap(),
        ]);
        r.expect_code(0);
        let rep = r.report();
        assert_eq!(rep["outcome"], "success", "{name}");
        assert_eq!(rep["result"], r#"{"greeting":"Hello, Grace!"}"#, "{name}");
        assert_eq!(rep["task_id"], "t-1");
        assert_eq!(rep["logs"][0]["level"], "info", "{name}: {rep}");
        assert_eq!(rep["logs"][0]["message"], "greeting Grace", "{name}");
        assert!(rep["fuel_consumed"].as_u64().unwrap() > 0, "{name}");
        assert!(rep["peak_memory_bytes"].as_u64().unwrap() >= 65536, "{name}");
        assert_eq!(rep["component"]["world"], "agent");
    }
}

#[test]
fn default_name_is_world() {
    for name in LANGS {
        let r = toka(&["run", agent(name).to_str().unwrap()]);
        r.expect_code(0);
        assert_eq!(r.stdout, "{\"greeting\":\"Hello, world!\"}\n", "{name}");
    }
}

#[test]
fn non_object_input_is_the_agents_invalid_input_error() {
    for name in LANGS {
        let r = toka(&["run", "--json", "--input", "[1,2]", agent(name).to_str().unwrap()]);
        r.expect_code(65);
        let rep = r.report();
        assert_eq!(rep["outcome"], "agent-error", "{name}");
        assert_eq!(rep["agent_error"]["kind"], "invalid-input", "{name}: {rep}");
    }
}
