//! Replica acknowledgement: writes to a lock that count only once `WAIT` confirms enough replicas have
//! them ([`RedisLock::replicas`](crate::RedisLock::replicas)).

use std::time::Duration;

use crate::backend::{BackendError, LockBackend, ScriptValue};
use crate::error::{LockError, Result};
use crate::script::Script;
use crate::time::to_millis;

/// How many replicas must acknowledge a lock write, and how long to wait for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReplicaAck {
    replicas: usize,
    /// Whole milliseconds, at least 1: `WAIT n 0` would block forever.
    timeout: Duration,
}

impl ReplicaAck {
    /// Checks the configuration: `None` when no replica is asked for (`replicas == 0`, whatever the
    /// timeout), `InvalidArgument` naming `replica_wait` when the timeout is zero or too long.
    pub(crate) fn validate(config: Option<(usize, Duration)>) -> Result<Option<Self>> {
        match config {
            None | Some((0, _)) => Ok(None),
            Some((replicas, timeout)) => {
                let millis = to_millis("replica_wait", timeout)?;
                Ok(Some(Self {
                    replicas,
                    timeout: Duration::from_millis(millis),
                }))
            }
        }
    }

    /// Runs `script` and `WAIT` on one connection: the reply, and how many replicas acknowledged.
    pub(crate) async fn eval(
        &self,
        backend: &dyn LockBackend,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<(ScriptValue, usize), BackendError> {
        backend
            .eval_script_replicated(script, keys, args, self.replicas, self.timeout)
            .await
    }

    /// `NotReplicated` for `key` when fewer than the wanted replicas acknowledged.
    pub(crate) fn check(&self, key: &str, acked: usize) -> Result<()> {
        if acked >= self.replicas {
            Ok(())
        } else {
            Err(LockError::NotReplicated {
                key: key.to_owned(),
                wanted: self.replicas,
                acked,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use futures::executor::block_on;

    use super::*;
    use crate::memory::MemoryBackend;
    use crate::{RedisLock, script};

    /// The in-memory backend, with replicas that acknowledge as told.
    #[derive(Debug, Default)]
    struct Acking {
        store: MemoryBackend,
        acked: AtomicUsize,
    }

    #[async_trait]
    impl LockBackend for Acking {
        async fn set_nx(
            &self,
            key: &str,
            value: &str,
            ttl: Duration,
        ) -> Result<bool, BackendError> {
            self.store.set_nx(key, value, ttl).await
        }

        async fn eval_script(
            &self,
            script: &Script,
            keys: &[&str],
            args: &[&str],
        ) -> Result<ScriptValue, BackendError> {
            self.store.eval_script(script, keys, args).await
        }

        async fn eval_script_replicated(
            &self,
            script: &Script,
            keys: &[&str],
            args: &[&str],
            _replicas: usize,
            _timeout: Duration,
        ) -> Result<(ScriptValue, usize), BackendError> {
            let reply = self.store.eval_script(script, keys, args).await?;
            Ok((reply, self.acked.load(Ordering::SeqCst)))
        }
    }

    /// Only the two required methods: no replica acknowledgement.
    #[derive(Debug, Default)]
    struct Plain(MemoryBackend);

    #[async_trait]
    impl LockBackend for Plain {
        async fn set_nx(
            &self,
            key: &str,
            value: &str,
            ttl: Duration,
        ) -> Result<bool, BackendError> {
            self.0.set_nx(key, value, ttl).await
        }

        async fn eval_script(
            &self,
            script: &Script,
            keys: &[&str],
            args: &[&str],
        ) -> Result<ScriptValue, BackendError> {
            self.0.eval_script(script, keys, args).await
        }
    }

    #[test]
    fn writes_count_only_when_acknowledged() {
        block_on(async {
            let backend = Arc::new(Acking::default());
            backend.acked.store(2, Ordering::SeqCst);
            for fencing in [false, true] {
                let lock = RedisLock::new(backend.clone(), "k")
                    .fencing(fencing)
                    .replicas(2, Duration::from_millis(10));
                let guard = lock.acquire().await.expect("acknowledged by 2");
                assert_eq!(guard.fence().is_some(), fencing);
                assert!(guard.renew().await.unwrap());

                backend.acked.store(1, Ordering::SeqCst);
                let before = guard.valid_for();
                for result in [
                    guard.renew().await,
                    guard.extend(Duration::from_secs(60)).await,
                ] {
                    assert!(
                        matches!(
                            result,
                            Err(LockError::NotReplicated {
                                wanted: 2,
                                acked: 1,
                                ..
                            })
                        ),
                        "{result:?}"
                    );
                }
                assert!(
                    guard.valid_for() <= before,
                    "an unacknowledged write does not extend the local validity"
                );
                let err = lock.try_acquire().await.map(|g| g.is_some());
                assert!(
                    matches!(err, Ok(false)),
                    "busy is answered as busy: {err:?}"
                );
                assert!(guard.release().await.unwrap());

                let err = lock.acquire().await.unwrap_err();
                assert!(
                    matches!(
                        err,
                        LockError::NotReplicated {
                            wanted: 2,
                            acked: 1,
                            ..
                        }
                    ),
                    "{err:?}"
                );
                assert!(err.is_transient());
                assert_eq!(backend.store.get("k"), None, "released again");
                backend.acked.store(2, Ordering::SeqCst);
            }
        });
    }

    #[test]
    fn a_lost_lock_is_answered_without_looking_at_replicas() {
        block_on(async {
            let backend = Arc::new(Acking::default());
            backend.acked.store(1, Ordering::SeqCst);
            let lock = RedisLock::new(backend.clone(), "k").replicas(1, Duration::from_millis(10));
            let guard = lock.acquire().await.unwrap();
            backend.store.delete("k");
            backend.acked.store(0, Ordering::SeqCst);
            assert!(!guard.renew().await.unwrap());
            assert!(!guard.extend(Duration::from_secs(1)).await.unwrap());
        });
    }

    #[test]
    fn backends_without_wait_fail_permanently() {
        block_on(async {
            let backend = Arc::new(Plain::default());
            let err = RedisLock::new(backend.clone(), "k")
                .replicas(1, Duration::from_millis(10))
                .acquire()
                .await
                .unwrap_err();
            assert!(matches!(err, LockError::Backend { .. }), "{err:?}");
            assert!(!err.is_transient());
            assert_eq!(backend.0.get("k"), None);
            // The memory backend runs the script and has no replica.
            let memory = MemoryBackend::new();
            let (reply, acked) = memory
                .eval_script_replicated(
                    &script::ACQUIRE,
                    &["k"],
                    &["t", "1000"],
                    1,
                    Duration::from_millis(1),
                )
                .await
                .unwrap();
            assert_eq!((reply, acked), (ScriptValue::Int(1), 0));
        });
    }

    #[test]
    fn zero_replicas_is_off_and_a_zero_timeout_is_refused() {
        assert_eq!(ReplicaAck::validate(None).unwrap(), None);
        assert_eq!(
            ReplicaAck::validate(Some((0, Duration::ZERO))).unwrap(),
            None
        );
        let err = ReplicaAck::validate(Some((1, Duration::ZERO))).unwrap_err();
        assert!(matches!(
            err,
            LockError::InvalidArgument {
                argument: "replica_wait",
                ..
            }
        ));
        let ack = ReplicaAck::validate(Some((2, Duration::from_micros(1500))))
            .unwrap()
            .unwrap();
        assert_eq!(ack.timeout, Duration::from_millis(2), "rounded up");
        assert!(ack.check("k", 2).is_ok());
        assert!(ack.check("k", 3).is_ok());
        match ack.check("k", 1) {
            Err(LockError::NotReplicated { key, wanted, acked }) => {
                assert_eq!((key.as_str(), wanted, acked), ("k", 2, 1));
            }
            other => panic!("{other:?}"),
        }
    }
}
