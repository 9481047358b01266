//! The eviction-policy check: a backend whose server runs an evicting `maxmemory-policy`
//! (`allkeys-lru` here) logs one `warn` naming the policy and the fix (`noeviction`), once per backend
//! however many calls it and its clones make; under `noeviction` it logs none. Both adapters, every
//! Redis input, against real servers.

mod support;

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redlease::{LockBackend, RedisLock};
use support::inputs::{Input, Options};
use support::{RedisServer, key_prefix};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// The `warn` events logged while installed, each as its fields' text.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

impl Warnings {
    /// The warnings about the eviction policy so far.
    fn about_eviction(&self) -> Vec<String> {
        let all = self.0.lock().unwrap();
        all.iter()
            .filter(|text| text.contains("maxmemory-policy"))
            .cloned()
            .collect()
    }
}

impl<S: Subscriber> Layer<S> for Warnings {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if *event.metadata().level() != Level::WARN {
            return;
        }
        struct Text<'a>(&'a mut String);
        impl Visit for Text<'_> {
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                let _ = write!(self.0, "{}={value:?} ", field.name());
            }
        }
        let mut text = String::new();
        event.record(&mut Text(&mut text));
        self.0.lock().unwrap().push(text);
    }
}

/// A backend of `input` and a clone of it (they share the check), as the adapter builds them.
async fn backend_and_clone(
    input: Input,
    url: &str,
) -> (Arc<dyn LockBackend>, Arc<dyn LockBackend>) {
    let raw = input.client(url, &Options::new()).await;
    if let Some(fred) = raw.fred() {
        return (Arc::new(fred.clone()), Arc::new(fred));
    }
    let deadpool = raw.deadpool().expect("a Redis input");
    (Arc::new(deadpool.clone()), Arc::new(deadpool))
}

/// Locks, inspects and releases through both backends a few times, then gives the background check
/// time to answer; returns the eviction warnings logged meanwhile.
async fn use_backend(input: Input, url: &str) -> Vec<String> {
    let warnings = Warnings::default();
    // A current-thread runtime: the check's spawned task runs on this thread, under this subscriber.
    let _installed =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(warnings.clone()));
    let (backend, clone) = backend_and_clone(input, url).await;
    let key = format!("{}eviction:{input}", key_prefix());
    for round in 0..3 {
        for backend in [&backend, &clone] {
            let lock = RedisLock::new(backend.clone(), key.clone()).timeout(Duration::from_secs(5));
            let guard = lock.acquire().await.expect("acquire");
            lock.inspect().await.expect("inspect");
            assert!(guard.release().await.expect("release"), "round {round}");
        }
    }
    // The check runs in the background: give it its call, then a margin for a second warning that
    // must not come.
    for _ in 0..50 {
        if !warnings.about_eviction().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    warnings.about_eviction()
}

#[tokio::test(flavor = "current_thread")]
async fn an_evicting_policy_is_warned_about_once_per_backend() {
    let server = RedisServer::start_with_args(&["--maxmemory-policy", "allkeys-lru"]);
    for input in Input::REDIS {
        let warnings = use_backend(input, &server.url()).await;
        assert_eq!(warnings.len(), 1, "{input}: one warning: {warnings:?}");
        let warning = &warnings[0];
        assert!(
            warning.contains("allkeys-lru"),
            "{input}: names the policy: {warning}"
        );
        assert!(
            warning.contains("noeviction"),
            "{input}: names the fix: {warning}"
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn noeviction_is_not_warned_about() {
    let server = RedisServer::start_with_args(&["--maxmemory-policy", "noeviction"]);
    for input in Input::REDIS {
        let warnings = use_backend(input, &server.url()).await;
        assert!(warnings.is_empty(), "{input}: {warnings:?}");
    }
}
