//! What the token-checked scripts cost on a real server, and that cutting their `PTTL` before the
//! write kept their meaning: `renew` and `extend` run four commands, and still leave a key without a
//! TTL (never ours: a lock always has one) alone and answer "not ours".

mod support;

use std::time::Duration;

use redlease::LockBackend;
use redlease::ScriptValue;
use redlease::script::{EXTEND, RENEW};
use support::inputs::{Input, Options};
use support::key_prefix;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_and_extend_run_four_commands_each() {
    let server = support::RedisServer::start();
    let backend = Input::FredClient
        .connect(&server.url(), Options::new())
        .await;
    let key = format!("{}:four", key_prefix());
    assert!(matches!(
        backend.set_nx(&key, "t", Duration::from_secs(10)).await,
        Ok(true)
    ));
    // Load both scripts first, so that the counts below see EVALSHA only.
    backend
        .eval_script(&RENEW, &[&key], &["t", "20000"])
        .await
        .unwrap();
    let far = (std::time::SystemTime::now() + Duration::from_secs(60))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string();
    backend
        .eval_script(&EXTEND, &[&key], &["t", &far])
        .await
        .unwrap();

    let before = server.commands_total();
    let renewed = backend
        .eval_script(&RENEW, &[&key], &["t", "90000"])
        .await
        .unwrap();
    assert!(matches!(renewed, ScriptValue::Array(_)), "{renewed:?}");
    // EVALSHA + GET, PEXPIRE, PTTL, PEXPIRETIME.
    assert_eq!(server.commands_total() - before, 5, "renew");

    let before = server.commands_total();
    let extended = backend
        .eval_script(&EXTEND, &[&key], &["t", &far])
        .await
        .unwrap();
    assert!(matches!(extended, ScriptValue::Array(_)), "{extended:?}");
    assert_eq!(server.commands_total() - before, 5, "extend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_and_extend_leave_a_key_without_a_ttl_alone() {
    let server = support::RedisServer::start();
    for input in [Input::FredClient, Input::DeadpoolPool] {
        let backend = input.connect(&server.url(), Options::new()).await;
        let key = format!("{}:persisted:{}", key_prefix(), input.name());
        server.command(&["SET", &key, "t"]).unwrap();
        let renewed = backend.eval_script(&RENEW, &[&key], &["t", "10000"]).await;
        assert!(
            matches!(renewed, Ok(ScriptValue::Int(0))),
            "{input:?} renew: {renewed:?}"
        );
        let extended = backend
            .eval_script(&EXTEND, &[&key], &["t", "99999999999999"])
            .await;
        assert!(
            matches!(extended, Ok(ScriptValue::Int(0))),
            "{input:?} extend: {extended:?}"
        );
        assert_eq!(
            server.command(&["PTTL", &key]).unwrap().trim(),
            "-1",
            "{input:?}"
        );
        assert_eq!(
            server.command(&["GET", &key]).unwrap().trim(),
            "t",
            "{input:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_many_answers_each_key_as_renew_and_runs_two_commands_a_renewed_key() {
    use redlease::script::RENEW_MANY;
    let server = support::RedisServer::start();
    let backend = Input::FredClient
        .connect(&server.url(), Options::new())
        .await;
    let tag = format!("{{{}}}", key_prefix());
    let [renewed, longer, theirs, persisted] =
        ["renewed", "longer", "theirs", "persisted"].map(|k| format!("{tag}:{k}"));
    server
        .command(&["SET", &renewed, "a", "PX", "1000"])
        .unwrap();
    server
        .command(&["SET", &longer, "b", "PX", "60000"])
        .unwrap();
    server
        .command(&["SET", &theirs, "someone", "PX", "60000"])
        .unwrap();
    server.command(&["SET", &persisted, "d"]).unwrap();
    let keys = [&*renewed, &*longer, &*theirs, &*persisted];
    let args = ["10000", "a", "b", "c", "d"];
    // Loaded first, so that the count below sees EVALSHA only; and the adapter's one-time check of
    // the eviction policy (a CONFIG GET it sends on its first call) done before counting.
    backend
        .eval_script(&RENEW_MANY, &keys, &args)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = server.commands_total();
    let reply = backend
        .eval_script(&RENEW_MANY, &keys, &args)
        .await
        .unwrap();
    // EVALSHA, TIME; GET + PEXPIRE; GET + PEXPIRE + PEXPIRETIME; GET; GET + PEXPIRE + PEXPIRETIME.
    assert_eq!(server.commands_total() - before, 11);
    let ScriptValue::Array(replies) = reply else {
        panic!("{reply:?}")
    };
    let pair = |value: &ScriptValue| match value {
        ScriptValue::Array(pair) => match pair.as_slice() {
            [ScriptValue::Int(pttl), ScriptValue::Int(at)] => (*pttl, *at),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    // Renewed: exactly the TTL asked for; the absolute expiry within a few ms of the server's.
    let (pttl, at) = pair(&replies[0]);
    assert_eq!(pttl, 10_000);
    let real: i64 = server
        .command(&["PEXPIRETIME", &renewed])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        (0..=5).contains(&(at - real)),
        "reported {at}, server {real}"
    );
    // Already longer: left alone, and its own TTL answered, never more than the server's.
    let (pttl, at) = pair(&replies[1]);
    let real: i64 = server
        .command(&["PEXPIRETIME", &longer])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(at, real);
    assert!(pttl > 50_000 && pttl <= 60_000, "{pttl}");
    // Not ours, and without a TTL: not ours, untouched.
    assert_eq!(replies[2], ScriptValue::Int(0));
    assert_eq!(replies[3], ScriptValue::Int(0));
    assert_eq!(server.command(&["PTTL", &persisted]).unwrap().trim(), "-1");
    assert_eq!(server.command(&["GET", &theirs]).unwrap().trim(), "someone");
}
