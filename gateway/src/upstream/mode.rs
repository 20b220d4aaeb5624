//! The upstream side the configuration chose (`gateway.mode`).

use std::time::Instant;

use bytes::BytesMut;

use super::aggregating::Aggregating;
use super::transparent::Transparent;
use super::{Command, ConnId, Event, Io, UpstreamKey, Upstreams};

/// Transparent or aggregating: one type for the worker, whichever runs.
// One per worker, for the life of the gateway: the size of the smaller
// variant does not matter, an indirection on every call would.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum ByMode {
    /// A connection per sensor.
    Transparent(Transparent),
    /// A shared pool.
    Aggregating(Aggregating),
}

impl ByMode {
    /// The pool, in aggregating mode.
    pub fn pool(&self) -> Option<&Aggregating> {
        match self {
            Self::Transparent(_) => None,
            Self::Aggregating(a) => Some(a),
        }
    }
}

macro_rules! each {
    ($self:ident, $u:ident => $e:expr) => {
        match $self {
            ByMode::Transparent($u) => $e,
            ByMode::Aggregating($u) => $e,
        }
    };
}

impl Upstreams for ByMode {
    fn handle_command(&mut self, key: UpstreamKey, cmd: Command, now: Instant) {
        each!(self, u => u.handle_command(key, cmd, now))
    }
    fn handle_opened(&mut self, conn: ConnId, now: Instant) {
        each!(self, u => u.handle_opened(conn, now))
    }
    fn handle_open_failed(&mut self, conn: ConnId, reason: &str, now: Instant) {
        each!(self, u => u.handle_open_failed(conn, reason, now))
    }
    fn handle_received(&mut self, conn: ConnId, data: &mut BytesMut, now: Instant) {
        each!(self, u => u.handle_received(conn, data, now))
    }
    fn handle_closed(&mut self, conn: ConnId, reason: &str, now: Instant) {
        each!(self, u => u.handle_closed(conn, reason, now))
    }
    fn handle_timeout(&mut self, now: Instant) {
        each!(self, u => u.handle_timeout(now))
    }
    fn poll_event(&mut self) -> Option<(UpstreamKey, Event)> {
        each!(self, u => u.poll_event())
    }
    fn poll_transmit(&mut self) -> Option<(ConnId, BytesMut)> {
        each!(self, u => u.poll_transmit())
    }
    fn poll_io(&mut self) -> Option<Io> {
        each!(self, u => u.poll_io())
    }
    fn poll_timeout(&mut self) -> Option<Instant> {
        each!(self, u => u.poll_timeout())
    }
    fn open_count(&self) -> usize {
        each!(self, u => u.open_count())
    }
}
