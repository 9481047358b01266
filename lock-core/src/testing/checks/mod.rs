//! The checks, one file per subject; [`all_checks`](super::all_checks) lists them in the order they run.

pub(super) mod acquire;
pub(super) mod cancellation;
pub(super) mod contract;
pub(super) mod election;
pub(super) mod fencing;
pub(super) mod guard;
pub(super) mod hold;
pub(super) mod semaphore;
// Fair lock.
pub(super) mod fair;
// Read-write locks.
pub(super) mod rwlock;
// Inspection.
pub(super) mod inspect;
// Bounded waits (issue 13).
pub(super) mod waits;
// Batched renewals (issue 13).
pub(super) mod batch;
// Hand-over in one round trip (issue 13).
pub(super) mod handover;
