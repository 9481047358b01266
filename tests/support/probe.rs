//! A [`Probe`] over raw RESP: reads and writes a real server behind the backend's back.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use lock_core::async_trait;
use lock_core::testing::{Probe, Unsupported};

use super::{RedisServer, resp_command};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Talks to one server over its own short-lived connections, as another client would. A probe that
/// owns its server ([`RedisProbe::owning`]) can also pause it, and kills it when dropped.
#[derive(Debug)]
pub struct RedisProbe {
    addr: SocketAddr,
    server: Option<RedisServer>,
}

impl RedisProbe {
    /// A probe for the server at `url` (`redis://host:port/...`).
    pub fn new(url: &str) -> Self {
        let rest = url
            .strip_prefix("redis://")
            .unwrap_or_else(|| panic!("unsupported Redis URL {url:?}: expected redis://host:port"));
        let host_port = rest.split('/').next().unwrap_or(rest);
        let host_port = host_port.rsplit('@').next().unwrap_or(host_port);
        let addr = host_port
            .to_socket_addrs()
            .unwrap_or_else(|e| panic!("cannot resolve {host_port:?}: {e}"))
            .next()
            .unwrap_or_else(|| panic!("no address for {host_port:?}"));
        Self { addr, server: None }
    }

    /// A probe for `server` that owns it: [`Probe::pause`] and [`Probe::resume`] stop and continue
    /// the process, and dropping the probe kills it (paused or not).
    pub fn owning(server: RedisServer) -> Self {
        Self {
            addr: server.addr(),
            server: Some(server),
        }
    }

    /// Sends one command and returns the reply, panicking on I/O errors.
    pub fn command(&self, args: &[&str]) -> Result<String, String> {
        resp_command(self.addr, args, TIMEOUT)
            .unwrap_or_else(|e| panic!("probe command {args:?} to {}: {e}", self.addr))
    }

    fn server(&self, what: &'static str) -> Result<&RedisServer, Unsupported> {
        self.server.as_ref().ok_or(Unsupported(what))
    }
}

#[async_trait]
impl Probe for RedisProbe {
    async fn get(&self, key: &str) -> Option<String> {
        match self.command(&["GET", key]).expect("GET") {
            nil if nil == "(nil)" => None,
            value => Some(value),
        }
    }

    async fn pttl(&self, key: &str) -> Option<Duration> {
        let reply = self.command(&["PTTL", key]).expect("PTTL");
        let millis: i64 = reply.parse().expect("PTTL returns an integer");
        u64::try_from(millis).ok().map(Duration::from_millis)
    }

    async fn set(&self, key: &str, value: &str, ttl: Duration) {
        let ms = ttl.as_millis().max(1).to_string();
        self.command(&["SET", key, value, "PX", &ms]).expect("SET");
    }

    async fn del(&self, key: &str) {
        self.command(&["DEL", key]).expect("DEL");
    }

    async fn flush_scripts(&self) {
        self.command(&["SCRIPT", "FLUSH"]).expect("SCRIPT FLUSH");
    }

    async fn script_load(&self, source: &str) -> Result<String, Unsupported> {
        Ok(self
            .command(&["SCRIPT", "LOAD", source])
            .expect("SCRIPT LOAD"))
    }

    async fn command_calls(&self, command: &str) -> Result<u64, Unsupported> {
        let info = self
            .command(&["INFO", "commandstats"])
            .expect("INFO commandstats");
        let prefix = format!("cmdstat_{command}:calls=");
        let calls = info
            .lines()
            .find_map(|line| line.trim().strip_prefix(&prefix))
            .map(|rest| rest.split(',').next().unwrap_or(rest));
        Ok(calls.map_or(0, |n| {
            n.parse()
                .unwrap_or_else(|e| panic!("cmdstat_{command} calls {n:?}: {e}"))
        }))
    }

    async fn push(&self, key: &str, value: &str) -> Result<(), Unsupported> {
        self.command(&["RPUSH", key, value]).expect("RPUSH");
        Ok(())
    }

    async fn members(&self, key: &str) -> Result<Vec<(String, i64)>, Unsupported> {
        let reply = self
            .command(&["ZRANGE", key, "0", "-1", "WITHSCORES"])
            .expect("ZRANGE");
        Ok(parse_members(key, &reply))
    }

    async fn pause(&self) -> Result<(), Unsupported> {
        self.server("pause a server it does not own")?.pause();
        Ok(())
    }

    async fn resume(&self) -> Result<(), Unsupported> {
        self.server("resume a server it does not own")?.resume();
        Ok(())
    }
}

/// The members and scores of a rendered `ZRANGE key 0 -1 WITHSCORES` reply (one item per line).
pub fn parse_members(key: &str, reply: &str) -> Vec<(String, i64)> {
    let items: Vec<&str> = reply.lines().filter(|line| !line.is_empty()).collect();
    items
        .chunks(2)
        .map(|pair| {
            let score = pair.get(1).and_then(|s| s.parse().ok());
            let score = score.unwrap_or_else(|| panic!("ZRANGE {key}: bad score in {pair:?}"));
            (pair[0].to_owned(), score)
        })
        .collect()
}
