//! The fair lock's invariants (issue 11), over the queue each server records after every fair script
//! that changed it or granted the lock (`What::FairQueue`):
//!
//! - **Grants in ticket order**: a grant goes to a token only when no live waiter (heartbeat above the
//!   script's `now`) with a smaller ticket is queued; to a token not queued, only when no live waiter
//!   is queued at all (`try_acquire`, and a first attempt, never overtake).
//! - **Places stop blocking**: no place is renewed by a request sent after its acquisition ended, and
//!   no place stays live longer than one TTL after it was last renewed; so a dead or cancelled waiter
//!   blocks nobody for more than one TTL after its last request landed.
//! - **Bounded waits**: a fair acquisition returns within its wait and two calls (its last attempt,
//!   and the leave it sends before reporting the timeout).
//! - Once faults stopped: a waiter that gave up leaves the queue within the grace, and the key never
//!   stays free for longer than the stall grace while a live waiter is queued (nobody starves).
//!
//! Mutual exclusion, beliefs backed by the server, fences, `hold`, orphans and stalls of the fair
//! keys are the mutex's checks: a fair lock's key is a plain string key holding its holder's token, and
//! the servers record it as they record a mutex's (`What::KeyState`, `What::FenceIssued`).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::super::executor::Instant;
use super::index::Index;
use super::{Detail, Event, Op, Outcome, Params, Violation, Waiter, What, invariant, violation};

/// One recorded state of a queue: from when, and its waiters.
type QueueState<'a> = (Instant, &'a [Waiter]);

/// Checks every fair-lock invariant over `history`.
pub(super) fn check(history: &[Event], index: &Index, params: &Params, found: &mut Vec<Violation>) {
    let mut queues: BTreeMap<(usize, &str), Vec<QueueState>> = BTreeMap::new();
    for event in history {
        if let What::FairQueue {
            server,
            key,
            waiters,
            ..
        } = &event.what
        {
            queues
                .entry((*server, key.as_str()))
                .or_default()
                .push((event.at, waiters));
        }
    }
    check_waits(history, index, params, found);
    if queues.is_empty() {
        return;
    }
    check_order(history, found);
    check_places(history, &queues, params, found);
    if let Some(quiet_from) = params.quiet_from {
        check_left(history, &queues, params, quiet_from, found);
        check_stalls(index, &queues, params, quiet_from, found);
    }
}

/// Every grant respects the queue the server had before it.
fn check_order(history: &[Event], found: &mut Vec<Violation>) {
    let mut last: HashMap<(usize, &str), &[Waiter]> = HashMap::new();
    for event in history {
        let What::FairQueue {
            server,
            key,
            wall_ms,
            waiters,
            granted,
            ..
        } = &event.what
        else {
            continue;
        };
        let before = last.insert((*server, key), waiters).unwrap_or(&[]);
        let Some(token) = granted else {
            continue;
        };
        let ticket = before.iter().find(|w| w.token == *token).map(|w| w.ticket);
        let ahead: Vec<&Waiter> = before
            .iter()
            .filter(|w| w.token != *token && w.beat_ms > *wall_ms)
            .filter(|w| ticket.is_none_or(|mine| w.ticket < mine))
            .collect();
        if let Some(first) = ahead.first() {
            found.push(violation(
                event.at,
                invariant::FAIR_ORDER,
                format!(
                    "server {server} granted {key} to {token} (ticket {ticket:?}) at wall {wall_ms} \
                     ms while {} live waiter(s) were ahead, first {} (ticket {}, heartbeat {} ms)",
                    ahead.len(),
                    first.token,
                    first.ticket,
                    first.beat_ms
                ),
            ));
        }
    }
}

/// When each fair acquisition's token stopped being waited for: the end of the operation that sent
/// its first request. Keyed by token.
fn waits_ended(history: &[Event]) -> HashMap<&str, (usize, Instant)> {
    let fair_keys: Vec<&str> = history
        .iter()
        .filter_map(|e| match &e.what {
            What::FairQueue { key, .. } => Some(key.as_str()),
            _ => None,
        })
        .collect();
    let mut ops: HashMap<(usize, u64), Vec<(Instant, Instant)>> = HashMap::new();
    for event in history {
        if let What::Op(op) = &event.what {
            ops.entry((op.process, op.task))
                .or_default()
                .push((op.start, event.at));
        }
    }
    let mut ended = HashMap::new();
    for event in history {
        let What::AcquireSent {
            process,
            task,
            key,
            token,
        } = &event.what
        else {
            continue;
        };
        if ended.contains_key(token.as_str()) || !fair_keys.contains(&key.as_str()) {
            continue;
        }
        if let Some((_, end)) = ops.get(&(*process, *task)).and_then(|list| {
            list.iter()
                .find(|(start, end)| *start <= event.at && event.at <= *end)
        }) {
            ended.insert(token.as_str(), (*process, *end));
        }
    }
    ended
}

/// No place is renewed by a request sent after its acquisition ended, and none is live longer than
/// one TTL after a state of the queue was recorded (a place is renewed to `now + TTL` at most).
fn check_places(
    history: &[Event],
    queues: &BTreeMap<(usize, &str), Vec<QueueState>>,
    params: &Params,
    found: &mut Vec<Violation>,
) {
    let ended = waits_ended(history);
    let mut reported: HashMap<&str, ()> = HashMap::new();
    for event in history {
        let What::AcquireSent { process, token, .. } = &event.what else {
            continue;
        };
        if let Some((_, end)) = ended.get(token.as_str())
            && event.at > *end
            && reported.insert(token, ()).is_none()
        {
            found.push(violation(
                event.at,
                invariant::PLACE_OUTLIVED,
                format!(
                    "process {process} sent a fair acquisition for {token} at {:?}, after the \
                     acquisition ended at {end:?}",
                    event.at
                ),
            ));
        }
    }
    // Server clocks run within 0.3% of true time; the heartbeat is rounded to the millisecond.
    let longest = params.ttl.mul_f64(1.01) + Duration::from_millis(1);
    for ((server, key), states) in queues {
        for (at, waiters) in states {
            for waiter in waiters.iter() {
                if waiter.lapses > *at + longest && reported.insert(&waiter.token, ()).is_none() {
                    found.push(violation(
                        *at,
                        invariant::PLACE_OUTLIVED,
                        format!(
                            "server {server}: {}'s place in {key}'s queue at {at:?} stays live until \
                             {:?}, more than one TTL ({:?}) later",
                            waiter.token, waiter.lapses, params.ttl
                        ),
                    ));
                }
            }
        }
    }
}

/// Fair acquisitions return within their wait and two call bounds (recorded as the op's bound).
fn check_waits(history: &[Event], index: &Index, params: &Params, found: &mut Vec<Violation>) {
    for event in history {
        let What::Op(Op {
            process,
            kind: "fair_acquire",
            key,
            start,
            outcome,
            detail:
                Detail::Wait {
                    wait: Some(wait),
                    bound,
                    took,
                },
            ..
        }) = &event.what
        else {
            continue;
        };
        if *took > *wait + *bound + params.wait_slack
            && *outcome != Outcome::Cancelled
            && !index.paused(*process, *start, event.at)
        {
            found.push(violation(
                event.at,
                invariant::WAIT_OVERRUN,
                format!(
                    "process {process}: fair_acquire of {key} with wait {wait:?} and bound {bound:?} \
                     took {took:?} ({outcome:?})"
                ),
            ));
        }
    }
}

/// The stretches `[from, to)` over which `token` had a live place in `states`.
fn live_places(states: &[QueueState], token: &str) -> Vec<(Instant, Instant)> {
    let mut out = Vec::new();
    for (i, (at, waiters)) in states.iter().enumerate() {
        let next = states.get(i + 1).map_or(Instant::MAX, |(next, _)| *next);
        if let Some(waiter) = waiters.iter().find(|w| w.token == token) {
            let to = next.min(waiter.lapses);
            if to > *at {
                out.push((*at, to));
            }
        }
    }
    out
}

/// After faults stopped, a waiter that stopped waiting (timed out, cancelled, failed, or granted)
/// has no live place beyond the grace (a leave lands within a round trip; one that met a join still
/// in flight is sent again 50 ms later).
fn check_left(
    history: &[Event],
    queues: &BTreeMap<(usize, &str), Vec<QueueState>>,
    params: &Params,
    quiet_from: Instant,
    found: &mut Vec<Violation>,
) {
    let ended = waits_ended(history);
    let mut tokens: Vec<(&str, &(usize, Instant))> = ended.iter().map(|(t, e)| (*t, e)).collect();
    tokens.sort();
    for (token, (process, end)) in tokens {
        if *end < quiet_from {
            continue;
        }
        let allowed = *end + params.orphan_grace;
        for ((server, key), states) in queues {
            if let Some((from, to)) = live_places(states, token)
                .into_iter()
                .find(|(_, to)| *to > allowed)
            {
                found.push(violation(
                    allowed.max(from),
                    invariant::PLACE_NOT_LEFT,
                    format!(
                        "server {server}: process {process}'s waiter {token} stopped waiting for \
                         {key} at {end:?}, but kept a live place from {from:?} until {to:?}"
                    ),
                ));
            }
        }
    }
}

/// After faults stopped, a fair key is never free for longer than the stall grace while a live
/// waiter is queued: the head takes it within its next poll.
fn check_stalls(
    index: &Index,
    queues: &BTreeMap<(usize, &str), Vec<QueueState>>,
    params: &Params,
    quiet_from: Instant,
    found: &mut Vec<Violation>,
) {
    for ((server, key), states) in queues {
        let timeline = index.timelines.get(&(*server, *key));
        let Some(end) = states.last().map(|(at, waiters)| {
            waiters
                .iter()
                .map(|w| w.lapses)
                .max()
                .unwrap_or(*at)
                .max(*at)
        }) else {
            continue;
        };
        if end <= quiet_from {
            continue;
        }
        let mut points = vec![quiet_from, end];
        for (at, waiters) in states {
            if *at > quiet_from && *at < end {
                points.push(*at);
            }
            points.extend(
                waiters
                    .iter()
                    .map(|w| w.lapses)
                    .filter(|l| *l > quiet_from && *l < end),
            );
        }
        if let Some(timeline) = timeline {
            timeline.breakpoints(quiet_from, end, &mut points);
        }
        points.sort();
        points.dedup();
        let waiting_at = |t: Instant| {
            let n = states.partition_point(|(at, _)| *at <= t);
            n.checked_sub(1)
                .and_then(|i| states[i].1.iter().find(|w| w.lapses > t))
        };
        let mut since: Option<Instant> = None;
        for window in points.windows(2) {
            let (a, b) = (window[0], window[1]);
            let free = timeline.is_none_or(|t| t.holder_at(a).is_none());
            match (free, waiting_at(a)) {
                (true, Some(waiter)) => {
                    let from = *since.get_or_insert(a);
                    if b - from > params.stall_grace {
                        found.push(violation(
                            from + params.stall_grace,
                            invariant::QUEUE_STALL,
                            format!(
                                "server {server}: {key} was free from {from:?} to at least {b:?} \
                                 while {} waited in its queue",
                                waiter.token
                            ),
                        ));
                        break;
                    }
                }
                _ => since = None,
            }
        }
    }
}
