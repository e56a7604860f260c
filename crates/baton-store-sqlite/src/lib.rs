//! The embedded store: the lock table's changes persisted in SQLite, one file in the data
//! folder, in WAL mode with `synchronous = FULL`, so a commit that returned is on disk.
//!
//! This crate is a [`Persister`]: the engine in `baton-store` owns the lock table and calls
//! [`SqlitePersister::commit`] from its single committer thread with every change recorded
//! since the last commit, which is how group commit shares one fsync among many requests.
//!
//! **API boundary:** no rusqlite type leaves this crate; errors become [`PersistError`].
//! Data is checked after it is read: a row that cannot be decoded fails the load loudly rather
//! than being skipped, and the core's restore checks tokens against the counter.

use std::path::{Path, PathBuf};

use baton_core::{
    Change, HistoryRecord, Job, JobId, JobState, KeyQuota, Lease, LeaseEnd, LeaseId, LockName,
    LockRecord, Mode, Policy, Snapshot, StopReason, Ticket, TicketId,
};
use baton_store::{ApiKey, AuditEntry, KeyGrant, PersistError, Persister};
use rusqlite::{Connection, OptionalExtension, params};

/// The database file's name inside the data folder.
pub const DATABASE_FILE: &str = "baton.sqlite3";

/// The schema version this build writes. Migrations run in order from the stored version.
const SCHEMA_VERSION: i64 = 7;

const MIGRATIONS: &[&str] = &[
    // Version 1: the lock table.
    "
    CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) STRICT;
    CREATE TABLE locks (
        name TEXT PRIMARY KEY,
        capacity INTEGER NOT NULL,
        newest_token INTEGER NOT NULL,
        newest_granted INTEGER NOT NULL,
        delayed_until INTEGER
    ) STRICT;
    CREATE TABLE leases (
        id BLOB PRIMARY KEY,
        lock TEXT NOT NULL,
        owner TEXT NOT NULL,
        owner_key TEXT,
        token INTEGER NOT NULL UNIQUE,
        ttl_ms INTEGER NOT NULL,
        granted_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        request_id TEXT,
        ticket BLOB
    ) STRICT;
    CREATE TABLE tickets (
        id BLOB PRIMARY KEY,
        lock TEXT NOT NULL,
        owner TEXT NOT NULL,
        owner_key TEXT,
        ttl_ms INTEGER NOT NULL,
        request_id TEXT,
        lease_id BLOB NOT NULL,
        queued_at INTEGER NOT NULL,
        lapse_at INTEGER NOT NULL,
        seq INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE history (
        lock TEXT NOT NULL,
        owner TEXT NOT NULL,
        token INTEGER NOT NULL,
        granted_at INTEGER NOT NULL,
        ended_at INTEGER NOT NULL,
        end_reason TEXT NOT NULL
    ) STRICT;
    CREATE INDEX history_by_end ON history (ended_at);
    ",
    // Version 2: history remembers which lease ended and for which request, so a retry after a
    // restart hears that its lease ended instead of getting a second one (G7). Never shown.
    "
    ALTER TABLE history ADD COLUMN lease_id BLOB;
    ALTER TABLE history ADD COLUMN request_id TEXT;
    ",
    // Version 3: job records.
    "
    CREATE TABLE jobs (
        id BLOB PRIMARY KEY,
        name TEXT NOT NULL,
        lock TEXT NOT NULL,
        policy TEXT NOT NULL,
        owner TEXT NOT NULL,
        host TEXT,
        command TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        token INTEGER,
        lease_id BLOB,
        ticket_id BLOB,
        coalesced_into BLOB,
        stop TEXT,
        exit_code INTEGER,
        batch TEXT,
        request_id TEXT,
        created_at INTEGER NOT NULL,
        waiting_at INTEGER,
        started_at INTEGER,
        finished_at INTEGER,
        min_hold_ms INTEGER,
        release_at INTEGER,
        once_slot INTEGER,
        output_tail TEXT NOT NULL
    ) STRICT;
    ",
    // Version 4: API keys (only the SHA-256 of each secret) and the audit log. Grants are
    // `role:prefix` lines.
    "
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        secret_sha256 TEXT NOT NULL,
        grants TEXT NOT NULL,
        rate_per_sec INTEGER,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
    ) STRICT;
    CREATE TABLE audit_log (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT
    ) STRICT;
    ",
    // Version 5: the period of a job's once-per slot (slots are numbered per period, and a
    // slot belongs to a (lock, name, period)). Slots recorded before have no period and count
    // for nothing. The API key that queued each ticket, so that revoking the key cancels it.
    "
    ALTER TABLE jobs ADD COLUMN once_per_ms INTEGER;
    ALTER TABLE tickets ADD COLUMN api_key TEXT;
    ",
    // Version 6: per-key quotas. The API key each lease, lock (its creator) and job belongs to,
    // so the per-key counts are rebuilt after a restart; each key's own quotas (NULL: the
    // server's default). Rows written before have no key and count for none.
    "
    ALTER TABLE leases ADD COLUMN api_key TEXT;
    ALTER TABLE locks ADD COLUMN api_key TEXT;
    ALTER TABLE jobs ADD COLUMN api_key TEXT;
    ALTER TABLE api_keys ADD COLUMN leases_max INTEGER;
    ALTER TABLE api_keys ADD COLUMN waiters_max INTEGER;
    ALTER TABLE api_keys ADD COLUMN locks_max INTEGER;
    ALTER TABLE api_keys ADD COLUMN jobs_max INTEGER;
    ",
    // Version 7: the small value a holder publishes with its lease (a leader's address),
    // carried by its ticket until the grant and kept in history; and the mode of each lease,
    // ticket and ended hold (`exclusive` or `shared`, read-write locks). Rows written before
    // have no value and are exclusive, as every lease was.
    "
    ALTER TABLE leases ADD COLUMN value TEXT;
    ALTER TABLE tickets ADD COLUMN value TEXT;
    ALTER TABLE history ADD COLUMN value TEXT;
    ALTER TABLE leases ADD COLUMN mode TEXT NOT NULL DEFAULT 'exclusive';
    ALTER TABLE tickets ADD COLUMN mode TEXT NOT NULL DEFAULT 'exclusive';
    ALTER TABLE history ADD COLUMN mode TEXT NOT NULL DEFAULT 'exclusive';
    ",
];

/// The SQLite persister. See the crate documentation.
pub struct SqlitePersister {
    connection: Connection,
    path: PathBuf,
    /// Held for the persister's life: a second server on the same folder would keep its own
    /// lock table and break every guarantee, so it is refused at start.
    _folder_lock: std::fs::File,
}

impl std::fmt::Debug for SqlitePersister {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlitePersister")
            .field("path", &self.path)
            .finish()
    }
}

fn sql_error(context: &str) -> impl Fn(rusqlite::Error) -> PersistError + '_ {
    move |error| PersistError(format!("{context}: {error}"))
}

impl SqlitePersister {
    /// Opens (creating if needed) the database in `data_dir`, and brings its schema up to date.
    pub fn open(data_dir: &Path) -> Result<SqlitePersister, PersistError> {
        std::fs::create_dir_all(data_dir).map_err(|error| {
            PersistError(format!(
                "cannot create the data folder {}: {error}",
                data_dir.display()
            ))
        })?;
        let lock_path = data_dir.join("baton.lock");
        let folder_lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|error| {
                PersistError(format!("cannot open {}: {error}", lock_path.display()))
            })?;
        folder_lock.try_lock().map_err(|_| {
            PersistError(format!(
                "another baton server is using {}; stop it or choose another --data-dir",
                data_dir.display()
            ))
        })?;
        let path = data_dir.join(DATABASE_FILE);
        let connection = Connection::open(&path)
            .map_err(|error| PersistError(format!("cannot open {}: {error}", path.display())))?;
        // WAL with synchronous=FULL: a commit returns only once its WAL frames are fsynced.
        // busy_timeout guards against an operator's sqlite3 shell holding a read lock.
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;
                 PRAGMA foreign_keys = OFF;
                 PRAGMA busy_timeout = 5000;",
            )
            .map_err(sql_error("cannot configure the database"))?;
        let mode: String = connection
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .map_err(sql_error("cannot read the journal mode"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(PersistError(format!(
                "{} refuses WAL mode (got {mode}); is it on a network file system?",
                path.display()
            )));
        }
        let mut persister = SqlitePersister {
            connection,
            path,
            _folder_lock: folder_lock,
        };
        persister.migrate()?;
        Ok(persister)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn migrate(&mut self) -> Result<(), PersistError> {
        let version: i64 = self
            .connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(sql_error("cannot read the schema version"))?;
        if version > SCHEMA_VERSION {
            return Err(PersistError(format!(
                "{} has schema version {version}, newer than this baton understands ({SCHEMA_VERSION}); \
                 run a newer baton",
                self.path.display()
            )));
        }
        let transaction = self
            .connection
            .transaction()
            .map_err(sql_error("cannot migrate"))?;
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            transaction
                .execute_batch(migration)
                .map_err(sql_error("migration failed"))?;
            transaction
                .pragma_update(None, "user_version", index as i64 + 1)
                .map_err(sql_error("cannot record the schema version"))?;
        }
        transaction
            .commit()
            .map_err(sql_error("cannot commit the migration"))
    }
}

fn to_i64(value: u64) -> i64 {
    // Times are milliseconds since 1970 and tokens count grants: both far below 2^63.
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn count_i64(value: usize) -> i64 {
    // Quotas are counts of records in memory: far below 2^63.
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn bytes16(bytes: Vec<u8>, what: &str) -> Result<[u8; 16], PersistError> {
    <[u8; 16]>::try_from(bytes.as_slice())
        .map_err(|_| PersistError(format!("a stored {what} is not 16 bytes")))
}

fn name(text: String) -> Result<LockName, PersistError> {
    LockName::new(&text)
        .map_err(|error| PersistError(format!("a stored lock name is invalid: {error}")))
}

fn unsigned(value: i64, what: &str) -> Result<u64, PersistError> {
    u64::try_from(value).map_err(|_| PersistError(format!("a stored {what} is negative")))
}

fn grants_parse(text: &str) -> Result<Vec<KeyGrant>, PersistError> {
    KeyGrant::from_lines(text)
        .map_err(|line| PersistError(format!("a stored key grant is invalid: {line}")))
}

fn audit_row(
    row: &rusqlite::Row<'_>,
) -> rusqlite::Result<(i64, i64, String, String, String, Option<String>)> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
    ))
}

fn audit_entry(
    (seq, at, actor, action, target, detail): (i64, i64, String, String, String, Option<String>),
) -> Result<AuditEntry, PersistError> {
    Ok(AuditEntry {
        seq: unsigned(seq, "audit seq")?,
        at: unsigned(at, "time")?,
        actor,
        action,
        target,
        detail,
    })
}

impl Persister for SqlitePersister {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn put_key(&mut self, key: &ApiKey) -> Result<(), PersistError> {
        self.connection
            .prepare_cached(
                "INSERT OR REPLACE INTO api_keys (id, name, secret_sha256, grants, rate_per_sec, \
                 created_at, revoked_at, leases_max, waiters_max, locks_max, jobs_max) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )
            .and_then(|mut statement| {
                statement.execute(params![
                    key.id,
                    key.name,
                    key.secret_sha256,
                    KeyGrant::to_lines(&key.grants),
                    key.rate_per_sec,
                    to_i64(key.created_at),
                    key.revoked_at.map(to_i64),
                    key.quota.leases_max.map(count_i64),
                    key.quota.waiters_max.map(count_i64),
                    key.quota.locks_max.map(count_i64),
                    key.quota.jobs_max.map(count_i64),
                ])
            })
            .map_err(sql_error("cannot store an API key"))?;
        Ok(())
    }

    fn keys(&mut self) -> Result<Vec<ApiKey>, PersistError> {
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT id, name, secret_sha256, grants, rate_per_sec, created_at, revoked_at, \
                 leases_max, waiters_max, locks_max, jobs_max FROM api_keys ORDER BY created_at, id",
            )
            .map_err(sql_error("cannot read API keys"))?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, Option<i64>>(4)?,
                    row.get::<_, i64>(5)?,
                    row.get::<_, Option<i64>>(6)?,
                    [
                        row.get::<_, Option<i64>>(7)?,
                        row.get::<_, Option<i64>>(8)?,
                        row.get::<_, Option<i64>>(9)?,
                        row.get::<_, Option<i64>>(10)?,
                    ],
                ))
            })
            .map_err(sql_error("cannot read API keys"))?;
        let mut keys = Vec::new();
        for row in rows {
            let (id, name, secret_sha256, grants, rate, created_at, revoked_at, quota) =
                row.map_err(sql_error("cannot read an API key"))?;
            let [leases_max, waiters_max, locks_max, jobs_max] = quota.map(|value| {
                value
                    .map(|value| {
                        usize::try_from(value)
                            .map_err(|_| PersistError("a stored key quota is negative".into()))
                    })
                    .transpose()
            });
            keys.push(ApiKey {
                id,
                name,
                secret_sha256,
                grants: grants_parse(&grants)?,
                rate_per_sec: rate
                    .map(|rate| {
                        u32::try_from(rate)
                            .map_err(|_| PersistError("a stored key rate is out of range".into()))
                    })
                    .transpose()?,
                created_at: unsigned(created_at, "time")?,
                revoked_at: optional_time(revoked_at, "time")?,
                quota: KeyQuota {
                    leases_max: leases_max?,
                    waiters_max: waiters_max?,
                    locks_max: locks_max?,
                    jobs_max: jobs_max?,
                },
            });
        }
        Ok(keys)
    }

    fn append_audit(&mut self, entry: &AuditEntry) -> Result<AuditEntry, PersistError> {
        let row = self
            .connection
            .prepare_cached(
                "INSERT INTO audit_log (at, actor, action, target, detail) \
                 VALUES (?1, ?2, ?3, ?4, ?5) RETURNING seq, at, actor, action, target, detail",
            )
            .and_then(|mut statement| {
                statement.query_row(
                    params![
                        to_i64(entry.at),
                        entry.actor,
                        entry.action,
                        entry.target,
                        entry.detail
                    ],
                    audit_row,
                )
            })
            .map_err(sql_error("cannot append to the audit log"))?;
        audit_entry(row)
    }

    fn audit(
        &mut self,
        before_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, PersistError> {
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT seq, at, actor, action, target, detail FROM audit_log \
                 WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2",
            )
            .map_err(sql_error("cannot read the audit log"))?;
        let rows = statement
            .query_map(
                params![
                    before_seq.map_or(i64::MAX, to_i64),
                    i64::try_from(limit).unwrap_or(i64::MAX)
                ],
                audit_row,
            )
            .map_err(sql_error("cannot read the audit log"))?;
        let mut entries = Vec::new();
        for row in rows {
            entries.push(audit_entry(
                row.map_err(sql_error("cannot read the audit log"))?,
            )?);
        }
        Ok(entries)
    }

    fn load(&mut self) -> Result<Snapshot, PersistError> {
        let c = &self.connection;
        let meta = |key: &str| -> Result<u64, PersistError> {
            let value: Option<i64> = c
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                    row.get(0)
                })
                .optional()
                .map_err(sql_error("cannot read counters"))?;
            unsigned(value.unwrap_or(0), key)
        };
        let mut snapshot = Snapshot {
            next_token: meta("next_token")?.max(1),
            forgotten_token_floor: meta("forgotten_token_floor")?,
            ..Snapshot::default()
        };

        let mut statement = c
            .prepare(
                "SELECT name, capacity, newest_token, newest_granted, delayed_until, api_key \
                 FROM locks",
            )
            .map_err(sql_error("cannot read locks"))?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, Option<i64>>(4)?,
                    row.get::<_, Option<String>>(5)?,
                ))
            })
            .map_err(sql_error("cannot read locks"))?;
        for row in rows {
            let (lock, capacity, newest_token, newest_granted, delayed_until, api_key) =
                row.map_err(sql_error("cannot read a lock"))?;
            let capacity = u32::try_from(capacity)
                .map_err(|_| PersistError("a stored capacity is out of range".into()))?;
            snapshot.locks.push(LockRecord {
                name: name(lock)?,
                capacity,
                newest_token: unsigned(newest_token, "token")?,
                newest_granted: unsigned(newest_granted, "token")?,
                delayed_until: delayed_until.map(|v| unsigned(v, "time")).transpose()?,
                // How many slots a lock-delay held back is not stored: after a restart a
                // lock-delay in force holds back every slot until it ends (conservative),
                // whatever the capacity becomes meanwhile.
                delayed_slots: if delayed_until.is_some() { u32::MAX } else { 0 },
                api_key,
            });
        }

        let mut statement = c
            .prepare(
                "SELECT id, lock, owner, owner_key, token, ttl_ms, granted_at, expires_at, \
                 request_id, ticket, api_key, value, mode FROM leases",
            )
            .map_err(sql_error("cannot read leases"))?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, Vec<u8>>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, Option<String>>(3)?,
                    row.get::<_, i64>(4)?,
                    row.get::<_, i64>(5)?,
                    row.get::<_, i64>(6)?,
                    row.get::<_, i64>(7)?,
                    row.get::<_, Option<String>>(8)?,
                    row.get::<_, Option<Vec<u8>>>(9)?,
                    row.get::<_, Option<String>>(10)?,
                    row.get::<_, Option<String>>(11)?,
                    row.get::<_, String>(12)?,
                ))
            })
            .map_err(sql_error("cannot read leases"))?;
        for row in rows {
            let (
                id,
                lock,
                owner,
                owner_key,
                token,
                ttl,
                granted,
                expires,
                request_id,
                ticket,
                key,
                value,
                mode,
            ) = row.map_err(sql_error("cannot read a lease"))?;
            snapshot.leases.push(Lease {
                id: LeaseId(bytes16(id, "lease id")?),
                lock: name(lock)?,
                owner,
                owner_key,
                token: unsigned(token, "token")?,
                ttl_ms: unsigned(ttl, "ttl")?,
                granted_at: unsigned(granted, "time")?,
                expires_at: unsigned(expires, "time")?,
                request_id,
                ticket: ticket
                    .map(|t| bytes16(t, "ticket id").map(TicketId))
                    .transpose()?,
                api_key: key,
                value,
                mode: mode_of(&mode)?,
            });
        }

        let mut statement = c
            .prepare(
                "SELECT id, lock, owner, owner_key, ttl_ms, request_id, lease_id, queued_at, \
                 lapse_at, seq, api_key, value, mode FROM tickets",
            )
            .map_err(sql_error("cannot read tickets"))?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, Vec<u8>>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, Option<String>>(3)?,
                    row.get::<_, i64>(4)?,
                    row.get::<_, Option<String>>(5)?,
                    row.get::<_, Vec<u8>>(6)?,
                    row.get::<_, i64>(7)?,
                    row.get::<_, i64>(8)?,
                    row.get::<_, i64>(9)?,
                    row.get::<_, Option<String>>(10)?,
                    row.get::<_, Option<String>>(11)?,
                    row.get::<_, String>(12)?,
                ))
            })
            .map_err(sql_error("cannot read tickets"))?;
        for row in rows {
            let (
                id,
                lock,
                owner,
                owner_key,
                ttl,
                request_id,
                lease_id,
                queued,
                lapse,
                seq,
                key,
                value,
                mode,
            ) = row.map_err(sql_error("cannot read a ticket"))?;
            snapshot.tickets.push(Ticket {
                id: TicketId(bytes16(id, "ticket id")?),
                lock: name(lock)?,
                owner,
                owner_key,
                ttl_ms: unsigned(ttl, "ttl")?,
                request_id,
                lease_id: LeaseId(bytes16(lease_id, "lease id")?),
                queued_at: unsigned(queued, "time")?,
                lapse_at: unsigned(lapse, "time")?,
                seq: unsigned(seq, "sequence")?,
                waiter_gone: false,
                api_key: key,
                value,
                mode: mode_of(&mode)?,
            });
        }

        let mut statement = c
            .prepare(
                "SELECT lock, owner, token, granted_at, ended_at, end_reason, lease_id, \
                 request_id, value, mode FROM history ORDER BY ended_at",
            )
            .map_err(sql_error("cannot read history"))?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, i64>(4)?,
                    row.get::<_, String>(5)?,
                    row.get::<_, Option<Vec<u8>>>(6)?,
                    row.get::<_, Option<String>>(7)?,
                    row.get::<_, Option<String>>(8)?,
                    row.get::<_, String>(9)?,
                ))
            })
            .map_err(sql_error("cannot read history"))?;
        for row in rows {
            let (lock, owner, token, granted, ended, end, lease_id, request_id, value, mode) =
                row.map_err(sql_error("cannot read a history record"))?;
            snapshot.history.push(HistoryRecord {
                // Records written before version 2 have no lease id: an all-zero id matches
                // no lease (ids are 128 random bits).
                lease_id: LeaseId(
                    lease_id
                        .map(|id| bytes16(id, "lease id"))
                        .transpose()?
                        .unwrap_or([0; 16]),
                ),
                request_id,
                lock: name(lock)?,
                owner,
                token: unsigned(token, "token")?,
                granted_at: unsigned(granted, "time")?,
                ended_at: unsigned(ended, "time")?,
                end: LeaseEnd::parse(&end).ok_or_else(|| {
                    PersistError(format!("a stored end reason is unknown: {end}"))
                })?,
                value,
                mode: mode_of(&mode)?,
            });
        }
        snapshot.jobs = load_jobs(c)?;
        Ok(snapshot)
    }

    fn commit(&mut self, changes: &[Change]) -> Result<(), PersistError> {
        if changes.is_empty() {
            return Ok(());
        }
        let transaction = self
            .connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql_error("cannot begin a transaction"))?;
        for change in changes {
            apply(&transaction, change)?;
        }
        transaction.commit().map_err(sql_error("commit failed"))
    }
}

fn apply(c: &rusqlite::Transaction<'_>, change: &Change) -> Result<(), PersistError> {
    let result = match change {
        Change::LockPut(record) => c
            .prepare_cached(
                "INSERT INTO locks (name, capacity, newest_token, newest_granted, delayed_until, \
                 api_key) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (name) DO UPDATE SET \
                 capacity = excluded.capacity, newest_token = excluded.newest_token, \
                 newest_granted = excluded.newest_granted, delayed_until = excluded.delayed_until, \
                 api_key = excluded.api_key",
            )
            .and_then(|mut s| {
                s.execute(params![
                    record.name.as_str(),
                    record.capacity,
                    to_i64(record.newest_token),
                    to_i64(record.newest_granted),
                    record.delayed_until.map(to_i64),
                    record.api_key,
                ])
            }),
        Change::LockForget(lock) => c
            .prepare_cached("DELETE FROM locks WHERE name = ?1")
            .and_then(|mut s| s.execute([lock.as_str()])),
        Change::LeasePut(lease) => c
            .prepare_cached(
                "INSERT OR REPLACE INTO leases (id, lock, owner, owner_key, token, ttl_ms, \
                 granted_at, expires_at, request_id, ticket, api_key, value, mode) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    &lease.id.0[..],
                    lease.lock.as_str(),
                    lease.owner,
                    lease.owner_key,
                    to_i64(lease.token),
                    to_i64(lease.ttl_ms),
                    to_i64(lease.granted_at),
                    to_i64(lease.expires_at),
                    lease.request_id,
                    lease.ticket.map(|t| t.0.to_vec()),
                    lease.api_key,
                    lease.value,
                    lease.mode.as_str(),
                ])
            }),
        Change::LeaseDelete(id) => c
            .prepare_cached("DELETE FROM leases WHERE id = ?1")
            .and_then(|mut s| s.execute([&id.0[..]])),
        Change::TicketPut(ticket) => c
            .prepare_cached(
                "INSERT OR REPLACE INTO tickets (id, lock, owner, owner_key, ttl_ms, request_id, \
                 lease_id, queued_at, lapse_at, seq, api_key, value, mode) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    &ticket.id.0[..],
                    ticket.lock.as_str(),
                    ticket.owner,
                    ticket.owner_key,
                    to_i64(ticket.ttl_ms),
                    ticket.request_id,
                    &ticket.lease_id.0[..],
                    to_i64(ticket.queued_at),
                    to_i64(ticket.lapse_at),
                    to_i64(ticket.seq),
                    ticket.api_key,
                    ticket.value,
                    ticket.mode.as_str(),
                ])
            }),
        Change::TicketDelete(id) => c
            .prepare_cached("DELETE FROM tickets WHERE id = ?1")
            .and_then(|mut s| s.execute([&id.0[..]])),
        Change::Counters { next_token, forgotten_token_floor } => c
            .prepare_cached(
                "INSERT INTO meta (key, value) VALUES ('next_token', ?1), \
                 ('forgotten_token_floor', ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .and_then(|mut s| s.execute(params![to_i64(*next_token), to_i64(*forgotten_token_floor)])),
        Change::HistoryAppend(record) => c
            .prepare_cached(
                "INSERT INTO history (lock, owner, token, granted_at, ended_at, end_reason, \
                 lease_id, request_id, value, mode) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    record.lock.as_str(),
                    record.owner,
                    to_i64(record.token),
                    to_i64(record.granted_at),
                    to_i64(record.ended_at),
                    record.end.as_str(),
                    &record.lease_id.0[..],
                    record.request_id,
                    record.value,
                    record.mode.as_str(),
                ])
            }),
        Change::JobPut(job) => put_job(c, job),
        Change::JobDelete(id) => c
            .prepare_cached("DELETE FROM jobs WHERE id = ?1")
            .and_then(|mut s| s.execute([&id.0[..]])),
        Change::HistoryPrune { ended_before } => c
            .prepare_cached("DELETE FROM history WHERE ended_at < ?1")
            .and_then(|mut s| s.execute([to_i64(*ended_before)])),
    };
    result
        .map(|_| ())
        .map_err(|error| PersistError(format!("cannot write a change: {error}")))
}

fn put_job(c: &rusqlite::Transaction<'_>, job: &Job) -> rusqlite::Result<usize> {
    // The command line is a JSON array of strings: any argument survives, NUL bytes included.
    let command = serde_json::to_string(&job.command).unwrap_or_else(|_| "[]".into());
    c.prepare_cached(
        "INSERT OR REPLACE INTO jobs (id, name, lock, policy, owner, host, command, state, reason, \
         token, lease_id, ticket_id, coalesced_into, stop, exit_code, batch, request_id, \
         created_at, waiting_at, started_at, finished_at, min_hold_ms, release_at, once_slot, \
         output_tail, once_per_ms, api_key) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, \
         ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27)",
    )?
    .execute(params![
        &job.id.0[..],
        job.name,
        job.lock.as_str(),
        job.policy.as_str(),
        job.owner,
        job.host,
        command,
        job.state.as_str(),
        job.reason,
        job.token.map(to_i64),
        job.lease.map(|id| id.0.to_vec()),
        job.ticket.map(|id| id.0.to_vec()),
        job.coalesced_into.map(|id| id.0.to_vec()),
        job.stop.map(StopReason::as_str),
        job.exit_code,
        job.batch,
        job.request_id,
        to_i64(job.created_at),
        job.waiting_at.map(to_i64),
        job.started_at.map(to_i64),
        job.finished_at.map(to_i64),
        job.min_hold_ms.map(to_i64),
        job.release_at.map(to_i64),
        job.once_slot.map(to_i64),
        job.output_tail,
        job.once_per_ms.map(to_i64),
        job.api_key,
    ])
}

fn mode_of(text: &str) -> Result<Mode, PersistError> {
    Mode::parse(text).ok_or_else(|| PersistError(format!("a stored lease mode is unknown: {text}")))
}

fn optional_time(value: Option<i64>, what: &str) -> Result<Option<u64>, PersistError> {
    value.map(|v| unsigned(v, what)).transpose()
}

fn load_jobs(c: &Connection) -> Result<Vec<Job>, PersistError> {
    let mut statement = c
        .prepare(
            "SELECT id, name, lock, policy, owner, host, command, state, reason, token, lease_id, \
             ticket_id, coalesced_into, stop, exit_code, batch, request_id, created_at, \
             waiting_at, started_at, finished_at, min_hold_ms, release_at, once_slot, output_tail, \
             once_per_ms, api_key FROM jobs",
        )
        .map_err(sql_error("cannot read jobs"))?;
    let mut rows = statement.query([]).map_err(sql_error("cannot read jobs"))?;
    let mut jobs = Vec::new();
    while let Some(row) = rows.next().map_err(sql_error("cannot read a job"))? {
        let get = |e: rusqlite::Error| PersistError(format!("cannot read a job: {e}"));
        let id16 = |v: Option<Vec<u8>>, what: &str| v.map(|b| bytes16(b, what)).transpose();
        let command: String = row.get(6).map_err(get)?;
        let policy: String = row.get(3).map_err(get)?;
        let state: String = row.get(7).map_err(get)?;
        let stop: Option<String> = row.get(13).map_err(get)?;
        jobs.push(Job {
            id: JobId(bytes16(row.get(0).map_err(get)?, "job id")?),
            name: row.get(1).map_err(get)?,
            lock: name(row.get(2).map_err(get)?)?,
            policy: Policy::parse(&policy)
                .ok_or_else(|| PersistError(format!("a stored job policy is unknown: {policy}")))?,
            owner: row.get(4).map_err(get)?,
            host: row.get(5).map_err(get)?,
            command: serde_json::from_str(&command)
                .map_err(|e| PersistError(format!("a stored command line is invalid: {e}")))?,
            state: JobState::parse(&state)
                .ok_or_else(|| PersistError(format!("a stored job state is unknown: {state}")))?,
            reason: row.get(8).map_err(get)?,
            token: optional_time(row.get(9).map_err(get)?, "token")?,
            lease: id16(row.get(10).map_err(get)?, "lease id")?.map(LeaseId),
            ticket: id16(row.get(11).map_err(get)?, "ticket id")?.map(TicketId),
            coalesced_into: id16(row.get(12).map_err(get)?, "job id")?.map(JobId),
            stop: match stop.as_deref() {
                None => None,
                Some(text) => Some(StopReason::parse(text).ok_or_else(|| {
                    PersistError(format!("a stored stop reason is unknown: {text}"))
                })?),
            },
            exit_code: row.get(14).map_err(get)?,
            batch: row.get(15).map_err(get)?,
            request_id: row.get(16).map_err(get)?,
            created_at: unsigned(row.get(17).map_err(get)?, "time")?,
            waiting_at: optional_time(row.get(18).map_err(get)?, "time")?,
            started_at: optional_time(row.get(19).map_err(get)?, "time")?,
            finished_at: optional_time(row.get(20).map_err(get)?, "time")?,
            min_hold_ms: optional_time(row.get(21).map_err(get)?, "min hold")?,
            release_at: optional_time(row.get(22).map_err(get)?, "time")?,
            once_slot: optional_time(row.get(23).map_err(get)?, "slot")?,
            output_tail: row.get(24).map_err(get)?,
            // Not stored: the core counts a restored job's output from its tail.
            output_total_bytes: 0,
            once_per_ms: optional_time(row.get(25).map_err(get)?, "period")?,
            api_key: row.get(26).map_err(get)?,
        });
    }
    Ok(jobs)
}
