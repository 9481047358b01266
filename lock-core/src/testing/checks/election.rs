//! Leadership: the leader/follower recipe over a plain lock, and [`Election`].

use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::{Either, select};

use crate::backend::LockBackend;
use crate::testing::{Probe, SECOND, sleep};
use crate::{Election, RedisLock};

/// The seed's leader/follower recipe: followers wait forever (`wait_timeout(None)`), the leader keeps
/// checking `is_owner` and calling `renew`, and a follower takes over when the leader stops renewing.
pub async fn leader_follower_recipe(backend: Arc<dyn LockBackend>, _: &dyn Probe, key: String) {
    let lock = RedisLock::new(backend.clone(), key)
        .timeout(Duration::from_millis(400))
        .wait_timeout(None);
    let leader = lock.acquire().await.expect("leader");
    let leader_rounds = async {
        for _ in 0..6 {
            assert!(leader.is_owner().await.expect("is_owner"));
            sleep(&backend, Duration::from_millis(100)).await;
            assert!(
                leader.renew().await.expect("renew"),
                "the leader keeps its lease"
            );
        }
        Instant::now()
    };
    let follower = async {
        let guard = lock
            .acquire()
            .await
            .expect("follower waits forever, then leads");
        (Instant::now(), guard)
    };
    // The leader renews for ~600 ms (longer than the TTL) and then "crashes": it stops renewing
    // without releasing.
    let (leader_stopped, (follower_started, follower)) = futures::join!(leader_rounds, follower);
    assert!(
        follower_started > leader_stopped,
        "the follower led while the leader renewed"
    );
    assert!(
        !leader.is_owner().await.expect("is_owner"),
        "the old leader knows it lost"
    );
    assert!(
        !leader.renew().await.expect("renew"),
        "the old leader cannot renew"
    );
    std::mem::forget(leader);
    assert!(follower.is_owner().await.expect("is_owner"));
    assert!(follower.release().await.expect("release"));
}

/// A candidate waiting in `campaign` leads within 500 ms of the leader resigning, whatever the TTL;
/// `leader()` names whoever leads; terms increase.
pub async fn election_hands_over_on_resign(
    backend: Arc<dyn LockBackend>,
    _: &dyn Probe,
    key: String,
) {
    let alice = Election::new(backend.clone(), key.clone())
        .timeout(30 * SECOND)
        .id("alice");
    let bob = Election::new(backend.clone(), key.clone())
        .timeout(30 * SECOND)
        .id("bob");
    assert_eq!(alice.leader().await.expect("leader"), None);
    let alice_term = alice.campaign().await.expect("alice leads");
    assert_eq!(alice_term.id(), "alice");
    assert_eq!(
        bob.leader().await.expect("leader").as_deref(),
        Some("alice")
    );

    let resign_later = async {
        sleep(&backend, Duration::from_millis(300)).await;
        assert!(alice_term.resign().await.expect("resign"));
        Instant::now()
    };
    let (resigned_at, bob_term) = futures::join!(resign_later, bob.campaign());
    let bob_term = bob_term.expect("bob leads");
    let handover = resigned_at.elapsed();
    assert!(
        handover < Duration::from_millis(500),
        "hand-over took {handover:?}"
    );
    assert_eq!(
        alice.leader().await.expect("leader").as_deref(),
        Some("bob")
    );
    assert!(bob_term.term() > 0);
    let bob_term_number = bob_term.term();
    assert!(bob_term.resign().await.expect("resign"));
    let again = alice.campaign().await.expect("alice leads again");
    assert!(again.term() > bob_term_number, "terms strictly increase");
    again.resign().await.expect("resign");
}

/// A leader that stops renewing is replaced within its TTL plus 500 ms; while it renews through
/// `hold`, nobody else leads.
pub async fn election_replaces_a_silent_leader(
    backend: Arc<dyn LockBackend>,
    _: &dyn Probe,
    key: String,
) {
    let ttl = Duration::from_millis(400);
    let first = Election::new(backend.clone(), key.clone())
        .timeout(ttl)
        .id("first");
    let second = Election::new(backend.clone(), key.clone())
        .timeout(ttl)
        .id("second");
    let leader = first.campaign().await.expect("first leads");
    // Leads for 3 TTLs through hold, while the second candidate campaigns.
    let next = {
        let campaign = pin!(second.campaign());
        let leading = pin!(leader.hold(sleep(&backend, 3 * ttl)));
        match select(leading, campaign).await {
            Either::Left((held, campaign)) => {
                held.expect("the leader keeps its term while holding");
                assert_eq!(
                    first.leader().await.expect("leader").as_deref(),
                    Some("first")
                );
                // Now the leader goes silent: no renewal, no resignation.
                let silent_since = Instant::now();
                let next = campaign.await.expect("second leads");
                let took = silent_since.elapsed();
                assert!(
                    took < ttl + Duration::from_millis(500),
                    "replaced only after {took:?}"
                );
                next
            }
            Either::Right(_) => panic!("the second candidate led while the first renewed"),
        }
    };
    assert!(next.term() > leader.term());
    assert!(!leader.guard().is_owner().await.expect("is_owner"));
    std::mem::forget(leader);
    next.resign().await.expect("resign");
}
