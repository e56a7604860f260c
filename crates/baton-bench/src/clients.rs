//! Lock clients for every target, one per client task, each on its own connection (the
//! PostgreSQL peers share one pool instead).
//!
//! * [`HttpLock`] speaks baton's `/v1` contract; it drives both baton and the minimal peer.
//! * [`RedisLock`] is the usual single-instance Redis recipe: `SET key token NX PX ttl`, release
//!   by compare-and-delete in Lua, and a short random sleep between attempts while busy (polling,
//!   not FIFO).
//! * [`EtcdLock`] is etcd's own lock recipe (the v3lock service behind `concurrency.Mutex`),
//!   driven through etcd's gRPC-gateway JSON API: one lease per client for the whole run, then
//!   `lock`/`unlock` per cycle; waiters queue by key revision.
//! * [`PgLock`] is a plain-SQL peer straight against PostgreSQL, every client of a workload
//!   sharing one pool (see [`crate::pg`]).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use baton_proto::{AcquireRequest, WaitRequest};
use serde::Deserialize;

use crate::held::{Held, LEASE_TTL_MS};
use crate::pg::PgLock;

/// A client of one target.
pub enum LockClient {
    /// baton or the minimal peer.
    Http(HttpLock),
    /// Redis.
    Redis(Box<RedisLock>),
    /// etcd.
    Etcd(EtcdLock),
    /// A plain-SQL peer straight against PostgreSQL (lease table or advisory locks).
    Pg(Box<PgLock>),
}

impl LockClient {
    /// Opens the connection (and takes an etcd lease) before the clock starts.
    pub async fn prepare(&mut self) -> Result<()> {
        match self {
            LockClient::Http(c) => c.prepare().await,
            LockClient::Redis(c) => c.prepare().await,
            LockClient::Etcd(c) => c.prepare().await,
            LockClient::Pg(c) => c.prepare().await,
        }
    }

    /// Acquires `name` if it is free right now; `None` when busy. etcd's recipe has no
    /// try-lock, so it waits (the lock is uncontended in this workload anyway).
    pub async fn try_acquire(&mut self, name: &str) -> Result<Option<Held>> {
        match self {
            LockClient::Http(c) => c.acquire(name, false).await,
            LockClient::Redis(c) => c.try_acquire(name).await,
            LockClient::Etcd(c) => c.lock(name).await.map(Some),
            LockClient::Pg(c) => c.try_acquire(name).await,
        }
    }

    /// Acquires `name`, waiting as long as it takes: in the server's FIFO queue (baton, minimal,
    /// etcd), in the database's lock queue (pg-advisory) or by retrying (Redis, pg-sql).
    pub async fn acquire_wait(&mut self, name: &str) -> Result<Held> {
        match self {
            LockClient::Http(c) => c
                .acquire(name, true)
                .await?
                .context("acquire returned busy despite queueing"),
            LockClient::Redis(c) => loop {
                if let Some(held) = c.try_acquire(name).await? {
                    return Ok(held);
                }
                c.backoff().await;
            },
            LockClient::Etcd(c) => c.lock(name).await,
            LockClient::Pg(c) => c.acquire_wait(name).await,
        }
    }

    /// Releases what [`LockClient::try_acquire`] or [`LockClient::acquire_wait`] returned.
    pub async fn release(&mut self, held: Held) -> Result<()> {
        match self {
            LockClient::Http(c) => c.release(&held).await,
            LockClient::Redis(c) => c.release(&held).await,
            LockClient::Etcd(c) => c.unlock(&held).await,
            LockClient::Pg(c) => c.release(&held).await,
        }
    }

    /// Gives back per-client resources (the etcd lease).
    pub async fn finish(&mut self) -> Result<()> {
        match self {
            LockClient::Etcd(c) => c.revoke().await,
            _ => Ok(()),
        }
    }
}

/// Long-poll the contended workload asks for.
const LONG_POLL_MS: u64 = 30_000;

/// A keep-alive HTTP/1.1 client with at most one idle connection, for one client task.
fn http_client(timeout: Duration) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1)
        .tcp_nodelay(true)
        .timeout(timeout)
        .build()
        .context("building an HTTP client")
}

/// Percent-encodes `s` as one path segment (everything but RFC 3986 unreserved characters).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Standard base64 with padding, for etcd's `bytes` fields.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Fails with the status and body of an unexpected answer.
async fn unexpected(what: &str, resp: reqwest::Response) -> anyhow::Error {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    anyhow::anyhow!("{what}: unexpected {status}: {}", body.trim())
}

/// The part of a lease or ticket answer the bench reads.
#[derive(Deserialize)]
struct IdOnly {
    /// The id of the lease or ticket.
    id: String,
}

/// 200 answer: `{"lease": {...}}`.
#[derive(Deserialize)]
struct LeaseAnswer {
    /// The granted lease.
    lease: IdOnly,
}

/// 202 answer: `{"ticket": {...}}`.
#[derive(Deserialize)]
struct TicketAnswer {
    /// The ticket holding the client's place in the queue.
    ticket: IdOnly,
}

/// A client of baton's `/v1` contract.
pub struct HttpLock {
    /// This client task's own connection pool (one keep-alive connection).
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT`.
    base: String,
    /// Owner label sent with every acquire.
    owner: String,
}

impl HttpLock {
    /// A client of the server at `base` (`http://127.0.0.1:PORT`), labelled `owner`.
    pub fn new(base: &str, owner: String) -> Result<HttpLock> {
        Ok(HttpLock {
            http: http_client(Duration::from_millis(LONG_POLL_MS * 2))?,
            base: base.to_owned(),
            owner,
        })
    }

    /// Checks the server answers, which also opens the connection.
    async fn prepare(&mut self) -> Result<()> {
        let resp = self
            .http
            .get(format!("{}/healthz", self.base))
            .send()
            .await?;
        if !resp.status().is_success() {
            return Err(unexpected("healthz", resp).await);
        }
        Ok(())
    }

    /// Acquires `name`; with `queue`, long-polls in the FIFO queue until granted.
    async fn acquire(&mut self, name: &str, queue: bool) -> Result<Option<Held>> {
        let req = AcquireRequest {
            owner: self.owner.clone(),
            ttl_ms: Some(LEASE_TTL_MS),
            wait_ms: queue.then_some(LONG_POLL_MS),
            queue: queue.then_some(true),
            ..AcquireRequest::default()
        };
        let url = format!("{}/v1/locks/{}/acquire", self.base, encode_segment(name));
        let mut resp = self.http.post(url).json(&req).send().await?;
        loop {
            match resp.status().as_u16() {
                200 => {
                    let a: LeaseAnswer = resp.json().await.context("decoding a lease")?;
                    return Ok(Some(Held {
                        key: a.lease.id,
                        token: String::new(),
                    }));
                }
                202 if queue => {
                    let t: TicketAnswer = resp.json().await.context("decoding a ticket")?;
                    let url = format!(
                        "{}/v1/tickets/{}/wait",
                        self.base,
                        encode_segment(&t.ticket.id)
                    );
                    let body = WaitRequest {
                        wait_ms: Some(LONG_POLL_MS),
                    };
                    resp = self.http.post(url).json(&body).send().await?;
                }
                409 if !queue => return Ok(None),
                _ => return Err(unexpected("acquire", resp).await),
            }
        }
    }

    /// Releases a lease; anything but 200 is an error.
    async fn release(&mut self, held: &Held) -> Result<()> {
        let url = format!(
            "{}/v1/leases/{}/release",
            self.base,
            encode_segment(&held.key)
        );
        let resp = self.http.post(url).send().await?;
        if resp.status().as_u16() != 200 {
            return Err(unexpected("release", resp).await);
        }
        // Drain the body so the connection goes back to the pool.
        resp.bytes().await?;
        Ok(())
    }
}

/// The compare-and-delete release of the Redis lock recipe.
const REDIS_RELEASE: &str = r#"if redis.call("get",KEYS[1]) == ARGV[1] then return redis.call("del",KEYS[1]) else return 0 end"#;

/// A client of the Redis lock recipe.
pub struct RedisLock {
    /// Where the server is.
    client: redis::Client,
    /// This client task's own connection, once prepared.
    conn: Option<redis::aio::MultiplexedConnection>,
    /// The compare-and-delete release script (EVALSHA, EVAL on first use).
    script: redis::Script,
    /// Prefix of the random-enough value each acquire stores.
    owner: String,
    /// Acquires so far, to make each stored value unique.
    seq: u64,
    /// xorshift state for the retry sleep.
    rng: u64,
    /// Shortest retry sleep, ms.
    retry_min_ms: u64,
    /// Longest retry sleep, ms.
    retry_max_ms: u64,
}

impl RedisLock {
    /// A client of the Redis server on `127.0.0.1:port`, sleeping a random
    /// `retry_min_ms..=retry_max_ms` between attempts on a busy lock.
    pub fn new(
        port: u16,
        owner: String,
        seed: u64,
        retry_min_ms: u64,
        retry_max_ms: u64,
    ) -> Result<RedisLock> {
        Ok(RedisLock {
            client: redis::Client::open(format!("redis://127.0.0.1:{port}/"))?,
            conn: None,
            script: redis::Script::new(REDIS_RELEASE),
            owner,
            seq: 0,
            rng: seed | 1,
            retry_min_ms,
            retry_max_ms: retry_max_ms.max(retry_min_ms),
        })
    }

    /// Opens the connection and checks it with PING.
    async fn prepare(&mut self) -> Result<()> {
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(Duration::from_secs(30)))
            .set_connection_timeout(Some(Duration::from_secs(5)));
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .context("connecting to redis")?;
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        self.conn = Some(conn);
        Ok(())
    }

    /// The connection, or an error when [`RedisLock::prepare`] has not run.
    fn conn(&mut self) -> Result<&mut redis::aio::MultiplexedConnection> {
        self.conn.as_mut().context("redis client not prepared")
    }

    /// One `SET name value NX PX ttl`: the lock when it was free, `None` when busy.
    async fn try_acquire(&mut self, name: &str) -> Result<Option<Held>> {
        self.seq += 1;
        let token = format!("{}:{}", self.owner, self.seq);
        let reply: Option<String> = redis::cmd("SET")
            .arg(name)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(LEASE_TTL_MS)
            .query_async(self.conn()?)
            .await?;
        Ok(reply.map(|_| Held {
            key: name.to_owned(),
            token,
        }))
    }

    /// Sleeps a random time between attempts (xorshift; no need for a real RNG here).
    async fn backoff(&mut self) {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let span = self.retry_max_ms - self.retry_min_ms + 1;
        let ms = self.retry_min_ms + self.rng % span;
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// Compare-and-delete; finding another holder's value is an error.
    async fn release(&mut self, held: &Held) -> Result<()> {
        let mut invocation = self.script.key(&held.key);
        invocation.arg(&held.token);
        let conn = self.conn.as_mut().context("redis client not prepared")?;
        let deleted: i64 = invocation.invoke_async(conn).await?;
        if deleted != 1 {
            bail!("release of {} found another holder", held.key);
        }
        Ok(())
    }
}

/// A client of etcd's lock recipe through the gRPC-gateway JSON API.
pub struct EtcdLock {
    /// This client task's own connection pool (one keep-alive connection).
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT`.
    base: String,
    /// The lease every lock of this client is attached to, once granted.
    lease_id: Option<String>,
    /// TTL asked for that lease, seconds.
    lease_ttl_s: u64,
}

/// `POST /v3/lease/grant` answer (int64 fields travel as strings).
#[derive(Deserialize)]
struct EtcdLeaseGrant {
    #[serde(rename = "ID")]
    /// The lease id.
    id: String,
}

/// `POST /v3/lock/lock` answer.
#[derive(Deserialize)]
struct EtcdLockAnswer {
    /// The lock's key (`name/leaseID`), to give to unlock.
    key: String,
}

impl EtcdLock {
    /// A client of the etcd at `base` (`http://127.0.0.1:PORT`) whose lease lives
    /// `lease_ttl_s` seconds (longer than the run: the bench sends no keep-alives).
    pub fn new(base: &str, lease_ttl_s: u64) -> Result<EtcdLock> {
        Ok(EtcdLock {
            http: http_client(Duration::from_secs(lease_ttl_s))?,
            base: base.to_owned(),
            lease_id: None,
            lease_ttl_s,
        })
    }

    /// POSTs a JSON body to `path`; a non-2xx answer is an error.
    async fn post(&self, path: &str, body: serde_json::Value) -> Result<reqwest::Response> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await?;
        if !resp.status().is_success() {
            return Err(unexpected(path, resp).await);
        }
        Ok(resp)
    }

    /// Grants the client's lease, which every lock of this client uses.
    async fn prepare(&mut self) -> Result<()> {
        let resp = self
            .post(
                "/v3/lease/grant",
                serde_json::json!({ "TTL": self.lease_ttl_s }),
            )
            .await?;
        let grant: EtcdLeaseGrant = resp.json().await.context("decoding a lease grant")?;
        self.lease_id = Some(grant.id);
        Ok(())
    }

    /// Locks `name` with the client's lease, waiting behind older keys.
    async fn lock(&mut self, name: &str) -> Result<Held> {
        let lease = self.lease_id.clone().context("etcd client not prepared")?;
        let body = serde_json::json!({ "name": base64(name.as_bytes()), "lease": lease });
        let resp = self.post("/v3/lock/lock", body).await?;
        let a: EtcdLockAnswer = resp.json().await.context("decoding a lock answer")?;
        Ok(Held {
            key: a.key,
            token: String::new(),
        })
    }

    /// Deletes the lock key.
    async fn unlock(&mut self, held: &Held) -> Result<()> {
        let resp = self
            .post("/v3/lock/unlock", serde_json::json!({ "key": held.key }))
            .await?;
        resp.bytes().await?;
        Ok(())
    }

    /// Revokes the client's lease.
    async fn revoke(&mut self) -> Result<()> {
        if let Some(id) = self.lease_id.take() {
            self.post("/v3/lease/revoke", serde_json::json!({ "ID": id }))
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, want) in cases {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(encode_segment("bench/u/1"), "bench%2Fu%2F1");
        assert_eq!(encode_segment("a.b_c-d~e"), "a.b_c-d~e");
        assert_eq!(encode_segment("x y@z"), "x%20y%40z");
    }
}
