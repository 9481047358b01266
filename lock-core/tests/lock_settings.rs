//! `RedisLock`'s settings read back as set, under their `get_` names and the deprecated `ttl()`.

use std::time::Duration;

use lock_core::memory::MemoryBackend;
use lock_core::{Backoff, RedisLock};

#[test]
#[allow(deprecated)]
fn settings_read_back_as_set() {
    let lock = RedisLock::new(MemoryBackend::new(), "jobs:settings");
    assert_eq!(lock.get_timeout(), RedisLock::DEFAULT_TIMEOUT);
    assert_eq!(
        lock.get_wait_timeout(),
        Some(RedisLock::DEFAULT_WAIT_TIMEOUT)
    );
    assert_eq!(lock.get_max_hold(), None);
    assert!(!lock.get_fencing());

    let backoff = Backoff::default();
    let lock = lock
        .timeout(Duration::from_secs(7))
        .wait_timeout(None)
        .max_hold(Duration::from_secs(60))
        .backoff(backoff)
        .fencing(true)
        .replicas(1, Duration::from_millis(250));
    assert_eq!(lock.key(), "jobs:settings");
    assert_eq!(lock.get_timeout(), Duration::from_secs(7));
    assert_eq!(
        lock.ttl(),
        Duration::from_secs(7),
        "the deprecated name reads the same"
    );
    assert_eq!(lock.get_wait_timeout(), None);
    assert_eq!(lock.get_max_hold(), Some(Duration::from_secs(60)));
    assert_eq!(lock.get_backoff(), backoff);
    assert!(lock.get_fencing());
    assert_eq!(lock.get_replicas(), Some((1, Duration::from_millis(250))));
}
