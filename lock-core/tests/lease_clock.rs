//! lock-core reads time only through the backend's runtime (`Executor::now`): a clock that
//! jumps ahead, as `CLOCK_BOOTTIME` does across a suspend while `Instant` stands still, ends a guard's
//! validity at once, without a real second passing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use lock_core::memory::MemoryBackend;
use lock_core::testing::CountingBackend;
use lock_core::{
    BackendError, Executor, LockBackend, LockError, Moment, RedisLock, Redlock, Runtime, Script,
    ScriptValue,
};

/// The memory store, seen through a clock that the test moves forward by hand.
#[derive(Debug)]
struct Suspendable {
    store: MemoryBackend,
    skipped_ms: Arc<AtomicU64>,
    runtime: Runtime,
}

impl Default for Suspendable {
    fn default() -> Self {
        let store = MemoryBackend::new();
        let skipped_ms = Arc::new(AtomicU64::new(0));
        let executor = SkippingClock {
            skipped_ms: skipped_ms.clone(),
            store: store.runtime().expect("memory has a runtime").clone(),
        };
        Self {
            store,
            skipped_ms,
            runtime: Runtime::new(executor),
        }
    }
}

impl Suspendable {
    /// The machine sleeps for `by`: the lease clock (like `CLOCK_BOOTTIME`) counts it.
    fn suspend(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).expect("short enough");
        self.skipped_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

/// The store's runtime, with a clock that jumps ahead by what was suspended.
struct SkippingClock {
    skipped_ms: Arc<AtomicU64>,
    store: Runtime,
}

impl Executor for SkippingClock {
    fn now(&self) -> Moment {
        self.store.now() + Duration::from_millis(self.skipped_ms.load(Ordering::SeqCst))
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.store.sleep(duration)
    }

    fn spawn(&self, task: BoxFuture<'static, ()>) -> bool {
        self.store.spawn(task)
    }
}

#[async_trait]
impl LockBackend for Suspendable {
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

    fn runtime(&self) -> Option<&Runtime> {
        Some(&self.runtime)
    }
}

#[test]
fn validity_is_measured_on_the_backends_clock() {
    futures::executor::block_on(async {
        let clock = Arc::new(Suspendable::default());
        let counting = Arc::new(CountingBackend::new(clock.clone()));
        let guard = RedisLock::new(counting.clone(), "suspended")
            .timeout(Duration::from_secs(30))
            .acquire()
            .await
            .expect("acquire");
        assert!(guard.valid_for() > Duration::from_secs(29));
        clock.suspend(Duration::from_secs(31));
        assert_eq!(guard.valid_for(), Duration::ZERO, "the suspend counted");
        let calls = counting.script_calls();
        assert!(!guard.is_owner().await.expect("is_owner"));
        assert_eq!(counting.script_calls(), calls, "answered without asking");
        let held = guard.hold(futures::future::pending::<()>()).await;
        assert!(matches!(held, Err(LockError::Lost { .. })), "{held:?}");
    });
}

#[test]
fn max_hold_and_wait_deadlines_run_on_the_backends_clock() {
    futures::executor::block_on(async {
        let clock = Arc::new(Suspendable::default());
        let guard = RedisLock::new(clock.clone(), "bounded")
            .timeout(Duration::from_secs(30))
            .max_hold(Duration::from_secs(60))
            .acquire()
            .await
            .expect("acquire");
        clock.suspend(Duration::from_secs(61));
        let held = guard.hold(futures::future::pending::<()>()).await;
        match held {
            Err(LockError::Lost { reason, .. }) => assert!(
                reason.contains("max_hold") || reason.contains("validity"),
                "{reason}"
            ),
            other => panic!("expected Lost, got {other:?}"),
        }

        // Someone else holds the key (its TTL runs on the store's real clock): a waiter whose 10 s
        // deadline has passed by the backend's clock gives up at its next look.
        clock
            .store
            .set("bounded", "someone-else", Duration::from_secs(60));
        let waiter =
            RedisLock::new(clock.clone(), "bounded").wait_timeout(Some(Duration::from_secs(10)));
        let waiting = waiter.acquire();
        let suspend = async {
            futures_timer::Delay::new(Duration::from_millis(20)).await;
            clock.suspend(Duration::from_secs(11));
        };
        let (result, ()) = futures::join!(waiting, suspend);
        assert!(
            matches!(result, Err(LockError::Timeout { .. })),
            "{result:?}"
        );
    });
}

#[test]
fn a_ttl_that_leaves_no_validity_is_refused_by_redlock_too() {
    futures::executor::block_on(async {
        let nodes: Vec<Arc<dyn LockBackend>> = (0..3)
            .map(|_| Arc::new(MemoryBackend::new()) as Arc<dyn LockBackend>)
            .collect();
        let err = Redlock::new(nodes, "tiny")
            .timeout(Duration::from_millis(2))
            .acquire()
            .await
            .expect_err("2 ms leaves no validity");
        assert!(
            matches!(&err, LockError::InvalidArgument { argument: "timeout", reason } if reason.contains("at least 3ms")),
            "{err}"
        );
    });
}
