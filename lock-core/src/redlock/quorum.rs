//! Counting the masters' answers: majorities, masters listed twice, clock skew, and the validity a
//! majority still holds.

use std::time::Duration;

use super::rounds::Vote;
use super::{Redlock, ServerId};
use crate::backend::{BackendError, ScriptValue};
use crate::error::{LockError, NodeError, Result};
use crate::lease::Written;
use crate::script::Script;
use crate::time::Moment;

pub(super) fn granted(votes: &[Vote]) -> usize {
    votes
        .iter()
        .filter(|vote| matches!(vote, Vote::Granted(_)))
        .count()
}

/// The first two positions holding items that are `same`, if any.
pub(super) fn first_duplicate<T>(
    items: &[T],
    same: impl Fn(&T, &T) -> bool,
) -> Option<(usize, usize)> {
    items.iter().enumerate().find_map(|(second, item)| {
        items[..second]
            .iter()
            .position(|earlier| same(earlier, item))
            .map(|first| (first, second))
    })
}

/// `InvalidArgument` when two masters are known to be one server.
pub(super) fn duplicate_servers(ids: &[ServerId]) -> Result<()> {
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
pub(super) fn clock_skew(
    key: &str,
    clocks: &[Option<i64>],
    round_took: Duration,
) -> Option<LockError> {
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
pub(super) struct Failed {
    pub(super) votes: usize,
    pub(super) errors: Vec<NodeError>,
}

impl Failed {
    pub(super) fn decided_by_errors(&self, quorum: usize) -> bool {
        decided_by_errors(self.votes, self.errors.len(), quorum)
    }

    pub(super) fn into_error(self, key: &str, quorum: usize) -> LockError {
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
pub(super) fn written_answers(
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

/// Which masters confirmed, for [`RedlockGuard::tally`](super::RedlockGuard::tally).
pub(super) fn confirmed(
    answers: Vec<Result<Option<Written>, BackendError>>,
) -> Vec<Result<bool, BackendError>> {
    answers
        .into_iter()
        .map(|answer| answer.map(|written| written.is_some()))
        .collect()
}

/// Whether failed masters made the difference: no majority, but there would have been one had every
/// failed master agreed.
pub(super) fn decided_by_errors(votes: usize, errors: usize, quorum: usize) -> bool {
    votes < quorum && votes + errors >= quorum
}

/// The moment until which at least `quorum` masters are known to hold the lock: the `quorum`-th latest
/// of the per-master bounds.
pub(super) fn quorum_deadline(bounds: &[Option<Moment>], quorum: usize) -> Option<Moment> {
    let mut known: Vec<Moment> = bounds.iter().flatten().copied().collect();
    known.sort_unstable_by(|a, b| b.cmp(a));
    quorum.checked_sub(1).and_then(|at| known.get(at).copied())
}
