//! The eviction-policy check: on the backend's first call, `CONFIG GET maxmemory-policy` in the
//! background (never on the call's latency), once per backend and its clones; lock-core's
//! [`report_eviction_policy`](lock_core::adapter::report_eviction_policy) decides and logs.

use fred::interfaces::ClientLike;
use fred::types::{ClusterHash, Value};
use lock_core::adapter::{self, Command};

use crate::{BACKEND, FredBackend, convert};

impl FredBackend {
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
            let (command, arguments) = convert::custom(
                Command::config_get_maxmemory_policy(),
                ClusterHash::Random,
                false,
            );
            let reply = backend
                .bounded(backend.client().custom::<Value, Value>(command, arguments))
                .await;
            match reply.map(strings) {
                Ok(strings) => adapter::report_eviction_policy(
                    BACKEND,
                    Ok(adapter::maxmemory_policy(&strings)),
                ),
                Err(error) => adapter::report_eviction_policy(BACKEND, Err(error)),
            }
        });
    }
}

/// The strings of a `CONFIG GET` reply in order: an array's items, or a map's keys and values.
fn strings(reply: Value) -> Vec<String> {
    let text = |value: Value| value.as_string();
    match reply {
        Value::Array(items) => items.into_iter().filter_map(text).collect(),
        Value::Map(map) => map
            .inner()
            .into_iter()
            .flat_map(|(key, value)| [key.as_str().map(|k| k.to_string()), text(value)])
            .flatten()
            .collect(),
        _ => Vec::new(),
    }
}
