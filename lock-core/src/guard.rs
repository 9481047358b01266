//! [`LockGuard`]: proof of one acquisition, and everything a holder can do with it.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::backend::LockBackend;
use crate::error::{LockError, Result};
use crate::script::{self, Script};
use crate::time::{to_millis, validity_deadline};

/// One acquisition of a [`RedisLock`](crate::RedisLock): its token, and the operations that need it.
///
/// Every operation checks the token atomically in Lua, so a guard whose lock expired and was taken by
/// someone else can never extend, renew or release the new holder's lock: it answers `Ok(false)`.
///
/// Dropping a guard without [`release`](Self::release) never blocks: where the backend can spawn (both
/// Redis adapters can, on tokio), the lock is released in the background; otherwise its TTL frees it.
pub struct LockGuard {
    lease: Lease,
    ttl: Duration,
    ttl_arg: String,
    valid_until: Mutex<Instant>,
}

impl LockGuard {
    pub(crate) fn new(lease: Lease, ttl: Duration, ttl_ms: u64, sent_at: Instant) -> Self {
        Self {
            lease,
            ttl,
            ttl_arg: ttl_ms.to_string(),
            valid_until: Mutex::new(validity_deadline(sent_at, ttl)),
        }
    }

    /// This acquisition's token: the exact value of the Redis key while the lock is ours.
    pub fn token(&self) -> &str {
        &self.lease.token
    }

    /// The lock key, exactly as given.
    pub fn key(&self) -> &str {
        &self.lease.key
    }

    /// How long the lock is still ours by the local monotonic clock: measured from before the request
    /// that granted or last renewed it was sent, less a drift allowance (1% of the TTL plus 2 ms). Zero
    /// once it has run out.
    pub fn valid_for(&self) -> Duration {
        self.valid_until().saturating_duration_since(Instant::now())
    }

    /// Whether the lock is still held with this guard's token.
    ///
    /// Answers `Ok(false)` without asking Redis once [`valid_for`](Self::valid_for) is zero. A `true` is a
    /// snapshot: checking then writing elsewhere is a race under pauses.
    pub async fn is_owner(&self) -> Result<bool> {
        if self.valid_for().is_zero() {
            return Ok(false);
        }
        self.eval_flag(&script::IS_OWNER, &[]).await
    }

    /// Adds `by` to the lock's remaining TTL. `Ok(false)` when the lock is no longer ours (expired, taken
    /// over or released): an expired lock is never re-created. A zero `by` is
    /// [`LockError::InvalidArgument`] and nothing is sent.
    pub async fn extend(&self, by: Duration) -> Result<bool> {
        let by_ms = to_millis("extend", by)?;
        let extended = self
            .eval_flag(&script::EXTEND, &[&by_ms.to_string()])
            .await?;
        if extended {
            let mut valid_until = self.lock_validity();
            *valid_until += Duration::from_millis(by_ms);
        }
        Ok(extended)
    }

    /// Resets the lock's TTL to the lock's own timeout. `Ok(false)` when the lock is no longer ours; an
    /// expired lock is never re-created.
    pub async fn renew(&self) -> Result<bool> {
        let sent_at = Instant::now();
        let renewed = self.eval_flag(&script::RENEW, &[&self.ttl_arg]).await?;
        if renewed {
            let mut valid_until = self.lock_validity();
            *valid_until = (*valid_until).max(validity_deadline(sent_at, self.ttl));
        }
        Ok(renewed)
    }

    /// Releases the lock. `Ok(true)` when it was still ours, `Ok(false)` when it had already expired or
    /// been taken over (exclusion was not guaranteed until now).
    ///
    /// If this future is dropped before Redis answered, or the request fails, the release is retried in
    /// the background where the backend can spawn.
    pub async fn release(self) -> Result<bool> {
        let released = self.eval_flag(&script::RELEASE, &[]).await?;
        self.lease.disarm();
        Ok(released)
    }

    fn valid_until(&self) -> Instant {
        *self.lock_validity()
    }

    fn lock_validity(&self) -> std::sync::MutexGuard<'_, Instant> {
        // The critical sections only assign an Instant; a poisoned value is still meaningful.
        self.valid_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn eval_flag(&self, script: &Script, extra_args: &[&str]) -> Result<bool> {
        let lease = &self.lease;
        let mut args = Vec::with_capacity(1 + extra_args.len());
        args.push(&*lease.token);
        args.extend_from_slice(extra_args);
        let reply = lease
            .backend
            .eval_script(script, &[&lease.key], &args)
            .await
            .map_err(|source| LockError::backend_failed(&lease.key, source))?;
        Ok(reply.as_int() == Some(1))
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &self.lease.key)
            .field("token", &self.lease.token)
            .field("ttl", &self.ttl)
            .field("valid_for", &self.valid_for())
            .finish()
    }
}

/// A token that may be held in Redis, released in the background when dropped while armed.
///
/// Used both for an acquisition in flight (the request may reach the server after its future was
/// dropped) and inside every guard.
pub(crate) struct Lease {
    backend: Arc<dyn LockBackend>,
    key: Arc<str>,
    token: Arc<str>,
    armed: bool,
}

impl Lease {
    pub(crate) fn new(backend: Arc<dyn LockBackend>, key: Arc<str>, token: Arc<str>) -> Self {
        Self {
            backend,
            key,
            token,
            armed: true,
        }
    }

    /// Nothing is held under this token any more (or nothing was ever set): skip the background release.
    pub(crate) fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let backend = self.backend.clone();
        let key = self.key.clone();
        let token = self.token.clone();
        let release = Box::pin(async move {
            match backend
                .eval_script(&script::RELEASE, &[&key], &[&token])
                .await
            {
                Ok(_) => tracing::debug!(%key, "released a dropped lock in the background"),
                Err(error) => tracing::warn!(
                    %key,
                    %error,
                    "background release of a dropped lock failed; its TTL will free it"
                ),
            }
        });
        if !self.backend.spawn_detached(release) {
            tracing::debug!(key = %self.key, "no runtime to release a dropped lock; its TTL will free it");
        }
    }
}
