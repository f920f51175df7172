//! Spawned agents (`toka:agent/spawn`): a run starts an installed agent package by name and waits for its result,
//! under the `spawn:AGENT` grant. The child runs with the parent's token narrowed to what the child declares and the
//! parent has (never wider), its fuel is charged to the parent, and depth and fan-out are capped, each refusal an
//! error value for the parent and a record in the log, next to the allowed case in the same home.
//!
//! The parent is `agents/spawner` (run from its file); the children are real components packed, signed and
//! installed in a fresh home, as an operator would.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use toka_tests::{Ran, agent, toka_with};

fn t(home: &Path, args: &[&str]) -> Ran {
    toka_with(args, None, &[("TOKA_HOME", home.to_str().unwrap())])
}

/// A fresh home that trusts its own publisher key and has each `(name, component, declared grants)` installed as a
/// signed agent package.
fn home_with(packages: &[(&str, &str, &[&str])]) -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    t(h, &["publisher", "init", "--name", "spawn-tests"]).expect_code(0);
    let show = t(h, &["publisher", "show", "--json"]);
    let public: Value = serde_json::from_str(&show.stdout).unwrap();
    t(h, &["trust", "add", "spawn-tests", public["public_key"].as_str().unwrap()]).expect_code(0);
    for (name, component, grants) in packages {
        let out = h.join(format!("{name}.tokapkg"));
        let component = agent(component);
        let mut args = vec!["plugin", "pack", component.to_str().unwrap(), "--name", name, "--version", "1.0.0"];
        args.extend_from_slice(&["--kind", "agent", "--sign", "--out", out.to_str().unwrap()]);
        for g in *grants {
            args.extend_from_slice(&["--grant", g]);
        }
        t(h, &args).expect_code(0);
        t(h, &["plugin", "install", "--yes", out.to_str().unwrap()]).expect_code(0);
    }
    home
}

fn spawner() -> PathBuf {
    agent("spawner")
}

/// Runs the spawner from its file with `input` and `flags`; its JSON report.
fn run(home: &Path, input: &Value, flags: &[&str]) -> Value {
    let spawner = spawner();
    let input = input.to_string();
    let mut args = vec!["run", "--json", "--input", input.as_str()];
    args.extend_from_slice(flags);
    args.push(spawner.to_str().unwrap());
    let r = t(home, &args);
    r.report()
}

fn result(report: &Value) -> Value {
    serde_json::from_str(report["result"].as_str().unwrap_or_else(|| panic!("no result: {report}"))).unwrap()
}

fn events(home: &Path, kind: &str) -> Vec<Value> {
    let r = t(home, &["events", "--json", "--kind", kind]);
    r.expect_code(0);
    r.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn one(input_of: &str, input: Value) -> Value {
    json!({ "spawn": [{ "agent": input_of, "input": input }] })
}

#[test]
fn a_granted_spawn_returns_the_childs_output_and_without_the_grant_it_is_refused_and_recorded() {
    let home = home_with(&[("hello", "hello-rust", &[])]);
    let h = home.path();
    let input = one("hello", json!({ "name": "Ada" }));

    let report = run(h, &input, &["--allow-spawn", "hello"]);
    assert_eq!(report["outcome"], "success", "{report}");
    let out = result(&report);
    assert_eq!(out["results"][0]["ok"]["greeting"], "Hello, Ada!", "{out}");
    // In the log: the parent's `agent.spawned`, and the child as a run of its own that names its parent.
    let parent = report["run_id"].as_str().unwrap();
    let spawned = events(h, "agent.spawned");
    assert_eq!(spawned.len(), 1, "{spawned:?}");
    assert_eq!(spawned[0]["run_id"], parent);
    let child = spawned[0]["payload"]["child_run"].as_str().unwrap().to_string();
    let started: Vec<Value> = events(h, "run.started").into_iter().filter(|e| e["run_id"] == child).collect();
    assert_eq!(started.len(), 1);
    assert_eq!(started[0]["agent"], "hello");
    assert_eq!(started[0]["payload"]["parent"], parent);
    assert_eq!(started[0]["payload"]["depth"], 1);
    let completed: Vec<Value> = events(h, "run.completed").into_iter().filter(|e| e["run_id"] == child).collect();
    assert_eq!(completed.len(), 1, "the child's ending is recorded");
    assert_eq!(completed[0]["payload"]["parent"], parent);
    assert!(events(h, "grant.refused").is_empty());

    // The same spawn without the grant: an error value for the parent (which still completes), and a record.
    let report = run(h, &input, &[]);
    assert_eq!(report["outcome"], "success", "a refused spawn never fails the parent: {report}");
    let out = result(&report);
    assert_eq!(out["results"][0]["error"]["kind"], "denied", "{out}");
    assert!(out["results"][0]["error"]["message"].as_str().unwrap().contains("spawn:hello"), "{out}");
    let refused = events(h, "grant.refused");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["agent"], "hello");
    assert_eq!(refused[0]["payload"]["parent"], report["run_id"]);
    assert_eq!(events(h, "agent.spawned").len(), 1, "no second child started");

    // A grant for a name that is not installed: not found, and nothing ran either.
    let report = run(h, &one("nobody", json!({})), &["--allow-spawn", "nobody"]);
    let out = result(&report);
    assert_eq!(out["results"][0]["error"]["kind"], "not-found", "{out}");
    t(h, &["events", "verify"]).expect_code(0);
}

/// `{"spawn": [{"agent": "spawner", "input": ...}]}` nested `levels` deep, the innermost spawning `hello`.
fn nested(levels: usize) -> Value {
    let mut input = one("hello", json!({ "name": "deep" }));
    for _ in 0..levels {
        input = one("spawner", input);
    }
    input
}

/// The innermost result of a nested spawn: each level's first result, until one is not `ok` of a spawner.
fn innermost(mut out: Value, levels: usize) -> Value {
    for _ in 0..levels {
        out = out["results"][0]["ok"].clone();
    }
    out["results"][0].clone()
}

#[test]
fn spawn_depth_is_capped_with_a_limit_event_and_the_level_below_the_cap_runs() {
    // The installed spawner may itself spawn spawners and hellos (it declares so); each child still needs its
    // parent to hold those grants.
    let home = home_with(&[("hello", "hello-rust", &[]), ("spawner", "spawner", &["spawn:spawner", "spawn:hello"])]);
    let h = home.path();
    let grants = ["--allow-spawn", "spawner", "--allow-spawn", "hello", "--max-spawn-depth", "2"];
    // Depth 2: root -> spawner (1) -> hello (2): allowed.
    let report = run(h, &nested(1), &grants);
    let out = result(&report);
    assert_eq!(innermost(out.clone(), 1)["ok"]["greeting"], "Hello, deep!", "{out}");
    assert!(events(h, "limit.reached").is_empty());
    // Depth 3: root -> spawner (1) -> spawner (2) -> hello (3): refused at the deepest level only.
    let report = run(h, &nested(2), &grants);
    assert_eq!(report["outcome"], "success", "{report}");
    let out = result(&report);
    let deepest = innermost(out.clone(), 2);
    assert_eq!(deepest["error"]["kind"], "limit", "{out}");
    assert!(deepest["error"]["message"].as_str().unwrap().contains("at most 2 deep"), "{deepest}");
    let limits = events(h, "limit.reached");
    assert_eq!(limits.len(), 1, "{limits:?}");
    assert_eq!(limits[0]["payload"]["limit"], "spawn-depth");
    assert_eq!(limits[0]["payload"]["cap"], 2);
    assert_eq!(limits[0]["agent"], "spawner", "recorded on the depth-2 spawner's run");
    // A child cannot raise the cap it inherited: the default (3) would allow depth 3, but the root said 2.
    let report = run(h, &nested(2), &["--allow-spawn", "spawner", "--allow-spawn", "hello"]);
    assert_eq!(innermost(result(&report), 2)["ok"]["greeting"], "Hello, deep!", "the default cap is 3");
}

#[test]
fn fan_out_is_capped_per_run_and_refused_attempts_count() {
    let home = home_with(&[("hello", "hello-rust", &[])]);
    let h = home.path();
    let three = json!({ "spawn": [
        { "agent": "hello", "input": { "name": "a" } },
        { "agent": "hello", "input": { "name": "b" } },
        { "agent": "hello", "input": { "name": "c" } },
    ]});
    let report = run(h, &three, &["--allow-spawn", "hello", "--max-spawns", "2"]);
    let out = result(&report);
    assert_eq!(out["results"][0]["ok"]["greeting"], "Hello, a!", "{out}");
    assert_eq!(out["results"][1]["ok"]["greeting"], "Hello, b!", "{out}");
    assert_eq!(out["results"][2]["error"]["kind"], "limit", "{out}");
    assert!(out["results"][2]["error"]["message"].as_str().unwrap().contains("at most 2 agents"), "{out}");
    let limits = events(h, "limit.reached");
    assert_eq!(limits.len(), 1);
    assert_eq!(limits[0]["payload"]["limit"], "spawns");
    assert_eq!(limits[0]["run_id"], report["run_id"]);
    assert_eq!(events(h, "agent.spawned").len(), 2);
    // Control: a cap of 3 lets all three run.
    let out = result(&run(h, &three, &["--allow-spawn", "hello", "--max-spawns", "3"]));
    assert_eq!(out["results"][2]["ok"]["greeting"], "Hello, c!", "{out}");
    // Refused attempts count too: a flood of ungranted spawns stops at the cap, with one record per attempt.
    let flood = json!({ "spawn": vec![json!({ "agent": "hello" }); 10] });
    let out = result(&run(h, &flood, &["--max-spawns", "4"]));
    let kinds: Vec<&str> =
        out["results"].as_array().unwrap().iter().map(|r| r["error"]["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds[..4], ["denied"; 4], "{kinds:?}");
    assert!(kinds[4..].iter().all(|k| *k == "limit"), "{kinds:?}");
    assert_eq!(events(h, "grant.refused").len(), 4, "refusals past the cap are not recorded one by one");
}

#[test]
fn a_child_gets_at_most_what_it_declares_and_its_parent_has() {
    // `envy` declares SECRET, OTHER and the right to spawn hello; `plain` declares nothing.
    let home = home_with(&[
        ("hello", "hello-rust", &[]),
        ("envy", "spawner", &["env:SECRET", "env:OTHER", "spawn:hello"]),
        ("plain", "spawner", &[]),
    ]);
    let h = home.path();
    let probe = json!({ "env": ["SECRET", "OTHER"], "spawn": [{ "agent": "hello", "input": { "name": "x" } }] });
    let input = json!({ "spawn": [{ "agent": "envy", "input": probe }, { "agent": "plain", "input": probe }] });

    // The parent has SECRET and may spawn hello: envy gets both; OTHER, which the parent lacks, it does not get;
    // plain gets nothing it did not declare.
    let rich = ["--allow-spawn", "envy", "--allow-spawn", "plain", "--allow-spawn", "hello", "--env", "SECRET=s1"];
    let out = result(&run(h, &input, &rich));
    let envy = &out["results"][0]["ok"];
    assert_eq!(envy["env"]["SECRET"], "s1", "{out}");
    assert_eq!(envy["env"]["OTHER"], Value::Null, "declared, but the parent does not have it: {out}");
    assert_eq!(envy["results"][0]["ok"]["greeting"], "Hello, x!", "{out}");
    let plain = &out["results"][1]["ok"];
    assert_eq!(plain["env"]["SECRET"], Value::Null, "not declared: {out}");
    assert_eq!(plain["results"][0]["error"]["kind"], "denied", "not declared: {out}");

    // The parent without SECRET and without spawn:hello: envy gets neither, whatever it declares.
    let poor = ["--allow-spawn", "envy", "--allow-spawn", "plain"];
    let out = result(&run(h, &input, &poor));
    let envy = &out["results"][0]["ok"];
    assert_eq!(envy["env"]["SECRET"], Value::Null, "{out}");
    assert_eq!(envy["results"][0]["error"]["kind"], "denied", "{out}");
    assert!(envy["results"][0]["error"]["message"].as_str().unwrap().contains("spawn:hello"), "{out}");

    // The child's token is the parent's narrowed: a parent under a token without spawn:hello cannot hand one on.
    let mint = t(h, &["token", "mint", "--agent", "spawner", "--grant", "spawn:envy", "--grant", "env:SECRET"]);
    mint.expect_code(0);
    let token = mint.stdout.trim().to_string();
    let out = result(&run(h, &input, &["--token", &token, "--env", "SECRET=s2"]));
    let envy = &out["results"][0]["ok"];
    assert_eq!(envy["env"]["SECRET"], "s2", "{out}");
    assert_eq!(envy["results"][0]["error"]["kind"], "denied", "{out}");
    assert_eq!(out["results"][1]["error"]["kind"], "denied", "plain is not granted by the token: {out}");
}

#[test]
fn a_childs_fuel_is_charged_to_its_parent() {
    let home = home_with(&[("busy", "busy", &[])]);
    let h = home.path();
    let work = one("busy", json!({ "n": 2_000_000 }));
    let alone = run(h, &json!({}), &[]);
    let with_child = run(h, &work, &["--allow-spawn", "busy"]);
    assert_eq!(with_child["outcome"], "success", "{with_child}");
    assert_eq!(result(&with_child)["results"][0]["ok"]["rounds"], 2_000_000);
    let child = events(h, "run.completed").into_iter().find(|e| e["agent"] == "busy").expect("the child's ending");
    let child_fuel = child["payload"]["fuel"].as_u64().unwrap();
    let (parent, own) = (with_child["fuel_consumed"].as_u64().unwrap(), alone["fuel_consumed"].as_u64().unwrap());
    assert!(child_fuel > 10_000_000, "busy burns fuel: {child_fuel}");
    assert!(parent >= own + child_fuel, "parent {parent} = its own ~{own} + the child's {child_fuel}");
    assert!(parent < own + child_fuel + 5_000_000, "parent {parent}, own {own}, child {child_fuel}");

    // A child that would need more than the parent has left gets only that, and the parent has nothing left.
    let budget = (own + child_fuel / 2).to_string();
    let starved = run(h, &work, &["--allow-spawn", "busy", "--fuel", &budget]);
    assert_eq!(starved["outcome"], "out-of-fuel", "the parent has no fuel left after its child: {starved}");
    let failed = events(h, "run.failed").into_iter().find(|e| e["agent"] == "busy").expect("the child failed");
    assert_eq!(failed["payload"]["outcome"], "out-of-fuel", "{failed}");
    // Control: the same budget without the child completes.
    let control = run(h, &json!({}), &["--fuel", &budget]);
    assert_eq!(control["outcome"], "success", "{control}");
}

/// The run ids of the completed runs of `task_id` (a task runs once).
fn task_runs(home: &Path, task_id: &str) -> Vec<Value> {
    events(home, "run.started").into_iter().filter(|e| e["payload"]["task_id"] == task_id).collect()
}

#[test]
fn scheduled_tasks_run_under_serve_when_due_and_survive_a_restart() {
    use crate::service::Server;
    use std::time::{Duration, Instant};
    let home = home_with(&[("hello", "hello-rust", &[])]);
    let h = home.path();
    // Scheduled by a run of its own (no service yet): `soon` is due at once, `later` in 10 s.
    let input = json!({ "schedule": [
        { "agent": "hello", "input": { "name": "soon" }, "delay_ms": 0 },
        { "agent": "hello", "input": { "name": "later" }, "delay_ms": 10_000 },
    ]});
    let out = result(&run(h, &input, &["--allow-spawn", "hello"]));
    let soon = out["scheduled"][0]["ok"].as_str().unwrap_or_else(|| panic!("{out}")).to_string();
    let later = out["scheduled"][1]["ok"].as_str().unwrap_or_else(|| panic!("{out}")).to_string();
    let scheduled = events(h, "task.scheduled");
    assert_eq!(scheduled.len(), 2, "{scheduled:?}");
    assert!(scheduled[1]["payload"]["due_ms"].as_u64().unwrap() >= scheduled[1]["time_ms"].as_u64().unwrap() + 9_000);
    assert!(task_runs(h, &soon).is_empty(), "nothing runs a task without a service");

    // A service started afterwards finds `soon` in the log and runs it; `later` is not due yet.
    let mut server = Server::start_in(home, &[]);
    let h = server.home().to_path_buf();
    let ended = toka_tests::wait_for(Duration::from_secs(30), || {
        events(&h, "run.completed")
            .into_iter()
            .find(|e| e["agent"] == "hello" && task_runs(&h, &soon).iter().any(|s| s["run_id"] == e["run_id"]))
    })
    .expect("the due task ran");
    assert!(ended["payload"]["result"].as_str().unwrap().contains("Hello, soon!"), "{ended}");
    assert!(task_runs(&h, &later).is_empty(), "a task never starts before it is due");
    // Restarted before `later` is due: the new process runs it, and does not run `soon` again.
    let started = Instant::now();
    server.restart(|_| ());
    toka_tests::wait_for(Duration::from_secs(30), || (task_runs(&h, &later).len() == 1).then_some(()))
        .expect("the task scheduled before the restart ran after it");
    assert!(started.elapsed() < Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(task_runs(&h, &soon).len(), 1, "a task runs once");
    assert_eq!(task_runs(&h, &later).len(), 1, "a task runs once");
    let done = events(&h, "run.completed");
    assert!(done.iter().any(|e| e["payload"]["result"].as_str().is_some_and(|r| r.contains("Hello, later!"))));
    t(&h, &["events", "verify"]).expect_code(0);
    drop(server);
}

/// The ending event (`run.completed` or `run.failed`) of each run of task `task_id`.
fn task_run_ends(home: &Path, task_id: &str) -> Vec<Value> {
    let runs: Vec<Value> = task_runs(home, task_id).iter().map(|r| r["run_id"].clone()).collect();
    let mut ends = events(home, "run.completed");
    ends.extend(events(home, "run.failed"));
    ends.into_iter().filter(|e| runs.contains(&e["run_id"])).collect()
}

#[test]
fn a_task_running_when_serve_stops_is_cancelled_and_one_a_killed_server_left_is_recorded_interrupted_not_rerun() {
    use crate::service::Server;
    use std::time::{Duration, Instant};
    let home = home_with(&[("hello", "hello-rust", &[]), ("spin", "busy", &[])]);
    let h = home.path();
    let long = json!({ "agent": "spin", "input": { "n": 100_000_000_000u64 }, "delay_ms": 0 });
    let schedule = |h: &Path, tasks: Value| {
        let flags = ["--allow-spawn", "hello", "--allow-spawn", "spin", "--fuel", "1000000000000", "--timeout", "10m"];
        let out = result(&run(h, &json!({ "schedule": tasks }), &flags));
        out["scheduled"].as_array().unwrap().iter().map(|s| s["ok"].as_str().unwrap().to_string()).collect::<Vec<_>>()
    };
    // A quick task (the control: it completes) and a long one, due at once.
    let ids = schedule(h, json!([{ "agent": "hello", "input": { "name": "quick" }, "delay_ms": 0 }, long.clone()]));
    let (quick, spin) = (ids[0].clone(), ids[1].clone());
    let mut server = Server::start_in(home, &["--shutdown-grace", "500ms"]);
    let h = server.home().to_path_buf();
    toka_tests::wait_for(Duration::from_secs(30), || {
        (task_run_ends(&h, &quick).len() == 1 && task_runs(&h, &spin).len() == 1).then_some(())
    })
    .expect("the quick task ended and the long one started");
    assert_eq!(task_run_ends(&h, &quick)[0]["kind"], "run.completed");
    // Stopped mid-task: the long task's run is cancelled and recorded, within the grace period and a little.
    let stopping = Instant::now();
    assert_eq!(server.terminate(), Some(0));
    assert!(stopping.elapsed() < Duration::from_secs(8), "shutdown took {:?}", stopping.elapsed());
    let ends = task_run_ends(&h, &spin);
    assert_eq!(ends.len(), 1, "the task's run has an end: {ends:?}");
    assert_eq!(ends[0]["kind"], "run.failed");
    assert_eq!(ends[0]["payload"]["outcome"], "cancelled", "{}", ends[0]);

    // A server killed mid-task leaves it running: the next server records it interrupted, and does not run it again.
    let again = schedule(&h, json!([long]));
    let again = again[0].clone();
    server.restart(|_| ());
    toka_tests::wait_for(Duration::from_secs(30), || (task_runs(&h, &again).len() == 1).then_some(()))
        .expect("the second long task started");
    server.kill_and_restart();
    let ended = toka_tests::wait_for(Duration::from_secs(30), || {
        let ends = task_run_ends(&h, &again);
        (!ends.is_empty()).then_some(ends)
    })
    .expect("the interrupted task was recorded by the next server");
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0]["payload"]["outcome"], "interrupted", "{}", ended[0]);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(task_runs(&h, &again).len(), 1, "an interrupted task is not run again");
    assert_eq!(task_runs(&h, &spin).len(), 1, "nor is a cancelled one");
    t(&h, &["events", "verify"]).expect_code(0);
}

#[test]
fn scheduling_needs_the_spawn_grant_and_pending_tasks_are_capped_per_run() {
    let home = home_with(&[("hello", "hello-rust", &[])]);
    let h = home.path();
    let many = json!({ "schedule": vec![json!({ "agent": "hello", "delay_ms": 3_600_000 }); 17] });
    let out = result(&run(h, &many, &["--allow-spawn", "hello"]));
    let kinds: Vec<String> = out["scheduled"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| if r["ok"].is_string() { "ok".into() } else { r["error"]["kind"].as_str().unwrap().to_string() })
        .collect();
    assert_eq!(kinds[..16], vec!["ok".to_string(); 16], "{out}");
    assert_eq!(kinds[16], "limit", "{out}");
    assert!(out["scheduled"][16]["error"]["message"].as_str().unwrap().contains("at most 16"), "{out}");
    assert_eq!(events(h, "task.scheduled").len(), 16);
    // Without the grant: refused, and nothing is queued.
    let one = json!({ "schedule": [{ "agent": "hello", "delay_ms": 10 }] });
    let out = result(&run(h, &one, &[]));
    assert_eq!(out["scheduled"][0]["error"]["kind"], "denied", "{out}");
    assert_eq!(events(h, "task.scheduled").len(), 16);
    // Another run has its own allowance (control).
    let out = result(&run(h, &one, &["--allow-spawn", "hello"]));
    assert!(out["scheduled"][0]["ok"].is_string(), "{out}");
}

/// A task acts on the scheduling token's authority when it starts, so that authority must hold at the due time: a
/// token that expires in two minutes cannot schedule a task an hour ahead (denied, nothing queued), and can one ten
/// seconds ahead (control, same token and run).
#[test]
fn a_token_cannot_schedule_a_task_past_its_own_expiry() {
    let home = home_with(&[("hello", "hello-rust", &[])]);
    let h = home.path();
    t(h, &["key", "init"]).expect_code(0);
    let token = t(h, &["token", "mint", "--agent", "spawner", "--grant", "spawn:hello", "--ttl", "2m"]);
    token.expect_code(0);
    let token = token.stdout.trim().to_string();
    let input = json!({ "schedule": [
        { "agent": "hello", "delay_ms": 3_600_000 },
        { "agent": "hello", "delay_ms": 10_000 },
    ] });
    let out = result(&run(h, &input, &["--token", &token, "--allow-spawn", "hello"]));
    assert_eq!(out["scheduled"][0]["error"]["kind"], "denied", "{out}");
    let message = out["scheduled"][0]["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("grant refused at the task's due time, 3600000 ms from now: "), "{message}");
    assert!(out["scheduled"][1]["ok"].is_string(), "{out}");
    assert_eq!(events(h, "task.scheduled").len(), 1);
}
