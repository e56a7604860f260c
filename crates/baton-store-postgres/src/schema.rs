//! The schema, its versioned migrations, and the fencing epoch.
//!
//! Migrations run at start under a transaction-scoped advisory lock, so servers starting together
//! apply each version once. A database written by a newer baton is refused rather than misread.
//!
//! **Fencing across fail-over.** The next fencing token is a row of `meta` (`next_token`),
//! written in the same transaction as every grant. A grant is acknowledged only after its commit,
//! and with synchronous replication that commit is on the standby too. With asynchronous
//! replication a promoted standby may lack the newest commits, and with them the newest
//! `next_token`; so every load of the table compares the database's timeline (it changes at every
//! promotion) with the one recorded in `meta`, and on a new timeline moves `next_token` forward by
//! [`EPOCH_GAP`], durably, before the table is handed to the engine. Every token granted after a
//! fail-over is then greater than every token granted before it, acknowledged or not. A server
//! that stays up through a fail-over keeps granting from its own counter, which is ahead of
//! everything it granted; its next load (a restart, a new leader) makes the jump.
use baton_store::PersistError;
use tokio_postgres::Client;

use crate::rows::db;

/// How far the token sequence moves when a new database timeline is seen: more tokens than the
/// old primary can have granted beyond what its standby received (2^32, about 5 days of grants at
/// 10,000 a second of replication lag).
pub const EPOCH_GAP: u64 = 1 << 32;

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
    // Version 5: one engine owns the lock table in memory and this database is its durable
    // log (`persist.rs`). The token counter moves from a sequence to `meta` (`next_token`: the
    // next token to grant); the ticket sequence, the ended tickets and request ids (the engine
    // rebuilds them from leases and history) and the lock's idle time go, and with them every
    // index but the one that retention deletes by; no index encodes a job state any more.
    // The leadership row, which fences every commit of an elected server.
    "
    INSERT INTO meta (key, value)
        SELECT 'next_token', CASE WHEN is_called THEN last_value + 1 ELSE last_value END
        FROM token_seq
        ON CONFLICT (key) DO NOTHING;
    DROP SEQUENCE token_seq;
    DROP SEQUENCE ticket_seq;
    DROP TABLE ended_tickets;
    DROP TABLE requests;
    ALTER TABLE locks DROP COLUMN idle_since;
    DROP INDEX locks_delayed, locks_name_c, leases_lock, leases_expiry, tickets_lock,
        tickets_lapse, tickets_api_key, history_lock, history_lease, jobs_open, jobs_created,
        jobs_request, jobs_once, jobs_batch, jobs_release;
    CREATE TABLE leader (
        id smallint PRIMARY KEY CHECK (id = 1),
        node text NOT NULL,
        url text NOT NULL,
        epoch bigint NOT NULL,
        expires_at timestamptz NOT NULL
    );
    ",
    // Version 6: per-key quotas. The API key whose request made each lease, lock and job (the
    // core counts a key's records from them), and a key's own quotas.
    "
    ALTER TABLE leases ADD COLUMN api_key text;
    ALTER TABLE locks ADD COLUMN api_key text;
    ALTER TABLE jobs ADD COLUMN api_key text;
    ALTER TABLE api_keys ADD COLUMN leases_max bigint, ADD COLUMN waiters_max bigint,
        ADD COLUMN locks_max bigint, ADD COLUMN jobs_max bigint;
    ",
    // Version 7: the small value a holder publishes with its lease (a leader's address),
    // carried by its ticket until the grant and kept in history; and the mode of each lease,
    // ticket and ended hold (`exclusive` or `shared`, read-write locks). Rows written before
    // have no value and are exclusive, as every lease was.
    "
    ALTER TABLE leases ADD COLUMN value text, ADD COLUMN mode text NOT NULL DEFAULT 'exclusive';
    ALTER TABLE tickets ADD COLUMN value text, ADD COLUMN mode text NOT NULL DEFAULT 'exclusive';
    ALTER TABLE history ADD COLUMN value text, ADD COLUMN mode text NOT NULL DEFAULT 'exclusive';
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
pub async fn migrate(client: &mut Client, schema: &str) -> Result<(), PersistError> {
    migrate_to(client, schema, SCHEMA_VERSION).await
}

/// [`migrate`], stopping at `target` (tests build a database of an older baton with it).
#[doc(hidden)]
pub async fn migrate_to(
    client: &mut Client,
    schema: &str,
    target: i64,
) -> Result<(), PersistError> {
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
        return Err(PersistError(format!(
            "the database schema {schema} is version {version}, newer than this baton knows \
             ({SCHEMA_VERSION}); upgrade baton"
        )));
    }
    let wanted = usize::try_from(target.clamp(0, SCHEMA_VERSION)).unwrap_or(0);
    for (index, migration) in MIGRATIONS
        .iter()
        .enumerate()
        .take(wanted)
        .skip(version as usize)
    {
        transaction
            .batch_execute(migration)
            .await
            .map_err(db("cannot apply a migration"))?;
        tracing::info!(schema, version = index + 1, "applied a schema migration");
    }
    transaction
        .execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', $1)
             ON CONFLICT (key) DO UPDATE SET value = GREATEST(meta.value, EXCLUDED.value)",
            &[&target.clamp(0, SCHEMA_VERSION)],
        )
        .await
        .map_err(db("cannot record the schema version"))?;
    transaction
        .commit()
        .await
        .map_err(db("cannot commit the migration"))
}

/// The database's timeline: it changes at every promotion of a standby. Fails on a standby
/// (a server must talk to the primary).
pub async fn timeline(client: &Client) -> Result<i64, PersistError> {
    Ok(client
        .query_one(
            "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint",
            &[],
        )
        .await
        .map_err(db(
            "cannot read the database timeline (is this a read-only standby?)",
        ))?
        .get(0))
}
