//! The model gateway end to end: the real `toka-host` binary, the example agents built from `agents/tool-chat`
//! (Rust), `agents/tool-chat-python` and `agents/tool-chat-js`, real tools, a real redb file, and a local provider on
//! loopback that speaks OpenAI's and Anthropic's wire formats (`toka_tests::llm_mock`). Every refusal and failure is
//! checked to be an error value the agent sees and an event, next to the same setup succeeding.

use std::path::{Path, PathBuf};
use toka_tests::llm_mock::Mock;
use toka_tests::{Ran, agent, root, toka_with};

/// The environment variable the test homes read their providers' key from.
const KEY_ENV: &str = "TOKA_TEST_LLM_KEY";

/// Failing models every provider gets (the mock's model names, see `llm_mock`).
const FAILURES: [&str; 8] =
    ["fail-429-once", "fail-429", "fail-500-once", "fail-500", "slow", "malformed", "cut", "leak"];

/// A home with `llm.toml` pointing at a mock, the tools `echo` and `json-query` installed, and a key of its own.
struct LlmHome {
    dir: tempfile::TempDir,
    key: String,
    mock: Mock,
}

/// A key no other text in a test run can contain by chance.
fn fresh_key() -> String {
    use std::hash::BuildHasher;
    let h = std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now());
    format!("sk-toka-{h:016x}{:08x}", std::process::id())
}

fn tool_path(name: &str) -> PathBuf {
    root().join("target").join("tools").join(format!("{name}.wasm"))
}

impl LlmHome {
    fn new() -> LlmHome {
        Self::with_timeout("1s")
    }

    /// Providers `oa` (OpenAI format) and `an` (Anthropic format); models `oa-chat`/`an-chat` (the scripted model)
    /// and `oa-FAILURE`/`an-FAILURE` for each failure of [`FAILURES`]; `oa-nokey` on a provider whose key is unset.
    fn with_timeout(timeout: &str) -> LlmHome {
        let key = fresh_key();
        let mock = Mock::start(&key);
        let dir = tempfile::tempdir().unwrap();
        let url = mock.url();
        let mut toml = format!(
            "[providers.oa]\nkind = \"openai\"\nbase_url = \"{url}/v1\"\nkey_env = \"{KEY_ENV}\"\ntimeout = \"{timeout}\"\n\
             max_retries = 2\nbackoff = \"50ms\"\n\n\
             [providers.an]\nkind = \"anthropic\"\nbase_url = \"{url}\"\nkey_env = \"{KEY_ENV}\"\ntimeout = \"{timeout}\"\n\
             max_retries = 2\nbackoff = \"50ms\"\n\n\
             [providers.nokey]\nkind = \"openai\"\nbase_url = \"{url}/v1\"\nkey_env = \"TOKA_TEST_SURELY_UNSET\"\n\n\
             [models.oa-nokey]\nprovider = \"nokey\"\nmodel = \"mock-model\"\n"
        );
        for p in ["oa", "an"] {
            toml.push_str(&format!("[models.{p}-chat]\nprovider = \"{p}\"\nmodel = \"mock-model\"\n"));
            for f in FAILURES {
                toml.push_str(&format!("[models.{p}-{f}]\nprovider = \"{p}\"\nmodel = \"{f}\"\n"));
            }
        }
        std::fs::write(dir.path().join("llm.toml"), toml).unwrap();
        let home = LlmHome { dir, key, mock };
        for tool in ["echo", "json-query"] {
            home.toka(&["tool", "add", tool_path(tool).to_str().unwrap()]).expect_code(0);
        }
        home
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn toka(&self, args: &[&str]) -> Ran {
        toka_with(args, None, &[("TOKA_HOME", self.path().to_str().unwrap()), (KEY_ENV, &self.key)])
    }

    /// Runs `agent` (`tool-chat`, `tool-chat-python` or `tool-chat-js`) with `input` and extra flags, as JSON.
    fn chat(&self, agent_name: &str, input: &serde_json::Value, flags: &[&str]) -> Ran {
        let input = input.to_string();
        let component = agent(agent_name);
        let mut args = vec!["run", "--json", "--input", &input];
        args.extend_from_slice(flags);
        args.push(component.to_str().unwrap());
        self.toka(&args)
    }

    /// The events of `kind` (and its sub-kinds), in order.
    fn events(&self, kind: &str) -> Vec<serde_json::Value> {
        let r = self.toka(&["events", "--json", "--kind", kind]);
        r.expect_code(0);
        r.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// The events of a run.
    fn run_events(&self, run_id: &str) -> Vec<serde_json::Value> {
        let r = self.toka(&["events", "--json", "--run", run_id]);
        r.expect_code(0);
        r.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

/// The agent's result (a JSON document) from a `--json` run report.
fn result(r: &Ran) -> serde_json::Value {
    let report = r.report();
    serde_json::from_str(report["result"].as_str().unwrap_or_else(|| panic!("no result: {report}"))).unwrap()
}

/// The agent's error message from a `--json` run report.
fn agent_error(r: &Ran) -> String {
    r.report()["error"].as_str().unwrap_or_default().to_string()
}

fn kinds(events: &[serde_json::Value]) -> Vec<String> {
    events.iter().map(|e| e["kind"].as_str().unwrap().to_string()).collect()
}

const QUESTION: &str =
    "Please look this up.\ncall echo {\"n\":1}\ncall json-query {\"document\":{\"a\":[1,2]},\"path\":\"$.a[*]\"}";
const ANSWER: &str = r#"Done. echo returned {"n":1}; json-query returned {"matches":[1,2]}"#;

/// The issue's "done when": the example agents (Rust, Python, and JavaScript too) complete a multi-turn, tool-calling conversation through the gateway
/// in both wire formats, whole and streamed; every model call and tool call is recorded; the provider received the
/// key in its own header and requests in its own format.
#[test]
fn both_agents_hold_a_tool_calling_conversation_in_both_wire_formats() {
    let home = LlmHome::new();
    for agent_name in ["tool-chat", "tool-chat-python", "tool-chat-js"] {
        for model in ["oa-chat", "an-chat"] {
            for stream in [false, true] {
                let input = serde_json::json!({ "model": model, "question": QUESTION, "stream": stream });
                let r = home.chat(
                    agent_name,
                    &input,
                    &["--allow-llm", model, "--allow-tool", "echo", "--allow-tool", "json-query"],
                );
                let what = format!("{agent_name} {model} stream={stream}");
                r.expect_code(0);
                let out = result(&r);
                assert_eq!(out["answer"], ANSWER, "{what}: {out}");
                assert_eq!(out["turns"], 3, "{what}: two tool calls, then the answer");
                assert_eq!(
                    out["tool_calls"],
                    serde_json::json!([{"name": "echo", "ok": true}, {"name": "json-query", "ok": true}])
                );
                assert!(out["prompt_tokens"].as_u64().unwrap() > 0 && out["completion_tokens"].as_u64().unwrap() > 0);
                assert_eq!(
                    out["deltas"].as_u64().unwrap() > 0,
                    stream,
                    "{what}: streamed pieces arrive only when streaming"
                );
                let events = home.run_events(r.report()["run_id"].as_str().unwrap());
                let k = kinds(&events);
                let count = |kind: &str| k.iter().filter(|x| *x == kind).count();
                assert_eq!(
                    (count("llm.called"), count("llm.completed"), count("llm.failed")),
                    (3, 3, 0),
                    "{what}: {k:?}"
                );
                assert_eq!(count("tool.completed"), 2, "{what}");
                let completed = events.iter().find(|e| e["kind"] == "llm.completed").unwrap();
                let p = &completed["payload"];
                assert_eq!(p["model"], model);
                assert_eq!(p["provider"], &model[..2]);
                assert_eq!(
                    (p["outcome"].as_str(), p["retries"].as_u64(), p["stream"].as_bool()),
                    (Some("success"), Some(0), Some(stream))
                );
                assert!(p["tokens_in"].as_u64().unwrap() > 0 && p["tokens_out"].as_u64().unwrap() > 0, "{p}");
                assert!(p["latency_ms"].as_f64().unwrap() > 0.0);
                assert!(
                    p.get("completion").is_none() && p.get("prompt").is_none(),
                    "no prompt recorded without --record-prompts"
                );
            }
        }
    }
    // What the provider saw: its own wire format and header, the key, and the tool results on the later turns.
    let seen = home.mock.requests_for("mock-model");
    assert_eq!(seen.len(), 3 * 2 * 2 * 3, "three agents, two formats, whole and streamed, three turns");
    for s in &seen {
        let openai = s.path == "/v1/chat/completions";
        if openai {
            assert_eq!(s.headers["authorization"], format!("Bearer {}", home.key));
            assert!(!s.headers.contains_key("x-api-key"));
            assert_eq!(s.body["tools"][0]["type"], "function");
            assert_eq!(s.body["messages"][0]["role"], "system");
        } else {
            assert_eq!(s.headers["x-api-key"], home.key);
            assert_eq!(s.headers["anthropic-version"], "2023-06-01");
            assert!(!s.headers.contains_key("authorization"));
            assert!(s.body["tools"][0]["input_schema"].is_object());
            assert!(s.body["system"].as_str().unwrap().contains("agent with tools"));
        }
        assert!(s.body["max_tokens"].as_u64().unwrap() >= 1);
    }
    let third_openai = seen.iter().filter(|s| s.path == "/v1/chat/completions").nth(2).unwrap();
    let last = third_openai.body["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!((last["role"].as_str(), last["tool_call_id"].as_str()), (Some("tool"), Some("call_mock1")));
    let third_anthropic = seen.iter().filter(|s| s.path == "/v1/messages").nth(2).unwrap();
    let last = third_anthropic.body["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["content"][0]["type"], "tool_result");
    assert_eq!(last["content"][0]["content"], r#"{"matches":[1,2]}"#);
}

/// A model the run's token does not grant is refused at the call, as an error value and an event, and the provider
/// is never asked; a pattern grant covers the models it prefixes and no other; a model nobody configured is an
/// invalid request.
#[test]
fn models_the_token_does_not_grant_are_refused_as_values_and_events() {
    let home = LlmHome::new();
    let ask = |model: &str, grant: &str| {
        let input = serde_json::json!({ "model": model, "question": "hello" });
        home.chat("tool-chat", &input, &["--allow-llm", grant])
    };
    // Positive controls: the granted model, and a model under a granted pattern.
    let ok = ask("oa-chat", "oa-chat");
    ok.expect_code(0);
    assert_eq!(result(&ok)["answer"], "You said: hello");
    ask("an-chat", "an-*").expect_code(0);
    let before = home.mock.requests().len();
    for (model, grant) in [("an-chat", "oa-chat"), ("an-chat", "oa-*"), ("oa-chat", "oa-chat-*")] {
        let r = ask(model, grant);
        r.expect_code(65);
        let e = agent_error(&r);
        assert!(
            e.contains("model call denied: grant refused: llm:") && e.contains(model),
            "{model} under {grant}: {e}"
        );
        let failed = home.events("llm.failed");
        let last = &failed.last().unwrap()["payload"];
        assert_eq!((last["outcome"].as_str(), last["model"].as_str()), (Some("denied"), Some(model)));
    }
    assert_eq!(home.mock.requests().len(), before, "a refused call never reaches the provider");
    // Granted by a pattern but configured nowhere.
    let r = ask("oa-unknown", "oa-*");
    r.expect_code(65);
    assert!(agent_error(&r).contains("invalid request: model oa-unknown is not configured"), "{}", agent_error(&r));
    // A token attenuated to one model keeps its pattern from covering the others, at the call.
    home.toka(&["key", "init"]);
    let wide = home.toka(&["token", "mint", "--agent", "tool-chat", "--grant", "llm:oa-*", "--ttl", "10m"]);
    let wide = wide.stdout.trim().to_string();
    let narrow = home.toka(&["token", "attenuate", &wide, "--only", "llm:oa-chat"]).stdout.trim().to_string();
    let with = |token: &str, model: &str| {
        let input = serde_json::json!({ "model": model, "question": "hi" });
        home.chat("tool-chat", &input, &["--token", token])
    };
    with(&wide, "oa-fail-500-once").expect_code(0);
    with(&narrow, "oa-chat").expect_code(0);
    let r = with(&narrow, "oa-fail-429-once");
    r.expect_code(65);
    assert!(agent_error(&r).contains("grant refused: llm:oa-fail-429-once"), "{}", agent_error(&r));
}

/// Every failure a provider can have is an error value the agent sees (never a trap) and an `llm.failed` event with
/// its outcome; 429 and 500 are retried (honouring Retry-After), a slow provider times out, garbage is refused, a
/// stream cut midway is never retried.
#[test]
fn provider_failures_are_error_values_and_events() {
    let home = LlmHome::new();
    for p in ["oa", "an"] {
        for stream in [false, true] {
            let path = if p == "oa" { "/v1/chat/completions" } else { "/v1/messages" };
            let sent = |failure: &str| {
                home.mock.requests().iter().filter(|s| s.path == path && s.body["model"] == failure).count()
            };
            let run = |failure: &str| {
                let model = format!("{p}-{failure}");
                let input = serde_json::json!({ "model": model, "question": "hi", "stream": stream });
                let started = std::time::Instant::now();
                let r = home.chat("tool-chat", &input, &["--allow-llm", &model]);
                let failed = home.events("llm").into_iter().rev().find(|e| e["kind"] != "llm.called").unwrap();
                (r, failed["payload"].clone(), started.elapsed(), sent(failure))
            };
            let what = format!("{p} stream={stream}");
            // 429 once, with Retry-After: 1: waited for, then answered.
            let before = sent("fail-429-once");
            let (r, ev, took, n) = run("fail-429-once");
            if before == 0 {
                r.expect_code(0);
                assert_eq!((ev["outcome"].as_str(), ev["retries"].as_u64()), (Some("success"), Some(1)), "{what}");
                assert!(took >= std::time::Duration::from_secs(1), "{what}: Retry-After: 1 honoured, took {took:?}");
                assert_eq!(n, 2);
            }
            // 429 always: the retries, then rate-limited.
            let before = sent("fail-429");
            let (r, ev, _, n) = run("fail-429");
            r.expect_code(65);
            assert!(
                agent_error(&r).contains("rate limited: the provider refused: HTTP 429"),
                "{what}: {}",
                agent_error(&r)
            );
            assert_eq!((ev["outcome"].as_str(), ev["retries"].as_u64()), (Some("rate-limited"), Some(2)), "{what}");
            assert_eq!(n - before, 3, "{what}: one try and two retries");
            // 500 once: retried; 500 always: a provider error after the retries.
            let before = sent("fail-500-once");
            let (r, ev, _, _) = run("fail-500-once");
            if before == 0 {
                r.expect_code(0);
                assert_eq!(ev["retries"], 1, "{what}");
            }
            let before = sent("fail-500");
            let (r, ev, _, n) = run("fail-500");
            r.expect_code(65);
            assert!(
                agent_error(&r).contains("provider: HTTP 500: Internal server error"),
                "{what}: {}",
                agent_error(&r)
            );
            assert_eq!((ev["outcome"].as_str(), n - before), (Some("provider-error"), 3), "{what}");
            // Slow: the provider's timeout (1 s), not retried.
            let before = sent("slow");
            let (r, ev, took, n) = run("slow");
            r.expect_code(65);
            assert!(
                agent_error(&r).contains("timeout: the provider did not answer within 1s"),
                "{what}: {}",
                agent_error(&r)
            );
            assert_eq!((ev["outcome"].as_str(), n - before), (Some("timeout"), 1), "{what}");
            assert!(took < std::time::Duration::from_secs(4), "{what}: {took:?}");
            // Malformed: refused, not retried.
            let before = sent("malformed");
            let (r, ev, _, n) = run("malformed");
            r.expect_code(65);
            assert!(
                agent_error(&r).contains("not JSON") || agent_error(&r).contains("not valid SSE"),
                "{what}: {}",
                agent_error(&r)
            );
            assert_eq!((ev["outcome"].as_str(), n - before), (Some("provider-error"), 1), "{what}");
            // Cut midway: a provider error, and never a second request after a partial answer.
            let before = sent("cut");
            let (r, ev, _, n) = run("cut");
            r.expect_code(65);
            let e = agent_error(&r);
            assert!(e.contains("broke off") || e.contains("ended before"), "{what}: {e}");
            assert_eq!((ev["outcome"].as_str(), n - before), (Some("provider-error"), 1), "{what}: not retried");
            assert_eq!(ev["retries"], 0);
        }
    }
    // The host never trapped: every run above ended as the agent's own error or success.
    let failed_runs = home.events("run.failed");
    assert!(failed_runs.iter().all(|e| e["payload"]["outcome"] == "agent-error"), "{failed_runs:?}");
}

/// The key is only ever in the request header to its own provider: not in the database, the logs, the host's
/// output, the guest-visible values or the recorded prompts, even when the provider echoes it back in an error.
#[test]
fn the_key_never_leaks() {
    let home = LlmHome::new();
    let mut outputs = Vec::new();
    let env = [("TOKA_HOME", home.path().to_str().unwrap()), (KEY_ENV, home.key.as_str()), ("RUST_LOG", "trace")];
    let run = |model: &str, stream: bool, extra: &[&str]| {
        let input = serde_json::json!({ "model": model, "question": QUESTION, "stream": stream }).to_string();
        let component = agent("tool-chat");
        let mut args = vec!["run", "--json", "--record-prompts", "--allow-tool", "echo", "--allow-tool", "json-query"];
        args.extend_from_slice(&["--allow-llm", model, "--input", &input]);
        args.extend_from_slice(extra);
        args.push(component.to_str().unwrap());
        toka_with(&args, None, &env)
    };
    for p in ["oa", "an"] {
        for stream in [false, true] {
            let ok = run(&format!("{p}-chat"), stream, &[]);
            ok.expect_code(0);
            let leak = run(&format!("{p}-leak"), stream, &[]);
            leak.expect_code(65);
            // The provider did echo the credential: it reached the agent scrubbed.
            assert!(agent_error(&leak).contains("[redacted]"), "{}", agent_error(&leak));
            outputs.push(ok);
            outputs.push(leak);
            outputs.push(run(&format!("{p}-fail-500"), stream, &[]));
        }
    }
    outputs.push(toka_with(&["llm", "models", "--json"], None, &env));
    outputs.push(toka_with(&["llm", "test", "--model", "oa-chat", "--record-prompts"], None, &env));
    outputs.push(toka_with(&["llm", "test", "--model", "an-leak", "--stream"], None, &env));
    outputs.push(toka_with(&["events", "--json"], None, &env));
    // Positive controls: the key was used (the provider got it) and prompts were recorded.
    assert!(home.mock.requests().iter().any(|s| s.headers.get("x-api-key") == Some(&home.key)));
    let prompts = home.events("llm.called");
    assert!(prompts.iter().any(|e| e["payload"]["prompt"].to_string().contains("Please look this up")), "recorded");
    let completions = home.events("llm.completed");
    assert!(completions.iter().any(|e| e["payload"]["completion"].to_string().contains("Done. echo returned")));
    for o in &outputs {
        assert!(!o.stdout.contains(&home.key), "stdout: {}", o.stdout);
        assert!(!o.stderr.contains(&home.key), "stderr: {}", o.stderr);
    }
    // The whole home, database included, byte for byte.
    for entry in walk(home.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(!contains(&bytes, home.key.as_bytes()), "the key is in {}", entry.display());
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The run's budget of model tokens (`--llm-tokens`, a token's `llm_tokens`) refuses the call that would pass it,
/// lowers `max_tokens` to what is left, and is reported once as `limit.reached`; the agent's budget per period (a
/// token's `llm_budget`) is kept by the kernel across runs; attenuation only lowers them.
#[test]
fn model_token_budgets_per_run_and_per_period() {
    let home = LlmHome::new();
    let flags = ["--allow-llm", "oa-chat", "--allow-tool", "echo", "--allow-tool", "json-query"];
    let input = serde_json::json!({ "model": "oa-chat", "question": QUESTION });
    // Control: enough tokens.
    home.chat("tool-chat", &input, &[&flags[..], &["--llm-tokens", "5000"]].concat()).expect_code(0);
    assert!(
        home.mock.requests().last().unwrap().body["max_tokens"].as_u64().unwrap() < 5000,
        "max_tokens lowered to the budget left"
    );
    // The first turn fits in 120 tokens, the conversation does not.
    let r = home.chat("tool-chat", &input, &[&flags[..], &["--llm-tokens", "120"]].concat());
    r.expect_code(65);
    let e = agent_error(&r);
    assert!(e.contains("over budget: run limit reached"), "{e}");
    let run = r.report()["run_id"].as_str().unwrap().to_string();
    let events = home.run_events(&run);
    let limit = events.iter().find(|e| e["kind"] == "limit.reached").expect("limit.reached");
    assert_eq!((limit["payload"]["limit"].as_str(), limit["payload"]["cap"].as_u64()), (Some("llm-tokens"), Some(120)));
    let failed = events.iter().find(|e| e["kind"] == "llm.failed").unwrap();
    assert_eq!(failed["payload"]["outcome"], "over-budget");

    // Per period, through tokens: runs until the agent's budget for the day is spent, then refused by the kernel.
    home.toka(&["key", "init"]);
    let mint = |budget: &[&str]| {
        let mut args = vec!["token", "mint", "--agent", "tool-chat", "--grant", "llm:oa-chat", "--ttl", "10m"];
        args.extend_from_slice(budget);
        home.toka(&args).stdout.trim().to_string()
    };
    let budgeted = mint(&["--llm-budget", "100/day"]);
    let hello = serde_json::json!({ "model": "oa-chat", "question": "hello" });
    let mut refused_after = None;
    for i in 0..8 {
        let r = home.chat("tool-chat", &hello, &["--token", &budgeted]);
        if r.code != 0 {
            r.expect_code(65);
            assert!(
                agent_error(&r).contains("over budget: llm budget: agent tool-chat has used"),
                "{}",
                agent_error(&r)
            );
            refused_after = Some(i);
            break;
        }
    }
    let refused_after = refused_after.expect("the day's budget runs out");
    assert!(refused_after >= 1, "the first runs fit");
    // Attenuated to less: refused at once (the kernel counts the agent's use today against the stricter budget).
    let parsed = home.toka(&["token", "attenuate", &mint(&[]), "--llm-budget", "10/day"]).stdout.trim().to_string();
    let r = home.chat("tool-chat", &hello, &["--token", &parsed]);
    r.expect_code(65);
    assert!(agent_error(&r).contains("of its 10/day model tokens"), "{}", agent_error(&r));
    // A token without a period budget is not limited by another token's.
    let free = mint(&[]);
    home.chat("tool-chat", &hello, &["--token", &free]).expect_code(0);
    // A block cannot raise the budget back.
    let raised = home.toka(&["token", "attenuate", &parsed, "--llm-budget", "1000000/day"]).stdout.trim().to_string();
    let r = home.chat("tool-chat", &hello, &["--token", &raised]);
    r.expect_code(65);
    let inspect = home.toka(&["token", "inspect", "--json", &raised]);
    let i: serde_json::Value = serde_json::from_str(&inspect.stdout).unwrap();
    assert_eq!(i["llm_budgets"], serde_json::json!(["10/day"]));
}

/// Model calls take from the agent's rate bucket like every boundary host call: the kernel refuses a call when the
/// bucket is empty.
#[test]
fn model_calls_take_from_the_agents_rate() {
    let home = LlmHome::new();
    home.toka(&["key", "init"]);
    let mint = |rate: &str| {
        let args = [
            "token",
            "mint",
            "--agent",
            "tool-chat",
            "--grant",
            "llm:oa-chat",
            "--grant",
            "tool:echo",
            "--rate",
            rate,
            "--ttl",
            "10m",
        ];
        home.toka(&args).stdout.trim().to_string()
    };
    let two_turns = serde_json::json!({ "model": "oa-chat", "question": "call echo {}", "max_turns": 2 });
    // Control: room for the run, two model calls and the (refused-by-grant) tool call.
    home.chat("tool-chat", &two_turns, &["--token", &mint("10/min")]).expect_code(0);
    // 2/min: the run's start and the first model call; the tool call and the second model call are refused.
    let r = home.chat("tool-chat", &two_turns, &["--token", &mint("2/min")]);
    r.expect_code(65);
    assert!(
        agent_error(&r).contains("rate limited: rate limit: agent tool-chat is allowed 2/min"),
        "{}",
        agent_error(&r)
    );
    let rejected = home.events("op.rejected");
    assert!(
        rejected.iter().any(|e| e["payload"]["reason"].as_str().unwrap().contains("call of model oa-chat refused"))
    );
    let failed = home.events("llm.failed");
    assert!(failed.is_empty(), "a call the kernel refuses was never started, so it has no ending: {failed:?}");
}

/// `llm models` lists what is configured (never a key) and what a token may use; `llm test` calls a model.
#[test]
fn llm_models_and_llm_test() {
    let home = LlmHome::new();
    let r = home.toka(&["llm", "models", "--json"]);
    r.expect_code(0);
    let models: Vec<serde_json::Value> = serde_json::from_str(&r.stdout).unwrap();
    let chat = models.iter().find(|m| m["model"] == "an-chat").unwrap();
    assert_eq!((chat["kind"].as_str(), chat["key"].as_str()), (Some("anthropic"), Some("set")));
    assert_eq!(chat["key_source"]["env"], KEY_ENV);
    let nokey = models.iter().find(|m| m["model"] == "oa-nokey").unwrap();
    assert_eq!(nokey["key"], "missing: environment variable TOKA_TEST_SURELY_UNSET is not set");
    home.toka(&["key", "init"]);
    let token = home.toka(&["token", "mint", "--agent", "x", "--grant", "llm:an-*"]).stdout.trim().to_string();
    let r = home.toka(&["llm", "models", "--token", &token]);
    r.expect_code(0);
    let line = |m: &str| r.stdout.lines().find(|l| l.starts_with(&format!("{m} "))).unwrap().to_string();
    assert!(line("an-chat").ends_with("allowed"), "{}", r.stdout);
    assert!(line("oa-chat").contains("refused: grant refused: llm:oa-chat"), "{}", r.stdout);

    let r = home.toka(&["llm", "test", "--model", "an-chat"]);
    r.expect_code(0);
    assert_eq!(r.stdout.trim(), "You said: Reply with the single word OK.");
    let r = home.toka(&["llm", "test", "--model", "oa-chat", "--stream", "--prompt", "streamed"]);
    r.expect_code(0);
    assert_eq!(r.stdout.trim(), "You said: streamed");
    let r = home.toka(&["llm", "test", "--model", "oa-fail-500"]);
    r.expect_code(79);
    assert!(r.stderr.contains("provider-error: HTTP 500"), "{}", r.stderr);
    let r = home.toka(&["llm", "test", "--model", "oa-nokey"]);
    r.expect_code(79);
    assert!(
        r.stderr.contains("provider nokey has no key: environment variable TOKA_TEST_SURELY_UNSET is not set"),
        "{}",
        r.stderr
    );
    let r = home.toka(&["llm", "test", "--model", "oa-chat", "--token", &token]);
    r.expect_code(72);
    let r = home.toka(&["llm", "test", "--model", "nope"]);
    r.expect_code(77);
    // Calls outside a run are recorded too, under the caller's token.
    let ends = home.events("llm.completed");
    assert!(ends.iter().any(|e| e["run_id"] == "" && e["payload"]["model"] == "an-chat"));
    // A broken llm.toml stops the host with the file and the reason.
    std::fs::write(home.path().join("llm.toml"), "[providers.p]\nkind = \"openai\"\nkeyenv = \"X\"\n").unwrap();
    let r = home.toka(&["llm", "models"]);
    r.expect_code(79);
    assert!(r.stderr.contains("llm.toml") && r.stderr.contains("unknown field `keyenv`"), "{}", r.stderr);
}

/// A call that is still waiting when the run's time runs out ends before the run does, with an event; a stream the
/// agent drops midway is recorded as abandoned.
#[test]
fn calls_cut_short_still_end_with_an_event() {
    let home = LlmHome::with_timeout("10s");
    let input = serde_json::json!({ "model": "oa-slow", "question": "hi" });
    let started = std::time::Instant::now();
    let r = home.chat("tool-chat", &input, &["--allow-llm", "oa-slow", "--timeout", "1500ms"]);
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
    let run = r.report()["run_id"].as_str().unwrap().to_string();
    let k = kinds(&home.run_events(&run));
    let end = k.iter().position(|x| x == "llm.failed").expect("the call's ending is recorded");
    let run_end = k.iter().position(|x| x.starts_with("run.") && x != "run.started").unwrap();
    assert!(end < run_end, "the call ends before the run: {k:?}");
    let failed = home.events("llm.failed");
    assert_eq!(failed.last().unwrap()["payload"]["outcome"], "timeout");

    let input = serde_json::json!({ "model": "an-chat", "question": "a long answer to stop early", "stream": true, "max_deltas": 1 });
    let r = home.chat("tool-chat", &input, &["--allow-llm", "an-chat"]);
    r.expect_code(0);
    assert_eq!(result(&r)["deltas"], 1);
    let run = r.report()["run_id"].as_str().unwrap().to_string();
    let events = home.run_events(&run);
    let failed = events.iter().find(|e| e["kind"] == "llm.failed").expect("the abandoned call is recorded");
    assert_eq!(failed["payload"]["outcome"], "abandoned");
    assert!(failed["payload"]["tokens_charged"].as_u64().unwrap() > 0, "text already generated counts");

    // A stream the agent leaves open is ended by the host when it takes the guest down: before the run's ending.
    let input = serde_json::json!({ "model": "an-chat", "question": "a long answer to leave open", "stream": true,
        "max_deltas": 1, "leave_open": true });
    let r = home.chat("tool-chat", &input, &["--allow-llm", "an-chat"]);
    r.expect_code(0);
    let run = r.report()["run_id"].as_str().unwrap().to_string();
    let events = home.run_events(&run);
    let failed = events.iter().position(|e| e["kind"] == "llm.failed").expect("the call left open is recorded");
    assert_eq!(events[failed]["payload"]["outcome"], "abandoned");
    let k = kinds(&events);
    let run_end = k.iter().position(|x| x.starts_with("run.") && x != "run.started").unwrap();
    assert!(failed < run_end, "the call left open ends before the run: {k:?}");
}

/// A tool that declares `llm:` needs calls models through its calling run's access: only a model that the tool
/// declares and the run's token grants, counted and recorded under the calling run. A tool called without a run
/// behind it (the CLI's `tool call`) has no model access at all.
#[test]
fn a_tool_calls_only_models_it_declares_and_the_run_grants() {
    let home = LlmHome::new();
    home.toka(&["tool", "add", tool_path("llm-ask").to_str().unwrap()]).expect_code(0);
    // The conversation's model asks the tool `llm-ask` (which declares `llm:oa-*` and `llm:an-chat`) to ask `asked`.
    let through_tool = |asked: &str, grants: &[&str]| {
        let question = format!("call llm-ask {{\"model\":\"{asked}\",\"question\":\"hi\"}}");
        let input = serde_json::json!({ "model": "oa-chat", "question": question });
        let mut flags = vec!["--allow-tool", "llm-ask"];
        for g in grants {
            flags.extend_from_slice(&["--allow-llm", g]);
        }
        let r = home.chat("tool-chat", &input, &flags);
        r.expect_code(0);
        let out = result(&r);
        let run = r.report()["run_id"].as_str().unwrap().to_string();
        (out, home.run_events(&run))
    };
    // Positive controls: a model under the tool's pattern, and the one it names, both granted to the run.
    for asked in ["oa-chat", "an-chat"] {
        let (out, events) = through_tool(asked, &["oa-chat", "an-chat"]);
        assert_eq!(out["tool_calls"], serde_json::json!([{"name": "llm-ask", "ok": true}]), "{asked}: {out}");
        assert!(out["answer"].as_str().unwrap().contains(r#"llm-ask returned {"answer":"You said: hi""#), "{out}");
        let completed: Vec<&serde_json::Value> = events.iter().filter(|e| e["kind"] == "llm.completed").collect();
        assert_eq!(completed.len(), 3, "two turns of the agent and the tool's call, all in the run: {events:?}");
        assert!(completed.iter().any(|e| e["payload"]["model"] == asked), "the tool's call, in the run: {events:?}");
    }
    // Declared by the tool but not granted to the run: the token refuses it (an error value for the tool).
    let (out, events) = through_tool("an-chat", &["oa-chat"]);
    assert_eq!(out["tool_calls"], serde_json::json!([{"name": "llm-ask", "ok": false}]), "{out}");
    assert!(out["answer"].as_str().unwrap().contains("grant refused: llm:an-chat"), "{out}");
    let failed = events.iter().find(|e| e["kind"] == "llm.failed").expect("the refusal is recorded");
    assert_eq!(
        (failed["payload"]["outcome"].as_str(), failed["payload"]["model"].as_str()),
        (Some("denied"), Some("an-chat"))
    );
    // Granted to the run but not declared by the tool: refused too, and the provider never asked.
    let before = home.mock.requests_for("fail-500").len();
    let (out, events) = through_tool("an-fail-500", &["oa-chat", "an-*"]);
    assert_eq!(out["tool_calls"], serde_json::json!([{"name": "llm-ask", "ok": false}]), "{out}");
    assert!(out["answer"].as_str().unwrap().contains("declares only the models oa-*, an-chat"), "{out}");
    assert!(events.iter().any(|e| e["kind"] == "llm.failed" && e["payload"]["outcome"] == "denied"));
    assert_eq!(home.mock.requests_for("fail-500").len(), before);
    // Outside a run there is no model access to confine.
    let r = home.toka(&["tool", "call", "llm-ask", "--input", r#"{"model":"oa-chat","question":"hi"}"#]);
    assert_ne!(r.code, 0);
    assert!(r.stdout.contains("no access to models") || r.stderr.contains("no access to models"), "{r:?}");
}

/// `serve` runs agents that call models, and `/metrics` reports model calls by configured model and outcome, with
/// tokens and time, in a form a real Prometheus parser accepts.
#[test]
fn serve_reports_model_usage_in_metrics() {
    let key = fresh_key();
    let mock = Mock::start(&key);
    let home = tempfile::tempdir().unwrap();
    // A key from an owner-only file this time (the server's environment has no key).
    let key_file = home.path().join("provider.key");
    std::fs::write(&key_file, &key).unwrap();
    std::fs::set_permissions(&key_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let toml = format!(
        "[providers.oa]\nkind = \"openai\"\nbase_url = \"{}/v1\"\nkey_file = \"{}\"\nmax_retries = 0\n\n\
         [models.oa-chat]\nprovider = \"oa\"\nmodel = \"mock-model\"\n[models.oa-fail-500]\nprovider = \"oa\"\nmodel = \"fail-500\"\n",
        mock.url(),
        key_file.display()
    );
    std::fs::write(home.path().join("llm.toml"), toml).unwrap();
    toka_with(&["key", "init"], None, &[("TOKA_HOME", home.path().to_str().unwrap())]).expect_code(0);
    let s = crate::service::Server::start_in(home, &[]);
    let operator = s.mint(&["--agent", "*", "--grant", "api:read"]);
    let token = s.mint(&["--agent", "tool-chat", "--grant", "llm:oa-*"]);
    let submit = |model: &str| {
        let body = serde_json::json!({
            "component": { "path": "tool-chat.wasm" },
            "input": { "model": model, "question": "hello" },
            "grants": { "models": [model] },
            "wait": true,
        });
        s.post("/v1/runs", Some(&token), &body)
    };
    let (status, body) = submit("oa-chat");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["report"]["outcome"], "success", "{body}");
    let (_, body) = submit("oa-fail-500");
    assert_eq!(body["report"]["outcome"], "agent-error", "{body}");
    let text = crate::service::client()
        .get(format!("{}/metrics", s.url))
        .bearer_auth(&operator)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(text.contains("toka_llm_calls_total{model=\"oa-chat\",outcome=\"success\"} 1\n"), "{text}");
    assert!(text.contains("toka_llm_calls_total{model=\"oa-fail-500\",outcome=\"provider-error\"} 1\n"), "{text}");
    let prompt =
        text.lines().find(|l| l.starts_with("toka_llm_tokens_total{model=\"oa-chat\",kind=\"prompt\"}")).unwrap();
    assert!(prompt.rsplit(' ').next().unwrap().parse::<u64>().unwrap() > 0, "{prompt}");
    assert!(text.contains("toka_llm_call_seconds_total{model=\"oa-chat\"}"), "{text}");
    assert!(!text.contains(&key));
    let mut child = std::process::Command::new("/usr/bin/promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && !said.contains("error"), "promtool: {said}\n{text}");
}

/// A plan's agent calls models through the gateway with the manifest's `models` grant (the operator's token narrowed
/// to it, as to every other grant), within its `llm_tokens` limit; without the grant its calls are refused, in the
/// same home.
#[test]
fn a_plan_step_calls_the_models_its_manifest_grants_and_no_other() {
    let home = LlmHome::new();
    let dir = tempfile::tempdir().unwrap();
    let manifest = |models: &str| {
        let text = format!(
            "[agents.chat]\ncomponent = \"{}\"\ninput = {{ model = \"oa-chat\", question = {:?} }}\n\n\
             [agents.chat.grants]\ntools = [\"echo\", \"json-query\"]\n{models}\n\n\
             [agents.chat.limits]\nllm_tokens = 100000\n",
            agent("tool-chat").display(),
            QUESTION
        );
        let path = dir.path().join("toka.toml");
        std::fs::write(&path, text).unwrap();
        path
    };
    let r = home.toka(&["up", manifest("models = [\"oa-*\"]").to_str().unwrap(), "--json"]);
    r.expect_code(0);
    let step = &r.report()["steps"][0];
    assert_eq!(step["status"], "completed", "{step}");
    assert_eq!(step["output"]["answer"], ANSWER, "{step}");
    let completed = home.events("llm.completed");
    assert_eq!(completed.len(), 3, "three model calls: {completed:?}");
    assert_eq!(completed[0]["run_id"], step["run_id"]);

    // Without the grant: the agent's calls are refused (an error value it reports), the step fails, and the refusal
    // is recorded; the model was not called again.
    let r = home.toka(&["up", manifest("").to_str().unwrap(), "--json"]);
    r.expect_code(85);
    let step = &r.report()["steps"][0];
    assert_eq!(step["status"], "failed", "{step}");
    assert!(step["error"].as_str().unwrap().contains("model call denied"), "{step}");
    assert_eq!(home.events("llm.completed").len(), 3, "no further model call");
    let failed = home.events("llm.failed");
    let last = &failed.last().expect("the refusal is recorded")["payload"];
    assert_eq!((last["outcome"].as_str(), last["model"].as_str()), (Some("denied"), Some("oa-chat")));
}
