//! baton-sim: a seeded, deterministic simulation of the whole engine.
//!
//! One seed drives the real [`baton_store::Engine`] and, through it, the real
//! [`baton_core::State`]: many simulated clients use the real [`baton_store::Store`] API
//! (acquire try and queue, waits on tickets, renewals, releases, revocations, fence checks,
//! jobs with every policy, retries with the same request id), pause past their TTL, go away
//! in the middle of a wait, and come back after a restart; the server crashes (losing the batch
//! in flight, or after it is durable but before anyone heard), fails a commit, recovers through
//! [`baton_store::Engine::open`], and its clock jumps forward. Everything is recorded
//! ([`history`]) and judged by checkers named after the guarantees ([`check`]). A failure
//! names its seed; `cargo run -p baton-sim -- --seed N --trace` replays it. With
//! [`Options::servers`] above one, several servers elect an active one by
//! `baton_store::leadership`'s rules over one shared, fenced database, and pause or crash
//! through leadership changes. See docs/simulation.md.

pub mod check;
pub mod disk;
pub mod history;
mod rng;
pub mod setup;
pub mod sim;
pub mod trace;

pub use check::Violation;
pub use sim::{Options, Outcome, run};

/// Makes a failing run smaller while it still fails: first the fewest operations (the same seed
/// with fewer operations replays a prefix of the same history), then without each client in
/// turn. Returns the smallest failing options found (the input when it does not fail).
pub fn shrink(options: &Options) -> Options {
    let fails = |options: &Options| !run(options).violations.is_empty();
    let mut best = options.clone();
    best.trace = false;
    if !fails(&best) {
        return options.clone();
    }
    let (mut low, mut high) = (1, best.ops);
    while low < high {
        let middle = low + (high - low) / 2;
        let candidate = Options {
            ops: middle,
            ..best.clone()
        };
        if fails(&candidate) {
            high = middle;
        } else {
            low = middle + 1;
        }
    }
    best.ops = high;
    for client in 0..best.clients {
        if best.disabled.contains(&client) {
            continue;
        }
        let mut candidate = best.clone();
        candidate.disabled.push(client);
        if fails(&candidate) {
            best = candidate;
        }
    }
    best.trace = options.trace;
    best
}
