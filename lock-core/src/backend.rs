//! The [`LockBackend`] trait: the two Redis operations the lock algorithm needs, and the runtime handle
//! the algorithm reads time, sleeps and spawns through (`now`, `sleep`, `spawn_detached`).

use std::error::Error as StdError;
use std::fmt::{self, Debug};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;

use crate::queue::LocalQueues;
use crate::script::Script;
use crate::time::Moment;

/// What a lock needs from Redis, implemented once per client.
///
/// The trait is object safe: `Arc<dyn LockBackend>` is itself a backend, so code written against locks does
/// not change when the client does. Adapters are thin: they translate these calls into their client's
/// commands, run scripts by `EVALSHA` with an `EVAL` fallback on `NOSCRIPT`, bound every call in time and
/// map failures into [`BackendError`]. No lock logic lives in a backend.
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
    /// Optional: the default answers a permanent error saying this backend cannot wait for replicas, which
    /// is what a lock with [`replicas`](crate::RedisLock::replicas) then reports.
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

    /// Now, on the lease clock this backend's locks measure validity, wait deadlines and `max_hold` on.
    ///
    /// Together with [`sleep`](Self::sleep) and [`spawn_detached`](Self::spawn_detached) this is the
    /// runtime handle of the lock algorithm: lock-core reads no other clock. The default,
    /// [`Moment::now`], counts time spent suspended (`CLOCK_BOOTTIME` on Linux), as Redis's clock does;
    /// a test or a simulation overrides the three together to run on virtual time.
    fn now(&self) -> Moment {
        Moment::now()
    }

    /// A future that completes after `duration`, on this backend's runtime.
    ///
    /// The default is a runtime-neutral timer (futures-timer); adapters for a runtime pass its own, so
    /// that tests can pause or drive time.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(futures_timer::Delay::new(duration))
    }

    /// Runs `task` in the background, if this backend knows a runtime to run it on.
    ///
    /// Returns `false` (dropping the task) when it cannot, which is the default: a guard dropped without
    /// `release` then relies on the lock's TTL. Implementations must never block.
    fn spawn_detached(&self, task: BoxFuture<'static, ()>) -> bool {
        drop(task);
        false
    }

    /// Whether a release should also push a wake-up to the key's signal list (one more key in the
    /// release script), for waiters in other processes blocked in
    /// [`wait_for_release`](Self::wait_for_release).
    ///
    /// The Redis adapters answer `true` except in Redis Cluster, where a script touching two keys is
    /// refused (`TRYAGAIN`) while their slot migrates: there, waiters poll. The default is `false`.
    fn release_signals(&self) -> bool {
        false
    }

    /// Waits, on a connection of its own, until a release pushes to the signal list `signal` (`BLPOP`)
    /// or `timeout` passes: `Ok(true)` when woken. `None` when this backend cannot block without holding
    /// up its other calls (a single shared connection, say); waiters then poll with backoff.
    ///
    /// Wake-ups are hints: a waiter always tries the lock again afterwards, and every wait is capped.
    fn wait_for_release<'a>(
        &'a self,
        signal: &'a str,
        timeout: Duration,
    ) -> Option<BoxFuture<'a, Result<bool, BackendError>>> {
        let _ = (signal, timeout);
        None
    }

    /// The per-key waiting lines of this backend's locks in this process, shared by its clones.
    ///
    /// With them, tasks contending for one key through this backend wait in FIFO order and only one of
    /// them at a time talks to Redis: hand-offs inside the process cost one round trip and every task
    /// gets its turn. The default, `None`, lets every task poll on its own.
    fn local_queues(&self) -> Option<&LocalQueues> {
        None
    }

    /// Identifies this backend value, and everything sharing its state, within this process: two
    /// backends answering the same number send to the same store, so [`Redlock`](crate::Redlock)
    /// refuses them as two of its masters ([`LockError::InvalidArgument`](crate::LockError)).
    ///
    /// The default is the address of the value, so the same backend listed twice (clones of one `Arc`,
    /// say) is recognised. Backends whose clones share their connections or their data answer the
    /// address of what the clones share (both Redis adapters, [`MemoryBackend`](crate::memory::MemoryBackend)),
    /// and wrappers that forward calls to an inner backend (`Arc`, `Box`, the testing wrappers) answer
    /// the inner backend's. Two separately built clients of one server are told apart only by
    /// [`server_id`](Self::server_id).
    fn instance_id(&self) -> usize {
        std::ptr::from_ref(self).cast::<()>().addr()
    }

    /// Asks the server for its identity: Redis's `run_id` (from `INFO server`), which is random per
    /// server process. [`Redlock`](crate::Redlock) asks each master once, at first contact, and refuses
    /// two masters that turn out to be one server
    /// ([`LockError::InvalidArgument`](crate::LockError)), whatever clients reach it.
    ///
    /// `None`, the default, when this backend cannot tell (the in-memory backend, a Redis Cluster
    /// client, whose commands may land on any node); then only [`instance_id`](Self::instance_id)
    /// tells masters apart. A permanent error (a user whose ACL forbids `INFO`, say) is taken as "cannot
    /// tell" too; a transient one is asked again at the next acquisition. Implementations bound the
    /// call like every other.
    fn server_id(&self) -> Option<BoxFuture<'_, Result<String, BackendError>>> {
        None
    }
}

/// Forwards the provided (capability) methods of [`LockBackend`] to `$target`, an expression of `$this`
/// (`self`): for wrappers that intercept only the calls to Redis.
macro_rules! forward_capabilities {
    (|$this:ident| $target:expr) => {
        fn now(&self) -> crate::time::Moment {
            let $this = self;
            $target.now()
        }

        fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
            let $this = self;
            $target.sleep(duration)
        }

        fn spawn_detached(&self, task: BoxFuture<'static, ()>) -> bool {
            let $this = self;
            $target.spawn_detached(task)
        }

        fn local_queues(&self) -> Option<&LocalQueues> {
            let $this = self;
            $target.local_queues()
        }

        fn wait_for_release<'a>(
            &'a self,
            signal: &'a str,
            timeout: Duration,
        ) -> Option<BoxFuture<'a, Result<bool, BackendError>>> {
            let $this = self;
            $target.wait_for_release(signal, timeout)
        }

        fn release_signals(&self) -> bool {
            let $this = self;
            $target.release_signals()
        }

        fn instance_id(&self) -> usize {
            let $this = self;
            $target.instance_id()
        }

        fn server_id(&self) -> Option<BoxFuture<'_, Result<String, BackendError>>> {
            let $this = self;
            $target.server_id()
        }
    };
}
#[cfg_attr(not(feature = "testing"), allow(unused_imports))]
pub(crate) use forward_capabilities;

macro_rules! forward_lock_backend {
    ($($wrapper:ident),*) => {$(
        #[async_trait]
        impl<T: LockBackend + ?Sized> LockBackend for $wrapper<T> {
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

            forward_capabilities!(|this| (**this));
        }
    )*};
}

forward_lock_backend!(Arc, Box);

/// The server's `run_id` in the reply to `INFO server` (a line `run_id:<40 hex digits>`), for
/// adapters implementing [`LockBackend::server_id`]. `None` when the reply has no such line.
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

/// A failure reported by a backend: which backend, whether trying again may help, and the cause.
#[derive(Debug)]
pub struct BackendError {
    backend: &'static str,
    transient: bool,
    source: Box<dyn StdError + Send + Sync + 'static>,
}

impl BackendError {
    /// A failure that may pass on its own: a dropped connection, a timeout, a server loading or failing
    /// over.
    pub fn transient(
        backend: &'static str,
        source: impl Into<Box<dyn StdError + Send + Sync + 'static>>,
    ) -> Self {
        Self {
            backend,
            transient: true,
            source: source.into(),
        }
    }

    /// A failure that trying again will not fix: a script error, a wrong type, a refused command.
    pub fn permanent(
        backend: &'static str,
        source: impl Into<Box<dyn StdError + Send + Sync + 'static>>,
    ) -> Self {
        Self {
            backend,
            transient: false,
            source: source.into(),
        }
    }

    /// The call did not complete within the backend's per-call bound.
    pub fn timed_out(backend: &'static str, bound: Duration) -> Self {
        Self::transient(backend, CallTimedOut(bound))
    }

    /// The backend's name, such as `"fred"` or `"deadpool"`.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        self.transient
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.transient {
            "transient"
        } else {
            "permanent"
        };
        write!(f, "{kind} failure in backend {}", self.backend)
    }
}

impl StdError for BackendError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(self.source.as_ref())
    }
}

/// The cause of [`BackendError::timed_out`].
#[derive(Debug, thiserror::Error)]
#[error("no reply within {0:?}")]
struct CallTimedOut(Duration);

#[cfg(test)]
mod tests {
    use super::*;

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
    fn instance_ids_see_through_wrappers() {
        let a = Arc::new(crate::memory::MemoryBackend::new());
        let b = crate::memory::MemoryBackend::new();
        let wrapped: Arc<dyn LockBackend> = Arc::new(a.clone());
        let boxed: Box<dyn LockBackend> = Box::new(a.clone());
        assert_eq!(wrapped.instance_id(), a.instance_id());
        assert_eq!(boxed.instance_id(), a.instance_id());
        assert_eq!(
            (*a).clone().instance_id(),
            a.instance_id(),
            "clones share the store"
        );
        assert_ne!(b.instance_id(), a.instance_id());
    }

    #[test]
    fn backend_is_object_safe_and_forwarded() {
        fn assert_backend<B: LockBackend>() {}
        assert_backend::<Arc<dyn LockBackend>>();
        assert_backend::<Box<dyn LockBackend>>();
    }
}
