//! What a guest tried to use without the grant for it. The guest itself only sees what a program without that right
//! sees (an empty stdin, a refused connection); the host notes each attempt so that the run can say which grant was
//! missing: a `toka-host: denied:` line on stderr, the `denied` list of the run report, and the run's last event.
//!
//! Noted: reading stdin without `--inherit-stdin` (`wasmtime run` passes its stdin on by default, toka-host does not)
//! every socket address refused for want of an `--allow-net` grant, and every name lookup of a name no grant covers. A path outside the granted directories is not
//! an attempt the host can see: it does not exist for the guest, as under `wasmtime run`.

use bytes::Bytes;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdinStream};
use wasmtime_wasi::p2::{InputStream, Pollable, StreamError};

/// Distinct denials noted in one run, first ones first; a guest retrying in a loop cannot grow it past this.
const MAX_NOTED: usize = 16;

/// The denials of one run, shared by the pieces of its sandbox.
#[derive(Debug, Clone, Default)]
pub struct Denied(Arc<Mutex<Vec<String>>>);

impl Denied {
    /// Notes one denial (once, however often the guest repeats it).
    pub fn note(&self, what: impl Into<String>) {
        let what = what.into();
        let mut noted = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if noted.len() < MAX_NOTED && !noted.contains(&what) {
            noted.push(what);
        }
    }

    /// Everything noted so far.
    pub fn list(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// What a guest reading stdin without the grant is told is missing.
pub const STDIN: &str = "read stdin: not granted (--inherit-stdin); the guest saw an empty stdin";

/// The stdin of a run without `--inherit-stdin`: always at its end; a read notes the missing grant. Only a read
/// counts: preview 1 programs open their stdin stream at start-up whether they read it or not.
#[derive(Clone)]
pub struct UngrantedStdin(pub Denied);

impl IsTerminal for UngrantedStdin {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdinStream for UngrantedStdin {
    fn p2_stream(&self) -> Box<dyn InputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncRead + Send + Sync> {
        Box::new(self.clone())
    }
}

impl InputStream for UngrantedStdin {
    fn read(&mut self, _size: usize) -> Result<Bytes, StreamError> {
        self.0.note(STDIN);
        Err(StreamError::Closed)
    }
}

#[async_trait::async_trait]
impl Pollable for UngrantedStdin {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncRead for UngrantedStdin {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        _buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.0.note(STDIN);
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_denial_is_noted_once_and_the_list_is_bounded() {
        let denied = Denied::default();
        let mut stdin = UngrantedStdin(denied.clone());
        assert!(matches!(stdin.read(10), Err(StreamError::Closed)));
        assert!(matches!(stdin.read(10), Err(StreamError::Closed)));
        assert_eq!(denied.list(), vec![STDIN.to_string()]);
        for port in 0..100 {
            denied.note(format!("connect 10.0.0.1:{port}"));
        }
        assert_eq!(denied.list().len(), MAX_NOTED);
        assert_eq!(denied.list()[1], "connect 10.0.0.1:0");
    }
}
