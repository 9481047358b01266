//! The blocking [`RedisLock`] and its [`LockGuard`].

use std::sync::Arc;
use std::time::Duration;

use lock_core::{LockBackend, Result};

use super::guard::{Shell, finish_run, guard_methods};
use super::runtime::call;
use super::settings;

/// A distributed lock on one Redis key, for synchronous code: [`crate::RedisLock`] with every
/// operation blocking the calling thread instead of returning a future.
///
/// Built exactly as the async lock is, from the same backend values; each operation runs the async
/// one on the blocking runtime (see [the module](super)) and waits for its result. Cloning is cheap
/// and shares the configuration, never ownership.
#[derive(Debug, Clone)]
pub struct RedisLock {
    inner: lock_core::RedisLock,
}

impl RedisLock {
    /// A lock on `key` through `backend`, with a 30 s TTL and a 30 s acquisition deadline (see
    /// [`crate::RedisLock::new`]).
    pub fn new(backend: impl LockBackend, key: impl Into<String>) -> Self {
        Self {
            inner: lock_core::RedisLock::new(backend, key),
        }
    }

    settings!(RedisLock: timeout, wait_timeout, backoff, max_hold, fencing, fair);

    /// Asks `replicas` replicas to acknowledge every write, waiting up to `replica_wait` (see
    /// [`crate::RedisLock::replicas`]).
    pub fn replicas(self, replicas: usize, replica_wait: Duration) -> Self {
        Self {
            inner: self.inner.replicas(replicas, replica_wait),
        }
    }

    /// The replica acknowledgement set by [`replicas`](Self::replicas), if any.
    pub fn get_replicas(&self) -> Option<(usize, Duration)> {
        self.inner.get_replicas()
    }

    /// The lock key, exactly as given.
    pub fn key(&self) -> &str {
        self.inner.key()
    }

    /// The backend this lock talks to.
    pub fn backend(&self) -> &Arc<dyn LockBackend> {
        self.inner.backend()
    }

    /// The async lock this one runs: same key, backend and configuration.
    pub fn as_async(&self) -> &lock_core::RedisLock {
        &self.inner
    }

    /// Acquires the lock, waiting until the wait deadline (see [`crate::RedisLock::acquire`]):
    /// [`LockError::Timeout`](crate::LockError::Timeout) when it passes, a backend failure as soon as
    /// it happens.
    pub fn acquire(&self) -> Result<LockGuard> {
        let lock = self.inner.clone();
        let guard = call(self.key(), async move { lock.acquire().await })?;
        Ok(LockGuard::new(guard))
    }

    /// One attempt: `Ok(None)` when the lock is held by someone else (see
    /// [`crate::RedisLock::try_acquire`]).
    pub fn try_acquire(&self) -> Result<Option<LockGuard>> {
        let lock = self.inner.clone();
        let guard = call(self.key(), async move { lock.try_acquire().await })?;
        Ok(guard.map(LockGuard::new))
    }

    /// Acquires the lock, runs `body` on this thread while it is renewed in the background, then
    /// releases it; the outcomes are those of [`crate::RedisLock::run`], except that a lock lost while
    /// `body` runs is reported after `body` returns (a synchronous closure cannot be cancelled: see
    /// [`LockGuard::hold`]).
    pub fn run<T>(&self, body: impl FnOnce(&LockGuard) -> T) -> Result<T> {
        let guard = self.acquire()?;
        let value = guard.hold(|| body(&guard))?;
        let key = guard.key().to_owned();
        finish_run(&key, guard.release(), value)
    }
}

impl From<lock_core::RedisLock> for RedisLock {
    /// The blocking face of an async lock: same key, backend and configuration.
    fn from(inner: lock_core::RedisLock) -> Self {
        Self { inner }
    }
}

/// One acquisition of a blocking [`RedisLock`]: [`crate::LockGuard`] with blocking methods.
///
/// Dropping it without [`release`](Self::release) releases the lock, waiting for Redis's answer at
/// most 5 s (the adapters' default call bound; less when the backend's own bound is lower, since the
/// release call ends with it), after which the release goes on in the background. Dropped inside an
/// async runtime, it does not wait at all.
#[derive(Debug)]
pub struct LockGuard {
    shell: Shell<lock_core::LockGuard>,
}

impl LockGuard {
    fn new(guard: lock_core::LockGuard) -> Self {
        Self {
            shell: Shell::new(guard),
        }
    }

    guard_methods!("LockGuard", "lock");

    /// Sets the string key `resource` to `value` only if this guard's fence is the highest that ever
    /// wrote it (see [`crate::LockGuard::fenced_set`]).
    pub fn fenced_set(&self, resource: &str, value: &str) -> Result<bool> {
        let (resource, value) = (resource.to_owned(), value.to_owned());
        self.shell
            .with(move |guard| Box::pin(async move { guard.fenced_set(&resource, &value).await }))
    }
}
