use std::time::Duration;

use super::{Released, Written};
use crate::RedisLock;
use crate::backend::ScriptValue;
use crate::memory::MemoryBackend;
use crate::script;

fn pair(pttl: i64, expiry: i64) -> ScriptValue {
    ScriptValue::Array(vec![ScriptValue::Int(pttl), ScriptValue::Int(expiry)])
}

#[test]
fn written_reads_the_ttl_and_the_expiry() {
    let written = Written::from_reply(&script::RENEW, &pair(1500, 1_700_000_000_000)).unwrap();
    assert_eq!(
        written,
        Some(Written {
            pttl: Duration::from_millis(1500),
            server_expiry_ms: 1_700_000_000_000,
        })
    );
    assert_eq!(
        Written::from_reply(&script::RENEW, &ScriptValue::Int(0)).unwrap(),
        None,
        "0 is \"not ours\""
    );
}

/// A key with no TTL (-1), a missing key (-2), a zero TTL or a zero expiry are not replies of our
/// scripts: believing one would give the guard a validity Redis does not back.
#[test]
fn written_refuses_what_no_script_of_ours_answers() {
    for reply in [
        pair(-1, 1_700_000_000_000),
        pair(-2, 1_700_000_000_000),
        pair(0, 1_700_000_000_000),
        pair(1500, 0),
        pair(1500, -1),
        pair(0, 0),
        ScriptValue::Int(1),
        ScriptValue::Nil,
        ScriptValue::Array(vec![ScriptValue::Int(1500)]),
    ] {
        let read = Written::from_reply(&script::RENEW, &reply);
        assert!(read.is_err(), "{reply:?} gave {read:?}");
        let error = read.unwrap_err();
        assert!(
            !error.is_transient(),
            "a malformed reply is permanent: {error}"
        );
    }
}

#[test]
fn released_tells_the_three_outcomes_apart() {
    let outcome = |n| Released::from_reply(&ScriptValue::Int(n)).unwrap();
    assert_eq!(outcome(1), Released::Deleted);
    assert_eq!(outcome(0), Released::HeldByAnother);
    assert_eq!(outcome(-1), Released::Absent);
    assert!(Released::from_reply(&ScriptValue::Int(2)).is_err());
    assert!(Released::from_reply(&ScriptValue::Nil).is_err());
}

#[test]
fn debug_names_the_key_the_token_and_the_validity() {
    futures::executor::block_on(async {
        let lock =
            RedisLock::new(MemoryBackend::new(), "reports:debug").timeout(Duration::from_secs(30));
        let guard = lock.acquire().await.unwrap();
        let shown = format!("{guard:?}");
        assert!(shown.starts_with("LockGuard {"), "{shown}");
        for part in [
            "reports:debug",
            guard.token(),
            "ttl: 30s",
            "fence: None",
            "valid_for: ",
        ] {
            assert!(shown.contains(part), "{part:?} missing from {shown}");
        }
        guard.release().await.unwrap();
    });
}
