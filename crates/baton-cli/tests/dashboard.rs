//! The dashboard at `/` in a real headless Chromium (issue 12): a real `baton server` (the
//! harness), state made with the real `baton` CLI and the HTTP API, and
//! `tests/dashboard/dashboard.mjs` driving Debian's `chromium` through playwright-core,
//! asserting on the page as a user sees it (docs/dashboard.md).
//!
//! Needs `node`, a Chromium (`/usr/bin/chromium`, or `BATON_CHROMIUM`) and the script's
//! `node_modules` (`npm ci` in `tests/dashboard`; `.ci/run` does all three). Without one of them
//! each test prints `SKIPPED dashboard: <why>` and passes, unless `BATON_REQUIRE_BROWSER=1`
//! (as `.ci/run` sets), which makes a skip a failure.
//!
//! `BATON_DASHBOARD_SCREENSHOTS=DIR` also saves screenshots of the main pages into DIR (the
//! ones in docs/screenshots were taken so: `BATON_DASHBOARD_SCREENSHOTS=$PWD/docs/screenshots
//! cargo test -p baton-cli --test dashboard sqlite`).

mod harness;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use baton_store_postgres::testing;
use harness::{Server, assert_code, lock_path};
use serde_json::{Value, json};

/// The whole browser run at most (about 15 s unloaded; the machine is shared). A hang fails.
const BROWSER_RUN_TIMEOUT: Duration = Duration::from_secs(240);

/// How long one `baton run` of the fixtures may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The scenarios of `dashboard.mjs` run against the SQLite server (with API keys), in order.
const SQLITE_SCENARIOS: &[&str] = &[
    "the_page_is_open_and_strict",
    "the_key_is_asked_for_once_and_kept_for_the_tab",
    "an_acquire_shows_a_holder_at_once",
    "a_queued_waiter_shows_its_position",
    "the_timeline_draws_two_skip_runs_apart",
    "a_finished_jobs_page_shows_its_output",
    "a_jobs_page_appends_output_events_for_its_job",
    "a_running_jobs_output_appears_while_it_runs",
    "a_read_only_key_sees_no_other_teams_lock",
    "the_server_page_shows_the_store",
    "screenshots",
];

/// The scenarios run against a PostgreSQL-backed server (without keys): the live ones.
const POSTGRES_SCENARIOS: &[&str] = &[
    "an_acquire_shows_a_holder_at_once",
    "a_queued_waiter_shows_its_position",
    "the_server_page_shows_the_store",
];

fn script_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/dashboard")
}

fn chromium() -> PathBuf {
    std::env::var_os("BATON_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// Why the browser tests cannot run here, if they cannot.
fn missing_browser() -> Option<String> {
    match std::process::Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Err(error) => return Some(format!("node cannot be run: {error}")),
        Ok(status) if !status.success() => return Some("node --version failed".to_owned()),
        Ok(_) => {}
    }
    let browser = chromium();
    if !browser.is_file() {
        return Some(format!(
            "no Chromium at {} (apt-get install chromium, or set BATON_CHROMIUM)",
            browser.display()
        ));
    }
    let driver = script_dir().join("node_modules/playwright-core/package.json");
    if !driver.is_file() {
        return Some(format!(
            "playwright-core is not installed (npm ci in {})",
            script_dir().display()
        ));
    }
    None
}

/// `true` when the test may go on; prints the skip (or fails under BATON_REQUIRE_BROWSER=1).
fn browser_available() -> bool {
    let Some(why) = missing_browser() else {
        return true;
    };
    if std::env::var("BATON_REQUIRE_BROWSER").as_deref() == Ok("1") {
        panic!("dashboard: {why}, and BATON_REQUIRE_BROWSER=1");
    }
    // Past the test harness's capture, so the skip shows in a passing run.
    let _ = writeln!(std::io::stderr(), "SKIPPED dashboard: {why}");
    false
}

/// One request with a key (or none); the status and JSON body.
async fn call(
    server: &Server,
    key: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let method: reqwest::Method = method
        .parse()
        .unwrap_or_else(|error| panic!("method {method}: {error}"));
    let mut request = server
        .http()
        .request(method, format!("{}{path}", server.base));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|error| panic!("{path}: {error}\n{}", server.log_text()));
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Makes a key; returns its secret.
async fn create_key(server: &Server, admin: Option<&str>, name: &str, grant: &str) -> String {
    let (status, body) = call(
        server,
        admin,
        "POST",
        "/v1/keys",
        Some(json!({"name": name, "grants": [grant]})),
    )
    .await;
    assert_eq!(status, 200, "create key {name}: {body}");
    body["secret"]
        .as_str()
        .unwrap_or_else(|| panic!("no secret: {body}"))
        .to_owned()
}

async fn acquire(server: &Server, key: Option<&str>, lock: &str, owner: &str) {
    let (status, body) = call(
        server,
        key,
        "POST",
        &lock_path(lock, "/acquire"),
        Some(json!({"owner": owner, "ttl_ms": 3_600_000})),
    )
    .await;
    assert_eq!(status, 200, "acquire {lock}: {body}");
}

/// `baton run ARGS…` with the admin key, to its end with exit code 0.
async fn run(server: &Server, admin: Option<&str>, args: &[&str]) {
    let mut full: Vec<&str> = Vec::new();
    if let Some(key) = admin {
        full.extend(["--api-key", key]);
    }
    full.push("run");
    full.extend_from_slice(args);
    let exited = server.spawn_baton(&full, None).wait(RUN_TIMEOUT).await;
    assert_code(&exited, 0, &format!("baton run {args:?}"));
}

/// The state every scenario reads: two skip-policy runs of one job name one after the other,
/// a finished job with output, and (with keys) a lock and a job for each of two teams.
async fn fixtures(server: &Server, admin: Option<&str>) {
    for _ in 0..2 {
        run(
            server,
            admin,
            &["dash/nightly", "--skip", "--", "sleep", "1"],
        )
        .await;
    }
    run(
        server,
        admin,
        &[
            "dash/report",
            "--",
            "sh",
            "-c",
            "echo report line 1; echo report line 2",
        ],
    )
    .await;
    if admin.is_some() {
        acquire(server, admin, "team-a/lock", "team-a-owner").await;
        acquire(server, admin, "team-b/lock", "team-b-owner").await;
        run(server, admin, &["team-a/build", "--", "true"]).await;
        run(server, admin, &["team-b/backup", "--", "true"]).await;
    }
    if std::env::var_os("BATON_DASHBOARD_SCREENSHOTS").is_some() {
        screenshot_fixtures(server, admin).await;
    }
}

/// More to look at in the screenshots: overlapping runs of a semaphore job, a failure, a
/// request skipped while another run held the lock.
async fn screenshot_fixtures(server: &Server, admin: Option<&str>) {
    let mut key_args: Vec<&str> = Vec::new();
    if let Some(key) = admin {
        key_args.extend(["--api-key", key]);
    }
    let spawn = |args: &[&str]| {
        let mut full = key_args.clone();
        full.push("run");
        full.extend_from_slice(args);
        server.spawn_baton(&full, None)
    };
    let pool = [
        "deploy/pool",
        "--capacity",
        "2",
        "--",
        "sh",
        "-c",
        "echo deploying; sleep 2",
    ];
    let first = spawn(&pool);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let second = spawn(&pool);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let skipped = spawn(&["deploy/pool", "--skip", "--capacity", "2", "--", "true"]);
    for process in [first, second, skipped] {
        let _ = process.wait(RUN_TIMEOUT).await;
    }
    let failed = spawn(&[
        "etl/import",
        "--",
        "sh",
        "-c",
        "echo reading input; echo 'row 17: bad date' >&2; exit 3",
    ]);
    let _ = failed.wait(RUN_TIMEOUT).await;
}

/// Runs `dashboard.mjs` with `scenarios` against `server`; fails the test with its output
/// unless every scenario passed.
async fn browse(server: &Server, admin: Option<&str>, reader: Option<&str>, scenarios: &[&str]) {
    let mut command = tokio::process::Command::new("node");
    command
        .arg("dashboard.mjs")
        .current_dir(script_dir())
        .env("BATON_URL", &server.base)
        .env("BATON_BIN", harness::BATON)
        .env("BATON_CHROMIUM", chromium())
        .env("BATON_ADMIN_KEY", admin.unwrap_or_default())
        .env("BATON_READER_KEY", reader.unwrap_or_default())
        .env("BATON_DASHBOARD_SCENARIOS", scenarios.join(","))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if !scenarios.contains(&"screenshots") {
        command.env_remove("BATON_DASHBOARD_SCREENSHOTS");
    }
    let child = command
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run node: {error}"));
    let output = tokio::time::timeout(BROWSER_RUN_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the browser run took over {BROWSER_RUN_TIMEOUT:?}"))
        .unwrap_or_else(|error| panic!("cannot wait for node: {error}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Shown in the test's output (captured unless it fails or --nocapture).
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the dashboard's browser scenarios failed ({}):\n{stdout}\n{stderr}\nserver log:\n{}",
        output.status,
        server.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_in_a_real_browser_sqlite() {
    if !browser_available() {
        return;
    }
    let server = Server::start(&["--ticket-lapse", "1h"]).await;
    // The first key is made through the keyless server; from then on keys are in force.
    let admin = create_key(&server, None, "admin", "admin:").await;
    let reader = create_key(&server, Some(&admin), "team-a reader", "read:team-a/").await;
    fixtures(&server, Some(&admin)).await;
    browse(&server, Some(&admin), Some(&reader), SQLITE_SCENARIOS).await;
}

/// Cheap with the live scenarios only: the page is the same, the event stream and the
/// listings come from the PostgreSQL store's engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_live_with_postgres() {
    if !browser_available() {
        return;
    }
    let test = "dashboard_postgres";
    let Some(url) = testing::available(test).await else {
        return;
    };
    // Declared before the server, so it is dropped after the server stopped.
    let schema = Schema::new(url, testing::schema_for(test));
    let server = Server::start(&[
        "--ticket-lapse",
        "1h",
        "--database",
        schema.url.as_str(),
        "--database-schema",
        schema.name.as_str(),
    ])
    .await;
    browse(&server, None, None, POSTGRES_SCENARIOS).await;
}

/// A PostgreSQL schema of the test's own, dropped at the end (also on a failure).
struct Schema {
    url: String,
    name: String,
}

impl Schema {
    fn new(url: String, name: String) -> Schema {
        // A schema left by an earlier process would mix old state in.
        testing::drop_schema(&url, &name);
        Schema { url, name }
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        testing::drop_schema(&self.url, &self.name);
    }
}

#[test]
fn the_scripts_lockfile_pins_playwright_core() {
    // `npm ci` installs exactly the lockfile; a package.json that drifted from it fails there,
    // late. Checked here without npm.
    let read = |name: &str| -> Value {
        let path: &Path = &script_dir().join(name);
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
    };
    let package = read("package.json");
    let lock = read("package-lock.json");
    let wanted = package["dependencies"]["playwright-core"]
        .as_str()
        .unwrap_or_default();
    let locked = lock["packages"]["node_modules/playwright-core"]["version"]
        .as_str()
        .unwrap_or_default();
    assert!(!wanted.is_empty(), "package.json names playwright-core");
    assert_eq!(wanted, locked, "package.json pins the locked version");
    assert_eq!(
        lock["packages"][""]["dependencies"], package["dependencies"],
        "the lockfile was made from this package.json"
    );
}
