//! The seed's raw leader/follower recipe, as written in aioredis_lock's README (see `leader_follower.rs` for
//! the same on `Election`): every worker waits forever for the lock; the one holding it leads,
//! checking and renewing its lease, and falls back to following when it loses it.
//!
//! Needs a Redis server: `REDIS_URL` (default `redis://127.0.0.1:6379/`). Run several copies; stop the
//! leader (Ctrl-C) and watch another take over. Each copy stops after `ROUNDS` rounds of work.

use std::time::Duration;

use redlease::RedisLock;
use redlease::deadpool::{DeadpoolBackend, deadpool_redis};

const ROUNDS: usize = 20;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let pool =
        deadpool_redis::Config::from_url(url).create_pool(Some(deadpool_redis::Runtime::Tokio1))?;
    let lock = RedisLock::new(DeadpoolBackend::from(pool), "shared_key")
        .timeout(Duration::from_secs(5))
        // wait indefinitely to acquire the lock
        .wait_timeout(None);

    let mut rounds = 0;
    // if the lock is lost, we still want to be a follower
    while rounds < ROUNDS {
        let guard = lock.acquire().await?;
        println!("leading with token {}", guard.token());
        // hold the lock as long as possible
        while rounds < ROUNDS {
            if !guard.is_owner().await? {
                println!("we are no longer the lock owner, falling back");
                break;
            }
            // do some work
            rounds += 1;
            println!("leader round {rounds}");
            tokio::time::sleep(Duration::from_secs(1)).await;
            if !guard.renew().await? {
                println!("we lost the lock, falling back to follower mode");
                break;
            }
        }
        guard.release().await?;
    }
    Ok(())
}
