//! A semaphore round: `acquire`, `acquire_many`, `try_acquire`, `try_acquire_many`, `run` and
//! `available` on one of the run's semaphores (each key with its own fixed limit), then the life of
//! the permit: `renew`, `extend`, `is_owner`, `hold` with work that observes it, naps, and `release`
//! (sometimes once its validity has run out) or drop. Every `valid_for() > 0` read is recorded as a
//! belief, in true time, for the checker's limit and backing checks.

use std::time::Duration;

use futures::future::BoxFuture;
use lock_core::{LockError, Permit, Semaphore};

use super::super::history::{Detail, Outcome, What};
use super::worker::outcome_of;
use super::{Primitive, Worker};

impl Worker {
    /// A semaphore on one of the run's keys, with drawn settings, its limit, and its wait.
    fn make_semaphore(&mut self) -> (Semaphore, u32, Option<Duration>) {
        let cfg = &self.ctx.cfg;
        let (key, limit) = self.rng.choice(&cfg.semaphores).unwrap().clone();
        let mut semaphore = Semaphore::new(self.client(), key, limit).timeout(cfg.ttl);
        if self.rng.u32(0..3) != 0 {
            semaphore = semaphore.fencing(true);
        }
        if self.rng.u32(0..6) == 0 {
            semaphore = semaphore.max_hold(cfg.ttl.mul_f64(0.5 + 2.0 * self.rng.f64()));
        }
        let wait = match self.rng.u32(0..5) {
            0 => Some(Duration::ZERO),
            1 => Some(self.random_span(cfg.ttl / 2)),
            2 => Some(self.random_span(cfg.ttl * 3)),
            3 => Some(cfg.ttl * 3 + Duration::from_secs(1)),
            _ => None,
        };
        (semaphore.wait_timeout(wait), limit, wait)
    }

    pub(super) async fn semaphore_round(&mut self, choice: u32) {
        self.primitive = Primitive::Semaphore;
        let (semaphore, limit, wait) = self.make_semaphore();
        let key = semaphore.key().to_owned();
        // Mostly one permit, as most users take; sometimes several, up to the whole limit.
        let permits = match self.rng.bool() {
            true => 1,
            false => self.rng.u32(1..=limit),
        };
        let start = self.now();
        let local_start = self.local_now();
        match choice {
            0..=3 => {
                let acquiring = async {
                    match permits {
                        1 => semaphore.acquire().await,
                        n => semaphore.acquire_many(n).await,
                    }
                };
                let result = self.maybe_cancel(acquiring).await;
                let took = self.local_now() - local_start;
                let outcome = result
                    .as_ref()
                    .map_or(Outcome::Cancelled, |r| outcome_of(r, |_| true));
                let detail = Detail::Permits {
                    wait,
                    bound: self.ctx.cfg.bound,
                    took,
                    permits,
                    limit,
                };
                self.record_op("semaphore_acquire", &key, start, outcome, detail);
                if let Some(Ok(permit)) = result {
                    self.use_permit(permit, limit).await;
                }
            }
            4..=6 => {
                let trying = async {
                    match permits {
                        1 => semaphore.try_acquire().await,
                        n => semaphore.try_acquire_many(n).await,
                    }
                };
                let result = self.maybe_cancel(trying).await;
                let outcome = result
                    .as_ref()
                    .map_or(Outcome::Cancelled, |r| outcome_of(r, Option::is_some));
                self.record_op("semaphore_try_acquire", &key, start, outcome, Detail::None);
                if let Some(Ok(Some(permit))) = result {
                    self.use_permit(permit, limit).await;
                }
            }
            7 | 8 => self.run_semaphore(semaphore, limit, wait).await,
            _ => {
                let result = self.maybe_cancel(semaphore.available()).await;
                let outcome = result
                    .as_ref()
                    .map_or(Outcome::Cancelled, |r| outcome_of(r, |free| *free <= limit));
                self.record_op("semaphore_available", &key, start, outcome, Detail::None);
            }
        }
    }

    /// `Semaphore::run`: the body works (observing its permit) for a drawn time.
    async fn run_semaphore(&mut self, semaphore: Semaphore, limit: u32, wait: Option<Duration>) {
        let key = semaphore.key().to_owned();
        let start = self.now();
        let local_start = self.local_now();
        let length = self.random_span(self.ctx.cfg.ttl * 2);
        let cancel_after = self.draw_cancel();
        let token = std::sync::Mutex::new(None);
        let me = &*self;
        let body = async |permit: &Permit| {
            *token.lock().unwrap() = Some(permit.token().to_owned());
            me.permit_acquired(permit, limit);
            me.work_under_permit(permit, limit, length).await;
            // The release follows: no belief past this point.
            me.ctx.core.record(What::GuardEnd {
                key: permit.key().to_owned(),
                token: permit.token().to_owned(),
            });
        };
        let result = me.cancellable(cancel_after, semaphore.run(body)).await;
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
        let detail = Detail::Permits {
            wait,
            bound: self.ctx.cfg.bound,
            took,
            permits: 1,
            limit,
        };
        self.record_op("semaphore_run", &key, start, outcome, detail);
    }

    fn permit_acquired(&self, permit: &Permit, limit: u32) {
        self.ctx.core.record(What::Acquired {
            process: self.process,
            key: permit.key().to_owned(),
            token: permit.token().to_owned(),
            fence: permit.fence(),
            redlock: false,
        });
        self.observe_permit(permit, limit);
    }

    /// Reads `valid_for` and records the belief it states, in true time.
    fn observe_permit(&self, permit: &Permit, limit: u32) {
        let valid = permit.valid_for();
        if valid.is_zero() {
            return;
        }
        self.ctx.core.record(What::Permits {
            process: self.process,
            key: permit.key().to_owned(),
            token: permit.token().to_owned(),
            member: format!("{}:{}", permit.permits(), permit.token()),
            permits: permit.permits(),
            limit,
            until: self.now() + self.clock().true_span_floor(valid),
        });
    }

    /// Work for `length` of true time under `hold` or `run`: observes the permit and asks whether it is
    /// still ours now and then; records its end (a `hold` that let it finish vouches for the permit).
    async fn work_under_permit(&self, permit: &Permit, limit: u32, length: Duration) {
        let start = self.now();
        let end = (start + length).min(self.ctx.cfg.end().max(start));
        let mut step = 0u32;
        loop {
            self.observe_permit(permit, limit);
            if step % 3 == 1 {
                let asked = self.now();
                let result = permit.is_owner().await;
                let outcome = outcome_of(&result, |ours| *ours);
                self.record_op(
                    "semaphore_is_owner",
                    permit.key(),
                    asked,
                    outcome,
                    Detail::None,
                );
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
            key: permit.key().to_owned(),
            member: format!("{}:{}", permit.permits(), permit.token()),
            start,
        });
    }

    /// A permit's life: a few operations, then release, drop, or release once expired.
    async fn use_permit(&mut self, permit: Permit, limit: u32) {
        self.permit_acquired(&permit, limit);
        let cfg = self.ctx.cfg.clone();
        let key = permit.key().to_owned();
        for _ in 0..self.rng.u32(0..8) {
            let start = self.now();
            if start >= cfg.end() {
                break;
            }
            match self.rng.u32(0..10) {
                0 | 1 => {
                    let result = self.maybe_cancel(permit.renew()).await;
                    let outcome = result
                        .as_ref()
                        .map_or(Outcome::Cancelled, |r| outcome_of(r, |w| *w));
                    self.record_op("semaphore_renew", &key, start, outcome, Detail::None);
                }
                2 | 3 => {
                    let by = cfg.ttl.mul_f64(0.1 + 2.9 * self.rng.f64());
                    let result = self.maybe_cancel(permit.extend(by)).await;
                    let outcome = result
                        .as_ref()
                        .map_or(Outcome::Cancelled, |r| outcome_of(r, |w| *w));
                    self.record_op("semaphore_extend", &key, start, outcome, Detail::None);
                }
                4 => {
                    let result = self.maybe_cancel(permit.is_owner()).await;
                    let outcome = result
                        .as_ref()
                        .map_or(Outcome::Cancelled, |r| outcome_of(r, |w| *w));
                    self.record_op("semaphore_is_owner", &key, start, outcome, Detail::None);
                }
                5 | 6 => {
                    let nap = self.random_span(cfg.ttl);
                    self.sleep(nap).await;
                }
                _ => {
                    let length = self.random_span(cfg.ttl * 3);
                    let cancel_after = self.draw_cancel();
                    let result = {
                        let me = &*self;
                        let held = &permit;
                        let work: BoxFuture<'_, ()> =
                            Box::pin(
                                async move { me.work_under_permit(held, limit, length).await },
                            );
                        // Boxed as `dyn Send`, as the mutex's `Guard::hold` is: the compiler cannot
                        // otherwise prove the nested borrows `Send` for every lifetime.
                        let holding: BoxFuture<'_, Result<(), LockError>> =
                            Box::pin(permit.hold(work));
                        me.cancellable(cancel_after, holding).await
                    };
                    let outcome = result
                        .as_ref()
                        .map_or(Outcome::Cancelled, |r| outcome_of(r, |_| true));
                    self.record_op("semaphore_hold", &key, start, outcome, Detail::None);
                    if let Some(Err(LockError::Lost { .. })) = result {
                        // Told it lost the permits (the library gives them back in the background):
                        // the permit must claim nothing any more. Keep it a while, looking.
                        self.ctx.core.record(What::GuardEnd {
                            key: key.clone(),
                            token: permit.token().to_owned(),
                        });
                        self.observe_permit(&permit, limit);
                        let nap = self.random_span(cfg.ttl * 2);
                        self.sleep(nap).await;
                        self.observe_permit(&permit, limit);
                        break;
                    }
                }
            }
            self.observe_permit(&permit, limit);
        }
        self.end_permit(permit).await;
    }

    async fn end_permit(&mut self, permit: Permit) {
        let key = permit.key().to_owned();
        let token = permit.token().to_owned();
        match self.rng.u32(0..5) {
            0 => {
                let start = self.now();
                self.ctx.core.record(What::GuardEnd {
                    key: key.clone(),
                    token,
                });
                drop(permit);
                self.record_op("semaphore_drop", &key, start, Outcome::Ok, Detail::None);
            }
            choice => {
                if choice == 1 {
                    // Released only once its validity has run out: known lost.
                    let past = permit.valid_for() + Duration::from_millis(1);
                    self.sleep(past).await;
                }
                let start = self.now();
                self.ctx.core.record(What::GuardEnd {
                    key: key.clone(),
                    token: token.clone(),
                });
                let detail = Detail::Release {
                    token,
                    valid: !permit.valid_for().is_zero(),
                    redlock: false,
                };
                let result = self.maybe_cancel(permit.release()).await;
                let outcome = result
                    .as_ref()
                    .map_or(Outcome::Cancelled, |r| outcome_of(r, |w| *w));
                self.record_op("semaphore_release", &key, start, outcome, detail);
            }
        }
    }
}
