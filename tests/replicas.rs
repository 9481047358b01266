//! Replica acknowledgement (`RedisLock::replicas`) against a real primary with one replica, for every
//! adapter input: with the replica frozen, `WAIT` blocks for its whole timeout and answers 0, and every
//! call that asked for the replica's acknowledgement answers `LockError::NotReplicated`, never a
//! transient timeout of the adapter's own making:
//!
//! - a `WAIT` longer than redis-rs's own response timeout (500 ms by default), issue 8, hole 18;
//! - a `WAIT` sent twice because the server did not have the script cached (`NOSCRIPT`: the `WAIT`
//!   pipelined after the failed `EVALSHA` runs for nothing, then the script goes again with `EVAL`
//!   and another `WAIT`), with the replica timeout longer than the adapter's command timeout.

mod support;

use std::time::{Duration, Instant};

use redlease::{LockError, LockGuard, RedisLock};
use support::inputs::{Input, Options};
use support::{RedisServer, key_prefix};

/// Room for a noisy 2-core machine on top of the bounds under test.
const SLACK: Duration = Duration::from_secs(3);

#[track_caller]
fn assert_not_replicated<T: std::fmt::Debug>(
    input: Input,
    what: &str,
    result: Result<T, LockError>,
) {
    match result {
        Err(LockError::NotReplicated {
            wanted: 1,
            acked: 0,
            ..
        }) => {}
        other => {
            panic!("{input} {what}: expected NotReplicated (1 wanted, 0 acked), got {other:?}")
        }
    }
}

/// Whether `key` exists on `server`.
fn exists(server: &RedisServer, key: &str) -> bool {
    server.command(&["EXISTS", key]).expect("EXISTS") == "1"
}

/// `replicas(1, 800 ms)`, longer than redis-rs's 500 ms response timeout, with the only replica frozen:
/// the acquisition, and `renew` and `extend` of a lock acquired before the freeze, answer
/// `NotReplicated` after the whole `WAIT`; the refused acquisition is released. The scripts are cached
/// first, so each call sends one `WAIT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_longer_than_the_response_timeout_answers_not_replicated() {
    let primary = RedisServer::start();
    let replica = primary.start_replica();
    let wait = Duration::from_millis(800);
    let call_bound = Duration::from_secs(2);
    for input in Input::REDIS {
        let backend = input
            .connect(&primary.url(), Options::new().call_bound(call_bound))
            .await;
        let lock = |name: &str| {
            RedisLock::new(backend.clone(), format!("{}{name}", key_prefix()))
                .timeout(Duration::from_secs(30))
                .replicas(1, wait)
        };
        // Acknowledged while the replica runs; every script is cached on the primary from here on.
        let held: LockGuard = lock("held")
            .try_acquire()
            .await
            .unwrap_or_else(|e| panic!("{input}: acknowledged by the running replica: {e:?}"))
            .expect("free");
        assert!(held.renew().await.unwrap(), "{input}");
        assert!(
            held.extend(Duration::from_secs(1)).await.unwrap(),
            "{input}"
        );

        replica.pause();
        let refused = lock("refused");
        let mut took = Vec::new();
        let started = Instant::now();
        let acquired = refused.try_acquire().await.map(|g| g.is_some());
        took.push(started.elapsed());
        let started = Instant::now();
        let renewed = held.renew().await;
        took.push(started.elapsed());
        let started = Instant::now();
        let extended = held.extend(Duration::from_secs(1)).await;
        took.push(started.elapsed());
        replica.resume();
        primary.wait_for_replicas(1);

        assert_not_replicated(input, "try_acquire", acquired);
        assert_not_replicated(input, "renew", renewed);
        assert_not_replicated(input, "extend", extended);
        // Each `WAIT` ran its whole timeout, within the adapter's bound for the call.
        for took in took {
            assert!(
                took >= wait && took < wait + call_bound + SLACK,
                "{input}: a call took {took:?}"
            );
        }
        assert!(
            !exists(&primary, refused.key()),
            "{input}: the unreplicated acquisition was released"
        );
        assert!(held.release().await.unwrap(), "{input}");
    }
}

/// With the scripts flushed from the primary, a replicated call sends `WAIT` twice (after `EVALSHA`,
/// answered `NOSCRIPT`, and after `EVAL`), so with the replica frozen it takes two replica timeouts:
/// here more than the command timeout plus one replica timeout. It still answers `NotReplicated`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_sent_again_after_noscript_answers_not_replicated() {
    let primary = RedisServer::start();
    let replica = primary.start_replica();
    let wait = Duration::from_millis(1600);
    let call_bound = Duration::from_millis(1500);
    for input in Input::REDIS {
        let backend = input
            .connect(&primary.url(), Options::new().call_bound(call_bound))
            .await;
        let lock = RedisLock::new(backend, format!("{}flushed", key_prefix()))
            .timeout(Duration::from_secs(30))
            .replicas(1, wait);

        primary.command(&["SCRIPT", "FLUSH"]).expect("SCRIPT FLUSH");
        replica.pause();
        let started = Instant::now();
        let acquired = lock.try_acquire().await.map(|g| g.is_some());
        let took = started.elapsed();
        replica.resume();
        primary.wait_for_replicas(1);

        assert_not_replicated(input, "try_acquire", acquired);
        assert!(
            took >= 2 * wait && took < 2 * (wait + call_bound) + SLACK,
            "{input}: try_acquire took {took:?}"
        );
        assert!(
            !exists(&primary, lock.key()),
            "{input}: the unreplicated acquisition was released"
        );
    }
}
