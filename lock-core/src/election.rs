//! [`Election`]: leader election as a primitive, after etcd's `Election` and Curator's `LeaderLatch`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::{LockBackend, ScriptValue, runtime_of};
use crate::backoff::Backoff;
use crate::error::{LockError, Result};
use crate::guard::LockGuard;
use crate::lease::observe;
use crate::lock::{Plan, RedisLock};
use crate::script;

/// How long `campaign` waits after a transient failure before it tries again: up to 20 ms at first,
/// doubling to 1 s, with full jitter.
const CAMPAIGN_RETRY: Backoff = Backoff::new(Duration::from_millis(20), Duration::from_secs(1));

/// Candidates campaigning for one leadership, stored as a fenced lock on `key`.
///
/// The leader holds the lock; its value is the term's token `{id}:{uuid}`, so anyone can ask who leads.
/// Every term gets a fence ([`Leadership::term`]) larger than all earlier terms. A leader that stops
/// renewing is replaced within its TTL plus one poll (at most 100 ms); one that resigns is replaced
/// within one poll.
///
/// # Asking "do I lead?"
///
/// A task leads while it holds a [`Leadership`] whose term is still current; a task without one does
/// not lead. [`Leadership::is_current`] asks Redis whether the election key still holds that term's
/// token, and anyone holding the token can compare it with [`leader_token`](Self::leader_token).
///
/// [`leader`](Self::leader) names a candidate id, which is **not** a leadership test: clones of an
/// `Election`, tasks sharing one, and processes given the same [`id`](Self::id) all share it, so
/// `leader() == get_id()` also holds for every follower with the leader's id, and for a leader
/// whose term already passed to another campaign with that id. Every campaign has a token of its own.
///
/// ```
/// use std::time::Duration;
/// use lock_core::{Election, memory::MemoryBackend};
///
/// # futures::executor::block_on(async {
/// let election = Election::new(MemoryBackend::new(), "scheduler").timeout(Duration::from_secs(10)).id("node-a");
/// let leadership = election.campaign().await?;
/// // "Do I lead?": this term's token is still the election key's value.
/// assert!(leadership.is_current().await?);
/// assert_eq!(election.leader_token().await?.as_deref(), Some(leadership.token()));
/// // Who leads, by candidate id (shared by clones: not a test of "do I lead?").
/// assert_eq!(election.leader().await?.as_deref(), Some("node-a"));
/// let _ = leadership.hold(async { /* lead */ }).await;
/// leadership.resign().await?;
/// # Ok::<(), lock_core::LockError>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct Election {
    lock: RedisLock,
    id: Arc<str>,
    /// How long `campaign` may take in all: `None` campaigns until it leads.
    wait: Option<Duration>,
}

impl Election {
    /// The default lease of a term: 10 s.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
    /// The default lease of a term: 10 s.
    #[deprecated(note = "use DEFAULT_TIMEOUT")]
    pub const DEFAULT_TTL: Duration = Self::DEFAULT_TIMEOUT;

    /// An election on `key` through `backend`, for a candidate with a random id and a 10 s lease.
    pub fn new(backend: impl LockBackend, key: impl Into<String>) -> Self {
        let lock = RedisLock::new(backend, key)
            .timeout(Self::DEFAULT_TIMEOUT)
            .wait_timeout(None)
            .fencing(true)
            // Polls at most 100 ms apart: a resignation is noticed well within 250 ms.
            .backoff(Backoff::new(
                Duration::from_millis(2),
                Duration::from_millis(100),
            ));
        Self {
            lock,
            id: Arc::from(uuid::Uuid::new_v4().to_string()),
            wait: None,
        }
    }

    /// How long [`campaign`](Self::campaign) may take before it gives up with
    /// [`LockError::Timeout`]: waiting for the leader to go, retries after transient failures, and a
    /// call to a frozen server (given up 100 ms past the deadline, whatever the backend's call bound)
    /// all count. Default: `None`, campaign until leading.
    pub fn wait_timeout(mut self, wait: Option<Duration>) -> Self {
        self.wait = wait;
        self.lock = self.lock.wait_timeout(wait);
        self
    }

    /// The bound set by [`wait_timeout`](Self::wait_timeout).
    pub fn get_wait_timeout(&self) -> Option<Duration> {
        self.wait
    }

    /// This candidate's id, reported by [`leader`](Self::leader) while one of its campaigns leads.
    ///
    /// Ids name candidates, not campaigns: clones of this `Election` share it, and nothing stops two
    /// processes from using the same one. Tell campaigns apart by their tokens
    /// ([`Leadership::is_current`]).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Arc::from(id.into());
        self
    }

    /// The lease of a term (the lock's TTL, as [`RedisLock::timeout`]): a leader that stops renewing is
    /// replaced after this long. Default: 10 s.
    pub fn timeout(mut self, ttl: Duration) -> Self {
        self.lock = self.lock.timeout(ttl);
        self
    }

    /// Adds the label `name="<name>"` to the election's metrics (feature `metrics`; their
    /// `primitive` label is `election`) and the field `name` to its spans, as
    /// [`RedisLock::metrics_name`]. Default: none.
    pub fn metrics_name(mut self, name: impl Into<String>) -> Self {
        self.lock = self.lock.metrics_name(name);
        self
    }

    /// The name set by [`metrics_name`](Self::metrics_name), if any.
    pub fn get_metrics_name(&self) -> Option<&str> {
        self.lock.get_metrics_name()
    }

    /// The lease of a term, as set by [`timeout`](Self::timeout).
    pub fn get_timeout(&self) -> Duration {
        self.lock.get_timeout()
    }

    /// The lease of a term.
    #[deprecated(note = "use timeout")]
    pub fn ttl(self, ttl: Duration) -> Self {
        self.timeout(ttl)
    }

    /// The candidate id, as set by [`id`](Self::id), shared by every clone of this `Election`.
    ///
    /// `leader() == get_id()` says that some campaign with this id leads, not that the caller does:
    /// see [Asking "do I lead?"](Self#asking-do-i-lead).
    pub fn get_id(&self) -> &str {
        &self.id
    }

    /// The candidate id.
    #[deprecated(note = "use get_id")]
    pub fn candidate_id(&self) -> &str {
        self.get_id()
    }

    /// Waits until this campaign leads, then returns its term.
    ///
    /// Keeps campaigning through transient failures (a server loading its data or turned read-only
    /// during a failover, a call that timed out, a lost connection): each is logged as a warning, and
    /// the campaign tries again after a backoff of up to 20 ms, doubling to 1 s, with jitter. It returns
    /// an error only for a permanent failure (bad input such as an empty id or a zero TTL, a server that
    /// refuses the commands, such as `NOPERM`). Dropping the future stops campaigning; a term won at that
    /// moment is released in the background.
    pub async fn campaign(&self) -> Result<Leadership> {
        if self.id.is_empty() {
            return Err(LockError::invalid("id", "must not be empty"));
        }
        let lock = self.lock.clone().owner(self.id.clone());
        let plan = lock.validate()?;
        let runtime = runtime_of(lock.backend());
        // One acquisition in the metrics and traces, however many times it tries again, and bounded
        // by the campaign's wait whatever a call to a frozen server would take.
        let campaigning =
            runtime.within_wait(lock.key(), self.wait, self.campaign_with(&lock, &plan));
        let guard =
            observe::acquiring(&plan.config.observe, lock.key(), runtime, campaigning).await?;
        let term = guard.fence().ok_or_else(|| LockError::Lost {
            key: lock.key().to_owned(),
            reason: "the election lock issued no fence".into(),
        })?;
        Ok(Leadership {
            guard,
            id: self.id.clone(),
            term,
        })
    }

    /// The campaign's acquisition, through transient failures.
    async fn campaign_with(&self, lock: &RedisLock, plan: &Plan) -> Result<LockGuard> {
        let mut failures: u32 = 0;
        loop {
            match lock.acquire_planned(plan).await {
                Ok(guard) => return Ok(guard),
                // The lock's wait is the campaign's: it started later, so the campaign's is over too.
                Err(error @ LockError::Timeout { .. }) if self.wait.is_some() => return Err(error),
                Err(error) if error.is_transient() => {
                    let delay = CAMPAIGN_RETRY.delay(failures);
                    failures = failures.saturating_add(1);
                    tracing::warn!(
                        key = %lock.key(),
                        id = %self.id,
                        %error,
                        failures,
                        ?delay,
                        "campaigning failed; trying again"
                    );
                    runtime_of(lock.backend()).sleep(delay).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// The candidate id of the current leader, or `None` when nobody leads.
    ///
    /// An id is not a campaign: to ask whether a particular campaign leads, use
    /// [`Leadership::is_current`] or compare [`leader_token`](Self::leader_token) with
    /// [`Leadership::token`].
    pub async fn leader(&self) -> Result<Option<String>> {
        Ok(self
            .leader_token()
            .await?
            .map(|token| id_of(&token).to_owned()))
    }

    /// The token of the current term (`{id}:{uuid}`, unique to the campaign that won it), or `None`
    /// when nobody leads. Equal to [`Leadership::token`] for exactly one campaign.
    pub async fn leader_token(&self) -> Result<Option<String>> {
        let key = self.lock.key();
        let reply = self
            .lock
            .backend()
            .eval_script(&script::READ, &[key], &[])
            .await
            .map_err(|source| LockError::backend_failed(key, source))?;
        Ok(match reply {
            ScriptValue::Str(token) => Some(token),
            _ => None,
        })
    }
}

/// The candidate id inside a token `{id}:{uuid}`; the whole token when it has no such shape.
fn id_of(token: &str) -> &str {
    const UUID_LEN: usize = 36;
    token
        .len()
        .checked_sub(UUID_LEN + 1)
        .filter(|&at| token.is_char_boundary(at) && token[at..].starts_with(':'))
        .map_or(token, |at| &token[..at])
}

impl fmt::Debug for Election {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Election")
            .field("id", &self.id)
            .field("lock", &self.lock)
            .finish()
    }
}

/// One term of leadership: the lock guard of the election, with its term number.
#[derive(Debug)]
pub struct Leadership {
    guard: LockGuard,
    id: Arc<str>,
    term: u64,
}

impl Leadership {
    /// The term number: the fencing token of this term, larger than every earlier term's. Pass it to
    /// whatever the leader writes, so that a deposed leader's late writes can be refused.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// This leader's candidate id, shared with every other campaign of the same candidate: not a way to
    /// tell campaigns apart ([`token`](Self::token) is).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// This term's token, `{id}:{uuid}`: the election key's value while the term lasts, and unique to
    /// this campaign, even among campaigns of one candidate id.
    pub fn token(&self) -> &str {
        self.guard.token()
    }

    /// Whether this term is still the current one: the election key still holds this term's
    /// [`token`](Self::token). This is the answer to "do I lead?".
    ///
    /// Answers `Ok(false)` without asking Redis once the term's validity has run out (see
    /// [`LockGuard::is_owner`]). A `true` is a snapshot: to act as leader, pass [`term`](Self::term) along
    /// with every write so that a deposed leader's late writes can be refused, or work under
    /// [`hold`](Self::hold).
    pub async fn is_current(&self) -> Result<bool> {
        self.guard.is_owner().await
    }

    /// The underlying lock guard (for `is_owner`, `valid_for`, `fenced_set`).
    pub fn guard(&self) -> &LockGuard {
        &self.guard
    }

    /// Runs `work` while keeping the leadership, as [`LockGuard::hold`]: `Err(LockError::Lost)` as soon as
    /// the leadership is lost, with `work` dropped.
    pub async fn hold<F: Future>(&self, work: F) -> Result<F::Output> {
        self.guard.hold(work).await
    }

    /// Hands the leadership over at once: deletes the election key if it is still ours. `Ok(false)` when
    /// the term had already ended.
    pub async fn resign(self) -> Result<bool> {
        self.guard.release().await
    }
}

#[cfg(test)]
mod tests;

// Inspection (`inspect`).
mod inspect;
