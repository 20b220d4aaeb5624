//! The sans-IO endpoint: every session of one worker, and everything that
//! happens between a datagram and a session.
//!
//! An [`Endpoint`] routes datagrams to sessions (CONNECT by ClientId,
//! everything else by source address), admits or refuses CONNECTs
//! (credentials, the session limit, the broker being down), moves a
//! session to a new address on a takeover or a wake-up, answers senders
//! without a session (rate-limited DISCONNECT, GWINFO, QoS -1), sends
//! ADVERTISE, forgets expired sessions, publishes the key figures, and
//! holds every output of a persistent session until the store has
//! committed the state that produced it. Its inputs take an explicit
//! `now`; its outputs are polled:
//!
//! | input | output |
//! |---|---|
//! | [`Endpoint::handle_datagram`] | [`Endpoint::poll_transmit`]: datagrams to send |
//! | [`Endpoint::handle_upstream`] | [`Endpoint::poll_upstream`]: commands for the upstreams |
//! | [`Endpoint::handle_committed`] | [`Endpoint::poll_store`]: writes for the store |
//! | [`Endpoint::handle_forward`] | [`Endpoint::poll_forward`]: datagrams for another worker |
//! | [`Endpoint::handle_timeout`] | [`Endpoint::poll_timeout`]: the next deadline |
//!
//! There is no socket, task or clock inside: the worker's tokio loop only
//! moves datagrams, bytes and timers, and every behaviour here is tested
//! with virtual time (`tests.rs`).

mod admin;
mod clash;
pub mod directory;
mod housekeeping;
pub mod moved;
pub mod outage;
mod route;
pub mod script;
#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqttsn_codec::Packet;
use tracing::{debug, info, warn};

pub use directory::{Directory, WorkerId};

use crate::admission::Source;
use crate::failpoint;
use crate::metrics::Metrics;
use crate::options::ServerOptions;
use crate::peer::Peer;
use crate::session::{Outgoing, Persist, Session, SessionConfig, SessionEvent, SessionState};
use crate::store::Write;
use crate::upstream::{Command, ConnectSpec, Event, UpstreamKey};

/// The upstream key of the gateway's own connection (QoS -1 publishes,
/// key figures, broker reachability).
pub const OWN_KEY: UpstreamKey = 0;

/// A datagram ready to send: `len` octets at the front of the buffer
/// given to [`Endpoint::poll_transmit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub to: SocketAddr,
    /// On which link (the DTLS ones are encrypted before they leave).
    pub link: crate::peer::Link,
    /// Its length.
    pub len: usize,
}

/// What one worker hands another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forward {
    /// A datagram that arrived at another worker for a session held here.
    Datagram {
        /// Its source.
        from: SocketAddr,
        /// The link it came on.
        link: crate::peer::Link,
        /// The whole datagram.
        data: Bytes,
        /// How many times it was forwarded already.
        hops: u8,
    },
    /// A publish for the gateway's own connection (held by worker 0).
    Own(Command),
    /// An MQTT-SN datagram for a DTLS peer, for worker 0 (which holds the
    /// DTLS associations) to encrypt and send.
    Seal {
        /// Where to.
        to: SocketAddr,
        /// The datagram.
        data: Bytes,
    },
}

/// The most times a datagram is forwarded between workers (a session that
/// moved while the datagram was on its way).
const MAX_HOPS: u8 = 2;

/// How often expiry and the gauges are looked at.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

pub use crate::activity::Activity;

/// Warnings about bad input per second.
const LOG_BUDGET: u32 = 20;

/// While the store cannot write, the most outputs (datagrams and
/// upstream commands) one session may have waiting for it; over that its
/// sensor's datagrams and its QoS 0 messages are dropped (counted), so a
/// store outage costs bounded memory.
pub const STORE_HELD_MAX: usize = 64;

/// One session and what the endpoint keeps beside it.
#[derive(Debug)]
struct Entry {
    /// Distinguishes this entry from a later one in the same slot.
    uid: u64,
    cid: Arc<str>,
    session: Session,
    addr: Option<Peer>,
    /// `addr` as the store keeps it (empty while unbound).
    addr_bytes: Vec<u8>,
    upstream: Option<UpstreamKey>,
    scheduled: Option<Instant>,
    counted_active: bool,
    /// When a kept (CleanSession false) session ended; it is forgotten
    /// `session_expiry` later unless the sensor connects again.
    ended_at: Option<Instant>,
    /// Outputs waiting for the store to commit what produced them.
    held: VecDeque<Held>,
    /// Messages and octets this session counts in the gateway-wide
    /// buffer total.
    buffered: (usize, usize),
    /// How busy it is.
    activity: Activity,
    /// Its state when last looked at, and since when it is in it.
    state: SessionState,
    since: Instant,
    /// Its broker connection reported the broker unreachable (and is
    /// being retried).
    upstream_down: bool,
    /// Deleted by the operator: forgotten, store included, as soon as
    /// its broker connection is closed.
    forget: bool,
    /// The source its CONNECT came from, where that source's sessions are
    /// counted (see [`crate::admission`]); `None`: not counted (exempt,
    /// or restored from the store).
    source: Option<Source>,
    /// The check of a new address it moved to, until that address proved
    /// it receives there (see [`moved`]).
    gate: Option<Box<moved::Gate>>,
}

impl Entry {
    /// Datagrams and commands waiting for the store.
    fn held_outputs(&self) -> usize {
        self.held.iter().map(|h| h.transmits.len() + h.commands.len()).sum()
    }

    /// The store cannot write and this session has as much waiting for it
    /// as it may: take nothing more from it.
    fn over_store_bound(&self, dir: &Directory) -> bool {
        !self.held.is_empty() && dir.store_failing() && self.held_outputs() >= STORE_HELD_MAX
    }
}

/// A session's outputs held until the store committed `ticket`.
#[derive(Debug)]
struct Held {
    ticket: u64,
    transmits: Vec<Outgoing>,
    commands: Vec<Command>,
}

/// Hot counters, added to the shared metrics once per batch.
#[derive(Debug, Default)]
struct Local {
    datagrams_in: u64,
    datagrams_out: u64,
}

/// This worker's share of the gateway-wide gauges.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Gauges {
    asleep: u64,
    messages: u64,
    bytes: u64,
}

/// Wall-clock time from the monotonic clock: the store keeps when an
/// ended session ended as seconds since the Unix epoch.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    at: Instant,
    wall: u64,
}

impl WallClock {
    /// `now` is `wall` seconds after the Unix epoch.
    pub fn new(now: Instant, wall: u64) -> Self {
        Self { at: now, wall }
    }

    /// Seconds since the Unix epoch at `now` (which may be before the
    /// clock was made).
    pub fn at(&self, now: Instant) -> u64 {
        match now.checked_duration_since(self.at) {
            Some(after) => self.wall + after.as_secs(),
            None => self.wall.saturating_sub(self.at.saturating_duration_since(now).as_secs()),
        }
    }
}

/// The shortest interval between two GWINFO sent to the discovery group.
const GROUP_GWINFO_INTERVAL: Duration = Duration::from_millis(500);

/// The interval of ADVERTISE, to wherever it goes.
fn advertise_every(opts: &ServerOptions) -> Option<Duration> {
    opts.advertise.map(|(_, every)| every).or(opts.multicast.map(|m| m.advertise_every))
}

/// True when two ACLs say the same (a reload that did not change `[acl]`
/// leaves the sessions alone).
fn same_acl(a: Option<&Arc<crate::acl::Acl>>, b: Option<&Arc<crate::acl::Acl>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
        (None, None) => true,
        _ => false,
    }
}

/// A session's address in logs: `-` while it has none.
struct DisplayAddr<'a>(&'a Option<Peer>);

impl std::fmt::Display for DisplayAddr<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(p) => p.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// The sessions of one worker. See the module documentation.
#[derive(Debug)]
pub struct Endpoint {
    cfg: Arc<SessionConfig>,
    opts: Arc<ServerOptions>,
    metrics: Arc<Metrics>,
    dir: Arc<Directory>,
    me: WorkerId,
    clock: WallClock,
    started: Instant,
    persistent_store: bool,
    /// The generation of the live settings in `cfg` and `opts.auth`.
    live_generation: u64,

    /// Boxed: the table grows by doubling, and a slot then costs a
    /// pointer, not a whole session.
    entries: slab::Slab<Box<Entry>>,
    by_cid: HashMap<Arc<str>, usize>,
    by_addr: HashMap<Peer, usize>,
    by_key: HashMap<UpstreamKey, usize>,
    next_key: UpstreamKey,
    next_uid: u64,
    /// Keys for the unpredictable MsgIds of address probes (see [`moved`]).
    probe_keys: std::collections::hash_map::RandomState,
    probe_count: u64,
    timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    unknown_sent: HashMap<Peer, Instant>,
    log_budget: (Instant, u32),

    /// This worker holds the gateway's own connection.
    own: bool,
    own_next_request: u64,
    own_open: bool,
    own_clash: clash::OwnClash,
    /// The broker's outages as the own connection sees them.
    outage: outage::Outage,
    /// Why the broker is unreachable, as last heard.
    outage_reason: String,

    next_ticket: u64,
    /// Sessions with held outputs, by ticket, in order.
    held_order: VecDeque<(u64, usize, u64)>,

    housekeeping_at: Instant,
    advertise_at: Option<Instant>,
    /// When GWINFO last went to the discovery group.
    group_gwinfo_at: Option<Instant>,
    sys_at: Option<Instant>,
    gauges: Gauges,
    local: Local,
    closing: bool,

    transmits: VecDeque<(Peer, Outgoing)>,
    upstream: VecDeque<(UpstreamKey, Command)>,
    writes: VecDeque<Write>,
    forwards: VecDeque<(WorkerId, Forward)>,
    scratch_tx: Vec<Outgoing>,
    scratch_cmd: Vec<Command>,
}

impl Endpoint {
    /// The endpoint of worker `me`. Worker 0 opens the gateway's own
    /// upstream connection at once (a command to poll). `persistent_store`
    /// says whether CleanSession-false sessions are written to a store
    /// (their outputs then wait for [`Endpoint::handle_committed`]).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: Arc<SessionConfig>,
        opts: Arc<ServerOptions>,
        metrics: Arc<Metrics>,
        dir: Arc<Directory>,
        me: WorkerId,
        persistent_store: bool,
        now: Instant,
        clock: WallClock,
    ) -> Self {
        let own = me == 0;
        let mut e = Self {
            advertise_at: advertise_every(&opts).filter(|_| own).map(|every| now + every),
            sys_at: opts.sys_topics.as_ref().filter(|_| own).map(|(_, every)| now + *every),
            cfg,
            opts,
            metrics,
            dir,
            me,
            clock,
            started: now,
            persistent_store,
            live_generation: 0,
            entries: slab::Slab::new(),
            by_cid: HashMap::new(),
            by_addr: HashMap::new(),
            by_key: HashMap::new(),
            next_key: 1,
            next_uid: 1,
            probe_keys: std::collections::hash_map::RandomState::new(),
            probe_count: 0,
            timers: BinaryHeap::new(),
            unknown_sent: HashMap::new(),
            log_budget: (now, 0),
            own,
            own_next_request: 1,
            own_open: false,
            own_clash: clash::OwnClash::default(),
            outage: outage::Outage::default(),
            outage_reason: String::new(),
            next_ticket: 0,
            held_order: VecDeque::new(),
            housekeeping_at: now + HOUSEKEEPING,
            group_gwinfo_at: None,
            gauges: Gauges::default(),
            local: Local::default(),
            closing: false,
            transmits: VecDeque::new(),
            upstream: VecDeque::new(),
            writes: VecDeque::new(),
            forwards: VecDeque::new(),
            scratch_tx: Vec::new(),
            scratch_cmd: Vec::new(),
        };
        if own {
            e.dir.admission().set_limits(e.opts.admission.clone());
            let id = &e.opts.auth.default_identity;
            let spec = ConnectSpec {
                client_id: e.opts.own_client_id.clone(),
                clean_session: true,
                keep_alive: 60,
                will: None,
                username: id.username.clone(),
                password: id.password.clone(),
                client_cert: id.client_cert.clone(),
            };
            e.own_open = true;
            e.upstream.push_back((OWN_KEY, Command::Connect(Box::new(spec))));
        }
        e
    }

    /// Sessions held here.
    pub fn session_count(&self) -> usize {
        self.entries.len()
    }

    /// Upstreams of sessions here still open, and the gateway's own.
    pub fn upstreams_open(&self) -> usize {
        self.by_key.len() + usize::from(self.own_open)
    }

    /// Adds a session restored from the store (see
    /// [`Session::restore`]), bound to its stored address.
    pub fn restore(
        &mut self,
        session: Session,
        addr: Option<Peer>,
        ended_at: Option<Instant>,
        now: Instant,
    ) {
        let cid: Arc<str> = Arc::from(session.client_id());
        if self.by_cid.contains_key(&cid) {
            return;
        }
        let _ = self.dir.claim(&cid, self.me);
        let idx = self.insert(cid, session, now);
        if let Some(e) = self.entries.get_mut(idx) {
            e.ended_at = ended_at;
            e.since = ended_at.unwrap_or(now);
        }
        if let Some(addr) = addr {
            // Counted against its address as if it had just connected
            // (never refused: it was admitted before the restart).
            let ip = addr.addr.ip();
            let mut adm = self.dir.admission();
            let source = (!adm.is_exempt(ip))
                .then(|| Source::of(ip))
                .filter(|src| adm.session_started(*src, now).is_ok());
            drop(adm);
            if let Some(e) = self.entries.get_mut(idx) {
                e.source = source;
            }
            self.bind(idx, addr);
        }
        self.flush(idx, now);
    }

    // ----- inputs -----

    /// A datagram from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &Bytes) {
        self.datagram(now, from, crate::peer::Link::Udp, data, 0);
    }

    /// A datagram decrypted by the DTLS listener
    /// ([`crate::dtls::Associations`], which has checked the ClientId of a
    /// CONNECT or wake-up against the peer's credentials).
    pub fn handle_dtls_datagram(&mut self, now: Instant, from: SocketAddr, data: &Bytes) {
        self.datagram(now, from, crate::peer::Link::Dtls, data, 0);
    }

    /// A datagram from `from` that arrived on the discovery group (worker
    /// 0's group socket): SEARCHGW is answered with GWINFO to the group
    /// (spec 5.4.3: GWINFO is broadcast, so every searcher in range hears
    /// it and stops searching); anything else sent to the group is not for
    /// the gateway and is dropped (other gateways' ADVERTISE and GWINFO,
    /// and this one's own, looped back).
    pub fn handle_group_datagram(&mut self, now: Instant, from: SocketAddr, data: &Bytes) {
        self.local.datagrams_in += 1;
        let Some(group) = self.opts.multicast.map(|m| m.group.addr) else { return };
        match mqttsn_codec::Frame::decode(data).map(|f| f.packet) {
            Ok(Packet::SearchGw { radius }) => {
                debug!(%from, radius, "in via the group: SEARCHGW");
                // One answer on the group reaches every searcher: a burst
                // of SEARCHGW (many sensors powered up at once) gets one.
                let recent = self
                    .group_gwinfo_at
                    .is_some_and(|t| now.saturating_duration_since(t) < GROUP_GWINFO_INTERVAL);
                if self.opts.answer_searchgw && !self.closing && !recent {
                    self.group_gwinfo_at = Some(now);
                    self.gwinfo(Peer::direct(group));
                }
            }
            Ok(p) => debug!(%from, "{:?} via the group ignored", p.msg_type()),
            Err(e) => {
                Metrics::inc(&self.metrics.malformed);
                if self.may_log(now) {
                    warn!(%from, len = data.len(), "malformed datagram on the group dropped: {e}");
                }
            }
        }
    }

    /// Sends GWINFO (without GwAdd: the gateway's own) to `to`.
    pub(super) fn gwinfo(&mut self, to: Peer) {
        debug!(%to, gw_id = self.opts.gateway_id, "GWINFO");
        let info = mqttsn_codec::GwInfo { gw_id: self.opts.gateway_id, gw_addr: &[] };
        self.reply(Packet::GwInfo(info), to);
    }

    /// Something another worker handed over.
    pub fn handle_forward(&mut self, now: Instant, f: Forward) {
        match f {
            Forward::Datagram { from, link, data, hops } => {
                self.datagram(now, from, link, &data, hops)
            }
            Forward::Own(cmd) => {
                if self.own {
                    self.upstream.push_back((OWN_KEY, cmd));
                }
            }
            // The worker's, not the endpoint's (it holds the associations).
            Forward::Seal { .. } => Metrics::inc(&self.metrics.forwards_dropped),
        }
    }

    /// An event from an upstream.
    pub fn handle_upstream(&mut self, now: Instant, key: UpstreamKey, event: Event) {
        if key == OWN_KEY {
            return self.own_event(event, now);
        }
        let Some(&idx) = self.by_key.get(&key) else {
            debug!(upstream = key, "event from a finished upstream ignored: {event:?}");
            return;
        };
        let Some(e) = self.entries.get_mut(idx) else { return };
        let cid = e.cid.clone();
        debug!(client_id = %cid, upstream = key, "event: {event:?}");
        match &event {
            Event::Connected { .. } => {
                e.upstream_down = false;
                Metrics::inc(&self.metrics.upstream_connects)
            }
            Event::Unavailable { reason } => {
                e.upstream_down = true;
                Metrics::inc(&self.metrics.upstream_outages);
                // The outage itself is reported once, by the own connection.
                debug!(client_id = %cid, "broker unavailable: {reason}");
            }
            Event::Refused { code } => {
                warn!(client_id = %cid, "broker refused the connection: code {code}")
            }
            _ => {}
        }
        let closed = matches!(event, Event::Closed | Event::Refused { .. });
        if closed {
            e.upstream = None;
            e.upstream_down = false;
            self.by_key.remove(&key);
        }
        e.session.handle_upstream(event, now);
        self.flush(idx, now);
    }

    fn own_event(&mut self, event: Event, now: Instant) {
        use outage::{human, Report};
        match event {
            Event::Connected { .. } => {
                debug!(client_id = %self.opts.own_client_id, "the gateway's own connection is up");
                self.own_clash.up(now);
                // The state first: what the log says is then visible.
                Metrics::set(&self.metrics.broker_up, 1);
                self.dir.set_broker(true, false);
                match self.outage.up(now) {
                    Some(Report::Ended(d)) => {
                        info!(
                            outage_secs = d.as_secs(),
                            "broker reachable again after {}",
                            human(d)
                        )
                    }
                    Some(_) => info!("broker reachable"),
                    None => {}
                }
            }
            Event::Unavailable { reason } => {
                if self.own_clash.closed_quickly(now, &self.opts.own_client_id, &reason) {
                    // Taken over: the broker is there, sensors are admitted.
                    self.dir.set_broker(false, false);
                    return;
                }
                self.broker_unreachable(now, reason);
            }
            Event::Refused { code } => {
                warn!("broker refused the gateway's own connection: code {code}");
                Metrics::set(&self.metrics.broker_up, 0);
                self.dir.set_broker(false, self.dir.broker_down());
                self.own_open = false;
            }
            Event::Closed => self.own_open = false,
            _ => {}
        }
    }

    /// The own connection says the broker is unreachable since `since`.
    fn broker_unreachable(&mut self, since: Instant, reason: String) {
        Metrics::set(&self.metrics.broker_up, 0);
        self.dir.set_broker(false, true);
        if self.outage.down(since).is_some() {
            Metrics::inc(&self.metrics.broker_outages);
            warn!("broker unreachable: {reason}");
        }
        self.outage_reason = reason;
    }

    /// Once a minute while the broker is unreachable: how long so far.
    fn report_outage(&mut self, now: Instant) {
        if let Some((since, reason)) = self.own_clash.suspect_expired(now) {
            self.broker_unreachable(since, reason);
        }
        if let Some(outage::Report::Ongoing(d)) = self.outage.tick(now) {
            warn!(
                outage_secs = d.as_secs(),
                "broker still unreachable after {}: {}",
                outage::human(d),
                self.outage_reason
            );
        }
    }

    /// The store committed everything up to `ticket`: the outputs waiting
    /// for it go out, in order.
    pub fn handle_committed(&mut self, now: Instant, ticket: u64) {
        while self.held_order.front().is_some_and(|(t, _, _)| *t <= ticket) {
            let Some((t, idx, uid)) = self.held_order.pop_front() else { break };
            let Some(e) = self.entries.get_mut(idx).filter(|e| e.uid == uid) else { continue };
            let Some(pos) = e.held.iter().position(|h| h.ticket == t) else { continue };
            let Some(mut held) = e.held.remove(pos) else { continue };
            if e.session.is_sleeping() {
                if held.commands.iter().any(|c| matches!(c, Command::Ack(_))) {
                    failpoint::hit("stored-before-ack");
                }
                if held.transmits.iter().any(|o| matches!(o, Outgoing::Publish { .. })) {
                    failpoint::hit("mid-flush");
                }
            }
            self.deliver(idx, &mut held.transmits, &mut held.commands);
            self.forget_if_over(idx);
        }
        let _ = now;
    }

    /// Time has reached [`Endpoint::poll_timeout`] (or later).
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&Reverse((t, idx, uid))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(e) = self.entries.get_mut(idx).filter(|e| e.uid == uid) else { continue };
            if e.scheduled != Some(t) {
                continue;
            }
            e.scheduled = None;
            e.session.handle_timeout(now);
            self.flush(idx, now);
        }
        if now >= self.housekeeping_at {
            self.housekeeping_at = now + HOUSEKEEPING;
            self.expire_sessions(now);
            self.forget_unknown_senders(now);
            self.refresh_gauges();
            if self.own {
                self.report_outage(now);
            }
            for (_, e) in self.entries.iter_mut() {
                if e.held.is_empty() {
                    e.session.shrink_idle();
                    if e.held.capacity() > 0 {
                        e.held = VecDeque::new();
                    }
                }
            }
        }
        if let (Some(at), Some(every)) = (self.advertise_at, advertise_every(&self.opts)) {
            if now >= at {
                self.advertise_at = Some(now + every);
                // Paused while the broker is unreachable.
                if self.dir.broker_up() && !self.closing {
                    let duration = u16::try_from(every.as_secs()).unwrap_or(u16::MAX);
                    let adv = mqttsn_codec::Advertise { gw_id: self.opts.gateway_id, duration };
                    let to = self.opts.advertise.map(|(to, _)| to);
                    let group = self.opts.multicast.map(|m| m.group.addr);
                    for to in [to, group].into_iter().flatten() {
                        debug!(%to, gw_id = adv.gw_id, duration, "ADVERTISE");
                        self.reply(Packet::Advertise(adv), Peer::direct(to));
                    }
                }
            }
        }
        if let (Some(at), Some((_, every))) = (self.sys_at, self.opts.sys_topics.clone()) {
            if now >= at {
                self.sys_at = Some(now + every);
                self.publish_sys(now);
            }
        }
    }

    /// Closes every session gracefully: sensors get DISCONNECT, upstream
    /// sessions end with DISCONNECT (no will fires). The driver keeps
    /// running until [`Endpoint::upstreams_open`] is zero (or its grace
    /// runs out).
    pub fn shutdown(&mut self, now: Instant) {
        self.closing = true;
        info!(sessions = self.entries.len(), "shutting down");
        let mut sends = Vec::new();
        for (_, e) in self.entries.iter() {
            if e.session.is_active() {
                if let Some(peer) = &e.addr {
                    sends.push(peer.clone());
                }
            }
            if let Some(key) = e.upstream {
                self.upstream.push_back((key, Command::Disconnect));
            }
        }
        for peer in sends {
            self.reply(Packet::Disconnect(None), peer);
        }
        if self.own_open {
            self.upstream.push_back((OWN_KEY, Command::Disconnect));
        }
        self.flush_metrics();
        let _ = now;
    }

    // ----- outputs -----

    /// The next datagram, encoded into `buf`.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        while let Some((peer, out)) = self.transmits.pop_front() {
            debug!(%peer, "out: {}", out.packet());
            match peer.encode(out.packet(), buf) {
                Ok(len) => {
                    self.local.datagrams_out += 1;
                    return Some(Transmit { to: peer.addr, link: peer.link, len });
                }
                Err(e) => warn!(%peer, "cannot encode {:?}: {e}", out.packet().msg_type()),
            }
        }
        None
    }

    /// The next command for an upstream.
    pub fn poll_upstream(&mut self) -> Option<(UpstreamKey, Command)> {
        self.upstream.pop_front()
    }

    /// The next write for the store.
    pub fn poll_store(&mut self) -> Option<Write> {
        self.writes.pop_front()
    }

    /// The next hand-over to another worker.
    pub fn poll_forward(&mut self) -> Option<(WorkerId, Forward)> {
        self.forwards.pop_front()
    }

    /// When [`Endpoint::handle_timeout`] must be called next.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        // Entries of sessions that were rescheduled or removed are dropped
        // lazily, here and in `handle_timeout`.
        let mut next = Some(self.housekeeping_at);
        while let Some(&Reverse((t, idx, uid))) = self.timers.peek() {
            match self.entries.get(idx) {
                Some(e) if e.uid == uid && e.scheduled == Some(t) => {
                    next = next.map(|n| n.min(t));
                    break;
                }
                _ => {
                    self.timers.pop();
                }
            }
        }
        for t in [self.advertise_at, self.sys_at].into_iter().flatten() {
            next = next.map(|n| n.min(t));
        }
        next
    }

    /// Adds the counters kept locally to the shared metrics (once per
    /// batch of inputs).
    pub fn flush_metrics(&mut self) {
        let l = std::mem::take(&mut self.local);
        if l.datagrams_in > 0 {
            Metrics::add(&self.metrics.datagrams_in, l.datagrams_in);
        }
        if l.datagrams_out > 0 {
            Metrics::add(&self.metrics.datagrams_out, l.datagrams_out);
        }
    }

    // ----- internals -----

    /// Takes reloaded settings (SIGHUP) for the connections that follow.
    fn refresh_settings(&mut self) {
        let Some(live) = &self.opts.live else { return };
        if live.generation() == self.live_generation {
            return;
        }
        let Some((generation, current)) = live.get() else { return };
        self.live_generation = generation;
        if !same_acl(self.cfg.acl.as_ref(), current.session.acl.as_ref()) {
            // The sensors already there check against the new ACL too.
            for (_, e) in self.entries.iter_mut() {
                e.session.set_acl(current.session.acl.as_ref());
            }
        }
        self.cfg = current.session;
        if self.own {
            // One worker swaps the shared bounds.
            self.dir.admission().set_limits(current.admission.clone());
        }
        let mut opts = (*self.opts).clone();
        opts.auth = current.auth;
        opts.admission = current.admission;
        self.opts = Arc::new(opts);
        debug!(worker = self.me, generation, "reloaded settings taken");
    }

    fn reply(&mut self, p: Packet<'static>, to: Peer) {
        self.transmits.push_back((to, Outgoing::Packet(p)));
    }

    /// A reply to a source that has not proven it receives at its address
    /// (GWINFO, a refusing CONNACK, DISCONNECT to an unknown sender): sent
    /// only if it is no longer than the `request_len` octets that caused
    /// it and the source's and the gateway's reply budgets allow (see
    /// [`crate::admission`]); else dropped and counted. Exempt sources are
    /// always answered.
    fn reply_unverified(&mut self, now: Instant, p: Packet<'static>, to: Peer, request_len: usize) {
        let mut dir = self.dir.admission();
        if !dir.is_exempt(to.addr.ip()) {
            let mut buf = [0u8; 512];
            let fits = to.encode(p, &mut buf).is_ok_and(|len| len <= request_len);
            if !fits || !dir.reply(Source::of(to.addr.ip()), now) {
                drop(dir);
                Metrics::inc(&self.metrics.replies_suppressed);
                debug!(%to, "{} not sent: reply budget spent", p.msg_type());
                return;
            }
        }
        drop(dir);
        self.reply(p, to);
    }

    /// At most [`LOG_BUDGET`] warnings a second about bad input.
    fn may_log(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.log_budget.0) >= Duration::from_secs(1) {
            self.log_budget = (now, 0);
        }
        self.log_budget.1 += 1;
        self.log_budget.1 <= LOG_BUDGET
    }

    /// Moves a session's outputs out: events to the counters, datagrams
    /// and commands to the queues, its next deadline to the timer heap.
    /// With a store, a CleanSession-false session's changed state is
    /// written first, and its datagrams and commands wait until the write
    /// is committed (see [`Endpoint::handle_committed`]).
    fn flush(&mut self, idx: usize, now: Instant) {
        let Some(e) = self.entries.get_mut(idx) else { return };
        let mut ended = false;
        // Events first: counters are up to date before anything they
        // count can be seen outside (a will fired by the Abort below).
        while let Some(ev) = e.session.poll_event() {
            match ev {
                SessionEvent::Connected => {
                    if !e.counted_active {
                        e.counted_active = true;
                        Metrics::inc(&self.metrics.sessions_active);
                    }
                    info!(
                        client_id = %e.cid,
                        addr = %DisplayAddr(&e.addr),
                        clean_session = !e.session.persistent(),
                        keepalive_secs = e.session.keepalive().as_secs(),
                        "sensor connected"
                    );
                }
                SessionEvent::Dropped(reason) => self.metrics.dropped(reason),
                SessionEvent::Lost(why) => {
                    Metrics::inc(&self.metrics.sensors_lost);
                    info!(
                        client_id = %e.cid,
                        reason = why.as_str(),
                        "sensor lost ({}): will published",
                        why.as_str()
                    );
                }
                SessionEvent::Asleep { duration } => {
                    info!(client_id = %e.cid, sleep_secs = duration.as_secs(), "sensor asleep")
                }
                SessionEvent::Awake => {
                    info!(client_id = %e.cid, addr = %DisplayAddr(&e.addr), "sensor awake")
                }
                SessionEvent::Disconnected => info!(client_id = %e.cid, "sensor disconnected"),
                SessionEvent::Stalled => info!(
                    client_id = %e.cid,
                    "retransmissions to the sensor exhausted: paused until it is heard from"
                ),
                SessionEvent::Ended => ended = true,
                SessionEvent::Published { qos, latency } => self.metrics.published(qos, latency),
                SessionEvent::Delivered { qos } => self.metrics.delivered(qos),
                SessionEvent::Retransmitted => Metrics::inc(&self.metrics.retransmissions),
                SessionEvent::LateDuplicate => Metrics::inc(&self.metrics.qos2_late_duplicates),
                SessionEvent::AclRefused(action) => {
                    Metrics::inc(&self.metrics.acl_refused[action.index()]);
                    debug!(client_id = %e.cid, action = action.as_str(), "refused by the ACL");
                }
            }
        }
        let persist: Option<Persist> = if self.persistent_store {
            let wall = self.clock.at(now);
            let addr: &[u8] = if e.session.persistent() { &e.addr_bytes } else { &[] };
            e.session.take_persist(wall, addr)
        } else {
            None
        };
        let mut transmits = std::mem::take(&mut self.scratch_tx);
        let mut commands = std::mem::take(&mut self.scratch_cmd);
        transmits.extend(std::iter::from_fn(|| e.session.poll_transmit()));
        commands.extend(std::iter::from_fn(|| e.session.poll_upstream()));
        let hold = persist.as_ref().is_some_and(|p| p.hold) || !e.held.is_empty();
        let ticket = persist.map(|persist| {
            self.next_ticket += 1;
            let ticket = self.next_ticket;
            self.writes.push_back(Write {
                worker: self.me,
                ticket,
                client_id: e.cid.clone(),
                persist,
            });
            ticket
        });
        if hold {
            let ticket =
                ticket.unwrap_or_else(|| e.held.back().map_or(self.next_ticket, |h| h.ticket));
            if self.dir.store_failing() {
                // The wait may be long: a held payload must not keep the
                // whole receive buffer it was sliced from.
                for c in commands.iter_mut() {
                    if let Command::Publish { payload, .. } = c {
                        *payload = Bytes::copy_from_slice(payload);
                    }
                }
                if e.over_store_bound(&self.dir) {
                    let before = transmits.len();
                    transmits.retain(|o| {
                        !matches!(o, Outgoing::Publish { qos: mqttsn_codec::QoS::AtMostOnce, .. })
                    });
                    let n = (before - transmits.len()) as u64;
                    Metrics::add(&self.metrics.store_refused_datagrams, n);
                }
            }
            if !transmits.is_empty() || !commands.is_empty() {
                match e.held.back_mut() {
                    Some(h) if h.ticket == ticket => {
                        h.transmits.append(&mut transmits);
                        h.commands.append(&mut commands);
                    }
                    _ => {
                        e.held.push_back(Held {
                            ticket,
                            transmits: std::mem::take(&mut transmits),
                            commands: std::mem::take(&mut commands),
                        });
                        self.held_order.push_back((ticket, idx, e.uid));
                    }
                }
            }
        } else if !transmits.is_empty() || !commands.is_empty() {
            self.deliver(idx, &mut transmits, &mut commands);
        }
        self.scratch_tx = transmits;
        self.scratch_cmd = commands;
        let Some(e) = self.entries.get_mut(idx) else { return };
        let state = e.session.state();
        if state != e.state {
            let connecting = SessionState::Connecting;
            if (state == connecting) != (e.state == connecting) {
                self.dir.set_connecting(state == connecting);
            }
            e.state = state;
            e.since = now;
        }
        if e.counted_active && !e.session.is_active() {
            e.counted_active = false;
            Metrics::dec(&self.metrics.sessions_active);
        }
        let buffered = e.session.buffered();
        let before = std::mem::replace(&mut e.buffered, buffered);
        self.cfg.buffer_total.update(before, buffered);
        if ended || e.session.is_ended() {
            // The session is over: its address no longer reaches it.
            self.end_check(idx);
            let Some(e) = self.entries.get_mut(idx) else { return };
            if let Some(addr) = e.addr.take() {
                e.addr_bytes.clear();
                if self.by_addr.get(&addr) == Some(&idx) {
                    self.by_addr.remove(&addr);
                    self.dir.unbind_addr(&addr, self.me);
                }
            }
            if self.forget_if_over(idx) {
                return;
            }
            let Some(e) = self.entries.get_mut(idx) else { return };
            if e.ended_at.is_none() {
                e.ended_at = Some(now);
            }
        }
        let Some(e) = self.entries.get_mut(idx) else { return };
        if let Some(t) = e.session.poll_timeout() {
            if e.scheduled.is_none_or(|s| t < s) {
                e.scheduled = Some(t);
                self.timers.push(Reverse((t, idx, e.uid)));
            }
        }
        // A session that is rarely busy gives back the capacity its step
        // needed at once; a busy one keeps it (no allocation per message).
        if e.activity.step(now) && e.held.is_empty() {
            e.session.shrink_idle();
        }
    }

    /// Forgets an ended CleanSession-true session (or one the operator
    /// deleted) once nothing of it is left to send. True when it is gone.
    fn forget_if_over(&mut self, idx: usize) -> bool {
        let Some(e) = self.entries.get(idx) else { return true };
        if e.session.is_ended()
            && (!e.session.persistent() || e.forget)
            && e.upstream.is_none()
            && e.held.is_empty()
        {
            if let Some(e) = self.remove(idx) {
                if e.session.persistent() {
                    self.unstore(e.cid);
                }
            }
            return true;
        }
        false
    }

    /// Removes a forgotten CleanSession-false session from the store.
    fn unstore(&mut self, cid: Arc<str>) {
        if !self.persistent_store {
            return;
        }
        self.next_ticket += 1;
        let persist = Persist { remove: true, ..Default::default() };
        self.writes.push_back(Write {
            worker: self.me,
            ticket: self.next_ticket,
            client_id: cid,
            persist,
        });
    }

    /// Sends a session's datagrams to its sensor and its commands to its
    /// upstream (started on its first Connect).
    fn deliver(&mut self, idx: usize, transmits: &mut Vec<Outgoing>, commands: &mut Vec<Command>) {
        let Some(e) = self.entries.get_mut(idx) else {
            transmits.clear();
            commands.clear();
            return;
        };
        if e.gate.is_some() {
            self.deliver_checked(idx, transmits);
        } else if let Some(peer) = &e.addr {
            self.transmits.extend(transmits.drain(..).map(|o| (peer.clone(), o)));
        } else {
            transmits.clear();
        }
        let Some(e) = self.entries.get_mut(idx) else { return commands.clear() };
        for cmd in commands.drain(..) {
            let key = match e.upstream {
                Some(key) => key,
                None => {
                    if !matches!(cmd, Command::Connect(_) | Command::Restore { .. }) {
                        // Nothing to close or acknowledge without a connection.
                        continue;
                    }
                    let key = self.next_key;
                    self.next_key += 1;
                    self.by_key.insert(key, idx);
                    e.upstream = Some(key);
                    key
                }
            };
            debug!(client_id = %e.cid, upstream = key, "command: {cmd:?}");
            self.upstream.push_back((key, cmd));
        }
    }
}
