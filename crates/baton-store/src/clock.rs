//! Where time comes from. The core never reads a clock; stores do, through this trait, so tests
//! can drive time by hand.

use std::sync::atomic::{AtomicU64, Ordering};

use baton_core::Millis;

/// A source of the current time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now_ms(&self) -> Millis;
}

/// The system's wall clock, made monotonic: it never answers less than it answered before, so
/// a clock stepped backwards cannot shorten a deadline.
#[derive(Debug, Default)]
pub struct SystemClock {
    last: AtomicU64,
    /// Added to the wall clock (a testing aid: a server whose clock is off).
    skew_ms: i64,
}

impl SystemClock {
    /// A new clock.
    pub fn new() -> SystemClock {
        SystemClock::default()
    }

    /// A clock that runs `skew_ms` ahead of the wall clock (behind when negative).
    pub fn skewed(skew_ms: i64) -> SystemClock {
        SystemClock {
            last: AtomicU64::new(0),
            skew_ms,
        }
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> Millis {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64)
            .saturating_add_signed(self.skew_ms);
        let previous = self.last.fetch_max(wall, Ordering::AcqRel);
        previous.max(wall)
    }
}

/// A clock moved by hand, for tests.
#[derive(Debug)]
pub struct ManualClock {
    now: AtomicU64,
}

impl ManualClock {
    /// A clock showing `start`.
    pub fn new(start: Millis) -> ManualClock {
        ManualClock {
            now: AtomicU64::new(start),
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, ms: u64) {
        self.now.fetch_add(ms, Ordering::AcqRel);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> Millis {
        self.now.load(Ordering::Acquire)
    }
}
