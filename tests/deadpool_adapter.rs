#![cfg(feature = "deadpool")]
//! The deadpool-redis / redis-rs adapter against a real `redis-server`, over both a pool and a single
//! multiplexed connection.

mod support;

use std::error::Error as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lock_core::script::{EXTEND, IS_OWNER, RELEASE, RENEW};
use lock_core::{BackendError, LockBackend, Script, ScriptValue};
use redlease::deadpool::DeadpoolBackend;
use support::inputs::{Input, Options};
use support::{RedisServer, key_prefix};

/// Far above anything a healthy local call needs, far below "hung": the CI box has 2 noisy cores.
const BOUND: Duration = Duration::from_secs(3);

/// The inputs the deadpool adapter takes.
const KINDS: [Input; 2] = [Input::DeadpoolPool, Input::RedisConnection];

async fn backend(kind: Input, url: &str) -> DeadpoolBackend {
    kind.client(url, &Options::new())
        .await
        .deadpool()
        .unwrap_or_else(|| panic!("{kind} is not a redis-rs input"))
}

fn cmd(server: &RedisServer, args: &[&str]) -> String {
    server
        .command(args)
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// The `{pttl, pexpiretime}` reply of RENEW and EXTEND.
#[track_caller]
fn pttl_and_expiry(reply: &ScriptValue, kind: Input) -> (i64, i64) {
    match reply {
        ScriptValue::Array(items) => match items.as_slice() {
            [ScriptValue::Int(left), ScriptValue::Int(expiry)] => (*left, *expiry),
            _ => panic!("{kind:?}: expected {{pttl, pexpiretime}}, got {reply:?}"),
        },
        _ => panic!("{kind:?}: expected {{pttl, pexpiretime}}, got {reply:?}"),
    }
}

fn int(value: i64) -> ScriptValue {
    ScriptValue::Int(value)
}

fn string(value: &str) -> ScriptValue {
    ScriptValue::Str(value.to_owned())
}

/// The `name:calls=N` counter of `INFO commandstats`, 0 when the command was never called.
fn calls(server: &RedisServer, command: &str) -> u64 {
    let info = cmd(server, &["INFO", "commandstats"]);
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|line| line.trim().strip_prefix(&prefix))
        .map(|rest| rest.split(',').next().unwrap().parse().unwrap())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_nx_sets_with_ttl_and_refuses_other_values() {
    let server = RedisServer::start();
    for kind in KINDS {
        let backend = backend(kind, &server.url()).await;
        let key = format!("{}set", key_prefix());
        let ours = "tok-α:{1} \r\n\"end\"";

        assert!(
            backend
                .set_nx(&key, ours, Duration::from_millis(4_000))
                .await
                .unwrap(),
            "{kind:?}: first set"
        );
        assert_eq!(
            cmd(&server, &["GET", &key]),
            ours,
            "{kind:?}: stored exactly"
        );
        let pttl: i64 = cmd(&server, &["PTTL", &key]).parse().unwrap();
        assert!((2_000..=4_000).contains(&pttl), "{kind:?}: PTTL {pttl}");

        assert!(
            !backend
                .set_nx(&key, "someone-else", Duration::from_secs(60))
                .await
                .unwrap(),
            "{kind:?}: another value is there"
        );
        assert_eq!(cmd(&server, &["GET", &key]), ours, "{kind:?}: untouched");

        assert!(
            backend
                .set_nx(&key, ours, Duration::from_secs(60))
                .await
                .unwrap(),
            "{kind:?}: the key already holds exactly our value"
        );
        let pttl_after: i64 = cmd(&server, &["PTTL", &key]).parse().unwrap();
        assert!(
            pttl_after <= pttl,
            "{kind:?}: TTL not reset ({pttl_after} > {pttl})"
        );

        // A prefix of our value is not our value.
        assert!(
            !backend
                .set_nx(&key, "tok-α", Duration::from_secs(1))
                .await
                .unwrap(),
            "{kind:?}: prefix"
        );

        // Sub-second TTLs are sent in milliseconds, not rounded to seconds.
        let short = format!("{}short", key_prefix());
        assert!(
            backend
                .set_nx(&short, "v", Duration::from_millis(1_500))
                .await
                .unwrap()
        );
        let pttl: i64 = cmd(&server, &["PTTL", &short]).parse().unwrap();
        assert!((500..=1_500).contains(&pttl), "{kind:?}: PTTL {pttl}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_set_nx_has_exactly_one_winner() {
    let server = RedisServer::start();
    for kind in KINDS {
        let backend = Arc::new(backend(kind, &server.url()).await);
        let key = format!("{}race", key_prefix());
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let backend = Arc::clone(&backend);
                let key = key.clone();
                tokio::spawn(async move {
                    backend
                        .set_nx(&key, &format!("tok-{i}"), Duration::from_secs(10))
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut winners = 0;
        for task in tasks {
            winners += usize::from(task.await.unwrap());
        }
        assert_eq!(winners, 1, "{kind:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_type_is_permanent() {
    let server = RedisServer::start();
    for kind in KINDS {
        let backend = backend(kind, &server.url()).await;
        let key = format!("{}list", key_prefix());
        cmd(&server, &["RPUSH", &key, "x"]);
        let err = backend
            .set_nx(&key, "v", Duration::from_secs(1))
            .await
            .expect_err("SET .. GET on a list");
        assert!(!err.is_transient(), "{kind:?}: {err:?}");
        assert_eq!(err.backend(), "deadpool");
        assert!(
            err.source().unwrap().to_string().contains("WRONGTYPE"),
            "{kind:?}: {err:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_scripts_reply_integers() {
    let server = RedisServer::start();
    for kind in KINDS {
        let backend = backend(kind, &server.url()).await;
        let key = format!("{}scripts", key_prefix());
        let run = async |script: &Script, args: &[&str]| {
            backend.eval_script(script, &[&key], args).await.unwrap()
        };

        assert_eq!(
            run(&RELEASE, &["tok"]).await,
            int(-1),
            "{kind:?}: nothing to release (no key)"
        );
        assert_eq!(run(&IS_OWNER, &["tok"]).await, int(0), "{kind:?}");
        assert_eq!(run(&EXTEND, &["tok", "1000"]).await, int(0), "{kind:?}");
        assert_eq!(run(&RENEW, &["tok", "1000"]).await, int(0), "{kind:?}");

        assert!(
            backend
                .set_nx(&key, "tok", Duration::from_secs(10))
                .await
                .unwrap()
        );
        assert_eq!(run(&IS_OWNER, &["tok"]).await, int(1), "{kind:?}");
        assert_eq!(run(&IS_OWNER, &["other"]).await, int(0), "{kind:?}");
        // EXTEND takes an absolute expiry (Unix ms, server clock) and answers `{pttl, pexpiretime}`.
        let expiry: i64 = cmd(&server, &["PEXPIRETIME", &key]).parse().unwrap();
        let later = (expiry + 5_000).to_string();
        let extended = run(&EXTEND, &["tok", &later]).await;
        let (left, new_expiry) = pttl_and_expiry(&extended, kind);
        assert_eq!(new_expiry, expiry + 5_000, "{kind:?}: {extended:?}");
        assert!((12_000..=15_000).contains(&left), "{kind:?}: {extended:?}");
        let pttl: i64 = cmd(&server, &["PTTL", &key]).parse().unwrap();
        assert!((12_000..=15_000).contains(&pttl), "{kind:?}: PTTL {pttl}");
        // RENEW never shortens a longer TTL, and sets a shorter one to its argument.
        let (left, _) = pttl_and_expiry(&run(&RENEW, &["tok", "3000"]).await, kind);
        assert!((12_000..=15_000).contains(&left), "{kind:?}: PTTL {left}");
        let (left, _) = pttl_and_expiry(&run(&RENEW, &["tok", "20000"]).await, kind);
        assert!((19_000..=20_000).contains(&left), "{kind:?}: PTTL {left}");
        let pttl: i64 = cmd(&server, &["PTTL", &key]).parse().unwrap();
        assert!((19_000..=20_000).contains(&pttl), "{kind:?}: PTTL {pttl}");
        assert_eq!(run(&RELEASE, &["other"]).await, int(0), "{kind:?}");
        assert_eq!(run(&RELEASE, &["tok"]).await, int(1), "{kind:?}");
        assert_eq!(cmd(&server, &["EXISTS", &key]), "0", "{kind:?}: released");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_replies_map_to_script_values() {
    let server = RedisServer::start();
    for kind in KINDS {
        let backend = backend(kind, &server.url()).await;
        let key = format!("{}shapes", key_prefix());
        let cases = [
            (
                "return {1,'a',false}",
                ScriptValue::Array(vec![int(1), string("a"), ScriptValue::Nil]),
            ),
            ("return nil", ScriptValue::Nil),
            ("return false", ScriptValue::Nil),
            ("return 42", int(42)),
            ("return -7", int(-7)),
            ("return 'x'", string("x")),
            ("return ''", string("")),
            ("return redis.status_reply('PONG')", string("PONG")),
            ("return redis.call('set', KEYS[1], ARGV[1])", string("OK")),
            ("return redis.call('get', KEYS[1])", string("v1")),
            (
                "return {KEYS[1], ARGV[1], ARGV[2], #KEYS, #ARGV}",
                ScriptValue::Array(vec![
                    string(&key),
                    string("v1"),
                    string("two words"),
                    int(1),
                    int(2),
                ]),
            ),
            (
                "return {{1, {2}}, {}}",
                ScriptValue::Array(vec![
                    ScriptValue::Array(vec![int(1), ScriptValue::Array(vec![int(2)])]),
                    ScriptValue::Array(vec![]),
                ]),
            ),
        ];
        for (source, expected) in cases {
            let script = Script::new("shape", source);
            let got = backend
                .eval_script(&script, &[&key], &["v1", "two words"])
                .await
                .unwrap_or_else(|e| panic!("{kind:?}: {source}: {e:?}"));
            assert_eq!(got, expected, "{kind:?}: {source}");
        }

        // No keys and no arguments at all.
        let count = Script::new("count", "return #KEYS + #ARGV");
        assert_eq!(
            backend.eval_script(&count, &[], &[]).await.unwrap(),
            int(0),
            "{kind:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_digests_match_the_server() {
    let server = RedisServer::start();
    let adhoc = Script::new("t", "return {1,'a',false}");
    for script in [&*RELEASE, &*EXTEND, &*RENEW, &*IS_OWNER, &adhoc] {
        assert_eq!(
            cmd(&server, &["SCRIPT", "LOAD", script.source()]),
            script.sha1(),
            "{}",
            script.name()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evalsha_falls_back_to_eval_on_noscript() {
    let server = RedisServer::start();
    for kind in KINDS {
        let backend = backend(kind, &server.url()).await;
        let key = format!("{}noscript", key_prefix());
        // A source no other test sends, so the server cannot have it cached.
        let script = Script::new(
            "fresh",
            format!("-- {key}\nreturn redis.call('exists', KEYS[1])"),
        );

        cmd(&server, &["SCRIPT", "FLUSH"]);
        cmd(&server, &["CONFIG", "RESETSTAT"]);
        assert_eq!(
            backend.eval_script(&script, &[&key], &[]).await.unwrap(),
            int(0),
            "{kind:?}: after SCRIPT FLUSH"
        );
        assert_eq!(
            (calls(&server, "evalsha"), calls(&server, "eval")),
            (1, 1),
            "{kind:?}"
        );
        assert_eq!(
            cmd(&server, &["SCRIPT", "EXISTS", script.sha1()]),
            "1",
            "{kind:?}: EVAL cached the script"
        );

        // Cached now: EVALSHA alone.
        assert_eq!(
            backend.eval_script(&script, &[&key], &[]).await.unwrap(),
            int(0)
        );
        assert_eq!(
            (calls(&server, "evalsha"), calls(&server, "eval")),
            (2, 1),
            "{kind:?}"
        );

        // The lock scripts too (no key to release: -1).
        cmd(&server, &["SCRIPT", "FLUSH"]);
        assert_eq!(
            backend
                .eval_script(&RELEASE, &[&key], &["tok"])
                .await
                .unwrap(),
            int(-1),
            "{kind:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_runtime_errors_are_permanent() {
    let server = RedisServer::start();
    for kind in KINDS {
        let backend = backend(kind, &server.url()).await;
        let key = format!("{}boom", key_prefix());
        for source in [
            "error('boom')",
            "return redis.call('no-such-command')",
            "return redis.error_reply('ERR custom failure')",
            "this is not lua",
        ] {
            let script = Script::new("boom", source);
            let err = backend
                .eval_script(&script, &[&key], &[])
                .await
                .expect_err(source);
            assert!(!err.is_transient(), "{kind:?}: {source}: {err:?}");
            assert_eq!(err.backend(), "deadpool");
            assert!(err.source().is_some());
        }
        // The connection is still usable afterwards.
        assert_eq!(
            backend
                .eval_script(&IS_OWNER, &[&key], &["t"])
                .await
                .unwrap(),
            int(0)
        );
    }
}

fn assert_transient_within(err: &BackendError, elapsed: Duration, what: &str) {
    assert!(elapsed < BOUND, "{what}: took {elapsed:?}");
    assert!(err.is_transient(), "{what}: {err:?}");
    assert_eq!(err.backend(), "deadpool", "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_server_times_out_transiently() {
    let server = RedisServer::start();
    let timeout = Duration::from_millis(300);
    for kind in KINDS {
        let backend = backend(kind, &server.url()).await.command_timeout(timeout);
        let key = format!("{}paused", key_prefix());
        // Warm up: a connection exists and works.
        assert!(
            backend
                .set_nx(&key, "a", Duration::from_secs(30))
                .await
                .unwrap()
        );

        server.pause();
        let started = Instant::now();
        let set = backend.set_nx(&key, "b", Duration::from_secs(30)).await;
        let set_elapsed = started.elapsed();
        let started_eval = Instant::now();
        let eval = backend.eval_script(&IS_OWNER, &[&key], &["a"]).await;
        let eval_elapsed = started_eval.elapsed();
        server.resume();

        let err = set.expect_err("set_nx on a paused server");
        assert_transient_within(&err, set_elapsed, &format!("{kind:?} set_nx"));
        assert!(set_elapsed >= timeout / 2, "{kind:?}: {set_elapsed:?}");
        let err = eval.expect_err("eval on a paused server");
        assert_transient_within(&err, eval_elapsed, &format!("{kind:?} eval"));
        assert_eq!(
            err.source().unwrap().to_string(),
            "no reply within 300ms",
            "{kind:?}: the adapter's bound fired first"
        );

        // Works again once the server answers.
        assert_eq!(
            backend
                .eval_script(&IS_OWNER, &[&key], &["a"])
                .await
                .unwrap(),
            int(1),
            "{kind:?}: after resume"
        );
    }

    // A pool with no connection yet: connecting to a frozen server is bounded too.
    let pool = backend(Input::DeadpoolPool, &server.url())
        .await
        .command_timeout(timeout);
    server.pause();
    let started = Instant::now();
    let result = pool
        .set_nx(
            &format!("{}cold", key_prefix()),
            "v",
            Duration::from_secs(1),
        )
        .await;
    let elapsed = started.elapsed();
    server.resume();
    assert_transient_within(&result.expect_err("paused"), elapsed, "cold pool");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rs_response_timeout_is_transient() {
    // With the adapter's bound well above it, redis-rs's own 500 ms response timeout fires first.
    let server = RedisServer::start();
    for kind in KINDS {
        let backend = backend(kind, &server.url()).await;
        let key = format!("{}slow", key_prefix());
        assert!(
            backend
                .set_nx(&key, "a", Duration::from_secs(30))
                .await
                .unwrap()
        );

        server.pause();
        let started = Instant::now();
        let result = backend.eval_script(&IS_OWNER, &[&key], &["a"]).await;
        let elapsed = started.elapsed();
        server.resume();
        let err = result.expect_err("paused");
        assert!(err.is_transient(), "{kind:?}: {err:?}");
        // A pool first fails to recycle its idle connection (500 ms PING), then fails to set up a new one
        // (the 1 s connection timeout): 1.5 s.
        assert!(elapsed < Duration::from_secs(5), "{kind:?}: {elapsed:?}");
        assert_ne!(
            err.source().unwrap().to_string(),
            "no reply within 5s",
            "{kind:?}: redis-rs timed out first"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_fails_fast() {
    for kind in KINDS {
        let mut server = RedisServer::start();
        let backend = backend(kind, &server.url())
            .await
            .command_timeout(Duration::from_millis(300));
        let key = format!("{}killed", key_prefix());
        assert!(
            backend
                .set_nx(&key, "a", Duration::from_secs(30))
                .await
                .unwrap()
        );

        server.kill();
        let started = Instant::now();
        let err = backend
            .set_nx(&key, "a", Duration::from_secs(30))
            .await
            .expect_err("server is gone");
        assert_transient_within(&err, started.elapsed(), &format!("{kind:?} set_nx"));
        let started = Instant::now();
        let err = backend
            .eval_script(&RELEASE, &[&key], &["a"])
            .await
            .expect_err("server is gone");
        assert_transient_within(&err, started.elapsed(), &format!("{kind:?} eval"));

        server.restart();
        let after_restart = backend.set_nx(&key, "a", Duration::from_secs(30)).await;
        match kind {
            // The pool replaces the dead connection.
            Input::DeadpoolPool => assert!(
                after_restart.unwrap(),
                "pool reconnects to the restarted (empty) server"
            ),
            // A lone MultiplexedConnection never reconnects (documented in the crate docs).
            Input::RedisConnection => assert!(after_restart.unwrap_err().is_transient()),
            other => unreachable!("{other} is not in KINDS"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_hooks_use_tokio() {
    let server = RedisServer::start();
    for kind in KINDS {
        let backend = backend(kind, &server.url()).await;
        let runtime = backend.runtime().expect("deadpool has a runtime").clone();
        assert!(
            backend.clone().runtime().unwrap().same_as(&runtime),
            "{kind:?}: clones share it"
        );

        let (tx, rx) = tokio::sync::oneshot::channel();
        assert!(runtime.spawn(Box::pin(async move {
            tx.send(std::thread::current().name().map(str::to_owned))
                .unwrap();
        })));
        let thread = tokio::time::timeout(BOUND, rx).await.unwrap().unwrap();
        assert!(
            thread.is_some_and(|name| name.contains("tokio")),
            "{kind:?}"
        );

        // No runtime on a plain thread: the task is dropped, never run, and nothing blocks.
        let outside = runtime.clone();
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let spawned = std::thread::spawn(move || {
            outside.spawn(Box::pin(async move { tx.send(()).unwrap() }))
        })
        .join()
        .unwrap();
        assert!(!spawned, "{kind:?}");
        assert!(rx.try_recv().is_err(), "{kind:?}: the task was dropped");

        let started = Instant::now();
        runtime.sleep(Duration::from_millis(50)).await;
        assert!(started.elapsed() >= Duration::from_millis(50));

        assert!(format!("{backend:?}").starts_with("DeadpoolBackend {"));
    }
}
