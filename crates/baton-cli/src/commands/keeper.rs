//! What `baton run` and `baton parallel` share to keep a job's lease while its command runs:
//! the heartbeat loop (renew at a third of the ttl; stop the command's tree so that it is gone
//! before the local deadline when the lease is lost, revoked, replaced or cannot be renewed in
//! time), the renewal right after a long wait, and the signals baton listens for.
//!
//! The local deadline is (when the last successful grant or renewal request was *sent*) + the
//! server's `expires_in_ms` − a drift margin (`baton_client::local_deadline`), so it is never
//! later than the server's expiry whatever the two clocks say (G6). A stop is started no later
//! than `deadline − grace − STOP_SLACK`, and a stop finishes within `grace + STOP_SLACK`.

use std::time::Duration;

use baton_client::{Client, Error, Granted, local_deadline};
use tokio::time::Instant;

use crate::supervise::{self, Control};

/// The pause between heartbeat attempts while the server does not answer.
const HEARTBEAT_RETRY: Duration = Duration::from_millis(500);

/// Why the keeper stopped the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeeperStop {
    /// The server said the lease ended (expired or released), or was revoked.
    LeaseLost {
        /// It was revoked by an administrator.
        revoked: bool,
    },
    /// No renewal succeeded in time: the local deadline was near.
    Deadline,
    /// A `--replace` run asked this one to stop.
    Replaced,
}

/// Renews the job's lease until the task is aborted, or stops the tree through `control` and
/// reports why through `stopped` (called once, before the stop is requested).
pub async fn keep_lease(
    client: Client,
    job_id: String,
    granted: Granted,
    ttl: Duration,
    grace: Duration,
    control: Control,
    stopped: impl Fn(KeeperStop) + Send + 'static,
) {
    let mut deadline = granted.local_deadline();
    let mut renew_at = granted.sent_at + ttl / 3;
    let lease_id = granted.lease.id;
    let stop = |why: KeeperStop, grace: Duration| {
        stopped(why);
        control.request_stop(grace);
    };
    loop {
        // The last moment a stop can start and still be over before the deadline.
        let stop_by = deadline
            .checked_sub(grace + supervise::STOP_SLACK)
            .unwrap_or_else(Instant::now);
        tokio::time::sleep_until(renew_at.min(stop_by)).await;
        if Instant::now() >= stop_by {
            stop(KeeperStop::Deadline, grace);
            return;
        }
        let attempt = client.job_heartbeat(&job_id, &lease_id, Some(ttl));
        match tokio::time::timeout_at(stop_by, attempt).await {
            Ok(Ok((renewed, replaced))) => {
                deadline = local_deadline(
                    renewed.sent_at,
                    Duration::from_millis(renewed.lease.expires_in_ms),
                    ttl,
                );
                renew_at = renewed.sent_at + ttl / 3;
                if replaced.is_some() {
                    stop(KeeperStop::Replaced, grace);
                    return;
                }
            }
            Ok(Err(Error::LeaseLost { revoked, .. })) => {
                let left = deadline.saturating_duration_since(Instant::now());
                stop(KeeperStop::LeaseLost { revoked }, grace.min(left));
                return;
            }
            Ok(Err(Error::NotFound { .. })) => {
                let left = deadline.saturating_duration_since(Instant::now());
                stop(KeeperStop::LeaseLost { revoked: false }, grace.min(left));
                return;
            }
            // Unreachable, slow or failing server: try again soon, until `stop_by`.
            Ok(Err(_)) | Err(_) => renew_at = Instant::now() + HEARTBEAT_RETRY,
        }
    }
}

/// Renews a lease just granted after waiting in the queue. A grant that arrived during a
/// long-poll counts from when that poll was sent, possibly long before the grant; one renewal
/// gives the deadline a fresh start. Retries a short outage until the current local deadline;
/// fails when the server says the lease is lost, or the deadline passes.
pub async fn renew_after_wait(
    client: &Client,
    job_id: &str,
    granted: &Granted,
    ttl: Duration,
) -> Result<Granted, String> {
    let deadline = granted.local_deadline();
    loop {
        let attempt = client.job_heartbeat(job_id, &granted.lease.id, Some(ttl));
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Ok((renewed, _))) => return Ok(renewed),
            Ok(Err(error @ (Error::LeaseLost { .. } | Error::NotFound { .. }))) => {
                return Err(error.to_string());
            }
            Ok(Err(_)) if Instant::now() + HEARTBEAT_RETRY < deadline => {
                tokio::time::sleep(HEARTBEAT_RETRY).await;
            }
            Ok(Err(error)) => return Err(error.to_string()),
            Err(_) => return Err("no renewal succeeded before its deadline".into()),
        }
    }
}

/// SIGINT, SIGTERM and SIGHUP, while baton itself must react to them (waiting for a lock, or
/// stopping every job of `baton parallel`).
pub struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Starts listening.
    pub fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// The number of the next signal received.
    pub async fn next(&mut self) -> i32 {
        tokio::select! {
            _ = self.interrupt.recv() => 2,
            _ = self.terminate.recv() => 15,
            _ = self.hangup.recv() => 1,
        }
    }
}

/// Whole milliseconds, saturating.
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
