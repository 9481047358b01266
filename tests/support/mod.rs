//! Shared support code for integration tests: real `redis-server` processes.
//!
//! Include it from an integration test with `mod support;`.
//!
//! Every [`RedisServer`] is a separate `redis-server` child process listening
//! on a free loopback port, with persistence disabled and its working
//! directory (and log file) in a fresh temporary directory, so nothing is ever
//! written into the repository. Dropping the value kills the process and
//! removes the directory, so keep servers in test-local variables rather than
//! in statics (statics are never dropped). The exception is
//! [`shared_redis_url`]: one server per name and test binary, which a watchdog
//! process kills when the test process exits.
//!
//! When `redis-server` is not installed, [`RedisServer::start`] panics with
//! installation instructions: tests never skip silently.
//!
//! No Redis client crate is used here; [`resp_command`] speaks raw RESP over a
//! `std::net::TcpStream`.

#![allow(dead_code)]

pub mod cluster;
pub mod inputs;
pub mod probe;
pub mod proxy;
pub mod sentinel;

use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

/// Name of the server binary looked up on `PATH` by [`RedisServer::start`].
pub const REDIS_SERVER_BIN: &str = "redis-server";

/// How often [`RedisServer::start`] picks a new port after a port clash.
const START_ATTEMPTS: usize = 5;
/// Upper bound for one server process to start answering `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Upper bound for [`RedisServer::restart`] to get the same port back.
const RESTART_TIMEOUT: Duration = Duration::from_secs(20);
/// Connect/read/write timeout used by [`RedisServer::command`].
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Timeout of a single readiness probe while a server is starting.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Number of log lines quoted in panic messages.
const LOG_TAIL_LINES: usize = 40;

const INSTALL_HINT: &str = "install it with `apt-get install -y redis-server` (Debian/Ubuntu) \
     or `brew install redis`, or run ./scripts/check which installs it";

/// A `redis-server` child process on `127.0.0.1:<port>`, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    binary: String,
    port: u16,
    /// Temporary directory holding the log file and per-launch data dirs.
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    launches: u32,
    /// Configuration appended to the command line (`--cluster-enabled yes`, ...).
    extra_args: Vec<String>,
    /// Run as a Sentinel: `redis-server <conf> --sentinel`, with a fresh writable config file.
    sentinel: bool,
}

/// What a [`Watchdog`] runs, with the server's pid and directory as `$1` and `$2`: wait for the pipe
/// to close, then kill the server, unless Linux says that pid is now another program's (it was
/// reused), and remove the directory.
const WATCHDOG_SCRIPT: &str = r#"read _
comm=$(cat "/proc/$1/comm" 2>/dev/null || echo redis-server)
[ "$comm" = redis-server ] && kill -9 "$1" 2>/dev/null
rm -rf "$2""#;

/// An `sh` process blocked reading a pipe whose only write end this process holds: when the pipe
/// closes (this value dropped, or this process gone, whatever ended it), it kills the server it
/// watches and removes the server's directory. The write end is close-on-exec, so no other child
/// keeps it open.
#[derive(Debug)]
pub struct Watchdog {
    watchdog: Child,
    pipe: Option<ChildStdin>,
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.pipe.take());
        let _ = self.watchdog.wait();
    }
}

/// Why one launch of the server did not become ready.
#[derive(Debug)]
enum LaunchFailure {
    /// The process exited during startup (typically: port already in use).
    Exited(ExitStatus),
    /// Something else, not our process, answered on the port.
    Foreign(String),
    /// The process is alive but did not answer in time.
    Timeout,
}

impl RedisServer {
    /// Starts `redis-server` from `PATH` on a free loopback port and waits
    /// until it answers `PING`.
    ///
    /// # Panics
    ///
    /// If `redis-server` is not on `PATH` (with installation instructions),
    /// or if it cannot be started (with the tail of its log).
    pub fn start() -> RedisServer {
        Self::start_with_binary(REDIS_SERVER_BIN)
    }

    /// Like [`RedisServer::start`], with an explicit server binary (a name
    /// looked up on `PATH`, or a path).
    pub fn start_with_binary(binary: &str) -> RedisServer {
        Self::start_configured(binary, &[], false)
    }

    /// Like [`RedisServer::start`], with `args` appended to the command line (each option and each of
    /// its values a separate argument, e.g. `["--cluster-enabled", "yes"]`).
    pub fn start_with_args(args: &[&str]) -> RedisServer {
        Self::start_configured(REDIS_SERVER_BIN, args, false)
    }

    /// Starts a Sentinel (`redis-server <conf> --sentinel`, with a fresh config file it may rewrite)
    /// with `args` appended, e.g. `["--sentinel", "monitor", "mymaster", "127.0.0.1", "6379", "2"]`.
    pub fn start_sentinel(args: &[&str]) -> RedisServer {
        Self::start_configured(REDIS_SERVER_BIN, args, true)
    }

    fn start_configured(binary: &str, args: &[&str], sentinel: bool) -> RedisServer {
        let dir =
            std::env::temp_dir().join(format!("redlease-redis-{}", uuid::Uuid::new_v4().simple()));
        fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create temp dir {}: {e}", dir.display()));
        let log = dir.join("redis-server.log");
        let mut server = RedisServer {
            binary: binary.to_owned(),
            port: 0,
            dir,
            log,
            child: None,
            launches: 0,
            extra_args: args.iter().map(|a| (*a).to_owned()).collect(),
            sentinel,
        };

        let mut failures = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            server.port = free_port();
            let mut child = server.launch();
            let deadline = Instant::now() + READY_TIMEOUT;
            match wait_ready(&mut child, server.addr(), deadline) {
                Ok(()) => {
                    server.child = Some(child);
                    return server;
                }
                Err(LaunchFailure::Timeout) => {
                    reap(&mut child);
                    server.fail(&format!(
                        "redis-server on port {} did not answer PING within {READY_TIMEOUT:?}",
                        server.port
                    ));
                }
                Err(failure) => {
                    reap(&mut child);
                    failures.push(format!(
                        "attempt {attempt} (port {}): {failure:?}",
                        server.port
                    ));
                }
            }
        }
        server.fail(&format!(
            "redis-server failed to start after {START_ATTEMPTS} attempts: {}",
            failures.join("; ")
        ));
    }

    /// `redis://127.0.0.1:<port>/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The TCP port the server listens on (stable across [`Self::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port))
    }

    /// Process id of the running server, `None` after [`Self::kill`].
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether a server process is currently running (possibly paused).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Path of the file capturing the server's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last lines of the server log (for diagnostics).
    pub fn log_tail(&self) -> String {
        log_tail(&self.log, LOG_TAIL_LINES)
    }

    /// Kills the server with SIGKILL and waits for it to exit. The port then
    /// refuses connections. No-op if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            reap(&mut child);
        }
    }

    /// Kills the server (if running) and starts a new, empty one on the same
    /// port. Retries for a while in case the port is not immediately free.
    ///
    /// # Panics
    ///
    /// If the server cannot be brought back on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + RESTART_TIMEOUT;
        let mut failures = Vec::new();
        loop {
            let mut child = self.launch();
            match wait_ready(&mut child, self.addr(), deadline) {
                Ok(()) => {
                    self.child = Some(child);
                    return;
                }
                Err(failure) => {
                    reap(&mut child);
                    failures.push(format!("{failure:?}"));
                    if matches!(failure, LaunchFailure::Timeout) || Instant::now() >= deadline {
                        self.fail(&format!(
                            "redis-server could not be restarted on port {} within \
                             {RESTART_TIMEOUT:?}: {}",
                            self.port,
                            failures.join("; ")
                        ));
                    }
                    thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    /// Starts a replica of this server (`--replicaof`) and waits until it is in sync: its link to this
    /// server is up and this server counts it as an online replica.
    ///
    /// # Panics
    ///
    /// If the replica cannot be started or does not sync within the readiness timeout.
    pub fn start_replica(&self) -> RedisServer {
        // A full sync would otherwise wait 5 s for more replicas to share it.
        self.command(&["CONFIG", "SET", "repl-diskless-sync-delay", "0"])
            .unwrap_or_else(|e| panic!("CONFIG SET repl-diskless-sync-delay: {e}"));
        let port = self.port.to_string();
        let replica = Self::start_with_args(&["--replicaof", "127.0.0.1", &port]);
        self.wait_for_replicas(1);
        replica
    }

    /// Waits until `replicas` replicas acknowledge a write made on this server now (a `SET` of a probe
    /// key, then `WAIT`, over one connection): they are connected and caught up, so that a `WAIT` after
    /// the next write counts them all.
    ///
    /// # Panics
    ///
    /// If that does not happen within the readiness timeout (15 s).
    pub fn wait_for_replicas(&self, replicas: usize) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let wanted = replicas.to_string();
        loop {
            let acked = resp_pipeline(
                self.addr(),
                &[
                    &["SET", "redlease-test:replica-probe", "1"],
                    &["WAIT", &wanted, "100"],
                ],
                PROBE_TIMEOUT,
            );
            let last = match &acked {
                Ok(replies) => match replies.as_slice() {
                    [Ok(_), Ok(n)] if n.parse::<usize>().is_ok_and(|n| n >= replicas) => return,
                    other => format!("{other:?}"),
                },
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "{replicas} replica(s) of port {} did not acknowledge a write within \
                     {READY_TIMEOUT:?}: last answer {last}",
                    self.port
                ));
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// Freezes the server process (SIGSTOP): connections are still accepted
    /// by the kernel, but no command is answered until [`Self::resume`].
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Resumes a server frozen by [`Self::pause`] (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// How many times the server ran `command` (`INFO commandstats`, which counts the commands a
    /// script runs as well as the script itself); 0 before the first.
    pub fn calls(&self, command: &str) -> u64 {
        let info = self
            .command(&["INFO", "commandstats"])
            .expect("INFO commandstats");
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|line| line.trim().strip_prefix(&prefix))
            .map(|rest| {
                rest.split(',')
                    .next()
                    .unwrap_or("0")
                    .parse()
                    .expect("a count")
            })
            .unwrap_or(0)
    }

    /// Every command the server has run (`INFO commandstats`), `INFO` itself left out.
    pub fn commands_total(&self) -> u64 {
        let info = self
            .command(&["INFO", "commandstats"])
            .expect("INFO commandstats");
        info.lines()
            .filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_info"))
            .filter_map(|l| {
                l.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    }

    /// Sends one command over a fresh connection and renders the reply, see
    /// [`resp_command`]. `Err` holds an error reply, e.g. `"-ERR unknown ..."`.
    ///
    /// # Panics
    ///
    /// On I/O errors or a timeout (10 s); use [`Self::command_timeout`] to
    /// handle those.
    pub fn command(&self, args: &[&str]) -> Result<String, String> {
        self.command_timeout(args, COMMAND_TIMEOUT)
            .unwrap_or_else(|e| {
                panic!(
                    "redis command {args:?} to {} failed: {e}\n--- redis-server log tail ---\n{}",
                    self.addr(),
                    self.log_tail()
                )
            })
    }

    /// Like [`Self::command`] but with an explicit connect/read/write timeout
    /// and returning I/O errors instead of panicking.
    pub fn command_timeout(
        &self,
        args: &[&str],
        timeout: Duration,
    ) -> io::Result<Result<String, String>> {
        resp_command(self.addr(), args, timeout)
    }

    fn signal(&self, signal: &str) {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("cannot send SIG{signal}: redis-server is not running"));
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("cannot run `kill -{signal} {pid}`: {e}"));
        assert!(status.success(), "`kill -{signal} {pid}` failed: {status}");
    }

    /// Starts a [`Watchdog`] that kills this server and removes its directory when it is dropped, or
    /// when this process exits however it exits (for a server kept in a static, which is never
    /// dropped). It watches the current process: do not [`restart`](Self::restart) a watched server.
    ///
    /// # Panics
    ///
    /// If the server is not running, or `sh` cannot be started.
    pub fn kill_on_exit(&self) -> Watchdog {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("cannot watch redis-server: it is not running"));
        let mut watchdog = Command::new("sh")
            .args(["-c", WATCHDOG_SCRIPT, "sh"])
            .arg(pid.to_string())
            .arg(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the watchdog of redis-server {pid}: {e}"));
        let pipe = watchdog.stdin.take();
        Watchdog { watchdog, pipe }
    }

    /// Spawns one server process on `self.port` with a fresh, empty data dir.
    fn launch(&mut self) -> Child {
        self.launches += 1;
        let data_dir = self.dir.join(format!("data-{}", self.launches));
        fs::create_dir_all(&data_dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", data_dir.display()));
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log.display()));
        // Best effort: the separator only helps reading the log.
        let _ = writeln!(
            log,
            "=== redlease test support: launch {} of {} on port {} ===",
            self.launches, self.binary, self.port
        );
        let stderr = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot clone log file handle: {e}"));

        let mut command = Command::new(&self.binary);
        if self.sentinel {
            let conf = data_dir.join("sentinel.conf");
            fs::write(&conf, "").unwrap_or_else(|e| panic!("cannot write {}: {e}", conf.display()));
            command.arg(&conf).arg("--sentinel");
        }
        let spawned = command
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .args(["--protected-mode", "no"])
            .arg("--dir")
            .arg(&data_dir)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn();
        match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                panic!("{} not found on PATH: {INSTALL_HINT}", self.binary)
            }
            Err(e) => panic!("cannot spawn {}: {e}", self.binary),
        }
    }

    fn fail(&self, message: &str) -> ! {
        panic!(
            "{message}\n--- redis-server log tail ({}) ---\n{}",
            self.log.display(),
            self.log_tail()
        )
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Returns a Redis URL for tests that just need *a* server: `REDIS_URL` from
/// the environment if set (and `None`), otherwise a freshly started server
/// (keep it alive as long as the URL is used) and its URL.
///
/// Tests that kill, restart or pause a server must start their own instead.
pub fn redis_url() -> (Option<RedisServer>, String) {
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.trim().is_empty() => (None, url),
        _ => {
            let server = RedisServer::start();
            let url = server.url();
            (Some(server), url)
        }
    }
}

/// The URL of a server shared by every test of this binary that asks for `name`: `REDIS_URL` from the
/// environment if set, otherwise a `redis-server` started at the first request for `name`.
///
/// For tests that only touch keys of their own. The server lives as long as the test process: a
/// watchdog (`sh`, blocked reading a pipe that only this process holds) kills it and removes its
/// directory when the process exits, however it exits, because the pipe then closes.
pub fn shared_redis_url(name: &str) -> String {
    /// The shared servers by name, each with its watchdog.
    static SHARED: Mutex<Vec<(String, RedisServer, Watchdog)>> = Mutex::new(Vec::new());

    if let Ok(url) = std::env::var("REDIS_URL")
        && !url.trim().is_empty()
    {
        return url;
    }
    // A test that panicked while starting a server leaves no entry behind: the list stays usable.
    let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, server, _)) = shared.iter().find(|(n, _, _)| n == name) {
        return server.url();
    }
    let server = RedisServer::start();
    let watchdog = server.kill_on_exit();
    let url = server.url();
    shared.push((name.to_owned(), server, watchdog));
    url
}

/// A random per-test key prefix, e.g. `redlease-test:1a2b3c4d:`.
pub fn key_prefix() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("redlease-test:{}:", &id[..8])
}

/// Sends one command as a RESP array over a fresh TCP connection to `addr`
/// and renders the reply as a string:
///
/// - simple strings and bulk strings: their content (lossy UTF-8),
/// - integers: their digits,
/// - nil (bulk or array): `(nil)`,
/// - arrays: the rendered elements joined by `\n` (empty array: `""`),
/// - an error reply: `Err` with the `-` kept, e.g. `Err("-ERR unknown command ...")`
///   (errors nested in arrays are rendered the same way, inline).
///
/// `timeout` bounds connecting and each read/write; exceeding it yields an
/// `io::Error` of kind `TimedOut` or `WouldBlock`.
pub fn resp_command(
    addr: SocketAddr,
    args: &[&str],
    timeout: Duration,
) -> io::Result<Result<String, String>> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    (&stream).write_all(&encode_command(args))?;
    let mut reader = BufReader::new(&stream);
    let reply = read_reply(&mut reader)?;
    Ok(match reply {
        Reply::Error(message) => Err(format!("-{message}")),
        other => Ok(render(&other)),
    })
}

/// Like [`resp_command`], for several commands sent back to back over one
/// connection (so `ASKING` applies to the command after it): one rendered
/// reply per command.
pub fn resp_pipeline(
    addr: SocketAddr,
    commands: &[&[&str]],
    timeout: Duration,
) -> io::Result<Vec<Result<String, String>>> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    let bytes: Vec<u8> = commands.iter().flat_map(|c| encode_command(c)).collect();
    (&stream).write_all(&bytes)?;
    let mut reader = BufReader::new(&stream);
    commands
        .iter()
        .map(|_| {
            Ok(match read_reply(&mut reader)? {
                Reply::Error(message) => Err(format!("-{message}")),
                other => Ok(render(&other)),
            })
        })
        .collect()
}

/// Reads a rendered `ZRANGE .. WITHSCORES` reply (member and score on alternate lines) into pairs.
pub fn scored_members(reply: &str) -> Vec<(String, i64)> {
    let lines: Vec<&str> = reply.lines().collect();
    lines
        .chunks(2)
        .filter_map(|pair| match pair {
            [member, score] => {
                let score: f64 = score
                    .parse()
                    .unwrap_or_else(|e| panic!("score {score:?}: {e}"));
                // Scores are whole milliseconds (or 0), exact in a double.
                #[allow(clippy::cast_possible_truncation)]
                Some(((*member).to_owned(), score as i64))
            }
            _ => None,
        })
        .collect()
}

/// Encodes a command as a RESP array of bulk strings.
pub fn encode_command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A parsed RESP reply.
#[derive(Debug, Clone, PartialEq)]
enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

fn render(reply: &Reply) -> String {
    match reply {
        Reply::Simple(s) => s.clone(),
        Reply::Error(e) => format!("-{e}"),
        Reply::Integer(i) => i.to_string(),
        Reply::Bulk(Some(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        Reply::Bulk(None) | Reply::Array(None) => "(nil)".to_owned(),
        Reply::Array(Some(items)) => items.iter().map(render).collect::<Vec<_>>().join("\n"),
    }
}

fn protocol_error(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn read_line<R: BufRead>(reader: &mut R) -> io::Result<String> {
    let mut buf = Vec::new();
    reader.read_until(b'\n', &mut buf)?;
    if !buf.ends_with(b"\r\n") {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed in the middle of a RESP reply",
        ));
    }
    buf.truncate(buf.len() - 2);
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn parse_len(text: &str) -> io::Result<i64> {
    text.parse()
        .map_err(|_| protocol_error(format!("bad RESP length/integer {text:?}")))
}

fn read_blob<R: BufRead>(reader: &mut R, len: i64) -> io::Result<Option<Vec<u8>>> {
    if len < 0 {
        return Ok(None);
    }
    let len = usize::try_from(len).map_err(|_| protocol_error(format!("bad length {len}")))?;
    let mut data = vec![0; len + 2];
    reader.read_exact(&mut data)?;
    if !data.ends_with(b"\r\n") {
        return Err(protocol_error("bulk string not terminated by CRLF".into()));
    }
    data.truncate(len);
    Ok(Some(data))
}

fn read_items<R: BufRead>(reader: &mut R, len: i64) -> io::Result<Option<Vec<Reply>>> {
    if len < 0 {
        return Ok(None);
    }
    (0..len)
        .map(|_| read_reply(reader))
        .collect::<io::Result<Vec<_>>>()
        .map(Some)
}

/// Reads one reply. RESP2, plus the common RESP3 types mapped onto RESP2
/// shapes (in case a test switches protocols with `HELLO 3`).
fn read_reply<R: BufRead>(reader: &mut R) -> io::Result<Reply> {
    let line = read_line(reader)?;
    let mut chars = line.chars();
    let kind = chars
        .next()
        .ok_or_else(|| protocol_error("empty RESP line".into()))?;
    let rest = chars.as_str();
    Ok(match kind {
        '+' => Reply::Simple(rest.to_owned()),
        '-' => Reply::Error(rest.to_owned()),
        ':' => Reply::Integer(parse_len(rest)?),
        '$' => Reply::Bulk(read_blob(reader, parse_len(rest)?)?),
        '*' | '~' | '>' => Reply::Array(read_items(reader, parse_len(rest)?)?),
        '%' | '|' => {
            let pairs = parse_len(rest)?;
            let items = read_items(reader, pairs.saturating_mul(2))?;
            if kind == '|' {
                // Attribute: metadata preceding the actual reply.
                return read_reply(reader);
            }
            Reply::Array(items)
        }
        '_' => Reply::Bulk(None),
        '#' => Reply::Integer(i64::from(rest == "t")),
        ',' | '(' => Reply::Simple(rest.to_owned()),
        '=' => {
            // Verbatim string: "txt:" format prefix, then the content.
            let data = read_blob(reader, parse_len(rest)?)?.unwrap_or_default();
            Reply::Bulk(Some(data.get(4..).unwrap_or_default().to_vec()))
        }
        '!' => {
            let data = read_blob(reader, parse_len(rest)?)?.unwrap_or_default();
            Reply::Error(String::from_utf8_lossy(&data).into_owned())
        }
        other => return Err(protocol_error(format!("unknown RESP type byte {other:?}"))),
    })
}

/// Picks a currently free loopback port (bind to port 0, then release it).
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0 to find a free port: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("cannot read local address: {e}"))
        .port()
}

/// Waits until `child` answers `PING` on `addr` and is really the process
/// listening there (checked through `INFO server`'s `process_id`).
fn wait_ready(child: &mut Child, addr: SocketAddr, deadline: Instant) -> Result<(), LaunchFailure> {
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(LaunchFailure::Exited(status));
        }
        if Instant::now() >= deadline {
            return Err(LaunchFailure::Timeout);
        }
        match probe(addr) {
            Some(Ok(pid)) if pid == child.id() => return Ok(()),
            Some(Ok(pid)) => {
                return Err(LaunchFailure::Foreign(format!(
                    "another redis-server (pid {pid}) answers on {addr}"
                )));
            }
            // Not answering yet, or an error reply such as "-LOADING".
            Some(Err(_)) | None => {}
        }
        thread::sleep(Duration::from_millis(25));
    }
}

/// `None`: no usable answer yet. `Some(Ok(pid))`: a Redis answered PING and
/// reported its pid. `Some(Err(_))`: a Redis answered with an error.
fn probe(addr: SocketAddr) -> Option<Result<u32, String>> {
    match resp_command(addr, &["PING"], PROBE_TIMEOUT).ok()? {
        Ok(pong) if pong == "PONG" => {}
        Ok(_) => return None,
        Err(e) => return Some(Err(e)),
    }
    let info = match resp_command(addr, &["INFO", "server"], PROBE_TIMEOUT).ok()? {
        Ok(info) => info,
        Err(e) => return Some(Err(e)),
    };
    info.lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
        .map(Ok)
}

/// SIGKILLs (which also works on a SIGSTOPped process) and waits.
fn reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn log_tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
