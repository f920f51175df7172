//! C agents: bindings for world `toka:agent/agent` generated in-process with the `wit-bindgen-c` crate, compiled
//! with clang for wasm32-wasi as a reactor against Debian's wasi-libc, then componentized by the caller. Also plain
//! C commands (`main`), left WASI preview 1 core modules.
//!
//! The generated `agent_component_type.o` carries the world in a `component-type` custom section; linking it in is
//! what lets the component encoder know which imports and exports the module's functions stand for.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use wit_bindgen_core::Files;
use wit_bindgen_core::wit_parser::Resolve;

use crate::Layout;

const CLANG: &str = "clang";
const WASI_SYSROOT_LIB: &str = "/usr/lib/wasm32-wasi";

/// Writes the C bindings of world `toka:agent/agent` into `dir` (`agent.h`, `agent.c`, `agent_component_type.o`).
fn generate_bindings(layout: &Layout, dir: &Path) -> Result<()> {
    // wit-bindgen-c links its own wit-parser (re-exported by wit-bindgen-core), distinct from the one used to
    // decode components elsewhere in xtask: the `Resolve` here must come from that copy.
    let mut resolve = Resolve::default();
    let (package, _) =
        resolve.push_dir(&layout.wit).with_context(|| format!("parsing WIT in {}", layout.wit.display()))?;
    let world = resolve.select_world(&[package], Some("agent"))?;
    let mut files = Files::default();
    wit_bindgen_c::Opts::default().build().generate(&mut resolve, world, &mut files)?;
    for (name, contents) in files.iter() {
        let path = dir.join(name);
        fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The `.c` files of `agents/NAME`, sorted; fails if wasi-libc or the sources are missing.
fn sources(layout: &Layout, name: &str) -> Result<Vec<std::path::PathBuf>> {
    if !Path::new(WASI_SYSROOT_LIB).join("libc.a").exists() {
        bail!("wasi-libc is missing ({WASI_SYSROOT_LIB}/libc.a not found): run scripts/setup-toolchains");
    }
    let source_dir = layout.agents.join(name);
    let mut sources: Vec<_> = fs::read_dir(&source_dir)
        .with_context(|| format!("listing {}", source_dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    sources.retain(|path| path.extension().is_some_and(|ext| ext == "c"));
    sources.sort();
    if sources.is_empty() {
        bail!("no .c file in {}", source_dir.display());
    }
    Ok(sources)
}

/// Compiles `agents/NAME/*.c` (a program with `main`) into a WASI preview 1 command module; returns its bytes.
pub fn build_command(layout: &Layout, name: &str, scratch: &Path) -> Result<Vec<u8>> {
    let sources = sources(layout, name)?;
    let core = scratch.join("command.wasm");
    let mut clang = Command::new(CLANG);
    clang
        .args(["--target=wasm32-wasi", "-O2", "-std=c11", "-D_WASI_EMULATED_PROCESS_CLOCKS"])
        .args(["-Wall", "-Wextra", "-Werror"])
        .args(&sources)
        .args(["-lwasi-emulated-process-clocks", "-Wl,--strip-debug", "-o"])
        .arg(&core);
    compile(clang, &core)
}

/// Compiles `agents/NAME/*.c` with fresh bindings into a core module; returns its bytes.
pub fn build_core(layout: &Layout, name: &str, scratch: &Path) -> Result<Vec<u8>> {
    let sources = sources(layout, name)?;
    let gen_dir = scratch.join("gen");
    fs::create_dir_all(&gen_dir).with_context(|| format!("creating {}", gen_dir.display()))?;
    generate_bindings(layout, &gen_dir)?;

    let core = scratch.join("core.wasm");
    let mut clang = Command::new(CLANG);
    clang
        .args(["--target=wasm32-wasi", "-mexec-model=reactor", "-O2", "-std=c11"])
        .args(["-Wall", "-Wextra", "-Wno-unused-parameter"])
        .arg("-I")
        .arg(&gen_dir)
        .args(&sources)
        .arg(gen_dir.join("agent.c"))
        .arg(gen_dir.join("agent_component_type.o"))
        .args(["-Wl,--strip-debug", "-o"])
        .arg(&core);
    compile(clang, &core)
}

/// Runs a prepared clang command and returns the module it wrote to `out`.
fn compile(mut clang: Command, out: &Path) -> Result<Vec<u8>> {
    let status =
        clang.status().with_context(|| format!("running {CLANG} (install it with scripts/setup-toolchains)"))?;
    if !status.success() {
        bail!("{CLANG} exited with {status}");
    }
    fs::read(out).with_context(|| format!("reading {}", out.display()))
}
