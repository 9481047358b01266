//! The engine of primitives whose holders share one key ([`Semaphore`](crate::Semaphore),
//! [`RwLock`](crate::RwLock)): [`ShareGuard`], one holder's member of the key's sorted set (renewed,
//! extended, checked and released by the `SHARE_*` scripts of [`script`]), and [`acquire_waiting`],
//! the wait between attempts.
//!
//! Each primitive owns only its acquisition script and its guard's name and extra methods; the
//! validity rules, `hold`, release-on-drop and `run` are the lease engine's, as for the mutex.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{BoxFuture, select};

use crate::backend::{LockBackend, runtime_of};
use crate::error::{LockError, Result};
use crate::lease::config::ValidatedConfig;
use crate::lease::{Held, Holding, Lease, Released, Validity, Written, hold_renewed, observe};
use crate::script::{self, Script};
use crate::time::{Moment, to_millis, validity_deadline};

/// One holder's share of a key: its member of the key's sorted set, scored by the member's own expiry
/// on the server's clock. The primitives' guards ([`Permit`](crate::Permit),
/// [`ReadGuard`](crate::ReadGuard), [`WriteGuard`](crate::WriteGuard)) wrap one.
pub(crate) struct ShareGuard {
    lease: Lease,
    holding: Holding,
    /// The member: what identifies this holder in the set (`"<permits>:<token>"`, `"read:<token>"`).
    member: Arc<str>,
    validity: Mutex<Validity>,
}

impl ShareGuard {
    /// A share granted by a request sent at `holding.acquired_at`; `lease` was armed before sending.
    pub(crate) fn new(mut lease: Lease, holding: Holding, member: Arc<str>) -> Self {
        // Granted: no acquiring request of this token is in flight any more.
        lease.in_flight = false;
        let sent_at = holding.acquired_at;
        let until = validity_deadline(sent_at, holding.ttl);
        Self {
            lease,
            holding,
            member,
            validity: Mutex::new(Validity::granted(sent_at, Some(until))),
        }
    }

    pub(crate) fn fence(&self) -> Option<u64> {
        self.holding.fence
    }

    pub(crate) fn token(&self) -> &str {
        &self.lease.token
    }

    pub(crate) fn key(&self) -> &str {
        &self.lease.key
    }

    pub(crate) fn member(&self) -> &Arc<str> {
        &self.member
    }

    pub(crate) fn holding(&self) -> &Holding {
        &self.holding
    }

    pub(crate) fn backend(&self) -> &Arc<dyn LockBackend> {
        &self.lease.backend
    }

    pub(crate) fn valid_for(&self) -> Duration {
        self.validity().left(self.holding.now())
    }

    pub(crate) async fn is_owner(&self) -> Result<bool> {
        if self.valid_for().is_zero() {
            return Ok(false);
        }
        let sent_at = self.holding.now();
        let reply = self.eval(&script::SHARE_IS_OWNER, &[]).await?;
        let ours = reply.as_int() == Some(1);
        if !ours {
            self.validity().disown(sent_at);
        }
        Ok(ours)
    }

    pub(crate) async fn extend(&self, by: Duration) -> Result<bool> {
        let by_ms = to_millis("extend", by)?;
        // Read first: a guard held across the `match` would deadlock with `settle` below.
        let known = self.validity().server_expiry_ms();
        let base = match known {
            Some(known) => known,
            None => {
                let sent_at = self.holding.now();
                match self.eval_written(&script::SHARE_EXPIRY, &[]).await? {
                    Some(read) => {
                        self.settle(sent_at, Some(read));
                        read.server_expiry_ms
                    }
                    None => return Ok(self.settle(sent_at, None)),
                }
            }
        };
        let target = base.saturating_add(by_ms).to_string();
        let sent_at = self.holding.now();
        let written = self.eval_written(&script::SHARE_EXTEND, &[&target]).await?;
        Ok(self.settle(sent_at, written))
    }

    pub(crate) async fn renew(&self) -> Result<bool> {
        let sent_at = self.holding.now();
        let written = self
            .eval_written(&script::SHARE_RENEW, &[&self.holding.ttl_arg])
            .await?;
        Ok(self.settle(sent_at, written))
    }

    pub(crate) async fn release(mut self) -> Result<bool> {
        let valid = !self.valid_for().is_zero();
        let observed = self.holding.take_observed();
        let key = self.lease.key.clone();
        observed
            .releasing(&key, valid, self.release_unobserved(valid))
            .await
    }

    async fn release_unobserved(self, valid: bool) -> Result<bool> {
        let key = self.lease.key.clone();
        let released = self
            .lease
            .release()
            .await
            .map_err(|source| LockError::backend_failed(&key, source))?;
        self.lease.disarm();
        match released {
            Released::Deleted => Ok(true),
            Released::HeldByAnother => Ok(false),
            Released::Absent if !valid => Ok(false),
            Released::Absent => Err(LockError::InDoubt {
                key: key.to_string(),
                operation: "release",
                reason:
                    "this holder's entry was gone while its validity had not run out: a re-sent \
                         release of ours removed it, or the server lost it"
                        .into(),
                source: None,
            }),
        }
    }

    /// Gives the share up without telling the server: it was replaced by another member in the same
    /// script (a downgrade), so nothing is left to release under this member.
    pub(crate) fn into_parts(self) -> (Lease, Holding, Validity) {
        let validity = *self.validity();
        (self.lease, self.holding, validity)
    }

    /// A share that continues `validity` under another member of the same key (a downgrade).
    pub(crate) fn continued(
        lease: Lease,
        holding: Holding,
        member: Arc<str>,
        validity: Validity,
    ) -> Self {
        Self {
            lease,
            holding,
            member,
            validity: Mutex::new(validity),
        }
    }

    pub(crate) async fn hold<F: Future>(&self, work: F) -> Result<F::Output> {
        hold_renewed(self, work).await
    }

    fn settle(&self, sent_at: Moment, written: Option<Written>) -> bool {
        let mut validity = self.validity();
        match written {
            Some(written) => {
                validity.confirm(sent_at, written);
                true
            }
            None => {
                validity.disown(sent_at);
                false
            }
        }
    }

    fn validity(&self) -> std::sync::MutexGuard<'_, Validity> {
        // The critical sections only assign plain values; a poisoned value is still meaningful.
        self.validity
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs a member-checked script on the key: the member, then `extra_args`.
    async fn eval(&self, script: &Script, extra_args: &[&str]) -> Result<crate::ScriptValue> {
        let mut args = Vec::with_capacity(1 + extra_args.len());
        args.push(&*self.member);
        args.extend_from_slice(extra_args);
        self.lease
            .backend
            .eval_script(script, &[&self.lease.key], &args)
            .await
            .map_err(|source| LockError::backend_failed(&self.lease.key, source))
    }

    async fn eval_written(&self, script: &Script, extra_args: &[&str]) -> Result<Option<Written>> {
        let reply = self.eval(script, extra_args).await?;
        Written::from_reply(script, &reply)
            .map_err(|source| LockError::backend_failed(&self.lease.key, source))
    }
}

impl fmt::Debug for ShareGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShareGuard")
            .field("key", &self.lease.key)
            .field("member", &self.member)
            .field("ttl", &self.holding.ttl)
            .field("fence", &self.holding.fence)
            .field("valid_for", &self.valid_for())
            .finish()
    }
}

impl Held for ShareGuard {
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
        self.validity().end(self.holding.now());
        self.lease
            .release_in_background(self.holding.ttl, "hold reported the lease lost");
    }

    fn release_held(self) -> impl Future<Output = Result<bool>> + Send {
        self.release()
    }
}

/// Writes the methods every guard of a shared key has (a [`Permit`](crate::Permit), a
/// [`ReadGuard`](crate::ReadGuard), a [`WriteGuard`](crate::WriteGuard)), each delegating to its
/// `share: ShareGuard` field, with docs naming the primitive (`$primitive`, whose `fencing` is linked),
/// what a guard holds (`$hold`) and its entry in the key (`$entry`).
macro_rules! share_guard_methods {
    ($primitive:ident, $hold:literal, $entry:literal) => {
        #[doc = concat!("This ", $hold, "'s token (its entry in the key is `", $entry, "`).")]
        pub fn token(&self) -> &str {
            self.share.token()
        }

        /// The key, exactly as given.
        pub fn key(&self) -> &str {
            self.share.key()
        }

        #[doc = concat!("This ", $hold, "'s fence, with [`", stringify!($primitive), "::fencing`](crate::", stringify!($primitive), "::fencing):")]
        /// larger than every fence issued before for the key (see
        /// [`LockGuard::fence`](crate::LockGuard::fence)).
        pub fn fence(&self) -> Option<u64> {
            self.share.fence()
        }

        #[doc = concat!("How long the ", $hold, " is still ours by the lease clock (see")]
        /// [`LockGuard::valid_for`](crate::LockGuard::valid_for)).
        pub fn valid_for(&self) -> ::std::time::Duration {
            self.share.valid_for()
        }

        #[doc = concat!("Whether this ", $hold, " is still held. A `false` ends the validity for good.")]
        pub async fn is_owner(&self) -> $crate::Result<bool> {
            self.share.is_owner().await
        }

        #[doc = concat!("Moves this ", $hold, "'s expiry `by` later (see")]
        /// [`LockGuard::extend`](crate::LockGuard::extend)).
        pub async fn extend(&self, by: ::std::time::Duration) -> $crate::Result<bool> {
            self.share.extend(by).await
        }

        #[doc = concat!("Resets this ", $hold, "'s TTL to the configured timeout unless it lives longer (see")]
        /// [`LockGuard::renew`](crate::LockGuard::renew)).
        pub async fn renew(&self) -> $crate::Result<bool> {
            self.share.renew().await
        }

        #[doc = concat!("Ends this ", $hold, ", waking waiters. `Ok(true)` when it was still ours, `Ok(false)`")]
        /// when it had expired (see [`LockGuard::release`](crate::LockGuard::release)).
        pub async fn release(self) -> $crate::Result<bool> {
            self.share.release().await
        }

        #[doc = concat!("Runs `work` while renewing the ", $hold, " (see")]
        /// [`LockGuard::hold`](crate::LockGuard::hold)).
        pub async fn hold<F: Future>(&self, work: F) -> $crate::Result<F::Output> {
            self.share.hold(work).await
        }
    };
}

/// Writes [`Held`](crate::lease::Held) for a guard of a shared key, delegating to its `share` field.
macro_rules! held_by_share {
    ($guard:ty) => {
        impl $crate::lease::Held for $guard {
            fn holding(&self) -> &$crate::lease::Holding {
                self.share.holding()
            }

            fn remaining(&self) -> ::std::time::Duration {
                self.share.valid_for()
            }

            fn renew_once(&self) -> ::futures::future::BoxFuture<'_, $crate::Result<bool>> {
                Box::pin(self.share.renew())
            }

            fn release_lost(&self) {
                $crate::lease::Held::release_lost(&self.share);
            }

            fn release_held(self) -> impl Future<Output = $crate::Result<bool>> + Send {
                self.share.release()
            }
        }
    };
}

pub(crate) use {held_by_share, share_guard_methods};

/// One request that may grant a share: the primitive's acquiring script, sent with the key, its
/// companions and (when fencing) the fence counter, for a fresh token's member `"<kind>:<token>"`.
pub(crate) struct ShareRequest<'a> {
    pub(crate) backend: &'a Arc<dyn LockBackend>,
    pub(crate) key: &'a Arc<str>,
    /// The list a release of the share pushes to.
    pub(crate) signal: &'a Arc<str>,
    pub(crate) config: &'a ValidatedConfig,
    pub(crate) script: &'a Script,
    /// Keys after the share's own key, before the fence counter.
    pub(crate) companions: &'a [&'a str],
    /// What the member starts with: `"read"`, `"write"`, the permits.
    pub(crate) kind: &'a str,
    /// How many waiters the share's release wakes.
    pub(crate) wake: u32,
}

/// What an acquiring script answered.
// Returned once per attempt and matched at once: boxing the guard would cost an allocation per
// acquisition for nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum ShareReply {
    /// `{1, fence}`: the share is ours.
    Granted(ShareGuard),
    /// `{code, detail}` with another code (0: busy): nothing was taken.
    Refused { code: i64, detail: i64 },
}

impl ShareRequest<'_> {
    /// Sends the request with the member first and then `args(member)`'s arguments. Cancellation-safe:
    /// a lease on the member is armed before sending, so a request that lands after its future was
    /// dropped, or that failed in transit, is released in the background.
    pub(crate) async fn send(self, args: &[&str]) -> Result<ShareReply> {
        self.config.observe.attempted();
        let token = crate::lease::new_token(None);
        let member: Arc<str> = Arc::from(format!("{}:{token}", self.kind));
        let pending = Lease::shared(
            self.backend.clone(),
            self.key.clone(),
            self.signal.clone(),
            token.clone(),
            member.clone(),
            self.wake,
            self.config.ttl,
        );
        let runtime = runtime_of(&**self.backend).clone();
        let sent_at = runtime.now();
        let mut keys: Vec<&str> = vec![self.key];
        keys.extend_from_slice(self.companions);
        if let Some(counter) = &self.config.fence_counter {
            keys.push(counter);
        }
        let mut all_args: Vec<&str> = Vec::with_capacity(1 + args.len());
        all_args.push(&member);
        all_args.extend_from_slice(args);
        let reply = self
            .backend
            .eval_script(self.script, &keys, &all_args)
            .await
            // The request may have been applied before it failed; `pending` releases it on drop.
            .map_err(|source| LockError::backend_failed(self.key, source))?;
        let unexpected = || {
            LockError::backend_failed(
                self.key,
                crate::BackendError::permanent(
                    "redlease",
                    format!(
                        "unexpected reply from the {} script: {reply:?}",
                        self.script.name()
                    ),
                ),
            )
        };
        let crate::ScriptValue::Array(items) = &reply else {
            return Err(unexpected());
        };
        match items.as_slice() {
            [crate::ScriptValue::Int(1), crate::ScriptValue::Int(fence)] => {
                let fence = match &self.config.fence_counter {
                    Some(_) => Some(u64::try_from(*fence).map_err(|_| unexpected())?),
                    None => None,
                };
                let holding = Holding::new(
                    self.config,
                    self.key.clone(),
                    token,
                    fence,
                    sent_at,
                    runtime,
                );
                Ok(ShareReply::Granted(ShareGuard::new(
                    pending, holding, member,
                )))
            }
            [
                crate::ScriptValue::Int(code),
                crate::ScriptValue::Int(detail),
            ] => {
                pending.disarm();
                Ok(ShareReply::Refused {
                    code: *code,
                    detail: *detail,
                })
            }
            _ => Err(unexpected()),
        }
    }
}

/// What an acquisition of a share waits with between attempts.
pub(crate) struct Waiting<'a> {
    pub(crate) backend: &'a Arc<dyn LockBackend>,
    pub(crate) key: &'a str,
    /// The list releases push wake-ups to.
    pub(crate) signal: &'a str,
    pub(crate) config: &'a ValidatedConfig,
    /// The longest one wait may last, whatever the backoff says: a waiter whose place in Redis must be
    /// refreshed (a writer's intent) waits at most a third of its TTL.
    pub(crate) cap: Option<Duration>,
}

/// Tries `attempt` until it grants (`Ok(Some)`), fails, or the wait deadline passes
/// ([`LockError::Timeout`] naming the key). Between attempts: a blocking wait on the release signal
/// where the backend can block, otherwise the backoff; each wait capped (an expiry signals nothing).
///
/// `attempt` is a closure returning the attempt's future rather than an `AsyncFnMut`: the future of an
/// async closure's call borrows the closure for a lifetime the compiler cannot prove `Send` for every
/// instance of, so an acquisition awaited inside `tokio::spawn` would not compile.
///
/// Bounded as a whole by the wait deadline (see `Runtime::within_wait`): a call to a frozen server
/// does not outlast it.
pub(crate) async fn acquire_waiting<G, A, F>(waiting: Waiting<'_>, attempt: A) -> Result<G>
where
    A: FnMut() -> F,
    F: Future<Output = Result<Option<G>>>,
{
    let (observe, key, wait) = (
        &waiting.config.observe,
        waiting.key,
        waiting.config.wait_timeout,
    );
    let runtime = runtime_of(&**waiting.backend);
    let bounded = runtime.within_wait(key, wait, wait_for_grant(waiting, attempt));
    observe::acquiring(observe, key, runtime, bounded).await
}

/// [`acquire_waiting`], neither observed nor bounded by the caller's wait.
async fn wait_for_grant<G, A, F>(waiting: Waiting<'_>, mut attempt: A) -> Result<G>
where
    A: FnMut() -> F,
    F: Future<Output = Result<Option<G>>>,
{
    let runtime = runtime_of(&**waiting.backend);
    let started = runtime.now();
    let deadline = waiting
        .config
        .wait_timeout
        .and_then(|wait| started.checked_add(wait));
    let key: Arc<str> = Arc::from(waiting.key);
    let wakeups = runtime.lines().map(|lines| lines.wakeups.clone());
    let mut tries: u32 = 0;
    loop {
        // Registered before the attempt, so that a local release in between is not missed.
        let woken = wakeups.as_ref().map(|w| w.listen(&key));
        if let Some(granted) = attempt().await? {
            return Ok(granted);
        }
        let now = runtime.now();
        let left = match deadline {
            Some(deadline) if now >= deadline => {
                return Err(LockError::Timeout {
                    key: waiting.key.to_owned(),
                    waited: now - started,
                });
            }
            Some(deadline) => deadline - now,
            None => Duration::MAX,
        };
        let cap = waiting.cap.unwrap_or(Duration::MAX).min(left);
        // One local waiter per key blocks on the release signal (one connection, however many wait
        // here); the others wait for a local wake-up, capped by the backoff.
        let watching = match waiting.backend.capabilities().blocking_waits {
            true => match &wakeups {
                Some(wakeups) => wakeups.watch(&key),
                None => None,
            },
            false => None,
        };
        let blocks = watching.is_some()
            || (wakeups.is_none() && waiting.backend.capabilities().blocking_waits);
        // Beyond the backend's blocking waits (`Runtime::max_blocking_waits`), poll.
        let permit = blocks.then(|| runtime.blocking_wait()).flatten();
        if let Some(_permit) = permit {
            // Never cancelled by a local wake-up: a release made here pushes the signal too, and a
            // blocking wait dropped mid-way would cost its connection.
            let signalled = waiting
                .backend
                .wait_for_release(waiting.signal, waiting.config.backoff.max().min(cap))
                .await
                .map_err(|source| LockError::backend_failed(waiting.key, source))?;
            if signalled && let Some(wakeups) = &wakeups {
                // A release: the next local waiter tries too.
                wakeups.wake(&key, 1);
            }
        } else {
            let delay = waiting.config.backoff.delay(tries).min(cap);
            let sleep = runtime.sleep(delay);
            match woken {
                Some(woken) => drop(select(sleep, woken).await),
                None => sleep.await,
            }
        }
        drop(watching);
        tries = tries.saturating_add(1);
    }
}
