//! Unit tests of the quorum and validity arithmetic.

use super::quorum::{decided_by_errors, quorum_deadline};
use super::*;
use crate::time::{Moment, validity_deadline};

#[test]
fn quorum_is_a_majority() {
    let lock = |n: usize| Redlock::new(vec![crate::memory::MemoryBackend::new(); n], "k");
    let quorums: Vec<usize> = (1..=7).map(|n| lock(n).quorum()).collect();
    assert_eq!(quorums, [1, 2, 2, 3, 3, 4, 4]);
}

#[test]
fn errors_decide_only_when_they_could_have_made_a_majority() {
    // 5 masters, quorum 3.
    assert!(decided_by_errors(2, 1, 3));
    assert!(decided_by_errors(0, 3, 3));
    assert!(!decided_by_errors(1, 1, 3), "busy: the answers rule it out");
    assert!(!decided_by_errors(3, 2, 3), "a majority is not a failure");
    assert!(!decided_by_errors(0, 0, 3));
}

#[test]
fn validity_is_held_by_the_quorum_th_latest_master() {
    let t = Moment::now();
    let s = Duration::from_secs;
    let bounds = [
        Some(t + s(5)),
        None,
        Some(t + s(1)),
        Some(t + s(9)),
        Some(t + s(3)),
    ];
    assert_eq!(quorum_deadline(&bounds, 1), Some(t + s(9)));
    assert_eq!(quorum_deadline(&bounds, 3), Some(t + s(3)));
    assert_eq!(quorum_deadline(&bounds, 4), Some(t + s(1)));
    assert_eq!(quorum_deadline(&bounds, 5), None, "only four hold it");
    assert_eq!(quorum_deadline(&[], 0), None);
}

#[test]
fn default_node_timeout_is_a_tenth_of_the_ttl_capped() {
    assert_eq!(
        default_node_timeout(Duration::from_secs(30)),
        Duration::from_millis(200)
    );
    assert_eq!(
        default_node_timeout(Duration::from_secs(1)),
        Duration::from_millis(100)
    );
    assert_eq!(
        default_node_timeout(Duration::from_millis(3)),
        Duration::from_millis(1)
    );
}

#[test]
fn a_round_longer_than_the_ttl_leaves_no_validity() {
    let sent = Moment::now();
    let ttl = Duration::from_millis(100);
    // 100 ms − (1 ms + 2 ms): the saturating arithmetic of time.rs, as Redlock uses it.
    assert_eq!(
        validity_deadline(sent, ttl),
        sent + Duration::from_millis(97)
    );
    let bounds = [Some(validity_deadline(sent, ttl)); 3];
    let until = quorum_deadline(&bounds, 2).unwrap();
    assert_eq!(
        until.saturating_duration_since(sent + Duration::from_secs(1)),
        Duration::ZERO
    );
}

#[test]
fn clock_skew_is_refused_only_beyond_the_bound() {
    use super::quorum::clock_skew;
    let bound = i64::try_from(Redlock::MAX_CLOCK_SKEW.as_micros()).unwrap();
    let round = Duration::ZERO;
    assert!(
        clock_skew("k", &[Some(0), Some(bound), None], round).is_none(),
        "at the bound"
    );
    let skew = clock_skew("k", &[Some(0), None, Some(bound + 1)], round);
    assert!(
        matches!(
            skew,
            Some(LockError::ClockSkew {
                ahead: 2,
                behind: 0,
                ..
            })
        ),
        "{skew:?}"
    );
    // The round's own duration explains that much of the difference.
    let slow_round = Duration::from_millis(5);
    assert!(clock_skew("k", &[Some(0), Some(bound + 5_000)], slow_round).is_none());
}
