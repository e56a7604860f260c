//! 10,000 idle connections do not stop a real `baton server` process from serving others
//! (issue 6). The server runs in its own process, started with a soft open-files limit of 1,024
//! so that only its own raising of the limit to the hard one lets it hold them; this process
//! raises its own soft limit for its ends of the connections, and skips with a printed reason
//! only when the hard limit is too low for that. Every wait is bounded; nothing asserts on
//! timing. The run time and the server's memory per idle connection are printed (run with
//! `--nocapture` to see them).

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly on what it did not expect

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

const BATON: &str = env!("CARGO_BIN_EXE_baton");

/// The idle connections the issue asks for.
const IDLE: usize = 10_000;

/// Descriptors this process needs beyond its ends of the idle connections (the test harness,
/// the runtime, the probe client, pipes).
const SPARE_FDS: u64 = 256;

/// The whole test's bound (the machine is shared; connecting takes a few seconds).
const LIMIT: Duration = Duration::from_secs(240);

/// Raises this process's soft open-files limit to the hard one; returns the soft limit now.
fn raise_own_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// A `/proc/PID/…` field: the first number on the line starting with `key`.
fn proc_field(pid: u32, file: &str, key: &str, column: usize) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()?
        .lines()
        .find(|line| line.starts_with(key))?
        .split_whitespace()
        .nth(column)?
        .parse()
        .ok()
}

/// The server's resident memory in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    proc_field(pid, "status", "VmRSS:", 1)
}

/// A `baton server` process started under a soft limit of 1,024 open files.
struct Server {
    address: SocketAddr,
    pid: u32,
    _child: Child,
}

async fn start() -> Server {
    // `ulimit -Sn` in a shell that then execs the server: the server starts with the low soft
    // limit (and keeps the pid), so the test sees whether it raises the limit itself.
    let script = format!(
        "ulimit -Sn 1024 && exec '{BATON}' server --listen 127.0.0.1:0 --store memory \
         --header-read-timeout 10m"
    );
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .env_remove("BATON_TLS_CERT")
        .env_remove("BATON_TLS_KEY")
        .env("BATON_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let address = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix("baton listening on http://") {
                return rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        }
        panic!("baton server exited without listening");
    })
    .await
    .expect("baton server did not announce that it listens");
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("server: {line}");
        }
    });
    Server {
        address,
        pid,
        _child: child,
    }
}

/// Acquires and releases a lock; panics unless both answer 200.
async fn acquire_release(address: SocketAddr, lock: &str) {
    // reqwest is built with rustls and no provider of its own (see the root Cargo.toml).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let response = client
        .post(format!("http://{address}/v1/locks/{lock}/acquire"))
        .header("content-type", "application/json")
        .body(r#"{"owner":"probe"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    let id = body["lease"]["id"].as_str().unwrap().to_owned();
    let response = client
        .post(format!("http://{address}/v1/leases/{id}/release"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

#[tokio::test]
async fn ten_thousand_idle_connections_do_not_stop_the_server_serving_others() {
    let available = raise_own_limit();
    let needed = IDLE as u64 + SPARE_FDS;
    if available < needed {
        println!(
            "SKIPPED: this test needs {needed} open files for its ends of {IDLE} connections; \
             the hard limit allows {available} (raise `ulimit -Hn`)"
        );
        return;
    }
    tokio::time::timeout(LIMIT, scenario())
        .await
        .expect("the idle-connections test ran past its bound");
}

async fn scenario() {
    let started = Instant::now();
    let server = start().await;
    let server_limit = proc_field(server.pid, "limits", "Max open files", 3).unwrap();
    assert!(
        server_limit > IDLE as u64,
        "the server kept a soft open-files limit of {server_limit}: it cannot hold {IDLE} \
         connections"
    );
    acquire_release(server.address, "warm-up").await;
    let rss_before = rss_kib(server.pid);
    let mut idle = Vec::with_capacity(IDLE);
    for index in 0..IDLE {
        let stream =
            tokio::time::timeout(Duration::from_secs(20), TcpStream::connect(server.address))
                .await
                .unwrap_or_else(|_| panic!("connection {index} timed out"))
                .unwrap_or_else(|error| panic!("connection {index}: {error}"));
        idle.push(stream);
    }
    let connected = started.elapsed();
    // Served while all of them are open.
    acquire_release(server.address, "busy-server").await;
    // The server has not closed the idle connections (a sample): nothing to read yet.
    let mut byte = [0u8; 1];
    for stream in idle.iter().step_by(IDLE / 20) {
        match stream.try_read(&mut byte) {
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("an idle connection was answered or closed: {other:?}"),
        }
    }
    // Every connection was accepted by the server, not just queued by the kernel: the server
    // comes to hold a descriptor for each (polled, bounded: it accepts them as it goes).
    let count_fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", server.pid))
            .map(|entries| entries.count())
            .unwrap_or(0)
    };
    let mut server_fds = count_fds();
    for _ in 0..300 {
        if server_fds >= IDLE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        server_fds = count_fds();
    }
    assert!(
        server_fds >= IDLE,
        "the server holds {server_fds} descriptors for {IDLE} connections"
    );
    // And still serves with all of them accepted.
    acquire_release(server.address, "all-accepted").await;
    let rss_after = rss_kib(server.pid);
    drop(idle);
    acquire_release(server.address, "after").await;
    let per_connection = match (rss_before, rss_after) {
        (Some(before), Some(after)) => format!(
            "{:.1} KiB per idle connection ({before} KiB before, {after} KiB with them)",
            (after.saturating_sub(before)) as f64 / IDLE as f64
        ),
        _ => "unknown".to_owned(),
    };
    println!(
        "{IDLE} idle connections: connected in {connected:?}, test took {:?}; server RSS: \
         {per_connection}",
        started.elapsed()
    );
}
