//! The keys redlease derives beside a lock key or a fenced resource (fence counter, release-signal list,
//! fence mark), against real `redis-server` processes:
//!
//! - they stay inside the user's key namespace: an ACL user allowed only `~locks:*` (as multi-tenant and
//!   managed Redis set users up) uses a plain lock, a fenced lock, `fenced_set`, a waiter woken by a
//!   release and an election, through both adapters, and the server refuses nothing;
//! - they hash to the key's slot as the server itself computes it (`CLUSTER KEYSLOT`), for many keys
//!   full of braces.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use lock_core::testing::companion_keys;
use redlease::{Backoff, Election, LockBackend, RedisLock};
use support::RedisServer;
use support::inputs::{Input, Options};

const USER: &str = "locker";
const PASSWORD: &str = "locker-pw";

/// A server with the user `locker`, who may touch only keys matching `locks:*`.
fn server_with_restricted_user() -> RedisServer {
    let server = RedisServer::start();
    let password = format!(">{PASSWORD}");
    let reply = server.command(&[
        "ACL",
        "SETUSER",
        USER,
        "on",
        &password,
        "resetkeys",
        "~locks:*",
        "+@all",
    ]);
    assert_eq!(reply.as_deref(), Ok("OK"));
    server
}

/// The URL that connects as `locker`.
fn restricted_url(server: &RedisServer) -> String {
    format!("redis://{USER}:{PASSWORD}@127.0.0.1:{}/", server.port())
}

fn cmd(server: &RedisServer, args: &[&str]) -> String {
    server
        .command(args)
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// The `name:calls=N,...` line of `INFO commandstats` as `(calls, rejected_calls)`; zeros when the
/// command was never called.
fn command_stats(server: &RedisServer, command: &str) -> (u64, u64) {
    let info = cmd(server, &["INFO", "commandstats"]);
    let prefix = format!("cmdstat_{command}:");
    let Some(line) = info
        .lines()
        .find_map(|line| line.trim().strip_prefix(&prefix))
    else {
        return (0, 0);
    };
    let field = |name: &str| -> u64 {
        line.split(',')
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {name} in {line}"))
            .parse()
            .unwrap()
    };
    (field("calls"), field("rejected_calls"))
}

/// Error replies the server sent, by kind (`INFO errorstats`), e.g. `errorstat_NOPERM:count=2`.
fn error_replies(server: &RedisServer) -> Vec<String> {
    cmd(server, &["INFO", "errorstats"])
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with("errorstat_"))
        .map(str::to_owned)
        .collect()
}

/// Unwraps a lock operation's result, or panics naming the adapter, the step and the error.
trait OrPanic<T> {
    fn or_panic(self, adapter: &str, step: &str) -> T;
}

impl<T> OrPanic<T> for redlease::Result<T> {
    fn or_panic(self, adapter: &str, step: &str) -> T {
        self.unwrap_or_else(|error| panic!("{adapter}: {step}: {error:?}"))
    }
}

/// Every lock feature as `locker`, through `holder` and a second backend `waiter` (another process, as
/// far as the locks can tell: no local line is shared). Panics naming `adapter` and the step.
async fn every_feature_within_the_namespace(
    adapter: &str,
    server: &RedisServer,
    holder: Arc<dyn LockBackend>,
    waiter: Arc<dyn LockBackend>,
) {
    // A plain lock: acquire, extend, release (which pushes to the release-signal list).
    let lock = RedisLock::new(holder.clone(), "locks:x").timeout(Duration::from_secs(30));
    let guard = lock.acquire().await.or_panic(adapter, "acquire");
    assert!(guard.is_owner().await.or_panic(adapter, "is_owner"));
    assert!(
        guard
            .extend(Duration::from_secs(1))
            .await
            .or_panic(adapter, "extend")
    );
    assert!(
        guard.release().await.or_panic(adapter, "release"),
        "{adapter}"
    );
    assert_eq!(
        cmd(server, &["EXISTS", "locks:x"]),
        "0",
        "{adapter}: released"
    );

    // A fenced lock, and fenced_set on a resource of the namespace.
    let fenced = RedisLock::new(holder.clone(), "locks:f")
        .timeout(Duration::from_secs(30))
        .fencing(true);
    let first = fenced.acquire().await.or_panic(adapter, "fenced acquire");
    let f1 = first.fence().expect("fencing is on");
    assert!(
        first
            .fenced_set("locks:res", "v1")
            .await
            .or_panic(adapter, "fenced_set"),
        "{adapter}"
    );
    // The first holder's lock vanishes (as an expiry would); a second holder takes over.
    cmd(server, &["DEL", "locks:f"]);
    let second = fenced.acquire().await.or_panic(adapter, "fenced acquire");
    assert!(second.fence().expect("fencing is on") > f1, "{adapter}");
    assert!(
        second
            .fenced_set("locks:res", "v2")
            .await
            .or_panic(adapter, "fenced_set"),
        "{adapter}"
    );
    assert!(
        !first
            .fenced_set("locks:res", "stale")
            .await
            .or_panic(adapter, "stale fenced_set"),
        "{adapter}: the older fence is refused"
    );
    assert_eq!(cmd(server, &["GET", "locks:res"]), "v2", "{adapter}");
    // The stale holder's release finds the second holder's token: not ours. (After the second
    // release the key would be gone while the stale guard's validity runs: `InDoubt`.)
    assert!(!first.release().await.or_panic(adapter, "stale release"));
    assert!(second.release().await.or_panic(adapter, "fenced release"));
    // The companions the server now holds are the library's, under the namespace.
    let [counter, ..] = companion_keys("locks:f");
    let [.., mark] = companion_keys("locks:res");
    for companion in [&counter, &mark] {
        assert!(companion.starts_with("locks:"), "{companion}");
        assert_eq!(
            cmd(server, &["EXISTS", companion]),
            "1",
            "{adapter}: {companion}"
        );
    }

    // A waiter in another process, blocked on the release-signal list, is woken by the release. Its
    // backoff starts at 5 s, so without the wake-up it would most likely take seconds.
    let (blpops, _) = command_stats(server, "blpop");
    let held = RedisLock::new(holder.clone(), "locks:w")
        .timeout(Duration::from_secs(30))
        .acquire()
        .await
        .or_panic(adapter, "acquire for the waiter");
    let waiting = RedisLock::new(waiter.clone(), "locks:w")
        .wait_timeout(Some(Duration::from_secs(20)))
        .backoff(Backoff::new(
            Duration::from_secs(5),
            Duration::from_secs(10),
        ));
    let waiter_task = tokio::spawn(async move {
        let acquired = waiting.acquire().await;
        (acquired, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let releasing = Instant::now();
    assert!(
        held.release()
            .await
            .or_panic(adapter, "release to the waiter")
    );
    let (acquired, acquired_at) = waiter_task.await.expect("waiter task");
    let taken = acquired.or_panic(adapter, "waiter acquire");
    // Not before the release was sent: that would be two holders.
    let woken_after = acquired_at
        .checked_duration_since(releasing)
        .unwrap_or_else(|| panic!("{adapter}: the waiter acquired before the release was sent"));
    assert!(
        woken_after < Duration::from_secs(1),
        "{adapter}: the waiter took the lock {woken_after:?} after the release"
    );
    let (blpops_after, rejected) = command_stats(server, "blpop");
    assert!(
        blpops_after > blpops,
        "{adapter}: the waiter blocked on the signal list"
    );
    assert_eq!(rejected, 0, "{adapter}: no BLPOP was refused");
    assert!(taken.release().await.or_panic(adapter, "waiter release"));

    // An election in the namespace.
    let election = Election::new(holder.clone(), "locks:leader")
        .timeout(Duration::from_secs(10))
        .id(adapter);
    let leadership = election.campaign().await.or_panic(adapter, "campaign");
    assert!(
        leadership
            .is_current()
            .await
            .or_panic(adapter, "is_current")
    );
    assert_eq!(
        election
            .leader()
            .await
            .or_panic(adapter, "leader")
            .as_deref(),
        Some(adapter)
    );
    assert!(leadership.resign().await.or_panic(adapter, "resign"));

    // Nothing was refused along the way.
    let errors = error_replies(server);
    assert!(
        errors.iter().all(|line| !line.contains("NOPERM")),
        "{adapter}: the server refused commands: {errors:?}"
    );
}

/// The ACL really confines `locker`: a key outside `locks:*` is refused.
async fn outside_the_namespace_is_refused(adapter: &str, backend: &Arc<dyn LockBackend>) {
    let error = RedisLock::new(backend.clone(), "other:x")
        .acquire()
        .await
        .expect_err("a key outside locks:* is refused");
    assert!(
        !error.is_transient() && format!("{error:?}").to_uppercase().contains("NOPERM"),
        "{adapter}: {error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_works_for_a_user_limited_to_its_key_pattern() {
    let server = server_with_restricted_user();
    let url = restricted_url(&server);
    let holder = Input::FredClient.connect(&url, Options::new()).await;
    let waiter = Input::FredClient.connect(&url, Options::new()).await;
    every_feature_within_the_namespace("fred", &server, holder.clone(), waiter).await;
    outside_the_namespace_is_refused("fred", &holder).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadpool_works_for_a_user_limited_to_its_key_pattern() {
    let server = server_with_restricted_user();
    let url = restricted_url(&server);
    let holder = Input::DeadpoolPool.connect(&url, Options::new()).await;
    let waiter = Input::DeadpoolPool.connect(&url, Options::new()).await;
    every_feature_within_the_namespace("deadpool", &server, holder.clone(), waiter).await;
    outside_the_namespace_is_refused("deadpool", &holder).await;
}

/// Keys built from pieces rich in braces and colons, reproducibly (xorshift from a fixed seed).
fn brace_rich_keys(count: usize) -> Vec<String> {
    let pieces = [
        "{",
        "}",
        ":",
        "{}",
        "}{",
        "a",
        "X",
        "ü",
        " ",
        "redlease",
        ":redlease:",
        "fence",
        "0",
        "123456",
        ":{",
        "}:",
        "{000000}",
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |below: usize| -> usize {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        usize::try_from(state % below as u64).expect("small")
    };
    let mut keys: Vec<String> = [
        "X", "{X}", "{X}Y", "a{b", "a{}b", "a}b", "{}", "{", "}", "locks:x", "{}{x}", "}a{b{c",
    ]
    .map(String::from)
    .to_vec();
    while keys.len() < count {
        let len = 1 + next(8);
        keys.push((0..len).map(|_| pieces[next(pieces.len())]).collect());
    }
    keys
}

#[test]
fn companions_hash_to_the_slot_redis_computes() {
    // `CLUSTER KEYSLOT` needs cluster support, not a formed cluster.
    let server = RedisServer::start_with_args(&["--cluster-enabled", "yes"]);
    let keys = brace_rich_keys(4000);
    let mut names: Vec<String> = Vec::new();
    for key in &keys {
        names.push(key.clone());
        names.extend(companion_keys(key));
    }
    let commands: Vec<[&str; 3]> = names
        .iter()
        .map(|name| ["CLUSTER", "KEYSLOT", name.as_str()])
        .collect();
    let commands: Vec<&[&str]> = commands.iter().map(|c| &c[..]).collect();
    let slots: Vec<String> =
        support::resp_pipeline(server.addr(), &commands, Duration::from_secs(30))
            .expect("CLUSTER KEYSLOT")
            .into_iter()
            .map(|reply| reply.expect("CLUSTER KEYSLOT"))
            .collect();
    for (names, slots) in names.chunks(4).zip(slots.chunks(4)) {
        for (i, what) in [
            (1, "fence counter"),
            (2, "release signal"),
            (3, "fence mark"),
        ] {
            assert!(
                names[i].starts_with(&names[0]),
                "{what} {} of {:?}",
                names[i],
                names[0]
            );
            assert_eq!(slots[0], slots[i], "{what} {} of {:?}", names[i], names[0]);
        }
    }
}
