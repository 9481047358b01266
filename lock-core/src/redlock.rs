//! [`Redlock`]: one lock over several independent Redis masters, granted by a majority of them.
//!
//! A [`RedisLock`](crate::RedisLock) lives on one server (and its replicas, which replicate
//! asynchronously): if that server fails over before a replica received the lock, the lock is gone. A
//! `Redlock` spreads the same lock over `N` masters that share nothing (no replication between them,
//! ideally on separate machines) and counts it as held only while a majority (`N/2 + 1`) of them hold it.
//! Any minority of the masters may be down, slow or restarting without blocking or breaking the lock.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use lock_core::{LockBackend, Redlock, memory::MemoryBackend};
//!
//! # futures::executor::block_on(async {
//! // Five independent masters; in production each is a client (or pool) of its own server, and the
//! // adapters mix freely as `Arc<dyn LockBackend>`.
//! let nodes: Vec<Arc<dyn LockBackend>> =
//!     (0..5).map(|_| Arc::new(MemoryBackend::new()) as Arc<dyn LockBackend>).collect();
//! let lock = Redlock::new(nodes, "reports:nightly")
//!     .timeout(Duration::from_secs(30))
//!     .wait_timeout(Some(Duration::from_secs(5)));
//! let guard = lock.acquire().await?;
//! assert!(guard.valid_for() > Duration::from_secs(29));
//! assert!(guard.is_owner().await?);
//! assert!(guard.release().await?);
//! # Ok::<(), lock_core::LockError>(())
//! # }).unwrap();
//! ```
//!
//! # The algorithm
//!
//! One acquisition round, for a TTL `T`:
//!
//! 1. Note the time `t0` on the lease clock, then send `SET key token NX PX T` (a fresh random token per round)
//!    to every master at once, each request bounded by the per-node timeout
//!    ([`Redlock::node_timeout`], by default a tenth of the TTL and at most 200 ms), so a hung master
//!    costs at most that bound and never stretches the round. Requests are joined in the same future
//!    (no task is spawned); each bound uses the node's own [`LockBackend::sleep`].
//! 2. Count the masters that granted. A failed or timed-out master is a vote against, and its error is
//!    kept.
//! 3. The lock is acquired when at least `N/2 + 1` masters granted it **and** validity is left:
//!    `validity = T − (now − t0) − drift`, where the drift allowance is 1% of `T` plus 2 ms. Measuring
//!    from *before* sending means every granting master's key expires no earlier than `t0 + T` (by its
//!    clock), so the guard's validity never outlasts any of them. The arithmetic saturates: a round
//!    longer than the TTL leaves zero validity, never an underflow.
//! 4. Otherwise the round failed, and the partial locks are released on **every** master (a
//!    token-checked delete, in parallel, bounded), so that they cannot block the next round or another
//!    client. A master whose release failed is released once more in the background, where its backend
//!    can spawn; the TTL frees it otherwise. Then the next round starts after a jittered backoff, until
//!    the wait deadline.
//!
//! At the deadline the error says why: [`LockError::Quorum`] when failed masters made the difference
//! (without their errors a majority could have been reached), listing each failed master by its index
//! with its cause; [`LockError::Timeout`], as for `RedisLock`, when the answers alone ruled a majority
//! out (the lock is busy). With `wait_timeout(None)` a round that failed because of node errors ends
//! acquisition at once with [`LockError::Quorum`]: an outage of a majority is reported, never retried
//! silently forever.
//!
//! The guard's operations ([`RedlockGuard::renew`], [`extend`](RedlockGuard::extend),
//! [`is_owner`](RedlockGuard::is_owner), [`release`](RedlockGuard::release)) run the token-checked
//! scripts of `RedisLock` on every master and count the same way: `Ok(true)` with a majority,
//! `Ok(false)` when the answers alone rule a majority out, `Err(LockError::Quorum)` when failed masters
//! decided. None of them claims the lock once its local validity has run out.
//!
//! The guard tracks, per master, the earliest moment that master's copy of the lock can expire (from
//! before the request that set, renewed or extended it, less the drift allowance), and
//! [`valid_for`](RedlockGuard::valid_for) is the time until which a majority is still known to hold it.
//! So an `extend` confirmed by a different majority than the one that granted the lock never claims
//! more than the masters actually hold.
//!
//! # Why it excludes, and when it does not
//!
//! Two majorities of the same `N` masters always share a master, provided the `N` are `N` different
//! servers: a server listed twice would vote twice (its answer to our own re-sent write is "granted"),
//! so `acquire` refuses such a list with [`LockError::InvalidArgument`], recognising the same backend by
//! [`LockBackend::instance_id`] before sending anything, and the same server reached through different
//! clients by its `run_id` ([`LockBackend::server_id`]) the first time a round reaches it, before its
//! vote is counted. A master holds one value per key, and
//! a key is only set when absent (`NX`) and only deleted or extended by the token that set it. So while
//! our key lives on a majority, no other client can collect a majority. Our validity ends before any
//! copy in our majority can expire, as long as the masters' clocks and ours run at about the same rate
//! (within the drift allowance): the argument needs bounded clock *drift*, not synchronised clocks.
//!
//! The limits are those of every lease, plus two of its own:
//!
//! - **Process pauses and network delays after the check.** A holder that pauses (GC, swapping, a stopped
//!   VM) past its validity still believes it holds the lock. Check [`RedlockGuard::valid_for`], keep the
//!   TTL far above your pauses, and use fencing where the protected resource can compare numbers.
//! - **Clock jumps.** A master whose clock is stepped forward (an operator, a misconfigured NTP) expires
//!   keys early, which breaks the drift assumption. Use slewing time synchronisation on the masters.
//! - **Masters that restart empty.** A master that restarts without its data forgets our key and may
//!   grant it to someone else. With all `N` masters holding our key, up to `N − quorum` such restarts are
//!   harmless (a competitor still cannot gather a majority); a lock granted by exactly a majority is
//!   broken by one. Keep masters down for at least the TTL before they rejoin, or persist every write
//!   (`appendfsync always`).
//!
//! Martin Kleppmann ("How to do distributed locking", 2016) argued that Redlock is unsafe for
//! correctness because it assumes bounded network delay, bounded pauses and bounded clock error, none of
//! which an asynchronous system guarantees, and that a correct lock needs fencing tokens, which plain
//! Redlock does not issue; Salvatore Sanfilippo (antirez, "Is Redlock safe?") answered that the
//! algorithm needs only bounded clock *rate* error, that the validity check after acquisition covers
//! delays before it, and that pauses after it hurt every lease-based lock alike. Both agree that a lease
//! alone cannot stop a paused holder from writing late: use Redlock where an occasional double holder
//! costs efficiency, and add fencing (below) where it would cost correctness.
//!
//! # Fencing across masters
//!
//! With [`Redlock::fencing`], every acquisition also gets a fence that strictly increases across the
//! holders of the key. Each master keeps its own counter, and the fenced acquire script of `RedisLock`
//! issues each master's fence atomically with setting the lock, as `max(counter + 1, the master's clock
//! in µs)` (see [`RedisLock::fencing`](crate::RedisLock::fencing)); the counters differ between masters.
//! A round then works like this:
//!
//! 1. every master that answers the round reports its clock (`TIME`, returned by the same script, so it
//!    costs no round trip), and one that grants the lock also its fence;
//! 2. when two of those clocks differ by more than [`Redlock::MAX_CLOCK_SKEW`] (1 s) beyond what the
//!    round's own duration can explain, the round is refused with [`LockError::ClockSkew`]: its partial
//!    locks are released and `acquire` returns that error at once;
//! 3. otherwise the fence is the **maximum** of the fences of the granting masters;
//! 4. before the acquisition succeeds, the counters of the granting masters are raised to at least that
//!    fence, on each only while it still holds our token (a second, bounded round); a majority must
//!    confirm, or the round fails like any other.
//!
//! Why a later holder `B` always gets a larger fence than an earlier holder `A`: the majority that
//! confirmed `A`'s raise and the majority that granted `B` share a master `m`. On `m`, `A`'s key was
//! present when `A` raised the counter to `A`'s fence, and `B`'s key could only be set once `A`'s was
//! gone, so after the raise (had `B` been granted on `m` *before* `A`, `B`'s validity would have ended
//! before `A`'s began, so `B` would not be the later holder). If `m` kept its data, it then issued
//! `B`'s fence from a counter already at least `A`'s fence, and `B`'s fence, the maximum over its
//! granting masters, is larger. The raise step is what makes this sound: taking the maximum over a
//! majority alone is not, because a majority whose counters lag (say a master that was down during many
//! acquisitions) can answer below an earlier fence.
//!
//! If `m` lost the raise (it restarted without its data, or failed over to a replica that had not
//! received it), its counter went back, and `B`'s fence is only known to be at least `m`'s clock. Here
//! the clocks matter, because `A`'s fence may have come from **another** master's clock: the maximum
//! and the raise copy a fence from master to master. With one master ten minutes ahead, `A`'s fence is
//! ten minutes of microseconds above `m`'s clock, and `m`, having lost the copy, would issue lower
//! fences for ten minutes. The argument needs:
//!
//! - (a) any two masters' wall clocks differ by at most [`Redlock::MAX_CLOCK_SKEW`];
//! - (b) no master's wall clock goes back;
//! - (c) fewer than 10⁶ fences per second are issued for the key, so that no counter runs ahead of the
//!   clocks: every fence issued by a time `t` is then at most the largest of the masters' clocks at
//!   `t` (a fence is a master's clock or an earlier fence plus one, and copies only move fences between
//!   masters);
//! - (d) a master that lost writes takes part in no round until more than `MAX_CLOCK_SKEW` after the
//!   last write it lost. The limits above already ask a master that restarts empty to
//!   stay down for at least the TTL, which implies this for any TTL of at least 1 s; a failover
//!   detected after more than a second (Sentinel's default is 30 s) does too.
//!
//! Then, with `A`'s raise on `m` at time `t`: `A`'s fence ≤ the largest clock at `t` (c) ≤ `m`'s clock
//! at `t` + `MAX_CLOCK_SKEW` (a) < `m`'s clock when it grants `B` (b, d) ≤ `B`'s fence. So fences
//! never go backwards, across any number of masters that lose data, as long as a majority is not lost
//! at once within the validity (which breaks the exclusion too). Because fences are microsecond clock
//! readings, a bound on the clocks' disagreement is a bound on how far a fence can run ahead of any
//! master's clock, which is why one second suffices; NTP keeps servers within milliseconds of each other,
//! so the bound leaves ample room, while a clock that is minutes off is caught.
//!
//! Assumption (a) is checked where it can be: every fenced round compares the clocks of all the masters
//! that answer it (granting or not), which is every live master in the normal case, since each round
//! goes to all of them. A master whose clock is off therefore makes every fenced round it answers fail
//! with `ClockSkew` until its clock is corrected or it is taken out of the list: fencing stops rather
//! than issue a fence that could later go backwards. (b) and (c) cannot be checked: use slewing time
//! synchronisation, not stepping, on the masters. Without fencing none of this applies: exclusion needs
//! bounded clock *drift* only.
//!
//! The fence does not change on `renew` or `extend`. Counters are never deleted: one small key per lock
//! name on each master.

use std::fmt;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::{BoxFuture, Either, join, join_all, select};

use crate::backend::{BackendError, LockBackend, ScriptValue};
use crate::backoff::Backoff;
use crate::error::{LockError, NodeError, Result};
use crate::guard::{Renewable, Until, Written, hold_renewed, retry_in_background};
use crate::keys;
use crate::lock::fenced_reply;
use crate::script::{self, Script};
use crate::time::{Moment, to_millis, ttl_millis, validity_deadline};

type Node = Arc<dyn LockBackend>;

/// The name of the backend in errors made by the Redlock layer itself (a master that did not answer
/// within the per-node timeout).
const LAYER: &str = "redlock";

/// A distributed lock over several independent Redis masters, held while a majority of them hold it
/// (the Redlock algorithm; see the [module docs](self) for how it works and its limits).
///
/// The configuration and the guard API mirror [`RedisLock`](crate::RedisLock) and
/// [`LockGuard`](crate::LockGuard). Like `RedisLock`, a `Redlock` holds no ownership state: every
/// acquisition makes its own tokens and hands them out in a [`RedlockGuard`], so it can be shared freely.
/// On every master the key is exactly `key`.
#[derive(Clone)]
pub struct Redlock {
    nodes: Arc<[Node]>,
    key: Arc<str>,
    timeout: Duration,
    wait_timeout: Option<Duration>,
    node_timeout: Option<Duration>,
    backoff: Backoff,
    max_hold: Option<Duration>,
    fencing: bool,
    /// Per master: its server's identity once learnt (see [`LockBackend::server_id`]), shared by clones.
    server_ids: Arc<Mutex<Vec<ServerId>>>,
}

/// What is known of a master's server identity.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ServerId {
    /// Not asked yet, or the last answer was a transient failure.
    Unknown,
    /// The server's `run_id`.
    Known(String),
    /// The backend cannot tell (or refused to, permanently): only `instance_id` tells it apart.
    Unavailable,
}

impl Redlock {
    /// The default lock TTL: 30 s.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
    /// The default acquisition deadline: 30 s.
    pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(30);
    /// The largest default per-node timeout: 200 ms (the default is a tenth of the TTL, capped here).
    pub const MAX_DEFAULT_NODE_TIMEOUT: Duration = Duration::from_millis(200);
    /// The largest difference between two masters' wall clocks that a fenced round accepts: 1 s. A
    /// fenced round whose masters' clocks (`TIME`) certainly differ by more is refused with
    /// [`LockError::ClockSkew`]; see [Fencing across masters](self#fencing-across-masters) for why a
    /// bound is needed and why this one is enough.
    pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(1);

    /// A lock on `key` over the independent masters `nodes` (one backend per master), with a 30 s TTL
    /// and a 30 s acquisition deadline.
    ///
    /// Pass a `Vec<Arc<dyn LockBackend>>` to mix clients. A master is named by its index in `nodes` in
    /// errors. Nothing is checked or sent until the lock is used: an empty list, an empty key, or a
    /// master listed twice is reported by `acquire` as [`LockError::InvalidArgument`]. A master counts
    /// as listed twice when two entries are the same backend (by
    /// [`LockBackend::instance_id`]: the same value, its clones, or wrappers around it), or, from the
    /// first round that reaches them, the same server (by [`LockBackend::server_id`], Redis's
    /// `run_id`, whatever clients reach it): counted twice, one server could make a majority with
    /// fewer than half of the real masters. The run ids are asked for alongside the first round's
    /// requests (no extra round trip) and kept by this `Redlock` and its clones: build one per key and
    /// clone it, rather than one per acquisition.
    pub fn new<B: LockBackend>(nodes: impl IntoIterator<Item = B>, key: impl Into<String>) -> Self {
        let nodes: Vec<Node> = nodes
            .into_iter()
            .map(|node| Arc::new(node) as Node)
            .collect();
        let server_ids = vec![ServerId::Unknown; nodes.len()];
        Self {
            server_ids: Arc::new(Mutex::new(server_ids)),
            nodes: nodes.into(),
            key: Arc::from(key.into()),
            timeout: Self::DEFAULT_TIMEOUT,
            wait_timeout: Some(Self::DEFAULT_WAIT_TIMEOUT),
            node_timeout: None,
            backoff: Backoff::default(),
            max_hold: None,
            fencing: false,
        }
    }

    /// The lock's TTL on each master. Kept to the millisecond, rounding up; zero is rejected when the
    /// lock is used.
    pub fn timeout(mut self, ttl: Duration) -> Self {
        self.timeout = ttl;
        self
    }

    /// How long `acquire` keeps trying: `Some(d)` gives up after `d` (`Some(Duration::ZERO)` makes exactly
    /// one round); `None` keeps trying while the lock is busy, but reports an outage of a majority at
    /// once (see [`acquire`](Self::acquire)).
    pub fn wait_timeout(mut self, wait: Option<Duration>) -> Self {
        self.wait_timeout = wait;
        self
    }

    /// How long one request to one master may take before it counts as failed: a tenth of the TTL and
    /// at most [`MAX_DEFAULT_NODE_TIMEOUT`](Self::MAX_DEFAULT_NODE_TIMEOUT) by default.
    ///
    /// Keep it well below the TTL (validity is what is left of the TTL after the slowest answer) and
    /// above the masters' normal latency. Zero, or a bound not below the TTL, is rejected as
    /// [`LockError::InvalidArgument`] when the lock is used. The backends' own call bounds
    /// (`command_timeout`) still apply; the shorter bound wins.
    pub fn node_timeout(mut self, bound: Duration) -> Self {
        self.node_timeout = Some(bound);
        self
    }

    /// The retry policy between rounds (default: 2 ms doubling to 100 ms, full jitter).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The longest a guard of this lock may be held under [`RedlockGuard::hold`] (and so
    /// [`run`](Self::run)), counted from the acquisition. Default: no bound.
    pub fn max_hold(mut self, max_hold: Duration) -> Self {
        self.max_hold = Some(max_hold);
        self
    }

    /// Issue a fencing token with every acquisition ([`RedlockGuard::fence`]), strictly increasing
    /// across the holders of this key; see [Fencing across masters](self#fencing-across-masters) for how
    /// and why.
    ///
    /// Each master keeps a counter beside the lock key (named as for
    /// [`RedisLock::fencing`](crate::RedisLock::fencing), e.g. `key:redlease:fence:{DDDDDD}`), never deleted.
    pub fn fencing(mut self, enabled: bool) -> Self {
        self.fencing = enabled;
        self
    }

    /// The lock key, exactly as given.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The configured TTL.
    pub fn ttl(&self) -> Duration {
        self.timeout
    }

    /// The masters, in the order given: a master's index here is how errors name it.
    pub fn nodes(&self) -> &[Arc<dyn LockBackend>] {
        &self.nodes
    }

    /// How many masters must agree: a majority, `N/2 + 1`.
    pub fn quorum(&self) -> usize {
        self.nodes.len() / 2 + 1
    }

    /// Acquires the lock on a majority of the masters, retrying with jittered backoff until the wait
    /// deadline.
    ///
    /// At the deadline: [`LockError::Quorum`] when failed masters made the difference, listing each by
    /// index with its cause; otherwise [`LockError::Timeout`]. With `wait_timeout(None)` a round decided
    /// by failed masters returns [`LockError::Quorum`] at once. After every failed round the partial
    /// locks are released on every master. Dropping the future mid-round releases whatever the round may
    /// have acquired, in the background where the backends can spawn, otherwise when the TTL runs out.
    pub async fn acquire(&self) -> Result<RedlockGuard> {
        let plan = self.validate()?;
        let started = self.nodes[0].now();
        let deadline = self.wait_timeout.and_then(|wait| started.checked_add(wait));
        let mut attempt: u32 = 0;
        loop {
            let failed = match self.round(&plan).await {
                Round::Acquired(guard) => return Ok(guard),
                Round::Refused(error) => return Err(error),
                Round::Failed(failed) => failed,
            };
            let by_errors = failed.decided_by_errors(plan.quorum);
            let mut delay = self.backoff.delay(attempt);
            match deadline {
                None if by_errors => return Err(failed.into_error(&self.key, plan.quorum)),
                None => {}
                Some(deadline) => {
                    let now = self.nodes[0].now();
                    if now >= deadline {
                        return Err(if by_errors {
                            failed.into_error(&self.key, plan.quorum)
                        } else {
                            LockError::Timeout {
                                key: self.key.to_string(),
                                waited: now - started,
                            }
                        });
                    }
                    delay = delay.min(deadline - now);
                }
            }
            tracing::trace!(
                key = %self.key,
                attempt,
                votes = failed.votes,
                errors = failed.errors.len(),
                ?delay,
                "no quorum, backing off"
            );
            self.nodes[0].sleep(delay).await;
            attempt = attempt.saturating_add(1);
        }
    }

    /// One round: `Ok(None)` when no majority was reached and failed masters did not decide it (the
    /// lock is busy), [`LockError::Quorum`] when they did. The partial locks of a failed round are
    /// released on every master before this returns.
    pub async fn try_acquire(&self) -> Result<Option<RedlockGuard>> {
        let plan = self.validate()?;
        match self.round(&plan).await {
            Round::Acquired(guard) => Ok(Some(guard)),
            Round::Refused(error) => Err(error),
            Round::Failed(failed) if failed.decided_by_errors(plan.quorum) => {
                Err(failed.into_error(&self.key, plan.quorum))
            }
            Round::Failed(_) => Ok(None),
        }
    }

    /// Acquires the lock, runs `body` while holding it (renewing it through the majority as
    /// [`RedlockGuard::hold`] does), then releases it; with the same rules as
    /// [`RedisLock::run`](crate::RedisLock::run):
    ///
    /// - the acquisition's error ([`LockError::Timeout`] or [`LockError::Quorum`]) when the lock was not
    ///   acquired: `body` never runs;
    /// - [`LockError::Lost`] as soon as the lock is lost while `body` runs, with `body` dropped;
    /// - `Ok(value)` when the release confirmed a majority still held the lock;
    /// - [`LockError::Lost`] when the release found it had expired or been taken over, or the validity
    ///   had run out by the time `body` finished, whatever the masters answered (the value is withheld,
    ///   since exclusion was not guaranteed);
    /// - `Ok(value)` and a logged warning when, with validity left, the release failed on too many
    ///   masters to tell: the work is done, and the TTL frees the key.
    pub async fn run<F, T>(&self, body: F) -> Result<T>
    where
        F: AsyncFnOnce(&RedlockGuard) -> T,
    {
        let guard = self.acquire().await?;
        let value = guard.hold(body(&guard)).await?;
        match guard.release().await {
            Ok(true) => Ok(value),
            Ok(false) => Err(LockError::Lost {
                key: self.key.to_string(),
                reason: "it expired or was taken over before the work finished".into(),
            }),
            Err(error) => {
                tracing::warn!(
                    key = %self.key,
                    %error,
                    "releasing the lock failed after the work finished; its TTL will free it"
                );
                Ok(value)
            }
        }
    }

    fn validate(&self) -> Result<Plan> {
        if self.nodes.is_empty() {
            return Err(LockError::invalid("nodes", "must not be empty"));
        }
        if self.key.is_empty() {
            return Err(LockError::invalid("key", "must not be empty"));
        }
        self.refuse_duplicate_masters()?;
        self.backoff.validate()?;
        if let Some(max_hold) = self.max_hold {
            to_millis("max_hold", max_hold)?;
        }
        let ttl_ms = ttl_millis("timeout", self.timeout)?;
        let ttl = Duration::from_millis(ttl_ms);
        let node_timeout = match self.node_timeout {
            Some(bound) => {
                if bound.is_zero() {
                    return Err(LockError::invalid("node_timeout", "must not be zero"));
                }
                if bound >= ttl {
                    return Err(LockError::invalid(
                        "node_timeout",
                        format!(
                            "{bound:?} leaves no validity of the {ttl:?} TTL; keep it well below"
                        ),
                    ));
                }
                bound
            }
            None => default_node_timeout(ttl),
        };
        let fence_counter = match self.fencing {
            true => Some(keys::fence_counter(&self.key)?),
            false => None,
        };
        Ok(Plan {
            ttl,
            ttl_arg: ttl_ms.to_string(),
            node_timeout,
            quorum: self.quorum(),
            fence_counter,
        })
    }

    /// A master listed twice: the same backend by [`LockBackend::instance_id`], or the same server by
    /// the run ids learnt so far.
    fn refuse_duplicate_masters(&self) -> Result<()> {
        let instances: Vec<usize> = self.nodes.iter().map(|node| node.instance_id()).collect();
        if let Some((first, second)) = first_duplicate(&instances) {
            return Err(LockError::invalid(
                "nodes",
                format!(
                    "masters {first} and {second} are the same backend; list each master once (one \
                     master counted twice could make a majority on its own)"
                ),
            ));
        }
        duplicate_servers(&self.lock_server_ids())
    }

    fn lock_server_ids(&self) -> MutexGuard<'_, Vec<ServerId>> {
        // The critical sections only assign values; a poisoned value is still meaningful.
        self.server_ids
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// One acquisition round over every master, with the release of its partial locks when it fails.
    async fn round(&self, plan: &Plan) -> Round {
        let token: Arc<str> = Arc::from(uuid::Uuid::new_v4().to_string());
        // Armed before sending: if this future is dropped mid-round, requests may still reach the
        // masters, so dropping the holdings releases the token everywhere in the background.
        let mut holdings = Holdings::new(self.nodes.clone(), self.key.clone(), token, plan.ttl);
        // Masters met for the first time are asked who they are, alongside the acquisition.
        let unidentified: Vec<bool> = self
            .lock_server_ids()
            .iter()
            .map(|id| *id == ServerId::Unknown)
            .collect();
        let clock = &self.nodes[0];
        let sent_at = clock.now();
        let replies = join_all(self.nodes.iter().zip(unidentified).map(|(node, ask)| {
            let acquire = bounded(
                node.as_ref(),
                plan.node_timeout,
                self.acquire_on(node.as_ref(), &holdings.token, plan),
            );
            let identify = async move {
                match ask.then(|| node.server_id()) {
                    None => Identified::NotAsked,
                    Some(None) => Identified::Unavailable,
                    Some(Some(call)) => {
                        Identified::Answer(bounded(node.as_ref(), plan.node_timeout, call).await)
                    }
                }
            };
            join(acquire, identify)
        }))
        .await;
        let round_took = clock.now() - sent_at;
        let mut clocks = Vec::with_capacity(replies.len());
        let mut identities = Vec::with_capacity(replies.len());
        // A master that answered has no acquiring request of ours in flight any more; one that failed
        // (a timeout, say) may still apply it later.
        holdings.in_flight = replies.iter().map(|(reply, _)| reply.is_err()).collect();
        let mut votes: Vec<Vote> = replies
            .into_iter()
            .map(|(reply, identified)| {
                identities.push(identified);
                match reply {
                    Ok(Reply { granted, clock }) => {
                        clocks.push(clock);
                        match granted {
                            Some(fence) => Vote::Granted(fence),
                            None => Vote::Refused,
                        }
                    }
                    Err(error) => {
                        clocks.push(None);
                        Vote::Failed(error)
                    }
                }
            })
            .collect();
        // A master listed twice must not vote twice: refuse the round before counting.
        if let Err(duplicate) = self.learn_server_ids(identities, &mut votes) {
            release_everywhere(&mut holdings, plan.node_timeout).await;
            return Round::Refused(duplicate);
        }
        if plan.fence_counter.is_some()
            && let Some(skew) = clock_skew(&self.key, &clocks, round_took)
        {
            release_everywhere(&mut holdings, plan.node_timeout).await;
            return Round::Refused(skew);
        }
        let valid_until = validity_deadline(sent_at, plan.ttl);
        let mut fence = None;
        if let Some(counter) = &plan.fence_counter
            && granted(&votes) >= plan.quorum
            && clock.now() < valid_until
        {
            fence = self
                .raise_fences(&mut votes, &holdings.token, counter, plan)
                .await;
        }
        let votes_for = granted(&votes);
        if votes_for >= plan.quorum && clock.now() < valid_until {
            let bounds = votes
                .iter()
                .map(|vote| MasterLease {
                    until: matches!(vote, Vote::Granted(_)).then_some(valid_until),
                    sent_at,
                    server_expiry_ms: None,
                })
                .collect();
            tracing::debug!(key = %self.key, votes = votes_for, nodes = self.nodes.len(), "redlock acquired");
            return Round::Acquired(RedlockGuard {
                holdings,
                quorum: plan.quorum,
                ttl: plan.ttl,
                ttl_arg: plan.ttl_arg.clone(),
                node_timeout: plan.node_timeout,
                fence,
                acquired_at: sent_at,
                max_hold: self.max_hold,
                bounds: Mutex::new(bounds),
            });
        }
        let errors: Vec<NodeError> = votes
            .into_iter()
            .enumerate()
            .filter_map(|(node, vote)| match vote {
                Vote::Failed(error) => Some(NodeError { node, error }),
                _ => None,
            })
            .collect();
        // Failed round: release the partial locks on every master (also those that refused or failed:
        // a refusal may hide our own re-sent write, a failure may have been applied).
        release_everywhere(&mut holdings, plan.node_timeout).await;
        Round::Failed(Failed {
            votes: votes_for,
            errors,
        })
    }

    /// Records what the masters met for the first time said about their identity, and checks that no
    /// server is listed twice. A master that could not say, for now (a transient failure), does not
    /// count in this round: it could be another master listed twice.
    fn learn_server_ids(&self, identities: Vec<Identified>, votes: &mut [Vote]) -> Result<()> {
        let mut ids = self.lock_server_ids();
        for ((node, identified), vote) in identities.into_iter().enumerate().zip(votes) {
            match identified {
                Identified::NotAsked => {}
                Identified::Unavailable => ids[node] = ServerId::Unavailable,
                Identified::Answer(Ok(id)) => ids[node] = ServerId::Known(id),
                Identified::Answer(Err(error)) if !error.is_transient() => {
                    tracing::debug!(key = %self.key, node, %error, "a master cannot say which server it is; only its backend value tells it apart");
                    ids[node] = ServerId::Unavailable;
                }
                Identified::Answer(Err(error)) => {
                    if !matches!(vote, Vote::Failed(_)) {
                        *vote = Vote::Failed(error);
                    }
                }
            }
        }
        duplicate_servers(&ids)
    }

    /// The acquisition request to one master: granted (with its fence when fencing) or refused, and,
    /// when fencing, the master's clock.
    async fn acquire_on(
        &self,
        node: &dyn LockBackend,
        token: &str,
        plan: &Plan,
    ) -> Result<Reply, BackendError> {
        match &plan.fence_counter {
            None => Ok(Reply {
                granted: node
                    .set_nx(&self.key, token, plan.ttl)
                    .await?
                    .then_some(None),
                clock: None,
            }),
            Some(counter) => {
                let reply = node
                    .eval_script(
                        &script::FENCED_ACQUIRE,
                        &[&self.key, counter],
                        &[token, &plan.ttl_arg],
                    )
                    .await?;
                let granted = fenced_reply(&reply)?.map(Some);
                let clock = match &reply {
                    ScriptValue::Array(items) => match items.as_slice() {
                        [_, _, ScriptValue::Int(now)] => Some(*now),
                        _ => None,
                    },
                    _ => None,
                };
                match clock {
                    Some(_) => Ok(Reply { granted, clock }),
                    None => Err(BackendError::permanent(
                        LAYER,
                        format!("the fenced acquire script answered no server clock: {reply:?}"),
                    )),
                }
            }
        }
    }

    /// Raises the counters of the granting masters to the largest fence they issued, on each only while
    /// it still holds `token`. A master that does not confirm no longer counts as granting. Returns the
    /// fence.
    async fn raise_fences(
        &self,
        votes: &mut [Vote],
        token: &str,
        counter: &str,
        plan: &Plan,
    ) -> Option<u64> {
        let fence = votes
            .iter()
            .filter_map(|vote| match vote {
                Vote::Granted(fence) => *fence,
                _ => None,
            })
            .max()?;
        let fence_arg = fence.to_string();
        let raised = join_all(votes.iter().zip(self.nodes.iter()).map(|(vote, node)| {
            let granted = matches!(vote, Vote::Granted(_));
            let fence_arg = &fence_arg;
            async move {
                if !granted {
                    return None;
                }
                let keys = [&*self.key, counter];
                let args = [token, fence_arg.as_str()];
                let call = node.eval_script(&script::FENCE_RAISE, &keys, &args);
                Some(bounded(node.as_ref(), plan.node_timeout, call).await)
            }
        }))
        .await;
        for (vote, raised) in votes.iter_mut().zip(raised) {
            match raised {
                None | Some(Ok(ScriptValue::Int(1))) => {}
                Some(Ok(_)) => *vote = Vote::Refused,
                Some(Err(error)) => *vote = Vote::Failed(error),
            }
        }
        Some(fence)
    }
}

impl fmt::Debug for Redlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redlock")
            .field("key", &self.key)
            .field("nodes", &self.nodes.len())
            .field("timeout", &self.timeout)
            .field("wait_timeout", &self.wait_timeout)
            .field("node_timeout", &self.node_timeout)
            .field("backoff", &self.backoff)
            .field("max_hold", &self.max_hold)
            .field("fencing", &self.fencing)
            .finish()
    }
}

/// The default per-node timeout for a TTL: a tenth of it, at least 1 ms, at most
/// [`Redlock::MAX_DEFAULT_NODE_TIMEOUT`].
fn default_node_timeout(ttl: Duration) -> Duration {
    (ttl / 10)
        .min(Redlock::MAX_DEFAULT_NODE_TIMEOUT)
        .max(Duration::from_millis(1))
}

/// What `validate` worked out once per acquisition.
struct Plan {
    ttl: Duration,
    ttl_arg: String,
    node_timeout: Duration,
    quorum: usize,
    fence_counter: Option<String>,
}

/// One master's answer in an acquisition round.
enum Vote {
    /// Granted, with the master's fence when fencing.
    Granted(Option<u64>),
    Refused,
    Failed(BackendError),
}

fn granted(votes: &[Vote]) -> usize {
    votes
        .iter()
        .filter(|vote| matches!(vote, Vote::Granted(_)))
        .count()
}

enum Round {
    Acquired(RedlockGuard),
    /// Refused whatever the votes: a master listed twice, or masters whose clocks disagree.
    Refused(LockError),
    Failed(Failed),
}

/// A master's answer to an acquisition request.
struct Reply {
    /// `Some(fence)` when granted (with the master's fence when fencing), `None` when refused.
    granted: Option<Option<u64>>,
    /// The master's clock (`TIME`) in microseconds, from the fenced acquire script.
    clock: Option<i64>,
}

/// What a master said about its identity in a round.
enum Identified {
    /// Already known (or known to be unavailable): not asked.
    NotAsked,
    /// Its backend cannot tell.
    Unavailable,
    Answer(Result<String, BackendError>),
}

/// The first two positions holding the same value, if any.
fn first_duplicate<T: PartialEq>(items: &[T]) -> Option<(usize, usize)> {
    items.iter().enumerate().find_map(|(second, item)| {
        items[..second]
            .iter()
            .position(|earlier| earlier == item)
            .map(|first| (first, second))
    })
}

/// `InvalidArgument` when two masters are known to be one server.
fn duplicate_servers(ids: &[ServerId]) -> Result<()> {
    let known: Vec<Option<&str>> = ids
        .iter()
        .map(|id| match id {
            ServerId::Known(id) => Some(id.as_str()),
            _ => None,
        })
        .collect();
    let duplicate = known.iter().enumerate().find_map(|(second, id)| {
        let id = (*id)?;
        known[..second]
            .iter()
            .position(|earlier| *earlier == Some(id))
            .map(|first| (first, second, id))
    });
    match duplicate {
        None => Ok(()),
        Some((first, second, id)) => Err(LockError::invalid(
            "nodes",
            format!(
                "masters {first} and {second} are the same server (run_id {id}); list each master \
                 once (one master counted twice could make a majority on its own)"
            ),
        )),
    }
}

/// [`LockError::ClockSkew`] when the clocks of the masters that answered a fenced round certainly
/// differ by more than [`Redlock::MAX_CLOCK_SKEW`]: by more than the bound plus the round's duration
/// (each master read its clock somewhere within the round, so the round's duration can explain that
/// much of the difference).
fn clock_skew(key: &str, clocks: &[Option<i64>], round_took: Duration) -> Option<LockError> {
    let answered = || {
        clocks
            .iter()
            .enumerate()
            .filter_map(|(node, clock)| clock.map(|clock| (node, clock)))
    };
    let (ahead, latest) = answered().max_by_key(|&(_, clock)| clock)?;
    let (behind, earliest) = answered().min_by_key(|&(_, clock)| clock)?;
    let skew = Duration::from_micros(latest.abs_diff(earliest)).saturating_sub(round_took);
    (skew > Redlock::MAX_CLOCK_SKEW).then(|| LockError::ClockSkew {
        key: key.to_owned(),
        ahead,
        behind,
        skew,
        bound: Redlock::MAX_CLOCK_SKEW,
    })
}

/// A round that did not acquire: how many masters granted, and which failed.
struct Failed {
    votes: usize,
    errors: Vec<NodeError>,
}

impl Failed {
    fn decided_by_errors(&self, quorum: usize) -> bool {
        decided_by_errors(self.votes, self.errors.len(), quorum)
    }

    fn into_error(self, key: &str, quorum: usize) -> LockError {
        LockError::Quorum {
            key: key.to_owned(),
            votes: self.votes,
            needed: quorum,
            errors: self.errors,
        }
    }
}

/// Reads each master's reply to a TTL script ([`Written`]); an unreadable reply counts as that master's
/// failure. A master that was not asked (`Nil`) counts as not holding the lock.
fn written_answers(
    script: &Script,
    answers: Vec<Result<ScriptValue, BackendError>>,
) -> Vec<Result<Option<Written>, BackendError>> {
    answers
        .into_iter()
        .map(|answer| match answer? {
            ScriptValue::Nil => Ok(None),
            reply => Written::from_reply(script, &reply),
        })
        .collect()
}

/// Which masters confirmed, for [`RedlockGuard::tally`].
fn confirmed(
    answers: Vec<Result<Option<Written>, BackendError>>,
) -> Vec<Result<bool, BackendError>> {
    answers
        .into_iter()
        .map(|answer| answer.map(|written| written.is_some()))
        .collect()
}

/// Whether failed masters made the difference: no majority, but there would have been one had every
/// failed master agreed.
fn decided_by_errors(votes: usize, errors: usize, quorum: usize) -> bool {
    votes < quorum && votes + errors >= quorum
}

/// Runs `call` against `node`, failing it with a timeout after `bound` (on the node's own timer), so
/// that one hung master never stretches a round.
async fn bounded<T>(
    node: &dyn LockBackend,
    bound: Duration,
    call: impl Future<Output = Result<T, BackendError>>,
) -> Result<T, BackendError> {
    let call = pin!(call);
    match select(call, node.sleep(bound)).await {
        Either::Left((reply, _)) => reply,
        Either::Right(_) => Err(BackendError::timed_out(LAYER, bound)),
    }
}

/// Sends the token-checked release to every master still armed in `holdings`, in parallel, each bounded
/// by `bound`; disarms the masters that answered, unless an acquiring request may still be in flight to
/// them (it may land after this release: the holdings' drop releases those again until the TTL has
/// passed). Returns each master's answer (`None` when not asked).
async fn release_everywhere(
    holdings: &mut Holdings,
    bound: Duration,
) -> Vec<Option<Result<bool, BackendError>>> {
    let key = &holdings.key;
    let token = &holdings.token;
    let answers = join_all(
        holdings
            .nodes
            .iter()
            .zip(&holdings.armed)
            .map(|(node, armed)| {
                let armed = *armed;
                async move {
                    if !armed {
                        return None;
                    }
                    let (keys, args) = ([&**key], [&**token]);
                    let call = node.eval_script(&script::RELEASE, &keys, &args);
                    Some(
                        bounded(node.as_ref(), bound, call)
                            .await
                            .map(|reply| reply.as_int() == Some(1)),
                    )
                }
            }),
    )
    .await;
    for ((armed, answer), in_flight) in holdings
        .armed
        .iter_mut()
        .zip(&answers)
        .zip(&holdings.in_flight)
    {
        if matches!(answer, Some(Ok(_))) && !in_flight {
            *armed = false;
        }
    }
    answers
}

/// A token that may be held on some masters, released in the background on those still armed when
/// dropped.
struct Holdings {
    nodes: Arc<[Node]>,
    key: Arc<str>,
    token: Arc<str>,
    /// Bounds a background release: after the TTL the key has expired anyway.
    ttl: Duration,
    /// Per master: may it hold our token?
    armed: Vec<bool>,
    /// Per master: may an acquiring request of ours still land there (it was not answered: it failed,
    /// timed out, or the round was dropped before it was)? Such a request can be applied after a first
    /// release found nothing, so those masters are released again and again for the TTL (issue 8,
    /// hole 7, as for a single server's abandoned acquisition).
    in_flight: Vec<bool>,
}

impl Holdings {
    fn new(nodes: Arc<[Node]>, key: Arc<str>, token: Arc<str>, ttl: Duration) -> Self {
        let armed = vec![true; nodes.len()];
        let in_flight = vec![true; nodes.len()];
        Self {
            nodes,
            key,
            token,
            ttl,
            armed,
            in_flight,
        }
    }
}

impl Holdings {
    /// Releases the token in the background on every master for which `which(index)` holds, each
    /// retried with backoff until that master answers or the TTL has passed (see
    /// [`retry_in_background`]); on a master an acquiring request may still reach, repeatedly until
    /// the TTL has passed.
    fn release_in_background(&self, why: &'static str, which: impl Fn(usize) -> bool) {
        for (index, node) in self.nodes.iter().enumerate() {
            if !which(index) {
                continue;
            }
            let until = match self.in_flight[index] {
                true => Until::Horizon,
                false => Until::Answered,
            };
            let (releaser, key, token, bound) =
                (node.clone(), self.key.clone(), self.token.clone(), self.ttl);
            retry_in_background(
                node.clone(),
                self.key.clone(),
                self.ttl,
                why,
                until,
                move || {
                    let (releaser, key, token) = (releaser.clone(), key.clone(), token.clone());
                    Box::pin(async move {
                        let (keys, args) = ([&*key], [&*token]);
                        let call = releaser.eval_script(&script::RELEASE, &keys, &args);
                        bounded(releaser.as_ref(), bound, call).await.map(drop)
                    })
                },
            );
        }
    }
}

impl Drop for Holdings {
    fn drop(&mut self) {
        let armed = std::mem::take(&mut self.armed);
        self.release_in_background("dropped without release", |index| armed[index]);
    }
}

/// One acquisition of a [`Redlock`]: its token, fence and validity, and the operations that need them.
///
/// Every operation runs on all masters at once, each request bounded by the lock's per-node timeout,
/// and counts the answers: `Ok(true)` with a majority, `Ok(false)` when the answers alone rule a
/// majority out, [`LockError::Quorum`] when failed masters decided. Every script checks the token, so a
/// guard whose lock was taken over can never touch the new holder's lock.
///
/// Dropping a guard without [`release`](Self::release) never blocks: each master is released in the
/// background where its backend can spawn; otherwise the TTL frees it.
pub struct RedlockGuard {
    holdings: Holdings,
    quorum: usize,
    ttl: Duration,
    ttl_arg: String,
    node_timeout: Duration,
    fence: Option<u64>,
    acquired_at: Moment,
    max_hold: Option<Duration>,
    /// Per master: what we know of its copy of our lock.
    bounds: Mutex<Vec<MasterLease>>,
}

/// What a [`RedlockGuard`] knows of one master's copy of the lock.
#[derive(Debug, Clone, Copy)]
struct MasterLease {
    /// The earliest moment it can expire, by our lease clock, when the master is known to hold it.
    until: Option<Moment>,
    /// When the request that gave `until` was sent: only a request sent later replaces it.
    sent_at: Moment,
    /// Its expiry on that master's clock (Unix milliseconds), as last confirmed: what `extend` adds to.
    server_expiry_ms: Option<u64>,
}

impl RedlockGuard {
    /// This acquisition's token: the value of the key on every master that holds the lock.
    pub fn token(&self) -> &str {
        &self.holdings.token
    }

    /// The lock key, exactly as given.
    pub fn key(&self) -> &str {
        &self.holdings.key
    }

    /// This acquisition's fencing token, when the lock has [`fencing`](Redlock::fencing) on: larger
    /// than the fence of every earlier holder of the key. Pass it with every write to the protected
    /// resource and let the resource refuse a fence lower than the highest it has seen.
    pub fn fence(&self) -> Option<u64> {
        self.fence
    }

    /// How long the lock is still ours by the local lease clock: until a majority of the masters may let
    /// their copies expire, measured from before the requests that set, renewed or extended them were
    /// sent, with the TTL each master reported, less the drift allowance (1% of that TTL plus 2 ms).
    /// Zero once it has run out. As for [`LockGuard`](crate::LockGuard), renewals and extensions never
    /// shorten a master's copy, so no order of replies makes this claim more than the masters hold.
    pub fn valid_for(&self) -> Duration {
        self.valid_until()
            .map_or(Duration::ZERO, |until| until - self.now())
    }

    /// Whether a majority of the masters still hold the lock with this guard's token.
    ///
    /// Answers `Ok(false)` without asking once [`valid_for`](Self::valid_for) is zero. A `true` is a
    /// snapshot: checking then writing elsewhere is a race under pauses.
    pub async fn is_owner(&self) -> Result<bool> {
        if self.valid_for().is_zero() {
            return Ok(false);
        }
        let answers = self
            .ask_all(&script::IS_OWNER, |_| Some(Vec::new()))
            .await
            .into_iter()
            .map(|answer| answer.map(|reply| reply.as_int() == Some(1)))
            .collect::<Vec<_>>();
        // A master that denies holding the lock no longer counts towards validity.
        let mut bounds = self.lock_bounds();
        for (master, answer) in bounds.iter_mut().zip(&answers) {
            if matches!(answer, Ok(false)) {
                master.until = None;
            }
        }
        drop(bounds);
        self.tally(answers, || !self.valid_for().is_zero())
    }

    /// Moves the expiry of the lock `by` later on every master that still holds it, from that master's
    /// expiry as last confirmed (one more round reads it first, for masters this guard has not written
    /// to since acquiring). `Ok(true)` when a majority did and validity is left; `Ok(false)` when the
    /// lock is no longer ours (also without asking, once [`valid_for`](Self::valid_for) is zero); an
    /// expired lock is never re-created. A zero `by` is [`LockError::InvalidArgument`] and nothing is
    /// sent.
    ///
    /// As [`LockGuard::extend`](crate::LockGuard::extend): idempotent under re-sends (an absolute
    /// expiry per master), never shortening, and the guard's validity grows only as far as the TTLs
    /// the confirming masters report.
    pub async fn extend(&self, by: Duration) -> Result<bool> {
        let by_ms = to_millis("extend", by)?;
        if self.valid_for().is_zero() {
            return Ok(false);
        }
        let known: Vec<Option<u64>> = self
            .lock_bounds()
            .iter()
            .map(|master| master.server_expiry_ms)
            .collect();
        let mut read = None;
        if known.iter().any(Option::is_none) {
            let sent_at = self.now();
            let answers = self.ask_all(&script::EXPIRY, |_| Some(Vec::new())).await;
            let answers = written_answers(&script::EXPIRY, answers);
            self.record(sent_at, &answers);
            read = Some(answers);
        }
        let targets: Vec<Option<String>> = self
            .lock_bounds()
            .iter()
            .map(|master| {
                master
                    .server_expiry_ms
                    .map(|expiry| expiry.saturating_add(by_ms).to_string())
            })
            .collect();
        let sent_at = self.now();
        let answers = self
            .ask_all(&script::EXTEND, |node| {
                targets[node].clone().map(|target| vec![target])
            })
            .await;
        let mut answers = written_answers(&script::EXTEND, answers);
        // A master whose expiry could not be read was not asked: its answer is the read's.
        if let Some(read) = read {
            for ((answer, read), target) in answers.iter_mut().zip(read).zip(&targets) {
                if target.is_none() {
                    *answer = read;
                }
            }
        }
        self.record(sent_at, &answers);
        self.tally(confirmed(answers), || !self.valid_for().is_zero())
    }

    /// Sets the TTL of the lock on every master that still holds it to the lock's timeout, unless that
    /// master's copy already lives longer. `Ok(true)` when a majority did and the validity of this round
    /// (measured from before sending) is left; `Ok(false)` when the lock is no longer ours (also without
    /// asking, once [`valid_for`](Self::valid_for) is zero: a lock whose validity ran out is not claimed
    /// back); an expired lock is never re-created.
    pub async fn renew(&self) -> Result<bool> {
        if self.valid_for().is_zero() {
            return Ok(false);
        }
        let sent_at = self.now();
        let round_until = validity_deadline(sent_at, self.ttl);
        let ttl_arg = &self.ttl_arg;
        let answers = self
            .ask_all(&script::RENEW, |_| Some(vec![ttl_arg.clone()]))
            .await;
        let answers = written_answers(&script::RENEW, answers);
        self.record(sent_at, &answers);
        self.tally(confirmed(answers), || {
            self.now() < round_until && !self.valid_for().is_zero()
        })
    }

    /// Releases the lock on every master. `Ok(true)` when a majority still held it and its validity had
    /// not run out (exclusion was guaranteed until now), `Ok(false)` when it had expired or been taken
    /// over: also whenever its validity had already run out, whatever the masters answered or failed to,
    /// since then exclusion was not guaranteed, whoever still holds the keys. An error
    /// ([`LockError::Quorum`]) only when the validity was left and failed masters decided: then it
    /// cannot be told whether the lock was still ours.
    ///
    /// Masters that failed to answer are released again in the background where their backends can
    /// spawn; the TTL frees them otherwise.
    pub async fn release(mut self) -> Result<bool> {
        let valid = !self.valid_for().is_zero();
        let answers = release_everywhere(&mut self.holdings, self.node_timeout).await;
        if !valid {
            // Known lost: no answer can make exclusion have held.
            return Ok(false);
        }
        let answers = answers
            .into_iter()
            .map(|answer| answer.unwrap_or(Ok(false)))
            .collect();
        self.tally(answers, || valid)
    }

    /// Runs `work` while keeping the lock, as [`LockGuard::hold`](crate::LockGuard::hold) does: renews it
    /// through the majority at about a third of the TTL, with jitter, in the same future as `work`.
    ///
    /// Returns `Ok(output)` when `work` finishes first. As soon as the lock is lost, `work` is dropped
    /// and the result is [`LockError::Lost`] naming the key and the reason: a renewal round found the
    /// lock gone or taken on too many masters; renewals kept failing (say, a majority of the masters
    /// unreachable) until the validity ran out; or the lock's `max_hold` passed.
    pub async fn hold<F: Future>(&self, work: F) -> Result<F::Output> {
        hold_renewed(self, work).await
    }

    fn valid_until(&self) -> Option<Moment> {
        let bounds: Vec<Option<Moment>> = self
            .lock_bounds()
            .iter()
            .map(|master| master.until)
            .collect();
        quorum_deadline(&bounds, self.quorum)
    }

    fn now(&self) -> Moment {
        self.holdings.nodes[0].now()
    }

    fn lock_bounds(&self) -> MutexGuard<'_, Vec<MasterLease>> {
        // The critical sections only assign values; a poisoned value is still meaningful.
        self.bounds
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `script` with the token and `extra_args(node)` on every master at once, each bounded; a
    /// master whose `extra_args` are `None` is not asked (and answers `Ok(Nil)`).
    async fn ask_all(
        &self,
        script: &Script,
        extra_args: impl Fn(usize) -> Option<Vec<String>>,
    ) -> Vec<Result<ScriptValue, BackendError>> {
        let key = &*self.holdings.key;
        let token = &*self.holdings.token;
        join_all(self.holdings.nodes.iter().enumerate().map(|(index, node)| {
            let extra = extra_args(index);
            async move {
                let Some(extra) = extra else {
                    return Ok(ScriptValue::Nil);
                };
                let mut args = Vec::with_capacity(1 + extra.len());
                args.push(token);
                args.extend(extra.iter().map(String::as_str));
                let keys = [key];
                let call = node.eval_script(script, &keys, &args);
                bounded(node.as_ref(), self.node_timeout, call).await
            }
        }))
        .await
    }

    /// Updates the per-master leases after a round of writes (or reads) sent at `sent_at`: a master that
    /// confirmed gets the bound its reply gives, unless a request sent later already set one (writes
    /// never shorten a copy, so a reply that arrives late is an older, smaller bound); one that denied
    /// holding the lock loses its bound; one that failed keeps it.
    fn record(&self, sent_at: Moment, answers: &[Result<Option<Written>, BackendError>]) {
        let mut bounds = self.lock_bounds();
        for (master, answer) in bounds.iter_mut().zip(answers) {
            match answer {
                Ok(Some(written)) if sent_at >= master.sent_at => {
                    master.sent_at = sent_at;
                    master.until = Some(validity_deadline(sent_at, written.pttl));
                    master.server_expiry_ms = Some(written.server_expiry_ms);
                }
                Ok(Some(_)) => {}
                Ok(None) => master.until = None,
                Err(_) => {}
            }
        }
    }

    /// Counts the answers: `Ok(valid())` with a majority, an error when failed masters decided,
    /// `Ok(false)` otherwise.
    fn tally(
        &self,
        answers: Vec<Result<bool, BackendError>>,
        valid: impl FnOnce() -> bool,
    ) -> Result<bool> {
        let mut votes = 0;
        let mut errors = Vec::new();
        for (node, answer) in answers.into_iter().enumerate() {
            match answer {
                Ok(true) => votes += 1,
                Ok(false) => {}
                Err(error) => errors.push(NodeError { node, error }),
            }
        }
        if votes >= self.quorum {
            Ok(valid())
        } else if decided_by_errors(votes, errors.len(), self.quorum) {
            Err(LockError::Quorum {
                key: self.holdings.key.to_string(),
                votes,
                needed: self.quorum,
                errors,
            })
        } else {
            Ok(false)
        }
    }
}

impl Renewable for RedlockGuard {
    fn renewal_key(&self) -> &str {
        self.key()
    }

    fn renewal_ttl(&self) -> Duration {
        self.ttl
    }

    fn acquired_at(&self) -> Moment {
        self.acquired_at
    }

    fn now(&self) -> Moment {
        RedlockGuard::now(self)
    }

    fn max_hold(&self) -> Option<Duration> {
        self.max_hold
    }

    fn remaining(&self) -> Duration {
        self.valid_for()
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.holdings.nodes[0].sleep(duration)
    }

    fn renew_once(&self) -> BoxFuture<'_, Result<bool>> {
        Box::pin(self.renew())
    }

    fn release_lost(&self) {
        self.holdings
            .release_in_background("hold reported the lease lost", |_| true);
    }
}

impl fmt::Debug for RedlockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedlockGuard")
            .field("key", &self.holdings.key)
            .field("token", &self.holdings.token)
            .field("nodes", &self.holdings.nodes.len())
            .field("quorum", &self.quorum)
            .field("ttl", &self.ttl)
            .field("fence", &self.fence)
            .field("valid_for", &self.valid_for())
            .finish()
    }
}

/// The moment until which at least `quorum` masters are known to hold the lock: the `quorum`-th latest
/// of the per-master bounds.
fn quorum_deadline(bounds: &[Option<Moment>], quorum: usize) -> Option<Moment> {
    let mut known: Vec<Moment> = bounds.iter().flatten().copied().collect();
    known.sort_unstable_by(|a, b| b.cmp(a));
    quorum.checked_sub(1).and_then(|at| known.get(at).copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_is_a_majority() {
        let lock = |n: usize| Redlock::new(vec![crate::memory::MemoryBackend::new(); n], "k");
        let quorums: Vec<usize> = (1..=7).map(|n| lock(n).quorum()).collect();
        assert_eq!(quorums, [1, 2, 2, 3, 3, 4, 4]);
    }

    #[test]
    fn errors_decide_only_when_they_could_have_made_a_majority() {
        // 5 masters, quorum 3.
        assert!(decided_by_errors(2, 1, 3));
        assert!(decided_by_errors(0, 3, 3));
        assert!(!decided_by_errors(1, 1, 3), "busy: the answers rule it out");
        assert!(!decided_by_errors(3, 2, 3), "a majority is not a failure");
        assert!(!decided_by_errors(0, 0, 3));
    }

    #[test]
    fn validity_is_held_by_the_quorum_th_latest_master() {
        let t = Moment::now();
        let s = Duration::from_secs;
        let bounds = [
            Some(t + s(5)),
            None,
            Some(t + s(1)),
            Some(t + s(9)),
            Some(t + s(3)),
        ];
        assert_eq!(quorum_deadline(&bounds, 1), Some(t + s(9)));
        assert_eq!(quorum_deadline(&bounds, 3), Some(t + s(3)));
        assert_eq!(quorum_deadline(&bounds, 4), Some(t + s(1)));
        assert_eq!(quorum_deadline(&bounds, 5), None, "only four hold it");
        assert_eq!(quorum_deadline(&[], 0), None);
    }

    #[test]
    fn default_node_timeout_is_a_tenth_of_the_ttl_capped() {
        assert_eq!(
            default_node_timeout(Duration::from_secs(30)),
            Duration::from_millis(200)
        );
        assert_eq!(
            default_node_timeout(Duration::from_secs(1)),
            Duration::from_millis(100)
        );
        assert_eq!(
            default_node_timeout(Duration::from_millis(3)),
            Duration::from_millis(1)
        );
    }

    #[test]
    fn a_round_longer_than_the_ttl_leaves_no_validity() {
        let sent = Moment::now();
        let ttl = Duration::from_millis(100);
        // 100 ms − (1 ms + 2 ms): the saturating arithmetic of time.rs, as Redlock uses it.
        assert_eq!(
            validity_deadline(sent, ttl),
            sent + Duration::from_millis(97)
        );
        let bounds = [Some(validity_deadline(sent, ttl)); 3];
        let until = quorum_deadline(&bounds, 2).unwrap();
        assert_eq!(
            until.saturating_duration_since(sent + Duration::from_secs(1)),
            Duration::ZERO
        );
    }
}
