//! The runtime a backend's locks run on: [`Executor`] (the clock, sleeping, spawning) and [`Runtime`],
//! the handle an adapter builds once from its executor and shares between its clones.
//!
//! lock-core never names an async runtime. Everything the lock algorithm needs from one goes through
//! these three calls; an adapter for tokio fills them with tokio's, a simulation with virtual time.
//! A `Runtime` also carries the process's in-process waiting lines for its backend (see the `queue`
//! module): tasks locking through clones of one backend share its `Runtime`, and so wait in one line
//! per key. The lines are the lock side's: a backend never sees them.

use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use futures::future::{BoxFuture, Either, select};

use crate::error::{LockError, Result};
use crate::lease::renewals::Renewals;
use crate::queue::LocalQueues;
use crate::queue::{WaitGate, WaitPermit};
use crate::time::Moment;

/// The clock, timer and spawner of an async runtime, as the lock algorithm uses them.
///
/// Implement it once per runtime, then wrap it in a [`Runtime`] with [`Runtime::new`]. Implementations
/// must never block.
pub trait Executor: Send + Sync + 'static {
    /// Now, on the lease clock: what validity, wait deadlines and `max_hold` are measured on.
    ///
    /// The default, [`Moment::now`], counts time spent suspended (`CLOCK_BOOTTIME` on Linux), as
    /// Redis's clock does; a test or a simulation answers virtual time.
    fn now(&self) -> Moment {
        Moment::now()
    }

    /// A future that completes after `duration`, on this runtime's timer.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;

    /// Runs `task` in the background: `false` (dropping the task) when it cannot, outside the runtime
    /// say. A guard dropped without `release` is released through this; when it answers `false`, the
    /// lock's TTL frees the key.
    fn spawn(&self, task: BoxFuture<'static, ()>) -> bool;
}

/// The runtime-neutral executor: the lease clock, a futures-timer sleep, and no spawning.
struct Neutral;

impl Executor for Neutral {
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(futures_timer::Delay::new(duration))
    }

    fn spawn(&self, task: BoxFuture<'static, ()>) -> bool {
        drop(task);
        false
    }
}

/// What a backend's locks run on: an [`Executor`], and this process's waiting lines for the backend.
///
/// Build one per backend value with [`Runtime::new`], keep it where the backend's clones share it (an
/// adapter's shared state), and return it from
/// [`LockBackend::runtime`](crate::LockBackend::runtime). Cloning is cheap and shares everything.
///
/// Two things follow from sharing one `Runtime`: tasks locking one key through the backend (or its
/// clones) wait in line for it in this process and only one of them at a time talks to Redis; and
/// [`Redlock`](crate::Redlock) recognises the backend when it is listed twice ([`same_as`](Self::same_as)).
#[derive(Clone)]
pub struct Runtime {
    /// Shared by clones; its address is the runtime's identity.
    executor: Arc<dyn Executor>,
    /// `None` only for the lock side's own runtimes: the default for backends without one, and the
    /// testing wrapper that bypasses the lines.
    lines: Option<Arc<LocalQueues>>,
    /// The permits for blocking waits (see [`max_blocking_waits`](Self::max_blocking_waits)), shared
    /// by clones and by [`without_lines`](Self::without_lines).
    gate: Arc<WaitGate>,
    /// The renewal scheduler of the leases held through this runtime's backend (started on first use).
    renewals: Arc<Renewals>,
}

/// The runtime of backends that answer no [`Runtime`]: neutral, and without lines (shared by every such
/// backend, which may be different servers).
static WITHOUT_LINES: LazyLock<Runtime> = LazyLock::new(|| Runtime {
    executor: Arc::new(Neutral),
    lines: None,
    // Shared by every backend without a runtime of its own, which may be different servers: not
    // bounded, as before bounded waits.
    gate: Arc::new(WaitGate::new(usize::MAX)),
    renewals: Arc::default(),
});

impl Runtime {
    /// A runtime on `executor`, with waiting lines of its own.
    pub fn new(executor: impl Executor) -> Self {
        Self {
            executor: Arc::new(executor),
            lines: Some(Arc::default()),
            gate: Arc::new(WaitGate::new(Self::DEFAULT_MAX_BLOCKING_WAITS)),
            renewals: Arc::default(),
        }
    }

    /// A runtime on the runtime-neutral executor ([`Moment::now`], a futures-timer sleep, no
    /// spawning), with waiting lines of its own: for a backend that needs no async runtime but wants
    /// in-process lines and an identity.
    ///
    /// A backend that answers no runtime at all runs its locks on the same executor, without lines.
    pub fn neutral() -> Self {
        Self::new(Neutral)
    }

    /// The runtime the lock side uses for a backend that answers none.
    pub(crate) fn fallback() -> &'static Runtime {
        &WITHOUT_LINES
    }

    /// This runtime without its lines (same executor, same identity): tasks using it each talk to
    /// Redis on their own.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub(crate) fn without_lines(&self) -> Runtime {
        Self {
            executor: self.executor.clone(),
            lines: None,
            gate: self.gate.clone(),
            renewals: self.renewals.clone(),
        }
    }

    /// Now, on the lease clock ([`Executor::now`]).
    pub fn now(&self) -> Moment {
        self.executor.now()
    }

    /// A future that completes after `duration` ([`Executor::sleep`]).
    pub fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.executor.sleep(duration)
    }

    /// Runs `task` in the background, or answers `false` ([`Executor::spawn`]).
    pub fn spawn(&self, task: BoxFuture<'static, ()>) -> bool {
        self.executor.spawn(task)
    }

    /// Whether `self` and `other` are one runtime: clones of one [`Runtime::new`]. Backends sharing a
    /// runtime are one backend (clones of it, or wrappers around it) to [`Redlock`](crate::Redlock).
    pub fn same_as(&self, other: &Runtime) -> bool {
        std::ptr::addr_eq(Arc::as_ptr(&self.executor), Arc::as_ptr(&other.executor))
    }

    /// How many tasks of this process wait in line for `key` through backends sharing this runtime
    /// (not counting the one whose turn it is): for diagnostics and tests.
    pub fn waiting(&self, key: &str) -> usize {
        self.lines.as_ref().map_or(0, |lines| lines.waiting(key))
    }

    /// The renewal scheduler of this runtime (one per backend, shared by clones).
    pub(crate) fn renewals(&self) -> &Arc<Renewals> {
        &self.renewals
    }

    /// The waiting lines, unless this runtime keeps none.
    pub(crate) fn lines(&self) -> Option<&Arc<LocalQueues>> {
        self.lines.as_ref()
    }

    /// Runs `acquisition` (an `acquire`, a `try_acquire`, a campaign) for at most `wait` plus
    /// [`WAIT_GRACE`]: past that it is dropped and [`LockError::Timeout`] names `key`.
    ///
    /// The loops inside end at the wait deadline on their own; this bounds what they cannot: a call
    /// to a frozen or unreachable server that would otherwise last the backend's whole call bound.
    /// Dropping the acquisition is a cancellation, which every acquisition is safe against (an armed
    /// lease or place is released in the background). A zero wait (one attempt) and no wait are not
    /// bounded here: the one attempt gets the backend's call bound.
    pub(crate) async fn within_wait<T>(
        &self,
        key: &str,
        wait: Option<Duration>,
        acquisition: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let bound = match wait {
            Some(wait) if !wait.is_zero() => wait.saturating_add(WAIT_GRACE),
            _ => return acquisition.await,
        };
        let started = self.now();
        match select(std::pin::pin!(acquisition), self.sleep(bound)).await {
            Either::Left((outcome, _)) => outcome,
            Either::Right(_) => Err(LockError::Timeout {
                key: key.to_owned(),
                waited: self.now() - started,
            }),
        }
    }
}

// Bounded waits (issue 13): at most a fixed number of blocking waits per backend.
impl Runtime {
    /// The default of [`max_blocking_waits`](Self::max_blocking_waits): 8.
    pub const DEFAULT_MAX_BLOCKING_WAITS: usize = 8;

    /// Lets at most `limit` waiters of this backend block on release signals at once
    /// ([`LockBackend::wait_for_release`](crate::LockBackend::wait_for_release)); the others poll
    /// with their lock's [`backoff`](crate::RedisLock::backoff), each delay capped as a blocking wait
    /// is (by the backoff's maximum and the time left to wait). The default is
    /// [`DEFAULT_MAX_BLOCKING_WAITS`](Self::DEFAULT_MAX_BLOCKING_WAITS).
    ///
    /// A blocking wait takes a connection of its own (out of the pool, or one the adapter opens) for
    /// as long as it blocks; without a bound, many keys waited on take many connections and can
    /// starve the holders' renewals of a pool. The limit counts waits, not keys or locks: the mutex
    /// and the semaphore-like primitives already have one waiter per key and process talk to Redis
    /// (the others wait in line locally), while each waiter of a fair lock waits on its own.
    ///
    /// What a polling waiter costs: it learns of a release up to one backoff delay later than a
    /// blocked one would (at most the backoff's maximum), and it makes one attempt per delay instead
    /// of one per release or wait cap. `0` means never block, always poll; `usize::MAX` means no
    /// bound. Every value is valid.
    ///
    /// The setting belongs to the runtime, so to the backend and all its clones: setting it through
    /// one sets it for every clone, at once (waits already blocking finish; no new one starts while
    /// `limit` or more block). Adapters set it with their own `max_blocking_waits` builder methods.
    #[must_use]
    pub fn max_blocking_waits(self, limit: usize) -> Self {
        self.gate.set_limit(limit);
        self
    }

    /// The limit set by [`max_blocking_waits`](Self::max_blocking_waits).
    pub fn get_max_blocking_waits(&self) -> usize {
        self.gate.limit()
    }

    /// How many waiters of this backend block on release signals now: for diagnostics and tests.
    pub fn blocking_waits(&self) -> usize {
        self.gate.in_use()
    }

    /// A slot for one blocking wait, returned when dropped; `None` when the limit is reached, and the
    /// waiter polls.
    pub(crate) fn blocking_wait(&self) -> Option<WaitPermit<'_>> {
        self.gate.try_enter()
    }
}

/// How long past its wait deadline an acquisition lets a call in flight answer (a blocking wait that
/// ends at the deadline, an attempt sent just before it) before [`Runtime::within_wait`] drops it.
pub(crate) const WAIT_GRACE: Duration = Duration::from_millis(100);

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("lines", &self.lines)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_are_the_same_runtime_and_new_ones_are_not() {
        let a = Runtime::neutral();
        let b = Runtime::neutral();
        assert!(a.same_as(&a.clone()));
        assert!(
            a.same_as(&a.without_lines()),
            "same executor, same identity"
        );
        assert!(!a.same_as(&b));
        assert!(a.lines().is_some());
        assert!(a.without_lines().lines().is_none());
        assert!(Runtime::fallback().lines().is_none());
    }

    #[test]
    fn debug_shows_the_lines_and_not_the_executor() {
        assert_eq!(
            format!("{:?}", Runtime::neutral()),
            "Runtime { lines: Some(LocalQueues { keys: 0, waiting: 0 }), .. }"
        );
        assert_eq!(
            format!("{:?}", Runtime::fallback()),
            "Runtime { lines: None, .. }"
        );
    }

    #[test]
    fn the_neutral_runtime_sleeps_and_cannot_spawn() {
        let runtime = Runtime::neutral();
        let started = std::time::Instant::now();
        futures::executor::block_on(runtime.sleep(Duration::from_millis(20)));
        assert!(started.elapsed() >= Duration::from_millis(20));
        assert!(!runtime.spawn(Box::pin(async {})));
        let (before, after) = (runtime.now(), Runtime::neutral().now());
        assert!(before <= after, "one lease clock");
    }

    #[test]
    fn waiting_counts_the_line_of_a_key() {
        let runtime = Runtime::neutral();
        let key: Arc<str> = Arc::from("k");
        let lines = runtime.lines().unwrap();
        let _baton = lines.join(&key);
        let _first = lines.join(&key);
        assert_eq!(runtime.waiting("k"), 1);
        assert_eq!(runtime.clone().waiting("k"), 1, "clones share the lines");
        assert_eq!(Runtime::neutral().waiting("k"), 0);
        assert_eq!(runtime.without_lines().waiting("k"), 0);
    }

    #[test]
    fn max_blocking_waits_is_shared_by_clones_and_bounds_permits() {
        let runtime = Runtime::neutral();
        assert_eq!(
            runtime.get_max_blocking_waits(),
            Runtime::DEFAULT_MAX_BLOCKING_WAITS
        );
        let clone = runtime.clone();
        let runtime = runtime.max_blocking_waits(1);
        assert_eq!(clone.get_max_blocking_waits(), 1);
        let permit = runtime.blocking_wait().expect("one slot");
        assert!(clone.blocking_wait().is_none(), "clones share the slot");
        assert!(runtime.without_lines().blocking_wait().is_none());
        assert_eq!(runtime.blocking_waits(), 1);
        drop(permit);
        assert_eq!(clone.blocking_waits(), 0);
        assert!(
            Runtime::neutral().blocking_wait().is_some(),
            "another backend"
        );
        assert_eq!(Runtime::fallback().get_max_blocking_waits(), usize::MAX);
    }
}
