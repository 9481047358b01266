// The guide, whatever features are on: it names the features each part needs.
#![doc = include_str!("../README.md")]
// docs.rs builds with `--cfg docsrs` (see `[package.metadata.docs.rs]`): label what needs a feature.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]

pub use lock_core::{
    BackendError, Backoff, Capabilities, Election, Executor, Leadership, LockBackend, LockError,
    LockGuard, Moment, NodeError, Permit, RedisLock, Redlock, RedlockGuard, Result, Runtime,
    Script, ScriptValue, Semaphore, adapter, async_trait, memory, redlock, run_id_from_info,
    script,
};

// Read-write locks.
pub use lock_core::{ReadGuard, RwLock, WriteGuard};

// Inspection: what `inspect()` answers on each primitive.
pub use lock_core::{
    ElectionInfo, HoldInfo, LockInfo, PermitInfo, RedlockInfo, RwLockInfo, SemaphoreInfo,
};

/// The fred adapter (feature `fred`): [`FredBackend`](lock_fred::FredBackend) over a fred `Client` or
/// `Pool` (for one server, a Cluster or Sentinel); `redlease::fred::fred` is the client crate itself.
#[cfg(feature = "fred")]
#[cfg_attr(docsrs, doc(cfg(feature = "fred")))]
#[doc(inline)]
pub use lock_fred as fred;

/// The deadpool-redis and redis-rs adapter (feature `deadpool`):
/// [`DeadpoolBackend`](lock_deadpool::DeadpoolBackend) over a `deadpool_redis::Pool`, a cluster or
/// Sentinel pool, or a `MultiplexedConnection`; `redlease::deadpool::deadpool_redis` is the client crate
/// itself.
#[cfg(feature = "deadpool")]
#[cfg_attr(docsrs, doc(cfg(feature = "deadpool")))]
#[doc(inline)]
pub use lock_deadpool as deadpool;

// The blocking API (issue 12, part "blocking").
#[cfg(feature = "blocking")]
pub mod blocking;
