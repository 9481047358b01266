//! The lease machinery shared by [`LockGuard`](crate::LockGuard) and
//! [`RedlockGuard`](crate::RedlockGuard): a token that may be held in Redis and is released in the
//! background when dropped, background retries, and the renewal loop behind `hold`.

pub(crate) mod config;

pub(crate) use config::lease_settings;

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, Either, select};

use crate::backend::{BackendError, LockBackend, runtime_of};
use crate::error::{LockError, Result};
use crate::guard::Released;
use crate::script;
use crate::time::Moment;

/// A token that may be held in Redis, released in the background when dropped while armed.
///
/// Used both for an acquisition in flight (the request may reach the server after its future was
/// dropped) and inside every guard.
pub(crate) struct Lease {
    pub(crate) backend: Arc<dyn LockBackend>,
    pub(crate) key: Arc<str>,
    /// The list a release pushes to, waking a waiter in another process.
    signal: Arc<str>,
    pub(crate) token: Arc<str>,
    /// How long a background release keeps retrying: the lock's TTL, after which the key has expired
    /// anyway (unless extended).
    horizon: Duration,
    /// An acquiring request of this token may still be in flight: one that timed out or was cancelled
    /// can still land later, after a first release found nothing to delete.
    pub(crate) in_flight: bool,
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
    let runtime = runtime_of(&*backend).clone();
    let task_key = key.clone();
    let task_runtime = runtime.clone();
    let task = Box::pin(async move {
        let (key, runtime) = (task_key, task_runtime);
        let give_up_at = runtime.now() + horizon;
        let mut pause = BACKGROUND_RETRY_FIRST;
        loop {
            match attempt().await {
                Ok(()) if until == Until::Horizon && runtime.now() + pause < give_up_at => {}
                Ok(()) => {
                    tracing::debug!(%key, why, "released a lock in the background");
                    return;
                }
                Err(error) if error.is_transient() && runtime.now() + pause < give_up_at => {
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
            runtime.sleep(jittered(pause)).await;
            pause = (pause * 2).min(BACKGROUND_RETRY_MAX);
        }
    });
    if !runtime.spawn(task) {
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

/// What the renewal loop behind `hold` needs from a guard: [`LockGuard`](crate::LockGuard) and
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
/// [`LockGuard::hold`](crate::LockGuard::hold)).
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
    let reply = if backend.capabilities().release_signals {
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
