//! Proof that the simulation bites: each defect injected behind the `sim-bugs` feature is
//! caught by the checker of the guarantee it breaks, within a few seeds of a few thousand
//! operations. Run with `cargo test -p baton-sim --features sim-bugs --test bugs`.

#![cfg(feature = "sim-bugs")]

use baton_core::sim_bugs::{self, Bug};
use baton_sim::{Options, Outcome, run, shrink};

/// Runs seeds 0.. with `bug` on until one fails; the failing outcome.
fn caught(bug: Bug) -> (u64, Outcome) {
    sim_bugs::set(Some(bug));
    let found = (0..10).find_map(|seed| {
        let outcome = run(&Options::new(seed, 5_000));
        (!outcome.violations.is_empty()).then_some((seed, outcome))
    });
    sim_bugs::set(None);
    found.unwrap_or_else(|| panic!("{} was not caught in 10 seeds", bug.name()))
}

fn assert_caught_by(bug: Bug, guarantees: &[&str]) {
    let (seed, outcome) = caught(bug);
    let first = &outcome.violations[0];
    assert!(
        guarantees.contains(&first.guarantee),
        "{} (seed {seed}) was caught as {first}, expected one of {guarantees:?}",
        bug.name()
    );
}

#[test]
fn answering_a_grant_before_its_commit_breaks_g2() {
    assert_caught_by(Bug::AckBeforeCommit, &["G2"]);
}

#[test]
fn answering_a_queue_place_before_its_commit_breaks_g2() {
    assert_caught_by(Bug::QueueBeforeCommit, &["G2"]);
}

#[test]
fn reusing_tokens_after_a_restart_breaks_g3() {
    assert_caught_by(Bug::TokenReuseAfterRestart, &["G3"]);
}

#[test]
fn granting_during_a_lock_delay_breaks_g5() {
    assert_caught_by(Bug::GrantDuringLockDelay, &["G5"]);
}

/// The try takes the slot a lock-delay held back for the queue: the queue-jump (G4) or the
/// grant within the lock-delay (G5) shows first.
#[test]
fn a_try_jumping_the_queue_breaks_g4() {
    assert_caught_by(Bug::TryJumpsQueue, &["G4", "G5"]);
    sim_bugs::set(Some(Bug::TryJumpsQueue));
    let g4 = (0..20).any(|seed| {
        run(&Options::new(seed, 5_000))
            .violations
            .iter()
            .any(|violation| violation.guarantee == "G4")
    });
    sim_bugs::set(None);
    assert!(g4, "the G4 checker itself never saw the jump");
}

#[test]
fn keeping_a_departed_waiters_grant_breaks_g5() {
    assert_caught_by(Bug::KeepDepartedGrant, &["G5"]);
}

#[test]
fn forgetting_request_ids_breaks_g7() {
    assert_caught_by(Bug::ForgetRequestId, &["G7"]);
}

#[test]
fn shortening_deadlines_on_recovery_breaks_g2() {
    assert_caught_by(Bug::ShortenOnRecovery, &["G2"]);
}

/// A failure shrinks to a shorter history that still fails, and replays from its seed.
#[test]
fn a_failure_shrinks_and_replays() {
    sim_bugs::set(Some(Bug::ForgetRequestId));
    let options = Options::new(0, 2_000);
    let failing = run(&options);
    assert!(!failing.violations.is_empty());
    let shrunk = shrink(&options);
    assert!(shrunk.ops < options.ops, "no shorter history found");
    let replay = run(&Options {
        trace: true,
        ..shrunk.clone()
    });
    sim_bugs::set(None);
    assert_eq!(
        replay.violations.first().map(|v| v.guarantee),
        Some("G7"),
        "the shrunk history still fails the same way"
    );
    assert!(!replay.trace.is_empty());
}

/// Several servers: a commit not fenced by the leadership epoch lets a deposed active that
/// resumes write its stale table over its successor's, which the next takeover loads.
#[test]
fn a_commit_not_fenced_by_the_epoch_breaks_a_guarantee() {
    sim_bugs::set(Some(Bug::UnfencedCommit));
    let found = (0..10).find_map(|seed| {
        let outcome = run(&Options::servers(seed, 5_000));
        (!outcome.violations.is_empty()).then_some((seed, outcome))
    });
    sim_bugs::set(None);
    let (seed, outcome) = found.unwrap_or_else(|| panic!("unfenced-commit was not caught"));
    let first = &outcome.violations[0];
    assert!(
        ["G1", "G2", "G3", "G5", "recovery"].contains(&first.guarantee),
        "unfenced-commit (seed {seed}) was caught as {first}"
    );
    assert!(outcome.takeovers > 0);
}
