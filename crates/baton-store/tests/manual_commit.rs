//! The engine with `manual_commit` (the simulator's mode): nothing is acknowledged before the
//! caller runs `commit_pending`, and defects the simulator found, pinned down step by step.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use baton_core::{Change, LockName, Snapshot};
use baton_store::{
    AcquireArgs, AcquireOutcome, ApiKey, AuditEntry, Engine, EngineOptions, ManualClock,
    PersistError, Persister, Store,
};

/// A durable-looking persister that keeps nothing: enough for the engine to wait for commits.
#[derive(Default)]
struct Durable {
    audit: Vec<AuditEntry>,
}

impl Persister for Durable {
    fn kind(&self) -> &'static str {
        "test"
    }

    fn load(&mut self) -> Result<Snapshot, PersistError> {
        Ok(Snapshot::default())
    }

    fn commit(&mut self, _changes: &[Change]) -> Result<(), PersistError> {
        Ok(())
    }

    fn put_key(&mut self, _key: &ApiKey) -> Result<(), PersistError> {
        Ok(())
    }

    fn keys(&mut self) -> Result<Vec<ApiKey>, PersistError> {
        Ok(Vec::new())
    }

    fn append_audit(&mut self, entry: &AuditEntry) -> Result<AuditEntry, PersistError> {
        self.audit.push(entry.clone());
        Ok(entry.clone())
    }

    fn audit(
        &mut self,
        _before: Option<u64>,
        _limit: usize,
    ) -> Result<Vec<AuditEntry>, PersistError> {
        Ok(self.audit.clone())
    }
}

fn engine() -> Arc<Engine> {
    let options = EngineOptions {
        run_timer: false,
        manual_commit: true,
        ..EngineOptions::default()
    };
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    Arc::new(Engine::open(Box::new(Durable::default()), clock, options).expect("open"))
}

fn poll<T>(future: &mut Pin<Box<dyn Future<Output = T> + Send + '_>>) -> Poll<T> {
    future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
}

/// Polls, committing between polls, until the answer comes.
fn drive<T>(engine: &Engine, mut future: Pin<Box<dyn Future<Output = T> + Send + '_>>) -> T {
    for _ in 0..100 {
        if let Poll::Ready(answer) = poll(&mut future) {
            return answer;
        }
        engine.commit_pending().expect("commit");
    }
    panic!("no answer after 100 commits");
}

fn args(owner: &str, queue: bool, request_id: Option<&str>) -> AcquireArgs {
    AcquireArgs {
        mode: baton_core::Mode::Exclusive,
        value: None,
        lock: LockName::new("x").unwrap(),
        owner: owner.into(),
        owner_key: None,
        ttl_ms: 60_000,
        capacity: None,
        wait: Duration::ZERO,
        queue,
        request_id: request_id.map(Into::into),
        api_key: None,
        quota: Default::default(),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn answers_wait_for_commit_pending() {
    let engine = engine();
    let mut acquire = engine.acquire(args("a", false, None));
    assert!(
        poll(&mut acquire).is_pending(),
        "no grant before its commit"
    );
    assert!(
        poll(&mut acquire).is_pending(),
        "still none: nothing committed"
    );
    assert!(engine.commit_pending().expect("commit") > 0);
    match poll(&mut acquire) {
        Poll::Ready(Ok(AcquireOutcome::Granted(lease))) => assert_eq!(lease.owner, "a"),
        other => panic!("expected the grant once committed, got {other:?}"),
    }
    assert_eq!(engine.commit_pending().expect("nothing pending"), 0);
}

/// G5: a retry of a queued request, arriving after its ticket was granted, collects the lease
/// as a wait on the ticket would. When that retry is cut off before it answers (its client
/// went away), the grant must be handed on, not kept for the lease's whole TTL (found by
/// baton-sim: the engine kept it).
#[tokio::test(flavor = "current_thread")]
async fn a_retry_cut_off_after_collecting_a_grant_hands_it_on() {
    let engine = engine();
    let holder = match drive(&engine, engine.acquire(args("holder", false, None))) {
        Ok(AcquireOutcome::Granted(lease)) => lease,
        other => panic!("expected a grant, got {other:?}"),
    };
    let queued = drive(&engine, engine.acquire(args("waiter", true, Some("r1"))));
    assert!(
        matches!(queued, Ok(AcquireOutcome::Queued(_))),
        "{queued:?}"
    );
    // The release grants the ticket; nobody has collected it yet.
    drive(&engine, engine.release(holder.id)).expect("release");
    let mut retry = engine.acquire(args("waiter", true, Some("r1")));
    assert!(
        poll(&mut retry).is_pending(),
        "the grant is not durable yet"
    );
    drop(retry);
    let view = drive(&engine, engine.lock(LockName::new("x").unwrap()))
        .expect("lock")
        .expect("the lock exists");
    assert!(
        view.holders.is_empty(),
        "the grant nobody received is still held: {:?}",
        view.holders
    );
}
