//! The fair lock's invariants, each fed a history that breaks it and its repaired twin. The fair key
//! is the mutex histories' `k`, so `held` and `free` give its holder.

use super::super::history::{Detail, Op, Outcome, Waiter, What, invariant};
use super::{H, clean, ms, reports};

impl H {
    /// Server 0's queue of `k` after a script at `at` (its wall clock on true time): each waiter
    /// `(token, ticket, heartbeat in ms)`, and the token the script granted `k` to.
    fn queue(self, at: u64, waiters: &[(&str, i64, u64)], granted: Option<&str>) -> Self {
        let waiters = waiters
            .iter()
            .map(|(token, ticket, beat)| Waiter {
                token: (*token).to_owned(),
                ticket: *ticket,
                beat_ms: *beat as i64,
                lapses: ms(*beat),
            })
            .collect();
        self.at(
            at,
            What::FairQueue {
                server: 0,
                key: "k".into(),
                wall_ms: at as i64,
                waiters,
                granted: granted.map(str::to_owned),
                cause: "fair_acquire",
            },
        )
    }

    /// Process 0's task 1 sent a fair acquisition of `k` for `token`.
    fn join_sent(self, at: u64, token: &str) -> Self {
        self.at(
            at,
            What::AcquireSent {
                process: 0,
                task: 1,
                key: "k".into(),
                token: token.into(),
            },
        )
    }

    /// A `fair_acquire` of `k` by process 0's task 1, from `start` to `at`, with `wait`, a bound of
    /// 200 ms (two calls of 100 ms: the last attempt and the leave), and `took` on the client's clock.
    fn fair_acquire(self, at: u64, start: u64, outcome: Outcome, wait: u64, took: u64) -> Self {
        self.at(
            at,
            What::Op(Op {
                process: 0,
                task: 1,
                kind: "fair_acquire",
                key: "k".into(),
                start: ms(start),
                outcome,
                detail: Detail::Wait {
                    wait: Some(ms(wait)),
                    bound: ms(200),
                    took: ms(took),
                },
            }),
        )
    }
}

#[test]
fn a_grant_past_a_live_waiter_with_a_smaller_ticket_is_reported() {
    let queued = || {
        H::default()
            .held(0, "h", 5)
            .queue(1, &[("a", 1, 3000), ("b", 2, 3000)], None)
    };
    // b overtakes a.
    reports(
        queued().queue(10, &[("a", 1, 3000)], Some("b")),
        invariant::FAIR_ORDER,
    );
    // A token not queued (try_acquire) overtakes both.
    reports(
        queued().queue(10, &[("a", 1, 3000), ("b", 2, 3000)], Some("c")),
        invariant::FAIR_ORDER,
    );
    // a first, as its ticket says.
    clean(
        queued()
            .held(10, "a", 5000)
            .queue(10, &[("b", 2, 3000)], Some("a")),
    );
    // A waiter whose heartbeat lapsed (at 8 ms, before the grant's 10) blocks nobody.
    clean(
        H::default()
            .held(0, "h", 5)
            .queue(1, &[("a", 1, 8), ("b", 2, 3000)], None)
            .held(10, "b", 5000)
            .queue(10, &[], Some("b")),
    );
    // Nobody queued: anyone goes.
    clean(H::default().queue(10, &[], Some("c")));
}

#[test]
fn a_place_renewed_after_its_wait_ended_is_reported() {
    // The wait ended (timed out) at 100 ms, yet a join for its token left at 150 ms.
    let waited = || {
        H::default()
            .held(0, "h", 5000)
            .join_sent(0, "a")
            .queue(1, &[("a", 1, 3000)], None)
            .fair_acquire(100, 0, Outcome::Timeout, 90, 100)
    };
    reports(
        waited()
            .join_sent(150, "a")
            .queue(151, &[("a", 1, 3150)], None),
        invariant::PLACE_OUTLIVED,
    );
    // Its leave landed at once instead.
    clean(waited().queue(101, &[], None));
}

#[test]
fn a_place_live_longer_than_one_ttl_is_reported() {
    // The TTL is 3 s: a heartbeat 4 s past the script's `now` outlives it.
    reports(
        H::default()
            .held(0, "h", 5000)
            .queue(10, &[("a", 1, 4010)], None),
        invariant::PLACE_OUTLIVED,
    );
    clean(
        H::default()
            .held(0, "h", 5000)
            .queue(10, &[("a", 1, 3010)], None)
            .queue(3500, &[], None),
    );
}

#[test]
fn a_waiter_that_gave_up_but_kept_its_place_is_reported() {
    // Timed out at 100 ms; its place stays live until its heartbeat lapses at 3 s, with the grace at
    // 200 ms.
    let waited = || {
        H::default()
            .held(0, "h", 5000)
            .join_sent(0, "a")
            .queue(1, &[("a", 1, 3000)], None)
            .fair_acquire(100, 0, Outcome::Timeout, 90, 100)
    };
    reports(waited(), invariant::PLACE_NOT_LEFT);
    // The leave landed within the grace.
    clean(waited().queue(150, &[], None));
}

#[test]
fn a_free_key_with_a_live_waiter_queued_is_reported() {
    // Free from 100 ms while a waits until its heartbeat lapses at 3 s.
    let queued = || {
        H::default()
            .held(0, "h", 100)
            .queue(1, &[("a", 1, 3000)], None)
    };
    reports(queued(), invariant::QUEUE_STALL);
    // a takes it at 300 ms: free for 200 ms, within the 400 ms grace.
    clean(queued().held(300, "a", 5000).queue(300, &[], Some("a")));
}

#[test]
fn a_fair_wait_past_its_bound_is_reported() {
    // A wait of 100 ms and two calls of 100 ms: 300 ms at most.
    reports(
        H::default().fair_acquire(400, 0, Outcome::Timeout, 100, 350),
        invariant::WAIT_OVERRUN,
    );
    clean(H::default().fair_acquire(300, 0, Outcome::Timeout, 100, 290));
    // A cancelled one is not bound.
    clean(H::default().fair_acquire(400, 0, Outcome::Cancelled, 100, 350));
}
