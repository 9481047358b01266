//! [`Semaphore::inspect`]: the holders, the stored limit and the last fence, in one read-only round
//! trip.

use super::Semaphore;
use crate::backend::ScriptValue;
use crate::error::{LockError, Result};
use crate::inspect::{PermitInfo, SemaphoreInfo, counter, members, unexpected, waiting_here};
use crate::{keys, script};

impl Semaphore {
    /// Who holds the semaphore now, in one read-only round trip: each live holder with its token,
    /// permits and remaining lease (on the server's clock), the limit stored beside them, the permits
    /// held and free, the last fence issued for the key; and how many tasks of this process wait.
    ///
    /// Answers also when the stored limit differs from this semaphore's (see
    /// [`SemaphoreInfo::available`]). An empty key is [`LockError::InvalidArgument`], and a key
    /// holding another kind of value a permanent [`LockError::Backend`] (`WRONGTYPE`).
    pub async fn inspect(&self) -> Result<SemaphoreInfo> {
        if self.key.is_empty() {
            return Err(LockError::invalid("key", "must not be empty"));
        }
        let counter_key = keys::fence_counter(&self.key)?;
        let reply = self
            .backend
            .eval_script(&script::SEMAPHORE_INSPECT, &[&self.key, &counter_key], &[])
            .await
            .map_err(|source| LockError::backend_failed(&self.key, source))?;
        let parsed = match &reply {
            ScriptValue::Array(items) => match items.as_slice() {
                [ScriptValue::Int(limit), fence, holders] => {
                    parse(*limit, fence, holders).map(|(limit, fence, holders)| {
                        let held = holders
                            .iter()
                            .fold(0u32, |sum, holder| sum.saturating_add(holder.permits));
                        SemaphoreInfo {
                            available: limit.unwrap_or(self.limit).saturating_sub(held),
                            held,
                            holders,
                            limit,
                            fence,
                            waiting_here: waiting_here(&self.backend, &self.key),
                        }
                    })
                }
                _ => None,
            },
            _ => None,
        };
        parsed.ok_or_else(|| unexpected(&self.key, script::SEMAPHORE_INSPECT.name(), &reply))
    }
}

type Parsed = (Option<u32>, Option<u64>, Vec<PermitInfo>);

fn parse(limit: i64, fence: &ScriptValue, holders: &ScriptValue) -> Option<Parsed> {
    let limit = match limit {
        -1 => None,
        n => Some(u32::try_from(n).ok()?),
    };
    let holders = members(holders)?
        .into_iter()
        .map(|(member, remaining)| {
            // `"<permits>:<token>"`.
            let (permits, token) = member.split_once(':')?;
            Some(PermitInfo {
                token: token.to_owned(),
                permits: permits.parse().ok()?,
                remaining,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some((limit, counter(fence)?, holders))
}
