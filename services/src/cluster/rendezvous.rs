//! Rendezvous (highest-random-weight) hashing: which live broker owns a key.
//!
//! Every broker scores each key against each live broker and picks the highest score, so all
//! brokers that see the same live set agree on every owner with no coordination. When a
//! broker joins or leaves, only the keys it wins or held move: about `1/n` of them, the least
//! any scheme can move. The hash is XXH64 with a fixed seed, stable across processes,
//! machines and releases, because brokers of different builds must agree during an upgrade.

use std::hash::Hasher;

use twox_hash::XxHash64;

/// The score of `broker` for `key`.
fn score(broker: &str, key: &str) -> u64 {
    let mut h = XxHash64::with_seed(0x5354_5241_5441); // "STRATA"
    h.write(broker.as_bytes());
    h.write(&[0]);
    h.write(key.as_bytes());
    h.finish()
}

/// The broker (by id, from `brokers`) that owns `key`: the highest score, ties broken by the
/// larger id so the answer never depends on the order of `brokers`. `None` when there are
/// none.
pub fn owner<'a>(key: &str, brokers: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    brokers
        .into_iter()
        .max_by(|a, b| (score(a, key), *a).cmp(&(score(b, key), *b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<String> {
        (0..3000).map(|i| format!("topic/{i}")).collect()
    }

    #[test]
    fn spreads_keys_evenly() {
        let brokers = ["1", "2", "3"];
        let mut counts = [0usize; 3];
        for k in keys() {
            let o = owner(&k, brokers).unwrap();
            counts[brokers.iter().position(|b| *b == o).unwrap()] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn a_new_broker_takes_only_its_share() {
        let before = ["1", "2", "3"];
        let after = ["1", "2", "3", "4"];
        let mut moved = 0;
        for k in keys() {
            let (a, b) = (owner(&k, before).unwrap(), owner(&k, after).unwrap());
            if a != b {
                assert_eq!(b, "4", "a key moved between old brokers");
                moved += 1;
            }
        }
        assert!((500..1000).contains(&moved), "{moved}");
    }

    #[test]
    fn order_does_not_matter() {
        for k in keys() {
            assert_eq!(owner(&k, ["1", "2", "3"]), owner(&k, ["3", "1", "2"]));
        }
        assert_eq!(owner("x", []), None);
    }
}
