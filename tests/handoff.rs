//! Hand-offs: local waiters are served in FIFO order through the in-process queue, and a waiter in
//! another process (here: another client, so another queue) is woken by the release signal instead of
//! polling.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redlease::{Backoff, RedisLock};
use support::RedisServer;
use support::inputs::{Input, Options};

/// A waiter whose backoff would sleep 20 s between attempts still gets the lock soon after a release
/// by a holder it shares no process state with: the release signal woke it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_wakes_a_waiter_elsewhere() {
    let server = RedisServer::start();
    let url = server.url();
    for input in [Input::FredClient, Input::FredPool, Input::DeadpoolPool] {
        // Two backends: holder and waiter share no process state, as in two processes.
        let holder_backend = input.connect(&url, Options::new()).await;
        let waiter_backend = input.connect(&url, Options::new()).await;
        let key = format!("{}handoff", support::key_prefix());
        let holder = RedisLock::new(holder_backend, key.clone()).timeout(Duration::from_secs(60));
        let slow_poller = Backoff::new(Duration::from_secs(20), Duration::from_secs(20));
        let waiter = RedisLock::new(waiter_backend, key.clone())
            .backoff(slow_poller)
            .wait_timeout(Some(Duration::from_secs(60)));
        for round in 0..3 {
            let guard = holder.acquire().await.unwrap();
            let waiting = tokio::spawn({
                let waiter = waiter.clone();
                async move {
                    let guard = waiter.acquire().await.unwrap();
                    let at = Instant::now();
                    guard.release().await.unwrap();
                    at
                }
            });
            tokio::time::sleep(Duration::from_millis(300)).await;
            let releasing = Instant::now();
            assert!(guard.release().await.unwrap());
            let acquired = waiting.await.unwrap();
            // Not before the release was sent: that would be two holders.
            let took = acquired
                .checked_duration_since(releasing)
                .unwrap_or_else(|| {
                    panic!("{input} round {round}: the waiter acquired before the release was sent")
                });
            // Polling would take up to 20 s; the signal takes about a round trip. The bound leaves
            // room for a loaded machine.
            assert!(
                took < Duration::from_secs(3),
                "{input} round {round}: woken after {took:?}"
            );
        }
    }
}

/// Tasks of one process waiting for one key get it in the order they asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_waiters_are_served_in_order() {
    let server = RedisServer::start();
    let url = server.url();
    for input in [Input::FredClient, Input::DeadpoolPool] {
        let backend = input.connect(&url, Options::new()).await;
        let lock = RedisLock::new(backend, format!("{}fifo", support::key_prefix()))
            .timeout(Duration::from_secs(60))
            .wait_timeout(Some(Duration::from_secs(60)));
        let holder = lock.acquire().await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for n in 0..6 {
            let (waiter, order) = (lock.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let guard = waiter.acquire().await.unwrap();
                order.lock().unwrap().push(n);
                guard.release().await.unwrap();
            }));
            // Waiter n joins the line before waiter n + 1 starts (however loaded the machine).
            let runtime = lock
                .backend()
                .runtime()
                .expect("the adapters have a runtime");
            let joined = Instant::now();
            while runtime.waiting(lock.key()) < n + 1 {
                assert!(
                    joined.elapsed() < Duration::from_secs(10),
                    "{input}: waiter {n} never joined"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        assert!(holder.release().await.unwrap());
        for waiter in waiters {
            waiter.await.unwrap();
        }
        assert_eq!(
            *order.lock().unwrap(),
            (0..6).collect::<Vec<_>>(),
            "{input}"
        );
    }
}
