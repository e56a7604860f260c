//! `baton keys` and `baton audit` against the real `baton server`: bootstrapping the first
//! administrator offline through `--keys-file`, creating a scoped key, exit code 77 for a
//! missing, wrong, out-of-scope or revoked key, and the audit log of it all.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod harness;

use std::process::Stdio;
use std::time::Duration;

use harness::{BATON, Server};
use serde_json::Value;
use tokio::process::Command;

const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

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

    fn expect(self, code: i32, what: &str) -> Run {
        assert_eq!(self.code, code, "{what}: {self:?}");
        self
    }
}

/// Runs `baton ARGS…` against `url` with `key` as `BATON_API_KEY`.
async fn baton(url: &str, key: Option<&str>, args: &[&str]) -> Run {
    let mut command = Command::new(BATON);
    command
        .args(args)
        .env("BATON_URL", url)
        .env_remove("BATON_API_KEY")
        .env_remove("BATON_OWNER")
        .env_remove("BATON_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(key) = key {
        command.env("BATON_API_KEY", key);
    }
    let output = tokio::time::timeout(COMMAND_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("baton {args:?} did not finish"))
        .unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[tokio::test]
async fn keys_bootstrap_scope_revoke_and_audit_through_the_cli() {
    // The first administrator, made without a server.
    let offline = baton(
        "http://127.0.0.1:9",
        None,
        &[
            "keys",
            "create",
            "--offline",
            "--name",
            "ops",
            "--grant",
            "admin:",
            "--json",
        ],
    )
    .await
    .expect(0, "keys create --offline")
    .json();
    let admin = offline["secret"].as_str().unwrap().to_owned();
    let human = baton(
        "http://127.0.0.1:9",
        None,
        &[
            "keys",
            "create",
            "--offline",
            "--name",
            "n",
            "--grant",
            "read:",
        ],
    )
    .await
    .expect(0, "keys create --offline, human output");
    assert!(human.stdout.trim().starts_with("baton_"), "{human:?}");
    assert!(
        human.stderr.contains("[[key]]") && human.stderr.contains("secret_sha256"),
        "{human:?}"
    );
    let folder = harness::workdir("baton-keys-");
    let keys_file = folder.path().join("keys.toml");
    std::fs::write(&keys_file, offline["keys_file_entry"].as_str().unwrap()).unwrap();
    assert!(
        !std::fs::read_to_string(&keys_file)
            .unwrap()
            .contains(&admin),
        "the keys file holds no secret"
    );
    let server = Server::start(&["--keys-file", keys_file.to_str().unwrap()]).await;
    let url = server.base.as_str();

    baton(url, None, &["locks"]).await.expect(77, "no key");
    let wrong = format!("baton_{}", "1".repeat(64));
    baton(url, Some(&wrong), &["locks"])
        .await
        .expect(77, "a wrong key");
    baton(url, Some(&admin), &["locks"])
        .await
        .expect(0, "the admin key");

    let created = baton(
        url,
        Some(&admin),
        &[
            "keys",
            "create",
            "--name",
            "team a",
            "--grant",
            "acquire:team-a/",
            "--rate",
            "100",
            "--json",
        ],
    )
    .await
    .expect(0, "keys create")
    .json();
    let team_a = created["secret"].as_str().unwrap().to_owned();
    let team_a_id = created["key"]["id"].as_str().unwrap().to_owned();
    let plain = baton(
        url,
        Some(&admin),
        &["keys", "create", "--name", "ci", "--grant", "read:"],
    )
    .await
    .expect(0, "keys create, human output");
    assert!(plain.stdout.trim().starts_with("baton_"), "{plain:?}");

    baton(
        url,
        Some(&team_a),
        &["acquire", "team-b/deploy", "--no-wait"],
    )
    .await
    .expect(77, "out of scope");
    let lock = server
        .http()
        .get(format!("{url}/v1/locks/team-b%2Fdeploy"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(lock.status().as_u16(), 404, "nothing was created");
    baton(
        url,
        Some(&team_a),
        &["acquire", "team-a/deploy", "--no-wait"],
    )
    .await
    .expect(0, "in scope");
    baton(url, Some(&team_a), &["keys", "list"])
        .await
        .expect(77, "keys need admin:");

    let listed = baton(url, Some(&admin), &["keys", "list", "--json"])
        .await
        .expect(0, "keys list")
        .json();
    assert_eq!(listed["keys"].as_array().unwrap().len(), 3, "{listed}");
    let text = listed.to_string();
    assert!(
        !text.contains(&admin) && !text.contains(&team_a),
        "no secrets in listings"
    );
    let human = baton(url, Some(&admin), &["keys", "list"])
        .await
        .expect(0, "keys list");
    assert!(
        human.stdout.contains(&team_a_id) && human.stdout.contains("acquire:team-a/"),
        "{human:?}"
    );

    baton(url, Some(&admin), &["keys", "revoke", &team_a_id])
        .await
        .expect(0, "keys revoke");
    baton(url, Some(&team_a), &["locks"])
        .await
        .expect(77, "a revoked key");

    let audit = baton(url, Some(&admin), &["audit", "--json"])
        .await
        .expect(0, "audit")
        .json();
    let newest = &audit["entries"][0];
    assert_eq!(newest["action"], "key.revoke", "{audit}");
    assert_eq!(newest["target"], team_a_id.as_str());
    let human = baton(url, Some(&admin), &["audit"])
        .await
        .expect(0, "audit");
    assert!(human.stdout.contains("key.create"), "{human:?}");

    baton(
        url,
        Some(&admin),
        &["keys", "create", "--name", "x", "--grant", "write:"],
    )
    .await
    .expect(65, "a bad grant, refused by the server");
    baton(
        url,
        None,
        &[
            "keys",
            "create",
            "--offline",
            "--name",
            "x",
            "--grant",
            "write:",
        ],
    )
    .await
    .expect(64, "a bad grant, offline");
}
