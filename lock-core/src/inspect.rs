//! Inspection: what an operator asks first about a key (who holds it, for how long, which fence was
//! issued last, who waits), answered by one read-only round trip per primitive: [`LockInfo`]
//! ([`RedisLock::inspect`]), [`SemaphoreInfo`] ([`Semaphore::inspect`](crate::Semaphore::inspect)),
//! [`RwLockInfo`] ([`RwLock::inspect`](crate::RwLock::inspect)), [`ElectionInfo`]
//! ([`Election::inspect`](crate::Election::inspect)) and [`RedlockInfo`] ([`Redlock::inspect`]).
//!
//! Every remaining lease is computed by the script from the server's clock (`TIME`), never from this
//! process's; `waiting_here` counts the tasks of this process waiting through the same backend (its
//! clones included), which no other process can see.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;

use crate::backend::{BackendError, LockBackend, ScriptValue, runtime_of};
use crate::error::{LockError, NodeError, Result};
use crate::lock::RedisLock;
use crate::redlock::Redlock;
use crate::{keys, script};

/// A lock key as [`RedisLock::inspect`] found it.
///
/// ```
/// use lock_core::{RedisLock, memory::MemoryBackend};
///
/// # futures::executor::block_on(async {
/// let lock = RedisLock::new(MemoryBackend::new(), "reports:nightly").fencing(true);
/// let guard = lock.acquire().await?;
/// let info = lock.inspect().await?;
/// assert_eq!(info.holder.as_deref(), Some(guard.token()));
/// assert_eq!(info.fence, guard.fence());
/// assert!(info.ttl.is_some());
/// # Ok::<(), lock_core::LockError>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockInfo {
    /// The holder's token (the key's value, [`LockGuard::token`](crate::LockGuard::token)), or `None`
    /// when nobody holds the key.
    pub holder: Option<String>,
    /// The key's remaining time to live on the server (`PTTL`), or `None` when there is no key (or,
    /// never for a key this library wrote, a key without a TTL).
    pub ttl: Option<Duration>,
    /// The last fence issued for the key (its fence counter), if fencing was ever used on it: the
    /// holder's fence while a fenced holder holds it.
    pub fence: Option<u64>,
    /// How many tasks of this process wait in line for the key through this lock's backend (and its
    /// clones), not counting the one whose turn it is. Fair waiters wait in Redis instead: see
    /// [`queue`](Self::queue).
    pub waiting_here: usize,
    /// The waiters of a [fair](RedisLock::fair) lock on the key, in the order they will be granted,
    /// from every process (their tokens, whose places have not expired). Empty when nobody waits
    /// fairly, and so always for a plain lock's waiters, which do not queue in Redis.
    pub queue: Vec<String>,
}

/// One holder of a semaphore, as [`Semaphore::inspect`](crate::Semaphore::inspect) found it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PermitInfo {
    /// The acquisition's token ([`Permit::token`](crate::Permit::token)).
    pub token: String,
    /// How many permits it holds.
    pub permits: u32,
    /// How long its lease has left, on the server's clock.
    pub remaining: Duration,
}

/// A semaphore as [`Semaphore::inspect`](crate::Semaphore::inspect) found it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SemaphoreInfo {
    /// The live holders, soonest to expire first (expired ones are not counted, whether or not the
    /// server has removed them yet).
    pub holders: Vec<PermitInfo>,
    /// The limit the permits are held under, as stored beside them; `None` when the key holds none
    /// (nobody holds a permit).
    pub limit: Option<u32>,
    /// The permits held now: the sum of the holders' permits.
    pub held: u32,
    /// The permits free now: the stored limit (this semaphore's own when none is stored) less
    /// [`held`](Self::held). Unlike [`available`](crate::Semaphore::available), answered also when
    /// the stored limit differs from this semaphore's.
    pub available: u32,
    /// The last fence issued for the key, if fencing was ever used on it.
    pub fence: Option<u64>,
    /// How many tasks of this process wait for a permit through this semaphore's backend (and its
    /// clones).
    pub waiting_here: usize,
}

/// One hold of a read-write lock, or one waiting writer's intent, as
/// [`RwLock::inspect`](crate::RwLock::inspect) found it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HoldInfo {
    /// The hold's token ([`ReadGuard::token`](crate::ReadGuard::token),
    /// [`WriteGuard::token`](crate::WriteGuard::token)); for a waiting writer, the id of its
    /// intent (one per `write` call, not a guard's token).
    pub token: String,
    /// How long it has left on the server's clock (a waiting writer refreshes its intent while it
    /// waits).
    pub remaining: Duration,
}

/// A read-write lock as [`RwLock::inspect`](crate::RwLock::inspect) found it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RwLockInfo {
    /// The live read holds, soonest to expire first.
    pub readers: Vec<HoldInfo>,
    /// The write hold, if a writer holds the lock.
    pub writer: Option<HoldInfo>,
    /// The writers waiting, from every process: while one waits, no new reader enters.
    pub waiting_writers: Vec<HoldInfo>,
    /// The last fence issued for the key, if fencing was ever used on it.
    pub fence: Option<u64>,
    /// How many tasks of this process wait for a hold through this lock's backend (and its clones).
    pub waiting_here: usize,
}

/// An election as [`Election::inspect`](crate::Election::inspect) found it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ElectionInfo {
    /// The leader's candidate id, or `None` when nobody leads.
    pub leader: Option<String>,
    /// The current term's token ([`Leadership::token`](crate::Leadership::token)), or `None` when
    /// nobody leads.
    pub token: Option<String>,
    /// The last term issued (the election key's fence counter): the leader's
    /// [`term`](crate::Leadership::term) while one leads, `None` before the first term.
    pub term: Option<u64>,
    /// How long the leader's term has left unless it renews, on the server's clock.
    pub ttl: Option<Duration>,
    /// How many campaigns of this process wait through this election's backend (and its clones).
    pub waiting_here: usize,
}

/// A [`Redlock`] as [`Redlock::inspect`] found it on each master.
#[derive(Debug)]
#[non_exhaustive]
pub struct RedlockInfo {
    /// Each master's view of the key, in the order the masters were given; `None` for a master that
    /// did not answer (its error is in [`errors`](Self::errors)).
    pub nodes: Vec<Option<LockInfo>>,
    /// The token a majority of the masters hold, if any: the holder of the Redlock.
    pub holder: Option<String>,
    /// The masters that did not answer, by index, with their errors.
    pub errors: Vec<NodeError>,
}

/// An inspection of an empty key is `InvalidArgument`, as every operation on it is; nothing is sent.
fn check_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(LockError::invalid("key", "must not be empty"));
    }
    Ok(())
}

/// The error for a reply of the wrong shape from `script`.
pub(crate) fn unexpected(key: &str, script: &str, reply: &ScriptValue) -> LockError {
    LockError::backend_failed(
        key,
        BackendError::permanent(
            "redlease",
            format!("unexpected reply from the {script} script: {reply:?}"),
        ),
    )
}

/// A counter's value: nil when the counter does not exist.
pub(crate) fn counter(value: &ScriptValue) -> Option<Option<u64>> {
    match value {
        ScriptValue::Nil => Some(None),
        ScriptValue::Str(text) => text.parse().ok().map(Some),
        ScriptValue::Int(n) => u64::try_from(*n).ok().map(Some),
        _ => None,
    }
}

/// Milliseconds left, as a duration: `None` when negative.
pub(crate) fn millis_left(value: &ScriptValue) -> Option<Duration> {
    value
        .as_int()
        .and_then(|ms| u64::try_from(ms).ok())
        .map(Duration::from_millis)
}

/// `{member, ms left}` pairs.
pub(crate) fn members(value: &ScriptValue) -> Option<Vec<(String, Duration)>> {
    let ScriptValue::Array(items) = value else {
        return None;
    };
    items
        .iter()
        .map(|item| match item {
            ScriptValue::Array(pair) => match pair.as_slice() {
                [ScriptValue::Str(member), left] => Some((member.clone(), millis_left(left)?)),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Runs [`LOCK_INSPECT`](script::LOCK_INSPECT) on `backend` for `key`.
pub(crate) async fn inspect_lock(backend: &dyn LockBackend, key: &str) -> Result<LockInfo> {
    check_key(key)?;
    let (counter_key, queue, beats) = (
        keys::fence_counter(key)?,
        keys::fair_queue(key)?,
        keys::fair_beats(key)?,
    );
    let reply = backend
        .eval_script(
            &script::LOCK_INSPECT,
            &[key, &counter_key, &queue, &beats],
            &[],
        )
        .await
        .map_err(|source| LockError::backend_failed(key, source))?;
    let parsed = match &reply {
        ScriptValue::Array(items) => match items.as_slice() {
            [
                holder,
                ScriptValue::Int(pttl),
                fence,
                ScriptValue::Array(queue),
            ] => {
                let holder = match holder {
                    ScriptValue::Nil => Some(None),
                    ScriptValue::Str(token) => Some(Some(token.clone())),
                    _ => None,
                };
                let queue: Option<Vec<String>> = queue
                    .iter()
                    .map(|waiter| waiter.as_str().map(str::to_owned))
                    .collect();
                match (holder, counter(fence), queue) {
                    (Some(holder), Some(fence), Some(queue)) => Some(LockInfo {
                        holder,
                        // -2: no key; -1: no TTL.
                        ttl: u64::try_from(*pttl).ok().map(Duration::from_millis),
                        fence,
                        waiting_here: runtime_of(backend).waiting(key),
                        queue,
                    }),
                    _ => None,
                }
            }
            _ => None,
        },
        _ => None,
    };
    parsed.ok_or_else(|| unexpected(key, script::LOCK_INSPECT.name(), &reply))
}

impl RedisLock {
    /// What the key holds now, in one read-only round trip: the holder's token, the key's TTL on the
    /// server, the last fence issued for it, the fair waiters in order ([`LockInfo::queue`]); and how
    /// many tasks of this process wait for it.
    ///
    /// The same for a plain and a [fair](Self::fair) lock (they share the key); it sends nothing
    /// that writes, so it is safe against a live lock, from any process. An empty key is
    /// [`LockError::InvalidArgument`], and a key holding another kind of value (a semaphore's, say)
    /// a permanent [`LockError::Backend`] (`WRONGTYPE`).
    pub async fn inspect(&self) -> Result<LockInfo> {
        inspect_lock(&**self.backend(), self.key()).await
    }
}

impl Redlock {
    /// What each master holds for the key, read with [`RedisLock::inspect`]'s script on every master
    /// at once (one round trip each, unbounded beyond the backends' own call bounds), and which token
    /// a majority holds.
    pub async fn inspect(&self) -> Result<RedlockInfo> {
        check_key(self.key())?;
        if self.nodes().is_empty() {
            return Err(LockError::invalid("nodes", "must not be empty"));
        }
        let answers = join_all(
            self.nodes()
                .iter()
                .map(|node| inspect_lock(&**node, self.key())),
        )
        .await;
        let mut nodes = Vec::with_capacity(answers.len());
        let mut errors = Vec::new();
        for (node, answer) in answers.into_iter().enumerate() {
            match answer {
                Ok(info) => nodes.push(Some(info)),
                Err(LockError::Backend { source, .. }) => {
                    nodes.push(None);
                    errors.push(NodeError {
                        node,
                        error: source,
                    });
                }
                Err(other) => return Err(other),
            }
        }
        let holder = nodes
            .iter()
            .flatten()
            .filter_map(|info| info.holder.as_deref())
            .find(|token| {
                let holding = nodes
                    .iter()
                    .flatten()
                    .filter(|info| info.holder.as_deref() == Some(*token))
                    .count();
                holding >= self.quorum()
            })
            .map(str::to_owned);
        Ok(RedlockInfo {
            nodes,
            holder,
            errors,
        })
    }
}

/// The tasks of this process waiting for `key` through `backend`: in its line (locks), or registered
/// for a local wake-up (semaphores, read-write locks).
pub(crate) fn waiting_here(backend: &Arc<dyn LockBackend>, key: &str) -> usize {
    let runtime = runtime_of(&**backend);
    let wakeups = runtime
        .lines()
        .map_or(0, |lines| lines.wakeups.waiting(key));
    runtime.waiting(key) + wakeups
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::memory::MemoryBackend;

    #[test]
    fn a_redlock_is_held_by_the_token_a_majority_holds() {
        futures::executor::block_on(async {
            let masters: Vec<MemoryBackend> = (0..3).map(|_| MemoryBackend::new()).collect();
            let redlock = Redlock::new(masters.clone(), "jobs:redlock")
                .timeout(Duration::from_secs(10))
                .fencing(true);
            let free = redlock.inspect().await.expect("inspect");
            assert_eq!(free.holder, None);
            assert!(free.errors.is_empty());
            assert_eq!(free.nodes.len(), 3);

            let guard = redlock.acquire().await.expect("acquire");
            let held = redlock.inspect().await.expect("inspect");
            assert_eq!(held.holder.as_deref(), Some(guard.token()));
            for node in &held.nodes {
                let node = node.as_ref().expect("every master answered");
                assert_eq!(node.holder.as_deref(), Some(guard.token()));
                assert!(node.ttl.is_some_and(|ttl| ttl <= Duration::from_secs(10)));
                assert!(node.fence.is_some());
            }

            // Two masters lose the key: no majority holds it any more.
            masters[0].delete("jobs:redlock");
            masters[1].delete("jobs:redlock");
            let lost = redlock.inspect().await.expect("inspect");
            assert_eq!(lost.holder, None, "one master of three is no majority");
            assert_eq!(
                lost.nodes[2].as_ref().and_then(|n| n.holder.as_deref()),
                Some(guard.token())
            );

            let nobody = Redlock::new(Vec::<MemoryBackend>::new(), "k");
            assert!(matches!(
                nobody.inspect().await,
                Err(LockError::InvalidArgument {
                    argument: "nodes",
                    ..
                })
            ));
            let unnamed = Redlock::new(masters, "");
            assert!(matches!(
                unnamed.inspect().await,
                Err(LockError::InvalidArgument {
                    argument: "key",
                    ..
                })
            ));
        });
    }

    #[test]
    fn replies_of_the_wrong_shape_are_permanent_errors() {
        #[derive(Debug)]
        struct Odd;

        #[async_trait::async_trait]
        impl LockBackend for Odd {
            async fn set_nx(&self, _: &str, _: &str, _: Duration) -> Result<bool, BackendError> {
                Ok(false)
            }

            async fn eval_script(
                &self,
                _: &crate::Script,
                _: &[&str],
                _: &[&str],
            ) -> Result<ScriptValue, BackendError> {
                Ok(ScriptValue::Int(7))
            }
        }

        let error = futures::executor::block_on(RedisLock::new(Odd, "k").inspect()).unwrap_err();
        assert!(matches!(error, LockError::Backend { .. }), "{error:?}");
        assert!(!error.is_transient());
    }
}
