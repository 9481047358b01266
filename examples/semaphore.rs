//! A rate of uploads across processes: at most three uploads run at once, however many workers (in
//! however many processes) want to upload. Run it in two terminals at once to see them share the three
//! permits.
//!
//! Needs a Redis server: `REDIS_URL` (default `redis://127.0.0.1:6379/`).

use std::time::{Duration, Instant};

use redlease::deadpool::{DeadpoolBackend, deadpool_redis};
use redlease::{LockError, Semaphore};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let pool =
        deadpool_redis::Config::from_url(url).create_pool(Some(deadpool_redis::Runtime::Tokio1))?;

    let uploads = Semaphore::new(DeadpoolBackend::from(pool), "example:uploads", 3)
        // each permit is a lease: a crashed uploader's permit comes back after 10 s
        .timeout(Duration::from_secs(10))
        // how long a worker waits for a permit before giving up
        .wait_timeout(Some(Duration::from_secs(30)));

    let started = Instant::now();
    let workers = (0..8).map(|worker| {
        let (uploads, counter) = (uploads.clone(), uploads.clone());
        tokio::spawn(async move {
            // `run` renews the permit while the upload runs and gives it back afterwards. (An
            // `async move` closure: a spawned task's closure must own what it uses.)
            uploads
                .run(async move |permit| {
                    println!(
                        "{:>6.2}s worker {worker} uploading ({} permit, {} free now)",
                        started.elapsed().as_secs_f64(),
                        permit.permits(),
                        counter.available().await.unwrap_or(0),
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                })
                .await
        })
    });
    for outcome in futures::future::join_all(workers).await {
        match outcome? {
            Ok(()) => {}
            Err(LockError::Timeout { key, .. }) => println!("no permit of {key} came free in time"),
            Err(other) => return Err(other.into()),
        }
    }
    println!(
        "8 uploads, at most 3 at once, in {:.2}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
