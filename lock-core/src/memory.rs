//! [`MemoryBackend`]: the lock algorithm without a server, for unit tests and single-process use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use futures::future::BoxFuture;

use crate::backend::{BackendError, LockBackend, ScriptValue};
use crate::queue::LocalQueues;
use crate::script::{self, Script};
use crate::time::Moment;

const NAME: &str = "memory";

/// An in-process backend that implements redlease's scripts natively, with Redis's semantics.
///
/// Locks taken through one `MemoryBackend` (and its clones, which share state) exclude each other within
/// this process only. It runs on any executor, and passes the same conformance suite as the Redis
/// adapters. Expiry runs on the lease clock ([`Moment::now`], which counts time spent suspended, as a
/// Redis server's clock does); absolute expiries (`PEXPIRETIME`) and the fenced acquire script's `TIME`
/// on the system's wall clock (see [`with_clock_offset`](Self::with_clock_offset)).
#[derive(Debug, Clone, Default)]
pub struct MemoryBackend {
    entries: Arc<Mutex<HashMap<String, Entry>>>,
    queues: Arc<LocalQueues>,
    /// Added to the system clock where a script reads `TIME`, in microseconds.
    clock_offset_micros: i64,
}

#[derive(Debug)]
struct Entry {
    value: String,
    /// `None` for keys without a TTL, like fence counters.
    expires_at: Option<Moment>,
}

impl Entry {
    fn expiring(value: &str, ttl: Duration) -> Self {
        Self {
            value: value.to_owned(),
            expires_at: Some(Moment::now() + ttl),
        }
    }

    fn persistent(value: String) -> Self {
        Self {
            value,
            expires_at: None,
        }
    }

    fn pttl_millis(&self) -> i64 {
        match self.expires_at {
            Some(at) => {
                let left = (at - Moment::now()).as_millis();
                i64::try_from(left).unwrap_or(i64::MAX)
            }
            None => -1,
        }
    }
}

impl MemoryBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty backend whose server clock (what a script reads with `TIME`: the fenced acquire's
    /// clock) runs `offset_micros` microseconds ahead of the system clock (behind, when negative).
    ///
    /// For tests and simulations of masters whose wall clocks disagree, such as a
    /// [`Redlock`](crate::Redlock) master whose clock is ten minutes ahead. Expiry is unaffected: TTLs
    /// run on the monotonic clock, as Redis's do on a server whose wall clock is merely set wrong.
    pub fn with_clock_offset(offset_micros: i64) -> Self {
        Self {
            clock_offset_micros: offset_micros,
            ..Self::default()
        }
    }

    /// The current value of `key`, if it exists and has not expired (like `GET`).
    pub fn get(&self, key: &str) -> Option<String> {
        self.live_entries().get(key).map(|e| e.value.clone())
    }

    /// The remaining time to live of `key`, if it exists and has one (like `PTTL`).
    pub fn ttl(&self, key: &str) -> Option<Duration> {
        let now = Moment::now();
        self.live_entries()
            .get(key)
            .and_then(|e| e.expires_at)
            .map(|at| at.saturating_duration_since(now))
    }

    /// Sets `key` to `value` for `ttl`, whatever it held (like `SET key value PX ttl`): for tests that
    /// simulate another holder.
    pub fn set(&self, key: &str, value: &str, ttl: Duration) {
        self.live_entries()
            .insert(key.to_owned(), Entry::expiring(value, ttl));
    }

    /// Deletes `key` (like `DEL`): for tests that simulate an expiry. Returns whether it existed.
    pub fn delete(&self, key: &str) -> bool {
        self.live_entries().remove(key).is_some()
    }

    /// The map with every expired entry removed: lazy expiry, as Redis does on access.
    fn live_entries(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // No code below panics while holding the lock; recover rather than poison every later call.
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let now = Moment::now();
        entries.retain(|_, e| e.expires_at.is_none_or(|at| at > now));
        entries
    }

    fn run_script(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<ScriptValue, BackendError> {
        let sha = script.sha1();
        let mut entries = self.live_entries();
        let held_by = |entries: &HashMap<String, Entry>, key: &str, token: &str| {
            entries.get(key).is_some_and(|e| e.value == token)
        };
        let flag = |yes: bool| ScriptValue::Int(i64::from(yes));
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
                let later = Moment::now() + millis;
                written(entries.get_mut(*key).filter(|e| e.value == *token), |at| {
                    *at = (*at).max(later)
                })
            }
            ([key], [token, target]) if sha == script::EXTEND.sha1() => {
                let target = parse_millis(script, target)?;
                let later = Moment::now() + target.saturating_sub(wall_clock());
                written(entries.get_mut(*key).filter(|e| e.value == *token), |at| {
                    *at = (*at).max(later)
                })
            }
            ([key], [token]) if sha == script::EXPIRY.sha1() => {
                written(entries.get_mut(*key).filter(|e| e.value == *token), |_| {})
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
                        entries.insert((*key).to_owned(), Entry::expiring(token, millis));
                        flag(true)
                    }
                }
            }
            ([key, counter], [token, millis]) if sha == script::FENCED_ACQUIRE.sha1() => {
                let millis = parse_millis(script, millis)?;
                let now = self.server_clock_micros();
                let (granted, reply) = match entries.get(*key) {
                    Some(holder) if holder.value == *token => {
                        let fence =
                            parse_int(script, entries.get(*counter).map(|c| c.value.as_str()))?;
                        entries.insert((*key).to_owned(), Entry::expiring(token, millis));
                        (true, fence)
                    }
                    Some(holder) => (false, holder.pttl_millis()),
                    None => {
                        // As the script: max(counter + 1, TIME in µs).
                        let counter_value = match entries.get(*counter) {
                            Some(c) => parse_int(script, Some(&c.value))?,
                            None => 0,
                        };
                        let fence = counter_value.saturating_add(1).max(now);
                        entries.insert((*counter).to_owned(), Entry::persistent(fence.to_string()));
                        entries.insert((*key).to_owned(), Entry::expiring(token, millis));
                        (true, fence)
                    }
                };
                ScriptValue::Array(vec![
                    flag(granted),
                    ScriptValue::Int(reply),
                    ScriptValue::Int(now),
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

/// Deletes `key` if it holds `token`, answering as the release scripts do: 1 deleted, 0 another
/// token's, -1 no key.
fn release_if_held(entries: &mut HashMap<String, Entry>, key: &str, token: &str) -> ScriptValue {
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
/// answers `{pttl, pexpiretime}`; otherwise 0.
fn written(entry: Option<&mut Entry>, update: impl FnOnce(&mut Moment)) -> ScriptValue {
    // As the scripts' `pttl > 0`: a key without a TTL, or with less than a millisecond left, is not
    // renewed.
    let Some(entry) = entry.filter(|e| e.pttl_millis() > 0) else {
        return ScriptValue::Int(0);
    };
    if let Some(at) = entry.expires_at.as_mut() {
        update(at);
    }
    let pttl = entry.pttl_millis();
    let expiry = wall_clock().as_millis() + u128::from(pttl.unsigned_abs());
    ScriptValue::Array(vec![
        ScriptValue::Int(pttl),
        ScriptValue::Int(i64::try_from(expiry).unwrap_or(i64::MAX)),
    ])
}

/// The server's wall clock, for absolute expiries: time since the Unix epoch.
fn wall_clock() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

impl MemoryBackend {
    /// The server clock a script reads with `TIME`, in microseconds since 1970: `clock_seed` plus
    /// this backend's offset.
    ///
    /// The wall clock, deliberately, as Redis's `TIME` is: fences are compared with fences issued before
    /// a restart or failover, which only a clock that outlives the process can do. (`clock_seed` reads
    /// `SystemTime`; it is to be read through lock-core's clock abstraction once there is one.)
    fn server_clock_micros(&self) -> i64 {
        clock_seed().saturating_add(self.clock_offset_micros)
    }
}

/// Where a missing fence counter starts: the clock in microseconds, as the Lua script does with `TIME`.
fn clock_seed() -> i64 {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros();
    i64::try_from(micros).unwrap_or(i64::MAX / 2)
}

fn parse_millis(script: &Script, arg: &str) -> Result<Duration, BackendError> {
    arg.parse()
        .map(Duration::from_millis)
        .map_err(|_| bad_call(script, "expects milliseconds"))
}

fn parse_int(script: &Script, value: Option<&str>) -> Result<i64, BackendError> {
    value
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| bad_call(script, "found a value that is not an integer"))
}

fn bad_call(script: &Script, what: &str) -> BackendError {
    BackendError::permanent(NAME, format!("script {} {what}", script.name()))
}

#[async_trait]
impl LockBackend for MemoryBackend {
    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, BackendError> {
        let mut entries = self.live_entries();
        if let Some(existing) = entries.get(key) {
            return Ok(existing.value == value);
        }
        entries.insert(key.to_owned(), Entry::expiring(value, ttl));
        Ok(true)
    }

    async fn eval_script(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<ScriptValue, BackendError> {
        self.run_script(script, keys, args)
    }

    /// Runs the script; there are no replicas, so none acknowledges: a lock that asks for replicas
    /// always gets [`LockError::NotReplicated`](crate::LockError::NotReplicated) here.
    async fn eval_script_replicated(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
        _replicas: usize,
        _timeout: Duration,
    ) -> Result<(ScriptValue, usize), BackendError> {
        self.run_script(script, keys, args).map(|reply| (reply, 0))
    }

    /// Memory operations complete without waiting, so a background release normally finishes right
    /// here; one that must wait (behind a wrapper that delays calls, say) finishes on a thread of its own.
    /// Either way the caller never blocks and no runtime is needed.
    fn local_queues(&self) -> Option<&LocalQueues> {
        Some(&self.queues)
    }

    /// Clones share one store, so they answer one identity.
    fn instance_id(&self) -> usize {
        Arc::as_ptr(&self.entries).cast::<()>().addr()
    }

    fn spawn_detached(&self, task: BoxFuture<'static, ()>) -> bool {
        let mut task = task;
        if (&mut task).now_or_never().is_some() {
            return true;
        }
        std::thread::Builder::new()
            .name("redlease-memory-release".into())
            .spawn(move || futures::executor::block_on(task))
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire() {
        let backend = MemoryBackend::new();
        backend.set("k", "v", Duration::from_millis(30));
        assert_eq!(backend.get("k").as_deref(), Some("v"));
        assert!(backend.ttl("k").unwrap() <= Duration::from_millis(30));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(backend.get("k"), None);
        assert_eq!(backend.ttl("k"), None);
    }

    #[test]
    fn unknown_scripts_are_refused() {
        let backend = MemoryBackend::new();
        backend.set("k", "t", Duration::from_secs(5));
        let custom = Script::new("custom", "return 1");
        let err =
            futures::executor::block_on(backend.eval_script(&custom, &["k"], &["t"])).unwrap_err();
        assert_eq!(err.backend(), "memory");
        assert!(!err.is_transient());
    }
}
