//! What the workers of one gateway share: which worker holds which
//! session (by ClientId and by bound address), how many sessions there are
//! in all, whether the broker is reachable and whether the session store
//! can write.
//!
//! Each worker receives on its own socket (SO_REUSEPORT: the kernel picks
//! the socket by the source address), and a session lives on the worker
//! that received its first CONNECT. A sensor that comes back from another
//! address (a takeover, a wake-up after a NAT rebinding) or a session
//! restored from the store may be heard by another worker; that worker
//! finds the owner here and forwards the datagram to it. With one worker
//! nothing here but the counters is used.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::admission::{Admission, Limits};
use crate::peer::Peer;

/// Identifies a worker of the gateway (0 holds the gateway's own broker
/// connection).
pub type WorkerId = usize;

/// The state shared by a gateway's workers. See the module documentation.
#[derive(Debug)]
pub struct Directory {
    workers: usize,
    clients: RwLock<HashMap<Arc<str>, WorkerId>>,
    addrs: RwLock<HashMap<Peer, WorkerId>>,
    sessions: AtomicUsize,
    connecting: AtomicUsize,
    broker_up: AtomicBool,
    broker_down: AtomicBool,
    store_failing: AtomicBool,
    admission: Mutex<Admission>,
}

impl Directory {
    /// The directory of a gateway with `workers` workers.
    pub fn new(workers: usize) -> Self {
        Self {
            workers: workers.max(1),
            clients: RwLock::new(HashMap::new()),
            addrs: RwLock::new(HashMap::new()),
            sessions: AtomicUsize::new(0),
            connecting: AtomicUsize::new(0),
            broker_up: AtomicBool::new(false),
            broker_down: AtomicBool::new(false),
            store_failing: AtomicBool::new(false),
            admission: Mutex::new(Admission::new(Limits::default())),
        }
    }

    /// The worker a session of `client_id` belongs to when nothing else
    /// decides: a session restored from the store goes there, and in
    /// aggregating mode every session does (its subscriptions are held by
    /// that worker's pool, under ClientIds that stay the same from one run
    /// to the next).
    pub fn home_of(&self, client_id: &str) -> WorkerId {
        (crate::upstream::aggregating::stable_hash(client_id) % self.workers as u64) as WorkerId
    }

    /// The admission state all workers share (CONNECTs and replies to
    /// unknown senders only: never on a connected sensor's path).
    pub fn admission(&self) -> MutexGuard<'_, Admission> {
        // A worker that panicked while holding it left counts, not a
        // broken invariant: go on with them.
        self.admission.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many workers there are.
    pub fn workers(&self) -> usize {
        self.workers
    }

    fn shared(&self) -> bool {
        self.workers > 1
    }

    /// The worker holding `client_id`'s session, if another than `me`
    /// holds it.
    pub fn owner_elsewhere(&self, client_id: &str, me: WorkerId) -> Option<WorkerId> {
        if !self.shared() {
            return None;
        }
        let map = self.clients.read().ok()?;
        map.get(client_id).copied().filter(|w| *w != me)
    }

    /// Records that `me` holds `client_id`'s session, unless another
    /// worker got there first: then that worker is returned.
    pub fn claim(&self, client_id: &Arc<str>, me: WorkerId) -> Option<WorkerId> {
        if !self.shared() {
            return None;
        }
        let Ok(mut map) = self.clients.write() else { return None };
        let owner = *map.entry(client_id.clone()).or_insert(me);
        (owner != me).then_some(owner)
    }

    /// `me` no longer holds `client_id`'s session.
    pub fn release(&self, client_id: &str, me: WorkerId) {
        if !self.shared() {
            return;
        }
        if let Ok(mut map) = self.clients.write() {
            if map.get(client_id) == Some(&me) {
                map.remove(client_id);
            }
        }
    }

    /// The worker a datagram from `peer` belongs to, if another than `me`.
    pub fn addr_elsewhere(&self, peer: &Peer, me: WorkerId) -> Option<WorkerId> {
        if !self.shared() {
            return None;
        }
        let map = self.addrs.read().ok()?;
        map.get(peer).copied().filter(|w| *w != me)
    }

    /// `peer` is bound to a session on `me`.
    pub fn bind_addr(&self, peer: &Peer, me: WorkerId) {
        if !self.shared() {
            return;
        }
        if let Ok(mut map) = self.addrs.write() {
            map.insert(peer.clone(), me);
        }
    }

    /// `peer` is no longer bound on `me`.
    pub fn unbind_addr(&self, peer: &Peer, me: WorkerId) {
        if !self.shared() {
            return;
        }
        if let Ok(mut map) = self.addrs.write() {
            if map.get(peer) == Some(&me) {
                map.remove(peer);
            }
        }
    }

    /// Sessions held by all workers.
    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::Relaxed)
    }

    /// One session more.
    pub fn session_added(&self) {
        self.sessions.fetch_add(1, Ordering::Relaxed);
    }

    /// Sessions waiting for their broker connection or their sensor's
    /// will handshake, on all workers.
    pub fn connecting(&self) -> usize {
        self.connecting.load(Ordering::Relaxed)
    }

    /// A session started (`true`) or stopped (`false`) waiting.
    pub fn set_connecting(&self, waiting: bool) {
        if waiting {
            self.connecting.fetch_add(1, Ordering::Relaxed);
        } else {
            let _ = self
                .connecting
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(1)));
        }
    }

    /// One session fewer.
    pub fn session_removed(&self) {
        let _ = self
            .sessions
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(1)));
    }

    /// The broker answered the gateway's own connection last time.
    pub fn broker_up(&self) -> bool {
        self.broker_up.load(Ordering::Relaxed)
    }

    /// The gateway's own connection found the broker unreachable.
    pub fn broker_down(&self) -> bool {
        self.broker_down.load(Ordering::Relaxed)
    }

    /// What the gateway's own connection found.
    pub fn set_broker(&self, up: bool, down: bool) {
        self.broker_up.store(up, Ordering::Relaxed);
        self.broker_down.store(down, Ordering::Relaxed);
    }

    /// The session store cannot write (its writer is retrying).
    pub fn store_failing(&self) -> bool {
        self.store_failing.load(Ordering::Relaxed)
    }

    /// What the store's writer found.
    pub fn set_store_failing(&self, failing: bool) {
        self.store_failing.store(failing, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_claim_wins_and_only_the_owner_releases() {
        let d = Directory::new(2);
        let id: Arc<str> = Arc::from("s1");
        assert_eq!(d.claim(&id, 0), None);
        assert_eq!(d.claim(&id, 1), Some(0));
        assert_eq!(d.owner_elsewhere("s1", 1), Some(0));
        assert_eq!(d.owner_elsewhere("s1", 0), None);
        d.release("s1", 1);
        assert_eq!(d.owner_elsewhere("s1", 1), Some(0));
        d.release("s1", 0);
        assert_eq!(d.owner_elsewhere("s1", 1), None);
    }

    #[test]
    fn one_worker_keeps_no_directory() {
        let d = Directory::new(1);
        let id: Arc<str> = Arc::from("s1");
        assert_eq!(d.claim(&id, 0), None);
        let p = Peer::direct(([127, 0, 0, 1], 5).into());
        d.bind_addr(&p, 0);
        assert_eq!(d.addr_elsewhere(&p, 1), None);
    }

    #[test]
    fn addresses_point_at_their_worker() {
        let d = Directory::new(3);
        let p = Peer::direct(([127, 0, 0, 1], 5).into());
        d.bind_addr(&p, 2);
        assert_eq!(d.addr_elsewhere(&p, 0), Some(2));
        assert_eq!(d.addr_elsewhere(&p, 2), None);
        d.unbind_addr(&p, 0);
        assert_eq!(d.addr_elsewhere(&p, 0), Some(2));
        d.unbind_addr(&p, 2);
        assert_eq!(d.addr_elsewhere(&p, 0), None);
    }
}
