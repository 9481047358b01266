//! Fences of a single-server lock across lost writes, against a real `redis-server` through both
//! adapters: a counter rolled back by a raw command (a failover to a replica that missed the last
//! increments) or wiped by `FLUSHALL` (a restart that lost the data) never repeats a fence, fences are
//! stored and read back exactly, and `FENCED_SET` accepts an equal fence only from the holder that wrote
//! it. The same runs on the in-memory backend in `lock-core/tests/fencing_memory.rs`.

mod support;

use lock_core::testing::companion_keys;
use redlease::{RedisLock, ScriptValue, script};
use support::RedisServer;
use support::inputs::{Input, Options};

/// `GET key` behind the lock's back.
fn get(server: &RedisServer, key: &str) -> String {
    server.command(&["GET", key]).expect("GET")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_never_repeat_after_a_rolled_back_counter_or_a_flushall() {
    let server = tokio::task::block_in_place(RedisServer::start);
    for adapter in [Input::FredClient, Input::DeadpoolPool] {
        let backend = adapter.connect(&server.url(), Options::new()).await;
        let prefix = support::key_prefix();
        let key = format!("{prefix}lock");
        let resource = format!("{prefix}resource");
        let counter = companion_keys(&key)[0].clone();
        let lock = RedisLock::new(backend.clone(), key.clone()).fencing(true);

        let first = lock.acquire().await.expect("acquire");
        let f = first.fence().expect("fencing is on");
        // Microseconds since 1970, stored as plain digits and read back exactly.
        assert_eq!(get(&server, &counter), f.to_string(), "{adapter}");
        assert!(f > 1_600_000_000_000_000, "{adapter}: {f} is a clock in µs");

        // A failover to a replica that missed the last increment: the counter is back at F − 1, and
        // the lock is gone (the first holder, paused, still believes it holds it).
        server
            .command(&["SET", &counter, &(f - 1).to_string()])
            .expect("SET");
        server.command(&["DEL", &key]).expect("DEL");
        let second = lock.acquire().await.expect("acquire");
        let g = second.fence().unwrap();
        assert!(g > f, "{adapter}: fence {g} repeats or precedes {f}");
        assert!(second.fenced_set(&resource, "second").await.unwrap());
        assert!(
            !first.fenced_set(&resource, "first, late").await.unwrap(),
            "{adapter}: the deposed holder's write is refused"
        );
        assert!(
            second.fenced_set(&resource, "second, again").await.unwrap(),
            "{adapter}: a holder writes again with its own fence"
        );
        assert_eq!(get(&server, &resource), "second, again");

        // A restart that lost everything (persistence off): counter, lock, resource and mark. The
        // second holder, paused, still believes it holds the lock.
        server.command(&["FLUSHALL"]).expect("FLUSHALL");
        let third = lock.acquire().await.expect("acquire");
        let h = third.fence().unwrap();
        assert!(h > g, "{adapter}: fence {h} repeats or precedes {g}");
        assert!(third.fenced_set(&resource, "third").await.unwrap());
        assert!(!second.fenced_set(&resource, "second, late").await.unwrap());
        assert_eq!(get(&server, &resource), "third");

        // The mark holds the fence and the writer's token; an equal fence passes only with that token
        // (the real script, called directly, since a fence cannot repeat here).
        let mark = companion_keys(&resource)[2].clone();
        assert_eq!(get(&server, &mark), format!("{h}:{}", third.token()));
        let fenced_set = |value: &'static str, fence: u64, token: &'static str| {
            let (backend, resource, mark) = (backend.clone(), resource.clone(), mark.clone());
            async move {
                backend
                    .eval_script(
                        &script::FENCED_SET,
                        &[&resource, &mark],
                        &[value, &fence.to_string(), token],
                    )
                    .await
                    .expect("fenced set")
            }
        };
        assert_eq!(
            fenced_set("other", h, "another-holder").await,
            ScriptValue::Int(0),
            "{adapter}: an equal fence from another holder is refused"
        );
        assert_eq!(
            fenced_set("older", h - 1, "another-holder").await,
            ScriptValue::Int(0)
        );
        assert_eq!(get(&server, &resource), "third");
        assert_eq!(
            fenced_set("newer", h + 1, "another-holder").await,
            ScriptValue::Int(1)
        );
        assert_eq!(get(&server, &resource), "newer");
        assert_eq!(get(&server, &mark), format!("{}:another-holder", h + 1));
        // A mark an older version wrote (a bare fence) lets only a greater fence pass.
        server
            .command(&["SET", &mark, &(h + 5).to_string()])
            .expect("SET");
        assert_eq!(fenced_set("equal", h + 5, "x").await, ScriptValue::Int(0));
        assert_eq!(fenced_set("greater", h + 6, "x").await, ScriptValue::Int(1));
        assert!(third.release().await.unwrap());
        drop((first, second));
    }
}

/// Fences near the top of what a double holds exactly still round-trip through the script: the
/// counter is written with `%.0f`, never in exponent notation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_counters_are_incremented_exactly() {
    let server = tokio::task::block_in_place(RedisServer::start);
    let backend = Input::DeadpoolPool
        .connect(&server.url(), Options::new())
        .await;
    let key = format!("{}lock", support::key_prefix());
    let counter = companion_keys(&key)[0].clone();
    // 2^53 − 2: the next fence, 2^53 − 1, is the largest integer a double holds exactly.
    let top: u64 = (1 << 53) - 2;
    server
        .command(&["SET", &counter, &top.to_string()])
        .expect("SET");
    let lock = RedisLock::new(backend, key.clone()).fencing(true);
    let guard = lock.acquire().await.expect("acquire");
    assert_eq!(guard.fence(), Some(top + 1));
    assert_eq!(get(&server, &counter), (top + 1).to_string());
    assert!(guard.release().await.unwrap());
}
