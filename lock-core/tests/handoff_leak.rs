//! A hand-off through the in-process line frees what the waiter held: a million contended hand-offs
//! leave the backend's strong count and the process's memory where they started.
//!
//! Alone in its test binary, so that no other test's allocations move the resident set it measures.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lock_core::memory::MemoryBackend;
use lock_core::{LockBackend, RedisLock};

const HANDOFFS: u64 = 1_000_000;
const KEY: &str = "handoff";
/// Hand-offs before the first measurement, so that the allocator's and the runtime's one-off growth is
/// not counted.
const WARM_UP: u64 = 20_000;
/// Leaking what a waiter held (its channel: about 100 bytes) on every hand-off grows the resident set
/// by about 100 MB over a million; a process that frees it stays flat.
const MAX_GROWTH_KB: u64 = 25 * 1024;

/// Counts of one run of two tasks taking turns.
#[derive(Default)]
struct Turns {
    /// Releases that handed the baton to a task waiting in line.
    handoffs: AtomicU64,
    /// Releases with nobody in line (the very first and last turns).
    uncontended: AtomicU64,
}

/// How many tasks wait in the in-process line for the key.
fn waiting_in_line(backend: &MemoryBackend) -> usize {
    backend
        .runtime()
        .expect("memory has a runtime")
        .waiting(KEY)
}

/// Acquires and releases `lock` in turn with another task until `turns` counts `until` hand-offs.
async fn take_turns(lock: RedisLock, backend: Arc<MemoryBackend>, turns: Arc<Turns>, until: u64) {
    while turns.handoffs.load(Ordering::Relaxed) < until {
        let guard = lock
            .acquire()
            .await
            .expect("the other task releases within the wait");
        // The other task runs up to its place in line (this runtime has one thread), so the release
        // below hands the baton over through the line.
        tokio::task::yield_now().await;
        let counter = if waiting_in_line(&backend) > 0 {
            &turns.handoffs
        } else {
            &turns.uncontended
        };
        counter.fetch_add(1, Ordering::Relaxed);
        assert!(guard.release().await.expect("memory never fails"));
    }
}

/// Runs two tasks taking turns on one key until `turns` counts `until` hand-offs.
fn run(
    runtime: &tokio::runtime::Runtime,
    backend: &Arc<MemoryBackend>,
    turns: &Arc<Turns>,
    until: u64,
) {
    let lock = RedisLock::new(backend.clone(), KEY)
        .timeout(Duration::from_secs(60))
        .wait_timeout(Some(Duration::from_secs(10)));
    runtime.block_on(async {
        let tasks: Vec<_> = (0..2)
            .map(|_| {
                tokio::spawn(take_turns(
                    lock.clone(),
                    backend.clone(),
                    turns.clone(),
                    until,
                ))
            })
            .collect();
        for task in tasks {
            task.await.expect("a task panicked");
        }
    });
}

/// The resident set size in KiB (`VmRSS` in /proc/self/status).
fn resident_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("Linux /proc");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

#[test]
#[cfg(target_os = "linux")]
fn a_million_contended_hand_offs_leave_the_backend_count_and_memory_where_they_started() {
    let backend = Arc::new(MemoryBackend::new());
    let count_before = Arc::strong_count(&backend);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let turns = Arc::new(Turns::default());

    run(&runtime, &backend, &turns, WARM_UP);
    let rss_before = resident_kb();
    let started = Instant::now();
    run(&runtime, &backend, &turns, WARM_UP + HANDOFFS);
    let elapsed = started.elapsed();
    let rss_after = resident_kb();
    drop(runtime);

    let handoffs = turns.handoffs.load(Ordering::Relaxed);
    let uncontended = turns.uncontended.load(Ordering::Relaxed);
    let count_after = Arc::strong_count(&backend);
    eprintln!(
        "{handoffs} hand-offs ({uncontended} uncontended turns) in {elapsed:?}; \
         resident {rss_before} KiB -> {rss_after} KiB; backend strong count {count_before} -> {count_after}"
    );
    // Every turn but the first and last of each run had a waiter behind it: the hand-offs went through
    // the line, which is what this test is about.
    assert!(handoffs >= WARM_UP + HANDOFFS);
    assert!(uncontended <= 4, "{uncontended} turns found nobody in line");
    assert_eq!(
        count_after, count_before,
        "every lock and task is gone, but something still holds the backend"
    );
    let growth = rss_after.saturating_sub(rss_before);
    assert!(
        growth < MAX_GROWTH_KB,
        "the resident set grew by {growth} KiB over {HANDOFFS} hand-offs ({rss_before} -> {rss_after} KiB)"
    );
}
