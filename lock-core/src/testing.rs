//! The conformance suite every backend runs (feature `testing`).
//!
//! Each check is a plain `async fn` taking the backend under test, a [`Probe`] that reads and writes the
//! store directly (behind the backend's back, as another client would), and a key unique to the run. They
//! use only the backend's own `sleep`, so the suite runs on any executor. [`run_all`] runs every check.
//!
//! Checks panic with a message naming what broke, like assertions in a test.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::future::{BoxFuture, LocalBoxFuture, join_all};

use crate::backend::{BackendError, LockBackend, ScriptValue};
use crate::memory::MemoryBackend;
use crate::queue::LocalQueues;
use crate::script::Script;
use crate::{Election, LockError, LockGuard, RedisLock};
use futures::future::{Either, select};
use std::pin::pin;

/// Direct access to the store under test, used to set up and observe states.
#[async_trait]
pub trait Probe: Send + Sync {
    /// `GET key`.
    async fn get(&self, key: &str) -> Option<String>;
    /// `PTTL key`: `None` when the key does not exist or has no expiry.
    async fn pttl(&self, key: &str) -> Option<Duration>;
    /// `SET key value PX ttl`, overwriting whatever is there (another client taking the lock).
    async fn set(&self, key: &str, value: &str, ttl: Duration);
    /// `DEL key` (the lock expiring).
    async fn del(&self, key: &str);
    /// `SCRIPT FLUSH` (a restart or failover forgetting loaded scripts). A no-op where scripts are native.
    async fn flush_scripts(&self);
}

#[async_trait]
impl Probe for MemoryBackend {
    async fn get(&self, key: &str) -> Option<String> {
        MemoryBackend::get(self, key)
    }
    async fn pttl(&self, key: &str) -> Option<Duration> {
        self.ttl(key)
    }
    async fn set(&self, key: &str, value: &str, ttl: Duration) {
        MemoryBackend::set(self, key, value, ttl)
    }
    async fn del(&self, key: &str) {
        self.delete(key);
    }
    async fn flush_scripts(&self) {}
}

/// A backend wrapper that counts the calls reaching the backend, to prove what was (not) sent.
#[derive(Debug)]
pub struct CountingBackend<B> {
    inner: B,
    set_nx_calls: AtomicUsize,
    script_calls: AtomicUsize,
    last_set_nx_ttl: std::sync::Mutex<Option<Duration>>,
    replicated_acks: std::sync::Mutex<Vec<usize>>,
}

impl<B: LockBackend> CountingBackend<B> {
    /// Wraps `inner`.
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            set_nx_calls: AtomicUsize::new(0),
            script_calls: AtomicUsize::new(0),
            last_set_nx_ttl: std::sync::Mutex::new(None),
            replicated_acks: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// How many replicas each successful `eval_script_replicated` call answered, in call order.
    pub fn replicated_acks(&self) -> Vec<usize> {
        self.replicated_acks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The TTL the last `set_nx` call asked for.
    pub fn last_set_nx_ttl(&self) -> Option<Duration> {
        *self
            .last_set_nx_ttl
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// How many `set_nx` calls were made.
    pub fn set_nx_calls(&self) -> usize {
        self.set_nx_calls.load(Ordering::SeqCst)
    }

    /// How many `eval_script` calls were made.
    pub fn script_calls(&self) -> usize {
        self.script_calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl<B: LockBackend> LockBackend for CountingBackend<B> {
    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, BackendError> {
        self.set_nx_calls.fetch_add(1, Ordering::SeqCst);
        *self
            .last_set_nx_ttl
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(ttl);
        self.inner.set_nx(key, value, ttl).await
    }

    async fn eval_script(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<ScriptValue, BackendError> {
        self.script_calls.fetch_add(1, Ordering::SeqCst);
        self.inner.eval_script(script, keys, args).await
    }

    /// Counted as a script call; what it answered is kept (see [`Self::replicated_acks`]).
    async fn eval_script_replicated(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
        replicas: usize,
        timeout: Duration,
    ) -> Result<(ScriptValue, usize), BackendError> {
        self.script_calls.fetch_add(1, Ordering::SeqCst);
        let reply = self
            .inner
            .eval_script_replicated(script, keys, args, replicas, timeout)
            .await?;
        self.replicated_acks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(reply.1);
        Ok(reply)
    }

    crate::backend::forward_capabilities!(|this| this.inner);
}

/// A backend wrapper without the in-process waiting line: tasks locking through it each talk to Redis
/// on their own, as tasks in different processes do. Mixed with the wrapped backend, it makes
/// contention race in the store itself, not only in the local line.
#[derive(Debug)]
pub struct Unqueued<B>(pub B);

#[async_trait]
impl<B: LockBackend> LockBackend for Unqueued<B> {
    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, BackendError> {
        self.0.set_nx(key, value, ttl).await
    }

    async fn eval_script(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<ScriptValue, BackendError> {
        self.0.eval_script(script, keys, args).await
    }

    async fn eval_script_replicated(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
        replicas: usize,
        timeout: Duration,
    ) -> Result<(ScriptValue, usize), BackendError> {
        self.0
            .eval_script_replicated(script, keys, args, replicas, timeout)
            .await
    }

    fn now(&self) -> crate::Moment {
        self.0.now()
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.0.sleep(duration)
    }

    fn spawn_detached(&self, task: BoxFuture<'static, ()>) -> bool {
        self.0.spawn_detached(task)
    }

    fn release_signals(&self) -> bool {
        self.0.release_signals()
    }

    fn wait_for_release<'a>(
        &'a self,
        signal: &'a str,
        timeout: Duration,
    ) -> Option<BoxFuture<'a, Result<bool, BackendError>>> {
        self.0.wait_for_release(signal, timeout)
    }

    fn instance_id(&self) -> usize {
        self.0.instance_id()
    }

    fn server_id(&self) -> Option<BoxFuture<'_, Result<String, BackendError>>> {
        self.0.server_id()
    }
}

type Check = for<'a> fn(Arc<dyn LockBackend>, &'a dyn Probe, String) -> LocalBoxFuture<'a, ()>;

macro_rules! checks {
    ($($name:ident),* $(,)?) => {
        /// Every check, by name, in the order [`run_all`] runs them.
        pub fn all_checks() -> Vec<(&'static str, Check)> {
            vec![$((stringify!($name), |b, p, k| Box::pin($name(b, p, k)) as LocalBoxFuture<'_, ()>)),*]
        }
    };
}

checks!(
    tokens_are_per_acquisition,
    key_holds_exactly_the_token,
    set_nx_recognises_own_write,
    try_acquire_reports_busy_as_none,
    zero_wait_makes_exactly_one_attempt,
    acquire_times_out_naming_the_key,
    acquire_waits_for_release,
    acquire_takes_over_after_expiry,
    durations_are_kept_to_the_millisecond,
    invalid_arguments_send_nothing,
    release_checks_the_token,
    extend_adds_to_the_remaining_ttl,
    renew_resets_a_shorter_ttl_and_never_shortens,
    validity_never_exceeds_the_server_ttl,
    resent_extend_adds_once,
    resent_release_is_in_doubt_not_lost,
    expired_lock_is_never_recreated,
    is_owner_follows_the_token,
    scripts_survive_a_script_flush,
    dropped_guard_is_released,
    run_returns_value_and_releases,
    run_reports_lost_lock,
    run_times_out_without_running_the_body,
    contention_never_admits_two_holders,
    mutex_recipe,
    leader_follower_recipe,
    hold_renews_past_the_ttl,
    hold_reports_a_takeover_and_drops_the_work,
    hold_reports_an_expiry,
    max_hold_bounds_renewal,
    run_renews_while_the_body_runs,
    fences_strictly_increase,
    fenced_acquire_recognises_own_write,
    fenced_set_rejects_stale_fences,
    fenced_set_failure_is_in_doubt,
    fencing_works_for_keys_with_odd_braces,
    election_hands_over_on_resign,
    election_replaces_a_silent_leader,
    cancelled_acquire_leaves_no_lock,
    cancelled_release_still_releases,
    dropped_run_releases_the_lock,
    hold_reports_failing_renewals,
    background_release_retries_through_an_outage,
    a_lease_reported_lost_is_released_once_the_store_answers,
    hold_does_not_wait_for_a_hung_renewal,
    unacknowledged_writes_are_not_counted,
);

/// Runs every check against `backend`, with keys starting with `prefix` (unique per run).
pub async fn run_all(backend: Arc<dyn LockBackend>, probe: &dyn Probe, prefix: &str) {
    for (name, check) in all_checks() {
        let started = Instant::now();
        check(backend.clone(), probe, format!("{prefix}{name}")).await;
        println!("conformance {name}: ok in {:?}", started.elapsed());
    }
}

const SECOND: Duration = Duration::from_secs(1);

async fn sleep(backend: &Arc<dyn LockBackend>, duration: Duration) {
    backend.sleep(duration).await;
}

/// Polls `condition` until it holds or `within` passes; returns whether it held.
async fn eventually<F>(backend: &Arc<dyn LockBackend>, within: Duration, mut condition: F) -> bool
where
    F: AsyncFnMut() -> bool,
{
    let deadline = Instant::now() + within;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(backend, Duration::from_millis(10)).await;
    }
}

/// Whether `key` is gone from the store within 5 s (a background release doing its work).
async fn freed_soon(backend: &Arc<dyn LockBackend>, probe: &dyn Probe, key: &str) -> bool {
    eventually(backend, 5 * SECOND, async || probe.get(key).await.is_none()).await
}

/// Two acquisitions through one `RedisLock` hold different random (v4) tokens, and the guard is
/// `Send + 'static`.
pub async fn tokens_are_per_acquisition(backend: Arc<dyn LockBackend>, _: &dyn Probe, key: String) {
    fn assert_send_static<T: Send + Sync + 'static>(_: &T) {}
    let lock = RedisLock::new(backend, key);
    let first = lock.acquire().await.expect("first acquire");
    assert_send_static(&first);
    let first_token = first.token().to_owned();
    assert!(first.release().await.expect("release"));
    let second = lock.acquire().await.expect("second acquire");
    assert_ne!(
        first_token,
        second.token(),
        "each acquisition needs its own token"
    );
    for token in [first_token.as_str(), second.token()] {
        let uuid = uuid::Uuid::parse_str(token).expect("token is a UUID");
        assert_eq!(uuid.get_version_num(), 4, "token is a random (v4) UUID");
    }
    second.release().await.expect("release");
}

/// The Redis key is exactly the given key, its value exactly the token, with the lock's TTL.
pub async fn key_holds_exactly_the_token(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let guard = RedisLock::new(backend, key.clone())
        .timeout(10 * SECOND)
        .acquire()
        .await
        .expect("acquire");
    assert_eq!(guard.key(), key);
    assert_eq!(probe.get(&key).await.as_deref(), Some(guard.token()));
    let ttl = probe.pttl(&key).await.expect("the lock key has a TTL");
    assert!(
        ttl > 8 * SECOND && ttl <= 10 * SECOND,
        "PTTL {ttl:?} for a 10 s lock"
    );
    assert!(guard.valid_for() > 8 * SECOND && guard.valid_for() < 10 * SECOND);
    assert!(guard.release().await.expect("release"));
    assert_eq!(probe.get(&key).await, None, "release deletes the key");
}

/// `set_nx` reports success when the key already holds exactly our value (a client re-sent our own
/// write), and refusal when it holds another.
pub async fn set_nx_recognises_own_write(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    assert!(
        backend
            .set_nx(&key, "ours", 10 * SECOND)
            .await
            .expect("first set")
    );
    assert!(
        backend
            .set_nx(&key, "ours", 10 * SECOND)
            .await
            .expect("re-sent set"),
        "a re-sent SET NX of our own value must count as acquired"
    );
    assert!(
        !backend
            .set_nx(&key, "theirs", 10 * SECOND)
            .await
            .expect("other set")
    );
    assert_eq!(probe.get(&key).await.as_deref(), Some("ours"));
    probe.del(&key).await;
}

/// `try_acquire` makes one attempt and answers `None` while someone else holds the lock.
pub async fn try_acquire_reports_busy_as_none(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    probe.set(&key, "someone-else", 10 * SECOND).await;
    let lock = RedisLock::new(backend, key.clone());
    assert!(lock.try_acquire().await.expect("try_acquire").is_none());
    assert_eq!(probe.get(&key).await.as_deref(), Some("someone-else"));
    probe.del(&key).await;
    let guard = lock
        .try_acquire()
        .await
        .expect("try_acquire")
        .expect("free lock is acquired");
    assert!(guard.release().await.expect("release"));
}

/// `wait_timeout(Some(0))` sends exactly one attempt and returns at once.
pub async fn zero_wait_makes_exactly_one_attempt(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    probe.set(&key, "someone-else", 10 * SECOND).await;
    let counting = Arc::new(CountingBackend::new(backend));
    let started = Instant::now();
    let err = RedisLock::new(counting.clone(), key.clone())
        .wait_timeout(Some(Duration::ZERO))
        .acquire()
        .await
        .expect_err("held lock with zero wait");
    assert!(matches!(err, LockError::Timeout { .. }), "{err:?}");
    assert_eq!(counting.set_nx_calls(), 1, "exactly one attempt");
    assert!(started.elapsed() < 2 * SECOND, "returns at once");
    probe.del(&key).await;
}

/// A held lock makes `acquire` give up with `Timeout` after the wait deadline, having retried with
/// backoff (not once, not in a tight loop), and the message names the key verbatim.
pub async fn acquire_times_out_naming_the_key(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let key = format!("{key}:{{tag}} with spaces/and:colons");
    probe.set(&key, "someone-else", 10 * SECOND).await;
    let counting = Arc::new(CountingBackend::new(backend));
    let wait = Duration::from_millis(400);
    let started = Instant::now();
    let err = RedisLock::new(counting.clone(), key.clone())
        .wait_timeout(Some(wait))
        .acquire()
        .await
        .expect_err("held lock");
    let elapsed = started.elapsed();
    match &err {
        LockError::Timeout { key: k, waited } => {
            assert_eq!(k, &key);
            assert!(*waited >= wait);
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(
        err.to_string().contains(&key),
        "message {err} names the key"
    );
    assert!(
        elapsed >= wait,
        "gave up after {elapsed:?}, before the deadline"
    );
    assert!(
        elapsed < wait + 3 * SECOND,
        "gave up only after {elapsed:?}"
    );
    let attempts = counting.set_nx_calls();
    assert!(attempts >= 3, "retried only {attempts} times in {wait:?}");
    assert!(
        attempts < 400,
        "{attempts} attempts in {wait:?}: no backoff"
    );
    assert_eq!(probe.get(&key).await.as_deref(), Some("someone-else"));
    probe.del(&key).await;
}

/// A waiter gets the lock soon after the holder releases it.
pub async fn acquire_waits_for_release(backend: Arc<dyn LockBackend>, _: &dyn Probe, key: String) {
    let lock = RedisLock::new(backend.clone(), key).wait_timeout(Some(10 * SECOND));
    let holder = lock.acquire().await.expect("holder");
    let holder_token = holder.token().to_owned();
    let release_later = async {
        sleep(&backend, Duration::from_millis(200)).await;
        assert!(holder.release().await.expect("release"));
        Instant::now()
    };
    let (released_at, waiter) = futures::join!(release_later, lock.acquire());
    let waiter = waiter.expect("waiter acquires after the release");
    assert_ne!(waiter.token(), holder_token);
    assert!(released_at.elapsed() < 2 * SECOND);
    waiter.release().await.expect("release");
}

/// A holder that never releases is replaced once its TTL runs out.
pub async fn acquire_takes_over_after_expiry(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    probe
        .set(&key, "crashed-holder", Duration::from_millis(300))
        .await;
    let started = Instant::now();
    let guard = RedisLock::new(backend, key.clone())
        .wait_timeout(Some(10 * SECOND))
        .acquire()
        .await
        .expect("acquired after expiry");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "acquired before the TTL ran out"
    );
    assert_eq!(probe.get(&key).await.as_deref(), Some(guard.token()));
    guard.release().await.expect("release");
}

/// 1.5 s is 1500 ms, and a sub-millisecond remainder rounds up rather than down: what is sent, and what
/// the store then holds.
pub async fn durations_are_kept_to_the_millisecond(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let counting = Arc::new(CountingBackend::new(backend));
    let guard = RedisLock::new(counting.clone(), key.clone())
        .timeout(Duration::from_secs_f64(1.5))
        .acquire()
        .await
        .expect("acquire");
    assert_eq!(
        counting.last_set_nx_ttl(),
        Some(Duration::from_millis(1500))
    );
    let ttl = probe.pttl(&key).await.expect("ttl");
    assert!(
        ttl > SECOND && ttl <= Duration::from_millis(1500),
        "PTTL {ttl:?} for 1.5 s"
    );
    guard.release().await.expect("release");

    // 1500.5 ms must become 1501 ms, not 1500: a lock is never held for less than asked.
    let guard = RedisLock::new(counting.clone(), key.clone())
        .timeout(Duration::from_micros(1_500_500))
        .try_acquire()
        .await
        .expect("a sub-millisecond remainder is accepted")
        .expect("acquired");
    assert_eq!(
        counting.last_set_nx_ttl(),
        Some(Duration::from_millis(1501))
    );
    let ttl = probe.pttl(&key).await.expect("ttl");
    assert!(
        ttl > SECOND && ttl <= Duration::from_millis(1501),
        "PTTL {ttl:?} for 1500.5 ms"
    );
    assert!(guard.release().await.expect("release"));
}

/// A guard dropped during an outage is released once the store answers again: the background release
/// retries with backoff, not once into the same outage (the key would otherwise stay held for its TTL).
pub async fn background_release_retries_through_an_outage(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let faulty = Arc::new(FaultyBackend::new(backend.clone()));
    let guard = RedisLock::new(faulty.clone(), key.clone())
        .timeout(10 * SECOND)
        .acquire()
        .await
        .expect("acquire");
    faulty.set_fault(Fault::Error);
    drop(guard);
    // Several attempts fail during the outage (50 ms, 100 ms, 200 ms apart, jittered).
    sleep(&backend, Duration::from_millis(400)).await;
    assert!(probe.get(&key).await.is_some(), "the outage kept the key");
    faulty.set_fault(Fault::None);
    let released = freed_soon(&backend, probe, &key).await;
    assert!(released, "the background release gave up during the outage");
}

/// When `hold` reports a lease lost because renewals failed, a renewal queued in the client may still
/// land once the store answers and reset the TTL: the lease is released in the background as soon as
/// the store answers again, so a holder told it lost the lock does not keep it for another TTL.
pub async fn a_lease_reported_lost_is_released_once_the_store_answers(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let faulty = Arc::new(FaultyBackend::new(backend.clone()));
    let guard = RedisLock::new(faulty.clone(), key.clone())
        .timeout(FAULT_TTL)
        .acquire()
        .await
        .expect("acquire");
    faulty.set_fault(Fault::Error);
    let result = guard.hold(futures::future::pending::<()>()).await;
    assert!(matches!(result, Err(LockError::Lost { .. })), "{result:?}");
    // Stand in for the late renewal: the key holds our token again, with a fresh TTL, while the store
    // is still unreachable for us.
    probe.set(&key, guard.token(), 10 * SECOND).await;
    sleep(&backend, Duration::from_millis(100)).await;
    assert_eq!(probe.get(&key).await.as_deref(), Some(guard.token()));
    faulty.set_fault(Fault::None);
    let released = freed_soon(&backend, probe, &key).await;
    assert!(released, "a lease reported lost kept its key");
    drop(guard);
}

/// Zero TTL, empty key, zero extend and a bad backoff are `InvalidArgument` naming the argument, and
/// nothing reaches the backend.
pub async fn invalid_arguments_send_nothing(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    fn argument(err: LockError) -> &'static str {
        match err {
            LockError::InvalidArgument { argument, .. } => argument,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }
    let counting = Arc::new(CountingBackend::new(backend));
    let lock = RedisLock::new(counting.clone(), key.clone());

    let zero_ttl = lock.clone().timeout(Duration::ZERO);
    assert_eq!(argument(zero_ttl.acquire().await.unwrap_err()), "timeout");
    assert_eq!(
        argument(zero_ttl.try_acquire().await.unwrap_err()),
        "timeout"
    );
    let ran = AtomicBool::new(false);
    let result = zero_ttl
        .run(async |_| ran.store(true, Ordering::SeqCst))
        .await;
    assert_eq!(argument(result.unwrap_err()), "timeout");
    assert!(!ran.load(Ordering::SeqCst));

    // A TTL that leaves no validity after the drift allowance (1% + 2 ms) cannot make a usable lock.
    for short in [Duration::from_millis(1), Duration::from_millis(2)] {
        let err = lock.clone().timeout(short).acquire().await.unwrap_err();
        assert!(
            matches!(&err, LockError::InvalidArgument { argument: "timeout", reason } if reason.contains("at least 3ms")),
            "{short:?}: {err}"
        );
    }

    let empty = RedisLock::new(counting.clone(), "");
    assert_eq!(argument(empty.acquire().await.unwrap_err()), "key");

    let bad_backoff = lock
        .clone()
        .backoff(crate::Backoff::new(Duration::ZERO, SECOND));
    assert_eq!(
        argument(bad_backoff.acquire().await.unwrap_err()),
        "backoff"
    );

    assert_eq!(counting.set_nx_calls(), 0, "nothing is sent for bad input");
    assert_eq!(probe.get(&key).await, None);

    let guard = lock.acquire().await.expect("acquire");
    let calls_before = (counting.set_nx_calls(), counting.script_calls());
    assert_eq!(
        argument(guard.extend(Duration::ZERO).await.unwrap_err()),
        "extend"
    );
    // Every write goes through `set_nx` or a script (replicated or not): none was made.
    assert_eq!(
        (counting.set_nx_calls(), counting.script_calls()),
        calls_before,
        "extend(0) sends nothing"
    );
    assert_eq!(
        probe.get(&key).await.as_deref(),
        Some(guard.token()),
        "the lock is untouched"
    );
    assert!(guard.release().await.expect("release"));
}

/// Release deletes only our own lock: once someone else holds the key, release answers `false` and
/// leaves their value alone.
pub async fn release_checks_the_token(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let lock = RedisLock::new(backend, key.clone());
    let guard = lock.acquire().await.expect("acquire");
    probe.set(&key, "new-holder", 10 * SECOND).await;
    assert!(
        !guard.release().await.expect("release"),
        "not ours any more"
    );
    assert_eq!(probe.get(&key).await.as_deref(), Some("new-holder"));
    probe.del(&key).await;

    let guard = lock.acquire().await.expect("acquire");
    assert!(guard.release().await.expect("release"));
    assert_eq!(probe.get(&key).await, None);
}

/// `extend(by)` adds `by` to the remaining TTL.
pub async fn extend_adds_to_the_remaining_ttl(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let guard = RedisLock::new(backend, key.clone())
        .timeout(10 * SECOND)
        .acquire()
        .await
        .expect("acquire");
    assert!(guard.extend(20 * SECOND).await.expect("extend"));
    let ttl = probe.pttl(&key).await.expect("ttl");
    assert!(
        ttl > 28 * SECOND && ttl <= 30 * SECOND,
        "PTTL {ttl:?} after 10 s + 20 s"
    );
    assert!(guard.valid_for() > 28 * SECOND);
    assert!(guard.extend(SECOND).await.expect("extend again"));
    assert!(probe.pttl(&key).await.expect("ttl") > 29 * SECOND);

    probe.set(&key, "new-holder", 5 * SECOND).await;
    assert!(
        !guard.extend(20 * SECOND).await.expect("extend"),
        "not ours any more"
    );
    assert!(
        probe.pttl(&key).await.expect("ttl") <= 5 * SECOND,
        "their TTL is untouched"
    );
    probe.del(&key).await;
}

/// `renew()` sets the TTL back to the lock's timeout when less is left, never accumulates, and never
/// shortens a longer TTL (from `extend`): every write of a guard only moves the expiry later.
pub async fn renew_resets_a_shorter_ttl_and_never_shortens(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let guard = RedisLock::new(backend, key.clone())
        .timeout(10 * SECOND)
        .acquire()
        .await
        .expect("acquire");
    // Time passing: the key has 2 s left.
    probe.set(&key, guard.token(), 2 * SECOND).await;
    assert!(guard.renew().await.expect("renew"));
    let ttl = probe.pttl(&key).await.expect("ttl");
    assert!(
        ttl > 8 * SECOND && ttl <= 10 * SECOND,
        "PTTL {ttl:?} after renew"
    );
    for _ in 0..5 {
        assert!(guard.renew().await.expect("renew"));
    }
    assert!(
        probe.pttl(&key).await.expect("ttl") <= 10 * SECOND,
        "renewing never accumulates"
    );
    assert!(guard.extend(20 * SECOND).await.expect("extend"));
    assert!(guard.renew().await.expect("renew"));
    let ttl = probe.pttl(&key).await.expect("ttl");
    assert!(
        ttl > 28 * SECOND && ttl <= 30 * SECOND,
        "PTTL {ttl:?}: renew kept the longer TTL"
    );

    probe.set(&key, "new-holder", 5 * SECOND).await;
    assert!(!guard.renew().await.expect("renew"));
    assert!(probe.pttl(&key).await.expect("ttl") <= 5 * SECOND);
    probe.del(&key).await;
}

/// Whatever a guard does (acquire, `extend`, `renew`, in any order), its `valid_for` never claims more
/// than the key's TTL in the store (read first, so the comparison is fair): a guard that believed in
/// more would keep working after the key expired, while another worker holds it.
pub async fn validity_never_exceeds_the_server_ttl(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    async fn check(guard: &LockGuard, probe: &dyn Probe, after: &str) {
        let server = probe.pttl(guard.key()).await.expect("ttl");
        let local = guard.valid_for();
        assert!(
            local <= server,
            "after {after}: valid_for {local:?} exceeds the server's PTTL {server:?}"
        );
    }
    let guard = RedisLock::new(backend, key.clone())
        .timeout(SECOND)
        .acquire()
        .await
        .expect("acquire");
    check(&guard, probe, "acquire").await;
    assert!(guard.extend(60 * SECOND).await.expect("extend"));
    check(&guard, probe, "extend(60 s)").await;
    assert!(guard.renew().await.expect("renew"));
    check(&guard, probe, "extend(60 s), renew").await;
    assert!(guard.extend(SECOND).await.expect("extend"));
    check(&guard, probe, "extend, renew, extend").await;
    // Someone shortened the key behind our back (an operator, a replica that lost the last write): a
    // renewal that confirms it brings the local validity no further than what the store now says.
    probe
        .set(&key, guard.token(), Duration::from_millis(500))
        .await;
    assert!(guard.renew().await.expect("renew"));
    let server = probe.pttl(&key).await.expect("ttl");
    assert!(server <= SECOND, "renew set the lock's 1 s TTL: {server:?}");
    check(&guard, probe, "shortened behind our back, renew").await;
    assert!(guard.release().await.expect("release"));
}

/// A client that applies a request, loses the reply and sends it again (fred re-sends over a new
/// connection) must not turn `extend(by)` into `extend(2 × by)`.
pub async fn resent_extend_adds_once(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let faulty = Arc::new(FaultyBackend::new(backend));
    let guard = RedisLock::new(faulty.clone(), key.clone())
        .timeout(10 * SECOND)
        .acquire()
        .await
        .expect("acquire");
    faulty.set_fault(Fault::Resend);
    assert!(guard.extend(20 * SECOND).await.expect("extend"));
    assert!(guard.extend(20 * SECOND).await.expect("extend again"));
    faulty.set_fault(Fault::None);
    let ttl = probe.pttl(&key).await.expect("ttl");
    assert!(
        ttl > 48 * SECOND && ttl <= 50 * SECOND,
        "PTTL {ttl:?} after 10 s + 20 s + 20 s, each sent twice"
    );
    assert!(guard.valid_for() <= ttl);
    assert!(guard.release().await.expect("release"));
}

/// A release that was applied, whose reply was lost and which was sent again, finds no key: that is
/// "cannot tell" ([`LockError::InDoubt`]), not "was not ours", and `run` keeps the finished work's
/// value instead of reporting the lock lost (a caller retrying on `Lost` would run the work twice).
pub async fn resent_release_is_in_doubt_not_lost(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let faulty = Arc::new(FaultyBackend::new(backend));
    let lock = RedisLock::new(faulty.clone(), key.clone()).timeout(10 * SECOND);
    let guard = lock.acquire().await.expect("acquire");
    faulty.set_fault(Fault::Resend);
    let released = guard.release().await;
    assert!(
        matches!(
            released,
            Err(LockError::InDoubt {
                operation: "release",
                ..
            })
        ),
        "{released:?}"
    );
    assert_eq!(probe.get(&key).await, None, "released all the same");

    faulty.set_fault(Fault::None);
    let runs = AtomicUsize::new(0);
    let value = lock
        .run(async |_| {
            runs.fetch_add(1, Ordering::SeqCst);
            // The release at the end of `run` is re-sent.
            faulty.set_fault(Fault::Resend);
            42
        })
        .await;
    faulty.set_fault(Fault::None);
    assert_eq!(value.expect("the work's value is kept"), 42);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(probe.get(&key).await, None);

    // Not ours (another holder), or gone after our own validity ran out: still `false`.
    let guard = lock.acquire().await.expect("acquire");
    probe.set(&key, "new-holder", 10 * SECOND).await;
    assert!(!guard.release().await.expect("release"));
    probe.del(&key).await;
}

/// Neither `extend` nor `renew` re-creates a lock that expired.
pub async fn expired_lock_is_never_recreated(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let guard = RedisLock::new(backend, key.clone())
        .timeout(10 * SECOND)
        .acquire()
        .await
        .expect("acquire");
    probe.del(&key).await;
    assert!(!guard.extend(10 * SECOND).await.expect("extend"));
    assert!(!guard.renew().await.expect("renew"));
    assert!(!guard.is_owner().await.expect("is_owner"));
    assert_eq!(probe.get(&key).await, None, "an expired lock stays expired");
    // The key vanished while this guard's own clock says it is still valid: a release cannot tell
    // whether it deleted it itself (a re-send) or the store lost it.
    let released = guard.release().await;
    assert!(
        matches!(released, Err(LockError::InDoubt { .. })),
        "{released:?}"
    );
}

/// `is_owner` is true while our token is there, false once the key expired or changed hands.
pub async fn is_owner_follows_the_token(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let lock = RedisLock::new(backend.clone(), key.clone());
    let guard = lock.acquire().await.expect("acquire");
    assert!(guard.is_owner().await.expect("is_owner"));
    probe.set(&key, "new-holder", 10 * SECOND).await;
    assert!(!guard.is_owner().await.expect("is_owner"));
    probe.set(&key, guard.token(), 10 * SECOND).await;
    assert!(guard.is_owner().await.expect("is_owner"));
    assert!(guard.release().await.expect("release"));

    // Past its local validity a guard answers false without asking: no call reaches the store.
    let counting = Arc::new(CountingBackend::new(backend.clone()));
    let short = RedisLock::new(counting.clone(), key.clone())
        .timeout(Duration::from_millis(100))
        .acquire()
        .await
        .expect("acquire");
    sleep(&backend, Duration::from_millis(150)).await;
    assert_eq!(short.valid_for(), Duration::ZERO);
    let calls = counting.script_calls();
    assert!(!short.is_owner().await.expect("is_owner"));
    assert_eq!(counting.script_calls(), calls, "is_owner asked the store");
}

/// Scripts keep working after the server forgot them (restart, failover, `SCRIPT FLUSH`) in the middle of
/// a hold: `EVALSHA` falls back to `EVAL`.
pub async fn scripts_survive_a_script_flush(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let guard = RedisLock::new(backend, key.clone())
        .timeout(10 * SECOND)
        .acquire()
        .await
        .expect("acquire");
    assert!(guard.renew().await.expect("renew loads the script"));
    probe.flush_scripts().await;
    assert!(guard.renew().await.expect("renew after SCRIPT FLUSH"));
    probe.flush_scripts().await;
    assert!(
        guard
            .extend(SECOND)
            .await
            .expect("extend after SCRIPT FLUSH")
    );
    probe.flush_scripts().await;
    assert!(guard.is_owner().await.expect("is_owner after SCRIPT FLUSH"));
    probe.flush_scripts().await;
    assert!(guard.release().await.expect("release after SCRIPT FLUSH"));
    assert_eq!(probe.get(&key).await, None);
}

/// A guard dropped without `release` is released in the background, long before its TTL.
pub async fn dropped_guard_is_released(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let guard = RedisLock::new(backend.clone(), key.clone())
        .timeout(60 * SECOND)
        .acquire()
        .await
        .expect("acquire");
    drop(guard);
    let released = freed_soon(&backend, probe, &key).await;
    assert!(
        released,
        "a dropped guard must be released in the background"
    );
}

/// `run` hands out the body's value when the lock was still ours at the end, and releases it. The body
/// may borrow locals.
pub async fn run_returns_value_and_releases(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let lock = RedisLock::new(backend, key.clone());
    let mut borrowed = Vec::new();
    let value = lock
        .run(async |guard| {
            borrowed.push(guard.token().to_owned());
            assert_eq!(probe.get(guard.key()).await.as_deref(), Some(guard.token()));
            42
        })
        .await
        .expect("run");
    assert_eq!(value, 42);
    assert_eq!(borrowed.len(), 1);
    assert_eq!(probe.get(&key).await, None, "run releases the lock");
}

/// `run` returns `Lost` naming the key when the lock expired or was taken over during the body.
pub async fn run_reports_lost_lock(backend: Arc<dyn LockBackend>, probe: &dyn Probe, key: String) {
    let lock = RedisLock::new(backend, key.clone());
    let err = lock
        .run(async |guard| {
            probe.set(guard.key(), "new-holder", 10 * SECOND).await;
            "work done without exclusion"
        })
        .await
        .expect_err("the lock was taken over");
    match &err {
        LockError::Lost { key: k, .. } => assert_eq!(k, &key),
        other => panic!("expected Lost, got {other:?}"),
    }
    assert!(err.to_string().contains(&key));
    assert_eq!(
        probe.get(&key).await.as_deref(),
        Some("new-holder"),
        "theirs is untouched"
    );
    probe.del(&key).await;
}

/// `run` returns `Timeout` when the lock is busy, and the body never runs.
pub async fn run_times_out_without_running_the_body(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    probe.set(&key, "someone-else", 10 * SECOND).await;
    let ran = AtomicBool::new(false);
    let err = RedisLock::new(backend, key.clone())
        .wait_timeout(Some(Duration::from_millis(100)))
        .run(async |_| ran.store(true, Ordering::SeqCst))
        .await
        .expect_err("busy");
    assert!(matches!(err, LockError::Timeout { .. }), "{err:?}");
    assert!(!ran.load(Ordering::SeqCst), "the body must not run");
    probe.del(&key).await;
}

/// 8 tasks × 20 acquisitions of one key: never two holders at once, and every release confirms. Half
/// of the tasks lock through the backend without its in-process line ([`Unqueued`]), as other processes
/// would, so exclusion is decided by the store, not only by the line.
pub async fn contention_never_admits_two_holders(
    backend: Arc<dyn LockBackend>,
    _: &dyn Probe,
    key: String,
) {
    const TASKS: usize = 8;
    const ROUNDS: usize = 20;
    let queued = RedisLock::new(backend.clone(), key.clone())
        .timeout(10 * SECOND)
        .wait_timeout(Some(60 * SECOND));
    let unqueued = RedisLock::new(Unqueued(backend.clone()), key)
        .timeout(10 * SECOND)
        .wait_timeout(Some(60 * SECOND));
    let held = AtomicBool::new(false);
    let acquisitions = AtomicUsize::new(0);
    let worker = async |task: usize| {
        let lock = if task.is_multiple_of(2) {
            &queued
        } else {
            &unqueued
        };
        for _ in 0..ROUNDS {
            let guard = lock.acquire().await.expect("acquire under contention");
            assert!(!held.swap(true, Ordering::SeqCst), "two holders at once");
            sleep(&backend, Duration::from_millis(1)).await;
            held.store(false, Ordering::SeqCst);
            assert!(
                guard.release().await.expect("release"),
                "release must confirm"
            );
            acquisitions.fetch_add(1, Ordering::SeqCst);
        }
    };
    join_all((0..TASKS).map(worker)).await;
    assert_eq!(acquisitions.load(Ordering::SeqCst), TASKS * ROUNDS);
}

/// The seed's mutex recipe: try to take the lock, do the work, extend if it needs longer, give up with
/// a timeout error when another worker holds it.
pub async fn mutex_recipe(backend: Arc<dyn LockBackend>, probe: &dyn Probe, key: String) {
    let lock = RedisLock::new(backend, key.clone())
        .timeout(30 * SECOND)
        .wait_timeout(Some(30 * SECOND));
    let done = lock
        .run(async |guard| {
            // We may want it longer...
            assert!(guard.extend(30 * SECOND).await.expect("extend"));
            "work done"
        })
        .await
        .expect("mutex recipe");
    assert_eq!(done, "work done");

    probe.set(&key, "other-worker", 30 * SECOND).await;
    let busy = RedisLock::new(lock.backend().clone(), key.clone())
        .wait_timeout(Some(Duration::from_millis(50)))
        .run(async |_| ())
        .await;
    assert!(matches!(busy, Err(LockError::Timeout { .. })), "{busy:?}");
    probe.del(&key).await;
}

/// The seed's leader/follower recipe: followers wait forever (`wait_timeout(None)`), the leader keeps
/// checking `is_owner` and calling `renew`, and a follower takes over when the leader stops renewing.
pub async fn leader_follower_recipe(backend: Arc<dyn LockBackend>, _: &dyn Probe, key: String) {
    let lock = RedisLock::new(backend.clone(), key)
        .timeout(Duration::from_millis(400))
        .wait_timeout(None);
    let leader = lock.acquire().await.expect("leader");
    let leader_rounds = async {
        for _ in 0..6 {
            assert!(leader.is_owner().await.expect("is_owner"));
            sleep(&backend, Duration::from_millis(100)).await;
            assert!(
                leader.renew().await.expect("renew"),
                "the leader keeps its lease"
            );
        }
        Instant::now()
    };
    let follower = async {
        let guard = lock
            .acquire()
            .await
            .expect("follower waits forever, then leads");
        (Instant::now(), guard)
    };
    // The leader renews for ~600 ms (longer than the TTL) and then "crashes": it stops renewing
    // without releasing.
    let (leader_stopped, (follower_started, follower)) = futures::join!(leader_rounds, follower);
    assert!(
        follower_started > leader_stopped,
        "the follower led while the leader renewed"
    );
    assert!(
        !leader.is_owner().await.expect("is_owner"),
        "the old leader knows it lost"
    );
    assert!(
        !leader.renew().await.expect("renew"),
        "the old leader cannot renew"
    );
    std::mem::forget(leader);
    assert!(follower.is_owner().await.expect("is_owner"));
    assert!(follower.release().await.expect("release"));
}

/// A work future that records whether it was dropped before it finished.
struct Work<'a> {
    finished: bool,
    dropped_early: &'a AtomicBool,
}

impl Drop for Work<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.dropped_early.store(true, Ordering::SeqCst);
        }
    }
}

async fn work_for(
    backend: &Arc<dyn LockBackend>,
    duration: Duration,
    dropped_early: &AtomicBool,
) -> &'static str {
    let mut work = Work {
        finished: false,
        dropped_early,
    };
    sleep(backend, duration).await;
    work.finished = true;
    "work done"
}

/// `hold` keeps renewing a lock for longer than its TTL while the work runs.
pub async fn hold_renews_past_the_ttl(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let guard = RedisLock::new(backend.clone(), key.clone())
        .timeout(Duration::from_millis(300))
        .acquire()
        .await
        .expect("acquire");
    let dropped = AtomicBool::new(false);
    let out = guard
        .hold(work_for(&backend, Duration::from_millis(1000), &dropped))
        .await
        .expect("the lease is kept while the work runs");
    assert_eq!(out, "work done");
    assert!(!dropped.load(Ordering::SeqCst));
    assert_eq!(
        probe.get(&key).await.as_deref(),
        Some(guard.token()),
        "still ours after 3 TTLs"
    );
    assert!(guard.valid_for() > Duration::ZERO);
    assert!(guard.release().await.expect("release"));
}

/// When another holder takes the key, `hold` drops the work at once and reports `Lost` naming the key.
pub async fn hold_reports_a_takeover_and_drops_the_work(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let guard = RedisLock::new(backend.clone(), key.clone())
        .timeout(Duration::from_millis(300))
        .acquire()
        .await
        .expect("acquire");
    let dropped = AtomicBool::new(false);
    let takeover = async {
        sleep(&backend, Duration::from_millis(50)).await;
        probe.set(&key, "usurper", 10 * SECOND).await;
    };
    let started = Instant::now();
    let (result, ()) = futures::join!(
        guard.hold(work_for(&backend, 10 * SECOND, &dropped)),
        takeover
    );
    match &result {
        Err(LockError::Lost { key: k, reason }) => {
            assert_eq!(k, &key);
            assert!(reason.contains("another holder"), "{reason}");
        }
        other => panic!("expected Lost, got {other:?}"),
    }
    assert!(
        started.elapsed() < 5 * SECOND,
        "noticed only after {:?}",
        started.elapsed()
    );
    assert!(
        dropped.load(Ordering::SeqCst),
        "the work is dropped when the lock is lost"
    );
    assert_eq!(
        probe.get(&key).await.as_deref(),
        Some("usurper"),
        "the usurper is untouched"
    );
    assert!(!guard.release().await.expect("release"));
    probe.del(&key).await;
}

/// When the key disappears (expired, flushed), `hold` reports `Lost`.
pub async fn hold_reports_an_expiry(backend: Arc<dyn LockBackend>, probe: &dyn Probe, key: String) {
    let guard = RedisLock::new(backend.clone(), key.clone())
        .timeout(Duration::from_millis(300))
        .acquire()
        .await
        .expect("acquire");
    probe.del(&key).await;
    let dropped = AtomicBool::new(false);
    let result = guard.hold(work_for(&backend, 10 * SECOND, &dropped)).await;
    assert!(matches!(result, Err(LockError::Lost { .. })), "{result:?}");
    assert!(dropped.load(Ordering::SeqCst));
    assert_eq!(probe.get(&key).await, None, "a lost lock is not re-created");
}

/// `max_hold` stops renewal: `hold` returns `Lost` once it passes (never earlier), and work that finishes
/// in time is unaffected.
pub async fn max_hold_bounds_renewal(backend: Arc<dyn LockBackend>, _: &dyn Probe, key: String) {
    let max_hold = Duration::from_millis(600);
    let lock = RedisLock::new(backend.clone(), key)
        .timeout(Duration::from_millis(300))
        .max_hold(max_hold);
    let guard = lock.acquire().await.expect("acquire");
    let acquired = Instant::now();
    let dropped = AtomicBool::new(false);
    let result = guard.hold(work_for(&backend, 10 * SECOND, &dropped)).await;
    let held = acquired.elapsed();
    match &result {
        Err(LockError::Lost { reason, .. }) => assert!(reason.contains("max_hold"), "{reason}"),
        other => panic!("expected Lost after max_hold, got {other:?}"),
    }
    assert!(
        held >= max_hold - Duration::from_millis(5),
        "lost after {held:?}, before max_hold"
    );
    assert!(held < max_hold + 3 * SECOND, "lost only after {held:?}");
    assert!(dropped.load(Ordering::SeqCst));
    drop(guard);

    let guard = lock.acquire().await.expect("acquire");
    let quick = AtomicBool::new(false);
    let out = guard
        .hold(work_for(&backend, Duration::from_millis(100), &quick))
        .await;
    assert_eq!(out.expect("finished within max_hold"), "work done");
    assert!(guard.release().await.expect("release"));

    let zero = RedisLock::new(backend, "unused")
        .max_hold(Duration::ZERO)
        .acquire()
        .await;
    assert!(matches!(
        zero,
        Err(LockError::InvalidArgument {
            argument: "max_hold",
            ..
        })
    ));
}

/// `run` renews the lock while its body runs longer than the TTL.
pub async fn run_renews_while_the_body_runs(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let lock = RedisLock::new(backend.clone(), key.clone()).timeout(Duration::from_millis(300));
    let value = lock
        .run(async |guard| {
            sleep(&backend, Duration::from_millis(800)).await;
            assert_eq!(probe.get(guard.key()).await.as_deref(), Some(guard.token()));
            7
        })
        .await
        .expect("run keeps the lock");
    assert_eq!(value, 7);
    assert_eq!(probe.get(&key).await, None);
}

/// Fences strictly increase across acquisitions, also after the lock was released, expired or deleted;
/// renew and extend keep the fence; without fencing there is none.
pub async fn fences_strictly_increase(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let plain = RedisLock::new(backend.clone(), format!("{key}:plain"));
    let guard = plain.acquire().await.expect("acquire");
    assert_eq!(guard.fence(), None);
    guard.release().await.expect("release");

    let lock = RedisLock::new(backend, key.clone()).fencing(true);
    let counter = crate::keys::fence_counter(&key).expect("counter key");
    let mut last = 0;
    for round in 0..8 {
        if round == 6 {
            // The counter is lost (a server restarted without its data): fences still increase.
            probe.del(&counter).await;
        }
        let guard = lock.acquire().await.expect("acquire");
        let fence = guard.fence().expect("a fenced lock issues a fence");
        assert!(fence > last, "fence {fence} after {last}");
        last = fence;
        assert_eq!(
            probe.get(&key).await.as_deref(),
            Some(guard.token()),
            "the value is the token"
        );
        assert!(guard.renew().await.expect("renew"));
        assert!(guard.extend(SECOND).await.expect("extend"));
        assert_eq!(
            guard.fence(),
            Some(fence),
            "renew and extend keep the fence"
        );
        match round % 3 {
            0 => assert!(guard.release().await.expect("release")),
            1 => probe.del(&key).await,
            _ => {
                probe
                    .set(&key, guard.token(), Duration::from_millis(1))
                    .await;
                sleep(&lock.backend().clone(), Duration::from_millis(5)).await;
            }
        }
    }
}

/// A fenced acquisition re-sent with the same token is recognised as ours, with the same fence.
pub async fn fenced_acquire_recognises_own_write(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let counter = crate::keys::fence_counter(&key).expect("counter key");
    let acquire = |token: &'static str| {
        let (backend, key, counter) = (backend.clone(), key.clone(), counter.clone());
        async move {
            backend
                .eval_script(
                    &crate::script::FENCED_ACQUIRE,
                    &[&key, &counter],
                    &[token, "10000"],
                )
                .await
                .expect("fenced acquire")
        }
    };
    // The third element is the server's clock, which moves on between the two.
    let grant = |reply: ScriptValue| match reply {
        ScriptValue::Array(items) => items[..2].to_vec(),
        other => panic!("unexpected reply {other:?}"),
    };
    let first = grant(acquire("ours").await);
    let again = grant(acquire("ours").await);
    assert_eq!(
        first, again,
        "a re-sent acquisition returns the same grant and fence"
    );
    match acquire("theirs").await {
        ScriptValue::Array(items) => assert_eq!(items.first(), Some(&ScriptValue::Int(0))),
        other => panic!("unexpected reply {other:?}"),
    }
    assert_eq!(probe.get(&key).await.as_deref(), Some("ours"));
    probe.del(&key).await;
}

/// A `fenced_set` whose request failed in transit is [`LockError::InDoubt`] (it may have been applied,
/// or may land later), never "not written"; retrying with the same guard is accepted.
pub async fn fenced_set_failure_is_in_doubt(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let faulty = Arc::new(FaultyBackend::new(backend));
    let guard = RedisLock::new(faulty.clone(), key.clone())
        .fencing(true)
        .acquire()
        .await
        .expect("acquire");
    let resource = format!("{key}:resource");
    faulty.set_fault(Fault::Error);
    let result = guard.fenced_set(&resource, "v").await;
    faulty.set_fault(Fault::None);
    match result {
        Err(
            error @ LockError::InDoubt {
                operation: "fenced_set",
                source: Some(_),
                ..
            },
        ) => assert!(error.is_transient()),
        other => panic!("expected InDoubt, got {other:?}"),
    }
    assert!(guard.fenced_set(&resource, "v").await.expect("retry"));
    assert_eq!(probe.get(&resource).await.as_deref(), Some("v"));
    assert!(guard.release().await.expect("release"));
    probe.del(&resource).await;
}

/// `fenced_set` writes a plain string when our fence is the newest, refuses a stale holder's write, and
/// is `InvalidArgument` without fencing.
pub async fn fenced_set_rejects_stale_fences(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let resource = format!("{key}:resource");
    let lock = RedisLock::new(backend.clone(), key.clone()).fencing(true);
    let old = lock.acquire().await.expect("acquire");
    assert!(
        old.fenced_set(&resource, "from old")
            .await
            .expect("fenced_set")
    );
    assert_eq!(probe.get(&resource).await.as_deref(), Some("from old"));
    assert!(
        old.fenced_set(&resource, "old again")
            .await
            .expect("same fence may write again")
    );

    // The old holder pauses past its TTL; a new holder takes over and writes.
    probe.del(&key).await;
    let new = lock.acquire().await.expect("acquire");
    assert!(new.fence() > old.fence());
    assert!(
        new.fenced_set(&resource, "from new")
            .await
            .expect("fenced_set")
    );
    // The old holder wakes up and tries to write: refused.
    assert!(
        !old.fenced_set(&resource, "stale")
            .await
            .expect("fenced_set")
    );
    assert_eq!(probe.get(&resource).await.as_deref(), Some("from new"));
    new.release().await.expect("release");

    let counting = Arc::new(CountingBackend::new(backend));
    let plain = RedisLock::new(counting.clone(), format!("{key}:plain"))
        .acquire()
        .await
        .expect("acquire");
    let scripts = counting.script_calls();
    let err = plain
        .fenced_set(&resource, "x")
        .await
        .expect_err("no fence");
    assert!(
        matches!(
            err,
            LockError::InvalidArgument {
                argument: "fence",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(counting.script_calls(), scripts, "nothing is sent");
    assert_eq!(probe.get(&resource).await.as_deref(), Some("from new"));
    plain.release().await.expect("release");
    probe.del(&resource).await;
}

/// Fencing works for keys whose braces are not a hash tag (`a{}b`, `a{b`, `a}b`, `a{}{b}`: only the
/// first `{` counts), and for tagged ones: every companion key shares the key's cluster slot, fences
/// increase, and `fenced_set` on such resources works.
pub async fn fencing_works_for_keys_with_odd_braces(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let base = key.replace(['{', '}'], "");
    for odd in ["a{}b", "a{b", "a}b", "a{}{b}", "{x}a{}b"] {
        let odd = format!("{base}:{odd}");
        let lock = RedisLock::new(backend.clone(), odd.clone()).fencing(true);
        let first = lock.acquire().await.expect("fenced acquire");
        let fence = first.fence().expect("a fence");
        assert_eq!(probe.get(&odd).await.as_deref(), Some(first.token()));
        assert!(
            first
                .fenced_set(&odd_resource(&odd), "v1")
                .await
                .expect("fenced_set"),
            "{odd}"
        );
        assert!(first.renew().await.expect("renew"));
        // The first holder's lock expires; a second holder takes over.
        probe.del(&odd).await;
        let second = lock.acquire().await.expect("fenced acquire again");
        assert!(
            second.fence().expect("a fence") > fence,
            "{odd}: fences increase"
        );
        assert!(
            second
                .fenced_set(&odd_resource(&odd), "v2")
                .await
                .expect("fenced_set"),
            "{odd}"
        );
        assert!(
            !first
                .fenced_set(&odd_resource(&odd), "stale")
                .await
                .expect("fenced_set"),
            "{odd}: the older fence is refused"
        );
        assert_eq!(probe.get(&odd_resource(&odd)).await.as_deref(), Some("v2"));
        assert!(second.release().await.expect("release"));
        probe.del(&odd_resource(&odd)).await;
    }
}

/// A fenced resource with odd braces of its own, beside the lock `key`.
fn odd_resource(key: &str) -> String {
    format!("{key}:res}}{{")
}

/// The companion keys lock-core derives for `key`, in this order: its fence counter, its release-signal
/// list, and its fence mark when `key` is a fenced resource. For tests that look at them in a server or
/// check them against a server's own slot computation.
pub fn companion_keys(key: &str) -> [String; 3] {
    [
        crate::keys::fence_counter(key).expect("a fence counter for every key"),
        crate::keys::release_signal(key).expect("a release signal for every key"),
        crate::keys::fence_mark(key).expect("a fence mark for every key"),
    ]
}

/// A candidate waiting in `campaign` leads within 500 ms of the leader resigning, whatever the TTL;
/// `leader()` names whoever leads; terms increase.
pub async fn election_hands_over_on_resign(
    backend: Arc<dyn LockBackend>,
    _: &dyn Probe,
    key: String,
) {
    let alice = Election::new(backend.clone(), key.clone())
        .ttl(30 * SECOND)
        .id("alice");
    let bob = Election::new(backend.clone(), key.clone())
        .ttl(30 * SECOND)
        .id("bob");
    assert_eq!(alice.leader().await.expect("leader"), None);
    let alice_term = alice.campaign().await.expect("alice leads");
    assert_eq!(alice_term.id(), "alice");
    assert_eq!(
        bob.leader().await.expect("leader").as_deref(),
        Some("alice")
    );

    let resign_later = async {
        sleep(&backend, Duration::from_millis(300)).await;
        assert!(alice_term.resign().await.expect("resign"));
        Instant::now()
    };
    let (resigned_at, bob_term) = futures::join!(resign_later, bob.campaign());
    let bob_term = bob_term.expect("bob leads");
    let handover = resigned_at.elapsed();
    assert!(
        handover < Duration::from_millis(500),
        "hand-over took {handover:?}"
    );
    assert_eq!(
        alice.leader().await.expect("leader").as_deref(),
        Some("bob")
    );
    assert!(bob_term.term() > 0);
    let bob_term_number = bob_term.term();
    assert!(bob_term.resign().await.expect("resign"));
    let again = alice.campaign().await.expect("alice leads again");
    assert!(again.term() > bob_term_number, "terms strictly increase");
    again.resign().await.expect("resign");
}

/// A leader that stops renewing is replaced within its TTL plus 500 ms; while it renews through
/// `hold`, nobody else leads.
pub async fn election_replaces_a_silent_leader(
    backend: Arc<dyn LockBackend>,
    _: &dyn Probe,
    key: String,
) {
    let ttl = Duration::from_millis(400);
    let first = Election::new(backend.clone(), key.clone())
        .ttl(ttl)
        .id("first");
    let second = Election::new(backend.clone(), key.clone())
        .ttl(ttl)
        .id("second");
    let leader = first.campaign().await.expect("first leads");
    // Leads for 3 TTLs through hold, while the second candidate campaigns.
    let next = {
        let campaign = pin!(second.campaign());
        let leading = pin!(leader.hold(sleep(&backend, 3 * ttl)));
        match select(leading, campaign).await {
            Either::Left((held, campaign)) => {
                held.expect("the leader keeps its term while holding");
                assert_eq!(
                    first.leader().await.expect("leader").as_deref(),
                    Some("first")
                );
                // Now the leader goes silent: no renewal, no resignation.
                let silent_since = Instant::now();
                let next = campaign.await.expect("second leads");
                let took = silent_since.elapsed();
                assert!(
                    took < ttl + Duration::from_millis(500),
                    "replaced only after {took:?}"
                );
                next
            }
            Either::Right(_) => panic!("the second candidate led while the first renewed"),
        }
    };
    assert!(next.term() > leader.term());
    assert!(!leader.guard().is_owner().await.expect("is_owner"));
    std::mem::forget(leader);
    next.resign().await.expect("resign");
}

/// Dropping `acquire` while its request is in flight, after the server applied it, leaves no lock held:
/// the pending token is released in the background.
pub async fn cancelled_acquire_leaves_no_lock(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    for fencing in [false, true] {
        let slow = Arc::new(FaultyBackend::new(backend.clone()));
        slow.set_fault(Fault::DelayReply(10 * SECOND));
        let lock = RedisLock::new(slow.clone(), key.clone())
            .timeout(60 * SECOND)
            .fencing(fencing);
        // Boxed, so that dropping it really drops the future (a pinned local would live on).
        let acquire = Box::pin(lock.acquire());
        match select(acquire, backend.sleep(Duration::from_millis(300))).await {
            Either::Left(_) => panic!("acquire cannot finish while the reply is held back"),
            Either::Right(((), acquire)) => {
                assert!(
                    probe.get(&key).await.is_some(),
                    "the server applied the SET"
                );
                drop(acquire);
            }
        }
        slow.set_fault(Fault::None);
        let released = freed_soon(&backend, probe, &key).await;
        assert!(
            released,
            "a cancelled acquisition must not leave the lock held (fencing: {fencing})"
        );
    }
}

/// Dropping a `release` future before the server answered does not orphan the lock: the release is
/// retried in the background.
pub async fn cancelled_release_still_releases(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let slow = Arc::new(FaultyBackend::new(backend.clone()));
    let guard = RedisLock::new(slow.clone(), key.clone())
        .timeout(60 * SECOND)
        .acquire()
        .await
        .expect("acquire");
    slow.set_fault(Fault::Delay(Duration::from_millis(300)));
    let release = Box::pin(guard.release());
    match select(release, backend.sleep(Duration::from_millis(50))).await {
        Either::Left(_) => panic!("the release cannot finish while calls are delayed"),
        Either::Right(((), release)) => drop(release),
    }
    assert!(
        probe.get(&key).await.is_some(),
        "nothing reached the server yet"
    );
    let released = freed_soon(&backend, probe, &key).await;
    assert!(released, "a cancelled release must still release the lock");
}

/// Acquires `key` with a 400 ms TTL, injects `fault` into every later call, and holds the lock for work
/// lasting `work`: the result, how long `hold` took, whether the work was dropped early, and the guard.
async fn hold_under_fault(
    backend: Arc<dyn LockBackend>,
    key: String,
    fault: Fault,
    work: Duration,
) -> (Result<&'static str, LockError>, Duration, bool, LockGuard) {
    let faulty = Arc::new(FaultyBackend::new(backend.clone()));
    let guard = RedisLock::new(faulty.clone(), key)
        .timeout(FAULT_TTL)
        .acquire()
        .await
        .expect("acquire");
    faulty.set_fault(fault);
    let dropped = AtomicBool::new(false);
    let started = Instant::now();
    let result = guard.hold(work_for(&backend, work, &dropped)).await;
    let took = started.elapsed();
    faulty.set_fault(Fault::None);
    (result, took, dropped.load(Ordering::SeqCst), guard)
}

/// The lock TTL of [`hold_under_fault`].
const FAULT_TTL: Duration = Duration::from_millis(400);

/// When renewals keep failing, `hold` reports `Lost` once the lease's validity runs out, with the
/// failure in the reason: a renewal failure is never swallowed.
pub async fn hold_reports_failing_renewals(
    backend: Arc<dyn LockBackend>,
    _: &dyn Probe,
    key: String,
) {
    let (result, took, dropped, guard) =
        hold_under_fault(backend, key, Fault::Error, 10 * SECOND).await;
    match &result {
        Err(LockError::Lost { reason, .. }) => {
            assert!(
                reason.contains("injected failure"),
                "the cause is reported: {reason}"
            )
        }
        other => panic!("expected Lost, got {other:?}"),
    }
    assert!(took <= FAULT_TTL + 2 * SECOND, "noticed after {took:?}");
    assert!(dropped);
    drop(guard);
}

/// A renewal that never answers counts as failed when the validity runs out: `hold` does not wait for the
/// client's own timeout.
pub async fn hold_does_not_wait_for_a_hung_renewal(
    backend: Arc<dyn LockBackend>,
    _: &dyn Probe,
    key: String,
) {
    let (result, took, _, guard) = hold_under_fault(backend, key, Fault::Never, 30 * SECOND).await;
    assert!(matches!(result, Err(LockError::Lost { .. })), "{result:?}");
    assert!(
        took <= FAULT_TTL + 2 * SECOND,
        "waited {took:?} for a hung renewal"
    );
    assert_eq!(guard.valid_for(), Duration::ZERO);
    drop(guard);
}

/// Dropping a `run` future while its body runs releases the lock in the background.
pub async fn dropped_run_releases_the_lock(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let lock = RedisLock::new(backend.clone(), key.clone()).timeout(60 * SECOND);
    let entered = AtomicBool::new(false);
    let run = Box::pin(lock.run(async |_| {
        entered.store(true, Ordering::SeqCst);
        futures::future::pending::<()>().await
    }));
    match select(run, backend.sleep(Duration::from_millis(200))).await {
        Either::Left(_) => panic!("the body never finishes"),
        Either::Right(((), run)) => drop(run),
    }
    assert!(entered.load(Ordering::SeqCst));
    let released = freed_soon(&backend, probe, &key).await;
    assert!(released, "a dropped run must release its lock");
}

/// `replicas(n, timeout)`: asking for more replicas than the store has makes `acquire` and `try_acquire`
/// fail with `NotReplicated` (naming the key, how many were wanted and how many acknowledged) and leave
/// no lock behind, with and without fencing; a zero timeout is `InvalidArgument` with nothing sent;
/// `replicas(0, _)` is off.
pub async fn unacknowledged_writes_are_not_counted(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    /// More replicas than any test deployment has.
    const WANTED: usize = 10;
    let counting = Arc::new(CountingBackend::new(backend));
    let err = RedisLock::new(counting.clone(), key.clone())
        .replicas(1, Duration::ZERO)
        .acquire()
        .await
        .expect_err("zero replica timeout");
    assert!(
        matches!(
            err,
            LockError::InvalidArgument {
                argument: "replica_timeout",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(counting.set_nx_calls() + counting.script_calls(), 0);

    for fencing in [false, true] {
        let lock = RedisLock::new(counting.clone(), key.clone())
            .fencing(fencing)
            .replicas(WANTED, Duration::from_millis(50));
        for attempt in ["acquire", "try_acquire"] {
            let acks_before = counting.replicated_acks().len();
            let result = match attempt {
                "acquire" => lock.acquire().await.map(|_| ()),
                _ => lock.try_acquire().await.map(|_| ()),
            };
            let acks = counting.replicated_acks().split_off(acks_before);
            match result {
                Err(LockError::NotReplicated {
                    key: k,
                    wanted,
                    acked,
                }) => {
                    assert_eq!(k, key);
                    assert_eq!(wanted, WANTED);
                    // Exactly what the store's one `WAIT` answered: not retried, not made up.
                    assert_eq!(
                        acks,
                        [acked],
                        "{attempt} (fencing: {fencing}): the replicated calls' answers"
                    );
                }
                other => {
                    panic!("{attempt}: expected NotReplicated (fencing: {fencing}), got {other:?}")
                }
            }
            assert_eq!(
                probe.get(&key).await,
                None,
                "an unacknowledged acquisition is released (fencing: {fencing})"
            );
        }
    }

    let calls = counting.set_nx_calls();
    let guard = RedisLock::new(counting.clone(), key.clone())
        .replicas(0, Duration::ZERO)
        .acquire()
        .await
        .expect("replicas(0, _) is off");
    assert_eq!(counting.set_nx_calls(), calls + 1, "a plain SET NX");
    assert!(guard.renew().await.expect("renew"));
    assert!(guard.release().await.expect("release"));
}

/// A fault a [`FaultyBackend`] injects into every call until changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Calls pass through.
    None,
    /// Calls fail with a transient error without reaching the store.
    Error,
    /// Calls wait this long before reaching the store.
    Delay(Duration),
    /// Calls never complete and never reach the store.
    Never,
    /// Calls reach the store, then the reply is held back this long: the server ran the command but
    /// the caller has not heard (a slow or lost reply).
    DelayReply(Duration),
    /// Calls reach the store twice and the caller gets the second reply: a client that applied a
    /// command, lost the reply with its connection, and re-sent it over a new one (fred's default).
    Resend,
}

/// A backend wrapper that injects [`Fault`]s around a real backend, for cancellation and fault tests.
#[derive(Debug)]
pub struct FaultyBackend<B> {
    inner: B,
    fault: std::sync::Mutex<Fault>,
}

impl<B: LockBackend> FaultyBackend<B> {
    /// Wraps `inner`, passing calls through until a fault is set.
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            fault: std::sync::Mutex::new(Fault::None),
        }
    }

    /// Injects `fault` into every later call.
    pub fn set_fault(&self, fault: Fault) {
        *self.fault.lock().unwrap_or_else(|p| p.into_inner()) = fault;
    }

    fn fault(&self) -> Fault {
        *self.fault.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn inject<T, F: Future<Output = Result<T, BackendError>>>(
        &self,
        call: impl Fn() -> F,
    ) -> Result<T, BackendError> {
        let call = || call();
        match self.fault() {
            Fault::Resend => {
                let _first = call().await;
                call().await
            }
            Fault::None => call().await,
            Fault::Error => Err(BackendError::transient("faulty", "injected failure")),
            Fault::Delay(delay) => {
                self.inner.sleep(delay).await;
                call().await
            }
            Fault::Never => futures::future::pending().await,
            Fault::DelayReply(delay) => {
                let reply = call().await;
                self.inner.sleep(delay).await;
                reply
            }
        }
    }
}

#[async_trait]
impl<B: LockBackend> LockBackend for FaultyBackend<B> {
    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, BackendError> {
        self.inject(|| self.inner.set_nx(key, value, ttl)).await
    }

    async fn eval_script(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<ScriptValue, BackendError> {
        self.inject(|| self.inner.eval_script(script, keys, args))
            .await
    }

    async fn eval_script_replicated(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
        replicas: usize,
        timeout: Duration,
    ) -> Result<(ScriptValue, usize), BackendError> {
        self.inject(|| {
            self.inner
                .eval_script_replicated(script, keys, args, replicas, timeout)
        })
        .await
    }

    crate::backend::forward_capabilities!(|this| this.inner);
}
