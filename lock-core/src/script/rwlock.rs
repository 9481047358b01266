//! The scripts of [`RwLock`](crate::RwLock): a read-write lock with writer preference.
//!
//! The lock key `K` is a sorted set of holders scored by their expiry on the server's clock (Unix
//! milliseconds from `TIME`): `read:<token>` members, or exactly one `write:<token>`. A writer enters
//! only into an empty `K` and readers never enter beside a writer, so a writer holds exactly when `K`'s
//! only member is `write:...`, which every script tells in O(log n).
//!
//! Writers that wait register an intent in the companion sorted set `W` (the writers' key), scored by
//! the intent's expiry: while `W` holds a live intent, no new reader enters. A waiting writer refreshes
//! its intent at least three times per TTL; one that dies stops blocking readers within one TTL.
//!
//! Renewal, extension, ownership checks and release are the generic `SHARE_*` scripts (a hold is a
//! member of `K` like any share).

use std::sync::LazyLock;

use super::Script;
use super::shares::{expire_with_last, issue_fence, now_ms};

/// Drops the expired members of `K` (`KEYS[1]`) and of the writers' intents `W` (`KEYS[2]`), and
/// answers in `writer` whether a writer holds `K` (its only member is `write:...`).
macro_rules! drop_expired {
    () => {
        "redis.call('zremrangebyscore', KEYS[1], 1, now)
redis.call('zremrangebyscore', KEYS[2], 1, now)
local writer = false
if redis.call('zcard', KEYS[1]) == 1 then
  local only = redis.call('zrange', KEYS[1], 0, 0)
  writer = string.sub(only[1], 1, 6) == 'write:'
end
"
    };
}

/// Takes a read hold of `KEYS[1]` as the member `ARGV[1]` (`"read:<token>"`) for `ARGV[2]` ms (server
/// clock), unless a writer holds it or a writer waits (a live intent in `KEYS[2]`); with `KEYS[3]`,
/// issues a fence from that counter.
///
/// Replies `{1, fence}` when granted (fence 0 without `KEYS[3]`), `{0, 1}` while a writer holds, `{0, 2}`
/// while a writer waits. A re-sent request of a live member is granted again with a new fence (its
/// first reply was never read, and the counter as it stands may be another reader's fence by now: two
/// holders must never share one) and never shortens the member.
pub static RW_READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "rw_read",
        concat!(
            now_ms!(),
            drop_expired!(),
            "local fence = 0
if not redis.call('zscore', KEYS[1], ARGV[1]) then
  if writer then
    return {0, 1}
  end
  if redis.call('zcard', KEYS[2]) > 0 then
    return {0, 2}
  end
end
",
            issue_fence!("KEYS[3]"),
            "redis.call('zadd', KEYS[1], 'GT', now + tonumber(ARGV[2]), ARGV[1])
",
            expire_with_last!(),
            "return {1, fence}"
        ),
    )
});

/// Takes the write hold of `KEYS[1]` as the member `ARGV[1]` (`"write:<token>"`) for `ARGV[2]` ms
/// (server clock) when `KEYS[1]` has no live holder, removing the writer's intent `ARGV[3]` from
/// `KEYS[2]`; with `KEYS[3]`, issues a fence from that counter. Other writers' intents do not stop it:
/// they only keep readers out.
///
/// Replies `{1, fence}` when granted (a re-sent request of a live member answers the counter as it
/// stands and never shortens the member), `{0, holders}` otherwise; then, when `ARGV[4]` is `1`, the
/// intent `ARGV[3]` is registered (or refreshed) to expire `ARGV[2]` ms from now, so no new reader
/// enters while this writer waits.
pub static RW_WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "rw_write",
        concat!(
            now_ms!(),
            drop_expired!(),
            "local ttl = tonumber(ARGV[2])
local fence = 0
if redis.call('zscore', KEYS[1], ARGV[1]) then
  if KEYS[3] then
    fence = tonumber(redis.call('get', KEYS[3]) or '0')
  end
else
  local holders = redis.call('zcard', KEYS[1])
  if holders > 0 then
    if ARGV[4] == '1' then
      redis.call('zadd', KEYS[2], now + ttl, ARGV[3])
      local last = redis.call('zrange', KEYS[2], -1, -1, 'WITHSCORES')
      redis.call('pexpireat', KEYS[2], last[2])
    end
    return {0, holders}
  end
",
            issue_fence!("KEYS[3]"),
            "end
redis.call('zrem', KEYS[2], ARGV[3])
redis.call('zadd', KEYS[1], 'GT', now + ttl, ARGV[1])
",
            expire_with_last!(),
            "return {1, fence}"
        ),
    )
});

/// Removes the waiting writer's intent `ARGV[1]` from the writers' key `KEYS[1]` (a writer that gave
/// up or was cancelled). Returns 1 when it was there, 0 otherwise. When it was there and no live intent
/// is left, wakes up to `ARGV[2]` waiting readers in other processes: the signal list `KEYS[2]` is
/// filled up to that many wake-ups and lives `ARGV[3]` ms.
pub static RW_LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "rw_leave",
        concat!(
            now_ms!(),
            "if redis.call('zrem', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('zremrangebyscore', KEYS[1], 1, now)
local wake = tonumber(ARGV[2])
if wake > 0 and redis.call('zcard', KEYS[1]) == 0 then
  for i = redis.call('llen', KEYS[2]) + 1, wake do
    redis.call('lpush', KEYS[2], '1')
  end
  redis.call('pexpire', KEYS[2], ARGV[3])
end
return 1"
        ),
    )
});

/// Turns the write hold `ARGV[1]` (`"write:<token>"`) of `KEYS[1]` into the read hold `ARGV[2]`
/// (`"read:<token>"`) at the same expiry, in one step: no writer can enter in between. Replies
/// `{ms left, expiry}` of the read hold, also to a re-sent request that finds the read hold already
/// there; 0 when neither is live (the write hold expired: nothing is written). On success, wakes up to
/// `ARGV[3]` waiting readers in other processes through the signal list `KEYS[2]`, which lives `ARGV[4]`
/// ms.
pub static RW_DOWNGRADE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "rw_downgrade",
        concat!(
            now_ms!(),
            "local expiry = tonumber(redis.call('zscore', KEYS[1], ARGV[1]))
if expiry and expiry > now then
  redis.call('zrem', KEYS[1], ARGV[1])
  redis.call('zadd', KEYS[1], expiry, ARGV[2])
  local wake = tonumber(ARGV[3])
  if wake > 0 then
    for i = redis.call('llen', KEYS[2]) + 1, wake do
      redis.call('lpush', KEYS[2], '1')
    end
    redis.call('pexpire', KEYS[2], ARGV[4])
  end
  return {expiry - now, expiry}
end
expiry = tonumber(redis.call('zscore', KEYS[1], ARGV[2]))
if expiry and expiry > now then
  return {expiry - now, expiry}
end
return 0"
        ),
    )
});
