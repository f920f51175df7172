//! {{name}}: a WASI preview 1 command in Zig, made by `toka-host new command {{name}} --lang zig`.
//!
//! Built by `toka-host build` for wasm32-wasi and made a wasi:cli/command component. `toka-host run {{name}}.wasm
//! Ada` prints "Hello, Ada!". It sees only what the run grants: `--dir HOST::/data:ro`, `--env NAME`,
//! `--allow-net HOST:PORT`, `--inherit-stdin`.

const std = @import("std");

pub fn main(init: std.process.Init) void {
    const io = init.io;
    var buffer: [4096]u8 = undefined;
    var out = std.Io.File.stdout().writerStreaming(io, &buffer);
    const argv = init.minimal.args.toSlice(init.arena.allocator()) catch std.process.exit(1);
    out.interface.writeAll("Hello, ") catch std.process.exit(1);
    if (argv.len < 2) {
        out.interface.writeAll("world") catch std.process.exit(1);
    }
    for (argv[1..], 0..) |arg, i| {
        if (i > 0) out.interface.writeAll(" ") catch std.process.exit(1);
        out.interface.writeAll(arg) catch std.process.exit(1);
    }
    out.interface.writeAll("!\n") catch std.process.exit(1);
    out.interface.flush() catch std.process.exit(1);
}
