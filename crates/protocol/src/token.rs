//! The one check for strings that become a subject token (and often a file
//! name, a KV key or a Msg-Id prefix): non-empty, at most `max_len` bytes,
//! and only characters of the given [`Charset`].

use thiserror::Error;

/// Which characters a token may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// Anything but the subject separator `.`, the wildcards `*` and `>`,
    /// white space and control characters.
    Subject,
    /// `A-Z a-z 0-9 _ -`: safe as a subject token, a file name and a KV key.
    Safe,
    /// `A-Z 0-9 _ -` (stock symbols).
    UpperSafe,
}

impl Charset {
    /// Whether `c` may appear in a token of this charset.
    pub fn allows(self, c: char) -> bool {
        match self {
            Charset::Subject => {
                !(matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control())
            }
            Charset::Safe => c.is_ascii_alphanumeric() || c == '_' || c == '-',
            Charset::UpperSafe => {
                c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' || c == '-'
            }
        }
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TokenError {
    #[error("token must not be empty")]
    Empty,
    #[error("token is {len} bytes, more than {max}")]
    TooLong { len: usize, max: usize },
    #[error("token {0:?} has a character that is not allowed")]
    Invalid(String),
}

/// No length limit beyond what NATS itself refuses.
pub const UNLIMITED: usize = usize::MAX;

/// Checks `value`: 1 to `max_len` bytes, every character allowed by `charset`.
pub fn check(value: &str, max_len: usize, charset: Charset) -> Result<(), TokenError> {
    if value.is_empty() {
        return Err(TokenError::Empty);
    }
    if value.len() > max_len {
        return Err(TokenError::TooLong {
            len: value.len(),
            max: max_len,
        });
    }
    if !value.chars().all(|c| charset.allows(c)) {
        return Err(TokenError::Invalid(value.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_charsets() {
        assert_eq!(check("", 5, Charset::Safe), Err(TokenError::Empty));
        assert_eq!(
            check("abcdef", 5, Charset::Safe),
            Err(TokenError::TooLong { len: 6, max: 5 })
        );
        assert!(check("a-B_9", 5, Charset::Safe).is_ok());
        assert!(check("a-B_9", 5, Charset::UpperSafe).is_err());
        assert!(check("BRK-B", 16, Charset::UpperSafe).is_ok());
        assert!(check("é/x", UNLIMITED, Charset::Subject).is_ok());
        for bad in ["a.b", "a*", ">", "a b", "a\tb"] {
            assert!(
                matches!(
                    check(bad, UNLIMITED, Charset::Subject),
                    Err(TokenError::Invalid(_))
                ),
                "{bad:?}"
            );
        }
    }
}
