//! Metrics and traces of the lease engine, in one place for every primitive.
//!
//! The primitives call a few hooks, each at a point every acquisition or hold passes through:
//!
//! - [`acquiring`] wraps an acquisition (`acquire`, `read`, `write`, `campaign`): its span, its
//!   duration and outcome, and the `redlease_waiting` gauge while it runs, recorded even when the
//!   future is dropped;
//! - [`Observe::attempted`], at the start of each request that tries to take the lock;
//! - [`HeldLease`], owned by every guard's [`Holding`](super::Holding): the `redlease_held` gauge
//!   while the lease lives, and how the hold ended (released, lost with a [`LostReason`], dropped);
//! - [`HeldLease::releasing`] wraps a guard's `release`: its span, and the `warn` when it fails.
//!
//! Metrics (feature `metrics`) go through the `metrics` facade, with every key built once per
//! process (and once per `metrics_name`): without a recorder installed, an event costs the facade's
//! recorder lookup (a thread-local read and an atomic load) and nothing else. Without the feature,
//! the metric hooks compile to nothing; the spans and events are `tracing`'s, always on (a span nobody
//! subscribes to costs one atomic load).

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use tracing::Instrument;
use tracing::field::Empty;

use crate::error::{LockError, Result};
use crate::runtime::Runtime;
use crate::time::Moment;

/// The `primitive` label and span field: which kind of lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Primitive {
    Lock,
    FairLock,
    Semaphore,
    Read,
    Write,
    Redlock,
    Election,
}

impl Primitive {
    /// Every primitive, in the order of [`index`](Self::index).
    #[cfg(feature = "metrics")]
    const ALL: [Primitive; 7] = [
        Primitive::Lock,
        Primitive::FairLock,
        Primitive::Semaphore,
        Primitive::Read,
        Primitive::Write,
        Primitive::Redlock,
        Primitive::Election,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Primitive::Lock => "lock",
            Primitive::FairLock => "fair_lock",
            Primitive::Semaphore => "semaphore",
            Primitive::Read => "read",
            Primitive::Write => "write",
            Primitive::Redlock => "redlock",
            Primitive::Election => "election",
        }
    }

    #[cfg(feature = "metrics")]
    fn index(self) -> usize {
        self as usize
    }
}

/// Why `hold` reported a lease lost: the `reason` label of `redlease_lost_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LostReason {
    /// Redis answered that the key (or our member) holds another token, or nothing.
    TakenOver,
    /// The validity ran out before a renewal was due or tried (a paused process, say).
    Expired,
    /// Renewals failed, or went unanswered, until the validity ran out.
    RenewalFailed,
    /// `max_hold` passed.
    MaxHold,
}

impl LostReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LostReason::TakenOver => "taken_over",
            LostReason::Expired => "expired",
            LostReason::RenewalFailed => "renewal_failed",
            LostReason::MaxHold => "max_hold",
        }
    }
}

/// How a hold ended: the `outcome` label of `redlease_held_duration_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Released,
    Lost(LostReason),
    Dropped,
}

/// The name a builder's `metrics_name` gave a family of keys: the `name` label and span field.
#[derive(Clone)]
pub(crate) struct MetricsName {
    name: Arc<str>,
    /// This name's metric keys, found (or built) on first use: shared by every builder that names
    /// the same family.
    #[cfg(feature = "metrics")]
    keys: Arc<std::sync::OnceLock<&'static keys::Family>>,
}

impl MetricsName {
    pub(crate) fn new(name: String) -> Self {
        Self {
            name: Arc::from(name),
            #[cfg(feature = "metrics")]
            keys: Arc::default(),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.name
    }
}

impl PartialEq for MetricsName {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for MetricsName {}

impl fmt::Debug for MetricsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.name, f)
    }
}

/// What an acquisition reports under (its primitive and name), and how many attempts it made.
/// Carried by [`ValidatedConfig`](super::config::ValidatedConfig), so that every attempt and the
/// [`Holding`](super::Holding) of the grant find it.
#[derive(Debug)]
pub(crate) struct Observe {
    primitive: Primitive,
    name: Option<MetricsName>,
    /// Attempts so far: the `attempts` field of the acquisition's span.
    attempts: AtomicU32,
}

impl Clone for Observe {
    fn clone(&self) -> Self {
        Self {
            primitive: self.primitive,
            name: self.name.clone(),
            attempts: AtomicU32::new(self.attempts.load(Ordering::Relaxed)),
        }
    }
}

impl Observe {
    /// A plain lock's, until [`for_primitive`](Self::for_primitive) says otherwise.
    pub(crate) fn new(name: Option<MetricsName>) -> Self {
        Self {
            primitive: Primitive::Lock,
            name,
            attempts: AtomicU32::new(0),
        }
    }

    pub(crate) fn for_primitive(mut self, primitive: Primitive) -> Self {
        self.primitive = primitive;
        self
    }

    fn name(&self) -> Option<&str> {
        self.name.as_ref().map(MetricsName::as_str)
    }

    /// A request that tries to take the lock is about to be sent: counts it, and logs a retry at
    /// `debug` (inside the acquisition's span, which names the key).
    pub(crate) fn attempted(&self) {
        let attempt = self
            .attempts
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if attempt > 1 {
            tracing::debug!(attempt, "retrying");
        }
        #[cfg(feature = "metrics")]
        record::counter(
            &keys::family(self.name.as_ref()).attempts[self.primitive.index()],
            1,
        );
    }
}

/// Runs the acquisition `acquiring` of `key` in an `acquire` span, recording its duration and
/// outcome (also when this future is dropped: `timeout`, the caller stopped waiting) and counting it
/// in `redlease_waiting` meanwhile.
pub(crate) async fn acquiring<T>(
    observe: &Observe,
    key: &str,
    runtime: &Runtime,
    acquiring: impl Future<Output = Result<T>>,
) -> Result<T> {
    let span = tracing::info_span!(
        "redlease.acquire",
        key,
        primitive = observe.primitive.as_str(),
        name = observe.name(),
        attempts = Empty,
        waited = Empty,
    );
    let mut timer = Acquisition {
        observe,
        runtime,
        started: runtime.now(),
        finished: false,
    };
    timer.start();
    let result = acquiring.instrument(span.clone()).await;
    let waited = runtime.now() - timer.started;
    span.record("attempts", observe.attempts.load(Ordering::Relaxed));
    span.record("waited", tracing::field::debug(waited));
    timer.finish(match &result {
        Ok(_) => 0,
        Err(LockError::Timeout { .. }) => 1,
        Err(_) => 2,
    });
    result
}

/// The metrics of one acquisition in progress: `redlease_waiting` while it lives, then its duration
/// and outcome (an index into `ACQUIRE_OUTCOMES`: acquired, timeout, error).
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
struct Acquisition<'a> {
    observe: &'a Observe,
    runtime: &'a Runtime,
    started: Moment,
    finished: bool,
}

impl Acquisition<'_> {
    fn start(&self) {
        #[cfg(feature = "metrics")]
        record::gauge(
            &keys::family(self.observe.name.as_ref()).waiting[self.observe.primitive.index()],
            1.0,
        );
    }

    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    fn finish(&mut self, outcome: usize) {
        let first = !std::mem::replace(&mut self.finished, true);
        #[cfg(feature = "metrics")]
        if first {
            let family = keys::family(self.observe.name.as_ref());
            let p = self.observe.primitive.index();
            record::gauge(&family.waiting[p], -1.0);
            let waited = self.runtime.now() - self.started;
            record::histogram(
                &family.acquire_duration[p * keys::ACQUIRE_OUTCOMES.len() + outcome],
                waited.as_secs_f64(),
            );
        }
    }
}

impl Drop for Acquisition<'_> {
    fn drop(&mut self) {
        // Dropped before a result: the caller stopped waiting (its own timeout, a shutdown).
        self.finish(1);
    }
}

/// A lease held by this process, from its grant to the end of its hold: owned by its guard's
/// [`Holding`](super::Holding). Counts in `redlease_held` while it lives; the first end recorded
/// ([`released`](Self::released), [`lost`](Self::lost), or being dropped without either) is the
/// hold's `outcome`.
pub(crate) struct HeldLease {
    primitive: Primitive,
    name: Option<MetricsName>,
    ended: AtomicBool,
    /// The lease clock and the grant's moment: `redlease_held_duration_seconds` counts from there.
    #[cfg(feature = "metrics")]
    clock: (Runtime, Moment),
}

/// Counts the renewals of one lease made by the renewal scheduler (`redlease_renewals_total`), as
/// [`HeldLease::renewed`] does for the per-lease loop.
#[derive(Clone)]
pub(crate) struct RenewalCounter {
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    primitive: Primitive,
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    name: Option<MetricsName>,
}

impl RenewalCounter {
    /// Counts one renewal: `ok` when it confirmed the lease, `failed` otherwise.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn renewed(&self, ok: bool) {
        #[cfg(feature = "metrics")]
        record::counter(
            &keys::family(self.name.as_ref()).renewals
                [self.primitive.index() * 2 + usize::from(!ok)],
            1,
        );
    }
}

impl HeldLease {
    /// A lease granted by a request sent at `since`, observed as `observe` says.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn start(observe: &Observe, runtime: &Runtime, since: Moment) -> Self {
        #[cfg(feature = "metrics")]
        record::gauge(
            &keys::family(observe.name.as_ref()).held[observe.primitive.index()],
            1.0,
        );
        Self {
            primitive: observe.primitive,
            name: observe.name.clone(),
            ended: AtomicBool::new(false),
            #[cfg(feature = "metrics")]
            clock: (runtime.clone(), since),
        }
    }

    /// A stand-in for this lease once its metrics were taken out: it records nothing.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn detached(&self, runtime: &Runtime) -> Self {
        Self {
            primitive: self.primitive,
            name: None,
            ended: AtomicBool::new(true),
            #[cfg(feature = "metrics")]
            clock: (runtime.clone(), self.clock.1),
        }
    }

    pub(crate) fn primitive(&self) -> Primitive {
        self.primitive
    }

    pub(crate) fn name(&self) -> Option<&str> {
        self.name.as_ref().map(MetricsName::as_str)
    }

    /// Counts a renewal made by `hold`: `ok` when it confirmed the lease, `failed` otherwise.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn renewed(&self, ok: bool) {
        #[cfg(feature = "metrics")]
        record::counter(
            &keys::family(self.name.as_ref()).renewals
                [self.primitive.index() * 2 + usize::from(!ok)],
            1,
        );
    }

    /// What counts this lease's renewals, for the renewal scheduler (which renews it away from the
    /// guard): the same counter as [`renewed`](Self::renewed).
    pub(crate) fn renewal_counter(&self) -> RenewalCounter {
        RenewalCounter {
            primitive: self.primitive,
            name: self.name.clone(),
        }
    }

    /// The hold ended by a release that found the lease ours.
    pub(crate) fn released(&self) {
        self.end(Ended::Released);
    }

    /// The lease was reported lost, for `reason`.
    pub(crate) fn lost(&self, reason: LostReason) {
        self.end(Ended::Lost(reason));
    }

    /// The hold continues as another primitive (a write hold downgraded to a read hold): the first
    /// ends as released, the second starts now.
    pub(crate) fn continue_as(&mut self, primitive: Primitive, runtime: &Runtime) {
        self.released();
        let observe = Observe::new(self.name.clone()).for_primitive(primitive);
        *self = HeldLease::start(&observe, runtime, runtime.now());
    }

    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    fn end(&self, how: Ended) {
        let first = !self.ended.swap(true, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        if first {
            let family = keys::family(self.name.as_ref());
            let p = self.primitive.index();
            record::gauge(&family.held[p], -1.0);
            let (runtime, since) = &self.clock;
            let held = (runtime.now() - *since).as_secs_f64();
            let outcome = match how {
                Ended::Released => 0,
                Ended::Lost(_) => 1,
                Ended::Dropped => 2,
            };
            record::histogram(&family.held_duration[p * 3 + outcome], held);
            if let Ended::Lost(reason) = how {
                let r = keys::LOST_REASONS
                    .iter()
                    .position(|known| *known == reason.as_str())
                    .unwrap_or(0);
                record::counter(&family.lost[p * keys::LOST_REASONS.len() + r], 1);
            }
        }
    }

    /// Runs a guard's release in a `release` span and records how the hold ended: `released` when
    /// the lease was ours (or the answer cannot tell: [`LockError::InDoubt`]), `lost` when it was not
    /// (`expired` when the guard's validity had run out, `taken_over` otherwise). A release that
    /// failed is logged at `warn`; the guard then releases in the background, as a dropped one, and
    /// the hold ends as `dropped`.
    pub(crate) async fn releasing(
        self,
        key: &str,
        valid: bool,
        release: impl Future<Output = Result<bool>>,
    ) -> Result<bool> {
        let span = tracing::info_span!(
            "redlease.release",
            key,
            primitive = self.primitive.as_str(),
            name = self.name(),
            released = Empty,
        );
        let result = release.instrument(span.clone()).await;
        match &result {
            Ok(true) | Err(LockError::InDoubt { .. }) => self.released(),
            Ok(false) => self.lost(match valid {
                true => LostReason::TakenOver,
                false => LostReason::Expired,
            }),
            Err(error) => span.in_scope(|| {
                tracing::warn!(
                    key,
                    primitive = self.primitive.as_str(),
                    error = %super::hold::with_causes(error),
                    "releasing the lease failed; retrying in the background, its TTL frees it otherwise"
                );
            }),
        }
        if let Ok(released) = &result {
            span.record("released", released);
        }
        result
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        self.end(Ended::Dropped);
    }
}

impl fmt::Debug for HeldLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeldLease")
            .field("primitive", &self.primitive)
            .field("name", &self.name)
            .finish()
    }
}

/// The metric names and every key, built once per name.
#[cfg(feature = "metrics")]
mod keys {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    use metrics::{Key, Label, Unit};

    use super::{MetricsName, Primitive};

    pub(super) const ACQUIRE_DURATION: &str = "redlease_acquire_duration_seconds";
    pub(super) const ACQUIRE_ATTEMPTS: &str = "redlease_acquire_attempts_total";
    pub(super) const HELD_DURATION: &str = "redlease_held_duration_seconds";
    pub(super) const RENEWALS: &str = "redlease_renewals_total";
    pub(super) const LOST: &str = "redlease_lost_total";
    pub(super) const HELD: &str = "redlease_held";
    pub(super) const WAITING: &str = "redlease_waiting";

    pub(super) const ACQUIRE_OUTCOMES: [&str; 3] = ["acquired", "timeout", "error"];
    pub(super) const HELD_OUTCOMES: [&str; 3] = ["released", "lost", "dropped"];
    pub(super) const RENEWAL_OUTCOMES: [&str; 2] = ["ok", "failed"];
    pub(super) const LOST_REASONS: [&str; 4] =
        ["taken_over", "expired", "renewal_failed", "max_hold"];

    /// Every key of one `name` label (or none), indexed by primitive, then by outcome or reason.
    pub(super) struct Family {
        pub(super) acquire_duration: Vec<Key>,
        pub(super) attempts: Vec<Key>,
        pub(super) held_duration: Vec<Key>,
        pub(super) renewals: Vec<Key>,
        pub(super) lost: Vec<Key>,
        pub(super) held: Vec<Key>,
        pub(super) waiting: Vec<Key>,
    }

    /// The keys of `name`'s family, built on first use.
    pub(super) fn family(name: Option<&MetricsName>) -> &'static Family {
        static UNNAMED: OnceLock<Family> = OnceLock::new();
        match name {
            None => UNNAMED.get_or_init(|| Family::new(None)),
            Some(name) => name.keys.get_or_init(|| named(name.as_str())),
        }
    }

    /// The keys of the family `name`, built once per process: a builder made per acquisition
    /// (`RedisLock::new(backend, format!("order:{id}")).metrics_name("orders")`) finds them here
    /// rather than building them again. Kept for the process's life, as an exporter keeps each
    /// label value it saw: names are few by design (a few kilobytes each).
    fn named(name: &str) -> &'static Family {
        static NAMED: OnceLock<Mutex<HashMap<String, &'static Family>>> = OnceLock::new();
        let mut named = NAMED
            .get_or_init(Mutex::default)
            .lock()
            // Only whole entries are inserted; a poisoned map is still meaningful.
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        named
            .entry(name.to_owned())
            .or_insert_with(|| Box::leak(Box::new(Family::new(Some(name)))))
    }

    impl Family {
        fn new(name: Option<&str>) -> Self {
            describe();
            let keys = |metric: &'static str, second: Option<(&'static str, &[&'static str])>| {
                let mut keys = Vec::new();
                for primitive in Primitive::ALL {
                    let mut labels =
                        vec![Label::from_static_parts("primitive", primitive.as_str())];
                    if let Some(name) = name {
                        labels.push(Label::new("name", name.to_owned()));
                    }
                    match second {
                        None => keys.push(Key::from_parts(metric, labels)),
                        Some((label, values)) => {
                            for value in values {
                                let mut labels = labels.clone();
                                labels.push(Label::from_static_parts(label, value));
                                keys.push(Key::from_parts(metric, labels));
                            }
                        }
                    }
                }
                keys
            };
            Self {
                acquire_duration: keys(ACQUIRE_DURATION, Some(("outcome", &ACQUIRE_OUTCOMES))),
                attempts: keys(ACQUIRE_ATTEMPTS, None),
                held_duration: keys(HELD_DURATION, Some(("outcome", &HELD_OUTCOMES))),
                renewals: keys(RENEWALS, Some(("outcome", &RENEWAL_OUTCOMES))),
                lost: keys(LOST, Some(("reason", &LOST_REASONS))),
                held: keys(HELD, None),
                waiting: keys(WAITING, None),
            }
        }
    }

    /// Tells the recorder installed now what each metric is (exporters print it, as Prometheus's
    /// `# HELP`).
    fn describe() {
        metrics::describe_histogram!(
            ACQUIRE_DURATION,
            Unit::Seconds,
            "Time from the call to acquire (read, write, campaign) to its result"
        );
        metrics::describe_counter!(ACQUIRE_ATTEMPTS, "Requests that tried to take the lock");
        metrics::describe_histogram!(
            HELD_DURATION,
            Unit::Seconds,
            "Time from the acquisition to the end of the hold"
        );
        metrics::describe_counter!(RENEWALS, "Renewals made by hold, by outcome");
        metrics::describe_counter!(LOST, "Leases reported lost, by reason");
        metrics::describe_gauge!(HELD, "Leases held by this process now");
        metrics::describe_gauge!(WAITING, "Tasks of this process waiting to acquire now");
    }
}

/// The recording calls, each a recorder lookup on a key built beforehand.
#[cfg(feature = "metrics")]
mod record {
    use metrics::{Key, Level, Metadata};

    static METADATA: Metadata<'static> =
        Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

    pub(super) fn counter(key: &Key, by: u64) {
        metrics::with_recorder(|recorder| recorder.register_counter(key, &METADATA).increment(by));
    }

    pub(super) fn gauge(key: &Key, delta: f64) {
        metrics::with_recorder(|recorder| {
            let gauge = recorder.register_gauge(key, &METADATA);
            match delta >= 0.0 {
                true => gauge.increment(delta),
                false => gauge.decrement(-delta),
            }
        });
    }

    pub(super) fn histogram(key: &Key, value: f64) {
        metrics::with_recorder(|recorder| {
            recorder.register_histogram(key, &METADATA).record(value)
        });
    }
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use super::*;

    #[test]
    fn builders_naming_one_family_share_its_keys() {
        let (a, b) = (
            MetricsName::new("orders".into()),
            MetricsName::new("orders".into()),
        );
        let other = MetricsName::new("invoices".into());
        assert!(std::ptr::eq(keys::family(Some(&a)), keys::family(Some(&b))));
        assert!(!std::ptr::eq(
            keys::family(Some(&a)),
            keys::family(Some(&other))
        ));
        assert!(!std::ptr::eq(keys::family(Some(&a)), keys::family(None)));
        let labels: Vec<_> = keys::family(Some(&a)).lost[Primitive::Write.index() * 4 + 2]
            .labels()
            .map(|label| (label.key().to_owned(), label.value().to_owned()))
            .collect();
        assert_eq!(
            labels,
            [
                ("primitive".to_owned(), "write".to_owned()),
                ("name".to_owned(), "orders".to_owned()),
                ("reason".to_owned(), "renewal_failed".to_owned()),
            ]
        );
    }
}
