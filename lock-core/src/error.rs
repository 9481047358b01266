//! [`LockError`], the one error type of every lock operation.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

/// The result of a lock operation.
pub type Result<T, E = LockError> = std::result::Result<T, E>;

/// Why a lock operation failed.
///
/// A lock held by someone else is not an error: `try_acquire` answers `Ok(None)`, and the guard's methods
/// answer `Ok(false)` when the lock is no longer ours. Errors are for bad input, transport or server
/// failures, running out of time, and losing a lock while work depended on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// The lock was not acquired before the wait deadline.
    #[error("timed out after {waited:?} waiting to acquire lock {key}")]
    Timeout {
        /// The lock key, exactly as given.
        key: String,
        /// How long acquisition was attempted.
        waited: Duration,
    },

    /// The backend failed: a connection, timeout or server error.
    #[error(
        "backend {backend} failed on lock {key}: {what} ({kind})",
        backend = source.backend(),
        what = source.what(),
        kind = if source.is_transient() { "transient" } else { "permanent" }
    )]
    Backend {
        /// The lock key the operation was for.
        key: String,
        /// The backend's error, which names the backend and says whether it is transient.
        #[source]
        source: BackendError,
    },

    /// An argument was rejected before anything was sent to Redis.
    #[error("invalid argument {argument}: {reason}")]
    InvalidArgument {
        /// Which argument was wrong, such as `"timeout"` or `"key"`.
        argument: &'static str,
        /// What was wrong with it.
        reason: String,
    },

    /// The lock was lost while work depended on it: it expired or was taken over, so exclusion was not
    /// guaranteed.
    #[error("lock {key} was lost: {reason}")]
    Lost {
        /// The lock key.
        key: String,
        /// How it was lost.
        reason: String,
    },

    /// A request was sent, but whether Redis applied it cannot be told: it may have been applied, and a
    /// request that timed out may even be applied later. Never reported as "not applied".
    ///
    /// Answered by [`LockGuard::release`](crate::LockGuard::release) when the key was gone while the
    /// guard's validity had not run out (a re-sent release of ours, or a server that lost the key), and
    /// by [`LockGuard::fenced_set`](crate::LockGuard::fenced_set) when its request failed in transit.
    /// Retrying is safe for both: a release is token-checked, and `fenced_set` accepts a repeat from
    /// the same holder with the same fence.
    #[error("outcome of {operation} on lock {key} is unknown: {reason}")]
    InDoubt {
        /// The lock key.
        key: String,
        /// Which operation, such as `"release"` or `"fenced_set"`.
        operation: &'static str,
        /// Why the outcome is unknown.
        reason: String,
        /// The backend failure that left it unknown, if one did.
        #[source]
        source: Option<BackendError>,
    },

    /// Fewer replicas than asked acknowledged a write to the lock (`WAIT`), so a failover could lose it.
    /// An acquisition that was not replicated is released again.
    #[error("lock {key} reached {acked} of the {wanted} replicas asked for")]
    NotReplicated {
        /// The lock key.
        key: String,
        /// How many replicas were asked to acknowledge.
        wanted: usize,
        /// How many did before the timeout.
        acked: usize,
    },

    /// A quorum of independent masters could not be reached because nodes failed (Redlock).
    #[error(
        "lock {key} got {votes} of the {needed} votes needed; failed nodes: {}",
        list_node_errors(errors)
    )]
    Quorum {
        /// The lock key.
        key: String,
        /// How many nodes agreed.
        votes: usize,
        /// How many were needed (a majority).
        needed: usize,
        /// Each failed node, by its index in the node list, with its cause.
        errors: Vec<NodeError>,
    },

    /// The clocks of two Redlock masters disagree by more than fencing allows
    /// ([`Redlock::MAX_CLOCK_SKEW`](crate::Redlock::MAX_CLOCK_SKEW)), so a fence could later go
    /// backwards: the round was refused and its partial locks released. Transient, in that it passes
    /// once the masters' clocks agree again (fix their time synchronisation); see
    /// [Fencing across masters](crate::redlock#fencing-across-masters).
    #[error(
        "lock {key}: the clocks of masters {ahead} and {behind} differ by {skew:?}, more than the {bound:?} fencing allows"
    )]
    ClockSkew {
        /// The lock key.
        key: String,
        /// The master whose clock is ahead, by its index in the node list.
        ahead: usize,
        /// The master whose clock is behind, by its index in the node list.
        behind: usize,
        /// By how much they differ at least (the difference of their clocks, less the time the round
        /// took, which could explain part of it).
        skew: Duration,
        /// The largest difference allowed.
        bound: Duration,
    },
}

/// One node's failure in a quorum operation.
#[derive(Debug)]
pub struct NodeError {
    /// The node's index in the list the lock was built with.
    pub node: usize,
    /// What went wrong there.
    pub error: BackendError,
}

fn list_node_errors(errors: &[NodeError]) -> String {
    let mut text = String::new();
    for (i, NodeError { node, error }) in errors.iter().enumerate() {
        if i > 0 {
            text.push_str("; ");
        }
        text.push_str(&format!("node {node}: {error}"));
        let mut cause = std::error::Error::source(error);
        while let Some(inner) = cause {
            text.push_str(&format!(": {inner}"));
            cause = inner.source();
        }
    }
    text
}

impl LockError {
    /// Whether trying the operation again later may succeed: timeouts and transient backend failures.
    pub fn is_transient(&self) -> bool {
        match self {
            LockError::Timeout { .. } => true,
            LockError::Backend { source, .. } => source.is_transient(),
            LockError::NotReplicated { .. } | LockError::InDoubt { .. } => true,
            LockError::Quorum { errors, .. } => errors.iter().all(|e| e.error.is_transient()),
            LockError::ClockSkew { .. } => true,
            LockError::InvalidArgument { .. } | LockError::Lost { .. } => false,
        }
    }

    /// The name of the backend that failed, for [`LockError::Backend`].
    pub fn backend(&self) -> Option<&'static str> {
        match self {
            LockError::Backend { source, .. } => Some(source.backend()),
            LockError::InDoubt {
                source: Some(source),
                ..
            } => Some(source.backend()),
            _ => None,
        }
    }

    pub(crate) fn invalid(argument: &'static str, reason: impl Into<String>) -> Self {
        LockError::InvalidArgument {
            argument,
            reason: reason.into(),
        }
    }

    pub(crate) fn backend_failed(key: &str, source: BackendError) -> Self {
        LockError::Backend {
            key: key.to_owned(),
            source,
        }
    }
}

/// A failure reported by a backend: which backend, whether trying again may help, and the cause.
#[derive(Debug)]
pub struct BackendError {
    backend: &'static str,
    transient: bool,
    source: Box<dyn StdError + Send + Sync + 'static>,
    /// What happened, in a word or two (see [`BackendError::describe`]).
    what: Option<&'static str>,
}

impl BackendError {
    /// A failure that may pass on its own: a dropped connection, a timeout, a server loading or failing
    /// over.
    pub fn transient(
        backend: &'static str,
        source: impl Into<Box<dyn StdError + Send + Sync + 'static>>,
    ) -> Self {
        Self {
            backend,
            transient: true,
            source: source.into(),
            what: None,
        }
    }

    /// A failure that trying again will not fix: a script error, a wrong type, a refused command.
    pub fn permanent(
        backend: &'static str,
        source: impl Into<Box<dyn StdError + Send + Sync + 'static>>,
    ) -> Self {
        Self {
            backend,
            transient: false,
            source: source.into(),
            what: None,
        }
    }

    /// The call did not complete within the backend's per-call bound.
    pub fn timed_out(backend: &'static str, bound: Duration) -> Self {
        Self::transient(backend, CallTimedOut(bound))
    }

    /// Says what happened in a word or two, such as `"connection refused"`, `"timed out"` or
    /// `"server error"`: the end of [`LockError::Backend`]'s message, which never repeats the cause
    /// (the cause stays the [`source`](StdError::source)). Adapters set it where they know; otherwise
    /// [`what`](Self::what) reads it from the cause.
    #[must_use]
    pub fn describe(mut self, what: &'static str) -> Self {
        self.what = Some(what);
        self
    }

    /// What happened, in a word or two: as [`describe`](Self::describe) set it, otherwise read from
    /// the cause (a call timeout, an I/O error's kind), otherwise `"failed"`.
    pub fn what(&self) -> &'static str {
        if let Some(what) = self.what {
            return what;
        }
        let mut cause: Option<&(dyn StdError + 'static)> = Some(self.source.as_ref());
        while let Some(error) = cause {
            if error.is::<CallTimedOut>() {
                return "timed out";
            }
            if let Some(io) = error.downcast_ref::<std::io::Error>() {
                return io_what(io.kind());
            }
            cause = error.source();
        }
        "failed"
    }

    /// The backend's name, such as `"fred"` or `"deadpool"`.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        self.transient
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.transient {
            "transient"
        } else {
            "permanent"
        };
        write!(f, "{kind} failure in backend {}", self.backend)
    }
}

impl StdError for BackendError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(self.source.as_ref())
    }
}

/// An I/O error's kind in a word or two.
fn io_what(kind: std::io::ErrorKind) -> &'static str {
    use std::io::ErrorKind::*;
    match kind {
        ConnectionRefused => "connection refused",
        TimedOut | WouldBlock => "timed out",
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof | NotConnected => {
            "connection lost"
        }
        _ => "connection failed",
    }
}

/// The cause of [`BackendError::timed_out`].
#[derive(Debug, thiserror::Error)]
#[error("no reply within {0:?}")]
struct CallTimedOut(Duration);

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn messages_are_lowercase_and_name_the_key() {
        let err = LockError::Timeout {
            key: "jobs:{42}:nightly".into(),
            waited: Duration::from_millis(1500),
        };
        assert_eq!(
            err.to_string(),
            "timed out after 1.5s waiting to acquire lock jobs:{42}:nightly"
        );
        assert!(err.is_transient());

        let err = LockError::Lost {
            key: "k".into(),
            reason: "the key expired".into(),
        };
        assert_eq!(err.to_string(), "lock k was lost: the key expired");
        assert!(!err.is_transient());

        let err = LockError::invalid("timeout", "must be at least 1 ms");
        assert_eq!(
            err.to_string(),
            "invalid argument timeout: must be at least 1 ms"
        );
    }

    #[test]
    fn quorum_and_replication_messages_list_what_failed() {
        let err = LockError::Quorum {
            key: "k".into(),
            votes: 2,
            needed: 3,
            errors: vec![
                NodeError {
                    node: 1,
                    error: BackendError::transient("fred", "connection refused"),
                },
                NodeError {
                    node: 4,
                    error: BackendError::timed_out("deadpool", Duration::from_millis(50)),
                },
            ],
        };
        assert_eq!(
            err.to_string(),
            "lock k got 2 of the 3 votes needed; failed nodes: node 1: transient failure in backend \
             fred: connection refused; node 4: transient failure in backend deadpool: no reply within 50ms"
        );
        assert!(err.is_transient());
        let err = LockError::NotReplicated {
            key: "k".into(),
            wanted: 2,
            acked: 1,
        };
        assert_eq!(
            err.to_string(),
            "lock k reached 1 of the 2 replicas asked for"
        );
    }

    #[test]
    fn backend_errors_chain_their_cause() {
        let err =
            LockError::backend_failed("k", BackendError::transient("fred", "connection reset"));
        assert_eq!(
            err.to_string(),
            "backend fred failed on lock k: failed (transient)"
        );
        assert_eq!(err.backend(), Some("fred"));
        assert!(err.is_transient());
        let cause = err.source().unwrap();
        assert_eq!(cause.to_string(), "transient failure in backend fred");
        assert_eq!(cause.source().unwrap().to_string(), "connection reset");
    }

    #[test]
    fn the_top_line_says_what_happened_without_the_cause() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "os error 111");
        let err = LockError::backend_failed("k", BackendError::transient("deadpool", refused));
        assert_eq!(
            err.to_string(),
            "backend deadpool failed on lock k: connection refused (transient)"
        );
        assert!(
            !err.to_string().contains("os error"),
            "the cause is not repeated"
        );
        let err =
            LockError::backend_failed("k", BackendError::timed_out("fred", Duration::from_secs(5)));
        assert_eq!(
            err.to_string(),
            "backend fred failed on lock k: timed out (transient)"
        );
        let err = LockError::backend_failed(
            "k",
            BackendError::permanent("fred", "ERR boom").describe("server error"),
        );
        assert_eq!(
            err.to_string(),
            "backend fred failed on lock k: server error (permanent)"
        );
        assert_eq!(
            err.source().unwrap().source().unwrap().to_string(),
            "ERR boom"
        );
    }
}
