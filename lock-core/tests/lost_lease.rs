//! A lease `hold` reported lost is claimed no more: the library releases it in the background, so the
//! guard must not go on saying it is valid (another client may hold the key by then), and its
//! `release` is "not ours" (`Ok(false)`), not "in doubt".
//!
//! Found by the simulation (issue 9): after `hold` returned `Lost` because `max_hold` passed, the guard
//! still answered `valid_for() ≈ TTL` while its background release had freed the key and another
//! client had taken it; `release()` then answered `InDoubt`.

use std::sync::Arc;
use std::time::Duration;

use lock_core::memory::MemoryBackend;
use lock_core::{LockBackend, LockError, RedisLock, Redlock, Runtime};

#[test]
fn a_lease_reported_lost_is_not_claimed() {
    futures::executor::block_on(async {
        let store = MemoryBackend::new();
        let lock = RedisLock::new(store.clone(), "jobs:lost")
            .timeout(Duration::from_secs(10))
            .max_hold(Duration::from_millis(50));
        let guard = lock.acquire().await.unwrap();
        let held = guard
            .hold(Runtime::neutral().sleep(Duration::from_secs(1)))
            .await;
        assert!(matches!(held, Err(LockError::Lost { .. })), "{held:?}");
        assert_eq!(store.get("jobs:lost"), None, "released in the background");
        assert!(guard.valid_for().is_zero(), "{:?}", guard.valid_for());
        assert!(!guard.is_owner().await.unwrap());
        let other = lock.try_acquire().await.unwrap().expect("the key is free");
        assert!(!guard.release().await.unwrap(), "not ours any more");
        assert!(other.release().await.unwrap());
    });
}

#[test]
fn a_redlock_reported_lost_is_not_claimed() {
    futures::executor::block_on(async {
        let nodes: Vec<Arc<dyn LockBackend>> = (0..3)
            .map(|_| Arc::new(MemoryBackend::new()) as Arc<dyn LockBackend>)
            .collect();
        let lock = Redlock::new(nodes.clone(), "jobs:lost")
            .timeout(Duration::from_secs(10))
            .max_hold(Duration::from_millis(50));
        let guard = lock.acquire().await.unwrap();
        let held = guard
            .hold(Runtime::neutral().sleep(Duration::from_secs(1)))
            .await;
        assert!(matches!(held, Err(LockError::Lost { .. })), "{held:?}");
        assert!(guard.valid_for().is_zero(), "{:?}", guard.valid_for());
        assert!(!guard.release().await.unwrap(), "not ours any more");
    });
}
