//! A deterministic, single-threaded executor on virtual time.
//!
//! Every task of a run (the workload's workers, the lock's background releases, the simulated
//! network's deliveries) is polled on the test's thread, in an order drawn from a seeded RNG. Virtual
//! time stands still while anything is ready, and jumps to the next timer when nothing is: a run of
//! minutes of virtual time takes as long as its polls. Same seed, same run.
//!
//! Tasks belong to a process (or to none: the network); a paused process's tasks are not polled until
//! the pause ends, whatever woke them, which is what a GC pause or a SIGSTOP does to a client.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures::future::BoxFuture;

/// Virtual true time: the duration since the run began.
pub type Instant = Duration;

/// A process id, or `None` for tasks no pause affects (the network's).
pub type Owner = Option<usize>;

/// The handle every simulated component holds: virtual time, timers, spawning, pauses.
#[derive(Clone)]
pub struct Runtime(Arc<Shared>);

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Runtime(now = {:?})", self.now())
    }
}

struct Shared {
    now_nanos: AtomicU64,
    timers: Mutex<Timers>,
    ready: Mutex<Ready>,
    spawned: Mutex<Vec<(Owner, BoxFuture<'static, ()>)>>,
    /// Per process: not polled before this instant.
    paused_until: Mutex<Vec<Instant>>,
    /// The task being polled, so that a call can be traced back to the workload operation that made it.
    current: AtomicU64,
}

#[derive(Default)]
struct Timers {
    heap: BinaryHeap<Reverse<Timer>>,
    seq: u64,
}

struct Timer {
    at: Instant,
    seq: u64,
    action: Action,
}

impl PartialEq for Timer {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Timer {}
impl PartialOrd for Timer {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Timer {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

enum Action {
    Wake(Arc<Slot>),
    Call(Box<dyn FnOnce() + Send>),
}

/// A sleeping future's timer: fired by the executor, cancelled when the future is dropped first (so
/// that the executor does not jump time forward for nobody).
#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    fired: bool,
    cancelled: bool,
    waker: Option<Waker>,
}

#[derive(Default)]
struct Ready {
    order: Vec<u64>,
    queued: HashSet<u64>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Runtime {
    /// Now, in true virtual time.
    pub fn now(&self) -> Instant {
        Duration::from_nanos(self.0.now_nanos.load(Ordering::Relaxed))
    }

    /// A future that completes at the true instant `at` (at once if that has passed).
    pub fn sleep_until(&self, at: Instant) -> Sleep {
        Sleep {
            rt: self.clone(),
            at,
            slot: None,
        }
    }

    /// Runs `action` at the true instant `at`, outside any task (the network delivering a message).
    pub fn call_at(&self, at: Instant, action: impl FnOnce() + Send + 'static) {
        self.push_timer(at.max(self.now()), Action::Call(Box::new(action)));
    }

    fn push_timer(&self, at: Instant, action: Action) {
        let mut timers = lock(&self.0.timers);
        let seq = timers.seq;
        timers.seq += 1;
        timers.heap.push(Reverse(Timer { at, seq, action }));
    }

    /// Runs `task` on the executor, as a task of `owner`.
    pub fn spawn(&self, owner: Owner, task: impl Future<Output = ()> + Send + 'static) {
        lock(&self.0.spawned).push((owner, Box::pin(task)));
    }

    /// Spawns an already boxed task (what `Executor::spawn` hands over).
    pub fn spawn_boxed(&self, owner: Owner, task: BoxFuture<'static, ()>) {
        lock(&self.0.spawned).push((owner, task));
    }

    /// Stops polling `process`'s tasks until the true instant `until`.
    pub fn pause(&self, process: usize, until: Instant) {
        let mut paused = lock(&self.0.paused_until);
        if paused.len() <= process {
            paused.resize(process + 1, Duration::ZERO);
        }
        paused[process] = paused[process].max(until);
    }

    /// The id of the task being polled (0 outside any task).
    pub fn current_task(&self) -> u64 {
        self.0.current.load(Ordering::Relaxed)
    }
}

/// See [`Runtime::sleep_until`].
pub struct Sleep {
    rt: Runtime,
    at: Instant,
    slot: Option<Arc<Slot>>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(slot) = &self.slot {
            let mut state = lock(&slot.state);
            if state.fired {
                return Poll::Ready(());
            }
            state.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        if self.rt.now() >= self.at {
            return Poll::Ready(());
        }
        let slot = Arc::new(Slot::default());
        lock(&slot.state).waker = Some(cx.waker().clone());
        self.rt.push_timer(self.at, Action::Wake(slot.clone()));
        self.slot = Some(slot);
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(slot) = &self.slot {
            let mut state = lock(&slot.state);
            state.cancelled = true;
            state.waker = None;
        }
    }
}

struct TaskWaker {
    id: u64,
    shared: Weak<Shared>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(shared) = self.shared.upgrade() {
            let mut ready = lock(&shared.ready);
            if ready.queued.insert(self.id) {
                ready.order.push(self.id);
            }
        }
    }
}

struct Task {
    owner: Owner,
    future: Pin<Box<dyn Future<Output = ()> + Send>>,
    waker: Waker,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Nothing is ready and no timer is pending: every task finished, or waits for ever.
    Quiescent,
    /// Virtual time reached the limit.
    Limit,
}

/// The executor: owns the tasks, polls them in a seeded order, moves virtual time.
pub struct Executor {
    rt: Runtime,
    tasks: HashMap<u64, Task>,
    next_id: u64,
    rng: fastrand::Rng,
    /// How many polls were made, for the figures.
    pub polls: u64,
}

impl Executor {
    /// An executor whose schedule is drawn from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rt: Runtime(Arc::new(Shared {
                now_nanos: AtomicU64::new(0),
                timers: Mutex::default(),
                ready: Mutex::default(),
                spawned: Mutex::default(),
                paused_until: Mutex::default(),
                current: AtomicU64::new(0),
            })),
            tasks: HashMap::new(),
            next_id: 1,
            rng: fastrand::Rng::with_seed(seed),
            polls: 0,
        }
    }

    /// The handle to give the simulated world.
    pub fn runtime(&self) -> Runtime {
        self.rt.clone()
    }

    /// How many tasks have not finished.
    pub fn live_tasks(&self) -> usize {
        self.tasks.len()
    }

    fn adopt_spawned(&mut self) {
        let spawned = std::mem::take(&mut *lock(&self.rt.0.spawned));
        for (owner, future) in spawned {
            let id = self.next_id;
            self.next_id += 1;
            let waker = Waker::from(Arc::new(TaskWaker {
                id,
                shared: Arc::downgrade(&self.rt.0),
            }));
            waker.wake_by_ref();
            self.tasks.insert(
                id,
                Task {
                    owner,
                    future,
                    waker,
                },
            );
        }
    }

    /// A ready task that may run now, drawn at random; removed from the ready list.
    fn pick(&mut self) -> Option<u64> {
        let now = self.rt.now();
        let paused = lock(&self.rt.0.paused_until).clone();
        let is_paused =
            |owner: Owner| owner.is_some_and(|p| paused.get(p).is_some_and(|u| *u > now));
        let mut ready = lock(&self.rt.0.ready);
        let Ready { order, queued } = &mut *ready;
        // Wakes of tasks that finished since are dropped.
        order.retain(|id| {
            let live = self.tasks.contains_key(id);
            if !live {
                queued.remove(id);
            }
            live
        });
        let eligible: Vec<usize> = (0..order.len())
            .filter(|&i| !is_paused(self.tasks[&order[i]].owner))
            .collect();
        if eligible.is_empty() {
            return None;
        }
        let id = order.swap_remove(eligible[self.rng.usize(..eligible.len())]);
        queued.remove(&id);
        Some(id)
    }

    /// The end of the earliest pause holding back a ready task.
    fn earliest_resume(&self) -> Option<Instant> {
        let now = self.rt.now();
        let ready = lock(&self.rt.0.ready);
        let paused = lock(&self.rt.0.paused_until);
        ready
            .order
            .iter()
            .filter_map(|id| self.tasks.get(id)?.owner)
            .filter_map(|p| paused.get(p).copied())
            .filter(|until| *until > now)
            .min()
    }

    fn earliest_timer(&self) -> Option<Instant> {
        let mut timers = lock(&self.rt.0.timers);
        while let Some(Reverse(top)) = timers.heap.peek() {
            let cancelled = match &top.action {
                Action::Wake(slot) => lock(&slot.state).cancelled,
                Action::Call(_) => false,
            };
            if !cancelled {
                return Some(top.at);
            }
            timers.heap.pop();
        }
        None
    }

    /// Fires every timer due at or before now, in the order they were set.
    fn fire_due(&mut self) {
        loop {
            let now = self.rt.now();
            let due = {
                let mut timers = lock(&self.rt.0.timers);
                match timers.heap.peek() {
                    Some(Reverse(top)) if top.at <= now => timers.heap.pop().map(|Reverse(t)| t),
                    _ => None,
                }
            };
            let Some(timer) = due else { return };
            match timer.action {
                Action::Wake(slot) => {
                    let waker = {
                        let mut state = lock(&slot.state);
                        state.fired = true;
                        state.waker.take()
                    };
                    if let Some(waker) = waker {
                        waker.wake();
                    }
                }
                Action::Call(call) => call(),
            }
        }
    }

    /// Runs until nothing can happen any more, or virtual time would pass `limit`.
    pub fn run(&mut self, limit: Instant) -> Ended {
        loop {
            self.adopt_spawned();
            if let Some(id) = self.pick() {
                let Some(task) = self.tasks.get_mut(&id) else {
                    continue;
                };
                self.polls += 1;
                self.rt.0.current.store(id, Ordering::Relaxed);
                let waker = task.waker.clone();
                let done = task
                    .future
                    .as_mut()
                    .poll(&mut Context::from_waker(&waker))
                    .is_ready();
                self.rt.0.current.store(0, Ordering::Relaxed);
                if done {
                    // Dropped here, after the poll: its destructors may spawn (a background release).
                    self.tasks.remove(&id);
                }
                continue;
            }
            let next = match (self.earliest_timer(), self.earliest_resume()) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => return Ended::Quiescent,
            };
            if next > limit {
                return Ended::Limit;
            }
            let now = self.rt.now().max(next);
            let nanos =
                u64::try_from(now.as_nanos()).expect("virtual time fits in u64 nanoseconds");
            self.rt.0.now_nanos.store(nanos, Ordering::Relaxed);
            self.fire_due();
        }
    }

    /// Drops every task and timer left (after a run that must end, or a failed one), so that what
    /// they hold is freed before leaks are counted.
    pub fn clear(&mut self) {
        self.tasks.clear();
        lock(&self.rt.0.timers).heap.clear();
        let spawned = std::mem::take(&mut *lock(&self.rt.0.spawned));
        drop(spawned);
        *lock(&self.rt.0.ready) = Ready::default();
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_move_virtual_time_and_order_is_seeded() {
        let trace = |seed| {
            let mut exec = Executor::new(seed);
            let rt = exec.runtime();
            let log = Arc::new(Mutex::new(Vec::new()));
            for i in 0..8u64 {
                let (rt2, log) = (rt.clone(), log.clone());
                rt.spawn(None, async move {
                    rt2.sleep_until(Duration::from_millis(10 * (i % 3))).await;
                    lock(&log).push((i, rt2.now()));
                });
            }
            assert_eq!(exec.run(Duration::from_secs(1)), Ended::Quiescent);
            assert_eq!(exec.live_tasks(), 0);
            lock(&log).clone()
        };
        let a = trace(1);
        assert_eq!(a, trace(1), "same seed, same run");
        assert!(
            a.windows(2).all(|w| w[0].1 <= w[1].1),
            "time only moves forward"
        );
        assert_eq!(a.last().unwrap().1, Duration::from_millis(20));
        assert!(
            (2..50).any(|s| trace(s) != a),
            "the order depends on the seed"
        );
    }
}
