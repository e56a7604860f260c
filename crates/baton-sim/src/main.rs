//! `baton-sim`: runs seeded simulations of the engine and replays failures.
//!
//! ```text
//! cargo run -p baton-sim -- --seeds 20 --ops 10000      # 20 seeds from 0
//! cargo run -p baton-sim -- --seed 7 --ops 5000 --trace # replay one, with its trace
//! cargo run --release -p baton-sim -- --ops 10000000    # before a release (in seeds of 50,000)
//! ```

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;

/// Seeded simulation of baton's engine (docs/simulation.md).
#[derive(Debug, Parser)]
#[command(name = "baton-sim")]
struct Args {
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// How many seeds to run, from `--seed` on.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Client operations per seed. More than 50,000 runs as consecutive seeds of 50,000 each
    /// (a history is kept whole in memory for its checkers), so every failure still names
    /// one seed to replay.
    #[arg(long, default_value_t = 10_000)]
    ops: u64,
    /// Simulated clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Simulated servers: 1 runs a lone engine that restarts in place; more elect an active
    /// one over a shared database (leadership changes, fenced commits, paused servers).
    #[arg(long, default_value_t = 1)]
    servers: usize,
    /// Print every event of each run.
    #[arg(long)]
    trace: bool,
    /// On a failure, look for a shorter failing history (fewer operations and clients).
    #[arg(long)]
    shrink: bool,
    /// Leave a client out (for replaying a shrunk history); repeatable.
    #[arg(long = "without", value_name = "CLIENT")]
    without: Vec<usize>,
    /// Turn on an injected bug (only with `--features sim-bugs`).
    #[cfg(feature = "sim-bugs")]
    #[arg(long)]
    bug: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    #[cfg(feature = "sim-bugs")]
    if let Some(name) = &args.bug {
        match baton_core::sim_bugs::Bug::parse(name) {
            Some(bug) => baton_core::sim_bugs::set(Some(bug)),
            None => {
                let names: Vec<&str> = baton_core::sim_bugs::Bug::ALL
                    .iter()
                    .map(|bug| bug.name())
                    .collect();
                eprintln!("unknown bug {name}; one of: {}", names.join(", "));
                return ExitCode::from(2);
            }
        }
    }
    const CHUNK: u64 = 50_000;
    let (seeds, ops) = if args.ops > CHUNK {
        let chunks = args.ops.div_ceil(CHUNK);
        println!(
            "{} ops per seed run as {chunks} seeds of {CHUNK} each",
            args.ops
        );
        (args.seeds.saturating_mul(chunks), CHUNK)
    } else {
        (args.seeds, args.ops)
    };
    let started = Instant::now();
    let mut failed = 0;
    let mut total_ops = 0;
    for seed in args.seed..args.seed.saturating_add(seeds) {
        let mut options = baton_sim::Options::new(seed, ops);
        options.clients = args.clients;
        options.servers = args.servers;
        options.trace = args.trace;
        options.disabled = args.without.clone();
        let outcome = baton_sim::run(&options);
        total_ops += outcome.ops;
        for line in &outcome.trace {
            println!("{line}");
        }
        let leadership = if args.servers > 1 {
            format!(
                ", {} takeovers, {} server pauses, {} not-active, {} deposed commits",
                outcome.takeovers,
                outcome.server_pauses,
                outcome.not_active,
                outcome.deposed_commits
            )
        } else {
            String::new()
        };
        println!(
            "seed {seed}: {} ops, {} steps, {} answered, {} grants, {} commits, {} crashes, {} clock jumps, {} departures{leadership}, digest {:016x}",
            outcome.ops,
            outcome.steps,
            outcome.answered,
            outcome.grants,
            outcome.commits,
            outcome.crashes,
            outcome.clock_jumps,
            outcome.departures,
            outcome.digest
        );
        if let Some(violation) = outcome.violations.first() {
            failed += 1;
            println!("FAILED seed {seed}: {violation}");
            let mut replay = options.clone();
            if args.shrink {
                replay = baton_sim::shrink(&options);
                println!(
                    "  shrunk to {} ops without clients {:?}",
                    replay.ops, replay.disabled
                );
            }
            let without: String = replay
                .disabled
                .iter()
                .map(|client| format!(" --without {client}"))
                .collect();
            #[cfg(feature = "sim-bugs")]
            let (features, bug) = match &args.bug {
                Some(name) => (" --features sim-bugs", format!(" --bug {name}")),
                None => ("", String::new()),
            };
            #[cfg(not(feature = "sim-bugs"))]
            let (features, bug) = ("", String::new());
            println!(
                "  replay: cargo run -p baton-sim{features} -- --seed {seed} --ops {} --clients {} --servers {}{without}{bug} --trace",
                replay.ops, replay.clients, replay.servers
            );
        }
    }
    let elapsed = started.elapsed();
    println!(
        "{seeds} seeds, {total_ops} ops in {:.1} s ({:.0} ops/s), {failed} failed",
        elapsed.as_secs_f64(),
        total_ops as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
