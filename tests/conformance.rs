//! The conformance suite of lock-core, against real `redis-server` processes, for every input the
//! adapters accept: fred `Client`, fred `Pool`, deadpool `Pool`, and a plain redis-rs connection.

mod support;

use lock_core::testing::run_all;
use support::inputs::{Input, Options};
use support::probe::RedisProbe;

async fn conformance(input: Input) {
    let (_server, url) = support::redis_url();
    let backend = input.connect(&url, Options::new().fred_pool_size(3)).await;
    run_all(backend, &RedisProbe::new(&url), &support::key_prefix()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_client_passes_the_suite() {
    conformance(Input::FredClient).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_pool_passes_the_suite() {
    conformance(Input::FredPool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadpool_pool_passes_the_suite() {
    conformance(Input::DeadpoolPool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_connection_passes_the_suite() {
    conformance(Input::RedisConnection).await;
}
