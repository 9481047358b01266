//! The semaphore's invariants (issue 11): never more than `limit` permits held, by the servers after
//! every script and by the clients' beliefs at every true instant; every believed permit backed by the
//! server; `hold` that reports a loss; no holder's expiry moved after it stopped; bounded waits, and
//! after faults stopped, no waiter starved of free permits and no permit kept for nobody. (Fences are
//! checked with every other primitive's, per key, in `safety::check_fences`.)
//!
//! A semaphore's key is a sorted set of holders `"<permits>:<token>"`, scored by expiry, and the
//! bookkeeping member `limit:<n>` scored 0.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::super::executor::Instant;
use super::index::Index;
use super::shares::{SetIndex, SetTimeline};
use super::{Detail, Event, Op, Outcome, Params, Violation, What, invariant, violation};

/// The permits a holder's member `"<permits>:<token>"` stands for (0 for bookkeeping members).
pub(super) fn permits_of(member: &str) -> u64 {
    member
        .split_once(':')
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(0)
}

/// The limit a state of the key was recorded under (its `limit:<n>` member).
fn limit_of(members: &[(String, i64, Instant)]) -> Option<u64> {
    members
        .iter()
        .find_map(|(m, ..)| m.strip_prefix("limit:").and_then(|n| n.parse().ok()))
}

/// The permits held at `t` by the live holders of a timeline.
fn held_at(timeline: &SetTimeline, t: Instant) -> u64 {
    timeline.holders_at(t).into_iter().map(permits_of).sum()
}

/// One belief in a permit: `permits` of `key` under `limit`, as `member`, over `[from, to)`.
struct Believed<'a> {
    process: usize,
    key: &'a str,
    token: &'a str,
    member: &'a str,
    permits: u64,
    limit: u64,
    from: Instant,
    to: Instant,
}

/// Checks every semaphore invariant over `history`.
pub(super) fn check(history: &[Event], index: &Index, params: &Params, found: &mut Vec<Violation>) {
    let sets = SetIndex::new(history);
    check_server_limit(history, found);
    check_beliefs(history, index, &sets, found);
    check_work(history, index, &sets, found);
    check_revived(history, index, params, found);
    check_waits(history, index, &sets, params, found);
    if let Some(quiet_from) = params.quiet_from {
        check_orphans(history, index, &sets, params, quiet_from, found);
    }
}

/// (b) After every script, the permits of the live holders (scored after the server's `now`, as the
/// scripts count them) are at most the key's limit.
fn check_server_limit(history: &[Event], found: &mut Vec<Violation>) {
    for event in history {
        let What::Members {
            server,
            key,
            wall_ms,
            members,
            cause,
        } = &event.what
        else {
            continue;
        };
        let Some(limit) = limit_of(members) else {
            continue;
        };
        let live: Vec<&str> = members
            .iter()
            .filter(|(m, score, _)| !m.starts_with("limit:") && *score > *wall_ms)
            .map(|(m, ..)| m.as_str())
            .collect();
        let held: u64 = live.iter().map(|m| permits_of(m)).sum();
        if held > limit {
            found.push(violation(
                event.at,
                invariant::SERVER_OVER_LIMIT,
                format!(
                    "server {server} held {held} permits of {key} (limit {limit}) after {cause}: \
                     {live:?}"
                ),
            ));
        }
    }
}

/// (a) Every believed permit is live on the server throughout its belief, and the believed permits of
/// a key never exceed its limit at one true instant, except where lost data excuses it.
fn check_beliefs(history: &[Event], index: &Index, sets: &SetIndex, found: &mut Vec<Violation>) {
    let mut beliefs: Vec<Believed> = Vec::new();
    for event in history {
        let What::Permits {
            process,
            key,
            token,
            member,
            permits,
            limit,
            until,
        } = &event.what
        else {
            continue;
        };
        let to = match index.guard_ends.get(token.as_str()) {
            Some(end) if *end >= event.at => (*until).min(*end),
            _ => *until,
        };
        if to <= event.at {
            continue;
        }
        beliefs.push(Believed {
            process: *process,
            key,
            token,
            member,
            permits: u64::from(*permits),
            limit: u64::from(*limit),
            from: event.at,
            to,
        });
    }
    // The simulated semaphores run on server 0.
    let excused = |b: &Believed| sets.data_lost(0, b.member, b.from, b.to);
    let mut reported: HashMap<&str, ()> = HashMap::new();
    for belief in &beliefs {
        if excused(belief) || reported.contains_key(belief.token) {
            continue;
        }
        if let Some(at) = sets.first_gap(0, belief.key, belief.member, belief.from, belief.to) {
            reported.insert(belief.token, ());
            let seen = sets
                .timelines
                .get(&(0, belief.key))
                .map(|t| t.holders_at(at))
                .unwrap_or_default();
            found.push(violation(
                at,
                invariant::PERMIT_NOT_HELD,
                format!(
                    "process {} believed at {:?} that it held {} permits of {} as {} until {:?}, but \
                     at {at:?} the server's live holders were {seen:?}",
                    belief.process, belief.from, belief.permits, belief.key, belief.member, belief.to
                ),
            ));
        }
    }
    // Over the limit: per key, sweep the union of each token's beliefs.
    let mut by_key: BTreeMap<&str, Vec<&Believed>> = BTreeMap::new();
    for belief in beliefs.iter().filter(|b| !excused(b)) {
        by_key.entry(belief.key).or_default().push(belief);
    }
    for (key, list) in by_key {
        let limit = list.iter().map(|b| b.limit).min().unwrap_or(0);
        // Per token, its permits and its intervals merged.
        type Spans = Vec<(Instant, Instant)>;
        let mut per_token: BTreeMap<&str, (u64, Spans)> = BTreeMap::new();
        for b in &list {
            let entry = per_token.entry(b.token).or_insert((b.permits, Vec::new()));
            entry.1.push((b.from, b.to));
        }
        // (instant, +permits or -permits, token): ends sort before starts at one instant, as the
        // intervals are half-open.
        let mut edges: Vec<(Instant, i64, &str)> = Vec::new();
        for (token, (permits, mut spans)) in per_token {
            spans.sort();
            let mut merged: Vec<(Instant, Instant)> = Vec::new();
            for (from, to) in spans {
                match merged.last_mut() {
                    Some(last) if from <= last.1 => last.1 = last.1.max(to),
                    _ => merged.push((from, to)),
                }
            }
            for (from, to) in merged {
                let n = i64::try_from(permits).unwrap_or(i64::MAX);
                edges.push((from, n, token));
                edges.push((to, -n, token));
            }
        }
        edges.sort_by_key(|(at, delta, _)| (*at, *delta));
        let mut held: i64 = 0;
        let mut holders: BTreeMap<&str, i64> = BTreeMap::new();
        for (at, delta, token) in edges {
            held += delta;
            if delta > 0 {
                holders.insert(token, delta);
            } else {
                holders.remove(token);
            }
            if held > i64::try_from(limit).unwrap_or(i64::MAX) {
                found.push(violation(
                    at,
                    invariant::OVER_LIMIT,
                    format!(
                        "{key}: at {at:?} clients believed they held {held} permits (limit {limit}): \
                         {holders:?}"
                    ),
                ));
                // One report per key: what follows fails the same way.
                break;
            }
        }
    }
}

/// Work that `Permit::hold` let finish ran while the permit was live throughout, unless its process
/// paused meanwhile or lost data excuses it.
fn check_work(history: &[Event], index: &Index, sets: &SetIndex, found: &mut Vec<Violation>) {
    for event in history {
        let What::ShareWork {
            process,
            key,
            member,
            start,
        } = &event.what
        else {
            continue;
        };
        if index.paused(*process, *start, event.at) || sets.data_lost(0, member, *start, event.at) {
            continue;
        }
        let end = event.at + Duration::from_nanos(1);
        if let Some(at) = sets.first_gap(0, key, member, *start, end) {
            found.push(violation(
                event.at,
                invariant::MISSED_LOSS,
                format!(
                    "process {process}: work under {member} of {key} from {start:?} finished at {:?} \
                     as if held throughout, but at {at:?} the permit was not live",
                    event.at
                ),
            ));
        }
    }
}

/// Each holder renews only its own permits, and only while it holds them: once its guard ended (and
/// what it had sent before has landed), no script moves its expiry later or brings it back. So a
/// crashed or finished holder's permits come back by their expiry.
fn check_revived(history: &[Event], index: &Index, params: &Params, found: &mut Vec<Violation>) {
    // A request sent before the end lands within a slow delay, or a re-send after another.
    let grace = params.orphan_grace + params.bound * 6;
    // Per (server, key, member): the furthest expiry it had by its holder's end plus the grace.
    let mut settled: HashMap<(usize, &str, &str), i64> = HashMap::new();
    let mut reported: HashMap<&str, ()> = HashMap::new();
    for event in history {
        let What::Members {
            server,
            key,
            members,
            cause,
            ..
        } = &event.what
        else {
            continue;
        };
        for (member, score, _) in members {
            let Some((_, token)) = member.split_once(':') else {
                continue;
            };
            if *score <= 0 || member.starts_with("limit:") {
                continue;
            }
            let Some(end) = index.guard_ends.get(token) else {
                continue;
            };
            let slot = (*server, key.as_str(), member.as_str());
            if event.at <= *end + grace || *cause == "restore" {
                let furthest = settled.entry(slot).or_insert(*score);
                *furthest = (*furthest).max(*score);
                continue;
            }
            let before = settled.get(&slot).copied();
            if before.is_none_or(|b| *score > b) && !reported.contains_key(member.as_str()) {
                reported.insert(member, ());
                found.push(violation(
                    event.at,
                    invariant::PERMIT_REVIVED,
                    format!(
                        "server {server}: {cause} moved {member} of {key} to expire at {score} ms \
                         (before: {before:?}), though its holder stopped at {end:?}"
                    ),
                ));
            }
        }
    }
}

/// Waits are bounded (the wait plus one call), and after faults stopped a waiter that timed out was
/// not starved of permits that stayed free for the stall grace.
fn check_waits(
    history: &[Event],
    index: &Index,
    sets: &SetIndex,
    params: &Params,
    found: &mut Vec<Violation>,
) {
    for event in history {
        let What::Op(Op {
            process,
            kind,
            key,
            start,
            outcome,
            detail:
                Detail::Permits {
                    wait,
                    bound,
                    took,
                    permits,
                    limit,
                },
            ..
        }) = &event.what
        else {
            continue;
        };
        let Some(wait) = wait else { continue };
        // (`run`'s time includes its body's.)
        if *kind == "semaphore_acquire"
            && *took > *wait + *bound + params.wait_slack
            && !index.paused(*process, *start, event.at)
            && *outcome != Outcome::Cancelled
        {
            found.push(violation(
                event.at,
                invariant::WAIT_OVERRUN,
                format!(
                    "process {process}: {kind} of {permits} permits of {key} with wait {wait:?} and \
                     call bound {bound:?} took {took:?} ({outcome:?})"
                ),
            ));
        }
        let Some(quiet_from) = params.quiet_from else {
            continue;
        };
        if *outcome != Outcome::Timeout || *start < quiet_from {
            continue;
        }
        let until = (*start + *wait).saturating_sub(params.stall_grace);
        if until <= *start + params.stall_grace {
            continue;
        }
        let Some(timeline) = sets.timelines.get(&(0, key.as_str())) else {
            continue;
        };
        let mut points = vec![*start];
        timeline.breakpoints(*start, until, &mut points);
        points.push(until);
        points.sort();
        let enough = |t: Instant| held_at(timeline, t) + u64::from(*permits) <= u64::from(*limit);
        let mut free_since: Option<Instant> = None;
        for window in points.windows(2) {
            let (a, b) = (window[0], window[1]);
            if a == b {
                continue;
            }
            if enough(a) {
                let since = *free_since.get_or_insert(a);
                if b - since >= params.stall_grace {
                    found.push(violation(
                        event.at,
                        invariant::STALL,
                        format!(
                            "process {process}: {kind} of {permits} permits of {key} waited from \
                             {start:?} and timed out, though {permits} were free from {since:?} for \
                             at least {:?}",
                            params.stall_grace
                        ),
                    ));
                    break;
                }
            } else {
                free_since = None;
            }
        }
    }
}

/// After faults stopped, the permits of a holder that ended (released, dropped, or told by `hold` that
/// it lost them) leave the server within the grace: a release, or the background one of a drop.
fn check_orphans(
    history: &[Event],
    index: &Index,
    sets: &SetIndex,
    params: &Params,
    quiet_from: Instant,
    found: &mut Vec<Violation>,
) {
    let mut members: BTreeMap<(&str, &str), ()> = BTreeMap::new();
    for event in history {
        if let What::Permits { key, member, .. } = &event.what {
            members.insert((key, member), ());
        }
    }
    for (key, member) in members.into_keys() {
        let Some((_, token)) = member.split_once(':') else {
            continue;
        };
        let Some(end) = index.guard_ends.get(token) else {
            continue;
        };
        if *end < quiet_from {
            continue;
        }
        let Some(timeline) = sets.timelines.get(&(0, key)) else {
            continue;
        };
        let allowed = *end + params.orphan_grace;
        // Live at any moment after the grace: at the grace's end, or at a later state.
        let mut points = vec![allowed];
        points.extend(
            timeline
                .states
                .iter()
                .map(|s| s.at)
                .filter(|at| *at > allowed),
        );
        if let Some(at) = points.into_iter().find(|t| timeline.live(member, *t)) {
            found.push(violation(
                at,
                invariant::ORPHAN,
                format!(
                    "server 0 held {member} of {key} at {at:?}, though its holder ended at {end:?}"
                ),
            ));
        }
    }
}
