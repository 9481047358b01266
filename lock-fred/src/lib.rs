//! The [fred](https://docs.rs/fred) adapter for redlease locks.
//!
//! [`FredBackend`] wraps a fred [`Client`] or [`Pool`] and implements lock-core's
//! [`LockBackend`]: `SET key value NX PX ms GET` for acquiring (one round trip, Redis 7.0 or later),
//! `EVALSHA` with an `EVAL` fallback on `NOSCRIPT` for the lock scripts, tokio for sleeping and for
//! background releases. Every call is bounded by [`FredBackend::command_timeout`] (5 s by default).
//! No lock logic lives here.
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
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fred::clients::{Client, Pool};
use fred::error::{Error, ErrorKind};
use fred::interfaces::{ClientLike, KeysInterface, LuaInterface};
use fred::types::config::Options;
use fred::types::{Expiration, SetOptions, Value};
use futures::future::BoxFuture;
use lock_core::Script;
use lock_core::{BackendError, LockBackend, ScriptValue};

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
        }
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
        let bound = self.command_timeout;
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
            match &self.inner {
                Inner::Client(client) => eval_with_fallback(client, script, keys, args).await,
                Inner::Pool(pool) => eval_with_fallback(pool, script, keys, args).await,
            }
        };
        let reply = self.bounded(call).await?;
        convert::script_value(reply)
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        // Created on first poll, so that calling `sleep` outside a runtime context does not panic.
        Box::pin(async move { tokio::time::sleep(duration).await })
    }

    fn spawn_detached(&self, task: BoxFuture<'static, ()>) -> bool {
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                drop(handle.spawn(task));
                true
            }
            Err(_) => false,
        }
    }
}
