//! API keys: who is calling ([`authenticate`], a middleware on every route but the open ones),
//! what they may do ([`Caller`]), and how fast (a token bucket per key).
//!
//! - A key is a secret `baton_` + 64 hex digits (32 random bytes), shown once when created.
//!   Servers and stores keep only its SHA-256; a presented key is hashed and compared with every
//!   known hash in constant time.
//! - Keys come from the store (created through `POST /v1/keys`) and from the `--keys-file` read
//!   at start. The server keeps them in memory and reloads the store's every
//!   [`ServerConfig::key_reload_ms`](crate::ServerConfig::key_reload_ms), so a key created or
//!   revoked through another server sharing the database counts within that period; on this
//!   server at once.
//! - Authentication is on as soon as any key is known (revoked ones included, so revoking the
//!   last key never opens the server). With none, every request is let through as
//!   `anonymous`, as before keys existed.
//! - Roles, each including the ones before it, over the locks whose names start with a prefix:
//!   `read` (GET locks, history, jobs), `acquire` (also acquire, wait, renew, release, cancel,
//!   fence, and create / wait on / heartbeat / finish jobs), `admin` (also revoke leases; with
//!   the prefix `""`, manage keys and read the audit log).
//! - Open without a key: [`OPEN_PATHS`], and the dashboard's files (they hold no data; the
//!   page reads the API with the user's key).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use baton_core::KeyQuota;
use baton_proto::ErrorCode;
use baton_store::{ApiKey, KeyGrant, Role, Store};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// What every key's secret starts with.
pub const SECRET_PREFIX: &str = "baton_";
/// The default of [`ServerConfig::key_rate_limit`](crate::ServerConfig::key_rate_limit).
pub const KEY_RATE_LIMIT_DEFAULT: u32 = 1_000;
/// The default of [`ServerConfig::key_reload_ms`](crate::ServerConfig::key_reload_ms).
pub const KEY_RELOAD_MS_DEFAULT: u64 = 1_000;
/// Paths answered without a key: liveness, readiness and the API description.
pub const OPEN_PATHS: &[&str] = &["/healthz", "/readyz", "/v1/openapi.json"];
/// The actor recorded for requests on a server without keys.
pub const ANONYMOUS: &str = "anonymous";
/// The longest key name.
pub const KEY_NAME_BYTES_MAX: usize = 128;
/// Most grants one key may carry.
pub const GRANTS_MAX: usize = 64;
/// The largest per-key rate a key may be given (requests per second).
pub const RATE_PER_SEC_MAX: u32 = 1_000_000;
/// The largest quota a key may be given (of leases, waiters, locks or jobs). The global bounds
/// apply above a key's quota anyway; this only keeps the number sane.
pub const QUOTA_MAX: u64 = 100_000_000;

/// A fresh secret: `baton_` and 64 hex digits (32 random bytes).
pub fn generate_secret() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|error| anyhow::anyhow!("no random source: {error}"))?;
    Ok(format!("{SECRET_PREFIX}{}", hex(&bytes)))
}

/// A fresh public key id: `key_` and 16 hex digits.
pub fn generate_key_id() -> anyhow::Result<String> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|error| anyhow::anyhow!("no random source: {error}"))?;
    Ok(format!("key_{}", hex(&bytes)))
}

/// SHA-256 of a secret, lowercase hex: what stores and keys files hold.
pub fn hash_secret(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Parses `ROLE:PREFIX` (PREFIX may be empty: every lock).
pub fn parse_grant(text: &str) -> Result<KeyGrant, String> {
    let (role, prefix) = text
        .split_once(':')
        .ok_or_else(|| format!("grant {text:?} is not ROLE:PREFIX (e.g. acquire:team-a/)"))?;
    let role = Role::parse(role)
        .ok_or_else(|| format!("grant {text:?}: the role must be read, acquire or admin"))?;
    if prefix.len() > baton_core::limits::LOCK_NAME_BYTES_MAX
        || !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '/' | '@' | '-'))
    {
        return Err(format!(
            "grant {text:?}: the prefix must be at most {} characters of A-Z a-z 0-9 . _ : / @ -",
            baton_core::limits::LOCK_NAME_BYTES_MAX
        ));
    }
    Ok(KeyGrant {
        role,
        prefix: prefix.to_owned(),
    })
}

/// `ROLE:PREFIX`.
pub fn grant_text(grant: &KeyGrant) -> String {
    format!("{}:{}", grant.role.as_str(), grant.prefix)
}

/// Checks a key's name and grants as `POST /v1/keys` and the keys file take them.
pub fn validate_key(
    name: &str,
    grants: &[String],
    rate: Option<u32>,
) -> Result<Vec<KeyGrant>, String> {
    if name.is_empty() || name.len() > KEY_NAME_BYTES_MAX || name.chars().any(char::is_control) {
        return Err(format!(
            "the key name must be 1 to {KEY_NAME_BYTES_MAX} bytes without control characters"
        ));
    }
    if grants.is_empty() || grants.len() > GRANTS_MAX {
        return Err(format!(
            "a key needs 1 to {GRANTS_MAX} grants such as read:, acquire:team-a/ or admin:"
        ));
    }
    if let Some(rate) = rate
        && !(1..=RATE_PER_SEC_MAX).contains(&rate)
    {
        return Err(format!(
            "rate_per_sec must be between 1 and {RATE_PER_SEC_MAX}"
        ));
    }
    grants.iter().map(|grant| parse_grant(grant)).collect()
}

/// Checks a key's own quotas, as `POST /v1/keys` and the keys file take them (each `None`: the
/// server's default). 0 is allowed: a key that may, say, create no jobs.
pub fn validate_quota(
    leases_max: Option<u64>,
    waiters_max: Option<u64>,
    locks_max: Option<u64>,
    jobs_max: Option<u64>,
) -> Result<KeyQuota, String> {
    let check = |value: Option<u64>, field: &str| -> Result<Option<usize>, String> {
        value
            .map(|value| {
                if value > QUOTA_MAX {
                    return Err(format!("{field} must be at most {QUOTA_MAX}"));
                }
                usize::try_from(value).map_err(|_| format!("{field} is too large"))
            })
            .transpose()
    };
    Ok(KeyQuota {
        leases_max: check(leases_max, "leases_max")?,
        waiters_max: check(waiters_max, "waiters_max")?,
        locks_max: check(locks_max, "locks_max")?,
        jobs_max: check(jobs_max, "jobs_max")?,
    })
}

/// One entry of the keys file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKey {
    name: String,
    secret_sha256: String,
    grants: Vec<String>,
    #[serde(default)]
    rate_per_sec: Option<u32>,
    #[serde(default)]
    leases_max: Option<u64>,
    #[serde(default)]
    waiters_max: Option<u64>,
    #[serde(default)]
    locks_max: Option<u64>,
    #[serde(default)]
    jobs_max: Option<u64>,
    #[serde(default)]
    id: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    key: Vec<FileKey>,
}

/// Reads a keys file (TOML: `[[key]]` tables with `name`, `secret_sha256`, `grants`, and
/// optionally `rate_per_sec`, the quotas `leases_max`, `waiters_max`, `locks_max`, `jobs_max`,
/// and `id`). A key without `id` gets one derived from its hash, so
/// it keeps its id across restarts.
pub fn read_keys_file(path: &std::path::Path) -> anyhow::Result<Vec<ApiKey>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the keys file {}", path.display()))?;
    let file: KeysFile = toml::from_str(&text)
        .with_context(|| format!("the keys file {} is not valid", path.display()))?;
    let mut keys: Vec<ApiKey> = Vec::new();
    for entry in file.key {
        let grants =
            validate_key(&entry.name, &entry.grants, entry.rate_per_sec).map_err(|error| {
                anyhow::anyhow!("{}: key {:?}: {error}", path.display(), entry.name)
            })?;
        let quota = validate_quota(
            entry.leases_max,
            entry.waiters_max,
            entry.locks_max,
            entry.jobs_max,
        )
        .map_err(|error| anyhow::anyhow!("{}: key {:?}: {error}", path.display(), entry.name))?;
        let hash = entry.secret_sha256.to_ascii_lowercase();
        if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
            anyhow::bail!(
                "{}: key {:?}: secret_sha256 must be 64 hex digits (`baton keys create --offline` prints it)",
                path.display(),
                entry.name
            );
        }
        let id = match entry.id {
            Some(id) if valid_key_id(&id) => id,
            Some(id) => anyhow::bail!(
                "{}: key {:?}: id {id:?} is not `key_` and 16 hex digits",
                path.display(),
                entry.name
            ),
            None => format!(
                "key_{}",
                &hash_secret(&format!("baton-key-id:{hash}"))[..16]
            ),
        };
        if keys
            .iter()
            .any(|key| key.id == id || key.secret_sha256 == hash)
        {
            anyhow::bail!("{}: key {:?} appears twice", path.display(), entry.name);
        }
        keys.push(ApiKey {
            id,
            name: entry.name,
            secret_sha256: hash,
            grants,
            rate_per_sec: entry.rate_per_sec,
            created_at: 0,
            revoked_at: None,
            quota,
        });
    }
    Ok(keys)
}

/// Whether `id` has the form of a key id.
pub fn valid_key_id(id: &str) -> bool {
    id.strip_prefix("key_")
        .is_some_and(|hex| hex.len() == 16 && hex.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Where a key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// Created through the API (kept by the store).
    Store,
    /// From `--keys-file`.
    File,
}

/// The keys in force: the store's, then the file's whose id the store does not hold (a file
/// key revoked through the API is kept in the store as revoked).
#[derive(Debug, Default)]
pub struct KeySet {
    /// Every key with its source.
    pub keys: Vec<(Arc<ApiKey>, KeySource)>,
}

/// The server's key cache and rate limiter.
pub struct Auth {
    store: Arc<dyn Store>,
    file_keys: Vec<ApiKey>,
    current: RwLock<Arc<KeySet>>,
    /// Reloads run one at a time: a reload that read the store before a key was created must
    /// not overwrite the set of one that read it after (the periodic reload racing a create).
    reloading: tokio::sync::Mutex<()>,
    default_rate: u32,
    buckets: Mutex<HashMap<String, Bucket>>,
    /// Host names a server without keys answers besides loopback, IP addresses and
    /// `localhost` (lowercase, without port).
    allowed_hosts: Vec<String>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Auth {
    /// An authenticator over `store` and the keys of the keys file; call [`Auth::reload`]
    /// before serving.
    pub fn new(store: Arc<dyn Store>, file_keys: Vec<ApiKey>, default_rate: u32) -> Auth {
        Auth {
            store,
            file_keys,
            current: RwLock::new(Arc::new(KeySet::default())),
            reloading: tokio::sync::Mutex::new(()),
            default_rate: default_rate.max(1),
            buckets: Mutex::new(HashMap::new()),
            allowed_hosts: Vec::new(),
        }
    }

    /// Also answers these `Host` names while the server has no keys (see [`host_allowed`]).
    pub fn with_allowed_hosts(mut self, hosts: &[String]) -> Auth {
        self.allowed_hosts = hosts
            .iter()
            .map(|host| host.trim().trim_end_matches('.').to_ascii_lowercase())
            .collect();
        self
    }

    /// Whether a server without keys answers a request whose `Host` header is `host`.
    fn host_allowed(&self, host: Option<&str>) -> bool {
        host_allowed(host, &self.allowed_hosts)
    }

    /// Reads the store's keys again and merges the file's.
    pub async fn reload(&self) -> Result<(), baton_store::StoreError> {
        let _one_at_a_time = self.reloading.lock().await;
        let stored = self.store.keys().await?;
        let mut keys: Vec<(Arc<ApiKey>, KeySource)> = stored
            .into_iter()
            .map(|key| (Arc::new(key), KeySource::Store))
            .collect();
        for key in &self.file_keys {
            if !keys.iter().any(|(kept, _)| kept.id == key.id) {
                keys.push((Arc::new(key.clone()), KeySource::File));
            }
        }
        let set = Arc::new(KeySet { keys });
        match self.current.write() {
            Ok(mut current) => *current = set,
            Err(poisoned) => *poisoned.into_inner() = set,
        }
        Ok(())
    }

    /// The keys in force.
    pub fn current(&self) -> Arc<KeySet> {
        match self.current.read() {
            Ok(current) => Arc::clone(&current),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// True when requests need a key.
    pub fn enabled(&self) -> bool {
        !self.current().keys.is_empty()
    }

    /// The live key whose secret is `secret`. Every known hash is compared, in constant time.
    fn find(&self, secret: &str) -> Option<Arc<ApiKey>> {
        let hash = hash_secret(secret);
        let mut found = None;
        for (key, _) in &self.current().keys {
            let equal: bool = key.secret_sha256.as_bytes().ct_eq(hash.as_bytes()).into();
            if equal && key.revoked_at.is_none() {
                found = Some(Arc::clone(key));
            }
        }
        found
    }

    /// Takes one request from the key's bucket; `Err(seconds)` to wait when it is empty.
    fn take(&self, key: &ApiKey) -> Result<(), u64> {
        let rate = f64::from(key.rate_per_sec.unwrap_or(self.default_rate).max(1));
        let now = Instant::now();
        let mut buckets = match self.buckets.lock() {
            Ok(buckets) => buckets,
            Err(poisoned) => poisoned.into_inner(),
        };
        let bucket = buckets.entry(key.id.clone()).or_insert(Bucket {
            tokens: rate,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(rate);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err((((1.0 - bucket.tokens) / rate).ceil() as u64).max(1))
        }
    }
}

/// Reloads the keys every `period` until dropped (the task is aborted with the server).
pub fn spawn_reloader(auth: Arc<Auth>, period: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(period.max(Duration::from_millis(10)));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if let Err(error) = auth.reload().await {
                tracing::warn!(%error, "cannot reload the API keys; keeping the ones loaded");
            }
        }
    })
}

/// Who is calling: a key, or nobody on a server without keys (everything allowed).
#[derive(Debug, Clone)]
pub struct Caller {
    key: Option<Arc<ApiKey>>,
}

impl Caller {
    /// The id of the caller's key (`None` on a server without keys): what its tickets are
    /// recorded with, so that revoking the key cancels them.
    pub fn key_id(&self) -> Option<String> {
        self.key.as_ref().map(|key| key.id.clone())
    }

    /// The caller's key's own quotas (the table's defaults fill the ones it lacks); unused
    /// without a key, since a request without one meets only the global bounds.
    pub fn quota(&self) -> KeyQuota {
        self.key
            .as_ref()
            .map_or_else(KeyQuota::default, |key| key.quota)
    }

    /// The audit log's actor: the key id, or `anonymous`.
    pub fn actor(&self) -> &str {
        self.key.as_ref().map_or(ANONYMOUS, |key| key.id.as_str())
    }

    /// Whether the caller holds `role` (or a higher one) over `lock`. With `lock` `""`: over
    /// every lock (only a grant with the empty prefix covers it).
    pub fn allows(&self, role: Role, lock: &str) -> bool {
        match &self.key {
            None => true,
            Some(key) => key
                .grants
                .iter()
                .any(|grant| grant.role >= role && lock.starts_with(grant.prefix.as_str())),
        }
    }

    /// The request id as the store keeps it: `KEY_ID/ID` for a key, as sent on a server
    /// without keys. So request ids are scoped to the key: another key cannot reuse (squat)
    /// one, nor learn from a conflict what it was used for. `/` is outside the request-id
    /// alphabet, so no client can write an id inside another key's scope.
    pub fn scoped_request_id(&self, request_id: Option<String>) -> Option<String> {
        let request_id = request_id?;
        Some(match &self.key {
            Some(key) => format!("{}/{request_id}", key.id),
            None => request_id,
        })
    }

    /// The prefixes of the locks the caller may see, none of them under another; `None` when
    /// it sees every lock (no keys, or a grant with the prefix `""`).
    pub fn visible_prefixes(&self) -> Option<Vec<String>> {
        let key = self.key.as_ref()?;
        let mut prefixes: Vec<&str> = key.grants.iter().map(|g| g.prefix.as_str()).collect();
        prefixes.sort_unstable();
        let mut kept: Vec<String> = Vec::new();
        for prefix in prefixes {
            if prefix.is_empty() {
                return None;
            }
            // Sorted, so a prefix that covers this one came just before it (or is kept last).
            if kept
                .last()
                .is_none_or(|last| !prefix.starts_with(last.as_str()))
            {
                kept.push(prefix.to_owned());
            }
        }
        Some(kept)
    }

    /// Whether the caller may see `lock` at all.
    pub fn sees(&self, lock: &str) -> bool {
        self.allows(Role::Read, lock)
    }

    /// `403 forbidden` unless the caller holds `role` over `lock`.
    pub fn require(&self, role: Role, lock: &str) -> Result<(), ApiError> {
        if self.allows(role, lock) {
            Ok(())
        } else {
            Err(forbidden(format!(
                "this API key does not grant {} on {lock:?}",
                role.as_str()
            )))
        }
    }

    /// `403 forbidden` unless the caller is an administrator of every lock (prefix `""`).
    pub fn require_full_admin(&self) -> Result<(), ApiError> {
        match &self.key {
            None => Ok(()),
            Some(key)
                if key
                    .grants
                    .iter()
                    .any(|grant| grant.role == Role::Admin && grant.prefix.is_empty()) =>
            {
                Ok(())
            }
            Some(_) => Err(forbidden(
                "only a key granted admin: (admin over every lock) may do this".to_owned(),
            )),
        }
    }
}

fn forbidden(message: String) -> ApiError {
    ApiError::new(ErrorCode::Forbidden, message)
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    /// The caller [`authenticate`] found. A route it did not run on is refused (fail closed).
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| unauthorized("this route is not open"))
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, message)
}

/// The middleware on every route: lets [`OPEN_PATHS`] through, and the dashboard's files
/// ([`crate::dashboard::is_page_path`]; under the Host rule on a server without keys), then
/// finds the key of
/// `Authorization: Bearer KEY` (401 without a valid one, when keys are in force), takes one
/// request from its rate limit (429 with `Retry-After`), and hands the [`Caller`] on.
pub async fn authenticate(
    State(auth): State<Arc<Auth>>,
    mut request: Request,
    next: Next,
) -> Response {
    if OPEN_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    // The dashboard's files hold no data (the page reads the API with the user's key), so they
    // need no key; a server without keys serves them only under the Host rule below, like
    // everything it answers, so a rebinding name cannot even load the page.
    if crate::dashboard::is_page_path(request.uri().path()) {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|value| value.to_str().ok());
        if !auth.enabled() && !auth.host_allowed(host) {
            return host_not_allowed();
        }
        return next.run(request).await;
    }
    let caller = if auth.enabled() {
        // Keys are checked below; the Host header does not matter then.
        let secret = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                let (scheme, secret) = value.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| secret.trim())
            });
        let Some(secret) = secret else {
            return challenge(unauthorized(
                "this server needs an API key: send Authorization: Bearer KEY (BATON_API_KEY)",
            ));
        };
        let Some(key) = auth.find(secret) else {
            return challenge(unauthorized("the API key is unknown or revoked"));
        };
        if let Err(seconds) = auth.take(&key) {
            let mut response = ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "this API key may make {} requests per second; retry after {seconds} s",
                    key.rate_per_sec.unwrap_or(auth.default_rate)
                ),
            )
            .into_response();
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return response;
        }
        Caller { key: Some(key) }
    } else {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|value| value.to_str().ok());
        if !auth.host_allowed(host) {
            return host_not_allowed();
        }
        Caller { key: None }
    };
    let key_id = caller.key_id();
    request.extensions_mut().insert(caller);
    let mut response = next.run(request).await;
    if let Some(id) = key_id {
        response
            .extensions_mut()
            .insert(crate::telemetry::KeySeen(id));
    }
    response
}

fn host_not_allowed() -> Response {
    ApiError::new(
        ErrorCode::HostNotAllowed,
        "this server has no API keys, so it answers only requests addressed to a loopback or \
         IP address or localhost; start it with --allowed-host NAME to answer NAME too",
    )
    .into_response()
}

/// Whether a server without keys answers `Host: host`: an IP address (a page reached through a
/// DNS-rebinding name sends that name, never an address), `localhost` or a name under it, or
/// one of `allowed` (lowercase). A request without `Host` (HTTP/1.0 tools) is answered too: a
/// browser always sends one.
pub fn host_allowed(host: Option<&str>, allowed: &[String]) -> bool {
    let Some(host) = host else {
        return true;
    };
    let host = host.trim();
    // `[v6]:port`, `[v6]`, `name:port`, `v4:port`, `name`.
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((address, _port)) => {
                return address.parse::<std::net::Ipv6Addr>().is_ok();
            }
            None => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
            Some(_) => return false,
            None => host,
        }
    };
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return true;
    }
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost") || allowed.contains(&name)
}

fn challenge(error: ApiError) -> Response {
    let mut response = error.into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"baton\""),
    );
    response
}

fn wire_count(count: usize) -> u64 {
    u64::try_from(count).unwrap_or(u64::MAX)
}

/// A key as the API shows it.
pub fn key_wire(key: &ApiKey, source: KeySource) -> baton_proto::KeyInfo {
    baton_proto::KeyInfo {
        id: key.id.clone(),
        name: key.name.clone(),
        grants: key.grants.iter().map(grant_text).collect(),
        rate_per_sec: key.rate_per_sec,
        leases_max: key.quota.leases_max.map(wire_count),
        waiters_max: key.quota.waiters_max.map(wire_count),
        locks_max: key.quota.locks_max.map(wire_count),
        jobs_max: key.quota.jobs_max.map(wire_count),
        created_at: crate::wire::timestamp(key.created_at),
        revoked_at: key.revoked_at.map(crate::wire::timestamp),
        source: match source {
            KeySource::Store => "store",
            KeySource::File => "file",
        }
        .to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keyless_server_answers_addresses_localhost_and_allowed_names_only() {
        let allowed = vec!["baton.internal".to_owned()];
        for host in [
            "127.0.0.1",
            "127.0.0.1:7700",
            "[::1]:7700",
            "[::1]",
            "10.0.0.5:7700",
            "localhost:7700",
            "LOCALHOST",
            "api.localhost",
            "baton.internal:7700",
            "Baton.Internal.",
        ] {
            assert!(host_allowed(Some(host), &allowed), "{host}");
        }
        assert!(host_allowed(None, &allowed));
        for host in [
            "attacker.example",
            "attacker.example:7700",
            "localhost.attacker.example",
            "127.0.0.1.nip.io",
            "[evil]:1",
            "x:y",
            "",
        ] {
            assert!(!host_allowed(Some(host), &allowed), "{host}");
        }
    }

    #[test]
    fn a_keys_file_key_carries_its_own_quotas_within_bounds() {
        let folder = std::env::temp_dir().join(format!("baton-keys-quota-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&folder);
        let path = folder.join("keys.toml");
        let hash = "a".repeat(64);
        let write = |extra: &str| {
            std::fs::write(
                &path,
                format!(
                    "[[key]]\nname = \"ci\"\nsecret_sha256 = \"{hash}\"\ngrants = [\"acquire:ci/\"]\n{extra}"
                ),
            )
            .unwrap_or_else(|error| panic!("{error}"));
        };
        write("waiters_max = 50\njobs_max = 0\n");
        let keys = read_keys_file(&path).unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(
            keys[0].quota,
            KeyQuota {
                waiters_max: Some(50),
                jobs_max: Some(0),
                ..KeyQuota::default()
            }
        );
        write(&format!("leases_max = {}\n", QUOTA_MAX + 1));
        let error = read_keys_file(&path).err().map(|error| error.to_string());
        assert!(
            error
                .as_deref()
                .is_some_and(|text| text.contains("leases_max")),
            "{error:?}"
        );
        let _ = std::fs::remove_dir_all(&folder);
    }

    #[test]
    fn grants_parse_and_print() {
        let grant = parse_grant("acquire:team-a/").unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(grant.role, Role::Acquire);
        assert_eq!(grant_text(&grant), "acquire:team-a/");
        assert_eq!(parse_grant("admin:").map(|g| g.prefix), Ok(String::new()));
        assert!(parse_grant("write:x").is_err());
        assert!(parse_grant("read").is_err());
        assert!(parse_grant("read:a b").is_err());
    }

    #[test]
    fn secrets_are_32_random_bytes_and_hash_to_hex() {
        let (Ok(a), Ok(b)) = (generate_secret(), generate_secret()) else {
            panic!("no random source");
        };
        assert_ne!(a, b);
        assert_eq!(a.len(), SECRET_PREFIX.len() + 64);
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn roles_include_lower_ones_under_their_prefix_only() {
        let caller = Caller {
            key: Some(Arc::new(ApiKey {
                quota: Default::default(),
                id: "key_0000000000000001".into(),
                name: "t".into(),
                secret_sha256: String::new(),
                grants: vec![
                    KeyGrant {
                        role: Role::Acquire,
                        prefix: "team-a/".into(),
                    },
                    KeyGrant {
                        role: Role::Read,
                        prefix: "shared/".into(),
                    },
                ],
                rate_per_sec: None,
                created_at: 0,
                revoked_at: None,
            })),
        };
        assert!(caller.allows(Role::Read, "team-a/x"));
        assert!(caller.allows(Role::Acquire, "team-a/x"));
        assert!(!caller.allows(Role::Admin, "team-a/x"));
        assert!(caller.allows(Role::Read, "shared/x"));
        assert!(!caller.allows(Role::Acquire, "shared/x"));
        assert!(!caller.sees("team-b/x"));
        assert!(caller.require_full_admin().is_err());
    }

    #[test]
    fn visible_prefixes_drop_the_ones_under_another_and_an_empty_one_sees_all() {
        let caller = |prefixes: &[&str]| Caller {
            key: Some(Arc::new(ApiKey {
                quota: Default::default(),
                id: "key_0000000000000001".into(),
                name: "t".into(),
                secret_sha256: String::new(),
                grants: prefixes
                    .iter()
                    .map(|prefix| KeyGrant {
                        role: Role::Read,
                        prefix: (*prefix).to_owned(),
                    })
                    .collect(),
                rate_per_sec: None,
                created_at: 0,
                revoked_at: None,
            })),
        };
        assert_eq!(
            caller(&["team-b/", "team-a/x/", "team-a/", "team-a0"]).visible_prefixes(),
            Some(vec![
                "team-a/".to_owned(),
                "team-a0".to_owned(),
                "team-b/".to_owned()
            ])
        );
        assert_eq!(caller(&["team-a/", ""]).visible_prefixes(), None);
        assert_eq!(Caller { key: None }.visible_prefixes(), None);
    }
}
