//! The fixed setup every run shares: the server's clock at the start, the locks clients use
//! and the table's configuration. The simulator builds a run from it, and the checkers and the
//! trace read it back (capacities, periods, times relative to the start), so it lives here,
//! below all three, rather than in the simulator they would otherwise import in a circle.

use baton_core::{Config, Millis};

/// The server's clock at the start of every run.
pub const START_MS: Millis = 1_700_000_000_000;

/// The locks clients use, with their capacities: two mutexes and two semaphores.
pub const LOCKS: [(&str, u32); 4] = [("sim-a", 1), ("sim-b", 1), ("sim-c", 2), ("sim-d", 3)];

/// The table's configuration in the simulation: short periods, so lapses, lock-delays,
/// forgotten locks and pruning all happen within a run.
pub fn config() -> Config {
    Config {
        lock_delay_ms: 400,
        ticket_lapse_ms: 2_000,
        history_retention_ms: 120_000,
        ended_retention_ms: 120_000,
        idle_lock_retention_ms: 20_000,
        job_retention_ms: 30_000,
        ..Config::default()
    }
}
