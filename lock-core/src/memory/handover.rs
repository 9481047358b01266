//! The hand-over scripts ([`HAND_OVER`](script::HAND_OVER),
//! [`FENCED_HAND_OVER`](script::FENCED_HAND_OVER)) natively, with the semantics of their Lua.

use super::scripts::{Call, bad_call, micros, parse_int, parse_millis};
use super::{Data, Entry};
use crate::backend::{BackendError, ScriptValue};
use crate::script;

/// Runs `call` if it is one of the hand-over scripts.
pub(super) fn run(call: &Call<'_>, data: &mut Data) -> Option<Result<ScriptValue, BackendError>> {
    let sha = call.script.sha1();
    let fenced = if sha == script::HAND_OVER.sha1() {
        false
    } else if sha == script::FENCED_HAND_OVER.sha1() {
        true
    } else {
        return None;
    };
    Some(hand_over(call, data, fenced))
}

fn hand_over(call: &Call<'_>, data: &mut Data, fenced: bool) -> Result<ScriptValue, BackendError> {
    let (key, counter, old, new, millis) = match (call.keys, call.args, fenced) {
        ([key], [old, new, millis], false) => (*key, None, *old, *new, *millis),
        ([key, counter], [old, new, millis], true) => (*key, Some(*counter), *old, *new, *millis),
        _ => {
            return Err(bad_call(
                call.script,
                "was called with the wrong number of keys or arguments",
            ));
        }
    };
    let ttl = parse_millis(call.script, millis)?;
    let holder = data.get(key).map(|e| e.value.clone());
    // 1 handed over (or a re-sent hand-over of ours), 0 another token's, -1 no key; and the fence.
    let (code, fence) = match holder.as_deref() {
        Some(holder) if holder == new => {
            // A re-sent request: the TTL again, and the fence issued then.
            data.insert(key.to_owned(), Entry::expiring(new, call.now, ttl));
            let fence = match counter {
                Some(counter) => {
                    parse_int(call.script, data.get(counter).map(|c| c.value.as_str()))?
                }
                None => 0,
            };
            (1, fence)
        }
        Some(holder) if holder == old => {
            let fence = match counter {
                Some(counter) => {
                    // As the script: max(counter + 1, TIME in µs), which becomes the counter.
                    let current = match data.get(counter) {
                        Some(c) => parse_int(call.script, Some(&c.value))?,
                        None => 0,
                    };
                    let fence = current.saturating_add(1).max(micros(call.wall));
                    data.insert(counter.to_owned(), Entry::persistent(fence.to_string()));
                    fence
                }
                None => 0,
            };
            data.insert(key.to_owned(), Entry::expiring(new, call.now, ttl));
            (1, fence)
        }
        Some(_) => (0, 0),
        None => (-1, 0),
    };
    Ok(match fenced {
        false => ScriptValue::Int(code),
        true => ScriptValue::Array(vec![ScriptValue::Int(code), ScriptValue::Int(fence)]),
    })
}
