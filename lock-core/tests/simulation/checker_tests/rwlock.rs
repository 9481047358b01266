//! The read-write lock's invariants, each fed a history that breaks it and its repaired twin.

use super::super::history::{Detail, Op, Outcome, What, invariant};
use super::{H, clean, ms, reports};

/// The lock key of these histories, and its writers' key.
const KEY: &str = "rw";
const WRITERS: &str = "rw:writers";

impl H {
    /// Server 0's sorted set `key` after `cause` at `at` (its wall clock then on true time): each
    /// `(member, expiry in ms)`, the expiry both the score and the true instant.
    fn set(self, at: u64, key: &str, cause: &'static str, members: &[(&str, u64)]) -> Self {
        let members = members
            .iter()
            .map(|(member, until)| ((*member).to_owned(), *until as i64, ms(*until)))
            .collect();
        self.at(
            at,
            What::Members {
                server: 0,
                key: key.into(),
                wall_ms: at as i64,
                members,
                cause,
            },
        )
    }

    fn holds(self, at: u64, cause: &'static str, members: &[(&str, u64)]) -> Self {
        self.set(at, KEY, cause, members)
    }

    fn intents(self, at: u64, members: &[(&str, u64)]) -> Self {
        self.set(at, WRITERS, "rw_write", members)
    }

    /// A writer's request that may register `intent` left at `at`, from task `task`.
    fn intent_sent(self, at: u64, task: u64, intent: &str) -> Self {
        self.at(
            at,
            What::IntentSent {
                process: 0,
                task,
                key: KEY.into(),
                writers: WRITERS.into(),
                intent: intent.into(),
            },
        )
    }

    /// A client believes at `at` that it holds `member` (`read:<token>` or `write:<token>`) until
    /// `until`.
    fn hold(self, at: u64, member: &str, until: u64) -> Self {
        let token = member.split_once(':').unwrap().1;
        self.at(
            at,
            What::RwHold {
                process: 0,
                key: KEY.into(),
                token: token.into(),
                member: member.into(),
                until: ms(until),
            },
        )
    }

    fn acquired(self, at: u64, token: &str, fence: u64) -> Self {
        self.at(
            at,
            What::Acquired {
                process: 0,
                key: KEY.into(),
                token: token.into(),
                fence: Some(fence),
                redlock: false,
            },
        )
    }

    fn hold_end(self, at: u64, token: &str) -> Self {
        self.at(
            at,
            What::GuardEnd {
                key: KEY.into(),
                token: token.into(),
            },
        )
    }

    /// An operation of `kind` on `KEY` from `start` to `at`, by task `task`.
    fn rw_op(
        self,
        at: u64,
        start: u64,
        task: u64,
        kind: &'static str,
        outcome: Outcome,
        detail: Detail,
    ) -> Self {
        self.at(
            at,
            What::Op(Op {
                process: 0,
                task,
                kind,
                key: KEY.into(),
                start: ms(start),
                outcome,
                detail,
            }),
        )
    }
}

fn rw_wait(wait: u64, took: u64, write: bool) -> Detail {
    Detail::RwWait {
        wait: Some(ms(wait)),
        bound: ms(50),
        took: ms(took),
        write,
    }
}

fn member(member: &str) -> Detail {
    Detail::RwMember {
        member: member.into(),
    }
}

#[test]
fn a_server_with_a_writer_beside_anyone_is_reported() {
    reports(
        H::default().holds(10, "rw_read", &[("write:a", 1000), ("read:b", 1000)]),
        invariant::SERVER_READER_BESIDE_WRITER,
    );
    reports(
        H::default().holds(10, "rw_write", &[("write:a", 1000), ("write:b", 1000)]),
        invariant::SERVER_TWO_WRITERS,
    );
    // An expired writer (scored before the server's now) does not count, as the scripts count.
    clean(H::default().holds(10, "rw_read", &[("write:a", 5), ("read:b", 1000)]));
    clean(H::default().holds(10, "rw_read", &[("read:a", 1000), ("read:b", 1000)]));
}

#[test]
fn beliefs_in_a_reader_beside_a_writer_or_two_writers_are_reported() {
    // Each belief is backed by its server state, but at 600 ms both are believed: the writer's
    // validity outlives its server expiry as the reader is admitted.
    let overlap = |second: &str| {
        H::default()
            .holds(0, "rw_write", &[("write:a", 500)])
            .hold(10, "write:a", 900)
            .holds(500, "rw_read", &[(second, 2000)])
            .hold(600, second, 1500)
    };
    let found = overlap("read:b").violations();
    assert!(
        found.contains(&invariant::READER_BESIDE_WRITER),
        "{found:?}"
    );
    assert!(found.contains(&invariant::HOLD_NOT_HELD), "{found:?}");
    let found = overlap("write:b").violations();
    assert!(found.contains(&invariant::TWO_WRITERS), "{found:?}");
    // One after the other: no overlap.
    clean(
        H::default()
            .holds(0, "rw_write", &[("write:a", 500)])
            .hold(10, "write:a", 400)
            .holds(500, "rw_read", &[("read:b", 2000)])
            .hold(600, "read:b", 1500),
    );
    // Readers side by side are fine.
    clean(
        H::default()
            .holds(0, "rw_read", &[("read:a", 2000)])
            .hold(10, "read:a", 1500)
            .holds(20, "rw_read", &[("read:a", 2000), ("read:b", 2000)])
            .hold(30, "read:b", 1500),
    );
}

#[test]
fn a_reader_admitted_past_a_waiting_writer_is_reported() {
    let history = |intent_until: u64| {
        H::default()
            .intent_sent(0, 7, "i")
            .holds(0, "rw_read", &[("read:a", 3000)])
            .intents(10, &[("i", intent_until)])
            .holds(100, "rw_read", &[("read:a", 3000), ("read:b", 3000)])
    };
    reports(history(1000), invariant::READER_PAST_WRITER);
    // The intent had lapsed by then: the reader may enter.
    clean(history(90));
    // A downgrade turns the writer's own hold into a read hold even while another writer waits.
    clean(
        H::default()
            .intent_sent(0, 7, "i")
            .holds(0, "rw_write", &[("write:a", 3000)])
            .intents(10, &[("i", 1000)])
            .holds(100, "rw_downgrade", &[("read:a", 3000)]),
    );
}

#[test]
fn a_downgrade_with_a_gap_is_reported() {
    let downgraded = |between: bool, score: u64| {
        let mut h = H::default()
            .holds(0, "rw_write", &[("write:a", 2000)])
            .hold(10, "write:a", 1500)
            .at(
                100,
                What::Downgrading {
                    key: KEY.into(),
                    token: "a".into(),
                },
            );
        if between {
            // Released, then read again: an instant without the hold, open to a writer.
            h = h.holds(110, "share_release", &[]);
        }
        h.holds(120, "rw_downgrade", &[("read:a", score)])
            .rw_op(130, 100, 1, "rw_downgrade", Outcome::Ok, member("write:a"))
            .hold(130, "read:a", 1500)
    };
    reports(downgraded(true, 2000), invariant::DOWNGRADE_GAP);
    // The read hold must keep the write hold's expiry.
    reports(downgraded(false, 2500), invariant::DOWNGRADE_GAP);
    clean(downgraded(false, 2000));
}

#[test]
fn fences_out_of_order_with_a_writer_are_reported() {
    let history = |fence_b: u64| {
        H::default()
            .holds(0, "rw_read", &[("read:a", 1000)])
            .acquired(10, "a", 20)
            .hold(10, "read:a", 500)
            .hold_end(500, "a")
            .holds(500, "share_release", &[])
            .holds(600, "rw_write", &[("write:b", 2000)])
            .acquired(610, "b", fence_b)
            .hold(610, "write:b", 1500)
    };
    reports(history(20), invariant::RW_FENCE_ORDER);
    reports(history(10), invariant::RW_FENCE_ORDER);
    clean(history(21));
    // Readers one after the other may hold fences in either order (granted in one order, answered in
    // the other).
    clean(
        H::default()
            .holds(0, "rw_read", &[("read:a", 1000), ("read:b", 1000)])
            .acquired(10, "a", 20)
            .hold(10, "read:a", 300)
            .acquired(400, "b", 10)
            .hold(400, "read:b", 900),
    );
}

#[test]
fn an_owner_answer_the_server_never_gave_is_reported() {
    let history = |outcome: Outcome| {
        H::default().holds(0, "rw_read", &[("read:a", 100)]).rw_op(
            300,
            200,
            1,
            "rw_is_owner",
            outcome,
            member("read:a"),
        )
    };
    reports(history(Outcome::Ok), invariant::RW_OWNER_ANSWER);
    clean(history(Outcome::Refused));
    clean(H::default().holds(0, "rw_read", &[("read:a", 250)]).rw_op(
        300,
        200,
        1,
        "rw_is_owner",
        Outcome::Ok,
        member("read:a"),
    ));
}

#[test]
fn an_intent_kept_past_its_ttl_is_reported() {
    // Scored more than one TTL (3 s here) ahead.
    reports(
        H::default()
            .intent_sent(0, 7, "i")
            .intents(10, &[("i", 5000)]),
        invariant::INTENT_KEPT,
    );
    // Refreshed long after its writer gave up (at 1 s), so it blocks readers past one TTL from then.
    let refreshed = |at: u64| {
        H::default()
            .intent_sent(0, 7, "i")
            .intents(10, &[("i", 3010)])
            .rw_op(
                1000,
                0,
                7,
                "rw_write",
                Outcome::Cancelled,
                rw_wait(2000, 1000, true),
            )
            .intents(at, &[("i", at + 3000)])
            .intents(at + 1, &[])
    };
    reports(refreshed(2000), invariant::INTENT_KEPT);
    // A request that was in flight as it was cancelled may land just after: still within the grace.
    clean(refreshed(1010));
}

#[test]
fn a_writer_left_waiting_or_a_hold_left_behind_is_reported() {
    // The writer gave up at 1 s (a reader it waited for stayed), but its intent was still there at
    // 2 s.
    let gave_up = |removed: u64| {
        H::default()
            .holds(0, "rw_read", &[("read:x", 3000)])
            .intent_sent(0, 7, "i")
            .intents(10, &[("i", 3010)])
            .rw_op(
                1000,
                0,
                7,
                "rw_write",
                Outcome::Timeout,
                rw_wait(900, 1000, true),
            )
            .intents(removed, &[])
    };
    reports(gave_up(2000), invariant::ORPHAN);
    clean(gave_up(1010));
    // A released read hold that stays.
    let released = |removed: u64| {
        H::default()
            .holds(0, "rw_read", &[("read:a", 3000)])
            .hold(10, "read:a", 2000)
            .hold_end(100, "a")
            .holds(removed, "share_release", &[])
    };
    reports(released(1000), invariant::ORPHAN);
    clean(released(110));
}

#[test]
fn a_starved_reader_or_writer_is_reported() {
    // Nothing held and no writer waiting from 0 to 2 s, yet the reader timed out.
    let reader = H::default().holds(0, "share_release", &[]).rw_op(
        2000,
        0,
        1,
        "rw_read",
        Outcome::Timeout,
        rw_wait(2000, 2000, false),
    );
    reports(reader, invariant::STALL);
    // A live intent kept it out: writer preference, not a stall.
    clean(
        H::default()
            .intent_sent(0, 7, "i")
            .intents(0, &[("i", 2500)])
            .rw_op(
                2000,
                0,
                1,
                "rw_read",
                Outcome::Timeout,
                rw_wait(2000, 2000, false),
            )
            .rw_op(
                2600,
                0,
                7,
                "rw_write",
                Outcome::Ok,
                rw_wait(3000, 2600, true),
            )
            .intents(2600, &[]),
    );
    // A writer kept out by a reader that stayed: no stall.
    clean(H::default().holds(0, "rw_read", &[("read:a", 2500)]).rw_op(
        2000,
        0,
        1,
        "rw_write",
        Outcome::Timeout,
        rw_wait(2000, 2000, true),
    ));
    reports(
        H::default().holds(0, "rw_read", &[("read:a", 100)]).rw_op(
            2000,
            0,
            1,
            "rw_write",
            Outcome::Timeout,
            rw_wait(2000, 2000, true),
        ),
        invariant::STALL,
    );
}

#[test]
fn a_wait_past_its_deadline_is_reported() {
    let history = |took: u64, write: bool| {
        H::default().rw_op(
            took,
            0,
            1,
            "rw_read",
            Outcome::Timeout,
            rw_wait(100, took, write),
        )
    };
    reports(history(200, false), invariant::WAIT_OVERRUN);
    clean(history(140, false));
    // A writer that gave up makes one more call, to leave.
    clean(history(190, true));
    reports(history(260, true), invariant::WAIT_OVERRUN);
}
