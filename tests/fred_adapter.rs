#![cfg(feature = "fred")]
//! The fred adapter against a real `redis-server`: the exact commands it sends, the reply shapes it
//! maps, the `NOSCRIPT` fallback, its time bound and its error classification, for both a `Client` and
//! a `Pool`.

mod support;

use std::error::Error as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::ClientLike;
use lock_core::script::{EXTEND, IS_OWNER, RELEASE, RENEW};
use lock_core::{BackendError, LockBackend, Script, ScriptValue};
use redlease::fred::{FredBackend, fred};
use support::inputs::{Input, Options};
use support::{RedisServer, key_prefix};

/// Generous slack on top of a call's bound, for a loaded machine.
const SLACK_BOUND: Duration = Duration::from_secs(3);

/// The fred adapter over a new client of `input` (a fred one), connected to `url`.
async fn fred_backend(input: Input, url: &str, options: Options) -> FredBackend {
    input
        .client(url, &options)
        .await
        .fred()
        .unwrap_or_else(|| panic!("{input} is not a fred input"))
}

/// A backend over a `Client` and one over a `Pool` of 2, both connected to `server`.
async fn backends(server: &RedisServer) -> Vec<(&'static str, FredBackend)> {
    let url = server.url();
    let mut backends = Vec::new();
    for input in [Input::FredClient, Input::FredPool] {
        backends.push((
            input.name(),
            fred_backend(input, &url, Options::new()).await,
        ));
    }
    backends
}

fn get(server: &RedisServer, key: &str) -> String {
    server.command(&["GET", key]).expect("GET")
}

fn pttl(server: &RedisServer, key: &str) -> i64 {
    server
        .command(&["PTTL", key])
        .expect("PTTL")
        .parse()
        .expect("PTTL is an integer")
}

/// The `name:calls=N` counter of `INFO commandstats`, 0 when the command was never called.
fn calls(server: &RedisServer, command: &str) -> u64 {
    let info = server.command(&["INFO", "commandstats"]).expect("INFO");
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|line| line.trim().strip_prefix(&prefix))
        .map(|rest| rest.split(',').next().unwrap().parse().unwrap())
        .unwrap_or(0)
}

/// `(EVALSHA calls, EVAL calls)` since the last `CONFIG RESETSTAT`.
fn script_calls(server: &RedisServer) -> (u64, u64) {
    (calls(server, "evalsha"), calls(server, "eval"))
}

fn str_(s: &str) -> ScriptValue {
    ScriptValue::Str(s.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_nx_sets_with_px_refuses_others_and_recognises_its_own_write() {
    let server = RedisServer::start();
    for (kind, backend) in backends(&server).await {
        let key = format!("{}{kind}:lock", key_prefix());

        assert!(
            backend
                .set_nx(&key, "token-1", Duration::from_millis(10_000))
                .await
                .unwrap(),
            "{kind}: the first SET NX sets the key"
        );
        assert_eq!(get(&server, &key), "token-1", "{kind}");
        let ttl = pttl(&server, &key);
        assert!((9_000..=10_000).contains(&ttl), "{kind}: PTTL {ttl}");

        assert!(
            !backend
                .set_nx(&key, "token-2", Duration::from_millis(10_000))
                .await
                .unwrap(),
            "{kind}: another token is refused"
        );
        assert_eq!(
            get(&server, &key),
            "token-1",
            "{kind}: the holder's value stays"
        );

        // A client re-sending our own write after a reconnect finds exactly our value: that is ours.
        assert!(
            backend
                .set_nx(&key, "token-1", Duration::from_millis(10_000))
                .await
                .unwrap(),
            "{kind}: our own value counts as set"
        );
        assert_eq!(get(&server, &key), "token-1", "{kind}");

        // A prefix of the held value is not the held value.
        assert!(
            !backend
                .set_nx(&key, "token-", Duration::from_millis(10_000))
                .await
                .unwrap(),
            "{kind}"
        );

        // Values and keys are stored exactly as given.
        let odd_key = format!("{}{kind}:{{slot}} ü \"q\"", key_prefix());
        let odd_value = "tök\u{e9}n with spaces, \"quotes\" and \\ backslash";
        assert!(
            backend
                .set_nx(&odd_key, odd_value, Duration::from_secs(60))
                .await
                .unwrap(),
            "{kind}"
        );
        assert_eq!(get(&server, &odd_key), odd_value, "{kind}");
        let ttl = pttl(&server, &odd_key);
        assert!((59_000..=60_000).contains(&ttl), "{kind}: PTTL {ttl}");

        // A very short TTL really is milliseconds.
        let short = format!("{}{kind}:short", key_prefix());
        assert!(
            backend
                .set_nx(&short, "t", Duration::from_millis(150))
                .await
                .unwrap()
        );
        let ttl = pttl(&server, &short);
        assert!((1..=150).contains(&ttl), "{kind}: PTTL {ttl}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_nx_on_a_key_of_another_type_is_a_permanent_error() {
    let server = RedisServer::start();
    for (kind, backend) in backends(&server).await {
        let key = format!("{}{kind}:hash", key_prefix());
        server.command(&["HSET", &key, "f", "v"]).unwrap();
        let err = backend
            .set_nx(&key, "t", Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_permanent(&err, "WRONGTYPE");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_script_maps_reply_shapes() {
    let server = RedisServer::start();
    for (kind, backend) in backends(&server).await {
        let key = format!("{}{kind}:lock", key_prefix());
        let run = |script: Script, keys: Vec<String>, args: Vec<&'static str>| {
            let backend = backend.clone();
            async move {
                let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                backend.eval_script(&script, &keys, &args).await.unwrap()
            }
        };

        // The lock scripts: integers.
        assert!(
            backend
                .set_nx(&key, "tok", Duration::from_secs(10))
                .await
                .unwrap()
        );
        let owner = backend
            .eval_script(&IS_OWNER, &[&key], &["tok"])
            .await
            .unwrap();
        assert_eq!(owner, ScriptValue::Int(1), "{kind}");
        // RENEW and EXTEND answer `{pttl, pexpiretime}` after their write.
        let renewed = backend
            .eval_script(&RENEW, &[&key], &["tok", "20000"])
            .await
            .unwrap();
        let (left, expiry) = pttl_and_expiry(&renewed, kind);
        assert!((19_000..=20_000).contains(&left), "{kind}: {renewed:?}");
        let ttl = pttl(&server, &key);
        assert!((19_000..=20_000).contains(&ttl), "{kind}: PTTL {ttl}");
        // EXTEND takes an absolute expiry (Unix ms, server clock): 10 s later than now.
        let later = (expiry + 10_000).to_string();
        let extended = backend
            .eval_script(&EXTEND, &[&key], &["tok", &later])
            .await
            .unwrap();
        let (left, new_expiry) = pttl_and_expiry(&extended, kind);
        assert_eq!(new_expiry, expiry + 10_000, "{kind}: {extended:?}");
        assert!((29_000..=30_000).contains(&left), "{kind}: {extended:?}");
        let ttl = pttl(&server, &key);
        assert!((29_000..=30_000).contains(&ttl), "{kind}: PTTL {ttl}");
        let not_ours = backend
            .eval_script(&RELEASE, &[&key], &["other"])
            .await
            .unwrap();
        assert_eq!(not_ours, ScriptValue::Int(0), "{kind}");
        let released = backend
            .eval_script(&RELEASE, &[&key], &["tok"])
            .await
            .unwrap();
        assert_eq!(released, ScriptValue::Int(1), "{kind}");
        assert_eq!(get(&server, &key), "(nil)", "{kind}");

        // Ad-hoc scripts: every shape.
        assert_eq!(
            run(Script::new("t", "return {1,'a',false}"), vec![], vec![]).await,
            ScriptValue::Array(vec![ScriptValue::Int(1), str_("a"), ScriptValue::Nil]),
            "{kind}"
        );
        assert_eq!(
            run(Script::new("t", "return nil"), vec![], vec![]).await,
            ScriptValue::Nil,
            "{kind}"
        );
        assert_eq!(
            run(Script::new("t", "return false"), vec![], vec![]).await,
            ScriptValue::Nil,
            "{kind}"
        );
        assert_eq!(
            run(Script::new("t", "return true"), vec![], vec![]).await,
            ScriptValue::Int(1),
            "{kind}"
        );
        assert_eq!(
            run(Script::new("t", "return -42"), vec![], vec![]).await,
            ScriptValue::Int(-42),
            "{kind}"
        );
        assert_eq!(
            run(Script::new("t", "return 'x y'"), vec![], vec![]).await,
            str_("x y"),
            "{kind}"
        );
        assert_eq!(
            run(
                Script::new("t", "return redis.status_reply('OK')"),
                vec![],
                vec![]
            )
            .await,
            str_("OK"),
            "{kind}"
        );
        assert_eq!(
            run(Script::new("t", "return {}"), vec![], vec![]).await,
            ScriptValue::Array(vec![]),
            "{kind}"
        );
        assert_eq!(
            run(
                Script::new("t", "return {{1, {'deep'}}, 'b'}"),
                vec![],
                vec![]
            )
            .await,
            ScriptValue::Array(vec![
                ScriptValue::Array(vec![
                    ScriptValue::Int(1),
                    ScriptValue::Array(vec![str_("deep")])
                ]),
                str_("b"),
            ]),
            "{kind}"
        );
        // Keys and args arrive in order and unchanged.
        assert_eq!(
            run(
                Script::new(
                    "t",
                    "return {#KEYS, #ARGV, KEYS[1], KEYS[2], ARGV[1], ARGV[2]}"
                ),
                vec![format!("{key}:a"), format!("{key}:b")],
                vec!["1", "two words"],
            )
            .await,
            ScriptValue::Array(vec![
                ScriptValue::Int(2),
                ScriptValue::Int(2),
                ScriptValue::Str(format!("{key}:a")),
                ScriptValue::Str(format!("{key}:b")),
                str_("1"),
                str_("two words"),
            ]),
            "{kind}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_sha1_is_what_the_server_computes() {
    let server = RedisServer::start();
    let adhoc = Script::new("t", "return {1,'a',false}");
    for script in [&*RELEASE, &*EXTEND, &*RENEW, &*IS_OWNER, &adhoc] {
        let loaded = server
            .command(&["SCRIPT", "LOAD", script.source()])
            .unwrap();
        assert_eq!(script.sha1(), loaded, "{}", script.name());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_script_falls_back_to_eval_after_a_script_flush() {
    let server = RedisServer::start();
    for (kind, backend) in backends(&server).await {
        let key = format!("{}{kind}:lock", key_prefix());
        assert!(
            backend
                .set_nx(&key, "tok", Duration::from_secs(10))
                .await
                .unwrap()
        );
        // Cached by a first call, then sent by digest alone: EVALSHA, no EVAL.
        let owner = backend
            .eval_script(&IS_OWNER, &[&key], &["tok"])
            .await
            .unwrap();
        assert_eq!(owner, ScriptValue::Int(1), "{kind}");
        server.command(&["CONFIG", "RESETSTAT"]).unwrap();
        let owner = backend
            .eval_script(&IS_OWNER, &[&key], &["tok"])
            .await
            .unwrap();
        assert_eq!(owner, ScriptValue::Int(1), "{kind}");
        assert_eq!(script_calls(&server), (1, 0), "{kind}: a cached script");

        assert_eq!(server.command(&["SCRIPT", "FLUSH"]).unwrap(), "OK");
        assert_eq!(
            server
                .command(&["SCRIPT", "EXISTS", IS_OWNER.sha1()])
                .unwrap(),
            "0"
        );
        server.command(&["CONFIG", "RESETSTAT"]).unwrap();
        // EVALSHA, answered NOSCRIPT, then EVAL, which caches the script again on the server (for every
        // client of a pool: the cache is the server's).
        let owner = backend
            .eval_script(&IS_OWNER, &[&key], &["tok"])
            .await
            .unwrap();
        assert_eq!(owner, ScriptValue::Int(1), "{kind}");
        assert_eq!(script_calls(&server), (1, 1), "{kind}: after SCRIPT FLUSH");
        assert_eq!(
            server
                .command(&["SCRIPT", "EXISTS", IS_OWNER.sha1()])
                .unwrap(),
            "1",
            "{kind}"
        );
        // Later calls, through every client of a pool, are EVALSHA hits again.
        for _ in 0..3 {
            let owner = backend
                .eval_script(&IS_OWNER, &[&key], &["tok"])
                .await
                .unwrap();
            assert_eq!(owner, ScriptValue::Int(1), "{kind}");
        }
        assert_eq!(script_calls(&server), (4, 1), "{kind}: cached again");

        // A script the server has never seen works on its first call.
        let fresh = Script::new(
            "fresh",
            format!("return '{}'", uuid::Uuid::new_v4().simple()),
        );
        server.command(&["CONFIG", "RESETSTAT"]).unwrap();
        let reply = backend.eval_script(&fresh, &[], &[]).await.unwrap();
        assert!(
            matches!(&reply, ScriptValue::Str(s) if fresh.source().contains(s.as_str())),
            "{kind}: {reply:?}"
        );
        assert_eq!(script_calls(&server), (1, 1), "{kind}: a script never seen");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_errors_are_permanent() {
    let server = RedisServer::start();
    for (kind, backend) in backends(&server).await {
        let key = format!("{}{kind}:string", key_prefix());
        server.command(&["SET", &key, "not a number"]).unwrap();

        let incr = Script::new("incr", "return redis.call('incr', KEYS[1])");
        let err = backend.eval_script(&incr, &[&key], &[]).await.unwrap_err();
        assert_permanent(&err, "not an integer");

        let wrong_type = Script::new("hget", "return redis.call('hget', KEYS[1], 'f')");
        let err = backend
            .eval_script(&wrong_type, &[&key], &[])
            .await
            .unwrap_err();
        assert_permanent(&err, "WRONGTYPE");

        let broken = Script::new("broken", "this is not lua");
        let err = backend.eval_script(&broken, &[], &[]).await.unwrap_err();
        assert_permanent(&err, "compiling");

        let raised = Script::new("raised", "return redis.error_reply('MY failure')");
        let err = backend.eval_script(&raised, &[], &[]).await.unwrap_err();
        assert_permanent(&err, "MY failure");

        // A server error a retry may fix is transient, also when a script raises it.
        let loading = Script::new("loading", "return redis.error_reply('LOADING try later')");
        let err = backend.eval_script(&loading, &[], &[]).await.unwrap_err();
        assert!(err.is_transient(), "{kind}: {err:?}");
        assert_eq!(err.backend(), "fred");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_server_gives_a_transient_timeout_within_the_bound() {
    let server = RedisServer::start();
    let bound = Duration::from_millis(300);
    let backends: Vec<_> = backends(&server)
        .await
        .into_iter()
        .map(|(kind, backend)| (kind, backend.command_timeout(bound)))
        .collect();
    let key = format!("{}lock", key_prefix());
    for (_, backend) in &backends {
        // Connected and warm.
        backend
            .eval_script(&IS_OWNER, &[&key], &["tok"])
            .await
            .unwrap();
    }

    server.pause();
    for (kind, backend) in &backends {
        let started = Instant::now();
        let err = backend
            .set_nx(&key, "tok", Duration::from_secs(10))
            .await
            .unwrap_err();
        let took = started.elapsed();
        assert!(
            took >= bound && took < SLACK_BOUND,
            "{kind}: set_nx took {took:?}"
        );
        assert_timed_out(&err, bound);

        let started = Instant::now();
        let err = backend
            .eval_script(&RELEASE, &[&key], &["tok"])
            .await
            .unwrap_err();
        let took = started.elapsed();
        assert!(
            took >= bound && took < SLACK_BOUND,
            "{kind}: eval took {took:?}"
        );
        assert_timed_out(&err, bound);
    }
    server.resume();

    // The connections are still in step: each later call gets its own reply, not a late one.
    let echo = Script::new("echo", "return ARGV[1]");
    for (kind, backend) in &backends {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let nonce = uuid::Uuid::new_v4().simple().to_string();
            match backend.eval_script(&echo, &[], &[&nonce]).await {
                Ok(reply) => {
                    assert_eq!(reply, ScriptValue::Str(nonce), "{kind}");
                    break;
                }
                Err(err) if err.is_transient() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(err) => panic!("{kind}: no recovery after resume: {err:?}"),
            }
        }
        let fresh = format!("{key}:{kind}");
        assert!(
            backend
                .set_nx(&fresh, "tok", Duration::from_secs(10))
                .await
                .unwrap(),
            "{kind}"
        );
        assert!(
            !backend
                .set_nx(&fresh, "other", Duration::from_secs(10))
                .await
                .unwrap(),
            "{kind}"
        );
    }
    // A command already written to the socket cannot be taken back: the SET that timed out while the
    // server was paused may still have run on resume (and the RELEASE after it, in either order across
    // a pool's connections). That is why a timeout is reported as transient and never as "not
    // acquired", and why `set_nx` treats finding its own value as success.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_gives_an_error_not_a_hang() {
    let mut server = RedisServer::start();
    let url = server.url();
    let bound = Duration::from_millis(500);

    // Without a reconnect policy fred fails the calls itself; with one that retries forever, commands
    // wait for a connection and only our bound ends them.
    let plain_client = fred_backend(Input::FredClient, &url, Options::new())
        .await
        .command_timeout(bound);
    let plain_pool = fred_backend(Input::FredPool, &url, Options::new())
        .await
        .command_timeout(bound);
    let retrying = Options::new().fred_reconnect(Duration::from_millis(100));
    let retrying = fred_backend(Input::FredClient, &url, retrying)
        .await
        .command_timeout(bound);

    let key = format!("{}lock", key_prefix());
    let all = [
        ("client", &plain_client),
        ("pool", &plain_pool),
        ("retrying client", &retrying),
    ];
    for (_, backend) in all {
        backend
            .eval_script(&IS_OWNER, &[&key], &["tok"])
            .await
            .unwrap();
    }

    server.kill();
    for (kind, backend) in all {
        for attempt in 0..3 {
            let started = Instant::now();
            let err = backend
                .set_nx(&key, "tok", Duration::from_secs(10))
                .await
                .unwrap_err();
            let took = started.elapsed();
            assert!(
                took < SLACK_BOUND,
                "{kind} #{attempt}: set_nx took {took:?}"
            );
            assert_eq!(err.backend(), "fred");
            // An outage passes on its own (a restart, a reconnect): never a permanent failure.
            assert!(
                err.is_transient(),
                "{kind} #{attempt}: set_nx after kill: {err:?} ({took:?})"
            );

            let started = Instant::now();
            let err = backend
                .eval_script(&RELEASE, &[&key], &["tok"])
                .await
                .unwrap_err();
            let took = started.elapsed();
            assert!(took < SLACK_BOUND, "{kind} #{attempt}: eval took {took:?}");
            assert_eq!(err.backend(), "fred");
            assert!(
                err.is_transient(),
                "{kind} #{attempt}: eval after kill: {err:?} ({took:?})"
            );
        }
    }
    // The retrying client never gives up: its failures are timeouts, which are transient.
    let err = retrying
        .set_nx(&key, "tok", Duration::from_secs(10))
        .await
        .unwrap_err();
    assert_timed_out(&err, bound);

    // And it is back once the server is.
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match retrying.set_nx(&key, "tok", Duration::from_secs(10)).await {
            Ok(set) => {
                assert!(set);
                break;
            }
            Err(err) if err.is_transient() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("no recovery after restart: {err:?}"),
        }
    }
    assert_eq!(get(&server, &key), "tok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_spawns_and_sleeps_on_tokio() {
    let server = RedisServer::start();
    for (kind, backend) in backends(&server).await {
        let runtime = backend.runtime().expect("fred has a runtime").clone();
        assert!(
            backend.clone().runtime().unwrap().same_as(&runtime),
            "{kind}: clones share it"
        );
        let (tx, rx) = tokio::sync::oneshot::channel();
        assert!(
            runtime.spawn(Box::pin(async move {
                tx.send(()).unwrap();
            })),
            "{kind}"
        );
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .expect("the detached task ran")
            .unwrap();

        // A detached release really runs against the server.
        let key = format!("{}{kind}:lock", key_prefix());
        assert!(
            backend
                .set_nx(&key, "tok", Duration::from_secs(10))
                .await
                .unwrap()
        );
        let (tx, rx) = tokio::sync::oneshot::channel();
        let releaser = Arc::new(backend.clone());
        let release_key = key.clone();
        assert!(runtime.spawn(Box::pin(async move {
            let reply = releaser
                .eval_script(&RELEASE, &[&release_key], &["tok"])
                .await;
            tx.send(reply).unwrap();
        })));
        let reply = tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply.unwrap(), ScriptValue::Int(1), "{kind}");
        assert_eq!(get(&server, &key), "(nil)", "{kind}");

        // Outside a runtime there is nowhere to spawn: the task is dropped, nothing blocks.
        let outside = runtime.clone();
        let spawned = std::thread::spawn(move || outside.spawn(Box::pin(async {})))
            .join()
            .unwrap();
        assert!(!spawned, "{kind}");

        let started = Instant::now();
        runtime.sleep(Duration::from_millis(50)).await;
        assert!(started.elapsed() >= Duration::from_millis(50), "{kind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_is_cheap_to_share_and_debuggable() {
    let server = RedisServer::start();
    let url = server.url();

    let from_client = fred_backend(Input::FredClient, &url, Options::new()).await;
    assert!(from_client.pool().is_none());
    assert!(from_client.client().is_connected());

    let from_pool = fred_backend(Input::FredPool, &url, Options::new()).await;
    assert_eq!(from_pool.pool().map(fred::clients::Pool::size), Some(2));
    assert!(from_pool.client().is_connected());

    for backend in [from_client, from_pool] {
        let debug = format!("{backend:?}");
        assert!(debug.starts_with("FredBackend"), "{debug}");
        assert!(debug.contains("5s"), "{debug}");

        // Usable as a trait object, and clones share the connection.
        let shared: Arc<dyn LockBackend> = Arc::new(backend.clone());
        let key = format!("{}lock", key_prefix());
        assert!(
            shared
                .set_nx(&key, "tok", Duration::from_secs(10))
                .await
                .unwrap()
        );
        assert!(
            !backend
                .set_nx(&key, "other", Duration::from_secs(10))
                .await
                .unwrap()
        );
    }
}

/// The `{pttl, pexpiretime}` reply of RENEW and EXTEND.
#[track_caller]
fn pttl_and_expiry(reply: &ScriptValue, kind: &str) -> (i64, i64) {
    match reply {
        ScriptValue::Array(items) => match items.as_slice() {
            [ScriptValue::Int(left), ScriptValue::Int(expiry)] => (*left, *expiry),
            _ => panic!("{kind}: expected {{pttl, pexpiretime}}, got {reply:?}"),
        },
        _ => panic!("{kind}: expected {{pttl, pexpiretime}}, got {reply:?}"),
    }
}

#[track_caller]
fn assert_permanent(err: &BackendError, cause_contains: &str) {
    assert!(!err.is_transient(), "expected permanent: {err:?}");
    assert_eq!(err.backend(), "fred");
    let cause = err
        .source()
        .expect("the fred error is the source")
        .to_string();
    assert!(
        cause.contains(cause_contains),
        "cause {cause:?} should mention {cause_contains:?}"
    );
}

#[track_caller]
fn assert_timed_out(err: &BackendError, bound: Duration) {
    assert!(err.is_transient(), "expected transient: {err:?}");
    assert_eq!(err.backend(), "fred");
    let cause = err.source().unwrap().to_string();
    assert_eq!(cause, format!("no reply within {bound:?}"), "{err:?}");
}

/// A release-signal wait that nothing wakes answers "not woken" (`Ok(false)`) once its block is over,
/// not an error: fred's `blpop` turns `BLPOP`'s nil reply into a `Timeout` error, and a failed signal
/// wait ends the acquisition with its error (issue 8, hole 19), so every wait for a held key would
/// fail at its first wait. A push wakes it (`Ok(true)`) and is consumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_wait_that_nothing_wakes_is_not_an_error() {
    let server = RedisServer::start();
    let block = Duration::from_millis(200);
    for (kind, backend) in backends(&server).await {
        let signal = format!("{}{kind}:signal", key_prefix());
        assert!(
            backend.capabilities().blocking_waits,
            "{kind}: fred blocks on release signals"
        );
        for round in 0..2 {
            let started = Instant::now();
            let woken = backend.wait_for_release(&signal, block).await;
            let took = started.elapsed();
            assert!(
                !woken.unwrap_or_else(|e| panic!("{kind} #{round}: {e:?} after {took:?}")),
                "{kind} #{round}: woken by nothing"
            );
            assert!(
                took >= block / 2 && took < block + SLACK_BOUND,
                "{kind} #{round}: took {took:?}"
            );
        }
        server.command(&["RPUSH", &signal, "released"]).unwrap();
        let woken = backend.wait_for_release(&signal, block).await;
        assert!(woken.unwrap(), "{kind}: woken by the push");
        assert_eq!(server.command(&["LLEN", &signal]).unwrap(), "0", "{kind}");
    }
}
