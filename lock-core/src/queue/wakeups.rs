//! Wake-ups between the tasks of one process waiting for a key whose holders share it (a semaphore's
//! permits, a read-write lock's holds): a release made here wakes local waiters at once, and only one
//! local waiter per key (the *watcher*) blocks on the key's release signal in Redis, so that many local
//! waiters never take many connections.
//!
//! As the lines, an optimisation and never the source of exclusion: Redis decides who gets in; a missed
//! wake-up costs a waiter one capped wait.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::channel::oneshot;

/// The waiters of each key, and whether one of them is watching the key's release signal.
#[derive(Default)]
pub(crate) struct LocalWakeups {
    keys: Mutex<HashMap<Arc<str>, Waiters>>,
}

#[derive(Default)]
struct Waiters {
    /// Registered waiters, oldest first; a dropped receiver is skipped and cleared.
    listeners: VecDeque<oneshot::Sender<()>>,
    watched: bool,
}

impl LocalWakeups {
    fn keys(&self) -> MutexGuard<'_, HashMap<Arc<str>, Waiters>> {
        // Nothing panics while the lock is held; recover rather than poison the wake-ups.
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a waiter for `key`: the receiver completes when a local release wakes it. Register
    /// *before* the attempt whose failure makes you wait, so that a release in between is not missed.
    pub(crate) fn listen(&self, key: &Arc<str>) -> oneshot::Receiver<()> {
        let (sender, receiver) = oneshot::channel();
        let mut keys = self.keys();
        let waiters = keys.entry(key.clone()).or_default();
        waiters.listeners.retain(|s| !s.is_canceled());
        waiters.listeners.push_back(sender);
        receiver
    }

    /// Wakes up to `n` of `key`'s registered waiters, oldest first.
    pub(crate) fn wake(&self, key: &str, n: u32) {
        let mut keys = self.keys();
        let Some(waiters) = keys.get_mut(key) else {
            return;
        };
        let mut woken = 0;
        while woken < n {
            let Some(sender) = waiters.listeners.pop_front() else {
                break;
            };
            if sender.send(()).is_ok() {
                woken += 1;
            }
        }
        if waiters.listeners.is_empty() && !waiters.watched {
            keys.remove(key);
        }
    }

    /// Becomes `key`'s watcher (the one local waiter blocking on its release signal), unless another
    /// task already is: `None` then. Dropping the returned guard gives the role up.
    pub(crate) fn watch(self: &Arc<Self>, key: &Arc<str>) -> Option<Watching> {
        let mut keys = self.keys();
        let waiters = keys.entry(key.clone()).or_default();
        if waiters.watched {
            return None;
        }
        waiters.watched = true;
        Some(Watching {
            wakeups: self.clone(),
            key: key.clone(),
        })
    }

    /// How many tasks wait for a local wake-up for `key` now (registered, and still listening): for
    /// inspection.
    pub(crate) fn waiting(&self, key: &str) -> usize {
        self.keys().get(key).map_or(0, |waiters| {
            waiters
                .listeners
                .iter()
                .filter(|sender| !sender.is_canceled())
                .count()
        })
    }

    /// How many keys have waiters or a watcher: for tests, to see that nothing is left behind.
    #[cfg(test)]
    pub(crate) fn keys_in_use(&self) -> usize {
        self.keys().len()
    }
}

/// The watcher role for one key, given up when dropped.
pub(crate) struct Watching {
    wakeups: Arc<LocalWakeups>,
    key: Arc<str>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        let mut keys = self.wakeups.keys();
        if let Some(waiters) = keys.get_mut(&self.key) {
            waiters.watched = false;
            waiters.listeners.retain(|s| !s.is_canceled());
            if waiters.listeners.is_empty() {
                keys.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wake_reaches_the_oldest_live_listeners_and_nothing_is_left_behind() {
        let wakeups = Arc::new(LocalWakeups::default());
        let key: Arc<str> = Arc::from("k");
        let mut first = wakeups.listen(&key);
        let dropped = wakeups.listen(&key);
        let mut third = wakeups.listen(&key);
        let mut fourth = wakeups.listen(&key);
        drop(dropped);
        wakeups.wake("k", 2);
        assert_eq!(first.try_recv(), Ok(Some(())));
        assert_eq!(
            third.try_recv(),
            Ok(Some(())),
            "the dropped one was skipped"
        );
        assert_eq!(fourth.try_recv(), Ok(None), "only two were woken");
        wakeups.wake("k", 5);
        assert_eq!(fourth.try_recv(), Ok(Some(())));
        assert_eq!(wakeups.keys_in_use(), 0);
    }

    #[test]
    fn one_watcher_per_key_until_it_gives_up() {
        let wakeups = Arc::new(LocalWakeups::default());
        let key: Arc<str> = Arc::from("k");
        let watching = wakeups.watch(&key).expect("the first watcher");
        assert!(wakeups.watch(&key).is_none(), "a second watcher");
        assert!(wakeups.watch(&Arc::from("other")).is_some());
        drop(watching);
        let again = wakeups.watch(&key);
        assert!(again.is_some(), "the role is free again");
        drop(again);
        assert_eq!(wakeups.keys_in_use(), 0);
    }
}
