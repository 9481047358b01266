//! The lease engine: what every primitive's guard has in common, written once.
//!
//! A primitive ([`RedisLock`](crate::RedisLock), [`Redlock`](crate::Redlock), and the
//! [`Election`](crate::Election) over a `RedisLock`) owns only what differs: its scripts, its key layout,
//! how it acquires, and its guard's extra methods. Everything else lives here:
//!
//! - [`config`]: the settings every builder shares ([`LeaseConfig`](config::LeaseConfig): TTL, wait,
//!   backoff, `max_hold`, fencing, replicas), validated once, with their setters and getters written
//!   once ([`lease_settings!`]);
//! - [`Holding`]: what every guard knows of its acquisition (key, token, TTL, fence, `max_hold`, the
//!   runtime whose clock measures its validity);
//! - [`validity`]: one copy of a lease as the guard knows it (the drift rule, confirmation by the most
//!   recently sent confirmed request, "not ours" ending it), and the replies every primitive reads alike;
//! - [`hold`]: the renewal loop behind `hold`, its `Lost` reasons, and the one `run` (acquire, hold the
//!   body, release) of every primitive, over the [`Held`] trait a guard implements;
//! - [`Lease`] and [`background`]: a token released in the background when dropped (an acquisition
//!   abandoned mid-request, a guard dropped without `release`, a lease reported lost).

pub(crate) mod background;
pub(crate) mod config;
pub(crate) mod hold;
// Metrics (feature `metrics`) and traces of every primitive.
pub(crate) mod observe;
// The renewal scheduler (issue 13's batched renewals).
pub(crate) mod renewals;
pub(crate) mod validity;

pub(crate) use background::{Until, retry_in_background};
pub(crate) use config::lease_settings;
pub(crate) use hold::{Batched, Held, hold_renewed, run};
pub(crate) use validity::{Released, Validity, Written, fenced_reply};

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::backend::LockBackend;
use crate::lease::config::ValidatedConfig;
use crate::runtime::Runtime;
use crate::time::Moment;
use background::{release_and_signal, release_share};

/// The one release of a lease: the lock's token-checked delete, or a share's member removal.
async fn release_call(
    backend: &dyn LockBackend,
    key: &str,
    signal: &str,
    token: &str,
    share: Option<&(Arc<str>, u32)>,
) -> std::result::Result<Released, crate::BackendError> {
    match share {
        None => release_and_signal(backend, key, signal, token).await,
        Some((member, wake)) => release_share(backend, key, signal, member, *wake).await,
    }
}

/// What every guard knows of its acquisition, whatever the primitive.
pub(crate) struct Holding {
    /// The lock key, exactly as given.
    pub(crate) key: Arc<str>,
    /// This acquisition's token: the key's value while the lease is ours.
    pub(crate) token: Arc<str>,
    /// The TTL a renewal resets the lease to.
    pub(crate) ttl: Duration,
    /// The same, as a script argument.
    pub(crate) ttl_arg: String,
    /// The fence issued with the acquisition, when fencing.
    pub(crate) fence: Option<u64>,
    /// When the granting request was sent: `max_hold` counts from here.
    pub(crate) acquired_at: Moment,
    /// The longest the lease may be held under `hold`.
    pub(crate) max_hold: Option<Duration>,
    /// The runtime whose clock measures the validity and whose timer paces renewals.
    runtime: Runtime,
    /// This lease in the metrics, from its grant to the end of its hold.
    pub(crate) observed: observe::HeldLease,
}

impl Holding {
    /// An acquisition of `key` with `token`, granted by a request sent at `acquired_at`.
    pub(crate) fn new(
        config: &ValidatedConfig,
        key: Arc<str>,
        token: Arc<str>,
        fence: Option<u64>,
        acquired_at: Moment,
        runtime: Runtime,
    ) -> Self {
        Self {
            key,
            token,
            ttl: config.ttl,
            ttl_arg: config.ttl_arg.clone(),
            fence,
            acquired_at,
            max_hold: config.max_hold,
            observed: observe::HeldLease::start(&config.observe, &runtime, acquired_at),
            runtime,
        }
    }

    /// Now, on the lease clock.
    pub(crate) fn now(&self) -> Moment {
        self.runtime.now()
    }

    /// Takes this lease's metrics out, for a release to record how the hold ended: what is left
    /// records nothing.
    pub(crate) fn take_observed(&mut self) -> observe::HeldLease {
        let detached = self.observed.detached(&self.runtime);
        std::mem::replace(&mut self.observed, detached)
    }

    /// Sleeps on the guard's runtime.
    pub(crate) fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.runtime.sleep(duration)
    }
}

/// A fresh token: `{owner}:{uuid}` when the acquirer names itself (an election's candidate), so that
/// the holder can be named from the key's value; otherwise a bare random uuid.
pub(crate) fn new_token(owner: Option<&str>) -> Arc<str> {
    let uuid = uuid::Uuid::new_v4();
    match owner {
        Some(owner) => Arc::from(format!("{owner}:{uuid}")),
        None => Arc::from(uuid.to_string()),
    }
}

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
    /// For a holder that shares its key with others (a semaphore's permits, a read-write lock's holds):
    /// its member of the key's sorted set, and how many waiters its release wakes. `None`: the key is
    /// the lock, holding the token.
    share: Option<(Arc<str>, u32)>,
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
            share: None,
        }
    }

    /// A lease on the member `member` of the sorted set `key` ([`script::SHARE_RELEASE`] releases it),
    /// whose release wakes up to `wake` waiters elsewhere.
    pub(crate) fn shared(
        backend: Arc<dyn LockBackend>,
        key: Arc<str>,
        signal: Arc<str>,
        token: Arc<str>,
        member: Arc<str>,
        wake: u32,
        horizon: Duration,
    ) -> Self {
        let mut lease = Self::new(backend, key, signal, token, horizon);
        lease.share = Some((member, wake));
        lease
    }

    /// Releases the lock if it still holds our token (or our member) and wakes waiters elsewhere: one
    /// round trip.
    pub(crate) async fn release(&self) -> std::result::Result<Released, crate::BackendError> {
        release_call(
            &*self.backend,
            &self.key,
            &self.signal,
            &self.token,
            self.share.as_ref(),
        )
        .await
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
        let (backend, key, signal, token, share) = (
            self.backend.clone(),
            self.key.clone(),
            self.signal.clone(),
            self.token.clone(),
            self.share.clone(),
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
                let (backend, key, signal, token, share) = (
                    backend.clone(),
                    key.clone(),
                    signal.clone(),
                    token.clone(),
                    share.clone(),
                );
                Box::pin(async move {
                    release_call(&*backend, &key, &signal, &token, share.as_ref())
                        .await
                        .map(drop)
                })
            },
        );
    }
}

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
