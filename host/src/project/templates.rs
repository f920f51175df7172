//! The templates `toka-host new` writes, and the WIT this host speaks, all embedded in the binary: a project made
//! by this binary builds against exactly the interfaces this binary provides.
//!
//! Substitution is literal (`{{name}}`, `{{sdk}}`): the values are checked names and a path, and no template needs
//! logic. It never writes over an existing file.

use super::{Kind, Lang, Manifest, ProjectError, check_name};
use std::path::{Path, PathBuf};

/// The WIT of package `toka:agent` and the vendored WASI it includes, as `wit/` holds them (path, text).
pub const WIT: &[(&str, &str)] = &[
    ("agent.wit", include_str!("../../../wit/agent.wit")),
    ("deps/cli.wit", include_str!("../../../wit/deps/cli.wit")),
    ("deps/clocks.wit", include_str!("../../../wit/deps/clocks.wit")),
    ("deps/filesystem.wit", include_str!("../../../wit/deps/filesystem.wit")),
    ("deps/io.wit", include_str!("../../../wit/deps/io.wit")),
    ("deps/random.wit", include_str!("../../../wit/deps/random.wit")),
    ("deps/sockets.wit", include_str!("../../../wit/deps/sockets.wit")),
];

/// The lock file of the repository's own Rust agents: a new Rust project starts from the same crate versions
/// (cargo drops what the project does not use), so its first build resolves nothing anew.
const AGENTS_LOCK: &str = include_str!("../../../agents/Cargo.lock");

const GITIGNORE: &str = "/target/\n/build/\n/*.wasm\n__pycache__/\n";

/// The combinations `new` offers, for messages.
pub fn combinations() -> &'static str {
    "agents and tools: rust, python, js, c; commands: go, zig"
}

/// A file of a new project: its path inside the project and its text.
struct File {
    path: &'static str,
    text: String,
}

/// Writes the embedded WIT under `dir` (`dir/agent.wit`, `dir/deps/*.wit`), replacing what is there.
pub fn write_wit(dir: &Path) -> Result<(), ProjectError> {
    for (path, text) in WIT {
        let file = dir.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(|e| ProjectError::io(parent, e))?;
            // The WIT lives inside the project: a symlinked directory on the way would write it elsewhere.
            if parent.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(ProjectError::Invalid(format!(
                    "{}: a symlink; refusing to write through it",
                    parent.display()
                )));
            }
        }
        // Replaced, never written through: a symlink left at the file's place is removed, not followed.
        if file.symlink_metadata().is_ok() {
            std::fs::remove_file(&file).map_err(|e| ProjectError::io(&file, e))?;
        }
        std::fs::write(&file, text).map_err(|e| ProjectError::io(&file, e))?;
    }
    Ok(())
}

fn manifest(name: &str, kind: Kind, lang: Lang) -> String {
    let test = match kind {
        Kind::Command => "args = [\"Ada\"]\nexpect = \"Hello, Ada!\"\n".to_string(),
        Kind::Agent | Kind::Tool => "input = '{\"name\":\"Ada\"}'\nexpect = '{\"greeting\":\"Hello, Ada!\"}'\n".into(),
    };
    format!(
        "# Made by `toka-host new`; read by `toka-host build` (in this directory).\n\
         # name: the component is NAME.wasm, and runs of it are agent NAME in tokens (`--agent NAME`) and events.\n\
         name = \"{name}\"\n\
         kind = \"{}\"\n\
         lang = \"{}\"\n\
         \n\
         # `toka-host build --test` runs the built component once with this and compares what it prints.\n\
         [test]\n\
         {test}",
        kind.as_str(),
        lang.as_str()
    )
}

fn readme(name: &str, kind: Kind, lang: Lang, source: &str) -> String {
    let (run, prints) = match kind {
        Kind::Agent => {
            (format!("toka-host run --input '{{\"name\":\"Ada\"}}' {name}.wasm"), "{\"greeting\":\"Hello, Ada!\"}")
        }
        Kind::Tool => (
            format!("toka-host tool add {name}.wasm\ntoka-host tool call {name} --input '{{\"name\":\"Ada\"}}'"),
            "{\"greeting\":\"Hello, Ada!\"}",
        ),
        Kind::Command => (format!("toka-host run {name}.wasm Ada"), "Hello, Ada!"),
    };
    format!(
        "# {name}\n\nA toka-host {} in {}, made by `toka-host new`. The code is in `{source}`.\n\n\
         ```sh\n\
         toka-host build          # -> {name}.wasm\n\
         toka-host build --test   # and run it once with the input in toka-project.toml\n\
         {run}\n\
         ```\n\nprints `{prints}`.\n",
        kind.as_str(),
        lang.as_str()
    )
}

/// The files of a new project.
fn files(name: &str, kind: Kind, lang: Lang) -> Result<Vec<File>, ProjectError> {
    let fill = |t: &str| t.replace("{{name}}", name);
    let mut out = Vec::new();
    let source = match (lang, kind) {
        (Lang::Rust, Kind::Agent | Kind::Tool) => {
            let sdk = super::sdk_dir()?;
            let sdk = sdk.to_str().ok_or_else(|| ProjectError::Invalid("the toka-sdk path is not UTF-8".into()))?;
            let cargo = fill(include_str!("templates/rust-agent.Cargo.toml")).replace("{{sdk}}", sdk);
            out.push(File { path: "Cargo.toml", text: cargo });
            out.push(File { path: "Cargo.lock", text: AGENTS_LOCK.to_string() });
            let lib = if kind == Kind::Agent {
                include_str!("templates/rust-agent.lib.rs")
            } else {
                include_str!("templates/rust-tool.lib.rs")
            };
            out.push(File { path: "src/lib.rs", text: fill(lib) });
            "src/lib.rs"
        }
        (Lang::Python, Kind::Agent) => {
            out.push(File { path: "agent.py", text: fill(include_str!("templates/python-agent.py")) });
            "agent.py"
        }
        (Lang::Python, Kind::Tool) => {
            out.push(File { path: "tool.py", text: fill(include_str!("templates/python-tool.py")) });
            "tool.py"
        }
        (Lang::Js, Kind::Agent) => {
            out.push(File { path: "agent.js", text: fill(include_str!("templates/js-agent.js")) });
            "agent.js"
        }
        (Lang::Js, Kind::Tool) => {
            out.push(File { path: "tool.js", text: fill(include_str!("templates/js-tool.js")) });
            "tool.js"
        }
        (Lang::C, Kind::Agent) => {
            out.push(File { path: "agent.c", text: fill(include_str!("templates/c-agent.c")) });
            "agent.c"
        }
        (Lang::C, Kind::Tool) => {
            out.push(File { path: "tool.c", text: fill(include_str!("templates/c-tool.c")) });
            "tool.c"
        }
        (Lang::Go, Kind::Command) => {
            out.push(File { path: "main.go", text: fill(include_str!("templates/go-command.go")) });
            out.push(File { path: "go.mod", text: fill(include_str!("templates/go.mod")) });
            "main.go"
        }
        (Lang::Zig, Kind::Command) => {
            out.push(File { path: "main.zig", text: fill(include_str!("templates/zig-command.zig")) });
            "main.zig"
        }
        (lang, kind) => {
            return Err(ProjectError::Invalid(format!(
                "a {} cannot be written in {} here ({})",
                kind.as_str(),
                lang.as_str(),
                combinations()
            )));
        }
    };
    out.push(File { path: super::MANIFEST, text: manifest(name, kind, lang) });
    out.push(File { path: "README.md", text: readme(name, kind, lang, source) });
    out.push(File { path: ".gitignore", text: GITIGNORE.to_string() });
    Ok(out)
}

/// Makes a new project `name` in `dir` (created; it must not exist, or be empty). Returns the files written.
pub fn scaffold(dir: &Path, name: &str, kind: Kind, lang: Lang) -> Result<Vec<PathBuf>, ProjectError> {
    check_name(name)?;
    let files = files(name, kind, lang)?;
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(ProjectError::Invalid(format!(
                    "{} already exists and is not empty: choose another name or --path",
                    dir.display()
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| ProjectError::io(dir, e))?;
        }
        Err(e) => return Err(ProjectError::io(dir, e)),
    }
    let mut written = Vec::new();
    for file in files {
        let path = dir.join(file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| ProjectError::io(parent, e))?;
        }
        // create_new: never over a file that appeared meanwhile.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| ProjectError::io(&path, e))?;
        std::io::Write::write_all(&mut f, file.text.as_bytes()).map_err(|e| ProjectError::io(&path, e))?;
        written.push(path);
    }
    // What was written must read back as a project.
    Manifest::read(dir)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded WIT is all of `wit/`: a file added there (a new interface) must be embedded too, or projects
    /// made by this binary would build against an incomplete world.
    #[test]
    fn the_embedded_wit_is_every_file_of_wit() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
        let mut on_disk = Vec::new();
        for sub in ["", "deps"] {
            for entry in std::fs::read_dir(root.join(sub)).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "wit") {
                    let name = path.file_name().unwrap().to_string_lossy().into_owned();
                    on_disk.push(if sub.is_empty() { name } else { format!("{sub}/{name}") });
                }
            }
        }
        on_disk.sort();
        let mut embedded: Vec<String> = WIT.iter().map(|(p, _)| p.to_string()).collect();
        embedded.sort();
        assert_eq!(embedded, on_disk);
    }

    #[test]
    fn names_follow_the_agent_name_rule() {
        for ok in ["a", "hello", "hello-rust", "x1", &"a".repeat(63)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Hello", "1abc", "-a", "a-", "a_b", "a.b", "a/b", "../x", "a b", &"a".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_offered_combination_has_templates_and_no_other() {
        use clap::ValueEnum;
        for kind in Kind::value_variants() {
            for lang in Lang::value_variants() {
                if *lang == Lang::Rust {
                    continue; // needs the SDK path: covered by the end-to-end test
                }
                assert_eq!(files("x", *kind, *lang).is_ok(), lang.supports(*kind), "{kind:?} {lang:?}");
            }
        }
    }
}
