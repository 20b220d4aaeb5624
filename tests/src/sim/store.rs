//! The session store, in memory: what `mqttsn_gateway::store` keeps on
//! disk (one record per session, one entry per buffered message), with
//! writes committed in order after a seeded delay, as the writer thread
//! commits them in groups. A gateway crash loses what was not committed;
//! what was is read back at the restart ([`Store::loaded`]).

use std::collections::{BTreeMap, VecDeque};

use mqttsn_gateway::store::{Loaded, Write};

use super::rng::Rng;

/// The store. See the module documentation.
#[derive(Debug)]
pub struct Store {
    rng: Rng,
    sessions: BTreeMap<String, Vec<u8>>,
    messages: BTreeMap<(String, u64), Vec<u8>>,
    /// Writes waiting for their commit, by when.
    pending: VecDeque<(u64, Write)>,
    /// Commits so far.
    pub commits: u64,
    /// Writes lost in crashes.
    pub lost: u64,
    /// The most writes waiting at once.
    pub most_pending: usize,
}

impl Store {
    /// An empty store.
    pub fn new(rng: Rng) -> Self {
        Self {
            rng,
            sessions: BTreeMap::new(),
            messages: BTreeMap::new(),
            pending: VecDeque::new(),
            commits: 0,
            lost: 0,
            most_pending: 0,
        }
    }

    /// A write from the endpoint, committed 0 to 40 ms later (never before
    /// an earlier one).
    pub fn submit(&mut self, now: u64, w: Write) {
        let last = self.pending.back().map_or(0, |p| p.0);
        let at = (now + self.rng.range(0, 40)).max(last);
        self.pending.push_back((at, w));
        self.most_pending = self.most_pending.max(self.pending.len());
    }

    /// When the next commit is due.
    pub fn next_due(&self) -> Option<u64> {
        self.pending.front().map(|p| p.0)
    }

    /// Commits every write due by `now`, in one transaction; returns the
    /// last ticket committed (the endpoint's outputs up to it may go out).
    pub fn commit_due(&mut self, now: u64) -> Option<u64> {
        let mut last = None;
        while self.pending.front().is_some_and(|p| p.0 <= now) {
            let Some((_, w)) = self.pending.pop_front() else { break };
            self.apply(&w);
            last = Some(w.ticket);
        }
        if last.is_some() {
            self.commits += 1;
        }
        last
    }

    fn apply(&mut self, w: &Write) {
        let cid: &str = &w.client_id;
        let p = &w.persist;
        if p.remove {
            self.sessions.remove(cid);
            self.messages.retain(|(c, _), _| c != cid);
            return;
        }
        for seq in &p.delete {
            self.messages.remove(&(cid.to_owned(), *seq));
        }
        for (seq, bytes) in &p.put {
            self.messages.insert((cid.to_owned(), *seq), bytes.clone());
        }
        if let Some(r) = &p.record {
            self.sessions.insert(cid.to_owned(), r.clone());
        }
    }

    /// The gateway crashed: what was not committed is gone.
    pub fn crash(&mut self) {
        self.lost += self.pending.len() as u64;
        self.pending.clear();
    }

    /// Every stored session, as `mqttsn_gateway::store::Store::open` reads
    /// them.
    pub fn loaded(&self) -> Vec<Loaded> {
        self.sessions
            .iter()
            .map(|(cid, record)| Loaded {
                client_id: cid.clone(),
                record: record.clone(),
                messages: self
                    .messages
                    .range((cid.clone(), 0)..=(cid.clone(), u64::MAX))
                    .map(|((_, seq), m)| (*seq, m.clone()))
                    .collect(),
            })
            .collect()
    }

    /// Sessions stored.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Nothing stored.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}
