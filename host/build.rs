//! Link options for the `toka-host` binary.

fn main() {
    // Relative relocations packed (DT_RELR, glibc 2.36+, binutils 2.38+): the binary holds about 94,000 of them
    // (vtables and tables of pointers in 57 MB of code), and the dynamic loader applies every one at each start, which
    // was most of its time (`LD_DEBUG=statistics`). The packed form is a few KB to read instead of 2.2 MB.
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}/link/hot-symbols.txt", env!("CARGO_MANIFEST_DIR"));
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    println!("cargo:rerun-if-changed=link/hot-symbols.txt");
    println!("cargo:rerun-if-changed=build.rs");
}
