//! Release waits end by their cap on a stock server. Redis checks blocked clients' timeouts only when
//! its event loop wakes (about every 100 ms at the default `hz 10`), so a `BLPOP` capped at 100 ms
//! answers after about 200 ms when waits follow each other; the adapters cap each wait on the client
//! side instead.

mod support;

use std::time::{Duration, Instant};

use support::inputs::{Input, Options};
use support::key_prefix;

/// The cap under test.
const CAP: Duration = Duration::from_millis(100);

/// How many waits each input makes; the median of them is asserted.
const WAITS: usize = 9;

/// Above the cap, for scheduling and the reply on a noisy 2-core machine, and well below the ~90 ms a
/// server-side timeout adds at `hz 10` (about 190 ms per 100 ms wait, every time, on this machine).
const SLACK: Duration = Duration::from_millis(50);

/// Why the median: one wait can be late by a scheduler stall of tens of milliseconds on a loaded
/// machine, but a median of 9 is late only if 5 of them are, while without a client-side cap every
/// single wait is late by about 90 ms (the server's timeout check is the floor, not noise). So the
/// bound fails on the old behaviour every time and passes under load unless most waits stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsignalled_wait_returns_by_its_cap() {
    let server = support::RedisServer::start();
    let url = server.url();
    for input in [Input::FredClient, Input::FredPool, Input::DeadpoolPool] {
        let backend = input.connect(&url, Options::new()).await;
        assert!(
            backend.capabilities().blocking_waits,
            "{input}: the adapter blocks on release signals"
        );
        let signal = format!("{}:{input}:signal", key_prefix());
        let mut took = Vec::with_capacity(WAITS);
        for _ in 0..WAITS {
            let started = Instant::now();
            let woken = backend.wait_for_release(&signal, CAP).await;
            took.push(started.elapsed());
            assert!(
                matches!(woken, Ok(false)),
                "{input}: an unsignalled wait answered {woken:?}"
            );
        }
        took.sort();
        let median = took[WAITS / 2];
        assert!(
            took[0] >= CAP,
            "{input}: a wait returned before its cap: {took:?}"
        );
        assert!(
            median < CAP + SLACK,
            "{input}: the median wait took {median:?} (cap {CAP:?}): {took:?}"
        );
        // A signal still wakes a wait, also right after waits that were abandoned.
        server
            .command(&["LPUSH", &signal, "1"])
            .expect("push a wake-up");
        let woken = backend.wait_for_release(&signal, CAP).await;
        assert!(matches!(woken, Ok(true)), "{input}: {woken:?}");
    }
}
