#![cfg(feature = "deadpool")]
//! The deadpool-redis / redis-rs adapter against a real `redis-server`, over both a pool and a single
//! multiplexed connection: what is particular to redis-rs and deadpool (whose timeout fires, a cold
//! pool, reconnecting after a restart, the tokio hooks). The adapter contract every backend shares
//! (reply shapes, `NOSCRIPT`, error classes, a paused server) is checked by the conformance suite, in
//! `tests/conformance.rs`.

mod support;

use std::error::Error as _;
use std::time::{Duration, Instant};

use lock_core::script::{IS_OWNER, RELEASE};
use lock_core::{BackendError, LockBackend};
use redlease::deadpool::DeadpoolBackend;
use support::inputs::{Input, Options};
use support::{RedisServer, key_prefix};

/// Far above anything a healthy local call needs, far below "hung": the CI box has 2 noisy cores.
const BOUND: Duration = Duration::from_secs(3);

/// The inputs the deadpool adapter takes.
const KINDS: [Input; 2] = [Input::DeadpoolPool, Input::RedisConnection];

async fn backend(kind: Input, url: &str) -> DeadpoolBackend {
    kind.client(url, &Options::new())
        .await
        .deadpool()
        .unwrap_or_else(|| panic!("{kind} is not a redis-rs input"))
}

fn assert_transient_within(err: &BackendError, elapsed: Duration, what: &str) {
    assert!(elapsed < BOUND, "{what}: took {elapsed:?}");
    assert!(err.is_transient(), "{what}: {err:?}");
    assert_eq!(err.backend(), "deadpool", "{what}");
}

/// With a bound below redis-rs's own timeouts (500 ms response, 1 s connection), it is the adapter's
/// bound that ends a call to a frozen server, on a warm connection and on a pool that has none yet. The
/// conformance suite (`a_paused_server_gives_a_transient_timeout`) checks that any backend's calls to a
/// paused server fail transiently within its bound and recover; this checks whose bound fired, and
/// connecting to a frozen server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_server_hits_the_adapter_bound_first() {
    let server = RedisServer::start();
    let timeout = Duration::from_millis(300);
    for kind in KINDS {
        let backend = backend(kind, &server.url()).await.command_timeout(timeout);
        let key = format!("{}paused", key_prefix());
        // Warm up: a connection exists and works.
        assert!(
            backend
                .set_nx(&key, "a", Duration::from_secs(30))
                .await
                .unwrap()
        );

        server.pause();
        let started = Instant::now();
        let eval = backend.eval_script(&IS_OWNER, &[&key], &["a"]).await;
        let elapsed = started.elapsed();
        server.resume();

        let err = eval.expect_err("eval on a paused server");
        assert_transient_within(&err, elapsed, &format!("{kind:?} eval"));
        assert_eq!(
            err.source().unwrap().to_string(),
            "no reply within 300ms",
            "{kind:?}: the adapter's bound fired first"
        );
    }

    // A pool with no connection yet: connecting to a frozen server is bounded too.
    let pool = backend(Input::DeadpoolPool, &server.url())
        .await
        .command_timeout(timeout);
    server.pause();
    let started = Instant::now();
    let result = pool
        .set_nx(
            &format!("{}cold", key_prefix()),
            "v",
            Duration::from_secs(1),
        )
        .await;
    let elapsed = started.elapsed();
    server.resume();
    assert_transient_within(&result.expect_err("paused"), elapsed, "cold pool");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rs_response_timeout_is_transient() {
    // With the adapter's bound well above it, redis-rs's own 500 ms response timeout fires first.
    let server = RedisServer::start();
    for kind in KINDS {
        let backend = backend(kind, &server.url()).await;
        let key = format!("{}slow", key_prefix());
        assert!(
            backend
                .set_nx(&key, "a", Duration::from_secs(30))
                .await
                .unwrap()
        );

        server.pause();
        let started = Instant::now();
        let result = backend.eval_script(&IS_OWNER, &[&key], &["a"]).await;
        let elapsed = started.elapsed();
        server.resume();
        let err = result.expect_err("paused");
        assert!(err.is_transient(), "{kind:?}: {err:?}");
        // A pool first fails to recycle its idle connection (500 ms PING), then fails to set up a new one
        // (the 1 s connection timeout): 1.5 s.
        assert!(elapsed < Duration::from_secs(5), "{kind:?}: {elapsed:?}");
        assert_ne!(
            err.source().unwrap().to_string(),
            "no reply within 5s",
            "{kind:?}: redis-rs timed out first"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_fails_fast() {
    for kind in KINDS {
        let mut server = RedisServer::start();
        let backend = backend(kind, &server.url())
            .await
            .command_timeout(Duration::from_millis(300));
        let key = format!("{}killed", key_prefix());
        assert!(
            backend
                .set_nx(&key, "a", Duration::from_secs(30))
                .await
                .unwrap()
        );

        server.kill();
        let started = Instant::now();
        let err = backend
            .set_nx(&key, "a", Duration::from_secs(30))
            .await
            .expect_err("server is gone");
        assert_transient_within(&err, started.elapsed(), &format!("{kind:?} set_nx"));
        let started = Instant::now();
        let err = backend
            .eval_script(&RELEASE, &[&key], &["a"])
            .await
            .expect_err("server is gone");
        assert_transient_within(&err, started.elapsed(), &format!("{kind:?} eval"));

        server.restart();
        let after_restart = backend.set_nx(&key, "a", Duration::from_secs(30)).await;
        match kind {
            // The pool replaces the dead connection.
            Input::DeadpoolPool => assert!(
                after_restart.unwrap(),
                "pool reconnects to the restarted (empty) server"
            ),
            // A lone MultiplexedConnection never reconnects (documented in the crate docs).
            Input::RedisConnection => assert!(after_restart.unwrap_err().is_transient()),
            other => unreachable!("{other} is not in KINDS"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_hooks_use_tokio() {
    let server = RedisServer::start();
    for kind in KINDS {
        let backend = backend(kind, &server.url()).await;
        let runtime = backend.runtime().expect("deadpool has a runtime").clone();
        assert!(
            backend.clone().runtime().unwrap().same_as(&runtime),
            "{kind:?}: clones share it"
        );

        let (tx, rx) = tokio::sync::oneshot::channel();
        assert!(runtime.spawn(Box::pin(async move {
            tx.send(std::thread::current().name().map(str::to_owned))
                .unwrap();
        })));
        let thread = tokio::time::timeout(BOUND, rx).await.unwrap().unwrap();
        assert!(
            thread.is_some_and(|name| name.contains("tokio")),
            "{kind:?}"
        );

        // No runtime on a plain thread: the task is dropped, never run, and nothing blocks.
        let outside = runtime.clone();
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let spawned = std::thread::spawn(move || {
            outside.spawn(Box::pin(async move { tx.send(()).unwrap() }))
        })
        .join()
        .unwrap();
        assert!(!spawned, "{kind:?}");
        assert!(rx.try_recv().is_err(), "{kind:?}: the task was dropped");

        let started = Instant::now();
        runtime.sleep(Duration::from_millis(50)).await;
        assert!(started.elapsed() >= Duration::from_millis(50));

        assert!(format!("{backend:?}").starts_with("DeadpoolBackend {"));
    }
}
