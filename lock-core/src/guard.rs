//! [`LockGuard`]: proof of one acquisition, and everything a holder can do with it.

use std::fmt;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{BoxFuture, Either, select};

use crate::backend::{BackendError, LockBackend, ScriptValue};
use crate::error::{LockError, Result};
use crate::keys;
use crate::queue::Baton;
use crate::replication::ReplicaAck;
use crate::script::{self, Script};
use crate::time::{Moment, to_millis, validity_deadline};

/// One acquisition of a [`RedisLock`](crate::RedisLock): its token, and the operations that need it.
///
/// Every operation checks the token atomically in Lua, so a guard whose lock expired and was taken by
/// someone else can never extend, renew or release the new holder's lock: it answers `Ok(false)`.
///
/// Dropping a guard without [`release`](Self::release) never blocks: where the backend can spawn (both
/// Redis adapters can, on tokio), the lock is released in the background; otherwise its TTL frees it.
pub struct LockGuard {
    lease: Lease,
    ttl: Duration,
    ttl_arg: String,
    fence: Option<u64>,
    acquired_at: Moment,
    max_hold: Option<Duration>,
    validity: Mutex<Validity>,
    replica_ack: Option<ReplicaAck>,
    /// This process's turn for the key, handed to the next local waiter when the guard goes. Declared
    /// after `lease` so that a dropped guard starts its background release before the baton moves.
    baton: Option<Baton>,
}

/// What an acquisition granted, as the guard needs it.
pub(crate) struct Grant {
    pub(crate) ttl: Duration,
    pub(crate) ttl_ms: u64,
    /// When the granting request was sent: validity is measured from here, not from the reply.
    pub(crate) sent_at: Moment,
    pub(crate) fence: Option<u64>,
    pub(crate) max_hold: Option<Duration>,
    /// [`RedisLock::replicas`](crate::RedisLock::replicas), for `renew` and `extend`.
    pub(crate) replica_ack: Option<ReplicaAck>,
}

impl LockGuard {
    pub(crate) fn new(mut lease: Lease, grant: Grant) -> Self {
        // Granted: no acquiring request of this token is in flight any more.
        lease.in_flight = false;
        Self {
            lease,
            ttl: grant.ttl,
            ttl_arg: grant.ttl_ms.to_string(),
            fence: grant.fence,
            acquired_at: grant.sent_at,
            max_hold: grant.max_hold,
            validity: Mutex::new(Validity {
                until: validity_deadline(grant.sent_at, grant.ttl),
                sent_at: grant.sent_at,
                server_expiry_ms: None,
            }),
            replica_ack: grant.replica_ack,
            baton: None,
        }
    }

    pub(crate) fn keep_baton(&mut self, baton: Baton) {
        self.baton = Some(baton);
    }

    /// This acquisition's fencing token, when the lock has [`fencing`](crate::RedisLock::fencing) on.
    ///
    /// It is larger than every fence issued before for this key. Pass it along with every write to the
    /// protected resource and let the resource refuse a fence lower than the highest it has seen: then a
    /// holder that paused past its TTL cannot overwrite the work of the holder after it. For a resource in
    /// Redis, [`fenced_set`](Self::fenced_set) does exactly that.
    ///
    /// A fence is the server's clock in microseconds, or the fence before it plus one if that is larger,
    /// so it is never issued twice for a key: not after the lock expired or was deleted, not after a
    /// restart that lost the counter, and not after a failover to a replica that missed the last
    /// fences, as long as the server's wall clock (the new primary's, after a failover) did not go back
    /// by more than the time since those fences were issued, and fewer than a million fences per second
    /// are issued for the key. See [`RedisLock::fencing`](crate::RedisLock::fencing).
    pub fn fence(&self) -> Option<u64> {
        self.fence
    }

    /// Sets the string key `resource` to `value` only if this guard's fence is greater than the highest
    /// fence that ever wrote `resource`, or equal to it and written by this guard; atomically.
    /// `Ok(false)` when another holder has written with a fence at least as large.
    ///
    /// The highest fence is kept, with the token of the guard that wrote it, as `"<fence>:<token>"`, in
    /// a companion key named after `resource` and in its cluster slot: `resource:redlease:fence-mark`
    /// when `resource` has a hash tag, otherwise `resource:redlease:fence-mark:` followed by six digits
    /// chosen to land in its slot (for `locks:res`, `locks:res:redlease:fence-mark:{DDDDDD}`), so an ACL
    /// key pattern that covers `resource` covers its mark; `resource` itself stays a plain string,
    /// readable with `GET`. So a holder may write again with its own fence, while a fence that
    /// repeated (see [`fence`](Self::fence) for when it cannot) never lets a second holder overwrite
    /// the first. A guard without a fence is [`LockError::InvalidArgument`] and nothing is sent.
    ///
    /// A transient failure (a timeout, a dropped connection) is [`LockError::InDoubt`]: the write may
    /// have been applied, or may still land later; it is never reported as "not written". Retrying with
    /// the same guard is safe (an equal fence from the same holder is accepted), and a later write by a
    /// newer holder always wins over a late one of ours, whose fence is smaller.
    pub async fn fenced_set(&self, resource: &str, value: &str) -> Result<bool> {
        let Some(fence) = self.fence else {
            return Err(LockError::invalid(
                "fence",
                "fenced_set needs a lock with fencing(true)",
            ));
        };
        if resource.is_empty() {
            return Err(LockError::invalid("resource", "must not be empty"));
        }
        let mark = keys::fence_mark(resource)?;
        let reply = self
            .lease
            .backend
            .eval_script(
                &script::FENCED_SET,
                &[resource, &mark],
                &[value, &fence.to_string(), &self.lease.token],
            )
            .await
            .map_err(|source| {
                // A request that failed in transit (a timeout, a dropped connection) may have been
                // applied, or may still be: never report it as "not written".
                if source.is_transient() {
                    LockError::InDoubt {
                        key: self.lease.key.to_string(),
                        operation: "fenced_set",
                        reason: format!("the write to {resource} may have been applied"),
                        source: Some(source),
                    }
                } else {
                    LockError::backend_failed(&self.lease.key, source)
                }
            })?;
        Ok(reply.as_int() == Some(1))
    }

    /// Runs `work` while keeping the lock: renews it (as [`renew`](Self::renew) does) at
    /// about a third of the TTL, with jitter, in the same future as `work`, so no task is spawned and any
    /// executor works.
    ///
    /// Returns `Ok(output)` when `work` finishes first. As soon as the lock is lost, `work` is dropped and
    /// the result is [`LockError::Lost`] naming the key and the reason: a renewal found another holder or
    /// no key; renewals kept failing until the locally tracked validity ran out (a renewal still
    /// unanswered at that moment counts as failed); or the lock's `max_hold` passed. The guard stays
    /// usable afterwards (to release it, say).
    pub async fn hold<F: Future>(&self, work: F) -> Result<F::Output> {
        hold_renewed(self, work).await
    }

    /// This acquisition's token: the exact value of the Redis key while the lock is ours.
    pub fn token(&self) -> &str {
        &self.lease.token
    }

    /// The lock key, exactly as given.
    pub fn key(&self) -> &str {
        &self.lease.key
    }

    /// How long the lock is still ours by the local lease clock (which keeps counting while the machine is
    /// suspended): measured from before the request that granted it, or that last confirmed its TTL, was
    /// sent, with the TTL that request left in Redis, less a drift allowance (1% of that TTL plus 2 ms).
    /// Zero once it has run out.
    ///
    /// It never exceeds what Redis can have granted, whatever order replies arrive in: every write a
    /// guard makes only ever moves the key's expiry later ([`renew`](Self::renew) and
    /// [`extend`](Self::extend) never shorten it), so each confirmed write is a lower bound on the key's
    /// expiry that no later write, nor a late-landing one, can undercut.
    pub fn valid_for(&self) -> Duration {
        self.valid_until() - self.now()
    }

    /// Whether the lock is still held with this guard's token.
    ///
    /// Answers `Ok(false)` without asking Redis once [`valid_for`](Self::valid_for) is zero. A `true` is a
    /// snapshot: checking then writing elsewhere is a race under pauses.
    pub async fn is_owner(&self) -> Result<bool> {
        if self.valid_for().is_zero() {
            return Ok(false);
        }
        self.eval_flag(&script::IS_OWNER, &[]).await
    }

    /// Moves the lock's expiry `by` later than its expiry as this guard last confirmed it. `Ok(false)`
    /// when the lock is no longer ours (expired, taken over or released): an expired lock is never
    /// re-created. A zero `by` is [`LockError::InvalidArgument`] and nothing is sent.
    ///
    /// Idempotent under re-sends: the request carries the absolute expiry it asks for, on the server's
    /// clock (`PEXPIREAT .. GT`), so a client that re-sends it over a new connection does not add `by`
    /// twice. The first `extend` of a guard that has not written since its acquisition reads the key's
    /// expiry first (one more round trip). It never shortens the TTL: when the key already lives longer
    /// (a renewal in between, say), it is left as it is and `Ok(true)` answers that it is ours for at
    /// least that long.
    pub async fn extend(&self, by: Duration) -> Result<bool> {
        let by_ms = to_millis("extend", by)?;
        let known = self.lock_validity().server_expiry_ms;
        let base = match known {
            Some(known) => known,
            None => {
                let sent_at = self.now();
                match self.eval_expiry(&script::EXPIRY, &[]).await? {
                    Some(read) => {
                        // No replica acknowledged this read: with `replicas`, the expiry it shows
                        // may be one a failover loses (left by a renewal too few replicas
                        // acknowledged), so it is only the base of the target, never validity.
                        if self.replica_ack.is_none() {
                            self.confirm(sent_at, read);
                        }
                        read.server_expiry_ms
                    }
                    None => return Ok(false),
                }
            }
        };
        let target = base.saturating_add(by_ms).to_string();
        let sent_at = self.now();
        let written = self.eval_write(&script::EXTEND, &[&target]).await?;
        Ok(written.map(|w| self.confirm(sent_at, w)).is_some())
    }

    /// Sets the lock's TTL to the lock's own timeout, unless it already lives longer (after an
    /// [`extend`](Self::extend)): a renewal never shortens the lease, so the local validity never claims
    /// more than Redis holds, whatever order replies arrive in. `Ok(false)` when the lock is no longer
    /// ours; an expired lock is never re-created.
    pub async fn renew(&self) -> Result<bool> {
        let sent_at = self.now();
        let written = self.eval_write(&script::RENEW, &[&self.ttl_arg]).await?;
        Ok(written.map(|w| self.confirm(sent_at, w)).is_some())
    }

    /// Releases the lock. `Ok(true)` when it was still ours, `Ok(false)` when it was not: another holder
    /// has it, or it expired by this guard's own clock (exclusion was not guaranteed until now).
    ///
    /// [`LockError::InDoubt`] when the key was gone although this guard's validity had not run out:
    /// either an earlier send of this very release deleted it (a client that re-sends over a new
    /// connection, as fred does, gets "nothing to delete" for its own success), or the server lost the
    /// key (a failover, a restart without persistence). The outcome cannot be told apart from here, so
    /// it is not reported as "not ours"; [`RedisLock::run`](crate::RedisLock::run) keeps the work's
    /// result then, with a warning.
    ///
    /// If this future is dropped before Redis answered, or the request fails, the release is retried in
    /// the background where the backend can spawn.
    pub async fn release(self) -> Result<bool> {
        let valid = !self.valid_for().is_zero();
        let key = self.lease.key.clone();
        let released = self
            .lease
            .release()
            .await
            .map_err(|source| LockError::backend_failed(&self.lease.key, source))?;
        self.lease.disarm();
        match released {
            Released::Deleted => Ok(true),
            Released::HeldByAnother => Ok(false),
            Released::Absent if !valid => Ok(false),
            Released::Absent => Err(LockError::InDoubt {
                key: key.to_string(),
                operation: "release",
                reason: "the key was gone while this guard's validity had not run out: a re-sent \
                         release of ours deleted it, or the server lost it"
                    .into(),
                source: None,
            }),
        }
    }

    pub(crate) fn valid_until(&self) -> Moment {
        self.lock_validity().until
    }

    fn now(&self) -> Moment {
        self.lease.backend.now()
    }

    /// Records a confirmed write (or read) sent at `sent_at`: the key then lived `written.pttl` from some
    /// moment after `sent_at`, a lower bound on its expiry that no later write of ours can undercut
    /// (they only move it later). The validity follows the most recently *sent* confirmed request, so
    /// a reply that arrives after a newer one's (re-ordered) changes nothing, and a key shortened
    /// behind our back is believed as soon as a request sent after that is confirmed.
    fn confirm(&self, sent_at: Moment, written: Written) {
        let mut validity = self.lock_validity();
        if sent_at < validity.sent_at {
            return;
        }
        validity.sent_at = sent_at;
        validity.until = validity_deadline(sent_at, written.pttl);
        validity.server_expiry_ms = Some(written.server_expiry_ms);
        let until = validity.until;
        drop(validity);
        self.tell_line(until);
    }

    /// Local tasks waiting for this key wait no longer than our lease.
    fn tell_line(&self, valid_until: Moment) {
        if let Some(baton) = &self.baton {
            baton.holding(&self.lease.token, valid_until);
        }
    }

    fn lock_validity(&self) -> std::sync::MutexGuard<'_, Validity> {
        // The critical sections only assign plain values; a poisoned value is still meaningful.
        self.validity
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A token-checked script's arguments: our token, then `extra_args`.
    fn token_and<'a>(&'a self, extra_args: &[&'a str]) -> Vec<&'a str> {
        let mut args = Vec::with_capacity(1 + extra_args.len());
        args.push(&*self.lease.token);
        args.extend_from_slice(extra_args);
        args
    }

    async fn eval_flag(&self, script: &Script, extra_args: &[&str]) -> Result<bool> {
        let lease = &self.lease;
        let args = self.token_and(extra_args);
        let reply = lease
            .backend
            .eval_script(script, &[&lease.key], &args)
            .await
            .map_err(|source| LockError::backend_failed(&lease.key, source))?;
        Ok(reply.as_int() == Some(1))
    }

    /// Runs a token-checked script that answers the key's TTL and expiry ([`Written`]), or `None` when
    /// the lock is not ours.
    async fn eval_expiry(&self, script: &Script, extra_args: &[&str]) -> Result<Option<Written>> {
        let lease = &self.lease;
        let args = self.token_and(extra_args);
        lease
            .backend
            .eval_script(script, &[&lease.key], &args)
            .await
            .and_then(|reply| Written::from_reply(script, &reply))
            .map_err(|source| LockError::backend_failed(&lease.key, source))
    }

    /// Like `eval_expiry`, for a write that must reach the replicas the lock asks for
    /// ([`RedisLock::replicas`](crate::RedisLock::replicas)): `NotReplicated` when it was applied but too
    /// few acknowledged it.
    async fn eval_write(&self, script: &Script, extra_args: &[&str]) -> Result<Option<Written>> {
        let Some(ack) = &self.replica_ack else {
            return self.eval_expiry(script, extra_args).await;
        };
        let lease = &self.lease;
        let args = self.token_and(extra_args);
        let (reply, acked) = ack
            .eval(&*lease.backend, script, &[&lease.key], &args)
            .await
            .map_err(|source| LockError::backend_failed(&lease.key, source))?;
        let written = Written::from_reply(script, &reply)
            .map_err(|source| LockError::backend_failed(&lease.key, source))?;
        if written.is_some() {
            ack.check(&lease.key, acked)?;
        }
        Ok(written)
    }
}

/// What a guard knows of its lease in Redis.
#[derive(Debug, Clone, Copy)]
struct Validity {
    /// Until when the lock is ours by the lease clock: the lower bound the most recently sent confirmed
    /// request gave.
    until: Moment,
    /// When that request was sent.
    sent_at: Moment,
    /// The key's expiry on the server's clock (Unix milliseconds, `PEXPIRETIME`), as last confirmed:
    /// what [`LockGuard::extend`] adds to.
    server_expiry_ms: Option<u64>,
}

/// The reply of a token-checked script that leaves the lock's TTL in place or moves it later
/// ([`script::RENEW`], [`script::EXTEND`], [`script::EXPIRY`]): the key's TTL and absolute expiry right after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Written {
    pub(crate) pttl: Duration,
    pub(crate) server_expiry_ms: u64,
}

impl Written {
    /// `Some` when the script found our token (`{pttl, pexpiretime}`), `None` when it did not (`0`).
    pub(crate) fn from_reply(
        script: &Script,
        reply: &ScriptValue,
    ) -> std::result::Result<Option<Self>, BackendError> {
        match reply {
            ScriptValue::Int(0) => Ok(None),
            ScriptValue::Array(items) => match items.as_slice() {
                [ScriptValue::Int(pttl), ScriptValue::Int(expiry)] if *pttl > 0 && *expiry > 0 => {
                    Ok(Some(Self {
                        pttl: Duration::from_millis(pttl.unsigned_abs()),
                        server_expiry_ms: expiry.unsigned_abs(),
                    }))
                }
                _ => Err(unexpected_reply(script, reply)),
            },
            _ => Err(unexpected_reply(script, reply)),
        }
    }
}

fn unexpected_reply(script: &Script, reply: &ScriptValue) -> BackendError {
    BackendError::permanent(
        "redlease",
        format!(
            "unexpected reply from the {} script: {reply:?}",
            script.name()
        ),
    )
}

/// What a release found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Released {
    /// The key held our token and is deleted now.
    Deleted,
    /// The key holds another token: someone else's lock, untouched.
    HeldByAnother,
    /// There was no key.
    Absent,
}

impl Released {
    pub(crate) fn from_reply(reply: &ScriptValue) -> std::result::Result<Self, BackendError> {
        match reply {
            ScriptValue::Int(1) => Ok(Released::Deleted),
            ScriptValue::Int(0) => Ok(Released::HeldByAnother),
            ScriptValue::Int(-1) => Ok(Released::Absent),
            other => Err(unexpected_reply(&script::RELEASE, other)),
        }
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &self.lease.key)
            .field("token", &self.lease.token)
            .field("ttl", &self.ttl)
            .field("fence", &self.fence)
            .field("valid_for", &self.valid_for())
            .finish()
    }
}

/// A token that may be held in Redis, released in the background when dropped while armed.
///
/// Used both for an acquisition in flight (the request may reach the server after its future was
/// dropped) and inside every guard.
pub(crate) struct Lease {
    backend: Arc<dyn LockBackend>,
    key: Arc<str>,
    /// The list a release pushes to, waking a waiter in another process.
    signal: Arc<str>,
    token: Arc<str>,
    /// How long a background release keeps retrying: the lock's TTL, after which the key has expired
    /// anyway (unless extended).
    horizon: Duration,
    /// An acquiring request of this token may still be in flight: one that timed out or was cancelled
    /// can still land later, after a first release found nothing to delete.
    in_flight: bool,
    armed: bool,
}

impl Lease {
    pub(crate) fn new(
        backend: Arc<dyn LockBackend>,
        key: Arc<str>,
        signal: Arc<str>,
        token: Arc<str>,
        horizon: Duration,
    ) -> Self {
        Self {
            backend,
            key,
            signal,
            token,
            horizon,
            in_flight: true,
            armed: true,
        }
    }

    /// Releases the lock if it still holds our token and wakes one waiter elsewhere: one round trip.
    pub(crate) async fn release(&self) -> std::result::Result<Released, crate::BackendError> {
        release_and_signal(&*self.backend, &self.key, &self.signal, &self.token).await
    }

    /// Nothing is held under this token any more (or nothing was ever set): skip the background release.
    pub(crate) fn disarm(mut self) {
        self.armed = false;
    }
}

impl Lease {
    /// Releases the token in the background, where the backend can spawn: for a guard dropped without
    /// `release`, an acquisition abandoned mid-request, or a lease `hold` reported lost (a renewal
    /// queued in the client before the loss may still land and reset the TTL: the release, queued
    /// after it, undoes that).
    ///
    /// A failed attempt is retried with backoff (50 ms doubling to 1 s, jittered) until Redis answers
    /// or the lease would have expired anyway (`horizon` after the first attempt), so one failure during
    /// an outage does not leave the key held for its whole TTL once the server is back. Permanent errors
    /// are not retried.
    pub(crate) fn release_in_background(&self, horizon: Duration, why: &'static str) {
        let (backend, key, signal, token) = (
            self.backend.clone(),
            self.key.clone(),
            self.signal.clone(),
            self.token.clone(),
        );
        let until = match self.in_flight {
            true => Until::Horizon,
            false => Until::Answered,
        };
        retry_in_background(
            self.backend.clone(),
            self.key.clone(),
            horizon,
            why,
            until,
            move || {
                let (backend, key, signal, token) =
                    (backend.clone(), key.clone(), signal.clone(), token.clone());
                Box::pin(async move {
                    release_and_signal(&*backend, &key, &signal, &token)
                        .await
                        .map(drop)
                })
            },
        );
    }
}

/// How long a background release goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Until {
    /// Until the store answers once (or the horizon passes).
    Answered,
    /// Until the horizon passes, answered or not: a request that may still land is released again.
    Horizon,
}

/// Runs `attempt` in the background on `backend`'s runtime until it succeeds (or, with
/// [`Until::Horizon`], repeatedly until `horizon` has passed), retrying transient failures with backoff
/// (50 ms doubling to 1 s, jittered) for at most `horizon`. Logs the outcome for `key`, saying `why` it
/// ran; a backend that cannot spawn leaves it to the lock's TTL.
pub(crate) fn retry_in_background<F>(
    backend: Arc<dyn LockBackend>,
    key: Arc<str>,
    horizon: Duration,
    why: &'static str,
    until: Until,
    attempt: F,
) where
    F: Fn() -> BoxFuture<'static, std::result::Result<(), BackendError>> + Send + 'static,
{
    let runtime = backend.clone();
    let task_key = key.clone();
    let task = Box::pin(async move {
        let key = task_key;
        let give_up_at = backend.now() + horizon;
        let mut pause = BACKGROUND_RETRY_FIRST;
        loop {
            match attempt().await {
                Ok(()) if until == Until::Horizon && backend.now() + pause < give_up_at => {}
                Ok(()) => {
                    tracing::debug!(%key, why, "released a lock in the background");
                    return;
                }
                Err(error) if error.is_transient() && backend.now() + pause < give_up_at => {
                    tracing::debug!(%key, why, %error, ?pause, "background release failed; retrying");
                }
                Err(error) => {
                    tracing::warn!(
                        %key,
                        why,
                        %error,
                        "background release failed; the lock's TTL will free it"
                    );
                    return;
                }
            }
            backend.sleep(jittered(pause)).await;
            pause = (pause * 2).min(BACKGROUND_RETRY_MAX);
        }
    });
    if !runtime.spawn_detached(task) {
        tracing::debug!(%key, why, "no runtime to release a lock in the background; its TTL will free it");
    }
}

/// The first pause between attempts of a background release, and the longest.
const BACKGROUND_RETRY_FIRST: Duration = Duration::from_millis(50);
const BACKGROUND_RETRY_MAX: Duration = Duration::from_secs(1);

impl Drop for Lease {
    fn drop(&mut self) {
        if self.armed && self.in_flight {
            // The acquiring request failed or was cancelled: it may land after the first release, so
            // releasing goes on (with backoff, at most a second apart) for the whole horizon.
            self.release_in_background(
                self.horizon,
                "an acquisition failed or was cancelled mid-request",
            );
        } else if self.armed {
            self.release_in_background(self.horizon, "dropped without release");
        }
    }
}

/// What the renewal loop behind `hold` needs from a guard: [`LockGuard`] and
/// [`RedlockGuard`](crate::RedlockGuard) share the loop through it.
pub(crate) trait Renewable: Sync {
    /// The lock key, for logs and [`LockError::Lost`].
    fn renewal_key(&self) -> &str;
    /// The TTL a renewal resets the lock to.
    fn renewal_ttl(&self) -> Duration;
    /// When the granting request was sent; `max_hold` counts from here.
    fn acquired_at(&self) -> Moment;
    /// Now, on the backend's lease clock.
    fn now(&self) -> Moment;
    /// The longest the lock may be held under `hold`.
    fn max_hold(&self) -> Option<Duration>;
    /// The local validity left, as `valid_for`.
    fn remaining(&self) -> Duration;
    /// Sleeps on the backend's runtime.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;
    /// One renewal, as `renew`.
    fn renew_once(&self) -> BoxFuture<'_, Result<bool>>;
    /// Releases the lock in the background once `hold` reported it lost, so that a renewal still queued
    /// in the client cannot keep a lease its holder was told it lost.
    fn release_lost(&self);
}

/// Runs `work` while `guard` is renewed, dropping it as soon as the lock is lost (see
/// [`LockGuard::hold`]).
pub(crate) async fn hold_renewed<G: Renewable + ?Sized, F: Future>(
    guard: &G,
    work: F,
) -> Result<F::Output> {
    let work = pin!(work);
    let keeper = pin!(keep_renewed(guard));
    match select(work, keeper).await {
        Either::Left((output, _)) => Ok(output),
        Either::Right((lost, _)) => Err(lost),
    }
}

/// Renews the lock until it is lost; returns why.
async fn keep_renewed<G: Renewable + ?Sized>(guard: &G) -> LockError {
    let lost = keep_renewed_until_lost(guard).await;
    guard.release_lost();
    lost
}

/// The renewal loop of [`keep_renewed`].
async fn keep_renewed_until_lost<G: Renewable + ?Sized>(guard: &G) -> LockError {
    let key = guard.renewal_key();
    let ttl = guard.renewal_ttl();
    let max_hold = guard.max_hold();
    let hold_deadline = max_hold.map(|max| guard.acquired_at().checked_add(max));
    let mut last_error: Option<LockError> = None;
    loop {
        let now = guard.now();
        if let Some(deadline) = hold_deadline {
            // An unrepresentable deadline is no deadline.
            if deadline.is_some_and(|d| now >= d) {
                return lost(
                    key,
                    format!(
                        "max_hold of {:?} passed; renewal stopped",
                        max_hold.unwrap_or_default()
                    ),
                );
            }
        }
        let remaining = guard.remaining();
        if remaining.is_zero() {
            return lost(
                key,
                match &last_error {
                    Some(error) => format!(
                        "renewals failed until its validity ran out: {}",
                        with_causes(error)
                    ),
                    None => "its validity ran out before it could be renewed".into(),
                },
            );
        }
        // After a failure, try again soon; otherwise at about a third of the TTL.
        let mut pause = match last_error {
            Some(_) => jittered(ttl / 10),
            None => jittered(ttl / 3),
        };
        pause = pause.min(remaining);
        if let Some(Some(deadline)) = hold_deadline {
            pause = pause.min(deadline - now);
        }
        guard.sleep(pause).await;
        if hold_deadline.flatten().is_some_and(|d| guard.now() >= d) {
            continue;
        }
        let remaining = guard.remaining();
        if remaining.is_zero() {
            continue;
        }
        // A renewal still unanswered when the validity runs out counts as failed.
        let renewal = guard.renew_once();
        match select(renewal, guard.sleep(remaining)).await {
            Either::Left((Ok(true), _)) => last_error = None,
            Either::Left((Ok(false), _)) => {
                return lost(key, "a renewal found another holder or no key".into());
            }
            Either::Left((Err(error), _)) => {
                tracing::warn!(%key, %error, "renewing the lock failed; retrying");
                last_error = Some(error);
            }
            Either::Right(_) => {
                return lost(
                    key,
                    format!(
                        "no renewal was answered before its validity ran out{}",
                        last_error
                            .as_ref()
                            .map(|e| format!(" (last error: {})", with_causes(e)))
                            .unwrap_or_default()
                    ),
                );
            }
        }
    }
}

fn lost(key: &str, reason: String) -> LockError {
    tracing::warn!(%key, %reason, "lock lost");
    LockError::Lost {
        key: key.to_owned(),
        reason,
    }
}

impl Renewable for LockGuard {
    fn renewal_key(&self) -> &str {
        &self.lease.key
    }

    fn renewal_ttl(&self) -> Duration {
        self.ttl
    }

    fn acquired_at(&self) -> Moment {
        self.acquired_at
    }

    fn now(&self) -> Moment {
        LockGuard::now(self)
    }

    fn max_hold(&self) -> Option<Duration> {
        self.max_hold
    }

    fn remaining(&self) -> Duration {
        self.valid_for()
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.lease.backend.sleep(duration)
    }

    fn renew_once(&self) -> BoxFuture<'_, Result<bool>> {
        Box::pin(self.renew())
    }

    fn release_lost(&self) {
        self.lease
            .release_in_background(self.ttl, "hold reported the lease lost");
    }
}

/// `base` scaled by a random factor in [0.8, 1.0], so holders of many locks do not renew in lock-step.
fn jittered(base: Duration) -> Duration {
    base.mul_f64(0.8 + 0.2 * fastrand::f64())
}

/// `error` and its chain of causes on one line, so a `Lost` reason says what actually failed.
fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

/// How long a wake-up nobody took stays in the signal list.
const SIGNAL_LINGER_MS: &str = "500";

/// Releases `key` if it holds `token`, waking a waiter elsewhere where the backend sends signals.
async fn release_and_signal(
    backend: &dyn LockBackend,
    key: &str,
    signal: &str,
    token: &str,
) -> std::result::Result<Released, crate::BackendError> {
    let reply = if backend.release_signals() {
        backend
            .eval_script(
                &script::RELEASE_AND_SIGNAL,
                &[key, signal],
                &[token, SIGNAL_LINGER_MS],
            )
            .await?
    } else {
        backend
            .eval_script(&script::RELEASE, &[key], &[token])
            .await?
    };
    Released::from_reply(&reply)
}
