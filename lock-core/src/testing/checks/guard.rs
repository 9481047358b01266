//! The guard's operations: `release`, `extend`, `renew`, `is_owner` and `valid_for`, also when a
//! client re-sends a request.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::backend::LockBackend;
use crate::testing::{CountingBackend, Fault, FaultyBackend, Probe, SECOND, sleep};
use crate::{LockError, LockGuard, RedisLock};

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
    let guard = RedisLock::new(backend.clone(), key.clone())
        .timeout(10 * SECOND)
        .acquire()
        .await
        .expect("acquire");
    probe.del(&key).await;
    assert!(!guard.extend(10 * SECOND).await.expect("extend"));
    assert!(!guard.renew().await.expect("renew"));
    assert!(!guard.is_owner().await.expect("is_owner"));
    assert_eq!(probe.get(&key).await, None, "an expired lock stays expired");
    // Redis said "not ours": the guard claims nothing any more, and its release is "not ours" too.
    assert!(guard.valid_for().is_zero(), "{:?}", guard.valid_for());
    assert!(!guard.release().await.expect("release"));

    // A key that vanished while the guard's own clock says it is still valid, first noticed by the
    // release: it cannot tell whether it deleted it itself (a re-send) or the store lost it.
    let guard = RedisLock::new(backend, key.clone())
        .timeout(10 * SECOND)
        .acquire()
        .await
        .expect("acquire");
    probe.del(&key).await;
    let released = guard.release().await;
    assert!(
        matches!(released, Err(LockError::InDoubt { .. })),
        "{released:?}"
    );
}

/// `is_owner` is true while our token is there, false once the key expired or changed hands, and
/// false for good after that: the guard lost the lease even if its token comes back.
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
    assert_eq!(guard.valid_for(), Duration::ZERO, "not ours: no validity");
    probe.set(&key, guard.token(), 10 * SECOND).await;
    assert!(
        !guard.is_owner().await.expect("is_owner"),
        "a lost lease stays lost"
    );
    probe.del(&key).await;
    assert!(!guard.release().await.expect("release"));

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
