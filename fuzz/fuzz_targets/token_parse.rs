//! libFuzzer target over token parsing, verification, authorization and the grant, window and rate syntaxes. The
//! property it asserts is a plain function, `toka_fuzz::token_text::check` (`fuzz/src/token_text.rs`), which this
//! crate's tests also run on the seed corpus and random mutations (`fuzz/tests/token_text.rs`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| toka_fuzz::token_text::check(data));
