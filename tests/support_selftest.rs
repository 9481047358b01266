//! Self-tests of the integration-test support module (no lock code involved).

mod support;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{RedisServer, encode_command, key_prefix, redis_url};

/// Generous: the CI box has 2 noisy cores.
const PATIENCE: Duration = Duration::from_secs(10);

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[test]
fn server_starts_and_answers_ping() {
    let server = RedisServer::start();
    assert_eq!(server.command(&["PING"]), Ok("PONG".to_owned()));
    assert_eq!(
        server.url(),
        format!("redis://127.0.0.1:{}/", server.port())
    );
    assert_eq!(server.addr().port(), server.port());
    assert!(server.addr().ip().is_loopback());
    assert!(server.is_running());
    assert!(server.pid().is_some());
    // Persistence is off and the data dir is not the repository.
    assert_eq!(
        server.command(&["CONFIG", "GET", "appendonly"]),
        Ok("appendonly\nno".to_owned())
    );
    let dir = server.command(&["CONFIG", "GET", "dir"]).unwrap();
    let cwd = std::env::current_dir().unwrap();
    assert!(
        !dir.starts_with(&*cwd.to_string_lossy()),
        "redis dir {dir:?} must not be the repo"
    );
}

#[test]
fn command_set_get_round_trip_and_rendering() {
    let server = RedisServer::start();
    let key = format!("{}k", key_prefix());
    assert_eq!(
        server.command(&["SET", &key, "hello world"]),
        Ok("OK".into())
    );
    assert_eq!(server.command(&["GET", &key]), Ok("hello world".into()));
    assert_eq!(server.command(&["GET", "missing"]), Ok("(nil)".into()));
    assert_eq!(server.command(&["INCR", "counter"]), Ok("1".into()));
    assert_eq!(
        server.command(&["INCRBY", "counter", "-5"]),
        Ok("-4".into())
    );
    assert_eq!(
        server.command(&["RPUSH", "list", "a", "", "c"]),
        Ok("3".into())
    );
    assert_eq!(
        server.command(&["LRANGE", "list", "0", "-1"]),
        Ok("a\n\nc".into())
    );
    assert_eq!(
        server.command(&["LRANGE", "nolist", "0", "-1"]),
        Ok("".into())
    );
    let err = server.command(&["NOSUCHCOMMAND"]).unwrap_err();
    assert!(err.starts_with("-ERR"), "{err}");
    let err = server.command(&["INCR", &key]).unwrap_err();
    assert!(err.starts_with("-ERR"), "{err}");
    let err = server.command(&["LPUSH", &key, "x"]).unwrap_err();
    assert!(err.starts_with("-WRONGTYPE"), "{err}");
    // Values with CRLF and non-ASCII survive the round trip.
    assert_eq!(
        server.command(&["SET", "crlf", "a\r\nb ü"]),
        Ok("OK".into())
    );
    assert_eq!(server.command(&["GET", "crlf"]), Ok("a\r\nb ü".into()));
    // Scripts work (the lock implementation relies on them).
    assert_eq!(
        server.command(&["EVAL", "return {1, 'x', false}", "0"]),
        Ok("1\nx\n(nil)".into())
    );
}

#[test]
fn kill_makes_the_port_refuse_connections() {
    let mut server = RedisServer::start();
    let addr = server.addr();
    assert_eq!(server.command(&["PING"]), Ok("PONG".into()));
    server.kill();
    assert!(!server.is_running());
    assert!(server.pid().is_none());
    let err = TcpStream::connect_timeout(&addr, PATIENCE).expect_err("port must refuse");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    assert!(server.command_timeout(&["PING"], PATIENCE).is_err());
    // Killing twice is a no-op.
    server.kill();
}

#[test]
fn restart_brings_back_an_empty_server_on_the_same_port() {
    let mut server = RedisServer::start();
    let port = server.port();
    let url = server.url();
    let old_pid = server.pid();
    assert_eq!(server.command(&["SET", "survivor", "1"]), Ok("OK".into()));
    // Even an explicit SAVE must not resurrect data after a restart.
    assert_eq!(server.command(&["SAVE"]), Ok("OK".into()));

    server.restart();
    assert_eq!(server.port(), port);
    assert_eq!(server.url(), url);
    assert_ne!(server.pid(), old_pid);
    assert_eq!(server.command(&["PING"]), Ok("PONG".into()));
    assert_eq!(server.command(&["GET", "survivor"]), Ok("(nil)".into()));
    assert_eq!(server.command(&["DBSIZE"]), Ok("0".into()));

    // Restart after an explicit kill works too.
    server.kill();
    server.restart();
    assert_eq!(server.port(), port);
    assert_eq!(server.command(&["PING"]), Ok("PONG".into()));
}

#[test]
fn pause_makes_commands_time_out_and_resume_answers_them() {
    let server = RedisServer::start();
    assert_eq!(server.command(&["PING"]), Ok("PONG".into()));

    server.pause();
    // The kernel still completes the handshake, but nobody answers.
    let mut stream = TcpStream::connect_timeout(&server.addr(), PATIENCE).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    stream.write_all(&encode_command(&["PING"])).unwrap();
    let mut buf = [0u8; 64];
    let err = stream
        .read(&mut buf)
        .expect_err("paused server must not answer");
    assert!(is_timeout(&err), "expected a timeout, got {err}");
    let err = server
        .command_timeout(&["PING"], Duration::from_millis(300))
        .expect_err("paused server must not answer");
    assert!(is_timeout(&err), "expected a timeout, got {err}");

    server.resume();
    // The pending PING on the old connection is answered now.
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut reply = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while !reply.ends_with(b"\r\n") && Instant::now() < deadline {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed");
        reply.extend_from_slice(&buf[..n]);
    }
    assert_eq!(reply, b"+PONG\r\n");
    assert_eq!(server.command(&["PING"]), Ok("PONG".into()));
}

#[test]
fn dropping_a_paused_server_kills_it() {
    let server = RedisServer::start();
    let addr = server.addr();
    server.pause();
    drop(server);
    let err = TcpStream::connect_timeout(&addr, PATIENCE).expect_err("port must refuse");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
}

#[test]
fn drop_removes_the_temp_dir() {
    let server = RedisServer::start();
    let log = server.log_path().to_path_buf();
    assert!(log.exists());
    assert!(server.log_tail().contains("Ready to accept connections"));
    let dir = log.parent().unwrap().to_path_buf();
    drop(server);
    assert!(!dir.exists(), "{} must be removed", dir.display());
}

#[test]
fn servers_are_independent() {
    let a = RedisServer::start();
    let b = RedisServer::start();
    assert_ne!(a.port(), b.port());
    assert_eq!(a.command(&["SET", "k", "a"]), Ok("OK".into()));
    assert_eq!(b.command(&["GET", "k"]), Ok("(nil)".into()));
}

#[test]
fn redis_url_starts_a_server_unless_redis_url_is_set() {
    let (server, url) = redis_url();
    match std::env::var("REDIS_URL") {
        Ok(env_url) if !env_url.trim().is_empty() => {
            assert!(server.is_none());
            assert_eq!(url, env_url);
        }
        _ => {
            let server = server.expect("a server is started when REDIS_URL is unset");
            assert_eq!(url, server.url());
            assert_eq!(server.command(&["PING"]), Ok("PONG".into()));
        }
    }
}

#[test]
fn key_prefixes_are_random_and_well_formed() {
    let a = key_prefix();
    let b = key_prefix();
    assert_ne!(a, b);
    let id = a
        .strip_prefix("redlease-test:")
        .and_then(|rest| rest.strip_suffix(':'))
        .unwrap_or_else(|| panic!("bad prefix {a:?}"));
    assert_eq!(id.len(), 8);
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{a:?}");
}

#[test]
fn missing_binary_panics_with_install_instructions() {
    let payload = std::panic::catch_unwind(|| {
        RedisServer::start_with_binary("redlease-definitely-missing-redis-server")
    })
    .expect_err("must panic, never skip");
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default();
    assert!(message.contains("not found on PATH"), "{message}");
    assert!(
        message.contains("apt-get install -y redis-server"),
        "{message}"
    );
    assert!(message.contains("brew install redis"), "{message}");
    assert!(message.contains("./scripts/check"), "{message}");
}
