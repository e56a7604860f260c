//! One module per group of subcommands. Each command returns the exit code it wants on success
//! (0, or a non-error code such as `fence`'s 1); failures travel as errors and are mapped to a
//! code in one place ([`crate::exit`]).

pub mod admin;
pub mod elect;
pub mod generate;
pub mod inspect;
pub mod jobs;
pub mod keeper;
pub mod keys;
pub mod lease;
pub mod logs;
pub mod parallel;
pub mod run;
pub mod run_set;
pub mod server;
pub mod stream;
pub mod watch;

use baton_client::Client;

/// What every client command needs.
#[derive(Debug)]
pub struct Context {
    /// The client, built from `--url` and `--api-key`.
    pub client: Client,
    /// `--json`: answers as JSON on stdout.
    pub json: bool,
}

impl Context {
    /// Reports a usage error found by a command itself (a ttl that cannot work, a bad
    /// `--slots`): `PREFIX: MESSAGE` on stderr, and the JSON error on stdout under `--json`.
    /// Returns [`crate::exit::USAGE`].
    pub fn usage_error(&self, prefix: &str, message: &str) -> u8 {
        eprintln!("{prefix}: {message}");
        if self.json {
            crate::output::print_json_error("usage", message, crate::exit::USAGE, None);
        }
        crate::exit::USAGE
    }
}
