//! The fair path of [`RedisLock`]: acquisition in arrival order, with each waiter's place held in Redis
//! (see [`RedisLock::fair`] and [`FAIR_ACQUIRE`](script::FAIR_ACQUIRE)).
//!
//! Fair waiters do not use the in-process line: every waiter must hold its place in Redis from the
//! moment it starts waiting, or a waiter of another process could overtake it.

use std::sync::Arc;
use std::time::Duration;

use super::{Plan, RedisLock};
use crate::backend::{LockBackend, runtime_of};
use crate::error::{LockError, Result};
use crate::guard::LockGuard;
use crate::lease::{Holding, Lease, Until, fenced_reply, retry_in_background};
use crate::{keys, script};

/// How long a wake-up pushed by a fair script lingers when nobody takes it, as a release's does.
const SIGNAL_LINGER_MS: &str = "500";

/// The companion keys of a fair lock's queue.
struct FairKeys {
    queue: Arc<str>,
    beats: Arc<str>,
}

impl FairKeys {
    fn of(key: &str) -> Result<Self> {
        Ok(Self {
            queue: Arc::from(keys::fair_queue(key)?),
            beats: Arc::from(keys::fair_beats(key)?),
        })
    }
}

/// A waiter's place in the queue: left in the background if the acquisition ends without a grant and
/// without leaving (an error, or its future dropped).
struct Place {
    backend: Arc<dyn LockBackend>,
    key: Arc<str>,
    signal: Arc<str>,
    keys: FairKeys,
    token: Arc<str>,
    linger: &'static str,
    /// The TTL: the place expires by then anyway, so a background leave goes on no longer.
    horizon: Duration,
    /// A joining request may still be in flight, and could land after a first leave.
    in_flight: bool,
    armed: bool,
}

impl Place {
    async fn leave(&self) -> std::result::Result<(), crate::BackendError> {
        leave(
            &*self.backend,
            &self.key,
            &self.keys,
            &self.signal,
            &self.token,
            self.linger,
        )
        .await
    }
}

async fn leave(
    backend: &dyn LockBackend,
    key: &str,
    keys: &FairKeys,
    signal: &str,
    token: &str,
    linger: &str,
) -> std::result::Result<(), crate::BackendError> {
    backend
        .eval_script(
            &script::FAIR_LEAVE,
            &[key, &keys.queue, &keys.beats, signal],
            &[token, linger],
        )
        .await
        .map(drop)
}

impl Drop for Place {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let until = match self.in_flight {
            true => Until::Horizon,
            false => Until::Answered,
        };
        let (backend, key, signal, token, linger) = (
            self.backend.clone(),
            self.key.clone(),
            self.signal.clone(),
            self.token.clone(),
            self.linger,
        );
        let (queue, beats) = (self.keys.queue.clone(), self.keys.beats.clone());
        retry_in_background(
            self.backend.clone(),
            self.key.clone(),
            self.horizon,
            "a fair waiter gave up",
            until,
            move || {
                let (backend, key, signal, token) =
                    (backend.clone(), key.clone(), signal.clone(), token.clone());
                let keys = FairKeys {
                    queue: queue.clone(),
                    beats: beats.clone(),
                };
                Box::pin(
                    async move { leave(&*backend, &key, &keys, &signal, &token, linger).await },
                )
            },
        );
    }
}

impl RedisLock {
    /// `acquire` on a fair lock: join the queue, keep the place alive, and take the lock when first.
    pub(super) async fn acquire_fair(&self, plan: &Plan) -> Result<LockGuard> {
        self.check_fair(plan)?;
        let keys = FairKeys::of(&self.key)?;
        let runtime = runtime_of(&*self.backend);
        let started = runtime.now();
        let deadline = plan
            .config
            .wait_timeout
            .and_then(|wait| started.checked_add(wait));
        let token = self.new_token();
        let timeout = |now| LockError::Timeout {
            key: self.key.to_string(),
            waited: now - started,
        };
        // Zero wait: exactly one attempt, without joining the queue.
        if deadline.is_some_and(|d| d <= started) {
            return match self.fair_attempt(&token, plan, &keys, false).await? {
                Some(guard) => Ok(guard),
                None => Err(timeout(runtime.now())),
            };
        }
        let linger = self.signal_linger();
        let mut place = Place {
            backend: self.backend.clone(),
            key: self.key.clone(),
            signal: plan.signal.clone(),
            keys: FairKeys {
                queue: keys.queue.clone(),
                beats: keys.beats.clone(),
            },
            token: token.clone(),
            linger,
            horizon: plan.config.ttl,
            in_flight: false,
            armed: true,
        };
        // Each wait is short enough that the heartbeat (one TTL) never lapses for a live waiter.
        let heartbeat = plan.config.ttl / 3;
        let mut attempt: u32 = 0;
        loop {
            place.in_flight = true;
            let granted = self.fair_attempt(&token, plan, &keys, true).await?;
            place.in_flight = false;
            if let Some(guard) = granted {
                // Granting took us out of the queue.
                place.armed = false;
                return Ok(guard);
            }
            let now = runtime.now();
            let left = match deadline {
                Some(deadline) if now >= deadline => {
                    // Leave before reporting, so that nobody waits behind a place nobody holds; should
                    // the leave fail, `place` retries it in the background when dropped.
                    if place.leave().await.is_ok() {
                        place.armed = false;
                    }
                    return Err(timeout(now));
                }
                Some(deadline) => deadline - now,
                None => Duration::MAX,
            };
            let cap = plan.config.backoff.max().min(heartbeat).min(left);
            // Beyond the backend's blocking waits (`Runtime::max_blocking_waits`), poll.
            let permit = match self.backend.capabilities().blocking_waits {
                true => runtime.blocking_wait(),
                false => None,
            };
            if let Some(_permit) = permit {
                self.backend
                    .wait_for_release(&plan.signal, cap)
                    .await
                    .map_err(|source| LockError::backend_failed(&self.key, source))?;
            } else {
                let delay = plan.config.backoff.delay(attempt).min(cap);
                tracing::trace!(key = %self.key, attempt, ?delay, "fair lock busy, backing off");
                runtime.sleep(delay).await;
            }
            attempt = attempt.saturating_add(1);
        }
    }

    /// `try_acquire` on a fair lock: granted only when the lock is free and nobody waits.
    pub(super) async fn try_acquire_fair(&self, plan: &Plan) -> Result<Option<LockGuard>> {
        self.check_fair(plan)?;
        let keys = FairKeys::of(&self.key)?;
        self.fair_attempt(&self.new_token(), plan, &keys, false)
            .await
    }

    fn check_fair(&self, plan: &Plan) -> Result<()> {
        match plan.config.replica_ack {
            Some(_) => Err(LockError::invalid(
                "replicas",
                "is not supported on a fair lock",
            )),
            None => Ok(()),
        }
    }

    /// How long a wake-up pushed by the fair scripts lingers: none where the backend sends no
    /// release signals (a cluster, or a store whose waiters poll).
    fn signal_linger(&self) -> &'static str {
        match self.backend.capabilities().release_signals {
            true => SIGNAL_LINGER_MS,
            false => "0",
        }
    }

    /// One [`FAIR_ACQUIRE`](script::FAIR_ACQUIRE): `Ok(None)` when not granted (queued, with `join`).
    async fn fair_attempt(
        &self,
        token: &Arc<str>,
        plan: &Plan,
        keys: &FairKeys,
        join: bool,
    ) -> Result<Option<LockGuard>> {
        plan.config.observe.attempted();
        // Armed before sending, as in `attempt`: a request of a dropped future may still land.
        let pending = Lease::new(
            self.backend.clone(),
            self.key.clone(),
            plan.signal.clone(),
            token.clone(),
            plan.config.ttl,
        );
        let mut script_keys: Vec<&str> = vec![&self.key, &keys.queue, &keys.beats, &plan.signal];
        if let Some(counter) = &plan.config.fence_counter {
            script_keys.push(counter);
        }
        let join = if join { "1" } else { "0" };
        let sent_at = runtime_of(&*self.backend).now();
        let reply = self
            .backend
            .eval_script(
                &script::FAIR_ACQUIRE,
                &script_keys,
                &[token, &plan.config.ttl_arg, join, self.signal_linger()],
            )
            .await
            .and_then(|reply| fenced_reply(&reply));
        match reply {
            Ok(Some(fence)) => {
                let fence = plan.config.fence_counter.as_ref().map(|_| fence);
                let holding = Holding::new(
                    &plan.config,
                    self.key.clone(),
                    token.clone(),
                    fence,
                    sent_at,
                    runtime_of(&*self.backend).clone(),
                );
                Ok(Some(LockGuard::new(pending, holding, None)))
            }
            Ok(None) => {
                pending.disarm();
                Ok(None)
            }
            // The request may have been applied before it failed; `pending` releases it on drop.
            Err(source) => Err(LockError::backend_failed(&self.key, source)),
        }
    }
}
