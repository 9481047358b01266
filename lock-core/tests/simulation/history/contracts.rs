//! The operations' contracts: (d) work under `hold` or `run`, bounded waits and campaigns, `extend`
//! that never over-grants, releases retried while a token is held for nobody, and (c) no orphans once
//! faults stopped.

use std::collections::HashMap;
use std::time::Duration;

use super::super::executor::Instant;
use super::index::Index;
use super::{Detail, Event, Op, Outcome, Params, Violation, What, invariant, violation};

/// (d) Work that `hold` or `run` let finish ran while the lock was held throughout, unless its process
/// paused meanwhile or lost data excuses it.
pub(super) fn check_work(history: &[Event], index: &Index, found: &mut Vec<Violation>) {
    for event in history {
        let What::Work {
            process,
            key,
            token,
            start,
            lost: false,
            servers,
            quorum,
        } = &event.what
        else {
            continue;
        };
        if index.paused(*process, *start, event.at)
            || index.data_lost(servers, token, *start, event.at)
        {
            continue;
        }
        // The instant the work finished counts: the lock must still be held then.
        let end = event.at + Duration::from_nanos(1);
        if let Some((at, seen)) = index.first_gap(servers, *quorum, key, token, *start, end) {
            found.push(violation(
                event.at,
                invariant::MISSED_LOSS,
                format!(
                    "process {process}: work under {key} ({token}) from {start:?} finished at {:?} as \
                     if held throughout, but at {at:?} the servers held {seen:?}",
                    event.at
                ),
            ));
        }
    }
}

/// Per-operation contracts: bounded waits, campaigns that never give up on a transient error, extends
/// that do not over-grant, and (after faults stopped) waiters that are not starved of a free key.
pub(super) fn check_operations(
    history: &[Event],
    index: &Index,
    params: &Params,
    found: &mut Vec<Violation>,
) {
    for event in history {
        let What::Op(op) = &event.what else { continue };
        match (&op.detail, op.kind) {
            (_, "campaign") if matches!(op.outcome, Outcome::Failed { transient: true }) => {
                found.push(violation(
                    event.at,
                    invariant::CAMPAIGN_GAVE_UP,
                    format!(
                        "process {}: campaign for {} (started {:?}) returned a transient error",
                        op.process, op.key, op.start
                    ),
                ));
            }
            (
                Detail::Owner {
                    token,
                    servers,
                    quorum,
                },
                _,
            ) if op.outcome == Outcome::Ok => {
                let holding = servers
                    .iter()
                    .filter(|server| {
                        index.held_during(**server, &op.key, token, op.start, event.at)
                    })
                    .count();
                if holding < *quorum {
                    found.push(violation(
                        event.at,
                        invariant::OWNER_ANSWER,
                        format!(
                            "process {}: is_owner of {} for {token} answered true, but only {holding} \
                             of {servers:?} held it between {:?} and {:?}",
                            op.process, op.key, op.start, event.at
                        ),
                    ));
                }
            }
            (
                Detail::Release {
                    token,
                    valid: false,
                    redlock,
                },
                _,
            ) if match redlock {
                // Known lost is `Ok(false)`, whatever the masters answered or failed to (issue 8,
                // hole 13).
                true => !matches!(op.outcome, Outcome::Refused | Outcome::Cancelled),
                // A single server's guard is never in doubt once its validity ran out. (It answers
                // `Ok(true)` when the key was still there, which the server's word justifies, though
                // its docs promise `Ok(false)`; and reports a failed request as that failure.)
                false => op.outcome == Outcome::InDoubt,
            } =>
            {
                found.push(violation(
                    event.at,
                    invariant::RELEASE_OUTCOME,
                    format!(
                        "process {}: release of {} for {token}, whose validity had run out, answered \
                         {:?} instead of Ok(false)",
                        op.process, op.key, op.outcome
                    ),
                ));
            }
            (Detail::Wait { wait, bound, took }, _) => {
                if let Some(wait) = wait
                    && *took > *wait + *bound + params.wait_slack
                    && !index.paused(op.process, op.start, event.at)
                    && op.outcome != Outcome::Cancelled
                    && op.kind == "acquire"
                {
                    found.push(violation(
                        event.at,
                        invariant::WAIT_OVERRUN,
                        format!(
                            "process {}: {} of {} with wait {wait:?} and call bound {bound:?} took \
                             {took:?} ({:?})",
                            op.process, op.kind, op.key, op.outcome
                        ),
                    ));
                }
                if let (Some(quiet_from), Some(wait), Outcome::Timeout) =
                    (params.quiet_from, wait, op.outcome)
                    && op.start >= quiet_from
                {
                    let deadline = op.start + *wait;
                    let until = deadline.saturating_sub(params.stall_grace);
                    if until <= op.start + params.stall_grace {
                        continue;
                    }
                    for ((_, key), timeline) in &index.timelines {
                        if *key != op.key {
                            continue;
                        }
                        if let Some(since) =
                            timeline.free_stretch(op.start, until, params.stall_grace)
                        {
                            found.push(violation(
                                event.at,
                                invariant::STALL,
                                format!(
                                    "process {}: {} of {} waited from {:?} until {deadline:?} and \
                                     timed out, though the key was free from {since:?} for at least \
                                     {:?}",
                                    op.process, op.kind, op.key, op.start, params.stall_grace
                                ),
                            ));
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// `extend(by)` moves the expiry at most `by` past an expiry the guard can have known before it wrote:
/// one the key had before the call, or got during it from anything but this call (a renewal that
/// landed late, say, or an earlier extend that failed or was cancelled and landed late, with what it
/// asked for). So a re-sent extend never adds `by` twice (issue 8, hole 8).
pub(super) fn check_extends(history: &[Event], found: &mut Vec<Violation>) {
    // Per token: (at, expiry, cause) of every state of its key, and the asks of its extends so far.
    let mut states: HashMap<&str, Vec<(Instant, Instant, &str)>> = HashMap::new();
    let mut asked: HashMap<&str, Vec<Instant>> = HashMap::new();
    for event in history {
        match &event.what {
            What::KeyState {
                holder: Some((token, expires)),
                cause,
                ..
            } => states
                .entry(token)
                .or_default()
                .push((event.at, *expires, cause)),
            What::Op(Op {
                kind: "extend",
                start,
                key,
                detail:
                    Detail::Extend {
                        token,
                        by,
                        before,
                        after,
                        ..
                    },
                ..
            }) => {
                let earlier = asked
                    .get(token.as_str())
                    .into_iter()
                    .flatten()
                    .max()
                    .copied();
                // An extend that landed during this call is an earlier call's when it set no more
                // than an earlier call asked for (one that failed or was cancelled, landing late).
                let earlier_call = |expires: Instant| {
                    earlier.is_some_and(|ask| expires <= ask + Duration::from_millis(3))
                };
                let base = states
                    .get(token.as_str())
                    .into_iter()
                    .flatten()
                    .filter(|(at, expires, cause)| {
                        *at < *start || *cause != "extend" || earlier_call(*expires)
                    })
                    .map(|(_, expires, _)| *expires)
                    .max();
                // What this call may ask for: `by` on the client's clock (within 1% of true time,
                // so 2% of slack), past its base in whole milliseconds.
                let furthest =
                    base.map(|base| (base + *by + *by / 50).max(earlier.unwrap_or_default()));
                if let (Some(furthest), Some(after)) = (furthest, after) {
                    let limit = furthest + Duration::from_millis(3);
                    if *after > limit {
                        found.push(violation(
                            event.at,
                            invariant::EXTEND_OVERGRANT,
                            format!(
                                "extend({by:?}) of {key} by {token} (from {start:?}) moved its expiry \
                                 from {before:?} to {after:?}, past {limit:?}"
                            ),
                        ));
                    }
                }
                if let Some(furthest) = furthest {
                    asked.entry(token).or_default().push(furthest);
                }
            }
            _ => {}
        }
    }
}

/// A token nobody holds any more (its guard ended, `hold` reported it lost, or its acquisition was
/// abandoned) is released again and again while a server still holds it: the background release
/// retries at most one call bound and one second apart, until a release is answered (for an
/// acquisition that may still land, until its horizon), for the TTL from its first attempt. So a key
/// is never held for nobody because a release met an outage (issue 8, hole 16), was never sent after
/// `hold` reported the lease lost (hole 17), or came before a late-landing acquisition (hole 7).
pub(super) fn check_releases(
    history: &[Event],
    index: &Index,
    params: &Params,
    found: &mut Vec<Violation>,
) {
    // When each token stopped being anybody's, and which process it belonged to.
    let mut ended: HashMap<&str, Instant> = HashMap::new();
    let mut owner: HashMap<&str, usize> = HashMap::new();
    let mut first_release: HashMap<&str, Instant> = HashMap::new();
    let mut releases: HashMap<(usize, &str), Vec<Instant>> = HashMap::new();
    for event in history {
        match &event.what {
            What::GuardEnd { token, .. } => {
                ended.entry(token).or_insert(event.at);
            }
            What::Work {
                token, lost: true, ..
            } => {
                ended.entry(token).or_insert(event.at);
            }
            What::AcquireSent { process, token, .. } => {
                owner.entry(token).or_insert(*process);
            }
            What::ReleaseSent { server, token, .. } => {
                first_release.entry(token).or_insert(event.at);
                releases.entry((*server, token)).or_default().push(event.at);
            }
            _ => {}
        }
    }
    // An abandoned acquisition (never handed out, so never ended) ends with its first release.
    for (token, at) in &first_release {
        ended.entry(token).or_insert(*at);
    }
    // The loop's k-th pause is 50 ms · 2^k (jittered down to 80%), at most 1 s; so a pause is at most
    // 50 ms plus 1.25 times the time since the first attempt, and the next attempt starts at most one
    // call bound (the attempt) and one pause after the last. It keeps going while the next attempt
    // falls within the TTL (on the client's clock, within 1% of true time) of the first.
    let horizon = params.ttl.mul_f64(0.98);
    let allowed = |first: Instant, last: Instant| {
        let pause = (Duration::from_millis(50) + last.saturating_sub(first).mul_f64(1.25))
            .min(Duration::from_secs(1));
        pause + params.bound + Duration::from_millis(5)
    };
    let longest = Duration::from_secs(1) + params.bound + Duration::from_millis(5);
    let none = Vec::new();
    let mut reported: HashMap<&str, ()> = HashMap::new();
    let mut keys: Vec<_> = index.timelines.iter().collect();
    keys.sort_by_key(|((server, key), _)| (*server, *key));
    for ((server, key), timeline) in keys {
        for (i, (from, holder)) in timeline.states.iter().enumerate() {
            let Some((token, expires)) = holder else {
                continue;
            };
            let token = token.as_str();
            let Some(end) = ended.get(token) else {
                continue;
            };
            if reported.contains_key(token) {
                continue;
            }
            let held_until = timeline
                .states
                .get(i + 1)
                .map_or(*expires, |(next, _)| (*next).min(*expires));
            let first = *first_release.get(token).unwrap_or(end);
            let start = (*from).max(*end);
            let stop = held_until.min(first + horizon);
            if stop <= start {
                continue;
            }
            // A restore (a failover, a restart) may bring back a token whose release it lost.
            let restored = index
                .rollbacks
                .get(server)
                .is_some_and(|r| r.iter().any(|(at, ..)| at == from));
            let paused = owner
                .get(token)
                .is_some_and(|process| index.paused(*process, start.saturating_sub(longest), stop));
            if restored || paused {
                continue;
            }
            let sent = releases.get(&(*server, token)).unwrap_or(&none);
            let mut last = start;
            let mut missing = None;
            for at in sent.iter().filter(|at| **at > start && **at < stop) {
                if *at > last + allowed(first, last) {
                    missing = Some(last);
                    break;
                }
                last = *at;
            }
            if missing.is_none() && stop > last + allowed(first, last) {
                missing = Some(last);
            }
            if let Some(since) = missing {
                let gap = allowed(first, since);
                reported.insert(token, ());
                found.push(violation(
                    since + gap,
                    invariant::NOT_RELEASED,
                    format!(
                        "server {server} held {key} for {token} from {from:?} until {held_until:?}; \
                         nobody held it after {end:?} (first release {first:?}), but no release was \
                         sent for {gap:?} after {since:?} (releases sent at {sent:?})"
                    ),
                ));
            }
        }
    }
}

/// (c) After faults stopped: a token nobody holds any more (its guard ended, `hold` reported it lost,
/// or its acquisition was abandoned) leaves the server within the grace.
pub(super) fn check_orphans(
    history: &[Event],
    index: &Index,
    params: &Params,
    quiet_from: Instant,
    found: &mut Vec<Violation>,
) {
    // When each token stopped being anybody's.
    let mut dead: HashMap<&str, Instant> = HashMap::new();
    let mut handed_out: HashMap<&str, ()> = HashMap::new();
    let mut sent: Vec<(&str, usize, u64, Instant)> = Vec::new();
    // Per (process, task): when each operation ran.
    let mut ops: HashMap<(usize, u64), Vec<(Instant, Instant)>> = HashMap::new();
    for event in history {
        match &event.what {
            What::GuardEnd { token, .. } => {
                dead.entry(token).or_insert(event.at);
            }
            What::Work {
                token, lost: true, ..
            } => {
                dead.entry(token).or_insert(event.at);
            }
            What::Acquired { token, .. } => {
                handed_out.insert(token, ());
            }
            What::AcquireSent {
                process,
                task,
                token,
                ..
            } => sent.push((token, *process, *task, event.at)),
            What::Op(op) => ops
                .entry((op.process, op.task))
                .or_default()
                .push((op.start, event.at)),
            _ => {}
        }
    }
    // A token that was never handed out was abandoned when the operation that sent it ended.
    for (token, process, task, at) in sent {
        if handed_out.contains_key(token) || dead.contains_key(token) {
            continue;
        }
        if let Some((_, end)) = ops
            .get(&(process, task))
            .and_then(|list| list.iter().find(|(start, end)| *start <= at && at <= *end))
        {
            dead.insert(token, *end);
        }
    }
    let mut reported: HashMap<&str, ()> = HashMap::new();
    for ((server, key), timeline) in &index.timelines {
        for (i, (from, holder)) in timeline.states.iter().enumerate() {
            let Some((token, expires)) = holder else {
                continue;
            };
            let Some(died) = dead.get(token.as_str()) else {
                continue;
            };
            if reported.contains_key(token.as_str()) {
                continue;
            }
            if *died < quiet_from {
                continue;
            }
            let to = timeline
                .states
                .get(i + 1)
                .map_or(*expires, |(next, _)| (*next).min(*expires));
            let allowed = *died + params.orphan_grace;
            if to > allowed && to > *from {
                reported.insert(token, ());
                found.push(violation(
                    allowed.max(*from),
                    invariant::ORPHAN,
                    format!(
                        "server {server} held {key} for {token} until {to:?}, though nobody held it \
                         after {died:?}"
                    ),
                ));
            }
        }
    }
}
