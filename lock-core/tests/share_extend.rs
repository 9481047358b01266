//! Found by the simulation (issue 11): the first `Permit::extend` of a permit locked the permit's
//! validity in a `match` scrutinee and locked it again inside the arm, so it hung for ever (and its
//! future was not `Send`, holding a `MutexGuard` across an await).

use std::time::Duration;

use lock_core::memory::MemoryBackend;
use lock_core::{Permit, Semaphore};

fn assert_send<T: Send>(value: T) -> T {
    value
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
