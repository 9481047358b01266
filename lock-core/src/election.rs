//! [`Election`]: leader election as a primitive, after etcd's `Election` and Curator's `LeaderLatch`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::{LockBackend, ScriptValue};
use crate::backoff::Backoff;
use crate::error::{LockError, Result};
use crate::guard::LockGuard;
use crate::lock::RedisLock;
use crate::script;

/// Candidates campaigning for one leadership, stored as a fenced lock on `key`.
///
/// The leader holds the lock; its value is `{id}:{uuid}`, so anyone can ask who leads. Every term gets a
/// fence ([`Leadership::term`]) larger than all earlier terms. A leader that stops renewing is replaced
/// within its TTL plus one poll (at most 100 ms); one that resigns is replaced within one poll.
///
/// ```
/// use std::time::Duration;
/// use lock_core::{Election, memory::MemoryBackend};
///
/// # futures::executor::block_on(async {
/// let election = Election::new(MemoryBackend::new(), "scheduler").ttl(Duration::from_secs(10)).id("node-a");
/// let leadership = election.campaign().await?;
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
}

impl Election {
    /// The default lease of a term: 10 s.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

    /// An election on `key` through `backend`, for a candidate with a random id and a 10 s lease.
    pub fn new(backend: impl LockBackend, key: impl Into<String>) -> Self {
        let lock = RedisLock::new(backend, key)
            .timeout(Self::DEFAULT_TTL)
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
        }
    }

    /// This candidate's id, reported by [`leader`](Self::leader) while it leads.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Arc::from(id.into());
        self
    }

    /// The lease of a term: a leader that stops renewing is replaced after this long.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.lock = self.lock.timeout(ttl);
        self
    }

    /// The candidate id.
    pub fn candidate_id(&self) -> &str {
        &self.id
    }

    /// Waits until this candidate leads, then returns its term.
    ///
    /// Dropping the future stops campaigning; a term won at that moment is released in the background.
    pub async fn campaign(&self) -> Result<Leadership> {
        if self.id.is_empty() {
            return Err(LockError::invalid("id", "must not be empty"));
        }
        let lock = self.lock.clone().owner(self.id.clone());
        let guard = lock.acquire().await?;
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

    /// The id of the current leader, or `None` when nobody leads.
    pub async fn leader(&self) -> Result<Option<String>> {
        let key = self.lock.key();
        let reply = self
            .lock
            .backend()
            .eval_script(&script::READ, &[key], &[])
            .await
            .map_err(|source| LockError::backend_failed(key, source))?;
        Ok(match reply {
            ScriptValue::Str(token) => Some(id_of(&token).to_owned()),
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

    /// This leader's candidate id.
    pub fn id(&self) -> &str {
        &self.id
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
mod tests {
    use super::*;

    #[test]
    fn ids_are_read_back_from_tokens() {
        let uuid = "67e55044-10b1-426f-9247-bb680e5fe0c8";
        assert_eq!(id_of(&format!("node-a:{uuid}")), "node-a");
        assert_eq!(id_of(&format!("a:b:{uuid}")), "a:b");
        assert_eq!(id_of(&format!(":{uuid}")), "");
        assert_eq!(id_of("short"), "short");
        assert_eq!(
            id_of("ünïcödé-with-no-uuid-but-long-enough-to-slice"),
            "ünïcödé-with-no-uuid-but-long-enough-to-slice"
        );
    }
}
