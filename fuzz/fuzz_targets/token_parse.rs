//! Token parsing and inspection on arbitrary input: the text forms a hostile caller controls (a token's base64, a
//! grant, a window, a rate) and a token's raw bytes. Nothing here may panic, hang or allocate without bound; every
//! bad input must come back as an error.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use std::time::SystemTime;
use toka_host::token::keys::KeyStore;
use toka_host::token::{self, Grant, Rate, Window};

static KEYS: LazyLock<KeyStore> = LazyLock::new(|| {
    let mut keys = KeyStore::default();
    keys.init(0).expect("a fresh store takes a key");
    keys
});

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // The base64 text `run --token` and `token inspect` read.
    if let Ok(inspection) = token::inspect(&KEYS, &text, SystemTime::now()) {
        assert!(inspection.verifies != "ok" || inspection.root_key_id == Some(1));
    }
    let _ = token::parse_unverified(&text);
    // The same bytes as a serialized token.
    if let Ok(unverified) = biscuit_auth::UnverifiedBiscuit::from(data) {
        for i in 0..unverified.block_count() {
            let _ = unverified.print_block_source(i);
        }
    }
    // The flag values a caller writes.
    let _ = Grant::parse(&text);
    if let Ok(w) = Window::parse(&text) {
        assert_eq!(Window::parse(&w.to_string()).as_ref(), Ok(&w), "a window's canonical text parses back to it");
        // Any instant, including ones far outside the calendar the zone database covers.
        let at = data.iter().fold(0i64, |acc, &b| acc.wrapping_mul(257).wrapping_add(i64::from(b)));
        let _ = w.contains(at);
    }
    if let Ok(r) = Rate::parse(&text) {
        assert_eq!(Rate::parse(&r.to_string()), Ok(r), "a rate's text parses back to it");
    }
});
