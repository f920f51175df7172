//! `p3-probe`: a WASI 0.3 command component, written for toka-host's tests of WASI 0.3 support (issue 12, item 2).
//!
//! Built for `wasm32-unknown-unknown` (so std brings in no WASI preview 1 or 0.2 import) with `wit-bindgen`'s
//! component-model-async bindings of the WASI 0.3.0 interfaces (`wit/deps/`, as wasmtime-wasi 48.0.8 defines them),
//! and encoded into a component by `xtask` without any adapter: every WASI import is a `@0.3.0` one. It exports the
//! async `wasi:cli/run@0.3.0` and does what its first argument says, printing deterministic text, so that one run
//! under `toka-host run` and one under `wasmtime run -S p3` can be compared byte for byte:
//!
//! * `args`: one `arg: "..."` line per argument after the program name (Rust debug quoting, so quotes, spaces and
//!   newlines are visible); `env`: one `env: NAME="value"` line per variable, sorted; `cwd`: the initial directory.
//! * `exit CODE`: prints `exiting` and exits with `CODE` through `wasi:cli/exit`.
//! * `streams`: writes to stdout through one stream, closes it, writes into a stream whose reading end it dropped
//!   (the 0.3 form of a write to a closed descriptor), then writes to stdout again through a new stream.
//! * `write-read-only FILE`: opens `FILE` read-only and writes to it (the 0.3 form of a write to a descriptor that
//!   does not allow it): prints the error code.
//! * `ls DIR`, `cat FILE`, `write FILE TEXT`, `mkdir DIR`, `stat PATH`: directory and file calls through the
//!   preopened directories (a path is resolved against the preopen whose name is its longest prefix).
//! * `hold FILE COUNT [MS]`: opens `FILE` up to `COUNT` times and keeps every descriptor open (each is a host file
//!   descriptor), for `MS` milliseconds more if given: prints how many opened and what stopped it.
//! * `clock`: monotonic and system clock checks (prints `clock: ok` or what failed); `sleep MS`.
//! * `random`: random, insecure random and insecure seed checks (prints `random: ok` or what failed).
//! * `connect IPV4 PORT MESSAGE`: a TCP connection; sends `MESSAGE`, prints the reply read until the peer closes.
//! * `udp IPV4 PORT MESSAGE`: sends `MESSAGE` as one UDP datagram to the peer, prints the first datagram back and
//!   whether it came from that peer.
//! * `resolve NAME`: the addresses a name lookup returns, sorted.
//! * `stdin`: copies stdin to stdout.
//! * `spin`: loops forever; `spin-task`: a second task loops forever while the first waits on a timer.
//! * `alloc MIB`: allocates and touches `MIB` MiB, aborting if it cannot; `try-alloc MIB`: the same, reporting a
//!   failed allocation as an error; `flood BYTES`: writes `BYTES` bytes to stdout.
//!
//! A failure is reported on stderr as `p3-probe: COMMAND: ERROR` with exit status 1.

// Not `forbid`: the canonical-ABI glue that `wit_bindgen::generate!` emits is `unsafe`; it is confined to the
// `bindings` module, and the hand-written code below is safe (the lint denies anything else).
#![deny(unsafe_code)]

#[allow(unsafe_code, reason = "generated canonical-ABI glue")]
#[allow(clippy::all, reason = "generated code")]
mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "toka:p3-probe/probe",
        generate_all,
    });

    use super::Probe;
    export!(Probe);
}

#[path = "../../p3-common/files.rs"]
mod files;
#[path = "../../p3-common/output.rs"]
mod output;

use output::{Target, emit};

use std::fmt::Write as _;

use bindings::exports::wasi::cli::run::Guest;
use bindings::wasi::cli::{environment, exit, stderr, stdin, stdout};
use bindings::wasi::clocks::{monotonic_clock, system_clock};
use bindings::wasi::filesystem::preopens;
use bindings::wasi::filesystem::types::{Descriptor, DescriptorFlags, DescriptorType, OpenFlags, PathFlags};
use bindings::wasi::random::{insecure, insecure_seed, random};
use bindings::wasi::sockets::ip_name_lookup;
use bindings::wasi::sockets::types::{
    IpAddress, IpAddressFamily, IpSocketAddress, Ipv4SocketAddress, TcpSocket, UdpSocket,
};
use bindings::wit_stream;

pub struct Probe;

impl Guest for Probe {
    async fn run() -> Result<(), ()> {
        let args = environment::get_arguments();
        let command = args.get(1).cloned().unwrap_or_default();
        let operands: Vec<String> = args.iter().skip(2).cloned().collect();
        match dispatch(&command, &operands, &args).await {
            Ok(()) => Ok(()),
            Err(err) => {
                let _ = emit(format!("p3-probe: {command}: {err}\n").into_bytes(), Target::Stderr).await;
                Err(())
            }
        }
    }
}

async fn dispatch(command: &str, operands: &[String], args: &[String]) -> Result<(), String> {
    let operand = |i: usize| operands.get(i).map(String::as_str).ok_or_else(|| format!("missing operand {}", i + 1));
    match command {
        "args" => {
            let mut text = String::new();
            for arg in args.iter().skip(2) {
                let _ = writeln!(text, "arg: {arg:?}");
            }
            print(text).await
        }
        "env" => {
            let mut vars = environment::get_environment();
            vars.sort();
            let mut text = String::new();
            for (name, value) in vars {
                let _ = writeln!(text, "env: {name}={value:?}");
            }
            print(text).await
        }
        "cwd" => print(format!("cwd: {:?}\n", environment::get_initial_cwd())).await,
        "exit" => {
            let code: u8 = operand(0)?.parse().map_err(|e| format!("bad status: {e}"))?;
            print("exiting\n".into()).await?;
            exit::exit_with_code(code);
            Err("exit-with-code returned".into())
        }
        "streams" => streams().await,
        "write-read-only" => write_read_only(operand(0)?).await,
        "ls" => ls(operand(0)?).await,
        "cat" => cat(operand(0)?).await,
        "hold" => {
            let count: u32 = operand(1)?.parse().map_err(|e| format!("bad count: {e}"))?;
            let keep_ms: u64 = match operand(2) {
                Ok(ms) => ms.parse().map_err(|e| format!("bad milliseconds: {e}"))?,
                Err(_) => 0,
            };
            hold(operand(0)?, count, keep_ms).await
        }
        "write" => write(operand(0)?, operand(1)?).await,
        "mkdir" => {
            let (dir, rest) = files::resolve(operand(0)?)?;
            dir.create_directory_at(rest).await.map_err(|e| format!("{e:?}"))?;
            print("created\n".into()).await
        }
        "stat" => {
            let (dir, rest) = files::resolve(operand(0)?)?;
            let stat = dir.stat_at(PathFlags::empty(), rest).await.map_err(|e| format!("{e:?}"))?;
            print(format!("type: {}\nsize: {}\n", type_name(&stat.type_), stat.size)).await
        }
        "clock" => clock().await,
        "sleep" => {
            let ms: u64 = operand(0)?.parse().map_err(|e| format!("bad milliseconds: {e}"))?;
            monotonic_clock::wait_for(ms * 1_000_000).await;
            print("slept\n".into()).await
        }
        "random" => random_checks().await,
        "connect" => connect(operand(0)?, operand(1)?, operand(2)?).await,
        "udp" => udp(operand(0)?, operand(1)?, operand(2)?).await,
        "resolve" => {
            let mut found: Vec<String> = ip_name_lookup::resolve_addresses(operand(0)?.to_owned())
                .await
                .map_err(|e| format!("{e:?}"))?
                .iter()
                .map(ip_text)
                .collect();
            found.sort();
            print(found.iter().map(|a| format!("address: {a}\n")).collect()).await
        }
        "stdin" => {
            let (data, done) = stdin::read_via_stream();
            let bytes = data.collect().await;
            done.await.map_err(|e| format!("reading stdin: {e:?}"))?;
            emit(bytes, Target::Stdout).await
        }
        "spin" => spin(),
        "spin-task" => {
            wit_bindgen::spawn_local(async {
                spin().ok();
            });
            monotonic_clock::wait_for(600 * 1_000_000_000).await;
            print("the spinning task never ran\n".into()).await
        }
        "alloc" | "try-alloc" => {
            let mib: usize = operand(0)?.parse().map_err(|e| format!("bad size: {e}"))?;
            // `alloc` aborts (a trap) when the allocator fails, as most programs do; `try-alloc` reports it.
            let block: Vec<u8> = if command == "alloc" {
                vec![1; mib << 20]
            } else {
                let mut block = Vec::new();
                block.try_reserve_exact(mib << 20).map_err(|e| format!("allocating {mib} MiB: {e}"))?;
                block.resize(mib << 20, 1);
                block
            };
            let sum: u64 = block.iter().step_by(4096).map(|b| u64::from(*b)).sum();
            print(format!("allocated {mib} MiB ({sum} pages)\n")).await
        }
        "flood" => {
            let total: usize = operand(0)?.parse().map_err(|e| format!("bad size: {e}"))?;
            let (mut tx, rx) = wit_stream::new::<u8>();
            let done = stdout::write_via_stream(rx);
            let mut left = total;
            while left > 0 {
                let n = left.min(64 * 1024);
                let refused = tx.write_all(vec![b'x'; n]).await;
                if !refused.is_empty() {
                    return Err(format!("stdout stopped taking data after {} bytes", total - left));
                }
                left -= n;
            }
            drop(tx);
            done.await.map_err(|e| format!("{e:?}"))
        }
        "stderr" => emit(format!("{}\n", operand(0)?).into_bytes(), Target::Stderr).await,
        other => Err(format!("unknown command {other:?}")),
    }
}

async fn print(text: String) -> Result<(), String> {
    emit(text.into_bytes(), Target::Stdout).await
}

async fn streams() -> Result<(), String> {
    print("first stream\n".into()).await?;
    // A stream whose reading end is gone: the write is refused (nothing taken), not a trap.
    let (mut tx, rx) = wit_stream::new::<u8>();
    drop(rx);
    let refused = tx.write_all(b"into the void\n".to_vec()).await;
    print(format!("write to a closed stream: {} of 14 bytes refused\n", refused.len())).await?;
    // The same after the host took and finished a stream: a second write_via_stream works.
    let (mut tx, rx) = wit_stream::new::<u8>();
    let done = stdout::write_via_stream(rx);
    let refused = tx.write_all(b"second stream\n".to_vec()).await;
    drop(tx);
    done.await.map_err(|e| format!("{e:?}"))?;
    print(format!("second stream refused {} bytes\n", refused.len())).await
}

async fn write_read_only(path: &str) -> Result<(), String> {
    let (dir, rest) = files::resolve(path)?;
    let file = dir
        .open_at(PathFlags::empty(), rest, OpenFlags::empty(), DescriptorFlags::READ)
        .await
        .map_err(|e| format!("open: {e:?}"))?;
    let (mut tx, rx) = wit_stream::new::<u8>();
    let done = file.write_via_stream(rx, 0);
    let refused = tx.write_all(b"not allowed\n".to_vec()).await;
    drop(tx);
    let result = done.await;
    print(format!("write to a read-only descriptor: {result:?}, {} of 12 bytes refused\n", refused.len())).await
}

async fn ls(path: &str) -> Result<(), String> {
    let (dir, rest) = files::resolve(path)?;
    let target = if rest == "." {
        dir
    } else {
        dir.open_at(PathFlags::SYMLINK_FOLLOW, rest, OpenFlags::DIRECTORY, DescriptorFlags::READ)
            .await
            .map_err(|e| format!("{e:?}"))?
    };
    let (entries, done) = target.read_directory();
    let entries = entries.collect().await;
    done.await.map_err(|e| format!("{e:?}"))?;
    let mut names: Vec<String> = entries.into_iter().map(|e| format!("{} {}\n", e.name, type_name(&e.type_))).collect();
    names.sort();
    print(names.concat()).await
}

/// Opens `path` up to `count` times through `open-at` directly (no guest-side descriptor table in between), keeping
/// every descriptor until the run ends: prints how many opened, and the error that stopped it if one did.
async fn hold(path: &str, count: u32, keep_ms: u64) -> Result<(), String> {
    let (dir, rest) = files::resolve(path)?;
    let mut held = Vec::new();
    let mut stopped = String::from("none");
    for _ in 0..count {
        match dir.open_at(PathFlags::empty(), rest.clone(), OpenFlags::empty(), DescriptorFlags::READ).await {
            Ok(file) => held.push(file),
            Err(e) => {
                stopped = format!("{e:?}");
                break;
            }
        }
    }
    if keep_ms > 0 {
        monotonic_clock::wait_for(keep_ms * 1_000_000).await;
    }
    print(format!("opened: {}\nstopped by: {stopped}\n", held.len())).await
}

async fn cat(path: &str) -> Result<(), String> {
    emit(files::read(path).await?, Target::Stdout).await
}

async fn write(path: &str, text: &str) -> Result<(), String> {
    let written = files::write(path, text).await?;
    print(format!("wrote {written} bytes\n")).await
}

fn type_name(kind: &DescriptorType) -> &'static str {
    match kind {
        DescriptorType::Directory => "dir",
        DescriptorType::RegularFile => "file",
        DescriptorType::SymbolicLink => "symlink",
        _ => "other",
    }
}

async fn clock() -> Result<(), String> {
    let mut failures = Vec::new();
    let start = monotonic_clock::now();
    if monotonic_clock::get_resolution() == 0 {
        failures.push("monotonic resolution is 0".to_owned());
    }
    monotonic_clock::wait_for(20_000_000).await;
    let after = monotonic_clock::now();
    if after < start + 20_000_000 {
        failures.push(format!("waited 20 ms but the monotonic clock moved {} ns", after - start));
    }
    let now = system_clock::now();
    // 2020-01-01 and 2100-01-01 in seconds since the epoch: a clock outside is not the host's.
    if !(1_577_836_800..4_102_444_800).contains(&now.seconds) || now.nanoseconds >= 1_000_000_000 {
        failures.push(format!("system clock out of range: {}.{:09}", now.seconds, now.nanoseconds));
    }
    if system_clock::get_resolution() == 0 {
        failures.push("system clock resolution is 0".to_owned());
    }
    let until = monotonic_clock::now() + 5_000_000;
    monotonic_clock::wait_until(until).await;
    if monotonic_clock::now() < until {
        failures.push("wait-until returned early".to_owned());
    }
    report("clock", failures).await
}

async fn random_checks() -> Result<(), String> {
    let mut failures = Vec::new();
    let a = random::get_random_bytes(32);
    let b = random::get_random_bytes(32);
    if a.len() != 32 || b.len() != 32 {
        failures.push(format!("asked 32 bytes, got {} and {}", a.len(), b.len()));
    }
    if a == b {
        failures.push("two random draws are equal".to_owned());
    }
    if random::get_random_u64() == random::get_random_u64() {
        failures.push("two random u64 are equal".to_owned());
    }
    if insecure::get_insecure_random_bytes(16).len() != 16 {
        failures.push("insecure random: wrong length".to_owned());
    }
    let _ = insecure::get_insecure_random_u64();
    let (s1, s2) = insecure_seed::get_insecure_seed();
    let _ = (s1, s2);
    // A large request is bounded by the host; it must not trap the guest (wasmtime caps it or returns it).
    let big = random::get_random_bytes(1 << 16);
    if big.len() != 1 << 16 {
        failures.push(format!("asked 65536 bytes, got {}", big.len()));
    }
    report("random", failures).await
}

async fn report(what: &str, failures: Vec<String>) -> Result<(), String> {
    if failures.is_empty() { print(format!("{what}: ok\n")).await } else { Err(failures.join("; ")) }
}

/// `IP` (dotted IPv4) and `PORT` as a socket address.
fn ipv4_peer(ip: &str, port: &str) -> Result<IpSocketAddress, String> {
    let octets: Vec<u8> =
        ip.split('.').map(|p| p.parse::<u8>()).collect::<Result<_, _>>().map_err(|e| format!("{e}"))?;
    let [a, b, c, d] = octets[..] else {
        return Err(format!("{ip}: not an IPv4 address"));
    };
    let port: u16 = port.parse().map_err(|e| format!("bad port: {e}"))?;
    Ok(IpSocketAddress::Ipv4(Ipv4SocketAddress { port, address: (a, b, c, d) }))
}

async fn udp(ip: &str, port: &str, message: &str) -> Result<(), String> {
    let peer = ipv4_peer(ip, port)?;
    let socket = UdpSocket::create(IpAddressFamily::Ipv4).map_err(|e| format!("create: {e:?}"))?;
    socket.send(message.as_bytes().to_vec(), Some(peer)).await.map_err(|e| format!("send: {e:?}"))?;
    let (reply, from) = socket.receive().await.map_err(|e| format!("receive: {e:?}"))?;
    let from_peer = match (&from, &peer) {
        (IpSocketAddress::Ipv4(f), IpSocketAddress::Ipv4(p)) => f.address == p.address && f.port == p.port,
        _ => false,
    };
    print(format!("reply: {:?}\nfrom the peer: {from_peer}\n", String::from_utf8_lossy(&reply))).await
}

async fn connect(ip: &str, port: &str, message: &str) -> Result<(), String> {
    let address = ipv4_peer(ip, port)?;
    let socket = TcpSocket::create(IpAddressFamily::Ipv4).map_err(|e| format!("create: {e:?}"))?;
    socket.connect(address).await.map_err(|e| format!("connect: {e:?}"))?;
    let (mut tx, rx) = wit_stream::new::<u8>();
    let sent = socket.send(rx);
    let refused = tx.write_all(message.as_bytes().to_vec()).await;
    drop(tx);
    sent.await.map_err(|e| format!("send: {e:?}"))?;
    if !refused.is_empty() {
        return Err(format!("send: {} bytes refused", refused.len()));
    }
    let (data, done) = socket.receive();
    let reply = data.collect().await;
    done.await.map_err(|e| format!("receive: {e:?}"))?;
    print(format!("reply: {:?}\n", String::from_utf8_lossy(&reply))).await
}

fn ip_text(ip: &IpAddress) -> String {
    match ip {
        IpAddress::Ipv4((a, b, c, d)) => format!("{a}.{b}.{c}.{d}"),
        IpAddress::Ipv6(parts) => format!("{parts:x?}"),
    }
}

/// Loops forever (the counter keeps the loop from being optimised away); only the host can stop it.
fn spin() -> Result<(), String> {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}
