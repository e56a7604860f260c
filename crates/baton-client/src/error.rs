//! The client's error type, and the one place that turns an HTTP answer (status and body) into
//! it.
//!
//! The variants are chosen by what the caller will do next, not by HTTP status: retry later
//! ([`Error::Unavailable`]), wait or give up ([`Error::Busy`], [`Error::TimedOut`]), stop the
//! guarded work ([`Error::LeaseLost`]), fix the input ([`Error::Rejected`],
//! [`Error::InvalidInput`]), fix the credentials ([`Error::Unauthorized`]), and so on. The
//! server's stable code and its message are kept wherever the server sent them.

use std::fmt;
use std::time::Duration;

use baton_proto::{ErrorBody, ErrorCode, Holder};

/// A `Result` whose error is the client's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How many characters of an answer that is not an [`ErrorBody`] are kept as its message.
const RAW_MESSAGE_CHARS_MAX: usize = 200;

/// An error code as the server sent it: one this version knows, or a raw string from a newer
/// server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Code {
    /// A code of the [`ErrorCode`] table.
    Known(ErrorCode),
    /// A code this version of the client does not know, kept verbatim.
    Other(String),
}

impl Code {
    /// Parses a code from the wire, keeping unknown codes verbatim.
    pub fn parse(code: &str) -> Code {
        match ErrorCode::parse(code) {
            Some(known) => Code::Known(known),
            None => Code::Other(code.to_owned()),
        }
    }

    /// The code as it appears on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Code::Known(code) => code.as_str(),
            Code::Other(code) => code,
        }
    }

    /// True when this is the known code `code`.
    pub fn is(&self, code: ErrorCode) -> bool {
        *self == Code::Known(code)
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything a call to a baton server can end with, other than success.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No server could be reached (connection refused, timeout), or the server said it cannot
    /// serve right now (503). Retrying later may succeed; reads, releases and acquires that
    /// carry a request id are already retried with backoff before this is returned.
    #[error("{message}")]
    Unavailable {
        /// The server's code for a 503 answer; `None` when no answer came.
        code: Option<Code>,
        /// What happened.
        message: String,
    },

    /// The lock is held to capacity (or has a queue) and the request did not wait in the queue.
    #[error("{message}")]
    Busy {
        /// Who holds the lock now, as the server listed them.
        holders: Vec<Holder>,
        /// The server's message.
        message: String,
    },

    /// [`Client::lock`](crate::Client::lock) or
    /// [`Client::wait_for_lease`](crate::Client::wait_for_lease) waited as long as it was told to
    /// without being granted the lease; its ticket was cancelled.
    #[error("timed out after {} waiting for lock {lock}", humanize(*waited))]
    TimedOut {
        /// The lock's name.
        lock: String,
        /// How long it waited.
        waited: Duration,
    },

    /// The lease ended (it expired, was released, or was revoked): whoever held it must stop.
    #[error("{message}")]
    LeaseLost {
        /// True when an administrator revoked it (`revoked`); false when it expired or was
        /// released (`lease_lost`).
        revoked: bool,
        /// The server's message.
        message: String,
    },

    /// The API key already has as many leases, waiters, locks or jobs as its quota allows
    /// (`429 quota_exceeded`). Not retryable by waiting: the key must first release a lease,
    /// cancel a ticket or finish a job (or get a larger quota). Other keys are not affected.
    #[error("{message}")]
    QuotaExceeded {
        /// Which quota: `leases`, `waiters`, `locks` or `jobs` (empty if the server did not say).
        quota: String,
        /// Its limit for this key (0 if the server did not say).
        limit: u64,
        /// The server's message.
        message: String,
    },

    /// The lease, ticket, lock or holder does not exist (404).
    #[error("{message}")]
    NotFound {
        /// The server's code, e.g. `lease_not_found`.
        code: Code,
        /// The server's message.
        message: String,
    },

    /// The request lacks credentials or they do not grant it (401, 403).
    #[error("{message}")]
    Unauthorized {
        /// 401 or 403.
        status: u16,
        /// The server's code.
        code: Code,
        /// The server's message.
        message: String,
    },

    /// The server refused the request as it is (any other 4xx): bad input, a conflict with the
    /// lock's state, a lapsed ticket. Retrying the same request will not help.
    #[error("{message}")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The server's code, e.g. `invalid_ttl`.
        code: Code,
        /// The server's message.
        message: String,
    },

    /// The server failed (5xx other than 503).
    #[error("{message}")]
    Server {
        /// The HTTP status.
        status: u16,
        /// The server's code, when it sent one.
        code: Option<Code>,
        /// The server's message.
        message: String,
    },

    /// The answer could not be understood: not JSON of the expected shape, or a status the API
    /// does not send for this call. Usually a URL that points at something other than baton.
    #[error("unexpected answer from {url}: {message}")]
    Protocol {
        /// The URL that answered.
        url: String,
        /// What was wrong with the answer.
        message: String,
    },

    /// TLS with the server failed: its certificate is not trusted (unknown CA, wrong host name,
    /// expired), or it does not speak TLS. Retrying will not help; fix the URL or the trusted
    /// CAs (`ClientBuilder::ca_file`).
    #[error("{message}")]
    Tls {
        /// What failed, per server, and what to do about it.
        message: String,
    },

    /// The client refused to send the request: a lock name the server could never accept.
    #[error("{message}")]
    InvalidInput {
        /// What is wrong and how to fix it.
        message: String,
    },

    /// The client is not set up right: a base URL that cannot be parsed or uses a scheme this
    /// build does not support, an API key that cannot travel in a header.
    #[error("{message}")]
    Config {
        /// What is wrong and how to fix it.
        message: String,
    },
}

impl Error {
    /// A short, stable name for the error: the server's code when it sent one (`busy`,
    /// `lease_not_found`, …), else a client-side one (`unavailable`, `timed_out`, `protocol`,
    /// `tls`, `invalid_input`, `config`).
    pub fn code(&self) -> String {
        match self {
            Error::Unavailable { code, .. } => code
                .as_ref()
                .map_or_else(|| "unavailable".to_owned(), |code| code.to_string()),
            Error::Busy { .. } => ErrorCode::Busy.as_str().to_owned(),
            Error::TimedOut { .. } => "timed_out".to_owned(),
            Error::LeaseLost { revoked: true, .. } => ErrorCode::Revoked.as_str().to_owned(),
            Error::LeaseLost { revoked: false, .. } => ErrorCode::LeaseLost.as_str().to_owned(),
            Error::QuotaExceeded { .. } => ErrorCode::QuotaExceeded.as_str().to_owned(),
            Error::NotFound { code, .. }
            | Error::Unauthorized { code, .. }
            | Error::Rejected { code, .. } => code.to_string(),
            Error::Server { code, status, .. } => code
                .as_ref()
                .map_or_else(|| format!("http_{status}"), |code| code.to_string()),
            Error::Protocol { .. } => "protocol".to_owned(),
            Error::Tls { .. } => "tls".to_owned(),
            Error::InvalidInput { .. } => "invalid_input".to_owned(),
            Error::Config { .. } => "config".to_owned(),
        }
    }

    /// True when the same request may succeed if sent again later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }

    /// Builds the error for a non-success answer: `status` and the raw `body` from `url`.
    ///
    /// A body that is not an [`ErrorBody`] (a proxy's HTML page, say) still gives an error by
    /// status, with the start of the body as its message.
    pub fn from_response(url: &str, status: u16, body: &[u8]) -> Error {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(parsed) => Error::from_error_body(status, parsed),
            Err(_) => {
                let message = raw_message(status, body);
                match status {
                    502..=504 => Error::Unavailable {
                        code: None,
                        message,
                    },
                    500..=599 => Error::Server {
                        status,
                        code: None,
                        message,
                    },
                    _ => Error::Protocol {
                        url: url.to_owned(),
                        message: format!("HTTP {status} without an error body: {message}"),
                    },
                }
            }
        }
    }

    /// Builds the error for a parsed error answer, by code first and status second.
    pub fn from_error_body(status: u16, body: ErrorBody) -> Error {
        let code = Code::parse(&body.error.code);
        let message = body.error.message;
        match (&code, status) {
            (Code::Known(ErrorCode::Busy), _) => Error::Busy {
                holders: body.holders.unwrap_or_default(),
                message,
            },
            (Code::Known(ErrorCode::LeaseLost), _) => Error::LeaseLost {
                revoked: false,
                message,
            },
            (Code::Known(ErrorCode::Revoked), _) => Error::LeaseLost {
                revoked: true,
                message,
            },
            // Before the 429 arm: a quota is not a rate, and waiting does not lift it.
            (Code::Known(ErrorCode::QuotaExceeded), _) => {
                let (quota, limit) = body
                    .quota
                    .map_or((String::new(), 0), |quota| (quota.name, quota.limit));
                Error::QuotaExceeded {
                    quota,
                    limit,
                    message,
                }
            }
            (
                Code::Known(
                    ErrorCode::Unavailable
                    | ErrorCode::NotActive
                    | ErrorCode::LimitReached
                    | ErrorCode::RateLimited,
                ),
                _,
            )
            | (_, 429 | 502..=504) => Error::Unavailable {
                code: Some(code),
                message,
            },
            (_, 401 | 403) => Error::Unauthorized {
                status,
                code,
                message,
            },
            (_, 404) => Error::NotFound { code, message },
            (_, 400..=499) => Error::Rejected {
                status,
                code,
                message,
            },
            _ => Error::Server {
                status,
                code: Some(code),
                message,
            },
        }
    }
}

/// The message for an answer without an [`ErrorBody`]: its first characters, or the status.
fn raw_message(status: u16, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return format!("HTTP {status}");
    }
    let mut message: String = text.chars().take(RAW_MESSAGE_CHARS_MAX).collect();
    if text.chars().count() > RAW_MESSAGE_CHARS_MAX {
        message.push('…');
    }
    message
}

/// Formats a duration for messages: `30s`, `1m 30s`, `1500ms` → `1s 500ms`.
fn humanize(duration: Duration) -> String {
    // Whole milliseconds are precise enough for messages about lock waits.
    let millis = Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
    let mut text = String::new();
    let total_seconds = millis.as_secs();
    let (hours, minutes, seconds) = (
        total_seconds / 3600,
        (total_seconds / 60) % 60,
        total_seconds % 60,
    );
    for (value, unit) in [
        (hours, "h"),
        (minutes, "m"),
        (seconds, "s"),
        (u64::from(millis.subsec_millis()), "ms"),
    ] {
        if value > 0 {
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(&format!("{value}{unit}"));
        }
    }
    if text.is_empty() {
        text.push_str("0s");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(code: &str, message: &str) -> Vec<u8> {
        format!(r#"{{"error":{{"code":"{code}","message":"{message}"}}}}"#).into_bytes()
    }

    #[test]
    fn busy_keeps_holders_and_message() {
        let text = br#"{"error":{"code":"busy","message":"deploy is held"},
            "holders":[{"owner":"h/1","token":7,"since":"2024-01-01T00:00:00Z",
                        "expires_at":"2024-01-01T00:00:30Z"}]}"#;
        let error = Error::from_response("u", 409, text);
        match &error {
            Error::Busy { holders, message } => {
                assert_eq!(holders.len(), 1);
                assert_eq!(holders[0].token, 7);
                assert_eq!(message, "deploy is held");
            }
            other => panic!("expected Busy, got {other:?}"),
        }
        assert_eq!(error.code(), "busy");
        assert_eq!(error.to_string(), "deploy is held");
    }

    #[test]
    fn codes_map_to_the_variant_the_caller_acts_on() {
        let cases: &[(u16, &str, &str)] = &[
            (410, "lease_lost", "LeaseLost"),
            (410, "revoked", "LeaseLost"),
            (404, "lease_not_found", "NotFound"),
            (404, "ticket_not_found", "NotFound"),
            (404, "holder_not_found", "NotFound"),
            (400, "invalid_ttl", "Rejected"),
            (409, "capacity_conflict", "Rejected"),
            (410, "ticket_lapsed", "Rejected"),
            (401, "unauthorized", "Unauthorized"),
            (403, "forbidden", "Unauthorized"),
            (503, "unavailable", "Unavailable"),
            (503, "limit_reached", "Unavailable"),
            (503, "not_active", "Unavailable"),
            (429, "rate_limited", "Unavailable"),
            (429, "quota_exceeded", "QuotaExceeded"),
            (500, "internal", "Server"),
            (418, "a_new_code", "Rejected"),
        ];
        for (status, code, variant) in cases {
            let error = Error::from_response("u", *status, &body(code, "m"));
            let name = format!("{error:?}");
            assert!(
                name.starts_with(variant),
                "{status} {code}: expected {variant}, got {name}"
            );
            assert_eq!(&error.code(), code, "the server's code is kept");
            assert_eq!(error.to_string(), "m", "the server's message is kept");
        }
    }

    #[test]
    fn a_quota_answer_names_the_quota_and_is_not_retried() {
        let text = br#"{"error":{"code":"quota_exceeded","message":"at most 5 queued tickets"},
            "quota":{"name":"waiters","limit":5}}"#;
        let error = Error::from_response("u", 429, text);
        match &error {
            Error::QuotaExceeded {
                quota,
                limit,
                message,
            } => {
                assert_eq!((quota.as_str(), *limit), ("waiters", 5));
                assert_eq!(message, "at most 5 queued tickets");
            }
            other => panic!("expected QuotaExceeded, got {other:?}"),
        }
        assert!(!error.is_retryable(), "waiting does not lift a quota");
        assert_eq!(error.code(), "quota_exceeded");
    }

    #[test]
    fn revoked_is_told_apart_from_lost() {
        let revoked = Error::from_response("u", 410, &body("revoked", "m"));
        assert!(matches!(revoked, Error::LeaseLost { revoked: true, .. }));
        let lost = Error::from_response("u", 410, &body("lease_lost", "m"));
        assert!(matches!(lost, Error::LeaseLost { revoked: false, .. }));
    }

    #[test]
    fn unknown_codes_are_kept_verbatim() {
        let error = Error::from_response("u", 422, &body("brand_new", "m"));
        match error {
            Error::Rejected { status, code, .. } => {
                assert_eq!(status, 422);
                assert_eq!(code, Code::Other("brand_new".into()));
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
    }

    #[test]
    fn answers_without_an_error_body_map_by_status() {
        let gateway = Error::from_response("u", 502, b"<html>bad gateway</html>");
        assert!(matches!(gateway, Error::Unavailable { code: None, .. }));
        assert!(gateway.is_retryable());
        let crash = Error::from_response("u", 500, b"");
        assert!(matches!(crash, Error::Server { status: 500, .. }));
        assert_eq!(crash.to_string(), "HTTP 500");
        assert_eq!(crash.code(), "http_500");
        let odd = Error::from_response("http://x/v1/locks", 404, b"Not Found");
        assert!(matches!(odd, Error::Protocol { .. }));
        assert!(odd.to_string().contains("http://x/v1/locks"));
    }

    #[test]
    fn long_raw_bodies_are_cut() {
        let long = "x".repeat(1000);
        let error = Error::from_response("u", 500, long.as_bytes());
        assert!(error.to_string().len() < 300);
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(humanize(Duration::from_secs(30)), "30s");
        assert_eq!(humanize(Duration::from_millis(90_500)), "1m 30s 500ms");
        assert_eq!(humanize(Duration::ZERO), "0s");
        assert_eq!(humanize(Duration::from_secs(7200)), "2h");
    }
}
