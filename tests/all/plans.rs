//! Orchestration: `toka-host up` runs the agents of a manifest in dependency order and by priority, each with the
//! operator's token narrowed to its own grants; refuses cycles and over-wide manifests before anything starts;
//! skips the dependents of a failed agent; cancels cleanly on Ctrl-C; and resumes a killed plan without running a
//! completed step again.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use toka_tests::{Ran, Rng, agent, shared_cache, test_seed, toka_host, toka_with, wait_for, watchdog};

fn toka_in(home: &Path, args: &[&str]) -> Ran {
    toka_with(args, None, &[("TOKA_HOME", home.to_str().unwrap())])
}

/// A manifest file in its own directory; `{hello-rust}` and the like stand for the built agents' paths.
fn manifest(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let mut text = text.to_string();
    for name in ["hello-rust", "hello-python", "hello-js", "busy", "hostile"] {
        text = text.replace(&format!("{{{name}}}"), agent(name).to_str().unwrap());
    }
    let path = dir.path().join("toka.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn up(home: &Path, path: &Path, extra: &[&str]) -> Ran {
    let mut args = vec!["up", path.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    toka_in(home, &args)
}

fn events(home: &Path, kind: &str) -> Vec<Value> {
    let r = toka_in(home, &["events", "--json", "--kind", kind]);
    r.expect_code(0);
    r.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn steps(summary: &Value) -> BTreeMap<String, Value> {
    summary["steps"].as_array().unwrap().iter().map(|s| (s["name"].as_str().unwrap().to_string(), s.clone())).collect()
}

const DIAMOND: &str = r#"
[plan]
name = "diamond"

[agents.greet]
component = "{hello-rust}"
input = { name = "Ada" }

[agents.python]
component = "{hello-python}"
input_from = { name = "greet.greeting" }

[agents.js]
component = "{hello-js}"
input_from = { name = "greet.greeting" }

[agents.join]
component = "{hello-rust}"
depends_on = ["js"]
input_from = { name = "python.greeting" }
"#;

#[test]
fn a_diamond_runs_in_dependency_order_with_piped_outputs_in_three_languages() {
    let home = tempfile::tempdir().unwrap();
    let (_dir, path) = manifest(DIAMOND);
    let r = up(home.path(), &path, &["--jobs", "2"]);
    r.expect_code(0);
    let summary = r.report();
    assert_eq!(summary["outcome"], "completed");
    let s = steps(&summary);
    assert_eq!(s["greet"]["output"]["greeting"], "Hello, Ada!");
    assert_eq!(s["python"]["output"]["greeting"], "Hello, Hello, Ada!!", "greet's field piped into python");
    assert_eq!(s["js"]["output"]["greeting"], "Hello, Hello, Ada!!");
    assert_eq!(s["join"]["output"]["greeting"], "Hello, Hello, Hello, Ada!!!", "python's field piped into join");
    for step in s.values() {
        assert_eq!(step["status"], "completed");
        assert_eq!(step["attempts"], 1);
        assert!(step["fuel"].as_u64().unwrap() > 0);
    }
    // In the log: each step started after every step it waits for had completed.
    let plan_id = summary["plan_id"].as_str().unwrap();
    let mut seq: BTreeMap<(String, &str), u64> = BTreeMap::new();
    for e in events(home.path(), "step") {
        assert_eq!(e["payload"]["plan_id"], plan_id);
        let kind = if e["kind"] == "step.started" { "started" } else { "ended" };
        seq.insert((e["payload"]["step"].as_str().unwrap().to_string(), kind), e["seq"].as_u64().unwrap());
    }
    let at = |step: &str, kind| seq[&(step.to_string(), kind)];
    for (step, deps) in [("python", &["greet"][..]), ("js", &["greet"]), ("join", &["python", "js"])] {
        for dep in deps {
            assert!(at(step, "started") > at(dep, "ended"), "{step} started before {dep} ended");
        }
    }
    let plans = events(home.path(), "plan");
    assert_eq!(plans.len(), 2, "{plans:?}");
    assert_eq!(plans[1]["kind"], "plan.completed");
    assert_eq!(plans[1]["payload"]["completed"], 4);
    toka_in(home.path(), &["events", "verify"]).expect_code(0);
}

#[test]
fn a_cycle_is_refused_naming_it_before_anything_starts() {
    let home = tempfile::tempdir().unwrap();
    let cyclic = DIAMOND.replace("[agents.greet]\n", "[agents.greet]\ndepends_on = [\"join\"]\n");
    let (_dir, path) = manifest(&cyclic);
    let r = up(home.path(), &path, &[]);
    r.expect_code(77);
    assert!(r.stderr.contains("dependency cycle: "), "{}", r.stderr);
    for name in ["greet", "join", "python"] {
        assert!(r.stderr.contains(name), "the cycle names {name}: {}", r.stderr);
    }
    assert!(!r.stderr.contains("js ->") && !r.stderr.contains("-> js"), "js is not on the cycle: {}", r.stderr);
    assert_eq!(r.report()["exit_code"], 77);
    assert!(!home.path().join("toka.redb").exists() || events(home.path(), "run").is_empty(), "nothing ran");
    // Positive control: the same plan without the edge back runs.
    let (_dir, path) = manifest(DIAMOND);
    up(home.path(), &path, &[]).expect_code(0);
}

#[test]
fn a_manifest_wider_than_the_operator_token_is_refused_naming_agent_and_grant() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    toka_in(h, &["key", "init"]).expect_code(0);
    let mint = toka_in(h, &["token", "mint", "--agent", "*", "--grant", "env:LANG", "--fuel", "2000000000"]);
    mint.expect_code(0);
    let operator = mint.stdout.trim().to_string();
    let plan = |env_b: &str| {
        format!(
            "[agents.a]\ncomponent = \"{{hello-rust}}\"\ngrants = {{ env = [\"LANG=C\"] }}\nlimits = {{ fuel = 100_000_000 }}\n\n\
             [agents.b]\ncomponent = \"{{hello-rust}}\"\ndepends_on = [\"a\"]\ngrants = {{ env = [\"{env_b}\"] }}\n\
             limits = {{ fuel = 100_000_000 }}\n"
        )
    };
    let (_dir, wide) = manifest(&plan("HOME=/root"));
    let r = up(h, &wide, &["--token", &operator]);
    r.expect_code(72);
    assert!(r.stderr.contains("agent `b` asks for env:HOME"), "names the agent and the grant: {}", r.stderr);
    assert!(events(h, "run.started").is_empty(), "nothing started, not even `a`");
    assert!(events(h, "plan").is_empty(), "no plan was recorded");
    // Limits too: more fuel than the token allows.
    let (_dir, greedy) = manifest(&plan("LANG=C").replace("fuel = 100_000_000 }\n\n", "fuel = 3_000_000_000 }\n\n"));
    let r = up(h, &greedy, &["--token", &operator]);
    r.expect_code(72);
    assert!(r.stderr.contains("agent `a` asks for limits"), "{}", r.stderr);
    // Positive control: within the token, the same plan runs.
    let (_dir, narrow) = manifest(&plan("LANG=C"));
    let r = up(h, &narrow, &["--token", &operator]);
    r.expect_code(0);
    assert_eq!(events(h, "run.started").len(), 2);
}

#[test]
fn each_agent_gets_exactly_its_own_grants() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let echo = toka_tests::root().join("target/tools/echo.wasm");
    toka_in(h, &["tool", "add", echo.to_str().unwrap()]).expect_code(0);
    // Both agents read SECRET and call the tool `echo`; only `granted` is given either. The operator's token
    // (minted from the manifest) holds both, so what refuses `bare` is its own narrowed token: the tool call is
    // checked against the token alone.
    let calls = r#"calls = [{ tool = { name = "echo", input = '{"hi":1}' } }]"#;
    let (_dir, path) = manifest(&format!(
        r#"
[agents.granted]
component = "{{hostile}}"
input = {{ attack = "env", name = "SECRET" }}
grants = {{ env = ["SECRET=s3"] }}

[agents.granted-tool]
component = "{{hostile}}"
input = {{ attack = "calls", {calls} }}
grants = {{ tools = ["echo"] }}

[agents.bare]
component = "{{hostile}}"
input = {{ attack = "env", name = "SECRET" }}

[agents.bare-tool]
component = "{{hostile}}"
input = {{ attack = "calls", {calls} }}
"#
    ));
    let r = up(h, &path, &[]);
    r.expect_code(85);
    let s = steps(&r.report());
    assert_eq!(s["granted"]["status"], "completed", "{:?}", s["granted"]);
    assert!(s["granted"]["output"].to_string().contains("s3"), "the granted agent read it: {}", s["granted"]["output"]);
    assert_eq!(s["bare"]["status"], "failed");
    assert_eq!(s["bare"]["outcome"], "agent-error");
    assert!(s["bare"]["error"].as_str().unwrap().contains("denied"), "{}", s["bare"]["error"]);
    assert!(!s["bare"]["error"].as_str().unwrap().contains("s3"));
    let answer = |step: &str| s[step]["output"]["answers"][0].as_str().unwrap_or_default().to_string();
    assert!(answer("granted-tool").starts_with("ok: "), "{:?}", s["granted-tool"]);
    assert_eq!(s["bare-tool"]["status"], "completed", "{:?}", s["bare-tool"]);
    assert!(answer("bare-tool").starts_with("err: ") && answer("bare-tool").contains("Denied"), "{:?}", s["bare-tool"]);
    assert!(answer("bare-tool").contains("tool:echo"), "{:?}", s["bare-tool"]);
}

#[test]
fn a_failed_required_dependency_skips_its_dependents_with_the_reason() {
    let home = tempfile::tempdir().unwrap();
    let (_dir, path) = manifest(
        r#"
[agents.flaky]
component = "{hostile}"
input = { attack = "panic" }
retries = 2
backoff = "10ms"

[agents.needs]
component = "{hello-rust}"
depends_on = ["flaky"]

[agents.needs-needs]
component = "{hello-rust}"
depends_on = ["needs"]

[agents.cleanup]
component = "{hello-rust}"
after = ["flaky"]

[agents.other]
component = "{hello-rust}"
"#,
    );
    let r = up(home.path(), &path, &[]);
    r.expect_code(85);
    let summary = r.report();
    assert_eq!(summary["outcome"], "failed");
    let s = steps(&summary);
    assert_eq!(s["flaky"]["status"], "failed");
    assert_eq!(s["flaky"]["outcome"], "trap");
    assert_eq!(s["flaky"]["attempts"], 3, "one run and two retries");
    assert_eq!(s["needs"]["status"], "skipped");
    assert_eq!(s["needs"]["reason"], "required dependency `flaky` failed");
    assert_eq!(s["needs-needs"]["reason"], "required dependency `needs` was skipped");
    assert_eq!(s["cleanup"]["status"], "completed", "`after` waits for the end, whatever it was");
    assert_eq!(s["other"]["status"], "completed");
    let started: Vec<String> =
        events(home.path(), "run.started").iter().map(|e| e["payload"]["component"].as_str().unwrap().into()).collect();
    assert_eq!(started.len(), 5, "3 attempts of flaky, cleanup, other: {started:?}");
    let skipped = events(home.path(), "step.skipped");
    assert_eq!(skipped.len(), 2);
}

#[test]
fn critical_agents_run_first_one_at_a_time_then_the_rest_up_to_jobs() {
    let home = tempfile::tempdir().unwrap();
    let busy = |name: &str, priority: &str, n: u64| {
        format!("[agents.{name}]\ncomponent = \"{{busy}}\"\npriority = \"{priority}\"\ninput = {{ n = {n} }}\n")
    };
    let text = [
        busy("low1", "low", 2_000_000),
        busy("high1", "high", 2_000_000),
        busy("c1", "critical", 2_000_000),
        busy("c2", "critical", 2_000_000),
        // med1 works four times as long as high1, so the two slots free one at a time: high1's goes to med2 (medium
        // before low) and low1 comes last. With equal work both could free at once and med2 and low1 start together,
        // recorded in either order.
        busy("med1", "medium", 8_000_000),
        busy("med2", "medium", 2_000_000),
    ]
    .concat();
    let (_dir, path) = manifest(&text);
    up(home.path(), &path, &["--jobs", "2"]).expect_code(0);
    // Replay the log: how many steps were running after each event, and in which order they started.
    let mut running = Vec::new();
    let mut widest = 0;
    let mut order = Vec::new();
    for e in events(home.path(), "step") {
        let step = e["payload"]["step"].as_str().unwrap().to_string();
        if e["kind"] == "step.started" {
            if step.starts_with('c') {
                assert!(running.is_empty(), "critical {step} started beside {running:?}");
            }
            assert!(!running.iter().any(|r: &String| r.starts_with('c')), "{step} started beside a critical step");
            running.push(step.clone());
            order.push(step);
        } else {
            running.retain(|r| *r != step);
        }
        widest = widest.max(running.len());
    }
    assert_eq!(widest, 2, "--jobs 2 caps it, and two did run at once");
    assert!(order[..2].iter().all(|s| s.starts_with('c')), "critical first: {order:?}");
    // Then by priority, two at a time: the two started together may be recorded in either order.
    let mut next_two = order[2..4].to_vec();
    next_two.sort();
    assert_eq!(next_two, ["high1", "med1"], "then by priority: {order:?}");
    assert_eq!(order[4..], ["med2", "low1"], "{order:?}");
}

/// A plan whose steps take a while: a chain and a fan-out of CPU-bound agents.
fn slow_plan() -> String {
    let mut text = String::from("[plan]\nname = \"slow\"\n");
    for (name, deps) in [("s1", ""), ("s2", "s1"), ("s3", "s1"), ("s4", "s2"), ("s5", "s3"), ("s6", "s4"), ("s7", "s6")]
    {
        text.push_str(&format!("[agents.{name}]\ncomponent = \"{{busy}}\"\ninput = {{ n = 60_000_000 }}\n"));
        if !deps.is_empty() {
            text.push_str(&format!("depends_on = [\"{deps}\"]\n"));
        }
    }
    text
}

fn spawn_up(home: &Path, args: &[&str]) -> std::process::Child {
    Command::new(toka_host())
        .args(args)
        .env("TOKA_HOME", home)
        .env("TOKA_CACHE_DIR", shared_cache())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_plan_killed_at_random_moments_resumes_without_rerunning_completed_steps() {
    let mut rng = Rng::new(test_seed("a_plan_killed_at_random_moments_resumes_without_rerunning_completed_steps"));
    let (_dir, path) = manifest(&slow_plan());
    let p = path.to_str().unwrap();
    for round in 0..3 {
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        let plan_id = format!("killed-{round}");
        let fresh = ["up", p, "--plan-id", plan_id.as_str(), "--jobs", "2", "--plain"];
        let resume = ["up", "--resume", plan_id.as_str(), "--jobs", "2", "--plain"];
        // Each round kills once or twice, each time after a random delay, restarting or resuming after each kill;
        // the last process runs to the end.
        let mut kills_left = 1 + rng.below(2);
        let mut completed_before_kill: BTreeMap<String, u64> = BTreeMap::new();
        let mut child = spawn_up(h, &fresh);
        loop {
            if kills_left == 0 {
                let (status, killed) = watchdog(child, Duration::from_secs(180)).join().unwrap();
                assert!(!killed && status.success(), "round {round}: the last process ended the plan: {status:?}");
                break;
            }
            kills_left -= 1;
            std::thread::sleep(Duration::from_millis(100 + rng.below(1500)));
            let _ = child.kill();
            child.wait().unwrap();
            // What had completed when it died must never run again.
            for e in events(h, "step.completed") {
                completed_before_kill.insert(e["payload"]["step"].as_str().unwrap().into(), e["seq"].as_u64().unwrap());
            }
            if !events(h, "plan.completed").is_empty() {
                break;
            }
            child = if events(h, "plan.started").is_empty() {
                // Killed before the plan was recorded: there is nothing to resume, and resuming says so.
                let r = toka_in(h, &["up", "--resume", &plan_id]);
                r.expect_code(77);
                assert!(r.stderr.contains("is not running"), "{}", r.stderr);
                spawn_up(h, &fresh)
            } else {
                spawn_up(h, &resume)
            };
        }
        let ended = events(h, "plan.completed");
        assert_eq!(ended.len(), 1, "round {round}: the plan completed once");
        assert_eq!(ended[0]["payload"]["completed"], 7);
        let mut completions: BTreeMap<String, u32> = BTreeMap::new();
        for e in events(h, "step.completed") {
            *completions.entry(e["payload"]["step"].as_str().unwrap().into()).or_default() += 1;
        }
        assert_eq!(completions.len(), 7, "round {round}: {completions:?}");
        assert!(completions.values().all(|n| *n == 1), "round {round}: a step completed twice: {completions:?}");
        for e in events(h, "step.started") {
            let step = e["payload"]["step"].as_str().unwrap();
            if let Some(done) = completed_before_kill.get(step) {
                assert!(e["seq"].as_u64().unwrap() < *done, "round {round}: {step} ran again after it completed");
            }
        }
        // Every run that was cut short is closed as interrupted; no run is left open.
        let started = events(h, "run.started").len();
        let ended_runs = events(h, "run.completed").len() + events(h, "run.failed").len();
        assert_eq!(started, ended_runs, "round {round}: every run ended");
        let interrupted = events(h, "step.failed").iter().filter(|e| e["payload"]["outcome"] == "interrupted").count();
        eprintln!(
            "round {round}: {} steps completed before a kill, {interrupted} interrupted and run again",
            completed_before_kill.len()
        );
        toka_in(h, &["events", "verify"]).expect_code(0);
    }
}

#[test]
fn ctrl_c_cancels_running_agents_and_skips_the_rest_and_records_it() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let (_dir, path) = manifest(
        "[agents.spin]\ncomponent = \"{hostile}\"\ninput = { attack = \"spin\" }\nlimits = { timeout = \"60s\", fuel = 1_000_000_000_000 }\n\n\
         [agents.after]\ncomponent = \"{hello-rust}\"\ndepends_on = [\"spin\"]\n",
    );
    let child = spawn_up(h, &["up", path.to_str().unwrap(), "--json", "--plain", "--plan-id", "interrupted"]);
    let pid = child.id();
    let started = wait_for(Duration::from_secs(60), || {
        (h.join("toka.redb").exists() && !events(h, "step.started").is_empty()).then_some(())
    });
    assert!(started.is_some(), "the spinning step started");
    let sent = Instant::now();
    let kill = Command::new("kill").args(["-INT", &pid.to_string()]).status().unwrap();
    assert!(kill.success());
    let (status, killed) = watchdog(child, Duration::from_secs(20)).join().unwrap();
    assert!(!killed, "the plan stopped on Ctrl-C");
    assert_eq!(status.code(), Some(82));
    assert!(sent.elapsed() < Duration::from_secs(5), "cancelled promptly: {:?}", sent.elapsed());
    let cancelled = events(h, "plan.cancelled");
    assert_eq!(cancelled.len(), 1);
    assert_eq!(cancelled[0]["payload"]["plan_id"], "interrupted");
    let failed = events(h, "step.failed");
    assert_eq!(failed[0]["payload"]["outcome"], "cancelled");
    let skipped = events(h, "step.skipped");
    assert_eq!(skipped[0]["payload"]["step"], "after");
    assert_eq!(skipped[0]["payload"]["reason"], "the plan was cancelled");
    assert_eq!(events(h, "run.failed")[0]["payload"]["outcome"], "cancelled");
    // An ended plan does not resume.
    toka_in(h, &["up", "--resume", "interrupted"]).expect_code(77);
}

#[test]
fn a_plan_past_its_timeout_is_stopped_and_recorded() {
    let home = tempfile::tempdir().unwrap();
    let (_dir, path) = manifest(
        "[plan]\ntimeout = \"1s\"\n\n[agents.spin]\ncomponent = \"{hostile}\"\ninput = { attack = \"spin\" }\n\
         limits = { timeout = \"60s\", fuel = 1_000_000_000_000 }\n\n[agents.quick]\ncomponent = \"{hello-rust}\"\n",
    );
    let started = Instant::now();
    let r = up(home.path(), &path, &[]);
    r.expect_code(69);
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    let s = steps(&r.report());
    assert_eq!(s["spin"]["status"], "cancelled");
    assert_eq!(s["quick"]["status"], "completed", "the other agent ran meanwhile");
    assert_eq!(events(home.path(), "plan.timeout").len(), 1);
}

// Plans through the service: `POST /v1/plans` on a real `serve`, the plan read back from the kernel's record.

use crate::service::{Server, client};
use serde_json::json;

/// A manifest for a server whose component directory is `target/agents`: components by file name.
fn served(text: &str) -> String {
    let mut text = text.to_string();
    for name in ["hello-rust", "hello-python", "hello-js", "busy", "hostile", "spawner"] {
        text = text.replace(&format!("{{{name}}}"), &format!("{name}.wasm"));
    }
    text
}

fn submit(s: &Server, token: Option<&str>, manifest: &str) -> (u16, Value) {
    s.post("/v1/plans", token, &json!({ "manifest": manifest }))
}

/// Polls the plan until it has ended (bounded); its last view.
fn ended_plan(s: &Server, token: &str, plan_id: &str) -> Value {
    let mut last = Value::Null;
    let ended = wait_for(Duration::from_secs(90), || {
        let (status, view) = s.get(&format!("/v1/plans/{plan_id}"), Some(token));
        assert_eq!(status, 200, "{view}");
        let done = view["status"] != "running";
        last = view;
        done.then_some(())
    });
    assert!(ended.is_some(), "the plan did not end in time: {last}");
    last
}

fn plan_steps(view: &Value) -> BTreeMap<String, Value> {
    view["steps"].as_array().unwrap().iter().map(|s| (s["name"].as_str().unwrap().to_string(), s.clone())).collect()
}

fn operator(s: &Server) -> String {
    s.mint(&["--agent", "*", "--grant", "api:read"])
}

#[test]
fn a_plan_submitted_over_http_runs_end_to_end_with_piped_outputs_and_its_own_events() {
    let s = Server::start(&[]);
    let token = operator(&s);
    // A run outside the plan, whose events must not show among the plan's.
    let (status, outside) = s.post(
        "/v1/runs",
        Some(&token),
        &json!({ "component": { "path": "hello-rust.wasm" }, "input": { "name": "Bob" }, "wait": true }),
    );
    assert_eq!(status, 200, "{outside}");
    let (status, started) = submit(&s, Some(&token), &served(DIAMOND));
    assert_eq!(status, 202, "{started}");
    let plan_id = started["plan_id"].as_str().unwrap().to_string();
    assert_eq!(started["name"], "diamond");
    assert_eq!(started["live_here"], true);
    let view = ended_plan(&s, &token, &plan_id);
    assert_eq!(view["status"], "completed", "{view}");
    let st = plan_steps(&view);
    assert_eq!(st["greet"]["output"]["greeting"], "Hello, Ada!");
    assert_eq!(st["python"]["output"]["greeting"], "Hello, Hello, Ada!!", "greet's field piped into python");
    assert_eq!(st["js"]["output"]["greeting"], "Hello, Hello, Ada!!");
    assert_eq!(st["join"]["output"]["greeting"], "Hello, Hello, Hello, Ada!!!", "python's field piped into join");
    for step in st.values() {
        assert_eq!(step["status"], "succeeded", "{step}");
        assert!(step["fuel"].as_u64().unwrap() > 0, "{step}");
        assert!(step["run_id"].as_str().is_some_and(|r| !r.is_empty()), "{step}");
        assert!(step["time_ms"].as_u64().is_some(), "{step}");
    }
    // The graph: levels and edges as the manifest has them.
    let level = |n: &str| st[n]["level"].as_u64().unwrap();
    assert_eq!((level("greet"), level("python"), level("js"), level("join")), (0, 1, 1, 2));
    assert_eq!(st["join"]["depends_on"], json!(["js"]));
    assert_eq!(st["join"]["input_from"], json!(["python"]));
    assert_eq!(st["python"]["input_from"], json!(["greet"]));
    // The listing has it.
    let (status, list) = s.get("/v1/plans", Some(&token));
    assert_eq!(status, 200);
    assert_eq!(list[0]["plan_id"], plan_id.as_str());
    assert_eq!(list[0]["status"], "completed");
    // Its events, by plan id: its own, its steps' runs, and nothing of the run outside it.
    let (status, evs) = s.get(&format!("/v1/events?plan={plan_id}&limit=1000"), Some(&token));
    assert_eq!(status, 200, "{evs}");
    let evs = evs.as_array().unwrap();
    let kinds: Vec<&str> = evs.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"plan.started"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"plan.completed"), "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "run.completed").count(), 4, "the four steps' runs: {kinds:?}");
    let step_runs: Vec<&str> = st.values().map(|s| s["run_id"].as_str().unwrap()).collect();
    for e in evs.iter().filter(|e| e["kind"].as_str().unwrap().starts_with("run.")) {
        assert!(step_runs.contains(&e["run_id"].as_str().unwrap()), "not a step's run: {e}");
    }
    let outside_run = outside["run_id"].as_str().unwrap();
    assert!(evs.iter().all(|e| e["run_id"] != outside_run), "the run outside the plan is not among its events");
    // The same on the live stream, from the start of the log: every event of the plan up to its end, in order.
    let resp =
        client().get(format!("{}/v1/events/stream?plan={plan_id}&since=1", s.url)).bearer_auth(&token).send().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut streamed = Vec::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(resp)) {
        let Some(kind) = line.unwrap().strip_prefix("event: ").map(String::from) else { continue };
        let end = kind == "plan.completed";
        streamed.push(kind);
        if end || streamed.len() > 200 {
            break;
        }
    }
    assert_eq!(streamed, kinds, "the stream gives what the listing gives");
}

#[test]
fn plans_over_http_are_refused_before_anything_starts_each_beside_its_positive_control() {
    let s = Server::start(&[]);
    let h = s.home();
    let token = s.mint(&["--agent", "*", "--grant", "api:read", "--grant", "env:LANG", "--fuel", "2000000000"]);
    let plan = |env_b: &str| {
        served(&format!(
            "[agents.a]\ncomponent = \"{{hello-rust}}\"\ngrants = {{ env = [\"LANG=C\"] }}\nlimits = {{ fuel = 100_000_000 }}\n\n\
             [agents.b]\ncomponent = \"{{hello-rust}}\"\ndepends_on = [\"a\"]\ngrants = {{ env = [\"{env_b}\"] }}\n\
             limits = {{ fuel = 100_000_000 }}\n"
        ))
    };
    let good = plan("LANG=C");
    let expect = |(status, body): (u16, Value), want: u16, code: &str| -> String {
        assert_eq!(status, want, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
        let message = body["error"]["message"].as_str().unwrap().to_string();
        assert!(!message.contains('\n'), "one line: {message}");
        message
    };
    // No token, a forged one.
    expect(submit(&s, None, &good), 401, "unauthorized");
    expect(submit(&s, Some("not-a-token"), &good), 401, "token-refused");
    // A grant wider than the bearer token: named with its agent.
    let m = expect(submit(&s, Some(&token), &plan("HOME=/root")), 403, "grant-refused");
    assert!(m.contains("agent `b` asks for env:HOME"), "{m}");
    // A cycle, named.
    let cyclic = served(DIAMOND).replace("[agents.greet]\n", "[agents.greet]\ndepends_on = [\"join\"]\n");
    let m = expect(submit(&s, Some(&token), &cyclic), 400, "invalid-manifest");
    assert!(m.contains("dependency cycle: ") && m.contains("greet") && m.contains("join"), "{m}");
    // An unknown key, named by its line.
    let typo = good.replace("depends_on", "depend_on");
    let m = expect(submit(&s, Some(&token), &typo), 400, "invalid-manifest");
    assert!(m.contains("line 8, column 1") && m.contains("unknown field `depend_on`"), "{m}");
    // A component outside the server's component directories.
    let outside = good.replace("\"hello-rust.wasm\"", "\"../../Cargo.toml\"");
    expect(submit(&s, Some(&token), &outside), 403, "forbidden");
    let missing = good.replace("\"hello-rust.wasm\"", "\"no-such.wasm\"");
    expect(submit(&s, Some(&token), &missing), 404, "file-not-found");
    // Too large: one byte over the limit, padded with a comment (and exactly at the limit, below, it runs).
    let limit = 48 * 1024;
    let pad = |to: usize| format!("{good}#{}\n", "x".repeat(to - good.len() - 2));
    let at_limit = pad(limit);
    assert_eq!(at_limit.len(), limit);
    expect(submit(&s, Some(&token), &pad(limit + 1)), 413, "too-large");
    // Nothing of any of them started.
    let (_, plans) = s.get("/v1/plans", Some(&token));
    assert_eq!(plans, json!([]), "no refused plan was recorded");
    assert!(events(h, "run.started").is_empty(), "no run started");
    // Positive controls: the narrow plan, and the one at the size limit, both run.
    for manifest in [&good, &at_limit] {
        let (status, started) = submit(&s, Some(&token), manifest);
        assert_eq!(status, 202, "{started}");
        let view = ended_plan(&s, &token, started["plan_id"].as_str().unwrap());
        assert_eq!(view["status"], "completed", "{view}");
    }
}

#[test]
fn a_plan_started_by_up_on_the_same_home_is_visible_over_the_api() {
    let s = Server::start(&[]);
    let token = operator(&s);
    let (_dir, path) = manifest(DIAMOND);
    let r = toka_in(s.home(), &["up", path.to_str().unwrap(), "--json", "--plan-id", "from-up"]);
    r.expect_code(0);
    let (status, list) = s.get("/v1/plans", Some(&token));
    assert_eq!(status, 200, "{list}");
    assert_eq!(list[0]["plan_id"], "from-up");
    let (status, view) = s.get("/v1/plans/from-up", Some(&token));
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["status"], "completed");
    assert_eq!(view["live_here"], false, "run by `up`, not by this server");
    let st = plan_steps(&view);
    assert_eq!(st.len(), 4);
    assert!(st.values().all(|s| s["status"] == "succeeded"), "{view}");
    assert_eq!(st["join"]["output"]["greeting"], "Hello, Hello, Hello, Ada!!!");
    // Positive control for the 404: an unknown plan is not found, and a token for one agent sees no plan.
    assert_eq!(s.get("/v1/plans/no-such-plan", Some(&token)).0, 404);
    let one_agent = s.mint(&["--agent", "hello-rust", "--grant", "api:read"]);
    assert_eq!(s.get("/v1/plans/from-up", Some(&one_agent)).0, 404);
    assert_eq!(s.get("/v1/plans", Some(&one_agent)).1, json!([]));
}

#[test]
fn a_plan_cancelled_over_http_cancels_its_running_step_and_skips_the_rest() {
    let s = Server::start(&[]);
    let token = s.mint(&["--agent", "*", "--grant", "api:read", "--fuel", "100000000000", "--timeout", "10m"]);
    let (status, started) = submit(&s, Some(&token), &served(&slow_plan()));
    assert_eq!(status, 202, "{started}");
    let plan_id = started["plan_id"].as_str().unwrap().to_string();
    let running = wait_for(Duration::from_secs(30), || {
        let (_, view) = s.get(&format!("/v1/plans/{plan_id}"), Some(&token));
        plan_steps(&view).values().any(|s| s["status"] == "running").then_some(())
    });
    assert!(running.is_some(), "no step started");
    // A token for one agent may not cancel a plan of another: 404, and the plan runs on.
    let other = s.mint(&["--agent", "hello-rust"]);
    let del = |t: &str, id: &str| {
        let resp = client().delete(format!("{}/v1/plans/{id}", s.url)).bearer_auth(t).send().unwrap();
        resp.status().as_u16()
    };
    assert_eq!(del(&other, &plan_id), 404);
    assert_eq!(del(&token, "no-such-plan"), 404);
    assert_eq!(s.get(&format!("/v1/plans/{plan_id}"), Some(&token)).1["status"], "running");
    // The operator may.
    let cancelled_at = Instant::now();
    assert_eq!(del(&token, &plan_id), 202);
    let view = ended_plan(&s, &token, &plan_id);
    assert!(cancelled_at.elapsed() < Duration::from_secs(10), "cancelling took {:?}", cancelled_at.elapsed());
    assert_eq!(view["status"], "cancelled", "{view}");
    let st = plan_steps(&view);
    assert!(st.values().any(|s| s["outcome"] == "cancelled"), "the running step was cancelled: {view}");
    assert_eq!(st["s7"]["status"], "skipped");
    assert!(st.values().all(|s| s["status"] != "running" && s["status"] != "pending"), "{view}");
    assert_eq!(del(&token, &plan_id), 404, "an ended plan is no longer live");
}

// The research example (`examples/research/toka.toml`): six agents in four languages, a diamond, pipes (fields of
// other agents' JSON output) and an agent that spawns another, run as it is shipped.

/// Installs hello-rust as the signed agent package `helper` (the agent the example's follow-up step spawns) in `home`.
fn install_helper(home: &Path) {
    toka_in(home, &["publisher", "init", "--name", "research-tests"]).expect_code(0);
    let show = toka_in(home, &["publisher", "show", "--json"]);
    let public: Value = serde_json::from_str(&show.stdout).unwrap();
    toka_in(home, &["trust", "add", "research-tests", public["public_key"].as_str().unwrap()]).expect_code(0);
    let out = home.join("helper.tokapkg");
    let hello = agent("hello-rust");
    let pack = [
        "plugin",
        "pack",
        hello.to_str().unwrap(),
        "--name",
        "helper",
        "--version",
        "1.0.0",
        "--kind",
        "agent",
        "--sign",
        "--out",
        out.to_str().unwrap(),
    ];
    toka_in(home, &pack).expect_code(0);
    toka_in(home, &["plugin", "install", "--yes", out.to_str().unwrap()]).expect_code(0);
}

fn research_manifest() -> PathBuf {
    toka_tests::root().join("examples").join("research").join("toka.toml")
}

/// What every step of the research example must have given, from its steps' outputs (by step name).
fn check_research_outputs(output: impl Fn(&str) -> Value) {
    let survey = output("survey");
    assert_eq!(survey["files"], 3, "{survey}");
    assert_eq!(survey["largest"][0]["path"], "/corpus/wasm-sandboxing.md", "{survey}");
    let largest = "Hello, /corpus/wasm-sandboxing.md!";
    assert_eq!(output("read-python")["greeting"], largest, "survey.largest.0.path piped into read-python");
    assert_eq!(output("read-js")["greeting"], largest, "and into read-js");
    assert_eq!(output("check")["greeting"], format!("Hello, {largest}!"), "read-python.greeting piped into check");
    let follow_up = output("follow-up");
    assert_eq!(follow_up["results"][0]["ok"]["greeting"], "Hello, open questions!", "the helper answered: {follow_up}");
    assert_eq!(output("report")["greeting"], "Hello, Hello, open questions!!", "the helper's answer piped into report");
}

#[test]
fn the_research_example_runs_end_to_end_with_up_and_its_spawned_child_names_its_parent() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    install_helper(h);
    let r = up(h, &research_manifest(), &[]);
    r.expect_code(0);
    let summary = r.report();
    let s = steps(&summary);
    assert_eq!(s.len(), 6);
    assert!(s.values().all(|step| step["status"] == "completed" && step["attempts"] == 1), "{summary}");
    check_research_outputs(|name| s[name]["output"].clone());
    // Four languages: the components the steps ran.
    let agents: std::collections::BTreeSet<&str> = s.values().map(|step| step["agent"].as_str().unwrap()).collect();
    for a in ["dirstat", "hello-python", "hello-js", "hello-c", "spawner", "hello-rust"] {
        assert!(agents.contains(a), "{a} ran: {agents:?}");
    }
    // The helper ran as a run of its own, whose parent is the follow-up step's run.
    let follow_up_run = s["follow-up"]["run_id"].as_str().unwrap();
    let children: Vec<Value> =
        events(h, "run.started").into_iter().filter(|e| e["payload"]["parent"] == follow_up_run).collect();
    assert_eq!(children.len(), 1, "{children:?}");
    assert_eq!(children[0]["agent"], "helper");
    // The diamond: check started only after both readers had ended.
    let seq_of = |kind: &str, step: &str| {
        events(h, kind).iter().find(|e| e["payload"]["step"] == step).map(|e| e["seq"].as_u64().unwrap()).unwrap()
    };
    let check_started = seq_of("step.started", "check");
    assert!(check_started > seq_of("step.completed", "read-python"));
    assert!(check_started > seq_of("step.completed", "read-js"));
}

#[test]
fn without_the_helper_installed_the_follow_up_gets_a_refusal_and_the_report_cannot_be_made() {
    // The control of the test above: the spawn is real, so a home without the package gives no answer to pipe.
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let r = up(h, &research_manifest(), &[]);
    r.expect_code(85);
    let s = steps(&r.report());
    assert_eq!(s["follow-up"]["status"], "completed", "a refused spawn is a result for the spawner");
    assert!(s["follow-up"]["output"]["results"][0]["error"].is_object(), "{}", s["follow-up"]);
    assert_eq!(s["report"]["status"], "failed");
    assert!(s["report"]["error"].as_str().unwrap().contains("has no field `results/0/ok/greeting`"), "{}", s["report"]);
    assert_eq!(s["check"]["status"], "completed", "the rest of the plan ran");
}

#[test]
fn the_research_example_runs_through_serve_with_its_child_on_the_plans_event_stream() {
    let home = tempfile::tempdir().unwrap();
    install_helper(home.path());
    toka_in(home.path(), &["key", "init"]).expect_code(0);
    let s = Server::start_in(home, &[]);
    let corpus = toka_tests::root().join("examples").join("research").join("corpus");
    let corpus = corpus.canonicalize().unwrap();
    let token = s.mint(&[
        "--agent",
        "*",
        "--grant",
        "api:read",
        "--grant",
        &format!("fs:{}:ro", corpus.display()),
        "--grant",
        "spawn:helper",
    ]);
    // As shipped, but with components by name in the server's component directory and the corpus by its path.
    let text = std::fs::read_to_string(research_manifest())
        .unwrap()
        .replace("../../target/agents/", "")
        .replace("\"corpus::/corpus:ro\"", &format!("\"{}::/corpus:ro\"", corpus.display()));
    let (status, started) = submit(&s, Some(&token), &text);
    assert_eq!(status, 202, "{started}");
    let plan_id = started["plan_id"].as_str().unwrap().to_string();
    let view = ended_plan(&s, &token, &plan_id);
    assert_eq!(view["status"], "completed", "{view}");
    let st = plan_steps(&view);
    check_research_outputs(|name| st[name]["output"].clone());
    assert_eq!(st["check"]["depends_on"], json!(["read-js"]));
    assert_eq!(st["check"]["input_from"], json!(["read-python"]));
    assert_eq!(st["check"]["level"], 2);
    assert_eq!(st["report"]["level"], 4);
    // The helper's run is among the plan's events, as the follow-up step's child.
    let (_, evs) = s.get(&format!("/v1/events?plan={plan_id}&kind=run.started&limit=1000"), Some(&token));
    let follow_up_run = st["follow-up"]["run_id"].as_str().unwrap();
    let child: Vec<&Value> =
        evs.as_array().unwrap().iter().filter(|e| e["payload"]["parent"] == follow_up_run).collect();
    assert_eq!(child.len(), 1, "{evs}");
    assert_eq!(child[0]["agent"], "helper");
    // Without spawn:helper in the bearer token, the same plan is refused before anything starts (naming the grant).
    let narrow = s.mint(&["--agent", "*", "--grant", "api:read", "--grant", &format!("fs:{}:ro", corpus.display())]);
    let (status, body) = submit(&s, Some(&narrow), &text);
    assert_eq!(status, 403, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("agent `follow-up` asks for spawn:helper"), "{body}");
}
