//! Record payloads: realistic, partly compressible, reproducible.
//!
//! Event-log records are mostly structured text (field names, enum-like values, ids) with
//! some high-entropy parts (session tokens, hashes). Each payload here is a JSON object of
//! that shape, padded to the requested size, generated from a fixed seed so every run sends
//! the same bytes. zstd shrinks them to roughly 40% — neither the best case (repeated text)
//! nor the worst (random bytes).

/// A small, fast, seeded generator (xorshift64*): reproducible payloads without a dependency.
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (0 is replaced, as xorshift needs a non-zero state).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const EVENTS: &[&str] = &[
    "page_view",
    "click",
    "add_to_cart",
    "checkout",
    "login",
    "logout",
    "search",
    "purchase",
];
const PATHS: &[&str] = &[
    "/",
    "/products",
    "/products/detail",
    "/cart",
    "/checkout",
    "/account",
    "/search",
    "/help",
];
const AGENTS: &[&str] = &[
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:127.0) Gecko/20100101 Firefox/127.0",
];
const WORDS: &[&str] = &[
    "alpha", "beta", "gamma", "delta", "order", "item", "price", "quantity", "region", "europe",
    "america", "asia", "status", "shipped", "pending", "returned", "campaign", "summer", "sale",
];

fn hex(rng: &mut Rng, len: usize) -> String {
    (0..len)
        .map(|_| char::from(b"0123456789abcdef"[rng.below(16) as usize]))
        .collect()
}

/// One payload of exactly `size` bytes (at least a minimal JSON object when `size` is tiny).
pub fn payload(rng: &mut Rng, size: usize) -> Vec<u8> {
    let mut s = format!(
        r#"{{"event":"{}","user":"user-{}","session":"{}","path":"{}","agent":"{}","amount":{}.{:02},"tags":["#,
        EVENTS[rng.below(EVENTS.len() as u64) as usize],
        rng.below(100_000),
        hex(rng, 32),
        PATHS[rng.below(PATHS.len() as u64) as usize],
        AGENTS[rng.below(AGENTS.len() as u64) as usize],
        rng.below(1000),
        rng.below(100),
    );
    while s.len() + 40 < size {
        if rng.below(3) == 0 {
            s.push_str(&format!("\"{}\",", hex(rng, 16)));
        } else {
            s.push_str(&format!(
                "\"{}\",",
                WORDS[rng.below(WORDS.len() as u64) as usize]
            ));
        }
    }
    s.push_str("\"end\"]}");
    let mut bytes = s.into_bytes();
    bytes.resize(size.max(bytes.len().min(size)), b' ');
    bytes.truncate(size.max(1));
    bytes
}

/// A pool of distinct payloads to cycle through, so generation costs nothing on the hot path.
pub fn pool(seed: u64, size: usize, count: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(seed);
    (0..count).map(|_| payload(&mut rng, size)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_have_the_size_and_are_reproducible() {
        let a = pool(7, 1024, 4);
        let b = pool(7, 1024, 4);
        assert_eq!(a, b);
        assert!(a.iter().all(|p| p.len() == 1024));
        assert_ne!(a[0], a[1]);
        assert_eq!(payload(&mut Rng::new(1), 10).len(), 10);
    }
}
