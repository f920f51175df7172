//! zig-echo: the Zig twin of agents/go-echo, a WASI preview 1 command (wasm32-wasi, no libc) that toka-host runs as
//! the core module it is. Same subcommands, same output, same exit statuses, so that its
//! runs can be compared with go-echo's and with a reference WASI runtime:
//!
//!     zig-echo args A B ...     prints "args: A B ..."
//!     zig-echo env              prints "env: K=V" per variable, sorted
//!     zig-echo cat FILE         copies FILE to stdout
//!     zig-echo ls DIR           prints the sorted entry names of DIR
//!     zig-echo write FILE TEXT  writes TEXT to FILE
//!     zig-echo stdin            copies stdin to stdout
//!     zig-echo clock            checks the wall clock is after 2020 and the monotonic clock advances
//!     zig-echo random           checks two 32-byte random reads differ
//!     zig-echo exit N           exits with status N
//!
//! Errors go to stderr as `zig-echo: ...` with status 1 (Zig error names stand in for Go's error strings).
//!
//! WASI preview 1 has no absolute paths: a program opens files relative to a preopened directory. Without libc,
//! Zig's std leaves the mapping to the program (`Dir.cwd()` is simply descriptor 3), so `resolve` below does what
//! Go's runtime does: a relative path is taken from `$PWD`, or else from the first preopen; the longest preopen name
//! that is a prefix of the path holds it, and the rest is opened relative to that directory. Two deliberate
//! differences from Go, as in wasi-libc: prefixes match whole path components only (Go would look for `/database`
//! in a preopen named `/data`), and a preopen name without a leading slash (`data`) stands for `/data`.

const std = @import("std");
const Io = std.Io;
const Dir = Io.Dir;
const File = Io.File;
const mem = std.mem;

const usage = "usage: zig-echo args|env|cat|ls|write|stdin|clock|random|exit ...";

/// 2020-01-01T00:00:00Z in Unix seconds.
const year_2020: i64 = 1577836800;

const Echo = struct {
    io: Io,
    arena: mem.Allocator,
    preopens: std.process.Preopens,
    environ: *const std.process.Environ.Map,
    out: *File.Writer,

    /// Prints `zig-echo: MESSAGE` on stderr (after what stdout already holds) and exits with status 1.
    fn fail(e: *Echo, comptime format: []const u8, args: anytype) noreturn {
        e.out.interface.flush() catch {};
        var buffer: [512]u8 = undefined;
        var err = File.stderr().writerStreaming(e.io, &buffer);
        err.interface.print("zig-echo: " ++ format ++ "\n", args) catch {};
        err.interface.flush() catch {};
        std.process.exit(1);
    }

    fn print(e: *Echo, comptime format: []const u8, args: anytype) void {
        e.out.interface.print(format, args) catch e.failWrite();
    }

    fn write(e: *Echo, bytes: []const u8) void {
        e.out.interface.writeAll(bytes) catch e.failWrite();
    }

    fn failWrite(e: *Echo) noreturn {
        e.fail("stdout: {t}", .{e.out.err orelse error.WriteFailed});
    }

    /// The working directory relative paths start from, as in Go's runtime: `$PWD`, or else the name of the first
    /// preopened directory, or else `/`.
    fn cwd(e: *Echo) []const u8 {
        if (e.environ.get("PWD")) |pwd| if (pwd.len > 0) return pwd;
        const names = e.preopens.map.keys();
        return if (names.len > 3) names[3] else "/";
    }

    /// The argument at `index` of the subcommand's arguments, or a usage error.
    fn arg(e: *Echo, args: []const [:0]const u8, index: usize) [:0]const u8 {
        if (index >= args.len) e.fail("{s}", .{usage});
        return args[index];
    }
};

/// A path split into the preopened directory that holds it and the path relative to that directory.
const Resolved = struct {
    dir: Dir,
    sub_path: []const u8,
};

/// Maps a guest path to (preopen, relative path): relative paths are joined to `cwd`; the longest preopen name
/// that is a whole-component prefix wins.
fn resolve(e: *Echo, path: []const u8) error{ InvalidArgument, NotCapable, OutOfMemory }!Resolved {
    if (path.len == 0) return error.InvalidArgument;
    const preopens = e.preopens;
    const full = if (mem.startsWith(u8, path, "/")) path else try mem.concat(e.arena, u8, &.{ e.cwd(), "/", path });
    // Compared without leading slashes, as the preopen names are.
    const absolute = mem.trimStart(u8, full, "/");
    var best: ?Resolved = null;
    var best_len: usize = 0;
    // Descriptors 0-2 are stdio; directories start at 3 and their names are the map's keys, in descriptor order.
    for (preopens.map.keys()[3..], 3..) |raw_name, fd| {
        // Preopen names are given as "/data", "data", "./data", "." or "/": compare them without the leading part.
        var name = mem.trimStart(u8, raw_name, "/");
        if (mem.startsWith(u8, name, "./")) name = mem.trimStart(u8, name[2..], "/");
        if (mem.eql(u8, name, ".")) name = "";
        name = mem.trimEnd(u8, name, "/");
        const matches = name.len == 0 or (mem.startsWith(u8, absolute, name) and
            (absolute.len == name.len or absolute[name.len] == '/'));
        if (!matches or (best != null and name.len < best_len)) continue;
        const rest = mem.trimStart(u8, absolute[name.len..], "/");
        best = .{ .dir = .{ .handle = @intCast(fd) }, .sub_path = if (rest.len == 0) "." else rest };
        best_len = name.len;
    }
    return best orelse error.NotCapable;
}

pub fn main(init: std.process.Init) void {
    const io = init.io;
    var out_buffer: [4096]u8 = undefined;
    var out = File.stdout().writerStreaming(io, &out_buffer);
    var e: Echo = .{
        .io = io,
        .arena = init.arena.allocator(),
        .preopens = init.preopens,
        .environ = init.environ_map,
        .out = &out,
    };

    const argv = init.minimal.args.toSlice(e.arena) catch |err| e.fail("reading arguments: {t}", .{err});
    if (argv.len < 2) e.fail("{s}", .{usage});
    const command = argv[1];
    const args = argv[2..];

    if (mem.eql(u8, command, "args")) {
        e.write("args: ");
        for (args, 0..) |a, i| {
            if (i > 0) e.write(" ");
            e.write(a);
        }
        e.write("\n");
    } else if (mem.eql(u8, command, "env")) {
        // Sorted as whole `K=V` strings, like Go's sort.Strings(os.Environ()).
        const keys = e.environ.keys();
        const values = e.environ.values();
        const pairs = e.arena.alloc([]const u8, keys.len) catch |err| e.fail("env: {t}", .{err});
        for (pairs, keys, values) |*pair, k, v| {
            pair.* = mem.concat(e.arena, u8, &.{ k, "=", v }) catch |err| e.fail("env: {t}", .{err});
        }
        mem.sort([]const u8, pairs, {}, struct {
            fn lessThan(_: void, a: []const u8, b: []const u8) bool {
                return mem.lessThan(u8, a, b);
            }
        }.lessThan);
        for (pairs) |pair| e.print("env: {s}\n", .{pair});
    } else if (mem.eql(u8, command, "cat")) {
        const path = e.arg(args, 0);
        const at = resolve(&e, path) catch |err| e.fail("cat {s}: {t}", .{ path, err });
        // Read all, then write, as Go's os.ReadFile does: a failed read prints nothing.
        const data = at.dir.readFileAlloc(io, at.sub_path, e.arena, .unlimited) catch |err|
            e.fail("cat {s}: {t}", .{ path, err });
        e.write(data);
    } else if (mem.eql(u8, command, "ls")) {
        const path = e.arg(args, 0);
        const at = resolve(&e, path) catch |err| e.fail("ls {s}: {t}", .{ path, err });
        var dir = at.dir.openDir(io, at.sub_path, .{ .iterate = true }) catch |err|
            e.fail("ls {s}: {t}", .{ path, err });
        defer dir.close(io);
        var names: std.ArrayList([]const u8) = .empty;
        var it = dir.iterate();
        while (it.next(io) catch |err| e.fail("ls {s}: {t}", .{ path, err })) |entry| {
            const name = e.arena.dupe(u8, entry.name) catch |err| e.fail("ls {s}: {t}", .{ path, err });
            names.append(e.arena, name) catch |err| e.fail("ls {s}: {t}", .{ path, err });
        }
        // Sorted by name, like Go's os.ReadDir.
        mem.sort([]const u8, names.items, {}, struct {
            fn lessThan(_: void, a: []const u8, b: []const u8) bool {
                return mem.lessThan(u8, a, b);
            }
        }.lessThan);
        for (names.items) |name| e.print("{s}\n", .{name});
    } else if (mem.eql(u8, command, "write")) {
        const path = e.arg(args, 0);
        const text = e.arg(args, 1);
        const at = resolve(&e, path) catch |err| e.fail("write {s}: {t}", .{ path, err });
        at.dir.writeFile(io, .{ .sub_path = at.sub_path, .data = text }) catch |err|
            e.fail("write {s}: {t}", .{ path, err });
        e.print("wrote {d} bytes\n", .{text.len});
    } else if (mem.eql(u8, command, "stdin")) {
        var in_buffer: [4096]u8 = undefined;
        var in = File.stdin().readerStreaming(io, &in_buffer);
        _ = in.interface.streamRemaining(&out.interface) catch |err| switch (err) {
            error.ReadFailed => e.fail("stdin: {t}", .{in.err orelse err}),
            error.WriteFailed => e.failWrite(),
        };
    } else if (mem.eql(u8, command, "clock")) {
        const now = Io.Clock.real.now(io);
        if (now.toSeconds() < year_2020) e.fail("wall clock says {d} s after 1970", .{now.toSeconds()});
        const start = Io.Clock.awake.now(io);
        while (Io.Clock.awake.now(io).nanoseconds <= start.nanoseconds) {}
        e.write("clock ok\n");
    } else if (mem.eql(u8, command, "random")) {
        var a: [32]u8 = undefined;
        var b: [32]u8 = undefined;
        io.randomSecure(&a) catch |err| e.fail("random: {t}", .{err});
        io.randomSecure(&b) catch |err| e.fail("random: {t}", .{err});
        if (mem.eql(u8, &a, &b)) e.fail("random: two reads were equal", .{});
        e.write("random ok\n");
    } else if (mem.eql(u8, command, "exit")) {
        const text = e.arg(args, 0);
        // Any 32-bit status, passed to proc_exit as is (Go's os.Exit does the same with its int).
        const code = std.fmt.parseInt(i32, text, 10) catch |err| e.fail("exit: parsing \"{s}\": {t}", .{ text, err });
        out.interface.flush() catch e.failWrite();
        std.os.wasi.proc_exit(@bitCast(code));
    } else {
        e.fail("unknown subcommand \"{s}\"", .{command});
    }
    out.interface.flush() catch e.failWrite();
}
