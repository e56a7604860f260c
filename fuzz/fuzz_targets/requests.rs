//! Arbitrary bytes as every body the server parses, and as the names and ids it validates.
//!
//! - No parse or validator panics.
//! - A body that parses re-serializes to JSON that parses back to the same value (what the
//!   client sends is what the server reads, and the other way round for answers).
//! - A lock name, owner or request id that validates keeps validating after a round trip, and an
//!   id that parses prints back as the text it came from.

#![no_main]

use baton_core::{JobId, LeaseId, LockName, TicketId, validate_owner, validate_request_id};
use baton_proto as proto;
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

fn round_trip<T>(data: &[u8])
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let Ok(value) = serde_json::from_slice::<T>(data) else {
        return;
    };
    let text = serde_json::to_vec(&value).expect("a parsed value serializes");
    let again: T = serde_json::from_slice(&text).unwrap_or_else(|error| {
        panic!(
            "{} does not parse back: {error}: {}",
            std::any::type_name::<T>(),
            String::from_utf8_lossy(&text)
        )
    });
    assert_eq!(value, again, "{}", String::from_utf8_lossy(&text));
}

fn names(text: &str) {
    if let Ok(name) = LockName::new(text) {
        assert_eq!(name.as_str(), text, "a valid name is kept as given");
        let again = LockName::new(&name.to_string()).expect("a valid name validates again");
        assert_eq!(again, name);
    }
    if validate_owner(text).is_ok() {
        assert!(text.len() <= baton_core::limits::OWNER_BYTES_MAX);
    }
    if validate_request_id(text).is_ok() {
        assert!(text.len() <= baton_core::limits::REQUEST_ID_BYTES_MAX);
    }
    if let Some(id) = LeaseId::parse(text) {
        assert_eq!(id.to_string(), text);
        assert_eq!(LeaseId::parse(&id.to_string()), Some(id));
    }
    if let Some(id) = TicketId::parse(text) {
        assert_eq!(id.to_string(), text);
        assert_eq!(TicketId::parse(&id.to_string()), Some(id));
    }
    if let Some(id) = JobId::parse(text) {
        assert_eq!(id.to_string(), text);
        assert_eq!(JobId::parse(&id.to_string()), Some(id));
    }
}

fuzz_target!(|data: &[u8]| {
    // Request bodies.
    round_trip::<proto::AcquireRequest>(data);
    round_trip::<proto::WaitRequest>(data);
    round_trip::<proto::RenewRequest>(data);
    round_trip::<proto::TokenRequest>(data);
    round_trip::<proto::CreateJobRequest>(data);
    round_trip::<proto::HeartbeatRequest>(data);
    round_trip::<proto::FinishJobRequest>(data);
    // Answers, as the client parses them.
    round_trip::<proto::LeaseResponse>(data);
    round_trip::<proto::TicketResponse>(data);
    round_trip::<proto::LockList>(data);
    round_trip::<proto::History>(data);
    round_trip::<proto::ErrorBody>(data);
    round_trip::<proto::CreateJobResponse>(data);
    round_trip::<proto::JobList>(data);
    // Names and ids, as path segments and fields.
    if let Ok(text) = std::str::from_utf8(data) {
        names(text);
    }
});
