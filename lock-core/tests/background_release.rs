//! A guard dropped without `release` is released in the background: transient failures are retried
//! with backoff, and a permanent one ends the retries at once (retrying a refusal only adds load; the
//! lock's TTL frees the key).

use std::sync::Arc;
use std::time::{Duration, Instant};

use lock_core::RedisLock;
use lock_core::memory::MemoryBackend;
use lock_core::testing::{CountingBackend, Fault, FaultyBackend};

const KEY: &str = "jobs:background";

/// Drops a guard while every call fails with `fault`, waits `settle`, and answers how many release
/// attempts were made, and whether the key is still held.
fn attempts_after_drop(fault: Fault, settle: Duration) -> (usize, bool) {
    futures::executor::block_on(async {
        let store = MemoryBackend::new();
        let faulty = Arc::new(FaultyBackend::new(store.clone()));
        let counting = Arc::new(CountingBackend::new(faulty.clone()));
        let guard = RedisLock::new(counting.clone(), KEY)
            .timeout(Duration::from_secs(30))
            .acquire()
            .await
            .unwrap();
        let before = counting.script_calls();
        faulty.set_fault(fault);
        drop(guard);
        let started = Instant::now();
        while started.elapsed() < settle {
            futures_timer::Delay::new(Duration::from_millis(20)).await;
        }
        (counting.script_calls() - before, store.get(KEY).is_some())
    })
}

#[test]
fn a_refused_background_release_is_not_retried() {
    let (attempts, held) = attempts_after_drop(Fault::Refused, Duration::from_millis(600));
    assert_eq!(attempts, 1, "a permanent error ends the background release");
    assert!(held, "the refused release left the key to its TTL");
}

#[test]
fn a_failing_background_release_is_retried() {
    // 50 ms doubling: attempts at about 0, 50, 150, 350 ms within 600 ms; a loaded machine may run
    // fewer, never only one.
    let (attempts, held) = attempts_after_drop(Fault::Error, Duration::from_millis(600));
    assert!(
        attempts >= 2,
        "transient failures are retried: {attempts} attempt(s)"
    );
    assert!(held, "every attempt failed");
}
