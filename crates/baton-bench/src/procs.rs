//! Server processes the bench starts: free loopback ports, a guard that kills the process (and
//! removes its data directory) however the bench ends, and readings of the process's peak
//! resident memory and CPU time from `/proc`.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A loopback port nobody listens on right now (the OS picks it; a tiny race remains until
/// the server binds it).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a probe socket")?;
    Ok(listener.local_addr()?.port())
}

/// A running server process. Dropping the guard kills the process, waits for it, and removes
/// its temporary directory, so a panic or an early return never leaves a server behind.
pub struct ServerGuard {
    /// What the server is, for messages.
    pub label: String,
    /// The process.
    child: Child,
    /// Kept alive as long as the process runs; deleted on drop, after the kill.
    dir: tempfile::TempDir,
}

impl ServerGuard {
    /// Starts `program args...` with stdout and stderr sent to `server.log` in a fresh temporary
    /// directory, which `args` gets as its first `{dir}`-substituted argument where present.
    pub fn spawn(label: &str, program: &Path, args: &[String]) -> Result<ServerGuard> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("baton-bench-{label}-"))
            .tempdir()
            .context("creating a temporary directory")?;
        let data = dir.path().join("data");
        std::fs::create_dir(&data).context("creating the data directory")?;
        let log = File::create(dir.path().join("server.log")).context("creating server.log")?;
        let log2 = log.try_clone()?;
        let data_str = data.to_string_lossy();
        let args: Vec<String> = args.iter().map(|a| a.replace("{dir}", &data_str)).collect();
        let child = Command::new(program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(ServerGuard {
            label: label.to_owned(),
            child,
            dir,
        })
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails when the process has already exited, with the tail of its log.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited with {status}; log tail:\n{}",
                self.label,
                self.log_tail()
            );
        }
        Ok(())
    }

    /// The last lines of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Peak resident set size of the server so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    }

    /// User plus system CPU time the server has used so far, in seconds.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        // The kernel reports clock ticks; USER_HZ is 100 on every Linux this runs on.
        Some((utime + stime) / 100.0)
    }

    /// Polls `probe` until it succeeds, the process dies, or `timeout` passes.
    pub async fn wait_ready<F, Fut>(&mut self, timeout: Duration, mut probe: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let start = Instant::now();
        let mut last_err = None;
        while start.elapsed() < timeout {
            self.check_alive()?;
            match probe().await {
                Ok(()) => return Ok(()),
                Err(e) => last_err = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "{} not ready after {timeout:?} (last error: {}); log tail:\n{}",
            self.label,
            last_err.map(|e| format!("{e:#}")).unwrap_or_default(),
            self.log_tail()
        )
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        // Already gone is fine; there is nobody to report a failure to here.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Finds `name` on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The type of the file system holding `path` (longest matching mount point in
/// `/proc/mounts`), e.g. `ext4` or `tmpfs`.
pub fn fs_type(path: &Path) -> Option<String> {
    let path = path.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _device = fields.next()?;
            let mount_point = fields.next()?.replace("\\040", " ");
            let fs = fields.next()?;
            path.starts_with(&mount_point)
                .then(|| (mount_point.len(), fs.to_owned()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, fs)| fs)
}
