#![cfg(feature = "fred")]
//! The fred adapter against a real `redis-server`, for both a `Client` and a `Pool`: what is particular
//! to fred (a killed server with and without a reconnect policy, the tokio hooks, sharing, release
//! signals). The adapter contract every backend shares (reply shapes, `NOSCRIPT`, error classes, a
//! paused server) is checked by the conformance suite, in `tests/conformance.rs`.

mod support;

use std::error::Error as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::ClientLike;
use lock_core::script::{IS_OWNER, RELEASE};
use lock_core::{BackendError, LockBackend, ScriptValue};
use redlease::fred::{FredBackend, fred};
use support::inputs::{Input, Options};
use support::{RedisServer, key_prefix};

/// Generous slack on top of a call's bound, for a loaded machine.
const SLACK_BOUND: Duration = Duration::from_secs(3);

/// The fred adapter over a new client of `input` (a fred one), connected to `url`.
async fn fred_backend(input: Input, url: &str, options: Options) -> FredBackend {
    input
        .client(url, &options)
        .await
        .fred()
        .unwrap_or_else(|| panic!("{input} is not a fred input"))
}

/// A backend over a `Client` and one over a `Pool` of 2, both connected to `server`.
async fn backends(server: &RedisServer) -> Vec<(&'static str, FredBackend)> {
    let url = server.url();
    let mut backends = Vec::new();
    for input in [Input::FredClient, Input::FredPool] {
        backends.push((
            input.name(),
            fred_backend(input, &url, Options::new()).await,
        ));
    }
    backends
}

fn get(server: &RedisServer, key: &str) -> String {
    server.command(&["GET", key]).expect("GET")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_gives_an_error_not_a_hang() {
    let mut server = RedisServer::start();
    let url = server.url();
    let bound = Duration::from_millis(500);

    // Without a reconnect policy fred fails the calls itself; with one that retries forever, commands
    // wait for a connection and only our bound ends them.
    let plain_client = fred_backend(Input::FredClient, &url, Options::new())
        .await
        .command_timeout(bound);
    let plain_pool = fred_backend(Input::FredPool, &url, Options::new())
        .await
        .command_timeout(bound);
    let retrying = Options::new().fred_reconnect(Duration::from_millis(100));
    let retrying = fred_backend(Input::FredClient, &url, retrying)
        .await
        .command_timeout(bound);

    let key = format!("{}lock", key_prefix());
    let all = [
        ("client", &plain_client),
        ("pool", &plain_pool),
        ("retrying client", &retrying),
    ];
    for (_, backend) in all {
        backend
            .eval_script(&IS_OWNER, &[&key], &["tok"])
            .await
            .unwrap();
    }

    server.kill();
    for (kind, backend) in all {
        for attempt in 0..3 {
            let started = Instant::now();
            let err = backend
                .set_nx(&key, "tok", Duration::from_secs(10))
                .await
                .unwrap_err();
            let took = started.elapsed();
            assert!(
                took < SLACK_BOUND,
                "{kind} #{attempt}: set_nx took {took:?}"
            );
            assert_eq!(err.backend(), "fred");
            // An outage passes on its own (a restart, a reconnect): never a permanent failure.
            assert!(
                err.is_transient(),
                "{kind} #{attempt}: set_nx after kill: {err:?} ({took:?})"
            );

            let started = Instant::now();
            let err = backend
                .eval_script(&RELEASE, &[&key], &["tok"])
                .await
                .unwrap_err();
            let took = started.elapsed();
            assert!(took < SLACK_BOUND, "{kind} #{attempt}: eval took {took:?}");
            assert_eq!(err.backend(), "fred");
            assert!(
                err.is_transient(),
                "{kind} #{attempt}: eval after kill: {err:?} ({took:?})"
            );
        }
    }
    // The retrying client never gives up: its failures are timeouts, which are transient.
    let err = retrying
        .set_nx(&key, "tok", Duration::from_secs(10))
        .await
        .unwrap_err();
    assert_timed_out(&err, bound);

    // And it is back once the server is.
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match retrying.set_nx(&key, "tok", Duration::from_secs(10)).await {
            Ok(set) => {
                assert!(set);
                break;
            }
            Err(err) if err.is_transient() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("no recovery after restart: {err:?}"),
        }
    }
    assert_eq!(get(&server, &key), "tok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_spawns_and_sleeps_on_tokio() {
    let server = RedisServer::start();
    for (kind, backend) in backends(&server).await {
        let runtime = backend.runtime().expect("fred has a runtime").clone();
        assert!(
            backend.clone().runtime().unwrap().same_as(&runtime),
            "{kind}: clones share it"
        );
        let (tx, rx) = tokio::sync::oneshot::channel();
        assert!(
            runtime.spawn(Box::pin(async move {
                tx.send(()).unwrap();
            })),
            "{kind}"
        );
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .expect("the detached task ran")
            .unwrap();

        // A detached release really runs against the server.
        let key = format!("{}{kind}:lock", key_prefix());
        assert!(
            backend
                .set_nx(&key, "tok", Duration::from_secs(10))
                .await
                .unwrap()
        );
        let (tx, rx) = tokio::sync::oneshot::channel();
        let releaser = Arc::new(backend.clone());
        let release_key = key.clone();
        assert!(runtime.spawn(Box::pin(async move {
            let reply = releaser
                .eval_script(&RELEASE, &[&release_key], &["tok"])
                .await;
            tx.send(reply).unwrap();
        })));
        let reply = tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply.unwrap(), ScriptValue::Int(1), "{kind}");
        assert_eq!(get(&server, &key), "(nil)", "{kind}");

        // Outside a runtime there is nowhere to spawn: the task is dropped, nothing blocks.
        let outside = runtime.clone();
        let spawned = std::thread::spawn(move || outside.spawn(Box::pin(async {})))
            .join()
            .unwrap();
        assert!(!spawned, "{kind}");

        let started = Instant::now();
        runtime.sleep(Duration::from_millis(50)).await;
        assert!(started.elapsed() >= Duration::from_millis(50), "{kind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_is_cheap_to_share_and_debuggable() {
    let server = RedisServer::start();
    let url = server.url();

    let from_client = fred_backend(Input::FredClient, &url, Options::new()).await;
    assert!(from_client.pool().is_none());
    assert!(from_client.client().is_connected());

    let from_pool = fred_backend(Input::FredPool, &url, Options::new()).await;
    assert_eq!(from_pool.pool().map(fred::clients::Pool::size), Some(2));
    assert!(from_pool.client().is_connected());

    for backend in [from_client, from_pool] {
        let debug = format!("{backend:?}");
        assert!(debug.starts_with("FredBackend"), "{debug}");
        assert!(debug.contains("5s"), "{debug}");

        // Usable as a trait object, and clones share the connection.
        let shared: Arc<dyn LockBackend> = Arc::new(backend.clone());
        let key = format!("{}lock", key_prefix());
        assert!(
            shared
                .set_nx(&key, "tok", Duration::from_secs(10))
                .await
                .unwrap()
        );
        assert!(
            !backend
                .set_nx(&key, "other", Duration::from_secs(10))
                .await
                .unwrap()
        );
    }
}

#[track_caller]
fn assert_timed_out(err: &BackendError, bound: Duration) {
    assert!(err.is_transient(), "expected transient: {err:?}");
    assert_eq!(err.backend(), "fred");
    let cause = err.source().unwrap().to_string();
    assert_eq!(cause, format!("no reply within {bound:?}"), "{err:?}");
}

/// A release-signal wait that nothing wakes answers "not woken" (`Ok(false)`) once its block is over,
/// not an error: fred's `blpop` turns `BLPOP`'s nil reply into a `Timeout` error, and a failed signal
/// wait ends the acquisition with its error (issue 8, hole 19), so every wait for a held key would
/// fail at its first wait. A push wakes it (`Ok(true)`) and is consumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_wait_that_nothing_wakes_is_not_an_error() {
    let server = RedisServer::start();
    let block = Duration::from_millis(200);
    for (kind, backend) in backends(&server).await {
        let signal = format!("{}{kind}:signal", key_prefix());
        assert!(
            backend.capabilities().blocking_waits,
            "{kind}: fred blocks on release signals"
        );
        for round in 0..2 {
            let started = Instant::now();
            let woken = backend.wait_for_release(&signal, block).await;
            let took = started.elapsed();
            assert!(
                !woken.unwrap_or_else(|e| panic!("{kind} #{round}: {e:?} after {took:?}")),
                "{kind} #{round}: woken by nothing"
            );
            assert!(
                took >= block / 2 && took < block + SLACK_BOUND,
                "{kind} #{round}: took {took:?}"
            );
        }
        server.command(&["RPUSH", &signal, "released"]).unwrap();
        let woken = backend.wait_for_release(&signal, block).await;
        assert!(woken.unwrap(), "{kind}: woken by the push");
        assert_eq!(server.command(&["LLEN", &signal]).unwrap(), "0", "{kind}");
    }
}
