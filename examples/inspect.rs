//! What an operator asks first about a key: who holds it, for how long, which fence was issued last,
//! who waits. One read-only round trip; safe against a live lock.
//!
//! ```text
//! cargo run --example inspect -- jobs:nightly               # a lock (plain or fair)
//! cargo run --example inspect -- --semaphore uploads 3      # a semaphore (its limit, optional)
//! cargo run --example inspect -- --rwlock doc:42            # a read-write lock
//! cargo run --example inspect -- --election scheduler       # an election
//! ```
//!
//! Needs a Redis server: `REDIS_URL` (default `redis://127.0.0.1:6379/`).

use std::time::Duration;

use redlease::deadpool::{DeadpoolBackend, deadpool_redis};
use redlease::{Election, RedisLock, RwLock, Semaphore};

const USAGE: &str = "usage: inspect [--lock | --semaphore | --rwlock | --election] KEY [LIMIT]";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (kind, rest) = match args.first().map(String::as_str) {
        Some(flag) if flag.starts_with("--") => (flag, &args[1..]),
        _ => ("--lock", &args[..]),
    };
    let Some(key) = rest.first() else {
        return Err(USAGE.into());
    };
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let pool =
        deadpool_redis::Config::from_url(url).create_pool(Some(deadpool_redis::Runtime::Tokio1))?;
    let backend = DeadpoolBackend::from(pool).command_timeout(Duration::from_secs(2));

    match kind {
        "--lock" => {
            let info = RedisLock::new(backend, key).inspect().await?;
            println!("lock {key}");
            println!("  holder:  {}", info.holder.as_deref().unwrap_or("nobody"));
            println!("  ttl:     {}", seconds(info.ttl));
            println!("  fence:   {}", number(info.fence));
            println!("  waiting: {} in fair queue", info.queue.len());
            for (place, token) in info.queue.iter().enumerate() {
                println!("    {}. {token}", place + 1);
            }
        }
        "--semaphore" => {
            // The limit is only this tool's guess for a key that stores none (nobody holds a permit).
            let limit = rest.get(1).map(|n| n.parse()).transpose()?.unwrap_or(1);
            let info = Semaphore::new(backend, key, limit).inspect().await?;
            let stored = info.limit.map_or("none stored".into(), |n| n.to_string());
            println!("semaphore {key}: limit {stored}");
            println!("  held: {}   free: {}", info.held, info.available);
            println!("  fence: {}", number(info.fence));
            for holder in &info.holders {
                println!(
                    "  {} permit(s), {} left  {}",
                    holder.permits,
                    seconds(Some(holder.remaining)),
                    holder.token
                );
            }
        }
        "--rwlock" => {
            let info = RwLock::new(backend, key).inspect().await?;
            println!("read-write lock {key}");
            match &info.writer {
                Some(writer) => println!(
                    "  writer: {} ({} left)",
                    writer.token,
                    seconds(Some(writer.remaining))
                ),
                None => println!("  writer: none"),
            }
            println!("  readers: {}", info.readers.len());
            for reader in &info.readers {
                println!(
                    "    {} ({} left)",
                    reader.token,
                    seconds(Some(reader.remaining))
                );
            }
            println!("  writers waiting: {}", info.waiting_writers.len());
            println!("  fence: {}", number(info.fence));
        }
        "--election" => {
            let info = Election::new(backend, key).inspect().await?;
            println!("election {key}");
            println!("  leader: {}", info.leader.as_deref().unwrap_or("nobody"));
            println!("  term:   {}", number(info.term));
            println!("  ttl:    {}", seconds(info.ttl));
        }
        _ => return Err(USAGE.into()),
    }
    Ok(())
}

/// A duration as a person reads it: tenths of a second.
fn seconds(duration: Option<Duration>) -> String {
    duration.map_or("-".into(), |d| format!("{:.1}s", d.as_secs_f64()))
}

/// A fence or term: the number, or a dash when none was ever issued.
fn number(n: Option<u64>) -> String {
    n.map_or("-".into(), |n| n.to_string())
}
