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

/// Every command the server has counted (`INFO commandstats`), INFO itself left out.
fn commands_total(server: &support::RedisServer) -> u64 {
    let info = server
        .command(&["INFO", "commandstats"])
        .expect("INFO commandstats");
    info.lines()
        .filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_info"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

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

    let before = commands_total(&server);
    let renewed = backend
        .eval_script(&RENEW, &[&key], &["t", "90000"])
        .await
        .unwrap();
    assert!(matches!(renewed, ScriptValue::Array(_)), "{renewed:?}");
    // EVALSHA + GET, PEXPIRE, PTTL, PEXPIRETIME.
    assert_eq!(commands_total(&server) - before, 5, "renew");

    let before = commands_total(&server);
    let extended = backend
        .eval_script(&EXTEND, &[&key], &["t", &far])
        .await
        .unwrap();
    assert!(matches!(extended, ScriptValue::Array(_)), "{extended:?}");
    assert_eq!(commands_total(&server) - before, 5, "extend");
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
