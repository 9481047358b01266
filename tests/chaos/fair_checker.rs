//! The fair-lock case's check against the server's own history.
//!
//! The `MONITOR` records, in the server's order, every command on the lock's key, its queue (a sorted
//! set of waiting tokens scored by ticket) and its heartbeats (the same tokens scored by when each
//! place lapses, server ms), and every value the fence counter took. `FAIR_ACQUIRE` starts with
//! `zrangebyscore <heartbeats> -inf <now>` (its own clock), removes the waiters whose heartbeat
//! lapsed, and grants with `set <key> <token> PX <ttl>` after taking the token out of the queue.
//! Replaying the queue's and heartbeats' commands on a model gives the waiters the script saw. Then:
//!
//! 1. every grant goes to the live waiter with the smallest ticket, or to a token not queued only
//!    when no live waiter is queued: no grant ever overtakes a live place;
//! 2. the fence counter strictly increases over the whole run, across restarts that lost the data;
//! 3. every acquisition a worker saw is a grant in the server's history, with a fence the counter
//!    took.
//!
//! Mutual exclusion (the fenced writes' order in the server's history), losses never reported as held
//! and every acquisition ending are the mutex cases' checks ([`crate::checker::check`]), run on the same
//! case.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use crate::events::Event;
use crate::monitor::Entry;

/// A finished fair case: the server's history and what the workers recorded.
pub(crate) struct FairHistory {
    pub(crate) log: Vec<Entry>,
    pub(crate) events: Vec<Event>,
    pub(crate) key: String,
    pub(crate) queue: String,
    pub(crate) beats: String,
}

#[derive(Debug, Default)]
pub(crate) struct FairFigures {
    /// Grants in the server's history, and those made while other live waiters were queued.
    pub(crate) grants: usize,
    pub(crate) grants_past_queue: usize,
    /// Tokens that joined the queue, and waiters dropped because their heartbeat lapsed.
    pub(crate) joins: usize,
    pub(crate) lapsed: usize,
    /// Values the fence counter took.
    pub(crate) fences: usize,
}

impl fmt::Display for FairFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "  fair: {} grants ({} of them with others waiting), {} joins, {} places lapsed, {} \
             fences",
            self.grants, self.grants_past_queue, self.joins, self.lapsed, self.fences
        )
    }
}

/// The `(score, member)` pairs of a `ZADD` (any flags before them skipped).
fn zadd_pairs(args: &[String]) -> Vec<(i64, String)> {
    let mut rest = args
        .iter()
        .skip(2)
        .skip_while(|a| a.parse::<f64>().is_err());
    let mut pairs = Vec::new();
    while let (Some(score), Some(member)) = (rest.next(), rest.next()) {
        if let Ok(score) = score.parse::<f64>() {
            pairs.push((score as i64, member.clone()));
        }
    }
    pairs
}

pub(crate) fn check(history: &FairHistory) -> (FairFigures, Vec<String>) {
    let mut f = FairFigures::default();
    let mut v = Vec::new();
    // The model: waiting tokens with their tickets, and heartbeats.
    let mut queue: HashMap<String, i64> = HashMap::new();
    let mut beats: HashMap<String, i64> = HashMap::new();
    // The current script's `now` (ms), and a count of scripts, to tie a grant to its own removal.
    let mut now: Option<i64> = None;
    let mut script = 0u64;
    let mut left: HashMap<String, (i64, u64)> = HashMap::new();
    let mut granted: BTreeSet<&str> = BTreeSet::new();
    let mut fences: BTreeSet<u64> = BTreeSet::new();
    let mut last_fence: Option<u64> = None;
    for entry in &history.log {
        match entry {
            Entry::Attached { epoch } if *epoch > 0 => {
                // A restart lost every key.
                queue.clear();
                beats.clear();
                now = None;
            }
            Entry::CounterSeed { seed, .. } => {
                f.fences += 1;
                if let Some(last) = last_fence
                    && *seed <= last
                {
                    v.push(format!(
                        "fences must strictly increase: the counter took {seed} after {last}"
                    ));
                }
                last_fence = Some(*seed);
                fences.insert(*seed);
            }
            Entry::Watched { args, .. } => {
                let command = args[0].to_ascii_lowercase();
                let Some(key) = args.get(1) else { continue };
                match command.as_str() {
                    "zrangebyscore" if *key == history.beats => {
                        script += 1;
                        now = args
                            .get(3)
                            .and_then(|n| n.parse::<f64>().ok())
                            .map(|n| n as i64);
                    }
                    "zrem" if *key == history.queue => {
                        for member in &args[2..] {
                            if let Some(ticket) = queue.remove(member) {
                                left.insert(member.clone(), (ticket, script));
                                let beat = beats.get(member).copied().unwrap_or(i64::MAX);
                                if now.is_some_and(|now| beat <= now) {
                                    f.lapsed += 1;
                                }
                            }
                        }
                    }
                    "zrem" if *key == history.beats => {
                        for member in &args[2..] {
                            beats.remove(member);
                        }
                    }
                    "zadd" if *key == history.queue => {
                        for (ticket, member) in zadd_pairs(args) {
                            if queue.insert(member, ticket).is_none() {
                                f.joins += 1;
                            }
                        }
                    }
                    "zadd" if *key == history.beats => {
                        for (beat, member) in zadd_pairs(args) {
                            beats.insert(member, beat);
                        }
                    }
                    "set" if *key == history.key => {
                        let Some(token) = args.get(2) else { continue };
                        f.grants += 1;
                        granted.insert(token);
                        // The grantee's ticket, if this script took it out of the queue.
                        let ticket = left
                            .get(token)
                            .filter(|(_, at)| *at == script)
                            .map(|(ticket, _)| *ticket);
                        let live = |member: &String| {
                            let beat = beats.get(member).copied().unwrap_or(i64::MAX);
                            now.is_none_or(|now| beat > now)
                        };
                        let waiting: Vec<(&String, &i64)> = queue
                            .iter()
                            .filter(|(member, _)| *member != token && live(member))
                            .collect();
                        f.grants_past_queue += usize::from(!waiting.is_empty());
                        if let Some((member, their)) = waiting
                            .iter()
                            .filter(|(_, their)| ticket.is_none_or(|mine| **their < mine))
                            .min_by_key(|(_, their)| **their)
                        {
                            v.push(format!(
                                "{token} (ticket {ticket:?}) was granted while {member} (ticket \
                                 {their}, heartbeat {:?}) waited ahead of it, at server time {now:?}",
                                beats.get(*member)
                            ));
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    for event in &history.events {
        if let Event::Acquired {
            worker,
            fence,
            token,
        } = event
        {
            if !granted.contains(token.as_str()) {
                v.push(format!(
                    "{worker}: the acquisition {token} (fence {fence}) is not in the server's history"
                ));
            }
            if !fences.contains(fence) {
                v.push(format!(
                    "{worker}: fence {fence} of {token} is one the counter never took"
                ));
            }
        }
    }
    (f, v)
}
