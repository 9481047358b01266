//! The pace of `hold`'s renewals: about every third of the TTL while they succeed, and soon again
//! after a failure, so that one failed renewal (a blip) does not cost the lease.

use std::sync::Arc;
use std::time::Duration;

use lock_core::RedisLock;
use lock_core::memory::MemoryBackend;
use lock_core::testing::{CountingBackend, FaultyBackend};

#[test]
fn hold_renews_about_every_third_of_the_ttl() {
    futures::executor::block_on(async {
        let counting = Arc::new(CountingBackend::new(MemoryBackend::new()));
        let guard = RedisLock::new(counting.clone(), "jobs:pace")
            .timeout(Duration::from_millis(1500))
            .acquire()
            .await
            .unwrap();
        let before = counting.script_calls();
        guard
            .hold(futures_timer::Delay::new(Duration::from_millis(1200)))
            .await
            .unwrap();
        // Every 400–500 ms (a third of the TTL, jittered down by at most 20%): 2 or 3 renewals in 1.2 s.
        let renewals = counting.script_calls() - before;
        assert!(
            (1..=4).contains(&renewals),
            "{renewals} renewals in 1.2 s with a 1.5 s TTL"
        );
        assert!(guard.release().await.unwrap());
    });
}

#[test]
fn one_failed_renewal_is_retried_before_the_lease_runs_out() {
    futures::executor::block_on(async {
        let faulty = Arc::new(FaultyBackend::new(MemoryBackend::new()));
        let guard = RedisLock::new(faulty.clone(), "jobs:blip")
            .timeout(Duration::from_millis(900))
            .acquire()
            .await
            .unwrap();
        // The first renewal (at about 240–300 ms) fails; the retry comes a tenth of the TTL later,
        // well within the 600 ms of validity left.
        faulty.fail_next(1);
        let held = guard
            .hold(futures_timer::Delay::new(Duration::from_millis(1500)))
            .await;
        assert!(
            held.is_ok(),
            "a single failed renewal lost the lease: {held:?}"
        );
        assert!(guard.release().await.unwrap());
    });
}
