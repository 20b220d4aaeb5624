//! Topic access control: which topics a sensor may publish to and which
//! filters it may subscribe to, checked before anything reaches the broker.
//!
//! An [`Acl`] holds a default rule set, for every sensor, and rules for
//! particular ClientIds or upstream usernames; a sensor is granted the
//! union of the default set and every rule that names it (like
//! mosquitto's `pattern` lines with its `user` sections). A topic or filter
//! that no grant allows is refused. Without an `Acl` everything is allowed.
//!
//! Patterns are MQTT filters: `+` fills one level, `#` the last level and
//! everything below (the parent level included), and a level that is
//! exactly `%c` or `%u` stands for the sensor's ClientId or its upstream
//! username. A pattern with `%u` grants nothing to a sensor without a
//! username. As in MQTT, a topic starting with `$` is not matched by a
//! wildcard in the first level.
//!
//! A PUBLISH topic is allowed when a publish pattern matches it; a
//! SUBSCRIBE filter is allowed when one subscribe pattern covers it: every
//! topic the filter can match is matched by that pattern
//! ([`Pattern::covers`]). Patterns are compiled once (at start and on a
//! reload) and the checks allocate nothing.

use std::collections::HashMap;
use std::sync::Arc;

use mqttsn_codec::validate;

/// Why a pattern cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The pattern is empty.
    #[error("empty")]
    Empty,
    /// `#` is not the last level.
    #[error("`#` must be the last level")]
    HashNotLast,
    /// `+` or `#` shares a level with other characters.
    #[error("`+` and `#` must fill a whole level")]
    WildcardInLevel,
    /// `%c` or `%u` shares a level with other characters.
    #[error("`%c` and `%u` must fill a whole level")]
    SubstitutionInLevel,
    /// Not usable as a topic filter at all.
    #[error("{0}")]
    Invalid(validate::InvalidName),
}

/// One level of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    /// This exact text.
    Literal(Box<str>),
    /// `+`: any one level.
    Plus,
    /// `#`: this level and every one below, or none.
    Hash,
    /// `%c`: the sensor's ClientId.
    ClientId,
    /// `%u`: the sensor's upstream username.
    Username,
}

/// A compiled ACL pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    levels: Box<[Level]>,
}

/// Whom a check is for: `%c` and `%u` stand for these. `None` matches no
/// `%c` (or `%u`) level.
#[derive(Debug, Clone, Copy, Default)]
pub struct Subject<'a> {
    /// The sensor's ClientId.
    pub client_id: Option<&'a str>,
    /// Its upstream username.
    pub username: Option<&'a str>,
}

impl Subject<'_> {
    fn fills(&self, level: &Level, text: &str) -> bool {
        match level {
            Level::Literal(s) => **s == *text,
            Level::ClientId => self.client_id == Some(text),
            Level::Username => self.username.is_some_and(|u| !u.is_empty() && u == text),
            Level::Plus | Level::Hash => true,
        }
    }
}

impl Pattern {
    /// Compiles a pattern, or says why it is not one.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        let mut levels = Vec::new();
        let mut rest = text.split('/').peekable();
        while let Some(level) = rest.next() {
            levels.push(match level {
                "#" if rest.peek().is_some() => return Err(PatternError::HashNotLast),
                "#" => Level::Hash,
                "+" => Level::Plus,
                "%c" => Level::ClientId,
                "%u" => Level::Username,
                l if l.contains(['+', '#']) => return Err(PatternError::WildcardInLevel),
                l if l.contains("%c") || l.contains("%u") => {
                    return Err(PatternError::SubstitutionInLevel)
                }
                l => Level::Literal(l.into()),
            });
        }
        validate::topic_filter(text.as_bytes()).map_err(PatternError::Invalid)?;
        Ok(Self { levels: levels.into_boxed_slice() })
    }

    /// True when this pattern matches the topic name `topic`.
    pub fn matches(&self, topic: &str, who: &Subject<'_>) -> bool {
        let dollar = topic.starts_with('$');
        let mut names = topic.split('/');
        for (i, level) in self.levels.iter().enumerate() {
            let wild_first = i == 0 && matches!(level, Level::Plus | Level::Hash);
            if wild_first && dollar {
                return false;
            }
            if *level == Level::Hash {
                return true;
            }
            match names.next() {
                Some(name) if who.fills(level, name) => {}
                _ => return false,
            }
        }
        names.next().is_none()
    }

    /// True when every topic the filter `filter` matches is matched by
    /// this pattern. Level by level: a `#` in the pattern covers the rest
    /// (for a filter starting with `$`, not in the first level); a `+` in
    /// the pattern covers one level of the filter, `+` or text (not text
    /// starting with `$` in the first level); text, `%c` or `%u` covers
    /// only the same text; a `#` in the filter is covered only by a `#`.
    /// The filter must have as many levels as the pattern (but for the
    /// pattern's `#`, which also covers the parent level).
    pub fn covers(&self, filter: &str, who: &Subject<'_>) -> bool {
        let dollar = filter.starts_with('$');
        let mut parts = filter.split('/');
        for (i, level) in self.levels.iter().enumerate() {
            if *level == Level::Hash {
                return !(i == 0 && dollar);
            }
            let Some(part) = parts.next() else { return false };
            let covered = match (level, part) {
                (_, "#") => false,
                (Level::Plus, "+") => true,
                (_, "+") => false,
                (Level::Plus, text) => !(i == 0 && text.starts_with('$')),
                (level, text) => who.fills(level, text),
            };
            if !covered {
                return false;
            }
        }
        parts.next().is_none()
    }
}

/// What a rule set grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Topics that may be published to (PUBLISH, REGISTER, the will).
    pub publish: Vec<Pattern>,
    /// Filters that may be subscribed to.
    pub subscribe: Vec<Pattern>,
}

/// Whom a rule is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// The sensor with this ClientId.
    ClientId(String),
    /// Sensors connecting upstream with this username.
    Username(String),
}

/// Grants for some sensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Whom it is for.
    pub who: Selector,
    /// What it grants them.
    pub grants: Grants,
}

/// The whole access control list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    default: Grants,
    rules: Vec<Rule>,
    /// The rules of each ClientId and each username, in rule order.
    by_client: HashMap<String, Vec<usize>>,
    by_username: HashMap<String, Vec<usize>>,
}

impl Acl {
    /// `default` for every sensor, and `rules` for those they name.
    pub fn new(default: Grants, rules: Vec<Rule>) -> Self {
        let mut by_client: HashMap<String, Vec<usize>> = HashMap::new();
        let mut by_username: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, r) in rules.iter().enumerate() {
            match &r.who {
                Selector::ClientId(c) => by_client.entry(c.clone()).or_default().push(i),
                Selector::Username(u) => by_username.entry(u.clone()).or_default().push(i),
            }
        }
        Self { default, rules, by_client, by_username }
    }

    /// The ACL as it applies to one sensor: computed at its CONNECT (and
    /// again on a reload), so a check looks at its own rules only.
    pub fn for_sensor(self: &Arc<Self>, client_id: &Arc<str>, username: Option<&str>) -> SensorAcl {
        let mine = self.by_client.get(&**client_id).into_iter().flatten();
        let theirs = username.and_then(|u| self.by_username.get(u)).into_iter().flatten();
        let rules = mine.chain(theirs).copied().collect();
        SensorAcl {
            acl: self.clone(),
            rules,
            client_id: client_id.clone(),
            username: username.map(Box::from),
        }
    }

    /// True when a publish without a connection (QoS -1) may go to
    /// `topic`: the default publish patterns only, without a ClientId or
    /// username (patterns with `%c` or `%u` do not match).
    pub fn may_publish_unconnected(&self, topic: &str) -> bool {
        let who = Subject::default();
        self.default.publish.iter().any(|p| p.matches(topic, &who))
    }
}

/// What one sensor may do: an [`Acl`] and the rules of it that name the
/// sensor.
#[derive(Debug, Clone)]
pub struct SensorAcl {
    acl: Arc<Acl>,
    rules: Vec<usize>,
    client_id: Arc<str>,
    username: Option<Box<str>>,
}

impl SensorAcl {
    /// The ACL this was computed from.
    pub fn acl(&self) -> &Arc<Acl> {
        &self.acl
    }

    fn subject(&self) -> Subject<'_> {
        Subject { client_id: Some(&self.client_id), username: self.username.as_deref() }
    }

    fn grants(&self) -> impl Iterator<Item = &Grants> {
        let own = self.rules.iter().filter_map(|&i| self.acl.rules.get(i)).map(|r| &r.grants);
        std::iter::once(&self.acl.default).chain(own)
    }

    /// True when the sensor may publish to the topic name `topic`.
    pub fn may_publish(&self, topic: &str) -> bool {
        let who = self.subject();
        self.grants().any(|g| g.publish.iter().any(|p| p.matches(topic, &who)))
    }

    /// True when the sensor may subscribe to the filter `filter`: one
    /// subscribe pattern covers it.
    pub fn may_subscribe(&self, filter: &str) -> bool {
        let who = self.subject();
        self.grants().any(|g| g.subscribe.iter().any(|p| p.covers(filter, &who)))
    }
}

/// What an ACL refusal refused, for the counters and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// A PUBLISH (any QoS, QoS -1 without a connection included).
    Publish,
    /// A REGISTER of a topic the sensor may not publish to.
    Register,
    /// A SUBSCRIBE.
    Subscribe,
    /// A will topic (WILLTOPIC, WILLTOPICUPD).
    Will,
}

impl Action {
    /// Every action, in [`Action::index`] order.
    pub const ALL: [Action; 4] = [Self::Publish, Self::Register, Self::Subscribe, Self::Will];

    /// Its place in [`Action::ALL`] (for a counter per action).
    pub const fn index(self) -> usize {
        match self {
            Self::Publish => 0,
            Self::Register => 1,
            Self::Subscribe => 2,
            Self::Will => 3,
        }
    }

    /// A short, stable name for metrics labels and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Register => "register",
            Self::Subscribe => "subscribe",
            Self::Will => "will",
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn p(text: &str) -> Pattern {
        Pattern::parse(text).unwrap()
    }

    const S1: Subject<'static> = Subject { client_id: Some("s1"), username: Some("alice") };

    #[test]
    fn bad_patterns_are_refused_with_the_reason() {
        assert_eq!(Pattern::parse(""), Err(PatternError::Empty));
        assert_eq!(Pattern::parse("a/#/b"), Err(PatternError::HashNotLast));
        assert_eq!(Pattern::parse("#/"), Err(PatternError::HashNotLast));
        assert_eq!(Pattern::parse("a/b+"), Err(PatternError::WildcardInLevel));
        assert_eq!(Pattern::parse("a#"), Err(PatternError::WildcardInLevel));
        assert_eq!(Pattern::parse("a/x%c"), Err(PatternError::SubstitutionInLevel));
        assert_eq!(Pattern::parse("%u%c"), Err(PatternError::SubstitutionInLevel));
        assert_eq!(
            Pattern::parse("a/\u{1}"),
            Err(PatternError::Invalid(validate::InvalidName::ForbiddenChar))
        );
        for ok in ["#", "+", "/", "a//b", "+/+/#", "%c", "a/%u/%c/#", "$SYS/#", "100%"] {
            assert!(Pattern::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn topics_match_like_mqtt_filters() {
        let who = Subject::default();
        assert!(p("a/b").matches("a/b", &who));
        assert!(!p("a/b").matches("a/b/c", &who));
        assert!(!p("a/b").matches("a", &who));
        assert!(p("a/+").matches("a/b", &who));
        assert!(p("a/+").matches("a/", &who));
        assert!(!p("a/+").matches("a/b/c", &who));
        assert!(!p("a/+").matches("a", &who));
        assert!(p("a/#").matches("a", &who), "# covers the parent level");
        assert!(p("a/#").matches("a/b/c", &who));
        assert!(!p("a/#").matches("ab", &who));
        assert!(p("#").matches("/", &who));
        assert!(p("+/+").matches("/x", &who));
        assert!(p("+/b/#").matches("x/b", &who));
    }

    #[test]
    fn dollar_topics_are_not_matched_by_a_leading_wildcard() {
        let who = Subject::default();
        assert!(!p("#").matches("$SYS/x", &who));
        assert!(!p("+/x").matches("$SYS/x", &who));
        assert!(p("$SYS/#").matches("$SYS/x", &who));
        assert!(p("$SYS/+").matches("$SYS/x", &who));
        assert!(p("a/+").matches("a/$x", &who), "only the first level is special");
    }

    #[test]
    fn client_id_and_username_fill_whole_levels() {
        assert!(p("sensors/%c/#").matches("sensors/s1/temp", &S1));
        assert!(!p("sensors/%c/#").matches("sensors/s2/temp", &S1));
        assert!(p("u/%u").matches("u/alice", &S1));
        assert!(!p("u/%u").matches("u/bob", &S1));
        let anonymous = Subject { client_id: Some("s1"), username: None };
        assert!(!p("u/%u").matches("u/", &anonymous));
        let empty = Subject { client_id: Some("s1"), username: Some("") };
        assert!(!p("u/%u").matches("u/", &empty), "an empty username is none");
        // A ClientId with a separator or wildcard never fills a level.
        let slash = Subject { client_id: Some("a/b"), username: None };
        assert!(!p("s/%c").matches("s/a/b", &slash));
        let plus = Subject { client_id: Some("+"), username: None };
        assert!(!p("s/%c").covers("s/+", &plus));
        assert!(!p("s/%c").matches("s/x", &Subject::default()));
    }

    #[test]
    fn a_pattern_covers_a_filter_when_it_matches_every_topic_of_it() {
        let c = |pat: &str, f: &str| p(pat).covers(f, &S1);
        assert!(c("#", "#"));
        assert!(c("#", "a/+/b"));
        assert!(c("a/#", "a"));
        assert!(c("a/#", "a/#"));
        assert!(c("a/#", "a/+/c/#"));
        assert!(!c("a/#", "#"));
        assert!(!c("a/#", "+/b"));
        assert!(c("a/+", "a/+"));
        assert!(c("a/+", "a/b"));
        assert!(!c("a/+", "a/#"), "a/# matches a and a/b/c");
        assert!(!c("a/+", "a/b/c"));
        assert!(!c("a/+", "a"));
        assert!(!c("a/b", "a/+"));
        assert!(c("a/b", "a/b"));
        assert!(!c("+/+", "+"));
        assert!(c("sensors/%c/#", "sensors/s1/#"));
        assert!(c("sensors/%c/#", "sensors/s1"));
        assert!(!c("sensors/%c/#", "sensors/+/#"));
        assert!(!c("sensors/%c/#", "sensors/s2/x"));
        assert!(c("u/%u/+", "u/alice/+"));
        assert!(!c("u/%u/+", "u/+/x"));
    }

    #[test]
    fn dollar_filters_are_covered_only_by_dollar_patterns() {
        let c = |pat: &str, f: &str| p(pat).covers(f, &S1);
        assert!(!c("#", "$SYS/#"));
        assert!(!c("+/#", "$SYS/x"));
        assert!(c("$SYS/#", "$SYS/#"));
        assert!(c("$SYS/#", "$SYS/+/x"));
        assert!(c("#", "+/#"), "+ at the first level matches no $ topic");
        assert!(c("+/x", "+/x"));
        assert!(!c("$SYS/#", "+/x"));
    }

    fn acl() -> Arc<Acl> {
        let grants = |publish: &[&str], subscribe: &[&str]| Grants {
            publish: publish.iter().map(|t| p(t)).collect(),
            subscribe: subscribe.iter().map(|t| p(t)).collect(),
        };
        Arc::new(Acl::new(
            grants(&["sensors/%c/#"], &["cmd/%c/#"]),
            vec![
                Rule { who: Selector::ClientId("s1".into()), grants: grants(&["alarm"], &[]) },
                Rule { who: Selector::Username("ops".into()), grants: grants(&[], &["sensors/#"]) },
            ],
        ))
    }

    #[test]
    fn a_sensor_gets_the_default_and_its_own_rules() {
        let acl = acl();
        let s1 = acl.for_sensor(&Arc::from("s1"), None);
        assert!(s1.may_publish("sensors/s1/t"));
        assert!(s1.may_publish("alarm"));
        assert!(!s1.may_publish("sensors/s2/t"));
        assert!(s1.may_subscribe("cmd/s1/#"));
        assert!(!s1.may_subscribe("sensors/#"));
        let s2 = acl.for_sensor(&Arc::from("s2"), Some("ops"));
        assert!(!s2.may_publish("alarm"));
        assert!(s2.may_subscribe("sensors/#"));
        assert!(s2.may_subscribe("cmd/s2/x"));
        assert!(!s2.may_subscribe("#"));
        assert!(!acl.may_publish_unconnected("sensors/s1/t"), "no ClientId without a session");
        let both = acl.for_sensor(&Arc::from("s1"), Some("ops"));
        assert!(both.may_publish("alarm") && both.may_subscribe("sensors/#"), "both rules");
    }

    #[test]
    fn an_empty_acl_refuses_everything() {
        let acl = Arc::new(Acl::new(Grants::default(), vec![]));
        let s = acl.for_sensor(&Arc::from("s"), None);
        assert!(!s.may_publish("a"));
        assert!(!s.may_subscribe("a"));
        assert!(!acl.may_publish_unconnected("a"));
    }
}
