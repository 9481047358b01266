//! The read-write lock's invariants (issue 11): never a reader beside a writer and never two writers,
//! by the server after every script and by the clients' beliefs at every true instant; every believed
//! hold backed by the server; fences in the order of the holds (a write hold's above every hold's
//! before it); writer preference (no new reader while a writer's intent is live); a waiting writer's
//! intent that lapses within one TTL of its last refresh and of its writer's end; downgrades that
//! leave no gap; `is_owner` that tells the truth; bounded waits, and after faults stopped, no waiter
//! starved and nothing left behind. (Fences issued are checked per key with every other primitive's
//! in `safety::check_fences`, holders revived after their end in `semaphore::check_revived`, and work
//! under `hold` in `semaphore::check_work`: each reads any sorted-set holder.)
//!
//! A read-write lock's key is a sorted set of `read:<token>` members or one `write:<token>`, scored by
//! expiry; waiting writers' intents are the members of its writers' key, also scored by expiry.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::super::executor::Instant;
use super::index::Index;
use super::shares::{SetIndex, SetTimeline};
use super::{Detail, Event, Op, Outcome, Params, Violation, What, invariant, violation};

fn is_write(member: &str) -> bool {
    member.starts_with("write:")
}

fn is_hold(member: &str) -> bool {
    member.starts_with("read:") || is_write(member)
}

/// A recorded state of a sorted set: each member, its score and its true expiry.
type Members = [(String, i64, Instant)];

/// A hold for the fence order: its key, whether it ever wrote, when it was first and last believed.
type Span<'a> = (&'a str, bool, Instant, Instant);

fn token_of(member: &str) -> &str {
    member.split_once(':').map_or(member, |(_, token)| token)
}

/// One belief in a hold: `member` of `key` over `[from, to)`.
struct Believed<'a> {
    process: usize,
    key: &'a str,
    token: &'a str,
    member: &'a str,
    from: Instant,
    to: Instant,
}

/// Checks every read-write lock invariant over `history`.
pub(super) fn check(history: &[Event], index: &Index, params: &Params, found: &mut Vec<Violation>) {
    let sets = SetIndex::new(history);
    // Each lock's writers' key, as its writers named it.
    let writers: HashMap<&str, &str> = history
        .iter()
        .filter_map(|event| match &event.what {
            What::IntentSent { key, writers, .. } => Some((key.as_str(), writers.as_str())),
            _ => None,
        })
        .collect();
    check_server(history, &writers, found);
    let beliefs = beliefs(history, index);
    // The simulated read-write locks run on server 0.
    let excused = |b: &Believed| sets.data_lost(0, b.member, b.from, b.to);
    let kept: Vec<&Believed> = beliefs.iter().filter(|b| !excused(b)).collect();
    check_backed(&kept, &sets, found);
    check_exclusion(&kept, found);
    check_fence_order(history, &kept, found);
    check_downgrades(history, &sets, found);
    check_owner(history, &sets, found);
    check_intents(history, params, found);
    check_waits(history, index, &sets, &writers, params, found);
    if let Some(quiet_from) = params.quiet_from {
        check_orphans(history, index, &sets, &writers, params, quiet_from, found);
    }
}

/// The live members of a recorded state (scored after the server's `now`, as the scripts count).
fn live(members: &[(String, i64, Instant)], wall_ms: i64) -> Vec<&str> {
    members
        .iter()
        .filter(|(_, score, _)| *score > wall_ms)
        .map(|(m, ..)| m.as_str())
        .collect()
}

/// After every script: never a writer beside anyone (server exclusion), and no new reader admitted
/// while a writer's intent was live (writer preference). A read hold that replaces its own write hold
/// (a downgrade) is no new reader.
fn check_server(history: &[Event], writers: &HashMap<&str, &str>, found: &mut Vec<Violation>) {
    let mut last: HashMap<(usize, &str), &Members> = HashMap::new();
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
        let before = last.insert((*server, key.as_str()), members.as_slice());
        if !members.iter().any(|(m, ..)| is_hold(m)) {
            continue;
        }
        let holders = live(members, *wall_ms);
        let written = holders.iter().filter(|m| is_write(m)).count();
        if written > 1 {
            found.push(violation(
                event.at,
                invariant::SERVER_TWO_WRITERS,
                format!("server {server} held {key} for {holders:?} after {cause}"),
            ));
        } else if written == 1 && holders.len() > 1 {
            found.push(violation(
                event.at,
                invariant::SERVER_READER_BESIDE_WRITER,
                format!("server {server} held {key} for {holders:?} after {cause}"),
            ));
        }
        if *cause == "restore" {
            continue;
        }
        let had = |member: &str| before.is_some_and(|b| b.iter().any(|(m, ..)| m == member));
        let admitted: Vec<&str> = holders
            .iter()
            .filter(|m| m.starts_with("read:") && !had(m))
            .filter(|m| !had(&format!("write:{}", token_of(m))))
            .copied()
            .collect();
        if admitted.is_empty() {
            continue;
        }
        let Some(intents) = writers
            .get(key.as_str())
            .and_then(|w| last.get(&(*server, *w)))
        else {
            continue;
        };
        let waiting: Vec<&str> = intents
            .iter()
            .filter(|(_, score, expires)| *score > 0 && *expires > event.at)
            .map(|(m, ..)| m.as_str())
            .collect();
        if !waiting.is_empty() {
            found.push(violation(
                event.at,
                invariant::READER_PAST_WRITER,
                format!(
                    "server {server} admitted {admitted:?} to {key} after {cause} while the writers' \
                     intents {waiting:?} were live"
                ),
            ));
        }
    }
}

/// Every belief in a hold, cut at its guard's end and, for a write hold, at its downgrade.
fn beliefs<'a>(history: &'a [Event], index: &Index) -> Vec<Believed<'a>> {
    let downgrades: HashMap<&str, Instant> = history
        .iter()
        .filter_map(|event| match &event.what {
            What::Downgrading { token, .. } => Some((token.as_str(), event.at)),
            _ => None,
        })
        .collect();
    let mut beliefs = Vec::new();
    for event in history {
        let What::RwHold {
            process,
            key,
            token,
            member,
            until,
        } = &event.what
        else {
            continue;
        };
        let mut to = *until;
        if let Some(end) = index.guard_ends.get(token.as_str())
            && *end >= event.at
        {
            to = to.min(*end);
        }
        if is_write(member)
            && let Some(end) = downgrades.get(token.as_str())
            && *end >= event.at
        {
            to = to.min(*end);
        }
        if to <= event.at {
            continue;
        }
        beliefs.push(Believed {
            process: *process,
            key,
            token,
            member,
            from: event.at,
            to,
        });
    }
    beliefs
}

/// Every believed hold is live on the server throughout its belief.
fn check_backed(beliefs: &[&Believed], sets: &SetIndex, found: &mut Vec<Violation>) {
    let mut reported: HashMap<&str, ()> = HashMap::new();
    for belief in beliefs {
        if reported.contains_key(belief.member) {
            continue;
        }
        if let Some(at) = sets.first_gap(0, belief.key, belief.member, belief.from, belief.to) {
            reported.insert(belief.member, ());
            let seen = sets
                .timelines
                .get(&(0, belief.key))
                .map(|t| t.holders_at(at))
                .unwrap_or_default();
            found.push(violation(
                at,
                invariant::HOLD_NOT_HELD,
                format!(
                    "process {} believed at {:?} that it held {} as {} until {:?}, but at {at:?} the \
                     server's live holders were {seen:?}",
                    belief.process, belief.from, belief.key, belief.member, belief.to
                ),
            ));
        }
    }
}

/// Among the beliefs at any true instant: a write hold alone.
fn check_exclusion(beliefs: &[&Believed], found: &mut Vec<Violation>) {
    let mut by_member: BTreeMap<(&str, &str), Vec<(Instant, Instant)>> = BTreeMap::new();
    for b in beliefs {
        by_member
            .entry((b.key, b.member))
            .or_default()
            .push((b.from, b.to));
    }
    // Per key: (instant, 0 for an end or 1 for a start, member); ends first at one instant, as the
    // intervals are half-open.
    let mut edges: BTreeMap<&str, Vec<(Instant, u8, &str)>> = BTreeMap::new();
    for ((key, member), mut spans) in by_member {
        spans.sort();
        let mut merged: Vec<(Instant, Instant)> = Vec::new();
        for (from, to) in spans {
            match merged.last_mut() {
                Some(last) if from <= last.1 => last.1 = last.1.max(to),
                _ => merged.push((from, to)),
            }
        }
        let list = edges.entry(key).or_default();
        for (from, to) in merged {
            list.push((from, 1, member));
            list.push((to, 0, member));
        }
    }
    for (key, mut list) in edges {
        list.sort();
        let mut active: BTreeMap<&str, ()> = BTreeMap::new();
        let (mut two, mut beside) = (false, false);
        for (at, start, member) in list {
            if start == 0 {
                active.remove(member);
                continue;
            }
            let others: Vec<&str> = active
                .keys()
                .filter(|m| token_of(m) != token_of(member))
                .copied()
                .collect();
            let other_writer = others.iter().any(|m| is_write(m));
            if is_write(member) && other_writer && !two {
                two = true;
                found.push(violation(
                    at,
                    invariant::TWO_WRITERS,
                    format!("{key}: at {at:?} {member} was believed beside {others:?}"),
                ));
            }
            let mixed = match is_write(member) {
                true => others.iter().any(|m| !is_write(m)),
                false => other_writer,
            };
            if mixed && !beside {
                beside = true;
                found.push(violation(
                    at,
                    invariant::READER_BESIDE_WRITER,
                    format!("{key}: at {at:?} {member} was believed beside {others:?}"),
                ));
            }
            active.insert(member, ());
        }
    }
}

/// Fences follow the holds: of two holds of a key, one a write hold, the one believed entirely after
/// the other has the greater fence (so a write fence exceeds every fence of the holds before it).
fn check_fence_order(history: &[Event], beliefs: &[&Believed], found: &mut Vec<Violation>) {
    let fences: HashMap<&str, u64> = history
        .iter()
        .filter_map(|event| match &event.what {
            What::Acquired {
                token,
                fence: Some(fence),
                redlock: false,
                ..
            } => Some((token.as_str(), *fence)),
            _ => None,
        })
        .collect();
    // Per token: its key, whether it ever wrote, when it was first and last believed.
    let mut holds: BTreeMap<&str, Span> = BTreeMap::new();
    for b in beliefs {
        let entry = holds.entry(b.token).or_insert((b.key, false, b.from, b.to));
        entry.1 |= is_write(b.member);
        entry.2 = entry.2.min(b.from);
        entry.3 = entry.3.max(b.to);
    }
    let list: Vec<(&str, Span, u64)> = holds
        .into_iter()
        .filter_map(|(token, hold)| fences.get(token).map(|f| (token, hold, *f)))
        .collect();
    for (a, (key_a, write_a, _, end_a), fence_a) in &list {
        for (b, (key_b, write_b, start_b, _), fence_b) in &list {
            if key_a != key_b || !(*write_a || *write_b) || end_a > start_b || fence_b > fence_a {
                continue;
            }
            found.push(violation(
                *start_b,
                invariant::RW_FENCE_ORDER,
                format!(
                    "{key_a}: {b} (fence {fence_b}, writer: {write_b}) was believed from {start_b:?}, \
                     after {a} (fence {fence_a}, writer: {write_a}) ended at {end_a:?}"
                ),
            ));
            return;
        }
    }
}

/// A downgrade that succeeded replaced a live write hold by the read hold at the same expiry, in one
/// script: the state that first has `read:<token>` comes straight after one where `write:<token>` was
/// live, so no instant was without the hold and nobody came in between.
fn check_downgrades(history: &[Event], sets: &SetIndex, found: &mut Vec<Violation>) {
    for event in history {
        let What::Op(Op {
            kind: "rw_downgrade",
            key,
            start,
            outcome: Outcome::Ok,
            detail: Detail::RwMember { member: write },
            ..
        }) = &event.what
        else {
            continue;
        };
        let read = format!("read:{}", token_of(write));
        if sets.data_lost(0, write, *start, event.at) {
            continue;
        }
        let Some(timeline) = sets.timelines.get(&(0, key.as_str())) else {
            continue;
        };
        let first = timeline.states.partition_point(|state| state.at < *start);
        let Some(i) = (first..timeline.states.len())
            .find(|i| timeline.states[*i].members.iter().any(|(m, ..)| *m == read))
        else {
            found.push(violation(
                event.at,
                invariant::DOWNGRADE_GAP,
                format!(
                    "{key}: the downgrade of {write} succeeded, but the server never held {read}"
                ),
            ));
            continue;
        };
        let state = &timeline.states[i];
        let score_of = |members: &[(String, i64, Instant)], member: &str| {
            members
                .iter()
                .find(|(m, ..)| m == member)
                .map(|(_, s, e)| (*s, *e))
        };
        let new = score_of(&state.members, &read);
        let old = i
            .checked_sub(1)
            .and_then(|p| score_of(&timeline.states[p].members, write));
        let fine = matches!((old, new), (Some((old, expires)), Some((new, _)))
            if old == new && expires > state.at);
        if !fine {
            found.push(violation(
                state.at,
                invariant::DOWNGRADE_GAP,
                format!(
                    "{key}: {read} (score {new:?}) appeared at {:?}, but the state before held \
                     {write} as {old:?}",
                    state.at
                ),
            ));
        }
    }
}

/// `is_owner` answered `true` only if the server held the member at some instant while it asked.
fn check_owner(history: &[Event], sets: &SetIndex, found: &mut Vec<Violation>) {
    for event in history {
        let What::Op(Op {
            kind: "rw_is_owner",
            key,
            start,
            outcome: Outcome::Ok,
            detail: Detail::RwMember { member },
            ..
        }) = &event.what
        else {
            continue;
        };
        let held = sets
            .timelines
            .get(&(0, key.as_str()))
            .is_some_and(|timeline| {
                let mut points = vec![*start, event.at];
                timeline.breakpoints(*start, event.at, &mut points);
                points.iter().any(|t| timeline.live(member, *t))
            });
        if !held {
            found.push(violation(
                event.at,
                invariant::RW_OWNER_ANSWER,
                format!(
                    "is_owner of {member} of {key} answered true, but the server never held it \
                     between {start:?} and {:?}",
                    event.at
                ),
            ));
        }
    }
}

/// The waiting writer that sent each intent: (process, task) and the operation's start and end.
fn intent_ops(history: &[Event]) -> HashMap<&str, (&Op, Instant)> {
    let mut ops: HashMap<(usize, u64), Vec<(&Op, Instant)>> = HashMap::new();
    for event in history {
        if let What::Op(
            op @ Op {
                detail: Detail::RwWait { write: true, .. },
                ..
            },
        ) = &event.what
        {
            ops.entry((op.process, op.task))
                .or_default()
                .push((op, event.at));
        }
    }
    let mut by_intent = HashMap::new();
    for event in history {
        let What::IntentSent {
            process,
            task,
            intent,
            ..
        } = &event.what
        else {
            continue;
        };
        if let Some((op, end)) = ops.get(&(*process, *task)).and_then(|list| {
            list.iter()
                .find(|(op, end)| op.start <= event.at && event.at <= *end)
        }) {
            by_intent.insert(intent.as_str(), (*op, *end));
        }
    }
    by_intent
}

/// An intent lapses within one TTL: no script scores it further ahead than that, and none refreshes
/// it after its writer stopped (once what it had sent has landed). So a writer that gave up, was
/// cancelled or died stops blocking readers within one TTL.
fn check_intents(history: &[Event], params: &Params, found: &mut Vec<Violation>) {
    // Server clocks run within 0.3% of true time; the score is in whole milliseconds.
    let ttl = params.ttl.mul_f64(1.01) + Duration::from_millis(1);
    // A request sent before the end lands within a slow delay, or a re-send after another.
    let grace = params.orphan_grace + params.bound * 6;
    let by_intent = intent_ops(history);
    let intents: HashMap<&str, ()> = history
        .iter()
        .filter_map(|event| match &event.what {
            What::IntentSent { writers, .. } => Some((writers.as_str(), ())),
            _ => None,
        })
        .collect();
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
        if !intents.contains_key(key.as_str()) || *cause == "restore" {
            continue;
        }
        for (intent, score, expires) in members {
            if *score <= 0 || reported.contains_key(intent.as_str()) {
                continue;
            }
            let ahead = *expires > event.at + ttl;
            let after_end = by_intent
                .get(intent.as_str())
                .is_some_and(|(_, end)| *expires > *end + grace + ttl);
            if ahead || after_end {
                reported.insert(intent, ());
                let op = by_intent
                    .get(intent.as_str())
                    .map(|(op, end)| (op.kind, op.process, op.start, *end, op.outcome));
                found.push(violation(
                    event.at,
                    invariant::INTENT_KEPT,
                    format!(
                        "server {server}: {cause} left the intent {intent} in {key} live until \
                         {expires:?} (TTL {:?}); its writer (kind, process, start, end, outcome): \
                         {op:?}",
                        params.ttl
                    ),
                ));
            }
        }
    }
}

/// Waits are bounded (the wait plus one call, and a writer's leaving call), and after faults stopped
/// no acquisition timed out while the lock stayed open to it for the stall grace: for a writer, no
/// holder; for a reader, no writer holding or waiting.
fn check_waits(
    history: &[Event],
    index: &Index,
    sets: &SetIndex,
    writers: &HashMap<&str, &str>,
    params: &Params,
    found: &mut Vec<Violation>,
) {
    let empty = SetTimeline::default();
    for event in history {
        let What::Op(Op {
            process,
            kind,
            key,
            start,
            outcome,
            detail:
                Detail::RwWait {
                    wait,
                    bound,
                    took,
                    write,
                },
            ..
        }) = &event.what
        else {
            continue;
        };
        let Some(wait) = wait else { continue };
        let calls = if *write { 2 } else { 1 };
        // (`run`'s time includes its body's.)
        if !kind.starts_with("rw_run")
            && *took > *wait + *bound * calls + params.wait_slack
            && !index.paused(*process, *start, event.at)
            && *outcome != Outcome::Cancelled
        {
            found.push(violation(
                event.at,
                invariant::WAIT_OVERRUN,
                format!(
                    "process {process}: {kind} of {key} with wait {wait:?} and call bound {bound:?} \
                     took {took:?} ({outcome:?})"
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
        let holders = sets.timelines.get(&(0, key.as_str())).unwrap_or(&empty);
        let intents = writers
            .get(key.as_str())
            .and_then(|w| sets.timelines.get(&(0, *w)))
            .unwrap_or(&empty);
        let mut points = vec![*start];
        holders.breakpoints(*start, until, &mut points);
        intents.breakpoints(*start, until, &mut points);
        points.push(until);
        points.sort();
        let open = |t: Instant| match write {
            true => holders.holders_at(t).is_empty(),
            false => {
                !holders.holders_at(t).iter().any(|m| is_write(m))
                    && intents.holders_at(t).is_empty()
            }
        };
        let mut open_since: Option<Instant> = None;
        for window in points.windows(2) {
            let (a, b) = (window[0], window[1]);
            if a == b {
                continue;
            }
            if !open(a) {
                open_since = None;
                continue;
            }
            let since = *open_since.get_or_insert(a);
            if b - since >= params.stall_grace {
                found.push(violation(
                    event.at,
                    invariant::STALL,
                    format!(
                        "process {process}: {kind} of {key} waited from {start:?} and timed out, \
                         though the lock was open to it from {since:?} for at least {:?}",
                        params.stall_grace
                    ),
                ));
                break;
            }
        }
    }
}

/// After faults stopped, a hold whose guard ended (released, dropped, or told by `hold` it was lost)
/// and the intent of a writer that did not get in leave the server within the grace.
fn check_orphans(
    history: &[Event],
    index: &Index,
    sets: &SetIndex,
    writers: &HashMap<&str, &str>,
    params: &Params,
    quiet_from: Instant,
    found: &mut Vec<Violation>,
) {
    // (key, member, when its holder ended)
    let mut ended: BTreeMap<(&str, &str), Instant> = BTreeMap::new();
    for event in history {
        if let What::RwHold {
            key, member, token, ..
        } = &event.what
            && let Some(end) = index.guard_ends.get(token.as_str())
        {
            ended.insert((key, member), *end);
        }
    }
    for (intent, (op, end)) in intent_ops(history) {
        if op.outcome != Outcome::Ok
            && let Some(w) = writers.get(op.key.as_str())
        {
            ended.insert((w, intent), end);
        }
    }
    for ((key, member), end) in ended {
        if end < quiet_from {
            continue;
        }
        let Some(timeline) = sets.timelines.get(&(0, key)) else {
            continue;
        };
        let allowed = end + params.orphan_grace;
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
                    "server 0 held {member} of {key} at {at:?}, though its holder (or waiting \
                     writer) ended at {end:?}"
                ),
            ));
        }
    }
}
