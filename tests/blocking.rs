//! The blocking API (`redlease::blocking`): the conformance checks that apply to it, as blocking code
//! runs them (plain `#[test]`s, no async runtime anywhere on the test's thread), on the in-memory
//! backend and on a real `redis-server` through both adapters (one test per check and backend, e.g.
//! `fred::hold_reports_a_forced_loss`); then what only the blocking API has: the error instead of a
//! hang inside an async runtime, and a dropped guard's release bounded by the backend's call bound
//! against a frozen server.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use lock_core::testing::Probe;
use redlease::LockBackend;
use redlease::LockError;
use redlease::blocking::{self, RedisLock, RwLock, Semaphore};
use redlease::deadpool::{DeadpoolBackend, deadpool_redis};
use redlease::fred::FredBackend;
use redlease::fred::fred::prelude::{Builder, ClientLike, Config};
use redlease::memory::MemoryBackend;
use support::RedisServer;

/// Reads and writes the store behind the backend's back, synchronously, as another client would.
trait Peek {
    fn get(&self, key: &str) -> Option<String>;
    fn pttl(&self, key: &str) -> Option<Duration>;
    fn del(&self, key: &str);
}

impl Peek for MemoryBackend {
    fn get(&self, key: &str) -> Option<String> {
        futures::executor::block_on(Probe::get(self, key))
    }
    fn pttl(&self, key: &str) -> Option<Duration> {
        futures::executor::block_on(Probe::pttl(self, key))
    }
    fn del(&self, key: &str) {
        futures::executor::block_on(Probe::del(self, key))
    }
}

/// A Redis server's keys, over raw RESP.
struct RedisPeek(SocketAddr);

impl RedisPeek {
    fn command(&self, args: &[&str]) -> String {
        support::resp_command(self.0, args, Duration::from_secs(5))
            .expect("the probe reaches the server")
            .expect("the probe's command succeeds")
    }
}

impl Peek for RedisPeek {
    fn get(&self, key: &str) -> Option<String> {
        Some(self.command(&["GET", key])).filter(|value| value != "(nil)")
    }
    fn pttl(&self, key: &str) -> Option<Duration> {
        let millis: i64 = self
            .command(&["PTTL", key])
            .parse()
            .expect("PTTL is a number");
        u64::try_from(millis).ok().map(Duration::from_millis)
    }
    fn del(&self, key: &str) {
        self.command(&["DEL", key]);
    }
}

/// The shared server of this test binary, and a probe onto it.
fn shared_server() -> (String, RedisPeek) {
    let url = support::shared_redis_url("blocking");
    let addr = url
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .parse()
        .expect("a redis://host:port/ url");
    (url, RedisPeek(addr))
}

/// A fred client connected to `url`, built the way the blocking API's docs show: `init` awaited on
/// the blocking runtime, where its connection task then lives.
fn fred_backend(url: &str) -> FredBackend {
    let client = Builder::from_config(Config::from_url(url).expect("redis url"))
        .build()
        .expect("fred client");
    blocking::block_on({
        let client = client.clone();
        async move { client.init().await.map(drop) }
    })
    .expect("outside any runtime")
    .expect("fred client connects");
    FredBackend::from(client)
}

/// A deadpool pool on `url`: created without a runtime, connecting on first use.
fn deadpool_backend(url: &str) -> DeadpoolBackend {
    let pool = deadpool_redis::Config::from_url(url)
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .expect("deadpool pool");
    DeadpoolBackend::from(pool)
}

fn memory() -> (Arc<dyn LockBackend>, Box<dyn Peek>) {
    let backend = MemoryBackend::new();
    (Arc::new(backend.clone()), Box::new(backend))
}

fn fred() -> (Arc<dyn LockBackend>, Box<dyn Peek>) {
    let (url, peek) = shared_server();
    (Arc::new(fred_backend(&url)), Box::new(peek))
}

fn deadpool() -> (Arc<dyn LockBackend>, Box<dyn Peek>) {
    let (url, peek) = shared_server();
    (Arc::new(deadpool_backend(&url)), Box::new(peek))
}

/// One `#[test]` per check and backend.
macro_rules! checks {
    ($($check:ident),* $(,)?) => {
        mod memory {
            $( #[test] fn $check() { let (backend, peek) = super::memory(); super::$check(backend, &*peek, super::key()); } )*
        }
        mod fred {
            $( #[test] fn $check() { let (backend, peek) = super::fred(); super::$check(backend, &*peek, super::key()); } )*
        }
        mod deadpool {
            $( #[test] fn $check() { let (backend, peek) = super::deadpool(); super::$check(backend, &*peek, super::key()); } )*
        }
    };
}

checks!(
    the_key_holds_exactly_the_token_until_release,
    try_acquire_reports_busy_as_none,
    acquire_times_out_naming_the_key,
    acquire_waits_for_a_release_on_another_thread,
    contention_never_admits_two_holders,
    extend_renew_fence_and_fenced_set,
    release_after_a_takeover_is_false,
    a_dropped_guard_is_released_before_drop_returns,
    hold_renews_past_the_ttl,
    hold_reports_a_forced_loss,
    run_returns_the_value_and_releases,
    run_times_out_without_running_the_body,
    invalid_arguments_are_typed_errors,
    semaphore_admits_at_most_limit,
    rwlock_readers_share_and_the_writer_excludes,
);

fn key() -> String {
    format!("{}blocking", support::key_prefix())
}

fn the_key_holds_exactly_the_token_until_release(
    backend: Arc<dyn LockBackend>,
    peek: &dyn Peek,
    key: String,
) {
    let lock = RedisLock::new(backend, &key);
    let guard = lock.acquire().unwrap();
    assert_eq!(guard.key(), key);
    assert_eq!(peek.get(&key).as_deref(), Some(guard.token()));
    assert!(guard.is_owner().unwrap());
    assert!(!guard.is_lost());
    let ttl = peek.pttl(&key).expect("the key has a TTL");
    assert!(
        ttl > Duration::from_secs(25) && ttl <= Duration::from_secs(30),
        "{ttl:?}"
    );
    assert!(guard.release().unwrap());
    assert_eq!(peek.get(&key), None);
    let again = lock.acquire().unwrap();
    assert_eq!(peek.get(&key).as_deref(), Some(again.token()));
    assert!(again.release().unwrap());
}

fn try_acquire_reports_busy_as_none(backend: Arc<dyn LockBackend>, _: &dyn Peek, key: String) {
    let lock = RedisLock::new(backend, &key);
    let guard = lock.try_acquire().unwrap().expect("a free lock is granted");
    assert!(lock.try_acquire().unwrap().is_none(), "held: busy is None");
    assert!(guard.release().unwrap());
    assert!(lock.try_acquire().unwrap().is_some());
}

fn acquire_times_out_naming_the_key(backend: Arc<dyn LockBackend>, _: &dyn Peek, key: String) {
    let holder = RedisLock::new(backend.clone(), &key).acquire().unwrap();
    let waiter = RedisLock::new(backend, &key).wait_timeout(Some(Duration::from_millis(300)));
    let started = Instant::now();
    match waiter.acquire() {
        Err(LockError::Timeout { key: named, .. }) => assert_eq!(named, key),
        other => panic!("expected a timeout, got {other:?}"),
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert!(holder.release().unwrap());
}

fn acquire_waits_for_a_release_on_another_thread(
    backend: Arc<dyn LockBackend>,
    _: &dyn Peek,
    key: String,
) {
    let lock = RedisLock::new(backend, &key).wait_timeout(Some(Duration::from_secs(10)));
    let holder = lock.acquire().unwrap();
    let waiter = {
        let lock = lock.clone();
        thread::spawn(move || {
            let started = Instant::now();
            let guard = lock.acquire().unwrap();
            (started.elapsed(), guard.release().unwrap())
        })
    };
    thread::sleep(Duration::from_millis(300));
    assert!(holder.release().unwrap());
    let (waited, released) = waiter.join().unwrap();
    assert!(released);
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
        "the waiter got the lock {waited:?} after asking"
    );
}

fn contention_never_admits_two_holders(backend: Arc<dyn LockBackend>, _: &dyn Peek, key: String) {
    let lock = RedisLock::new(backend, &key).wait_timeout(Some(Duration::from_secs(20)));
    let inside = Arc::new(AtomicUsize::new(0));
    let entries = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (lock, inside, entries) = (lock.clone(), inside.clone(), entries.clone());
            thread::spawn(move || {
                for _ in 0..5 {
                    lock.run(|_guard| {
                        assert_eq!(
                            inside.fetch_add(1, Ordering::SeqCst),
                            0,
                            "two holders at once"
                        );
                        thread::sleep(Duration::from_millis(5));
                        inside.fetch_sub(1, Ordering::SeqCst);
                        entries.fetch_add(1, Ordering::SeqCst);
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    assert_eq!(entries.load(Ordering::SeqCst), 20);
}

fn extend_renew_fence_and_fenced_set(backend: Arc<dyn LockBackend>, peek: &dyn Peek, key: String) {
    let lock = RedisLock::new(backend, &key)
        .timeout(Duration::from_secs(2))
        .fencing(true);
    assert!(lock.get_fencing());
    assert_eq!(lock.get_timeout(), Duration::from_secs(2));
    let first = lock.acquire().unwrap();
    let fence = first.fence().expect("fencing gives a fence");
    assert!(
        first.valid_for() > Duration::from_secs(1) && first.valid_for() <= Duration::from_secs(2)
    );
    assert!(first.extend(Duration::from_secs(10)).unwrap());
    let ttl = peek.pttl(&key).unwrap();
    assert!(ttl > Duration::from_secs(10), "extended by 10 s: {ttl:?}");
    assert!(first.valid_for() > Duration::from_secs(10));
    assert!(
        first.renew().unwrap(),
        "a renewal never shortens, and answers ours"
    );
    assert!(peek.pttl(&key).unwrap() > Duration::from_secs(10));
    let resource = format!("{key}:resource");
    assert!(first.fenced_set(&resource, "one").unwrap());
    assert_eq!(peek.get(&resource).as_deref(), Some("one"));
    assert!(first.release().unwrap());
    let second = lock.acquire().unwrap();
    assert!(second.fence().unwrap() > fence, "fences strictly increase");
    assert!(second.fenced_set(&resource, "two").unwrap());
    assert_eq!(peek.get(&resource).as_deref(), Some("two"));
    assert!(second.release().unwrap());
}

fn release_after_a_takeover_is_false(backend: Arc<dyn LockBackend>, _: &dyn Peek, key: String) {
    let lock = RedisLock::new(backend, &key).timeout(Duration::from_millis(300));
    let first = lock.acquire().unwrap();
    thread::sleep(Duration::from_millis(450));
    assert!(first.is_lost(), "its validity ran out");
    let second = lock.try_acquire().unwrap().expect("expired: free");
    assert!(!first.is_owner().unwrap());
    assert!(!first.extend(Duration::from_secs(1)).unwrap());
    assert!(
        !first.release().unwrap(),
        "never touches the new holder's lock"
    );
    assert!(second.is_owner().unwrap());
    assert!(second.release().unwrap());
}

fn a_dropped_guard_is_released_before_drop_returns(
    backend: Arc<dyn LockBackend>,
    peek: &dyn Peek,
    key: String,
) {
    let lock = RedisLock::new(backend.clone(), &key);
    let guard = lock.acquire().unwrap();
    assert!(peek.get(&key).is_some());
    let started = Instant::now();
    drop(guard);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "drop took {took:?}");
    assert_eq!(peek.get(&key), None, "released by the time drop returned");

    let semaphore = Semaphore::new(backend, format!("{key}:sem"), 1);
    let permit = semaphore.acquire().unwrap();
    drop(permit);
    assert_eq!(
        semaphore.available().unwrap(),
        1,
        "a dropped permit came back"
    );
}

fn hold_renews_past_the_ttl(backend: Arc<dyn LockBackend>, _: &dyn Peek, key: String) {
    let lock = RedisLock::new(backend, &key).timeout(Duration::from_millis(400));
    let guard = lock.acquire().unwrap();
    let worked = guard
        .hold(|| {
            thread::sleep(Duration::from_millis(1200));
            "done"
        })
        .unwrap();
    assert_eq!(worked, "done");
    assert!(!guard.is_lost());
    assert!(guard.is_owner().unwrap(), "renewed while the closure ran");
    assert!(guard.release().unwrap());
}

fn hold_reports_a_forced_loss(backend: Arc<dyn LockBackend>, peek: &dyn Peek, key: String) {
    let lock = RedisLock::new(backend, &key).timeout(Duration::from_millis(600));
    let guard = lock.acquire().unwrap();
    let mut noticed = None;
    let held = guard.hold(|| {
        peek.del(&key);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if guard.is_lost() {
                noticed = Some(started.elapsed());
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        "finished anyway"
    });
    match held {
        Err(LockError::Lost { key: named, .. }) => assert_eq!(named, key),
        other => panic!("expected Lost after the key was deleted, got {other:?}"),
    }
    let noticed = noticed.expect("is_lost turned true while the work ran");
    assert!(
        noticed < Duration::from_secs(2),
        "noticed after {noticed:?}"
    );
    assert!(guard.is_lost());
    assert_eq!(guard.valid_for(), Duration::ZERO);
    assert!(!guard.release().unwrap(), "a lost guard claims nothing");
}

fn run_returns_the_value_and_releases(backend: Arc<dyn LockBackend>, peek: &dyn Peek, key: String) {
    let lock = RedisLock::new(backend, &key);
    let (token, seen) = lock
        .run(|guard| (guard.token().to_owned(), peek.get(&key)))
        .unwrap();
    assert_eq!(
        seen.as_deref(),
        Some(token.as_str()),
        "held while the body ran"
    );
    assert_eq!(peek.get(&key), None, "released after");
}

fn run_times_out_without_running_the_body(
    backend: Arc<dyn LockBackend>,
    _: &dyn Peek,
    key: String,
) {
    let holder = RedisLock::new(backend.clone(), &key).acquire().unwrap();
    let lock = RedisLock::new(backend, &key).wait_timeout(Some(Duration::from_millis(100)));
    let mut ran = false;
    let result = lock.run(|_| ran = true);
    assert!(
        matches!(result, Err(LockError::Timeout { .. })),
        "{result:?}"
    );
    assert!(!ran);
    assert!(holder.release().unwrap());
}

fn invalid_arguments_are_typed_errors(backend: Arc<dyn LockBackend>, peek: &dyn Peek, key: String) {
    let empty = RedisLock::new(backend.clone(), "");
    assert!(matches!(
        empty.acquire(),
        Err(LockError::InvalidArgument {
            argument: "key",
            ..
        })
    ));
    let zero = RedisLock::new(backend.clone(), &key).timeout(Duration::ZERO);
    assert!(matches!(
        zero.try_acquire(),
        Err(LockError::InvalidArgument { .. })
    ));
    let guard = RedisLock::new(backend.clone(), &key).acquire().unwrap();
    assert!(matches!(
        guard.fenced_set("resource", "v"),
        Err(LockError::InvalidArgument {
            argument: "fence",
            ..
        })
    ));
    assert!(matches!(
        guard.extend(Duration::ZERO),
        Err(LockError::InvalidArgument { .. })
    ));
    assert!(guard.release().unwrap());
    let none = Semaphore::new(backend, &key, 0);
    assert!(matches!(
        none.acquire(),
        Err(LockError::InvalidArgument {
            argument: "limit",
            ..
        })
    ));
    assert_eq!(peek.get(&key), None, "nothing was sent");
}

fn semaphore_admits_at_most_limit(backend: Arc<dyn LockBackend>, _: &dyn Peek, key: String) {
    let uploads = Semaphore::new(backend, &key, 2).wait_timeout(Some(Duration::from_millis(200)));
    assert_eq!(uploads.limit(), 2);
    let first = uploads.acquire().unwrap();
    let second = uploads.acquire().unwrap();
    assert!(uploads.try_acquire().unwrap().is_none());
    assert!(matches!(uploads.acquire(), Err(LockError::Timeout { .. })));
    assert_eq!(uploads.available().unwrap(), 0);
    assert!(first.is_owner().unwrap());
    assert!(first.release().unwrap());
    assert_eq!(uploads.available().unwrap(), 1);
    assert!(uploads.try_acquire_many(2).unwrap().is_none());
    assert!(second.release().unwrap());
    let both = uploads.acquire_many(2).unwrap();
    assert_eq!(both.permits(), 2);
    assert!(both.renew().unwrap());
    assert!(both.release().unwrap());
    assert_eq!(uploads.run(|permit| permit.permits()).unwrap(), 1);
    assert_eq!(uploads.available().unwrap(), 2);
}

fn rwlock_readers_share_and_the_writer_excludes(
    backend: Arc<dyn LockBackend>,
    _: &dyn Peek,
    key: String,
) {
    let doc = RwLock::new(backend, &key).wait_timeout(Some(Duration::from_millis(200)));
    let first = doc.read().unwrap();
    let second = doc.read().unwrap();
    assert!(doc.try_write().unwrap().is_none());
    assert!(first.release().unwrap());
    assert!(second.release().unwrap());
    let writer = doc.write().unwrap();
    assert!(doc.try_read().unwrap().is_none());
    assert!(writer.is_owner().unwrap());
    let reader = writer.downgrade().unwrap();
    let other = doc
        .try_read()
        .unwrap()
        .expect("readers join a downgraded hold");
    assert!(reader.release().unwrap());
    assert!(other.release().unwrap());
    assert_eq!(doc.run_write(|guard| guard.key().to_owned()).unwrap(), key);
    assert_eq!(doc.run_read(|_| 7).unwrap(), 7);
}

/// Runs `body` on a thread of its own and fails if it takes longer than `limit`: a hang is a failure,
/// not a stuck test run.
fn within<T: Send + 'static>(limit: Duration, body: impl FnOnce() -> T + Send + 'static) -> T {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let _ = sender.send(body());
    });
    receiver
        .recv_timeout(limit)
        .unwrap_or_else(|_| panic!("hung (or panicked) for more than {limit:?}"))
}

fn assert_refused<T: std::fmt::Debug>(result: redlease::Result<T>) {
    match result {
        Err(LockError::InvalidArgument { argument, reason }) => {
            assert_eq!(argument, "runtime");
            assert!(reason.contains("use the async API"), "{reason}");
        }
        other => panic!("expected InvalidArgument(runtime) inside an async runtime, got {other:?}"),
    }
}

#[test]
fn inside_tokio_every_call_is_refused_instead_of_hanging() {
    within(Duration::from_secs(20), || {
        let backend = MemoryBackend::new();
        let lock = RedisLock::new(backend.clone(), "inside-tokio");
        let held = lock.acquire().unwrap();
        for flavor in ["current_thread", "multi_thread"] {
            let runtime = match flavor {
                "current_thread" => tokio::runtime::Builder::new_current_thread(),
                _ => tokio::runtime::Builder::new_multi_thread(),
            }
            .enable_all()
            .build()
            .unwrap();
            runtime.block_on(async {
                assert_refused(lock.acquire());
                assert_refused(lock.try_acquire());
                assert_refused(lock.run(|_| ()));
                assert_refused(held.is_owner());
                assert_refused(held.hold(|| ()));
                assert_refused(Semaphore::new(backend.clone(), "s", 1).acquire());
                assert_refused(RwLock::new(backend.clone(), "rw").read());
                assert_refused(blocking::block_on(async {}));
                // In a task too, and in spawn_blocking (the runtime's context is visible there).
                let lock = lock.clone();
                tokio::spawn(async move { assert_refused(lock.try_acquire()) })
                    .await
                    .unwrap();
            });
            let in_blocking = RedisLock::new(backend.clone(), "inside-tokio");
            runtime
                .spawn_blocking(move || assert_refused(in_blocking.try_acquire()))
                .await_blocking();
        }
        // The refusals sent nothing: the lock is still ours, and usable from a plain thread.
        assert!(held.is_owner().unwrap());
        assert!(held.release().unwrap());
    });
}

/// Waits for a `JoinHandle` from a thread outside any runtime.
trait AwaitBlocking {
    fn await_blocking(self);
}

impl AwaitBlocking for tokio::task::JoinHandle<()> {
    fn await_blocking(self) {
        futures::executor::block_on(self).expect("the task ran to its end");
    }
}

/// A fred client whose connection runs on the caller's current-thread runtime: blocking that runtime
/// would deadlock the call. It is refused instead, at once.
#[test]
fn inside_the_runtime_of_the_client_the_call_is_refused_not_deadlocked() {
    within(Duration::from_secs(30), || {
        let (url, _) = shared_server();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let client = Builder::from_config(Config::from_url(&url).unwrap())
                .build()
                .unwrap();
            client.init().await.unwrap();
            let lock = RedisLock::new(FredBackend::from(client), support::key_prefix() + "own");
            let started = Instant::now();
            assert_refused(lock.acquire());
            assert!(started.elapsed() < Duration::from_secs(1));
            // The async API works there.
            let guard = lock.as_async().acquire().await.unwrap();
            assert!(guard.release().await.unwrap());
        });
    });
}

/// Against a frozen server, dropping a guard waits no longer than the backend's call bound; the
/// release goes on in the background and frees the key once the server answers again.
#[test]
fn a_dropped_guard_waits_at_most_the_call_bound() {
    let server = RedisServer::start();
    let peek = RedisPeek(server.addr());
    for (name, backend) in [
        (
            "fred",
            Arc::new(fred_backend(&server.url()).command_timeout(Duration::from_millis(300)))
                as Arc<dyn LockBackend>,
        ),
        (
            "deadpool",
            Arc::new(deadpool_backend(&server.url()).command_timeout(Duration::from_millis(300))),
        ),
    ] {
        let key = format!("{}drop-{name}", support::key_prefix());
        let guard = RedisLock::new(backend, &key)
            .timeout(Duration::from_secs(10))
            .acquire()
            .unwrap();
        server.pause();
        let started = Instant::now();
        drop(guard);
        let took = started.elapsed();
        server.resume();
        assert!(
            took < Duration::from_millis(1500),
            "{name}: dropping against a frozen server blocked {took:?}, more than the 300 ms bound allows"
        );
        let deadline = Instant::now() + Duration::from_secs(8);
        while peek.get(&key).is_some() {
            assert!(
                Instant::now() < deadline,
                "{name}: the background release never freed the key"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}
