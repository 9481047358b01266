//! The metrics (feature `metrics`) and the traces of issue 12, read back through `metrics-util`'s
//! debugging recorder and a capturing `tracing` layer: an acquire, a timeout, a renewal, a forced loss
//! (the key deleted under a `hold`) and a drop, on the in-memory backend and on a real `redis-server`
//! through both adapters; every primitive under its `primitive` label; the spans and the `warn` on a
//! loss.
//!
//! One debugging recorder is installed for the whole binary (tests run in parallel): each scenario
//! uses a `metrics_name` of its own and reads only the metrics with that `name` label.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use redlease::memory::MemoryBackend;
use redlease::{Election, LockBackend, LockError, RedisLock, Redlock, RwLock, Semaphore};
use support::RedisServer;
use support::inputs::{Input, Options};

// ---------------------------------------------------------------------------------------------
// Reading metrics back.

/// Every value seen so far, by metric name and sorted labels: the debugging recorder answers what
/// changed since its last snapshot (counters and gauges reset to zero, histograms drained), so the
/// sums are kept here, for every test of the binary.
#[derive(Default)]
struct Seen {
    counters: HashMap<MetricId, u64>,
    gauges: HashMap<MetricId, f64>,
    histograms: HashMap<MetricId, Vec<f64>>,
}

/// A metric's name and its labels, sorted.
type MetricId = (String, Vec<(String, String)>);

/// One test of this binary at a time: the spans test's subscriber is its thread's default, and spans
/// made at the same moment by another test's threads race with it over the callsites' cached interest
/// (a callsite first hit elsewhere while the subscriber was being set can stay disabled for it).
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    SERIAL.get_or_init(Default::default).lock().await
}

fn recorder() -> &'static (Snapshotter, Mutex<Seen>) {
    static RECORDER: OnceLock<(Snapshotter, Mutex<Seen>)> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("the only recorder of this binary");
        (snapshotter, Mutex::new(Seen::default()))
    })
}

/// The metrics of one `name` label.
struct Metrics {
    name: String,
}

impl Metrics {
    fn new(name: impl Into<String>) -> Self {
        recorder();
        Self { name: name.into() }
    }

    fn refresh(&self) -> std::sync::MutexGuard<'static, Seen> {
        let (snapshotter, seen) = recorder();
        let mut seen = seen.lock().unwrap();
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let (_, key) = key.into_parts();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|label| (label.key().to_owned(), label.value().to_owned()))
                .collect();
            labels.sort();
            let id = (key.name().to_owned(), labels);
            match value {
                DebugValue::Counter(value) => *seen.counters.entry(id).or_default() += value,
                DebugValue::Gauge(value) => {
                    *seen.gauges.entry(id).or_default() += value.into_inner()
                }
                DebugValue::Histogram(values) => seen
                    .histograms
                    .entry(id)
                    .or_default()
                    .extend(values.into_iter().map(|v| v.into_inner())),
            }
        }
        seen
    }

    fn id(&self, metric: &str, labels: &[(&str, &str)]) -> MetricId {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .chain([("name".to_owned(), self.name.clone())])
            .collect();
        labels.sort();
        (metric.to_owned(), labels)
    }

    fn counter(&self, metric: &str, labels: &[(&str, &str)]) -> u64 {
        let id = self.id(metric, labels);
        self.refresh().counters.get(&id).copied().unwrap_or(0)
    }

    fn gauge(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        let id = self.id(metric, labels);
        self.refresh().gauges.get(&id).copied().unwrap_or(0.0)
    }

    fn histogram(&self, metric: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        let id = self.id(metric, labels);
        self.refresh()
            .histograms
            .get(&id)
            .cloned()
            .unwrap_or_default()
    }
}

const ACQUIRE_DURATION: &str = "redlease_acquire_duration_seconds";
const ATTEMPTS: &str = "redlease_acquire_attempts_total";
const HELD_DURATION: &str = "redlease_held_duration_seconds";
const RENEWALS: &str = "redlease_renewals_total";
const LOST: &str = "redlease_lost_total";
const HELD: &str = "redlease_held";
const WAITING: &str = "redlease_waiting";

// ---------------------------------------------------------------------------------------------
// Where the scenarios run.

/// A backend, and a way to delete a key behind the lock's back.
struct Target {
    label: &'static str,
    backend: Arc<dyn LockBackend>,
    memory: Option<MemoryBackend>,
}

impl Target {
    fn memory() -> Self {
        let memory = MemoryBackend::new();
        Self {
            label: "memory",
            backend: Arc::new(memory.clone()),
            memory: Some(memory),
        }
    }

    async fn redis(server: &RedisServer, input: Input) -> Self {
        Self {
            label: input.name(),
            backend: input.connect(&server.url(), Options::new()).await,
            memory: None,
        }
    }

    /// Sets `key` to another holder's token for `ttl`, as another process would: tasks of this
    /// process then retry rather than wait in line behind a local holder.
    fn occupy(&self, server: Option<&RedisServer>, key: &str, ttl: Duration) {
        match (&self.memory, server) {
            (Some(memory), _) => memory.set(key, "another-process", ttl),
            (None, Some(server)) => {
                let ms = ttl.as_millis().to_string();
                server
                    .command(&["SET", key, "another-process", "PX", &ms])
                    .expect("SET");
            }
            (None, None) => unreachable!("a Redis target has a server"),
        }
    }

    fn delete(&self, server: Option<&RedisServer>, key: &str) {
        match (&self.memory, server) {
            (Some(memory), _) => {
                memory.delete(key);
            }
            (None, Some(server)) => {
                server.command(&["DEL", key]).expect("DEL");
            }
            (None, None) => unreachable!("a Redis target has a server"),
        }
    }
}

/// The five scenarios of the issue on one backend, each under a `name` of its own.
async fn scenarios(target: &Target, server: Option<&RedisServer>) {
    let t = target.label;
    let prefix = support::key_prefix();
    let lock = |scenario: &str| {
        RedisLock::new(target.backend.clone(), format!("{prefix}{scenario}"))
            .metrics_name(format!("{t}-{prefix}{scenario}"))
    };
    let metrics = |scenario: &str| Metrics::new(format!("{t}-{prefix}{scenario}"));
    let p = [("primitive", "lock")];
    let with = |outcome: &'static str| [("primitive", "lock"), ("outcome", outcome)];

    // An acquire and a release.
    let (m, l) = (metrics("acquire"), lock("acquire"));
    let guard = l.acquire().await.expect("acquire");
    assert_eq!(
        m.histogram(ACQUIRE_DURATION, &with("acquired")).len(),
        1,
        "{t}"
    );
    assert_eq!(m.counter(ATTEMPTS, &p), 1, "{t}");
    assert_eq!(m.gauge(HELD, &p), 1.0, "{t}: held while the guard lives");
    assert_eq!(m.gauge(WAITING, &p), 0.0, "{t}: nobody waits once acquired");
    assert!(guard.release().await.unwrap());
    assert_eq!(m.gauge(HELD, &p), 0.0, "{t}");
    assert_eq!(
        m.histogram(HELD_DURATION, &with("released")).len(),
        1,
        "{t}"
    );
    assert!(m.histogram(HELD_DURATION, &with("lost")).is_empty(), "{t}");

    // A timeout: the key is held by another process, the wait runs out after more than one attempt.
    let (m, l) = (metrics("timeout"), lock("timeout"));
    target.occupy(server, l.key(), Duration::from_secs(5));
    let waiter = l.clone().wait_timeout(Some(Duration::from_millis(150)));
    let waited = tokio::spawn(async move { waiter.acquire().await.map(drop) });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(m.gauge(WAITING, &p), 1.0, "{t}: one task waits");
    assert!(
        matches!(waited.await.unwrap(), Err(LockError::Timeout { .. })),
        "{t}"
    );
    let timeouts = m.histogram(ACQUIRE_DURATION, &with("timeout"));
    assert_eq!(timeouts.len(), 1, "{t}");
    assert!(
        timeouts[0] >= 0.15,
        "{t}: waited {}s, at least the wait",
        timeouts[0]
    );
    assert!(m.counter(ATTEMPTS, &p) >= 2, "{t}: the waiter retried");
    assert_eq!(m.gauge(WAITING, &p), 0.0, "{t}");
    assert_eq!(m.gauge(HELD, &p), 0.0, "{t}");

    // Renewals: `hold` renews at about a third of the TTL.
    let (m, l) = (metrics("renewal"), lock("renewal"));
    let l = l.timeout(Duration::from_millis(300));
    let guard = l.acquire().await.expect("acquire");
    guard
        .hold(tokio::time::sleep(Duration::from_millis(450)))
        .await
        .expect("held through renewals");
    assert!(m.counter(RENEWALS, &with("ok")) >= 1, "{t}");
    assert_eq!(m.counter(RENEWALS, &with("failed")), 0, "{t}");
    assert!(guard.release().await.unwrap());

    // A forced loss: the key deleted under a `hold`.
    let (m, l) = (metrics("loss"), lock("loss"));
    let l = l.timeout(Duration::from_millis(300));
    let guard = l.acquire().await.expect("acquire");
    target.delete(server, l.key());
    let lost = guard.hold(tokio::time::sleep(Duration::from_secs(5))).await;
    assert!(matches!(lost, Err(LockError::Lost { .. })), "{t}: {lost:?}");
    let taken_over = [("primitive", "lock"), ("reason", "taken_over")];
    assert_eq!(m.counter(LOST, &taken_over), 1, "{t}");
    assert_eq!(m.counter(RENEWALS, &with("failed")), 1, "{t}");
    assert_eq!(m.histogram(HELD_DURATION, &with("lost")).len(), 1, "{t}");
    assert_eq!(m.gauge(HELD, &p), 0.0, "{t}: a lost lease is held no more");
    // Releasing it afterwards reports nothing twice.
    assert!(!guard.release().await.unwrap());
    assert_eq!(m.counter(LOST, &taken_over), 1, "{t}");
    assert_eq!(m.histogram(HELD_DURATION, &with("lost")).len(), 1, "{t}");

    // A drop without release.
    let (m, l) = (metrics("drop"), lock("drop"));
    let guard = l.acquire().await.expect("acquire");
    assert_eq!(m.gauge(HELD, &p), 1.0, "{t}");
    drop(guard);
    assert_eq!(m.gauge(HELD, &p), 0.0, "{t}");
    assert_eq!(m.histogram(HELD_DURATION, &with("dropped")).len(), 1, "{t}");
    assert!(
        m.histogram(HELD_DURATION, &with("released")).is_empty(),
        "{t}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_metric_on_the_memory_backend() {
    let _one_at_a_time = serial().await;
    scenarios(&Target::memory(), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_metric_on_a_real_redis_through_both_adapters() {
    let _one_at_a_time = serial().await;
    let server = tokio::task::block_in_place(RedisServer::start);
    for input in [Input::FredClient, Input::DeadpoolPool] {
        let target = Target::redis(&server, input).await;
        scenarios(&target, Some(&server)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_primitive_reports_under_its_label() {
    let _one_at_a_time = serial().await;
    let backend = MemoryBackend::new();
    let prefix = support::key_prefix();
    let name = format!("{prefix}primitives");
    let m = Metrics::new(name.clone());
    let acquired = |primitive: &'static str| {
        m.histogram(
            ACQUIRE_DURATION,
            &[("primitive", primitive), ("outcome", "acquired")],
        )
        .len()
    };
    let released = |primitive: &'static str| {
        m.histogram(
            HELD_DURATION,
            &[("primitive", primitive), ("outcome", "released")],
        )
        .len()
    };

    let fair = RedisLock::new(backend.clone(), format!("{prefix}fair"))
        .fair(true)
        .metrics_name(name.clone());
    assert!(fair.acquire().await.unwrap().release().await.unwrap());
    assert_eq!((acquired("fair_lock"), released("fair_lock")), (1, 1));

    let semaphore =
        Semaphore::new(backend.clone(), format!("{prefix}sem"), 2).metrics_name(name.clone());
    assert!(semaphore.acquire().await.unwrap().release().await.unwrap());
    assert_eq!((acquired("semaphore"), released("semaphore")), (1, 1));

    let rw = RwLock::new(backend.clone(), format!("{prefix}rw")).metrics_name(name.clone());
    assert!(rw.read().await.unwrap().release().await.unwrap());
    assert_eq!((acquired("read"), released("read")), (1, 1));
    let write = rw.write().await.unwrap();
    assert_eq!(m.gauge(HELD, &[("primitive", "write")]), 1.0);
    // A downgrade ends the write hold and starts a read hold.
    let read = write.downgrade().await.unwrap();
    assert_eq!((acquired("write"), released("write")), (1, 1));
    assert_eq!(m.gauge(HELD, &[("primitive", "write")]), 0.0);
    assert_eq!(m.gauge(HELD, &[("primitive", "read")]), 1.0);
    assert!(read.release().await.unwrap());
    assert_eq!(released("read"), 2);

    let redlock = Redlock::new(
        [
            MemoryBackend::new(),
            MemoryBackend::new(),
            MemoryBackend::new(),
        ],
        format!("{prefix}redlock"),
    )
    .metrics_name(name.clone());
    assert!(redlock.acquire().await.unwrap().release().await.unwrap());
    assert_eq!((acquired("redlock"), released("redlock")), (1, 1));
    assert_eq!(m.counter(ATTEMPTS, &[("primitive", "redlock")]), 1);

    let election =
        Election::new(backend.clone(), format!("{prefix}election")).metrics_name(name.clone());
    assert!(election.campaign().await.unwrap().resign().await.unwrap());
    assert_eq!((acquired("election"), released("election")), (1, 1));
    // The election's lock is not counted as a plain lock as well.
    assert_eq!(acquired("lock"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_acquisition_counts_as_a_timeout_and_stops_waiting() {
    let _one_at_a_time = serial().await;
    let backend = MemoryBackend::new();
    let prefix = support::key_prefix();
    let m = Metrics::new(format!("{prefix}cancelled"));
    let lock = RedisLock::new(backend, format!("{prefix}cancelled"))
        .metrics_name(format!("{prefix}cancelled"));
    let _holder = lock.acquire().await.unwrap();
    let gave_up = tokio::time::timeout(Duration::from_millis(100), lock.acquire()).await;
    assert!(gave_up.is_err(), "still waiting when cancelled");
    let p = [("primitive", "lock")];
    assert_eq!(m.gauge(WAITING, &p), 0.0);
    assert_eq!(
        m.histogram(
            ACQUIRE_DURATION,
            &[("primitive", "lock"), ("outcome", "timeout")]
        )
        .len(),
        1
    );
}

#[tokio::test]
async fn an_empty_metrics_name_is_invalid() {
    let _one_at_a_time = serial().await;
    let lock = RedisLock::new(MemoryBackend::new(), "k").metrics_name("");
    match lock.acquire().await {
        Err(LockError::InvalidArgument { argument, .. }) => assert_eq!(argument, "metrics_name"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    assert_eq!(lock.get_metrics_name(), Some(""));
}

// ---------------------------------------------------------------------------------------------
// Traces.

mod traces {
    use std::fmt::Debug;
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Level, Subscriber};
    use tracing_subscriber::layer::{Context, Layer};
    use tracing_subscriber::registry::LookupSpan;

    /// A span as it closed, or an event, with its fields as text.
    #[derive(Debug, Clone)]
    pub struct Seen {
        pub name: String,
        pub level: Level,
        pub fields: Vec<(String, String)>,
        /// For an event: the spans it happened in, innermost first.
        pub scope: Vec<String>,
    }

    impl Seen {
        pub fn field(&self, name: &str) -> Option<&str> {
            self.fields
                .iter()
                .find(|(field, _)| field == name)
                .map(|(_, value)| value.as_str())
        }
    }

    #[derive(Default)]
    struct Fields(Vec<(String, String)>);

    impl Visit for Fields {
        fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
            self.0.retain(|(name, _)| name != field.name());
            self.0.push((field.name().to_owned(), format!("{value:?}")));
        }

        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.retain(|(name, _)| name != field.name());
            self.0.push((field.name().to_owned(), value.to_owned()));
        }
    }

    /// Keeps every closed span and every event.
    #[derive(Clone, Default)]
    pub struct Capture {
        pub spans: Arc<Mutex<Vec<Seen>>>,
        pub events: Arc<Mutex<Vec<Seen>>>,
    }

    impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
        fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
            let mut fields = Fields::default();
            attrs.record(&mut fields);
            if let Some(span) = ctx.span(id) {
                span.extensions_mut().insert(fields);
            }
        }

        fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
            if let Some(span) = ctx.span(id)
                && let Some(fields) = span.extensions_mut().get_mut::<Fields>()
            {
                values.record(fields);
            }
        }

        fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
            let mut fields = Fields::default();
            event.record(&mut fields);
            let scope = ctx
                .event_scope(event)
                .map(|scope| scope.map(|span| span.name().to_owned()).collect())
                .unwrap_or_default();
            self.events.lock().unwrap().push(Seen {
                name: event.metadata().name().to_owned(),
                level: *event.metadata().level(),
                fields: fields.0,
                scope,
            });
        }

        fn on_close(&self, id: Id, ctx: Context<'_, S>) {
            if let Some(span) = ctx.span(&id) {
                let fields = span
                    .extensions()
                    .get::<Fields>()
                    .map(|fields| fields.0.clone())
                    .unwrap_or_default();
                self.spans.lock().unwrap().push(Seen {
                    name: span.name().to_owned(),
                    level: *span.metadata().level(),
                    fields,
                    scope: Vec::new(),
                });
            }
        }
    }
}

/// On one thread (the subscriber is this thread's default): an acquisition, a renewed hold, a
/// release, and a loss under `hold`, each one span with its fields, and the loss one `warn`.
#[tokio::test(flavor = "current_thread")]
async fn spans_for_acquire_hold_release_and_a_warn_on_loss() {
    let _one_at_a_time = serial().await;
    use tracing_subscriber::layer::SubscriberExt;

    let capture = traces::Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let _default = tracing::subscriber::set_default(subscriber);

    let backend = MemoryBackend::new();
    let prefix = support::key_prefix();
    let key = format!("{prefix}traced");
    let lock = RedisLock::new(backend.clone(), key.clone())
        .timeout(Duration::from_millis(300))
        .wait_timeout(Some(Duration::from_secs(2)))
        .metrics_name("traced");

    // Held by another process for 100 ms: the acquisition retries until then.
    backend.set(&key, "another-process", Duration::from_millis(100));
    let second = lock.acquire().await.unwrap();
    second
        .hold(tokio::time::sleep(Duration::from_millis(250)))
        .await
        .unwrap();
    backend.delete(&key);
    let lost = second
        .hold(tokio::time::sleep(Duration::from_secs(5)))
        .await;
    assert!(matches!(lost, Err(LockError::Lost { .. })));
    assert!(!second.release().await.unwrap());
    let third = lock.acquire().await.unwrap();
    assert!(third.release().await.unwrap());

    let spans = capture.spans.lock().unwrap().clone();
    let named = |name: &str| -> Vec<traces::Seen> {
        spans
            .iter()
            .filter(|span| span.name == name)
            .cloned()
            .collect()
    };
    let acquires = named("redlease.acquire");
    assert_eq!(acquires.len(), 2, "one span per acquisition: {acquires:?}");
    for span in &acquires {
        assert_eq!(span.field("key"), Some(key.as_str()));
        assert_eq!(span.field("primitive"), Some("lock"));
        assert_eq!(span.field("name"), Some("traced"));
        assert!(span.field("waited").is_some(), "{span:?}");
    }
    let retried: u32 = acquires[0].field("attempts").unwrap().parse().unwrap();
    assert!(retried >= 2, "the waiter retried: {retried}");

    let holds = named("redlease.hold");
    assert_eq!(holds.len(), 2, "{holds:?}");
    let renewals: u64 = holds[0].field("renewals").unwrap().parse().unwrap();
    assert!(renewals >= 1, "{holds:?}");

    let releases = named("redlease.release");
    assert_eq!(releases.len(), 2, "{releases:?}");
    // The lost lease's release answers that it was not ours, the next one that it was.
    assert_eq!(releases[0].field("released"), Some("false"));
    assert_eq!(releases[1].field("released"), Some("true"));

    let events = capture.events.lock().unwrap().clone();
    let retries: Vec<_> = events
        .iter()
        .filter(|e| e.level == Level::DEBUG && e.field("message") == Some("retrying"))
        .collect();
    // The second acquisition got in at once.
    assert_eq!(acquires[1].field("attempts"), Some("1"));
    assert_eq!(
        retries.len() as u32,
        retried - 1,
        "one debug event per retry"
    );
    assert!(
        retries
            .iter()
            .all(|e| e.scope.first().map(String::as_str) == Some("redlease.acquire"))
    );
    let warns: Vec<_> = events.iter().filter(|e| e.level == Level::WARN).collect();
    assert_eq!(warns.len(), 1, "one warn, for the loss: {warns:?}");
    assert_eq!(warns[0].field("message"), Some("lock lost"));
    assert_eq!(warns[0].field("why"), Some("taken_over"));
    assert!(
        warns[0]
            .field("reason")
            .is_some_and(|r| r.contains("another holder"))
    );
    assert_eq!(
        warns[0].scope.first().map(String::as_str),
        Some("redlease.hold")
    );
}

use tracing::Level;
