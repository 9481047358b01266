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

// Fair lock (`RedisLock::fair`): the queue of waiters and their heartbeats.

/// The waiters of the fair lock `key`: a sorted set of tokens scored by their ticket (arrival order).
pub(crate) fn fair_queue(key: &str) -> Result<String> {
    companion_key("key", key, "fair-queue")
}

/// The heartbeats of the fair lock `key`'s waiters: a sorted set of tokens scored by when each
/// waiter's place expires (server time, Unix milliseconds).
pub(crate) fn fair_beats(key: &str) -> Result<String> {
    companion_key("key", key, "fair-beats")
}

// Read-write locks.

/// The sorted set of the writers waiting for the read-write lock `key`, each intent scored by its
/// expiry on the server's clock: while it holds a live intent, no new reader enters.
pub(crate) fn rwlock_writers(key: &str) -> Result<String> {
    companion_key("key", key, "writers")
}

// What a new user hit: `fenced_set` on the lock's own keys.

/// Whether `resource` is the lock `key` itself or one of the companion keys the library keeps for it
/// (release signal, fence counter and mark, fair queue and heartbeats, writers' intents): a fenced
/// write there would overwrite the lock's own state.
pub(crate) fn is_lock_state(key: &str, resource: &str) -> bool {
    if resource == key {
        return true;
    }
    // A resource that cannot start with `key` cannot be one of its companions (they all do).
    if !resource.starts_with(key) {
        return false;
    }
    let companions: [fn(&str) -> Result<String>; 6] = [
        release_signal,
        fence_counter,
        fence_mark,
        fair_queue,
        fair_beats,
        rwlock_writers,
    ];
    companions
        .iter()
        .any(|companion| companion(key).is_ok_and(|name| name == resource))
}

#[cfg(test)]
mod tests;
