//! Sorted-set keys over time: the holders of primitives whose holders share one key (a semaphore's
//! permits; a read-write lock's holds can be looked up the same way). Each server records the members
//! of such a key after every script that touched it (`What::Members`), each holder with its true
//! expiry; a primitive's invariant module reads members through [`SetIndex`] and gives them meaning.

use std::collections::HashMap;

use super::super::executor::Instant;
use super::{Event, What};

/// One recorded state of a sorted-set key: every member with its score and, for holders (scored above
/// 0), its true expiry.
pub(super) struct SetState {
    pub(super) at: Instant,
    pub(super) members: Vec<(String, i64, Instant)>,
}

/// A server's sorted-set key over time; each state holds until the next.
#[derive(Default)]
pub(super) struct SetTimeline {
    pub(super) states: Vec<SetState>,
}

impl SetTimeline {
    /// The state in effect at `t`.
    pub(super) fn state_at(&self, t: Instant) -> Option<&SetState> {
        let n = self.states.partition_point(|state| state.at <= t);
        n.checked_sub(1).map(|i| &self.states[i])
    }

    /// Whether `member` is a live holder at `t` (in the set, and not expired).
    pub(super) fn live(&self, member: &str, t: Instant) -> bool {
        self.state_at(t).is_some_and(|state| {
            state
                .members
                .iter()
                .any(|(m, score, expires)| m == member && *score > 0 && *expires > t)
        })
    }

    /// The live holders at `t`, with their scores.
    pub(super) fn holders_at(&self, t: Instant) -> Vec<&str> {
        self.state_at(t).map_or_else(Vec::new, |state| {
            state
                .members
                .iter()
                .filter(|(_, score, expires)| *score > 0 && *expires > t)
                .map(|(m, ..)| m.as_str())
                .collect()
        })
    }

    /// Instants in `(from, to)` where the live holders may change: state changes and expiries.
    pub(super) fn breakpoints(&self, from: Instant, to: Instant, into: &mut Vec<Instant>) {
        let first = self
            .states
            .partition_point(|state| state.at <= from)
            .saturating_sub(1);
        for state in &self.states[first.min(self.states.len())..] {
            if state.at >= to {
                break;
            }
            if state.at > from {
                into.push(state.at);
            }
            for (_, score, expires) in &state.members {
                if *score > 0 && *expires > from && *expires < to {
                    into.push(*expires);
                }
            }
        }
    }
}

/// Every sorted-set key's timeline per server, and when each member was first held and data lost.
pub(super) struct SetIndex<'a> {
    pub(super) timelines: HashMap<(usize, &'a str), SetTimeline>,
    /// Per (server, member): when the server first had the member.
    first_held: HashMap<(usize, &'a str), Instant>,
    /// Per server: when it went back to older data, covered by a replica's acknowledgement or not (a
    /// primitive without `replicas` waits for none, so every rollback may lose its writes).
    rollbacks: HashMap<usize, Vec<Instant>>,
}

impl<'a> SetIndex<'a> {
    pub(super) fn new(history: &'a [Event]) -> Self {
        let mut index = SetIndex {
            timelines: HashMap::new(),
            first_held: HashMap::new(),
            rollbacks: HashMap::new(),
        };
        for event in history {
            match &event.what {
                What::Members {
                    server,
                    key,
                    members,
                    ..
                } => {
                    for (member, score, _) in members {
                        if *score > 0 {
                            index
                                .first_held
                                .entry((*server, member.as_str()))
                                .or_insert(event.at);
                        }
                    }
                    index
                        .timelines
                        .entry((*server, key.as_str()))
                        .or_default()
                        .states
                        .push(SetState {
                            at: event.at,
                            members: members.clone(),
                        });
                }
                What::Rollback { server, .. } => {
                    index.rollbacks.entry(*server).or_default().push(event.at)
                }
                _ => {}
            }
        }
        index
    }

    /// Whether `server` lost data between the moment it first had `member` (or `from`, if earlier)
    /// and `to`: a belief in the member may then be broken by the documented limits of asynchronous
    /// replication and restarts.
    pub(super) fn data_lost(
        &self,
        server: usize,
        member: &str,
        from: Instant,
        to: Instant,
    ) -> bool {
        let since = self
            .first_held
            .get(&(server, member))
            .map_or(from, |first| (*first).min(from));
        self.rollbacks
            .get(&server)
            .is_some_and(|list| list.iter().any(|at| *at >= since && *at <= to))
    }

    /// The first instant of `[from, to)` at which `member` is not a live holder of `key` on `server`.
    pub(super) fn first_gap(
        &self,
        server: usize,
        key: &str,
        member: &str,
        from: Instant,
        to: Instant,
    ) -> Option<Instant> {
        if from >= to {
            return None;
        }
        let Some(timeline) = self.timelines.get(&(server, key)) else {
            return Some(from);
        };
        let mut points = vec![from];
        timeline.breakpoints(from, to, &mut points);
        points.sort();
        points.into_iter().find(|p| !timeline.live(member, *p))
    }
}
