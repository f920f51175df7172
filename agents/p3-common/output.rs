//! Stdout and stderr through WASI 0.3 streams, shared by the WASI 0.3 test programs that print (`p3-probe`,
//! `p3-agent`). Included as a module of each (`#[path = "../../p3-common/output.rs"]`), so it is compiled against that
//! program's bindings: `stdout`, `stderr` and `wit_stream` are the including module's.

use super::{stderr, stdout, wit_stream};

#[derive(Clone, Copy)]
pub enum Target {
    Stdout,
    Stderr,
}

/// Writes `bytes` through a new stream to stdout or stderr and waits until the host has taken all of them.
pub async fn emit(bytes: Vec<u8>, target: Target) -> Result<(), String> {
    let (mut tx, rx) = wit_stream::new::<u8>();
    let done = match target {
        Target::Stdout => stdout::write_via_stream(rx),
        Target::Stderr => stderr::write_via_stream(rx),
    };
    let refused = tx.write_all(bytes).await;
    drop(tx);
    let result = done.await;
    if !refused.is_empty() {
        return Err(format!("{} bytes not taken ({result:?})", refused.len()));
    }
    result.map_err(|e| format!("{e:?}"))
}
