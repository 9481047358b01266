//! The fair lock (`RedisLock::fair`) against real servers, beyond the conformance checks (which every
//! input runs, see `tests/conformance.rs`):
//!
//! - waiters on separate clients of every input (as separate processes would be), started one after
//!   the other, are granted in that order, woken by release signals or polling as each client can;
//! - on a real 3-master Redis Cluster, through both cluster adapters: the fair checks of the suite,
//!   for keys with and without hash tags, and FIFO grants across the two clients (every script's keys
//!   in one slot, which the cluster would refuse otherwise).

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_core::testing::{self, Probe, fair_waiters};
use redlease::deadpool::{DeadpoolBackend, deadpool_redis};
use redlease::fred::{FredBackend, fred::prelude::*};
use redlease::{LockBackend, RedisLock};
use support::RedisServer;
use support::cluster::RedisCluster;
use support::inputs::{Input, Options};

/// Polls until `key` has `n` live waiters, for at most 10 s.
async fn until_waiting(backend: &Arc<dyn LockBackend>, key: &str, n: usize) {
    for _ in 0..1000 {
        if fair_waiters(backend, key).await.len() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{key} never had {n} waiters");
}

/// Starts one waiter per backend, each on a task of its own and only once the previous one is
/// queued, while a holder keeps the lock; then releases it and answers the order of the grants.
async fn grant_order(backends: &[Arc<dyn LockBackend>], key: &str) -> Vec<usize> {
    let observer = backends[0].clone();
    let lock = |backend: &Arc<dyn LockBackend>| {
        RedisLock::new(backend.clone(), key)
            .fair(true)
            .timeout(Duration::from_secs(2))
            .wait_timeout(Some(Duration::from_secs(30)))
    };
    let holder = lock(&observer).acquire().await.expect("acquire");
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (i, backend) in backends.iter().enumerate() {
        let (lock, order) = (lock(backend), order.clone());
        tasks.push(tokio::spawn(async move {
            let guard = lock.acquire().await.expect("a fair waiter acquires");
            order.lock().unwrap().push(i);
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert!(guard.release().await.expect("release"));
        }));
        until_waiting(&observer, key, i + 1).await;
    }
    assert!(holder.release().await.expect("release"));
    for task in tasks {
        task.await.expect("waiter task");
    }
    assert!(fair_waiters(&observer, key).await.is_empty());
    std::mem::take(&mut *order.lock().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_on_separate_clients_are_granted_in_arrival_order() {
    let server = RedisServer::start();
    let mut backends = Vec::new();
    // Two clients of each input, interleaved: signals (fred, deadpool pools) and polling (a single
    // redis-rs connection) in one queue.
    for _ in 0..2 {
        for input in Input::REDIS {
            backends.push(input.connect(&server.url(), Options::new()).await);
        }
    }
    let key = format!("{}fair-fifo", support::key_prefix());
    for round in 0..3 {
        let order = grant_order(&backends, &key).await;
        assert_eq!(
            order,
            (0..backends.len()).collect::<Vec<_>>(),
            "round {round}: granted in arrival order"
        );
    }
}

/// A fred client from a `redis-cluster://` URL naming every node.
async fn fred_cluster_client(cluster: &RedisCluster) -> Client {
    let hosts = cluster.hosts();
    let others: Vec<String> = hosts[1..]
        .iter()
        .map(|(host, port)| format!("node={host}:{port}"))
        .collect();
    let url = format!(
        "redis-cluster://{}:{}?{}",
        hosts[0].0,
        hosts[0].1,
        others.join("&")
    );
    let config = Config::from_url(&url).expect("url");
    let client = Builder::from_config(config)
        .set_policy(ReconnectPolicy::new_constant(0, 100))
        .build()
        .expect("fred cluster client");
    client.init().await.expect("fred connects to the cluster");
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fair_locks_work_on_a_cluster() {
    let cluster = RedisCluster::start(3, 0);
    let probe = cluster.probe();
    let backends: Vec<Arc<dyn LockBackend>> = vec![
        Arc::new(FredBackend::from(fred_cluster_client(&cluster).await)),
        Arc::new(DeadpoolBackend::from(
            deadpool_redis::cluster::Config::from_urls(cluster.urls())
                .create_pool(Some(deadpool_redis::Runtime::Tokio1))
                .expect("deadpool cluster pool"),
        )),
    ];
    let prefix = support::key_prefix();
    for (b, backend) in backends.iter().enumerate() {
        // A key without a hash tag (companions get digits that steer them into its slot) and one with.
        for shape in ["plain", "{tagged}"] {
            let key = |check: &str| format!("{prefix}{b}:{shape}:{check}");
            let probe: &dyn Probe = &probe;
            testing::fair_lock_grants_in_arrival_order(backend.clone(), probe, key("fifo")).await;
            testing::fair_try_acquire_fails_while_someone_waits(backend.clone(), probe, key("try"))
                .await;
            testing::fair_waiter_that_gives_up_leaves_the_queue(
                backend.clone(),
                probe,
                key("timeout"),
            )
            .await;
            testing::cancelled_fair_waiter_leaves_the_queue(backend.clone(), probe, key("cancel"))
                .await;
            testing::dead_fair_waiter_stops_blocking_within_its_ttl(
                backend.clone(),
                probe,
                key("dead"),
            )
            .await;
            testing::fair_fences_strictly_increase(backend.clone(), probe, key("fences")).await;
            testing::fair_and_plain_locks_exclude_each_other(backend.clone(), probe, key("plain"))
                .await;
        }
    }
    // Both cluster clients in one queue, twice each.
    let mixed: Vec<Arc<dyn LockBackend>> = backends.iter().chain(&backends).cloned().collect();
    let key = format!("{prefix}mixed");
    assert_eq!(grant_order(&mixed, &key).await, [0, 1, 2, 3]);
}
