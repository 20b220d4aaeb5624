//! The UDP dispatcher: the thin tokio driver around the session cores.
//!
//! One task owns the socket and every [`Session`]. A datagram is decoded
//! once, routed by source address (CONNECT by ClientId), and handed to its
//! session with the current time; the session's outputs are then flushed:
//! datagrams to the socket, commands to the session's upstream task, events
//! to the counters, and its next deadline to the timer heap. Upstream
//! events come back on one channel, tagged with the upstream's key.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mqttsn_codec::{Frame, Packet};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::auth::AuthTable;
use crate::cidr::Cidr;
use crate::failpoint;
use crate::metrics::Metrics;
use crate::peer::Peer;
use crate::session::{check_connect, Outgoing, Session, SessionConfig, SessionEvent};
use crate::store::{wall_now, Store, StoreWriter, Write};
use crate::upstream::{Command, ConnectSpec, Event};

/// Identifies one upstream connection task; never reused, so events from a
/// finished upstream cannot reach a later one.
pub type UpstreamKey = u64;

/// Starts upstream sessions: one per sensor session, fed with [`Command`]s,
/// reporting [`Event`]s tagged with its key.
pub trait Upstreams: Send + 'static {
    /// Starts the upstream for `key`. It runs until it reports
    /// [`Event::Closed`] (after [`Command::Disconnect`] or
    /// [`Command::Abort`]) or [`Event::Refused`].
    fn start(
        &self,
        key: UpstreamKey,
        events: mpsc::UnboundedSender<(UpstreamKey, Event)>,
    ) -> mpsc::UnboundedSender<Command>;
}

/// Settings of the dispatcher itself.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The shortest interval between two unsolicited DISCONNECTs to one
    /// address.
    pub unknown_disconnect_interval: Duration,
    /// How long a graceful shutdown waits for upstream sessions to close.
    pub shutdown_grace: Duration,
    /// The most sessions kept at once (connected or persistent); a CONNECT
    /// for a new ClientId beyond it gets CONNACK congestion. `None`: no
    /// limit but memory.
    pub max_sessions: Option<usize>,
    /// The GwId in ADVERTISE and GWINFO.
    pub gateway_id: u8,
    /// Answer SEARCHGW with GWINFO (unicast to the searcher).
    pub answer_searchgw: bool,
    /// Send ADVERTISE to this (broadcast or multicast) address at this
    /// interval, while the broker is reachable.
    pub advertise: Option<(SocketAddr, Duration)>,
    /// QoS -1 PUBLISH without a connection (spec 6.8): `None` refuses it;
    /// `Some(list)` accepts it from sources in the list (empty: any).
    pub qos_minus_one: Option<Vec<Cidr>>,
    /// The ClientId of the gateway's own upstream connection (QoS -1
    /// publishes, broker reachability).
    pub own_client_id: String,
    /// Who may connect, and as whom upstream.
    pub auth: Arc<AuthTable>,
    /// How long the gateway keeps an ended CleanSession-false session
    /// (its registrations and subscriptions) for the sensor's return;
    /// `None`: for ever. The broker keeps its own session regardless.
    pub session_expiry: Option<Duration>,
    /// Publish key figures, retained, under this topic prefix at this
    /// interval (on the gateway's own upstream connection).
    pub sys_topics: Option<(String, Duration)>,
    /// The session store: CleanSession-false sessions are kept here and
    /// restored at start. `None`: in memory only.
    pub store_path: Option<std::path::PathBuf>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            unknown_disconnect_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(5),
            max_sessions: None,
            gateway_id: 1,
            answer_searchgw: true,
            advertise: None,
            qos_minus_one: None,
            own_client_id: "mqttsn-gateway".into(),
            auth: Arc::new(AuthTable::open()),
            session_expiry: Some(Duration::from_secs(24 * 3600)),
            sys_topics: None,
            store_path: None,
        }
    }
}

struct Entry {
    session: Session,
    addr: Option<Peer>,
    upstream: Option<(UpstreamKey, mpsc::UnboundedSender<Command>)>,
    scheduled: Option<Instant>,
    counted_active: bool,
    /// When a kept (CleanSession false) session ended; it is forgotten
    /// `session_expiry` later unless the sensor connects again.
    ended_at: Option<Instant>,
    /// Outputs waiting for the store to commit what produced them, oldest
    /// first.
    held: VecDeque<Held>,
    /// Messages and octets this session counts in the gateway-wide buffer
    /// total.
    buffered: (usize, usize),
}

impl Entry {
    fn new(session: Session) -> Self {
        Self {
            session,
            addr: None,
            upstream: None,
            scheduled: None,
            counted_active: false,
            ended_at: None,
            held: VecDeque::new(),
            buffered: (0, 0),
        }
    }
}

/// A session's outputs held until the store committed `ticket`.
struct Held {
    ticket: u64,
    transmits: Vec<Outgoing>,
    commands: Vec<Command>,
}

/// The dispatcher state.
struct Server<U> {
    socket: Arc<UdpSocket>,
    upstreams: U,
    cfg: Arc<SessionConfig>,
    opts: ServerOptions,
    metrics: Arc<Metrics>,
    sessions: HashMap<Arc<str>, Entry>,
    by_addr: HashMap<Peer, Arc<str>>,
    by_key: HashMap<UpstreamKey, Arc<str>>,
    next_key: UpstreamKey,
    timers: BinaryHeap<Reverse<(Instant, Arc<str>)>>,
    events_tx: mpsc::UnboundedSender<(UpstreamKey, Event)>,
    unknown_sent: HashMap<Peer, Instant>,
    log_budget: (Instant, u32),
    out: Vec<u8>,
    /// The gateway's own upstream connection.
    own: mpsc::UnboundedSender<Command>,
    own_next_request: u64,
    /// The broker answered the gateway's own connection last time.
    broker_up: bool,
    /// The gateway's own connection found the broker unreachable (unknown
    /// at start counts as reachable).
    broker_down: bool,
    /// The session store's writer, when there is a store.
    store: Option<StoreWriter>,
    /// The last ticket handed to the store.
    next_ticket: u64,
    /// Sessions with held outputs, by ticket, in order.
    held_order: VecDeque<(u64, Arc<str>)>,
    /// Reused for a session's outputs.
    scratch_tx: Vec<Outgoing>,
    scratch_cmd: Vec<Command>,
}

/// The upstream key of the gateway's own connection.
const OWN_KEY: UpstreamKey = 0;

/// Runs the gateway on `socket` until `shutdown` completes, then closes
/// every session gracefully: sensors get DISCONNECT, upstream sessions end
/// with DISCONNECT (no will fires).
pub async fn run<U: Upstreams>(
    socket: UdpSocket,
    upstreams: U,
    cfg: Arc<SessionConfig>,
    opts: ServerOptions,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let own = upstreams.start(OWN_KEY, events_tx.clone());
    let _ = own.send(Command::Connect(ConnectSpec {
        client_id: opts.own_client_id.clone(),
        clean_session: true,
        keep_alive: 60,
        will: None,
        username: opts.auth.default_identity.username.clone(),
        password: opts.auth.default_identity.password.clone(),
        client_cert: opts.auth.default_identity.client_cert.clone(),
    }));
    if opts.advertise.is_some() {
        socket.set_broadcast(true)?;
    }
    let mut advertise = opts.advertise.map(|(_, every)| {
        let mut i = tokio::time::interval(every);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    let mut gauges = tokio::time::interval(Duration::from_secs(1));
    gauges.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sys = opts.sys_topics.as_ref().map(|(_, every)| {
        let mut i = tokio::time::interval(*every);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    let started = Instant::now();
    let (store, mut store_done, restored) = match &opts.store_path {
        None => (None, None, Vec::new()),
        Some(path) => {
            let opened = Store::open(path).map_err(std::io::Error::other)?;
            if let Some((aside, why)) = &opened.moved_aside {
                error!(
                    "the session store {} could not be read ({why}); it was moved to {} and a \
                     new one started: sessions from before are not restored",
                    path.display(),
                    aside.display()
                );
            }
            let restored = restore_sessions(&opened, &cfg, path);
            let (writer, done) = opened.store.start_writer(metrics.clone());
            (Some(writer), Some(done), restored)
        }
    };
    let mut server = Server {
        socket: Arc::new(socket),
        upstreams,
        cfg,
        opts,
        metrics,
        sessions: HashMap::new(),
        by_addr: HashMap::new(),
        by_key: HashMap::new(),
        next_key: 1,
        timers: BinaryHeap::new(),
        events_tx,
        unknown_sent: HashMap::new(),
        log_budget: (Instant::now(), 0),
        out: vec![0u8; 65_536],
        own,
        own_next_request: 1,
        broker_up: false,
        broker_down: false,
        store,
        next_ticket: 0,
        held_order: VecDeque::new(),
        scratch_tx: Vec::new(),
        scratch_cmd: Vec::new(),
    };
    if !restored.is_empty() {
        info!(sessions = restored.len(), "sessions restored from the store");
    }
    for (session, addr, ended_at) in restored {
        let cid: Arc<str> = Arc::from(session.client_id());
        let mut entry = Entry::new(session);
        entry.ended_at = ended_at;
        server.sessions.insert(cid.clone(), entry);
        if let Some(addr) = addr {
            server.bind(&cid, addr);
        }
        server.flush(&cid).await;
    }
    let mut buf = vec![0u8; 65_536];
    tokio::pin!(shutdown);
    loop {
        let next_timer = server.timers.peek().map(|Reverse((t, _))| *t);
        tokio::select! {
            received = server.socket.recv_from(&mut buf) => match received {
                Ok((n, from)) => {
                    let datagram = buf.get(..n).unwrap_or_default();
                    server.datagram(datagram, from).await;
                }
                // ICMP port unreachable and the like surface here on some
                // systems; they concern one peer, not the gateway.
                Err(e) => debug!("recv_from: {e}"),
            },
            Some((key, event)) = events_rx.recv() => server.upstream_event(key, event).await,
            Some(ticket) = async {
                match store_done.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => server.committed(ticket).await,
            () = sleep_until_opt(next_timer) => server.timers_due().await,
            _ = async {
                match advertise.as_mut() {
                    Some(i) => i.tick().await,
                    None => std::future::pending().await,
                }
            } => server.advertise().await,
            _ = gauges.tick() => server.refresh_gauges(),
            _ = async {
                match sys.as_mut() {
                    Some(i) => i.tick().await,
                    None => std::future::pending().await,
                }
            } => server.publish_sys(started),
            () = &mut shutdown => break,
        }
    }
    server.shutdown(&mut events_rx).await;
    Ok(())
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

impl<U: Upstreams> Server<U> {
    async fn datagram(&mut self, datagram: &[u8], from: SocketAddr) {
        Metrics::inc(&self.metrics.datagrams_in);
        let now = Instant::now();
        let frame = match Frame::decode(datagram) {
            Ok(f) => f,
            Err(e) => {
                Metrics::inc(&self.metrics.malformed);
                if self.may_log(now) {
                    warn!(%from, len = datagram.len(), "malformed datagram dropped: {e}");
                }
                return;
            }
        };
        debug!(%from, "in: {frame}");
        let from = match frame.forwarder {
            None => Peer::direct(from),
            Some(f) => Peer::forwarded(from, f.node_id),
        };
        match frame.packet {
            Packet::Connect(c) => {
                if let Err(rc) = check_connect(&c, &self.cfg) {
                    Metrics::inc(&self.metrics.connects_refused);
                    if self.may_log(now) {
                        warn!(%from, "CONNECT refused: {rc}");
                    }
                    debug!(%from, "out: CONNACK {rc}");
                    self.send_to(Packet::ConnAck(rc), &from).await;
                    return;
                }
                let Ok(client_id) = std::str::from_utf8(c.client_id) else { return };
                let identity = match self.opts.auth.check(client_id, from.addr.ip()) {
                    Ok(identity) => identity,
                    Err(why) => {
                        Metrics::inc(&self.metrics.connects_refused);
                        if self.may_log(now) {
                            warn!(%from, client_id, "CONNECT refused: {}", why.as_str());
                        }
                        let rc = mqttsn_codec::ReturnCode::NotSupported;
                        self.send_to(Packet::ConnAck(rc), &from).await;
                        return;
                    }
                };
                if self.broker_down {
                    // Try again later: the broker is unreachable.
                    let rc = mqttsn_codec::ReturnCode::Congestion;
                    self.send_to(Packet::ConnAck(rc), &from).await;
                    return;
                }
                let full = self.opts.max_sessions.is_some_and(|max| self.sessions.len() >= max);
                if full && !self.sessions.contains_key(client_id) {
                    Metrics::inc(&self.metrics.connects_refused);
                    if self.may_log(now) {
                        warn!(%from, client_id, "CONNECT refused: session limit reached");
                    }
                    self.send_to(Packet::ConnAck(mqttsn_codec::ReturnCode::Congestion), &from)
                        .await;
                    return;
                }
                let cid = self.attach(client_id, from.clone(), now.into_std());
                if let Some(entry) = self.sessions.get_mut(&cid) {
                    entry.session.set_identity(identity);
                    entry.session.handle_connect(&c, now.into_std());
                }
                self.flush(&cid).await;
            }
            packet => {
                // A sleeping sensor that wakes from a new address (NAT
                // rebinding, NB-IoT) names itself in PINGREQ.
                if let Packet::PingReq(Some(id)) = &packet {
                    let auth = &self.opts.auth;
                    let ip = from.addr.ip();
                    let sleeper = std::str::from_utf8(id)
                        .ok()
                        .filter(|id| auth.check(id, ip).is_ok())
                        .and_then(|id| self.sessions.get_key_value(id))
                        .filter(|(_, e)| e.session.is_sleeping())
                        .map(|(k, _)| k.clone());
                    if let Some(cid) = sleeper {
                        self.bind(&cid, from.clone());
                    }
                }
                let Some(cid) = self.by_addr.get(&from).cloned() else {
                    return self.unknown_sender(&packet, from, now).await;
                };
                if let Some(entry) = self.sessions.get_mut(&cid) {
                    entry.session.handle_packet(&packet, now.into_std());
                    if entry.session.is_sleeping()
                        && matches!(packet, Packet::PubAck(_) | Packet::PubComp(_))
                    {
                        failpoint::hit("acked-before-delete");
                    }
                }
                self.flush(&cid).await;
            }
        }
    }

    /// Finds or makes the session of `client_id` and binds it to `from`.
    fn attach(&mut self, client_id: &str, from: Peer, now: std::time::Instant) -> Arc<str> {
        let cid: Arc<str> = match self.sessions.get_key_value(client_id) {
            Some((k, _)) => k.clone(),
            None => {
                let cid: Arc<str> = Arc::from(client_id);
                let session = Session::new(self.cfg.clone(), client_id, now);
                self.sessions.insert(cid.clone(), Entry::new(session));
                cid
            }
        };
        if let Some(entry) = self.sessions.get_mut(&cid) {
            entry.ended_at = None;
        }
        self.bind(&cid, from);
        cid
    }

    /// Binds `from` to the session `cid`: a session has one address, an
    /// address one session.
    fn bind(&mut self, cid: &Arc<str>, from: Peer) {
        // The address may belong to another session (a NAT reused it).
        if let Some(other) = self.by_addr.insert(from.clone(), cid.clone()) {
            if other != *cid {
                if let Some(e) = self.sessions.get_mut(&other) {
                    e.addr = None;
                }
            }
        }
        if let Some(entry) = self.sessions.get_mut(cid) {
            if let Some(old) = entry.addr.replace(from.clone()) {
                if old != from {
                    // A takeover: the old address hears nothing more.
                    if self.by_addr.get(&old) == Some(cid) {
                        self.by_addr.remove(&old);
                    }
                    Metrics::inc(&self.metrics.takeovers);
                    info!(client_id = %cid, %old, new = %from, "session moved to a new address");
                }
            }
        }
    }

    /// A datagram from an address without a session: an unsolicited
    /// DISCONNECT (rate-limited per address) tells a sensor that missed a
    /// gateway restart or a NAT rebinding to connect again.
    async fn unknown_sender(&mut self, packet: &Packet<'_>, from: Peer, now: Instant) {
        match packet {
            Packet::SearchGw { .. } => {
                if self.opts.answer_searchgw {
                    let info = Packet::GwInfo(mqttsn_codec::GwInfo {
                        gw_id: self.opts.gateway_id,
                        gw_addr: &[],
                    });
                    self.send_to(info, &from).await;
                }
                return;
            }
            Packet::Advertise(_) | Packet::GwInfo(_) => return,
            Packet::Publish(p) if p.qos == mqttsn_codec::QoS::NoSession => {
                return self.qos_minus_one(p, &from, now);
            }
            _ => {}
        }
        Metrics::inc(&self.metrics.unknown_sender);
        if let Some(last) = self.unknown_sent.get(&from) {
            if now.duration_since(*last) < self.opts.unknown_disconnect_interval {
                return;
            }
        }
        if self.unknown_sent.len() > 65_536 {
            let horizon = self.opts.unknown_disconnect_interval;
            self.unknown_sent.retain(|_, t| now.duration_since(*t) < horizon);
        }
        debug!(%from, "{} from an address without a session: DISCONNECT", packet.msg_type());
        self.send_to(Packet::Disconnect(None), &from).await;
        self.unknown_sent.insert(from, now);
    }

    /// A QoS -1 PUBLISH (spec 6.8): to a predefined id or a short name,
    /// from an allowed source, forwarded at QoS 0. Nothing is answered.
    fn qos_minus_one(&mut self, p: &mqttsn_codec::Publish<'_>, from: &Peer, now: Instant) {
        let allowed = self.opts.qos_minus_one.as_ref().is_some_and(|list| {
            list.is_empty() || list.iter().any(|net| net.contains(from.addr.ip()))
        });
        let topic = match p.topic {
            mqttsn_codec::TopicId::Predefined(id) => {
                self.cfg.predefined.name(id).map(|n| n.to_string())
            }
            mqttsn_codec::TopicId::Short(s) => {
                mqttsn_codec::validate::topic_name(&s).ok().map(str::to_owned)
            }
            _ => None,
        };
        let (true, Some(topic)) = (allowed, topic) else {
            Metrics::inc(&self.metrics.qos_minus_one_refused);
            if self.may_log(now) {
                let why = if allowed { "unknown topic" } else { "not allowed" };
                warn!(%from, "QoS -1 PUBLISH dropped: {why}");
            }
            return;
        };
        Metrics::inc(&self.metrics.qos_minus_one);
        let id = self.own_next_request;
        self.own_next_request += 1;
        let _ = self.own.send(Command::Publish {
            id,
            topic,
            payload: bytes::Bytes::copy_from_slice(p.data),
            qos: crate::mqtt::QoS::AtMostOnce,
            retain: p.retain,
        });
    }

    /// Sensors by state and what waits for them.
    /// Forgets kept sessions that ended more than `session_expiry` ago.
    fn expire_sessions(&mut self) {
        let Some(expiry) = self.opts.session_expiry else { return };
        let now = Instant::now();
        let expired: Vec<Arc<str>> = self
            .sessions
            .iter()
            .filter(|(_, e)| {
                e.ended_at.is_some_and(|t| now.duration_since(t) >= expiry)
                    && e.upstream.is_none()
                    && e.session.is_ended()
                    && e.held.is_empty()
            })
            .map(|(k, _)| k.clone())
            .collect();
        let gone = expired.len();
        for cid in expired {
            if let Some(e) = self.sessions.remove(&cid) {
                self.cfg.buffer_total.update(e.buffered, (0, 0));
            }
            if let Some(store) = &self.store {
                self.next_ticket += 1;
                let persist = crate::session::Persist { remove: true, ..Default::default() };
                store.submit(Write { ticket: self.next_ticket, client_id: cid, persist });
            }
        }
        if gone > 0 {
            debug!(sessions = gone, "expired sessions forgotten");
        }
    }

    fn refresh_gauges(&mut self) {
        self.expire_sessions();
        let (mut asleep, mut messages, mut bytes) = (0u64, 0u64, 0u64);
        for e in self.sessions.values() {
            if e.session.is_sleeping() {
                asleep += 1;
            }
            let (m, b) = e.session.buffered();
            messages += m as u64;
            bytes += b as u64;
        }
        Metrics::set(&self.metrics.sessions_asleep, asleep);
        Metrics::set(&self.metrics.buffered_messages, messages);
        Metrics::set(&self.metrics.buffered_bytes, bytes);
    }

    /// Key figures as retained messages on the broker.
    fn publish_sys(&mut self, started: Instant) {
        let Some((prefix, _)) = self.opts.sys_topics.clone() else { return };
        self.refresh_gauges();
        let m = self.metrics.snapshot();
        let figures: [(&str, u64); 12] = [
            ("sensors/connected", m.sessions_active.saturating_sub(m.sessions_asleep)),
            ("sensors/asleep", m.sessions_asleep),
            ("sensors/lost", m.sensors_lost),
            ("datagrams/in", m.datagrams_in),
            ("datagrams/out", m.datagrams_out),
            ("datagrams/malformed", m.malformed),
            ("messages/dropped", m.dropped),
            ("messages/retransmitted", m.retransmissions),
            ("messages/buffered", m.buffered_messages),
            ("connects/refused", m.connects_refused),
            ("connects/takeovers", m.takeovers),
            ("uptime", started.elapsed().as_secs()),
        ];
        for (name, value) in figures {
            let id = self.own_next_request;
            self.own_next_request += 1;
            let _ = self.own.send(Command::Publish {
                id,
                topic: format!("{prefix}/{name}"),
                payload: bytes::Bytes::from(value.to_string()),
                qos: crate::mqtt::QoS::AtMostOnce,
                retain: true,
            });
        }
    }

    /// Periodic ADVERTISE, paused while the broker is unreachable.
    async fn advertise(&mut self) {
        let Some((to, every)) = self.opts.advertise else { return };
        if !self.broker_up {
            return;
        }
        let duration = u16::try_from(every.as_secs()).unwrap_or(u16::MAX);
        let packet =
            Packet::Advertise(mqttsn_codec::Advertise { gw_id: self.opts.gateway_id, duration });
        self.send_to(packet, &Peer::direct(to)).await;
    }

    async fn upstream_event(&mut self, key: UpstreamKey, event: Event) {
        if key == OWN_KEY {
            match event {
                Event::Connected { .. } => {
                    if !self.broker_up {
                        info!("broker reachable");
                    }
                    self.broker_up = true;
                    self.broker_down = false;
                }
                Event::Unavailable { reason } => {
                    warn!("broker unreachable: {reason}");
                    self.broker_up = false;
                    self.broker_down = true;
                }
                Event::Refused { code } => {
                    warn!("broker refused the gateway's own connection: code {code}");
                    self.broker_up = false;
                }
                _ => {}
            }
            return;
        }
        let Some(cid) = self.by_key.get(&key).cloned() else {
            debug!(upstream = key, "event from a finished upstream ignored: {event:?}");
            return;
        };
        debug!(client_id = %cid, upstream = key, "event: {event:?}");
        match &event {
            Event::Connected { .. } => Metrics::inc(&self.metrics.upstream_connects),
            Event::Unavailable { .. } => Metrics::inc(&self.metrics.upstream_outages),
            _ => {}
        }
        let closed = matches!(event, Event::Closed | Event::Refused { .. });
        match &event {
            Event::Unavailable { reason } => {
                warn!(client_id = %cid, "broker unavailable: {reason}")
            }
            Event::Refused { code } => {
                warn!(client_id = %cid, "broker refused the connection: code {code}")
            }
            _ => {}
        }
        if let Some(entry) = self.sessions.get_mut(&cid) {
            let current = entry.upstream.as_ref().is_some_and(|(k, _)| *k == key);
            if current {
                if closed {
                    entry.upstream = None;
                }
                entry.session.handle_upstream(event, Instant::now().into_std());
            } else {
                debug!(client_id = %cid, upstream = key, "event from a replaced upstream ignored");
            }
        }
        if closed {
            self.by_key.remove(&key);
        }
        self.flush(&cid).await;
    }

    async fn timers_due(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((t, _))) = self.timers.peek() {
            if *t > now {
                break;
            }
            let Some(Reverse((t, cid))) = self.timers.pop() else { break };
            let Some(entry) = self.sessions.get_mut(&cid) else { continue };
            if entry.scheduled != Some(t) {
                continue;
            }
            entry.scheduled = None;
            entry.session.handle_timeout(now.into_std());
            self.flush(&cid).await;
        }
    }

    /// Moves a session's outputs to the socket, its upstream, the counters
    /// and the timer heap. With a store, a CleanSession-false session's
    /// changed state is written first, and its datagrams and commands wait
    /// until the write is committed (see [`Server::committed`]).
    async fn flush(&mut self, cid: &Arc<str>) {
        let Some(entry) = self.sessions.get_mut(cid) else { return };
        let mut ended = false;
        // Events first: counters are up to date before anything they
        // count can be seen outside (a will fired by the Abort below).
        while let Some(ev) = entry.session.poll_event() {
            match ev {
                SessionEvent::Connected => {
                    if !entry.counted_active {
                        entry.counted_active = true;
                        Metrics::inc(&self.metrics.sessions_active);
                    }
                    debug!(client_id = %cid, "connected");
                }
                SessionEvent::Dropped(reason) => self.metrics.dropped(reason),
                SessionEvent::Lost => {
                    Metrics::inc(&self.metrics.sensors_lost);
                    info!(client_id = %cid, "sensor lost: keepalive expired, will published");
                }
                SessionEvent::Ended => ended = true,
                SessionEvent::Published { qos, latency } => self.metrics.published(qos, latency),
                SessionEvent::Delivered { qos } => self.metrics.delivered(qos),
                SessionEvent::Retransmitted => Metrics::inc(&self.metrics.retransmissions),
            }
        }
        let persist = match &self.store {
            None => None,
            Some(_) => {
                let addr = match (&entry.addr, entry.session.persistent()) {
                    (Some(a), true) => a.to_bytes(),
                    _ => Vec::new(),
                };
                entry.session.take_persist(wall_now(), &addr)
            }
        };
        let mut transmits = std::mem::take(&mut self.scratch_tx);
        let mut commands = std::mem::take(&mut self.scratch_cmd);
        transmits.extend(std::iter::from_fn(|| entry.session.poll_transmit()));
        commands.extend(std::iter::from_fn(|| entry.session.poll_upstream()));
        if persist.is_some() || !entry.held.is_empty() {
            let ticket = match (persist, &self.store) {
                (Some(persist), Some(store)) => {
                    self.next_ticket += 1;
                    let ticket = self.next_ticket;
                    store.submit(Write { ticket, client_id: cid.clone(), persist });
                    ticket
                }
                _ => entry.held.back().map_or(self.next_ticket, |h| h.ticket),
            };
            if !transmits.is_empty() || !commands.is_empty() {
                match entry.held.back_mut() {
                    Some(h) if h.ticket == ticket => {
                        h.transmits.append(&mut transmits);
                        h.commands.append(&mut commands);
                    }
                    _ => {
                        entry.held.push_back(Held {
                            ticket,
                            transmits: std::mem::take(&mut transmits),
                            commands: std::mem::take(&mut commands),
                        });
                        self.held_order.push_back((ticket, cid.clone()));
                    }
                }
            }
        } else {
            self.deliver(cid, &mut transmits, &mut commands).await;
        }
        self.scratch_tx = transmits;
        self.scratch_cmd = commands;
        let Some(entry) = self.sessions.get_mut(cid) else { return };
        if entry.counted_active && !entry.session.is_active() {
            entry.counted_active = false;
            Metrics::dec(&self.metrics.sessions_active);
        }
        let buffered = entry.session.buffered();
        let before = std::mem::replace(&mut entry.buffered, buffered);
        self.cfg.buffer_total.update(before, buffered);
        let Some(entry) = self.sessions.get_mut(cid) else { return };
        if ended || entry.session.is_ended() {
            // The session is over: its address no longer reaches it.
            if let Some(addr) = entry.addr.take() {
                if self.by_addr.get(&addr) == Some(cid) {
                    self.by_addr.remove(&addr);
                }
            }
            if self.forget_if_over(cid) {
                return;
            }
            let Some(entry) = self.sessions.get_mut(cid) else { return };
            if entry.ended_at.is_none() {
                entry.ended_at = Some(Instant::now());
            }
        }
        let Some(entry) = self.sessions.get_mut(cid) else { return };
        if let Some(t) = entry.session.poll_timeout() {
            let t = Instant::from_std(t);
            if entry.scheduled.is_none_or(|s| t < s) {
                entry.scheduled = Some(t);
                self.timers.push(Reverse((t, cid.clone())));
            }
        }
    }

    /// Forgets an ended CleanSession-true session once nothing of it is
    /// left to send. True when it is gone.
    fn forget_if_over(&mut self, cid: &Arc<str>) -> bool {
        let Some(entry) = self.sessions.get(cid) else { return true };
        if entry.session.is_ended()
            && !entry.session.persistent()
            && entry.upstream.is_none()
            && entry.held.is_empty()
        {
            if let Some(e) = self.sessions.remove(cid) {
                self.cfg.buffer_total.update(e.buffered, (0, 0));
            }
            return true;
        }
        false
    }

    /// The store committed everything up to `ticket`: the outputs waiting
    /// for it go out, in order.
    async fn committed(&mut self, ticket: u64) {
        while self.held_order.front().is_some_and(|(t, _)| *t <= ticket) {
            let Some((t, cid)) = self.held_order.pop_front() else { break };
            let Some(entry) = self.sessions.get_mut(&cid) else { continue };
            let Some(pos) = entry.held.iter().position(|h| h.ticket == t) else { continue };
            let Some(mut held) = entry.held.remove(pos) else { continue };
            if entry.session.is_sleeping() {
                if held.commands.iter().any(|c| matches!(c, Command::Ack(_))) {
                    failpoint::hit("stored-before-ack");
                }
                if held.transmits.iter().any(|o| matches!(o, Outgoing::Publish { .. })) {
                    failpoint::hit("mid-flush");
                }
            }
            self.deliver(&cid, &mut held.transmits, &mut held.commands).await;
            self.forget_if_over(&cid);
        }
    }

    /// Sends a session's datagrams to its sensor and its commands to its
    /// upstream (started on its first Connect).
    async fn deliver(
        &mut self,
        cid: &Arc<str>,
        transmits: &mut Vec<Outgoing>,
        commands: &mut Vec<Command>,
    ) {
        let Some(entry) = self.sessions.get_mut(cid) else {
            transmits.clear();
            commands.clear();
            return;
        };
        for out in transmits.drain(..) {
            let Some(peer) = &entry.addr else { continue };
            debug!(%peer, "out: {}", out.packet());
            match peer.encode(out.packet(), &mut self.out) {
                Ok(n) => {
                    let datagram = self.out.get(..n).unwrap_or_default();
                    match self.socket.send_to(datagram, peer.addr).await {
                        Ok(_) => Metrics::inc(&self.metrics.datagrams_out),
                        Err(e) => debug!(%peer, "send_to: {e}"),
                    }
                }
                Err(e) => {
                    warn!(client_id = %cid, "cannot encode {:?}: {e}", out.packet().msg_type())
                }
            }
        }
        for cmd in commands.drain(..) {
            if entry.upstream.is_none() {
                if !matches!(cmd, Command::Connect(_) | Command::Restore { .. }) {
                    // Nothing to close or acknowledge without a connection.
                    continue;
                }
                let key = self.next_key;
                self.next_key += 1;
                let tx = self.upstreams.start(key, self.events_tx.clone());
                self.by_key.insert(key, cid.clone());
                entry.upstream = Some((key, tx));
            }
            if let Some((key, tx)) = &entry.upstream {
                debug!(client_id = %cid, upstream = key, "command: {cmd:?}");
                let _ = tx.send(cmd);
            }
        }
    }

    async fn send_to(&mut self, packet: Packet<'_>, peer: &Peer) {
        if let Ok(n) = peer.encode(packet, &mut self.out) {
            if let Some(d) = self.out.get(..n) {
                if self.socket.send_to(d, peer.addr).await.is_ok() {
                    Metrics::inc(&self.metrics.datagrams_out);
                }
            }
        }
    }

    /// At most 20 warnings a second about bad input.
    fn may_log(&mut self, now: Instant) -> bool {
        if now.duration_since(self.log_budget.0) >= Duration::from_secs(1) {
            self.log_budget = (now, 0);
        }
        self.log_budget.1 += 1;
        self.log_budget.1 <= 20
    }

    async fn shutdown(&mut self, events_rx: &mut mpsc::UnboundedReceiver<(UpstreamKey, Event)>) {
        info!(sessions = self.sessions.len(), "shutting down");
        let cids: Vec<Arc<str>> = self.sessions.keys().cloned().collect();
        for cid in &cids {
            if let Some(entry) = self.sessions.get_mut(cid) {
                if entry.session.is_active() {
                    if let Some(peer) = &entry.addr {
                        let mut b = [0u8; 300];
                        if let Ok(n) = peer.encode(Packet::Disconnect(None), &mut b) {
                            let _ = self.socket.send_to(&b[..n], peer.addr).await;
                        }
                    }
                }
                if let Some((_, tx)) = &entry.upstream {
                    let _ = tx.send(Command::Disconnect);
                }
            }
        }
        let _ = self.own.send(Command::Disconnect);
        let deadline = Instant::now() + self.opts.shutdown_grace;
        while !self.by_key.is_empty() {
            match tokio::time::timeout_at(deadline, events_rx.recv()).await {
                Ok(Some((key, Event::Closed | Event::Refused { .. }))) => {
                    self.by_key.remove(&key);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        if !self.by_key.is_empty() {
            warn!(left = self.by_key.len(), "upstream sessions still open at shutdown");
        }
    }
}

/// A restored session, its address, and when it ended (if it had).
type Restored = (Session, Option<Peer>, Option<Instant>);

/// The sessions of an opened store, as sessions. One that cannot be read
/// is reported; the store file is copied aside first (never silently
/// lost) and the record removed.
fn restore_sessions(
    opened: &crate::store::Opened,
    cfg: &Arc<SessionConfig>,
    path: &std::path::Path,
) -> Vec<Restored> {
    let now = Instant::now();
    let wall = wall_now();
    let mut out = Vec::new();
    let mut copied = false;
    for loaded in &opened.sessions {
        let messages = loaded.messages.iter().cloned();
        match Session::restore(
            cfg.clone(),
            &loaded.client_id,
            &loaded.record,
            messages,
            now.into_std(),
        ) {
            Ok((session, addr)) => {
                let ended_at = session.ended_wall().map(|w| {
                    let ago = Duration::from_secs(wall.saturating_sub(w));
                    now.checked_sub(ago).unwrap_or(now)
                });
                out.push((session, Peer::from_bytes(&addr), ended_at));
            }
            Err(e) => {
                if !copied {
                    let aside = format!("{}.corrupt-{}", path.display(), wall);
                    match std::fs::copy(path, &aside) {
                        Ok(_) => error!(
                            "the session store has unreadable sessions; a copy is kept at {aside}"
                        ),
                        Err(e) => error!("cannot copy the session store to {aside}: {e}"),
                    }
                    copied = true;
                }
                error!(client_id = %loaded.client_id, "stored session cannot be read ({e}); it is not restored");
                if let Err(e) = opened.store.remove_now(&loaded.client_id) {
                    error!("{e}");
                }
            }
        }
    }
    out
}
