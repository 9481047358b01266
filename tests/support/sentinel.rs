//! A real Sentinel deployment for tests: a primary, its replicas and Sentinels monitoring it as
//! [`SERVICE`], each a [`RedisServer`] (Sentinels are `redis-server <conf> --sentinel`, so no separate
//! `redis-sentinel` binary is needed), torn down on drop.

use std::thread;
use std::time::{Duration, Instant};

use super::RedisServer;

/// The name the Sentinels monitor the primary under.
pub const SERVICE: &str = "mymaster";
/// How long a Sentinel waits before it considers the primary down.
pub const DOWN_AFTER: Duration = Duration::from_millis(1000);
/// Upper bound for a new deployment to settle, and for a failover.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A primary with `replicas` replicas, monitored by Sentinels with a quorum of 2.
#[derive(Debug)]
pub struct SentinelGroup {
    /// Data nodes: the first one starts as the primary.
    servers: Vec<RedisServer>,
    sentinels: Vec<RedisServer>,
}

impl SentinelGroup {
    /// Starts a primary, `replicas` replicas of it and `sentinels` Sentinels (at least 2, the quorum),
    /// and waits until the replicas are in sync and every Sentinel knows all replicas and all other
    /// Sentinels (so that a failover can be agreed at once).
    pub fn start(replicas: usize, sentinels: usize) -> SentinelGroup {
        assert!(sentinels >= 2, "the quorum is 2");
        let started = Instant::now();
        let primary = RedisServer::start();
        let primary_port = primary.port().to_string();
        let mut servers = vec![primary];
        for _ in 0..replicas {
            servers.push(RedisServer::start_with_args(&[
                "--replicaof",
                "127.0.0.1",
                &primary_port,
            ]));
        }
        let down_after = DOWN_AFTER.as_millis().to_string();
        let sentinels = (0..sentinels)
            .map(|_| {
                RedisServer::start_sentinel(&[
                    "--sentinel",
                    "monitor",
                    SERVICE,
                    "127.0.0.1",
                    &primary_port,
                    "2",
                    "--sentinel",
                    "down-after-milliseconds",
                    SERVICE,
                    &down_after,
                    "--sentinel",
                    "failover-timeout",
                    SERVICE,
                    "3000",
                ])
            })
            .collect();
        let group = SentinelGroup { servers, sentinels };
        group.wait_until(|| {
            group.replicas_in_sync(group.servers[0].port())
                && group.sentinels.iter().all(|s| {
                    count_entries(s, "REPLICAS") == replicas
                        && count_entries(s, "SENTINELS") == group.sentinels.len() - 1
                })
        });
        eprintln!(
            "sentinel group ({replicas} replicas, {} sentinels) ready in {:?}",
            group.sentinels.len(),
            started.elapsed()
        );
        group
    }

    /// `(host, port)` of every Sentinel, for fred's `ServerConfig::new_sentinel`.
    pub fn sentinel_hosts(&self) -> Vec<(String, u16)> {
        self.sentinels
            .iter()
            .map(|s| ("127.0.0.1".to_owned(), s.port()))
            .collect()
    }

    /// `redis://127.0.0.1:<port>/` of every Sentinel, for `deadpool_redis::sentinel::Config`.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(RedisServer::url).collect()
    }

    /// The primary's port, as the first Sentinel names it.
    pub fn primary_port(&self) -> u16 {
        let reply = self.sentinels[0]
            .command(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE])
            .expect("GET-MASTER-ADDR-BY-NAME");
        reply
            .lines()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no primary address in {reply:?}"))
    }

    /// The data node listening on `port`.
    pub fn server(&self, port: u16) -> &RedisServer {
        self.servers
            .iter()
            .find(|s| s.port() == port)
            .unwrap_or_else(|| panic!("no data node on port {port}"))
    }

    /// The data node listening on `port`, mutably (to kill it).
    pub fn server_mut(&mut self, port: u16) -> &mut RedisServer {
        self.servers
            .iter_mut()
            .find(|s| s.port() == port)
            .unwrap_or_else(|| panic!("no data node on port {port}"))
    }

    /// The replicas of the current primary that are running.
    pub fn replicas(&self) -> Vec<&RedisServer> {
        let primary = self.primary_port();
        self.servers
            .iter()
            .filter(|s| s.port() != primary && s.is_running())
            .collect()
    }

    /// Waits until every Sentinel names a primary other than `old_port`, and that node says it is a
    /// primary with every other running data node in sync as its replica. Returns its port.
    pub fn wait_for_failover(&self, old_port: u16) -> u16 {
        self.wait_until(|| {
            let ports: Vec<Option<u16>> = self
                .sentinels
                .iter()
                .map(|s| {
                    s.command(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE])
                        .ok()
                        .and_then(|r| r.lines().nth(1).and_then(|p| p.parse().ok()))
                })
                .collect();
            let Some(Some(new)) = ports.first().copied() else {
                return false;
            };
            new != old_port
                && ports.iter().all(|p| *p == Some(new))
                && self
                    .server(new)
                    .command(&["INFO", "replication"])
                    .is_ok_and(|info| info.contains("role:master"))
                && self.replicas_in_sync(new)
        });
        self.primary_port()
    }

    /// Whether every running data node but `primary` replicates from it with the link up.
    fn replicas_in_sync(&self, primary: u16) -> bool {
        let needle = format!("master_port:{primary}");
        self.servers
            .iter()
            .filter(|s| s.port() != primary && s.is_running())
            .all(|s| {
                s.command_timeout(&["INFO", "replication"], Duration::from_secs(2))
                    .is_ok_and(|reply| {
                        reply.is_ok_and(|info| {
                            info.contains(&needle) && info.contains("master_link_status:up")
                        })
                    })
            })
    }

    fn wait_until(&self, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while !condition() {
            assert!(
                Instant::now() < deadline,
                "the sentinel group did not settle within {SETTLE_TIMEOUT:?}; sentinel log:\n{}",
                self.sentinels[0].log_tail()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// How many entries `SENTINEL <what> mymaster` lists on `sentinel` (0 when it fails).
fn count_entries(sentinel: &RedisServer, what: &str) -> usize {
    // Each entry is a flat list of field/value pairs, rendered one per line; count the "name" fields.
    sentinel
        .command_timeout(&["SENTINEL", what, SERVICE], Duration::from_secs(2))
        .ok()
        .and_then(Result::ok)
        .map(|reply| reply.lines().filter(|l| *l == "name").count())
        .unwrap_or(0)
}
