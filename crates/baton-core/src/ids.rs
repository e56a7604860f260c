//! Names and identifiers, validated once at construction so the rest of the core can trust them.

use std::fmt;

use crate::limits;

/// Milliseconds since the Unix epoch, by the store's clock. The core never reads a clock: every
/// transition takes `now` as an argument.
pub type Millis = u64;

/// A validated lock name: 1 to [`limits::LOCK_NAME_BYTES_MAX`] characters of
/// `A-Z a-z 0-9 . _ : / @ -`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LockName(String);

impl LockName {
    /// Validates a lock name.
    pub fn new(name: &str) -> Result<LockName, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > limits::LOCK_NAME_BYTES_MAX {
            return Err(NameError::TooLong {
                max: limits::LOCK_NAME_BYTES_MAX,
            });
        }
        if let Some(bad) = name.chars().find(|c| !is_name_char(*c)) {
            return Err(NameError::BadCharacter(bad));
        }
        if name == "." || name == ".." {
            // URL parsers rewrite these path segments even when percent-encoded, so such a lock
            // could never be addressed reliably.
            return Err(NameError::DotSegment);
        }
        Ok(LockName(name.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '/' | '@' | '-')
}

/// Names order, compare and hash as their text, so a map keyed by names can be searched by a
/// prefix that is not itself a valid name (such as `team-a/`).
impl std::borrow::Borrow<str> for LockName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a lock name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("a lock name must not be empty")]
    Empty,
    /// The name is too long.
    #[error("a lock name must be at most {max} characters")]
    TooLong {
        /// The limit.
        max: usize,
    },
    /// The name is `.` or `..`, which URLs cannot carry as a path segment.
    #[error("a lock name must not be \".\" or \"..\"")]
    DotSegment,
    /// The name has a character outside the allowed set.
    #[error("a lock name may only contain A-Z a-z 0-9 . _ : / @ - (found {0:?})")]
    BadCharacter(char),
}

/// Validates an owner label or owner key: 1 to [`limits::OWNER_BYTES_MAX`] bytes, no control
/// characters.
pub fn validate_owner(owner: &str) -> Result<(), OwnerError> {
    if owner.is_empty() {
        return Err(OwnerError::Empty);
    }
    if owner.len() > limits::OWNER_BYTES_MAX {
        return Err(OwnerError::TooLong {
            max: limits::OWNER_BYTES_MAX,
        });
    }
    if owner.chars().any(char::is_control) {
        return Err(OwnerError::ControlCharacter);
    }
    Ok(())
}

/// Why an owner label or key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OwnerError {
    /// Empty.
    #[error("must not be empty")]
    Empty,
    /// Too long.
    #[error("must be at most {max} bytes")]
    TooLong {
        /// The limit.
        max: usize,
    },
    /// Has a control character.
    #[error("must not contain control characters")]
    ControlCharacter,
}

/// Validates a lease's value: at most [`limits::LEASE_VALUE_BYTES_MAX`] bytes of text with no
/// NUL character (PostgreSQL text cannot hold one, and a value must read back as it was
/// written on every store). Empty is allowed.
pub fn validate_lease_value(value: &str) -> Result<(), ValueError> {
    if value.len() > limits::LEASE_VALUE_BYTES_MAX {
        return Err(ValueError::TooLong {
            max: limits::LEASE_VALUE_BYTES_MAX,
        });
    }
    if value.contains('\0') {
        return Err(ValueError::Nul);
    }
    Ok(())
}

/// Why a lease's value was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Too long.
    #[error("a lease's value must be at most {max} bytes")]
    TooLong {
        /// The limit.
        max: usize,
    },
    /// Has a NUL character.
    #[error("a lease's value must not contain a NUL character")]
    Nul,
}

/// Validates a request id: 1 to [`limits::REQUEST_ID_BYTES_MAX`] characters of
/// `A-Z a-z 0-9 . _ : -`.
pub fn validate_request_id(id: &str) -> Result<(), RequestIdError> {
    if id.is_empty() || id.len() > limits::REQUEST_ID_BYTES_MAX {
        return Err(RequestIdError);
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
    {
        return Err(RequestIdError);
    }
    Ok(())
}

/// A request id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a request id must be 1 to {} characters of A-Z a-z 0-9 . _ : -",
    limits::REQUEST_ID_BYTES_MAX
)]
pub struct RequestIdError;

macro_rules! secret_id {
    ($name:ident, $prefix:literal, $what:literal) => {
        secret_id!(
            $name,
            $prefix,
            $what,
            concat!(
                "The secret id of a ",
                $what,
                ": 128 bits chosen by the caller from a ",
                "cryptographic random source, written `",
                $prefix,
                "` followed by 32 hex digits."
            )
        );
    };
    ($name:ident, $prefix:literal, $what:literal, $doc:expr) => {
        #[doc = $doc]
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; 16]);

        impl $name {
            /// The text prefix of this kind of id.
            pub const PREFIX: &'static str = $prefix;

            /// Parses the text form; `None` if it is not one.
            pub fn parse(text: &str) -> Option<$name> {
                let hex = text.strip_prefix($prefix)?;
                if hex.len() != 32 {
                    return None;
                }
                let mut bytes = [0u8; 16];
                for (i, byte) in bytes.iter_mut().enumerate() {
                    let pair = hex.get(2 * i..2 * i + 2)?;
                    if !pair
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                    {
                        return None;
                    }
                    *byte = u8::from_str_radix(pair, 16).ok()?;
                }
                Some($name(bytes))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str($prefix)?;
                for byte in self.0 {
                    write!(f, "{byte:02x}")?;
                }
                Ok(())
            }
        }

        // Debug never prints the secret in full, so ids do not leak into logs.
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{:02x}{:02x}…", $prefix, self.0[0], self.0[1])
            }
        }
    };
}

secret_id!(LeaseId, "lease_", "lease");
secret_id!(TicketId, "ticket_", "ticket");
secret_id!(
    JobId,
    "job_",
    "job",
    "The public id of a job (listings show it): 128 random bits chosen by the caller, written \
     `job_` followed by 32 hex digits. It grants nothing: acting on a job takes its lease or \
     ticket id."
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(LockName::new("team-a/deploy@prod:v1.2_x").is_ok());
        assert_eq!(LockName::new(""), Err(NameError::Empty));
        assert_eq!(LockName::new("a b"), Err(NameError::BadCharacter(' ')));
        assert_eq!(LockName::new("é"), Err(NameError::BadCharacter('é')));
        assert!(LockName::new(&"a".repeat(255)).is_ok());
        assert!(LockName::new(&"a".repeat(256)).is_err());
        assert_eq!(LockName::new(".."), Err(NameError::DotSegment));
        assert_eq!(LockName::new("."), Err(NameError::DotSegment));
        assert!(LockName::new("...").is_ok());
    }

    #[test]
    fn ids_round_trip_and_reject_forgeries() {
        let id = LeaseId([0xab; 16]);
        let text = id.to_string();
        assert_eq!(text, format!("lease_{}", "ab".repeat(16)));
        assert_eq!(LeaseId::parse(&text), Some(id));
        assert_eq!(TicketId::parse(&text), None);
        assert_eq!(LeaseId::parse("lease_"), None);
        assert_eq!(LeaseId::parse(&format!("lease_{}", "AB".repeat(16))), None);
        assert_eq!(LeaseId::parse(&format!("lease_{}", "g".repeat(32))), None);
        assert_eq!(LeaseId::parse(&format!("lease_{}é", "a".repeat(30))), None);
        assert!(!format!("{id:?}").contains(&"ab".repeat(16)));
    }

    #[test]
    fn owners_and_request_ids() {
        assert!(validate_owner("host/123/job").is_ok());
        assert_eq!(validate_owner(""), Err(OwnerError::Empty));
        assert_eq!(validate_owner("a\nb"), Err(OwnerError::ControlCharacter));
        assert!(validate_request_id("abc-123:x.y_z").is_ok());
        assert!(validate_request_id("a b").is_err());
        assert!(validate_request_id("").is_err());
    }
}
