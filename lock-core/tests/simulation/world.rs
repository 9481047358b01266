//! The simulated world: clocks, servers, the network between them and the client processes, and the
//! faults.
//!
//! A server is a [`MemoryBackend`] (redlease's scripts with Redis's semantics) on a virtual clock, with
//! a replica that receives its writes asynchronously (a snapshot taken every few milliseconds, or at
//! once when a `WAIT` reaches it), a failover that promotes that replica (the unreplicated tail is
//! lost) and a restart that loses what was not persisted. A client process is one [`LockBackend`] per
//! server, whose runtime ([`SimExecutor`]) reads the process's own clock (running at a drawn rate),
//! sleeps on a timer on it and spawns on the executor; every call goes through the network, which
//! delays, drops requests, drops replies after applying them, re-sends them (applied twice, the second
//! reply returned, as fred does after a reconnect), and bounds each call on the client's clock: a call
//! that timed out may still land afterwards.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::FutureExt;
use futures::channel::oneshot;
use futures::future::{BoxFuture, Either, select};
use lock_core::memory::{MemoryBackend, MemorySnapshot, ServerClock};
use lock_core::script::{self, Script};
use lock_core::{BackendError, Executor, LockBackend, Moment, ScriptValue, async_trait};

use super::executor::{Instant, Runtime};
use super::history::{History, Waiter, What};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A clock running at `rate` against true time, from `origin`.
#[derive(Debug, Clone)]
pub struct VirtualClock {
    pub rt: Runtime,
    pub rate: f64,
    pub origin: Duration,
}

impl VirtualClock {
    /// The clock's reading now.
    pub fn local(&self) -> Duration {
        self.origin + self.scale(self.rt.now())
    }

    fn scale(&self, true_time: Duration) -> Duration {
        Duration::from_nanos((true_time.as_nanos() as f64 * self.rate) as u64)
    }

    /// How much true time passes while this clock moves `local` forward (rounded up).
    pub fn true_span(&self, local: Duration) -> Duration {
        Duration::from_nanos((local.as_nanos() as f64 / self.rate).ceil() as u64 + 1)
    }

    /// The first true instant at which this clock reads at least `local` (exact and the same every time
    /// it is asked, unlike a span added to a moving `now`).
    pub fn true_instant(&self, local: Duration) -> Instant {
        let since = local.saturating_sub(self.origin);
        Duration::from_nanos((since.as_nanos() as f64 / self.rate).ceil() as u64 + 1)
    }

    /// How much true time a span of this clock is, rounded down (for beliefs: never longer than the
    /// client meant).
    pub fn true_span_floor(&self, local: Duration) -> Duration {
        Duration::from_nanos((local.as_nanos() as f64 / self.rate).floor() as u64)
            .saturating_sub(Duration::from_nanos(1))
    }
}

/// A server's clock: expiry on its virtual clock, `TIME` on a wall clock at the same rate.
#[derive(Debug)]
pub struct SimServerClock {
    pub clock: VirtualClock,
    /// The wall clock's reading at the clock's origin.
    pub wall_base: Duration,
}

impl ServerClock for SimServerClock {
    fn now(&self) -> Moment {
        Moment::from_origin(self.clock.local())
    }

    fn wall(&self) -> Duration {
        self.wall_base + (self.clock.local() - self.clock.origin)
    }
}

/// What a run injects, and until when.
#[derive(Debug, Clone)]
pub struct Faults {
    /// Faults stop at this true instant (the quiet phase follows).
    pub until: Instant,
    pub drop_request: f64,
    pub drop_reply: f64,
    pub resend: f64,
    /// Probability that a message is slow, and how slow it can be.
    pub slow: f64,
    pub slow_max: Duration,
    /// Normal one-way delays are drawn up to this.
    pub delay_max: Duration,
}

/// The world's shared parts: time, the world's RNG (separate from the schedule's), the history.
#[derive(Debug)]
pub struct Core {
    pub rt: Runtime,
    pub history: History,
    pub rng: Mutex<fastrand::Rng>,
    pub faults: Faults,
}

impl Core {
    pub fn rng(&self) -> MutexGuard<'_, fastrand::Rng> {
        lock(&self.rng)
    }

    pub fn record(&self, what: What) {
        self.history.record(self.rt.now(), what);
    }

    pub fn faulty(&self) -> bool {
        self.rt.now() < self.faults.until
    }

    fn delay(&self, rng: &mut fastrand::Rng) -> Duration {
        let f = &self.faults;
        let max = if self.faulty() && rng.f64() < f.slow {
            f.slow_max
        } else {
            f.delay_max
        };
        Duration::from_nanos(rng.u64(20_000..=max.as_nanos().max(20_000) as u64))
    }

    fn plan(&self) -> Plan {
        let mut rng = self.rng();
        let request = self.delay(&mut rng);
        let reply = self.delay(&mut rng);
        let fate = if !self.faulty() {
            Fate::Deliver
        } else {
            let f = &self.faults;
            let x = rng.f64();
            if x < f.drop_request {
                Fate::DropRequest
            } else if x < f.drop_request + f.drop_reply {
                Fate::DropReply
            } else if x < f.drop_request + f.drop_reply + f.resend {
                Fate::Resend(self.delay(&mut rng))
            } else {
                Fate::Deliver
            }
        };
        Plan {
            request,
            reply,
            fate,
        }
    }
}

/// What the network does with one call.
struct Plan {
    request: Duration,
    reply: Duration,
    fate: Fate,
}

enum Fate {
    Deliver,
    /// Lost before the server: the client hears of the broken connection, nothing was applied.
    DropRequest,
    /// Applied, then the connection broke before the reply.
    DropReply,
    /// Applied, the connection broke, the client re-sent it over a new one after this long: applied
    /// again, and the second reply is the one returned.
    Resend(Duration),
}

/// A request as the server receives it.
#[derive(Debug, Clone)]
pub enum Request {
    SetNx {
        key: String,
        value: String,
        ttl: Duration,
    },
    Eval {
        script: Script,
        keys: Vec<String>,
        args: Vec<String>,
        /// `WAIT replicas timeout` after the script.
        wait: Option<(usize, Duration)>,
    },
}

type Reply = Result<(ScriptValue, usize), BackendError>;

/// One simulated Redis server (a primary with one asynchronous replica).
#[derive(Debug)]
pub struct SimServer {
    pub index: usize,
    core: Arc<Core>,
    pub clock: Arc<SimServerClock>,
    pub store: MemoryBackend,
    state: Mutex<ServerState>,
}

#[derive(Debug, Default)]
struct ServerState {
    down_until: Instant,
    /// Writes applied so far (the replication offset).
    seq: u64,
    /// What the replica has, and up to which write.
    replica: (MemorySnapshot, u64),
    /// Whether replication flows (a broken link leaves the replica lagging, and `WAIT` unanswered).
    replica_link: bool,
    /// What a restart finds on disk.
    persisted: (MemorySnapshot, u64),
    /// The last recorded state of every lock key seen, to record only changes.
    keys: BTreeMap<String, Option<(String, Instant)>>,
    /// The same, on the replica.
    replica_keys: BTreeMap<String, Option<(String, Instant)>>,
    /// The last recorded members of every sorted-set key seen (semaphores' holders), to record only
    /// changes.
    set_keys: BTreeMap<String, Vec<(String, i64)>>,
    /// Per fair lock key seen: its queue and heartbeat keys, and the waiters last recorded.
    fair_keys: BTreeMap<String, FairKeys>,
}

/// A fair lock's companion keys on a server, and its waiters as last recorded.
#[derive(Debug, Default)]
struct FairKeys {
    queue: String,
    beats: String,
    last: Vec<(String, i64, i64)>,
}

fn is_fair(script: &Script) -> bool {
    script.sha1() == script::FAIR_ACQUIRE.sha1() || script.sha1() == script::FAIR_LEAVE.sha1()
}

fn transient(why: &'static str) -> BackendError {
    BackendError::transient("sim", why)
}

impl SimServer {
    pub fn new(index: usize, core: Arc<Core>, rate: f64, wall_offset: Duration) -> Arc<Self> {
        let clock = Arc::new(SimServerClock {
            clock: VirtualClock {
                rt: core.rt.clone(),
                rate,
                origin: Duration::from_secs(1000 + 17 * index as u64),
            },
            // Some time in 2026, plus this server's offset.
            wall_base: Duration::from_secs(1_780_000_000) + wall_offset,
        });
        let store = MemoryBackend::with_clock(clock.clone());
        Arc::new(Self {
            index,
            core,
            clock,
            store,
            state: Mutex::new(ServerState {
                replica_link: true,
                ..ServerState::default()
            }),
        })
    }

    fn now(&self) -> Instant {
        self.core.rt.now()
    }

    /// The true instant a key with `ttl` left (on this server's clock) expires.
    fn expires(&self, ttl: Duration) -> Instant {
        let clock = &self.clock.clock;
        clock.true_instant(clock.local() + ttl)
    }

    /// The key's token and true expiry, as the server has it now.
    pub fn holder(&self, key: &str) -> Option<(String, Instant)> {
        let value = self.store.get(key)?;
        let ttl = self.store.ttl(key)?;
        Some((value, self.expires(ttl)))
    }

    /// The true instant at which this server's wall clock reaches `ms` (Unix milliseconds): when a
    /// sorted-set member scored `ms` stops being live for the scripts (they compare `score > now`).
    pub fn wall_ms_instant(&self, ms: i64) -> Instant {
        let clock = &self.clock.clock;
        let at = Duration::from_millis(ms.max(0).unsigned_abs());
        let local = (clock.origin + at).saturating_sub(self.clock.wall_base);
        clock.true_instant(local)
    }

    /// This server's wall clock in whole milliseconds, as a script reading `TIME` now computes `now`.
    fn wall_ms(&self) -> i64 {
        i64::try_from(self.clock.wall().as_millis()).unwrap_or(i64::MAX)
    }

    pub fn is_down(&self) -> bool {
        self.now() < lock(&self.state).down_until
    }

    /// Applies a request, as the server would on receiving it; `None` for the reply's extra delay when
    /// `WAIT` answered at once.
    fn apply(&self, request: &Request) -> (Reply, Duration) {
        let mut state = lock(&self.state);
        if self.now() < state.down_until {
            return (
                Err(transient(
                    "LOADING the server is failing over or restarting",
                )),
                Duration::ZERO,
            );
        }
        state.seq += 1;
        let seq = state.seq;
        let (lock_key, token) = match request {
            Request::SetNx { key, value, .. } => (Some(key.as_str()), value.as_str()),
            Request::Eval {
                script, keys, args, ..
            } if script.sha1() != script::FENCED_SET.sha1() => (
                keys.first().map(String::as_str),
                args.first().map_or("", String::as_str),
            ),
            Request::Eval { .. } => (None, ""),
        };
        let held_before = lock_key.and_then(|key| self.store.get(key));
        // The companion string keys of a script (a fence counter among them), to see which it moved.
        let companions_before: Vec<Option<String>> = match request {
            Request::Eval { keys, .. } => keys.iter().skip(1).map(|k| self.store.get(k)).collect(),
            Request::SetNx { .. } => Vec::new(),
        };
        let reply = match request {
            Request::SetNx { key, value, ttl } => self
                .store
                .set_nx(key, value, *ttl)
                .now_or_never()
                .expect("the memory backend answers at once")
                .map(|set| ScriptValue::Int(i64::from(set))),
            Request::Eval {
                script, keys, args, ..
            } => {
                let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                self.store
                    .eval_script(script, &keys, &args)
                    .now_or_never()
                    .expect("the memory backend answers at once")
            }
        };
        if let (Request::Eval { script, keys, .. }, Ok(ScriptValue::Array(items))) =
            (request, &reply)
            && (script.sha1() == script::FENCED_ACQUIRE.sha1()
                // A fair lock's grant issues a fence when it has a counter (`KEYS[5]`).
                || (script.sha1() == script::FAIR_ACQUIRE.sha1() && keys.len() == 5))
            && held_before.as_deref() != Some(token)
            && let [ScriptValue::Int(1), ScriptValue::Int(fence), ..] = items.as_slice()
        {
            self.core.record(What::FenceIssued {
                server: self.index,
                key: keys[0].clone(),
                token: token.to_owned(),
                fence: *fence as u64,
            });
        }
        // A hand-over (issue 13) grants the lock to its second argument: the fenced one issues a fence
        // as FENCED_ACQUIRE does (a re-sent hand-over, finding that token already, issues none).
        if let (
            Request::Eval {
                script, keys, args, ..
            },
            Ok(ScriptValue::Array(items)),
        ) = (request, &reply)
            && script.sha1() == script::FENCED_HAND_OVER.sha1()
            && held_before.as_deref() != args.get(1).map(String::as_str)
            && let [ScriptValue::Int(1), ScriptValue::Int(fence)] = items.as_slice()
        {
            self.core.record(What::FenceIssued {
                server: self.index,
                key: keys[0].clone(),
                token: args[1].clone(),
                fence: *fence as u64,
            });
        }
        if let (
            Request::Eval {
                script, keys, args, ..
            },
            Ok(ScriptValue::Int(1)),
        ) = (request, &reply)
            && script.sha1() == script::FENCED_SET.sha1()
        {
            self.core.record(What::FencedWrite {
                server: self.index,
                resource: keys[0].clone(),
                token: args[2].clone(),
                fence: args[1].parse().expect("fences are integers"),
                value: args[0].clone(),
                seq,
            });
        }
        if let (
            Request::Eval {
                script, keys, args, ..
            },
            Ok(ScriptValue::Int(0)),
        ) = (request, &reply)
            && script.sha1() == script::FENCED_SET.sha1()
        {
            self.core.record(What::FencedRefused {
                server: self.index,
                resource: keys[0].clone(),
                token: args[2].clone(),
                fence: args[1].parse().expect("fences are integers"),
            });
        }
        if let Some(key) = lock_key {
            let cause = match request {
                Request::SetNx { .. } => "set_nx",
                Request::Eval { script, .. } => script.name(),
            };
            // A sorted set (a semaphore's holders) is recorded member by member; a string as a lock.
            if state.set_keys.contains_key(key) || !self.store.members(key).is_empty() {
                if let (Request::Eval { keys, args, .. }, Ok(reply)) = (request, &reply) {
                    self.record_set_fence(keys, args, &companions_before, reply);
                }
                self.record_members(&mut state, key, cause);
            } else {
                self.record_key(&mut state, key, cause);
            }
            // A fair lock's queue, after every fair script that changed it or granted.
            if let (
                Request::Eval {
                    script, keys, args, ..
                },
                Ok(reply),
            ) = (request, &reply)
                && is_fair(script)
                && let [_, queue, beats, ..] = keys.as_slice()
            {
                // A grant to a new holder (a re-sent grant to the holder only resets its TTL).
                let granted = (matches!(reply, ScriptValue::Array(items)
                    if items.first() == Some(&ScriptValue::Int(1)))
                    && held_before.as_deref() != Some(args[0].as_str()))
                .then(|| args[0].clone());
                let fair = state.fair_keys.entry(key.to_owned()).or_default();
                fair.queue.clone_from(queue);
                fair.beats.clone_from(beats);
                self.record_queue(&mut state, key, granted, cause);
            }
        }
        // Batched renewals (issue 13): `RENEW_MANY` moves the expiry of every key it names, not only
        // the first one's (recorded above).
        if let Request::Eval { script, keys, .. } = request
            && script.sha1() == script::RENEW_MANY.sha1()
        {
            for key in keys.iter().skip(1) {
                self.record_key(&mut state, key, script.name());
            }
        }
        // A read-write lock's writers' key (its waiting writers' intents), which these scripts change
        // beside the lock key.
        if let Request::Eval { script, keys, .. } = request
            && (script.sha1() == script::RW_READ.sha1() || script.sha1() == script::RW_WRITE.sha1())
            && let Some(writers) = keys.get(1)
            && (state.set_keys.contains_key(writers) || !self.store.members(writers).is_empty())
        {
            self.record_members(&mut state, writers, script.name());
        }
        let mut extra = Duration::ZERO;
        let reply = match (request, reply) {
            (
                Request::Eval {
                    wait: Some((n, timeout)),
                    ..
                },
                Ok(value),
            ) => {
                let acked = if state.replica_link {
                    // `WAIT` returns once the replica has everything up to here.
                    self.set_replica(&mut state, self.store.snapshot(), seq);
                    1
                } else {
                    0
                };
                if acked < *n {
                    extra = self.clock.clock.true_span(*timeout);
                }
                Ok((value, acked.min(*n)))
            }
            (_, reply) => reply.map(|value| (value, 0)),
        };
        (reply, extra)
    }

    /// The replica now has `snapshot` (up to write `seq`): records what changed for the lock keys.
    fn set_replica(&self, state: &mut ServerState, snapshot: MemorySnapshot, seq: u64) {
        let clock = &self.clock.clock;
        let keys: Vec<String> = state.keys.keys().cloned().collect();
        for key in keys {
            let holder = snapshot.get(&key).and_then(|token| {
                let expires = snapshot.expires_at(&key)?;
                Some((token.to_owned(), clock.true_instant(expires.since_origin())))
            });
            let last = state.replica_keys.entry(key.clone()).or_insert(None);
            if *last != holder {
                last.clone_from(&holder);
                self.core.record(What::ReplicaState {
                    server: self.index,
                    key,
                    holder,
                });
            }
        }
        state.replica = (snapshot, seq);
    }

    /// A script on a sorted-set key issued a fence when it granted (`{1, fence, ..}`) and moved a
    /// companion string key to that fence: the counter. (A re-sent grant answers the counter as it
    /// stands without moving it: not a new fence.)
    fn record_set_fence(
        &self,
        keys: &[String],
        args: &[String],
        before: &[Option<String>],
        reply: &ScriptValue,
    ) {
        let ScriptValue::Array(items) = reply else {
            return;
        };
        let [ScriptValue::Int(1), ScriptValue::Int(fence), ..] = items.as_slice() else {
            return;
        };
        let moved = keys.iter().skip(1).zip(before).any(|(counter, before)| {
            let after = self.store.get(counter);
            after != *before && after.is_some_and(|value| value == fence.to_string())
        });
        if moved {
            self.core.record(What::FenceIssued {
                server: self.index,
                key: keys[0].clone(),
                // The member, which names the holder's token.
                token: args.first().cloned().unwrap_or_default(),
                fence: *fence as u64,
            });
        }
    }

    /// Records the members of the sorted set `key` (with each holder's true expiry) if they changed.
    fn record_members(&self, state: &mut ServerState, key: &str, cause: &'static str) {
        let members = self.store.members(key);
        let last = state.set_keys.entry(key.to_owned()).or_default();
        if *last == members {
            return;
        }
        last.clone_from(&members);
        let members = members
            .into_iter()
            .map(|(member, score)| {
                let expires = if score > 0 {
                    self.wall_ms_instant(score)
                } else {
                    Instant::ZERO
                };
                (member, score, expires)
            })
            .collect();
        self.core.record(What::Members {
            server: self.index,
            key: key.to_owned(),
            wall_ms: self.wall_ms(),
            members,
            cause,
        });
    }

    /// Records the fair lock `key`'s queue if it changed, or always when the script `granted`.
    fn record_queue(
        &self,
        state: &mut ServerState,
        key: &str,
        granted: Option<String>,
        cause: &'static str,
    ) {
        let Some(fair) = state.fair_keys.get_mut(key) else {
            return;
        };
        let beats: BTreeMap<String, i64> = self.store.members(&fair.beats).into_iter().collect();
        // In ticket order (`members` lists them by score).
        let waiters: Vec<(String, i64, i64)> = self
            .store
            .members(&fair.queue)
            .into_iter()
            .map(|(token, ticket)| {
                let beat = beats.get(&token).copied().unwrap_or(0);
                (token, ticket, beat)
            })
            .collect();
        if waiters == fair.last && granted.is_none() {
            return;
        }
        fair.last.clone_from(&waiters);
        let waiters = waiters
            .into_iter()
            .map(|(token, ticket, beat_ms)| Waiter {
                token,
                ticket,
                beat_ms,
                lapses: self.wall_ms_instant(beat_ms),
            })
            .collect();
        self.core.record(What::FairQueue {
            server: self.index,
            key: key.to_owned(),
            wall_ms: self.wall_ms(),
            waiters,
            granted,
            cause,
        });
    }

    fn record_key(&self, state: &mut ServerState, key: &str, cause: &'static str) {
        let holder = self.holder(key);
        let last = state.keys.entry(key.to_owned()).or_insert(None);
        if *last != holder {
            last.clone_from(&holder);
            self.core.record(What::KeyState {
                server: self.index,
                key: key.to_owned(),
                holder,
                cause,
            });
        }
    }

    /// Replication: the replica catches up every few milliseconds while the link is up, and the disk
    /// every second, until `stop`.
    pub fn replicate(self: &Arc<Self>, every: Duration, stop: Instant) {
        let next = self.now() + every;
        if next > stop {
            return;
        }
        let server = self.clone();
        self.core.rt.call_at(next, move || {
            {
                let mut state = lock(&server.state);
                if server.now() >= state.down_until {
                    if state.replica_link {
                        let seq = state.seq;
                        server.set_replica(&mut state, server.store.snapshot(), seq);
                    }
                    let second = Duration::from_secs(1);
                    if server.now().as_millis() / second.as_millis()
                        != (server.now() - every).as_millis() / second.as_millis()
                    {
                        state.persisted = (server.store.snapshot(), state.seq);
                    }
                }
            }
            server.replicate(every, stop);
        });
    }

    /// Breaks or repairs the replication link.
    pub fn set_replica_link(&self, up: bool) {
        lock(&self.state).replica_link = up;
    }

    /// A failover: the replica, with what it had received, becomes the primary, which answers nothing
    /// for `downtime`. `covered`: the lock waits for this replica (`replicas`).
    pub fn fail_over(&self, downtime: Duration, covered: bool) {
        let mut state = lock(&self.state);
        let (snapshot, to_seq) = state.replica.clone();
        self.roll_back(&mut state, &snapshot, to_seq, downtime, covered);
    }

    /// A restart: the server comes back after `downtime` with what it had persisted (or nothing).
    pub fn restart(&self, downtime: Duration, keep_persisted: bool) {
        let mut state = lock(&self.state);
        let (snapshot, to_seq) = if keep_persisted {
            state.persisted.clone()
        } else {
            (MemorySnapshot::default(), 0)
        };
        self.roll_back(&mut state, &snapshot, to_seq, downtime, false);
    }

    fn roll_back(
        &self,
        state: &mut ServerState,
        snapshot: &MemorySnapshot,
        to_seq: u64,
        downtime: Duration,
        covered: bool,
    ) {
        self.store.restore(snapshot);
        self.core.record(What::Rollback {
            server: self.index,
            to_seq,
            from_seq: state.seq,
            covered,
        });
        let until = self.now() + downtime;
        state.down_until = state.down_until.max(until);
        self.core.record(What::Down {
            server: self.index,
            until,
        });
        // The new primary starts its own replica from what it has; later writes number on.
        let seq = state.seq;
        self.set_replica(state, self.store.snapshot(), seq);
        state.persisted = (self.store.snapshot(), state.seq);
        let keys: Vec<String> = state.keys.keys().cloned().collect();
        for key in keys {
            self.record_key(state, &key, "restore");
        }
        let set_keys: Vec<String> = state.set_keys.keys().cloned().collect();
        for key in set_keys {
            self.record_members(state, &key, "restore");
        }
        let fair_keys: Vec<String> = state.fair_keys.keys().cloned().collect();
        for key in fair_keys {
            self.record_queue(state, &key, None, "restore");
        }
    }
}

/// A client process: its clock and its tasks' process id.
#[derive(Debug)]
pub struct Process {
    pub index: usize,
    pub clock: VirtualClock,
}

/// A client process's connection to one server: the [`LockBackend`] its locks use.
pub struct SimClient {
    pub process: Arc<Process>,
    pub server: Arc<SimServer>,
    core: Arc<Core>,
    /// The per-call bound, on the process's clock.
    pub bound: Duration,
    /// On [`SimExecutor`]; its own waiting lines, as each adapter value has.
    runtime: lock_core::Runtime,
}

/// A client process's runtime: its clock (the process's virtual clock, at its drawn rate), timers on
/// that clock, and tasks spawned on the simulation's executor as the process's.
struct SimExecutor {
    process: Arc<Process>,
    rt: Runtime,
}

impl Executor for SimExecutor {
    fn now(&self) -> Moment {
        Moment::from_origin(self.process.clock.local())
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        let rt = &self.rt;
        Box::pin(rt.sleep_until(rt.now() + self.process.clock.true_span(duration)))
    }

    fn spawn(&self, task: BoxFuture<'static, ()>) -> bool {
        self.rt.spawn_boxed(Some(self.process.index), task);
        true
    }
}

impl fmt::Debug for SimClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimClient")
            .field("process", &self.process.index)
            .field("server", &self.server.index)
            .finish()
    }
}

impl SimClient {
    pub fn new(
        process: Arc<Process>,
        server: Arc<SimServer>,
        core: Arc<Core>,
        bound: Duration,
    ) -> Self {
        let runtime = lock_core::Runtime::new(SimExecutor {
            process: process.clone(),
            rt: core.rt.clone(),
        });
        Self {
            process,
            server,
            core,
            bound,
            runtime,
        }
    }

    async fn call(&self, request: Request, bound: Duration) -> Reply {
        let acquiring = match &request {
            Request::SetNx { key, value, .. } => Some((key.clone(), value.clone())),
            Request::Eval {
                script, keys, args, ..
            } if script.sha1() == script::FENCED_ACQUIRE.sha1()
                || script.sha1() == script::ACQUIRE.sha1()
                || script.sha1() == script::FAIR_ACQUIRE.sha1() =>
            {
                Some((keys[0].clone(), args[0].clone()))
            }
            Request::Eval { .. } => None,
        };
        // A hand-over (issue 13) releases its first token and acquires its second, for a task of this
        // process: recorded as both.
        let handing_over = matches!(&request, Request::Eval { script, .. }
            if script.sha1() == script::HAND_OVER.sha1()
                || script.sha1() == script::FENCED_HAND_OVER.sha1());
        let acquiring = match &request {
            Request::Eval { keys, args, .. } if handing_over => {
                Some((keys[0].clone(), args[1].clone()))
            }
            _ => acquiring,
        };
        if let Request::Eval { script, args, .. } = &request
            && (script.sha1() == script::RELEASE.sha1()
                || script.sha1() == script::RELEASE_AND_SIGNAL.sha1()
                || handing_over)
        {
            self.core.record(What::ReleaseSent {
                process: self.process.index,
                server: self.server.index,
                token: args[0].clone(),
            });
        }
        if let Request::Eval {
            script, keys, args, ..
        } = &request
            && script.sha1() == script::RW_WRITE.sha1()
        {
            self.core.record(What::IntentSent {
                process: self.process.index,
                task: self.core.rt.current_task(),
                key: keys[0].clone(),
                writers: keys[1].clone(),
                intent: args[2].clone(),
            });
        }
        if let Some((key, token)) = acquiring {
            self.core.record(What::AcquireSent {
                process: self.process.index,
                task: self.core.rt.current_task(),
                key,
                token,
            });
        }
        let (tx, rx) = oneshot::channel();
        let plan = self.core.plan();
        let (rt, server) = (self.core.rt.clone(), self.server.clone());
        let at = rt.now() + plan.request;
        self.core
            .rt
            .call_at(at, move || deliver(rt, server, request, plan, tx));
        match select(rx, self.runtime.sleep(bound)).await {
            Either::Left((Ok(reply), _)) => reply,
            Either::Left((Err(_), _)) => Err(transient("the network lost the reply channel")),
            Either::Right(_) => Err(BackendError::timed_out("sim", bound)),
        }
    }
}

/// The network's part of a call, from the moment the request reaches the server.
fn deliver(
    rt: Runtime,
    server: Arc<SimServer>,
    request: Request,
    plan: Plan,
    reply_to: oneshot::Sender<Reply>,
) {
    let later = move |rt: &Runtime, after: Duration, reply: Reply| {
        let at = rt.now() + after;
        rt.call_at(at, move || {
            // The caller may have given up; the reply then goes nowhere.
            let _ = reply_to.send(reply);
        });
    };
    match plan.fate {
        Fate::DropRequest => later(
            &rt,
            plan.reply,
            Err(transient("connection reset before the request was sent")),
        ),
        Fate::Deliver => {
            let (reply, extra) = server.apply(&request);
            later(&rt, plan.reply + extra, reply);
        }
        Fate::DropReply => {
            let _ = server.apply(&request);
            later(
                &rt,
                plan.reply,
                Err(transient("connection reset before the reply arrived")),
            );
        }
        Fate::Resend(gap) => {
            let _ = server.apply(&request);
            let rt2 = rt.clone();
            rt.call_at(rt.now() + gap, move || {
                let (reply, extra) = server.apply(&request);
                later(&rt2, plan.reply + extra, reply);
            });
        }
    }
}

fn owned(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[async_trait]
impl LockBackend for SimClient {
    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, BackendError> {
        let request = Request::SetNx {
            key: key.to_owned(),
            value: value.to_owned(),
            ttl,
        };
        let (reply, _) = self.call(request, self.bound).await?;
        Ok(reply == ScriptValue::Int(1))
    }

    async fn eval_script(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<ScriptValue, BackendError> {
        // Which server this is, for Redlock's check that no server is listed twice: answered here,
        // outside the network, so that asking draws nothing from the seeded faults.
        if script.sha1() == script::SERVER_ID.sha1() {
            return Ok(ScriptValue::Str(format!(
                "sim-server-{}",
                self.server.index
            )));
        }
        let request = Request::Eval {
            script: script.clone(),
            keys: owned(keys),
            args: owned(args),
            wait: None,
        };
        Ok(self.call(request, self.bound).await?.0)
    }

    async fn eval_script_replicated(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
        replicas: usize,
        timeout: Duration,
    ) -> Result<(ScriptValue, usize), BackendError> {
        let request = Request::Eval {
            script: script.clone(),
            keys: owned(keys),
            args: owned(args),
            wait: Some((replicas, timeout)),
        };
        // As the adapters do: the bound covers the WAIT.
        self.call(request, self.bound + timeout).await
    }

    fn capabilities(&self) -> lock_core::Capabilities {
        lock_core::Capabilities::new().with_replica_acks(true)
    }

    fn runtime(&self) -> Option<&lock_core::Runtime> {
        Some(&self.runtime)
    }
}
