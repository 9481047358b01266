//! Bounded waits (issue 13): holders never starve behind waiters. A backend blocks at most
//! `max_blocking_waits` waits on release signals at once (each `BLPOP` holds a connection); the waiters
//! beyond that poll. With 1,000 keys waited on through a pool of 16, the renewals of 100 locks held
//! with `hold` never miss, the server never counts more blocked clients than the limit, and waiters
//! beyond the limit still get their locks promptly once the keys are free.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redlease::deadpool::{DeadpoolBackend, deadpool_redis};
use redlease::fred::FredBackend;
use redlease::fred::fred::prelude::{Builder, ClientLike, Config};
use redlease::{Backoff, LockBackend, RedisLock};
use support::{RedisServer, key_prefix};

/// The keys waited on, each held by "another process" (a foreign token set straight in Redis).
const WAITED: usize = 1_000;

/// The locks held with `hold` while the waiters wait.
const HELD: usize = 100;

/// The pool: deadpool's max size, and the number of fred's clients.
const POOL: usize = 16;

/// The limit under test (the default, set explicitly).
const LIMIT: usize = 8;

/// The held locks' TTL; they are held for [`HOLD_FOR`], several TTLs.
const TTL: Duration = Duration::from_millis(1_500);
const HOLD_FOR: Duration = Duration::from_millis(5_000);

/// The waiters' backoff: its maximum bounds how late a polling waiter learns that its key is free
/// (and, for a blocking waiter, each wait's cap).
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(5), Duration::from_millis(250));

/// How many keys are freed at the end to see waiters get them; with [`LIMIT`] blocking at a time,
/// most of them are waited on by pollers.
const FREED: usize = 40;

/// Above the backoff's maximum, for scheduling 1,000 tasks on a noisy 2-core machine.
const PROMPT: Duration = Duration::from_millis(1_500);

/// `blocked_clients` from `INFO clients`.
fn blocked_clients(server: &RedisServer) -> u64 {
    let info = server.command(&["INFO", "clients"]).expect("INFO clients");
    info.lines()
        .find_map(|line| line.strip_prefix("blocked_clients:"))
        .and_then(|count| count.trim().parse().ok())
        .expect("blocked_clients in INFO clients")
}

/// Samples `blocked_clients` every 10 ms on a thread of its own until `stop`: the most seen, and how
/// many samples were taken.
fn sample_blocked(
    server: Arc<RedisServer>,
    stop: Arc<AtomicBool>,
    most: Arc<AtomicU64>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut samples = 0;
        while !stop.load(Ordering::Relaxed) {
            most.fetch_max(blocked_clients(&server), Ordering::Relaxed);
            samples += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
        samples
    })
}

async fn holders_never_starve_behind_waiters(
    name: &str,
    server: Arc<RedisServer>,
    backend: Arc<dyn LockBackend>,
) {
    let prefix = format!("{}:{name}", key_prefix());
    let runtime = backend.runtime().expect("the adapter's runtime").clone();
    assert_eq!(runtime.get_max_blocking_waits(), LIMIT, "{name}");

    // Every waited-on key is held elsewhere, for longer than the test.
    let waited: Vec<String> = (0..WAITED)
        .map(|n| format!("{prefix}:waited:{n}"))
        .collect();
    for key in &waited {
        let set = backend
            .set_nx(key, "another-process", Duration::from_secs(120))
            .await;
        assert!(matches!(set, Ok(true)), "{name}: {key}: {set:?}");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let most_blocked = Arc::new(AtomicU64::new(0));
    let sampler = sample_blocked(server.clone(), stop.clone(), most_blocked.clone());

    // One waiter per key, with a long wait.
    let waiters: Vec<_> = waited
        .iter()
        .enumerate()
        .map(|(n, key)| {
            let lock = RedisLock::new(backend.clone(), key.clone())
                .backoff(BACKOFF)
                .wait_timeout(Some(Duration::from_secs(120)));
            tokio::spawn(async move {
                let guard = lock.acquire().await;
                (n, Instant::now(), guard)
            })
        })
        .collect();
    // The waiters have tried once and wait (blocked or polling).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        runtime.blocking_waits() <= LIMIT,
        "{name}: {} blocking waits",
        runtime.blocking_waits()
    );

    // 100 locks held with `hold` for several TTLs, renewed through the same pool.
    let holders: Vec<_> = (0..HELD)
        .map(|n| {
            let lock = RedisLock::new(backend.clone(), format!("{prefix}:held:{n}"))
                .timeout(TTL)
                .wait_timeout(Some(Duration::from_secs(10)));
            tokio::spawn(async move {
                let guard = lock.acquire().await.expect("the held key is free");
                let held = guard.hold(tokio::time::sleep(HOLD_FOR)).await;
                // Still ours after several TTLs: the renewals kept it.
                let released = guard.release().await;
                (held.is_ok(), matches!(released, Ok(true)), held.err())
            })
        })
        .collect();
    let mut lost = Vec::new();
    for (n, holder) in holders.into_iter().enumerate() {
        let (held, released, error) = holder.await.expect("holder task");
        if !held || !released {
            lost.push((n, error));
        }
    }
    assert!(
        lost.is_empty(),
        "{name}: {} of {HELD} held locks lost while {WAITED} keys were waited on: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    let waiting = waiters
        .iter()
        .filter(|waiter| !waiter.is_finished())
        .count();
    assert_eq!(waiting, WAITED, "{name}: every waiter still waits");

    // Free some keys (a deletion signals nothing: blocked waiters wake by their cap, the others by
    // their polling); each of their waiters gets its lock promptly.
    let freed_at = Instant::now();
    for key in &waited[..FREED] {
        server.command(&["DEL", key]).expect("DEL");
    }
    let mut freed = waiters;
    let still = freed.split_off(FREED);
    for waiter in freed {
        let (n, acquired_at, guard) = tokio::time::timeout(PROMPT * 2, waiter)
            .await
            .expect("the waiter is prompt")
            .expect("waiter task");
        let guard = guard.unwrap_or_else(|error| panic!("{name}: waiter {n}: {error}"));
        let took = acquired_at.duration_since(freed_at);
        assert!(
            took < PROMPT,
            "{name}: waiter {n} got its freed key {took:?} after the deletion"
        );
        assert!(
            guard.release().await.expect("release"),
            "{name}: waiter {n}"
        );
    }

    stop.store(true, Ordering::Relaxed);
    let samples = sampler.join().expect("sampler");
    let most = most_blocked.load(Ordering::Relaxed);
    assert!(samples > 100, "{name}: only {samples} samples");
    assert!(
        most <= LIMIT as u64,
        "{name}: the server counted {most} blocked clients, limit {LIMIT}"
    );
    assert!(most > 0, "{name}: some waiters block on release signals");

    // Cancelled waiters give their slots back.
    for waiter in &still {
        waiter.abort();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while runtime.blocking_waits() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(runtime.blocking_waits(), 0, "{name}: every slot came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadpool_pool_holders_never_starve_behind_waiters() {
    let server = Arc::new(RedisServer::start());
    let mut config = deadpool_redis::Config::from_url(server.url());
    config.pool = Some(deadpool_redis::PoolConfig::new(POOL));
    let pool = config
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .expect("deadpool pool");
    let backend = DeadpoolBackend::from(pool).max_blocking_waits(LIMIT);
    holders_never_starve_behind_waiters("deadpool", server, Arc::new(backend)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_pool_holders_never_starve_behind_waiters() {
    let server = Arc::new(RedisServer::start());
    let pool = Builder::from_config(Config::from_url(&server.url()).expect("url"))
        .build_pool(POOL)
        .expect("fred pool");
    pool.init().await.expect("fred pool connects");
    let backend = FredBackend::from(pool).max_blocking_waits(LIMIT);
    holders_never_starve_behind_waiters("fred", server, Arc::new(backend)).await;
}
