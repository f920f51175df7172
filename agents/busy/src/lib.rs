//! `busy`: a CPU-bound agent for benchmarks (fuel metering on vs off). Input `{"n": 3000000}`; runs `n` rounds of
//! an xorshift generator folded into a checksum, with no I/O, and returns `{"rounds":n,"checksum":c}`.

use serde::{Deserialize, Serialize};
use toka_sdk::{AgentError, Task};

#[derive(Deserialize)]
struct Input {
    n: u64,
}

#[derive(Serialize)]
struct Output {
    rounds: u64,
    checksum: u64,
}

fn busy(_task: &Task, input: Input) -> Result<Output, AgentError> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut sum: u64 = 0;
    for i in 0..input.n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        sum = sum.wrapping_add(x.rotate_left((i % 64) as u32));
    }
    Ok(Output { rounds: input.n, checksum: sum })
}

toka_sdk::agent!(busy);
