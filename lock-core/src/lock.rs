//! [`RedisLock`]: a lock's configuration, and acquisition.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{Either, select};

use crate::backend::{BackendError, LockBackend, ScriptValue, runtime_of};
use crate::error::{LockError, Result};
use crate::guard::LockGuard;
use crate::lease::config::{self, LeaseConfig, ValidatedConfig};
use crate::lease::observe::{self, Primitive};
use crate::lease::{self, Holding, Lease, fenced_reply, lease_settings};
use crate::queue::{Baton, Grant, Handoff, InLine, Offer, Turn};
use crate::time::Moment;
use crate::{keys, script};

// Fair lock: the acquisition in arrival order.
mod fair;

/// A distributed lock on one Redis key: its configuration, shared freely between tasks.
///
/// `RedisLock` holds no ownership state: every acquisition makes its own random token and hands it out in
/// a [`LockGuard`], so two tasks sharing one `RedisLock` never share ownership.
///
/// The Redis key is exactly `key` (no prefix is added) and, while held, its value is exactly the guard's
/// [`token`](LockGuard::token).
///
/// The lock is **not reentrant**: acquiring a key that the same task already holds waits until the wait
/// deadline and fails with [`LockError::Timeout`] (see [`LockGuard`](crate::LockGuard#not-reentrant)).
#[derive(Clone)]
pub struct RedisLock {
    backend: Arc<dyn LockBackend>,
    key: Arc<str>,
    config: LeaseConfig,
    /// Who is acquiring, for elections: tokens become `{owner}:{uuid}` so the holder can be named.
    owner: Option<Arc<str>>,
    /// Grant in arrival order across processes (see [`RedisLock::fair`]).
    fair: bool,
}

impl RedisLock {
    /// The default lock TTL: 30 s.
    pub const DEFAULT_TIMEOUT: Duration = config::DEFAULT_TIMEOUT;
    /// The default acquisition deadline: 30 s.
    pub const DEFAULT_WAIT_TIMEOUT: Duration = config::DEFAULT_WAIT_TIMEOUT;

    /// A lock on `key` through `backend`, with a 30 s TTL and a 30 s acquisition deadline.
    ///
    /// Nothing is checked or sent until the lock is used: an empty key is reported by `acquire` as
    /// [`LockError::InvalidArgument`].
    pub fn new(backend: impl LockBackend, key: impl Into<String>) -> Self {
        Self {
            backend: Arc::new(backend),
            key: Arc::from(key.into()),
            config: LeaseConfig::default(),
            owner: None,
            fair: false,
        }
    }

    lease_settings! {
        guard = LockGuard;
        timeout;
        wait_timeout;
        backoff;
        max_hold;
        /// The fence comes from a counter key beside the lock key, named after it and in its cluster slot:
        /// `key:redlease:fence` when the key has a hash tag (`{user:1}:lock` → `{user:1}:lock:redlease:fence`),
        /// otherwise `key:redlease:fence:` followed by six digits chosen so that the name hashes to the key's
        /// slot (`locks:x` → `locks:x:redlease:fence:{DDDDDD}`, `a{b` → `a{b:redlease:fence:DDDDDD}`,
        /// `a{}b` → `a{}b:redlease:fence:DDDDDD`). The name starts with the key, so an ACL key pattern that
        /// covers the key covers its counter, and distinct keys never share a counter. The counter is never
        /// deleted: one small key per lock name. See [`LockGuard::fenced_set`] for a resource in Redis.
        ///
        /// # What is guaranteed, and under which assumption
        ///
        /// Each fence is `max(counter + 1, server clock in µs)` (the server's `TIME`), computed in the
        /// acquiring script, and becomes the counter. While the counter survives, fences strictly increase.
        /// When it goes back or vanishes, because a failover promoted a replica that missed the last
        /// increments (asynchronous replication, without [`replicas`](Self::replicas)) or a restart lost
        /// the data, the clock overtakes every fence issued before, **provided** that:
        ///
        /// - the server's wall clock (after a failover, the new primary's) is not behind the clock that
        ///   issued the lost fences by more than the time that passed since they were issued: a failover
        ///   takes seconds, so a primary and its replicas kept within milliseconds by NTP are safe, while a
        ///   clock stepped back (by hand, or a replica whose clock is far behind) is not; and
        /// - fewer than 10⁶ fences per second are issued for the key, so the counter never runs ahead of
        ///   the clock.
        ///
        /// Under these assumptions a fence is never issued twice for a key, and
        /// [`fenced_set`](LockGuard::fenced_set) accepts a fence equal to the highest one that wrote only
        /// from the holder that wrote it (a token is kept beside the fence), so that even a repeated fence
        /// never lets two holders write in turn. Fences are large numbers (microseconds since 1970, about
        /// 2⁵¹), exact in a double and in every store's 64-bit integers.
        fencing;
        /// Guards a lock against a failover of the primary that would otherwise lose it (asynchronous
        /// replication).
        ///
        /// - An acquisition that fewer replicas acknowledged is released again, and `acquire`/`try_acquire`
        ///   return [`LockError::NotReplicated`] naming how many did (transient: try again later).
        /// - [`renew`](LockGuard::renew) and [`extend`](LockGuard::extend) return `NotReplicated` when the
        ///   write reached the primary but too few replicas acknowledged it in time; the guard's local
        ///   validity is then not extended, and [`hold`](LockGuard::hold) counts it as a failed renewal. A
        ///   `false` ("no longer ours") is answered without looking at replicas.
        ///
        /// Every write then costs one more round trip, and a failing replica costs `replica_wait` per
        /// write, during which the connection is blocked (`WAIT` blocks it) for other commands multiplexed
        /// on it. The backend's per-call bound is extended by `replica_wait` for these calls. Backends that
        /// cannot wait for replicas fail with a permanent [`LockError::Backend`]; the in-memory backend has
        /// no replicas and so always answers `NotReplicated`.
        ///
        /// `WAIT` makes a failover that promotes an acknowledging replica keep the lock; it is not
        /// consensus: a replica that acknowledged can still lose the write in a later failure, and Sentinel
        /// may promote a replica that did not acknowledge unless `replicas` covers all of them.
        ///
        /// **Clock offset between primary and replicas.** Redis 7 replicates `PX` and `PEXPIRE` as absolute
        /// `PXAT`/`PEXPIREAT`, so a promoted replica expires the lock by its *own* wall clock: a replica whose
        /// clock is 5 s ahead of the primary's frees the lock 5 s early, although `WAIT` confirmed the write.
        /// The guarantee therefore needs the servers' wall clocks to agree within the drift allowance the
        /// guard keeps (1% of the TTL plus 2 ms): keep them synchronised (NTP) and pick a TTL for which 1%
        /// exceeds their worst offset. The same holds behind Sentinel.
        replicas;
        /// On a lock, the metrics' `primitive` label is `lock`, or `fair_lock` for a
        /// [fair](Self::fair) one.
        metrics_name;
    }

    /// Grants the lock in the order acquirers started waiting, across processes: a fair mutex.
    /// Default: `false`.
    ///
    /// The lock key stays exactly the key, holding exactly the token, so a fair lock and a plain lock on
    /// one key still exclude each other (a plain lock does not queue, so it can overtake fair waiters).
    /// Waiters queue in two sorted sets beside the key, in its cluster slot: `key:redlease:fair-queue…`
    /// (tokens scored by their ticket, which strictly increases while anyone waits) and
    /// `key:redlease:fair-beats…` (the same tokens scored by when their place expires, in Unix
    /// milliseconds on the server's clock). A waiter renews its place at least every third of the
    /// [`timeout`](Self::timeout) while it waits; one that dies loses its place within one `timeout`,
    /// one that gives up (its wait timed out, or its future was dropped) leaves at once (a dropped one
    /// in the background, where the backend can spawn). Both sets vanish when nobody waits.
    ///
    /// [`try_acquire`](Self::try_acquire) succeeds only when the lock is free and nobody waits. A waiter
    /// is woken by release signals where the backend blocks on them, and otherwise polls with the
    /// [`backoff`](Self::backoff), at most a third of the `timeout` apart.
    ///
    /// Not combined with [`replicas`](Self::replicas): acquiring a fair lock that asks for replicas
    /// is [`LockError::InvalidArgument`] naming `replicas`, and nothing is sent.
    pub fn fair(mut self, yes: bool) -> Self {
        self.fair = yes;
        self
    }

    /// Whether the lock is granted in arrival order ([`fair`](Self::fair)).
    pub fn get_fair(&self) -> bool {
        self.fair
    }

    pub(crate) fn owner(mut self, owner: Arc<str>) -> Self {
        self.owner = Some(owner);
        self
    }

    /// The lock key, exactly as given.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The backend this lock talks to.
    pub fn backend(&self) -> &Arc<dyn LockBackend> {
        &self.backend
    }

    /// The configured TTL.
    #[deprecated(note = "use get_timeout")]
    pub fn ttl(&self) -> Duration {
        self.config.timeout
    }

    /// Acquires the lock, retrying with backoff until the wait deadline.
    ///
    /// Returns [`LockError::Timeout`] when the deadline passes, and a backend failure as soon as it
    /// happens (an outage is never hidden behind retries): also the failure of a helper call made while
    /// waiting (a blocking wait for a release signal, a check of the holder), so that a wait takes at
    /// most the wait timeout plus one call bound. Dropping the returned future while a request
    /// is in flight releases whatever that request may have acquired, in the background where the backend
    /// can spawn, otherwise when the TTL runs out.
    ///
    /// The wait deadline bounds the time to fail too: a call still unanswered at the deadline (a frozen
    /// or unreachable server) is given up 100 ms after it, whatever the backend's call bound, and the
    /// acquisition it may have made is released as for a dropped future. A zero wait makes exactly
    /// one attempt, bounded by the backend's call bound.
    ///
    /// The lock is not reentrant: a task that holds it and acquires it again waits for itself until
    /// the deadline (see [`LockGuard`](crate::LockGuard#not-reentrant)).
    pub async fn acquire(&self) -> Result<LockGuard> {
        let plan = self.validate()?;
        let runtime = runtime_of(&*self.backend);
        let wait = plan.config.wait_timeout;
        let bounded = runtime.within_wait(&self.key, wait, self.acquire_planned(&plan));
        observe::acquiring(&plan.config.observe, &self.key, runtime, bounded).await
    }

    /// [`acquire`](Self::acquire) after validation, neither observed nor bounded by the caller's wait:
    /// an election observes and bounds its whole campaign instead.
    pub(crate) async fn acquire_planned(&self, plan: &Plan) -> Result<LockGuard> {
        if self.fair {
            return self.acquire_fair(plan).await;
        }
        let runtime = runtime_of(&*self.backend);
        let started = runtime.now();
        // A deadline too far away to represent is no deadline.
        let deadline = plan
            .config
            .wait_timeout
            .and_then(|wait| started.checked_add(wait));
        let token = self.new_token();
        let (baton, grant) = self.wait_for_turn(started, deadline, plan).await?;
        if let Some(grant) = grant {
            return Ok(self.handed_over(grant, plan, baton));
        }
        let mut attempt: u32 = 0;
        loop {
            if let Some(mut guard) = self.attempt(&token, plan).await? {
                if let Some(baton) = baton {
                    // Just granted, so valid until a moment ahead; were it not, the line must not wait.
                    baton.holding(&token, guard.valid_until().unwrap_or_else(|| runtime.now()));
                    guard.keep_baton(baton);
                }
                return Ok(guard);
            }
            let now = runtime.now();
            let left = match deadline {
                Some(deadline) if now >= deadline => {
                    return Err(LockError::Timeout {
                        key: self.key.to_string(),
                        waited: now - started,
                    });
                }
                Some(deadline) => deadline - now,
                None => Duration::MAX,
            };
            // Woken by the holder's release where the backend can block on the signal list; capped,
            // because an expiry signals nothing and a wake-up can be missed.
            let cap = plan.config.backoff.max().min(left);
            // Beyond the backend's blocking waits (`Runtime::max_blocking_waits`), poll.
            let permit = match self.backend.capabilities().blocking_waits {
                true => runtime.blocking_wait(),
                false => None,
            };
            if let Some(_permit) = permit {
                // A failed wait ends the acquisition with its error: swallowing it would spend one
                // call bound silently, then the next attempt another.
                self.backend
                    .wait_for_release(&plan.signal, cap)
                    .await
                    .map_err(|source| LockError::backend_failed(&self.key, source))?;
            } else {
                let delay = plan.config.backoff.delay(attempt).min(cap);
                tracing::trace!(key = %self.key, attempt, ?delay, "lock busy, backing off");
                runtime.sleep(delay).await;
            }
            attempt = attempt.saturating_add(1);
        }
    }

    /// Waits for this task's turn among the local tasks contending for the key through this backend, if
    /// its runtime keeps waiting lines. No baton when there is no line to wait in, or when the task
    /// ahead holds the lock past its lease (a hung holder must not block others: Redis decides). With
    /// the baton, a [`Grant`] when the holder handed the lock over to this task on release.
    async fn wait_for_turn(
        &self,
        started: Moment,
        deadline: Option<Moment>,
        plan: &Plan,
    ) -> Result<(Option<Baton>, Option<Grant>)> {
        let runtime = runtime_of(&*self.backend);
        let Some(queues) = runtime.lines() else {
            return Ok((None, None));
        };
        // Zero wait: exactly one attempt, straight away.
        if deadline.is_some_and(|d| d <= started) {
            return Ok((None, None));
        }
        let (ticket, receiver) = match queues.join_offering(&self.key, || self.offer(plan)) {
            Turn::Now => {
                return Ok((Some(Baton::new(queues.clone(), self.key.clone())), None));
            }
            Turn::Later { ticket, receiver } => (ticket, receiver),
        };
        let mut in_line = InLine {
            lines: queues.clone(),
            key: self.key.clone(),
            ticket,
            receiver,
        };
        loop {
            let now = runtime.now();
            let mut wait = LOCAL_WAIT_RECHECK;
            if let Some(deadline) = deadline {
                if now >= deadline {
                    return Err(LockError::Timeout {
                        key: self.key.to_string(),
                        waited: now - started,
                    });
                }
                wait = wait.min(deadline - now);
            }
            let holder = queues.holder(&self.key);
            if let Some((_, until)) = &holder {
                if now >= *until {
                    return Ok((None, None));
                }
                wait = wait.min(*until - now);
            }
            match select(&mut in_line.receiver, runtime.sleep(wait)).await {
                Either::Left((Ok(Handoff::Baton), _)) => {
                    return Ok((Some(in_line.into_baton()), None));
                }
                Either::Left((Ok(Handoff::Granted(grant)), _)) => {
                    return Ok((Some(in_line.into_baton()), Some(grant)));
                }
                // The line was dropped (cannot happen while we are in it); go ahead on our own.
                Either::Left((Err(_), _)) => return Ok((None, None)),
                Either::Right(_) => {}
            }
            // The holder may have lost the lock without noticing (expired, deleted, a server that
            // lost its data): the first in line checks, so that a silent loss delays us one recheck.
            if let Some((token, _)) = holder
                && queues.is_first(&self.key, ticket)
                && !self.still_held_by(&token).await?
            {
                return Ok((None, None));
            }
        }
    }

    /// What a releasing holder of this process may grant this acquisition in one round trip
    /// ([`script::HAND_OVER`]): a fresh token, with this lock's TTL and fencing. `None` when the lock
    /// waits for [`replicas`](Self::replicas) (a grant cannot be followed by `WAIT` on the waiter's
    /// behalf): such a waiter takes the baton and acquires by itself, as before.
    fn offer(&self, plan: &Plan) -> Option<std::sync::Arc<Offer>> {
        if plan.config.replica_ack.is_some() {
            return None;
        }
        Some(Arc::new(Offer {
            token: self.new_token(),
            ttl: plan.config.ttl,
            ttl_arg: plan.config.ttl_arg.clone(),
            fence_counter: plan.config.fence_counter.clone(),
            signal: plan.signal.clone(),
        }))
    }

    /// The guard of a lock the holder before us handed over: valid from the send of the hand-over
    /// script, with our own TTL, as if our own acquisition had been sent then.
    fn handed_over(&self, grant: Grant, plan: &Plan, baton: Option<Baton>) -> LockGuard {
        plan.config.observe.attempted();
        let Grant {
            lease,
            fence,
            sent_at,
        } = grant;
        let runtime = runtime_of(&*self.backend).clone();
        let holding = Holding::new(
            &plan.config,
            self.key.clone(),
            lease.token.clone(),
            fence,
            sent_at,
            runtime,
        );
        let mut guard = LockGuard::new(lease, holding, None);
        if let Some(baton) = baton {
            // `Next::grant` told the line already; the guard keeps the baton for the next one.
            guard.keep_baton(baton);
        }
        guard
    }

    /// Whether the key still holds `token`. A failed check ends the wait with its error, rather than
    /// spending a call bound silently before the attempt that follows spends another.
    async fn still_held_by(&self, token: &str) -> Result<bool> {
        let reply = self
            .backend
            .eval_script(&script::READ, &[&self.key], &[])
            .await
            .map_err(|source| LockError::backend_failed(&self.key, source))?;
        Ok(matches!(reply, ScriptValue::Str(value) if value == token))
    }

    /// One attempt: `Ok(None)` when the lock is held by someone else (on a [fair](Self::fair) lock, also
    /// when someone is waiting).
    ///
    /// Bounded by the wait deadline as [`acquire`](Self::acquire) is: with a `wait_timeout`, an
    /// attempt still unanswered past it is given up with [`LockError::Timeout`].
    pub async fn try_acquire(&self) -> Result<Option<LockGuard>> {
        let plan = self.validate()?;
        let attempt = async {
            if self.fair {
                return self.try_acquire_fair(&plan).await;
            }
            self.attempt(&self.new_token(), &plan).await
        };
        runtime_of(&*self.backend)
            .within_wait(&self.key, plan.config.wait_timeout, attempt)
            .await
    }

    /// Acquires the lock, runs `body` while holding it (renewing it as [`LockGuard::hold`] does), then
    /// releases it.
    ///
    /// - [`LockError::Timeout`] when the lock was not acquired in time: `body` never runs.
    /// - [`LockError::Lost`] as soon as the lock is lost while `body` runs (a renewal found another
    ///   holder, renewals failed until the lock's validity ran out, or `max_hold` passed): `body` is
    ///   dropped at that point.
    /// - `Ok(value)` when the release confirmed the lock was still ours.
    /// - [`LockError::Lost`] when the release found it had expired or been taken over: exclusion was not
    ///   guaranteed, so the value is not handed out.
    /// - A transport error during the release, or a release whose outcome cannot be told
    ///   ([`LockError::InDoubt`]: the key was gone while the lease was still valid, as after a re-sent
    ///   release of our own), still returns `Ok(value)` and logs a warning naming the key: the work is
    ///   done and the TTL frees the key, so a release failure never hides a finished result, and a
    ///   caller that retries on `Lost` never re-runs work that succeeded.
    ///   Callers who need the release outcome use [`acquire`](Self::acquire) and
    ///   [`LockGuard::release`].
    pub async fn run<F, T>(&self, body: F) -> Result<T>
    where
        F: AsyncFnOnce(&LockGuard) -> T,
    {
        lease::run(self.acquire().await?, body).await
    }

    pub(crate) fn validate(&self) -> Result<Plan> {
        let config = self.config.validate(&self.key)?;
        // An owner names an election's candidate: only `Election` sets one.
        let primitive = match (self.owner.is_some(), self.fair) {
            (true, _) => Primitive::Election,
            (false, true) => Primitive::FairLock,
            (false, false) => Primitive::Lock,
        };
        let config = ValidatedConfig {
            observe: config.observe.for_primitive(primitive),
            ..config
        };
        Ok(Plan {
            signal: Arc::from(keys::release_signal(&self.key)?),
            config,
        })
    }

    async fn attempt(&self, token: &Arc<str>, plan: &Plan) -> Result<Option<LockGuard>> {
        plan.config.observe.attempted();
        let ttl = plan.config.ttl;
        // Armed before sending: if this future is dropped mid-request, the request may still reach the
        // server, so the lease's Drop releases the token in the background.
        let pending = Lease::new(
            self.backend.clone(),
            self.key.clone(),
            plan.signal.clone(),
            token.clone(),
            ttl,
        );
        let sent_at = runtime_of(&*self.backend).now();
        let mut acked = None;
        let granted = match (&plan.config.fence_counter, &plan.config.replica_ack) {
            (None, None) => self
                .backend
                .set_nx(&self.key, token, ttl)
                .await
                .map(|ok| ok.then_some(None)),
            (Some(counter), None) => self
                .backend
                .eval_script(
                    &script::FENCED_ACQUIRE,
                    &[&self.key, counter],
                    &[token, &plan.config.ttl_arg],
                )
                .await
                .and_then(|reply| fenced_reply(&reply).map(|fence| fence.map(Some))),
            // With replica acknowledgement, acquire by script so that WAIT can follow on its connection.
            (None, Some(ack)) => ack
                .eval(
                    &*self.backend,
                    &script::ACQUIRE,
                    &[&self.key],
                    &[token, &plan.config.ttl_arg],
                )
                .await
                .and_then(|(reply, n)| {
                    acked = Some(n);
                    match reply {
                        ScriptValue::Int(1) => Ok(Some(None)),
                        ScriptValue::Int(0) => Ok(None),
                        other => Err(BackendError::permanent(
                            "redlease",
                            format!("unexpected reply from the acquire script: {other:?}"),
                        )),
                    }
                }),
            (Some(counter), Some(ack)) => ack
                .eval(
                    &*self.backend,
                    &script::FENCED_ACQUIRE,
                    &[&self.key, counter],
                    &[token, &plan.config.ttl_arg],
                )
                .await
                .and_then(|(reply, n)| {
                    acked = Some(n);
                    fenced_reply(&reply).map(|fence| fence.map(Some))
                }),
        };
        if let (Ok(Some(_)), Some(ack), Some(acked)) = (&granted, &plan.config.replica_ack, acked)
            && let Err(not_replicated) = ack.check(&self.key, acked)
        {
            // Not safe from a failover: give it back now rather than hold a lock that may vanish.
            // Should this release fail, `pending` releases it in the background when dropped.
            let released = pending.release().await;
            if released.is_ok() {
                pending.disarm();
            }
            return Err(not_replicated);
        }
        match granted {
            Ok(Some(fence)) => {
                let runtime = runtime_of(&*self.backend).clone();
                let holding = Holding::new(
                    &plan.config,
                    self.key.clone(),
                    token.clone(),
                    fence,
                    sent_at,
                    runtime,
                );
                Ok(Some(LockGuard::new(
                    pending,
                    holding,
                    plan.config.replica_ack,
                )))
            }
            Ok(None) => {
                pending.disarm();
                Ok(None)
            }
            // The request may have been applied before it failed; `pending` releases it on drop.
            Err(source) => Err(LockError::backend_failed(&self.key, source)),
        }
    }

    fn new_token(&self) -> Arc<str> {
        lease::new_token(self.owner.as_deref())
    }
}

/// How often a task waiting in the local line re-checks its deadline and the holder's lease.
const LOCAL_WAIT_RECHECK: Duration = Duration::from_millis(100);

/// What `validate` worked out once per acquisition, so retries redo none of it.
pub(crate) struct Plan {
    /// The list a release pushes to (see [`LockBackend::wait_for_release`]).
    signal: Arc<str>,
    pub(crate) config: ValidatedConfig,
}

impl fmt::Debug for RedisLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLock")
            .field("key", &self.key)
            .field("timeout", &self.config.timeout)
            .field("wait_timeout", &self.config.wait_timeout)
            .field("backoff", &self.config.backoff)
            .field("max_hold", &self.config.max_hold)
            .field("fencing", &self.config.fencing)
            .field("replicas", &self.config.replicas)
            .field("fair", &self.fair)
            .field("backend", &self.backend)
            .finish()
    }
}
