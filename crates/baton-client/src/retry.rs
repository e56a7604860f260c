//! Bounded exponential backoff for requests that are safe to send again.
//!
//! Which requests those are is decided by the caller of the transport (see `client.rs`): reads,
//! releases, ticket waits and cancels, fence checks, renewals, and acquires (which always carry a
//! request id, so the server answers a repeat with the first outcome, guarantee G7). Revocation is
//! the one call never retried: a repeat after a lost answer would report `holder_not_found`.

use std::time::Duration;

/// How often and how patiently a request that failed with
/// [`Error::Unavailable`](crate::Error::Unavailable) is sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// How many times a request is sent at most, the first time included. 1 disables retries.
    pub attempts: u32,
    /// The pause before the first retry; each later pause doubles, up to `backoff_max`.
    pub backoff_initial: Duration,
    /// The longest pause between two attempts.
    pub backoff_max: Duration,
}

impl RetryPolicy {
    /// Sends every request once.
    pub const NONE: RetryPolicy = RetryPolicy {
        attempts: 1,
        backoff_initial: Duration::ZERO,
        backoff_max: Duration::ZERO,
    };

    /// The pause after failed attempt number `attempt` (1-based), before the next one: the
    /// exponential step with "equal jitter" (between half and all of it), so that many clients
    /// cut off by the same outage do not come back in lockstep.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let step = exponential_step(self.backoff_initial, self.backoff_max, attempt);
        let half = step / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        let jitter = if jitter_ms == 0 {
            Duration::ZERO
        } else {
            Duration::from_millis(rand::random_range(0..=jitter_ms))
        };
        half + jitter
    }
}

impl Default for RetryPolicy {
    /// Five attempts, pausing about 100 ms, 200 ms, 400 ms and 800 ms: about 1.5 s in all, enough
    /// to ride over a server restart behind a load balancer, short enough for a script to report
    /// an outage quickly.
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts: 5,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
        }
    }
}

/// `initial * 2^(attempt-1)`, capped at `max`, without overflow.
pub(crate) fn exponential_step(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(31);
    initial
        .checked_mul(1u32 << doublings)
        .unwrap_or(max)
        .min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_double_and_are_capped() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        let steps: Vec<u64> = (1..=7)
            .map(|attempt| exponential_step(initial, max, attempt).as_millis() as u64)
            .collect();
        assert_eq!(steps, [100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(exponential_step(initial, max, u32::MAX), max);
    }

    #[test]
    fn jitter_stays_within_the_step() {
        let policy = RetryPolicy::default();
        for attempt in 1..10 {
            let step = exponential_step(policy.backoff_initial, policy.backoff_max, attempt);
            for _ in 0..50 {
                let pause = policy.backoff(attempt);
                assert!(pause >= step / 2 && pause <= step, "{pause:?} vs {step:?}");
            }
        }
        assert_eq!(RetryPolicy::NONE.backoff(1), Duration::ZERO);
    }
}
