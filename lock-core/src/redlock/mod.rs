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
//!    (no task is spawned); each bound uses the node's own runtime's timer ([`LockBackend::runtime`]).
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
//! its runtime ([`LockBackend::runtime`], [`Runtime::same_as`](crate::Runtime::same_as)) before sending
//! anything, and the same server reached through different clients by its `run_id` (the
//! [`SERVER_ID`](crate::script::SERVER_ID) script) the first time a round reaches it, before its
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

mod guard;
mod quorum;
mod rounds;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::backend::{LockBackend, runtime_of};
use crate::error::{LockError, Result};
use crate::lease::config::{self, LeaseConfig};
use crate::lease::{self, lease_settings, observe};

pub use guard::RedlockGuard;
use rounds::Round;

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
    config: LeaseConfig,
    node_timeout: Option<Duration>,
    /// Per master: its server's identity once learnt (see
    /// [`script::SERVER_ID`](crate::script::SERVER_ID)), shared by clones.
    server_ids: Arc<Mutex<Vec<ServerId>>>,
}

/// What is known of a master's server identity.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ServerId {
    /// Not asked yet, or the last answer was a transient failure.
    Unknown,
    /// The server's `run_id`.
    Known(String),
    /// The backend cannot tell (a cluster, or a refusal, permanently): only its runtime tells it apart.
    Unavailable,
}

impl Redlock {
    /// The default lock TTL: 30 s.
    pub const DEFAULT_TIMEOUT: Duration = config::DEFAULT_TIMEOUT;
    /// The default acquisition deadline: 30 s.
    pub const DEFAULT_WAIT_TIMEOUT: Duration = config::DEFAULT_WAIT_TIMEOUT;
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
    /// as listed twice when two entries are the same backend (they share one
    /// [`Runtime`](crate::Runtime): the same value, its clones, or wrappers around it; backends without
    /// a runtime have no such identity), or, from the first round that reaches them, the same server
    /// (by the [`SERVER_ID`](crate::script::SERVER_ID) script, Redis's `run_id`, whatever clients reach
    /// it; not asked of a Redis Cluster backend): counted twice, one server could make a majority with
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
            config: LeaseConfig::default(),
            node_timeout: None,
        }
    }

    lease_settings! {
        guard = RedlockGuard;
        /// On a `Redlock`, the TTL of the lock on each master.
        timeout;
        /// On a `Redlock`, `Some(d)` makes exactly one round when `d` is zero, and `None` keeps trying
        /// while the lock is busy but reports an outage of a majority at once (see
        /// [`acquire`](Self::acquire)).
        wait_timeout;
        backoff;
        max_hold;
        /// On a `Redlock`, the fence is strictly increasing across the holders of this key; see
        /// [Fencing across masters](self#fencing-across-masters) for how and why.
        ///
        /// Each master keeps a counter beside the lock key (named as for
        /// [`RedisLock::fencing`](crate::RedisLock::fencing), e.g. `key:redlease:fence:{DDDDDD}`), never
        /// deleted.
        fencing;
        metrics_name;
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

    /// The per-master bound set by [`node_timeout`](Self::node_timeout); `None` when not set (the
    /// default then applies: a tenth of the TTL, at most
    /// [`MAX_DEFAULT_NODE_TIMEOUT`](Self::MAX_DEFAULT_NODE_TIMEOUT)).
    pub fn get_node_timeout(&self) -> Option<Duration> {
        self.node_timeout
    }

    /// The lock key, exactly as given.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The configured TTL.
    #[deprecated(note = "use get_timeout")]
    pub fn ttl(&self) -> Duration {
        self.config.timeout
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
    ///
    /// The wait deadline bounds the time to fail too: a round still running 100 ms past it (masters
    /// that do not answer) is given up with [`LockError::Timeout`], and what it may have acquired is
    /// released as for a dropped future.
    pub async fn acquire(&self) -> Result<RedlockGuard> {
        let plan = self.validate()?;
        let runtime = runtime_of(&*self.nodes[0]);
        let wait = plan.config.wait_timeout;
        let bounded = runtime.within_wait(&self.key, wait, self.acquire_planned(&plan));
        observe::acquiring(&plan.config.observe, &self.key, runtime, bounded).await
    }

    /// [`acquire`](Self::acquire) after validation, neither observed nor bounded by the caller.
    async fn acquire_planned(&self, plan: &rounds::Plan) -> Result<RedlockGuard> {
        // Master 0's runtime is the Redlock's clock and timer.
        let runtime = runtime_of(&*self.nodes[0]);
        let started = runtime.now();
        let deadline = plan
            .config
            .wait_timeout
            .and_then(|wait| started.checked_add(wait));
        let mut attempt: u32 = 0;
        loop {
            let failed = match self.round(plan).await {
                Round::Acquired(guard) => return Ok(*guard),
                Round::Refused(error) => return Err(error),
                Round::Failed(failed) => failed,
            };
            let by_errors = failed.decided_by_errors(plan.quorum);
            let mut delay = plan.config.backoff.delay(attempt);
            match deadline {
                None if by_errors => return Err(failed.into_error(&self.key, plan.quorum)),
                None => {}
                Some(deadline) => {
                    let now = runtime.now();
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
            runtime.sleep(delay).await;
            attempt = attempt.saturating_add(1);
        }
    }

    /// One round: `Ok(None)` when no majority was reached and failed masters did not decide it (the
    /// lock is busy), [`LockError::Quorum`] when they did. The partial locks of a failed round are
    /// released on every master before this returns.
    pub async fn try_acquire(&self) -> Result<Option<RedlockGuard>> {
        let plan = self.validate()?;
        let wait = plan.config.wait_timeout;
        let round = runtime_of(&*self.nodes[0])
            .within_wait(&self.key, wait, async { Ok(self.round(&plan).await) });
        match round.await? {
            Round::Acquired(guard) => Ok(Some(*guard)),
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
        lease::run(self.acquire().await?, body).await
    }
}

impl fmt::Debug for Redlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redlock")
            .field("key", &self.key)
            .field("nodes", &self.nodes.len())
            .field("timeout", &self.config.timeout)
            .field("wait_timeout", &self.config.wait_timeout)
            .field("node_timeout", &self.node_timeout)
            .field("backoff", &self.config.backoff)
            .field("max_hold", &self.config.max_hold)
            .field("fencing", &self.config.fencing)
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
