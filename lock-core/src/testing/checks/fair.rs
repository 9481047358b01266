//! The fair lock (`RedisLock::fair`): grants in arrival order, `try_acquire` only when nobody waits,
//! waiters that give up, are cancelled or die lose their place, nothing is left behind, fences
//! increase, and fair and plain locks on one key exclude each other.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::{Either, join, join_all, select};

use crate::backend::{LockBackend, ScriptValue};
use crate::testing::{CountingBackend, Probe, SECOND, eventually, sleep};
use crate::{LockError, RedisLock, keys, script};

/// What [`FAIR_WAITERS`](script::FAIR_WAITERS) answers for the fair lock `key`: how many of its two
/// queue keys exist, and the live waiters' tokens in the order they will be granted.
async fn queue_of(backend: &Arc<dyn LockBackend>, key: &str) -> (i64, Vec<String>) {
    let queue = keys::fair_queue(key).expect("queue key");
    let beats = keys::fair_beats(key).expect("heartbeats key");
    let reply = backend
        .eval_script(&script::FAIR_WAITERS, &[&queue, &beats], &[])
        .await
        .expect("read the fair queue");
    match reply {
        ScriptValue::Array(items) => match items.as_slice() {
            [ScriptValue::Int(existing), ScriptValue::Array(tokens)] => (
                *existing,
                tokens
                    .iter()
                    .map(|token| match token {
                        ScriptValue::Str(token) => token.clone(),
                        other => panic!("a waiter's token, not {other:?}"),
                    })
                    .collect(),
            ),
            _ => panic!("unexpected reply from fair_waiters: {items:?}"),
        },
        other => panic!("unexpected reply from fair_waiters: {other:?}"),
    }
}

/// The live waiters of the fair lock `key`, in the order they will be granted (their tokens), read
/// with [`FAIR_WAITERS`](script::FAIR_WAITERS): for tests that start waiters in a known order.
pub async fn fair_waiters(backend: &Arc<dyn LockBackend>, key: &str) -> Vec<String> {
    queue_of(backend, key).await.1
}

/// How many waiters are queued for `key`.
async fn waiting(backend: &Arc<dyn LockBackend>, key: &str) -> usize {
    queue_of(backend, key).await.1.len()
}

/// Puts `token` in the queue of `key` as a waiter whose place lasts `ttl_ms`, by the acquire script
/// itself (join, no wake-ups): a waiter that never comes back once its heartbeat is written.
async fn enqueue(backend: &Arc<dyn LockBackend>, key: &str, token: &str, ttl_ms: &str) -> i64 {
    let queue = keys::fair_queue(key).expect("queue key");
    let beats = keys::fair_beats(key).expect("heartbeats key");
    let signal = keys::release_signal(key).expect("signal key");
    match backend
        .eval_script(
            &script::FAIR_ACQUIRE,
            &[key, &queue, &beats, &signal],
            &[token, ttl_ms, "1", "0"],
        )
        .await
        .expect("fair acquire")
    {
        ScriptValue::Array(items) => match items.first() {
            Some(ScriptValue::Int(granted)) => *granted,
            _ => panic!("unexpected reply from fair_acquire: {items:?}"),
        },
        other => panic!("unexpected reply from fair_acquire: {other:?}"),
    }
}

/// Nothing of the fair lock `key` is left: no lock, no queue, no heartbeats.
async fn assert_nothing_left(backend: &Arc<dyn LockBackend>, probe: &dyn Probe, key: &str) {
    assert_eq!(probe.get(key).await, None, "the lock key is gone");
    assert_eq!(
        queue_of(backend, key).await,
        (0, Vec::new()),
        "the queue keys are gone once nobody waits"
    );
}

fn fair_lock(backend: &Arc<dyn LockBackend>, key: &str) -> RedisLock {
    RedisLock::new(backend.clone(), key)
        .fair(true)
        .timeout(2 * SECOND)
        .wait_timeout(Some(20 * SECOND))
}

/// Waiters started one after the other (each once the previous one is visibly queued) are granted
/// in that order, each after the previous one released; nothing is left behind.
pub async fn fair_lock_grants_in_arrival_order(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    const WAITERS: usize = 5;
    let lock = fair_lock(&backend, &key);
    let holder = lock.acquire().await.expect("acquire");
    let order = Mutex::new(Vec::new());
    let waiter = |i: usize| {
        let (lock, backend, key, order) = (lock.clone(), backend.clone(), key.clone(), &order);
        async move {
            assert!(
                eventually(&backend, 10 * SECOND, async || waiting(&backend, &key)
                    .await
                    == i)
                .await,
                "waiter {i} sees the {i} waiters before it queued"
            );
            let guard = lock.acquire().await.expect("a fair waiter acquires");
            order.lock().expect("order").push(i);
            sleep(&backend, Duration::from_millis(20)).await;
            assert!(guard.release().await.expect("release"));
        }
    };
    let release_when_all_wait = async {
        assert!(
            eventually(&backend, 10 * SECOND, async || waiting(&backend, &key)
                .await
                == WAITERS)
            .await,
            "all waiters queue"
        );
        assert!(holder.release().await.expect("release"));
    };
    join(join_all((0..WAITERS).map(waiter)), release_when_all_wait).await;
    assert_eq!(
        *order.lock().expect("order"),
        (0..WAITERS).collect::<Vec<_>>(),
        "granted in arrival order"
    );
    assert_nothing_left(&backend, probe, &key).await;
}

/// `try_acquire` on a fair lock fails while someone waits, even with the lock free, and succeeds once
/// nobody does; a fair lock that asks for replicas is `InvalidArgument` with nothing sent.
pub async fn fair_try_acquire_fails_while_someone_waits(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let lock = fair_lock(&backend, &key);
    let holder = lock.try_acquire().await.expect("try").expect("free");
    assert_eq!(enqueue(&backend, &key, "a-waiter", "10000").await, 0);
    assert!(holder.release().await.expect("release"));
    assert_eq!(probe.get(&key).await, None, "the lock is free");
    assert!(
        lock.try_acquire().await.expect("try").is_none(),
        "someone waits: no overtaking"
    );
    assert_eq!(
        queue_of(&backend, &key).await.1,
        ["a-waiter"],
        "try_acquire does not queue"
    );
    let keys = [
        key.clone(),
        keys::fair_queue(&key).expect("queue"),
        keys::fair_beats(&key).expect("beats"),
        keys::release_signal(&key).expect("signal"),
    ];
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let removed = backend
        .eval_script(&script::FAIR_LEAVE, &keys, &["a-waiter", "0"])
        .await
        .expect("leave");
    assert_eq!(removed, ScriptValue::Int(1));
    let guard = lock
        .try_acquire()
        .await
        .expect("try")
        .expect("nobody waits");
    assert!(guard.release().await.expect("release"));
    assert_nothing_left(&backend, probe, &key).await;

    let counting = Arc::new(CountingBackend::new(backend.clone()));
    let replicated = RedisLock::new(counting.clone(), key.clone())
        .fair(true)
        .replicas(1, SECOND);
    for err in [
        replicated.acquire().await.unwrap_err(),
        replicated.try_acquire().await.unwrap_err(),
    ] {
        assert!(
            matches!(
                err,
                LockError::InvalidArgument {
                    argument: "replicas",
                    ..
                }
            ),
            "{err:?}"
        );
    }
    assert_eq!(counting.script_calls() + counting.set_nx_calls(), 0);
    assert!(RedisLock::new(backend, key).fair(true).get_fair());
}

/// A waiter whose wait times out leaves the queue before it reports `Timeout`.
pub async fn fair_waiter_that_gives_up_leaves_the_queue(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let lock = fair_lock(&backend, &key);
    let holder = lock.acquire().await.expect("acquire");
    let impatient = lock.clone().wait_timeout(Some(Duration::from_millis(300)));
    match impatient.acquire().await {
        Err(LockError::Timeout { key: named, .. }) => assert_eq!(named, key),
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert_eq!(
        queue_of(&backend, &key).await,
        (0, Vec::new()),
        "the waiter left before reporting"
    );
    assert!(holder.release().await.expect("release"));
    assert_nothing_left(&backend, probe, &key).await;
}

/// A waiter whose acquire future is dropped leaves the queue: at once (in the background) where the
/// backend can spawn, otherwise when its place expires, within one TTL.
pub async fn cancelled_fair_waiter_leaves_the_queue(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let lock = fair_lock(&backend, &key);
    let holder = lock.acquire().await.expect("acquire");
    let waiter = lock.acquire();
    let queued = eventually(&backend, 10 * SECOND, async || {
        waiting(&backend, &key).await == 1
    });
    match select(Box::pin(waiter), Box::pin(queued)).await {
        Either::Left((result, _)) => {
            panic!("the waiter finished while the lock was held: {result:?}")
        }
        Either::Right((queued, waiter)) => {
            assert!(queued, "the waiter queued");
            drop(waiter);
        }
    }
    let within = match backend.runtime() {
        Some(_) => 5 * SECOND,
        None => 2 * SECOND + SECOND,
    };
    assert!(
        eventually(&backend, within, async || queue_of(&backend, &key).await
            == (0, Vec::new()))
        .await,
        "the cancelled waiter left the queue"
    );
    assert!(holder.release().await.expect("release"));
    assert_nothing_left(&backend, probe, &key).await;
}

/// A waiter that stops renewing its place (it died) blocks those behind it no longer than its TTL.
pub async fn dead_fair_waiter_stops_blocking_within_its_ttl(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let lock = fair_lock(&backend, &key);
    let holder = lock.acquire().await.expect("acquire");
    let queued_at = Instant::now();
    assert_eq!(enqueue(&backend, &key, "dead-waiter", "400").await, 0);
    assert!(holder.release().await.expect("release"));
    let (guard, ()) = join(lock.acquire(), async {
        assert!(
            eventually(&backend, 5 * SECOND, async || waiting(&backend, &key).await
                != 1)
            .await
        );
    })
    .await;
    let guard = guard.expect("the live waiter acquires once the dead one's place expired");
    let waited = queued_at.elapsed();
    assert!(
        waited >= Duration::from_millis(350),
        "the dead waiter kept its place while its heartbeat lasted (granted after {waited:?})"
    );
    assert!(
        waited < Duration::from_millis(400) + 2 * SECOND,
        "the dead waiter stopped blocking within its TTL (granted after {waited:?})"
    );
    assert!(guard.release().await.expect("release"));
    assert_nothing_left(&backend, probe, &key).await;
}

/// Fences of a fenced fair lock strictly increase, across hand-overs to waiters and interleaved with
/// a plain fenced lock on the same key (one counter).
pub async fn fair_fences_strictly_increase(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let fair = fair_lock(&backend, &key).fencing(true);
    let plain = RedisLock::new(backend.clone(), key.clone()).fencing(true);
    let mut last = 0;
    for round in 0..6 {
        let lock = if round % 2 == 0 { &fair } else { &plain };
        let guard = lock.acquire().await.expect("acquire");
        let fence = guard.fence().expect("a fence");
        assert!(fence > last, "fence {fence} after {last}");
        last = fence;
        // A fair waiter takes over from this holder.
        let (next, released) = join(fair.acquire(), async {
            assert!(
                eventually(&backend, 10 * SECOND, async || waiting(&backend, &key)
                    .await
                    == 1)
                .await
            );
            guard.release().await.expect("release")
        })
        .await;
        assert!(released);
        let next = next.expect("the waiter acquires");
        let fence = next.fence().expect("a fence");
        assert!(fence > last, "fence {fence} after {last}");
        last = fence;
        assert!(next.release().await.expect("release"));
    }
    assert_nothing_left(&backend, probe, &key).await;
}

/// A fair lock and a plain lock on one key exclude each other: the key holds exactly one token.
pub async fn fair_and_plain_locks_exclude_each_other(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let fair = fair_lock(&backend, &key);
    let plain = RedisLock::new(backend.clone(), key.clone())
        .timeout(2 * SECOND)
        .wait_timeout(Some(Duration::from_millis(200)));

    let guard = fair.acquire().await.expect("acquire");
    assert_eq!(probe.get(&key).await.as_deref(), Some(guard.token()));
    assert!(plain.try_acquire().await.expect("try").is_none());
    assert!(matches!(
        plain.acquire().await,
        Err(LockError::Timeout { .. })
    ));
    assert!(guard.release().await.expect("release"));

    let guard = plain.acquire().await.expect("acquire");
    assert!(fair.try_acquire().await.expect("try").is_none());
    let (waiter, released) = join(fair.acquire(), async {
        assert!(
            eventually(&backend, 10 * SECOND, async || waiting(&backend, &key)
                .await
                == 1)
            .await
        );
        guard.release().await.expect("release")
    })
    .await;
    assert!(released);
    let waiter = waiter.expect("the fair waiter acquires once the plain holder released");
    assert_eq!(probe.get(&key).await.as_deref(), Some(waiter.token()));
    assert!(waiter.release().await.expect("release"));
    assert_nothing_left(&backend, probe, &key).await;
}
