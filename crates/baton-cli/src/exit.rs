//! The exit-code contract of `baton`: every code it exits with, why, and the mapping from errors
//! to codes. Scripts branch on these, so they never change meaning; `docs/cli.md` lists the same
//! table (a test keeps the two in step).
//!
//! The numbers follow BSD `sysexits.h` where one fits, so that wrappers that already understand
//! those (cron mailers, supervisors) read them right.

use baton_client::Error;

/// The command did what was asked.
pub const SUCCESS: u8 = 0;
/// `baton fence` refused the token: a newer one was seen for the lock. The answer is "no", not a
/// failure of the command.
pub const REFUSED: u8 = 1;
/// The command line is wrong: unknown flag, missing argument, bad duration, bad `--url`
/// (`EX_USAGE`).
pub const USAGE: u8 = 64;
/// The server (or the client, before sending) rejected the request as invalid: bad lock name,
/// ttl, capacity, value, a capacity or mode conflict (`EX_DATAERR`).
pub const DATA_ERROR: u8 = 65;
/// The lease, ticket, lock or holder does not exist (`EX_NOINPUT`). For `renew`, it also means
/// the lease is not held (any more).
pub const NOT_FOUND: u8 = 66;
/// No baton server could be reached, or it answered 503 (`EX_UNAVAILABLE`). Safe to retry later.
pub const UNAVAILABLE: u8 = 69;
/// The server failed (5xx), `baton server` stopped with an error, or baton hit a defect
/// (`EX_SOFTWARE`).
pub const SOFTWARE: u8 = 70;
/// The lock is busy (`--no-wait`), or the `--wait` time ran out (`EX_TEMPFAIL`). Retry later.
pub const TEMPORARY_FAILURE: u8 = 75;
/// The answer could not be understood: `--url` probably points at something that is not baton
/// (`EX_PROTOCOL`). Also a TLS failure: the server's certificate is not trusted (see
/// `--ca-file`), or an `https://` URL names a server that does not speak TLS.
pub const PROTOCOL: u8 = 76;
/// The API key is missing, wrong, or does not grant this (HTTP 401 or 403) (`EX_NOPERM`).
pub const NO_PERMISSION: u8 = 77;
/// The lease is lost: `renew` or `release` found it expired, released, or revoked. Whatever the
/// lease protected may have run unprotected; stop and check. Outside `sysexits.h` on purpose.
pub const LEASE_LOST: u8 = 79;
/// `baton run`: the command was stopped because a `--replace` run took over the lock.
pub const REPLACED: u8 = 80;
/// `baton parallel`: one or more jobs did not succeed (failed, timed out, lost, cancelled, or
/// not started after `--halt-on-failure`); the summary says which.
pub const JOBS_FAILED: u8 = 81;
/// The API key is at one of its quotas (HTTP 429 `quota_exceeded`): it already has as many
/// leases, queued tickets, locks or unfinished jobs as it may. Retrying soon does not help; the
/// key must release, cancel or finish something, or be given a larger quota. Outside
/// `sysexits.h`.
pub const QUOTA_EXCEEDED: u8 = 82;
/// `baton run`: the job was cancelled (`baton cancel`): the command was stopped, or the job left
/// the queue before it ran. Outside `sysexits.h`.
pub const CANCELLED: u8 = 83;
/// `baton run`: the command ran longer than `--timeout` and was stopped (as `timeout(1)`).
pub const TIMED_OUT: u8 = 124;
/// Interrupted (Ctrl-C, SIGINT) before finishing: the shell convention 128 + 2.
pub const INTERRUPTED: u8 = 130;

/// Every code with a one-line meaning, in order: printed by `baton --help`.
pub const TABLE: &[(u8, &str)] = &[
    (SUCCESS, "success"),
    (REFUSED, "fence: the token is stale (a newer one was seen)"),
    (USAGE, "usage error (bad flag, argument, duration or --url)"),
    (
        DATA_ERROR,
        "request rejected as invalid (bad name, ttl, capacity, …)",
    ),
    (NOT_FOUND, "no such lease, ticket, lock or holder"),
    (
        UNAVAILABLE,
        "server unavailable (unreachable, or 503); retry later",
    ),
    (SOFTWARE, "server internal error, or baton server failed"),
    (
        TEMPORARY_FAILURE,
        "lock busy (--no-wait) or timed out waiting (--wait)",
    ),
    (
        PROTOCOL,
        "unintelligible answer or TLS failure: check --url and --ca-file",
    ),
    (
        NO_PERMISSION,
        "unauthorized or forbidden (401/403): check the API key",
    ),
    (LEASE_LOST, "lease lost: expired, released or revoked; stop"),
    (REPLACED, "run: stopped because a --replace run took over"),
    (JOBS_FAILED, "parallel: one or more jobs did not succeed"),
    (
        QUOTA_EXCEEDED,
        "the API key is at its quota of leases, waiters, locks or jobs (429)",
    ),
    (CANCELLED, "run: the job was cancelled (baton cancel)"),
    (TIMED_OUT, "run: the command ran longer than --timeout"),
    (INTERRUPTED, "interrupted"),
];

/// The exit-code table as help text.
pub fn help_table() -> String {
    let mut text = String::from("Exit codes:\n");
    for (code, meaning) in TABLE {
        text.push_str(&format!("  {code:>3}  {meaning}\n"));
    }
    text
}

/// The code for a failed command: by the client error in its chain, else [`SOFTWARE`].
pub fn for_error(error: &anyhow::Error) -> u8 {
    match client_error(error) {
        Some(error) => for_client_error(error),
        None => SOFTWARE,
    }
}

/// The client error in `error`'s chain, if any.
pub fn client_error(error: &anyhow::Error) -> Option<&Error> {
    error
        .chain()
        .find_map(|cause| cause.downcast_ref::<Error>())
}

/// The code for a client error.
pub fn for_client_error(error: &Error) -> u8 {
    match error {
        Error::Unavailable { .. } => UNAVAILABLE,
        Error::Busy { .. } | Error::TimedOut { .. } => TEMPORARY_FAILURE,
        Error::LeaseLost { .. } => LEASE_LOST,
        Error::QuotaExceeded { .. } => QUOTA_EXCEEDED,
        Error::NotFound { .. } => NOT_FOUND,
        Error::Unauthorized { .. } => NO_PERMISSION,
        Error::Rejected { .. } | Error::InvalidInput { .. } => DATA_ERROR,
        Error::Config { .. } => USAGE,
        Error::Protocol { .. } | Error::Tls { .. } => PROTOCOL,
        Error::Server { .. } => SOFTWARE,
        // A variant added to the client later: treat it as a defect until it is mapped here.
        _ => SOFTWARE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique() {
        let mut codes: Vec<u8> = TABLE.iter().map(|(code, _)| *code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), TABLE.len());
    }

    #[test]
    fn the_docs_list_every_code() {
        let docs = include_str!("../../../docs/cli.md");
        for (code, _) in TABLE {
            assert!(
                docs.contains(&format!("| {code} |")),
                "docs/cli.md has no row for exit code {code}"
            );
        }
    }

    #[test]
    fn client_errors_map_by_what_went_wrong() {
        let cases = [
            (
                Error::Unavailable {
                    code: None,
                    message: String::new(),
                },
                UNAVAILABLE,
            ),
            (
                Error::LeaseLost {
                    revoked: true,
                    message: String::new(),
                },
                LEASE_LOST,
            ),
            (
                Error::TimedOut {
                    lock: "x".into(),
                    waited: std::time::Duration::ZERO,
                },
                TEMPORARY_FAILURE,
            ),
            (
                Error::InvalidInput {
                    message: String::new(),
                },
                DATA_ERROR,
            ),
            (
                Error::QuotaExceeded {
                    quota: "waiters".into(),
                    limit: 5,
                    message: String::new(),
                },
                QUOTA_EXCEEDED,
            ),
        ];
        for (error, code) in cases {
            let wrapped = anyhow::Error::new(error).context("while doing something");
            assert_eq!(for_error(&wrapped), code);
        }
        assert_eq!(for_error(&anyhow::anyhow!("disk on fire")), SOFTWARE);
    }
}
