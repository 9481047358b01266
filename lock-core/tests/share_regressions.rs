//! Found by the simulation's semaphore workers (issue 11), which spawn their futures:
//! - the first `Permit::extend` of a permit locked the permit's validity in a `match` scrutinee and
//!   locked it again inside the arm, so it hung for ever (and its future was not `Send`, holding a
//!   `MutexGuard` across an await);
//! - `Semaphore::acquire` and `acquire_many` were not `Send` (the wait loop took its attempt as an
//!   `AsyncFnMut`, whose future the compiler cannot prove `Send` for every borrow), so
//!   `spawn(async move { semaphore.acquire().await })` did not compile.

use std::time::Duration;

use lock_core::memory::MemoryBackend;
use lock_core::{Permit, Semaphore};

fn assert_send<T: Send>(value: T) -> T {
    value
}

/// Compiles only while the futures are `Send` (and `'static` when they own what they borrow).
#[test]
fn a_semaphores_futures_are_send() {
    fn spawnable<F: Future + Send + 'static>(future: F) -> F {
        future
    }
    // One attempt per acquisition: `run` then finds both permits held and times out at once.
    let semaphore = Semaphore::new(MemoryBackend::new(), "s", 2)
        .timeout(Duration::from_secs(5))
        .wait_timeout(Some(Duration::ZERO));
    let task = spawnable(async move {
        let one = assert_send(semaphore.acquire()).await?;
        let two = assert_send(semaphore.acquire_many(1)).await?;
        let none = assert_send(semaphore.try_acquire_many(1)).await?;
        let free = assert_send(semaphore.available()).await?;
        let ran = assert_send(semaphore.run(async |_permit: &Permit| 7)).await;
        assert_send(one.release()).await?;
        drop(two);
        Ok::<_, lock_core::LockError>((none.is_none(), free, ran.is_err()))
    });
    let (none, free, ran_busy) = futures::executor::block_on(task).expect("the calls succeed");
    assert!(none, "both permits were held");
    assert_eq!(free, 0);
    assert!(ran_busy, "run found no permit free within its wait");
}

#[test]
fn a_permits_first_extend_returns_and_its_future_is_send() {
    let (tx, rx) = std::sync::mpsc::channel();
    // On a thread of its own, so that a hang fails the test instead of stalling it.
    std::thread::spawn(move || {
        let outcome = futures::executor::block_on(async {
            let semaphore =
                Semaphore::new(MemoryBackend::new(), "s", 2).timeout(Duration::from_secs(5));
            let permit: Permit = semaphore.acquire().await?;
            let first = assert_send(permit.extend(Duration::from_secs(1))).await?;
            let second = permit.extend(Duration::from_secs(1)).await?;
            let left = permit.valid_for();
            Ok::<_, lock_core::LockError>((first, second, left))
        });
        let _ = tx.send(outcome);
    });
    let (first, second, left) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("extend returned within 10 s")
        .expect("the calls succeeded");
    assert!(first && second, "both extends were ours");
    assert!(
        left > Duration::from_secs(5),
        "the validity grew past the TTL: {left:?}"
    );
}
