//! The checker, fed hand-written broken histories: a checker that cannot fail is worth nothing, so
//! each invariant is shown to be reported on a history that breaks it (and not on its repaired twin).

use std::time::Duration;

use super::history::{Detail, Event, Op, Outcome, Params, What, check, invariant};

// Per primitive beyond the mutex, on the same builder.
#[path = "checker_tests/fair.rs"]
mod fair;
#[path = "checker_tests/rwlock.rs"]
mod rwlock;
#[path = "checker_tests/semaphore.rs"]
mod semaphore;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn params() -> Params {
    Params {
        quiet_from: Some(Duration::ZERO),
        orphan_grace: ms(200),
        stall_grace: ms(400),
        wait_slack: ms(5),
        replicated: true,
        ttl: ms(3000),
        bound: ms(50),
    }
}

/// A history under construction.
#[derive(Default)]
struct H(Vec<Event>);

impl H {
    fn at(mut self, at: u64, what: What) -> Self {
        self.0.push(Event { at: ms(at), what });
        self
    }

    fn held(self, at: u64, token: &str, until: u64) -> Self {
        self.at(
            at,
            What::KeyState {
                server: 0,
                key: "k".into(),
                holder: Some((token.into(), ms(until))),
                cause: "fenced_acquire",
            },
        )
    }

    fn held_on(self, server: usize, at: u64, token: &str, until: u64) -> Self {
        self.at(
            at,
            What::KeyState {
                server,
                key: "k".into(),
                holder: Some((token.into(), ms(until))),
                cause: "set_nx",
            },
        )
    }

    fn free(self, at: u64) -> Self {
        self.at(
            at,
            What::KeyState {
                server: 0,
                key: "k".into(),
                holder: None,
                cause: "release",
            },
        )
    }

    fn belief(self, at: u64, token: &str, until: u64) -> Self {
        self.at(
            at,
            What::Belief {
                process: 0,
                key: "k".into(),
                token: token.into(),
                until: ms(until),
                servers: vec![0],
                quorum: 1,
            },
        )
    }

    fn op(self, at: u64, start: u64, kind: &'static str, outcome: Outcome, detail: Detail) -> Self {
        self.at(
            at,
            What::Op(Op {
                process: 0,
                task: 1,
                kind,
                key: "k".into(),
                start: ms(start),
                outcome,
                detail,
            }),
        )
    }

    fn guard_end(self, at: u64, token: &str) -> Self {
        self.at(
            at,
            What::GuardEnd {
                key: "k".into(),
                token: token.into(),
            },
        )
    }

    fn violations(&self) -> Vec<&'static str> {
        check(&self.0, &params())
            .into_iter()
            .map(|v| v.invariant)
            .collect()
    }
}

#[track_caller]
fn reports(history: H, expected: &'static str) {
    let found = history.violations();
    assert!(
        found.contains(&expected),
        "expected {expected}, the checker found {found:?}"
    );
}

#[track_caller]
fn clean(history: H) {
    let found = check(&history.0, &params());
    assert!(found.is_empty(), "expected no violation, found {found:#?}");
}

#[test]
fn a_belief_the_server_does_not_back_is_reported() {
    // The key expired at 1 s, but the client believed in it until 2 s.
    reports(
        H::default().held(0, "a", 1000).belief(10, "a", 2000),
        invariant::BELIEF_NOT_HELD,
    );
    // The key was taken by another token while the client believed.
    reports(
        H::default()
            .held(0, "a", 3000)
            .belief(10, "a", 2000)
            .held(500, "b", 3000),
        invariant::BELIEF_NOT_HELD,
    );
    clean(H::default().held(0, "a", 2000).belief(10, "a", 2000));
    // A release the client sent ends its belief.
    clean(
        H::default()
            .held(0, "a", 3000)
            .belief(10, "a", 2000)
            .guard_end(400, "a")
            .free(401),
    );
    // Lost data (a failover without replicas) excuses it; a covered failover does not.
    let failover = |covered| What::Rollback {
        server: 0,
        to_seq: 1,
        from_seq: 2,
        covered,
    };
    clean(
        H::default()
            .held(0, "a", 3000)
            .belief(10, "a", 2000)
            .at(500, failover(false))
            .free(500),
    );
    reports(
        H::default()
            .held(0, "a", 3000)
            .belief(10, "a", 2000)
            .at(500, failover(true))
            .free(500),
        invariant::BELIEF_NOT_HELD,
    );
}

#[test]
fn a_belief_the_replica_does_not_back_is_reported() {
    let replica = |until| What::ReplicaState {
        server: 0,
        key: "k".into(),
        holder: Some(("a".into(), ms(until))),
    };
    // The primary holds the key until 3 s, the replica (which a failover promotes) only until 1 s.
    let lagging = H::default()
        .held(0, "a", 3000)
        .at(0, replica(1000))
        .belief(10, "a", 2000);
    reports(lagging, invariant::BELIEF_NOT_REPLICATED);
    clean(
        H::default()
            .held(0, "a", 3000)
            .at(0, replica(1000))
            .at(500, replica(3000))
            .belief(600, "a", 2000),
    );
}

#[test]
fn two_holders_at_one_instant_are_reported() {
    reports(
        H::default().belief(0, "a", 1000).belief(500, "b", 1500),
        invariant::TWO_HOLDERS,
    );
    let found = H::default()
        .held(0, "a", 1000)
        .belief(0, "a", 1000)
        .held(1000, "b", 2000)
        .belief(1000, "b", 2000)
        .violations();
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn a_quorum_belief_needs_a_majority() {
    let redlock_belief = |until| What::Belief {
        process: 0,
        key: "k".into(),
        token: "a".into(),
        until: ms(until),
        servers: vec![0, 1, 2, 3, 4],
        quorum: 3,
    };
    let two = H::default()
        .held_on(0, 0, "a", 3000)
        .held_on(1, 0, "a", 3000)
        .held_on(2, 0, "a", 500)
        .at(10, redlock_belief(2000));
    reports(two, invariant::BELIEF_NOT_HELD);
    // A master that is down grants nobody meanwhile: it counts for us.
    let down = H::default()
        .held_on(0, 0, "a", 3000)
        .held_on(1, 0, "a", 3000)
        .held_on(2, 0, "a", 500)
        .at(
            400,
            What::Down {
                server: 2,
                until: ms(2500),
            },
        )
        .at(10, redlock_belief(2000));
    assert!(
        !down.violations().contains(&invariant::BELIEF_NOT_HELD),
        "{:?}",
        down.violations()
    );
}

#[test]
fn fences_that_repeat_or_go_back_are_reported() {
    let issued = |token: &str, fence| What::FenceIssued {
        server: 0,
        key: "k".into(),
        token: token.into(),
        fence,
    };
    reports(
        H::default().at(0, issued("a", 5)).at(10, issued("b", 5)),
        invariant::FENCE_NOT_INCREASING,
    );
    reports(
        H::default().at(0, issued("a", 5)).at(10, issued("b", 4)),
        invariant::FENCE_NOT_INCREASING,
    );
    clean(H::default().at(0, issued("a", 5)).at(10, issued("b", 6)));
    let redlock = |token: &str, fence| What::Acquired {
        process: 0,
        key: "k".into(),
        token: token.into(),
        fence: Some(fence),
        redlock: true,
    };
    reports(
        H::default().at(0, redlock("a", 10)).at(10, redlock("b", 9)),
        invariant::REDLOCK_FENCE_ORDER,
    );
}

fn write(token: &str, fence: u64, value: &str, seq: u64) -> What {
    What::FencedWrite {
        server: 0,
        resource: "r".into(),
        token: token.into(),
        fence,
        value: value.into(),
        seq,
    }
}

#[test]
fn a_stale_fenced_write_is_reported_unless_the_newer_one_was_lost() {
    reports(
        H::default()
            .at(0, write("b", 10, "new", 1))
            .at(10, write("a", 9, "stale", 2)),
        invariant::STALE_FENCED_WRITE,
    );
    // An equal fence from another holder is stale too; from the same holder it is a write again.
    reports(
        H::default()
            .at(0, write("b", 10, "new", 1))
            .at(10, write("a", 10, "again", 2)),
        invariant::STALE_FENCED_WRITE,
    );
    clean(
        H::default()
            .at(0, write("b", 10, "new", 1))
            .at(10, write("b", 10, "again", 2)),
    );
    // The newer write was lost in a failover: the older holder's write is then the newest.
    clean(
        H::default()
            .at(0, write("b", 10, "new", 1))
            .at(
                5,
                What::Rollback {
                    server: 0,
                    to_seq: 0,
                    from_seq: 1,
                    covered: false,
                },
            )
            .at(10, write("a", 9, "stale", 2)),
    );
}

#[test]
fn a_refusal_without_a_newer_write_is_reported() {
    let refused = |token: &str, fence| What::FencedRefused {
        server: 0,
        resource: "r".into(),
        token: token.into(),
        fence,
    };
    // Refused with nothing newer written (say, a mark shared with another resource).
    reports(
        H::default().at(10, refused("a", 9)),
        invariant::FENCED_SET_OUTCOME,
    );
    reports(
        H::default()
            .at(0, write("b", 8, "older", 1))
            .at(10, refused("a", 9)),
        invariant::FENCED_SET_OUTCOME,
    );
    clean(
        H::default()
            .at(0, write("b", 10, "newer", 1))
            .at(10, refused("a", 9)),
    );
    // The newer write was lost before the refusal: nothing justified it any more.
    reports(
        H::default()
            .at(0, write("b", 10, "newer", 1))
            .at(
                5,
                What::Rollback {
                    server: 0,
                    to_seq: 0,
                    from_seq: 1,
                    covered: false,
                },
            )
            .at(10, refused("a", 9)),
        invariant::FENCED_SET_OUTCOME,
    );
}

#[test]
fn a_fenced_set_that_lies_about_its_write_is_reported() {
    let detail = |value: &str| Detail::FencedSet {
        token: "a".into(),
        value: value.into(),
    };
    // Told "not written", but the write was applied (a timeout must be in doubt).
    reports(
        H::default().at(5, write("a", 9, "v", 1)).op(
            10,
            0,
            "fenced_set",
            Outcome::Failed { transient: true },
            detail("v"),
        ),
        invariant::FENCED_SET_OUTCOME,
    );
    reports(
        H::default().at(5, write("a", 9, "v", 1)).op(
            10,
            0,
            "fenced_set",
            Outcome::Refused,
            detail("v"),
        ),
        invariant::FENCED_SET_OUTCOME,
    );
    // Told "written", but it never was.
    reports(
        H::default().op(10, 0, "fenced_set", Outcome::Ok, detail("v")),
        invariant::FENCED_SET_OUTCOME,
    );
    clean(H::default().at(5, write("a", 9, "v", 1)).op(
        10,
        0,
        "fenced_set",
        Outcome::InDoubt,
        detail("v"),
    ));
}

#[test]
fn work_finished_after_the_lock_was_lost_is_reported() {
    let work = What::Work {
        process: 0,
        key: "k".into(),
        token: "a".into(),
        start: ms(0),
        lost: false,
        servers: vec![0],
        quorum: 1,
    };
    reports(
        H::default().held(0, "a", 1000).at(2000, work.clone()),
        invariant::MISSED_LOSS,
    );
    clean(H::default().held(0, "a", 3000).at(2000, work.clone()));
    // A process paused meanwhile is beyond what is documented.
    clean(
        H::default()
            .held(0, "a", 1000)
            .at(
                500,
                What::Pause {
                    process: 0,
                    until: ms(1500),
                },
            )
            .at(2000, work),
    );
}

fn wait(wait: u64, took: u64) -> Detail {
    Detail::Wait {
        wait: Some(ms(wait)),
        bound: ms(50),
        took: ms(took),
    }
}

#[test]
fn a_starved_waiter_is_reported() {
    // The key was free the whole wait, and the waiter timed out.
    reports(
        H::default()
            .held(0, "b", 100)
            .op(3000, 0, "acquire", Outcome::Timeout, wait(3000, 3000)),
        invariant::STALL,
    );
    // Held by someone else throughout: a timeout is no stall.
    clean(
        H::default()
            .held(0, "b", 4000)
            .op(3000, 0, "acquire", Outcome::Timeout, wait(3000, 3000))
            .guard_end(3500, "b")
            .free(3501),
    );
}

#[test]
fn a_wait_past_its_deadline_is_reported() {
    reports(
        H::default().op(2000, 0, "acquire", Outcome::Timeout, wait(1000, 2000)),
        invariant::WAIT_OVERRUN,
    );
    let found = H::default()
        .op(1050, 0, "acquire", Outcome::Timeout, wait(1000, 1050))
        .violations();
    assert!(!found.contains(&invariant::WAIT_OVERRUN), "{found:?}");
}

#[test]
fn a_campaign_that_gives_up_is_reported() {
    reports(
        H::default().op(
            10,
            0,
            "campaign",
            Outcome::Failed { transient: true },
            Detail::None,
        ),
        invariant::CAMPAIGN_GAVE_UP,
    );
    clean(H::default().op(
        10,
        0,
        "campaign",
        Outcome::Failed { transient: false },
        Detail::None,
    ));
}

#[test]
fn an_extend_applied_twice_is_reported() {
    let extend = |after| Detail::Extend {
        token: "a".into(),
        by: ms(1000),
        before: Some(ms(1000)),
        after: Some(ms(after)),
    };
    // Acquired until 1 s; extend(1 s) added twice (a re-sent relative extend).
    reports(
        H::default()
            .held(0, "a", 1000)
            .at(
                15,
                What::KeyState {
                    server: 0,
                    key: "k".into(),
                    holder: Some(("a".into(), ms(2000))),
                    cause: "extend",
                },
            )
            .at(
                16,
                What::KeyState {
                    server: 0,
                    key: "k".into(),
                    holder: Some(("a".into(), ms(3000))),
                    cause: "extend",
                },
            )
            .op(20, 10, "extend", Outcome::Ok, extend(3000)),
        invariant::EXTEND_OVERGRANT,
    );
    clean(
        H::default()
            .held(0, "a", 1000)
            .at(
                15,
                What::KeyState {
                    server: 0,
                    key: "k".into(),
                    holder: Some(("a".into(), ms(2000))),
                    cause: "extend",
                },
            )
            .op(20, 10, "extend", Outcome::Ok, extend(2000))
            .guard_end(30, "a")
            .free(31),
    );
}

#[test]
fn a_key_held_for_nobody_is_reported() {
    // The guard ended at 500 ms, but the key stayed until 3 s: no release was ever sent.
    let history = H::default().held(0, "a", 3000).guard_end(500, "a");
    let found = history.violations();
    assert!(found.contains(&invariant::NOT_RELEASED), "{found:?}");
    assert!(found.contains(&invariant::ORPHAN), "{found:?}");
    // Released at once: nothing to report.
    clean(
        H::default()
            .held(0, "a", 3000)
            .guard_end(500, "a")
            .at(
                500,
                What::ReleaseSent {
                    process: 0,
                    server: 0,
                    token: "a".into(),
                },
            )
            .free(502),
    );
    // An abandoned acquisition that landed after its only release.
    let late = H::default()
        .at(
            0,
            What::ReleaseSent {
                process: 0,
                server: 0,
                token: "a".into(),
            },
        )
        .held(5, "a", 3005);
    reports(late, invariant::NOT_RELEASED);
}

#[test]
fn an_owner_answer_the_server_never_gave_is_reported() {
    let owner = Detail::Owner {
        token: "a".into(),
        servers: vec![0],
        quorum: 1,
    };
    reports(
        H::default()
            .held(0, "b", 3000)
            .op(20, 10, "is_owner", Outcome::Ok, owner.clone()),
        invariant::OWNER_ANSWER,
    );
    clean(
        H::default()
            .held(0, "a", 3000)
            .op(20, 10, "is_owner", Outcome::Ok, owner)
            .guard_end(30, "a")
            .free(31),
    );
}

#[test]
fn a_known_lost_release_must_say_so() {
    let release = |redlock| Detail::Release {
        token: "a".into(),
        valid: false,
        redlock,
    };
    reports(
        H::default().op(
            20,
            10,
            "release",
            Outcome::Failed { transient: true },
            release(true),
        ),
        invariant::RELEASE_OUTCOME,
    );
    reports(
        H::default().op(20, 10, "release", Outcome::InDoubt, release(false)),
        invariant::RELEASE_OUTCOME,
    );
    clean(H::default().op(20, 10, "release", Outcome::Refused, release(true)));
}
