//! Cancellation and drops: a dropped guard, `acquire`, `release` or `run` leaves no lock behind, also
//! through an outage.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::{Either, select};

use crate::RedisLock;
use crate::backend::{LockBackend, runtime_of};
use crate::testing::{Fault, FaultyBackend, Probe, SECOND, freed_soon, sleep};

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
        match select(
            acquire,
            runtime_of(&backend).sleep(Duration::from_millis(300)),
        )
        .await
        {
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
    match select(
        release,
        runtime_of(&backend).sleep(Duration::from_millis(50)),
    )
    .await
    {
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
    match select(run, runtime_of(&backend).sleep(Duration::from_millis(200))).await {
        Either::Left(_) => panic!("the body never finishes"),
        Either::Right(((), run)) => drop(run),
    }
    assert!(entered.load(Ordering::SeqCst));
    let released = freed_soon(&backend, probe, &key).await;
    assert!(released, "a dropped run must release its lock");
}
