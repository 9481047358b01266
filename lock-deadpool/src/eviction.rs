//! The eviction-policy check: on the backend's first call, `CONFIG GET maxmemory-policy` in the
//! background (never on the call's latency), once per backend and its clones; lock-core's
//! [`report_eviction_policy`](lock_core::adapter::report_eviction_policy) decides and logs.

use deadpool_redis::redis::Value;
use lock_core::adapter::{self, Command};

use crate::{BACKEND, DeadpoolBackend, convert};

impl DeadpoolBackend {
    /// Starts the check unless this backend (or a clone) already did. Outside a tokio runtime nothing
    /// is sent: the check is skipped, as it is for a server that refuses `CONFIG`.
    pub(crate) fn check_eviction(&self) {
        if !self.eviction.claim() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let backend = self.clone();
        runtime.spawn(async move {
            let command = convert::cmd(Command::config_get_maxmemory_policy());
            let reply = convert::bounded(backend.command_timeout, async {
                backend.conn.get().await?.query(&command).await
            })
            .await;
            match reply {
                Ok(reply) => {
                    let mut found = Vec::new();
                    strings(reply, &mut found);
                    adapter::report_eviction_policy(BACKEND, Ok(adapter::maxmemory_policy(&found)));
                }
                Err(error) => adapter::report_eviction_policy(BACKEND, Err(error)),
            }
        });
    }
}

/// The strings of a `CONFIG GET` reply in order: an array's items, a map's keys and values (a
/// cluster connection may answer one per node, nested).
fn strings(reply: Value, into: &mut Vec<String>) {
    match reply {
        Value::BulkString(bytes) => into.push(String::from_utf8_lossy(&bytes).into_owned()),
        Value::SimpleString(text) | Value::VerbatimString { text, .. } => into.push(text),
        Value::Array(items) | Value::Set(items) => {
            for item in items {
                strings(item, into);
            }
        }
        Value::Map(pairs) => {
            for (key, value) in pairs {
                strings(key, into);
                strings(value, into);
            }
        }
        _ => {}
    }
}
