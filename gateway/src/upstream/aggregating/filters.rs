//! Placeholder subscription table (replaced by the trie).
use std::collections::HashMap;
use std::hash::Hash;

use crate::mqtt::QoS;

/// What the upstream must do after a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// Nothing.
    Nothing,
    /// Subscribe at this QoS.
    Subscribe {
        /// The QoS.
        qos: QoS,
    },
    /// Unsubscribe.
    Unsubscribe,
}

/// Subscriptions.
#[derive(Debug, Default)]
pub struct Filters<K> {
    subs: HashMap<String, Vec<(K, QoS)>>,
}

impl<K: Copy + Eq + Hash + Ord> Filters<K> {
    /// Empty.
    pub fn new() -> Self {
        Self { subs: HashMap::new() }
    }
    fn max(&self, f: &str) -> Option<QoS> {
        self.subs.get(f).and_then(|v| v.iter().map(|e| e.1).max())
    }
    /// Adds.
    pub fn subscribe(&mut self, filter: &str, key: K, qos: QoS) -> Upstream {
        let before = self.max(filter);
        let v = self.subs.entry(filter.to_string()).or_default();
        v.retain(|e| e.0 != key);
        v.push((key, qos));
        let after = self.max(filter);
        if before == after {
            Upstream::Nothing
        } else {
            Upstream::Subscribe { qos: after.unwrap_or(qos) }
        }
    }
    /// Removes.
    pub fn unsubscribe(&mut self, filter: &str, key: K) -> Upstream {
        let Some(v) = self.subs.get_mut(filter) else { return Upstream::Nothing };
        let n = v.len();
        v.retain(|e| e.0 != key);
        if v.is_empty() {
            self.subs.remove(filter);
            return if n > 0 { Upstream::Unsubscribe } else { Upstream::Nothing };
        }
        Upstream::Nothing
    }
    /// Removes all of key.
    pub fn remove_key(&mut self, key: K, mut f: impl FnMut(&str, Upstream)) {
        let fs: Vec<String> = self
            .subs
            .iter()
            .filter(|(_, v)| v.iter().any(|e| e.0 == key))
            .map(|(k, _)| k.clone())
            .collect();
        for filter in fs {
            let u = self.unsubscribe(&filter, key);
            f(&filter, u);
        }
    }
    /// Matches.
    pub fn for_each_match(&mut self, topic: &str, mut f: impl FnMut(K, QoS)) {
        let mut best: HashMap<K, QoS> = HashMap::new();
        for (filter, v) in &self.subs {
            if mqttsn_codec::validate::topic_matches(filter, topic) {
                for (k, q) in v {
                    let e = best.entry(*k).or_insert(*q);
                    *e = (*e).max(*q);
                }
            }
        }
        for (k, q) in best {
            f(k, q);
        }
    }
    /// Every filter with its upstream QoS.
    pub fn for_each_filter(&self, mut f: impl FnMut(&str, QoS)) {
        for filter in self.subs.keys() {
            if let Some(q) = self.max(filter) {
                f(filter, q);
            }
        }
    }
    /// Filters.
    pub fn filter_count(&self) -> usize {
        self.subs.len()
    }
    /// Pairs.
    pub fn subscription_count(&self) -> usize {
        self.subs.values().map(Vec::len).sum()
    }
    /// Upstream QoS.
    pub fn subscribed(&self, filter: &str) -> Option<QoS> {
        self.max(filter)
    }
}
