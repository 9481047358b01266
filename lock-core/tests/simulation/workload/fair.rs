//! A fair-lock round: `acquire` (waits of every length, dropped at random), `try_acquire`, `run`, and a
//! waiter dropped while it waits, on one of the run's fair keys (`RedisLock::fair(true)`). A granted
//! guard then lives as a mutex's does (`use_guard`: renew, extend, is_owner, fenced writes, hold,
//! release, drop), so the mutex's checks (two holders, beliefs backed, fences, orphans, stalls) cover
//! the fair keys, and `history/fair.rs` adds the queue's (grants in ticket order, places that stop
//! blocking).
//!
//! Fair locks refuse `replicas` (`InvalidArgument`), so the `Replicas` mode, whose failovers keep only
//! what locks waited for, runs no fair rounds (see `Config::draw`).

use std::time::Duration;

use lock_core::{LockGuard, RedisLock};

use super::super::history::{Detail, Outcome, What};
use super::worker::{Guard, GuardRef, outcome_of};
use super::{Primitive, Worker};

impl Worker {
    /// A fair lock on one of the run's fair keys, with drawn settings and wait.
    fn make_fair_lock(&mut self) -> (RedisLock, Option<Duration>) {
        let cfg = &self.ctx.cfg;
        let key = self.rng.choice(&cfg.fair).unwrap().clone();
        let mut lock = RedisLock::new(self.client(), key)
            .timeout(cfg.ttl)
            .fair(true);
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

    /// The calls a fair acquisition may spend past its wait: its last attempt, and the leave it sends
    /// before reporting the timeout.
    fn fair_bound(&self) -> Duration {
        self.ctx.cfg.bound * 2
    }

    pub(super) async fn fair_round(&mut self, choice: u32) {
        self.primitive = Primitive::Fair;
        let (lock, wait) = self.make_fair_lock();
        let key = lock.key().to_owned();
        let start = self.now();
        let local_start = self.local_now();
        match choice {
            0..=3 | 8 | 9 => {
                // 8, 9: a waiter dropped while it waits, its place to be left at once.
                let cancel_after = match choice {
                    8 | 9 => Some(self.random_span(self.ctx.cfg.ttl * 2)),
                    _ => self.draw_cancel(),
                };
                let result = self.cancellable(cancel_after, lock.acquire()).await;
                let took = self.local_now() - local_start;
                let outcome = result
                    .as_ref()
                    .map_or(Outcome::Cancelled, |r| outcome_of(r, |_| true));
                let detail = Detail::Wait {
                    wait,
                    bound: self.fair_bound(),
                    took,
                };
                self.record_op("fair_acquire", &key, start, outcome, detail);
                if let Some(Ok(guard)) = result {
                    self.use_guard(Guard::Lock(guard)).await;
                }
            }
            4 | 5 => {
                let result = self.maybe_cancel(lock.try_acquire()).await;
                let outcome = result
                    .as_ref()
                    .map_or(Outcome::Cancelled, |r| outcome_of(r, Option::is_some));
                self.record_op("fair_try_acquire", &key, start, outcome, Detail::None);
                if let Some(Ok(Some(guard))) = result {
                    self.use_guard(Guard::Lock(guard)).await;
                }
            }
            _ => self.fair_run(lock, wait, key).await,
        }
    }

    /// `run` on a fair lock: the body works (observing, writing with its fence) for a drawn time.
    async fn fair_run(&mut self, lock: RedisLock, wait: Option<Duration>, key: String) {
        let start = self.now();
        let local_start = self.local_now();
        let length = self.random_span(self.ctx.cfg.ttl * 2);
        let seed = self.rng.u64(..);
        let cancel_after = self.draw_cancel();
        let token = std::sync::Mutex::new(None);
        let me = &*self;
        let body = async |guard: &LockGuard| {
            *token.lock().unwrap() = Some(guard.token().to_owned());
            me.acquired(GuardRef::Lock(guard));
            me.work_under(GuardRef::Lock(guard), length, seed).await;
            // The release follows: no belief past this point.
            me.ctx.core.record(What::GuardEnd {
                key: guard.key().to_owned(),
                token: guard.token().to_owned(),
            });
        };
        let result = me.cancellable(cancel_after, lock.run(body)).await;
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
        let detail = Detail::Wait {
            wait,
            bound: self.fair_bound(),
            took,
        };
        self.record_op("fair_run", &key, start, outcome, detail);
    }
}
