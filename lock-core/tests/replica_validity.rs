//! With `replicas(n)`, a guard's validity never rests on a write the replicas did not acknowledge: after
//! a failover to an acknowledging replica, no second holder can enter while the first still believes.
//!
//! Found while building the simulation (issue 9): a renewal that too few replicas acknowledged
//! (`NotReplicated`) still moves the key's expiry on the primary; a first `extend` then read that expiry
//! (the `EXPIRY` script, which `WAIT` does not cover) and counted it as validity. A failover to the
//! replica, which only had the acquisition, freed the key while the guard still claimed it for as long
//! as the unacknowledged renewal had added.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::executor::block_on;
use futures::future::BoxFuture;
use lock_core::memory::{MemoryBackend, MemorySnapshot, ServerClock};
use lock_core::script::Script;
use lock_core::{
    BackendError, Capabilities, Executor, LockBackend, Moment, RedisLock, Runtime, ScriptValue,
    async_trait,
};

/// A clock moved by hand, shared by the server and the client (no drift: the test is about replicas).
#[derive(Debug, Default)]
struct ManualClock(Mutex<Duration>);

impl ManualClock {
    fn advance(&self, by: Duration) {
        *self.0.lock().unwrap() += by;
    }
}

impl ServerClock for ManualClock {
    fn now(&self) -> Moment {
        Moment::from_origin(*self.0.lock().unwrap())
    }

    fn wall(&self) -> Duration {
        Duration::from_secs(1_700_000_000) + *self.0.lock().unwrap()
    }
}

/// The client's runtime: the hand-moved clock, and sleeps that end at once (the test moves time).
struct OnManualClock(Arc<ManualClock>);

impl Executor for OnManualClock {
    fn now(&self) -> Moment {
        self.0.now()
    }

    fn sleep(&self, _: Duration) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }

    fn spawn(&self, task: BoxFuture<'static, ()>) -> bool {
        drop(task);
        false
    }
}

/// A primary with one replica that `WAIT` reaches while the link is up (it then has every write so
/// far), and that a failover promotes.
#[derive(Debug)]
struct Replicated {
    primary: MemoryBackend,
    runtime: Runtime,
    replica: Mutex<MemorySnapshot>,
    link: AtomicBool,
}

impl Replicated {
    fn fail_over(&self) {
        let replica = self.replica.lock().unwrap().clone();
        self.primary.restore(&replica);
    }
}

#[async_trait]
impl LockBackend for Replicated {
    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, BackendError> {
        self.primary.set_nx(key, value, ttl).await
    }

    async fn eval_script(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<ScriptValue, BackendError> {
        self.primary.eval_script(script, keys, args).await
    }

    async fn eval_script_replicated(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
        _replicas: usize,
        _timeout: Duration,
    ) -> Result<(ScriptValue, usize), BackendError> {
        let reply = self.primary.eval_script(script, keys, args).await?;
        if !self.link.load(Ordering::SeqCst) {
            return Ok((reply, 0));
        }
        *self.replica.lock().unwrap() = self.primary.snapshot();
        Ok((reply, 1))
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new().with_replica_acks(true)
    }

    fn runtime(&self) -> Option<&Runtime> {
        Some(&self.runtime)
    }
}

#[test]
fn validity_rests_only_on_acknowledged_writes() {
    let clock = Arc::new(ManualClock::default());
    let store = Arc::new(Replicated {
        primary: MemoryBackend::with_clock(clock.clone()),
        runtime: Runtime::new(OnManualClock(clock.clone())),
        replica: Mutex::default(),
        link: AtomicBool::new(true),
    });
    let ttl = Duration::from_secs(1);
    let lock = RedisLock::new(store.clone(), "jobs:replicated")
        .timeout(ttl)
        .replicas(1, Duration::from_millis(10));
    block_on(async {
        let guard = lock.acquire().await.expect("acknowledged");
        clock.advance(Duration::from_millis(300));

        // Replication breaks: the renewal reaches the primary only, and says so.
        store.link.store(false, Ordering::SeqCst);
        assert!(matches!(
            guard.renew().await,
            Err(lock_core::LockError::NotReplicated { acked: 0, .. })
        ));
        let before = guard.valid_for();
        assert!(guard.extend(Duration::from_millis(500)).await.is_err());
        assert!(
            guard.valid_for() <= before,
            "an unacknowledged expiry must not extend validity: {before:?} -> {:?}",
            guard.valid_for()
        );

        // The replica, which has the acquisition only, is promoted; the key expires at 1 s.
        store.fail_over();
        store.link.store(true, Ordering::SeqCst);
        clock.advance(Duration::from_millis(750));
        assert_eq!(store.primary.get("jobs:replicated"), None);
        let other = lock.try_acquire().await.unwrap();
        assert!(other.is_some(), "the key is free after the failover");
        assert!(
            guard.valid_for().is_zero(),
            "two holders: the first still claims {:?}",
            guard.valid_for()
        );
    });
}
