//! Fences of a single-server lock across lost writes, on the in-memory backend: a fence counter that
//! went back (a failover to a replica that missed the last increments) or vanished (a restart that lost
//! the data) never repeats a fence, and `fenced_set` never lets a second holder write with a fence that
//! is not greater than the one already written. The same runs against real servers in
//! `tests/fencing.rs`.
#![cfg(feature = "testing")]

use std::time::Duration;

use lock_core::RedisLock;
use lock_core::memory::MemoryBackend;
use lock_core::testing::companion_keys;

const KEY: &str = "fencing:test";
const RESOURCE: &str = "fencing:resource";
const HOUR: Duration = Duration::from_secs(3600);

fn counter() -> String {
    companion_keys(KEY)[0].clone()
}

/// A failover loses the tail of the counter: it is back at `F − 1` after `F` was issued. The next
/// holder still gets a larger fence (from the clock), so the deposed holder's writes are refused.
#[tokio::test]
async fn a_counter_that_went_back_never_repeats_a_fence() {
    let store = MemoryBackend::new();
    let lock = RedisLock::new(store.clone(), KEY).fencing(true);

    let first = lock.acquire().await.unwrap();
    let f = first.fence().expect("fencing is on");
    assert_eq!(store.get(&counter()), Some(f.to_string()), "stored exactly");
    store.set(&counter(), &(f - 1).to_string(), HOUR);
    // The promoted replica did not have the lock either: the first holder, paused, still believes
    // it holds it.
    store.delete(KEY);

    let second = lock.acquire().await.unwrap();
    let g = second.fence().expect("fencing is on");
    assert!(g > f, "fence {g} repeats or precedes {f}");
    assert!(second.fenced_set(RESOURCE, "second").await.unwrap());
    assert!(
        !first.fenced_set(RESOURCE, "first, late").await.unwrap(),
        "the deposed holder's write is refused"
    );
    assert!(
        second.fenced_set(RESOURCE, "second, again").await.unwrap(),
        "a holder writes again with its own fence"
    );
    assert_eq!(store.get(RESOURCE).as_deref(), Some("second, again"));
    assert!(second.release().await.unwrap());

    // A restart that lost everything: counter, lock and mark.
    for key in [
        KEY.to_owned(),
        counter(),
        companion_keys(RESOURCE)[2].clone(),
    ] {
        store.delete(&key);
    }
    let third = lock.acquire().await.unwrap();
    assert!(third.fence().unwrap() > g);
    assert!(third.release().await.unwrap());
}

/// When a fence does repeat (here the server clock went back by an hour and then the counter went
/// back, which breaks the documented assumption), the mark keeps the holder beside the fence: the holder that
/// wrote with the fence may write again, another holder with the same fence may not.
#[tokio::test]
async fn an_equal_fence_is_accepted_only_from_the_holder_that_wrote_it() {
    let store = MemoryBackend::with_clock_offset(-3_600_000_000);
    // Fences issued while the clock was right, an hour ahead of it now.
    let issued = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros();
    store.set(&counter(), &issued.to_string(), HOUR);
    let lock = RedisLock::new(store.clone(), KEY).fencing(true);
    let deposed = lock.acquire().await.unwrap();
    assert_eq!(deposed.fence(), Some(u64::try_from(issued).unwrap() + 1));
    let f = deposed.fence().unwrap();
    store.set(&counter(), &(f - 1).to_string(), HOUR);
    store.delete(KEY);

    let current = lock.acquire().await.unwrap();
    assert_eq!(current.fence(), Some(f), "the fence repeated, as set up");
    assert!(current.fenced_set(RESOURCE, "current").await.unwrap());
    assert!(
        !deposed.fenced_set(RESOURCE, "deposed").await.unwrap(),
        "an equal fence from another holder is refused"
    );
    assert!(
        current
            .fenced_set(RESOURCE, "current, again")
            .await
            .unwrap(),
        "the holder that wrote writes again"
    );
    assert!(!deposed.fenced_set(RESOURCE, "deposed").await.unwrap());
    assert_eq!(store.get(RESOURCE).as_deref(), Some("current, again"));
    let mark = companion_keys(RESOURCE)[2].clone();
    assert_eq!(
        store.get(&mark),
        Some(format!("{f}:{}", current.token())),
        "the mark is the fence and the holder's token"
    );
}
