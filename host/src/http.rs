//! HTTP on the host's network faces (`serve`, `mcp --http`, `registry serve`), with bounds on what a client can hold
//! before any of its requests is authenticated.
//!
//! Every connection is a file descriptor of the process, taken before a request could be checked. Without bounds, a
//! client that opens connections and sends nothing, or sends headers a byte at a time, could hold every descriptor of
//! the process: no run could open a file, and no other client could connect. Here:
//! - At most [`Limits::max_connections`] connections are open at once, and at most [`Limits::per_peer`] from one IP
//!   address. A connection past either bound is answered `503 Service Unavailable` (error code
//!   `too-many-connections`) and closed: the answer follows the first bytes of its request, or comes after a second
//!   if none come, and the connection is not served.
//! - A request's headers must arrive within [`Limits::header_timeout`] of the connection's start, or of the previous
//!   response's end on a kept-alive connection (hyper's header read timeout). A client that sends nothing, or too
//!   slowly, is closed then.
//! - A request's body must keep coming: all of it within the header timeout plus one second for every
//!   [`MIN_BODY_RATE`] bytes received, or reading it fails (the handler answers 400). A client with a valid token
//!   cannot hold its connection by sending a byte now and then.
//! - Past that, a request has no time limit here: its handler bounds it (body size limits, `wait_ms`, the event
//!   stream's keep-alives).
//! - The defaults come from the process's descriptor limit ([`Limits::for_process`]): half of the part kept for the
//!   host (see [`crate::sandbox::fds`]) for connections, a quarter of those for one address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// How long a client has to send a request's headers, by default.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of a request body that buy one more second to send the rest (see the module's documentation).
pub const MIN_BODY_RATE: u64 = 1024;

/// The bounds on clients' connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once, from all clients.
    pub max_connections: usize,
    /// Connections open at once from one IP address.
    pub per_peer: usize,
    /// Time to send a request's headers (see the module's documentation).
    pub header_timeout: Duration,
}

impl Limits {
    /// Bounds sized from the process's descriptor limit: half the host's reserve (at least 16) for connections, a
    /// quarter of those (at least 4) for one address, and [`HEADER_TIMEOUT`].
    pub fn for_process() -> Limits {
        let budget = crate::sandbox::fds::budget();
        let max_connections = ((budget.limit() - budget.guests()) / 2).max(16);
        Limits { max_connections, per_peer: (max_connections / 4).max(4), header_timeout: HEADER_TIMEOUT }
    }
}

/// Connections open now on every listener of the process.
static OPEN: AtomicUsize = AtomicUsize::new(0);
/// Connections refused past the bound in all, and past the bound per address, since the process started.
static REFUSED_ALL: AtomicU64 = AtomicU64::new(0);
static REFUSED_PER_ADDRESS: AtomicU64 = AtomicU64::new(0);

/// What the process's listeners have seen (for `/metrics`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectionStats {
    /// Connections open now.
    pub open: usize,
    /// Connections refused because as many as `--max-connections` were open.
    pub refused_all: u64,
    /// Connections refused because as many as `--max-connections-per-ip` were open from their address.
    pub refused_per_address: u64,
}

/// The process's [`ConnectionStats`].
pub fn stats() -> ConnectionStats {
    ConnectionStats {
        open: OPEN.load(Ordering::Relaxed),
        refused_all: REFUSED_ALL.load(Ordering::Relaxed),
        refused_per_address: REFUSED_PER_ADDRESS.load(Ordering::Relaxed),
    }
}

/// Connections open now, in all and per address.
#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_peer: HashMap<IpAddr, usize>,
}

/// The connections of one listener, counted against its [`Limits`].
#[derive(Debug)]
struct Connections {
    limits: Limits,
    open: Mutex<Open>,
}

impl Connections {
    /// Counts a connection from `peer` in, or says which bound it is past.
    fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Admitted, &'static str> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.total >= self.limits.max_connections {
            REFUSED_ALL.fetch_add(1, Ordering::Relaxed);
            return Err("the server has as many connections open as it allows; retry later");
        }
        let here = open.per_peer.entry(peer).or_default();
        if *here >= self.limits.per_peer {
            REFUSED_PER_ADDRESS.fetch_add(1, Ordering::Relaxed);
            return Err("this address has as many connections open as the server allows one address; retry later");
        }
        *here += 1;
        open.total += 1;
        OPEN.fetch_add(1, Ordering::Relaxed);
        Ok(Admitted { connections: self.clone(), peer })
    }
}

/// One admitted connection, counted out when dropped.
#[derive(Debug)]
struct Admitted {
    connections: Arc<Connections>,
    peer: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.connections.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.total -= 1;
        OPEN.fetch_sub(1, Ordering::Relaxed);
        if let Some(here) = open.per_peer.get_mut(&self.peer) {
            *here -= 1;
            if *here == 0 {
                open.per_peer.remove(&self.peer);
            }
        }
    }
}

/// Serves `router` on `listener` within `limits` until `stop` completes; then stops accepting, lets each connection
/// finish its request in flight for up to `drain`, and closes what is left.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: Limits,
    stop: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> std::io::Result<()> {
    let connections = Arc::new(Connections { limits, open: Mutex::new(Open::default()) });
    // Layered once here: `Router::layer` rebuilds every route, which each connection need not repeat.
    let header_timeout = limits.header_timeout;
    let router = router.layer(axum::middleware::map_request(move |request: axum::extract::Request| async move {
        request.map(|body| paced(body, header_timeout))
    }));
    let (stopping, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        while tasks.try_join_next().is_some() {}
        match connections.admit(peer.ip()) {
            Ok(admitted) => {
                tasks.spawn(connection(stream, admitted, router.clone(), header_timeout, stopped.clone()));
            }
            Err(why) => refuse(stream, peer, why),
        }
    }
    drop(listener);
    stopping.send_replace(true);
    let finished = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(drain, finished).await.is_err() {
        tracing::info!(
            open = tasks.len(),
            "closing connections still open after {}",
            humantime::format_duration(drain)
        );
        tasks.shutdown().await;
    }
    Ok(())
}

/// Serves one connection with `router` (its bodies already paced) until it closes; once `stopped` turns true,
/// finishes the request in flight and closes.
async fn connection(
    stream: TcpStream,
    admitted: Admitted,
    router: axum::Router,
    header_timeout: Duration,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let _admitted = admitted;
    // Responses are written whole; waiting for more to send only delays them.
    drop(stream.set_nodelay(true));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(header_timeout);
    let service = hyper_util::service::TowerToHyperService::new(router);
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        served = conn.as_mut() => {
            if let Err(e) = served {
                tracing::debug!("connection ended: {e}");
            }
            return;
        }
        _ = stopped.wait_for(|stopped| *stopped) => {}
    }
    conn.as_mut().graceful_shutdown();
    drop(conn.await);
}

/// `body`, failing once it falls behind: all of it must come within `grace` plus a second per [`MIN_BODY_RATE`]
/// bytes received.
fn paced(body: axum::body::Body, grace: Duration) -> axum::body::Body {
    use futures_util::StreamExt;
    let start = tokio::time::Instant::now();
    let chunks = futures_util::stream::unfold(Some((body.into_data_stream(), 0u64)), move |state| async move {
        let (mut data, received) = state?;
        let deadline = start + grace + Duration::from_secs(received / MIN_BODY_RATE);
        match tokio::time::timeout_at(deadline, data.next()).await {
            Ok(Some(Ok(chunk))) => {
                let received = received + chunk.len() as u64;
                Some((Ok(chunk), Some((data, received))))
            }
            Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e)), None)),
            Ok(None) => None,
            Err(_) => {
                let why = format!("the request body came too slowly: {received} bytes in {:?}", start.elapsed());
                Some((Err(std::io::Error::new(std::io::ErrorKind::TimedOut, why)), None))
            }
        }
    });
    axum::body::Body::from_stream(chunks)
}

/// Refused connections still being answered or closed (see [`refuse`]).
static CLOSING: AtomicUsize = AtomicUsize::new(0);
/// Most refused connections being answered or closed at once; past it, one is answered and closed at once.
const MAX_CLOSING: usize = 64;
/// How long a refused connection's answer waits for the client's request to start.
const REFUSAL_WAIT: Duration = Duration::from_secs(1);

/// Answers a connection past a bound with a 503 and closes it, never waiting on the client for long.
///
/// The answer follows the first bytes of the client's request, or comes after [`REFUSAL_WAIT`] if none come: an
/// HTTP client that reads an answer before it has written its request may take it for a broken connection (hyper's
/// client reports `UnexpectedMessage`, and its user sees an error, not the 503). Closing a socket with unread data
/// resets the connection, which can make the client lose the answer; so what the client sent is then read and dropped
/// for up to a second (64 KiB at most) before the socket is closed. At most [`MAX_CLOSING`] refused connections are
/// held so at once; past that, the answer is written at once if the socket takes it (a fresh socket always has room)
/// and the socket is closed.
fn refuse(stream: TcpStream, peer: SocketAddr, why: &str) {
    tracing::debug!(%peer, "connection refused: {why}");
    let body = serde_json::json!({ "error": { "code": "too-many-connections", "message": why } }).to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    if CLOSING.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < MAX_CLOSING).then_some(n + 1)).is_err() {
        drop(stream.try_write(answer.as_bytes()));
        return;
    }
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = stream;
        // `peek`, not `readable`: readiness can be reported before anything came (tokio says so, and a fresh
        // socket's first event is reported so here).
        drop(tokio::time::timeout(REFUSAL_WAIT, stream.peek(&mut [0u8; 1])).await);
        let answered = async {
            stream.write_all(answer.as_bytes()).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 4096];
            let mut read = 0;
            while read < 64 << 10 {
                match stream.read(&mut sink).await? {
                    0 => break,
                    n => read += n,
                }
            }
            std::io::Result::Ok(())
        };
        drop(tokio::time::timeout(Duration::from_secs(1), answered).await);
        CLOSING.fetch_sub(1, Ordering::AcqRel);
    });
}

/// After a failed accept: a connection that failed before it was accepted is the client's affair; anything else
/// (out of descriptors, mostly) is logged and waited out briefly, so the loop does not spin while it lasts.
async fn accept_failed(e: &std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(e.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        return;
    }
    tracing::warn!("cannot accept a connection: {e}");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_bounded_in_all_and_per_address_and_counted_out_when_dropped() {
        let limits = Limits { max_connections: 3, per_peer: 2, header_timeout: HEADER_TIMEOUT };
        let connections = Arc::new(Connections { limits, open: Mutex::new(Open::default()) });
        let (a, b, c): (IpAddr, IpAddr, IpAddr) =
            ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap(), "::1".parse().unwrap());
        let first = connections.admit(a).unwrap();
        let second = connections.admit(a).unwrap();
        assert!(connections.admit(a).unwrap_err().contains("one address"), "a third from one address");
        let _other = connections.admit(b).unwrap();
        assert!(connections.admit(c).unwrap_err().contains("as many connections open as it allows"), "a fourth");
        drop(first);
        let again = connections.admit(c).expect("room again once one is closed");
        drop(again);
        drop(second);
        assert_eq!(connections.open.lock().unwrap().per_peer.get(&a), None, "an address with none open is forgotten");
    }
}
