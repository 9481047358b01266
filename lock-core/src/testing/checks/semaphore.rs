//! [`Semaphore`]: the limit across holders, permits as leases expiring on their own, the limit kept
//! while permits are held, waking on release, cancellation, fences, and the key's layout in the store.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::future::{Either, join_all, select};

use crate::backend::{LockBackend, ScriptValue, runtime_of};
use crate::testing::{CountingBackend, Fault, FaultyBackend, Probe, SECOND, eventually, sleep};
use crate::{LockError, Semaphore};
use crate::{keys, script};

/// Every call `counting` passed on.
fn sent(counting: &CountingBackend<Arc<dyn LockBackend>>) -> usize {
    counting.set_nx_calls() + counting.script_calls()
}

/// The holders of `key` as the store shows them, without the `limit:<n>` entry.
async fn holders(probe: &dyn Probe, key: &str) -> Vec<(String, i64)> {
    probe
        .members(key)
        .await
        .expect("this check reads the semaphore's sorted set")
        .into_iter()
        .filter(|(member, _)| !member.starts_with("limit:"))
        .collect()
}

/// At most `limit` permits are held at once; `available` counts them; the key is a sorted set of
/// `"<permits>:<token>"` holders and the `limit:<n>` entry, deleted when the last holder releases.
pub async fn semaphore_admits_at_most_limit(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let sem = Semaphore::new(backend, key.clone(), 3)
        .timeout(10 * SECOND)
        .wait_timeout(Some(Duration::ZERO));
    assert_eq!(sem.available().await.expect("available"), 3);
    let mut permits = Vec::new();
    for _ in 0..3 {
        permits.push(sem.acquire().await.expect("a free permit"));
    }
    assert!(
        sem.try_acquire().await.expect("try_acquire").is_none(),
        "a fourth permit of three"
    );
    assert!(
        matches!(sem.acquire().await, Err(LockError::Timeout { key: k, .. }) if k == key),
        "acquire with a zero wait times out naming the key"
    );
    assert_eq!(sem.available().await.expect("available"), 0);
    let members = probe.members(&key).await.expect("read the sorted set");
    assert!(
        members.contains(&("limit:3".to_owned(), 0)),
        "the limit is kept in the key: {members:?}"
    );
    for permit in &permits {
        let member = format!("1:{}", permit.token());
        let (_, expiry) = members
            .iter()
            .find(|(m, _)| *m == member)
            .unwrap_or_else(|| panic!("{member} is a member: {members:?}"));
        assert!(
            *expiry > 1_600_000_000_000,
            "scored by its expiry in Unix ms"
        );
    }
    let ttl = probe.pttl(&key).await.expect("the key expires");
    assert!(ttl > 8 * SECOND && ttl <= 10 * SECOND, "PTTL {ttl:?}");
    let first = permits.remove(0);
    assert_eq!(first.permits(), 1);
    assert!(first.release().await.expect("release"));
    assert_eq!(sem.available().await.expect("available"), 1);
    let again = sem.try_acquire().await.expect("try_acquire");
    assert!(again.is_some(), "a released permit is free again");
    permits.extend(again);
    for permit in permits {
        assert!(permit.release().await.expect("release"));
    }
    assert!(
        probe.members(&key).await.expect("read").is_empty(),
        "no key is left behind"
    );
    assert_eq!(probe.pttl(&key).await, None);
}

/// `acquire_many` takes several permits as one lease; bad counts and a zero limit are
/// `InvalidArgument` naming what was wrong, with nothing sent.
pub async fn semaphore_acquire_many_counts_permits(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let counting = Arc::new(CountingBackend::new(backend.clone()));
    let sem = Semaphore::new(counting.clone(), key.clone(), 4).wait_timeout(Some(Duration::ZERO));
    for (permits, what) in [(0, "zero permits"), (5, "more permits than the limit")] {
        let before = sent(&counting);
        match sem.acquire_many(permits).await {
            Err(LockError::InvalidArgument { argument, .. }) => assert_eq!(argument, "permits"),
            other => panic!("{what}: {other:?}"),
        }
        match sem.try_acquire_many(permits).await {
            Err(LockError::InvalidArgument { argument, .. }) => assert_eq!(argument, "permits"),
            other => panic!("{what}: {other:?}"),
        }
        assert_eq!(sent(&counting), before, "{what}: nothing sent");
    }
    let empty = Semaphore::new(counting.clone(), key.clone(), 0);
    let before = sent(&counting);
    for result in [
        empty.acquire().await.map(drop),
        empty.try_acquire().await.map(drop),
        empty.available().await.map(drop),
    ] {
        match result {
            Err(LockError::InvalidArgument { argument, .. }) => assert_eq!(argument, "limit"),
            other => panic!("a limit of 0: {other:?}"),
        }
    }
    assert_eq!(sent(&counting), before, "a limit of 0: nothing sent");

    let three = sem.acquire_many(3).await.expect("three of four");
    assert_eq!(three.permits(), 3);
    assert!(
        holders(probe, &key)
            .await
            .iter()
            .any(|(m, _)| *m == format!("3:{}", three.token())),
        "one member for the three permits"
    );
    assert!(sem.try_acquire_many(2).await.expect("try").is_none());
    assert_eq!(sem.available().await.expect("available"), 1);
    let one = sem.try_acquire().await.expect("try").expect("the fourth");
    assert!(three.release().await.expect("release"));
    assert_eq!(sem.available().await.expect("available"), 3);
    assert!(one.release().await.expect("release"));
}

/// Acquiring under another limit while permits are held is `InvalidArgument` naming both limits;
/// once none is held, the new limit takes effect.
pub async fn semaphore_limit_is_kept_while_permits_are_held(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let four = Semaphore::new(backend.clone(), key.clone(), 4);
    let five = Semaphore::new(backend.clone(), key.clone(), 5);
    let held = four.acquire().await.expect("acquire");
    for result in [
        five.try_acquire().await.map(drop),
        five.available().await.map(drop),
    ] {
        match result {
            Err(LockError::InvalidArgument { argument, reason }) => {
                assert_eq!(argument, "limit");
                assert!(
                    reason.contains('4') && reason.contains('5'),
                    "names both limits: {reason}"
                );
            }
            other => panic!("another limit while permits are held: {other:?}"),
        }
    }
    assert_eq!(
        holders(probe, &key).await.len(),
        1,
        "the refused acquisition changed nothing"
    );
    assert!(held.release().await.expect("release"));
    let under_five = five.acquire().await.expect("the new limit takes effect");
    assert_eq!(five.available().await.expect("available"), 4);
    assert!(
        probe
            .members(&key)
            .await
            .expect("read")
            .contains(&("limit:5".to_owned(), 0))
    );
    assert!(under_five.release().await.expect("release"));
}

/// Each permit expires on its own by the server's clock: a holder that stops renewing loses its
/// permit after its TTL while a live holder's renewals keep only its own; the expired permit
/// answers `false` and is never re-created.
pub async fn semaphore_permits_expire_on_their_own(
    backend: Arc<dyn LockBackend>,
    _: &dyn Probe,
    key: String,
) {
    let sem = Semaphore::new(backend.clone(), key.clone(), 2)
        .timeout(Duration::from_millis(400))
        .wait_timeout(Some(5 * SECOND));
    let live = sem.acquire().await.expect("acquire");
    let dead = sem.acquire().await.expect("acquire");
    // The live holder renews throughout; the dead one never does.
    let renewed = live.hold(sleep(&backend, Duration::from_millis(900))).await;
    assert!(renewed.is_ok(), "hold kept the live permit: {renewed:?}");
    assert_eq!(
        sem.available().await.expect("available"),
        1,
        "the dead holder's permit came back; the live one's did not"
    );
    assert!(!dead.renew().await.expect("renew"), "an expired permit");
    assert!(!dead.is_owner().await.expect("is_owner"));
    assert_eq!(
        sem.available().await.expect("available"),
        1,
        "not re-created"
    );
    assert!(!dead.release().await.expect("release"));
    assert!(live.release().await.expect("release"));
}

/// A waiter gets a permit as soon as a holder releases, long before the holder's TTL.
pub async fn semaphore_waiter_gets_a_released_permit(
    backend: Arc<dyn LockBackend>,
    _: &dyn Probe,
    key: String,
) {
    let sem = Semaphore::new(backend.clone(), key.clone(), 1)
        .timeout(60 * SECOND)
        .wait_timeout(Some(20 * SECOND));
    let held = sem.acquire().await.expect("acquire");
    let waiter = Box::pin(sem.acquire());
    let release = async {
        sleep(&backend, Duration::from_millis(200)).await;
        assert!(held.release().await.expect("release"));
    };
    let (permit, ()) = futures::join!(waiter, release);
    let permit = permit.expect("the waiter got the released permit");
    assert!(permit.release().await.expect("release"));
}

/// Under contention the limit holds: never more than `limit` tasks inside at once, every task gets
/// in, and permits of several sizes add up.
pub async fn semaphore_contention_never_exceeds_the_limit(
    backend: Arc<dyn LockBackend>,
    _: &dyn Probe,
    key: String,
) {
    let limit = 3;
    let sem = Semaphore::new(backend.clone(), key, limit)
        .timeout(10 * SECOND)
        .wait_timeout(Some(60 * SECOND));
    let inside = AtomicU32::new(0);
    let most = AtomicU32::new(0);
    let tasks = (0..6u32).map(|task| {
        let (sem, inside, most, backend) = (&sem, &inside, &most, &backend);
        async move {
            for round in 0..4 {
                let want = 1 + (task + round) % 2;
                let permit = sem.acquire_many(want).await.expect("acquire");
                let now = inside.fetch_add(want, Ordering::SeqCst) + want;
                most.fetch_max(now, Ordering::SeqCst);
                sleep(backend, Duration::from_millis(5)).await;
                inside.fetch_sub(want, Ordering::SeqCst);
                assert!(permit.release().await.expect("release"));
            }
        }
    });
    join_all(tasks).await;
    let most = most.load(Ordering::SeqCst);
    assert!(most <= limit, "{most} permits held at once, limit {limit}");
    assert!(most >= 2, "tasks did run side by side");
}

/// A permit's `extend`, `renew` and `valid_for` follow its own entry; fences strictly increase
/// across acquisitions.
pub async fn semaphore_permits_extend_renew_and_fence(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let sem = Semaphore::new(backend, key.clone(), 2)
        .timeout(10 * SECOND)
        .fencing(true);
    let first = sem.acquire().await.expect("acquire");
    let second = sem.acquire().await.expect("acquire");
    let (a, b) = (
        first.fence().expect("fence"),
        second.fence().expect("fence"),
    );
    assert!(b > a, "fences strictly increase: {a} then {b}");
    assert!(first.extend(20 * SECOND).await.expect("extend"));
    assert!(
        first.valid_for() > 25 * SECOND,
        "valid_for {:?}",
        first.valid_for()
    );
    let expiry = |members: &[(String, i64)], token: &str| {
        members
            .iter()
            .find(|(m, _)| m.ends_with(token))
            .map(|(_, s)| *s)
            .expect("the permit's member")
    };
    let members = holders(probe, &key).await;
    let (e1, e2) = (
        expiry(&members, first.token()),
        expiry(&members, second.token()),
    );
    assert!(
        e1 - e2 > 15_000,
        "extend moved only its own permit: {e1} vs {e2}"
    );
    let ttl = probe.pttl(&key).await.expect("the key expires");
    assert!(
        ttl > 25 * SECOND,
        "the key lives as long as its longest permit: {ttl:?}"
    );
    assert!(
        first.renew().await.expect("renew"),
        "renew never shortens and answers true"
    );
    assert!(first.valid_for() > 25 * SECOND);
    assert!(second.is_owner().await.expect("is_owner"));
    drop(first);
    drop(second);
    let third = sem.acquire().await.expect("acquire");
    assert!(third.fence().expect("fence") > b);
    assert!(third.release().await.expect("release"));
}

/// A dropped permit is released in the background; a cancelled acquisition whose request the server
/// applied leaves no permit held.
pub async fn semaphore_dropped_and_cancelled_permits_come_back(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let sem = Semaphore::new(backend.clone(), key.clone(), 1).timeout(60 * SECOND);
    drop(sem.acquire().await.expect("acquire"));
    let freed = eventually(&backend, 5 * SECOND, async || {
        holders(probe, &key).await.is_empty()
    })
    .await;
    assert!(freed, "a dropped permit must be released in the background");

    let slow = Arc::new(FaultyBackend::new(backend.clone()));
    slow.set_fault(Fault::DelayReply(10 * SECOND));
    let slow_sem = Semaphore::new(slow.clone(), key.clone(), 1).timeout(60 * SECOND);
    let acquire = Box::pin(slow_sem.acquire());
    match select(
        acquire,
        runtime_of(&backend).sleep(Duration::from_millis(300)),
    )
    .await
    {
        Either::Left(_) => panic!("acquire cannot finish while the reply is held back"),
        Either::Right(((), acquire)) => {
            assert_eq!(holders(probe, &key).await.len(), 1, "the server applied it");
            drop(acquire);
        }
    }
    slow.set_fault(Fault::None);
    assert!(
        eventually(&backend, 5 * SECOND, async || {
            holders(probe, &key).await.is_empty()
        })
        .await,
        "a cancelled acquisition must not leave a permit held"
    );
}

/// `run` acquires a permit, runs the body and releases it.
pub async fn semaphore_run_releases(backend: Arc<dyn LockBackend>, probe: &dyn Probe, key: String) {
    let sem = Semaphore::new(backend, key.clone(), 2);
    let seen = sem
        .run(async |permit| {
            assert!(permit.is_owner().await.expect("is_owner"));
            permit.permits()
        })
        .await
        .expect("run");
    assert_eq!(seen, 1);
    assert!(holders(probe, &key).await.is_empty(), "released after run");
}

/// Requests a client re-sent after applying them take effect once: an acquisition takes its permits
/// once, an `extend` adds once, and a release whose second send found nothing is
/// [`LockError::InDoubt`], not "not ours" (pitfalls 36 and 37).
pub async fn semaphore_resent_requests_apply_once(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let faulty = Arc::new(FaultyBackend::new(backend));
    let sem = Semaphore::new(faulty.clone(), key.clone(), 3).timeout(10 * SECOND);
    faulty.set_fault(Fault::Resend);
    let permit = sem.acquire_many(2).await.expect("acquire, sent twice");
    assert_eq!(
        holders(probe, &key).await.len(),
        1,
        "one acquisition, one member"
    );
    assert_eq!(sem.available().await.expect("available"), 1);
    assert!(permit.extend(20 * SECOND).await.expect("extend"));
    assert!(permit.extend(20 * SECOND).await.expect("extend again"));
    let ttl = probe.pttl(&key).await.expect("ttl");
    assert!(
        ttl > 48 * SECOND && ttl <= 50 * SECOND,
        "PTTL {ttl:?} after 10 s + 20 s + 20 s, each sent twice"
    );
    assert!(permit.valid_for() <= ttl);
    match permit.release().await {
        Err(LockError::InDoubt { operation, .. }) => assert_eq!(operation, "release"),
        other => panic!("a re-sent release found nothing the second time: {other:?}"),
    }
    faulty.set_fault(Fault::None);
    assert!(holders(probe, &key).await.is_empty(), "released once");
}

/// A re-sent acquisition of a live permit or read hold (its first reply lost, the client sending it
/// again) is granted with a fence of its own, never the fence another holder got in between: two
/// holders must never share a fence (the chaos suite caught a re-sent read answering the counter as it
/// stood, which was the next reader's fence).
pub async fn resent_shared_acquisitions_never_share_a_fence(
    backend: Arc<dyn LockBackend>,
    _probe: &dyn Probe,
    key: String,
) {
    let fence_of = |reply: Result<ScriptValue, crate::BackendError>, what: &str| -> i64 {
        match reply {
            Ok(ScriptValue::Array(items)) => match items.as_slice() {
                [ScriptValue::Int(1), ScriptValue::Int(fence)] => *fence,
                other => panic!("{what}: not granted: {other:?}"),
            },
            other => panic!("{what}: {other:?}"),
        }
    };
    // Semaphore: permit a, then permit b, then a's acquisition again (the re-send).
    let sem_key = format!("{key}:sem");
    let counter = keys::fence_counter(&sem_key).expect("a counter name");
    let acquire = |member: &'static str| {
        let backend = backend.clone();
        let (sem_key, counter) = (sem_key.clone(), counter.clone());
        async move {
            backend
                .eval_script(
                    &script::SEMAPHORE_ACQUIRE,
                    &[&sem_key, &counter],
                    &[member, "1", "3", "10000"],
                )
                .await
        }
    };
    let a = fence_of(acquire("1:a").await, "permit a");
    let b = fence_of(acquire("1:b").await, "permit b");
    let a_again = fence_of(acquire("1:a").await, "permit a, re-sent");
    assert!(b > a, "fences increase: {a} then {b}");
    assert!(
        a_again > b,
        "the re-sent permit got {a_again}, permit b {b}"
    );

    // Read-write lock: reader a, then reader b, then a's read again (the re-send).
    let rw_key = format!("{key}:rw");
    let writers = keys::rwlock_writers(&rw_key).expect("a writers name");
    let counter = keys::fence_counter(&rw_key).expect("a counter name");
    let read = |member: &'static str| {
        let backend = backend.clone();
        let (rw_key, writers, counter) = (rw_key.clone(), writers.clone(), counter.clone());
        async move {
            backend
                .eval_script(
                    &script::RW_READ,
                    &[&rw_key, &writers, &counter],
                    &[member, "10000"],
                )
                .await
        }
    };
    let a = fence_of(read("read:a").await, "reader a");
    let b = fence_of(read("read:b").await, "reader b");
    let a_again = fence_of(read("read:a").await, "reader a, re-sent");
    assert!(b > a, "fences increase: {a} then {b}");
    assert!(a_again > b, "the re-sent read got {a_again}, reader b {b}");
}
