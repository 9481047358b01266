//! The client inputs the adapters accept, and a backend over each, for tests that run once per input.

use std::sync::Arc;
use std::time::Duration;

use redlease::LockBackend;
use redlease::deadpool::{DeadpoolBackend, deadpool_redis};
use redlease::fred::{FredBackend, fred::prelude::*};

/// One way to hand the library a client.
#[derive(Debug, Clone, Copy)]
pub enum Input {
    FredClient,
    FredPool,
    DeadpoolPool,
    RedisConnection,
}

/// Every input.
pub const INPUTS: [Input; 4] = [
    Input::FredClient,
    Input::FredPool,
    Input::DeadpoolPool,
    Input::RedisConnection,
];

/// What the redis-rs inputs (deadpool pool, multiplexed connection) keep of redis-rs's own timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisRsTimeouts {
    /// redis-rs's defaults: a 500 ms response timeout and a 1 s connection timeout.
    Default,
    /// None: a hung call takes exactly the adapter's bound, whichever input it goes through.
    Off,
}

/// A backend over `input` with the adapter's bound on every call set to `call_bound`. fred has no
/// per-command timeout of its own unless one is configured.
pub async fn backend(
    input: Input,
    url: &str,
    call_bound: Duration,
    redis_rs: RedisRsTimeouts,
) -> Arc<dyn LockBackend> {
    use deadpool_redis::redis::AsyncConnectionConfig;
    let config = match redis_rs {
        RedisRsTimeouts::Default => AsyncConnectionConfig::new(),
        RedisRsTimeouts::Off => AsyncConnectionConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(None),
    };
    match input {
        Input::FredClient => {
            let client = Builder::from_config(Config::from_url(url).unwrap())
                .build()
                .unwrap();
            client.init().await.unwrap();
            Arc::new(FredBackend::from(client).command_timeout(call_bound))
        }
        Input::FredPool => {
            let pool = Builder::from_config(Config::from_url(url).unwrap())
                .build_pool(2)
                .unwrap();
            pool.init().await.unwrap();
            Arc::new(FredBackend::from(pool).command_timeout(call_bound))
        }
        Input::DeadpoolPool => {
            let pool = match redis_rs {
                RedisRsTimeouts::Default => deadpool_redis::Config::from_url(url)
                    .create_pool(Some(deadpool_redis::Runtime::Tokio1))
                    .unwrap(),
                RedisRsTimeouts::Off => {
                    let manager = deadpool_redis::Manager::new_with_config(url, config).unwrap();
                    deadpool_redis::Pool::builder(manager).build().unwrap()
                }
            };
            Arc::new(DeadpoolBackend::from(pool).command_timeout(call_bound))
        }
        Input::RedisConnection => {
            let connection = deadpool_redis::redis::Client::open(url)
                .unwrap()
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .unwrap();
            Arc::new(DeadpoolBackend::from(connection).command_timeout(call_bound))
        }
    }
}
