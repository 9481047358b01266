//! The read-only scripts behind `inspect()`: what an operator asks first about a key (who holds it,
//! for how long, which fence was issued last, who waits), in one round trip each. They change nothing,
//! read the server's clock (`TIME`) for every remaining lease, and name every key in `KEYS`.

use std::sync::LazyLock;

use super::Script;
use super::shares::now_ms;

/// Reads a lock: `KEYS[1]` the lock key, `KEYS[2]` its fence counter, `KEYS[3]` and `KEYS[4]` its
/// fair queue and heartbeats. Replies `{holder, pttl, fence, queue}`: the token in the key (nil when
/// free), its `PTTL` (-2 when missing, -1 without a TTL), the counter's value (nil when fencing was
/// never used on the key), and the fair waiters whose heartbeat has not expired, in the order they
/// will be granted (empty when nobody waits fairly). Reads only.
pub static LOCK_INSPECT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "lock_inspect",
        concat!(
            now_ms!(),
            "local queue = {}
for _, waiter in ipairs(redis.call('zrange', KEYS[3], 0, -1)) do
  local beat = redis.call('zscore', KEYS[4], waiter)
  if beat and tonumber(beat) > now then
    queue[#queue + 1] = waiter
  end
end
return {redis.call('get', KEYS[1]), redis.call('pttl', KEYS[1]), redis.call('get', KEYS[2]), queue}"
        ),
    )
});

/// Reads a semaphore: `KEYS[1]` its sorted set, `KEYS[2]` its fence counter. Replies `{limit, fence,
/// holders}`: the stored limit (-1 when none is stored), the counter's value (nil when fencing was
/// never used), and each live holder as `{member, ms left}` (`member` is `"<permits>:<token>"`),
/// soonest to expire first, the time left on the server's clock. Reads only.
pub static SEMAPHORE_INSPECT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "semaphore_inspect",
        concat!(
            now_ms!(),
            "local entries = redis.call('zrange', KEYS[1], 0, -1, 'WITHSCORES')
local holders, limit = {}, -1
for i = 1, #entries, 2 do
  local member, score = entries[i], tonumber(entries[i + 1])
  if string.sub(member, 1, 6) == 'limit:' then
    if score == 0 then
      limit = tonumber(string.sub(member, 7))
    end
  elseif score > now then
    holders[#holders + 1] = {member, score - now}
  end
end
return {limit, redis.call('get', KEYS[2]), holders}"
        ),
    )
});

/// Reads a read-write lock: `KEYS[1]` its holders, `KEYS[2]` its waiting writers' intents, `KEYS[3]`
/// its fence counter. Replies `{holders, writers, fence}`: each live hold as `{member, ms left}`
/// (`read:<token>` or `write:<token>`), each live intent as `{id, ms left}`, soonest to expire first,
/// the time left on the server's clock, and the counter's value (nil when fencing was never used).
/// Reads only.
pub static RW_INSPECT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "rw_inspect",
        concat!(
            now_ms!(),
            "local holders, writers = {}, {}
local entries = redis.call('zrange', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #entries, 2 do
  local left = tonumber(entries[i + 1]) - now
  if left > 0 then
    holders[#holders + 1] = {entries[i], left}
  end
end
entries = redis.call('zrange', KEYS[2], 0, -1, 'WITHSCORES')
for i = 1, #entries, 2 do
  local left = tonumber(entries[i + 1]) - now
  if left > 0 then
    writers[#writers + 1] = {entries[i], left}
  end
end
return {holders, writers, redis.call('get', KEYS[3])}"
        ),
    )
});
