//! Companion keys: the one place that builds key names besides the user's own.
//!
//! A script may only touch keys in one Redis Cluster hash slot, so every companion key (the fence counter
//! beside a lock, the fence mark beside a fenced resource) must hash exactly like the key it accompanies.
//! Redis hashes the content of the first `{...}` when it is non-empty (the hash tag), else the whole key.

use crate::error::{LockError, Result};

/// The hash tag of `key`: the text between its first `{` and the first `}` after it, if non-empty.
pub(crate) fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let rest = &key[open + 1..];
    let close = rest.find('}')?;
    (close > 0).then(|| &rest[..close])
}

/// A companion of `key` named by `suffix`, in `key`'s hash slot.
///
/// - A key with a hash tag keeps it: `{user:1}:lock` → `{user:1}:lock:redlease:fence`.
/// - A key without one is wrapped, making the whole key the tag: `jobs` → `{jobs}:redlease:fence`.
/// - A key with a `}` but no hash tag (`a{}b`, `a}b`) cannot be wrapped into a tag that hashes like the
///   whole key, and is rejected as `InvalidArgument` naming `argument`.
pub(crate) fn companion_key(argument: &'static str, key: &str, suffix: &str) -> Result<String> {
    if hash_tag(key).is_some() {
        Ok(format!("{key}:redlease:{suffix}"))
    } else if !key.contains('}') {
        Ok(format!("{{{key}}}:redlease:{suffix}"))
    } else {
        Err(LockError::invalid(
            argument,
            format!(
                "{key:?} contains '}}' but no hash tag, so no companion key can share its cluster slot; \
                 add a hash tag such as {{{}}} or avoid braces",
                key.replace(['{', '}'], "")
            ),
        ))
    }
}

/// The fence counter of the lock `key`. Never deleted by the library: one small key per lock name.
pub(crate) fn fence_counter(key: &str) -> Result<String> {
    companion_key("key", key, "fence")
}

/// The highest fence that ever wrote the fenced resource `resource`.
pub(crate) fn fence_mark(resource: &str) -> Result<String> {
    companion_key("resource", resource, "fence-mark")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_tags_follow_the_redis_rule() {
        assert_eq!(hash_tag("{user1000}.following"), Some("user1000"));
        assert_eq!(
            hash_tag("foo{}{bar}"),
            None,
            "an empty first tag means the whole key"
        );
        assert_eq!(hash_tag("foo{{bar}}zap"), Some("{bar"));
        assert_eq!(hash_tag("foo{bar}{zap}"), Some("bar"));
        assert_eq!(hash_tag("a}b{c}"), Some("c"));
        assert_eq!(hash_tag("a{b"), None);
        assert_eq!(hash_tag("a}b"), None);
        assert_eq!(hash_tag("jobs"), None);
    }

    #[test]
    fn companions_keep_the_slot() {
        assert_eq!(fence_counter("jobs").unwrap(), "{jobs}:redlease:fence");
        assert_eq!(
            fence_counter("{user:1}:lock").unwrap(),
            "{user:1}:lock:redlease:fence"
        );
        assert_eq!(fence_counter("a{b").unwrap(), "{a{b}:redlease:fence");
        assert_eq!(hash_tag(&fence_counter("a{b").unwrap()), Some("a{b"));
        assert_eq!(
            fence_mark("orders").unwrap(),
            "{orders}:redlease:fence-mark"
        );
    }

    #[test]
    fn unwrappable_keys_are_rejected_by_name() {
        for key in ["a{}b", "a}b", "a{}{b}"] {
            let err = fence_counter(key).unwrap_err();
            assert!(
                matches!(
                    err,
                    LockError::InvalidArgument {
                        argument: "key",
                        ..
                    }
                ),
                "{key}"
            );
        }
        let err = fence_mark("x}y").unwrap_err();
        assert!(matches!(
            err,
            LockError::InvalidArgument {
                argument: "resource",
                ..
            }
        ));
    }
}
