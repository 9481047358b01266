//! Where connections come from: for lock traffic on a plain pool, the pool's lock lane (one
//! multiplexed connection taken out of the pool and shared, see [`Lane`]); otherwise one checked out of
//! a pool per call (a plain, cluster or Sentinel pool), or a clone of one multiplexed connection; and
//! how a connection that may still be blocked on the server is kept from serving the next caller.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use deadpool_redis::Pool;
use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::{self, RedisError, Value};
use lock_core::BackendError;

use crate::convert;

/// Where connections come from.
#[derive(Clone)]
pub(crate) enum Conn {
    /// A plain pool, and its lock lane (shared by clones of the backend).
    Pool(Pool, Arc<Lane>),
    Multiplexed(MultiplexedConnection),
    Cluster(deadpool_redis::cluster::Pool),
    Sentinel(deadpool_redis::sentinel::Pool),
}

impl Conn {
    /// A connection for one lock command (`SET`, a script, `CONFIG GET`): on a plain pool a clone of
    /// the lock lane, taken out of the pool first if there is none (see [`Lane`]); otherwise as
    /// [`checkout`](Self::checkout).
    pub(crate) async fn get(&self) -> Result<CheckedOut, BackendError> {
        match self {
            Conn::Pool(pool, lane) => lane.get(pool).await,
            _ => self.checkout().await,
        }
    }

    /// A connection of its own for one call, for commands that block it (`BLPOP`) or must run on the
    /// connection that wrote (`WAIT`): checked out of the pool (and returned to it when dropped), or a
    /// clone of the multiplexed connection.
    pub(crate) async fn checkout(&self) -> Result<CheckedOut, BackendError> {
        match self {
            Conn::Pool(pool, _) => pool
                .get()
                .await
                .map(CheckedOut::Pooled)
                .map_err(convert::pool_error),
            Conn::Multiplexed(conn) => Ok(CheckedOut::Multiplexed(conn.clone())),
            Conn::Cluster(pool) => pool
                .get()
                .await
                .map(|conn| CheckedOut::Cluster(Box::new(conn)))
                .map_err(convert::pool_error),
            Conn::Sentinel(pool) => pool
                .get()
                .await
                .map(CheckedOut::Sentinel)
                .map_err(convert::pool_error),
        }
    }
}

/// The lock lane of a plain pool: one multiplexed connection taken out of the pool for lock commands,
/// whose clones (one per call, sharing its socket) serve every `SET` and script of the backend and its
/// clones. A checkout costs deadpool-redis's recycle (`UNWATCH` + `PING`) each time, which doubled the
/// commands of every acquisition; the lane pays it once, when it takes the connection.
///
/// The connection is *taken* (`deadpool_redis::Connection::take`), not kept checked out: it no longer
/// counts against the pool's size, so a pool of one still has a connection for a `BLPOP` or a `WAIT`,
/// and the process holds at most one connection more than the pool's size. A connection error or a
/// timeout on a call over the lane forgets it (the next call takes a new one through the pool, whose
/// recycle weeds out dead connections); a server error (`NOSCRIPT`, `WRONGTYPE`, ...) does not.
#[derive(Default)]
pub(crate) struct Lane {
    /// The lane's connection and the number it was installed under, if it has one.
    slot: Mutex<Option<(u64, MultiplexedConnection)>>,
    /// Numbers connections so that forgetting a broken one never drops its successor.
    installed: AtomicU64,
}

impl Lane {
    fn slot(&self) -> MutexGuard<'_, Option<(u64, MultiplexedConnection)>> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A clone of the lane's connection; when there is none, one checked out of `pool`, which becomes
    /// the lane unless a concurrent call installed one first (then it serves this call and goes back
    /// to the pool).
    async fn get(self: &Arc<Self>, pool: &Pool) -> Result<CheckedOut, BackendError> {
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let pooled = pool.get().await.map_err(convert::pool_error)?;
        let mut slot = self.slot();
        if slot.is_some() {
            return Ok(CheckedOut::Pooled(pooled));
        }
        let id = self.installed.fetch_add(1, Ordering::Relaxed);
        let conn = deadpool_redis::Connection::take(pooled);
        *slot = Some((id, conn.clone()));
        Ok(CheckedOut::Lane(LaneConn::new(self, id, conn)))
    }

    fn current(self: &Arc<Self>) -> Option<CheckedOut> {
        let slot = self.slot();
        let (id, conn) = slot.as_ref()?;
        Some(CheckedOut::Lane(LaneConn::new(self, *id, conn.clone())))
    }

    /// Drops connection `id` if it is still the lane's (closing it once its last clone goes).
    fn forget(&self, id: u64) {
        let mut slot = self.slot();
        if slot.as_ref().is_some_and(|(current, _)| *current == id) {
            *slot = None;
        }
    }
}

/// A clone of the lane's connection for one call. Forgets the lane's connection when a query on it
/// failed for the connection's sake, or was dropped before its reply came (the adapter's bound
/// elapsed: the server may be frozen or the socket half-open).
pub(crate) struct LaneConn {
    lane: Arc<Lane>,
    id: u64,
    conn: MultiplexedConnection,
    /// Whether the last query on it ended with a reply (a server error counts), or none was sent.
    healthy: bool,
}

impl LaneConn {
    fn new(lane: &Arc<Lane>, id: u64, conn: MultiplexedConnection) -> Self {
        Self {
            lane: Arc::clone(lane),
            id,
            conn,
            healthy: true,
        }
    }

    /// Another clone of the lane's connection (same socket).
    pub(crate) fn connection(&self) -> MultiplexedConnection {
        self.conn.clone()
    }

    async fn query(&mut self, cmd: &redis::Cmd) -> Result<Value, RedisError> {
        self.healthy = false;
        let reply = cmd.query_async(&mut self.conn).await;
        self.healthy = reply.as_ref().err().is_none_or(|e| !breaks_connection(e));
        reply
    }
}

impl Drop for LaneConn {
    fn drop(&mut self) {
        if !self.healthy {
            self.lane.forget(self.id);
        }
    }
}

/// Whether `error` says the connection it came over should not serve another call: it failed, was
/// dropped or refused, or a reply did not come in time. Server errors leave the connection fine.
fn breaks_connection(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_unrecoverable_error()
}

/// A connection in use by one call.
pub(crate) enum CheckedOut {
    /// A clone of a plain pool's lock lane.
    Lane(LaneConn),
    Pooled(deadpool_redis::Connection),
    Multiplexed(MultiplexedConnection),
    // Boxed: a cluster connection is much larger than the others.
    Cluster(Box<deadpool_redis::cluster::Connection>),
    Sentinel(deadpool_redis::sentinel::Connection),
}

impl CheckedOut {
    /// Sends `cmd`, mapping a failure into a [`BackendError`].
    pub(crate) async fn query(&mut self, cmd: &redis::Cmd) -> Result<Value, BackendError> {
        self.query_raw(cmd).await.map_err(convert::backend_error)
    }

    /// Sends `cmd`, keeping redis-rs's error. A cluster connection routes it by its first key.
    pub(crate) async fn query_raw(&mut self, cmd: &redis::Cmd) -> Result<Value, RedisError> {
        match self {
            CheckedOut::Lane(conn) => conn.query(cmd).await,
            CheckedOut::Pooled(conn) => cmd.query_async(&mut **conn).await,
            CheckedOut::Multiplexed(conn) => cmd.query_async(conn).await,
            CheckedOut::Cluster(conn) => cmd.query_async(&mut **conn).await,
            CheckedOut::Sentinel(conn) => cmd.query_async(&mut **conn).await,
        }
    }

    /// Detaches the connection from its pool and closes it: for a connection that may still be blocked
    /// in a command nobody waits for, which must not serve the next caller.
    fn discard(self) {
        match self {
            // Never blocked: `BLPOP` and `WAIT` go over checked-out connections.
            CheckedOut::Lane(conn) => drop(conn),
            CheckedOut::Pooled(conn) => drop(deadpool_redis::Connection::take(conn)),
            CheckedOut::Multiplexed(conn) => drop(conn),
            CheckedOut::Cluster(conn) => drop(deadpool_redis::cluster::Connection::take(*conn)),
            CheckedOut::Sentinel(conn) => drop(deadpool_redis::sentinel::Connection::take(conn)),
        }
    }
}

/// A connection blocked in a command (`BLPOP`): discarded if dropped before the reply came, given back
/// with [`release`](Self::release) once it answered.
pub(crate) struct Blocked(Option<CheckedOut>);

impl Blocked {
    pub(crate) fn new(conn: CheckedOut) -> Self {
        Self(Some(conn))
    }

    /// The connection, until it is released or discarded.
    pub(crate) fn conn(&mut self) -> Option<&mut CheckedOut> {
        self.0.as_mut()
    }

    /// Answered: the connection is free again, back to its pool.
    pub(crate) fn release(mut self) {
        drop(self.0.take());
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            conn.discard();
        }
    }
}
