//! The scripts of primitives whose holders share one key: [`Semaphore`](crate::Semaphore) permits and
//! [`RwLock`](crate::RwLock) holds. The key is a sorted set; each holder is one member, scored by its
//! own expiry on the server's clock (Unix milliseconds from `TIME` inside the script). So each holder's
//! share expires on its own, a holder's renewal touches only its own member, and no client clock is
//! ever sent to Redis. The key itself expires with its longest-lived member, and is deleted when its last
//! holder leaves.
//!
//! Members scored 0 are bookkeeping, not holders (a semaphore's `limit:<n>`); holders are scored above 0.

use std::sync::LazyLock;

use super::Script;

/// The server's clock, read once per script: `now` in milliseconds, `t` as `TIME` answered it.
macro_rules! now_ms {
    () => {
        "local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"
    };
}
pub(crate) use now_ms;

/// Issues a fence from the counter key `$counter` (a Lua expression such as `"KEYS[2]"`) into the
/// local `fence` when that key is given, as [`FENCED_ACQUIRE`](super::FENCED_ACQUIRE) does:
/// `max(counter + 1, TIME in µs)`, which becomes the counter. Needs `t` from [`now_ms!`] and a
/// `local fence` declared before.
macro_rules! issue_fence {
    ($counter:literal) => {
        concat!(
            "if ",
            $counter,
            " then
  local micros = tonumber(t[1]) * 1000000 + tonumber(t[2])
  fence = tonumber(redis.call('get', ",
            $counter,
            ") or '0') + 1
  if fence < micros then
    fence = micros
  end
  redis.call('set', ",
            $counter,
            ", string.format('%.0f', fence))
end
"
        )
    };
}
pub(crate) use issue_fence;

/// Moves the expiry of `KEYS[1]` to its longest-lived member's.
macro_rules! expire_with_last {
    () => {
        "local last = redis.call('zrange', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then
  redis.call('pexpireat', KEYS[1], last[2])
end
"
    };
}
pub(crate) use expire_with_last;

/// The body of [`SHARE_RENEW`] and [`SHARE_EXTEND`], which differ only in the target they move the
/// member's expiry to (a Lua expression over `now` and `ARGV[2]`).
macro_rules! move_member_expiry {
    ($target:literal) => {
        concat!(
            now_ms!(),
            "local expiry = tonumber(redis.call('zscore', KEYS[1], ARGV[1]))
if not expiry or expiry <= now then
  return 0
end
local target = ",
            $target,
            "
if target > expiry then
  redis.call('zadd', KEYS[1], target, ARGV[1])
  expiry = target
end
",
            expire_with_last!(),
            "return {expiry - now, expiry}"
        )
    };
}

/// Renews the member `ARGV[1]` of `KEYS[1]` to `ARGV[2]` milliseconds from now (server clock), unless it
/// already lives longer; only while it is live (scored after now). Returns `{ms left, expiry}` after it,
/// 0 when the member is gone or expired: the share is no longer ours, and is never re-created.
pub static SHARE_RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "share_renew",
        move_member_expiry!("now + tonumber(ARGV[2])"),
    )
});

/// Moves the expiry of the member `ARGV[1]` of `KEYS[1]` to the absolute server time `ARGV[2]` (Unix
/// milliseconds) if that is later, only while the member is live. Replies as [`SHARE_RENEW`]. Absolute,
/// so a re-sent request does not add twice.
pub static SHARE_EXTEND: LazyLock<Script> =
    LazyLock::new(|| Script::new("share_extend", move_member_expiry!("tonumber(ARGV[2])")));

/// Answers `{ms left, expiry}` of the member `ARGV[1]` of `KEYS[1]` while it is live, 0 otherwise: the
/// base an [`SHARE_EXTEND`] adds to.
pub static SHARE_EXPIRY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "share_expiry",
        concat!(
            now_ms!(),
            "local expiry = tonumber(redis.call('zscore', KEYS[1], ARGV[1]))
if not expiry or expiry <= now then
  return 0
end
return {expiry - now, expiry}"
        ),
    )
});

/// Returns 1 when the member `ARGV[1]` of `KEYS[1]` is live, 0 otherwise.
pub static SHARE_IS_OWNER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "share_is_owner",
        concat!(
            now_ms!(),
            "local expiry = tonumber(redis.call('zscore', KEYS[1], ARGV[1]))
if expiry and expiry > now then
  return 1
end
return 0"
        ),
    )
});

/// Removes the member `ARGV[1]` from `KEYS[1]`, drops expired holders, and deletes the key when no
/// holder is left. Returns 1 when the member was live (released while ours), 0 when it had expired
/// (not ours any more), -1 when there was no such member. On 1, wakes up to `ARGV[2]` waiters in other
/// processes: the signal list `KEYS[2]` is filled up to that many wake-ups and lives `ARGV[3]` ms.
pub static SHARE_RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "share_release",
        concat!(
            now_ms!(),
            "local expiry = tonumber(redis.call('zscore', KEYS[1], ARGV[1]))
if not expiry then
  return -1
end
redis.call('zrem', KEYS[1], ARGV[1])
redis.call('zremrangebyscore', KEYS[1], 1, now)
if redis.call('zcount', KEYS[1], 1, '+inf') == 0 then
  redis.call('del', KEYS[1])
end
if expiry <= now then
  return 0
end
local wake = tonumber(ARGV[2])
if wake > 0 then
  for i = redis.call('llen', KEYS[2]) + 1, wake do
    redis.call('lpush', KEYS[2], '1')
  end
  redis.call('pexpire', KEYS[2], ARGV[3])
end
return 1"
        ),
    )
});

/// Takes `ARGV[2]` permits of the semaphore `KEYS[1]` with limit `ARGV[3]`, as the member `ARGV[1]`
/// (`"<permits>:<token>"`) scored `ARGV[4]` ms from now; with `KEYS[2]`, issues a fence from that
/// counter. Expired holders are dropped first, so they never count.
///
/// Replies `{1, fence}` when granted (fence 0 without `KEYS[2]`; a re-sent request of a live member is
/// granted again with a new fence, because the counter as it stands may be another holder's fence by
/// now, and never shortens the member), `{0, free}` when too few permits are free, `{-1, limit}` when permits are held under another limit (kept as the member `limit:<n>` scored
/// 0; once no permit is held, a new limit replaces it).
pub static SEMAPHORE_ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "semaphore_acquire",
        concat!(
            now_ms!(),
            "local member, limit = ARGV[1], ARGV[3]
redis.call('zremrangebyscore', KEYS[1], 1, now)
local held, stored, mine = 0, false, false
for _, m in ipairs(redis.call('zrange', KEYS[1], 0, -1)) do
  if string.sub(m, 1, 6) == 'limit:' then
    stored = string.sub(m, 7)
  else
    held = held + tonumber(string.match(m, '^(%d+):'))
    if m == member then
      mine = true
    end
  end
end
if held > 0 and stored and stored ~= limit then
  return {-1, tonumber(stored)}
end
local fence = 0
if not mine then
  if held + tonumber(ARGV[2]) > tonumber(limit) then
    return {0, tonumber(limit) - held}
  end
  if stored and stored ~= limit then
    redis.call('zrem', KEYS[1], 'limit:' .. stored)
  end
end
",
            issue_fence!("KEYS[2]"),
            "redis.call('zadd', KEYS[1], 0, 'limit:' .. limit)
redis.call('zadd', KEYS[1], 'GT', now + tonumber(ARGV[4]), member)
",
            expire_with_last!(),
            "return {1, fence}"
        ),
    )
});

/// Answers `{permits held now, limit}` of the semaphore `KEYS[1]` (limit -1 when none is stored),
/// counting only live holders. Reads only.
pub static SEMAPHORE_HELD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "semaphore_held",
        concat!(
            now_ms!(),
            "local held = 0
for _, m in ipairs(redis.call('zrangebyscore', KEYS[1], string.format('(%.0f', now), '+inf')) do
  held = held + tonumber(string.match(m, '^(%d+):'))
end
local first = redis.call('zrange', KEYS[1], 0, 0)
local limit = -1
if first[1] and string.sub(first[1], 1, 6) == 'limit:' then
  limit = tonumber(string.sub(first[1], 7))
end
return {held, limit}"
        ),
    )
});
