//! Redlock's settings read back as set, and `wait_timeout(None)` waits for a busy lock (it gives up at
//! once only when failed masters decided a round). Both found unchecked by mutation testing.

use std::sync::Arc;
use std::time::Duration;

use lock_core::memory::MemoryBackend;
use lock_core::{LockBackend, Redlock};

fn masters(n: usize) -> Vec<Arc<dyn LockBackend>> {
    (0..n)
        .map(|_| Arc::new(MemoryBackend::new()) as Arc<dyn LockBackend>)
        .collect()
}

#[test]
#[allow(deprecated)]
fn settings_read_back_as_set() {
    let nodes = masters(5);
    let lock = Redlock::new(nodes.clone(), "jobs:settings")
        .timeout(Duration::from_secs(7))
        .wait_timeout(Some(Duration::from_secs(3)))
        .max_hold(Duration::from_secs(60))
        .node_timeout(Duration::from_millis(150))
        .fencing(true);
    assert_eq!(lock.key(), "jobs:settings");
    assert_eq!(lock.get_timeout(), Duration::from_secs(7));
    assert_eq!(
        lock.ttl(),
        Duration::from_secs(7),
        "the deprecated name reads the same"
    );
    assert_eq!(lock.get_wait_timeout(), Some(Duration::from_secs(3)));
    assert_eq!(lock.get_max_hold(), Some(Duration::from_secs(60)));
    assert_eq!(lock.get_node_timeout(), Some(Duration::from_millis(150)));
    assert!(lock.get_fencing());
    assert_eq!(lock.quorum(), 3);
    assert_eq!(lock.nodes().len(), 5);
    for (given, kept) in nodes.iter().zip(lock.nodes()) {
        let (given, kept) = (given.runtime().unwrap(), kept.runtime().unwrap());
        assert!(given.same_as(kept), "the masters, in the order given");
    }
}

#[test]
fn waiting_forever_outlasts_a_busy_lock() {
    futures::executor::block_on(async {
        let nodes = masters(3);
        let holder = Redlock::new(nodes.clone(), "jobs:busy")
            .timeout(Duration::from_secs(10))
            .acquire()
            .await
            .unwrap();
        let waiter = Redlock::new(nodes, "jobs:busy")
            .timeout(Duration::from_secs(10))
            .wait_timeout(None);
        let release_later = async {
            futures_timer::Delay::new(Duration::from_millis(200)).await;
            assert!(holder.release().await.unwrap());
        };
        let (acquired, ()) = futures::join!(waiter.acquire(), release_later);
        let guard = acquired.expect("a busy lock is waited for, not an error");
        assert!(guard.release().await.unwrap());
    });
}

/// `max_hold` counts from the acquisition: work shorter than it is held to its end.
#[test]
fn max_hold_counts_from_the_acquisition() {
    futures::executor::block_on(async {
        let guard = Redlock::new(masters(3), "jobs:max-hold")
            .timeout(Duration::from_millis(600))
            .max_hold(Duration::from_secs(10))
            .acquire()
            .await
            .unwrap();
        let held = guard
            .hold(futures_timer::Delay::new(Duration::from_millis(700)))
            .await;
        assert!(held.is_ok(), "{held:?}");
        assert!(guard.release().await.unwrap());
    });
}
