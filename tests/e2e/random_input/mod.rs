//! Seeded random requests at every service: whatever arrives, an answer in the service's own
//! dialect, never a 5xx, never a hang; a token only for a caller that proved what it had to;
//! ARM and AAD in step afterwards. The cases are the same in every run; `MISIM_RANDOM_SEED` and
//! `MISIM_RANDOM_CASES` explore others, and a failure prints the case that caused it.

mod aad;
mod arm;
mod graph;
mod imds;

use serde_json::{Value, json};

/// xorshift64*, seeded per case through splitmix64: small, and enough to pick among cases.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64, case: u64) -> Self {
        let mut z = seed ^ case.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self((z ^ (z >> 31)) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

/// The run's seed and number of cases per route family (environment, else fixed), the
/// number rounded up to a multiple of four (cases run four at a time).
pub fn settings() -> (u64, u64) {
    let number = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    (
        number("MISIM_RANDOM_SEED", 20_261_129),
        number("MISIM_RANDOM_CASES", 300).div_ceil(4) * 4,
    )
}

/// A query or form value as clients and attackers mangle it: good and bad escapes, separators
/// escaped and not, escaped non-ASCII and invalid UTF-8, now and then a long one. Only
/// characters a request target may carry appear raw (hyper refuses the others itself).
pub fn junk(rng: &mut Rng) -> String {
    // Space-separated pieces (a space itself never appears raw in a request target).
    const PIECES: &str = "a Z 0 9 - . _ ~ + %20 %2B % %Z %ZZ %FF %00 %0A %C3%A9 %E2%82%AC %F0%9F%98%80 %ED%A0%80 %C0%AF %26 %3D %22 %3C %7B / : ? @ ! $ ' ( ) * , ; =";
    let pieces: Vec<&str> = PIECES.split(' ').collect();
    let len = if rng.chance(3) {
        1_000 + rng.below(9_000)
    } else {
        rng.below(24)
    };
    (0..len).map(|_| *rng.pick(&pieces)).collect()
}

pub fn random_uuid(rng: &mut Rng) -> String {
    uuid::Uuid::from_u64_pair(rng.next(), rng.next()).to_string()
}

/// One upper-cased letter: ids and names are compared case-insensitively in places.
pub fn upper_one(rng: &mut Rng, text: &str) -> String {
    let letters: Vec<usize> = text
        .char_indices()
        .filter(|(_, c)| c.is_ascii_lowercase())
        .map(|(i, _)| i)
        .collect();
    let mut text = text.to_string();
    if !letters.is_empty() {
        let i = *rng.pick(&letters);
        text.replace_range(i..=i, &text[i..=i].to_ascii_uppercase());
    }
    text
}

pub fn escape_all(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A value where clients put a string: mostly a good one, otherwise of another type or empty.
pub fn odd_value(rng: &mut Rng, good: Value) -> Value {
    if rng.chance(85) {
        return good;
    }
    rng.pick(&[
        Value::Null,
        json!(""),
        json!(5),
        json!(true),
        json!([]),
        json!({}),
        json!("x".repeat(5_000)),
    ])
    .clone()
}

/// How many answers had each status: printed, and checked by the tests so that a generator gone
/// astray (every case refused at the door, say) fails instead of passing vacuously.
#[derive(Default)]
pub struct Statuses(std::collections::BTreeMap<u16, u64>);

impl Statuses {
    pub fn record(&mut self, status: u16) {
        *self.0.entry(status).or_default() += 1;
    }

    pub fn of(&self, status: u16) -> u64 {
        self.0.get(&status).copied().unwrap_or(0)
    }

    /// Answers below 300.
    pub fn successes(&self) -> u64 {
        self.0.range(..300).map(|(_, n)| n).sum()
    }

    pub fn print(&self, what: &str, cases: u64) {
        eprintln!("{what} by status over {cases} random cases: {:?}", self.0);
    }
}

impl std::fmt::Debug for Statuses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Runs `run(0)`, `run(1)`, … `run(cases - 1)` four at a time, as a busy app's threads ask:
/// caches, coalescing and relays see interleavings that one at a time never makes. The
/// outputs come back in case order.
pub async fn four_at_a_time<T, F: std::future::Future<Output = T>>(
    cases: u64,
    run: impl Fn(u64) -> F,
) -> Vec<T> {
    let mut outputs = Vec::new();
    for batch in 0..cases.div_ceil(4) {
        let (a, b, c, d) = tokio::join!(
            run(batch * 4),
            run(batch * 4 + 1),
            run(batch * 4 + 2),
            run(batch * 4 + 3)
        );
        outputs.extend([a, b, c, d]);
    }
    outputs
}
