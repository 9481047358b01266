//! The semaphore cases' events and their check against the server's own history.
//!
//! The `MONITOR` records, in the server's order, every command on the semaphore's key (the scripts'
//! `zremrangebyscore key 1 <now>`, `zadd`, `zrem`, `del`) and every value the fence counter took.
//! Replaying the key's commands on a model sorted set gives its holders after every command; the
//! acquisition script drops expired holders (`zremrangebyscore ... <now>`, its own clock) just before it
//! adds a new one, so the model's holders when a new one is added are exactly the live ones the script
//! counted. Then:
//!
//! 1. whenever a new holder is added, the permits held (its own included) are at most the limit;
//! 2. the fence counter strictly increases over the whole run, across restarts that lost the data;
//! 3. every acquisition a worker saw is in the server's history, with a fence the counter took, each
//!    fence handed out once, and each worker's fences increase;
//! 4. a holder frozen past its TTL (a blocked task, or a process stopped with SIGSTOP) never ends with
//!    `release() == Ok(true)`: its loss was reported;
//! 5. every worker finished, and every acquisition ended.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use crate::monitor::Entry;

/// What a semaphore worker records, one line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SemEvent {
    Failed {
        worker: String,
        kind: String,
    },
    Acquired {
        worker: String,
        fence: u64,
        token: String,
        permits: u32,
    },
    Frozen {
        worker: String,
        token: String,
    },
    /// How an acquisition ended: `hold` (`done`, `lost`, `error`) and `release` (`released`,
    /// `not-ours`, `failed`).
    End {
        worker: String,
        token: String,
        hold: String,
        release: String,
    },
    Done {
        worker: String,
    },
}

impl SemEvent {
    pub(crate) fn line(&self) -> String {
        match self {
            SemEvent::Failed { worker, kind } => format!("sfail {worker} {kind}"),
            SemEvent::Acquired {
                worker,
                fence,
                token,
                permits,
            } => format!("sacq {worker} {fence} {token} {permits}"),
            SemEvent::Frozen { worker, token } => format!("sfrozen {worker} {token}"),
            SemEvent::End {
                worker,
                token,
                hold,
                release,
            } => format!("send {worker} {token} {hold} {release}"),
            SemEvent::Done { worker } => format!("sdone {worker}"),
        }
    }

    pub(crate) fn parse(line: &str) -> SemEvent {
        let words: Vec<&str> = line.split(' ').collect();
        let s = |i: usize| -> String {
            (*words
                .get(i)
                .unwrap_or_else(|| panic!("malformed event {line:?}")))
            .to_owned()
        };
        match words[0] {
            "sfail" => SemEvent::Failed {
                worker: s(1),
                kind: s(2),
            },
            "sacq" => SemEvent::Acquired {
                worker: s(1),
                fence: s(2).parse().expect("fence"),
                token: s(3),
                permits: s(4).parse().expect("permits"),
            },
            "sfrozen" => SemEvent::Frozen {
                worker: s(1),
                token: s(2),
            },
            "send" => SemEvent::End {
                worker: s(1),
                token: s(2),
                hold: s(3),
                release: s(4),
            },
            "sdone" => SemEvent::Done { worker: s(1) },
            _ => panic!("unknown event {line:?}"),
        }
    }
}

/// Everything the check needs.
pub(crate) struct SemHistory {
    pub(crate) events: Vec<SemEvent>,
    pub(crate) log: Vec<Entry>,
    pub(crate) limit: u32,
    /// Acquisitions frozen in stopped worker processes.
    pub(crate) frozen_tokens: Vec<String>,
}

/// What a run did.
#[derive(Debug, Default)]
pub(crate) struct Figures {
    pub(crate) acquisitions: usize,
    /// New holders in the server's history.
    pub(crate) grants_seen: usize,
    /// Grants after which every permit was held.
    pub(crate) full: usize,
    /// Acquisitions that ended with `hold` lost or `release` not ours.
    pub(crate) losses: usize,
    pub(crate) timeouts: usize,
    pub(crate) lifetimes: usize,
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "  {} acquisitions ({} acquire timeouts), {} grants in the server's history over {} server \
             lifetimes, {} of them filling the semaphore, {} losses reported",
            self.acquisitions,
            self.timeouts,
            self.grants_seen,
            self.lifetimes,
            self.full,
            self.losses
        )
    }
}

pub(crate) struct Report {
    pub(crate) violations: Vec<String>,
    pub(crate) figures: Figures,
}

/// The permits of a holder's member `"<permits>:<token>"`.
fn permits_of(member: &str) -> u64 {
    member
        .split_once(':')
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(0)
}

fn number(text: &str) -> Option<f64> {
    text.parse().ok()
}

pub(crate) fn check(history: &SemHistory) -> Report {
    let mut violations = Vec::new();
    let mut figures = Figures::default();
    let limit = u64::from(history.limit);

    // 1. Replay the key's commands; 2. the counter's values.
    let mut holders: BTreeMap<String, f64> = BTreeMap::new();
    let mut granted: HashSet<String> = HashSet::new();
    let mut fences: Vec<u64> = Vec::new();
    for entry in &history.log {
        match entry {
            Entry::Attached { .. } => {
                // A new server lifetime starts empty (restarts lose every key).
                holders.clear();
                figures.lifetimes += 1;
            }
            Entry::CounterSeed { seed, .. } => {
                if let Some(last) = fences.last()
                    && *seed <= *last
                {
                    violations.push(format!(
                        "the fence counter went from {last} to {seed}: fences must strictly increase"
                    ));
                }
                fences.push(*seed);
            }
            Entry::Watched { epoch, args } => {
                let command = args[0].to_ascii_lowercase();
                match (command.as_str(), &args[2..]) {
                    ("zremrangebyscore", [_, now]) => {
                        let now = number(now).unwrap_or(f64::MAX);
                        holders.retain(|_, score| *score > now);
                    }
                    ("zadd", [.., score, member]) if !member.starts_with("limit:") => {
                        let score = number(score).unwrap_or(0.0);
                        if holders.insert(member.clone(), score).is_none() {
                            figures.grants_seen += 1;
                            granted.insert(member.clone());
                            let held: u64 = holders.keys().map(|m| permits_of(m)).sum();
                            if held > limit {
                                violations.push(format!(
                                    "server lifetime {epoch}: {held} permits held (limit {limit}) \
                                     once {member} was added: {:?}",
                                    holders.keys().collect::<Vec<_>>()
                                ));
                            } else if held == limit {
                                figures.full += 1;
                            }
                        }
                    }
                    ("zrem", [member]) => {
                        holders.remove(member);
                    }
                    ("del", []) => holders.clear(),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    let issued: HashSet<u64> = fences.iter().copied().collect();

    // 3-5. The workers' view.
    let mut by_fence: HashMap<u64, &str> = HashMap::new();
    let mut last_fence: HashMap<&str, u64> = HashMap::new();
    let mut open: HashMap<&str, &str> = HashMap::new();
    let mut frozen: HashSet<&str> = history.frozen_tokens.iter().map(String::as_str).collect();
    let mut workers: HashSet<&str> = HashSet::new();
    let mut done: HashSet<&str> = HashSet::new();
    for event in &history.events {
        match event {
            SemEvent::Failed { worker, kind } => {
                workers.insert(worker);
                figures.timeouts += usize::from(kind == "timeout");
            }
            SemEvent::Acquired {
                worker,
                fence,
                token,
                permits,
            } => {
                workers.insert(worker);
                figures.acquisitions += 1;
                let member = format!("{permits}:{token}");
                if !granted.contains(&member) {
                    violations.push(format!(
                        "{worker} acquired {member}, which is not in the server's history"
                    ));
                }
                if !issued.contains(fence) {
                    violations.push(format!(
                        "{worker} got fence {fence}, which the counter never took"
                    ));
                }
                if let Some(other) = by_fence.insert(*fence, token) {
                    violations.push(format!(
                        "fence {fence} issued twice: to {other} and to {token}"
                    ));
                }
                if let Some(last) = last_fence.insert(worker, *fence)
                    && last >= *fence
                {
                    violations.push(format!(
                        "{worker} got fence {fence} after an earlier fence {last}"
                    ));
                }
                open.insert(token, worker);
            }
            SemEvent::Frozen { token, .. } => {
                frozen.insert(token);
            }
            SemEvent::End {
                worker,
                token,
                hold,
                release,
            } => {
                if open.remove(token.as_str()).is_none() {
                    violations.push(format!("{worker} ended {token}, which it never acquired"));
                }
                if hold == "lost" || release == "not-ours" {
                    figures.losses += 1;
                }
                if hold == "error" {
                    violations.push(format!(
                        "{worker}: hold of {token} failed with an error other than LockError::Lost"
                    ));
                }
                if frozen.contains(token.as_str()) && release == "released" {
                    violations.push(format!(
                        "{worker}: {token} was frozen past its TTL, yet its release said the \
                         permits were still its own"
                    ));
                }
            }
            SemEvent::Done { worker } => {
                done.insert(worker);
            }
        }
    }
    for (token, worker) in open {
        violations.push(format!("{worker}: the acquisition {token} never ended"));
    }
    for worker in workers {
        if !done.contains(worker) {
            violations.push(format!("{worker} did not finish"));
        }
    }
    Report {
        violations,
        figures,
    }
}
