//! Test harness: runs the real `baton server` binary on a free loopback port over a temporary
//! data folder, and talks JSON to it over HTTP.
//!
//! - [`Server::start`] spawns `baton server --listen 127.0.0.1:PORT --data-dir TMP [args…]` and
//!   returns once the process has announced that it listens and `GET /healthz` answers 200.
//!   Waiting for the announcement reads the server's stderr (an event), bounded by
//!   [`START_TIMEOUT`]; a port taken in the meantime is retried on a new port.
//! - [`Server::kill9`] ends the process with SIGKILL (a crash); [`Server::restart`] starts a new
//!   process on the same data folder and port. Dropping the [`Server`] kills the process.
//! - [`Server::post`], [`Server::get`], [`Server::delete`] send JSON and return the status with
//!   the parsed body; a transport error or a non-JSON body fails the test (with the server's
//!   recent log), so a hung or crashed server never passes silently.
//!
//! Every test file uses a part of this module, none uses all of it.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// The `baton` binary built from this crate.
pub const BATON: &str = env!("CARGO_BIN_EXE_baton");

/// How long a server may take to start listening (generous: the machine is shared).
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long one HTTP request may take. Above the server's longest long-poll (60 s), so a
/// request that hangs fails the test instead of hanging it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(90);

/// Lines of the server's stderr kept for failure messages.
const LOG_LINES_KEPT: usize = 200;

/// How the process started: the line `baton server` prints once it accepts connections.
const LISTENING: &str = "baton listening on http://";

/// A running `baton server` process.
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The port, kept across restarts.
    pub port: u16,
    data_dir: TempDir,
    args: Vec<String>,
    child: Option<Child>,
    log: Arc<Mutex<VecDeque<String>>>,
    http: reqwest::Client,
    /// BATON_LOG of the process.
    log_filter: String,
}

/// What became of a start attempt.
enum Started {
    Up(Child),
    /// The process exited before listening; `port_taken` when it could not bind.
    Exited {
        port_taken: bool,
    },
}

impl Server {
    /// Starts a server with the durable (SQLite) store and the given extra flags, e.g.
    /// `["--lock-delay", "500ms"]`.
    pub async fn start(args: &[&str]) -> Server {
        Server::start_logging(args, "warn").await
    }

    /// [`Server::start`] with the log filter `log_filter` (BATON_LOG) rather than `warn`.
    pub async fn start_logging(args: &[&str], log_filter: &str) -> Server {
        let data_dir = tempfile::Builder::new()
            .prefix("baton-test-")
            .tempdir()
            .unwrap_or_else(|error| panic!("cannot create a temporary data folder: {error}"));
        // reqwest is built with rustls and no provider of its own (see the root Cargo.toml).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .unwrap_or_else(|error| panic!("cannot build the HTTP client: {error}"));
        let mut server = Server {
            base: String::new(),
            port: 0,
            data_dir,
            args: args.iter().map(|arg| (*arg).to_owned()).collect(),
            child: None,
            log: Arc::new(Mutex::new(VecDeque::new())),
            http,
            log_filter: log_filter.to_owned(),
        };
        for _ in 0..10 {
            let port = free_port();
            match server.spawn(port).await {
                Started::Up(child) => {
                    server.port = port;
                    server.base = format!("http://127.0.0.1:{port}");
                    server.child = Some(child);
                    server.check_health().await;
                    return server;
                }
                Started::Exited { port_taken: true } => continue,
                Started::Exited { port_taken: false } => {
                    panic!(
                        "baton server exited before listening:\n{}",
                        server.log_text()
                    )
                }
            }
        }
        panic!(
            "baton server found no free port in 10 tries:\n{}",
            server.log_text()
        )
    }

    /// The server process's id, while it runs.
    #[allow(dead_code)] // Not every test binary pauses the server.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// The data folder.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.path().to_path_buf()
    }

    /// Ends the process with SIGKILL, as a crash would, and reaps it.
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `Child::kill` sends SIGKILL on Unix, then waits for the process to end.
            if let Err(error) = child.kill().await {
                panic!("cannot kill the server: {error}");
            }
        }
    }

    /// Starts a new process on the same data folder and port (killing the old one first if it
    /// still runs). The port may linger for a moment after a kill, so binding it is retried for
    /// a bounded time.
    pub async fn restart(&mut self) {
        self.kill9().await;
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn(self.port).await {
                Started::Up(child) => {
                    self.child = Some(child);
                    self.check_health().await;
                    return;
                }
                Started::Exited { port_taken: true } if tokio::time::Instant::now() < deadline => {
                    // The only wait that has no event to await: the kernel freeing the port.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Started::Exited { .. } => {
                    panic!("baton server did not restart:\n{}", self.log_text())
                }
            }
        }
    }

    /// Spawns the process on `port` and waits (bounded) for it to listen or to exit.
    async fn spawn(&self, port: u16) -> Started {
        let mut command = Command::new(BATON);
        command
            .arg("server")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .args(&self.args)
            .env("BATON_LOG", &self.log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("cannot run {BATON}: {error}"));
        let Some(stderr) = child.stderr.take() else {
            panic!("the server's stderr is not piped");
        };
        // Drains stderr for the life of the process (a full pipe would block the server),
        // keeping the last lines, and reports the listening line or the end of the stream.
        let (state_tx, mut state_rx) = watch::channel(None::<bool>);
        let log = Arc::clone(&self.log);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains(LISTENING) {
                    let _ = state_tx.send(Some(true));
                }
                if let Ok(mut log) = log.lock() {
                    log.push_back(line);
                    while log.len() > LOG_LINES_KEPT {
                        log.pop_front();
                    }
                }
            }
            // The stream ended: the process exited (or closed stderr) without listening.
            state_tx.send_if_modified(|state| {
                let ended_first = state.is_none();
                if ended_first {
                    *state = Some(false);
                }
                ended_first
            });
        });
        let outcome =
            tokio::time::timeout(START_TIMEOUT, state_rx.wait_for(|state| state.is_some())).await;
        match outcome {
            Ok(Ok(state)) if *state == Some(true) => Started::Up(child),
            Ok(_) => {
                let _ = tokio::time::timeout(START_TIMEOUT, child.wait()).await;
                let port_taken = self
                    .log_text()
                    .lines()
                    .rev()
                    .take(5)
                    .any(|line| line.contains("cannot listen") && line.contains("in use"));
                Started::Exited { port_taken }
            }
            Err(_) => {
                let _ = child.kill().await;
                panic!(
                    "baton server did not listen within {START_TIMEOUT:?}:\n{}",
                    self.log_text()
                )
            }
        }
    }

    /// `GET /healthz` must answer 200 once the server listens. A server of a shared database
    /// (its health has a `role`) is also waited for, bounded, until it is the active one or
    /// names another as active: one restarted on the same URL waits out the leadership its
    /// previous process held (a crash cannot prove that process gone), and a test talking to
    /// it at once would meet `not_active`.
    async fn check_health(&self) {
        let (status, body) = self.get("/healthz").await;
        assert_eq!(status, 200, "GET /healthz: {body}\n{}", self.log_text());
        assert_eq!(body["status"], "ok", "GET /healthz: {body}");
        if body.get("role").is_none() {
            return;
        }
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            let (status, body) = self.get("/readyz").await;
            let elsewhere = body["role"] == "standby"
                && body["active"]
                    .as_str()
                    .is_some_and(|active| active != self.base);
            if status == 200 || elsewhere {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server neither became active nor named an active one: {body}\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines the server wrote to stderr.
    pub fn log_text(&self) -> String {
        match self.log.lock() {
            Ok(log) => log.iter().cloned().collect::<Vec<_>>().join("\n"),
            Err(_) => String::from("(log unavailable)"),
        }
    }

    /// The shared HTTP client.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let answer = self.try_post(path, body).await;
        self.expect(path, answer)
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let answer = self
            .try_send(reqwest::Method::GET, path, None, None::<&[u8]>)
            .await;
        self.expect(path, answer)
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let answer = self
            .try_send(reqwest::Method::DELETE, path, None, None::<&[u8]>)
            .await;
        self.expect(path, answer)
    }

    /// `POST path` with a JSON body, passing transport errors (a crashed server) back.
    pub async fn try_post(&self, path: &str, body: Value) -> Result<(u16, Value), String> {
        let bytes = serde_json::to_vec(&body).map_err(|error| error.to_string())?;
        self.try_send(
            reqwest::Method::POST,
            path,
            Some("application/json"),
            Some(bytes.as_slice()),
        )
        .await
    }

    /// Any request with raw bytes and an optional content type; the answer must be JSON.
    pub async fn try_send(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<(u16, Value), String> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(content_type) = content_type {
            request = request.header(reqwest::header::CONTENT_TYPE, content_type);
        }
        if let Some(body) = body {
            request = request.body(body.to_vec());
        }
        let response = request.send().await.map_err(|error| error.to_string())?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|error| error.to_string())?;
        let value = serde_json::from_str(&text)
            .map_err(|error| format!("status {status}, body is not JSON ({error}): {text:?}"))?;
        Ok((status, value))
    }

    fn expect(&self, path: &str, answer: Result<(u16, Value), String>) -> (u16, Value) {
        answer.unwrap_or_else(|error| panic!("{path}: {error}\nserver log:\n{}", self.log_text()))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // SIGKILL; the runtime reaps it (kill_on_drop is set as a second line of defence).
            let _ = child.start_kill();
        }
    }
}

/// A port that was free a moment ago: bind 127.0.0.1:0 and let it go. Another process may take
/// it before the server binds; [`Server::start`] then retries with a new one.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .unwrap_or_else(|error| panic!("cannot bind 127.0.0.1:0: {error}"));
    listener
        .local_addr()
        .unwrap_or_else(|error| panic!("cannot read the bound address: {error}"))
        .port()
}

/// `/v1/locks/{name}` with the name percent-encoded as one path segment.
pub fn lock_path(name: &str, suffix: &str) -> String {
    format!("/v1/locks/{}{suffix}", encode_segment(name))
}

/// Percent-encodes everything but unreserved characters.
pub fn encode_segment(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A server timestamp (RFC 3339) as milliseconds since the epoch.
pub fn millis(value: &Value) -> i64 {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a timestamp: {value}"));
    let timestamp: jiff::Timestamp = text
        .parse()
        .unwrap_or_else(|error| panic!("not a timestamp {text:?}: {error}"));
    timestamp.as_millisecond()
}

/// A u64 field, or a failed test naming it.
pub fn u64_of(value: &Value, what: &str) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("{what} is not a whole number: {value}"))
}

/// A string field, or a failed test naming it.
pub fn str_of<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value}"))
}

/// A lease or ticket: acquires on `name` and, while the answer is 202, waits on the ticket.
/// Returns the 200 body's `lease`, and whether the request was queued on the way.
pub async fn acquire_queued(server: &Server, name: &str, body: Value) -> (Value, bool) {
    let path = lock_path(name, "/acquire");
    let (mut status, mut answer) = server.post(&path, body).await;
    let mut queued = false;
    while status == 202 {
        queued = true;
        let id = str_of(&answer["ticket"]["id"], "ticket.id").to_owned();
        (status, answer) = server
            .post(
                &format!("/v1/tickets/{id}/wait"),
                serde_json::json!({"wait_ms": 30_000}),
            )
            .await;
    }
    assert_eq!(status, 200, "acquire {name}: {answer}");
    (answer["lease"].clone(), queued)
}

/// Waits on a ticket until it is granted; returns the lease.
pub async fn wait_granted(server: &Server, ticket_id: &str) -> Value {
    loop {
        let (status, answer) = server
            .post(
                &format!("/v1/tickets/{ticket_id}/wait"),
                serde_json::json!({"wait_ms": 30_000}),
            )
            .await;
        match status {
            200 => return answer["lease"].clone(),
            202 => continue,
            _ => panic!("wait on a ticket: {status} {answer}"),
        }
    }
}

/// 128 bits of hex from the standard library's randomly seeded hasher (no `rand` needed).
pub fn random_hex32() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::new();
    for round in 0u64..2 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(round);
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|elapsed| elapsed.as_nanos())
                .unwrap_or(0),
        );
        out.push_str(&format!("{:016x}", hasher.finish()));
    }
    out
}

// ----- client processes (`baton run` …) -------------------------------------------------------

/// How long a client process may take to drain its output once it exited (its pipes close with
/// it; a grandchild that kept one open would hold them, which must not hang the test).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A `baton` client process (e.g. `baton run`) started in the background against a [`Server`],
/// its stdout and stderr collected as they arrive. Dropping it SIGKILLs the process (as a
/// crash would; `baton run`'s guardian then ends the command's tree).
pub struct ClientProcess {
    /// The process id.
    pub pid: u32,
    args: Vec<String>,
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

/// How a [`ClientProcess`] ended.
#[derive(Debug)]
pub struct Exited {
    /// The exit code; `None` when a signal ended the process.
    pub code: Option<i32>,
    /// The signal that ended the process, if one did.
    pub signal: Option<i32>,
    /// Everything it wrote on stdout.
    pub stdout: Vec<u8>,
    /// Everything it wrote on stderr.
    pub stderr: String,
}

impl Server {
    /// Starts `baton ARGS…` with `BATON_URL` pointing at this server and none of baton's other
    /// variables set, in `dir` when given.
    pub fn spawn_baton(&self, args: &[&str], dir: Option<&std::path::Path>) -> ClientProcess {
        let mut command = Command::new(BATON);
        command
            .args(args)
            .env("BATON_URL", &self.base)
            .env_remove("BATON_API_KEY")
            .env_remove("BATON_OWNER")
            .env_remove("BATON_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(dir) = dir {
            command.current_dir(dir);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("cannot run baton {args:?}: {error}"));
        let pid = child
            .id()
            .unwrap_or_else(|| panic!("baton {args:?} has no pid"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        if let Some(pipe) = child.stdout.take() {
            readers.push(tokio::spawn(collect(pipe, Arc::clone(&stdout))));
        }
        if let Some(pipe) = child.stderr.take() {
            readers.push(tokio::spawn(collect(pipe, Arc::clone(&stderr))));
        }
        ClientProcess {
            pid,
            args: args.iter().map(|arg| (*arg).to_owned()).collect(),
            child,
            stdout,
            stderr,
            readers,
        }
    }
}

async fn collect(mut pipe: impl tokio::io::AsyncRead + Unpin, into: Arc<Mutex<Vec<u8>>>) {
    use tokio::io::AsyncReadExt;
    let mut buffer = vec![0u8; 64 * 1024];
    while let Ok(read) = pipe.read(&mut buffer).await {
        if read == 0 {
            break;
        }
        if let Ok(mut into) = into.lock() {
            into.extend_from_slice(&buffer[..read]);
        }
    }
}

impl ClientProcess {
    /// What it wrote on stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr
            .lock()
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// What it wrote on stdout so far.
    #[allow(dead_code)] // Not every test binary reads a running process's stdout.
    pub fn stdout_text(&self) -> String {
        self.stdout
            .lock()
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// Sends `signal` to the process (only to it, not to its group).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid).unwrap_or(i32::MAX));
        nix::sys::signal::kill(pid, signal).unwrap_or_else(|error| {
            panic!("cannot send {signal} to baton {:?}: {error}", self.args)
        });
    }

    /// Whether it has exited (without reaping output).
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits, at most `limit`, for the process to exit; a process still running then fails the
    /// test with what it wrote on stderr.
    pub async fn wait(mut self, limit: Duration) -> Exited {
        use std::os::unix::process::ExitStatusExt;
        let status = match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(error)) => panic!("cannot wait for baton {:?}: {error}", self.args),
            Err(_) => panic!(
                "baton {:?} did not exit within {limit:?}; stderr so far:\n{}",
                self.args,
                self.stderr_text()
            ),
        };
        for reader in std::mem::take(&mut self.readers) {
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, reader).await;
        }
        let take = |buffer: &Arc<Mutex<Vec<u8>>>| {
            buffer
                .lock()
                .map(|mut bytes| std::mem::take(&mut *bytes))
                .unwrap_or_default()
        };
        Exited {
            code: status.code(),
            signal: status.signal(),
            stdout: take(&self.stdout),
            stderr: String::from_utf8_lossy(&take(&self.stderr)).into_owned(),
        }
    }
}

/// Whether process `pid` exists and is not a zombie (an orphan re-parented to an init that
/// never reaps stays a zombie: it runs nothing and holds nothing but its pid).
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) S …`: the state follows the last `)`.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| !matches!(state, 'Z' | 'X')),
        Err(_) => false,
    }
}

/// The process group of process `pid`, while it exists.
pub fn process_group(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // After the comm: state, ppid, pgrp.
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// Polls `probe` every 50 ms until it returns `Some`, for at most `limit`; then fails the test
/// naming `what`. For conditions with no event to await (a job's state, a file's content).
pub async fn eventually<T>(
    what: &str,
    limit: Duration,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The lines of a text file; none while it does not exist.
pub fn file_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|text| text.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The jobs of `name`, newest first (`GET /v1/jobs?name=…`).
pub async fn jobs_named(server: &Server, name: &str) -> Vec<Value> {
    let path = format!("/v1/jobs?name={}", encode_segment(name));
    let (status, body) = server.get(&path).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    body["jobs"]
        .as_array()
        .unwrap_or_else(|| panic!("no jobs array: {body}"))
        .clone()
}

/// `GET /v1/jobs/{id}`: the job and its output tail.
pub async fn job_detail(server: &Server, id: &str) -> Value {
    let (status, body) = server.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(status, 200, "GET job {id}: {body}");
    body
}

/// `GET /v1/locks/{name}`.
pub async fn lock_view(server: &Server, name: &str) -> Value {
    let (status, body) = server.get(&lock_path(name, "")).await;
    assert_eq!(status, 200, "GET lock {name}: {body}");
    body
}

/// A fresh temporary folder for one test, named with `prefix`.
#[allow(clippy::expect_used)] // a test without a temporary folder cannot run
pub fn workdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("a temporary folder")
}

/// Fails the test, with the process's stderr, unless it exited with `code`.
pub fn assert_code(exited: &Exited, code: i32, what: &str) {
    assert_eq!(
        exited.code,
        Some(code),
        "{what}: expected exit code {code}, got {:?} (signal {:?}); stderr:\n{}",
        exited.code,
        exited.signal,
        exited.stderr
    );
}
