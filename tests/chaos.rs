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
//!
//! # Layout
//!
//! # The semaphore
//!
//! The same faults over a fenced `Semaphore` (issue 11), in [`semaphore`]: workers take one or two
//! permits, hold them and release them; the `MONITOR` records every command on the semaphore's key and
//! every fence, and [`semaphore_checker`] replays them: never more than the limit held, fences strictly
//! increasing, every acquisition in the server's history, no frozen holder told its permits were still
//! its own. In the multi-process case a permit holder is stopped with SIGSTOP past its TTL, and its
//! permits must come back and be granted again while it is stopped.
//!
//! # The read-write lock
//!
//! The same faults over a fenced `RwLock` (issue 11), in [`rwlock`]: workers take read holds (two
//! times in three) or the write hold, hold them, sometimes downgrade a write hold, and release; the
//! `MONITOR` records every command on the lock's key and every fence, and [`rwlock_checker`] replays
//! them: never a reader beside a writer, one writer at most, fences strictly increasing, every
//! acquisition and downgrade in the server's history, no frozen holder told its hold was still its
//! own. In the multi-process case a reader is stopped with SIGSTOP past its TTL, and its read hold
//! must expire, and a writer get in, while it is stopped.
//!
//! # The fair lock
//!
//! The mutex workload on a fenced fair lock (`RedisLock::fair(true)`), in [`fair`], under the same
//! faults in worker processes: the mutex checker judges the fenced writes, and [`fair_checker`]
//! replays the lock's key, queue and heartbeats from the `MONITOR`: grants in ticket order, fences
//! strictly increasing, every acquisition a grant of the server's. A *waiter* is stopped with SIGSTOP
//! past its TTL: its place must lapse, and a waiter behind it be granted, while it is stopped.
//!
//! This file holds the cases (the `#[test]` functions) and their settings; the machinery is in
//! `tests/chaos/`: [`cases`] runs a case, [`workload`] is what the workers do, [`events`] what they
//! record, [`monitor`] the server's history, [`faults`] the fault injection, [`processes`] the worker
//! processes, and [`checker`] the check.

mod support;

#[path = "chaos/cases.rs"]
mod cases;
#[path = "chaos/checker.rs"]
mod checker;
#[path = "chaos/events.rs"]
mod events;
#[path = "chaos/fair.rs"]
mod fair;
#[path = "chaos/fair_checker.rs"]
mod fair_checker;
#[path = "chaos/faults.rs"]
mod faults;
#[path = "chaos/monitor.rs"]
mod monitor;
#[path = "chaos/processes.rs"]
mod processes;
#[path = "chaos/rwlock.rs"]
mod rwlock;
#[path = "chaos/rwlock_checker.rs"]
mod rwlock_checker;
#[path = "chaos/semaphore.rs"]
mod semaphore;
#[path = "chaos/semaphore_checker.rs"]
mod semaphore_checker;
#[path = "chaos/workload.rs"]
mod workload;

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cases::{run_process_case, run_task_case};
use checker::{History, check};
use events::Event;
use monitor::{Entry, parse_monitor_line};
use support::inputs::Input;
use workload::{Recorder, WorkerPlan, backend, lock, run_worker};

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
/// The input the worker processes connect with.
const PROCESS_INPUT: Input = Input::DeadpoolPool;

// ---------------------------------------------------------------------------------------------------
// The cases

#[test]
fn fenced_writes_stay_ordered_under_chaos_fred_client() {
    let _one_at_a_time = serial();
    run_task_case(Input::FredClient);
}

#[test]
fn fenced_writes_stay_ordered_under_chaos_deadpool_pool() {
    let _one_at_a_time = serial();
    run_task_case(Input::DeadpoolPool);
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
        let backend = backend(PROCESS_INPUT, &var(URL_ENV)).await;
        run_worker(lock(backend, &var(KEY_ENV)), plan, record).await;
    });
}

#[test]
fn semaphore_stays_within_its_limit_under_chaos_deadpool_pool() {
    let _one_at_a_time = serial();
    semaphore::run_semaphore_task_case(Input::DeadpoolPool);
}

#[test]
fn semaphore_permits_of_a_stopped_process_come_back() {
    let _one_at_a_time = serial();
    semaphore::run_semaphore_process_case();
}

/// The worker of the multi-process semaphore case: does nothing unless started as one by that case.
#[test]
fn chaos_semaphore_worker_process() {
    if std::env::var_os(semaphore::SEMAPHORE_WORKER_ENV).is_none() {
        return;
    }
    semaphore::semaphore_worker_process();
}

#[test]
fn rwlock_keeps_readers_from_writers_under_chaos_fred_client() {
    let _one_at_a_time = serial();
    rwlock::run_rwlock_task_case(Input::FredClient);
}

#[test]
fn rwlock_read_hold_of_a_stopped_process_expires() {
    let _one_at_a_time = serial();
    rwlock::run_rwlock_process_case();
}

/// The worker of the multi-process read-write lock case: does nothing unless started as one by that
/// case.
#[test]
fn chaos_rwlock_worker_process() {
    if std::env::var_os(rwlock::RWLOCK_WORKER_ENV).is_none() {
        return;
    }
    rwlock::rwlock_worker_process();
}

/// The read-write lock's checker catches what it must: a clean synthetic history, then one
/// violation at a time.
#[test]
fn rwlock_checker_catches_violations() {
    use rwlock_checker::{RwEvent, RwHistory, check};
    let watched = |args: &[&str]| Entry::Watched {
        epoch: 0,
        args: args.iter().map(|a| (*a).to_owned()).collect(),
    };
    let clean_log = || {
        vec![
            Entry::Attached { epoch: 0 },
            Entry::CounterSeed { epoch: 0, seed: 10 },
            watched(&["zremrangebyscore", "k", "1", "1000"]),
            watched(&["zadd", "k", "GT", "2000", "read:a"]),
            Entry::CounterSeed { epoch: 0, seed: 11 },
            watched(&["zadd", "k", "GT", "2000", "read:b"]),
            watched(&["zrem", "k", "read:a"]),
            watched(&["zrem", "k", "read:b"]),
            Entry::CounterSeed { epoch: 0, seed: 12 },
            watched(&["zremrangebyscore", "k", "1", "1100"]),
            watched(&["zadd", "k", "GT", "2100", "write:c"]),
            watched(&["zrem", "k", "write:c"]),
            watched(&["zadd", "k", "2100", "read:c"]),
        ]
    };
    let acq = |worker: &str, kind: &str, fence: u64, token: &str| RwEvent::Acquired {
        worker: worker.into(),
        kind: kind.into(),
        fence,
        token: token.into(),
    };
    let end = |worker: &str, token: &str, release: &str| RwEvent::End {
        worker: worker.into(),
        token: token.into(),
        hold: "done".into(),
        release: release.into(),
    };
    let done = |worker: &str| RwEvent::Done {
        worker: worker.into(),
    };
    let clean_events = || {
        vec![
            acq("w0", "read", 10, "a"),
            acq("w1", "read", 11, "b"),
            end("w0", "a", "released"),
            end("w1", "b", "released"),
            acq("w0", "write", 12, "c"),
            RwEvent::Downgraded {
                worker: "w0".into(),
                token: "c".into(),
                outcome: "ok".into(),
            },
            end("w0", "c", "released"),
            done("w0"),
            done("w1"),
        ]
    };
    let history = |log: Vec<Entry>, events: Vec<RwEvent>| RwHistory {
        events,
        log,
        frozen_tokens: Vec::new(),
    };
    let report = check(&history(clean_log(), clean_events()));
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert_eq!(report.figures.shared, 1);
    assert_eq!(report.figures.downgrades, 1);

    let violates = |log: Vec<Entry>, events: Vec<RwEvent>, frozen: &[&str], what: &str| {
        let mut h = history(log, events);
        h.frozen_tokens = frozen.iter().map(|t| (*t).to_owned()).collect();
        let found = check(&h).violations;
        assert!(
            found.iter().any(|v| v.contains(what)),
            "expected a violation containing {what:?}, found {found:?}"
        );
    };
    // A writer added beside a live reader.
    let mut log = clean_log();
    log.insert(5, watched(&["zadd", "k", "GT", "2000", "write:x"]));
    violates(log, clean_events(), &[], "a reader beside a writer");
    // Two writers.
    let mut log = clean_log();
    log.push(watched(&["zrem", "k", "read:c"]));
    log.push(watched(&["zadd", "k", "GT", "2200", "write:d"]));
    log.push(watched(&["zadd", "k", "GT", "2200", "write:e"]));
    violates(log, clean_events(), &[], "two writers");
    // A fence counter that goes back.
    let mut log = clean_log();
    log.push(Entry::CounterSeed { epoch: 0, seed: 11 });
    violates(log, clean_events(), &[], "fences must strictly increase");
    // An acquisition the server never granted.
    let mut events = clean_events();
    events.insert(0, acq("w2", "write", 12, "z"));
    events.push(end("w2", "z", "released"));
    events.push(done("w2"));
    violates(clean_log(), events, &[], "not in the server's history");
    // A frozen holder told its hold was still its own.
    violates(clean_log(), clean_events(), &["a"], "frozen past its TTL");
    // A downgrade the server never applied.
    let mut log = clean_log();
    log.pop();
    violates(log, clean_events(), &[], "never held read:c");
    // A hold that never ended.
    let mut events = clean_events();
    events.retain(|e| !matches!(e, RwEvent::End { token, .. } if token == "b"));
    violates(clean_log(), events, &[], "never ended");
}

#[test]
fn fair_lock_grants_in_ticket_order_under_chaos_with_stopped_waiters() {
    let _one_at_a_time = serial();
    fair::run_fair_process_case();
}

/// The worker of the fair-lock case: does nothing unless started as one by that case.
#[test]
fn chaos_fair_worker_process() {
    if std::env::var_os(fair::FAIR_WORKER_ENV).is_none() {
        return;
    }
    fair::fair_worker_process();
}

/// The fair lock's checker catches what it must: a synthetic history, then one violation at a time.
#[test]
fn fair_checker_catches_violations() {
    use fair_checker::{FairHistory, check};
    let watched = |args: &[&str]| Entry::Watched {
        epoch: 0,
        args: args.iter().map(|a| (*a).to_owned()).collect(),
    };
    let fence = |seed| Entry::CounterSeed { epoch: 0, seed };
    // ta holds; tb then tc join; ta releases; tb (the head) is granted, then tc.
    let log = vec![
        Entry::Attached { epoch: 0 },
        watched(&["zrangebyscore", "b", "-inf", "1000"]),
        fence(100),
        watched(&["set", "k", "ta", "PX", "500"]),
        watched(&["zrangebyscore", "b", "-inf", "1010"]),
        watched(&["zadd", "q", "1010000", "tb"]),
        watched(&["zadd", "b", "1510", "tb"]),
        watched(&["zrangebyscore", "b", "-inf", "1020"]),
        watched(&["zadd", "q", "1020000", "tc"]),
        watched(&["zadd", "b", "1520", "tc"]),
        watched(&["del", "k"]),
        watched(&["zrangebyscore", "b", "-inf", "1100"]),
        watched(&["zrem", "q", "tb"]),
        watched(&["zrem", "b", "tb"]),
        fence(101),
        watched(&["set", "k", "tb", "PX", "500"]),
        watched(&["del", "k"]),
        watched(&["zrangebyscore", "b", "-inf", "1200"]),
        watched(&["zrem", "q", "tc"]),
        watched(&["zrem", "b", "tc"]),
        fence(102),
        watched(&["set", "k", "tc", "PX", "500"]),
    ];
    let events = "acq a 100 ta
acq b 101 tb
acq c 102 tc";
    let history = |log: Vec<Entry>, events: &str| FairHistory {
        log,
        events: events.lines().map(Event::parse).collect(),
        key: "k".into(),
        queue: "q".into(),
        beats: "b".into(),
    };
    let (figures, violations) = check(&history(log.clone(), events));
    assert!(violations.is_empty(), "{violations:#?}");
    assert_eq!(
        (
            figures.grants,
            figures.grants_past_queue,
            figures.joins,
            figures.fences
        ),
        (3, 1, 2, 3)
    );
    let expect = |history: FairHistory, what: &str| {
        let (_, found) = check(&history);
        assert!(
            found.iter().any(|v| v.contains(what)),
            "expected a violation mentioning {what:?}, got {found:#?}"
        );
    };
    let with_log = |edit: &dyn Fn(&mut Vec<Entry>)| {
        let mut log = log.clone();
        edit(&mut log);
        history(log, events)
    };
    // tc taken out of turn while tb, ahead of it, is live.
    expect(
        with_log(&|log| {
            log[12] = watched(&["zrem", "q", "tc"]);
            log[13] = watched(&["zrem", "b", "tc"]);
            log[15] = watched(&["set", "k", "tc", "PX", "500"]);
        }),
        "waited ahead",
    );
    // A token not queued (try_acquire) granted while tb and tc wait.
    expect(
        with_log(&|log| log[15] = watched(&["set", "k", "td", "PX", "500"])),
        "waited ahead",
    );
    // tb's place lapsed (heartbeat 1510 <= 1515) and tc's did not: tc may go first, and tb's removal
    // counts as a lapse.
    let (lapsed, found) = check(&with_log(&|log| {
        log[11] = watched(&["zrangebyscore", "b", "-inf", "1515"]);
        log[12] = watched(&["zrem", "q", "tb", "tc"]);
        log[13] = watched(&["zrem", "b", "tb", "tc"]);
        log[15] = watched(&["set", "k", "tc", "PX", "500"]);
    }));
    assert!(
        found.iter().all(|v| !v.contains("waited ahead")),
        "{found:#?}"
    );
    assert_eq!(lapsed.lapsed, 1);
    // The fence counter repeating; an acquisition the server never granted; a fence never taken.
    expect(with_log(&|log| log[14] = fence(100)), "strictly increase");
    expect(
        history(log.clone(), &events.replace("acq c 102 tc", "acq c 102 tx")),
        "not in the server's history",
    );
    expect(
        history(log.clone(), &events.replace("acq c 102 tc", "acq c 103 tc")),
        "never took",
    );
}

/// The semaphore's checker catches what it must: a synthetic history, then one violation at a time.
#[test]
fn semaphore_checker_catches_violations() {
    use semaphore_checker::{SemEvent, SemHistory, check};
    const EVENTS: &str = "\
sacq a 100 ta 1
sacq b 101 tb 1
send a ta done released
sacq c 102 tc 2
sfrozen b tb
send b tb lost not-ours
send c tc done released
sfail a timeout
sdone a
sdone b
sdone c";
    let watched = |args: &[&str]| Entry::Watched {
        epoch: 0,
        args: args.iter().map(|a| (*a).to_owned()).collect(),
    };
    let fence = |seed| Entry::CounterSeed { epoch: 0, seed };
    let log = vec![
        Entry::Attached { epoch: 0 },
        watched(&["zremrangebyscore", "k", "1", "1000"]),
        fence(100),
        watched(&["zadd", "k", "0", "limit:2"]),
        watched(&["zadd", "k", "GT", "1500", "1:ta"]),
        watched(&["zremrangebyscore", "k", "1", "1010"]),
        fence(101),
        watched(&["zadd", "k", "GT", "1510", "1:tb"]),
        // A renewal moves a holder: not a new one.
        watched(&["zadd", "k", "1600", "1:ta"]),
        watched(&["zrem", "k", "1:ta"]),
        // tb expired (1510 <= 1700) before tc's grant.
        watched(&["zremrangebyscore", "k", "1", "1700"]),
        fence(102),
        watched(&["zadd", "k", "GT", "2200", "2:tc"]),
    ];
    let history = |events: &str, log: Vec<Entry>| SemHistory {
        events: events.lines().map(SemEvent::parse).collect(),
        log,
        limit: 2,
        frozen_tokens: Vec::new(),
    };
    let good = history(EVENTS, log.clone());
    for event in &good.events {
        assert_eq!(&SemEvent::parse(&event.line()), event);
    }
    let report = check(&good);
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    let f = &report.figures;
    assert_eq!((f.acquisitions, f.grants_seen, f.full), (3, 3, 2));
    assert_eq!((f.losses, f.timeouts, f.lifetimes), (1, 1, 1));

    let expect = |history: SemHistory, what: &str| {
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
    // tb had not expired when tc took two permits: three held under a limit of two.
    expect(
        with_log(&|log| log[10] = watched(&["zremrangebyscore", "k", "1", "1505"])),
        "permits held (limit 2)",
    );
    // The fence counter repeating, or going back after a restart.
    expect(with_log(&|log| log[11] = fence(101)), "strictly increase");
    // A grant the server never made; a fence the counter never took; one fence twice.
    expect(with_log(&|log| drop(log.remove(12))), "not in the server");
    expect(with_events("sacq c 102", "sacq c 103"), "never took");
    expect(with_events("sacq b 101", "sacq b 100"), "issued twice");
    // A frozen holder told its permits were still its own.
    expect(
        with_events("send b tb lost not-ours", "send b tb done released"),
        "frozen past its TTL",
    );
    let mut stopped = history(EVENTS, log.clone());
    stopped.frozen_tokens = vec!["ta".into()];
    expect(stopped, "frozen past its TTL");
    // A worker that did not finish; an acquisition that never ended.
    expect(with_events("\nsdone c", ""), "did not finish");
    expect(with_events("send c tc done released\n", ""), "never ended");
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
// Small helpers

fn lock_ignoring_poison<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The chaos cases run one at a time: each one loads both cores.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    lock_ignoring_poison(&SERIAL)
}
