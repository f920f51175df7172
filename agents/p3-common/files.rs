//! Paths and files through WASI 0.3's preopened directories, shared by the WASI 0.3 test programs (`p3-probe`,
//! `p3-agent`, `p3-tool`). Each includes this file as a module of its own (`#[path = "../../p3-common/files.rs"]`), so
//! it is compiled against that program's bindings: `Descriptor`, `preopens` and the flag types are the including
//! module's.

use super::{Descriptor, DescriptorFlags, OpenFlags, PathFlags, preopens, wit_stream};

/// The preopen whose name is the longest prefix of `path` (a component boundary), and the rest of the path.
pub fn resolve(path: &str) -> Result<(Descriptor, String), String> {
    let mut best: Option<(Descriptor, String)> = None;
    let mut best_len = 0;
    for (dir, name) in preopens::get_directories() {
        let rest = if path == name {
            Some(".".to_owned())
        } else if name == "/" {
            path.strip_prefix('/').map(str::to_owned)
        } else {
            path.strip_prefix(&name).and_then(|r| r.strip_prefix('/')).map(str::to_owned)
        };
        if let Some(rest) = rest
            && (best.is_none() || name.len() > best_len)
        {
            best_len = name.len();
            best = Some((dir, if rest.is_empty() { ".".into() } else { rest }));
        }
    }
    best.ok_or_else(|| format!("{path}: not under a preopened directory"))
}

/// The whole content of the file at `path`, read through a stream.
pub async fn read(path: &str) -> Result<Vec<u8>, String> {
    let (dir, rest) = resolve(path)?;
    let file = dir
        .open_at(PathFlags::SYMLINK_FOLLOW, rest, OpenFlags::empty(), DescriptorFlags::READ)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let (data, done) = file.read_via_stream(0);
    let bytes = data.collect().await;
    done.await.map_err(|e| format!("{e:?}"))?;
    Ok(bytes)
}

/// Writes `text` as the whole content of the file at `path` (created or truncated) through a stream; the bytes
/// written.
pub async fn write(path: &str, text: &str) -> Result<usize, String> {
    let (dir, rest) = resolve(path)?;
    let file = dir
        .open_at(PathFlags::empty(), rest, OpenFlags::CREATE | OpenFlags::TRUNCATE, DescriptorFlags::WRITE)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let (mut tx, rx) = wit_stream::new::<u8>();
    let done = file.write_via_stream(rx, 0);
    let refused = tx.write_all(text.as_bytes().to_vec()).await;
    drop(tx);
    done.await.map_err(|e| format!("{e:?}"))?;
    if !refused.is_empty() {
        return Err(format!("{} bytes not written", refused.len()));
    }
    Ok(text.len())
}
