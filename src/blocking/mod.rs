//! The blocking API (feature `blocking`): the same locks for synchronous code, in the manner of
//! `reqwest::blocking`.
//!
//! [`RedisLock`], [`Semaphore`] and [`RwLock`] are built exactly as their async counterparts
//! ([`crate::RedisLock`], …), from the same backend values and with the same builder methods; their
//! operations and their guards' ([`LockGuard`], [`Permit`], [`ReadGuard`], [`WriteGuard`]) block the
//! calling thread and return the same `Result<_, LockError>` the async ones do, without `.await`.
//!
//! ```
//! use std::time::Duration;
//! use redlease::blocking::RedisLock;
//! use redlease::memory::MemoryBackend;
//!
//! let lock = RedisLock::new(MemoryBackend::new(), "reports:nightly")
//!     .timeout(Duration::from_secs(30))
//!     .wait_timeout(Some(Duration::from_secs(5)));
//! let guard = lock.acquire()?;
//! assert!(guard.is_owner()?);
//! // Renewed in the background while the closure runs on this thread.
//! let rows = guard.hold(|| 42)?;
//! assert!(guard.release()?);
//! # assert_eq!(rows, 42);
//! # Ok::<(), redlease::LockError>(())
//! ```
//!
//! # Where it runs
//!
//! Every operation runs the async one on a small tokio runtime of the library's own (current-thread,
//! timers and I/O on), driven by one thread it owns, named `redlease-blocking`, while the caller
//! waits; never on a runtime of the caller's. There is one such runtime per process, shared by all
//! blocking values whatever their backend: started on the first call, it lives as long as the process
//! (so that a client built on it, below, keeps its connection), and locking is light work for it.
//!
//! # Building a backend
//!
//! Backends are the async API's: [`MemoryBackend`](crate::memory::MemoryBackend) needs nothing; a
//! deadpool-redis pool is created without a runtime (`Config::create_pool(Some(Runtime::Tokio1))`)
//! and connects on first use, on the blocking runtime. A fred client's `init` spawns its connection
//! task on the runtime it is awaited on, and that runtime must keep running: await it on the blocking
//! runtime with [`block_on`], which runs any future there and waits for its output.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use redlease::blocking::{self, RedisLock};
//! use redlease::fred::FredBackend;
//! use redlease::fred::fred::prelude::{Builder, ClientLike, Config, ReconnectPolicy};
//!
//! let mut builder = Builder::from_config(Config::from_url("redis://127.0.0.1:6379")?);
//! builder.set_policy(ReconnectPolicy::new_constant(0, 500)); // reconnect after a restart
//! let client = builder.build()?;
//! blocking::block_on({
//!     let client = client.clone();
//!     async move { client.init().await.map(drop) }
//! })??;
//! let lock = RedisLock::new(FredBackend::from(client), "jobs:nightly");
//! lock.run(|_guard| println!("only one process prints this at a time"))?;
//! # Ok(())
//! # }
//! ```
//!
//! # Inside an async runtime
//!
//! Called on a thread of a tokio runtime (in a task, in `#[tokio::main]`, in `spawn_blocking`, or
//! after `Handle::enter`), every blocking call answers
//! [`LockError::InvalidArgument`](crate::LockError::InvalidArgument) naming `runtime` at once, and
//! sends nothing: waiting there would block that runtime, and deadlock it when the Redis client's
//! connection runs on it. Use the async API there (in `spawn_blocking`,
//! `Handle::current().block_on(lock.acquire())` works). Other executors cannot be detected: the
//! blocking call then only blocks that executor's thread, as any blocking call does. A guard dropped
//! inside a runtime releases in the background without waiting.
//!
//! # Guards
//!
//! - Dropping a guard without `release` releases it and waits for Redis's answer at most 5 s (the
//!   adapters' default call bound; a backend with a lower bound answers or fails sooner), after which
//!   the release goes on in the background, retried as the async guard's is; were no runtime thread
//!   available, the TTL frees the key.
//! - `hold(|| work())` runs `work` on the calling thread while the lease is renewed on the runtime's
//!   thread. A synchronous closure cannot be cancelled: a lease lost meanwhile is reported after
//!   `work` returns, as [`LockError::Lost`](crate::LockError::Lost) in place of its output. Work that
//!   should stop early checks `is_lost()` as it goes (see [`LockGuard::hold`]).
//! - `run(|guard| ...)` acquires, holds and releases, with the outcomes of [`crate::RedisLock::run`].
//! - As with the async API, a lock is not reentrant: acquiring a key this thread already holds waits
//!   for it like any other holder's, until the wait deadline.

mod guard;
mod lock;
mod runtime;
mod rwlock;
mod semaphore;

pub use lock::{LockGuard, RedisLock};
pub use runtime::block_on;
pub use rwlock::{ReadGuard, RwLock, WriteGuard};
pub use semaphore::{Permit, Semaphore};

/// Writes a blocking lock's builder settings and their getters, delegating to the async lock in
/// `inner`, with docs linking the async setting.
macro_rules! settings {
    ($async:ident: $($setting:ident),*) => {
        $( $crate::blocking::settings!(@ $async, $setting); )*
    };
    (@ $async:ident, timeout) => {
        $crate::blocking::settings!(@ $async, timeout, get_timeout,
            ::std::time::Duration, ::std::time::Duration, "The lease's TTL");
    };
    (@ $async:ident, wait_timeout) => {
        $crate::blocking::settings!(@ $async, wait_timeout, get_wait_timeout,
            Option<::std::time::Duration>, Option<::std::time::Duration>,
            "How long an acquisition waits (`None`: for ever)");
    };
    (@ $async:ident, backoff) => {
        $crate::blocking::settings!(@ $async, backoff, get_backoff,
            ::lock_core::Backoff, ::lock_core::Backoff, "The retry pacing while waiting");
    };
    (@ $async:ident, max_hold) => {
        $crate::blocking::settings!(@ $async, max_hold, get_max_hold,
            ::std::time::Duration, Option<::std::time::Duration>,
            "The longest a lease may be kept under `hold`");
    };
    (@ $async:ident, fencing) => {
        $crate::blocking::settings!(@ $async, fencing, get_fencing, bool, bool,
            "Whether each acquisition gets a fencing token");
    };
    (@ $async:ident, fair) => {
        $crate::blocking::settings!(@ $async, fair, get_fair, bool, bool,
            "Whether the lock is granted in arrival order, across processes");
    };
    (@ $async:ident, $set:ident, $get:ident, $set_ty:ty, $get_ty:ty, $what:literal) => {
        #[doc = concat!($what, ": see [`", stringify!($async), "::", stringify!($set), "`](crate::",
            stringify!($async), "::", stringify!($set), ").")]
        pub fn $set(self, value: $set_ty) -> Self {
            Self {
                inner: self.inner.$set(value),
            }
        }

        #[doc = concat!("The value set by [`", stringify!($set), "`](Self::", stringify!($set), ").")]
        pub fn $get(&self) -> $get_ty {
            self.inner.$get()
        }
    };
}

pub(crate) use settings;
