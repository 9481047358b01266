//! The backend contract: what every [`LockBackend`] must do for the algorithm to be sound (`set_nx`
//! recognising its own write, durations to the millisecond, scripts surviving `SCRIPT FLUSH`, replica
//! acknowledgements, invalid arguments sending nothing).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::backend::LockBackend;
use crate::testing::{CountingBackend, Probe, SECOND};
use crate::{LockError, RedisLock};

/// `set_nx` reports success when the key already holds exactly our value (a client re-sent our own
/// write), and refusal when it holds another.
pub async fn set_nx_recognises_own_write(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    assert!(
        backend
            .set_nx(&key, "ours", 10 * SECOND)
            .await
            .expect("first set")
    );
    assert!(
        backend
            .set_nx(&key, "ours", 10 * SECOND)
            .await
            .expect("re-sent set"),
        "a re-sent SET NX of our own value must count as acquired"
    );
    assert!(
        !backend
            .set_nx(&key, "theirs", 10 * SECOND)
            .await
            .expect("other set")
    );
    assert_eq!(probe.get(&key).await.as_deref(), Some("ours"));
    probe.del(&key).await;
}

/// 1.5 s is 1500 ms, and a sub-millisecond remainder rounds up rather than down: what is sent, and what
/// the store then holds.
pub async fn durations_are_kept_to_the_millisecond(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let counting = Arc::new(CountingBackend::new(backend));
    let guard = RedisLock::new(counting.clone(), key.clone())
        .timeout(Duration::from_secs_f64(1.5))
        .acquire()
        .await
        .expect("acquire");
    assert_eq!(
        counting.last_set_nx_ttl(),
        Some(Duration::from_millis(1500))
    );
    let ttl = probe.pttl(&key).await.expect("ttl");
    assert!(
        ttl > SECOND && ttl <= Duration::from_millis(1500),
        "PTTL {ttl:?} for 1.5 s"
    );
    guard.release().await.expect("release");

    // 1500.5 ms must become 1501 ms, not 1500: a lock is never held for less than asked.
    let guard = RedisLock::new(counting.clone(), key.clone())
        .timeout(Duration::from_micros(1_500_500))
        .try_acquire()
        .await
        .expect("a sub-millisecond remainder is accepted")
        .expect("acquired");
    assert_eq!(
        counting.last_set_nx_ttl(),
        Some(Duration::from_millis(1501))
    );
    let ttl = probe.pttl(&key).await.expect("ttl");
    assert!(
        ttl > SECOND && ttl <= Duration::from_millis(1501),
        "PTTL {ttl:?} for 1500.5 ms"
    );
    assert!(guard.release().await.expect("release"));
}

/// Zero TTL, empty key, zero extend and a bad backoff are `InvalidArgument` naming the argument, and
/// nothing reaches the backend.
pub async fn invalid_arguments_send_nothing(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    fn argument(err: LockError) -> &'static str {
        match err {
            LockError::InvalidArgument { argument, .. } => argument,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }
    let counting = Arc::new(CountingBackend::new(backend));
    let lock = RedisLock::new(counting.clone(), key.clone());

    let zero_ttl = lock.clone().timeout(Duration::ZERO);
    assert_eq!(argument(zero_ttl.acquire().await.unwrap_err()), "timeout");
    assert_eq!(
        argument(zero_ttl.try_acquire().await.unwrap_err()),
        "timeout"
    );
    let ran = AtomicBool::new(false);
    let result = zero_ttl
        .run(async |_| ran.store(true, Ordering::SeqCst))
        .await;
    assert_eq!(argument(result.unwrap_err()), "timeout");
    assert!(!ran.load(Ordering::SeqCst));

    // A TTL that leaves no validity after the drift allowance (1% + 2 ms) cannot make a usable lock.
    for short in [Duration::from_millis(1), Duration::from_millis(2)] {
        let err = lock.clone().timeout(short).acquire().await.unwrap_err();
        assert!(
            matches!(&err, LockError::InvalidArgument { argument: "timeout", reason } if reason.contains("at least 3ms")),
            "{short:?}: {err}"
        );
    }

    let empty = RedisLock::new(counting.clone(), "");
    assert_eq!(argument(empty.acquire().await.unwrap_err()), "key");

    let bad_backoff = lock
        .clone()
        .backoff(crate::Backoff::new(Duration::ZERO, SECOND));
    assert_eq!(
        argument(bad_backoff.acquire().await.unwrap_err()),
        "backoff"
    );

    assert_eq!(counting.set_nx_calls(), 0, "nothing is sent for bad input");
    assert_eq!(probe.get(&key).await, None);

    let guard = lock.acquire().await.expect("acquire");
    let calls_before = (counting.set_nx_calls(), counting.script_calls());
    assert_eq!(
        argument(guard.extend(Duration::ZERO).await.unwrap_err()),
        "extend"
    );
    // Every write goes through `set_nx` or a script (replicated or not): none was made.
    assert_eq!(
        (counting.set_nx_calls(), counting.script_calls()),
        calls_before,
        "extend(0) sends nothing"
    );
    assert_eq!(
        probe.get(&key).await.as_deref(),
        Some(guard.token()),
        "the lock is untouched"
    );
    assert!(guard.release().await.expect("release"));
}

/// Scripts keep working after the server forgot them (restart, failover, `SCRIPT FLUSH`) in the middle of
/// a hold: `EVALSHA` falls back to `EVAL`.
pub async fn scripts_survive_a_script_flush(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let guard = RedisLock::new(backend, key.clone())
        .timeout(10 * SECOND)
        .acquire()
        .await
        .expect("acquire");
    assert!(guard.renew().await.expect("renew loads the script"));
    probe.flush_scripts().await;
    assert!(guard.renew().await.expect("renew after SCRIPT FLUSH"));
    probe.flush_scripts().await;
    assert!(
        guard
            .extend(SECOND)
            .await
            .expect("extend after SCRIPT FLUSH")
    );
    probe.flush_scripts().await;
    assert!(guard.is_owner().await.expect("is_owner after SCRIPT FLUSH"));
    probe.flush_scripts().await;
    assert!(guard.release().await.expect("release after SCRIPT FLUSH"));
    assert_eq!(probe.get(&key).await, None);
}

/// `replicas(n, timeout)`: asking for more replicas than the store has makes `acquire` and `try_acquire`
/// fail with `NotReplicated` (naming the key, how many were wanted and how many acknowledged) and leave
/// no lock behind, with and without fencing; a zero timeout is `InvalidArgument` with nothing sent;
/// `replicas(0, _)` is off.
pub async fn unacknowledged_writes_are_not_counted(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    /// More replicas than any test deployment has.
    const WANTED: usize = 10;
    let counting = Arc::new(CountingBackend::new(backend));
    let err = RedisLock::new(counting.clone(), key.clone())
        .replicas(1, Duration::ZERO)
        .acquire()
        .await
        .expect_err("zero replica timeout");
    assert!(
        matches!(
            err,
            LockError::InvalidArgument {
                argument: "replica_wait",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(counting.set_nx_calls() + counting.script_calls(), 0);

    for fencing in [false, true] {
        let lock = RedisLock::new(counting.clone(), key.clone())
            .fencing(fencing)
            .replicas(WANTED, Duration::from_millis(50));
        for attempt in ["acquire", "try_acquire"] {
            let acks_before = counting.replicated_acks().len();
            let result = match attempt {
                "acquire" => lock.acquire().await.map(|_| ()),
                _ => lock.try_acquire().await.map(|_| ()),
            };
            let acks = counting.replicated_acks().split_off(acks_before);
            match result {
                Err(LockError::NotReplicated {
                    key: k,
                    wanted,
                    acked,
                }) => {
                    assert_eq!(k, key);
                    assert_eq!(wanted, WANTED);
                    // Exactly what the store's one `WAIT` answered: not retried, not made up.
                    assert_eq!(
                        acks,
                        [acked],
                        "{attempt} (fencing: {fencing}): the replicated calls' answers"
                    );
                }
                other => {
                    panic!("{attempt}: expected NotReplicated (fencing: {fencing}), got {other:?}")
                }
            }
            assert_eq!(
                probe.get(&key).await,
                None,
                "an unacknowledged acquisition is released (fencing: {fencing})"
            );
        }
    }

    let calls = counting.set_nx_calls();
    let guard = RedisLock::new(counting.clone(), key.clone())
        .replicas(0, Duration::ZERO)
        .acquire()
        .await
        .expect("replicas(0, _) is off");
    assert_eq!(counting.set_nx_calls(), calls + 1, "a plain SET NX");
    assert!(guard.renew().await.expect("renew"));
    assert!(guard.release().await.expect("release"));
}
