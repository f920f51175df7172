//! How the binary is linked: the functions a run executes are placed together (host/build.rs,
//! `scripts/order-symbols`), so that a run's code is a few MiB of resident memory, not 17.

use std::collections::HashMap;

/// The binary's defined functions, from `nm`: name -> (address, size).
fn functions(binary: &std::path::Path) -> HashMap<String, (u64, u64)> {
    let out = std::process::Command::new("nm").args(["-S", "--defined-only"]).arg(binary).output().expect("nm runs");
    assert!(out.status.success(), "nm {}: {}", binary.display(), String::from_utf8_lossy(&out.stderr));
    let mut table = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if let [address, size, kind, name] = parts[..]
            && matches!(kind, "t" | "T" | "w" | "W")
        {
            let (Ok(address), Ok(size)) = (u64::from_str_radix(address, 16), u64::from_str_radix(size, 16)) else {
                continue;
            };
            table.insert(name.to_string(), (address, size));
        }
    }
    table
}

/// The functions listed in host/link/hot-symbols.txt are in the binary (the list matches this build: the names carry
/// a hash of their crate's build, which a new `Cargo.lock`, feature or toolchain changes), and the linker placed them
/// as listed: in that order, one after another. Either failing means a run's code is scattered again over the
/// binary's 43 MB (a cached run then had 17 MiB of code resident, against 3 with the list applied).
#[test]
fn a_runs_code_is_placed_together() {
    let listed = std::fs::read_to_string(toka_tests::root().join("host/link/hot-symbols.txt")).unwrap();
    let listed: Vec<&str> = listed.lines().filter(|l| !l.is_empty()).collect();
    assert!(listed.len() > 1_000, "only {} functions listed", listed.len());
    let table = functions(&toka_tests::toka_host());
    assert!(table.len() > 10_000, "nm found only {} functions: is the binary stripped?", table.len());
    let found: Vec<(u64, u64)> = listed.iter().filter_map(|name| table.get(*name).copied()).collect();
    // A name ending in `.llvm.HASH` (a local function LLVM made visible across a crate's codegen units) carries a
    // hash of its module, which takes in the source files' paths: another checkout, another name. The others must be
    // there.
    let stable: Vec<&&str> = listed.iter().filter(|name| !name.contains(".llvm.")).collect();
    let missing: Vec<&&&str> = stable.iter().filter(|name| !table.contains_key(***name)).collect();
    assert!(
        missing.len() * 10 <= stable.len(),
        "{} of the {} functions in host/link/hot-symbols.txt are not in the binary (for example {:?}): run \
         scripts/order-symbols",
        missing.len(),
        stable.len(),
        missing.iter().take(3).collect::<Vec<_>>()
    );
    // In order: identical functions folded into one may share an address, nothing else goes back.
    let backwards = found.windows(2).filter(|w| w[1].0 < w[0].0).count();
    assert!(backwards * 100 <= found.len(), "{backwards} of {} listed functions are placed out of order", found.len());
    let size: u64 = found.iter().map(|(_, s)| s).sum();
    let start = found.iter().map(|(a, _)| *a).min().unwrap();
    let end = found.iter().map(|(a, s)| a + s).max().unwrap();
    assert!(
        end - start <= size + size / 4,
        "the listed functions ({size} bytes) lie across {} bytes: the linker did not take the list",
        end - start
    );
}
