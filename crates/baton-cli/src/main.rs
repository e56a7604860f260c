//! `baton`: the command-line tool of the baton lock service, and its server.
//!
//! This file owns the process: it parses the command line (usage errors exit 64, `--help` and
//! `--version` exit 0), builds the client, runs one command on a tokio runtime, and turns the
//! outcome into an exit code and a `baton: <message> (<code>)` line on stderr. The exit codes
//! are a contract, kept in [`exit`] and `docs/cli.md`.
//!
//! **API boundary**: the CLI speaks HTTP only through `baton-client`.

mod args;
mod commands;
mod exit;
mod output;
mod supervise;

use std::process::ExitCode;

use baton_client::{Client, Error};
use clap::error::ErrorKind;
use clap::{CommandFactory, FromArgMatches};

use crate::args::{Cli, Command};
use crate::commands::Context;

fn main() -> ExitCode {
    // The guardian of `baton run` is this binary re-executed; it must start before anything
    // else (no runtime, no threads, no argument parser).
    let mut arguments = std::env::args_os();
    if arguments
        .nth(1)
        .is_some_and(|first| first == supervise::GUARD_SUBCOMMAND)
    {
        return ExitCode::from(supervise::guard_main(arguments));
    }
    let cli = match parse() {
        Ok(cli) => cli,
        Err(code) => return ExitCode::from(code),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("baton: cannot start the async runtime: {error}");
            return ExitCode::from(exit::SOFTWARE);
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            report(&error);
            exit::for_error(&error)
        }
    };
    ExitCode::from(code)
}

/// Parses the command line; on failure prints clap's message and returns the exit code:
/// 0 for `--help` and `--version`, [`exit::USAGE`] for everything else.
fn parse() -> Result<Cli, u8> {
    let command = Cli::command().after_long_help(exit::help_table());
    let parsed = command
        .try_get_matches()
        .and_then(|mut matches| Cli::from_arg_matches_mut(&mut matches));
    parsed.map_err(|error| {
        let code = match error.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => exit::SUCCESS,
            _ => exit::USAGE,
        };
        // Printing only fails when stdout or stderr is closed; the exit code still tells.
        let _ = error.print();
        code
    })
}

/// Runs the chosen command.
async fn run(cli: Cli) -> anyhow::Result<u8> {
    let command = match cli.command {
        Command::Server(args) => return commands::server::run(args).await,
        command => command,
    };
    let mut builder = Client::builder(&cli.global.url);
    if let Some(key) = cli.global.api_key {
        builder = builder.api_key(key);
    }
    if let Some(path) = cli.global.ca_file {
        builder = builder.ca_file(path);
    }
    let context = Context {
        client: builder.build()?,
        json: cli.global.json,
    };
    match command {
        Command::Acquire(args) => commands::lease::acquire(&context, args).await,
        Command::Renew(args) => commands::lease::renew(&context, args).await,
        Command::Release(args) => commands::lease::release(&context, args).await,
        Command::Status(args) => commands::inspect::status(&context, args).await,
        Command::Locks => commands::inspect::locks(&context).await,
        Command::History(args) => commands::inspect::history(&context, args).await,
        Command::Fence(args) => commands::admin::fence(&context, args).await,
        Command::Revoke(args) => commands::admin::revoke(&context, args).await,
        Command::Run(args) => commands::run::run(&context, args).await,
        Command::Jobs(args) => commands::jobs::jobs(&context, args).await,
        Command::Job(args) => commands::jobs::job(&context, args).await,
        Command::Parallel(args) => commands::parallel::parallel(&context, args).await,
        Command::Keys(command) => commands::keys::keys(&context, command).await,
        Command::Audit(args) => commands::keys::audit(&context, args).await,
        Command::Server(args) => commands::server::run(args).await,
    }
}

/// Prints a failed command's error: `baton: <message> (<code>)`, and for a busy lock, who
/// holds it.
fn report(error: &anyhow::Error) {
    match exit::client_error(error) {
        Some(client_error) => {
            eprintln!("baton: {error:#} ({})", client_error.code());
            if let Error::Busy { holders, .. } = client_error {
                let now = jiff::Timestamp::now();
                for holder in holders {
                    eprintln!(
                        "  held by {} (token {}, since {}, expires {})",
                        holder.owner,
                        holder.token,
                        output::relative(holder.since, now),
                        output::relative(holder.expires_at, now)
                    );
                }
            }
        }
        None => eprintln!("baton: {error:#}"),
    }
}
