//! Fencing: fences that strictly increase, `fenced_set`, and the companion keys of odd key names.

use std::sync::Arc;
use std::time::Duration;

use crate::backend::{LockBackend, ScriptValue};
use crate::testing::{CountingBackend, Fault, FaultyBackend, Probe, SECOND, sleep};
use crate::{LockError, RedisLock};

/// Fences strictly increase across acquisitions, also after the lock was released, expired or deleted;
/// renew and extend keep the fence; without fencing there is none.
pub async fn fences_strictly_increase(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let plain = RedisLock::new(backend.clone(), format!("{key}:plain"));
    let guard = plain.acquire().await.expect("acquire");
    assert_eq!(guard.fence(), None);
    guard.release().await.expect("release");

    let lock = RedisLock::new(backend, key.clone()).fencing(true);
    let counter = crate::keys::fence_counter(&key).expect("counter key");
    let mut last = 0;
    for round in 0..8 {
        if round == 6 {
            // The counter is lost (a server restarted without its data): fences still increase.
            probe.del(&counter).await;
        }
        let guard = lock.acquire().await.expect("acquire");
        let fence = guard.fence().expect("a fenced lock issues a fence");
        assert!(fence > last, "fence {fence} after {last}");
        last = fence;
        assert_eq!(
            probe.get(&key).await.as_deref(),
            Some(guard.token()),
            "the value is the token"
        );
        assert!(guard.renew().await.expect("renew"));
        assert!(guard.extend(SECOND).await.expect("extend"));
        assert_eq!(
            guard.fence(),
            Some(fence),
            "renew and extend keep the fence"
        );
        match round % 3 {
            0 => assert!(guard.release().await.expect("release")),
            1 => probe.del(&key).await,
            _ => {
                probe
                    .set(&key, guard.token(), Duration::from_millis(1))
                    .await;
                sleep(&lock.backend().clone(), Duration::from_millis(5)).await;
            }
        }
    }
}

/// A fenced acquisition re-sent with the same token is recognised as ours, with the same fence.
pub async fn fenced_acquire_recognises_own_write(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let counter = crate::keys::fence_counter(&key).expect("counter key");
    let acquire = |token: &'static str| {
        let (backend, key, counter) = (backend.clone(), key.clone(), counter.clone());
        async move {
            backend
                .eval_script(
                    &crate::script::FENCED_ACQUIRE,
                    &[&key, &counter],
                    &[token, "10000"],
                )
                .await
                .expect("fenced acquire")
        }
    };
    // The third element is the server's clock, which moves on between the two.
    let grant = |reply: ScriptValue| match reply {
        ScriptValue::Array(items) => items[..2].to_vec(),
        other => panic!("unexpected reply {other:?}"),
    };
    let first = grant(acquire("ours").await);
    let again = grant(acquire("ours").await);
    assert_eq!(
        first, again,
        "a re-sent acquisition returns the same grant and fence"
    );
    match acquire("theirs").await {
        ScriptValue::Array(items) => assert_eq!(items.first(), Some(&ScriptValue::Int(0))),
        other => panic!("unexpected reply {other:?}"),
    }
    assert_eq!(probe.get(&key).await.as_deref(), Some("ours"));
    probe.del(&key).await;
}

/// A `fenced_set` whose request failed in transit is [`LockError::InDoubt`] (it may have been applied,
/// or may land later), never "not written"; retrying with the same guard is accepted.
pub async fn fenced_set_failure_is_in_doubt(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let faulty = Arc::new(FaultyBackend::new(backend));
    let guard = RedisLock::new(faulty.clone(), key.clone())
        .fencing(true)
        .acquire()
        .await
        .expect("acquire");
    let resource = format!("{key}:resource");
    faulty.set_fault(Fault::Error);
    let result = guard.fenced_set(&resource, "v").await;
    faulty.set_fault(Fault::None);
    match result {
        Err(
            error @ LockError::InDoubt {
                operation: "fenced_set",
                source: Some(_),
                ..
            },
        ) => assert!(error.is_transient()),
        other => panic!("expected InDoubt, got {other:?}"),
    }
    assert!(guard.fenced_set(&resource, "v").await.expect("retry"));
    assert_eq!(probe.get(&resource).await.as_deref(), Some("v"));
    assert!(guard.release().await.expect("release"));
    probe.del(&resource).await;
}

/// `fenced_set` writes a plain string when our fence is the newest, refuses a stale holder's write, and
/// is `InvalidArgument` without fencing.
pub async fn fenced_set_rejects_stale_fences(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let resource = format!("{key}:resource");
    let lock = RedisLock::new(backend.clone(), key.clone()).fencing(true);
    let old = lock.acquire().await.expect("acquire");
    assert!(
        old.fenced_set(&resource, "from old")
            .await
            .expect("fenced_set")
    );
    assert_eq!(probe.get(&resource).await.as_deref(), Some("from old"));
    assert!(
        old.fenced_set(&resource, "old again")
            .await
            .expect("same fence may write again")
    );

    // The old holder pauses past its TTL; a new holder takes over and writes.
    probe.del(&key).await;
    let new = lock.acquire().await.expect("acquire");
    assert!(new.fence() > old.fence());
    assert!(
        new.fenced_set(&resource, "from new")
            .await
            .expect("fenced_set")
    );
    // The old holder wakes up and tries to write: refused.
    assert!(
        !old.fenced_set(&resource, "stale")
            .await
            .expect("fenced_set")
    );
    assert_eq!(probe.get(&resource).await.as_deref(), Some("from new"));
    new.release().await.expect("release");

    let counting = Arc::new(CountingBackend::new(backend));
    let plain = RedisLock::new(counting.clone(), format!("{key}:plain"))
        .acquire()
        .await
        .expect("acquire");
    let scripts = counting.script_calls();
    let err = plain
        .fenced_set(&resource, "x")
        .await
        .expect_err("no fence");
    assert!(
        matches!(
            err,
            LockError::InvalidArgument {
                argument: "fence",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(counting.script_calls(), scripts, "nothing is sent");
    assert_eq!(probe.get(&resource).await.as_deref(), Some("from new"));
    plain.release().await.expect("release");
    probe.del(&resource).await;
}

/// Fencing works for keys whose braces are not a hash tag (`a{}b`, `a{b`, `a}b`, `a{}{b}`: only the
/// first `{` counts), and for tagged ones: every companion key shares the key's cluster slot, fences
/// increase, and `fenced_set` on such resources works.
pub async fn fencing_works_for_keys_with_odd_braces(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let base = key.replace(['{', '}'], "");
    for odd in ["a{}b", "a{b", "a}b", "a{}{b}", "{x}a{}b"] {
        let odd = format!("{base}:{odd}");
        let lock = RedisLock::new(backend.clone(), odd.clone()).fencing(true);
        let first = lock.acquire().await.expect("fenced acquire");
        let fence = first.fence().expect("a fence");
        assert_eq!(probe.get(&odd).await.as_deref(), Some(first.token()));
        assert!(
            first
                .fenced_set(&odd_resource(&odd), "v1")
                .await
                .expect("fenced_set"),
            "{odd}"
        );
        assert!(first.renew().await.expect("renew"));
        // The first holder's lock expires; a second holder takes over.
        probe.del(&odd).await;
        let second = lock.acquire().await.expect("fenced acquire again");
        assert!(
            second.fence().expect("a fence") > fence,
            "{odd}: fences increase"
        );
        assert!(
            second
                .fenced_set(&odd_resource(&odd), "v2")
                .await
                .expect("fenced_set"),
            "{odd}"
        );
        assert!(
            !first
                .fenced_set(&odd_resource(&odd), "stale")
                .await
                .expect("fenced_set"),
            "{odd}: the older fence is refused"
        );
        assert_eq!(probe.get(&odd_resource(&odd)).await.as_deref(), Some("v2"));
        assert!(second.release().await.expect("release"));
        probe.del(&odd_resource(&odd)).await;
    }
}

/// A fenced resource with odd braces of its own, beside the lock `key`.
fn odd_resource(key: &str) -> String {
    format!("{key}:res}}{{")
}

/// The companion keys lock-core derives for `key`, in this order: its fence counter, its release-signal
/// list, and its fence mark when `key` is a fenced resource. For tests that look at them in a server or
/// check them against a server's own slot computation.
pub fn companion_keys(key: &str) -> [String; 3] {
    [
        crate::keys::fence_counter(key).expect("a fence counter for every key"),
        crate::keys::release_signal(key).expect("a release signal for every key"),
        crate::keys::fence_mark(key).expect("a fence mark for every key"),
    ]
}
