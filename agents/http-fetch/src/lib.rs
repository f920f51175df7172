//! `http-fetch`: an HTTP/1.1 GET over plain TCP, written by hand on `wasi:sockets`.
//!
//! Debian's wasi-libc has no sockets, so `std::net` is unavailable on wasm32-wasip1; the tool uses the raw
//! `wasi:sockets` bindings of toka-sdk (`tcp`, `tcp-create-socket`, `ip-name-lookup`, `instance-network`), which
//! the component imports directly beside the preview 1 adapter. There is no TLS in the guest: `http://` only.
//!
//! One request per call: `GET` with `Connection: close` and `Accept-Encoding: identity`, then the response is read
//! until the body ends (by `Content-Length`, the last chunk of `Transfer-Encoding: chunked`, or the server closing
//! the connection), at most `max_bytes` of body; a longer body is cut (at a character boundary) and marked
//! `truncated`. Interim `1xx` responses are skipped. Every wait (name lookup, connect, write, read) is bounded by
//! one deadline, `timeout_ms` from the start of the call.
//!
//! The host decides what the tool may reach: the call's sandbox allows exactly the addresses its caller was
//! granted (the declared `net:*:*` intersected with the caller's grants); any other address is refused by the
//! host and reported as `denied`.

use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use toka_sdk::ToolError;
use toka_sdk::bindings::wasi::clocks::monotonic_clock;
use toka_sdk::bindings::wasi::io::poll::{Pollable, poll};
use toka_sdk::bindings::wasi::io::streams::{InputStream, OutputStream, StreamError};
use toka_sdk::bindings::wasi::sockets::network::{
    ErrorCode, IpAddress, IpAddressFamily, IpSocketAddress, Ipv4SocketAddress, Ipv6SocketAddress, Network,
};
use toka_sdk::bindings::wasi::sockets::tcp::TcpSocket;
use toka_sdk::bindings::wasi::sockets::{instance_network, ip_name_lookup, tcp_create_socket};
use toka_sdk::tool::{SideEffect, Spec};

const DEFAULT_MAX_BYTES: u64 = 1 << 20;
/// The host's limit on a tool's output.
const MAX_BYTES: u64 = 4 << 20;
const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// The host stops any tool call after 60 s.
const MAX_TIMEOUT_MS: u64 = 60_000;
/// The status line and headers together.
const MAX_HEAD: usize = 64 << 10;
const READ_CHUNK: u64 = 64 << 10;

fn spec() -> Spec {
    Spec {
        name: "http-fetch",
        version: env!("CARGO_PKG_VERSION"),
        description: "Fetches a URL with an HTTP/1.1 GET and returns the status, the response headers and the body \
                      as text (at most max_bytes bytes, default 1 MiB). Plain http:// only: there is no TLS in the \
                      sandbox, so https:// URLs are refused. Reaches only the hosts and ports its caller was \
                      granted.",
        input_schema: json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "url": {
                    "type": "string",
                    "pattern": "^[A-Za-z][A-Za-z0-9+.-]*://",
                    "description": "http://host[:port][/path][?query], percent-encoded; https:// is refused (no TLS)",
                },
                "max_bytes": { "type": "integer", "minimum": 0, "maximum": MAX_BYTES },
                "timeout_ms": { "type": "integer", "minimum": 1, "maximum": MAX_TIMEOUT_MS },
            },
            "required": ["url"],
            "additionalProperties": false,
        }),
        output_schema: json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "status": { "type": "integer", "minimum": 100, "maximum": 999 },
                "headers": {
                    "type": "object",
                    "additionalProperties": { "type": "string" },
                    "description": "lowercase names; repeated headers joined with \", \"",
                },
                "body": { "type": "string", "description": "UTF-8, invalid sequences replaced by U+FFFD" },
                "bytes": { "type": "integer", "minimum": 0, "description": "body bytes received (before decoding)" },
                "truncated": { "type": "boolean", "description": "the body is longer than max_bytes" },
            },
            "required": ["status", "headers", "body", "bytes", "truncated"],
            "additionalProperties": false,
        }),
        side_effect: SideEffect::External,
        grants: &["net:*:*"],
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct In {
    url: String,
    max_bytes: Option<u64>,
    timeout_ms: Option<u64>,
}

#[derive(Serialize)]
struct Out {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
    bytes: usize,
    truncated: bool,
}

fn invalid(message: impl Into<String>) -> ToolError {
    ToolError::InvalidInput(message.into())
}

fn failed(message: impl Into<String>) -> ToolError {
    ToolError::Failed(message.into())
}

fn fetch(input: In) -> Result<Out, ToolError> {
    let url = Url::parse(&input.url)?;
    let max = input.max_bytes.unwrap_or(DEFAULT_MAX_BYTES).min(MAX_BYTES) as usize;
    let timeout_ms = input.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS).clamp(1, MAX_TIMEOUT_MS);
    let deadline = Deadline(monotonic_clock::now().saturating_add(timeout_ms * 1_000_000), timeout_ms);

    let network = instance_network::instance_network();
    let addresses = resolve(&network, &url.host, url.port, &deadline)?;
    let mut connection = connect_any(&network, &addresses, &deadline)?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: toka-http-fetch/{}\r\nAccept: */*\r\n\
         Accept-Encoding: identity\r\nConnection: close\r\n\r\n",
        url.target,
        url.authority,
        env!("CARGO_PKG_VERSION")
    );
    connection.write_all(request.as_bytes(), &deadline)?;
    let response = read_response(&mut connection, max, &deadline)?;
    toka_sdk::debug!("GET {} -> {} ({} body bytes)", input.url, response.status, response.body.len());
    let bytes = response.body.len();
    Ok(Out {
        status: response.status,
        headers: response.headers,
        body: text(response.body, response.truncated),
        bytes,
        truncated: response.truncated,
    })
}

toka_sdk::tool!(spec, fetch);

/// The body as text: lossy UTF-8, except that a character cut by the byte limit is dropped, not replaced.
fn text(mut body: Vec<u8>, truncated: bool) -> String {
    if truncated
        && let Err(e) = std::str::from_utf8(&body)
        && e.error_len().is_none()
    {
        body.truncate(e.valid_up_to());
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// The parts of an `http://` URL a GET needs.
#[derive(Debug, PartialEq)]
struct Url {
    /// `host[:port]` as written, for the `Host` header.
    authority: String,
    /// A name or an IP literal (without the brackets of an IPv6 literal).
    host: String,
    port: u16,
    /// The request target: the path (at least `/`) and the query, without the fragment.
    target: String,
}

impl Url {
    fn parse(url: &str) -> Result<Url, ToolError> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(invalid(format!("{url:?} is not an absolute http:// URL")));
        };
        if scheme.eq_ignore_ascii_case("https") {
            return Err(invalid("https:// is not supported: there is no TLS in the sandbox; use http://"));
        }
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(invalid(format!("unsupported scheme {scheme:?}: http:// only")));
        }
        if let Some(c) = url.chars().find(|c| c.is_ascii_control() || *c == ' ' || !c.is_ascii()) {
            return Err(invalid(format!("the URL contains {c:?}: percent-encode it")));
        }
        let rest = rest.split('#').next().unwrap_or_default();
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(split);
        let target = if target.starts_with('/') { target.to_owned() } else { format!("/{target}") };
        if authority.contains('@') {
            return Err(invalid("user information in the URL (user@host) is not supported"));
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (ip, after) = bracketed.split_once(']').ok_or_else(|| invalid("unclosed `[` in the URL's host"))?;
            (ip, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(invalid(format!("{url:?} has no host")));
        }
        let port = match port {
            None | Some("") => 80,
            Some(p) => p.parse().ok().filter(|p| *p != 0).ok_or_else(|| invalid(format!("bad port {p:?}")))?,
        };
        Ok(Url { authority: authority.to_owned(), host: host.to_ascii_lowercase(), port, target })
    }
}

/// When the call gives up: a `wasi:clocks/monotonic-clock` instant, and the timeout it came from (for messages).
struct Deadline(u64, u64);

impl Deadline {
    /// Waits until `pollable` is ready or the deadline passes.
    fn wait(&self, pollable: &Pollable, what: &str) -> Result<(), ToolError> {
        let timer = monotonic_clock::subscribe_instant(self.0);
        let ready = poll(&[pollable, &timer]);
        if ready.contains(&0) { Ok(()) } else { Err(failed(format!("timed out after {} ms {what}", self.1))) }
    }
}

fn to_wasi(addr: SocketAddr) -> IpSocketAddress {
    match addr {
        SocketAddr::V4(a) => {
            let [x, y, z, w] = a.ip().octets();
            IpSocketAddress::Ipv4(Ipv4SocketAddress { port: a.port(), address: (x, y, z, w) })
        }
        SocketAddr::V6(a) => {
            let [s0, s1, s2, s3, s4, s5, s6, s7] = a.ip().segments();
            IpSocketAddress::Ipv6(Ipv6SocketAddress {
                port: a.port(),
                address: (s0, s1, s2, s3, s4, s5, s6, s7),
                flow_info: 0,
                scope_id: 0,
            })
        }
    }
}

fn from_wasi(ip: IpAddress) -> IpAddr {
    match ip {
        IpAddress::Ipv4((a, b, c, d)) => IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
        IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)),
    }
}

/// A socket error as a tool error: the host's refusal is `denied`, anything else `failed`.
fn socket_error(what: String, code: ErrorCode) -> ToolError {
    match code {
        ErrorCode::AccessDenied => ToolError::Denied(format!(
            "{what}: not allowed (a call may reach only the addresses its caller was granted: {})",
            code.name()
        )),
        code => failed(format!("{what}: {}", code.name())),
    }
}

/// The addresses of `host`: the literal itself, or what `wasi:sockets/ip-name-lookup` returns.
fn resolve(network: &Network, host: &str, port: u16, deadline: &Deadline) -> Result<Vec<SocketAddr>, ToolError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let lookup = format!("looking up {host}");
    let stream = ip_name_lookup::resolve_addresses(network, host).map_err(|code| socket_error(lookup.clone(), code))?;
    let mut addresses = Vec::new();
    loop {
        match stream.resolve_next_address() {
            Ok(Some(ip)) => addresses.push(SocketAddr::new(from_wasi(ip), port)),
            Ok(None) => break,
            Err(ErrorCode::WouldBlock) => deadline.wait(&stream.subscribe(), &lookup)?,
            Err(code) => return Err(socket_error(lookup, code)),
        }
    }
    if addresses.is_empty() {
        return Err(failed(format!("{host} has no address")));
    }
    Ok(addresses)
}

/// A connected socket and its streams. Field order is drop order: the streams are child resources of the socket
/// and must go first.
struct Connection {
    input: InputStream,
    output: OutputStream,
    _socket: TcpSocket,
}

/// Connects to the first of `addresses` that accepts; the error is the last address's.
fn connect_any(network: &Network, addresses: &[SocketAddr], deadline: &Deadline) -> Result<Connection, ToolError> {
    let mut last = None;
    for addr in addresses {
        match connect(network, *addr, deadline) {
            Ok(connection) => return Ok(connection),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| failed("no address to connect to")))
}

fn connect(network: &Network, addr: SocketAddr, deadline: &Deadline) -> Result<Connection, ToolError> {
    let what = format!("connecting to {addr}");
    let family = if addr.is_ipv4() { IpAddressFamily::Ipv4 } else { IpAddressFamily::Ipv6 };
    let socket = tcp_create_socket::create_tcp_socket(family).map_err(|code| socket_error(what.clone(), code))?;
    socket.start_connect(network, to_wasi(addr)).map_err(|code| socket_error(what.clone(), code))?;
    let (input, output) = loop {
        match socket.finish_connect() {
            Ok(streams) => break streams,
            Err(ErrorCode::WouldBlock) => deadline.wait(&socket.subscribe(), &what)?,
            Err(code) => return Err(socket_error(what, code)),
        }
    };
    Ok(Connection { input, output, _socket: socket })
}

impl Connection {
    fn write_all(&mut self, mut bytes: &[u8], deadline: &Deadline) -> Result<(), ToolError> {
        let broken = |e: StreamError| failed(format!("sending the request: {}", stream_error(e)));
        while !bytes.is_empty() {
            let permitted = self.output.check_write().map_err(broken)?;
            if permitted == 0 {
                deadline.wait(&self.output.subscribe(), "sending the request")?;
                continue;
            }
            let n = bytes.len().min(permitted as usize);
            self.output.write(&bytes[..n]).map_err(broken)?;
            bytes = &bytes[n..];
        }
        self.output.flush().map_err(broken)?;
        // A flush is complete when the stream accepts writes again.
        while self.output.check_write().map_err(broken)? == 0 {
            deadline.wait(&self.output.subscribe(), "sending the request")?;
        }
        Ok(())
    }

    /// Appends what arrives next to `buf`; returns false at the end of the stream.
    fn read_more(&mut self, buf: &mut Vec<u8>, deadline: &Deadline) -> Result<bool, ToolError> {
        loop {
            match self.input.read(READ_CHUNK) {
                Ok(bytes) if bytes.is_empty() => deadline.wait(&self.input.subscribe(), "reading the response")?,
                Ok(bytes) => {
                    buf.extend_from_slice(&bytes);
                    return Ok(true);
                }
                Err(StreamError::Closed) => return Ok(false),
                Err(e) => return Err(failed(format!("reading the response: {}", stream_error(e)))),
            }
        }
    }
}

fn stream_error(e: StreamError) -> String {
    match e {
        StreamError::Closed => "connection closed".into(),
        StreamError::LastOperationFailed(err) => err.to_debug_string(),
    }
}

#[derive(Debug, PartialEq)]
struct Response {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
    truncated: bool,
}

/// Something that yields the response's bytes: the connection, or a byte string in tests.
trait Source {
    fn more(&mut self, buf: &mut Vec<u8>) -> Result<bool, ToolError>;
}

struct Live<'a>(&'a mut Connection, &'a Deadline);

impl Source for Live<'_> {
    fn more(&mut self, buf: &mut Vec<u8>) -> Result<bool, ToolError> {
        self.0.read_more(buf, self.1)
    }
}

fn read_response(connection: &mut Connection, max: usize, deadline: &Deadline) -> Result<Response, ToolError> {
    parse_response(&mut Live(connection, deadline), max)
}

/// Reads and parses one response (after any interim 1xx ones), keeping at most `max` body bytes and reading no
/// further than it needs.
fn parse_response(source: &mut impl Source, max: usize) -> Result<Response, ToolError> {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(end) = head_end(&buf) {
                break end;
            }
            if buf.len() > MAX_HEAD {
                return Err(failed(format!("the response's status line and headers pass {MAX_HEAD} bytes")));
            }
            if !source.more(&mut buf)? {
                return Err(failed(if buf.is_empty() {
                    "the server closed the connection without a response".to_owned()
                } else {
                    "the server closed the connection in the middle of the response headers".to_owned()
                }));
            }
        };
        let head =
            std::str::from_utf8(&buf[..head_end]).map_err(|_| failed("the response headers are not text"))?.to_owned();
        buf.drain(..head_end);
        let (status, headers) = parse_head(&head)?;
        if (100..200).contains(&status) && status != 101 {
            continue; // 100 Continue, 103 Early Hints ...: the real response follows.
        }
        let (body, truncated) = read_body(source, buf, status, &headers, max)?;
        return Ok(Response { status, headers, body, truncated });
    }
}

/// The length of the head (status line, headers and the empty line after them), if `buf` holds all of it.
fn head_end(buf: &[u8]) -> Option<usize> {
    // Lines end with CRLF; a bare LF is accepted too (RFC 9112 §2.2).
    let mut line_start = 0;
    for (i, byte) in buf.iter().enumerate() {
        if *byte == b'\n' {
            let line = &buf[line_start..i];
            if line.is_empty() || line == b"\r" {
                return Some(i + 1);
            }
            line_start = i + 1;
        }
    }
    None
}

fn parse_head(head: &str) -> Result<(u16, BTreeMap<String, String>), ToolError> {
    let mut lines = head.lines().map(|l| l.strip_suffix('\r').unwrap_or(l));
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let status = match code.parse::<u16>() {
        Ok(status) if version.starts_with("HTTP/1.") && code.len() == 3 && (100..1000).contains(&status) => status,
        _ => return Err(failed(format!("not an HTTP/1.x status line: {status_line:?}"))),
    };
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in lines.filter(|l| !l.is_empty()) {
        if line.starts_with([' ', '\t']) {
            // An obsolete folded continuation of the previous header's value.
            if let Some(value) = last.as_ref().and_then(|name| headers.get_mut(name)) {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        let (name, value) = line.split_once(':').ok_or_else(|| failed(format!("malformed header line {line:?}")))?;
        let name = name.trim().to_ascii_lowercase();
        let value = value.trim();
        headers
            .entry(name.clone())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(value);
            })
            .or_insert_with(|| value.to_owned());
        last = Some(name);
    }
    Ok((status, headers))
}

/// How the body's end is known (RFC 9112 §6.3).
enum Framing {
    None,
    Chunked,
    Length(u64),
    UntilClose,
}

fn framing(status: u16, headers: &BTreeMap<String, String>) -> Result<Framing, ToolError> {
    if status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(Framing::None);
    }
    if let Some(codings) = headers.get("transfer-encoding") {
        let last = codings.rsplit(',').next().unwrap_or_default().trim();
        return Ok(if last.eq_ignore_ascii_case("chunked") { Framing::Chunked } else { Framing::UntilClose });
    }
    if let Some(length) = headers.get("content-length") {
        // Repeated identical values (`5, 5`) are allowed; differing ones are an error.
        let mut values = length.split(',').map(str::trim);
        let first = values.next().unwrap_or_default();
        if values.any(|v| v != first) {
            return Err(failed(format!("conflicting content-length values {length:?}")));
        }
        let n = first.parse().map_err(|_| failed(format!("bad content-length {first:?}")))?;
        return Ok(Framing::Length(n));
    }
    Ok(Framing::UntilClose)
}

/// Reads the body, starting with the bytes already in `buf`; returns it (at most `max` bytes) and whether it was
/// cut.
fn read_body(
    source: &mut impl Source,
    mut buf: Vec<u8>,
    status: u16,
    headers: &BTreeMap<String, String>,
    max: usize,
) -> Result<(Vec<u8>, bool), ToolError> {
    match framing(status, headers)? {
        Framing::None => Ok((Vec::new(), false)),
        Framing::Length(length) => {
            let wanted = length.min(max as u64) as usize;
            while buf.len() < wanted {
                if !source.more(&mut buf)? {
                    return Err(failed(format!(
                        "the server closed the connection after {} of {length} body bytes",
                        buf.len()
                    )));
                }
            }
            buf.truncate(wanted);
            Ok((buf, length > max as u64))
        }
        Framing::UntilClose => {
            // One byte past the limit tells a body of exactly `max` bytes from a longer one.
            while buf.len() <= max && source.more(&mut buf)? {}
            let truncated = buf.len() > max;
            buf.truncate(max);
            Ok((buf, truncated))
        }
        Framing::Chunked => read_chunked(source, buf, max),
    }
}

/// Decodes `Transfer-Encoding: chunked` (RFC 9112 §7.1): hex size, optional extensions, CRLF, data, CRLF ... up to
/// the zero-size last chunk; trailers are not read.
fn read_chunked(source: &mut impl Source, mut buf: Vec<u8>, max: usize) -> Result<(Vec<u8>, bool), ToolError> {
    let mut body = Vec::new();
    let mut pos = 0; // start of the next chunk-size line in `buf`
    loop {
        let line_end = loop {
            if let Some(i) = buf[pos..].iter().position(|b| *b == b'\n') {
                break pos + i;
            }
            if buf.len() - pos > 1024 {
                return Err(failed("malformed chunked body: chunk-size line too long"));
            }
            if !source.more(&mut buf)? {
                return Err(failed("the server closed the connection in the middle of a chunked body"));
            }
        };
        let line = std::str::from_utf8(&buf[pos..line_end]).unwrap_or_default();
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| failed(format!("malformed chunked body: bad chunk size {size_text:?}")))?;
        let data_start = line_end + 1;
        if size == 0 {
            return Ok((body, false));
        }
        let room = max - body.len();
        let take = size.min(room);
        while buf.len() < data_start + take {
            if !source.more(&mut buf)? {
                return Err(failed("the server closed the connection in the middle of a chunk"));
            }
        }
        body.extend_from_slice(&buf[data_start..data_start + take]);
        if take < size {
            return Ok((body, true));
        }
        // The chunk's data is followed by CRLF (or a bare LF).
        let mut after = data_start + size;
        while buf.len() < after + 2 {
            if !source.more(&mut buf)? {
                break;
            }
        }
        match &buf[after..buf.len().min(after + 2)] {
            [b'\r', b'\n', ..] => after += 2,
            [b'\n', ..] => after += 1,
            _ => return Err(failed("malformed chunked body: no line end after a chunk's data")),
        }
        // Drop what has been decoded so `buf` stays small.
        buf.drain(..after);
        pos = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out `data` a few bytes at a time, like a slow network.
    struct Slow(Vec<u8>, usize);

    impl Source for Slow {
        fn more(&mut self, buf: &mut Vec<u8>) -> Result<bool, ToolError> {
            if self.1 >= self.0.len() {
                return Ok(false);
            }
            let end = (self.1 + 3).min(self.0.len());
            buf.extend_from_slice(&self.0[self.1..end]);
            self.1 = end;
            Ok(true)
        }
    }

    fn parse(raw: &str, max: usize) -> Result<Response, ToolError> {
        parse_response(&mut Slow(raw.as_bytes().to_vec(), 0), max)
    }

    fn body(raw: &str, max: usize) -> (String, bool) {
        let r = parse(raw, max).unwrap();
        (String::from_utf8(r.body).unwrap(), r.truncated)
    }

    #[test]
    fn urls() {
        let u = Url::parse("http://Example.com:8080/a/b?q=1#frag").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.target.as_str()), ("example.com", 8080, "/a/b?q=1"));
        assert_eq!(u.authority, "Example.com:8080");
        let u = Url::parse("HTTP://127.0.0.1").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.target.as_str()), ("127.0.0.1", 80, "/"));
        let u = Url::parse("http://[::1]:9/x").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.authority.as_str()), ("::1", 9, "[::1]:9"));
        assert_eq!(Url::parse("http://h?x").unwrap().target, "/?x");
        for bad in [
            "https://x/",
            "ftp://x/",
            "x/y",
            "http:///p",
            "http://h:0/",
            "http://h:99999/",
            "http://u@h/",
            "http://h/a b",
            "http://[::1/",
        ] {
            assert!(matches!(Url::parse(bad), Err(ToolError::InvalidInput(_))), "{bad}");
        }
    }

    #[test]
    fn content_length_and_headers() {
        let raw = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\nX-Fold: a\r\n  b\r\n\r\nhelloEXTRA";
        let r = parse(raw, 100).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"hello");
        assert_eq!(r.headers["x-a"], "1, 2");
        assert_eq!(r.headers["x-fold"], "a b");
        assert_eq!(body(raw, 3), ("hel".into(), true));
        assert_eq!(body(raw, 5), ("hello".into(), false));
        assert!(parse("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort", 100).is_err());
        assert!(parse("HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\nx", 100).is_err());
    }

    #[test]
    fn until_close_bare_lf_and_interim() {
        assert_eq!(body("HTTP/1.0 200 OK\n\nall of it", 100), ("all of it".into(), false));
        assert_eq!(body("HTTP/1.0 200 OK\n\nall of it", 9), ("all of it".into(), false));
        assert_eq!(body("HTTP/1.0 200 OK\n\nall of it", 8), ("all of i".into(), true));
        let raw = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno";
        let r = parse(raw, 100).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, b"no".as_slice()));
        let r = parse("HTTP/1.1 204 No Content\r\n\r\n", 100).unwrap();
        assert_eq!((r.status, r.body.len()), (204, 0));
    }

    #[test]
    fn chunked() {
        let raw = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nTrailer: x\r\n\r\n";
        assert_eq!(body(raw, 1000), ("Wikipedia in\r\n\r\nchunks.".into(), false));
        assert_eq!(body(raw, 6), ("Wikipe".into(), true));
        assert_eq!(body(raw, 9), ("Wikipedia".into(), true), "more chunks follow");
        assert!(parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 100).is_err());
        assert!(parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", 100).is_err());
    }

    #[test]
    fn bad_responses() {
        assert!(parse("", 10).is_err());
        assert!(parse("SSH-2.0-OpenSSH\r\n\r\n", 10).is_err());
        assert!(parse("HTTP/1.1 200 OK\r\nno colon\r\n\r\n", 10).is_err());
        assert!(parse("HTTP/1.1 200 OK\r\nX: y", 10).is_err());
    }

    #[test]
    fn cut_characters_are_dropped() {
        assert_eq!(text("hé".as_bytes()[..2].to_vec(), true), "h");
        assert_eq!(text(vec![b'a', 0xff, b'b'], false), "a\u{fffd}b");
    }
}
