//! The redlease lock algorithm, independent of any runtime or Redis client.
//!
//! Most users depend on the `redlease` facade, which re-exports everything here and the adapter they pick.
//! This crate defines:
//!
//! - [`LockBackend`], the small object-safe trait an adapter implements: the Redis calls (`set_nx`,
//!   `eval_script`, and optionally `eval_script_replicated` for replica acknowledgement and
//!   `wait_for_release` for blocking waits), what it can do ([`Capabilities`]), and the [`Runtime`] its
//!   locks run on (an [`Executor`]'s clock, sleep and spawn, built once by the adapter);
//! - [`RedisLock`] (configuration and acquisition) and [`LockGuard`] (one acquisition: `extend`, `renew`,
//!   `is_owner`, `release`);
//! - [`Redlock`] and [`RedlockGuard`]: one lock over several independent masters, held while a majority
//!   holds it (the [`redlock`] module explains the algorithm, its safety argument and its limits);
//! - [`LockError`], the one error type;
//! - [`memory::MemoryBackend`], an in-process backend for unit tests and single-process use;
//! - [`adapter`], for writing a backend: the command arguments, error codes and reply rules that
//!   every Redis adapter shares (used by lock-fred and lock-deadpool);
//! - with the `testing` feature, `testing`, the conformance suite every backend passes.
//!
//! ```
//! use std::time::Duration;
//! use lock_core::{RedisLock, memory::MemoryBackend};
//!
//! # futures::executor::block_on(async {
//! let backend = MemoryBackend::new();
//! let lock = RedisLock::new(backend, "reports:nightly")
//!     .timeout(Duration::from_secs(30))
//!     .wait_timeout(Some(Duration::from_secs(5)));
//! let guard = lock.acquire().await?;
//! assert!(guard.is_owner().await?);
//! assert!(guard.release().await?);
//! # Ok::<(), lock_core::LockError>(())
//! # }).unwrap();
//! ```
//!
//! # How a lock works
//!
//! `acquire` sends `SET key token NX PX ttl` with a fresh random token, retrying with jittered
//! exponential backoff until the wait deadline. Every later operation is a Lua script that first checks
//! the token, so a holder whose lock expired and was taken over can never touch the new holder's lock.
//! A lock is a lease: if the holder pauses longer than the TTL, another holder may enter. Validity is
//! tracked on the lease clock ([`Moment`], which keeps counting while the machine is suspended) from
//! before each request was sent, less a drift allowance, and a guard past its validity no longer claims
//! ownership.
//!
//! # Writing a backend
//!
//! A backend writes the Redis calls and nothing else: `set_nx` and `eval_script` are required; a
//! backend that can run `WAIT` on the writing connection or block in `BLPOP` on a connection of its own
//! also writes `eval_script_replicated` or `wait_for_release` and says so in `capabilities()`. One that
//! runs on an async runtime builds a [`Runtime`] from an [`Executor`] once, where its clones share it,
//! and returns it from `runtime()`; that is what lets its tasks wait in line locally, its dropped guards
//! be released in the background, and a [`Redlock`] recognise it when it is listed twice. Retries,
//! clocks, validity and the waiting lines are the lock side's.
//!
//! ```
//! use std::time::Duration;
//!
//! use futures::future::BoxFuture;
//! use lock_core::{BackendError, Executor, LockBackend, RedisLock, Runtime, Script, ScriptValue};
//!
//! /// A client's calls (here, to show the shape, the in-memory store's).
//! #[derive(Debug, Clone)]
//! struct MyBackend {
//!     client: lock_core::memory::MemoryBackend,
//!     runtime: Runtime,
//! }
//!
//! #[lock_core::async_trait]
//! impl LockBackend for MyBackend {
//!     async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, BackendError> {
//!         self.client.set_nx(key, value, ttl).await
//!     }
//!
//!     async fn eval_script(
//!         &self,
//!         script: &Script,
//!         keys: &[&str],
//!         args: &[&str],
//!     ) -> Result<ScriptValue, BackendError> {
//!         self.client.eval_script(script, keys, args).await
//!     }
//!
//!     fn runtime(&self) -> Option<&Runtime> {
//!         Some(&self.runtime)
//!     }
//! }
//!
//! /// The timer and spawner of the runtime the backend's client runs on.
//! struct MyExecutor;
//!
//! impl Executor for MyExecutor {
//!     fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
//!         Box::pin(futures_timer::Delay::new(duration))
//!     }
//!
//!     fn spawn(&self, task: BoxFuture<'static, ()>) -> bool {
//!         std::thread::spawn(move || futures::executor::block_on(task));
//!         true
//!     }
//! }
//!
//! # futures::executor::block_on(async {
//! let backend = MyBackend {
//!     client: lock_core::memory::MemoryBackend::new(),
//!     runtime: Runtime::new(MyExecutor),
//! };
//! let guard = RedisLock::new(backend, "jobs:mine").acquire().await?;
//! assert!(guard.release().await?);
//! # Ok::<(), lock_core::LockError>(())
//! # }).unwrap();
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]

pub mod adapter;
mod backend;
mod backoff;
mod election;
mod error;
mod guard;
mod keys;
mod lease;
mod lock;
pub mod memory;
mod queue;
pub mod redlock;
mod replication;
mod runtime;
pub mod script;
mod semaphore;
mod share;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;

pub use backend::{Capabilities, LockBackend, ScriptValue, run_id_from_info};
pub use backoff::Backoff;
pub use election::{Election, Leadership};
pub use error::{BackendError, LockError, NodeError, Result};
pub use guard::LockGuard;
pub use lock::RedisLock;
pub use redlock::{Redlock, RedlockGuard};
pub use runtime::{Executor, Runtime};
pub use script::Script;
pub use semaphore::{Permit, Semaphore};
pub use time::Moment;

// Read-write locks.
mod rwlock;
pub use rwlock::{ReadGuard, RwLock, WriteGuard};

// Inspection (`inspect()` on every primitive).
mod inspect;
pub use inspect::{
    ElectionInfo, HoldInfo, LockInfo, PermitInfo, RedlockInfo, RwLockInfo, SemaphoreInfo,
};

/// Re-exported so backends can implement [`LockBackend`] with the same macro version.
pub use async_trait::async_trait;
