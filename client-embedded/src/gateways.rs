//! The gateways a client may use, in order: the configured ones, then the
//! ones learnt from ADVERTISE and GWINFO ([`crate::discovery`]), at most
//! `G` in all. Which one is current, and which one is next when it is
//! lost ([`crate::Client::fail_over`]).
//!
//! Moving on rotates through the list: a gateway that was lost or sent
//! DISCONNECT is not tried again before every other gateway has been
//! tried, and once every gateway has failed since the last accepted
//! CONNACK there is no next one (the caller reports the gateways gone,
//! or waits and calls [`Gateways::reset`]). With one gateway, there is
//! never a next one.
//!
//! Sans-IO like the client: addresses are any `Copy + PartialEq` type the
//! application uses.

use crate::discovery::DiscoveryEvent;

#[derive(Debug, Clone, Copy)]
struct Entry<A> {
    addr: A,
    /// The GwId, for a gateway learnt from discovery.
    gw_id: Option<u8>,
    /// Failed (lost, refused, DISCONNECT) since the last accepted CONNACK.
    failed: bool,
}

/// The list is full of configured gateways: a learnt one has no room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl core::fmt::Display for Full {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("the gateway list is full")
    }
}

impl core::error::Error for Full {}

/// Up to `G` gateways and the current one.
#[derive(Debug, Clone)]
pub struct Gateways<A: Copy + PartialEq, const G: usize = 4> {
    entries: [Option<Entry<A>>; G],
    current: usize,
}

impl<A: Copy + PartialEq, const G: usize> Default for Gateways<A, G> {
    fn default() -> Self {
        Self { entries: [None; G], current: 0 }
    }
}

impl<A: Copy + PartialEq, const G: usize> Gateways<A, G> {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a configured gateway at the end of the list (once); the first
    /// one added is current.
    pub fn add(&mut self, addr: A) -> Result<(), Full> {
        if self.position(addr).is_some() {
            return Ok(());
        }
        let free = self.entries.iter_mut().find(|e| e.is_none()).ok_or(Full)?;
        *free = Some(Entry { addr, gw_id: None, failed: false });
        Ok(())
    }

    /// A gateway found by discovery: added when new. When the list is
    /// full, it takes the place of the oldest learnt gateway that is not
    /// current; configured gateways are never replaced.
    pub fn learn(&mut self, gw_id: u8, addr: A) -> Result<(), Full> {
        if let Some(i) = self.position(addr) {
            if let Some(e) = self.entries.get_mut(i).and_then(Option::as_mut) {
                e.gw_id = Some(gw_id);
            }
            return Ok(());
        }
        let entry = Some(Entry { addr, gw_id: Some(gw_id), failed: false });
        if let Some(free) = self.entries.iter_mut().find(|e| e.is_none()) {
            *free = entry;
            return Ok(());
        }
        let current = self.current;
        let oldest = (0..G).find(|&i| {
            i != current
                && self.entries.get(i).copied().flatten().is_some_and(|e| e.gw_id.is_some())
        });
        let i = oldest.ok_or(Full)?;
        // Keep the order: the learnt gateway goes to the end.
        if let Some(tail) = self.entries.get_mut(i..) {
            tail.rotate_left(1);
        }
        if current > i {
            self.current -= 1;
        }
        if let Some(last) = self.entries.last_mut() {
            *last = entry;
        }
        Ok(())
    }

    /// What discovery reported: a found gateway is learnt; a lost one
    /// counts as failed (it is tried last).
    pub fn handle_discovery(&mut self, event: DiscoveryEvent<A>) -> Result<(), Full> {
        match event {
            DiscoveryEvent::GatewayFound { gw_id, addr } => self.learn(gw_id, addr),
            DiscoveryEvent::GatewayLost { gw_id } => {
                for e in self.entries.iter_mut().flatten() {
                    if e.gw_id == Some(gw_id) {
                        e.failed = true;
                    }
                }
                Ok(())
            }
        }
    }

    /// The gateway to send to.
    pub fn current(&self) -> Option<A> {
        self.entries.get(self.current).copied().flatten().map(|e| e.addr)
    }

    /// How many gateways the list holds.
    pub fn len(&self) -> usize {
        self.entries.iter().flatten().count()
    }

    /// True when the list holds no gateway.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The gateways, current or not, in order.
    pub fn iter(&self) -> impl Iterator<Item = A> + '_ {
        self.entries.iter().flatten().map(|e| e.addr)
    }

    /// The current gateway accepted the session (CONNACK): every gateway
    /// may be tried again after it.
    pub fn connected(&mut self) {
        self.reset();
    }

    /// Forgets every failure, so that every gateway may be tried again.
    pub fn reset(&mut self) {
        for e in self.entries.iter_mut().flatten() {
            e.failed = false;
        }
    }

    /// The current gateway is lost (or sent DISCONNECT, or refused the
    /// session): the next gateway after it, in order and wrapping around,
    /// that has not failed since the last accepted CONNACK becomes current.
    /// `None` when there is none: every gateway failed.
    pub fn fail_over(&mut self) -> Option<A> {
        if let Some(e) = self.entries.get_mut(self.current).and_then(Option::as_mut) {
            e.failed = true;
        }
        let next = (1..=G)
            .map(|step| (self.current + step) % G.max(1))
            .find(|&i| self.entries.get(i).copied().flatten().is_some_and(|e| !e.failed))?;
        self.current = next;
        self.current()
    }

    fn position(&self, addr: A) -> Option<usize> {
        self.entries.iter().position(|e| e.is_some_and(|e| e.addr == addr))
    }
}
