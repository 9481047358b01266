//! The read-write lock's scripts ([`script::RW_READ`], [`script::RW_WRITE`], [`script::RW_LEAVE`],
//! [`script::RW_DOWNGRADE`]) natively, with the Lua scripts' semantics: holders (`read:<token>`, or one
//! `write:<token>`) and waiting writers' intents are members of two sorted sets scored by their expiry
//! on the wall clock in milliseconds, each key expiring with its longest-lived member and deleted when
//! empty. One process: waiters poll, so the wake-ups are not needed.

use super::Data;
use super::scripts::{Call, bad_call, parse_int};
use super::sets::{SortedSet, wall_millis};
use super::shares::issue_fence;
use crate::backend::{BackendError, ScriptValue};
use crate::script;

/// Runs `call` if it is one of the read-write lock's scripts.
pub(super) fn run(call: &Call<'_>, data: &mut Data) -> Option<Result<ScriptValue, BackendError>> {
    let sha = call.script.sha1();
    let known = [
        &*script::RW_READ,
        &*script::RW_WRITE,
        &*script::RW_LEAVE,
        &*script::RW_DOWNGRADE,
    ];
    if !known.iter().any(|s| s.sha1() == sha) {
        return None;
    }
    Some(run_known(call, data))
}

fn run_known(call: &Call<'_>, data: &mut Data) -> Result<ScriptValue, BackendError> {
    let sha = call.script.sha1();
    let now = wall_millis(call.wall);
    let int = |v: &str| parse_int(call.script, Some(v));
    match (call.keys, call.args) {
        ([key, writers, counter @ ..], [member, ttl])
            if sha == script::RW_READ.sha1() && counter.len() <= 1 =>
        {
            let ttl = int(ttl)?;
            let writer = drop_expired(data, key, writers, now);
            if !is_member(data, key, member) {
                if writer {
                    return Ok(pair(0, 1));
                }
                if data.sets.contains_key(*writers) {
                    return Ok(pair(0, 2));
                }
            }
            // A re-sent request of a live member gets a new fence too: the counter as it stands may
            // be another reader's by now.
            let fence = issue(call, data, counter.first().copied())?;
            Ok(grant(
                call,
                data,
                key,
                member,
                now.saturating_add(ttl),
                fence,
            ))
        }
        ([key, writers, counter @ ..], [member, ttl, intent, join])
            if sha == script::RW_WRITE.sha1() && counter.len() <= 1 =>
        {
            let ttl = int(ttl)?;
            drop_expired(data, key, writers, now);
            let fence = if is_member(data, key, member) {
                current_fence(call, data, counter.first().copied())?
            } else {
                let holders = data.sets.get(*key).map_or(0, SortedSet::len);
                if holders > 0 {
                    if *join == "1" {
                        let set = data.sets.entry((*writers).to_owned()).or_default();
                        set.insert(intent, now.saturating_add(ttl));
                        expire_with_last(call, set);
                    }
                    return Ok(pair(0, i64::try_from(holders).unwrap_or(i64::MAX)));
                }
                issue(call, data, counter.first().copied())?
            };
            remove_member(data, writers, intent);
            Ok(grant(
                call,
                data,
                key,
                member,
                now.saturating_add(ttl),
                fence,
            ))
        }
        ([writers, _signal], [intent, _wake, _linger]) if sha == script::RW_LEAVE.sha1() => {
            let removed = remove_member(data, writers, intent);
            if let Some(set) = data.sets.get_mut(*writers) {
                set.remove_scored(1, now);
            }
            drop_if_empty(data, writers);
            Ok(ScriptValue::Int(i64::from(removed)))
        }
        ([key, _signal], [write, read, _wake, _linger]) if sha == script::RW_DOWNGRADE.sha1() => {
            let Some(set) = data.sets.get_mut(*key) else {
                return Ok(ScriptValue::Int(0));
            };
            if let Some(expiry) = set.score(write).filter(|expiry| *expiry > now) {
                set.remove(write);
                set.insert(read, expiry);
                return Ok(pair(expiry - now, expiry));
            }
            match set.score(read).filter(|expiry| *expiry > now) {
                Some(expiry) => Ok(pair(expiry - now, expiry)),
                None => Ok(ScriptValue::Int(0)),
            }
        }
        _ => Err(bad_call(
            call.script,
            "was called with the wrong number of keys or arguments",
        )),
    }
}

/// Drops the expired members of the holders `key` and the intents `writers`, deleting either when
/// empty; answers whether a writer holds `key` (its only member is `write:...`).
fn drop_expired(data: &mut Data, key: &str, writers: &str, now: i64) -> bool {
    for name in [key, writers] {
        if let Some(set) = data.sets.get_mut(name) {
            set.remove_scored(1, now);
        }
        drop_if_empty(data, name);
    }
    data.sets.get(key).is_some_and(|set| {
        set.len() == 1 && set.first().is_some_and(|(m, _)| m.starts_with("write:"))
    })
}

fn is_member(data: &Data, key: &str, member: &str) -> bool {
    data.sets
        .get(key)
        .is_some_and(|set| set.score(member).is_some())
}

/// Removes `member` from the set `key`, deleting the key when it is left empty; answers whether the
/// member was there.
fn remove_member(data: &mut Data, key: &str, member: &str) -> bool {
    let removed = data.sets.get_mut(key).is_some_and(|set| set.remove(member));
    drop_if_empty(data, key);
    removed
}

/// The counter as it stands, for a re-sent request of a live member (0 without fencing).
fn current_fence(call: &Call<'_>, data: &Data, counter: Option<&str>) -> Result<i64, BackendError> {
    match counter.and_then(|counter| data.get(counter)) {
        Some(c) => parse_int(call.script, Some(&c.value)),
        None => Ok(0),
    }
}

/// A new fence from the counter, when fencing (0 without).
fn issue(call: &Call<'_>, data: &mut Data, counter: Option<&str>) -> Result<i64, BackendError> {
    match counter {
        Some(counter) => issue_fence(call, data, counter),
        None => Ok(0),
    }
}

/// `ZADD key GT expiry member`, the key expiring with its last member; answers `{1, fence}`.
fn grant(
    call: &Call<'_>,
    data: &mut Data,
    key: &str,
    member: &str,
    expiry: i64,
    fence: i64,
) -> ScriptValue {
    let set = data.sets.entry(key.to_owned()).or_default();
    if set.score(member).is_none_or(|old| old < expiry) {
        set.insert(member, expiry);
    }
    expire_with_last(call, set);
    pair(1, fence)
}

/// The key expires with its longest-lived member.
fn expire_with_last(call: &Call<'_>, set: &mut SortedSet) {
    if let Some(last) = set.max_score() {
        set.expire_at_wall(last, call.now, call.wall);
    }
}

/// Redis deletes a sorted set left without members.
fn drop_if_empty(data: &mut Data, key: &str) {
    if data.sets.get(key).is_some_and(SortedSet::is_empty) {
        data.sets.remove(key);
    }
}

fn pair(a: i64, b: i64) -> ScriptValue {
    ScriptValue::Array(vec![ScriptValue::Int(a), ScriptValue::Int(b)])
}
