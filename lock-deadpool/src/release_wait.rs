//! Waiting for a release signal: `BLPOP` on a connection checked out of the pool for the wait.
//!
//! A lone multiplexed connection cannot block without holding up every other call on it, so only pools
//! wait (the others answer `None`, and waiters poll). A wait that is cancelled or times out discards
//! its connection rather than return it to the pool still blocked.
//!
//! The cap holds on the client side: Redis checks blocked clients' timeouts only when its event loop
//! wakes, about every 100 ms at the default `hz 10`, so a `BLPOP` capped at 100 ms answers after 100 to
//! 200 ms. The `BLPOP` therefore races a timer of the same length; when the timer wins the wait answers
//! "not woken" and the connection, still blocked on the server, is discarded. A signal that this
//! abandoned `BLPOP` pops is lost to every waiter, which is harmless: signals are hints, and the waiter
//! that gave up tries the lock again at once, so the release it missed is taken all the same.

use std::time::{Duration, Instant};

use deadpool_redis::redis::Value;
use lock_core::BackendError;
use lock_core::adapter::{self, Command};

use crate::DeadpoolBackend;
use crate::connection::Blocked;
use crate::convert::{self, bounded};

/// The longest a release wait blocks a connection: well below redis-rs's 500 ms response timeout, so
/// that a loaded machine still reads the reply in time.
const MAX_RELEASE_WAIT: Duration = Duration::from_millis(250);

/// Waits up to `timeout` (at most [`MAX_RELEASE_WAIT`]) for a release pushed to `signal`: `true` when
/// one was, `false` when the window passed.
pub(crate) async fn wait_for_release(
    backend: &DeadpoolBackend,
    signal: &str,
    timeout: Duration,
) -> Result<bool, BackendError> {
    let window = adapter::release_wait_window(timeout, MAX_RELEASE_WAIT);
    let bound = backend.get_command_timeout().saturating_add(window);
    bounded(bound, async move {
        let mut blocked = Blocked::new(backend.conn.checkout().await?);
        let blpop = convert::cmd(Command::blpop(signal, window));
        let Some(conn) = blocked.conn() else {
            return Ok(false);
        };
        let started = Instant::now();
        let Ok(reply) = tokio::time::timeout(window, conn.query_raw(&blpop)).await else {
            // The cap is up on our side; the server would answer up to 100 ms later (see the module
            // docs). Not woken, and the still-blocked connection is discarded with `blocked`.
            return Ok(false);
        };
        match reply {
            Ok(value) => {
                blocked.release();
                Ok(!matches!(value, Value::Nil))
            }
            // redis-rs's response timeout fired after the blocking window was over: nobody signalled
            // in time, which is "not woken", not a failure (the connection, whose reply may still come,
            // is discarded with `blocked`).
            Err(error) if error.is_timeout() && started.elapsed() >= window => Ok(false),
            Err(error) => Err(convert::backend_error(error)),
        }
    })
    .await
}
