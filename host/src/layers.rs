//! Keeps the layering of DESIGN.md from regressing silently: the mechanism (the sandbox: store, WASI, limits, the
//! host interfaces; the engine: the linker) never imports a layer above it. Upward calls go through the traits in
//! [`crate::sandbox::caps`], implemented above.
//!
//! The check reads the source: every `crate::` path (including grouped ones, `crate::{a, b::c}`) in the files of
//! the lower layer must not start with a higher module.

use std::path::{Path, PathBuf};

/// Modules above the sandbox and the engine.
const HIGHER: &[&str] =
    &["run", "runtime", "tools", "llm", "commands", "service", "orchestrate", "plugin", "project", "client", "cluster"];

/// The faces and the host object: the cluster (below them, above the record layer) imports none of them.
const ABOVE_CLUSTER: &[&str] =
    &["run", "runtime", "tools", "llm", "commands", "service", "orchestrate", "plugin", "project", "client", "sandbox"];

/// The modules every `crate::` path in `source` starts with.
fn crate_modules(source: &str) -> Vec<String> {
    let ident = |s: &str| -> String { s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect() };
    let mut found = Vec::new();
    for (at, _) in source.match_indices("crate::") {
        let rest = source[at + "crate::".len()..].trim_start();
        match rest.strip_prefix('{') {
            // A grouped path: each top-level item of the braces names a module.
            Some(group) => {
                let mut depth = 0usize;
                let mut start = true;
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => start = true,
                        c if start && !c.is_whitespace() => {
                            found.push(ident(&group[i..]));
                            start = false;
                        }
                        _ => {}
                    }
                }
            }
            None => found.push(ident(rest)),
        }
    }
    found
}

fn sources_of(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            sources_of(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// `(file, module)` for every higher module a file names.
fn upward_imports(files: &[PathBuf]) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for file in files {
        let source = std::fs::read_to_string(file).unwrap();
        for module in crate_modules(&source) {
            if HIGHER.contains(&module.as_str()) {
                found.push((file.display().to_string(), module));
            }
        }
    }
    found
}

#[test]
fn the_sandbox_and_the_engine_import_no_higher_layer() {
    let mut files = vec![src().join("engine.rs"), src().join("journal.rs"), src().join("bindings.rs")];
    sources_of(&src().join("sandbox"), &mut files);
    assert!(files.len() > 10, "the sandbox's files were not found: {files:?}");
    let found = upward_imports(&files);
    assert!(found.is_empty(), "lower layers import higher ones: {found:?}");
}

/// The record layer (the kernel, the log, the database, the bounds of what is recorded) knows nothing above it
/// either: a plan's bounds live in `bounds` and `orchestrate` re-exports them.
#[test]
fn the_record_layer_imports_no_higher_layer() {
    let mut files = vec![src().join("kernel.rs"), src().join("bounds.rs"), src().join("db.rs")];
    sources_of(&src().join("events"), &mut files);
    let found = upward_imports(&files);
    assert!(found.is_empty(), "the record layer imports higher ones: {found:?}");
}

/// The cluster replicates the record layer's operations: it knows no face, no host object and no sandbox.
#[test]
fn the_cluster_imports_no_face() {
    let mut files = Vec::new();
    sources_of(&src().join("cluster"), &mut files);
    assert!(files.len() >= 4, "the cluster's files were not found: {files:?}");
    let mut found = Vec::new();
    for file in &files {
        let source = std::fs::read_to_string(file).unwrap();
        for module in crate_modules(&source) {
            if ABOVE_CLUSTER.contains(&module.as_str()) {
                found.push((file.display().to_string(), module));
            }
        }
    }
    assert!(found.is_empty(), "the cluster imports a face: {found:?}");
    // Positive control: the record layer's modules it does use are seen.
    let all: Vec<String> = files.iter().flat_map(|f| crate_modules(&std::fs::read_to_string(f).unwrap())).collect();
    assert!(all.iter().any(|m| m == "events") && all.iter().any(|m| m == "db"), "{all:?}");
}

#[test]
fn the_check_sees_imports() {
    // Positive controls: the same check on files that do import the layers named finds them.
    let found = upward_imports(&[src().join("run.rs")]);
    assert!(found.iter().any(|(_, m)| m == "tools"), "run.rs imports the tool host: {found:?}");
    let call = std::fs::read_to_string(src().join("tools").join("call.rs")).unwrap();
    assert!(crate_modules(&call).iter().any(|m| m == "sandbox"));
    // Grouped and spaced paths are seen too.
    let grouped = "use crate::{error::RunError, run::{Limits, Runner}, tools};\nlet x = crate:: llm::shown(y);";
    assert_eq!(crate_modules(grouped), ["error", "run", "tools", "llm"]);
}
