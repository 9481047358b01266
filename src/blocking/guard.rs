//! What every blocking guard has in common: an async guard shared with the runtime thread, its
//! blocking operations, `hold` with its loss flag, `run`, and the bounded release on drop.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use lock_core::{LockError, Result};

use super::runtime::{call, join, refuse_inside_async, spawn, spawn_and_wait};

/// How long dropping a guard waits for its release: the adapters' default call bound. A backend
/// with a lower bound answers (or fails) sooner; past this, the release goes on in the background.
pub(crate) const DROP_RELEASE_WAIT: Duration = Duration::from_secs(5);

/// The operations of an async guard the blocking guards use, for the four guard types alike.
pub(crate) trait AsyncGuard: fmt::Debug + Send + Sync + 'static {
    fn token(&self) -> &str;
    fn key(&self) -> &str;
    fn fence(&self) -> Option<u64>;
    fn valid_for(&self) -> Duration;
    fn is_owner(&self) -> BoxFuture<'_, Result<bool>>;
    fn extend(&self, by: Duration) -> BoxFuture<'_, Result<bool>>;
    fn renew(&self) -> BoxFuture<'_, Result<bool>>;
    fn release(self) -> BoxFuture<'static, Result<bool>>;
    fn hold<'a>(&'a self, work: BoxFuture<'a, ()>) -> BoxFuture<'a, Result<()>>;
}

/// Implements [`AsyncGuard`] for an async guard type, whose methods have the same names.
macro_rules! async_guard {
    ($($guard:ty),*) => {$(
        impl AsyncGuard for $guard {
            fn token(&self) -> &str {
                <$guard>::token(self)
            }
            fn key(&self) -> &str {
                <$guard>::key(self)
            }
            fn fence(&self) -> Option<u64> {
                <$guard>::fence(self)
            }
            fn valid_for(&self) -> Duration {
                <$guard>::valid_for(self)
            }
            fn is_owner(&self) -> BoxFuture<'_, Result<bool>> {
                Box::pin(<$guard>::is_owner(self))
            }
            fn extend(&self, by: Duration) -> BoxFuture<'_, Result<bool>> {
                Box::pin(<$guard>::extend(self, by))
            }
            fn renew(&self) -> BoxFuture<'_, Result<bool>> {
                Box::pin(<$guard>::renew(self))
            }
            fn release(self) -> BoxFuture<'static, Result<bool>> {
                Box::pin(<$guard>::release(self))
            }
            fn hold<'a>(&'a self, work: BoxFuture<'a, ()>) -> BoxFuture<'a, Result<()>> {
                Box::pin(<$guard>::hold(self, work))
            }
        }
    )*};
}

async_guard!(
    lock_core::LockGuard,
    lock_core::Permit,
    lock_core::ReadGuard,
    lock_core::WriteGuard
);

/// An async guard, shared with the tasks that run its operations on the blocking runtime, and
/// released (waiting a bounded time) when dropped.
pub(crate) struct Shell<G: AsyncGuard> {
    /// `None` only once `release` or `into_async` took it.
    inner: Option<Arc<G>>,
    /// Set when a `hold` reported the lease lost.
    lost: Arc<AtomicBool>,
}

impl<G: AsyncGuard> Shell<G> {
    pub(crate) fn new(inner: G) -> Self {
        Self {
            inner: Some(Arc::new(inner)),
            lost: Arc::default(),
        }
    }

    pub(crate) fn inner(&self) -> &Arc<G> {
        // Taken only by the methods that consume the shell.
        self.inner
            .as_ref()
            .expect("a live blocking guard has its async guard")
    }

    pub(crate) fn token(&self) -> &str {
        self.inner().token()
    }

    pub(crate) fn key(&self) -> &str {
        self.inner().key()
    }

    pub(crate) fn fence(&self) -> Option<u64> {
        self.inner().fence()
    }

    pub(crate) fn valid_for(&self) -> Duration {
        self.inner().valid_for()
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire) || self.valid_for().is_zero()
    }

    /// Runs `op` on the blocking runtime with a clone of the async guard, and waits for its answer.
    pub(crate) fn with<T, F>(&self, op: F) -> Result<T>
    where
        F: for<'a> FnOnce(&'a G) -> BoxFuture<'a, Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let inner = self.inner().clone();
        call(self.key(), async move {
            let answer = op(&inner).await;
            // Dropped here, before the caller hears back, so that the caller's is the last reference.
            drop(inner);
            answer
        })
    }

    pub(crate) fn is_owner(&self) -> Result<bool> {
        self.with(|guard| guard.is_owner())
    }

    pub(crate) fn extend(&self, by: Duration) -> Result<bool> {
        self.with(move |guard| guard.extend(by))
    }

    pub(crate) fn renew(&self) -> Result<bool> {
        self.with(|guard| guard.renew())
    }

    /// The async guard, for an operation that consumes it; `Err` when a task still shares it (only
    /// after a `hold` whose closure panicked and was caught: its task ends at once).
    pub(crate) fn into_async(mut self) -> Result<G> {
        let inner = self
            .inner
            .take()
            .expect("a live blocking guard has its async guard");
        let key = inner.key().to_owned();
        Arc::try_unwrap(inner).map_err(|shared| {
            // Put back, so that dropping `self` releases it as a guard dropped unreleased.
            self.inner = Some(shared);
            LockError::InvalidArgument {
                argument: "guard",
                reason: format!(
                    "the guard of {key} is still in use by a hold whose work panicked; it is \
                     released as a dropped guard is"
                ),
            }
        })
    }

    pub(crate) fn release(self) -> Result<bool> {
        refuse_inside_async()?;
        let key = self.key().to_owned();
        let inner = self.into_async()?;
        call(&key, inner.release())
    }

    /// Runs `work` on the calling thread while a task on the blocking runtime renews the lease (the
    /// async `hold`); `Err(Lost)` after `work` returns if the lease was lost meanwhile.
    pub(crate) fn hold<T>(&self, work: impl FnOnce() -> T) -> Result<T> {
        refuse_inside_async()?;
        let inner = self.inner().clone();
        let lost = self.lost.clone();
        let (done, finished) = futures::channel::oneshot::channel::<()>();
        // The renewals start before `work` does, and end when `done` is sent or dropped (also when
        // `work` panics).
        let renewing = spawn(self.key(), async move {
            let work: BoxFuture<'_, ()> = Box::pin(async move {
                let _ = finished.await;
            });
            let held = inner.hold(work).await;
            if held.is_err() {
                lost.store(true, Ordering::Release);
            }
            drop(inner);
            held
        })?;
        let output = work();
        let _ = done.send(());
        join(self.key(), renewing)?;
        Ok(output)
    }
}

impl<G: AsyncGuard> Drop for Shell<G> {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        if self.lost.load(Ordering::Acquire) {
            // A hold reported it lost and already released it in the background: dropping the async
            // guard on the runtime is all that is left.
            spawn_and_wait(async move { drop(inner) }, Duration::ZERO);
            return;
        }
        spawn_and_wait(
            async move {
                match Arc::try_unwrap(inner) {
                    Ok(guard) => {
                        let key = guard.key().to_owned();
                        if let Err(error) = guard.release().await {
                            // The async guard retries a failed release in the background.
                            tracing::debug!(%key, %error, "releasing a dropped blocking guard failed");
                        }
                    }
                    // A hold's task still has it: its last reference drops it there, which releases it
                    // in the background.
                    Err(shared) => drop(shared),
                }
            },
            DROP_RELEASE_WAIT,
        );
    }
}

impl<G: AsyncGuard> fmt::Debug for Shell<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Some(inner) => fmt::Debug::fmt(&**inner, f),
            None => f.write_str("(released)"),
        }
    }
}

/// The end of a blocking `run`, as the async one ends: the value when the release confirmed the lease,
/// `Lost` when it found it expired or taken over, and the value with a warning when the release failed.
pub(crate) fn finish_run<T>(key: &str, released: Result<bool>, value: T) -> Result<T> {
    match released {
        Ok(true) => Ok(value),
        Ok(false) => Err(LockError::Lost {
            key: key.to_owned(),
            reason: "it expired or was taken over before the work finished".into(),
        }),
        Err(error) => {
            tracing::warn!(
                %key,
                %error,
                "releasing the lock failed after the work finished; its TTL will free it"
            );
            Ok(value)
        }
    }
}

/// Writes the methods every blocking guard has, delegating to its [`Shell`], with docs naming the
/// async method each mirrors.
macro_rules! guard_methods {
    ($async:literal, $what:literal) => {
        #[doc = concat!("This ", $what, "'s token (see [`", $async, "::token`](crate::", $async, "::token)).")]
        pub fn token(&self) -> &str {
            self.shell.token()
        }

        #[doc = concat!("The key, exactly as given.")]
        pub fn key(&self) -> &str {
            self.shell.key()
        }

        #[doc = concat!("This ", $what, "'s fence, with fencing on (see [`", $async, "::fence`](crate::", $async, "::fence)).")]
        pub fn fence(&self) -> Option<u64> {
            self.shell.fence()
        }

        #[doc = concat!("How long this ", $what, " is still ours by the lease clock (see [`", $async, "::valid_for`](crate::", $async, "::valid_for)). Sends nothing.")]
        pub fn valid_for(&self) -> ::std::time::Duration {
            self.shell.valid_for()
        }

        #[doc = concat!("Whether this ", $what, " is still held, asking Redis (see [`", $async, "::is_owner`](crate::", $async, "::is_owner)).")]
        pub fn is_owner(&self) -> ::lock_core::Result<bool> {
            self.shell.is_owner()
        }

        #[doc = concat!("Moves this ", $what, "'s expiry `by` later (see [`", $async, "::extend`](crate::", $async, "::extend)).")]
        pub fn extend(&self, by: ::std::time::Duration) -> ::lock_core::Result<bool> {
            self.shell.extend(by)
        }

        #[doc = concat!("Resets this ", $what, "'s TTL unless it lives longer (see [`", $async, "::renew`](crate::", $async, "::renew)).")]
        pub fn renew(&self) -> ::lock_core::Result<bool> {
            self.shell.renew()
        }

        #[doc = concat!("Releases this ", $what, ": `Ok(true)` when it was still ours (see [`", $async, "::release`](crate::", $async, "::release)).")]
        pub fn release(self) -> ::lock_core::Result<bool> {
            self.shell.release()
        }

        #[doc = concat!("Runs `work` on this thread while the ", $what, " is renewed in the background, as")]
        #[doc = concat!("[`", $async, "::hold`](crate::", $async, "::hold) does for a future.")]
        ///
        /// Renewal runs on the blocking runtime's thread at about a third of the TTL. A synchronous
        /// closure cannot be cancelled: when the lease is lost while `work` runs, `work` still runs to
        /// its end, and `hold` then returns [`LockError::Lost`](crate::LockError::Lost) naming the key
        /// and the reason instead of its output (which is dropped). Work that must stop early checks
        /// [`is_lost`](Self::is_lost) as it goes. Once lost, the lease was released in the background
        /// and the guard claims it no more (`valid_for` is zero, `release` answers `Ok(false)`).
        ///
        /// [`LockError::InvalidArgument`](crate::LockError::InvalidArgument) naming `runtime`, without
        /// running `work`, when called from inside a tokio runtime.
        pub fn hold<T>(&self, work: impl FnOnce() -> T) -> ::lock_core::Result<T> {
            self.shell.hold(work)
        }

        #[doc = concat!("Whether this ", $what, " is known lost: a [`hold`](Self::hold) in progress (or an")]
        /// earlier one) found it lost, or its validity by the lease clock ran out. Sends nothing; for
        /// work inside `hold` that checks as it goes and stops early.
        pub fn is_lost(&self) -> bool {
            self.shell.is_lost()
        }
    };
}

pub(crate) use guard_methods;
