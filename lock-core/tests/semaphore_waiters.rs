//! Many tasks of one process waiting for a semaphore take one blocking wait between them, not one
//! each (a pool of a few connections would otherwise be exhausted by waiters, and the holder's release
//! would queue behind them), and every one of them still gets its permit.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lock_core::memory::MemoryBackend;
use lock_core::{
    BackendError, Capabilities, LockBackend, Runtime, Script, ScriptValue, Semaphore, async_trait,
};

/// The memory store behind a backend that blocks in `wait_for_release` (for the whole timeout: it
/// sends no signals), counting how many waits are in progress at once.
#[derive(Debug, Default)]
struct BlockingWaits {
    store: MemoryBackend,
    waiting: AtomicUsize,
    most: AtomicUsize,
    waits: AtomicUsize,
}

#[async_trait]
impl LockBackend for BlockingWaits {
    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, BackendError> {
        self.store.set_nx(key, value, ttl).await
    }

    async fn eval_script(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<ScriptValue, BackendError> {
        self.store.eval_script(script, keys, args).await
    }

    async fn wait_for_release(
        &self,
        _signal: &str,
        timeout: Duration,
    ) -> Result<bool, BackendError> {
        let now = self.waiting.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        self.waits.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(timeout).await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        Ok(false)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_blocking_waits(true)
            .with_release_signals(true)
    }

    fn runtime(&self) -> Option<&Runtime> {
        self.store.runtime()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_waiters_share_one_blocking_wait_and_all_get_in() {
    let backend = Arc::new(BlockingWaits::default());
    let sem = Semaphore::new(backend.clone(), "waiters", 1)
        .timeout(Duration::from_secs(10))
        .wait_timeout(Some(Duration::from_secs(60)));
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let sem = sem.clone();
            tokio::spawn(async move {
                let permit = sem.acquire().await.expect("acquire");
                tokio::time::sleep(Duration::from_millis(5)).await;
                assert!(permit.release().await.expect("release"));
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("every waiter got its permit");
    }
    assert!(
        backend.waits.load(Ordering::SeqCst) > 0,
        "waiters did block on the release signal"
    );
    assert_eq!(
        backend.most.load(Ordering::SeqCst),
        1,
        "one blocking wait at a time for one key, however many tasks wait"
    );
}
