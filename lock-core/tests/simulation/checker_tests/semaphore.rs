//! The semaphore's invariants, each fed a history that breaks it and its repaired twin.

use super::super::history::{Detail, Op, Outcome, What, invariant};
use super::{H, clean, ms, reports};

/// The semaphore key of these histories.
const KEY: &str = "s";

impl H {
    /// Server 0's holders of `KEY` after a script at `at` (its wall clock then `wall_ms`), under
    /// `limit`: each `(member, expiry in ms)`, the expiry both the score (wall ms) and the true instant
    /// (these histories put the server's wall clock on true time).
    fn members(self, at: u64, limit: u32, holders: &[(&str, u64)]) -> Self {
        let mut members: Vec<(String, i64, std::time::Duration)> = holders
            .iter()
            .map(|(member, until)| ((*member).to_owned(), *until as i64, ms(*until)))
            .collect();
        members.push((format!("limit:{limit}"), 0, ms(0)));
        self.at(
            at,
            What::Members {
                server: 0,
                key: KEY.into(),
                wall_ms: at as i64,
                members,
                cause: "semaphore_acquire",
            },
        )
    }

    /// A client believes at `at` that it holds `permits` (of `limit`) as `"<permits>:<token>"` until
    /// `until`.
    fn permits(self, at: u64, token: &str, permits: u32, limit: u32, until: u64) -> Self {
        self.at(
            at,
            What::Permits {
                process: 0,
                key: KEY.into(),
                token: token.into(),
                member: format!("{permits}:{token}"),
                permits,
                limit,
                until: ms(until),
            },
        )
    }

    /// An operation on `KEY` from `start` to `at`.
    fn semaphore_op(self, at: u64, start: u64, outcome: Outcome, detail: Detail) -> Self {
        self.at(
            at,
            What::Op(Op {
                process: 0,
                task: 1,
                kind: "semaphore_acquire",
                key: KEY.into(),
                start: ms(start),
                outcome,
                detail,
            }),
        )
    }

    fn permit_end(self, at: u64, token: &str) -> Self {
        self.at(
            at,
            What::GuardEnd {
                key: KEY.into(),
                token: token.into(),
            },
        )
    }
}

#[test]
fn a_server_over_its_limit_is_reported() {
    // Two live holders of one permit each under a limit of 1.
    reports(
        H::default().members(10, 1, &[("1:a", 1000), ("1:b", 1000)]),
        invariant::SERVER_OVER_LIMIT,
    );
    // An expired holder (scored before the server's now) does not count, as the scripts count.
    clean(H::default().members(10, 1, &[("1:a", 5), ("1:b", 1000)]));
    // Many permits as one holder count as many.
    reports(
        H::default().members(10, 2, &[("2:a", 1000), ("1:b", 1000)]),
        invariant::SERVER_OVER_LIMIT,
    );
    clean(H::default().members(10, 3, &[("2:a", 1000), ("1:b", 1000)]));
}

#[test]
fn beliefs_over_the_limit_are_reported() {
    // Each belief is backed by its server state, but at 600 ms both are believed under a limit of 1:
    // the first holder's validity outlives its server expiry as the second one is granted.
    let history = H::default()
        .members(0, 1, &[("1:a", 1000)])
        .permits(10, "a", 1, 1, 900)
        .members(500, 1, &[("1:b", 2000)])
        .permits(600, "b", 1, 1, 1500);
    let found = history.violations();
    assert!(found.contains(&invariant::OVER_LIMIT), "{found:?}");
    assert!(found.contains(&invariant::PERMIT_NOT_HELD), "{found:?}");
    // One after the other: no overlap.
    clean(
        H::default()
            .members(0, 1, &[("1:a", 1000)])
            .permits(10, "a", 1, 1, 400)
            .members(500, 1, &[("1:b", 2000)])
            .permits(600, "b", 1, 1, 1500),
    );
    // Under a limit of 3, a holder of 2 and one of 1 fit; one more permit does not.
    let three = |extra: u32| {
        H::default()
            .members(0, 3, &[("2:a", 3000), ("1:b", 3000)])
            .permits(10, "a", 2, 3, 2000)
            .permits(20, "b", 1, 3, 2000)
            .permits(30, "c", extra, 3, 2000)
    };
    clean(
        H::default()
            .members(0, 3, &[("2:a", 3000), ("1:b", 3000)])
            .permits(10, "a", 2, 3, 2000)
            .permits(20, "b", 1, 3, 2000),
    );
    reports(three(1), invariant::OVER_LIMIT);
    // A released permit's belief ends with its guard.
    clean(
        H::default()
            .members(0, 1, &[("1:a", 3000)])
            .permits(10, "a", 1, 1, 2000)
            .permit_end(400, "a")
            .members(401, 1, &[])
            .members(500, 1, &[("1:b", 3000)])
            .permits(510, "b", 1, 1, 2000),
    );
}

#[test]
fn a_permit_the_server_does_not_back_is_reported() {
    reports(
        H::default()
            .members(0, 2, &[("1:a", 1000)])
            .permits(10, "a", 1, 2, 2000),
        invariant::PERMIT_NOT_HELD,
    );
    // Removed behind the client's back while it believed.
    reports(
        H::default()
            .members(0, 2, &[("1:a", 3000)])
            .permits(10, "a", 1, 2, 2000)
            .members(500, 2, &[]),
        invariant::PERMIT_NOT_HELD,
    );
    // Lost data excuses it: a failover or restart may lose a grant (semaphores wait for no replica,
    // so even a failover the mutex's `replicas` covers may).
    let rollback = What::Rollback {
        server: 0,
        to_seq: 1,
        from_seq: 2,
        covered: true,
    };
    clean(
        H::default()
            .members(0, 2, &[("1:a", 3000)])
            .permits(10, "a", 1, 2, 2000)
            .at(500, rollback)
            .members(500, 2, &[]),
    );
}

#[test]
fn a_semaphores_fences_are_checked_with_the_rest() {
    let issued = |token: &str, fence| What::FenceIssued {
        server: 0,
        key: KEY.into(),
        token: token.into(),
        fence,
    };
    reports(
        H::default()
            .at(0, issued("1:a", 7))
            .at(10, issued("1:b", 7)),
        invariant::FENCE_NOT_INCREASING,
    );
    clean(
        H::default()
            .at(0, issued("1:a", 7))
            .at(10, issued("1:b", 8)),
    );
}

#[test]
fn work_that_hold_let_finish_after_a_loss_is_reported() {
    let work = |start| What::ShareWork {
        process: 0,
        key: KEY.into(),
        member: "1:a".into(),
        start: ms(start),
    };
    reports(
        H::default()
            .members(0, 1, &[("1:a", 500)])
            .at(800, work(100)),
        invariant::MISSED_LOSS,
    );
    clean(
        H::default()
            .members(0, 1, &[("1:a", 500)])
            .members(400, 1, &[("1:a", 1500)])
            .at(800, work(100)),
    );
}

#[test]
fn a_permit_renewed_after_its_holder_stopped_is_reported() {
    // The holder stopped at 100 ms; a renewal at 2 s (long past every in-flight request) moved its
    // expiry: a dead holder's permits kept alive.
    reports(
        H::default()
            .members(0, 1, &[("1:a", 1000)])
            .permit_end(100, "a")
            .members(2000, 1, &[("1:a", 5000)]),
        invariant::PERMIT_REVIVED,
    );
    // A renewal that was in flight when it stopped may land just after.
    clean(
        H::default()
            .members(0, 1, &[("1:a", 1000)])
            .permit_end(100, "a")
            .members(150, 1, &[("1:a", 1200)])
            .members(2000, 1, &[("1:a", 1200), ("1:b", 5000)]),
    );
}

#[test]
fn a_semaphore_wait_past_its_deadline_is_reported() {
    let acquire = |took| Detail::Permits {
        wait: Some(ms(100)),
        bound: ms(50),
        took: ms(took),
        permits: 1,
        limit: 1,
    };
    reports(
        H::default().semaphore_op(300, 0, Outcome::Timeout, acquire(300)),
        invariant::WAIT_OVERRUN,
    );
    clean(H::default().semaphore_op(140, 0, Outcome::Timeout, acquire(140)));
}

#[test]
fn a_waiter_starved_of_free_permits_is_reported() {
    let acquire = Detail::Permits {
        wait: Some(ms(3000)),
        bound: ms(50),
        took: ms(3000),
        permits: 2,
        limit: 3,
    };
    // One of three permits held throughout: two stayed free for seconds, yet the wait for two timed
    // out.
    reports(
        H::default().members(0, 3, &[("1:a", 9000)]).semaphore_op(
            3000,
            0,
            Outcome::Timeout,
            acquire.clone(),
        ),
        invariant::STALL,
    );
    clean(H::default().members(0, 3, &[("2:a", 9000)]).semaphore_op(
        3000,
        0,
        Outcome::Timeout,
        acquire,
    ));
}

#[test]
fn permits_kept_for_an_ended_holder_are_reported() {
    // Released at 100 ms, still held at 2 s.
    reports(
        H::default()
            .members(0, 1, &[("1:a", 3000)])
            .permits(10, "a", 1, 1, 90)
            .permit_end(100, "a"),
        invariant::ORPHAN,
    );
    clean(
        H::default()
            .members(0, 1, &[("1:a", 3000)])
            .permits(10, "a", 1, 1, 90)
            .permit_end(100, "a")
            .members(120, 1, &[]),
    );
}
