//! The rounds a [`Redlock`] runs over its masters: acquisition (with the fence raise when fencing)
//! and the release of a round's partial locks, each request bounded by the per-node timeout.

use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::{Either, join, join_all, select};

use super::guard::RedlockGuard;
use super::quorum::{Failed, clock_skew, duplicate_servers, first_duplicate, granted};
use super::{LAYER, Node, Redlock, ServerId, default_node_timeout};
use crate::backend::{BackendError, LockBackend, ScriptValue, runtime_of};
use crate::error::{LockError, NodeError, Result};
use crate::lease::config::ValidatedConfig;
use crate::lease::observe::Primitive;
use crate::lease::{self, Holding, Until, Validity, fenced_reply, retry_in_background};
use crate::runtime::Runtime;
use crate::script;
use crate::time::validity_deadline;

impl Redlock {
    pub(super) fn validate(&self) -> Result<Plan> {
        if self.nodes.is_empty() {
            return Err(LockError::invalid("nodes", "must not be empty"));
        }
        let config = self.config.validate(&self.key)?;
        let config = ValidatedConfig {
            observe: config.observe.for_primitive(Primitive::Redlock),
            ..config
        };
        self.refuse_duplicate_masters()?;
        let ttl = config.ttl;
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
        Ok(Plan {
            config,
            node_timeout,
            quorum: self.quorum(),
        })
    }

    /// A master listed twice: the same backend by its [`Runtime`] (backends without
    /// one have no identity here), or the same server by the run ids learnt so far.
    fn refuse_duplicate_masters(&self) -> Result<()> {
        let runtimes: Vec<_> = self.nodes.iter().map(|node| node.runtime()).collect();
        let same = |a: &Option<&Runtime>, b: &Option<&Runtime>| match (a, b) {
            (Some(a), Some(b)) => a.same_as(b),
            _ => false,
        };
        if let Some((first, second)) = first_duplicate(&runtimes, same) {
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
    pub(super) async fn round(&self, plan: &Plan) -> Round {
        plan.config.observe.attempted();
        let token = lease::new_token(None);
        // Armed before sending: if this future is dropped mid-round, requests may still reach the
        // masters, so dropping the holdings releases the token everywhere in the background.
        let mut holdings =
            Holdings::new(self.nodes.clone(), self.key.clone(), token, plan.config.ttl);
        // Masters met for the first time are asked who they are, alongside the acquisition.
        let unidentified: Vec<bool> = self
            .lock_server_ids()
            .iter()
            .map(|id| *id == ServerId::Unknown)
            .collect();
        let clock = runtime_of(&*self.nodes[0]);
        let sent_at = clock.now();
        let replies = join_all(self.nodes.iter().zip(unidentified).map(|(node, ask)| {
            let acquire = bounded(
                node.as_ref(),
                plan.node_timeout,
                self.acquire_on(node.as_ref(), &holdings.token, plan),
            );
            let identify = async move {
                if !ask {
                    return Identified::NotAsked;
                }
                // A script without keys may run on any node of a cluster: its answer says nothing.
                if node.capabilities().cluster {
                    return Identified::Unavailable;
                }
                let call = node.eval_script(&script::SERVER_ID, &[], &[]);
                Identified::Answer(bounded(node.as_ref(), plan.node_timeout, call).await)
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
        if plan.config.fence_counter.is_some()
            && let Some(skew) = clock_skew(&self.key, &clocks, round_took)
        {
            release_everywhere(&mut holdings, plan.node_timeout).await;
            return Round::Refused(skew);
        }
        let valid_until = validity_deadline(sent_at, plan.config.ttl);
        let mut fence = None;
        if let Some(counter) = &plan.config.fence_counter
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
                .map(|vote| {
                    let until = matches!(vote, Vote::Granted(_)).then_some(valid_until);
                    Validity::granted(sent_at, until)
                })
                .collect();
            tracing::debug!(key = %self.key, votes = votes_for, nodes = self.nodes.len(), "redlock acquired");
            let holding = Holding::new(
                &plan.config,
                self.key.clone(),
                holdings.token.clone(),
                fence,
                sent_at,
                clock.clone(),
            );
            return Round::Acquired(Box::new(RedlockGuard {
                holding,
                holdings,
                quorum: plan.quorum,
                node_timeout: plan.node_timeout,
                bounds: Mutex::new(bounds),
            }));
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
                Identified::Answer(Ok(ScriptValue::Str(id))) if !id.is_empty() => {
                    ids[node] = ServerId::Known(id);
                }
                Identified::Answer(Ok(reply)) => {
                    tracing::debug!(key = %self.key, node, ?reply, "a master answered no server id");
                    ids[node] = ServerId::Unavailable;
                }
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
        match &plan.config.fence_counter {
            None => Ok(Reply {
                granted: node
                    .set_nx(&self.key, token, plan.config.ttl)
                    .await?
                    .then_some(None),
                clock: None,
            }),
            Some(counter) => {
                let reply = node
                    .eval_script(
                        &script::FENCED_ACQUIRE,
                        &[&self.key, counter],
                        &[token, &plan.config.ttl_arg],
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

/// What `validate` worked out once per acquisition.
pub(super) struct Plan {
    /// The shared lease settings (Redlock asks no replicas).
    pub(super) config: ValidatedConfig,
    node_timeout: Duration,
    pub(super) quorum: usize,
}

/// One master's answer in an acquisition round.
pub(super) enum Vote {
    /// Granted, with the master's fence when fencing.
    Granted(Option<u64>),
    Refused,
    Failed(BackendError),
}

pub(super) enum Round {
    Acquired(Box<RedlockGuard>),
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
    /// Its backend cannot tell (a cluster).
    Unavailable,
    /// Its answer to [`script::SERVER_ID`].
    Answer(Result<ScriptValue, BackendError>),
}

/// Runs `call` against `node`, failing it with a timeout after `bound` (on the node's own timer), so
/// that one hung master never stretches a round.
pub(super) async fn bounded<T>(
    node: &dyn LockBackend,
    bound: Duration,
    call: impl Future<Output = Result<T, BackendError>>,
) -> Result<T, BackendError> {
    let call = pin!(call);
    match select(call, runtime_of(node).sleep(bound)).await {
        Either::Left((reply, _)) => reply,
        Either::Right(_) => Err(BackendError::timed_out(LAYER, bound)),
    }
}

/// Sends the token-checked release to every master still armed in `holdings`, in parallel, each bounded
/// by `bound`; disarms the masters that answered, unless an acquiring request may still be in flight to
/// them (it may land after this release: the holdings' drop releases those again until the TTL has
/// passed). Returns each master's answer (`None` when not asked).
pub(super) async fn release_everywhere(
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
pub(super) struct Holdings {
    pub(super) nodes: Arc<[Node]>,
    pub(super) key: Arc<str>,
    pub(super) token: Arc<str>,
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
    pub(super) fn release_in_background(&self, why: &'static str, which: impl Fn(usize) -> bool) {
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
