//! The renewal scheduler: one per [`Runtime`] (so one per backend), renewing every lease held by `hold`
//! or `run` that it can express, in batches.
//!
//! A lease registers its key, token, TTL and validity; the scheduler keeps the leases ordered by when
//! each is next due and, when the first is due, renews every lease due within [`WINDOW`] after it in one
//! [`RENEW_MANY`](script::RENEW_MANY) call per backend, TTL and hash slot (at most [`BATCH`] keys a
//! call, at most [`IN_FLIGHT`] calls at once). A lease is only ever renewed *earlier* than it would be
//! alone, never later. Under overload the leases due first (with one TTL: closest to expiry) go first.
//!
//! Loss stays per lease: each lease's validity is confirmed from its batch's *send* moment (the drift
//! rule of [`Validity`]), and a lease is reported lost only when its own validity ran out, Redis
//! answered "not yours" for its key, or its `max_hold` passed. A failed call retries its leases soon
//! (a tenth of the TTL), as the per-lease loop does.
//!
//! The hold futures do not wake per renewal: each waits on a one-shot channel that the scheduler fires
//! when the lease is lost. The scheduler is one task with one timer. When it goes away (its runtime
//! shut down), every registered lease's channel closes and its hold falls back to the per-lease loop.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::Duration;

use futures::FutureExt;
use futures::channel::oneshot;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};

use super::background::jittered;
use super::hold::{max_hold_passed, ran_out, unanswered, with_causes};
use super::observe::{LostReason, RenewalCounter};
use super::validity::{Validity, Written};
use crate::backend::{BackendError, LockBackend, ScriptValue};
use crate::keys;
use crate::queue::LocalQueues;
use crate::runtime::Runtime;
use crate::script;
use crate::time::Moment;

/// How far ahead of the first due lease a batch reaches: leases due within this window are renewed
/// with it (a little early, never late).
pub(crate) const WINDOW: Duration = Duration::from_millis(5);

/// The most keys one batch call carries.
pub(crate) const BATCH: usize = 500;

/// The most batch calls in flight at once.
pub(crate) const IN_FLIGHT: usize = 4;

/// How long after its last confirmation a lease is due again: about a third of the TTL, the middle of
/// the per-lease loop's jittered pause.
fn renewal_pause(ttl: Duration) -> Duration {
    ttl.mul_f64(0.3)
}

/// What a lease tells the scheduler when it registers.
pub(crate) struct Registering {
    pub(crate) backend: Arc<dyn LockBackend>,
    pub(crate) key: Arc<str>,
    pub(crate) token: Arc<str>,
    pub(crate) ttl: Duration,
    pub(crate) ttl_arg: String,
    /// The guard's own validity: the scheduler confirms and ends it as the guard's `renew` would.
    pub(crate) validity: Arc<Mutex<Validity>>,
    /// The process's waiting lines, told how long the lease is ours (as the guard's `renew` tells them).
    pub(crate) lines: Option<Arc<LocalQueues>>,
    /// When `max_hold` ends the hold, if ever.
    pub(crate) hold_deadline: Option<Moment>,
    /// The `max_hold` itself, for the `Lost` reason.
    pub(crate) max_hold: Option<Duration>,
    pub(crate) counter: RenewalCounter,
}

/// Why a lease was lost, as the scheduler tells its hold.
pub(crate) type LostNews = (LostReason, String);

/// One registered lease.
struct Entry {
    id: u64,
    lease: Registering,
    /// The hash slot batches are grouped by in a Cluster (0 elsewhere).
    slot: u16,
    /// Renewals confirmed so far: the hold span's `renewals` field.
    renewals: AtomicU64,
    state: Mutex<EntryState>,
}

struct EntryState {
    /// Its place in the queue: when the scheduler next looks at it.
    when: Moment,
    /// A batch carrying it is in flight (sent at this moment): `when` is then its validity's end,
    /// when an unanswered renewal counts as failed.
    in_flight: Option<Moment>,
    /// The last failure since the last confirmed renewal.
    last_error: Option<String>,
    /// Fired when the lease is lost; `None` once fired or deregistered.
    lost: Option<oneshot::Sender<LostNews>>,
}

impl Entry {
    fn state(&self) -> MutexGuard<'_, EntryState> {
        lock(&self.state)
    }

    fn validity(&self) -> MutexGuard<'_, Validity> {
        lock(&self.lease.validity)
    }

    /// Reports the lease lost (once): its hold wakes up and ends it.
    fn lose(&self, state: &mut EntryState, why: LostReason, reason: String) {
        if let Some(sender) = state.lost.take() {
            let _ = sender.send((why, reason));
        }
    }

    fn tell_line(&self, valid_until: Moment) {
        if let Some(lines) = &self.lease.lines {
            lines.holding(&self.lease.key, &self.lease.token, valid_until);
        }
    }
}

/// The renewal scheduler of one runtime.
#[derive(Default)]
pub(crate) struct Renewals {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Every registered lease, by when it is next looked at.
    queue: BTreeMap<(Moment, u64), Arc<Entry>>,
    next_id: u64,
    /// A scheduler task is alive.
    running: bool,
    /// The scheduler's waker, and when it means to look next: a lease due earlier wakes it.
    waker: Option<Waker>,
    target: Option<Moment>,
}

impl fmt::Debug for Renewals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = lock(&self.state);
        f.debug_struct("Renewals")
            .field("leases", &state.queue.len())
            .field("running", &state.running)
            .finish()
    }
}

/// A lease registered with the scheduler: dropping it (the hold ended) deregisters the lease.
pub(crate) struct Registration {
    renewals: Arc<Renewals>,
    entry: Arc<Entry>,
    /// Fires when the lease is lost; closes (`Canceled`) when the scheduler went away.
    pub(crate) lost: oneshot::Receiver<LostNews>,
}

impl Registration {
    /// Renewals confirmed so far.
    pub(crate) fn renewals(&self) -> u64 {
        self.entry.renewals.load(Ordering::Relaxed)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut state = self.entry.state();
        state.lost = None;
        let place = (state.when, self.entry.id);
        drop(state);
        lock(&self.renewals.state).queue.remove(&place);
    }
}

impl Renewals {
    /// Registers `lease` with the scheduler of `runtime` (this one), starting the scheduler if it is
    /// not running. `None` when the runtime cannot spawn it: the caller renews the lease itself.
    pub(crate) fn register(
        self: &Arc<Self>,
        runtime: &Runtime,
        lease: Registering,
    ) -> Option<Registration> {
        let now = runtime.now();
        let left = lock(&lease.validity).left(now);
        let mut when = now + renewal_pause(lease.ttl).min(left);
        if let Some(deadline) = lease.hold_deadline {
            when = when.min(deadline);
        }
        let slot = match lease.backend.capabilities().cluster {
            true => keys::hash_slot(&lease.key),
            false => 0,
        };
        let (sender, receiver) = oneshot::channel();
        let mut state = lock(&self.state);
        let id = state.next_id;
        state.next_id += 1;
        let entry = Arc::new(Entry {
            id,
            lease,
            slot,
            renewals: AtomicU64::new(0),
            state: Mutex::new(EntryState {
                when,
                in_flight: None,
                last_error: None,
                lost: Some(sender),
            }),
        });
        state.queue.insert((when, id), entry.clone());
        let start = !state.running;
        state.running = true;
        // Due before the scheduler means to look: wake it.
        if !start
            && state.target.is_none_or(|target| when < target)
            && let Some(waker) = state.waker.take()
        {
            waker.wake();
        }
        drop(state);
        if start {
            let task = Box::pin(self.clone().run(runtime.clone()));
            if !runtime.spawn(task) {
                // Leases registered meanwhile (by other threads) would wait for a scheduler that is
                // not coming: close their channels too, so that each renews on its own.
                let mut state = lock(&self.state);
                state.running = false;
                for entry in std::mem::take(&mut state.queue).into_values() {
                    entry.state().lost = None;
                }
                return None;
            }
        }
        Some(Registration {
            renewals: self.clone(),
            entry,
            lost: receiver,
        })
    }

    /// The scheduler task: runs while leases are registered.
    async fn run(self: Arc<Self>, runtime: Runtime) {
        // If the task is dropped unfinished (its runtime shut down), every lease's channel closes, so
        // each hold falls back to renewing itself.
        let mut stopped = Stopped {
            renewals: &self,
            finished: false,
        };
        let mut in_flight: FuturesUnordered<BoxFuture<'static, Done>> = FuturesUnordered::new();
        let mut timer: Option<(Moment, BoxFuture<'static, ()>)> = None;
        poll_fn(|cx| {
            loop {
                while let Poll::Ready(Some(done)) = in_flight.poll_next_unpin(cx) {
                    self.settle(&runtime, done);
                }
                let now = runtime.now();
                let capacity = IN_FLIGHT - in_flight.len();
                let plan = self.plan(now, capacity, in_flight.is_empty(), cx.waker());
                let Some(next) = plan.next else {
                    return Poll::Ready(());
                };
                let sent = !plan.batches.is_empty();
                for batch in plan.batches {
                    in_flight.push(batch.send(now));
                }
                if sent {
                    // Poll the new calls once (and look again: more may be due).
                    continue;
                }
                let next = match capacity {
                    // Full: completions wake the task; look again soon for expiries meanwhile.
                    0 => now + Duration::from_millis(1),
                    _ => next,
                };
                if timer.as_ref().is_none_or(|(at, _)| *at != next) {
                    timer = Some((next, runtime.sleep(next - now)));
                }
                if let Some((_, sleep)) = timer.as_mut()
                    && sleep.poll_unpin(cx).is_ready()
                {
                    timer = None;
                    continue;
                }
                return Poll::Pending;
            }
        })
        .await;
        stopped.finished = true;
    }

    /// Takes what is due at `now`: leases to renew, in batches (at most `capacity` of them), and
    /// leases lost. Answers when to look next, or `None` (the task ends) when nothing is registered
    /// and nothing is in flight.
    fn plan(&self, now: Moment, capacity: usize, idle: bool, waker: &Waker) -> Plan {
        let mut state = lock(&self.state);
        // Grouped by TTL and slot only: every lease here goes through a backend sharing this runtime,
        // and backends sharing a runtime are one backend (clones of it or wrappers around it, as
        // `Runtime::same_as` says), so a batch goes through its first lease's backend.
        let mut batches: HashMap<(Duration, u16), Batch> = HashMap::new();
        let mut full: Vec<Batch> = Vec::new();
        let mut moved: Vec<((Moment, u64), Moment)> = Vec::new();
        let mut gone: Vec<(Moment, u64)> = Vec::new();
        let horizon = now + WINDOW;
        // Borrow the queue for the scan; changes are applied after it.
        let mut ready = 0usize;
        for (&place, entry) in state.queue.range(..=(horizon, u64::MAX)) {
            let mut entry_state = entry.state();
            if entry_state.lost.is_none() {
                gone.push(place);
                continue;
            }
            let left = entry.validity().left(now);
            if entry_state.in_flight.is_some() {
                // Its renewal is unanswered: only its validity's end matters.
                if place.0 > now {
                    continue;
                }
                if left.is_zero() {
                    let (why, reason) = unanswered(entry_state.last_error.as_deref());
                    entry.lose(&mut entry_state, why, reason);
                    gone.push(place);
                } else {
                    // Extended meanwhile (an `extend` inside the work): look again at the new end.
                    moved.push((place, now + left));
                    entry_state.when = now + left;
                }
                continue;
            }
            if entry.lease.hold_deadline.is_some_and(|d| now >= d) {
                let (why, reason) = max_hold_passed(entry.lease.max_hold);
                entry.lose(&mut entry_state, why, reason);
                gone.push(place);
                continue;
            }
            if left.is_zero() {
                let (why, reason) = ran_out(entry_state.last_error.as_deref());
                entry.lose(&mut entry_state, why, reason);
                gone.push(place);
                continue;
            }
            if ready >= capacity * BATCH {
                continue;
            }
            let group = (entry.lease.ttl, entry.slot);
            let batch = batches.entry(group).or_insert_with(|| Batch {
                backend: entry.lease.backend.clone(),
                ttl_arg: entry.lease.ttl_arg.clone(),
                entries: Vec::new(),
            });
            batch.entries.push(entry.clone());
            ready += 1;
            // Until its reply: looked at again when its validity ends.
            let check = now + left;
            entry_state.in_flight = Some(now);
            entry_state.when = check;
            moved.push((place, check));
            if batch.entries.len() == BATCH {
                full.push(batches.remove(&group).expect("just filled"));
            }
        }
        for place in gone {
            state.queue.remove(&place);
        }
        for (from, to) in moved {
            if let Some(entry) = state.queue.remove(&from) {
                state.queue.insert((to, from.1), entry);
            }
        }
        full.extend(batches.into_values());
        // The fullest first, the rest up to the capacity; what is left is due again at once.
        let mut batches = full;
        batches.sort_by_key(|b| std::cmp::Reverse(b.entries.len()));
        let mut sent = Vec::new();
        for batch in batches {
            if sent.len() < capacity {
                sent.push(batch);
            } else {
                // More groups than calls allowed: undo (they stay due).
                for entry in batch.entries {
                    let mut entry_state = entry.state();
                    entry_state.in_flight = None;
                    let place = (entry_state.when, entry.id);
                    if let Some(entry) = state.queue.remove(&place) {
                        state.queue.insert((now, place.1), entry);
                    }
                    entry_state.when = now;
                }
            }
        }
        let next = state.queue.keys().next().map(|(when, _)| *when);
        let next = match next {
            Some(next) => Some(next.max(now)),
            None if idle && sent.is_empty() => {
                state.running = false;
                state.waker = None;
                state.target = None;
                return Plan {
                    batches: Vec::new(),
                    next: None,
                };
            }
            // Only replies are awaited: they wake the task.
            None => Some(now + Duration::from_secs(3600)),
        };
        state.target = next;
        state.waker = Some(waker.clone());
        Plan {
            batches: sent,
            next,
        }
    }

    /// Applies a batch's reply (or failure) to each of its leases.
    fn settle(&self, runtime: &Runtime, done: Done) {
        let now = runtime.now();
        let Done {
            sent_at,
            entries,
            outcome,
        } = done;
        let replies = match outcome.and_then(|reply| per_key(reply, entries.len())) {
            Ok(replies) => replies.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(error) => {
                let text = with_causes(&error);
                tracing::warn!(
                    leases = entries.len(),
                    first_key = entries.first().map(|e| &*e.lease.key),
                    error = %text,
                    "renewing a batch of locks failed; retrying"
                );
                entries.iter().map(|_| Err(text.clone())).collect()
            }
        };
        let mut state = lock(&self.state);
        for (entry, reply) in entries.into_iter().zip(replies) {
            let mut entry_state = entry.state();
            if entry_state.lost.is_none() {
                // Deregistered (or lost) meanwhile: its reply changes nothing, as a dropped
                // per-lease renewal's does not.
                continue;
            }
            let place = (entry_state.when, entry.id);
            entry_state.in_flight = None;
            let next = match reply {
                Ok(Some(written)) => {
                    entry.lease.counter.renewed(true);
                    let mut validity = entry.validity();
                    if validity.confirm(sent_at, written)
                        && let Some(until) = validity.until()
                    {
                        drop(validity);
                        entry.tell_line(until);
                    }
                    entry_state.last_error = None;
                    entry.renewals.fetch_add(1, Ordering::Relaxed);
                    now + renewal_pause(entry.lease.ttl)
                }
                Ok(None) => {
                    entry.lease.counter.renewed(false);
                    if entry.validity().disown(sent_at) {
                        entry.tell_line(sent_at);
                    }
                    entry.lose(
                        &mut entry_state,
                        LostReason::TakenOver,
                        "a renewal found another holder or no key".into(),
                    );
                    state.queue.remove(&place);
                    continue;
                }
                Err(error) => {
                    entry.lease.counter.renewed(false);
                    tracing::debug!(key = %entry.lease.key, %error, "renewing the lock failed; retrying");
                    entry_state.last_error = Some(error);
                    now + jittered(entry.lease.ttl / 10)
                }
            };
            let left = entry.validity().left(now);
            let mut next = next.min(now + left);
            if let Some(deadline) = entry.lease.hold_deadline {
                next = next.min(deadline.max(now));
            }
            if let Some(entry) = state.queue.remove(&place) {
                state.queue.insert((next, place.1), entry);
            }
            entry_state.when = next;
        }
    }
}

/// The batches to send, and when to look next (`None`: stop).
struct Plan {
    batches: Vec<Batch>,
    next: Option<Moment>,
}

/// Leases renewed by one call: one runtime's backend, one TTL, one hash slot.
struct Batch {
    backend: Arc<dyn LockBackend>,
    ttl_arg: String,
    entries: Vec<Arc<Entry>>,
}

/// A batch call's outcome.
struct Done {
    sent_at: Moment,
    entries: Vec<Arc<Entry>>,
    outcome: Result<ScriptValue, BackendError>,
}

impl Batch {
    /// The call, sent at `sent_at` (taken before it is sent, as the drift rule wants).
    fn send(self, sent_at: Moment) -> BoxFuture<'static, Done> {
        Box::pin(async move {
            let keys: Vec<&str> = self.entries.iter().map(|e| &*e.lease.key).collect();
            let mut args: Vec<&str> = Vec::with_capacity(1 + self.entries.len());
            args.push(&self.ttl_arg);
            args.extend(self.entries.iter().map(|e| &*e.lease.token));
            let outcome = self
                .backend
                .eval_script(&script::RENEW_MANY, &keys, &args)
                .await;
            drop((keys, args));
            Done {
                sent_at,
                entries: self.entries,
                outcome,
            }
        })
    }
}

/// `RENEW_MANY`'s reply: one RENEW reply per key.
fn per_key(reply: ScriptValue, keys: usize) -> Result<Vec<Option<Written>>, BackendError> {
    match reply {
        ScriptValue::Array(items) if items.len() == keys => items
            .iter()
            .map(|item| Written::from_reply(&script::RENEW_MANY, item))
            .collect(),
        other => Err(BackendError::permanent(
            "redlease",
            format!("unexpected reply from the renew_many script for {keys} keys: {other:?}"),
        )),
    }
}

/// Closes every registered lease's channel if the scheduler task is dropped before it finished.
struct Stopped<'a> {
    renewals: &'a Renewals,
    finished: bool,
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut state = lock(&self.renewals.state);
        state.running = false;
        state.waker = None;
        state.target = None;
        for entry in std::mem::take(&mut state.queue).into_values() {
            entry.state().lost = None;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The critical sections only assign plain values; a poisoned value is still meaningful.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
