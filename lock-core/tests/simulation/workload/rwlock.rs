//! A read-write lock round: `read`, `write`, `try_read`, `try_write`, `run_read` and `run_write` on
//! one of the run's locks (waits of every length, cancelled at random: cancelled and timed-out
//! writers leave intents behind for the library to remove), then the life of the hold: `renew`,
//! `extend`, `is_owner`, `hold` with work that observes it, naps, `downgrade` of a write hold, and
//! `release` (sometimes once its validity has run out) or drop. Every `valid_for() > 0` read is
//! recorded as a belief, in true time, for the checker's exclusion and backing checks.

use std::time::Duration;

use futures::future::BoxFuture;
use lock_core::{LockError, ReadGuard, RwLock, WriteGuard};

use super::super::history::{Detail, Outcome, What};
use super::worker::outcome_of;
use super::{Primitive, Worker};

/// A hold of either kind.
enum Hold {
    Read(ReadGuard),
    Write(WriteGuard),
}

/// A borrowed hold of either kind: what observing it and working under it need.
#[derive(Clone, Copy)]
enum HoldRef<'a> {
    Read(&'a ReadGuard),
    Write(&'a WriteGuard),
}

impl<'a> HoldRef<'a> {
    fn token(self) -> &'a str {
        match self {
            HoldRef::Read(g) => g.token(),
            HoldRef::Write(g) => g.token(),
        }
    }

    fn key(self) -> &'a str {
        match self {
            HoldRef::Read(g) => g.key(),
            HoldRef::Write(g) => g.key(),
        }
    }

    /// Its entry in the lock's sorted set.
    fn member(self) -> String {
        match self {
            HoldRef::Read(g) => format!("read:{}", g.token()),
            HoldRef::Write(g) => format!("write:{}", g.token()),
        }
    }

    fn valid_for(self) -> Duration {
        match self {
            HoldRef::Read(g) => g.valid_for(),
            HoldRef::Write(g) => g.valid_for(),
        }
    }

    fn fence(self) -> Option<u64> {
        match self {
            HoldRef::Read(g) => g.fence(),
            HoldRef::Write(g) => g.fence(),
        }
    }

    fn is_owner(self) -> BoxFuture<'a, Result<bool, LockError>> {
        match self {
            HoldRef::Read(g) => Box::pin(g.is_owner()),
            HoldRef::Write(g) => Box::pin(g.is_owner()),
        }
    }
}

impl Hold {
    fn as_ref(&self) -> HoldRef<'_> {
        match self {
            Hold::Read(g) => HoldRef::Read(g),
            Hold::Write(g) => HoldRef::Write(g),
        }
    }

    fn renew(&self) -> BoxFuture<'_, Result<bool, LockError>> {
        match self {
            Hold::Read(g) => Box::pin(g.renew()),
            Hold::Write(g) => Box::pin(g.renew()),
        }
    }

    fn extend(&self, by: Duration) -> BoxFuture<'_, Result<bool, LockError>> {
        match self {
            Hold::Read(g) => Box::pin(g.extend(by)),
            Hold::Write(g) => Box::pin(g.extend(by)),
        }
    }

    fn hold<'a>(&'a self, work: BoxFuture<'a, ()>) -> BoxFuture<'a, Result<(), LockError>> {
        match self {
            Hold::Read(g) => Box::pin(g.hold(work)),
            Hold::Write(g) => Box::pin(g.hold(work)),
        }
    }

    fn release(self) -> BoxFuture<'static, Result<bool, LockError>> {
        match self {
            Hold::Read(g) => Box::pin(g.release()),
            Hold::Write(g) => Box::pin(g.release()),
        }
    }
}

impl Worker {
    /// A read-write lock on one of the run's keys, with drawn settings, and its wait.
    fn make_rwlock(&mut self) -> (RwLock, Option<Duration>) {
        let cfg = &self.ctx.cfg;
        let key = self.rng.choice(&cfg.rwlocks).unwrap().clone();
        let mut lock = RwLock::new(self.client(), key).timeout(cfg.ttl);
        if self.rng.u32(0..3) != 0 {
            lock = lock.fencing(true);
        }
        if self.rng.u32(0..6) == 0 {
            lock = lock.max_hold(cfg.ttl.mul_f64(0.5 + 2.0 * self.rng.f64()));
        }
        let wait = match self.rng.u32(0..5) {
            0 => Some(Duration::ZERO),
            1 => Some(self.random_span(cfg.ttl / 2)),
            2 => Some(self.random_span(cfg.ttl * 3)),
            3 => Some(cfg.ttl * 3 + Duration::from_secs(1)),
            _ => None,
        };
        (lock.wait_timeout(wait), wait)
    }

    pub(super) async fn rwlock_round(&mut self, choice: u32) {
        self.primitive = Primitive::RwLock;
        let (lock, wait) = self.make_rwlock();
        let key = lock.key().to_owned();
        // Readers mostly, as the lock is made for; enough writers that they wait behind readers.
        let write = self.rng.u32(0..5) < 2;
        let start = self.now();
        let local_start = self.local_now();
        match choice {
            0..=4 => {
                let acquiring: BoxFuture<'_, Result<Hold, LockError>> = match write {
                    true => Box::pin(async { lock.write().await.map(Hold::Write) }),
                    false => Box::pin(async { lock.read().await.map(Hold::Read) }),
                };
                let result = self.maybe_cancel(acquiring).await;
                let took = self.local_now() - local_start;
                let outcome = result
                    .as_ref()
                    .map_or(Outcome::Cancelled, |r| outcome_of(r, |_| true));
                let detail = Detail::RwWait {
                    wait,
                    bound: self.ctx.cfg.bound,
                    took,
                    write,
                };
                let kind = if write { "rw_write" } else { "rw_read" };
                self.record_op(kind, &key, start, outcome, detail);
                if let Some(Ok(hold)) = result {
                    self.use_hold(hold).await;
                }
            }
            5..=7 => {
                let trying: BoxFuture<'_, Result<Option<Hold>, LockError>> = match write {
                    true => Box::pin(async { lock.try_write().await.map(|g| g.map(Hold::Write)) }),
                    false => Box::pin(async { lock.try_read().await.map(|g| g.map(Hold::Read)) }),
                };
                let result = self.maybe_cancel(trying).await;
                let outcome = result
                    .as_ref()
                    .map_or(Outcome::Cancelled, |r| outcome_of(r, Option::is_some));
                let kind = if write { "rw_try_write" } else { "rw_try_read" };
                self.record_op(kind, &key, start, outcome, Detail::None);
                if let Some(Ok(Some(hold))) = result {
                    self.use_hold(hold).await;
                }
            }
            _ => self.run_rwlock(lock, wait, write).await,
        }
    }

    /// `run_read` or `run_write`: the body works (observing its hold) for a drawn time.
    async fn run_rwlock(&mut self, lock: RwLock, wait: Option<Duration>, write: bool) {
        let key = lock.key().to_owned();
        let start = self.now();
        let local_start = self.local_now();
        let length = self.random_span(self.ctx.cfg.ttl * 2);
        let cancel_after = self.draw_cancel();
        let token = std::sync::Mutex::new(None);
        let me = &*self;
        let body = async |hold: HoldRef<'_>| {
            *token.lock().unwrap() = Some(hold.token().to_owned());
            me.hold_acquired(hold);
            me.work_under_hold(hold, length).await;
            // The release follows: no belief past this point.
            me.ctx.core.record(What::GuardEnd {
                key: hold.key().to_owned(),
                token: hold.token().to_owned(),
            });
        };
        let result = match write {
            true => {
                let running: BoxFuture<'_, Result<(), LockError>> =
                    Box::pin(lock.run_write(async |g: &WriteGuard| body(HoldRef::Write(g)).await));
                me.cancellable(cancel_after, running).await
            }
            false => {
                let running: BoxFuture<'_, Result<(), LockError>> =
                    Box::pin(lock.run_read(async |g: &ReadGuard| body(HoldRef::Read(g)).await));
                me.cancellable(cancel_after, running).await
            }
        };
        let took = self.local_now() - local_start;
        let outcome = result
            .as_ref()
            .map_or(Outcome::Cancelled, |r| outcome_of(r, |_| true));
        if let Some(token) = token.into_inner().unwrap() {
            self.ctx.core.record(What::GuardEnd {
                key: key.clone(),
                token,
            });
        }
        let detail = Detail::RwWait {
            wait,
            bound: self.ctx.cfg.bound,
            took,
            write,
        };
        let kind = if write { "rw_run_write" } else { "rw_run_read" };
        self.record_op(kind, &key, start, outcome, detail);
    }

    fn hold_acquired(&self, hold: HoldRef<'_>) {
        self.ctx.core.record(What::Acquired {
            process: self.process,
            key: hold.key().to_owned(),
            token: hold.token().to_owned(),
            fence: hold.fence(),
            redlock: false,
        });
        self.observe_hold(hold);
    }

    /// Reads `valid_for` and records the belief it states, in true time.
    fn observe_hold(&self, hold: HoldRef<'_>) {
        let valid = hold.valid_for();
        if valid.is_zero() {
            return;
        }
        self.ctx.core.record(What::RwHold {
            process: self.process,
            key: hold.key().to_owned(),
            token: hold.token().to_owned(),
            member: hold.member(),
            until: self.now() + self.clock().true_span_floor(valid),
        });
    }

    /// Work for `length` of true time under `hold` or a `run_*` body: observes the hold and asks
    /// whether it is still ours now and then; records its end (a `hold` that let it finish vouches for
    /// the hold throughout).
    async fn work_under_hold(&self, hold: HoldRef<'_>, length: Duration) {
        let start = self.now();
        let end = (start + length).min(self.ctx.cfg.end().max(start));
        let mut step = 0u32;
        loop {
            self.observe_hold(hold);
            if step % 3 == 1 {
                self.ask_owner(hold).await;
            }
            step += 1;
            if self.now() >= end {
                break;
            }
            let nap = (end - self.now()).min(self.ctx.cfg.ttl / 5);
            self.ctx.core.rt.sleep_until(self.now() + nap).await;
        }
        self.ctx.core.record(What::ShareWork {
            process: self.process,
            key: hold.key().to_owned(),
            member: hold.member(),
            start,
        });
    }

    async fn ask_owner(&self, hold: HoldRef<'_>) {
        let asked = self.now();
        let result = hold.is_owner().await;
        let outcome = outcome_of(&result, |ours| *ours);
        let detail = Detail::RwMember {
            member: hold.member(),
        };
        self.record_op("rw_is_owner", hold.key(), asked, outcome, detail);
    }

    /// A hold's life: a few operations (a write hold may be downgraded), then release, drop, or release
    /// once expired.
    async fn use_hold(&mut self, hold: Hold) {
        self.hold_acquired(hold.as_ref());
        let mut hold = hold;
        let cfg = self.ctx.cfg.clone();
        let key = hold.as_ref().key().to_owned();
        for _ in 0..self.rng.u32(0..8) {
            let start = self.now();
            if start >= cfg.end() {
                break;
            }
            match self.rng.u32(0..12) {
                0 | 1 => {
                    let result = self.maybe_cancel(hold.renew()).await;
                    let outcome = result
                        .as_ref()
                        .map_or(Outcome::Cancelled, |r| outcome_of(r, |w| *w));
                    self.record_op("rw_renew", &key, start, outcome, Detail::None);
                }
                2 | 3 => {
                    let by = cfg.ttl.mul_f64(0.1 + 2.9 * self.rng.f64());
                    let result = self.maybe_cancel(hold.extend(by)).await;
                    let outcome = result
                        .as_ref()
                        .map_or(Outcome::Cancelled, |r| outcome_of(r, |w| *w));
                    self.record_op("rw_extend", &key, start, outcome, Detail::None);
                }
                4 => self.ask_owner(hold.as_ref()).await,
                5 | 6 => {
                    let nap = self.random_span(cfg.ttl);
                    self.sleep(nap).await;
                }
                7..=9 if matches!(hold, Hold::Write(_)) => {
                    let Hold::Write(guard) = hold else {
                        unreachable!("matched a write hold")
                    };
                    match self.downgrade(guard).await {
                        Some(read) => hold = Hold::Read(read),
                        None => return,
                    }
                }
                _ => {
                    let length = self.random_span(cfg.ttl * 3);
                    let cancel_after = self.draw_cancel();
                    let result = {
                        let me = &*self;
                        let held = hold.as_ref();
                        let work: BoxFuture<'_, ()> =
                            Box::pin(async move { me.work_under_hold(held, length).await });
                        me.cancellable(cancel_after, hold.hold(work)).await
                    };
                    let outcome = result
                        .as_ref()
                        .map_or(Outcome::Cancelled, |r| outcome_of(r, |_| true));
                    self.record_op("rw_hold", &key, start, outcome, Detail::None);
                    if let Some(Err(LockError::Lost { .. })) = result {
                        // Told it lost the hold (the library releases it in the background): the
                        // guard must claim nothing any more. Keep it a while, looking.
                        self.ctx.core.record(What::GuardEnd {
                            key: key.clone(),
                            token: hold.as_ref().token().to_owned(),
                        });
                        self.observe_hold(hold.as_ref());
                        let nap = self.random_span(cfg.ttl * 2);
                        self.sleep(nap).await;
                        self.observe_hold(hold.as_ref());
                        break;
                    }
                }
            }
            self.observe_hold(hold.as_ref());
        }
        self.end_hold(hold).await;
    }

    /// `downgrade`: the write hold ends as the call starts; the read hold, if granted, carries on.
    /// `None` when it ended with the call (lost, failed or cancelled: released in the background).
    async fn downgrade(&mut self, guard: WriteGuard) -> Option<ReadGuard> {
        let key = guard.key().to_owned();
        let token = guard.token().to_owned();
        let member = format!("write:{token}");
        let start = self.now();
        self.ctx.core.record(What::Downgrading {
            key: key.clone(),
            token: token.clone(),
        });
        let result = self.maybe_cancel(guard.downgrade()).await;
        let outcome = result
            .as_ref()
            .map_or(Outcome::Cancelled, |r| outcome_of(r, |_| true));
        self.record_op(
            "rw_downgrade",
            &key,
            start,
            outcome,
            Detail::RwMember { member },
        );
        match result {
            Some(Ok(read)) => {
                self.observe_hold(HoldRef::Read(&read));
                Some(read)
            }
            _ => {
                self.ctx.core.record(What::GuardEnd { key, token });
                None
            }
        }
    }

    async fn end_hold(&mut self, hold: Hold) {
        let key = hold.as_ref().key().to_owned();
        let token = hold.as_ref().token().to_owned();
        match self.rng.u32(0..5) {
            0 => {
                let start = self.now();
                self.ctx.core.record(What::GuardEnd {
                    key: key.clone(),
                    token,
                });
                drop(hold);
                self.record_op("rw_drop", &key, start, Outcome::Ok, Detail::None);
            }
            choice => {
                if choice == 1 {
                    // Released only once its validity has run out: known lost.
                    let past = hold.as_ref().valid_for() + Duration::from_millis(1);
                    self.sleep(past).await;
                }
                let start = self.now();
                self.ctx.core.record(What::GuardEnd {
                    key: key.clone(),
                    token: token.clone(),
                });
                let detail = Detail::Release {
                    token,
                    valid: !hold.as_ref().valid_for().is_zero(),
                    redlock: false,
                };
                let result = self.maybe_cancel(hold.release()).await;
                let outcome = result
                    .as_ref()
                    .map_or(Outcome::Cancelled, |r| outcome_of(r, |w| *w));
                self.record_op("rw_release", &key, start, outcome, detail);
            }
        }
    }
}
