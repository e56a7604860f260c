//! The schema, its versioned migrations, and the fencing epoch.
//!
//! Migrations run at start under a transaction-scoped advisory lock, so servers starting together
//! apply each version once. A database written by a newer baton is refused rather than misread.
//!
//! **Fencing across fail-over.** Tokens come from the sequence `token_seq`. A grant is
//! acknowledged only after its commit, and with synchronous replication the commit (and the
//! sequence advance logged before it) is on the standby too. With asynchronous replication a
//! promoted standby may not have seen the newest sequence values, so every connection checks the
//! database's timeline (it changes at every promotion) against the one recorded in `meta`; the
//! first server to see a new timeline moves the sequence forward by [`EPOCH_GAP`] before any
//! grant on it, so every token granted after a fail-over is greater than every token granted
//! before it, acknowledged or not.

use baton_store::StoreError;
use tokio_postgres::Client;

use crate::rows::db;

/// How far the token sequence moves when a new database timeline is seen: more tokens than the
/// old primary can have granted beyond what its standby received (2^32, about 5 days of grants at
/// 10,000 a second of replication lag).
pub const EPOCH_GAP: i64 = 1 << 32;

/// The newest schema version this baton knows.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Each entry takes the schema from the previous version to the next.
const MIGRATIONS: &[&str] = &[
    // Version 1: the lock table, jobs and the counters.
    "
    CREATE SEQUENCE token_seq;
    CREATE SEQUENCE ticket_seq;
    CREATE TABLE locks (
        name text PRIMARY KEY,
        capacity integer NOT NULL,
        newest_token bigint NOT NULL,
        newest_granted bigint NOT NULL,
        delayed_until bigint,
        idle_since bigint NOT NULL
    );
    CREATE INDEX locks_delayed ON locks (delayed_until) WHERE delayed_until IS NOT NULL;
    CREATE INDEX locks_idle ON locks (idle_since);
    CREATE TABLE leases (
        id bytea PRIMARY KEY,
        lock text NOT NULL,
        owner text NOT NULL,
        owner_key text,
        token bigint NOT NULL,
        ttl_ms bigint NOT NULL,
        granted_at bigint NOT NULL,
        expires_at bigint NOT NULL,
        request_id text,
        ticket bytea
    );
    CREATE INDEX leases_lock ON leases (lock);
    CREATE INDEX leases_expiry ON leases (expires_at);
    CREATE TABLE tickets (
        id bytea PRIMARY KEY,
        lock text NOT NULL,
        owner text NOT NULL,
        owner_key text,
        ttl_ms bigint NOT NULL,
        request_id text,
        lease_id bytea NOT NULL,
        queued_at bigint NOT NULL,
        lapse_at bigint NOT NULL,
        seq bigint NOT NULL
    );
    CREATE INDEX tickets_lock ON tickets (lock);
    CREATE INDEX tickets_lapse ON tickets (lapse_at);
    CREATE TABLE ended_tickets (
        id bytea PRIMARY KEY,
        lock text NOT NULL,
        end_kind text NOT NULL,
        lease_id bytea,
        collected boolean NOT NULL,
        ended_at bigint NOT NULL
    );
    CREATE INDEX ended_tickets_end ON ended_tickets (ended_at);
    CREATE TABLE requests (
        request_id text PRIMARY KEY,
        lock text NOT NULL,
        kind text NOT NULL,
        target bytea NOT NULL,
        at bigint NOT NULL
    );
    CREATE INDEX requests_at ON requests (at);
    CREATE TABLE history (
        id bigserial PRIMARY KEY,
        lease_id bytea NOT NULL,
        request_id text,
        lock text NOT NULL,
        owner text NOT NULL,
        token bigint NOT NULL,
        granted_at bigint NOT NULL,
        ended_at bigint NOT NULL,
        end_kind text NOT NULL
    );
    CREATE INDEX history_lock ON history (lock, ended_at DESC);
    CREATE INDEX history_lease ON history (lease_id);
    CREATE INDEX history_end ON history (ended_at);
    CREATE TABLE jobs (
        id bytea PRIMARY KEY,
        name text NOT NULL,
        lock text NOT NULL,
        policy text NOT NULL,
        owner text NOT NULL,
        host text,
        command text NOT NULL,
        state text NOT NULL,
        reason text,
        token bigint,
        lease_id bytea,
        ticket_id bytea,
        coalesced_into bytea,
        stop text,
        exit_code integer,
        batch text,
        request_id text,
        created_at bigint NOT NULL,
        waiting_at bigint,
        started_at bigint,
        finished_at bigint,
        min_hold_ms bigint,
        release_at bigint,
        once_slot bigint,
        output_tail text NOT NULL
    );
    CREATE INDEX jobs_open ON jobs (lock)
        WHERE state IN ('queued', 'waiting', 'running') OR release_at IS NOT NULL;
    CREATE INDEX jobs_created ON jobs (created_at DESC, id DESC);
    CREATE INDEX jobs_request ON jobs (request_id) WHERE request_id IS NOT NULL;
    CREATE INDEX jobs_once ON jobs (name, once_slot) WHERE once_slot IS NOT NULL;
    CREATE INDEX jobs_batch ON jobs (batch) WHERE batch IS NOT NULL;
    CREATE INDEX jobs_release ON jobs (release_at) WHERE release_at IS NOT NULL;
    INSERT INTO meta (key, value) VALUES ('forgotten_token_floor', 0);
    ",
    // Version 2: API keys (only the SHA-256 of each secret; grants as `role:prefix` lines) and
    // the audit log.
    "
    CREATE TABLE api_keys (
        id text PRIMARY KEY,
        name text NOT NULL,
        secret_sha256 text NOT NULL,
        grants text NOT NULL,
        rate_per_sec integer,
        created_at bigint NOT NULL,
        revoked_at bigint
    );
    CREATE TABLE audit_log (
        seq bigserial PRIMARY KEY,
        at bigint NOT NULL,
        actor text NOT NULL,
        action text NOT NULL,
        target text NOT NULL,
        detail text
    );
    ",
    // Version 3: a ticket whose waiter went away is not granted (it lapses when its turn
    // comes), and a lock-delay holds back only the slots of the holders that ended uncleanly.
    // A lock-delay in force before this version keeps holding back every slot, as it did.
    "
    ALTER TABLE tickets ADD COLUMN waiter_gone boolean NOT NULL DEFAULT false;
    ALTER TABLE locks ADD COLUMN delayed_slots integer NOT NULL DEFAULT 0;
    UPDATE locks SET delayed_slots = capacity WHERE delayed_until IS NOT NULL;
    ",
    // Version 4: the period of a job's once-per slot (slots are numbered per period, and a
    // slot belongs to a (lock, name, period)). Slots recorded before have no period and count
    // for nothing. An index over lock names in byte order, so that a listing by prefix reads
    // only that range (whatever the database's collation). The API key that queued each
    // ticket, so that revoking the key cancels its tickets.
    "
    ALTER TABLE jobs ADD COLUMN once_per_ms bigint;
    DROP INDEX jobs_once;
    CREATE INDEX jobs_once ON jobs (lock, name, once_per_ms, once_slot)
        WHERE once_slot IS NOT NULL AND once_per_ms IS NOT NULL;
    CREATE INDEX locks_name_c ON locks (name COLLATE \"C\");
    ALTER TABLE tickets ADD COLUMN api_key text;
    CREATE INDEX tickets_api_key ON tickets (api_key) WHERE api_key IS NOT NULL;
    ",
];

/// Checks a schema name: it is spliced into SQL, so only plain lower-case identifiers.
pub fn valid_schema(schema: &str) -> bool {
    !schema.is_empty()
        && schema.len() <= 63
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !schema.as_bytes()[0].is_ascii_digit()
}

/// Creates the schema if needed and applies every migration it lacks.
pub async fn migrate(client: &mut Client, schema: &str) -> Result<(), StoreError> {
    let transaction = client
        .transaction()
        .await
        .map_err(db("cannot start the migration"))?;
    transaction
        .execute(
            "SELECT pg_advisory_xact_lock(hashtext('baton-migrate:' || $1::text))",
            &[&schema],
        )
        .await
        .map_err(db("cannot take the migration lock"))?;
    transaction
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             SET LOCAL search_path TO {schema};
             CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value bigint NOT NULL);"
        ))
        .await
        .map_err(db("cannot create the schema"))?;
    let version: i64 = transaction
        .query_opt("SELECT value FROM meta WHERE key = 'schema_version'", &[])
        .await
        .map_err(db("cannot read the schema version"))?
        .map_or(0, |row| row.get(0));
    if version > SCHEMA_VERSION {
        return Err(StoreError::Unavailable(format!(
            "the database schema {schema} is version {version}, newer than this baton knows \
             ({SCHEMA_VERSION}); upgrade baton"
        )));
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        transaction
            .batch_execute(migration)
            .await
            .map_err(db("cannot apply a migration"))?;
        tracing::info!(schema, version = index + 1, "applied a schema migration");
    }
    transaction
        .execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', $1)
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            &[&SCHEMA_VERSION],
        )
        .await
        .map_err(db("cannot record the schema version"))?;
    transaction
        .commit()
        .await
        .map_err(db("cannot commit the migration"))
}

/// Checks the database timeline and, the first time a new one is seen, moves the token sequence
/// forward by [`EPOCH_GAP`] (see the module documentation). Runs on every new connection, before
/// the connection is used. Fails on a standby: a server must talk to the primary.
pub async fn ensure_epoch(client: &mut Client) -> Result<(), StoreError> {
    let timeline: i64 = client
        .query_one(
            "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint",
            &[],
        )
        .await
        .map_err(db(
            "cannot read the database timeline (is this a read-only standby?)",
        ))?
        .get(0);
    let transaction = client
        .transaction()
        .await
        .map_err(db("cannot check the fencing epoch"))?;
    let recorded: Option<i64> = transaction
        .query_opt(
            "SELECT value FROM meta WHERE key = 'timeline' FOR UPDATE",
            &[],
        )
        .await
        .map_err(db("cannot read the fencing epoch"))?
        .map(|row| row.get(0));
    match recorded {
        Some(recorded) if recorded >= timeline => {}
        Some(recorded) => {
            transaction
                .query_one(
                    "SELECT setval('token_seq', (SELECT last_value FROM token_seq) + $1)",
                    &[&EPOCH_GAP],
                )
                .await
                .map_err(db("cannot move the token sequence"))?;
            transaction
                .execute(
                    "UPDATE meta SET value = $1 WHERE key = 'timeline'",
                    &[&timeline],
                )
                .await
                .map_err(db("cannot record the fencing epoch"))?;
            tracing::warn!(
                from = recorded,
                to = timeline,
                "the database timeline changed (a fail-over): fencing tokens jump ahead"
            );
        }
        None => {
            transaction
                .execute(
                    "INSERT INTO meta (key, value) VALUES ('timeline', $1)
                     ON CONFLICT (key) DO NOTHING",
                    &[&timeline],
                )
                .await
                .map_err(db("cannot record the fencing epoch"))?;
        }
    }
    transaction
        .commit()
        .await
        .map_err(db("cannot commit the fencing epoch"))
}
