//! `wait_for_release` on both adapters: a wait that nobody signals answers "not woken" when its time is
//! up (never an error: since a failed wait now ends an acquisition, an error here would turn every
//! contended `acquire` into a failure), and a release signal wakes it.

mod support;

use std::time::{Duration, Instant};

use lock_core::LockBackend;
use redlease::deadpool::{DeadpoolBackend, deadpool_redis};
use redlease::fred::{FredBackend, fred::prelude::*};
use support::key_prefix;

/// Far above a healthy local call; the CI box has 2 noisy cores.
const SLACK: Duration = Duration::from_secs(2);

async fn backends(url: &str) -> Vec<(&'static str, Box<dyn LockBackend>)> {
    let client = Builder::from_config(Config::from_url(url).expect("url"))
        .build()
        .expect("fred client");
    client.init().await.expect("fred connects");
    let pool = deadpool_redis::Config::from_url(url)
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .expect("create pool");
    vec![
        ("fred", Box::new(FredBackend::from(client))),
        ("deadpool", Box::new(DeadpoolBackend::from(pool))),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsignalled_wait_answers_not_woken_and_a_signal_wakes_it() {
    let server = support::RedisServer::start();
    let url = server.url();
    for (name, backend) in backends(&url).await {
        let signal = format!("{}:{name}:signal", key_prefix());
        assert!(
            backend.capabilities().blocking_waits,
            "{name}: the adapter blocks on release signals"
        );
        // Below every adapter's longest single block (deadpool: 250 ms), so each wait blocks as asked.
        for wait in [Duration::from_millis(100), Duration::from_millis(200)] {
            let started = Instant::now();
            let woken = backend.wait_for_release(&signal, wait).await;
            let took = started.elapsed();
            assert!(
                matches!(woken, Ok(false)),
                "{name}: an unsignalled {wait:?} wait answered {woken:?}"
            );
            assert!(took >= wait, "{name}: returned after {took:?} of {wait:?}");
            assert!(
                took < wait + SLACK,
                "{name}: returned after {took:?} of {wait:?}"
            );
        }
        server
            .command(&["LPUSH", &signal, "1"])
            .expect("push a wake-up");
        let woken = backend
            .wait_for_release(&signal, Duration::from_secs(1))
            .await;
        assert!(matches!(woken, Ok(true)), "{name}: {woken:?}");
    }
}
