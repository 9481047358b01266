//! Redis Cluster, against real clusters started by `support::cluster`, for both adapters: a fred
//! `Client` built from a `redis-cluster://` URL and a `deadpool_redis::cluster::Pool`.
//!
//! - every companion key lands in its key's slot, by the cluster's own `CLUSTER KEYSLOT`;
//! - the whole conformance suite passes unchanged on a cluster;
//! - scripts reach every master (each falls back from `NOSCRIPT` to `EVAL` by itself);
//! - held locks survive their slot moving to another master (`ASK`, then `MOVED`) while `hold` renews;
//! - `WAIT` runs on the master of the lock's slot (a stalled replica elsewhere does not matter).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use lock_core::testing::{CountingBackend, Probe, companion_keys, run_all};
use redlease::deadpool::{DeadpoolBackend, deadpool_redis};
use redlease::fred::{FredBackend, fred::prelude::*};
use redlease::{LockBackend, LockError, RedisLock, RwLock, script};
use support::cluster::{RedisCluster, masters_serving};

/// A fred client from a `redis-cluster://` URL naming every node: fred rediscovers the cluster only
/// through the nodes its configuration names (`ClusterDiscoveryPolicy::ConfigEndpoint`, the default),
/// so a client seeded with one node cannot follow a failover of that node.
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

fn deadpool_cluster_pool(cluster: &RedisCluster) -> deadpool_redis::cluster::Pool {
    deadpool_redis::cluster::Config::from_urls(cluster.urls())
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .expect("deadpool cluster pool")
}

async fn backends(cluster: &RedisCluster) -> Vec<(&'static str, Arc<dyn LockBackend>)> {
    vec![
        (
            "fred",
            Arc::new(FredBackend::from(fred_cluster_client(cluster).await)),
        ),
        (
            "deadpool",
            Arc::new(DeadpoolBackend::from(deadpool_cluster_pool(cluster))),
        ),
    ]
}

/// Keys whose braces make hash tags, empty tags, unclosed tags and stray closing braces.
fn tricky_keys() -> Vec<String> {
    let shapes = [
        "{a}",
        "a{}b",
        "a{b",
        "a}b",
        "a{}{b}",
        "}{",
        "{}",
        "{{a}}",
        "a{b}c}",
        "{}a{b}",
        "x{y}z{w}",
        "{",
        "}",
        "}}{{",
        "a{ }b",
        "plain",
        "with space",
        "ü{ñ}é",
        "a{}",
    ];
    let mut keys = Vec::new();
    for i in 0..15 {
        for shape in shapes {
            keys.push(format!("k{i}:{shape}"));
            keys.push(format!("{shape}:k{i}"));
        }
    }
    keys
}

#[test]
fn companion_keys_share_the_slot_redis_computes() {
    let started = Instant::now();
    let cluster = RedisCluster::start(3, 0);
    let keys = tricky_keys();
    let mut names: Vec<String> = Vec::new();
    for key in &keys {
        names.push(key.clone());
        names.extend(companion_keys(key));
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let slots = cluster.keyslots(&refs);
    for (chunk, slots) in names.chunks(4).zip(slots.chunks(4)) {
        for (i, what) in [
            (1, "fence counter"),
            (2, "release signal"),
            (3, "fence mark"),
        ] {
            assert_eq!(slots[0], slots[i], "{what} {} of {}", chunk[i], chunk[0]);
        }
    }
    println!(
        "{} keys and their companions checked in {:?}",
        keys.len(),
        started.elapsed()
    );
}

/// The conformance suite, unchanged, on a 3-master cluster, for both adapters; then every master runs
/// the lock scripts after its script cache was flushed, each falling back to `EVAL` on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_adapters_pass_the_suite_and_reach_every_master() {
    let cluster = RedisCluster::start(3, 0);
    let probe = cluster.probe();
    for (name, backend) in backends(&cluster).await {
        let started = Instant::now();
        run_all(
            backend.clone(),
            &probe,
            &format!("{}{name}:", support::key_prefix()),
        )
        .await;
        println!(
            "{name}: conformance on a cluster in {:?}",
            started.elapsed()
        );

        // Keys spread over all masters, scripts forgotten everywhere.
        // 48 random keys miss one of 3 masters with probability 3 * (2/3)^48, about 1e-8.
        let keys: Vec<String> = (0..48)
            .map(|i| format!("{}{name}:spread:{i}", support::key_prefix()))
            .collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        assert_eq!(masters_serving(&cluster, &refs).len(), 3, "{name}");
        probe.flush_scripts().await;
        for key in &keys {
            let guard = RedisLock::new(backend.clone(), key.clone())
                .fencing(true)
                .acquire()
                .await
                .unwrap_or_else(|e| panic!("{name}: acquire {key}: {e:?}"));
            assert!(guard.renew().await.expect("renew"), "{name}");
            assert!(guard.extend(Duration::from_secs(1)).await.expect("extend"));
            assert!(guard.fenced_set(&format!("{key}:res"), "v").await.unwrap());
            assert!(guard.release().await.expect("release"), "{name}");
        }
        for reply in probe.on_all_masters(&["SCRIPT", "EXISTS", script::RENEW.sha1()]) {
            assert_eq!(
                reply.as_deref(),
                Ok("1"),
                "{name}: every master learnt the script"
            );
        }
    }
}

/// Locks on one slot are held (`hold` renewing a 600 ms TTL) while the slot moves to another master:
/// first `MIGRATING`/`IMPORTING` with the keys still on the source, then the keys moved (the source
/// answers `ASK`, and the target has never seen the scripts), then the slot handed over (`MOVED`).
/// Every hold keeps its lock throughout, and releasing afterwards confirms ownership on the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_survive_a_slot_migration() {
    let cluster = Arc::new(RedisCluster::start(3, 0));
    let probe = cluster.probe();
    for (name, inner) in backends(&cluster).await {
        // Counts the holds' renewals only; the churning worker below uses `inner` directly.
        let counting = Arc::new(CountingBackend::new(inner.clone()));
        let backend: Arc<dyn LockBackend> = counting.clone();
        let tag = format!("{{{}{name}}}", support::key_prefix());
        let slot = cluster.keyslot(&tag);
        let source = cluster.master_of_slot(slot);
        let target = cluster
            .topology()
            .into_iter()
            .find(|n| n.master && n.id != source.id)
            .expect("another master");

        let ttl = Duration::from_millis(600);
        let mut holds = Vec::new();
        for i in 0..4 {
            let lock = RedisLock::new(backend.clone(), format!("{tag}:lock{i}"))
                .timeout(ttl)
                .fencing(i % 2 == 0);
            let guard = lock.acquire().await.expect("acquire");
            holds.push(tokio::spawn(async move {
                let held = guard.hold(tokio::time::sleep(Duration::from_secs(4))).await;
                (guard, held)
            }));
        }
        // Meanwhile another worker keeps acquiring and releasing a lock in the same slot: new keys are
        // created on the importing master (through `ASK`) and released wherever they are.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let churn = {
            let stop = stop.clone();
            let lock = RedisLock::new(inner.clone(), format!("{tag}:churn")).timeout(ttl);
            tokio::spawn(async move {
                let mut rounds = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let guard = lock.acquire().await.expect("acquire during the migration");
                    assert!(guard.release().await.expect("release during the migration"));
                    rounds += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                rounds
            })
        };

        let phases = {
            let cluster = cluster.clone();
            let (tag, target) = (tag.clone(), target.clone());
            let counting = counting.clone();
            tokio::task::spawn_blocking(move || {
                let source_server = cluster.server(source.port);
                let renewals = || counting.script_calls();
                let mut seen = Vec::new();
                std::thread::sleep(Duration::from_millis(400));
                let migration = cluster.begin_migration(slot, &target);
                let before = renewals();
                std::thread::sleep(Duration::from_millis(800));
                seen.push(("migrating", renewals() - before));
                let moved = migration.move_keys();
                assert!(moved >= 6, "4 locks and 2 fence counters, moved {moved}");
                let probe_key = format!("{tag}:lock0");
                let ask = source_server.command(&["GET", &probe_key]).unwrap_err();
                assert!(ask.starts_with("-ASK "), "{ask}");
                let before = renewals();
                std::thread::sleep(Duration::from_millis(800));
                seen.push(("ask", renewals() - before));
                migration.finish();
                let moved = source_server.command(&["GET", &probe_key]).unwrap_err();
                assert!(moved.starts_with("-MOVED "), "{moved}");
                let before = renewals();
                std::thread::sleep(Duration::from_millis(800));
                seen.push(("moved", renewals() - before));
                seen
            })
        };
        let seen = phases.await.expect("migration steps");
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let rounds = churn.await.expect("acquisitions during the migration");
        assert!(rounds > 20, "{name}: only {rounds} acquisitions");
        println!("{name}: renewals per phase {seen:?}, {rounds} acquisitions meanwhile");
        let mut results = Vec::new();
        for hold in holds {
            results.push(hold.await.expect("hold task"));
        }
        for (_, held) in &results {
            if let Err(e) = held {
                panic!("{name}: the lock was lost during the migration: {e}");
            }
        }
        // Each lease needs a renewal at least once a TTL (600 ms) to survive an 800 ms phase; the four
        // share a slot and a TTL, so the renewal scheduler renews them together, about every 180 ms.
        for (phase, renewals) in &seen {
            assert!(
                *renewals >= 2,
                "{name}: only {renewals} renewals while {phase}"
            );
        }
        for (guard, _) in results {
            assert_eq!(
                probe.get(guard.key()).await.as_deref(),
                Some(guard.token()),
                "{name}"
            );
            assert!(guard.release().await.expect("release"), "{name}");
        }
        let keys_on_target = cluster
            .server(target.port)
            .command(&["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()])
            .unwrap();
        assert_eq!(
            keys_on_target, "2",
            "{name}: only the fence counters remain"
        );
    }
}

/// With replica acknowledgement, `WAIT` runs on the master of the lock's slot: with one master's
/// replica frozen, locks on that master are refused as not replicated (and released), and renewing
/// there fails as not replicated, while locks on the other masters, and renewals there, succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_runs_on_the_master_of_the_locks_slot() {
    let cluster = RedisCluster::start(3, 1);
    let probe = cluster.probe();
    let masters: Vec<_> = cluster
        .topology()
        .into_iter()
        .filter(|n| n.master)
        .collect();
    // One hash tag per master.
    let prefix = support::key_prefix();
    let mut tags: Vec<Option<String>> = vec![None; masters.len()];
    for i in 0.. {
        let tag = format!("{{{prefix}wait:{i}}}");
        let owner = cluster.master_of_slot(cluster.keyslot(&tag));
        let index = masters.iter().position(|m| m.id == owner.id).unwrap();
        tags[index].get_or_insert(tag);
        if tags.iter().all(Option::is_some) {
            break;
        }
    }
    let tags: Vec<String> = tags.into_iter().map(Option::unwrap).collect();
    let frozen = cluster.replicas_of(&masters[0].id)[0];
    let wait = Duration::from_millis(300);

    for (name, backend) in backends(&cluster).await {
        let lock = |tag: &str, which: &str| {
            RedisLock::new(backend.clone(), format!("{tag}:{name}:{which}"))
                .replicas(1, wait)
                .fencing(name == "fred")
                .wait_timeout(Some(Duration::ZERO))
        };
        let mut held = Vec::new();
        for tag in &tags {
            held.push(
                lock(tag, "held")
                    .acquire()
                    .await
                    .expect("acquire, replicated"),
            );
        }

        frozen.pause();
        let started = Instant::now();
        let refused = lock(&tags[0], "fresh").try_acquire().await;
        let renewed = held[0].renew().await;
        let mut elsewhere = Vec::new();
        for tag in &tags[1..] {
            elsewhere.push(lock(tag, "fresh").acquire().await);
        }
        let renewed_elsewhere = held[1].renew().await;
        frozen.resume();

        match refused {
            Err(LockError::NotReplicated {
                key,
                wanted: 1,
                acked: 0,
            }) => {
                assert_eq!(key, format!("{}:{name}:fresh", tags[0]));
                assert!(started.elapsed() >= wait);
            }
            other => panic!("{name}: expected NotReplicated, got {other:?}"),
        }
        assert_eq!(
            probe.get(&format!("{}:{name}:fresh", tags[0])).await,
            None,
            "{name}: the unreplicated acquisition was released"
        );
        assert!(
            matches!(renewed, Err(LockError::NotReplicated { acked: 0, .. })),
            "{name}: {renewed:?}"
        );
        for guard in elsewhere {
            let guard = guard.unwrap_or_else(|e| panic!("{name}: on a healthy master: {e:?}"));
            assert!(guard.release().await.expect("release"), "{name}");
        }
        assert!(
            renewed_elsewhere.expect("renew on a healthy master"),
            "{name}"
        );
        for guard in held {
            assert!(guard.release().await.expect("release"), "{name}");
        }
    }
}

/// A master fails over to its replica while three locks in its slots stand, as in `tests/sentinel.rs`:
/// the lock acquired with `replicas(1, ..)` survives on the promoted replica; the one whose write never
/// reached the replica (frozen and cut off) is lost, and another worker takes it; the acquisition asking
/// for an acknowledgement then was refused and released. One master for each adapter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_keeps_only_acknowledged_locks() {
    let mut cluster = RedisCluster::start(3, 1);
    let masters: Vec<_> = cluster
        .topology()
        .into_iter()
        .filter(|n| n.master)
        .collect();
    let prefix = support::key_prefix();
    let wait = Duration::from_millis(300);
    let ttl = Duration::from_secs(30);
    for ((name, backend), master) in backends(&cluster).await.into_iter().zip(&masters) {
        // A hash tag in this master's slots.
        let tag = (0..)
            .map(|i| format!("{{{prefix}{name}:{i}}}"))
            .find(|tag| cluster.master_of_slot(cluster.keyslot(tag)).id == master.id)
            .unwrap();
        let key = |what: &str| format!("{tag}:{what}");
        let replica_port = cluster.replicas_of(&master.id)[0].port();

        let safe = RedisLock::new(backend.clone(), key("safe"))
            .timeout(ttl)
            .replicas(1, wait)
            .acquire()
            .await
            .expect("acquire, acknowledged");

        cluster.server(replica_port).pause();
        let killed = cluster
            .server(master.port)
            .command(&["CLIENT", "KILL", "TYPE", "replica"])
            .expect("CLIENT KILL");
        assert_eq!(killed, "1", "{name}: the replication link is cut");
        let unsafe_guard = RedisLock::new(backend.clone(), key("unsafe"))
            .timeout(ttl)
            .acquire()
            .await
            .expect("acquire without acknowledgement");
        let refused = RedisLock::new(backend.clone(), key("refused"))
            .replicas(1, wait)
            .try_acquire()
            .await;
        assert!(
            matches!(
                refused,
                Err(LockError::NotReplicated {
                    wanted: 1,
                    acked: 0,
                    ..
                })
            ),
            "{name}: {refused:?}"
        );

        cluster.kill(master.port);
        cluster.server(replica_port).resume();
        let started = Instant::now();
        cluster.wait_for_failover(replica_port);
        println!("{name}: cluster failover took {:?}", started.elapsed());
        let probe = cluster.probe();
        assert_eq!(
            probe.get(&key("safe")).await.as_deref(),
            Some(safe.token()),
            "{name}: the acknowledged lock survived"
        );
        assert_eq!(probe.get(&key("unsafe")).await, None, "{name}: lost");
        assert_eq!(probe.get(&key("refused")).await, None, "{name}: released");

        let deadline = Instant::now() + Duration::from_secs(20);
        let owner = loop {
            match safe.is_owner().await {
                Ok(owner) => break owner,
                Err(e) if Instant::now() < deadline => {
                    println!("{name}: not yet following the failover: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("{name}: {e:?}"),
            }
        };
        assert!(owner, "{name}: still the owner on the promoted replica");
        let thief = RedisLock::new(backend.clone(), key("unsafe"))
            .try_acquire()
            .await
            .expect("try_acquire")
            .expect("the lost lock is free for anyone");
        assert!(!unsafe_guard.is_owner().await.expect("is_owner"), "{name}");
        assert!(thief.release().await.expect("release"));
        assert!(safe.release().await.expect("release"), "{name}");
    }
}

/// The read-write lock on a cluster, for both adapters and keys of every brace shape: every one of its
/// scripts (a read, a writer that waits and gives up, renew, extend, release, a write and its
/// downgrade) runs with all its keys in the key's slot (besides the suite's read-write checks, which
/// `both_adapters_pass_the_suite_and_reach_every_master` runs on a cluster too); a companion in another slot would be refused
/// (`CROSSSLOT`), and a waiting writer's key is one of them. Nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rwlock_runs_for_keys_of_every_shape() {
    let cluster = RedisCluster::start(3, 0);
    let probe = cluster.probe();
    for (name, backend) in backends(&cluster).await {
        // One key of each brace shape (`tricky_keys` has hundreds: each costs a writer's wait here).
        for shape in [
            "plain", "{a}", "a{}b", "a{b", "a}b", "{}", "{", "}}{{", "x{y}z{w}",
        ] {
            let key = format!("{shape}:rw:{name}");
            let lock = RwLock::new(backend.clone(), key.clone())
                .fencing(true)
                .wait_timeout(Some(Duration::from_secs(2)));
            let reader = lock
                .read()
                .await
                .unwrap_or_else(|e| panic!("{name}: read {key}: {e:?}"));
            let gave_up = lock
                .clone()
                .wait_timeout(Some(Duration::from_millis(200)))
                .write()
                .await;
            assert!(
                matches!(gave_up, Err(LockError::Timeout { .. })),
                "{name}: {key}: {gave_up:?}"
            );
            assert!(reader.renew().await.expect("renew"), "{name}: {key}");
            assert!(reader.extend(Duration::from_secs(1)).await.expect("extend"));
            let fence = reader.fence();
            assert!(reader.release().await.expect("release"), "{name}: {key}");
            let writer = lock
                .write()
                .await
                .unwrap_or_else(|e| panic!("{name}: write {key}: {e:?}"));
            assert!(writer.fence() > fence, "{name}: {key}");
            let reader = writer.downgrade().await.expect("downgrade");
            assert!(reader.is_owner().await.expect("is_owner"), "{name}: {key}");
            assert!(reader.release().await.expect("release"), "{name}: {key}");
            assert_eq!(
                probe.members(&key).await.expect("ZRANGE"),
                [],
                "{name}: {key}: no holder left"
            );
        }
    }
}
