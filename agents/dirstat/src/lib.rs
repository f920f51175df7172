//! `dirstat`: summarizes a directory tree the agent was granted.
//!
//! Input `{"path": "/data", "top": 3}` (`top` defaults to 5). Walks `path` recursively with `std::fs`, never
//! following symbolic links, and returns `{"files":N,"dirs":M,"bytes":B,"largest":[{"path":..,"bytes":n},..]}`:
//! `files` and `bytes` count regular files, `dirs` counts directories below the root (not the root itself),
//! symbolic links and other special files are neither followed nor counted, and `largest` lists at most `top`
//! regular files by size descending, then path ascending. A directory that cannot be read (the root included)
//! fails the task with its path and the error.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};
use toka_sdk::{AgentError, Task};

fn default_top() -> usize {
    5
}

#[derive(Deserialize)]
struct Input {
    path: String,
    #[serde(default = "default_top")]
    top: usize,
}

#[derive(Serialize)]
struct FileSize {
    path: String,
    bytes: u64,
}

#[derive(Serialize, Default)]
struct Stats {
    files: u64,
    dirs: u64,
    bytes: u64,
    largest: Vec<FileSize>,
}

fn failed(path: &Path, err: std::io::Error) -> AgentError {
    AgentError::Failed(format!("{}: {err}", path.display()))
}

/// Orders files by size descending, then path ascending.
fn by_size(a: &FileSize, b: &FileSize) -> std::cmp::Ordering {
    b.bytes.cmp(&a.bytes).then_with(|| a.path.cmp(&b.path))
}

/// Walks `root` depth-first with an explicit stack (deep trees cannot exhaust the call stack), keeping only the
/// `top` largest files (memory stays bounded on trees with millions of files).
fn walk(
    root: &Path,
    top: usize,
    stats: &mut Stats,
    files: &mut Vec<FileSize>,
) -> Result<(), AgentError> {
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = fs::read_dir(&dir).map_err(|err| failed(&dir, err))?;
        for entry in entries {
            let entry = entry.map_err(|err| failed(&dir, err))?;
            let path = entry.path();
            // `symlink_metadata` describes the entry itself: a symbolic link is reported as a link, not followed.
            let meta = fs::symlink_metadata(&path).map_err(|err| failed(&path, err))?;
            let kind = meta.file_type();
            if kind.is_dir() {
                stats.dirs += 1;
                pending.push(path);
            } else if kind.is_file() {
                stats.files += 1;
                stats.bytes += meta.len();
                files.push(FileSize {
                    path: path.display().to_string(),
                    bytes: meta.len(),
                });
                if files.len() > top.saturating_mul(2).max(64) {
                    files.sort_by(by_size);
                    files.truncate(top);
                }
            }
        }
    }
    Ok(())
}

fn dirstat(_task: &Task, input: Input) -> Result<Stats, AgentError> {
    let root = Path::new(&input.path);
    let mut stats = Stats::default();
    let mut files = Vec::new();
    walk(root, input.top, &mut stats, &mut files)?;
    files.sort_by(by_size);
    files.truncate(input.top);
    stats.largest = files;
    toka_sdk::debug!(
        "{}: {} files, {} dirs, {} bytes",
        input.path,
        stats.files,
        stats.dirs,
        stats.bytes
    );
    Ok(stats)
}

toka_sdk::agent!(dirstat);
