//! The fair-lock case (issue 11): worker processes run the mutex cases' workload (acquire, fenced
//! writes under `hold`, release) on one fenced *fair* lock (`RedisLock::fair(true)`), under the same
//! faults; the `MONITOR` also records every command on the lock's key, its queue and its heartbeats.
//! The mutex checker ([`crate::checker::check`]) judges mutual exclusion through the fenced writes'
//! order, and [`crate::fair_checker::check`] the queue: grants in ticket order, fences strictly
//! increasing, every acquisition a grant of the server's. Where the mutex cases stop a holder, this
//! one stops a *waiter* with SIGSTOP past its TTL: its place must lapse, and a waiter queued behind it
//! must be granted, while it is stopped.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use lock_core::testing::companion_keys;
use redlease::{LockBackend, RedisLock};

use crate::cases::faults_then_wait;
use crate::checker::{self, History};
use crate::events::Event;
use crate::fair_checker::{self, FairHistory};
use crate::faults::{FaultTally, Freezer, get, signal};
use crate::monitor::Monitor;
use crate::processes::{Children, Launch, TempDir};
use crate::support::proxy::FaultProxy;
use crate::support::{self, RedisServer};
use crate::workload::{Names, Recorder, Rng, WorkerPlan, backend, lock, run_worker};
use crate::{
    ID_ENV, KEY_ENV, OUT_ENV, PROCESS_INPUT, PROCESS_STOP, RESOURCE_ENV, RUN_MS_ENV, TTL, URL_ENV,
    lock_ignoring_poison,
};

/// Worker processes: enough that a stopped one leaves others queued behind it.
const FAIR_WORKERS: usize = 4;
/// As the semaphore cases': the rotation of faults still comes round once.
const RUN_FOR: Duration = Duration::from_secs(13);
/// Set (to `1`) only in a worker process started by the fair case.
pub(crate) const FAIR_WORKER_ENV: &str = "REDLEASE_CHAOS_FAIR_WORKER";
/// The test function a fair worker process runs.
const FAIR_WORKER_TEST: &str = "chaos_fair_worker_process";

/// The fair lock's key, queue and heartbeats. The key has a hash tag, so its companions are
/// `<key>:redlease:<kind>` (see lock-core's `keys::companion_key`); the case fails if the monitor
/// sees no joins on that queue, so a change of names cannot go unnoticed.
pub(crate) struct FairNames {
    pub(crate) names: Names,
    pub(crate) queue: String,
    pub(crate) beats: String,
}

impl FairNames {
    fn new() -> FairNames {
        let prefix = support::key_prefix();
        let key = format!("{{{prefix}chaos-fair}}");
        let resource = format!("{prefix}chaos-fair-resource");
        let (queue, beats) = queue_names(&key);
        FairNames {
            names: Names {
                counter: companion_keys(&key)[0].clone(),
                mark: companion_keys(&resource)[2].clone(),
                key,
                resource,
            },
            queue,
            beats,
        }
    }
}

/// The queue and heartbeat keys of the fair lock `key` (a key with a hash tag).
fn queue_names(key: &str) -> (String, String) {
    (
        format!("{key}:redlease:fair-queue"),
        format!("{key}:redlease:fair-beats"),
    )
}

fn fair_lock(backend: Arc<dyn LockBackend>, key: &str) -> RedisLock {
    lock(backend, key).fair(true)
}

/// The case: worker processes over [`PROCESS_INPUT`] through one fault proxy, one waiter at a time
/// stopped with SIGSTOP past its TTL.
pub(crate) fn run_fair_process_case() {
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let fair = FairNames::new();
        let names = &fair.names;
        let server = RedisServer::start();
        let proxy = FaultProxy::start(server.addr());
        let watched = [names.key.clone(), fair.queue.clone(), fair.beats.clone()];
        let monitor = Arc::new(Monitor::watching_all(names, &watched));
        monitor.attach(server.addr(), 0).expect("MONITOR attaches");
        let server = Arc::new(Mutex::new(server));
        let temp = TempDir::new();
        let launch = Launch {
            test: FAIR_WORKER_TEST,
            role_env: FAIR_WORKER_ENV,
            url: &proxy.url(),
            key: &names.key,
            resource: Some(&names.resource),
            run_for: RUN_FOR,
        };
        let children = Children::spawn(temp.path(), FAIR_WORKERS, &launch);
        let (faults, children) = faults_then_wait(
            &server,
            &proxy,
            &monitor,
            names,
            children,
            Freezer::FairWaiters,
            RUN_FOR,
        )
        .await;
        let (log, problems) = monitor.finish(&server);
        let events: Vec<_> = children
            .event_lines()
            .iter()
            .map(|line| Event::parse(line))
            .collect();
        let mutex = History {
            events: events.clone(),
            log: log.clone(),
            final_value: get(&server, &names.resource),
            final_mark: get(&server, &names.mark),
            // No holder is stopped here: waiters are.
            frozen_tokens: Vec::new(),
            resends_possible: false,
        };
        let queue = FairHistory {
            log,
            events,
            key: names.key.clone(),
            queue: fair.queue.clone(),
            beats: fair.beats.clone(),
        };
        let case = format!("fair lock, {PROCESS_INPUT}, {FAIR_WORKERS} processes");
        conclude(&case, &mutex, &queue, &faults, problems, started);
        drop(children);
    });
}

/// The worker process of the fair case: the mutex cases' workload on the fair lock.
pub(crate) fn fair_worker_process() {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let run_for = Duration::from_millis(var(RUN_MS_ENV).parse().expect("run time in ms"));
    let out = Arc::new(Mutex::new(File::create(var(OUT_ENV)).expect("output file")));
    let record: Recorder = Arc::new(move |event: &Event| {
        let mut file = lock_ignoring_poison(&out);
        writeln!(file, "{}", event.line()).expect("worker output file is writable");
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let plan = WorkerPlan {
            worker: var(ID_ENV),
            resource: var(RESOURCE_ENV),
            deadline: Instant::now() + run_for,
            freeze: None,
        };
        let backend = backend(PROCESS_INPUT, &var(URL_ENV)).await;
        run_worker(fair_lock(backend, &var(KEY_ENV)), plan, record).await;
    });
}

/// What stopping a waiter found.
pub(crate) struct StoppedWaiter {
    /// The stopped waiter's token, when one was found waiting.
    pub(crate) token: Option<String>,
    pub(crate) missed: usize,
    /// Its place lapsed (and the scripts dropped it) while it was stopped.
    pub(crate) place_dropped: bool,
    /// A waiter queued behind it (or joining after it) was granted while it was still stopped.
    pub(crate) granted_past: bool,
}

/// A sorted set's members with their scores, read straight from the server.
fn scored(server: &RedisServer, key: &str) -> HashMap<String, i64> {
    let reply = server
        .command(&["ZRANGE", key, "0", "-1", "WITHSCORES"])
        .expect("ZRANGE");
    let items: Vec<&str> = reply
        .lines()
        .filter(|l| !l.is_empty() && *l != "(nil)")
        .collect();
    items
        .chunks(2)
        .filter_map(|pair| match pair {
            [member, score] => Some(((*member).to_owned(), score.parse::<f64>().ok()? as i64)),
            _ => None,
        })
        .collect()
}

/// The server's clock in ms.
fn server_ms(server: &RedisServer) -> i64 {
    let time = server.command(&["TIME"]).expect("TIME");
    let mut parts = time.lines().map(|p| p.parse::<i64>().unwrap_or(0));
    parts.next().unwrap_or(0) * 1000 + parts.next().unwrap_or(0) / 1000
}

/// Stops a worker process that is not holding the lock while others wait, for [`PROCESS_STOP`]
/// (well past the TTL). Its waiting token is the one whose heartbeat is never renewed while it is
/// stopped (every live waiter renews within a third of the TTL); that place must lapse, and a waiter
/// behind it must be granted, before the process runs again.
pub(crate) fn stop_a_waiter(
    server: &RedisServer,
    key: &str,
    children: &[(u32, PathBuf)],
) -> StoppedWaiter {
    let (queue, beats) = queue_names(key);
    let mut rng = Rng::new();
    let mut missed = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        thread::sleep(Duration::from_millis(20));
        if scored(server, &queue).len() < 2 {
            continue;
        }
        let holder = server.command(&["GET", key]).expect("GET lock key");
        let holding = children.iter().position(|(_, out)| {
            fs::read_to_string(out).is_ok_and(|text| {
                text.lines()
                    .any(|line| line.starts_with("acq ") && line.ends_with(&format!(" {holder}")))
            })
        });
        let others: Vec<usize> = (0..children.len())
            .filter(|i| Some(*i) != holding)
            .collect();
        let (pid, _) = children[others[rng.below(others.len() as u64) as usize]];
        signal(pid, "STOP");
        let stopped_at = Instant::now();
        // Requests already on the wire land; then its place is as it will stay.
        thread::sleep(Duration::from_millis(50));
        let tickets = scored(server, &queue);
        let first_beats = scored(server, &beats);
        // Watch every heartbeat until the stopped one must have lapsed: a live waiter's is renewed
        // (or it leaves the queue, granted or giving up, before it lapses).
        let mut renewed: Vec<String> = Vec::new();
        let mut gone_live: Vec<String> = Vec::new();
        let watch_until = stopped_at + TTL + Duration::from_millis(200);
        while Instant::now() < watch_until {
            let now = server_ms(server);
            let current = scored(server, &beats);
            for (token, beat) in &first_beats {
                match current.get(token) {
                    Some(b) if b != beat => renewed.push(token.clone()),
                    None if now < *beat => gone_live.push(token.clone()),
                    _ => {}
                }
            }
            thread::sleep(Duration::from_millis(15));
        }
        let now = server_ms(server);
        let stale: Vec<&String> = first_beats
            .iter()
            .filter(|(token, beat)| {
                !renewed.contains(token) && !gone_live.contains(token) && **beat <= now
            })
            .map(|(token, _)| token)
            .collect();
        let [token] = stale.as_slice() else {
            // It was not waiting (holding, between acquisitions), or the watch was ambiguous.
            signal(pid, "CONT");
            missed += 1;
            continue;
        };
        let token = (*token).clone();
        // Dropped: no live place of it is left (the next script removed it, or will, as lapsed).
        let place_dropped = scored(server, &beats)
            .get(&token)
            .is_none_or(|beat| *beat <= server_ms(server));
        // Granted past it: a token not ahead of it in the queue when it was stopped, other than the
        // holder then, takes the lock while it is still stopped.
        let mine = tickets.get(&token).copied().unwrap_or(i64::MAX);
        let ahead = |t: &str| t == holder || tickets.get(t).is_some_and(|ticket| *ticket < mine);
        let mut granted_past = false;
        let stop_until = stopped_at + PROCESS_STOP;
        while Instant::now() < stop_until {
            let now_holder = server.command(&["GET", key]).expect("GET lock key");
            if now_holder != "(nil)" && now_holder != token && !ahead(&now_holder) {
                granted_past = true;
                break;
            }
            thread::sleep(Duration::from_millis(15));
        }
        thread::sleep(stop_until.saturating_duration_since(Instant::now()));
        signal(pid, "CONT");
        return StoppedWaiter {
            token: Some(token),
            missed,
            place_dropped,
            granted_past,
        };
    }
    StoppedWaiter {
        token: None,
        missed: missed + 1,
        place_dropped: false,
        granted_past: false,
    }
}

/// Checks the finished case, prints its figures, and fails on any violation or on a run that
/// exercised too little.
fn conclude(
    case: &str,
    mutex: &History,
    queue: &FairHistory,
    faults: &FaultTally,
    monitor_problems: Vec<String>,
    started: Instant,
) {
    let report = checker::check(mutex);
    let (fair, fair_violations) = fair_checker::check(queue);
    eprintln!(
        "chaos [{case}] after {:.1?}:\n{}\n{fair}\n  faults: {faults}\n  stopped waiters: {} of {} \
         had their place dropped while stopped, after {} of them a waiter behind was granted",
        started.elapsed(),
        report.figures,
        faults.places_dropped,
        faults.freezes,
        faults.granted_past
    );
    let mut violations = report.violations;
    violations.extend(fair_violations);
    violations.extend(monitor_problems);
    assert!(
        violations.is_empty(),
        "[{case}] {} violation(s):\n  {}",
        violations.len(),
        violations.join("\n  ")
    );
    let f = &report.figures;
    let expect = |ok: bool, what: &str| {
        assert!(
            ok,
            "[{case}] too little happened: {what}; {f}\n{fair}\n  faults: {faults}"
        )
    };
    expect(f.acquisitions >= 20, "fewer than 20 acquisitions");
    expect(f.accepted >= 20, "fewer than 20 accepted writes");
    expect(
        fair.grants >= 20,
        "fewer than 20 grants in the server's history",
    );
    expect(fair.joins >= 10, "fewer than 10 waiters joined the queue");
    expect(
        fair.grants_past_queue >= 5,
        "fewer than 5 grants made while others waited",
    );
    expect(faults.latency_spikes >= 1, "no latency spike");
    expect(faults.stalls >= 1, "no stall");
    expect(
        faults.client_kills_effective >= 1,
        "no CLIENT KILL round killed a connection",
    );
    expect(
        faults.cuts_effective >= 1,
        "no proxy cut closed a connection",
    );
    expect(faults.restarts >= 1, "no restart");
    expect(faults.freezes >= 1, "no waiter was stopped");
    expect(
        faults.places_dropped == faults.freezes,
        "a stopped waiter's place did not lapse within its TTL",
    );
    expect(
        faults.granted_past >= 1,
        "no waiter behind a stopped one was granted while it was stopped",
    );
}
