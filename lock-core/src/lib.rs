//! The redlease lock algorithm, independent of any runtime or Redis client.
//!
//! Most users depend on the `redlease` facade, which re-exports everything here and the adapter they pick.
//! This crate defines:
//!
//! - [`LockBackend`], the small object-safe trait an adapter implements (`set_nx`, `eval_script`, and
//!   optionally `eval_script_replicated` for replica acknowledgement, and the runtime handle `now`,
//!   `sleep` and `spawn_detached`);
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
pub mod script;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;

pub use backend::{BackendError, LockBackend, ScriptValue, run_id_from_info};
pub use backoff::Backoff;
pub use election::{Election, Leadership};
pub use error::{LockError, NodeError, Result};
pub use guard::LockGuard;
pub use lock::RedisLock;
pub use queue::LocalQueues;
pub use redlock::{Redlock, RedlockGuard};
pub use script::Script;
pub use time::Moment;

/// Re-exported so backends can implement [`LockBackend`] with the same macro version.
pub use async_trait::async_trait;
