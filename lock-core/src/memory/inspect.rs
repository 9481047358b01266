//! The inspection scripts ([`LOCK_INSPECT`](script::LOCK_INSPECT),
//! [`SEMAPHORE_INSPECT`](script::SEMAPHORE_INSPECT), [`RW_INSPECT`](script::RW_INSPECT)) natively,
//! with the semantics of their Lua: they read and change nothing, and a key of the wrong type is
//! `WRONGTYPE`, as `GET` or `ZRANGE` on it would be.

use super::scripts::{Call, bad_call};
use super::sets::wall_millis;
use super::{Data, NAME};
use crate::backend::{BackendError, ScriptValue};
use crate::script;

/// Runs `call` if it is one of the inspection scripts.
pub(super) fn run(call: &Call<'_>, data: &mut Data) -> Option<Result<ScriptValue, BackendError>> {
    let sha = call.script.sha1();
    if sha == script::LOCK_INSPECT.sha1() {
        Some(lock(call, data))
    } else if sha == script::SEMAPHORE_INSPECT.sha1() {
        Some(semaphore(call, data))
    } else if sha == script::RW_INSPECT.sha1() {
        Some(rwlock(call, data))
    } else {
        None
    }
}

fn wrong_arity(call: &Call<'_>) -> BackendError {
    bad_call(
        call.script,
        "was called with the wrong number of keys or arguments",
    )
}

fn wrong_type() -> BackendError {
    BackendError::permanent(
        NAME,
        "WRONGTYPE Operation against a key holding the wrong kind of value",
    )
}

/// `GET key`: nil when missing, `WRONGTYPE` on a sorted set.
fn get(data: &Data, key: &str) -> Result<ScriptValue, BackendError> {
    if data.sets.contains_key(key) {
        return Err(wrong_type());
    }
    Ok(data
        .get(key)
        .map_or(ScriptValue::Nil, |e| ScriptValue::Str(e.value.clone())))
}

/// `ZRANGE key 0 -1 WITHSCORES`: empty when missing, `WRONGTYPE` on a string.
fn zrange(data: &Data, key: &str) -> Result<Vec<(String, i64)>, BackendError> {
    if data.contains_key(key) {
        return Err(wrong_type());
    }
    Ok(data
        .sets
        .get(key)
        .map(|set| set.ordered())
        .unwrap_or_default())
}

fn lock(call: &Call<'_>, data: &Data) -> Result<ScriptValue, BackendError> {
    let ([key, counter, queue, beats], []) = (call.keys, call.args) else {
        return Err(wrong_arity(call));
    };
    let now = wall_millis(call.wall);
    let beats = zrange(data, beats)?;
    let mut waiters = Vec::new();
    for (waiter, _) in zrange(data, queue)? {
        if beats.iter().any(|(w, beat)| *w == waiter && *beat > now) {
            waiters.push(ScriptValue::Str(waiter));
        }
    }
    let holder = get(data, key)?;
    let pttl = data.get(*key).map_or(-2, |e| e.pttl_millis(call.now));
    Ok(ScriptValue::Array(vec![
        holder,
        ScriptValue::Int(pttl),
        get(data, counter)?,
        ScriptValue::Array(waiters),
    ]))
}

/// `{member, ms left}` for every member of `key` that is live at `now` (wall-clock milliseconds).
fn live(data: &Data, key: &str, now: i64) -> Result<Vec<ScriptValue>, BackendError> {
    Ok(zrange(data, key)?
        .into_iter()
        .filter(|(_, expiry)| *expiry > now)
        .map(|(member, expiry)| {
            ScriptValue::Array(vec![
                ScriptValue::Str(member),
                ScriptValue::Int(expiry - now),
            ])
        })
        .collect())
}

fn semaphore(call: &Call<'_>, data: &Data) -> Result<ScriptValue, BackendError> {
    let ([key, counter], []) = (call.keys, call.args) else {
        return Err(wrong_arity(call));
    };
    let now = wall_millis(call.wall);
    let mut limit = -1;
    for (member, score) in zrange(data, key)? {
        if let Some(n) = member.strip_prefix("limit:")
            && score == 0
        {
            limit = n
                .parse()
                .map_err(|_| bad_call(call.script, "found a limit that is not an integer"))?;
        }
    }
    let holders = live(data, key, now)?
        .into_iter()
        .filter(|holder| match holder {
            ScriptValue::Array(pair) => !matches!(
                pair.first(),
                Some(ScriptValue::Str(member)) if member.starts_with("limit:")
            ),
            _ => true,
        })
        .collect();
    Ok(ScriptValue::Array(vec![
        ScriptValue::Int(limit),
        get(data, counter)?,
        ScriptValue::Array(holders),
    ]))
}

fn rwlock(call: &Call<'_>, data: &Data) -> Result<ScriptValue, BackendError> {
    let ([key, writers, counter], []) = (call.keys, call.args) else {
        return Err(wrong_arity(call));
    };
    let now = wall_millis(call.wall);
    Ok(ScriptValue::Array(vec![
        ScriptValue::Array(live(data, key, now)?),
        ScriptValue::Array(live(data, writers, now)?),
        get(data, counter)?,
    ]))
}
