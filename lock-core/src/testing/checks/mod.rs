//! The checks, one file per subject; [`all_checks`](super::all_checks) lists them in the order they run.

pub(super) mod acquire;
pub(super) mod cancellation;
pub(super) mod contract;
pub(super) mod election;
pub(super) mod fencing;
pub(super) mod guard;
pub(super) mod hold;
// Read-write locks.
pub(super) mod rwlock;
