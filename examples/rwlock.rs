//! A cache rebuilt by one writer while readers serve it: the readers share a read-write lock, a
//! rebuild takes the write hold, and no reader ever sees a half-built cache. The writer waits only for
//! the readers already in (new ones wait behind it), then downgrades to read what it built.
//!
//! Uses `REDIS_URL` when set (e.g. `redis://127.0.0.1:6379/`); otherwise runs on the in-memory
//! backend and says so.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redlease::deadpool::{DeadpoolBackend, deadpool_redis};
use redlease::memory::MemoryBackend;
use redlease::{LockBackend, RwLock};

/// The cache the lock guards: in a real deployment, keys in Redis or files on shared storage.
#[derive(Default)]
struct Cache {
    version: u32,
    /// Every entry carries the version that wrote it: a reader seeing two versions saw a half-built
    /// cache.
    entries: Vec<u32>,
}

fn backend() -> Result<Arc<dyn LockBackend>, Box<dyn std::error::Error>> {
    match std::env::var("REDIS_URL") {
        Ok(url) => {
            println!("using Redis at {url}");
            let pool = deadpool_redis::Config::from_url(url)
                .create_pool(Some(deadpool_redis::Runtime::Tokio1))?;
            Ok(Arc::new(DeadpoolBackend::from(pool)))
        }
        Err(_) => {
            println!("REDIS_URL is not set: using the in-memory backend");
            Ok(Arc::new(MemoryBackend::new()))
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let lock = RwLock::new(backend()?, "example:cache")
        .timeout(Duration::from_secs(5))
        .wait_timeout(Some(Duration::from_secs(10)))
        .fencing(true);
    let cache = Arc::new(Mutex::new(Cache::default()));
    let started = Instant::now();

    let mut readers = Vec::new();
    for reader in 0..3 {
        let (lock, cache) = (lock.clone(), cache.clone());
        readers.push(tokio::spawn(async move {
            let mut served = 0;
            while started.elapsed() < Duration::from_secs(2) {
                let guard = lock.read().await?;
                {
                    let cache = cache.lock().expect("cache");
                    assert!(
                        cache.entries.iter().all(|v| *v == cache.version),
                        "a reader saw a half-built cache"
                    );
                }
                served += 1;
                // Serving takes a while; readers overlap.
                tokio::time::sleep(Duration::from_millis(30)).await;
                guard.release().await?;
            }
            println!("reader {reader}: served {served} requests");
            Ok::<_, redlease::LockError>(())
        }));
    }

    let writer = {
        let (lock, cache) = (lock.clone(), cache.clone());
        tokio::spawn(async move {
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_millis(400)).await;
                let asked = Instant::now();
                let guard = lock.write().await?;
                let waited = asked.elapsed();
                // Rebuild in steps, as a real rebuild would: no reader is in meanwhile.
                let version = {
                    let mut cache = cache.lock().expect("cache");
                    cache.version += 1;
                    cache.entries.clear();
                    cache.version
                };
                for _ in 0..5 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    cache.lock().expect("cache").entries.push(version);
                }
                // Keep reading what was built, with readers let back in at once.
                let reader = guard.downgrade().await?;
                println!(
                    "writer: rebuilt version {version} (fence {:?}) after waiting {waited:?} for the readers",
                    reader.fence()
                );
                reader.release().await?;
            }
            Ok::<_, redlease::LockError>(())
        })
    };

    writer.await??;
    for reader in readers {
        reader.await??;
    }
    Ok(())
}
