//! The conformance suite every backend runs (feature `testing`).
//!
//! Each check is a plain `async fn` taking the backend under test, a [`Probe`] that reads and writes the
//! store directly (behind the backend's back, as another client would), and a key unique to the run. They
//! sleep only on the backend's own runtime, so the suite runs on any executor. [`run_all`] runs every
//! check.
//!
//! Checks panic with a message naming what broke, like assertions in a test.
//!
//! **Not a stable API.** This module exists for backend implementers' test suites: its checks, wrappers
//! and helpers may change in any release, without a major version bump. Do not use it outside tests.

mod checks;
mod wrappers;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::future::LocalBoxFuture;

use crate::backend::LockBackend;
use crate::memory::MemoryBackend;

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
pub use checks::contract::{
    durations_are_kept_to_the_millisecond, invalid_arguments_send_nothing,
    scripts_survive_a_script_flush, set_nx_recognises_own_write,
    unacknowledged_writes_are_not_counted,
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
pub use wrappers::{CountingBackend, Fault, FaultyBackend, Unqueued};

/// Direct access to the store under test, used to set up and observe states.
#[async_trait]
pub trait Probe: Send + Sync {
    /// `GET key`.
    async fn get(&self, key: &str) -> Option<String>;
    /// `PTTL key`: `None` when the key does not exist or has no expiry.
    async fn pttl(&self, key: &str) -> Option<Duration>;
    /// `SET key value PX ttl`, overwriting whatever is there (another client taking the lock).
    async fn set(&self, key: &str, value: &str, ttl: Duration);
    /// `DEL key` (the lock expiring).
    async fn del(&self, key: &str);
    /// `SCRIPT FLUSH` (a restart or failover forgetting loaded scripts). A no-op where scripts are native.
    async fn flush_scripts(&self);
}

#[async_trait]
impl Probe for MemoryBackend {
    async fn get(&self, key: &str) -> Option<String> {
        MemoryBackend::get(self, key)
    }
    async fn pttl(&self, key: &str) -> Option<Duration> {
        self.ttl(key)
    }
    async fn set(&self, key: &str, value: &str, ttl: Duration) {
        MemoryBackend::set(self, key, value, ttl)
    }
    async fn del(&self, key: &str) {
        self.delete(key);
    }
    async fn flush_scripts(&self) {}
}

type Check = for<'a> fn(Arc<dyn LockBackend>, &'a dyn Probe, String) -> LocalBoxFuture<'a, ()>;

macro_rules! checks {
    ($($name:ident),* $(,)?) => {
        /// Every check, by name, in the order [`run_all`] runs them.
        pub fn all_checks() -> Vec<(&'static str, Check)> {
            vec![$((stringify!($name), |b, p, k| Box::pin($name(b, p, k)) as LocalBoxFuture<'_, ()>)),*]
        }
    };
}

checks!(
    tokens_are_per_acquisition,
    key_holds_exactly_the_token,
    set_nx_recognises_own_write,
    try_acquire_reports_busy_as_none,
    zero_wait_makes_exactly_one_attempt,
    acquire_times_out_naming_the_key,
    acquire_waits_for_release,
    acquire_takes_over_after_expiry,
    durations_are_kept_to_the_millisecond,
    invalid_arguments_send_nothing,
    release_checks_the_token,
    extend_adds_to_the_remaining_ttl,
    renew_resets_a_shorter_ttl_and_never_shortens,
    validity_never_exceeds_the_server_ttl,
    resent_extend_adds_once,
    resent_release_is_in_doubt_not_lost,
    expired_lock_is_never_recreated,
    is_owner_follows_the_token,
    scripts_survive_a_script_flush,
    dropped_guard_is_released,
    run_returns_value_and_releases,
    run_reports_lost_lock,
    run_times_out_without_running_the_body,
    contention_never_admits_two_holders,
    mutex_recipe,
    leader_follower_recipe,
    hold_renews_past_the_ttl,
    hold_reports_a_takeover_and_drops_the_work,
    hold_reports_an_expiry,
    max_hold_bounds_renewal,
    run_renews_while_the_body_runs,
    fences_strictly_increase,
    fenced_acquire_recognises_own_write,
    fenced_set_rejects_stale_fences,
    fenced_set_failure_is_in_doubt,
    fencing_works_for_keys_with_odd_braces,
    election_hands_over_on_resign,
    election_replaces_a_silent_leader,
    cancelled_acquire_leaves_no_lock,
    cancelled_release_still_releases,
    dropped_run_releases_the_lock,
    hold_reports_failing_renewals,
    background_release_retries_through_an_outage,
    a_lease_reported_lost_is_released_once_the_store_answers,
    hold_does_not_wait_for_a_hung_renewal,
    unacknowledged_writes_are_not_counted,
);

/// Runs every check against `backend`, with keys starting with `prefix` (unique per run).
pub async fn run_all(backend: Arc<dyn LockBackend>, probe: &dyn Probe, prefix: &str) {
    for (name, check) in all_checks() {
        let started = Instant::now();
        check(backend.clone(), probe, format!("{prefix}{name}")).await;
        println!("conformance {name}: ok in {:?}", started.elapsed());
    }
}

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
