//! Once Redis answers "not ours" to a token-checked request (`renew`, `extend`, `is_owner`), the guard
//! claims no validity any more, and a reply to an older request that arrives afterwards (a slow reply,
//! re-ordered behind the newer one) does not bring it back.
//!
//! Found by mutation testing (issue 9): `LockGuard` took a late reply's TTL whenever its request was
//! sent after the last confirmed one, and a "not ours" left the validity as it was, so after a
//! takeover `valid_for()` could still claim the full TTL.

use std::sync::Arc;
use std::time::Duration;

use futures::join;
use lock_core::RedisLock;
use lock_core::memory::MemoryBackend;
use lock_core::testing::{Fault, FaultyBackend};

const KEY: &str = "jobs:not-ours";
const SLOW_REPLY: Duration = Duration::from_millis(300);

/// A renewal applied while the key was ours, whose reply is slow; meanwhile the key is lost and taken
/// over, and `check` (a newer request) hears "not ours" first.
fn late_confirmation_after_not_ours(check: &'static str) {
    futures::executor::block_on(async {
        let store = MemoryBackend::new();
        let faulty = Arc::new(FaultyBackend::new(store.clone()));
        let lock = RedisLock::new(faulty.clone(), KEY).timeout(Duration::from_secs(30));
        let guard = lock.acquire().await.unwrap();

        faulty.set_fault(Fault::DelayReply(SLOW_REPLY));
        let slow_renewal = guard.renew();
        let newer = async {
            // The renewal has reached the store (it was applied) and its reply is on its way.
            futures_timer::Delay::new(Duration::from_millis(50)).await;
            faulty.set_fault(Fault::None);
            assert!(store.delete(KEY), "the key is lost");
            store.set(KEY, "someone-else", Duration::from_secs(30));
            let ours = match check {
                "renew" => guard.renew().await.unwrap(),
                "extend" => guard.extend(Duration::from_secs(5)).await.unwrap(),
                _ => guard.is_owner().await.unwrap(),
            };
            assert!(!ours, "{check}: the key is someone else's");
            assert!(
                guard.valid_for().is_zero(),
                "{check}: {:?}",
                guard.valid_for()
            );
        };
        let (renewed, ()) = join!(slow_renewal, newer);
        assert!(
            renewed.unwrap(),
            "the slow renewal was applied while the key was ours"
        );
        assert!(
            guard.valid_for().is_zero(),
            "{check}: the older reply must not revive the lease: {:?}",
            guard.valid_for()
        );
        assert_eq!(store.get(KEY).as_deref(), Some("someone-else"));
        assert!(!guard.release().await.unwrap());
    });
}

#[test]
fn renew_not_ours_ends_the_validity_for_good() {
    late_confirmation_after_not_ours("renew");
}

#[test]
fn extend_not_ours_ends_the_validity_for_good() {
    late_confirmation_after_not_ours("extend");
}

#[test]
fn is_owner_not_ours_ends_the_validity_for_good() {
    late_confirmation_after_not_ours("is_owner");
}
