//! Shared pieces of the benches: where the components are, and a plain-wasmtime baseline host.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use toka_host::bindings::LogLevel;
use toka_host::bindings::agent::toka::agent::log;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// A component built from `agents/<name>` by `cargo run --release -p xtask -- build-agents`.
pub fn agent(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/agents").join(format!("{name}.wasm"));
    assert!(p.exists(), "{} is missing: run `cargo run --release -p xtask -- build-agents` first", p.display());
    p
}

/// A tool component built from `agents/<name>` into `target/tools/`.
pub fn tool_component(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools").join(format!("{name}.wasm"));
    assert!(p.exists(), "{} is missing: run `cargo run --release -p xtask -- build-agents` first", p.display());
    p
}

/// The state of the baseline: what plain wasmtime needs to run the same agent, and nothing more.
pub struct Plain {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
}

impl WasiView for Plain {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl Plain {
    pub fn new() -> Self {
        Plain { wasi: WasiCtx::builder().build(), table: ResourceTable::new() }
    }
}

impl Default for Plain {
    fn default() -> Self {
        Self::new()
    }
}

impl log::Host for Plain {
    fn log(&mut self, _level: LogLevel, _message: String) {}
}

/// The mean time of `iters` calls of `f`.
pub fn mean(iters: u32, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed() / iters
}

/// Two sides measured in the same run on a busy machine: `rounds` rounds of `block` calls of each side back to back
/// (which side goes first alternates), so that load from other processes falls on both alike. Returns the median of
/// each side's per-round mean, and the median of the per-round ratios `a / b`.
pub fn paired(rounds: usize, block: u32, mut a: impl FnMut(), mut b: impl FnMut()) -> (Duration, Duration, f64) {
    let (mut ta, mut tb, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (x, y) = if round % 2 == 0 {
            let x = mean(block, &mut a);
            (x, mean(block, &mut b))
        } else {
            let y = mean(block, &mut b);
            (mean(block, &mut a), y)
        };
        ta.push(x);
        tb.push(y);
        ratios.push(x.as_secs_f64() / y.as_secs_f64());
    }
    ta.sort();
    tb.sort();
    ratios.sort_by(f64::total_cmp);
    (ta[rounds / 2], tb[rounds / 2], ratios[rounds / 2])
}

/// A toka-host tool host with the `echo` tool installed, and a caller whose token grants `tool:echo`: one tool-call
/// round trip is `rt.block_on(host.call(&caller, "echo", INPUT, fuel))`. The same component is also installed in the
/// reuse mode as `echo-reuse` (`tool add --reuse`): one call of it by the caller that holds `kept` is
/// `rt.block_on(host.call_kept(&caller, "echo-reuse", INPUT, fuel, Some(&kept)))`.
pub mod tool_call {
    use std::sync::Arc;
    use std::time::{Duration, Instant, SystemTime};
    use toka_host::engine::{EngineOptions, HostEngine};
    use toka_host::grants::Authorized;
    use toka_host::token::keys::KeyStore;
    use toka_host::token::{self, Grant, MintRequest, Verified};
    use toka_host::tools::call::{Caller, ToolHost};
    use toka_host::tools::registry::Registry;
    use toka_host::tools::reuse::KeptTools;

    /// The input every echo call sends (and gets back).
    pub const INPUT: &str = r#"{"message":"hello","n":42}"#;

    pub fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
    }

    pub struct Setup {
        _home: tempfile::TempDir,
        pub host: Arc<ToolHost>,
        pub caller: Caller,
        /// The caller's kept instances (for `echo-reuse`).
        pub kept: KeptTools,
    }

    pub fn setup(rt: &tokio::runtime::Runtime) -> Setup {
        let home = tempfile::tempdir().unwrap();
        let options = EngineOptions { fuel: true, cache_dir: None, pooling: true };
        let engine = Arc::new(HostEngine::new(&options).unwrap());
        let registry = Registry::open(home.path());
        let host = Arc::new(ToolHost::new(engine, registry.clone(), None));
        let (bytes, spec) = rt.block_on(host.describe_file(&super::tool_component("echo"))).unwrap();
        registry.add("echo", &bytes, spec.clone()).unwrap();
        registry.add_reusable("echo-reuse", &bytes, spec).unwrap();
        // In the home, as `toka-host key init` leaves it: each call re-reads the key's status from there.
        let (keys, ()) = KeyStore::update(home.path(), |k| k.init(0).map(drop)).unwrap();
        let request = MintRequest {
            agent: "bench".into(),
            grants: vec![Grant::parse("tool:echo").unwrap(), Grant::parse("tool:echo-reuse").unwrap()],
            ttl: Some(Duration::from_secs(3600)),
            ..MintRequest::default()
        };
        let text = token::mint(&keys, &request, SystemTime::now()).unwrap().to_base64().unwrap();
        // A long-running host's key file and manifests are older than the racy window of their cache (2 s,
        // `toka_host::filecache::RACY`), inside which every call reads them again: wait it out, so that the
        // benches measure the steady state.
        std::thread::sleep(toka_host::filecache::RACY + Duration::from_millis(100));
        let caller = Caller {
            agent: "bench".into(),
            run_id: None,
            token_id: "bench".into(),
            token: Arc::new(Verified::new(&keys, &text, SystemTime::now()).unwrap()),
            grants: Authorized::default(),
            rate: None,
            depth: 0,
            deadline: Instant::now() + Duration::from_secs(3600),
            max_memory: 64 << 20,
            component: None,
            plugin: None,
            budget: None,
            cancel: None,
            llm: None,
        };
        let kept = host.kept_tools();
        Setup { _home: home, host, caller, kept }
    }
}
