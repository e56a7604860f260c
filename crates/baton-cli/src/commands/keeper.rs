//! What `baton run` and `baton parallel` share to keep a job's lease while its command runs:
//! the lease timing rule ([`LeaseTiming`]: heartbeat, retries, grace and stop slack, all scaled
//! with the TTL, and the shortest TTL that can work), the heartbeat loop (renew at a third of
//! the ttl; stop the command's tree so that it is gone before the local deadline when the lease
//! is lost, revoked, replaced or cannot be renewed in time), the confirming renewal of a grant
//! that came after a wait, and the signals baton listens for.
//!
//! The local deadline is (when the last successful grant or renewal request was *sent*) + the
//! server's `expires_in_ms` − a drift margin (`baton_client::local_deadline`), so it is never
//! later than the server's expiry whatever the two clocks say (G6). A stop is started no later
//! than `deadline − grace − stop slack`, and the tree is SIGKILLed `grace` after it starts. The
//! guardian holds the same deadline (each renewal sends it the new one) and stops the tree
//! itself, TERM at `deadline − grace` and KILL at `deadline`, should `baton run` be paused.

use std::time::Duration;

use baton_client::{Client, Error, Granted, local_deadline};
use tokio::time::Instant;

use crate::output;
use crate::supervise::{self, Control};

/// The shortest `--ttl` that `baton run` and `baton parallel` accept. Below it the window
/// between the first renewal and the latest start of a stop is too short for a renewal's round
/// trip on a loaded machine; see [`LeaseTiming`].
pub const TTL_MIN: Duration = Duration::from_secs(2);

/// The longest `--ttl` (the server's own bound: 24 hours).
pub const TTL_MAX: Duration = Duration::from_secs(24 * 3600);

/// The pause between heartbeat attempts while the server does not answer, for long TTLs.
const HEARTBEAT_RETRY_MAX: Duration = Duration::from_millis(500);

/// The timing of one job's lease, derived from its TTL and the asked-for `--grace` in one place
/// so that every TTL from [`TTL_MIN`] to [`TTL_MAX`] works:
///
/// | what | value |
/// | --- | --- |
/// | heartbeat | every third of the TTL, counted from the last renewal's send |
/// | retry pause after a failed heartbeat | a tenth of the TTL, at most 500 ms |
/// | drift margin | 1% of the TTL + 100 ms (`baton_client::drift_margin`) |
/// | grace (TERM to KILL) | `--grace`, at most a quarter of the TTL |
/// | stop slack (timer lateness before a stop starts) | a tenth of the TTL, at most 1 s |
///
/// So a stop starts at the latest `ttl − drift − grace − slack` after the last successful
/// renewal was sent, at least `0.72 × ttl − 100 ms` later, which leaves every TTL at least a
/// fifth of itself (400 ms at the 2 s minimum) for the renewal due at a third.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// The lease's time-to-live, asked of the server at every grant and renewal.
    pub ttl: Duration,
    /// How long after a renewal's send the next one is sent.
    pub heartbeat: Duration,
    /// The pause between attempts while renewals fail.
    pub retry: Duration,
    /// Between SIGTERM and SIGKILL when the command must stop.
    pub grace: Duration,
    /// How much earlier than `deadline − grace` a stop starts, for timers that fire late.
    pub stop_slack: Duration,
}

impl LeaseTiming {
    /// The timing for `--ttl ttl --grace grace`, or the message for a TTL that cannot work, in
    /// the user's own units (for exit 64).
    pub fn new(ttl: Duration, grace: Duration) -> Result<LeaseTiming, String> {
        if ttl < TTL_MIN {
            return Err(format!(
                "--ttl {} is below the minimum of {}: the lease could not be renewed in time",
                humantime::format_duration(ttl),
                output::duration(TTL_MIN)
            ));
        }
        if ttl > TTL_MAX {
            return Err(format!(
                "--ttl {} is above the maximum of {}",
                humantime::format_duration(ttl),
                output::duration(TTL_MAX)
            ));
        }
        Ok(LeaseTiming {
            ttl,
            heartbeat: ttl / 3,
            retry: (ttl / 10).min(HEARTBEAT_RETRY_MAX),
            grace: grace.min(ttl / 4),
            stop_slack: (ttl / 10).min(supervise::STOP_SLACK),
        })
    }

    /// The last moment a stop can start and still have the tree killed before `deadline`.
    pub fn stop_by(&self, deadline: Instant) -> Instant {
        deadline
            .checked_sub(self.grace + self.stop_slack)
            .unwrap_or_else(Instant::now)
    }

    /// The local deadline of a lease granted or renewed by `granted`'s request.
    pub fn deadline_of(&self, granted: &Granted) -> Instant {
        local_deadline(
            granted.sent_at,
            Duration::from_millis(granted.lease.expires_in_ms),
            self.ttl,
        )
    }

    /// How long after a renewal's send a stop may have to start: what the heartbeat due at a
    /// third of the TTL has to get through.
    #[cfg(test)]
    fn renewal_window(&self) -> Duration {
        self.ttl
            .saturating_sub(baton_client::drift_margin(self.ttl) + self.grace + self.stop_slack)
            .saturating_sub(self.heartbeat)
    }
}

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
    /// `baton cancel` (`POST /v1/jobs/{id}/cancel`) asked this one to stop.
    Cancelled,
}

impl KeeperStop {
    /// The stop a server's `stop` field asks for: `cancelled`, or `replaced` (also for a reason
    /// this version does not know: stopping is what every stop request asks).
    pub fn of_stop_request(reason: &str) -> KeeperStop {
        match reason {
            "cancelled" => KeeperStop::Cancelled,
            _ => KeeperStop::Replaced,
        }
    }
}

/// Renews the job's lease until the task is aborted, or stops the tree through `control` and
/// reports why through `stopped` (called once, before the stop is requested).
pub async fn keep_lease(
    client: Client,
    job_id: String,
    granted: Granted,
    timing: LeaseTiming,
    control: Control,
    stopped: impl Fn(KeeperStop) + Send + 'static,
) {
    let mut deadline = timing.deadline_of(&granted);
    let mut renew_at = granted.sent_at + timing.heartbeat;
    let lease_id = granted.lease.id;
    let grace = timing.grace;
    let stop = |why: KeeperStop, grace: Duration| {
        stopped(why);
        control.request_stop(grace);
    };
    loop {
        // The last moment a stop can start and still be over before the deadline.
        let stop_by = timing.stop_by(deadline);
        tokio::time::sleep_until(renew_at.min(stop_by)).await;
        if Instant::now() >= stop_by {
            stop(KeeperStop::Deadline, grace);
            return;
        }
        let attempt = client.job_heartbeat(&job_id, &lease_id, Some(timing.ttl));
        match tokio::time::timeout_at(stop_by, attempt).await {
            Ok(Ok((renewed, replaced))) => {
                deadline = timing.deadline_of(&renewed);
                control.set_deadline(deadline.into_std());
                renew_at = renewed.sent_at + timing.heartbeat;
                if let Some(reason) = replaced {
                    stop(KeeperStop::of_stop_request(&reason), grace);
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
            Ok(Err(_)) | Err(_) => renew_at = Instant::now() + timing.retry,
        }
    }
}

/// Renews every lease of a lock set (plain leases, no job) until the task is aborted, or stops
/// the tree through `control` and reports why through `stopped` when any of them is lost or
/// cannot be renewed in time. The deadline that counts is the earliest of the leases' local
/// deadlines, so the tree is gone before the first lease could expire (G6 for sets).
pub async fn keep_leases(
    client: Client,
    leases: Vec<Granted>,
    timing: LeaseTiming,
    control: Control,
    stopped: impl Fn(KeeperStop) + Send + 'static,
) {
    let earliest = |leases: &[Granted]| {
        leases
            .iter()
            .map(|granted| timing.deadline_of(granted))
            .min()
            .unwrap_or_else(Instant::now)
    };
    let mut leases = leases;
    let mut deadline = earliest(&leases);
    let mut renew_at = leases
        .iter()
        .map(|granted| granted.sent_at)
        .min()
        .unwrap_or_else(Instant::now)
        + timing.heartbeat;
    let grace = timing.grace;
    let stop = |why: KeeperStop, grace: Duration| {
        stopped(why);
        control.request_stop(grace);
    };
    loop {
        let stop_by = timing.stop_by(deadline);
        tokio::time::sleep_until(renew_at.min(stop_by)).await;
        if Instant::now() >= stop_by {
            stop(KeeperStop::Deadline, grace);
            return;
        }
        let mut failed = false;
        for granted in leases.iter_mut() {
            let attempt = client.renew(&granted.lease.id, Some(timing.ttl));
            match tokio::time::timeout_at(stop_by, attempt).await {
                Ok(Ok(renewed)) => *granted = renewed,
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
                Ok(Err(_)) | Err(_) => failed = true,
            }
        }
        deadline = earliest(&leases);
        control.set_deadline(deadline.into_std());
        renew_at = if failed {
            Instant::now() + timing.retry
        } else {
            leases
                .iter()
                .map(|granted| granted.sent_at)
                .min()
                .unwrap_or_else(Instant::now)
                + timing.heartbeat
        };
    }
}

/// Confirms a lease just granted after waiting in the queue, with a renewal whose send time is
/// known, before the command starts (G6).
///
/// The grant came on a long-poll, so its local deadline counts from when that poll was sent,
/// possibly longer ago than the TTL: that deadline says nothing about the lease, which the
/// server granted only just now. So the renewal is **not** bounded by it. Nothing runs yet, so
/// retrying is safe: short outages are retried for up to one TTL from now (by then a lease
/// granted at the latest now has surely ended on the server); the server's `lease_lost` or
/// `lease_not_found` ends it at once.
pub async fn renew_after_wait(
    client: &Client,
    job_id: &str,
    granted: &Granted,
    timing: LeaseTiming,
) -> Result<Granted, String> {
    let give_up_at = Instant::now() + timing.ttl;
    loop {
        let attempt = client.job_heartbeat(job_id, &granted.lease.id, Some(timing.ttl));
        match tokio::time::timeout_at(give_up_at, attempt).await {
            Ok(Ok((renewed, _))) => return Ok(renewed),
            Ok(Err(error @ (Error::LeaseLost { .. } | Error::NotFound { .. }))) => {
                return Err(error.to_string());
            }
            Ok(Err(_)) if Instant::now() + timing.retry < give_up_at => {
                tokio::time::sleep(timing.retry).await;
            }
            Ok(Err(error)) => return Err(error.to_string()),
            Err(_) => {
                return Err(format!(
                    "no confirming renewal succeeded within {}",
                    output::duration(timing.ttl)
                ));
            }
        }
    }
}

/// SIGINT, SIGTERM and SIGHUP, while baton itself must react to them (waiting for a lock, or
/// stopping every job of `baton parallel`). On Windows, Ctrl-C and Ctrl-Break, both reported as
/// SIGINT (2), so that the exit code is the same 130.
pub struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hangup: tokio::signal::unix::Signal,
    #[cfg(windows)]
    ctrl_c: tokio::signal::windows::CtrlC,
    #[cfg(windows)]
    ctrl_break: tokio::signal::windows::CtrlBreak,
}

impl Signals {
    /// Starts listening.
    #[cfg(unix)]
    pub fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// Starts listening.
    #[cfg(windows)]
    pub fn new() -> anyhow::Result<Signals> {
        use tokio::signal::windows::{ctrl_break, ctrl_c};
        Ok(Signals {
            ctrl_c: ctrl_c()?,
            ctrl_break: ctrl_break()?,
        })
    }

    /// The number of the next signal received.
    #[cfg(unix)]
    pub async fn next(&mut self) -> i32 {
        tokio::select! {
            _ = self.interrupt.recv() => 2,
            _ = self.terminate.recv() => 15,
            _ = self.hangup.recv() => 1,
        }
    }

    /// The number of the next signal received: 2 (SIGINT) for Ctrl-C and for Ctrl-Break.
    #[cfg(windows)]
    pub async fn next(&mut self) -> i32 {
        tokio::select! {
            _ = self.ctrl_c.recv() => 2,
            _ = self.ctrl_break.recv() => 2,
        }
    }
}

/// Whole milliseconds, saturating.
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_accepted_ttl_leaves_a_fifth_of_itself_for_the_renewal() {
        let grace = Duration::from_secs(10);
        let mut ttl = TTL_MIN;
        while ttl <= TTL_MAX {
            let timing = LeaseTiming::new(ttl, grace).unwrap_or_else(|message| panic!("{message}"));
            assert!(
                timing.renewal_window() >= ttl / 5,
                "ttl {ttl:?}: only {:?} for the renewal",
                timing.renewal_window()
            );
            assert!(timing.retry < timing.renewal_window(), "ttl {ttl:?}");
            ttl = ttl * 3 / 2;
        }
    }

    #[test]
    fn a_ttl_that_cannot_work_is_refused_in_the_users_units() {
        let grace = Duration::from_secs(10);
        let refused = LeaseTiming::new(Duration::from_millis(100), grace);
        assert_eq!(
            refused.err().as_deref(),
            Some("--ttl 100ms is below the minimum of 2s: the lease could not be renewed in time")
        );
        let refused = LeaseTiming::new(Duration::from_millis(1500), grace);
        assert!(refused.is_err_and(|message| message.starts_with("--ttl 1s 500ms is below")));
        assert!(LeaseTiming::new(Duration::from_secs(2 * 86_400), grace).is_err());
        assert!(LeaseTiming::new(TTL_MIN, grace).is_ok());
    }

    #[test]
    fn the_defaults_keep_a_ten_second_grace_at_a_forty_second_ttl() {
        let timing = LeaseTiming::new(Duration::from_secs(40), Duration::from_secs(10));
        assert_eq!(
            timing.map(|timing| timing.grace),
            Ok(Duration::from_secs(10))
        );
        let timing = LeaseTiming::new(Duration::from_secs(30), Duration::from_secs(10));
        assert_eq!(
            timing.map(|timing| timing.grace),
            Ok(Duration::from_millis(7_500))
        );
    }
}
