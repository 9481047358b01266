//! The conformance suite of lock-core, against real `redis-server` processes, for every input the
//! adapters accept: fred `Client`, fred `Pool`, deadpool `Pool`, and a plain redis-rs connection. One
//! test per check and input, e.g. `fred_pool::release_checks_the_token`.
//!
//! Each input's checks share one server (started once per test binary, see
//! [`support::shared_redis_url`]) and each test builds its own client on its own runtime; a check that
//! needs a store to itself gets a server of its own, owned by its probe.

mod support;

use std::future::Future;

use lock_core::testing::{Fixture, Setup};
use support::RedisServer;
use support::inputs::{Input, Options};
use support::probe::RedisProbe;

/// A new client of `input`, and a probe onto its server, for the check `setup` describes.
async fn fixture(input: Input, setup: Setup) -> Fixture {
    let mut options = Options::new().fred_pool_size(3);
    if let Some(bound) = setup.call_bound {
        options = options.call_bound(bound);
    }
    if setup.own_store {
        let server = RedisServer::start();
        let backend = input.connect(&server.url(), options).await;
        Fixture::new(backend, RedisProbe::owning(server))
    } else {
        let url = support::shared_redis_url(input.name());
        let backend = input.connect(&url, options).await;
        Fixture::new(backend, RedisProbe::new(&url))
    }
}

/// A multi-threaded runtime of two workers per test, as `#[tokio::test(flavor = "multi_thread")]`.
fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(future)
}

mod fred_client {
    use super::{Input, block_on, fixture};

    lock_core::conformance_tests!(
        setup = |setup| fixture(Input::FredClient, setup),
        run = block_on
    );
}

mod fred_pool {
    use super::{Input, block_on, fixture};

    lock_core::conformance_tests!(
        setup = |setup| fixture(Input::FredPool, setup),
        run = block_on
    );
}

mod deadpool_pool {
    use super::{Input, block_on, fixture};

    lock_core::conformance_tests!(
        setup = |setup| fixture(Input::DeadpoolPool, setup),
        run = block_on
    );
}

mod redis_connection {
    use super::{Input, block_on, fixture};

    lock_core::conformance_tests!(
        setup = |setup| fixture(Input::RedisConnection, setup),
        run = block_on
    );
}
