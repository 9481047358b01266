//! The safety invariants: (a) beliefs backed by the servers, also by the replica with `replicas(1)`,
//! and (b) fences that strictly increase and `fenced_set` writes that keep their order.

use std::collections::{BTreeMap, HashMap};

use super::super::executor::Instant;
use super::index::Index;
use super::{Detail, Event, Op, Outcome, Violation, What, invariant, violation};

/// A belief interval, cut at the end of its guard.
struct Believed<'a> {
    process: usize,
    key: &'a str,
    token: &'a str,
    from: Instant,
    to: Instant,
    servers: &'a [usize],
    quorum: usize,
}

/// (a) Every belief is backed by the servers (a quorum of them, for Redlock) for its whole interval,
/// and no two tokens are believed in at one instant, except where lost data excuses it.
pub(super) fn check_beliefs(history: &[Event], index: &Index, found: &mut Vec<Violation>) {
    let mut beliefs: Vec<Believed> = Vec::new();
    for event in history {
        let What::Belief {
            process,
            key,
            token,
            until,
            servers,
            quorum,
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
            from: event.at,
            to,
            servers,
            quorum: *quorum,
        });
    }
    let excused = |b: &Believed| index.data_lost(b.servers, b.token, b.from, b.to);
    // One report per token: its later beliefs fail the same way.
    let mut reported: HashMap<&str, ()> = HashMap::new();
    for belief in &beliefs {
        if excused(belief) || reported.contains_key(belief.token) {
            continue;
        }
        if let Some((at, seen)) = index.first_gap(
            belief.servers,
            belief.quorum,
            belief.key,
            belief.token,
            belief.from,
            belief.to,
        ) {
            reported.insert(belief.token, ());
            found.push(violation(
                at,
                invariant::BELIEF_NOT_HELD,
                format!(
                    "process {} believed at {:?} that it held {} with {} until {:?}, but at {at:?} the \
                     servers held {seen:?}",
                    belief.process, belief.from, belief.key, belief.token, belief.to
                ),
            ));
        }
    }
    // Two holders: sweep each key's intervals in order of start.
    let mut by_key: BTreeMap<&str, Vec<&Believed>> = BTreeMap::new();
    for belief in &beliefs {
        by_key.entry(belief.key).or_default().push(belief);
    }
    for (key, mut list) in by_key {
        list.sort_by_key(|b| b.from);
        let mut reported = 0;
        for (i, a) in list.iter().enumerate() {
            for b in &list[i + 1..] {
                if b.from >= a.to {
                    break;
                }
                if a.token != b.token && !excused(a) && !excused(b) && reported < 3 {
                    reported += 1;
                    found.push(violation(
                        b.from,
                        invariant::TWO_HOLDERS,
                        format!(
                            "{key}: process {} believed in {} over [{:?}, {:?}) and process {} in {} \
                             over [{:?}, {:?})",
                            a.process, a.token, a.from, a.to, b.process, b.token, b.from, b.to
                        ),
                    ));
                }
            }
        }
    }
}

/// With `replicas(1)`, a belief is backed by the replica as well as by the primary: writes count only
/// once the replica acknowledged them, so the replica (which a failover promotes) must hold the token
/// for as long as the client believes.
pub(super) fn check_replicated_beliefs(
    history: &[Event],
    index: &Index,
    found: &mut Vec<Violation>,
) {
    let mut reported: HashMap<&str, ()> = HashMap::new();
    for event in history {
        let What::Belief {
            process,
            key,
            token,
            until,
            servers,
            ..
        } = &event.what
        else {
            continue;
        };
        let to = match index.guard_ends.get(token.as_str()) {
            Some(end) if *end >= event.at => (*until).min(*end),
            _ => *until,
        };
        if to <= event.at || reported.contains_key(token.as_str()) {
            continue;
        }
        for server in servers {
            let Some(replica) = index.replicas.get(&(*server, key.as_str())) else {
                continue;
            };
            let mut points = vec![event.at];
            replica.breakpoints(event.at, to, &mut points);
            if let Some(at) = points
                .into_iter()
                .find(|p| replica.holder_at(*p) != Some(token.as_str()))
            {
                reported.insert(token, ());
                found.push(violation(
                    at,
                    invariant::BELIEF_NOT_REPLICATED,
                    format!(
                        "process {process} believed at {:?} that it held {key} with {token} until \
                         {to:?}, but at {at:?} the replica of server {server} held {:?}",
                        event.at,
                        replica.holder_at(at)
                    ),
                ));
            }
        }
    }
}

/// (b) Fences per key and server strictly increase in the order they were issued, across lost data;
/// Redlock fences strictly increase in the order guards were handed out.
pub(super) fn check_fences(history: &[Event], found: &mut Vec<Violation>) {
    let mut last: HashMap<(usize, &str), (u64, &str)> = HashMap::new();
    let mut redlock_last: HashMap<&str, (u64, &str)> = HashMap::new();
    for event in history {
        match &event.what {
            What::FenceIssued {
                server,
                key,
                token,
                fence,
            } => {
                if let Some((previous, by)) = last.get(&(*server, key.as_str()))
                    && fence <= previous
                {
                    found.push(violation(
                        event.at,
                        invariant::FENCE_NOT_INCREASING,
                        format!(
                            "server {server} issued fence {fence} for {key} to {token} after fence \
                             {previous} to {by}"
                        ),
                    ));
                }
                last.insert((*server, key), (*fence, token));
            }
            What::Acquired {
                key,
                token,
                fence: Some(fence),
                redlock: true,
                ..
            } => {
                if let Some((previous, by)) = redlock_last.get(key.as_str())
                    && fence <= previous
                {
                    found.push(violation(
                        event.at,
                        invariant::REDLOCK_FENCE_ORDER,
                        format!(
                            "Redlock {key}: {token} got fence {fence} after {by} had fence {previous}"
                        ),
                    ));
                }
                redlock_last.insert(key, (*fence, token));
            }
            _ => {}
        }
    }
}

/// (b) `fenced_set`: the writes that survived, per resource, have increasing fences (equal only from
/// the same holder); and each call's outcome tells the truth about its write.
pub(super) fn check_fenced_writes(history: &[Event], index: &Index, found: &mut Vec<Violation>) {
    check_refusals(history, found);
    let lost = |server: usize, seq: u64, at: Instant| {
        index.rollbacks.get(&server).is_some_and(|rollbacks| {
            rollbacks
                .iter()
                .any(|(r_at, to, from, _)| *r_at >= at && seq > *to && seq <= *from)
        })
    };
    let mut mark: HashMap<(usize, &str), (u64, &str, Instant)> = HashMap::new();
    let mut written: HashMap<&str, (Instant, usize, &str)> = HashMap::new();
    // Per (server, resource): when writes by whom were accepted.
    let mut writes: HashMap<(usize, &str), Vec<(Instant, &str)>> = HashMap::new();
    for event in history {
        let What::FencedWrite {
            server,
            resource,
            token,
            fence,
            value,
            seq,
        } = &event.what
        else {
            continue;
        };
        written
            .entry(value.as_str())
            .or_insert((event.at, *server, resource));
        writes
            .entry((*server, resource))
            .or_default()
            .push((event.at, token));
        if lost(*server, *seq, event.at) {
            continue;
        }
        if let Some((newest, holder, at)) = mark.get(&(*server, resource.as_str()))
            && (newest > fence || (newest == fence && holder != token))
        {
            found.push(violation(
                event.at,
                invariant::STALE_FENCED_WRITE,
                format!(
                    "{resource} on server {server}: {token} wrote with fence {fence} after {holder} \
                     had written with fence {newest} at {at:?}"
                ),
            ));
        }
        mark.insert((*server, resource), (*fence, token, event.at));
    }
    for event in history {
        let What::Op(Op {
            kind: "fenced_set",
            outcome,
            detail: Detail::FencedSet { value, token },
            start,
            ..
        }) = &event.what
        else {
            continue;
        };
        let applied = written.get(value.as_str());
        // A write re-sent after another holder's (larger) write is refused the second time: "another
        // holder has written with a fence at least as large" is then true, as documented.
        let superseded = |(at, server, resource): &(Instant, usize, &str)| {
            writes.get(&(*server, *resource)).is_some_and(|list| {
                list.iter()
                    .any(|(w_at, by)| w_at > at && *w_at <= event.at && by != token)
            })
        };
        let wrong = match outcome {
            Outcome::Ok => applied.is_none_or(|(at, ..)| *at > event.at),
            Outcome::Refused => applied.is_some_and(|w| !superseded(w)),
            Outcome::Failed { .. } => applied.is_some(),
            _ => false,
        };
        let applied = applied.map(|(at, ..)| at);
        if wrong {
            found.push(violation(
                event.at,
                invariant::FENCED_SET_OUTCOME,
                format!(
                    "fenced_set by {token} (started {start:?}) answered {outcome:?}, but its write was \
                     applied at {applied:?}"
                ),
            ));
        }
    }
}

/// Every refusal of a `fenced_set` is justified by the resource's newest write still on the server: a
/// larger fence, or an equal one from another holder. (A refusal for any other reason, such as two
/// resources sharing one mark, issue 8 hole 5, loses a holder's write.)
pub(super) fn check_refusals(history: &[Event], found: &mut Vec<Violation>) {
    /// An accepted write the server still has: (seq, fence, token).
    type Kept<'a> = (u64, u64, &'a str);
    // Per (server, resource): its accepted writes the server still has.
    let mut writes: HashMap<(usize, &str), Vec<Kept>> = HashMap::new();
    for event in history {
        match &event.what {
            What::FencedWrite {
                server,
                resource,
                token,
                fence,
                seq,
                ..
            } => writes
                .entry((*server, resource))
                .or_default()
                .push((*seq, *fence, token)),
            What::Rollback {
                server,
                to_seq,
                from_seq,
                ..
            } => {
                for ((s, _), list) in writes.iter_mut() {
                    if s == server {
                        list.retain(|(seq, ..)| seq <= to_seq || seq > from_seq);
                    }
                }
            }
            What::FencedRefused {
                server,
                resource,
                token,
                fence,
            } => {
                let newest = writes
                    .get(&(*server, resource.as_str()))
                    .and_then(|list| list.last());
                let justified = newest.is_some_and(|(_, newest, by)| {
                    newest > fence || (newest == fence && by != token)
                });
                if !justified {
                    found.push(violation(
                        event.at,
                        invariant::FENCED_SET_OUTCOME,
                        format!(
                            "server {server} refused {token}'s write to {resource} with fence \
                             {fence}, but the newest write it had was {newest:?}"
                        ),
                    ));
                }
            }
            _ => {}
        }
    }
}
