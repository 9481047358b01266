//! What a new user hit (issue 12), on real `redis-server` processes and both adapters: a fred client
//! that never recovered from a restart, `wait_timeout` not bounding the time to fail against a frozen
//! server, error messages that hid what happened, and `fenced_set` on the lock's own keys.

mod support;

use std::error::Error as _;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redlease::deadpool::{DeadpoolBackend, deadpool_redis};
use redlease::fred::FredBackend;
use redlease::fred::fred::prelude::{Builder, ClientLike, Config, ReconnectPolicy};
use redlease::memory::MemoryBackend;
use redlease::{Election, LockBackend, LockError, RedisLock, Redlock, RwLock, Semaphore};
use support::RedisServer;

/// The wait every bounded call is given, and how late it may return on a noisy 2-core machine.
const WAIT: Duration = Duration::from_secs(1);
const SLACK: Duration = Duration::from_millis(1500);
/// Longer than `WAIT + SLACK`: a call that waited it out would fail the timing assertions.
const CALL_BOUND: Duration = Duration::from_secs(6);

/// A fred client as the lock-fred docs set it up for production: a reconnect policy that never gives
/// up, and connection and command timeouts.
async fn production_fred(url: &str) -> redlease::fred::fred::clients::Client {
    let config = Config::from_url(url).unwrap();
    let client = Builder::from_config(config)
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
        .with_connection_config(|c| c.connection_timeout = Duration::from_secs(2))
        .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(5))
        .build()
        .unwrap();
    client.init().await.unwrap();
    client
}

async fn bare_fred(url: &str) -> redlease::fred::fred::clients::Client {
    let client = Builder::from_config(Config::from_url(url).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap();
    client
}

fn deadpool(url: &str) -> DeadpoolBackend {
    let pool = deadpool_redis::Config::from_url(url)
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .unwrap();
    DeadpoolBackend::from(pool)
}

/// `(name, backend)` for both adapters on `url`, with a call bound longer than the wait.
async fn both(url: &str) -> Vec<(&'static str, Arc<dyn LockBackend>)> {
    let fred = FredBackend::from(production_fred(url).await).command_timeout(CALL_BOUND);
    vec![
        ("fred", Arc::new(fred)),
        (
            "deadpool",
            Arc::new(deadpool(url).command_timeout(CALL_BOUND)),
        ),
    ]
}

/// Every level of `error`'s chain, top first.
fn chain(error: &LockError) -> Vec<String> {
    let mut levels = vec![error.to_string()];
    let mut cause = error.source();
    while let Some(inner) = cause {
        levels.push(inner.to_string());
        cause = inner.source();
    }
    levels
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_with_the_documented_setup_acquires_again_after_a_restart() {
    let mut server = RedisServer::start();
    let backend = FredBackend::from(production_fred(&server.url()).await)
        .command_timeout(Duration::from_secs(2));
    let lock =
        RedisLock::new(backend, "newuser:restart").wait_timeout(Some(Duration::from_secs(2)));
    assert!(lock.acquire().await.unwrap().release().await.unwrap());
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    let guard = loop {
        match lock.acquire().await {
            Ok(guard) => break guard,
            Err(error) if Instant::now() < deadline => {
                assert!(error.is_transient(), "{error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("never recovered from the restart: {error}"),
        }
    };
    assert!(guard.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_without_a_reconnect_policy_says_what_to_set() {
    let mut server = RedisServer::start();
    let client = bare_fred(&server.url()).await;
    let backend = FredBackend::from(client.clone()).command_timeout(Duration::from_millis(300));
    let lock = RedisLock::new(backend, "newuser:no-policy").wait_timeout(Some(WAIT * 5));
    assert!(lock.acquire().await.unwrap().release().await.unwrap());
    server.restart();
    // The client notices the dropped connection on its own.
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.is_connected() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    let error = lock.acquire().await.unwrap_err();
    assert!(
        started.elapsed() < WAIT + SLACK,
        "failed fast: {:?}",
        started.elapsed()
    );
    let text = chain(&error).join(": ");
    assert!(
        error.to_string().contains("timed out"),
        "the top line says what happened: {error}"
    );
    assert!(
        text.contains("no reconnect policy") && text.contains("set_policy"),
        "the error names the fix: {text}"
    );
}

/// Runs `call` and checks that it ended (in error) by the wait plus slack.
async fn bounded<T: std::fmt::Debug>(what: &str, call: impl Future<Output = redlease::Result<T>>) {
    let started = Instant::now();
    let outcome = call.await;
    let took = started.elapsed();
    assert!(
        outcome.is_err(),
        "{what}: a frozen server granted {outcome:?}"
    );
    assert!(
        took <= WAIT + SLACK,
        "{what}: took {took:?} against a frozen server, with a {WAIT:?} wait; {outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_timeout_bounds_the_time_to_fail_on_a_frozen_server() {
    let server = RedisServer::start();
    for (name, backend) in both(&server.url()).await {
        let lock = |key: &str| RedisLock::new(backend.clone(), format!("newuser:{name}:{key}"));
        // Connections made before the freeze, so that every call meets a silent server.
        assert!(
            lock("warm")
                .acquire()
                .await
                .unwrap()
                .release()
                .await
                .unwrap()
        );
        server.pause();
        let plain = lock("plain").wait_timeout(Some(WAIT));
        bounded(&format!("{name} acquire"), plain.acquire()).await;
        bounded(&format!("{name} try_acquire"), plain.try_acquire()).await;
        let fair = lock("fair").fair(true).wait_timeout(Some(WAIT));
        bounded(&format!("{name} fair acquire"), fair.acquire()).await;
        bounded(&format!("{name} fair try_acquire"), fair.try_acquire()).await;
        let semaphore = Semaphore::new(backend.clone(), format!("newuser:{name}:sem"), 2)
            .wait_timeout(Some(WAIT));
        bounded(&format!("{name} semaphore acquire"), semaphore.acquire()).await;
        bounded(
            &format!("{name} semaphore try_acquire"),
            semaphore.try_acquire(),
        )
        .await;
        let rw =
            RwLock::new(backend.clone(), format!("newuser:{name}:rw")).wait_timeout(Some(WAIT));
        bounded(&format!("{name} read"), rw.read()).await;
        bounded(&format!("{name} try_read"), rw.try_read()).await;
        bounded(&format!("{name} write"), rw.write()).await;
        bounded(&format!("{name} try_write"), rw.try_write()).await;
        let redlock = Redlock::new(vec![backend.clone()], format!("newuser:{name}:redlock"))
            .wait_timeout(Some(WAIT));
        bounded(&format!("{name} redlock acquire"), redlock.acquire()).await;
        bounded(
            &format!("{name} redlock try_acquire"),
            redlock.try_acquire(),
        )
        .await;
        let election = Election::new(backend.clone(), format!("newuser:{name}:leader"))
            .wait_timeout(Some(WAIT));
        bounded(&format!("{name} campaign"), election.campaign()).await;
        server.resume();
        // Cut short, then cleaned up like a cancelled acquisition: the key is free again.
        let after = lock("plain").wait_timeout(Some(Duration::from_secs(10)));
        let guard = after.acquire().await.unwrap();
        assert!(guard.release().await.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_say_refused_or_timed_out_in_a_word_and_never_repeat_the_cause() {
    // Refused: nothing listens on the port of a server that was stopped.
    let mut server = RedisServer::start();
    let url = server.url();
    server.kill();
    let lock = RedisLock::new(deadpool(&url), "newuser:refused").wait_timeout(Some(WAIT));
    let error = lock.acquire().await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "backend deadpool failed on lock newuser:refused: connection refused (transient)"
    );
    let levels = chain(&error);
    for (i, level) in levels.iter().enumerate().skip(1) {
        assert!(
            !levels[i - 1].contains(level.as_str()),
            "level {i} repeats its parent: {levels:?}"
        );
    }
    assert_eq!(
        levels.iter().filter(|l| l.contains("os error")).count(),
        1,
        "the refusal is told once: {levels:?}"
    );

    // Timed out: a frozen server, with a call bound shorter than the wait.
    let server = RedisServer::start();
    let short = Duration::from_millis(300);
    let backends: Vec<(&str, Arc<dyn LockBackend>)> = vec![
        (
            "fred",
            Arc::new(
                FredBackend::from(production_fred(&server.url()).await).command_timeout(short),
            ),
        ),
        (
            "deadpool",
            Arc::new(deadpool(&server.url()).command_timeout(short)),
        ),
    ];
    for (_, backend) in &backends {
        let lock = RedisLock::new(backend.clone(), "newuser:timeout").wait_timeout(Some(WAIT * 5));
        assert!(lock.acquire().await.unwrap().release().await.unwrap());
    }
    server.pause();
    for (name, backend) in backends {
        let lock = RedisLock::new(backend, "newuser:timeout").wait_timeout(Some(WAIT * 5));
        let error = lock.acquire().await.unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("backend {name} failed on lock newuser:timeout: timed out (transient)")
        );
        let levels = chain(&error);
        assert!(levels.len() >= 3, "the cause is kept: {levels:?}");
    }
    server.resume();
}

#[tokio::test]
async fn fenced_set_refuses_the_lock_key_and_its_companions() {
    let lock = RedisLock::new(MemoryBackend::new(), "{t}:lock").fencing(true);
    let guard = lock.acquire().await.unwrap();
    for resource in [
        "{t}:lock",
        "{t}:lock:redlease:fence",
        "{t}:lock:redlease:released",
        "{t}:lock:redlease:fair-queue",
    ] {
        let error = guard.fenced_set(resource, "v").await.unwrap_err();
        assert!(
            matches!(
                error,
                LockError::InvalidArgument {
                    argument: "resource",
                    ..
                }
            ),
            "{resource}: {error}"
        );
    }
    assert!(guard.fenced_set("{t}:data", "v").await.unwrap());
    assert!(
        guard.release().await.unwrap(),
        "the lock itself was not touched"
    );
}
