//! The backend contract: what every [`LockBackend`] must do for the algorithm to be sound (`set_nx`
//! recognising its own write and storing exactly what it is given, the lock scripts' reply shapes,
//! durations to the millisecond, scripts surviving `SCRIPT FLUSH`, replica acknowledgements, invalid
//! arguments sending nothing). What only a Redis server can show (digests, `NOSCRIPT`, error
//! classes, a paused server) is in [`server`].

pub(in crate::testing) mod server;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::join_all;

use crate::backend::{LockBackend, ScriptValue};
use crate::script::{EXTEND, IS_OWNER, RELEASE, RENEW, Script};
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

/// `set_nx` stores the key and the value exactly as given (spaces, quotes, braces, backslashes,
/// non-ASCII, CR LF); a prefix of the held value, or a longer value starting with it, is another value;
/// and re-sending our own value answers success without writing the key again (its TTL stays).
pub async fn set_nx_stores_keys_and_values_exactly(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let key = format!("{key}:{{slot}} ü \"q\"");
    let value = "tök\u{e9}n α:{1} with \"quotes\", \\ and \r\n";
    assert!(
        backend
            .set_nx(&key, value, 10 * SECOND)
            .await
            .expect("set_nx"),
        "the first set_nx sets the key"
    );
    assert_eq!(
        probe.get(&key).await.as_deref(),
        Some(value),
        "stored exactly"
    );
    let ttl = probe.pttl(&key).await.expect("the key has a TTL");
    assert!(
        ttl > 5 * SECOND && ttl <= 10 * SECOND,
        "PTTL {ttl:?} for 10 s"
    );

    for other in ["tök".to_owned(), format!("{value}!")] {
        assert!(
            !backend
                .set_nx(&key, &other, 60 * SECOND)
                .await
                .expect("set_nx"),
            "{other:?} is not the held value"
        );
    }
    assert!(
        backend
            .set_nx(&key, value, 60 * SECOND)
            .await
            .expect("set_nx"),
        "our own value counts as set"
    );
    let after = probe.pttl(&key).await.expect("the key has a TTL");
    assert!(
        after <= ttl,
        "re-sending our value wrote the key again: PTTL {after:?} after {ttl:?}"
    );
    assert_eq!(probe.get(&key).await.as_deref(), Some(value));
    probe.del(&key).await;
}

/// 32 concurrent `set_nx` calls with different values on one free key: exactly one succeeds, and its
/// value is the one stored.
pub async fn concurrent_set_nx_has_one_winner(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    const CALLS: usize = 32;
    let calls = (0..CALLS).map(|i| {
        let (backend, key) = (&backend, &key);
        async move {
            let value = format!("tok-{i}");
            let set = backend
                .set_nx(key, &value, 10 * SECOND)
                .await
                .expect("set_nx");
            set.then_some(value)
        }
    });
    let winners: Vec<String> = join_all(calls).await.into_iter().flatten().collect();
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    assert_eq!(probe.get(&key).await, winners.into_iter().next());
    probe.del(&key).await;
}

/// The lock scripts answer in the shapes the lock reads: `RELEASE` 1, 0 or -1 (released, someone
/// else's, no key), `IS_OWNER` 1 or 0, `RENEW` and `EXTEND` `{pttl, pexpiretime}` after their write and
/// 0 when the token does not match; `RENEW` never shortens, `EXTEND` sets exactly the absolute expiry
/// it is given, and no script re-creates a missing key.
pub async fn lock_scripts_reply_in_their_shapes(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    use ScriptValue::Int;
    let run = async |script: &Script, args: &[&str]| {
        backend
            .eval_script(script, &[&key], args)
            .await
            .unwrap_or_else(|e| panic!("{} {args:?}: {e:?}", script.name()))
    };

    assert_eq!(run(&RELEASE, &["tok"]).await, Int(-1), "release, no key");
    assert_eq!(run(&IS_OWNER, &["tok"]).await, Int(0), "is_owner, no key");
    assert_eq!(run(&RENEW, &["tok", "1000"]).await, Int(0), "renew, no key");
    assert_eq!(
        run(&EXTEND, &["tok", "1000"]).await,
        Int(0),
        "extend, no key"
    );
    assert_eq!(probe.get(&key).await, None, "no script re-creates the key");

    assert!(
        backend
            .set_nx(&key, "tok", 10 * SECOND)
            .await
            .expect("set_nx")
    );
    assert_eq!(run(&IS_OWNER, &["tok"]).await, Int(1), "is_owner, ours");
    assert_eq!(
        run(&IS_OWNER, &["other"]).await,
        Int(0),
        "is_owner, not ours"
    );
    assert_eq!(
        run(&RENEW, &["other", "20000"]).await,
        Int(0),
        "renew, not ours"
    );

    let (left, expiry) = pttl_and_expiry(&run(&RENEW, &["tok", "20000"]).await, "renew");
    assert!(
        (15_000..=20_000).contains(&left),
        "renew to 20 s: {left} ms left"
    );
    let ttl = probe.pttl(&key).await.expect("the key has a TTL");
    assert!(ttl > 15 * SECOND && ttl <= 20 * SECOND, "PTTL {ttl:?}");
    // Expiries are compared to within 1 ms: a store may derive `pexpiretime` from the TTL it keeps.
    let (left, unchanged) = pttl_and_expiry(&run(&RENEW, &["tok", "3000"]).await, "renew");
    assert!(
        unchanged.abs_diff(expiry) <= 1,
        "a shorter renew moved the expiry from {expiry} to {unchanged}"
    );
    assert!(left > 15_000, "a shorter renew shortened: {left} ms left");

    let later = (expiry + 10_000).to_string();
    assert_eq!(
        run(&EXTEND, &["other", &later]).await,
        Int(0),
        "extend, not ours"
    );
    let (left, moved) = pttl_and_expiry(&run(&EXTEND, &["tok", &later]).await, "extend");
    assert!(
        moved.abs_diff(expiry + 10_000) <= 1,
        "extend to {later} set the expiry to {moved}"
    );
    assert!(
        (25_000..=30_000).contains(&left),
        "extend by 10 s: {left} ms left"
    );
    let ttl = probe.pttl(&key).await.expect("the key has a TTL");
    assert!(ttl > 25 * SECOND && ttl <= 30 * SECOND, "PTTL {ttl:?}");

    assert_eq!(run(&RELEASE, &["other"]).await, Int(0), "release, not ours");
    assert_eq!(probe.get(&key).await.as_deref(), Some("tok"));
    assert_eq!(run(&RELEASE, &["tok"]).await, Int(1), "release, ours");
    assert_eq!(probe.get(&key).await, None, "release deletes the key");
}

/// The `{pttl, pexpiretime}` reply of `RENEW` and `EXTEND`.
#[track_caller]
fn pttl_and_expiry(reply: &ScriptValue, script: &str) -> (i64, i64) {
    match reply {
        ScriptValue::Array(items) => match items.as_slice() {
            [ScriptValue::Int(left), ScriptValue::Int(expiry)] => (*left, *expiry),
            _ => panic!("{script}: expected {{pttl, pexpiretime}}, got {reply:?}"),
        },
        _ => panic!("{script}: expected {{pttl, pexpiretime}}, got {reply:?}"),
    }
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
