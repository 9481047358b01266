//! [`LockGuard`]: proof of one acquisition, and everything a holder can do with it.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;

use crate::backend::{BackendError, ScriptValue};
use crate::error::{LockError, Result};
use crate::keys;
use crate::lease::{Held, Holding, Lease, Released, Validity, Written, hold_renewed};
use crate::queue::{Baton, Grant, Next};
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
///
/// # Not reentrant
///
/// A lock is held by a guard, not by a task or a thread (async Rust has no task identity to tell who
/// asks): a task that holds a guard and calls `acquire` on the same key again waits for itself, and
/// gets [`LockError::Timeout`] when its wait runs out (or waits forever with `wait_timeout(None)`).
/// Pass the guard (or a reference to it) down to the code that needs the lock instead of acquiring
/// it again.
pub struct LockGuard {
    lease: Lease,
    holding: Holding,
    /// Shared with the renewal scheduler while `hold` runs (batched renewals).
    validity: Arc<Mutex<Validity>>,
    /// [`RedisLock::replicas`](crate::RedisLock::replicas), for `renew` and `extend`.
    replica_ack: Option<ReplicaAck>,
    /// This process's turn for the key, handed to the next local waiter when the guard goes. Declared
    /// after `lease` so that a dropped guard starts its background release before the baton moves.
    baton: Option<Baton>,
}

impl LockGuard {
    pub(crate) fn new(mut lease: Lease, holding: Holding, replica_ack: Option<ReplicaAck>) -> Self {
        // Granted: no acquiring request of this token is in flight any more.
        lease.in_flight = false;
        let sent_at = holding.acquired_at;
        let until = validity_deadline(sent_at, holding.ttl);
        Self {
            lease,
            holding,
            validity: Arc::new(Mutex::new(Validity::granted(sent_at, Some(until)))),
            replica_ack,
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
        self.holding.fence
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
    /// the first. A guard without a fence is [`LockError::InvalidArgument`] and nothing is sent; so is a
    /// `resource` that is the lock key itself ([`key`](Self::key)) or one of the companion keys the
    /// library keeps beside it (its fence counter, release signal, fair queue): a fenced write there
    /// would overwrite the lock.
    ///
    /// A transient failure (a timeout, a dropped connection) is [`LockError::InDoubt`]: the write may
    /// have been applied, or may still land later; it is never reported as "not written". Retrying with
    /// the same guard is safe (an equal fence from the same holder is accepted), and a later write by a
    /// newer holder always wins over a late one of ours, whose fence is smaller.
    pub async fn fenced_set(&self, resource: &str, value: &str) -> Result<bool> {
        let Some(fence) = self.holding.fence else {
            return Err(LockError::invalid(
                "fence",
                "fenced_set needs a lock with fencing(true)",
            ));
        };
        if resource.is_empty() {
            return Err(LockError::invalid("resource", "must not be empty"));
        }
        if keys::is_lock_state(&self.lease.key, resource) {
            return Err(LockError::invalid(
                "resource",
                format!(
                    "{resource} is the lock key or one of its companion keys: a fenced write there \
                     would overwrite the lock itself; write to the key of the resource the lock protects"
                ),
            ));
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
    /// about a third of the TTL. Where the backend's runtime can spawn (both Redis adapters on tokio,
    /// the in-memory backend), the backend's one renewal scheduler renews it, batched with the other
    /// leases held through the backend (one script call renews many), and this future sleeps until the
    /// lock is lost; otherwise (and with [`replicas`](crate::RedisLock::replicas)) it renews in the
    /// same future as `work`, with jitter, so any executor works.
    ///
    /// Returns `Ok(output)` when `work` finishes first. As soon as the lock is lost, `work` is dropped and
    /// the result is [`LockError::Lost`] naming the key and the reason: a renewal found another holder or
    /// no key; renewals kept failing until the locally tracked validity ran out (a renewal still
    /// unanswered at that moment counts as failed); or the lock's `max_hold` passed. The lease is then
    /// released in the background and the guard claims it no more: [`valid_for`](Self::valid_for) is
    /// zero, and [`release`](Self::release) answers `Ok(false)`.
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
        self.lock_validity().left(self.now())
    }

    /// Whether the lock is still held with this guard's token.
    ///
    /// Answers `Ok(false)` without asking Redis once [`valid_for`](Self::valid_for) is zero. A `true` is a
    /// snapshot: checking then writing elsewhere is a race under pauses. A `false` from Redis ends the
    /// guard's validity, as a `false` from [`renew`](Self::renew) or [`extend`](Self::extend) does:
    /// `valid_for` is zero from then on.
    pub async fn is_owner(&self) -> Result<bool> {
        if self.valid_for().is_zero() {
            return Ok(false);
        }
        let sent_at = self.now();
        let ours = self.eval_flag(&script::IS_OWNER, &[]).await?;
        if !ours {
            self.disown(sent_at);
        }
        Ok(ours)
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
        let known = self.lock_validity().server_expiry_ms();
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
                    None => return Ok(self.settle(sent_at, None)),
                }
            }
        };
        let target = base.saturating_add(by_ms).to_string();
        let sent_at = self.now();
        let written = self.eval_write(&script::EXTEND, &[&target]).await?;
        Ok(self.settle(sent_at, written))
    }

    /// Sets the lock's TTL to the lock's own timeout, unless it already lives longer (after an
    /// [`extend`](Self::extend)): a renewal never shortens the lease, so the local validity never claims
    /// more than Redis holds, whatever order replies arrive in. `Ok(false)` when the lock is no longer
    /// ours; an expired lock is never re-created.
    pub async fn renew(&self) -> Result<bool> {
        let sent_at = self.now();
        let written = self
            .eval_write(&script::RENEW, &[&self.holding.ttl_arg])
            .await?;
        Ok(self.settle(sent_at, written))
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
    ///
    /// When another task of this process waits first in line for the key, the release also grants it
    /// the lock in the same script (a hand-over: one round trip for the hand-off instead of two); the
    /// answer is the same as for a plain release.
    pub async fn release(mut self) -> Result<bool> {
        let valid = !self.valid_for().is_zero();
        let observed = self.holding.take_observed();
        let key = self.lease.key.clone();
        observed
            .releasing(&key, valid, self.release_unobserved(valid))
            .await
    }

    async fn release_unobserved(mut self, valid: bool) -> Result<bool> {
        // Another task of this process is first in line for the key: release and grant it in one
        // script, so the hand-off costs one round trip instead of two.
        if let Some(baton) = self.baton.take() {
            match baton.reserve_next() {
                Ok(next) => return self.hand_over(next, valid).await,
                Err(baton) => self.baton = Some(baton),
            }
        }
        let key = self.lease.key.clone();
        let released = self
            .lease
            .release()
            .await
            .map_err(|source| LockError::backend_failed(&self.lease.key, source))?;
        self.lease.disarm();
        release_outcome(&key, released, valid)
    }

    /// Releases the lock and grants it to `next` in one script ([`script::HAND_OVER`], or
    /// [`script::FENCED_HAND_OVER`] when the waiter's lock has fencing); reports the release as
    /// [`release`](Self::release) does.
    ///
    /// - Handed over: the waiter gets the lock with the baton, valid from the send of the script. A
    ///   waiter gone by then leaves it untaken, and it is released in the background.
    /// - The key was not ours (expired, taken over): nothing is granted, and the waiter gets the baton
    ///   alone and tries by itself.
    /// - No answer (a timeout, a dropped connection; or this future dropped mid-request): the outcome
    ///   is unknown, so both tokens are released in the background (ours, as after a failed release;
    ///   the waiter's for its whole TTL, as an acquisition that may still land), and the waiter gets
    ///   the baton alone: it never believes it holds the lock.
    async fn hand_over(self, next: Next, valid: bool) -> Result<bool> {
        let offer = next.offer.clone();
        let lease = &self.lease;
        // Armed before sending: dropped unanswered, it releases the waiter's token in the background.
        let mut pending = Lease::new(
            lease.backend.clone(),
            lease.key.clone(),
            offer.signal.clone(),
            offer.token.clone(),
            offer.ttl,
        );
        let sent_at = self.now();
        let args = [&*lease.token, &*offer.token, &offer.ttl_arg];
        let reply = match &offer.fence_counter {
            None => lease
                .backend
                .eval_script(&script::HAND_OVER, &[&lease.key], &args)
                .await
                .and_then(|reply| Ok((Released::from_reply(&reply)?, None))),
            Some(counter) => lease
                .backend
                .eval_script(&script::FENCED_HAND_OVER, &[&lease.key, counter], &args)
                .await
                .and_then(|reply| fenced_hand_over_reply(&reply)),
        };
        let (released, fence) = match reply {
            Ok(answer) => answer,
            Err(source) => {
                // `pending`, then `next` (the baton alone), then `self` (our own token's background
                // release) drop in this order: both releases start before the waiter tries.
                drop(pending);
                drop(next);
                return Err(LockError::backend_failed(&self.lease.key, source));
            }
        };
        let key = self.lease.key.clone();
        self.lease.disarm();
        if released == Released::Deleted {
            // Answered: no request of the waiter's token is in flight any more.
            pending.in_flight = false;
            let until = validity_deadline(sent_at, offer.ttl);
            next.grant(
                Grant {
                    lease: pending,
                    fence,
                    sent_at,
                },
                until,
            );
        } else {
            pending.disarm();
            drop(next);
        }
        release_outcome(&key, released, valid)
    }

    pub(crate) fn valid_until(&self) -> Option<Moment> {
        self.lock_validity().until()
    }

    fn now(&self) -> Moment {
        self.holding.now()
    }

    /// Records what a token-checked request sent at `sent_at` found: `Some` confirms the lease
    /// ([`confirm`](Self::confirm)), `None` ("not ours") ends it, so that the guard claims nothing once
    /// Redis said the key is no longer ours, even when a reply to an older request arrives after.
    /// Answers whether the lease was confirmed.
    fn settle(&self, sent_at: Moment, written: Option<Written>) -> bool {
        match written {
            Some(written) => {
                self.confirm(sent_at, written);
                true
            }
            None => {
                self.disown(sent_at);
                false
            }
        }
    }

    /// Redis answered a request sent at `sent_at` with "not ours": from then on the guard claims no
    /// validity. Replies to requests sent earlier are older news and are ignored.
    fn disown(&self, sent_at: Moment) {
        if self.lock_validity().disown(sent_at) {
            // Local waiters need not wait for a lease we no longer have.
            self.tell_line(sent_at);
        }
    }

    /// Records a confirmed write (or read) sent at `sent_at` ([`Validity::confirm`]): the validity
    /// follows the most recently *sent* confirmed request.
    fn confirm(&self, sent_at: Moment, written: Written) {
        let mut validity = self.lock_validity();
        if validity.confirm(sent_at, written)
            && let Some(until) = validity.until()
        {
            drop(validity);
            self.tell_line(until);
        }
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

/// What a release that found `released` reports, for a guard whose validity had (`valid`) or had not
/// run out.
fn release_outcome(key: &str, released: Released, valid: bool) -> Result<bool> {
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

/// Reads [`script::FENCED_HAND_OVER`]'s reply: `{1, fence}`, `{0, 0}` or `{-1, 0}`.
fn fenced_hand_over_reply(
    reply: &ScriptValue,
) -> std::result::Result<(Released, Option<u64>), BackendError> {
    let unexpected = || {
        BackendError::permanent(
            "redlease",
            format!("unexpected reply from the fenced hand-over script: {reply:?}"),
        )
    };
    let ScriptValue::Array(items) = reply else {
        return Err(unexpected());
    };
    match items.as_slice() {
        [ScriptValue::Int(1), ScriptValue::Int(fence)] => u64::try_from(*fence)
            .map(|fence| (Released::Deleted, Some(fence)))
            .map_err(|_| unexpected()),
        [ScriptValue::Int(code), ..] => Released::from_reply(&ScriptValue::Int(*code))
            .ok()
            .filter(|released| *released != Released::Deleted)
            .map(|released| (released, None))
            .ok_or_else(unexpected),
        _ => Err(unexpected()),
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &self.lease.key)
            .field("token", &self.lease.token)
            .field("ttl", &self.holding.ttl)
            .field("fence", &self.holding.fence)
            .field("valid_for", &self.valid_for())
            .finish()
    }
}

impl Held for LockGuard {
    fn holding(&self) -> &Holding {
        &self.holding
    }

    fn remaining(&self) -> Duration {
        self.valid_for()
    }

    fn renew_once(&self) -> BoxFuture<'_, Result<bool>> {
        Box::pin(self.renew())
    }

    fn release_lost(&self) {
        self.lock_validity().end(self.now());
        self.lease
            .release_in_background(self.holding.ttl, "hold reported the lease lost");
    }

    fn release_held(self) -> impl Future<Output = Result<bool>> + Send {
        self.release()
    }

    // Batched renewals (issue 13): a renewal that must reach replicas (`replicas`) stays per lease.
    fn batched(&self) -> Option<crate::lease::Batched> {
        match self.replica_ack {
            Some(_) => None,
            None => Some(crate::lease::Batched {
                backend: self.lease.backend.clone(),
                validity: self.validity.clone(),
                tell_line: self.baton.is_some(),
            }),
        }
    }
}

#[cfg(test)]
mod tests;
