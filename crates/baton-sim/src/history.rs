//! What the simulator records: every answer a client received, every fault, and the few
//! observations of the table that a guarantee is about (what recovery brought back, what the
//! queue held around a try, what stayed held after a waiter went away).
//!
//! Times are the server's clock (milliseconds); `step` orders events within one run. An op's
//! transition runs when it is first polled (`sent_at`, `sent_step`): that is when the server
//! decided, whatever the answer's later arrival.

use baton_core::{JobId, JobState, Lease, LeaseId, LockName, Millis, Policy, TicketId};

/// One recorded event.
#[derive(Debug, Clone)]
pub struct Event {
    /// Its position in the run.
    pub step: u64,
    /// The server's clock when it was recorded.
    pub at: Millis,
    /// Which engine generation (bumped by every restart).
    pub generation: u32,
    /// The client it concerns (`usize::MAX` for the server).
    pub client: usize,
    /// What happened.
    pub kind: EventKind,
}

/// How an acknowledged lease reached its holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// An acquire that did not wait.
    Try,
    /// An acquire that waited (in the queue) or a wait on a ticket.
    Queue,
    /// A job.
    Job,
}

/// What happened.
#[derive(Debug, Clone)]
pub enum EventKind {
    /// A lease was acknowledged (a grant, or the same lease again for a retry or reentry).
    Granted {
        /// The lease as answered.
        lease: Lease,
        /// How it came.
        via: Via,
        /// When the request was sent (its first transition).
        sent_at: Millis,
        /// The request id it was asked with.
        request_id: Option<String>,
    },
    /// An acquire answered with a place in the queue.
    Queued {
        /// The ticket.
        ticket: TicketId,
        /// Its lock.
        lock: LockName,
        /// Its arrival order.
        seq: u64,
        /// When it joined the queue.
        queued_at: Millis,
        /// When it lapses unless waited on, as answered.
        lapse_at: Millis,
        /// The answer said its waiter had gone (an owner key's reentry can answer such a
        /// ticket): it keeps its place only until it could be granted.
        gone: bool,
        /// The request id it was asked with.
        request_id: Option<String>,
    },
    /// A wait on a ticket answered that it is still queued.
    StillQueued {
        /// The ticket.
        ticket: TicketId,
        /// When it lapses unless waited on again, as answered.
        lapse_at: Millis,
        /// The answer said its waiter had gone.
        gone: bool,
    },
    /// An engine's feed published that a ticket lapsed (left its queue for want of a waiter).
    TicketLapsed {
        /// The ticket.
        ticket: TicketId,
        /// Its lock.
        lock: LockName,
        /// When it lapsed.
        at: Millis,
        /// Its lapse time in the table then.
        lapse_at: Millis,
        /// Its waiter had gone (such a ticket lapses as soon as the lock could go to it).
        gone: bool,
        /// A wait on it was parked at that engine, sent before the lapse, whose park (plus one
        /// ticket lapse) had not run out.
        parked: bool,
    },
    /// An engine's feed published a grant to a ticket.
    TicketGranted {
        /// The ticket.
        ticket: TicketId,
        /// When it was granted.
        at: Millis,
    },
    /// An acquire answered busy.
    Busy {
        /// The lock.
        lock: LockName,
        /// The request id it was asked with.
        request_id: Option<String>,
    },
    /// An acquire (or a retry of one) was refused with an error.
    AcquireRefused {
        /// The request id.
        request_id: Option<String>,
        /// The error, as text.
        error: String,
    },
    /// A renewal was acknowledged.
    Renewed {
        /// The lease as renewed.
        lease: Lease,
        /// When the renewal was sent (its transition).
        sent_at: Millis,
    },
    /// A renewal or heartbeat said the lease is gone.
    Lost {
        /// The lease.
        lease: LeaseId,
        /// The error, as text.
        error: String,
    },
    /// A release was answered (it ends the lease at `sent_at` if it was live).
    Released {
        /// The lease.
        lease: LeaseId,
        /// When it was sent.
        sent_at: Millis,
    },
    /// An administrator's revocation was acknowledged.
    Revoked {
        /// The lease revoked.
        lease: Lease,
        /// When it was sent.
        sent_at: Millis,
    },
    /// A fence check accepted a token.
    FenceAccepted {
        /// The lock.
        lock: LockName,
        /// The token checked.
        token: u64,
        /// When it was sent.
        sent_at: Millis,
        /// When the engine that answered loaded its table (a lease it recovered may be one
        /// that had ended unpersisted).
        loaded_at: Millis,
    },
    /// A fence check refused a token as stale.
    FenceRefused {
        /// The lock.
        lock: LockName,
        /// The token checked.
        token: u64,
    },
    /// A ticket was cancelled (or its wait said it ended).
    TicketEnded {
        /// The ticket.
        ticket: TicketId,
        /// How, as text.
        how: String,
    },
    /// A job was created; its lease (if running) is also recorded as [`EventKind::Granted`].
    JobCreated {
        /// The job.
        job: JobId,
        /// Its policy.
        policy: Policy,
        /// Its state as answered.
        state: JobState,
        /// Whether the answer carried a lease.
        has_lease: bool,
        /// Whether the answer carried a ticket.
        has_ticket: bool,
        /// The job's token, if it runs.
        token: Option<u64>,
        /// The lease's token, if one came.
        lease_token: Option<u64>,
    },
    /// A job's finish was acknowledged (its lease ends at `sent_at`).
    JobFinished {
        /// The job.
        job: JobId,
        /// Its lease, if it ran.
        lease: Option<LeaseId>,
        /// When it was sent.
        sent_at: Millis,
    },
    /// A waiter went away in the middle of a wait (its future was dropped after a poll).
    Departed {
        /// The ticket waited on, if the client knew it.
        ticket: Option<TicketId>,
        /// The request id of the acquire that was waiting, if it was one.
        request_id: Option<String>,
        /// Leases granted through the queue for that ticket or request that were still held
        /// right after the departure (G5 says none: an undelivered grant is handed on).
        still_held: Vec<Lease>,
    },
    /// A try acquire ran while tickets that were being waited on stood in the lock's queue.
    TryAroundQueue {
        /// The lock.
        lock: LockName,
        /// Those tickets (waited on, not gone) before the try's transition.
        before: Vec<TicketId>,
        /// The same, after it.
        after: Vec<TicketId>,
        /// The try's answer was a new lease granted in that transition.
        granted_new: bool,
    },
    /// After a tick, a mutex had room and a ticket waiting on it that was not gone.
    IdleWithWaiter {
        /// The lock.
        lock: LockName,
        /// The ticket.
        ticket: TicketId,
    },
    /// A job's record disagreed with the table.
    JobMismatch {
        /// The job.
        job: JobId,
        /// What disagreed.
        what: String,
    },
    /// The server crashed.
    Crash {
        /// How (`lost-batch`, `durable-unacknowledged`, `io-error`).
        how: &'static str,
        /// Leases whose end could have been in flight (a revoke or finish sent, not answered),
        /// with when it was sent.
        ending: Vec<(LeaseId, Millis)>,
        /// Tickets whose cancel was in flight.
        cancelling: Vec<TicketId>,
    },
    /// The server came back: every live lease and queued ticket recovery brought back.
    Restarted {
        /// The recovered leases.
        leases: Vec<Lease>,
        /// The recovered queued tickets.
        tickets: Vec<TicketId>,
    },
    /// Recovery itself failed.
    RecoveryFailed {
        /// The error.
        error: String,
    },
    /// The clock jumped forward.
    ClockJump {
        /// By how much.
        ms: u64,
    },
    /// A client went away (disconnected) or paused.
    Note {
        /// What.
        what: String,
    },
}
