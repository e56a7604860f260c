//! The one clock `baton run` and its guardian share: `CLOCK_MONOTONIC`, the system-wide clock
//! that `std::time::Instant` reads on Linux. `baton run` sends the guardian its lease's local
//! deadline as nanoseconds on this clock, so the guardian enforces exactly the same instant
//! however late it reads the message.

use std::time::{Duration, Instant};

use nix::time::{ClockId, clock_gettime};

/// Now, in nanoseconds of `CLOCK_MONOTONIC`. Never fails on Linux; 0 if it ever did.
pub fn now_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |now| {
        let nanos = Duration::new(
            u64::try_from(now.tv_sec()).unwrap_or(0),
            u32::try_from(now.tv_nsec()).unwrap_or(0),
        )
        .as_nanos();
        u64::try_from(nanos).unwrap_or(u64::MAX)
    })
}

/// `at` in nanoseconds of `CLOCK_MONOTONIC`. The clock is read before `Instant::now()`, so the
/// result is never later than `at` (by the microseconds between the two reads at most earlier).
pub fn ns_of(at: Instant) -> u64 {
    let now_ns = now_ns();
    let left = at.saturating_duration_since(Instant::now());
    now_ns.saturating_add(u64::try_from(left.as_nanos()).unwrap_or(u64::MAX))
}
