//! Projects of one's own: `toka-host new` scaffolds an agent, a tool or a command from templates embedded in this
//! binary, `toka-host build` builds one with the guest toolchains that `scripts/setup-toolchains` installs, and
//! [`componentize`] turns a core module into a component in-process (wit-component and the preview 1 adapters of
//! this wasmtime), as `toka-host componentize` does for any module.
//!
//! What it must never do: write outside the project directory (except the toolchains' shared caches under the
//! toolchain directory), overwrite a file `new` did not create, or run anything but the toolchain programs it names.
//! A project's manifest (`toka-project.toml`) is data from the user: unknown fields and kinds are refused, names are
//! checked against [`check_name`] before they reach a file name or a command line.

pub mod build;
pub mod componentize;
pub mod templates;

pub use componentize::componentize;

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The manifest file of a project.
pub const MANIFEST: &str = "toka-project.toml";

/// What a project builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A `toka:agent/agent` component: `run(task)` with JSON in and out.
    Agent,
    /// A `toka:agent/tool` component: `describe()` and `invoke(json)`.
    Tool,
    /// A plain WASI program (`main`), made a `wasi:cli/command` component.
    Command,
}

/// The language of a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    Rust,
    Python,
    Js,
    C,
    Go,
    Zig,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Agent => "agent",
            Kind::Tool => "tool",
            Kind::Command => "command",
        }
    }
}

impl Lang {
    pub fn as_str(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Js => "js",
            Lang::C => "c",
            Lang::Go => "go",
            Lang::Zig => "zig",
        }
    }

    /// Whether `kind` can be written in this language here: agents and tools need a toolchain that builds a
    /// custom WIT world (Rust, Python, JavaScript, C); Go and Zig emit preview 1 programs, hence commands.
    pub fn supports(self, kind: Kind) -> bool {
        match self {
            Lang::Go | Lang::Zig => kind == Kind::Command,
            Lang::Rust | Lang::Python | Lang::Js | Lang::C => kind != Kind::Command,
        }
    }
}

/// A project's `toka-project.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The agent's (or tool's, or command's) name: the component is `NAME.wasm`, and a run of it is recorded and
    /// authorized as agent NAME.
    pub name: String,
    pub kind: Kind,
    pub lang: Lang,
    /// What `toka-host build --test` checks.
    #[serde(default)]
    pub test: Option<TestCase>,
}

/// One run of the built component and the output it must print.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    /// The task input (agents) or the tool's input (tools), as JSON text.
    #[serde(default)]
    pub input: Option<String>,
    /// The command's arguments (commands).
    #[serde(default)]
    pub args: Vec<String>,
    /// What stdout must be, without the final newline.
    pub expect: String,
}

/// Why a project cannot be made, read or built. Each is one line for `toka-host: ...`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectError {
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
    #[error(
        "{what} is missing ({path} not found): run scripts/setup-toolchains in the toka-host checkout, or set {var}"
    )]
    MissingTool { what: String, path: String, var: &'static str },
    #[error("{0}")]
    Failed(String),
}

impl ProjectError {
    pub(crate) fn io(path: &Path, e: impl std::fmt::Display) -> Self {
        ProjectError::Io { path: path.display().to_string(), reason: e.to_string() }
    }
}

/// Longest agent name.
pub const MAX_NAME: usize = 63;

/// The agent name rule: lowercase ASCII letters, digits and `-`, starting with a letter, at most [`MAX_NAME`]
/// characters. It is the component's file name (the host names a run's agent after the file), a Rust crate, a Go
/// module and a directory at once, and what tokens name with `--agent`.
pub fn check_name(name: &str) -> Result<(), ProjectError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ProjectError::Invalid(format!(
            "invalid name `{name}`: use lowercase letters, digits and `-`, starting with a letter, at most {MAX_NAME} \
             characters (it becomes {name}.wasm, and runs of it are agent `{name}` in tokens and events)"
        )))
    }
}

impl Manifest {
    /// Reads `DIR/toka-project.toml`.
    pub fn read(dir: &Path) -> Result<Manifest, ProjectError> {
        let path = dir.join(MANIFEST);
        // Read bounded: the file is the user's, and may be anything (a symlink to /dev/zero).
        let read = std::fs::File::open(&path).and_then(|f| {
            use std::io::Read;
            let mut text = String::new();
            f.take(64 * 1024 + 1).read_to_string(&mut text).map(|_| text)
        });
        let text = match read {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ProjectError::Invalid(format!(
                    "{}: file not found: not a toka-host project (make one with `toka-host new agent NAME --lang \
                     rust|python|js|c`)",
                    path.display()
                )));
            }
            Err(e) => return Err(ProjectError::io(&path, e)),
        };
        if text.len() > 64 * 1024 {
            return Err(ProjectError::Invalid(format!("{}: over 64 KiB", path.display())));
        }
        let manifest: Manifest = toml::from_str(&text).map_err(|e| {
            ProjectError::Invalid(format!("{}: {}", path.display(), crate::error::one_line(&e.to_string())))
        })?;
        check_name(&manifest.name)?;
        if !manifest.lang.supports(manifest.kind) {
            return Err(ProjectError::Invalid(format!(
                "{}: a {} cannot be written in {} here ({})",
                path.display(),
                manifest.kind.as_str(),
                manifest.lang.as_str(),
                templates::combinations()
            )));
        }
        Ok(manifest)
    }
}

/// Where the toka-host checkout that built this binary is: the directory holding `guest-sdk/` and `.tools/`,
/// found above the executable (`CHECKOUT/target/release/toka-host`). `None` for an installed binary.
pub fn checkout() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .skip(1)
        .take(4)
        .find(|dir| dir.join("guest-sdk").join("Cargo.toml").is_file())
        .map(Path::to_path_buf)
}

/// The toka-sdk crate for Rust projects: `$TOKA_SDK`, else the checkout's `guest-sdk/`.
pub fn sdk_dir() -> Result<PathBuf, ProjectError> {
    if let Some(dir) = std::env::var_os("TOKA_SDK") {
        let dir = PathBuf::from(dir);
        if !dir.join("Cargo.toml").is_file() {
            return Err(ProjectError::Invalid(format!("TOKA_SDK={}: no Cargo.toml there", dir.display())));
        }
        return std::path::absolute(&dir).map_err(|e| ProjectError::io(&dir, e));
    }
    checkout().map(|c| c.join("guest-sdk")).ok_or_else(|| {
        ProjectError::Invalid(
            "cannot find the toka-sdk crate: set TOKA_SDK to the guest-sdk directory of a toka-host checkout".into(),
        )
    })
}

/// The guest toolchains: `$TOKA_TOOLS`, else the checkout's `.tools/` (what `scripts/setup-toolchains` fills).
pub fn tools_dir() -> Option<PathBuf> {
    std::env::var_os("TOKA_TOOLS").map(PathBuf::from).or_else(|| checkout().map(|c| c.join(".tools")))
}
