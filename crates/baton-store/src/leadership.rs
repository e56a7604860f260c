//! The rules of leadership, without I/O: when an active server may answer, when it steps down,
//! when a campaign wins, and the arithmetic of the leadership lease.
//!
//! `baton-store-postgres`'s `HaStore` runs them against PostgreSQL (the row rules below are
//! what its SQL statements say, by the database's clock) and the monotonic clock; `baton-sim`
//! runs the same functions against a simulated database and simulated clocks, so the simulation
//! tests these rules themselves (docs/simulation.md). Times on the server's monotonic clock are
//! a [`Duration`] since a base of the caller's choosing; times of the database are [`Millis`].
//! ARCHITECTURE.md ("Leadership") states the invariant these rules keep.

use std::time::Duration;

use baton_core::Millis;

/// The leadership lease and every period derived from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderTiming {
    /// The leadership lease: how long the row stays held after a campaign or renewal, by the
    /// database's clock.
    pub ttl: Duration,
}

impl LeaderTiming {
    /// How often the active renews: four renewals fit in one lease.
    pub fn renew_every(&self) -> Duration {
        self.ttl / 4
    }

    /// The margin taken off the local deadline for clocks that run at different rates and for
    /// the time between the check and the answer leaving: a tenth of the lease, at least 100 ms.
    pub fn drift(&self) -> Duration {
        (self.ttl / 10).max(Duration::from_millis(100))
    }

    /// How often a standby looks at the row.
    pub fn campaign_every(&self) -> Duration {
        (self.ttl / 8).min(Duration::from_millis(500))
    }

    /// The local deadline after a campaign or renewal that succeeded and was *sent* at `sent`
    /// (the server's monotonic clock): `sent + ttl - drift`. The database ran the statement
    /// after it was sent, so the row expires later than this in real time, as long as the
    /// server's clock runs no slower than `1 - drift / ttl` of real time.
    pub fn deadline(&self, sent: Duration) -> Duration {
        sent + self.ttl.saturating_sub(self.drift())
    }

    /// While a new active loads its table, it renews once its deadline is this close.
    pub fn renew_while_loading_before(&self) -> Duration {
        self.ttl / 2
    }
}

/// Whether a server may answer from its table at `now` (its monotonic clock), given the local
/// deadline of its leadership (`None`: it holds none). Checked before every operation and again
/// after it, before its answer leaves.
pub fn gate_open(until: Option<Duration>, now: Duration) -> bool {
    until.is_some_and(|until| now < until)
}

/// What a renewal of the row found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// The row was extended: this server still holds it.
    Renewed,
    /// The row is another server's (or this server's term expired): it no longer holds it.
    Taken,
    /// The database did not answer (an error or a timeout).
    Failed,
}

/// What an active does after a renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterRenewal {
    /// Open the gate until this deadline.
    Extend(Duration),
    /// Drop the engine and become a standby, for this reason.
    StepDown(&'static str),
    /// Keep the current deadline and try again (the gate is still open).
    Keep,
}

/// The active's decision after a renewal sent at `sent` that found `renewal`, with the gate
/// as it is now.
pub fn after_renewal(
    timing: &LeaderTiming,
    sent: Duration,
    renewal: Renewal,
    gate_open_now: bool,
) -> AfterRenewal {
    match renewal {
        Renewal::Renewed => AfterRenewal::Extend(timing.deadline(sent)),
        Renewal::Taken => AfterRenewal::StepDown("another server holds the leadership"),
        Renewal::Failed if gate_open_now => AfterRenewal::Keep,
        Renewal::Failed => AfterRenewal::StepDown("the leadership could not be renewed in time"),
    }
}

/// Why an active whose engine no longer takes writes (the database failed a commit for good,
/// or refused it as deposed) steps down.
pub const ENGINE_STOPPED: &str = "the engine stopped taking writes";

/// The leadership row, as the database holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderRow {
    /// The active's node id.
    pub node: String,
    /// The URL clients are told to use.
    pub url: String,
    /// The term: one more at every takeover.
    pub epoch: i64,
    /// When the term ends unless renewed, by the database's clock.
    pub expires_at: Millis,
}

fn ttl_ms(ttl: Duration) -> Millis {
    Millis::try_from(ttl.as_millis()).unwrap_or(Millis::MAX)
}

/// A campaign at the database's time `now`: the row is taken only when there is none or it
/// has expired (`expires_at <= now`), with the next epoch. The won epoch, if won.
pub fn campaign(
    row: &mut Option<LeaderRow>,
    node: &str,
    url: &str,
    now: Millis,
    ttl: Duration,
) -> Option<i64> {
    let epoch = match row {
        None => 1,
        Some(held) if held.expires_at <= now => held.epoch + 1,
        Some(_) => return None,
    };
    *row = Some(LeaderRow {
        node: node.to_owned(),
        url: url.to_owned(),
        epoch,
        expires_at: now.saturating_add(ttl_ms(ttl)),
    });
    Some(epoch)
}

/// A renewal at the database's time `now`: extends the row only while `node` still holds it
/// unexpired with `epoch`.
pub fn renew(
    row: &mut Option<LeaderRow>,
    node: &str,
    epoch: i64,
    now: Millis,
    ttl: Duration,
) -> Renewal {
    match row {
        Some(held) if held.node == node && held.epoch == epoch && held.expires_at > now => {
            held.expires_at = now.saturating_add(ttl_ms(ttl));
            Renewal::Renewed
        }
        _ => Renewal::Taken,
    }
}

/// Gives the row up at `now` (so a standby need not wait for it to expire), if still held.
pub fn resign(row: &mut Option<LeaderRow>, node: &str, epoch: i64, now: Millis) {
    if let Some(held) = row
        && held.node == node
        && held.epoch == epoch
    {
        held.expires_at = held.expires_at.min(now);
    }
}

/// Whether a commit fenced by `(node, epoch)` may write: the row is still that term (expired or
/// not: what it writes before a successor takes the row is in what the successor loads).
pub fn fence_holds(row: &Option<LeaderRow>, node: &str, epoch: i64) -> bool {
    #[cfg(feature = "sim-bugs")]
    if baton_core::sim_bugs::active(baton_core::sim_bugs::Bug::UnfencedCommit) {
        return true;
    }
    row.as_ref()
        .is_some_and(|held| held.node == node && held.epoch == epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn timing_follows_the_lease() {
        let timing = LeaderTiming { ttl: 4 * SECOND };
        assert_eq!(timing.renew_every(), SECOND);
        assert_eq!(timing.drift(), Duration::from_millis(400));
        assert_eq!(timing.campaign_every(), Duration::from_millis(500));
        assert_eq!(timing.deadline(SECOND), Duration::from_millis(4_600));
        assert!(timing.renew_every() * 3 < timing.ttl - timing.drift());
        let short = LeaderTiming { ttl: SECOND };
        assert_eq!(short.drift(), Duration::from_millis(100));
        assert_eq!(short.campaign_every(), Duration::from_millis(125));
    }

    #[test]
    fn the_gate_is_open_only_before_its_deadline() {
        assert!(!gate_open(None, Duration::ZERO));
        assert!(gate_open(Some(SECOND), Duration::from_millis(999)));
        assert!(!gate_open(Some(SECOND), SECOND));
    }

    #[test]
    fn a_renewal_extends_steps_down_or_keeps() {
        let timing = LeaderTiming { ttl: 4 * SECOND };
        assert_eq!(
            after_renewal(&timing, SECOND, Renewal::Renewed, false),
            AfterRenewal::Extend(Duration::from_millis(4_600))
        );
        assert!(matches!(
            after_renewal(&timing, SECOND, Renewal::Taken, true),
            AfterRenewal::StepDown(_)
        ));
        assert_eq!(
            after_renewal(&timing, SECOND, Renewal::Failed, true),
            AfterRenewal::Keep
        );
        assert!(matches!(
            after_renewal(&timing, SECOND, Renewal::Failed, false),
            AfterRenewal::StepDown(_)
        ));
    }

    #[test]
    fn a_campaign_wins_only_an_expired_row() {
        let ttl = 4 * SECOND;
        let mut row = None;
        assert_eq!(campaign(&mut row, "a", "http://a", 1_000, ttl), Some(1));
        assert_eq!(campaign(&mut row, "b", "http://b", 4_999, ttl), None);
        assert_eq!(renew(&mut row, "b", 1, 4_999, ttl), Renewal::Taken);
        assert_eq!(renew(&mut row, "a", 1, 4_999, ttl), Renewal::Renewed);
        assert_eq!(campaign(&mut row, "b", "http://b", 8_998, ttl), None);
        assert_eq!(campaign(&mut row, "b", "http://b", 8_999, ttl), Some(2));
        assert!(!fence_holds(&row, "a", 1));
        assert!(fence_holds(&row, "b", 2));
        assert_eq!(renew(&mut row, "a", 1, 9_000, ttl), Renewal::Taken);
        resign(&mut row, "b", 2, 9_000);
        assert_eq!(campaign(&mut row, "a", "http://a", 9_000, ttl), Some(3));
        assert!(fence_holds(&row, "a", 3), "an expired term still commits");
    }
}
