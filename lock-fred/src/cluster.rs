//! Redis Cluster: commands routed by slot, following at most one `MOVED`, sent again as a one-command
//! transaction after an `ASK`, and again after a pause on `TRYAGAIN`.
//!
//! fred 10.1 does not follow `ASK` for plain commands: `process_ask` (src/router/commands.rs) sends
//! `ASKING` to the node the redirection names but then routes the command by its slot again, to the node
//! that answered `ASK`, until the write attempts run out; the resulting error then makes the router drop
//! and re-open every connection. Allowing one redirection (`max_redirections`) stops that after the
//! first `ASK` with `Too many redirections.`, and fred's transactions (src/router/transactions.rs) do
//! send `ASKING` and the transaction to the node `ASK` names. `MOVED` and `ASK` both mean the command did
//! not run, so sending it again is safe.

use std::time::Duration;

use fred::clients::Client;
use fred::error::{Error, ErrorKind};
use fred::interfaces::{ClientLike, TransactionInterface};
use fred::types::config::Options;
use fred::types::{ClusterHash, Value};
use fred::util::redis_keyslot;
use lock_core::Script;
use lock_core::adapter::Command;

use crate::convert;

/// How long to wait before re-sending a command refused with `TRYAGAIN`.
const TRY_AGAIN_PAUSE: Duration = Duration::from_millis(20);

/// `SET key value NX PX ttl GET` on the node of `key`'s slot.
pub(crate) async fn set_nx_get(
    client: &Client,
    key: &str,
    value: &str,
    ttl: Duration,
    timeout: Duration,
) -> Result<Value, Error> {
    let slot = redis_keyslot(key.as_bytes());
    send(client, Command::set_nx_get(key, value, ttl), slot, timeout).await
}

/// `EVALSHA`, then `EVAL` (which also caches the script) if the server does not know the script, on
/// the node of `keys[0]`'s slot.
pub(crate) async fn eval(
    client: &Client,
    script: &Script,
    keys: &[&str],
    args: &[&str],
    timeout: Duration,
) -> Result<Value, Error> {
    let slot = keys.first().map_or(0, |key| redis_keyslot(key.as_bytes()));
    match send(client, Command::evalsha(script, keys, args), slot, timeout).await {
        Err(error) if convert::is_noscript(&error) => {
            send(client, Command::eval(script, keys, args), slot, timeout).await
        }
        reply => reply,
    }
}

/// `command`, routed to the node of `slot` (see the module documentation).
async fn send(
    client: &Client,
    command: Command<'_>,
    slot: u16,
    timeout: Duration,
) -> Result<Value, Error> {
    // A script touching two keys of a slot whose keys are being migrated gets `TRYAGAIN` until the
    // migration ends; redis-rs retries it by itself, fred does not. The caller's bound ends the loop.
    loop {
        match send_once(client, &command, slot, timeout).await {
            Err(error) if convert::is_try_again(&error) => {
                tokio::time::sleep(TRY_AGAIN_PAUSE).await;
            }
            reply => return reply,
        }
    }
}

async fn send_once(
    client: &Client,
    command: &Command<'_>,
    slot: u16,
    timeout: Duration,
) -> Result<Value, Error> {
    let (custom, arguments) = convert::custom(command.clone(), ClusterHash::Custom(slot), false);
    let options = Options {
        max_redirections: Some(1),
        cluster_hash: Some(ClusterHash::Custom(slot)),
        timeout: Some(timeout),
        ..Options::default()
    };
    match client
        .with_options(&options)
        .custom::<Value, Value>(custom.clone(), arguments.clone())
        .await
    {
        Err(error) if convert::is_redirection_limit(&error) => {
            let transaction = client.multi();
            let () = transaction.custom(custom, arguments).await?;
            match transaction.exec::<Value>(true).await? {
                Value::Array(mut replies) if replies.len() == 1 => Ok(replies.remove(0)),
                other => Err(Error::new(
                    ErrorKind::Protocol,
                    format!("unexpected transaction reply of type {}", other.kind()),
                )),
            }
        }
        reply => reply,
    }
}
