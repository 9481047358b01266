//! S5: N leases held with `hold` (TTL 1.5 s, for 10 s) by one process, on every input: leases lost,
//! client CPU (`/proc/self/stat`), Redis CPU and commands per second (`INFO`), and RSS per held lease.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use redlease::{LockError, RedisLock};

use super::support::inputs::Input;
use super::{RedisServer, connect, print_row, quick};

const TTL: Duration = Duration::from_millis(1_500);

/// How many acquisitions run at once while the leases are taken.
const ACQUIRING: usize = 256;

/// The inputs of S5: every input of the other scenarios, and a single redis-rs connection.
const S5_INPUTS: [Input; 4] = [
    Input::FredClient,
    Input::FredPool,
    Input::DeadpoolPool,
    Input::RedisConnection,
];

/// Clock ticks per second of `/proc/self/stat` (`CLK_TCK`, 100 on Linux).
const TICKS: f64 = 100.0;

/// This process's CPU time so far (user + system), from `/proc/self/stat`.
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which may hold spaces), closed by the last ')'.
    let rest = &stat[stat.rfind(')').expect("a command name") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name and state.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_secs_f64(ticks as f64 / TICKS)
}

/// This process's resident memory in bytes (`VmRSS` of `/proc/self/status`).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// A field of `INFO section`, as a number.
fn info_field(server: &RedisServer, section: &str, field: &str) -> f64 {
    let info = server.command(&["INFO", section]).expect("INFO");
    let prefix = format!("{field}:");
    info.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("INFO {section} has no {field}"))
}

/// Redis's CPU time so far (used_cpu_sys + used_cpu_user) and commands processed.
fn server_counters(server: &RedisServer) -> (f64, f64) {
    let cpu =
        info_field(server, "cpu", "used_cpu_sys") + info_field(server, "cpu", "used_cpu_user");
    let commands = info_field(server, "stats", "total_commands_processed");
    (cpu, commands)
}

/// S5 for every input and N = 10,000 and 50,000.
pub(crate) fn scale_scenarios(server: &RedisServer) {
    let held_for = if quick() {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(10)
    };
    println!(
        "\n### S5 N leases held with `hold` (TTL {TTL:?}, {held_for:?}) by one process\n\n\
         (the machine is shared: CPU figures are noisy)\n"
    );
    print_row(
        &[
            "adapter",
            "N",
            "lost",
            "client cores",
            "Redis cores",
            "Redis commands/s",
            "RSS per lease",
        ]
        .map(String::from),
    );
    print_row(&["---"; 7].map(String::from));
    // `REDLEASE_BENCH_S5_N=50000` runs one N alone.
    let sizes = match std::env::var("REDLEASE_BENCH_S5_N") {
        Ok(n) => vec![n.parse::<usize>().expect("REDLEASE_BENCH_S5_N: a number")],
        Err(_) => vec![10_000usize, 50_000],
    };
    for n in sizes {
        for input in S5_INPUTS {
            print_row(&measure_in_child(server, input, n, held_for));
        }
    }
}

/// Runs one S5 row in a child process of its own (a fresh heap, so that its RSS per lease is not
/// hidden by memory an earlier row freed), and measures the server while the child holds.
fn measure_in_child(
    server: &RedisServer,
    input: Input,
    n: usize,
    held_for: Duration,
) -> Vec<String> {
    use std::io::BufRead;
    let mut child = super::spawn_child(
        "s5",
        input,
        &server.url(),
        "",
        &[
            ("REDLEASE_BENCH_S5_ONE", n.to_string()),
            ("REDLEASE_BENCH_MILLIS", held_for.as_millis().to_string()),
        ],
    );
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut next = || {
        lines
            .next()
            .expect("the S5 child ended early")
            .expect("the S5 child's output")
    };
    assert_eq!(next(), "held");
    let (wall0, (redis_cpu0, commands0)) = (Instant::now(), server_counters(server));
    assert_eq!(next(), "measured");
    let (wall, (redis_cpu1, commands1)) = (wall0.elapsed(), server_counters(server));
    let row = next();
    child.wait().expect("the S5 child");
    let secs = wall.as_secs_f64();
    let mut cells: Vec<String> = row
        .strip_prefix("row ")
        .expect("a row")
        .split('|')
        .map(String::from)
        .collect();
    // adapter, N, lost, client cores | Redis cores, commands/s | RSS per lease.
    let rss = cells.pop().expect("RSS per lease");
    cells.push(format!("{:.2}", (redis_cpu1 - redis_cpu0) / secs));
    cells.push(format!("{:.0}", (commands1 - commands0) / secs));
    cells.push(rss);
    cells
}

/// The S5 child: holds `REDLEASE_BENCH_S5_ONE` leases through its input and prints `held`,
/// `measured`, then `row adapter|N|lost|client cores|RSS per lease`.
pub(crate) fn child(rt: &tokio::runtime::Runtime, input: Input, url: &str) {
    let n: usize = std::env::var("REDLEASE_BENCH_S5_ONE")
        .expect("REDLEASE_BENCH_S5_ONE")
        .parse()
        .expect("a number");
    let held_for = Duration::from_millis(
        std::env::var("REDLEASE_BENCH_MILLIS")
            .expect("REDLEASE_BENCH_MILLIS")
            .parse()
            .expect("a number"),
    );
    let row = rt.block_on(hold_many(url, input, n, held_for));
    println!("row {}", row.join("|"));
}

/// Holds `n` leases through `input` for `held_for`; one table row.
async fn hold_many(url: &str, input: Input, n: usize, held_for: Duration) -> Vec<String> {
    let client = connect(input, url).await;
    let backend = client.backend(None);
    let rss_before = rss_bytes();
    let prefix = format!(
        "bench:s5:{}:{n}:{}",
        input.name(),
        uuid::Uuid::new_v4().simple()
    );
    // Every hold ends with one shared signal (one timer for all, not one per lease).
    let (stop, stopped) = futures::channel::oneshot::channel::<()>();
    let stopped = stopped.map(drop).shared();
    let acquired = Arc::new(AtomicUsize::new(0));
    let all_held = Arc::new(tokio::sync::Notify::new());
    // Acquisitions a few hundred at a time, as a service taking on work would: 50,000 at once would
    // measure the client's queue (and a pool's checkout timeout), not the holding.
    let acquiring = Arc::new(tokio::sync::Semaphore::new(ACQUIRING));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let lock = RedisLock::new(backend.clone(), format!("{prefix}:{i}")).timeout(TTL);
        let (acquired, all_held, stopped) = (acquired.clone(), all_held.clone(), stopped.clone());
        let acquiring = acquiring.clone();
        tasks.push(tokio::spawn(async move {
            let turn = acquiring.acquire_owned().await.expect("open");
            let guard = lock.acquire().await.expect("acquire");
            drop(turn);
            if acquired.fetch_add(1, Ordering::Relaxed) + 1 == n {
                all_held.notify_one();
            }
            let held = guard.hold(stopped).await;
            let lost = match held {
                Err(LockError::Lost { reason, .. }) => Some(reason),
                _ => None,
            };
            // Released after the measurement, so releases do not count.
            (guard, lost)
        }));
    }
    all_held.notified().await;
    let rss_held = rss_bytes();
    let (cpu0, wall0) = (process_cpu(), Instant::now());
    say("held");
    tokio::time::sleep(held_for).await;
    let (cpu1, wall) = (process_cpu(), wall0.elapsed());
    say("measured");
    let _ = stop.send(());
    let mut lost = 0usize;
    let mut first_reason = None;
    let mut guards = Vec::with_capacity(n);
    for task in tasks {
        let (guard, reason) = task.await.expect("a hold task");
        if let Some(reason) = reason {
            lost += 1;
            first_reason.get_or_insert(reason);
        }
        guards.push(guard);
    }
    if let Some(reason) = first_reason {
        eprintln!(
            "S5 {} N={n}: {lost} lost, the first: {reason}",
            input.name()
        );
    }
    futures::future::join_all(guards.into_iter().map(|guard| guard.release())).await;
    let secs = wall.as_secs_f64();
    let per_lease = rss_held.saturating_sub(rss_before) as f64 / n as f64;
    vec![
        input.name().into(),
        n.to_string(),
        lost.to_string(),
        format!("{:.2}", (cpu1 - cpu0).as_secs_f64() / secs),
        format!("{:.1} KiB", per_lease / 1024.0),
    ]
}

/// One line to the parent, at once.
fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").expect("stdout");
    out.flush().expect("stdout");
}
