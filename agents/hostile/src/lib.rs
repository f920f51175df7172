//! `hostile`: misbehaves on purpose so that the host's limits and grants can be tested.
//!
//! Input `{"attack": NAME, ...}`; an unknown or missing attack is `invalid-input`.
//!
//! | attack     | extra fields              | behaviour                                                              |
//! |------------|---------------------------|------------------------------------------------------------------------|
//! | `spin`     |                           | loops forever (fuel / epoch deadline)                                  |
//! | `membomb`  |                           | allocates and touches 1 MiB chunks forever (memory limit)             |
//! | `recurse`  |                           | unbounded non-tail recursion (stack limit)                            |
//! | `escape`   | `dir` (default `/data`)   | reads files outside the granted directory                             |
//! | `write-ro` | `dir` (default `/data`)   | creates `<dir>/new.txt`, appends to `<dir>/existing.txt`               |
//! | `env`      | `name`                    | reads an environment variable                                          |
//! | `net`      | `addr` (`127.0.0.1:PORT`) | opens a TCP connection through `wasi:sockets`                          |
//! | `flood`    |                           | writes 1 KiB lines to stdout forever (output limit)                   |
//! | `panic`    |                           | panics (a trap: `unreachable` after the panic message on stderr)      |
//! | `calls`    | `calls`, `fail`           | makes each host call of the list in turn (see [`Call`]), records each  |
//! |            |                           | answer, then fails with `fail` (a message of any size) if given        |
//! | `swap`     | `sub`, `tool`, `path`     | replaces directory `sub` with a symlink to `../..`, then calls `tool`  |
//! |            |                           | on `path`: a nested grant must still be the directory it was           |
//! | `resolve`  | `name`, `port`, `connect` | looks `name` up through `wasi:sockets/ip-name-lookup`; returns every  |
//! |            |                           | address; with `connect`, then connects to the first one at `port`     |
//! | `hold`     | `path`, `count`, `ms`     | opens `path` up to `count` times through `wasi:filesystem` and keeps   |
//! |            |                           | every descriptor for `ms` milliseconds; returns how many opened and   |
//! |            |                           | what stopped it (each is a host file descriptor)                      |
//!
//! The probing attacks (`escape`, `write-ro`, `env`, `net`, `resolve`) return `denied` with every attempt and its error when
//! the host blocks them all, and `Ok` with what got through otherwise, so a test can tell a leak from a block.

// `std::os::wasi::fs::symlink_path` (the `swap` attack); guests are built with RUSTC_BOOTSTRAP=1 for -Zbuild-std.
#![feature(wasi_ext)]

use std::fs::{self, OpenOptions};
use std::hint::black_box;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;
use serde_json::{Value, json};
use toka_sdk::bindings::wasi::sockets::network::{
    ErrorCode, IpAddressFamily, IpSocketAddress, Ipv4SocketAddress, Ipv6SocketAddress,
};
use toka_sdk::bindings::wasi::sockets::{instance_network, tcp_create_socket};
use toka_sdk::{AgentError, Task};

fn default_dir() -> String {
    "/data".to_owned()
}

#[derive(Deserialize)]
#[serde(tag = "attack", rename_all = "kebab-case")]
enum Attack {
    Spin,
    Membomb,
    Recurse,
    Escape {
        #[serde(default = "default_dir")]
        dir: String,
    },
    WriteRo {
        #[serde(default = "default_dir")]
        dir: String,
    },
    Env {
        name: String,
    },
    Net {
        addr: String,
    },
    Flood,
    Panic,
    Calls {
        calls: Vec<Call>,
        #[serde(default)]
        fail: Option<String>,
    },
    Swap {
        sub: String,
        tool: String,
        path: String,
    },
    Resolve {
        name: String,
        #[serde(default)]
        port: u16,
        #[serde(default)]
        connect: bool,
    },
    Hold {
        path: String,
        count: u32,
        #[serde(default)]
        ms: u64,
    },
}

/// One guest-facing host call, with the guest's own (arbitrary) arguments; `times` repeats it.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Call {
    /// `events.emit(kind, payload)`: the payload is sent as the text given (valid JSON or not).
    Emit {
        kind: String,
        payload: String,
        #[serde(default)]
        times: Option<u32>,
    },
    /// `state.set(key, value)`.
    Set { key: String, value: String },
    /// `state.delete(key)`.
    Delete { key: String },
    /// `tools.call(name, input)`: the input is sent as the text given.
    Tool { name: String, input: String },
    /// `log.log(warn, message)`.
    Log { message: String },
    /// Allocates and touches `mib` MiB that stay held until the run ends.
    Alloc { mib: u64 },
    /// Waits `ms` milliseconds on a WASI timer (`poll_oneoff` on a clock): a guest parked in the host, not spinning.
    Sleep { ms: u64 },
    /// Fails the whole run if the state key `key` is not set yet (and sets it): the first run fails, later ones go on.
    FailIfNew { key: String },
}

fn hostile(_task: &Task, attack: Attack) -> Result<Value, AgentError> {
    match attack {
        Attack::Spin => spin(),
        Attack::Membomb => membomb(),
        Attack::Recurse => Ok(json!({ "depth": recurse(0) })),
        Attack::Escape { dir } => escape(&dir),
        Attack::WriteRo { dir } => write_ro(&dir),
        Attack::Env { name } => env(&name),
        Attack::Net { addr } => net(&addr),
        Attack::Flood => flood(),
        Attack::Panic => panic!("hostile agent panics on purpose"),
        Attack::Calls { calls, fail } => {
            let answers = make_calls(calls)?;
            match fail {
                Some(message) => Err(AgentError::Failed(message)),
                None => Ok(json!({ "answers": answers })),
            }
        }
        Attack::Swap { sub, tool, path } => swap(&sub, &tool, &path),
        Attack::Resolve {
            name,
            port,
            connect,
        } => resolve(&name, port, connect),
        Attack::Hold { path, count, ms } => hold(&path, count, ms),
    }
}

/// Opens `path` (under a preopened directory) up to `count` times through `wasi:filesystem` itself, with no libc
/// table in between, keeps every descriptor, and waits `ms` milliseconds before it returns.
fn hold(path: &str, count: u32, ms: u64) -> Result<Value, AgentError> {
    use toka_sdk::bindings::wasi::filesystem::preopens::get_directories;
    use toka_sdk::bindings::wasi::filesystem::types::{DescriptorFlags, OpenFlags, PathFlags};
    let dirs = get_directories();
    let (dir, rest) = dirs
        .iter()
        .find_map(|(dir, name)| {
            let rest = path.strip_prefix(name.as_str())?;
            Some((dir, rest.trim_start_matches('/')))
        })
        .ok_or_else(|| AgentError::Failed(format!("{path}: under no preopened directory")))?;
    let mut held = Vec::new();
    let mut stopped = "none".to_owned();
    for _ in 0..count {
        match dir.open_at(PathFlags::empty(), rest, OpenFlags::empty(), DescriptorFlags::READ) {
            Ok(file) => held.push(file),
            Err(e) => {
                stopped = format!("{e:?}");
                break;
            }
        }
    }
    if ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    Ok(json!({ "opened": held.len(), "stopped": stopped }))
}

/// Makes each call; the answer of each is `ok: ...` or `err: ...` (for `times`, the first error and the count).
fn make_calls(calls: Vec<Call>) -> Result<Vec<String>, AgentError> {
    use toka_sdk::bindings::toka::agent::tools as host_tools;
    let mut answers = Vec::with_capacity(calls.len());
    for call in calls {
        let answer = match call {
            Call::Emit { kind, payload, times } => emit_times(&kind, &payload, times.unwrap_or(1)),
            Call::Set { key, value } => match toka_sdk::state::set(&key, value.as_bytes()) {
                Ok(()) => "ok".to_owned(),
                Err(e) => format!("err: {e:?}"),
            },
            Call::Delete { key } => match toka_sdk::state::delete(&key) {
                Ok(existed) => format!("ok: {existed}"),
                Err(e) => format!("err: {e:?}"),
            },
            Call::Tool { name, input } => match host_tools::call(&name, &input) {
                Ok(out) => format!("ok: {out}"),
                Err(e) => format!("err: {e:?}"),
            },
            Call::Log { message } => {
                toka_sdk::log::warn(&message);
                "ok".to_owned()
            }
            Call::Alloc { mib } => {
                for _ in 0..mib {
                    let chunk: &'static mut [u8] = Box::leak(vec![1u8; 1 << 20].into_boxed_slice());
                    black_box(chunk);
                }
                format!("ok: {mib} MiB held")
            }
            Call::Sleep { ms } => {
                std::thread::sleep(std::time::Duration::from_millis(ms));
                format!("ok: slept {ms} ms")
            }
            Call::FailIfNew { key } => match toka_sdk::state::get(&key) {
                Ok(Some(_)) => "ok: seen before".to_owned(),
                Ok(None) => {
                    toka_sdk::state::set(&key, b"1")
                        .map_err(|e| AgentError::Failed(format!("{e:?}")))?;
                    return Err(AgentError::Failed(format!("{key} was new")));
                }
                Err(e) => format!("err: {e:?}"),
            },
        };
        answers.push(answer);
    }
    Ok(answers)
}

/// Emits `times` observations; `ok: N`, or the first error after how many succeeded.
fn emit_times(kind: &str, payload: &str, times: u32) -> String {
    for done in 0..times {
        if let Err(e) = toka_sdk::events::emit_raw(kind, payload) {
            return format!("err after {done}: {e}");
        }
    }
    format!("ok: {times}")
}

/// Replaces the directory `sub` with a symlink to `../..` (keeping the original under `sub.orig`), then asks `tool`
/// about `path`, and reports what the tool saw.
fn swap(sub: &str, tool: &str, path: &str) -> Result<Value, AgentError> {
    let failed = |what: &str, e: std::io::Error| AgentError::Failed(format!("{what}: {e}"));
    let moved = format!("{}.orig", sub.trim_end_matches('/'));
    fs::rename(sub, &moved).map_err(|e| failed("rename", e))?;
    std::os::wasi::fs::symlink_path("../..", sub).map_err(|e| failed("symlink", e))?;
    let answer = toka_sdk::tools::call(tool, &json!({ "path": path }));
    Ok(json!({ "tool": format!("{answer:?}") }))
}

/// Counts forever; `black_box` keeps the loop body observable so the optimizer cannot drop or shorten it.
fn spin() -> ! {
    toka_sdk::log::warn("spinning forever");
    let mut counter = 0u64;
    loop {
        counter = black_box(counter.wrapping_add(1));
    }
}

/// Allocates 1 MiB chunks and writes into every page of each one, so the memory is really committed, forever.
fn membomb() -> ! {
    const CHUNK: usize = 1 << 20;
    toka_sdk::log::warn("allocating 1 MiB chunks forever");
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; CHUNK];
        for (i, byte) in chunk.iter_mut().enumerate().step_by(4096) {
            *byte = (i >> 12) as u8 | 1;
        }
        chunks.push(black_box(chunk));
    }
}

/// Recurses until the stack runs out. The multiply-add after the call keeps it out of tail position (and is not a
/// plain accumulator LLVM could turn into a loop); `black_box` hides the fact that the end condition never holds.
fn recurse(depth: u64) -> u64 {
    let next = black_box(depth.wrapping_add(1));
    if next == 0 {
        return depth;
    }
    recurse(next).wrapping_mul(31).wrapping_add(depth)
}

/// Joins `attempts` (path, error) into `blocked: PATH: ERR; PATH: ERR`.
fn blocked(attempts: &[(String, String)]) -> AgentError {
    let list: Vec<String> = attempts
        .iter()
        .map(|(path, err)| format!("{path}: {err}"))
        .collect();
    AgentError::Denied(format!("blocked: {}", list.join("; ")))
}

fn escape(dir: &str) -> Result<Value, AgentError> {
    let dir = dir.trim_end_matches('/');
    let targets = [
        format!("{dir}/../secret.txt"),
        "../secret.txt".to_owned(),
        "/etc/passwd".to_owned(),
        format!("{dir}/link-out"),
        "/secret.txt".to_owned(),
    ];
    let mut leaked = Vec::new();
    let mut attempts = Vec::new();
    for path in targets {
        match fs::read(&path) {
            Ok(bytes) => {
                toka_sdk::warn!("read {path}: {} bytes", bytes.len());
                leaked.push(path);
            }
            Err(err) => attempts.push((path, err.to_string())),
        }
    }
    if leaked.is_empty() {
        Err(blocked(&attempts))
    } else {
        Ok(json!({ "leaked": leaked }))
    }
}

fn write_ro(dir: &str) -> Result<Value, AgentError> {
    let dir = dir.trim_end_matches('/');
    let create = format!("{dir}/new.txt");
    let append = format!("{dir}/existing.txt");
    let mut written = Vec::new();
    let mut attempts = Vec::new();
    let created = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&create)
        .and_then(|mut file| file.write_all(b"written by hostile\n"));
    match created {
        Ok(()) => written.push(create),
        Err(err) => attempts.push((create, err.to_string())),
    }
    let appended = OpenOptions::new()
        .append(true)
        .open(&append)
        .and_then(|mut file| file.write_all(b"appended by hostile\n"));
    match appended {
        Ok(()) => written.push(append),
        Err(err) => attempts.push((append, err.to_string())),
    }
    if written.is_empty() {
        Err(blocked(&attempts))
    } else {
        Ok(json!({ "written": written }))
    }
}

fn env(name: &str) -> Result<Value, AgentError> {
    match std::env::var_os(name) {
        Some(value) => Ok(json!({ "value": value.to_string_lossy() })),
        None => Err(AgentError::Denied(format!("env var {name} not granted"))),
    }
}

/// Looks `name` up with the raw `wasi:sockets/ip-name-lookup` bindings, then (with `connect`) connects to the first
/// address at `port`.
fn resolve(name: &str, port: u16, connect: bool) -> Result<Value, AgentError> {
    use toka_sdk::bindings::wasi::sockets::ip_name_lookup;
    use toka_sdk::bindings::wasi::sockets::network::IpAddress;
    let denied = |code: ErrorCode| AgentError::Denied(format!("resolve {name}: {}", code.name()));
    let network = instance_network::instance_network();
    let stream = ip_name_lookup::resolve_addresses(&network, name).map_err(denied)?;
    let mut addresses = Vec::new();
    // Bounded: a resolver that never ends its list must not keep the guest here.
    while addresses.len() < 64 {
        match stream.resolve_next_address() {
            Ok(Some(IpAddress::Ipv4((a, b, c, d)))) => addresses.push(IpAddr::from([a, b, c, d])),
            Ok(Some(IpAddress::Ipv6((a, b, c, d, e, f, g, h)))) => {
                addresses.push(IpAddr::from([a, b, c, d, e, f, g, h]))
            }
            Ok(None) => break,
            Err(ErrorCode::WouldBlock) => stream.subscribe().block(),
            Err(code) => return Err(denied(code)),
        }
    }
    let listed: Vec<String> = addresses.iter().map(IpAddr::to_string).collect();
    if !connect {
        return Ok(json!({ "addresses": listed }));
    }
    let first = addresses
        .first()
        .ok_or_else(|| AgentError::Failed(format!("resolve {name}: no address")))?;
    let target = SocketAddr::new(*first, port);
    connect_to(target)?;
    Ok(json!({ "addresses": listed, "connected": target.to_string() }))
}

/// Connects over TCP with the raw `wasi:sockets` bindings (Debian's wasi-libc, hence `std::net`, has no sockets).
fn net(addr: &str) -> Result<Value, AgentError> {
    let target: SocketAddr = addr.parse().map_err(|err| {
        AgentError::InvalidInput(format!("\"addr\" {addr:?} is not IP:PORT: {err}"))
    })?;
    connect_to(target)?;
    Ok(json!({ "connected": addr }))
}

/// Opens (and closes) one TCP connection to `target`; a refusal is `denied` with the error code.
fn connect_to(target: SocketAddr) -> Result<(), AgentError> {
    let addr = target.to_string();
    let denied = |code: ErrorCode| AgentError::Denied(format!("connect {addr}: {}", code.name()));
    let (family, remote) = match target.ip() {
        IpAddr::V4(ip) => {
            let [a, b, c, d] = ip.octets();
            (
                IpAddressFamily::Ipv4,
                IpSocketAddress::Ipv4(Ipv4SocketAddress {
                    port: target.port(),
                    address: (a, b, c, d),
                }),
            )
        }
        IpAddr::V6(ip) => {
            let [a, b, c, d, e, f, g, h] = ip.segments();
            (
                IpAddressFamily::Ipv6,
                IpSocketAddress::Ipv6(Ipv6SocketAddress {
                    port: target.port(),
                    address: (a, b, c, d, e, f, g, h),
                    flow_info: 0,
                    scope_id: 0,
                }),
            )
        }
    };
    let network = instance_network::instance_network();
    let socket = tcp_create_socket::create_tcp_socket(family).map_err(denied)?;
    socket.start_connect(&network, remote).map_err(denied)?;
    let ready = socket.subscribe();
    let (input, output) = loop {
        match socket.finish_connect() {
            Ok(streams) => break streams,
            Err(ErrorCode::WouldBlock) => ready.block(),
            Err(code) => return Err(denied(code)),
        }
    };
    drop((input, output));
    Ok(())
}

/// Writes 1 KiB lines to stdout until a write fails (then the host has cut the stream off: report it).
fn flood() -> Result<Value, AgentError> {
    let mut line = vec![b'x'; 1023];
    line.push(b'\n');
    let mut stdout = std::io::stdout().lock();
    let mut written = 0u64;
    loop {
        if let Err(err) = stdout.write_all(&line) {
            return Err(AgentError::Failed(format!(
                "stdout write failed after {written} bytes: {err}"
            )));
        }
        written += line.len() as u64;
    }
}

toka_sdk::agent!(hostile);
