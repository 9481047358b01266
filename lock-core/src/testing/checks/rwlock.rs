//! The read-write lock: many readers or one writer, writer preference, downgrade, holds that expire on
//! their own, fences, drops and cancellation. The checks read the key's sorted set through
//! [`Probe::members`].

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, Either, join, join_all, select};

use crate::backend::{LockBackend, runtime_of};
use crate::testing::{CountingBackend, Fault, FaultyBackend, Probe, SECOND, eventually, sleep};
use crate::{LockError, RwLock, keys};

/// The holders of `key` (`read:<token>` / `write:<token>`, each with its expiry).
async fn members(probe: &dyn Probe, key: &str) -> Vec<(String, i64)> {
    probe
        .members(key)
        .await
        .expect("the read-write lock checks read sorted sets (Probe::members)")
}

/// A sleep on the backend's runtime that can be raced with `select`.
fn pause(backend: &Arc<dyn LockBackend>, duration: Duration) -> BoxFuture<'static, ()> {
    runtime_of(backend).sleep(duration)
}

/// The waiting writers' key beside `key`.
fn writers_of(key: &str) -> String {
    keys::rwlock_writers(key).expect("a companion key")
}

/// Whether `key` has no member (the key is gone) within 5 s.
async fn empty_soon(backend: &Arc<dyn LockBackend>, probe: &dyn Probe, key: &str) -> bool {
    eventually(backend, 5 * SECOND, async || {
        members(probe, key).await.is_empty()
    })
    .await
}

/// Many readers hold at once, each its own `read:<token>` entry; no writer gets in beside them; once
/// they are gone, nothing is left behind.
pub async fn rw_readers_share_the_lock(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let lock = RwLock::new(backend.clone(), key.clone()).wait_timeout(Some(2 * SECOND));
    let readers: Vec<_> = join_all((0..5).map(|_| lock.read()))
        .await
        .into_iter()
        .map(|r| r.expect("readers never wait for readers"))
        .collect();
    let mut held: Vec<String> = members(probe, &key)
        .await
        .into_iter()
        .map(|(m, _)| m)
        .collect();
    held.sort();
    let mut expected: Vec<String> = readers
        .iter()
        .map(|r| format!("read:{}", r.token()))
        .collect();
    expected.sort();
    assert_eq!(held, expected, "one entry per reader");
    assert!(
        lock.try_write().await.expect("try_write").is_none(),
        "no writer beside readers"
    );
    for reader in readers {
        assert!(reader.is_owner().await.expect("is_owner"));
        assert!(reader.release().await.expect("release"), "still ours");
    }
    assert!(members(probe, &key).await.is_empty(), "no key left behind");
    assert!(
        members(probe, &writers_of(&key)).await.is_empty(),
        "try_write registers no intent"
    );
}

/// A writer excludes readers and writers, and readers exclude writers, also under contention: tasks
/// that read and write at random never see a reader beside a writer or two writers.
pub async fn rw_writer_excludes_everyone(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let lock = RwLock::new(backend.clone(), key.clone()).wait_timeout(Some(10 * SECOND));
    let writer = lock.write().await.expect("write");
    assert_eq!(
        members(probe, &key).await.len(),
        1,
        "the writer's entry is the only one"
    );
    assert!(lock.try_read().await.expect("try_read").is_none());
    assert!(lock.try_write().await.expect("try_write").is_none());
    assert!(writer.release().await.expect("release"));
    let reader = lock.read().await.expect("read");
    assert!(lock.try_write().await.expect("try_write").is_none());
    assert!(reader.release().await.expect("release"));

    let readers = Cell::new(0u32);
    let writers = Cell::new(0u32);
    let worker = async |seed: u64| {
        let mut rng = fastrand::Rng::with_seed(seed);
        for _ in 0..6 {
            if rng.bool() {
                let guard = lock.write().await.expect("write");
                writers.set(writers.get() + 1);
                assert_eq!(writers.get(), 1, "two writers at once");
                assert_eq!(readers.get(), 0, "a writer beside a reader");
                sleep(&backend, Duration::from_millis(rng.u64(5..30))).await;
                writers.set(writers.get() - 1);
                assert!(guard.release().await.expect("release"));
            } else {
                let guard = lock.read().await.expect("read");
                readers.set(readers.get() + 1);
                assert_eq!(writers.get(), 0, "a reader beside a writer");
                sleep(&backend, Duration::from_millis(rng.u64(5..30))).await;
                readers.set(readers.get() - 1);
                assert!(guard.release().await.expect("release"));
            }
            sleep(&backend, Duration::from_millis(rng.u64(0..10))).await;
        }
    };
    join_all((0..4).map(worker)).await;
    assert!(members(probe, &key).await.is_empty(), "no key left behind");
    assert!(members(probe, &writers_of(&key)).await.is_empty());
}

/// Once a writer waits, new readers wait behind it (`try_read` answers `None`, `read` waits); when the
/// readers already in leave, the writer gets in first, then the waiting reader.
pub async fn rw_waiting_writer_blocks_new_readers(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let lock = RwLock::new(backend.clone(), key.clone()).wait_timeout(Some(10 * SECOND));
    let first = lock.read().await.expect("read");
    let writer = Box::pin(lock.write());
    let writer = match select(writer, pause(&backend, Duration::from_millis(200))).await {
        Either::Left(_) => panic!("the writer cannot enter beside a reader"),
        Either::Right(((), writer)) => writer,
    };
    assert_eq!(
        members(probe, &writers_of(&key)).await.len(),
        1,
        "the waiting writer's intent"
    );
    assert!(
        lock.try_read().await.expect("try_read").is_none(),
        "a new reader must wait behind a waiting writer"
    );
    let order = std::cell::RefCell::new(Vec::new());
    let late_reader = async {
        let reader = lock
            .read()
            .await
            .expect("the reader gets in after the writer");
        order.borrow_mut().push("reader");
        reader
    };
    let writer = async {
        let writer = writer.await.expect("the writer gets in");
        order.borrow_mut().push("writer");
        assert!(lock.try_read().await.expect("try_read").is_none());
        sleep(&backend, Duration::from_millis(50)).await;
        assert!(writer.release().await.expect("release"));
    };
    let release_first = async {
        sleep(&backend, Duration::from_millis(100)).await;
        assert!(first.release().await.expect("release"));
    };
    let (reader, ((), ())) = join(late_reader, join(writer, release_first)).await;
    assert_eq!(*order.borrow(), ["writer", "reader"], "writer preference");
    assert!(reader.release().await.expect("release"));
    assert!(members(probe, &key).await.is_empty(), "no key left behind");
    assert!(members(probe, &writers_of(&key)).await.is_empty());
}

/// A writer gets in under a continuous stream of readers that each hold briefly and overlap: without
/// writer preference the key would never be empty.
pub async fn rw_writer_gets_in_under_a_stream_of_readers(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let lock = RwLock::new(backend.clone(), key.clone()).wait_timeout(Some(10 * SECOND));
    let stop = Cell::new(false);
    let writer_in = Cell::new(false);
    let reads = Cell::new(0u32);
    // Four readers, started 40 ms apart, each holding 150 ms with 20 ms pauses: the key always has one.
    let reader = async |n: u64| {
        sleep(&backend, Duration::from_millis(40 * n)).await;
        while !stop.get() {
            if let Some(guard) = lock.try_read().await.expect("try_read") {
                assert!(!writer_in.get(), "a reader beside the writer");
                reads.set(reads.get() + 1);
                sleep(&backend, Duration::from_millis(150)).await;
                assert!(guard.release().await.expect("release"));
            }
            sleep(&backend, Duration::from_millis(20)).await;
        }
    };
    let writer = async {
        sleep(&backend, Duration::from_millis(400)).await;
        let started = Instant::now();
        let guard = lock.write().await.expect("the writer is not starved");
        let waited = started.elapsed();
        writer_in.set(true);
        assert!(
            waited < 2 * SECOND,
            "the writer waited {waited:?} behind readers that hold 150 ms each"
        );
        sleep(&backend, Duration::from_millis(100)).await;
        writer_in.set(false);
        assert!(guard.release().await.expect("release"));
        sleep(&backend, Duration::from_millis(300)).await;
        stop.set(true);
    };
    join(join_all((0..4).map(reader)), writer).await;
    assert!(
        reads.get() >= 8,
        "the readers came and went: {}",
        reads.get()
    );
    assert!(
        empty_soon(&backend, probe, &key).await,
        "no key left behind"
    );
    assert!(members(probe, &writers_of(&key)).await.is_empty());
}

/// A waiting writer that gives up (`Timeout`, naming the key) stops blocking readers at once: its
/// intent is removed before `write` returns.
pub async fn rw_writer_that_gives_up_stops_blocking_readers(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let lock = RwLock::new(backend.clone(), key.clone()).timeout(60 * SECOND);
    let reader = lock.read().await.expect("read");
    let err = lock
        .clone()
        .wait_timeout(Some(Duration::from_millis(300)))
        .write()
        .await
        .expect_err("the reader holds");
    assert!(
        matches!(&err, LockError::Timeout { key: k, .. } if *k == key),
        "{err:?}"
    );
    assert!(
        members(probe, &writers_of(&key)).await.is_empty(),
        "the intent is removed"
    );
    let second = lock.try_read().await.expect("try_read");
    assert!(second.is_some(), "readers enter again at once");
    assert!(second.unwrap().release().await.expect("release"));
    assert!(reader.release().await.expect("release"));
    assert!(members(probe, &key).await.is_empty(), "no key left behind");
}

/// A waiting writer that dies (cancelled while its store is unreachable, so nothing can remove its
/// intent) stops blocking readers within its TTL.
pub async fn rw_dead_writer_stops_blocking_within_its_ttl(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let lock = RwLock::new(backend.clone(), key.clone()).timeout(60 * SECOND);
    let reader = lock.read().await.expect("read");
    let faulty = Arc::new(FaultyBackend::new(backend.clone()));
    let ttl = Duration::from_millis(500);
    let dying = RwLock::new(faulty.clone(), key.clone())
        .timeout(ttl)
        .wait_timeout(Some(10 * SECOND));
    let write = Box::pin(dying.write());
    match select(write, pause(&backend, Duration::from_millis(100))).await {
        Either::Left(_) => panic!("the writer cannot enter beside a reader"),
        Either::Right(((), write)) => {
            faulty.set_fault(Fault::Error);
            drop(write);
        }
    }
    let died = Instant::now();
    assert!(
        lock.try_read().await.expect("try_read").is_none(),
        "the dead writer's intent still keeps readers out"
    );
    let back = eventually(&backend, 3 * SECOND, async || {
        match lock.try_read().await.expect("try_read") {
            Some(guard) => guard.release().await.expect("release"),
            None => false,
        }
    })
    .await;
    assert!(back, "the dead writer's intent must lapse with its TTL");
    assert!(
        died.elapsed() < ttl + SECOND,
        "readers were kept out {:?} by a writer with a TTL of {ttl:?}",
        died.elapsed()
    );
    assert!(
        members(probe, &writers_of(&key)).await.is_empty(),
        "the lapsed intent is dropped"
    );
    assert!(reader.release().await.expect("release"));
}

/// `downgrade` turns the write hold into a read hold with the same token, fence and expiry, with no
/// writer in between (a waiting writer stays out until the read hold is released) and lets readers in
/// when no writer waits; a write hold that expired cannot be downgraded (`Lost`).
pub async fn rw_downgrade_keeps_the_hold_and_lets_readers_in(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let lock = RwLock::new(backend.clone(), key.clone())
        .fencing(true)
        .wait_timeout(Some(10 * SECOND));
    let writer = lock.write().await.expect("write");
    let (token, fence) = (writer.token().to_owned(), writer.fence());
    let before = members(probe, &key).await;
    let reader = writer.downgrade().await.expect("downgrade");
    assert_eq!(reader.token(), token);
    assert_eq!(reader.fence(), fence);
    let after = members(probe, &key).await;
    assert_eq!(
        after,
        [(format!("read:{token}"), before[0].1)],
        "the same expiry under the read entry"
    );
    assert!(reader.valid_for() > Duration::ZERO);
    assert!(reader.is_owner().await.expect("is_owner"));
    let other = lock.try_read().await.expect("try_read");
    assert!(other.is_some(), "readers join a downgraded hold");
    assert!(other.unwrap().release().await.expect("release"));
    assert!(reader.renew().await.expect("renew"));
    assert!(
        reader.release().await.expect("release"),
        "the read hold is ours"
    );
    assert!(members(probe, &key).await.is_empty());

    // A writer waiting through the downgrade stays out until the read hold is released.
    let writer = lock.write().await.expect("write");
    let next = Box::pin(lock.write());
    let next = match select(next, pause(&backend, Duration::from_millis(150))).await {
        Either::Left(_) => panic!("a second writer cannot enter"),
        Either::Right(((), next)) => next,
    };
    let reader = writer.downgrade().await.expect("downgrade");
    let next = match select(next, pause(&backend, Duration::from_millis(300))).await {
        Either::Left(_) => panic!("a writer got in beside the downgraded hold"),
        Either::Right(((), next)) => next,
    };
    assert!(
        lock.try_read().await.expect("try_read").is_none(),
        "the waiting writer keeps new readers out"
    );
    assert!(reader.release().await.expect("release"));
    let next = next.await.expect("the waiting writer gets in");
    assert!(next.fence() > fence, "a later write fence");
    assert!(next.release().await.expect("release"));

    // An expired write hold: nothing to downgrade.
    let short = RwLock::new(backend.clone(), key.clone()).timeout(Duration::from_millis(100));
    let writer = short.write().await.expect("write");
    sleep(&backend, Duration::from_millis(200)).await;
    let err = writer.downgrade().await.expect_err("expired");
    assert!(
        matches!(&err, LockError::Lost { key: k, .. } if *k == key),
        "{err:?}"
    );
    assert!(
        empty_soon(&backend, probe, &key).await,
        "no key left behind"
    );
    assert!(members(probe, &writers_of(&key)).await.is_empty());
}

/// Read and write holds expire on their own by their TTL; a live reader's renewals never keep a dead
/// reader's share alive, and an expired hold answers `false`, never touching another's.
pub async fn rw_holds_expire_on_their_own(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let ttl = Duration::from_millis(400);
    let lock = RwLock::new(backend.clone(), key.clone())
        .timeout(ttl)
        .wait_timeout(Some(5 * SECOND));
    // The dead reader: its store becomes unreachable, so neither renewal nor release reaches it.
    let faulty = Arc::new(FaultyBackend::new(backend.clone()));
    let dead = RwLock::new(faulty.clone(), key.clone())
        .timeout(ttl)
        .read()
        .await
        .expect("read");
    let dead_member = format!("read:{}", dead.token());
    let score_of = |held: &[(String, i64)], member: &str| {
        held.iter()
            .find(|(m, _)| m == member)
            .map(|(_, score)| *score)
    };
    let dead_expiry = score_of(&members(probe, &key).await, &dead_member);
    assert!(dead_expiry.is_some(), "the dead reader's entry");
    faulty.set_fault(Fault::Error);
    drop(dead);
    let live = lock.read().await.expect("read");
    let live_member = format!("read:{}", live.token());
    let live_expiry = score_of(&members(probe, &key).await, &live_member).expect("live entry");
    live.hold(sleep(&backend, 3 * ttl))
        .await
        .expect("the live reader keeps its hold");
    let held = members(probe, &key).await;
    assert!(
        score_of(&held, &live_member).expect("live entry") > live_expiry,
        "the live reader renewed its own entry: {held:?}"
    );
    // Expired entries stay in the set until a script drops them: what matters is that the dead one
    // was never moved later.
    assert!(
        score_of(&held, &dead_member).is_none_or(|score| Some(score) == dead_expiry),
        "the live reader's renewals moved the dead reader's expiry: {held:?}"
    );
    assert!(live.release().await.expect("release"));
    let writer = lock.try_write().await.expect("try_write");
    assert!(writer.is_some(), "the dead reader's share has expired");
    assert!(writer.unwrap().release().await.expect("release"));

    // A write hold expires on its own too, and then answers false.
    let writer = lock.write().await.expect("write");
    sleep(&backend, ttl + Duration::from_millis(100)).await;
    let reader = lock.try_read().await.expect("try_read");
    assert!(
        reader.is_some(),
        "the expired writer no longer keeps readers out"
    );
    assert!(
        !writer.renew().await.expect("renew"),
        "an expired hold is not renewed"
    );
    assert!(!writer.is_owner().await.expect("is_owner"));
    assert!(!writer.release().await.expect("release"));
    let reader = reader.unwrap();
    assert!(
        reader
            .is_owner()
            .await
            .expect("the reader's hold was not touched")
    );
    assert!(reader.release().await.expect("release"));
    assert!(members(probe, &key).await.is_empty(), "no key left behind");
}

/// Fences strictly increase across read and write holds of one key (a write fence exceeds every fence
/// issued before it, readers' included); renewals and downgrade keep the fence; without fencing there
/// is none. The counter is the only key left behind.
pub async fn rw_fences_strictly_increase(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let plain = RwLock::new(backend.clone(), format!("{key}:plain"));
    let guard = plain.read().await.expect("read");
    assert_eq!(guard.fence(), None);
    assert!(guard.release().await.expect("release"));

    let lock = RwLock::new(backend.clone(), key.clone()).fencing(true);
    let mut last = 0;
    for _ in 0..3 {
        let (a, b) = (
            lock.read().await.expect("read"),
            lock.read().await.expect("read"),
        );
        let (fa, fb) = (a.fence().expect("fence"), b.fence().expect("fence"));
        assert!(fa > last && fb > fa, "read fences {fa}, {fb} after {last}");
        assert!(a.renew().await.expect("renew"));
        assert_eq!(a.fence(), Some(fa));
        assert!(a.release().await.expect("release"));
        assert!(b.release().await.expect("release"));
        let writer = lock.write().await.expect("write");
        let fw = writer.fence().expect("fence");
        assert!(fw > fb, "write fence {fw} after {fb}");
        assert!(writer.extend(SECOND).await.expect("extend"));
        let reader = writer.downgrade().await.expect("downgrade");
        assert_eq!(reader.fence(), Some(fw));
        assert!(reader.release().await.expect("release"));
        last = fw;
    }
    assert!(members(probe, &key).await.is_empty(), "no key left behind");
    let counter = keys::fence_counter(&key).expect("counter key");
    assert!(
        probe.get(&counter).await.is_some(),
        "the fence counter stays"
    );
}

/// Read and write guards dropped without `release` are released in the background, long before
/// their TTL.
pub async fn rw_dropped_guards_are_released(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let lock = RwLock::new(backend.clone(), key.clone()).timeout(60 * SECOND);
    let (a, b) = (
        lock.read().await.expect("read"),
        lock.read().await.expect("read"),
    );
    drop(a);
    drop(b);
    assert!(
        empty_soon(&backend, probe, &key).await,
        "dropped read guards must be released in the background"
    );
    let writer = lock.write().await.expect("write");
    drop(writer);
    assert!(
        empty_soon(&backend, probe, &key).await,
        "a dropped write guard must be released in the background"
    );
    let writer = lock.write().await.expect("write");
    let reader = writer.downgrade().await.expect("downgrade");
    drop(reader);
    assert!(
        empty_soon(&backend, probe, &key).await,
        "a dropped downgraded guard must be released in the background"
    );
}

/// Dropping `read` or `write` while the request is in flight, after the server applied it, leaves
/// nothing held; dropping a waiting `write` removes its intent, so readers enter again.
pub async fn rw_cancelled_acquire_leaves_nothing(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    for (write, fencing) in [(false, false), (false, true), (true, false), (true, true)] {
        let slow = Arc::new(FaultyBackend::new(backend.clone()));
        slow.set_fault(Fault::DelayReply(10 * SECOND));
        let lock = RwLock::new(slow.clone(), key.clone())
            .timeout(60 * SECOND)
            .fencing(fencing);
        let acquire = match write {
            true => Either::Left(Box::pin(async { lock.write().await.map(drop) })),
            false => Either::Right(Box::pin(async { lock.read().await.map(drop) })),
        };
        // Polled until the server has applied the request (a cold pool connects first), then dropped.
        let mut acquire = acquire;
        let started = Instant::now();
        loop {
            match select(acquire, pause(&backend, Duration::from_millis(50))).await {
                Either::Left(_) => panic!("acquire cannot finish while the reply is held back"),
                Either::Right(((), pending)) => acquire = pending,
            }
            if members(probe, &key).await.len() == 1 {
                break;
            }
            assert!(
                started.elapsed() < 5 * SECOND,
                "the server never applied the request (write: {write})"
            );
        }
        drop(acquire);
        slow.set_fault(Fault::None);
        assert!(
            empty_soon(&backend, probe, &key).await,
            "a cancelled acquisition must not leave a hold (write: {write}, fencing: {fencing})"
        );
    }

    let lock = RwLock::new(backend.clone(), key.clone()).timeout(60 * SECOND);
    let reader = lock.read().await.expect("read");
    let waiting = Box::pin(lock.write());
    match select(waiting, pause(&backend, Duration::from_millis(200))).await {
        Either::Left(_) => panic!("the writer cannot enter beside a reader"),
        Either::Right(((), waiting)) => drop(waiting),
    }
    let writers = writers_of(&key);
    assert!(
        empty_soon(&backend, probe, &writers).await,
        "a cancelled writer's intent must be removed"
    );
    let other = lock.try_read().await.expect("try_read");
    assert!(other.is_some(), "readers enter again");
    assert!(other.unwrap().release().await.expect("release"));
    assert!(reader.release().await.expect("release"));
    assert!(members(probe, &key).await.is_empty(), "no key left behind");
}

/// Bad settings are `InvalidArgument` naming the setting, and nothing is sent.
pub async fn rw_invalid_arguments_send_nothing(
    backend: Arc<dyn LockBackend>,
    _probe: &dyn Probe,
    key: String,
) {
    fn argument(err: LockError) -> &'static str {
        match err {
            LockError::InvalidArgument { argument, .. } => argument,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }
    let counting = Arc::new(CountingBackend::new(backend));
    for (lock, named) in [
        (RwLock::new(counting.clone(), ""), "key"),
        (
            RwLock::new(counting.clone(), key.clone()).timeout(Duration::from_millis(2)),
            "timeout",
        ),
        (
            RwLock::new(counting.clone(), key.clone()).timeout(Duration::ZERO),
            "timeout",
        ),
    ] {
        assert_eq!(argument(lock.read().await.unwrap_err()), named);
        assert_eq!(argument(lock.write().await.unwrap_err()), named);
        assert_eq!(argument(lock.try_read().await.unwrap_err()), named);
        assert_eq!(argument(lock.try_write().await.unwrap_err()), named);
        let ran = Cell::new(false);
        let result = lock.run_read(async |_| ran.set(true)).await;
        assert_eq!(argument(result.unwrap_err()), named);
        let result = lock.run_write(async |_| ran.set(true)).await;
        assert_eq!(argument(result.unwrap_err()), named);
        assert!(!ran.get(), "no body runs");
    }
    assert_eq!(counting.script_calls(), 0, "nothing is sent");
    assert_eq!(counting.set_nx_calls(), 0, "nothing is sent");

    let guard = RwLock::new(counting.clone(), key.clone())
        .read()
        .await
        .expect("read");
    let sent = counting.script_calls();
    let err = guard.extend(Duration::MAX).await.unwrap_err();
    assert_eq!(argument(err), "extend");
    assert_eq!(counting.script_calls(), sent, "a bad extend sends nothing");
    assert!(guard.release().await.expect("release"));
}
