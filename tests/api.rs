//! The public API compiles as documented, and its futures and types are `Send` where the contract says so.

use std::time::Duration;

use redlease::memory::MemoryBackend;
use redlease::{
    Election, Leadership, LockError, LockGuard, Permit, ReadGuard, RedisLock, Redlock,
    RedlockGuard, RwLock, Semaphore, WriteGuard,
};

fn assert_send<T: Send>(value: T) -> T {
    value
}

#[test]
fn types_are_send_sync_debug() {
    fn check<T: Send + Sync + std::fmt::Debug + 'static>() {}
    check::<RedisLock>();
    check::<LockGuard>();
    check::<LockError>();
    check::<Election>();
    check::<Leadership>();
    check::<Redlock>();
    check::<RedlockGuard>();
    check::<Semaphore>();
    check::<Permit>();
    check::<RwLock>();
    check::<ReadGuard>();
    check::<WriteGuard>();
}

/// Every future of a read-write lock, and of a fair lock, runs inside `tokio::spawn`.
#[tokio::test]
async fn rwlock_and_fair_lock_futures_run_inside_spawn() {
    let backend = MemoryBackend::new();
    let rw = RwLock::new(backend.clone(), "api:rwlock")
        .timeout(Duration::from_secs(5))
        .wait_timeout(Some(Duration::from_secs(5)));
    let spawned = rw.clone();
    let held = tokio::spawn(async move {
        let reader = spawned.read().await?;
        assert!(spawned.try_read().await?.is_some());
        assert!(spawned.try_write().await?.is_none());
        assert!(reader.is_owner().await? && reader.renew().await?);
        assert!(reader.extend(Duration::from_secs(1)).await?);
        assert_eq!(reader.hold(async { 1 }).await?, 1);
        assert!(reader.release().await?);
        let writer = spawned.write().await?;
        let reader = writer.downgrade().await?;
        assert!(reader.release().await?);
        let read = spawned
            .run_read(async move |guard| guard.key().len())
            .await?;
        let written = spawned
            .run_write(async move |guard| guard.key().len())
            .await?;
        Ok::<_, LockError>(read + written)
    });
    assert_eq!(held.await.unwrap().unwrap(), 2 * "api:rwlock".len());
    let fair = RedisLock::new(backend, "api:fair").fair(true);
    let granted = tokio::spawn(async move {
        let guard = fair.acquire().await?;
        assert!(fair.try_acquire().await?.is_none());
        guard.release().await
    });
    assert!(granted.await.unwrap().unwrap());
}

/// Every future of a semaphore runs inside `tokio::spawn` (which needs `Send + 'static`, for every
/// lifetime of what it borrows inside).
#[tokio::test]
async fn semaphore_futures_run_inside_spawn() {
    let sem = Semaphore::new(MemoryBackend::new(), "api:semaphore", 3)
        .timeout(Duration::from_secs(5))
        .wait_timeout(Some(Duration::from_secs(5)));
    let spawned = sem.clone();
    let permits = tokio::spawn(async move {
        let one = spawned.acquire().await?;
        let two = spawned.acquire_many(2).await?;
        assert!(spawned.try_acquire().await?.is_none());
        assert!(spawned.try_acquire_many(1).await?.is_none());
        assert_eq!(spawned.available().await?, 0);
        assert!(one.is_owner().await? && one.renew().await?);
        assert!(one.extend(Duration::from_secs(1)).await?);
        let held = one.hold(async { 7 }).await?;
        assert!(one.release().await? && two.release().await?);
        let ran = spawned.run(async move |permit| permit.permits()).await?;
        Ok::<_, LockError>((held, ran))
    });
    assert_eq!(permits.await.unwrap().unwrap(), (7, 1));
}

#[tokio::test]
async fn election_and_redlock_futures_run_inside_spawn() {
    let backend = MemoryBackend::new();
    let election = Election::new(backend.clone(), "leader").id("me");
    let term = tokio::spawn(async move {
        let leadership = election.campaign().await?;
        let term = leadership.term();
        leadership.hold(async {}).await?;
        leadership.resign().await?;
        Ok::<_, LockError>(term)
    })
    .await
    .unwrap()
    .unwrap();
    assert!(term > 0);

    let nodes = vec![
        MemoryBackend::new(),
        MemoryBackend::new(),
        MemoryBackend::new(),
    ];
    let redlock = Redlock::new(nodes, "quorum");
    let released = tokio::spawn(async move {
        let guard = redlock.acquire().await?;
        guard.hold(async {}).await?;
        guard.release().await
    })
    .await
    .unwrap()
    .unwrap();
    assert!(released);
}

#[tokio::test]
async fn futures_are_send_and_run_inside_spawn() {
    let lock = RedisLock::new(MemoryBackend::new(), "foobar")
        .timeout(Duration::from_secs(30))
        .wait_timeout(Some(Duration::from_secs(30)));

    let spawned = {
        let lock = lock.clone();
        tokio::spawn(async move {
            let guard = lock.acquire().await?;
            let _: &str = guard.token();
            let _: &str = guard.key();
            assert!(guard.is_owner().await?);
            assert!(guard.extend(Duration::from_secs(1)).await?);
            assert!(guard.renew().await?);
            assert!(guard.release().await?);
            assert!(lock.try_acquire().await?.is_some());
            Ok::<_, LockError>(())
        })
    };
    spawned.await.unwrap().unwrap();

    let local = String::from("borrowed");
    let v = assert_send(lock.run(async |guard| {
        assert_eq!(guard.key(), "foobar");
        local.len()
    }))
    .await
    .unwrap();
    assert_eq!(v, 8);

    let lock2 = lock.clone();
    let v = tokio::spawn(async move { lock2.run(async |_guard| 42).await })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v, 42);
}
