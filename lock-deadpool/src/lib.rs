//! The [deadpool-redis] and [redis-rs] adapter for redlease.
//!
//! [`DeadpoolBackend`] implements [`LockBackend`] over a [`deadpool_redis::Pool`] (lock commands share
//! one connection taken out of the pool, see [Connections](#connections)), a [`deadpool_redis::cluster::Pool`] (Redis Cluster), a
//! [`deadpool_redis::sentinel::Pool`] (the primary Sentinel names), or a single redis-rs
//! [`MultiplexedConnection`] (cloned per call, which is cheap: clones share one socket). It is a thin
//! translation layer with no lock logic:
//!
//! - `set_nx` sends `SET key value NX PX <ms> GET` in one round trip (this needs Redis 7.0 or newer);
//! - scripts run by `EVALSHA`, falling back to `EVAL` when the server answers `NOSCRIPT`;
//! - for locks with [`RedisLock::replicas`](lock_core::RedisLock::replicas), the script and `WAIT` go
//!   as one pipeline over one connection (see [Cluster and Sentinel](#cluster-and-sentinel));
//! - every call, including checking a connection out of the pool and the `EVAL` fallback, is bounded by
//!   [`DeadpoolBackend::command_timeout`] (5 s by default);
//! - the command arguments, the transient error codes and the reply rules come from
//!   [`lock_core::adapter`], shared with the fred adapter;
//! - sleeping and background tasks use the current Tokio runtime.
//!
//! The crates this adapter is built on are re-exported as [`deadpool_redis`] (and redis-rs as
//! [`deadpool_redis::redis`]), so the versions always match.
//!
//! Prefer a pool: it replaces connections that broke. A lone [`MultiplexedConnection`] never
//! reconnects, so once the server has dropped it (a restart, a failover, a network cut) every call
//! fails, transiently but forever.
//!
//! # Example
//!
//! ```no_run
//! use std::time::{Duration, Instant};
//!
//! use lock_deadpool::{DeadpoolBackend, deadpool_redis};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! // A pool (recommended).
//! let pool = deadpool_redis::Config::from_url("redis://127.0.0.1:6379/")
//!     .create_pool(Some(deadpool_redis::Runtime::Tokio1))?;
//! let backend = DeadpoolBackend::from(pool).command_timeout(Duration::from_secs(2));
//!
//! // Or one multiplexed connection.
//! let conn = deadpool_redis::redis::Client::open("redis://127.0.0.1:6379/")?
//!     .get_multiplexed_async_connection()
//!     .await?;
//! let other = DeadpoolBackend::from(conn);
//!
//! // Hand a backend to the lock core, e.g. as an `Arc<dyn LockBackend>`.
//! # drop((backend, other));
//! # Ok(())
//! # }
//! ```
//!
//! # Connections
//!
//! On a plain [`deadpool_redis::Pool`], `SET` and the lock scripts go over the backend's *lock lane*:
//! one multiplexed connection taken out of the pool (`deadpool_redis::Connection::take`) on first use
//! and shared by the backend and its clones, each call over a clone of it (same socket). A checkout
//! would cost deadpool-redis's recycle, `UNWATCH` + `PING`, on every call, which doubled the commands
//! of an acquisition; the lane pays it once. A connection error or a timeout on the lane drops it, and
//! the next call takes another connection through the pool. The taken connection no longer counts
//! against the pool's size, so the process holds at most one connection more than that. Calls that
//! must have a connection of their own still check one out per call: release waits (`BLPOP` blocks its
//! connection) and replica acknowledgement (`WAIT` counts the writes of the connection it runs on).
//! Cluster and Sentinel pools check a connection out for every call, as before.
//!
//! # Cluster and Sentinel
//!
//! The `cluster` and `sentinel` features of deadpool-redis are on, so `DeadpoolBackend::from` takes a
//! `deadpool_redis::cluster::Pool` or a `deadpool_redis::sentinel::Pool`, and lock code does not change.
//!
//! - **Cluster**: redis-rs routes each command by its first key (`EVALSHA`/`EVAL`: the first key after
//!   the key count), so every lock script goes to the node owning the lock's slot (lock-core keeps all
//!   keys of one script in one slot), and `NOSCRIPT` falls back to `EVAL` on that node. redis-rs follows
//!   `MOVED` and `ASK` (with `ASKING`) itself.
//! - **Sentinel**: connections go to the primary Sentinel names when they are made; after a failover the
//!   pool's connections to the old primary fail (and the call with them, transiently) and are replaced
//!   by connections to the new one.
//! - **Replica acknowledgement**: the script and `WAIT` are one pipeline, one request on one connection:
//!   a multiplexed connection never reconnects, and a cluster connection routes the pipeline by the
//!   script's key (not `WAIT`'s default of every primary) and redirects or retries it as a whole. Every
//!   successful lock write writes (a re-sent acquisition resets the TTL), so a retried pipeline's `WAIT`
//!   still covers the first write. The call is bounded by the command timeout plus the `WAIT` timeout
//!   (twice that after a `NOSCRIPT`: the `WAIT` behind the failed `EVALSHA` runs for nothing before
//!   `EVAL` and another `WAIT` are sent), and each pipeline goes over a clone of the connection (same
//!   socket) whose redis-rs response timeout is raised to that bound, so a `WAIT` longer than
//!   redis-rs's default 500 ms answers how many replicas acknowledged (a lock then reports
//!   [`NotReplicated`](lock_core::LockError::NotReplicated) when too few did) rather than a transient
//!   timeout. A cluster connection cannot be adjusted per request: its response timeout is unset
//!   unless `ClusterClientBuilder::response_timeout` sets one, which must then exceed the replica
//!   timeout.
//!
//! # Timeouts
//!
//! Three bounds apply to a call, and the first one reached wins:
//!
//! - [`DeadpoolBackend::command_timeout`], the adapter's bound on the whole call. When it elapses the
//!   call fails with [`BackendError::timed_out`].
//! - redis-rs's own per-request *response timeout*, which in redis-rs 1.x defaults to **500 ms** for
//!   every multiplexed connection made without an explicit
//!   [`AsyncConnectionConfig`](deadpool_redis::redis::AsyncConnectionConfig) (both
//!   `Client::get_multiplexed_async_connection` and the connections a `deadpool_redis::Config` pool
//!   creates), along with a 1 s connection timeout. When it elapses redis-rs reports an I/O error of
//!   kind `TimedOut`, which this adapter maps to a transient [`BackendError`]. The lock scripts are O(1)
//!   so 500 ms is ample; raise it with `AsyncConnectionConfig::set_response_timeout` (and
//!   `deadpool_redis::Manager::new_with_config` for a pool) if your server is slow. The script and
//!   `WAIT` of a replicated call are the exception: their request's response timeout is the adapter's
//!   bound for that call (see [Cluster and Sentinel](#cluster-and-sentinel)).
//! - deadpool's own pool timeouts (wait, create, recycle), which are unset by default.
//!
//! So against a frozen server, a call over a multiplexed connection (or a pool's lock lane) fails after
//! 500 ms, while a checkout from a pool first spends 500 ms failing to recycle its idle connection and
//! then 1 s failing to set up a new one; set the command timeout below that if a call must give up
//! sooner. A lane that timed out is dropped, so the call after it goes through the pool.
//!
//! # Errors
//!
//! Every [`BackendError`] names the backend `"deadpool"` and carries the original redis-rs or deadpool
//! error as its source. Failures that may pass on their own are *transient*: I/O errors, dropped
//! connections, timeouts, the pool timing out or being closed, and the server answering `LOADING`,
//! `TRYAGAIN`, `MASTERDOWN`, `CLUSTERDOWN`, `READONLY` or `BUSY`
//! ([`TRANSIENT_ERROR_CODES`](lock_core::adapter::TRANSIENT_ERROR_CODES)). Everything else (script
//! errors, `WRONGTYPE`, syntax errors, authentication failures, ...) is *permanent*.
//!
//! # Runtime
//!
//! This adapter requires a Tokio runtime with the time driver enabled (as redis-rs does): the
//! [`Runtime`] it hands its locks ([`LockBackend::runtime`]) sleeps with
//! [`tokio::time::sleep`] and spawns onto the current runtime, answering `false` when called outside
//! one.
//!
//! [deadpool-redis]: https://docs.rs/deadpool-redis
//! [redis-rs]: https://docs.rs/redis

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]

pub use deadpool_redis;
pub use lock_core::adapter::DEFAULT_COMMAND_TIMEOUT;

mod connection;
mod convert;
// The eviction-policy check.
mod eviction;
mod release_wait;
mod replicated;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::Pool;
use deadpool_redis::redis::aio::MultiplexedConnection;
use futures::future::BoxFuture;
use lock_core::adapter::{self, Command};
use lock_core::{BackendError, Capabilities, Executor, LockBackend, Runtime, Script, ScriptValue};

use crate::connection::Conn;

/// The backend name in every [`BackendError`] of this crate.
const BACKEND: &str = "deadpool";

/// A [`LockBackend`] over a [`deadpool_redis::Pool`] (plain, cluster or Sentinel) or a redis-rs
/// [`MultiplexedConnection`].
///
/// Build it with `From`: `DeadpoolBackend::from(pool)` or `DeadpoolBackend::from(connection)`, then
/// optionally set [`command_timeout`](Self::command_timeout). Cloning is cheap and clones share the pool
/// or connection.
#[derive(Clone)]
pub struct DeadpoolBackend {
    conn: Conn,
    command_timeout: Duration,
    /// Tokio's timer and spawner, shared by clones (so are the in-process waiting lines it carries).
    runtime: Runtime,
    /// The eviction-policy check, made once per backend and its clones (the `eviction` module).
    eviction: std::sync::Arc<adapter::EvictionCheck>,
}

impl From<Pool> for DeadpoolBackend {
    /// A backend checking one connection out of `pool` for each call.
    fn from(pool: Pool) -> Self {
        Self::new(Conn::Pool(pool, Default::default()))
    }
}

impl From<MultiplexedConnection> for DeadpoolBackend {
    /// A backend sending every call over `conn` (and its clones, which share the socket).
    fn from(conn: MultiplexedConnection) -> Self {
        Self::new(Conn::Multiplexed(conn))
    }
}

impl From<deadpool_redis::cluster::Pool> for DeadpoolBackend {
    /// A backend for a Redis Cluster, checking one cluster connection out of `pool` for each call.
    /// redis-rs routes each command to the node owning its key's slot and follows `MOVED` and `ASK`.
    fn from(pool: deadpool_redis::cluster::Pool) -> Self {
        Self::new(Conn::Cluster(pool))
    }
}

impl From<deadpool_redis::sentinel::Pool> for DeadpoolBackend {
    /// A backend for the primary that Sentinel names, checking one connection out of `pool` for each
    /// call. After a failover, connections to the old primary fail and the pool replaces them with
    /// connections to the one Sentinel names then.
    fn from(pool: deadpool_redis::sentinel::Pool) -> Self {
        Self::new(Conn::Sentinel(pool))
    }
}

impl DeadpoolBackend {
    fn new(conn: Conn) -> Self {
        Self {
            conn,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            runtime: Runtime::new(Tokio),
            eviction: Default::default(),
        }
    }

    /// Bounds every call (checking a connection out of the pool, the command, and the `EVAL` fallback
    /// after `NOSCRIPT`) to `bound`: a call that has no reply within it fails with a transient
    /// [`BackendError::timed_out`]. Note that redis-rs also applies its own response timeout (500 ms by
    /// default, see the [crate documentation](crate#timeouts)), which may fire first.
    ///
    /// The default is [`DEFAULT_COMMAND_TIMEOUT`] (5 s). The bound is clamped to between 1 ms and one
    /// day ([`lock_core::adapter::clamp_command_timeout`], the same rule in every adapter): a zero bound
    /// is raised to 1 ms, and a longer one than a day, which means "no bound" in practice, is one day.
    #[must_use]
    pub fn command_timeout(mut self, bound: Duration) -> Self {
        self.command_timeout = adapter::clamp_command_timeout(bound);
        self
    }

    /// The bound set by [`command_timeout`](Self::command_timeout), after clamping.
    pub fn get_command_timeout(&self) -> Duration {
        self.command_timeout
    }

    // Bounded waits (issue 13).
    /// Lets at most `limit` waiters of this backend (and its clones) block on release signals at
    /// once; the others poll with their lock's backoff. The default is
    /// [`Runtime::DEFAULT_MAX_BLOCKING_WAITS`] (8); `0` means never block, always poll. Every value is
    /// valid.
    ///
    /// Each blocking wait (`BLPOP`) holds a connection checked out of the pool (a lone multiplexed connection and a cluster never block: their waiters always poll) while it blocks, so the limit bounds the connections
    /// that waiting takes, however many keys are waited on, and leaves the rest to the holders'
    /// renewals. The cost of a low limit: a waiter beyond it learns of a release up to one backoff
    /// delay later (at most the backoff's maximum, 100 ms by default) and makes one attempt per delay.
    /// See [`Runtime::max_blocking_waits`]; the setting is shared with the backend's clones.
    #[must_use]
    pub fn max_blocking_waits(mut self, limit: usize) -> Self {
        self.runtime = self.runtime.max_blocking_waits(limit);
        self
    }

    /// The limit set by [`max_blocking_waits`](Self::max_blocking_waits).
    pub fn get_max_blocking_waits(&self) -> usize {
        self.runtime.get_max_blocking_waits()
    }

    /// The bound set by [`command_timeout`](Self::command_timeout).
    #[deprecated(note = "use get_command_timeout")]
    pub fn timeout(&self) -> Duration {
        self.get_command_timeout()
    }
}

impl fmt::Debug for DeadpoolBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("DeadpoolBackend");
        match &self.conn {
            Conn::Pool(pool, _) => s.field("pool", &pool.status()),
            Conn::Multiplexed(_) => s.field("connection", &format_args!("MultiplexedConnection")),
            Conn::Cluster(pool) => s.field("cluster_pool", &pool.status()),
            Conn::Sentinel(pool) => s.field("sentinel_pool", &pool.status()),
        };
        s.field("command_timeout", &self.command_timeout).finish()
    }
}

#[async_trait]
impl LockBackend for DeadpoolBackend {
    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, BackendError> {
        self.check_eviction();
        let set = convert::cmd(Command::set_nx_get(key, value, ttl));
        let reply = convert::bounded(self.command_timeout, async {
            self.conn.get().await?.query(&set).await
        })
        .await?;
        convert::set_nx_reply(reply, value)
    }

    async fn eval_script(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<ScriptValue, BackendError> {
        self.check_eviction();
        let evalsha = convert::cmd(Command::evalsha(script, keys, args));
        let reply = convert::bounded(self.command_timeout, async {
            let mut conn = self.conn.get().await?;
            match conn.query_raw(&evalsha).await {
                Err(error) if convert::is_noscript(&error) => {
                    // Not in the server's script cache (never loaded, flushed, or a restarted or
                    // failed-over server): send the source, which also caches it again.
                    let eval = convert::cmd(Command::eval(script, keys, args));
                    conn.query(&eval).await
                }
                reply => reply.map_err(convert::backend_error),
            }
        })
        .await?;
        convert::script_value(reply)
    }

    /// The script and `WAIT` pipelined on one connection, see the `replicated` module.
    async fn eval_script_replicated(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
        replicas: usize,
        timeout: Duration,
    ) -> Result<(ScriptValue, usize), BackendError> {
        self.check_eviction();
        replicated::eval(self, script, keys, args, replicas, timeout).await
    }

    /// `BLPOP` on a connection checked out of the pool for the wait (the `release_wait` module).
    /// Refused (permanently) on a lone multiplexed connection, which cannot block without holding up
    /// every other call on it, and on a cluster, which sends no signals: waiters poll there.
    async fn wait_for_release(
        &self,
        signal: &str,
        timeout: Duration,
    ) -> Result<bool, BackendError> {
        if !self.capabilities().blocking_waits {
            return Err(BackendError::permanent(
                BACKEND,
                "no blocking waits on a lone multiplexed connection or a cluster",
            ));
        }
        release_wait::wait_for_release(self, signal, timeout).await
    }

    /// Replica acknowledgement; release signals except on a cluster (a script touching two keys is
    /// refused while their slot migrates), and blocking waits where a connection can be checked out for
    /// them (not on a lone multiplexed connection, which still sends signals for waiters elsewhere).
    fn capabilities(&self) -> Capabilities {
        let cluster = matches!(self.conn, Conn::Cluster(_));
        let lone = matches!(self.conn, Conn::Multiplexed(_));
        Capabilities::new()
            .with_replica_acks(true)
            .with_release_signals(!cluster)
            .with_blocking_waits(!cluster && !lone)
            .with_cluster(cluster)
    }

    /// Tokio's, shared by clones: they are one backend, with one waiting line per key.
    fn runtime(&self) -> Option<&Runtime> {
        Some(&self.runtime)
    }
}

/// Tokio's timer and spawner; the lease clock stays lock-core's default. (The other Redis adapter has
/// its own: lock-core holds no runtime, and this is all the runtime glue an adapter needs.)
struct Tokio;

impl Executor for Tokio {
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(duration))
    }

    /// Onto the current runtime; `false` outside one.
    fn spawn(&self, task: BoxFuture<'static, ()>) -> bool {
        let handle = tokio::runtime::Handle::try_current();
        handle.map(|runtime| drop(runtime.spawn(task))).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> DeadpoolBackend {
        // Creating a pool connects nothing.
        let pool = deadpool_redis::Config::from_url("redis://127.0.0.1:1/")
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .unwrap();
        DeadpoolBackend::from(pool)
    }

    #[test]
    fn command_timeout_default_getter_and_debug() {
        let backend = backend();
        assert_eq!(backend.get_command_timeout(), Duration::from_secs(5));
        let backend = backend.command_timeout(Duration::from_millis(300));
        assert_eq!(backend.get_command_timeout(), Duration::from_millis(300));
        #[allow(deprecated)]
        let old = backend.timeout();
        assert_eq!(old, Duration::from_millis(300), "the deprecated alias");
        let debug = format!("{backend:?}");
        assert!(debug.starts_with("DeadpoolBackend { pool: "), "{debug}");
        assert!(debug.contains("command_timeout: 300ms"), "{debug}");
    }

    #[test]
    fn command_timeout_is_clamped() {
        let backend = backend().command_timeout(Duration::ZERO);
        assert_eq!(backend.get_command_timeout(), Duration::from_millis(1));
        let backend = backend.command_timeout(Duration::MAX);
        assert_eq!(
            backend.get_command_timeout(),
            lock_core::adapter::MAX_COMMAND_TIMEOUT
        );
    }

    #[test]
    fn max_blocking_waits_default_setting_and_clones() {
        let backend = backend();
        assert_eq!(backend.get_max_blocking_waits(), 8);
        let clone = backend.clone();
        let backend = backend.max_blocking_waits(0);
        assert_eq!(backend.get_max_blocking_waits(), 0);
        assert_eq!(clone.get_max_blocking_waits(), 0, "one backend, one limit");
        let backend = backend.max_blocking_waits(usize::MAX);
        assert_eq!(backend.get_max_blocking_waits(), usize::MAX);
    }
}
