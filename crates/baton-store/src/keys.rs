//! API keys and the audit log as stores keep them: plain data, no rule. What a role allows and
//! how a presented key is checked is the server's business (`baton-server`'s `auth` module);
//! a store only keeps these records durably and hands them back.

use baton_core::{KeyQuota, Millis};

/// What a grant allows under its prefix. Ordered: each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Read locks, history and jobs.
    Read,
    /// Read, plus take, wait on, renew, release and fence leases, and run jobs.
    Acquire,
    /// Everything: also revoke other holders' leases; with the prefix `""`, manage keys and
    /// read the audit log.
    Admin,
}

impl Role {
    /// The role's name on the wire and in stores: `read`, `acquire`, `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Acquire => "acquire",
            Role::Admin => "admin",
        }
    }

    /// Parses a role's name.
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "read" => Some(Role::Read),
            "acquire" => Some(Role::Acquire),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// One role over every lock whose name starts with `prefix` (`""`: every lock).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyGrant {
    /// The role.
    pub role: Role,
    /// The lock-name prefix.
    pub prefix: String,
}

impl KeyGrant {
    /// Grants as stores keep them: one `role:prefix` line each.
    pub fn to_lines(grants: &[KeyGrant]) -> String {
        grants
            .iter()
            .map(|grant| format!("{}:{}", grant.role.as_str(), grant.prefix))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Parses [`KeyGrant::to_lines`]; the first line that is not a grant is the error.
    pub fn from_lines(text: &str) -> Result<Vec<KeyGrant>, String> {
        text.lines()
            .filter(|line| !line.is_empty())
            .map(|line| {
                let (role, prefix) = line.split_once(':').unwrap_or((line, ""));
                Role::parse(role)
                    .map(|role| KeyGrant {
                        role,
                        prefix: prefix.to_owned(),
                    })
                    .ok_or_else(|| line.to_owned())
            })
            .collect()
    }
}

/// An API key as stored: never the secret, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// The public id, `key_` followed by 16 hex digits.
    pub id: String,
    /// A label for people.
    pub name: String,
    /// SHA-256 of the secret, lowercase hex.
    pub secret_sha256: String,
    /// What the key may do.
    pub grants: Vec<KeyGrant>,
    /// Requests per second this key may make (`None`: the server's default).
    pub rate_per_sec: Option<u32>,
    /// Its own quotas of leases, waiters, locks and jobs; each `None` is the server's default.
    pub quota: KeyQuota,
    /// When it was created.
    pub created_at: Millis,
    /// When it was revoked; a revoked key authenticates nothing.
    pub revoked_at: Option<Millis>,
}

/// One audit-log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Assigned by the store when the entry is appended: increasing.
    pub seq: u64,
    /// When it happened.
    pub at: Millis,
    /// Who did it: a key id, or `anonymous` on a server without keys.
    pub actor: String,
    /// What was done, e.g. `key.create`, `key.revoke`, `lease.revoke`.
    pub action: String,
    /// What it was done to: a key id, a lock name.
    pub target: String,
    /// Anything else worth keeping.
    pub detail: Option<String>,
}
