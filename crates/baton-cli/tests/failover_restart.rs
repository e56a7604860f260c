#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The PostgreSQL server itself restarted under load, with two baton servers on it: while it
//! is down the baton servers answer 503 and acknowledge nothing; once it is back one of them is
//! active again, and no acknowledged grant is lost, no two holds overlap, no token is reused.
//!
//! Restarting the machine's PostgreSQL would disturb everything else that uses it, so the test
//! makes a PostgreSQL of its own: `initdb` into a temporary folder, started on a free loopback
//! port with `pg_ctl`, restarted with `pg_ctl restart -m fast`, stopped and removed at the end.
//! It needs PostgreSQL's server programs (found in `BATON_TEST_PG_BIN`, else the newest
//! `/usr/lib/postgresql/*/bin`); run as root it runs them as the `postgres` user. Without them
//! it says it skipped, and fails under `BATON_REQUIRE_POSTGRES=1`.

mod cluster;
mod harness;

use std::time::Duration;

use std::path::PathBuf;
use std::process::Command;

use baton_client::RetryPolicy;
use cluster::{
    Schema, acquire, active_of, bounded, check_holds, client_of, first_grant_after, hammer,
    holders_of, start_pg,
};
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restarted_under_load_loses_nothing() {
    let cluster = match TempCluster::start() {
        Ok(cluster) => cluster,
        Err(reason) => {
            assert!(
                std::env::var("BATON_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "PostgreSQL is required (BATON_REQUIRE_POSTGRES=1) but no PostgreSQL of the \
                 test's own could be made: {reason}"
            );
            eprintln!("SKIPPED postgres_restarted_under_load_loses_nothing: {reason}");
            return;
        }
    };
    let url = cluster.url();
    bounded(async {
        let schema = Schema::new(&url, "failover_pg_restart");
        let first = start_pg(&schema).await;
        let second = start_pg(&schema).await;
        let all = [&first, &second];
        let _ = active_of(&all).await;
        let client = client_of(&all, RetryPolicy::default());
        let mut sentinels = Vec::new();
        for index in 0..5 {
            let name = format!("sentinel/{index}");
            let lease = acquire(&client, &name, 120_000).await;
            let listed = holders_of(&client, &name).await;
            sentinels.push((name, lease, listed));
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (holds, tasks) = hammer(&client, "hot", 8, stop_rx);
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let before = holds.lock().unwrap().len();
        assert!(before > 0, "no progress before the restart");

        cluster.restart();
        let restarted = Instant::now();
        // Back within a bounded time: the database answers at once after the restart, and a
        // baton server is active again within a leadership lease or two.
        let once = client_of(&all, RetryPolicy::NONE);
        let took = first_grant_after(&once, restarted, "after PostgreSQL restarted").await;
        assert!(took < Duration::from_secs(20), "{took:?}");
        tokio::time::sleep(Duration::from_millis(2_000)).await;
        stop_tx.send_replace(true);
        for task in tasks {
            task.await.unwrap();
        }
        let holds = holds.lock().unwrap().clone();
        assert!(holds.len() > before, "no hold after the restart");
        check_holds(&holds);
        for (name, lease, listed) in &sentinels {
            let now = holders_of(&client, name).await;
            assert_eq!(now.len(), 1, "{name}: {now:?}");
            assert_eq!(
                (now[0].0.as_str(), now[0].1),
                (lease.owner.as_str(), lease.token)
            );
            assert!(now[0].2 >= listed[0].2, "{name}: a deadline was shortened");
            client
                .renew(&lease.id, None)
                .await
                .expect("renew a sentinel");
        }
    })
    .await;
}

/// A PostgreSQL of the test's own, in a temporary folder, on a free loopback port.
struct TempCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl TempCluster {
    fn start() -> Result<TempCluster, String> {
        let bin = match std::env::var_os("BATON_TEST_PG_BIN") {
            Some(bin) => PathBuf::from(bin),
            None => {
                let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
                    .map_err(|error| {
                        format!("no /usr/lib/postgresql ({error}); set BATON_TEST_PG_BIN")
                    })?
                    .filter_map(Result::ok)
                    .map(|entry| entry.path().join("bin"))
                    .filter(|bin| bin.join("initdb").exists())
                    .collect();
                found.sort();
                found
                    .pop()
                    .ok_or("no initdb under /usr/lib/postgresql/*/bin")?
            }
        };
        let as_postgres = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0");
        let dir = tempfile::Builder::new()
            .prefix("baton-pg-")
            .tempdir()
            .map_err(|error| error.to_string())?;
        if as_postgres {
            let status = Command::new("chown")
                .arg("postgres")
                .arg(dir.path())
                .status()
                .map_err(|error| error.to_string())?;
            if !status.success() {
                return Err(format!("cannot give {} to postgres", dir.path().display()));
            }
        }
        let cluster = TempCluster {
            dir,
            bin,
            port: harness::free_port(),
            as_postgres,
        };
        let data = cluster.data();
        cluster.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        cluster.pg_ctl("start")?;
        Ok(cluster)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let path = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&path);
            command
        } else {
            Command::new(&path)
        };
        let output = command
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .map_err(|error| format!("cannot run {}: {error}", path.display()))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{program} {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    fn pg_ctl(&self, action: &str) -> Result<(), String> {
        let data = self.data();
        let log = self.dir.path().join("log").display().to_string();
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D", &data, "-l", &log, "-o", &options, "-m", "fast", "-w", action,
            ],
        )
    }

    /// Stops the server (open connections are cut) and starts it again.
    fn restart(&self) {
        if let Err(reason) = self.pg_ctl("restart") {
            panic!("cannot restart the test's PostgreSQL: {reason}");
        }
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        let _ = self.pg_ctl("stop");
    }
}
