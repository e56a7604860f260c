//! The simulation on the real engine: faulted histories in which every guarantee holds, the
//! same seed always gives the same history, and the budget CI runs.

use baton_sim::{Options, run, shrink};

/// The CI budget: at least 100,000 simulated operations with faults (crashes, failed commits,
/// restarts, pauses, departures, clock jumps), every checker passing. Seeds 0.. with 12,500
/// operations each.
#[test]
fn a_hundred_thousand_faulted_operations_keep_every_guarantee() {
    let started = std::time::Instant::now();
    let mut ops = 0;
    let mut crashes = 0;
    let mut seed = 0;
    while ops < 100_000 {
        let outcome = run(&Options::new(seed, 12_500));
        assert!(
            outcome.violations.is_empty(),
            "seed {seed} failed: {}\nreplay: cargo run -p baton-sim -- --seed {seed} --ops 12500 --trace",
            outcome.violations[0]
        );
        ops += outcome.ops;
        crashes += outcome.crashes;
        seed += 1;
    }
    assert!(
        crashes > 100,
        "the runs crashed the server only {crashes} times"
    );
    eprintln!(
        "{ops} operations over {seed} seeds, {crashes} crashes, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// One seed, one history: two runs of a seed record the same events (equal digests), and a
/// traced run (the replay) records the same history as an untraced one.
#[test]
fn the_same_seed_replays_the_same_history() {
    for seed in [3, 41] {
        let first = run(&Options::new(seed, 3_000));
        let second = run(&Options::new(seed, 3_000));
        assert_eq!(first.digest, second.digest, "seed {seed}");
        assert_eq!(first.events, second.events, "seed {seed}");
        let traced = run(&Options {
            trace: true,
            ..Options::new(seed, 3_000)
        });
        assert_eq!(
            first.digest, traced.digest,
            "seed {seed}: the trace changed the history"
        );
        assert!(traced.trace.len() >= traced.events, "every event is traced");
        let other = run(&Options::new(seed + 1, 3_000));
        assert_ne!(first.digest, other.digest, "another seed, another history");
    }
}

/// Every kind of fault and client behaviour actually happens within a CI-sized run.
#[test]
fn the_runs_exercise_every_fault() {
    let outcome = run(&Options {
        trace: true,
        ..Options::new(5, 10_000)
    });
    assert!(outcome.violations.is_empty(), "{:?}", outcome.violations);
    let trace = outcome.trace.join("\n");
    for needle in [
        "CRASH (lost-batch)",
        "CRASH (durable-unacknowledged)",
        "CRASH (io-error)",
        "RESTARTED",
        "clock jumps",
        "pauses for",
        "went away mid-wait",
        "queued on",
        "(Try,",
        "(Queue,",
        "(Job,",
        "renewed",
        "released",
        "revoked",
        "fence",
        "the lease has ended (Expired)",
        "refused",
        "(wait) created",
        "(skip) created",
        "(fail) created",
        "(replace) created",
        "(coalesce) created",
        "finished",
    ] {
        assert!(trace.contains(needle), "no {needle:?} in the run");
    }
}

/// Shrinking keeps a passing run as it is (a failing one is shown in tests/bugs.rs).
#[test]
fn shrinking_a_passing_run_changes_nothing() {
    let options = Options::new(9, 500);
    let shrunk = shrink(&options);
    assert_eq!(shrunk.ops, options.ops);
    assert!(shrunk.disabled.is_empty());
}

/// Several servers electing an active one over a shared database (docs/simulation.md):
/// crashes and pauses past the leadership lease depose actives, which resume with their stale
/// tables; leadership statements are delayed on the network; clients move on when told
/// `not_active`. Every checker judges the merged history of all servers' answers. Seeds of
/// 10,000 operations until at least 40,000.
#[test]
fn leadership_changes_keep_every_guarantee() {
    let started = std::time::Instant::now();
    let (mut ops, mut takeovers, mut pauses, mut deposed, mut not_active) = (0, 0, 0, 0, 0);
    let mut seed = 0;
    while ops < 40_000 {
        let outcome = run(&Options::servers(seed, 10_000));
        assert!(
            outcome.violations.is_empty(),
            "seed {seed} failed: {}\nreplay: cargo run -p baton-sim -- --seed {seed} --ops 10000 --servers 3 --trace",
            outcome.violations[0]
        );
        ops += outcome.ops;
        takeovers += outcome.takeovers;
        pauses += outcome.server_pauses;
        deposed += outcome.deposed_commits;
        not_active += outcome.not_active;
        seed += 1;
    }
    assert!(takeovers > 100, "only {takeovers} takeovers");
    assert!(pauses > 100, "only {pauses} server pauses");
    assert!(deposed > 0, "no deposed server ever tried to commit");
    assert!(not_active > 0, "no client was ever told not_active");
    eprintln!(
        "{ops} operations over {seed} seeds on 3 servers: {takeovers} takeovers, {pauses} pauses, {deposed} deposed commits refused, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// One seed, one history, with several servers too; and their faults all happen.
#[test]
fn leadership_runs_replay_and_exercise_every_fault() {
    let first = run(&Options::servers(7, 3_000));
    let second = run(&Options::servers(7, 3_000));
    assert_eq!(first.digest, second.digest);
    let traced = run(&Options {
        trace: true,
        ..Options::servers(7, 3_000)
    });
    assert_eq!(first.digest, traced.digest, "the trace changed the history");
    assert!(traced.violations.is_empty(), "{:?}", traced.violations);
    let trace = traced.trace.join("\n");
    for needle in [
        "takes over with epoch",
        "steps down: another server holds the leadership",
        "pauses for",
        "CRASH",
        "RESTARTED",
        "granted",
    ] {
        assert!(trace.contains(needle), "no {needle:?} in the run");
    }
}
