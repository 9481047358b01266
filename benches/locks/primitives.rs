//! S6 (a semaphore under contention) and S7 (a read-write lock's writer under a reader stream).

use std::sync::Arc;
use std::time::{Duration, Instant};

use redlease::deadpool::deadpool_redis;
use redlease::script::{SEMAPHORE_ACQUIRE, SHARE_RELEASE};
use redlease::{LockBackend, RwLock, Semaphore};

use super::support::inputs::Input;
use super::{Floor, INPUTS, RedisServer, connect, print_row, quick};

/// S6: tasks on one semaphore.
const S6_TASKS: usize = 32;
const S6_LIMIT: u32 = 4;
const TTL_MS: &str = "10000";

/// One raw EVALSHA through the input's floor connection, without the library.
async fn raw_evalsha(floor: &Floor, sha: &str, keys: &[&str], args: &[&str]) {
    match floor {
        Floor::Fred(c) => raw_fred_evalsha(c, sha, keys, args).await,
        Floor::FredPool(p) => raw_fred_evalsha(p.next(), sha, keys, args).await,
        Floor::Redis(conn) => {
            let _: deadpool_redis::redis::Value = deadpool_redis::redis::cmd("EVALSHA")
                .arg(sha)
                .arg(keys.len())
                .arg(keys)
                .arg(args)
                .query_async(&mut conn.clone())
                .await
                .unwrap();
        }
    }
}

async fn raw_fred_evalsha(
    client: &redlease::fred::fred::prelude::Client,
    sha: &str,
    keys: &[&str],
    args: &[&str],
) {
    use redlease::fred::fred::prelude::*;
    let _: Value = client
        .evalsha(sha, keys.to_vec(), args.to_vec())
        .await
        .unwrap();
}

/// The floor of S6: one task's uncontended acquire + release of one permit, as the library sends them
/// (the acquire script, then the release script), sent by hand; in cycles per second.
async fn semaphore_floor(client: &Floor, backend: &Arc<dyn LockBackend>, key: &str) -> f64 {
    // Load both scripts so that the floor's EVALSHA finds them.
    let sem = Semaphore::new(backend.clone(), key, S6_LIMIT);
    sem.acquire().await.unwrap().release().await.unwrap();
    let signal = format!("{key}:floor-signal");
    let n = if quick() { 300 } else { 2000 };
    let started = Instant::now();
    for _ in 0..n {
        let member = format!("1:{}", uuid::Uuid::new_v4());
        let limit = S6_LIMIT.to_string();
        raw_evalsha(
            client,
            SEMAPHORE_ACQUIRE.sha1(),
            &[key],
            &[&member, "1", &limit, TTL_MS],
        )
        .await;
        raw_evalsha(
            client,
            SHARE_RELEASE.sha1(),
            &[key, &signal],
            &[&member, "1", "500"],
        )
        .await;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// S6: `S6_TASKS` tasks acquire and release one permit each of a semaphore of `S6_LIMIT`, for
/// `run_for`: permits per second and every task's count.
async fn semaphore_contention(
    backend: Arc<dyn LockBackend>,
    key: &str,
    run_for: Duration,
) -> (f64, Vec<usize>) {
    let sem = Semaphore::new(backend, key, S6_LIMIT)
        .timeout(Duration::from_secs(10))
        .wait_timeout(Some(Duration::from_secs(30)));
    let started = Instant::now();
    let deadline = started + run_for;
    let handles: Vec<_> = (0..S6_TASKS)
        .map(|_| {
            let sem = sem.clone();
            tokio::spawn(async move {
                let mut count = 0usize;
                while Instant::now() < deadline {
                    let permit = sem.acquire().await.expect("acquire under contention");
                    count += 1;
                    permit.release().await.expect("release");
                }
                count
            })
        })
        .collect();
    let mut counts = Vec::new();
    for handle in handles {
        counts.push(handle.await.unwrap());
    }
    let total: usize = counts.iter().sum();
    (total as f64 / started.elapsed().as_secs_f64(), counts)
}

pub(super) fn semaphore_scenarios(rt: &tokio::runtime::Runtime, server: &RedisServer) {
    let run_for = if quick() {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(4)
    };
    println!("\n### S6 semaphore ({S6_TASKS} tasks, limit {S6_LIMIT}, one process, {run_for:?})\n");
    print_row(
        &[
            "adapter",
            "floor cycles/s (1 task, raw scripts)",
            "permits/s",
            "permits/s ÷ floor",
            "fairness (min/max)",
            "commands/permit",
        ]
        .map(String::from),
    );
    print_row(&["---"; 6].map(String::from));
    let inputs: Vec<Input> = INPUTS.to_vec();
    for input in inputs {
        let client = rt.block_on(connect(input, &server.url()));
        let backend = client.backend(None);
        let key = format!("bench:s6:{}:{}", input.name(), uuid::Uuid::new_v4());
        let floor = rt.block_on(semaphore_floor(
            &rt.block_on(Floor::of(&client)),
            &backend,
            &key,
        ));
        let before = server.commands_total();
        let (per_sec, counts) = rt.block_on(semaphore_contention(backend, &key, run_for));
        let commands = server.commands_total() - before;
        let min = *counts.iter().min().unwrap_or(&0) as f64;
        let max = *counts.iter().max().unwrap_or(&1) as f64;
        print_row(&[
            input.name().into(),
            format!("{floor:.0}"),
            format!("{per_sec:.0}"),
            format!("{:.2}", per_sec / floor),
            format!("{:.2}", min / max.max(1.0)),
            format!(
                "{:.2}",
                commands as f64 / counts.iter().sum::<usize>().max(1) as f64
            ),
        ]);
    }
}

/// S7: reader tasks that keep the lock read-held (each reads for a moment, releases, reads again,
/// overlapping), and one writer that asks for the write hold again and again.
const S7_READERS: usize = 8;
const S7_READ_FOR: Duration = Duration::from_millis(2);
const S7_WRITE_EVERY: Duration = Duration::from_millis(20);

/// Runs S7 for `run_for`: every write wait, the reads per second, the reader-free cycle time of one
/// uncontended write hold taken and released by the same client (the floor the waits compare with),
/// and how many holds were taken in all.
async fn rwlock_contention(
    backend: Arc<dyn LockBackend>,
    key: &str,
    run_for: Duration,
) -> (Vec<Duration>, f64, Duration, usize) {
    let rw = RwLock::new(backend, key)
        .timeout(Duration::from_secs(10))
        .wait_timeout(Some(Duration::from_secs(30)));
    let n = 100;
    let floor_started = Instant::now();
    for _ in 0..n {
        rw.write().await.unwrap().release().await.unwrap();
    }
    let floor = floor_started.elapsed() / n;
    let started = Instant::now();
    let deadline = started + run_for;
    let readers: Vec<_> = (0..S7_READERS)
        .map(|_| {
            let rw = rw.clone();
            tokio::spawn(async move {
                let mut reads = 0usize;
                while Instant::now() < deadline {
                    let reader = rw.read().await.expect("read under a writer");
                    tokio::time::sleep(S7_READ_FOR).await;
                    reader.release().await.expect("release");
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let writer = tokio::spawn(async move {
        let mut waits = Vec::new();
        while Instant::now() < deadline {
            tokio::time::sleep(S7_WRITE_EVERY).await;
            let asked = Instant::now();
            let guard = rw.write().await.expect("write under a reader stream");
            waits.push(asked.elapsed());
            guard.release().await.expect("release");
        }
        waits
    });
    let mut reads = 0;
    for reader in readers {
        reads += reader.await.unwrap();
    }
    let mut waits = writer.await.unwrap();
    waits.sort();
    // Every hold taken, the floor's write holds included (the command count spans the floor too).
    let acquisitions = reads + waits.len() + n as usize;
    (
        waits,
        reads as f64 / started.elapsed().as_secs_f64(),
        floor,
        acquisitions,
    )
}

pub(super) fn rwlock_scenarios(rt: &tokio::runtime::Runtime, server: &RedisServer) {
    let run_for = if quick() {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(4)
    };
    println!(
        "\n### S7 read-write lock ({S7_READERS} readers holding {S7_READ_FOR:?} each, back to back; one writer every {S7_WRITE_EVERY:?}; {run_for:?})\n"
    );
    print_row(
        &[
            "adapter",
            "uncontended write cycle",
            "writes",
            "writer wait p50",
            "writer wait p99",
            "p99 ÷ uncontended cycle",
            "reads/s",
            "commands/acq",
        ]
        .map(String::from),
    );
    print_row(&["---"; 8].map(String::from));
    for input in INPUTS {
        let client = rt.block_on(connect(input, &server.url()));
        let key = format!("bench:s7:{}:{}", input.name(), uuid::Uuid::new_v4());
        let before = server.commands_total();
        let (waits, reads, floor, acquisitions) =
            rt.block_on(rwlock_contention(client.backend(None), &key, run_for));
        let commands = server.commands_total() - before;
        let p = |q: f64| super::percentile(&waits, q);
        print_row(&[
            input.name().into(),
            format!("{:.3} ms", floor.as_secs_f64() * 1e3),
            waits.len().to_string(),
            format!("{:.3} ms", p(0.5).as_secs_f64() * 1e3),
            format!("{:.3} ms", p(0.99).as_secs_f64() * 1e3),
            format!("{:.1}", p(0.99).as_secs_f64() / floor.as_secs_f64()),
            format!("{reads:.0}"),
            format!("{:.2}", commands as f64 / acquisitions.max(1) as f64),
        ]);
    }
}
