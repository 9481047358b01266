//! The contract with a Redis server ([`Need::Server`](crate::testing::Need::Server)): script digests,
//! the `NOSCRIPT` fallback, reply shapes of any script, which server errors are permanent, and a
//! paused server. Each uses the [`Probe`]'s server methods or runs scripts of its own.

use std::error::Error as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::{BackendError, LockBackend, ScriptValue};
use crate::script::{self, IS_OWNER, RELEASE, Script};
use crate::testing::{CALL_BOUND, Probe, SECOND, sleep};
use crate::{LockError, RedisLock};

/// What a failed `expect` on a probe's server method says.
const NEEDS_SERVER: &str = "this check needs a probe onto a Redis server (Need::Server): \
    skip it in conformance_tests! if the store is not one";

/// On a loaded machine a call takes longer than its bound to be reported: the allowance on top.
const SLACK: Duration = Duration::from_secs(3);

/// The digest lock-core computes for each of its scripts, and for any other, is the one the server
/// computes (`SCRIPT LOAD`), so `EVALSHA` by lock-core's digest finds what the server cached.
pub async fn script_digests_match_the_server(
    _: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let adhoc = Script::new("adhoc", format!("return '{key}'"));
    for script in script::all().into_iter().chain([&adhoc]) {
        let loaded = probe
            .script_load(script.source())
            .await
            .expect(NEEDS_SERVER);
        assert_eq!(loaded, script.sha1(), "{}", script.name());
    }
}

/// `eval_script` goes by digest (`EVALSHA`) and falls back to `EVAL` once when the server answers
/// `NOSCRIPT`: a cached script costs one `EVALSHA`; after `SCRIPT FLUSH` the next call is one `EVALSHA`
/// and one `EVAL`, which caches the script again for every connection (the cache is the server's); a
/// script the server never saw works on its first call. Counted with `INFO commandstats`, so the check
/// needs a server of its own.
pub async fn noscript_falls_back_to_eval_once(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let calls = async || {
        let evalsha = probe.command_calls("evalsha").await.expect(NEEDS_SERVER);
        let eval = probe.command_calls("eval").await.expect(NEEDS_SERVER);
        (evalsha, eval)
    };
    let since = |before: (u64, u64), after: (u64, u64)| (after.0 - before.0, after.1 - before.1);
    let is_owner = async || {
        backend
            .eval_script(&IS_OWNER, &[&key], &["tok"])
            .await
            .expect("is_owner")
    };
    assert!(
        backend
            .set_nx(&key, "tok", 10 * SECOND)
            .await
            .expect("set_nx")
    );
    assert_eq!(is_owner().await, ScriptValue::Int(1), "is_owner");

    let before = calls().await;
    assert_eq!(is_owner().await, ScriptValue::Int(1));
    assert_eq!(
        since(before, calls().await),
        (1, 0),
        "(EVALSHA, EVAL) for a cached script"
    );

    probe.flush_scripts().await;
    let before = calls().await;
    assert_eq!(is_owner().await, ScriptValue::Int(1), "after SCRIPT FLUSH");
    assert_eq!(
        since(before, calls().await),
        (1, 1),
        "(EVALSHA, EVAL) after SCRIPT FLUSH: EVALSHA answered NOSCRIPT, then EVAL"
    );

    let before = calls().await;
    for _ in 0..3 {
        assert_eq!(is_owner().await, ScriptValue::Int(1));
    }
    assert_eq!(
        since(before, calls().await),
        (3, 0),
        "(EVALSHA, EVAL) once EVAL cached the script again"
    );

    let fresh = Script::new("fresh", format!("return '{key}'"));
    let before = calls().await;
    let reply = backend.eval_script(&fresh, &[], &[]).await.expect("fresh");
    assert_eq!(reply, ScriptValue::Str(key.clone()));
    assert_eq!(
        since(before, calls().await),
        (1, 1),
        "(EVALSHA, EVAL) for a script the server never saw"
    );
    probe.del(&key).await;
}

/// Script replies map to [`ScriptValue`] as lock-core reads them: integers, bulk and status strings,
/// nil for `nil` and `false`, 1 for `true`, arrays nested to any depth (empty ones included); keys and
/// arguments arrive in order and unchanged.
pub async fn script_replies_keep_their_shapes(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    use ScriptValue::{Array, Int, Nil, Str};
    let text = |s: &str| Str(s.to_owned());
    let cases = [
        ("return {1,'a',false}", Array(vec![Int(1), text("a"), Nil])),
        ("return nil", Nil),
        ("return false", Nil),
        ("return true", Int(1)),
        ("return 42", Int(42)),
        ("return -7", Int(-7)),
        ("return 'x y'", text("x y")),
        ("return ''", text("")),
        ("return redis.status_reply('PONG')", text("PONG")),
        ("return redis.call('set', KEYS[1], ARGV[1])", text("OK")),
        ("return redis.call('get', KEYS[1])", text("v1")),
        ("return {}", Array(vec![])),
        (
            "return {{1, {'deep'}}, {}, 'b'}",
            Array(vec![
                Array(vec![Int(1), Array(vec![text("deep")])]),
                Array(vec![]),
                text("b"),
            ]),
        ),
    ];
    for (source, expected) in cases {
        let script = Script::new("shape", source);
        let reply = backend
            .eval_script(&script, &[&key], &["v1", "two words"])
            .await
            .unwrap_or_else(|e| panic!("{source}: {e:?}"));
        assert_eq!(reply, expected, "{source}");
    }

    // Two keys of one slot, so that a cluster takes them too.
    let keys = [format!("{{{key}}}:a"), format!("{{{key}}}:b")];
    let order = Script::new(
        "order",
        "return {#KEYS, #ARGV, KEYS[1], KEYS[2], ARGV[1], ARGV[2]}",
    );
    let reply = backend
        .eval_script(&order, &[&keys[0], &keys[1]], &["1", "two words"])
        .await
        .expect("order");
    let expected = [Int(2), Int(2), text(&keys[0]), text(&keys[1])];
    let expected = Array(
        expected
            .into_iter()
            .chain([text("1"), text("two words")])
            .collect(),
    );
    assert_eq!(reply, expected, "keys and arguments in order");

    let count = Script::new("count", "return #KEYS + #ARGV");
    let reply = backend.eval_script(&count, &[], &[]).await.expect("count");
    assert_eq!(reply, Int(0), "no keys, no arguments");
    probe.del(&key).await;
}

/// A key of another type than a lock's string (`WRONGTYPE`) is a permanent error, for `set_nx` and
/// for the lock scripts: retrying cannot fix it, so `acquire` reports it at once instead of waiting
/// out its deadline.
pub async fn wrong_type_is_permanent(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    probe.push(&key, "x").await.expect(NEEDS_SERVER);
    let err = backend
        .set_nx(&key, "tok", 10 * SECOND)
        .await
        .expect_err("set_nx on a list");
    assert_permanent(&err, "WRONGTYPE", "set_nx");
    let err = backend
        .eval_script(&IS_OWNER, &[&key], &["tok"])
        .await
        .expect_err("is_owner on a list");
    assert_permanent(&err, "WRONGTYPE", "is_owner");

    let started = Instant::now();
    let err = RedisLock::new(backend, key.clone())
        .wait_timeout(Some(30 * SECOND))
        .acquire()
        .await
        .expect_err("acquire on a list");
    match &err {
        LockError::Backend { source, .. } => assert_permanent(source, "WRONGTYPE", "acquire"),
        other => panic!("acquire on a list: expected Backend, got {other:?}"),
    }
    let took = started.elapsed();
    assert!(
        took < SLACK,
        "acquire retried a permanent error for {took:?}"
    );
    probe.del(&key).await;
}

/// A script that fails on the server (a runtime error, an unknown command, an error reply, a value of
/// the wrong kind, source that does not compile) is a permanent error carrying the server's message;
/// an error a retry may fix (`LOADING`, even raised by a script) is transient; and the next call is
/// answered in step.
pub async fn script_errors_are_permanent_but_loading_is_transient(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    probe.set(&key, "not a number", 10 * SECOND).await;
    let failing = [
        ("return redis.call('incr', KEYS[1])", "not an integer"),
        ("error('boom')", "boom"),
        (
            "return redis.call('no-such-command')",
            "Unknown Redis command",
        ),
        (
            "return redis.error_reply('ERR custom failure')",
            "custom failure",
        ),
        ("this is not lua", "compiling"),
    ];
    for (source, says) in failing {
        let script = Script::new("failing", source);
        let err = backend
            .eval_script(&script, &[&key], &[])
            .await
            .expect_err(source);
        assert_permanent(&err, says, source);
    }

    let loading = Script::new("loading", "return redis.error_reply('LOADING try later')");
    let err = backend
        .eval_script(&loading, &[&key], &[])
        .await
        .expect_err("LOADING");
    assert!(err.is_transient(), "LOADING: {err:?}");

    let reply = backend
        .eval_script(&IS_OWNER, &[&key], &["not a number"])
        .await
        .expect("is_owner after the errors");
    assert_eq!(
        reply,
        ScriptValue::Int(1),
        "the next call is answered in step"
    );
    probe.del(&key).await;
}

/// A server that stops answering (a frozen process) makes `set_nx` and `eval_script` fail with a
/// transient error once the backend's bound on a call ([`CALL_BOUND`], which the setup applies) has
/// passed: not before, and not a hang. Once the server answers again, every reply answers its own
/// request (a late reply to a call that gave up is never taken for another's).
pub async fn a_paused_server_gives_a_transient_timeout(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    // Connected and warm; retried, because the bound is short and the machine may be busy.
    let set = retry_transient(&backend, async || {
        backend.set_nx(&key, "tok", 30 * SECOND).await
    });
    assert!(set.await, "the key is free");

    probe.pause().await.expect(NEEDS_SERVER);
    let started = Instant::now();
    let set = backend.set_nx(&key, "other", 30 * SECOND).await.map(drop);
    let set_took = started.elapsed();
    let started = Instant::now();
    let eval = backend
        .eval_script(&IS_OWNER, &[&key], &["tok"])
        .await
        .map(drop);
    let eval_took = started.elapsed();
    probe.resume().await.expect(NEEDS_SERVER);

    for (call, result, took) in [("set_nx", set, set_took), ("eval_script", eval, eval_took)] {
        let err = result.expect_err(call);
        assert!(err.is_transient(), "{call} on a paused server: {err:?}");
        assert!(
            took >= CALL_BOUND / 2,
            "{call} failed after {took:?}, before the bound {CALL_BOUND:?}"
        );
        assert!(
            took < CALL_BOUND + SLACK,
            "{call} failed only after {took:?}: is the bound {CALL_BOUND:?} applied?"
        );
    }

    let echo = Script::new("echo", "return ARGV[1]");
    for _ in 0..8 {
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let reply = retry_transient(&backend, async || {
            backend.eval_script(&echo, &[], &[&nonce]).await
        });
        assert_eq!(
            reply.await,
            ScriptValue::Str(nonce.clone()),
            "a reply to another request"
        );
    }
    // The refused SET may have run when the server resumed: it found our token and changed nothing.
    assert_eq!(probe.get(&key).await.as_deref(), Some("tok"));
    let release = retry_transient(&backend, async || {
        backend.eval_script(&RELEASE, &[&key], &["tok"]).await
    });
    assert_eq!(release.await, ScriptValue::Int(1));
}

/// Calls `call` until it answers, retrying transient failures for up to 10 s.
async fn retry_transient<T>(
    backend: &Arc<dyn LockBackend>,
    mut call: impl AsyncFnMut() -> Result<T, BackendError>,
) -> T {
    let deadline = Instant::now() + 10 * SECOND;
    loop {
        match call().await {
            Ok(value) => return value,
            Err(err) if err.is_transient() && Instant::now() < deadline => {
                sleep(backend, Duration::from_millis(50)).await;
            }
            Err(err) => panic!("no answer within 10 s: {err:?}"),
        }
    }
}

/// Asserts `err` is permanent, names its backend, and that its causes mention `says`.
#[track_caller]
fn assert_permanent(err: &BackendError, says: &str, call: &str) {
    assert!(
        !err.is_transient(),
        "{call}: expected permanent, got {err:?}"
    );
    assert!(!err.backend().is_empty(), "{call}: no backend name");
    let mut causes = String::new();
    let mut source = err.source();
    while let Some(cause) = source {
        causes.push_str(&format!("{cause}; "));
        source = cause.source();
    }
    assert!(
        causes.contains(says),
        "{call}: the causes {causes:?} should mention {says:?}"
    );
}
