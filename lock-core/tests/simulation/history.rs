//! The recorded history of a run, stamped with true (virtual) time, and the checker of its invariants.
//!
//! The simulated servers record every change of a lock key, every fence they issue and every
//! `fenced_set` they accept, and every loss of data (a failover to a lagging replica, a restart); the
//! workload records what the clients believed (`valid_for` read at an instant, turned into a true-time
//! interval with the client's clock rate), what each operation returned, and when guards ended. The
//! checker then judges the history alone, so it can be fed hand-written broken histories.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::executor::Instant;

/// One thing that happened, at a true instant.
#[derive(Debug, Clone)]
pub struct Event {
    pub at: Instant,
    pub what: What,
}

/// What happened. (Some fields only serve the printed trace of a failing seed.)
#[derive(Debug, Clone)]
#[allow(dead_code)]
pub enum What {
    /// A server's lock key after a write (or a restore): its token and true expiry, or absent.
    KeyState {
        server: usize,
        key: String,
        holder: Option<(String, Instant)>,
        /// What changed it: a script's name, `set_nx`, or `restore`.
        cause: &'static str,
    },
    /// A server's replica now has this state of a lock key (it received the primary's writes up to
    /// some point: a `WAIT` reached it, or replication caught up).
    ReplicaState {
        server: usize,
        key: String,
        holder: Option<(String, Instant)>,
    },
    /// A server issued a new fence for `key` (the counter moved; a re-sent acquisition answered by the
    /// fence issued before is not a new one).
    FenceIssued {
        server: usize,
        key: String,
        token: String,
        fence: u64,
    },
    /// A server accepted a `fenced_set` (write number `seq` on that server).
    FencedWrite {
        server: usize,
        resource: String,
        token: String,
        fence: u64,
        value: String,
        seq: u64,
    },
    /// A server refused a `fenced_set` (its mark was newer, as far as it could tell).
    FencedRefused {
        server: usize,
        resource: String,
        token: String,
        fence: u64,
    },
    /// A server went back to the state after its write number `to_seq`: the writes numbered
    /// `to_seq + 1 ..= from_seq` are lost. `covered`: a failover to a replica the lock waited for
    /// (`replicas`), which keeps every write the lock counted on.
    Rollback {
        server: usize,
        to_seq: u64,
        from_seq: u64,
        covered: bool,
    },
    /// A server stops answering until `until`.
    Down { server: usize, until: Instant },
    /// A client process is paused (its tasks are not polled) until `until`.
    Pause { process: usize, until: Instant },
    /// An acquiring request for `token` left, from task `task`.
    AcquireSent {
        process: usize,
        task: u64,
        key: String,
        token: String,
    },
    /// A release of `token` left (the workload's, or a background one).
    ReleaseSent {
        process: usize,
        server: usize,
        token: String,
    },
    /// An operation handed out a guard.
    Acquired {
        process: usize,
        key: String,
        token: String,
        fence: Option<u64>,
        /// Fences of Redlock guards are checked in the order guards were handed out.
        redlock: bool,
    },
    /// A client read `valid_for() > 0`: it believes it holds `key` with `token` until `until` (true
    /// time), on a `quorum` of `servers`.
    Belief {
        process: usize,
        key: String,
        token: String,
        until: Instant,
        servers: Vec<usize>,
        quorum: usize,
    },
    /// The workload stopped using the guard of `token` (release sent, dropped, resigned): no belief
    /// outlives this.
    GuardEnd { key: String, token: String },
    /// Work under `hold` (or a `run` body) began at `start` and ended now: finished (`lost: false`) or
    /// was reported lost.
    Work {
        process: usize,
        key: String,
        token: String,
        start: Instant,
        lost: bool,
        servers: Vec<usize>,
        quorum: usize,
    },
    /// An operation ended.
    Op(Op),
}

/// An operation as the workload saw it.
#[derive(Debug, Clone)]
pub struct Op {
    pub process: usize,
    pub task: u64,
    pub kind: &'static str,
    pub key: String,
    pub start: Instant,
    pub outcome: Outcome,
    pub detail: Detail,
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `Ok(true)`, `Ok(Some(_))`, `Ok(value)`.
    Ok,
    /// `Ok(false)`, `Ok(None)`: not ours, busy.
    Refused,
    Timeout,
    Lost,
    InDoubt,
    NotReplicated,
    /// Any other error, transient or not.
    Failed {
        transient: bool,
    },
    /// Dropped by the workload before it completed.
    Cancelled,
}

/// What some checks need beyond the outcome.
#[derive(Debug, Clone)]
pub enum Detail {
    None,
    /// A waiting acquisition (`acquire`, `run`, `campaign`): its wait (`None`: for ever), the client's
    /// per-call bound (plus any replica wait), and how long it took on the client's clock.
    Wait {
        wait: Option<Duration>,
        bound: Duration,
        took: Duration,
    },
    FencedSet {
        token: String,
        value: String,
    },
    /// `is_owner` (or `is_current`) of the guard of `token`, held on a `quorum` of `servers`.
    Owner {
        token: String,
        servers: Vec<usize>,
        quorum: usize,
    },
    /// `release` of the guard of `token`: whether its validity was left when the call began.
    Release {
        token: String,
        valid: bool,
        redlock: bool,
    },
    /// `extend(by)` (by in true time), with the key's true expiry on the server before and after.
    Extend {
        token: String,
        by: Duration,
        before: Option<Instant>,
        after: Option<Instant>,
    },
}

/// The history of one run, shared by everything that records.
#[derive(Debug, Clone, Default)]
pub struct History(Arc<Mutex<Vec<Event>>>);

impl History {
    pub fn record(&self, at: Instant, what: What) {
        self.0.lock().unwrap().push(Event { at, what });
    }

    pub fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }
}

/// What the checker needs to know of the run beyond its history.
#[derive(Debug, Clone)]
pub struct Params {
    /// Liveness is checked for what starts at or after this instant (faults stopped, and what they
    /// left behind has expired); `None`: not at all.
    pub quiet_from: Option<Instant>,
    /// How long a token may stay on the server after nobody holds it any more (release round trips,
    /// the background release's retries).
    pub orphan_grace: Duration,
    /// How long a key may stay free while a waiter waits for it.
    pub stall_grace: Duration,
    /// How long past its wait and one call bound an acquisition may take (clock rate, rounding).
    pub wait_slack: Duration,
    /// Whether every lock waits for the servers' replica (`replicas(1)`): then every belief must be
    /// backed by the replica too, which a failover promotes.
    pub replicated: bool,
    /// The locks' TTL (every lock of a run has the same), and the clients' per-call bound: for how
    /// long, and how often, an abandoned acquisition is released again.
    pub ttl: Duration,
    pub bound: Duration,
}

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub at: Instant,
    pub invariant: &'static str,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:?}] {}: {}", self.at, self.invariant, self.detail)
    }
}

/// The names of the invariants, as violations report them.
pub mod invariant {
    /// A client believed it held a key the servers did not hold for it.
    pub const BELIEF_NOT_HELD: &str = "belief-not-held";
    /// With `replicas`, a client believed it held a key its server's replica did not hold for it: a
    /// failover would break the belief.
    pub const BELIEF_NOT_REPLICATED: &str = "belief-not-replicated";
    /// Two clients believed they held one key at the same instant.
    pub const TWO_HOLDERS: &str = "two-holders";
    /// A server issued a fence not greater than one it issued before for the key.
    pub const FENCE_NOT_INCREASING: &str = "fence-not-increasing";
    /// A later Redlock holder got a fence not greater than an earlier holder's.
    pub const REDLOCK_FENCE_ORDER: &str = "redlock-fence-order";
    /// A `fenced_set` was accepted after a write with a larger fence (or an equal one from another
    /// holder) that was not lost.
    pub const STALE_FENCED_WRITE: &str = "stale-fenced-write";
    /// `fenced_set` said "not written" of a write that was (or later was) applied, or `Ok(true)` of
    /// one that was not.
    pub const FENCED_SET_OUTCOME: &str = "fenced-set-outcome";
    /// `hold` (or `run`) let work finish as if the lock had been held throughout, though it was lost.
    pub const MISSED_LOSS: &str = "missed-loss";
    /// A waiter whose deadline allowed it did not get a key that stayed free.
    pub const STALL: &str = "stall";
    /// A key stayed held by a token nobody held any more.
    pub const ORPHAN: &str = "orphan";
    /// A server kept holding a token nobody held any more, and no release was sent for it within the
    /// retry schedule (before its horizon).
    pub const NOT_RELEASED: &str = "not-released";
    /// An acquisition waited longer than its wait plus one call bound.
    pub const WAIT_OVERRUN: &str = "wait-overrun";
    /// `campaign` returned a transient error instead of campaigning on.
    pub const CAMPAIGN_GAVE_UP: &str = "campaign-gave-up";
    /// `is_owner` answered `true` though the servers never held the token while it asked.
    pub const OWNER_ANSWER: &str = "owner-answer";
    /// `release` of a guard whose validity had run out answered as if it could still have been held
    /// (Redlock: anything but `Ok(false)`; a single server: in doubt).
    pub const RELEASE_OUTCOME: &str = "release-outcome";
    /// `extend(by)` moved the expiry further than `by` past the expiry it started from.
    pub const EXTEND_OVERGRANT: &str = "extend-overgrant";
    /// Tasks or backends outlived the run.
    pub const LEAK: &str = "leak";
}

/// A server's lock key over time.
#[derive(Debug, Default)]
struct Timeline {
    /// (from, holder and its expiry), in time order; each state holds until the next.
    states: Vec<(Instant, Option<(String, Instant)>)>,
}

impl Timeline {
    /// The index of the state in effect at `t`.
    fn index_at(&self, t: Instant) -> Option<usize> {
        let n = self.states.partition_point(|(from, _)| *from <= t);
        n.checked_sub(1)
    }

    /// The token holding the key at `t` (expiry applied).
    fn holder_at(&self, t: Instant) -> Option<&str> {
        let (_, holder) = &self.states[self.index_at(t)?];
        match holder {
            Some((token, expires)) if *expires > t => Some(token),
            _ => None,
        }
    }

    /// Instants in `[from, to)` where the holder may change: state changes and expiries.
    fn breakpoints(&self, from: Instant, to: Instant, into: &mut Vec<Instant>) {
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
    fn free_stretch(&self, from: Instant, to: Instant, length: Duration) -> Option<Instant> {
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
struct Index<'a> {
    timelines: HashMap<(usize, &'a str), Timeline>,
    /// The same, for each server's replica.
    replicas: HashMap<(usize, &'a str), Timeline>,
    /// Per server: (at, lost range) of rollbacks not covered by replica acknowledgement.
    rollbacks: HashMap<usize, Vec<(Instant, u64, u64, bool)>>,
    downs: HashMap<usize, Vec<(Instant, Instant)>>,
    pauses: HashMap<usize, Vec<(Instant, Instant)>>,
    guard_ends: HashMap<&'a str, Instant>,
    /// Per (server, token): when the server first held the token.
    first_held: HashMap<(usize, &'a str), Instant>,
}

impl<'a> Index<'a> {
    fn new(history: &'a [Event]) -> Self {
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
                What::GuardEnd { token, .. } => {
                    index.guard_ends.entry(token.as_str()).or_insert(event.at);
                }
                _ => {}
            }
        }
        index
    }

    fn holds(&self, server: usize, key: &str, token: &str, t: Instant) -> bool {
        self.timelines
            .get(&(server, key))
            .and_then(|timeline| timeline.holder_at(t))
            == Some(token)
    }

    /// Whether `server` held `key` for `token` at some instant of `[from, to]`.
    fn held_during(
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

    fn down(&self, server: usize, t: Instant) -> bool {
        self.downs
            .get(&server)
            .is_some_and(|downs| downs.iter().any(|(from, to)| *from <= t && t < *to))
    }

    fn paused(&self, process: usize, from: Instant, to: Instant) -> bool {
        self.pauses
            .get(&process)
            .is_some_and(|pauses| pauses.iter().any(|(a, b)| *a < to && from < *b))
    }

    /// Whether a server of `servers` lost data (a rollback replicas did not cover) between the moment it
    /// first held `token` (or `from`, if earlier) and `to`: then a belief may be broken by the documented
    /// limits of asynchronous replication.
    fn data_lost(&self, servers: &[usize], token: &str, from: Instant, to: Instant) -> bool {
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
    fn first_gap(
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

fn violation(at: Instant, invariant: &'static str, detail: String) -> Violation {
    Violation {
        at,
        invariant,
        detail,
    }
}

/// Checks every invariant over `history`.
pub fn check(history: &[Event], params: &Params) -> Vec<Violation> {
    let index = Index::new(history);
    let mut found = Vec::new();
    check_beliefs(history, &index, &mut found);
    if params.replicated {
        check_replicated_beliefs(history, &index, &mut found);
    }
    check_fences(history, &mut found);
    check_fenced_writes(history, &index, &mut found);
    check_work(history, &index, &mut found);
    check_operations(history, &index, params, &mut found);
    check_extends(history, &mut found);
    check_releases(history, &index, params, &mut found);
    if let Some(quiet_from) = params.quiet_from {
        check_orphans(history, &index, params, quiet_from, &mut found);
    }
    found.sort_by(|a, b| (a.at, a.invariant, &a.detail).cmp(&(b.at, b.invariant, &b.detail)));
    found
}

/// A belief interval, cut at the end of its guard.
struct Believed<'a> {
    process: usize,
    key: &'a str,
    token: &'a str,
    from: Instant,
    to: Instant,
    servers: &'a [usize],
    quorum: usize,
}

/// (a) Every belief is backed by the servers (a quorum of them, for Redlock) for its whole interval,
/// and no two tokens are believed in at one instant, except where lost data excuses it.
fn check_beliefs(history: &[Event], index: &Index, found: &mut Vec<Violation>) {
    let mut beliefs: Vec<Believed> = Vec::new();
    for event in history {
        let What::Belief {
            process,
            key,
            token,
            until,
            servers,
            quorum,
        } = &event.what
        else {
            continue;
        };
        let to = match index.guard_ends.get(token.as_str()) {
            Some(end) if *end >= event.at => (*until).min(*end),
            _ => *until,
        };
        if to <= event.at {
            continue;
        }
        beliefs.push(Believed {
            process: *process,
            key,
            token,
            from: event.at,
            to,
            servers,
            quorum: *quorum,
        });
    }
    let excused = |b: &Believed| index.data_lost(b.servers, b.token, b.from, b.to);
    // One report per token: its later beliefs fail the same way.
    let mut reported: HashMap<&str, ()> = HashMap::new();
    for belief in &beliefs {
        if excused(belief) || reported.contains_key(belief.token) {
            continue;
        }
        if let Some((at, seen)) = index.first_gap(
            belief.servers,
            belief.quorum,
            belief.key,
            belief.token,
            belief.from,
            belief.to,
        ) {
            reported.insert(belief.token, ());
            found.push(violation(
                at,
                invariant::BELIEF_NOT_HELD,
                format!(
                    "process {} believed at {:?} that it held {} with {} until {:?}, but at {at:?} the \
                     servers held {seen:?}",
                    belief.process, belief.from, belief.key, belief.token, belief.to
                ),
            ));
        }
    }
    // Two holders: sweep each key's intervals in order of start.
    let mut by_key: BTreeMap<&str, Vec<&Believed>> = BTreeMap::new();
    for belief in &beliefs {
        by_key.entry(belief.key).or_default().push(belief);
    }
    for (key, mut list) in by_key {
        list.sort_by_key(|b| b.from);
        let mut reported = 0;
        for (i, a) in list.iter().enumerate() {
            for b in &list[i + 1..] {
                if b.from >= a.to {
                    break;
                }
                if a.token != b.token && !excused(a) && !excused(b) && reported < 3 {
                    reported += 1;
                    found.push(violation(
                        b.from,
                        invariant::TWO_HOLDERS,
                        format!(
                            "{key}: process {} believed in {} over [{:?}, {:?}) and process {} in {} \
                             over [{:?}, {:?})",
                            a.process, a.token, a.from, a.to, b.process, b.token, b.from, b.to
                        ),
                    ));
                }
            }
        }
    }
}

/// With `replicas(1)`, a belief is backed by the replica as well as by the primary: writes count only
/// once the replica acknowledged them, so the replica (which a failover promotes) must hold the token
/// for as long as the client believes.
fn check_replicated_beliefs(history: &[Event], index: &Index, found: &mut Vec<Violation>) {
    let mut reported: HashMap<&str, ()> = HashMap::new();
    for event in history {
        let What::Belief {
            process,
            key,
            token,
            until,
            servers,
            ..
        } = &event.what
        else {
            continue;
        };
        let to = match index.guard_ends.get(token.as_str()) {
            Some(end) if *end >= event.at => (*until).min(*end),
            _ => *until,
        };
        if to <= event.at || reported.contains_key(token.as_str()) {
            continue;
        }
        for server in servers {
            let Some(replica) = index.replicas.get(&(*server, key.as_str())) else {
                continue;
            };
            let mut points = vec![event.at];
            replica.breakpoints(event.at, to, &mut points);
            if let Some(at) = points
                .into_iter()
                .find(|p| replica.holder_at(*p) != Some(token.as_str()))
            {
                reported.insert(token, ());
                found.push(violation(
                    at,
                    invariant::BELIEF_NOT_REPLICATED,
                    format!(
                        "process {process} believed at {:?} that it held {key} with {token} until \
                         {to:?}, but at {at:?} the replica of server {server} held {:?}",
                        event.at,
                        replica.holder_at(at)
                    ),
                ));
            }
        }
    }
}

/// (b) Fences per key and server strictly increase in the order they were issued, across lost data;
/// Redlock fences strictly increase in the order guards were handed out.
fn check_fences(history: &[Event], found: &mut Vec<Violation>) {
    let mut last: HashMap<(usize, &str), (u64, &str)> = HashMap::new();
    let mut redlock_last: HashMap<&str, (u64, &str)> = HashMap::new();
    for event in history {
        match &event.what {
            What::FenceIssued {
                server,
                key,
                token,
                fence,
            } => {
                if let Some((previous, by)) = last.get(&(*server, key.as_str()))
                    && fence <= previous
                {
                    found.push(violation(
                        event.at,
                        invariant::FENCE_NOT_INCREASING,
                        format!(
                            "server {server} issued fence {fence} for {key} to {token} after fence \
                             {previous} to {by}"
                        ),
                    ));
                }
                last.insert((*server, key), (*fence, token));
            }
            What::Acquired {
                key,
                token,
                fence: Some(fence),
                redlock: true,
                ..
            } => {
                if let Some((previous, by)) = redlock_last.get(key.as_str())
                    && fence <= previous
                {
                    found.push(violation(
                        event.at,
                        invariant::REDLOCK_FENCE_ORDER,
                        format!(
                            "Redlock {key}: {token} got fence {fence} after {by} had fence {previous}"
                        ),
                    ));
                }
                redlock_last.insert(key, (*fence, token));
            }
            _ => {}
        }
    }
}

/// (b) `fenced_set`: the writes that survived, per resource, have increasing fences (equal only from
/// the same holder); and each call's outcome tells the truth about its write.
fn check_fenced_writes(history: &[Event], index: &Index, found: &mut Vec<Violation>) {
    check_refusals(history, found);
    let lost = |server: usize, seq: u64, at: Instant| {
        index.rollbacks.get(&server).is_some_and(|rollbacks| {
            rollbacks
                .iter()
                .any(|(r_at, to, from, _)| *r_at >= at && seq > *to && seq <= *from)
        })
    };
    let mut mark: HashMap<(usize, &str), (u64, &str, Instant)> = HashMap::new();
    let mut written: HashMap<&str, (Instant, usize, &str)> = HashMap::new();
    // Per (server, resource): when writes by whom were accepted.
    let mut writes: HashMap<(usize, &str), Vec<(Instant, &str)>> = HashMap::new();
    for event in history {
        let What::FencedWrite {
            server,
            resource,
            token,
            fence,
            value,
            seq,
        } = &event.what
        else {
            continue;
        };
        written
            .entry(value.as_str())
            .or_insert((event.at, *server, resource));
        writes
            .entry((*server, resource))
            .or_default()
            .push((event.at, token));
        if lost(*server, *seq, event.at) {
            continue;
        }
        if let Some((newest, holder, at)) = mark.get(&(*server, resource.as_str()))
            && (newest > fence || (newest == fence && holder != token))
        {
            found.push(violation(
                event.at,
                invariant::STALE_FENCED_WRITE,
                format!(
                    "{resource} on server {server}: {token} wrote with fence {fence} after {holder} \
                     had written with fence {newest} at {at:?}"
                ),
            ));
        }
        mark.insert((*server, resource), (*fence, token, event.at));
    }
    for event in history {
        let What::Op(Op {
            kind: "fenced_set",
            outcome,
            detail: Detail::FencedSet { value, token },
            start,
            ..
        }) = &event.what
        else {
            continue;
        };
        let applied = written.get(value.as_str());
        // A write re-sent after another holder's (larger) write is refused the second time: "another
        // holder has written with a fence at least as large" is then true, as documented.
        let superseded = |(at, server, resource): &(Instant, usize, &str)| {
            writes.get(&(*server, *resource)).is_some_and(|list| {
                list.iter()
                    .any(|(w_at, by)| w_at > at && *w_at <= event.at && by != token)
            })
        };
        let wrong = match outcome {
            Outcome::Ok => applied.is_none_or(|(at, ..)| *at > event.at),
            Outcome::Refused => applied.is_some_and(|w| !superseded(w)),
            Outcome::Failed { .. } => applied.is_some(),
            _ => false,
        };
        let applied = applied.map(|(at, ..)| at);
        if wrong {
            found.push(violation(
                event.at,
                invariant::FENCED_SET_OUTCOME,
                format!(
                    "fenced_set by {token} (started {start:?}) answered {outcome:?}, but its write was \
                     applied at {applied:?}"
                ),
            ));
        }
    }
}

/// Every refusal of a `fenced_set` is justified by the resource's newest write still on the server: a
/// larger fence, or an equal one from another holder. (A refusal for any other reason, such as two
/// resources sharing one mark, issue 8 hole 5, loses a holder's write.)
fn check_refusals(history: &[Event], found: &mut Vec<Violation>) {
    /// An accepted write the server still has: (seq, fence, token).
    type Kept<'a> = (u64, u64, &'a str);
    // Per (server, resource): its accepted writes the server still has.
    let mut writes: HashMap<(usize, &str), Vec<Kept>> = HashMap::new();
    for event in history {
        match &event.what {
            What::FencedWrite {
                server,
                resource,
                token,
                fence,
                seq,
                ..
            } => writes
                .entry((*server, resource))
                .or_default()
                .push((*seq, *fence, token)),
            What::Rollback {
                server,
                to_seq,
                from_seq,
                ..
            } => {
                for ((s, _), list) in writes.iter_mut() {
                    if s == server {
                        list.retain(|(seq, ..)| seq <= to_seq || seq > from_seq);
                    }
                }
            }
            What::FencedRefused {
                server,
                resource,
                token,
                fence,
            } => {
                let newest = writes
                    .get(&(*server, resource.as_str()))
                    .and_then(|list| list.last());
                let justified = newest.is_some_and(|(_, newest, by)| {
                    newest > fence || (newest == fence && by != token)
                });
                if !justified {
                    found.push(violation(
                        event.at,
                        invariant::FENCED_SET_OUTCOME,
                        format!(
                            "server {server} refused {token}'s write to {resource} with fence \
                             {fence}, but the newest write it had was {newest:?}"
                        ),
                    ));
                }
            }
            _ => {}
        }
    }
}

/// (d) Work that `hold` or `run` let finish ran while the lock was held throughout, unless its process
/// paused meanwhile or lost data excuses it.
fn check_work(history: &[Event], index: &Index, found: &mut Vec<Violation>) {
    for event in history {
        let What::Work {
            process,
            key,
            token,
            start,
            lost: false,
            servers,
            quorum,
        } = &event.what
        else {
            continue;
        };
        if index.paused(*process, *start, event.at)
            || index.data_lost(servers, token, *start, event.at)
        {
            continue;
        }
        // The instant the work finished counts: the lock must still be held then.
        let end = event.at + Duration::from_nanos(1);
        if let Some((at, seen)) = index.first_gap(servers, *quorum, key, token, *start, end) {
            found.push(violation(
                event.at,
                invariant::MISSED_LOSS,
                format!(
                    "process {process}: work under {key} ({token}) from {start:?} finished at {:?} as \
                     if held throughout, but at {at:?} the servers held {seen:?}",
                    event.at
                ),
            ));
        }
    }
}

/// Per-operation contracts: bounded waits, campaigns that never give up on a transient error, extends
/// that do not over-grant, and (after faults stopped) waiters that are not starved of a free key.
fn check_operations(history: &[Event], index: &Index, params: &Params, found: &mut Vec<Violation>) {
    for event in history {
        let What::Op(op) = &event.what else { continue };
        match (&op.detail, op.kind) {
            (_, "campaign") if matches!(op.outcome, Outcome::Failed { transient: true }) => {
                found.push(violation(
                    event.at,
                    invariant::CAMPAIGN_GAVE_UP,
                    format!(
                        "process {}: campaign for {} (started {:?}) returned a transient error",
                        op.process, op.key, op.start
                    ),
                ));
            }
            (
                Detail::Owner {
                    token,
                    servers,
                    quorum,
                },
                _,
            ) if op.outcome == Outcome::Ok => {
                let holding = servers
                    .iter()
                    .filter(|server| {
                        index.held_during(**server, &op.key, token, op.start, event.at)
                    })
                    .count();
                if holding < *quorum {
                    found.push(violation(
                        event.at,
                        invariant::OWNER_ANSWER,
                        format!(
                            "process {}: is_owner of {} for {token} answered true, but only {holding} \
                             of {servers:?} held it between {:?} and {:?}",
                            op.process, op.key, op.start, event.at
                        ),
                    ));
                }
            }
            (
                Detail::Release {
                    token,
                    valid: false,
                    redlock,
                },
                _,
            ) if match redlock {
                // Known lost is `Ok(false)`, whatever the masters answered or failed to (issue 8,
                // hole 13).
                true => !matches!(op.outcome, Outcome::Refused | Outcome::Cancelled),
                // A single server's guard is never in doubt once its validity ran out. (It answers
                // `Ok(true)` when the key was still there, which the server's word justifies, though
                // its docs promise `Ok(false)`; and reports a failed request as that failure.)
                false => op.outcome == Outcome::InDoubt,
            } =>
            {
                found.push(violation(
                    event.at,
                    invariant::RELEASE_OUTCOME,
                    format!(
                        "process {}: release of {} for {token}, whose validity had run out, answered \
                         {:?} instead of Ok(false)",
                        op.process, op.key, op.outcome
                    ),
                ));
            }
            (Detail::Wait { wait, bound, took }, _) => {
                if let Some(wait) = wait
                    && *took > *wait + *bound + params.wait_slack
                    && !index.paused(op.process, op.start, event.at)
                    && op.outcome != Outcome::Cancelled
                    && op.kind == "acquire"
                {
                    found.push(violation(
                        event.at,
                        invariant::WAIT_OVERRUN,
                        format!(
                            "process {}: {} of {} with wait {wait:?} and call bound {bound:?} took \
                             {took:?} ({:?})",
                            op.process, op.kind, op.key, op.outcome
                        ),
                    ));
                }
                if let (Some(quiet_from), Some(wait), Outcome::Timeout) =
                    (params.quiet_from, wait, op.outcome)
                    && op.start >= quiet_from
                {
                    let deadline = op.start + *wait;
                    let until = deadline.saturating_sub(params.stall_grace);
                    if until <= op.start + params.stall_grace {
                        continue;
                    }
                    for ((_, key), timeline) in &index.timelines {
                        if *key != op.key {
                            continue;
                        }
                        if let Some(since) =
                            timeline.free_stretch(op.start, until, params.stall_grace)
                        {
                            found.push(violation(
                                event.at,
                                invariant::STALL,
                                format!(
                                    "process {}: {} of {} waited from {:?} until {deadline:?} and \
                                     timed out, though the key was free from {since:?} for at least \
                                     {:?}",
                                    op.process, op.kind, op.key, op.start, params.stall_grace
                                ),
                            ));
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// `extend(by)` moves the expiry at most `by` past an expiry the guard can have known before it wrote:
/// one the key had before the call, or got during it from anything but this call (a renewal that
/// landed late, say, or an earlier extend that failed or was cancelled and landed late, with what it
/// asked for). So a re-sent extend never adds `by` twice (issue 8, hole 8).
fn check_extends(history: &[Event], found: &mut Vec<Violation>) {
    // Per token: (at, expiry, cause) of every state of its key, and the asks of its extends so far.
    let mut states: HashMap<&str, Vec<(Instant, Instant, &str)>> = HashMap::new();
    let mut asked: HashMap<&str, Vec<Instant>> = HashMap::new();
    for event in history {
        match &event.what {
            What::KeyState {
                holder: Some((token, expires)),
                cause,
                ..
            } => states
                .entry(token)
                .or_default()
                .push((event.at, *expires, cause)),
            What::Op(Op {
                kind: "extend",
                start,
                key,
                detail:
                    Detail::Extend {
                        token,
                        by,
                        before,
                        after,
                        ..
                    },
                ..
            }) => {
                let earlier = asked
                    .get(token.as_str())
                    .into_iter()
                    .flatten()
                    .max()
                    .copied();
                // An extend that landed during this call is an earlier call's when it set no more
                // than an earlier call asked for (one that failed or was cancelled, landing late).
                let earlier_call = |expires: Instant| {
                    earlier.is_some_and(|ask| expires <= ask + Duration::from_millis(3))
                };
                let base = states
                    .get(token.as_str())
                    .into_iter()
                    .flatten()
                    .filter(|(at, expires, cause)| {
                        *at < *start || *cause != "extend" || earlier_call(*expires)
                    })
                    .map(|(_, expires, _)| *expires)
                    .max();
                // What this call may ask for: `by` on the client's clock (within 1% of true time,
                // so 2% of slack), past its base in whole milliseconds.
                let furthest =
                    base.map(|base| (base + *by + *by / 50).max(earlier.unwrap_or_default()));
                if let (Some(furthest), Some(after)) = (furthest, after) {
                    let limit = furthest + Duration::from_millis(3);
                    if *after > limit {
                        found.push(violation(
                            event.at,
                            invariant::EXTEND_OVERGRANT,
                            format!(
                                "extend({by:?}) of {key} by {token} (from {start:?}) moved its expiry \
                                 from {before:?} to {after:?}, past {limit:?}"
                            ),
                        ));
                    }
                }
                if let Some(furthest) = furthest {
                    asked.entry(token).or_default().push(furthest);
                }
            }
            _ => {}
        }
    }
}

/// A token nobody holds any more (its guard ended, `hold` reported it lost, or its acquisition was
/// abandoned) is released again and again while a server still holds it: the background release
/// retries at most one call bound and one second apart, until a release is answered (for an
/// acquisition that may still land, until its horizon), for the TTL from its first attempt. So a key
/// is never held for nobody because a release met an outage (issue 8, hole 16), was never sent after
/// `hold` reported the lease lost (hole 17), or came before a late-landing acquisition (hole 7).
fn check_releases(history: &[Event], index: &Index, params: &Params, found: &mut Vec<Violation>) {
    // When each token stopped being anybody's, and which process it belonged to.
    let mut ended: HashMap<&str, Instant> = HashMap::new();
    let mut owner: HashMap<&str, usize> = HashMap::new();
    let mut first_release: HashMap<&str, Instant> = HashMap::new();
    let mut releases: HashMap<(usize, &str), Vec<Instant>> = HashMap::new();
    for event in history {
        match &event.what {
            What::GuardEnd { token, .. } => {
                ended.entry(token).or_insert(event.at);
            }
            What::Work {
                token, lost: true, ..
            } => {
                ended.entry(token).or_insert(event.at);
            }
            What::AcquireSent { process, token, .. } => {
                owner.entry(token).or_insert(*process);
            }
            What::ReleaseSent { server, token, .. } => {
                first_release.entry(token).or_insert(event.at);
                releases.entry((*server, token)).or_default().push(event.at);
            }
            _ => {}
        }
    }
    // An abandoned acquisition (never handed out, so never ended) ends with its first release.
    for (token, at) in &first_release {
        ended.entry(token).or_insert(*at);
    }
    // The loop's k-th pause is 50 ms · 2^k (jittered down to 80%), at most 1 s; so a pause is at most
    // 50 ms plus 1.25 times the time since the first attempt, and the next attempt starts at most one
    // call bound (the attempt) and one pause after the last. It keeps going while the next attempt
    // falls within the TTL (on the client's clock, within 1% of true time) of the first.
    let horizon = params.ttl.mul_f64(0.98);
    let allowed = |first: Instant, last: Instant| {
        let pause = (Duration::from_millis(50) + last.saturating_sub(first).mul_f64(1.25))
            .min(Duration::from_secs(1));
        pause + params.bound + Duration::from_millis(5)
    };
    let longest = Duration::from_secs(1) + params.bound + Duration::from_millis(5);
    let none = Vec::new();
    let mut reported: HashMap<&str, ()> = HashMap::new();
    let mut keys: Vec<_> = index.timelines.iter().collect();
    keys.sort_by_key(|((server, key), _)| (*server, *key));
    for ((server, key), timeline) in keys {
        for (i, (from, holder)) in timeline.states.iter().enumerate() {
            let Some((token, expires)) = holder else {
                continue;
            };
            let token = token.as_str();
            let Some(end) = ended.get(token) else {
                continue;
            };
            if reported.contains_key(token) {
                continue;
            }
            let held_until = timeline
                .states
                .get(i + 1)
                .map_or(*expires, |(next, _)| (*next).min(*expires));
            let first = *first_release.get(token).unwrap_or(end);
            let start = (*from).max(*end);
            let stop = held_until.min(first + horizon);
            if stop <= start {
                continue;
            }
            // A restore (a failover, a restart) may bring back a token whose release it lost.
            let restored = index
                .rollbacks
                .get(server)
                .is_some_and(|r| r.iter().any(|(at, ..)| at == from));
            let paused = owner
                .get(token)
                .is_some_and(|process| index.paused(*process, start.saturating_sub(longest), stop));
            if restored || paused {
                continue;
            }
            let sent = releases.get(&(*server, token)).unwrap_or(&none);
            let mut last = start;
            let mut missing = None;
            for at in sent.iter().filter(|at| **at > start && **at < stop) {
                if *at > last + allowed(first, last) {
                    missing = Some(last);
                    break;
                }
                last = *at;
            }
            if missing.is_none() && stop > last + allowed(first, last) {
                missing = Some(last);
            }
            if let Some(since) = missing {
                let gap = allowed(first, since);
                reported.insert(token, ());
                found.push(violation(
                    since + gap,
                    invariant::NOT_RELEASED,
                    format!(
                        "server {server} held {key} for {token} from {from:?} until {held_until:?}; \
                         nobody held it after {end:?} (first release {first:?}), but no release was \
                         sent for {gap:?} after {since:?} (releases sent at {sent:?})"
                    ),
                ));
            }
        }
    }
}

/// (c) After faults stopped: a token nobody holds any more (its guard ended, `hold` reported it lost,
/// or its acquisition was abandoned) leaves the server within the grace.
fn check_orphans(
    history: &[Event],
    index: &Index,
    params: &Params,
    quiet_from: Instant,
    found: &mut Vec<Violation>,
) {
    // When each token stopped being anybody's.
    let mut dead: HashMap<&str, Instant> = HashMap::new();
    let mut handed_out: HashMap<&str, ()> = HashMap::new();
    let mut sent: Vec<(&str, usize, u64, Instant)> = Vec::new();
    // Per (process, task): when each operation ran.
    let mut ops: HashMap<(usize, u64), Vec<(Instant, Instant)>> = HashMap::new();
    for event in history {
        match &event.what {
            What::GuardEnd { token, .. } => {
                dead.entry(token).or_insert(event.at);
            }
            What::Work {
                token, lost: true, ..
            } => {
                dead.entry(token).or_insert(event.at);
            }
            What::Acquired { token, .. } => {
                handed_out.insert(token, ());
            }
            What::AcquireSent {
                process,
                task,
                token,
                ..
            } => sent.push((token, *process, *task, event.at)),
            What::Op(op) => ops
                .entry((op.process, op.task))
                .or_default()
                .push((op.start, event.at)),
            _ => {}
        }
    }
    // A token that was never handed out was abandoned when the operation that sent it ended.
    for (token, process, task, at) in sent {
        if handed_out.contains_key(token) || dead.contains_key(token) {
            continue;
        }
        if let Some((_, end)) = ops
            .get(&(process, task))
            .and_then(|list| list.iter().find(|(start, end)| *start <= at && at <= *end))
        {
            dead.insert(token, *end);
        }
    }
    let mut reported: HashMap<&str, ()> = HashMap::new();
    for ((server, key), timeline) in &index.timelines {
        for (i, (from, holder)) in timeline.states.iter().enumerate() {
            let Some((token, expires)) = holder else {
                continue;
            };
            let Some(died) = dead.get(token.as_str()) else {
                continue;
            };
            if reported.contains_key(token.as_str()) {
                continue;
            }
            if *died < quiet_from {
                continue;
            }
            let to = timeline
                .states
                .get(i + 1)
                .map_or(*expires, |(next, _)| (*next).min(*expires));
            let allowed = *died + params.orphan_grace;
            if to > allowed && to > *from {
                reported.insert(token, ());
                found.push(violation(
                    allowed.max(*from),
                    invariant::ORPHAN,
                    format!(
                        "server {server} held {key} for {token} until {to:?}, though nobody held it \
                         after {died:?}"
                    ),
                ));
            }
        }
    }
}
