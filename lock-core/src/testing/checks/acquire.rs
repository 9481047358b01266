//! Acquisition: tokens, `try_acquire`, waiting, timing out, taking over after expiry, and
//! exclusion under contention.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::future::join_all;

use crate::backend::LockBackend;
use crate::testing::{CountingBackend, Probe, SECOND, Unqueued, sleep};
use crate::{LockError, RedisLock};

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
    let unqueued = RedisLock::new(Unqueued::new(backend.clone()), key)
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
