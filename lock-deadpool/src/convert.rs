//! Translating between lock-core's types and redis-rs's and deadpool's: commands, replies and errors.

use std::future::Future;
use std::time::Duration;

use deadpool_redis::redis::{self, Value};
use deadpool_redis::{HookError, PoolError};
use lock_core::adapter::{self, Arg, Command};
use lock_core::{BackendError, ScriptValue};
use redis::RedisError;

use crate::BACKEND;

/// Runs `call` within `bound`.
pub(crate) async fn bounded<T>(
    bound: Duration,
    call: impl Future<Output = Result<T, BackendError>>,
) -> Result<T, BackendError> {
    match tokio::time::timeout(bound, call).await {
        Ok(result) => result,
        Err(_elapsed) => Err(BackendError::timed_out(BACKEND, bound)),
    }
}

/// `command` as a redis-rs command.
pub(crate) fn cmd(command: Command<'_>) -> redis::Cmd {
    let mut cmd = redis::cmd(command.name);
    for arg in command.args {
        match arg {
            Arg::Text(text) => cmd.arg(text.as_ref()),
            Arg::Int(n) => cmd.arg(n),
        };
    }
    cmd
}

/// Whether the server answered `NOSCRIPT` to an `EVALSHA` whose script is not cached. redis-rs parses
/// that code into `ServerErrorKind::NoScript`, whose `code()` is the code again.
pub(crate) fn is_noscript(error: &RedisError) -> bool {
    error.code() == Some(adapter::NOSCRIPT)
}

/// Whether trying again later may help.
pub(crate) fn is_transient(error: &RedisError) -> bool {
    if error.is_io_error() || error.is_timeout() || error.is_connection_dropped() {
        return true;
    }
    // `code()` answers the code of both the server errors redis-rs parses into a `ServerErrorKind`
    // (`LOADING`, ..., `READONLY`) and those it keeps as extension errors (`BUSY`).
    error.code().is_some_and(adapter::is_transient_code)
}

/// A redis-rs error as a [`BackendError`], keeping the error as the source (see [`cause`]).
pub(crate) fn backend_error(error: RedisError) -> BackendError {
    let what = what(&error);
    adapter::backend_error(BACKEND, is_transient(&error), cause(error)).describe(what)
}

/// What happened, in a word or two, for the top line of the error.
fn what(error: &RedisError) -> &'static str {
    if error.is_connection_refusal() {
        "connection refused"
    } else if error.is_timeout() {
        "timed out"
    } else if error.is_connection_dropped() {
        "connection lost"
    } else if error.is_io_error() {
        "connection failed"
    } else if error.code().is_some() {
        "server error"
    } else {
        "failed"
    }
}

/// The cause to keep: redis-rs displays an I/O error as the I/O error itself and also gives it as
/// its source, so a printed chain would say it twice; keep the I/O error alone then.
fn cause(error: RedisError) -> Box<dyn std::error::Error + Send + Sync> {
    use std::error::Error as _;
    use std::io::ErrorKind;
    let repeated = error
        .source()
        .is_some_and(|source| source.to_string() == error.to_string());
    if !(error.is_io_error() && repeated) {
        return Box::new(error);
    }
    let kind = if error.is_connection_refusal() {
        ErrorKind::ConnectionRefused
    } else if error.is_timeout() {
        ErrorKind::TimedOut
    } else if error.is_connection_dropped() {
        ErrorKind::ConnectionReset
    } else {
        ErrorKind::Other
    };
    Box::new(std::io::Error::new(kind, error.to_string()))
}

/// A failure to check a connection out of a pool as a [`BackendError`]. deadpool's error displays
/// its redis-rs cause and gives it as its source too: keep the redis-rs error alone in that case.
pub(crate) fn pool_error(error: PoolError) -> BackendError {
    match error {
        PoolError::Backend(e) | PoolError::PostCreateHook(HookError::Backend(e)) => {
            backend_error(e)
        }
        PoolError::Timeout(_) | PoolError::Closed => {
            let what = match &error {
                PoolError::Closed => "pool closed",
                _ => "pool timed out",
            };
            adapter::backend_error(BACKEND, true, error).describe(what)
        }
        PoolError::NoRuntimeSpecified | PoolError::PostCreateHook(HookError::Message(_)) => {
            adapter::backend_error(BACKEND, false, error)
        }
    }
}

/// An unexpected reply shape, as a permanent error.
fn unexpected(command: &str, value: &Value) -> BackendError {
    adapter::unexpected_reply(BACKEND, command, value)
}

/// The reply to `SET key value NX PX ms GET`: nil when we set the key, else the value it held.
pub(crate) fn set_nx_reply(reply: Value, value: &str) -> Result<bool, BackendError> {
    match reply {
        Value::Nil => Ok(adapter::set_nx_outcome(None, value)),
        Value::BulkString(held) => Ok(adapter::set_nx_outcome(Some(&held), value)),
        Value::SimpleString(held) => Ok(adapter::set_nx_outcome(Some(held.as_bytes()), value)),
        Value::VerbatimString { text, .. } => {
            Ok(adapter::set_nx_outcome(Some(text.as_bytes()), value))
        }
        other => Err(unexpected("SET NX GET", &other)),
    }
}

/// The reply to `WAIT`: how many replicas acknowledged.
pub(crate) fn wait_reply(reply: Value) -> Result<usize, BackendError> {
    match reply {
        Value::Int(n) => Ok(adapter::replicas_acknowledged(n)),
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
        Value::Nil => ScriptValue::Nil,
        Value::Boolean(b) => adapter::script_boolean(b),
        Value::Int(n) => ScriptValue::Int(n),
        Value::Double(d) => adapter::script_double(d),
        Value::BulkString(bytes) => adapter::script_string(BACKEND, bytes)?,
        Value::SimpleString(s) => ScriptValue::Str(s),
        Value::Okay => ScriptValue::Str("OK".to_owned()),
        Value::VerbatimString { text, .. } => ScriptValue::Str(text),
        Value::Array(items) | Value::Set(items) => ScriptValue::Array(
            items
                .into_iter()
                .map(script_value)
                .collect::<Result<_, _>>()?,
        ),
        Value::Map(pairs) => ScriptValue::Array(
            pairs
                .into_iter()
                .flat_map(|(k, v)| [k, v])
                .map(script_value)
                .collect::<Result<_, _>>()?,
        ),
        Value::Attribute { data, .. } => script_value(*data)?,
        other => return Err(unexpected("a script", &other)),
    })
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn commands_keep_their_arguments() {
        let cmd = cmd(Command::set_nx_get("k", "v", Duration::from_millis(1500)));
        let args: Vec<Vec<u8>> = cmd
            .args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => bytes.to_vec(),
                _ => b"<not a simple argument>".to_vec(),
            })
            .collect();
        assert_eq!(
            args,
            [&b"SET"[..], b"k", b"v", b"NX", b"PX", b"1500", b"GET"]
        );
    }

    #[test]
    fn maps_script_replies() {
        let reply = Value::Array(vec![
            Value::Int(1),
            Value::BulkString(b"a".to_vec()),
            Value::Nil,
            Value::Okay,
            Value::SimpleString("PONG".into()),
            Value::Boolean(false),
            Value::Boolean(true),
        ]);
        assert_eq!(
            script_value(reply).unwrap(),
            ScriptValue::Array(vec![
                ScriptValue::Int(1),
                ScriptValue::Str("a".into()),
                ScriptValue::Nil,
                ScriptValue::Str("OK".into()),
                ScriptValue::Str("PONG".into()),
                ScriptValue::Nil,
                ScriptValue::Int(1),
            ])
        );
        let err = script_value(Value::BulkString(vec![0xff])).unwrap_err();
        assert!(!err.is_transient());
        assert_eq!(err.backend(), "deadpool");
    }

    #[test]
    fn set_nx_replies() {
        assert!(set_nx_reply(Value::Nil, "t").unwrap());
        assert!(set_nx_reply(Value::BulkString(b"t".to_vec()), "t").unwrap());
        assert!(!set_nx_reply(Value::BulkString(b"other".to_vec()), "t").unwrap());
        assert!(set_nx_reply(Value::SimpleString("t".into()), "t").unwrap());
        assert!(!set_nx_reply(Value::Int(1), "t").unwrap_err().is_transient());
        assert_eq!(wait_reply(Value::Int(2)).unwrap(), 2);
        assert!(wait_reply(Value::Nil).is_err());
    }

    #[test]
    fn classifies_errors() {
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(backend_error(io).is_transient());
        let timeout = RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(backend_error(timeout).is_transient());
        for (code, transient) in [
            ("LOADING", true),
            ("TRYAGAIN", true),
            ("MASTERDOWN", true),
            ("CLUSTERDOWN", true),
            ("READONLY", true),
            ("BUSY", true),
            ("NOSCRIPT", false),
            ("WRONGTYPE", false),
            ("ERR", false),
        ] {
            let err = redis::make_extension_error(code.to_owned(), Some("detail".to_owned()));
            let err = backend_error(err);
            assert_eq!(err.is_transient(), transient, "{code}");
            assert_eq!(err.backend(), "deadpool");
            assert!(err.source().unwrap().to_string().contains(code), "{code}");
        }
        assert!(pool_error(PoolError::Closed).is_transient());
        assert!(!pool_error(PoolError::NoRuntimeSpecified).is_transient());
    }

    #[test]
    fn parsed_server_errors_keep_their_codes() {
        // Server errors redis-rs parses into a `ServerErrorKind` (not extension errors): the transient
        // ones are still read as transient, and `NOSCRIPT` as `NOSCRIPT`.
        let parse = |reply: &[u8]| match redis::parse_redis_value(reply) {
            Ok(Value::ServerError(error)) => RedisError::from(error),
            other => panic!("not a server error: {other:?}"),
        };
        assert!(is_transient(&parse(b"-LOADING Redis is loading\r\n")));
        assert!(is_transient(&parse(b"-READONLY You can't write\r\n")));
        assert!(is_transient(&parse(
            b"-MASTERDOWN Link with MASTER is down\r\n"
        )));
        assert!(!is_transient(&parse(b"-ERR syntax error\r\n")));
        assert!(is_noscript(&parse(b"-NOSCRIPT No matching script.\r\n")));
        assert!(!is_noscript(&parse(b"-ERR NOSCRIPT\r\n")));
    }
}
