//! The recorded history of a run, stamped with true (virtual) time, and the checker of its invariants.
//!
//! The simulated servers record every change of a lock key, every fence they issue and every
//! `fenced_set` they accept, and every loss of data (a failover to a lagging replica, a restart); the
//! workload records what the clients believed (`valid_for` read at an instant, turned into a true-time
//! interval with the client's clock rate), what each operation returned, and when guards ended. The
//! checker then judges the history alone, so it can be fed hand-written broken histories.

#[path = "history/contracts.rs"]
mod contracts;
#[path = "history/index.rs"]
mod index;
#[path = "history/safety.rs"]
mod safety;
// Per primitive beyond the mutex: its invariants, over the sorted-set keys that `shares` indexes.
#[path = "history/rwlock.rs"]
mod rwlock;
#[path = "history/semaphore.rs"]
mod semaphore;
#[path = "history/shares.rs"]
mod shares;
// The fair lock's: grants in ticket order, and places that stop blocking.
#[path = "history/fair.rs"]
mod fair;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::executor::Instant;

use contracts::{check_extends, check_operations, check_orphans, check_releases, check_work};
use index::Index;
use safety::{check_beliefs, check_fenced_writes, check_fences, check_replicated_beliefs};

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
    /// A server's sorted-set key (a semaphore's holders) after a script that changed it (or a
    /// restore): every member with its score and, for holders (scored above 0), its true expiry; and
    /// the server's wall clock in milliseconds then (`now` for the scripts).
    Members {
        server: usize,
        key: String,
        wall_ms: i64,
        members: Vec<(String, i64, Instant)>,
        cause: &'static str,
    },
    /// A client read `valid_for() > 0` of a permit: it believes it holds `permits` of the semaphore
    /// `key` (limit `limit`) as `member` until `until` (true time).
    Permits {
        process: usize,
        key: String,
        token: String,
        member: String,
        permits: u32,
        limit: u32,
        until: Instant,
    },
    /// Work under `Permit::hold` began at `start` and finished now, `hold` letting it: the permit was
    /// held throughout. (Also work under a read-write lock's hold, its member `read:<token>` or
    /// `write:<token>`.)
    ShareWork {
        process: usize,
        key: String,
        member: String,
        start: Instant,
    },
    // The read-write lock's (see `history/rwlock.rs`).
    /// A client read `valid_for() > 0` of a read-write lock's hold: it believes it holds `key` as
    /// `member` (`read:<token>` or `write:<token>`) until `until` (true time).
    RwHold {
        process: usize,
        key: String,
        token: String,
        member: String,
        until: Instant,
    },
    /// `WriteGuard::downgrade` of `token` was called: the write hold is given up now (a read hold
    /// follows if the call succeeds).
    Downgrading { key: String, token: String },
    /// A writer's request that may register its intent `intent` in the writers' key `writers` of the
    /// read-write lock `key` left, from task `task`.
    IntentSent {
        process: usize,
        task: u64,
        key: String,
        writers: String,
        intent: String,
    },
    /// A fair lock's queue on a server after a fair script that changed it or granted the lock (or
    /// after a restore): its waiters in ticket order, the server's wall clock in milliseconds then
    /// (the scripts' `now`), and the token the script granted `key` to, if it did.
    FairQueue {
        server: usize,
        /// The lock's key (the queue is its companion).
        key: String,
        wall_ms: i64,
        waiters: Vec<Waiter>,
        granted: Option<String>,
        cause: &'static str,
    },
}

/// A fair lock's waiter as the server has it: its token, its ticket (the queue's score), its
/// heartbeat (wall ms: its place is live while the heartbeat is above the scripts' `now`), and the
/// true instant its heartbeat lapses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiter {
    pub token: String,
    pub ticket: i64,
    pub beat_ms: i64,
    pub lapses: Instant,
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
    /// A waiting acquisition of `permits` of a semaphore of `limit` (`acquire`, `acquire_many`, `run`):
    /// as [`Detail::Wait`].
    Permits {
        wait: Option<Duration>,
        bound: Duration,
        took: Duration,
        permits: u32,
        limit: u32,
    },
    /// A waiting acquisition of a read-write lock (`rw_read`, `rw_write`, `rw_run_read`,
    /// `rw_run_write`): as [`Detail::Wait`], and whether it was for the write hold.
    RwWait {
        wait: Option<Duration>,
        bound: Duration,
        took: Duration,
        write: bool,
    },
    /// `is_owner` or `downgrade` of the read-write lock's hold `member` (`downgrade`: the write hold).
    RwMember {
        member: String,
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

    // The semaphore's (see `history/semaphore.rs`).
    /// A client believed it held permits the server did not hold for it.
    pub const PERMIT_NOT_HELD: &str = "permit-not-held";
    /// At one true instant, clients believed they held more permits of a semaphore than its limit.
    pub const OVER_LIMIT: &str = "over-limit";
    /// After a script, a server held more live permits of a semaphore than its limit.
    pub const SERVER_OVER_LIMIT: &str = "server-over-limit";
    /// A permit's expiry moved later (or it came back) after its holder had stopped.
    pub const PERMIT_REVIVED: &str = "permit-revived";

    // The read-write lock's (see `history/rwlock.rs`).
    /// After a script, a server's live holders of a read-write lock were a writer and a reader.
    pub const SERVER_READER_BESIDE_WRITER: &str = "server-reader-beside-writer";
    /// After a script, a server's live holders of a read-write lock were two writers.
    pub const SERVER_TWO_WRITERS: &str = "server-two-writers";
    /// At one true instant, a client believed it held a read hold and another the write hold.
    pub const READER_BESIDE_WRITER: &str = "reader-beside-writer";
    /// At one true instant, two clients believed they held the write hold.
    pub const TWO_WRITERS: &str = "two-writers";
    /// A client believed it held a read or write hold the server did not hold for it.
    pub const HOLD_NOT_HELD: &str = "hold-not-held";
    /// A server admitted a new reader while a waiting writer's intent was live.
    pub const READER_PAST_WRITER: &str = "reader-past-writer";
    /// A hold that began after a write hold ended (or a write hold that began after another hold
    /// ended), by the clients' beliefs, got a fence not greater than the earlier hold's.
    pub const RW_FENCE_ORDER: &str = "rw-fence-order";
    /// A downgrade left an instant without the hold, or let another holder in between: the read hold
    /// did not replace a live write hold, at its expiry, in one script.
    pub const DOWNGRADE_GAP: &str = "downgrade-gap";
    /// A waiting writer's intent outlived one TTL from its last refresh, or from its writer's end.
    pub const INTENT_KEPT: &str = "intent-kept";
    /// `is_owner` of a read-write lock's hold answered `true`, though the server never held its
    /// member while it asked.
    pub const RW_OWNER_ANSWER: &str = "rw-owner-answer";
    // The fair lock's (see `history/fair.rs`).
    /// A fair lock was granted while a live waiter with a smaller ticket (any live waiter, for a
    /// token not queued) was in the server's queue.
    pub const FAIR_ORDER: &str = "fair-order";
    /// A waiter's place was renewed by a request sent after its acquisition had ended, or stayed
    /// live longer than one TTL after its last renewal.
    pub const PLACE_OUTLIVED: &str = "place-outlived";
    /// After faults stopped, a waiter that gave up (timed out, was cancelled, failed) kept its live
    /// place beyond the grace.
    pub const PLACE_NOT_LEFT: &str = "place-not-left";
    /// After faults stopped, a fair lock's key stayed free while a live waiter was queued.
    pub const QUEUE_STALL: &str = "queue-stall";
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
    semaphore::check(history, &index, params, &mut found);
    rwlock::check(history, &index, params, &mut found);
    fair::check(history, &index, params, &mut found);
    found.sort_by(|a, b| (a.at, a.invariant, &a.detail).cmp(&(b.at, b.invariant, &b.detail)));
    found
}
