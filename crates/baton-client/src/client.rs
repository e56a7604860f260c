//! The [`Client`]: one typed method per endpoint, the transport under them (fail-over between
//! base URLs, retries with backoff, the bearer API key), and the queue-and-wait loop behind
//! [`Client::wait_for_lease`] and [`Client::lock`].
//!
//! **API boundary**: every answer is decoded into a `baton_proto` type or an [`Error`] here and
//! nowhere else; nothing above this module sees HTTP.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use baton_proto::{
    AcquireRequest, AppendOutputRequest, AppendOutputResponse, CancelJobResponse, CancelResponse,
    CreateJobRequest, CreateJobResponse, ErrorBody, ErrorCode, FenceResponse, FinishJobRequest,
    Health, HeartbeatRequest, HeartbeatResponse, History, Job, JobDetail, JobList, Lease,
    LeaseResponse, LockInfo, LockList, ReleaseResponse, RenewRequest, RevokeResponse, Ticket,
    TicketResponse, TokenRequest, WaitRequest,
};
use baton_proto::{AuditList, CreateKeyRequest, CreatedKey, KeyList, LockMode, RevokeKeyResponse};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::error::{Code, Error, Result};
use crate::guard::{LeaseGuard, local_deadline, renewal_instant};
use crate::path::{encode_segment, id_path, lock_path};
use crate::retry::RetryPolicy;

/// The server address used when `BATON_URL` is not set.
pub const DEFAULT_URL: &str = "http://127.0.0.1:7878";

/// The longest `wait_ms` the client asks for in one long-poll. The server caps waits at 60 s;
/// staying well below keeps each request clear of proxies' idle timeouts.
pub const LONG_POLL_MAX: Duration = Duration::from_secs(30);

/// How long a request may take beyond the time the server may hold it open (`wait_ms`), unless
/// the builder says otherwise.
const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// How long a connection attempt to one server may take before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest answer body read; anything longer is a protocol error, not an out-of-memory.
const ANSWER_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The longest pause between two ticket waits while the server is unreachable. It must stay
/// well under a ticket's lapse time (10 s by default) so the ticket survives a short outage.
pub(crate) const TICKET_RETRY_PAUSE_MAX: Duration = Duration::from_secs(1);

/// A typed async client for one baton deployment (one server, or several sharing a store).
///
/// Cheap to clone: clones share the connection pool and the memory of which server answered
/// last.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The connection pool.
    http: reqwest::Client,
    /// Base URLs without a trailing slash, in the order given; never empty.
    bases: Vec<String>,
    /// Index into `bases` of the server to try first: the last one that answered.
    preferred: AtomicUsize,
    /// `Bearer KEY`, marked sensitive so that `Debug` never prints it.
    authorization: Option<HeaderValue>,
    /// How requests that are safe to repeat are retried.
    retry: RetryPolicy,
    /// The timeout of a request that the server answers at once.
    request_timeout: Duration,
}

/// Sets up a [`Client`]: base URLs, API key, retry policy, timeouts.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    urls: String,
    api_key: Option<String>,
    retry: RetryPolicy,
    request_timeout: Duration,
    /// PEM files of CAs trusted on top of the system's roots.
    ca_files: Vec<PathBuf>,
}

impl ClientBuilder {
    /// Trusts the CA certificates of this PEM file for `https://` servers, on top of the
    /// system's roots (for a server whose certificate a private CA signed). The file is read
    /// by [`ClientBuilder::build`]; an unreadable file or one without a certificate is an
    /// [`Error::Config`] there.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> ClientBuilder {
        self.ca_files.push(path.into());
        self
    }

    /// Sends `Authorization: Bearer KEY` with every request. An empty key sends nothing.
    pub fn api_key(mut self, key: impl Into<String>) -> ClientBuilder {
        let key = key.into();
        self.api_key = (!key.is_empty()).then_some(key);
        self
    }

    /// Replaces the retry policy (default: [`RetryPolicy::default`]).
    pub fn retry(mut self, retry: RetryPolicy) -> ClientBuilder {
        self.retry = retry;
        self
    }

    /// The timeout of a request that the server answers at once (default 10 s). Long-polls get
    /// their `wait_ms` on top.
    pub fn request_timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.request_timeout = timeout;
        self
    }

    /// Checks the settings and builds the client.
    pub fn build(self) -> Result<Client> {
        let bases = parse_base_urls(&self.urls)?;
        let authorization = match self.api_key {
            None => None,
            Some(key) => {
                let mut value =
                    HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| Error::Config {
                        message: "the API key contains characters that cannot travel in an \
                                  HTTP header"
                            .to_owned(),
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        install_crypto_provider();
        let mut extra_roots = Vec::new();
        for path in &self.ca_files {
            extra_roots.extend(read_ca_file(path)?);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("baton-client/", env!("CARGO_PKG_VERSION")))
            .tls_certs_merge(extra_roots)
            .build()
            .map_err(|error| Error::Config {
                message: format!("cannot set up the HTTP client: {error}"),
            })?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                bases,
                preferred: AtomicUsize::new(0),
                authorization,
                retry: self.retry,
                request_timeout: self.request_timeout,
            }),
        })
    }
}

/// Makes rustls's ring provider the process's default, once, unless something else already
/// installed one: reqwest's `rustls-no-provider` build takes whichever is installed.
fn install_crypto_provider() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        // An error means another provider is already installed: it serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The certificates of a PEM file given with [`ClientBuilder::ca_file`].
fn read_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>> {
    let pem = std::fs::read(path).map_err(|error| Error::Config {
        message: format!("cannot read CA file {}: {error}", path.display()),
    })?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|error| Error::Config {
        message: format!("CA file {} is not PEM: {error}", path.display()),
    })?;
    if certs.is_empty() {
        return Err(Error::Config {
            message: format!("CA file {} holds no CERTIFICATE block", path.display()),
        });
    }
    Ok(certs)
}

/// Splits a comma-separated list of base URLs, checks each, and drops trailing slashes.
fn parse_base_urls(urls: &str) -> Result<Vec<String>> {
    let mut bases = Vec::new();
    for url in urls.split(',').map(str::trim).filter(|url| !url.is_empty()) {
        let parsed = reqwest::Url::parse(url).map_err(|error| Error::Config {
            message: format!("server URL {url:?} is not a URL: {error}"),
        })?;
        match parsed.scheme() {
            "http" | "https" => {}
            other => {
                return Err(Error::Config {
                    message: format!(
                        "server URL {url:?} has scheme {other:?}; expected http://HOST:PORT \
                         or https://HOST:PORT"
                    ),
                });
            }
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(Error::Config {
                message: format!("server URL {url:?} must not have a query or fragment"),
            });
        }
        bases.push(parsed.as_str().trim_end_matches('/').to_owned());
    }
    if bases.is_empty() {
        return Err(Error::Config {
            message: "no server URL given; set BATON_URL or pass --url".to_owned(),
        });
    }
    Ok(bases)
}

/// A lease the server granted, with the instant the granting request was sent: the start of the
/// holder's own count-down (guarantee G6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    /// The lease.
    pub lease: Lease,
    /// When the request that was answered with this lease was sent, by this process's
    /// monotonic clock.
    pub sent_at: Instant,
}

impl Granted {
    /// The instant after which this process must assume the lease is gone unless a renewal
    /// succeeded: see [`local_deadline`].
    pub fn local_deadline(&self) -> Instant {
        local_deadline(
            self.sent_at,
            Duration::from_millis(self.lease.expires_in_ms),
            Duration::from_millis(self.lease.ttl_ms),
        )
    }
}

/// The answer to an acquire or a ticket wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// 200: the lease is granted.
    Granted(Granted),
    /// 202: still queued; wait on the ticket again at once, or it lapses.
    Queued(Ticket),
}

/// What [`Client::wait_for_lease`] and [`Client::lock`] ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockOptions {
    /// The owner label shown in listings and history; default [`default_owner`].
    pub owner: String,
    /// Reentrancy key: acquiring again with the same key while holding returns the same lease.
    pub owner_key: Option<String>,
    /// Lease time-to-live; the server's default (30 s) when `None`.
    pub ttl: Option<Duration>,
    /// 1 for a mutex, N for a semaphore; the lock's current capacity when `None`.
    pub capacity: Option<u32>,
    /// How long to wait for the grant: `None` waits forever, `Some(Duration::ZERO)` tries once
    /// without queueing.
    pub wait: Option<Duration>,
    /// The request id of the first acquire (G7); a fresh random one when `None`.
    pub request_id: Option<String>,
    /// The longest single long-poll; capped at [`LONG_POLL_MAX`].
    pub poll: Duration,
    /// A small value to publish with the lease (at most 1024 bytes: an address, a version),
    /// shown in listings, history and `granted` events.
    pub value: Option<String>,
    /// `Exclusive` (the default) or `Shared`: a reader of a read-write lock (capacity 1).
    pub mode: LockMode,
}

impl Default for LockOptions {
    fn default() -> LockOptions {
        LockOptions {
            owner: default_owner(),
            owner_key: None,
            ttl: None,
            capacity: None,
            wait: None,
            request_id: None,
            poll: LONG_POLL_MAX,
            value: None,
            mode: LockMode::Exclusive,
        }
    }
}

impl LockOptions {
    /// Default options with this owner label.
    pub fn with_owner(owner: impl Into<String>) -> LockOptions {
        LockOptions {
            owner: owner.into(),
            ..LockOptions::default()
        }
    }
}

/// `HOST/USER/PID` of this process: a label that tells a person where a lease came from.
pub fn default_owner() -> String {
    owner_label(std::process::id())
}

/// `HOST/USER/PID` with the given process id.
pub fn owner_label(pid: u32) -> String {
    let host = gethostname::gethostname();
    let host = host.to_string_lossy();
    let host = if host.is_empty() { "localhost" } else { &host };
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".to_owned());
    format!("{host}/{user}/{pid}")
}

/// A fresh request id: 128 random bits as 32 lower-case hex digits.
pub fn generate_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Whole milliseconds of `duration`, saturating.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// One HTTP request, ready to be sent to any of the base URLs.
pub(crate) struct Call<'a> {
    pub(crate) method: Method,
    /// The path after the base URL, query included, e.g. `/v1/locks/x/history?limit=5`.
    pub(crate) path: &'a str,
    /// The JSON body, already serialized.
    pub(crate) body: Option<Vec<u8>>,
    /// How long the server may hold the request open, on top of the normal timeout.
    pub(crate) wait: Duration,
    /// Whether the request may be sent again after an `Unavailable` failure.
    pub(crate) retry: RetryPolicy,
}

/// A successful (2xx) HTTP answer.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Vec<u8>,
    /// The full URL that answered, for error messages.
    url: String,
    /// When the answered request was sent.
    pub(crate) sent_at: Instant,
}

impl Answer {
    /// Decodes the body as `T`.
    pub(crate) fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(|error| Error::Protocol {
            url: self.url.clone(),
            message: format!("cannot decode the answer ({}): {error}", self.status),
        })
    }

    /// The error for a 2xx status this call does not expect.
    pub(crate) fn unexpected(&self) -> Error {
        Error::Protocol {
            url: self.url.clone(),
            message: format!("unexpected status {}", self.status),
        }
    }
}

/// JSON for a body of no fields, `{}`.
#[derive(Serialize)]
struct Empty {}

impl Client {
    /// A client for the comma-separated base URLs (`http://a:7878,http://b:7878`), without an
    /// API key and with the default retry policy.
    pub fn new(base_urls: &str) -> Result<Client> {
        Client::builder(base_urls).build()
    }

    /// A builder for the comma-separated base URLs.
    pub fn builder(base_urls: &str) -> ClientBuilder {
        ClientBuilder {
            urls: base_urls.to_owned(),
            api_key: None,
            retry: RetryPolicy::default(),
            request_timeout: REQUEST_TIMEOUT_DEFAULT,
            ca_files: Vec::new(),
        }
    }

    /// A client for `BATON_URL` (default [`DEFAULT_URL`]) with the API key `BATON_API_KEY` and
    /// the extra trusted CA file `BATON_CA_FILE` if set.
    pub fn from_env() -> Result<Client> {
        let urls = std::env::var("BATON_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
        let mut builder = Client::builder(&urls);
        if let Ok(key) = std::env::var("BATON_API_KEY") {
            builder = builder.api_key(key);
        }
        if let Some(path) = std::env::var_os("BATON_CA_FILE").filter(|path| !path.is_empty()) {
            builder = builder.ca_file(path);
        }
        builder.build()
    }

    /// The base URLs, in the order given.
    pub fn base_urls(&self) -> &[String] {
        &self.inner.bases
    }

    /// The base URL that will be tried first: the one that answered last.
    pub fn current_url(&self) -> &str {
        let index = self.inner.preferred.load(Ordering::Relaxed) % self.inner.bases.len();
        &self.inner.bases[index]
    }

    // ----- jobs -------------------------------------------------------------------------------

    /// `POST /v1/jobs`: records a job and applies its policy, long-polling up to
    /// `request.wait_ms` for the lock. A request without a `request_id` gets a fresh one, so a
    /// retry after a lost answer returns the same job (G7). Policy `fail` on a busy lock fails
    /// with [`Error::Busy`] and the holders (the job is recorded `skipped`).
    pub async fn create_job(&self, request: &CreateJobRequest) -> Result<JobStart> {
        let mut request = request.clone();
        if request.request_id.is_none() {
            request.request_id = Some(generate_request_id());
        }
        let wait = Duration::from_millis(request.wait_ms.unwrap_or(0));
        let answer = self
            .send(Call {
                method: Method::POST,
                path: &format!("{}/jobs", baton_proto::API_PREFIX),
                body: Some(to_json(&request)?),
                wait,
                retry: self.inner.retry,
            })
            .await?;
        job_start(&answer)
    }

    /// `POST /v1/jobs/{id}/wait`: waits up to `wait` for a waiting job's turn. Call it again at
    /// once while the answer still carries a ticket, or the ticket lapses.
    pub async fn wait_job(
        &self,
        job_id: &str,
        ticket_id: &str,
        wait: Duration,
    ) -> Result<JobStart> {
        #[derive(Serialize)]
        struct Body<'a> {
            ticket_id: &'a str,
            wait_ms: u64,
        }
        let path = id_path("jobs", job_id, "/wait")?;
        let answer = self
            .send(Call {
                method: Method::POST,
                path: &path,
                body: Some(to_json(&Body {
                    ticket_id,
                    wait_ms: millis(wait),
                })?),
                wait,
                retry: self.inner.retry,
            })
            .await?;
        job_start(&answer)
    }

    /// `POST /v1/jobs/{id}/heartbeat`: renews a running job's lease. The answer says whether
    /// the runner must stop (`Some("replaced")`). Sent once: the caller retries on its own
    /// deadline, like the lease guard.
    pub async fn job_heartbeat(
        &self,
        job_id: &str,
        lease_id: &str,
        ttl: Option<Duration>,
    ) -> Result<(Granted, Option<String>)> {
        let path = id_path("jobs", job_id, "/heartbeat")?;
        let request = HeartbeatRequest {
            lease_id: lease_id.to_owned(),
            ttl_ms: ttl.map(millis),
        };
        let answer = self
            .send(Call {
                method: Method::POST,
                path: &path,
                body: Some(to_json(&request)?),
                wait: Duration::ZERO,
                retry: RetryPolicy::NONE,
            })
            .await?;
        let HeartbeatResponse { lease, stop } = answer.decode()?;
        Ok((
            Granted {
                lease,
                sent_at: answer.sent_at,
            },
            stop,
        ))
    }

    /// `POST /v1/jobs/{id}/output`: appends a chunk of a running job's output (at most
    /// `OUTPUT_APPEND_BYTES_MAX` bytes of text; `skipped_bytes` counts output left out before
    /// it). The answer says whether the runner must stop, as a heartbeat's does. Sent once: a
    /// retry could append the chunk twice, and the next append carries on anyway.
    pub async fn append_job_output(
        &self,
        job_id: &str,
        request: &AppendOutputRequest,
    ) -> Result<AppendOutputResponse> {
        let path = id_path("jobs", job_id, "/output")?;
        self.send_decode(
            Method::POST,
            &path,
            Some(to_json(request)?),
            RetryPolicy::NONE,
        )
        .await
    }

    /// `POST /v1/jobs/{id}/cancel`: cancels a job. A waiting job leaves the queue at once
    /// (`outcome: cancelled`); a running one is stopped by its runner at its next heartbeat
    /// (`outcome: stopping`). A job that already ended otherwise is
    /// [`Error::Rejected`](crate::Error::Rejected) with code
    /// `job_state_conflict`. Safe to retry.
    pub async fn cancel_job(&self, job_id: &str) -> Result<CancelJobResponse> {
        let path = id_path("jobs", job_id, "/cancel")?;
        self.send_decode(Method::POST, &path, None, self.inner.retry)
            .await
    }

    /// `POST /v1/jobs/{id}/finish`: records how the job ended (state, exit code, output tail)
    /// and lets its lock go. Safe to retry: the same report again is accepted.
    pub async fn finish_job(&self, job_id: &str, request: &FinishJobRequest) -> Result<JobDetail> {
        let path = id_path("jobs", job_id, "/finish")?;
        self.send_decode(
            Method::POST,
            &path,
            Some(to_json(request)?),
            self.inner.retry,
        )
        .await
    }

    /// `GET /v1/jobs/{id}`: one job with its output tail.
    pub async fn job(&self, job_id: &str) -> Result<JobDetail> {
        let path = id_path("jobs", job_id, "")?;
        self.send_decode(Method::GET, &path, None, self.inner.retry)
            .await
    }

    /// `GET /v1/jobs`: jobs matching `query`, newest first.
    pub async fn jobs(&self, query: &JobQuery) -> Result<JobList> {
        let mut pairs: Vec<(&str, String)> = Vec::new();
        if let Some(name) = &query.name {
            pairs.push(("name", name.clone()));
        }
        if !query.states.is_empty() {
            pairs.push(("state", query.states.join(",")));
        }
        if let Some(since) = &query.since {
            pairs.push(("since", since.to_string()));
        }
        if let Some(until) = &query.until {
            pairs.push(("until", until.to_string()));
        }
        if let Some(batch) = &query.batch {
            pairs.push(("batch", batch.clone()));
        }
        if let Some(limit) = query.limit {
            pairs.push(("limit", limit.to_string()));
        }
        let query_text: Vec<String> = pairs
            .iter()
            .map(|(key, value)| format!("{key}={}", encode_segment(value)))
            .collect();
        let mut path = format!("{}/jobs", baton_proto::API_PREFIX);
        if !query_text.is_empty() {
            path = format!("{path}?{}", query_text.join("&"));
        }
        self.send_decode(Method::GET, &path, None, self.inner.retry)
            .await
    }

    // ----- locks and leases -------------------------------------------------------------------

    /// The retry policy of this client's ordinary requests.
    pub(crate) fn retry_policy(&self) -> RetryPolicy {
        self.inner.retry
    }

    /// `POST /v1/locks/{name}/acquire`: one acquire, long-polling up to `request.wait_ms`.
    ///
    /// A request without a `request_id` gets a fresh one, so that the retries this method makes
    /// after a lost answer get the same outcome, never a second lease or ticket (G7). Fails with
    /// [`Error::Busy`] when the lock is held and `queue` is not set.
    pub async fn acquire(&self, name: &str, request: &AcquireRequest) -> Result<Acquired> {
        let path = lock_path(name, "/acquire")?;
        let mut request = request.clone();
        if request.request_id.is_none() {
            request.request_id = Some(generate_request_id());
        }
        let wait = Duration::from_millis(request.wait_ms.unwrap_or(0));
        let answer = self
            .send(Call {
                method: Method::POST,
                path: &path,
                body: Some(to_json(&request)?),
                wait,
                retry: self.inner.retry,
            })
            .await?;
        lease_or_ticket(&answer)
    }

    /// `POST /v1/tickets/{id}/wait`: waits up to `wait` (the server caps it at 60 s) for the
    /// ticket's grant. Call it again at once after a [`Acquired::Queued`] answer, or the ticket
    /// lapses.
    pub async fn wait_ticket(&self, ticket_id: &str, wait: Duration) -> Result<Acquired> {
        let path = id_path("tickets", ticket_id, "/wait")?;
        let request = WaitRequest {
            wait_ms: Some(millis(wait)),
        };
        let answer = self
            .send(Call {
                method: Method::POST,
                path: &path,
                body: Some(to_json(&request)?),
                wait,
                retry: self.inner.retry,
            })
            .await?;
        lease_or_ticket(&answer)
    }

    /// `DELETE /v1/tickets/{id}`: leaves the queue.
    pub async fn cancel_ticket(&self, ticket_id: &str) -> Result<CancelResponse> {
        let path = id_path("tickets", ticket_id, "")?;
        self.send_decode(Method::DELETE, &path, None, self.inner.retry)
            .await
    }

    /// `POST /v1/leases/{id}/renew`: extends the lease to now + `ttl` (its current ttl when
    /// `None`). Fails with [`Error::LeaseLost`] when it already ended.
    pub async fn renew(&self, lease_id: &str, ttl: Option<Duration>) -> Result<Granted> {
        self.renew_with(lease_id, ttl, None, self.inner.retry).await
    }

    /// [`Client::renew`], replacing the lease's published value with `value` (the lease keeps
    /// its value when `None`).
    pub async fn renew_with_value(
        &self,
        lease_id: &str,
        ttl: Option<Duration>,
        value: Option<String>,
    ) -> Result<Granted> {
        self.renew_with(lease_id, ttl, value, self.inner.retry)
            .await
    }

    /// [`Client::renew`] with a value and the given retry policy (the guard retries on its own
    /// clock).
    pub(crate) async fn renew_with(
        &self,
        lease_id: &str,
        ttl: Option<Duration>,
        value: Option<String>,
        retry: RetryPolicy,
    ) -> Result<Granted> {
        let path = id_path("leases", lease_id, "/renew")?;
        let request = RenewRequest {
            ttl_ms: ttl.map(millis),
            value,
        };
        let answer = self
            .send(Call {
                method: Method::POST,
                path: &path,
                body: Some(to_json(&request)?),
                wait: Duration::ZERO,
                retry,
            })
            .await?;
        match lease_or_ticket(&answer)? {
            Acquired::Granted(granted) => Ok(granted),
            Acquired::Queued(_) => Err(answer.unexpected()),
        }
    }

    /// `POST /v1/leases/{id}/release`: ends the lease. Releasing a lease that already ended is
    /// not an error: the answer says `released: false` and why.
    pub async fn release(&self, lease_id: &str) -> Result<ReleaseResponse> {
        let path = id_path("leases", lease_id, "/release")?;
        self.send_decode(
            Method::POST,
            &path,
            Some(to_json(&Empty {})?),
            self.inner.retry,
        )
        .await
    }

    /// Acquires `name` as `options` say, queueing and long-polling the ticket until granted or
    /// until `options.wait` has passed (then the ticket is cancelled and the answer is
    /// [`Error::TimedOut`]). With `options.wait == Some(Duration::ZERO)` it tries once without
    /// queueing and fails with [`Error::Busy`] when the lock is held.
    ///
    /// While queued it rides over short outages (retrying the wait) and, if the ticket lapsed or
    /// was forgotten meanwhile, joins the queue again. Dropping the future leaves the ticket to
    /// lapse on the server. A grant that came after a wait longer than a third of its TTL is
    /// confirmed with a renewal before it is returned, so its local deadline is fresh.
    pub async fn wait_for_lease(&self, name: &str, options: &LockOptions) -> Result<Granted> {
        let never = std::future::pending::<std::convert::Infallible>();
        match self.queue_for_lease(name, options, never, false).await? {
            Ok(granted) => Ok(granted),
            Err(never) => match never {},
        }
    }

    /// [`Client::wait_for_lease`] until `stop` completes (a signal, a shutdown): then the place
    /// in the queue is given up before this returns `Ok(Err(stop's output))`, so the lock goes to
    /// the next live waiter at once instead of waiting for the ticket to lapse. A grant that
    /// crossed the stop is released. Every request but the long-poll on the ticket runs to its
    /// end, so no ticket is ever left unknown.
    pub async fn wait_for_lease_until<S>(
        &self,
        name: &str,
        options: &LockOptions,
        stop: impl Future<Output = S>,
    ) -> Result<std::result::Result<Granted, S>> {
        self.queue_for_lease(name, options, stop, true).await
    }

    /// The queueing loop of [`Client::wait_for_lease`] and [`Client::wait_for_lease_until`].
    /// With `ticket_first`, the first acquire does not long-poll (so its ticket is known at once
    /// and can be cancelled), and only the ticket waits race `stop`.
    async fn queue_for_lease<S>(
        &self,
        name: &str,
        options: &LockOptions,
        stop: impl Future<Output = S>,
        ticket_first: bool,
    ) -> Result<std::result::Result<Granted, S>> {
        let mut stop = std::pin::pin!(stop);
        let started = Instant::now();
        let deadline = options.wait.map(|wait| started + wait);
        let poll = options.poll.clamp(Duration::from_millis(1), LONG_POLL_MAX);
        let try_once = options.wait == Some(Duration::ZERO);
        let mut request_id = options
            .request_id
            .clone()
            .unwrap_or_else(generate_request_id);
        let timed_out = || Error::TimedOut {
            lock: name.to_owned(),
            waited: started.elapsed(),
        };
        loop {
            let first_wait = remaining(deadline).map_or(poll, |left| left.min(poll));
            let request = AcquireRequest {
                owner: options.owner.clone(),
                owner_key: options.owner_key.clone(),
                ttl_ms: options.ttl.map(millis),
                capacity: options.capacity,
                wait_ms: Some(if try_once || ticket_first {
                    0
                } else {
                    millis(first_wait)
                }),
                queue: Some(!try_once),
                request_id: Some(request_id.clone()),
                value: options.value.clone(),
                // Only a reader says so: an exclusive acquire reads as it always did.
                mode: (options.mode == LockMode::Shared).then_some(LockMode::Shared),
            };
            let mut ticket = match self.acquire(name, &request).await? {
                Acquired::Granted(granted) => return self.confirm_grant(granted).await.map(Ok),
                Acquired::Queued(ticket) => ticket,
            };
            let mut outage_attempt = 0u32;
            loop {
                let wait = match remaining(deadline) {
                    Some(left) if left.is_zero() => {
                        self.abandon_ticket(&ticket).await;
                        return Err(timed_out());
                    }
                    Some(left) => left.min(poll),
                    None => poll,
                };
                let answer = tokio::select! {
                    answer = self.wait_ticket(&ticket.id, wait) => answer,
                    stopped = &mut stop => {
                        self.leave_queue(&ticket).await;
                        return Ok(Err(stopped));
                    }
                };
                match answer {
                    Ok(Acquired::Granted(granted)) => {
                        return self.confirm_grant(granted).await.map(Ok);
                    }
                    Ok(Acquired::Queued(next)) => {
                        outage_attempt = 0;
                        ticket = next;
                    }
                    Err(Error::Unavailable { message, .. }) => {
                        outage_attempt = outage_attempt.saturating_add(1);
                        let pause = crate::retry::exponential_step(
                            Duration::from_millis(100),
                            TICKET_RETRY_PAUSE_MAX,
                            outage_attempt,
                        );
                        tracing::debug!(lock = name, %message, "server unavailable while queued; retrying");
                        match remaining(deadline) {
                            Some(left) => tokio::time::sleep(pause.min(left)).await,
                            None => tokio::time::sleep(pause).await,
                        }
                    }
                    Err(
                        Error::Rejected {
                            code: Code::Known(ErrorCode::TicketLapsed),
                            ..
                        }
                        | Error::NotFound {
                            code: Code::Known(ErrorCode::TicketNotFound),
                            ..
                        },
                    ) => {
                        // The ticket left the queue while we could not wait on it (an outage, a
                        // paused process, a server that forgot it). Queue again, as a new
                        // logical acquire: the old request id would replay the lapsed ticket.
                        tracing::info!(lock = name, "ticket lapsed; queueing again");
                        request_id = generate_request_id();
                        if remaining(deadline).is_some_and(|left| left.is_zero()) {
                            return Err(timed_out());
                        }
                        break;
                    }
                    Err(error) => {
                        self.abandon_ticket(&ticket).await;
                        return Err(error);
                    }
                }
            }
        }
    }

    /// Gives up a place in the queue because the waiter is going away: cancels the ticket and,
    /// when a grant crossed the cancel (the long-poll that was dropped had collected it), asks
    /// for that lease again and releases it, so nothing is left held on a departed waiter's
    /// behalf. Failures are only logged: the ticket or lease then lapses or expires.
    async fn leave_queue(&self, ticket: &Ticket) {
        match self.cancel_ticket(&ticket.id).await {
            Ok(CancelResponse {
                cancelled: false,
                reason: Some(reason),
            }) if reason == "already_granted" => {
                match self.wait_ticket(&ticket.id, Duration::ZERO).await {
                    Ok(Acquired::Granted(granted)) => {
                        if let Err(error) = self.release(&granted.lease.id).await {
                            tracing::warn!(lock = %ticket.lock, %error, "cannot release a lease granted while leaving; it will expire");
                        }
                    }
                    Ok(Acquired::Queued(_)) => {}
                    Err(error) => {
                        tracing::warn!(lock = %ticket.lock, %error, "a lease was granted while leaving; it will expire");
                    }
                }
            }
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(lock = %ticket.lock, %error, "cannot cancel the ticket; it will lapse");
            }
        }
    }

    /// Confirms a grant that came on a long-poll with a renewal sent now, when a third of its
    /// lease has already gone by this process's count.
    ///
    /// A grant's local deadline counts from when the request that got it was sent (G6); for a
    /// long-poll that can be longer ago than the TTL although the server granted the lease only
    /// just now. Such a grant is not thrown away: the renewal is answered `lease_lost` if the
    /// lease really ended, and otherwise gives a deadline counted from a fresh send.
    pub(crate) async fn confirm_grant(&self, granted: Granted) -> Result<Granted> {
        let renew_at = renewal_instant(
            granted.sent_at,
            Duration::from_millis(granted.lease.expires_in_ms),
            Duration::from_millis(granted.lease.ttl_ms),
        );
        if Instant::now() < renew_at {
            return Ok(granted);
        }
        self.renew(&granted.lease.id, None).await
    }

    /// Acquires `name` as [`Client::wait_for_lease`] does and returns a guard that renews the
    /// lease in the background and releases it when dropped.
    pub async fn lock(&self, name: &str, options: LockOptions) -> Result<LeaseGuard> {
        let granted = self.wait_for_lease(name, &options).await?;
        Ok(LeaseGuard::start(self.clone(), granted))
    }

    /// Best-effort cancel of a ticket we are giving up on; failures are only logged, since the
    /// ticket lapses anyway when nobody waits on it.
    async fn abandon_ticket(&self, ticket: &Ticket) {
        match self.cancel_ticket(&ticket.id).await {
            Ok(CancelResponse {
                cancelled: false,
                reason: Some(reason),
            }) if reason == "already_granted" => {
                tracing::warn!(
                    lock = %ticket.lock,
                    "gave up waiting, but the ticket's lease was already collected; it will expire"
                );
            }
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(lock = %ticket.lock, %error, "cannot cancel the ticket; it will lapse");
            }
        }
    }

    // ----- reading ----------------------------------------------------------------------------

    /// `GET /v1/locks`: every known lock with its holders and waiters.
    pub async fn locks(&self) -> Result<LockList> {
        let path = format!("{}/locks", baton_proto::API_PREFIX);
        self.send_decode(Method::GET, &path, None, self.inner.retry)
            .await
    }

    /// `GET /v1/locks/{name}`: one lock; [`Error::NotFound`] (`lock_not_found`) when unknown.
    pub async fn lock_info(&self, name: &str) -> Result<LockInfo> {
        let path = lock_path(name, "")?;
        self.send_decode(Method::GET, &path, None, self.inner.retry)
            .await
    }

    /// `GET /v1/locks/{name}/history?limit=N`: past holds, newest first.
    pub async fn history(&self, name: &str, limit: Option<u32>) -> Result<History> {
        let mut path = lock_path(name, "/history")?;
        if let Some(limit) = limit {
            path.push_str(&format!("?limit={limit}"));
        }
        self.send_decode(Method::GET, &path, None, self.inner.retry)
            .await
    }

    /// `GET /healthz`: the server is up.
    pub async fn health(&self) -> Result<Health> {
        self.send_decode(Method::GET, "/healthz", None, self.inner.retry)
            .await
    }

    /// `GET /readyz`: the server can serve (its store commits).
    pub async fn ready(&self) -> Result<Health> {
        self.send_decode(Method::GET, "/readyz", None, self.inner.retry)
            .await
    }

    // ----- administration ---------------------------------------------------------------------

    /// `POST /v1/locks/{name}/revoke`: ends the lease holding `token` (administrators only).
    ///
    /// Never retried: a repeat after a lost answer would report `holder_not_found` although the
    /// first one succeeded.
    pub async fn revoke(&self, name: &str, token: u64) -> Result<RevokeResponse> {
        let path = lock_path(name, "/revoke")?;
        self.send_decode(
            Method::POST,
            &path,
            Some(to_json(&TokenRequest { token })?),
            RetryPolicy::NONE,
        )
        .await
    }

    /// `POST /v1/locks/{name}/fence`: asks whether `token` is still the newest of the lock.
    ///
    /// A refusal is an answer, not an error: a stale token gives `Ok` with `accepted: false` and
    /// the newest token the server has seen. Unknown tokens fail with [`Error::Rejected`]
    /// (`unknown_token`).
    pub async fn fence(&self, name: &str, token: u64) -> Result<FenceResponse> {
        let path = lock_path(name, "/fence")?;
        let call = Call {
            method: Method::POST,
            path: &path,
            body: Some(to_json(&TokenRequest { token })?),
            wait: Duration::ZERO,
            retry: self.inner.retry,
        };
        match self.send_raw(call).await? {
            Ok(answer) if answer.status == StatusCode::OK => answer.decode(),
            Ok(answer) => Err(answer.unexpected()),
            Err((status, url, body)) => {
                if let Ok(parsed) = serde_json::from_slice::<ErrorBody>(&body)
                    && parsed.error.code == ErrorCode::StaleToken.as_str()
                {
                    return match parsed.newest_token {
                        Some(newest_token) => Ok(FenceResponse {
                            accepted: false,
                            newest_token,
                        }),
                        None => Err(Error::Protocol {
                            url,
                            message: "stale_token answer without newest_token".to_owned(),
                        }),
                    };
                }
                Err(Error::from_response(&url, status, &body))
            }
        }
    }

    // ----- API keys and the audit log -------------------------------------------------------

    /// `POST /v1/keys`: creates an API key; the answer holds its secret, shown this once.
    /// Never retried: a repeat after a lost answer would make a second key.
    pub async fn create_key(&self, request: &CreateKeyRequest) -> Result<CreatedKey> {
        let path = format!("{}/keys", baton_proto::API_PREFIX);
        self.send_decode(
            Method::POST,
            &path,
            Some(to_json(request)?),
            RetryPolicy::NONE,
        )
        .await
    }

    /// `GET /v1/keys`: every API key, without secrets.
    pub async fn keys(&self) -> Result<KeyList> {
        let path = format!("{}/keys", baton_proto::API_PREFIX);
        self.send_decode(Method::GET, &path, None, self.inner.retry)
            .await
    }

    /// `DELETE /v1/keys/{id}`: revokes an API key (idempotent).
    pub async fn revoke_key(&self, id: &str) -> Result<RevokeKeyResponse> {
        let path = format!("{}/keys/{}", baton_proto::API_PREFIX, encode_segment(id));
        self.send_decode(Method::DELETE, &path, None, self.inner.retry)
            .await
    }

    /// `GET /v1/audit?before=SEQ&limit=N`: the audit log, newest first.
    pub async fn audit(&self, before: Option<u64>, limit: Option<u32>) -> Result<AuditList> {
        let mut query = Vec::new();
        if let Some(before) = before {
            query.push(format!("before={before}"));
        }
        if let Some(limit) = limit {
            query.push(format!("limit={limit}"));
        }
        let mut path = format!("{}/audit", baton_proto::API_PREFIX);
        if !query.is_empty() {
            path.push('?');
            path.push_str(&query.join("&"));
        }
        self.send_decode(Method::GET, &path, None, self.inner.retry)
            .await
    }

    // ----- transport --------------------------------------------------------------------------

    /// Sends a call that answers 200 with a `T`.
    async fn send_decode<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        retry: RetryPolicy,
    ) -> Result<T> {
        let answer = self
            .send(Call {
                method,
                path,
                body,
                wait: Duration::ZERO,
                retry,
            })
            .await?;
        if answer.status != StatusCode::OK {
            return Err(answer.unexpected());
        }
        answer.decode()
    }

    /// Sends a call; every non-2xx answer becomes an [`Error`].
    pub(crate) async fn send(&self, call: Call<'_>) -> Result<Answer> {
        match self.send_raw(call).await? {
            Ok(answer) => Ok(answer),
            Err((status, url, body)) => Err(Error::from_response(&url, status, &body)),
        }
    }

    /// Sends a call, retrying `Unavailable` failures as its policy allows. The inner result is
    /// the 2xx answer, or the status, URL and body of an error answer that is not retried.
    async fn send_raw(
        &self,
        call: Call<'_>,
    ) -> Result<std::result::Result<Answer, (u16, String, Vec<u8>)>> {
        let attempts = call.retry.attempts.max(1);
        let mut attempt = 1;
        loop {
            let outcome = match self.attempt(&call).await {
                Ok(answer) if answer.status.is_success() => return Ok(Ok(answer)),
                Ok(answer) => {
                    let status = answer.status.as_u16();
                    let error = Error::from_response(&answer.url, status, &answer.body);
                    if !error.is_retryable() {
                        return Ok(Err((status, answer.url, answer.body)));
                    }
                    error
                }
                Err(error) => error,
            };
            // Only `Unavailable` reaches here. Send the next attempt to another server first.
            self.prefer_next();
            if attempt >= attempts {
                return Err(outcome);
            }
            let pause = call.retry.backoff(attempt);
            tracing::debug!(path = call.path, attempt, ?pause, error = %outcome, "retrying");
            tokio::time::sleep(pause).await;
            attempt += 1;
        }
    }

    /// Makes one attempt: tries the preferred server, and on a connection failure (the request
    /// was never delivered, so trying elsewhere is always safe) each other server in turn.
    /// Returns any HTTP answer, or `Unavailable` when none came.
    async fn attempt(&self, call: &Call<'_>) -> Result<Answer> {
        let bases = &self.inner.bases;
        let start = self.inner.preferred.load(Ordering::Relaxed);
        let timeout = self.inner.request_timeout + call.wait;
        let mut failures = Vec::new();
        let mut tls_failures = Vec::new();
        let mut tried = vec![false; bases.len()];
        let mut standby_answer = None;
        let mut next = Some(start % bases.len().max(1));
        while let Some(index) = next.take() {
            tried[index] = true;
            // By default the next server in turn; a standby's answer may name a better one.
            let in_turn = (1..bases.len())
                .map(|offset| (index + offset) % bases.len())
                .find(|&candidate| !tried[candidate]);
            next = in_turn;
            let url = format!("{}{}", bases[index], call.path);
            let mut request = self
                .inner
                .http
                .request(call.method.clone(), &url)
                .timeout(timeout);
            if let Some(authorization) = &self.inner.authorization {
                request = request.header(AUTHORIZATION, authorization.clone());
            }
            if let Some(body) = &call.body {
                request = request
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            let sent_at = Instant::now();
            match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let body = read_body(response, &url).await?;
                    if let Some(active) = standby_of(status, &body) {
                        // A standby did nothing: ask the active it names (when it is one of
                        // ours), else the next server, within this attempt.
                        if let Some(named) = active.and_then(|active| {
                            bases.iter().position(|base| same_base(base, &active))
                        }) && !tried[named]
                        {
                            next = Some(named);
                        }
                        standby_answer = Some(Answer {
                            status,
                            body,
                            url,
                            sent_at,
                        });
                        continue;
                    }
                    self.inner.preferred.store(index, Ordering::Relaxed);
                    return Ok(Answer {
                        status,
                        body,
                        url,
                        sent_at,
                    });
                }
                Err(error) if error.is_connect() => match tls_failure(&error) {
                    Some(problem) => tls_failures.push(format!("{}: {problem}", bases[index])),
                    None => failures.push(format!("{}: {}", bases[index], describe(&error))),
                },
                Err(error) => {
                    // The request may have reached the server: do not send it elsewhere in this
                    // attempt; the retry policy decides whether it is sent again.
                    self.inner.preferred.store(index, Ordering::Relaxed);
                    let mut message = format!("{}: {}", bases[index], describe(&error));
                    if bases[index].starts_with("http://")
                        && message.contains("invalid HTTP version parsed")
                    {
                        // What a TLS server's alert looks like to a plain HTTP client.
                        message.push_str("; is the server serving https? Use an https:// URL");
                    }
                    return Err(Error::Unavailable {
                        code: None,
                        message,
                    });
                }
            }
        }
        if let Some(answer) = standby_answer {
            // Every server that answered is a standby (an election is under way): the retry
            // policy decides when to ask again.
            return Ok(answer);
        }
        if failures.is_empty() && !tls_failures.is_empty() {
            // Every server failed TLS: trying again will not change a certificate.
            return Err(Error::Tls {
                message: tls_failures.join("; "),
            });
        }
        failures.extend(tls_failures);
        Err(Error::Unavailable {
            code: None,
            message: format!("cannot reach the baton server ({})", failures.join("; ")),
        })
    }

    /// What the event stream needs of the transport: the pool, the base URLs, the API key's
    /// header, the retry policy, and the index of the server to try first.
    pub(crate) fn transport(
        &self,
    ) -> (
        &reqwest::Client,
        &[String],
        Option<&HeaderValue>,
        RetryPolicy,
        usize,
    ) {
        (
            &self.inner.http,
            &self.inner.bases,
            self.inner.authorization.as_ref(),
            self.inner.retry,
            self.inner.preferred.load(Ordering::Relaxed) % self.inner.bases.len().max(1),
        )
    }

    /// Remembers the server that answered.
    pub(crate) fn prefer(&self, index: usize) {
        self.inner.preferred.store(index, Ordering::Relaxed);
    }

    /// Moves the preference to the next server, after one failed us.
    fn prefer_next(&self) {
        let len = self.inner.bases.len();
        if len > 1 {
            let current = self.inner.preferred.load(Ordering::Relaxed);
            self.inner
                .preferred
                .store((current + 1) % len, Ordering::Relaxed);
        }
    }
}

/// For a standby's `503 not_active` answer: `Some(the active's URL, when named)`.
pub(crate) fn standby_of(status: StatusCode, body: &[u8]) -> Option<Option<String>> {
    if status != StatusCode::SERVICE_UNAVAILABLE {
        return None;
    }
    let parsed: ErrorBody = serde_json::from_slice(body).ok()?;
    (parsed.error.code == ErrorCode::NotActive.as_str()).then_some(parsed.active)
}

/// Whether two base URLs name the same server (ignoring a trailing slash).
pub(crate) fn same_base(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// Serializes a request body.
pub(crate) fn to_json(value: &impl Serialize) -> Result<Vec<u8>> {
    // Serializing these plain structs cannot fail; map it anyway rather than panic.
    serde_json::to_vec(value).map_err(|error| Error::InvalidInput {
        message: format!("cannot encode the request: {error}"),
    })
}

/// Reads an answer's body, up to [`ANSWER_BYTES_MAX`].
pub(crate) async fn read_body(mut response: reqwest::Response, url: &str) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > ANSWER_BYTES_MAX {
                    return Err(Error::Protocol {
                        url: url.to_owned(),
                        message: format!("answer larger than {ANSWER_BYTES_MAX} bytes"),
                    });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(error) => {
                return Err(Error::Unavailable {
                    code: None,
                    message: format!("{url}: answer cut off: {}", describe(&error)),
                });
            }
        }
    }
}

/// Decodes a 200 lease or 202 ticket answer.
/// What creating (or waiting on) a job answered: the job, with its lease when it runs or its
/// ticket when it waits; neither when it will not run (skipped, coalesced).
#[derive(Debug, Clone)]
pub struct JobStart {
    /// The job.
    pub job: Job,
    /// Its lease, with when the granting request was sent.
    pub lease: Option<Granted>,
    /// Its ticket.
    pub ticket: Option<Ticket>,
}

/// Which jobs `Client::jobs` lists.
#[derive(Debug, Clone, Default)]
pub struct JobQuery {
    /// Only this name.
    pub name: Option<String>,
    /// Only these states (wire names such as `failed`).
    pub states: Vec<String>,
    /// Only jobs created at or after this.
    pub since: Option<jiff::Timestamp>,
    /// Only jobs created before this.
    pub until: Option<jiff::Timestamp>,
    /// Only this batch.
    pub batch: Option<String>,
    /// At most this many.
    pub limit: Option<u32>,
}

fn job_start(answer: &Answer) -> Result<JobStart> {
    match answer.status {
        StatusCode::OK | StatusCode::ACCEPTED => {
            let CreateJobResponse { job, lease, ticket } = answer.decode()?;
            Ok(JobStart {
                job,
                lease: lease.map(|lease| Granted {
                    lease,
                    sent_at: answer.sent_at,
                }),
                ticket,
            })
        }
        _ => Err(answer.unexpected()),
    }
}

fn lease_or_ticket(answer: &Answer) -> Result<Acquired> {
    match answer.status {
        StatusCode::OK => {
            let LeaseResponse { lease } = answer.decode()?;
            Ok(Acquired::Granted(Granted {
                lease,
                sent_at: answer.sent_at,
            }))
        }
        StatusCode::ACCEPTED => {
            let TicketResponse { ticket } = answer.decode()?;
            Ok(Acquired::Queued(ticket))
        }
        _ => Err(answer.unexpected()),
    }
}

/// A transport error with its causes, which reqwest keeps in the source chain
/// (`error sending request` alone says nothing).
pub(crate) fn describe(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "timed out".to_owned()
    } else if error.is_connect() {
        "connection failed".to_owned()
    } else {
        error.to_string()
    };
    let mut source = std::error::Error::source(error);
    let mut last = String::new();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // hyper and std often repeat the same words one level down.
        if cause_text != last && !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        last = cause_text;
        source = cause.source();
    }
    text
}

/// What went wrong in TLS, when that is why `error` (a failed connection) failed: the rustls
/// error in its causes, said plainly, with what to do about it.
fn tls_failure(error: &reqwest::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if let Some(tls) = rustls_error_in(cause) {
            return Some(describe_tls(tls));
        }
        source = cause.source();
    }
    None
}

/// `error` as a rustls error, looking through io::Errors that wrap one: an io::Error hides the
/// error it wraps from `source()`, and they nest.
fn rustls_error_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = error;
    // Bounded: io::Errors do not nest deeply; this only guards against a pathological chain.
    for _ in 0..16 {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        let inner = current
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)?;
        current = inner;
    }
    None
}

/// A rustls error as a sentence with a hint.
fn describe_tls(error: &rustls::Error) -> String {
    match error {
        rustls::Error::InvalidCertificate(problem) => format!(
            "the server's TLS certificate is not trusted ({}); if it is self-signed or a private \
             CA signed it, pass --ca-file with that certificate (PEM) or set BATON_CA_FILE",
            certificate_problem(problem)
        ),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => format!(
            "TLS handshake failed ({error}); is the server serving https? For a plain server \
             use an http:// URL"
        ),
        other => format!("TLS handshake failed: {other}"),
    }
}

/// The reason a certificate was refused, in words; variants without words here are named, never
/// dumped with their fields.
fn certificate_problem(problem: &rustls::CertificateError) -> String {
    use rustls::CertificateError;
    match problem {
        CertificateError::UnknownIssuer => {
            "self-signed, or signed by an unknown certificate authority".to_owned()
        }
        // What a self-signed certificate that is not among the trusted roots gives: the
        // verifier looks for its issuer and finds none it can check the signature with.
        CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. }
        | CertificateError::UnsupportedSignatureAlgorithmContext { .. } => {
            "self-signed, or signed by a certificate authority this client does not trust"
                .to_owned()
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired".to_owned(),
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "not valid yet".to_owned()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "issued for another host name".to_owned()
        }
        CertificateError::BadSignature => "bad signature".to_owned(),
        CertificateError::Revoked => "revoked".to_owned(),
        CertificateError::Other(other) => match other.to_string().as_str() {
            "CaUsedAsEndEntity" => "a CA certificate is used as the server's own; give the \
                                    server a certificate with basicConstraints CA:FALSE"
                .to_owned(),
            text => format!(
                "it cannot be verified against the trusted certificate authorities: {}",
                variant_name(text)
            ),
        },
        other => format!(
            "it cannot be verified against the trusted certificate authorities: {}",
            variant_name(&format!("{other:?}"))
        ),
    }
}

/// `Name` of a `Name { field: … }` or `Name(…)` debug text.
fn variant_name(text: &str) -> &str {
    text.split(['(', '{', ' ']).next().unwrap_or(text)
}

/// Time left until `deadline`: `None` for no deadline, zero once it passed.
pub(crate) fn remaining(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|deadline| deadline.saturating_duration_since(Instant::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_split_and_trimmed() {
        let bases = parse_base_urls(" http://a:1/ , http://b:2/prefix/,,").unwrap_or_default();
        assert_eq!(bases, ["http://a:1", "http://b:2/prefix"]);
        let bases = parse_base_urls("https://a:1/").unwrap_or_default();
        assert_eq!(bases, ["https://a:1"]);
    }

    #[test]
    fn a_ca_file_that_cannot_be_used_is_a_config_error() {
        let missing = Client::builder("https://a:1")
            .ca_file("/nonexistent/baton-ca.pem")
            .build();
        assert!(
            matches!(&missing, Err(Error::Config { message }) if message.contains("cannot read CA file")),
            "{missing:?}"
        );
        let not_pem = std::env::temp_dir().join(format!("baton-not-pem-{}", std::process::id()));
        std::fs::write(&not_pem, "hello").unwrap_or_default();
        let empty = Client::builder("https://a:1").ca_file(&not_pem).build();
        let _ = std::fs::remove_file(&not_pem);
        assert!(
            matches!(&empty, Err(Error::Config { message }) if message.contains("no CERTIFICATE")),
            "{empty:?}"
        );
    }

    #[test]
    fn bad_base_urls_are_config_errors() {
        for urls in ["", " , ", "a:b:c", "ftp://x", "http://x/?q=1", "nope"] {
            assert!(
                matches!(parse_base_urls(urls), Err(Error::Config { .. })),
                "{urls:?}"
            );
        }
    }

    #[test]
    fn request_ids_are_128_bit_hex_and_fresh() {
        let first = generate_request_id();
        assert_eq!(first.len(), 32);
        assert!(first.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(first, generate_request_id());
    }

    #[test]
    fn owner_labels_name_host_user_and_pid() {
        let label = owner_label(42);
        assert!(label.ends_with("/42"), "{label}");
        assert_eq!(label.split('/').count(), 3, "{label}");
    }

    #[test]
    fn api_keys_that_cannot_be_headers_are_refused() {
        let built = Client::builder("http://a:1").api_key("bad\nkey").build();
        assert!(matches!(built, Err(Error::Config { .. })));
        let client = Client::builder("http://a:1").api_key("secret").build();
        let text = format!("{client:?}");
        assert!(!text.contains("secret"), "Debug must not print the key");
    }

    #[test]
    fn remaining_saturates() {
        assert_eq!(remaining(None), None);
        let past = Instant::now() - Duration::from_secs(1);
        assert_eq!(remaining(Some(past)), Some(Duration::ZERO));
    }
}
