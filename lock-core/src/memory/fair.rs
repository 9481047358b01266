//! The fair lock's scripts ([`FAIR_ACQUIRE`](script::FAIR_ACQUIRE), [`FAIR_LEAVE`](script::FAIR_LEAVE),
//! [`FAIR_WAITERS`](script::FAIR_WAITERS)), natively, with the semantics of their Lua.
//!
//! The store has no lists, so the wake-ups the scripts push are left out: waiters of this process poll
//! (the memory backend offers no blocking waits).

use super::scripts::{Call, bad_call, micros, parse_int, parse_millis};
use super::{Data, Entry, NAME};
use crate::backend::{BackendError, ScriptValue};
use crate::script;
use crate::time::Moment;

/// Runs `call` if it is one of the fair lock's scripts.
pub(super) fn run(call: &Call<'_>, data: &mut Data) -> Option<Result<ScriptValue, BackendError>> {
    let sha = call.script.sha1();
    if sha == script::FAIR_ACQUIRE.sha1() {
        Some(acquire(call, data))
    } else if sha == script::FAIR_LEAVE.sha1() {
        Some(leave(call, data))
    } else if sha == script::FAIR_WAITERS.sha1() {
        Some(waiters(call, data))
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

/// `ZREM key member`, deleting the key once empty as Redis does.
fn zrem(data: &mut Data, key: &str, member: &str) -> bool {
    let Some(set) = data.sets.get_mut(key) else {
        return false;
    };
    let removed = set.remove(member);
    if set.is_empty() {
        data.sets.remove(key);
    }
    removed
}

/// `PTTL` of a sorted set: -2 when missing, -1 without a TTL.
fn set_pttl(data: &Data, key: &str, now: Moment) -> i64 {
    match data.sets.get(key) {
        None => -2,
        Some(set) => match set.expires_at {
            None => -1,
            Some(at) => i64::try_from((at - now).as_millis()).unwrap_or(i64::MAX),
        },
    }
}

fn acquire(call: &Call<'_>, data: &mut Data) -> Result<ScriptValue, BackendError> {
    let (key, queue, beats, counter) = match call.keys {
        [key, queue, beats, _signal] => (*key, *queue, *beats, None),
        [key, queue, beats, _signal, counter] => (*key, *queue, *beats, Some(*counter)),
        _ => return Err(wrong_arity(call)),
    };
    let [token, ttl_arg, join, _linger] = call.args else {
        return Err(wrong_arity(call));
    };
    let ttl = parse_millis(call.script, ttl_arg)?;
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let time = micros(call.wall);
    let now_ms = time.div_euclid(1000);
    if data.sets.contains_key(key) {
        return Err(BackendError::permanent(
            NAME,
            "WRONGTYPE Operation against a key holding the wrong kind of value",
        ));
    }
    // Waiters whose heartbeat expired lose their place.
    let dead: Vec<String> = data
        .sets
        .get(beats)
        .map(|set| {
            set.members()
                .filter(|(_, beat)| *beat <= now_ms)
                .map(|(waiter, _)| waiter.to_owned())
                .collect()
        })
        .unwrap_or_default();
    for waiter in &dead {
        zrem(data, queue, waiter);
        zrem(data, beats, waiter);
    }
    let fence_now = |data: &Data| -> Result<i64, BackendError> {
        match counter.and_then(|c| data.get(c)) {
            Some(c) => parse_int(call.script, Some(&c.value)),
            None => Ok(0),
        }
    };
    let granted = |fence: i64| {
        ScriptValue::Array(vec![
            ScriptValue::Int(1),
            ScriptValue::Int(fence),
            ScriptValue::Int(time),
        ])
    };
    let holder = data.get(key).map(|e| e.value.clone());
    if holder.as_deref() == Some(*token) {
        let fence = fence_now(data)?;
        data.insert(key.to_owned(), Entry::expiring(token, call.now, ttl));
        zrem(data, queue, token);
        zrem(data, beats, token);
        return Ok(granted(fence));
    }
    let head = data
        .sets
        .get(queue)
        .and_then(|set| set.first().map(|(waiter, _)| waiter.to_owned()));
    if holder.is_none() && head.as_deref().is_none_or(|head| head == *token) {
        zrem(data, queue, token);
        zrem(data, beats, token);
        let mut fence = 0;
        if let Some(counter) = counter {
            // As FENCED_ACQUIRE: max(counter + 1, TIME in µs).
            fence = fence_now(data)?.saturating_add(1).max(time);
            data.insert(counter.to_owned(), Entry::persistent(fence.to_string()));
        }
        data.insert(key.to_owned(), Entry::expiring(token, call.now, ttl));
        return Ok(granted(fence));
    }
    if *join == "1" {
        let set = data.sets.entry(queue.to_owned()).or_default();
        if set.score(token).is_none() {
            let ticket = set
                .max_score()
                .map_or(time, |last| last.saturating_add(1).max(time));
            set.insert(token, ticket);
        }
        data.sets
            .entry(beats.to_owned())
            .or_default()
            .insert(token, now_ms.saturating_add(ttl_ms));
        // The queue keys live as long as their longest heartbeat.
        for name in [queue, beats] {
            if set_pttl(data, name, call.now) < ttl_ms
                && let Some(set) = data.sets.get_mut(name)
            {
                set.expires_at = Some(call.now + ttl);
            }
        }
    }
    let pttl = match data.get(key) {
        Some(entry) => entry.pttl_millis(call.now),
        None => -2,
    };
    Ok(ScriptValue::Array(vec![
        ScriptValue::Int(0),
        ScriptValue::Int(pttl),
        ScriptValue::Int(time),
    ]))
}

fn leave(call: &Call<'_>, data: &mut Data) -> Result<ScriptValue, BackendError> {
    let [_key, queue, beats, _signal] = call.keys else {
        return Err(wrong_arity(call));
    };
    let [token, linger] = call.args else {
        return Err(wrong_arity(call));
    };
    // Checked as the script would use it, though no wake-up is pushed here.
    parse_millis(call.script, linger)?;
    let removed = zrem(data, queue, token);
    zrem(data, beats, token);
    Ok(ScriptValue::Int(i64::from(removed)))
}

fn waiters(call: &Call<'_>, data: &mut Data) -> Result<ScriptValue, BackendError> {
    let [queue, beats] = call.keys else {
        return Err(wrong_arity(call));
    };
    if !call.args.is_empty() {
        return Err(wrong_arity(call));
    }
    let now_ms = micros(call.wall).div_euclid(1000);
    let exists = [*queue, *beats]
        .iter()
        .filter(|name| data.sets.contains_key(**name) || data.contains_key(**name))
        .count();
    let live = data
        .sets
        .get(*queue)
        .map(|set| set.ordered())
        .unwrap_or_default()
        .into_iter()
        .filter(|(waiter, _)| {
            data.sets
                .get(*beats)
                .and_then(|set| set.score(waiter))
                .is_some_and(|beat| beat > now_ms)
        })
        .map(|(waiter, _)| ScriptValue::Str(waiter))
        .collect();
    Ok(ScriptValue::Array(vec![
        ScriptValue::Int(i64::try_from(exists).unwrap_or(0)),
        ScriptValue::Array(live),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LockBackend;
    use crate::memory::MemoryBackend;

    fn acquire_args<'a>(token: &'a str, join: &'a str) -> [&'a str; 4] {
        [token, "10000", join, "0"]
    }

    #[test]
    fn grants_in_ticket_order_and_leaves_nothing_behind() {
        futures::executor::block_on(async {
            let store = MemoryBackend::new();
            let keys = ["k", "q", "b", "s"];
            let run = |token: &'static str, join: &'static str| {
                let store = store.clone();
                async move {
                    store
                        .eval_script(&script::FAIR_ACQUIRE, &keys, &acquire_args(token, join))
                        .await
                        .unwrap()
                }
            };
            let first = |reply: ScriptValue| match reply {
                ScriptValue::Array(items) => items[0].clone(),
                other => panic!("{other:?}"),
            };
            assert_eq!(first(run("a", "1").await), ScriptValue::Int(1));
            assert_eq!(first(run("b", "1").await), ScriptValue::Int(0));
            assert_eq!(first(run("c", "1").await), ScriptValue::Int(0));
            store.delete("k");
            // c is not the head: not granted, while b is.
            assert_eq!(first(run("c", "1").await), ScriptValue::Int(0));
            assert_eq!(first(run("d", "0").await), ScriptValue::Int(0));
            assert_eq!(first(run("b", "1").await), ScriptValue::Int(1));
            assert_eq!(store.members("q").len(), 1);
            store.delete("k");
            assert_eq!(first(run("c", "1").await), ScriptValue::Int(1));
            assert!(store.members("q").is_empty() && store.members("b").is_empty());
        });
    }
}
