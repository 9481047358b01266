//! The renewal loop behind every guard's `hold`, the `Lost` reasons it gives, and the one `run`
//! (acquire, hold the body, release) of every primitive.

use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{BoxFuture, Either, select};
use tracing::Instrument;

use super::Holding;
use super::background::jittered;
use super::observe::LostReason;
use super::renewals::{Registering, Registration};
use super::validity::Validity;
use crate::backend::LockBackend;
use crate::error::{LockError, Result};

/// What the engine needs from a guard to keep, end and finish its lease: every primitive's guard
/// implements it, and gets `hold` ([`hold_renewed`]) and `run` ([`run`]) from it.
pub(crate) trait Held: Sync {
    /// What the guard holds: key, token, TTL, fence, `max_hold`, its runtime.
    fn holding(&self) -> &Holding;
    /// The local validity left, as `valid_for`.
    fn remaining(&self) -> Duration;
    /// One renewal, as `renew`.
    fn renew_once(&self) -> BoxFuture<'_, Result<bool>>;
    /// Releases the lock in the background once `hold` reported it lost, so that a renewal still queued
    /// in the client cannot keep a lease its holder was told it lost; from then on the guard claims
    /// nothing (`valid_for` zero, `release` answering `Ok(false)`).
    fn release_lost(&self);
    /// Releases the lock, as the guard's `release`: `Ok(true)` when exclusion held until now.
    fn release_held(self) -> impl Future<Output = Result<bool>> + Send
    where
        Self: Sized;
    /// What the renewal scheduler needs to renew this lease in batches (`RENEW_MANY`, which renews as
    /// `RENEW` does); `None` (the default) when a batch cannot express its renewal, and `hold` renews
    /// it on its own.
    fn batched(&self) -> Option<Batched> {
        None
    }
}

/// A lease the renewal scheduler can renew: [`Held::batched`].
pub(crate) struct Batched {
    /// The backend its renewals go to.
    pub(crate) backend: Arc<dyn LockBackend>,
    /// The guard's validity, confirmed or ended by the scheduler as the guard's own `renew` would.
    pub(crate) validity: Arc<Mutex<Validity>>,
    /// Whether the guard holds its key's turn in the process's waiting lines, which a renewal tells
    /// how long the lease is ours.
    pub(crate) tell_line: bool,
}

/// Acquired, runs `body` while holding the lease (renewed as `hold` does), then releases it: the one
/// `run` of every primitive (see [`RedisLock::run`](crate::RedisLock::run) for the outcomes).
///
/// A release that found the lease expired or taken over is [`LockError::Lost`], so the value is not
/// handed out; a release that failed, or whose outcome cannot be told, still hands the value out and
/// logs a warning: the work is done and the TTL frees the key.
pub(crate) async fn run<G, F, T>(guard: G, body: F) -> Result<T>
where
    G: Held,
    F: AsyncFnOnce(&G) -> T,
{
    let value = hold_renewed(&guard, body(&guard)).await?;
    let key = guard.holding().key.clone();
    match guard.release_held().await {
        Ok(true) => Ok(value),
        Ok(false) => Err(LockError::Lost {
            key: key.to_string(),
            reason: "it expired or was taken over before the work finished".into(),
        }),
        Err(error) => {
            // The release logged the failure at `warn` already.
            tracing::debug!(
                %key,
                %error,
                "releasing the lock failed after the work finished; its TTL will free it"
            );
            Ok(value)
        }
    }
}

/// Runs `work` while `guard` is renewed, dropping it as soon as the lock is lost (see
/// [`LockGuard::hold`](crate::LockGuard::hold)).
pub(crate) async fn hold_renewed<G: Held + ?Sized, F: Future>(
    guard: &G,
    work: F,
) -> Result<F::Output> {
    let holding = guard.holding();
    // One span for the whole hold (the work runs inside it); `renewals` counts the confirmed ones.
    let span = tracing::info_span!(
        "redlease.hold",
        key = &*holding.key,
        primitive = holding.observed.primitive().as_str(),
        name = holding.observed.name(),
        renewals = 0u64,
    );
    let work = pin!(work);
    let keeper = pin!(keep_renewed(guard));
    match select(work, keeper).instrument(span).await {
        Either::Left((output, _)) => Ok(output),
        Either::Right((lost, _)) => Err(lost),
    }
}

/// Renews the lock until it is lost; returns why.
///
/// Through the backend's renewal scheduler where it can (one batch call renews many leases, and this
/// future sleeps until the lease is lost), otherwise (a runtime that cannot spawn, a lease a batch
/// cannot express, a scheduler that went away) with a loop of its own.
async fn keep_renewed<G: Held + ?Sized>(guard: &G) -> LockError {
    let lost = match register(guard) {
        Some(registration) => match until_lost(guard, registration).await {
            Some(lost) => lost,
            None => keep_renewed_until_lost(guard).await,
        },
        None => keep_renewed_until_lost(guard).await,
    };
    guard.release_lost();
    lost
}

/// Registers `guard`'s lease with its runtime's renewal scheduler, where it has one to give.
fn register<G: Held + ?Sized>(guard: &G) -> Option<Registration> {
    let batched = guard.batched()?;
    let holding = guard.holding();
    let runtime = &holding.runtime;
    let lease = Registering {
        backend: batched.backend,
        key: holding.key.clone(),
        token: holding.token.clone(),
        ttl: holding.ttl,
        ttl_arg: holding.ttl_arg.clone(),
        validity: batched.validity,
        lines: match batched.tell_line {
            true => runtime.lines().cloned(),
            false => None,
        },
        // An unrepresentable deadline is no deadline.
        hold_deadline: holding
            .max_hold
            .and_then(|max| holding.acquired_at.checked_add(max)),
        max_hold: holding.max_hold,
        counter: holding.observed.renewal_counter(),
    };
    runtime.renewals().register(runtime, lease)
}

/// Waits until the scheduler reports the lease lost, and reports it as the loop would; `None` when
/// the scheduler went away first (the caller renews on its own then).
async fn until_lost<G: Held + ?Sized>(guard: &G, registration: Registration) -> Option<LockError> {
    let holding = guard.holding();
    // Records the renewals in the hold's span however the hold ends (the work finishing drops this).
    struct Recorded {
        span: tracing::Span,
        registration: Registration,
    }
    impl Drop for Recorded {
        fn drop(&mut self) {
            self.span.record("renewals", self.registration.renewals());
        }
    }
    let mut recorded = Recorded {
        span: tracing::Span::current(),
        registration,
    };
    match (&mut recorded.registration.lost).await {
        Ok((why, reason)) => {
            holding.observed.lost(why);
            Some(lost(&holding.key, why, reason))
        }
        Err(_) => None,
    }
}

/// The renewal loop of [`keep_renewed`].
async fn keep_renewed_until_lost<G: Held + ?Sized>(guard: &G) -> LockError {
    let holding = guard.holding();
    let key = &*holding.key;
    let ttl = holding.ttl;
    let max_hold = holding.max_hold;
    let hold_deadline = max_hold.map(|max| holding.acquired_at.checked_add(max));
    let mut last_error: Option<LockError> = None;
    let mut renewals: u64 = 0;
    let lost = |why: LostReason, reason: String| {
        holding.observed.lost(why);
        lost(key, why, reason)
    };
    loop {
        let now = holding.now();
        if let Some(deadline) = hold_deadline {
            // An unrepresentable deadline is no deadline.
            if deadline.is_some_and(|d| now >= d) {
                let (why, reason) = max_hold_passed(max_hold);
                return lost(why, reason);
            }
        }
        let remaining = guard.remaining();
        if remaining.is_zero() {
            let (why, reason) = ran_out(last_error.as_ref().map(|e| with_causes(e)).as_deref());
            return lost(why, reason);
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
        holding.sleep(pause).await;
        if hold_deadline.flatten().is_some_and(|d| holding.now() >= d) {
            continue;
        }
        let remaining = guard.remaining();
        if remaining.is_zero() {
            continue;
        }
        // A renewal still unanswered when the validity runs out counts as failed.
        let renewal = guard.renew_once();
        let renewed = select(renewal, holding.sleep(remaining)).await;
        holding
            .observed
            .renewed(matches!(renewed, Either::Left((Ok(true), _))));
        match renewed {
            Either::Left((Ok(true), _)) => {
                last_error = None;
                renewals += 1;
                tracing::Span::current().record("renewals", renewals);
            }
            Either::Left((Ok(false), _)) => {
                return lost(
                    LostReason::TakenOver,
                    "a renewal found another holder or no key".into(),
                );
            }
            Either::Left((Err(error), _)) => {
                tracing::warn!(%key, %error, "renewing the lock failed; retrying");
                last_error = Some(error);
            }
            Either::Right(_) => {
                let (why, reason) =
                    unanswered(last_error.as_ref().map(|e| with_causes(e)).as_deref());
                return lost(why, reason);
            }
        }
    }
}

/// Why a lease is lost once `max_hold` passed: the one wording of the renewal loop and the scheduler.
pub(super) fn max_hold_passed(max_hold: Option<Duration>) -> (LostReason, String) {
    (
        LostReason::MaxHold,
        format!(
            "max_hold of {:?} passed; renewal stopped",
            max_hold.unwrap_or_default()
        ),
    )
}

/// Why a lease is lost once its validity ran out with no renewal in flight: renewals failed (the
/// last error, with its causes) or none was made in time.
pub(super) fn ran_out(last_error: Option<&str>) -> (LostReason, String) {
    match last_error {
        Some(error) => (
            LostReason::RenewalFailed,
            format!("renewals failed until its validity ran out: {error}"),
        ),
        None => (
            LostReason::Expired,
            "its validity ran out before it could be renewed".into(),
        ),
    }
}

/// Why a lease is lost when its validity ran out with a renewal still unanswered.
pub(super) fn unanswered(last_error: Option<&str>) -> (LostReason, String) {
    (
        LostReason::RenewalFailed,
        format!(
            "no renewal was answered before its validity ran out{}",
            last_error
                .map(|e| format!(" (last error: {e})"))
                .unwrap_or_default()
        ),
    )
}

/// Reports the lease lost: a `warn` event with the reason chain (inside the `hold` span, which names
/// the primitive).
fn lost(key: &str, why: LostReason, reason: String) -> LockError {
    tracing::warn!(%key, why = why.as_str(), %reason, "lock lost");
    LockError::Lost {
        key: key.to_owned(),
        reason,
    }
}

/// `error` and its chain of causes on one line, so a `Lost` reason says what actually failed.
pub(crate) fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}
