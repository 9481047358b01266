//! Model checks of the in-process line with `shuttle`: no interleaving of `join`, `pass`, a waiter
//! taking the baton and a waiter dropping its place (cancelled, or going ahead without the baton)
//! loses the baton or hands out two.
//!
//! The threads below run the queue's own code (`LocalQueues`, `InLine`, `Baton`) on one set of
//! lines, as `RedisLock::acquire` does; `shuttle` switches between them wherever the lines
//! are locked or a task yields. A holder and one waiter are explored exhaustively (`check_dfs`: every
//! schedule); with more tasks the schedules are too many for that (over 100 000 for a holder and two
//! waiters), so those use seeded PCT and random schedulers, which check the same schedules every run.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LockResult, PoisonError};

use shuttle::rand::Rng;
use shuttle::scheduler::{PctScheduler, RandomScheduler};
use shuttle::{Runner, thread};

use super::{Baton, Grant, InLine, LocalQueues, Offer, Turn};

/// The lines' mutex in unit tests: std's, behind a `shuttle` mutex that is taken only inside a model
/// run, so that `shuttle` can switch threads where the lines are locked while the crate's other unit
/// tests (no model run) use std's mutex alone.
pub(super) struct Mutex<T> {
    gate: shuttle::sync::Mutex<()>,
    data: std::sync::Mutex<T>,
}

/// A locked [`Mutex`]. Fields drop in order: the data is unlocked before the gate opens.
pub(super) struct MutexGuard<'a, T> {
    data: std::sync::MutexGuard<'a, T>,
    _gate: Option<shuttle::sync::MutexGuard<'a, ()>>,
}

impl<T> Mutex<T> {
    pub(super) fn lock(&self) -> LockResult<MutexGuard<'_, T>> {
        let gate = shuttle::current::try_get_current_task()
            .map(|_| self.gate.lock().unwrap_or_else(PoisonError::into_inner));
        match self.data.lock() {
            Ok(data) => Ok(MutexGuard { data, _gate: gate }),
            Err(poisoned) => Err(PoisonError::new(MutexGuard {
                data: poisoned.into_inner(),
                _gate: gate,
            })),
        }
    }
}

impl<T: Default> Default for Mutex<T> {
    fn default() -> Self {
        Self {
            gate: shuttle::sync::Mutex::new(()),
            data: std::sync::Mutex::default(),
        }
    }
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.data
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.data
    }
}

/// One backend's line for one key, and how many tasks hold its baton right now.
struct World {
    lines: Arc<LocalQueues>,
    key: Arc<str>,
    holders: AtomicUsize,
}

impl World {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            lines: Arc::default(),
            key: Arc::from("k"),
            holders: AtomicUsize::new(0),
        })
    }

    fn queues(&self) -> &LocalQueues {
        &self.lines
    }

    /// Joins the line as `wait_for_turn` does: the baton at once, or a place in line that looks for the
    /// baton `patience` times (yielding in between) and then gives up, dropping its place.
    fn contend(&self, patience: usize) -> Option<Baton> {
        self.contend_offering(patience, None)
    }

    /// [`contend`](Self::contend), offering `offer` to a holder that hands the lock over: a grant
    /// that arrives with the baton is taken (and, the model having no lock, dropped at once).
    fn contend_offering(&self, patience: usize, offer: Option<Arc<Offer>>) -> Option<Baton> {
        let (ticket, receiver) = match self.queues().join_offering(&self.key, || offer) {
            Turn::Now => return Some(Baton::new(self.lines.clone(), self.key.clone())),
            Turn::Later { ticket, receiver } => (ticket, receiver),
        };
        let mut in_line = InLine {
            lines: self.lines.clone(),
            key: self.key.clone(),
            ticket,
            receiver,
        };
        for _ in 0..patience {
            match in_line.receiver.try_recv() {
                Ok(Some(_)) => return Some(in_line.into_baton()),
                Ok(None) => thread::yield_now(),
                Err(_) => panic!("the line dropped a waiter that was still in it"),
            }
        }
        None
    }

    /// Holds the baton for a moment, checking that nobody else holds one, then puts it down.
    fn hold(&self, baton: Baton) {
        assert_eq!(
            self.holders.fetch_add(1, Ordering::SeqCst),
            0,
            "two tasks hold the baton at once"
        );
        thread::yield_now();
        self.holders.fetch_sub(1, Ordering::SeqCst);
        drop(baton);
    }

    fn contend_and_hold(&self, patience: usize) {
        if let Some(baton) = self.contend(patience) {
            self.hold(baton);
        }
    }

    /// Once every task is done, nobody holds the baton, so the key must be free: a baton lost on the way
    /// leaves the line taken, and every later waiter would wait out its deadline.
    fn assert_free(&self) {
        let queues = self.queues();
        assert!(
            queues.lines().is_empty(),
            "the key is still taken with no task holding its baton: {queues:?}"
        );
        assert!(matches!(queues.join(&self.key), Turn::Now));
    }
}

/// A holder puts the baton down while waiters (one per entry of `patience`) join the line and give up
/// after that many looks; then the key must be free.
fn holder_and_waiters(patience: &[usize]) {
    let world = World::new();
    let baton = world.contend(0).expect("the first comer takes the baton");
    let waiters: Vec<_> = patience
        .iter()
        .map(|&patience| {
            let world = world.clone();
            thread::spawn(move || world.contend_and_hold(patience))
        })
        .collect();
    world.hold(baton);
    for waiter in waiters {
        waiter.join().unwrap();
    }
    world.assert_free();
}

#[test]
fn a_waiter_that_gives_up_as_the_baton_reaches_it_passes_it_on() {
    // Every schedule of a holder and one waiter that gives up at once, or after one to three looks.
    for patience in 0..4 {
        shuttle::check_dfs(move || holder_and_waiters(&[patience]), None);
    }
}

#[test]
fn a_waiter_giving_up_before_or_behind_another_never_stalls_the_line() {
    // The holder and two waiters: one that gives up (at once, or after a look) and one that waits
    // longer, in both orders, and two that give up together. PCT (depth 3) finds a bug that needs at
    // most two preemptions with a probability bounded below in every run; 3 000 runs per scenario.
    let scenarios: [&'static [usize]; 6] = [&[0, 3], &[1, 3], &[3, 0], &[3, 1], &[0, 0], &[1, 1]];
    for (seed, patience) in (0x1ea5e..).zip(scenarios) {
        let scheduler = PctScheduler::new_from_seed(seed, 3, 3_000);
        Runner::new(scheduler, Default::default()).run(move || holder_and_waiters(patience));
    }
}

#[test]
fn many_tasks_contending_and_giving_up_at_random_never_lose_the_baton() {
    // Four tasks, each contending three times with a random patience (0: gives up at once).
    let scheduler = RandomScheduler::new_from_seed(0x5eed_ba70, 2_000);
    Runner::new(scheduler, Default::default()).run(|| {
        let world = World::new();
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let world = world.clone();
                thread::spawn(move || {
                    for _ in 0..3 {
                        let patience = shuttle::rand::thread_rng().gen_range(0..4);
                        world.contend_and_hold(patience);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.join().unwrap();
        }
        world.assert_free();
    });
}

/// An offer as `RedisLock::offer` makes one.
fn offer() -> Arc<Offer> {
    Arc::new(Offer {
        token: Arc::from("next"),
        ttl: std::time::Duration::from_secs(10),
        ttl_arg: "10000".into(),
        fence_counter: None,
        signal: Arc::from("signal"),
    })
}

/// A grant of the memory backend's lock, as a hand-over makes one: dropped untaken, its lease
/// releases in the background (on the memory backend: at once, on this thread).
fn grant() -> Grant {
    let backend: Arc<dyn crate::LockBackend> = Arc::new(crate::memory::MemoryBackend::default());
    let mut lease = crate::lease::Lease::new(
        backend,
        Arc::from("k"),
        Arc::from("signal"),
        Arc::from("next"),
        std::time::Duration::from_secs(10),
    );
    lease.in_flight = false;
    Grant {
        lease,
        fence: None,
        sent_at: crate::time::Moment::now(),
    }
}

/// A holder releases with a hand-over (`LockGuard::release`): it reserves the first waiter, then
/// grants it the lock (`granted`) or gives it the baton alone (the hand-over was refused, failed or
/// cancelled: `Next` dropped), while waiters that offer hand-overs join and give up after their
/// patience; then the key must be free, and at no point did two tasks hold the baton.
fn holder_hands_over(patience: &[usize], granted: bool) {
    let world = World::new();
    let baton = world.contend(0).expect("the first comer takes the baton");
    let waiters: Vec<_> = patience
        .iter()
        .map(|&patience| {
            let world = world.clone();
            thread::spawn(move || {
                if let Some(baton) = world.contend_offering(patience, Some(offer())) {
                    world.hold(baton);
                }
            })
        })
        .collect();
    assert_eq!(world.holders.fetch_add(1, Ordering::SeqCst), 0);
    thread::yield_now();
    world.holders.fetch_sub(1, Ordering::SeqCst);
    match baton.reserve_next() {
        Ok(next) => {
            // The script is in flight.
            thread::yield_now();
            if granted {
                next.grant(grant(), crate::time::Moment::now());
            } else {
                drop(next);
            }
        }
        Err(baton) => drop(baton),
    }
    for waiter in waiters {
        waiter.join().unwrap();
    }
    world.assert_free();
}

#[test]
fn a_hand_over_to_a_waiter_that_gives_up_meanwhile_never_loses_the_baton() {
    // Every schedule of a holder handing over (granted, or the baton alone) to one waiter that gives
    // up at once or after one to three looks: in line, while reserved, or with the grant unread.
    for granted in [true, false] {
        for patience in 0..4 {
            shuttle::check_dfs(move || holder_hands_over(&[patience], granted), None);
        }
    }
}

#[test]
fn a_hand_over_with_two_waiters_giving_up_never_stalls_the_line() {
    let scenarios: [&'static [usize]; 4] = [&[0, 3], &[3, 0], &[1, 1], &[3, 3]];
    for (seed, patience) in (0x4a4d..).zip(scenarios) {
        for granted in [true, false] {
            let scheduler = PctScheduler::new_from_seed(seed, 3, 1_000);
            Runner::new(scheduler, Default::default())
                .run(move || holder_hands_over(patience, granted));
        }
    }
}
