//! Runs the Python client's tests (`clients/python/tests`, pytest) against this crate's `baton`
//! binary, so that `cargo test` covers the Python client too.
//!
//! Without `python3` or pytest the test prints `SKIPPED python_client: <why>` and passes, unless
//! `BATON_REQUIRE_PYTHON=1` (as `.ci/run` sets), which makes a skip a failure.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The longest the whole pytest run may take (about 30 s unloaded; the machine is shared).
const PYTEST_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Why the Python tests cannot run here, if they cannot.
fn missing_python() -> Option<String> {
    match Command::new("python3")
        .args(["-c", "import pytest"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Err(error) => Some(format!("python3 cannot be run: {error}")),
        Ok(status) if !status.success() => {
            Some("pytest is not installed (python3 -m pip install pytest)".to_owned())
        }
        Ok(_) => None,
    }
}

#[test]
fn python_client_tests_pass_against_the_real_server() {
    if let Some(why) = missing_python() {
        if std::env::var("BATON_REQUIRE_PYTHON").as_deref() == Ok("1") {
            panic!("python_client: {why}, and BATON_REQUIRE_PYTHON=1");
        }
        // Straight to the process's stderr, past the test harness's capture, so that the skip
        // shows in a passing run.
        let _ = writeln!(std::io::stderr(), "SKIPPED python_client: {why}");
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut child = Command::new("python3")
        .args([
            "-m",
            "pytest",
            "clients/python/tests",
            "-q",
            "-p",
            "no:cacheprovider",
        ])
        .current_dir(&root)
        .env("BATON_BIN", env!("CARGO_BIN_EXE_baton"))
        .env_remove("BATON_URL")
        .env_remove("BATON_API_KEY")
        .env_remove("BATON_CA_FILE")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start pytest: {error}"));
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > PYTEST_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("pytest ran longer than {PYTEST_TIMEOUT:?}; killed");
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(error) => panic!("cannot wait for pytest: {error}"),
        }
    };
    assert!(
        status.success(),
        "the Python client's tests failed ({status}); see pytest's output above"
    );
}
