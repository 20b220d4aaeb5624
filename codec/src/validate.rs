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
    /// A control character (U+0001 to U+001F, U+007F to U+009F) or a
    /// non-character (U+FDD0 to U+FDEF, U+xxFFFE, U+xxFFFF) in a topic.
    ForbiddenChar,
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
            Self::ForbiddenChar => "forbidden_char",
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
            Self::ForbiddenChar => "contains a control character or a non-character",
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

/// True for the characters MQTT 3.1.1 (sections 1.5.3 and 4.7) forbids or
/// warns against in topics, which brokers drop the connection for: the
/// control characters U+0001 to U+001F and U+007F to U+009F, and the
/// non-characters U+FDD0 to U+FDEF and those ending in FFFE or FFFF.
fn forbidden_in_topic(c: char) -> bool {
    let c = u32::from(c);
    matches!(c, 0x01..=0x1f | 0x7f..=0x9f | 0xfdd0..=0xfdef) || c & 0xfffe == 0xfffe
}

/// The text of a topic name or filter: non-empty UTF-8 without U+0000 and
/// without the characters of [`forbidden_in_topic`].
fn topic_text(bytes: &[u8]) -> Result<&str, InvalidName> {
    let s = utf8(bytes)?;
    if s.chars().any(forbidden_in_topic) {
        return Err(InvalidName::ForbiddenChar);
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

/// A topic name to publish to: non-empty UTF-8, no U+0000, no control
/// character or non-character, no wildcard.
pub fn topic_name(bytes: &[u8]) -> Result<&str, InvalidName> {
    let s = topic_text(bytes)?;
    if s.contains(['+', '#']) {
        return Err(InvalidName::Wildcard);
    }
    Ok(s)
}

/// A topic filter to subscribe to: a topic name in which `+` may fill a
/// level and `#` may fill the last level.
pub fn topic_filter(bytes: &[u8]) -> Result<&str, InvalidName> {
    let s = topic_text(bytes)?;
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
    fn forbidden_characters_in_topics() {
        for bad in [
            "a\u{1}b",
            "a\u{1f}",
            "\u{7f}",
            "x\u{85}",
            "\u{9f}",
            "a\u{fdd0}",
            "\u{ffff}",
            "\u{fffe}",
            "\u{10ffff}",
            "\u{1fffe}",
        ] {
            assert_eq!(topic_name(bad.as_bytes()), Err(InvalidName::ForbiddenChar), "{bad:?}");
            assert_eq!(topic_filter(bad.as_bytes()), Err(InvalidName::ForbiddenChar), "{bad:?}");
        }
        assert_eq!(topic_name(b"a\0b"), Err(InvalidName::ContainsNul));
        assert_eq!(topic_filter(&[b'a', 0xc3]), Err(InvalidName::NotUtf8));
        for good in
            ["Z\u{fc}rich/\u{6e29}\u{5ea6}", "a b/~", "\u{a0}", "\u{fdcf}", "\u{fdf0}", "\u{fffd}"]
        {
            assert_eq!(topic_name(good.as_bytes()), Ok(good));
        }
        assert_eq!(topic_filter("Z\u{fc}rich/+".as_bytes()), Ok("Z\u{fc}rich/+"));
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
