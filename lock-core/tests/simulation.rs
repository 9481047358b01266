//! The deterministic simulation (issue 9): the real lock-core code over simulated servers, network,
//! clocks and faults, on one thread and virtual time, with a checker of the invariants over the
//! recorded history.
//!
//! - `cargo test -p lock-core --test simulation` runs at least `REDLEASE_SIM_OPS` operations (default
//!   100,000) over as many seeds as that takes, starting at `REDLEASE_SIM_BASE` (default 1; `random`
//!   draws one), and ends by printing `simulation: <operations> operations, <seeds> seeds,
//!   <violations> violations; by primitive: mutex <n>, redlock <n>, election <n>, semaphore <n>,
//!   rwlock <n>, fair <n>`. A failing seed is printed with the command that replays it.
//! - `REDLEASE_SIM_MODE=single|failover|replicas|redlock` runs every seed in that mode (see
//!   `workload::Mode`), to focus a soak.
//! - `REDLEASE_SIM_FAILURES=<n>` stops after `n` failing seeds (default 5).
//! - `REDLEASE_SIM_SEED=<seed>` runs that seed alone and prints its configuration and violations
//!   (`REDLEASE_SIM_TRACE=1` also prints its whole history).
//! - A soak: `REDLEASE_SIM_OPS=10000000 REDLEASE_SIM_BASE=random cargo test --release -p lock-core
//!   --test simulation`.
//!
//! See `simulation/workload.rs` for what runs, `simulation/world.rs` for the world and its faults,
//! `simulation/history.rs` for the invariants.

#[path = "simulation/executor.rs"]
mod executor;
#[path = "simulation/history.rs"]
mod history;
#[path = "simulation/workload.rs"]
mod workload;
#[path = "simulation/world.rs"]
mod world;

#[path = "simulation/checker_tests.rs"]
mod checker_tests;

use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant as WallClock;

use workload::{Report, run_seed};

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {value:?}")),
    )
}

/// Printed outside libtest's capture, so that the summary shows in a plain `cargo test`.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// `mutex 1200, redlock 0, ...`: the operations per primitive.
fn per_primitive(counts: &[u64]) -> String {
    workload::Primitive::ALL
        .iter()
        .zip(counts)
        .map(|(primitive, n)| format!("{} {n}", primitive.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn replay_command(seed: u64) -> String {
    let mode = std::env::var("REDLEASE_SIM_MODE")
        .map(|mode| format!("REDLEASE_SIM_MODE={mode} "))
        .unwrap_or_default();
    format!(
        "{mode}REDLEASE_SIM_SEED={seed} cargo test -p lock-core --test simulation -- --exact simulation --nocapture"
    )
}

fn describe(report: &Report) -> String {
    let mut text = format!(
        "seed {}: {:?}, {} operations, {} events, {} polls, ended at {:?}; {:?}\n",
        report.config.seed,
        report.config.mode,
        report.operations,
        report.events,
        report.polls,
        report.end,
        report.config,
    );
    for violation in report.violations.iter().take(10) {
        text.push_str(&format!("  {violation}\n"));
    }
    if report.violations.len() > 10 {
        text.push_str(&format!(
            "  ... and {} more\n",
            report.violations.len() - 10
        ));
    }
    text
}

#[test]
fn simulation() {
    if let Some(seed) = env_u64("REDLEASE_SIM_SEED") {
        let started = WallClock::now();
        let report = run_seed(seed);
        if std::env::var_os("REDLEASE_SIM_TRACE").is_some() {
            for event in &report.history {
                say(&format!("{:?} {:?}", event.at, event.what));
            }
        }
        say(&describe(&report));
        say(&format!(
            "simulation: {} operations, 1 seeds, {} violations; by primitive: {} ({:?})",
            report.operations,
            report.violations.len(),
            per_primitive(&report.by_primitive),
            started.elapsed()
        ));
        assert!(report.violations.is_empty(), "seed {seed} broke invariants");
        return;
    }
    let target = env_u64("REDLEASE_SIM_OPS").unwrap_or(100_000);
    let base = match std::env::var("REDLEASE_SIM_BASE").as_deref() {
        Ok("random") => fastrand::u64(1..1 << 40),
        Ok(_) => env_u64("REDLEASE_SIM_BASE").unwrap_or(1),
        Err(_) => 1,
    };
    let started = WallClock::now();
    let next = AtomicU64::new(base);
    let operations = AtomicU64::new(0);
    let by_primitive: [AtomicU64; workload::Primitive::ALL.len()] = Default::default();
    let seeds = AtomicU64::new(0);
    let violations = AtomicUsize::new(0);
    let failed: Mutex<Vec<u64>> = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4);
    // How many failing seeds to collect before stopping.
    let enough = env_u64("REDLEASE_SIM_FAILURES").map_or(5, |n| n as usize);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while operations.load(Ordering::Relaxed) < target
                    && failed.lock().unwrap().len() < enough
                {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    let report = run_seed(seed);
                    operations.fetch_add(report.operations, Ordering::Relaxed);
                    for (count, n) in by_primitive.iter().zip(report.by_primitive) {
                        count.fetch_add(n, Ordering::Relaxed);
                    }
                    seeds.fetch_add(1, Ordering::Relaxed);
                    if !report.violations.is_empty() {
                        violations.fetch_add(report.violations.len(), Ordering::Relaxed);
                        failed.lock().unwrap().push(seed);
                        say(&format!(
                            "{}found after {:?} of wall time; replay: {}",
                            describe(&report),
                            started.elapsed(),
                            replay_command(seed)
                        ));
                    }
                }
            });
        }
    });
    let (operations, seeds, violations) = (
        operations.into_inner(),
        seeds.into_inner(),
        violations.into_inner(),
    );
    if std::env::var_os("REDLEASE_SIM_VERBOSE").is_some() {
        say(&format!(
            "seeds {base}..{}, {:?} of wall time on {threads} threads",
            base + seeds,
            started.elapsed()
        ));
    }
    let by_primitive = by_primitive.map(AtomicU64::into_inner);
    say(&format!(
        "simulation: {operations} operations, {seeds} seeds, {violations} violations; by primitive: {}",
        per_primitive(&by_primitive)
    ));
    assert_eq!(
        violations,
        0,
        "failing seeds: {:?}",
        failed.into_inner().unwrap()
    );
}

/// Same seed, same run: the history (with its random tokens numbered) is identical, in every mode.
#[test]
fn a_seed_replays_exactly() {
    let modes = [
        workload::Mode::Single,
        workload::Mode::Failover,
        workload::Mode::Replicas,
        workload::Mode::Redlock,
    ];
    for mode in modes {
        // `REDLEASE_SIM_MODE` draws every seed in one mode.
        if workload::forced_mode().is_some_and(|forced| forced != mode) {
            continue;
        }
        let seed = (1..)
            .find(|seed| workload::Config::draw(*seed).mode == mode)
            .expect("every mode is drawn");
        let first = run_seed(seed);
        let second = run_seed(seed);
        assert!(first.operations > 0);
        assert_eq!(first.config.mode, mode);
        assert_eq!(first.operations, second.operations, "seed {seed}");
        assert_eq!(first.events, second.events, "seed {seed}");
        assert_eq!(first.digest, second.digest, "seed {seed}");
    }
}
