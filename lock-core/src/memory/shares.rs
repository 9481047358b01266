//! The shared-key scripts ([`script::SHARE_RENEW`] and the rest, [`script::SEMAPHORE_ACQUIRE`],
//! [`script::SEMAPHORE_HELD`]) natively, with the Lua scripts' semantics: holders are members of a
//! sorted set scored by their expiry on the wall clock in milliseconds, the key expires with its
//! longest-lived member, and members scored 0 are bookkeeping.

use super::Data;
use super::scripts::{Call, bad_call, micros, parse_int};
use super::sets::{SortedSet, wall_millis};
use crate::backend::{BackendError, ScriptValue};
use crate::script;

/// Runs `call` if it is one of the shared-key scripts.
pub(super) fn run(call: &Call<'_>, data: &mut Data) -> Option<Result<ScriptValue, BackendError>> {
    let sha = call.script.sha1();
    let known = [
        &*script::SHARE_RENEW,
        &*script::SHARE_EXTEND,
        &*script::SHARE_EXPIRY,
        &*script::SHARE_IS_OWNER,
        &*script::SHARE_RELEASE,
        &*script::SEMAPHORE_ACQUIRE,
        &*script::SEMAPHORE_HELD,
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
        ([key], [member, ttl]) if sha == script::SHARE_RENEW.sha1() => {
            let target = now.saturating_add(int(ttl)?);
            Ok(move_expiry(call, data, key, member, now, Some(target)))
        }
        ([key], [member, target]) if sha == script::SHARE_EXTEND.sha1() => {
            let target = int(target)?;
            Ok(move_expiry(call, data, key, member, now, Some(target)))
        }
        ([key], [member]) if sha == script::SHARE_EXPIRY.sha1() => {
            Ok(move_expiry(call, data, key, member, now, None))
        }
        ([key], [member]) if sha == script::SHARE_IS_OWNER.sha1() => {
            let live = live_score(data, key, member, now).is_some();
            Ok(ScriptValue::Int(i64::from(live)))
        }
        // One process: local waiters poll, so wake-ups are not needed.
        ([key, _signal], [member, _wake, _linger]) if sha == script::SHARE_RELEASE.sha1() => {
            let Some(set) = data.sets.get_mut(*key) else {
                return Ok(ScriptValue::Int(-1));
            };
            let Some(expiry) = set.score(member) else {
                return Ok(ScriptValue::Int(-1));
            };
            set.remove(member);
            set.remove_scored(1, now);
            if set.members().all(|(_, score)| score <= 0) {
                data.sets.remove(*key);
            }
            Ok(ScriptValue::Int(if expiry > now { 1 } else { 0 }))
        }
        ([key, counter @ ..], [member, permits, limit, ttl])
            if sha == script::SEMAPHORE_ACQUIRE.sha1() && counter.len() <= 1 =>
        {
            let (permits, limit_n, ttl) = (int(permits)?, int(limit)?, int(ttl)?);
            let set = data.sets.entry((*key).to_owned()).or_default();
            set.remove_scored(1, now);
            let mut held = 0;
            let mut stored = None;
            let mut mine = false;
            for (m, _) in set.members() {
                if let Some(n) = m.strip_prefix("limit:") {
                    stored = Some(n.to_owned());
                } else {
                    held += holder_permits(call, m)?;
                    mine |= m == *member;
                }
            }
            if held > 0
                && let Some(stored) = &stored
                && stored != limit
            {
                let stored = int(stored)?;
                drop_if_empty(data, key);
                return Ok(pair(-1, stored));
            }
            if !mine {
                if held + permits > limit_n {
                    drop_if_empty(data, key);
                    return Ok(pair(0, limit_n - held));
                }
                if let Some(stored) = &stored
                    && stored != limit
                {
                    set.remove(&format!("limit:{stored}"));
                }
            }
            // A re-sent request of a live member gets a new fence too: the counter as it stands may
            // be another holder's by now.
            let fence = match counter.first() {
                Some(counter) => issue_fence(call, data, counter)?,
                None => 0,
            };
            let set = data.sets.entry((*key).to_owned()).or_default();
            set.insert(&format!("limit:{limit}"), 0);
            let expiry = now.saturating_add(ttl);
            if set.score(member).is_none_or(|old| old < expiry) {
                set.insert(member, expiry);
            }
            expire_with_last(call, set);
            Ok(pair(1, fence))
        }
        ([key], []) if sha == script::SEMAPHORE_HELD.sha1() => {
            let Some(set) = data.sets.get(*key) else {
                return Ok(pair(0, -1));
            };
            let mut held = 0;
            let mut limit = -1;
            for (m, score) in set.members() {
                if let Some(n) = m.strip_prefix("limit:") {
                    if score == 0 {
                        limit = int(n)?;
                    }
                } else if score > now {
                    held += holder_permits(call, m)?;
                }
            }
            Ok(pair(held, limit))
        }
        _ => Err(bad_call(
            call.script,
            "was called with the wrong number of keys or arguments",
        )),
    }
}

/// The score of `member` in `key` while it is live (scored after `now`).
fn live_score(data: &Data, key: &str, member: &str, now: i64) -> Option<i64> {
    data.sets
        .get(key)
        .and_then(|set| set.score(member))
        .filter(|score| *score > now)
}

/// As the renew, extend and expiry scripts: while `member` is live, moves its score to `target` if that
/// is later, and answers `{ms left, expiry}`; 0 otherwise.
fn move_expiry(
    call: &Call<'_>,
    data: &mut Data,
    key: &str,
    member: &str,
    now: i64,
    target: Option<i64>,
) -> ScriptValue {
    let Some(mut expiry) = live_score(data, key, member, now) else {
        return ScriptValue::Int(0);
    };
    if let Some(set) = data.sets.get_mut(key)
        && let Some(target) = target
    {
        if target > expiry {
            set.insert(member, target);
            expiry = target;
        }
        expire_with_last(call, set);
    }
    pair(expiry - now, expiry)
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

/// The permits of a holder's member `"<permits>:<token>"`.
fn holder_permits(call: &Call<'_>, member: &str) -> Result<i64, BackendError> {
    let (permits, _) = member.split_once(':').ok_or_else(|| {
        bad_call(
            call.script,
            "found a member that is not \"<permits>:<token>\"",
        )
    })?;
    parse_int(call.script, Some(permits))
}

/// As the scripts' fence: `max(counter + 1, TIME in µs)`, which becomes the counter.
pub(super) fn issue_fence(
    call: &Call<'_>,
    data: &mut Data,
    counter: &str,
) -> Result<i64, BackendError> {
    let current = match data.get(counter) {
        Some(c) => parse_int(call.script, Some(&c.value))?,
        None => 0,
    };
    let fence = current.saturating_add(1).max(micros(call.wall));
    data.insert(
        counter.to_owned(),
        super::Entry::persistent(fence.to_string()),
    );
    Ok(fence)
}

fn pair(a: i64, b: i64) -> ScriptValue {
    ScriptValue::Array(vec![ScriptValue::Int(a), ScriptValue::Int(b)])
}
