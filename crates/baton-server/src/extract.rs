//! Request extractors whose every rejection is a JSON error with a stable code: bodies (size
//! cap, content type, unknown fields), lock names and secret ids in paths, query strings.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::request::Parts;
use baton_core::{LeaseId, LockName, TicketId};
use baton_proto::ErrorCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// The largest request body accepted, in bytes. Every body of the API is a few hundred bytes.
pub const BODY_BYTES_MAX: usize = 16 * 1024;

/// How long a request body may take to arrive whole once its head has been read, unless the
/// server is told otherwise ([`ServerConfig::body_read_timeout_ms`](crate::ServerConfig)).
/// Every body of the API is small: a client that needs longer is stalled, and it would hold a
/// connection slot for as long as it stays silent.
pub const BODY_READ_TIMEOUT_MS_DEFAULT: u64 = 10_000;

/// The body read deadline in force, put on every request by the router's layer. Without it
/// (a router built in a test) [`BODY_READ_TIMEOUT_MS_DEFAULT`] applies.
#[derive(Debug, Clone, Copy)]
pub struct BodyReadTimeout(pub Duration);

/// A JSON body: at most `LIMIT` bytes ([`BODY_BYTES_MAX`] unless a route says otherwise), `Content-Type: application/json` when not
/// empty (which also keeps web pages from posting to a local server), no unknown fields. An
/// empty body reads as `{}`.
///
/// A declared `Content-Length` over `LIMIT` is answered `413` before any of the body is read;
/// a body that does not arrive whole within the [`BodyReadTimeout`] is answered `408
/// body_timeout`; a body that ends before its declared length, or whose chunked framing is
/// broken, is `400 invalid_body` (only a body that really is too long is `413`).
pub struct JsonBody<T, const LIMIT: usize = BODY_BYTES_MAX>(pub T);

impl<S: Send + Sync, T: DeserializeOwned, const LIMIT: usize> FromRequest<S>
    for JsonBody<T, LIMIT>
{
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, ApiError> {
        let json_type = request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(|value| {
                let essence = value.split(';').next().unwrap_or("").trim();
                essence.eq_ignore_ascii_case("application/json")
            });
        let too_large = || {
            ApiError::new(
                ErrorCode::BodyTooLarge,
                format!("the body is larger than {LIMIT} bytes"),
            )
        };
        let declared = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok());
        if declared.is_some_and(|length| length > LIMIT as u64) {
            return Err(too_large());
        }
        let deadline = request
            .extensions()
            .get::<BodyReadTimeout>()
            .map_or(Duration::from_millis(BODY_READ_TIMEOUT_MS_DEFAULT), |t| t.0);
        let read = tokio::time::timeout(deadline, read_body(request.into_body(), LIMIT));
        let bytes = match read.await {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(BodyError::TooLarge)) => return Err(too_large()),
            Ok(Err(BodyError::Broken)) => {
                return Err(ApiError::new(
                    ErrorCode::InvalidBody,
                    "the body ended before its declared length, or its chunked framing is \
                     malformed",
                ));
            }
            Err(_) => {
                return Err(ApiError::new(
                    ErrorCode::BodyTimeout,
                    format!(
                        "the body did not arrive whole within {} ms",
                        deadline.as_millis()
                    ),
                ));
            }
        };
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        if text != b"{}" && json_type != Some(true) {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "send the body with Content-Type: application/json",
            ));
        }
        // Every body is a JSON object. serde also reads a struct from an array of its fields
        // in order, which let `[null, null]` through as a renewal with every field absent
        // (schemathesis found it once the renewal had two fields).
        if text.iter().find(|byte| !byte.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::new(
                ErrorCode::InvalidBody,
                "the body is not valid: send a JSON object",
            ));
        }
        let invalid = |error: serde_json::Error| {
            ApiError::new(
                ErrorCode::InvalidBody,
                format!("the body is not valid: {error}"),
            )
        };
        match serde_json::from_slice(text) {
            Ok(body) => Ok(JsonBody(body)),
            Err(error)
                if error
                    .to_string()
                    .starts_with("invalid type: floating point") =>
            {
                // Perhaps a whole number written as a float. A `Value` keeps only the last of
                // duplicate keys, so those are refused first, as the direct parse would.
                serde_json::from_slice::<NoDuplicateKeys>(text).map_err(invalid)?;
                let mut value: serde_json::Value = serde_json::from_slice(text).map_err(invalid)?;
                integral_floats_as_integers(&mut value);
                serde_json::from_value(value)
                    .map(JsonBody)
                    .map_err(|_| invalid(error))
            }
            Err(error) => Err(invalid(error)),
        }
    }
}

/// Why a body could not be read.
enum BodyError {
    /// It is longer than the cap.
    TooLarge,
    /// It ended before its declared length, or its chunked framing is broken.
    Broken,
}

/// Reads a body whole, refusing it as soon as it passes `limit` bytes.
async fn read_body(mut body: axum::body::Body, limit: usize) -> Result<Vec<u8>, BodyError> {
    use hyper::body::Body as _;
    let mut bytes = Vec::new();
    loop {
        let frame =
            std::future::poll_fn(|context| std::pin::Pin::new(&mut body).poll_frame(context)).await;
        match frame {
            None => return Ok(bytes),
            Some(Err(_)) => return Err(BodyError::Broken),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if bytes.len() + data.len() > limit {
                        return Err(BodyError::TooLarge);
                    }
                    bytes.extend_from_slice(&data);
                }
            }
        }
    }
}

/// Accepts any JSON in which no object repeats a key.
struct NoDuplicateKeys;

impl<'de> serde::Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = NoDuplicateKeys;

            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("JSON")
            }

            fn visit_bool<E>(self, _: bool) -> Result<NoDuplicateKeys, E> {
                Ok(NoDuplicateKeys)
            }

            fn visit_i64<E>(self, _: i64) -> Result<NoDuplicateKeys, E> {
                Ok(NoDuplicateKeys)
            }

            fn visit_u64<E>(self, _: u64) -> Result<NoDuplicateKeys, E> {
                Ok(NoDuplicateKeys)
            }

            fn visit_f64<E>(self, _: f64) -> Result<NoDuplicateKeys, E> {
                Ok(NoDuplicateKeys)
            }

            fn visit_str<E>(self, _: &str) -> Result<NoDuplicateKeys, E> {
                Ok(NoDuplicateKeys)
            }

            fn visit_unit<E>(self) -> Result<NoDuplicateKeys, E> {
                Ok(NoDuplicateKeys)
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut items: A,
            ) -> Result<NoDuplicateKeys, A::Error> {
                while items.next_element::<NoDuplicateKeys>()?.is_some() {}
                Ok(NoDuplicateKeys)
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut fields: A,
            ) -> Result<NoDuplicateKeys, A::Error> {
                let mut seen = std::collections::HashSet::new();
                while let Some(key) = fields.next_key::<String>()? {
                    fields.next_value::<NoDuplicateKeys>()?;
                    if !seen.insert(key.clone()) {
                        return Err(serde::de::Error::custom(format!("duplicate field `{key}`")));
                    }
                }
                Ok(NoDuplicateKeys)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Rewrites numbers such as `1000.0` as the integers they are. JSON has one number type, and
/// the document's `integer` (JSON Schema) admits `1000.0`; some encoders write whole numbers
/// that way. Fractions (`1.5`) and numbers beyond 64 bits stay floats, so an integer field
/// still refuses them.
fn integral_floats_as_integers(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Number(number) => {
            if let Some(float) = number.as_f64().filter(|_| number.is_f64())
                && float.fract() == 0.0
            {
                // 2^63 and 2^64 are exact in f64; the casts below are exact in these ranges.
                if (0.0..18_446_744_073_709_551_616.0).contains(&float) {
                    *value = Value::from(float as u64);
                } else if (-9_223_372_036_854_775_808.0..0.0).contains(&float) {
                    *value = Value::from(float as i64);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_as_integers),
        Value::Object(fields) => fields.values_mut().for_each(integral_floats_as_integers),
        _ => {}
    }
}

/// The `{name}` path segment, percent-decoded and validated as a lock name.
pub struct LockPath(pub LockName);

impl<S: Send + Sync> FromRequestParts<S> for LockPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(name) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| {
                ApiError::new(
                    ErrorCode::InvalidName,
                    "the lock name in the path is not valid UTF-8",
                )
            })?;
        LockName::new(&name)
            .map(LockPath)
            .map_err(|error| ApiError::new(ErrorCode::InvalidName, error.to_string()))
    }
}

/// The `{id}` path segment as a lease id.
pub struct LeasePath(pub LeaseId);

impl<S: Send + Sync> FromRequestParts<S> for LeasePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::new(ErrorCode::InvalidId, "the lease id is not valid"))?;
        LeaseId::parse(&id).map(LeasePath).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidId,
                "a lease id is `lease_` followed by 32 lowercase hex digits",
            )
        })
    }
}

/// The `{id}` path segment as a ticket id.
pub struct TicketPath(pub TicketId);

impl<S: Send + Sync> FromRequestParts<S> for TicketPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::new(ErrorCode::InvalidId, "the ticket id is not valid"))?;
        TicketId::parse(&id).map(TicketPath).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidId,
                "a ticket id is `ticket_` followed by 32 lowercase hex digits",
            )
        })
    }
}

/// The query string as key/value pairs; unknown keys are refused by the handler.
pub struct QueryMap(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for QueryMap {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        let pairs: Vec<(String, String)> = serde_urlencoded_pairs(query).ok_or_else(|| {
            ApiError::new(ErrorCode::InvalidQuery, "the query string is malformed")
        })?;
        Ok(QueryMap(pairs.into_iter().collect()))
    }
}

fn serde_urlencoded_pairs(query: &str) -> Option<Vec<(String, String)>> {
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&format!("/?{query}").parse().ok()?)
        .ok()
        .map(|axum::extract::Query(pairs)| pairs)
}

impl QueryMap {
    /// Refuses keys other than `allowed`.
    pub fn only(&self, allowed: &[&str]) -> Result<(), ApiError> {
        match self.0.keys().find(|key| !allowed.contains(&key.as_str())) {
            Some(key) => Err(ApiError::new(
                ErrorCode::InvalidQuery,
                format!(
                    "unknown query parameter {key:?}; known: {}",
                    allowed.join(", ")
                ),
            )),
            None => Ok(()),
        }
    }

    /// A whole number between 1 and `max`, or `default` when absent.
    pub fn limit(&self, key: &str, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.0.get(key) {
            None => Ok(default),
            Some(text) => match text.parse::<usize>() {
                Ok(value) if (1..=max).contains(&value) => Ok(value),
                _ => Err(ApiError::new(
                    ErrorCode::InvalidQuery,
                    format!("{key} must be a whole number from 1 to {max}"),
                )),
            },
        }
    }
}

/// The `{id}` path segment as a job id.
pub struct JobPath(pub baton_core::JobId);

impl<S: Send + Sync> FromRequestParts<S> for JobPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::new(ErrorCode::InvalidId, "the job id is not valid"))?;
        baton_core::JobId::parse(&id).map(JobPath).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidId,
                "a job id is `job_` followed by 32 lowercase hex digits",
            )
        })
    }
}
