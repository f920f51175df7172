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
        busy("med1", "medium", 2_000_000),
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
    assert_eq!(order.last().unwrap(), "low1", "{order:?}");
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
