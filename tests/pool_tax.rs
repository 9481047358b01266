//! A deadpool pool's lock commands do not pay a checkout's recycle (`UNWATCH` + `PING`) per call: they
//! share one connection taken out of the pool, which is taken again after it broke.

mod support;

use std::time::Duration;

use support::inputs::{Input, Options};
use support::key_prefix;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_commands_on_a_pool_send_no_ping_or_unwatch_per_call() {
    let server = support::RedisServer::start();
    let backend = Input::DeadpoolPool
        .connect(&server.url(), Options::new())
        .await;
    let key = format!("{}:pool-tax", key_prefix());
    let (pings, unwatches) = (server.calls("ping"), server.calls("unwatch"));
    for n in 0..20 {
        let token = format!("token-{n}");
        let won = backend
            .set_nx(&format!("{key}:{n}"), &token, Duration::from_secs(10))
            .await;
        assert!(matches!(won, Ok(true)), "SET {n}: {won:?}");
    }
    // At most one recycle: the checkout that took the connection for lock commands (none when the pool
    // made it fresh). A checkout per call would have sent 20 of each.
    let pinged = server.calls("ping") - pings;
    let unwatched = server.calls("unwatch") - unwatches;
    assert!(pinged <= 1, "{pinged} PINGs for 20 SETs");
    assert!(unwatched <= 1, "{unwatched} UNWATCHes for 20 SETs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_takes_a_new_lock_connection_after_its_connection_was_killed() {
    let server = support::RedisServer::start();
    let backend = Input::DeadpoolPool
        .connect(&server.url(), Options::new())
        .await;
    let key = format!("{}:retake", key_prefix());
    let first = backend.set_nx(&key, "a", Duration::from_secs(10)).await;
    assert!(matches!(first, Ok(true)), "{first:?}");
    server
        .command(&["CLIENT", "KILL", "TYPE", "normal"])
        .expect("kill every client connection");
    // The call on the killed connection may fail (transiently) or be re-sent by redis-rs; within a few
    // calls the backend is on a new connection and answers again.
    let mut answered = None;
    for _ in 0..5 {
        match backend.set_nx(&key, "a", Duration::from_secs(10)).await {
            Ok(won) => {
                answered = Some(won);
                break;
            }
            Err(error) => assert!(error.is_transient(), "{error}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        answered,
        Some(true),
        "our own token again, on a new connection"
    );
}
