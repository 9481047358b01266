//! The read-write lock cases (issue 11): workers take read holds (mostly) and write holds of one
//! fenced [`RwLock`], hold them in `hold` for a while, sometimes downgrade a write hold, and release,
//! under the same faults as the mutex cases; a `MONITOR` records every command on the lock's key and
//! every fence the counter took, and [`check`](crate::rwlock_checker::check) replays them: never a
//! reader beside a writer, one writer at most, fences strictly increasing. In the multi-process case
//! a reader is stopped with SIGSTOP past its TTL, and its read hold must expire, and a writer get in,
//! while it is stopped.

use std::fs::{self, File};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use lock_core::testing::companion_keys;
use lock_core::{ReadGuard, RwLock, WriteGuard};
use redlease::{LockBackend, LockError};

use crate::cases::faults_then_wait;
use crate::faults::{FaultTally, Freezer, inject, signal};
use crate::monitor::Monitor;
use crate::processes::{Children, Launch, TempDir};
use crate::rwlock_checker::{RwEvent, RwHistory, check};
use crate::semaphore::{RUN_FOR, Stopped};
use crate::support::inputs::Input;
use crate::support::proxy::FaultProxy;
use crate::support::{self, RedisServer};
use crate::workload::{Names, Rng, backend};
use crate::{
    ID_ENV, KEY_ENV, MAX_HOLD, OUT_ENV, PATIENCE, PROCESS_INPUT, PROCESS_STOP, RUN_MS_ENV,
    TASK_FREEZE, TTL, URL_ENV, WAIT, lock_ignoring_poison,
};

/// Workers per case.
const TASK_WORKERS: usize = 6;
const PROCESS_WORKERS: usize = 4;
/// Set (to `1`) only in a worker process started by the multi-process read-write lock case.
pub(crate) const RWLOCK_WORKER_ENV: &str = "REDLEASE_CHAOS_RWLOCK_WORKER";
/// The test function a read-write lock worker process runs.
const RWLOCK_WORKER_TEST: &str = "chaos_rwlock_worker_process";

/// A worker's view of the server.
type RwRecorder = Arc<dyn Fn(&RwEvent) + Send + Sync>;

/// Key names of a read-write lock case: the lock's key stands where the mutex cases have theirs.
fn names() -> Names {
    let prefix = support::key_prefix();
    let key = format!("{prefix}chaos-rwlock");
    let resource = format!("{prefix}chaos-unused-resource");
    Names {
        counter: companion_keys(&key)[0].clone(),
        mark: companion_keys(&resource)[2].clone(),
        key,
        resource,
    }
}

fn rwlock(backend: Arc<dyn LockBackend>, key: &str) -> RwLock {
    RwLock::new(backend, key)
        .timeout(TTL)
        .wait_timeout(Some(WAIT))
        .fencing(true)
        .max_hold(MAX_HOLD)
}

/// A hold just taken.
enum Taken {
    Read(ReadGuard),
    Write(WriteGuard),
}

/// How `hold` ended.
fn held(result: Result<(), LockError>) -> &'static str {
    match result {
        Ok(()) => "done",
        Err(LockError::Lost { .. }) => "lost",
        Err(_) => "error",
    }
}

/// Takes a read hold (two times in three) or the write hold, works under it a while (a write hold is
/// sometimes downgraded and read on), releases; again and again until `deadline`.
async fn run_rwlock_worker(
    lock: RwLock,
    worker: String,
    deadline: Instant,
    freeze: Option<Arc<AtomicBool>>,
    record: RwRecorder,
) {
    let mut rng = Rng::new();
    while Instant::now() < deadline {
        let write = rng.below(3) == 0;
        let acquired = match write {
            true => lock.write().await.map(Taken::Write),
            false => lock.read().await.map(Taken::Read),
        };
        let guard = match acquired {
            Ok(guard) => guard,
            Err(error) => {
                let timeout = matches!(error, LockError::Timeout { .. });
                record(&RwEvent::Failed {
                    worker: worker.clone(),
                    kind: if timeout { "timeout" } else { "other" }.into(),
                });
                if !timeout {
                    tokio::time::sleep(rng.millis(10, 50)).await;
                }
                continue;
            }
        };
        let (token, fence) = match &guard {
            Taken::Write(w) => (w.token().to_owned(), w.fence()),
            Taken::Read(r) => (r.token().to_owned(), r.fence()),
        };
        record(&RwEvent::Acquired {
            worker: worker.clone(),
            kind: if write { "write" } else { "read" }.into(),
            fence: fence.expect("a fenced lock issues fences"),
            token: token.clone(),
        });
        let steps = rng.below(4) + 1;
        let pauses: Vec<Duration> = (0..steps).map(|_| rng.millis(20, 120)).collect();
        let work = async {
            for pause in pauses {
                tokio::time::sleep(pause).await;
                if freeze
                    .as_ref()
                    .is_some_and(|freeze| freeze.swap(false, Ordering::SeqCst))
                {
                    record(&RwEvent::Frozen {
                        worker: worker.clone(),
                        token: token.clone(),
                    });
                    // Freezes this whole hold (renewals included), like a GC pause would.
                    tokio::task::block_in_place(|| thread::sleep(TASK_FREEZE));
                }
            }
        };
        let (hold, read): (&str, Option<ReadGuard>) = match guard {
            Taken::Read(read) => (held(read.hold(work).await), Some(read)),
            Taken::Write(write) => {
                let hold = held(write.hold(work).await);
                if hold == "done" && rng.below(2) == 0 {
                    let downgraded = write.downgrade().await;
                    let outcome = match &downgraded {
                        Ok(_) => "ok",
                        Err(LockError::Lost { .. }) => "lost",
                        Err(_) => "failed",
                    };
                    record(&RwEvent::Downgraded {
                        worker: worker.clone(),
                        token: token.clone(),
                        outcome: outcome.into(),
                    });
                    match downgraded {
                        Ok(read) => {
                            let pause = rng.millis(20, 120);
                            let hold = held(read.hold(tokio::time::sleep(pause)).await);
                            (hold, Some(read))
                        }
                        Err(_) => (hold, None),
                    }
                } else {
                    let release = match write.release().await {
                        Ok(true) => "released",
                        Ok(false) => "not-ours",
                        Err(_) => "failed",
                    };
                    record(&RwEvent::End {
                        worker: worker.clone(),
                        token,
                        hold: hold.into(),
                        release: release.into(),
                    });
                    tokio::time::sleep(rng.millis(0, 20)).await;
                    continue;
                }
            }
        };
        let release = match read {
            Some(read) => match read.release().await {
                Ok(true) => "released",
                Ok(false) => "not-ours",
                Err(_) => "failed",
            },
            None => "none",
        };
        record(&RwEvent::End {
            worker: worker.clone(),
            token,
            hold: hold.into(),
            release: release.into(),
        });
        tokio::time::sleep(rng.millis(0, 20)).await;
    }
    record(&RwEvent::Done { worker });
}

/// The in-process case: task workers over `input`, frozen in turn past the TTL.
pub(crate) fn run_rwlock_task_case(input: Input) {
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
        let record: RwRecorder = {
            let lines = lines.clone();
            Arc::new(move |event: &RwEvent| lock_ignoring_poison(&lines).push(event.line()))
        };
        let freeze = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + RUN_FOR;
        let mut workers = Vec::new();
        for i in 0..TASK_WORKERS {
            let lock = rwlock(backend(input, &proxy.url()).await, &names.key);
            workers.push(tokio::spawn(run_rwlock_worker(
                lock,
                format!("w{i}"),
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
        let history = RwHistory {
            events: lines.iter().map(|line| RwEvent::parse(line)).collect(),
            log,
            frozen_tokens: Vec::new(),
        };
        conclude(
            &format!("rwlock, {input}, {TASK_WORKERS} tasks"),
            &history,
            &faults,
            problems,
            started,
        );
    });
}

/// The multi-process case: worker processes over [`PROCESS_INPUT`], one at a time stopped with
/// SIGSTOP while it holds a read hold, past the TTL.
pub(crate) fn run_rwlock_process_case() {
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
            test: RWLOCK_WORKER_TEST,
            role_env: RWLOCK_WORKER_ENV,
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
            Freezer::ReadHolders,
            RUN_FOR,
        )
        .await;
        let (log, problems) = monitor.finish(&server);
        let events: Vec<_> = children
            .event_lines()
            .iter()
            .map(|line| RwEvent::parse(line))
            .collect();
        let history = RwHistory {
            events,
            log,
            frozen_tokens: faults.frozen_tokens.clone(),
        };
        let case = format!("rwlock, {PROCESS_INPUT}, {PROCESS_WORKERS} processes");
        conclude(&case, &history, &faults, problems, started);
        eprintln!(
            "  stopped readers: {} of {} had their read hold expire while stopped, after {} of them \
             a writer got in",
            faults.permits_came_back, faults.freezes, faults.permits_granted_again
        );
        let expect = |ok: bool, what: &str| assert!(ok, "[{case}] {what}; faults: {faults}");
        expect(
            faults.permits_came_back == faults.freezes,
            "a stopped reader's hold did not expire within its TTL",
        );
        expect(
            faults.permits_granted_again >= 1,
            "no writer got in while a stopped reader was stopped",
        );
        drop(children);
    });
}

/// The worker process of the multi-process case.
pub(crate) fn rwlock_worker_process() {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let run_for = Duration::from_millis(var(RUN_MS_ENV).parse().expect("run time in ms"));
    let out = Arc::new(Mutex::new(File::create(var(OUT_ENV)).expect("output file")));
    let record: RwRecorder = Arc::new(move |event: &RwEvent| {
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
        let lock = rwlock(backend, &var(KEY_ENV));
        let deadline = Instant::now() + run_for;
        run_rwlock_worker(lock, var(ID_ENV), deadline, None, record).await;
    });
}

/// The members of the lock `key` now.
fn holders(server: &RedisServer, key: &str) -> Vec<String> {
    let members = server.command(&["ZRANGE", key, "0", "-1"]).expect("ZRANGE");
    members
        .lines()
        .filter(|m| !m.is_empty() && *m != "(nil)")
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

/// Finds a worker process holding a read hold and stops it for [`PROCESS_STOP`] (well past the TTL):
/// its read hold must expire meanwhile, and a writer get in before it runs again.
pub(crate) fn stop_a_read_holder(
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
            let token = member.strip_prefix("read:")?;
            children
                .iter()
                .find(|(_, out)| {
                    fs::read_to_string(out).is_ok_and(|text| {
                        text.lines()
                            .any(|line| line.starts_with("racq ") && line.ends_with(token))
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
        let mut writer_in = false;
        let stop_until = stopped_at + PROCESS_STOP;
        while came_back && Instant::now() < stop_until {
            if holders(server, key)
                .iter()
                .any(|m| m.starts_with("write:") && !before.contains(m))
            {
                writer_in = true;
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
            granted_again: writer_in,
        };
    }
    Stopped {
        token: None,
        missed: missed + 1,
        came_back: false,
        granted_again: false,
    }
}

/// Checks a finished case, prints its figures, and fails on any violation or on a run that exercised
/// too little.
fn conclude(
    case: &str,
    history: &RwHistory,
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
    expect(f.reads >= 10, "fewer than 10 read holds");
    expect(f.writes >= 5, "fewer than 5 write holds");
    expect(f.shared >= 1, "readers never held side by side");
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
