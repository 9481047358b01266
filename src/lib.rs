#![cfg_attr(all(feature = "fred", feature = "deadpool"), doc = include_str!("../README.md"))]
#![cfg_attr(
    not(all(feature = "fred", feature = "deadpool")),
    doc = "Distributed locks and leases over Redis. Enable the `fred` or `deadpool` feature for an adapter; \
           the README (rendered here with both features on) is the guide."
)]
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
pub use lock_fred as fred;

/// The deadpool-redis and redis-rs adapter (feature `deadpool`):
/// [`DeadpoolBackend`](lock_deadpool::DeadpoolBackend) over a `deadpool_redis::Pool`, a cluster or
/// Sentinel pool, or a `MultiplexedConnection`; `redlease::deadpool::deadpool_redis` is the client crate
/// itself.
#[cfg(feature = "deadpool")]
pub use lock_deadpool as deadpool;
