//! The conformance suite of lock-core, against real `redis-server` processes, for every input the
//! adapters accept: fred `Client`, fred `Pool`, deadpool `Pool`, and a plain redis-rs connection.

mod support;

use std::sync::Arc;

use lock_core::testing::run_all;
use redlease::LockBackend;
use redlease::deadpool::{DeadpoolBackend, deadpool_redis};
use redlease::fred::{FredBackend, fred::prelude::*};
use support::probe::RedisProbe;

async fn fred_client(url: &str) -> Client {
    let client = Builder::from_config(Config::from_url(url).expect("url"))
        .build()
        .expect("fred client");
    client.init().await.expect("fred connects");
    client
}

async fn conformance(backend: Arc<dyn LockBackend>, url: &str) {
    run_all(backend, &RedisProbe::new(url), &support::key_prefix()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_client_passes_the_suite() {
    let (_server, url) = support::redis_url();
    let backend = FredBackend::from(fred_client(&url).await);
    conformance(Arc::new(backend), &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_pool_passes_the_suite() {
    let (_server, url) = support::redis_url();
    let pool = Builder::from_config(Config::from_url(&url).expect("url"))
        .build_pool(3)
        .expect("fred pool");
    pool.init().await.expect("fred pool connects");
    conformance(Arc::new(FredBackend::from(pool)), &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadpool_pool_passes_the_suite() {
    let (_server, url) = support::redis_url();
    let pool = deadpool_redis::Config::from_url(url.clone())
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .expect("deadpool pool");
    conformance(Arc::new(DeadpoolBackend::from(pool)), &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_connection_passes_the_suite() {
    let (_server, url) = support::redis_url();
    let connection = deadpool_redis::redis::Client::open(url.clone())
        .expect("redis client")
        .get_multiplexed_async_connection()
        .await
        .expect("redis connects");
    conformance(Arc::new(DeadpoolBackend::from(connection)), &url).await;
}
