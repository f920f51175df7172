//! Link options for the `toka-host` binary.

fn main() {
    // Relative relocations packed (DT_RELR, glibc 2.36+, binutils 2.38+): the binary holds about 94,000 of them
    // (vtables and tables of pointers in 57 MB of code), and the dynamic loader applies every one at each start, which
    // was most of its time (`LD_DEBUG=statistics`). The packed form is a few KB to read instead of 2.2 MB.
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    // A run's code placed together: the functions a run executes (`link/hot-symbols.txt`, written by
    // `scripts/order-symbols`) come first in `.text`, in that order, instead of scattered over all of it, where the
    // kernel's fault-around made 17 MiB of code resident for 3 MB executed. The linker is lld (Rust's default on
    // x86_64 Linux). A listed name the build does not have is skipped without a warning; the test
    // `link::a_runs_code_is_placed_together` says when too many are.
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR for build scripts");
    println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={dir}/link/hot-symbols.txt");
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    println!("cargo:rerun-if-changed=link/hot-symbols.txt");
    println!("cargo:rerun-if-changed=build.rs");
}
