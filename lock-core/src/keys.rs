//! Companion keys: the one place that builds key names besides the user's own.
//!
//! Beside a lock key the library keeps a fence counter and a release-signal list, and beside a resource
//! written with `fenced_set` a fence mark. Three rules shape their names:
//!
//! 1. **Each starts with the key it accompanies**, so an ACL key pattern that covers the key (`~locks:*`
//!    for `locks:x`) covers its companions too.
//! 2. **Each hashes to the key's Redis Cluster slot**, since a script may only touch keys in one slot.
//!    Redis hashes the content of the first `{...}` when it is non-empty (the hash tag), else the whole
//!    name, with CRC16-XMODEM modulo 16384.
//! 3. **No two (key, kind) pairs share a name**: the name `K:redlease:<kind>[:<suffix>]` can be read back
//!    to exactly one key `K` and kind (see [`companion_key`]), so `X` and `{X}` never share a counter.
//!
//! Where a suffix must steer the name into the key's slot, it is six decimal digits taken from a table
//! built once per process ([`DIGITS_FOR_SLOT`]): the derivation is one pass of CRC16 over the key and a
//! table look-up, the same cost for every key and every call, with no search.

use std::sync::LazyLock;

use crc16::{State, XMODEM};

use crate::error::{LockError, Result};

/// The number of hash slots of a Redis Cluster.
const SLOTS: u16 = 16384;

/// How many six-digit numbers the table is built from: all of them. Enough by proof, see
/// `tests::six_digit_suffixes_reach_every_slot`.
const SUFFIX_SEARCH: u32 = 1_000_000;

/// An entry of [`DIGITS_FOR_SLOT`] that no number reached (none, by the proof in the tests).
const UNREACHED: u32 = u32::MAX;

/// For every slot `s`, the smallest number `n` below 1 000 000 whose six digits alone (leading zeros
/// kept) hash to `s`. Built once, on first use, by scanning the numbers in order.
///
/// Why one table serves every prefix: CRC16-XMODEM has a zero initial value and no final XOR, so it is
/// linear over GF(2) for messages of equal length, and leading zero bytes do not change it. For a prefix
/// `p` and six digits `d`, `crc(p ‖ d) = crc(p ‖ 000000) ^ crc(d)` (zero bytes, not digits), and the slot
/// is the CRC's low 14 bits. So `p ‖ d` lands in slot `s` exactly when `d` alone lands in
/// `s ^ slot(p ‖ 000000)`, and the smallest such `d` is what scanning `p ‖ 000000`, `p ‖ 000001`, ... in
/// order would find first: the look-up gives the same name as that search, at no cost per key.
static DIGITS_FOR_SLOT: LazyLock<Box<[u32]>> = LazyLock::new(|| {
    let mut table = vec![UNREACHED; usize::from(SLOTS)].into_boxed_slice();
    let mut unreached = usize::from(SLOTS);
    for n in 0..SUFFIX_SEARCH {
        let entry = &mut table[usize::from(crc(&[&six_digits(n)]) % SLOTS)];
        if *entry == UNREACHED {
            *entry = n;
            unreached -= 1;
            if unreached == 0 {
                break;
            }
        }
    }
    table
});

/// CRC16-XMODEM of the concatenation of `parts`.
fn crc(parts: &[&[u8]]) -> u16 {
    let mut state = State::<XMODEM>::new();
    for part in parts {
        state.update(part);
    }
    state.get()
}

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
    crc(&[hashed.as_bytes()]) % SLOTS
}

/// How Redis hashes a key, which decides how its companions are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// A non-empty hash tag: anything appended keeps it.
    Tagged,
    /// No `{` at all: the first `{` of a name is the one we append.
    NoOpenBrace,
    /// A `{` at byte `open` with no `}` after it: a `}` we append closes a tag starting inside the key.
    Unclosed { open: usize },
    /// The first `{` is followed at once by `}`: an empty tag, so Redis hashes the whole name, and hashes
    /// any name that extends this key whole as well.
    EmptyTag,
}

fn shape(key: &str) -> Shape {
    let Some(open) = key.find('{') else {
        return Shape::NoOpenBrace;
    };
    match key[open + 1..].find('}') {
        None => Shape::Unclosed { open },
        Some(0) => Shape::EmptyTag,
        Some(_) => Shape::Tagged,
    }
}

/// A companion of `key` of the given `kind` (`fence`, `released`, `fence-mark`: no `:`, no braces),
/// starting with `key` and in `key`'s hash slot. Deterministic: every process derives the same name.
///
/// - A key with a hash tag keeps it: `{user:1}:lock` → `{user:1}:lock:redlease:fence`.
/// - A key with no `{` (`locks:x`, `a}b`) gets a tag of six digits `DDDDDD` that hash like the key:
///   `locks:x` → `locks:x:redlease:fence:{DDDDDD}`.
/// - A key whose first `{` is never closed (`a{b`) gets six digits and a `}` that closes a tag starting
///   inside the key (`b:redlease:fence:DDDDDD`), the digits chosen so that this tag hashes like the key:
///   `a{b` → `a{b:redlease:fence:DDDDDD}`.
/// - A key whose first `{` is followed at once by `}` (`a{}b`, `{}{x}`) has an empty tag, so Redis hashes
///   it whole, and hashes whole any name that extends it: it gets six digits that make the whole name
///   hash like the key, `a{}b` → `a{}b:redlease:fence:DDDDDD`.
///
/// `DDDDDD` is six digits from [`DIGITS_FOR_SLOT`]. Distinct (key, kind) pairs never share a name: the
/// four forms are told apart by the name alone (an empty first tag; ending in `:{DDDDDD}`; ending in
/// `:DDDDDD}`; ending in the kind), and stripping the form's suffix, the kind after the last `:`, and
/// `:redlease:` gives back the key. (A user key may of course itself be named like a companion: names
/// containing `:redlease:` are the library's.)
///
/// The `Err` (`InvalidArgument` naming `argument`) is unreachable: the unit tests prove that the table
/// covers every slot.
pub(crate) fn companion_key(argument: &'static str, key: &str, kind: &str) -> Result<String> {
    debug_assert!(!kind.contains([':', '{', '}']), "{kind}");
    match shape(key) {
        Shape::Tagged => Ok(format!("{key}:redlease:{kind}")),
        Shape::NoOpenBrace => {
            // The name's hash tag is the digits alone.
            let digits = digits_for(argument, key, &[], hash_slot(key))?;
            Ok(format!("{key}:redlease:{kind}:{{{digits}}}"))
        }
        Shape::Unclosed { open } => {
            // The name's hash tag runs from after the key's first `{` to the `}` appended last.
            let tag_start = &key.as_bytes()[open + 1..];
            let digits = digits_for(
                argument,
                key,
                &[tag_start, b":redlease:", kind.as_bytes(), b":"],
                hash_slot(key),
            )?;
            Ok(format!("{key}:redlease:{kind}:{digits}}}"))
        }
        Shape::EmptyTag => {
            // The whole name is hashed.
            let digits = digits_for(
                argument,
                key,
                &[key.as_bytes(), b":redlease:", kind.as_bytes(), b":"],
                hash_slot(key),
            )?;
            Ok(format!("{key}:redlease:{kind}:{digits}"))
        }
    }
}

/// The six digits `d` (as text) that make `hashed_prefix ‖ d` hash to `slot`: the smallest such number,
/// by one table look-up (see [`DIGITS_FOR_SLOT`]).
fn digits_for(
    argument: &'static str,
    key: &str,
    hashed_prefix: &[&[u8]],
    slot: u16,
) -> Result<String> {
    let mut state = State::<XMODEM>::new();
    for part in hashed_prefix {
        state.update(part);
    }
    state.update(&[0; 6]);
    let wanted = (state.get() ^ slot) % SLOTS;
    match DIGITS_FOR_SLOT[usize::from(wanted)] {
        UNREACHED => Err(LockError::invalid(
            argument,
            format!("no companion key in the cluster slot of {key:?} was found"),
        )),
        n => Ok(six_digits(n).iter().map(|&d| char::from(d)).collect()),
    }
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
    use std::collections::{HashMap, HashSet};
    use std::time::{Duration, Instant};

    use super::*;

    /// The companions of `key`, each with its kind.
    fn companions(key: &str) -> [(&'static str, String); 3] {
        [
            ("fence", fence_counter(key).unwrap()),
            ("released", release_signal(key).unwrap()),
            ("fence-mark", fence_mark(key).unwrap()),
        ]
    }

    /// Reads a companion name back to its key and kind, from the name alone, as `companion_key`'s docs
    /// argue. Since it inverts every derivation, no two (key, kind) pairs can share a name.
    fn decompose(name: &str) -> Option<(&str, &str)> {
        fn strip_digits(text: &str) -> Option<&str> {
            let at = text.len().checked_sub(6)?;
            let (rest, digits) = text.split_at_checked(at)?;
            digits.bytes().all(|b| b.is_ascii_digit()).then_some(rest)
        }
        let body = if shape(name) == Shape::EmptyTag {
            strip_digits(name)?.strip_suffix(':')?
        } else if let Some(closed) = name.strip_suffix('}') {
            let before_digits = strip_digits(closed)?;
            match before_digits.strip_suffix(":{") {
                Some(body) => body,
                None => before_digits.strip_suffix(':')?,
            }
        } else {
            name
        };
        let (rest, kind) = body.rsplit_once(':')?;
        Some((rest.strip_suffix(":redlease")?, kind))
    }

    /// The reference the table stands in for: the first six-digit number that lands `prefix ‖ digits` in
    /// `slot`, by trying them in order.
    fn search(prefix: &str, slot: u16) -> Option<String> {
        (0..SUFFIX_SEARCH)
            .map(|n| format!("{n:06}"))
            .find(|digits| crc(&[prefix.as_bytes(), digits.as_bytes()]) % SLOTS == slot)
    }

    /// A deterministic mix of keys rich in braces and colons: every string over `{`, `}`, `:`, `a` up to
    /// six characters, random concatenations of pieces that look like companion names, and the
    /// companions of some of these used as keys in turn.
    fn generated_keys() -> Vec<String> {
        let mut keys: HashSet<String> = HashSet::new();
        let alphabet = ['{', '}', ':', 'a'];
        let mut layer = vec![String::new()];
        for _ in 0..=6 {
            keys.extend(layer.iter().cloned());
            layer = layer
                .iter()
                .flat_map(|prefix| alphabet.iter().map(move |c| format!("{prefix}{c}")))
                .collect();
        }
        let pieces = [
            "{",
            "}",
            ":",
            "{}",
            "}{",
            "a",
            "X",
            "ü",
            " ",
            "redlease",
            ":redlease:",
            "fence",
            "released",
            "fence-mark",
            "0",
            "123456",
            ":{",
            "}:",
            ":{000000}",
            "000000}",
        ];
        let mut rng = fastrand::Rng::with_seed(0x5eed_cafe);
        for _ in 0..20_000 {
            let len = rng.usize(1..=8);
            keys.insert(
                (0..len)
                    .map(|_| pieces[rng.usize(..pieces.len())])
                    .collect(),
            );
        }
        let sample: Vec<String> = keys.iter().step_by(7).cloned().collect();
        for key in sample {
            for (_, companion) in companions(&key) {
                keys.insert(companion);
            }
        }
        let mut keys: Vec<String> = keys.into_iter().collect();
        keys.sort();
        keys
    }

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
    fn shapes_follow_the_redis_rule() {
        assert_eq!(shape("{user:1}:lock"), Shape::Tagged);
        assert_eq!(shape("a}b{c}"), Shape::Tagged);
        assert_eq!(shape("locks:x"), Shape::NoOpenBrace);
        assert_eq!(shape("a}b"), Shape::NoOpenBrace);
        assert_eq!(shape(""), Shape::NoOpenBrace);
        assert_eq!(shape("a{b"), Shape::Unclosed { open: 1 });
        assert_eq!(shape("}a{b{c"), Shape::Unclosed { open: 2 });
        assert_eq!(shape("a{}b"), Shape::EmptyTag);
        assert_eq!(shape("{}{x}"), Shape::EmptyTag);
        assert_eq!(shape("{}"), Shape::EmptyTag);
    }

    /// The keys of the bug report: on the old layout `X` and `{X}` shared `{X}:redlease:*`.
    #[test]
    fn look_alike_keys_get_their_own_companions() {
        let keys = [
            "X",
            "{X}",
            "{X}Y",
            "a{b",
            "a{}b",
            "{X}:redlease:fence",
            "a}b",
        ];
        let mut seen = HashMap::new();
        for key in keys {
            for (kind, name) in companions(key) {
                if let Some(other) = seen.insert(name.clone(), (key, kind)) {
                    panic!("{key} ({kind}) and {other:?} share {name}");
                }
            }
        }
        for (name, (key, _)) in &seen {
            assert!(name.starts_with(key), "{name} starts with {key}");
            assert_eq!(hash_slot(name), hash_slot(key), "{key} → {name}");
        }

        let counter = fence_counter("X").unwrap();
        let digits = counter
            .strip_prefix("X:redlease:fence:{")
            .and_then(|rest| rest.strip_suffix('}'))
            .expect("X:redlease:fence:{DDDDDD}");
        assert_eq!(hash_tag(&counter), Some(digits));
        assert_eq!(fence_counter("{X}").unwrap(), "{X}:redlease:fence");
        assert_eq!(fence_counter("{X}Y").unwrap(), "{X}Y:redlease:fence");
        assert_eq!(
            fence_mark("{user:1}:res").unwrap(),
            "{user:1}:res:redlease:fence-mark"
        );
        let counter = fence_counter("a{b").unwrap();
        let digits = counter
            .strip_prefix("a{b:redlease:fence:")
            .and_then(|rest| rest.strip_suffix('}'))
            .expect("a{b:redlease:fence:DDDDDD}");
        assert_eq!(
            hash_tag(&counter),
            Some(format!("b:redlease:fence:{digits}").as_str())
        );
        let counter = fence_counter("a{}b").unwrap();
        let digits = counter
            .strip_prefix("a{}b:redlease:fence:")
            .expect("a{}b:redlease:fence:DDDDDD");
        assert_eq!(hash_tag(&counter), None, "hashed whole, as the key");
        assert_eq!(digits.len(), 6);
        assert!(digits.bytes().all(|b| b.is_ascii_digit()), "{digits}");
    }

    /// An ACL pattern such as `~locks:*` covers a key's companions: every companion starts with its key,
    /// and still hashes to the key's slot.
    #[test]
    fn companions_start_with_their_key_in_its_slot() {
        let keys = generated_keys();
        assert!(keys.len() > 25_000, "{}", keys.len());
        for key in &keys {
            for (kind, name) in companions(key) {
                assert!(name.starts_with(key.as_str()), "{kind} {name} of {key}");
                assert!(name.len() > key.len(), "{kind} {name} of {key}");
                assert_eq!(hash_slot(&name), hash_slot(key), "{kind} {name} of {key}");
            }
        }
        // Every shape is represented.
        for wanted in [
            Shape::Tagged,
            Shape::NoOpenBrace,
            Shape::Unclosed { open: 0 },
            Shape::EmptyTag,
        ] {
            assert!(
                keys.iter().any(|k| match (shape(k), wanted) {
                    (Shape::Unclosed { .. }, Shape::Unclosed { .. }) => true,
                    (found, wanted) => found == wanted,
                }),
                "{wanted:?}"
            );
        }
    }

    /// No two (key, kind) pairs share a companion, across the three kinds and across keys that are
    /// themselves companions of other keys; and each name reads back to exactly its key and kind.
    #[test]
    fn companions_are_injective() {
        let keys = generated_keys();
        let mut owner: HashMap<String, (&str, &str)> = HashMap::new();
        for key in &keys {
            for (kind, name) in companions(key) {
                if let Some(other) = owner.insert(name.clone(), (key, kind)) {
                    panic!("{key:?} ({kind}) and {other:?} share {name:?}");
                }
            }
        }
        assert_eq!(owner.len(), 3 * keys.len());
        for (name, &(key, kind)) in &owner {
            assert_eq!(decompose(name), Some((key, kind)), "{name}");
        }
    }

    /// The table gives exactly what searching the six-digit numbers in order would find, so names are
    /// the same in every process and every version (the `a{}b` form is unchanged from earlier versions,
    /// which searched).
    #[test]
    fn the_table_finds_what_the_search_finds() {
        let keys = [
            "jobs", "a}b", "", "locks:x", "a{b", "}a{b{c", "{", "a{}b", "{}", "{}{x}", "ü{ñ",
        ];
        for key in keys
            .iter()
            .map(|k| k.to_string())
            .chain((0..40).map(|i| format!("k{i}{{}}")))
        {
            let slot = hash_slot(&key);
            for (kind, name) in companions(&key) {
                let (hashed_prefix, digits) = match shape(&key) {
                    Shape::Tagged => continue,
                    Shape::NoOpenBrace => (String::new(), &name[name.len() - 7..name.len() - 1]),
                    Shape::Unclosed { open } => (
                        format!("{}:redlease:{kind}:", &key[open + 1..]),
                        &name[name.len() - 7..name.len() - 1],
                    ),
                    Shape::EmptyTag => (format!("{key}:redlease:{kind}:"), &name[name.len() - 6..]),
                };
                assert_eq!(
                    search(&hashed_prefix, slot).as_deref(),
                    Some(digits),
                    "{name}"
                );
            }
        }
        // A name derived by the previous version, which searched: it must not move.
        let old = search("a{}b:redlease:fence:", hash_slot("a{}b")).unwrap();
        assert_eq!(
            fence_counter("a{}b").unwrap(),
            format!("a{{}}b:redlease:fence:{old}")
        );
    }

    /// Why the table covers every slot, so that every key has companions.
    ///
    /// CRC16-XMODEM has a zero initial value and no final XOR, so it is linear over GF(2) for messages of
    /// equal length, and leading zero bytes do not change it. For a prefix `p` and a six-byte suffix `s`:
    /// `crc(p ‖ s) = crc(p ‖ 000000) ^ crc(s)` (zero bytes, not digits). So the slots reachable from any
    /// prefix are the slots of the six-digit strings, each XORed with one constant: those strings alone
    /// reach all 16384 slots, so every prefix does. (Five digits do not: they reach only 16128 slots.)
    #[test]
    fn six_digit_suffixes_reach_every_slot() {
        let reached: HashSet<u16> = (0..SUFFIX_SEARCH)
            .map(|n| crc(&[&six_digits(n)]) % SLOTS)
            .collect();
        assert_eq!(reached.len(), usize::from(SLOTS));
        assert!(DIGITS_FOR_SLOT.iter().all(|&n| n < SUFFIX_SEARCH));
        for (slot, &n) in DIGITS_FOR_SLOT.iter().enumerate() {
            assert_eq!(usize::from(crc(&[&six_digits(n)]) % SLOTS), slot);
        }

        // The linearity the argument rests on, checked on a few prefixes.
        for prefix in ["a{}b:redlease:fence:", "x", "", "}}}}:redlease:fence-mark:"] {
            let zeros = crc(&[prefix.as_bytes(), &[0; 6]]);
            for n in [0, 1, 4242, 999_999] {
                let digits = format!("{n:06}");
                assert_eq!(digits.as_bytes(), six_digits(n));
                let whole = crc(&[prefix.as_bytes(), digits.as_bytes()]);
                assert_eq!(whole, zeros ^ crc(&[digits.as_bytes()]));
            }
        }
    }

    /// A name costs a pass over the key and a look-up, never a search: 300 000 names of the shapes that
    /// need digits, where searching would try about 16 384 numbers for each.
    #[test]
    fn names_cost_no_search() {
        let _ = fence_counter("warm-up: builds the table");
        // About half a second unoptimised; searching would take minutes.
        let bound = Duration::from_secs(15);
        let started = Instant::now();
        for i in 0..100_000 {
            for key in [
                format!("job:{i}"),
                format!("job{{{i}"),
                format!("job{{}}{i}"),
            ] {
                fence_counter(&key).unwrap();
            }
            let elapsed = started.elapsed();
            assert!(elapsed < bound, "{} names took {elapsed:?}", 3 * i);
        }
    }
}
