//! Batched renewals against a real server: 2,000 leases held at once through `hold` for three TTLs are
//! all kept, and the server runs far fewer scripts than there were renewals (one `RENEW_MANY` renews
//! many leases), on the fred adapter and on the deadpool adapter.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::FutureExt;
use redlease::RedisLock;
use support::inputs::{Input, Options};
use support::key_prefix;

const LEASES: usize = 2_000;
const TTL: Duration = Duration::from_millis(1_500);

async fn many_leases_are_kept_with_few_script_calls(input: Input) {
    let server = support::RedisServer::start();
    let backend = input.connect(&server.url(), Options::new()).await;
    let prefix = format!("{}batch", key_prefix());
    let scripts = || server.calls("evalsha") + server.calls("eval");
    // Each lease is held from its grant until one shared signal, fired three TTLs after the last
    // grant (acquiring 2,000 one after the other can take longer than a TTL).
    let (stop, stopped) = futures::channel::oneshot::channel::<()>();
    let stopped = stopped.map(drop).shared();
    let acquired = Arc::new(AtomicUsize::new(0));
    let all_held = Arc::new(tokio::sync::Notify::new());
    let mut holds = Vec::with_capacity(LEASES);
    for n in 0..LEASES {
        let lock = RedisLock::new(backend.clone(), format!("{prefix}:{n}")).timeout(TTL);
        let (acquired, all_held, stopped) = (acquired.clone(), all_held.clone(), stopped.clone());
        holds.push(tokio::spawn(async move {
            let guard = lock.acquire().await.expect("acquire");
            if acquired.fetch_add(1, Ordering::Relaxed) + 1 == LEASES {
                all_held.notify_one();
            }
            let held = guard.hold(stopped).await;
            (guard, held)
        }));
    }
    all_held.notified().await;
    let before = scripts();
    let held = 3 * TTL;
    tokio::time::sleep(held).await;
    let ran = scripts() - before;
    let _ = stop.send(());
    let mut guards = Vec::with_capacity(LEASES);
    let mut lost = Vec::new();
    for hold in holds {
        let (guard, outcome) = hold.await.expect("a hold task");
        if let Err(error) = outcome {
            lost.push(error);
        }
        guards.push(guard);
    }
    assert!(
        lost.is_empty(),
        "{} of {LEASES} leases lost on {input:?}, first: {}",
        lost.len(),
        lost[0]
    );
    // Held alone, each lease renews about every 0.4–0.5 s (a third of the TTL, jittered): 3 TTLs of
    // 2,000 leases are at least 18,000 renewals. Batched, a call renews up to 500 of them.
    let renewals_alone = (LEASES as u64) * 9;
    assert!(
        ran * 20 < renewals_alone,
        "{ran} scripts ran on {input:?} to keep {LEASES} leases for {held:?}: not batched"
    );
    assert!(ran > 0, "nothing was renewed on {input:?}");
    for guard in guards {
        assert!(guard.release().await.expect("release"), "released ours");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fred_keeps_2000_leases_with_few_script_calls() {
    many_leases_are_kept_with_few_script_calls(Input::FredClient).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadpool_keeps_2000_leases_with_few_script_calls() {
    many_leases_are_kept_with_few_script_calls(Input::DeadpoolPool).await;
}
