//! Releasing in the background: for a guard dropped without `release`, an acquisition abandoned
//! mid-request, or a lease `hold` reported lost; retried with backoff until Redis answers or the lease
//! would have expired anyway.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use super::validity::Released;
use crate::backend::{BackendError, LockBackend, runtime_of};
use crate::script;

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

/// How long a wake-up nobody took stays in the signal list.
const SIGNAL_LINGER_MS: &str = "500";

/// Releases `key` if it holds `token`, waking a waiter elsewhere where the backend sends signals.
pub(super) async fn release_and_signal(
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

/// Removes the member `member` from the sorted set `key` ([`script::SHARE_RELEASE`]), waking up to
/// `wake` waiters elsewhere where the backend sends signals.
pub(super) async fn release_share(
    backend: &dyn LockBackend,
    key: &str,
    signal: &str,
    member: &str,
    wake: u32,
) -> std::result::Result<Released, crate::BackendError> {
    let remote = match backend.capabilities().release_signals {
        true => wake,
        false => 0,
    };
    let reply = backend
        .eval_script(
            &script::SHARE_RELEASE,
            &[key, signal],
            &[member, &remote.to_string(), SIGNAL_LINGER_MS],
        )
        .await?;
    let released = Released::from_reply(&reply)?;
    if released == Released::Deleted
        && let Some(lines) = runtime_of(backend).lines()
    {
        // Tasks of this process waiting for the key try again now.
        lines.wakeups.wake(key, wake);
    }
    Ok(released)
}

/// `base` scaled by a random factor in [0.8, 1.0], so holders of many locks do not renew in lock-step.
pub(crate) fn jittered(base: Duration) -> Duration {
    base.mul_f64(0.8 + 0.2 * fastrand::f64())
}
