//! Sorted sets, as the memory backend keeps them: the holders of semaphores and read-write locks and
//! the waiters of fair locks, each scored by a number (an expiry on the server's wall clock in
//! milliseconds, or a ticket), with the key's own expiry as Redis keeps it.

use std::collections::HashMap;
use std::time::Duration;

use crate::time::Moment;

/// A sorted set: members and their scores, and the key's expiry.
#[derive(Debug, Clone, Default)]
pub(super) struct SortedSet {
    scores: HashMap<String, i64>,
    /// When the key itself expires (`PEXPIREAT`), on the store's clock; `None` without a TTL.
    pub(super) expires_at: Option<Moment>,
}

impl SortedSet {
    /// The score of `member`, if it is in the set (`ZSCORE`).
    pub(super) fn score(&self, member: &str) -> Option<i64> {
        self.scores.get(member).copied()
    }

    /// Adds `member` or changes its score (`ZADD`).
    pub(super) fn insert(&mut self, member: &str, score: i64) {
        self.scores.insert(member.to_owned(), score);
    }

    /// Removes `member` (`ZREM`); answers whether it was there.
    pub(super) fn remove(&mut self, member: &str) -> bool {
        self.scores.remove(member).is_some()
    }

    /// Removes every member scored within `low..=high` (`ZREMRANGEBYSCORE`).
    pub(super) fn remove_scored(&mut self, low: i64, high: i64) {
        self.scores.retain(|_, score| *score < low || *score > high);
    }

    /// How many members the set has (`ZCARD`).
    pub(super) fn len(&self) -> usize {
        self.scores.len()
    }

    /// Whether the set has no member (Redis deletes such a key).
    pub(super) fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }

    /// Every member with its score, lowest first and, for equal scores, by member, as `ZRANGE` orders
    /// them.
    pub(super) fn ordered(&self) -> Vec<(String, i64)> {
        let mut members: Vec<(String, i64)> = self
            .scores
            .iter()
            .map(|(member, score)| (member.clone(), *score))
            .collect();
        members.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        members
    }

    /// The first member in `ZRANGE` order, if any.
    pub(super) fn first(&self) -> Option<(&str, i64)> {
        self.scores
            .iter()
            .min_by(|a, b| a.1.cmp(b.1).then_with(|| a.0.cmp(b.0)))
            .map(|(member, score)| (member.as_str(), *score))
    }

    /// The highest score, if any.
    pub(super) fn max_score(&self) -> Option<i64> {
        self.scores.values().copied().max()
    }

    /// The members, in no order.
    pub(super) fn members(&self) -> impl Iterator<Item = (&str, i64)> {
        self.scores.iter().map(|(m, s)| (m.as_str(), *s))
    }

    /// Sets the key's expiry to the wall-clock millisecond `at_ms` (`PEXPIREAT`), given that the store's
    /// clock reads `now` while the wall clock reads `wall`.
    pub(super) fn expire_at_wall(&mut self, at_ms: i64, now: Moment, wall: Duration) {
        let wall_ms = i64::try_from(wall.as_millis()).unwrap_or(i64::MAX);
        let left = at_ms.saturating_sub(wall_ms).max(0);
        self.expires_at = Some(now + Duration::from_millis(left.unsigned_abs()));
    }
}

/// The wall clock in milliseconds, as a script computes it from `TIME`.
pub(super) fn wall_millis(wall: Duration) -> i64 {
    i64::try_from(wall.as_millis()).unwrap_or(i64::MAX)
}
