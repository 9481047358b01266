//! A readable timeline of redlease at work: workers contend for a mutex, then a leader fails over.
//!
//! Uses `REDIS_URL` when set; otherwise starts a throwaway local `redis-server` when one is installed;
//! otherwise runs on the in-memory backend and says so.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redlease::deadpool::{DeadpoolBackend, deadpool_redis};
use redlease::memory::MemoryBackend;
use redlease::{Election, LockBackend, RedisLock};

/// A `redis-server` started for this demo, stopped when dropped.
struct ThrowawayRedis(Child);

impl Drop for ThrowawayRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_throwaway_redis() -> Option<(ThrowawayRedis, String)> {
    let port = TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let server = ThrowawayRedis(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some((server, format!("redis://127.0.0.1:{port}/")))
}

fn redis_backend(url: &str) -> Result<Arc<dyn LockBackend>, Box<dyn std::error::Error>> {
    let pool =
        deadpool_redis::Config::from_url(url).create_pool(Some(deadpool_redis::Runtime::Tokio1))?;
    Ok(Arc::new(DeadpoolBackend::from(pool)))
}

/// A wait as a person reads it: whole milliseconds, or tenths below 10 ms.
fn readable(wait: Duration) -> String {
    let ms = wait.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// Fences are large numbers (the server's clock in µs): number the terms 1, 2, 3 in the order their
/// fences rank instead.
#[derive(Default)]
struct Terms(std::sync::Mutex<Vec<u64>>);

impl Terms {
    fn number(&self, fence: u64) -> usize {
        let mut seen = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !seen.contains(&fence) {
            seen.push(fence);
            seen.sort_unstable();
        }
        seen.iter().position(|&f| f == fence).unwrap_or(0) + 1
    }
}

struct Timeline(Instant);

impl Timeline {
    fn say(&self, who: &str, what: impl std::fmt::Display) {
        println!(
            "{:>7.1} ms  {who:<10} {what}",
            self.0.elapsed().as_secs_f64() * 1000.0
        );
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut _server = None;
    let backend: Arc<dyn LockBackend> = if let Ok(url) = std::env::var("REDIS_URL") {
        println!("using Redis at REDIS_URL ({url})");
        redis_backend(&url)?
    } else if let Some((server, url)) = start_throwaway_redis() {
        println!("started a throwaway redis-server at {url}");
        _server = Some(server);
        redis_backend(&url)?
    } else {
        println!("no REDIS_URL and no redis-server installed: running on the in-memory backend");
        Arc::new(MemoryBackend::new())
    };
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let t = Arc::new(Timeline(Instant::now()));

    println!("\n== 1. four workers share one mutex (each does 3 jobs of 40 ms) ==");
    let mutex = RedisLock::new(backend.clone(), format!("demo:{run_id}:report"))
        .timeout(Duration::from_secs(5))
        .wait_timeout(Some(Duration::from_secs(10)));
    let workers = (1..=4).map(|n| {
        let (mutex, t) = (mutex.clone(), t.clone());
        tokio::spawn(async move {
            let who = format!("worker-{n}");
            for job in 1..=3 {
                let waited = Instant::now();
                let guard = mutex.acquire().await?;
                t.say(
                    &who,
                    format_args!(
                        "acquired after {} wait, job {job}",
                        readable(waited.elapsed())
                    ),
                );
                tokio::time::sleep(Duration::from_millis(40)).await;
                let still_ours = guard.release().await?;
                t.say(&who, format_args!("released (still ours: {still_ours})"));
            }
            Ok::<_, redlease::LockError>(())
        })
    });
    for worker in workers.collect::<Vec<_>>() {
        worker.await??;
    }

    println!(
        "\n== 2. leader election: each leader works 600 ms (renewed by hold), then crashes =="
    );
    let key = format!("demo:{run_id}:leader");
    let terms = Arc::new(Terms::default());
    let candidates = ["alpha", "bravo", "charlie"].map(|name| {
        let election = Election::new(backend.clone(), key.clone())
            .timeout(Duration::from_millis(500))
            .id(name);
        let (t, terms) = (t.clone(), terms.clone());
        tokio::spawn(async move {
            let leadership = election.campaign().await?;
            let term = terms.number(leadership.term());
            t.say(name, format_args!("leads, term {term}"));
            let work = tokio::time::sleep(Duration::from_millis(600));
            leadership.hold(work).await?;
            t.say(
                name,
                format_args!(
                    "crashes without resigning (leader is still {}; its 500 ms lease will run out)",
                    election.leader().await?.unwrap_or_default()
                ),
            );
            std::mem::forget(leadership);
            Ok::<_, redlease::LockError>(name)
        })
    });
    for candidate in candidates {
        candidate.await??;
    }
    println!("\nall three candidates led in turn, each term numbered higher; no two at once.");
    Ok(())
}
