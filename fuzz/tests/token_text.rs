//! The token fuzz target's property (`toka_fuzz::token_text`, see its module documentation) on every test run: on
//! the committed seed corpus (`fuzz/seeds/token_parse/`), then on random mutations of it for a few seconds (seed
//! printed; replay with `TOKA_TEST_SEED=N`). The libFuzzer build of the same function runs in `scripts/fuzz` and,
//! briefly, in CI (`scripts/test`).
//!
//! The seeds are tokens signed by the property's fixed test key; `TOKA_FUZZ_WRITE_SEEDS=1` rewrites them from
//! `token_text::seeds()` (new random block keys, same meaning).

use std::path::PathBuf;
use std::time::{Duration, Instant};
use toka_fuzz::token_text;

/// How long the random part runs.
const BUDGET: Duration = Duration::from_secs(3);

fn seed_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds").join("token_parse")
}

/// xorshift64* from `TOKA_TEST_SEED` or the clock, printed so that a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn from_env(test: &str) -> Rng {
        let seed = std::env::var("TOKA_TEST_SEED").ok().and_then(|s| s.trim().parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
        });
        eprintln!("{test}: seed {seed} (replay with TOKA_TEST_SEED={seed})");
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

/// The committed seeds, by name, and the raw serialization of each token seed (`raw-NAME`).
fn corpus() -> Vec<(String, Vec<u8>)> {
    let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(seed_dir())
        .expect("fuzz/seeds/token_parse exists")
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())
        })
        .collect();
    seeds.sort();
    let raws: Vec<(String, Vec<u8>)> =
        seeds.iter().filter_map(|(n, b)| token_text::raw(b).map(|raw| (format!("raw-{n}"), raw))).collect();
    seeds.extend(raws);
    seeds
}

/// The seeds are what the property is about: each committed token verifies under the fixed key and authorizes what
/// its key signed (so the property's refusals are not vacuous), and the property holds on every seed, committed and
/// freshly minted.
#[test]
fn token_property_holds_on_the_seed_corpus() {
    if std::env::var_os("TOKA_FUZZ_WRITE_SEEDS").is_some() {
        std::fs::create_dir_all(seed_dir()).unwrap();
        for (name, bytes) in token_text::seeds() {
            std::fs::write(seed_dir().join(name), bytes).unwrap();
        }
    }
    for (_, bytes) in token_text::seeds() {
        token_text::check(&bytes);
    }
    let corpus = corpus();
    let names: Vec<&str> = corpus.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "attenuated",
            "grant",
            "minted",
            "rate",
            "rated",
            "window",
            "window-midnight",
            "windowed",
            "raw-attenuated",
            "raw-minted",
            "raw-rated",
            "raw-windowed"
        ]
    );
    let mut verified = 0;
    for (name, bytes) in &corpus {
        token_text::check(bytes);
        let text = String::from_utf8_lossy(bytes);
        if let Ok(v) = toka_host::token::verify(&token_text::KEYS, &text, token_text::at()) {
            verified += 1;
            let allowed: &[&str] = if name == "attenuated" { &["fs:/srv/x:ro"] } else { &token_text::ALLOWED };
            for grant in allowed {
                let ok = toka_host::token::authorize(&v, &token_text::request(&[grant]), token_text::at());
                assert!(ok.is_ok(), "seed {name} does not authorize {grant}: {ok:?}");
            }
        }
    }
    assert_eq!(verified, 4, "the four token seeds verify under the fixed key");
}

/// Byte-level mutations of the seeds (bit flips, replacements with base64 and delimiter characters, cuts, splices,
/// repeats) and pure noise, for [`BUDGET`].
#[test]
fn token_property_holds_on_random_mutations() {
    let mut rng = Rng::from_env("token_property_holds_on_random_mutations");
    let seeds: Vec<Vec<u8>> = corpus().into_iter().map(|(_, b)| b).collect();
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/:;,. \n\0\xff";
    let started = Instant::now();
    let mut cases = 0u64;
    while started.elapsed() < BUDGET {
        let mut input = seeds[rng.below(seeds.len() as u64) as usize].clone();
        for _ in 0..=rng.below(4) {
            let at = rng.below(input.len() as u64 + 1) as usize;
            match rng.below(7) {
                0 if at < input.len() => input[at] ^= 1 << rng.below(8),
                1 if at < input.len() => input[at] = ALPHABET[rng.below(ALPHABET.len() as u64) as usize],
                2 => input.truncate(at),
                3 => {
                    let other = &seeds[rng.below(seeds.len() as u64) as usize];
                    let from = rng.below(other.len() as u64) as usize;
                    let take = rng.below(64) as usize + 1;
                    input.splice(at..at, other[from..].iter().copied().take(take));
                }
                4 => {
                    let chunk: Vec<u8> = input[at..].iter().copied().take(rng.below(8) as usize + 1).collect();
                    input.splice(at..at, chunk);
                }
                5 => input = (0..rng.below(512)).map(|_| rng.next_u64() as u8).collect(),
                _ => input.insert(at, ALPHABET[rng.below(ALPHABET.len() as u64) as usize]),
            }
        }
        let case = input.clone();
        if let Err(panic) = std::panic::catch_unwind(move || token_text::check(&case)) {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            panic!("case {cases}: the property fails on {:?}: {message}", String::from_utf8_lossy(&input));
        }
        cases += 1;
    }
    eprintln!("token property: {cases} random cases in {BUDGET:?}");
    assert!(cases > 100, "only {cases} cases ran in {BUDGET:?}");
}
