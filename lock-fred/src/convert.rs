//! Translating between lock-core's types and fred's: commands, replies and errors.

use std::future::Future;
use std::time::{Duration, Instant};

use fred::error::{Error, ErrorKind};
use fred::types::{ClusterHash, CustomCommand, Value};
use lock_core::adapter::{self, Arg, Command};
use lock_core::{BackendError, ScriptValue};

use crate::BACKEND;

/// `command` as a fred custom command routed by `hash`, and its arguments. `blocking` tells fred that
/// the command blocks its connection on the server.
pub(crate) fn custom(
    command: Command<'_>,
    hash: ClusterHash,
    blocking: bool,
) -> (CustomCommand, Vec<Value>) {
    let arguments = command
        .args
        .into_iter()
        .map(|arg| match arg {
            Arg::Text(text) => Value::from(text.as_ref()),
            Arg::Int(n) => Value::from(n),
        })
        .collect();
    (
        CustomCommand::new_static(command.name, hash, blocking),
        arguments,
    )
}

/// Runs `call` within `bound`, mapping its errors.
pub(crate) async fn bounded_by<T>(
    bound: Duration,
    call: impl Future<Output = Result<T, Error>>,
) -> Result<T, BackendError> {
    let started = Instant::now();
    match tokio::time::timeout(bound, call).await {
        Ok(Ok(reply)) => Ok(reply),
        // fred's own per-command timeout, set to the same bound: report it like ours.
        Ok(Err(error)) if *error.kind() == ErrorKind::Timeout && started.elapsed() >= bound => {
            Err(BackendError::timed_out(BACKEND, bound))
        }
        Ok(Err(error)) => Err(backend_error(error)),
        Err(_elapsed) => Err(BackendError::timed_out(BACKEND, bound)),
    }
}

/// The error of a client that is disconnected and has no reconnect policy.
#[derive(Debug)]
pub(crate) struct NotReconnecting;

impl std::fmt::Display for NotReconnecting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "the fred client has no reconnect policy, so once its connection drops (a server \
             restart, a failover) it never reconnects: build it with `Builder::set_policy(ReconnectPolicy::new_exponential(0, 100, 30_000, 2))` \
             (and call `init()` once), as the lock-fred docs show",
        )
    }
}

impl std::error::Error for NotReconnecting {}

/// Whether `error` is the server's `NOSCRIPT` reply to an `EVALSHA` whose script is not cached.
///
/// fred parses error replies in `protocol::utils::pretty_error`: only a few codes get a specific kind,
/// `NOSCRIPT` falls through to `ErrorKind::Unknown` with the whole reply as details, which is what fred's
/// own `Script::evalsha_with_reload` tests too.
pub(crate) fn is_noscript(error: &Error) -> bool {
    adapter::error_code(error.details()) == Some(adapter::NOSCRIPT)
}

/// `TRYAGAIN`: a multi-key command reached a slot in mid-migration while its keys were split between
/// the two nodes. It did not run, and may be sent again shortly.
pub(crate) fn is_try_again(error: &Error) -> bool {
    adapter::error_code(error.details()) == Some("TRYAGAIN")
}

/// Whether `error` is fred giving up on a command because it met more cluster redirections than its
/// `max_redirections` allowed (`Command::decr_check_redirections` in src/protocol/command.rs). The command
/// did not run: each redirection is a `MOVED` or `ASK` reply instead of a result.
pub(crate) fn is_redirection_limit(error: &Error) -> bool {
    *error.kind() == ErrorKind::Routing && error.details() == "Too many redirections."
}

/// Whether trying the call again later may succeed.
pub(crate) fn is_transient(error: &Error) -> bool {
    // fred parses only a few server error codes into a kind of its own: read the code from the text.
    if adapter::error_code(error.details()).is_some_and(adapter::is_transient_code) {
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
    let what = what(&error);
    adapter::backend_error(BACKEND, is_transient(&error), error).describe(what)
}

/// What happened, in a word or two, for the top line of the error. fred keeps an I/O error as its
/// text only, so a refusal is read from that text.
fn what(error: &Error) -> &'static str {
    if adapter::error_code(error.details()).is_some() {
        return "server error";
    }
    match error.kind() {
        ErrorKind::IO if error.details().contains("refused") => "connection refused",
        ErrorKind::IO => "connection failed",
        ErrorKind::Timeout => "timed out",
        ErrorKind::Canceled => "connection lost",
        ErrorKind::Auth => "authentication failed",
        ErrorKind::Routing | ErrorKind::Cluster => "no route to the key's server",
        _ => "failed",
    }
}

/// An unexpected reply shape, as a permanent error.
fn unexpected(command: &str, value: &Value) -> BackendError {
    adapter::unexpected_reply(BACKEND, command, value)
}

/// The reply to `SET key value NX PX ms GET`: nil when we set the key, else the value it held.
pub(crate) fn set_nx_reply(reply: Value, value: &str) -> Result<bool, BackendError> {
    match reply {
        Value::Null => Ok(adapter::set_nx_outcome(None, value)),
        Value::String(held) => Ok(adapter::set_nx_outcome(Some(held.as_bytes()), value)),
        Value::Bytes(held) => Ok(adapter::set_nx_outcome(Some(&held), value)),
        other => Err(unexpected("SET NX GET", &other)),
    }
}

/// The reply to `WAIT`: how many replicas acknowledged.
pub(crate) fn wait_reply(reply: Value) -> Result<usize, BackendError> {
    match reply {
        Value::Integer(n) => Ok(adapter::replicas_acknowledged(n)),
        other => Err(unexpected("WAIT", &other)),
    }
}

/// A script's reply as a [`ScriptValue`].
///
/// RESP2 replies map directly. Under RESP3, Lua booleans arrive as booleans and are mapped the way RESP2
/// would deliver them (`false` to nil, `true` to 1); doubles become strings and maps flat arrays of
/// key, value pairs (lock-core's `adapter` module holds these rules for every adapter).
pub(crate) fn script_value(reply: Value) -> Result<ScriptValue, BackendError> {
    Ok(match reply {
        Value::Null => ScriptValue::Nil,
        Value::Boolean(b) => adapter::script_boolean(b),
        Value::Integer(n) => ScriptValue::Int(n),
        Value::Double(f) => adapter::script_double(f),
        Value::String(s) => ScriptValue::Str(s.to_string()),
        Value::Bytes(bytes) => adapter::script_string(BACKEND, bytes.to_vec())?,
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
    fn commands_keep_their_arguments() {
        let (command, arguments) = custom(
            Command::set_nx_get("k", "v", Duration::from_millis(1500)),
            ClusterHash::FirstKey,
            false,
        );
        assert_eq!(command.cmd, "SET");
        assert!(!command.blocking);
        assert_eq!(
            arguments,
            [
                Value::from("k"),
                Value::from("v"),
                Value::from("NX"),
                Value::from("PX"),
                Value::Integer(1500),
                Value::from("GET"),
            ]
        );
        let (command, _) = custom(
            Command::blpop("s", Duration::from_secs(1)),
            ClusterHash::FirstKey,
            true,
        );
        assert!(command.blocking, "BLPOP is sent as a blocking command");
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
