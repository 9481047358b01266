//! The [fred](https://docs.rs/fred) adapter for redlease locks.
//!
//! [`FredBackend`] wraps a fred [`Client`] or [`Pool`] and implements lock-core's
//! [`LockBackend`]: `SET key value NX PX ms GET` for acquiring (one round trip, Redis 7.0 or later),
//! `EVALSHA` with an `EVAL` fallback on `NOSCRIPT` for the lock scripts, the script and `WAIT` on one
//! connection for replica acknowledgement, tokio for sleeping and for background releases. Every call
//! is bounded by [`FredBackend::command_timeout`] (5 s by default). No lock logic lives here: the
//! command arguments, the transient error codes and the reply rules come from
//! [`lock_core::adapter`], shared with the deadpool adapter.
//!
//! The client is yours: build, configure (reconnect policy, TLS, RESP version) and connect it as you
//! like, then hand it over. The backend is cheap to clone and shares the client.
//!
//! **Give the client a reconnect policy.** A fred client built without one stays disconnected after
//! the server restarts or the connection drops, and every later call fails; the backend's errors then
//! say so and name the fix. The example below sets what a production client needs: a reconnect
//! policy, a connection timeout and a command timeout.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use lock_fred::fred::prelude::{Builder, ClientLike, Config, ReconnectPolicy};
//! use lock_fred::FredBackend;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::from_url("redis://127.0.0.1:6379/")?;
//! let client = Builder::from_config(config)
//!     .set_policy(ReconnectPolicy::new_exponential(0, 100, 30_000, 2))
//!     .with_connection_config(|c| c.connection_timeout = Duration::from_secs(2))
//!     .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(5))
//!     .build()?;
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
//! replies `LOADING`, `TRYAGAIN`, `MASTERDOWN`, `CLUSTERDOWN`, `READONLY` and `BUSY`
//! ([`TRANSIENT_ERROR_CODES`](lock_core::adapter::TRANSIENT_ERROR_CODES)) are transient; everything
//! else (script errors, `WRONGTYPE`, syntax errors, authentication) is permanent.
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
pub use lock_core::adapter::DEFAULT_COMMAND_TIMEOUT;

mod cluster;
mod convert;
// The eviction-policy check.
mod eviction;
mod release_wait;
mod replicated;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fred::clients::{Client, Pool};
use fred::error::Error;
use fred::interfaces::{ClientLike, KeysInterface, LuaInterface};
use fred::types::config::Options;
use fred::types::{ClientState, Expiration, SetOptions, Value};
use futures::future::BoxFuture;
use lock_core::adapter;
use lock_core::{BackendError, Capabilities, Executor, LockBackend, Runtime, Script, ScriptValue};

use crate::release_wait::Blockers;

/// The backend name in every [`BackendError`] of this crate.
const BACKEND: &str = "fred";

/// A [`LockBackend`] over a fred [`Client`] or [`Pool`].
///
/// Build it with `From`: `FredBackend::from(client)` or `FredBackend::from(pool)`, then optionally set
/// [`command_timeout`](Self::command_timeout). Cloning is cheap and shares the client (fred's clients
/// are reference counted).
#[derive(Clone, Debug)]
pub struct FredBackend {
    inner: Inner,
    command_timeout: Duration,
    /// Tokio's timer and spawner, shared by clones (so are the in-process waiting lines it carries).
    runtime: Runtime,
    /// Idle connections of our own for `BLPOP`, which would hold up every other command on a shared one.
    blockers: Arc<Blockers>,
    /// The eviction-policy check, made once per backend and its clones (the `eviction` module).
    eviction: Arc<adapter::EvictionCheck>,
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
        Self::new(Inner::Client(client))
    }
}

impl From<Pool> for FredBackend {
    /// A backend sending each command through the pool's next client (fred's own round robin, which
    /// prefers connected clients unless told otherwise).
    fn from(pool: Pool) -> Self {
        Self::new(Inner::Pool(pool))
    }
}

impl FredBackend {
    fn new(inner: Inner) -> Self {
        Self {
            inner,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            runtime: Runtime::new(Tokio),
            blockers: Arc::default(),
            eviction: Arc::default(),
        }
    }

    /// Bounds every call in time: a call that has no reply within `bound` fails with a transient
    /// [`BackendError::timed_out`]. A script call falling back from `EVALSHA` to `EVAL` stays within one
    /// bound as a whole.
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
    /// Each blocking wait (`BLPOP`) holds a connection of the backend's own (made with the client's config, kept idle between waits) while it blocks, so the limit bounds the connections
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

    /// Runs `call` within the command timeout, mapping its errors; fails at once, naming the fix,
    /// when the client is disconnected and will never reconnect.
    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, BackendError> {
        self.check_reconnects()?;
        let outcome = convert::bounded_by(self.command_timeout, call).await;
        match outcome {
            // fred may still report such a client as connected after its connection dropped: a
            // call that got no reply names the missing policy as the likely cause.
            Err(error)
                if error.is_transient() && self.client().client_reconnect_policy().is_none() =>
            {
                let what = error.what();
                Err(BackendError::transient(BACKEND, convert::NotReconnecting).describe(what))
            }
            outcome => outcome,
        }
    }

    /// A client without a reconnect policy stays disconnected after its connection drops (a server
    /// restart, a failover): every command would then wait out the whole command timeout. Say so, and
    /// what to set, instead (permanent: only a new or reconnected client helps).
    fn check_reconnects(&self) -> Result<(), BackendError> {
        let client = self.client();
        if client.client_reconnect_policy().is_some() || client.state() != ClientState::Disconnected
        {
            return Ok(());
        }
        Err(BackendError::permanent(BACKEND, convert::NotReconnecting).describe("disconnected"))
    }
}

/// `SET key value NX PX ttl GET` through `client`, a client or a pool with options.
async fn set_nx_get<C: KeysInterface + Sync>(
    client: &C,
    key: &str,
    value: &str,
    ttl: Duration,
) -> Result<Value, Error> {
    let px = Expiration::PX(adapter::millis(ttl));
    client
        .set(key, value, Some(px), Some(SetOptions::NX), true)
        .await
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
    /// `SET key value NX PX ttl GET`, also sent with fred's own per-command timeout (see the crate
    /// documentation); on a cluster, routed as the `cluster` module says.
    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, BackendError> {
        self.check_eviction();
        let options = Options {
            timeout: Some(self.command_timeout),
            ..Options::default()
        };
        let call = async {
            let client = self.client();
            if client.is_clustered() {
                return cluster::set_nx_get(client, key, value, ttl, self.command_timeout).await;
            }
            match &self.inner {
                Inner::Client(client) => {
                    set_nx_get(&client.with_options(&options), key, value, ttl).await
                }
                Inner::Pool(pool) => {
                    set_nx_get(&pool.with_options(&options), key, value, ttl).await
                }
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
        self.check_eviction();
        let call = async {
            let client = self.client();
            if client.is_clustered() {
                return cluster::eval(client, script, keys, args, self.command_timeout).await;
            }
            match &self.inner {
                Inner::Client(client) => eval_with_fallback(client, script, keys, args).await,
                Inner::Pool(pool) => eval_with_fallback(pool, script, keys, args).await,
            }
        };
        let reply = self.bounded(call).await?;
        convert::script_value(reply)
    }

    /// The script and `WAIT` as one pipeline on one connection, see the `replicated` module. In a cluster both
    /// go to the node owning `keys[0]`'s slot; the commands are written once (fred's `max_attempts` of
    /// 1), so a `MOVED`/`ASK` redirection or a broken connection fails the call (transiently) instead of
    /// sending `WAIT` elsewhere.
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

    /// `BLPOP` on a connection of our own (made with the client's config on first use, then kept idle
    /// between waits), so the shared client is never blocked (the `release_wait` module). Refused
    /// (permanently) in Redis Cluster, where releases send no signal.
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
        release_wait::wait_for_release(self, signal, timeout).await
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

/// Tokio's timer and spawner; the lease clock stays lock-core's default. (The other Redis adapter has
/// its own: lock-core holds no runtime, and this is all the runtime glue an adapter needs.)
struct Tokio;

impl Executor for Tokio {
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        // Created on first poll, so that calling `sleep` outside a runtime context does not panic.
        Box::pin(async move { tokio::time::sleep(duration).await })
    }

    /// Onto the current runtime; `false` outside one.
    fn spawn(&self, task: BoxFuture<'static, ()>) -> bool {
        let handle = tokio::runtime::Handle::try_current();
        handle.map(|runtime| drop(runtime.spawn(task))).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use fred::prelude::{Builder, Config};

    use super::*;

    fn backend() -> FredBackend {
        // Not connected: building a client sends nothing.
        let config = Config::from_url("redis://127.0.0.1:1/").unwrap();
        FredBackend::from(Builder::from_config(config).build().unwrap())
    }

    #[test]
    fn command_timeout_default_and_getter() {
        let backend = backend();
        assert_eq!(backend.get_command_timeout(), Duration::from_secs(5));
        let backend = backend.command_timeout(Duration::from_millis(300));
        assert_eq!(backend.get_command_timeout(), Duration::from_millis(300));
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
