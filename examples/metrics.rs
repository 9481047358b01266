//! Metrics in Prometheus's text format: a few acquisitions of an `orders` lock (one that waits and
//! times out), then the metrics as a scrape would see them. redlease records through the `metrics`
//! facade (feature `metrics`); the application installs the exporter, here
//! `metrics-exporter-prometheus` without its HTTP listener (serve `handle.render()` from your own
//! endpoint, or enable the exporter's `http-listener` feature).
//!
//! Runs on the in-memory backend, so it needs no server: `cargo run --example metrics`.

use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use redlease::memory::MemoryBackend;
use redlease::{LockError, RedisLock};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Histogram buckets in seconds, for the two duration metrics.
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_duration_seconds".into()),
            &[0.001, 0.01, 0.1, 1.0, 10.0, 60.0],
        )?
        .install_recorder()?;

    let backend = MemoryBackend::new();
    let lock = |key: &str| {
        RedisLock::new(backend.clone(), key)
            .timeout(Duration::from_secs(5))
            .wait_timeout(Some(Duration::from_millis(200)))
            // Keys are never a label; a name for the family is.
            .metrics_name("orders")
    };

    for id in 0..3 {
        let order = lock(&format!("order:{id}"));
        order.run(async |_guard| { /* work */ }).await?;
    }
    // A second worker waits for order 7 while the first holds it, and times out.
    let first = lock("order:7").acquire().await?;
    match lock("order:7").acquire().await {
        Err(LockError::Timeout { .. }) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    drop(first);

    print!("{}", handle.render());
    Ok(())
}
