//! A worker's plumbing (its clock, cancellation at random, recording) and the life of a guard it
//! holds: observing it, working under it, using it and ending it.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::future::{BoxFuture, Either, select};
use lock_core::{Leadership, LockError, LockGuard, RedlockGuard};

use super::super::executor::Instant;
use super::super::history::{self, Detail, Outcome, What};
use super::super::world::{SimClient, VirtualClock};
use super::{Mode, Primitive, Worker};

/// A guard of any kind, with what the workload does with it.
pub(super) enum Guard {
    Lock(LockGuard),
    Redlock(RedlockGuard),
    Leader(Leadership),
}

/// A borrowed guard of any kind: what observing it and working under it need.
#[derive(Clone, Copy)]
pub(super) enum GuardRef<'a> {
    Lock(&'a LockGuard),
    Redlock(&'a RedlockGuard),
    Leader(&'a Leadership),
}

impl<'a> GuardRef<'a> {
    /// A single server's guard (an election's term is one).
    fn single(self) -> Option<&'a LockGuard> {
        match self {
            GuardRef::Lock(g) => Some(g),
            GuardRef::Leader(l) => Some(l.guard()),
            GuardRef::Redlock(_) => None,
        }
    }

    fn token(self) -> &'a str {
        match self {
            GuardRef::Redlock(g) => g.token(),
            other => other.single().map_or("", LockGuard::token),
        }
    }

    fn key(self) -> &'a str {
        match self {
            GuardRef::Redlock(g) => g.key(),
            other => other.single().map_or("", LockGuard::key),
        }
    }

    fn valid_for(self) -> Duration {
        match (self, self.single()) {
            (_, Some(g)) => g.valid_for(),
            (GuardRef::Redlock(g), None) => g.valid_for(),
            _ => Duration::ZERO,
        }
    }

    fn fence(self) -> Option<u64> {
        match (self, self.single()) {
            (_, Some(g)) => g.fence(),
            (GuardRef::Redlock(g), None) => g.fence(),
            _ => None,
        }
    }

    /// A guard `fenced_set` can write with.
    fn fenced(self) -> Option<&'a LockGuard> {
        self.single().filter(|g| g.fence().is_some())
    }

    /// The servers that hold the lock, and how many of them must.
    fn servers_and_quorum(self) -> (Vec<usize>, usize) {
        match self {
            GuardRef::Redlock(_) => ((0..5).collect(), 3),
            _ => (vec![0], 1),
        }
    }

    /// "Is it still mine?": `is_owner`, or for an election's term `is_current`.
    fn is_owner(self) -> BoxFuture<'a, Result<bool, LockError>> {
        match self {
            GuardRef::Lock(g) => Box::pin(g.is_owner()),
            GuardRef::Redlock(g) => Box::pin(g.is_owner()),
            GuardRef::Leader(l) => Box::pin(l.is_current()),
        }
    }
}

impl Guard {
    fn as_ref(&self) -> GuardRef<'_> {
        match self {
            Guard::Lock(g) => GuardRef::Lock(g),
            Guard::Redlock(g) => GuardRef::Redlock(g),
            Guard::Leader(l) => GuardRef::Leader(l),
        }
    }

    fn token(&self) -> &str {
        self.as_ref().token()
    }

    fn key(&self) -> &str {
        self.as_ref().key()
    }

    fn renew(&self) -> BoxFuture<'_, Result<bool, LockError>> {
        match self {
            Guard::Lock(g) => Box::pin(g.renew()),
            Guard::Redlock(g) => Box::pin(g.renew()),
            Guard::Leader(l) => Box::pin(l.guard().renew()),
        }
    }

    fn extend(&self, by: Duration) -> BoxFuture<'_, Result<bool, LockError>> {
        match self {
            Guard::Lock(g) => Box::pin(g.extend(by)),
            Guard::Redlock(g) => Box::pin(g.extend(by)),
            Guard::Leader(l) => Box::pin(l.guard().extend(by)),
        }
    }

    fn hold<'a>(&'a self, work: BoxFuture<'a, ()>) -> BoxFuture<'a, Result<(), LockError>> {
        match self {
            Guard::Lock(g) => Box::pin(g.hold(work)),
            Guard::Redlock(g) => Box::pin(g.hold(work)),
            Guard::Leader(l) => Box::pin(l.hold(work)),
        }
    }

    fn release(self) -> BoxFuture<'static, Result<bool, LockError>> {
        match self {
            Guard::Lock(g) => Box::pin(g.release()),
            Guard::Redlock(g) => Box::pin(g.release()),
            Guard::Leader(l) => Box::pin(l.resign()),
        }
    }
}

pub(super) fn outcome_of<T>(result: &Result<T, LockError>, ok: impl FnOnce(&T) -> bool) -> Outcome {
    match result {
        Ok(value) if ok(value) => Outcome::Ok,
        Ok(_) => Outcome::Refused,
        Err(LockError::Timeout { .. }) => Outcome::Timeout,
        Err(LockError::Lost { .. }) => Outcome::Lost,
        Err(LockError::InDoubt { .. }) => Outcome::InDoubt,
        Err(LockError::NotReplicated { .. }) => Outcome::NotReplicated,
        Err(error @ LockError::InvalidArgument { .. }) => {
            panic!("the workload made an invalid call: {error}")
        }
        Err(error) => Outcome::Failed {
            transient: error.is_transient(),
        },
    }
}

impl Worker {
    pub(super) fn now(&self) -> Instant {
        self.ctx.core.rt.now()
    }

    pub(super) fn local_now(&self) -> Duration {
        self.ctx.processes[self.process].clock.local()
    }

    pub(super) fn clock(&self) -> &VirtualClock {
        &self.ctx.processes[self.process].clock
    }

    pub(super) fn client(&self) -> Arc<SimClient> {
        self.ctx.clients[self.process][0].clone()
    }

    pub(super) fn pick_key(&mut self) -> String {
        self.rng.choice(&self.ctx.cfg.keys).unwrap().clone()
    }

    pub(super) async fn sleep(&self, local: Duration) {
        let rt = &self.ctx.core.rt;
        rt.sleep_until(rt.now() + self.clock().true_span(local))
            .await;
    }

    pub(super) fn random_span(&mut self, max: Duration) -> Duration {
        max.mul_f64(self.rng.f64())
    }

    /// Draws whether the next operation is dropped at a random await, and after how long: half the
    /// time within a round trip, when a request is most likely in flight.
    pub(super) fn draw_cancel(&mut self) -> Option<Duration> {
        if self.rng.f64() >= self.ctx.cfg.cancel {
            return None;
        }
        let cfg = &self.ctx.cfg;
        let within = if self.rng.bool() {
            cfg.faults.delay_max * 2
        } else {
            cfg.bound * 2
        };
        Some(self.random_span(within))
    }

    /// Runs `operation`, or drops it after `cancel_after` (a timer that fires first).
    pub(super) async fn cancellable<F: Future>(
        &self,
        cancel_after: Option<Duration>,
        operation: F,
    ) -> Option<F::Output> {
        let Some(after) = cancel_after else {
            return Some(operation.await);
        };
        let timer = pin!(self.sleep(after));
        match select(pin!(operation), timer).await {
            Either::Left((output, _)) => Some(output),
            Either::Right(_) => None,
        }
    }

    pub(super) async fn maybe_cancel<F: Future>(&mut self, operation: F) -> Option<F::Output> {
        let after = self.draw_cancel();
        self.cancellable(after, operation).await
    }

    pub(super) fn record_op(
        &self,
        kind: &'static str,
        key: &str,
        start: Instant,
        outcome: Outcome,
        detail: Detail,
    ) {
        self.ctx.operations.fetch_add(1, Ordering::Relaxed);
        let primitive = Primitive::ALL
            .iter()
            .position(|p| *p == self.primitive)
            .expect("every primitive is listed");
        self.ctx.by_primitive[primitive].fetch_add(1, Ordering::Relaxed);
        self.ctx.core.record(What::Op(history::Op {
            process: self.process,
            task: self.ctx.core.rt.current_task(),
            kind,
            key: key.to_owned(),
            start,
            outcome,
            detail,
        }));
    }

    /// Reads `valid_for` and records the belief it states, in true time.
    fn observe(&self, guard: GuardRef<'_>) {
        let valid = guard.valid_for();
        if valid.is_zero() {
            return;
        }
        let (servers, quorum) = guard.servers_and_quorum();
        self.ctx.core.record(What::Belief {
            process: self.process,
            key: guard.key().to_owned(),
            token: guard.token().to_owned(),
            until: self.now() + self.clock().true_span_floor(valid),
            servers,
            quorum,
        });
    }

    pub(super) fn acquired(&self, guard: GuardRef<'_>) {
        self.ctx.core.record(What::Acquired {
            process: self.process,
            key: guard.key().to_owned(),
            token: guard.token().to_owned(),
            fence: guard.fence(),
            redlock: matches!(guard, GuardRef::Redlock(_)),
        });
        self.observe(guard);
    }

    fn guard_end(&self, guard: &Guard) {
        // (Any kind of guard.)
        self.ctx.core.record(What::GuardEnd {
            key: guard.key().to_owned(),
            token: guard.token().to_owned(),
        });
    }
    pub(super) async fn run(mut self) {
        let end = self.ctx.cfg.end();
        // Workers start spread out.
        let first = self.random_span(self.ctx.cfg.ttl);
        self.sleep(first).await;
        while self.now() < end {
            let choice = self.rng.u32(0..10);
            // About a third of the rounds on a semaphore, where the run has them.
            let semaphore = !self.ctx.cfg.semaphores.is_empty() && self.rng.u32(0..3) == 0;
            // And about a third of the others on a read-write lock, where the run has them.
            let rwlock = !semaphore && !self.ctx.cfg.rwlocks.is_empty() && self.rng.u32(0..3) == 0;
            // And about half of the rest on a fair lock, where the run has them: enough waiters at
            // once that grants are made past a queue.
            let fair = !semaphore && !rwlock && !self.ctx.cfg.fair.is_empty() && self.rng.bool();
            match self.ctx.cfg.mode {
                _ if semaphore => self.semaphore_round(choice).await,
                _ if rwlock => self.rwlock_round(choice).await,
                _ if fair => self.fair_round(choice).await,
                Mode::Redlock => {
                    self.primitive = Primitive::Redlock;
                    self.redlock_round(choice).await;
                }
                _ if self.election.is_some() && choice >= 8 => {
                    self.primitive = Primitive::Election;
                    self.lead().await;
                }
                _ => {
                    self.primitive = Primitive::Mutex;
                    self.lock_round(choice).await;
                }
            }
            let pause = self.random_span(self.ctx.cfg.ttl / 4);
            self.sleep(pause).await;
        }
        drop(self);
    }
    /// A guard's life: a few operations, then release, drop, or keep a while and drop.
    pub(super) async fn use_guard(&mut self, guard: Guard) {
        self.acquired(guard.as_ref());
        let cfg = self.ctx.cfg.clone();
        let key = guard.key().to_owned();
        let steps = self.rng.u32(0..8);
        // After a write to the lease failed, the next step often tries another write at once, as a
        // holder would.
        let mut failed_write = false;
        for _ in 0..steps {
            let start = self.now();
            // The run is ending: hand the lock on rather than keep waiters waiting.
            if start >= cfg.end() {
                break;
            }
            let step = match failed_write && self.rng.bool() {
                true => self.rng.u32(0..4),
                false => self.rng.u32(0..12),
            };
            failed_write = false;
            match step {
                0 | 1 => {
                    let result = self.maybe_cancel(guard.renew()).await;
                    let outcome = result
                        .as_ref()
                        .map_or(Outcome::Cancelled, |r| outcome_of(r, |w| *w));
                    failed_write =
                        matches!(outcome, Outcome::Failed { .. } | Outcome::NotReplicated);
                    self.record_op("renew", &key, start, outcome, Detail::None);
                }
                2 | 3 => {
                    let by = cfg.ttl.mul_f64(0.1 + 2.9 * self.rng.f64());
                    let redlock = matches!(guard, Guard::Redlock(_));
                    let before = (!redlock)
                        .then(|| self.server_expiry(&key, guard.token()))
                        .flatten();
                    let result = self.maybe_cancel(guard.extend(by)).await;
                    let after = (!redlock)
                        .then(|| self.server_expiry(&key, guard.token()))
                        .flatten();
                    let outcome = result
                        .as_ref()
                        .map_or(Outcome::Cancelled, |r| outcome_of(r, |w| *w));
                    let detail = Detail::Extend {
                        token: guard.token().to_owned(),
                        by: self.clock().true_span(by),
                        before,
                        after,
                    };
                    failed_write =
                        matches!(outcome, Outcome::Failed { .. } | Outcome::NotReplicated);
                    self.record_op("extend", &key, start, outcome, detail);
                }
                4 => {
                    let result = self.maybe_cancel(guard.as_ref().is_owner()).await;
                    self.record_owner(guard.as_ref(), start, result);
                }
                5 | 6 => {
                    if let Some(lock_guard) = guard.as_ref().fenced() {
                        let resource = self.rng.choice(&cfg.resources).unwrap().clone();
                        self.fenced_set(lock_guard, &resource).await;
                    }
                }
                7 | 8 => {
                    let nap = self.random_span(cfg.ttl);
                    self.sleep(nap).await;
                }
                _ => {
                    let length = self.random_span(cfg.ttl * 3);
                    let seed = self.rng.u64(..);
                    let (servers, quorum) = guard.as_ref().servers_and_quorum();
                    let cancel_after = self.draw_cancel();
                    let result = {
                        let me = &*self;
                        let held = guard.as_ref();
                        let work = Box::pin(async move {
                            me.work_under(held, length, seed).await;
                        });
                        me.cancellable(cancel_after, guard.hold(work)).await
                    };
                    let outcome = result
                        .as_ref()
                        .map_or(Outcome::Cancelled, |r| outcome_of(r, |_| true));
                    self.record_op("hold", &key, start, outcome, Detail::None);
                    if let Some(Err(LockError::Lost { .. })) = result {
                        self.ctx.core.record(What::Work {
                            process: self.process,
                            key: key.clone(),
                            token: guard.token().to_owned(),
                            start,
                            lost: true,
                            servers,
                            quorum,
                        });
                        // Told it lost the lock (the library releases the lease in the
                        // background): the guard must claim nothing any more. Keep it a while,
                        // looking, then end it.
                        self.observe(guard.as_ref());
                        let nap = self.random_span(cfg.ttl * 2);
                        self.sleep(nap).await;
                        self.observe(guard.as_ref());
                        break;
                    }
                }
            }
            self.observe(guard.as_ref());
        }
        self.end_guard(guard).await;
    }
    fn record_owner(
        &self,
        guard: GuardRef<'_>,
        start: Instant,
        result: Option<Result<bool, LockError>>,
    ) {
        let outcome = result
            .as_ref()
            .map_or(Outcome::Cancelled, |r| outcome_of(r, |w| *w));
        let (servers, quorum) = guard.servers_and_quorum();
        let detail = Detail::Owner {
            token: guard.token().to_owned(),
            servers,
            quorum,
        };
        self.record_op("is_owner", guard.key(), start, outcome, detail);
    }
    /// Work for `length` of true time under `hold` or `run`: observe the lease, write with the fence,
    /// sleep; records its end (a `hold` that let it finish vouches for the lock throughout).
    pub(super) async fn work_under(&self, guard: GuardRef<'_>, length: Duration, seed: u64) {
        let mut rng = fastrand::Rng::with_seed(seed);
        let start = self.now();
        // Work started before the run's end stops at it, so that the run drains.
        let end = (start + length).min(self.ctx.cfg.end().max(start));
        loop {
            self.observe(guard);
            if let Some(lock_guard) = guard.fenced()
                && rng.u32(0..3) == 0
            {
                let resource = rng.choice(&self.ctx.cfg.resources).unwrap().clone();
                self.fenced_set(lock_guard, &resource).await;
            }
            if rng.u32(0..4) == 0 {
                // A leader (or holder) asks whether it still is one, as it works.
                let start = self.now();
                let result = guard.is_owner().await;
                self.record_owner(guard, start, Some(result));
            }
            if self.now() >= end {
                break;
            }
            let nap = (end - self.now()).min(self.ctx.cfg.ttl.mul_f64(rng.f64() / 4.0));
            self.ctx.core.rt.sleep_until(self.now() + nap).await;
        }
        let (servers, quorum) = guard.servers_and_quorum();
        self.ctx.core.record(What::Work {
            process: self.process,
            key: guard.key().to_owned(),
            token: guard.token().to_owned(),
            start,
            lost: false,
            servers,
            quorum,
        });
    }
    async fn end_guard(&mut self, guard: Guard) {
        let key = guard.key().to_owned();
        match self.rng.u32(0..5) {
            0 => {
                let start = self.now();
                self.guard_end(&guard);
                drop(guard);
                self.record_op("drop", &key, start, Outcome::Ok, Detail::None);
            }
            choice => {
                if choice == 1 {
                    // Released only once its validity has run out: known lost, whatever the servers
                    // answer.
                    let past = guard.as_ref().valid_for() + Duration::from_millis(1);
                    self.sleep(past).await;
                }
                let start = self.now();
                self.guard_end(&guard);
                let detail = Detail::Release {
                    token: guard.token().to_owned(),
                    valid: !guard.as_ref().valid_for().is_zero(),
                    redlock: matches!(guard, Guard::Redlock(_)),
                };
                let result = self.maybe_cancel(guard.release()).await;
                let outcome = result
                    .as_ref()
                    .map_or(Outcome::Cancelled, |r| outcome_of(r, |w| *w));
                self.record_op("release", &key, start, outcome, detail);
            }
        }
    }
}
