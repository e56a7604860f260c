//! Building request paths: lock-name validation and percent-encoding of one path segment.
//!
//! A lock name may contain `/`, `@` and `:`, yet travels as ONE path segment, so every byte
//! outside the URL's unreserved set is percent-encoded (`team-a/deploy` → `team-a%2Fdeploy`).
//! Lease and ticket ids are server-issued, but are encoded the same way so that no string can
//! ever change the shape of a path.

use crate::error::{Error, Result};

/// The longest lock name the API accepts, in characters.
pub const LOCK_NAME_CHARS_MAX: usize = 255;

/// True for the characters a lock name may contain: `A-Z a-z 0-9 . _ : / @ -`.
fn is_lock_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '/' | '@' | '-')
}

/// Checks that `name` is a lock name the server could accept, so that a typo fails at once
/// with a clear message instead of as a round trip.
///
/// The names `.` and `..` are refused too: URL parsers treat them (even percent-encoded) as
/// "this folder" and "parent folder" and would rewrite the path.
pub fn validate_lock_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::InvalidInput {
            message: "a lock name must not be empty".to_owned(),
        });
    }
    let length = name.chars().count();
    if length > LOCK_NAME_CHARS_MAX {
        return Err(Error::InvalidInput {
            message: format!(
                "lock name is {length} characters long; at most {LOCK_NAME_CHARS_MAX} are allowed"
            ),
        });
    }
    if let Some(bad) = name.chars().find(|c| !is_lock_name_char(*c)) {
        return Err(Error::InvalidInput {
            message: format!(
                "lock name {name:?} contains {bad:?}; only A-Z a-z 0-9 . _ : / @ - are allowed"
            ),
        });
    }
    if name == "." || name == ".." {
        return Err(Error::InvalidInput {
            message: format!("{name:?} cannot be a lock name: URLs treat it as a folder step"),
        });
    }
    Ok(())
}

/// Percent-encodes `segment` so that it stays one path segment: every byte outside
/// `A-Z a-z 0-9 - . _ ~` becomes `%XX` (upper-case hex).
pub fn encode_segment(segment: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut encoded = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push('%');
            encoded.push(char::from(HEX[usize::from(byte >> 4)]));
            encoded.push(char::from(HEX[usize::from(byte & 0x0F)]));
        }
    }
    encoded
}

/// The path of a call on a lock, `/v1/locks/{name}{suffix}`, after validating the name.
pub(crate) fn lock_path(name: &str, suffix: &str) -> Result<String> {
    validate_lock_name(name)?;
    Ok(format!(
        "{}/locks/{}{suffix}",
        baton_proto::API_PREFIX,
        encode_segment(name)
    ))
}

/// The path of a call on a lease or ticket id, `/v1/{collection}/{id}{suffix}`.
pub(crate) fn id_path(collection: &str, id: &str, suffix: &str) -> Result<String> {
    if id.is_empty() {
        return Err(Error::InvalidInput {
            message: format!("an id of {collection} must not be empty"),
        });
    }
    if id == "." || id == ".." {
        return Err(Error::InvalidInput {
            message: format!("{id:?} is not an id of {collection}"),
        });
    }
    Ok(format!(
        "{}/{collection}/{}{suffix}",
        baton_proto::API_PREFIX,
        encode_segment(id)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_separators_stay_one_segment() {
        assert_eq!(encode_segment("team-a/deploy"), "team-a%2Fdeploy");
        assert_eq!(encode_segment("ci@host:job"), "ci%40host%3Ajob");
        assert_eq!(encode_segment("a.b_c-d~e"), "a.b_c-d~e");
        assert_eq!(encode_segment("sp ace%"), "sp%20ace%25");
        assert_eq!(encode_segment("é"), "%C3%A9");
    }

    #[test]
    fn lock_paths_are_built_from_encoded_names() {
        assert_eq!(
            lock_path("team-a/deploy", "/acquire").ok().as_deref(),
            Some("/v1/locks/team-a%2Fdeploy/acquire")
        );
        assert_eq!(lock_path("x", "").ok().as_deref(), Some("/v1/locks/x"));
        assert_eq!(
            id_path("leases", "abc/../def", "/renew").ok().as_deref(),
            Some("/v1/leases/abc%2F..%2Fdef/renew")
        );
    }

    #[test]
    fn valid_names_pass() {
        let longest = "a".repeat(LOCK_NAME_CHARS_MAX);
        for name in [
            "a",
            "team-a/deploy",
            "x.y_z:1@host-2",
            "...",
            longest.as_str(),
        ] {
            assert!(validate_lock_name(name).is_ok(), "{name:?}");
        }
    }

    #[test]
    fn invalid_names_fail_before_any_request() {
        let too_long = "a".repeat(LOCK_NAME_CHARS_MAX + 1);
        for name in [
            "", ".", "..", "sp ace", "tab\t", "é", "a?b", "a#b", "a%2F", &too_long,
        ] {
            assert!(
                matches!(validate_lock_name(name), Err(Error::InvalidInput { .. })),
                "{name:?}"
            );
        }
    }
}
