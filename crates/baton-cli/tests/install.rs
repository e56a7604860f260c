//! What an install ships beside the binary and how an operator configures the server, through
//! the real `baton` binary: shell completions, man pages, `baton server --config` and
//! `--print-config`. None of these start a server.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly on what it did not expect

use std::path::Path;
use std::process::{Command, Output};

/// Runs `baton` with `args`, with none of the user's `BATON_*` variables but those in `env`.
fn baton_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_baton"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("BATON_") {
            command.env_remove(name);
        }
    }
    command.args(args).envs(env.iter().copied());
    match command.output() {
        Ok(output) => output,
        Err(error) => panic!("cannot run baton: {error}"),
    }
}

fn baton(args: &[&str]) -> Output {
    baton_with_env(args, &[])
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[track_caller]
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
fn completions_for_every_shell_name_the_subcommands() {
    for shell in ["bash", "zsh", "fish", "powershell"] {
        let output = baton(&["completions", shell]);
        assert_exit(&output, 0);
        let script = stdout(&output);
        assert!(!script.trim().is_empty(), "{shell}: empty script");
        for subcommand in ["run", "acquire", "server"] {
            assert!(
                script.contains(subcommand),
                "{shell}: no {subcommand} in\n{script}"
            );
        }
    }
}

#[test]
fn completions_for_an_unknown_shell_is_a_usage_error() {
    assert_exit(&baton(&["completions", "tcsh"]), 64);
}

/// The first roff request of a page that is not a string definition clap_mangen puts first.
fn title_line(page: &str) -> Option<&str> {
    page.lines()
        .find(|line| !line.starts_with(".ie") && !line.starts_with(".el"))
}

#[test]
fn man_writes_one_page_per_subcommand_each_a_roff_page() {
    let folder = tempfile::tempdir().unwrap();
    let dir = folder.path().join("man1");
    let output = baton(&["man", dir.to_str().unwrap()]);
    assert_exit(&output, 0);
    for name in [
        "baton.1",
        "baton-run.1",
        "baton-acquire.1",
        "baton-server.1",
        "baton-keys-create.1",
        "baton-completions.1",
    ] {
        let page = std::fs::read_to_string(dir.join(name))
            .unwrap_or_else(|error| panic!("{name}: {error}"));
        let title = title_line(&page).unwrap_or_default();
        assert!(title.starts_with(".TH "), "{name} starts with {title:?}");
    }
    // The hidden `man` itself gets no page.
    assert!(!Path::new(&dir.join("baton-man.1")).exists());
}

/// Writes a config file into a fresh folder; returns the folder (kept alive) and the path.
fn config_file(text: &str) -> (tempfile::TempDir, String) {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("baton.toml");
    std::fs::write(&path, text).unwrap();
    let path = path.to_str().unwrap().to_owned();
    (folder, path)
}

/// The line of `key` in `--print-config`'s output.
fn config_line<'a>(printed: &'a str, key: &str) -> &'a str {
    printed
        .lines()
        .find(|line| line.starts_with(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no {key} in\n{printed}"))
}

#[test]
fn config_precedence_is_flag_then_env_then_file_then_default() {
    let (_folder, path) = config_file(
        "default_ttl = \"43s\"\nlock_delay = \"3s\"\nticket_lapse = \"13s\"\n\
         allow_unauthenticated = true\nmax_connections = 500\n",
    );
    let output = baton_with_env(
        &["server", "--default-ttl", "41s", "--print-config"],
        &[
            ("BATON_CONFIG", path.as_str()),
            ("BATON_DEFAULT_TTL", "42s"),
            ("BATON_LOCK_DELAY", "2s"),
        ],
    );
    assert_exit(&output, 0);
    let printed = stdout(&output);
    assert!(config_line(&printed, "default_ttl").starts_with("default_ttl = \"41s\""));
    assert!(config_line(&printed, "lock_delay").starts_with("lock_delay = \"2s\""));
    assert!(config_line(&printed, "ticket_lapse").starts_with("ticket_lapse = \"13s\""));
    assert!(config_line(&printed, "max_connections").starts_with("max_connections = 500"));
    assert!(
        config_line(&printed, "allow_unauthenticated").starts_with("allow_unauthenticated = true")
    );
    assert!(config_line(&printed, "history_retention").starts_with("history_retention = \"7d\""));
    assert!(config_line(&printed, "listen").starts_with("listen = \"127.0.0.1:7878\""));
}

#[test]
fn print_config_output_is_a_config_file_that_reads_back() {
    let output = baton(&["server", "--print-config", "--default-ttl", "9s"]);
    assert_exit(&output, 0);
    let (_folder, path) = config_file(&stdout(&output));
    let again = baton(&["server", "--config", &path, "--print-config"]);
    assert_exit(&again, 0);
    assert!(config_line(&stdout(&again), "default_ttl").starts_with("default_ttl = \"9s\""));
}

#[test]
fn print_config_never_shows_the_database_url() {
    let output = baton_with_env(
        &["server", "--print-config"],
        &[("BATON_DATABASE_URL", "postgres://baton:hunter2@db/baton")],
    );
    assert_exit(&output, 0);
    let printed = stdout(&output);
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(printed.contains("# database is set"), "{printed}");
}

#[test]
fn config_unknown_key_is_a_usage_error_naming_it() {
    let (_folder, path) = config_file("default_ttl = \"5s\"\nlisten_port = 80\n");
    let output = baton(&["server", "--config", &path, "--print-config"]);
    assert_exit(&output, 64);
    assert!(
        stderr(&output).contains("`listen_port`"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn config_bad_value_names_the_key() {
    for (text, key) in [
        ("default_ttl = \"soon\"\n", "default_ttl"),
        ("max_header_bytes = 5\n", "max_header_bytes"),
        ("store = \"mysql\"\n", "store"),
        ("allow_unauthenticated = \"yes\"\n", "allow_unauthenticated"),
    ] {
        let (_folder, path) = config_file(text);
        let output = baton(&["server", "--config", &path]);
        assert_exit(&output, 64);
        assert!(
            stderr(&output).contains(&format!("`{key}`")),
            "{text}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn config_file_that_cannot_be_read_is_a_usage_error() {
    let output = baton(&["server", "--config", "/nonexistent/baton.toml"]);
    assert_exit(&output, 64);
    assert!(stderr(&output).contains("/nonexistent/baton.toml"));
}
