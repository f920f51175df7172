//! Guest stdout and stderr: echoed live to the host's streams and/or captured for the run report, with a hard cap.
//!
//! Writing past the cap stores what fits, marks the stream as exceeded and traps the guest: a guest that floods its
//! output is stopped, not allowed to fill the host's memory or disk. The host classifies the trap by the flag, not by
//! parsing messages.
//!
//! Echoing never blocks a run past its deadline: bytes go to one writer thread per host stream through a bounded
//! queue, and a guest write waits for room only until its run's deadline. If the host's stdout is a pipe nobody reads,
//! the run still ends on time (what could not be echoed is counted, and reported, not written).

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
    /// Echo waits for room in the writer's queue until then, no longer.
    deadline: std::time::Instant,
    /// Bytes not echoed because the host stream was not being read before the deadline.
    unechoed: u64,
}

/// What the writer thread of a host stream is asked to do.
enum Chunk {
    Data(Vec<u8>),
    /// Answer once everything queued before has been written.
    Flush(std::sync::mpsc::SyncSender<()>),
}

/// Chunks queued for a host stream at most; a guest write beyond that waits (until its deadline).
const ECHO_QUEUE: usize = 256;

/// The writer threads' queues of the host's stdout and stderr, once started.
static OUT: std::sync::OnceLock<Option<std::sync::mpsc::SyncSender<Chunk>>> = std::sync::OnceLock::new();
static ERR: std::sync::OnceLock<Option<std::sync::mpsc::SyncSender<Chunk>>> = std::sync::OnceLock::new();

/// The queue of the writer thread for `which` (started on first use; it lives as long as the process).
fn echo_queue(which: Echo) -> Option<&'static std::sync::mpsc::SyncSender<Chunk>> {
    let start = |stderr: bool| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Chunk>(ECHO_QUEUE);
        let spawned = std::thread::Builder::new()
            .name(if stderr { "toka-stderr" } else { "toka-stdout" }.into())
            .spawn(move || {
                for chunk in rx {
                    match chunk {
                        // A closed pipe on the host side is not the guest's failure: the bytes still counted.
                        Chunk::Data(bytes) if stderr => drop(std::io::stderr().write_all(&bytes)),
                        Chunk::Data(bytes) => drop(std::io::stdout().write_all(&bytes)),
                        Chunk::Flush(done) => {
                            drop(if stderr { std::io::stderr().flush() } else { std::io::stdout().flush() });
                            let _ = done.send(());
                        }
                    }
                }
            });
        spawned.ok().map(|_| tx)
    };
    match which {
        Echo::None => None,
        Echo::Stdout => OUT.get_or_init(|| start(false)).as_ref(),
        Echo::Stderr => ERR.get_or_init(|| start(true)).as_ref(),
    }
}

/// Starts the writer thread of the host stream `which` now, for a caller that knows it will echo to it and has a
/// moment to spare (a run waiting for its component to load), rather than at the guest's first write.
pub fn start_echo(which: Echo) {
    echo_queue(which);
}

/// Queues `bytes` for the host stream `which`, waiting for room until `deadline`. False if it could not.
pub fn echo(which: Echo, bytes: &[u8], deadline: std::time::Instant) -> bool {
    let Some(queue) = echo_queue(which) else { return true };
    let mut chunk = Chunk::Data(bytes.to_vec());
    loop {
        match queue.try_send(chunk) {
            Ok(()) => return true,
            Err(std::sync::mpsc::TrySendError::Full(back)) if std::time::Instant::now() < deadline => {
                chunk = back;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(_) => return false,
        }
    }
}

/// Waits until everything echoed so far has been written to the host's streams (before the host prints its own
/// lines, so they come after the guest's). This wait is the host's own, after the run: it may block like any
/// program writing to a pipe nobody reads.
pub fn drain_echo() {
    // A stream nothing was echoed to has no writer thread, and none is started for it here.
    for queue in [&OUT, &ERR] {
        if let Some(queue) = queue.get().and_then(Option::as_ref) {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            if queue.send(Chunk::Flush(tx)).is_ok() {
                let _ = rx.recv();
            }
        }
    }
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
    /// A stream capped at `limit` bytes whose echo never waits past `deadline`.
    pub fn new(echo: Echo, capture: bool, limit: u64, deadline: std::time::Instant) -> Self {
        CappedOutput(Arc::new(Mutex::new(Shared {
            echo,
            capture,
            buffer: Vec::new(),
            written: 0,
            limit,
            exceeded: false,
            deadline,
            unechoed: 0,
        })))
    }

    /// Bytes the guest wrote that could not be echoed before its deadline (the host stream was not being read).
    pub fn unechoed(&self) -> u64 {
        self.lock().unechoed
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

    /// Starts the stream over for the next call into the same store (a kept tool instance): nothing written,
    /// nothing captured, the cap whole again, echo waiting no later than `deadline`. The cap stays per call, as it
    /// is for a fresh store.
    pub fn rearm(&self, deadline: std::time::Instant) {
        let mut s = self.lock();
        s.buffer.clear();
        s.written = 0;
        s.exceeded = false;
        s.unechoed = 0;
        s.deadline = deadline;
    }

    /// The error a guest is stopped with once this output passed its cap (`None` while it has not).
    pub fn over_limit(&self) -> Option<OutputLimitExceeded> {
        let s = self.lock();
        s.exceeded.then_some(OutputLimitExceeded { limit: s.limit })
    }

    /// Accepts as much of `data` as the cap allows. Returns an error once the cap is passed.
    fn accept(&self, data: &[u8]) -> Result<(), OutputLimitExceeded> {
        let mut s = self.lock();
        let room = s.limit.saturating_sub(s.written);
        let take = (data.len() as u64).min(room) as usize;
        let part = &data[..take];
        // Once echo has stalled, the rest of the run's output is counted, not queued.
        if s.echo != Echo::None && !part.is_empty() && (s.unechoed > 0 || !echo(s.echo, part, s.deadline)) {
            s.unechoed += part.len() as u64;
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

    /// Flushing is the writer thread's business; a guest's flush never waits on the host's stream.
    fn flush_echo(&self) {}
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
        if s.exceeded {
            drop(s);
            return self.write(Bytes::from_static(b"\n")).map(|_| 0);
        }
        // A full stream still says it can take a byte: `blocking-flush` waits for a non-zero answer here, so a guest
        // that wrote exactly the cap and flushes must not be stopped (nor left waiting forever); the byte it may then
        // write passes the cap and stops it.
        Ok(room.clamp(1, WRITE_BUDGET) as usize)
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
        let out = CappedOutput::new(Echo::None, true, 10, std::time::Instant::now());
        out.accept(b"hello").unwrap();
        let err = out.accept(b" world!").unwrap_err();
        assert_eq!(err.limit, 10);
        assert_eq!(out.captured(), "hello worl");
        assert!(out.exceeded());
        assert_eq!(out.bytes_written(), 10);
    }

    #[test]
    fn a_full_stream_can_still_flush_and_its_next_byte_is_refused() {
        let mut out = CappedOutput::new(Echo::None, true, 5, std::time::Instant::now());
        out.accept(b"hello").unwrap();
        assert_eq!(out.check_write().unwrap(), 1, "blocking-flush waits for a non-zero answer");
        assert!(!out.exceeded(), "exactly the cap is within it");
        assert!(out.write(Bytes::from_static(b"!")).is_err());
        assert!(out.exceeded());
        assert!(out.check_write().is_err());
    }

    #[test]
    fn counts_without_capturing() {
        let out = CappedOutput::new(Echo::None, false, 100, std::time::Instant::now());
        out.accept(b"abc").unwrap();
        assert_eq!(out.captured(), "");
        assert_eq!(out.bytes_written(), 3);
    }
}
