"""Reference runner: a WASI preview 1 core module under wasmtime-py, for comparing toka-host's runs with wasmtime's.

    .tools/venv/bin/python tests/wasmtime_ref.py [--dir HOST[::GUEST][:ro]]... [--env NAME[=VALUE]]...
        [--inherit-stdin] [--cache-dir DIR] MODULE [ARGS...]

The options are spelled as toka-host's `run` grants, so a test passes the same list to both:
  --dir HOST[::GUEST][:ro]  preopen HOST as GUEST (default: HOST itself), read-write unless `:ro`
                            (wasmtime-py's `preopen_dir(..., fs_mutable=False)`: a read-only directory and files)
  --env NAME[=VALUE]        set NAME to VALUE, or to this process's NAME if no value is given (skipped if unset)
  --inherit-stdin           the module reads what this process reads on stdin (otherwise its stdin is empty)
  --cache-dir DIR           keep the compiled module in DIR, keyed by the module's hash and the wasmtime version

The module sees ARGS with MODULE (as given) as argv[0], like `wasmtime run`, and nothing else of this process.
Prints one JSON object: {"stdout": ..., "stderr": ..., "exit_code": N}. N is the status given to `proc_exit`, 0 if
`_start` returns, 134 for a trap (what `wasmtime run` exits with on Unix), with the trap's text in "trap", or 1 if
the module cannot run at all (e.g. an import wasmtime does not provide), with the reason in "error".
stdout and stderr are captured through files in a temporary directory and decoded as UTF-8 (invalid bytes replaced).
"""

import argparse
import hashlib
import importlib.metadata
import json
import os
import sys
import tempfile

import wasmtime

TRAP_EXIT_CODE = 134  # 128 + SIGABRT, as `wasmtime run` on Unix
ERROR_EXIT_CODE = 1  # any other failure to run, as `wasmtime run`


def parse_dir(text):
    """`HOST[::GUEST][:ro]` -> (host, guest, mutable), as toka-host parses `--dir`."""
    mutable = True
    if text.endswith(":ro"):
        text, mutable = text[: -len(":ro")], False
    elif text.endswith(":rw"):
        text = text[: -len(":rw")]
    host, sep, guest = text.partition("::")
    return host, (guest if sep else host), mutable


def parse_env(text):
    """`NAME=VALUE` -> (NAME, VALUE); `NAME` -> (NAME, this process's value), or None if it is unset."""
    name, sep, value = text.partition("=")
    if sep:
        return name, value
    return (name, os.environ[name]) if name in os.environ else None


def load_module(engine, path, cache_dir):
    """Compiles the module, or deserializes it from `cache_dir` when it was compiled before."""
    if cache_dir is None:
        return wasmtime.Module.from_file(engine, path)
    with open(path, "rb") as f:
        wasm = f.read()
    key = hashlib.sha256(wasm + importlib.metadata.version("wasmtime").encode()).hexdigest()
    cached = os.path.join(cache_dir, key + ".cwasm")
    if os.path.exists(cached):
        return wasmtime.Module.deserialize_file(engine, cached)
    module = wasmtime.Module(engine, wasm)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{cached}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(module.serialize())
    os.replace(tmp, cached)
    return module


def run(options):
    engine = wasmtime.Engine()
    module = load_module(engine, options.module, options.cache_dir)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()

    with tempfile.TemporaryDirectory(prefix="wasmtime-ref-") as tmp:
        stdin_path = os.path.join(tmp, "stdin")
        stdout_path = os.path.join(tmp, "stdout")
        stderr_path = os.path.join(tmp, "stderr")
        with open(stdin_path, "wb") as f:
            if options.inherit_stdin:
                f.write(sys.stdin.buffer.read())

        config = wasmtime.WasiConfig()
        config.argv = [options.module] + options.args
        config.env = [pair for pair in map(parse_env, options.env) if pair is not None]
        for grant in options.dir:
            host, guest, mutable = parse_dir(grant)
            config.preopen_dir(host, guest, mutable)
        config.stdin_file = stdin_path
        config.stdout_file = stdout_path
        config.stderr_file = stderr_path

        store = wasmtime.Store(engine)
        store.set_wasi(config)
        report = {}
        try:
            instance = linker.instantiate(store, module)
            instance.exports(store)["_start"](store)
            exit_code = 0
        except wasmtime.ExitTrap as e:
            exit_code = e.code
        except wasmtime.Trap as e:
            exit_code = TRAP_EXIT_CODE
            report["trap"] = str(e)
        except wasmtime.WasmtimeError as e:  # e.g. an import wasmtime cannot provide
            exit_code = ERROR_EXIT_CODE
            report["error"] = str(e)
        del store  # closes the stdio files

        for name, path in (("stdout", stdout_path), ("stderr", stderr_path)):
            with open(path, "rb") as f:
                report[name] = f.read().decode("utf-8", errors="replace")
        report["exit_code"] = exit_code
        return report


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", action="append", default=[], metavar="HOST[::GUEST][:ro]")
    parser.add_argument("--env", action="append", default=[], metavar="NAME[=VALUE]")
    parser.add_argument("--inherit-stdin", action="store_true")
    parser.add_argument("--cache-dir")
    parser.add_argument("module")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    report = run(parser.parse_args())
    json.dump(report, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
