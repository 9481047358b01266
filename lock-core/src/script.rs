//! Lua scripts as data: each defined once, with what it guarantees.
//!
//! Every script touches only the keys it is given, runs in O(1), and checks the caller's token before it
//! changes anything, so an operation by a holder that lost its lock can never affect the next holder.

mod shares;

pub use shares::{
    SEMAPHORE_ACQUIRE, SEMAPHORE_HELD, SHARE_EXPIRY, SHARE_EXTEND, SHARE_IS_OWNER, SHARE_RELEASE,
    SHARE_RENEW,
};
#[allow(unused_imports)]
pub(crate) use shares::{expire_with_last, issue_fence, now_ms};

// Read-write locks.
mod rwlock;

pub use rwlock::{RW_DOWNGRADE, RW_LEAVE, RW_READ, RW_WRITE};

// Inspection (`inspect()` on every primitive): read-only scripts.
mod inspect;

pub use inspect::{LOCK_INSPECT, RW_INSPECT, SEMAPHORE_INSPECT};

use std::borrow::Cow;
use std::fmt;
use std::sync::LazyLock;

/// A Lua script with its SHA1, computed once, so backends can run it by `EVALSHA`.
#[derive(Clone, PartialEq, Eq)]
pub struct Script {
    name: &'static str,
    source: Cow<'static, str>,
    sha1: String,
}

impl Script {
    /// A script named `name` (for logs and errors) with the given Lua `source`.
    pub fn new(name: &'static str, source: impl Into<Cow<'static, str>>) -> Self {
        let source = source.into();
        let sha1 = sha1_smol::Sha1::from(source.as_bytes())
            .digest()
            .to_string();
        Self { name, source, sha1 }
    }

    /// A short name saying what the script does, such as `"release"`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The Lua source, for `EVAL` and `SCRIPT LOAD`.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The lowercase hex SHA1 of the source, for `EVALSHA`.
    pub fn sha1(&self) -> &str {
        &self.sha1
    }
}

impl fmt::Debug for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Script")
            .field("name", &self.name)
            .field("sha1", &self.sha1)
            .finish_non_exhaustive()
    }
}

/// Deletes `KEYS[1]` only if it holds the token `ARGV[1]`. Returns 1 when deleted, 0 when the key holds
/// another token, -1 when there is no key (so that a caller can tell "someone else's" from "gone", which
/// may be its own earlier, re-sent release).
///
/// Guarantees a holder never releases a lock that expired and was taken by someone else.
pub static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "release",
        r#"local holder = redis.call('get', KEYS[1])
if holder == ARGV[1] then
  return redis.call('del', KEYS[1])
end
if holder then
  return 0
end
return -1"#,
    )
});

/// Like [`RELEASE`] (same replies), and on success also wakes one waiter in another process: pushes to
/// the signal list `KEYS[2]` (if it holds no wake-up already) for a client blocked on it with `BLPOP`. The
/// list lives `ARGV[2]` milliseconds, so a wake-up nobody took (or that arrived just before its waiter
/// started blocking) costs at most one extra attempt and never piles up.
pub static RELEASE_AND_SIGNAL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "release_and_signal",
        r#"local holder = redis.call('get', KEYS[1])
if holder == ARGV[1] then
  redis.call('del', KEYS[1])
  if redis.call('exists', KEYS[2]) == 0 then
    redis.call('lpush', KEYS[2], '1')
    redis.call('pexpire', KEYS[2], ARGV[2])
  end
  return 1
end
if holder then
  return 0
end
return -1"#,
    )
});

/// Moves the expiry of `KEYS[1]` to the absolute time `ARGV[2]` (Unix milliseconds, server clock) if
/// that is later than its expiry now, only if it holds the token `ARGV[1]` with a positive TTL. Returns
/// `{pttl, pexpiretime}` after it when the token matched, 0 otherwise.
///
/// Absolute, so a re-sent request sets the same expiry instead of adding twice; never shortens, so a
/// late or re-ordered reply can never make a guard believe in more time than Redis gives; never
/// re-creates an expired or taken-over lock, which would hide a window where exclusion was broken.
pub static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "extend",
        r#"if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('pexpireat', KEYS[1], ARGV[2], 'GT')
  local pttl = redis.call('pttl', KEYS[1])
  if pttl > 0 then
    return {pttl, redis.call('pexpiretime', KEYS[1])}
  end
end
return 0"#,
    )
});

/// Sets the TTL of `KEYS[1]` to `ARGV[2]` milliseconds unless it already lives longer, only if it holds
/// the token `ARGV[1]` with a positive TTL. Returns `{pttl, pexpiretime}` after it when the token
/// matched, 0 otherwise.
///
/// Renewing in a loop never grows the TTL beyond `ARGV[2]`; never shortening means every write of a
/// guard only moves the expiry later, so the guard's validity, the latest lower bound any confirmed
/// write gave, never exceeds the key's real expiry, whatever order replies arrive in. Like [`EXTEND`],
/// it never re-creates a lost lock.
///
/// Four commands as Redis counts them (`GET`, `PEXPIRE .. GT`, `PTTL`, `PEXPIRETIME`): no `PTTL` before
/// the write is needed, because `GT` leaves a key without a TTL alone (Redis takes its TTL as infinite)
/// and the `PTTL` after it then answers -1, which is not ours.
pub static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "renew",
        r#"if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('pexpire', KEYS[1], ARGV[2], 'GT')
  local pttl = redis.call('pttl', KEYS[1])
  if pttl > 0 then
    return {pttl, redis.call('pexpiretime', KEYS[1])}
  end
end
return 0"#,
    )
});

/// Returns `{pttl, pexpiretime}` of `KEYS[1]` if it holds the token `ARGV[1]` with a positive TTL, 0
/// otherwise: the base an [`EXTEND`] adds to, for a guard that has not written since it acquired.
pub static EXPIRY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "expiry",
        r#"if redis.call('get', KEYS[1]) == ARGV[1] and redis.call('pttl', KEYS[1]) > 0 then
  return {redis.call('pttl', KEYS[1]), redis.call('pexpiretime', KEYS[1])}
end
return 0"#,
    )
});

/// Returns 1 if `KEYS[1]` holds the token `ARGV[1]`, 0 otherwise.
pub static IS_OWNER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "is_owner",
        r#"if redis.call('get', KEYS[1]) == ARGV[1] then
  return 1
end
return 0"#,
    )
});

/// Acquires `KEYS[1]` for the token `ARGV[1]` with a TTL of `ARGV[2]` milliseconds, like
/// `SET key token NX PX ttl`: the acquisition of a lock that waits for replicas (a script, so that it can
/// be followed by `WAIT` on the same connection). Returns 1 when acquired (also when the key already holds
/// our token: a re-sent request), 0 when someone else holds it.
///
/// A re-sent request resets the TTL, so that every acquisition writes: `WAIT` then covers the original
/// write too, even when the client re-sent the script over a new connection.
pub static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "acquire",
        r#"local holder = redis.call('get', KEYS[1])
if holder == ARGV[1] then
  redis.call('pexpire', KEYS[1], ARGV[2])
  return 1
end
if holder then
  return 0
end
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1"#,
    )
});

/// Acquires `KEYS[1]` for the token `ARGV[1]` with a TTL of `ARGV[2]` milliseconds and issues a fence
/// from the counter `KEYS[2]`, atomically. Returns `{1, fence, now}` when acquired (also when the key
/// already holds our token: a re-sent request, which resets the TTL so that, as with [`ACQUIRE`], every
/// acquisition writes, and answers the fence issued then), `{0, pttl, now}` when someone else holds it;
/// `now` is the server's clock (`TIME`) in microseconds, which [`Redlock`](crate::Redlock) compares
/// across masters.
///
/// Every fence is `max(counter + 1, now)`, and becomes the counter. So fences strictly increase while
/// the counter survives, and when the counter went back or vanished (a failover to a replica that missed
/// the last increments, a restart that lost the data), the clock overtakes every fence issued before,
/// provided the server's clock did not go back by more than the time since those fences were issued and
/// fewer than a million fences per second were issued for the key (so the counter never ran ahead of the
/// clock). The counter is never deleted. Microseconds since 1970 (about 2^51 today) are exact in Lua's
/// doubles, and stored with `%.0f` so that they never turn into exponent notation.
pub static FENCED_ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "fenced_acquire",
        r#"local t = redis.call('time')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local holder = redis.call('get', KEYS[1])
if holder == ARGV[1] then
  redis.call('pexpire', KEYS[1], ARGV[2])
  return {1, tonumber(redis.call('get', KEYS[2])), now}
end
if holder then
  return {0, redis.call('pttl', KEYS[1]), now}
end
local fence = tonumber(redis.call('get', KEYS[2]) or '0') + 1
if fence < now then
  fence = now
end
redis.call('set', KEYS[2], string.format('%.0f', fence))
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, fence, now}"#,
    )
});

/// Raises the fence counter `KEYS[2]` to at least `ARGV[2]`, only while the lock `KEYS[1]` holds the
/// token `ARGV[1]`. Returns 1 when the lock held the token (the counter is now at least `ARGV[2]`), 0
/// otherwise (nothing changed).
///
/// Used by [`Redlock`](crate::Redlock) fencing: after acquiring on a majority of masters, their
/// counters are raised to the largest fence any of them issued, so that every later majority includes a
/// master whose counter is already past it. A counter never decreases.
pub static FENCE_RAISE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "fence_raise",
        r#"if redis.call('get', KEYS[1]) == ARGV[1] then
  local current = tonumber(redis.call('get', KEYS[2]) or '0')
  if current < tonumber(ARGV[2]) then
    redis.call('set', KEYS[2], ARGV[2])
  end
  return 1
end
return 0"#,
    )
});

/// Sets the resource `KEYS[1]` to `ARGV[1]` for the holder with the fence `ARGV[2]` and the token
/// `ARGV[3]`, and records both in the mark `KEYS[2]` (as `"<fence>:<token>"`), atomically. Returns 1
/// when written, 0 when refused.
///
/// A write is accepted when its fence is greater than the mark's, or equal to it **and** from the same
/// holder (the same token: a holder writing again). An equal fence from another holder is refused: a
/// fence can only repeat if the assumptions of [`FENCED_ACQUIRE`] were broken, and then the holder that
/// wrote first keeps the resource. A mark written by an older version (a bare fence, without a token)
/// accepts only greater fences. `KEYS[1]` stays a plain string.
pub static FENCED_SET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "fenced_set",
        r#"local mark = redis.call('get', KEYS[2])
if mark then
  local ours = tonumber(ARGV[2])
  local at = string.find(mark, ':', 1, true)
  local newest, holder = tonumber(mark), false
  if at then
    newest, holder = tonumber(string.sub(mark, 1, at - 1)), string.sub(mark, at + 1)
  end
  if newest > ours or (newest == ours and holder ~= ARGV[3]) then
    return 0
  end
end
redis.call('set', KEYS[1], ARGV[1])
redis.call('set', KEYS[2], ARGV[2] .. ':' .. ARGV[3])
return 1"#,
    )
});

/// Returns the value of `KEYS[1]`, or nil: who holds a lock, for elections.
pub static READ: LazyLock<Script> =
    LazyLock::new(|| Script::new("read", "return redis.call('get', KEYS[1])"));

/// Answers the server's `run_id` (from `INFO server`), which is random per server process: how a
/// [`Redlock`](crate::Redlock) learns which server a master is, so that one server listed twice (through
/// two clients, say) never votes twice. Takes no keys, so a backend runs it on whatever server it talks
/// to; Redlock does not ask a Redis Cluster backend
/// ([`Capabilities::cluster`](crate::Capabilities::cluster)), whose key-less scripts may land on any
/// node. Nil when `INFO` has no `run_id` line; a script error (an ACL that forbids `INFO`) means "cannot
/// tell".
pub static SERVER_ID: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "server_id",
        "return string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')",
    )
});

// Fair lock (`RedisLock::fair`): FAIR_ACQUIRE, FAIR_LEAVE, FAIR_WAITERS.

/// Acquires the fair lock `KEYS[1]` for the token `ARGV[1]` (TTL `ARGV[2]` ms) in arrival order.
///
/// Keys: `KEYS[1]` the lock (a string holding the holder's token, exactly as a plain lock), `KEYS[2]`
/// the queue (a sorted set of waiting tokens scored by their ticket), `KEYS[3]` the heartbeats (a
/// sorted set of the same tokens scored by when each place expires, server time in ms), `KEYS[4]` the
/// release-signal list, and with fencing `KEYS[5]` the fence counter. `ARGV[3]` is `1` to join the
/// queue when not granted (`acquire`), `0` not to (`try_acquire`); `ARGV[4]` is how long a pushed
/// wake-up lingers in ms, `0` for none.
///
/// First drops every waiter whose heartbeat expired (one `ZREM` pair each: O(log n) per dead waiter).
/// Then: our token in the lock → a re-sent request: TTL reset, granted. The lock free and the queue
/// empty or headed by us → `SET KEYS[1] token PX ttl`, we leave the queue, granted. Otherwise, with
/// `ARGV[3] = 1`, we join (a ticket `max(last ticket + 1, TIME in µs)`, so tickets strictly increase
/// while the queue exists) or keep our place, and our heartbeat becomes `TIME + ttl`; the queue keys
/// live as long as their longest heartbeat, so nothing outlives its last waiter. When the lock is free
/// but we are not the head, one wake-up is pushed, so that a signal we consumed reaches the head.
///
/// Replies as [`FENCED_ACQUIRE`]: `{1, fence, now}` when granted (fence 0 without `KEYS[5]`), `{0,
/// pttl, now}` when not (`pttl` -2 when the lock is free), `now` the server's clock in µs. Every key it
/// touches is in `KEYS`, and every command is named literally.
pub static FAIR_ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "fair_acquire",
        r#"local t = redis.call('time')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now / 1000)
local ttl = tonumber(ARGV[2])
local dead = redis.call('zrangebyscore', KEYS[3], '-inf', now_ms)
for _, waiter in ipairs(dead) do
  redis.call('zrem', KEYS[2], waiter)
  redis.call('zrem', KEYS[3], waiter)
end
local holder = redis.call('get', KEYS[1])
local function fence_now()
  if not KEYS[5] then
    return 0
  end
  return tonumber(redis.call('get', KEYS[5]) or '0')
end
if holder == ARGV[1] then
  redis.call('pexpire', KEYS[1], ARGV[2])
  redis.call('zrem', KEYS[2], ARGV[1])
  redis.call('zrem', KEYS[3], ARGV[1])
  return {1, fence_now(), now}
end
local head = redis.call('zrange', KEYS[2], 0, 0)[1]
if not holder and (not head or head == ARGV[1]) then
  redis.call('zrem', KEYS[2], ARGV[1])
  redis.call('zrem', KEYS[3], ARGV[1])
  local fence = 0
  if KEYS[5] then
    fence = fence_now() + 1
    if fence < now then
      fence = now
    end
    redis.call('set', KEYS[5], string.format('%.0f', fence))
  end
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1, fence, now}
end
if ARGV[3] == '1' then
  if not redis.call('zscore', KEYS[2], ARGV[1]) then
    local ticket = now
    local last = redis.call('zrange', KEYS[2], -1, -1, 'WITHSCORES')
    if last[2] and tonumber(last[2]) + 1 > ticket then
      ticket = tonumber(last[2]) + 1
    end
    redis.call('zadd', KEYS[2], string.format('%.0f', ticket), ARGV[1])
  end
  redis.call('zadd', KEYS[3], string.format('%.0f', now_ms + ttl), ARGV[1])
  if redis.call('pttl', KEYS[2]) < ttl then
    redis.call('pexpire', KEYS[2], ARGV[2])
  end
  if redis.call('pttl', KEYS[3]) < ttl then
    redis.call('pexpire', KEYS[3], ARGV[2])
  end
end
if not holder then
  if ARGV[4] ~= '0' and redis.call('exists', KEYS[4]) == 0 then
    redis.call('lpush', KEYS[4], '1')
    redis.call('pexpire', KEYS[4], ARGV[4])
  end
  return {0, -2, now}
end
return {0, redis.call('pttl', KEYS[1]), now}"#,
    )
});

/// Takes the token `ARGV[1]` out of the fair lock's queue: a waiter that gave up (timed out, was
/// cancelled, or failed). Keys as [`FAIR_ACQUIRE`]'s first four: lock, queue, heartbeats, signal list.
/// Returns 1 when the token was queued, 0 otherwise.
///
/// When the waiter was the head and the lock is free while others still wait, one wake-up is pushed
/// (lingering `ARGV[2]` ms; `0` for none) so that the next waiter goes at once.
pub static FAIR_LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "fair_leave",
        r#"local head = redis.call('zrange', KEYS[2], 0, 0)[1]
local removed = redis.call('zrem', KEYS[2], ARGV[1])
redis.call('zrem', KEYS[3], ARGV[1])
if removed == 1 and head == ARGV[1] and ARGV[2] ~= '0'
    and redis.call('exists', KEYS[1]) == 0 and redis.call('exists', KEYS[2]) == 1
    and redis.call('exists', KEYS[4]) == 0 then
  redis.call('lpush', KEYS[4], '1')
  redis.call('pexpire', KEYS[4], ARGV[2])
end
return removed"#,
    )
});

/// Reads a fair lock's queue without changing it: `KEYS[1]` the queue, `KEYS[2]` the heartbeats.
/// Returns `{n, tokens}`: `n` how many of the two keys exist, `tokens` the waiters whose heartbeat has
/// not expired, in the order they will be granted. For checks and operators.
pub static FAIR_WAITERS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "fair_waiters",
        r#"local t = redis.call('time')
local now_ms = math.floor((tonumber(t[1]) * 1000000 + tonumber(t[2])) / 1000)
local live = {}
for _, waiter in ipairs(redis.call('zrange', KEYS[1], 0, -1)) do
  local beat = redis.call('zscore', KEYS[2], waiter)
  if beat and tonumber(beat) > now_ms then
    live[#live + 1] = waiter
  end
end
return {redis.call('exists', KEYS[1], KEYS[2]), live}"#,
    )
});

// Hand-over in one round trip (issue 13): HAND_OVER, FENCED_HAND_OVER.

/// Releases `KEYS[1]` from the token `ARGV[1]` and grants it to the token `ARGV[2]` with a TTL of
/// `ARGV[3]` milliseconds, in one step: the release of a holder whose next local waiter takes the lock
/// at once. Returns 1 when handed over, 0 when the key holds another token, -1 when there is no key
/// (the replies of [`RELEASE`]: nothing is granted unless the key was ours).
///
/// A re-sent request (the key already holds `ARGV[2]`) resets the TTL and answers 1 again, so a client
/// that re-sends it over a new connection neither reports the release as lost nor leaves the new token
/// held by nobody.
pub static HAND_OVER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "hand_over",
        r#"local holder = redis.call('get', KEYS[1])
if holder == ARGV[2] then
  redis.call('pexpire', KEYS[1], ARGV[3])
  return 1
end
if holder == ARGV[1] then
  redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
if holder then
  return 0
end
return -1"#,
    )
});

/// [`HAND_OVER`] for a waiter whose lock has fencing: `KEYS[2]` is the fence counter, and the grant
/// issues the next fence exactly as [`FENCED_ACQUIRE`] does (`max(counter + 1, TIME in µs)`, which
/// becomes the counter). Returns `{1, fence}` when handed over (a re-sent request answers the fence
/// issued then, read from the counter), `{0, 0}` when the key holds another token, `{-1, 0}` when
/// there is no key.
pub static FENCED_HAND_OVER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "fenced_hand_over",
        r#"local holder = redis.call('get', KEYS[1])
if holder == ARGV[2] then
  redis.call('pexpire', KEYS[1], ARGV[3])
  return {1, tonumber(redis.call('get', KEYS[2]))}
end
if holder == ARGV[1] then
  local t = redis.call('time')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local fence = tonumber(redis.call('get', KEYS[2]) or '0') + 1
  if fence < now then
    fence = now
  end
  redis.call('set', KEYS[2], string.format('%.0f', fence))
  redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return {1, fence}
end
if holder then
  return {0, 0}
end
return {-1, 0}"#,
    )
});

/// Every script the lock sends, once each: for checks and tools that must cover them all (their
/// digests, preloading them with `SCRIPT LOAD`).
pub fn all() -> [&'static Script; 32] {
    [
        &*RELEASE,
        &*RELEASE_AND_SIGNAL,
        &*EXTEND,
        &*RENEW,
        &*EXPIRY,
        &*IS_OWNER,
        &*ACQUIRE,
        &*FENCED_ACQUIRE,
        &*FENCE_RAISE,
        &*FENCED_SET,
        &*READ,
        &*SERVER_ID,
        // Semaphores and read-write locks.
        &*SHARE_RENEW,
        &*SHARE_EXTEND,
        &*SHARE_EXPIRY,
        &*SHARE_IS_OWNER,
        &*SHARE_RELEASE,
        &*SEMAPHORE_ACQUIRE,
        &*SEMAPHORE_HELD,
        // Fair lock.
        &*FAIR_ACQUIRE,
        &*FAIR_LEAVE,
        &*FAIR_WAITERS,
        // Read-write locks.
        &*RW_READ,
        &*RW_WRITE,
        &*RW_LEAVE,
        &*RW_DOWNGRADE,
        // Inspection.
        &*LOCK_INSPECT,
        &*SEMAPHORE_INSPECT,
        &*RW_INSPECT,
        // Batched renewals (issue 13).
        &*RENEW_MANY,
        // Hand-over in one round trip.
        &*HAND_OVER,
        &*FENCED_HAND_OVER,
    ]
}

// Batched renewals (issue 13): one call renews many leases of one slot.

/// [`RENEW`] for many keys in one call: `KEYS` are the lease keys (all in one cluster slot), `ARGV[1]`
/// the TTL in milliseconds and `ARGV[1 + i]` the token of `KEYS[i]`. Each key is token-checked and
/// renewed exactly as `RENEW` renews it alone (`PEXPIRE .. GT`: never shortened); the reply has one
/// element per key, in order, each RENEW's reply: `{pttl, pexpiretime}`, or 0 when the key does not
/// hold its token (or has no TTL left).
///
/// Two commands a key (`GET`, `PEXPIRE .. GT`) and one `TIME` a call, Redis's CPU being what limits
/// how many leases one server keeps:
/// - when `PEXPIRE` set the TTL, the key lives exactly `ARGV[1]` from the moment the script runs (Redis
///   reads the clock once per script for expiries), which is after the request was sent: the reply's
///   `pttl` is `ARGV[1]`, a safe base for the guard's validity. Its `pexpiretime` is `TIME` (read at the
///   start, so not before that moment, in whole milliseconds) plus `ARGV[1]`: at most a millisecond
///   or two after the real expiry, and only ever used as the base an `extend` adds to;
/// - when it did not (the key already lives longer, after an `extend`), `PEXPIRETIME` is read, and the
///   TTL left is that less `TIME`, so never more than the key's `PTTL`. As in `RENEW`, `GT` leaves a
///   key without a TTL alone, and its `PEXPIRETIME` (-1) then answers "not ours".
///
/// Every command is called on `KEYS[i]` of a `for i = 1, #KEYS` loop: each key the script touches is
/// one of the declared `KEYS` (what `scripts_name_every_key_in_keys_and_every_command_literally`
/// checks).
pub static RENEW_MANY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "renew_many",
        r#"local time = redis.call('time')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local ttl = tonumber(ARGV[1])
local replies = {}
for i = 1, #KEYS do
  replies[i] = 0
  if redis.call('get', KEYS[i]) == ARGV[i + 1] then
    if redis.call('pexpire', KEYS[i], ARGV[1], 'GT') == 1 then
      replies[i] = {ttl, now + ttl}
    else
      local at = redis.call('pexpiretime', KEYS[i])
      if at > now then
        replies[i] = {at - now, at}
      end
    end
  end
end
return replies"#,
    )
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_matches_the_source() {
        // Redis computes the same digest for SCRIPT LOAD: the conformance check
        // `script_digests_match_the_server` compares them against a server.
        let script = Script::new("noop", "return 1");
        assert_eq!(script.sha1(), "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
        assert_eq!(script.name(), "noop");
        assert_eq!(script.source(), "return 1");
    }

    /// Every script names every key it touches in `KEYS` and calls commands by literal name (Redis
    /// Cluster, Dragonfly and managed services refuse anything else, pitfall 45): each `redis.call`
    /// names its command in quotes and, unless the command takes no key (`TIME`, `INFO`), passes
    /// `KEYS[n]` (or `KEYS[i]` of a loop over `#KEYS`) as its first argument; no script builds a name
    /// from a key with `..`.
    #[test]
    fn scripts_name_every_key_in_keys_and_every_command_literally() {
        const KEYLESS: [&str; 2] = ["time", "info"];
        for script in all() {
            let source = script.source();
            assert!(
                !source.contains("KEYS[1] ..") && !source.contains(".. KEYS"),
                "{} builds a key name",
                script.name()
            );
            for (at, _) in source.match_indices("redis.call(") {
                let call = &source[at + "redis.call(".len()..];
                let quote = call.chars().next().expect("an argument");
                assert!(
                    quote == '\'' || quote == '"',
                    "{}: a command name that is not a literal: redis.call({}",
                    script.name(),
                    &call[..call.len().min(30)]
                );
                let end = call[1..].find(quote).expect("a closing quote") + 1;
                let command = call[1..end].to_ascii_lowercase();
                if KEYLESS.contains(&command.as_str()) {
                    continue;
                }
                let rest = call[end + 1..].trim_start();
                let first = rest
                    .strip_prefix(',')
                    .map(str::trim_start)
                    .unwrap_or_default();
                // `KEYS[n]`, or `KEYS[i]` where `i` runs over the declared keys (`for i = 1, #KEYS`).
                let is_key = first.strip_prefix("KEYS[").is_some_and(|k| {
                    let index: String = k
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    let literal = !index.is_empty() && index.chars().all(|c| c.is_ascii_digit());
                    let over_keys =
                        !index.is_empty() && source.contains(&format!("for {index} = 1, #KEYS do"));
                    (literal || over_keys) && k[index.len()..].starts_with(']')
                });
                assert!(
                    is_key,
                    "{}: `{command}` is called with a key that is not KEYS[n]: {}",
                    script.name(),
                    &first[..first.len().min(30)]
                );
            }
        }
    }

    #[test]
    fn scripts_have_distinct_digests() {
        let all = all();
        for (i, a) in all.iter().enumerate() {
            assert_eq!(a.sha1().len(), 40);
            for b in &all[i + 1..] {
                assert_ne!(a.sha1(), b.sha1(), "{} and {}", a.name(), b.name());
            }
        }
    }
}
