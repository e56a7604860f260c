//! Typed events: what happened to locks, queues and jobs, recorded by the transitions that made
//! it happen, alongside their [`super::Change`]s. A store publishes a transition's events only
//! once the batch holding its changes is durable, so nobody hears of anything a crash could
//! take back; see [`State::drain_events`].

use super::jobs::{Job, JobState};
use super::{HistoryRecord, Lease, QueuedTicket, State, Ticket};
use crate::ids::{JobId, LockName, Millis};

/// Why a ticket left its queue other than by being granted (a grant is an [`Event::Granted`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueExit {
    /// Nobody waited on it in time.
    Lapsed,
    /// Its waiter cancelled it (or its API key was revoked).
    Cancelled,
    /// Its waiter went away (its connection closed) and the lock could have gone to it.
    Departed,
}

impl QueueExit {
    /// The stable text form.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueExit::Lapsed => "lapsed",
            QueueExit::Cancelled => "cancelled",
            QueueExit::Departed => "departed",
        }
    }
}

/// A job as an event tells of it: everything but its command line and output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobChange {
    /// The job.
    pub id: JobId,
    /// Its name.
    pub name: String,
    /// Its lock.
    pub lock: LockName,
    /// Its new state.
    pub state: JobState,
    /// Who runs it.
    pub owner: String,
    /// Where it runs.
    pub host: Option<String>,
    /// Its fencing token, once it started.
    pub token: Option<u64>,
    /// Why it is in this state, when the table says.
    pub reason: Option<String>,
    /// Its exit code, once reported.
    pub exit_code: Option<i32>,
    /// Its batch label.
    pub batch: Option<String>,
    /// When it was created, started and finished.
    pub created_at: Millis,
    /// When it started.
    pub started_at: Option<Millis>,
    /// When it finished.
    pub finished_at: Option<Millis>,
}

impl JobChange {
    pub(super) fn of(job: &Job) -> JobChange {
        JobChange {
            id: job.id,
            name: job.name.clone(),
            lock: job.lock.clone(),
            state: job.state,
            owner: job.owner.clone(),
            host: job.host.clone(),
            token: job.token,
            reason: job.reason.clone(),
            exit_code: job.exit_code,
            batch: job.batch.clone(),
            created_at: job.created_at,
            started_at: job.started_at,
            finished_at: job.finished_at,
        }
    }
}

/// One thing that happened in the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A lease was granted (directly, or to the head of the queue).
    Granted {
        /// The lease.
        lease: Lease,
        /// When it happened.
        at: Millis,
    },
    /// A lease ended: released, expired or revoked (the record says which).
    Ended(HistoryRecord),
    /// A ticket joined a queue.
    Queued {
        /// The ticket, with its place.
        queued: QueuedTicket,
        /// When it happened.
        at: Millis,
    },
    /// A ticket left its queue without a grant.
    LeftQueue {
        /// The ticket.
        ticket: Ticket,
        /// Why.
        why: QueueExit,
        /// When it happened.
        at: Millis,
    },
    /// A job was created or changed state.
    Job {
        /// The job.
        job: JobChange,
        /// When it happened.
        at: Millis,
    },
    /// A running job's runner appended output ([`State::append_job_output`]).
    Output {
        /// The job (its state is `running`).
        job: JobChange,
        /// The chunk appended.
        text: String,
        /// How many bytes of the job's output came before this chunk
        /// ([`super::Job::output_total_bytes`] before it, plus any bytes the runner skipped).
        offset: u64,
        /// When it happened.
        at: Millis,
    },
}

impl Event {
    /// The lock the event is about.
    pub fn lock(&self) -> &LockName {
        match self {
            Event::Granted { lease, .. } => &lease.lock,
            Event::Ended(record) => &record.lock,
            Event::Queued { queued, .. } => &queued.ticket.lock,
            Event::LeftQueue { ticket, .. } => &ticket.lock,
            Event::Job { job, .. } | Event::Output { job, .. } => &job.lock,
        }
    }

    /// When it happened.
    pub fn at(&self) -> Millis {
        match self {
            Event::Ended(record) => record.ended_at,
            Event::Granted { at, .. }
            | Event::Queued { at, .. }
            | Event::LeftQueue { at, .. }
            | Event::Job { at, .. }
            | Event::Output { at, .. } => *at,
        }
    }
}

impl State {
    /// Takes the events recorded since the last call, in the order they happened. Take them
    /// with [`State::drain_changes`] (under the same exclusion), so that events and the changes
    /// that make them true travel in the same batch.
    pub fn drain_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    pub(super) fn job_event(events: &mut Vec<Event>, job: &Job, at: Millis) {
        events.push(Event::Job {
            job: JobChange::of(job),
            at,
        });
    }
}
