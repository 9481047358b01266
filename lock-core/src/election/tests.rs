use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use futures::executor::block_on;
use futures::future::{Either, select};

use super::*;
use crate::async_trait;
use crate::backend::{BackendError, Capabilities};
use crate::memory::MemoryBackend;
use crate::runtime::Runtime;
use crate::script::Script;

/// Fails its first `failures` acquisition attempts (the fenced acquire script an election runs), as a
/// server answering `LOADING` during a failover would (transiently) or as one refusing the commands
/// (permanently), then passes them through. Other calls (the background release of a failed attempt,
/// say) pass through uncounted.
#[derive(Debug)]
struct Flaky {
    inner: MemoryBackend,
    failures: AtomicUsize,
    transient: bool,
    calls: AtomicUsize,
}

impl Flaky {
    fn new(inner: MemoryBackend, failures: usize, transient: bool) -> Arc<Self> {
        Arc::new(Self {
            inner,
            failures: AtomicUsize::new(failures),
            transient,
            calls: AtomicUsize::new(0),
        })
    }

    fn check(&self) -> Result<(), BackendError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let failing = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        match (failing, self.transient) {
            (false, _) => Ok(()),
            (true, true) => Err(BackendError::transient(
                "flaky",
                "LOADING Redis is loading the dataset in memory",
            )),
            (true, false) => Err(BackendError::permanent(
                "flaky",
                "NOPERM this user has no permissions to access one of the keys",
            )),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl LockBackend for Flaky {
    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, BackendError> {
        self.inner.set_nx(key, value, ttl).await
    }

    async fn eval_script(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<ScriptValue, BackendError> {
        if script.sha1() == script::FENCED_ACQUIRE.sha1() {
            self.check()?;
        }
        self.inner.eval_script(script, keys, args).await
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn runtime(&self) -> Option<&Runtime> {
        self.inner.runtime()
    }
}

/// Hole 15: a campaign keeps going through transient failures (here five `LOADING` replies in a row)
/// and leads once the server answers again.
#[test]
fn campaign_keeps_going_through_transient_failures() {
    block_on(async {
        let flaky = Flaky::new(MemoryBackend::new(), 5, true);
        let election = Election::new(flaky.clone(), "election").id("node-a");
        let started = Instant::now();
        let leadership = election
            .campaign()
            .await
            .expect("leads once the failures pass");
        assert_eq!(
            flaky.calls(),
            6,
            "five failed attempts, then the winning one"
        );
        assert!(leadership.is_current().await.unwrap());
        assert_eq!(election.leader().await.unwrap().as_deref(), Some("node-a"));
        // Backed off between attempts, within the documented ceilings (20, 40, 80, 160, 320 ms).
        assert!(
            started.elapsed() < Duration::from_millis(620 + 1500),
            "{:?}",
            started.elapsed()
        );
        assert!(leadership.resign().await.unwrap());
    });
}

/// A campaign through an outage that does not end keeps trying, with backoff, until it is dropped.
#[test]
fn campaign_backs_off_until_cancelled() {
    block_on(async {
        let flaky = Flaky::new(MemoryBackend::new(), usize::MAX, true);
        let election = Election::new(flaky.clone(), "election");
        let campaign = pin!(election.campaign());
        let window = runtime_of(&flaky).sleep(Duration::from_millis(600));
        match select(campaign, window).await {
            Either::Left((result, _)) => panic!("the campaign gave up: {result:?}"),
            Either::Right(((), _)) => {}
        }
        let calls = flaky.calls();
        assert!(calls >= 2, "tried again after failing ({calls} calls)");
        assert!(calls < 60, "backed off between attempts ({calls} calls)");
    });
}

/// A permanent failure ends the campaign at once, with that error.
#[test]
fn campaign_returns_permanent_failures() {
    block_on(async {
        let flaky = Flaky::new(MemoryBackend::new(), 1, false);
        let election = Election::new(flaky.clone(), "election");
        match election.campaign().await {
            Err(error @ LockError::Backend { .. }) => assert!(!error.is_transient()),
            other => panic!("expected the permanent error, got {other:?}"),
        }
        assert_eq!(flaky.calls(), 1);
        // Bad input is permanent too.
        let err = Election::new(MemoryBackend::new(), "e")
            .id("")
            .campaign()
            .await
            .unwrap_err();
        assert!(
            matches!(err, LockError::InvalidArgument { argument: "id", .. }),
            "{err}"
        );
        let err = Election::new(MemoryBackend::new(), "e")
            .timeout(Duration::ZERO)
            .campaign()
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                LockError::InvalidArgument {
                    argument: "timeout",
                    ..
                }
            ),
            "{err}"
        );
    });
}

/// Hole 14: two clones campaign with one candidate id. The loser is never told it leads by the
/// documented check (`Leadership::is_current`, or comparing `leader_token` with the term's token),
/// although `leader() == get_id()` holds for it.
#[test]
fn clones_campaigning_are_told_apart() {
    block_on(async {
        let backend = MemoryBackend::new();
        let first = Election::new(backend.clone(), "election")
            .timeout(Duration::from_secs(30))
            .id("node-a");
        let second = first.clone();
        assert_eq!(first.get_id(), second.get_id());

        // The second clone leads, then its term ends without it noticing (the key is deleted, as a
        // failover that lost it would), and the first clone wins the next term.
        let stale = second.campaign().await.unwrap();
        assert!(stale.is_current().await.unwrap());
        assert!(backend.delete("election"));
        let current = first.campaign().await.unwrap();
        assert!(current.term() > stale.term());
        assert_ne!(current.token(), stale.token());

        // The id check cannot tell them apart...
        assert_eq!(
            second.leader().await.unwrap().as_deref(),
            Some(second.get_id())
        );
        // ...the documented checks can.
        assert!(
            !stale.is_current().await.unwrap(),
            "the loser does not lead"
        );
        assert!(current.is_current().await.unwrap(), "the winner leads");
        let token = second.leader_token().await.unwrap();
        assert_eq!(token.as_deref(), Some(current.token()));
        assert_ne!(token.as_deref(), Some(stale.token()));

        // Both clones campaigning at once: the one still campaigning has no term; when the leader
        // resigns, it wins a term of its own.
        let waiting = pin!(second.campaign());
        let window = runtime_of(&backend).sleep(Duration::from_millis(300));
        let waiting = match select(waiting, window).await {
            Either::Left((won, _)) => panic!("two clones led at once: {won:?}"),
            Either::Right(((), waiting)) => waiting,
        };
        let resigned = current.token().to_owned();
        assert!(current.resign().await.unwrap());
        let next = waiting.await.unwrap();
        assert_ne!(next.token(), resigned);
        assert!(next.is_current().await.unwrap());
        assert!(!stale.is_current().await.unwrap());
        assert!(next.resign().await.unwrap());
        assert_eq!(first.leader_token().await.unwrap(), None);
        assert_eq!(first.leader().await.unwrap(), None);
    });
}

#[test]
fn ids_are_read_back_from_tokens() {
    let uuid = "67e55044-10b1-426f-9247-bb680e5fe0c8";
    assert_eq!(id_of(&format!("node-a:{uuid}")), "node-a");
    assert_eq!(id_of(&format!("a:b:{uuid}")), "a:b");
    assert_eq!(id_of(&format!(":{uuid}")), "");
    assert_eq!(id_of("short"), "short");
    assert_eq!(
        id_of("ünïcödé-with-no-uuid-but-long-enough-to-slice"),
        "ünïcödé-with-no-uuid-but-long-enough-to-slice"
    );
}

/// The memory store behind a backend that cannot run anything in the background: what a guard
/// leaves to a background release stays until its TTL.
#[derive(Debug, Default)]
struct NoRuntime(MemoryBackend);

#[async_trait]
impl LockBackend for NoRuntime {
    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, BackendError> {
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
fn resign_deletes_the_election_key_itself() {
    block_on(async {
        let backend = Arc::new(NoRuntime::default());
        let election = Election::new(backend.clone(), "resigning").id("a");
        let term = election.campaign().await.expect("campaign");
        assert!(backend.0.get("resigning").is_some());
        assert!(term.resign().await.expect("resign"));
        assert_eq!(
            backend.0.get("resigning"),
            None,
            "resign left the key to a background release (none runs here) or to the TTL"
        );
        assert_eq!(election.leader().await.expect("leader"), None);
    });
}

#[test]
fn debug_names_the_candidate_and_the_key() {
    let election = Election::new(MemoryBackend::new(), "scheduler").id("node-a");
    let shown = format!("{election:?}");
    assert!(
        shown.contains("node-a") && shown.contains("scheduler"),
        "{shown}"
    );
}
