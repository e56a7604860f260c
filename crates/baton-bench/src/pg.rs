//! PostgreSQL for the benchmark: fresh schemas (dropped afterwards), and the plain-SQL peers
//! of baton's PostgreSQL store, driven by the bench's clients straight against the database
//! through one shared pool of `--database-pool` connections:
//!
//! * `pg-sql` / `pg-sql-10ms`: a durable lease table. Acquire is one statement
//!   (`INSERT … ON CONFLICT (name) DO UPDATE … WHERE the lease has expired RETURNING token`,
//!   the fencing token from a sequence), release one `DELETE`. Plain SQL cannot wait for a
//!   row to be deleted, so a waiter polls: it sleeps the poll interval between attempts.
//! * `pg-advisory`: `pg_advisory_lock` (session level, blocking in the database): the waiter
//!   holds a pooled connection while it waits, and the holder keeps it until it unlocks.
//!   Nothing is written, so it is not durable (and has no fencing token): it shows what waiting
//!   inside the database costs, not a lease table.
//!
//! Every statement is its own transaction, committed with the server's `synchronous_commit`
//! (`on` here: a commit returns once its WAL is flushed).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use crate::held::{Held, LEASE_TTL_MS};

/// The database used when neither `--database-url` nor `BATON_BENCH_DATABASE_URL` says.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A schema name nobody else uses: `baton_bench_<pid>_<unix s>_<seq>` (lower case, digits
/// and `_`, as `baton server --database-schema` requires).
pub fn fresh_schema() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    format!(
        "baton_bench_{}_{secs}_{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// One connection, its driver spawned on the current runtime.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) =
        tokio::time::timeout(Duration::from_secs(10), tokio_postgres::connect(url, NoTls))
            .await
            .context("connecting to the database: timed out after 10 s")?
            .context("connecting to the database")?;
    tokio::spawn(connection);
    Ok(client)
}

/// The values of some server settings (`SHOW name` each), over one connection.
pub async fn settings(
    url: &str,
    names: &[&str],
) -> Result<serde_json::Map<String, serde_json::Value>> {
    let client = connect(url).await?;
    let mut out = serde_json::Map::new();
    for name in names {
        let row = client.query_one(&format!("SHOW {name}"), &[]).await?;
        out.insert((*name).to_owned(), row.try_get::<_, String>(0)?.into());
    }
    Ok(out)
}

/// A pool of `size` connections to `url`.
pub fn pool(url: &str, size: usize) -> Result<Pool> {
    let config: tokio_postgres::Config = url.parse().context("parsing the database URL")?;
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size.max(1))
        .build()
        .context("building the pool")
}

/// Creates `schema` with the lease table and the fencing sequence. The table is an ordinary
/// (logged) table: every change is in the WAL, flushed at commit.
pub async fn create_lease_table(url: &str, schema: &str) -> Result<()> {
    let client = connect(url).await?;
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {schema};
             CREATE SEQUENCE {schema}.fence;
             CREATE TABLE {schema}.leases (
                 name text PRIMARY KEY,
                 owner text NOT NULL,
                 token bigint NOT NULL,
                 expires_at timestamptz NOT NULL
             );"
        ))
        .await
        .with_context(|| format!("creating the lease table in schema {schema}"))?;
    Ok(())
}

/// Drops `schema` and everything in it. Runs on a thread of its own with its own runtime, so
/// that it works from `Drop`, inside or outside the bench's runtime.
pub fn drop_schema_blocking(url: &str, schema: &str) -> Result<()> {
    let (url, schema) = (url.to_owned(), schema.to_owned());
    let thread = std::thread::spawn(move || -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let client = connect(&url).await?;
            tokio::time::timeout(
                Duration::from_secs(20),
                client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")),
            )
            .await
            .context("DROP SCHEMA timed out after 20 s")??;
            Ok(())
        })
    });
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("the DROP SCHEMA thread panicked"))?
}

/// How a [`PgLock`] takes its lock.
#[derive(Debug, Clone, Copy)]
pub enum PgMode {
    /// The lease table; a waiter sleeps this long between attempts.
    Table {
        /// Sleep between two attempts on a busy lock.
        poll: Duration,
    },
    /// `pg_advisory_lock`, waiting in the database.
    Advisory,
}

/// A client of a plain-SQL peer. Every client of a workload shares one pool.
pub struct PgLock {
    /// The shared pool (the same size as baton's `--database-pool`).
    pool: Pool,
    /// How the lock is taken.
    mode: PgMode,
    /// Owner written into the lease row.
    owner: String,
    /// The acquire statement (lease table).
    acquire_sql: String,
    /// The release statement (lease table).
    release_sql: String,
    /// The connection holding an advisory lock, between acquire and release.
    session: Option<deadpool_postgres::Object>,
}

impl PgLock {
    /// A client of the lease table in `schema` (or of advisory locks) over `pool`.
    pub fn new(pool: Pool, schema: &str, mode: PgMode, owner: String) -> PgLock {
        PgLock {
            pool,
            mode,
            owner,
            acquire_sql: format!(
                "INSERT INTO {schema}.leases AS l (name, owner, token, expires_at)
                 VALUES ($1, $2, nextval('{schema}.fence'), now() + make_interval(secs => $3))
                 ON CONFLICT (name) DO UPDATE
                     SET owner = EXCLUDED.owner, token = EXCLUDED.token,
                         expires_at = EXCLUDED.expires_at
                     WHERE l.expires_at <= now()
                 RETURNING token"
            ),
            release_sql: format!("DELETE FROM {schema}.leases WHERE name = $1 AND token = $2"),
            session: None,
        }
    }

    /// A pooled connection.
    async fn conn(&self) -> Result<deadpool_postgres::Object> {
        self.pool
            .get()
            .await
            .map_err(|e| anyhow::anyhow!("getting a pooled connection: {e}"))
    }

    /// Checks the database answers (which also opens pool connections before the clock).
    pub async fn prepare(&mut self) -> Result<()> {
        let conn = self.conn().await?;
        conn.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// One acquire attempt: the lease when `name` is free (or its lease expired), `None` when
    /// busy. Advisory locks wait instead (the lock is uncontended where this is used).
    pub async fn try_acquire(&mut self, name: &str) -> Result<Option<Held>> {
        match self.mode {
            PgMode::Table { .. } => {
                let conn = self.conn().await?;
                let stmt = conn.prepare_cached(&self.acquire_sql).await?;
                let ttl_s = LEASE_TTL_MS as f64 / 1_000.0;
                let row = conn.query_opt(&stmt, &[&name, &self.owner, &ttl_s]).await?;
                match row {
                    None => Ok(None),
                    Some(row) => {
                        let token: i64 = row.try_get(0)?;
                        Ok(Some(Held {
                            key: name.to_owned(),
                            token: token.to_string(),
                        }))
                    }
                }
            }
            PgMode::Advisory => self.advisory_lock(name).await.map(Some),
        }
    }

    /// Acquires `name`, polling the lease table or waiting in `pg_advisory_lock`.
    pub async fn acquire_wait(&mut self, name: &str) -> Result<Held> {
        match self.mode {
            PgMode::Table { poll } => loop {
                if let Some(held) = self.try_acquire(name).await? {
                    return Ok(held);
                }
                tokio::time::sleep(poll).await;
            },
            PgMode::Advisory => self.advisory_lock(name).await,
        }
    }

    /// `pg_advisory_lock` on a key hashed from `name`, keeping the connection.
    async fn advisory_lock(&mut self, name: &str) -> Result<Held> {
        if self.session.is_some() {
            bail!("advisory client already holds a lock");
        }
        let conn = self.conn().await?;
        let stmt = conn
            .prepare_cached("SELECT pg_advisory_lock(hashtextextended($1, 0))")
            .await?;
        conn.execute(&stmt, &[&name]).await?;
        self.session = Some(conn);
        Ok(Held {
            key: name.to_owned(),
            token: String::new(),
        })
    }

    /// Deletes the lease row (it must be ours) or unlocks the advisory lock.
    pub async fn release(&mut self, held: &Held) -> Result<()> {
        match self.mode {
            PgMode::Table { .. } => {
                let token: i64 = held.token.parse().context("lease token")?;
                let conn = self.conn().await?;
                let stmt = conn.prepare_cached(&self.release_sql).await?;
                let deleted = conn.execute(&stmt, &[&held.key, &token]).await?;
                if deleted != 1 {
                    bail!("release of {} found another holder", held.key);
                }
                Ok(())
            }
            PgMode::Advisory => {
                let conn = self
                    .session
                    .take()
                    .context("advisory release without a lock")?;
                let stmt = conn
                    .prepare_cached("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
                    .await?;
                let unlocked: bool = conn.query_one(&stmt, &[&held.key]).await?.try_get(0)?;
                if !unlocked {
                    bail!("advisory unlock of {} found no lock", held.key);
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_schemas_are_distinct_valid_names() {
        let (a, b) = (fresh_schema(), fresh_schema());
        assert_ne!(a, b);
        for s in [a, b] {
            assert!(s.starts_with("baton_bench_"), "{s}");
            assert!(
                s.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_'),
                "{s}"
            );
        }
    }
}
