//! Where the history is looked up from: each server's lock keys over time, downtimes, pauses and
//! losses of data.

use std::collections::HashMap;
use std::time::Duration;

use super::super::executor::Instant;
use super::{Event, What};

/// A server's lock key over time.
#[derive(Debug, Default)]
pub(super) struct Timeline {
    /// (from, holder and its expiry), in time order; each state holds until the next.
    pub(super) states: Vec<(Instant, Option<(String, Instant)>)>,
}

impl Timeline {
    /// The index of the state in effect at `t`.
    fn index_at(&self, t: Instant) -> Option<usize> {
        let n = self.states.partition_point(|(from, _)| *from <= t);
        n.checked_sub(1)
    }

    /// The token holding the key at `t` (expiry applied).
    pub(super) fn holder_at(&self, t: Instant) -> Option<&str> {
        let (_, holder) = &self.states[self.index_at(t)?];
        match holder {
            Some((token, expires)) if *expires > t => Some(token),
            _ => None,
        }
    }

    /// Instants in `[from, to)` where the holder may change: state changes and expiries.
    pub(super) fn breakpoints(&self, from: Instant, to: Instant, into: &mut Vec<Instant>) {
        let first = self.index_at(from).unwrap_or(0);
        for (at, holder) in &self.states[first..] {
            if *at >= to {
                break;
            }
            if *at > from {
                into.push(*at);
            }
            if let Some((_, expires)) = holder
                && *expires > from
                && *expires < to
            {
                into.push(*expires);
            }
        }
    }

    /// The first moment in `[from, to)` that starts a stretch of at least `length` with no holder, if
    /// any.
    pub(super) fn free_stretch(
        &self,
        from: Instant,
        to: Instant,
        length: Duration,
    ) -> Option<Instant> {
        let mut points = vec![from];
        self.breakpoints(from, to, &mut points);
        points.push(to);
        points.sort();
        let mut free_since: Option<Instant> = None;
        for window in points.windows(2) {
            let (a, b) = (window[0], window[1]);
            if a == b {
                continue;
            }
            if self.holder_at(a).is_none() {
                let since = *free_since.get_or_insert(a);
                if b - since >= length {
                    return Some(since);
                }
            } else {
                free_since = None;
            }
        }
        None
    }
}

/// Everything the checks look things up in, built once from the history.
pub(super) struct Index<'a> {
    pub(super) timelines: HashMap<(usize, &'a str), Timeline>,
    /// The same, for each server's replica.
    pub(super) replicas: HashMap<(usize, &'a str), Timeline>,
    /// Per server: (at, lost range) of rollbacks not covered by replica acknowledgement.
    pub(super) rollbacks: HashMap<usize, Vec<(Instant, u64, u64, bool)>>,
    pub(super) downs: HashMap<usize, Vec<(Instant, Instant)>>,
    pub(super) pauses: HashMap<usize, Vec<(Instant, Instant)>>,
    pub(super) guard_ends: HashMap<&'a str, Instant>,
    /// Per (server, token): when the server first held the token.
    pub(super) first_held: HashMap<(usize, &'a str), Instant>,
}

impl<'a> Index<'a> {
    pub(super) fn new(history: &'a [Event]) -> Self {
        let mut index = Index {
            timelines: HashMap::new(),
            replicas: HashMap::new(),
            rollbacks: HashMap::new(),
            downs: HashMap::new(),
            pauses: HashMap::new(),
            guard_ends: HashMap::new(),
            first_held: HashMap::new(),
        };
        for event in history {
            match &event.what {
                What::KeyState {
                    server,
                    key,
                    holder,
                    ..
                } => {
                    if let Some((token, _)) = holder {
                        index
                            .first_held
                            .entry((*server, token.as_str()))
                            .or_insert(event.at);
                    }
                    index
                        .timelines
                        .entry((*server, key.as_str()))
                        .or_default()
                        .states
                        .push((event.at, holder.clone()));
                }
                What::ReplicaState {
                    server,
                    key,
                    holder,
                } => index
                    .replicas
                    .entry((*server, key.as_str()))
                    .or_default()
                    .states
                    .push((event.at, holder.clone())),
                What::Rollback {
                    server,
                    to_seq,
                    from_seq,
                    covered,
                } => index
                    .rollbacks
                    .entry(*server)
                    .or_default()
                    .push((event.at, *to_seq, *from_seq, *covered)),
                What::Down { server, until } => {
                    index
                        .downs
                        .entry(*server)
                        .or_default()
                        .push((event.at, *until));
                }
                What::Pause { process, until } => {
                    index
                        .pauses
                        .entry(*process)
                        .or_default()
                        .push((event.at, *until));
                }
                // A guard's beliefs end when it is released or dropped, or when `hold` reports the
                // lease lost (the library releases it then); a belief stated after that is checked
                // in full.
                What::GuardEnd { token, .. }
                | What::Work {
                    token, lost: true, ..
                } => {
                    index.guard_ends.entry(token.as_str()).or_insert(event.at);
                }
                _ => {}
            }
        }
        index
    }

    pub(super) fn holds(&self, server: usize, key: &str, token: &str, t: Instant) -> bool {
        self.timelines
            .get(&(server, key))
            .and_then(|timeline| timeline.holder_at(t))
            == Some(token)
    }

    /// Whether `server` held `key` for `token` at some instant of `[from, to]`.
    pub(super) fn held_during(
        &self,
        server: usize,
        key: &str,
        token: &str,
        from: Instant,
        to: Instant,
    ) -> bool {
        let Some(timeline) = self.timelines.get(&(server, key)) else {
            return false;
        };
        let mut points = vec![from];
        timeline.breakpoints(from, to, &mut points);
        points.push(to);
        points.iter().any(|t| timeline.holder_at(*t) == Some(token))
    }

    pub(super) fn down(&self, server: usize, t: Instant) -> bool {
        self.downs
            .get(&server)
            .is_some_and(|downs| downs.iter().any(|(from, to)| *from <= t && t < *to))
    }

    pub(super) fn paused(&self, process: usize, from: Instant, to: Instant) -> bool {
        self.pauses
            .get(&process)
            .is_some_and(|pauses| pauses.iter().any(|(a, b)| *a < to && from < *b))
    }

    /// Whether a server of `servers` lost data (a rollback replicas did not cover) between the moment it
    /// first held `token` (or `from`, if earlier) and `to`: then a belief may be broken by the documented
    /// limits of asynchronous replication.
    pub(super) fn data_lost(
        &self,
        servers: &[usize],
        token: &str,
        from: Instant,
        to: Instant,
    ) -> bool {
        servers.iter().any(|server| {
            let since = self
                .first_held
                .get(&(*server, token))
                .map_or(from, |first| (*first).min(from));
            self.rollbacks.get(server).is_some_and(|rollbacks| {
                rollbacks
                    .iter()
                    .any(|(at, _, _, covered)| !covered && *at >= since && *at <= to)
            })
        })
    }

    /// The first instant in `[from, to)` where fewer than `quorum` of `servers` hold `key` for `token`
    /// (a server that is down counts as holding: it grants nothing to anyone meanwhile).
    pub(super) fn first_gap(
        &self,
        servers: &[usize],
        quorum: usize,
        key: &str,
        token: &str,
        from: Instant,
        to: Instant,
    ) -> Option<(Instant, Vec<Option<String>>)> {
        if from >= to {
            return None;
        }
        let mut points = vec![from];
        for server in servers {
            if let Some(timeline) = self.timelines.get(&(*server, key)) {
                timeline.breakpoints(from, to, &mut points);
            }
            if let Some(downs) = self.downs.get(server) {
                for (a, b) in downs {
                    for p in [*a, *b] {
                        if p > from && p < to {
                            points.push(p);
                        }
                    }
                }
            }
        }
        points.sort();
        points.dedup();
        for p in points {
            let holding = servers
                .iter()
                .filter(|s| self.holds(**s, key, token, p) || self.down(**s, p))
                .count();
            if holding < quorum {
                let seen = servers
                    .iter()
                    .map(|s| {
                        self.timelines
                            .get(&(*s, key))
                            .and_then(|t| t.holder_at(p))
                            .map(str::to_owned)
                    })
                    .collect();
                return Some((p, seen));
            }
        }
        None
    }
}
