//! `hold` and `run`: renewal while the work runs, and how a lost lease is reported and released.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::backend::LockBackend;
use crate::testing::{Fault, FaultyBackend, Probe, SECOND, freed_soon, sleep};
use crate::{LockError, LockGuard, RedisLock};

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
    // `max_hold` counts from when the acquiring request was sent: measure from before it too, or a
    // slow reply (a loaded machine) makes the hold look shorter than it was.
    let asked = Instant::now();
    let guard = lock.acquire().await.expect("acquire");
    let dropped = AtomicBool::new(false);
    let result = guard.hold(work_for(&backend, 10 * SECOND, &dropped)).await;
    let held = asked.elapsed();
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
