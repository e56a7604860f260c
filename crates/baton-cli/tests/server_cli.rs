//! The real `baton` command line against the real `baton server`: what each command prints and
//! the exit codes of `docs/cli.md` (0, 1, 65, 66, 69, 75, 79), checked against the server's own
//! view over HTTP so that a command that exits 0 without doing its job fails.

mod harness;

use std::process::Stdio;
use std::time::Duration;

use harness::{BATON, Server, free_port, lock_path, u64_of};
use serde_json::Value;
use tokio::process::Command;

/// How long one command may take (the client retries an unreachable server for about 1.5 s).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// What a command did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|error| panic!("stdout is not JSON ({error}): {self:?}"))
    }
}

/// Runs `baton ARGS…` with `BATON_URL=url` and a clean environment for baton's own variables.
async fn baton(url: &str, args: &[&str]) -> Run {
    let mut command = Command::new(BATON);
    command
        .args(args)
        .env("BATON_URL", url)
        .env_remove("BATON_API_KEY")
        .env_remove("BATON_OWNER")
        .env_remove("BATON_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(COMMAND_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("baton {args:?} did not finish within {COMMAND_TIMEOUT:?}"))
        .unwrap_or_else(|error| panic!("cannot run baton {args:?}: {error}"));
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs a command and checks its exit code.
async fn expect(url: &str, args: &[&str], code: i32) -> Run {
    let run = baton(url, args).await;
    assert_eq!(run.code, code, "baton {args:?}: {run:?}");
    run
}

/// The server's view of a lock.
async fn lock(server: &Server, name: &str) -> Value {
    let (status, body) = server.get(&lock_path(name, "")).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn holder_owners(lock: &Value) -> Vec<String> {
    lock["holders"]
        .as_array()
        .map(|holders| {
            holders
                .iter()
                .filter_map(|holder| holder["owner"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn assert_lease_id(text: &str) {
    let hex = text.strip_prefix("lease_").unwrap_or("");
    assert!(
        hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "not a lease id: {text:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_drives_a_real_server() {
    let server = Server::start(&[]).await;
    let url = server.base.clone();
    let url = url.as_str();
    let name = "cli/deploy";

    // acquire prints the lease id, alone, on stdout; the lease outlives the command.
    let run = expect(
        url,
        &["acquire", name, "--owner", "alice", "--ttl", "60s"],
        0,
    )
    .await;
    let lease = run.stdout.trim().to_owned();
    assert_eq!(run.stdout.lines().count(), 1, "{run:?}");
    assert_lease_id(&lease);
    let info = lock(&server, name).await;
    assert_eq!(holder_owners(&info), ["alice"], "{info}");
    let first_token = u64_of(&info["holders"][0]["token"], "token");

    // A second acquire that does not wait is busy (75), names the holder, and does not queue.
    let run = expect(url, &["acquire", name, "--no-wait", "--owner", "bob"], 75).await;
    assert!(
        run.stderr.contains("alice"),
        "the busy message names no holder: {run:?}"
    );
    assert!(run.stdout.trim().is_empty(), "{run:?}");
    let info = lock(&server, name).await;
    assert_eq!(holder_owners(&info), ["alice"], "{info}");
    assert_eq!(
        info["waiters"],
        serde_json::json!([]),
        "--no-wait joined the queue: {info}"
    );

    // Read-only views.
    let run = expect(url, &["status", name], 0).await;
    assert!(run.stdout.contains("alice"), "{run:?}");
    assert!(run.stdout.contains(&first_token.to_string()), "{run:?}");
    let status = expect(url, &["status", name, "--json"], 0).await.json();
    assert_eq!(status["holders"][0]["owner"], "alice", "{status}");
    assert_eq!(status["holders"][0]["token"], first_token, "{status}");
    let run = expect(url, &["locks"], 0).await;
    // The documented table has holder counts, not owners: NAME CAPACITY HOLDERS WAITERS TOKEN.
    assert!(run.stdout.contains(name), "{run:?}");
    assert!(run.stdout.contains(&first_token.to_string()), "{run:?}");
    let locks = expect(url, &["--json", "locks"], 0).await.json();
    assert_eq!(locks["locks"][0]["name"], name, "{locks}");
    assert_eq!(locks["locks"][0]["holders"][0]["owner"], "alice", "{locks}");
    let run = expect(url, &["status"], 0).await;
    assert!(run.stdout.contains("ok"), "{run:?}");
    let health = expect(url, &["status", "--json"], 0).await.json();
    assert_eq!(health["health"]["status"], "ok", "{health}");

    // renew extends the lease it names.
    let before = lock(&server, name).await;
    let renewed = expect(url, &["renew", &lease, "--json"], 0).await.json();
    assert_eq!(renewed["id"], lease.as_str(), "{renewed}");
    assert_eq!(renewed["token"], first_token, "{renewed}");
    assert!(
        harness::millis(&renewed["expires_at"])
            >= harness::millis(&before["holders"][0]["expires_at"]),
        "{renewed} vs {before}"
    );
    expect(url, &["renew", &lease], 0).await;

    // fence with the current token is accepted.
    let run = expect(url, &["fence", name, &first_token.to_string()], 0).await;
    assert!(run.stdout.contains("accepted"), "{run:?}");

    // release ends the lease on the server; a retried release is fine; renewing it is lost.
    expect(url, &["release", &lease], 0).await;
    let info = lock(&server, name).await;
    assert!(
        holder_owners(&info).is_empty(),
        "release left a holder: {info}"
    );
    let released = expect(url, &["release", &lease, "--json"], 0).await.json();
    assert_eq!(released["released"], false, "{released}");
    assert_eq!(released["reason"], "already_released", "{released}");
    let run = expect(url, &["renew", &lease], 79).await;
    assert!(run.stderr.contains("lease_lost"), "{run:?}");

    // History shows the hold.
    let run = expect(url, &["history", name], 0).await;
    assert!(run.stdout.contains("alice"), "{run:?}");
    assert!(run.stdout.contains("released"), "{run:?}");
    let history = expect(url, &["history", name, "--json"], 0).await.json();
    assert_eq!(history["entries"][0]["owner"], "alice", "{history}");
    assert_eq!(history["entries"][0]["token"], first_token, "{history}");
    assert_eq!(history["entries"][0]["end"], "released", "{history}");

    // A newer holder makes the old token stale: fence refuses it with exit 1.
    let lease = expect(url, &["acquire", name, "--owner", "carol", "--json"], 0)
        .await
        .json();
    assert_eq!(lease["owner"], "carol", "{lease}");
    let second_token = u64_of(&lease["token"], "token");
    assert!(second_token > first_token);
    let run = expect(url, &["fence", name, &first_token.to_string()], 1).await;
    assert!(run.stdout.contains("refused"), "{run:?}");
    let fence = expect(url, &["fence", name, &first_token.to_string(), "--json"], 1)
        .await
        .json();
    assert_eq!(fence["accepted"], false, "{fence}");
    assert_eq!(fence["newest_token"], second_token, "{fence}");
    expect(url, &["fence", name, &second_token.to_string()], 0).await;
    let id = lease["id"].as_str().unwrap_or_default().to_owned();
    let released = expect(url, &["release", &id, "--json"], 0).await.json();
    assert_eq!(released["released"], true, "{released}");

    // --print token prints the token alone.
    let run = expect(
        url,
        &["acquire", "cli/other", "--owner", "dan", "--print", "token"],
        0,
    )
    .await;
    let token: u64 = run
        .stdout
        .trim()
        .parse()
        .unwrap_or_else(|error| panic!("not a token ({error}): {run:?}"));
    assert!(token > second_token, "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_exits_with_the_documented_codes_for_failures() {
    let server = Server::start(&[]).await;
    let url = server.base.clone();
    let url = url.as_str();
    let forged = format!("lease_{}", harness::random_hex32());

    // 66: unknown lease, lock.
    expect(url, &["renew", &forged], 66).await;
    expect(url, &["release", &forged], 66).await;
    expect(url, &["status", "cli/none"], 66).await;
    // 65: invalid input.
    expect(url, &["acquire", "a b", "--owner", "x"], 65).await;
    expect(
        url,
        &["acquire", "cli/x", "--owner", "x", "--ttl", "100ms"],
        65,
    )
    .await;
    expect(url, &["acquire", "cli/x", "--owner", "x"], 0).await;
    expect(url, &["fence", "cli/x", "0"], 65).await;
    // 64: usage.
    expect(url, &["acquire"], 64).await;
    expect(url, &["acquire", "cli/x", "--ttl", "soon"], 64).await;
    // Nothing above changed the lock but the one good acquire.
    let (status, locks) = server.get("/v1/locks").await;
    assert_eq!(status, 200, "{locks}");
    assert_eq!(locks["locks"].as_array().map(Vec::len), Some(1), "{locks}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_exits_69() {
    // A port nobody listens on.
    let url = format!("http://127.0.0.1:{}", free_port());
    for args in [
        vec!["locks"],
        vec!["status"],
        vec!["status", "cli/x"],
        vec!["acquire", "cli/x", "--no-wait", "--owner", "x"],
        vec!["renew", "lease_00000000000000000000000000000000"],
    ] {
        let run = expect(&url, &args, 69).await;
        assert!(run.stdout.trim().is_empty(), "{run:?}");
        assert!(run.stderr.contains("baton:"), "{run:?}");
    }
}
