//! The in-memory backend passes the whole conformance suite, under tokio and under a non-tokio executor:
//! lock-core needs no particular runtime.

use std::sync::Arc;

use lock_core::memory::MemoryBackend;
use lock_core::testing::run_all;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_backend_under_tokio() {
    let backend = MemoryBackend::new();
    run_all(Arc::new(backend.clone()), &backend, "tokio:").await;
}

#[test]
fn memory_backend_under_futures_executor() {
    let backend = MemoryBackend::new();
    futures::executor::block_on(run_all(Arc::new(backend.clone()), &backend, "futures:"));
}
