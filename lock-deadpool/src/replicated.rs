//! Replica acknowledgement: a script and `WAIT` pipelined as one request on one connection, over a
//! clone of that connection whose response timeout covers the `WAIT`.
//!
//! One request on one connection, so `WAIT` counts the connection that ran the script: a multiplexed
//! connection never reconnects, and a cluster connection sends, redirects (`MOVED`, `ASK`, with
//! `ASKING`) and retries the pipeline as a whole, on the node of the script's first key.

use std::time::Duration;

use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::{self, RedisError, RedisResult, Value};
use lock_core::adapter::Command;
use lock_core::{BackendError, Script, ScriptValue};

use crate::connection::CheckedOut;
use crate::convert::{self, bounded};
use crate::{BACKEND, DeadpoolBackend};

/// [`LockBackend::eval_script_replicated`](lock_core::LockBackend::eval_script_replicated): `EVALSHA`
/// and `WAIT`, then `EVAL` and `WAIT` when the server answered `NOSCRIPT`. Bounded by the command
/// timeout plus `timeout`, and only by that: the request goes over a clone of the connection whose
/// redis-rs response timeout is that bound too (except on a cluster connection, see the crate docs).
/// After `NOSCRIPT` (the `WAIT` behind the failed `EVALSHA` ran for nothing), the `EVAL` and its `WAIT`
/// get one more such bound.
pub(crate) async fn eval(
    backend: &DeadpoolBackend,
    script: &Script,
    keys: &[&str],
    args: &[&str],
    replicas: usize,
    timeout: Duration,
) -> Result<(ScriptValue, usize), BackendError> {
    // The adapter's bound covers the `WAIT`; redis-rs's own response timeout must not end it sooner
    // (see `for_blocking`).
    let bound = backend.get_command_timeout().saturating_add(timeout);
    let wait = || convert::cmd(Command::wait(replicas, timeout));
    let (mut checked_out, first) = bounded(bound, async {
        let mut checked_out = backend.conn.checkout().await?;
        let evalsha = convert::cmd(Command::evalsha(script, keys, args));
        let mut conn = for_blocking(&mut checked_out, bound);
        let replies = script_then_wait(&mut conn, evalsha, wait()).await?;
        drop(conn);
        Ok((checked_out, replies))
    })
    .await?;
    let (reply, acked) = match first {
        // The `WAIT` after the failed `EVALSHA` ran for nothing, for up to `timeout`: the script and a
        // `WAIT` again, within a bound of their own.
        (Err(error), _) if convert::is_noscript(&error) => {
            let eval = convert::cmd(Command::eval(script, keys, args));
            let mut conn = for_blocking(&mut checked_out, bound);
            bounded(bound, script_then_wait(&mut conn, eval, wait())).await?
        }
        replies => replies,
    };
    let reply = convert::script_value(reply.map_err(convert::backend_error)?)?;
    let acked = convert::wait_reply(acked.map_err(convert::backend_error)?)?;
    Ok((reply, acked))
}

/// `conn` for a request that blocks on the server (`WAIT`): a clone of a multiplexed connection
/// (sharing its socket, so the request still goes over this connection) whose redis-rs response timeout
/// is raised to `response_timeout`, or the cluster connection as it is.
///
/// redis-rs's own response timeout (500 ms unless configured) would otherwise cut a `WAIT` longer than
/// it short and report a transient timeout instead of the replicas' count. The clone keeps the pooled
/// connection's own setting for every other call. A cluster connection has no per-request setting: its
/// response timeout is unset unless the cluster client set one, which must then exceed the replica
/// timeout (see the crate documentation).
fn for_blocking(conn: &mut CheckedOut, response_timeout: Duration) -> Blocking<'_> {
    let mut conn = match conn {
        CheckedOut::Lane(conn) => conn.connection(),
        CheckedOut::Pooled(conn) => MultiplexedConnection::clone(conn),
        CheckedOut::Multiplexed(conn) => conn.clone(),
        CheckedOut::Sentinel(conn) => MultiplexedConnection::clone(conn),
        CheckedOut::Cluster(conn) => return Blocking::Cluster(conn),
    };
    conn.set_response_timeout(response_timeout);
    Blocking::Multiplexed(conn)
}

/// A connection for a request that blocks on the server, see [`for_blocking`]. Borrows the checked-out
/// connection, which stays out of the pool while the request runs.
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
    ) -> Result<Vec<RedisResult<Value>>, RedisError> {
        match self {
            Blocking::Multiplexed(conn) => pipe.query_async(conn).await,
            Blocking::Cluster(conn) => pipe.query_async(&mut **conn).await,
        }
    }
}

/// `script` (`EVALSHA` or `EVAL` with its keys and arguments) and `wait`, pipelined on `conn`: the
/// script's result, and `WAIT`'s.
async fn script_then_wait(
    conn: &mut Blocking<'_>,
    script: redis::Cmd,
    wait: redis::Cmd,
) -> Result<(RedisResult<Value>, RedisResult<Value>), BackendError> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors().add_command(script).add_command(wait);
    let mut results = conn
        .query_pipeline(&pipe)
        .await
        .map_err(convert::backend_error)?
        .into_iter();
    match (results.next(), results.next()) {
        (Some(script), Some(wait)) => Ok((script, wait)),
        _ => Err(BackendError::permanent(
            BACKEND,
            "unexpected number of replies to a script and WAIT pipeline",
        )),
    }
}
