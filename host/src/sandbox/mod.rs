//! Builds the `Store` a guest runs in, from authorized grants only.
//!
//! Defaults (what a guest gets when nothing is granted): no preopened directory, no environment variable, stdin
//! closed, stdout and stderr captured and capped, no socket address reachable and no name lookup, host clocks and
//! random. With network grants, only the granted peers are reachable and only their names resolve ([`net`]). Every field set here comes from [`crate::grants::Authorized`] or from the run's limits; this module must
//! never add a right of its own.

pub mod budget;
pub mod cancel;
pub mod caps;
pub mod denied;
pub mod fds;
pub mod limits;
pub mod log;
pub mod net;
pub mod observe;
pub mod outcome;
pub mod output;
pub mod state;

use crate::engine::HostEngine;
use crate::error::RunError;
use crate::grants::Authorized;
use caps::llm::{LlmAccess, ModelGateway};
use caps::spawn::Spawner;
use caps::tools::ToolBroker;
pub use limits::Limits;
use limits::MemoryLimiter;
use log::LogSink;
use output::{CappedOutput, Echo};
use std::sync::Arc;
use wasmtime::Store;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder, WasiCtxView, WasiView};

/// The per-run state inside a `Store`.
pub struct SandboxState {
    /// WASI as a component sees it (through [`WasiView`]) and as a preview 1 core module sees it (the same context,
    /// files, clocks and streams, behind `wasi_snapshot_preview1`): one store type serves both kinds of program.
    wasi: WasiP1Ctx,
    pub limiter: MemoryLimiter,
    pub log: LogSink,
    pub observer: observe::Observer,
    pub state: state::StateAccess,
    /// What `toka:agent/tools` calls go through; `None`: the guest cannot call tools.
    pub tools: Option<Arc<dyn ToolBroker>>,
    /// What `toka:agent/llm` calls go through.
    pub llm: LlmAccess,
    /// What `toka:agent/spawn` calls go through; `None`: the guest cannot spawn agents.
    pub spawner: Option<Arc<dyn Spawner>>,
    /// What the guest tried without the grant for it.
    pub denied: denied::Denied,
    /// What the guest's name lookups may answer.
    names: Arc<net::Names>,
    /// The cap of the store's resource table: the most WASI handles the guest may hold at once.
    pub handle_cap: usize,
    /// The sandbox's part of the process's file descriptors, if it can open any; given back with the store.
    _fds: Option<fds::Share>,
}

/// Who is running and where its records go.
#[derive(Debug, Clone)]
pub struct RunContext {
    pub agent: String,
    pub run_id: String,
    pub events: Option<Arc<crate::events::EventLog>>,
    pub state: state::StateGrant,
    /// The revocation id of the token that authorized the run; every operation of the run names it.
    pub token: String,
    /// The run's access to tools, if any.
    pub tools: Option<Arc<dyn ToolBroker>>,
    /// The run's caps on recorded host calls, shared with its nested tool calls.
    pub budget: Arc<budget::RunBudget>,
    /// The run's cancellation switch, if it can be cancelled from outside.
    pub cancel: Option<Arc<cancel::Cancel>>,
    /// The run's access to models, if any.
    pub llm: Option<Arc<dyn ModelGateway>>,
    /// The run's way to start child agents, if any.
    pub spawner: Option<Arc<dyn Spawner>>,
}

impl WasiView for SandboxState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        self.wasi.ctx()
    }
}

impl SandboxState {
    /// What a preview 1 core module's `wasi_snapshot_preview1` imports act on.
    pub fn preview1(&mut self) -> &mut WasiP1Ctx {
        &mut self.wasi
    }
}

/// How a run's output is handled.
#[derive(Debug, Clone, Copy)]
pub struct OutputMode {
    /// Echo guest stdout/stderr and logs live to the host's streams.
    pub echo: bool,
    /// Keep them for the run report.
    pub capture: bool,
}

/// A ready-to-run store and handles on what the guest writes.
pub struct Sandbox {
    pub store: Store<SandboxState>,
    pub stdout: CappedOutput,
    pub stderr: CappedOutput,
}

/// Builds a sandbox on the host's main engine. `argv` is the guest's argument vector, program name first.
pub fn build(
    host: &HostEngine,
    grants: &Authorized,
    limits: &Limits,
    output: OutputMode,
    context: &RunContext,
    argv: &[String],
) -> Result<Sandbox, RunError> {
    build_on(host, &host.engine, grants, limits, output, context, argv)
}

/// [`build`], with the store on `engine`: the engine the program was compiled on (the main one, or
/// [`HostEngine::p3`]'s for a WASI 0.3 command).
pub fn build_on(
    host: &HostEngine,
    engine: &wasmtime::Engine,
    grants: &Authorized,
    limits: &Limits,
    output: OutputMode,
    context: &RunContext,
    argv: &[String],
) -> Result<Sandbox, RunError> {
    let name = context.agent.as_str();
    // Only a directory or a network peer lets a guest open host file descriptors: such a sandbox takes its share of
    // the process's (see `fds`), and its table's cap is that share.
    let fds = if grants.dirs.is_empty() && grants.net.is_empty() {
        None
    } else {
        let budget = fds::budget();
        Some(budget.take(grants.dirs.len()).ok_or_else(|| {
            RunError::HostBusy(format!(
                "host busy: live runs hold the file descriptors this process gives guests ({} of {}, under a \
                 limit of {}); retry later",
                budget.held(),
                budget.guests(),
                budget.limit()
            ))
        })?)
    };
    let mut wasi = WasiCtxBuilder::new();
    wasi.args(argv);
    wasi.envs(&grants.env);
    for dir in &grants.dirs {
        let perms = if dir.read_only { FsPerms::ReadOnly } else { FsPerms::ReadWrite };
        // The directory opened at authorization, never the path looked up again (see `AuthorizedDir`).
        wasi.preopened_dir(dir.preopen_path(), &dir.guest, perms).map_err(|e| RunError::GrantRefused {
            grant: format!("dir {}::{}", dir.host.display(), dir.guest),
            reason: crate::error::one_line(&format!("{e:#}")),
        })?;
    }
    let denied = denied::Denied::default();
    if grants.inherit_stdin {
        wasi.inherit_stdin();
    } else {
        wasi.stdin(denied::UngrantedStdin(denied.clone()));
    }
    let deadline = crate::units::deadline_after(limits.timeout);
    let echo = |to: Echo| if output.echo { to } else { Echo::None };
    let stdout = CappedOutput::new(echo(Echo::Stdout), output.capture, limits.max_output, deadline);
    let stderr = CappedOutput::new(echo(Echo::Stderr), output.capture, limits.max_output, deadline);
    wasi.stdout(stdout.clone());
    wasi.stderr(stderr.clone());

    let has_net = !grants.net.is_empty();
    // Name lookups never reach wasmtime-wasi's resolver: the engine links [`net`]'s own, which answers from the
    // grants only. Turning wasmtime-wasi's off as well keeps a lookup refused if that linking were ever lost.
    wasi.allow_tcp(has_net).allow_udp(has_net).allow_ip_name_lookup(false);
    let allowed = Arc::new(grants.net.clone());
    let noted = denied.clone();
    wasi.socket_addr_check(move |addr, usage| {
        let ok = net::socket_allowed(&allowed, addr, usage);
        if !ok {
            noted.note(net::socket_denial(addr, usage));
        }
        Box::pin(async move { ok })
    });
    let names = Arc::new(net::Names::new(&grants.peers, has_net));
    let handle_cap = fds.as_ref().map_or(limits::MAX_HANDLES, fds::Share::handles);

    let mut wasi = wasi.build_p1();
    wasi.ctx().table.set_max_capacity(handle_cap);
    let state = SandboxState {
        wasi,
        limiter: MemoryLimiter::new(limits.max_memory, limits.max_table_elements),
        log: LogSink::new(name, output.echo, output.capture, limits.max_output, deadline),
        observer: observe::Observer {
            agent: context.agent.clone(),
            run_id: context.run_id.clone(),
            token: context.token.clone(),
            log: context.events.clone(),
            emitted: 0,
            budget: context.budget.clone(),
        },
        state: state::StateAccess {
            agent: context.agent.clone(),
            run_id: context.run_id.clone(),
            grant: context.state,
            token: context.token.clone(),
            log: context.events.clone(),
            budget: context.budget.clone(),
        },
        tools: context.tools.clone(),
        llm: LlmAccess::new(context.llm.clone()),
        spawner: context.spawner.clone(),
        denied,
        names,
        handle_cap,
        _fds: fds,
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limiter);
    if host.fuel {
        store.set_fuel(limits.fuel).map_err(RunError::host)?;
    }
    arm_deadline(&mut store, deadline, context.cancel.clone(), [stdout.clone(), stderr.clone()]);
    Ok(Sandbox { store, stdout, stderr })
}

/// Stops the store's guest at `deadline`, when `cancel` is set, or once one of `outputs` passed its cap.
fn arm_deadline(
    store: &mut Store<SandboxState>,
    deadline: std::time::Instant,
    cancel: Option<Arc<cancel::Cancel>>,
    outputs: [CappedOutput; 2],
) {
    // The epoch ticker advances every `EPOCH_TICK`; the deadline is an instant, checked at every tick.
    // At every epoch tick the guest yields to the async executor (so a guest spinning in wasm never holds a
    // worker thread: other runs, the service's requests and this run's outer deadline and cancellation all get
    // their turn), then goes on unless it is cancelled or past its deadline.
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
            return Err(wasmtime::Error::new(cancel::Cancelled));
        }
        if std::time::Instant::now() >= deadline {
            return Err(wasmtime::Error::new(wasmtime::Trap::Interrupt));
        }
        // A preview 2 write past the cap traps at once; a WASI 0.3 one only fails its stream (the guest is told
        // through the write's future and may go on), so a guest still running after passing the cap is stopped
        // here, within a tick. Nothing past the cap was kept or echoed either way.
        if let Some(over) = outputs.iter().find_map(CappedOutput::over_limit) {
            return Err(wasmtime::Error::new(over));
        }
        Ok(wasmtime::UpdateDeadline::Yield(1))
    });
}

impl Sandbox {
    /// Arms a store that already ran a call for the next one, as [`build`] arms a fresh store: `limits`' fuel (set,
    /// not added to what is left), deadline (from now) and memory cap (counting what the store holds), outputs and
    /// log empty and capped again, and the next call's `tools`, `llm` and `cancel` access. Grants, WASI state and
    /// the guest's own memory are what the store already has: only a store built for the same caller and grants
    /// may be rearmed. False if the store holds more memory than `limits` allow (it must not be used).
    pub fn rearm(
        &mut self,
        host: &HostEngine,
        limits: &Limits,
        output: OutputMode,
        context: &RunContext,
    ) -> Result<bool, RunError> {
        if !self.store.data_mut().limiter.rearm(limits.max_memory) {
            return Ok(false);
        }
        let deadline = crate::units::deadline_after(limits.timeout);
        self.stdout.rearm(deadline);
        self.stderr.rearm(deadline);
        let data = self.store.data_mut();
        data.log = LogSink::new(context.agent.as_str(), output.echo, output.capture, limits.max_output, deadline);
        data.tools = context.tools.clone();
        data.llm = LlmAccess::new(context.llm.clone());
        if host.fuel {
            self.store.set_fuel(limits.fuel).map_err(RunError::host)?;
        }
        arm_deadline(&mut self.store, deadline, context.cancel.clone(), [self.stdout.clone(), self.stderr.clone()]);
        Ok(true)
    }
}
