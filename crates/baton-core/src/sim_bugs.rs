//! Injected defects, compiled only with the `sim-bugs` feature (off by default, never in a build
//! that ships). The simulator (`baton-sim`) turns one on for the current thread and shows that a
//! checker catches it: the proof that the simulation bites (docs/simulation.md).
//!
//! Each switch is read where the defect sits; with no bug set (the default) every transition is
//! exactly the real one.

use std::cell::Cell;

/// One injected defect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bug {
    /// The engine answers an immediate grant before the commit that holds it (breaks G2).
    AckBeforeCommit,
    /// The engine answers a place in the queue before the commit that holds the ticket
    /// (breaks G2 for queue places).
    QueueBeforeCommit,
    /// Recovery recomputes the next fencing token from the live leases instead of the durable
    /// counter, so tokens of leases that ended are handed out again (breaks G3).
    TokenReuseAfterRestart,
    /// A lock-delay holds nothing back: a slot is granted as soon as its lease expires or is
    /// revoked (breaks G5's lock-delay).
    GrantDuringLockDelay,
    /// A request that does not queue ("try") takes a free slot even when tickets wait for it
    /// (breaks G4).
    TryJumpsQueue,
    /// A grant that never reached its waiter (the waiter went away mid-wait) is kept instead
    /// of released and handed on (breaks G5).
    KeepDepartedGrant,
    /// Request ids are not looked up, so a retry gets a second lease (breaks G7).
    ForgetRequestId,
    /// Recovery keeps each lease's stored deadline instead of treating it as renewed, so a
    /// lease renewed before the crash comes back shorter than acknowledged (breaks G2).
    ShortenOnRecovery,
    /// A commit is not fenced by the leadership epoch: a deposed active's batch lands after
    /// its successor loaded, overwriting newer rows and counters (breaks G3 or G2 at the next
    /// takeover).
    UnfencedCommit,
}

impl Bug {
    /// Every injected defect.
    pub const ALL: [Bug; 9] = [
        Bug::AckBeforeCommit,
        Bug::QueueBeforeCommit,
        Bug::TokenReuseAfterRestart,
        Bug::GrantDuringLockDelay,
        Bug::TryJumpsQueue,
        Bug::KeepDepartedGrant,
        Bug::ForgetRequestId,
        Bug::ShortenOnRecovery,
        Bug::UnfencedCommit,
    ];

    /// The name used on the simulator's command line.
    pub fn name(self) -> &'static str {
        match self {
            Bug::AckBeforeCommit => "ack-before-commit",
            Bug::QueueBeforeCommit => "queue-before-commit",
            Bug::TokenReuseAfterRestart => "token-reuse-after-restart",
            Bug::GrantDuringLockDelay => "grant-during-lock-delay",
            Bug::TryJumpsQueue => "try-jumps-queue",
            Bug::KeepDepartedGrant => "keep-departed-grant",
            Bug::ForgetRequestId => "forget-request-id",
            Bug::ShortenOnRecovery => "shorten-on-recovery",
            Bug::UnfencedCommit => "unfenced-commit",
        }
    }

    /// Parses [`Bug::name`].
    pub fn parse(name: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|bug| bug.name() == name)
    }
}

thread_local! {
    static ACTIVE: Cell<Option<Bug>> = const { Cell::new(None) };
}

/// Turns `bug` on (or every bug off with `None`) for transitions run on this thread.
pub fn set(bug: Option<Bug>) {
    ACTIVE.with(|active| active.set(bug));
}

/// True when `bug` is on for this thread.
pub fn active(bug: Bug) -> bool {
    ACTIVE.with(|active| active.get() == Some(bug))
}
