//! Topic ids: the predefined table shared by all sensors, and each sensor's
//! own registrations.
//!
//! Normal topic ids are allocated per sensor from the ids that are not
//! predefined, never `0x0000` or `0xFFFF`, so a normal id and a predefined
//! id can never be confused. A sensor that REGISTERs a name that is also
//! predefined gets the predefined id back: the id then means the same topic
//! whichever TopicIdType the sensor later uses with it.

use std::collections::HashMap;
use std::sync::Arc;

/// Why a topic could not be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterError {
    /// The sensor has as many topics as the limit allows.
    Full,
}

/// The predefined topics: id to name and back. Shared (read-only) by every
/// session.
#[derive(Debug, Default, Clone)]
pub struct Predefined {
    by_id: HashMap<u16, Arc<str>>,
    by_name: HashMap<Arc<str>, u16>,
}

impl Predefined {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a predefined topic. Returns `false` (and changes nothing) for
    /// id `0x0000` or `0xFFFF`, or an id or name already present.
    pub fn insert(&mut self, id: u16, name: &str) -> bool {
        if id == 0
            || id == 0xffff
            || self.by_id.contains_key(&id)
            || self.by_name.contains_key(name)
        {
            return false;
        }
        let name: Arc<str> = Arc::from(name);
        self.by_id.insert(id, name.clone());
        self.by_name.insert(name, id);
        true
    }

    /// The name of a predefined id.
    pub fn name(&self, id: u16) -> Option<&Arc<str>> {
        self.by_id.get(&id)
    }

    /// The predefined id of a name.
    pub fn id(&self, name: &str) -> Option<u16> {
        self.by_name.get(name).copied()
    }

    /// True when the id is predefined.
    pub fn contains_id(&self, id: u16) -> bool {
        self.by_id.contains_key(&id)
    }

    /// The number of predefined topics.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Every (id, name) pair, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u16, &Arc<str>)> {
        self.by_id.iter().map(|(id, name)| (*id, name))
    }
}

/// What [`Registrations::export`] gives: registrations (id, name), refused
/// names, and the next id to try.
pub type Exported = (Vec<(u16, Arc<str>)>, Vec<Arc<str>>, u16);

/// One sensor's registered topics.
#[derive(Debug, Clone)]
pub struct Registrations {
    predefined: Arc<Predefined>,
    by_id: HashMap<u16, Arc<str>>,
    by_name: HashMap<Arc<str>, u16>,
    /// Topics for which the sensor refused a gateway REGISTER (spec 6.10):
    /// no PUBLISH goes out for them until the sensor registers them itself.
    refused: HashMap<Arc<str>, ()>,
    next_id: u16,
    limit: usize,
}

impl Registrations {
    /// An empty table for one sensor, allowing at most `limit` normal ids.
    pub fn new(predefined: Arc<Predefined>, limit: usize) -> Self {
        Self {
            predefined,
            by_id: HashMap::new(),
            by_name: HashMap::new(),
            refused: HashMap::new(),
            next_id: 1,
            limit,
        }
    }

    /// The shared predefined table.
    pub fn predefined(&self) -> &Arc<Predefined> {
        &self.predefined
    }

    /// The id for `name`, registering it when new: the predefined id for a
    /// predefined name, else a normal id.
    pub fn register(&mut self, name: &str) -> Result<u16, RegisterError> {
        if let Some(id) = self.predefined.id(name) {
            self.refused.remove(name);
            return Ok(id);
        }
        if let Some(id) = self.by_name.get(name) {
            self.refused.remove(name);
            return Ok(*id);
        }
        if self.by_id.len() >= self.limit {
            return Err(RegisterError::Full);
        }
        let id = self.allocate().ok_or(RegisterError::Full)?;
        let name: Arc<str> = Arc::from(name);
        self.refused.remove(&name);
        self.by_id.insert(id, name.clone());
        self.by_name.insert(name, id);
        Ok(id)
    }

    fn allocate(&mut self) -> Option<u16> {
        // At most 0xFFFE candidates: 0x0000 and 0xFFFF are never used.
        for _ in 0..0xfffe_u32 {
            let id = self.next_id;
            self.next_id = if id >= 0xfffe { 1 } else { id + 1 };
            if !self.by_id.contains_key(&id) && !self.predefined.contains_id(id) {
                return Some(id);
            }
        }
        None
    }

    /// The topic name of a normal id (a registered id, or a predefined id
    /// handed out by REGISTER).
    pub fn name(&self, id: u16) -> Option<&Arc<str>> {
        self.by_id.get(&id).or_else(|| {
            // A predefined id that REGISTER returned is valid as a normal id.
            self.predefined.name(id)
        })
    }

    /// The normal id already known to the sensor for `name`, if any.
    pub fn id(&self, name: &str) -> Option<u16> {
        self.by_name.get(name).copied()
    }

    /// Forgets a registration (the sensor answered PUBACK invalid topic id:
    /// it does not know the id, so the next message registers it again).
    pub fn forget(&mut self, id: u16) {
        if let Some(name) = self.by_id.remove(&id) {
            self.by_name.remove(&name);
        }
    }

    /// Marks a topic as refused by the sensor (REGACK with a rejection).
    pub fn refuse(&mut self, name: &str) {
        if let Some(id) = self.by_name.remove(name) {
            self.by_id.remove(&id);
        }
        self.refused.insert(Arc::from(name), ());
    }

    /// True when the sensor refused this topic.
    pub fn is_refused(&self, name: &str) -> bool {
        self.refused.contains_key(name)
    }

    /// The number of normal ids registered.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True when nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The sensor's own registrations (id, name), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u16, &Arc<str>)> {
        self.by_id.iter().map(|(id, name)| (*id, name))
    }

    /// The sensor's own registrations (id, name), the names it refused,
    /// and the next id to try: what the store keeps.
    pub fn export(&self) -> Exported {
        let mut regs: Vec<(u16, Arc<str>)> =
            self.by_id.iter().map(|(id, n)| (*id, n.clone())).collect();
        regs.sort_by_key(|(id, _)| *id);
        let mut refused: Vec<Arc<str>> = self.refused.keys().cloned().collect();
        refused.sort();
        (regs, refused, self.next_id)
    }

    /// Restores what [`Registrations::export`] gave. Ids that are
    /// predefined, or out of range, are skipped.
    pub fn import(&mut self, regs: Vec<(u16, Arc<str>)>, refused: Vec<Arc<str>>, next_id: u16) {
        for (id, name) in regs {
            if id == 0 || id == 0xffff || self.predefined.contains_id(id) {
                continue;
            }
            self.by_name.insert(name.clone(), id);
            self.by_id.insert(id, name);
        }
        for name in refused {
            self.refused.insert(name, ());
        }
        if next_id != 0 && next_id != 0xffff {
            self.next_id = next_id;
        }
    }

    /// Forgets everything (a clean session).
    pub fn clear(&mut self) {
        self.by_id.clear();
        self.by_name.clear();
        self.refused.clear();
        self.next_id = 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(limit: usize) -> Registrations {
        let mut p = Predefined::new();
        assert!(p.insert(1, "pre/one"));
        assert!(p.insert(3, "pre/three"));
        assert!(!p.insert(0, "zero"));
        assert!(!p.insert(0xffff, "max"));
        assert!(!p.insert(1, "dup"));
        Registrations::new(Arc::new(p), limit)
    }

    #[test]
    fn normal_ids_avoid_predefined_ids_and_repeat_for_a_name() {
        let mut t = table(10);
        assert_eq!(t.register("a"), Ok(2));
        assert_eq!(t.register("b"), Ok(4));
        assert_eq!(t.register("a"), Ok(2));
        assert_eq!(t.name(4).map(|n| &**n), Some("b"));
        // A predefined name registered by name gets its predefined id.
        assert_eq!(t.register("pre/three"), Ok(3));
        assert_eq!(t.name(3).map(|n| &**n), Some("pre/three"));
    }

    #[test]
    fn limit_and_forget() {
        let mut t = table(2);
        assert_eq!(t.register("a"), Ok(2));
        assert_eq!(t.register("b"), Ok(4));
        assert_eq!(t.register("c"), Err(RegisterError::Full));
        t.forget(2);
        assert_eq!(t.register("c"), Ok(5));
        assert!(t.name(2).is_none());
    }

    #[test]
    fn refused_topics() {
        let mut t = table(4);
        let id = t.register("x").unwrap_or(0);
        t.refuse("x");
        assert!(t.is_refused("x"));
        assert!(t.name(id).is_none());
        assert!(t.register("x").is_ok());
        assert!(!t.is_refused("x"));
    }
}
