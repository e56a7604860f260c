//! The [`LeaseGuard`]: holds a granted lease, renews it in a background task, tells its holder
//! the moment it can no longer count on it, and releases it when dropped.
//!
//! **Architecture invariant** (guarantee G6): the guard never believes in a lease longer than
//! the server could. Its *local deadline* is counted on this process's monotonic clock from the
//! instant the granting (or renewing) request was *sent*, which is never later than the instant
//! the server counted from, and is shortened by a margin for clock-rate drift (see
//! [`drift_margin`]). When the deadline passes without a successful renewal, the guard reports
//! the lease lost even if the server has not said so (it may be unreachable).

use std::future::Future;
use std::time::Duration;

use baton_proto::{Lease, ReleaseResponse};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::{Client, Granted};
use crate::error::{Error, Result};
use crate::retry::{RetryPolicy, exponential_step};

/// The fixed part of the drift margin: covers scheduling delays between the clock read and the
/// request leaving, and a renewal answered right at the edge.
const DRIFT_MARGIN_FIXED: Duration = Duration::from_millis(100);

/// The first pause after a failed renewal; it doubles after each further failure.
const RENEW_RETRY_PAUSE_INITIAL: Duration = Duration::from_millis(200);

/// The longest pause between renewal attempts while the server is unreachable.
const RENEW_RETRY_PAUSE_MAX: Duration = Duration::from_secs(2);

/// How much earlier than the server the guard gives up a lease of time-to-live `ttl`:
/// 1% of the ttl (clocks that run at different rates drift apart by far less than that) plus
/// 100 ms.
pub fn drift_margin(ttl: Duration) -> Duration {
    ttl / 100 + DRIFT_MARGIN_FIXED
}

/// The instant after which a holder must assume its lease is gone: `sent_at` (when the request
/// that granted or renewed it was sent) + `expires_in` (as the server answered) − the
/// [`drift_margin`] of `ttl`. Never before `sent_at`.
pub fn local_deadline(sent_at: Instant, expires_in: Duration, ttl: Duration) -> Instant {
    sent_at + expires_in.saturating_sub(drift_margin(ttl))
}

/// When to renew a lease granted or renewed by a request sent at `sent_at`: a third of the way
/// to its expiry, leaving two thirds of the time-to-live for retries through an outage.
pub fn renewal_instant(sent_at: Instant, expires_in: Duration, ttl: Duration) -> Instant {
    sent_at + expires_in.min(ttl) / 3
}

/// Why a guard no longer holds its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostReason {
    /// A renewal was answered `lease_lost` or `lease_not_found`: the lease expired, or someone
    /// holding its id released it.
    Expired,
    /// A renewal was answered `revoked`: an administrator ended the lease.
    Revoked,
    /// No renewal succeeded before the local deadline (the server was unreachable or slow); the
    /// server may not have noticed yet, but the holder must stop.
    DeadlineExceeded,
    /// The guard released the lease itself (or was dropped). Not a failure; reported only so
    /// that a pending [`LeaseGuard::lost`] future completes.
    Released,
}

impl std::fmt::Display for LostReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LostReason::Expired => "the lease expired",
            LostReason::Revoked => "the lease was revoked",
            LostReason::DeadlineExceeded => "the lease could not be renewed before its deadline",
            LostReason::Released => "the lease was released",
        })
    }
}

/// Whether a guard still holds its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStatus {
    /// Held: the local deadline has not passed and the server has not said otherwise.
    Held,
    /// Lost, and why.
    Lost(LostReason),
}

impl LeaseStatus {
    /// The reason, when lost.
    pub fn lost_reason(self) -> Option<LostReason> {
        match self {
            LeaseStatus::Held => None,
            LeaseStatus::Lost(reason) => Some(reason),
        }
    }
}

/// What the renewal task publishes to the guard and to [`LeaseGuard::lost`] futures.
#[derive(Debug, Clone)]
struct GuardState {
    /// The lease as of the last successful grant or renewal.
    lease: Lease,
    /// The current local deadline.
    deadline: Instant,
    /// Held or lost.
    status: LeaseStatus,
}

/// A held lease that renews itself and is released when dropped.
///
/// Get one from [`Client::lock`]. Do the guarded work while racing it against
/// [`LeaseGuard::lost`], and stop the work when that fires:
///
/// ```no_run
/// # async fn example(client: baton_client::Client) -> baton_client::Result<()> {
/// let guard = client.lock("deploy", baton_client::LockOptions::default()).await?;
/// tokio::select! {
///     reason = guard.lost() => eprintln!("stopping: {reason}"),
///     () = async { /* the work, using guard.token() as a fencing token */ } => {}
/// }
/// guard.release().await?;
/// # Ok(())
/// # }
/// ```
///
/// Dropping the guard stops the renewals and, when a tokio runtime is running, spawns a release
/// so the lock is handed on at once; without a runtime the lease simply expires. Prefer
/// [`LeaseGuard::release`] where you can await it: a spawned release may not finish if the
/// runtime shuts down right after.
#[derive(Debug)]
pub struct LeaseGuard {
    client: Client,
    /// The lease id, kept apart from the state so releasing never waits on the watch.
    lease_id: String,
    /// The fencing token, which renewals never change.
    token: u64,
    state: watch::Receiver<GuardState>,
    /// Dropping or sending on it stops the renewal task.
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    /// True once `release` ran, so `Drop` does not release again.
    released: bool,
}

impl LeaseGuard {
    /// Takes over a granted lease and starts renewing it. Must be called inside a tokio
    /// runtime.
    pub fn start(client: Client, granted: Granted) -> LeaseGuard {
        let deadline = granted.local_deadline();
        let lease_id = granted.lease.id.clone();
        let token = granted.lease.token;
        let (state_sender, state) = watch::channel(GuardState {
            lease: granted.lease.clone(),
            deadline,
            status: LeaseStatus::Held,
        });
        let (stop, stop_receiver) = oneshot::channel();
        let task = tokio::spawn(renew_loop(
            client.clone(),
            granted,
            state_sender,
            stop_receiver,
        ));
        LeaseGuard {
            client,
            lease_id,
            token,
            state,
            stop: Some(stop),
            task: Some(task),
            released: false,
        }
    }

    /// The lease as of its last successful renewal.
    pub fn lease(&self) -> Lease {
        self.state.borrow().lease.clone()
    }

    /// The lease's fencing token: pass it to the resource the lock protects.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The lease's secret id.
    pub fn lease_id(&self) -> &str {
        &self.lease_id
    }

    /// The current local deadline: the guarded work must have stopped by then unless a renewal
    /// moves it.
    pub fn deadline(&self) -> Instant {
        self.state.borrow().deadline
    }

    /// Held or lost, now.
    pub fn status(&self) -> LeaseStatus {
        let state = self.state.borrow();
        match state.status {
            LeaseStatus::Held if Instant::now() >= state.deadline => {
                LeaseStatus::Lost(LostReason::DeadlineExceeded)
            }
            status => status,
        }
    }

    /// True once the lease is lost (or released).
    pub fn is_lost(&self) -> bool {
        self.status() != LeaseStatus::Held
    }

    /// A future that completes when the lease is lost: revoked, expired, or its local deadline
    /// passed without a successful renewal. It also completes (with [`LostReason::Released`])
    /// once the guard is released or dropped, so it never hangs. It does not borrow the guard.
    pub fn lost(&self) -> impl Future<Output = LostReason> + Send + 'static {
        let mut state = self.state.clone();
        async move {
            let reason = match state
                .wait_for(|state| state.status != LeaseStatus::Held)
                .await
            {
                Ok(state) => state.status.lost_reason(),
                // The renewal task ended without marking a loss: the guard released the lease.
                Err(_) => None,
            };
            reason.unwrap_or(LostReason::Released)
        }
    }

    /// Stops renewing and releases the lease, handing the lock on at once. The answer says
    /// `released: false` (and why) when the lease had already ended.
    pub async fn release(mut self) -> Result<ReleaseResponse> {
        self.stop_renewing();
        self.released = true;
        self.client.release(&self.lease_id).await
    }

    /// Ends the renewal task.
    fn stop_renewing(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.stop_renewing();
        if self.released || self.state.borrow().status != LeaseStatus::Held {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let client = self.client.clone();
                let lease_id = std::mem::take(&mut self.lease_id);
                runtime.spawn(async move {
                    if let Err(error) = client.release(&lease_id).await {
                        tracing::warn!(%error, "cannot release a dropped lease; it will expire");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(
                    "lease guard dropped outside a tokio runtime; the lease will expire"
                );
            }
        }
    }
}

/// The background task: renews at a third of the time-to-live, retries failed renewals until
/// the local deadline, and publishes the outcome.
async fn renew_loop(
    client: Client,
    granted: Granted,
    state: watch::Sender<GuardState>,
    mut stop: oneshot::Receiver<()>,
) {
    let lease_id = granted.lease.id.clone();
    let mut deadline = granted.local_deadline();
    let mut next_renewal = renewal_of(&granted);
    let mut failures = 0u32;
    let lose = |reason: LostReason| {
        state.send_modify(|state| state.status = LeaseStatus::Lost(reason));
    };
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => return,
            () = tokio::time::sleep_until(deadline) => {
                lose(LostReason::DeadlineExceeded);
                return;
            }
            () = tokio::time::sleep_until(next_renewal) => {}
        }
        // The renewal races the deadline too: a request that hangs must not keep the holder
        // believing in its lease.
        let outcome = tokio::select! {
            biased;
            _ = &mut stop => return,
            () = tokio::time::sleep_until(deadline) => {
                lose(LostReason::DeadlineExceeded);
                return;
            }
            outcome = client.renew_with(&lease_id, None, None, RetryPolicy::NONE) => outcome,
        };
        match outcome {
            Ok(renewed) => {
                failures = 0;
                deadline = renewed.local_deadline();
                next_renewal = renewal_of(&renewed);
                state.send_modify(|state| {
                    state.lease = renewed.lease;
                    state.deadline = deadline;
                });
            }
            Err(Error::LeaseLost { revoked, message }) => {
                tracing::warn!(%message, "lease lost");
                lose(if revoked {
                    LostReason::Revoked
                } else {
                    LostReason::Expired
                });
                return;
            }
            Err(Error::NotFound { message, .. }) => {
                tracing::warn!(%message, "lease not found");
                lose(LostReason::Expired);
                return;
            }
            Err(error) => {
                // Anything else (unreachable server, 5xx, a refused request) may pass; keep
                // trying until the deadline decides.
                failures = failures.saturating_add(1);
                let pause =
                    exponential_step(RENEW_RETRY_PAUSE_INITIAL, RENEW_RETRY_PAUSE_MAX, failures);
                tracing::warn!(%error, ?pause, "renewal failed; retrying until the deadline");
                next_renewal = Instant::now() + pause;
            }
        }
    }
}

/// When to renew the lease in `granted`.
fn renewal_of(granted: &Granted) -> Instant {
    renewal_instant(
        granted.sent_at,
        Duration::from_millis(granted.lease.expires_in_ms),
        Duration::from_millis(granted.lease.ttl_ms),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_margin_is_one_percent_plus_100ms() {
        assert_eq!(
            drift_margin(Duration::from_secs(30)),
            Duration::from_millis(400)
        );
        assert_eq!(drift_margin(Duration::ZERO), Duration::from_millis(100));
    }

    #[test]
    fn the_deadline_counts_from_the_send() {
        let sent_at = Instant::now();
        let deadline = local_deadline(
            sent_at,
            Duration::from_millis(29_000),
            Duration::from_secs(30),
        );
        // 29 s the server still granted, less 300 ms + 100 ms of margin.
        assert_eq!(deadline - sent_at, Duration::from_millis(28_600));
    }

    #[test]
    fn the_deadline_is_never_before_the_send() {
        let sent_at = Instant::now();
        let deadline = local_deadline(sent_at, Duration::from_millis(50), Duration::from_secs(30));
        assert_eq!(deadline, sent_at);
    }

    #[test]
    fn renewal_comes_at_a_third_of_the_ttl() {
        let sent_at = Instant::now();
        let ttl = Duration::from_secs(30);
        assert_eq!(
            renewal_instant(sent_at, ttl, ttl) - sent_at,
            Duration::from_secs(10)
        );
        // A lease answered with less time left than its ttl renews sooner.
        assert_eq!(
            renewal_instant(sent_at, Duration::from_secs(3), ttl) - sent_at,
            Duration::from_secs(1)
        );
    }
}
