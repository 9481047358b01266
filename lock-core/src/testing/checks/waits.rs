//! Bounded waits (issue 13): with the backend's blocking waits limited
//! ([`Runtime::max_blocking_waits`](crate::Runtime::max_blocking_waits)), the waiters beyond the
//! limit poll and still get their locks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::future::{Either, join, select};

use crate::backend::{LockBackend, runtime_of};
use crate::testing::{Probe, SECOND, sleep};
use crate::{RedisLock, Runtime};

/// Sets the backend's limit for the check and puts the one it had back when dropped, so that a
/// failing check leaves the backend as it found it.
struct Limit {
    runtime: Runtime,
    before: usize,
}

impl Limit {
    fn set(runtime: &Runtime, limit: usize) -> Self {
        let before = runtime.get_max_blocking_waits();
        Self {
            runtime: runtime.clone().max_blocking_waits(limit),
            before,
        }
    }
}

impl Drop for Limit {
    fn drop(&mut self) {
        let _restored = self.runtime.clone().max_blocking_waits(self.before);
    }
}

/// With the limit at 1, waiters for two keys (a mutex and a fair lock) both acquire soon after their
/// holders release: one blocks on its release signal, the other polls. Never more than one waits
/// blocked meanwhile, and where the backend can block, one does.
pub async fn waiters_beyond_the_blocking_limit_still_acquire(
    backend: Arc<dyn LockBackend>,
    _: &dyn Probe,
    key: String,
) {
    // A backend without a runtime of its own shares one with every such backend, without a limit:
    // it is not set there, and only the acquisitions are checked.
    let limited = backend.runtime().map(|runtime| Limit::set(runtime, 1));
    let runtime = runtime_of(&*backend).clone();
    let plain = RedisLock::new(backend.clone(), format!("{key}:plain"))
        .timeout(10 * SECOND)
        .wait_timeout(Some(10 * SECOND));
    let fair = RedisLock::new(backend.clone(), format!("{key}:fair"))
        .fair(true)
        .timeout(10 * SECOND)
        .wait_timeout(Some(10 * SECOND));
    let plain_holder = plain.acquire().await.expect("hold the mutex");
    let fair_holder = fair.acquire().await.expect("hold the fair lock");

    let most_blocked = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    let sample = async {
        while !done.load(Ordering::Relaxed) {
            most_blocked.fetch_max(runtime.blocking_waits(), Ordering::Relaxed);
            sleep(&backend, Duration::from_millis(2)).await;
        }
    };
    let released = async {
        // Long enough for both waiters to have tried and gone to wait.
        sleep(&backend, Duration::from_millis(300)).await;
        assert!(plain_holder.release().await.expect("release the mutex"));
        assert!(fair_holder.release().await.expect("release the fair lock"));
        Instant::now()
    };
    let waiters = join(released, join(plain.acquire(), fair.acquire()));
    let (released_at, (plain_waiter, fair_waiter)) =
        match select(Box::pin(waiters), Box::pin(sample)).await {
            Either::Left((outcome, _)) => outcome,
            Either::Right(_) => unreachable!("sampling ends only when told"),
        };
    done.store(true, Ordering::Relaxed);
    let plain_waiter = plain_waiter.expect("the mutex's waiter acquires");
    let fair_waiter = fair_waiter.expect("the fair lock's waiter acquires");
    // Polling learns of a release within one backoff delay (100 ms at most by default).
    let took = released_at.elapsed();
    assert!(
        took < 2 * SECOND,
        "both acquired {took:?} after the releases"
    );
    if limited.is_some() {
        let most = most_blocked.load(Ordering::Relaxed);
        assert!(most <= 1, "{most} waits blocked at once, limit 1");
        if backend.capabilities().blocking_waits {
            assert_eq!(most, 1, "one waiter blocks on its release signal");
        }
        assert_eq!(runtime.blocking_waits(), 0, "every slot came back");
    }
    plain_waiter.release().await.expect("release");
    fair_waiter.release().await.expect("release");
}
