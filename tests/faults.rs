//! Lock behaviour when the server dies or freezes, for every adapter input: failures surface as
//! `LockError::Backend` promptly (a call that fails ends the acquisition with its error), are never
//! retried silently, never hide a finished result in `run`, and never outlast the wait deadline: an
//! acquisition whose call hangs past its deadline ends there (plus a 100 ms grace) with
//! `LockError::Timeout` (issue 12), whatever the call bound.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use redlease::{Backoff, LockBackend, LockError, RedisLock};
use support::RedisServer;
use support::inputs::{Input, Options, RedisRsTimeouts};

const CALL_BOUND: Duration = Duration::from_millis(300);
/// Room for a noisy 2-core machine on top of the bounds under test.
const SLACK: Duration = Duration::from_secs(3);

/// The adapters' only bound on a call in the tests that tell one call bound from two (see
/// [`bounded_backend`]): long enough that a margin for a noisy machine fits well below it.
const ONE_BOUND: Duration = Duration::from_secs(3);
/// What a test allows on top of the one call bound it names: generous for a noisy 2-core machine, and
/// still well below a second bound, so that a second call spending its bound fails the test.
const MARGIN: Duration = Duration::from_millis(1500);

async fn backend(input: Input, url: &str) -> Arc<dyn LockBackend> {
    input
        .connect(url, Options::new().call_bound(CALL_BOUND))
        .await
}

/// A backend over `input` whose calls are bounded by the adapter's command timeout, `bound`, and by
/// nothing shorter: redis-rs's own response and connection timeouts (500 ms and 1 s by default) are
/// turned off, so that a hung call takes exactly one adapter bound, whichever input it goes through.
async fn bounded_backend(input: Input, url: &str, bound: Duration) -> Arc<dyn LockBackend> {
    let options = Options::new()
        .call_bound(bound)
        .redis_rs_timeouts(RedisRsTimeouts::Off);
    input.connect(url, options).await
}

/// How long past its wait deadline an acquisition lets a call in flight answer (`Runtime::within_wait`).
const WAIT_GRACE: Duration = Duration::from_millis(100);

/// The outcome of a wait that ended on a frozen server: the failed call's own error if it failed
/// before the deadline, otherwise `Timeout` at the deadline; either names the key.
fn assert_backend_error_or_timeout(
    input: Input,
    result: Result<impl std::fmt::Debug, LockError>,
    key: &str,
) {
    match result {
        Err(LockError::Timeout { key: named, .. }) => assert_eq!(named, key, "{input}"),
        other => assert_backend_error(input, other, key),
    }
}

fn assert_backend_error(input: Input, result: Result<impl std::fmt::Debug, LockError>, key: &str) {
    match result {
        Err(err @ LockError::Backend { .. }) => {
            assert!(
                err.is_transient(),
                "{input}: an outage is transient: {err:?}"
            );
            assert!(err.backend().is_some());
            assert!(
                err.to_string().contains(key),
                "{input}: {err} names the key"
            );
        }
        other => panic!("{input}: expected LockError::Backend, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_fails_acquire_promptly_without_silent_retries() {
    for input in Input::REDIS {
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
            "{input}: acquire took {:?} against a dead server",
            started.elapsed()
        );
        let result = lock.try_acquire().await;
        assert_backend_error(input, result, &key);
    }
}

/// A frozen server fails `acquire` after one call bound, however long the wait: the first call that
/// gets no answer ends the acquisition with its error. The key is held through another backend, so the
/// acquisition does not wait in a local line first but goes straight to the server, and its wait is
/// far longer than two bounds: a silent retry (one, or many until the deadline) fails the test. A
/// guard's `is_owner` fails the same way, meanwhile; once the server answers again, the guard works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_server_fails_acquire_within_one_call_bound() {
    for input in Input::REDIS {
        let server = RedisServer::start();
        let key = format!("{}frozen", support::key_prefix());
        let holder = bounded_backend(input, &server.url(), ONE_BOUND).await;
        let guard = RedisLock::new(holder, key.clone()).acquire().await.unwrap();
        let backend = bounded_backend(input, &server.url(), ONE_BOUND).await;
        let lock = RedisLock::new(backend, key.clone()).wait_timeout(Some(Duration::from_secs(60)));
        // Connected before the freeze, and the key is held.
        assert!(lock.try_acquire().await.unwrap().is_none(), "{input}");

        server.pause();
        let (acquired, is_owner) = tokio::join!(timed(lock.acquire()), timed(guard.is_owner()));
        server.resume();

        for (what, (result, elapsed)) in [
            ("acquire", (acquired.0.map(drop), acquired.1)),
            ("is_owner", (is_owner.0.map(drop), is_owner.1)),
        ] {
            assert_backend_error(input, result, &key);
            assert!(
                elapsed >= ONE_BOUND && elapsed < ONE_BOUND + MARGIN,
                "{input}: {what} took {elapsed:?} against a frozen server, where one call bound is \
                 {ONE_BOUND:?}"
            );
        }
        // Once the server answers again, the guard still works.
        assert!(guard.release().await.unwrap(), "{input}");
    }
}

/// With the key held elsewhere (as by another process: this backend's waiter blocks on the release
/// signal) and the server frozen while the waiter blocks, `acquire` with a 1 s wait ends by its
/// deadline: the hung signal wait is cut there (issue 12), where it used to cost one call bound
/// (issue 8, hole 19: before that, a swallowed failure let the next `SET` spend a second bound, 10.1 s
/// on fred with the default 5 s bound).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_signal_wait_ends_by_the_wait_deadline() {
    // A lone redis-rs connection sends no blocking wait (it polls), so it has no signal wait to fail.
    for input in [Input::FredClient, Input::FredPool, Input::DeadpoolPool] {
        let server = RedisServer::start();
        let key = format!("{}held-elsewhere", support::key_prefix());
        server
            .command(&["SET", &key, "another-process", "PX", "60000"])
            .unwrap();
        let backend = bounded_backend(input, &server.url(), ONE_BOUND).await;
        let wait = Duration::from_secs(1);
        // Signal waits of up to the whole wait (each adapter caps them lower), rather than 100 ms.
        let lock = RedisLock::new(backend, key.clone())
            .wait_timeout(Some(wait))
            .backoff(Backoff::new(wait, wait));
        let waiting = tokio::spawn(async move { timed(lock.acquire()).await });
        // Frozen while the waiter is blocked in `BLPOP` on the release signal.
        let blocked = tokio::task::block_in_place(|| {
            let deadline = Instant::now() + SLACK;
            while Instant::now() < deadline {
                let info = server.command(&["INFO", "clients"]).unwrap();
                if info.lines().any(|line| line.trim() == "blocked_clients:1") {
                    server.pause();
                    return true;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            false
        });
        let (result, elapsed) = waiting.await.unwrap();
        if blocked {
            server.resume();
        }
        assert!(blocked, "{input}: the waiter never blocked on the signal");
        assert_backend_error_or_timeout(input, result, &key);
        assert!(
            elapsed < wait + WAIT_GRACE + MARGIN,
            "{input}: a {wait:?} wait ended after {elapsed:?}, where one call bound is {ONE_BOUND:?}"
        );
    }
}

/// Waiting in the local line behind a guard of the same backend, with the server frozen: the holder
/// check that the first in line makes hangs, and the wait still ends by its deadline (issue 12; it
/// used to cost one call bound, issue 8, hole 19, and before that, counted as "no longer held", a
/// second bound for the `SET` after it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_holder_check_ends_by_the_wait_deadline() {
    for input in Input::REDIS {
        let server = RedisServer::start();
        let key = format!("{}held-here", support::key_prefix());
        let backend = bounded_backend(input, &server.url(), ONE_BOUND).await;
        let wait = Duration::from_secs(1);
        let lock = RedisLock::new(backend, key.clone())
            .timeout(Duration::from_secs(60))
            .wait_timeout(Some(wait));
        let guard = lock.acquire().await.unwrap();
        let waiting = tokio::spawn({
            let lock = lock.clone();
            async move { timed(lock.acquire()).await }
        });
        // In line behind the guard (whose lease runs for a minute), checking the holder every 100 ms.
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.pause();
        let (result, elapsed) = waiting.await.unwrap();
        server.resume();
        assert_backend_error_or_timeout(input, result, &key);
        assert!(
            elapsed < wait + WAIT_GRACE + MARGIN,
            "{input}: a {wait:?} wait ended after {elapsed:?}, where one call bound is {ONE_BOUND:?}"
        );
        assert!(guard.release().await.unwrap(), "{input}");
    }
}

/// `call`'s output and how long it took.
async fn timed<T>(call: impl std::future::Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let output = call.await;
    (output, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_failure_after_the_work_still_returns_the_value() {
    for input in Input::REDIS {
        let mut server = RedisServer::start();
        let backend = backend(input, &server.url()).await;
        let lock = RedisLock::new(backend, format!("{}run", support::key_prefix()));
        let value = lock
            .run(async |_guard| {
                server.kill();
                "finished"
            })
            .await;
        assert_eq!(value.unwrap(), "finished", "{input}");
    }
}
