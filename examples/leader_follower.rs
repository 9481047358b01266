//! Leader/follower on `Election`: every worker campaigns; the leader works while `hold` keeps its term
//! renewed, and falls back to campaigning the moment the term is lost.
//!
//! Needs a Redis server: `REDIS_URL` (default `redis://127.0.0.1:6379/`). Run several copies; stop the
//! leader (Ctrl-C) and another takes over within the TTL. Each copy stops after `ROUNDS` rounds of work.

use std::time::Duration;

use redlease::deadpool::{DeadpoolBackend, deadpool_redis};
use redlease::{Election, LockError};

const ROUNDS: usize = 20;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let pool =
        deadpool_redis::Config::from_url(url).create_pool(Some(deadpool_redis::Runtime::Tokio1))?;
    let me = format!("worker-{}", std::process::id());
    let election = Election::new(DeadpoolBackend::from(pool), "shared_key")
        .timeout(Duration::from_secs(5))
        .id(me.clone());

    let mut rounds = 0;
    while rounds < ROUNDS {
        println!("{me}: following (leader: {:?})", election.leader().await?);
        let leadership = election.campaign().await?;
        println!("{me}: leading term {}", leadership.term());
        let work = async {
            while rounds < ROUNDS {
                rounds += 1;
                println!("{me}: leader round {rounds}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        };
        match leadership.hold(work).await {
            Ok(()) => {
                leadership.resign().await?;
            }
            Err(LockError::Lost { reason, .. }) => println!("{me}: lost the lead ({reason})"),
            Err(other) => return Err(other.into()),
        }
    }
    Ok(())
}
