//! redlease benchmarks against the raw floor, in one run, against one `redis-server` the bench starts.
//!
//! - S1 uncontended acquire + release (criterion), beside the same `SET NX PX` and release script sent
//!   through the same client without the library.
//! - S2 contended: 8 tasks on one key, in one process and split over two processes.
//! - S3 hand-off: release (returned, and called) → waiting acquirer's acquire returning, in one process
//!   and across two.
//! - S4 Redis commands per acquisition under S2 (`INFO commandstats`).
//! - S6 semaphore: 32 tasks on a semaphore of 4, permits per second against the raw floor, fairness.
//! - S7 read-write lock: a writer's wait under a continuous stream of readers.
//!
//! `cargo bench --bench locks` runs all of it; `REDLEASE_BENCH_QUICK=1` shortens every scenario, and
//! `REDLEASE_BENCH_ONLY=s1` (`s2`, `s3`, `s6`, `s7`) runs one scenario alone (without criterion's S1).

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "locks/primitives.rs"]
mod primitives;
#[path = "locks/scale.rs"]
mod scale;

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::Criterion;
use redlease::deadpool::deadpool_redis;
use redlease::deadpool::deadpool_redis::redis::aio::MultiplexedConnection;
use redlease::fred::fred::clients::Pool as FredPool;
use redlease::fred::fred::prelude::*;
use redlease::script::RELEASE;
use redlease::{LockBackend, RedisLock};
use support::RedisServer;
use support::inputs::{Input, Options, RawClient};

const TTL: Duration = Duration::from_secs(10);
const CONTENDERS: usize = 8;

/// The inputs benchmarked, in the tables' order. Their names ([`Input::name`]) are the benchmark ids
/// and the values of `REDLEASE_BENCH_PROFILE`.
const INPUTS: [Input; 4] = [
    Input::FredClient,
    Input::FredPool,
    Input::DeadpoolPool,
    Input::RedisConnection,
];

/// A fred pool of 4 clients; every other client with its defaults.
fn options() -> Options {
    Options::new().fred_pool_size(4)
}

/// One input's client, usable raw (the floor) and as a lock backend over the same connections.
async fn connect(input: Input, url: &str) -> RawClient {
    input.client(url, &options()).await
}

fn parse_input(name: &str) -> Input {
    Input::from_name(name).unwrap_or_else(|| panic!("unknown input {name}"))
}

/// The raw floor's client: the connection the library's lock commands take through this input,
/// used directly. For a deadpool `Pool` that is one connection taken out of the pool (the adapter's lock
/// lane), so that neither side pays a checkout's recycle per command.
enum Floor {
    Fred(Client),
    FredPool(FredPool),
    Redis(MultiplexedConnection),
}

impl Floor {
    async fn of(client: &RawClient) -> Floor {
        match client {
            RawClient::Fred(c) => Floor::Fred(c.clone()),
            RawClient::FredPool(p) => Floor::FredPool(p.clone()),
            RawClient::Deadpool(pool) => {
                Floor::Redis(deadpool_redis::Connection::take(pool.get().await.unwrap()))
            }
            RawClient::Redis(conn) => Floor::Redis(conn.clone()),
            RawClient::Memory(_) => panic!("this bench has no raw floor for the memory backend"),
        }
    }

    /// The library's two round trips (`SET NX PX`, then `EVALSHA` of the release script), sent by hand.
    async fn cycle(&self, key: &str, token: &str) {
        let ttl_ms = TTL.as_millis() as i64;
        match self {
            Floor::Fred(c) => raw_fred(c, key, token, ttl_ms).await,
            Floor::FredPool(p) => raw_fred(p.next(), key, token, ttl_ms).await,
            Floor::Redis(conn) => {
                use deadpool_redis::redis::cmd;
                let mut conn = conn.clone();
                let previous: Option<String> = cmd("SET")
                    .arg(key)
                    .arg(token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms)
                    .arg("GET")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                assert!(previous.is_none());
                let released: i64 = cmd("EVALSHA")
                    .arg(RELEASE.sha1())
                    .arg(1)
                    .arg(key)
                    .arg(token)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                assert_eq!(released, 1);
            }
        }
    }
}

async fn raw_fred(client: &Client, key: &str, token: &str, ttl_ms: i64) {
    use redlease::fred::fred::types::{Expiration, SetOptions};
    let previous: Option<String> = client
        .set(
            key,
            token,
            Some(Expiration::PX(ttl_ms)),
            Some(SetOptions::NX),
            true,
        )
        .await
        .unwrap();
    assert!(previous.is_none());
    let released: i64 = client
        .evalsha(RELEASE.sha1(), vec![key], vec![token])
        .await
        .unwrap();
    assert_eq!(released, 1);
}

fn quick() -> bool {
    std::env::var_os("REDLEASE_BENCH_QUICK").is_some()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn s1_uncontended(c: &mut Criterion, rt: &tokio::runtime::Runtime, url: &str) {
    let mut group = c.benchmark_group("S1-uncontended");
    for input in INPUTS {
        let client = rt.block_on(connect(input, url));
        let key = format!("bench:s1:{}", input.name());
        let token = uuid::Uuid::new_v4().to_string();
        // Load the release script so the floor's EVALSHA finds it.
        rt.block_on(
            client
                .backend(None)
                .eval_script(&RELEASE, &[&key], &[&token]),
        )
        .unwrap();
        let floor = rt.block_on(Floor::of(&client));
        group.bench_function(format!("{}/raw", input.name()), |b| {
            b.to_async(rt).iter(|| floor.cycle(&key, &token))
        });
        let lock = RedisLock::new(client.backend(None), key.clone()).timeout(TTL);
        group.bench_function(format!("{}/redlease", input.name()), |b| {
            b.to_async(rt).iter(|| async {
                let guard = lock.acquire().await.unwrap();
                assert!(guard.release().await.unwrap());
            })
        });
    }
    group.finish();
}

/// Results of one contention run: per-task acquisition counts and every wait.
#[derive(Default)]
struct Contention {
    counts: Vec<usize>,
    waits: Vec<Duration>,
    elapsed: Duration,
}

async fn contend(
    backend: Arc<dyn LockBackend>,
    key: &str,
    tasks: usize,
    run_for: Duration,
) -> Contention {
    let lock = RedisLock::new(backend, key)
        .timeout(TTL)
        .wait_timeout(Some(Duration::from_secs(30)));
    let started = Instant::now();
    let deadline = started + run_for;
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let lock = lock.clone();
            tokio::spawn(async move {
                let mut waits = Vec::new();
                while Instant::now() < deadline {
                    let asked = Instant::now();
                    let guard = lock.acquire().await.expect("acquire under contention");
                    waits.push(asked.elapsed());
                    guard.release().await.expect("release");
                }
                waits
            })
        })
        .collect();
    let mut result = Contention::default();
    for handle in handles {
        let waits = handle.await.unwrap();
        result.counts.push(waits.len());
        result.waits.extend(waits);
    }
    result.elapsed = started.elapsed();
    result
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[rank]
}

fn spawn_child(
    role: &str,
    input: Input,
    url: &str,
    key: &str,
    extra: &[(&str, String)],
) -> std::process::Child {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.env("REDLEASE_BENCH_ROLE", role)
        .env("REDLEASE_BENCH_ADAPTER", input.name())
        .env("REDLEASE_BENCH_URL", url)
        .env("REDLEASE_BENCH_KEY", key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn print_row(cells: &[String]) {
    println!("| {} |", cells.join(" | "));
}

fn contention_scenarios(
    rt: &tokio::runtime::Runtime,
    server: &RedisServer,
    floor_cycles_per_sec: &[(Input, f64)],
) {
    let run_for = if quick() {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(4)
    };
    println!(
        "\n### S2 contended ({CONTENDERS} tasks, one key, {run_for:?}) and S4 commands per acquisition\n"
    );
    print_row(
        &[
            "adapter",
            "processes",
            "acq/s",
            "acq/s ÷ S1 floor cycles/s",
            "p50 wait",
            "p99 wait",
            "fairness (min/max)",
            "commands/acq",
        ]
        .map(String::from),
    );
    print_row(&["---"; 8].map(String::from));
    for input in INPUTS {
        let floor = floor_cycles_per_sec
            .iter()
            .find(|(a, _)| *a == input)
            .map(|(_, f)| *f)
            .unwrap_or(f64::NAN);
        for processes in [1usize, 2] {
            let key = format!(
                "bench:s2:{}:{processes}:{}",
                input.name(),
                uuid::Uuid::new_v4()
            );
            let client = rt.block_on(connect(input, &server.url()));
            let before = server.commands_total();
            let local_tasks = CONTENDERS / processes;
            let child = (processes == 2).then(|| {
                spawn_child(
                    "contend",
                    input,
                    &server.url(),
                    &key,
                    &[
                        (
                            "REDLEASE_BENCH_TASKS",
                            (CONTENDERS - local_tasks).to_string(),
                        ),
                        ("REDLEASE_BENCH_MILLIS", run_for.as_millis().to_string()),
                    ],
                )
            });
            let mut result = rt.block_on(contend(client.backend(None), &key, local_tasks, run_for));
            if let Some(child) = child {
                let out = child.wait_with_output().unwrap();
                for line in String::from_utf8_lossy(&out.stdout).lines() {
                    if let Some(counts) = line.strip_prefix("counts ") {
                        result
                            .counts
                            .extend(counts.split(',').filter_map(|c| c.parse::<usize>().ok()));
                    }
                    if let Some(waits) = line.strip_prefix("waits ") {
                        result.waits.extend(
                            waits
                                .split(',')
                                .filter_map(|w| w.parse::<u64>().ok())
                                .map(Duration::from_nanos),
                        );
                    }
                }
            }
            let after = server.commands_total();
            let total: usize = result.counts.iter().sum();
            let per_sec = total as f64 / result.elapsed.as_secs_f64();
            result.waits.sort();
            let min = *result.counts.iter().min().unwrap_or(&0) as f64;
            let max = *result.counts.iter().max().unwrap_or(&1) as f64;
            print_row(&[
                input.name().into(),
                processes.to_string(),
                format!("{per_sec:.0}"),
                format!("{:.2}", per_sec / floor),
                format!(
                    "{:.3} ms",
                    percentile(&result.waits, 0.5).as_secs_f64() * 1e3
                ),
                format!(
                    "{:.3} ms",
                    percentile(&result.waits, 0.99).as_secs_f64() * 1e3
                ),
                format!("{:.2}", min / max),
                format!("{:.2}", (after - before) as f64 / total.max(1) as f64),
            ]);
        }
    }
}

/// One hand-off: the holder releases while the waiter is already waiting. Returns the waiter's
/// acquire-return less the release's call and less its return, in nanoseconds on the shared wall clock.
async fn handoff_once(holder: &RedisLock, waiter: &RedisLock) -> (u128, u128) {
    let guard = holder.acquire().await.unwrap();
    let waiter = waiter.clone();
    let waiting = tokio::spawn(async move {
        let g = waiter.acquire().await.unwrap();
        let at = unix_nanos();
        g.release().await.unwrap();
        at
    });
    // Let the waiter fail its first attempt and settle into waiting.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let called_at = unix_nanos();
    guard.release().await.unwrap();
    let returned_at = unix_nanos();
    let acquired_at = waiting.await.unwrap();
    (
        acquired_at.saturating_sub(called_at),
        acquired_at.saturating_sub(returned_at),
    )
}

/// p50 and p99 of `samples` (nanoseconds), in milliseconds: "p50 / p99 ms".
fn p50_p99(samples: &mut [u128]) -> String {
    samples.sort();
    let p = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize] as f64 / 1e6;
    format!("{:.3} / {:.3} ms", p(0.5), p(0.99))
}

fn handoff_scenarios(rt: &tokio::runtime::Runtime, server: &RedisServer) {
    let rounds = if quick() { 30 } else { 200 };
    println!(
        "\n### S3 hand-off (waiter's acquire returned, after the holder's release returned / was called), {rounds} rounds\n"
    );
    print_row(
        &[
            "adapter",
            "where",
            "p50 / p99 after the release returned",
            "p50 / p99 after the release was called",
            "commands/acq",
        ]
        .map(String::from),
    );
    print_row(&["---"; 5].map(String::from));
    for input in INPUTS {
        let client = rt.block_on(connect(input, &server.url()));
        // One process: holder and waiter share the backend.
        let key = format!("bench:s3:{}:{}", input.name(), uuid::Uuid::new_v4());
        let lock = RedisLock::new(client.backend(None), key)
            .timeout(TTL)
            .wait_timeout(Some(Duration::from_secs(30)));
        let before = server.commands_total();
        let (mut from_call, mut from_return): (Vec<u128>, Vec<u128>) = (0..rounds)
            .map(|_| rt.block_on(handoff_once(&lock, &lock)))
            .unzip();
        // Each round is two acquisitions (the holder's and the waiter's).
        let per_acquisition = (server.commands_total() - before) as f64 / (2 * rounds) as f64;
        print_row(&[
            input.name().into(),
            "one process".into(),
            p50_p99(&mut from_return),
            p50_p99(&mut from_call),
            format!("{per_acquisition:.2}"),
        ]);

        // Two processes: the waiter is a child process. Each round: we hold the lock, tell the child
        // to start waiting, release, and read back when its acquire returned.
        let key = format!("bench:s3x:{}:{}", input.name(), uuid::Uuid::new_v4());
        let lock = RedisLock::new(client.backend(None), key.clone())
            .timeout(TTL)
            .wait_timeout(Some(Duration::from_secs(30)));
        let mut child = spawn_child("waiter", input, &server.url(), &key, &[]);
        let mut to_child = child.stdin.take().unwrap();
        let mut from_child = std::io::BufReader::new(child.stdout.take().unwrap());
        let (mut from_call, mut from_return) = (Vec::new(), Vec::new());
        let before = server.commands_total();
        for _ in 0..rounds {
            let guard = rt.block_on(lock.acquire()).unwrap();
            writeln!(to_child, "go").unwrap();
            to_child.flush().unwrap();
            // Let the child fail its first attempt and settle into waiting.
            rt.block_on(async { tokio::time::sleep(Duration::from_millis(20)).await });
            let called_at = unix_nanos();
            rt.block_on(guard.release()).unwrap();
            let returned_at = unix_nanos();
            let mut line = String::new();
            from_child.read_line(&mut line).unwrap();
            let acquired_at: u128 = line
                .trim()
                .strip_prefix("acquired ")
                .unwrap()
                .parse()
                .unwrap();
            from_call.push(acquired_at.saturating_sub(called_at));
            from_return.push(acquired_at.saturating_sub(returned_at));
        }
        let per_acquisition = (server.commands_total() - before) as f64 / (2 * rounds) as f64;
        drop(to_child);
        child.wait().unwrap();
        print_row(&[
            input.name().into(),
            "two processes".into(),
            p50_p99(&mut from_return),
            p50_p99(&mut from_call),
            format!("{per_acquisition:.2}"),
        ]);
    }
}

/// Only the library's S1 loop (or the floor's), for a profiler: `REDLEASE_BENCH_PROFILE=fred-client perf record -g ...`.
fn profile_loop(rt: &tokio::runtime::Runtime, server: &RedisServer, input: Input) {
    let client = rt.block_on(connect(input, &server.url()));
    let lock = RedisLock::new(client.backend(None), "bench:profile").timeout(TTL);
    let n = 20_000;
    // `REDLEASE_BENCH_PROFILE_RAW=1`: the raw floor's loop instead, to compare (e.g. `strace -c -f`).
    let raw = std::env::var_os("REDLEASE_BENCH_PROFILE_RAW").is_some();
    let floor = rt.block_on(Floor::of(&client));
    let token = uuid::Uuid::new_v4().to_string();
    rt.block_on(
        client
            .backend(None)
            .eval_script(&RELEASE, &["bench:profile"], &[&token]),
    )
    .unwrap();
    let started = Instant::now();
    rt.block_on(async {
        for _ in 0..n {
            if raw {
                floor.cycle("bench:profile", &token).await;
            } else {
                let guard = lock.acquire().await.unwrap();
                guard.release().await.unwrap();
            }
        }
    });
    println!("{} cycles in {:?}", n, started.elapsed());
}

/// A child process: contends (S2) or waits for hand-offs (S3), and reports on stdout.
fn child(role: &str) {
    let input = parse_input(&std::env::var("REDLEASE_BENCH_ADAPTER").unwrap());
    let url = std::env::var("REDLEASE_BENCH_URL").unwrap();
    let key = std::env::var("REDLEASE_BENCH_KEY").unwrap();
    let rt = runtime();
    if role == "s5" {
        // Connects on its own, after measuring the memory it starts with.
        return scale::child(&rt, input, &url);
    }
    let client = rt.block_on(connect(input, &url));
    match role {
        "contend" => {
            let tasks: usize = std::env::var("REDLEASE_BENCH_TASKS")
                .unwrap()
                .parse()
                .unwrap();
            let millis: u64 = std::env::var("REDLEASE_BENCH_MILLIS")
                .unwrap()
                .parse()
                .unwrap();
            let result = rt.block_on(contend(
                client.backend(None),
                &key,
                tasks,
                Duration::from_millis(millis),
            ));
            let counts: Vec<String> = result.counts.iter().map(|c| c.to_string()).collect();
            let waits: Vec<String> = result
                .waits
                .iter()
                .map(|w| w.as_nanos().to_string())
                .collect();
            println!("counts {}", counts.join(","));
            println!("waits {}", waits.join(","));
        }
        "waiter" => {
            let lock = RedisLock::new(client.backend(None), key)
                .timeout(TTL)
                .wait_timeout(Some(Duration::from_secs(30)));
            let stdin = std::io::stdin();
            let mut out = std::io::stdout();
            for line in stdin.lock().lines() {
                if line.unwrap().trim() != "go" {
                    break;
                }
                let guard = rt.block_on(lock.acquire()).unwrap();
                writeln!(out, "acquired {}", unix_nanos()).unwrap();
                out.flush().unwrap();
                rt.block_on(guard.release()).unwrap();
            }
        }
        other => panic!("unknown role {other}"),
    }
}

/// S1 as a timed loop, raw floor and library interleaved: prints the table and answers each input's
/// floor in cycles per second, so that S2 compares within this run.
fn s1_timed(rt: &tokio::runtime::Runtime, server: &RedisServer) -> Vec<(Input, f64)> {
    let mut floors = Vec::new();
    println!("\n### S1 uncontended (mean of a timed loop; criterion's figures above)\n");
    print_row(
        &[
            "adapter",
            "raw floor",
            "redlease",
            "ratio",
            "commands/cycle raw / redlease",
        ]
        .map(String::from),
    );
    print_row(&["---"; 5].map(String::from));
    for input in INPUTS {
        let client = rt.block_on(connect(input, &server.url()));
        let key = format!("bench:s1loop:{}", input.name());
        let token = uuid::Uuid::new_v4().to_string();
        let lock = RedisLock::new(client.backend(None), key.clone()).timeout(TTL);
        let floor = rt.block_on(Floor::of(&client));
        // Load the release script so the floor's EVALSHA finds it.
        rt.block_on(
            client
                .backend(None)
                .eval_script(&RELEASE, &[&key], &[&token]),
        )
        .unwrap();
        let n = if quick() { 500 } else { 3000 };
        let (mut raw, mut lib) = (Duration::ZERO, Duration::ZERO);
        let (mut raw_commands, mut lib_commands) = (0, 0);
        // Interleave blocks so machine noise hits both sides alike.
        for _ in 0..5 {
            let before = server.commands_total();
            let t = Instant::now();
            rt.block_on(async {
                for _ in 0..n / 5 {
                    floor.cycle(&key, &token).await;
                }
            });
            raw += t.elapsed();
            let middle = server.commands_total();
            raw_commands += middle - before;
            let t = Instant::now();
            rt.block_on(async {
                for _ in 0..n / 5 {
                    let guard = lock.acquire().await.unwrap();
                    guard.release().await.unwrap();
                }
            });
            lib += t.elapsed();
            lib_commands += server.commands_total() - middle;
        }
        let per = |d: Duration| d / n as u32;
        floors.push((input, n as f64 / raw.as_secs_f64()));
        print_row(&[
            input.name().into(),
            format!("{:.1} µs", per(raw).as_secs_f64() * 1e6),
            format!("{:.1} µs", per(lib).as_secs_f64() * 1e6),
            format!("{:.3}", lib.as_secs_f64() / raw.as_secs_f64()),
            format!(
                "{:.2} / {:.2}",
                raw_commands as f64 / n as f64,
                lib_commands as f64 / n as f64
            ),
        ]);
    }
    floors
}

fn main() {
    if let Ok(role) = std::env::var("REDLEASE_BENCH_ROLE") {
        child(&role);
        return;
    }
    let server = RedisServer::start();
    let rt = runtime();
    if let Ok(input) = std::env::var("REDLEASE_BENCH_PROFILE") {
        profile_loop(&rt, &server, parse_input(&input));
        return;
    }
    if let Ok(only) = std::env::var("REDLEASE_BENCH_ONLY") {
        // One scenario alone, for a profile or a second look: `REDLEASE_BENCH_ONLY=s6`.
        match only.as_str() {
            "s1" => drop(s1_timed(&rt, &server)),
            "s2" => contention_scenarios(&rt, &server, &s1_timed(&rt, &server)),
            "s3" => handoff_scenarios(&rt, &server),
            "s6" => primitives::semaphore_scenarios(&rt, &server),
            "s7" => primitives::rwlock_scenarios(&rt, &server),
            "s5" => scale::scale_scenarios(&server),
            other => panic!("REDLEASE_BENCH_ONLY={other}: only s1 to s3 and s5 to s7 run alone"),
        }
        return;
    }
    let mut criterion = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(if quick() { 1 } else { 4 }))
        .sample_size(if quick() { 10 } else { 40 });
    s1_uncontended(&mut criterion, &rt, &server.url());

    let floors = s1_timed(&rt, &server);
    contention_scenarios(&rt, &server, &floors);
    handoff_scenarios(&rt, &server);
    primitives::semaphore_scenarios(&rt, &server);
    primitives::rwlock_scenarios(&rt, &server);
    scale::scale_scenarios(&server);
    criterion.final_summary();
}
