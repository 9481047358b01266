//! Waiters cancelled at random, on a multi-threaded runtime, never stall a key through the in-process
//! line: a cancelled waiter that the baton reached at that moment passes it on.
//!
//! The model check in `lock-core/src/queue/model.rs` explores the interleavings (every one, for a
//! holder and one waiter); this drives the same race through the public API, with real threads. On the
//! code that read the waiter's channel outside the queue's mutex it failed in every run tried.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lock_core::memory::MemoryBackend;
use lock_core::{LockError, LockGuard, RedisLock};

const TASKS: usize = 6;
/// Acquisitions each task starts (about 40% of them are cancelled).
const ROUNDS: usize = 20_000;
/// Rounds stop after this long even if not all ran (a slow machine).
const BUDGET: Duration = Duration::from_secs(20);
const KEY: &str = "stress";

#[derive(Default)]
struct Counts {
    acquired: AtomicU64,
    cancelled: AtomicU64,
    timed_out: AtomicU64,
    /// Set at the first timeout: every task stops and the final check runs. After a lost baton every
    /// later wait times out, so this ends a failing run early; a timeout for another reason (a slow
    /// machine) only ends the run early, and the final check then passes.
    stop: AtomicBool,
}

/// Yields `n` times: cancels an acquisition after that many polls, so cancellations land at every
/// point of a wait (joining the line, waiting, the baton arriving), not only on timer ticks.
async fn yields(n: u32) {
    for _ in 0..n {
        tokio::task::yield_now().await;
    }
}

async fn hold(guard: LockGuard) {
    tokio::task::yield_now().await;
    if fastrand::bool() {
        guard.release().await.expect("memory never fails");
    } else {
        // Dropped: released in the background, and the baton passes when the guard is gone.
        drop(guard);
    }
}

async fn contend(lock: RedisLock, counts: Arc<Counts>, stop_at: Instant) {
    for _ in 0..ROUNDS {
        if Instant::now() >= stop_at || counts.stop.load(Ordering::Relaxed) {
            return;
        }
        let outcome = match fastrand::u8(0..4) {
            0 => Some(lock.acquire().await),
            1 => tokio::time::timeout(
                Duration::from_micros(fastrand::u64(1..1_500)),
                lock.acquire(),
            )
            .await
            .ok(),
            _ => tokio::select! {
                acquired = lock.acquire() => Some(acquired),
                () = yields(fastrand::u32(0..8)) => None,
            },
        };
        match outcome {
            Some(Ok(guard)) => {
                counts.acquired.fetch_add(1, Ordering::Relaxed);
                hold(guard).await;
            }
            Some(Err(LockError::Timeout { .. })) => {
                counts.timed_out.fetch_add(1, Ordering::Relaxed);
                counts.stop.store(true, Ordering::Relaxed);
            }
            Some(Err(error)) => panic!("memory never fails: {error}"),
            None => {
                counts.cancelled.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelled_waiters_never_stall_the_key() {
    let backend = Arc::new(MemoryBackend::new());
    let lock = RedisLock::new(backend.clone(), KEY)
        .timeout(Duration::from_secs(30))
        .wait_timeout(Some(Duration::from_millis(500)));
    let counts = Arc::new(Counts::default());
    let started = Instant::now();
    let stop_at = started + BUDGET;
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| tokio::spawn(contend(lock.clone(), counts.clone(), stop_at)))
        .collect();
    for task in tasks {
        task.await.expect("a task panicked");
    }
    let acquired = counts.acquired.load(Ordering::Relaxed);
    let cancelled = counts.cancelled.load(Ordering::Relaxed);
    let timed_out = counts.timed_out.load(Ordering::Relaxed);
    eprintln!(
        "{acquired} acquired, {cancelled} cancelled, {timed_out} timed out in {:?}",
        started.elapsed()
    );
    assert!(
        acquired > 0 && cancelled > 0,
        "the run must both acquire and cancel"
    );

    // Nobody holds or waits for the key now: it is free in the store, and the line must be too.
    assert_eq!(backend.get(KEY), None, "every guard was released");
    let asked = Instant::now();
    let last = lock
        .clone()
        .wait_timeout(Some(Duration::from_millis(300)))
        .acquire()
        .await;
    assert!(
        last.is_ok(),
        "a free key must be acquired at once, but waited {:?}: {:?} (a cancelled waiter lost the baton)",
        asked.elapsed(),
        last.err()
    );
}
