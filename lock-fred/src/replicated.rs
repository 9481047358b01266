//! Replica acknowledgement: a script and `WAIT` as one pipeline, written once, to one connection.
//!
//! The pipeline hands both commands to fred's router in one message, which writes them back to back to
//! one connection (the one for the keys' slot, as the options route them), so `WAIT` counts exactly the
//! connection that ran the script. The options allow one write attempt only: fred re-sends a command
//! whose connection broke over the next connection, and a `WAIT` re-sent alone would count that new
//! connection's writes (none) and report every replica.

use std::time::Duration;

use fred::clients::Client;
use fred::error::{Error, ErrorKind};
use fred::interfaces::{ClientLike, ServerInterface};
use fred::types::config::Options;
use fred::types::{ClusterHash, Value};
use fred::util::redis_keyslot;
use lock_core::adapter::{self, Command};
use lock_core::{BackendError, Script, ScriptValue};

use crate::FredBackend;
use crate::convert::{self, bounded_by};

/// [`LockBackend::eval_script_replicated`](lock_core::LockBackend::eval_script_replicated): `EVALSHA`
/// and `WAIT`, then `EVAL` and `WAIT` when the server answered `NOSCRIPT`. A pool uses one of its
/// clients for both. Bounded by the command timeout plus `timeout`; after `NOSCRIPT` (the `WAIT` behind
/// the failed `EVALSHA` ran for nothing), the `EVAL` and its `WAIT` get one more such bound.
pub(crate) async fn eval(
    backend: &FredBackend,
    script: &Script,
    keys: &[&str],
    args: &[&str],
    replicas: usize,
    timeout: Duration,
) -> Result<(ScriptValue, usize), BackendError> {
    let client = backend.client();
    let bound = backend.get_command_timeout().saturating_add(timeout);
    let options = Options {
        max_attempts: Some(1),
        timeout: Some(bound),
        cluster_hash: keys
            .first()
            .map(|key| ClusterHash::Custom(redis_keyslot(key.as_bytes()))),
        ..Options::default()
    };
    let wait = (
        i64::try_from(replicas).unwrap_or(i64::MAX),
        adapter::millis(timeout),
    );
    let first = script_then_wait(client, &options, Command::evalsha(script, keys, args), wait);
    let (reply, acked) = match bounded_by(bound, first).await? {
        // The `WAIT` after the failed `EVALSHA` ran for nothing, for up to `timeout`: the script and a
        // `WAIT` again, within a bound of their own.
        (Err(error), _) if convert::is_noscript(&error) => {
            let again = script_then_wait(client, &options, Command::eval(script, keys, args), wait);
            bounded_by(bound, again).await?
        }
        replies => replies,
    };
    let reply = convert::script_value(reply.map_err(convert::backend_error)?)?;
    let acked = convert::wait_reply(acked.map_err(convert::backend_error)?)?;
    Ok((reply, acked))
}

/// `script` (`EVALSHA` or `EVAL`) and `WAIT replicas wait_ms` as one pipeline through `client` with
/// `options`: the script's result and `WAIT`'s. `WAIT` goes by fred's own `wait`, which fred knows to
/// be a blocking command.
async fn script_then_wait(
    client: &Client,
    options: &Options,
    script: Command<'_>,
    (replicas, wait_ms): (i64, i64),
) -> Result<(Result<Value, Error>, Result<Value, Error>), Error> {
    let pipeline = client.pipeline().with_options(options);
    let hash = options.cluster_hash.clone().unwrap_or_default();
    let (command, arguments) = convert::custom(script, hash, false);
    let () = pipeline.custom(command, arguments).await?;
    let () = pipeline.wait(replicas, wait_ms).await?;
    let mut results = pipeline.try_all::<Value>().await.into_iter();
    match (results.next(), results.next()) {
        (Some(script), Some(wait)) => Ok((script, wait)),
        // The pipeline as a whole failed (not sent, or timed out).
        (Some(Err(error)), None) => Err(error),
        _ => Err(Error::new(
            ErrorKind::Unknown,
            "unexpected number of replies to a script and WAIT pipeline",
        )),
    }
}
