//! Lock behaviour when the server dies or freezes, for every adapter input: failures surface as
//! `LockError::Backend` promptly (never later than the wait deadline plus one call bound), are never
//! retried silently, and never hide a finished result in `run`.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use redlease::deadpool::{DeadpoolBackend, deadpool_redis};
use redlease::fred::{FredBackend, fred::prelude::*};
use redlease::{LockBackend, LockError, RedisLock};
use support::RedisServer;

const CALL_BOUND: Duration = Duration::from_millis(300);
/// Room for a noisy 2-core machine on top of the bounds under test.
const SLACK: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy)]
enum Input {
    FredClient,
    FredPool,
    DeadpoolPool,
    RedisConnection,
}

const INPUTS: [Input; 4] = [
    Input::FredClient,
    Input::FredPool,
    Input::DeadpoolPool,
    Input::RedisConnection,
];

async fn backend(input: Input, url: &str) -> Arc<dyn LockBackend> {
    match input {
        Input::FredClient => {
            let client = Builder::from_config(Config::from_url(url).unwrap())
                .build()
                .unwrap();
            client.init().await.unwrap();
            Arc::new(FredBackend::from(client).command_timeout(CALL_BOUND))
        }
        Input::FredPool => {
            let pool = Builder::from_config(Config::from_url(url).unwrap())
                .build_pool(2)
                .unwrap();
            pool.init().await.unwrap();
            Arc::new(FredBackend::from(pool).command_timeout(CALL_BOUND))
        }
        Input::DeadpoolPool => {
            let pool = deadpool_redis::Config::from_url(url)
                .create_pool(Some(deadpool_redis::Runtime::Tokio1))
                .unwrap();
            Arc::new(DeadpoolBackend::from(pool).command_timeout(CALL_BOUND))
        }
        Input::RedisConnection => {
            let connection = deadpool_redis::redis::Client::open(url)
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            Arc::new(DeadpoolBackend::from(connection).command_timeout(CALL_BOUND))
        }
    }
}

fn assert_backend_error(input: Input, result: Result<impl std::fmt::Debug, LockError>, key: &str) {
    match result {
        Err(err @ LockError::Backend { .. }) => {
            assert!(
                err.is_transient(),
                "{input:?}: an outage is transient: {err:?}"
            );
            assert!(err.backend().is_some());
            assert!(
                err.to_string().contains(key),
                "{input:?}: {err} names the key"
            );
        }
        other => panic!("{input:?}: expected LockError::Backend, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_fails_acquire_promptly_without_silent_retries() {
    for input in INPUTS {
        let mut server = RedisServer::start();
        let backend = backend(input, &server.url()).await;
        let key = format!("{}killed", support::key_prefix());
        // Connected and working first.
        let lock = RedisLock::new(backend, key.clone()).wait_timeout(None);
        lock.acquire().await.unwrap().release().await.unwrap();

        server.kill();
        // Waiting forever must not turn an outage into an endless silent retry loop.
        let started = Instant::now();
        let result = lock.acquire().await;
        assert_backend_error(input, result, &key);
        assert!(
            started.elapsed() < CALL_BOUND + SLACK,
            "{input:?}: acquire took {:?} against a dead server",
            started.elapsed()
        );
        let result = lock.try_acquire().await;
        assert_backend_error(input, result, &key);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_server_fails_acquire_within_one_call_bound() {
    for input in INPUTS {
        let server = RedisServer::start();
        let backend = backend(input, &server.url()).await;
        let key = format!("{}frozen", support::key_prefix());
        let lock = RedisLock::new(backend, key.clone()).wait_timeout(Some(Duration::from_secs(1)));
        let guard = lock.acquire().await.unwrap();

        server.pause();
        let started = Instant::now();
        let result = lock.acquire().await;
        let elapsed = started.elapsed();
        let is_owner = guard.is_owner().await;
        server.resume();

        assert_backend_error(input, result, &key);
        assert!(
            elapsed < Duration::from_secs(1) + CALL_BOUND + SLACK,
            "{input:?}: acquire took {elapsed:?} against a frozen server"
        );
        assert_backend_error(input, is_owner, &key);
        // Once the server answers again, the guard still works.
        assert!(guard.release().await.unwrap(), "{input:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_failure_after_the_work_still_returns_the_value() {
    for input in INPUTS {
        let mut server = RedisServer::start();
        let backend = backend(input, &server.url()).await;
        let lock = RedisLock::new(backend, format!("{}run", support::key_prefix()));
        let value = lock
            .run(async |_guard| {
                server.kill();
                "finished"
            })
            .await;
        assert_eq!(value.unwrap(), "finished", "{input:?}");
    }
}
