//! [`RwLock`]: a read-write lock with writer preference across every process, each hold a lease on
//! server time; [`ReadGuard`] and [`WriteGuard`], one hold each.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::backend::{BackendError, LockBackend, runtime_of};
use crate::error::{LockError, Result};
use crate::lease::config::{LeaseConfig, ValidatedConfig};
use crate::lease::observe::Primitive;
use crate::lease::{self, Lease, Until, Written, lease_settings, retry_in_background};
use crate::script::{self, Script};
use crate::share::{
    ShareGuard, ShareReply, ShareRequest, Waiting, acquire_waiting, held_by_share,
    share_guard_methods,
};
use crate::{keys, script::RW_LEAVE};

/// How many waiters a reader's release wakes: readers never wait for readers, so only a writer can
/// use it.
const READ_WAKE: u32 = 1;
/// How many waiters a writer's release, a downgrade or a writer giving up wakes: the readers it let
/// in (and the next writer).
const WRITE_WAKE: u32 = 16;
/// How long a wake-up nobody took stays in the signal list, as for every release.
const SIGNAL_LINGER_MS: &str = "500";

/// A read-write lock on one Redis key, with writer preference: many readers at once, or one writer.
///
/// Every hold is a lease with the lock's [`timeout`](Self::timeout) as TTL, expiring on its own by the
/// server's clock: a crashed reader's hold ends after its TTL whatever the other readers do, since
/// each holder renews only its own ([`ReadGuard::hold`]).
///
/// **Writer preference.** Once a writer waits, new readers wait behind it; the readers already in
/// finish (or expire), and the writer gets in, however many readers keep arriving. A writer that gives
/// up ([`LockError::Timeout`]) or is cancelled stops blocking readers at once (in the background where
/// the backend can spawn); one that dies stops blocking them within its TTL. Writers are not queued
/// among themselves: when the last holder leaves, any waiting writer may be next.
///
/// **No upgrade.** A read hold cannot become a write hold: two readers upgrading at once would each
/// wait for the other to leave, for ever (each still holds its read share). Release the read hold and
/// [`write`](Self::write) instead, and check again what was read. The other way is safe:
/// [`WriteGuard::downgrade`] turns a write hold into a read hold in one script.
///
/// # In Redis
///
/// The key is a sorted set of holders scored by their expiry (Unix milliseconds on the server's
/// clock): `read:<token>` members, or a single `write:<token>`. `ZRANGE doc:42 0 -1 WITHSCORES` shows
/// who holds it until when. Waiting writers are the members of a companion sorted set
/// (`doc:42:redlease:writers:{...}`, in the key's cluster slot), each scored by when its intent
/// lapses unless refreshed. Both keys expire with their last member and are gone once nobody holds or
/// waits; with [`fencing`](Self::fencing), the fence counter beside the key stays (as for
/// [`RedisLock`](crate::RedisLock)).
///
/// ```
/// use std::time::Duration;
/// use lock_core::{RwLock, memory::MemoryBackend};
///
/// # futures::executor::block_on(async {
/// let doc = RwLock::new(MemoryBackend::new(), "doc:42")
///     .timeout(Duration::from_secs(30))
///     .wait_timeout(Some(Duration::from_secs(5)));
/// let first = doc.read().await?;
/// let second = doc.read().await?;
/// assert!(doc.try_write().await?.is_none());
/// assert!(first.release().await?);
/// assert!(second.release().await?);
///
/// let writer = doc.write().await?;
/// assert!(doc.try_read().await?.is_none());
/// let reader = writer.downgrade().await?;
/// assert!(doc.try_read().await?.is_some());
/// assert!(reader.release().await?);
/// # Ok::<(), lock_core::LockError>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct RwLock {
    backend: Arc<dyn LockBackend>,
    key: Arc<str>,
    config: LeaseConfig,
}

impl RwLock {
    /// A read-write lock on `key` through `backend`, with a 30 s TTL per hold and a 30 s acquisition
    /// deadline. Nothing is checked or sent until it is used: an empty key is then
    /// [`LockError::InvalidArgument`].
    pub fn new(backend: impl LockBackend, key: impl Into<String>) -> Self {
        Self {
            backend: Arc::new(backend),
            key: Arc::from(key.into()),
            config: LeaseConfig::default(),
        }
    }

    lease_settings! {
        guard = WriteGuard;
        /// On a read-write lock, the TTL of each read and write hold, and of a waiting writer's
        /// intent (a waiting writer refreshes it at least three times per TTL).
        timeout;
        wait_timeout;
        backoff;
        /// On a read-write lock, read and write holds take fences from the same counter a
        /// [`RedisLock`](crate::RedisLock) on the key would use: they strictly increase across all
        /// holds of the key, so a write hold's fence exceeds every fence issued before it.
        fencing;
        /// On a read-write lock, the metrics' `primitive` label is `read` or `write`, by hold.
        metrics_name;
    }

    // Written out rather than by `lease_settings!`, whose docs link a `run` this lock names
    // `run_read` and `run_write`.
    /// The longest a hold may be kept under [`ReadGuard::hold`] or [`WriteGuard::hold`] (and so
    /// [`run_read`](Self::run_read) and [`run_write`](Self::run_write)), counted from the acquisition:
    /// past it, renewal stops and `hold` returns [`LockError::Lost`]. Bounds a renewal loop that
    /// would otherwise outlive a hung task. Zero is [`LockError::InvalidArgument`] naming `max_hold`
    /// when the lock is used. Default: no bound. A downgraded hold keeps the bound of its write hold.
    pub fn max_hold(mut self, max_hold: Duration) -> Self {
        self.config.max_hold = Some(max_hold);
        self
    }

    /// The bound set by [`max_hold`](Self::max_hold), if any.
    pub fn get_max_hold(&self) -> Option<Duration> {
        self.config.max_hold
    }

    /// The lock's key, exactly as given.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Takes a read hold, waiting while a writer holds or waits, until the wait deadline passes
    /// ([`LockError::Timeout`] naming the key). Cancellation-safe: dropping the future while a request
    /// is in flight releases whatever it may have taken, in the background where the backend can
    /// spawn, otherwise when the TTL runs out.
    pub async fn read(&self) -> Result<ReadGuard> {
        let plan = self.plan(Primitive::Read)?;
        let waiting = Waiting {
            backend: &self.backend,
            key: &self.key,
            signal: &plan.signal,
            config: &plan.config,
            cap: None,
        };
        // A plain closure returning the attempt, not an async closure: its future is then `Send` for
        // every lifetime, as `tokio::spawn` needs.
        acquire_waiting(waiting, || self.try_read_with(&plan)).await
    }

    /// One attempt at a read hold: `Ok(None)` while a writer holds or waits.
    pub async fn try_read(&self) -> Result<Option<ReadGuard>> {
        let plan = self.plan(Primitive::Read)?;
        let wait = plan.config.wait_timeout;
        runtime_of(&*self.backend)
            .within_wait(&self.key, wait, self.try_read_with(&plan))
            .await
    }

    /// Takes the write hold, waiting until no reader or writer holds, or the wait deadline passes
    /// ([`LockError::Timeout`] naming the key). While it waits, its intent keeps new readers out.
    /// Cancellation-safe as [`read`](Self::read); a cancelled writer's intent is removed in the
    /// background where the backend can spawn, otherwise it lapses within one TTL.
    pub async fn write(&self) -> Result<WriteGuard> {
        let plan = self.plan(Primitive::Write)?;
        let wait = plan.config.wait_timeout;
        // Bounded as a whole, so that leaving after a timeout does not outlast the deadline either.
        runtime_of(&*self.backend)
            .within_wait(&self.key, wait, self.write_planned(&plan))
            .await
    }

    /// `write` after validation, bounded by the caller.
    async fn write_planned(&self, plan: &Plan) -> Result<WriteGuard> {
        // A single attempt waits for nothing, so it has no place to keep.
        let join = plan.config.wait_timeout != Some(Duration::ZERO);
        let intent = Intent::new(&self.backend, &self.key, plan);
        let waiting = Waiting {
            backend: &self.backend,
            key: &self.key,
            signal: &plan.signal,
            config: &plan.config,
            // Refreshed well before it lapses, so a live writer never loses its place.
            cap: Some(plan.config.ttl / 3),
        };
        let outcome = acquire_waiting(waiting, || self.try_write_with(plan, &intent, join)).await;
        match outcome {
            // Granted: the same script removed the intent.
            Ok(guard) => {
                intent.disarm();
                Ok(guard)
            }
            Err(timeout @ LockError::Timeout { .. }) => {
                // Gave up: stop blocking readers now. Should that fail, the drop retries it in the
                // background.
                if intent.leave().await.is_ok() {
                    intent.disarm();
                }
                Err(timeout)
            }
            // The intent may be registered: the drop removes it in the background.
            Err(other) => Err(other),
        }
    }

    /// One attempt at the write hold: `Ok(None)` while anyone holds. Registers no intent, so it never
    /// keeps readers out.
    pub async fn try_write(&self) -> Result<Option<WriteGuard>> {
        let plan = self.plan(Primitive::Write)?;
        let intent = Intent::new(&self.backend, &self.key, &plan);
        let wait = plan.config.wait_timeout;
        let attempt = self.try_write_with(&plan, &intent, false);
        let granted = runtime_of(&*self.backend)
            .within_wait(&self.key, wait, attempt)
            .await;
        intent.disarm();
        granted
    }

    /// Takes a read hold, runs `body` while holding it (renewed as [`ReadGuard::hold`] does), then
    /// releases it; the outcomes are those of [`RedisLock::run`](crate::RedisLock::run).
    pub async fn run_read<F, T>(&self, body: F) -> Result<T>
    where
        F: AsyncFnOnce(&ReadGuard) -> T,
    {
        lease::run(self.read().await?, body).await
    }

    /// Takes the write hold, runs `body` while holding it (renewed as [`WriteGuard::hold`] does),
    /// then releases it; the outcomes are those of [`RedisLock::run`](crate::RedisLock::run).
    pub async fn run_write<F, T>(&self, body: F) -> Result<T>
    where
        F: AsyncFnOnce(&WriteGuard) -> T,
    {
        lease::run(self.write().await?, body).await
    }

    fn plan(&self, primitive: Primitive) -> Result<Plan> {
        let config = self.config.validate(&self.key)?;
        Ok(Plan {
            config: ValidatedConfig {
                observe: config.observe.for_primitive(primitive),
                ..config
            },
            signal: Arc::from(keys::release_signal(&self.key)?),
            writers: Arc::from(keys::rwlock_writers(&self.key)?),
        })
    }

    async fn try_read_with(&self, plan: &Plan) -> Result<Option<ReadGuard>> {
        let share = self
            .attempt(plan, &script::RW_READ, "read", READ_WAKE, &[], None)
            .await?;
        Ok(share.map(|share| ReadGuard { share }))
    }

    async fn try_write_with(
        &self,
        plan: &Plan,
        intent: &Intent,
        join: bool,
    ) -> Result<Option<WriteGuard>> {
        let join_arg = if join { "1" } else { "0" };
        let share = self
            .attempt(
                plan,
                &script::RW_WRITE,
                "write",
                WRITE_WAKE,
                &[&intent.id, join_arg],
                join.then_some(intent),
            )
            .await?;
        Ok(share.map(|share| WriteGuard { share }))
    }

    /// One attempt of `script` for the member `"<kind>:<token>"` (a fresh token), with the TTL and
    /// then `extra_args`; `intent` is the writer's place the request may register.
    async fn attempt(
        &self,
        plan: &Plan,
        script: &Script,
        kind: &str,
        wake: u32,
        extra_args: &[&str],
        intent: Option<&Intent>,
    ) -> Result<Option<ShareGuard>> {
        let request = ShareRequest {
            backend: &self.backend,
            key: &self.key,
            signal: &plan.signal,
            config: &plan.config,
            script,
            companions: &[&plan.writers],
            kind,
            wake,
        };
        let mut args: Vec<&str> = vec![&plan.config.ttl_arg];
        args.extend_from_slice(extra_args);
        if let Some(intent) = intent {
            intent.sending();
        }
        let reply = request.send(&args).await?;
        if let Some(intent) = intent {
            intent.answered();
        }
        match reply {
            ShareReply::Granted(share) => Ok(Some(share)),
            ShareReply::Refused { code: 0, .. } => Ok(None),
            ShareReply::Refused { code, detail } => Err(LockError::backend_failed(
                &self.key,
                BackendError::permanent(
                    "redlease",
                    format!(
                        "unexpected reply from the {} script: {{{code}, {detail}}}",
                        script.name()
                    ),
                ),
            )),
        }
    }
}

/// What `plan` worked out once per acquisition.
struct Plan {
    config: ValidatedConfig,
    signal: Arc<str>,
    writers: Arc<str>,
}

impl fmt::Debug for RwLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RwLock")
            .field("key", &self.key)
            .field("timeout", &self.config.timeout)
            .field("wait_timeout", &self.config.wait_timeout)
            .field("backoff", &self.config.backoff)
            .field("max_hold", &self.config.max_hold)
            .field("fencing", &self.config.fencing)
            .field("backend", &self.backend)
            .finish()
    }
}

/// A waiting writer's place: its intent in the writers' key, removed when the writer gives up, and
/// in the background when it is dropped while armed (the writer was cancelled or failed).
struct Intent {
    backend: Arc<dyn LockBackend>,
    key: Arc<str>,
    writers: Arc<str>,
    signal: Arc<str>,
    /// The intent's member: one per `write` call, refreshed by each of its attempts.
    id: Arc<str>,
    horizon: Duration,
    /// A request that may register the intent was sent.
    sent: AtomicBool,
    /// Such a request is in flight: it may land after a first removal.
    in_flight: AtomicBool,
    armed: bool,
}

impl Intent {
    fn new(backend: &Arc<dyn LockBackend>, key: &Arc<str>, plan: &Plan) -> Self {
        Self {
            backend: backend.clone(),
            key: key.clone(),
            writers: plan.writers.clone(),
            signal: plan.signal.clone(),
            id: lease::new_token(None),
            horizon: plan.config.ttl,
            sent: AtomicBool::new(false),
            in_flight: AtomicBool::new(false),
            armed: true,
        }
    }

    fn sending(&self) {
        self.sent.store(true, Ordering::SeqCst);
        self.in_flight.store(true, Ordering::SeqCst);
    }

    fn answered(&self) {
        self.in_flight.store(false, Ordering::SeqCst);
    }

    /// Removes the intent now, waking readers it kept out.
    async fn leave(&self) -> std::result::Result<(), BackendError> {
        leave(&*self.backend, &self.writers, &self.signal, &self.id).await
    }

    /// Nothing to remove: the intent was never sent, was removed, or the grant removed it.
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Intent {
    fn drop(&mut self) {
        if !self.armed || !self.sent.load(Ordering::SeqCst) {
            return;
        }
        let until = match self.in_flight.load(Ordering::SeqCst) {
            true => Until::Horizon,
            false => Until::Answered,
        };
        let (backend, writers, signal, id) = (
            self.backend.clone(),
            self.writers.clone(),
            self.signal.clone(),
            self.id.clone(),
        );
        retry_in_background(
            self.backend.clone(),
            self.key.clone(),
            self.horizon,
            "a waiting writer was cancelled or failed",
            until,
            move || {
                let (backend, writers, signal, id) =
                    (backend.clone(), writers.clone(), signal.clone(), id.clone());
                Box::pin(async move { leave(&*backend, &writers, &signal, &id).await })
            },
        );
    }
}

/// Removes the intent `id` from `writers` ([`script::RW_LEAVE`]), waking readers where the backend
/// sends signals.
async fn leave(
    backend: &dyn LockBackend,
    writers: &str,
    signal: &str,
    id: &str,
) -> std::result::Result<(), BackendError> {
    let wake = match backend.capabilities().release_signals {
        true => WRITE_WAKE,
        false => 0,
    };
    backend
        .eval_script(
            &RW_LEAVE,
            &[writers, signal],
            &[id, &wake.to_string(), SIGNAL_LINGER_MS],
        )
        .await
        .map(drop)
}

/// A read hold of a [`RwLock`]: other readers may hold it too, no writer does.
///
/// Its methods are those of [`LockGuard`](crate::LockGuard), checked against this hold's own entry in
/// the key: a hold that expired answers `Ok(false)`, and never touches another holder's. Dropping it
/// without [`release`](Self::release) releases it in the background where the backend can spawn;
/// otherwise its TTL frees it.
pub struct ReadGuard {
    share: ShareGuard,
}

impl ReadGuard {
    share_guard_methods!(RwLock, "read hold", "\"read:<token>\"");
}

impl fmt::Debug for ReadGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadGuard")
            .field("share", &self.share)
            .finish()
    }
}

held_by_share!(ReadGuard);

/// The write hold of a [`RwLock`]: nobody else holds it.
///
/// Its methods are those of [`LockGuard`](crate::LockGuard), checked against this hold's own entry in
/// the key, and [`downgrade`](Self::downgrade) turns it into a read hold. Dropping it without
/// [`release`](Self::release) releases it in the background where the backend can spawn; otherwise
/// its TTL frees it.
pub struct WriteGuard {
    share: ShareGuard,
}

impl WriteGuard {
    share_guard_methods!(RwLock, "write hold", "\"write:<token>\"");

    /// Turns this write hold into a read hold in one script: no writer can get in between, and readers
    /// may join at once (unless a writer waits). The read hold keeps the token, the fence, the expiry
    /// and the `max_hold` of the write hold; its entry becomes `read:<token>`.
    ///
    /// [`LockError::Lost`] when the write hold had already expired: nothing was written, and the
    /// caller holds nothing. If the request fails ([`LockError::Backend`]), whether it was applied
    /// cannot be told: the hold, write or read, is released in the background where the backend can
    /// spawn, otherwise its TTL frees it. A re-sent request is harmless (a read hold found in place of
    /// the write hold is the downgrade already done).
    pub async fn downgrade(self) -> Result<ReadGuard> {
        let backend = self.share.backend().clone();
        let write_member = self.share.member().clone();
        let (write_lease, holding, validity) = self.share.into_parts();
        let key = write_lease.key.clone();
        let token = write_lease.token.clone();
        let signal: Arc<str> = Arc::from(keys::release_signal(&key)?);
        let read_member: Arc<str> = Arc::from(format!("read:{token}"));
        // Armed before sending, as an acquisition: if this future is dropped mid-request, both
        // members are released in the background, whichever the key holds.
        let mut read_lease = Lease::shared(
            backend.clone(),
            key.clone(),
            signal.clone(),
            token,
            read_member.clone(),
            READ_WAKE,
            holding.ttl,
        );
        let wake = match backend.capabilities().release_signals {
            true => WRITE_WAKE,
            false => 0,
        };
        let sent_at = holding.now();
        let reply = backend
            .eval_script(
                &script::RW_DOWNGRADE,
                &[&key, &signal],
                &[
                    &write_member,
                    &read_member,
                    &wake.to_string(),
                    SIGNAL_LINGER_MS,
                ],
            )
            .await
            .map_err(|source| LockError::backend_failed(&key, source))?;
        let written = Written::from_reply(&script::RW_DOWNGRADE, &reply)
            .map_err(|source| LockError::backend_failed(&key, source))?;
        match written {
            Some(written) => {
                // The write member is gone: replaced in the same script.
                write_lease.disarm();
                read_lease.in_flight = false;
                let mut validity = validity;
                validity.confirm(sent_at, written);
                let mut holding = holding;
                let runtime = runtime_of(&*backend);
                holding.observed.continue_as(Primitive::Read, runtime);
                Ok(ReadGuard {
                    share: ShareGuard::continued(read_lease, holding, read_member, validity),
                })
            }
            None => {
                read_lease.disarm();
                holding.observed.lost(lease::observe::LostReason::Expired);
                // `write_lease` drops armed: its expired entry is cleaned up in the background.
                drop(write_lease);
                Err(LockError::Lost {
                    key: key.to_string(),
                    reason: "the write hold expired before it could be downgraded".into(),
                })
            }
        }
    }
}

impl fmt::Debug for WriteGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteGuard")
            .field("share", &self.share)
            .finish()
    }
}

held_by_share!(WriteGuard);

// Inspection (`inspect`).
mod inspect;
