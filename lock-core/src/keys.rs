//! Companion keys: the one place that builds key names besides the user's own.
//!
//! A script may only touch keys in one Redis Cluster hash slot, so every companion key (the fence counter
//! beside a lock, the fence mark beside a fenced resource) must hash exactly like the key it accompanies.
//! Redis hashes the content of the first `{...}` when it is non-empty (the hash tag), else the whole key,
//! with CRC16-XMODEM modulo 16384.

use crc16::{State, XMODEM};

use crate::error::{LockError, Result};

/// The number of hash slots of a Redis Cluster.
const SLOTS: u16 = 16384;

/// How many numbered suffixes [`companion_key`] tries for a key it can neither extend nor wrap: every
/// six-digit decimal number. Enough by proof, see `tests::six_digit_suffixes_reach_every_slot`.
const SUFFIX_SEARCH: u32 = 1_000_000;

/// The hash tag of `key`: the text between its first `{` and the first `}` after it, if non-empty.
pub(crate) fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let rest = &key[open + 1..];
    let close = rest.find('}')?;
    (close > 0).then(|| &rest[..close])
}

/// The Redis Cluster hash slot of `key`, as `CLUSTER KEYSLOT` computes it.
pub(crate) fn hash_slot(key: &str) -> u16 {
    let hashed = hash_tag(key).unwrap_or(key);
    State::<XMODEM>::calculate(hashed.as_bytes()) % SLOTS
}

/// A companion of `key` named by `suffix`, in `key`'s hash slot. Deterministic: every process derives the
/// same name.
///
/// - A key with a hash tag keeps it: `{user:1}:lock` → `{user:1}:lock:redlease:fence`.
/// - A key without `}` is wrapped, making the whole key the tag: `jobs` → `{jobs}:redlease:fence`.
/// - A key with a `}` but no hash tag (`a{}b`, `a}b`, `a{}{b}`) cannot be wrapped, since the tag would end
///   at its own `}`. Redis hashes it whole, and so hashes it whole with anything appended that has no
///   braces. So it gets the suffix `:redlease:{suffix}:NNNNNN` with the first six-digit number `NNNNNN`
///   that makes the whole name land in the key's slot: `a{}b` → `a{}b:redlease:fence:012345`, say.
///
/// The `Err` (`InvalidArgument` naming `argument`) is unreachable: the unit tests prove that some
/// six-digit number fits every key.
pub(crate) fn companion_key(argument: &'static str, key: &str, suffix: &str) -> Result<String> {
    if hash_tag(key).is_some() {
        return Ok(format!("{key}:redlease:{suffix}"));
    }
    if !key.contains('}') {
        return Ok(format!("{{{key}}}:redlease:{suffix}"));
    }
    let base = format!("{key}:redlease:{suffix}:");
    let slot = hash_slot(key);
    let mut prefix = State::<XMODEM>::new();
    prefix.update(base.as_bytes());
    (0..SUFFIX_SEARCH)
        .map(six_digits)
        .find(|digits| {
            let mut state = prefix;
            state.update(digits);
            state.get() % SLOTS == slot
        })
        .map(|digits| base + std::str::from_utf8(&digits).unwrap_or_default())
        .ok_or_else(|| {
            LockError::invalid(
                argument,
                format!("no companion key in the cluster slot of {key:?} was found"),
            )
        })
}

/// `n` (below 1 000 000) as six ASCII digits with leading zeros, without allocating.
fn six_digits(n: u32) -> [u8; 6] {
    let mut digits = [b'0'; 6];
    let mut rest = n;
    for digit in digits.iter_mut().rev() {
        // `rest % 10` is below 10, so the cast is exact.
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    digits
}

/// The list a release of the lock `key` pushes to, waking one process blocked on it (`BLPOP`).
pub(crate) fn release_signal(key: &str) -> Result<String> {
    companion_key("key", key, "released")
}

/// The fence counter of the lock `key`. Never deleted by the library: one small key per lock name.
pub(crate) fn fence_counter(key: &str) -> Result<String> {
    companion_key("key", key, "fence")
}

/// The highest fence that ever wrote the fenced resource `resource`.
pub(crate) fn fence_mark(resource: &str) -> Result<String> {
    companion_key("resource", resource, "fence-mark")
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Instant;

    use super::*;

    #[test]
    fn hash_tags_follow_the_redis_rule() {
        assert_eq!(hash_tag("{user1000}.following"), Some("user1000"));
        assert_eq!(
            hash_tag("foo{}{bar}"),
            None,
            "an empty first tag means the whole key"
        );
        assert_eq!(hash_tag("foo{{bar}}zap"), Some("{bar"));
        assert_eq!(hash_tag("foo{bar}{zap}"), Some("bar"));
        assert_eq!(hash_tag("a}b{c}"), Some("c"));
        assert_eq!(hash_tag("a{b"), None);
        assert_eq!(hash_tag("a}b"), None);
        assert_eq!(hash_tag("jobs"), None);
    }

    #[test]
    fn slots_match_known_redis_answers() {
        // Values from `CLUSTER KEYSLOT` and the cluster specification (CRC16("123456789") = 0x31C3).
        assert_eq!(hash_slot("123456789"), 0x31C3);
        assert_eq!(hash_slot("foo"), 12182);
        assert_eq!(hash_slot("8xjx7vWrfPq54mKfFD3Y1CcjjofpnAcQ"), 5458);
        assert_eq!(hash_slot("{user1000}.following"), hash_slot("user1000"));
        assert_eq!(hash_slot("foo{{bar}}zap"), hash_slot("{bar"));
    }

    #[test]
    fn companions_keep_the_slot() {
        assert_eq!(fence_counter("jobs").unwrap(), "{jobs}:redlease:fence");
        assert_eq!(
            fence_counter("{user:1}:lock").unwrap(),
            "{user:1}:lock:redlease:fence"
        );
        assert_eq!(fence_counter("a{b").unwrap(), "{a{b}:redlease:fence");
        assert_eq!(hash_tag(&fence_counter("a{b").unwrap()), Some("a{b"));
        assert_eq!(
            fence_mark("orders").unwrap(),
            "{orders}:redlease:fence-mark"
        );
        for key in [
            "a{}b", "a}b", "a{}{b}", "}{", "{}", "x}y{", "{}{}", "a{b}c}",
        ] {
            for companion in [fence_counter(key).unwrap(), fence_mark(key).unwrap()] {
                assert_eq!(hash_slot(&companion), hash_slot(key), "{key} → {companion}");
            }
        }
    }

    #[test]
    fn keys_with_stray_braces_get_a_numbered_suffix() {
        let counter = fence_counter("a{}b").unwrap();
        let digits = counter
            .strip_prefix("a{}b:redlease:fence:")
            .expect("the key, then the suffix");
        assert_eq!(digits.len(), 6);
        assert!(digits.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(hash_tag(&counter), None, "no hash tag is introduced");
        assert_eq!(counter, fence_counter("a{}b").unwrap(), "deterministic");
        assert_ne!(fence_mark("a{}b").unwrap(), counter);
    }

    /// Why the search in `companion_key` always succeeds, for every key.
    ///
    /// CRC16-XMODEM has a zero initial value and no final XOR, so it is linear over GF(2) for messages of
    /// equal length, and leading zero bytes do not change it. For a prefix `p` and a six-byte suffix `s`:
    /// `crc(p ‖ s) = crc(p ‖ 000000) ^ crc(s)` (zero bytes, not digits). So the slots reachable from any
    /// prefix are the slots of the six-digit strings, each XORed with one constant: if those strings alone
    /// reach all 16384 slots, then so does every prefix, and the search finds a match for every key.
    /// (Five digits do not: they reach only 16128 slots.)
    #[test]
    fn six_digit_suffixes_reach_every_slot() {
        let reached: HashSet<u16> = (0..SUFFIX_SEARCH)
            .map(|n| State::<XMODEM>::calculate(&six_digits(n)) % SLOTS)
            .collect();
        assert_eq!(reached.len(), usize::from(SLOTS));

        // The linearity the argument rests on, checked on a few prefixes.
        for prefix in ["a{}b:redlease:fence:", "x", "", "}}}}:redlease:fence-mark:"] {
            let zeros = State::<XMODEM>::calculate(format!("{prefix}\0\0\0\0\0\0").as_bytes());
            for n in [0, 1, 4242, 999_999] {
                let digits = format!("{n:06}");
                assert_eq!(digits.as_bytes(), six_digits(n));
                let whole = State::<XMODEM>::calculate(format!("{prefix}{digits}").as_bytes());
                assert_eq!(whole, zeros ^ State::<XMODEM>::calculate(digits.as_bytes()));
            }
        }
    }

    #[test]
    fn the_search_is_quick_for_many_keys() {
        let started = Instant::now();
        let mut longest = 0;
        for i in 0..500 {
            let key = format!("job}}{i}");
            let counter = fence_counter(&key).unwrap();
            assert_eq!(hash_slot(&counter), hash_slot(&key), "{key}");
            let n: u32 = counter.rsplit(':').next().unwrap().parse().unwrap();
            longest = longest.max(n);
        }
        // Each try matches with probability 1/16384: about 16384 tries per key on average.
        assert!(longest < SUFFIX_SEARCH, "{longest}");
        let elapsed = started.elapsed();
        assert!(
            elapsed.as_secs() < 20,
            "500 searches took {elapsed:?} (unoptimised build)"
        );
    }
}
