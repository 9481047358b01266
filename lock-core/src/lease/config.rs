//! [`LeaseConfig`]: the settings every primitive's builder shares, validated in one place, and the
//! macro that writes their setters and getters once for every builder.

use std::time::Duration;

use crate::backoff::Backoff;
use crate::error::{LockError, Result};
use crate::keys;
use crate::lease::observe::{MetricsName, Observe};
use crate::replication::ReplicaAck;
use crate::time::{to_millis, ttl_millis};

/// The default lease TTL: 30 s.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The default acquisition deadline: 30 s.
pub(crate) const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(30);

/// The settings of a lease, as its builder collected them: nothing is checked until
/// [`validate`](Self::validate), which every primitive calls before it sends anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeaseConfig {
    /// The lease's TTL (the seed's `timeout`).
    pub(crate) timeout: Duration,
    /// How long an acquisition keeps trying; `None` for ever.
    pub(crate) wait_timeout: Option<Duration>,
    /// The pause between attempts.
    pub(crate) backoff: Backoff,
    /// The longest a guard may be held under `hold`.
    pub(crate) max_hold: Option<Duration>,
    /// Whether every acquisition issues a fence.
    pub(crate) fencing: bool,
    /// `replicas(n, replica_wait)`: how many replicas must acknowledge every write, and how long to wait.
    pub(crate) replicas: Option<(usize, Duration)>,
    /// `metrics_name`: the `name` label of this primitive's metrics and the `name` field of its spans.
    pub(crate) metrics_name: Option<MetricsName>,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            wait_timeout: Some(DEFAULT_WAIT_TIMEOUT),
            backoff: Backoff::default(),
            max_hold: None,
            fencing: false,
            replicas: None,
            metrics_name: None,
        }
    }
}

/// What [`LeaseConfig::validate`] worked out, once per acquisition, so that retries redo none of it.
#[derive(Debug, Clone)]
pub(crate) struct ValidatedConfig {
    /// The TTL, whole milliseconds (rounded up).
    pub(crate) ttl: Duration,
    /// The same, as a script argument.
    pub(crate) ttl_arg: String,
    pub(crate) wait_timeout: Option<Duration>,
    pub(crate) backoff: Backoff,
    pub(crate) max_hold: Option<Duration>,
    /// The fence counter beside the key, when fencing.
    pub(crate) fence_counter: Option<String>,
    /// The replica acknowledgement every write waits for, when asked.
    pub(crate) replica_ack: Option<ReplicaAck>,
    /// What this acquisition reports its metrics and spans under; a primitive other than a plain
    /// lock says which it is ([`Observe::for_primitive`]).
    pub(crate) observe: Observe,
}

impl LeaseConfig {
    /// Checks the settings for a lease on `key`: each bad value is [`LockError::InvalidArgument`]
    /// naming it (`key`, `backoff`, `max_hold`, `timeout`, `replica_wait`, `metrics_name`), and nothing
    /// is sent.
    pub(crate) fn validate(&self, key: &str) -> Result<ValidatedConfig> {
        if key.is_empty() {
            return Err(LockError::invalid("key", "must not be empty"));
        }
        self.backoff.validate()?;
        if let Some(max_hold) = self.max_hold {
            to_millis("max_hold", max_hold)?;
        }
        let ttl_ms = ttl_millis("timeout", self.timeout)?;
        if self
            .metrics_name
            .as_ref()
            .is_some_and(|name| name.as_str().is_empty())
        {
            return Err(LockError::invalid("metrics_name", "must not be empty"));
        }
        let fence_counter = match self.fencing {
            true => Some(keys::fence_counter(key)?),
            false => None,
        };
        Ok(ValidatedConfig {
            ttl: Duration::from_millis(ttl_ms),
            ttl_arg: ttl_ms.to_string(),
            wait_timeout: self.wait_timeout,
            backoff: self.backoff,
            max_hold: self.max_hold,
            fence_counter,
            replica_ack: ReplicaAck::validate(self.replicas)?,
            observe: Observe::new(self.metrics_name.clone()),
        })
    }
}

/// Writes the builder methods of the shared lease settings into a builder that has a
/// `config: LeaseConfig` field: each named setting gets its setter (the plain word, taking `self`) and
/// its getter (`get_` and the same word), with the doc text written here once. Doc lines written before
/// a setting's name are added to its setter's docs (what only that primitive needs to say), and
/// `guard = G` names the primitive's guard type in the docs.
///
/// ```text
/// impl RedisLock {
///     lease_settings! {
///         guard = LockGuard;
///         timeout;
///         /// More about fencing on this primitive.
///         fencing;
///     }
/// }
/// ```
///
/// A setting a primitive cannot support (`replicas` on a `Redlock`) is simply not named.
macro_rules! lease_settings {
    (guard = $guard:ident; $( $(#[$extra:meta])* $setting:ident; )*) => {
        $( $crate::lease::lease_settings!(@ $setting, $guard, [$(#[$extra])*]); )*
    };
    (@ timeout, $guard:ident, [$(#[$extra:meta])*]) => {
        /// The lease's TTL: how long Redis keeps the key if the holder neither renews nor releases it.
        /// Kept to the millisecond, rounding up; below 3 ms (which would leave no validity after the
        /// drift allowance) is [`LockError::InvalidArgument`](crate::LockError::InvalidArgument) naming
        /// `timeout` when the lock is used. Default: 30 s.
        $(#[$extra])*
        pub fn timeout(mut self, ttl: ::std::time::Duration) -> Self {
            self.config.timeout = ttl;
            self
        }

        /// The lease's TTL, as set by [`timeout`](Self::timeout).
        pub fn get_timeout(&self) -> ::std::time::Duration {
            self.config.timeout
        }
    };
    (@ wait_timeout, $guard:ident, [$(#[$extra:meta])*]) => {
        /// How long `acquire` keeps trying: `Some(d)` gives up after `d` with
        /// [`LockError::Timeout`](crate::LockError::Timeout) (`Some(Duration::ZERO)` makes exactly one
        /// attempt); `None` waits until the lock is acquired. Default: 30 s.
        $(#[$extra])*
        pub fn wait_timeout(mut self, wait: Option<::std::time::Duration>) -> Self {
            self.config.wait_timeout = wait;
            self
        }

        /// How long `acquire` keeps trying, as set by [`wait_timeout`](Self::wait_timeout).
        pub fn get_wait_timeout(&self) -> Option<::std::time::Duration> {
            self.config.wait_timeout
        }
    };
    (@ backoff, $guard:ident, [$(#[$extra:meta])*]) => {
        /// The retry policy between attempts (default: 2 ms doubling to 100 ms, full jitter).
        $(#[$extra])*
        pub fn backoff(mut self, backoff: $crate::Backoff) -> Self {
            self.config.backoff = backoff;
            self
        }

        /// The retry policy between attempts, as set by [`backoff`](Self::backoff).
        pub fn get_backoff(&self) -> $crate::Backoff {
            self.config.backoff
        }
    };
    (@ max_hold, $guard:ident, [$(#[$extra:meta])*]) => {
        #[doc = concat!(
            "The longest a guard may be held under [`", stringify!($guard), "::hold`] (and so ",
            "[`run`](Self::run)), counted from the acquisition: past it, renewal stops and `hold` ",
            "returns [`LockError::Lost`](crate::LockError::Lost). Bounds a renewal loop that would ",
            "otherwise outlive a hung task. Zero is ",
            "[`LockError::InvalidArgument`](crate::LockError::InvalidArgument) naming `max_hold` when ",
            "the lock is used. Default: no bound.",
        )]
        $(#[$extra])*
        pub fn max_hold(mut self, max_hold: ::std::time::Duration) -> Self {
            self.config.max_hold = Some(max_hold);
            self
        }

        /// The bound set by [`max_hold`](Self::max_hold), if any.
        pub fn get_max_hold(&self) -> Option<::std::time::Duration> {
            self.config.max_hold
        }
    };
    (@ fencing, $guard:ident, [$(#[$extra:meta])*]) => {
        #[doc = concat!(
            "Issue a fencing token with every acquisition ([`", stringify!($guard), "::fence`]): a ",
            "number larger than the fence of every earlier holder of this key, so that a resource can ",
            "refuse writes from a holder whose lock has since passed to someone else. Default: off.",
        )]
        $(#[$extra])*
        pub fn fencing(mut self, enabled: bool) -> Self {
            self.config.fencing = enabled;
            self
        }

        /// Whether acquisitions issue a fence, as set by [`fencing`](Self::fencing).
        pub fn get_fencing(&self) -> bool {
            self.config.fencing
        }
    };
    (@ metrics_name, $guard:ident, [$(#[$extra:meta])*]) => {
        /// Adds the label `name="<name>"` to this primitive's metrics (feature `metrics`), and the
        /// field `name` to its spans: a name the application chooses for a family of keys
        /// (`"orders"` for every `order:<id>` lock), since lock keys are never a label (they are
        /// unbounded). Keep the set of names small. An empty name is
        /// [`LockError::InvalidArgument`](crate::LockError::InvalidArgument) naming `metrics_name`
        /// when the primitive is used. Default: none.
        $(#[$extra])*
        pub fn metrics_name(mut self, name: impl Into<String>) -> Self {
            self.config.metrics_name = Some($crate::lease::observe::MetricsName::new(name.into()));
            self
        }

        /// The name set by [`metrics_name`](Self::metrics_name), if any.
        pub fn get_metrics_name(&self) -> Option<&str> {
            self.config.metrics_name.as_ref().map(|name| name.as_str())
        }
    };
    (@ replicas, $guard:ident, [$(#[$extra:meta])*]) => {
        /// Count a write to the lock (acquiring, `renew`, `extend`) only once `replicas` replicas have
        /// acknowledged it, waiting up to `replica_wait` for them (Redis `WAIT replicas replica_wait`,
        /// on the connection that wrote). `replicas(0, _)` turns it off (the default). A zero
        /// `replica_wait` (`WAIT` would block forever) is
        /// [`LockError::InvalidArgument`](crate::LockError::InvalidArgument) naming `replica_wait` when
        /// the lock is used; it is kept to the millisecond, rounding up.
        $(#[$extra])*
        pub fn replicas(mut self, replicas: usize, replica_wait: ::std::time::Duration) -> Self {
            self.config.replicas = Some((replicas, replica_wait));
            self
        }

        /// The replica acknowledgement set by [`replicas`](Self::replicas): how many replicas, and
        /// how long each write waits for them; `None` when never set.
        pub fn get_replicas(&self) -> Option<(usize, ::std::time::Duration)> {
            self.config.replicas
        }
    };
}

pub(crate) use lease_settings;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_each_bad_setting() {
        let named = |config: LeaseConfig, key: &str| match config.validate(key) {
            Err(LockError::InvalidArgument { argument, .. }) => argument,
            other => panic!("expected InvalidArgument, got {other:?}"),
        };
        let base = LeaseConfig::default();
        assert_eq!(named(base.clone(), ""), "key");
        let zero_backoff = Backoff::new(Duration::ZERO, Duration::from_millis(1));
        assert_eq!(
            named(
                LeaseConfig {
                    backoff: zero_backoff,
                    ..base.clone()
                },
                "k"
            ),
            "backoff"
        );
        assert_eq!(
            named(
                LeaseConfig {
                    max_hold: Some(Duration::ZERO),
                    ..base.clone()
                },
                "k"
            ),
            "max_hold"
        );
        assert_eq!(
            named(
                LeaseConfig {
                    timeout: Duration::from_millis(2),
                    ..base.clone()
                },
                "k"
            ),
            "timeout"
        );
        assert_eq!(
            named(
                LeaseConfig {
                    replicas: Some((1, Duration::ZERO)),
                    ..base.clone()
                },
                "k"
            ),
            "replica_wait"
        );
        assert_eq!(
            named(
                LeaseConfig {
                    metrics_name: Some(MetricsName::new(String::new())),
                    ..base
                },
                "k"
            ),
            "metrics_name"
        );
    }

    #[test]
    fn validate_rounds_the_ttl_up_and_derives_the_fence_counter() {
        let config = LeaseConfig {
            timeout: Duration::from_micros(2_500_001),
            fencing: true,
            replicas: Some((0, Duration::ZERO)),
            ..LeaseConfig::default()
        };
        let valid = config.validate("{user:1}:lock").unwrap();
        assert_eq!(valid.ttl, Duration::from_millis(2501));
        assert_eq!(valid.ttl_arg, "2501");
        assert_eq!(
            valid.fence_counter.as_deref(),
            Some("{user:1}:lock:redlease:fence")
        );
        assert!(valid.replica_ack.is_none(), "replicas(0, _) is off");
        assert!(
            LeaseConfig::default()
                .validate("k")
                .unwrap()
                .fence_counter
                .is_none()
        );
    }
}
