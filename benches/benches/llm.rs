//! Model gateway overhead per call: the same request to the same local provider (`toka_tests::llm_mock`, an axum
//! server on loopback that speaks OpenAI's Chat Completions), sent directly with reqwest and parsed, and sent
//! through toka-host's gateway (the token check, the request check, the wire translation, the provider's HTTP
//! engine), in the same run: once without an event log, once recording `llm.called` and `llm.completed` durably in a
//! real redb log (what every agent's call costs). Run with `cargo bench --locked --workspace --bench llm`.

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use toka_benches::mean;
use toka_host::db::Db;
use toka_host::events::{EventLog, GroupCommit};
use toka_host::llm::config::Config;
use toka_host::llm::types::{Message, Role};
use toka_host::llm::{Caller, Gateway, Request, RunTokens};
use toka_host::token::keys::KeyStore;
use toka_host::token::{self, Grant, MintRequest, Verified};

const KEY: &str = "sk-bench-key";

fn gateway(url: &str, log: Option<Arc<EventLog>>) -> Arc<Gateway> {
    let toml = format!(
        "[providers.local]\nkind = \"openai\"\nbase_url = \"{url}/v1\"\nkey_env = \"K\"\n[models.bench]\nprovider = \"local\"\nmodel = \"mock-model\"\n"
    );
    let config = Config::parse(&toml, &|_| Some(KEY.to_string())).unwrap();
    Arc::new(Gateway::new(config, log, false).unwrap())
}

fn caller() -> Caller {
    let mut keys = KeyStore::default();
    keys.init(0).unwrap();
    let request = MintRequest {
        agent: "bench".into(),
        grants: vec![Grant::parse("llm:bench").unwrap()],
        ttl: Some(Duration::from_secs(3600)),
        ..MintRequest::default()
    };
    let text = token::mint(&keys, &request, SystemTime::now()).unwrap().to_base64().unwrap();
    let token = Arc::new(Verified::new(&keys, &text, SystemTime::now()).unwrap());
    Caller {
        agent: "bench".into(),
        run_id: None,
        token_id: token.revocation_ids.last().unwrap().clone(),
        token,
        rate: None,
        component: None,
        deadline: Instant::now() + Duration::from_secs(24 * 3600),
        budget: None,
        tokens: Arc::new(RunTokens::new(u64::MAX)),
        cancel: None,
        confined: Vec::new(),
    }
}

fn overhead(c: &mut Criterion) {
    let mock = toka_tests::llm_mock::Mock::start(KEY);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(
        EventLog::open(Db::open(&dir.path().join("bench.redb")).unwrap(), GroupCommit::default(), None).unwrap(),
    );
    let bare = gateway(&mock.url(), None);
    let recorded = gateway(&mock.url(), Some(log));
    let caller = caller();
    let request = || Request {
        model: "bench".into(),
        messages: vec![Message::new(Role::User, "hello")],
        max_tokens: Some(64),
        ..Request::default()
    };
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("{}/v1/chat/completions", mock.url());
    let body = json!({ "model": "mock-model", "messages": [{ "role": "user", "content": "hello" }], "max_tokens": 64 });
    let direct = || {
        rt.block_on(async {
            let r = client.post(&url).bearer_auth(KEY).json(&body).send().await.unwrap();
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(v["choices"][0]["message"]["content"], "You said: hello");
        })
    };
    let through = |g: &Arc<Gateway>| {
        let r = rt.block_on(g.chat(&caller, request())).unwrap();
        assert_eq!(r.message.content, "You said: hello");
    };

    let mut group = c.benchmark_group("model call (local OpenAI-format provider)");
    group.bench_function("direct reqwest", |b| b.iter(direct));
    group.bench_function("gateway, no log", |b| b.iter(|| through(&bare)));
    group.bench_function("gateway, recorded", |b| b.iter(|| through(&recorded)));
    group.finish();
    let (d, g, r) = (mean(300, direct), mean(300, || through(&bare)), mean(100, || through(&recorded)));
    let us = |t: Duration| t.as_secs_f64() * 1e6;
    println!(
        "model call: direct {:.0} us, gateway {:.0} us (+{:.0} us), gateway recorded {:.0} us (+{:.0} us over direct)",
        us(d),
        us(g),
        us(g) - us(d),
        us(r),
        us(r) - us(d)
    );
}

criterion_group!(benches, overhead);
criterion_main!(benches);
