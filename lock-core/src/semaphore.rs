//! [`Semaphore`]: at most `limit` permits held at once across every process, each permit a lease on
//! server time; and [`Permit`], one acquisition of some of them.

use std::fmt;
use std::sync::Arc;

use crate::backend::{BackendError, LockBackend, ScriptValue, runtime_of};
use crate::error::{LockError, Result};
use crate::lease::config::{LeaseConfig, ValidatedConfig};
use crate::lease::observe::Primitive;
use crate::lease::{self, lease_settings};
use crate::share::{
    ShareGuard, ShareReply, ShareRequest, Waiting, acquire_waiting, held_by_share,
    share_guard_methods,
};
use crate::{keys, script};

/// A counting semaphore on one Redis key: at most `limit` permits held at once, across every process.
///
/// Every acquisition is a lease with the semaphore's [`timeout`](Self::timeout) as TTL, expiring on its
/// own by the server's clock, so the permits of a crashed holder come back after their TTL while live
/// holders renew only their own ([`Permit::hold`]).
///
/// # In Redis
///
/// The key is a sorted set: one member per acquisition, `"<permits>:<token>"`, scored by its expiry
/// (Unix milliseconds on the server's clock), and the member `limit:<n>` scored 0, the limit the
/// permits are held under. `ZRANGE uploads 0 -1 WITHSCORES` shows who holds what until when. The key
/// expires with its longest-lived holder and is deleted when the last one releases; with
/// [`fencing`](Self::fencing), the fence counter beside it stays (as for [`RedisLock`](crate::RedisLock)).
///
/// Acquiring under a different `limit` while permits are held under another is
/// [`LockError::InvalidArgument`] naming both (a misconfiguration, never a silent resize); once no
/// permit is held, the new limit takes effect.
///
/// ```
/// use std::time::Duration;
/// use lock_core::{Semaphore, memory::MemoryBackend};
///
/// # futures::executor::block_on(async {
/// let uploads = Semaphore::new(MemoryBackend::new(), "uploads", 2)
///     .timeout(Duration::from_secs(30))
///     .wait_timeout(Some(Duration::from_secs(5)));
/// let first = uploads.acquire().await?;
/// let second = uploads.acquire().await?;
/// assert!(uploads.try_acquire().await?.is_none());
/// assert_eq!(uploads.available().await?, 0);
/// assert!(first.release().await?);
/// assert_eq!(uploads.available().await?, 1);
/// # drop(second);
/// # Ok::<(), lock_core::LockError>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct Semaphore {
    backend: Arc<dyn LockBackend>,
    key: Arc<str>,
    limit: u32,
    config: LeaseConfig,
}

impl Semaphore {
    /// A semaphore of `limit` permits on `key` through `backend`, with a 30 s TTL per acquisition and a
    /// 30 s acquisition deadline. Nothing is checked or sent until it is used: a `limit` of 0 or an
    /// empty key is then [`LockError::InvalidArgument`].
    pub fn new(backend: impl LockBackend, key: impl Into<String>, limit: u32) -> Self {
        Self {
            backend: Arc::new(backend),
            key: Arc::from(key.into()),
            limit,
            config: LeaseConfig::default(),
        }
    }

    lease_settings! {
        guard = Permit;
        /// On a semaphore, each acquisition's TTL: its permits come back this long after its holder
        /// stops renewing.
        timeout;
        wait_timeout;
        backoff;
        max_hold;
        /// On a semaphore, fences come from the same counter a [`RedisLock`](crate::RedisLock) on the
        /// key would use, and strictly increase across all acquisitions of the key.
        fencing;
        metrics_name;
    }

    /// The semaphore's key, exactly as given.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The number of permits, as given to [`new`](Self::new).
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Acquires one permit, waiting until one is free or the wait deadline passes
    /// ([`LockError::Timeout`] naming the key). Cancellation-safe: dropping the future while a request
    /// is in flight gives back whatever it may have taken, in the background where the backend can
    /// spawn, otherwise when the TTL runs out.
    pub async fn acquire(&self) -> Result<Permit> {
        self.acquire_many(1).await
    }

    /// Acquires `permits` permits as one lease (one token, renewed and released together). `0` or more
    /// than the limit is [`LockError::InvalidArgument`] naming `permits`, and nothing is sent.
    ///
    /// Waiters are not queued: a request for many permits can be overtaken by requests for fewer while
    /// it waits.
    pub async fn acquire_many(&self, permits: u32) -> Result<Permit> {
        let plan = self.plan(permits)?;
        let waiting = Waiting {
            backend: &self.backend,
            key: &self.key,
            signal: &plan.signal,
            config: &plan.config,
            cap: None,
        };
        acquire_waiting(waiting, || self.attempt(&plan)).await
    }

    /// One attempt at one permit: `Ok(None)` when none is free.
    pub async fn try_acquire(&self) -> Result<Option<Permit>> {
        self.try_acquire_many(1).await
    }

    /// One attempt at `permits` permits: `Ok(None)` when too few are free.
    pub async fn try_acquire_many(&self, permits: u32) -> Result<Option<Permit>> {
        let plan = self.plan(permits)?;
        let wait = plan.config.wait_timeout;
        runtime_of(&*self.backend)
            .within_wait(&self.key, wait, self.attempt(&plan))
            .await
    }

    /// The limit minus the permits held now (expired holders do not count), by the server's clock.
    /// [`LockError::InvalidArgument`] when permits are held under another limit.
    pub async fn available(&self) -> Result<u32> {
        self.check_limit()?;
        self.config.validate(&self.key)?;
        let reply = self
            .backend
            .eval_script(&script::SEMAPHORE_HELD, &[&self.key], &[])
            .await
            .map_err(|source| LockError::backend_failed(&self.key, source))?;
        let unexpected = || {
            LockError::backend_failed(
                &self.key,
                BackendError::permanent(
                    "redlease",
                    format!("unexpected reply from the semaphore_held script: {reply:?}"),
                ),
            )
        };
        let (held, stored) = match &reply {
            ScriptValue::Array(items) => match items.as_slice() {
                [ScriptValue::Int(held), ScriptValue::Int(stored)] => (*held, *stored),
                _ => return Err(unexpected()),
            },
            _ => return Err(unexpected()),
        };
        let held = u32::try_from(held).map_err(|_| unexpected())?;
        if held > 0 && stored >= 0 && stored != i64::from(self.limit) {
            return Err(self.limit_mismatch(stored));
        }
        Ok(self.limit.saturating_sub(held))
    }

    /// Acquires one permit, runs `body` while holding it (renewed as [`Permit::hold`] does), then
    /// releases it; the outcomes are those of [`RedisLock::run`](crate::RedisLock::run).
    pub async fn run<F, T>(&self, body: F) -> Result<T>
    where
        F: AsyncFnOnce(&Permit) -> T,
    {
        lease::run(self.acquire().await?, body).await
    }

    fn check_limit(&self) -> Result<()> {
        match self.limit {
            0 => Err(LockError::invalid(
                "limit",
                "a semaphore needs at least one permit",
            )),
            _ => Ok(()),
        }
    }

    fn plan(&self, permits: u32) -> Result<Plan> {
        self.check_limit()?;
        if permits == 0 || permits > self.limit {
            return Err(LockError::invalid(
                "permits",
                format!(
                    "asked for {permits} permits of a semaphore of {}: ask for 1 to {0}",
                    self.limit
                ),
            ));
        }
        let config = self.config.validate(&self.key)?;
        Ok(Plan {
            config: ValidatedConfig {
                observe: config.observe.for_primitive(Primitive::Semaphore),
                ..config
            },
            signal: Arc::from(keys::release_signal(&self.key)?),
            permits,
        })
    }

    fn limit_mismatch(&self, stored: i64) -> LockError {
        LockError::invalid(
            "limit",
            format!(
                "{} here, but permits of {:?} are held under a limit of {stored}",
                self.limit, self.key
            ),
        )
    }

    async fn attempt(&self, plan: &Plan) -> Result<Option<Permit>> {
        let request = ShareRequest {
            backend: &self.backend,
            key: &self.key,
            signal: &plan.signal,
            config: &plan.config,
            script: &script::SEMAPHORE_ACQUIRE,
            companions: &[],
            kind: &plan.permits.to_string(),
            wake: plan.permits,
        };
        let (permits, limit) = (plan.permits.to_string(), self.limit.to_string());
        let reply = request
            .send(&[&permits, &limit, &plan.config.ttl_arg])
            .await?;
        match reply {
            ShareReply::Granted(share) => Ok(Some(Permit {
                share,
                permits: plan.permits,
            })),
            ShareReply::Refused { code: 0, .. } => Ok(None),
            ShareReply::Refused {
                code: -1,
                detail: stored,
            } => Err(self.limit_mismatch(stored)),
            ShareReply::Refused { code, detail } => Err(LockError::backend_failed(
                &self.key,
                BackendError::permanent(
                    "redlease",
                    format!(
                        "unexpected reply from the semaphore_acquire script: {{{code}, {detail}}}"
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
    permits: u32,
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore")
            .field("key", &self.key)
            .field("limit", &self.limit)
            .field("timeout", &self.config.timeout)
            .field("wait_timeout", &self.config.wait_timeout)
            .field("backoff", &self.config.backoff)
            .field("max_hold", &self.config.max_hold)
            .field("fencing", &self.config.fencing)
            .field("backend", &self.backend)
            .finish()
    }
}

/// One acquisition of [`permits`](Self::permits) permits of a [`Semaphore`], held as one lease.
///
/// Its methods are those of [`LockGuard`](crate::LockGuard), checked against this acquisition's own
/// entry in the semaphore's key: a permit that expired answers `Ok(false)`, and never touches another
/// holder's. Dropping it without [`release`](Self::release) releases it in the background where the
/// backend can spawn; otherwise its TTL frees it.
pub struct Permit {
    share: ShareGuard,
    permits: u32,
}

impl Permit {
    share_guard_methods!(Semaphore, "permit", "\"<permits>:<token>\"");

    /// How many permits this acquisition holds.
    pub fn permits(&self) -> u32 {
        self.permits
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("permits", &self.permits)
            .field("share", &self.share)
            .finish()
    }
}

held_by_share!(Permit);

// Inspection (`inspect`).
mod inspect;
