//! Checks of identifiers and topics that the wire format leaves to the
//! endpoints, in one place for the gateway, the client and the tools.
//!
//! The codec itself decodes any octets; these functions say whether they
//! make a usable ClientId, topic name or topic filter.

use core::fmt;

/// The longest ClientId accepted by default, in octets.
///
/// The spec says 1 to 23 characters (as MQTT 3.1 did), but clients in the
/// field send longer ids (MAC- or UUID-based ids of 30 to 64 octets are
/// common) and MQTT 3.1.1 brokers accept them. 64 covers those and still
/// bounds what a session keeps. See `docs/codec.md`.
pub const MAX_CLIENT_ID_LEN: usize = 64;

/// Why an identifier or topic is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InvalidName {
    /// Zero octets.
    Empty,
    /// More octets than allowed.
    TooLong,
    /// Not valid UTF-8.
    NotUtf8,
    /// Contains U+0000.
    ContainsNul,
    /// A wildcard (`+` or `#`) where a topic name is required.
    Wildcard,
    /// A wildcard that does not fill a whole level, or `#` not last.
    BadWildcard,
}

impl InvalidName {
    /// A short, stable name for metrics labels and logs.
    pub const fn reason(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::TooLong => "too_long",
            Self::NotUtf8 => "not_utf8",
            Self::ContainsNul => "contains_nul",
            Self::Wildcard => "wildcard",
            Self::BadWildcard => "bad_wildcard",
        }
    }
}

impl fmt::Display for InvalidName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "empty",
            Self::TooLong => "too long",
            Self::NotUtf8 => "not valid UTF-8",
            Self::ContainsNul => "contains U+0000",
            Self::Wildcard => "wildcards are not allowed in a topic name",
            Self::BadWildcard => "a wildcard must fill a whole level, and # must be last",
        })
    }
}

impl core::error::Error for InvalidName {}

fn utf8(bytes: &[u8]) -> Result<&str, InvalidName> {
    if bytes.is_empty() {
        return Err(InvalidName::Empty);
    }
    let s = core::str::from_utf8(bytes).map_err(|_| InvalidName::NotUtf8)?;
    if s.contains('\0') {
        return Err(InvalidName::ContainsNul);
    }
    Ok(s)
}

/// A ClientId of 1 to `max_len` octets of UTF-8 without U+0000.
pub fn client_id(bytes: &[u8], max_len: usize) -> Result<&str, InvalidName> {
    if bytes.len() > max_len {
        return Err(InvalidName::TooLong);
    }
    utf8(bytes)
}

/// A topic name to publish to: non-empty UTF-8, no U+0000, no wildcard.
pub fn topic_name(bytes: &[u8]) -> Result<&str, InvalidName> {
    let s = utf8(bytes)?;
    if s.contains(['+', '#']) {
        return Err(InvalidName::Wildcard);
    }
    Ok(s)
}

/// A topic filter to subscribe to: a topic name in which `+` may fill a
/// level and `#` may fill the last level.
pub fn topic_filter(bytes: &[u8]) -> Result<&str, InvalidName> {
    let s = utf8(bytes)?;
    let mut levels = s.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        match level {
            "+" => {}
            "#" if last => {}
            l if l.contains(['+', '#']) => return Err(InvalidName::BadWildcard),
            _ => {}
        }
    }
    Ok(s)
}

/// True when the filter contains a wildcard.
pub fn has_wildcard(filter: &str) -> bool {
    filter.contains(['+', '#'])
}

/// MQTT topic matching (MQTT 3.1.1 section 4.7): does `filter` match the
/// topic name `topic`? Topics starting with `$` are not matched by a
/// filter that starts with a wildcard.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids() {
        assert_eq!(client_id(b"", 64), Err(InvalidName::Empty));
        assert_eq!(client_id(b"a\0b", 64), Err(InvalidName::ContainsNul));
        assert_eq!(client_id(&[0xff, 0xfe], 64), Err(InvalidName::NotUtf8));
        assert_eq!(client_id(&[b'x'; 65], 64), Err(InvalidName::TooLong));
        assert_eq!(client_id(&[b'x'; 64], 64).map(str::len), Ok(64));
    }

    #[test]
    fn names_and_filters() {
        assert_eq!(topic_name(b"a/+/c"), Err(InvalidName::Wildcard));
        assert_eq!(topic_name(b"a/#"), Err(InvalidName::Wildcard));
        assert_eq!(topic_name(b"a/b"), Ok("a/b"));
        assert_eq!(topic_filter(b"a/+/c/#"), Ok("a/+/c/#"));
        assert_eq!(topic_filter(b"#"), Ok("#"));
        assert_eq!(topic_filter(b"a/#/c"), Err(InvalidName::BadWildcard));
        assert_eq!(topic_filter(b"a/b+"), Err(InvalidName::BadWildcard));
        assert_eq!(topic_filter(b"a#"), Err(InvalidName::BadWildcard));
    }

    #[test]
    fn matching() {
        assert!(topic_matches("a/+/c", "a/b/c"));
        assert!(!topic_matches("a/+/c", "a/b/d"));
        assert!(topic_matches("a/#", "a"));
        assert!(topic_matches("a/#", "a/b/c"));
        assert!(topic_matches("#", "x/y"));
        assert!(!topic_matches("#", "$SYS/x"));
        assert!(!topic_matches("+/x", "$SYS/x"));
        assert!(topic_matches("$SYS/#", "$SYS/x"));
        assert!(!topic_matches("a/b", "a/b/c"));
        assert!(!topic_matches("a/b/c", "a/b"));
        assert!(topic_matches("a/+", "a/"));
    }
}
