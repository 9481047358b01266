//! The blocking API in a synchronous program: four threads take turns at one lock through a fred
//! client, and one of them holds it through long work, checking as it goes that the lease still holds.
//! Run it in two terminals at once to see the two processes take turns too.
//!
//! Needs a Redis server: `REDIS_URL` (default `redis://127.0.0.1:6379/`).

use std::thread;
use std::time::{Duration, Instant};

use redlease::LockError;
use redlease::blocking::{self, RedisLock};
use redlease::fred::FredBackend;
use redlease::fred::fred::prelude::{Builder, ClientLike, Config, ReconnectPolicy};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let mut builder = Builder::from_config(Config::from_url(&url)?);
    // Without a reconnect policy a fred client never recovers from a Redis restart.
    builder.set_policy(ReconnectPolicy::new_constant(0, 500));
    let client = builder.build()?;
    // `init` spawns the client's connection task on the runtime it is awaited on: the blocking API's
    // own, which runs for as long as the process does.
    blocking::block_on({
        let client = client.clone();
        async move { client.init().await.map(drop) }
    })??;

    let lock = RedisLock::new(FredBackend::from(client), "example:blocking")
        // a short TTL, renewed in the background while the work runs
        .timeout(Duration::from_secs(2))
        .wait_timeout(Some(Duration::from_secs(20)));

    let started = Instant::now();
    let workers: Vec<_> = (0..4)
        .map(|worker| {
            let lock = lock.clone();
            thread::spawn(move || {
                // `run`: acquire, run the closure on this thread while the lock is renewed, release.
                lock.run(|guard| {
                    println!(
                        "{:>5.2}s thread {worker} holds the lock ({} ms of lease left)",
                        started.elapsed().as_secs_f64(),
                        guard.valid_for().as_millis()
                    );
                    thread::sleep(Duration::from_millis(300));
                })
            })
        })
        .collect();
    for worker in workers {
        match worker.join().expect("a worker thread panicked") {
            Ok(()) => {}
            Err(LockError::Timeout { key, .. }) => println!("{key} did not come free in time"),
            Err(other) => return Err(other.into()),
        }
    }

    // Longer than the TTL, step by step: `hold` renews meanwhile, and `is_lost` says when to stop.
    let guard = lock.acquire()?;
    let steps = guard.hold(|| {
        let mut done = 0;
        for _ in 0..10 {
            if guard.is_lost() {
                break;
            }
            thread::sleep(Duration::from_millis(500));
            done += 1;
        }
        done
    });
    match steps {
        Ok(steps) => println!("{steps} steps of 0.5 s done under a 2 s lease"),
        Err(LockError::Lost { reason, .. }) => println!("lost the lock during the work: {reason}"),
        Err(other) => return Err(other.into()),
    }
    println!("released: {}", guard.release()?);
    Ok(())
}
