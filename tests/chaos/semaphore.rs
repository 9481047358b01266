//! The semaphore cases (issue 11): workers take permits of one fenced [`Semaphore`] (one or two at a
//! time), hold them in `Permit::hold` for a while and release them, under the same faults as the mutex
//! cases; a `MONITOR` records every command on the semaphore's key and every fence the counter took,
//! and [`check`](crate::semaphore_checker::check) replays them: never more than the limit held, fences
//! strictly increasing. In the multi-process case a permit holder is stopped with SIGSTOP past its TTL,
//! and its permits must come back, and be granted to another worker, while it is stopped.

use std::fs::{self, File};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use lock_core::Semaphore;
use lock_core::testing::companion_keys;
use redlease::{LockBackend, LockError};

use crate::cases::faults_then_wait;
use crate::faults::{FaultTally, Freezer, inject, signal};
use crate::monitor::Monitor;
use crate::processes::{Children, Launch, TempDir};
use crate::semaphore_checker::{SemEvent, SemHistory, check};
use crate::support::inputs::Input;
use crate::support::proxy::FaultProxy;
use crate::support::{self, RedisServer};
use crate::workload::{Names, Rng, backend};
use crate::{
    ID_ENV, KEY_ENV, MAX_HOLD, OUT_ENV, PATIENCE, PROCESS_INPUT, PROCESS_STOP, RUN_MS_ENV,
    TASK_FREEZE, TTL, URL_ENV, WAIT, lock_ignoring_poison,
};

/// The semaphore's limit in the in-process case (workers take one or two permits), and in the
/// multi-process case (one each), where fewer workers contend.
pub(crate) const TASK_LIMIT: u32 = 3;
pub(crate) const PROCESS_LIMIT: u32 = 2;
/// Workers per case.
const TASK_WORKERS: usize = 6;
const PROCESS_WORKERS: usize = 4;
/// Shorter than the mutex cases': the rotation of faults still comes round once.
pub(crate) const RUN_FOR: Duration = Duration::from_secs(13);
/// Set (to `1`) only in a worker process started by the multi-process semaphore case.
pub(crate) const SEMAPHORE_WORKER_ENV: &str = "REDLEASE_CHAOS_SEMAPHORE_WORKER";
/// The test function a semaphore worker process runs.
pub(crate) const SEMAPHORE_WORKER_TEST: &str = "chaos_semaphore_worker_process";

/// A worker's view of the server.
pub(crate) type SemRecorder = Arc<dyn Fn(&SemEvent) + Send + Sync>;

/// Key names of a semaphore case: the semaphore's key stands where the mutex cases have the lock's.
fn names() -> Names {
    let prefix = support::key_prefix();
    let key = format!("{prefix}chaos-semaphore");
    let resource = format!("{prefix}chaos-unused-resource");
    Names {
        counter: companion_keys(&key)[0].clone(),
        mark: companion_keys(&resource)[2].clone(),
        key,
        resource,
    }
}

pub(crate) fn semaphore(backend: Arc<dyn LockBackend>, key: &str, limit: u32) -> Semaphore {
    Semaphore::new(backend, key, limit)
        .timeout(TTL)
        .wait_timeout(Some(WAIT))
        .fencing(true)
        .max_hold(MAX_HOLD)
}

/// Takes permits, holds them a while, releases; again and again until `deadline`. `most`: the most
/// permits one acquisition asks for.
pub(crate) async fn run_semaphore_worker(
    semaphore: Semaphore,
    worker: String,
    most: u32,
    deadline: Instant,
    freeze: Option<Arc<AtomicBool>>,
    record: SemRecorder,
) {
    let mut rng = Rng::new();
    while Instant::now() < deadline {
        let permits = 1 + rng.below(u64::from(most)) as u32;
        let permit = match semaphore.acquire_many(permits).await {
            Ok(permit) => permit,
            Err(error) => {
                let timeout = matches!(error, LockError::Timeout { .. });
                record(&SemEvent::Failed {
                    worker: worker.clone(),
                    kind: if timeout { "timeout" } else { "other" }.into(),
                });
                if !timeout {
                    tokio::time::sleep(rng.millis(10, 50)).await;
                }
                continue;
            }
        };
        let fence = permit.fence().expect("a fenced semaphore issues fences");
        let token = permit.token().to_owned();
        record(&SemEvent::Acquired {
            worker: worker.clone(),
            fence,
            token: token.clone(),
            permits,
        });
        let steps = rng.below(4) + 1;
        let held = permit
            .hold(async {
                for _ in 0..steps {
                    tokio::time::sleep(rng.millis(20, 120)).await;
                    if freeze
                        .as_ref()
                        .is_some_and(|freeze| freeze.swap(false, Ordering::SeqCst))
                    {
                        record(&SemEvent::Frozen {
                            worker: worker.clone(),
                            token: token.clone(),
                        });
                        // Freezes this whole hold (renewals included), like a GC pause would.
                        tokio::task::block_in_place(|| thread::sleep(TASK_FREEZE));
                    }
                }
            })
            .await;
        let hold = match held {
            Ok(()) => "done",
            Err(LockError::Lost { .. }) => "lost",
            Err(_) => "error",
        };
        let release = match permit.release().await {
            Ok(true) => "released",
            Ok(false) => "not-ours",
            Err(_) => "failed",
        };
        record(&SemEvent::End {
            worker: worker.clone(),
            token,
            hold: hold.into(),
            release: release.into(),
        });
        tokio::time::sleep(rng.millis(0, 20)).await;
    }
    record(&SemEvent::Done { worker });
}

/// The in-process case: task workers over `input`, frozen in turn past the TTL.
pub(crate) fn run_semaphore_task_case(input: Input) {
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let names = names();
        let server = RedisServer::start();
        let proxy = FaultProxy::start(server.addr());
        let monitor = Arc::new(Monitor::watching(&names, &names.key));
        monitor.attach(server.addr(), 0).expect("MONITOR attaches");
        let server = Arc::new(Mutex::new(server));
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let record: SemRecorder = {
            let lines = lines.clone();
            Arc::new(move |event: &SemEvent| lock_ignoring_poison(&lines).push(event.line()))
        };
        let freeze = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + RUN_FOR;
        let mut workers = Vec::new();
        for i in 0..TASK_WORKERS {
            let semaphore = semaphore(backend(input, &proxy.url()).await, &names.key, TASK_LIMIT);
            workers.push(tokio::spawn(run_semaphore_worker(
                semaphore,
                format!("w{i}"),
                2,
                deadline,
                Some(freeze.clone()),
                record.clone(),
            )));
        }
        let faults = inject(
            &server,
            &proxy,
            &monitor,
            Freezer::Tasks(freeze),
            deadline,
            &names,
        )
        .await;
        for worker in workers {
            tokio::time::timeout(WAIT + PATIENCE, worker)
                .await
                .expect("a worker did not stop by itself")
                .expect("a worker panicked");
        }
        let (log, problems) = monitor.finish(&server);
        let lines = std::mem::take(&mut *lock_ignoring_poison(&lines));
        let history = SemHistory {
            events: lines.iter().map(|line| SemEvent::parse(line)).collect(),
            log,
            limit: TASK_LIMIT,
            frozen_tokens: Vec::new(),
        };
        conclude(
            &format!("semaphore, {input}, {TASK_WORKERS} tasks"),
            &history,
            &faults,
            problems,
            started,
        );
    });
}

/// The multi-process case: worker processes over [`PROCESS_INPUT`], one at a time stopped with
/// SIGSTOP while it holds a permit, past the TTL.
pub(crate) fn run_semaphore_process_case() {
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let names = names();
        let server = RedisServer::start();
        let proxy = FaultProxy::start(server.addr());
        let monitor = Arc::new(Monitor::watching(&names, &names.key));
        monitor.attach(server.addr(), 0).expect("MONITOR attaches");
        let server = Arc::new(Mutex::new(server));
        let temp = TempDir::new();
        let launch = Launch {
            test: SEMAPHORE_WORKER_TEST,
            role_env: SEMAPHORE_WORKER_ENV,
            url: &proxy.url(),
            key: &names.key,
            resource: None,
            run_for: RUN_FOR,
        };
        let children = Children::spawn(temp.path(), PROCESS_WORKERS, &launch);
        let (faults, children) = faults_then_wait(
            &server,
            &proxy,
            &monitor,
            &names,
            children,
            Freezer::PermitHolders,
            RUN_FOR,
        )
        .await;
        let (log, problems) = monitor.finish(&server);
        let events: Vec<_> = children
            .event_lines()
            .iter()
            .map(|line| SemEvent::parse(line))
            .collect();
        let history = SemHistory {
            events,
            log,
            limit: PROCESS_LIMIT,
            frozen_tokens: faults.frozen_tokens.clone(),
        };
        let case = format!("semaphore, {PROCESS_INPUT}, {PROCESS_WORKERS} processes");
        conclude(&case, &history, &faults, problems, started);
        eprintln!(
            "  stopped holders: {} of {} had their permits come back while stopped, after {} of \
             them a permit was granted again",
            faults.permits_came_back, faults.freezes, faults.permits_granted_again
        );
        let expect = |ok: bool, what: &str| assert!(ok, "[{case}] {what}; faults: {faults}");
        expect(
            faults.permits_came_back == faults.freezes,
            "a stopped holder's permits did not come back within its TTL",
        );
        expect(
            faults.permits_granted_again >= 1,
            "no permit was granted again while its stopped holder was stopped",
        );
        drop(children);
    });
}

/// The worker process of the multi-process case.
pub(crate) fn semaphore_worker_process() {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let run_for = Duration::from_millis(var(RUN_MS_ENV).parse().expect("run time in ms"));
    let out = Arc::new(Mutex::new(File::create(var(OUT_ENV)).expect("output file")));
    let record: SemRecorder = Arc::new(move |event: &SemEvent| {
        let mut file = lock_ignoring_poison(&out);
        writeln!(file, "{}", event.line()).expect("worker output file is writable");
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let backend = backend(PROCESS_INPUT, &var(URL_ENV)).await;
        let semaphore = semaphore(backend, &var(KEY_ENV), PROCESS_LIMIT);
        let deadline = Instant::now() + run_for;
        run_semaphore_worker(semaphore, var(ID_ENV), 1, deadline, None, record).await;
    });
}

/// What stopping a permit holder found.
pub(crate) struct Stopped {
    /// The token of the acquisition stopped (checked to hold its permits when stopped).
    pub(crate) token: Option<String>,
    pub(crate) missed: usize,
    /// Its permits had expired on the server (by the server's clock) while it was still stopped.
    pub(crate) came_back: bool,
    /// Another acquisition was granted after that, while it was still stopped.
    pub(crate) granted_again: bool,
}

/// The holders of the semaphore `key` now: its members but the limit.
fn holders(server: &RedisServer, key: &str) -> Vec<String> {
    let members = server.command(&["ZRANGE", key, "0", "-1"]).expect("ZRANGE");
    members
        .lines()
        .filter(|m| !m.is_empty() && *m != "(nil)" && !m.starts_with("limit:"))
        .map(str::to_owned)
        .collect()
}

/// Whether `member` of `key` is live by the server's clock.
fn live(server: &RedisServer, key: &str, member: &str) -> bool {
    let score = server.command(&["ZSCORE", key, member]).expect("ZSCORE");
    let Ok(score) = score.parse::<f64>() else {
        return false;
    };
    let time = server.command(&["TIME"]).expect("TIME");
    let mut parts = time.lines().map(|p| p.parse::<f64>().unwrap_or(0.0));
    let now_ms = parts.next().unwrap_or(0.0) * 1000.0 + parts.next().unwrap_or(0.0) / 1000.0;
    score > now_ms
}

/// Finds a worker process holding permits and stops it for [`PROCESS_STOP`] (well past the TTL):
/// its permits must expire meanwhile, and be granted to another worker before it runs again.
pub(crate) fn stop_a_permit_holder(
    server: &RedisServer,
    key: &str,
    children: &[(u32, PathBuf)],
) -> Stopped {
    let mut missed = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        thread::sleep(Duration::from_millis(20));
        let before = holders(server, key);
        let owner = before.iter().find_map(|member| {
            let (_, token) = member.split_once(':')?;
            children
                .iter()
                .find(|(_, out)| {
                    fs::read_to_string(out).is_ok_and(|text| {
                        text.lines()
                            .any(|line| line.starts_with("sacq ") && line.contains(token))
                    })
                })
                .map(|(pid, _)| (*pid, member.clone(), token.to_owned()))
        });
        let Some((pid, member, token)) = owner else {
            continue;
        };
        signal(pid, "STOP");
        let stopped_at = Instant::now();
        // Stopped while holding? (A release or renewal already on the wire lands within 100 ms.)
        let holds = live(server, key, &member) && {
            thread::sleep(Duration::from_millis(100));
            live(server, key, &member)
        };
        if !holds {
            signal(pid, "CONT");
            missed += 1;
            continue;
        }
        // Nobody renews it now: by its TTL (and a margin for the server's clock) it is gone.
        thread::sleep(TTL + Duration::from_millis(200));
        let came_back = !live(server, key, &member);
        let mut granted_again = false;
        let stop_until = stopped_at + PROCESS_STOP;
        while came_back && Instant::now() < stop_until {
            if holders(server, key).iter().any(|m| !before.contains(m)) {
                granted_again = true;
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        thread::sleep(stop_until.saturating_duration_since(Instant::now()));
        signal(pid, "CONT");
        return Stopped {
            token: Some(token),
            missed,
            came_back,
            granted_again,
        };
    }
    Stopped {
        token: None,
        missed: missed + 1,
        came_back: false,
        granted_again: false,
    }
}

/// Checks a finished semaphore case, prints its figures, and fails on any violation or on a run that
/// exercised too little.
fn conclude(
    case: &str,
    history: &SemHistory,
    faults: &FaultTally,
    monitor_problems: Vec<String>,
    started: Instant,
) {
    let report = check(history);
    eprintln!(
        "chaos [{case}] after {:.1?}:\n{}\n  faults: {faults}",
        started.elapsed(),
        report.figures
    );
    let mut violations = report.violations;
    violations.extend(monitor_problems);
    assert!(
        violations.is_empty(),
        "[{case}] {} violation(s):\n  {}",
        violations.len(),
        violations.join("\n  ")
    );
    let f = &report.figures;
    let expect = |ok: bool, what: &str| assert!(ok, "[{case}] too little happened: {what}; {f}");
    expect(f.acquisitions >= 20, "fewer than 20 acquisitions");
    expect(
        f.grants_seen >= 20,
        "fewer than 20 grants in the server's history",
    );
    expect(f.full >= 1, "the semaphore was never full");
    expect(f.losses >= 1, "no loss was reported");
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
    expect(faults.freezes >= 1, "no holder was frozen");
}
