//! Guest stdout and stderr: echoed live to the host's streams and/or captured for the run report, with a hard cap.
//!
//! Writing past the cap stores what fits, marks the stream as exceeded and traps the guest: a guest that floods its
//! output is stopped, not allowed to fill the host's memory or disk. The host classifies the trap by the flag, not by
//! parsing messages.

use bytes::Bytes;
use std::io::Write;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// Where a guest stream's bytes go besides the capture buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    None,
    Stdout,
    Stderr,
}

#[derive(Debug)]
struct Shared {
    echo: Echo,
    capture: bool,
    buffer: Vec<u8>,
    written: u64,
    limit: u64,
    exceeded: bool,
}

/// One guest output stream (stdout or stderr). Cloning shares the same buffer and counters.
#[derive(Debug, Clone)]
pub struct CappedOutput(Arc<Mutex<Shared>>);

/// The error a guest write past the cap traps with.
#[derive(Debug, thiserror::Error)]
#[error("output limit of {limit} bytes exceeded")]
pub struct OutputLimitExceeded {
    pub limit: u64,
}

impl CappedOutput {
    pub fn new(echo: Echo, capture: bool, limit: u64) -> Self {
        CappedOutput(Arc::new(Mutex::new(Shared {
            echo,
            capture,
            buffer: Vec::new(),
            written: 0,
            limit,
            exceeded: false,
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        // A poisoned lock only means another writer panicked mid-write; the counters are still meaningful.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The captured bytes (empty unless capturing), lossily decoded.
    pub fn captured(&self) -> String {
        String::from_utf8_lossy(&self.lock().buffer).into_owned()
    }

    pub fn bytes_written(&self) -> u64 {
        self.lock().written
    }

    pub fn exceeded(&self) -> bool {
        self.lock().exceeded
    }

    /// Accepts as much of `data` as the cap allows. Returns an error once the cap is passed.
    fn accept(&self, data: &[u8]) -> Result<(), OutputLimitExceeded> {
        let mut s = self.lock();
        let room = s.limit.saturating_sub(s.written);
        let take = (data.len() as u64).min(room) as usize;
        let part = &data[..take];
        // Echo failures (a closed pipe on the host side) must not kill the guest; the bytes still count.
        match s.echo {
            Echo::None => {}
            Echo::Stdout => drop(std::io::stdout().write_all(part)),
            Echo::Stderr => drop(std::io::stderr().write_all(part)),
        }
        if s.capture {
            s.buffer.extend_from_slice(part);
        }
        s.written += take as u64;
        if take < data.len() {
            s.exceeded = true;
            return Err(OutputLimitExceeded { limit: s.limit });
        }
        Ok(())
    }

    fn flush_echo(&self) {
        match self.lock().echo {
            Echo::None => {}
            Echo::Stdout => drop(std::io::stdout().flush()),
            Echo::Stderr => drop(std::io::stderr().flush()),
        }
    }
}

impl IsTerminal for CappedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// Largest write a guest is invited to make at once.
const WRITE_BUDGET: u64 = 64 * 1024;

impl OutputStream for CappedOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.accept(&bytes).map_err(|e| StreamError::Trap(wasmtime::Error::new(e)))
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.flush_echo();
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        let s = self.lock();
        let room = s.limit.saturating_sub(s.written);
        if s.exceeded || room == 0 {
            // The guest wants to write and nothing fits: stop it now rather than let it wait forever.
            drop(s);
            return self.write(Bytes::from_static(b"\n")).map(|_| 0);
        }
        Ok(room.min(WRITE_BUDGET) as usize)
    }
}

#[async_trait::async_trait]
impl Pollable for CappedOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CappedOutput {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Poll::Ready(self.accept(buf).map(|()| buf.len()).map_err(std::io::Error::other))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.flush_echo();
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_what_fits_then_refuses() {
        let out = CappedOutput::new(Echo::None, true, 10);
        out.accept(b"hello").unwrap();
        let err = out.accept(b" world!").unwrap_err();
        assert_eq!(err.limit, 10);
        assert_eq!(out.captured(), "hello worl");
        assert!(out.exceeded());
        assert_eq!(out.bytes_written(), 10);
    }

    #[test]
    fn counts_without_capturing() {
        let out = CappedOutput::new(Echo::None, false, 100);
        out.accept(b"abc").unwrap();
        assert_eq!(out.captured(), "");
        assert_eq!(out.bytes_written(), 3);
    }
}
