//! The [`LockBackend`] trait: the Redis operations the lock algorithm needs, and what a backend can do
//! ([`Capabilities`]). The runtime its locks run on (clock, sleep, spawn) is a separate handle,
//! [`Runtime`], that a backend hands out but never uses itself.
//!
//! A third-party backend writes the Redis calls (`set_nx`, `eval_script`, and where it can
//! `eval_script_replicated` and `wait_for_release`), says which it supports in `capabilities()`, and
//! returns its [`Runtime`] if it has one. Nothing else: the in-process waiting lines, the clock rules
//! and every retry are the lock side's.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::runtime::Runtime;
use crate::script::Script;

// Defined beside `LockError`, so that error.rs needs nothing from here (no module cycle).
pub(crate) use crate::error::BackendError;

/// What a lock needs from Redis, implemented once per client.
///
/// The trait is object safe: `Arc<dyn LockBackend>` is itself a backend, so code written against locks does
/// not change when the client does. Adapters are thin: they translate these calls into their client's
/// commands, run scripts by `EVALSHA` with an `EVAL` fallback on `NOSCRIPT`, bound every call in time and
/// map failures into [`BackendError`]. No lock logic lives in a backend.
///
/// Only [`set_nx`](Self::set_nx) and [`eval_script`](Self::eval_script) are required. A backend that
/// can do more says so in [`capabilities`](Self::capabilities), and one that runs on an async runtime
/// returns it from [`runtime`](Self::runtime).
#[async_trait]
pub trait LockBackend: Debug + Send + Sync + 'static {
    /// `SET key value NX PX ttl`: `true` when the key was set by this call, or already holds exactly
    /// `value`.
    ///
    /// The second case matters because a client that re-sends a command over a new connection (fred does
    /// by default) can make our own earlier, successful write look like a refusal. Implementations read the
    /// previous value back in the same round trip (`SET .. NX PX .. GET`) and compare it with `value`.
    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, BackendError>;

    /// Runs `script` with `keys` and `args`: `EVALSHA` first, `EVAL` when the server answers `NOSCRIPT`.
    ///
    /// Lock-core's scripts are in [`script`](crate::script); [`Redlock`](crate::Redlock) also runs
    /// [`SERVER_ID`](crate::script::SERVER_ID), without keys, to learn which server a master is.
    async fn eval_script(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<ScriptValue, BackendError>;

    /// Runs `script` like [`eval_script`](Self::eval_script), then `WAIT replicas timeout` **on the same
    /// connection**, and returns the script's reply with the number of replicas that acknowledged the
    /// connection's writes (which `WAIT` counts per connection, so running it anywhere else would count
    /// someone else's writes, or none).
    ///
    /// `replicas` is at least 1 and `timeout` at least 1 ms when called by the lock (`WAIT` with a zero
    /// timeout would block forever). Implementations bound the call by their per-call bound plus
    /// `timeout`, and in a cluster send `WAIT` to the node that owns `keys[0]`'s slot.
    ///
    /// Optional ([`Capabilities::replica_acks`]): the default answers a permanent error saying this
    /// backend cannot wait for replicas, which is what a lock with
    /// [`replicas`](crate::RedisLock::replicas) then reports.
    async fn eval_script_replicated(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
        replicas: usize,
        timeout: Duration,
    ) -> Result<(ScriptValue, usize), BackendError> {
        let _ = (script, keys, args, replicas, timeout);
        Err(BackendError::permanent(
            "redlease",
            "this backend does not support waiting for replica acknowledgement (WAIT)",
        ))
    }

    /// Waits, on a connection of its own, until a release pushes to the signal list `signal` (`BLPOP`)
    /// or `timeout` passes: `Ok(true)` when woken, `Ok(false)` when the time passed.
    ///
    /// Optional ([`Capabilities::blocking_waits`]): the lock calls it only on a backend that can block
    /// without holding up its other calls; elsewhere (a single shared connection, say) waiters poll
    /// with backoff. The default answers a permanent error saying this backend cannot block.
    ///
    /// Wake-ups are hints: a waiter always tries the lock again afterwards, and every wait is capped.
    async fn wait_for_release(
        &self,
        signal: &str,
        timeout: Duration,
    ) -> Result<bool, BackendError> {
        let _ = (signal, timeout);
        Err(BackendError::permanent(
            "redlease",
            "this backend cannot block waiting for a release (BLPOP)",
        ))
    }

    /// What this backend can do beyond `set_nx` and `eval_script`. The default: nothing.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// The runtime this backend's locks run on (clock, sleep, spawn), shared by its clones: build it
    /// once with [`Runtime::new`] where the clones share state, and return it here.
    ///
    /// `None`, the default, runs the locks on a runtime-neutral one
    /// ([`Moment::now`](crate::Moment::now), a futures-timer sleep, no spawning: a guard dropped
    /// without `release` is then freed by its TTL) without in-process waiting lines, and leaves the
    /// backend without an identity: a [`Redlock`](crate::Redlock) then tells its masters apart only by
    /// the server they answer [`SERVER_ID`](crate::script::SERVER_ID) with.
    fn runtime(&self) -> Option<&Runtime> {
        None
    }
}

/// What a [`LockBackend`] can do beyond the two required calls, in the manner of OpenDAL's
/// `Capability`: plain data, all `false` by default.
///
/// Build it in one expression with the `with_*` methods (they are `const`):
///
/// ```
/// use lock_core::Capabilities;
///
/// let clustered = true;
/// let capabilities = Capabilities::new()
///     .with_replica_acks(true)
///     .with_release_signals(!clustered)
///     .with_blocking_waits(!clustered)
///     .with_cluster(clustered);
/// assert!(capabilities.replica_acks && !capabilities.blocking_waits);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Capabilities {
    /// [`eval_script_replicated`](LockBackend::eval_script_replicated) works: the backend can run
    /// `WAIT` on the connection that wrote.
    pub replica_acks: bool,
    /// A release should also push a wake-up to the key's signal list (one more key in the release
    /// script), for waiters elsewhere blocked in [`wait_for_release`](LockBackend::wait_for_release).
    ///
    /// The Redis adapters send them except in Redis Cluster, where a script touching two keys is
    /// refused (`TRYAGAIN`) while their slot migrates: there, waiters poll.
    pub release_signals: bool,
    /// [`wait_for_release`](LockBackend::wait_for_release) works: the backend can block on a
    /// connection of its own. Without it, waiters poll with backoff.
    pub blocking_waits: bool,
    /// The backend talks to a Redis Cluster: a script without keys may run on any node, so a
    /// [`Redlock`](crate::Redlock) does not ask it which server it is.
    pub cluster: bool,
}

impl Capabilities {
    /// Nothing: the same as `Capabilities::default()`.
    pub const fn new() -> Self {
        Self {
            replica_acks: false,
            release_signals: false,
            blocking_waits: false,
            cluster: false,
        }
    }

    /// With [`replica_acks`](Self::replica_acks) set to `yes`.
    pub const fn with_replica_acks(mut self, yes: bool) -> Self {
        self.replica_acks = yes;
        self
    }

    /// With [`release_signals`](Self::release_signals) set to `yes`.
    pub const fn with_release_signals(mut self, yes: bool) -> Self {
        self.release_signals = yes;
        self
    }

    /// With [`blocking_waits`](Self::blocking_waits) set to `yes`.
    pub const fn with_blocking_waits(mut self, yes: bool) -> Self {
        self.blocking_waits = yes;
        self
    }

    /// With [`cluster`](Self::cluster) set to `yes`.
    pub const fn with_cluster(mut self, yes: bool) -> Self {
        self.cluster = yes;
        self
    }
}

/// The runtime the lock side runs `backend`'s locks on: the backend's own, or the neutral one without
/// lines.
pub(crate) fn runtime_of<B: LockBackend + ?Sized>(backend: &B) -> &Runtime {
    match backend.runtime() {
        Some(runtime) => runtime,
        None => Runtime::fallback(),
    }
}

/// `Arc<T>` and `Box<T>` are backends when `T` is: one forwarding body for both pointers.
macro_rules! forward_through_pointer {
    ($($pointer:ident),*) => {$(
        #[async_trait]
        impl<T: LockBackend + ?Sized> LockBackend for $pointer<T> {
            async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, BackendError> {
                (**self).set_nx(key, value, ttl).await
            }

            async fn eval_script(
                &self,
                script: &Script,
                keys: &[&str],
                args: &[&str],
            ) -> Result<ScriptValue, BackendError> {
                (**self).eval_script(script, keys, args).await
            }

            async fn eval_script_replicated(
                &self,
                script: &Script,
                keys: &[&str],
                args: &[&str],
                replicas: usize,
                timeout: Duration,
            ) -> Result<(ScriptValue, usize), BackendError> {
                (**self)
                    .eval_script_replicated(script, keys, args, replicas, timeout)
                    .await
            }

            async fn wait_for_release(
                &self,
                signal: &str,
                timeout: Duration,
            ) -> Result<bool, BackendError> {
                (**self).wait_for_release(signal, timeout).await
            }

            fn capabilities(&self) -> Capabilities {
                (**self).capabilities()
            }

            fn runtime(&self) -> Option<&Runtime> {
                (**self).runtime()
            }
        }
    )*};
}

forward_through_pointer!(Arc, Box);

/// The server's `run_id` in the reply to `INFO server` (a line `run_id:<40 hex digits>`): what
/// [`SERVER_ID`](crate::script::SERVER_ID) answers, for code that reads `INFO` itself. `None` when the
/// reply has no such line.
pub fn run_id_from_info(info: &str) -> Option<&str> {
    info.lines()
        .find_map(|line| line.trim_end().strip_prefix("run_id:"))
        .filter(|id| !id.is_empty())
}

/// A script's reply, in the shapes lock scripts use.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScriptValue {
    /// A nil reply (Lua `false` or `nil`).
    Nil,
    /// An integer reply.
    Int(i64),
    /// A bulk or status string reply.
    Str(String),
    /// An array reply.
    Array(Vec<ScriptValue>),
}

impl ScriptValue {
    /// The integer value, if this is an integer reply.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            ScriptValue::Int(n) => Some(*n),
            _ => None,
        }
    }

    /// The string value, if this is a string reply.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            ScriptValue::Str(s) => Some(s),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn backend_error_names_backend_and_chains_cause() {
        let err = BackendError::timed_out("fred", Duration::from_millis(250));
        assert_eq!(err.to_string(), "transient failure in backend fred");
        assert_eq!(err.backend(), "fred");
        assert!(err.is_transient());
        assert_eq!(err.source().unwrap().to_string(), "no reply within 250ms");

        let err = BackendError::permanent("deadpool", "ERR wrong type");
        assert_eq!(err.to_string(), "permanent failure in backend deadpool");
        assert!(!err.is_transient());
    }

    #[test]
    fn run_id_is_read_from_info_server() {
        let info = "# Server\r\nredis_version:7.0.15\r\nrun_id:3f1c0a9e2b7d4c5e6f708192a3b4c5d6e7f80912\r\ntcp_port:6379\r\n";
        assert_eq!(
            run_id_from_info(info),
            Some("3f1c0a9e2b7d4c5e6f708192a3b4c5d6e7f80912")
        );
        assert_eq!(run_id_from_info("# Server\r\nrun_id:\r\n"), None);
        assert_eq!(run_id_from_info("redis_version:7.0.15"), None);
    }

    #[test]
    fn wrappers_forward_the_runtime_and_the_capabilities() {
        let a = Arc::new(crate::memory::MemoryBackend::new());
        let b = crate::memory::MemoryBackend::new();
        let wrapped: Arc<dyn LockBackend> = Arc::new(a.clone());
        let boxed: Box<dyn LockBackend> = Box::new(a.clone());
        let runtime = a.runtime().expect("memory has a runtime");
        assert!(wrapped.runtime().unwrap().same_as(runtime));
        assert!(boxed.runtime().unwrap().same_as(runtime));
        assert!(
            (*a).clone().runtime().unwrap().same_as(runtime),
            "clones share the runtime"
        );
        assert!(!b.runtime().unwrap().same_as(runtime));
        assert_eq!(wrapped.capabilities(), a.capabilities());
        assert_eq!(boxed.capabilities(), a.capabilities());
    }

    /// A backend with only the two required calls.
    #[derive(Debug)]
    struct Minimal;

    #[async_trait]
    impl LockBackend for Minimal {
        async fn set_nx(&self, _: &str, _: &str, _: Duration) -> Result<bool, BackendError> {
            Ok(true)
        }

        async fn eval_script(
            &self,
            _: &Script,
            _: &[&str],
            _: &[&str],
        ) -> Result<ScriptValue, BackendError> {
            Ok(ScriptValue::Nil)
        }
    }

    #[test]
    fn the_defaults_can_do_nothing_and_say_so() {
        let backend = Minimal;
        assert_eq!(backend.capabilities(), Capabilities::default());
        assert_eq!(Capabilities::new(), Capabilities::default());
        assert!(backend.runtime().is_none());
        assert!(runtime_of(&backend).lines().is_none(), "no waiting lines");
        let script = Script::new("noop", "return 1");
        let replicated = futures::executor::block_on(backend.eval_script_replicated(
            &script,
            &["k"],
            &[],
            1,
            Duration::from_millis(1),
        ))
        .unwrap_err();
        assert!(!replicated.is_transient());
        let wait =
            futures::executor::block_on(backend.wait_for_release("s", Duration::from_millis(1)))
                .unwrap_err();
        assert!(!wait.is_transient());
        assert!(wait.source().unwrap().to_string().contains("cannot block"));
    }

    #[test]
    fn backend_is_object_safe_and_forwarded() {
        fn assert_backend<B: LockBackend>() {}
        assert_backend::<Arc<dyn LockBackend>>();
        assert_backend::<Box<dyn LockBackend>>();
    }
}
