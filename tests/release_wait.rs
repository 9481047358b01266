//! `wait_for_release` on both adapters: a wait that nobody signals answers "not woken" when its time is
//! up (never an error: since a failed wait now ends an acquisition, an error here would turn every
//! contended `acquire` into a failure), and a release signal wakes it.

mod support;

use std::time::{Duration, Instant};

use support::inputs::{Input, Options};
use support::key_prefix;

/// Far above a healthy local call; the CI box has 2 noisy cores.
const SLACK: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsignalled_wait_answers_not_woken_and_a_signal_wakes_it() {
    let server = support::RedisServer::start();
    let url = server.url();
    for input in [Input::FredClient, Input::DeadpoolPool] {
        let backend = input.connect(&url, Options::new()).await;
        let signal = format!("{}:{input}:signal", key_prefix());
        assert!(
            backend.capabilities().blocking_waits,
            "{input}: the adapter blocks on release signals"
        );
        // Below every adapter's longest single block (deadpool: 250 ms), so each wait blocks as asked.
        for wait in [Duration::from_millis(100), Duration::from_millis(200)] {
            let started = Instant::now();
            let woken = backend.wait_for_release(&signal, wait).await;
            let took = started.elapsed();
            assert!(
                matches!(woken, Ok(false)),
                "{input}: an unsignalled {wait:?} wait answered {woken:?}"
            );
            assert!(took >= wait, "{input}: returned after {took:?} of {wait:?}");
            assert!(
                took < wait + SLACK,
                "{input}: returned after {took:?} of {wait:?}"
            );
        }
        server
            .command(&["LPUSH", &signal, "1"])
            .expect("push a wake-up");
        let woken = backend
            .wait_for_release(&signal, Duration::from_secs(1))
            .await;
        assert!(matches!(woken, Ok(true)), "{input}: {woken:?}");
    }
}
