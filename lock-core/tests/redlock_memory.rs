//! Redlock over independent in-memory masters, with injected faults: quorum arithmetic, per-node errors,
//! bounded rounds, release of partial locks, validity, fencing, guard operations and `hold`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::{Either, select};
use lock_core::memory::MemoryBackend;
use lock_core::testing::{CountingBackend, Fault, FaultyBackend, companion_keys};
use lock_core::{
    BackendError, LockBackend, LockError, NodeError, Redlock, RedlockGuard, Script, ScriptValue,
};

/// Room for a noisy 2-core machine on top of the bounds under test.
const SLACK: Duration = Duration::from_millis(1500);
const KEY: &str = "redlock:test";
/// The fence counter of `KEY`, as lock-core names it.
fn counter_key() -> String {
    let [counter, ..] = companion_keys(KEY);
    counter
}

/// `n` independent masters: the stores (to inspect and tamper with), and fault injectors around them.
struct Cluster {
    stores: Vec<MemoryBackend>,
    faults: Vec<Arc<FaultyBackend<MemoryBackend>>>,
}

impl Cluster {
    fn new(n: usize) -> Self {
        Self::of((0..n).map(|_| MemoryBackend::new()).collect())
    }

    /// Masters with the given stores (say, with their clocks set apart).
    fn of(stores: Vec<MemoryBackend>) -> Self {
        let faults = stores
            .iter()
            .map(|store| Arc::new(FaultyBackend::new(store.clone())))
            .collect();
        Self { stores, faults }
    }

    fn nodes(&self) -> Vec<Arc<dyn LockBackend>> {
        self.faults
            .iter()
            .map(|node| node.clone() as Arc<dyn LockBackend>)
            .collect()
    }

    fn lock(&self) -> Redlock {
        Redlock::new(self.nodes(), KEY)
    }

    fn fault(&self, nodes: &[usize], fault: Fault) {
        for &node in nodes {
            self.faults[node].set_fault(fault);
        }
    }

    /// Which masters hold `token`.
    fn holders(&self, token: &str) -> Vec<usize> {
        (0..self.stores.len())
            .filter(|&i| self.stores[i].get(KEY).as_deref() == Some(token))
            .collect()
    }

    /// Which masters hold any value under the key.
    fn occupied(&self) -> Vec<usize> {
        (0..self.stores.len())
            .filter(|&i| self.stores[i].get(KEY).is_some())
            .collect()
    }

    fn take_over(&self, nodes: &[usize], value: &str) {
        for &node in nodes {
            self.stores[node].set(KEY, value, Duration::from_secs(30));
        }
    }

    fn counter(&self, node: usize) -> u64 {
        self.stores[node]
            .get(&counter_key())
            .expect("counter exists")
            .parse()
            .unwrap()
    }
}

fn failed_nodes(errors: &[NodeError]) -> Vec<usize> {
    errors.iter().map(|e| e.node).collect()
}

async fn sleep(duration: Duration) {
    tokio::time::sleep(duration).await;
}

async fn eventually(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn types_are_send_sync_debug_and_futures_are_send() {
    fn assert_traits<T: Send + Sync + std::fmt::Debug + 'static>() {}
    fn assert_send<T: Send>(_: &T) {}
    assert_traits::<Redlock>();
    assert_traits::<RedlockGuard>();

    let lock = Redlock::new(vec![MemoryBackend::new(), MemoryBackend::new()], KEY);
    assert_send(&lock.acquire());
    assert_send(&lock.try_acquire());
    assert_send(&lock.run(async |_: &RedlockGuard| 1));
    let guard = futures::executor::block_on(lock.acquire()).unwrap();
    assert_send(&guard.hold(async {}));
    assert_send(&guard.renew());
    assert_send(&guard.extend(Duration::from_secs(1)));
    assert_send(&guard.is_owner());
    assert!(format!("{lock:?}").contains("redlock:test"));
    assert!(format!("{guard:?}").contains(guard.token()));
    assert_send(&guard.release());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_of_five_survives_two_failing_nodes() {
    let cluster = Cluster::new(5);
    cluster.fault(&[1, 3], Fault::Error);
    let lock = cluster.lock();
    assert_eq!(lock.quorum(), 3);
    let guard = lock.acquire().await.expect("3 of 5 is a majority");
    assert_eq!(cluster.holders(guard.token()), [0, 2, 4]);
    assert_eq!(guard.key(), KEY);
    assert!(guard.is_owner().await.unwrap());
    assert!(guard.renew().await.unwrap());
    assert!(guard.extend(Duration::from_secs(5)).await.unwrap());
    assert!(guard.valid_for() > Duration::from_secs(30));
    assert!(guard.release().await.unwrap());
    assert!(cluster.occupied().is_empty());

    // Two hung masters too: the round waits for them only up to the node timeout.
    cluster.fault(&[1, 3], Fault::Never);
    let lock = lock.node_timeout(Duration::from_millis(50));
    let started = Instant::now();
    let guard = lock.acquire().await.expect("3 of 5 is a majority");
    assert!(started.elapsed() < Duration::from_millis(50) + SLACK);
    assert_eq!(cluster.holders(guard.token()), [0, 2, 4]);
    assert!(guard.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_failing_nodes_fail_with_a_quorum_error_naming_them() {
    let cluster = Cluster::new(5);
    cluster.fault(&[0, 2, 4], Fault::Error);
    let wait = Duration::from_millis(300);
    let lock = cluster.lock().wait_timeout(Some(wait));
    let started = Instant::now();
    let err = lock.acquire().await.unwrap_err();
    let took = started.elapsed();
    assert!(took >= wait && took < wait + SLACK, "took {took:?}");
    match &err {
        LockError::Quorum {
            key,
            votes,
            needed,
            errors,
        } => {
            assert_eq!(key, KEY);
            assert_eq!((*votes, *needed), (2, 3));
            assert_eq!(failed_nodes(errors), [0, 2, 4]);
            assert!(errors.iter().all(|e| e.error.is_transient()));
        }
        other => panic!("expected Quorum, got {other:?}"),
    }
    assert!(err.is_transient());
    let message = err.to_string();
    for node in ["node 0:", "node 2:", "node 4:"] {
        assert!(message.contains(node), "{message}");
    }
    assert!(message.contains("injected failure"), "{message}");
    // The two healthy masters granted in every round, and were released after every round.
    assert!(cluster.occupied().is_empty());

    // One round only: try_acquire and a zero wait report the same.
    let err = cluster.lock().try_acquire().await.unwrap_err();
    assert!(matches!(err, LockError::Quorum { votes: 2, .. }), "{err:?}");
    let err = lock
        .clone()
        .wait_timeout(Some(Duration::ZERO))
        .acquire()
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::Quorum { .. }), "{err:?}");
    // Waiting forever does not hide an outage of a majority behind endless retries.
    let started = Instant::now();
    let err = lock.wait_timeout(None).acquire().await.unwrap_err();
    assert!(matches!(err, LockError::Quorum { .. }), "{err:?}");
    assert!(started.elapsed() < SLACK);
    assert!(cluster.occupied().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_lock_times_out_even_with_a_failed_node() {
    let cluster = Cluster::new(5);
    cluster.take_over(&[0, 1, 2], "someone-else");
    cluster.fault(&[3], Fault::Error);
    // 1 vote + 1 error < 3: the answers alone rule a majority out, so it is busy, not an outage.
    let lock = cluster
        .lock()
        .wait_timeout(Some(Duration::from_millis(100)));
    let err = lock.acquire().await.unwrap_err();
    assert!(
        matches!(&err, LockError::Timeout { key, .. } if key == KEY),
        "{err:?}"
    );
    assert!(lock.try_acquire().await.unwrap().is_none());
    assert_eq!(cluster.occupied(), [0, 1, 2], "only the foreign holder");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_node_never_stretches_a_round() {
    let bound = Duration::from_millis(100);
    let cluster = Cluster::new(5);
    cluster.fault(&[4], Fault::Never);
    let lock = cluster
        .lock()
        .timeout(Duration::from_secs(10))
        .node_timeout(bound);
    let started = Instant::now();
    let guard = lock.acquire().await.unwrap();
    let took = started.elapsed();
    assert!(took >= bound && took < bound + SLACK, "took {took:?}");
    // Every guard operation is bounded the same way.
    for _ in 0..3 {
        let started = Instant::now();
        assert!(guard.renew().await.unwrap());
        assert!(started.elapsed() < bound + SLACK);
    }
    let started = Instant::now();
    assert!(guard.release().await.unwrap());
    assert!(started.elapsed() < bound + SLACK);

    // Three hung masters: one round plus the release of its partial locks, each bounded.
    cluster.fault(&[1, 2, 4], Fault::Never);
    let started = Instant::now();
    let err = lock.try_acquire().await.unwrap_err();
    let took = started.elapsed();
    assert!(took < 2 * bound + SLACK, "took {took:?}");
    match err {
        LockError::Quorum { votes, errors, .. } => {
            assert_eq!(votes, 2);
            assert_eq!(failed_nodes(&errors), [1, 2, 4]);
            assert!(errors.iter().all(|e| e.error.backend() == "redlock"));
            let cause = std::error::Error::source(&errors[0].error).unwrap();
            assert_eq!(cause.to_string(), "no reply within 100ms");
        }
        other => panic!("expected Quorum, got {other:?}"),
    }
    assert!(cluster.occupied().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_rounds_release_their_partial_locks_everywhere() {
    let cluster = Cluster::new(5);
    cluster.take_over(&[0, 1, 2], "foreign");
    let lock = cluster.lock();
    assert!(lock.try_acquire().await.unwrap().is_none());
    assert_eq!(
        cluster.occupied(),
        [0, 1, 2],
        "3 and 4 granted, then released"
    );
    let err = lock
        .clone()
        .wait_timeout(Some(Duration::from_millis(200)))
        .acquire()
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::Timeout { .. }), "{err:?}");
    assert_eq!(cluster.occupied(), [0, 1, 2], "released after every round");

    // Our own partial locks of the failed rounds do not block the next round.
    cluster.stores[2].delete(KEY);
    let guard = lock
        .try_acquire()
        .await
        .unwrap()
        .expect("2, 3 and 4 are free");
    assert_eq!(cluster.holders(guard.token()), [2, 3, 4]);
    assert!(guard.release().await.unwrap());
    assert_eq!(cluster.occupied(), [0, 1]);

    // A master that applied our request but answered too late is released too: in the round's
    // release, or in the background when that reply is also late.
    cluster.fault(&[4], Fault::DelayReply(Duration::from_millis(300)));
    let err = lock
        .clone()
        .node_timeout(Duration::from_millis(50))
        .try_acquire()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LockError::Quorum { votes: 2, errors, .. } if failed_nodes(errors) == [4]),
        "{err:?}"
    );
    assert!(
        eventually(SLACK, || cluster.occupied() == [0, 1]).await,
        "{:?}",
        cluster.occupied()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_wait_makes_exactly_one_round() {
    let stores: Vec<MemoryBackend> = (0..5).map(|_| MemoryBackend::new()).collect();
    let counted: Vec<Arc<CountingBackend<MemoryBackend>>> = stores
        .iter()
        .map(|s| Arc::new(CountingBackend::new(s.clone())))
        .collect();
    for store in &stores[..3] {
        store.set(KEY, "foreign", Duration::from_secs(30));
    }
    let lock = Redlock::new(counted.clone(), KEY).wait_timeout(Some(Duration::ZERO));
    let err = lock.acquire().await.unwrap_err();
    assert!(matches!(err, LockError::Timeout { .. }), "{err:?}");
    for node in &counted {
        // One acquisition request and one release per master, and (first contact) the script asking
        // which server it is.
        assert_eq!((node.set_nx_calls(), node.script_calls()), (1, 2));
    }
    // Known from then on: a second round asks no more.
    let err = lock.acquire().await.unwrap_err();
    assert!(matches!(err, LockError::Timeout { .. }), "{err:?}");
    for node in &counted {
        assert_eq!((node.set_nx_calls(), node.script_calls()), (2, 3));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validity_is_the_ttl_less_the_round_and_the_drift() {
    let cluster = Cluster::new(5);
    let ttl = Duration::from_secs(1);
    let lock = cluster
        .lock()
        .timeout(ttl)
        .node_timeout(Duration::from_millis(900));
    let guard = lock.acquire().await.unwrap();
    // 1000 ms − 0 − (10 ms + 2 ms).
    let fresh = guard.valid_for();
    assert!(fresh <= Duration::from_millis(988), "{fresh:?}");
    assert!(fresh > Duration::from_millis(988) - SLACK / 3, "{fresh:?}");
    guard.release().await.unwrap();

    // A slow majority: validity is measured from before sending, not from the replies.
    cluster.fault(&[0, 1, 2], Fault::Delay(Duration::from_millis(200)));
    let guard = lock.acquire().await.unwrap();
    let slow = guard.valid_for();
    assert!(slow <= Duration::from_millis(788), "{slow:?}");
    assert!(slow > Duration::from_millis(788) - SLACK / 3, "{slow:?}");
    guard.release().await.unwrap();

    // A round that used up the whole validity does not acquire, and leaves nothing behind; it is
    // not an outage, since every master answered.
    cluster.fault(&[0, 1, 2, 3, 4], Fault::Delay(Duration::from_millis(990)));
    let lock = lock.node_timeout(Duration::from_millis(999));
    assert!(lock.try_acquire().await.unwrap().is_none());
    cluster.fault(&[0, 1, 2, 3, 4], Fault::None);
    assert!(cluster.occupied().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ownership_is_claimed_after_the_validity_ran_out() {
    let stores: Vec<MemoryBackend> = (0..3).map(|_| MemoryBackend::new()).collect();
    let counted: Vec<Arc<CountingBackend<MemoryBackend>>> = stores
        .iter()
        .map(|s| Arc::new(CountingBackend::new(s.clone())))
        .collect();
    let lock = Redlock::new(counted.clone(), KEY).timeout(Duration::from_millis(40));
    let guard = lock.acquire().await.unwrap();
    // Keep the keys alive on the masters behind the guard's back: only the local validity runs out.
    for store in &stores {
        store.set(KEY, guard.token(), Duration::from_secs(30));
    }
    sleep(Duration::from_millis(60)).await;
    assert_eq!(guard.valid_for(), Duration::ZERO);
    let calls: usize = counted.iter().map(|c| c.script_calls()).sum();
    assert!(!guard.is_owner().await.unwrap());
    assert_eq!(
        counted.iter().map(|c| c.script_calls()).sum::<usize>(),
        calls,
        "nothing is asked"
    );
    assert!(!guard.renew().await.unwrap());
    assert!(!guard.extend(Duration::from_secs(10)).await.unwrap());
    assert_eq!(
        counted.iter().map(|c| c.script_calls()).sum::<usize>(),
        calls,
        "nothing is asked"
    );
    // The masters still hold the keys, but the guard no longer claims the lock; it still cleans up.
    assert!(!guard.release().await.unwrap());
    assert!(
        stores.iter().all(|s| s.get(KEY).is_none()),
        "released anyway"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_operations_count_answers_and_errors() {
    let cluster = Cluster::new(5);
    let lock = cluster.lock().timeout(Duration::from_secs(10));

    // The answers alone rule a majority out: false.
    let guard = lock.acquire().await.unwrap();
    cluster.take_over(&[0, 1, 2], "thief");
    assert!(!guard.is_owner().await.unwrap());
    assert!(!guard.renew().await.unwrap());
    assert!(!guard.extend(Duration::from_secs(1)).await.unwrap());
    assert!(!guard.release().await.unwrap());
    assert_eq!(cluster.holders("thief"), [0, 1, 2], "never touched");
    assert_eq!(cluster.occupied(), [0, 1, 2], "ours released on 3 and 4");
    for store in &cluster.stores {
        store.delete(KEY);
    }

    // Failed masters decided: an error naming them.
    let guard = lock.acquire().await.unwrap();
    cluster.take_over(&[0], "thief");
    cluster.fault(&[2, 3], Fault::Error);
    for result in [
        guard.is_owner().await,
        guard.renew().await,
        guard.extend(Duration::from_secs(1)).await,
    ] {
        match result {
            Err(LockError::Quorum { votes, errors, .. }) => {
                assert_eq!(votes, 2);
                assert_eq!(failed_nodes(&errors), [2, 3]);
            }
            other => panic!("expected Quorum, got {other:?}"),
        }
    }
    // Three confirmations are enough whatever the others say.
    cluster.fault(&[2], Fault::None);
    assert!(guard.is_owner().await.unwrap());
    assert!(guard.renew().await.unwrap());
    let err = guard.extend(Duration::ZERO).await.unwrap_err();
    assert!(matches!(
        err,
        LockError::InvalidArgument {
            argument: "extend",
            ..
        }
    ));
    cluster.fault(&[3], Fault::None);
    assert!(guard.release().await.unwrap());
    assert_eq!(cluster.occupied(), [0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validity_follows_the_majority_that_actually_holds_the_lock() {
    let cluster = Cluster::new(5);
    let ttl = Duration::from_secs(1);
    let lock = cluster.lock().timeout(ttl);
    let guard = lock.acquire().await.unwrap();
    let acquired = Instant::now();
    sleep(Duration::from_millis(300)).await;

    // Renewed on 0, 1, 2 only: a majority, so the validity starts over.
    cluster.fault(&[3, 4], Fault::Error);
    assert!(guard.renew().await.unwrap());
    assert!(guard.valid_for() > Duration::from_millis(900));

    // Extended on 2, 3, 4 only: 3 and 4 still expire at the acquisition's TTL plus `by`, so
    // a majority holds the lock only until then, not until the renewal's TTL plus `by`.
    cluster.fault(&[3, 4], Fault::None);
    cluster.fault(&[0, 1], Fault::Error);
    let by = Duration::from_secs(5);
    assert!(guard.extend(by).await.unwrap());
    let valid = guard.valid_for();
    let ceiling = (ttl + by).saturating_sub(acquired.elapsed());
    assert!(valid <= ceiling, "{valid:?} > {ceiling:?}");
    assert!(valid > ceiling - SLACK / 3, "{valid:?}");
    cluster.fault(&[0, 1], Fault::None);
    assert!(guard.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_increase_across_holders_even_when_counters_diverge() {
    let cluster = Cluster::new(5);
    let lock = cluster.lock().fencing(true);
    let unfenced = cluster.lock().acquire().await.unwrap();
    assert_eq!(unfenced.fence(), None);
    unfenced.release().await.unwrap();

    let first = lock.acquire().await.unwrap();
    let f1 = first.fence().expect("fencing is on");
    first.release().await.unwrap();

    // Masters 0 and 1 run ahead (say they served many acquisitions the others missed): by 300 ms of
    // microseconds, more than this test takes to get to the next acquisition, so their counters are
    // still ahead of every clock then.
    let lead = 300_000;
    for node in [0, 1] {
        cluster.stores[node].set(
            &counter_key(),
            &(f1 + lead).to_string(),
            Duration::from_secs(60),
        );
    }
    let ahead = lock.acquire().await.unwrap();
    let f2 = ahead.fence().unwrap();
    // The largest answer of the granting masters: a counter ahead, or a clock that passed it.
    assert!(f2 > f1 + lead, "{f2} after {f1} + {lead}");
    // Every granting master's counter was raised to the fence before the acquisition succeeded.
    for node in 0..5 {
        assert!(cluster.counter(node) >= f2, "node {node}");
    }
    // Renewals and extensions keep the fence.
    assert!(ahead.renew().await.unwrap());
    assert!(ahead.extend(Duration::from_secs(1)).await.unwrap());
    assert_eq!(ahead.fence(), Some(f2));
    ahead.release().await.unwrap();

    // Now the masters that ran ahead are unreachable: the lagging majority still issues a larger fence.
    cluster.fault(&[0, 1], Fault::Error);
    let lagging = lock.acquire().await.unwrap();
    let f3 = lagging.fence().unwrap();
    assert!(f3 > f2, "{f3} > {f2}");
    lagging.release().await.unwrap();
    cluster.fault(&[0, 1], Fault::None);

    // Masters that lost their counters (restarted empty) restart them from the clock in microseconds,
    // which has passed every fence by now.
    sleep(Duration::from_micros(lead) + Duration::from_millis(50)).await;
    for node in [2, 3, 4] {
        cluster.stores[node].delete(&counter_key());
    }
    cluster.fault(&[0], Fault::Error);
    let after_loss = lock.acquire().await.unwrap();
    assert!(after_loss.fence().unwrap() > f3);
    after_loss.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configurations_send_nothing() {
    let counted: Vec<Arc<CountingBackend<MemoryBackend>>> = (0..3)
        .map(|_| Arc::new(CountingBackend::new(MemoryBackend::new())))
        .collect();
    let nodes = || counted.clone();
    let empty: Vec<MemoryBackend> = Vec::new();
    let cases: Vec<(Redlock, &str)> = vec![
        (Redlock::new(empty, KEY), "nodes"),
        (Redlock::new(nodes(), ""), "key"),
        (
            Redlock::new(nodes(), KEY).timeout(Duration::ZERO),
            "timeout",
        ),
        (
            Redlock::new(nodes(), KEY).node_timeout(Duration::ZERO),
            "node_timeout",
        ),
        (
            Redlock::new(nodes(), KEY)
                .timeout(Duration::from_millis(100))
                .node_timeout(Duration::from_millis(100)),
            "node_timeout",
        ),
        (
            Redlock::new(nodes(), KEY).backoff(lock_core::Backoff::new(
                Duration::ZERO,
                Duration::from_millis(1),
            )),
            "backoff",
        ),
        (
            Redlock::new(nodes(), KEY).max_hold(Duration::ZERO),
            "max_hold",
        ),
    ];
    for (lock, expected) in cases {
        for result in [
            lock.acquire().await.map(|_| ()),
            lock.try_acquire().await.map(|_| ()),
        ] {
            match result {
                Err(LockError::InvalidArgument { argument, .. }) => assert_eq!(argument, expected),
                other => panic!("{expected}: expected InvalidArgument, got {other:?}"),
            }
        }
    }
    let sent: usize = counted
        .iter()
        .map(|node| node.script_calls() + node.set_nx_calls())
        .sum();
    assert_eq!(sent, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_renews_through_the_majority() {
    let cluster = Cluster::new(5);
    cluster.fault(&[4], Fault::Error);
    let lock = cluster.lock().timeout(Duration::from_millis(300));
    let guard = lock.acquire().await.unwrap();
    let output = guard.hold(sleep(Duration::from_millis(1000))).await;
    assert!(output.is_ok(), "{output:?}");
    assert!(guard.is_owner().await.unwrap());
    assert_eq!(cluster.holders(guard.token()), [0, 1, 2, 3]);
    assert!(guard.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_reports_a_majority_takeover_and_drops_the_work() {
    let cluster = Cluster::new(5);
    let lock = cluster.lock().timeout(Duration::from_millis(300));
    let guard = lock.acquire().await.unwrap();
    let finished = AtomicBool::new(false);
    let work = async {
        sleep(Duration::from_secs(5)).await;
        finished.store(true, Ordering::SeqCst);
    };
    let thief = async {
        sleep(Duration::from_millis(150)).await;
        cluster.take_over(&[1, 2, 3], "thief");
        futures::future::pending::<()>().await;
    };
    let started = Instant::now();
    let hold = std::pin::pin!(guard.hold(work));
    let result = match select(hold, std::pin::pin!(thief)).await {
        Either::Left((result, _)) => result,
        Either::Right(_) => unreachable!(),
    };
    match result {
        Err(LockError::Lost { key, reason }) => {
            assert_eq!(key, KEY);
            assert!(reason.contains("another holder"), "{reason}");
        }
        other => panic!("expected Lost, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_millis(300) + SLACK);
    assert!(!finished.load(Ordering::SeqCst), "the work was dropped");
    assert_eq!(cluster.holders("thief"), [1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_reports_renewals_failing_on_a_majority() {
    let cluster = Cluster::new(5);
    let ttl = Duration::from_millis(300);
    let lock = cluster.lock().timeout(ttl);
    let guard = lock.acquire().await.unwrap();
    cluster.fault(&[0, 1, 2], Fault::Error);
    let started = Instant::now();
    let result = guard.hold(sleep(Duration::from_secs(5))).await;
    match result {
        Err(LockError::Lost { reason, .. }) => {
            assert!(reason.contains("validity ran out"), "{reason}");
            assert!(
                reason.contains("node 0"),
                "names the failed masters: {reason}"
            );
        }
        other => panic!("expected Lost, got {other:?}"),
    }
    assert!(started.elapsed() < ttl + SLACK);
    assert_eq!(guard.valid_for(), Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_hold_bounds_renewal() {
    let cluster = Cluster::new(3);
    let lock = cluster
        .lock()
        .timeout(Duration::from_millis(200))
        .max_hold(Duration::from_millis(500));
    let guard = lock.acquire().await.unwrap();
    let started = Instant::now();
    let result = guard.hold(sleep(Duration::from_secs(5))).await;
    assert!(
        matches!(&result, Err(LockError::Lost { reason, .. }) if reason.contains("max_hold")),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(500) + SLACK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_follows_the_rules_of_redis_lock() {
    let cluster = Cluster::new(5);
    let lock = cluster
        .lock()
        .timeout(Duration::from_millis(300))
        .wait_timeout(Some(Duration::from_millis(100)));

    // Value returned, lock renewed while the body runs, then released.
    let value = lock
        .run(async |guard: &RedlockGuard| {
            sleep(Duration::from_millis(600)).await;
            assert!(guard.is_owner().await.unwrap());
            guard.token().to_owned()
        })
        .await
        .unwrap();
    assert!(!value.is_empty());
    assert!(cluster.occupied().is_empty());

    // Taken over on a majority by the time of the release: the value is withheld.
    let lock_long = lock.clone().timeout(Duration::from_secs(10));
    let result = lock_long
        .run(async |_: &RedlockGuard| {
            cluster.take_over(&[0, 1, 2], "thief");
            "done"
        })
        .await;
    assert!(matches!(&result, Err(LockError::Lost { .. })), "{result:?}");

    // Busy: the body never runs.
    let ran = AtomicBool::new(false);
    let result = lock_long
        .run(async |_: &RedlockGuard| ran.store(true, Ordering::SeqCst))
        .await;
    assert!(
        matches!(result, Err(LockError::Timeout { .. })),
        "{result:?}"
    );
    assert!(!ran.load(Ordering::SeqCst));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_acquire_and_dropped_guard_release_in_the_background() {
    let cluster = Cluster::new(5);
    cluster.fault(
        &[0, 1, 2, 3, 4],
        Fault::DelayReply(Duration::from_millis(300)),
    );
    let lock = cluster
        .lock()
        .timeout(Duration::from_secs(10))
        .node_timeout(Duration::from_secs(1));
    {
        let acquire = std::pin::pin!(lock.acquire());
        match select(acquire, std::pin::pin!(sleep(Duration::from_millis(50)))).await {
            Either::Left(_) => panic!("the replies are held back for 300 ms"),
            Either::Right(_) => {}
        }
        assert_eq!(
            cluster.occupied().len(),
            5,
            "the requests reached every master"
        );
    }
    assert!(
        eventually(SLACK, || cluster.occupied().is_empty()).await,
        "{:?}",
        cluster.occupied()
    );

    cluster.fault(&[0, 1, 2, 3, 4], Fault::None);
    let guard = lock.acquire().await.unwrap();
    assert_eq!(cluster.occupied().len(), 5);
    drop(guard);
    assert!(eventually(SLACK, || cluster.occupied().is_empty()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contention_never_admits_two_holders() {
    let cluster = Arc::new(Cluster::new(5));
    cluster.fault(&[3], Fault::Delay(Duration::from_millis(5)));
    let inside = Arc::new(AtomicUsize::new(0));
    let entries = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let lock = cluster
                .lock()
                .timeout(Duration::from_secs(5))
                .wait_timeout(Some(Duration::from_secs(20)));
            let inside = inside.clone();
            let entries = entries.clone();
            tokio::spawn(async move {
                for _ in 0..5 {
                    let guard = lock.acquire().await.expect("acquired within the wait");
                    assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                    entries.fetch_add(1, Ordering::SeqCst);
                    sleep(Duration::from_millis(5)).await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                    assert!(guard.release().await.unwrap());
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(entries.load(Ordering::SeqCst), 20);
    assert!(cluster.occupied().is_empty());
}

#[test]
fn runs_without_tokio() {
    let nodes: Vec<Arc<dyn LockBackend>> = (0..3)
        .map(|_| Arc::new(MemoryBackend::new()) as Arc<dyn LockBackend>)
        .collect();
    let lock = Redlock::new(nodes, KEY).timeout(Duration::from_millis(200));
    futures::executor::block_on(async {
        let guard = lock.acquire().await.unwrap();
        guard
            .hold(futures_timer_sleep(Duration::from_millis(400)))
            .await
            .unwrap();
        assert!(guard.release().await.unwrap());
    });
}

/// A sleep that needs no runtime, on the runtime-neutral timer.
fn futures_timer_sleep(duration: Duration) -> futures::future::BoxFuture<'static, ()> {
    lock_core::Runtime::neutral().sleep(duration)
}

/// A master's data as a restart without persistence leaves it: the lock key and the fence counter gone.
fn lose_data(store: &MemoryBackend) {
    store.delete(KEY);
    store.delete(&fence_counter());
}

/// The fence counter of [`KEY`], as lock-core names it.
fn fence_counter() -> String {
    lock_core::testing::companion_keys(KEY)[0].clone()
}

/// With master 0's clock ten minutes ahead, a round it grants in would take its clock as the fence and
/// copy it onto master 1; once master 0 is gone and master 1 rejoins empty, the next holder's fence
/// would come from the correct clocks, ten minutes of microseconds lower, and the deposed holder's
/// writes would win. The round with master 0 is refused instead, and fences never go backwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_whose_clock_is_ahead_never_makes_a_fence_go_backwards() {
    let ten_minutes: i64 = 600_000_000;
    let cluster = Cluster::of(vec![
        MemoryBackend::with_clock_offset(ten_minutes),
        MemoryBackend::new(),
        MemoryBackend::new(),
    ]);
    let lock = cluster.lock().fencing(true);
    let mut fences = Vec::new();

    // Master 2 is down while A acquires: only 0 (ahead) and 1 answer.
    cluster.fault(&[2], Fault::Error);
    let a = match lock.acquire().await {
        Ok(guard) => {
            fences.push(guard.fence().expect("fencing is on"));
            Ok(guard.release().await)
        }
        Err(error) => Err(error),
    };
    assert!(
        cluster.occupied().is_empty(),
        "nothing is left held: {:?}",
        cluster.occupied()
    );

    // Master 0 goes away; master 1 rejoins empty (after staying down longer than the TTL and
    // MAX_CLOCK_SKEW); master 2 is back.
    cluster.fault(&[2], Fault::None);
    cluster.fault(&[0], Fault::Error);
    lose_data(&cluster.stores[1]);
    let b = lock.acquire().await.expect("masters 1 and 2 agree");
    fences.push(b.fence().expect("fencing is on"));
    assert!(b.release().await.unwrap());
    assert!(
        fences.windows(2).all(|pair| pair[0] < pair[1]),
        "fences went backwards: {fences:?}"
    );

    // The round that master 0 answered was refused, naming the masters and the skew.
    match a {
        Err(LockError::ClockSkew {
            key,
            ahead,
            behind,
            skew,
            bound,
        }) => {
            assert_eq!(key, KEY);
            assert_eq!((ahead, behind), (0, 1));
            assert!(skew > Duration::from_secs(599), "{skew:?}");
            assert!(skew <= Duration::from_secs(600), "{skew:?}");
            assert_eq!(bound, Redlock::MAX_CLOCK_SKEW);
        }
        other => panic!("expected ClockSkew, got {other:?}"),
    }

    // While master 0's clock is off, every fenced round it answers is refused (at once, not retried
    // until the deadline), and leaves nothing behind; a lock without fencing is unaffected.
    cluster.fault(&[0], Fault::None);
    let started = Instant::now();
    let err = lock.acquire().await.unwrap_err();
    assert!(started.elapsed() < SLACK, "{:?}", started.elapsed());
    assert!(
        matches!(err, LockError::ClockSkew { ahead: 0, .. }),
        "{err:?}"
    );
    assert!(err.is_transient());
    let message = err.to_string();
    assert!(
        message.contains("masters 0 and") && message.contains("fencing allows"),
        "{message}"
    );
    let err = lock.try_acquire().await.unwrap_err();
    assert!(matches!(err, LockError::ClockSkew { .. }), "{err:?}");
    assert!(cluster.occupied().is_empty());
    let plain = cluster
        .lock()
        .acquire()
        .await
        .expect("no fencing, no clocks");
    assert_eq!(plain.fence(), None);
    assert!(plain.release().await.unwrap());
}

/// Clocks within [`Redlock::MAX_CLOCK_SKEW`] of each other are accepted, and fences increase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clocks_within_the_skew_bound_issue_fences() {
    let cluster = Cluster::of(vec![
        MemoryBackend::with_clock_offset(400_000),
        MemoryBackend::new(),
        MemoryBackend::with_clock_offset(-400_000),
    ]);
    let lock = cluster.lock().fencing(true);
    let mut last = 0;
    for _ in 0..3 {
        let guard = lock
            .acquire()
            .await
            .expect("800 ms apart is within the bound");
        let fence = guard.fence().unwrap();
        assert!(fence > last, "{fence} after {last}");
        last = fence;
        assert!(guard.release().await.unwrap());
    }
}

/// One free master listed twice and one busy master: counted twice, the free one alone would make a
/// majority of three. The same backend (the same `Arc`, clones of one store, wrappers around one
/// store) listed twice is refused before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_listed_twice_is_refused_before_anything_is_sent() {
    let a = Arc::new(CountingBackend::new(MemoryBackend::new()));
    let busy = MemoryBackend::new();
    busy.set(KEY, "someone-else", Duration::from_secs(30));
    let b = Arc::new(CountingBackend::new(busy.clone()));
    let lock = Redlock::new(vec![a.clone(), a.clone(), b.clone()], KEY)
        .wait_timeout(Some(Duration::from_millis(100)));
    for result in [
        lock.acquire().await.map(|_| ()),
        lock.try_acquire().await.map(|_| ()),
        lock.clone().fencing(true).acquire().await.map(|_| ()),
    ] {
        match result {
            Err(LockError::InvalidArgument {
                argument: "nodes",
                reason,
            }) => assert!(
                reason.contains("masters 0 and 1 are the same backend"),
                "{reason}"
            ),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }
    let sent: usize = [&a, &b]
        .iter()
        .map(|node| node.set_nx_calls() + node.script_calls())
        .sum();
    assert_eq!(sent, 0, "nothing is sent");

    // Clones of one in-memory store are one store; wrappers see through to the store they wrap.
    let store = MemoryBackend::new();
    let other = || Arc::new(MemoryBackend::new()) as Arc<dyn LockBackend>;
    let cases: Vec<(Vec<Arc<dyn LockBackend>>, &str)> = vec![
        (
            vec![Arc::new(store.clone()), other(), Arc::new(store.clone())],
            "masters 0 and 2",
        ),
        (
            vec![
                other(),
                Arc::new(FaultyBackend::new(store.clone())),
                Arc::new(CountingBackend::new(Arc::new(store.clone()))),
            ],
            "masters 1 and 2",
        ),
    ];
    for (nodes, expected) in cases {
        let err = Redlock::new(nodes, KEY).acquire().await.unwrap_err();
        assert!(
            matches!(&err, LockError::InvalidArgument { argument: "nodes", reason } if reason.contains(expected)),
            "{expected}: {err:?}"
        );
    }
    assert_eq!(store.get(KEY), None);

    // Distinct masters are fine.
    let guard = Redlock::new(
        vec![
            a.clone(),
            Arc::new(CountingBackend::new(MemoryBackend::new())),
            b,
        ],
        KEY,
    )
    .acquire()
    .await
    .expect("a and the new master are a majority");
    assert!(guard.release().await.unwrap());
}

/// A backend that answers the server identity script itself (as a Redis server answers its `run_id`),
/// over an in-memory store, without forwarding the store's runtime: two of them over one store are two
/// backend values reaching one "server".
#[derive(Debug)]
struct Named {
    store: MemoryBackend,
    id: Mutex<Result<&'static str, BackendError>>,
    asked: AtomicUsize,
    calls: AtomicUsize,
}

impl Named {
    fn new(store: &MemoryBackend, id: &'static str) -> Arc<Self> {
        Arc::new(Self {
            store: store.clone(),
            id: Mutex::new(Ok(id)),
            asked: AtomicUsize::new(0),
            calls: AtomicUsize::new(0),
        })
    }

    fn answer(&self, id: Result<&'static str, BackendError>) {
        *self.id.lock().unwrap() = id;
    }
}

#[lock_core::async_trait]
impl LockBackend for Named {
    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, BackendError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.store.set_nx(key, value, ttl).await
    }

    async fn eval_script(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<ScriptValue, BackendError> {
        if script.sha1() == lock_core::script::SERVER_ID.sha1() {
            self.asked.fetch_add(1, Ordering::SeqCst);
            return match &*self.id.lock().unwrap() {
                Ok(id) => Ok(ScriptValue::Str((*id).to_owned())),
                Err(error) if error.is_transient() => {
                    Err(BackendError::transient("named", "no answer"))
                }
                Err(_) => Err(BackendError::permanent("named", "NOPERM no INFO for you")),
            };
        }
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.store.eval_script(script, keys, args).await
    }
}

/// One server reached through two different backends (two clients of one Redis) is recognised by its
/// identity the first time a round reaches it, before its vote counts; later acquisitions are refused
/// without sending anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_listed_twice_is_refused_at_first_contact() {
    let shared = MemoryBackend::new();
    let busy = MemoryBackend::new();
    busy.set(KEY, "someone-else", Duration::from_secs(30));
    let nodes = [
        Named::new(&shared, "run-a"),
        Named::new(&shared, "run-a"),
        Named::new(&busy, "run-b"),
    ];
    let lock = Redlock::new(nodes.to_vec(), KEY).wait_timeout(Some(Duration::from_millis(100)));
    for fencing in [false, true] {
        let err = lock.clone().fencing(fencing).acquire().await.unwrap_err();
        assert!(
            matches!(&err, LockError::InvalidArgument { argument: "nodes", reason }
                if reason.contains("masters 0 and 1 are the same server (run_id run-a)")),
            "{err:?}"
        );
        assert_eq!(
            shared.get(KEY),
            None,
            "the round's partial lock was released"
        );
        assert_eq!(busy.get(KEY).as_deref(), Some("someone-else"));
    }
    // Known now: refused before anything is sent, and nobody is asked again.
    let calls: usize = nodes.iter().map(|n| n.calls.load(Ordering::SeqCst)).sum();
    let err = lock.try_acquire().await.unwrap_err();
    assert!(
        matches!(
            err,
            LockError::InvalidArgument {
                argument: "nodes",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        nodes
            .iter()
            .map(|n| n.calls.load(Ordering::SeqCst))
            .sum::<usize>(),
        calls
    );
    assert!(nodes.iter().all(|n| n.asked.load(Ordering::SeqCst) == 1));

    // Three servers: each is asked once, at first contact.
    let (s0, s1, s2) = (
        MemoryBackend::new(),
        MemoryBackend::new(),
        MemoryBackend::new(),
    );
    let nodes = [
        Named::new(&s0, "run-0"),
        Named::new(&s1, "run-1"),
        Named::new(&s2, "run-2"),
    ];
    // Master 2 cannot tell for now (a transient failure): it could be another master listed twice, so
    // its grant does not count in that round, and it is asked again in the next.
    nodes[2].answer(Err(BackendError::transient("named", "x")));
    let lock = Redlock::new(nodes.to_vec(), KEY).wait_timeout(Some(Duration::ZERO));
    s1.set(KEY, "someone-else", Duration::from_secs(30));
    let err = lock.acquire().await.unwrap_err();
    assert!(
        matches!(&err, LockError::Quorum { votes: 1, errors, .. } if failed_nodes(errors) == [2]),
        "{err:?}"
    );
    assert_eq!(s2.get(KEY), None, "released");
    s1.delete(KEY);
    // A permanent refusal (an ACL without INFO) means the backend cannot tell: it counts.
    nodes[2].answer(Err(BackendError::permanent("named", "x")));
    let guard = lock.acquire().await.expect("three distinct masters");
    assert!(guard.release().await.unwrap());
    let guard = lock.acquire().await.expect("three distinct masters");
    assert!(guard.release().await.unwrap());
    let asked: Vec<usize> = nodes
        .iter()
        .map(|n| n.asked.load(Ordering::SeqCst))
        .collect();
    assert_eq!(asked, [1, 1, 2]);
}

/// A release once the validity has run out reports the lock lost (`Ok(false)`), whatever the masters
/// answer or fail to: exclusion was not guaranteed. And `run` withholds the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_after_the_validity_ran_out_is_lost_whatever_the_masters_answer() {
    let cluster = Cluster::new(5);
    let ttl = Duration::from_millis(100);
    let lock = cluster.lock().timeout(ttl);

    // The keys expired; the masters that could say so are too few, the other three fail.
    let guard = lock.acquire().await.unwrap();
    sleep(ttl + Duration::from_millis(50)).await;
    assert_eq!(guard.valid_for(), Duration::ZERO);
    cluster.fault(&[0, 1, 2], Fault::Error);
    match guard.release().await {
        Ok(false) => {}
        other => panic!("a lock whose validity ran out is known lost, got {other:?}"),
    }
    cluster.fault(&[0, 1, 2], Fault::None);

    // The keys are still there behind the guard's back (say the masters' clocks ran slow): still
    // lost, and still cleaned up where the masters answer.
    let guard = lock.acquire().await.unwrap();
    for store in &cluster.stores {
        store.set(KEY, guard.token(), Duration::from_secs(30));
    }
    sleep(ttl + Duration::from_millis(50)).await;
    cluster.fault(&[0, 1, 2], Fault::Error);
    let token = guard.token().to_owned();
    match guard.release().await {
        Ok(false) => {}
        other => panic!("a lock whose validity ran out is known lost, got {other:?}"),
    }
    assert_eq!(cluster.holders(&token), [0, 1, 2], "3 and 4 released");
    cluster.fault(&[0, 1, 2], Fault::None);
    for store in &cluster.stores {
        store.delete(KEY);
    }

    // A body that pauses past the validity (blocking its thread, as a stopped VM would) and finishes
    // before the renewal loop notices; then three masters fail the release.
    let result = lock
        .run(async |_: &RedlockGuard| {
            std::thread::sleep(ttl + Duration::from_millis(50));
            cluster.fault(&[0, 1, 2], Fault::Error);
            "done"
        })
        .await;
    assert!(
        matches!(&result, Err(LockError::Lost { key, .. }) if key == KEY),
        "{result:?}"
    );
}
