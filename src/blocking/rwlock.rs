//! The blocking [`RwLock`] and its [`ReadGuard`] and [`WriteGuard`].

use lock_core::{LockBackend, Result};

use super::guard::{Shell, finish_run, guard_methods};
use super::runtime::call;
use super::settings;

/// A read-write lock on one Redis key, for synchronous code: [`crate::RwLock`] with every operation
/// blocking the calling thread.
///
/// Built exactly as the async lock is, from the same backend values; each operation runs the async
/// one on the blocking runtime (see [the module](super)).
#[derive(Debug, Clone)]
pub struct RwLock {
    inner: lock_core::RwLock,
}

impl RwLock {
    /// A read-write lock on `key` through `backend` (see [`crate::RwLock::new`]).
    pub fn new(backend: impl LockBackend, key: impl Into<String>) -> Self {
        Self {
            inner: lock_core::RwLock::new(backend, key),
        }
    }

    settings!(RwLock: timeout, wait_timeout, backoff, max_hold, fencing);

    /// The lock's key, exactly as given.
    pub fn key(&self) -> &str {
        self.inner.key()
    }

    /// The async lock this one runs: same key, backend and configuration.
    pub fn as_async(&self) -> &lock_core::RwLock {
        &self.inner
    }

    /// Takes a read hold, waiting while a writer holds or waits (see [`crate::RwLock::read`]).
    pub fn read(&self) -> Result<ReadGuard> {
        let lock = self.inner.clone();
        let guard = call(self.key(), async move { lock.read().await })?;
        Ok(ReadGuard::new(guard))
    }

    /// One attempt at a read hold: `Ok(None)` when a writer holds or waits (see
    /// [`crate::RwLock::try_read`]).
    pub fn try_read(&self) -> Result<Option<ReadGuard>> {
        let lock = self.inner.clone();
        let guard = call(self.key(), async move { lock.try_read().await })?;
        Ok(guard.map(ReadGuard::new))
    }

    /// Takes the write hold, waiting for readers and writers to leave (see [`crate::RwLock::write`]).
    pub fn write(&self) -> Result<WriteGuard> {
        let lock = self.inner.clone();
        let guard = call(self.key(), async move { lock.write().await })?;
        Ok(WriteGuard::new(guard))
    }

    /// One attempt at the write hold: `Ok(None)` when anyone holds it (see
    /// [`crate::RwLock::try_write`]).
    pub fn try_write(&self) -> Result<Option<WriteGuard>> {
        let lock = self.inner.clone();
        let guard = call(self.key(), async move { lock.try_write().await })?;
        Ok(guard.map(WriteGuard::new))
    }

    /// Takes a read hold, runs `body` on this thread while it is renewed, then releases it; the
    /// outcomes are those of [`RedisLock::run`](super::RedisLock::run).
    pub fn run_read<T>(&self, body: impl FnOnce(&ReadGuard) -> T) -> Result<T> {
        let guard = self.read()?;
        let value = guard.hold(|| body(&guard))?;
        let key = guard.key().to_owned();
        finish_run(&key, guard.release(), value)
    }

    /// Takes the write hold, runs `body` on this thread while it is renewed, then releases it; the
    /// outcomes are those of [`RedisLock::run`](super::RedisLock::run).
    pub fn run_write<T>(&self, body: impl FnOnce(&WriteGuard) -> T) -> Result<T> {
        let guard = self.write()?;
        let value = guard.hold(|| body(&guard))?;
        let key = guard.key().to_owned();
        finish_run(&key, guard.release(), value)
    }
}

impl From<lock_core::RwLock> for RwLock {
    /// The blocking face of an async read-write lock.
    fn from(inner: lock_core::RwLock) -> Self {
        Self { inner }
    }
}

/// A read hold of a blocking [`RwLock`]: [`crate::ReadGuard`] with blocking methods. Dropped
/// without [`release`](Self::release), it is released as a dropped [`LockGuard`](super::LockGuard)
/// is: waiting a bounded time.
#[derive(Debug)]
pub struct ReadGuard {
    shell: Shell<lock_core::ReadGuard>,
}

impl ReadGuard {
    fn new(guard: lock_core::ReadGuard) -> Self {
        Self {
            shell: Shell::new(guard),
        }
    }

    guard_methods!("ReadGuard", "read hold");
}

/// The write hold of a blocking [`RwLock`]: [`crate::WriteGuard`] with blocking methods. Dropped
/// without [`release`](Self::release), it is released as a dropped [`LockGuard`](super::LockGuard)
/// is: waiting a bounded time.
#[derive(Debug)]
pub struct WriteGuard {
    shell: Shell<lock_core::WriteGuard>,
}

impl WriteGuard {
    fn new(guard: lock_core::WriteGuard) -> Self {
        Self {
            shell: Shell::new(guard),
        }
    }

    guard_methods!("WriteGuard", "write hold");

    /// Turns this write hold into a read hold in one script (see [`crate::WriteGuard::downgrade`]).
    pub fn downgrade(self) -> Result<ReadGuard> {
        super::runtime::refuse_inside_async()?;
        let key = self.key().to_owned();
        let guard = self.shell.into_async()?;
        let read = call(&key, async move { guard.downgrade().await })?;
        Ok(ReadGuard::new(read))
    }
}
