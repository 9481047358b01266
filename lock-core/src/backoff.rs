//! How long to wait between acquisition attempts: exponential, capped, with full jitter.

use std::time::Duration;

use crate::error::{LockError, Result};

/// Retry policy between acquisition attempts.
///
/// Attempt `n` sleeps a uniformly random duration in `[0, min(max, initial * 2^n)]` ("full jitter"), so
/// contenders spread out instead of polling in lock-step, and a waiter still retries soon after a short
/// hold. The sleep never runs past the acquisition deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Backoff {
    /// A policy whose first ceiling is `initial`, doubling up to `max`.
    ///
    /// Checked when a lock uses it: `initial` must be non-zero and `max` at least `initial`.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max }
    }

    /// The first ceiling.
    pub fn initial(&self) -> Duration {
        self.initial
    }

    /// The largest ceiling.
    pub fn max(&self) -> Duration {
        self.max
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.initial.is_zero() {
            return Err(LockError::invalid(
                "backoff",
                "initial delay must be non-zero",
            ));
        }
        if self.max < self.initial {
            return Err(LockError::invalid(
                "backoff",
                format!(
                    "max delay {:?} is below the initial delay {:?}",
                    self.max, self.initial
                ),
            ));
        }
        Ok(())
    }

    /// The ceiling for attempt `attempt` (0-based): `initial * 2^attempt`, capped at `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// A random delay for attempt `attempt`, uniform in `[0, ceiling(attempt)]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(fastrand::u64(0..=nanos))
    }
}

impl Default for Backoff {
    /// 2 ms doubling to 100 ms.
    fn default() -> Self {
        Self::new(Duration::from_millis(2), Duration::from_millis(100))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_and_caps() {
        let b = Backoff::new(Duration::from_millis(2), Duration::from_millis(100));
        let ceilings: Vec<u128> = (0..8).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [2, 4, 8, 16, 32, 64, 100, 100]);
        assert_eq!(b.ceiling(u32::MAX), Duration::from_millis(100));
    }

    #[test]
    fn delay_is_jittered_within_the_ceiling() {
        let b = Backoff::new(Duration::from_millis(10), Duration::from_millis(80));
        let delays: Vec<Duration> = (0..2000).map(|_| b.delay(5)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(80)));
        // Full jitter: spread across the whole range, not clustered at the ceiling.
        assert!(delays.iter().any(|d| *d < Duration::from_millis(20)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(60)));
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 1000, "delays must not repeat in lock-step");
    }

    #[test]
    fn invalid_policies_are_named() {
        let zero = Backoff::new(Duration::ZERO, Duration::from_millis(1));
        assert!(matches!(
            zero.validate(),
            Err(LockError::InvalidArgument {
                argument: "backoff",
                ..
            })
        ));
        let inverted = Backoff::new(Duration::from_millis(5), Duration::from_millis(1));
        assert!(inverted.validate().is_err());
        assert!(Backoff::default().validate().is_ok());
    }
}
