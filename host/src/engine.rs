//! The wasmtime engine, its linker and the epoch ticker: settings that every run of a host process shares.
//!
//! Fuel metering and epoch interruption are always compiled in, so one compiled artifact serves every run and a
//! run's fuel budget and deadline are per-store settings. Compiled components are cached on disk by wasmtime's
//! cache, keyed by the sha256 of the wasm bytes together with the engine's compiler settings, so a second run of the
//! same file skips Cranelift entirely.

use crate::sandbox::SandboxState;
use std::path::{Path, PathBuf};
use std::time::Duration;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Cache, CacheConfig, Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances. Deadlines are precise to about this much.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Meter fuel (on by default; off only for comparisons).
    pub fuel: bool,
    /// Where compiled components are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Use the pooling instance allocator: pre-reserved slots make repeated instantiation cheap. Worth it when one
    /// process runs many instances (`--repeat`, servers, benches); a single run is faster without the reservation.
    pub pooling: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { fuel: true, cache_dir: default_cache_dir(), pooling: false }
    }
}

/// `$TOKA_CACHE_DIR`, else `$XDG_CACHE_HOME/toka-host`, else `~/.cache/toka-host`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("TOKA_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(Path::new(&dir).join("toka-host"));
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache").join("toka-host"))
}

/// Largest linear memory a single memory may reach in the pooling allocator (the per-run `--max-memory` applies
/// on top, through the store's limiter).
const POOL_MAX_MEMORY: usize = 1 << 32;

/// Bytes of each pooled linear memory kept resident between instances (see the pooling settings): the memory a small
/// tool or agent touches (a Rust guest's 1 MiB stack and its first heap pages). At most this much per slot in use
/// stays resident after its instance is gone.
const KEEP_RESIDENT: usize = 2 << 20;

/// A preview 1 `proc_exit` with a status outside `0..126`: refused by WASI, so the program ends with status 1.
#[derive(Debug)]
pub struct InvalidExitStatus(pub i32);

impl std::fmt::Display for InvalidExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "proc_exit({}): exit status outside of 0..126", self.0)
    }
}

impl std::error::Error for InvalidExitStatus {}

/// An engine with its linker. Dropping it stops the epoch ticker.
pub struct HostEngine {
    pub engine: Engine,
    /// The component linker, once built (see [`HostEngine::linker`]).
    linker: std::sync::OnceLock<Linker<SandboxState>>,
    /// The linker of preview 1 core modules, once one was loaded (see [`HostEngine::module_linker`]).
    module_linker: std::sync::OnceLock<wasmtime::Linker<SandboxState>>,
    /// Whether stores of this engine meter fuel.
    pub fuel: bool,
    /// Where compiled components and preview 1 modules are cached, if anywhere.
    pub cache_dir: Option<PathBuf>,
    cache: Option<Cache>,
    /// What vouches for the cache's contents (see [`crate::cache_auth`]); present whenever the cache is.
    pub cache_auth: Option<crate::cache_auth::CacheAuth>,
    /// Where a long compile is said (silent unless a face chose otherwise).
    pub progress: std::sync::Arc<dyn crate::progress::Progress>,
    /// The engine of WASI 0.3 commands, once one was loaded (see [`HostEngine::p3`]).
    p3: std::sync::OnceLock<P3Engine>,
}

/// The engine and linker that WASI 0.3 commands are compiled, linked and run on.
pub struct P3Engine {
    pub engine: Engine,
    pub linker: Linker<SandboxState>,
}

impl HostEngine {
    pub fn new(options: &EngineOptions) -> anyhow::Result<Self> {
        HostEngine::with_cache_auth(options, HostEngine::cache_auth(options)?)
    }

    /// What vouches for the compile cache of `options` ([`crate::cache_auth::CacheAuth::open`]): `None` without a
    /// cache, and (with a warning) when it cannot be opened, in which case the engine runs without the cache.
    pub fn cache_auth(options: &EngineOptions) -> anyhow::Result<Option<crate::cache_auth::CacheAuth>> {
        Ok(match &options.cache_dir {
            Some(dir) => match crate::cache_auth::CacheAuth::open(&absolute(dir)?) {
                Ok(auth) => Some(auth),
                Err(e) => {
                    eprintln!("toka-host: warning: running without the compile cache: {e}");
                    None
                }
            },
            None => None,
        })
    }

    /// [`HostEngine::new`], with [`HostEngine::cache_auth`] of `options` already opened: the engine uses the compile
    /// cache if and only if `cache_auth` is there.
    pub fn with_cache_auth(
        options: &EngineOptions,
        cache_auth: Option<crate::cache_auth::CacheAuth>,
    ) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        // Not on this engine: with concurrency support every component call goes through wasmtime's concurrent
        // event loop, which cost every preview 2 run about 5 us (the warm-run bench, 24 -> 30 us). WASI 0.3
        // components get an engine of their own ([`HostEngine::p3`]).
        config.concurrency_support(false);
        config.consume_fuel(options.fuel);
        config.epoch_interruption(true);
        // A cache the host cannot authenticate is not used at all: compiled code is loaded only if the host vouches
        // for it.
        let cache_dir = cache_auth.as_ref().and(options.cache_dir.clone());
        let cache = match &cache_dir {
            Some(dir) => {
                let mut cc = CacheConfig::new();
                // wasmtime owns (and garbage-collects) its own subdirectory.
                cc.with_directory(absolute(dir)?.join("compiled"));
                // wasmtime's cache worker rewrites an artifact used 256 times with a stronger compression (zstd 20),
                // from a thread of whatever process loaded it: seconds of CPU taken from that process's guests for
                // a large component, and a file `CacheAuth` no longer vouches for, so the next process deleted it
                // and compiled the component again. Never: the artifacts stay as the host wrote and authenticated
                // them.
                cc.with_optimized_compression_usage_counter_threshold(u64::MAX);
                let cache = Cache::new(cc)?;
                config.cache(Some(cache.clone()));
                Some(cache)
            }
            None => None,
        };
        if options.pooling {
            let mut pool = PoolingAllocationConfig::default();
            pool.total_component_instances(64)
                .total_core_instances(512)
                .total_memories(256)
                .total_tables(512)
                .total_stacks(64)
                .max_memories_per_component(16)
                .max_tables_per_component(32)
                .max_core_instances_per_component(64)
                .max_component_instance_size(1 << 20)
                .max_core_instance_size(1 << 20)
                .table_elements(100_000)
                .max_memory_size(POOL_MAX_MEMORY)
                // Resetting a slot for its next instance: with the kernel's PAGEMAP_SCAN (Linux 6.7+; wasmtime falls
                // back without it) only the pages the last instance wrote are found, and up to KEEP_RESIDENT of
                // them are restored in place instead of being given back with madvise and faulted in again by the
                // next instance. Measured on the tools bench (echo tool, 2 cores): 36 -> 21 us per call, plain
                // wasmtime on the same engine 25 -> 12 us; the table setting made no difference.
                .pagemap_scan(wasmtime::Enabled::Auto)
                .linear_memory_keep_resident(KEEP_RESIDENT);
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&config)?;
        start_epoch_ticker(&engine)?;
        let progress = std::sync::Arc::new(crate::progress::Silent);
        Ok(HostEngine {
            engine,
            linker: std::sync::OnceLock::new(),
            module_linker: std::sync::OnceLock::new(),
            fuel: options.fuel,
            cache_dir,
            cache,
            cache_auth,
            progress,
            p3: std::sync::OnceLock::new(),
        })
    }

    /// The component linker: WASI 0.2, name lookups that answer granted names only, and the toka interfaces. Built on
    /// first use, so that a process can start loading a component before it is built (`toka-host run` builds it on
    /// its main thread while the component loads; the load needs it only at the end).
    pub fn linker(&self) -> anyhow::Result<&Linker<SandboxState>> {
        if let Some(linker) = self.linker.get() {
            return Ok(linker);
        }
        let mut linker = Linker::new(&self.engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        // Name lookups answer granted names only (replaces wasmtime-wasi's resolver; see `sandbox::net`).
        crate::sandbox::net::add_to_linker(&mut linker)?;
        add_toka_to_linker(&mut linker, self.fuel)?;
        // Two threads racing here build two linkers; one is kept.
        Ok(self.linker.get_or_init(|| linker))
    }

    /// The linker of preview 1 core modules: `wasi_snapshot_preview1` only, on the same store state as components.
    /// Built on first use: most processes never run a core module, and building it took about a tenth of a
    /// millisecond of every run's start.
    pub fn module_linker(&self) -> anyhow::Result<&wasmtime::Linker<SandboxState>> {
        if let Some(linker) = self.module_linker.get() {
            return Ok(linker);
        }
        // Preview 1 programs run on wasmtime-wasi's own preview 1 implementation, as under `wasmtime run`: no
        // adapter in between, so they behave exactly as there. They import nothing else (checked when loaded).
        let mut linker = wasmtime::Linker::new(&self.engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, SandboxState::preview1)?;
        // wasmtime-wasi's `proc_exit` refuses a status of 126 and up with an untyped error; ours ends the same way
        // with a typed one, so that a run tells it from a host failure without reading the message.
        linker.allow_shadowing(true);
        linker.func_wrap("wasi_snapshot_preview1", "proc_exit", |status: i32| -> wasmtime::Result<()> {
            match u32::try_from(status) {
                Ok(code) if code < 126 => Err(wasmtime_wasi::I32Exit(status).into()),
                _ => Err(InvalidExitStatus(status).into()),
            }
        })?;
        linker.allow_shadowing(false);
        // Two threads racing here build two linkers; one is kept.
        Ok(self.module_linker.get_or_init(|| linker))
    }

    /// The engine and linker of WASI 0.3 programs (commands, agents whose `run` is async, tools whose `invoke` is),
    /// built on first use (most processes never run one).
    ///
    /// The same fuel, epoch and cache settings as [`HostEngine::engine`], plus the component model's async ABI and
    /// concurrency support; no pooling allocator (a WASI 0.3 command runs once per process or rarely). Its linker
    /// has WASI 0.2 and 0.3 (`@0.3.0` interfaces) on the same WASI context: the same preopens and permissions,
    /// environment, arguments, capped stdout and stderr, ungranted stdin, socket address check and random and clock
    /// sources; both name lookups are replaced by [`crate::sandbox::net`]'s. And the toka interfaces, on the same
    /// implementations as the main engine's.
    pub fn p3(&self) -> anyhow::Result<&P3Engine> {
        if let Some(p3) = self.p3.get() {
            return Ok(p3);
        }
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.wasm_component_model_async(true);
        config.concurrency_support(true);
        config.consume_fuel(self.fuel);
        config.epoch_interruption(true);
        if let Some(cache) = &self.cache {
            config.cache(Some(cache.clone()));
        }
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        crate::sandbox::net::add_to_linker(&mut linker)?;
        wasmtime_wasi::p3::add_to_linker(&mut linker)?;
        crate::sandbox::net::add_p3_to_linker(&mut linker)?;
        // Agents and tools whose WASI is 0.3 (`toka:agent-async`) import the toka interfaces too.
        add_toka_to_linker(&mut linker, self.fuel)?;
        start_epoch_ticker(&engine)?;
        // Two threads racing here build two engines; one is kept, the other dropped (its ticker stops with it).
        Ok(self.p3.get_or_init(|| P3Engine { engine, linker }))
    }

    /// Says long compiles through `progress` (a face's choice: a spinner, plain lines, log records).
    pub fn with_progress(mut self, progress: std::sync::Arc<dyn crate::progress::Progress>) -> Self {
        self.progress = progress;
        self
    }

    /// Compilations served from the on-disk cache so far in this process.
    pub fn cache_hits(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.cache_hits())
    }
}

/// The toka interfaces (`log`, `events`, `state`, `llm`, `tools`, `spawn`) on `linker`: the same implementations for
/// every world and both engines.
fn add_toka_to_linker(linker: &mut Linker<SandboxState>, fuel: bool) -> anyhow::Result<()> {
    crate::bindings::agent::toka::agent::log::add_to_linker::<_, HasSelf<_>>(linker, |s: &mut SandboxState| {
        &mut s.log
    })?;
    crate::bindings::agent::toka::agent::events::add_to_linker::<_, HasSelf<_>>(linker, |s: &mut SandboxState| {
        &mut s.observer
    })?;
    crate::bindings::agent::toka::agent::state::add_to_linker::<_, HasSelf<_>>(linker, |s: &mut SandboxState| {
        &mut s.state
    })?;
    // Tools, models and child agents are served above the sandbox; these reach them through the traits the sandbox defines.
    crate::sandbox::caps::llm::add_to_linker(linker)?;
    crate::sandbox::caps::tools::add_to_linker(linker, fuel)?;
    crate::sandbox::caps::spawn::add_to_linker(linker, fuel)?;
    Ok(())
}

fn absolute(dir: &Path) -> anyhow::Result<PathBuf> {
    Ok(if dir.is_absolute() { dir.to_path_buf() } else { std::env::current_dir()?.join(dir) })
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until the engine is dropped.
/// It also looks after long work's progress ([`crate::progress::look`]): a process with an engine needs no thread of
/// its own to wait out progress delays.
fn start_epoch_ticker(engine: &Engine) -> std::io::Result<()> {
    let weak = engine.weak();
    crate::progress::looker_started();
    let ticker = std::thread::Builder::new().name("toka-epoch".into()).spawn(move || {
        loop {
            std::thread::sleep(EPOCH_TICK);
            let Some(engine) = weak.upgrade() else { break };
            engine.increment_epoch();
            drop(engine);
            crate::progress::look();
        }
        crate::progress::looker_stopped();
    });
    if ticker.is_err() {
        crate::progress::looker_stopped();
    }
    ticker.map(drop)
}
