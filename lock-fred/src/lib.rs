//! The [fred](https://docs.rs/fred) adapter for redlease locks.
//!
//! [`FredBackend`] wraps a fred [`Client`] or [`Pool`] and implements lock-core's
//! [`LockBackend`]: `SET key value NX PX ms GET` for acquiring (one round trip, Redis 7.0 or later),
//! `EVALSHA` with an `EVAL` fallback on `NOSCRIPT` for the lock scripts, the script and `WAIT` on one
//! connection for replica acknowledgement, tokio for sleeping and for background releases. Every call
//! is bounded by [`FredBackend::command_timeout`] (5 s by default). No lock logic lives here.
//!
//! The client is yours: build, configure (reconnect policy, TLS, RESP version) and connect it as you
//! like, then hand it over. The backend is cheap to clone and shares the client.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use lock_fred::fred::prelude::{Builder, ClientLike, Config};
//! use lock_fred::FredBackend;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::from_url("redis://127.0.0.1:6379/")?;
//! let client = Builder::from_config(config).build()?;
//! client.init().await?;
//!
//! let backend = FredBackend::from(client).command_timeout(Duration::from_secs(2));
//!
//! // Usually handed to the lock API; the calls can also be made directly.
//! use lock_core::LockBackend;
//! let ours = backend.set_nx("jobs:nightly", "token-1", Duration::from_secs(30)).await?;
//! assert!(ours);
//! let released = backend
//!     .eval_script(&lock_core::script::RELEASE, &["jobs:nightly"], &["token-1"])
//!     .await?;
//! assert_eq!(released.as_int(), Some(1));
//! # Ok(())
//! # }
//! ```
//!
//! # Cluster and Sentinel
//!
//! The same backend takes a client (or pool) built for a Redis Cluster (`ServerConfig::Clustered`, or
//! `Config::from_url("redis-cluster://host:port?node=host2:port2")`) or for a primary found through
//! Sentinel (`ServerConfig::Sentinel`, or `redis-sentinel://...?sentinelServiceName=...`); no feature
//! is needed, and lock code does not change. Give such clients a reconnect policy
//! (`Builder::set_policy`), so that they follow a failover, and a cluster client several nodes (or
//! `ClusterDiscoveryPolicy::UseCache`): fred rediscovers a cluster only through the nodes its
//! configuration names, so a client that names one node cannot follow that node's failover.
//!
//! In a cluster every command goes to the node that owns its first key's slot (lock-core keeps all keys
//! of one script in one slot), and `NOSCRIPT` falls back to `EVAL` on that node, so each node learns the
//! scripts it runs. fred follows `MOVED` itself; it does not follow `ASK` for plain commands in 10.1 (it
//! sends the command back to the node that answered `ASK`, then drops every connection), so on a cluster
//! the adapter allows one redirection per command and sends a command that met an `ASK` (a slot being
//! migrated) again as a one-command transaction, which fred does send, with `ASKING`, to the node `ASK`
//! names. This is why the adapter enables fred's `transactions` feature. On a cluster, scripts also carry
//! fred's per-command timeout.
//!
//! # Replica acknowledgement
//!
//! For locks with [`RedisLock::replicas`](lock_core::RedisLock::replicas), the script and `WAIT` are
//! sent as one pipeline through one client (a pool picks one), which fred writes back to back to one
//! connection: in a cluster, the one to the node of the lock's slot. Both commands are written at most
//! once (fred's `max_attempts` of 1): fred re-sends commands over a new connection after a disconnect,
//! and a `WAIT` on a connection that did not run the script would count nothing and report every
//! replica. So a broken connection, or a `MOVED` or `ASK` redirection (after a resharding, or while the
//! lock's slot is migrating), fails such a call transiently instead; [`hold`](lock_core::LockGuard::hold)
//! retries renewals, and fred has learnt the new slot owner for the next call after a `MOVED`. The call is
//! bounded by the command timeout plus the `WAIT` timeout, twice that after a `NOSCRIPT` (the `WAIT`
//! behind the failed `EVALSHA` runs for nothing before `EVAL` and another `WAIT` are sent). `WAIT` blocks the connection it runs on, so
//! other commands of the same client wait behind it for up to the `WAIT` timeout when replicas are slow.
//!
//! # Errors
//!
//! Every [`BackendError`] names the backend `"fred"` and keeps fred's [`fred::error::Error`] as
//! its source. Connection failures (IO, a closed connection, canceled commands), timeouts and the server
//! replies `LOADING`, `TRYAGAIN`, `MASTERDOWN`, `CLUSTERDOWN`, `READONLY` and `BUSY` are transient;
//! everything else (script errors, `WRONGTYPE`, syntax errors, authentication) is permanent.
//!
//! # Timeouts and late writes
//!
//! A call that does not complete within the bound returns [`BackendError::timed_out`]. The `SET` is also
//! sent with fred's own per-command timeout (`Options::timeout`), so fred drops it instead of writing it
//! later if it is still queued (for example while reconnecting) when the bound elapses. Script calls are
//! only bounded on our side, since fred's `WithOptions` does not offer the Lua commands: a script still
//! queued may run later, which is harmless because every lock script checks the caller's token first.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]

pub use fred;

mod convert;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fred::clients::{Client, Pool};
use fred::error::{Error, ErrorKind};
use fred::interfaces::{
    ClientLike, KeysInterface, LuaInterface, ServerInterface, TransactionInterface,
};
use fred::types::config::Options;
use fred::types::{ClusterHash, CustomCommand, Expiration, SetOptions, Value};
use fred::util::redis_keyslot;
use futures::future::BoxFuture;
use lock_core::Script;
use lock_core::{BackendError, Capabilities, Executor, LockBackend, Runtime, ScriptValue};

/// The backend name in every [`BackendError`] of this crate.
const BACKEND: &str = "fred";

/// The default bound on every call, see [`FredBackend::command_timeout`].
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// A [`LockBackend`] over a fred [`Client`] or [`Pool`].
///
/// Build it with `From`: `FredBackend::from(client)` or `FredBackend::from(pool)`. Cloning is cheap and
/// shares the client (fred's clients are reference counted).
#[derive(Clone, Debug)]
pub struct FredBackend {
    inner: Inner,
    command_timeout: Duration,
    /// Tokio's timer and spawner, shared by clones (so are the in-process waiting lines it carries).
    runtime: Runtime,
    /// Idle connections of our own for `BLPOP`, which would hold up every other command on a shared one.
    blockers: Arc<Blockers>,
}

/// What the backend sends its commands through.
#[derive(Clone, Debug)]
enum Inner {
    Client(Client),
    Pool(Pool),
}

impl From<Client> for FredBackend {
    /// A backend sending every command through `client`.
    fn from(client: Client) -> Self {
        Self::with_inner(Inner::Client(client))
    }
}

impl From<Pool> for FredBackend {
    /// A backend sending each command through the pool's next client (fred's own round robin, which
    /// prefers connected clients unless told otherwise).
    fn from(pool: Pool) -> Self {
        Self::with_inner(Inner::Pool(pool))
    }
}

impl FredBackend {
    fn with_inner(inner: Inner) -> Self {
        Self {
            inner,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            runtime: Runtime::new(Tokio),
            blockers: Arc::default(),
        }
    }

    /// An idle connection of our own for a blocking wait, or a new one with the client's config.
    async fn blocker(&self) -> Result<Blocker<'_>, BackendError> {
        let idle = self.blockers.take();
        let client = match idle {
            Some(client) => client,
            None => {
                let client = self.client().clone_new();
                self.bounded(async {
                    client.init().await?;
                    Ok(())
                })
                .await?;
                client
            }
        };
        Ok(Blocker {
            client: Some(client),
            home: &self.blockers,
        })
    }

    /// Bounds every call in time: a call that has no reply within `bound` fails with a transient
    /// [`BackendError::timed_out`]. A script call falling back from `EVALSHA` to `EVAL` stays within one
    /// bound as a whole.
    ///
    /// The default is [`DEFAULT_COMMAND_TIMEOUT`] (5 s). A zero bound is raised to 1 ms.
    #[must_use]
    pub fn command_timeout(mut self, bound: Duration) -> Self {
        self.command_timeout = bound.max(Duration::from_millis(1));
        self
    }

    /// The client the next command would go through: the client itself, or the pool's next connected
    /// client.
    pub fn client(&self) -> &Client {
        match &self.inner {
            Inner::Client(client) => client,
            Inner::Pool(pool) => pool.next_connected(),
        }
    }

    /// The pool, when the backend was built from one.
    pub fn pool(&self) -> Option<&Pool> {
        match &self.inner {
            Inner::Client(_) => None,
            Inner::Pool(pool) => Some(pool),
        }
    }

    /// Runs `call` within the bound, mapping its errors.
    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, BackendError> {
        bounded_by(self.command_timeout, call).await
    }
}

/// Idle connections for blocking waits, closed when the last clone of the backend goes.
#[derive(Default)]
struct Blockers(std::sync::Mutex<Vec<Client>>);

impl Blockers {
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Client>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self) -> Option<Client> {
        self.idle().pop()
    }
}

impl Drop for Blockers {
    fn drop(&mut self) {
        for client in self.idle().drain(..) {
            quit_in_background(client);
        }
    }
}

impl std::fmt::Debug for Blockers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} idle", self.idle().len())
    }
}

/// A connection in a blocking wait: back to the idle list when answered, closed when the wait was
/// cancelled or timed out (it may still be blocked on the server).
struct Blocker<'a> {
    client: Option<Client>,
    home: &'a Blockers,
}

impl Blocker<'_> {
    fn done(mut self) {
        if let Some(client) = self.client.take() {
            self.home.idle().push(client);
        }
    }
}

impl Drop for Blocker<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            quit_in_background(client);
        }
    }
}

/// Closes `client` without blocking: fred clients run until told to quit.
fn quit_in_background(client: Client) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let _ = client.quit().await;
        });
    }
}

/// The longest a release wait blocks one of our connections.
const MAX_RELEASE_WAIT: Duration = Duration::from_secs(1);

/// Runs `call` within `bound`, mapping its errors.
async fn bounded_by<T>(
    bound: Duration,
    call: impl Future<Output = Result<T, Error>>,
) -> Result<T, BackendError> {
    let started = Instant::now();
    match tokio::time::timeout(bound, call).await {
        Ok(Ok(reply)) => Ok(reply),
        // fred's own per-command timeout, set to the same bound: report it like ours.
        Ok(Err(error)) if *error.kind() == ErrorKind::Timeout && started.elapsed() >= bound => {
            Err(BackendError::timed_out(BACKEND, bound))
        }
        Ok(Err(error)) => Err(convert::backend_error(error)),
        Err(_elapsed) => Err(BackendError::timed_out(BACKEND, bound)),
    }
}

/// `SET key value NX PX px GET` through `client`.
async fn set_nx_get<C: KeysInterface + Sync>(
    client: &C,
    key: &str,
    value: &str,
    px: i64,
) -> Result<Value, Error> {
    client
        .set(
            key,
            value,
            Some(Expiration::PX(px)),
            Some(SetOptions::NX),
            true,
        )
        .await
}

/// `command` (`EVALSHA sha` or `EVAL source`) and `WAIT replicas wait_ms` as one pipeline, through
/// `client` with `options`: the script's result and `WAIT`'s.
///
/// The pipeline hands both commands to fred's router in one message, which writes them back to back to
/// one connection (the one for the keys' slot, as `options` routes them), so `WAIT` counts exactly the
/// connection that ran the script. `options` must allow one write attempt only: fred re-sends a command
/// whose connection broke over the next connection, and a `WAIT` re-sent alone would count that new
/// connection's writes (none) and report every replica.
#[allow(clippy::too_many_arguments)]
async fn script_then_wait(
    client: &Client,
    options: &Options,
    command: &'static str,
    body: &str,
    keys: &[&str],
    args: &[&str],
    replicas: i64,
    wait_ms: i64,
) -> Result<(Result<Value, Error>, Result<Value, Error>), Error> {
    let pipeline = client.pipeline().with_options(options);
    let hash = options.cluster_hash.clone().unwrap_or_default();
    let () = pipeline
        .custom(
            CustomCommand::new_static(command, hash, false),
            script_arguments(body, keys, args),
        )
        .await?;
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

/// On a cluster: `command arguments`, routed to the node of `slot`, following at most one `MOVED`, and
/// sent again as a one-command transaction after an `ASK`.
///
/// fred 10.1 does not follow `ASK` for plain commands: `process_ask` (src/router/commands.rs) sends
/// `ASKING` to the node the redirection names but then routes the command by its slot again, to the node
/// that answered `ASK`, until the write attempts run out; the resulting error then makes the router drop
/// and re-open every connection. Allowing one redirection (`max_redirections`) stops that after the
/// first `ASK` with `Too many redirections.`, and fred's transactions (src/router/transactions.rs) do
/// send `ASKING` and the transaction to the node `ASK` names. `MOVED` and `ASK` both mean the command did
/// not run, so sending it again is safe.
async fn send_clustered(
    client: &Client,
    command: &'static str,
    arguments: Vec<Value>,
    slot: u16,
    timeout: Duration,
) -> Result<Value, Error> {
    // A script touching two keys of a slot whose keys are being migrated gets `TRYAGAIN` until the
    // migration ends; redis-rs retries it by itself, fred does not. The caller's bound ends the loop.
    loop {
        match send_clustered_once(client, command, arguments.clone(), slot, timeout).await {
            Err(error) if convert::is_try_again(&error) => {
                tokio::time::sleep(TRY_AGAIN_PAUSE).await;
            }
            reply => return reply,
        }
    }
}

/// How long to wait before re-sending a command refused with `TRYAGAIN`.
const TRY_AGAIN_PAUSE: Duration = Duration::from_millis(20);

async fn send_clustered_once(
    client: &Client,
    command: &'static str,
    arguments: Vec<Value>,
    slot: u16,
    timeout: Duration,
) -> Result<Value, Error> {
    let custom = CustomCommand::new_static(command, ClusterHash::Custom(slot), false);
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

/// `EVALSHA`, then `EVAL` (which also caches the script) if the server does not know the script, on a
/// cluster (see `send_clustered`).
async fn eval_clustered(
    client: &Client,
    script: &Script,
    keys: &[&str],
    args: &[&str],
    timeout: Duration,
) -> Result<Value, Error> {
    let slot = keys.first().map_or(0, |key| redis_keyslot(key.as_bytes()));
    let evalsha = script_arguments(script.sha1(), keys, args);
    match send_clustered(client, "EVALSHA", evalsha, slot, timeout).await {
        Err(error) if convert::is_noscript(&error) => {
            let eval = script_arguments(script.source(), keys, args);
            send_clustered(client, "EVAL", eval, slot, timeout).await
        }
        reply => reply,
    }
}

/// `body numkeys keys.. args..`: the arguments of `EVALSHA` and `EVAL`.
fn script_arguments(body: &str, keys: &[&str], args: &[&str]) -> Vec<Value> {
    let mut arguments: Vec<Value> = Vec::with_capacity(2 + keys.len() + args.len());
    arguments.push(body.into());
    arguments.push(i64::try_from(keys.len()).unwrap_or(i64::MAX).into());
    arguments.extend(keys.iter().map(|k| Value::from(*k)));
    arguments.extend(args.iter().map(|a| Value::from(*a)));
    arguments
}

/// `EVALSHA`, then `EVAL` (which also caches the script) if the server does not know the script.
async fn eval_with_fallback<C: LuaInterface + Sync>(
    client: &C,
    script: &Script,
    keys: &[&str],
    args: &[&str],
) -> Result<Value, Error> {
    match client
        .evalsha(script.sha1().to_owned(), keys.to_vec(), args.to_vec())
        .await
    {
        Err(error) if convert::is_noscript(&error) => {
            client
                .eval(script.source().to_owned(), keys.to_vec(), args.to_vec())
                .await
        }
        reply => reply,
    }
}

#[async_trait]
impl LockBackend for FredBackend {
    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, BackendError> {
        let px = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let options = Options {
            timeout: Some(self.command_timeout),
            ..Options::default()
        };
        let call = async {
            let client = self.client();
            if client.is_clustered() {
                let arguments = vec![
                    Value::from(key),
                    Value::from(value),
                    Value::from("NX"),
                    Value::from("PX"),
                    Value::from(px),
                    Value::from("GET"),
                ];
                let slot = redis_keyslot(key.as_bytes());
                return send_clustered(client, "SET", arguments, slot, self.command_timeout).await;
            }
            match &self.inner {
                Inner::Client(client) => {
                    set_nx_get(&client.with_options(&options), key, value, px).await
                }
                Inner::Pool(pool) => set_nx_get(&pool.with_options(&options), key, value, px).await,
            }
        };
        let reply = self.bounded(call).await?;
        convert::set_nx_reply(reply, value)
    }

    async fn eval_script(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<ScriptValue, BackendError> {
        let call = async {
            let client = self.client();
            if client.is_clustered() {
                return eval_clustered(client, script, keys, args, self.command_timeout).await;
            }
            match &self.inner {
                Inner::Client(client) => eval_with_fallback(client, script, keys, args).await,
                Inner::Pool(pool) => eval_with_fallback(pool, script, keys, args).await,
            }
        };
        let reply = self.bounded(call).await?;
        convert::script_value(reply)
    }

    /// The script and `WAIT` as one pipeline on one connection (see `script_then_wait`): `EVALSHA`
    /// first, again with `EVAL` when the server answered `NOSCRIPT`. A pool uses one of its clients for
    /// both. In a cluster both go to the node owning `keys[0]`'s slot; the commands are written once
    /// (fred's `max_attempts` of 1), so a `MOVED`/`ASK` redirection or a broken connection fails the call
    /// (transiently) instead of sending `WAIT` elsewhere. The call is bounded by the command timeout
    /// plus `timeout`; after `NOSCRIPT` (the `WAIT` behind the failed `EVALSHA` ran for nothing), the
    /// `EVAL` and its `WAIT` get one more such bound.
    async fn eval_script_replicated(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
        replicas: usize,
        timeout: Duration,
    ) -> Result<(ScriptValue, usize), BackendError> {
        let client = self.client();
        let bound = self.command_timeout.saturating_add(timeout);
        let options = Options {
            max_attempts: Some(1),
            timeout: Some(bound),
            cluster_hash: keys
                .first()
                .map(|key| ClusterHash::Custom(redis_keyslot(key.as_bytes()))),
            ..Options::default()
        };
        let replicas = i64::try_from(replicas).unwrap_or(i64::MAX);
        let wait_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        let first = script_then_wait(
            client,
            &options,
            "EVALSHA",
            script.sha1(),
            keys,
            args,
            replicas,
            wait_ms,
        );
        let (reply, acked) = match bounded_by(bound, first).await? {
            // The `WAIT` after the failed `EVALSHA` ran for nothing, for up to `timeout`: the script and
            // a `WAIT` again, within a bound of their own.
            (Err(error), _) if convert::is_noscript(&error) => {
                let again = script_then_wait(
                    client,
                    &options,
                    "EVAL",
                    script.source(),
                    keys,
                    args,
                    replicas,
                    wait_ms,
                );
                bounded_by(bound, again).await?
            }
            replies => replies,
        };
        let reply = convert::script_value(reply.map_err(convert::backend_error)?)?;
        let acked = convert::wait_reply(acked.map_err(convert::backend_error)?)?;
        Ok((reply, acked))
    }

    /// `BLPOP` on a connection of our own (made with the client's config on first use, then kept idle
    /// between waits), so the shared client is never blocked. Refused (permanently) in Redis Cluster,
    /// where releases send no signal.
    async fn wait_for_release(
        &self,
        signal: &str,
        timeout: Duration,
    ) -> Result<bool, BackendError> {
        if self.client().is_clustered() {
            return Err(BackendError::permanent(
                BACKEND,
                "no blocking waits in Redis Cluster: releases send no signal there",
            ));
        }
        let block = timeout.clamp(Duration::from_millis(1), MAX_RELEASE_WAIT);
        let blocker = self.blocker().await?;
        let Some(client) = blocker.client.as_ref() else {
            return Ok(false);
        };
        // As a custom command: fred's `blpop` turns the nil reply of a wait that nothing woke into
        // an error (`ErrorKind::Timeout`, "Request timed out."), which would end the acquisition.
        let blpop = CustomCommand::new_static("BLPOP", ClusterHash::FirstKey, true);
        let args = vec![
            Value::from(signal),
            Value::from(format!("{:.3}", block.as_secs_f64())),
        ];
        let popped: Value =
            bounded_by(self.command_timeout + block, client.custom(blpop, args)).await?;
        blocker.done();
        Ok(!popped.is_null())
    }

    /// Replica acknowledgement; release signals and blocking waits except in Redis Cluster, where a
    /// script touching two keys is refused while their slot migrates (waiters poll there).
    fn capabilities(&self) -> Capabilities {
        let cluster = self.client().is_clustered();
        Capabilities::new()
            .with_replica_acks(true)
            .with_release_signals(!cluster)
            .with_blocking_waits(!cluster)
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
        // Created on first poll, so that calling `sleep` outside a runtime context does not panic.
        Box::pin(async move { tokio::time::sleep(duration).await })
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
