//! [`Probe`]: the checks' view of the store, behind the backend's back.

use std::time::Duration;

use async_trait::async_trait;

use crate::memory::MemoryBackend;

/// Direct access to the store under test, used to set up and observe states.
///
/// The first five methods are what every store answers. The others reach a Redis server's own
/// machinery; a probe that cannot answer one keeps its default, which returns [`Unsupported`], and the
/// checks that need it ([`Need::Server`](super::Need::Server)) fail saying so unless skipped.
#[async_trait]
pub trait Probe: Send + Sync {
    /// `GET key`.
    async fn get(&self, key: &str) -> Option<String>;
    /// `PTTL key`: `None` when the key does not exist or has no expiry.
    async fn pttl(&self, key: &str) -> Option<Duration>;
    /// `SET key value PX ttl`, overwriting whatever is there (another client taking the lock).
    async fn set(&self, key: &str, value: &str, ttl: Duration);
    /// `DEL key` (the lock expiring).
    async fn del(&self, key: &str);
    /// `SCRIPT FLUSH` (a restart or failover forgetting loaded scripts). A no-op where scripts are native.
    async fn flush_scripts(&self);

    /// `SCRIPT LOAD source`: the digest the server computes for a script.
    async fn script_load(&self, source: &str) -> Result<String, Unsupported> {
        let _ = source;
        Err(Unsupported("load a script"))
    }

    /// How many times the server ran `command` (lowercase, e.g. `"evalsha"`) since it started: the
    /// `calls` of `INFO commandstats`, 0 for a command never run.
    async fn command_calls(&self, command: &str) -> Result<u64, Unsupported> {
        let _ = command;
        Err(Unsupported("count commands"))
    }

    /// `RPUSH key value`: makes `key` a list, a key of another type than a lock's string.
    async fn push(&self, key: &str, value: &str) -> Result<(), Unsupported> {
        let _ = (key, value);
        Err(Unsupported("make a list"))
    }

    /// Stops the server answering anything, as a frozen process does (`SIGSTOP`): connections stay
    /// open, commands get no reply, until [`resume`](Self::resume). Only for a store the check owns
    /// ([`Setup::own_store`](super::Setup::own_store)); whoever owns the server must be able to kill
    /// it while stopped, should the check fail before resuming it.
    async fn pause(&self) -> Result<(), Unsupported> {
        Err(Unsupported("pause the server"))
    }

    /// Lets a server stopped by [`pause`](Self::pause) answer again.
    async fn resume(&self) -> Result<(), Unsupported> {
        Err(Unsupported("resume the server"))
    }

    /// `ZRANGE key 0 -1 WITHSCORES`: the members of the sorted set `key` with their scores, lowest
    /// first (the holders of a read-write lock, scored by their expiry in Unix milliseconds); empty
    /// when there is no such key.
    async fn members(&self, key: &str) -> Result<Vec<(String, i64)>, Unsupported> {
        let _ = key;
        Err(Unsupported("read a sorted set"))
    }
}

/// A [`Probe`] method this probe cannot answer: its store is not a Redis server, or the probe has no
/// hold on the server process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this probe cannot {0}")]
pub struct Unsupported(pub &'static str);

/// The in-memory store's view of itself. It is not a Redis server, so the server methods stay
/// [`Unsupported`].
#[async_trait]
impl Probe for MemoryBackend {
    async fn get(&self, key: &str) -> Option<String> {
        MemoryBackend::get(self, key)
    }
    async fn pttl(&self, key: &str) -> Option<Duration> {
        self.ttl(key)
    }
    async fn set(&self, key: &str, value: &str, ttl: Duration) {
        MemoryBackend::set(self, key, value, ttl)
    }
    async fn del(&self, key: &str) {
        self.delete(key);
    }
    async fn flush_scripts(&self) {}
    async fn members(&self, key: &str) -> Result<Vec<(String, i64)>, Unsupported> {
        Ok(MemoryBackend::members(self, key))
    }
}
