//! The agent catalogue and the `build-agents` command.
//!
//! | agent          | source                         | pipeline                                                      |
//! |----------------|--------------------------------|---------------------------------------------------------------|
//! | `hello-rust`   | `agents/hello-rust` (cdylib)   | Debian cargo → core wasm → component (reactor adapter)        |
//! | `dirstat`      | `agents/dirstat` (cdylib)      | same                                                          |
//! | `hostile`      | `agents/hostile` (cdylib)      | same                                                          |
//! | `busy`         | `agents/busy` (cdylib)         | same (CPU-bound agent for the fuel benchmark)                 |
//! | `notes`        | `agents/notes` (cdylib)        | same (uses the host's `state` and `events` interfaces)         |
//! | `echo-cmd`     | `agents/echo-cmd` (`fn main`)  | Debian cargo → core wasm → `wasi:cli/command` (command adapter) |
//! | `hello-python` | `agents/hello-python/agent.py` | componentize-py                                               |
//! | `hello-js`     | `agents/hello-js/agent.js`     | componentize-js                                               |
//! | `hello-c`      | `agents/hello-c/hello.c`       | wit-bindgen-c → clang → component (reactor adapter)           |
//! | `go-echo`      | `agents/go-echo` (Go `main`)   | `GOOS=wasip1 go build` → preview 1 core module (not adapted)  |
//! | `zig-echo`     | `agents/zig-echo/main.zig`     | `zig build-exe`, wasm32-wasi → preview 1 core module (same)   |
//! | `wasi-probe`   | `agents/wasi-probe/probe.c`    | clang, wasm32-wasi `main` → preview 1 core module (same)      |
//! | `summarize`    | `agents/summarize` (cdylib)    | like `hello-rust` (an agent that works through three tools)    |
//! | `tool-chat`    | `agents/tool-chat` (cdylib)    | like `hello-rust` (a model conversation that calls tools)      |
//! | `spawner`      | `agents/spawner` (cdylib)      | like `hello-rust` (starts installed agents: spawn tests)       |
//! | `tool-chat-python` | `agents/tool-chat-python/agent.py` | componentize-py (the same conversation in Python)  |
//! | `tool-chat-js`     | `agents/tool-chat-js/agent.js`     | componentize-js (the same conversation in JavaScript) |
//! | `p3-probe`         | `agents/p3-probe` (cdylib)         | Debian cargo, wasm32-unknown-unknown + wit-bindgen async → component, no adapter: WASI 0.3 |
//! | `p3-agent`         | `agents/p3-agent` (cdylib)         | Debian cargo, wasm32-unknown-unknown + wit-bindgen async → component, no adapter: WASI 0.3 agent (`wit-p3/`) |
//! | `p3-tool`          | `agents/p3-tool` (cdylib)          | Debian cargo, wasm32-unknown-unknown + wit-bindgen async → component, no adapter: WASI 0.3 tool (`wit-p3/`), into `target/tools/` |
//!
//! Tools (world `toka:agent/tool`, `toka_sdk::tool!`), built into `target/tools/NAME.wasm`:
//!
//! | tool             | source                              | pipeline                                             |
//! |------------------|-------------------------------------|------------------------------------------------------|
//! | `echo`           | `agents/echo` (cdylib)              | like `hello-rust`                                    |
//! | `file-reader`    | `agents/file-reader` (cdylib)       | same                                                 |
//! | `file-writer`    | `agents/file-writer` (cdylib)       | same                                                 |
//! | `file-lister`    | `agents/file-lister` (cdylib)       | same                                                 |
//! | `json-query`     | `agents/json-query` (cdylib)        | same                                                 |
//! | `http-fetch`     | `agents/http-fetch` (cdylib)        | same (raw `wasi:sockets` imports beside the adapter) |
//! | `fail-tool`      | `agents/fail-tool` (cdylib)         | same (traps, spins, bad output: containment tests)   |
//! | `llm-ask`        | `agents/llm-ask` (cdylib)           | same (a tool that calls a model it declares)         |
//! | `tally`          | `agents/tally` (cdylib)             | same (counts its calls in memory: reuse-mode tests)  |
//! | `date-validator` | `agents/date-validator/tool.py`     | componentize-py, world `toka:agent/tool`             |
//!
//! The Rust agents are built by one cargo invocation (cargo decides what is stale); the others are rebuilt only
//! when a file in their directory (or, for those built against the toka WIT, in `wit/`) is newer than their output.
//! Every output is validated and checked for the export the host calls (`run`, `wasi:cli/run` for commands,
//! `describe` and `invoke` for tools, whose imports must also all be in the tool world) before it replaces the
//! previous one. `go-echo`, `zig-echo` and `wasi-probe` stay core modules on purpose (toka-host runs preview 1
//! modules as they are): their check is a valid core module that exports `_start` and imports nothing but
//! `wasi_snapshot_preview1`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};

use crate::Layout;
use crate::component::{self, Adapter, Expect};

/// How an agent is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A Rust `cdylib` crate using toka-sdk, componentized with the reactor adapter.
    RustReactor,
    /// A Rust `fn main` program, componentized with the command adapter.
    RustCommand,
    /// A Python module (`agent.py`) built with componentize-py.
    Python,
    /// A JavaScript module (`agent.js`) built with componentize-js.
    JavaScript,
    /// A C source (`hello.c`) built with wit-bindgen-c bindings, clang and the reactor adapter.
    C,
    /// A C program (`main`) built with clang against wasi-libc: a WASI preview 1 core module, not componentized.
    CCommand,
    /// A Go main package built for `GOOS=wasip1`: a WASI preview 1 core module, not componentized.
    Go,
    /// A Zig program (`main.zig`) built for wasm32-wasi: a WASI preview 1 core module, not componentized.
    Zig,
    /// A Rust `cdylib` tool using toka-sdk's `tool!` (world `toka:agent/tool`), componentized with the reactor
    /// adapter; built into `target/tools/`.
    RustTool,
    /// A Python tool module (`tool.py`, class `WitWorld` with `describe` and `invoke`) built with componentize-py
    /// for world `toka:agent/tool`; built into `target/tools/`.
    PythonTool,
    /// A Rust `cdylib` exporting `wasi:cli/run@0.3.0` through wit-bindgen's async bindings, built for
    /// wasm32-unknown-unknown and encoded with no adapter: a WASI 0.3 command component.
    RustP3Command,
    /// A Rust `cdylib` agent of world `toka:agent-async/agent` (`wit-p3/`: an async `run`, WASI 0.3), built and
    /// encoded as `RustP3Command` is.
    RustP3Agent,
    /// A Rust `cdylib` tool of world `toka:agent-async/tool` (an async `invoke`, WASI 0.3), built and encoded as
    /// `RustP3Command` is; built into `target/tools/`.
    RustP3Tool,
    /// A Rust `cdylib` Extism plugin (extism-pdk), left a core module: built into `target/extism/` for the benches.
    ExtismPlugin,
}

impl Kind {
    /// Whether this is a tool (built into `target/tools/`) rather than an agent.
    pub fn is_tool(self) -> bool {
        matches!(self, Kind::RustTool | Kind::PythonTool | Kind::RustP3Tool)
    }

    /// Whether cargo builds it (in one invocation over the `agents/` workspace).
    pub fn is_rust(self) -> bool {
        matches!(
            self,
            Kind::RustReactor
                | Kind::RustCommand
                | Kind::RustTool
                | Kind::ExtismPlugin
                | Kind::RustP3Command
                | Kind::RustP3Agent
                | Kind::RustP3Tool
        )
    }
}

/// One agent or tool: its directory under `agents/` and its output, `target/agents/NAME.wasm`,
/// `target/tools/NAME.wasm` or (an Extism plugin) `target/extism/NAME.wasm`, share its name.
#[derive(Debug, Clone, Copy)]
pub struct Agent {
    pub name: &'static str,
    pub kind: Kind,
}

impl Agent {
    const fn new(name: &'static str, kind: Kind) -> Self {
        Agent { name, kind }
    }

    fn expect(&self) -> Expect {
        match self.kind {
            Kind::RustCommand => Expect::Command,
            Kind::RustP3Command => Expect::P3Command,
            Kind::RustP3Agent => Expect::P3Agent,
            Kind::RustP3Tool => Expect::P3Tool,
            Kind::Go | Kind::Zig | Kind::CCommand => Expect::Preview1Command,
            Kind::RustReactor | Kind::Python | Kind::JavaScript | Kind::C => Expect::Agent,
            Kind::RustTool | Kind::PythonTool => Expect::Tool,
            Kind::ExtismPlugin => Expect::CoreModule,
        }
    }

    /// What a build reads besides the toolchain: the agent's directory, and `wit/` for agents built against it.
    fn inputs(&self, layout: &Layout) -> Vec<PathBuf> {
        let mut inputs = vec![layout.agents.join(self.name)];
        if !matches!(self.kind, Kind::Go | Kind::Zig | Kind::CCommand) {
            inputs.push(layout.wit.clone());
        }
        if matches!(self.kind, Kind::RustP3Agent | Kind::RustP3Tool) {
            inputs.push(layout.root.join("wit-p3"));
        }
        if matches!(self.kind, Kind::RustP3Command | Kind::RustP3Agent | Kind::RustP3Tool) {
            inputs.push(layout.agents.join("p3-common"));
        }
        inputs
    }
}

/// Every agent and tool, in build order.
pub const AGENTS: &[Agent] = &[
    Agent::new("hello-rust", Kind::RustReactor),
    Agent::new("dirstat", Kind::RustReactor),
    Agent::new("hostile", Kind::RustReactor),
    Agent::new("busy", Kind::RustReactor),
    Agent::new("notes", Kind::RustReactor),
    Agent::new("echo-cmd", Kind::RustCommand),
    Agent::new("hello-c", Kind::C),
    Agent::new("hello-python", Kind::Python),
    Agent::new("hello-js", Kind::JavaScript),
    Agent::new("go-echo", Kind::Go),
    Agent::new("zig-echo", Kind::Zig),
    Agent::new("wasi-probe", Kind::CCommand),
    Agent::new("summarize", Kind::RustReactor),
    Agent::new("tool-chat", Kind::RustReactor),
    Agent::new("spawner", Kind::RustReactor),
    Agent::new("tool-chat-python", Kind::Python),
    Agent::new("tool-chat-js", Kind::JavaScript),
    Agent::new("echo", Kind::RustTool),
    Agent::new("file-reader", Kind::RustTool),
    Agent::new("file-writer", Kind::RustTool),
    Agent::new("file-lister", Kind::RustTool),
    Agent::new("json-query", Kind::RustTool),
    Agent::new("http-fetch", Kind::RustTool),
    Agent::new("fail-tool", Kind::RustTool),
    Agent::new("llm-ask", Kind::RustTool),
    Agent::new("tally", Kind::RustTool),
    Agent::new("date-validator", Kind::PythonTool),
    Agent::new("extism-echo", Kind::ExtismPlugin),
    Agent::new("p3-probe", Kind::RustP3Command),
    Agent::new("p3-agent", Kind::RustP3Agent),
    Agent::new("p3-tool", Kind::RustP3Tool),
];

/// `build-agents [NAME...]`: builds the named agents and tools, or all of them.
pub fn build(layout: &Layout, names: &[String]) -> Result<()> {
    let selected = select(names)?;
    fs::create_dir_all(&layout.build).with_context(|| format!("creating {}", layout.build.display()))?;
    let started = Instant::now();
    let mut failures = Vec::new();

    let rust: Vec<&Agent> = selected.iter().filter(|a| a.kind.is_rust()).collect();
    if !rust.is_empty() {
        let built = crate::rust::targets_of(&rust).into_iter().try_fold(Duration::ZERO, |sum, (target, crates)| {
            crate::rust::cargo_build(layout, target, &crates).map(|elapsed| sum + elapsed)
        });
        let crates = rust.len();
        match built {
            Ok(elapsed) => {
                println!("{:<14} {:>10} {:>8}  (cargo build of {crates} crates)", "rust", "", secs(elapsed));
                for agent in rust {
                    let started = Instant::now();
                    let result = crate::rust::componentize(layout, agent).and_then(|bytes| {
                        install(layout, agent, &bytes)?;
                        Ok(bytes.len())
                    });
                    report(agent, result, started.elapsed(), &mut failures);
                }
            }
            Err(err) => {
                eprintln!("xtask: cargo build failed: {err:#}");
                failures.extend(rust.iter().map(|a| a.name));
            }
        }
    }

    for agent in selected.iter().filter(|a| !a.kind.is_rust()) {
        let out = output_path(layout, agent);
        if is_fresh(&out, &agent.inputs(layout))? {
            let size = fs::metadata(&out).map(|m| m.len() as usize).unwrap_or(0);
            println!("{:<14} {:>10} {:>8}  (up to date)", agent.name, size_str(size), "-");
            continue;
        }
        let started = Instant::now();
        let result = build_one(layout, agent).and_then(|bytes| {
            install(layout, agent, &bytes)?;
            Ok(bytes.len())
        });
        report(agent, result, started.elapsed(), &mut failures);
    }

    let tools = selected.iter().filter(|a| a.kind.is_tool()).count();
    let plugins = selected.iter().filter(|a| a.kind == Kind::ExtismPlugin).count();
    println!(
        "{} agent(s), {tools} tool(s) and {plugins} Extism plugin(s) in {}; output in {}, {} and {}",
        selected.len() - tools - plugins,
        secs(started.elapsed()),
        layout.out.display(),
        layout.tools_out.display(),
        layout.extism_out.display()
    );
    if !failures.is_empty() {
        bail!("failed to build: {}", failures.join(", "));
    }
    Ok(())
}

/// Builds one non-Rust agent and returns the component's bytes (for Go and Zig, the core module's).
fn build_one(layout: &Layout, agent: &Agent) -> Result<Vec<u8>> {
    let scratch = layout.build.join(agent.name);
    fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    match agent.kind {
        Kind::Python => crate::scripted::componentize_py(layout, agent.name, &scratch, "agent"),
        Kind::PythonTool => crate::scripted::componentize_py(layout, agent.name, &scratch, "tool"),
        Kind::JavaScript => crate::scripted::componentize_js(layout, agent.name, &scratch),
        Kind::C => {
            let core = crate::c::build_core(layout, agent.name, &scratch)?;
            component::encode(&core, Adapter::Reactor)
        }
        Kind::CCommand => crate::c::build_command(layout, agent.name, &scratch),
        Kind::Go => crate::preview1::go_build(layout, agent.name, &scratch),
        Kind::Zig => crate::preview1::zig_build(layout, agent.name, &scratch),
        Kind::RustReactor
        | Kind::RustCommand
        | Kind::RustTool
        | Kind::ExtismPlugin
        | Kind::RustP3Command
        | Kind::RustP3Agent
        | Kind::RustP3Tool => {
            bail!("{} is a Rust agent: it is built by cargo", agent.name)
        }
    }
}

/// Checks `bytes` and, if they are the component (or preview 1 or Extism core module) expected, writes them to
/// [`output_path`] (through a temporary file, so a failed build never leaves a half-written or unchecked output
/// behind).
fn install(layout: &Layout, agent: &Agent, bytes: &[u8]) -> Result<()> {
    component::check(layout, bytes, agent.expect())
        .with_context(|| format!("checking the {} component", agent.name))?;
    let out = output_path(layout, agent);
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = out.with_extension("wasm.tmp");
    fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &out).with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))
}

fn report(agent: &Agent, result: Result<usize>, elapsed: Duration, failures: &mut Vec<&'static str>) {
    match result {
        Ok(size) => println!("{:<14} {:>10} {:>8}", agent.name, size_str(size), secs(elapsed)),
        Err(err) => {
            println!("{:<14} {:>10} {:>8}  FAILED", agent.name, "-", secs(elapsed));
            eprintln!("xtask: {}: {err:#}", agent.name);
            failures.push(agent.name);
        }
    }
}

fn select(names: &[String]) -> Result<Vec<Agent>> {
    if names.is_empty() {
        return Ok(AGENTS.to_vec());
    }
    let mut selected: Vec<Agent> = Vec::new();
    for name in names {
        let Some(agent) = AGENTS.iter().find(|a| a.name == name) else {
            let known: Vec<&str> = AGENTS.iter().map(|a| a.name).collect();
            bail!("unknown agent or tool {name:?}; known: {}", known.join(", "));
        };
        if !selected.iter().any(|a| a.name == agent.name) {
            selected.push(*agent);
        }
    }
    // Keep the catalogue's order whatever the order on the command line.
    selected.sort_by_key(|a| AGENTS.iter().position(|b| b.name == a.name));
    Ok(selected)
}

pub fn output_path(layout: &Layout, agent: &Agent) -> PathBuf {
    let dir = match agent.kind {
        Kind::ExtismPlugin => &layout.extism_out,
        kind if kind.is_tool() => &layout.tools_out,
        _ => &layout.out,
    };
    dir.join(format!("{}.wasm", agent.name))
}

/// True if `out` exists and is newer than every file under `inputs`.
fn is_fresh(out: &Path, inputs: &[PathBuf]) -> Result<bool> {
    let Ok(built) = fs::metadata(out).and_then(|m| m.modified()) else {
        return Ok(false);
    };
    let mut newest = SystemTime::UNIX_EPOCH;
    for input in inputs {
        newest = newest.max(newest_mtime(input)?);
    }
    Ok(built > newest)
}

/// The newest modification time of `path` and, for a directory, of everything below it (caches excluded).
fn newest_mtime(path: &Path) -> Result<SystemTime> {
    let meta = fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let mut newest = meta.modified()?;
    if meta.is_dir() {
        for entry in fs::read_dir(path).with_context(|| format!("listing {}", path.display()))? {
            let entry = entry?;
            let name = entry.file_name();
            if name == "__pycache__" || name == "node_modules" {
                continue;
            }
            newest = newest.max(newest_mtime(&entry.path())?);
        }
    }
    Ok(newest)
}

fn secs(elapsed: Duration) -> String {
    format!("{:.1} s", elapsed.as_secs_f64())
}

fn size_str(bytes: usize) -> String {
    let bytes = bytes as f64;
    if bytes >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
    } else {
        format!("{:.1} KiB", bytes / 1024.0)
    }
}
