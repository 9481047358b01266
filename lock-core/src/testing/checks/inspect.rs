//! `inspect()` on every primitive: one read-only round trip that shows the holders (with their tokens,
//! remaining leases on the server's clock, permits), the last fence, the fair queue and the waiting
//! writers, and this process's waiting tasks; bad input is `InvalidArgument` with nothing sent.

use std::sync::Arc;
use std::time::Duration;

use futures::future::{Either, select};

use crate::backend::{LockBackend, ScriptValue};
use crate::testing::{CountingBackend, Probe, SECOND, eventually};
use crate::{Election, LockError, RedisLock, RwLock, Semaphore, keys, script};

/// Every call `counting` passed on.
fn sent(counting: &CountingBackend<Arc<dyn LockBackend>>) -> usize {
    counting.set_nx_calls() + counting.script_calls()
}

/// A remaining lease of a hold taken with a 10 s TTL a moment ago.
fn fresh(left: Option<Duration>) -> bool {
    left.is_some_and(|left| left > 8 * SECOND && left <= 10 * SECOND)
}

/// Runs `waiter` until `seen` holds (polled for up to 5 s while `waiter` waits), then drops it;
/// panics with `what` if `waiter` ends first or `seen` never holds.
async fn while_waiting<W, T>(
    backend: &Arc<dyn LockBackend>,
    waiter: W,
    what: &str,
    seen: impl AsyncFnMut() -> bool,
) where
    W: Future<Output = T>,
{
    let waiter = std::pin::pin!(waiter);
    let watch = std::pin::pin!(eventually(backend, 5 * SECOND, seen));
    match select(waiter, watch).await {
        Either::Left(_) => panic!("{what}: the waiter stopped waiting"),
        Either::Right((seen, _)) => assert!(seen, "{what}: never seen"),
    }
}

/// A lock: nothing on a free key; the holder's token, the TTL, the fence and the tasks waiting here
/// while held; the fence kept after the release; one script call each, and `InvalidArgument` for an
/// empty key with nothing sent; `WRONGTYPE` (permanent) on a key of another primitive.
pub async fn inspect_shows_the_lock_holder_ttl_and_fence(
    backend: Arc<dyn LockBackend>,
    _probe: &dyn Probe,
    key: String,
) {
    let counting = Arc::new(CountingBackend::new(backend.clone()));
    let lock = RedisLock::new(counting.clone(), key.clone())
        .timeout(10 * SECOND)
        .fencing(true);
    let before = sent(&counting);
    let free = lock.inspect().await.expect("inspect a free key");
    assert_eq!(sent(&counting), before + 1, "one round trip");
    assert_eq!(counting.set_nx_calls(), 0, "nothing written");
    assert_eq!(
        (free.holder, free.ttl, free.fence, free.waiting_here),
        (None, None, None, 0),
        "a key never used"
    );
    assert!(free.queue.is_empty());

    let guard = lock.acquire().await.expect("acquire");
    let held = lock.inspect().await.expect("inspect a held key");
    assert_eq!(held.holder.as_deref(), Some(guard.token()));
    assert!(fresh(held.ttl), "the server's PTTL: {:?}", held.ttl);
    assert_eq!(held.fence, guard.fence(), "the holder's fence");
    assert!(held.fence.is_some());
    assert_eq!(held.waiting_here, 0);

    let waiter = RedisLock::new(backend.clone(), key.clone()).wait_timeout(Some(10 * SECOND));
    let watcher = RedisLock::new(backend.clone(), key.clone());
    while_waiting(
        &backend,
        waiter.acquire(),
        "a task waiting for the lock",
        async || watcher.inspect().await.expect("inspect").waiting_here == 1,
    )
    .await;

    assert!(guard.release().await.expect("release"));
    let released = lock.inspect().await.expect("inspect a released key");
    assert_eq!((released.holder, released.ttl), (None, None));
    assert_eq!(released.fence, held.fence, "the fence counter stays");

    let empty = RedisLock::new(counting.clone(), "");
    let before = sent(&counting);
    match empty.inspect().await {
        Err(LockError::InvalidArgument { argument, .. }) => assert_eq!(argument, "key"),
        other => panic!("an empty key: {other:?}"),
    }
    assert_eq!(sent(&counting), before, "nothing sent for an empty key");

    let semaphore = Semaphore::new(backend.clone(), format!("{key}:semaphore"), 1);
    let permit = semaphore.acquire().await.expect("a permit");
    match RedisLock::new(backend.clone(), semaphore.key())
        .inspect()
        .await
    {
        Err(error @ LockError::Backend { .. }) => {
            assert!(!error.is_transient(), "WRONGTYPE is permanent: {error:?}")
        }
        other => panic!("a lock inspection of a semaphore's key: {other:?}"),
    }
    assert!(permit.release().await.expect("release"));
}

/// A fair lock's waiters, from any process, in the order they will be granted; gone once they leave.
pub async fn inspect_shows_the_fair_queue_in_order(
    backend: Arc<dyn LockBackend>,
    _probe: &dyn Probe,
    key: String,
) {
    let lock = RedisLock::new(backend.clone(), key.clone())
        .fair(true)
        .timeout(10 * SECOND);
    let guard = lock.acquire().await.expect("acquire");
    let queue = keys::fair_queue(&key).expect("queue key");
    let beats = keys::fair_beats(&key).expect("heartbeats key");
    let signal = keys::release_signal(&key).expect("signal key");
    // Two waiters of other processes join, in this order, through the acquire script itself.
    for waiter in ["waiter-1", "waiter-2"] {
        let reply = backend
            .eval_script(
                &script::FAIR_ACQUIRE,
                &[&key, &queue, &beats, &signal],
                &[waiter, "10000", "1", "0"],
            )
            .await
            .expect("join the queue");
        assert!(
            matches!(&reply, ScriptValue::Array(items) if items.first() == Some(&ScriptValue::Int(0))),
            "{waiter} waits: {reply:?}"
        );
    }
    let info = lock.inspect().await.expect("inspect");
    assert_eq!(info.holder.as_deref(), Some(guard.token()));
    assert_eq!(info.queue, ["waiter-1", "waiter-2"], "in arrival order");
    assert_eq!(
        RedisLock::new(backend.clone(), key.clone())
            .inspect()
            .await
            .expect("inspect as a plain lock")
            .queue,
        info.queue,
        "the same key, the same answer"
    );
    for waiter in ["waiter-1", "waiter-2"] {
        backend
            .eval_script(
                &script::FAIR_LEAVE,
                &[&key, &queue, &beats, &signal],
                &[waiter, "0"],
            )
            .await
            .expect("leave the queue");
    }
    assert!(lock.inspect().await.expect("inspect").queue.is_empty());
    assert!(guard.release().await.expect("release"));
}

/// A semaphore: each holder's token, permits and remaining lease, the stored limit, the permits held
/// and free, the last fence, and the tasks waiting here; `InvalidArgument` for an empty key.
pub async fn inspect_shows_semaphore_holders_and_permits(
    backend: Arc<dyn LockBackend>,
    _probe: &dyn Probe,
    key: String,
) {
    let sem = Semaphore::new(backend.clone(), key.clone(), 3)
        .timeout(10 * SECOND)
        .fencing(true);
    let empty = sem.inspect().await.expect("inspect a free semaphore");
    assert!(empty.holders.is_empty());
    assert_eq!(
        (empty.limit, empty.held, empty.available, empty.fence),
        (None, 0, 3, None)
    );

    let one = sem.acquire().await.expect("one permit");
    let two = sem.acquire_many(2).await.expect("two permits");
    let info = sem.inspect().await.expect("inspect");
    assert_eq!(info.holders.len(), 2, "{info:?}");
    for permit in [&one, &two] {
        let holder = info
            .holders
            .iter()
            .find(|h| h.token == permit.token())
            .unwrap_or_else(|| panic!("{} is a holder: {info:?}", permit.token()));
        assert_eq!(holder.permits, permit.permits());
        assert!(fresh(Some(holder.remaining)), "{holder:?}");
    }
    assert_eq!((info.limit, info.held, info.available), (Some(3), 3, 0));
    assert_eq!(info.fence, two.fence(), "the last fence issued");

    let waiter = Semaphore::new(backend.clone(), key.clone(), 3).wait_timeout(Some(10 * SECOND));
    while_waiting(
        &backend,
        waiter.acquire(),
        "a task waiting for a permit",
        async || sem.inspect().await.expect("inspect").waiting_here >= 1,
    )
    .await;

    assert!(one.release().await.expect("release"));
    let info = sem.inspect().await.expect("inspect");
    assert_eq!(info.holders.len(), 1);
    assert_eq!((info.held, info.available), (2, 1));
    assert!(two.release().await.expect("release"));
    let info = sem.inspect().await.expect("inspect");
    assert!(info.holders.is_empty());
    assert_eq!((info.limit, info.available), (None, 3), "the key is gone");

    match Semaphore::new(backend.clone(), "", 1).inspect().await {
        Err(LockError::InvalidArgument { argument, .. }) => assert_eq!(argument, "key"),
        other => panic!("an empty key: {other:?}"),
    }
}

/// A read-write lock: the readers, then a waiting writer (seen from here, and as a waiting writer),
/// then the writer, each with its token and remaining lease, and the last fence.
pub async fn inspect_shows_rwlock_readers_writer_and_waiting_writers(
    backend: Arc<dyn LockBackend>,
    _probe: &dyn Probe,
    key: String,
) {
    let rw = RwLock::new(backend.clone(), key.clone())
        .timeout(10 * SECOND)
        .fencing(true);
    let empty = rw.inspect().await.expect("inspect a free lock");
    assert!(empty.readers.is_empty() && empty.writer.is_none());
    assert!(empty.waiting_writers.is_empty());
    assert_eq!(empty.fence, None);

    let first = rw.read().await.expect("read");
    let second = rw.read().await.expect("read");
    let info = rw.inspect().await.expect("inspect");
    let mut readers: Vec<&str> = info.readers.iter().map(|r| r.token.as_str()).collect();
    readers.sort_unstable();
    let mut expected = [first.token(), second.token()];
    expected.sort_unstable();
    assert_eq!(readers, expected, "{info:?}");
    assert!(info.readers.iter().all(|r| fresh(Some(r.remaining))));
    assert!(info.writer.is_none());
    assert_eq!(info.fence, second.fence(), "the last fence issued");

    let writer = RwLock::new(backend.clone(), key.clone())
        .timeout(10 * SECOND)
        .wait_timeout(Some(10 * SECOND));
    while_waiting(
        &backend,
        writer.write(),
        "a writer waiting for the readers",
        async || {
            let info = rw.inspect().await.expect("inspect");
            info.waiting_writers.len() == 1 && info.waiting_here >= 1
        },
    )
    .await;
    // The cancelled writer's intent is removed in the background (or lapses within its TTL).
    assert!(
        eventually(&backend, 12 * SECOND, async || rw
            .inspect()
            .await
            .expect("inspect")
            .waiting_writers
            .is_empty())
        .await,
        "the cancelled writer stops waiting"
    );

    assert!(first.release().await.expect("release"));
    assert!(second.release().await.expect("release"));
    let write = rw.write().await.expect("write");
    let info = rw.inspect().await.expect("inspect");
    let held = info.writer.as_ref().expect("a writer holds");
    assert_eq!(held.token, write.token());
    assert!(fresh(Some(held.remaining)), "{held:?}");
    assert!(info.readers.is_empty());
    assert_eq!(info.fence, write.fence());
    assert!(write.release().await.expect("release"));

    match RwLock::new(backend.clone(), "").inspect().await {
        Err(LockError::InvalidArgument { argument, .. }) => assert_eq!(argument, "key"),
        other => panic!("an empty key: {other:?}"),
    }
}

/// An election: nobody before the first term; then the leader's id, its term's token and number
/// and what its lease has left; after a resignation, nobody, and the last term kept.
pub async fn inspect_names_the_leader_and_its_term(
    backend: Arc<dyn LockBackend>,
    _probe: &dyn Probe,
    key: String,
) {
    let election = Election::new(backend.clone(), key.clone())
        .id("node-a")
        .timeout(10 * SECOND);
    let before = election.inspect().await.expect("inspect");
    assert_eq!(
        (before.leader, before.token, before.term),
        (None, None, None)
    );
    let leadership = election.campaign().await.expect("campaign");
    let info = election.inspect().await.expect("inspect");
    assert_eq!(info.leader.as_deref(), Some("node-a"));
    assert_eq!(info.token.as_deref(), Some(leadership.token()));
    assert_eq!(info.term, Some(leadership.term()));
    assert!(fresh(info.ttl), "{:?}", info.ttl);
    let term = leadership.term();
    assert!(leadership.resign().await.expect("resign"));
    let after = election.inspect().await.expect("inspect");
    assert_eq!((after.leader, after.ttl), (None, None));
    assert_eq!(after.term, Some(term), "the last term is kept");
}
