//! Per-key quotas: how many live leases, queued tickets, locks and job records one API key may
//! have at once, so that one key can fill neither the table's global bounds nor another key's
//! share of them.
//!
//! The table knows which key each lease, ticket, lock and job belongs to (the `api_key` of the
//! request that made it) and keeps each key's counts as it goes, so a check costs a map lookup.
//! The counts are rebuilt from the records on [`State::restore`]; they
//! are never stored. A request without a key (a server without keys) meets only the global
//! bounds.
//!
//! What each quota counts, and why:
//! - **leases**: the key's live leases. Checked when an acquire would be granted at once. A
//!   ticket the key queued is still granted when its turn comes even if that takes the key over
//!   its lease quota (refusing it then would break the queue's order, G4), so a key holds at
//!   most its lease quota plus its waiter quota.
//! - **waiters**: the key's queued tickets. Checked when an acquire or a job would queue.
//! - **locks**: the locks the key created (its request was the first to name the lock), until
//!   the lock is forgotten (idle for `idle_lock_retention_ms`). Idle locks are what a key can
//!   pile up without holding anything, one per name it makes up; counting them by creator bounds
//!   that. A lock another key created does not count against this one, whoever uses it later.
//! - **jobs**: the job records the key created that the table keeps (finished ones included,
//!   since they take room in the global bound and its pruning order). When the key is at its
//!   quota, its own oldest finished record is pruned to make room, like the global bound does;
//!   only a key whose records are all unfinished is refused.

use std::collections::BTreeSet;

use crate::ids::{JobId, LeaseId, LockName, Millis, TicketId};

use super::{AcquireError, Config, Lease, LockEntry, State, Ticket};

/// One of the things a key's quota bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quota {
    /// Live leases.
    Leases,
    /// Queued tickets.
    Waiters,
    /// Locks the key created that are still known.
    Locks,
    /// Job records the key created that are still kept.
    Jobs,
}

impl Quota {
    /// Every quota, for documentation and tests.
    pub const ALL: [Quota; 4] = [Quota::Leases, Quota::Waiters, Quota::Locks, Quota::Jobs];

    /// The stable text form: `leases`, `waiters`, `locks`, `jobs`.
    pub fn as_str(self) -> &'static str {
        match self {
            Quota::Leases => "leases",
            Quota::Waiters => "waiters",
            Quota::Locks => "locks",
            Quota::Jobs => "jobs",
        }
    }

    /// Parses [`Quota::as_str`].
    pub fn parse(text: &str) -> Option<Quota> {
        Quota::ALL.into_iter().find(|quota| quota.as_str() == text)
    }

    /// The table's default for keys without a quota of their own.
    pub fn default_limit(self, config: &Config) -> usize {
        match self {
            Quota::Leases => config.key_leases_max,
            Quota::Waiters => config.key_waiters_max,
            Quota::Locks => config.key_locks_max,
            Quota::Jobs => config.key_jobs_max,
        }
    }
}

/// A key's own quotas, as its record keeps them. `None` falls back to the table's default
/// ([`Config::key_leases_max`] and the others).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct KeyQuota {
    /// Most live leases.
    pub leases_max: Option<usize>,
    /// Most queued tickets.
    pub waiters_max: Option<usize>,
    /// Most locks created and still known.
    pub locks_max: Option<usize>,
    /// Most job records kept.
    pub jobs_max: Option<usize>,
}

impl KeyQuota {
    /// The key's own limit for `quota`, if it has one.
    pub fn get(&self, quota: Quota) -> Option<usize> {
        match quota {
            Quota::Leases => self.leases_max,
            Quota::Waiters => self.waiters_max,
            Quota::Locks => self.locks_max,
            Quota::Jobs => self.jobs_max,
        }
    }

    /// The limit in force for `quota`: the key's own, or the table's default.
    pub fn limit(&self, quota: Quota, config: &Config) -> usize {
        self.get(quota)
            .unwrap_or_else(|| quota.default_limit(config))
    }
}

/// What one key has in the table right now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyUsage {
    /// Live leases.
    pub leases: usize,
    /// Queued tickets.
    pub waiters: usize,
    /// Locks it created that are still known.
    pub locks: usize,
    /// Its kept job records, by creation time (for pruning its own oldest first).
    pub jobs: BTreeSet<(Millis, JobId)>,
}

impl KeyUsage {
    /// How many of `quota` the key has.
    pub fn count(&self, quota: Quota) -> usize {
        match quota {
            Quota::Leases => self.leases,
            Quota::Waiters => self.waiters,
            Quota::Locks => self.locks,
            Quota::Jobs => self.jobs.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.leases == 0 && self.waiters == 0 && self.locks == 0 && self.jobs.is_empty()
    }
}

impl State {
    /// What the key `key` has in the table (zero for a key that has nothing).
    pub fn key_usage(&self, key: &str) -> KeyUsage {
        self.key_usage.get(key).cloned().unwrap_or_default()
    }

    /// `Err(QuotaExceeded)` when the key already has as many of `quota` as its limit allows,
    /// so one more would exceed it. A request without a key has no quota.
    pub(super) fn check_quota(
        &self,
        key: Option<&str>,
        quota: &KeyQuota,
        which: Quota,
    ) -> Result<(), AcquireError> {
        let Some(key) = key else {
            return Ok(());
        };
        let limit = quota.limit(which, &self.config);
        let count = self
            .key_usage
            .get(key)
            .map_or(0, |usage| usage.count(which));
        if count >= limit {
            return Err(AcquireError::QuotaExceeded {
                quota: which,
                limit,
            });
        }
        Ok(())
    }

    /// Like [`State::check_quota`] for `adding` more at once (a lock set's leases, tickets or
    /// new locks): refused unless all of them fit.
    pub(super) fn check_quota_for(
        &self,
        key: Option<&str>,
        quota: &KeyQuota,
        which: Quota,
        adding: usize,
    ) -> Result<(), AcquireError> {
        let Some(key) = key else {
            return Ok(());
        };
        let limit = quota.limit(which, &self.config);
        let count = self
            .key_usage
            .get(key)
            .map_or(0, |usage| usage.count(which));
        if count + adding > limit {
            return Err(AcquireError::QuotaExceeded {
                quota: which,
                limit,
            });
        }
        Ok(())
    }

    /// Counts one more (`added`) or one fewer lease, ticket or lock of `key`.
    pub(super) fn count_for_key(&mut self, key: Option<&str>, which: Quota, added: bool) {
        let Some(key) = key else {
            return;
        };
        if added {
            let usage = self.key_usage.entry(key.to_owned()).or_default();
            match which {
                Quota::Leases => usage.leases += 1,
                Quota::Waiters => usage.waiters += 1,
                Quota::Locks => usage.locks += 1,
                Quota::Jobs => debug_assert!(false, "jobs are counted with their id"),
            }
            return;
        }
        let Some(usage) = self.key_usage.get_mut(key) else {
            debug_assert!(false, "uncounting {} of a key with none", which.as_str());
            return;
        };
        let count = match which {
            Quota::Leases => &mut usage.leases,
            Quota::Waiters => &mut usage.waiters,
            Quota::Locks => &mut usage.locks,
            Quota::Jobs => {
                debug_assert!(false, "jobs are uncounted with their id");
                return;
            }
        };
        debug_assert!(*count > 0, "uncounting {} below zero", which.as_str());
        *count = count.saturating_sub(1);
        if usage.is_empty() {
            self.key_usage.remove(key);
        }
    }

    /// Counts a kept job record of `key`.
    pub(super) fn count_job_for_key(&mut self, key: Option<&str>, created_at: Millis, id: JobId) {
        if let Some(key) = key {
            self.key_usage
                .entry(key.to_owned())
                .or_default()
                .jobs
                .insert((created_at, id));
        }
    }

    /// Stops counting a job record of `key` (it was pruned).
    pub(super) fn uncount_job_for_key(&mut self, key: Option<&str>, created_at: Millis, id: JobId) {
        let Some(key) = key else {
            return;
        };
        if let Some(usage) = self.key_usage.get_mut(key) {
            usage.jobs.remove(&(created_at, id));
            if usage.is_empty() {
                self.key_usage.remove(key);
            }
        }
    }

    /// Puts a live lease in the table, counted for its key.
    pub(super) fn insert_lease(&mut self, lease: Lease) {
        self.count_for_key(lease.api_key.as_deref(), Quota::Leases, true);
        self.leases.insert(lease.id, lease);
    }

    /// Takes a live lease out of the table, uncounted for its key.
    pub(super) fn take_lease(&mut self, id: LeaseId) -> Option<Lease> {
        let lease = self.leases.remove(&id)?;
        self.count_for_key(lease.api_key.as_deref(), Quota::Leases, false);
        Some(lease)
    }

    /// Puts a queued ticket in the table (not in its lock's queue), counted for its key.
    pub(super) fn insert_ticket(&mut self, ticket: Ticket) {
        self.count_for_key(ticket.api_key.as_deref(), Quota::Waiters, true);
        self.tickets.insert(ticket.id, ticket);
    }

    /// Takes a ticket out of the table (not out of its lock's queue), uncounted for its key.
    pub(super) fn take_ticket(&mut self, id: TicketId) -> Option<Ticket> {
        let ticket = self.tickets.remove(&id)?;
        self.count_for_key(ticket.api_key.as_deref(), Quota::Waiters, false);
        Some(ticket)
    }

    /// Puts a lock in the table, counted for the key that created it.
    pub(super) fn insert_lock(&mut self, name: LockName, entry: LockEntry) {
        self.count_for_key(entry.api_key.as_deref(), Quota::Locks, true);
        if let Some(replaced) = self.locks.insert(name, entry) {
            debug_assert!(false, "a lock was inserted twice");
            self.count_for_key(replaced.api_key.as_deref(), Quota::Locks, false);
        }
    }

    /// Takes a lock out of the table, uncounted for the key that created it.
    pub(super) fn take_lock(&mut self, name: &LockName) -> Option<LockEntry> {
        let entry = self.locks.remove(name)?;
        self.count_for_key(entry.api_key.as_deref(), Quota::Locks, false);
        Some(entry)
    }

    /// Recomputes every key's usage from the records, for [`State::check_invariants`].
    pub(super) fn recount_key_usage(&self) -> std::collections::HashMap<String, KeyUsage> {
        let mut usage: std::collections::HashMap<String, KeyUsage> =
            std::collections::HashMap::new();
        for lease in self.leases.values() {
            if let Some(key) = &lease.api_key {
                usage.entry(key.clone()).or_default().leases += 1;
            }
        }
        for ticket in self.tickets.values() {
            if let Some(key) = &ticket.api_key {
                usage.entry(key.clone()).or_default().waiters += 1;
            }
        }
        for entry in self.locks.values() {
            if let Some(key) = &entry.api_key {
                usage.entry(key.clone()).or_default().locks += 1;
            }
        }
        for job in self.jobs.values() {
            if let Some(key) = &job.api_key {
                usage
                    .entry(key.clone())
                    .or_default()
                    .jobs
                    .insert((job.created_at, job.id));
            }
        }
        usage
    }
}
