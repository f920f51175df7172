//! The host object: the one place that opens a toka home's parts (the database and its event log writer, the
//! engine with its compile cache, the tool registry and the tool host) and authorizes what is asked of them.
//!
//! Every face that runs guests (`run`, `tool call`, `mcp`, and the service to come) builds one [`Host`] and goes
//! through it, so a revocation written to a database is checked against that same database, and a grant is checked
//! against the same home whose state it must never cover. A face never opens the database, the keys or the cache its
//! own way.

use crate::component::World;
use crate::db::Db;
use crate::engine::{EngineOptions, HostEngine};
use crate::error::RunError;
use crate::events::{EventLog, GroupCommit};
use crate::grants::{self, Authorized, GrantRequest, Protected};
use crate::home::Home;
use crate::run::{Invocation, Limits, MAX_INPUT, Program, Runner, Started};
use crate::token::{RunAuthorization, RunRequest, TokenLimits, Unrevoked};
use crate::tools::call::ToolHost;
use crate::tools::registry::Registry;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where a run's component comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A file on the host (the agent is known by its file name).
    Path(PathBuf),
    /// Bytes handed over (an upload), under an agent name.
    Bytes { name: String, bytes: Arc<Vec<u8>> },
    /// An installed package (already verified against the home's trust), known by its name; `identity` is
    /// `PUBLISHER_KEY_ID/NAME`, what a token bound to the package checks.
    Plugin { name: String, identity: String, bytes: Arc<Vec<u8>> },
}

/// The limits a run asks for; `None` takes the token's ceiling (with a token), else the default.
#[derive(Debug, Clone, Default)]
pub struct LimitRequest {
    pub fuel: Option<u64>,
    pub timeout: Option<Duration>,
    pub max_memory: Option<u64>,
    pub max_output: Option<u64>,
    pub max_records: Option<u64>,
    /// Model tokens the run may use (the lower of this and the token's).
    pub llm_tokens: Option<u64>,
    /// How deep agents spawned from the run may nest, and how many one run may spawn (capped at
    /// [`crate::sandbox::limits::MAX_SPAWN_DEPTH`] and [`crate::sandbox::limits::MAX_SPAWNS`]).
    pub max_spawn_depth: Option<u32>,
    pub max_spawns: Option<u32>,
}

/// Everything a run asks for, whichever face it comes through (the CLI's flags, a JSON request).
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub source: Source,
    /// An agent's task id (default: a fresh one) and input (JSON text, default `{}`).
    pub task_id: Option<String>,
    pub input: Option<String>,
    /// A command's arguments.
    pub args: Vec<String>,
    pub grants: GrantRequest,
    /// The tools the run asks to call (`tool:NAME` grants).
    pub tools: Vec<String>,
    /// The models (or model patterns, `gpt-*`) the run asks to call (`llm:MODEL` grants).
    pub models: Vec<String>,
    /// The installed agents the run asks to spawn (`spawn:AGENT` grants).
    pub spawn: Vec<String>,
    pub limits: LimitRequest,
    /// The token's text; `None` mints one from the operator's own request with the local key (the CLI's way).
    pub token: Option<String>,
    /// The run's id, chosen before anything is checked so that every trace of the run carries it from the start
    /// (`None`: a fresh one).
    pub run_id: Option<String>,
}

/// A run that passed every check and may start.
#[derive(Clone)]
pub struct Ready {
    /// The id the run will be recorded under.
    pub run_id: String,
    pub program: Arc<Program>,
    pub invocation: Invocation,
    pub grants: Authorized,
    pub limits: Limits,
    /// The run's start, already submitted to the event log ([`Host::prepare_started`]); the run waits for it.
    pub started: Option<Started>,
}

/// A run refused by [`Host::prepare_started`]: why, and its start if that was already submitted (the refusal is
/// then recorded as the run's ending, [`Runner::record_refusal_after`]).
#[derive(Debug)]
pub struct Refused {
    pub error: RunError,
    pub started: Option<Started>,
}

impl From<RunError> for Refused {
    fn from(error: RunError) -> Self {
        Refused { error, started: None }
    }
}

/// The run [`Host::open_loading`] began, for [`Host::prepare_preloaded`] to finish.
struct Preloaded {
    spec: RunSpec,
    /// For a component file: the run begun on the load begun with the host (or why it could not be); `None`: the
    /// run is prepared as any other.
    begun: Option<Result<Begun, RunError>>,
}

/// What [`Host::prepare`] settles about a run before its component: its id, its input, its limits and its package.
struct Checked {
    run_id: String,
    input: Option<String>,
    limits: Limits,
    plugin: Option<String>,
}

/// A run of a component file whose load is under way: the file read, the run authorized for the digest of those
/// bytes (or why not), the invocation the world they declare takes, and the run's start if it was submitted. All
/// of it happens while the code loads.
struct Begun {
    checked: Checked,
    path: PathBuf,
    loading: Loading,
    agent: String,
    digest: String,
    authorized: Result<Authorized, RunError>,
    /// The token, until it is checked against the revocations ([`Begun::settle`]).
    unrevoked: Option<Unrevoked>,
    /// The world the file's own exports declare ([`crate::component::world_of`]), if they could be read.
    world: Option<World>,
    /// The run's start, once submitted ([`Begun::start`]), with the world it records and the invocation that world
    /// takes: the load must agree.
    started: Option<(Started, World, Invocation)>,
}

impl Begun {
    /// Checks the run's token against `db`'s revocations, once.
    fn settle(&mut self, db: &Db) {
        let Some(unrevoked) = self.unrevoked.take() else { return };
        match unrevoked.settle(db) {
            Ok(authorization) => {
                if let Ok(authorized) = &mut self.authorized {
                    settled(authorized, authorization);
                }
            }
            Err(refused) => self.authorized = Err(refused),
        }
    }

    /// Checks the grants and the token again with `gate`, whose protected paths differ from those the run was
    /// authorized against (a path that did not exist then, such as the database's before its first open).
    fn reauthorize(&mut self, gate: &Gate<'_>, spec: &RunSpec) {
        let checked = &self.checked;
        (self.authorized, self.unrevoked) = unsettled(gate.authorize_unrevoked(
            spec,
            &self.agent,
            self.digest.clone(),
            checked.plugin.clone(),
            &checked.limits,
        ));
    }

    /// Submits the run's start through `submit` (a runner's [`Runner::start_early`]) if the run is authorized (its
    /// token checked against the revocations, [`Begun::settle`]) and the world its file declares takes `spec`'s
    /// invocation; once only. A run that does not start here is refused, or starts as any other once loaded.
    fn start(&mut self, spec: &RunSpec, submit: impl FnOnce(&crate::run::StartOf<'_>) -> Option<Started>) {
        let (Ok(granted), None, Some(world), None) = (&self.authorized, &self.unrevoked, self.world, &self.started)
        else {
            return;
        };
        // Worked out on a copy of the input: if no start is submitted, the input is still there for the load's world.
        let mut input = self.checked.input.clone();
        let Ok(invoked) = invocation(world, spec, &mut input) else { return };
        let of = crate::run::StartOf {
            run_id: &self.checked.run_id,
            agent: &self.agent,
            component: &self.path,
            sha256: &self.digest,
            world,
            grants: granted,
            limits: &self.checked.limits,
            invocation: &invoked,
        };
        if let Some(started) = submit(&of) {
            self.started = Some((started, world, invoked));
        }
    }
}

/// A component file being read and loaded on a thread of its own while the run is authorized and its start
/// recorded. The file is read once: the digest the run is authorized for is that of the bytes it loads. The load
/// thread hands the bytes over as soon as they are read and goes on compiling them; the digest and the world they
/// declare are worked out by the thread that authorizes the run ([`Loading::read`]), which sends the digest back for
/// the loaded program to carry, so that hashing is not on the load's path.
struct Loading {
    path: PathBuf,
    /// What the load thread says, in order: the bytes it read (not if the file cannot be read), then the outcome.
    /// The outcome is sent rather than returned, so that it is taken while the thread is still taking itself down.
    said: std::sync::mpsc::Receiver<Said>,
    /// The digest of the bytes, for the loaded program ([`Loading::read`] sends it).
    digest: Option<std::sync::mpsc::SyncSender<String>>,
    /// Joined only if the thread ends without saying its outcome (a panic, which is then resumed here).
    thread: Option<std::thread::JoinHandle<()>>,
}

enum Said {
    Read(Arc<Vec<u8>>),
    Loaded(Result<Program, RunError>),
}

/// The engine a [`Loading`] compiles on.
enum EngineFor {
    /// A started engine: the load checks its compile cache ([`crate::component::vouch_cache`]) before reading it.
    Now(Arc<HostEngine>),
    /// An engine still starting, on the compile cache `auth` vouches for (the engine's own, opened before it): while
    /// it starts, the load reads the file and checks the cache, then takes the engine and gets `progress` ready.
    Soon {
        engine: std::sync::mpsc::Receiver<Arc<HostEngine>>,
        auth: Option<crate::cache_auth::CacheAuth>,
        progress: Arc<dyn crate::progress::Progress>,
    },
}

impl Loading {
    /// Begins loading `path` on `engine`, in a `load` span of run `run_id` under `parent`.
    fn start(engine: EngineFor, path: PathBuf, run_id: &str, parent: &tracing::Span) -> Result<Loading, RunError> {
        let span = load_span(parent, run_id, &path.display().to_string());
        // Room for both messages: the thread never waits for its reader (who may have gone, a refused token).
        let (say, said) = std::sync::mpsc::sync_channel(2);
        let (digest, digested) = std::sync::mpsc::sync_channel::<String>(1);
        let file = path.clone();
        let thread = std::thread::Builder::new()
            .name("toka-load".into())
            .spawn(move || {
                let loaded = span.in_scope(|| {
                    let bytes = Arc::new(crate::component::read(&file)?);
                    drop(say.send(Said::Read(bytes.clone())));
                    let (engine, vouched) = match engine {
                        EngineFor::Now(engine) => (engine, None),
                        EngineFor::Soon { engine, auth, progress } => {
                            let vouched = auth.map_or(Ok(()), |auth| {
                                auth.before_load().map(drop).map_err(|e| RunError::host(e.to_string()))
                            });
                            let engine = engine.recv().map_err(|_| RunError::host("the engine did not start"))?;
                            // Once the engine stands: its epoch ticker looks after progress, if it started.
                            progress.prepare();
                            (engine, Some(vouched))
                        }
                    };
                    let vouched = || vouched.unwrap_or_else(|| crate::component::vouch_cache(&engine));
                    // The digest is known by the time the code is: it is filled in once both are.
                    let mut loaded = crate::component::load_vouched(&engine, &file, &bytes, String::new(), vouched)?;
                    drop(bytes);
                    loaded.sha256 =
                        digested.recv().map_err(|_| RunError::host("the component's digest was not worked out"))?;
                    record_load(&span, &loaded);
                    Program::prepare(loaded, crate::run::agent_name(&file))
                });
                drop(say.send(Said::Loaded(loaded)));
            })
            .map_err(|e| RunError::host(format!("cannot start a thread to load {}: {e}", path.display())))?;
        Ok(Loading { path, said, digest: Some(digest), thread: Some(thread) })
    }

    /// The digest of the bytes read and the world they declare ([`crate::component::world_of`], before the compile);
    /// or why the file could not be read. Called once, before [`Loading::finish`].
    fn read(&mut self) -> Result<(String, Option<World>), RunError> {
        match self.next() {
            Said::Read(bytes) => {
                let digest = crate::component::digest(&bytes);
                let world = crate::component::world_of(&bytes);
                if let Some(to_load) = self.digest.take() {
                    drop(to_load.send(digest.clone()));
                }
                Ok((digest, world))
            }
            Said::Loaded(Err(e)) => Err(e),
            Said::Loaded(Ok(_)) => Err(RunError::host("the component's load ended unread")),
        }
    }

    /// The loaded program, or why it could not be loaded.
    fn finish(mut self) -> Result<Program, RunError> {
        match self.next() {
            Said::Loaded(loaded) => loaded,
            Said::Read(..) => Err(RunError::host("the component's load said it had read twice")),
        }
    }

    fn next(&mut self) -> Said {
        match self.said.recv() {
            Ok(said) => said,
            Err(_) => match self.thread.take().map(std::thread::JoinHandle::join) {
                Some(Err(panic)) => std::panic::resume_unwind(panic),
                _ => Said::Loaded(Err(RunError::host("the component's load ended without a word"))),
            },
        }
    }
}

/// The `load` span of run `run_id`, of `component` as the run names it.
fn load_span(parent: &tracing::Span, run_id: &str, component: &str) -> tracing::Span {
    tracing::info_span!(parent: parent, "load", run_id = %run_id, %component,
        cache_hit = tracing::field::Empty, compile_ms = tracing::field::Empty)
}

/// Whether `loaded` came from the compile cache, and how long its compile (or cache load) took.
fn record_load(span: &tracing::Span, loaded: &crate::component::Loaded) {
    span.record("cache_hit", loaded.cache_hit);
    span.record("compile_ms", loaded.compile_time.as_secs_f64() * 1000.0);
}

impl std::fmt::Debug for Ready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ready")
            .field("run_id", &self.run_id)
            .field("program", &self.program.name())
            .field("limits", &self.limits)
            .finish()
    }
}

/// How the host's engine is set up.
#[derive(Debug, Clone, Default)]
pub struct HostOptions {
    /// The pooling instance allocator: worth it for a process that runs many instances (`--repeat`, servers).
    pub pooling: bool,
    /// Where long work (a first compile) is said; `None`: nowhere.
    pub progress: Option<Arc<dyn crate::progress::Progress>>,
    /// Store prompts and completions of model calls in the event log (bounded); off by default.
    pub record_prompts: bool,
}

/// A toka home, opened: see the module documentation.
pub struct Host {
    home: Home,
    protected: Vec<Protected>,
    log: Arc<EventLog>,
    engine: Arc<HostEngine>,
    tools: Arc<ToolHost>,
    llm: Arc<crate::llm::Gateway>,
    /// The run [`Host::open_loading`] began, until [`Host::prepare_preloaded`] takes it over.
    preloaded: Mutex<Option<Preloaded>>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").field("home", &self.home).finish_non_exhaustive()
    }
}

impl Host {
    /// Opens `home`: creates it owner-only if needed, opens (or creates) its database and starts the event log
    /// writer, signing checkpoints with the home's active root key (once it has one), and starts an engine on its
    /// compile cache.
    pub fn open(home: Home, options: HostOptions) -> Result<Host, RunError> {
        Host::open_loading(home, options, None)
    }

    /// [`Host::open`], also beginning `run` (a run of this host's own runner, [`Host::runner`]) while the host
    /// opens, for [`Host::prepare_preloaded`] to finish: a process that makes one run (`toka-host run`) starts its
    /// longest steps before the guest sooner. For a component file:
    /// - the file is read and its code loaded (from the compile cache, or compiled) on a thread of its own from the
    ///   start, on the engine once that is up;
    /// - this thread starts the engine, then checks the run's input, limits, grants and token for the digest of the
    ///   bytes read while the database opens on the log writer's thread, then the token against the database's
    ///   revocations;
    /// - the run's start is submitted to the log at once, so that its durable commit overlaps the load.
    ///
    /// Once `run`'s start is submitted, the caller must record the run's ending: with [`Runner::run_with`], or
    /// [`Runner::record_refusal_after`] if it is refused.
    pub fn open_loading(home: Home, options: HostOptions, run: Option<RunSpec>) -> Result<Host, RunError> {
        home.ensure_dir().map_err(|e| RunError::host(e.to_string()))?;
        // The database's open (two fdatasyncs, its header's recovery flag), on the log writer's thread, the
        // engine's start and the component's load overlap.
        let opening = {
            let home = home.clone();
            EventLog::begin_open(GroupCommit::default(), move || {
                let db = tracing::info_span!("open_db")
                    .in_scope(|| home.open_db())
                    .map_err(|e| format!("event log: {e}"))?;
                Ok((db, Some(crate::events::Signer::for_home(&home))))
            })
        };
        let run = run.map(|mut spec| {
            spec.run_id.get_or_insert_with(crate::run::fresh_run_id);
            spec
        });
        // The file is read and the compile cache checked on the load's thread while the engine starts, on the cache
        // that check vouched for; the load compiles once it has the engine. Its span is a root, as the run's other
        // spans are in a process of one run. Without a thread to load on, the run loads later, as any other.
        let engine_options = Host::engine_options(&home, &options);
        let auth = Host::cache_auth(&home, &engine_options);
        let (to_load, engine_for_load) = std::sync::mpsc::sync_channel(1);
        let loading = match (&auth, &run) {
            (Ok(auth), Some(spec @ RunSpec { source: Source::Path(path), run_id: Some(run_id), .. })) => {
                let progress = Host::progress(&options);
                let engine = EngineFor::Soon { engine: engine_for_load, auth: auth.clone(), progress };
                Loading::start(engine, path.clone(), run_id, &tracing::Span::none()).ok().map(|l| (spec, l))
            }
            _ => None,
        };
        // The engine starts here while the database opens (a fraction of its time). If it does not start, the load
        // ends (dropping `to_load` tells it so) and the error is reported once the database's is.
        let engine = auth.and_then(|auth| Host::engine_with(&engine_options, &options, auth));
        if let (Some(_), Ok(engine)) = (&loading, &engine) {
            drop(to_load.send(engine.clone()));
        }
        // The run is checked and authorized while its code loads and the database opens, all but the revocations.
        // A database file that exists already resolves the same once opened; one the open creates resolves through
        // a symbolic link only once it exists, so the protected paths are read again after the open only then.
        let db_existed = home.db.exists();
        let opening_protected = Protected::of(&home);
        let mut begun = loading.map(|(spec, loading)| {
            let gate = Gate { home: &home, protected: &opening_protected };
            let checked = gate.check(spec)?;
            gate.begin(spec, checked, loading, &tracing::Span::none())
        });
        let log = opening.finish().map(Arc::new).map_err(RunError::host)?;
        // This host keeps the paths as they resolve after the open, for its lifetime.
        let reread = (!db_existed).then(|| Protected::of(&home)).filter(|now| *now != opening_protected);
        let engine = engine?;
        let llm = Host::gateway(&home, &log, options.record_prompts)?;
        // Then the revocations, and the start is submitted as the host's own runner would submit it.
        if let (Some(Ok(begun)), Some(spec)) = (&mut begun, &run) {
            if let Some(protected) = &reread {
                begun.reauthorize(&Gate { home: &home, protected }, spec);
            }
            begun.settle(log.db());
            begun.start(spec, |of| Some(crate::run::submit_start(&log, None, of)));
        }
        let host = Host::with_parts(home, log, engine, reread.unwrap_or(opening_protected), llm);
        if let Some(spec) = run {
            *host.preloaded.lock().unwrap_or_else(|p| p.into_inner()) = Some(Preloaded { spec, begun });
        }
        Ok(host)
    }

    /// Opens `home` with `log` as its event log (a cluster node's: its operations go through the cluster and are
    /// applied to `log`'s database by the cluster's state machine). `log`'s database must be `home`'s.
    pub fn open_with_log(home: Home, options: HostOptions, log: Arc<EventLog>) -> Result<Host, RunError> {
        home.ensure_dir().map_err(|e| RunError::host(e.to_string()))?;
        let engine = Host::start_engine(&home, &options)?;
        let protected = Protected::of(&home);
        let llm = Host::gateway(&home, &log, options.record_prompts)?;
        Ok(Host::with_parts(home, log, engine, protected, llm))
    }

    /// An engine on `home`'s compile cache (made owner-only: it holds code the host will execute).
    fn start_engine(home: &Home, options: &HostOptions) -> Result<Arc<HostEngine>, RunError> {
        let engine_options = Host::engine_options(home, options);
        let auth = Host::cache_auth(home, &engine_options)?;
        Host::engine_with(&engine_options, options, auth)
    }

    /// Makes `home`'s compile cache owner-only and opens what vouches for it ([`HostEngine::cache_auth`]).
    fn cache_auth(
        home: &Home,
        engine_options: &EngineOptions,
    ) -> Result<Option<crate::cache_auth::CacheAuth>, RunError> {
        if let Some(cache) = &home.cache {
            crate::home::private_dir(cache).map_err(|e| RunError::host(format!("compile cache: {e}")))?;
        }
        HostEngine::cache_auth(engine_options).map_err(|e| RunError::host(format!("cannot start the engine: {e:#}")))
    }

    fn engine_options(home: &Home, options: &HostOptions) -> EngineOptions {
        EngineOptions { fuel: true, cache_dir: home.cache.clone(), pooling: options.pooling }
    }

    fn progress(options: &HostOptions) -> Arc<dyn crate::progress::Progress> {
        options.progress.clone().unwrap_or_else(|| Arc::new(crate::progress::Silent))
    }

    /// The engine of `engine_options`, on the compile cache `auth` vouches for, saying long compiles as `options` say.
    fn engine_with(
        engine_options: &EngineOptions,
        options: &HostOptions,
        auth: Option<crate::cache_auth::CacheAuth>,
    ) -> Result<Arc<HostEngine>, RunError> {
        HostEngine::with_cache_auth(engine_options, auth)
            .map(|engine| Arc::new(engine.with_progress(Host::progress(options))))
            .map_err(|e| RunError::host(format!("cannot start the engine: {e:#}")))
    }

    fn with_parts(
        home: Home,
        log: Arc<EventLog>,
        engine: Arc<HostEngine>,
        protected: Vec<Protected>,
        llm: Arc<crate::llm::Gateway>,
    ) -> Host {
        let tools = Arc::new(ToolHost::new(engine.clone(), Registry::open(&home.dir), Some(log.clone())));
        Host { home, protected, log, engine, tools, llm, preloaded: Mutex::new(None) }
    }

    /// The model gateway of `home` (its `llm.toml`), recording in `log`.
    fn gateway(home: &Home, log: &Arc<EventLog>, record_prompts: bool) -> Result<Arc<crate::llm::Gateway>, RunError> {
        crate::llm::Gateway::open(&home.dir, Some(log.clone()), record_prompts)
            .map(Arc::new)
            .map_err(|e| RunError::host(format!("model gateway: {e}")))
    }

    pub fn home(&self) -> &Home {
        &self.home
    }

    pub fn db(&self) -> &Db {
        self.log.db()
    }

    pub fn log(&self) -> &Arc<EventLog> {
        &self.log
    }

    pub fn engine(&self) -> &Arc<HostEngine> {
        &self.engine
    }

    pub fn tools(&self) -> &Arc<ToolHost> {
        &self.tools
    }

    /// The model gateway (`$TOKA_HOME/llm.toml`).
    pub fn llm(&self) -> &Arc<crate::llm::Gateway> {
        &self.llm
    }

    /// A runner on this host's engine, recording in its log, with its tools, its models and its installed agents to
    /// spawn.
    pub fn runner(&self) -> Runner {
        Runner::from_parts(self.engine.clone(), Some(self.log.clone()), Some(self.tools.clone()))
            .with_llm(self.llm.clone())
            .with_spawn(self.home.dir.clone())
    }

    /// Checks grants against the host filesystem and environment; nothing of the home is ever grantable.
    pub fn authorize_grants(&self, request: &GrantRequest) -> Result<Authorized, RunError> {
        self.gate().authorize_grants(request)
    }

    /// Verifies `token` (or mints one from the operator's flags, living `local_ttl`) against this home's keys and
    /// revocations, and authorizes `request` with it.
    pub fn authorize_token(
        &self,
        token: Option<&str>,
        request: &RunRequest,
        local_ttl: Duration,
    ) -> Result<RunAuthorization, RunError> {
        crate::token::authorize_caller(&self.home.dir, self.db(), token, request, local_ttl)
    }

    /// Mints a token with this home's active root key (creating the key if the home has none), as the CLI does for
    /// the operator's own flags: the operator's authority, for a face (the orchestrator) that narrows it per run.
    pub fn mint_local(&self, request: &crate::token::MintRequest) -> Result<String, RunError> {
        let refused = |e: &dyn std::fmt::Display| RunError::TokenRefused(crate::error::one_line(&e.to_string()));
        let now = std::time::SystemTime::now();
        let now_ms = u64::try_from(now.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis())
            .unwrap_or(u64::MAX);
        let keys = crate::token::keys::KeyStore::load_or_init(&self.home.dir, now_ms).map_err(|e| refused(&e))?;
        let token = crate::token::mint(&keys, request, now).map_err(|e| refused(&e))?;
        token.to_base64().map_err(|e| refused(&e))
    }

    /// The limits a token allows, for a run that did not ask for its own.
    pub fn token_limits(&self, token: &str) -> Result<TokenLimits, RunError> {
        self.gate().token_limits(token)
    }

    /// What authorizes runs on this host: its home and its protected paths.
    fn gate(&self) -> Gate<'_> {
        Gate { home: &self.home, protected: &self.protected }
    }

    /// Everything that can refuse a run before the guest starts, in order: the input, the component (loaded through
    /// `runner`), the invocation its world takes, the grants on the host, then the token for all of it.
    ///
    /// The token check needs only the component's name and digest, not the compiled code: for a file not loaded
    /// before in this process, it is made on this thread while another loads the component (a run's two longest
    /// steps before the guest starts, side by side). The refusals are still reported in the order above.
    ///
    /// Traced as the spans `load` (the component: compiled or from the cache) and `authorize` (grants and token),
    /// each with the run's id, under whatever span the caller is in.
    pub fn prepare(&self, runner: &Runner, spec: &RunSpec) -> Result<Ready, RunError> {
        self.prepare_as(runner, spec, false).map_err(|refused| refused.error)
    }

    /// [`Host::prepare`], which also submits the run's start to the event log as soon as the grants and the token
    /// are checked, while the component still loads ([`Runner::start_early`]): the start's durable commit and the
    /// load (a run's two longest steps before the guest starts) then overlap. The world the start records is read
    /// from the component's own exports ([`crate::component::world_of`]); the load must agree. If the load then
    /// fails, the refusal carries the start, and must be recorded with [`Runner::record_refusal_after`].
    pub fn prepare_started(&self, runner: &Runner, spec: &RunSpec) -> Result<Ready, Refused> {
        self.prepare_as(runner, spec, true)
    }

    /// [`Host::prepare_started`] of the run [`Host::open_loading`] began, on this host's own runner
    /// ([`Host::runner`]); its start may already be submitted.
    pub fn prepare_preloaded(&self, runner: &Runner) -> Result<Ready, Refused> {
        let preloaded = self.preloaded.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(Preloaded { spec, begun }) = preloaded else {
            return Err(RunError::host("no run was begun with this host").into());
        };
        let own = Arc::ptr_eq(&self.engine, runner.engine())
            && runner.events().is_some_and(|log| Arc::ptr_eq(log, &self.log))
            && runner.node().is_none();
        match begun {
            Some(Ok(begun)) if own => self.finish_begun(runner, &spec, begun),
            Some(Ok(begun)) => Err(Refused {
                error: RunError::host("the run begun with this host must be prepared on the host's own runner"),
                started: begun.started.map(|(started, ..)| started),
            }),
            Some(Err(error)) => Err(error.into()),
            None => self.prepare_as(runner, &spec, true),
        }
    }

    fn prepare_as(&self, runner: &Runner, spec: &RunSpec, early: bool) -> Result<Ready, Refused> {
        let checked = self.gate().check(spec)?;
        let parent = tracing::Span::current();
        if let Source::Path(path) = &spec.source
            && runner.loaded(path).is_none()
        {
            let loading =
                Loading::start(EngineFor::Now(runner.engine().clone()), path.clone(), &checked.run_id, &parent)?;
            let mut begun = self.gate().begin(spec, checked, loading, &parent)?;
            begun.settle(self.db());
            if early {
                begun.start(spec, |of| runner.start_early(of));
            }
            return self.finish_begun(runner, spec, begun);
        }
        let Checked { run_id, mut input, limits, plugin } = checked;
        let component = match &spec.source {
            Source::Path(path) => path.display().to_string(),
            Source::Bytes { name, .. } => format!("upload:{name}"),
            Source::Plugin { identity, .. } => format!("plugin:{identity}"),
        };
        let span = load_span(&parent, &run_id, &component);
        let program = span.in_scope(|| match &spec.source {
            Source::Path(path) => runner.load(path),
            Source::Bytes { name, bytes } | Source::Plugin { name, bytes, .. } => runner.load_bytes(name, bytes),
        })?;
        record_load(&span, &program.loaded);
        let authorized = {
            let _authorize =
                tracing::info_span!(parent: &parent, "authorize", run_id = %run_id, agent = %program.name()).entered();
            let digest = program.loaded.sha256.clone();
            self.gate().authorize_run(self.db(), spec, program.name(), digest, plugin.clone(), &limits)
        };
        let invocation = invocation(program.world(), spec, &mut input)?;
        let mut authorized = authorized?;
        authorized.plugin = plugin;
        Ok(Ready { run_id, program, invocation, grants: authorized, limits, started: None })
    }

    /// The rest of a run [`Gate::begin`] began: its code loaded (the linker built meanwhile), then every refusal in
    /// [`Host::prepare`]'s order. A refusal carries the run's start if that was submitted.
    fn finish_begun(&self, runner: &Runner, spec: &RunSpec, mut begun: Begun) -> Result<Ready, Refused> {
        begun.settle(self.db());
        // The component linker, which the load needs only once its code is in memory: built here while the start
        // commits and the code loads, after the token check, so that the start is submitted first. An error here
        // is the load's to report (it builds the linker itself then).
        drop(runner.engine().linker());
        let Begun { checked, path, loading, authorized, started, .. } = begun;
        let program = loading.finish().map(|program| runner.keep(path, program));
        let Checked { run_id, mut input, limits, plugin } = checked;
        let (started, early) = match started {
            Some((started, world, invoked)) => (Some(started), Some((world, invoked))),
            None => (None, None),
        };
        let refused = |error: RunError| Refused { error, started: started.clone() };
        let program = program.map_err(refused)?;
        let invocation = match early {
            Some((world, invoked)) if world == program.world() => invoked,
            Some((world, _)) => {
                return Err(refused(RunError::host(format!(
                    "the run's start recorded the world {world:?}, but {} loaded as {:?}",
                    program.loaded.path.display(),
                    program.world()
                ))));
            }
            None => invocation(program.world(), spec, &mut input).map_err(refused)?,
        };
        let mut authorized = authorized.map_err(refused)?;
        authorized.plugin = plugin;
        Ok(Ready { run_id, program, invocation, grants: authorized, limits, started })
    }
}

/// What authorizes a run, before any engine or database: the home (its keys) and its protected paths. The
/// revocations, in the database, are checked apart ([`Unrevoked::settle`]).
struct Gate<'a> {
    home: &'a Home,
    protected: &'a [Protected],
}

impl Gate<'_> {
    fn authorize_grants(&self, request: &GrantRequest) -> Result<Authorized, RunError> {
        grants::authorize(request, self.protected)
    }

    fn token_limits(&self, token: &str) -> Result<TokenLimits, RunError> {
        crate::token::limits_of(&self.home.dir, token)
    }

    /// What is settled about a run before its component: its id, its input (bounded JSON), its limits (the spawn
    /// caps bounded) and the package it runs.
    fn check(&self, spec: &RunSpec) -> Result<Checked, RunError> {
        let run_id = spec.run_id.clone().unwrap_or_else(crate::run::fresh_run_id);
        let input = check_input(spec.input.as_deref())?;
        let limits = self.limits(spec)?;
        use crate::sandbox::limits::{MAX_SPAWN_DEPTH, MAX_SPAWNS};
        if limits.max_spawn_depth > MAX_SPAWN_DEPTH || limits.max_spawns > MAX_SPAWNS {
            return Err(RunError::InvalidInput(format!(
                "spawn caps: depth at most {MAX_SPAWN_DEPTH}, spawns per run at most {MAX_SPAWNS}"
            )));
        }
        let plugin = match &spec.source {
            Source::Plugin { identity, .. } => Some(identity.clone()),
            _ => None,
        };
        Ok(Checked { run_id, input, limits, plugin })
    }

    /// Begins the run of `spec`'s component file that `loading` loads: the file read, and the grants and the token
    /// checked for the digest of its bytes (on this thread, while the code loads on the load's), all but the
    /// revocations ([`Begun::settle`]). A refused grant or token is kept, to be reported after the load's own
    /// errors. Traced as the span `authorize` under `parent`.
    fn begin(
        &self,
        spec: &RunSpec,
        checked: Checked,
        mut loading: Loading,
        parent: &tracing::Span,
    ) -> Result<Begun, RunError> {
        let (digest, world) = loading.read()?;
        let path = loading.path.clone();
        let agent = crate::run::agent_name(&path);
        let authorized = {
            let run_id = &checked.run_id;
            let _authorize =
                tracing::info_span!(parent: parent, "authorize", run_id = %run_id, agent = %agent).entered();
            self.authorize_unrevoked(spec, &agent, digest.clone(), checked.plugin.clone(), &checked.limits)
        };
        let (authorized, unrevoked) = unsettled(authorized);
        Ok(Begun { checked, path, loading, agent, digest, authorized, unrevoked, world, started: None })
    }

    /// The grants on the host, then the token for all a run of agent `name`, the component of `digest`, asks for,
    /// the token checked against `db`'s revocations.
    fn authorize_run(
        &self,
        db: &Db,
        spec: &RunSpec,
        name: &str,
        digest: String,
        plugin: Option<String>,
        limits: &Limits,
    ) -> Result<Authorized, RunError> {
        let (mut authorized, unrevoked) = self.authorize_unrevoked(spec, name, digest, plugin, limits)?;
        settled(&mut authorized, unrevoked.settle(db)?);
        Ok(authorized)
    }

    /// [`Gate::authorize_run`] but for the revocations, which the returned [`Unrevoked`] is still to be checked
    /// against; the grants lack the token until then ([`settled`]).
    fn authorize_unrevoked(
        &self,
        spec: &RunSpec,
        name: &str,
        digest: String,
        plugin: Option<String>,
        limits: &Limits,
    ) -> Result<(Authorized, Unrevoked), RunError> {
        let mut authorized = self.authorize_grants(&spec.grants)?;
        let mut request =
            crate::commands::run::token_request(name, &spec.grants.net, &authorized, limits, Some(digest));
        request.plugin = plugin;
        for tool in &spec.tools {
            crate::tools::check_name(tool).map_err(RunError::InvalidInput)?;
            request.grants.push(crate::token::Grant { kind: "tool".into(), value: tool.clone(), mode: "".into() });
        }
        for model in &spec.models {
            let grant = crate::token::Grant::parse(&format!("llm:{model}")).map_err(RunError::InvalidInput)?;
            request.grants.push(grant);
        }
        for child in &spec.spawn {
            crate::tools::check_name(child)
                .map_err(|e| RunError::InvalidInput(e.replace("tool name", "agent name")))?;
            request.grants.push(crate::token::Grant { kind: "spawn".into(), value: child.clone(), mode: "".into() });
        }
        let unrevoked =
            crate::token::check_caller(&self.home.dir, spec.token.as_deref(), &request, crate::token::LOCAL_TTL)?;
        authorized.local_token = spec.token.is_none();
        Ok((authorized, unrevoked))
    }

    /// The run's limits: each asked for, else the token's ceiling (with a token), else the default.
    fn limits(&self, spec: &RunSpec) -> Result<Limits, RunError> {
        let defaults = Limits::default();
        let asked = &spec.limits;
        let ceiling = match &spec.token {
            Some(text) if asked.fuel.is_none() || asked.timeout.is_none() || asked.max_memory.is_none() => {
                Some(self.token_limits(text)?)
            }
            _ => None,
        };
        Ok(Limits {
            fuel: asked.fuel.or(ceiling.map(|c| c.fuel)).unwrap_or(defaults.fuel),
            timeout: asked.timeout.or(ceiling.map(|c| Duration::from_millis(c.timeout_ms))).unwrap_or(defaults.timeout),
            max_memory: asked.max_memory.or(ceiling.map(|c| c.memory)).unwrap_or(defaults.max_memory),
            max_output: asked.max_output.unwrap_or(defaults.max_output),
            max_records: asked.max_records.unwrap_or(defaults.max_records),
            llm_tokens: asked.llm_tokens,
            max_spawn_depth: asked.max_spawn_depth.unwrap_or(defaults.max_spawn_depth),
            max_spawns: asked.max_spawns.unwrap_or(defaults.max_spawns),
            ..defaults
        })
    }
}

/// The outcome of [`Gate::authorize_unrevoked`] as a [`Begun`] keeps it: the grants (or the refusal, reported after
/// the load's), and the token still to be checked against the revocations.
fn unsettled(outcome: Result<(Authorized, Unrevoked), RunError>) -> (Result<Authorized, RunError>, Option<Unrevoked>) {
    match outcome {
        Ok((authorized, unrevoked)) => (Ok(authorized), Some(unrevoked)),
        Err(refused) => (Err(refused), None),
    }
}

/// `authorized` completed with the token `authorization` carries.
fn settled(authorized: &mut Authorized, authorization: RunAuthorization) {
    authorized.token_id = authorization.token_id;
    authorized.rate = authorization.rate;
    authorized.token = Some(authorization.token);
}

/// The task input, checked to be JSON of a bounded size.
pub fn check_input(input: Option<&str>) -> Result<Option<String>, RunError> {
    let Some(input) = input else { return Ok(None) };
    if input.len() > MAX_INPUT {
        return Err(RunError::InvalidInput(format!(
            "task input is {} bytes, over the {MAX_INPUT} byte limit",
            input.len()
        )));
    }
    if let Err(e) = serde_json::from_str::<serde_json::Value>(input) {
        return Err(RunError::InvalidInput(format!("task input is not valid JSON: {e}")));
    }
    Ok(Some(input.to_string()))
}

/// What to call, decided by the component's world: an agent takes a task (`input`, taken only if the call is made), a
/// command takes arguments.
fn invocation(world: World, spec: &RunSpec, input: &mut Option<String>) -> Result<Invocation, RunError> {
    match world {
        World::Command => {
            if input.is_some() || spec.task_id.is_some() {
                return Err(RunError::InvalidInput(
                    "this is a command: it takes arguments, not a task (--input, --task-id)".into(),
                ));
            }
            Ok(Invocation::Command { args: spec.args.clone() })
        }
        World::Agent | World::Tool => {
            if !spec.args.is_empty() {
                return Err(RunError::InvalidInput(
                    "this is an agent: it takes a task (--input), not command-line arguments".into(),
                ));
            }
            if let Some(id) = &spec.task_id
                && (id.is_empty() || id.len() > crate::bounds::MAX_ID || id.chars().any(char::is_control))
            {
                return Err(RunError::InvalidInput(format!(
                    "task id must be 1 to {} bytes without control characters",
                    crate::bounds::MAX_ID
                )));
            }
            let id = spec.task_id.clone().unwrap_or_else(crate::run::fresh_task_id);
            Ok(Invocation::Task { id, input: input.take().unwrap_or_else(|| "{}".into()) })
        }
    }
}
