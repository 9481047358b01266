//! What a guard knows of one copy of its lease ([`Validity`]), and the replies of the token-checked
//! scripts that every primitive reads the same way ([`Written`], [`Released`], [`fenced_reply`]).

use std::time::Duration;

use crate::backend::{BackendError, ScriptValue};
use crate::script::{self, Script};
use crate::time::{Moment, validity_deadline};

/// What a guard knows of one copy of its lease in Redis (a [`LockGuard`](crate::LockGuard) has one,
/// a [`RedlockGuard`](crate::RedlockGuard) one per master).
///
/// The drift rule: a copy is ours until the moment its last confirming request was *sent*, plus the TTL
/// Redis reported, less the drift allowance (1% of that TTL plus 2 ms). Every write a guard makes only
/// moves the key's expiry later, so each confirmed write is a lower bound no later write can undercut,
/// and the bound follows the most recently *sent* confirmed request: a reply that arrives after a newer
/// one's changes nothing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Validity {
    /// Until when the copy is ours by the lease clock; `None` when it is not known to be ours.
    until: Option<Moment>,
    /// When the request that last decided `until` was sent: only a request sent later replaces it.
    sent_at: Moment,
    /// The key's expiry on the server's clock (Unix milliseconds, `PEXPIRETIME`), as last confirmed:
    /// what `extend` adds to.
    server_expiry_ms: Option<u64>,
}

impl Validity {
    /// The copy an acquisition sent at `sent_at` left: ours until `until` (`None`: not granted here).
    pub(crate) fn granted(sent_at: Moment, until: Option<Moment>) -> Self {
        Self {
            until,
            sent_at,
            server_expiry_ms: None,
        }
    }

    /// Until when the copy is ours by the lease clock, if it is.
    pub(crate) fn until(&self) -> Option<Moment> {
        self.until
    }

    /// How long the copy is still ours at `now`: zero once it has run out or is not ours.
    pub(crate) fn left(&self, now: Moment) -> Duration {
        self.until.map_or(Duration::ZERO, |until| until - now)
    }

    /// The key's expiry on the server's clock, as last confirmed.
    pub(crate) fn server_expiry_ms(&self) -> Option<u64> {
        self.server_expiry_ms
    }

    /// Records a confirmed write (or read) sent at `sent_at`: the key then lived `written.pttl` from some
    /// moment after `sent_at`. Ignored when a request sent later already decided; answers whether it
    /// was applied. A key shortened behind our back is believed as soon as a request sent after that is
    /// confirmed.
    pub(crate) fn confirm(&mut self, sent_at: Moment, written: Written) -> bool {
        if sent_at < self.sent_at {
            return false;
        }
        self.sent_at = sent_at;
        self.until = Some(validity_deadline(sent_at, written.pttl));
        self.server_expiry_ms = Some(written.server_expiry_ms);
        true
    }

    /// Redis answered a request sent at `sent_at` with "not ours": from then on the copy is not ours.
    /// Ignored when a request sent later already decided; answers whether it was applied.
    pub(crate) fn disown(&mut self, sent_at: Moment) -> bool {
        if sent_at < self.sent_at {
            return false;
        }
        self.sent_at = sent_at;
        self.until = None;
        true
    }

    /// The master denied holding the copy: it no longer counts, whatever was sent since.
    pub(crate) fn deny(&mut self) {
        self.until = None;
    }

    /// The lease was reported lost at `now`: the copy is not ours, and a reply still on its way is
    /// older, so changes nothing.
    pub(crate) fn end(&mut self, now: Moment) {
        self.sent_at = now;
        self.until = None;
    }
}

/// The reply of a token-checked script that leaves the lock's TTL in place or moves it later
/// ([`script::RENEW`], [`script::EXTEND`], [`script::EXPIRY`]): the key's TTL and absolute expiry right after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Written {
    pub(crate) pttl: Duration,
    pub(crate) server_expiry_ms: u64,
}

impl Written {
    /// `Some` when the script found our token (`{pttl, pexpiretime}`), `None` when it did not (`0`).
    pub(crate) fn from_reply(
        script: &Script,
        reply: &ScriptValue,
    ) -> std::result::Result<Option<Self>, BackendError> {
        match reply {
            ScriptValue::Int(0) => Ok(None),
            ScriptValue::Array(items) => match items.as_slice() {
                [ScriptValue::Int(pttl), ScriptValue::Int(expiry)] if *pttl > 0 && *expiry > 0 => {
                    Ok(Some(Self {
                        pttl: Duration::from_millis(pttl.unsigned_abs()),
                        server_expiry_ms: expiry.unsigned_abs(),
                    }))
                }
                _ => Err(unexpected_reply(script, reply)),
            },
            _ => Err(unexpected_reply(script, reply)),
        }
    }
}

fn unexpected_reply(script: &Script, reply: &ScriptValue) -> BackendError {
    BackendError::permanent(
        "redlease",
        format!(
            "unexpected reply from the {} script: {reply:?}",
            script.name()
        ),
    )
}

/// What a release found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Released {
    /// The key held our token and is deleted now.
    Deleted,
    /// The key holds another token: someone else's lock, untouched.
    HeldByAnother,
    /// There was no key.
    Absent,
}

impl Released {
    pub(crate) fn from_reply(reply: &ScriptValue) -> std::result::Result<Self, BackendError> {
        match reply {
            ScriptValue::Int(1) => Ok(Released::Deleted),
            ScriptValue::Int(0) => Ok(Released::HeldByAnother),
            ScriptValue::Int(-1) => Ok(Released::Absent),
            other => Err(unexpected_reply(&script::RELEASE, other)),
        }
    }
}

/// Reads the fenced acquire script's reply: `Some(fence)` when acquired, `None` when busy.
pub(crate) fn fenced_reply(reply: &ScriptValue) -> Result<Option<u64>, BackendError> {
    let unexpected = || {
        BackendError::permanent(
            "redlease",
            format!("unexpected reply from the fenced acquire script: {reply:?}"),
        )
    };
    match reply {
        ScriptValue::Array(items) => match items.as_slice() {
            // A third element, the server's clock, is for Redlock.
            [ScriptValue::Int(1), ScriptValue::Int(fence), ..] => {
                u64::try_from(*fence).map(Some).map_err(|_| unexpected())
            }
            [ScriptValue::Int(0), ..] => Ok(None),
            _ => Err(unexpected()),
        },
        _ => Err(unexpected()),
    }
}
