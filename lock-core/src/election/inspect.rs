//! [`Election::inspect`]: the leader, its term and what its lease has left, in one read-only round
//! trip.

use super::{Election, id_of};
use crate::error::Result;
use crate::inspect::{ElectionInfo, inspect_lock};

impl Election {
    /// Who leads now, in one read-only round trip: the leader's candidate id and term token, the last
    /// term issued (the leader's, while one leads), how long the term has left unless renewed (on the
    /// server's clock); and how many campaigns of this process wait.
    ///
    /// As [`leader`](Self::leader), this names a candidate, and is no answer to "do I lead?" (see
    /// [Asking "do I lead?"](Self#asking-do-i-lead)).
    pub async fn inspect(&self) -> Result<ElectionInfo> {
        let lock = inspect_lock(&**self.lock.backend(), self.lock.key()).await?;
        Ok(ElectionInfo {
            leader: lock.holder.as_deref().map(|token| id_of(token).to_owned()),
            token: lock.holder,
            term: lock.fence,
            ttl: lock.ttl,
            waiting_here: lock.waiting_here,
        })
    }
}
