//! The real `baton` binary, for what needs no server: help, usage errors, input rejected before
//! sending, and an unreachable server. End-to-end tests against a server live elsewhere.

use std::process::{Command, Output};

/// A port on which nothing listens (port 1 needs root to bind, and nothing here does).
const UNREACHABLE_URL: &str = "http://127.0.0.1:1";

/// Runs `baton` with `args`, with none of the user's baton variables.
fn baton(args: &[&str]) -> Output {
    baton_with_env(args, &[])
}

fn baton_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_baton"));
    for variable in [
        "BATON_URL",
        "BATON_API_KEY",
        "BATON_OWNER",
        "BATON_LISTEN",
        "BATON_DATA_DIR",
        "BATON_LOG",
    ] {
        command.env_remove(variable);
    }
    command.args(args).envs(env.iter().copied());
    match command.output() {
        Ok(output) => output,
        Err(error) => panic!("cannot run baton: {error}"),
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_exit(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(output),
        stderr(output)
    );
}

#[test]
fn help_lists_the_commands_and_exit_codes() {
    let output = baton(&["--help"]);
    assert_exit(&output, 0);
    let text = stdout(&output);
    for command in [
        "server", "acquire", "renew", "release", "status", "locks", "history", "fence", "revoke",
    ] {
        assert!(text.contains(command), "--help lacks {command}: {text}");
    }
    assert!(text.contains("Exit codes:"), "{text}");
    assert!(text.contains(" 79  lease lost"), "{text}");
}

#[test]
fn subcommand_help_and_version_exit_zero() {
    let output = baton(&["acquire", "--help"]);
    assert_exit(&output, 0);
    assert!(stdout(&output).contains("--no-wait"));
    let output = baton(&["--version"]);
    assert_exit(&output, 0);
    assert!(stdout(&output).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn version_names_the_commit_and_build_date() {
    let output = baton(&["--version"]);
    assert_exit(&output, 0);
    let text = stdout(&output);
    let line = text.trim();
    assert!(line.starts_with("baton "), "{line}");
    assert!(line.contains(" (commit "), "{line}");
    let commit = line
        .split(" (commit ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_default();
    assert!(
        commit == "unknown" || (commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{line}"
    );
    let date = line
        .split(", built ")
        .nth(1)
        .map(|rest| rest.trim_end_matches(')'))
        .unwrap_or_default();
    assert_eq!(date.len(), 10, "{line}");
    assert_eq!(date.as_bytes()[4], b'-', "{line}");
}

#[test]
fn the_api_key_never_shows_in_help() {
    let output = baton_with_env(&["--help"], &[("BATON_API_KEY", "s3cret-key")]);
    assert_exit(&output, 0);
    assert!(!stdout(&output).contains("s3cret-key"));
}

#[test]
fn usage_errors_exit_64() {
    let cases: &[&[&str]] = &[
        &[],
        &["no-such-command"],
        &["acquire"],
        &["acquire", "x", "--no-such-flag"],
        &["acquire", "x", "--wait", "5"],
        &["acquire", "x", "--wait", "1s", "--no-wait"],
        &["acquire", "x", "--capacity", "0"],
        &["acquire", "x", "--print", "everything"],
        &["fence", "x", "not-a-number"],
        &["server", "--listen", "nowhere"],
        &["server", "--store", "postgres"],
        &["server", "--store", "nowhere"],
        &["server", "--default-ttl", "soon"],
    ];
    for args in cases {
        let output = baton(args);
        assert_exit(&output, 64);
        assert!(!stderr(&output).is_empty(), "{args:?} printed no reason");
    }
}

#[test]
fn a_bad_url_is_a_usage_error() {
    let output = baton(&["--url", "ftp://example", "locks"]);
    assert_exit(&output, 64);
    assert!(
        stderr(&output).starts_with("baton: "),
        "{}",
        stderr(&output)
    );
    assert!(stderr(&output).contains("(config)"), "{}", stderr(&output));
}

#[test]
fn an_invalid_lock_name_is_rejected_before_sending() {
    // The server is unreachable: 65 rather than 69 proves nothing was sent.
    let output = baton_with_env(&["acquire", "bad name"], &[("BATON_URL", UNREACHABLE_URL)]);
    assert_exit(&output, 65);
    let text = stderr(&output);
    assert!(text.starts_with("baton: lock name"), "{text}");
    assert!(text.trim_end().ends_with("(invalid_input)"), "{text}");
}

#[test]
fn an_unreachable_server_exits_69_with_a_clear_message() {
    for args in [
        &["locks"][..],
        &["status"],
        &["acquire", "team-a/deploy", "--no-wait"],
        &["release", "some-lease-id"],
    ] {
        let output = baton_with_env(args, &[("BATON_URL", UNREACHABLE_URL)]);
        assert_exit(&output, 69);
        let text = stderr(&output);
        assert!(
            text.starts_with("baton: cannot reach the baton server"),
            "{args:?}: {text}"
        );
        assert!(text.contains("127.0.0.1:1"), "{args:?}: {text}");
        assert!(
            text.trim_end().ends_with("(unavailable)"),
            "{args:?}: {text}"
        );
        assert!(stdout(&output).is_empty(), "{args:?} printed on stdout");
    }
}

#[test]
fn the_url_flag_overrides_the_environment() {
    let output = baton_with_env(
        &["--url", UNREACHABLE_URL, "locks"],
        &[("BATON_URL", "ftp://would-be-a-usage-error")],
    );
    assert_exit(&output, 69);
}

/// `baton completions bash | head -1` closes the pipe while baton still writes: that is no
/// error to report, and never a panic (clap_complete's own writer panics on a write error).
#[test]
fn completions_into_a_closed_pipe_exit_zero_without_a_panic() {
    for shell in ["bash", "zsh", "fish", "powershell"] {
        let (reader, writer) = match std::io::pipe() {
            Ok(pipe) => pipe,
            Err(error) => panic!("cannot make a pipe: {error}"),
        };
        // Closed before baton writes a byte: its first write fails with EPIPE.
        drop(reader);
        let mut command = Command::new(env!("CARGO_BIN_EXE_baton"));
        command
            .args(["completions", shell])
            .stdout(writer)
            .stderr(std::process::Stdio::piped());
        let output = match command.output() {
            Ok(output) => output,
            Err(error) => panic!("cannot run baton: {error}"),
        };
        let stderr = stderr(&output);
        assert_eq!(output.status.code(), Some(0), "{shell}: stderr: {stderr}");
        assert!(!stderr.contains("panicked"), "{shell}: {stderr}");
    }
}
