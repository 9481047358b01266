//! Redlock over five real, independent `redis-server` masters, through both adapters mixed as
//! `Arc<dyn LockBackend>` (masters 0, 2 and 4 through fred, 1 and 3 through deadpool): minority and
//! majority outages, hung (`SIGSTOP`ped) masters, a master restarted empty under a holder, partial locks
//! of failed rounds, renewal through the quorum, and fencing with the real Lua scripts.
//!
//! Tests take turns (one at a time) so that five servers per test do not compete with each other for a
//! small machine's cores; timing assertions still leave generous room.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lock_core::testing::companion_keys;
use redlease::{LockBackend, LockError, NodeError, Redlock, RedlockGuard};
use support::RedisServer;
use support::inputs::{Input, Options};

/// The adapters' own bound on every call: above the node timeout, so that the node timeout is what
/// bounds a round.
const CALL_BOUND: Duration = Duration::from_secs(2);
/// Redlock's per-node bound in these tests.
const NODE_TIMEOUT: Duration = Duration::from_millis(250);
/// Room for a noisy 2-core machine on top of the bounds under test.
const SLACK: Duration = Duration::from_secs(3);

/// One test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Masters {
    servers: Vec<RedisServer>,
    nodes: Vec<Arc<dyn LockBackend>>,
    key: String,
}

impl Masters {
    async fn start() -> Self {
        let servers: Vec<RedisServer> =
            tokio::task::block_in_place(|| (0..5).map(|_| RedisServer::start()).collect());
        let mut nodes = Vec::new();
        for (index, server) in servers.iter().enumerate() {
            nodes.push(backend(index, &server.url()).await);
        }
        Self {
            servers,
            nodes,
            key: format!("{}redlock", support::key_prefix()),
        }
    }

    fn lock(&self) -> Redlock {
        Redlock::new(self.nodes.clone(), self.key.clone())
            .timeout(Duration::from_secs(10))
            .node_timeout(NODE_TIMEOUT)
    }

    /// The key's value on master `index` (`None` when absent), read behind the lock's back.
    fn get(&self, index: usize) -> Option<String> {
        self.get_key(index, &self.key)
    }

    fn get_key(&self, index: usize, key: &str) -> Option<String> {
        let reply = self.servers[index].command(&["GET", key]).expect("GET");
        (reply != "(nil)").then_some(reply)
    }

    /// The `cmdstat_<command>:calls=N` counter of master `index` (0 when never called).
    fn calls(&self, index: usize, command: &str) -> u64 {
        self.servers[index].calls(command)
    }

    /// Which of the masters `among` hold `value`.
    fn holding(&self, value: &str, among: &[usize]) -> Vec<usize> {
        among
            .iter()
            .copied()
            .filter(|&i| self.get(i).as_deref() == Some(value))
            .collect()
    }

    /// Which of the masters `among` hold anything under the key.
    fn occupied(&self, among: &[usize]) -> Vec<usize> {
        among
            .iter()
            .copied()
            .filter(|&i| self.get(i).is_some())
            .collect()
    }

    /// Another client takes the key on `nodes`.
    fn take_over(&self, nodes: &[usize], value: &str) {
        for &i in nodes {
            self.servers[i]
                .command(&["SET", &self.key, value, "PX", "30000"])
                .expect("SET");
        }
    }

    fn kill(&mut self, nodes: &[usize]) {
        tokio::task::block_in_place(|| {
            for &i in nodes {
                self.servers[i].kill();
            }
        });
    }

    fn restart(&mut self, nodes: &[usize]) {
        tokio::task::block_in_place(|| {
            for &i in nodes {
                self.servers[i].restart();
            }
        });
    }

    /// Freezes `nodes` with SIGSTOP until the returned guard is dropped (also on panic).
    fn pause(&self, nodes: &[usize]) -> Paused<'_> {
        let paused = Paused {
            servers: nodes.iter().map(|&i| &self.servers[i]).collect(),
        };
        for server in &paused.servers {
            server.pause();
        }
        paused
    }
}

/// Resumes paused servers when dropped.
struct Paused<'a> {
    servers: Vec<&'a RedisServer>,
}

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        for server in &self.servers {
            if server.is_running() {
                server.resume();
            }
        }
    }
}

/// Masters 0, 2 and 4 through a fred client (reconnecting), 1 and 3 through a deadpool pool.
async fn backend(index: usize, url: &str) -> Arc<dyn LockBackend> {
    let input = if index.is_multiple_of(2) {
        Input::FredClient
    } else {
        Input::DeadpoolPool
    };
    let options = Options::new()
        .call_bound(CALL_BOUND)
        .fred_reconnect(Duration::from_millis(50));
    input.connect(url, options).await
}

fn failed_nodes(errors: &[NodeError]) -> Vec<usize> {
    errors.iter().map(|e| e.node).collect()
}

async fn sleep(duration: Duration) {
    tokio::time::sleep(duration).await;
}

/// Far longer than anything below needs on a noisy 2-core machine, far shorter than a 60 s TTL.
const PATIENCE: Duration = Duration::from_secs(20);

/// Polls `condition` every 50 ms until it holds (`true`) or `within` has passed (`false`).
async fn eventually(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if tokio::task::block_in_place(&mut condition) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(50)).await;
    }
}

const ALL: [usize; 5] = [0, 1, 2, 3, 4];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_killed_masters_still_acquire() {
    let _serial = SERIAL.lock().await;
    let mut masters = Masters::start().await;
    let lock = masters.lock().wait_timeout(Some(Duration::from_secs(2)));
    // Connected and working first.
    let guard = lock.acquire().await.unwrap();
    assert_eq!(masters.holding(guard.token(), &ALL), ALL);
    assert!(guard.release().await.unwrap());

    masters.kill(&[1, 4]);
    let started = Instant::now();
    let guard = lock.acquire().await.expect("3 of 5 is a majority");
    let took = started.elapsed();
    assert!(took < NODE_TIMEOUT + SLACK, "took {took:?}");
    assert_eq!(masters.holding(guard.token(), &[0, 2, 3]), [0, 2, 3]);
    assert!(guard.valid_for() > Duration::from_secs(9));
    assert!(guard.is_owner().await.unwrap());
    assert!(guard.renew().await.unwrap());
    assert!(guard.extend(Duration::from_secs(5)).await.unwrap());
    assert!(guard.release().await.unwrap());
    assert!(masters.occupied(&[0, 2, 3]).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_killed_masters_fail_with_their_errors_inside_the_deadline() {
    let _serial = SERIAL.lock().await;
    let mut masters = Masters::start().await;
    let wait = Duration::from_secs(1);
    let lock = masters.lock().wait_timeout(Some(wait));
    lock.acquire().await.unwrap().release().await.unwrap();

    masters.kill(&[0, 2, 3]);
    let started = Instant::now();
    let err = lock.acquire().await.unwrap_err();
    let took = started.elapsed();
    assert!(
        took >= wait && took < wait + 2 * NODE_TIMEOUT + SLACK,
        "took {took:?}"
    );
    match &err {
        LockError::Quorum {
            key,
            votes,
            needed,
            errors,
        } => {
            assert_eq!(key, &masters.key);
            assert_eq!((*votes, *needed), (2, 3));
            assert_eq!(failed_nodes(errors), [0, 2, 3]);
            assert!(errors.iter().all(|e| e.error.is_transient()), "{err}");
        }
        other => panic!("expected Quorum, got {other:?}"),
    }
    let message = err.to_string();
    for node in ["node 0:", "node 2:", "node 3:"] {
        assert!(message.contains(node), "{message}");
    }
    eprintln!("{message}");
    // The two live masters granted every round and were released after every round.
    assert!(masters.occupied(&[1, 4]).is_empty());

    let started = Instant::now();
    let err = lock.try_acquire().await.unwrap_err();
    assert!(started.elapsed() < 2 * NODE_TIMEOUT + SLACK);
    assert!(
        matches!(&err, LockError::Quorum { errors, .. } if failed_nodes(errors) == [0, 2, 3]),
        "{err:?}"
    );
    assert!(masters.occupied(&[1, 4]).is_empty());

    // Back once a majority is.
    masters.restart(&[0, 2]);
    let guard = lock
        .clone()
        .wait_timeout(Some(Duration::from_secs(15)))
        .acquire()
        .await
        .expect("a majority is back");
    // A restarted master whose client has not reconnected yet is simply a vote against.
    let holding = masters.holding(guard.token(), &[0, 1, 2, 4]);
    assert!(holding.len() >= 3, "{holding:?}");
    assert!(guard.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_master_does_not_stretch_a_round() {
    let _serial = SERIAL.lock().await;
    let masters = Masters::start().await;
    // A TTL far longer than the cleanup below may take, so that expiry cannot do it instead.
    let lock = masters
        .lock()
        .timeout(Duration::from_secs(60))
        .wait_timeout(Some(Duration::from_secs(2)));
    lock.acquire().await.unwrap().release().await.unwrap();
    let sets_before = [2, 4].map(|i| masters.calls(i, "set"));

    {
        let _paused = masters.pause(&[2]);
        let started = Instant::now();
        let guard = lock.acquire().await.expect("4 of 5");
        let took = started.elapsed();
        assert!(
            took >= NODE_TIMEOUT && took < NODE_TIMEOUT + SLACK,
            "took {took:?}"
        );
        assert_eq!(masters.holding(guard.token(), &[0, 1, 3, 4]), [0, 1, 3, 4]);
        for _ in 0..2 {
            let started = Instant::now();
            assert!(guard.renew().await.unwrap());
            assert!(started.elapsed() < NODE_TIMEOUT + SLACK);
        }
        let started = Instant::now();
        assert!(guard.release().await.unwrap());
        assert!(started.elapsed() < NODE_TIMEOUT + SLACK);

        // A majority hung: one round and its release, each bounded by the node timeout.
        let _more = masters.pause(&[1, 4]);
        let started = Instant::now();
        let err = lock.try_acquire().await.unwrap_err();
        let took = started.elapsed();
        assert!(took < 2 * NODE_TIMEOUT + SLACK, "took {took:?}");
        match &err {
            LockError::Quorum { votes, errors, .. } => {
                assert_eq!(*votes, 2);
                assert_eq!(failed_nodes(errors), [1, 2, 4]);
                for NodeError { error, .. } in errors {
                    let cause = std::error::Error::source(error).unwrap().to_string();
                    assert_eq!(cause, "no reply within 250ms");
                }
            }
            other => panic!("expected Quorum, got {other:?}"),
        }
        assert!(masters.occupied(&[0, 3]).is_empty());
    }

    // Resumed: the commands they queued run now. fred wrote its commands to the hung masters 2 and 4
    // at once, so the SETs of the rounds that timed out there land now (deadpool's master 1 may not
    // have got as far as sending one: its pool was still checking a connection). Whatever they set
    // is ours from failed rounds, and is released (by a release queued behind it, or by the
    // background release retrying until it lands), long before the 60 s TTL would free it.
    let landed = eventually(PATIENCE, || {
        [2, 4]
            .iter()
            .zip(sets_before)
            .all(|(&i, before)| masters.calls(i, "set") > before)
    })
    .await;
    assert!(landed, "the late SETs never ran on masters 2 and 4");
    let cleaned = eventually(PATIENCE, || masters.occupied(&[1, 2, 4]).is_empty()).await;
    assert!(
        cleaned,
        "the key is still held on the resumed masters {:?}",
        masters.occupied(&[1, 2, 4])
    );

    // And a fresh lock on another key works at once.
    let other = Redlock::new(masters.nodes.clone(), format!("{}:after", masters.key))
        .node_timeout(NODE_TIMEOUT)
        .wait_timeout(Some(Duration::from_secs(5)));
    let guard = other.acquire().await.unwrap();
    assert!(guard.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masters_restarted_empty_under_a_holder_let_no_second_holder_in() {
    let _serial = SERIAL.lock().await;
    let mut masters = Masters::start().await;
    let ttl = Duration::from_secs(2);
    let lock = masters.lock().timeout(ttl);
    let holder = lock.acquire().await.unwrap();
    let token = holder.token().to_owned();
    // On a task of its own: the restarts below block this thread for a moment.
    let holding = tokio::spawn(async move {
        let held = holder.hold(sleep(Duration::from_secs(4))).await;
        (holder, held)
    });
    let contender = lock.clone().wait_timeout(Some(Duration::from_millis(500)));
    let intruders = AtomicUsize::new(0);
    let chaos = async {
        sleep(Duration::from_millis(300)).await;
        // The holder keeps 4 masters: a second client gets at most 1.
        masters.restart(&[0]);
        for _ in 0..3 {
            match contender.acquire().await {
                Ok(guard) => {
                    intruders.fetch_add(1, Ordering::SeqCst);
                    guard.release().await.ok();
                }
                Err(LockError::Timeout { .. }) => {}
                Err(other) => panic!("busy is a timeout, not {other:?}"),
            }
        }
        // And with 2 restarted, the holder still has 3: at most 2 for anyone else.
        masters.restart(&[1]);
        for _ in 0..3 {
            match contender.acquire().await {
                Ok(guard) => {
                    intruders.fetch_add(1, Ordering::SeqCst);
                    guard.release().await.ok();
                }
                Err(LockError::Timeout { .. }) => {}
                Err(other) => panic!("busy is a timeout, not {other:?}"),
            }
        }
    };
    chaos.await;
    let (holder, held) = holding.await.unwrap();
    assert_eq!(
        intruders.load(Ordering::SeqCst),
        0,
        "a second holder got in"
    );
    held.expect("the majority kept the lock through the restarts");
    assert_eq!(masters.holding(&token, &ALL), [2, 3, 4]);
    assert!(holder.is_owner().await.unwrap());
    assert!(holder.release().await.unwrap());
    // Free again for the next client.
    let guard = contender.acquire().await.unwrap();
    assert!(guard.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_locks_never_block_the_next_round() {
    let _serial = SERIAL.lock().await;
    let masters = Masters::start().await;
    let lock = masters.lock();

    // Another client holds 0, 1 and 2: we get 3 and 4, and give them back.
    masters.take_over(&[0, 1, 2], "foreign");
    assert!(lock.try_acquire().await.unwrap().is_none());
    assert!(masters.occupied(&[3, 4]).is_empty());
    let err = lock
        .clone()
        .wait_timeout(Some(Duration::from_millis(300)))
        .acquire()
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::Timeout { .. }), "{err:?}");
    assert!(masters.occupied(&[3, 4]).is_empty());

    // As soon as one more master is free, the very next round gets the lock: nothing of ours was
    // left behind on 3 and 4 to block it.
    masters.servers[2]
        .command(&["DEL", &masters.key])
        .expect("DEL");
    let guard = lock
        .try_acquire()
        .await
        .unwrap()
        .expect("2, 3 and 4 are free");
    assert_eq!(masters.holding(guard.token(), &ALL), [2, 3, 4]);
    assert!(guard.release().await.unwrap());

    // A foreign holder on one master and a stale value of an earlier holder on another do not matter
    // while a majority is free.
    masters.servers[1]
        .command(&["DEL", &masters.key])
        .expect("DEL");
    masters.take_over(&[0], "foreign");
    masters.take_over(&[4], "stale");
    let guard = lock
        .try_acquire()
        .await
        .unwrap()
        .expect("1, 2 and 3 are free");
    assert_eq!(masters.holding(guard.token(), &ALL), [1, 2, 3]);
    assert!(guard.release().await.unwrap());
    for i in ALL {
        masters.servers[i]
            .command(&["DEL", &masters.key])
            .expect("DEL");
    }

    // Contenders splitting the votes release their partial locks after every failed round, so they
    // take turns quickly; left behind, each split would block everyone for the whole 10 s TTL.
    let inside = Arc::new(AtomicBool::new(false));
    let entries = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let contenders: Vec<_> = (0..3)
        .map(|_| {
            let lock = lock.clone().wait_timeout(Some(Duration::from_secs(20)));
            let inside = inside.clone();
            let entries = entries.clone();
            tokio::spawn(async move {
                for _ in 0..4 {
                    let guard = lock.acquire().await.expect("acquired in time");
                    assert!(!inside.swap(true, Ordering::SeqCst), "two holders");
                    entries.fetch_add(1, Ordering::SeqCst);
                    sleep(Duration::from_millis(10)).await;
                    inside.store(false, Ordering::SeqCst);
                    assert!(guard.release().await.unwrap());
                }
            })
        })
        .collect();
    for contender in contenders {
        contender.await.unwrap();
    }
    let took = started.elapsed();
    assert_eq!(entries.load(Ordering::SeqCst), 12);
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert!(masters.occupied(&ALL).is_empty());
    eprintln!("12 contended acquisitions in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_renews_through_the_quorum_and_reports_a_majority_takeover() {
    let _serial = SERIAL.lock().await;
    let mut masters = Masters::start().await;
    let ttl = Duration::from_secs(1);
    let lock = masters.lock().timeout(ttl);
    let guard = lock.acquire().await.unwrap();
    let token = guard.token().to_owned();
    let finished = Arc::new(AtomicBool::new(false));
    let work = {
        let finished = finished.clone();
        async move {
            sleep(Duration::from_secs(20)).await;
            finished.store(true, Ordering::SeqCst);
        }
    };
    // On a task of its own, so that the fault injection below never delays a renewal.
    let holding = tokio::spawn(async move {
        let held = guard.hold(work).await;
        (guard, held, Instant::now())
    });
    let taken_from = std::sync::Mutex::new(None);
    let chaos = async {
        // Past the TTL: still held everywhere, thanks to the renewals.
        sleep(ttl + Duration::from_millis(300)).await;
        assert_eq!(masters.holding(&token, &ALL), ALL);
        // A minority dies: renewals go on through the other four.
        masters.kill(&[0]);
        sleep(ttl + Duration::from_millis(300)).await;
        assert_eq!(masters.holding(&token, &[1, 2, 3, 4]), [1, 2, 3, 4]);
        // Another client takes a majority.
        *taken_from.lock().unwrap() = Some(Instant::now());
        masters.take_over(&[1, 2, 3], "thief");
    };
    chaos.await;
    let (guard, result, ended) = holding.await.unwrap();
    // Not before the takeover began: that would be a loss reported for no reason. (The loss may be
    // noticed before the third SET, once the thief holds two masters and master 0 is down.)
    let noticed_after = ended
        .checked_duration_since(taken_from.lock().unwrap().expect("taken over"))
        .expect("the loss was reported before the takeover began");
    match result {
        Err(LockError::Lost { key, reason }) => {
            assert_eq!(key, masters.key);
            assert!(reason.contains("another holder"), "{reason}");
        }
        other => panic!("expected Lost, got {other:?}"),
    }
    assert!(!finished.load(Ordering::SeqCst), "the work was dropped");
    // Renewals come about every third of the TTL.
    assert!(noticed_after < ttl / 3 + NODE_TIMEOUT + SLACK);
    assert!(!guard.is_owner().await.unwrap());
    assert!(!guard.release().await.unwrap());
    assert_eq!(masters.holding("thief", &[1, 2, 3]), [1, 2, 3]);
    assert!(masters.occupied(&[4]).is_empty(), "ours released on 4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_increase_across_masters_with_the_real_scripts() {
    let _serial = SERIAL.lock().await;
    let mut masters = Masters::start().await;
    let lock = masters.lock().fencing(true);
    let [counter, ..] = companion_keys(&masters.key);
    let counter_on = |masters: &Masters, i: usize| -> u64 {
        masters
            .get_key(i, &counter)
            .expect("counter")
            .parse()
            .unwrap()
    };

    let first = lock.acquire().await.unwrap();
    let f1 = first.fence().expect("fencing is on");
    assert!(first.release().await.unwrap());

    // Masters 0 and 1 ran ahead of the others, by more than the clocks move during this test.
    let lead = 5_000_000;
    for i in [0, 1] {
        masters.servers[i]
            .command(&["SET", &counter, &(f1 + lead).to_string()])
            .expect("SET");
    }
    let second = lock.acquire().await.unwrap();
    let f2 = second.fence().unwrap();
    // The largest answer of the granting masters: a counter ahead, or a clock that passed it.
    assert!(f2 > f1 + lead, "{f2} after {f1} + {lead}");
    for i in ALL {
        assert!(counter_on(&masters, i) >= f2, "master {i} raised");
    }
    assert!(second.renew().await.unwrap());
    assert_eq!(second.fence(), Some(f2));
    assert!(second.release().await.unwrap());

    // Without the masters that ran ahead, the lagging majority still issues a larger fence.
    masters.kill(&[0, 1]);
    let third = lock.acquire().await.unwrap();
    let f3 = third.fence().unwrap();
    assert!(f3 > f2, "{f3} > {f2}");
    assert!(third.release().await.unwrap());

    // Restarted empty, they restart their counters from the server clock, above every fence so far.
    masters.restart(&[0, 1]);
    masters.kill(&[2]);
    let fourth = lock
        .clone()
        .wait_timeout(Some(Duration::from_secs(10)))
        .acquire()
        .await
        .unwrap();
    assert!(fourth.fence().unwrap() > f3);
    assert!(fourth.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_acquires_holds_and_releases_through_the_quorum() {
    let _serial = SERIAL.lock().await;
    let mut masters = Masters::start().await;
    masters.kill(&[3]);
    let lock = masters.lock().timeout(Duration::from_millis(900));
    let value = lock
        .run(async |guard: &RedlockGuard| {
            sleep(Duration::from_millis(1500)).await;
            assert!(guard.valid_for() > Duration::ZERO);
            assert!(guard.is_owner().await.unwrap());
            guard.token().to_owned()
        })
        .await
        .unwrap();
    assert!(!value.is_empty());
    assert!(masters.occupied(&[0, 1, 2, 4]).is_empty());
}

/// One server listed twice, through two different clients (fred and deadpool, so no backend value is
/// shared), is recognised by its `run_id` the first time a round reaches it, before its votes count:
/// with the other server busy, the first one alone would otherwise make a majority of three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_listed_twice_through_two_clients_is_refused() {
    let _serial = SERIAL.lock().await;
    let servers: Vec<RedisServer> =
        tokio::task::block_in_place(|| (0..2).map(|_| RedisServer::start()).collect());
    let key = format!("{}redlock", support::key_prefix());
    servers[1]
        .command(&["SET", &key, "someone-else", "PX", "30000"])
        .expect("SET");
    let nodes = vec![
        backend(0, &servers[0].url()).await,
        backend(1, &servers[0].url()).await,
        backend(2, &servers[1].url()).await,
    ];
    let lock = Redlock::new(nodes, key.clone())
        .timeout(Duration::from_secs(10))
        .node_timeout(NODE_TIMEOUT)
        .wait_timeout(Some(Duration::from_millis(500)));
    for fencing in [false, true] {
        let err = lock.clone().fencing(fencing).acquire().await.unwrap_err();
        match &err {
            LockError::InvalidArgument {
                argument: "nodes",
                reason,
            } => assert!(
                reason.contains("masters 0 and 1 are the same server (run_id "),
                "{reason}"
            ),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
        assert_eq!(
            servers[0].command(&["GET", &key]).expect("GET"),
            "(nil)",
            "the round's partial lock was released"
        );
    }

    // Two different servers through the same two clients are two masters.
    servers[1].command(&["DEL", &key]).expect("DEL");
    let nodes = vec![
        backend(0, &servers[0].url()).await,
        backend(1, &servers[1].url()).await,
    ];
    let guard = Redlock::new(nodes, key.clone())
        .fencing(true)
        .node_timeout(NODE_TIMEOUT)
        .acquire()
        .await
        .expect("two servers");
    assert!(guard.release().await.unwrap());
}
