//! The conformance suite every backend runs (feature `testing`).
//!
//! **Not a stable API.** These checks, and the types and macro that run them, are not a stable part of
//! the public API: they may change in any release, patch releases included, as the contract they check
//! grows. They are meant only for the test suites of backend implementations.
//!
//! Each check is a plain `async fn` taking the backend under test, a [`Probe`] that reads and writes the
//! store directly (behind the backend's back, as another client would), and a key unique to the run.
//! They sleep only on the backend's own runtime, so the suite runs on any executor. Checks panic with a
//! message naming what broke, like assertions in a test.
//!
//! A backend's test file calls [`conformance_tests!`](crate::conformance_tests) once per input: it
//! emits one `#[test]` per check, named after it, so `cargo test` lists every check and a failure names
//! the one that broke. [`all_checks`] lists them (one list, in the macro), each [`Check`] with the
//! [`Need`]s that decide how it runs: [`Need::Alone`] checks run while no other check does,
//! [`Need::OwnStore`] ones get a store of their own from the setup, and [`Need::Server`] ones need a
//! Redis server behind the probe. [`run_all`] runs the ones a shared store can take, one after the
//! other, for deployments that cannot give each check a store.
//!
//! The [wrappers](CountingBackend) count calls, bypass the in-process waiting line, and inject faults;
//! they are usable in any test.

mod checks;
mod probe;
mod suite;
mod wrappers;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::LockBackend;

pub use checks::acquire::{
    acquire_takes_over_after_expiry, acquire_times_out_naming_the_key, acquire_waits_for_release,
    contention_never_admits_two_holders, key_holds_exactly_the_token, mutex_recipe,
    tokens_are_per_acquisition, try_acquire_reports_busy_as_none,
    zero_wait_makes_exactly_one_attempt,
};
pub use checks::cancellation::{
    background_release_retries_through_an_outage, cancelled_acquire_leaves_no_lock,
    cancelled_release_still_releases, dropped_guard_is_released, dropped_run_releases_the_lock,
};
pub use checks::contract::server::{
    a_paused_server_gives_a_transient_timeout, noscript_falls_back_to_eval_once,
    script_digests_match_the_server, script_errors_are_permanent_but_loading_is_transient,
    script_replies_keep_their_shapes, wrong_type_is_permanent,
};
pub use checks::contract::{
    concurrent_set_nx_has_one_winner, durations_are_kept_to_the_millisecond,
    invalid_arguments_send_nothing, lock_scripts_reply_in_their_shapes,
    scripts_survive_a_script_flush, set_nx_recognises_own_write,
    set_nx_stores_keys_and_values_exactly, unacknowledged_writes_are_not_counted,
};
pub use checks::election::{
    election_hands_over_on_resign, election_replaces_a_silent_leader, leader_follower_recipe,
};
pub use checks::fencing::{
    companion_keys, fenced_acquire_recognises_own_write, fenced_set_failure_is_in_doubt,
    fenced_set_rejects_stale_fences, fences_strictly_increase,
    fencing_works_for_keys_with_odd_braces,
};
pub use checks::guard::{
    expired_lock_is_never_recreated, extend_adds_to_the_remaining_ttl, is_owner_follows_the_token,
    release_checks_the_token, renew_resets_a_shorter_ttl_and_never_shortens,
    resent_extend_adds_once, resent_release_is_in_doubt_not_lost,
    validity_never_exceeds_the_server_ttl,
};
pub use checks::hold::{
    a_lease_reported_lost_is_released_once_the_store_answers,
    hold_does_not_wait_for_a_hung_renewal, hold_renews_past_the_ttl,
    hold_reports_a_takeover_and_drops_the_work, hold_reports_an_expiry,
    hold_reports_failing_renewals, max_hold_bounds_renewal, run_renews_while_the_body_runs,
    run_reports_lost_lock, run_returns_value_and_releases, run_times_out_without_running_the_body,
};
pub use checks::semaphore::{
    resent_shared_acquisitions_never_share_a_fence, semaphore_acquire_many_counts_permits,
    semaphore_admits_at_most_limit, semaphore_contention_never_exceeds_the_limit,
    semaphore_dropped_and_cancelled_permits_come_back,
    semaphore_limit_is_kept_while_permits_are_held, semaphore_permits_expire_on_their_own,
    semaphore_permits_extend_renew_and_fence, semaphore_resent_requests_apply_once,
    semaphore_run_releases, semaphore_waiter_gets_a_released_permit,
};
// Fair lock.
pub use checks::fair::{
    cancelled_fair_waiter_leaves_the_queue, dead_fair_waiter_stops_blocking_within_its_ttl,
    fair_and_plain_locks_exclude_each_other, fair_fences_strictly_increase,
    fair_lock_grants_in_arrival_order, fair_try_acquire_fails_while_someone_waits,
    fair_waiter_that_gives_up_leaves_the_queue, fair_waiters,
};
// Read-write locks.
pub use checks::rwlock::{
    rw_cancelled_acquire_leaves_nothing, rw_dead_writer_stops_blocking_within_its_ttl,
    rw_downgrade_keeps_the_hold_and_lets_readers_in, rw_dropped_guards_are_released,
    rw_fences_strictly_increase, rw_holds_expire_on_their_own, rw_invalid_arguments_send_nothing,
    rw_readers_share_the_lock, rw_waiting_writer_blocks_new_readers, rw_writer_excludes_everyone,
    rw_writer_gets_in_under_a_stream_of_readers, rw_writer_that_gives_up_stops_blocking_readers,
};
// Inspection.
pub use checks::inspect::{
    inspect_names_the_leader_and_its_term, inspect_shows_rwlock_readers_writer_and_waiting_writers,
    inspect_shows_semaphore_holders_and_permits, inspect_shows_the_fair_queue_in_order,
    inspect_shows_the_lock_holder_ttl_and_fence,
};
// Bounded waits (issue 13).
pub use checks::waits::waiters_beyond_the_blocking_limit_still_acquire;
// Batched renewals (issue 13).
pub use checks::batch::{
    many_holds_are_renewed_in_batches, one_taken_over_key_of_a_batch_loses_only_its_lease,
};
// Hand-over in one round trip (issue 13).
pub use checks::handover::{
    an_untaken_grant_wakes_a_waiter_elsewhere, hand_over_grants_nothing_when_the_key_is_not_ours,
    hand_over_grants_the_next_local_waiter_in_one_call,
    hand_over_to_a_cancelled_waiter_frees_the_key, hand_over_validity_counts_from_the_send,
    lost_hand_over_reply_leaves_the_waiter_trying,
};
pub use probe::{Probe, Unsupported};
pub use suite::{CALL_BOUND, Check, Fixture, Need, Setup, Turn, all_checks, run_all};
pub use wrappers::{CountingBackend, Fault, FaultyBackend, Unqueued};

const SECOND: Duration = Duration::from_secs(1);

async fn sleep(backend: &Arc<dyn LockBackend>, duration: Duration) {
    crate::backend::runtime_of(backend).sleep(duration).await;
}

/// Polls `condition` until it holds or `within` passes; returns whether it held.
async fn eventually<F>(backend: &Arc<dyn LockBackend>, within: Duration, mut condition: F) -> bool
where
    F: AsyncFnMut() -> bool,
{
    let deadline = Instant::now() + within;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(backend, Duration::from_millis(10)).await;
    }
}

/// Whether `key` is gone from the store within 5 s (a background release doing its work).
async fn freed_soon(backend: &Arc<dyn LockBackend>, probe: &dyn Probe, key: &str) -> bool {
    eventually(backend, 5 * SECOND, async || probe.get(key).await.is_none()).await
}
