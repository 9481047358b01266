//! The blocking API's runtime: one small tokio runtime per process, driven by a thread of its own, on
//! which every blocking call runs its async counterpart while the caller waits.

use std::future::Future;
use std::sync::{Mutex, OnceLock, PoisonError, mpsc};
use std::time::Duration;

use lock_core::{BackendError, LockError, Result};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

/// The name of the thread that drives the runtime (as `ps -T` and debuggers show it).
const THREAD_NAME: &str = "redlease-blocking";

/// What a call made inside an async runtime answers, in [`LockError::InvalidArgument`] naming
/// `runtime`.
pub(crate) const INSIDE_ASYNC: &str = "redlease::blocking was called on a thread of a tokio runtime, \
     where waiting would block that runtime (and deadlock it if the Redis client runs there): use the \
     async API there (redlease::RedisLock and friends, with .await), or call the blocking API from a \
     thread outside any runtime (std::thread::spawn)";

/// The runtime's handle, once started. Never shut down: it lives as long as the process, and with it
/// the connection tasks of clients built on it ([`block_on`]).
static RUNTIME: OnceLock<Handle> = OnceLock::new();

/// The handle of the process's blocking runtime, started on first use.
///
/// `key` names the lock in the error when the runtime cannot be started (the OS refused a thread).
fn handle(key: &str) -> Result<&'static Handle> {
    if let Some(handle) = RUNTIME.get() {
        return Ok(handle);
    }
    // One starter at a time, so that racing first calls start one thread, not one each.
    static STARTING: Mutex<()> = Mutex::new(());
    let _starting = STARTING.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(handle) = RUNTIME.get() {
        return Ok(handle);
    }
    let handle = start().map_err(|error| LockError::Backend {
        key: key.to_owned(),
        source: BackendError::transient("redlease-blocking", error),
    })?;
    Ok(RUNTIME.get_or_init(|| handle))
}

/// Builds a current-thread runtime and hands it to a thread of its own, which drives it forever:
/// tasks spawned through the handle, from any thread, run there.
fn start() -> std::io::Result<Handle> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name(THREAD_NAME)
        .build()?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name(THREAD_NAME.into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
    Ok(handle)
}

/// `Err` when the calling thread is inside a tokio runtime: waiting there would block it, and
/// deadlock it when the Redis client's connection runs on it. Also true on the blocking runtime's own
/// thread, inside a future given to [`block_on`].
pub(crate) fn refuse_inside_async() -> Result<()> {
    match Handle::try_current() {
        Ok(_) => Err(LockError::InvalidArgument {
            argument: "runtime",
            reason: INSIDE_ASYNC.into(),
        }),
        Err(_) => Ok(()),
    }
}

/// Runs `future` on the blocking runtime and waits for its result: the one way every blocking call
/// reaches the async core. A panic in `future` is resumed here, on the caller's thread.
pub(crate) fn call<T, F>(key: &str, future: F) -> Result<T>
where
    F: Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    join(key, spawn(key, future)?)
}

/// Starts `future` on the blocking runtime, to [`join`] later.
pub(crate) fn spawn<T, F>(key: &str, future: F) -> Result<JoinHandle<Result<T>>>
where
    F: Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    refuse_inside_async()?;
    Ok(handle(key)?.spawn(future))
}

/// Waits for a task [`spawn`] started. A panic in it is resumed here, on the caller's thread.
pub(crate) fn join<T>(key: &str, task: JoinHandle<Result<T>>) -> Result<T> {
    refuse_inside_async()?;
    match futures::executor::block_on(task) {
        Ok(output) => output,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        // The runtime is never shut down, so its tasks are never cancelled; answered all the same.
        Err(error) => Err(LockError::Backend {
            key: key.to_owned(),
            source: BackendError::transient("redlease-blocking", error),
        }),
    }
}

/// Runs `future` on the blocking runtime and waits for it at most `bound` (not at all inside an async
/// runtime); past that it goes on in the background. For a guard's release on drop, which must never
/// block long, nor panic.
pub(crate) fn spawn_and_wait(future: impl Future<Output = ()> + Send + 'static, bound: Duration) {
    let Ok(handle) = handle("") else {
        // No runtime thread could be started: dropping `future` drops the guard it owns, and the
        // lock's TTL frees the key.
        return;
    };
    let (done, finished) = mpsc::sync_channel::<()>(1);
    handle.spawn(async move {
        future.await;
        let _ = done.send(());
    });
    if refuse_inside_async().is_ok() {
        // A timeout, or a task that panicked (its sender dropped): either way, stop waiting.
        let _ = finished.recv_timeout(bound);
    }
}

/// Runs `future` on the blocking runtime's thread and waits for its output: for what a backend needs
/// built or connected inside a tokio runtime (a fred client's `init`, which spawns its connection
/// task on the runtime it runs on). Clients built this way keep running on that thread for as long as
/// the process lives.
///
/// [`LockError::InvalidArgument`] naming `runtime` when called from inside a tokio runtime (including
/// from inside a future given to `block_on`), where waiting would block that runtime. A panic in
/// `future` is resumed on the calling thread.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let url = "redis://127.0.0.1:1";
/// use redlease::fred::FredBackend;
/// use redlease::fred::fred::prelude::{Builder, ClientLike, Config, ReconnectPolicy};
///
/// let mut builder = Builder::from_config(Config::from_url(url)?);
/// builder.set_policy(ReconnectPolicy::new_constant(0, 500));
/// let client = builder.build()?;
/// // `init` spawns the client's connection task on the runtime it runs on: the blocking one.
/// # let _ = || -> Result<(), Box<dyn std::error::Error>> {
/// redlease::blocking::block_on({
///     let client = client.clone();
///     async move { client.init().await.map(drop) }
/// })??;
/// # Ok(()) };
/// let backend = FredBackend::from(client);
/// # drop(backend);
/// # Ok(())
/// # }
/// ```
pub fn block_on<F>(future: F) -> Result<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    call("", async move { Ok(future.await) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_run_on_the_runtime_thread_not_the_callers() {
        let name = block_on(async { std::thread::current().name().map(str::to_owned) }).unwrap();
        assert_eq!(name.as_deref(), Some(THREAD_NAME));
        let again = block_on(async { std::thread::current().id() }).unwrap();
        let first = block_on(async { std::thread::current().id() }).unwrap();
        assert_eq!(again, first, "one runtime thread per process");
        assert_ne!(first, std::thread::current().id());
    }

    #[test]
    fn a_call_from_inside_a_runtime_is_refused_not_blocked() {
        let error = block_on(async { block_on(async { 1 }) }).unwrap();
        match error {
            Err(LockError::InvalidArgument { argument, reason }) => {
                assert_eq!(argument, "runtime");
                assert!(reason.contains("use the async API"), "{reason}");
            }
            other => panic!("expected InvalidArgument(runtime), got {other:?}"),
        }
    }

    #[test]
    fn a_panic_in_the_future_reaches_the_caller() {
        let caught = std::panic::catch_unwind(|| block_on(async { panic!("boom in the task") }));
        let payload = caught.expect_err("the panic is resumed on the caller");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"boom in the task"));
        // The runtime survives a task's panic.
        assert_eq!(block_on(async { 2 }).unwrap(), 2);
    }

    #[test]
    fn spawn_and_wait_waits_at_most_its_bound() {
        let started = std::time::Instant::now();
        spawn_and_wait(
            async { tokio::time::sleep(Duration::from_secs(5)).await },
            Duration::from_millis(100),
        );
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(100), "{waited:?}");
        assert!(waited < Duration::from_secs(2), "{waited:?}");
    }
}
