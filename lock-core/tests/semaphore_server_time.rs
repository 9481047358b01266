//! A semaphore's expiries are on the server's clock (`TIME` inside the script), never the client's
//! (pitfall 40): a server whose wall clock is a day ahead scores its holders a day ahead, and the
//! permits still live exactly their TTL.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lock_core::Semaphore;
use lock_core::memory::MemoryBackend;

const DAY_MICROS: i64 = 86_400_000_000;

#[test]
fn holders_are_scored_on_the_servers_clock() {
    futures::executor::block_on(async {
        let backend = MemoryBackend::with_clock_offset(DAY_MICROS);
        let sem =
            Semaphore::new(backend.clone(), "server-time", 2).timeout(Duration::from_secs(10));
        let permit = sem.acquire().await.expect("acquire");
        let client_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_millis() as i64;
        let members = backend.members("server-time");
        let (_, score) = members
            .iter()
            .find(|(m, _)| m.ends_with(permit.token()))
            .expect("the permit's member");
        let ahead = score - client_ms;
        assert!(
            (86_400_000 + 9_000..=86_400_000 + 10_000).contains(&ahead),
            "scored by the server's clock plus the TTL, not the client's: {ahead} ms ahead"
        );
        let ttl = backend.ttl("server-time").expect("the key expires");
        assert!(
            ttl > Duration::from_secs(9) && ttl <= Duration::from_secs(10),
            "the key lives the TTL, not a day: {ttl:?}"
        );
        assert!(permit.valid_for() <= ttl);
        assert!(permit.release().await.expect("release"));
    });
}
