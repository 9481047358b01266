//! Self-tests of the fault proxy (`support::proxy`) against a real server, over raw RESP.

mod support;

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::proxy::FaultProxy;
use support::{RedisServer, encode_command, resp_command};

/// Generous: the CI box has 2 noisy cores.
const PATIENCE: Duration = Duration::from_secs(10);

/// One command over a fresh connection to `addr`, off the runtime's threads.
async fn command(addr: SocketAddr, args: &[&str]) -> io::Result<Result<String, String>> {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        resp_command(addr, &args, PATIENCE)
    })
    .await
    .expect("blocking command task")
}

/// The shortest of three `PING` round trips over fresh connections through `addr`.
async fn ping_time(addr: SocketAddr) -> Duration {
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        let reply = command(addr, &["PING"])
            .await
            .expect("PING through the proxy");
        assert_eq!(reply, Ok("PONG".to_owned()));
        best = best.min(started.elapsed());
    }
    best
}

/// A connection kept open across commands, to see it break.
struct Persistent {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Persistent {
    fn connect(addr: SocketAddr) -> Persistent {
        let stream = TcpStream::connect_timeout(&addr, PATIENCE).expect("connect");
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.set_write_timeout(Some(PATIENCE)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Persistent { stream, reader }
    }

    /// `PING`, answering the reply line (`+PONG`), or the I/O error; an empty line means EOF.
    fn ping(&mut self) -> io::Result<String> {
        self.stream.write_all(&encode_command(&["PING"]))?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        Ok(line.trim_end().to_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_commands_to_the_server() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr());
    assert_eq!(proxy.upstream(), server.addr());
    assert_eq!(
        proxy.url(),
        format!("redis://127.0.0.1:{}/", proxy.addr().port())
    );
    assert_ne!(proxy.addr(), server.addr());
    assert_eq!(proxy.connections(), 0);

    let key = format!("{}forward", support::key_prefix());
    let reply = command(proxy.addr(), &["SET", &key, "through the proxy"]).await;
    assert_eq!(reply.unwrap(), Ok("OK".to_owned()));
    // Written to the real server.
    assert_eq!(
        server.command(&["GET", &key]),
        Ok("through the proxy".to_owned())
    );
    // A large value crosses in several chunks.
    let big = "x".repeat(200_000);
    let reply = command(proxy.addr(), &["SET", &key, &big]).await;
    assert_eq!(reply.unwrap(), Ok("OK".to_owned()));
    let reply = command(proxy.addr(), &["GET", &key]).await;
    assert_eq!(reply.unwrap().map(|v| v.len()), Ok(big.len()));
    assert_eq!(proxy.connections(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_delays_both_directions() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr());
    let baseline = ping_time(proxy.addr()).await;

    let latency = Duration::from_millis(400);
    proxy.set_latency(latency);
    assert_eq!(proxy.latency(), latency);
    let slow = ping_time(proxy.addr()).await;
    // The request and the reply are each delayed once: not less, and not twice (a chunk delayed on
    // both legs, or each way delayed again), which would take 4 × the latency. The best of three
    // round trips leaves a whole latency (400 ms) for a noisy machine. (A bound of `PATIENCE` would
    // mean nothing: each read of `ping_time` fails after `PATIENCE` first.)
    assert!(
        slow >= 2 * latency && slow < 3 * latency,
        "PING took {slow:?} with {latency:?} each way (baseline {baseline:?})"
    );

    proxy.set_latency(Duration::ZERO);
    let fast = ping_time(proxy.addr()).await;
    assert!(
        fast < 2 * latency,
        "PING still took {fast:?} after the latency was removed (baseline {baseline:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_all_breaks_open_connections_and_new_ones_work() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr());
    let mut open = tokio::task::spawn_blocking({
        let addr = proxy.addr();
        move || {
            let mut conn = Persistent::connect(addr);
            assert_eq!(conn.ping().unwrap(), "+PONG");
            conn
        }
    })
    .await
    .unwrap();
    assert_eq!(proxy.open_connections(), 1);

    assert_eq!(proxy.cut_all(), 1);
    assert_eq!(proxy.open_connections(), 0);
    open = tokio::task::spawn_blocking(move || {
        // EOF (an empty line) or an error: either way the connection is gone.
        match open.ping() {
            Ok(line) => assert_eq!(line, "", "a cut connection still answered"),
            Err(e) => assert_ne!(
                e.kind(),
                io::ErrorKind::WouldBlock,
                "no answer, but no EOF: {e}"
            ),
        }
        open
    })
    .await
    .unwrap();
    drop(open);

    // The server side of the cut connection is gone too.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let clients = server.command(&["CLIENT", "LIST"]).unwrap();
        // Only this CLIENT LIST's own connection remains.
        if clients.lines().count() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "upstream connections linger: {clients}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // New connections are still accepted and forwarded.
    let reply = command(proxy.addr(), &["PING"]).await;
    assert_eq!(reply.unwrap(), Ok("PONG".to_owned()));
    assert_eq!(proxy.connections(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuse_closes_new_connections_until_lifted() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr());
    proxy.set_refuse(true);
    let refused = command(proxy.addr(), &["PING"]).await;
    assert!(
        refused.is_err(),
        "a refused connection answered: {refused:?}"
    );
    assert_eq!(proxy.connections(), 0);

    proxy.set_refuse(false);
    let reply = command(proxy.addr(), &["PING"]).await;
    assert_eq!(reply.unwrap(), Ok("PONG".to_owned()));
    assert_eq!(proxy.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_proxy_closes_everything() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr());
    let addr = proxy.addr();
    let mut open = tokio::task::spawn_blocking(move || {
        let mut conn = Persistent::connect(addr);
        assert_eq!(conn.ping().unwrap(), "+PONG");
        conn
    })
    .await
    .unwrap();

    drop(proxy);
    tokio::task::spawn_blocking(move || {
        match open.ping() {
            Ok(line) => assert_eq!(line, "", "a connection outlived its proxy"),
            Err(e) => assert_ne!(
                e.kind(),
                io::ErrorKind::WouldBlock,
                "no answer, but no EOF: {e}"
            ),
        }
        // The listener goes away with the accept task.
        let deadline = Instant::now() + PATIENCE;
        while TcpStream::connect_timeout(&addr, PATIENCE).is_ok() {
            assert!(
                Instant::now() < deadline,
                "the proxy still accepts after drop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
}
