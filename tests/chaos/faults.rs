//! Fault injection: latency spikes and stalls through the proxy, connections killed on the server and
//! cut by the proxy, server restarts that lose all data, and holders frozen past the TTL.

use std::fmt;
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::monitor::Monitor;
use crate::support::RedisServer;
use crate::support::proxy::FaultProxy;
use crate::workload::{Names, Rng};
use crate::{PROCESS_STOP, STALL, STALL_LATENCY, TASK_FREEZE, lock_ignoring_poison};

/// How a holder is frozen past its TTL.
pub(crate) enum Freezer {
    /// In-process workers: the first holder to see the flag set blocks its thread for
    /// [`TASK_FREEZE`].
    Tasks(Arc<AtomicBool>),
    /// Worker processes (pid, output file): the holder is found through the lock key's token and
    /// stopped with SIGSTOP for [`PROCESS_STOP`].
    Processes(Vec<(u32, PathBuf)>),
    /// Worker processes holding a semaphore's permits: one holder is stopped with SIGSTOP for
    /// [`PROCESS_STOP`], and its permits must come back (and be granted again) while it is stopped.
    PermitHolders(Vec<(u32, PathBuf)>),
    /// Worker processes holding a read-write lock's read holds: one reader is stopped with SIGSTOP
    /// for [`PROCESS_STOP`], and its read hold must expire (and a writer get in) while it is stopped.
    /// Tallied as `PermitHolders`.
    ReadHolders(Vec<(u32, PathBuf)>),
    /// Worker processes waiting for a fair lock: one waiter (not the holder) is stopped with SIGSTOP
    /// for [`PROCESS_STOP`], and its place must lapse (and a waiter behind it be granted) while it is
    /// stopped.
    FairWaiters(Vec<(u32, PathBuf)>),
}

#[derive(Debug, Default)]
pub(crate) struct FaultTally {
    pub(crate) latency_spikes: usize,
    pub(crate) stalls: usize,
    pub(crate) client_kills: usize,
    /// `CLIENT KILL` rounds that killed at least one connection.
    pub(crate) client_kills_effective: usize,
    pub(crate) clients_killed: usize,
    pub(crate) cuts: usize,
    /// Proxy cuts that closed at least one connection.
    pub(crate) cuts_effective: usize,
    pub(crate) connections_cut: usize,
    pub(crate) restarts: usize,
    pub(crate) freezes: usize,
    pub(crate) freezes_missed: usize,
    /// Tokens of the acquisitions frozen in worker processes.
    pub(crate) frozen_tokens: Vec<String>,
    /// Stopped permit holders whose permits expired while they were stopped, and those after which
    /// another acquisition was granted before they ran again.
    pub(crate) permits_came_back: usize,
    pub(crate) permits_granted_again: usize,
    /// Stopped fair waiters whose place lapsed while they were stopped, and those after which a
    /// waiter behind them was granted before they ran again.
    pub(crate) places_dropped: usize,
    pub(crate) granted_past: usize,
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
pub(crate) async fn inject(
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
                Freezer::PermitHolders(children) => {
                    let children = children.clone();
                    let key = names.key.clone();
                    let stopped = blocking(server, move |server| {
                        crate::semaphore::stop_a_permit_holder(server, &key, &children)
                    })
                    .await;
                    tally.freezes_missed += stopped.missed;
                    if let Some(token) = stopped.token {
                        tally.freezes += 1;
                        tally.frozen_tokens.push(token);
                        tally.permits_came_back += usize::from(stopped.came_back);
                        tally.permits_granted_again += usize::from(stopped.granted_again);
                    }
                }
                Freezer::ReadHolders(children) => {
                    let children = children.clone();
                    let key = names.key.clone();
                    let stopped = blocking(server, move |server| {
                        crate::rwlock::stop_a_read_holder(server, &key, &children)
                    })
                    .await;
                    tally.freezes_missed += stopped.missed;
                    if let Some(token) = stopped.token {
                        tally.freezes += 1;
                        tally.frozen_tokens.push(token);
                        tally.permits_came_back += usize::from(stopped.came_back);
                        tally.permits_granted_again += usize::from(stopped.granted_again);
                    }
                }
                Freezer::FairWaiters(children) => {
                    let children = children.clone();
                    let key = names.key.clone();
                    let stopped = blocking(server, move |server| {
                        crate::fair::stop_a_waiter(server, &key, &children)
                    })
                    .await;
                    tally.freezes_missed += stopped.missed;
                    if stopped.token.is_some() {
                        tally.freezes += 1;
                        tally.places_dropped += usize::from(stopped.place_dropped);
                        tally.granted_past += usize::from(stopped.granted_past);
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

pub(crate) fn signal(pid: u32, signal: &str) {
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

pub(crate) fn get(server: &Mutex<RedisServer>, key: &str) -> Option<String> {
    match lock_ignoring_poison(server).command(&["GET", key]) {
        Ok(nil) if nil == "(nil)" => None,
        Ok(value) => Some(value),
        Err(e) => panic!("GET {key}: {e}"),
    }
}
