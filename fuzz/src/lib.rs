//! Fuzz properties of toka-host, as plain functions: the libFuzzer targets in `fuzz_targets/` call them on what
//! libFuzzer generates, and this crate's tests (`tests/`) call them on the seed corpus and on random mutations on
//! every test run, so a property is checked even where no libFuzzer build is made.

#![forbid(unsafe_code)]

pub mod token_text;
