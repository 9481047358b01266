//! `LocalQueues`: tasks of one process contending for one key wait in line locally.
//!
//! Without this, every task waiting for a key polls Redis on its own: N tasks make N attempts per
//! release, the fastest poller wins, and the others starve. With it, one task per key and process holds
//! the *baton*: only it talks to Redis (trying, or holding the lock); the others wait in FIFO order
//! and get the baton, in turn, the moment it is put down. A hand-off inside a process then costs one
//! round trip, and every local task gets its turn: the holder's release grants the lock to the first
//! waiter's [`Offer`] in the same script ([`HAND_OVER`](crate::script::HAND_OVER)), and the waiter
//! receives it with the baton ([`Handoff::Granted`]); a waiter that cannot take a hand-over gets the
//! baton alone and sends its own `SET NX`, a second round trip.
//!
//! The queue is an optimisation, never the source of exclusion: Redis decides who holds the lock. So a
//! waiter never waits on a baton holder whose lease has run out (a hung task holding a guard), and gives
//! up waiting at its own deadline.
//!
//! The lines belong to the lock side: each [`Runtime`](crate::Runtime) keeps one set, shared by the
//! clones of the backend that hands it out, and no backend ever sees them.

use crate::lease::Lease;
use crate::time::Moment;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
#[cfg(not(test))]
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use futures::channel::oneshot;
use futures::future::FusedFuture;

// The model checker must be able to switch threads wherever the lines are locked, or it never reaches
// the interleavings that matter; `model::Mutex` is std's outside a model run.
#[cfg(test)]
use model::{Mutex, MutexGuard};

#[cfg(test)]
mod model;
mod wakeups;
// Bounded waits (issue 13): the per-backend permits for blocking waits.
mod gate;

pub(crate) use gate::{WaitGate, WaitPermit};
pub(crate) use wakeups::LocalWakeups;

/// The per-key waiting lines of one backend (shared by its clones, through their
/// [`Runtime`](crate::Runtime)).
#[derive(Default)]
pub(crate) struct LocalQueues {
    keys: Mutex<HashMap<Arc<str>, Line>>,
    /// The wake-ups of primitives whose holders share a key (see [`LocalWakeups`]).
    pub(crate) wakeups: Arc<LocalWakeups>,
}

#[derive(Default)]
struct Line {
    /// Whether some local task holds the baton for this key.
    taken: bool,
    /// The baton holder's token and when its lease runs out, if it holds the lock (not just trying).
    holder: Option<(Arc<str>, Moment)>,
    next_ticket: u64,
    waiting: VecDeque<Waiter>,
    /// Hand-overs in a row while the line stayed busy (see [`HAND_OVER_STREAK`]).
    streak: u32,
}

/// How many releases in a row a busy line hands over before one plain release. Waiters of other
/// processes cannot be seen from here, and a hand-over sends them no wake-up: without the cap, a
/// process whose line never empties keeps the key for good (the bench's two-process S2 showed a
/// fairness of 0 between processes). Every fifth release is the plain one, with the wake-up, and the
/// local waiter then races the others as before; a line that empties starts a new streak, so a
/// lone hand-off always goes in one round trip.
const HAND_OVER_STREAK: u32 = 4;

/// A task in line: its ticket, where its turn is sent, and what a releasing holder may grant it.
struct Waiter {
    ticket: u64,
    sender: oneshot::Sender<Handoff>,
    /// `None`: this waiter takes only the baton (its acquisition cannot be handed over).
    offer: Option<Arc<Offer>>,
}

/// What the line hands a waiter.
pub(crate) enum Handoff {
    /// The baton: the waiter's turn to try Redis.
    Baton,
    /// The baton and the lock itself: the holder released and granted the key to the waiter's
    /// [`Offer`] in one script ([`HAND_OVER`](crate::script::HAND_OVER)).
    Granted(Grant),
}

/// What a waiter lets a releasing holder grant it in one round trip: the token the grant is made
/// with (fresh, never the one its own attempts use, so a late background release of an abandoned
/// grant can never delete a lock the waiter took by itself), and its own lock's TTL and fencing.
#[derive(Debug)]
pub(crate) struct Offer {
    pub(crate) token: Arc<str>,
    pub(crate) ttl: Duration,
    pub(crate) ttl_arg: String,
    /// The fence counter, when the waiter's lock has fencing: the grant issues its fence.
    pub(crate) fence_counter: Option<String>,
    /// The release-signal list of the key, for the grant's lease.
    pub(crate) signal: Arc<str>,
}

/// The lock handed over to a waiter. Dropped untaken (its waiter was cancelled or timed out just
/// then), its lease releases the key in the background, as a dropped guard does.
pub(crate) struct Grant {
    /// The granted token, armed: released in the background unless a guard takes it.
    pub(crate) lease: Lease,
    pub(crate) fence: Option<u64>,
    /// When the granting script was sent: the waiter's validity counts from here.
    pub(crate) sent_at: Moment,
}

impl LocalQueues {
    /// Empty lines.
    #[cfg(test)]
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn lines(&self) -> MutexGuard<'_, HashMap<Arc<str>, Line>> {
        // Nothing panics while the lock is held; recover rather than poison the queues.
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many tasks of this process wait in line for `key` now (not counting the one holding its
    /// baton).
    pub(crate) fn waiting(&self, key: &str) -> usize {
        self.lines().get(key).map_or(0, |line| line.waiting.len())
    }

    /// Takes the baton for `key` at once, or joins the line for it.
    #[cfg(test)]
    pub(crate) fn join(&self, key: &Arc<str>) -> Turn {
        self.join_offering(key, || None)
    }

    /// [`join`](Self::join), offering what `offer` makes (only when the task has to wait: the
    /// uncontended path makes nothing) to a holder that hands the lock over on release.
    pub(crate) fn join_offering(
        &self,
        key: &Arc<str>,
        offer: impl FnOnce() -> Option<Arc<Offer>>,
    ) -> Turn {
        let mut lines = self.lines();
        let line = lines.entry(key.clone()).or_default();
        if !line.taken {
            line.taken = true;
            line.holder = None;
            return Turn::Now;
        }
        let (sender, receiver) = oneshot::channel();
        let ticket = line.next_ticket;
        line.next_ticket += 1;
        line.waiting.push_back(Waiter {
            ticket,
            sender,
            offer: offer(),
        });
        Turn::Later { ticket, receiver }
    }

    /// The baton holder's token and the end of its lease, if it holds the lock.
    pub(crate) fn holder(&self, key: &str) -> Option<(Arc<str>, Moment)> {
        self.lines().get(key).and_then(|line| line.holder.clone())
    }

    /// Whether `ticket` is first in line for `key`.
    pub(crate) fn is_first(&self, key: &str, ticket: u64) -> bool {
        self.lines()
            .get(key)
            .and_then(|line| line.waiting.front())
            .is_some_and(|first| first.ticket == ticket)
    }

    /// The baton holder acquired the lock with `token`: waiters wait no longer than `valid_until`.
    pub(crate) fn holding(&self, key: &str, token: &Arc<str>, valid_until: Moment) {
        if let Some(line) = self.lines().get_mut(key) {
            line.holder = Some((token.clone(), valid_until));
        }
    }

    /// Leaves the line: the waiter holding `ticket` and `receiver` gave up, or went ahead without the
    /// baton. If the baton was handed to it meanwhile, hands it on, so that it is never lost.
    ///
    /// A lock handed over with the baton (a [`Grant`] nobody will take) is released in the background
    /// once the lines are unlocked.
    pub(crate) fn leave(&self, key: &str, ticket: u64, receiver: &mut oneshot::Receiver<Handoff>) {
        let mut lines = self.lines();
        // Decided under the mutex that `pass` sends under: either the baton is in `receiver` already
        // (`pass` took this waiter off the line and sent it), or this waiter is still in line and,
        // removed now, can no longer be picked. Looking at the receiver before taking the mutex would
        // miss a baton sent in between, and leave the key taken by nobody. A waiter reserved by a
        // hand-over is off the line already, and its holder sends without the mutex: closing the
        // receiver first makes any later send fail (the holder then hands the baton on itself), and
        // what was sent before is read below. Without the close, a send between this look and the
        // receiver's drop would be lost with it (the model check found that).
        receiver.close();
        let untaken = match receiver.try_recv() {
            Ok(Some(handoff)) => {
                Self::hand_on(&mut lines, key);
                Some(handoff)
            }
            _ => {
                if let Some(line) = lines.get_mut(key) {
                    line.waiting.retain(|waiter| waiter.ticket != ticket);
                    Self::forget_if_idle(&mut lines, key);
                }
                None
            }
        };
        drop(lines);
        // Its lease starts a background release: not under the lines' mutex.
        drop(untaken);
    }

    /// Takes the first waiter for `key` off the line for a hand-over, if it offered one: the caller
    /// then owes it the baton ([`Next`]). `None` when nobody waits, or the first waiter cannot take a
    /// hand-over (FIFO: it is never skipped).
    fn reserve(&self, key: &str) -> Option<(oneshot::Sender<Handoff>, Arc<Offer>)> {
        let mut lines = self.lines();
        let line = lines.get_mut(key)?;
        // Waiters whose receiver is gone no longer listen (a safeguard, as in `hand_on`).
        while line
            .waiting
            .front()
            .is_some_and(|first| first.sender.is_canceled())
        {
            line.waiting.pop_front();
        }
        let offer = line.waiting.front()?.offer.clone()?;
        if line.streak >= HAND_OVER_STREAK {
            line.streak = 0;
            return None;
        }
        line.streak += 1;
        let waiter = line.waiting.pop_front()?;
        Some((waiter.sender, offer))
    }

    /// Puts the baton down: hands it to the first waiter still waiting, or frees the key.
    pub(crate) fn pass(&self, key: &str) {
        Self::hand_on(&mut self.lines(), key);
    }

    /// [`pass`](Self::pass), with the lines locked.
    fn hand_on(lines: &mut HashMap<Arc<str>, Line>, key: &str) {
        let Some(line) = lines.get_mut(key) else {
            return;
        };
        line.holder = None;
        while let Some(waiter) = line.waiting.pop_front() {
            // A waiter whose receiver is gone no longer listens: try the next. (`InLine` leaves the line
            // before its receiver drops, so this is only a safeguard.)
            if waiter.sender.send(Handoff::Baton).is_ok() {
                return;
            }
        }
        line.taken = false;
        Self::forget_if_idle(lines, key);
    }

    fn forget_if_idle(lines: &mut HashMap<Arc<str>, Line>, key: &str) {
        if lines
            .get(key)
            .is_some_and(|line| !line.taken && line.waiting.is_empty())
        {
            lines.remove(key);
        }
    }
}

impl fmt::Debug for LocalQueues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines = self.lines();
        f.debug_struct("LocalQueues")
            .field("keys", &lines.len())
            .field(
                "waiting",
                &lines.values().map(|l| l.waiting.len()).sum::<usize>(),
            )
            .finish()
    }
}

/// The right to be this process's one contender for a key; handed to the next in line when dropped.
pub(crate) struct Baton {
    lines: Arc<LocalQueues>,
    key: Arc<str>,
    /// Sent to a waiter by a hand-over ([`Next`]): dropping it passes nothing.
    sent: bool,
}

impl Baton {
    pub(crate) fn new(lines: Arc<LocalQueues>, key: Arc<str>) -> Self {
        Self {
            lines,
            key,
            sent: false,
        }
    }

    /// We hold the lock with `token` until `valid_until`: those in line wait no longer than that.
    pub(crate) fn holding(&self, token: &Arc<str>, valid_until: Moment) {
        self.lines.holding(&self.key, token, valid_until);
    }

    /// Takes the first waiter off the line for a hand-over, if it offered one; otherwise gives the
    /// baton back.
    pub(crate) fn reserve_next(self) -> Result<Next, Baton> {
        match self.lines.reserve(&self.key) {
            Some((sender, offer)) => Ok(Next {
                baton: Some(self),
                sender: Some(sender),
                offer,
            }),
            None => Err(self),
        }
    }
}

impl Drop for Baton {
    fn drop(&mut self) {
        if !self.sent {
            self.lines.pass(&self.key);
        }
    }
}

/// The waiter a releasing holder hands the lock over to, taken off the line with the baton. Whatever
/// happens to the hand-over (granted, refused, failed, or this value dropped mid-request), the waiter
/// gets the baton exactly once: with the lock ([`grant`](Self::grant)), or alone when this is dropped;
/// if it is gone by then, the baton passes to the next in line.
pub(crate) struct Next {
    baton: Option<Baton>,
    sender: Option<oneshot::Sender<Handoff>>,
    /// What the waiter asked to be granted.
    pub(crate) offer: Arc<Offer>,
}

impl Next {
    /// The hand-over granted the lock to the waiter until `valid_until`: sends it the lock with the
    /// baton. A waiter that is gone (cancelled, timed out) leaves the grant untaken: it is released in
    /// the background and the baton passes on.
    pub(crate) fn grant(mut self, grant: Grant, valid_until: Moment) {
        let (Some(mut baton), Some(sender)) = (self.baton.take(), self.sender.take()) else {
            return;
        };
        // Those behind it wait no longer than the new holder's lease.
        baton.holding(&grant.lease.token, valid_until);
        match sender.send(Handoff::Granted(grant)) {
            Ok(()) => baton.sent = true,
            // Released in the background before the baton passes on (dropped in this order).
            Err(untaken) => drop(untaken),
        }
    }
}

impl Drop for Next {
    fn drop(&mut self) {
        let (Some(mut baton), Some(sender)) = (self.baton.take(), self.sender.take()) else {
            return;
        };
        // Not granted: the waiter tries Redis itself, as after a plain release.
        if sender.send(Handoff::Baton).is_ok() {
            baton.sent = true;
        }
    }
}

impl fmt::Debug for Next {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Next").field("offer", &self.offer).finish()
    }
}

impl fmt::Debug for Baton {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Baton").field("key", &self.key).finish()
    }
}

/// A place in line. Dropped before the baton came: leaves the line. Dropped just after the baton was
/// handed over (the waiter was cancelled at that moment): passes it on, so the line never stalls.
pub(crate) struct InLine {
    pub(crate) lines: Arc<LocalQueues>,
    pub(crate) key: Arc<str>,
    pub(crate) ticket: u64,
    pub(crate) receiver: oneshot::Receiver<Handoff>,
}

impl InLine {
    /// The baton arrived: take it. Call only once `receiver` has yielded the baton.
    pub(crate) fn into_baton(self) -> Baton {
        debug_assert!(
            self.receiver.is_terminated(),
            "into_baton before the baton arrived"
        );
        // `self` then drops as usual (its receiver is spent, so its `Drop` has nothing to do), freeing
        // its share of the lines, the key and the channel: forgetting it would leak all three on
        // every hand-off.
        Baton::new(self.lines.clone(), self.key.clone())
    }
}

impl Drop for InLine {
    fn drop(&mut self) {
        // A spent receiver (the baton was taken, by `into_baton`'s caller, or the sender was dropped
        // unsent) can receive nothing more, whoever runs meanwhile: nothing to leave or pass on.
        if self.receiver.is_terminated() {
            return;
        }
        self.lines.leave(&self.key, self.ticket, &mut self.receiver);
    }
}

/// The answer to [`LocalQueues::join`].
pub(crate) enum Turn {
    /// The baton is ours.
    Now,
    /// Wait for `receiver`: it fires when the baton is handed to us.
    Later {
        ticket: u64,
        receiver: oneshot::Receiver<Handoff>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Arc<str> {
        Arc::from(k)
    }

    #[test]
    fn first_comer_takes_the_baton_and_the_rest_queue_in_order() {
        let queues = LocalQueues::new();
        assert!(matches!(queues.join(&key("k")), Turn::Now));
        let mut receivers = Vec::new();
        for _ in 0..3 {
            match queues.join(&key("k")) {
                Turn::Later { receiver, .. } => receivers.push(receiver),
                Turn::Now => panic!("the baton is taken"),
            }
        }
        // Another key is independent.
        assert!(matches!(queues.join(&key("other")), Turn::Now));
        for i in 0..3 {
            queues.pass("k");
            assert!(
                matches!(receivers[i].try_recv(), Ok(Some(Handoff::Baton))),
                "waiter {i} is next"
            );
            for later in &mut receivers[i + 1..] {
                assert!(matches!(later.try_recv(), Ok(None)), "only one baton");
            }
        }
        queues.pass("k");
        assert!(matches!(queues.join(&key("k")), Turn::Now), "free again");
    }

    #[test]
    fn dropped_and_departed_waiters_are_skipped() {
        let queues = LocalQueues::new();
        assert!(matches!(queues.join(&key("k")), Turn::Now));
        let Turn::Later { receiver: gone, .. } = queues.join(&key("k")) else {
            panic!()
        };
        let Turn::Later {
            ticket: left,
            receiver: mut left_receiver,
        } = queues.join(&key("k"))
        else {
            panic!()
        };
        let Turn::Later {
            receiver: mut third,
            ..
        } = queues.join(&key("k"))
        else {
            panic!()
        };
        drop(gone);
        queues.leave("k", left, &mut left_receiver);
        queues.pass("k");
        assert!(matches!(third.try_recv(), Ok(Some(Handoff::Baton))));
    }

    #[test]
    fn a_waiter_leaving_after_the_baton_was_sent_to_it_hands_it_on() {
        let queues = LocalQueues::new();
        assert!(matches!(queues.join(&key("k")), Turn::Now));
        let Turn::Later {
            ticket: first,
            receiver: mut first_receiver,
        } = queues.join(&key("k"))
        else {
            panic!()
        };
        let Turn::Later {
            receiver: mut second,
            ..
        } = queues.join(&key("k"))
        else {
            panic!()
        };
        // The baton is sent to the first waiter, which gives up before it looks: it must not be lost.
        queues.pass("k");
        queues.leave("k", first, &mut first_receiver);
        assert!(
            matches!(second.try_recv(), Ok(Some(Handoff::Baton))),
            "handed on to the next"
        );
        queues.pass("k");
        assert_eq!(queues.lines().len(), 0, "and then the key is free");
    }

    #[test]
    fn idle_keys_are_forgotten() {
        let queues = LocalQueues::new();
        assert!(matches!(queues.join(&key("k")), Turn::Now));
        let now = Moment::now();
        let token: Arc<str> = Arc::from("t");
        queues.holding("k", &token, now);
        assert_eq!(queues.holder("k"), Some((token, now)));
        queues.pass("k");
        assert_eq!(queues.holder("k"), None);
        assert_eq!(queues.lines().len(), 0);
    }

    #[test]
    fn waiting_counts_the_tasks_in_line_for_a_key() {
        let queues = LocalQueues::new();
        assert_eq!(queues.waiting("k"), 0);
        assert!(matches!(queues.join(&key("k")), Turn::Now));
        assert_eq!(queues.waiting("k"), 0, "the baton holder is not waiting");
        let _first = queues.join(&key("k"));
        let _second = queues.join(&key("k"));
        assert_eq!(queues.waiting("k"), 2);
        assert_eq!(queues.waiting("other"), 0);
    }

    #[test]
    fn a_busy_line_hands_over_at_most_four_times_in_a_row() {
        let queues = Arc::new(LocalQueues::new());
        let offer = || {
            Some(Arc::new(Offer {
                token: Arc::from("t"),
                ttl: Duration::from_secs(1),
                ttl_arg: "1000".into(),
                fence_counter: None,
                signal: Arc::from("s"),
            }))
        };
        assert!(matches!(queues.join(&key("k")), Turn::Now));
        let mut baton = Baton::new(queues.clone(), key("k"));
        let mut reserved = Vec::new();
        for release in 0..10 {
            let Turn::Later { receiver, .. } = queues.join_offering(&key("k"), offer) else {
                panic!("the baton is taken");
            };
            match baton.reserve_next() {
                Ok(next) => {
                    reserved.push(release);
                    drop(next);
                }
                Err(back) => drop(back),
            }
            // The waiter took the baton (with or without the lock): it holds it now.
            let mut receiver = receiver;
            assert!(matches!(receiver.try_recv(), Ok(Some(Handoff::Baton))));
            baton = Baton::new(queues.clone(), key("k"));
        }
        assert_eq!(
            reserved,
            vec![0, 1, 2, 3, 5, 6, 7, 8],
            "every fifth release is plain"
        );
        drop(baton);
        assert_eq!(queues.lines().len(), 0);
    }
}
