//! [`RwLock::inspect`]: the readers, the writer, the waiting writers and the last fence, in one
//! read-only round trip.

use super::RwLock;
use crate::backend::ScriptValue;
use crate::error::{LockError, Result};
use crate::inspect::{HoldInfo, RwLockInfo, counter, members, unexpected, waiting_here};
use crate::{keys, script};

impl RwLock {
    /// Who holds the lock now, in one read-only round trip: the live read holds and the write hold
    /// with their tokens and remaining leases (on the server's clock), the writers waiting (from
    /// every process), the last fence issued for the key; and how many tasks of this process wait.
    ///
    /// An empty key is [`LockError::InvalidArgument`], and a key holding another kind of value a
    /// permanent [`LockError::Backend`] (`WRONGTYPE`).
    pub async fn inspect(&self) -> Result<RwLockInfo> {
        if self.key.is_empty() {
            return Err(LockError::invalid("key", "must not be empty"));
        }
        let writers = keys::rwlock_writers(&self.key)?;
        let counter_key = keys::fence_counter(&self.key)?;
        let reply = self
            .backend
            .eval_script(
                &script::RW_INSPECT,
                &[&self.key, &writers, &counter_key],
                &[],
            )
            .await
            .map_err(|source| LockError::backend_failed(&self.key, source))?;
        let parsed = match &reply {
            ScriptValue::Array(items) => match items.as_slice() {
                [holders, waiting, fence] => parse(holders, waiting, fence),
                _ => None,
            },
            _ => None,
        };
        let (readers, writer, waiting_writers, fence) =
            parsed.ok_or_else(|| unexpected(&self.key, script::RW_INSPECT.name(), &reply))?;
        Ok(RwLockInfo {
            readers,
            writer,
            waiting_writers,
            fence,
            waiting_here: waiting_here(&self.backend, &self.key),
        })
    }
}

type Parsed = (Vec<HoldInfo>, Option<HoldInfo>, Vec<HoldInfo>, Option<u64>);

fn parse(holders: &ScriptValue, waiting: &ScriptValue, fence: &ScriptValue) -> Option<Parsed> {
    let mut readers = Vec::new();
    let mut writer = None;
    for (member, remaining) in members(holders)? {
        // `read:<token>` or `write:<token>`.
        if let Some(token) = member.strip_prefix("read:") {
            readers.push(HoldInfo {
                token: token.to_owned(),
                remaining,
            });
        } else {
            let token = member.strip_prefix("write:")?;
            writer = Some(HoldInfo {
                token: token.to_owned(),
                remaining,
            });
        }
    }
    let waiting_writers = members(waiting)?
        .into_iter()
        .map(|(token, remaining)| HoldInfo { token, remaining })
        .collect();
    Some((readers, writer, waiting_writers, counter(fence)?))
}
