//! Backend wrappers for tests: counting the calls that reach a backend, bypassing the in-process
//! waiting line, and injecting faults.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use crate::backend::{BackendError, Capabilities, LockBackend, ScriptValue, runtime_of};
use crate::runtime::Runtime;
use crate::script::Script;

/// A backend wrapper that counts the calls reaching the backend, to prove what was (not) sent.
#[derive(Debug)]
pub struct CountingBackend<B> {
    inner: B,
    set_nx_calls: AtomicUsize,
    script_calls: AtomicUsize,
    last_set_nx_ttl: std::sync::Mutex<Option<Duration>>,
    replicated_acks: std::sync::Mutex<Vec<usize>>,
}

impl<B: LockBackend> CountingBackend<B> {
    /// Wraps `inner`.
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            set_nx_calls: AtomicUsize::new(0),
            script_calls: AtomicUsize::new(0),
            last_set_nx_ttl: std::sync::Mutex::new(None),
            replicated_acks: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// How many replicas each successful `eval_script_replicated` call answered, in call order.
    pub fn replicated_acks(&self) -> Vec<usize> {
        self.replicated_acks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The TTL the last `set_nx` call asked for.
    pub fn last_set_nx_ttl(&self) -> Option<Duration> {
        *self
            .last_set_nx_ttl
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// How many `set_nx` calls were made.
    pub fn set_nx_calls(&self) -> usize {
        self.set_nx_calls.load(Ordering::SeqCst)
    }

    /// How many `eval_script` calls were made.
    pub fn script_calls(&self) -> usize {
        self.script_calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl<B: LockBackend> LockBackend for CountingBackend<B> {
    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, BackendError> {
        self.set_nx_calls.fetch_add(1, Ordering::SeqCst);
        *self
            .last_set_nx_ttl
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(ttl);
        self.inner.set_nx(key, value, ttl).await
    }

    async fn eval_script(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<ScriptValue, BackendError> {
        self.script_calls.fetch_add(1, Ordering::SeqCst);
        self.inner.eval_script(script, keys, args).await
    }

    /// Counted as a script call; what it answered is kept (see [`Self::replicated_acks`]).
    async fn eval_script_replicated(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
        replicas: usize,
        timeout: Duration,
    ) -> Result<(ScriptValue, usize), BackendError> {
        self.script_calls.fetch_add(1, Ordering::SeqCst);
        let reply = self
            .inner
            .eval_script_replicated(script, keys, args, replicas, timeout)
            .await?;
        self.replicated_acks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(reply.1);
        Ok(reply)
    }

    async fn wait_for_release(
        &self,
        signal: &str,
        timeout: Duration,
    ) -> Result<bool, BackendError> {
        self.inner.wait_for_release(signal, timeout).await
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn runtime(&self) -> Option<&Runtime> {
        self.inner.runtime()
    }
}

/// A backend wrapper without the in-process waiting line: tasks locking through it each talk to Redis
/// on their own, as tasks in different processes do. Mixed with the wrapped backend, it makes
/// contention race in the store itself, not only in the local line.
///
/// Its runtime is the wrapped backend's executor without the lines, so it is still the same backend
/// to a [`Redlock`](crate::Redlock).
#[derive(Debug)]
pub struct Unqueued<B> {
    inner: B,
    runtime: Option<Runtime>,
}

impl<B: LockBackend> Unqueued<B> {
    /// Wraps `inner`.
    pub fn new(inner: B) -> Self {
        let runtime = inner.runtime().map(Runtime::without_lines);
        Self { inner, runtime }
    }
}

#[async_trait]
impl<B: LockBackend> LockBackend for Unqueued<B> {
    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, BackendError> {
        self.inner.set_nx(key, value, ttl).await
    }

    async fn eval_script(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<ScriptValue, BackendError> {
        self.inner.eval_script(script, keys, args).await
    }

    async fn eval_script_replicated(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
        replicas: usize,
        timeout: Duration,
    ) -> Result<(ScriptValue, usize), BackendError> {
        self.inner
            .eval_script_replicated(script, keys, args, replicas, timeout)
            .await
    }

    async fn wait_for_release(
        &self,
        signal: &str,
        timeout: Duration,
    ) -> Result<bool, BackendError> {
        self.inner.wait_for_release(signal, timeout).await
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn runtime(&self) -> Option<&Runtime> {
        self.runtime.as_ref()
    }
}

/// A fault a [`FaultyBackend`] injects into every call until changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Calls pass through.
    None,
    /// Calls fail with a transient error without reaching the store.
    Error,
    /// Calls fail with a permanent error without reaching the store (a user whose ACL forbids the
    /// command, say): retrying cannot help.
    Refused,
    /// Calls wait this long before reaching the store.
    Delay(Duration),
    /// Calls never complete and never reach the store.
    Never,
    /// Calls reach the store, then the reply is held back this long: the server ran the command but
    /// the caller has not heard (a slow or lost reply).
    DelayReply(Duration),
    /// Calls reach the store twice and the caller gets the second reply: a client that applied a
    /// command, lost the reply with its connection, and re-sent it over a new one (fred's default).
    Resend,
}

/// A backend wrapper that injects [`Fault`]s around a real backend, for cancellation and fault tests.
#[derive(Debug)]
pub struct FaultyBackend<B> {
    inner: B,
    fault: std::sync::Mutex<Fault>,
    /// Calls still to fail with a transient error before `fault` applies again ([`FaultyBackend::fail_next`]).
    failing: std::sync::atomic::AtomicUsize,
}

impl<B: LockBackend> FaultyBackend<B> {
    /// Wraps `inner`, passing calls through until a fault is set.
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            fault: std::sync::Mutex::new(Fault::None),
            failing: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Makes the next `calls` calls fail with a transient error without reaching the store; later
    /// calls get the fault set by [`set_fault`](Self::set_fault) again. A blip, rather than an outage.
    pub fn fail_next(&self, calls: usize) {
        self.failing
            .store(calls, std::sync::atomic::Ordering::SeqCst);
    }

    fn take_failure(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.failing
            .fetch_update(SeqCst, SeqCst, |left| left.checked_sub(1))
            .is_ok()
    }

    /// Injects `fault` into every later call.
    pub fn set_fault(&self, fault: Fault) {
        *self.fault.lock().unwrap_or_else(|p| p.into_inner()) = fault;
    }

    fn fault(&self) -> Fault {
        *self.fault.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn inject<T, F: Future<Output = Result<T, BackendError>>>(
        &self,
        call: impl Fn() -> F,
    ) -> Result<T, BackendError> {
        let call = || call();
        if self.take_failure() {
            return Err(BackendError::transient("faulty", "injected failure"));
        }
        match self.fault() {
            Fault::Resend => {
                let _first = call().await;
                call().await
            }
            Fault::None => call().await,
            Fault::Error => Err(BackendError::transient("faulty", "injected failure")),
            Fault::Refused => Err(BackendError::permanent("faulty", "injected refusal")),
            Fault::Delay(delay) => {
                runtime_of(&self.inner).sleep(delay).await;
                call().await
            }
            Fault::Never => futures::future::pending().await,
            Fault::DelayReply(delay) => {
                let reply = call().await;
                runtime_of(&self.inner).sleep(delay).await;
                reply
            }
        }
    }
}

#[async_trait]
impl<B: LockBackend> LockBackend for FaultyBackend<B> {
    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, BackendError> {
        self.inject(|| self.inner.set_nx(key, value, ttl)).await
    }

    async fn eval_script(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<ScriptValue, BackendError> {
        self.inject(|| self.inner.eval_script(script, keys, args))
            .await
    }

    async fn eval_script_replicated(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
        replicas: usize,
        timeout: Duration,
    ) -> Result<(ScriptValue, usize), BackendError> {
        self.inject(|| {
            self.inner
                .eval_script_replicated(script, keys, args, replicas, timeout)
        })
        .await
    }

    async fn wait_for_release(
        &self,
        signal: &str,
        timeout: Duration,
    ) -> Result<bool, BackendError> {
        self.inner.wait_for_release(signal, timeout).await
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn runtime(&self) -> Option<&Runtime> {
        self.inner.runtime()
    }
}
