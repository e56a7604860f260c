//! `baton completions SHELL` and `baton man DIR`: what packages and installs ship beside the
//! binary, generated from the same clap definition that parses the command line, so they
//! never drift from it.

use anyhow::Context as _;

use crate::args::{CompletionsArgs, ManArgs};
use crate::exit;

/// Prints the completion script for one shell on stdout. It is generated into memory first:
/// clap_complete panics when its writer fails, and stdout can (`| head`).
pub fn completions(args: &CompletionsArgs) -> anyhow::Result<u8> {
    let mut command = crate::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "baton", &mut script);
    crate::output::print_bytes(&script)?;
    Ok(exit::SUCCESS)
}

/// Writes `baton.1` and `baton-SUBCOMMAND[-SUBCOMMAND].1` for every visible subcommand into
/// the folder, creating it if needed.
pub fn man(args: &ManArgs) -> anyhow::Result<u8> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    clap_mangen::generate_to(crate::command(), &args.dir)
        .with_context(|| format!("cannot write man pages into {}", args.dir.display()))?;
    Ok(exit::SUCCESS)
}
