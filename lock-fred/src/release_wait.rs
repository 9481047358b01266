//! Waiting for a release signal: `BLPOP` on idle connections of our own, sent as a custom command.
//!
//! `BLPOP` holds up every other command on its connection while it blocks, so it never runs on the
//! shared client: the backend makes connections with the client's config on first use and keeps them
//! idle between waits. A wait that was cancelled or timed out closes its connection instead, since that
//! connection may still be blocked on the server.
//!
//! The cap holds on the client side: Redis checks blocked clients' timeouts only when its event loop
//! wakes, about every 100 ms at the default `hz 10`, so a `BLPOP` capped at 100 ms answers after 100 to
//! 200 ms. The `BLPOP` therefore races a timer of the same length; when the timer wins, fred's
//! backchannel (a second connection of the waiting client, made on first use) sends `CLIENT UNBLOCK
//! <id> TIMEOUT`, and the `BLPOP` answers at once: nil ("not woken"), or the signal it popped just
//! before. The connection is then idle again and kept. Closing it instead would not do: fred's `QUIT`
//! queues behind the `BLPOP`, which stays blocked on the server until its own timeout and can pop a
//! signal meant for the next wait. If the unblock fails (an ACL without `CLIENT UNBLOCK`, say), the wait
//! answers "not woken" and its connection is closed as before.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::{ClientInterface, ClientLike};
use fred::types::{ClientUnblockFlag, ClusterHash, Value};
use lock_core::BackendError;
use lock_core::adapter::{self, Command};

use crate::FredBackend;
use crate::convert::{self, bounded_by};

/// The longest a release wait blocks one of our connections.
const MAX_RELEASE_WAIT: Duration = Duration::from_secs(1);

/// Waits up to `timeout` (at most [`MAX_RELEASE_WAIT`]) for a release pushed to `signal`: `true` when
/// one was, `false` when the window passed.
pub(crate) async fn wait_for_release(
    backend: &FredBackend,
    signal: &str,
    timeout: Duration,
) -> Result<bool, BackendError> {
    let window = adapter::release_wait_window(timeout, MAX_RELEASE_WAIT);
    let blocker = blocker(backend).await?;
    let Some(client) = blocker.client.as_ref() else {
        return Ok(false);
    };
    // As a custom command: fred's `blpop` turns the nil reply of a wait that nothing woke into an
    // error (`ErrorKind::Timeout`, "Request timed out."), which would end the acquisition.
    let (blpop, args) =
        convert::custom(Command::blpop(signal, window), ClusterHash::FirstKey, true);
    let bound = backend.get_command_timeout().saturating_add(window);
    let popped: Value = {
        let mut call = std::pin::pin!(bounded_by(bound, client.custom(blpop, args)));
        match tokio::time::timeout(window, call.as_mut()).await {
            Ok(reply) => reply?,
            // The cap is up on our side; the server would answer up to 100 ms later (see the module
            // docs): unblock it, and take its answer.
            Err(_elapsed) => {
                if client
                    .unblock_self(Some(ClientUnblockFlag::Timeout))
                    .await
                    .is_err()
                {
                    // Not woken; the still-blocked connection is closed with `blocker`.
                    return Ok(false);
                }
                match tokio::time::timeout(backend.get_command_timeout(), call).await {
                    Ok(reply) => reply?,
                    Err(_elapsed) => return Ok(false),
                }
            }
        }
    };
    blocker.done();
    Ok(!popped.is_null())
}

/// An idle connection of our own for a blocking wait, or a new one with the client's config.
async fn blocker(backend: &FredBackend) -> Result<Blocker<'_>, BackendError> {
    let client = match backend.blockers.take() {
        Some(client) => client,
        None => {
            let client = backend.client().clone_new();
            backend
                .bounded(async {
                    client.init().await?;
                    Ok(())
                })
                .await?;
            client
        }
    };
    Ok(Blocker {
        client: Some(client),
        home: &backend.blockers,
    })
}

/// Idle connections for blocking waits, closed when the last clone of the backend goes.
#[derive(Default)]
pub(crate) struct Blockers(Mutex<Vec<Client>>);

impl Blockers {
    fn idle(&self) -> MutexGuard<'_, Vec<Client>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self) -> Option<Client> {
        self.idle().pop()
    }
}

impl Drop for Blockers {
    fn drop(&mut self) {
        for client in self.idle().drain(..) {
            quit_in_background(client);
        }
    }
}

impl std::fmt::Debug for Blockers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} idle", self.idle().len())
    }
}

/// A connection in a blocking wait: back to the idle list when answered, closed when the wait was
/// cancelled or timed out (it may still be blocked on the server).
struct Blocker<'a> {
    client: Option<Client>,
    home: &'a Blockers,
}

impl Blocker<'_> {
    fn done(mut self) {
        if let Some(client) = self.client.take() {
            self.home.idle().push(client);
        }
    }
}

impl Drop for Blocker<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            quit_in_background(client);
        }
    }
}

/// Closes `client` without blocking: fred clients run until told to quit.
fn quit_in_background(client: Client) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let _ = client.quit().await;
        });
    }
}
