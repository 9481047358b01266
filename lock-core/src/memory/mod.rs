//! [`MemoryBackend`]: the lock algorithm without a server, for unit tests and single-process use.

mod scripts;
mod sets;
mod shares;
// Fair lock.
mod fair;
// Read-write locks.
mod rwlock;
// Inspection.
mod inspect;
// Batched renewals (issue 13).
mod renew_many;
// Hand-over in one round trip (issue 13).
mod handover;

use std::collections::HashMap;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::FutureExt;
use futures::future::BoxFuture;

use crate::backend::{BackendError, Capabilities, LockBackend, ScriptValue};
use crate::runtime::{Executor, Runtime};
use crate::script::Script;
use crate::time::Moment;

const NAME: &str = "memory";

/// An in-process backend that implements redlease's scripts natively, with Redis's semantics.
///
/// Locks taken through one `MemoryBackend` (and its clones, which share state) exclude each other within
/// this process only. It runs on any executor, and passes the same conformance suite as the Redis
/// adapters. Its server clock is a [`ServerClock`]: by default ([`SystemClock`]) expiry runs on the lease
/// clock ([`Moment::now`], which counts time spent suspended, as a Redis server's clock does), and
/// absolute expiries (`PEXPIRETIME`) and the fenced acquire script's `TIME` on the system's wall clock
/// (see [`with_clock_offset`](Self::with_clock_offset)). A simulation gives it a virtual clock instead
/// ([`with_clock`](Self::with_clock)), and can copy and replace its data ([`snapshot`](Self::snapshot),
/// [`restore`](Self::restore)) to play a replica, a failover or a restart.
#[derive(Debug, Clone)]
pub struct MemoryBackend {
    entries: Arc<Mutex<Data>>,
    /// Shared by clones: one line per key for the tasks of this process, and one identity.
    runtime: Runtime,
    clock: Arc<dyn ServerClock>,
    /// What [`SERVER_ID`](crate::script::SERVER_ID) answers: unique per store, shared by clones.
    server_id: u64,
}

/// The executor of [`MemoryBackend`]'s locks: the lease clock, a runtime-neutral timer, and a spawn that
/// needs no runtime (see [`Executor::spawn`] below).
struct MemoryExecutor;

impl Executor for MemoryExecutor {
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(futures_timer::Delay::new(duration))
    }

    /// Memory operations complete without waiting, so a background release normally finishes right
    /// here; one that must wait (behind a wrapper that delays calls, say) finishes on a thread of its
    /// own. Either way the caller never blocks and no runtime is needed.
    fn spawn(&self, task: BoxFuture<'static, ()>) -> bool {
        let mut task = task;
        if (&mut task).now_or_never().is_some() {
            return true;
        }
        std::thread::Builder::new()
            .name("redlease-memory-release".into())
            .spawn(move || futures::executor::block_on(task))
            .is_ok()
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::with_clock(Arc::new(SystemClock::default()))
    }
}

/// The clock of a [`MemoryBackend`]'s server: what its keys expire by, and what its scripts read as the
/// server's time.
///
/// Redis reads two clocks: TTLs count down on a clock that only moves forward, while `TIME` (the fenced
/// acquire script's fence clock) and `PEXPIRETIME` (the absolute expiry [`extend`](crate::LockGuard::extend)
/// adds to) answer the wall clock. The two must move at the same rate, as a server's do; a simulation
/// implements both from its virtual time, at whatever rate and offset it draws for the server.
pub trait ServerClock: fmt::Debug + Send + Sync + 'static {
    /// Now, on the clock TTLs count down on. Must never go back.
    fn now(&self) -> Moment;

    /// Now, on the server's wall clock: the time since the Unix epoch, as `TIME` answers it.
    fn wall(&self) -> Duration;
}

/// The default [`ServerClock`]: the lease clock ([`Moment::now`]) for expiry, the system's wall clock
/// (moved by a fixed offset) for `TIME` and `PEXPIRETIME`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock {
    /// Added to the system's wall clock, in microseconds (negative: behind).
    pub offset_micros: i64,
}

impl ServerClock for SystemClock {
    fn now(&self) -> Moment {
        Moment::now()
    }

    fn wall(&self) -> Duration {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let offset = Duration::from_micros(self.offset_micros.unsigned_abs());
        if self.offset_micros >= 0 {
            now.saturating_add(offset)
        } else {
            now.saturating_sub(offset)
        }
    }
}

/// A copy of a [`MemoryBackend`]'s data at one moment, with each key's expiry: what a replica that
/// received the writes up to then holds, or what a restart finds on disk. See
/// [`MemoryBackend::snapshot`].
#[derive(Debug, Clone, Default)]
pub struct MemorySnapshot {
    entries: Data,
}

impl MemorySnapshot {
    /// How many keys the snapshot holds (expired ones included until the snapshot is restored).
    pub fn len(&self) -> usize {
        self.entries.len() + self.entries.sets.len()
    }

    /// Whether the snapshot holds no key: what a restart without persistence finds.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.entries.sets.is_empty()
    }

    /// The value of `key` in the snapshot, if it was live when the snapshot was taken: what a replica
    /// holding this snapshot would answer, for a simulation's checks.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(|e| e.value.as_str())
    }

    /// When `key` expires, on the clock of the backend the snapshot was taken from; `None` when the
    /// snapshot does not hold it or it has no TTL.
    pub fn expires_at(&self, key: &str) -> Option<Moment> {
        self.entries.get(key).and_then(|e| e.expires_at)
    }
}

/// Every key of a store: strings (locks, counters, marks) and sorted sets (the holders of semaphores
/// and read-write locks, fair queues), in separate maps as Redis keeps one type per key. Derefs to the
/// strings, which most scripts touch.
#[derive(Debug, Clone, Default)]
struct Data {
    strings: HashMap<String, Entry>,
    sets: HashMap<String, sets::SortedSet>,
}

impl Deref for Data {
    type Target = HashMap<String, Entry>;

    fn deref(&self) -> &Self::Target {
        &self.strings
    }
}

impl DerefMut for Data {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.strings
    }
}

#[derive(Debug, Clone)]
struct Entry {
    value: String,
    /// `None` for keys without a TTL, like fence counters.
    expires_at: Option<Moment>,
}

impl Entry {
    fn expiring(value: &str, now: Moment, ttl: Duration) -> Self {
        Self {
            value: value.to_owned(),
            expires_at: Some(now + ttl),
        }
    }

    fn persistent(value: String) -> Self {
        Self {
            value,
            expires_at: None,
        }
    }

    fn pttl_millis(&self, now: Moment) -> i64 {
        match self.expires_at {
            Some(at) => {
                let left = (at - now).as_millis();
                i64::try_from(left).unwrap_or(i64::MAX)
            }
            None => -1,
        }
    }
}

impl MemoryBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty backend whose server's wall clock (what a script reads with `TIME`: the fenced acquire's
    /// clock, and `PEXPIRETIME`) runs `offset_micros` microseconds ahead of the system clock (behind,
    /// when negative).
    ///
    /// For tests of masters whose wall clocks disagree, such as a [`Redlock`](crate::Redlock) master
    /// whose clock is ten minutes ahead. Expiry is unaffected: TTLs run on the monotonic clock, as
    /// Redis's do on a server whose wall clock is merely set wrong.
    pub fn with_clock_offset(offset_micros: i64) -> Self {
        Self::with_clock(Arc::new(SystemClock { offset_micros }))
    }

    /// An empty backend on the server clock `clock`: for simulations and tests that run on virtual
    /// time, where a key expires when the virtual clock passes its TTL and `TIME` answers the virtual
    /// wall clock.
    ///
    /// The backend itself still completes every call at once and knows nothing of networks: a
    /// simulation puts its own delays, losses and failures in front of it, and uses
    /// [`snapshot`](Self::snapshot) and [`restore`](Self::restore) for replicas, failovers and
    /// restarts.
    pub fn with_clock(clock: Arc<dyn ServerClock>) -> Self {
        static STORES: AtomicU64 = AtomicU64::new(0);
        Self {
            entries: Arc::default(),
            runtime: Runtime::new(MemoryExecutor),
            clock,
            server_id: STORES.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// A copy of every live key with its expiry: for simulations and tests. A replica that received the
    /// writes up to now holds exactly this; [`restore`](Self::restore) it later to play a failover that
    /// promoted that replica (the writes since are lost), or a restart that found it on disk.
    ///
    /// Expiries are kept as moments of this backend's clock, so restore a snapshot into the backend it
    /// was taken from (or one on the same clock): as with Redis, which replicates absolute expiries, a
    /// key that expired meanwhile is gone once restored.
    pub fn snapshot(&self) -> MemorySnapshot {
        MemorySnapshot {
            entries: self.live_entries().clone(),
        }
    }

    /// Replaces all data with `snapshot` (an empty one: every key lost, as a restart without
    /// persistence loses them): for simulations and tests. See [`snapshot`](Self::snapshot).
    pub fn restore(&self, snapshot: &MemorySnapshot) {
        *self.live_entries() = snapshot.entries.clone();
    }

    /// The server clock this backend runs on.
    pub fn clock(&self) -> &Arc<dyn ServerClock> {
        &self.clock
    }

    /// The current value of `key`, if it exists and has not expired (like `GET`).
    pub fn get(&self, key: &str) -> Option<String> {
        self.live_entries().get(key).map(|e| e.value.clone())
    }

    /// The remaining time to live of `key`, if it exists and has one (like `PTTL`).
    pub fn ttl(&self, key: &str) -> Option<Duration> {
        let now = self.clock.now();
        let data = self.live_entries();
        data.get(key)
            .and_then(|e| e.expires_at)
            .or_else(|| data.sets.get(key).and_then(|set| set.expires_at))
            .map(|at| at.saturating_duration_since(now))
    }

    /// Sets `key` to `value` for `ttl`, whatever it held (like `SET key value PX ttl`): for tests that
    /// simulate another holder.
    pub fn set(&self, key: &str, value: &str, ttl: Duration) {
        let now = self.clock.now();
        self.live_entries()
            .insert(key.to_owned(), Entry::expiring(value, now, ttl));
    }

    /// Deletes `key` (like `DEL`): for tests that simulate an expiry. Returns whether it existed.
    pub fn delete(&self, key: &str) -> bool {
        let mut data = self.live_entries();
        data.remove(key).is_some() | data.sets.remove(key).is_some()
    }

    /// The members of the sorted set `key` with their scores, lowest score first (like
    /// `ZRANGE key 0 -1 WITHSCORES`): the holders of a semaphore or read-write lock, scored by their
    /// expiry on the server's wall clock in milliseconds. Empty when there is no such key.
    pub fn members(&self, key: &str) -> Vec<(String, i64)> {
        self.live_entries()
            .sets
            .get(key)
            .map(sets::SortedSet::ordered)
            .unwrap_or_default()
    }

    /// The map with every expired entry removed: lazy expiry, as Redis does on access.
    fn live_entries(&self) -> MutexGuard<'_, Data> {
        // No code below panics while holding the lock; recover rather than poison every later call.
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.clock.now();
        entries.retain(|_, e| e.expires_at.is_none_or(|at| at > now));
        entries
            .sets
            .retain(|_, set| set.expires_at.is_none_or(|at| at > now));
        entries
    }
}

#[async_trait]
impl LockBackend for MemoryBackend {
    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, BackendError> {
        let now = self.clock.now();
        let mut entries = self.live_entries();
        if entries.sets.contains_key(key) {
            return Ok(false);
        }
        if let Some(existing) = entries.get(key) {
            return Ok(existing.value == value);
        }
        entries.insert(key.to_owned(), Entry::expiring(value, now, ttl));
        Ok(true)
    }

    async fn eval_script(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<ScriptValue, BackendError> {
        self.run_script(script, keys, args)
    }

    /// Runs the script; there are no replicas, so none acknowledges: a lock that asks for replicas
    /// always gets [`LockError::NotReplicated`](crate::LockError::NotReplicated) here.
    async fn eval_script_replicated(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
        _replicas: usize,
        _timeout: Duration,
    ) -> Result<(ScriptValue, usize), BackendError> {
        self.run_script(script, keys, args).map(|reply| (reply, 0))
    }

    /// Replica acknowledgement (answered with zero replicas); no release signals and no blocking
    /// waits: tasks of this process wait in the runtime's lines, and there are no others.
    fn capabilities(&self) -> Capabilities {
        Capabilities::new().with_replica_acks(true)
    }

    /// Shared by clones, so they are one backend (one line per key, one identity).
    fn runtime(&self) -> Option<&Runtime> {
        Some(&self.runtime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script;

    #[test]
    fn entries_expire() {
        let backend = MemoryBackend::new();
        backend.set("k", "v", Duration::from_millis(30));
        assert_eq!(backend.get("k").as_deref(), Some("v"));
        assert!(backend.ttl("k").unwrap() <= Duration::from_millis(30));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(backend.get("k"), None);
        assert_eq!(backend.ttl("k"), None);
    }

    /// A clock moved by hand: expiry and `TIME` follow it, not the system's clocks.
    #[derive(Debug, Default)]
    struct ManualClock(Mutex<Duration>);

    impl ManualClock {
        fn advance(&self, by: Duration) {
            *self.0.lock().unwrap() += by;
        }
    }

    impl ServerClock for ManualClock {
        fn now(&self) -> Moment {
            Moment::from_origin(*self.0.lock().unwrap())
        }

        fn wall(&self) -> Duration {
            Duration::from_secs(1_700_000_000) + *self.0.lock().unwrap()
        }
    }

    #[test]
    fn an_injected_clock_drives_expiry_and_time() {
        let clock = Arc::new(ManualClock::default());
        let backend = MemoryBackend::with_clock(clock.clone());
        backend.set("k", "v", Duration::from_millis(30));
        clock.advance(Duration::from_millis(29));
        assert_eq!(backend.ttl("k"), Some(Duration::from_millis(1)));
        clock.advance(Duration::from_millis(1));
        assert_eq!(backend.get("k"), None, "expired on the injected clock");

        // The fenced acquire's fence and clock are the injected wall clock in microseconds.
        let reply = futures::executor::block_on(backend.eval_script(
            &script::FENCED_ACQUIRE,
            &["lock", "counter"],
            &["t", "1000"],
        ))
        .unwrap();
        let time = 1_700_000_000_030_000;
        assert_eq!(
            reply,
            ScriptValue::Array(vec![
                ScriptValue::Int(1),
                ScriptValue::Int(time),
                ScriptValue::Int(time)
            ])
        );
        // PEXPIRETIME is on the injected wall clock too.
        let reply =
            futures::executor::block_on(backend.eval_script(&script::EXPIRY, &["lock"], &["t"]))
                .unwrap();
        assert_eq!(
            reply,
            ScriptValue::Array(vec![
                ScriptValue::Int(1000),
                ScriptValue::Int(1_700_000_000_030 + 1000)
            ])
        );
    }

    #[test]
    fn a_restored_snapshot_loses_later_writes_and_keeps_expiries() {
        let clock = Arc::new(ManualClock::default());
        let backend = MemoryBackend::with_clock(clock.clone());
        backend.set("lock", "a", Duration::from_millis(100));
        backend.set("counter", "7", Duration::from_secs(3600));
        let replica = backend.snapshot();
        assert_eq!(replica.len(), 2);
        assert_eq!(replica.get("lock"), Some("a"));
        assert_eq!(
            replica.expires_at("lock"),
            Some(Moment::from_origin(Duration::from_millis(100)))
        );
        assert_eq!(replica.expires_at("late"), None);
        backend.set("counter", "8", Duration::from_secs(3600));
        backend.set("late", "x", Duration::from_secs(3600));

        clock.advance(Duration::from_millis(60));
        backend.restore(&replica);
        assert_eq!(
            backend.get("counter").as_deref(),
            Some("7"),
            "the tail is lost"
        );
        assert_eq!(backend.get("late"), None);
        assert_eq!(backend.ttl("lock"), Some(Duration::from_millis(40)));
        clock.advance(Duration::from_millis(40));
        assert_eq!(backend.get("lock"), None, "expired while it was a replica");

        backend.restore(&MemorySnapshot::default());
        assert_eq!(
            backend.get("counter"),
            None,
            "a restart without persistence"
        );
        assert!(backend.snapshot().is_empty());
    }

    #[test]
    fn the_server_id_is_one_per_store_and_shared_by_clones() {
        let id = |backend: &MemoryBackend| {
            futures::executor::block_on(backend.eval_script(&script::SERVER_ID, &[], &[])).unwrap()
        };
        let (a, b) = (MemoryBackend::new(), MemoryBackend::new());
        assert!(matches!(id(&a), ScriptValue::Str(ref s) if s.starts_with("memory-")));
        assert_eq!(id(&a), id(&a.clone()));
        assert_ne!(id(&a), id(&b));
    }

    #[test]
    fn unknown_scripts_are_refused() {
        let backend = MemoryBackend::new();
        backend.set("k", "t", Duration::from_secs(5));
        let custom = Script::new("custom", "return 1");
        let err =
            futures::executor::block_on(backend.eval_script(&custom, &["k"], &["t"])).unwrap_err();
        assert_eq!(err.backend(), "memory");
        assert!(!err.is_transient());
    }
}
