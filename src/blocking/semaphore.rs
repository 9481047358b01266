//! The blocking [`Semaphore`] and its [`Permit`].

use lock_core::{LockBackend, Result};

use super::guard::{Shell, finish_run, guard_methods};
use super::runtime::call;
use super::settings;

/// A counting semaphore on one Redis key, for synchronous code: [`crate::Semaphore`] with every
/// operation blocking the calling thread.
///
/// Built exactly as the async semaphore is, from the same backend values; each operation runs the
/// async one on the blocking runtime (see [the module](super)).
#[derive(Debug, Clone)]
pub struct Semaphore {
    inner: lock_core::Semaphore,
}

impl Semaphore {
    /// A semaphore of `limit` permits on `key` through `backend` (see [`crate::Semaphore::new`]).
    pub fn new(backend: impl LockBackend, key: impl Into<String>, limit: u32) -> Self {
        Self {
            inner: lock_core::Semaphore::new(backend, key, limit),
        }
    }

    settings!(Semaphore: timeout, wait_timeout, backoff, max_hold, fencing);

    /// The semaphore's key, exactly as given.
    pub fn key(&self) -> &str {
        self.inner.key()
    }

    /// The number of permits, as given to [`new`](Self::new).
    pub fn limit(&self) -> u32 {
        self.inner.limit()
    }

    /// The async semaphore this one runs: same key, limit, backend and configuration.
    pub fn as_async(&self) -> &lock_core::Semaphore {
        &self.inner
    }

    /// Acquires one permit, waiting until one is free or the wait deadline passes (see
    /// [`crate::Semaphore::acquire`]).
    pub fn acquire(&self) -> Result<Permit> {
        self.acquire_many(1)
    }

    /// Acquires `permits` permits as one lease (see [`crate::Semaphore::acquire_many`]).
    pub fn acquire_many(&self, permits: u32) -> Result<Permit> {
        let semaphore = self.inner.clone();
        let permit = call(
            self.key(),
            async move { semaphore.acquire_many(permits).await },
        )?;
        Ok(Permit::new(permit))
    }

    /// One attempt at one permit: `Ok(None)` when none is free (see
    /// [`crate::Semaphore::try_acquire`]).
    pub fn try_acquire(&self) -> Result<Option<Permit>> {
        self.try_acquire_many(1)
    }

    /// One attempt at `permits` permits: `Ok(None)` when too few are free (see
    /// [`crate::Semaphore::try_acquire_many`]).
    pub fn try_acquire_many(&self, permits: u32) -> Result<Option<Permit>> {
        let semaphore = self.inner.clone();
        let permit = call(self.key(), async move {
            semaphore.try_acquire_many(permits).await
        })?;
        Ok(permit.map(Permit::new))
    }

    /// The limit minus the permits held now (see [`crate::Semaphore::available`]).
    pub fn available(&self) -> Result<u32> {
        let semaphore = self.inner.clone();
        call(self.key(), async move { semaphore.available().await })
    }

    /// Acquires one permit, runs `body` on this thread while it is renewed in the background, then
    /// releases it; the outcomes are those of [`RedisLock::run`](super::RedisLock::run).
    pub fn run<T>(&self, body: impl FnOnce(&Permit) -> T) -> Result<T> {
        let permit = self.acquire()?;
        let value = permit.hold(|| body(&permit))?;
        let key = permit.key().to_owned();
        finish_run(&key, permit.release(), value)
    }
}

impl From<lock_core::Semaphore> for Semaphore {
    /// The blocking face of an async semaphore.
    fn from(inner: lock_core::Semaphore) -> Self {
        Self { inner }
    }
}

/// One acquisition of permits of a blocking [`Semaphore`]: [`crate::Permit`] with blocking methods.
///
/// Dropping it without [`release`](Self::release) gives the permits back as a dropped
/// [`LockGuard`](super::LockGuard) releases its lock: waiting a bounded time.
#[derive(Debug)]
pub struct Permit {
    shell: Shell<lock_core::Permit>,
    permits: u32,
}

impl Permit {
    fn new(permit: lock_core::Permit) -> Self {
        Self {
            permits: permit.permits(),
            shell: Shell::new(permit),
        }
    }

    guard_methods!("Permit", "acquisition");

    /// How many permits this acquisition holds.
    pub fn permits(&self) -> u32 {
        self.permits
    }
}
