//! Time: the lease clock ([`Moment`]), and the duration rules (Redis takes whole milliseconds).
//!
//! Every validity deadline, wait deadline and `max_hold` in the lock algorithm is a [`Moment`] read from
//! the backend's runtime ([`Executor::now`](crate::Executor::now)), never from `std::time::Instant` or
//! the wall clock. The default reads a clock that keeps counting while the machine or VM is suspended
//! (`CLOCK_BOOTTIME` on Linux and Android), because Redis's clock runs on during a suspend: `Instant`
//! (`CLOCK_MONOTONIC`) stops, so a lease measured on it would over-claim after resume. A test or a
//! simulation gives the runtime an executor on virtual time instead.

use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

use crate::error::{LockError, Result};

/// The longest duration accepted anywhere: far beyond any sensible lease, and small enough that Lua's
/// doubles and Redis's expiry arithmetic stay exact.
pub(crate) const MAX_MILLIS: u64 = 1 << 50;

/// Converts `duration` to whole milliseconds, rounding a sub-millisecond remainder up, so that a lock is
/// never held for less than asked. Zero and absurdly long durations are rejected before anything is sent.
pub(crate) fn to_millis(argument: &'static str, duration: Duration) -> Result<u64> {
    if duration.is_zero() {
        return Err(LockError::invalid(
            argument,
            "must be at least 1 ms, got zero",
        ));
    }
    let whole = duration.as_millis();
    let millis = if duration.subsec_nanos().is_multiple_of(1_000_000) {
        whole
    } else {
        whole + 1
    };
    match u64::try_from(millis) {
        Ok(ms) if ms <= MAX_MILLIS => Ok(ms),
        _ => Err(LockError::invalid(
            argument,
            format!("must be at most {MAX_MILLIS} ms, got {duration:?}"),
        )),
    }
}

/// A point in time on the lease clock: a duration since an arbitrary origin, the same for every
/// [`Moment`] of one process (and of one virtual clock under simulation).
///
/// Only differences between moments mean anything. The arithmetic saturates or is checked: it never
/// panics.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Moment(Duration);

impl Moment {
    /// The moment `since_origin` after the clock's origin: for runtimes that keep their own time (a
    /// simulation's virtual clock, say).
    pub const fn from_origin(since_origin: Duration) -> Self {
        Self(since_origin)
    }

    /// How long after the clock's origin this moment is.
    pub const fn since_origin(self) -> Duration {
        self.0
    }

    /// Now, on the default lease clock: `CLOCK_BOOTTIME` where the platform has it (it counts time
    /// spent suspended), the monotonic clock elsewhere.
    pub fn now() -> Self {
        Self(system_clock::since_boot())
    }

    /// `self + duration`, or `None` when that cannot be represented.
    pub fn checked_add(self, duration: Duration) -> Option<Self> {
        self.0.checked_add(duration).map(Self)
    }

    /// How long after `earlier` this moment is; zero when it is not after it.
    pub fn saturating_duration_since(self, earlier: Moment) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl Add<Duration> for Moment {
    type Output = Moment;

    /// Saturating: a moment too far away to represent is the latest representable one.
    fn add(self, duration: Duration) -> Moment {
        Self(self.0.saturating_add(duration))
    }
}

impl Sub<Moment> for Moment {
    type Output = Duration;

    /// Saturating: zero when `earlier` is not before `self`.
    fn sub(self, earlier: Moment) -> Duration {
        self.saturating_duration_since(earlier)
    }
}

impl fmt::Debug for Moment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Moment({:?})", self.0)
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod system_clock {
    use std::time::Duration;

    /// `CLOCK_BOOTTIME`: monotonic, and counting while the system is suspended.
    pub(super) fn since_boot() -> Duration {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        Duration::new(
            u64::try_from(now.tv_sec).unwrap_or(0),
            u32::try_from(now.tv_nsec).unwrap_or(0),
        )
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod system_clock {
    use std::sync::LazyLock;
    use std::time::{Duration, Instant};

    /// The monotonic clock from a process-wide origin (platforms without a suspend-counting clock in
    /// reach: leases there are measured as `Instant` measures, which may stop during a suspend).
    pub(super) fn since_boot() -> Duration {
        static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);
        ORIGIN.elapsed()
    }
}

/// The smallest TTL that leaves any validity after the drift allowance: 3 ms.
pub(crate) const MIN_TTL: Duration = Duration::from_millis(3);

/// Converts a lock TTL to whole milliseconds like [`to_millis`], and refuses one too short to leave any
/// validity after the drift allowance ([`MIN_TTL`]): such a lock would be lost the moment it was granted.
pub(crate) fn ttl_millis(argument: &'static str, ttl: Duration) -> Result<u64> {
    let millis = to_millis(argument, ttl)?;
    if Duration::from_millis(millis) < MIN_TTL {
        return Err(LockError::invalid(
            argument,
            format!(
                "must be at least {MIN_TTL:?} (a shorter TTL leaves no validity after the drift \
                 allowance of 1% plus 2 ms), got {ttl:?}"
            ),
        ));
    }
    Ok(millis)
}

/// How much of a lease's TTL is held back for clock drift between us and the server: 1% plus 2 ms.
pub(crate) fn drift(ttl: Duration) -> Duration {
    ttl / 100 + Duration::from_millis(2)
}

/// The local deadline of a lease granted for `ttl` by a request sent at `sent_at`: measured from before
/// the request left, less the drift allowance, never before `sent_at`.
pub(crate) fn validity_deadline(sent_at: Moment, ttl: Duration) -> Moment {
    sent_at + ttl.saturating_sub(drift(ttl))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_milliseconds_are_kept() {
        assert_eq!(
            to_millis("timeout", Duration::from_millis(1500)).unwrap(),
            1500
        );
        assert_eq!(
            to_millis("timeout", Duration::from_secs_f64(1.5)).unwrap(),
            1500
        );
        assert_eq!(
            to_millis("timeout", Duration::from_secs(30)).unwrap(),
            30_000
        );
    }

    #[test]
    fn sub_millisecond_rounds_up() {
        assert_eq!(to_millis("timeout", Duration::from_nanos(1)).unwrap(), 1);
        assert_eq!(to_millis("timeout", Duration::from_micros(999)).unwrap(), 1);
        assert_eq!(
            to_millis("timeout", Duration::from_micros(1001)).unwrap(),
            2
        );
        assert_eq!(
            to_millis("timeout", Duration::from_micros(1_500_500)).unwrap(),
            1501
        );
    }

    #[test]
    fn zero_is_rejected_by_name() {
        let err = to_millis("extend", Duration::ZERO).unwrap_err();
        assert!(matches!(
            err,
            LockError::InvalidArgument {
                argument: "extend",
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "invalid argument extend: must be at least 1 ms, got zero"
        );
    }

    #[test]
    fn overlong_is_rejected() {
        assert!(to_millis("timeout", Duration::from_millis(MAX_MILLIS)).is_ok());
        let err = to_millis("timeout", Duration::from_millis(MAX_MILLIS + 1)).unwrap_err();
        assert!(matches!(
            err,
            LockError::InvalidArgument {
                argument: "timeout",
                ..
            }
        ));
        assert!(to_millis("timeout", Duration::MAX).is_err());
    }

    #[test]
    fn validity_is_measured_from_the_send_less_drift() {
        let sent = Moment::now();
        let ttl = Duration::from_secs(10);
        assert_eq!(
            validity_deadline(sent, ttl),
            sent + Duration::from_millis(9898)
        );
        // A TTL shorter than the drift leaves no validity at all, and never underflows.
        assert_eq!(validity_deadline(sent, Duration::from_millis(1)), sent);
        assert_eq!(validity_deadline(sent, Duration::from_millis(2)), sent);
        assert!(validity_deadline(sent, MIN_TTL) > sent);
    }

    #[test]
    fn a_ttl_that_leaves_no_validity_is_refused_by_name() {
        for short in [
            Duration::from_millis(1),
            Duration::from_millis(2),
            Duration::from_micros(1500),
        ] {
            let err = ttl_millis("timeout", short).unwrap_err();
            assert!(
                matches!(err, LockError::InvalidArgument { argument: "timeout", ref reason } if reason.contains("at least 3ms")),
                "{short:?}: {err}"
            );
        }
        assert_eq!(ttl_millis("timeout", MIN_TTL).unwrap(), 3);
        assert_eq!(
            ttl_millis("timeout", Duration::from_micros(2001)).unwrap(),
            3
        );
    }

    #[test]
    fn moments_move_forward_and_never_panic() {
        let a = Moment::now();
        let b = Moment::now();
        assert!(b >= a);
        assert_eq!(a - b, Duration::ZERO, "saturating");
        let far = Moment::from_origin(Duration::MAX);
        assert_eq!(far + Duration::from_secs(1), far);
        assert_eq!(far.checked_add(Duration::from_nanos(1)), None);
        assert_eq!(
            Moment::from_origin(Duration::from_secs(3)).since_origin(),
            Duration::from_secs(3)
        );
        assert_eq!(
            format!("{:?}", Moment::from_origin(Duration::from_millis(1500))),
            "Moment(1.5s)"
        );
    }

    /// CLOCK_BOOTTIME and CLOCK_MONOTONIC agree on elapsed time while the machine is not suspended.
    #[test]
    fn the_lease_clock_runs_at_the_monotonic_rate() {
        let (m0, i0) = (Moment::now(), std::time::Instant::now());
        std::thread::sleep(Duration::from_millis(50));
        let (m1, i1) = (Moment::now(), std::time::Instant::now());
        let lease = m1 - m0;
        let mono = i1 - i0;
        assert!(lease >= Duration::from_millis(50), "{lease:?}");
        assert!(
            lease.abs_diff(mono) < Duration::from_millis(5),
            "{lease:?} vs {mono:?}"
        );
    }
}
