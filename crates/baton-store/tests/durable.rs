//! The conformance suite against the engine over a persister that keeps what it commits in
//! memory across "restarts" (reopening a key), as a durable store would. This runs the restart
//! cases in this crate, and exercises the engine's committer (group commit) path, which the
//! volatile [`MemoryPersister`](baton_store::MemoryPersister) skips.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use baton_core::{Change, Snapshot};
use baton_store::conformance::{self, Backend};
use baton_store::{
    ApiKey, AuditEntry, Engine, EngineOptions, ManualClock, PersistError, Persister, Store,
};

/// Committed snapshots by key: the "disk".
type Disks = Arc<Mutex<HashMap<String, Snapshot>>>;

/// Keys and audit entries by store key: the rest of the "disk".
type KeyDisks = Arc<Mutex<HashMap<String, (Vec<ApiKey>, Vec<AuditEntry>)>>>;

/// Applies each committed batch to the snapshot of its key, all or nothing.
struct SnapshotPersister {
    key: String,
    disks: Disks,
    key_disks: KeyDisks,
    /// Fail every commit that holds a grant (a disk that broke).
    refuse_grants: bool,
}

impl Persister for SnapshotPersister {
    fn kind(&self) -> &'static str {
        "snapshot"
    }

    fn load(&mut self) -> Result<Snapshot, PersistError> {
        Ok(self
            .disks
            .lock()
            .unwrap()
            .get(&self.key)
            .cloned()
            .unwrap_or_default())
    }

    fn commit(&mut self, changes: &[Change]) -> Result<(), PersistError> {
        if self.refuse_grants
            && changes
                .iter()
                .any(|change| matches!(change, Change::LeasePut(_)))
        {
            return Err(PersistError("the disk is broken".into()));
        }
        // A durable commit takes a while; requests meanwhile gather into the next batch.
        std::thread::sleep(Duration::from_micros(200));
        let mut disks = self.disks.lock().unwrap();
        let mut snapshot = disks.get(&self.key).cloned().unwrap_or_default();
        for change in changes {
            apply(&mut snapshot, change);
        }
        disks.insert(self.key.clone(), snapshot);
        Ok(())
    }

    fn put_key(&mut self, key: &ApiKey) -> Result<(), PersistError> {
        let mut disks = self.key_disks.lock().unwrap();
        let (keys, _) = disks.entry(self.key.clone()).or_default();
        keys.retain(|kept| kept.id != key.id);
        keys.push(key.clone());
        Ok(())
    }

    fn keys(&mut self) -> Result<Vec<ApiKey>, PersistError> {
        let disks = self.key_disks.lock().unwrap();
        Ok(disks
            .get(&self.key)
            .map(|(keys, _)| keys.clone())
            .unwrap_or_default())
    }

    fn append_audit(&mut self, entry: &AuditEntry) -> Result<AuditEntry, PersistError> {
        let mut disks = self.key_disks.lock().unwrap();
        let (_, audit) = disks.entry(self.key.clone()).or_default();
        let entry = AuditEntry {
            seq: audit.last().map_or(1, |last| last.seq + 1),
            ..entry.clone()
        };
        audit.push(entry.clone());
        Ok(entry)
    }

    fn audit(
        &mut self,
        before_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, PersistError> {
        let disks = self.key_disks.lock().unwrap();
        Ok(disks
            .get(&self.key)
            .map(|(_, audit)| {
                audit
                    .iter()
                    .rev()
                    .filter(|entry| before_seq.is_none_or(|before| entry.seq < before))
                    .take(limit)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }
}

fn apply(snapshot: &mut Snapshot, change: &Change) {
    match change {
        Change::LockPut(record) => {
            snapshot.locks.retain(|lock| lock.name != record.name);
            snapshot.locks.push(record.clone());
        }
        Change::LockForget(name) => snapshot.locks.retain(|lock| &lock.name != name),
        Change::LeasePut(lease) => {
            snapshot.leases.retain(|kept| kept.id != lease.id);
            snapshot.leases.push(lease.clone());
        }
        Change::LeaseDelete(id) => snapshot.leases.retain(|lease| lease.id != *id),
        Change::TicketPut(ticket) => {
            snapshot.tickets.retain(|kept| kept.id != ticket.id);
            snapshot.tickets.push(ticket.clone());
        }
        Change::TicketDelete(id) => snapshot.tickets.retain(|ticket| ticket.id != *id),
        Change::Counters {
            next_token,
            forgotten_token_floor,
        } => {
            snapshot.next_token = *next_token;
            snapshot.forgotten_token_floor = *forgotten_token_floor;
        }
        Change::HistoryAppend(record) => snapshot.history.push(record.clone()),
        Change::JobPut(job) => {
            snapshot.jobs.retain(|stored| stored.id != job.id);
            snapshot.jobs.push(job.clone());
        }
        Change::JobDelete(id) => snapshot.jobs.retain(|stored| stored.id != *id),
        Change::HistoryPrune { ended_before } => {
            snapshot
                .history
                .retain(|record| record.ended_at >= *ended_before);
        }
    }
}

/// The engine over [`SnapshotPersister`], with its timer running off the manual clock.
#[derive(Default)]
struct Durable {
    disks: Disks,
    key_disks: KeyDisks,
}

#[async_trait]
impl Backend for Durable {
    async fn open(&self, key: &str, clock: Arc<ManualClock>) -> Arc<dyn Store> {
        let persister = SnapshotPersister {
            key: key.to_owned(),
            disks: Arc::clone(&self.disks),
            key_disks: Arc::clone(&self.key_disks),
            refuse_grants: false,
        };
        let options = EngineOptions {
            config: conformance::config(),
            ..EngineOptions::default()
        };
        Arc::new(Engine::open(Box::new(persister), clock, options).expect("open the store"))
    }

    fn durable(&self) -> bool {
        true
    }
}

baton_store::conformance_tests!(Durable::default());

/// G2, from the disk's side: every grant is on the disk (with the token counter past it) by the
/// time its acquire answers, while many requests share slow commits. Releases are persisted
/// lazily (G2 allows it), but never later than the next answer that follows them: the next
/// grant's batch commits after the release's. The conformance suite cannot see this through a clean restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_wait_for_their_commit() {
    let backend = Durable::default();
    let disks = Arc::clone(&backend.disks);
    let clock = Arc::new(ManualClock::new(conformance::START_MS));
    let store = backend.open("g2", clock).await;
    let on_disk = move |id: baton_core::LeaseId| {
        let disks = disks.lock().unwrap();
        let snapshot = disks.get("g2").cloned().unwrap_or_default();
        (
            snapshot.leases.iter().any(|lease| lease.id == id),
            snapshot.next_token,
        )
    };
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..16 {
        let store = Arc::clone(&store);
        let on_disk = on_disk.clone();
        tasks.spawn(async move {
            let mut released: Option<baton_core::LeaseId> = None;
            for _ in 0..10 {
                let args = baton_store::AcquireArgs {
                    mode: baton_core::Mode::Exclusive,
                    value: None,
                    quota: Default::default(),
                    api_key: None,
                    lock: baton_core::LockName::new("g2").unwrap(),
                    owner: format!("task-{task}"),
                    owner_key: None,
                    ttl_ms: 30_000,
                    capacity: Some(4),
                    wait: Duration::from_secs(60),
                    queue: true,
                    request_id: None,
                };
                let lease = match store.acquire(args).await {
                    Ok(baton_store::AcquireOutcome::Granted(lease)) => lease,
                    other => panic!("expected a grant, got {other:?}"),
                };
                let (present, next_token) = on_disk(lease.id);
                assert!(present, "a grant was answered before it was durable");
                assert!(
                    next_token > lease.token,
                    "a token was answered before the counter was durable"
                );
                if let Some(previous) = released {
                    assert!(
                        !on_disk(previous).0,
                        "a release was still not durable when a later grant was answered"
                    );
                }
                store.release(lease.id).await.unwrap();
                released = Some(lease.id);
            }
        });
    }
    let joined = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(result) = tasks.join_next().await {
            result.unwrap();
        }
    });
    joined.await.expect("the tasks finish");
}

fn acquire_args(lock: &str, owner: String) -> baton_store::AcquireArgs {
    baton_store::AcquireArgs {
        mode: baton_core::Mode::Exclusive,
        value: None,
        quota: Default::default(),
        api_key: None,
        lock: baton_core::LockName::new(lock).unwrap(),
        owner,
        owner_key: None,
        ttl_ms: 30_000,
        capacity: Some(2),
        wait: Duration::from_secs(60),
        queue: true,
        request_id: None,
    }
}

/// Events are published only once their batch is durable: when a grant's event arrives, its
/// token counter is on the disk; when a release's arrives, its history record is. And they
/// come numbered without gaps, in the order of the table's transitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_published_only_once_durable_and_in_order() {
    let backend = Durable::default();
    let disks = Arc::clone(&backend.disks);
    let clock = Arc::new(ManualClock::new(conformance::START_MS));
    let store = backend.open("events", clock).await;
    let mut subscription = store.events().unwrap().subscribe(None);
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..8 {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            for _ in 0..10 {
                let lease = match store
                    .acquire(acquire_args("events", format!("t{task}")))
                    .await
                {
                    Ok(baton_store::AcquireOutcome::Granted(lease)) => lease,
                    other => panic!("expected a grant, got {other:?}"),
                };
                store.release(lease.id).await.unwrap();
            }
        });
    }
    let mut seq = 0;
    let mut ended = 0;
    let checked = tokio::time::timeout(Duration::from_secs(120), async {
        while ended < 80 {
            let published = subscription.live.recv().await.unwrap();
            seq += 1;
            assert_eq!(published.seq, seq, "numbered without gaps");
            let snapshot = disks.lock().unwrap().get("events").cloned().unwrap();
            match &published.event {
                baton_core::Event::Granted { lease, .. } => assert!(
                    snapshot.next_token > lease.token,
                    "a grant's event came before its commit"
                ),
                baton_core::Event::Ended(record) => {
                    ended += 1;
                    assert!(
                        snapshot
                            .history
                            .iter()
                            .any(|kept| kept.lease_id == record.lease_id),
                        "a release's event came before its commit"
                    );
                }
                _ => {}
            }
        }
    });
    checked.await.expect("every release is told");
    while let Some(result) = tasks.join_next().await {
        result.unwrap();
    }
}

/// A grant whose commit fails was never acknowledged: no event tells of it.
#[tokio::test]
async fn a_grant_that_never_became_durable_is_never_told() {
    let persister = SnapshotPersister {
        key: "broken".into(),
        disks: Disks::default(),
        key_disks: KeyDisks::default(),
        refuse_grants: true,
    };
    let options = EngineOptions {
        config: conformance::config(),
        commit_attempts: 1,
        ..EngineOptions::default()
    };
    let clock = Arc::new(ManualClock::new(conformance::START_MS));
    let store = Engine::open(Box::new(persister), clock, options).unwrap();
    let mut subscription = store.events().unwrap().subscribe(None);
    let outcome = store.acquire(acquire_args("broken", "o".into())).await;
    assert!(
        matches!(outcome, Err(baton_store::StoreError::Unavailable(_))),
        "{outcome:?}"
    );
    assert!(matches!(
        subscription.live.try_recv(),
        Err(tokio::sync::broadcast::error::TryRecvError::Empty)
    ));
}
