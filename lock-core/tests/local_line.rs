//! The in-process line: while a task of this process holds a key, the other tasks waiting for it through
//! the same backend wait in line and send nothing to the store, for as long as the holder's lease is
//! valid, extensions included. (A holder that kept no place in line, or a line that did not hear of an
//! extension, would send waiters polling the store while the key is held.)

use std::sync::Arc;
use std::time::Duration;

use futures::future::{Either, select};
use lock_core::memory::MemoryBackend;
use lock_core::testing::CountingBackend;
use lock_core::{LockBackend, RedisLock};

/// How long the waiter is watched.
const WATCH: Duration = Duration::from_millis(600);

async fn attempts_while_held(extend: bool) -> usize {
    let store = MemoryBackend::new();
    let counting = Arc::new(CountingBackend::new(store.clone()));
    let lock = RedisLock::new(counting.clone(), "line")
        .timeout(Duration::from_millis(300))
        .wait_timeout(Some(Duration::from_secs(30)));
    let holder = lock.acquire().await.expect("acquire");
    if extend {
        // Past the watch: the line must learn the lease now ends later than the 300 ms it was granted.
        assert!(holder.extend(Duration::from_secs(5)).await.expect("extend"));
    } else {
        assert!(holder.renew().await.expect("renew"));
    }
    let before = counting.set_nx_calls();
    let waiting = lock.acquire();
    let runtime = counting.runtime().expect("memory has a runtime");
    let watch = runtime.sleep(if extend {
        WATCH
    } else {
        Duration::from_millis(200)
    });
    match select(Box::pin(waiting), watch).await {
        Either::Left((result, _)) => panic!("the waiter got the held key: {result:?}"),
        Either::Right(((), waiting)) => drop(waiting),
    }
    let attempts = counting.set_nx_calls() - before;
    assert!(holder.release().await.expect("release"));
    attempts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_sends_nothing_while_the_holder_is_valid() {
    assert_eq!(
        attempts_while_held(false).await,
        0,
        "the waiter polled the store while its own process held the key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extension_keeps_the_waiter_in_line() {
    assert_eq!(
        attempts_while_held(true).await,
        0,
        "the waiter polled the store after the first lease ran out, though the holder extended it"
    );
}
