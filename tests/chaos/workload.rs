//! The workers: each acquires the fenced lock, writes a few values to the resource while holding it,
//! releases, and records every step as an [`Event`].

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use lock_core::testing::companion_keys;
use redlease::deadpool::deadpool_redis;
use redlease::fred::fred;
use redlease::{LockBackend, LockError, LockGuard, RedisLock};

use crate::events::{Event, HoldEnd, Outcome, Release};
use crate::support;
use crate::support::inputs::{Input, Options};
use crate::{CALL_BOUND, MAX_HOLD, TASK_FREEZE, TTL, WAIT, lock_ignoring_poison};

/// Key names of one case.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    pub(crate) key: String,
    pub(crate) resource: String,
    /// The lock's fence counter, as lock-core names it.
    pub(crate) counter: String,
    /// The resource's fence mark, as lock-core names it.
    pub(crate) mark: String,
}

impl Names {
    pub(crate) fn new() -> Names {
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

/// How every worker's client is set up: the adapter's bound on each call, and a fred client that
/// reconnects (without a policy it never would) every 20 ms, forever, and gives up on a connection
/// attempt after 500 ms.
fn options() -> Options {
    Options::new()
        .call_bound(CALL_BOUND)
        .fred_reconnect(Duration::from_millis(20))
        .fred_connect_bound(Duration::from_millis(500))
}

/// A worker's backend over a new client of `input`.
pub(crate) async fn backend(input: Input, url: &str) -> Arc<dyn LockBackend> {
    input.connect(url, options()).await
}

pub(crate) fn lock(backend: Arc<dyn LockBackend>, key: &str) -> RedisLock {
    RedisLock::new(backend, key)
        .timeout(TTL)
        .wait_timeout(Some(WAIT))
        .fencing(true)
        .max_hold(MAX_HOLD)
}

pub(crate) type Recorder = Arc<dyn Fn(&Event) + Send + Sync>;

pub(crate) struct WorkerPlan {
    pub(crate) worker: String,
    pub(crate) resource: String,
    /// No acquisition starts after this.
    pub(crate) deadline: Instant,
    /// In-process freezes: the first holder to see it set clears it and blocks its thread.
    pub(crate) freeze: Option<Arc<AtomicBool>>,
}

/// Acquires, writes a few values while holding, releases; again and again until the deadline.
///
/// Each write runs in its own task, so a write already sent when `hold` gives up on a lost lock still
/// completes and is recorded, as a request already on the wire would.
pub(crate) async fn run_worker(lock: RedisLock, plan: WorkerPlan, record: Recorder) {
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
                        // Blocks the worker's thread past the TTL: the thread of its own runtime
                        // (see `run_task_case`), which runs its backend's renewal scheduler too, so
                        // the whole worker freezes, renewals included, as a GC pause would.
                        thread::sleep(TASK_FREEZE);
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
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new() -> Rng {
        Rng(uuid::Uuid::new_v4().as_u64_pair().0 | 1)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }

    pub(crate) fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.below(high - low + 1))
    }
}
