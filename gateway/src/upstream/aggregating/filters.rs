//! The subscription table of the aggregating gateway: which sensor
//! subscribed to which topic filter at which QoS, and what each change asks
//! of the shared upstream connections.
//!
//! The filters form a trie of topic levels (MQTT 3.1.1 section 4.7): `+`
//! matches one level, `#` (the last level) matches its parent level and
//! everything below it, empty levels are levels, and a topic starting with
//! `$` is not matched by a filter whose first level is a wildcard. Each
//! filter keeps its subscribers with their QoS and a count of them per QoS,
//! so its upstream QoS (the highest) is known at once; an index by
//! subscriber makes removing one cost only its own subscriptions.
//!
//! Memory: children and subscribers are kept in a vector while few, in a
//! hash map once wide; a node left without subscribers and children is
//! removed at once, so memory comes back when the subscriptions go.
//! Filters are validated before they get here (`mqttsn_codec::validate`);
//! an invalid one (`a/#/b`, `+a`) never panics, but what it matches is
//! unspecified.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

use slab::Slab;

use crate::mqtt::QoS;

/// Past this many entries a node's children or subscribers move from a
/// vector to a hash map.
const WIDE: usize = 32;
/// At or below this many they move back to a vector.
const NARROW: usize = 8;

/// The root node: the empty filter, never removed.
const ROOT: usize = 0;
/// A match position meaning "every level of the topic is consumed".
const END: usize = usize::MAX;

/// What the upstream must do for one filter after a change in its
/// subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// Nothing: the upstream subscription stays as it is.
    Nothing,
    /// Subscribe at this QoS: the filter is new, or the highest QoS among
    /// its subscribers changed, up or down. (A downgrade may be ignored
    /// upstream: a higher upstream QoS only costs acknowledgements, as
    /// deliveries go out at each subscriber's own QoS.)
    Subscribe {
        /// The highest QoS among the filter's subscribers.
        qos: QoS,
    },
    /// Unsubscribe: the last subscriber left.
    Unsubscribe,
}

impl Upstream {
    /// The change from a filter's upstream QoS `before` to `after` (`None`:
    /// no subscribers).
    fn of(before: Option<QoS>, after: Option<QoS>) -> Self {
        match (before, after) {
            (Some(_), None) => Self::Unsubscribe,
            (b, Some(qos)) if b != Some(qos) => Self::Subscribe { qos },
            _ => Self::Nothing,
        }
    }
}

/// A map that is a vector while it has few entries and a hash map once it
/// is wide.
#[derive(Debug)]
enum Small<Q, V> {
    Few(Vec<(Q, V)>),
    // Boxed so the map costs a narrow node no more than a vector does.
    #[allow(clippy::box_collection)]
    Many(Box<HashMap<Q, V>>),
}

impl<Q: Eq + Hash, V> Small<Q, V> {
    const fn new() -> Self {
        Self::Few(Vec::new())
    }

    fn len(&self) -> usize {
        match self {
            Self::Few(v) => v.len(),
            Self::Many(m) => m.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get<B: ?Sized + Eq + Hash>(&self, k: &B) -> Option<&V>
    where
        Q: Borrow<B>,
    {
        match self {
            Self::Few(v) => v.iter().find(|(q, _)| q.borrow() == k).map(|(_, v)| v),
            Self::Many(m) => m.get(k),
        }
    }

    /// Inserts or replaces; returns the value replaced.
    fn insert(&mut self, k: Q, val: V) -> Option<V> {
        match self {
            Self::Few(v) => {
                if let Some(slot) = v.iter_mut().find(|(q, _)| *q == k) {
                    return Some(std::mem::replace(&mut slot.1, val));
                }
                v.push((k, val));
                if v.len() > WIDE {
                    let m = std::mem::take(v).into_iter().collect();
                    *self = Self::Many(Box::new(m));
                }
                None
            }
            Self::Many(m) => m.insert(k, val),
        }
    }

    fn remove<B: ?Sized + Eq + Hash>(&mut self, k: &B) -> Option<V>
    where
        Q: Borrow<B>,
    {
        match self {
            Self::Few(v) => {
                let i = v.iter().position(|(q, _)| q.borrow() == k)?;
                let (_, val) = v.swap_remove(i);
                if v.capacity() > 4 && v.len() * 4 <= v.capacity() {
                    v.shrink_to_fit();
                }
                Some(val)
            }
            Self::Many(m) => {
                let val = m.remove(k)?;
                if m.len() <= NARROW {
                    let v = std::mem::take(&mut **m).into_iter().collect();
                    *self = Self::Few(v);
                }
                Some(val)
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&Q, &V)> {
        let (few, many) = match self {
            Self::Few(v) => (Some(v.iter().map(|(q, v)| (q, v))), None),
            Self::Many(m) => (None, Some(m.iter())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }
}

/// One level of the trie; its filter ends here if it has subscribers.
#[derive(Debug)]
struct Node<K> {
    /// The filter up to and including this level.
    path: Box<str>,
    /// The node one level up (the root for the first level).
    parent: usize,
    /// Children by literal level.
    children: Small<Box<str>, usize>,
    /// The `+` child.
    plus: Option<usize>,
    /// The `#` child.
    hash: Option<usize>,
    /// The subscribers to this filter and their QoS.
    subs: Small<K, QoS>,
    /// How many subscribers have each QoS.
    counts: [u32; 3],
}

impl<K: Copy + Eq + Hash> Node<K> {
    fn new(path: &str, parent: usize) -> Self {
        Self {
            path: path.into(),
            parent,
            children: Small::new(),
            plus: None,
            hash: None,
            subs: Small::new(),
            counts: [0; 3],
        }
    }

    /// This node's level: the last of its path.
    fn level(&self) -> &str {
        self.path.rfind('/').map_or(&self.path, |i| &self.path[i + 1..])
    }

    /// The upstream QoS of this filter: the highest of its subscribers.
    fn max(&self) -> Option<QoS> {
        [QoS::ExactlyOnce, QoS::AtLeastOnce, QoS::AtMostOnce]
            .into_iter()
            .find(|&q| self.counts[q as usize] > 0)
    }

    fn child(&self, level: &str) -> Option<usize> {
        match level {
            "+" => self.plus,
            "#" => self.hash,
            _ => self.children.get(level).copied(),
        }
    }

    fn set_child(&mut self, level: &str, child: usize) {
        match level {
            "+" => self.plus = Some(child),
            "#" => self.hash = Some(child),
            _ => {
                self.children.insert(level.into(), child);
            }
        }
    }

    fn remove_child(&mut self, level: &str) {
        match level {
            "+" => self.plus = None,
            "#" => self.hash = None,
            _ => {
                self.children.remove(level);
            }
        }
    }

    /// Neither subscribers nor children: the node can go.
    fn is_unused(&self) -> bool {
        self.subs.is_empty()
            && self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_none()
    }
}

/// The subscription table: topic filters, their subscribers (keyed by `K`,
/// one per sensor) with the QoS each asked for, and the upstream QoS of
/// each filter.
#[derive(Debug)]
pub struct Filters<K> {
    /// The trie; [`ROOT`] is the root.
    nodes: Slab<Node<K>>,
    /// The filters (their nodes) of each subscriber.
    keys: HashMap<K, Vec<usize>>,
    /// Filters with at least one subscriber.
    filters: usize,
    /// (filter, subscriber) pairs.
    subscriptions: usize,
    /// Scratch of [`Filters::for_each_match`]: nodes still to visit, with
    /// the position in the topic where their next level starts.
    stack: Vec<(usize, usize)>,
    /// Scratch: the matching filters.
    matched: Vec<usize>,
    /// Scratch: the subscribers of several matching filters.
    dedup: Vec<(K, QoS)>,
}

impl<K: Copy + Eq + Hash + Ord> Default for Filters<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Copy + Eq + Hash + Ord> Filters<K> {
    /// An empty table.
    pub fn new() -> Self {
        let mut nodes = Slab::new();
        let root = nodes.insert(Node::new("", ROOT));
        debug_assert_eq!(root, ROOT);
        Self {
            nodes,
            keys: HashMap::new(),
            filters: 0,
            subscriptions: 0,
            stack: Vec::new(),
            matched: Vec::new(),
            dedup: Vec::new(),
        }
    }

    /// Adds `key`'s subscription to `filter` at `qos`, or replaces its QoS
    /// if it has one. Returns what the upstream must do: subscribe when the
    /// filter is new or its upstream QoS (the highest of its subscribers)
    /// changed, up or down.
    pub fn subscribe(&mut self, filter: &str, key: K, qos: QoS) -> Upstream {
        let at = self.make_path(filter);
        let node = &mut self.nodes[at];
        let before = node.max();
        match node.subs.insert(key, qos) {
            Some(old) => node.counts[old as usize] -= 1,
            None => {
                self.subscriptions += 1;
                if before.is_none() {
                    self.filters += 1;
                }
                self.keys.entry(key).or_default().push(at);
            }
        }
        node.counts[qos as usize] += 1;
        Upstream::of(before, node.max())
    }

    /// Removes `key`'s subscription to `filter`. Returns
    /// [`Upstream::Unsubscribe`] when it was the last subscriber,
    /// [`Upstream::Subscribe`] when the filter's upstream QoS went down
    /// (the caller may keep the higher one), [`Upstream::Nothing`]
    /// otherwise, or if `key` had no such subscription.
    pub fn unsubscribe(&mut self, filter: &str, key: K) -> Upstream {
        let Some(at) = self.find(filter) else {
            return Upstream::Nothing;
        };
        let Some(up) = self.drop_subscriber(at, &key) else {
            return Upstream::Nothing;
        };
        if let Some(nodes) = self.keys.get_mut(&key) {
            if let Some(i) = nodes.iter().position(|&n| n == at) {
                nodes.swap_remove(i);
            }
            if nodes.is_empty() {
                self.keys.remove(&key);
                self.shrink_keys();
            }
        }
        self.prune(at);
        up
    }

    /// Removes every subscription of `key` (a sensor gone), in no
    /// particular order, calling `f` with each filter whose upstream must
    /// change and what it must do.
    pub fn remove_key(&mut self, key: K, mut f: impl FnMut(&str, Upstream)) {
        let Some(nodes) = self.keys.remove(&key) else {
            return;
        };
        for at in nodes {
            match self.drop_subscriber(at, &key) {
                None | Some(Upstream::Nothing) => {}
                Some(up) => f(&self.nodes[at].path, up),
            }
            self.prune(at);
        }
        self.shrink_keys();
    }

    /// Calls `f` with every subscriber having a filter that matches
    /// `topic`, in no particular order. A subscriber with several matching
    /// filters is called once, with the highest of their QoS: MQTT 3.1.1
    /// (section 3.3.5) lets a server deliver one copy at the maximum QoS
    /// of the overlapping subscriptions. Allocation-free once the scratch
    /// space kept inside has grown to the largest match.
    pub fn for_each_match(&mut self, topic: &str, mut f: impl FnMut(K, QoS)) {
        let Self { nodes, stack, matched, dedup, .. } = self;
        matched.clear();
        stack.clear();
        stack.push((ROOT, 0));
        let dollar = topic.starts_with('$');
        let found = |n: Option<usize>, matched: &mut Vec<usize>| {
            if let Some(n) = n {
                if nodes.get(n).is_some_and(|n| !n.subs.is_empty()) {
                    matched.push(n);
                }
            }
        };
        while let Some((at, start)) = stack.pop() {
            let Some(node) = nodes.get(at) else {
                continue;
            };
            if start == END {
                // The whole topic matched this node's filter; `#` below it
                // matches its parent level too.
                found(Some(at), matched);
                found(node.hash, matched);
                continue;
            }
            // Wildcards in the first level do not match `$` topics.
            let wild = !(dollar && at == ROOT);
            let rest = topic.get(start..).unwrap_or("");
            let (level, next) = match rest.find('/') {
                Some(i) => (&rest[..i], start + i + 1),
                None => (rest, END),
            };
            if wild {
                found(node.hash, matched);
                if let Some(plus) = node.plus {
                    stack.push((plus, next));
                }
            }
            if let Some(&child) = node.children.get(level) {
                stack.push((child, next));
            }
        }
        match matched.as_slice() {
            [] => {}
            [one] => {
                for (&k, &q) in nodes[*one].subs.iter() {
                    f(k, q);
                }
            }
            several => {
                dedup.clear();
                for &n in several {
                    dedup.extend(nodes[n].subs.iter().map(|(&k, &q)| (k, q)));
                }
                // By key, then QoS: the last of each key's run is its highest.
                dedup.sort_unstable();
                for run in dedup.chunk_by(|a, b| a.0 == b.0) {
                    if let Some(&(k, q)) = run.last() {
                        f(k, q);
                    }
                }
            }
        }
    }

    /// Distinct filters with subscribers: the upstream subscriptions.
    pub fn filter_count(&self) -> usize {
        self.filters
    }

    /// (filter, subscriber) pairs.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions
    }

    /// Trie nodes in use besides the root, for memory accounting.
    pub fn node_count(&self) -> usize {
        self.nodes.len() - 1
    }

    /// The upstream QoS of `filter` (the highest of its subscribers), or
    /// `None` if nobody subscribed to it.
    pub fn subscribed(&self, filter: &str) -> Option<QoS> {
        self.find(filter).and_then(|n| self.nodes[n].max())
    }

    /// The filters `key` subscribed to, with its QoS for each, in no
    /// particular order.
    pub fn filters_of(&self, key: K) -> impl Iterator<Item = (&str, QoS)> + '_ {
        self.keys.get(&key).into_iter().flatten().filter_map(move |&n| {
            let node = self.nodes.get(n)?;
            Some((&*node.path, *node.subs.get(&key)?))
        })
    }

    /// Every filter with subscribers and its upstream QoS, in no
    /// particular order (to subscribe again to all of them).
    pub fn for_each_filter(&self, mut f: impl FnMut(&str, QoS)) {
        for (_, node) in &self.nodes {
            if let Some(q) = node.max() {
                f(&node.path, q);
            }
        }
    }

    /// The node of `filter`, made with the levels it lacks.
    fn make_path(&mut self, filter: &str) -> usize {
        let mut at = ROOT;
        let mut start = 0;
        loop {
            let end = filter[start..].find('/').map_or(filter.len(), |i| start + i);
            let level = &filter[start..end];
            at = match self.nodes[at].child(level) {
                Some(child) => child,
                None => {
                    let child = self.nodes.insert(Node::new(&filter[..end], at));
                    self.nodes[at].set_child(level, child);
                    child
                }
            };
            if end == filter.len() {
                return at;
            }
            start = end + 1;
        }
    }

    /// The node of `filter`, if there is one.
    fn find(&self, filter: &str) -> Option<usize> {
        filter.split('/').try_fold(ROOT, |at, level| self.nodes.get(at)?.child(level))
    }

    /// Removes `key` from the subscribers of node `at` (not from
    /// [`Filters::keys`]); returns the upstream change, or `None` if it was
    /// not there.
    fn drop_subscriber(&mut self, at: usize, key: &K) -> Option<Upstream> {
        let node = self.nodes.get_mut(at)?;
        let before = node.max();
        let qos = node.subs.remove(key)?;
        node.counts[qos as usize] -= 1;
        self.subscriptions -= 1;
        let after = node.max();
        if after.is_none() {
            self.filters -= 1;
        }
        Some(Upstream::of(before, after))
    }

    /// Removes node `at` and the nodes above it that are left unused.
    fn prune(&mut self, mut at: usize) {
        while at != ROOT && self.nodes.get(at).is_some_and(Node::is_unused) {
            let node = self.nodes.remove(at);
            at = node.parent;
            if let Some(parent) = self.nodes.get_mut(at) {
                parent.remove_child(node.level());
            }
        }
        if self.nodes.capacity() > 64 && self.nodes.len() * 4 <= self.nodes.capacity() {
            // Frees the vacant slots past the last node in use.
            self.nodes.shrink_to_fit();
        }
    }

    /// Gives back the index's memory once most subscribers are gone.
    fn shrink_keys(&mut self) {
        if self.keys.capacity() > 64 && self.keys.len() * 4 <= self.keys.capacity() {
            self.keys.shrink_to_fit();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use mqttsn_codec::validate::topic_matches;
    use proptest::prelude::*;

    use super::*;

    const Q0: QoS = QoS::AtMostOnce;
    const Q1: QoS = QoS::AtLeastOnce;
    const Q2: QoS = QoS::ExactlyOnce;

    fn sub(qos: QoS) -> Upstream {
        Upstream::Subscribe { qos }
    }

    /// The matches of `topic`, sorted; panics if a key comes twice.
    fn matches<K: Copy + Eq + Hash + Ord + std::fmt::Debug>(
        t: &mut Filters<K>,
        topic: &str,
    ) -> Vec<(K, QoS)> {
        let mut out = Vec::new();
        t.for_each_match(topic, |k, q| out.push((k, q)));
        out.sort();
        let n = out.len();
        out.dedup_by_key(|e| e.0);
        assert_eq!(n, out.len(), "a key called twice for {topic}");
        out
    }

    /// Whether `filter` alone matches `topic` in a table.
    fn one(filter: &str, topic: &str) -> bool {
        let mut t = Filters::new();
        t.subscribe(filter, 1u32, Q0);
        let got = !matches(&mut t, topic).is_empty();
        assert_eq!(got, topic_matches(filter, topic), "{filter} on {topic}");
        got
    }

    #[test]
    fn plus_matches_one_level() {
        assert!(one("a/+", "a/b"));
        assert!(one("a/+", "a/"));
        assert!(!one("a/+", "a"));
        assert!(!one("a/+", "a/b/c"));
        assert!(one("+/+", "a/b"));
        assert!(one("+", "a"));
        assert!(!one("+", "a/b"));
        assert!(one("a/+/c", "a/b/c"));
        assert!(!one("a/+/c", "a/b/d"));
    }

    #[test]
    fn hash_matches_parent_and_below() {
        assert!(one("a/#", "a"));
        assert!(one("a/#", "a/b"));
        assert!(one("a/#", "a/b/c"));
        assert!(one("a/#", "a/"));
        assert!(!one("a/#", "b"));
        assert!(!one("a/#", "ab"));
        assert!(one("#", "a"));
        assert!(one("#", "a/b/c"));
        assert!(one("#", "/"));
        assert!(one("a/+/#", "a/b"));
        assert!(!one("a/+/#", "a"));
    }

    #[test]
    fn dollar_topics_escape_leading_wildcards() {
        assert!(!one("#", "$SYS/x"));
        assert!(!one("+/x", "$SYS/x"));
        assert!(!one("+", "$SYS"));
        assert!(!one("+/#", "$SYS/x"));
        assert!(one("$SYS/#", "$SYS/x"));
        assert!(one("$SYS/+", "$SYS/x"));
        assert!(one("$SYS", "$SYS"));
        assert!(one("a/+", "a/$x"));
        assert!(one("a/#", "a/$x"));
    }

    #[test]
    fn empty_levels_are_levels() {
        assert!(one("a//b", "a//b"));
        assert!(one("a/+/b", "a//b"));
        assert!(!one("a/b", "a//b"));
        assert!(one("/a", "/a"));
        assert!(one("+/a", "/a"));
        assert!(one("/#", "/a"));
        assert!(!one("a", "/a"));
        assert!(one("/", "/"));
        assert!(one("+/+", "/"));
        assert!(!one("+", "/"));
    }

    #[test]
    fn subscribers_are_counted() {
        let mut t = Filters::new();
        assert_eq!(t.subscribe("a/b", 1u32, Q1), sub(Q1));
        assert_eq!(t.subscribe("a/b", 2, Q1), Upstream::Nothing);
        assert_eq!(t.subscribe("a/b", 2, Q1), Upstream::Nothing);
        assert_eq!((t.filter_count(), t.subscription_count()), (1, 2));
        assert_eq!(t.unsubscribe("a/b", 1), Upstream::Nothing);
        assert_eq!(t.unsubscribe("a/b", 1), Upstream::Nothing);
        assert_eq!(t.subscribed("a/b"), Some(Q1));
        assert_eq!(t.unsubscribe("a/b", 2), Upstream::Unsubscribe);
        assert_eq!(t.subscribed("a/b"), None);
        assert_eq!((t.filter_count(), t.subscription_count(), t.node_count()), (0, 0, 0));
        assert_eq!(t.unsubscribe("a/b", 2), Upstream::Nothing);
        assert_eq!(t.unsubscribe("x", 2), Upstream::Nothing);
    }

    #[test]
    fn upstream_qos_is_the_highest() {
        let mut t = Filters::new();
        assert_eq!(t.subscribe("a", 1u32, Q0), sub(Q0));
        assert_eq!(t.subscribe("a", 2, Q1), sub(Q1));
        assert_eq!(t.subscribe("a", 3, Q1), Upstream::Nothing);
        assert_eq!(t.subscribe("a", 1, Q2), sub(Q2));
        assert_eq!(t.subscribed("a"), Some(Q2));
        // A subscriber lowering its own QoS lowers the filter's.
        assert_eq!(t.subscribe("a", 1, Q0), sub(Q1));
        assert_eq!(t.unsubscribe("a", 2), Upstream::Nothing);
        assert_eq!(t.unsubscribe("a", 3), sub(Q0));
        assert_eq!(t.unsubscribe("a", 1), Upstream::Unsubscribe);
        assert_eq!(t.subscribe("a", 1, Q2), sub(Q2));
    }

    #[test]
    fn a_subscriber_matches_once_at_its_highest_qos() {
        let mut t = Filters::new();
        t.subscribe("a/+", 1u32, Q0);
        t.subscribe("a/#", 1, Q2);
        t.subscribe("#", 1, Q1);
        t.subscribe("a/b", 2, Q1);
        t.subscribe("#", 2, Q0);
        t.subscribe("+/b", 3, Q0);
        assert_eq!(matches(&mut t, "a/b"), [(1, Q2), (2, Q1), (3, Q0)]);
        assert_eq!(matches(&mut t, "a"), [(1, Q2), (2, Q0)]);
        assert_eq!(matches(&mut t, "b"), [(1, Q1), (2, Q0)]);
        assert_eq!(matches(&mut t, "$x/b"), []);
    }

    #[test]
    fn remove_key_reports_the_upstream_changes() {
        let mut t = Filters::new();
        t.subscribe("a/b", 1u32, Q2);
        t.subscribe("a/+", 1, Q0);
        t.subscribe("#", 1, Q1);
        t.subscribe("a/b", 2, Q1);
        t.subscribe("#", 2, Q1);
        let mut mine: Vec<_> = t.filters_of(1).collect();
        mine.sort();
        assert_eq!(mine, [("#", Q1), ("a/+", Q0), ("a/b", Q2)]);
        let mut changes = Vec::new();
        t.remove_key(1, |f, up| changes.push((f.to_string(), up)));
        changes.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            changes,
            [("a/+".to_string(), Upstream::Unsubscribe), ("a/b".to_string(), sub(Q1))]
        );
        assert_eq!(t.filters_of(1).count(), 0);
        assert_eq!((t.filter_count(), t.subscription_count()), (2, 2));
        assert_eq!(matches(&mut t, "a/b"), [(2, Q1)]);
        t.remove_key(1, |_, _| panic!("nothing left"));
        let mut changes = Vec::new();
        t.remove_key(2, |f, up| changes.push((f.to_string(), up)));
        assert_eq!(changes.len(), 2);
        assert_eq!(t.node_count(), 0);
    }

    #[test]
    fn memory_comes_back() {
        let mut t = Filters::new();
        for k in 0..200u32 {
            t.subscribe(&format!("s/{k}/cmd"), k, Q1);
            t.subscribe("s/+/all", k, Q0);
            t.subscribe("s/#", k, Q0);
        }
        assert_eq!(t.filter_count(), 202);
        assert_eq!(t.subscription_count(), 600);
        let want: Vec<_> = (0..200).map(|k| (k, if k == 7 { Q1 } else { Q0 })).collect();
        assert_eq!(matches(&mut t, "s/7/cmd"), want);
        assert_eq!(matches(&mut t, "s/7/all").len(), 200);
        for k in (0..200u32).rev() {
            if k % 2 == 0 {
                t.remove_key(k, |_, _| {});
            } else {
                t.unsubscribe(&format!("s/{k}/cmd"), k);
                t.unsubscribe("s/+/all", k);
                t.unsubscribe("s/#", k);
            }
        }
        assert_eq!((t.filter_count(), t.subscription_count(), t.node_count()), (0, 0, 0));
        assert!(t.keys.is_empty());
        assert!(t.nodes.capacity() <= 64);
        let root = &t.nodes[ROOT];
        assert!(root.is_unused());
    }

    #[test]
    fn narrow_nodes_are_small() {
        assert_eq!(size_of::<Small<Box<str>, usize>>(), size_of::<Vec<(Box<str>, usize)>>());
        assert_eq!(size_of::<Small<u64, QoS>>(), size_of::<Vec<(u64, QoS)>>());
        assert!(size_of::<Node<u64>>() <= 128, "{}", size_of::<Node<u64>>());
    }

    #[test]
    fn odd_input_does_not_panic() {
        let mut t = Filters::new();
        for f in ["", "/", "//", "a/#/b", "+a", "#/#", "a#", "+/+/#", "é/+"] {
            t.subscribe(f, 1u32, Q1);
        }
        for topic in ["", "/", "a/#/b", "+", "#", "a/+", "$", "é/x", "a//"] {
            t.for_each_match(topic, |_, _| {});
        }
        assert_eq!(t.subscribed(""), Some(Q1));
        assert_eq!(matches(&mut t, ""), [(1, Q1)]);
        t.remove_key(1, |_, _| {});
        assert_eq!(t.node_count(), 0);
    }

    /// One step of a property test.
    #[derive(Debug, Clone)]
    enum Op {
        Sub(String, u8, QoS),
        Unsub(String, u8),
        Remove(u8),
        Publish(String),
    }

    /// The table as a plain list, matched with the codec's matcher.
    #[derive(Default)]
    struct Model(Vec<(String, u8, QoS)>);

    impl Model {
        fn max(&self, filter: &str) -> Option<QoS> {
            self.0.iter().filter(|e| e.0 == filter).map(|e| e.2).max()
        }

        fn change(before: Option<QoS>, after: Option<QoS>) -> Upstream {
            match (before, after) {
                (None, None) => Upstream::Nothing,
                (_, None) => Upstream::Unsubscribe,
                (None, Some(qos)) => Upstream::Subscribe { qos },
                (Some(b), Some(a)) if a != b => Upstream::Subscribe { qos: a },
                _ => Upstream::Nothing,
            }
        }

        fn sub(&mut self, filter: &str, key: u8, qos: QoS) -> Upstream {
            let before = self.max(filter);
            match self.0.iter_mut().find(|e| e.0 == filter && e.1 == key) {
                Some(e) => e.2 = qos,
                None => self.0.push((filter.to_string(), key, qos)),
            }
            Self::change(before, self.max(filter))
        }

        fn unsub(&mut self, filter: &str, key: u8) -> Upstream {
            let before = self.max(filter);
            match self.0.iter().position(|e| e.0 == filter && e.1 == key) {
                Some(i) => {
                    self.0.remove(i);
                    Self::change(before, self.max(filter))
                }
                None => Upstream::Nothing,
            }
        }

        fn remove(&mut self, key: u8) -> Vec<(String, Upstream)> {
            let mine: Vec<String> =
                self.0.iter().filter(|e| e.1 == key).map(|e| e.0.clone()).collect();
            let mut out: Vec<_> = mine
                .into_iter()
                .map(|f| {
                    let up = self.unsub(&f, key);
                    (f, up)
                })
                .filter(|(_, up)| *up != Upstream::Nothing)
                .collect();
            out.sort_by(|a, b| a.0.cmp(&b.0));
            out
        }

        fn matches(&self, topic: &str) -> Vec<(u8, QoS)> {
            let mut best = BTreeMap::new();
            for (f, k, q) in &self.0 {
                if topic_matches(f, topic) {
                    let e = best.entry(*k).or_insert(*q);
                    *e = (*e).max(*q);
                }
            }
            best.into_iter().collect()
        }
    }

    /// Runs `ops` on a table and on the model; every answer must agree.
    fn check(ops: Vec<Op>, keys: u8) -> Result<(), TestCaseError> {
        let mut t = Filters::new();
        let mut m = Model::default();
        for op in ops {
            match op {
                Op::Sub(f, k, q) => prop_assert_eq!(t.subscribe(&f, k, q), m.sub(&f, k, q)),
                Op::Unsub(f, k) => prop_assert_eq!(t.unsubscribe(&f, k), m.unsub(&f, k)),
                Op::Remove(k) => {
                    let mut got = Vec::new();
                    t.remove_key(k, |f, up| got.push((f.to_string(), up)));
                    got.sort_by(|a, b| a.0.cmp(&b.0));
                    prop_assert_eq!(got, m.remove(k));
                }
                Op::Publish(topic) => prop_assert_eq!(matches(&mut t, &topic), m.matches(&topic)),
            }
            prop_assert_eq!(t.subscription_count(), m.0.len());
            let mut filters: Vec<&str> = m.0.iter().map(|e| e.0.as_str()).collect();
            filters.sort_unstable();
            filters.dedup();
            prop_assert_eq!(t.filter_count(), filters.len());
            for f in filters {
                prop_assert_eq!(t.subscribed(f), m.max(f));
            }
            for k in 0..keys {
                let mut got: Vec<_> = t.filters_of(k).map(|(f, q)| (f.to_string(), q)).collect();
                got.sort();
                let mut want: Vec<_> =
                    m.0.iter().filter(|e| e.1 == k).map(|e| (e.0.clone(), e.2)).collect();
                want.sort();
                prop_assert_eq!(got, want);
            }
        }
        for k in 0..keys {
            t.remove_key(k, |_, _| {});
        }
        prop_assert_eq!((t.filter_count(), t.subscription_count(), t.node_count()), (0, 0, 0));
        Ok(())
    }

    fn qos() -> impl Strategy<Value = QoS> {
        prop::sample::select(vec![Q0, Q1, Q2])
    }

    /// A valid filter over the levels `a`, `b`, `$x`, the empty one and
    /// the wildcards.
    fn filter() -> impl Strategy<Value = String> {
        let level = prop::sample::select(vec!["a", "b", "$x", "", "+"]);
        (prop::collection::vec(level, 0..4), any::<bool>()).prop_map(|(levels, hash)| {
            if levels.is_empty() {
                return "#".to_string();
            }
            let mut f = levels.join("/");
            if hash {
                f.push_str("/#");
            }
            f
        })
    }

    fn topic() -> impl Strategy<Value = String> {
        let level = prop::sample::select(vec!["a", "b", "$x", ""]);
        prop::collection::vec(level, 1..5).prop_map(|l| l.join("/"))
    }

    fn op(
        keys: u8,
        subs: u32,
        filter: BoxedStrategy<String>,
        topic: BoxedStrategy<String>,
    ) -> impl Strategy<Value = Op> {
        prop_oneof![
            subs => (filter.clone(), 0..keys, qos()).prop_map(|(f, k, q)| Op::Sub(f, k, q)),
            2 => (filter, 0..keys).prop_map(|(f, k)| Op::Unsub(f, k)),
            1 => (0..keys).prop_map(Op::Remove),
            3 => topic.prop_map(Op::Publish),
        ]
    }

    proptest! {
        #[test]
        fn agrees_with_the_naive_matcher(
            ops in prop::collection::vec(op(4, 4, filter().boxed(), topic().boxed()), 1..80)
        ) {
            check(ops, 4)?;
        }

        /// Wide nodes: many subscribers on a filter and many children under
        /// one level, so the vectors become hash maps and back.
        #[test]
        fn agrees_when_wide(
            ops in prop::collection::vec(
                op(
                    120,
                    8,
                    prop_oneof![
                        2 => (0..50u8).prop_map(|n| format!("w/{n}")),
                        1 => Just("w/+".to_string()),
                        1 => Just("w/#".to_string()),
                    ].boxed(),
                    (0..50u8).prop_map(|n| format!("w/{n}")).boxed(),
                ),
                1..400,
            )
        ) {
            check(ops, 120)?;
        }
    }
}
