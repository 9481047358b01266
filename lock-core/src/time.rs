//! Duration rules: Redis takes whole milliseconds, and local validity is measured on the monotonic clock.

use std::time::{Duration, Instant};

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

/// How much of a lease's TTL is held back for clock drift between us and the server: 1% plus 2 ms.
pub(crate) fn drift(ttl: Duration) -> Duration {
    ttl / 100 + Duration::from_millis(2)
}

/// The local deadline of a lease granted for `ttl` by a request sent at `sent_at`: measured from before
/// the request left, less the drift allowance, never before `sent_at`.
pub(crate) fn validity_deadline(sent_at: Instant, ttl: Duration) -> Instant {
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
        let sent = Instant::now();
        let ttl = Duration::from_secs(10);
        assert_eq!(
            validity_deadline(sent, ttl),
            sent + Duration::from_millis(9898)
        );
        // A TTL shorter than the drift leaves no validity at all, and never underflows.
        assert_eq!(validity_deadline(sent, Duration::from_millis(1)), sent);
    }
}
