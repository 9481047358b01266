//! The list of checks, what each needs, and how one runs: [`Check`], [`Setup`], [`Fixture`], and the
//! [`conformance_tests!`](crate::conformance_tests) macro that makes each check a `#[test]`.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use futures::future::LocalBoxFuture;

use super::Probe;
use crate::backend::LockBackend;

/// What a check needs beyond a fresh backend and a probe onto a store that other checks share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Need {
    /// Its timing margins (300–400 ms TTLs renewed in time, hand-overs within 500 ms) assume a quiet
    /// machine: [`conformance_tests!`](crate::conformance_tests) runs it while no other check of the test
    /// binary runs.
    Alone,
    /// It flushes the store's script cache while counting commands, or stops the store: the setup gives
    /// it a store no other check uses ([`Setup::own_store`]).
    OwnStore,
    /// It times calls against a stopped store: the setup builds the backend with
    /// [`Setup::call_bound`] as its bound on each call.
    BoundedCalls,
    /// It checks the contract with a Redis server: it runs Lua scripts of its own through the backend,
    /// and uses the [`Probe`]'s server methods (`script_load`, `command_calls`, `push`, `pause`). A
    /// store that is not a Redis server cannot pass it, and skips it by name in its
    /// [`conformance_tests!`](crate::conformance_tests) call.
    Server,
}

/// The bound [`Setup::call_bound`] asks for, when a check needs [`Need::BoundedCalls`].
pub const CALL_BOUND: Duration = Duration::from_millis(300);

type CheckFn = for<'a> fn(Arc<dyn LockBackend>, &'a dyn Probe, String) -> LocalBoxFuture<'a, ()>;

/// One check of the suite: its name, what it needs, and the check itself.
#[derive(Clone, Copy)]
pub struct Check {
    name: &'static str,
    needs: &'static [Need],
    run: CheckFn,
}

impl fmt::Debug for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Check")
            .field("name", &self.name)
            .field("needs", &self.needs)
            .finish_non_exhaustive()
    }
}

/// What a setup is told about the check it builds a [`Fixture`] for.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Setup {
    /// The check's name, e.g. `"release_checks_the_token"`.
    pub check: &'static str,
    /// The check flushes the script cache while counting commands, or stops the store
    /// ([`Need::OwnStore`]): give it a store that no other check uses, and a probe that owns it.
    pub own_store: bool,
    /// When set, build the backend with this bound on each call ([`Need::BoundedCalls`]): the check
    /// expects a call to a stopped store to fail within it.
    pub call_bound: Option<Duration>,
}

/// What a check runs against: the backend under test and a probe onto the same store.
pub struct Fixture {
    backend: Arc<dyn LockBackend>,
    probe: Box<dyn Probe>,
}

impl Fixture {
    /// A fixture of `backend` and `probe`. The probe lives as long as the check runs, so it can own
    /// what the store needs (a server process started for this check, say).
    pub fn new(backend: Arc<dyn LockBackend>, probe: impl Probe + 'static) -> Self {
        Self {
            backend,
            probe: Box::new(probe),
        }
    }
}

impl fmt::Debug for Fixture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fixture")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// A check's turn to run, held while it runs: shared by the checks that tolerate company, exclusive
/// for the [`Need::Alone`] ones.
#[derive(Debug)]
pub struct Turn {
    _shared: Option<RwLockReadGuard<'static, ()>>,
    _alone: Option<RwLockWriteGuard<'static, ()>>,
}

/// Every check of this process takes a turn here; [`Need::Alone`] ones exclude all others.
static TURNS: RwLock<()> = RwLock::new(());

impl Check {
    /// The check named `name`, if the suite has one.
    pub fn named(name: &str) -> Option<Check> {
        all_checks().into_iter().find(|check| check.name == name)
    }

    /// The check's name: the name of its function in [`testing`](crate::testing), and of its `#[test]`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// What the check needs beyond a shared store.
    pub fn needs(&self) -> &'static [Need] {
        self.needs
    }

    /// What the setup is told about this check.
    pub fn setup(&self) -> Setup {
        Setup {
            check: self.name,
            own_store: self.needs.contains(&Need::OwnStore),
            call_bound: self
                .needs
                .contains(&Need::BoundedCalls)
                .then_some(CALL_BOUND),
        }
    }

    /// Waits until this check may run (a [`Need::Alone`] check waits for every other check of the
    /// process to finish, and holds the others off), and returns its turn: hold it while the check runs.
    ///
    /// A panic in a check releases its turn as the test unwinds; the lock is used only for ordering,
    /// so a poisoned one is taken as it is.
    pub fn take_turn(&self) -> Turn {
        if self.needs.contains(&Need::Alone) {
            Turn {
                _shared: None,
                _alone: Some(TURNS.write().unwrap_or_else(PoisonError::into_inner)),
            }
        } else {
            Turn {
                _shared: Some(TURNS.read().unwrap_or_else(PoisonError::into_inner)),
                _alone: None,
            }
        }
    }

    /// Builds a fixture with `setup` and runs the check on it, with a key no other run uses; prints
    /// how long each took (shown by `cargo test -- --nocapture`).
    ///
    /// Panics, like an assertion, when the check fails.
    pub async fn run<S, F>(self, setup: S)
    where
        S: FnOnce(Setup) -> F,
        F: Future<Output = Fixture>,
    {
        let started = Instant::now();
        let Fixture { backend, probe } = setup(self.setup()).await;
        let set_up = started.elapsed();
        let run = uuid::Uuid::new_v4().simple().to_string();
        let key = format!("redlease-conformance:{}:{}", &run[..8], self.name);
        (self.run)(backend, probe.as_ref(), key).await;
        println!(
            "conformance {}: ok in {:?} after a setup of {set_up:?}",
            self.name,
            started.elapsed() - set_up
        );
    }
}

crate::conformance_tests!(@checks [all_checks]);

/// Runs, one after the other against `backend`, every check that needs neither a store of its own
/// nor a Redis server behind the probe ([`Need::OwnStore`], [`Need::Server`]), with keys starting with
/// `prefix` (unique per run); prints each check's time.
///
/// For deployments whose store cannot be handed to each check afresh (a cluster, a Sentinel group).
/// A backend's own suite uses [`conformance_tests!`](crate::conformance_tests), which runs every check
/// as a test of its own.
pub async fn run_all(backend: Arc<dyn LockBackend>, probe: &dyn Probe, prefix: &str) {
    for check in all_checks() {
        if check.needs.contains(&Need::OwnStore) || check.needs.contains(&Need::Server) {
            println!(
                "conformance {}: not run here (needs {:?})",
                check.name, check.needs
            );
            continue;
        }
        let started = Instant::now();
        (check.run)(backend.clone(), probe, format!("{prefix}{}", check.name)).await;
        println!("conformance {}: ok in {:?}", check.name, started.elapsed());
    }
}

/// Emits one `#[test]` per check of the conformance suite, named after the check.
///
/// ```text
/// lock_core::conformance_tests!(setup = SETUP, run = RUN);
/// lock_core::conformance_tests!(setup = SETUP, run = RUN, skip = [CHECK, ...]);
/// ```
///
/// - `SETUP` builds what one check runs against: a function (an `async fn`, or a closure returning a
///   future) taking a [`Setup`](crate::testing::Setup) and answering a
///   [`Fixture`](crate::testing::Fixture) with a fresh backend and a [`Probe`](crate::testing::Probe)
///   onto its store. It is called once per test, inside `RUN`, so a client is built on the runtime that
///   uses it. Checks use keys of their own and can share a store, except those that ask for one of
///   their own ([`Setup::own_store`](crate::testing::Setup::own_store)).
/// - `RUN` drives a future to completion on the caller's executor: `futures::executor::block_on`, or a
///   function calling tokio's `Runtime::block_on`. lock-core itself names no runtime.
/// - `skip` names checks this backend cannot pass because its probe lacks a capability they need
///   ([`Need::Server`](crate::testing::Need::Server)): each is still emitted, marked `#[ignore]`, so
///   `cargo test` reports it as ignored rather than passed (and `-- --ignored` runs it). A name that is
///   not a check does not compile.
///
/// Each test takes its [turn](crate::testing::Check::take_turn), calls `SETUP`, and runs the check with
/// a key no other test uses. Invoke the macro once per module: several inputs go in several modules,
/// so the tests read `fred_client::release_checks_the_token`, and `cargo test release_checks_the_token`
/// runs that check for every input.
///
/// ```
/// use std::sync::Arc;
///
/// use lock_core::memory::MemoryBackend;
/// use lock_core::testing::{Check, Fixture, Setup};
///
/// /// A fresh store per check: the in-memory backend is its own probe.
/// async fn setup(_: Setup) -> Fixture {
///     let store = MemoryBackend::new();
///     Fixture::new(Arc::new(store.clone()), store)
/// }
///
/// // In a test file, e.g. `tests/conformance.rs`: one `#[test]` per check, `memory::<check>`.
/// mod memory {
///     lock_core::conformance_tests!(
///         setup = super::setup,
///         run = futures::executor::block_on,
///         // The in-memory store is not a Redis server.
///         skip = [
///             script_digests_match_the_server,
///             noscript_falls_back_to_eval_once,
///             script_replies_keep_their_shapes,
///             wrong_type_is_permanent,
///             script_errors_are_permanent_but_loading_is_transient,
///             a_paused_server_gives_a_transient_timeout,
///         ],
///     );
/// }
///
/// # fn main() {
/// // What one of those tests does:
/// let check = Check::named("release_checks_the_token").expect("a check of the suite");
/// let _turn = check.take_turn();
/// futures::executor::block_on(check.run(setup));
/// # }
/// ```
#[macro_export]
macro_rules! conformance_tests {
    (setup = $setup:expr, run = $run:expr $(, skip = [$($skip:ident),* $(,)?])? $(,)?) => {
        $crate::conformance_tests!(@checks [tests ($setup) ($run) [$($($skip)*)?] ($)]);
    };

    // The one list of checks, in the order `run_all` runs them, each with its needs in brackets
    // (variants of `Need`). It feeds both `all_checks()` and the tests.
    (@checks [$($then:tt)*]) => {
        $crate::conformance_tests!(@ $($then)* ;
            tokens_are_per_acquisition,
            key_holds_exactly_the_token,
            set_nx_recognises_own_write,
            set_nx_stores_keys_and_values_exactly,
            concurrent_set_nx_has_one_winner,
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
            lock_scripts_reply_in_their_shapes,
            scripts_survive_a_script_flush,
            dropped_guard_is_released,
            run_returns_value_and_releases,
            run_reports_lost_lock,
            run_times_out_without_running_the_body,
            contention_never_admits_two_holders,
            mutex_recipe,
            leader_follower_recipe [Alone],
            hold_renews_past_the_ttl [Alone],
            hold_reports_a_takeover_and_drops_the_work [Alone],
            hold_reports_an_expiry,
            max_hold_bounds_renewal [Alone],
            run_renews_while_the_body_runs [Alone],
            fences_strictly_increase,
            fenced_acquire_recognises_own_write,
            fenced_set_rejects_stale_fences,
            fenced_set_failure_is_in_doubt,
            fencing_works_for_keys_with_odd_braces,
            election_hands_over_on_resign [Alone],
            election_replaces_a_silent_leader [Alone],
            cancelled_acquire_leaves_no_lock,
            cancelled_release_still_releases,
            dropped_run_releases_the_lock,
            hold_reports_failing_renewals,
            background_release_retries_through_an_outage,
            a_lease_reported_lost_is_released_once_the_store_answers,
            hold_does_not_wait_for_a_hung_renewal,
            unacknowledged_writes_are_not_counted,
            script_digests_match_the_server [Server],
            noscript_falls_back_to_eval_once [Server, OwnStore],
            script_replies_keep_their_shapes [Server],
            wrong_type_is_permanent [Server],
            script_errors_are_permanent_but_loading_is_transient [Server],
            a_paused_server_gives_a_transient_timeout [Server, OwnStore, BoundedCalls, Alone],
            // Semaphore.
            semaphore_admits_at_most_limit,
            semaphore_acquire_many_counts_permits,
            semaphore_limit_is_kept_while_permits_are_held,
            semaphore_permits_expire_on_their_own [Alone],
            semaphore_waiter_gets_a_released_permit,
            semaphore_contention_never_exceeds_the_limit,
            semaphore_permits_extend_renew_and_fence,
            semaphore_dropped_and_cancelled_permits_come_back,
            semaphore_run_releases,
            semaphore_resent_requests_apply_once,
            resent_shared_acquisitions_never_share_a_fence,
            // Fair lock.
            fair_lock_grants_in_arrival_order,
            fair_try_acquire_fails_while_someone_waits,
            fair_waiter_that_gives_up_leaves_the_queue,
            cancelled_fair_waiter_leaves_the_queue,
            dead_fair_waiter_stops_blocking_within_its_ttl [Alone],
            fair_fences_strictly_increase,
            fair_and_plain_locks_exclude_each_other,
            // Read-write locks.
            rw_readers_share_the_lock,
            rw_writer_excludes_everyone,
            rw_waiting_writer_blocks_new_readers,
            rw_writer_gets_in_under_a_stream_of_readers [Alone],
            rw_writer_that_gives_up_stops_blocking_readers,
            rw_dead_writer_stops_blocking_within_its_ttl [Alone],
            rw_downgrade_keeps_the_hold_and_lets_readers_in,
            rw_holds_expire_on_their_own [Alone],
            rw_fences_strictly_increase,
            rw_dropped_guards_are_released,
            rw_cancelled_acquire_leaves_nothing,
            rw_invalid_arguments_send_nothing,
            // Inspection.
            inspect_shows_the_lock_holder_ttl_and_fence,
            inspect_shows_the_fair_queue_in_order,
            inspect_shows_semaphore_holders_and_permits,
            inspect_shows_rwlock_readers_writer_and_waiting_writers,
            inspect_names_the_leader_and_its_term,
            // Bounded waits (issue 13).
            waiters_beyond_the_blocking_limit_still_acquire,
            // Batched renewals (issue 13).
            many_holds_are_renewed_in_batches [Alone],
            one_taken_over_key_of_a_batch_loses_only_its_lease [Alone],
            // Hand-over in one round trip (issue 13).
            hand_over_grants_the_next_local_waiter_in_one_call,
            hand_over_validity_counts_from_the_send [Alone],
            hand_over_to_a_cancelled_waiter_frees_the_key,
            hand_over_grants_nothing_when_the_key_is_not_ours,
            lost_hand_over_reply_leaves_the_waiter_trying,
            an_untaken_grant_wakes_a_waiter_elsewhere,
        );
    };

    // One `#[test]` per check. `$d` is a `$` for the helper macro defined here: its arms compare a
    // check's name with each skipped name (macro_rules cannot compare two idents otherwise).
    (@tests ($setup:expr) ($run:expr) [$($skip:ident)*] ($d:tt) ;
        $($name:ident $([$($need:ident),*])?),* $(,)?) => {
        $(
            // A skipped name must be a check: a typo does not compile.
            #[allow(unused_imports)]
            use $crate::testing::$skip as _;
        )*
        macro_rules! __redlease_conformance_test {
            $(
                ($skip) => {
                    #[test]
                    #[ignore = "skipped by this backend: its store lacks what the check needs"]
                    fn $skip() {
                        $crate::conformance_tests!(@body $skip ($setup) ($run));
                    }
                };
            )*
            ($d check:ident) => {
                #[test]
                fn $d check() {
                    $crate::conformance_tests!(@body $d check ($setup) ($run));
                }
            };
        }
        $(__redlease_conformance_test!($name);)*
    };

    (@body $name:ident ($setup:expr) ($run:expr)) => {
        let check = $crate::testing::Check::named(stringify!($name))
            .expect("every name in the list is a check");
        let _turn = check.take_turn();
        $run(check.run($setup));
    };

    (@all_checks ; $($name:ident $([$($need:ident),*])?),* $(,)?) => {
        /// Every check, in the order [`run_all`] runs them.
        pub fn all_checks() -> Vec<Check> {
            vec![$(Check {
                name: stringify!($name),
                needs: &[$($($crate::testing::Need::$need),*)?],
                run: |backend, probe, key| Box::pin($crate::testing::$name(backend, probe, key)),
            }),*]
        }
    };
}
