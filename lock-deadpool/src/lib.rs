//! The [deadpool-redis] and [redis-rs] adapter for redlease.
//!
//! [`DeadpoolBackend`] implements [`LockBackend`] over a [`deadpool_redis::Pool`] (one pooled connection
//! is checked out per call), a [`deadpool_redis::cluster::Pool`] (Redis Cluster), a
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
//! So against a frozen server, a call over a multiplexed connection fails after 500 ms, while a pool
//! first spends 500 ms failing to recycle its idle connection and then 1 s failing to set up a new one;
//! set the command timeout below that if a call must give up sooner.
//!
//! # Errors
//!
//! Every [`BackendError`] names the backend `"deadpool"` and carries the original redis-rs or deadpool
//! error as its source. Failures that may pass on their own are *transient*: I/O errors, dropped
//! connections, timeouts, the pool timing out or being closed, and the server answering `LOADING`,
//! `TRYAGAIN`, `MASTERDOWN`, `CLUSTERDOWN`, `READONLY` or `BUSY`. Everything else (script errors,
//! `WRONGTYPE`, syntax errors, authentication failures, ...) is *permanent*.
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

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::future::BoxFuture;
use lock_core::{BackendError, Capabilities, Executor, LockBackend, Runtime, Script, ScriptValue};

pub use deadpool_redis;

use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::{self, ErrorKind, RedisError, ServerErrorKind, Value};
use deadpool_redis::{HookError, Pool, PoolError};

/// The backend name reported in every [`BackendError`] of this adapter.
const BACKEND: &str = "deadpool";

/// The default for [`DeadpoolBackend::command_timeout`].
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// A [`LockBackend`] over a [`deadpool_redis::Pool`] or a redis-rs
/// [`MultiplexedConnection`].
///
/// Cloning is cheap and clones share the pool or connection. Build one with [`From`], then optionally
/// set [`command_timeout`](Self::command_timeout).
#[derive(Clone)]
pub struct DeadpoolBackend {
    conn: Conn,
    command_timeout: Duration,
    /// Tokio's timer and spawner, shared by clones (so are the in-process waiting lines it carries).
    runtime: Runtime,
}

/// Where connections come from.
#[derive(Clone)]
enum Conn {
    Pool(Pool),
    Multiplexed(MultiplexedConnection),
    Cluster(deadpool_redis::cluster::Pool),
    Sentinel(deadpool_redis::sentinel::Pool),
}

impl DeadpoolBackend {
    /// Bounds every call — checking a connection out of the pool, the command, and the `EVAL` fallback
    /// after `NOSCRIPT` — to `timeout`; the default is 5 seconds.
    ///
    /// When the bound elapses the call fails with a transient [`BackendError::timed_out`]. Note that
    /// redis-rs also applies its own response timeout (500 ms by default, see the
    /// [crate documentation](crate#timeouts)), which may fire first.
    #[must_use]
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// The bound set by [`command_timeout`](Self::command_timeout).
    pub fn timeout(&self) -> Duration {
        self.command_timeout
    }

    fn new(conn: Conn) -> Self {
        Self {
            conn,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            runtime: Runtime::new(Tokio),
        }
    }

    /// A connection for one call: checked out of the pool (and returned to it when dropped), or a clone
    /// of the multiplexed connection.
    async fn connection(&self) -> Result<CheckedOut, BackendError> {
        match &self.conn {
            Conn::Pool(pool) => pool.get().await.map(CheckedOut::Pooled).map_err(pool_error),
            Conn::Multiplexed(conn) => Ok(CheckedOut::Multiplexed(conn.clone())),
            Conn::Cluster(pool) => pool
                .get()
                .await
                .map(|conn| CheckedOut::Cluster(Box::new(conn)))
                .map_err(pool_error),
            Conn::Sentinel(pool) => pool
                .get()
                .await
                .map(CheckedOut::Sentinel)
                .map_err(pool_error),
        }
    }
}

impl CheckedOut {
    /// Detaches the connection from its pool and closes it: for a connection that may still be blocked
    /// in a command nobody waits for, which must not serve the next caller.
    fn discard(self) {
        match self {
            CheckedOut::Pooled(conn) => drop(deadpool_redis::Connection::take(conn)),
            CheckedOut::Multiplexed(conn) => drop(conn),
            CheckedOut::Cluster(conn) => drop(deadpool_redis::cluster::Connection::take(*conn)),
            CheckedOut::Sentinel(conn) => drop(deadpool_redis::sentinel::Connection::take(conn)),
        }
    }
}

/// A connection blocked in `BLPOP`: discarded if dropped before the reply came.
struct Blocked(Option<CheckedOut>);

impl Drop for Blocked {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            conn.discard();
        }
    }
}

/// The longest a release wait blocks a connection: well below redis-rs's 500 ms response timeout, so
/// that a loaded machine still reads the reply in time.
const MAX_RELEASE_WAIT: Duration = Duration::from_millis(250);

/// A connection in use by one call.
enum CheckedOut {
    Pooled(deadpool_redis::Connection),
    Multiplexed(MultiplexedConnection),
    // Boxed: a cluster connection is much larger than the others.
    Cluster(Box<deadpool_redis::cluster::Connection>),
    Sentinel(deadpool_redis::sentinel::Connection),
}

impl CheckedOut {
    /// Sends `cmd`, mapping a failure into a [`BackendError`].
    async fn query(&mut self, cmd: &redis::Cmd) -> Result<Value, BackendError> {
        self.query_raw(cmd).await.map_err(redis_error)
    }

    /// Sends `cmd`, keeping redis-rs's error. A cluster connection routes it by its first key.
    async fn query_raw(&mut self, cmd: &redis::Cmd) -> Result<Value, RedisError> {
        match self {
            CheckedOut::Pooled(conn) => cmd.query_async(&mut **conn).await,
            CheckedOut::Multiplexed(conn) => cmd.query_async(conn).await,
            CheckedOut::Cluster(conn) => cmd.query_async(&mut **conn).await,
            CheckedOut::Sentinel(conn) => cmd.query_async(&mut **conn).await,
        }
    }

    /// This connection for a request that blocks on the server for up to `blocking` (`WAIT`): a clone
    /// of a multiplexed connection (sharing its socket, so the request still goes over this connection)
    /// whose redis-rs response timeout is raised to `response_timeout`, or the cluster connection as
    /// it is.
    ///
    /// redis-rs's own response timeout (500 ms unless configured) would otherwise cut a `WAIT` longer
    /// than it short and report a transient timeout instead of the replicas' count. The clone keeps the
    /// pooled connection's own setting for every other call. A cluster connection has no per-request
    /// setting: its response timeout is unset unless the cluster client set one, which must then exceed
    /// the replica timeout (see the crate documentation).
    fn for_blocking(&mut self, response_timeout: Duration) -> Blocking<'_> {
        let mut conn = match self {
            CheckedOut::Pooled(conn) => MultiplexedConnection::clone(conn),
            CheckedOut::Multiplexed(conn) => conn.clone(),
            CheckedOut::Sentinel(conn) => MultiplexedConnection::clone(conn),
            CheckedOut::Cluster(conn) => return Blocking::Cluster(conn),
        };
        conn.set_response_timeout(response_timeout);
        Blocking::Multiplexed(conn)
    }
}

/// A connection for a request that blocks on the server, see [`CheckedOut::for_blocking`]. Borrows the
/// checked-out connection, which stays out of the pool while the request runs.
enum Blocking<'a> {
    Multiplexed(MultiplexedConnection),
    Cluster(&'a mut deadpool_redis::cluster::Connection),
}

impl Blocking<'_> {
    /// Sends `pipe` as one request over this one connection (in a cluster, to the node of its first
    /// key), with one result per command.
    async fn query_pipeline(
        &mut self,
        pipe: &redis::Pipeline,
    ) -> Result<Vec<redis::RedisResult<Value>>, RedisError> {
        match self {
            Blocking::Multiplexed(conn) => pipe.query_async(conn).await,
            Blocking::Cluster(conn) => pipe.query_async(&mut **conn).await,
        }
    }
}

/// `script_cmd` (`EVALSHA` or `EVAL` with its keys and arguments) and `WAIT replicas wait_ms`, pipelined
/// on `conn`: the script's result, and `WAIT`'s.
///
/// One request on one connection, so `WAIT` counts the connection that ran the script: a multiplexed
/// connection never reconnects, and a cluster connection sends, redirects (`MOVED`, `ASK`, with
/// `ASKING`) and retries the pipeline as a whole, on the node of the script's first key.
async fn script_then_wait(
    conn: &mut Blocking<'_>,
    script_cmd: redis::Cmd,
    replicas: usize,
    wait_ms: u64,
) -> Result<(redis::RedisResult<Value>, redis::RedisResult<Value>), BackendError> {
    let mut wait = redis::cmd("WAIT");
    wait.arg(replicas).arg(wait_ms);
    let mut pipe = redis::pipe();
    pipe.ignore_errors()
        .add_command(script_cmd)
        .add_command(wait);
    let mut results = conn
        .query_pipeline(&pipe)
        .await
        .map_err(redis_error)?
        .into_iter();
    match (results.next(), results.next()) {
        (Some(script), Some(wait)) => Ok((script, wait)),
        _ => Err(BackendError::permanent(
            BACKEND,
            "unexpected number of replies to a script and WAIT pipeline",
        )),
    }
}

/// Bounds `call` to `timeout`.
async fn bounded<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, BackendError>>,
) -> Result<T, BackendError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result,
        Err(_elapsed) => Err(BackendError::timed_out(BACKEND, timeout)),
    }
}

impl From<Pool> for DeadpoolBackend {
    /// A backend checking one connection out of `pool` for each call.
    fn from(pool: Pool) -> Self {
        Self::new(Conn::Pool(pool))
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

impl fmt::Debug for DeadpoolBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("DeadpoolBackend");
        match &self.conn {
            Conn::Pool(pool) => s.field("pool", &pool.status()),
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
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let mut cmd = redis::cmd("SET");
        cmd.arg(key)
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(millis)
            .arg("GET");
        let previous = bounded(self.command_timeout, async {
            self.connection().await?.query(&cmd).await
        })
        .await?;
        match previous {
            // The key did not exist: this call set it.
            Value::Nil => Ok(true),
            // The key already held our value: an earlier write of ours, e.g. re-sent after a reconnect.
            Value::BulkString(bytes) => Ok(bytes == value.as_bytes()),
            Value::SimpleString(s) => Ok(s == value),
            Value::VerbatimString { text, .. } => Ok(text == value),
            other => Err(BackendError::permanent(
                BACKEND,
                format!("unexpected reply to SET NX GET: {other:?}"),
            )),
        }
    }

    async fn eval_script(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<ScriptValue, BackendError> {
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha
            .arg(script.sha1())
            .arg(keys.len())
            .arg(keys)
            .arg(args);
        let reply = bounded(self.command_timeout, async {
            let mut conn = self.connection().await?;
            match conn.query_raw(&evalsha).await {
                Err(err) if is_noscript(&err) => {
                    // Not in the server's script cache (never loaded, flushed, or a restarted or
                    // failed-over server): send the source, which also caches it again.
                    let mut eval = redis::cmd("EVAL");
                    eval.arg(script.source())
                        .arg(keys.len())
                        .arg(keys)
                        .arg(args);
                    conn.query(&eval).await
                }
                result => result.map_err(redis_error),
            }
        })
        .await?;
        script_value(reply)
    }

    /// The script and `WAIT` pipelined on one connection (see `script_then_wait`): `EVALSHA`, and
    /// `EVAL` again with `WAIT` when the server answered `NOSCRIPT`. Bounded by the command timeout plus
    /// `timeout`, and only by that: the request goes over a clone of the connection whose redis-rs
    /// response timeout is that bound too (except on a cluster connection, see the crate docs). After
    /// `NOSCRIPT` (the `WAIT` behind the failed `EVALSHA` ran for nothing), the `EVAL` and its `WAIT`
    /// get one more such bound.
    async fn eval_script_replicated(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
        replicas: usize,
        timeout: Duration,
    ) -> Result<(ScriptValue, usize), BackendError> {
        let wait_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let script_cmd = |name: &str, body: &str| {
            let mut cmd = redis::cmd(name);
            cmd.arg(body).arg(keys.len()).arg(keys).arg(args);
            cmd
        };
        // The adapter's bound covers the `WAIT`; redis-rs's own response timeout must not end it
        // sooner (see `CheckedOut::for_blocking`).
        let bound = self.command_timeout.saturating_add(timeout);
        let (mut checked_out, first) = bounded(bound, async {
            let mut checked_out = self.connection().await?;
            let evalsha = script_cmd("EVALSHA", script.sha1());
            let mut conn = checked_out.for_blocking(bound);
            let replies = script_then_wait(&mut conn, evalsha, replicas, wait_ms).await?;
            drop(conn);
            Ok((checked_out, replies))
        })
        .await?;
        let (reply, acked) = match first {
            // The `WAIT` after the failed `EVALSHA` ran for nothing, for up to `timeout`: the script and
            // a `WAIT` again, within a bound of their own.
            (Err(err), _) if is_noscript(&err) => {
                let eval = script_cmd("EVAL", script.source());
                let mut conn = checked_out.for_blocking(bound);
                bounded(bound, script_then_wait(&mut conn, eval, replicas, wait_ms)).await?
            }
            replies => replies,
        };
        let reply = script_value(reply.map_err(redis_error)?)?;
        let acked = match acked.map_err(redis_error)? {
            Value::Int(n) => usize::try_from(n).unwrap_or(0),
            other => {
                return Err(BackendError::permanent(
                    BACKEND,
                    format!("unexpected reply to WAIT: {other:?}"),
                ));
            }
        };
        Ok((reply, acked))
    }

    /// `BLPOP` on a connection checked out of the pool for the wait. Refused (permanently) on a lone
    /// multiplexed connection, which cannot block without holding up every other call on it, and on a
    /// cluster, which sends no signals: waiters poll there. A wait that is cancelled or times out
    /// discards its connection rather than return it to the pool still blocked.
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
        let block = timeout.clamp(Duration::from_millis(1), MAX_RELEASE_WAIT);
        bounded(self.command_timeout + block, async move {
            let mut blocked = Blocked(Some(self.connection().await?));
            let mut blpop = redis::cmd("BLPOP");
            blpop.arg(signal).arg(format!("{:.3}", block.as_secs_f64()));
            let Some(conn) = blocked.0.as_mut() else {
                return Ok(false);
            };
            let started = Instant::now();
            match conn.query_raw(&blpop).await {
                Ok(value) => {
                    // Answered: the connection is free again, back to the pool.
                    drop(blocked.0.take());
                    Ok(!matches!(value, Value::Nil))
                }
                // redis-rs's response timeout fired after the blocking window was over: nobody
                // signalled in time, which is "not woken", not a failure (the connection, whose
                // reply may still come, is discarded with `blocked`).
                Err(error) if error.is_timeout() && started.elapsed() >= block => Ok(false),
                Err(error) => Err(redis_error(error)),
            }
        })
        .await
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

/// Tokio's timer and spawner; the lease clock stays lock-core's default.
struct Tokio;

impl Executor for Tokio {
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(duration))
    }

    /// Onto the current runtime; `false` outside one.
    fn spawn(&self, task: BoxFuture<'static, ()>) -> bool {
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                drop(handle.spawn(task));
                true
            }
            Err(_) => false,
        }
    }
}

/// Whether the server answered `NOSCRIPT`: redis-rs parses that code into
/// `ErrorKind::Server(ServerErrorKind::NoScript)`; the code is checked too, for safety.
fn is_noscript(err: &RedisError) -> bool {
    matches!(err.kind(), ErrorKind::Server(ServerErrorKind::NoScript))
        || err.code() == Some("NOSCRIPT")
}

/// Whether trying again later may help.
fn is_transient(err: &RedisError) -> bool {
    if err.is_io_error() || err.is_timeout() || err.is_connection_dropped() {
        return true;
    }
    if matches!(
        err.kind(),
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::ReadOnly
        )
    ) {
        return true;
    }
    // `BUSY` (a script running too long) has no `ServerErrorKind`: it arrives as an extension error.
    matches!(
        err.code(),
        Some("LOADING" | "TRYAGAIN" | "MASTERDOWN" | "CLUSTERDOWN" | "READONLY" | "BUSY")
    )
}

fn redis_error(err: RedisError) -> BackendError {
    if is_transient(&err) {
        BackendError::transient(BACKEND, err)
    } else {
        BackendError::permanent(BACKEND, err)
    }
}

fn pool_error(err: PoolError) -> BackendError {
    let transient = match &err {
        PoolError::Timeout(_) | PoolError::Closed => true,
        PoolError::Backend(e) | PoolError::PostCreateHook(HookError::Backend(e)) => is_transient(e),
        PoolError::NoRuntimeSpecified | PoolError::PostCreateHook(HookError::Message(_)) => false,
    };
    if transient {
        BackendError::transient(BACKEND, err)
    } else {
        BackendError::permanent(BACKEND, err)
    }
}

/// Maps a script reply to a [`ScriptValue`], following Redis's RESP2 conversions for the RESP3-only
/// shapes (so a connection using RESP3 sees the same values).
fn script_value(value: Value) -> Result<ScriptValue, BackendError> {
    Ok(match value {
        Value::Nil => ScriptValue::Nil,
        Value::Int(n) => ScriptValue::Int(n),
        Value::BulkString(bytes) => ScriptValue::Str(String::from_utf8(bytes).map_err(|e| {
            BackendError::permanent(BACKEND, format!("script reply is not UTF-8: {e}"))
        })?),
        Value::SimpleString(s) => ScriptValue::Str(s),
        Value::Okay => ScriptValue::Str("OK".to_owned()),
        Value::VerbatimString { text, .. } => ScriptValue::Str(text),
        // Under RESP3 a Lua boolean is a boolean reply; RESP2 turns `false` into nil and `true` into 1.
        Value::Boolean(false) => ScriptValue::Nil,
        Value::Boolean(true) => ScriptValue::Int(1),
        Value::Double(d) => ScriptValue::Str(d.to_string()),
        Value::Array(items) | Value::Set(items) => ScriptValue::Array(
            items
                .into_iter()
                .map(script_value)
                .collect::<Result<_, _>>()?,
        ),
        Value::Map(pairs) => ScriptValue::Array(
            pairs
                .into_iter()
                .flat_map(|(k, v)| [k, v])
                .map(script_value)
                .collect::<Result<_, _>>()?,
        ),
        Value::Attribute { data, .. } => script_value(*data)?,
        other => {
            return Err(BackendError::permanent(
                BACKEND,
                format!("unexpected script reply: {other:?}"),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_script_replies() {
        let reply = Value::Array(vec![
            Value::Int(1),
            Value::BulkString(b"a".to_vec()),
            Value::Nil,
            Value::Okay,
            Value::SimpleString("PONG".into()),
            Value::Boolean(false),
        ]);
        assert_eq!(
            script_value(reply).unwrap(),
            ScriptValue::Array(vec![
                ScriptValue::Int(1),
                ScriptValue::Str("a".into()),
                ScriptValue::Nil,
                ScriptValue::Str("OK".into()),
                ScriptValue::Str("PONG".into()),
                ScriptValue::Nil,
            ])
        );
        let err = script_value(Value::BulkString(vec![0xff])).unwrap_err();
        assert!(!err.is_transient());
        assert_eq!(err.backend(), "deadpool");
    }

    #[test]
    fn classifies_errors() {
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(redis_error(io).is_transient());
        let timeout = RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(redis_error(timeout).is_transient());
        for (code, transient) in [
            ("LOADING", true),
            ("TRYAGAIN", true),
            ("MASTERDOWN", true),
            ("CLUSTERDOWN", true),
            ("READONLY", true),
            ("BUSY", true),
            ("NOSCRIPT", false),
            ("WRONGTYPE", false),
            ("ERR", false),
        ] {
            let err = redis::make_extension_error(code.to_owned(), Some("detail".to_owned()));
            assert_eq!(redis_error(err).is_transient(), transient, "{code}");
        }
        assert!(pool_error(PoolError::Closed).is_transient());
        assert!(!pool_error(PoolError::NoRuntimeSpecified).is_transient());
    }

    #[test]
    fn default_timeout_and_debug() {
        let pool = deadpool_redis::Config::from_url("redis://127.0.0.1:1/")
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .unwrap();
        let backend = DeadpoolBackend::from(pool);
        assert_eq!(backend.timeout(), Duration::from_secs(5));
        let backend = backend.command_timeout(Duration::from_millis(300));
        assert_eq!(backend.timeout(), Duration::from_millis(300));
        let debug = format!("{backend:?}");
        assert!(debug.starts_with("DeadpoolBackend { pool: "), "{debug}");
        assert!(debug.contains("command_timeout: 300ms"), "{debug}");
    }
}
