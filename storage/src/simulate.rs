//! Simulated object-store latency, for load tests: what the broker does when every PUT takes
//! S3-like time, measured on a machine whose local disk answers in microseconds.
//!
//! Off unless the broker is started with `--simulate-object-store-latency`. Each call sleeps
//! for a log-normal delay with the given median and 99th percentile — the shape object-store
//! latencies have (a tight body and a long tail) — before reaching the real store.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A log-normal delay with a given median and 99th percentile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Delay {
    median_ms: f64,
    sigma: f64,
}

/// z-score of the 99th percentile of a standard normal distribution.
const Z99: f64 = 2.326_347_874;

impl Delay {
    /// A delay whose median is `p50_ms` and 99th percentile `p99_ms` (≥ the median).
    pub fn new(p50_ms: f64, p99_ms: f64) -> Delay {
        let p50 = p50_ms.max(0.0);
        let sigma = if p50 > 0.0 && p99_ms > p50 {
            (p99_ms / p50).ln() / Z99
        } else {
            0.0
        };
        Delay {
            median_ms: p50,
            sigma,
        }
    }

    /// One delay, from a standard normal sample `z`.
    fn at(&self, z: f64) -> Duration {
        Duration::from_secs_f64(self.median_ms * (self.sigma * z).exp() / 1000.0)
    }
}

/// Simulated latency for PUTs and for GETs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencySim {
    /// Delay before each PUT.
    pub put: Delay,
    /// Delay before each GET.
    pub get: Delay,
}

impl FromStr for LatencySim {
    type Err = String;

    /// Parses `put=P50:P99,get=P50:P99` (milliseconds), e.g. `put=100:200,get=20:60`.
    fn from_str(s: &str) -> Result<LatencySim, String> {
        let mut sim = LatencySim {
            put: Delay::new(0.0, 0.0),
            get: Delay::new(0.0, 0.0),
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = || format!("'{part}' is not OP=P50:P99 (e.g. put=100:200,get=20:60)");
            let (op, values) = part.split_once('=').ok_or_else(bad)?;
            let (p50, p99) = values.split_once(':').ok_or_else(bad)?;
            let p50: f64 = p50.trim().parse().map_err(|_| bad())?;
            let p99: f64 = p99.trim().parse().map_err(|_| bad())?;
            if p99 < p50 {
                return Err(format!("in '{part}' the p99 is below the median"));
            }
            match op.trim() {
                "put" => sim.put = Delay::new(p50, p99),
                "get" => sim.get = Delay::new(p50, p99),
                other => return Err(format!("unknown operation '{other}': use put or get")),
            }
        }
        Ok(sim)
    }
}

static SEED: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);

/// A uniform sample in (0, 1) from a shared splitmix64 sequence.
fn uniform() -> f64 {
    let mut z = SEED.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// A standard normal sample (Box–Muller).
fn normal() -> f64 {
    let (u1, u2) = (uniform(), uniform());
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

impl Delay {
    /// A random delay from the distribution.
    pub fn sample(&self) -> Duration {
        self.at(normal())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_hits_its_percentiles() {
        let sim: LatencySim = "put=100:200,get=20:60".parse().unwrap();
        let mut samples: Vec<f64> = (0..20_000)
            .map(|_| sim.put.sample().as_secs_f64() * 1000.0)
            .collect();
        samples.sort_by(f64::total_cmp);
        let p50 = samples[samples.len() / 2];
        let p99 = samples[samples.len() * 99 / 100];
        assert!((90.0..110.0).contains(&p50), "p50 {p50}");
        assert!((175.0..225.0).contains(&p99), "p99 {p99}");
        assert!("put=1".parse::<LatencySim>().is_err());
        assert!("put=5:1".parse::<LatencySim>().is_err());
        assert!("copy=1:2".parse::<LatencySim>().is_err());
    }
}
