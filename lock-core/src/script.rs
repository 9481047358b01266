//! Lua scripts as data: each defined once, with what it guarantees.
//!
//! Every script touches only the keys it is given, runs in O(1), and checks the caller's token before it
//! changes anything, so an operation by a holder that lost its lock can never affect the next holder.

use std::borrow::Cow;
use std::fmt;
use std::sync::LazyLock;

/// A Lua script with its SHA1, computed once, so backends can run it by `EVALSHA`.
#[derive(Clone, PartialEq, Eq)]
pub struct Script {
    name: &'static str,
    source: Cow<'static, str>,
    sha1: String,
}

impl Script {
    /// A script named `name` (for logs and errors) with the given Lua `source`.
    pub fn new(name: &'static str, source: impl Into<Cow<'static, str>>) -> Self {
        let source = source.into();
        let sha1 = sha1_smol::Sha1::from(source.as_bytes())
            .digest()
            .to_string();
        Self { name, source, sha1 }
    }

    /// A short name saying what the script does, such as `"release"`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The Lua source, for `EVAL` and `SCRIPT LOAD`.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The lowercase hex SHA1 of the source, for `EVALSHA`.
    pub fn sha1(&self) -> &str {
        &self.sha1
    }
}

impl fmt::Debug for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Script")
            .field("name", &self.name)
            .field("sha1", &self.sha1)
            .finish_non_exhaustive()
    }
}

/// Deletes `KEYS[1]` only if it holds the token `ARGV[1]`. Returns 1 when deleted, 0 otherwise.
///
/// Guarantees a holder never releases a lock that expired and was taken by someone else.
pub static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "release",
        r#"if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0"#,
    )
});

/// Adds `ARGV[2]` milliseconds to the remaining TTL of `KEYS[1]`, only if it holds the token `ARGV[1]`
/// with a positive TTL. Returns 1 when extended, 0 otherwise.
///
/// Never re-creates an expired or taken-over lock, which would hide a window where exclusion was broken.
pub static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "extend",
        r#"if redis.call('get', KEYS[1]) == ARGV[1] then
  local remaining = redis.call('pttl', KEYS[1])
  if remaining > 0 then
    return redis.call('pexpire', KEYS[1], remaining + tonumber(ARGV[2]))
  end
end
return 0"#,
    )
});

/// Sets the TTL of `KEYS[1]` to `ARGV[2]` milliseconds, only if it holds the token `ARGV[1]` with a
/// positive TTL. Returns 1 when renewed, 0 otherwise.
///
/// Replaces rather than adds, so renewing in a loop never grows the TTL without bound; like [`EXTEND`],
/// it never re-creates a lost lock.
pub static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "renew",
        r#"if redis.call('get', KEYS[1]) == ARGV[1] then
  if redis.call('pttl', KEYS[1]) > 0 then
    return redis.call('pexpire', KEYS[1], ARGV[2])
  end
end
return 0"#,
    )
});

/// Returns 1 if `KEYS[1]` holds the token `ARGV[1]`, 0 otherwise.
pub static IS_OWNER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "is_owner",
        r#"if redis.call('get', KEYS[1]) == ARGV[1] then
  return 1
end
return 0"#,
    )
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_matches_the_source() {
        // Redis computes the same digest for SCRIPT LOAD; the adapters' tests check that against a server.
        let script = Script::new("noop", "return 1");
        assert_eq!(script.sha1(), "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
        assert_eq!(script.name(), "noop");
        assert_eq!(script.source(), "return 1");
    }

    #[test]
    fn scripts_have_distinct_digests() {
        let all = [&*RELEASE, &*EXTEND, &*RENEW, &*IS_OWNER];
        for (i, a) in all.iter().enumerate() {
            assert_eq!(a.sha1().len(), 40);
            for b in &all[i + 1..] {
                assert_ne!(a.sha1(), b.sha1(), "{} and {}", a.name(), b.name());
            }
        }
    }
}
