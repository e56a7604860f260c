//! The simulated disk: a [`Persister`] that applies each committed batch to a snapshot, all or
//! nothing, and can be told to fail its next commit. The snapshot outlives the engine, so a
//! crash (dropping the engine) followed by [`baton_store::Engine::open`] runs the real recovery.
//!
//! With several servers the disk is their one shared database: it also holds the leadership
//! row, and a persister opened with a fence (a term's node and epoch) writes and loads only
//! while the row is that term ([`baton_store::leadership::fence_holds`], the rule of the
//! PostgreSQL store's `FOR SHARE` check), failing with [`PersistError::deposed`] otherwise.

use std::sync::{Arc, Mutex};

use baton_core::{Change, Snapshot};
use baton_store::leadership::{self, LeaderRow};
use baton_store::{ApiKey, AuditEntry, PersistError, Persister};

/// What survives a crash.
#[derive(Debug, Default)]
pub struct DiskState {
    /// Everything committed.
    pub snapshot: Snapshot,
    /// The next commit fails (an I/O error): nothing of it is written.
    pub fail_next: bool,
    /// Batches committed.
    pub commits: u64,
    /// The leadership row (several servers only).
    pub leader: Option<LeaderRow>,
    /// Commits refused as deposed.
    pub deposed: u64,
    keys: Vec<ApiKey>,
    audit: Vec<AuditEntry>,
}

/// The disk, shared by every engine generation of one run.
pub type Disk = Arc<Mutex<DiskState>>;

/// The persister over a [`Disk`].
#[derive(Debug)]
pub struct SimPersister {
    /// The disk.
    pub disk: Disk,
    /// The term this persister writes under (node, epoch), when servers elect a leader.
    pub fence: Option<(String, i64)>,
}

impl SimPersister {
    fn fenced(&self, state: &mut DiskState) -> Result<(), PersistError> {
        match &self.fence {
            Some((node, epoch)) if !leadership::fence_holds(&state.leader, node, *epoch) => {
                state.deposed += 1;
                Err(PersistError::deposed(format!(
                    "{node} no longer leads with epoch {epoch}; nothing was written"
                )))
            }
            _ => Ok(()),
        }
    }
}

fn with<T>(disk: &Disk, f: impl FnOnce(&mut DiskState) -> T) -> Result<T, PersistError> {
    disk.lock()
        .map(|mut state| f(&mut state))
        .map_err(|_| PersistError("the simulated disk's mutex is poisoned".into()))
}

impl Persister for SimPersister {
    fn kind(&self) -> &'static str {
        "sim"
    }

    fn load(&mut self) -> Result<Snapshot, PersistError> {
        with(&self.disk, |state| {
            self.fenced(state)?;
            Ok(state.snapshot.clone())
        })?
    }

    fn commit(&mut self, changes: &[Change]) -> Result<(), PersistError> {
        with(&self.disk, |state| {
            self.fenced(state)?;
            if state.fail_next {
                state.fail_next = false;
                return Err(PersistError("simulated I/O error".into()));
            }
            for change in changes {
                apply(&mut state.snapshot, change);
            }
            state.commits += 1;
            Ok(())
        })?
    }

    fn put_key(&mut self, key: &ApiKey) -> Result<(), PersistError> {
        with(&self.disk, |state| {
            state.keys.retain(|kept| kept.id != key.id);
            state.keys.push(key.clone());
        })
    }

    fn keys(&mut self) -> Result<Vec<ApiKey>, PersistError> {
        with(&self.disk, |state| state.keys.clone())
    }

    fn append_audit(&mut self, entry: &AuditEntry) -> Result<AuditEntry, PersistError> {
        with(&self.disk, |state| {
            let entry = AuditEntry {
                seq: state.audit.last().map_or(1, |last| last.seq + 1),
                ..entry.clone()
            };
            state.audit.push(entry.clone());
            entry
        })
    }

    fn audit(
        &mut self,
        before_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, PersistError> {
        with(&self.disk, |state| {
            state
                .audit
                .iter()
                .rev()
                .filter(|entry| before_seq.is_none_or(|before| entry.seq < before))
                .take(limit)
                .cloned()
                .collect()
        })
    }
}

/// Applies one change to a snapshot, as a durable store's transaction would.
pub fn apply(snapshot: &mut Snapshot, change: &Change) {
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
