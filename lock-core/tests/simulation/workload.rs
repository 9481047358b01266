//! One seeded run: a configuration drawn from the seed, the world, the workers and the fault injector,
//! then the checks.
//!
//! Workers mix every operation of the API over a few shared keys: `acquire` (waits of every length,
//! cancelled at random), `try_acquire`, `run`, `hold`, `extend`, `renew`, `is_owner`, `release`,
//! dropping a guard, fencing with `fenced_set`, `Election` (clones of one per process, so campaigns
//! share a candidate id), `Redlock` over five masters, and `replicas(1)`. They record what they
//! believed and what each call returned; the servers record what they did.

#[path = "workload/fair.rs"]
mod fair;
#[path = "workload/rounds.rs"]
mod rounds;
#[path = "workload/rwlock.rs"]
mod rwlock;
#[path = "workload/semaphore.rs"]
mod semaphore;
#[path = "workload/worker.rs"]
mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lock_core::{Election, Redlock};

use super::executor::{Ended, Executor, Instant};
use super::history::{self, Event, History, Params, Violation, What};
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
    /// The semaphores (on server 0), each key with its limit; empty: no semaphore rounds.
    pub semaphores: Vec<(String, u32)>,
    /// The read-write locks' keys (on server 0); empty: no read-write lock rounds.
    pub rwlocks: Vec<String>,
    /// The fair locks' keys (on server 0); empty: no fair rounds.
    pub fair: Vec<String>,
}

/// The primitives a run exercises, for the per-primitive counts of operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Primitive {
    Mutex,
    Redlock,
    Election,
    Semaphore,
    RwLock,
    Fair,
}

impl Primitive {
    pub const ALL: [Primitive; 6] = [
        Primitive::Mutex,
        Primitive::Redlock,
        Primitive::Election,
        Primitive::Semaphore,
        Primitive::RwLock,
        Primitive::Fair,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Primitive::Mutex => "mutex",
            Primitive::Redlock => "redlock",
            Primitive::Election => "election",
            Primitive::Semaphore => "semaphore",
            Primitive::RwLock => "rwlock",
            Primitive::Fair => "fair",
        }
    }
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
        // Drawn last, so that the draws above stay as they were. Two keys whose companion keys could
        // collide, with limits of their own (a key's limit never changes within a run).
        let semaphores = match rng.u32(0..4) {
            0 => Vec::new(),
            1 => vec![("sem:a".to_owned(), rng.u32(1..=4))],
            _ => vec![
                ("sem:a".to_owned(), rng.u32(1..=4)),
                ("{sem:a}".to_owned(), rng.u32(1..=4)),
            ],
        };
        let mut config = Self {
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
            semaphores,
            // Drawn last, so that every draw above stays as it was. Two keys whose companion keys
            // (writers' intents, fence counters) could collide.
            rwlocks: match rng.u32(0..4) {
                0 => Vec::new(),
                1 => vec!["rw:a".to_owned()],
                _ => vec!["rw:a".to_owned(), "{rw:a}".to_owned()],
            },
            fair: Vec::new(),
        };
        // Drawn after everything else, so that every other draw stays as it was. Fair locks refuse
        // `replicas`, which every lock of the `Replicas` mode waits for: none there.
        config.fair = match rng.u32(0..5) {
            _ if mode == Mode::Replicas => Vec::new(),
            0 => Vec::new(),
            1..=3 => vec!["fair:a".to_owned()],
            _ => vec!["fair:a".to_owned(), "{fair:a}".to_owned()],
        };
        config
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
    /// The operations per primitive, in the order of [`Primitive::ALL`].
    pub by_primitive: [u64; Primitive::ALL.len()],
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
    /// Per primitive, in the order of [`Primitive::ALL`].
    by_primitive: [AtomicU64; Primitive::ALL.len()],
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
        by_primitive: Default::default(),
        values: AtomicU64::new(0),
    });
    for process in 0..config.processes {
        let election = config.elections.then(|| {
            Election::new(ctx.clients[process][0].clone(), "election")
                .timeout(config.ttl)
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
                primitive: Primitive::Mutex,
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
    let by_primitive = std::array::from_fn(|i| ctx.by_primitive[i].load(Ordering::Relaxed));
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
        by_primitive,
        violations,
        events: events.len(),
        polls: exec.polls,
        end: rt.now(),
        history: events,
    }
}

/// A digest of `events` that does not depend on the random tokens (uuids): each token is replaced by
/// the order of its first appearance in an event that names tokens in a deterministic order.
///
/// A sorted set's members (`What::Members`) are listed by score and, for equal scores, by member, so
/// two holders that tie are listed in the order of their random tokens: those events do not number
/// tokens, and their members are digested as a sorted list of (score, numbered member, expiry), with
/// tokens not yet numbered all written `T?`. Equal runs then digest equally, whatever the tokens.
fn digest(events: &[Event]) -> u64 {
    use std::collections::HashMap;
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut names: HashMap<String, usize> = HashMap::new();
    for event in events {
        if !matches!(event.what, What::Members { .. }) {
            replace_tokens(&format!("{:?}", event.what), &mut names, true);
        }
    }
    let mut hasher = DefaultHasher::new();
    for event in events {
        let text = match &event.what {
            What::Members {
                server,
                key,
                wall_ms,
                members,
                cause,
            } => {
                let mut listed: Vec<(i64, String, Instant)> = members
                    .iter()
                    .map(|(member, score, until)| {
                        (*score, replace_tokens(member, &mut names, false), *until)
                    })
                    .collect();
                listed.sort();
                format!(
                    "{:?} Members {server} {} {wall_ms} {listed:?} {cause}",
                    event.at,
                    replace_tokens(key, &mut names, false)
                )
            }
            what => format!(
                "{:?} {}",
                event.at,
                replace_tokens(&format!("{what:?}"), &mut names, false)
            ),
        };
        text.hash(&mut hasher);
    }
    hasher.finish()
}

/// `text` with every token (a uuid: 36 characters of hex and dashes, alone or after a candidate id)
/// replaced by `T<n>`, its number in `names`; a token not numbered yet gets the next number when
/// `assign`, otherwise is written `T?`.
fn replace_tokens(
    text: &str,
    names: &mut std::collections::HashMap<String, usize>,
    assign: bool,
) -> String {
    let b = text.as_bytes();
    let mut replaced = String::with_capacity(text.len());
    let mut i = 0;
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
            let token = &text[i..i + 36];
            let next = names.len();
            match (names.get(token), assign) {
                (Some(n), _) => replaced.push_str(&format!("T{n}")),
                (None, true) => {
                    names.insert(token.to_owned(), next);
                    replaced.push_str(&format!("T{next}"));
                }
                (None, false) => replaced.push_str("T?"),
            }
            i += 36;
        } else {
            replaced.push(b[i] as char);
            i += 1;
        }
    }
    replaced
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

/// One task of a client process, doing operation after operation until the run ends.
struct Worker {
    ctx: Arc<Ctx>,
    process: usize,
    id: usize,
    rng: fastrand::Rng,
    election: Option<Election>,
    /// One `Redlock` per key, kept (it learns its masters' identities once).
    redlocks: Vec<(String, Redlock)>,
    /// The primitive of the round under way, whose count `record_op` adds to.
    primitive: Primitive,
}
