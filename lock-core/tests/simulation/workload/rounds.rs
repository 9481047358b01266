//! The rounds a worker draws: a `RedisLock` round (`acquire`, `try_acquire`, `run`, fenced writes), a
//! `Redlock` round, and an election.

use std::pin::pin;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::future::{Either, select};
use lock_core::{LockGuard, RedisLock, Redlock, RedlockGuard};

use super::super::executor::Instant;
use super::super::history::{Detail, Outcome, What};
use super::worker::{Guard, GuardRef, outcome_of};
use super::{Mode, Worker};

impl Worker {
    fn make_lock(&mut self, key: &str) -> (RedisLock, Option<Duration>) {
        let cfg = &self.ctx.cfg;
        let mut lock = RedisLock::new(self.client(), key).timeout(cfg.ttl);
        if self.rng.u32(0..3) != 0 {
            lock = lock.fencing(true);
        }
        if self.rng.u32(0..6) == 0 {
            lock = lock.max_hold(cfg.ttl.mul_f64(0.5 + 2.0 * self.rng.f64()));
        }
        if cfg.mode == Mode::Replicas {
            lock = lock.replicas(1, cfg.replica_timeout());
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

    /// The call bound an acquisition may spend after its wait: one call (a replicated one, and the
    /// release of an acquisition too few replicas acknowledged).
    fn acquire_bound(&self) -> Duration {
        let cfg = &self.ctx.cfg;
        match cfg.mode {
            Mode::Replicas => cfg.bound * 2 + cfg.replica_timeout(),
            _ => cfg.bound,
        }
    }

    pub(super) async fn lock_round(&mut self, choice: u32) {
        let key = self.pick_key();
        // Now and then a burst of local contenders (issue 13's hand-over in one round trip): siblings
        // of this worker, in its process, acquire the same key at once, so that the process's line
        // for it has waiters and releases hand the lock over to them, also on the fault paths (a
        // holder paused past its lease, a reply lost, a waiter cancelled as the grant arrives).
        if choice <= 3 && self.rng.u32(0..3) == 0 {
            self.spawn_contenders(&key);
        }
        self.lock_round_on(key, choice).await;
    }

    /// Spawns one to three one-round workers of this process acquiring `key`.
    fn spawn_contenders(&mut self, key: &str) {
        if self.now() >= self.ctx.cfg.end() {
            return;
        }
        for _ in 0..self.rng.u32(1..=3) {
            let mut sibling = Worker {
                ctx: self.ctx.clone(),
                process: self.process,
                id: self.id + 100,
                rng: fastrand::Rng::with_seed(self.rng.u64(..)),
                election: None,
                redlocks: Vec::new(),
                primitive: super::Primitive::Mutex,
            };
            let key = key.to_owned();
            let choice = self.rng.u32(0..4);
            self.ctx.core.rt.spawn(Some(self.process), async move {
                sibling.lock_round_on(key, choice).await;
            });
        }
    }

    async fn lock_round_on(&mut self, key: String, choice: u32) {
        let (lock, wait) = self.make_lock(&key);
        let start = self.now();
        let local_start = self.local_now();
        match choice {
            0..=3 => {
                let result = self.maybe_cancel(lock.acquire()).await;
                let took = self.local_now() - local_start;
                let outcome = result
                    .as_ref()
                    .map_or(Outcome::Cancelled, |r| outcome_of(r, |_| true));
                let detail = Detail::Wait {
                    wait,
                    bound: self.acquire_bound(),
                    took,
                };
                self.record_op("acquire", &key, start, outcome, detail);
                if let Some(Ok(guard)) = result {
                    self.use_guard(Guard::Lock(guard)).await;
                }
            }
            4..=6 => {
                let result = self.maybe_cancel(lock.try_acquire()).await;
                let outcome = result
                    .as_ref()
                    .map_or(Outcome::Cancelled, |r| outcome_of(r, Option::is_some));
                self.record_op("try_acquire", &key, start, outcome, Detail::None);
                if let Some(Ok(Some(guard))) = result {
                    self.use_guard(Guard::Lock(guard)).await;
                }
            }
            _ => self.run_body(lock, wait, key).await,
        }
    }

    /// `run`: the body works (observing, writing with its fence) for a drawn time.
    async fn run_body(&mut self, lock: RedisLock, wait: Option<Duration>, key: String) {
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
            // Lost (or dropped) before the body finished: the guard is gone now.
            self.ctx.core.record(What::GuardEnd {
                key: key.clone(),
                token,
            });
        }
        self.record_op(
            "run",
            &key,
            start,
            outcome,
            Detail::Wait {
                wait,
                bound: self.acquire_bound(),
                took,
            },
        );
    }

    pub(super) async fn fenced_set(&self, guard: &LockGuard, resource: &str) {
        let value = format!(
            "p{}w{}v{}",
            self.process,
            self.id,
            self.ctx.values.fetch_add(1, Ordering::Relaxed)
        );
        let start = self.now();
        let result = guard.fenced_set(resource, &value).await;
        let outcome = outcome_of(&result, |written| *written);
        self.record_op(
            "fenced_set",
            guard.key(),
            start,
            outcome,
            Detail::FencedSet {
                token: guard.token().to_owned(),
                value,
            },
        );
    }

    /// The key's true expiry on the server while it holds `token`.
    pub(super) fn server_expiry(&self, key: &str, token: &str) -> Option<Instant> {
        self.ctx.servers[0]
            .holder(key)
            .filter(|(holder, _)| holder == token)
            .map(|(_, expires)| expires)
    }
    /// `Redlock::run`, as [`run_body`](Self::run_body).
    async fn run_redlock(&mut self, lock: Redlock, key: String) {
        let start = self.now();
        let length = self.random_span(self.ctx.cfg.ttl * 2);
        let seed = self.rng.u64(..);
        let cancel_after = self.draw_cancel();
        let token = std::sync::Mutex::new(None);
        let me = &*self;
        let body = async |guard: &RedlockGuard| {
            *token.lock().unwrap() = Some(guard.token().to_owned());
            me.acquired(GuardRef::Redlock(guard));
            me.work_under(GuardRef::Redlock(guard), length, seed).await;
            me.ctx.core.record(What::GuardEnd {
                key: guard.key().to_owned(),
                token: guard.token().to_owned(),
            });
        };
        let result = me.cancellable(cancel_after, lock.run(body)).await;
        let outcome = result
            .as_ref()
            .map_or(Outcome::Cancelled, |r| outcome_of(r, |_| true));
        if let Some(token) = token.into_inner().unwrap() {
            self.ctx.core.record(What::GuardEnd {
                key: key.clone(),
                token,
            });
        }
        self.record_op("redlock_run", &key, start, outcome, Detail::None);
    }
    /// An election: campaign (through a clone of the process's `Election`) for a while, then lead.
    pub(super) async fn lead(&mut self) {
        let election = self.election.clone().expect("elections are on");
        let start = self.now();
        let local_start = self.local_now();
        let patience = self.random_span(self.ctx.cfg.ttl * 4);
        let result = {
            let timer = pin!(self.sleep(patience));
            match select(pin!(election.campaign()), timer).await {
                Either::Left((result, _)) => Some(result),
                Either::Right(_) => None,
            }
        };
        let took = self.local_now() - local_start;
        let outcome = result
            .as_ref()
            .map_or(Outcome::Cancelled, |r| outcome_of(r, |_| true));
        self.record_op(
            "campaign",
            "election",
            start,
            outcome,
            Detail::Wait {
                wait: None,
                bound: self.ctx.cfg.bound,
                took,
            },
        );
        if let Some(Ok(leadership)) = result {
            self.use_guard(Guard::Leader(leadership)).await;
        }
    }
    fn redlock(&mut self, key: &str) -> Redlock {
        if let Some((_, lock)) = self.redlocks.iter().find(|(k, _)| k == key) {
            return lock.clone();
        }
        let cfg = &self.ctx.cfg;
        let lock = Redlock::new(self.ctx.clients[self.process].clone(), key)
            .timeout(cfg.ttl)
            .node_timeout(cfg.bound.min(cfg.ttl / 4))
            .fencing(true);
        self.redlocks.push((key.to_owned(), lock.clone()));
        lock
    }

    pub(super) async fn redlock_round(&mut self, choice: u32) {
        let key = self.pick_key();
        let mut lock = self.redlock(&key);
        let cfg = self.ctx.cfg.clone();
        if self.rng.u32(0..6) == 0 {
            lock = lock.max_hold(cfg.ttl.mul_f64(0.5 + 2.0 * self.rng.f64()));
        }
        let wait = match self.rng.u32(0..3) {
            0 => Some(Duration::ZERO),
            1 => Some(self.random_span(cfg.ttl * 2)),
            _ => Some(cfg.ttl * 3),
        };
        let lock = lock.wait_timeout(wait);
        let start = self.now();
        match choice {
            0..=4 => {
                let result = self.maybe_cancel(lock.acquire()).await;
                let outcome = result
                    .as_ref()
                    .map_or(Outcome::Cancelled, |r| outcome_of(r, |_| true));
                self.record_op("redlock_acquire", &key, start, outcome, Detail::None);
                if let Some(Ok(guard)) = result {
                    self.use_guard(Guard::Redlock(guard)).await;
                }
            }
            5 | 6 => self.run_redlock(lock, key).await,
            _ => {
                let result = self.maybe_cancel(lock.try_acquire()).await;
                let outcome = result
                    .as_ref()
                    .map_or(Outcome::Cancelled, |r| outcome_of(r, Option::is_some));
                self.record_op("redlock_try_acquire", &key, start, outcome, Detail::None);
                if let Some(Ok(Some(guard))) = result {
                    self.use_guard(Guard::Redlock(guard)).await;
                }
            }
        }
    }
}
