//! A Redlock release that fails on a master leaves that master armed: the guard's drop releases it in
//! the background once it answers, instead of leaving our token there for the whole TTL. (Found
//! unchecked by mutation testing: disarming every master that was not in flight passed every test.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use lock_core::memory::MemoryBackend;
use lock_core::testing::{Fault, FaultyBackend};
use lock_core::{LockBackend, Redlock};

const KEY: &str = "jobs:redlock-release";

#[test]
fn a_master_whose_release_failed_is_released_in_the_background() {
    futures::executor::block_on(async {
        let stores: Vec<MemoryBackend> = (0..3).map(|_| MemoryBackend::new()).collect();
        let flaky = Arc::new(FaultyBackend::new(stores[0].clone()));
        let nodes: Vec<Arc<dyn LockBackend>> = vec![
            flaky.clone(),
            Arc::new(stores[1].clone()),
            Arc::new(stores[2].clone()),
        ];
        let guard = Redlock::new(nodes, KEY)
            .timeout(Duration::from_secs(30))
            .acquire()
            .await
            .unwrap();
        assert!(stores.iter().all(|store| store.get(KEY).is_some()));

        flaky.set_fault(Fault::Error);
        let released = guard.release().await;
        assert!(
            matches!(released, Ok(true)),
            "two of three masters released: {released:?}"
        );
        assert!(
            stores[0].get(KEY).is_some(),
            "the failed master still holds it"
        );

        flaky.set_fault(Fault::None);
        let started = Instant::now();
        while stores[0].get(KEY).is_some() && started.elapsed() < Duration::from_secs(5) {
            futures_timer::Delay::new(Duration::from_millis(20)).await;
        }
        assert_eq!(
            stores[0].get(KEY),
            None,
            "released in the background once the master answered"
        );
    });
}
