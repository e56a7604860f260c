//! Shared by the integration tests: a "disk" that keeps what a store would, fed only by the
//! table's [`Change`]s, so a restart can be simulated with [`State::restore`].
//!
//! [`State::restore`]: baton_core::State::restore

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};

use baton_core::{
    Change, HistoryRecord, Job, JobId, Lease, LeaseId, LockName, LockRecord, Snapshot, Ticket,
    TicketId,
};

/// What a store keeps. Applying a change that makes no sense (deleting what was never stored,
/// moving a counter back) panics: the change stream itself is under test.
#[derive(Debug, Default, Clone)]
pub struct Disk {
    pub next_token: u64,
    pub floor: u64,
    pub locks: BTreeMap<LockName, LockRecord>,
    pub leases: HashMap<LeaseId, Lease>,
    pub tickets: HashMap<TicketId, Ticket>,
    pub history: Vec<HistoryRecord>,
    pub jobs: HashMap<JobId, Job>,
}

impl Disk {
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::LockPut(record) => {
                self.locks.insert(record.name.clone(), record.clone());
            }
            Change::LockForget(name) => {
                assert!(
                    self.locks.remove(name).is_some(),
                    "forgot a lock never stored: {name}"
                );
            }
            Change::LeasePut(lease) => {
                self.leases.insert(lease.id, lease.clone());
            }
            Change::LeaseDelete(id) => {
                assert!(
                    self.leases.remove(id).is_some(),
                    "deleted a lease never stored"
                );
            }
            Change::TicketPut(ticket) => {
                assert!(
                    self.tickets.insert(ticket.id, ticket.clone()).is_none(),
                    "ticket stored twice"
                );
            }
            Change::TicketDelete(id) => {
                assert!(
                    self.tickets.remove(id).is_some(),
                    "deleted a ticket never stored"
                );
            }
            Change::Counters {
                next_token,
                forgotten_token_floor,
            } => {
                assert!(*next_token >= self.next_token, "G3: next_token went down");
                assert!(*forgotten_token_floor >= self.floor, "G3: floor went down");
                self.next_token = *next_token;
                self.floor = *forgotten_token_floor;
            }
            Change::HistoryAppend(record) => self.history.push(record.clone()),
            Change::JobPut(job) => {
                self.jobs.insert(job.id, job.clone());
            }
            Change::JobDelete(id) => {
                assert!(self.jobs.remove(id).is_some(), "deleted a job never stored");
            }
            Change::HistoryPrune { ended_before } => {
                self.history.retain(|r| r.ended_at >= *ended_before);
            }
        }
    }

    pub fn apply_all(&mut self, changes: &[Change]) {
        for change in changes {
            self.apply(change);
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            next_token: self.next_token,
            forgotten_token_floor: self.floor,
            locks: self.locks.values().cloned().collect(),
            leases: self.leases.values().cloned().collect(),
            tickets: self.tickets.values().cloned().collect(),
            history: self.history.clone(),
            jobs: self.jobs.values().cloned().collect(),
        }
    }
}
