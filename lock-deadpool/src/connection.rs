//! Where connections come from: one checked out of a pool per call (a plain, cluster or Sentinel pool),
//! or a clone of one multiplexed connection; and how a connection that may still be blocked on the
//! server is kept from serving the next caller.

use deadpool_redis::Pool;
use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::{self, RedisError, Value};
use lock_core::BackendError;

use crate::convert;

/// Where connections come from.
#[derive(Clone)]
pub(crate) enum Conn {
    Pool(Pool),
    Multiplexed(MultiplexedConnection),
    Cluster(deadpool_redis::cluster::Pool),
    Sentinel(deadpool_redis::sentinel::Pool),
}

impl Conn {
    /// A connection for one call: checked out of the pool (and returned to it when dropped), or a clone
    /// of the multiplexed connection.
    pub(crate) async fn get(&self) -> Result<CheckedOut, BackendError> {
        match self {
            Conn::Pool(pool) => pool
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

/// A connection in use by one call.
pub(crate) enum CheckedOut {
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
