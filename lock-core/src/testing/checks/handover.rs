//! Hand-over in one round trip (issue 13): a release with a task of this process first in line for the
//! key grants it the lock in the same script, and every way that can go wrong leaves one holder or
//! none, never a key held by nobody until its TTL.
//!
//! Each check needs the backend's in-process lines (both Redis adapters and the memory backend keep
//! them); on a backend without them there is nothing to hand over, and the check returns at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::{Either, select};

use crate::backend::{BackendError, Capabilities, LockBackend, ScriptValue, runtime_of};
use crate::runtime::Runtime;
use crate::script::{self, Script};
use crate::testing::{
    Fault, FaultyBackend, Probe, SECOND, Unqueued, eventually, freed_soon, sleep,
};
use crate::{LockGuard, RedisLock};

/// Records the names of the calls that reach `inner` (`set_nx` as `"set_nx"`, scripts by name) and the
/// token each hand-over grants; can lose the reply of the next hand-over after it was applied.
#[derive(Debug)]
struct Recorder {
    inner: Arc<dyn LockBackend>,
    calls: Mutex<Vec<&'static str>>,
    granted: Mutex<Vec<String>>,
    lose_next_hand_over_reply: AtomicBool,
}

impl Recorder {
    fn new(inner: Arc<dyn LockBackend>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            calls: Mutex::new(Vec::new()),
            granted: Mutex::new(Vec::new()),
            lose_next_hand_over_reply: AtomicBool::new(false),
        })
    }

    /// The calls since the last `take`.
    fn take(&self) -> Vec<&'static str> {
        std::mem::take(&mut *self.calls.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn granted(&self) -> Vec<String> {
        self.granted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn log(&self, name: &'static str) {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name);
    }
}

fn is_hand_over(script: &Script) -> bool {
    script.sha1() == script::HAND_OVER.sha1() || script.sha1() == script::FENCED_HAND_OVER.sha1()
}

#[async_trait]
impl LockBackend for Recorder {
    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, BackendError> {
        self.log("set_nx");
        self.inner.set_nx(key, value, ttl).await
    }

    async fn eval_script(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<ScriptValue, BackendError> {
        self.log(script.name());
        if is_hand_over(script) {
            self.granted
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(args.get(1).map_or_else(String::new, |t| (*t).to_owned()));
        }
        let reply = self.inner.eval_script(script, keys, args).await;
        if is_hand_over(script) && self.lose_next_hand_over_reply.swap(false, Ordering::SeqCst) {
            // Applied by the server, but the caller never hears: a lost reply, a call bound hit.
            return Err(BackendError::transient("recorder", "the reply was lost"));
        }
        reply
    }

    async fn eval_script_replicated(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
        replicas: usize,
        timeout: Duration,
    ) -> Result<(ScriptValue, usize), BackendError> {
        self.log(script.name());
        self.inner
            .eval_script_replicated(script, keys, args, replicas, timeout)
            .await
    }

    async fn wait_for_release(
        &self,
        signal: &str,
        timeout: Duration,
    ) -> Result<bool, BackendError> {
        self.inner.wait_for_release(signal, timeout).await
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn runtime(&self) -> Option<&Runtime> {
        self.inner.runtime()
    }
}

/// How many tasks of this process wait in line for `key`; `None` without lines.
fn in_line(backend: &Arc<dyn LockBackend>, key: &str) -> Option<usize> {
    runtime_of(&**backend)
        .lines()
        .map(|lines| lines.waiting(key))
}

/// Waits (up to 5 s) until `n` tasks wait in line for `key`.
async fn until_in_line(backend: &Arc<dyn LockBackend>, key: &str, n: usize) {
    let queued = eventually(backend, 5 * SECOND, async || {
        in_line(backend, key) == Some(n)
    })
    .await;
    assert!(
        queued,
        "{n} waiter(s) should have joined the line for {key}"
    );
}

async fn acquired(lock: &RedisLock) -> LockGuard {
    lock.acquire().await.expect("acquire")
}

/// A release with a local waiter first in line sends exactly one script, `hand_over` (`fenced_hand_over`
/// when the waiter's lock has fencing), and the waiter holds the key with its own token, a fence past the
/// holder's, and a validity within its TTL; a release with nobody in line is the plain release.
pub async fn hand_over_grants_the_next_local_waiter_in_one_call(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    if in_line(&backend, &key).is_none() {
        return;
    }
    let recorder = Recorder::new(backend.clone());
    let dyn_recorder: Arc<dyn LockBackend> = recorder.clone();
    for fencing in [false, true] {
        let lock = RedisLock::new(recorder.clone(), key.clone())
            .timeout(10 * SECOND)
            .wait_timeout(Some(5 * SECOND))
            .fencing(fencing);
        let holder = acquired(&lock).await;
        let release = async {
            until_in_line(&dyn_recorder, &key, 1).await;
            recorder.take();
            holder.release().await
        };
        let (waiter, released) = futures::join!(lock.acquire(), release);
        let calls = recorder.take();
        assert!(
            released.expect("release"),
            "the release found the lock ours"
        );
        let waiter = waiter.expect("the waiter is granted the lock");
        let expected = if fencing {
            "fenced_hand_over"
        } else {
            "hand_over"
        };
        assert_eq!(
            calls,
            vec![expected],
            "one script releases and grants: no acquisition of the waiter's own"
        );
        assert_eq!(
            probe.get(&key).await.as_deref(),
            Some(waiter.token()),
            "the key holds the waiter's token"
        );
        assert!(!waiter.valid_for().is_zero() && waiter.valid_for() <= 10 * SECOND);
        assert_eq!(
            waiter.fence().is_some(),
            fencing,
            "a fenced lock's grant has a fence, a plain one's none"
        );
        assert_eq!(
            recorder.granted().last().map(String::as_str),
            Some(waiter.token()),
            "granted under the token the hand-over sent"
        );
        // Nobody in line now: the plain release, no hand-over.
        assert!(waiter.release().await.expect("release"));
        let calls = recorder.take();
        assert_eq!(calls.len(), 1, "one call for a release: {calls:?}");
        assert!(
            calls[0] == "release_and_signal" || calls[0] == "release",
            "a release with nobody in line is the plain release: {calls:?}"
        );
        assert_eq!(probe.get(&key).await, None);
    }
    // Fences keep increasing through hand-overs.
    let lock = RedisLock::new(recorder.clone(), key.clone())
        .timeout(10 * SECOND)
        .wait_timeout(Some(5 * SECOND))
        .fencing(true);
    let holder = acquired(&lock).await;
    let first = holder.fence().expect("fence");
    let release = async {
        until_in_line(&dyn_recorder, &key, 1).await;
        holder.release().await
    };
    let (waiter, released) = futures::join!(lock.acquire(), release);
    assert!(released.expect("release"));
    let waiter = waiter.expect("granted");
    assert!(
        waiter.fence().expect("fence") > first,
        "the handed-over fence overtakes the holder's"
    );
    assert!(waiter.release().await.expect("release"));
}

/// The waiter's validity counts from the send of the hand-over script, not from its reply: with the
/// reply 300 ms late, the waiter believes in at most its TTL less those 300 ms.
pub async fn hand_over_validity_counts_from_the_send(
    backend: Arc<dyn LockBackend>,
    _probe: &dyn Probe,
    key: String,
) {
    if in_line(&backend, &key).is_none() {
        return;
    }
    let faulty = Arc::new(FaultyBackend::new(backend.clone()));
    let ttl = 2 * SECOND;
    let lock = RedisLock::new(faulty.clone(), key.clone())
        .timeout(ttl)
        .wait_timeout(Some(5 * SECOND));
    let holder = acquired(&lock).await;
    let late = Duration::from_millis(300);
    let release = async {
        until_in_line(&backend, &key, 1).await;
        faulty.set_fault(Fault::DelayReply(late));
        let released = holder.release().await;
        faulty.set_fault(Fault::None);
        released
    };
    let (waiter, released) = futures::join!(lock.acquire(), release);
    assert!(released.expect("release"));
    let waiter = waiter.expect("granted");
    assert!(
        waiter.valid_for() <= ttl - late,
        "validity {:?} must count from the send of the hand-over, {late:?} before its reply",
        waiter.valid_for()
    );
    assert!(waiter.release().await.expect("release"));
}

/// A waiter cancelled after its grant was decided never leaves the key held by nobody: cancelled while
/// the hand-over is in flight, or with the grant already sent to it but not taken, the key is released
/// in the background, and a waiter behind it gets the lock.
pub async fn hand_over_to_a_cancelled_waiter_frees_the_key(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    if in_line(&backend, &key).is_none() {
        return;
    }
    let faulty = Arc::new(FaultyBackend::new(backend.clone()));
    let lock = RedisLock::new(faulty.clone(), key.clone())
        .timeout(30 * SECOND)
        .wait_timeout(Some(5 * SECOND));

    // Cancelled while the hand-over is in flight (the request reaches the store 200 ms after it is sent).
    let holder = acquired(&lock).await;
    let release = async {
        until_in_line(&backend, &key, 1).await;
        faulty.set_fault(Fault::Delay(Duration::from_millis(200)));
        let released = holder.release().await;
        faulty.set_fault(Fault::None);
        released
    };
    let impatient = async {
        match select(
            Box::pin(lock.acquire()),
            Box::pin(sleep(&backend, Duration::from_millis(100))),
        )
        .await
        {
            Either::Left((result, _)) => Some(result),
            Either::Right(_) => None,
        }
    };
    let (gave_up, released) = futures::join!(impatient, release);
    assert!(
        gave_up.is_none(),
        "the waiter was cancelled before the grant"
    );
    assert!(
        released.expect("release"),
        "the release found the lock ours"
    );
    assert!(
        freed_soon(&backend, probe, &key).await,
        "the grant nobody took must be released in the background"
    );

    // The grant is sent to the waiter, which is dropped before it looks; a second waiter is behind it.
    let holder = acquired(&lock).await;
    let second = lock.clone();
    let behind = async {
        until_in_line(&backend, &key, 1).await;
        second.acquire().await
    };
    let release = async {
        until_in_line(&backend, &key, 2).await;
        holder.release().await
    };
    let first = Box::pin(lock.acquire());
    // `select` polls the first waiter first: once the release completes (the grant sent), the first
    // waiter is never polled again, and dropped with the grant in its channel.
    let front = async {
        match select(first, Box::pin(release)).await {
            Either::Left(_) => panic!("the first waiter completed before the release"),
            Either::Right((released, first)) => {
                drop(first);
                released
            }
        }
    };
    let (released, behind) = futures::join!(front, behind);
    assert!(released.expect("release"));
    let behind =
        behind.expect("the waiter behind gets the lock once the untaken grant is released");
    assert_eq!(probe.get(&key).await.as_deref(), Some(behind.token()));
    assert!(behind.release().await.expect("release"));
}

/// A hand-over that finds the key no longer the holder's (expired and taken, or overwritten) grants
/// nothing: the release reports `false` as a plain release does, and the waiter keeps trying by itself
/// until the key is free.
pub async fn hand_over_grants_nothing_when_the_key_is_not_ours(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    if in_line(&backend, &key).is_none() {
        return;
    }
    let lock = RedisLock::new(backend.clone(), key.clone())
        .timeout(30 * SECOND)
        .wait_timeout(Some(5 * SECOND));
    let holder = acquired(&lock).await;
    let release = async {
        until_in_line(&backend, &key, 1).await;
        probe.set(&key, "intruder", 30 * SECOND).await;
        let released = holder.release().await;
        // The waiter is not granted: the intruder keeps the key while the waiter retries.
        sleep(&backend, Duration::from_millis(300)).await;
        assert_eq!(probe.get(&key).await.as_deref(), Some("intruder"));
        probe.del(&key).await;
        released
    };
    let (waiter, released) = futures::join!(lock.acquire(), release);
    assert!(
        !released.expect("release"),
        "the key was someone else's: not released, not handed over"
    );
    let waiter = waiter.expect("the waiter acquires by itself once the key is free");
    assert_eq!(probe.get(&key).await.as_deref(), Some(waiter.token()));
    assert!(waiter.release().await.expect("release"));
}

/// A hand-over whose reply is lost (applied, but the call failed) is an acquisition of unknown outcome:
/// the release reports the failure, the waiter never believes it holds the lock under the granted
/// token, both tokens are released in the background, and the waiter then acquires with its own.
pub async fn lost_hand_over_reply_leaves_the_waiter_trying(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    if in_line(&backend, &key).is_none() {
        return;
    }
    let recorder = Recorder::new(backend.clone());
    let lock = RedisLock::new(recorder.clone(), key.clone())
        .timeout(30 * SECOND)
        .wait_timeout(Some(10 * SECOND));
    let holder = acquired(&lock).await;
    let release = async {
        until_in_line(&backend, &key, 1).await;
        recorder
            .lose_next_hand_over_reply
            .store(true, Ordering::SeqCst);
        holder.release().await
    };
    let (waiter, released) = futures::join!(lock.acquire(), release);
    assert!(released.is_err(), "a lost reply is reported as a failure");
    let waiter = waiter.expect("the waiter acquires once the background releases ran");
    let granted = recorder.granted();
    assert_eq!(granted.len(), 1, "one hand-over was sent");
    assert_ne!(
        waiter.token(),
        granted[0],
        "the waiter must not take the lock on a hand-over whose reply it never saw"
    );
    assert_eq!(probe.get(&key).await.as_deref(), Some(waiter.token()));
    assert!(waiter.release().await.expect("release"));
}

/// A grant its local waiter never took is released with the release signal, so a waiter in another
/// process (here: the same store without this process's lines) blocked on that signal gets the lock at
/// once, not after its backoff. Needs blocking waits and release signals; other backends return at once.
pub async fn an_untaken_grant_wakes_a_waiter_elsewhere(
    backend: Arc<dyn LockBackend>,
    probe: &dyn Probe,
    key: String,
) {
    let capabilities = backend.capabilities();
    if in_line(&backend, &key).is_none()
        || !capabilities.blocking_waits
        || !capabilities.release_signals
    {
        return;
    }
    let local = RedisLock::new(backend.clone(), key.clone())
        .timeout(30 * SECOND)
        .wait_timeout(Some(10 * SECOND));
    // Another process: no shared line, and a backoff so slow that only a signal wakes it in time.
    let elsewhere = RedisLock::new(Unqueued::new(backend.clone()), key.clone())
        .timeout(30 * SECOND)
        .wait_timeout(Some(10 * SECOND))
        .backoff(crate::Backoff::new(20 * SECOND, 20 * SECOND));
    let holder = acquired(&local).await;
    let remote = async {
        let started = std::time::Instant::now();
        let guard = elsewhere.acquire().await;
        (guard, started.elapsed())
    };
    let release = async {
        until_in_line(&backend, &key, 1).await;
        // Let the other process reach its blocking wait.
        sleep(&backend, Duration::from_millis(200)).await;
        holder.release().await
    };
    let front = async {
        match select(Box::pin(local.acquire()), Box::pin(release)).await {
            Either::Left(_) => panic!("the local waiter completed before the release"),
            // Dropped with the grant unread: released in the background, with the signal.
            Either::Right((released, waiter)) => {
                drop(waiter);
                released
            }
        }
    };
    let (released, (remote, took)) = futures::join!(front, remote);
    assert!(released.expect("release"));
    let remote = remote.expect("the waiter elsewhere gets the lock");
    assert!(
        took < 5 * SECOND,
        "woken by the signal of the background release, not its 20 s backoff: took {took:?}"
    );
    assert_eq!(probe.get(&key).await.as_deref(), Some(remote.token()));
    assert!(remote.release().await.expect("release"));
}
