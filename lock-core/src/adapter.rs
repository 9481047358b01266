//! For writing a backend: what a Redis adapter needs that does not depend on its client. Used by
//! lock-fred and lock-deadpool.
//!
//! Nothing here sends anything or names a client type. An adapter builds its commands from
//! [`Command`] (so every adapter sends the same arguments), bounds its calls with
//! [`clamp_command_timeout`], classifies server error replies with [`is_transient_code`], and maps
//! replies with the helpers at the end, which carry the rules that must not differ between clients
//! (RESP3 shapes read as RESP2 would deliver them, our own value found by `SET .. NX .. GET` counts as
//! set). See also [`run_id_from_info`] for
//! the [`SERVER_ID`](crate::script::SERVER_ID) script.

use std::borrow::Cow;
use std::time::Duration;

use crate::backend::{BackendError, ScriptValue, run_id_from_info};
use crate::script::Script;

/// The default per-call bound of an adapter (its `command_timeout`).
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// The shortest per-call bound: a zero bound would fail every call before it is sent.
pub const MIN_COMMAND_TIMEOUT: Duration = Duration::from_millis(1);

/// The longest per-call bound, one day: longer means "no bound" in practice, and deadlines computed
/// from the bound (the bound plus a `WAIT` or `BLPOP` window, from now) stay far from overflowing.
pub const MAX_COMMAND_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// The per-call bound an adapter's `command_timeout(bound)` setter stores: `bound` raised to
/// [`MIN_COMMAND_TIMEOUT`] (1 ms) and lowered to [`MAX_COMMAND_TIMEOUT`] (one day).
pub fn clamp_command_timeout(bound: Duration) -> Duration {
    bound.clamp(MIN_COMMAND_TIMEOUT, MAX_COMMAND_TIMEOUT)
}

/// Server error codes after which trying again later may succeed: the server is loading its data
/// (`LOADING`), a multi-key operation met a slot being migrated (`TRYAGAIN`), a replica lost its
/// primary (`MASTERDOWN`), the cluster is down (`CLUSTERDOWN`), the node was demoted to a replica by a
/// failover (`READONLY`), or a long script is still running (`BUSY`). Every other server error is
/// permanent.
pub const TRANSIENT_ERROR_CODES: &[&str] = &[
    "LOADING",
    "TRYAGAIN",
    "MASTERDOWN",
    "CLUSTERDOWN",
    "READONLY",
    "BUSY",
];

/// The code of the server's reply to `EVALSHA` for a script it has not cached; the adapter then sends
/// `EVAL` (which caches it).
pub const NOSCRIPT: &str = "NOSCRIPT";

/// The code of a server error reply, its first word when that is all capitals, digits and `_`
/// (`"NOSCRIPT No matching script."` has `NOSCRIPT`; `"Connection closed."` has none).
///
/// For clients that hand server errors over as text; clients that parse the code already (redis-rs's
/// `RedisError::code`) pass it to [`is_transient_code`] directly.
pub fn error_code(reply: &str) -> Option<&str> {
    let first = reply.split_whitespace().next()?;
    let is_code = first
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    is_code.then_some(first)
}

/// Whether a server error with `code` may pass on its own, see [`TRANSIENT_ERROR_CODES`].
pub fn is_transient_code(code: &str) -> bool {
    TRANSIENT_ERROR_CODES.contains(&code)
}

/// A client's error as a [`BackendError`] of `backend`, transient or permanent as the adapter
/// classified it, keeping the error as the source.
pub fn backend_error(
    backend: &'static str,
    transient: bool,
    source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
) -> BackendError {
    if transient {
        BackendError::transient(backend, source)
    } else {
        BackendError::permanent(backend, source)
    }
}

/// One argument of a Redis command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg<'a> {
    /// A string: a key, a value, a keyword, a script's SHA1 or source, a script argument.
    Text(Cow<'a, str>),
    /// An integer: milliseconds, a key count, a replica count. On the wire it is its decimal digits,
    /// like every argument, but clients take integers as such.
    Int(i64),
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(text: &'a str) -> Self {
        Arg::Text(Cow::Borrowed(text))
    }
}

impl From<i64> for Arg<'_> {
    fn from(n: i64) -> Self {
        Arg::Int(n)
    }
}

/// A Redis command as the lock algorithm sends it: the name and its arguments, for an adapter to
/// translate into its client's command type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command<'a> {
    /// The command's name, such as `"EVALSHA"`.
    pub name: &'static str,
    /// The arguments after the name.
    pub args: Vec<Arg<'a>>,
}

impl<'a> Command<'a> {
    /// `SET key value NX PX ttl GET`, for [`LockBackend::set_nx`](crate::LockBackend::set_nx): one round
    /// trip that also reads the value the key held (Redis 7.0 or later), see [`set_nx_outcome`].
    pub fn set_nx_get(key: &'a str, value: &'a str, ttl: Duration) -> Self {
        Self {
            name: "SET",
            args: vec![
                key.into(),
                value.into(),
                "NX".into(),
                "PX".into(),
                millis(ttl).into(),
                "GET".into(),
            ],
        }
    }

    /// `EVALSHA sha1 numkeys keys.. args..`: `script` by its SHA1.
    pub fn evalsha(script: &'a Script, keys: &[&'a str], args: &[&'a str]) -> Self {
        Self::script("EVALSHA", script.sha1(), keys, args)
    }

    /// `EVAL source numkeys keys.. args..`: `script` by its source, after the server answered
    /// [`NOSCRIPT`] to [`evalsha`](Self::evalsha).
    pub fn eval(script: &'a Script, keys: &[&'a str], args: &[&'a str]) -> Self {
        Self::script("EVAL", script.source(), keys, args)
    }

    fn script(name: &'static str, body: &'a str, keys: &[&'a str], args: &[&'a str]) -> Self {
        let mut all = Vec::with_capacity(2 + keys.len() + args.len());
        all.push(body.into());
        all.push(count(keys.len()).into());
        all.extend(keys.iter().map(|key| Arg::from(*key)));
        all.extend(args.iter().map(|arg| Arg::from(*arg)));
        Self { name, args: all }
    }

    /// `WAIT replicas timeout`: how many replicas acknowledged this connection's writes, waiting up to
    /// `timeout` (in milliseconds on the wire).
    pub fn wait(replicas: usize, timeout: Duration) -> Self {
        Self {
            name: "WAIT",
            args: vec![count(replicas).into(), millis(timeout).into()],
        }
    }

    /// `BLPOP signal seconds`: block until a release pushes to `signal`, for up to `window` (give it
    /// [`release_wait_window`], never zero, which would block forever). The window goes in seconds
    /// with millisecond precision (`"0.250"`).
    pub fn blpop(signal: &'a str, window: Duration) -> Self {
        Self {
            name: "BLPOP",
            args: vec![
                signal.into(),
                Arg::Text(Cow::Owned(format!("{:.3}", window.as_secs_f64()))),
            ],
        }
    }
}

/// `duration` in whole milliseconds, saturating at `i64::MAX` (Redis integers are signed 64-bit).
pub fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// `n` as a Redis integer, saturating at `i64::MAX`.
fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// How long one release wait blocks a connection on the server: `timeout`, at least 1 ms (`BLPOP`
/// with a zero timeout blocks forever) and at most `max`, the adapter's own limit (a blocked connection
/// serves nothing else, and the client's response timeout must not cut the wait short).
pub fn release_wait_window(timeout: Duration, max: Duration) -> Duration {
    timeout.clamp(Duration::from_millis(1), max.max(Duration::from_millis(1)))
}

/// Whether `SET key value NX PX ms GET` set the key for `value`: the key did not exist (`previous` is
/// `None`), or it already held exactly `value`, which is our own earlier write (for example re-sent by
/// the client after a reconnect).
pub fn set_nx_outcome(previous: Option<&[u8]>, value: &str) -> bool {
    previous.is_none_or(|held| held == value.as_bytes())
}

/// How many replicas a `WAIT` reply says acknowledged (a negative reply, which Redis never sends,
/// counts none).
pub fn replicas_acknowledged(reply: i64) -> usize {
    usize::try_from(reply).unwrap_or(0)
}

/// A script's RESP3 boolean reply as RESP2 delivers it: `false` is nil, `true` is 1.
pub fn script_boolean(value: bool) -> ScriptValue {
    if value {
        ScriptValue::Int(1)
    } else {
        ScriptValue::Nil
    }
}

/// A script's RESP3 double reply as a string, the way RESP2 delivers a Lua number it cannot keep
/// whole.
pub fn script_double(value: f64) -> ScriptValue {
    ScriptValue::Str(value.to_string())
}

/// A script's string reply, which must be UTF-8 (lock scripts reply with tokens and numbers).
pub fn script_string(backend: &'static str, bytes: Vec<u8>) -> Result<ScriptValue, BackendError> {
    String::from_utf8(bytes).map(ScriptValue::Str).map_err(|_| {
        BackendError::permanent(backend, "script replied with a string that is not UTF-8")
    })
}

/// A reply of a shape `command` never answers, as a permanent error of `backend`.
pub fn unexpected_reply(
    backend: &'static str,
    command: &str,
    reply: &dyn std::fmt::Debug,
) -> BackendError {
    BackendError::permanent(backend, format!("unexpected reply to {command}: {reply:?}"))
}

/// The server's `run_id` from its reply to `INFO server`, or a permanent error of `backend` when the
/// reply has none: the answer of the [`SERVER_ID`](crate::script::SERVER_ID) script.
pub fn run_id(backend: &'static str, info: &str) -> Result<String, BackendError> {
    run_id_from_info(info)
        .map(str::to_owned)
        .ok_or_else(|| BackendError::permanent(backend, "INFO server answered no run_id"))
}

// Eviction policy: a lock key has a TTL, so an evicting `maxmemory-policy` may delete it early. The
// decision rule, the message and the once-per-backend flag live here; each adapter sends
// `CONFIG GET maxmemory-policy` itself, once, off the hot path.

/// The eviction-policy check of one backend, shared by its clones (keep it behind an `Arc`): the
/// first call of the backend claims it with [`claim`](Self::claim), sends
/// [`Command::config_get_maxmemory_policy`] in the background, and passes the answer to
/// [`report_eviction_policy`]. Every later call pays one relaxed atomic load.
#[derive(Debug, Default)]
pub struct EvictionCheck {
    claimed: std::sync::atomic::AtomicBool,
}

impl EvictionCheck {
    /// A check nobody has claimed yet.
    pub const fn new() -> Self {
        Self {
            claimed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// `true` exactly once, for the caller that is to run the check.
    pub fn claim(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        !self.claimed.load(Relaxed) && !self.claimed.swap(true, Relaxed)
    }
}

impl Command<'static> {
    /// `CONFIG GET maxmemory-policy`: the server's eviction policy (read it from the reply with
    /// [`maxmemory_policy`]). Managed services may refuse `CONFIG`.
    pub fn config_get_maxmemory_policy() -> Self {
        Self {
            name: "CONFIG",
            args: vec!["GET".into(), "maxmemory-policy".into()],
        }
    }
}

/// The policy in a reply to `CONFIG GET maxmemory-policy`, given as its strings in order (RESP2's
/// `[name, value]`; a RESP3 map flattened to the same): the string after `maxmemory-policy`.
pub fn maxmemory_policy<S: AsRef<str>>(reply: &[S]) -> Option<&str> {
    reply
        .iter()
        .position(|item| item.as_ref().eq_ignore_ascii_case("maxmemory-policy"))
        .and_then(|at| reply.get(at + 1))
        .map(AsRef::as_ref)
}

/// Whether the eviction policy `policy` may delete a lock key: every `volatile-*` policy (it evicts
/// keys with a TTL, which lock keys are) and every `allkeys-*` one (which evicts fence counters
/// too). Only `noeviction` keeps them (the server then refuses writes when memory is full, which a
/// lock reports as an error rather than a second holder).
pub fn policy_evicts_locks(policy: &str) -> bool {
    let policy = policy.to_ascii_lowercase();
    policy.starts_with("volatile-") || policy.starts_with("allkeys-")
}

/// What [`report_eviction_policy`] logs at `warn` for an evicting `policy`, or `None` for one that
/// keeps lock keys: names the policy, the risk and the fix.
pub fn eviction_warning(policy: &str) -> Option<String> {
    policy_evicts_locks(policy).then(|| {
        format!(
            "the Redis server's maxmemory-policy is {policy}: when it reaches maxmemory it may evict \
             a lock key (lock keys have a TTL) and let a second holder in before the first one's next \
             renewal notices{also}; set `maxmemory-policy noeviction` (CONFIG SET, or redis.conf)",
            also = if policy.to_ascii_lowercase().starts_with("allkeys-") {
                ", and evict fence counters and waiting queues"
            } else {
                ""
            }
        )
    })
}

/// Logs the outcome of one backend's eviction-policy check: a `warn` naming the policy and the fix
/// when `policy` evicts lock keys ([`eviction_warning`]); nothing for `noeviction`; a `debug` when the
/// server would not tell (`CONFIG` refused, as managed services do, or the call failed).
pub fn report_eviction_policy(backend: &'static str, policy: Result<Option<&str>, BackendError>) {
    match policy {
        Ok(Some(policy)) => {
            if let Some(warning) = eviction_warning(policy) {
                tracing::warn!(backend, policy, "{warning}");
            }
        }
        Ok(None) => {
            tracing::debug!(
                backend,
                "the server did not name its maxmemory-policy; eviction not checked"
            );
        }
        Err(error) => {
            tracing::debug!(
                backend,
                %error,
                "could not read the server's maxmemory-policy (CONFIG may be refused); eviction not checked"
            );
        }
    }
}

#[cfg(test)]
mod eviction_tests {
    use super::*;

    #[test]
    fn evicting_policies_are_told_apart_from_noeviction() {
        for policy in [
            "volatile-lru",
            "volatile-lfu",
            "volatile-random",
            "volatile-ttl",
            "allkeys-lru",
            "allkeys-lfu",
            "allkeys-random",
        ] {
            assert!(policy_evicts_locks(policy), "{policy}");
            let warning = eviction_warning(policy).expect("a warning");
            assert!(warning.contains(policy), "{warning}");
            assert!(warning.contains("noeviction"), "{warning}");
        }
        assert!(!policy_evicts_locks("noeviction"));
        assert_eq!(eviction_warning("noeviction"), None);
        assert!(
            eviction_warning("allkeys-lru")
                .unwrap()
                .contains("fence counters")
        );
        assert!(
            !eviction_warning("volatile-ttl")
                .unwrap()
                .contains("fence counters")
        );
    }

    #[test]
    fn the_policy_is_read_from_the_reply() {
        assert_eq!(
            maxmemory_policy(&["maxmemory-policy", "allkeys-lru"]),
            Some("allkeys-lru")
        );
        assert_eq!(maxmemory_policy::<&str>(&[]), None);
        assert_eq!(maxmemory_policy(&["maxmemory-policy"]), None);
        let command = Command::config_get_maxmemory_policy();
        assert_eq!(command.name, "CONFIG");
        assert_eq!(
            command.args,
            vec![Arg::from("GET"), Arg::from("maxmemory-policy")]
        );
    }

    #[test]
    fn a_check_is_claimed_once() {
        let check = EvictionCheck::new();
        assert!(check.claim());
        assert!(!check.claim());
        assert!(!check.claim());
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    fn text(s: &str) -> Arg<'_> {
        Arg::from(s)
    }

    #[test]
    fn command_timeouts_are_clamped_to_one_millisecond_and_one_day() {
        assert_eq!(
            clamp_command_timeout(Duration::ZERO),
            Duration::from_millis(1)
        );
        assert_eq!(
            clamp_command_timeout(Duration::from_micros(10)),
            Duration::from_millis(1)
        );
        assert_eq!(
            clamp_command_timeout(Duration::from_millis(300)),
            Duration::from_millis(300)
        );
        assert_eq!(clamp_command_timeout(Duration::MAX), MAX_COMMAND_TIMEOUT);
        assert_eq!(MAX_COMMAND_TIMEOUT, Duration::from_secs(86_400));
        assert!(MAX_COMMAND_TIMEOUT.checked_add(Duration::MAX / 2).is_some());
        assert_eq!(
            clamp_command_timeout(DEFAULT_COMMAND_TIMEOUT),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn error_codes_are_read_from_the_first_word() {
        assert_eq!(
            error_code("NOSCRIPT No matching script. Please use EVAL."),
            Some(NOSCRIPT)
        );
        assert_eq!(
            error_code("CLUSTERDOWN The cluster is down"),
            Some("CLUSTERDOWN")
        );
        assert_eq!(error_code("ERR syntax error"), Some("ERR"));
        assert_eq!(error_code("Connection closed."), None);
        assert_eq!(error_code("Too many redirections."), None);
        assert_eq!(error_code(""), None);
    }

    #[test]
    fn transient_codes() {
        for code in [
            "LOADING",
            "TRYAGAIN",
            "MASTERDOWN",
            "CLUSTERDOWN",
            "READONLY",
            "BUSY",
        ] {
            assert!(is_transient_code(code), "{code}");
        }
        for code in [
            "ERR",
            "NOSCRIPT",
            "WRONGTYPE",
            "CROSSSLOT",
            "NOAUTH",
            "MOVED",
            "ASK",
            "busy",
            "BUSYKEY",
        ] {
            assert!(!is_transient_code(code), "{code}");
        }
        assert_eq!(TRANSIENT_ERROR_CODES.len(), 6);
    }

    #[test]
    fn classified_errors_keep_their_source() {
        let err = backend_error("x", true, "LOADING");
        assert!(err.is_transient());
        assert_eq!(err.backend(), "x");
        assert_eq!(err.source().unwrap().to_string(), "LOADING");
        assert!(!backend_error("x", false, "ERR").is_transient());
    }

    #[test]
    fn set_nx_get_arguments() {
        let command = Command::set_nx_get("k", "token", Duration::from_millis(1500));
        assert_eq!(command.name, "SET");
        assert_eq!(
            command.args,
            [
                text("k"),
                text("token"),
                text("NX"),
                text("PX"),
                Arg::Int(1500),
                text("GET")
            ]
        );
        let command = Command::set_nx_get("k", "v", Duration::MAX);
        assert_eq!(command.args[4], Arg::Int(i64::MAX), "saturates");
    }

    #[test]
    fn script_arguments() {
        let command = Command::evalsha(&crate::script::RELEASE, &["a", "b"], &["t"]);
        assert_eq!(command.name, "EVALSHA");
        assert_eq!(
            command.args,
            [
                text(crate::script::RELEASE.sha1()),
                Arg::Int(2),
                text("a"),
                text("b"),
                text("t")
            ]
        );
        let command = Command::eval(&crate::script::RELEASE, &["a"], &[]);
        assert_eq!(command.name, "EVAL");
        assert_eq!(
            command.args,
            [
                text(crate::script::RELEASE.source()),
                Arg::Int(1),
                text("a")
            ]
        );
    }

    #[test]
    fn wait_and_blpop_arguments() {
        let command = Command::wait(2, Duration::from_millis(250));
        assert_eq!(command.name, "WAIT");
        assert_eq!(command.args, [Arg::Int(2), Arg::Int(250)]);
        let command = Command::blpop("sig", Duration::from_millis(250));
        assert_eq!(command.name, "BLPOP");
        assert_eq!(command.args, [text("sig"), text("0.250")]);
        assert_eq!(
            Command::blpop("sig", Duration::from_secs(1)).args[1],
            text("1.000")
        );
    }

    #[test]
    fn release_wait_windows_are_never_zero() {
        let max = Duration::from_millis(250);
        assert_eq!(
            release_wait_window(Duration::ZERO, max),
            Duration::from_millis(1)
        );
        assert_eq!(
            release_wait_window(Duration::from_millis(40), max),
            Duration::from_millis(40)
        );
        assert_eq!(release_wait_window(Duration::from_secs(9), max), max);
        assert_eq!(
            release_wait_window(Duration::from_secs(9), Duration::ZERO),
            Duration::from_millis(1),
            "a zero limit does not panic"
        );
    }

    #[test]
    fn millis_saturate() {
        assert_eq!(millis(Duration::from_micros(1999)), 1);
        assert_eq!(millis(Duration::MAX), i64::MAX);
    }

    #[test]
    fn replies() {
        assert!(set_nx_outcome(None, "t"));
        assert!(set_nx_outcome(Some(b"t"), "t"));
        assert!(!set_nx_outcome(Some(b"other"), "t"));
        assert_eq!(replicas_acknowledged(2), 2);
        assert_eq!(replicas_acknowledged(-1), 0);
        assert_eq!(script_boolean(false), ScriptValue::Nil);
        assert_eq!(script_boolean(true), ScriptValue::Int(1));
        assert_eq!(script_double(1.5), ScriptValue::Str("1.5".into()));
        assert_eq!(
            script_string("x", b"ok".to_vec()).unwrap(),
            ScriptValue::Str("ok".into())
        );
        let err = script_string("x", vec![0xff]).unwrap_err();
        assert!(!err.is_transient());
        assert_eq!(err.backend(), "x");
        let err = unexpected_reply("x", "WAIT", &"a string");
        assert!(!err.is_transient());
        assert_eq!(
            err.source().unwrap().to_string(),
            "unexpected reply to WAIT: \"a string\""
        );
    }

    #[test]
    fn run_ids() {
        let info = "# Server\r\nrun_id:3f1c0a9e2b7d4c5e6f708192a3b4c5d6e7f80912\r\n";
        assert_eq!(
            run_id("x", info).unwrap(),
            "3f1c0a9e2b7d4c5e6f708192a3b4c5d6e7f80912"
        );
        let err = run_id("x", "redis_version:7.0.15").unwrap_err();
        assert!(!err.is_transient());
        assert_eq!(err.backend(), "x");
    }
}
