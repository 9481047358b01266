//! Sentinel, against real deployments started by `support::sentinel` (a primary, replicas and Sentinels),
//! for both adapters: a fred `Client` with a Sentinel configuration and a `deadpool_redis::sentinel::Pool`.
//!
//! - the whole conformance suite passes unchanged on a Sentinel-discovered primary;
//! - a failover loses a lock whose write had not reached a replica (the documented caveat of
//!   asynchronous replication), while a lock acquired with `replicas(n, timeout)` survives it; an
//!   acquisition that no replica acknowledged is refused and released; `renew` and `extend` report
//!   `NotReplicated` when a replica does not acknowledge in time.

mod support;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lock_core::testing::{Probe, run_all};
use redlease::deadpool::{DeadpoolBackend, deadpool_redis};
use redlease::fred::{FredBackend, fred::prelude::*};
use redlease::{LockBackend, LockError, RedisLock};
use support::probe::RedisProbe;
use support::sentinel::{SERVICE, SentinelGroup};

async fn fred_backend(group: &SentinelGroup) -> Arc<dyn LockBackend> {
    let config = Config {
        server: ServerConfig::new_sentinel(group.sentinel_hosts(), SERVICE),
        ..Config::default()
    };
    let client = Builder::from_config(config)
        .set_policy(ReconnectPolicy::new_constant(0, 100))
        .build()
        .expect("fred sentinel client");
    client.init().await.expect("fred finds the primary");
    Arc::new(FredBackend::from(client).command_timeout(Duration::from_secs(2)))
}

fn deadpool_backend(group: &SentinelGroup) -> Arc<dyn LockBackend> {
    let pool = deadpool_redis::sentinel::Config::from_urls(
        group.sentinel_urls(),
        SERVICE.to_owned(),
        deadpool_redis::sentinel::SentinelServerType::Master,
    )
    .create_pool(Some(deadpool_redis::Runtime::Tokio1))
    .expect("deadpool sentinel pool");
    Arc::new(DeadpoolBackend::from(pool).command_timeout(Duration::from_secs(2)))
}

/// The conformance suite, unchanged, on the primary Sentinel names, for both adapters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_adapters_pass_the_suite_via_sentinel() {
    let group = SentinelGroup::start(1, 2);
    let probe = RedisProbe::new(&group.server(group.primary_port()).url());
    for (name, backend) in [
        ("fred", fred_backend(&group).await),
        ("deadpool", deadpool_backend(&group)),
    ] {
        let started = Instant::now();
        run_all(
            backend,
            &probe,
            &format!("{}{name}:", support::key_prefix()),
        )
        .await;
        println!(
            "{name}: conformance via Sentinel in {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_failover_keeps_only_acknowledged_locks() {
    failover_keeps_only_acknowledged_locks("fred").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadpool_failover_keeps_only_acknowledged_locks() {
    failover_keeps_only_acknowledged_locks("deadpool").await;
}

/// A primary with two replicas fails over while three locks stand:
///
/// - `safe`, acquired with `replicas(2, ..)`: both replicas had it, so the new primary has it;
/// - `unsafe`, acquired without: its write never left the primary (both replicas frozen and cut off
///   first), so the new primary does not have it, and another worker takes the lock while its first
///   holder still believes it holds it;
/// - `refused`, acquired with `replicas(1, ..)` while the replicas were cut off: refused with
///   `NotReplicated` and released at once.
///
/// Before that, with one replica frozen, `renew` and `extend` of `safe` report `NotReplicated`.
async fn failover_keeps_only_acknowledged_locks(adapter: &str) {
    let mut group = SentinelGroup::start(2, 3);
    let backend = match adapter {
        "fred" => fred_backend(&group).await,
        _ => deadpool_backend(&group),
    };
    let old_primary = group.primary_port();
    let primary_probe = RedisProbe::new(&group.server(old_primary).url());
    let replica_ports: Vec<u16> = group.replicas().iter().map(|r| r.port()).collect();
    assert_eq!(replica_ports.len(), 2);
    let prefix = support::key_prefix();
    let key = |name: &str| format!("{prefix}{adapter}:{name}");
    let ttl = Duration::from_secs(30);
    let wait = Duration::from_millis(300);

    // Acknowledged by both replicas.
    let safe = RedisLock::new(backend.clone(), key("safe"))
        .timeout(ttl)
        .replicas(2, wait)
        .acquire()
        .await
        .expect("acquire, acknowledged by both replicas");

    // One replica frozen: the primary applies renew and extend, but only one replica acknowledges.
    group.server(replica_ports[0]).pause();
    let renewed = safe.renew().await;
    let extended = safe.extend(Duration::from_secs(1)).await;
    group.server(replica_ports[0]).resume();
    for (what, result) in [("renew", renewed), ("extend", extended)] {
        match result {
            Err(LockError::NotReplicated {
                key: k,
                wanted: 2,
                acked: 1,
            }) => assert_eq!(k, key("safe"), "{adapter} {what}"),
            other => panic!("{adapter} {what}: expected NotReplicated, got {other:?}"),
        }
    }
    assert!(safe.renew().await.expect("renew once both acknowledge"));

    // Both replicas frozen and cut off: nothing written now can reach them.
    for port in &replica_ports {
        group.server(*port).pause();
    }
    let killed = group
        .server(old_primary)
        .command(&["CLIENT", "KILL", "TYPE", "replica"])
        .expect("CLIENT KILL");
    assert_eq!(killed, "2", "{adapter}: both replication links cut");
    let unsafe_guard = RedisLock::new(backend.clone(), key("unsafe"))
        .timeout(ttl)
        .acquire()
        .await
        .expect("acquire without acknowledgement");
    let started = Instant::now();
    let refused = RedisLock::new(backend.clone(), key("refused"))
        .timeout(ttl)
        .replicas(1, wait)
        .try_acquire()
        .await;
    match refused {
        Err(LockError::NotReplicated {
            wanted: 1,
            acked: 0,
            ..
        }) => assert!(started.elapsed() >= wait, "{adapter}: waited for WAIT"),
        other => panic!("{adapter}: expected NotReplicated, got {other:?}"),
    }
    assert_eq!(
        primary_probe.get(&key("refused")).await,
        None,
        "{adapter}: the refused acquisition was released"
    );
    assert_eq!(
        primary_probe.get(&key("unsafe")).await.as_deref(),
        Some(unsafe_guard.token())
    );

    // The primary dies before anything more replicates; Sentinel promotes a replica.
    group.server_mut(old_primary).kill();
    for port in &replica_ports {
        group.server(*port).resume();
    }
    let failover_started = Instant::now();
    let new_primary = group.wait_for_failover(old_primary);
    println!(
        "{adapter}: failover to {new_primary} took {:?}",
        failover_started.elapsed()
    );
    let probe = RedisProbe::new(&group.server(new_primary).url());
    assert_eq!(
        probe.get(&key("safe")).await.as_deref(),
        Some(safe.token()),
        "{adapter}: the acknowledged lock survived the failover"
    );
    assert_eq!(
        probe.get(&key("unsafe")).await,
        None,
        "{adapter}: the unacknowledged lock was lost in the failover"
    );

    // Through the same backend, once it follows the new primary: the safe lock is still ours and
    // excludes others; the unsafe one is taken by another worker while its holder still has a guard.
    let owner = eventually_ok(adapter, || safe.is_owner()).await;
    assert!(owner, "{adapter}: still the owner after the failover");
    let other = RedisLock::new(backend.clone(), key("safe")).wait_timeout(Some(Duration::ZERO));
    assert!(matches!(other.try_acquire().await, Ok(None)), "{adapter}");
    let thief = RedisLock::new(backend.clone(), key("unsafe"))
        .try_acquire()
        .await
        .expect("try_acquire")
        .expect("the lost lock is free for anyone");
    assert!(
        !unsafe_guard.is_owner().await.expect("is_owner"),
        "{adapter}: the first holder learns it lost the lock only now"
    );
    assert!(
        unsafe_guard.valid_for().is_zero(),
        "{adapter}: having heard \"not ours\", the guard claims nothing"
    );
    assert!(thief.release().await.expect("release"));
    // It knows it lost the lock, so its release is "not ours", not in doubt.
    let released = unsafe_guard.release().await;
    assert!(matches!(released, Ok(false)), "{adapter}: {released:?}");
    assert!(safe.release().await.expect("release"), "{adapter}");
}

/// Retries `call` until it succeeds (the client reconnecting to a new primary), for up to 20 s.
async fn eventually_ok<T, F, Fut>(adapter: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, LockError>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match call().await {
            Ok(value) => return value,
            Err(error) if Instant::now() < deadline => {
                println!("{adapter}: not yet reconnected: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("{adapter}: still failing after the failover: {error:?}"),
        }
    }
}
