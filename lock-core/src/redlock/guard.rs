//! [`RedlockGuard`]: one acquisition of a [`Redlock`](super::Redlock), and what its holder can do.

use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use futures::future::{BoxFuture, join_all};

use super::quorum::{confirmed, decided_by_errors, quorum_deadline, written_answers};
use super::rounds::{Holdings, bounded, release_everywhere};
use crate::backend::{BackendError, ScriptValue};
use crate::error::{LockError, NodeError, Result};
use crate::lease::{Held, Holding, Validity, Written, hold_renewed};
use crate::script::{self, Script};
use crate::time::{Moment, to_millis, validity_deadline};

/// One acquisition of a [`Redlock`](super::Redlock): its token, fence and validity, and the operations
/// that need them.
///
/// Every operation runs on all masters at once, each request bounded by the lock's per-node timeout,
/// and counts the answers: `Ok(true)` with a majority, `Ok(false)` when the answers alone rule a
/// majority out, [`LockError::Quorum`] when failed masters decided. Every script checks the token, so a
/// guard whose lock was taken over can never touch the new holder's lock.
///
/// Dropping a guard without [`release`](Self::release) never blocks: each master is released in the
/// background where its backend can spawn; otherwise the TTL frees it.
pub struct RedlockGuard {
    pub(super) holding: Holding,
    pub(super) holdings: Holdings,
    pub(super) quorum: usize,
    pub(super) node_timeout: Duration,
    /// Per master: what we know of its copy of our lock.
    pub(super) bounds: Mutex<Vec<Validity>>,
}

impl RedlockGuard {
    /// This acquisition's token: the value of the key on every master that holds the lock.
    pub fn token(&self) -> &str {
        &self.holding.token
    }

    /// The lock key, exactly as given.
    pub fn key(&self) -> &str {
        &self.holding.key
    }

    /// This acquisition's fencing token, when the lock has [`fencing`](super::Redlock::fencing) on:
    /// larger than the fence of every earlier holder of the key. Pass it with every write to the
    /// protected resource and let the resource refuse a fence lower than the highest it has seen.
    pub fn fence(&self) -> Option<u64> {
        self.holding.fence
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
                master.deny();
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
            .map(|master| master.server_expiry_ms())
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
                    .server_expiry_ms()
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
        let round_until = validity_deadline(sent_at, self.holding.ttl);
        let ttl_arg = &self.holding.ttl_arg;
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
        let observed = self.holding.take_observed();
        let key = self.holdings.key.clone();
        observed
            .releasing(&key, valid, self.release_unobserved(valid))
            .await
    }

    async fn release_unobserved(mut self, valid: bool) -> Result<bool> {
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
    /// unreachable) until the validity ran out; or the lock's `max_hold` passed. The lock is then
    /// released on every master in the background and the guard claims it no more:
    /// [`valid_for`](Self::valid_for) is zero, and [`release`](Self::release) answers `Ok(false)`.
    pub async fn hold<F: Future>(&self, work: F) -> Result<F::Output> {
        hold_renewed(self, work).await
    }

    fn valid_until(&self) -> Option<Moment> {
        let bounds: Vec<Option<Moment>> = self.lock_bounds().iter().map(Validity::until).collect();
        quorum_deadline(&bounds, self.quorum)
    }

    fn now(&self) -> Moment {
        self.holding.now()
    }

    fn lock_bounds(&self) -> MutexGuard<'_, Vec<Validity>> {
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
                Ok(Some(written)) => {
                    master.confirm(sent_at, *written);
                }
                Ok(None) => master.deny(),
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
                key: self.holding.key.to_string(),
                votes,
                needed: self.quorum,
                errors,
            })
        } else {
            Ok(false)
        }
    }
}

impl Held for RedlockGuard {
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
        let now = self.now();
        for master in self.lock_bounds().iter_mut() {
            master.end(now);
        }
        self.holdings
            .release_in_background("hold reported the lease lost", |_| true);
    }

    fn release_held(self) -> impl Future<Output = Result<bool>> + Send {
        self.release()
    }
}

impl fmt::Debug for RedlockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedlockGuard")
            .field("key", &self.holding.key)
            .field("token", &self.holding.token)
            .field("nodes", &self.holdings.nodes.len())
            .field("quorum", &self.quorum)
            .field("ttl", &self.holding.ttl)
            .field("fence", &self.holding.fence)
            .field("valid_for", &self.valid_for())
            .finish()
    }
}
