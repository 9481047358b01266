//! A request the caller was told failed can still be applied later (pitfall 36): a client timeout stops
//! the waiting, not the command, which may sit in a socket buffer or a client queue until the server
//! answers again. An acquisition that lands after its caller gave up must not leave the key held by
//! nobody for a whole TTL.

use std::thread;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use lock_core::memory::MemoryBackend;
use lock_core::{BackendError, LockBackend, LockError, RedisLock, Runtime, Script, ScriptValue};

/// A store whose `set_nx` times out for the caller at once, and is applied `LATE` afterwards.
#[derive(Debug, Clone)]
struct LandsLate {
    store: MemoryBackend,
}

const LATE: Duration = Duration::from_millis(300);

#[async_trait]
impl LockBackend for LandsLate {
    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, BackendError> {
        let (store, key, value) = (self.store.clone(), key.to_owned(), value.to_owned());
        thread::spawn(move || {
            thread::sleep(LATE);
            futures::executor::block_on(store.set_nx(&key, &value, ttl)).expect("applied late");
        });
        Err(BackendError::timed_out(
            "lands-late",
            Duration::from_millis(1),
        ))
    }

    async fn eval_script(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<ScriptValue, BackendError> {
        self.store.eval_script(script, keys, args).await
    }

    /// The store's: its clock, and its spawn for the background release.
    fn runtime(&self) -> Option<&Runtime> {
        self.store.runtime()
    }
}

#[test]
fn an_acquisition_that_lands_after_its_caller_gave_up_is_released() {
    let store = MemoryBackend::new();
    let lock = RedisLock::new(
        LandsLate {
            store: store.clone(),
        },
        "late",
    )
    .timeout(Duration::from_secs(30))
    .wait_timeout(Some(Duration::ZERO));
    let result = futures::executor::block_on(lock.acquire());
    assert!(
        matches!(&result, Err(LockError::Backend { .. })),
        "{result:?}"
    );
    // The background release ran at once and found nothing; the late write lands after it.
    thread::sleep(LATE + Duration::from_millis(50));
    let landed_or_released = store.get("late");
    let started = Instant::now();
    while store.get("late").is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the late acquisition still holds the key, 30 s TTL, no holder (landed: {landed_or_released:?})"
        );
        thread::sleep(Duration::from_millis(20));
    }
}
