//! The event stream on the wire: `GET /v1/events` answers Server-Sent Events, one [`Event`] per
//! SSE message, its `event:` field the [`EventKind`] and its `id:` the [`Event::id`].
//!
//! Events never carry lease or ticket ids (guarantee G8): owners, tokens and positions only.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

#[cfg(feature = "openapi")]
use utoipa::ToSchema;

use crate::JobState;

/// What an event tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A lease was granted (`owner`, `token`, `expires_at`, `value`; `from_queue` when a waiter
    /// got it).
    Granted,
    /// A holder released its lease.
    Released,
    /// A lease expired (its holder stopped renewing).
    Expired,
    /// An administrator revoked a lease.
    Revoked,
    /// A waiter joined the queue (`owner`, `position`).
    Queued,
    /// A waiter left the queue without a grant (`reason`: `lapsed`, `cancelled` or
    /// `departed`).
    LeftQueue,
    /// A job was created or changed state (`job`).
    Job,
    /// A running job's runner appended output (`job`, `text`: the chunk, `offset`: how many
    /// bytes of the job's output came before it).
    Output,
    /// Sent first, alone, when the stream was resumed after an event the server no longer
    /// keeps (older than its window, or from before a restart or a change of active server):
    /// events in between are lost to this subscriber; read the state afresh.
    Missed,
    /// Sent last when the subscriber fell too far behind: the server closed the stream. Read
    /// the state afresh, then subscribe again.
    Dropped,
}

impl EventKind {
    /// The SSE `event:` name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Granted => "granted",
            EventKind::Released => "released",
            EventKind::Expired => "expired",
            EventKind::Revoked => "revoked",
            EventKind::Queued => "queued",
            EventKind::LeftQueue => "left_queue",
            EventKind::Job => "job",
            EventKind::Output => "output",
            EventKind::Missed => "missed",
            EventKind::Dropped => "dropped",
        }
    }
}

/// A job as an event tells of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct JobEvent {
    /// The job's public id.
    pub id: String,
    /// The job's name.
    pub name: String,
    /// Its new state.
    pub state: JobState,
    /// Why it is in this state, when the server says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Its exit code, once reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Where it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Its batch label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<String>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
}

/// One event of `GET /v1/events` (the `data:` of an SSE message, as JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Event {
    /// The event's id, `STREAM-SEQ`: send it back as `Last-Event-ID` to resume after it.
    /// `STREAM` changes when the server restarts or another server becomes the active one.
    /// Empty for `missed` and `dropped`.
    pub id: String,
    /// Its number in the stream: one more than the event before it (0 for `missed` and
    /// `dropped`). A subscriber filtered by prefix or key sees gaps, never a decrease.
    pub seq: u64,
    /// What it tells.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// When it happened (by the server's clock).
    pub at: Timestamp,
    /// The lock (absent for `missed` and `dropped`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<String>,
    /// The holder's or waiter's owner label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The lease's fencing token (`granted`, `released`, `expired`, `revoked`, and a job's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
    /// When the lease was granted (lease events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted_at: Option<Timestamp>,
    /// When the lease ends unless renewed (`granted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// True for a grant to the head of the queue (`granted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_queue: Option<bool>,
    /// The waiter's place in the queue when it joined, 1 for the head (`queued`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    /// Why (`left_queue`: `lapsed`, `cancelled` or `departed`; `missed` and `dropped`: a
    /// sentence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The job (`job`, `output`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobEvent>,
    /// The output appended (`output`): UTF-8, invalid bytes replaced by U+FFFD; at most
    /// 16 KiB per event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// How many bytes of the job's output came before `text` (`output`), counting bytes the
    /// runner skipped: a follower that has the output up to byte N skips what ends at or
    /// before N. Counted from the tail's start again after a restart of the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The value the holder published with the lease (`granted`), if any: what a leader
    /// election's observers read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The lease's mode (`granted`, `released`, `expired`, `revoked`; `queued`: the mode asked
    /// for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<crate::LockMode>,
}
