//! The case runners: a server behind a fault proxy, a `MONITOR` on it, workers (tasks or processes),
//! faults until the end of the run, then the check.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::checker::{History, check};
use crate::events::Event;
use crate::faults::{FaultTally, Freezer, get, inject};
use crate::monitor::Monitor;
use crate::processes::{Children, Launch, TempDir};
use crate::support::RedisServer;
use crate::support::inputs::Input;
use crate::support::proxy::FaultProxy;
use crate::workload::{Names, Recorder, WorkerPlan, backend, lock, run_worker};
use crate::{
    PATIENCE, PROCESS_INPUT, PROCESS_WORKERS, RUN_FOR, TASK_WORKERS, WAIT, WORKER_ENV, WORKER_TEST,
    lock_ignoring_poison,
};

/// Injects faults through `proxy` and `server` (stopping a worker process as `freezer` picks it from
/// `children`) until `run_for` has passed, then waits for every worker process to stop by itself.
pub(crate) async fn faults_then_wait(
    server: &Arc<Mutex<RedisServer>>,
    proxy: &FaultProxy,
    monitor: &Arc<Monitor>,
    names: &Names,
    mut children: Children,
    freezer: fn(Vec<(u32, std::path::PathBuf)>) -> Freezer,
    run_for: std::time::Duration,
) -> (FaultTally, Children) {
    let deadline = Instant::now() + run_for;
    let freezer = freezer(children.stoppable());
    let faults = inject(server, proxy, monitor, freezer, deadline, names).await;
    let children = tokio::task::spawn_blocking(move || {
        children.wait_all(run_for + WAIT + PATIENCE);
        children
    })
    .await
    .expect("waiting for the worker processes");
    (faults, children)
}

/// Workers are threads of this process, each with its own runtime and client, all through one fault
/// proxy.
pub(crate) fn run_task_case(input: Input) {
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
        // Each worker runs on a thread with a runtime of its own (its client's connections and its
        // backend's renewal scheduler included), a process in miniature: a freeze blocks that thread,
        // and so stops the holder's renewals as a GC pause stops a process's.
        let mut workers = Vec::new();
        for i in 0..TASK_WORKERS {
            let (url, key) = (proxy.url(), names.key.clone());
            let plan = WorkerPlan {
                worker: format!("w{i}"),
                resource: names.resource.clone(),
                deadline,
                freeze: Some(freeze.clone()),
            };
            let record = record.clone();
            let (done, finished) = tokio::sync::oneshot::channel::<()>();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a worker's runtime");
                runtime.block_on(async {
                    let lock = lock(backend(input, &url).await, &key);
                    run_worker(lock, plan, record).await;
                });
                // Dropped unsent if the worker panicked: the wait below then fails.
                let _ = done.send(());
            });
            workers.push(finished);
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
            // fred re-sends commands after a reconnect.
            resends_possible: matches!(input, Input::FredClient | Input::FredPool),
        };
        conclude(
            &format!("{input}, {TASK_WORKERS} tasks"),
            &history,
            &faults,
            problems,
            started,
        );
    });
}

/// Workers are separate processes (this test binary, running
/// [`chaos_worker_process`](crate::chaos_worker_process)) over [`PROCESS_INPUT`], through one fault
/// proxy in this process; one at a time is stopped with SIGSTOP while it holds the lock.
pub(crate) fn run_process_case() {
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
        let launch = Launch {
            test: WORKER_TEST,
            role_env: WORKER_ENV,
            url: &proxy.url(),
            key: &names.key,
            resource: Some(&names.resource),
            run_for: RUN_FOR,
        };
        let children = Children::spawn(temp.path(), PROCESS_WORKERS, &launch);
        let (faults, children) = faults_then_wait(
            &server,
            &proxy,
            &monitor,
            &names,
            children,
            Freezer::Processes,
            RUN_FOR,
        )
        .await;

        let (log, problems) = monitor.finish(&server);
        let events: Vec<_> = children
            .event_lines()
            .iter()
            .map(|line| Event::parse(line))
            .collect();
        let history = History {
            events,
            log,
            final_value: get(&server, &names.resource),
            final_mark: get(&server, &names.mark),
            frozen_tokens: faults.frozen_tokens.clone(),
            resends_possible: false,
        };
        conclude(
            &format!("{PROCESS_INPUT}, {PROCESS_WORKERS} processes"),
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
