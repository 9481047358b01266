//! [`RENEW_MANY`](script::RENEW_MANY) natively, with the semantics of its Lua: each key renewed as
//! [`RENEW`](script::RENEW) renews it alone, one reply per key.

use super::scripts::{Call, bad_call, parse_millis};
use super::{Data, NAME};
use crate::backend::{BackendError, ScriptValue};
use crate::script;

/// Runs `call` if it is the batched renewal.
pub(super) fn run(call: &Call<'_>, data: &mut Data) -> Option<Result<ScriptValue, BackendError>> {
    (call.script.sha1() == script::RENEW_MANY.sha1()).then(|| renew_many(call, data))
}

fn renew_many(call: &Call<'_>, data: &mut Data) -> Result<ScriptValue, BackendError> {
    let Some((ttl, tokens)) = call.args.split_first() else {
        return Err(wrong_arity(call));
    };
    if tokens.len() != call.keys.len() {
        return Err(wrong_arity(call));
    }
    let ttl = parse_millis(call.script, ttl)?;
    // `GET` on a sorted set fails the whole script, as in Redis (nothing was written before: a
    // script's error does not undo what it wrote, so look first, as `GET` does at that key).
    if call.keys.iter().any(|key| data.sets.contains_key(*key)) {
        return Err(BackendError::permanent(
            NAME,
            "WRONGTYPE Operation against a key holding the wrong kind of value",
        ));
    }
    let later = call.now + ttl;
    let replies = call
        .keys
        .iter()
        .zip(tokens)
        .map(|(key, token)| {
            let entry = data
                .get_mut(*key)
                .filter(|e| e.value == *token && e.pttl_millis(call.now) > 0);
            let Some(entry) = entry else {
                return ScriptValue::Int(0);
            };
            // `PEXPIRE .. GT`: only ever later.
            if let Some(at) = entry.expires_at.as_mut() {
                *at = (*at).max(later);
            }
            let pttl = entry.pttl_millis(call.now);
            let expiry = call.wall.as_millis() + u128::from(pttl.unsigned_abs());
            ScriptValue::Array(vec![
                ScriptValue::Int(pttl),
                ScriptValue::Int(i64::try_from(expiry).unwrap_or(i64::MAX)),
            ])
        })
        .collect();
    Ok(ScriptValue::Array(replies))
}

fn wrong_arity(call: &Call<'_>) -> BackendError {
    bad_call(
        call.script,
        "was called with the wrong number of keys or arguments",
    )
}
