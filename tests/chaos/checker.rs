//! The checker: a finished case's history (the workers' events and the server's own log) against the
//! properties listed in the crate docs, and the figures each case prints.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use crate::events::{Event, HoldEnd, Outcome, Release};
use crate::monitor::Entry;

#[derive(Debug, Clone)]
pub(crate) struct History {
    /// Everything the workers recorded.
    pub(crate) events: Vec<Event>,
    /// What the server executed, in its order.
    pub(crate) log: Vec<Entry>,
    /// `GET resource` and `GET` its fence mark, at the end.
    pub(crate) final_value: Option<String>,
    pub(crate) final_mark: Option<String>,
    /// Tokens of acquisitions frozen past the TTL from outside (stopped processes).
    pub(crate) frozen_tokens: Vec<String>,
    /// Whether the client may re-send a command after a reconnect (fred), so that a write it answered
    /// as rejected may have been applied by an earlier send.
    pub(crate) resends_possible: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Figures {
    pub(crate) acquisitions: usize,
    pub(crate) acquire_timeouts: usize,
    pub(crate) acquire_errors: usize,
    pub(crate) accepted: usize,
    pub(crate) rejected: usize,
    pub(crate) unknown: usize,
    pub(crate) unknown_applied: usize,
    pub(crate) rejected_but_applied: usize,
    pub(crate) applied: usize,
    pub(crate) stale_applied_after_restart: usize,
    pub(crate) lost_in_hold: usize,
    pub(crate) release_not_ours: usize,
    pub(crate) release_failed: usize,
    pub(crate) frozen_acquisitions: usize,
    /// Failures caused by a call that timed out.
    pub(crate) call_timeouts: usize,
    /// Frozen acquisitions that wrote again after the freeze and were rejected.
    pub(crate) frozen_rejected: usize,
    pub(crate) lifetimes: u32,
}

impl Figures {
    pub(crate) fn losses_reported(&self) -> usize {
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

pub(crate) struct Report {
    pub(crate) figures: Figures,
    pub(crate) violations: Vec<String>,
}

/// The fence embedded in a value `{fence}:{worker}:{n}`.
fn fence_of(value: &str) -> Option<u64> {
    value.split(':').next()?.parse().ok()
}

pub(crate) fn check(history: &History) -> Report {
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
            // (Only a semaphore case watches a key.)
            Entry::Echo(_) | Entry::Watched { .. } => {}
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
