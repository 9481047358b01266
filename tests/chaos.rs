//! Chaos: mutual exclusion of fenced locks under faults, checked against the server's own history.
//!
//! Many workers contend for one fenced lock. While holding it (inside `guard.hold`), each writes a few
//! values to one resource through `fenced_set`, every value unique (`{fence}:{worker}:{n}`), and records
//! every acquisition, every write with its outcome (accepted, rejected as stale, or unknown after a
//! transport error) and how every acquisition ended (what `hold` and `release` answered), and every
//! failure caused by a call that timed out. Meanwhile faults are injected: latency spikes through a
//! [`FaultProxy`], a stall (latency beyond the adapters' call bound, so that calls time out), every
//! client connection killed on the server (`CLIENT KILL`), every connection cut by the proxy, the
//! server restarted with all its data lost, and a holder frozen for longer than the lock's TTL: a
//! blocked task in the in-process cases, and a separate worker process stopped with `SIGSTOP` in the
//! multi-process case.
//!
//! # The check
//!
//! Sampling the resource now and then would miss a stale write overwritten before the next sample, and
//! workers' clocks cannot order writes across processes. The server's own order is used instead: a
//! `MONITOR` connection, straight to the server (never through the proxy, and spared by the connection
//! kills), records every command the server executes, in execution order, including the `set` inside the
//! `fenced_set` script, which runs only when the write is accepted. Across a restart the monitor is
//! re-attached before the proxy lets any client reach the new server, so no write goes unseen. Then:
//!
//! 1. within each server lifetime, the fences of the writes the server applied never decrease (a
//!    holder's own writes share its fence; a later holder's fence is larger): no stale write was ever
//!    applied after a newer holder's write;
//! 2. every write a worker saw accepted is in the server's history, and every write in the history was
//!    made by a worker (one it saw accepted, or one whose outcome it could not know; a write it saw
//!    rejected may appear only when the client re-sends commands after a reconnect, as fred does);
//! 3. fences are unique, and increase for each worker from one acquisition to the next;
//! 4. an acquisition that saw one of its writes rejected (so a newer holder existed) or that was frozen
//!    past its TTL never ends with `release() == Ok(true)`: its loss was reported by `hold`
//!    (`LockError::Lost`) or by `release() == Ok(false)` (or the release failed), never hidden;
//! 5. the resource and its fence mark at the end are the last write of the history.
//!
//! A write accepted by a restarted, empty server from a holder of the previous lifetime is allowed (its
//! fence mark was lost with the data) and counted separately.
//!
//! Every case prints its figures (acquisitions, writes by outcome, losses, timed-out calls, faults by
//! kind) on stderr, and fails when the run exercised too little: faults that took effect (connections
//! really killed and cut, holders really frozen), and failures they really caused (timed-out calls,
//! rejected stale writes, reported losses), not just injection rounds.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use lock_core::testing::companion_keys;
use redlease::deadpool::{DeadpoolBackend, deadpool_redis};
use redlease::fred::{FredBackend, fred, fred::prelude::*};
use redlease::{LockBackend, LockError, LockGuard, RedisLock};
use support::RedisServer;
use support::proxy::FaultProxy;

/// The lock's TTL.
const TTL: Duration = Duration::from_millis(500);
/// The adapters' bound on every call.
const CALL_BOUND: Duration = Duration::from_millis(300);
/// How long one `acquire` keeps trying.
const WAIT: Duration = Duration::from_secs(2);
/// Bounds any one hold.
const MAX_HOLD: Duration = Duration::from_secs(3);
/// How long workers keep acquiring, per case.
const RUN_FOR: Duration = Duration::from_secs(16);
/// How long an in-process holder is frozen: well past the TTL.
const TASK_FREEZE: Duration = Duration::from_millis(1200);
/// How long a worker process is stopped: well past the TTL.
const PROCESS_STOP: Duration = Duration::from_millis(1500);
/// The proxy's latency during a stall: beyond [`CALL_BOUND`], so that every call through it times out.
const STALL_LATENCY: Duration = Duration::from_millis(400);
/// How long a stall lasts.
const STALL: Duration = Duration::from_millis(700);
/// Workers in the in-process cases, and worker processes in the multi-process case.
const TASK_WORKERS: usize = 6;
const PROCESS_WORKERS: usize = 4;
/// Far beyond anything a healthy run needs, on a noisy 2-core machine.
const PATIENCE: Duration = Duration::from_secs(30);

/// Set (to `1`) only in a worker process started by the multi-process case.
const WORKER_ENV: &str = "REDLEASE_CHAOS_WORKER";
const URL_ENV: &str = "REDLEASE_CHAOS_URL";
const KEY_ENV: &str = "REDLEASE_CHAOS_KEY";
const RESOURCE_ENV: &str = "REDLEASE_CHAOS_RESOURCE";
const OUT_ENV: &str = "REDLEASE_CHAOS_OUT";
const ID_ENV: &str = "REDLEASE_CHAOS_ID";
const RUN_MS_ENV: &str = "REDLEASE_CHAOS_RUN_MS";
/// The test function a worker process runs.
const WORKER_TEST: &str = "chaos_worker_process";

// ---------------------------------------------------------------------------------------------------
// The cases

#[test]
fn fenced_writes_stay_ordered_under_chaos_fred_client() {
    let _one_at_a_time = serial();
    run_task_case(Adapter::FredClient);
}

#[test]
fn fenced_writes_stay_ordered_under_chaos_deadpool_pool() {
    let _one_at_a_time = serial();
    run_task_case(Adapter::DeadpoolPool);
}

#[test]
fn fenced_writes_stay_ordered_under_chaos_with_stopped_processes() {
    let _one_at_a_time = serial();
    run_process_case();
}

/// The worker of the multi-process case: does nothing unless started as one by that case.
#[test]
fn chaos_worker_process() {
    if std::env::var_os(WORKER_ENV).is_none() {
        return;
    }
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
        let backend = backend(Adapter::DeadpoolPool, &var(URL_ENV)).await;
        run_worker(lock(backend, &var(KEY_ENV)), plan, record).await;
    });
}

/// The checker itself catches what it must: a synthetic history, then one violation at a time.
#[test]
fn checker_catches_violations() {
    const EVENTS: &str = "\
acq a 10 t10
write a 10 10:a:1 acc
write a 10 10:a:2 acc
end a 10 released done
acq b 11 t11
write b 11 11:b:1 acc
end b 11 released done
acq a 12 t12
acq c 13 t13
write c 13 13:c:1 acc
write a 12 12:a:3 rej
end a 12 not-ours lost a renewal found another holder or no key
write c 13 13:c:2 acc
end c 13 not-ours lost its validity ran out
fail c backend backend deadpool failed on lock k (transient: true)
timeout c acquire
acq b 21 t21
write b 21 21:b:2 unk
end b 21 released done
done a
done b
done c";
    let set = |epoch: u32, value: &str| Entry::ResourceSet {
        epoch,
        value: value.into(),
        by_script: true,
    };
    let history = |events: &str, log: Vec<Entry>| History {
        events: events.lines().map(Event::parse).collect(),
        log,
        final_value: Some("21:b:2".into()),
        final_mark: Some("21".into()),
        frozen_tokens: Vec::new(),
        resends_possible: false,
    };
    let log = vec![
        Entry::Attached { epoch: 0 },
        set(0, "10:a:1"),
        set(0, "10:a:2"),
        set(0, "11:b:1"),
        set(0, "13:c:1"),
        Entry::Attached { epoch: 1 },
        Entry::CounterSeed { epoch: 1, seed: 20 },
        // A holder from before the restart writes onto the empty server: allowed, and counted.
        set(1, "13:c:2"),
        set(1, "21:b:2"),
    ];
    let good = history(EVENTS, log.clone());
    for event in &good.events {
        assert_eq!(&Event::parse(&event.line()), event);
    }
    let report = check(&good);
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    let f = &report.figures;
    assert_eq!(
        (f.acquisitions, f.accepted, f.rejected, f.unknown),
        (5, 5, 1, 1)
    );
    assert_eq!((f.applied, f.unknown_applied, f.lifetimes), (6, 1, 2));
    assert_eq!(f.stale_applied_after_restart, 1);
    assert_eq!(
        (f.lost_in_hold, f.release_not_ours, f.acquire_errors),
        (2, 2, 1)
    );
    assert_eq!(f.call_timeouts, 1);

    let expect = |history: History, what: &str| {
        let found = check(&history).violations;
        assert!(
            found.iter().any(|v| v.contains(what)),
            "expected a violation mentioning {what:?}, got {found:#?}"
        );
    };
    let with_log = |edit: &dyn Fn(&mut Vec<Entry>)| {
        let mut log = log.clone();
        edit(&mut log);
        history(EVENTS, log)
    };
    let with_events = |from: &str, to: &str| {
        assert!(EVENTS.contains(from), "{from}");
        history(&EVENTS.replacen(from, to, 1), log.clone())
    };
    // A stale write applied after a newer one.
    expect(
        with_log(&|log| log.insert(5, set(0, "11:b:1"))),
        "decreased",
    );
    // The same, by a plain SET that bypassed the fence.
    expect(
        with_log(&|log| {
            log.insert(
                5,
                Entry::ResourceSet {
                    epoch: 0,
                    value: "10:a:2".into(),
                    by_script: false,
                },
            )
        }),
        "plain SET",
    );
    // An accepted write the server never applied.
    expect(with_log(&|log| drop(log.remove(2))), "not in the server");
    // A write applied that the worker saw rejected, with no client re-sending commands.
    expect(
        with_log(&|log| log.insert(4, set(0, "12:a:3"))),
        "rejected, yet",
    );
    // A write nobody made.
    expect(
        with_log(&|log| log.insert(4, set(0, "11:z:1"))),
        "no worker",
    );
    // A holder whose write was rejected, yet whose release said the lock was still its own.
    expect(
        with_events("end a 12 not-ours lost", "end a 12 released done"),
        "reported as held",
    );
    // A frozen holder whose release said the lock was still its own.
    let mut frozen = history(EVENTS, log.clone());
    frozen.frozen_tokens = vec!["t11".into()];
    expect(frozen, "frozen past its TTL");
    expect(
        with_events("acq b 11 t11", "acq b 11 t11\nfrozen b 11"),
        "frozen past its TTL",
    );
    // The same fence issued twice; a fence going backwards for one worker.
    expect(with_events("acq c 13 t13", "acq c 12 t13"), "issued twice");
    expect(with_events("acq b 21 t21", "acq b 9 t21"), "earlier fence");
    // A final state that is not the last write.
    let mut wrong_end = history(EVENTS, log.clone());
    wrong_end.final_mark = Some("13".into());
    expect(wrong_end, "final");
    // Writes lost with a restart that nobody wrote after.
    expect(
        with_log(&|log| log.push(Entry::Attached { epoch: 2 })),
        "final",
    );
    // A worker that did not finish, an acquisition that never ended, an unexpected error.
    expect(with_events("\ndone c", ""), "did not finish");
    expect(with_events("end b 21 released done\n", ""), "never ended");
    expect(
        with_events("end b 21 released done\n", "end b 21 released error boom\n"),
        "other than LockError::Lost",
    );

    // MONITOR lines, quoting included.
    assert_eq!(
        parse_monitor_line(r#"+1700000000.123456 [0 lua] "set" "k" "a\"b\\c\x41""#),
        Some((true, vec!["set".into(), "k".into(), "a\"b\\cA".into()]))
    );
    assert_eq!(
        parse_monitor_line(r#"+1700000000.1 [0 127.0.0.1:5000] "SET" "k" "v""#),
        Some((false, vec!["SET".into(), "k".into(), "v".into()]))
    );
}

// ---------------------------------------------------------------------------------------------------
// Case runners

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Adapter {
    FredClient,
    DeadpoolPool,
}

/// Workers are tasks in this process, each with its own client, all through one fault proxy.
fn run_task_case(adapter: Adapter) {
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let names = Names::new();
        let server = RedisServer::start();
        let proxy = FaultProxy::start(server.addr());
        let monitor = Arc::new(Monitor::new(&names));
        monitor.attach(server.addr(), 0).expect("MONITOR attaches");
        let server = Arc::new(Mutex::new(server));

        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let record: Recorder = {
            let lines = lines.clone();
            Arc::new(move |event: &Event| lock_ignoring_poison(&lines).push(event.line()))
        };
        let freeze = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + RUN_FOR;
        let mut workers = Vec::new();
        for i in 0..TASK_WORKERS {
            let lock = lock(backend(adapter, &proxy.url()).await, &names.key);
            let plan = WorkerPlan {
                worker: format!("w{i}"),
                resource: names.resource.clone(),
                deadline,
                freeze: Some(freeze.clone()),
            };
            workers.push(tokio::spawn(run_worker(lock, plan, record.clone())));
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
        let history = History {
            events: lines.iter().map(|line| Event::parse(line)).collect(),
            log,
            final_value: get(&server, &names.resource),
            final_mark: get(&server, &names.mark),
            frozen_tokens: Vec::new(),
            resends_possible: adapter == Adapter::FredClient,
        };
        conclude(
            &format!("{adapter:?}, {TASK_WORKERS} tasks"),
            &history,
            &faults,
            problems,
            started,
        );
    });
}

/// Workers are separate processes (this test binary, running [`chaos_worker_process`]) over deadpool,
/// through one fault proxy in this process; one at a time is stopped with SIGSTOP while it holds the
/// lock.
fn run_process_case() {
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let names = Names::new();
        let server = RedisServer::start();
        let proxy = FaultProxy::start(server.addr());
        let monitor = Arc::new(Monitor::new(&names));
        monitor.attach(server.addr(), 0).expect("MONITOR attaches");
        let server = Arc::new(Mutex::new(server));

        let temp = TempDir::new();
        let dir = temp.path();
        let exe = std::env::current_exe().expect("current test binary");
        let mut children = Children::default();
        for i in 0..PROCESS_WORKERS {
            let id = format!("p{i}");
            let out = dir.join(format!("{id}.events"));
            let log = dir.join(format!("{id}.log"));
            let child = Command::new(&exe)
                .args([WORKER_TEST, "--exact", "--nocapture", "--test-threads", "1"])
                .env(WORKER_ENV, "1")
                .env(URL_ENV, proxy.url())
                .env(KEY_ENV, &names.key)
                .env(RESOURCE_ENV, &names.resource)
                .env(OUT_ENV, &out)
                .env(ID_ENV, &id)
                .env(RUN_MS_ENV, RUN_FOR.as_millis().to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(&log).expect("worker log file"))
                .spawn()
                .expect("spawn a worker process");
            children.0.push(WorkerProcess {
                id,
                child,
                out,
                log,
            });
        }
        let deadline = Instant::now() + RUN_FOR;
        let freezer = Freezer::Processes(
            children
                .0
                .iter()
                .map(|c| (c.child.id(), c.out.clone()))
                .collect(),
        );
        let faults = inject(&server, &proxy, &monitor, freezer, deadline, &names).await;
        let children = tokio::task::spawn_blocking(move || {
            children.wait_all(RUN_FOR + WAIT + PATIENCE);
            children
        })
        .await
        .expect("waiting for the worker processes");

        let (log, problems) = monitor.finish(&server);
        let mut events = Vec::new();
        for child in &children.0 {
            let text = fs::read_to_string(&child.out)
                .unwrap_or_else(|e| panic!("{} wrote no events: {e}", child.id));
            events.extend(text.lines().map(Event::parse));
        }
        let history = History {
            events,
            log,
            final_value: get(&server, &names.resource),
            final_mark: get(&server, &names.mark),
            frozen_tokens: faults.frozen_tokens.clone(),
            resends_possible: false,
        };
        conclude(
            &format!("DeadpoolPool, {PROCESS_WORKERS} processes"),
            &history,
            &faults,
            problems,
            started,
        );
        drop(children);
    });
}

/// Checks a finished case, prints its figures, and fails on any violation or on a run that exercised
/// too little to mean anything.
fn conclude(
    case: &str,
    history: &History,
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
    // The run must have exercised what it claims to.
    let f = &report.figures;
    let expect = |ok: bool, what: &str| assert!(ok, "[{case}] too little happened: {what}; {f}");
    expect(f.acquisitions >= 20, "fewer than 20 acquisitions");
    expect(f.accepted >= 20, "fewer than 20 accepted writes");
    expect(f.rejected >= 1, "no stale write was rejected");
    expect(f.losses_reported() >= 1, "no loss was reported");
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
    expect(f.call_timeouts >= 1, "no call timed out");
    expect(faults.freezes >= 1, "no holder was frozen");
    expect(f.frozen_acquisitions >= 1, "no frozen holder found");
}

// ---------------------------------------------------------------------------------------------------
// Workers

/// Key names of one case.
#[derive(Debug, Clone)]
struct Names {
    key: String,
    resource: String,
    /// The lock's fence counter, as lock-core names it.
    counter: String,
    /// The resource's fence mark, as lock-core names it.
    mark: String,
}

impl Names {
    fn new() -> Names {
        let prefix = support::key_prefix();
        let key = format!("{prefix}chaos-lock");
        let resource = format!("{prefix}chaos-resource");
        Names {
            counter: companion_keys(&key)[0].clone(),
            mark: companion_keys(&resource)[2].clone(),
            key,
            resource,
        }
    }
}

async fn backend(adapter: Adapter, url: &str) -> Arc<dyn LockBackend> {
    match adapter {
        Adapter::FredClient => {
            let mut builder = Builder::from_config(Config::from_url(url).expect("url"));
            // Without a policy a fred client never reconnects; retry every 20 ms, forever.
            builder.set_policy(ReconnectPolicy::new_constant(0, 20));
            builder.with_connection_config(|config| {
                config.connection_timeout = Duration::from_millis(500);
                config.internal_command_timeout = Duration::from_millis(500);
            });
            let client = builder.build().expect("fred client");
            client.init().await.expect("fred connects");
            Arc::new(FredBackend::from(client).command_timeout(CALL_BOUND))
        }
        Adapter::DeadpoolPool => {
            let pool = deadpool_redis::Config::from_url(url)
                .create_pool(Some(deadpool_redis::Runtime::Tokio1))
                .expect("deadpool pool");
            Arc::new(DeadpoolBackend::from(pool).command_timeout(CALL_BOUND))
        }
    }
}

fn lock(backend: Arc<dyn LockBackend>, key: &str) -> RedisLock {
    RedisLock::new(backend, key)
        .timeout(TTL)
        .wait_timeout(Some(WAIT))
        .fencing(true)
        .max_hold(MAX_HOLD)
}

type Recorder = Arc<dyn Fn(&Event) + Send + Sync>;

struct WorkerPlan {
    worker: String,
    resource: String,
    /// No acquisition starts after this.
    deadline: Instant,
    /// In-process freezes: the first holder to see it set clears it and blocks its thread.
    freeze: Option<Arc<AtomicBool>>,
}

/// Acquires, writes a few values while holding, releases; again and again until the deadline.
///
/// Each write runs in its own task, so a write already sent when `hold` gives up on a lost lock still
/// completes and is recorded, as a request already on the wire would.
async fn run_worker(lock: RedisLock, plan: WorkerPlan, record: Recorder) {
    let mut rng = Rng::new();
    let mut n = 0u32;
    let worker = plan.worker.as_str();
    while Instant::now() < plan.deadline {
        let guard = match lock.acquire().await {
            Ok(guard) => Arc::new(guard),
            Err(error) => {
                if timed_out(&error) {
                    record(&Event::TimedOut {
                        worker: worker.into(),
                        during: "acquire".into(),
                    });
                }
                let kind = match &error {
                    LockError::Timeout { .. } => "timeout",
                    LockError::Backend { .. } => "backend",
                    _ => "other",
                };
                record(&Event::AcquireFailed {
                    worker: worker.into(),
                    kind: kind.into(),
                    message: error.to_string(),
                });
                if kind != "timeout" {
                    tokio::time::sleep(rng.millis(10, 50)).await;
                }
                continue;
            }
        };
        let fence = guard.fence().expect("a fenced lock issues fences");
        record(&Event::Acquired {
            worker: worker.into(),
            fence,
            token: guard.token().into(),
        });
        let in_flight = Mutex::new(Vec::new());
        let writes = rng.below(4) + 2;
        let held = guard
            .hold(async {
                for _ in 0..writes {
                    // Every pause is followed by a write, so that a holder frozen in it (or stopped
                    // by SIGSTOP) writes with its stale fence as soon as it runs again.
                    tokio::time::sleep(rng.millis(5, 25)).await;
                    if plan
                        .freeze
                        .as_ref()
                        .is_some_and(|freeze| freeze.swap(false, Ordering::SeqCst))
                    {
                        record(&Event::Frozen {
                            worker: worker.into(),
                            fence,
                        });
                        // Freezes this whole hold (renewals included), like a GC pause would.
                        tokio::task::block_in_place(|| thread::sleep(TASK_FREEZE));
                    }
                    n += 1;
                    let (done, outcome) = tokio::sync::oneshot::channel();
                    lock_ignoring_poison(&in_flight).push(tokio::spawn(write(
                        guard.clone(),
                        worker.to_owned(),
                        plan.resource.clone(),
                        format!("{fence}:{worker}:{n}"),
                        record.clone(),
                        done,
                    )));
                    if !matches!(outcome.await, Ok(Outcome::Accepted)) {
                        break;
                    }
                }
            })
            .await;
        let hold = match held {
            Ok(()) => HoldEnd::Done,
            Err(LockError::Lost { reason, .. }) => {
                // The renewal failures that ran the validity out are in the reason, as text.
                if reason.contains(CALL_TIMED_OUT) {
                    record(&Event::TimedOut {
                        worker: worker.into(),
                        during: "hold".into(),
                    });
                }
                HoldEnd::Lost(reason)
            }
            Err(other) => HoldEnd::Error(other.to_string()),
        };
        let sent = std::mem::take(&mut *lock_ignoring_poison(&in_flight));
        for write in sent {
            write.await.expect("a write task panicked");
        }
        let guard = Arc::into_inner(guard).expect("the write tasks are done with the guard");
        let release = match guard.release().await {
            Ok(true) => Release::Released,
            Ok(false) => Release::NotOurs,
            Err(error) => {
                if timed_out(&error) {
                    record(&Event::TimedOut {
                        worker: worker.into(),
                        during: "release".into(),
                    });
                }
                Release::Failed
            }
        };
        record(&Event::End {
            worker: worker.into(),
            fence,
            hold,
            release,
        });
        tokio::time::sleep(rng.millis(0, 20)).await;
    }
    record(&Event::Done {
        worker: worker.into(),
    });
}

/// One `fenced_set`, recorded with its outcome, which is also sent to the holder still waiting for it.
async fn write(
    guard: Arc<LockGuard>,
    worker: String,
    resource: String,
    value: String,
    record: Recorder,
    done: tokio::sync::oneshot::Sender<Outcome>,
) {
    let outcome = match guard.fenced_set(&resource, &value).await {
        Ok(true) => Outcome::Accepted,
        Ok(false) => Outcome::Rejected,
        Err(error) => {
            if timed_out(&error) {
                record(&Event::TimedOut {
                    worker: worker.clone(),
                    during: "write".into(),
                });
            }
            Outcome::Unknown
        }
    };
    record(&Event::Write {
        worker,
        fence: guard.fence().expect("fenced"),
        value,
        outcome,
    });
    let _ = done.send(outcome);
}

/// How lock-core's `BackendError::timed_out` reads: the adapters' bound on a call elapsed.
const CALL_TIMED_OUT: &str = "no reply within";

/// Whether `error` was caused by a call that timed out: the adapter's bound elapsed, or the client's
/// own timeout fired (an I/O timeout, redis-rs's response timeout, fred's command timeout).
fn timed_out(error: &LockError) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = next {
        if cause.to_string().starts_with(CALL_TIMED_OUT)
            || cause
                .downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::TimedOut)
            || cause
                .downcast_ref::<deadpool_redis::redis::RedisError>()
                .is_some_and(deadpool_redis::redis::RedisError::is_timeout)
            || cause
                .downcast_ref::<fred::error::Error>()
                .is_some_and(|e| *e.kind() == fred::error::ErrorKind::Timeout)
        {
            return true;
        }
        next = cause.source();
    }
    false
}

/// A small xorshift generator: jitter only, no need for a crate.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        Rng(uuid::Uuid::new_v4().as_u64_pair().0 | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.below(high - low + 1))
    }
}

// ---------------------------------------------------------------------------------------------------
// Events: what workers record, one line each (a worker process writes them to its output file).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Accepted,
    Rejected,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HoldEnd {
    /// The work finished first.
    Done,
    /// `hold` answered `LockError::Lost`, with its reason.
    Lost(String),
    /// `hold` answered some other error (it never should).
    Error(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Release {
    /// `release() == Ok(true)`: the lock was still ours.
    Released,
    /// `release() == Ok(false)`.
    NotOurs,
    /// `release()` failed: no answer either way.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    AcquireFailed {
        worker: String,
        kind: String,
        message: String,
    },
    Acquired {
        worker: String,
        fence: u64,
        token: String,
    },
    Frozen {
        worker: String,
        fence: u64,
    },
    /// A failure (of `acquire`, a write, `hold` or `release`) caused by a call that timed out.
    TimedOut {
        worker: String,
        during: String,
    },
    Write {
        worker: String,
        fence: u64,
        value: String,
        outcome: Outcome,
    },
    End {
        worker: String,
        fence: u64,
        hold: HoldEnd,
        release: Release,
    },
    Done {
        worker: String,
    },
}

impl Event {
    /// One line; free text comes last.
    fn line(&self) -> String {
        match self {
            Event::AcquireFailed {
                worker,
                kind,
                message,
            } => format!("fail {worker} {kind} {message}"),
            Event::Acquired {
                worker,
                fence,
                token,
            } => format!("acq {worker} {fence} {token}"),
            Event::Frozen { worker, fence } => format!("frozen {worker} {fence}"),
            Event::TimedOut { worker, during } => format!("timeout {worker} {during}"),
            Event::Write {
                worker,
                fence,
                value,
                outcome,
            } => {
                let outcome = match outcome {
                    Outcome::Accepted => "acc",
                    Outcome::Rejected => "rej",
                    Outcome::Unknown => "unk",
                };
                format!("write {worker} {fence} {value} {outcome}")
            }
            Event::End {
                worker,
                fence,
                hold,
                release,
            } => {
                let release = match release {
                    Release::Released => "released",
                    Release::NotOurs => "not-ours",
                    Release::Failed => "failed",
                };
                let (hold, reason) = match hold {
                    HoldEnd::Done => ("done", ""),
                    HoldEnd::Lost(reason) => ("lost", reason.as_str()),
                    HoldEnd::Error(message) => ("error", message.as_str()),
                };
                let line = format!("end {worker} {fence} {release} {hold} {reason}");
                line.trim_end().to_owned()
            }
            Event::Done { worker } => format!("done {worker}"),
        }
    }

    fn parse(line: &str) -> Event {
        let Some((tag, rest)) = line.split_once(' ') else {
            bad_line(line)
        };
        let fields = |n: usize| -> Vec<String> {
            let mut fields: Vec<String> = rest.splitn(n, ' ').map(str::to_owned).collect();
            // Only the free text at the end may be missing (an empty reason).
            if fields.len() + 1 == n && tag == "end" {
                fields.push(String::new());
            }
            if fields.len() != n {
                bad_line(line)
            }
            fields
        };
        let number = |text: &str| -> u64 { text.parse().unwrap_or_else(|_| bad_line(line)) };
        match tag {
            "fail" => {
                let [worker, kind, message] = <[String; 3]>::try_from(fields(3)).unwrap();
                Event::AcquireFailed {
                    worker,
                    kind,
                    message,
                }
            }
            "acq" => {
                let [worker, fence, token] = <[String; 3]>::try_from(fields(3)).unwrap();
                Event::Acquired {
                    worker,
                    fence: number(&fence),
                    token,
                }
            }
            "frozen" => {
                let [worker, fence] = <[String; 2]>::try_from(fields(2)).unwrap();
                Event::Frozen {
                    worker,
                    fence: number(&fence),
                }
            }
            "timeout" => {
                let [worker, during] = <[String; 2]>::try_from(fields(2)).unwrap();
                Event::TimedOut { worker, during }
            }
            "write" => {
                let [worker, fence, value, outcome] = <[String; 4]>::try_from(fields(4)).unwrap();
                let outcome = match outcome.as_str() {
                    "acc" => Outcome::Accepted,
                    "rej" => Outcome::Rejected,
                    "unk" => Outcome::Unknown,
                    _ => bad_line(line),
                };
                Event::Write {
                    worker,
                    fence: number(&fence),
                    value,
                    outcome,
                }
            }
            "end" => {
                let [worker, fence, release, hold, reason] =
                    <[String; 5]>::try_from(fields(5)).unwrap();
                let release = match release.as_str() {
                    "released" => Release::Released,
                    "not-ours" => Release::NotOurs,
                    "failed" => Release::Failed,
                    _ => bad_line(line),
                };
                let hold = match hold.as_str() {
                    "done" => HoldEnd::Done,
                    "lost" => HoldEnd::Lost(reason),
                    "error" => HoldEnd::Error(reason),
                    _ => bad_line(line),
                };
                Event::End {
                    worker,
                    fence: number(&fence),
                    hold,
                    release,
                }
            }
            "done" => Event::Done {
                worker: rest.to_owned(),
            },
            _ => bad_line(line),
        }
    }
}

fn bad_line(line: &str) -> ! {
    panic!("unreadable event line {line:?}")
}

// ---------------------------------------------------------------------------------------------------
// The server's history, through MONITOR

/// What the server executed that matters to the check, in its order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    /// `SET resource value`, by a script (`fenced_set`) or a client; `epoch` counts server launches.
    ResourceSet {
        epoch: u32,
        value: String,
        by_script: bool,
    },
    /// The fence counter seeded from the server's clock (first use, or after a restart lost it).
    CounterSeed { epoch: u32, seed: u64 },
    /// `ECHO text`: the end-of-run marker.
    Echo(String),
    /// The monitor attached to server lifetime `epoch` (0: the first launch, then one per restart).
    Attached { epoch: u32 },
}

/// A `MONITOR` connection straight to the server, re-attached after each restart.
struct Monitor {
    resource: String,
    counter: String,
    entries: Arc<Mutex<Vec<Entry>>>,
    problems: Arc<Mutex<Vec<String>>>,
    current: Mutex<Option<Attachment>>,
    readers: Mutex<Vec<thread::JoinHandle<()>>>,
}

struct Attachment {
    stream: TcpStream,
    client_id: String,
    /// Set when this connection is about to end (server restart, end of run): EOF is no problem then.
    ending: Arc<AtomicBool>,
}

impl Monitor {
    fn new(names: &Names) -> Monitor {
        Monitor {
            resource: names.resource.clone(),
            counter: names.counter.clone(),
            entries: Arc::default(),
            problems: Arc::default(),
            current: Mutex::new(None),
            readers: Mutex::new(Vec::new()),
        }
    }

    /// Connects to `addr` and starts recording; returns once the server confirmed `MONITOR`.
    fn attach(&self, addr: SocketAddr, epoch: u32) -> io::Result<()> {
        let stream = TcpStream::connect_timeout(&addr, PATIENCE)?;
        stream.set_read_timeout(Some(PATIENCE))?;
        stream.set_write_timeout(Some(PATIENCE))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut line = String::new();
        (&stream).write_all(&support::encode_command(&["CLIENT", "ID"]))?;
        reader.read_line(&mut line)?;
        let client_id = line
            .trim_end()
            .strip_prefix(':')
            .ok_or_else(|| io::Error::other(format!("CLIENT ID answered {line:?}")))?
            .to_owned();
        line.clear();
        (&stream).write_all(&support::encode_command(&["MONITOR"]))?;
        reader.read_line(&mut line)?;
        if line.trim_end() != "+OK" {
            return Err(io::Error::other(format!("MONITOR answered {line:?}")));
        }
        stream.set_read_timeout(None)?;
        lock_ignoring_poison(&self.entries).push(Entry::Attached { epoch });
        let ending = Arc::new(AtomicBool::new(false));
        let reader = {
            let ending = ending.clone();
            let entries = self.entries.clone();
            let problems = self.problems.clone();
            let resource = self.resource.clone();
            let counter = self.counter.clone();
            thread::spawn(move || {
                let mut line = String::new();
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) if ending.load(Ordering::SeqCst) => return,
                        Ok(0) => {
                            lock_ignoring_poison(&problems).push(format!(
                                "the MONITOR connection of server lifetime {epoch} closed \
                                 unexpectedly: the history may have gaps"
                            ));
                            return;
                        }
                        Err(e) => {
                            lock_ignoring_poison(&problems).push(format!(
                                "the MONITOR connection of server lifetime {epoch} failed: {e}"
                            ));
                            return;
                        }
                        Ok(_) => {}
                    }
                    let Some((by_script, args)) = parse_monitor_line(line.trim_end()) else {
                        continue;
                    };
                    let command = args.first().map(|c| c.to_ascii_lowercase());
                    let entry = match (command.as_deref(), args.get(1), args.get(2)) {
                        (Some("set"), Some(key), Some(value)) if *key == resource => {
                            Entry::ResourceSet {
                                epoch,
                                value: value.clone(),
                                by_script,
                            }
                        }
                        (Some("set"), Some(key), Some(value)) if *key == counter => {
                            Entry::CounterSeed {
                                epoch,
                                seed: value.parse().unwrap_or(0),
                            }
                        }
                        (Some("echo"), Some(text), None) => Entry::Echo(text.clone()),
                        _ => continue,
                    };
                    lock_ignoring_poison(&entries).push(entry);
                }
            })
        };
        lock_ignoring_poison(&self.readers).push(reader);
        *lock_ignoring_poison(&self.current) = Some(Attachment {
            stream,
            client_id,
            ending,
        });
        Ok(())
    }

    /// The server's client id of the current `MONITOR` connection.
    fn client_id(&self) -> Option<String> {
        lock_ignoring_poison(&self.current)
            .as_ref()
            .map(|a| a.client_id.clone())
    }

    /// The current connection is about to end (the server is being restarted).
    fn expect_end(&self) {
        if let Some(current) = lock_ignoring_poison(&self.current).take() {
            current.ending.store(true, Ordering::SeqCst);
        }
    }

    /// Waits until everything the server executed so far has been recorded, stops recording, and
    /// returns the history and any problem seen (a monitor connection that ended unexpectedly).
    fn finish(&self, server: &Mutex<RedisServer>) -> (Vec<Entry>, Vec<String>) {
        let marker = format!("chaos-end-{}", uuid::Uuid::new_v4().simple());
        lock_ignoring_poison(server)
            .command(&["ECHO", &marker])
            .expect("ECHO");
        let deadline = Instant::now() + PATIENCE;
        while !lock_ignoring_poison(&self.entries).contains(&Entry::Echo(marker.clone())) {
            assert!(
                Instant::now() < deadline,
                "MONITOR never showed the end marker"
            );
            thread::sleep(Duration::from_millis(10));
        }
        if let Some(current) = lock_ignoring_poison(&self.current).take() {
            current.ending.store(true, Ordering::SeqCst);
            let _ = current.stream.shutdown(Shutdown::Both);
        }
        for reader in std::mem::take(&mut *lock_ignoring_poison(&self.readers)) {
            reader.join().expect("MONITOR reader thread");
        }
        let entries = std::mem::take(&mut *lock_ignoring_poison(&self.entries));
        let problems = std::mem::take(&mut *lock_ignoring_poison(&self.problems));
        (entries, problems)
    }
}

/// Reads a `MONITOR` line such as `+1700000000.123456 [0 lua] "set" "key" "va\"lue"`: whether a script
/// ran the command, and the command's arguments, unquoted.
fn parse_monitor_line(line: &str) -> Option<(bool, Vec<String>)> {
    let line = line.strip_prefix('+')?;
    let open = line.find('[')?;
    let close = open + line[open..].find(']')?;
    let by_script = line[open + 1..close].split(' ').nth(1) == Some("lua");
    let mut args = Vec::new();
    let mut bytes = line[close + 1..].bytes();
    loop {
        match bytes.next() {
            None => return Some((by_script, args)),
            Some(b' ') => continue,
            Some(b'"') => {}
            Some(_) => return None,
        }
        let mut arg = Vec::new();
        loop {
            match bytes.next()? {
                b'"' => break,
                b'\\' => match bytes.next()? {
                    b'n' => arg.push(b'\n'),
                    b'r' => arg.push(b'\r'),
                    b't' => arg.push(b'\t'),
                    b'a' => arg.push(7),
                    b'b' => arg.push(8),
                    b'x' => {
                        let hex = [bytes.next()?, bytes.next()?];
                        let hex = std::str::from_utf8(&hex).ok()?;
                        arg.push(u8::from_str_radix(hex, 16).ok()?);
                    }
                    other => arg.push(other),
                },
                other => arg.push(other),
            }
        }
        args.push(String::from_utf8_lossy(&arg).into_owned());
    }
}

// ---------------------------------------------------------------------------------------------------
// Fault injection

/// How a holder is frozen past its TTL.
enum Freezer {
    /// In-process workers: the first holder to see the flag set blocks its thread for
    /// [`TASK_FREEZE`].
    Tasks(Arc<AtomicBool>),
    /// Worker processes (pid, output file): the holder is found through the lock key's token and
    /// stopped with SIGSTOP for [`PROCESS_STOP`].
    Processes(Vec<(u32, PathBuf)>),
}

#[derive(Debug, Default)]
struct FaultTally {
    latency_spikes: usize,
    stalls: usize,
    client_kills: usize,
    /// `CLIENT KILL` rounds that killed at least one connection.
    client_kills_effective: usize,
    clients_killed: usize,
    cuts: usize,
    /// Proxy cuts that closed at least one connection.
    cuts_effective: usize,
    connections_cut: usize,
    restarts: usize,
    freezes: usize,
    freezes_missed: usize,
    /// Tokens of the acquisitions frozen in worker processes.
    frozen_tokens: Vec<String>,
}

impl fmt::Display for FaultTally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} latency spikes, {} stalls, {} CLIENT KILL rounds ({} of them effective, {} \
             connections), {} proxy cuts ({} of them effective, {} connections), {} restarts, {} \
             holders frozen past the TTL ({} attempts found no holder)",
            self.latency_spikes,
            self.stalls,
            self.client_kills,
            self.client_kills_effective,
            self.clients_killed,
            self.cuts,
            self.cuts_effective,
            self.connections_cut,
            self.restarts,
            self.freezes,
            self.freezes_missed
        )
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Latency,
    Stall,
    ClientKill,
    Freeze,
    Cut,
    Restart,
}

/// Injects one fault after another, in a fixed rotation with random gaps, until shortly before
/// `deadline` (the end of the run is left calm).
async fn inject(
    server: &Arc<Mutex<RedisServer>>,
    proxy: &FaultProxy,
    monitor: &Arc<Monitor>,
    freezer: Freezer,
    deadline: Instant,
    names: &Names,
) -> FaultTally {
    // Each fault the run must see happens before the second freeze, the one it can do without.
    const ROTATION: [Fault; 7] = [
        Fault::Latency,
        Fault::Stall,
        Fault::Freeze,
        Fault::Restart,
        Fault::ClientKill,
        Fault::Cut,
        Fault::Freeze,
    ];
    let mut rng = Rng::new();
    let mut tally = FaultTally::default();
    let mut epoch = 0;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for fault in ROTATION.iter().cycle() {
        if Instant::now() + Duration::from_millis(2500) > deadline {
            break;
        }
        match fault {
            Fault::Latency => {
                proxy.set_latency(rng.millis(20, 80));
                tokio::time::sleep(rng.millis(800, 1200)).await;
                proxy.set_latency(Duration::ZERO);
                tally.latency_spikes += 1;
            }
            Fault::Stall => {
                proxy.set_latency(STALL_LATENCY);
                tokio::time::sleep(STALL).await;
                proxy.set_latency(Duration::ZERO);
                tally.stalls += 1;
            }
            Fault::ClientKill => {
                // Every normal client but the MONITOR (which `CLIENT KILL TYPE normal` would kill too).
                let spare = monitor.client_id();
                let killed = blocking(server, move |server| {
                    let list = server.command(&["CLIENT", "LIST", "TYPE", "normal"]);
                    let list = list.expect("CLIENT LIST");
                    let ids = list.lines().filter_map(|line| {
                        let id = line.split(' ').next()?.strip_prefix("id=")?;
                        (Some(id) != spare.as_deref()).then(|| id.to_owned())
                    });
                    let ids: Vec<String> = ids.collect();
                    ids.iter()
                        .filter(|id| {
                            server.command(&["CLIENT", "KILL", "ID", id]) == Ok("1".to_owned())
                        })
                        .count()
                })
                .await;
                tally.client_kills += 1;
                tally.client_kills_effective += usize::from(killed > 0);
                tally.clients_killed += killed;
            }
            Fault::Cut => {
                let cut = proxy.cut_all();
                tally.connections_cut += cut;
                tally.cuts += 1;
                tally.cuts_effective += usize::from(cut > 0);
            }
            Fault::Restart => {
                // No client reaches the new server before the monitor does.
                proxy.set_refuse(true);
                proxy.cut_all();
                monitor.expect_end();
                epoch += 1;
                let monitor = monitor.clone();
                blocking(server, move |server| {
                    server.restart();
                    monitor
                        .attach(server.addr(), epoch)
                        .expect("MONITOR attaches to the restarted server");
                })
                .await;
                proxy.set_refuse(false);
                tally.restarts += 1;
            }
            Fault::Freeze => match &freezer {
                Freezer::Tasks(flag) => {
                    flag.store(true, Ordering::SeqCst);
                    let asked = Instant::now();
                    while flag.load(Ordering::SeqCst) && asked.elapsed() < Duration::from_secs(3) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    if flag.swap(false, Ordering::SeqCst) {
                        tally.freezes_missed += 1;
                    } else {
                        tally.freezes += 1;
                        tokio::time::sleep(TASK_FREEZE).await;
                    }
                }
                Freezer::Processes(children) => {
                    let children = children.clone();
                    let key = names.key.clone();
                    let (frozen, missed) =
                        blocking(server, move |server| stop_a_holder(server, &key, &children))
                            .await;
                    tally.freezes_missed += missed;
                    if let Some(token) = frozen {
                        tally.freezes += 1;
                        tally.frozen_tokens.push(token);
                    }
                }
            },
        }
        tokio::time::sleep(rng.millis(300, 700)).await;
    }
    tally
}

/// Finds the worker process holding the lock and stops it for [`PROCESS_STOP`]. Answers the token of
/// the acquisition it froze (checked to still hold the lock while stopped), and how many tries missed.
fn stop_a_holder(
    server: &RedisServer,
    key: &str,
    children: &[(u32, PathBuf)],
) -> (Option<String>, usize) {
    let mut missed = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        thread::sleep(Duration::from_millis(20));
        let holder = server.command(&["GET", key]).expect("GET lock key");
        let owner = children.iter().find(|(_, out)| {
            fs::read_to_string(out).is_ok_and(|text| {
                text.lines()
                    .any(|line| line.starts_with("acq ") && line.ends_with(&format!(" {holder}")))
            })
        });
        let Some((pid, _)) = owner else {
            continue;
        };
        signal(*pid, "STOP");
        // Stopped while holding? (A release or renewal already on the wire lands within 100 ms.)
        let still = |server: &RedisServer| server.command(&["GET", key]) == Ok(holder.clone());
        let holds = still(server) && {
            thread::sleep(Duration::from_millis(100));
            still(server)
        };
        if !holds {
            signal(*pid, "CONT");
            missed += 1;
            continue;
        }
        thread::sleep(PROCESS_STOP);
        signal(*pid, "CONT");
        return (Some(holder), missed);
    }
    (None, missed + 1)
}

fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run kill -{signal} {pid}: {e}"));
    assert!(status.success(), "kill -{signal} {pid} failed: {status}");
}

/// Runs `f` on the server off the runtime's threads.
async fn blocking<T: Send + 'static>(
    server: &Arc<Mutex<RedisServer>>,
    f: impl FnOnce(&mut RedisServer) -> T + Send + 'static,
) -> T {
    let server = server.clone();
    tokio::task::spawn_blocking(move || f(&mut lock_ignoring_poison(&server)))
        .await
        .expect("blocking server task")
}

fn get(server: &Mutex<RedisServer>, key: &str) -> Option<String> {
    match lock_ignoring_poison(server).command(&["GET", key]) {
        Ok(nil) if nil == "(nil)" => None,
        Ok(value) => Some(value),
        Err(e) => panic!("GET {key}: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------------
// Worker processes

struct WorkerProcess {
    id: String,
    child: Child,
    out: PathBuf,
    log: PathBuf,
}

/// The worker processes; any still running when this is dropped (a failed test) are killed.
#[derive(Default)]
struct Children(Vec<WorkerProcess>);

impl Children {
    /// Waits for every worker to exit by itself, successfully.
    fn wait_all(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        for worker in &mut self.0 {
            let status = loop {
                if let Some(status) = worker.child.try_wait().expect("try_wait") {
                    break status;
                }
                assert!(
                    Instant::now() < deadline,
                    "worker {} did not stop by itself; log:\n{}",
                    worker.id,
                    read_log(&worker.log)
                );
                thread::sleep(Duration::from_millis(50));
            };
            assert!(
                status.success(),
                "worker {} failed ({status}); log:\n{}",
                worker.id,
                read_log(&worker.log)
            );
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for worker in &mut self.0 {
            // SIGKILL works on a stopped process too.
            let _ = worker.child.kill();
            let _ = worker.child.wait();
        }
    }
}

/// The worker processes' event and log files; removed when dropped, whether the case passed or not
/// (a failure message quotes what matters).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("redlease-chaos-{}", uuid::Uuid::new_v4().simple()));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn read_log(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
}

// ---------------------------------------------------------------------------------------------------
// The checker

#[derive(Debug, Clone)]
struct History {
    /// Everything the workers recorded.
    events: Vec<Event>,
    /// What the server executed, in its order.
    log: Vec<Entry>,
    /// `GET resource` and `GET` its fence mark, at the end.
    final_value: Option<String>,
    final_mark: Option<String>,
    /// Tokens of acquisitions frozen past the TTL from outside (stopped processes).
    frozen_tokens: Vec<String>,
    /// Whether the client may re-send a command after a reconnect (fred), so that a write it answered
    /// as rejected may have been applied by an earlier send.
    resends_possible: bool,
}

#[derive(Debug, Default)]
struct Figures {
    acquisitions: usize,
    acquire_timeouts: usize,
    acquire_errors: usize,
    accepted: usize,
    rejected: usize,
    unknown: usize,
    unknown_applied: usize,
    rejected_but_applied: usize,
    applied: usize,
    stale_applied_after_restart: usize,
    lost_in_hold: usize,
    release_not_ours: usize,
    release_failed: usize,
    frozen_acquisitions: usize,
    /// Failures caused by a call that timed out.
    call_timeouts: usize,
    /// Frozen acquisitions that wrote again after the freeze and were rejected.
    frozen_rejected: usize,
    lifetimes: u32,
}

impl Figures {
    fn losses_reported(&self) -> usize {
        self.lost_in_hold + self.release_not_ours
    }
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "  acquisitions: {} ({} acquire timeouts, {} acquire backend errors)\n  \
             writes: {} accepted, {} stale rejected, {} unknown outcome ({} of them applied)\n  \
             server history: {} writes applied over {} server lifetimes, {} by a holder from before a \
             restart onto the empty server, {} answered as rejected yet applied (client re-send)\n  \
             losses reported: {} by hold (LockError::Lost), {} by release() == false; {} releases \
             failed\n  failures caused by a timed-out call: {}\n  holders frozen past the TTL: {}, {} \
             of which then had a stale write rejected",
            self.acquisitions,
            self.acquire_timeouts,
            self.acquire_errors,
            self.accepted,
            self.rejected,
            self.unknown,
            self.unknown_applied,
            self.applied,
            self.lifetimes,
            self.stale_applied_after_restart,
            self.rejected_but_applied,
            self.lost_in_hold,
            self.release_not_ours,
            self.release_failed,
            self.call_timeouts,
            self.frozen_acquisitions,
            self.frozen_rejected,
        )
    }
}

struct Report {
    figures: Figures,
    violations: Vec<String>,
}

/// The fence embedded in a value `{fence}:{worker}:{n}`.
fn fence_of(value: &str) -> Option<u64> {
    value.split(':').next()?.parse().ok()
}

fn check(history: &History) -> Report {
    let mut v = Vec::new();
    let mut f = Figures::default();

    // Acquisitions: unique fences, increasing per worker; each one ended; each worker finished.
    let mut acquisitions: HashMap<u64, (&str, &str)> = HashMap::new();
    let mut last_fence: HashMap<&str, u64> = HashMap::new();
    let mut ends: HashMap<u64, (&HoldEnd, Release)> = HashMap::new();
    let mut workers: HashSet<&str> = HashSet::new();
    let mut finished: HashSet<&str> = HashSet::new();
    let mut frozen: Vec<u64> = Vec::new();
    let mut writes: HashMap<&str, (&str, u64, Outcome)> = HashMap::new();
    for event in &history.events {
        match event {
            Event::AcquireFailed {
                worker,
                kind,
                message,
            } => {
                workers.insert(worker);
                match kind.as_str() {
                    "timeout" => f.acquire_timeouts += 1,
                    "backend" => f.acquire_errors += 1,
                    _ => v.push(format!("{worker}: acquire failed unexpectedly: {message}")),
                }
            }
            Event::Acquired {
                worker,
                fence,
                token,
            } => {
                workers.insert(worker);
                f.acquisitions += 1;
                if let Some((other, _)) = acquisitions.insert(*fence, (worker, token)) {
                    v.push(format!(
                        "fence {fence} was issued twice ({other} and {worker})"
                    ));
                }
                if let Some(last) = last_fence.insert(worker, *fence)
                    && last >= *fence
                {
                    v.push(format!(
                        "{worker}: fence {fence} issued after its earlier fence {last}"
                    ));
                }
            }
            Event::Frozen { fence, .. } => frozen.push(*fence),
            Event::TimedOut { .. } => f.call_timeouts += 1,
            Event::Write {
                worker,
                fence,
                value,
                outcome,
            } => {
                match outcome {
                    Outcome::Accepted => f.accepted += 1,
                    Outcome::Rejected => f.rejected += 1,
                    Outcome::Unknown => f.unknown += 1,
                }
                // Values are unique by construction (`{fence}:{worker}:{n}`, `n` counting the
                // worker's writes), so each is recorded once.
                writes.insert(value, (worker, *fence, *outcome));
            }
            Event::End {
                fence,
                hold,
                release,
                worker,
            } => {
                match hold {
                    HoldEnd::Done => {}
                    HoldEnd::Lost(_) => f.lost_in_hold += 1,
                    HoldEnd::Error(message) => v.push(format!(
                        "{worker}: hold (fence {fence}) failed with something other than \
                         LockError::Lost: {message}"
                    )),
                }
                match release {
                    Release::Released => {}
                    Release::NotOurs => f.release_not_ours += 1,
                    Release::Failed => f.release_failed += 1,
                }
                ends.insert(*fence, (hold, *release));
            }
            Event::Done { worker } => {
                finished.insert(worker);
            }
        }
    }
    for worker in &workers {
        if !finished.contains(worker) {
            v.push(format!("{worker} did not finish"));
        }
    }
    for (fence, (worker, _)) in &acquisitions {
        if !ends.contains_key(fence) {
            v.push(format!(
                "{worker}: the acquisition with fence {fence} never ended"
            ));
        }
    }

    // The server's history: fences never decrease within a server lifetime.
    let mut applied: HashSet<&str> = HashSet::new();
    let mut seeds: BTreeMap<u32, u64> = BTreeMap::new();
    let mut last: Option<(u32, u64, &str)> = None;
    for entry in &history.log {
        match entry {
            Entry::CounterSeed { epoch, seed } => {
                seeds.entry(*epoch).or_insert(*seed);
            }
            Entry::ResourceSet {
                epoch,
                value,
                by_script,
            } => {
                f.applied += 1;
                applied.insert(value);
                let Some(fence) = fence_of(value) else {
                    v.push(format!("the server applied a foreign value {value:?}"));
                    continue;
                };
                if let Some((last_epoch, last_fence, last_value)) = last
                    && last_epoch == *epoch
                    && fence < last_fence
                {
                    v.push(format!(
                        "the fence decreased in the server's history: {value} (by {}) was applied \
                         after {last_value}",
                        if *by_script {
                            "fenced_set"
                        } else {
                            "a plain SET"
                        }
                    ));
                }
                if *epoch > 0 && seeds.get(epoch).is_some_and(|seed| fence < *seed) {
                    f.stale_applied_after_restart += 1;
                }
                match writes.get(value.as_str()) {
                    None => v.push(format!("the server applied {value}, which no worker wrote")),
                    Some((worker, _, Outcome::Rejected)) if !history.resends_possible => v.push(
                        format!("{worker}: {value} was answered as rejected, yet it was applied"),
                    ),
                    Some(_) => {}
                }
                last = Some((*epoch, fence, value));
            }
            Entry::Attached { epoch } => f.lifetimes = f.lifetimes.max(epoch + 1),
            Entry::Echo(_) => {}
        }
    }
    for (value, (worker, _, outcome)) in &writes {
        let in_log = applied.contains(value);
        match outcome {
            Outcome::Accepted if !in_log => v.push(format!(
                "{worker}: {value} was answered as accepted but is not in the server's history"
            )),
            Outcome::Rejected if in_log => f.rejected_but_applied += 1,
            Outcome::Unknown if in_log => f.unknown_applied += 1,
            _ => {}
        }
    }

    // Losses are never silent.
    let mut rejected_fences: Vec<(u64, &str)> = writes
        .iter()
        .filter(|(_, (_, _, outcome))| *outcome == Outcome::Rejected)
        .map(|(value, (_, fence, _))| (*fence, *value))
        .collect();
    rejected_fences.sort_unstable();
    rejected_fences.dedup_by_key(|(fence, _)| *fence);
    for (fence, value) in rejected_fences {
        if let Some((hold, Release::Released)) = ends.get(&fence) {
            v.push(format!(
                "lost lock reported as held: {value} was rejected as stale (a newer holder \
                 existed), yet that acquisition ended with hold {hold:?} and release() == Ok(true)"
            ));
        }
    }
    for token in &history.frozen_tokens {
        match acquisitions.iter().find(|(_, (_, t))| t == token) {
            Some((fence, _)) => frozen.push(*fence),
            None => v.push(format!(
                "the frozen token {token} was never recorded as acquired"
            )),
        }
    }
    f.frozen_acquisitions = frozen.len();
    f.frozen_rejected = frozen
        .iter()
        .filter(|fence| {
            writes
                .values()
                .any(|(_, f, outcome)| f == *fence && *outcome == Outcome::Rejected)
        })
        .count();
    for fence in frozen {
        if let Some((hold, Release::Released)) = ends.get(&fence) {
            v.push(format!(
                "lost lock reported as held: the holder with fence {fence} was frozen past its \
                 TTL, yet it ended with hold {hold:?} and release() == Ok(true)"
            ));
        }
    }

    // The end state is the last write of the last server lifetime.
    let last_lifetime = f.lifetimes.saturating_sub(1);
    let expected = last
        .filter(|(epoch, _, _)| *epoch == last_lifetime)
        .map(|(_, fence, value)| (value.to_owned(), fence.to_string()));
    // The mark is `<fence>:<token of the writer>`; the value names the writer already.
    let final_fence = history.final_mark.as_deref().map(|mark| {
        mark.split_once(':')
            .map_or(mark, |(fence, _)| fence)
            .to_owned()
    });
    let actual = history.final_value.clone().zip(final_fence);
    if actual != expected {
        v.push(format!(
            "the final resource and mark {actual:?} are not the last write of the history \
             {expected:?}"
        ));
    }
    Report {
        figures: f,
        violations: v,
    }
}

// ---------------------------------------------------------------------------------------------------
// Small helpers

fn lock_ignoring_poison<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The chaos cases run one at a time: each one loads both cores.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    lock_ignoring_poison(&SERIAL)
}
