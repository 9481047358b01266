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
