//! [`MemoryBackend`]: the lock algorithm without a server, for unit tests and single-process use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::FutureExt;
use futures::future::BoxFuture;

use crate::backend::{BackendError, LockBackend, ScriptValue};
use crate::script::{self, Script};

const NAME: &str = "memory";

/// An in-process backend that implements redlease's scripts natively, with Redis's semantics.
///
/// Locks taken through one `MemoryBackend` (and its clones, which share state) exclude each other within
/// this process only. It runs on any executor, and passes the same conformance suite as the Redis
/// adapters. Expiry uses the monotonic clock.
#[derive(Debug, Clone, Default)]
pub struct MemoryBackend {
    entries: Arc<Mutex<HashMap<String, Entry>>>,
}

#[derive(Debug)]
struct Entry {
    value: String,
    expires_at: Instant,
}

impl MemoryBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current value of `key`, if it exists and has not expired (like `GET`).
    pub fn get(&self, key: &str) -> Option<String> {
        self.live_entries().get(key).map(|e| e.value.clone())
    }

    /// The remaining time to live of `key`, if it exists (like `PTTL`).
    pub fn ttl(&self, key: &str) -> Option<Duration> {
        let now = Instant::now();
        self.live_entries()
            .get(key)
            .map(|e| e.expires_at.saturating_duration_since(now))
    }

    /// Sets `key` to `value` for `ttl`, whatever it held (like `SET key value PX ttl`): for tests that
    /// simulate another holder.
    pub fn set(&self, key: &str, value: &str, ttl: Duration) {
        let expires_at = Instant::now() + ttl;
        self.live_entries().insert(
            key.to_owned(),
            Entry {
                value: value.to_owned(),
                expires_at,
            },
        );
    }

    /// Deletes `key` (like `DEL`): for tests that simulate an expiry. Returns whether it existed.
    pub fn delete(&self, key: &str) -> bool {
        self.live_entries().remove(key).is_some()
    }

    /// The map with every expired entry removed: lazy expiry, as Redis does on access.
    fn live_entries(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // No code below panics while holding the lock; recover rather than poison every later call.
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        entries.retain(|_, e| e.expires_at > now);
        entries
    }

    fn run_script(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<i64, BackendError> {
        let (key, token) = match (keys, args) {
            ([key], [token, ..]) => (*key, *token),
            _ => return Err(bad_call(script, "expects one key and a token")),
        };
        let millis_arg = || -> Result<u64, BackendError> {
            args.get(1)
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| bad_call(script, "expects milliseconds as its second argument"))
        };
        let mut entries = self.live_entries();
        let Some(entry) = entries.get_mut(key).filter(|e| e.value == token) else {
            return Ok(0);
        };
        let sha = script.sha1();
        if sha == script::IS_OWNER.sha1() {
            Ok(1)
        } else if sha == script::RELEASE.sha1() {
            entries.remove(key);
            Ok(1)
        } else if sha == script::EXTEND.sha1() {
            entry.expires_at += Duration::from_millis(millis_arg()?);
            Ok(1)
        } else if sha == script::RENEW.sha1() {
            entry.expires_at = Instant::now() + Duration::from_millis(millis_arg()?);
            Ok(1)
        } else {
            Err(BackendError::permanent(
                NAME,
                format!(
                    "NOSCRIPT the memory backend runs only redlease's own scripts, not {:?}",
                    script.name()
                ),
            ))
        }
    }
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
        entries.insert(
            key.to_owned(),
            Entry {
                value: value.to_owned(),
                expires_at: Instant::now() + ttl,
            },
        );
        Ok(true)
    }

    async fn eval_script(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<ScriptValue, BackendError> {
        self.run_script(script, keys, args).map(ScriptValue::Int)
    }

    /// Memory operations complete without waiting, so a background release runs to completion right
    /// here, without a runtime.
    fn spawn_detached(&self, task: BoxFuture<'static, ()>) -> bool {
        task.now_or_never().is_some()
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
