//! The scripts of [`MemoryBackend`], implemented natively with Redis's semantics.

use std::collections::HashMap;
use std::time::Duration;

use super::{Data, Entry, MemoryBackend, NAME};
use crate::backend::{BackendError, ScriptValue};
use crate::script::{self, Script};
use crate::time::Moment;

impl MemoryBackend {
    pub(super) fn run_script(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<ScriptValue, BackendError> {
        let sha = script.sha1();
        let mut entries = self.live_entries();
        // One reading of each clock per script, as a Lua script sees one instant.
        let now = self.clock.now();
        let wall = self.clock.wall();
        let held_by = |entries: &HashMap<String, Entry>, key: &str, token: &str| {
            entries.get(key).is_some_and(|e| e.value == token)
        };
        let flag = |yes: bool| ScriptValue::Int(i64::from(yes));
        // The scripts of the primitives kept in sorted sets, each in its own file.
        let call = Call {
            script,
            keys,
            args,
            now,
            wall,
        };
        for run in SET_SCRIPTS {
            if let Some(reply) = run(&call, &mut entries) {
                return reply;
            }
        }
        let reply = match (keys, args) {
            ([key], [token]) if sha == script::IS_OWNER.sha1() => {
                flag(held_by(&entries, key, token))
            }
            // One process: local waiters are woken by the local queue, so the signal is not needed.
            ([key, _signal], [token, _linger]) if sha == script::RELEASE_AND_SIGNAL.sha1() => {
                release_if_held(&mut entries, key, token)
            }
            ([key], [token]) if sha == script::RELEASE.sha1() => {
                release_if_held(&mut entries, key, token)
            }
            // `PEXPIRE .. GT` and `PEXPIREAT .. GT`: only ever later.
            ([key], [token, millis]) if sha == script::RENEW.sha1() => {
                let millis = parse_millis(script, millis)?;
                let later = now + millis;
                let entry = entries.get_mut(*key).filter(|e| e.value == *token);
                written(entry, now, wall, |at| *at = (*at).max(later))
            }
            ([key], [token, target]) if sha == script::EXTEND.sha1() => {
                let target = parse_millis(script, target)?;
                let later = now + target.saturating_sub(wall);
                let entry = entries.get_mut(*key).filter(|e| e.value == *token);
                written(entry, now, wall, |at| *at = (*at).max(later))
            }
            ([key], [token]) if sha == script::EXPIRY.sha1() => {
                let entry = entries.get_mut(*key).filter(|e| e.value == *token);
                written(entry, now, wall, |_| {})
            }
            ([], []) if sha == script::SERVER_ID.sha1() => {
                ScriptValue::Str(format!("memory-{}", self.server_id))
            }
            ([key], []) if sha == script::READ.sha1() => match entries.get(*key) {
                Some(e) => ScriptValue::Str(e.value.clone()),
                None => ScriptValue::Nil,
            },
            ([key], [token, millis]) if sha == script::ACQUIRE.sha1() => {
                let millis = parse_millis(script, millis)?;
                match entries.get(*key) {
                    Some(holder) if holder.value != *token => flag(false),
                    // Free, or a re-sent request of ours: (re)set with the full TTL.
                    _ => {
                        entries.insert((*key).to_owned(), Entry::expiring(token, now, millis));
                        flag(true)
                    }
                }
            }
            ([key, counter], [token, millis]) if sha == script::FENCED_ACQUIRE.sha1() => {
                let millis = parse_millis(script, millis)?;
                let time = micros(wall);
                let (granted, reply) = match entries.get(*key) {
                    Some(holder) if holder.value == *token => {
                        let fence =
                            parse_int(script, entries.get(*counter).map(|c| c.value.as_str()))?;
                        entries.insert((*key).to_owned(), Entry::expiring(token, now, millis));
                        (true, fence)
                    }
                    Some(holder) => (false, holder.pttl_millis(now)),
                    None => {
                        // As the script: max(counter + 1, TIME in µs).
                        let counter_value = match entries.get(*counter) {
                            Some(c) => parse_int(script, Some(&c.value))?,
                            None => 0,
                        };
                        let fence = counter_value.saturating_add(1).max(time);
                        entries.insert((*counter).to_owned(), Entry::persistent(fence.to_string()));
                        entries.insert((*key).to_owned(), Entry::expiring(token, now, millis));
                        (true, fence)
                    }
                };
                ScriptValue::Array(vec![
                    flag(granted),
                    ScriptValue::Int(reply),
                    ScriptValue::Int(time),
                ])
            }
            ([key, counter], [token, fence]) if sha == script::FENCE_RAISE.sha1() => {
                let fence = parse_int(script, Some(*fence))?;
                if held_by(&entries, key, token) {
                    let current = match entries.get(*counter) {
                        Some(c) => parse_int(script, Some(&c.value))?,
                        None => 0,
                    };
                    if current < fence {
                        entries.insert((*counter).to_owned(), Entry::persistent(fence.to_string()));
                    }
                    flag(true)
                } else {
                    flag(false)
                }
            }
            ([resource, mark], [value, fence, token]) if sha == script::FENCED_SET.sha1() => {
                let fence = parse_int(script, Some(*fence))?;
                // As the script: the mark is "<fence>:<token>"; a bare fence (an older mark) has no
                // holder, so only a greater fence passes it.
                let refused = match entries.get(*mark) {
                    None => false,
                    Some(m) => {
                        let (newest, holder) = match m.value.split_once(':') {
                            Some((newest, holder)) => (newest, Some(holder)),
                            None => (m.value.as_str(), None),
                        };
                        let newest = parse_int(script, Some(newest))?;
                        newest > fence || (newest == fence && holder != Some(*token))
                    }
                };
                if refused {
                    flag(false)
                } else {
                    entries.insert(
                        (*resource).to_owned(),
                        Entry::persistent((*value).to_owned()),
                    );
                    entries.insert(
                        (*mark).to_owned(),
                        Entry::persistent(format!("{fence}:{token}")),
                    );
                    flag(true)
                }
            }
            _ if [
                &*script::IS_OWNER,
                &*script::RELEASE,
                &*script::RELEASE_AND_SIGNAL,
                &*script::EXTEND,
                &*script::RENEW,
                &*script::EXPIRY,
                &*script::READ,
                &*script::ACQUIRE,
                &*script::FENCED_ACQUIRE,
                &*script::FENCE_RAISE,
                &*script::FENCED_SET,
            ]
            .iter()
            .any(|known| known.sha1() == sha) =>
            {
                return Err(bad_call(
                    script,
                    "was called with the wrong number of keys or arguments",
                ));
            }
            _ => {
                return Err(BackendError::permanent(
                    NAME,
                    format!(
                        "NOSCRIPT the memory backend runs only redlease's own scripts, not {:?}",
                        script.name()
                    ),
                ));
            }
        };
        Ok(reply)
    }
}

/// One script call as a native implementation sees it: the script, its keys and arguments, and the
/// one reading of each clock the whole script sees.
pub(super) struct Call<'a> {
    pub(super) script: &'a Script,
    pub(super) keys: &'a [&'a str],
    pub(super) args: &'a [&'a str],
    /// The store's clock, what keys expire by.
    pub(super) now: Moment,
    /// The wall clock, what `TIME` answers.
    pub(super) wall: Duration,
}

/// A native implementation of some scripts: `None` when `call` is not one of its scripts, otherwise
/// the reply (an error for a known script called with the wrong keys or arguments).
type SetScript = fn(&Call<'_>, &mut Data) -> Option<Result<ScriptValue, BackendError>>;

/// The native implementations of the scripts of semaphores, read-write locks and fair locks.
const SET_SCRIPTS: &[SetScript] = &[
    super::shares::run,
    // Fair lock.
    super::fair::run,
    // Read-write locks.
    super::rwlock::run,
    // Inspection.
    super::inspect::run,
    // Batched renewals (issue 13).
    super::renew_many::run,
    // Hand-over in one round trip.
    super::handover::run,
];

/// Deletes `key` if it holds `token`, answering as the release scripts do: 1 deleted, 0 another
/// token's, -1 no key.
fn release_if_held(entries: &mut Data, key: &str, token: &str) -> ScriptValue {
    ScriptValue::Int(match entries.get(key) {
        Some(e) if e.value == token => {
            entries.remove(key);
            1
        }
        Some(_) => 0,
        None => -1,
    })
}

/// The token-checked TTL scripts: when `entry` (ours) has a TTL, applies `update` to its expiry and
/// answers `{pttl, pexpiretime}` (`PEXPIRETIME` on the wall clock `wall`); otherwise 0.
fn written(
    entry: Option<&mut Entry>,
    now: Moment,
    wall: Duration,
    update: impl FnOnce(&mut Moment),
) -> ScriptValue {
    // As the scripts' `pttl > 0`: a key without a TTL, or with less than a millisecond left, is not
    // renewed.
    let Some(entry) = entry.filter(|e| e.pttl_millis(now) > 0) else {
        return ScriptValue::Int(0);
    };
    if let Some(at) = entry.expires_at.as_mut() {
        update(at);
    }
    let pttl = entry.pttl_millis(now);
    let expiry = wall.as_millis() + u128::from(pttl.unsigned_abs());
    ScriptValue::Array(vec![
        ScriptValue::Int(pttl),
        ScriptValue::Int(i64::try_from(expiry).unwrap_or(i64::MAX)),
    ])
}

/// The wall clock in microseconds, as `TIME` answers it: where a missing fence counter starts.
///
/// The wall clock, deliberately, as Redis's `TIME` is: fences are compared with fences issued before a
/// restart or failover, which only a clock that outlives the process can do.
pub(super) fn micros(wall: Duration) -> i64 {
    i64::try_from(wall.as_micros()).unwrap_or(i64::MAX / 2)
}

pub(super) fn parse_millis(script: &Script, arg: &str) -> Result<Duration, BackendError> {
    arg.parse()
        .map(Duration::from_millis)
        .map_err(|_| bad_call(script, "expects milliseconds"))
}

pub(super) fn parse_int(script: &Script, value: Option<&str>) -> Result<i64, BackendError> {
    value
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| bad_call(script, "found a value that is not an integer"))
}

pub(super) fn bad_call(script: &Script, what: &str) -> BackendError {
    BackendError::permanent(NAME, format!("script {} {what}", script.name()))
}
