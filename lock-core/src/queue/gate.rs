//! `WaitGate`: how many blocking waits for release signals one backend runs at a time.
//!
//! A blocking wait (`BLPOP`, see [`LockBackend::wait_for_release`](crate::LockBackend::wait_for_release))
//! takes a connection of its own for as long as it blocks. Unbounded, 1,000 keys waited on take 1,000
//! connections, or the whole of a pool that the holders' renewals need too. The gate hands out at most
//! `limit` permits per backend (per [`Runtime`](crate::Runtime), shared by the backend's clones); a
//! waiter that gets none polls with its lock's backoff instead, which costs one attempt per backoff
//! delay rather than a connection.
//!
//! Permits are returned when dropped, so a waiter that is cancelled mid-wait gives its slot back. The
//! gate is a pair of atomics: no lock, no runtime, nothing to wake (a waiter without a permit asks
//! again at its next wait).

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The permits for blocking waits of one backend.
pub(crate) struct WaitGate {
    /// The most permits out at once; `0` means "never block, always poll".
    limit: AtomicUsize,
    /// Permits out now.
    in_use: AtomicUsize,
}

impl WaitGate {
    /// A gate handing out at most `limit` permits.
    pub(crate) const fn new(limit: usize) -> Self {
        Self {
            limit: AtomicUsize::new(limit),
            in_use: AtomicUsize::new(0),
        }
    }

    /// The most permits out at once.
    pub(crate) fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Sets the limit. Permits out beyond a lowered limit stay out until their waits end; no new one
    /// is handed out until fewer than `limit` are.
    pub(crate) fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Permits out now.
    pub(crate) fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }

    /// A permit for one blocking wait, or `None` when `limit` are out (the waiter polls).
    pub(crate) fn try_enter(&self) -> Option<WaitPermit<'_>> {
        let limit = self.limit();
        self.in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |out| {
                (out < limit).then_some(out + 1)
            })
            .ok()
            .map(|_| WaitPermit { gate: self })
    }
}

impl fmt::Debug for WaitGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitGate")
            .field("limit", &self.limit())
            .field("in_use", &self.in_use())
            .finish()
    }
}

/// One blocking wait's slot: returned to the gate when dropped (a wait that ended, failed or was
/// cancelled).
#[must_use = "the slot is returned as soon as the permit is dropped"]
pub(crate) struct WaitPermit<'a> {
    gate: &'a WaitGate,
}

impl Drop for WaitPermit<'_> {
    fn drop(&mut self) {
        self.gate.in_use.fetch_sub(1, Ordering::AcqRel);
    }
}

impl fmt::Debug for WaitPermit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitPermit").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_limit_permits_and_dropping_returns_them() {
        let gate = WaitGate::new(2);
        let first = gate.try_enter().expect("a first slot");
        let second = gate.try_enter().expect("a second slot");
        assert!(gate.try_enter().is_none(), "the third waiter polls");
        assert_eq!(gate.in_use(), 2);
        drop(first);
        assert_eq!(gate.in_use(), 1);
        let third = gate.try_enter().expect("the returned slot");
        drop((second, third));
        assert_eq!(gate.in_use(), 0);
    }

    #[test]
    fn zero_never_blocks() {
        let gate = WaitGate::new(0);
        assert!(gate.try_enter().is_none());
        assert_eq!(gate.in_use(), 0);
    }

    #[test]
    fn a_lowered_limit_lets_out_permits_finish_and_hands_out_no_more() {
        let gate = WaitGate::new(2);
        let a = gate.try_enter().unwrap();
        let b = gate.try_enter().unwrap();
        gate.set_limit(1);
        assert!(gate.try_enter().is_none());
        drop(a);
        assert!(gate.try_enter().is_none(), "still one out, the new limit");
        drop(b);
        let c = gate.try_enter().expect("below the limit again");
        assert_eq!(gate.in_use(), 1);
        drop(c);
        assert_eq!(format!("{gate:?}"), "WaitGate { limit: 1, in_use: 0 }");
    }

    #[test]
    fn a_cancelled_wait_returns_its_slot() {
        let gate = WaitGate::new(1);
        let wait = async {
            let _permit = gate.try_enter().unwrap();
            futures::future::pending::<()>().await;
        };
        {
            let mut wait = Box::pin(wait);
            let waker = futures::task::noop_waker();
            let mut cx = std::task::Context::from_waker(&waker);
            assert!(wait.as_mut().poll(&mut cx).is_pending());
            assert_eq!(gate.in_use(), 1, "the waiter blocks");
        } // dropped mid-wait: cancelled
        assert_eq!(gate.in_use(), 0);
        assert!(gate.try_enter().is_some());
    }
}
