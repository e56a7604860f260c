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
mod server_config;
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
    let json = cli.global.json;
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
            let code = exit::for_error(&error);
            if json {
                report_json(&error, code);
            }
            code
        }
    };
    ExitCode::from(code)
}

/// Parses the command line, with `baton server`'s configuration file applied
/// ([`server_config`]); on failure prints the message and returns the exit code: 0 for
/// `--help` and `--version`, [`exit::USAGE`] for everything else.
fn parse() -> Result<Cli, u8> {
    let command = command();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let matches = command
        .clone()
        .try_get_matches_from(&argv)
        .map_err(clap_failure)?;
    let resolved =
        server_config::resolve(&command, matches, &argv).map_err(|error| match error {
            server_config::ResolveError::Clap(error) => clap_failure(error),
            server_config::ResolveError::File(message) => {
                eprintln!("baton server: {message}");
                if json_asked() {
                    output::print_json_error("usage", &message, exit::USAGE, None);
                }
                exit::USAGE
            }
        })?;
    let effective = server_config::print_asked(&resolved.matches)
        .then(|| server_config::render(&command, &resolved));
    let mut matches = resolved.matches;
    let mut cli = Cli::from_arg_matches_mut(&mut matches).map_err(clap_failure)?;
    if let Command::Server(args) = &mut cli.command {
        args.effective_config = effective;
    }
    Ok(cli)
}

/// Prints clap's message for a failed parse and returns the exit code: 0 for `--help` and
/// `--version`, [`exit::USAGE`] for everything else.
fn clap_failure(error: clap::Error) -> u8 {
    let code = match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => exit::SUCCESS,
        _ => exit::USAGE,
    };
    // Printing only fails when stdout or stderr is closed; the exit code still tells.
    let _ = error.print();
    if code == exit::USAGE && json_asked() {
        let text = error.to_string();
        let first = text.lines().next().unwrap_or("usage error");
        let message = first.strip_prefix("error: ").unwrap_or(first);
        output::print_json_error("usage", message, code, None);
    }
    code
}

/// The whole command line's definition, as parsed and as completions and man pages show it.
pub fn command() -> clap::Command {
    Cli::command().after_long_help(exit::help_table())
}

/// Whether `--json` is on the command line (before `--`): for usage errors, found before the
/// parser could tell.
fn json_asked() -> bool {
    std::env::args_os()
        .skip(1)
        .take_while(|arg| arg != "--")
        .any(|arg| arg == "--json")
}

/// Prints a failed command's error as JSON on stdout (`--json`).
fn report_json(error: &anyhow::Error, code: u8) {
    match exit::client_error(error) {
        Some(client_error) => {
            let holders = match client_error {
                Error::Busy { holders, .. } => Some(holders.as_slice()),
                _ => None,
            };
            let message = format!("{error:#}");
            output::print_json_error(&client_error.code(), &message, code, holders);
        }
        None => output::print_json_error("internal", &format!("{error:#}"), code, None),
    }
}

/// Runs the chosen command.
async fn run(cli: Cli) -> anyhow::Result<u8> {
    let command = match cli.command {
        Command::Server(args) => return commands::server::run(args).await,
        Command::Completions(args) => return commands::generate::completions(&args),
        Command::Man(args) => return commands::generate::man(&args),
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
        Command::Logs(args) => commands::logs::logs(&context, args).await,
        Command::Cancel(args) => commands::jobs::cancel(&context, args).await,
        Command::Parallel(args) => commands::parallel::parallel(&context, args).await,
        Command::Keys(command) => commands::keys::keys(&context, command).await,
        Command::Audit(args) => commands::keys::audit(&context, args).await,
        Command::Watch(args) => commands::watch::watch(&context, args).await,
        Command::Elect(args) => commands::elect::elect(&context, args).await,
        Command::Leader(args) => commands::elect::leader(&context, args).await,
        Command::Server(args) => commands::server::run(args).await,
        Command::Completions(args) => commands::generate::completions(&args),
        Command::Man(args) => commands::generate::man(&args),
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
