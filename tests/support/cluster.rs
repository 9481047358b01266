//! A real Redis Cluster for tests: `redis-server --cluster-enabled yes` processes on free loopback ports,
//! joined by `redis-cli --cluster create`, torn down on drop (each node is a [`RedisServer`]).
//!
//! Also a [`ClusterProbe`] that reads and writes keys wherever their slot lives (following `MOVED` and
//! `ASK` like a cluster client) and flushes scripts on every master, and helpers to move a slot between
//! masters step by step.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use lock_core::async_trait;
use lock_core::testing::{Probe, Unsupported};

use super::{RedisServer, resp_command, resp_pipeline};

/// The client binary that joins the nodes (Debian: package `redis-tools`, a dependency of
/// `redis-server`).
pub const REDIS_CLI_BIN: &str = "redis-cli";

const TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound for a new cluster to agree on its slots and for replicas to sync.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// One node as `CLUSTER NODES` describes it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// The node id.
    pub id: String,
    /// The node's client port.
    pub port: u16,
    /// Whether it is a master.
    pub master: bool,
    /// For a replica, its master's id.
    pub master_id: Option<String>,
    /// The slot ranges it serves (masters).
    pub slots: Vec<(u16, u16)>,
    /// Whether the cluster considers it failed.
    pub failed: bool,
}

/// A running Redis Cluster of `masters` masters and `replicas` replicas per master.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` masters (at least 3, as `redis-cli --cluster create` requires) with `replicas`
    /// replicas each, covering all 16384 slots, and waits until every node reports `cluster_state:ok`,
    /// agrees on the slot map, and every replica is in sync.
    ///
    /// # Panics
    ///
    /// If `redis-server` or `redis-cli` is missing, or the cluster does not form in time.
    pub fn start(masters: usize, replicas: usize) -> RedisCluster {
        assert!(masters >= 3, "redis-cli --cluster create needs 3 masters");
        let started = Instant::now();
        let total = masters * (1 + replicas);
        let nodes: Vec<RedisServer> = (0..total)
            .map(|_| {
                // The bus port must be set: the default (port + 10000) may be above 65535.
                let bus_port = free_port().to_string();
                RedisServer::start_with_args(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-port",
                    &bus_port,
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let cluster = RedisCluster { nodes };
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let output = Command::new(REDIS_CLI_BIN)
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {REDIS_CLI_BIN}: {e}; install it with `apt-get install -y \
                     redis-tools` (it comes with redis-server), or run ./scripts/check"
                )
            });
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        cluster.wait_until_ready();
        eprintln!(
            "cluster of {masters} masters and {} replicas ready in {:?}",
            masters * replicas,
            started.elapsed()
        );
        cluster
    }

    fn wait_until_ready(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let expected: usize = self.nodes.len();
        loop {
            let ready = self.nodes.iter().all(|node| {
                let Ok(Ok(info)) = node.command_timeout(&["CLUSTER", "INFO"], TIMEOUT) else {
                    return false;
                };
                info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_known_nodes:{expected}"))
            }) && self.slot_maps_agree()
                && self.replicas_in_sync();
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not become ready within {READY_TIMEOUT:?}: {:#?}",
                self.nodes
                    .iter()
                    .map(|n| n.command(&["CLUSTER", "INFO"]))
                    .collect::<Vec<_>>()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn slot_maps_agree(&self) -> bool {
        // Each node's view: "id [slot ranges]" of every master, sorted.
        let maps: Vec<Vec<String>> = self
            .nodes
            .iter()
            .map(|node| {
                let mut masters: Vec<String> =
                    parse_nodes(&node.command(&["CLUSTER", "NODES"]).unwrap())
                        .into_iter()
                        .filter(|n| n.master)
                        .map(|n| format!("{} {:?}", n.id, n.slots))
                        .collect();
                masters.sort();
                masters
            })
            .collect();
        maps.windows(2).all(|w| w[0] == w[1])
    }

    fn replicas_in_sync(&self) -> bool {
        self.topology().iter().filter(|n| !n.master).all(|n| {
            self.server(n.port)
                .command(&["INFO", "replication"])
                .is_ok_and(|info| info.contains("master_link_status:up"))
        })
    }

    /// The first node still running: the one asked about the cluster.
    fn live_node(&self) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.is_running())
            .expect("a running node")
    }

    /// Every node as the first running node sees it, masters in slot order first (a killed node stays
    /// listed, flagged as failed).
    pub fn topology(&self) -> Vec<NodeInfo> {
        let mut nodes = parse_nodes(&self.live_node().command(&["CLUSTER", "NODES"]).unwrap());
        nodes.sort_by_key(|n| (!n.master, n.slots.first().copied(), n.port));
        nodes
    }

    /// All node processes, in start order.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The node process listening on `port`.
    pub fn server(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no node on port {port}"))
    }

    /// The masters that are running, in slot order.
    pub fn masters(&self) -> Vec<&RedisServer> {
        self.topology()
            .iter()
            .filter(|n| n.master && !n.failed)
            .map(|n| self.server(n.port))
            .collect()
    }

    /// `redis://127.0.0.1:<port>/` of every node: seeds for cluster clients.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// `(host, port)` of every node, for fred's `ServerConfig::new_clustered`.
    pub fn hosts(&self) -> Vec<(String, u16)> {
        self.nodes
            .iter()
            .map(|n| ("127.0.0.1".to_owned(), n.port()))
            .collect()
    }

    /// The slot of `key`, as the cluster computes it (`CLUSTER KEYSLOT`).
    pub fn keyslot(&self, key: &str) -> u16 {
        self.keyslots(&[key])[0]
    }

    /// The slots of `keys`, as the cluster computes them, over one connection.
    pub fn keyslots(&self, keys: &[&str]) -> Vec<u16> {
        let commands: Vec<[&str; 3]> = keys.iter().map(|k| ["CLUSTER", "KEYSLOT", k]).collect();
        let commands: Vec<&[&str]> = commands.iter().map(|c| &c[..]).collect();
        resp_pipeline(self.live_node().addr(), &commands, TIMEOUT)
            .expect("CLUSTER KEYSLOT")
            .into_iter()
            .map(|reply| {
                reply
                    .expect("CLUSTER KEYSLOT")
                    .parse()
                    .expect("a slot number")
            })
            .collect()
    }

    /// The master serving `slot`.
    pub fn master_of_slot(&self, slot: u16) -> NodeInfo {
        self.topology()
            .into_iter()
            .find(|n| n.master && n.slots.iter().any(|&(a, b)| (a..=b).contains(&slot)))
            .unwrap_or_else(|| panic!("no master serves slot {slot}"))
    }

    /// Kills the node on `port` (SIGKILL).
    pub fn kill(&mut self, port: u16) {
        self.nodes
            .iter_mut()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no node on port {port}"))
            .kill();
    }

    /// Waits until the replica on `replica_port` has taken over its failed master's slots and every
    /// running node reports `cluster_state:ok` again; returns the new master.
    pub fn wait_for_failover(&self, replica_port: u16) -> NodeInfo {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let promoted = self
                .topology()
                .into_iter()
                .find(|n| n.port == replica_port && n.master && !n.slots.is_empty());
            let ok = self.nodes.iter().filter(|n| n.is_running()).all(|node| {
                node.command(&["CLUSTER", "INFO"])
                    .is_ok_and(|info| info.contains("cluster_state:ok"))
            });
            if let (Some(promoted), true) = (promoted, ok) {
                return promoted;
            }
            assert!(
                Instant::now() < deadline,
                "no failover to {replica_port} within {READY_TIMEOUT:?}: {:#?}",
                self.topology()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The replicas of the master with id `master_id`.
    pub fn replicas_of(&self, master_id: &str) -> Vec<&RedisServer> {
        self.topology()
            .iter()
            .filter(|n| n.master_id.as_deref() == Some(master_id))
            .map(|n| self.server(n.port))
            .collect()
    }

    /// A probe that reads and writes keys on whichever node serves them.
    pub fn probe(&self) -> ClusterProbe {
        ClusterProbe {
            seed: self.live_node().addr(),
            masters: self.masters().iter().map(|m| m.addr()).collect(),
        }
    }

    /// Starts moving `slot` from its master to `to` (a master's id): `IMPORTING` on the target,
    /// `MIGRATING` on the source. Keys stay on the source until [`SlotMigration::move_keys`].
    pub fn begin_migration(&self, slot: u16, to: &NodeInfo) -> SlotMigration<'_> {
        let from = self.master_of_slot(slot);
        assert_ne!(from.id, to.id, "slot {slot} is already on {}", to.port);
        let slot_arg = slot.to_string();
        expect_ok(self.server(to.port).command(&[
            "CLUSTER",
            "SETSLOT",
            &slot_arg,
            "IMPORTING",
            &from.id,
        ]));
        expect_ok(self.server(from.port).command(&[
            "CLUSTER",
            "SETSLOT",
            &slot_arg,
            "MIGRATING",
            &to.id,
        ]));
        SlotMigration {
            cluster: self,
            slot,
            from,
            to: to.clone(),
        }
    }
}

/// A slot being moved between masters, step by step.
#[derive(Debug)]
pub struct SlotMigration<'a> {
    cluster: &'a RedisCluster,
    slot: u16,
    from: NodeInfo,
    to: NodeInfo,
}

impl SlotMigration<'_> {
    /// Moves every key of the slot to the target (`MIGRATE ... KEYS`); returns how many. From now on
    /// the source answers `ASK` for them.
    pub fn move_keys(&self) -> usize {
        let source = self.cluster.server(self.from.port);
        let slot = self.slot.to_string();
        let keys = source
            .command(&["CLUSTER", "GETKEYSINSLOT", &slot, "1000"])
            .expect("GETKEYSINSLOT");
        let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
        if keys.is_empty() {
            return 0;
        }
        let port = self.to.port.to_string();
        let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
        args.extend(keys.iter().copied());
        expect_ok(source.command(&args));
        keys.len()
    }

    /// Hands the slot to the target on every master (`SETSLOT NODE`): from now on the source answers
    /// `MOVED`.
    pub fn finish(self) {
        let slot = self.slot.to_string();
        let order = [self.to.port, self.from.port];
        let others: Vec<u16> = self
            .cluster
            .topology()
            .iter()
            .filter(|n| n.master && !order.contains(&n.port))
            .map(|n| n.port)
            .collect();
        for port in order.iter().chain(&others) {
            expect_ok(self.cluster.server(*port).command(&[
                "CLUSTER",
                "SETSLOT",
                &slot,
                "NODE",
                &self.to.id,
            ]));
        }
    }
}

fn expect_ok(reply: Result<String, String>) {
    assert_eq!(reply.as_deref(), Ok("OK"), "{reply:?}");
}

/// Parses `CLUSTER NODES`.
pub fn parse_nodes(text: &str) -> Vec<NodeInfo> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let address = fields[1].split('@').next().unwrap_or(fields[1]);
            let port = address
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("no port in {line:?}"));
            let master = fields[2].split(',').any(|f| f == "master");
            let failed = fields[2].split(',').any(|f| f == "fail" || f == "fail?");
            let master_id = (fields[3] != "-").then(|| fields[3].to_owned());
            let slots = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .map(|s| match s.split_once('-') {
                    Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                    None => (s.parse().unwrap(), s.parse().unwrap()),
                })
                .collect();
            NodeInfo {
                id: fields[0].to_owned(),
                port,
                master,
                master_id,
                slots,
                failed,
            }
        })
        .collect()
}

/// Picks a currently free loopback port (bind to port 0, then release it).
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// A [`Probe`] for a cluster: sends each command to a node, then wherever `MOVED` or `ASK` says.
#[derive(Debug, Clone)]
pub struct ClusterProbe {
    seed: SocketAddr,
    masters: Vec<SocketAddr>,
}

impl ClusterProbe {
    /// Sends a single-key command to the node serving its key, following redirections.
    pub fn command(&self, args: &[&str]) -> Result<String, String> {
        let mut addr = self.seed;
        let mut asking = false;
        for _ in 0..5 {
            let reply = if asking {
                let mut replies = resp_pipeline(addr, &[&["ASKING"], args], TIMEOUT)
                    .unwrap_or_else(|e| panic!("probe {args:?} to {addr}: {e}"));
                replies.pop().expect("two replies")
            } else {
                resp_command(addr, args, TIMEOUT)
                    .unwrap_or_else(|e| panic!("probe {args:?} to {addr}: {e}"))
            };
            match &reply {
                Err(e) if e.starts_with("-MOVED ") || e.starts_with("-ASK ") => {
                    asking = e.starts_with("-ASK ");
                    addr = redirect_target(e);
                }
                _ => return reply,
            }
        }
        panic!("probe {args:?}: too many redirections")
    }

    /// Sends `args` to every master.
    pub fn on_all_masters(&self, args: &[&str]) -> Vec<Result<String, String>> {
        self.masters
            .iter()
            .map(|addr| resp_command(*addr, args, TIMEOUT).expect("probe command"))
            .collect()
    }
}

fn redirect_target(error: &str) -> SocketAddr {
    let target = error
        .split_whitespace()
        .nth(2)
        .expect("-MOVED slot host:port");
    let (host, port) = target.rsplit_once(':').expect("host:port");
    let host: Ipv4Addr = if host.is_empty() {
        Ipv4Addr::LOCALHOST
    } else {
        host.parse().expect("an IPv4 address")
    };
    SocketAddr::V4(SocketAddrV4::new(host, port.parse().expect("a port")))
}

#[async_trait]
impl Probe for ClusterProbe {
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

    /// `SCRIPT FLUSH` on every master: each node keeps its own script cache.
    async fn flush_scripts(&self) {
        for reply in self.on_all_masters(&["SCRIPT", "FLUSH"]) {
            reply.expect("SCRIPT FLUSH");
        }
    }

    async fn members(&self, key: &str) -> Result<Vec<(String, i64)>, Unsupported> {
        let reply = self
            .command(&["ZRANGE", key, "0", "-1", "WITHSCORES"])
            .expect("ZRANGE");
        Ok(super::probe::parse_members(key, &reply))
    }
}

/// Counts keys per master, to show a test's keys are spread over all of them.
pub fn masters_serving(cluster: &RedisCluster, keys: &[&str]) -> HashMap<u16, usize> {
    let mut count = HashMap::new();
    for slot in cluster.keyslots(keys) {
        *count.entry(cluster.master_of_slot(slot).port).or_default() += 1;
    }
    count
}
