//! Translating fred's replies and errors into lock-core's types.

use fred::error::{Error, ErrorKind};
use fred::types::Value;
use lock_core::{BackendError, ScriptValue};

use crate::BACKEND;

/// Server error codes after which trying again later may succeed: the server is loading its data, a
/// multi-key operation met a slot being migrated, a replica lost its primary, the cluster is down, the
/// node was demoted to a replica by a failover, or a long script is still running.
const TRANSIENT_CODES: &[&str] = &[
    "LOADING",
    "TRYAGAIN",
    "MASTERDOWN",
    "CLUSTERDOWN",
    "READONLY",
    "BUSY",
];

/// Whether `error` is the server's `NOSCRIPT` reply to an `EVALSHA` whose script is not cached.
///
/// fred parses error replies in `protocol::utils::pretty_error`: only a few codes get a specific kind,
/// `NOSCRIPT` falls through to `ErrorKind::Unknown` with the whole reply as details, which is what fred's
/// own `Script::evalsha_with_reload` tests too.
pub(crate) fn is_noscript(error: &Error) -> bool {
    error_code(error) == Some("NOSCRIPT")
}

/// Whether `error` is fred giving up on a command because it met more cluster redirections than its
/// `max_redirections` allowed (`Command::decr_check_redirections` in src/protocol/command.rs). The command
/// did not run: each redirection is a `MOVED` or `ASK` reply instead of a result.
/// `TRYAGAIN`: a multi-key command reached a slot in mid-migration while its keys were split between
/// the two nodes. It did not run, and may be sent again shortly.
pub(crate) fn is_try_again(error: &Error) -> bool {
    error_code(error) == Some("TRYAGAIN")
}

pub(crate) fn is_redirection_limit(error: &Error) -> bool {
    *error.kind() == ErrorKind::Routing && error.details() == "Too many redirections."
}

/// The error code of a server error reply (its first word, all capitals), if `error` looks like one.
fn error_code(error: &Error) -> Option<&str> {
    let first = error.details().split_whitespace().next()?;
    let is_code = first
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    is_code.then_some(first)
}

/// Whether trying the call again later may succeed.
pub(crate) fn is_transient(error: &Error) -> bool {
    if error_code(error).is_some_and(|code| TRANSIENT_CODES.contains(&code)) {
        return true;
    }
    match error.kind() {
        // Connection failures, commands canceled by a closing connection or exhausted reconnection,
        // fred's own timeouts and its in-flight limit.
        ErrorKind::IO | ErrorKind::Canceled | ErrorKind::Timeout | ErrorKind::Backpressure => true,
        // No route to a server right now, or too many redirections while slots move.
        ErrorKind::Routing => true,
        // MOVED / ASK / CLUSTERDOWN surfaced to the caller, or a slot without a known owner; but keys in
        // different slots will never work.
        ErrorKind::Cluster => !error.details().contains("same cluster node"),
        // fred gives up writing a command after its write attempts were used up by reconnections.
        ErrorKind::Unknown => error
            .details()
            .starts_with("Too many failed write attempts"),
        _ => false,
    }
}

/// A fred error as a [`BackendError`], keeping the error as the source.
pub(crate) fn backend_error(error: Error) -> BackendError {
    if is_transient(&error) {
        BackendError::transient(BACKEND, error)
    } else {
        BackendError::permanent(BACKEND, error)
    }
}

/// An unexpected reply shape, as a permanent error.
fn unexpected(what: &str, value: &Value) -> BackendError {
    BackendError::permanent(
        BACKEND,
        format!("unexpected {what} reply of type {}", value.kind()),
    )
}

/// The reply to `SET key value NX PX ms GET`: nil when we set the key, else the value it held.
pub(crate) fn set_nx_reply(reply: Value, value: &str) -> Result<bool, BackendError> {
    match reply {
        Value::Null => Ok(true),
        Value::String(held) => Ok(&*held == value),
        Value::Bytes(held) => Ok(held == value.as_bytes()),
        other => Err(unexpected("SET NX GET", &other)),
    }
}

/// The reply to `WAIT`: how many replicas acknowledged.
pub(crate) fn wait_reply(reply: Value) -> Result<usize, BackendError> {
    match reply {
        Value::Integer(n) => Ok(usize::try_from(n).unwrap_or(0)),
        other => Err(unexpected("WAIT", &other)),
    }
}

/// A script's reply as a [`ScriptValue`].
///
/// RESP2 replies map directly. Under RESP3, Lua booleans arrive as booleans and are mapped the way RESP2
/// would deliver them (`false` to nil, `true` to 1); doubles become strings and maps flat arrays of
/// key, value pairs.
pub(crate) fn script_value(reply: Value) -> Result<ScriptValue, BackendError> {
    Ok(match reply {
        Value::Null | Value::Boolean(false) => ScriptValue::Nil,
        Value::Boolean(true) => ScriptValue::Int(1),
        Value::Integer(n) => ScriptValue::Int(n),
        Value::Double(f) => ScriptValue::Str(f.to_string()),
        Value::String(s) => ScriptValue::Str(s.to_string()),
        Value::Bytes(bytes) => match String::from_utf8(bytes.to_vec()) {
            Ok(s) => ScriptValue::Str(s),
            Err(_) => {
                return Err(BackendError::permanent(
                    BACKEND,
                    "script replied with a string that is not UTF-8",
                ));
            }
        },
        Value::Array(items) => ScriptValue::Array(
            items
                .into_iter()
                .map(script_value)
                .collect::<Result<_, _>>()?,
        ),
        Value::Map(map) => {
            let mut items = Vec::with_capacity(map.len() * 2);
            for (key, value) in map.inner() {
                let key = key.into_string().ok_or_else(|| {
                    BackendError::permanent(
                        BACKEND,
                        "script replied with a map key that is not UTF-8",
                    )
                })?;
                items.push(ScriptValue::Str(key));
                items.push(script_value(value)?);
            }
            ScriptValue::Array(items)
        }
        other => return Err(unexpected("script", &other)),
    })
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    fn err(kind: ErrorKind, details: &'static str) -> Error {
        Error::new(kind, details)
    }

    #[test]
    fn noscript_is_recognised_from_the_server_reply() {
        assert!(is_noscript(&err(
            ErrorKind::Unknown,
            "NOSCRIPT No matching script. Please use EVAL."
        )));
        assert!(!is_noscript(&err(ErrorKind::Unknown, "ERR NOSCRIPT")));
        assert!(!is_noscript(&err(ErrorKind::IO, "")));
    }

    #[test]
    fn redirection_limits_are_recognised() {
        assert!(is_redirection_limit(&err(
            ErrorKind::Routing,
            "Too many redirections."
        )));
        assert!(!is_redirection_limit(&err(
            ErrorKind::Routing,
            "Max attempts reached."
        )));
        assert!(!is_redirection_limit(&err(
            ErrorKind::Unknown,
            "Too many redirections."
        )));
    }

    #[test]
    fn transient_failures() {
        for (kind, details) in [
            (ErrorKind::IO, "Connection closed."),
            (ErrorKind::Canceled, "Connection closed unexpectedly."),
            (ErrorKind::Canceled, "Max reconnection attempts reached."),
            (ErrorKind::Timeout, "Request timed out."),
            (
                ErrorKind::Unknown,
                "LOADING Redis is loading the dataset in memory",
            ),
            (
                ErrorKind::Unknown,
                "TRYAGAIN Multiple keys request during rehashing of slot",
            ),
            (ErrorKind::Unknown, "MASTERDOWN Link with MASTER is down"),
            (ErrorKind::Cluster, "CLUSTERDOWN The cluster is down"),
            (
                ErrorKind::Unknown,
                "READONLY You can't write against a read only replica.",
            ),
            (ErrorKind::Unknown, "BUSY Redis is busy running a script."),
            (ErrorKind::Unknown, "Too many failed write attempts."),
            (ErrorKind::Routing, "Unable to route command or reconnect."),
        ] {
            let error = backend_error(err(kind.clone(), details));
            assert!(error.is_transient(), "{kind:?} {details}");
            assert_eq!(error.backend(), "fred");
            assert!(error.source().unwrap().to_string().contains(details));
        }
    }

    #[test]
    fn permanent_failures() {
        for (kind, details) in [
            (
                ErrorKind::Unknown,
                "ERR Error running script (call to f_0123): @user_script:1: ...",
            ),
            (
                ErrorKind::InvalidArgument,
                "WRONGTYPE Operation against a key holding the wrong kind of value",
            ),
            (ErrorKind::Unknown, "ERR syntax error"),
            (ErrorKind::Auth, "NOAUTH Authentication required."),
            (ErrorKind::Unknown, "Client is not initialized."),
            (
                ErrorKind::Cluster,
                "All keys must belong to the same cluster node.",
            ),
            (
                ErrorKind::Unknown,
                "CROSSSLOT Keys in request don't hash to the same slot",
            ),
        ] {
            let error = backend_error(err(kind.clone(), details));
            assert!(!error.is_transient(), "{kind:?} {details}");
            assert_eq!(error.backend(), "fred");
        }
    }

    #[test]
    fn set_nx_replies() {
        assert!(set_nx_reply(Value::Null, "t").unwrap());
        assert!(set_nx_reply(Value::String("t".into()), "t").unwrap());
        assert!(!set_nx_reply(Value::String("other".into()), "t").unwrap());
        assert!(set_nx_reply(Value::Bytes("t".into()), "t").unwrap());
        assert!(
            !set_nx_reply(Value::Integer(1), "t")
                .unwrap_err()
                .is_transient()
        );
    }

    #[test]
    fn script_values() {
        let reply = Value::Array(vec![
            Value::Integer(1),
            Value::String("a".into()),
            Value::Null,
            Value::Boolean(false),
            Value::Boolean(true),
            Value::Array(vec![]),
        ]);
        assert_eq!(
            script_value(reply).unwrap(),
            ScriptValue::Array(vec![
                ScriptValue::Int(1),
                ScriptValue::Str("a".into()),
                ScriptValue::Nil,
                ScriptValue::Nil,
                ScriptValue::Int(1),
                ScriptValue::Array(vec![]),
            ])
        );
        assert!(script_value(Value::Bytes(vec![0xff].into())).is_err());
        assert!(script_value(Value::Queued).is_err());
    }
}
