//! The in-memory backend passes the conformance suite, under tokio and under a non-tokio executor:
//! lock-core needs no particular runtime. One test per check and executor: `tokio::<check>` and
//! `futures::<check>`.

use std::future::Future;
use std::sync::Arc;

use lock_core::memory::MemoryBackend;
use lock_core::testing::{Fixture, Setup};

/// A fresh store per check; the backend is its own probe.
async fn setup(_: Setup) -> Fixture {
    let store = MemoryBackend::new();
    Fixture::new(Arc::new(store.clone()), store)
}

/// The suite over [`setup`], driven by `$run`. The skipped checks need a Redis server behind the
/// backend and the probe (`Need::Server`: scripts of their own, `SCRIPT LOAD`, `INFO commandstats`, a
/// list key, pausing the server); the in-memory store runs only the lock scripts, natively.
macro_rules! memory_suite {
    ($run:expr) => {
        lock_core::conformance_tests!(
            setup = super::setup,
            run = $run,
            skip = [
                script_digests_match_the_server,
                noscript_falls_back_to_eval_once,
                script_replies_keep_their_shapes,
                wrong_type_is_permanent,
                script_errors_are_permanent_but_loading_is_transient,
                a_paused_server_gives_a_transient_timeout,
            ],
        );
    };
}

mod tokio {
    /// A multi-threaded runtime of two workers per test, as `#[tokio::test(flavor = "multi_thread")]`.
    fn block_on<F: super::Future>(future: F) -> F::Output {
        ::tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime")
            .block_on(future)
    }

    memory_suite!(block_on);
}

mod futures {
    memory_suite!(::futures::executor::block_on);
}
