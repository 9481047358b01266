//! The seed's mutex recipe: take the lock, do the work, extend it if the work needs longer, and give up
//! cleanly when another worker holds it.
//!
//! Needs a Redis server: `REDIS_URL` (default `redis://127.0.0.1:6379/`).

use std::time::Duration;

use redlease::deadpool::{DeadpoolBackend, deadpool_redis};
use redlease::{LockError, RedisLock};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let pool =
        deadpool_redis::Config::from_url(url).create_pool(Some(deadpool_redis::Runtime::Tokio1))?;

    let lock = RedisLock::new(DeadpoolBackend::from(pool), "foobar")
        // how long until the lock should expire; it can be extended with `guard.extend(..)`
        .timeout(Duration::from_secs(30))
        // how long to keep trying to acquire it
        .wait_timeout(Some(Duration::from_secs(30)));

    let outcome = lock
        .run(async |guard| {
            // If you get here, you now hold the lock and are the only program running this code now.
            println!("holding {} with token {}", guard.key(), guard.token());
            // do some work...
            // we may want it longer...
            guard.extend(Duration::from_secs(30)).await
        })
        .await;

    match outcome {
        Ok(extended) => println!("work done (extended: {})", extended?),
        // The lock could not be acquired by this worker and we should give up.
        Err(LockError::Timeout { key, .. }) => {
            println!("{key} is held by another worker; giving up")
        }
        Err(other) => return Err(other.into()),
    }
    Ok(())
}
