//! The read-write lock cases' events and their check against the server's own history.
//!
//! The `MONITOR` records, in the server's order, every command on the lock's key (the scripts'
//! `zremrangebyscore key 1 <now>`, `zadd`, `zrem`, `del`) and every value the fence counter took.
//! Replaying the key's commands on a model sorted set gives its holders after every command; the read
//! and write scripts drop expired holders (`zremrangebyscore ... <now>`, their own clock) just before
//! they add a new one, and a downgrade replaces a live write hold, so the model's holders when one is
//! added are exactly the live ones. Then:
//!
//! 1. whenever a holder is added, a `write:` member is alone: never a reader beside a writer, never
//!    two writers;
//! 2. the fence counter strictly increases over the whole run, across restarts that lost the data;
//! 3. every acquisition a worker saw is in the server's history, with a fence the counter took, each
//!    fence handed out once, and each worker's fences increase;
//! 4. a holder frozen past its TTL (a blocked task, or a process stopped with SIGSTOP) never ends with
//!    `release() == Ok(true)`: its loss was reported;
//! 5. every worker finished, and every acquisition ended.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use crate::monitor::Entry;

/// What a read-write lock worker records, one line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RwEvent {
    /// An acquisition failed: `timeout` or `other`.
    Failed {
        worker: String,
        kind: String,
    },
    /// A hold was granted: `read` or `write`.
    Acquired {
        worker: String,
        kind: String,
        fence: u64,
        token: String,
    },
    /// A write hold was downgraded: `ok`, `lost` or `failed`.
    Downgraded {
        worker: String,
        token: String,
        outcome: String,
    },
    Frozen {
        worker: String,
        token: String,
    },
    /// How a hold ended: `hold` (`done`, `lost`, `error`) and `release` (`released`, `not-ours`,
    /// `failed`, or `none` after a downgrade that did not give a read hold).
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

impl RwEvent {
    pub(crate) fn line(&self) -> String {
        match self {
            RwEvent::Failed { worker, kind } => format!("rfail {worker} {kind}"),
            RwEvent::Acquired {
                worker,
                kind,
                fence,
                token,
            } => format!("racq {worker} {kind} {fence} {token}"),
            RwEvent::Downgraded {
                worker,
                token,
                outcome,
            } => format!("rdown {worker} {token} {outcome}"),
            RwEvent::Frozen { worker, token } => format!("rfrozen {worker} {token}"),
            RwEvent::End {
                worker,
                token,
                hold,
                release,
            } => format!("rend {worker} {token} {hold} {release}"),
            RwEvent::Done { worker } => format!("rdone {worker}"),
        }
    }

    pub(crate) fn parse(line: &str) -> RwEvent {
        let words: Vec<&str> = line.split(' ').collect();
        let s = |i: usize| -> String {
            (*words
                .get(i)
                .unwrap_or_else(|| panic!("malformed event {line:?}")))
            .to_owned()
        };
        match words[0] {
            "rfail" => RwEvent::Failed {
                worker: s(1),
                kind: s(2),
            },
            "racq" => RwEvent::Acquired {
                worker: s(1),
                kind: s(2),
                fence: s(3).parse().expect("fence"),
                token: s(4),
            },
            "rdown" => RwEvent::Downgraded {
                worker: s(1),
                token: s(2),
                outcome: s(3),
            },
            "rfrozen" => RwEvent::Frozen {
                worker: s(1),
                token: s(2),
            },
            "rend" => RwEvent::End {
                worker: s(1),
                token: s(2),
                hold: s(3),
                release: s(4),
            },
            "rdone" => RwEvent::Done { worker: s(1) },
            _ => panic!("unknown event {line:?}"),
        }
    }
}

/// Everything the check needs.
pub(crate) struct RwHistory {
    pub(crate) events: Vec<RwEvent>,
    pub(crate) log: Vec<Entry>,
    /// Holds frozen in stopped worker processes.
    pub(crate) frozen_tokens: Vec<String>,
}

/// What a run did.
#[derive(Debug, Default)]
pub(crate) struct Figures {
    pub(crate) reads: usize,
    pub(crate) writes: usize,
    /// New holders in the server's history, and those that joined another reader.
    pub(crate) grants_seen: usize,
    pub(crate) shared: usize,
    pub(crate) downgrades: usize,
    /// Holds that ended with `hold` lost or `release` not ours.
    pub(crate) losses: usize,
    pub(crate) timeouts: usize,
    pub(crate) lifetimes: usize,
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "  {} read and {} write holds ({} acquire timeouts, {} downgrades), {} grants in the \
             server's history over {} server lifetimes, {} of them beside another reader, {} losses \
             reported",
            self.reads,
            self.writes,
            self.timeouts,
            self.downgrades,
            self.grants_seen,
            self.lifetimes,
            self.shared,
            self.losses
        )
    }
}

pub(crate) struct Report {
    pub(crate) violations: Vec<String>,
    pub(crate) figures: Figures,
}

fn number(text: &str) -> Option<f64> {
    text.parse().ok()
}

pub(crate) fn check(history: &RwHistory) -> Report {
    let mut violations = Vec::new();
    let mut figures = Figures::default();

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
                    ("zadd", [.., score, member]) => {
                        let score = number(score).unwrap_or(0.0);
                        if holders.insert(member.clone(), score).is_some() {
                            continue;
                        }
                        figures.grants_seen += 1;
                        granted.insert(member.clone());
                        let writers = holders.keys().filter(|m| m.starts_with("write:")).count();
                        let all: Vec<&String> = holders.keys().collect();
                        if writers > 1 {
                            violations.push(format!(
                                "server lifetime {epoch}: two writers once {member} was added: {all:?}"
                            ));
                        } else if writers == 1 && holders.len() > 1 {
                            violations.push(format!(
                                "server lifetime {epoch}: a reader beside a writer once {member} was \
                                 added: {all:?}"
                            ));
                        } else if holders.len() > 1 {
                            figures.shared += 1;
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
            RwEvent::Failed { worker, kind } => {
                workers.insert(worker);
                figures.timeouts += usize::from(kind == "timeout");
            }
            RwEvent::Acquired {
                worker,
                kind,
                fence,
                token,
            } => {
                workers.insert(worker);
                match kind.as_str() {
                    "write" => figures.writes += 1,
                    _ => figures.reads += 1,
                }
                let member = format!("{kind}:{token}");
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
            RwEvent::Downgraded { token, outcome, .. } => {
                if outcome == "ok" {
                    figures.downgrades += 1;
                    if !granted.contains(&format!("read:{token}")) {
                        violations.push(format!(
                            "the downgrade of {token} succeeded, but the server never held \
                             read:{token}"
                        ));
                    }
                }
            }
            RwEvent::Frozen { token, .. } => {
                frozen.insert(token);
            }
            RwEvent::End {
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
                         hold was still its own"
                    ));
                }
            }
            RwEvent::Done { worker } => {
                done.insert(worker);
            }
        }
    }
    for (token, worker) in open {
        violations.push(format!("{worker}: the hold {token} never ended"));
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
