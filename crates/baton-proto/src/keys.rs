//! API keys and the audit log on the wire. A key's secret travels once, in the answer to its
//! creation; listings show neither secrets nor their hashes.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

#[cfg(feature = "openapi")]
use utoipa::ToSchema;

/// Body of `POST /v1/keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// A label for people (1 to 128 bytes, no control characters).
    pub name: String,
    /// What the key may do: `ROLE:PREFIX` strings, ROLE one of `read`, `acquire`, `admin`;
    /// PREFIX a lock-name prefix, empty for every lock (`admin:` is a full administrator).
    pub grants: Vec<String>,
    /// Requests per second this key may make; the server's `--key-rate-limit` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_sec: Option<u32>,
    /// Most live leases this key may hold; the server's `--key-max-leases` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leases_max: Option<u64>,
    /// Most tickets this key may have queued; the server's `--key-max-waiters` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiters_max: Option<u64>,
    /// Most locks this key may have created that the server still knows (idle ones are
    /// forgotten after an hour); the server's `--key-max-locks` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locks_max: Option<u64>,
    /// Most job records of this key the server keeps (its oldest finished ones are pruned to
    /// make room); the server's `--key-max-jobs` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs_max: Option<u64>,
}

/// A key as listings show it: never its secret or hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct KeyInfo {
    /// The public id, `key_` and 16 hex digits: what `DELETE /v1/keys/{id}` takes.
    pub id: String,
    /// The label.
    pub name: String,
    /// `ROLE:PREFIX` strings.
    pub grants: Vec<String>,
    /// Its own rate limit, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_sec: Option<u32>,
    /// Its own lease quota, if any (else the server's default applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leases_max: Option<u64>,
    /// Its own waiter quota, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiters_max: Option<u64>,
    /// Its own lock quota, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locks_max: Option<u64>,
    /// Its own job quota, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs_max: Option<u64>,
    /// When it was created (the Unix epoch for a key from the keys file).
    pub created_at: Timestamp,
    /// When it was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Timestamp>,
    /// `store` (created through the API) or `file` (from the server's `--keys-file`).
    pub source: String,
}

/// Answer to `POST /v1/keys`: the key and its secret, shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct CreatedKey {
    /// The key.
    pub key: KeyInfo,
    /// The secret to send as `Authorization: Bearer SECRET`. Not kept by the server.
    pub secret: String,
}

/// Answer to `GET /v1/keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct KeyList {
    /// Every key, revoked ones included, oldest first.
    pub keys: Vec<KeyInfo>,
}

/// Answer to `DELETE /v1/keys/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct RevokeKeyResponse {
    /// False when it was already revoked.
    pub revoked: bool,
    /// The key as it is now.
    pub key: KeyInfo,
}

/// One audit-log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct AuditEntry {
    /// Increasing: pass the smallest one seen as `before` to read older entries.
    pub seq: u64,
    /// When.
    pub at: Timestamp,
    /// The key id that did it (`anonymous` on a server without keys).
    pub actor: String,
    /// `key.create`, `key.revoke` or `lease.revoke`.
    pub action: String,
    /// A key id or a lock name.
    pub target: String,
    /// More about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Answer to `GET /v1/audit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct AuditList {
    /// Newest first.
    pub entries: Vec<AuditEntry>,
}
