"""Calls the built tools (target/tools/NAME.wasm) in the reference runtime, without toka-host.

Run with the Python of `scripts/setup-toolchains` (its `wasmtime` package, the reference runtime):

    .tools/venv/bin/python agents/tool-smoke.py                 # the smoke suite over every built-in tool
    .tools/venv/bin/python agents/tool-smoke.py describe NAME   # print a tool's spec
    .tools/venv/bin/python agents/tool-smoke.py call NAME JSON [--dir HOST[:ro]] [--net] [--fuel N]

Each call gets a fresh store with WASI preview 2 from wasmtime: a `--dir` is mounted at its own absolute path (as
toka-host mounts a caller's directories for a tool), `--net` lets the tool reach any address (toka-host narrows that
to the caller's grants). The host's `toka:agent/log` prints to stderr, and `toka:agent/tools.call` instantiates the
named built tool in a fresh store of its own, up to a depth of 4, as toka-host does. Nothing here validates against
the JSON Schemas or enforces grants: that is toka-host's job, tested end to end in `tests/all/tools.rs`.

Sockets: the wasmtime-py C API build used here refuses every connection of a component even after
`wasi_config_inherit_network` (access-denied), so when it does, the suite makes the http-fetch calls through
`target/release/toka-host tool call --allow-net` instead (a throwaway TOKA_HOME), if that binary exists.
"""

import http.server
import json
import os
import socketserver
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import wasmtime
from wasmtime import component as cm

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "target" / "tools"
MAX_DEPTH = 4

_engine_config = wasmtime.Config()
_engine_config.consume_fuel = True
ENGINE = wasmtime.Engine(_engine_config)
_components: dict = {}


def component(name: str) -> cm.Component:
    if name not in _components:
        path = TOOLS / f"{name}.wasm"
        if not path.exists():
            raise SystemExit(f"{path} is missing: cargo run --release -p xtask -- build-agents {name}")
        _components[name] = cm.Component.from_file(ENGINE, str(path))
    return _components[name]


class Call:
    """One tool instance in a fresh store, with the given directories and network access."""

    def __init__(self, name: str, dirs=(), net=False, fuel=10_000_000_000, depth=1):
        self.name, self.dirs, self.net, self.fuel, self.depth = name, list(dirs), net, fuel, depth
        self.store = wasmtime.Store(ENGINE)
        self.store.set_fuel(fuel)
        wasi = wasmtime.WasiConfig()
        for host, read_only in self.dirs:
            wasi.preopen_dir(host, host, not read_only)
        if net:
            wasmtime._ffi.wasi_config_inherit_network(wasi.ptr())
            wasmtime._ffi.wasi_config_allow_ip_name_lookup(wasi.ptr(), True)
        wasi.inherit_stderr()
        self.store.set_wasi(wasi)
        linker = cm.Linker(ENGINE)
        linker.add_wasip2()
        with linker.root() as root:
            with root.add_instance("toka:agent/log@0.1.0") as log:
                log.add_func("log", lambda _store, level, message: print(f"  [{name}] {level}: {message}", file=sys.stderr))
            with root.add_instance("toka:agent/tools@0.1.0") as tools:
                tools.add_func("list", lambda _store: [])
                tools.add_func("call", self._call_tool)
        linker.define_unknown_imports_as_traps(component(name))
        self.instance = linker.instantiate(self.store, component(name))

    def _call_tool(self, _store, name: str, input: str):
        if self.depth >= MAX_DEPTH:
            return cm.Variant("denied", f"depth limit reached: {MAX_DEPTH}")
        try:
            inner = Call(name, self.dirs, self.net, self.fuel, self.depth + 1)
            return inner.invoke(input)
        except wasmtime.WasmtimeError as trap:
            return cm.Variant("failed", f"tool {name} trapped: {str(trap).splitlines()[0]}")

    def describe(self) -> dict:
        func = self.instance.get_func(self.store, "describe")
        spec = func(self.store)
        return {
            "name": getattr(spec, "name"),
            "version": getattr(spec, "version"),
            "description": getattr(spec, "description"),
            "input_schema": json.loads(getattr(spec, "input-schema")),
            "output_schema": json.loads(getattr(spec, "output-schema")),
            "side_effect": getattr(spec, "side-effect"),
            "grants": list(getattr(spec, "grants")),
        }

    def invoke(self, input: str):
        """The output string, or a `Variant` (the tool-error); traps raise `wasmtime.WasmtimeError`."""
        func = self.instance.get_func(self.store, "invoke")
        return func(self.store, input)


def call(name: str, input, **kw):
    """Invokes `name` with `input` (a Python value, sent as JSON): ("ok", value) or (error-case, message)."""
    result = Call(name, **kw).invoke(input if isinstance(input, str) else json.dumps(input))
    if isinstance(result, cm.Variant):
        return result.tag, result.payload
    return "ok", json.loads(result)


# ---------------------------------------------------------------------------------------------------------- suite

FAILURES: list = []


def check(what: str, condition: bool, detail=None):
    print(f"{'ok  ' if condition else 'FAIL'} {what}" + ("" if condition or detail is None else f": {detail}"))
    if not condition:
        FAILURES.append(what)


def expect(what: str, got, tag: str, test=lambda v: True):
    check(what, got[0] == tag and test(got[1]), got)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in [b"hello, ", b"chunked ", "wörld".encode()]:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/close":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"x" * 100_000)
            self.close_connection = True
        else:
            body = json.dumps({"path": self.path, "host": self.headers["Host"], "ua": self.headers["User-Agent"]}).encode()
            self.send_response(404 if self.path == "/missing" else 200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Twice", "a")
            self.send_header("X-Twice", "b")
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *args):
        pass


def http_runner(port: int):
    """A function (input, allow_net) -> (tag, value) calling http-fetch: in this runtime if it grants sockets,
    else through toka-host (tag "error" for any failure, the value its message), else None."""
    probe = call("http-fetch", {"url": f"http://127.0.0.1:{port}/probe"}, net=True)
    if probe[0] == "ok":
        return lambda input, allow_net: call("http-fetch", input, net=allow_net)
    toka_host = ROOT / "target" / "release" / "toka-host"
    if not toka_host.exists():
        return None
    print(f"       (this wasmtime-py refused the connection: {probe[1]}; calling http-fetch through toka-host)")
    home = tempfile.mkdtemp(prefix="tool-smoke-")
    env = dict(os.environ, TOKA_HOME=home, TOKA_CACHE_DIR=os.path.join(home, "cache"))
    subprocess.run([toka_host, "tool", "add", TOOLS / "http-fetch.wasm"], env=env, check=True, capture_output=True)

    def run(input, allow_net):
        url = input["url"]
        authority = url.split("://", 1)[1].split("/", 1)[0]
        grant = ["--allow-net", authority.replace("localhost", "127.0.0.1")] if allow_net else []
        done = subprocess.run([toka_host, "tool", "call", "http-fetch", "--json", "--input", json.dumps(input), *grant],
                              env=env, capture_output=True, text=True)
        report = json.loads(done.stdout)
        if report.get("output") is not None:
            output = report["output"]
            return "ok", json.loads(output) if isinstance(output, str) else output
        return "error", report.get("error")

    return run


def expect_error(what: str, got, tag: str, message: str):
    """`got` failed as `tag` (in this runtime) or with `message` in its text (through toka-host)."""
    check(what, got[0] in (tag, "error") and message in str(got[1]), got)
    print(f"       ({got[0]}: {got[1]})")


def http_checks(fetch, port: int):
    base = f"http://127.0.0.1:{port}"
    expect("http-fetch GET with content-length", fetch({"url": f"{base}/hi?x=1"}, True), "ok",
           lambda v: v["status"] == 200 and json.loads(v["body"])["path"] == "/hi?x=1"
           and json.loads(v["body"])["host"] == f"127.0.0.1:{port}" and v["headers"]["x-twice"] == "a, b"
           and v["headers"]["content-type"] == "application/json" and not v["truncated"])
    expect("http-fetch by name (ip-name-lookup)", fetch({"url": f"http://localhost:{port}/n"}, True),
           "ok", lambda v: v["status"] == 200)
    expect("http-fetch: a 404 is an output, not an error", fetch({"url": f"{base}/missing"}, True),
           "ok", lambda v: v["status"] == 404)
    expect("http-fetch decodes chunked", fetch({"url": f"{base}/chunked"}, True), "ok",
           lambda v: v["body"] == "hello, chunked wörld" and v["bytes"] == 21 and not v["truncated"])
    expect("http-fetch cuts chunked at max_bytes, at a character boundary",
           fetch({"url": f"{base}/chunked", "max_bytes": 17}, True), "ok",
           lambda v: v["body"] == "hello, chunked w" and v["bytes"] == 17 and v["truncated"])
    expect("http-fetch reads until close, capped", fetch({"url": f"{base}/close", "max_bytes": 1000}, True), "ok",
           lambda v: v["body"] == "x" * 1000 and v["truncated"])
    expect("http-fetch reads until close", fetch({"url": f"{base}/close"}, True), "ok",
           lambda v: len(v["body"]) == 100_000 and not v["truncated"])
    expect_error("http-fetch: https is refused", fetch({"url": f"https://127.0.0.1:{port}/"}, True),
                 "invalid-input", "no TLS")
    expect_error("http-fetch: without network rights the connection is denied", fetch({"url": f"{base}/"}, False),
                 "denied", "not allowed")
    with socketserver.TCPServer(("127.0.0.1", 0), Handler) as closed:
        dead = closed.server_address[1]
    expect_error("http-fetch: a refused connection is failed", fetch({"url": f"http://127.0.0.1:{dead}/"}, True),
                 "failed", "connection-refused")


def suite():
    names = ["echo", "file-reader", "file-writer", "file-lister", "json-query", "http-fetch", "fail-tool", "date-validator"]
    for name in names:
        spec = Call(name).describe()
        schemas_ok = all(
            s.get("type") == "object" and s.get("$schema", "").endswith("2020-12/schema")
            for s in (spec["input_schema"], spec["output_schema"])
        )
        check(f"{name}: describe() names it, version 1.0.0, 2020-12 object schemas",
              spec["name"] == name and spec["version"] == "1.0.0" and schemas_ok, spec)
        print(f"       side-effect {spec['side_effect']}, grants {spec['grants']}")

    expect("echo returns its input", call("echo", {"k": [1, {"x": None}]}), "ok", lambda v: v == {"k": [1, {"x": None}]})
    expect("echo: bad JSON is invalid-input", call("echo", "{nope"), "invalid-input")

    with tempfile.TemporaryDirectory() as tmp:
        d = os.path.realpath(tmp)
        Path(d, "a.txt").write_text("alpha beta\n")
        Path(d, "é.bin").write_bytes(b"\xff\xfe")
        Path(d, "sub").mkdir()
        Path(d, "long.txt").write_text("ab€cd")  # € is 3 bytes: a cut at 3 or 4 bytes falls inside it
        ro, rw = [(d, True)], [(d, False)]
        expect("file-reader reads a granted file", call("file-reader", {"path": f"{d}/a.txt"}, dirs=ro), "ok",
               lambda v: v == {"path": f"{d}/a.txt", "content": "alpha beta\n", "bytes": 11, "truncated": False})
        expect("file-reader cuts at max_bytes on a character boundary",
               call("file-reader", {"path": f"{d}/long.txt", "max_bytes": 4}, dirs=ro), "ok",
               lambda v: v["content"] == "ab" and v["truncated"] and v["bytes"] == 2)
        expect("file-reader: exactly max_bytes is not truncated",
               call("file-reader", {"path": f"{d}/long.txt", "max_bytes": 7}, dirs=ro), "ok",
               lambda v: v["content"] == "ab€cd" and not v["truncated"])
        expect("file-reader: not UTF-8 is failed", call("file-reader", {"path": f"{d}/é.bin"}, dirs=ro), "failed")
        expect("file-reader: a directory is invalid-input", call("file-reader", {"path": f"{d}/sub"}, dirs=ro),
               "invalid-input")
        expect("file-reader: missing file is invalid-input", call("file-reader", {"path": f"{d}/nope"}, dirs=ro),
               "invalid-input")
        got = call("file-reader", {"path": f"{d}/a.txt"})
        check("file-reader: without the directory the file is not there", got[0] != "ok", got)
        print(f"       ({got[0]}: {got[1]})")

        expect("file-lister lists sorted, with kinds and sizes", call("file-lister", {"path": d}, dirs=ro), "ok",
               lambda v: v["entries"] == [
                   {"name": "a.txt", "kind": "file", "size": 11},
                   {"name": "long.txt", "kind": "file", "size": 7},
                   {"name": "sub", "kind": "dir", "size": v["entries"][2]["size"]},
                   {"name": "é.bin", "kind": "file", "size": 2},
               ])
        expect("file-lister: a file is invalid-input", call("file-lister", {"path": f"{d}/a.txt"}, dirs=ro),
               "invalid-input")

        out = f"{d}/out.txt"
        expect("file-writer writes", call("file-writer", {"path": out, "content": "x€"}, dirs=rw), "ok",
               lambda v: v == {"path": out, "bytes_written": 4})
        expect("file-writer appends", call("file-writer", {"path": out, "content": "y", "append": True}, dirs=rw), "ok")
        expect("file-writer replaces", call("file-writer", {"path": f"{d}/a.txt", "content": "new"}, dirs=rw), "ok")
        check("file-writer: the files hold what was written",
              Path(out).read_text() == "x€y" and Path(d, "a.txt").read_text() == "new")
        got = call("file-writer", {"path": out, "content": "z"}, dirs=ro)
        check("file-writer: a read-only directory is denied", got[0] == "denied" and Path(out).read_text() == "x€y",
              got)
        print(f"       ({got[0]}: {got[1]})")

    doc = {"a": {"b": [10, 20, 30]}, "items": [{"name": "x"}, {"name": "y"}], "k.e[y]": 1}
    for path, matches in [("$.a.b[0]", [10]), ("$.a.b[-1]", [30]), ("$.items[*].name", ["x", "y"]),
                          ('$["k.e[y]"]', [1]), ("$.nope", []), ("$", [doc])]:
        expect(f"json-query {path}", call("json-query", {"document": doc, "path": path}), "ok",
               lambda v, m=matches: v == {"matches": m})
    expect("json-query: a bad path is invalid-input", call("json-query", {"document": doc, "path": "$[x"}),
           "invalid-input")

    for text, fmt, normalized in [("2024-02-29", None, "2024-02-29"),
                                  ("2026-11-24T10:00:00+01:00", None, "2026-11-24T09:00:00Z"),
                                  ("2026-01-01t00:30:00.250-00:45", "rfc3339", "2026-01-01T01:15:00.250Z"),
                                  ("2016-12-31T23:59:60Z", None, "2016-12-31T23:59:60Z")]:
        expect(f"date-validator {text}", call("date-validator", {"date": text, **({"format": fmt} if fmt else {})}),
               "ok", lambda v, n=normalized: v["valid"] and v["normalized"] == n)
    for text, fmt in [("2023-02-29", None), ("2024-13-01", None), ("20240101", None), ("2024-01-01T10:00:00", None),
                      ("2024-01-01 10:00:00Z", "rfc3339"), ("2024-01-01T24:00:00Z", None),
                      ("2024-01-01T10:00:00+24:00", None), ("2024-01-01T12:00:60Z", None), ("2024-01-01", "rfc3339")]:
        expect(f"date-validator rejects {text!r}", call("date-validator", {"date": text, **({"format": fmt} if fmt else {})}),
               "ok", lambda v: v["valid"] is False and v["reason"])
    expect("date-validator: bad JSON is invalid-input", call("date-validator", "[]"), "invalid-input")

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    fetch = http_runner(port)
    if fetch is None:
        print("SKIP http-fetch: this wasmtime-py refuses sockets and target/release/toka-host is not built")
    else:
        http_checks(fetch, port)
    server.shutdown()

    expect("fail-tool ok", call("fail-tool", {"mode": "ok"}), "ok", lambda v: v == {"ok": True})
    expect("fail-tool ok", call("fail-tool", {"mode": "ok"}), "ok", lambda v: v == {"ok": True})
    expect("fail-tool error", call("fail-tool", {"mode": "error"}), "failed")
    expect("fail-tool bad-output breaks its own schema", call("fail-tool", {"mode": "bad-output"}), "ok",
           lambda v: v["ok"] == "not a boolean")
    for mode, fuel in [("trap", 10_000_000_000), ("spin", 50_000_000)]:
        try:
            got = call("fail-tool", {"mode": mode}, fuel=fuel)
            check(f"fail-tool {mode} traps", False, got)
        except wasmtime.WasmtimeError as trap:
            check(f"fail-tool {mode} traps", True)
            print(f"       ({str(trap).splitlines()[0]})")
    tag, chain = call("fail-tool", {"mode": "recurse"})
    levels = 0
    while isinstance(chain, dict) and chain.get("ok"):
        chain, levels = chain["inner"], levels + 1
    check("fail-tool recurse: three levels call on, the fourth call is refused",
          tag == "ok" and levels == 3 and "depth limit" in chain["inner"], chain)

    print(f"\n{len(FAILURES)} failure(s)" + (": " + ", ".join(FAILURES) if FAILURES else ""))
    return 1 if FAILURES else 0


def main(args):
    if not args:
        return suite()
    if args[0] == "describe" and len(args) == 2:
        print(json.dumps(Call(args[1]).describe(), indent=2, ensure_ascii=False))
        return 0
    if args[0] == "call" and len(args) >= 3:
        dirs, net, fuel, rest = [], False, 10_000_000_000, args[3:]
        while rest:
            flag = rest.pop(0)
            if flag == "--dir":
                spec = rest.pop(0)
                read_only = spec.endswith(":ro")
                dirs.append((os.path.realpath(spec[:-3] if read_only else spec), read_only))
            elif flag == "--net":
                net = True
            elif flag == "--fuel":
                fuel = int(rest.pop(0))
            else:
                raise SystemExit(f"unknown option {flag}")
        tag, value = call(args[1], args[2], dirs=dirs, net=net, fuel=fuel)
        print(json.dumps(value, ensure_ascii=False) if tag == "ok" else f"{tag}: {value}")
        return 0 if tag == "ok" else 1
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
