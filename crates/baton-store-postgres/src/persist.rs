//! [`PgPersister`]: PostgreSQL as the engine's durable log.
//!
//! The engine (`baton_store::Engine`) owns the lock table in memory and hands this persister
//! batches of [`Change`]s from its committer thread. [`PgPersister::commit`] writes a batch in
//! one transaction with a handful of multi-row statements, whatever its size: the changes are
//! folded to the last word per row (a lock forgotten and created again in one batch is one
//! upsert), then each table gets at most one `DELETE … WHERE id = ANY($1)` and one
//! `INSERT … SELECT * FROM UNNEST($1, $2, …) ON CONFLICT … DO UPDATE`. The statements are
//! prepared once per connection and pipelined: `BEGIN`, the fence check and every write go out
//! together, so a commit costs two round trips (that, and `COMMIT`).
//!
//! **Threads.** The engine calls a persister from its committer thread, from `spawn_blocking`,
//! and (in `Engine::open`) from whatever thread opens it, which may be a tokio worker, where
//! blocking on a runtime would panic. So the persister owns one thread with its own
//! current-thread runtime and its one connection; each call sends a request over a channel and
//! waits for the reply on a plain channel, which blocks safely anywhere. The connection's driver
//! runs on that runtime between requests too. A connection found broken is replaced at the next
//! call; a call that fails on it fails (the engine's retry and stop logic decides what follows).
//!
//! **Fencing.** With a [`Fence`], every write (a commit, a key, an audit entry, the epoch jump at
//! load) first runs `SELECT 1 FROM leader WHERE id = 1 AND node = $1 AND epoch = $2 FOR SHARE` in
//! the same transaction, and when the row is not there (another server took the leadership)
//! rolls back and fails with an error for which [`PersistError::is_deposed`] is true. The share
//! lock holds a new leader's takeover (an `UPDATE` of that row) until the commit in flight is
//! done, so no commit of a deposed server can land after its successor's first.
//!
//! **Load** reads every table into a [`Snapshot`] in one transaction, after the fencing-epoch
//! check of [`crate::schema`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use baton_core::{
    Change, HistoryRecord, Job, JobId, Lease, LeaseId, LockName, LockRecord, Snapshot, Ticket,
    TicketId,
};
use baton_store::{ApiKey, AuditEntry, PersistError, Persister, StoreError};
use tokio::sync::mpsc;
use tokio_postgres::{Client, NoTls, Statement};

use crate::rows::{self, db};
use crate::schema;
use crate::{PgOptions, pg_config};

/// The leadership a server commits under: its node name and the epoch of its term, as the
/// `leader` row holds them while it is the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The leader's node name (`leader.node`).
    pub node: String,
    /// The term's epoch (`leader.epoch`).
    pub epoch: i64,
}

type Reply<T> = std::sync::mpsc::SyncSender<Result<T, PersistError>>;

enum Request {
    Load(Reply<Snapshot>),
    Commit(Box<Batch>, Reply<()>),
    PutKey(rows::KeyRow, Reply<()>),
    Keys(Reply<Vec<ApiKey>>),
    AppendAudit(rows::AuditRow, Reply<AuditEntry>),
    Audit(Option<i64>, i64, Reply<Vec<AuditEntry>>),
}

/// The PostgreSQL persister. See the module documentation.
pub struct PgPersister {
    requests: Option<mpsc::UnboundedSender<Request>>,
    thread: Option<std::thread::JoinHandle<()>>,
    schema: String,
}

impl std::fmt::Debug for PgPersister {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgPersister")
            .field("schema", &self.schema)
            .finish()
    }
}

impl PgPersister {
    /// Connects to `options.url`, creates the schema `options.schema` if needed and applies the
    /// migrations it lacks. With a `fence`, every write is fenced by it (module documentation).
    /// Blocks until connected; safe to call on any thread, a tokio worker included.
    pub fn connect(options: &PgOptions, fence: Option<Fence>) -> Result<PgPersister, StoreError> {
        if !schema::valid_schema(&options.schema) {
            return Err(StoreError::Unavailable(format!(
                "invalid schema name {:?}: use lower-case letters, digits and _",
                options.schema
            )));
        }
        let mut worker = Worker {
            config: pg_config(options)?,
            schema: options.schema.clone(),
            fence,
            link: None,
        };
        let (requests, mut receiver) = mpsc::unbounded_channel::<Request>();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<(), PersistError>>(1);
        let thread = std::thread::Builder::new()
            .name("baton-postgres".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = ready_tx.send(Err(PersistError(format!(
                            "cannot start the database runtime: {error}"
                        ))));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let migrated = worker.migrate().await;
                    let failed = migrated.is_err();
                    let _ = ready_tx.send(migrated);
                    if failed {
                        return;
                    }
                    while let Some(request) = receiver.recv().await {
                        worker.serve(request).await;
                    }
                });
            })
            .map_err(|error| {
                StoreError::Unavailable(format!("cannot start the database thread: {error}"))
            })?;
        let ready = ready_rx.recv().unwrap_or_else(|_| {
            Err(PersistError(
                "the database thread ended before connecting".into(),
            ))
        });
        let persister = PgPersister {
            requests: Some(requests),
            thread: Some(thread),
            schema: options.schema.clone(),
        };
        ready.map_err(|error| StoreError::Unavailable(error.0))?;
        Ok(persister)
    }

    /// The schema this persister writes.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    fn call<T>(&self, request: impl FnOnce(Reply<T>) -> Request) -> Result<T, PersistError> {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        self.requests
            .as_ref()
            .and_then(|requests| requests.send(request(reply)).ok())
            .ok_or_else(|| PersistError("the database thread has stopped".into()))?;
        answer
            .recv()
            .unwrap_or_else(|_| Err(PersistError("the database thread has stopped".into())))
    }
}

impl Drop for PgPersister {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop once the request in progress is answered.
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Persister for PgPersister {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn load(&mut self) -> Result<Snapshot, PersistError> {
        self.call(Request::Load)
    }

    fn commit(&mut self, changes: &[Change]) -> Result<(), PersistError> {
        if changes.is_empty() {
            return Ok(());
        }
        let batch = Box::new(Batch::fold(changes)?);
        self.call(|reply| Request::Commit(batch, reply))
    }

    fn put_key(&mut self, key: &ApiKey) -> Result<(), PersistError> {
        let row = rows::KeyRow::new(key);
        self.call(|reply| Request::PutKey(row, reply))
    }

    fn keys(&mut self) -> Result<Vec<ApiKey>, PersistError> {
        self.call(Request::Keys)
    }

    fn append_audit(&mut self, entry: &AuditEntry) -> Result<AuditEntry, PersistError> {
        let row = rows::AuditRow::new(entry);
        self.call(|reply| Request::AppendAudit(row, reply))
    }

    fn audit(
        &mut self,
        before_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, PersistError> {
        let before = before_seq.map(rows::i64_of);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call(|reply| Request::Audit(before, limit, reply))
    }
}

/// A batch of changes folded to one word per row, as one array per column.
#[derive(Default)]
struct Batch {
    locks: rows::LockRows,
    locks_gone: Vec<String>,
    leases: rows::LeaseRows,
    leases_gone: Vec<Vec<u8>>,
    tickets: rows::TicketRows,
    tickets_gone: Vec<Vec<u8>>,
    jobs: rows::JobRows,
    jobs_gone: Vec<Vec<u8>>,
    history: rows::HistoryRows,
    /// History that ended before this goes (the highest prune of the batch).
    prune_before: Option<i64>,
    /// `(next_token, forgotten_token_floor)`, the last of the batch.
    counters: Option<(i64, i64)>,
}

impl Batch {
    /// Folds `changes` in order: the last put or delete of each row wins, and a prune removes
    /// the history appended before it in the batch (it is deleted before the appends are
    /// written, so it never touches the ones after it).
    fn fold(changes: &[Change]) -> Result<Batch, PersistError> {
        let mut locks: HashMap<&LockName, Option<&LockRecord>> = HashMap::new();
        let mut leases: HashMap<LeaseId, Option<&Lease>> = HashMap::new();
        let mut tickets: HashMap<TicketId, Option<&Ticket>> = HashMap::new();
        let mut jobs: HashMap<JobId, Option<&Job>> = HashMap::new();
        let mut history: Vec<&HistoryRecord> = Vec::new();
        let mut batch = Batch::default();
        for change in changes {
            match change {
                Change::LockPut(record) => {
                    locks.insert(&record.name, Some(record));
                }
                Change::LockForget(name) => {
                    locks.insert(name, None);
                }
                Change::LeasePut(lease) => {
                    leases.insert(lease.id, Some(lease));
                }
                Change::LeaseDelete(id) => {
                    leases.insert(*id, None);
                }
                Change::TicketPut(ticket) => {
                    tickets.insert(ticket.id, Some(ticket));
                }
                Change::TicketDelete(id) => {
                    tickets.insert(*id, None);
                }
                Change::JobPut(job) => {
                    jobs.insert(job.id, Some(job));
                }
                Change::JobDelete(id) => {
                    jobs.insert(*id, None);
                }
                Change::HistoryAppend(record) => history.push(record),
                Change::HistoryPrune { ended_before } => {
                    history.retain(|record| record.ended_at >= *ended_before);
                    let before = rows::i64_of(*ended_before);
                    batch.prune_before = Some(batch.prune_before.map_or(before, |b| b.max(before)));
                }
                Change::Counters {
                    next_token,
                    forgotten_token_floor,
                } => {
                    batch.counters = Some((
                        rows::i64_of(*next_token),
                        rows::i64_of(*forgotten_token_floor),
                    ));
                }
            }
        }
        for (name, record) in locks {
            match record {
                Some(record) => batch.locks.push(record),
                None => batch.locks_gone.push(name.as_str().to_owned()),
            }
        }
        for (id, lease) in leases {
            match lease {
                Some(lease) => batch.leases.push(lease),
                None => batch.leases_gone.push(id.0.to_vec()),
            }
        }
        for (id, ticket) in tickets {
            match ticket {
                Some(ticket) => batch.tickets.push(ticket),
                None => batch.tickets_gone.push(id.0.to_vec()),
            }
        }
        for (id, job) in jobs {
            match job {
                Some(job) => batch.jobs.push(job)?,
                None => batch.jobs_gone.push(id.0.to_vec()),
            }
        }
        for record in history {
            batch.history.push(record);
        }
        Ok(batch)
    }
}

const FENCE: &str = "SELECT 1 FROM leader WHERE id = 1 AND node = $1 AND epoch = $2 FOR SHARE";

const COUNTERS: &str = "INSERT INTO meta (key, value) \
     VALUES ('next_token', $1), ('forgotten_token_floor', $2) \
     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value";

/// The statements of a connection, prepared once.
struct Statements {
    fence: Statement,
    counters: Statement,
    lock_upsert: Statement,
    lock_delete: Statement,
    lease_upsert: Statement,
    lease_delete: Statement,
    ticket_upsert: Statement,
    ticket_delete: Statement,
    job_upsert: Statement,
    job_delete: Statement,
    history_insert: Statement,
    history_prune: Statement,
    key_upsert: Statement,
    audit_insert: Statement,
}

impl Statements {
    async fn prepare(client: &Client) -> Result<Statements, PersistError> {
        let prepare = |sql: &'static str| async move {
            client
                .prepare(sql)
                .await
                .map_err(db("cannot prepare a statement"))
        };
        Ok(Statements {
            fence: prepare(FENCE).await?,
            counters: prepare(COUNTERS).await?,
            lock_upsert: prepare(rows::LOCK_UPSERT).await?,
            lock_delete: prepare(rows::LOCK_DELETE).await?,
            lease_upsert: prepare(rows::LEASE_UPSERT).await?,
            lease_delete: prepare(rows::LEASE_DELETE).await?,
            ticket_upsert: prepare(rows::TICKET_UPSERT).await?,
            ticket_delete: prepare(rows::TICKET_DELETE).await?,
            job_upsert: prepare(rows::JOB_UPSERT).await?,
            job_delete: prepare(rows::JOB_DELETE).await?,
            history_insert: prepare(rows::HISTORY_INSERT).await?,
            history_prune: prepare(rows::HISTORY_PRUNE).await?,
            key_upsert: prepare(rows::KEY_UPSERT).await?,
            audit_insert: prepare(rows::AUDIT_INSERT).await?,
        })
    }
}

struct Link {
    client: Client,
    statements: Statements,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// The database thread's side: one connection, re-opened when found broken.
struct Worker {
    config: tokio_postgres::Config,
    schema: String,
    fence: Option<Fence>,
    link: Option<Link>,
}

/// A statement parameter.
type Sql = dyn tokio_postgres::types::ToSql + Sync;

type Pending<'a> = Pin<Box<dyn Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'a>>;

impl Worker {
    async fn connect(&self) -> Result<Link, PersistError> {
        let (client, connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(db("cannot connect to the database"))?;
        let driver = tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(%error, "the database connection failed");
            }
        });
        // The statements name tables of the schema, so they are prepared after migrating.
        let statements = match Statements::prepare(&client).await {
            Ok(statements) => statements,
            Err(error) => {
                driver.abort();
                return Err(error);
            }
        };
        Ok(Link {
            client,
            statements,
            driver,
        })
    }

    async fn migrate(&mut self) -> Result<(), PersistError> {
        let (mut client, connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(db("cannot connect to the database"))?;
        let driver = tokio::spawn(connection);
        let migrated = schema::migrate(&mut client, &self.schema).await;
        drop(client);
        let _ = driver.await;
        migrated?;
        self.link = Some(self.connect().await?);
        Ok(())
    }

    /// The connection, re-opened if it was found closed.
    async fn link(&mut self) -> Result<&Link, PersistError> {
        if self
            .link
            .as_ref()
            .is_some_and(|link| link.client.is_closed())
        {
            self.link = None;
        }
        if self.link.is_none() {
            self.link = Some(self.connect().await?);
        }
        self.link
            .as_ref()
            .ok_or_else(|| PersistError("no database connection".into()))
    }

    async fn serve(&mut self, request: Request) {
        match request {
            Request::Load(reply) => {
                let _ = reply.send(self.load().await);
            }
            Request::Commit(batch, reply) => {
                let _ = reply.send(self.commit(&batch).await);
            }
            Request::PutKey(row, reply) => {
                let _ = reply.send(self.put_key(&row).await);
            }
            Request::Keys(reply) => {
                let _ = reply.send(self.keys().await);
            }
            Request::AppendAudit(row, reply) => {
                let _ = reply.send(self.append_audit(&row).await);
            }
            Request::Audit(before, limit, reply) => {
                let _ = reply.send(self.audit(before, limit).await);
            }
        }
    }

    /// Drops a connection found broken, for the next call to replace.
    fn forget_broken(&mut self) {
        if self
            .link
            .as_ref()
            .is_some_and(|link| link.client.is_closed())
        {
            self.link = None;
        }
    }

    async fn commit(&mut self, batch: &Batch) -> Result<(), PersistError> {
        let fence = self.fence.clone();
        let link = self.link().await?;
        let outcome = write_on(link, fence.as_ref(), batch_writes(link, batch)).await;
        self.forget_broken();
        outcome
    }

    async fn put_key(&mut self, row: &rows::KeyRow) -> Result<(), PersistError> {
        let fence = self.fence.clone();
        let link = self.link().await?;
        let write: Pending<'_> = Box::pin(
            link.client
                .execute_raw(&link.statements.key_upsert, row.params()),
        );
        let outcome = write_on(link, fence.as_ref(), vec![write]).await;
        self.forget_broken();
        outcome
    }

    async fn append_audit(&mut self, row: &rows::AuditRow) -> Result<AuditEntry, PersistError> {
        // The entry comes back from its INSERT … RETURNING, so this one is not pipelined: a
        // transaction of its own, fenced like every write.
        let fence = self.fence.clone();
        let link = self.link().await?;
        let outcome = async {
            link.client
                .batch_execute("BEGIN")
                .await
                .map_err(db("cannot begin a transaction"))?;
            let result = async {
                check_fence(link, fence.as_ref()).await?;
                let row = link
                    .client
                    .query_one(&link.statements.audit_insert, &row.params())
                    .await
                    .map_err(db("cannot append to the audit log"))?;
                rows::audit_of(&row)
            }
            .await;
            finish(link, result).await
        }
        .await;
        self.forget_broken();
        outcome
    }

    async fn keys(&mut self) -> Result<Vec<ApiKey>, PersistError> {
        let link = self.link().await?;
        link.client
            .query(rows::KEY_SELECT, &[])
            .await
            .map_err(db("cannot read API keys"))?
            .iter()
            .map(rows::key_of)
            .collect()
    }

    async fn audit(
        &mut self,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, PersistError> {
        let link = self.link().await?;
        link.client
            .query(rows::AUDIT_SELECT, &[&before, &limit])
            .await
            .map_err(db("cannot read the audit log"))?
            .iter()
            .map(rows::audit_of)
            .collect()
    }

    async fn load(&mut self) -> Result<Snapshot, PersistError> {
        let fence = self.fence.clone();
        let link = self.link().await?;
        let timeline = schema::timeline(&link.client).await?;
        let outcome = async {
            link.client
                .batch_execute("BEGIN")
                .await
                .map_err(db("cannot begin a transaction"))?;
            let result = load_in(link, fence.as_ref(), timeline).await;
            finish(link, result).await
        }
        .await;
        self.forget_broken();
        outcome
    }
}

/// Fails with a deposed error unless the fence's leadership row is there (and share-locks it).
async fn check_fence(link: &Link, fence: Option<&Fence>) -> Result<(), PersistError> {
    let Some(fence) = fence else {
        return Ok(());
    };
    let held = link
        .client
        .execute(&link.statements.fence, &[&fence.node, &fence.epoch])
        .await
        .map_err(db("cannot check the leadership"))?;
    if held == 0 {
        return Err(deposed(fence));
    }
    Ok(())
}

fn deposed(fence: &Fence) -> PersistError {
    PersistError::deposed(format!(
        "{} no longer leads with epoch {}; nothing was written",
        fence.node, fence.epoch
    ))
}

/// Commits when `result` is a success, rolls back otherwise.
async fn finish<T>(link: &Link, result: Result<T, PersistError>) -> Result<T, PersistError> {
    match result {
        Ok(value) => {
            link.client
                .batch_execute("COMMIT")
                .await
                .map_err(db("commit failed"))?;
            Ok(value)
        }
        Err(error) => {
            // A rollback that fails (a broken connection) leaves nothing behind either.
            let _ = link.client.batch_execute("ROLLBACK").await;
            Err(error)
        }
    }
}

/// The writes of a batch, one statement per table and kind at most, in no particular order:
/// the batch is folded, so no two statements touch the same row.
fn batch_writes<'a>(link: &'a Link, batch: &'a Batch) -> Vec<Pending<'a>> {
    let s = &link.statements;
    let c = &link.client;
    let mut pending: Vec<Pending<'a>> = Vec::new();
    if let Some(before) = &batch.prune_before {
        pending.push(Box::pin(c.execute_raw(&s.history_prune, [before as &Sql])));
    }
    if let Some((next_token, floor)) = &batch.counters {
        pending.push(Box::pin(
            c.execute_raw(&s.counters, [next_token as &Sql, floor as &Sql]),
        ));
    }
    if !batch.locks_gone.is_empty() {
        pending.push(Box::pin(
            c.execute_raw(&s.lock_delete, [&batch.locks_gone as &Sql]),
        ));
    }
    for (statement, ids) in [
        (&s.lease_delete, &batch.leases_gone),
        (&s.ticket_delete, &batch.tickets_gone),
        (&s.job_delete, &batch.jobs_gone),
    ] {
        if !ids.is_empty() {
            pending.push(Box::pin(c.execute_raw(statement, [ids as &Sql])));
        }
    }
    if !batch.locks.is_empty() {
        pending.push(Box::pin(
            c.execute_raw(&s.lock_upsert, batch.locks.params()),
        ));
    }
    if !batch.leases.is_empty() {
        pending.push(Box::pin(
            c.execute_raw(&s.lease_upsert, batch.leases.params()),
        ));
    }
    if !batch.tickets.is_empty() {
        pending.push(Box::pin(
            c.execute_raw(&s.ticket_upsert, batch.tickets.params()),
        ));
    }
    if !batch.jobs.is_empty() {
        pending.push(Box::pin(c.execute_raw(&s.job_upsert, batch.jobs.params())));
    }
    if !batch.history.is_empty() {
        pending.push(Box::pin(
            c.execute_raw(&s.history_insert, batch.history.params()),
        ));
    }
    pending
}

/// Runs `writes` in one transaction, behind the fence check when there is a fence: `BEGIN`, the
/// check and the writes are pipelined, then `COMMIT` (or `ROLLBACK` when anything failed or the
/// fence refused).
async fn write_on<'a>(
    link: &'a Link,
    fence: Option<&'a Fence>,
    writes: Vec<Pending<'a>>,
) -> Result<(), PersistError> {
    let mut pending: Vec<Pending<'a>> = vec![Box::pin(async {
        link.client.batch_execute("BEGIN").await.map(|()| 0)
    })];
    if let Some(fence) = fence {
        pending.push(Box::pin(link.client.execute_raw(
            &link.statements.fence,
            [&fence.node as &Sql, &fence.epoch as &Sql],
        )));
    }
    pending.extend(writes);
    // Polled together, the requests go out in this order on the connection without waiting for
    // each other's answers; PostgreSQL runs them in order.
    let results = futures_util::future::join_all(pending).await;
    let mut outcome = Ok(());
    for (index, result) in results.into_iter().enumerate() {
        match (result, fence) {
            (Err(error), _) => {
                outcome = Err(db("cannot write a batch")(error));
                break;
            }
            (Ok(0), Some(fence)) if index == 1 => {
                outcome = Err(deposed(fence));
                break;
            }
            (Ok(_), _) => {}
        }
    }
    finish(link, outcome).await
}

async fn load_in(
    link: &Link,
    fence: Option<&Fence>,
    timeline: i64,
) -> Result<Snapshot, PersistError> {
    let c = &link.client;
    check_fence(link, fence).await?;
    let meta = |key: &'static str| async move {
        c.query_opt("SELECT value FROM meta WHERE key = $1 FOR UPDATE", &[&key])
            .await
            .map_err(db("cannot read the counters"))
            .map(|row| row.map(|row| row.get::<_, i64>(0)))
    };
    let mut next_token = rows::u64_of(meta("next_token").await?.unwrap_or(1), "next token")?.max(1);
    match meta("timeline").await? {
        Some(recorded) if recorded >= timeline => {}
        recorded => {
            if let Some(recorded) = recorded {
                // A promoted standby: it may lack the newest grants of the old primary.
                next_token = next_token.saturating_add(schema::EPOCH_GAP);
                tracing::warn!(
                    from = recorded,
                    to = timeline,
                    "the database timeline changed (a fail-over): fencing tokens jump ahead"
                );
            }
            c.execute(
                "INSERT INTO meta (key, value) VALUES ('next_token', $1), ('timeline', $2) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                &[&rows::i64_of(next_token), &timeline],
            )
            .await
            .map_err(db("cannot record the fencing epoch"))?;
        }
    }
    let forgotten_token_floor = rows::u64_of(
        meta("forgotten_token_floor").await?.unwrap_or(0),
        "token floor",
    )?;
    let read = |sql: &'static str| async move {
        c.query(sql, &[])
            .await
            .map_err(db("cannot read the lock table"))
    };
    let (locks, leases, tickets, history, jobs) = futures_util::future::join5(
        read(rows::LOCK_SELECT),
        read(rows::LEASE_SELECT),
        read(rows::TICKET_SELECT),
        read(rows::HISTORY_SELECT),
        read(rows::JOB_SELECT),
    )
    .await;
    Ok(Snapshot {
        next_token,
        forgotten_token_floor,
        locks: locks?.iter().map(rows::lock_of).collect::<Result<_, _>>()?,
        leases: leases?
            .iter()
            .map(rows::lease_of)
            .collect::<Result<_, _>>()?,
        tickets: tickets?
            .iter()
            .map(rows::ticket_of)
            .collect::<Result<_, _>>()?,
        history: history?
            .iter()
            .map(rows::history_of)
            .collect::<Result<_, _>>()?,
        jobs: jobs?.iter().map(rows::job_of).collect::<Result<_, _>>()?,
    })
}
