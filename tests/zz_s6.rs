mod support;
use redlease::Semaphore;
use std::time::{Duration, Instant};
use support::inputs::Input;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_deadpool() {
    let server = support::RedisServer::start();
    for input in [Input::DeadpoolPool, Input::FredClient] {
        let client = input
            .client(&server.url(), &support::inputs::Options::new())
            .await;
        let sem = Semaphore::new(client.backend(None), format!("s6:{}", input.name()), 4)
            .timeout(Duration::from_secs(10))
            .wait_timeout(Some(Duration::from_secs(30)));
        let started = Instant::now();
        let deadline = started + Duration::from_secs(1);
        let hs: Vec<_> = (0..32)
            .map(|_| {
                let sem = sem.clone();
                tokio::spawn(async move {
                    let mut n = 0;
                    let mut slowest = Duration::ZERO;
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        let p = sem.acquire().await.unwrap();
                        slowest = slowest.max(t.elapsed());
                        n += 1;
                        p.release().await.unwrap();
                    }
                    (n, slowest)
                })
            })
            .collect();
        let mut out = vec![];
        for h in hs {
            out.push(h.await.unwrap());
        }
        println!("{}: {:?} in {:?}", input.name(), out, started.elapsed());
    }
}
