//! One seeded run: a configuration drawn from the seed, the world, the workers and the fault injector,
//! then the checks.
//!
//! Workers mix every operation of the API over a few shared keys: `acquire` (waits of every length,
//! cancelled at random), `try_acquire`, `run`, `hold`, `extend`, `renew`, `is_owner`, `release`,
//! dropping a guard, fencing with `fenced_set`, `Election` (clones of one per process, so campaigns
//! share a candidate id), `Redlock` over five masters, and `replicas(1)`. They record what they
//! believed and what each call returned; the servers record what they did.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::{BoxFuture, Either, select};
use lock_core::{Election, Leadership, LockError, LockGuard, RedisLock, Redlock, RedlockGuard};

use super::executor::{Ended, Executor, Instant};
use super::history::{self, Detail, Event, History, Outcome, Params, Violation, What};
use super::world::{Core, Faults, Process, SimClient, SimServer, VirtualClock};

/// What a run exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One server: network faults, pauses, cancellations; no data is lost, so every belief is checked.
    Single,
    /// One server whose failovers and restarts lose data: fences and `fenced_set` are checked across
    /// them; beliefs only where no data was lost.
    Failover,
    /// One server with a replica the locks wait for (`replicas(1)`): failovers keep what was
    /// acknowledged, so every belief is checked across them.
    Replicas,
    /// Five masters with skewed clocks, a minority of them restarting empty (down for longer than the
    /// TTL and the clock-skew bound, as the Redlock docs require).
    Redlock,
}

/// A run's configuration, drawn from its seed.
#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    pub mode: Mode,
    pub processes: usize,
    pub workers: usize,
    pub keys: Vec<String>,
    pub resources: Vec<String>,
    pub ttl: Duration,
    pub bound: Duration,
    pub faults: Faults,
    pub quiet: Duration,
    /// Mean time between injected faults (pauses, failovers, restarts, broken replication).
    pub fault_every: Duration,
    pub pause_max: Duration,
    /// Probability that an operation is dropped at a random await.
    pub cancel: f64,
    pub elections: bool,
    /// No faults at all (delays only): liveness is checked from the start.
    pub calm: bool,
}

/// The mode `REDLEASE_SIM_MODE` forces on every seed (`single`, `failover`, `replicas`, `redlock`), to
/// focus a soak on one.
pub fn forced_mode() -> Option<Mode> {
    let mode = std::env::var("REDLEASE_SIM_MODE").ok()?;
    Some(match mode.as_str() {
        "single" => Mode::Single,
        "failover" => Mode::Failover,
        "replicas" => Mode::Replicas,
        "redlock" => Mode::Redlock,
        other => {
            panic!("REDLEASE_SIM_MODE must be single, failover, replicas or redlock, got {other:?}")
        }
    })
}

impl Config {
    pub fn draw(seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed_c0de);
        let mode = match rng.u32(0..20) {
            0..=5 => Mode::Single,
            6..=9 => Mode::Failover,
            10..=14 => Mode::Replicas,
            _ => Mode::Redlock,
        };
        let mode = forced_mode().unwrap_or(mode);
        let ttl = Duration::from_millis(*rng.choice(&[150, 400, 800, 1500, 3000]).unwrap());
        let delay_max = Duration::from_micros(rng.u64(200..3000));
        let bound = Duration::from_millis(rng.u64(20..80));
        let calm = rng.u32(0..5) == 0;
        let p = |rng: &mut fastrand::Rng, max: f64| if calm { 0.0 } else { rng.f64() * max };
        let faults = Faults {
            until: Duration::from_secs(rng.u64(6..12)),
            drop_request: p(&mut rng, 0.04),
            drop_reply: p(&mut rng, 0.04),
            resend: p(&mut rng, 0.05),
            slow: p(&mut rng, 0.05),
            slow_max: (bound * 3).min(ttl),
            delay_max,
        };
        // Long enough that liveness is checked for seconds after what the faults left behind.
        let quiet = Duration::from_secs(5) + ttl * 5 + faults.slow_max;
        // Two keys named so that their companion keys could collide (issue 8, hole 5), and one more.
        let keys = match rng.u32(0..3) {
            0 => vec!["lock:a".to_owned()],
            1 => vec!["lock:a".to_owned(), "{lock:a}".to_owned()],
            _ => vec![
                "lock:a".to_owned(),
                "{lock:a}".to_owned(),
                "lock:b".to_owned(),
            ],
        };
        Self {
            seed,
            mode,
            processes: rng.usize(2..=4),
            workers: rng.usize(1..=3),
            keys,
            resources: vec!["res".to_owned(), "{res}".to_owned()],
            ttl,
            bound,
            faults,
            quiet,
            fault_every: Duration::from_millis(if calm { 1_000_000 } else { rng.u64(150..1500) }),
            pause_max: ttl * 2,
            cancel: rng.f64() * 0.15,
            elections: mode != Mode::Redlock && mode != Mode::Replicas && rng.bool(),
            calm,
        }
    }

    /// When faults stop and when workers stop.
    fn end(&self) -> Instant {
        self.faults.until + self.quiet
    }

    /// From when liveness holds: faults stopped, pauses and downtime over, and what they left behind
    /// has expired.
    fn quiet_from(&self) -> Instant {
        if self.calm {
            return Duration::ZERO;
        }
        self.faults.until
            + self.pause_max
            + self.faults.slow_max
            + self.ttl * 2
            + Duration::from_secs(1)
    }

    /// The checker's parameters for this run.
    pub fn params(&self) -> Params {
        Params {
            quiet_from: (self.mode != Mode::Redlock).then(|| self.quiet_from()),
            orphan_grace: Duration::from_millis(200) + self.faults.delay_max * 8,
            stall_grace: Duration::from_millis(400) + self.faults.delay_max * 8,
            wait_slack: Duration::from_millis(5),
            replicated: self.mode == Mode::Replicas,
            ttl: self.ttl,
            bound: self.bound,
        }
    }

    fn replica_timeout(&self) -> Duration {
        Duration::from_millis(15)
    }
}

/// What a run found.
#[derive(Debug)]
pub struct Report {
    pub config: Config,
    pub operations: u64,
    pub violations: Vec<Violation>,
    pub events: usize,
    pub polls: u64,
    pub end: Instant,
    /// A digest of the history (tokens numbered by first appearance), equal for equal runs.
    pub digest: u64,
    pub history: Vec<Event>,
}

/// Everything the workers share.
struct Ctx {
    core: Arc<Core>,
    cfg: Config,
    servers: Vec<Arc<SimServer>>,
    processes: Vec<Arc<Process>>,
    /// Per process, per server.
    clients: Vec<Vec<Arc<SimClient>>>,
    operations: AtomicU64,
    values: AtomicU64,
}

/// Runs `seed` with the configuration drawn from it.
pub fn run_seed(seed: u64) -> Report {
    run_seed_with(seed, &Config::draw(seed))
}

pub fn run_seed_with(seed: u64, config: &Config) -> Report {
    let config = config.clone();
    // lock-core's own randomness (backoff, renewal jitter) comes from fastrand's thread-local RNG,
    // which every task of the run shares, on this thread.
    fastrand::seed(seed);
    let mut exec = Executor::new(seed);
    let rt = exec.runtime();
    let core = Arc::new(Core {
        rt: rt.clone(),
        history: History::default(),
        rng: std::sync::Mutex::new(fastrand::Rng::with_seed(seed.rotate_left(17) ^ 0x0123_4567)),
        faults: config.faults.clone(),
    });
    let mut rng = fastrand::Rng::with_seed(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let end = config.end();
    let servers: Vec<Arc<SimServer>> = match config.mode {
        Mode::Redlock => (0..5)
            .map(|i| {
                // Rates within ±0.3% and wall clocks within ±200 ms: with the clients' ±0.6%, the
                // drift between any client and master stays inside the 1% allowance, and the masters'
                // clocks inside Redlock's one-second bound for the run's length.
                let rate = 1.0 + (rng.f64() - 0.5) * 0.006;
                let offset = Duration::from_millis(rng.u64(0..400));
                SimServer::new(i, core.clone(), rate, offset)
            })
            .collect(),
        _ => vec![SimServer::new(0, core.clone(), 1.0, Duration::ZERO)],
    };
    for server in &servers {
        server.replicate(Duration::from_millis(rng.u64(2..40)), end);
    }
    let spread = if config.mode == Mode::Redlock {
        0.012
    } else {
        0.018
    };
    let processes: Vec<Arc<Process>> = (0..config.processes)
        .map(|index| {
            Arc::new(Process {
                index,
                clock: VirtualClock {
                    rt: rt.clone(),
                    // Within ±0.9% (±0.6% under Redlock, whose masters drift too): strictly inside the
                    // documented 1% allowance.
                    rate: 1.0 + (rng.f64() - 0.5) * spread,
                    origin: Duration::from_secs(rng.u64(0..100_000)),
                },
            })
        })
        .collect();
    let clients: Vec<Vec<Arc<SimClient>>> = processes
        .iter()
        .map(|process| {
            servers
                .iter()
                .map(|server| {
                    Arc::new(SimClient::new(
                        process.clone(),
                        server.clone(),
                        core.clone(),
                        config.bound,
                    ))
                })
                .collect()
        })
        .collect();
    let ctx = Arc::new(Ctx {
        core: core.clone(),
        cfg: config.clone(),
        servers: servers.clone(),
        processes,
        clients,
        operations: AtomicU64::new(0),
        values: AtomicU64::new(0),
    });
    for process in 0..config.processes {
        let election = config.elections.then(|| {
            Election::new(ctx.clients[process][0].clone(), "election")
                .ttl(config.ttl)
                .id(format!("p{process}"))
        });
        for id in 0..config.workers {
            let worker = Worker {
                ctx: ctx.clone(),
                process,
                id,
                rng: fastrand::Rng::with_seed(rng.u64(..)),
                election: election.clone(),
                redlocks: Vec::new(),
            };
            rt.spawn(Some(process), worker.run());
        }
    }
    rt.spawn(None, inject_faults(ctx.clone(), rng.u64(..)));

    // Workers stop at `end`; background releases and late messages finish within a few TTLs.
    let limit = end + config.ttl * 10 + Duration::from_secs(10);
    let ended = exec.run(limit);
    let mut violations = Vec::new();
    let live = exec.live_tasks();
    if ended != Ended::Quiescent || live > 0 {
        violations.push(Violation {
            at: rt.now(),
            invariant: history::invariant::LEAK,
            detail: format!("{live} tasks still running at {:?} ({ended:?})", rt.now()),
        });
    }
    exec.clear();
    let operations = ctx.operations.load(Ordering::Relaxed);
    let clients: Vec<Arc<SimClient>> = ctx.clients.iter().flatten().cloned().collect();
    drop(ctx);
    for client in &clients {
        let count = Arc::strong_count(client);
        if count != 1 {
            violations.push(Violation {
                at: rt.now(),
                invariant: history::invariant::LEAK,
                detail: format!(
                    "the backend of process {} to server {} is still referenced {} more times",
                    client.process.index,
                    client.server.index,
                    count - 1
                ),
            });
        }
    }
    let events = core.history.events();
    violations.extend(history::check(&events, &config.params()));
    Report {
        digest: digest(&events),
        config,
        operations,
        violations,
        events: events.len(),
        polls: exec.polls,
        end: rt.now(),
        history: events,
    }
}

/// A digest of `events` that does not depend on the random tokens (uuids): each token is replaced by
/// the order of its first appearance.
fn digest(events: &[Event]) -> u64 {
    use std::collections::HashMap;
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut hasher = DefaultHasher::new();
    for event in events {
        let mut text = format!("{:?} {:?}", event.at, event.what);
        // Tokens are uuids, alone or after a candidate id: 36 characters of hex and dashes.
        let bytes = text.clone();
        let mut replaced = String::with_capacity(text.len());
        let mut i = 0;
        let b = bytes.as_bytes();
        while i < b.len() {
            if i + 36 <= b.len()
                && b[i + 8] == b'-'
                && b[i + 13] == b'-'
                && b[i + 18] == b'-'
                && b[i + 23] == b'-'
                && b[i..i + 36]
                    .iter()
                    .all(|c| c.is_ascii_hexdigit() || *c == b'-')
            {
                let token = &bytes[i..i + 36];
                let next = names.len();
                let n = *names.entry(token.to_owned()).or_insert(next);
                replaced.push_str(&format!("T{n}"));
                i += 36;
            } else {
                replaced.push(b[i] as char);
                i += 1;
            }
        }
        text = replaced;
        text.hash(&mut hasher);
    }
    hasher.finish()
}

/// Injects the run's faults until they stop: process pauses, failovers, restarts, broken replication.
async fn inject_faults(ctx: Arc<Ctx>, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let cfg = &ctx.cfg;
    let rt = ctx.core.rt.clone();
    loop {
        let gap = cfg.fault_every.mul_f64(rng.f64() * 2.0);
        let at = rt.now() + gap;
        if at >= cfg.faults.until {
            return;
        }
        rt.sleep_until(at).await;
        // With a replica the locks wait for, broken replication is what matters most.
        let kind = match cfg.mode {
            Mode::Replicas => rng.u32(0..6).min(3),
            _ => rng.u32(0..4),
        };
        match kind {
            0 | 1 => {
                // A GC pause or SIGSTOP, sometimes longer than the TTL.
                let process = rng.usize(..cfg.processes);
                let until = rt.now() + cfg.pause_max.mul_f64(rng.f64());
                rt.pause(process, until);
                ctx.core.record(What::Pause { process, until });
            }
            2 => match cfg.mode {
                Mode::Single => {}
                Mode::Failover | Mode::Replicas => {
                    let downtime = Duration::from_millis(rng.u64(20..800));
                    let server = &ctx.servers[0];
                    if server.is_down() {
                        continue;
                    }
                    if cfg.mode == Mode::Failover && rng.bool() {
                        server.restart(downtime, rng.bool());
                    } else if rng.bool() {
                        server.fail_over(downtime, cfg.mode == Mode::Replicas);
                    } else {
                        // As failovers happen: the primary is cut off (from its replica too) for a
                        // while first, then the replica, lagging by then, is promoted.
                        server.set_replica_link(false);
                        let server = server.clone();
                        let covered = cfg.mode == Mode::Replicas;
                        let at = rt.now() + Duration::from_millis(rng.u64(10..500));
                        rt.call_at(at, move || {
                            if !server.is_down() {
                                server.fail_over(downtime, covered);
                            }
                            server.set_replica_link(true);
                        });
                    }
                }
                Mode::Redlock => {
                    // A minority at a time, down for longer than the TTL and the clock-skew bound.
                    if ctx.servers.iter().filter(|s| s.is_down()).count() >= 2 {
                        continue;
                    }
                    let server = &ctx.servers[rng.usize(..5)];
                    if server.is_down() {
                        continue;
                    }
                    let downtime = cfg.ttl.max(Duration::from_secs(1))
                        + Duration::from_millis(rng.u64(100..1000));
                    server.restart(downtime, false);
                }
            },
            _ => {
                // The replication link breaks for a while: the replica lags, `WAIT` gets no answer.
                let server = ctx.servers[rng.usize(..ctx.servers.len())].clone();
                server.set_replica_link(false);
                let heal = rt.now() + Duration::from_millis(rng.u64(10..1500));
                rt.call_at(heal, move || server.set_replica_link(true));
            }
        }
    }
}

/// A guard of any kind, with what the workload does with it.
enum Guard {
    Lock(LockGuard),
    Redlock(RedlockGuard),
    Leader(Leadership),
}

/// A borrowed guard of any kind: what observing it and working under it need.
#[derive(Clone, Copy)]
enum GuardRef<'a> {
    Lock(&'a LockGuard),
    Redlock(&'a RedlockGuard),
    Leader(&'a Leadership),
}

impl<'a> GuardRef<'a> {
    /// A single server's guard (an election's term is one).
    fn single(self) -> Option<&'a LockGuard> {
        match self {
            GuardRef::Lock(g) => Some(g),
            GuardRef::Leader(l) => Some(l.guard()),
            GuardRef::Redlock(_) => None,
        }
    }

    fn token(self) -> &'a str {
        match self {
            GuardRef::Redlock(g) => g.token(),
            other => other.single().map_or("", LockGuard::token),
        }
    }

    fn key(self) -> &'a str {
        match self {
            GuardRef::Redlock(g) => g.key(),
            other => other.single().map_or("", LockGuard::key),
        }
    }

    fn valid_for(self) -> Duration {
        match (self, self.single()) {
            (_, Some(g)) => g.valid_for(),
            (GuardRef::Redlock(g), None) => g.valid_for(),
            _ => Duration::ZERO,
        }
    }

    fn fence(self) -> Option<u64> {
        match (self, self.single()) {
            (_, Some(g)) => g.fence(),
            (GuardRef::Redlock(g), None) => g.fence(),
            _ => None,
        }
    }

    /// A guard `fenced_set` can write with.
    fn fenced(self) -> Option<&'a LockGuard> {
        self.single().filter(|g| g.fence().is_some())
    }

    /// The servers that hold the lock, and how many of them must.
    fn servers_and_quorum(self) -> (Vec<usize>, usize) {
        match self {
            GuardRef::Redlock(_) => ((0..5).collect(), 3),
            _ => (vec![0], 1),
        }
    }

    /// "Is it still mine?": `is_owner`, or for an election's term `is_current`.
    fn is_owner(self) -> BoxFuture<'a, Result<bool, LockError>> {
        match self {
            GuardRef::Lock(g) => Box::pin(g.is_owner()),
            GuardRef::Redlock(g) => Box::pin(g.is_owner()),
            GuardRef::Leader(l) => Box::pin(l.is_current()),
        }
    }
}

impl Guard {
    fn as_ref(&self) -> GuardRef<'_> {
        match self {
            Guard::Lock(g) => GuardRef::Lock(g),
            Guard::Redlock(g) => GuardRef::Redlock(g),
            Guard::Leader(l) => GuardRef::Leader(l),
        }
    }

    fn token(&self) -> &str {
        self.as_ref().token()
    }

    fn key(&self) -> &str {
        self.as_ref().key()
    }

    fn renew(&self) -> BoxFuture<'_, Result<bool, LockError>> {
        match self {
            Guard::Lock(g) => Box::pin(g.renew()),
            Guard::Redlock(g) => Box::pin(g.renew()),
            Guard::Leader(l) => Box::pin(l.guard().renew()),
        }
    }

    fn extend(&self, by: Duration) -> BoxFuture<'_, Result<bool, LockError>> {
        match self {
            Guard::Lock(g) => Box::pin(g.extend(by)),
            Guard::Redlock(g) => Box::pin(g.extend(by)),
            Guard::Leader(l) => Box::pin(l.guard().extend(by)),
        }
    }

    fn hold<'a>(&'a self, work: BoxFuture<'a, ()>) -> BoxFuture<'a, Result<(), LockError>> {
        match self {
            Guard::Lock(g) => Box::pin(g.hold(work)),
            Guard::Redlock(g) => Box::pin(g.hold(work)),
            Guard::Leader(l) => Box::pin(l.hold(work)),
        }
    }

    fn release(self) -> BoxFuture<'static, Result<bool, LockError>> {
        match self {
            Guard::Lock(g) => Box::pin(g.release()),
            Guard::Redlock(g) => Box::pin(g.release()),
            Guard::Leader(l) => Box::pin(l.resign()),
        }
    }
}

fn outcome_of<T>(result: &Result<T, LockError>, ok: impl FnOnce(&T) -> bool) -> Outcome {
    match result {
        Ok(value) if ok(value) => Outcome::Ok,
        Ok(_) => Outcome::Refused,
        Err(LockError::Timeout { .. }) => Outcome::Timeout,
        Err(LockError::Lost { .. }) => Outcome::Lost,
        Err(LockError::InDoubt { .. }) => Outcome::InDoubt,
        Err(LockError::NotReplicated { .. }) => Outcome::NotReplicated,
        Err(error @ LockError::InvalidArgument { .. }) => {
            panic!("the workload made an invalid call: {error}")
        }
        Err(error) => Outcome::Failed {
            transient: error.is_transient(),
        },
    }
}

/// One task of a client process, doing operation after operation until the run ends.
struct Worker {
    ctx: Arc<Ctx>,
    process: usize,
    id: usize,
    rng: fastrand::Rng,
    election: Option<Election>,
    /// One `Redlock` per key, kept (it learns its masters' identities once).
    redlocks: Vec<(String, Redlock)>,
}

impl Worker {
    fn now(&self) -> Instant {
        self.ctx.core.rt.now()
    }

    fn local_now(&self) -> Duration {
        self.ctx.processes[self.process].clock.local()
    }

    fn clock(&self) -> &VirtualClock {
        &self.ctx.processes[self.process].clock
    }

    fn client(&self) -> Arc<SimClient> {
        self.ctx.clients[self.process][0].clone()
    }

    fn pick_key(&mut self) -> String {
        self.rng.choice(&self.ctx.cfg.keys).unwrap().clone()
    }

    async fn sleep(&self, local: Duration) {
        let rt = &self.ctx.core.rt;
        rt.sleep_until(rt.now() + self.clock().true_span(local))
            .await;
    }

    fn random_span(&mut self, max: Duration) -> Duration {
        max.mul_f64(self.rng.f64())
    }

    /// Draws whether the next operation is dropped at a random await, and after how long: half the
    /// time within a round trip, when a request is most likely in flight.
    fn draw_cancel(&mut self) -> Option<Duration> {
        if self.rng.f64() >= self.ctx.cfg.cancel {
            return None;
        }
        let cfg = &self.ctx.cfg;
        let within = if self.rng.bool() {
            cfg.faults.delay_max * 2
        } else {
            cfg.bound * 2
        };
        Some(self.random_span(within))
    }

    /// Runs `operation`, or drops it after `cancel_after` (a timer that fires first).
    async fn cancellable<F: Future>(
        &self,
        cancel_after: Option<Duration>,
        operation: F,
    ) -> Option<F::Output> {
        let Some(after) = cancel_after else {
            return Some(operation.await);
        };
        let timer = pin!(self.sleep(after));
        match select(pin!(operation), timer).await {
            Either::Left((output, _)) => Some(output),
            Either::Right(_) => None,
        }
    }

    async fn maybe_cancel<F: Future>(&mut self, operation: F) -> Option<F::Output> {
        let after = self.draw_cancel();
        self.cancellable(after, operation).await
    }

    fn record_op(
        &self,
        kind: &'static str,
        key: &str,
        start: Instant,
        outcome: Outcome,
        detail: Detail,
    ) {
        self.ctx.operations.fetch_add(1, Ordering::Relaxed);
        self.ctx.core.record(What::Op(history::Op {
            process: self.process,
            task: self.ctx.core.rt.current_task(),
            kind,
            key: key.to_owned(),
            start,
            outcome,
            detail,
        }));
    }

    /// Reads `valid_for` and records the belief it states, in true time.
    fn observe(&self, guard: GuardRef<'_>) {
        let valid = guard.valid_for();
        if valid.is_zero() {
            return;
        }
        let (servers, quorum) = guard.servers_and_quorum();
        self.ctx.core.record(What::Belief {
            process: self.process,
            key: guard.key().to_owned(),
            token: guard.token().to_owned(),
            until: self.now() + self.clock().true_span_floor(valid),
            servers,
            quorum,
        });
    }

    fn acquired(&self, guard: GuardRef<'_>) {
        self.ctx.core.record(What::Acquired {
            process: self.process,
            key: guard.key().to_owned(),
            token: guard.token().to_owned(),
            fence: guard.fence(),
            redlock: matches!(guard, GuardRef::Redlock(_)),
        });
        self.observe(guard);
    }

    fn guard_end(&self, guard: &Guard) {
        // (Any kind of guard.)
        self.ctx.core.record(What::GuardEnd {
            key: guard.key().to_owned(),
            token: guard.token().to_owned(),
        });
    }

    async fn run(mut self) {
        let end = self.ctx.cfg.end();
        // Workers start spread out.
        let first = self.random_span(self.ctx.cfg.ttl);
        self.sleep(first).await;
        while self.now() < end {
            let choice = self.rng.u32(0..10);
            match self.ctx.cfg.mode {
                Mode::Redlock => self.redlock_round(choice).await,
                _ if self.election.is_some() && choice >= 8 => self.lead().await,
                _ => self.lock_round(choice).await,
            }
            let pause = self.random_span(self.ctx.cfg.ttl / 4);
            self.sleep(pause).await;
        }
        drop(self);
    }

    fn make_lock(&mut self, key: &str) -> (RedisLock, Option<Duration>) {
        let cfg = &self.ctx.cfg;
        let mut lock = RedisLock::new(self.client(), key).timeout(cfg.ttl);
        if self.rng.u32(0..3) != 0 {
            lock = lock.fencing(true);
        }
        if self.rng.u32(0..6) == 0 {
            lock = lock.max_hold(cfg.ttl.mul_f64(0.5 + 2.0 * self.rng.f64()));
        }
        if cfg.mode == Mode::Replicas {
            lock = lock.replicas(1, cfg.replica_timeout());
        }
        let wait = match self.rng.u32(0..5) {
            0 => Some(Duration::ZERO),
            1 => Some(self.random_span(cfg.ttl / 2)),
            2 => Some(self.random_span(cfg.ttl * 3)),
            3 => Some(cfg.ttl * 3 + Duration::from_secs(1)),
            _ => None,
        };
        (lock.wait_timeout(wait), wait)
    }

    /// The call bound an acquisition may spend after its wait: one call (a replicated one, and the
    /// release of an acquisition too few replicas acknowledged).
    fn acquire_bound(&self) -> Duration {
        let cfg = &self.ctx.cfg;
        match cfg.mode {
            Mode::Replicas => cfg.bound * 2 + cfg.replica_timeout(),
            _ => cfg.bound,
        }
    }

    async fn lock_round(&mut self, choice: u32) {
        let key = self.pick_key();
        let (lock, wait) = self.make_lock(&key);
        let start = self.now();
        let local_start = self.local_now();
        match choice {
            0..=3 => {
                let result = self.maybe_cancel(lock.acquire()).await;
                let took = self.local_now() - local_start;
                let outcome = result
                    .as_ref()
                    .map_or(Outcome::Cancelled, |r| outcome_of(r, |_| true));
                let detail = Detail::Wait {
                    wait,
                    bound: self.acquire_bound(),
                    took,
                };
                self.record_op("acquire", &key, start, outcome, detail);
                if let Some(Ok(guard)) = result {
                    self.use_guard(Guard::Lock(guard)).await;
                }
            }
            4..=6 => {
                let result = self.maybe_cancel(lock.try_acquire()).await;
                let outcome = result
                    .as_ref()
                    .map_or(Outcome::Cancelled, |r| outcome_of(r, Option::is_some));
                self.record_op("try_acquire", &key, start, outcome, Detail::None);
                if let Some(Ok(Some(guard))) = result {
                    self.use_guard(Guard::Lock(guard)).await;
                }
            }
            _ => self.run_body(lock, wait, key).await,
        }
    }

    /// `run`: the body works (observing, writing with its fence) for a drawn time.
    async fn run_body(&mut self, lock: RedisLock, wait: Option<Duration>, key: String) {
        let start = self.now();
        let local_start = self.local_now();
        let length = self.random_span(self.ctx.cfg.ttl * 2);
        let seed = self.rng.u64(..);
        let cancel_after = self.draw_cancel();
        let token = std::sync::Mutex::new(None);
        let me = &*self;
        let body = async |guard: &LockGuard| {
            *token.lock().unwrap() = Some(guard.token().to_owned());
            me.acquired(GuardRef::Lock(guard));
            me.work_under(GuardRef::Lock(guard), length, seed).await;
            // The release follows: no belief past this point.
            me.ctx.core.record(What::GuardEnd {
                key: guard.key().to_owned(),
                token: guard.token().to_owned(),
            });
        };
        let result = me.cancellable(cancel_after, lock.run(body)).await;
        let took = self.local_now() - local_start;
        let outcome = result
            .as_ref()
            .map_or(Outcome::Cancelled, |r| outcome_of(r, |_| true));
        if let Some(token) = token.into_inner().unwrap() {
            // Lost (or dropped) before the body finished: the guard is gone now.
            self.ctx.core.record(What::GuardEnd {
                key: key.clone(),
                token,
            });
        }
        self.record_op(
            "run",
            &key,
            start,
            outcome,
            Detail::Wait {
                wait,
                bound: self.acquire_bound(),
                took,
            },
        );
    }

    async fn fenced_set(&self, guard: &LockGuard, resource: &str) {
        let value = format!(
            "p{}w{}v{}",
            self.process,
            self.id,
            self.ctx.values.fetch_add(1, Ordering::Relaxed)
        );
        let start = self.now();
        let result = guard.fenced_set(resource, &value).await;
        let outcome = outcome_of(&result, |written| *written);
        self.record_op(
            "fenced_set",
            guard.key(),
            start,
            outcome,
            Detail::FencedSet {
                token: guard.token().to_owned(),
                value,
            },
        );
    }

    /// The key's true expiry on the server while it holds `token`.
    fn server_expiry(&self, key: &str, token: &str) -> Option<Instant> {
        self.ctx.servers[0]
            .holder(key)
            .filter(|(holder, _)| holder == token)
            .map(|(_, expires)| expires)
    }

    /// A guard's life: a few operations, then release, drop, or keep a while and drop.
    async fn use_guard(&mut self, guard: Guard) {
        self.acquired(guard.as_ref());
        let cfg = self.ctx.cfg.clone();
        let key = guard.key().to_owned();
        let steps = self.rng.u32(0..8);
        // After a write to the lease failed, the next step often tries another write at once, as a
        // holder would.
        let mut failed_write = false;
        for _ in 0..steps {
            let start = self.now();
            // The run is ending: hand the lock on rather than keep waiters waiting.
            if start >= cfg.end() {
                break;
            }
            let step = match failed_write && self.rng.bool() {
                true => self.rng.u32(0..4),
                false => self.rng.u32(0..12),
            };
            failed_write = false;
            match step {
                0 | 1 => {
                    let result = self.maybe_cancel(guard.renew()).await;
                    let outcome = result
                        .as_ref()
                        .map_or(Outcome::Cancelled, |r| outcome_of(r, |w| *w));
                    failed_write =
                        matches!(outcome, Outcome::Failed { .. } | Outcome::NotReplicated);
                    self.record_op("renew", &key, start, outcome, Detail::None);
                }
                2 | 3 => {
                    let by = cfg.ttl.mul_f64(0.1 + 2.9 * self.rng.f64());
                    let redlock = matches!(guard, Guard::Redlock(_));
                    let before = (!redlock)
                        .then(|| self.server_expiry(&key, guard.token()))
                        .flatten();
                    let result = self.maybe_cancel(guard.extend(by)).await;
                    let after = (!redlock)
                        .then(|| self.server_expiry(&key, guard.token()))
                        .flatten();
                    let outcome = result
                        .as_ref()
                        .map_or(Outcome::Cancelled, |r| outcome_of(r, |w| *w));
                    let detail = Detail::Extend {
                        token: guard.token().to_owned(),
                        by: self.clock().true_span(by),
                        before,
                        after,
                    };
                    failed_write =
                        matches!(outcome, Outcome::Failed { .. } | Outcome::NotReplicated);
                    self.record_op("extend", &key, start, outcome, detail);
                }
                4 => {
                    let result = self.maybe_cancel(guard.as_ref().is_owner()).await;
                    self.record_owner(guard.as_ref(), start, result);
                }
                5 | 6 => {
                    if let Some(lock_guard) = guard.as_ref().fenced() {
                        let resource = self.rng.choice(&cfg.resources).unwrap().clone();
                        self.fenced_set(lock_guard, &resource).await;
                    }
                }
                7 | 8 => {
                    let nap = self.random_span(cfg.ttl);
                    self.sleep(nap).await;
                }
                _ => {
                    let length = self.random_span(cfg.ttl * 3);
                    let seed = self.rng.u64(..);
                    let (servers, quorum) = guard.as_ref().servers_and_quorum();
                    let cancel_after = self.draw_cancel();
                    let result = {
                        let me = &*self;
                        let held = guard.as_ref();
                        let work = Box::pin(async move {
                            me.work_under(held, length, seed).await;
                        });
                        me.cancellable(cancel_after, guard.hold(work)).await
                    };
                    let outcome = result
                        .as_ref()
                        .map_or(Outcome::Cancelled, |r| outcome_of(r, |_| true));
                    self.record_op("hold", &key, start, outcome, Detail::None);
                    if let Some(Err(LockError::Lost { .. })) = result {
                        self.ctx.core.record(What::Work {
                            process: self.process,
                            key: key.clone(),
                            token: guard.token().to_owned(),
                            start,
                            lost: true,
                            servers,
                            quorum,
                        });
                        // Told it lost the lock: no belief from here on. Keep the guard a while
                        // (the library releases the lease in the background), then end it.
                        self.guard_end(&guard);
                        let nap = self.random_span(cfg.ttl * 2);
                        self.sleep(nap).await;
                        break;
                    }
                }
            }
            self.observe(guard.as_ref());
        }
        self.end_guard(guard).await;
    }

    /// `Redlock::run`, as [`run_body`](Self::run_body).
    async fn run_redlock(&mut self, lock: Redlock, key: String) {
        let start = self.now();
        let length = self.random_span(self.ctx.cfg.ttl * 2);
        let seed = self.rng.u64(..);
        let cancel_after = self.draw_cancel();
        let token = std::sync::Mutex::new(None);
        let me = &*self;
        let body = async |guard: &RedlockGuard| {
            *token.lock().unwrap() = Some(guard.token().to_owned());
            me.acquired(GuardRef::Redlock(guard));
            me.work_under(GuardRef::Redlock(guard), length, seed).await;
            me.ctx.core.record(What::GuardEnd {
                key: guard.key().to_owned(),
                token: guard.token().to_owned(),
            });
        };
        let result = me.cancellable(cancel_after, lock.run(body)).await;
        let outcome = result
            .as_ref()
            .map_or(Outcome::Cancelled, |r| outcome_of(r, |_| true));
        if let Some(token) = token.into_inner().unwrap() {
            self.ctx.core.record(What::GuardEnd {
                key: key.clone(),
                token,
            });
        }
        self.record_op("redlock_run", &key, start, outcome, Detail::None);
    }

    fn record_owner(
        &self,
        guard: GuardRef<'_>,
        start: Instant,
        result: Option<Result<bool, LockError>>,
    ) {
        let outcome = result
            .as_ref()
            .map_or(Outcome::Cancelled, |r| outcome_of(r, |w| *w));
        let (servers, quorum) = guard.servers_and_quorum();
        let detail = Detail::Owner {
            token: guard.token().to_owned(),
            servers,
            quorum,
        };
        self.record_op("is_owner", guard.key(), start, outcome, detail);
    }

    /// Work for `length` of true time under `hold` or `run`: observe the lease, write with the fence,
    /// sleep; records its end (a `hold` that let it finish vouches for the lock throughout).
    async fn work_under(&self, guard: GuardRef<'_>, length: Duration, seed: u64) {
        let mut rng = fastrand::Rng::with_seed(seed);
        let start = self.now();
        // Work started before the run's end stops at it, so that the run drains.
        let end = (start + length).min(self.ctx.cfg.end().max(start));
        loop {
            self.observe(guard);
            if let Some(lock_guard) = guard.fenced()
                && rng.u32(0..3) == 0
            {
                let resource = rng.choice(&self.ctx.cfg.resources).unwrap().clone();
                self.fenced_set(lock_guard, &resource).await;
            }
            if rng.u32(0..4) == 0 {
                // A leader (or holder) asks whether it still is one, as it works.
                let start = self.now();
                let result = guard.is_owner().await;
                self.record_owner(guard, start, Some(result));
            }
            if self.now() >= end {
                break;
            }
            let nap = (end - self.now()).min(self.ctx.cfg.ttl.mul_f64(rng.f64() / 4.0));
            self.ctx.core.rt.sleep_until(self.now() + nap).await;
        }
        let (servers, quorum) = guard.servers_and_quorum();
        self.ctx.core.record(What::Work {
            process: self.process,
            key: guard.key().to_owned(),
            token: guard.token().to_owned(),
            start,
            lost: false,
            servers,
            quorum,
        });
    }

    async fn end_guard(&mut self, guard: Guard) {
        let key = guard.key().to_owned();
        match self.rng.u32(0..5) {
            0 => {
                let start = self.now();
                self.guard_end(&guard);
                drop(guard);
                self.record_op("drop", &key, start, Outcome::Ok, Detail::None);
            }
            choice => {
                if choice == 1 {
                    // Released only once its validity has run out: known lost, whatever the servers
                    // answer.
                    let past = guard.as_ref().valid_for() + Duration::from_millis(1);
                    self.sleep(past).await;
                }
                let start = self.now();
                self.guard_end(&guard);
                let detail = Detail::Release {
                    token: guard.token().to_owned(),
                    valid: !guard.as_ref().valid_for().is_zero(),
                    redlock: matches!(guard, Guard::Redlock(_)),
                };
                let result = self.maybe_cancel(guard.release()).await;
                let outcome = result
                    .as_ref()
                    .map_or(Outcome::Cancelled, |r| outcome_of(r, |w| *w));
                self.record_op("release", &key, start, outcome, detail);
            }
        }
    }

    /// An election: campaign (through a clone of the process's `Election`) for a while, then lead.
    async fn lead(&mut self) {
        let election = self.election.clone().expect("elections are on");
        let start = self.now();
        let local_start = self.local_now();
        let patience = self.random_span(self.ctx.cfg.ttl * 4);
        let result = {
            let timer = pin!(self.sleep(patience));
            match select(pin!(election.campaign()), timer).await {
                Either::Left((result, _)) => Some(result),
                Either::Right(_) => None,
            }
        };
        let took = self.local_now() - local_start;
        let outcome = result
            .as_ref()
            .map_or(Outcome::Cancelled, |r| outcome_of(r, |_| true));
        self.record_op(
            "campaign",
            "election",
            start,
            outcome,
            Detail::Wait {
                wait: None,
                bound: self.ctx.cfg.bound,
                took,
            },
        );
        if let Some(Ok(leadership)) = result {
            self.use_guard(Guard::Leader(leadership)).await;
        }
    }

    fn redlock(&mut self, key: &str) -> Redlock {
        if let Some((_, lock)) = self.redlocks.iter().find(|(k, _)| k == key) {
            return lock.clone();
        }
        let cfg = &self.ctx.cfg;
        let lock = Redlock::new(self.ctx.clients[self.process].clone(), key)
            .timeout(cfg.ttl)
            .node_timeout(cfg.bound.min(cfg.ttl / 4))
            .fencing(true);
        self.redlocks.push((key.to_owned(), lock.clone()));
        lock
    }

    async fn redlock_round(&mut self, choice: u32) {
        let key = self.pick_key();
        let mut lock = self.redlock(&key);
        let cfg = self.ctx.cfg.clone();
        if self.rng.u32(0..6) == 0 {
            lock = lock.max_hold(cfg.ttl.mul_f64(0.5 + 2.0 * self.rng.f64()));
        }
        let wait = match self.rng.u32(0..3) {
            0 => Some(Duration::ZERO),
            1 => Some(self.random_span(cfg.ttl * 2)),
            _ => Some(cfg.ttl * 3),
        };
        let lock = lock.wait_timeout(wait);
        let start = self.now();
        match choice {
            0..=4 => {
                let result = self.maybe_cancel(lock.acquire()).await;
                let outcome = result
                    .as_ref()
                    .map_or(Outcome::Cancelled, |r| outcome_of(r, |_| true));
                self.record_op("redlock_acquire", &key, start, outcome, Detail::None);
                if let Some(Ok(guard)) = result {
                    self.use_guard(Guard::Redlock(guard)).await;
                }
            }
            5 | 6 => self.run_redlock(lock, key).await,
            _ => {
                let result = self.maybe_cancel(lock.try_acquire()).await;
                let outcome = result
                    .as_ref()
                    .map_or(Outcome::Cancelled, |r| outcome_of(r, Option::is_some));
                self.record_op("redlock_try_acquire", &key, start, outcome, Detail::None);
                if let Some(Ok(Some(guard))) = result {
                    self.use_guard(Guard::Redlock(guard)).await;
                }
            }
        }
    }
}
